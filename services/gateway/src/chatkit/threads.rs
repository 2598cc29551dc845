//! Threads and items read from the projection: a thread is one of the user's
//! conversations, its items are the conversation's messages (each turn's user message,
//! its tool calls as one workflow item, then the assistant's answer).
//!
//! Item ids derive from the turn's request id (`user_<id>`, `workflow_<id>`,
//! `assistant_<id>`), so the ids a live stream announces are the ids `items.list`
//! returns later, on every replica. Pages follow the protocol: `after` is the id of the
//! last record of the previous page, in either order. The projection pages one way
//! only (oldest messages / most recently active conversations first), so a thread's
//! items and a user's threads are read whole (200 a query) and paged here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use proto_schemas::queries::{
    ConversationSummary, ConversationsQuery, MAX_PAGE_LIMIT, MessageRole, MessageView,
    MessagesQuery, Page as QueryPage, PageRequest,
};
use proto_schemas::{ConversationId, RequestId, UserId};

use super::types::{
    AssistantContent, Empty, Order, Page, StatusIndicator, Task, Thread, ThreadItem, ThreadStatus,
    UserContent, Workflow,
};
use crate::error::ApiError;
use crate::routes::reads::ask;
use crate::state::AppState;

/// Page size when a request names none.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 20;

/// How long after its creation a thread the read models do not know yet is waited
/// for rather than not found: a ChatKit client may send the next message as soon as
/// `threads.create`'s stream ends, before the projection has applied the turn.
const NEW_THREAD_GRACE: Duration = Duration::from_secs(2);

/// How often a new thread is looked for again within [`NEW_THREAD_GRACE`].
const NEW_THREAD_POLL: Duration = Duration::from_millis(50);

/// The protocol's not-found answer for a thread: unknown, deleted, malformed or
/// another user's — the same for all, so nobody learns which threads exist.
pub(crate) fn thread_not_found(thread_id: &str) -> ApiError {
    ApiError::NotFound(format!("thread {thread_id:?} was not found"))
}

/// The conversation a thread id names (a malformed id names none).
pub(crate) fn conversation_id(thread_id: &str) -> Result<ConversationId, ApiError> {
    thread_id.parse().map_err(|_| thread_not_found(thread_id))
}

/// The id of a turn's user message.
pub(crate) fn user_item_id(request_id: RequestId) -> String {
    format!("user_{request_id}")
}

/// The id of a turn's workflow item (its tool calls).
pub(crate) fn workflow_item_id(request_id: RequestId) -> String {
    format!("workflow_{request_id}")
}

/// The id of a turn's answer.
pub(crate) fn assistant_item_id(request_id: RequestId) -> String {
    format!("assistant_{request_id}")
}

/// A user message item as ChatKit shows it.
pub(crate) fn user_item(
    thread_id: &str,
    request_id: RequestId,
    text: String,
    created_at: DateTime<Utc>,
) -> ThreadItem {
    ThreadItem::UserMessage {
        id: user_item_id(request_id),
        thread_id: thread_id.to_owned(),
        created_at,
        content: vec![UserContent::InputText { text }],
        attachments: Vec::new(),
        inference_options: Empty {},
    }
}

/// An assistant message item with `text`.
pub(crate) fn assistant_item(
    thread_id: &str,
    request_id: RequestId,
    text: String,
    created_at: DateTime<Utc>,
) -> ThreadItem {
    ThreadItem::AssistantMessage {
        id: assistant_item_id(request_id),
        thread_id: thread_id.to_owned(),
        created_at,
        content: vec![AssistantContent::text(text)],
    }
}

/// A turn's workflow item with `tasks`.
pub(crate) fn workflow_item(
    thread_id: &str,
    request_id: RequestId,
    tasks: Vec<Task>,
    created_at: DateTime<Utc>,
) -> ThreadItem {
    ThreadItem::Workflow {
        id: workflow_item_id(request_id),
        thread_id: thread_id.to_owned(),
        created_at,
        workflow: Workflow::custom(tasks),
    }
}

