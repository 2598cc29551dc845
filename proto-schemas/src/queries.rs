//! Read-model queries answered by the projection over NATS request-reply.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::chat::ToolCallRecord;
use crate::ids::{ConversationId, RequestId, UserId};
use crate::tasks::StatusFilter;

/// The default and the largest page size.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
pub const MAX_PAGE_LIMIT: u32 = 200;

/// Which page of a list: `limit` items after the opaque `cursor` of the previous page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PageRequest {
    #[serde(default = "default_limit")]
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

fn default_limit() -> u32 {
    DEFAULT_PAGE_LIMIT
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_PAGE_LIMIT,
            cursor: None,
        }
    }
}

/// One page of items; `next_cursor` is absent on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TasksQuery {
    pub user_id: UserId,
    #[serde(default)]
    pub status: StatusFilter,
    #[serde(default)]
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationsQuery {
    pub user_id: UserId,
    #[serde(default)]
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessagesQuery {
    pub user_id: UserId,
    pub conversation_id: ConversationId,
    #[serde(default)]
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationSummary {
    pub conversation_id: ConversationId,
    /// The start of the first user message.
    pub title: String,
    pub message_count: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    User,
    Assistant,
    /// A turn that failed; `content` says why in words fit for the user.
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageView {
    pub role: MessageRole,
    pub content: String,
    /// The tool calls the assistant made in this turn (assistant messages only).
    #[serde(default)]
    pub tool_calls: Vec<ToolCallRecord>,
    pub request_id: RequestId,
    pub created_at: DateTime<Utc>,
}

/// The projection's answer to any query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum QueryReply<T> {
    Found {
        page: Page<T>,
    },
    /// The conversation does not exist or belongs to another user.
    NotFound,
    /// The query itself was malformed (e.g. a bad cursor).
    Invalid {
        reason: String,
    },
    Unavailable {
        reason: String,
    },
}

/// The projection's answer to a health query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProjectionHealth {
    /// The number of events applied to the live read models.
    pub events_applied: u64,
}
