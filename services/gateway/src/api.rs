//! The JSON shapes of the public HTTP API. They are separate from the bus contract in
//! proto-schemas on purpose: the HTTP surface follows the reference app and is what
//! `/openapi.json` documents, while the bus types may grow fields without changing it.

use chrono::{DateTime, Utc};
use proto_schemas::chat::{ChatStreamChunk, PendingApproval, ToolCallRecord};
use proto_schemas::queries::{ConversationSummary, MessageRole, MessageView, Page};
use proto_schemas::tasks::TaskView;
use proto_schemas::{ApprovalId, ConversationId, RequestId};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::error::ErrorBody;

/// A chat message from the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"message": "Add a task to buy groceries"}))]
pub(crate) struct ChatBody {
    /// What the user writes, 1 to 4,000 characters, not only whitespace, no NUL.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
    )]
    pub message: String,
    /// The conversation to continue; omit it (or send null or a blank string) to start
    /// a new one.
    #[serde(default)]
    #[schema(schema_with = conversation_id_schema)]
    pub conversation_id: Option<String>,
}

/// `ChatBody::conversation_id` as the server reads it: a UUID, or null or a blank string
/// for a new conversation (clients that always send the field keep working).
fn conversation_id_schema() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String).format(Some(
            utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid),
        )))
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^\s*$")))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "The conversation to continue; omit it (or send null or a blank string) to start a new one.",
        ))
        .into()
}

/// One tool call the assistant made during the turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ToolCallOut {
    /// The tool, e.g. `add_task`.
    pub name: String,
    /// The arguments the model chose (the user id is never among them).
    pub arguments: serde_json::Value,
    /// What the tool returned, e.g. `{"task_id": 1, "status": "created", "title": "Buy groceries"}`.
    pub result: serde_json::Value,
}

impl From<ToolCallRecord> for ToolCallOut {
    fn from(record: ToolCallRecord) -> Self {
        Self {
            name: record.name,
            arguments: record.arguments,
            result: record.result,
        }
    }
}

/// The assistant's answer to one chat message (the reference app's shape, plus the
/// request id of the turn).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ChatAnswer {
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: ConversationId,
    /// The assistant's reply text.
    pub response: String,
    pub tool_calls: Vec<ToolCallOut>,
    /// The id of this turn; a retry with the same `Idempotency-Key` returns the same one.
    #[schema(value_type = String, format = Uuid)]
    pub request_id: RequestId,
    /// Present when the turn is paused before a tool call that needs the person's
    /// approval (`AGENT_CONFIRM_TOOLS`); answer it with
    /// `POST /api/{user_id}/turns/{request_id}/approvals/{approval_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_approval: Option<PendingApprovalOut>,
}

/// A tool call waiting for the person's approval; also the data of the SSE event
/// `approval_required`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct PendingApprovalOut {
    #[schema(value_type = String, format = Uuid)]
    pub approval_id: ApprovalId,
    pub call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

impl From<PendingApproval> for PendingApprovalOut {
    fn from(approval: PendingApproval) -> Self {
        Self {
            approval_id: approval.approval_id,
            call_id: approval.call_id,
            name: approval.name,
            arguments: approval.arguments,
        }
    }
}

/// The answer to `POST /api/{user_id}/turns/{request_id}/cancel`: the turn is being
/// stopped; its events end with an `error` event of code `cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct CancelAccepted {
    #[schema(value_type = String, format = Uuid)]
    pub request_id: RequestId,
    pub status: CancelStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CancelStatus {
    /// The cancellation is recorded; the turn stops at its next safe point.
    Cancelling,
}

/// SSE event `delta`: a piece of the assistant's text (what the model wrote since the
/// last `delta`; at most one every 50 ms after the first of a model step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct DeltaEvent {
    pub text: String,
}

/// SSE event `tool_call_started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ToolCallStartedEvent {
    pub call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// SSE event `tool_call_finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ToolCallFinishedEvent {
    pub call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    pub result: serde_json::Value,
}