/// What a tool is called in a workflow, and what progress says while it runs.
pub(crate) fn tool_title(name: &str) -> (String, String) {
    let (title, doing) = match name {
        "add_task" => ("Add task", "Adding task"),
        "list_tasks" => ("List tasks", "Listing tasks"),
        "complete_task" => ("Complete task", "Completing task"),
        "delete_task" => ("Delete task", "Deleting task"),
        "update_task" => ("Update task", "Updating task"),
        other => (other, other),
    };
    (title.to_owned(), format!("{doing}…"))
}

/// A tool call as a workflow task: running (arguments) or done (arguments → result).
pub(crate) fn tool_task(
    name: &str,
    arguments: &serde_json::Value,
    result: Option<&serde_json::Value>,
) -> Task {
    let (title, _) = tool_title(name);
    let (content, status_indicator) = match result {
        None => (arguments.to_string(), StatusIndicator::Loading),
        Some(result) => (format!("{arguments} → {result}"), StatusIndicator::Complete),
    };
    Task {
        kind: "custom",
        title,
        content,
        status_indicator,
    }
}

/// The items of a conversation's messages, in conversation order. A failed turn's
/// error message is not an item: live, it was the stream's `error` event.
pub(crate) fn items_of(thread_id: &str, messages: Vec<MessageView>) -> Vec<ThreadItem> {
    let mut items = Vec::with_capacity(messages.len());
    for message in messages {
        let request_id = message.request_id;
        match message.role {
            MessageRole::User => items.push(user_item(
                thread_id,
                request_id,
                message.content,
                message.created_at,
            )),
            MessageRole::Assistant => {
                if !message.tool_calls.is_empty() {
                    let tasks = message
                        .tool_calls
                        .iter()
                        .map(|call| tool_task(&call.name, &call.arguments, Some(&call.result)))
                        .collect();
                    items.push(workflow_item(
                        thread_id,
                        request_id,
                        tasks,
                        message.created_at,
                    ));
                }
                items.push(assistant_item(
                    thread_id,
                    request_id,
                    message.content,
                    message.created_at,
                ));
            }
            MessageRole::Error => {}
        }
    }
    items
}

/// When the read models may still not know `conversation`: its UUIDv7 says it was
/// made less than [`NEW_THREAD_GRACE`] ago (the ids are minted by the gateway).
fn may_be_catching_up(conversation: ConversationId) -> Option<std::time::Instant> {
    let (secs, nanos) = conversation.as_uuid().get_timestamp()?.to_unix();
    let created = UNIX_EPOCH + Duration::new(secs, nanos);
    let age = SystemTime::now()
        .duration_since(created)
        .unwrap_or_default();
    NEW_THREAD_GRACE
        .checked_sub(age)
        .map(|left| std::time::Instant::now() + left)
}

/// One page of `user`'s conversation's messages; not found for anyone else's. A
/// thread made a moment ago is waited for (see [`NEW_THREAD_GRACE`]).
async fn messages_page(
    state: &AppState,
    user: &UserId,
    thread_id: &str,
    page: PageRequest,
) -> Result<QueryPage<MessageView>, ApiError> {
    let conversation_id = conversation_id(thread_id)?;
    let query = MessagesQuery {
        user_id: user.clone(),
        conversation_id,
        page,
    };
    let deadline = may_be_catching_up(conversation_id);
    loop {
        match ask(state, state.subjects().query_messages(), &query).await {
            Err(ApiError::NotFound(_)) => match deadline {
                Some(deadline) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(NEW_THREAD_POLL).await;
                }
                _ => return Err(thread_not_found(thread_id)),
            },
            answer => return answer,
        }
    }
}

