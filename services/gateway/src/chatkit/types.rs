//! ChatKit's wire types, as the `openai-chatkit` package (1.6.5, `chatkit/types.py`)
//! defines them: the requests this server reads and the threads, items, pages and
//! stream events it answers with. Names, tags and optional fields follow the package;
//! the system test (`tests/tests/chatkit.rs`) validates every answer against its
//! pydantic models. Only the variants taskchat uses are modelled.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// ---------------------------------------------------------------- requests

/// A ChatKit request: one of the protocol's request types, by `type`. Streaming
/// requests (`threads.create`, `threads.add_user_message`, `threads.retry_after_item`,
/// `threads.add_client_tool_output`) are answered with Server-Sent Events of thread
/// stream events; the others with JSON. `metadata` is accepted and ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub(crate) enum ChatKitRequest {
    /// Start a thread (a conversation) with its first user message. Streams.
    #[serde(rename = "threads.create")]
    ThreadsCreate { params: ThreadCreateParams },
    /// Add a user message to a thread and stream the answer.
    #[serde(rename = "threads.add_user_message")]
    ThreadsAddUserMessage { params: ThreadAddUserMessageParams },
    /// Answer the thread's last user message (`item_id`) again. Streams.
    #[serde(rename = "threads.retry_after_item")]
    ThreadsRetryAfterItem { params: ThreadRetryAfterItemParams },
    /// Client tools are not supported: answered with a stream of one `error` event.
    #[serde(rename = "threads.add_client_tool_output")]
    ThreadsAddClientToolOutput {
        params: ThreadAddClientToolOutputParams,
    },
    /// A thread with its first page of items (oldest first). JSON.
    #[serde(rename = "threads.get_by_id")]
    ThreadsGetById { params: ThreadIdParams },
    /// A page of the user's threads. JSON.
    #[serde(rename = "threads.list")]
    ThreadsList { params: ListParams },
    /// Rename a thread. JSON: the thread.
    #[serde(rename = "threads.update")]
    ThreadsUpdate { params: ThreadUpdateParams },
    /// Delete a thread. JSON: `{}`.
    #[serde(rename = "threads.delete")]
    ThreadsDelete { params: ThreadIdParams },
    /// A page of a thread's items. JSON.
    #[serde(rename = "items.list")]
    ItemsList { params: ItemsListParams },
    /// Rate items of a thread. JSON: `{}`.
    #[serde(rename = "items.feedback")]
    ItemsFeedback { params: ItemFeedbackParams },
}

impl ChatKitRequest {
    /// The request types this server answers.
    pub(crate) const SERVED: [&'static str; 10] = [
        "threads.create",
        "threads.add_user_message",
        "threads.retry_after_item",
        "threads.add_client_tool_output",
        "threads.get_by_id",
        "threads.list",
        "threads.update",
        "threads.delete",
        "items.list",
        "items.feedback",
    ];

