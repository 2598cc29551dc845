//! Every NATS subject, JetStream stream, consumer and KV bucket name, derived from one
//! prefix so that tests (and several deployments on one NATS) never share a subject.

use sha2::{Digest as _, Sha256};

use crate::ids::{RequestId, UserId};

/// The default prefix of every subject.
pub const DEFAULT_PREFIX: &str = "taskchat";

/// Names on the bus for one deployment prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    stream_prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// `prefix` is a dot-free token such as `taskchat` or `test_3f2a`.
    pub fn new(prefix: &str) -> Self {
        let stream_prefix = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            prefix: prefix.to_owned(),
            stream_prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The chat requests of one user (JetStream, work-queue retention: gateway ->
    /// agent-worker). A subject per user lets the requests stream bound each user's
    /// turns on its own (see `platform::streams`). The user id is hashed
    /// ([`user_token`]).
    pub fn chat_request(&self, user: &UserId) -> String {
        format!("{}.chat.requests.{}", self.prefix, user_token(user))
    }

    /// Every user's chat requests: the requests stream's subjects.
    pub fn chat_requests(&self) -> String {
        format!("{}.chat.requests.*", self.prefix)
    }

    /// The work-queue stream that holds chat requests until a worker acks them.
    pub fn chat_requests_stream(&self) -> String {
        format!("{}_CHAT_REQUESTS", self.stream_prefix)
    }

    /// The one durable consumer every agent-worker replica pulls from.
    pub fn chat_workers_consumer(&self) -> String {
        "agent-workers".to_owned()
    }

    /// The final reply of one chat turn (captured by the replies stream, so a retried
    /// HTTP request or a gateway that subscribed late still finds it).
    pub fn chat_reply(&self, request: RequestId) -> String {
        format!("{}.chat.replies.{request}", self.prefix)
    }

    pub fn chat_replies_wildcard(&self) -> String {
        format!("{}.chat.replies.*", self.prefix)
    }

    /// The stream that keeps final replies for a while (limits retention, max age).
    pub fn chat_replies_stream(&self) -> String {
        format!("{}_CHAT_REPLIES", self.stream_prefix)
    }

    /// The progress of one chat turn: its `Accepted` chunk, text deltas, tool call
    /// notices. Published on core NATS and kept for a while by the progress stream
    /// ([`Self::chat_progress_stream`]). The user's token in the subject keeps one
    /// user's reads of a turn from ever matching another user's turn.
    pub fn chat_stream(&self, user: &UserId, request: RequestId) -> String {
        format!("{}.chat.stream.{}.{request}", self.prefix, user_token(user))
    }

    /// Every turn's progress: the progress stream's subjects.
    pub fn chat_streams(&self) -> String {
        format!("{}.chat.stream.*.*", self.prefix)
    }

    /// The stream that keeps turns' progress for a while, so that a client whose
    /// connection dropped can read a turn's events again (`Last-Event-ID`).
    pub fn chat_progress_stream(&self) -> String {
        format!("{}_CHAT_PROGRESS", self.stream_prefix)
    }

    /// Commands on conversations and turns (rename, delete, cancel), request-reply
    /// to the agent-workers' queue group [`Self::agent_workers_queue_group`].
    pub fn conversation_commands(&self) -> String {
        format!("{}.conversations.commands", self.prefix)
    }

    /// The queue group of every agent-worker replica: conversation commands and the
    /// max-deliveries advisories each go to one replica of it.
    pub fn agent_workers_queue_group(&self) -> String {
        "agent-workers".to_owned()
    }

    /// Broadcast to every agent-worker replica once a turn's cancellation is
    /// recorded, so that the one running it stops its model call at once.
    pub fn turn_cancelled(&self, request: RequestId) -> String {
        format!("{}.chat.cancelled.{request}", self.prefix)
    }

    pub fn turns_cancelled(&self) -> String {
        format!("{}.chat.cancelled.*", self.prefix)
    }

    /// Task commands (request-reply, queue group [`Self::task_service_queue_group`]).
    pub fn task_commands(&self) -> String {
        format!("{}.tasks.commands", self.prefix)
    }

    pub fn task_service_queue_group(&self) -> String {
        "task-service".to_owned()
    }

    /// Published after commits to the event log, so tailers wake up at once: once
    /// per chat turn, when it settles, and after task-service's other commits.
    pub fn events_appended(&self) -> String {
        format!("{}.events.appended", self.prefix)
    }

    /// Read-model queries (request-reply, queue group [`Self::projection_queue_group`]).
    pub fn query_tasks(&self) -> String {
        format!("{}.queries.tasks", self.prefix)
    }

    pub fn query_conversations(&self) -> String {
        format!("{}.queries.conversations", self.prefix)
    }

    pub fn query_messages(&self) -> String {
        format!("{}.queries.messages", self.prefix)
    }

    /// Answers whether the projection is up (used by the gateway's `/readyz`).
    pub fn query_health(&self) -> String {
        format!("{}.queries.health", self.prefix)
    }

    pub fn projection_queue_group(&self) -> String {
        "projection".to_owned()
    }

    /// KV bucket mapping `(user, Idempotency-Key)` to the request id of the first POST.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_IDEMPOTENCY", self.stream_prefix)
    }
}

/// A user's token in subjects: hex of the first 16 bytes of SHA-256 of the id. User
/// ids may hold characters that mean something in a subject (`.`, `*`, `>`), and they
/// need not show on the bus.
fn user_token(user: &UserId) -> String {
    Sha256::digest(user.as_str().as_bytes())[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let subjects = Subjects::new("test-1a");
        assert_eq!(subjects.chat_requests(), "test-1a.chat.requests.*");
        assert_eq!(subjects.chat_requests_stream(), "TEST_1A_CHAT_REQUESTS");
        assert_eq!(subjects.idempotency_bucket(), "TEST_1A_IDEMPOTENCY");
        let request = RequestId::new();
        assert!(subjects.chat_reply(request).ends_with(&request.to_string()));
    }

    #[test]
    fn each_user_has_one_request_subject_whatever_the_id_holds() {
        let subjects = Subjects::new("t");
        let user = |id: &str| subjects.chat_request(&UserId::parse(id).unwrap());
        let dotted = user("a.b>*");
        let token = dotted.strip_prefix("t.chat.requests.").unwrap();
        assert_eq!(token.len(), 32);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{dotted}");
        assert_eq!(dotted, user("a.b>*"));
        assert_ne!(dotted, user("a.b>"));
    }
}