/// Whether `thread_id` is one of `user`'s threads: not found if not. One small query,
/// whatever the thread's length.
pub(crate) async fn check_owned(
    state: &AppState,
    user: &UserId,
    thread_id: &str,
) -> Result<(), ApiError> {
    let first = PageRequest {
        limit: 1,
        cursor: None,
    };
    messages_page(state, user, thread_id, first).await.map(drop)
}

/// Every message of `user`'s conversation; not found for anyone else's.
pub(crate) async fn messages(
    state: &AppState,
    user: &UserId,
    thread_id: &str,
) -> Result<Vec<MessageView>, ApiError> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let request = PageRequest {
            limit: MAX_PAGE_LIMIT,
            cursor,
        };
        let page = messages_page(state, user, thread_id, request).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

/// The thread's items, in conversation order.
pub(crate) async fn items(
    state: &AppState,
    user: &UserId,
    thread_id: &str,
) -> Result<Vec<ThreadItem>, ApiError> {
    Ok(items_of(thread_id, messages(state, user, thread_id).await?))
}

/// `user`'s conversations, or (with `only`) just that one as soon as it is found.
async fn summaries(
    state: &AppState,
    user: &UserId,
    only: Option<ConversationId>,
) -> Result<Vec<ConversationSummary>, ApiError> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let query = ConversationsQuery {
            user_id: user.clone(),
            page: PageRequest {
                limit: MAX_PAGE_LIMIT,
                cursor,
            },
        };
        let page: QueryPage<ConversationSummary> =
            ask(state, state.subjects().query_conversations(), &query).await?;
        if let Some(wanted) = only
            && let Some(found) = page.items.iter().find(|c| c.conversation_id == wanted)
        {
            return Ok(vec![found.clone()]);
        }
        if only.is_none() {
            all.extend(page.items);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

/// A thread without its items.
pub(crate) fn thread_of(summary: ConversationSummary) -> Thread {
    Thread {
        id: summary.conversation_id.to_string(),
        title: Some(summary.title).filter(|title| !title.is_empty()),
        created_at: summary.created_at,
        status: ThreadStatus::Active,
        items: Page::empty(),
    }
}

/// `user`'s thread `thread_id`, without items; not found for anyone else's.
pub(crate) async fn thread(
    state: &AppState,
    user: &UserId,
    thread_id: &str,
) -> Result<Thread, ApiError> {
    let conversation_id = conversation_id(thread_id)?;
    summaries(state, user, Some(conversation_id))
        .await?
        .pop()
        .map(thread_of)
        .ok_or_else(|| thread_not_found(thread_id))
}

/// `user`'s threads, oldest first.
pub(crate) async fn threads(state: &AppState, user: &UserId) -> Result<Vec<Thread>, ApiError> {
    let mut threads: Vec<Thread> = summaries(state, user, None)
        .await?
        .into_iter()
        .map(thread_of)
        .collect();
    threads.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(threads)
}

/// The page size a request asks for: 20 when absent or 0, else 1 to 200.
pub(crate) fn page_size(limit: Option<i64>) -> Result<usize, ApiError> {
    match limit {
        None | Some(0) => Ok(DEFAULT_PAGE_SIZE),
        Some(limit) if (1..=i64::from(MAX_PAGE_LIMIT)).contains(&limit) => {
            Ok(usize::try_from(limit).unwrap_or(DEFAULT_PAGE_SIZE))
        }
        Some(_) => Err(ApiError::invalid(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
        )),
    }
}

/// One page of `records` (in ascending order) in `order`, after the record whose id
/// is `after`. An `after` that names no record → 422.
pub(crate) fn page<T: Clone>(
    records: &[T],
    id: impl Fn(&T) -> &str,
    order: Order,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<T>, ApiError> {
    let ordered: Vec<&T> = match order {
        Order::Asc => records.iter().collect(),
        Order::Desc => records.iter().rev().collect(),
    };
    let start = match after.filter(|after| !after.is_empty()) {
        None => 0,
        Some(after) => {
            ordered
                .iter()
                .position(|record| id(record) == after)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_cursor",
                        format!("after {after:?} names no record of this list"),
                    )
                })?
                + 1
        }
    };
    let rest = &ordered[start..];
    let data: Vec<T> = rest
        .iter()
        .take(limit)
        .map(|record| (*record).clone())
        .collect();
    let has_more = rest.len() > data.len();
    let after = if has_more {
        data.last().map(|record| id(record).to_owned())
    } else {
        None
    };
    Ok(Page {
        data,
        has_more,
        after,
    })
}