/// One Server-Sent Event of `POST /api/{user_id}/chat/stream` and
/// `GET /api/{user_id}/turns/{request_id}/events`: its `event` name, its `id` and its
/// `data`, a JSON text whose schema depends on the name. Documented for clients and
/// API checkers (schemathesis validates every event of a stream against it); the
/// events themselves are written by [`chunk_event`] and `crate::progress`.
pub(crate) struct ChatStreamEvent;

/// Each event name with the schema of its JSON data, in the order a turn sends them.
fn stream_events() -> [(&'static str, &'static str, RefOr<Schema>); 6] {
    fn named<T: ToSchema>() -> RefOr<Schema> {
        Ref::from_schema_name(T::name()).into()
    }
    [
        (
            "delta",
            "A piece of the assistant's text.",
            named::<DeltaEvent>(),
        ),
        (
            "tool_call_started",
            "The model called a tool.",
            named::<ToolCallStartedEvent>(),
        ),
        (
            "tool_call_finished",
            "A tool call returned.",
            named::<ToolCallFinishedEvent>(),
        ),
        (
            "approval_required",
            "The turn paused before a tool call that needs the person's approval; the last event until the approval is answered.",
            named::<PendingApprovalOut>(),
        ),
        (
            "final",
            "The turn's answer, as `POST /chat` returns it; the last event.",
            named::<ChatAnswer>(),
        ),
        (
            "error",
            "The turn failed; the last event.",
            named::<ErrorBody>(),
        ),
    ]
}

impl PartialSchema for ChatStreamEvent {
    fn schema() -> RefOr<Schema> {
        let mut events = OneOfBuilder::new().description(Some(
            "One event of the stream: `event` names it, `data` is JSON of the schema that name has, and `id` is the same on every read of the turn (send it back as `Last-Event-ID` to get only what came after it).",
        ));
        for (name, description, data) in stream_events() {
            let id = if matches!(name, "final" | "error") {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("`end`: nothing comes after this event."))
                    .enum_values(Some(["end"]))
            } else {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The event's position in the turn (a number)."))
                    .pattern(Some("^[0-9]+$"))
            };
            events = events.item(
                ObjectBuilder::new()
                    .description(Some(description))
                    .property(
                        "event",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some([name])),
                    )
                    .required("event")
                    .property("id", id)
                    .property(
                        "data",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .content_media_type("application/json")
                            .content_schema(Some(data)),
                    )
                    .required("data"),
            );
        }
        events.into()
    }
}

impl ToSchema for ChatStreamEvent {}

/// The SSE event name and JSON data of a progress chunk; `None` for the chunks that
/// are bookkeeping, not news for the client (`Accepted`).
pub(crate) fn chunk_event(chunk: ChatStreamChunk) -> Option<(&'static str, serde_json::Value)> {
    let (name, data) = match chunk {
        ChatStreamChunk::Accepted { .. } => return None,
        ChatStreamChunk::ApprovalRequired { approval } => (
            "approval_required",
            serde_json::to_value(PendingApprovalOut::from(approval)),
        ),
        ChatStreamChunk::TextDelta { text } => ("delta", serde_json::to_value(DeltaEvent { text })),
        ChatStreamChunk::ToolCallStarted {
            call_id,
            name,
            arguments,
        } => (
            "tool_call_started",
            serde_json::to_value(ToolCallStartedEvent {
                call_id,
                name,
                arguments,
            }),
        ),
        ChatStreamChunk::ToolCallFinished {
            call_id,
            name,
            arguments,
            result,
        } => (
            "tool_call_finished",
            serde_json::to_value(ToolCallFinishedEvent {
                call_id,
                name,
                arguments,
                result,
            }),
        ),
    };
    // Structs of strings and JSON values always serialize.
    Some((name, data.unwrap_or_default()))
}

/// Which page of a list to return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page of the same list, as it was returned
    /// (unpadded base64url); empty means the first page, any other value is 422.
    #[param(pattern = r"^[A-Za-z0-9_-]*$", max_length = 200)]
    pub cursor: Option<String>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TaskStatusParam {
    #[default]
    All,
    Pending,
    Completed,
}

