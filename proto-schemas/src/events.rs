//! The events stored in the log: task-list events (one stream per user) and
//! conversation events (one stream per conversation).
//!
//! In the log an event is a type name, a schema version and a JSON payload. Old
//! versions are upcast here, on read; the log itself is never rewritten.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::ChatErrorCode;
use crate::ids::{ApprovalId, CommandId, ConversationId, RequestId, TaskNumber, UserId};

/// The name of a stream in the log, typed: what the stream holds and whose it is.
///
/// The one place stream names are formatted ([`fmt::Display`]) and parsed
/// ([`StreamId::parse`]), so writers and the projection cannot disagree on them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamId {
    /// One user's task list: `tasks-<user_id>`.
    Tasks(UserId),
    /// One conversation: `conversation-<uuid>`.
    Conversation(ConversationId),
}

impl StreamId {
    const TASKS: &'static str = "tasks-";
    const CONVERSATION: &'static str = "conversation-";

    /// Reads a stream name as stored in the log.
    pub fn parse(name: &str) -> Result<Self, UnknownStream> {
        let unknown = || UnknownStream(name.to_owned());
        if let Some(user) = name.strip_prefix(Self::TASKS) {
            UserId::parse(user).map(Self::Tasks).map_err(|_| unknown())
        } else if let Some(id) = name.strip_prefix(Self::CONVERSATION) {
            id.parse().map(Self::Conversation).map_err(|_| unknown())
        } else {
            Err(unknown())
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tasks(user) => write!(f, "{}{user}", Self::TASKS),
            Self::Conversation(id) => write!(f, "{}{id}", Self::CONVERSATION),
        }
    }
}

/// A stream name that is not one of [`StreamId`]'s shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a taskchat stream name")]
pub struct UnknownStream(pub String);

/// The wake-up notice published on `events.appended` after a commit to the log. It
/// only says "look again"; tailers read the log itself, so a lost notice costs latency,
/// never an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventsAppended {
    pub stream: String,
    /// The global position of the last event appended by the commit.
    pub last_position: i64,
}

/// An event as stored: its type name, schema version and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event type {event_type} has no schema version {version}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("event {event_type} v{version} does not match its schema: {source}")]
    Payload {
        event_type: String,
        version: u32,
        source: serde_json::Error,
    },
}

/// A family of events stored with a type name and a schema version.
pub trait EventFamily: Serialize + DeserializeOwned + Sized {
    /// The schema version written today for `event_type`.
    fn current_version(event_type: &str) -> u32;

    /// Rewrites an older payload of `event_type` into the current version's shape.
    /// The default knows no old versions.
    fn upcast(event_type: &str, version: u32, payload: Value) -> Result<Value, DecodeError> {
        if version == Self::current_version(event_type) {
            Ok(payload)
        } else {
            Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
            })
        }
    }

    fn encode(&self) -> EncodedEvent {
        // Families are adjacently tagged ({"type", "data"}), so the tag is the type name.
        let mut tagged = serde_json::to_value(self).expect("events serialize to JSON");
        let event_type = tagged["type"]
            .as_str()
            .expect("events are tagged")
            .to_owned();
        let payload = tagged
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null);
        EncodedEvent {
            schema_version: Self::current_version(&event_type),
            event_type,
            payload,
        }
    }

    fn decode(event_type: &str, version: u32, payload: Value) -> Result<Self, DecodeError> {
        let payload = Self::upcast(event_type, version, payload)?;
        serde_json::from_value(serde_json::json!({ "type": event_type, "data": payload })).map_err(
            |source| DecodeError::Payload {
                event_type: event_type.to_owned(),
                version,
                source,
            },
        )
    }
}

/// What happened to a user's task list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum TaskEvent {
    /// v2. v1 had no `description`; it is upcast with an empty one.
    TaskAdded {
        task_id: TaskNumber,
        title: String,
        description: String,
    },
    TaskCompleted {
        task_id: TaskNumber,
    },
    TaskDeleted {
        task_id: TaskNumber,
    },
    TaskUpdated {
        task_id: TaskNumber,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
}

impl EventFamily for TaskEvent {
    fn current_version(event_type: &str) -> u32 {
        match event_type {
            "TaskAdded" => 2,
            _ => 1,
        }
    }

    fn upcast(event_type: &str, version: u32, mut payload: Value) -> Result<Value, DecodeError> {
        match (event_type, version) {
            ("TaskAdded", 1) => {
                if let Some(fields) = payload.as_object_mut() {
                    fields
                        .entry("description")
                        .or_insert_with(|| Value::String(String::new()));
                }
                Ok(payload)
            }
            (_, v) if v == Self::current_version(event_type) => Ok(payload),
            _ => Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
            }),
        }
    }
}