#[cfg(test)]
mod tests {
    use proto_schemas::chat::ToolCallRecord;
    use serde_json::json;

    use super::*;

    fn ids(page: &Page<String>) -> Vec<String> {
        page.data.clone()
    }

    #[test]
    fn pages_run_both_ways_after_a_record() {
        let records: Vec<String> = ["a", "b", "c", "d", "e"].map(str::to_owned).to_vec();
        fn id(record: &String) -> &str {
            record
        }
        let first = page(&records, id, Order::Asc, None, 2).unwrap();
        assert_eq!(ids(&first), ["a", "b"]);
        assert_eq!((first.has_more, first.after.as_deref()), (true, Some("b")));
        let last = page(&records, id, Order::Asc, Some("c"), 2).unwrap();
        assert_eq!(ids(&last), ["d", "e"]);
        assert_eq!((last.has_more, last.after), (false, None));
        let newest = page(&records, id, Order::Desc, None, 3).unwrap();
        assert_eq!(ids(&newest), ["e", "d", "c"]);
        let older = page(&records, id, Order::Desc, Some("c"), 3).unwrap();
        assert_eq!(ids(&older), ["b", "a"]);
        assert!(!older.has_more);
        let error = page(&records, id, Order::Asc, Some("zz"), 2).unwrap_err();
        assert_eq!(error.code(), "invalid_cursor");
    }

    #[test]
    fn only_new_threads_are_waited_for() {
        assert!(may_be_catching_up(ConversationId::new()).is_some());
        let old: ConversationId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap();
        assert!(may_be_catching_up(old).is_none());
    }

    #[test]
    fn page_sizes_are_checked() {
        assert_eq!(page_size(None).unwrap(), 20);
        assert_eq!(page_size(Some(0)).unwrap(), 20);
        assert_eq!(page_size(Some(200)).unwrap(), 200);
        for bad in [-1, 201] {
            assert_eq!(page_size(Some(bad)).unwrap_err().code(), "invalid_limit");
        }
    }

    #[test]
    fn a_turn_is_a_user_message_a_workflow_and_an_answer() {
        let request = RequestId::new();
        let at = Utc::now();
        let message = |role, content: &str, tool_calls| MessageView {
            role,
            content: content.to_owned(),
            tool_calls,
            request_id: request,
            created_at: at,
        };
        let call = ToolCallRecord {
            name: "add_task".to_owned(),
            arguments: json!({"title": "milk"}),
            result: json!({"task_id": 1}),
        };
        let items = items_of(
            "t",
            vec![
                message(MessageRole::User, "add milk", Vec::new()),
                message(MessageRole::Assistant, "Added.", vec![call]),
                message(MessageRole::Error, "model down", Vec::new()),
            ],
        );
        let item_ids: Vec<&str> = items.iter().map(ThreadItem::id).collect();
        assert_eq!(
            item_ids,
            [
                user_item_id(request),
                workflow_item_id(request),
                assistant_item_id(request)
            ]
        );
        let ThreadItem::Workflow { workflow, .. } = &items[1] else {
            panic!("a workflow item: {items:?}");
        };
        assert_eq!(workflow.tasks[0].title, "Add task");
        assert_eq!(
            workflow.tasks[0].status_indicator,
            StatusIndicator::Complete
        );
    }
}