/// The query of `GET /api/{user_id}/tasks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TaskListParams {
    /// `all` (default), `pending` or `completed`.
    pub status: Option<TaskStatusParam>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page of the same list, as it was returned
    /// (unpadded base64url); empty means the first page, any other value is 422.
    #[param(pattern = r"^[A-Za-z0-9_-]*$", max_length = 200)]
    pub cursor: Option<String>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct TaskItem {
    /// The task's number in the user's list (what to say in chat: "complete 3").
    pub id: u32,
    pub title: String,
    pub description: String,
    pub completed: bool,
}

impl From<TaskView> for TaskItem {
    fn from(task: TaskView) -> Self {
        Self {
            id: task.id.0,
            title: task.title,
            description: task.description,
            completed: task.completed,
        }
    }
}

/// One conversation of the user, newest activity first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ConversationItem {
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: ConversationId,
    /// The start of the first message.
    pub title: String,
    pub message_count: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ConversationSummary> for ConversationItem {
    fn from(summary: ConversationSummary) -> Self {
        Self {
            conversation_id: summary.conversation_id,
            title: summary.title,
            message_count: summary.message_count,
            created_at: summary.created_at,
            updated_at: summary.updated_at,
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    User,
    Assistant,
    /// A turn that failed; the content says why.
    Error,
}

impl From<MessageRole> for Role {
    fn from(role: MessageRole) -> Self {
        match role {
            MessageRole::User => Self::User,
            MessageRole::Assistant => Self::Assistant,
            MessageRole::Error => Self::Error,
        }
    }
}

/// One message of a conversation, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct MessageItem {
    pub role: Role,
    pub content: String,
    /// The tool calls of the turn (assistant messages only).
    pub tool_calls: Vec<ToolCallOut>,
    /// The turn the message belongs to.
    #[schema(value_type = String, format = Uuid)]
    pub request_id: RequestId,
    pub created_at: DateTime<Utc>,
}

impl From<MessageView> for MessageItem {
    fn from(message: MessageView) -> Self {
        Self {
            role: message.role.into(),
            content: message.content,
            tool_calls: message.tool_calls.into_iter().map(Into::into).collect(),
            request_id: message.request_id,
            created_at: message.created_at,
        }
    }
}

macro_rules! page_type {
    ($(#[$doc:meta])* $name:ident, $item:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        pub(crate) struct $name {
            pub items: Vec<$item>,
            /// Pass as `cursor` to get the next page; absent on the last page.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub next_cursor: Option<String>,
        }

        impl<T: Into<$item>> From<Page<T>> for $name {
            fn from(page: Page<T>) -> Self {
                Self { items: page.items.into_iter().map(Into::into).collect(), next_cursor: page.next_cursor }
            }
        }
    };
}

page_type!(
    /// A page of the user's tasks.
    TaskPage,
    TaskItem
);
page_type!(
    /// A page of the user's conversations.
    ConversationPage,
    ConversationItem
);
page_type!(
    /// A page of a conversation's messages.
    MessagePage,
    MessageItem
);

/// `POST /api/dev/token` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct DevTokenRequest {
    /// The user to act as: 1 to 128 characters, no whitespace, control characters or `/`
    /// (what `UserId::parse` accepts).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s/\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub user_id: String,
}

/// A bearer token for local use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct DevToken {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub user_id: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// Who a token signs in as (`GET /api/me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Me {
    /// The user the token acts for: the `{user_id}` of every `/api/{user_id}/…` route.
    pub user_id: String,
}

/// `/healthz`: the process is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    pub status: String,
    /// Always `gateway`: tells a health checker which service answered on the port.
    pub service: String,
}

/// `/readyz`: NATS is connected and the projection answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Readiness {
    pub status: String,
    /// Events the projection has applied to its read models.
    pub projection_events_applied: u64,
}