/// What happened in a conversation. A turn is: a user message, zero or more model steps
/// each requesting tool calls and recording their completion, then a reply or a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum ConversationEvent {
    /// First event of every conversation: whose it is.
    ConversationStarted {
        user_id: UserId,
    },
    UserMessageReceived {
        request_id: RequestId,
        text: String,
        /// Set when this turn answers an earlier turn's message again (regenerate):
        /// that turn's answer is superseded, kept in the log but no longer shown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        regenerates: Option<RequestId>,
    },
    ToolCallRequested {
        request_id: RequestId,
        /// The model step (0, 1, …) of the turn that asked for this call.
        step: u32,
        /// The model's id for the call (`call_…`), echoed back in the tool result.
        call_id: String,
        name: String,
        arguments: Value,
        /// Derived from the request, step and index, so a resumed turn re-sends the
        /// same command and task-service applies it once.
        command_id: CommandId,
    },
    ToolCallCompleted {
        request_id: RequestId,
        call_id: String,
        name: String,
        result: Value,
    },
    /// The tool call `call_id` (already requested) waits for the person's approval;
    /// the turn is paused until [`ConversationEvent::ToolCallApprovalDecided`].
    ToolCallApprovalRequested {
        request_id: RequestId,
        call_id: String,
        approval_id: ApprovalId,
    },
    ToolCallApprovalDecided {
        request_id: RequestId,
        approval_id: ApprovalId,
        approved: bool,
    },
    AssistantReplied {
        request_id: RequestId,
        text: String,
    },
    /// A turn ended without an answer; a cancelled turn ends with code `cancelled`.
    TurnFailed {
        request_id: RequestId,
        code: ChatErrorCode,
        message: String,
    },
    /// The person renamed the conversation; the title no longer follows the first
    /// message.
    ConversationRenamed {
        title: String,
    },
    /// The person deleted the conversation: every read and every later turn treats it
    /// as not found. Its events stay in the log as history.
    ConversationDeleted {},
    /// The person rated answers of the conversation (ChatKit's thumbs up / down),
    /// naming them by their ChatKit item ids. Kept as history; no read model uses it.
    FeedbackGiven {
        item_ids: Vec<String>,
        kind: FeedbackKind,
    },
}

/// Whether the person liked what they rated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackKind {
    Positive,
    Negative,
}

impl ConversationEvent {
    /// The chat turn the event belongs to (none for the conversation's own events).
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::ConversationStarted { .. }
            | Self::ConversationRenamed { .. }
            | Self::ConversationDeleted {}
            | Self::FeedbackGiven { .. } => None,
            Self::UserMessageReceived { request_id, .. }
            | Self::ToolCallRequested { request_id, .. }
            | Self::ToolCallCompleted { request_id, .. }
            | Self::ToolCallApprovalRequested { request_id, .. }
            | Self::ToolCallApprovalDecided { request_id, .. }
            | Self::AssistantReplied { request_id, .. }
            | Self::TurnFailed { request_id, .. } => Some(*request_id),
        }
    }
}

impl EventFamily for ConversationEvent {
    fn current_version(_event_type: &str) -> u32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encode_splits_type_version_and_payload() {
        let event = TaskEvent::TaskCompleted {
            task_id: TaskNumber(3),
        };
        let encoded = event.encode();
        assert_eq!(encoded.event_type, "TaskCompleted");
        assert_eq!(encoded.schema_version, 1);
        assert_eq!(encoded.payload, json!({"task_id": 3}));
        assert_eq!(
            TaskEvent::decode("TaskCompleted", 1, encoded.payload).unwrap(),
            event
        );
    }

    #[test]
    fn a_v1_task_added_is_read_as_the_current_type() {
        let v1 = json!({"task_id": 1, "title": "Buy milk"});
        let event = TaskEvent::decode("TaskAdded", 1, v1).unwrap();
        assert_eq!(
            event,
            TaskEvent::TaskAdded {
                task_id: TaskNumber(1),
                title: "Buy milk".into(),
                description: String::new()
            }
        );
        assert_eq!(event.encode().schema_version, 2);
    }

    #[test]
    fn conversation_events_written_before_steering_still_read() {
        // A user message recorded before regenerates existed has no such field.
        let request = RequestId::new();
        let old = json!({"request_id": request, "text": "add milk"});
        assert_eq!(
            ConversationEvent::decode("UserMessageReceived", 1, old).unwrap(),
            ConversationEvent::UserMessageReceived {
                request_id: request,
                text: "add milk".into(),
                regenerates: None,
            }
        );
        // And a plain message is still written without it.
        let encoded = ConversationEvent::UserMessageReceived {
            request_id: request,
            text: "add milk".into(),
            regenerates: None,
        }
        .encode();
        assert!(encoded.payload.get("regenerates").is_none());
        // Conversation-wide events belong to no turn.
        assert_eq!(ConversationEvent::ConversationDeleted {}.request_id(), None);
        assert_eq!(
            ConversationEvent::decode("ConversationDeleted", 1, json!({})).unwrap(),
            ConversationEvent::ConversationDeleted {}
        );
    }

    #[test]
    fn stream_ids_format_and_parse_back() {
        let user = StreamId::Tasks(UserId::parse("alice").unwrap());
        assert_eq!(user.to_string(), "tasks-alice");
        assert_eq!(StreamId::parse("tasks-alice").unwrap(), user);
        let id = ConversationId::new();
        let conversation = StreamId::Conversation(id);
        assert_eq!(conversation.to_string(), format!("conversation-{id}"));
        assert_eq!(
            StreamId::parse(&conversation.to_string()).unwrap(),
            conversation
        );
        for bad in ["tasks-", "conversation-42", "orders-1", ""] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_versions_and_bad_payloads_are_errors() {
        assert!(matches!(
            TaskEvent::decode("TaskDeleted", 7, json!({"task_id": 1})),
            Err(DecodeError::UnknownVersion { .. })
        ));
        assert!(matches!(
            TaskEvent::decode("TaskDeleted", 1, json!({"id": 1})),
            Err(DecodeError::Payload { .. })
        ));
    }
}
