//! Chat turns on the bus: the request the gateway publishes, the final reply and the
//! live progress chunks the agent-worker publishes back.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{ApprovalId, ConversationId, RequestId, UserId};

/// The longest chat message accepted, in characters.
pub const MESSAGE_MAX_CHARS: usize = 4_000;

/// A chat message as a person wrote it: not blank, at most [`MESSAGE_MAX_CHARS`]
/// characters (not bytes). Kept as written, not trimmed.
///
/// The gateway checks it where it enters, and the agent-worker again before recording
/// it: the queue is not trusted to hold only what the gateway let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage(String);

/// Why a chat message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChatMessage {
    #[error("message must not be empty")]
    Empty,
    #[error("message must be at most {MESSAGE_MAX_CHARS} characters (it has {chars})")]
    TooLong { chars: usize },
    /// Postgres cannot store U+0000 in text or JSON: refused where it enters rather
    /// than failing every attempt to record it.
    #[error("message must not contain NUL (\\u0000) characters")]
    NulCharacter,
}

impl ChatMessage {
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidChatMessage> {
        let raw = raw.into();
        if raw.trim().is_empty() {
            return Err(InvalidChatMessage::Empty);
        }
        let chars = raw.chars().count();
        if chars > MESSAGE_MAX_CHARS {
            return Err(InvalidChatMessage::TooLong { chars });
        }
        if raw.contains('\0') {
            return Err(InvalidChatMessage::NulCharacter);
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// One chat turn to run (JetStream `chat.requests`, message id = `request_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChatRequest {
    pub request_id: RequestId,
    /// From the verified token, never from the model.
    pub user_id: UserId,
    pub conversation_id: ConversationId,
    /// True when the gateway minted `conversation_id` for this turn; false when the
    /// client named an existing conversation (which must then exist and be the user's).
    pub new_conversation: bool,
    /// The person's message. Empty for a [`TurnKind::Regenerate`] or
    /// [`TurnKind::Approval`] turn, whose message is the one already recorded.
    pub message: String,
    pub received_at: DateTime<Utc>,
    /// What the turn is for; a plain message when absent (requests queued by an
    /// older gateway).
    #[serde(default, skip_serializing_if = "TurnKind::is_message")]
    pub kind: TurnKind,
}

impl ChatRequest {
    /// Its JetStream message id, which makes a repeated publish a no-op: the request
    /// id, or for an approval decision the request and approval ids (a turn gets one
    /// request per decision, each published at most once).
    pub fn message_id(&self) -> String {
        match self.kind {
            TurnKind::Approval { approval_id, .. } => {
                format!("{}/approval/{approval_id}", self.request_id)
            }
            TurnKind::Message | TurnKind::Regenerate => self.request_id.to_string(),
        }
    }
}

/// What a chat request asks the worker to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnKind {
    /// Answer `message`, a new message of the person's.
    #[default]
    Message,
    /// Answer the conversation's last user message again, with this request's id: the
    /// earlier answer stays in the log, marked superseded.
    Regenerate,
    /// Resume this (paused) turn with the person's decision on a tool call that
    /// waits for approval.
    Approval {
        approval_id: ApprovalId,
        approve: bool,
    },
}

impl TurnKind {
    pub fn is_message(&self) -> bool {
        matches!(self, Self::Message)
    }
}

/// One tool call of a turn as the public API shows it: `{"name","arguments","result"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallRecord {
    pub name: String,
    pub arguments: serde_json::Value,
    pub result: serde_json::Value,
}

/// Why a turn did not produce an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatErrorCode {
    /// The named conversation does not exist or belongs to someone else.
    ConversationNotFound,
    /// The model provider failed or timed out after retries.
    ModelUnavailable,
    /// Every delivery attempt of the request failed.
    DeliveryExhausted,
    /// The person stopped the turn (`POST …/turns/{request_id}/cancel`).
    Cancelled,
    /// A regenerate found no finished answer to replace: the conversation's last turn
    /// is still running or waits for an approval (or there is no message at all).
    NothingToRegenerate,
    /// Anything else; the cause is in the worker's logs.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChatError {
    pub code: ChatErrorCode,
    /// A message fit to show the user (no internal details).
    pub message: String,
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChatOutcome {
    Answered {
        response: String,
        tool_calls: Vec<ToolCallRecord>,
    },
    Failed {
        error: ChatError,
    },
    /// The turn is paused before a tool call listed in `AGENT_CONFIRM_TOOLS`, until
    /// the person approves or declines it. `tool_calls` are those already run.
    PendingApproval {
        approval: PendingApproval,
        tool_calls: Vec<ToolCallRecord>,
    },
}

/// A tool call waiting for the person's approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PendingApproval {
    pub approval_id: ApprovalId,
    pub call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// The reply of a turn (JetStream `chat.replies.<request_id>`): its end, or the
/// approval it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatReply {
    pub request_id: RequestId,
    pub conversation_id: ConversationId,
    /// Whose turn it is, so that a reply read back by request id is shown to its
    /// owner only. Absent in replies of older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    pub outcome: ChatOutcome,
}

/// The progress of a turn, in order (`chat.stream.<user>.<request_id>`, kept for a
/// while in the turn-progress stream so that a dropped client can pick it up again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatStreamChunk {
    /// First of every turn, published by the gateway as it queues the request: whose
    /// turn it is and what it asks, so that the turn can be found (and cancelled)
    /// before any worker has taken it.
    Accepted { request: ChatRequest },
    /// A piece of the assistant's text as the model writes it.
    TextDelta { text: String },
    ToolCallStarted {
        call_id: String,
        name: String,
        arguments: serde_json::Value,
    },
    ToolCallFinished {
        call_id: String,
        name: String,
        arguments: serde_json::Value,
        result: serde_json::Value,
    },
    /// The turn paused before a tool call that needs the person's approval.
    ApprovalRequired { approval: PendingApproval },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_kept_as_written() {
        let message = ChatMessage::parse("  add a task to buy milk \n").unwrap();
        assert_eq!(message.as_str(), "  add a task to buy milk \n");
        assert_eq!(message.into_inner(), "  add a task to buy milk \n");
    }

    #[test]
    fn blank_messages_are_refused() {
        for blank in ["", " ", "\n\t ", "\u{3000}"] {
            assert_eq!(ChatMessage::parse(blank), Err(InvalidChatMessage::Empty));
        }
        assert_eq!(
            InvalidChatMessage::Empty.to_string(),
            "message must not be empty"
        );
    }

    #[test]
    fn the_limit_counts_characters_and_is_named_in_the_refusal() {
        let longest = "é".repeat(MESSAGE_MAX_CHARS);
        assert!(
            ChatMessage::parse(longest.as_str()).is_ok(),
            "characters, not bytes"
        );
        let error = ChatMessage::parse(format!("{longest}x")).unwrap_err();
        assert_eq!(
            error,
            InvalidChatMessage::TooLong {
                chars: MESSAGE_MAX_CHARS + 1
            }
        );
        assert_eq!(
            error.to_string(),
            "message must be at most 4000 characters (it has 4001)"
        );
    }

    #[test]
    fn text_postgres_cannot_store_is_refused() {
        let error = ChatMessage::parse("add milk\0").unwrap_err();
        assert_eq!(error, InvalidChatMessage::NulCharacter);
        assert_eq!(
            error.to_string(),
            "message must not contain NUL (\\u0000) characters"
        );
    }
}
