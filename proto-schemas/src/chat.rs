//! Chat turns on the bus: the request the gateway publishes, the final reply and the
//! live progress chunks the agent-worker publishes back.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, RequestId, UserId};

/// The longest chat message accepted, in characters.
pub const MESSAGE_MAX_CHARS: usize = 4_000;

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
    pub message: String,
    pub received_at: DateTime<Utc>,
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
}

/// The final reply of a turn (JetStream `chat.replies.<request_id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatReply {
    pub request_id: RequestId,
    pub conversation_id: ConversationId,
    pub outcome: ChatOutcome,
}

/// Live progress of a turn (core NATS `chat.stream.<request_id>`), in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatStreamChunk {
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
}