    /// The protocol's other request types, refused as unsupported.
    pub(crate) const NOT_SERVED: [&'static str; 6] = [
        "threads.add_structured_input",
        "threads.custom_action",
        "threads.sync_custom_action",
        "attachments.create",
        "attachments.delete",
        "input.transcribe",
    ];
}

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub(crate) struct ThreadCreateParams {
    pub input: UserMessageInput,
}

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub(crate) struct ThreadAddUserMessageParams {
    pub thread_id: String,
    pub input: UserMessageInput,
}

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub(crate) struct ThreadRetryAfterItemParams {
    pub thread_id: String,
    /// The user message to answer again: the thread's last one.
    pub item_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub(crate) struct ThreadAddClientToolOutputParams {
    pub thread_id: String,
    #[serde(default)]
    pub result: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
pub(crate) struct ThreadIdParams {
    pub thread_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
pub(crate) struct ThreadUpdateParams {
    pub thread_id: String,
    /// The new title: 1 to 200 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub title: String,
}

/// Sort order of a page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Order {
    Asc,
    #[default]
    Desc,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub(crate) struct ListParams {
    /// Page size, 1 to 200; 20 when absent (or 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 200)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub order: Order,
    /// The `after` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
pub(crate) struct ItemsListParams {
    pub thread_id: String,
    /// Page size, 1 to 200; 20 when absent (or 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 200)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub order: Order,
    /// The `after` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FeedbackKind {
    Positive,
    Negative,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
pub(crate) struct ItemFeedbackParams {
    pub thread_id: String,
    /// 1 to 100 item ids of the thread.
    #[schema(min_items = 1, max_items = 100)]
    pub item_ids: Vec<String>,
    pub kind: FeedbackKind,
}

/// What the person wrote: text parts (and tags, read as their text). Attachments are
/// not supported; `inference_options` is accepted and ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub(crate) struct UserMessageInput {
    pub content: Vec<UserMessageContent>,
    #[serde(default)]
    pub attachments: Vec<String>,
    #[serde(default)]
    pub quoted_text: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inference_options: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub(crate) enum UserMessageContent {
    #[serde(rename = "input_text")]
    InputText { text: String },
    #[serde(rename = "input_tag")]
    InputTag { text: String },
}

// ---------------------------------------------------------------- answers

/// `Page[T]`: a page of records and the cursor (`after`) of the next one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl<T> Page<T> {
    pub(crate) fn empty() -> Self {
        Self {
            data: Vec::new(),
            has_more: false,
            after: None,
        }
    }
}

/// A thread (a conversation) with a page of its items (empty in lists).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Thread {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
    pub status: ThreadStatus,
    pub items: Page<ThreadItem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ThreadStatus {
    Active,
}

/// `{}`: ChatKit's options objects we send empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Empty {}

/// A thread item: a user message, the tool calls of a turn (a workflow of tasks), or
/// an assistant message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ThreadItem {
    UserMessage {
        id: String,
        thread_id: String,
        created_at: DateTime<Utc>,
        content: Vec<UserContent>,
        attachments: Vec<serde_json::Value>,
        inference_options: Empty,
    },
    AssistantMessage {
        id: String,
        thread_id: String,
        created_at: DateTime<Utc>,
        content: Vec<AssistantContent>,
    },
    Workflow {
        id: String,
        thread_id: String,
        created_at: DateTime<Utc>,
        workflow: Workflow,
    },
}

impl ThreadItem {
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::UserMessage { id, .. }
            | Self::AssistantMessage { id, .. }
            | Self::Workflow { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum UserContent {
    InputText { text: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum AssistantContent {
    OutputText {
        text: String,
        annotations: Vec<serde_json::Value>,
    },
}

impl AssistantContent {
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Self::OutputText {
            text: text.into(),
            annotations: Vec::new(),
        }
    }
}

/// A `custom` workflow: one task per tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Workflow {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub tasks: Vec<Task>,
    pub expanded: bool,
}

impl Workflow {
    pub(crate) fn custom(tasks: Vec<Task>) -> Self {
        Self {
            kind: "custom",
            tasks,
            expanded: false,
        }
    }
}

/// A `custom` task of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Task {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub content: String,
    pub status_indicator: StatusIndicator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StatusIndicator {
    Loading,
    Complete,
}

// ---------------------------------------------------------------- stream events

/// One thread stream event, sent as `data: <json>\n\n`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub(crate) enum StreamEvent {
    #[serde(rename = "thread.created")]
    ThreadCreated { thread: Thread },
    #[serde(rename = "thread.item.added")]
    ItemAdded { item: ThreadItem },
    #[serde(rename = "thread.item.updated")]
    ItemUpdated { item_id: String, update: ItemUpdate },
    #[serde(rename = "thread.item.done")]
    ItemDone { item: ThreadItem },
    #[serde(rename = "thread.item.removed")]
    ItemRemoved { item_id: String },
    #[serde(rename = "stream_options")]
    StreamOptions { stream_options: StreamOptions },
    #[serde(rename = "progress_update")]
    ProgressUpdate { text: String },
    #[serde(rename = "notice")]
    Notice { level: NoticeLevel, message: String },
    #[serde(rename = "error")]
    Error {
        /// Always `custom`: the message says what happened.
        code: &'static str,
        message: String,
        allow_retry: bool,
    },
}

impl StreamEvent {
    pub(crate) fn error(message: impl Into<String>, allow_retry: bool) -> Self {
        Self::Error {
            code: "custom",
            message: message.into(),
            allow_retry,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct StreamOptions {
    pub allow_cancel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NoticeLevel {
    Warning,
}

/// An update to an item being streamed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub(crate) enum ItemUpdate {
    #[serde(rename = "assistant_message.content_part.added")]
    ContentPartAdded {
        content_index: u32,
        content: AssistantContent,
    },
    #[serde(rename = "assistant_message.content_part.text_delta")]
    TextDelta { content_index: u32, delta: String },
    #[serde(rename = "assistant_message.content_part.done")]
    ContentPartDone {
        content_index: u32,
        content: AssistantContent,
    },
    #[serde(rename = "workflow.task.added")]
    TaskAdded { task_index: u32, task: Task },
    #[serde(rename = "workflow.task.updated")]
    TaskUpdated { task_index: u32, task: Task },
}
