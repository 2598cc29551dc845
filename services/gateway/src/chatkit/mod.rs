//! `POST /chatkit`: ChatKit's server protocol (the `openai-chatkit` package, 1.6.5),
//! so that a ChatKit front end talks to taskchat unchanged. One endpoint; the JSON
//! body's `type` says what is asked. Streaming requests answer with Server-Sent Events
//! of thread stream events (`data: <json>`), the others with JSON.
//!
//! It is a second face of the same system, not a second system: a thread is one of the
//! user's conversations, its items are the conversation's messages as the projection
//! reads them, a message is a turn started through [`turn::start`] and relayed by the
//! API's relay (`crate::progress`), rendered as ChatKit events ([`render`]); renaming,
//! deleting and feedback are conversation commands to the agent-workers. The user is
//! the bearer token's, as everywhere.
//!
//! Errors found before a stream starts (bad body, unknown `type`, a thread that is not
//! the user's) are the API's JSON errors with 4xx statuses, and change nothing; a
//! turn that fails ends its stream with the protocol's `error` event.

mod render;
mod threads;
pub(crate) mod types;

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use proto_schemas::UserId;
use proto_schemas::conversations::{
    ConversationCommand, ConversationCommandReply, ConversationTitle, check_feedback_items,
};
use proto_schemas::events::FeedbackKind as FeedbackEventKind;
use proto_schemas::queries::MessageRole;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::api::ChatBody;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, TokenUser};
use crate::progress::Follow;
use crate::routes::conversations::{hidden_from_reads, send_command};
use crate::routes::docs::Unauthorized;
use crate::routes::stream::event_stream;
use crate::state::AppState;
use crate::turn::{self, ChatInput, StartedTurn};
use render::{TurnEvents, sse};
use threads::{
    DEFAULT_PAGE_SIZE, conversation_id, page, page_size, thread_not_found, user_item, user_item_id,
};
use types::{
    ChatKitRequest, FeedbackKind, ItemsListParams, ListParams, StreamEvent, StreamOptions, Thread,
    ThreadItem, ThreadStatus, UserMessageContent, UserMessageInput,
};

/// The path ChatKit front ends are pointed at.
pub(crate) const PATH: &str = "/chatkit";

/// Any of ChatKit's JSON answers: a `Thread`, a `Page` of threads or items, or `{}`.
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub(crate) struct ChatKitAnswer(#[allow(dead_code)] Value);

/// One thread stream event per `data:` line (`thread.created`, `thread.item.added`,
/// `thread.item.updated`, `thread.item.done`, `thread.item.removed`, `stream_options`,
/// `progress_update`, `notice`, `error`).
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub(crate) struct ChatKitStreamEvent(#[allow(dead_code)] Value);

/// ChatKit's server protocol: one request of the protocol's union, by `type`.
///
/// Streaming types answer with Server-Sent Events, one thread stream event per `data:`
/// line; the rest with JSON. A thread is a conversation (its id is the conversation
/// id), its items are the conversation's messages. Unknown or malformed requests and
/// threads that are not the user's are refused before anything starts.
#[utoipa::path(
    post,
    path = "/chatkit",
    tag = "chatkit",
    request_body(content = ChatKitRequest, description = "A ChatKit request; see the openai-chatkit package's `ChatKitReq`"),
    responses(
        (status = 200, description = "Thread stream events (streaming types) or the JSON answer (`Thread`, `Page`, or `{}`)",
            content(
                (ChatKitStreamEvent = "text/event-stream"),
                (ChatKitAnswer = "application/json"),
            )),
        (status = 400, description = "The body is not JSON, or a protocol request this server does not support (`unsupported_request`)", body = ErrorBody),
        (status = 404, description = "No such thread for this user", body = ErrorBody),
        (status = 413, description = "The body is over the size limit", body = ErrorBody),
        (status = 415, description = "No body, or a body not sent as application/json", body = ErrorBody),
        (status = 422, description = "Unknown `type`, a body of the wrong shape, an empty or over-long message, a bad title, limit, cursor or feedback, or a retry of an item that is not the thread's last user message", body = ErrorBody),
        (status = 429, description = "Too many turns running or messages this minute; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before sending again"))),
        (status = 503, description = "The message bus or the read models are unavailable, or the queue of turns is full", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before sending again"))),
        Unauthorized,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_chatkit(
    State(state): State<AppState>,
    TokenUser(user): TokenUser,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request = parse(body)?;
    match request {
        ChatKitRequest::ThreadsCreate { params } => {
            let message = message_text(params.input)?;
            let started = start(&state, &user, message.clone(), None).await?;
            let thread_id = started.conversation_id.to_string();
            let thread = Thread {
                id: thread_id.clone(),
                title: None,
                created_at: Utc::now(),
                status: ThreadStatus::Active,
                items: types::Page::empty(),
            };
            let prelude = vec![
                StreamEvent::ThreadCreated { thread },
                StreamEvent::ItemDone {
                    item: user_item(&thread_id, started.request_id, message, Utc::now()),
                },
                stream_options(),
            ];
            Ok(stream(state, &user, started, prelude).await)
        }
        ChatKitRequest::ThreadsAddUserMessage { params } => {
            let message = message_text(params.input)?;
            // Not found (or someone else's) is answered before any turn starts.
            threads::check_owned(&state, &user, &params.thread_id).await?;
            let conversation = conversation_id(&params.thread_id)?;
            let started = start(&state, &user, message.clone(), Some(conversation)).await?;
            let prelude = vec![
                StreamEvent::ItemDone {
                    item: user_item(&params.thread_id, started.request_id, message, Utc::now()),
                },
                stream_options(),
            ];
            Ok(stream(state, &user, started, prelude).await)
        }
        ChatKitRequest::ThreadsRetryAfterItem { params } => {
            let messages = threads::messages(&state, &user, &params.thread_id).await?;
            let last_user = messages
                .into_iter()
                .rev()
                .find(|message| message.role == MessageRole::User);
            let Some(last) =
                last_user.filter(|message| user_item_id(message.request_id) == params.item_id)
            else {
                return Err(ApiError::invalid(
                    "not_last_user_message",
                    format!(
                        "item {:?} is not the thread's last user message; only that one can be answered again",
                        params.item_id
                    ),
                ));
            };
            let conversation = conversation_id(&params.thread_id)?;
            let started = turn::start(
                &state,
                user.clone(),
                ChatInput::regenerate(conversation),
                None,
            )
            .await?;
            // The regenerate turn records the message again under its own request id:
            // the client's copy of it is replaced, so that its id is the one
            // `items.list` shows from now on (and a second retry names it).
            let prelude = vec![
                stream_options(),
                StreamEvent::ItemRemoved {
                    item_id: params.item_id.clone(),
                },
                StreamEvent::ItemDone {
                    item: user_item(
                        &params.thread_id,
                        started.request_id,
                        last.content,
                        Utc::now(),
                    ),
                },
            ];
            Ok(stream(state, &user, started, prelude).await)
        }
        ChatKitRequest::ThreadsAddClientToolOutput { params } => {
            threads::check_owned(&state, &user, &params.thread_id).await?;
            let refusal = StreamEvent::error(
                "This server has no client tools: threads.add_client_tool_output is not supported.",
                false,
            );
            let events = futures::stream::iter([Ok::<_, Infallible>(sse(&refusal))]);
            Ok(Sse::new(events).into_response())
        }
        ChatKitRequest::ThreadsGetById { params } => {
            // Items first: they wait for a thread made a moment ago.
            let items = threads::items(&state, &user, &params.thread_id).await?;
            let mut thread = threads::thread(&state, &user, &params.thread_id).await?;
            thread.items = page(
                &items,
                ThreadItem::id,
                types::Order::Asc,
                None,
                DEFAULT_PAGE_SIZE,
            )?;
            Ok(Json(thread).into_response())
        }
        ChatKitRequest::ThreadsList {
            params:
                ListParams {
                    limit,
                    order,
                    after,
                },
        } => {
            let limit = page_size(limit)?;
            let all = threads::threads(&state, &user).await?;
            let found = page(&all, |thread| &thread.id, order, after.as_deref(), limit)?;
            Ok(Json(found).into_response())
        }
        ChatKitRequest::ThreadsUpdate { params } => {
            let title = ConversationTitle::parse(&params.title)
                .map_err(|error| ApiError::invalid("invalid_title", error.to_string()))?;
            threads::check_owned(&state, &user, &params.thread_id).await?;
            let mut thread = threads::thread(&state, &user, &params.thread_id).await?;
            let command = ConversationCommand::Rename {
                user_id: user,
                conversation_id: conversation_id(&params.thread_id)?,
                title: title.as_str().to_owned(),
            };
            command_on(&state, &params.thread_id, &command).await?;
            thread.title = Some(title.into_inner());
            Ok(Json(thread).into_response())
        }
        ChatKitRequest::ThreadsDelete { params } => {
            let conversation = conversation_id(&params.thread_id)?;
            let command = ConversationCommand::Delete {
                user_id: user.clone(),
                conversation_id: conversation,
            };
            command_on(&state, &params.thread_id, &command).await?;
            // As the API's delete: a list right after it agrees with it.
            hidden_from_reads(&state, &user, conversation).await;
            Ok(Json(json!({})).into_response())
        }
        ChatKitRequest::ItemsList {
            params:
                ItemsListParams {
                    thread_id,
                    limit,
                    order,
                    after,
                },
        } => {
            let limit = page_size(limit)?;
            let items = threads::items(&state, &user, &thread_id).await?;
            let found = page(&items, ThreadItem::id, order, after.as_deref(), limit)?;
            Ok(Json(found).into_response())
        }
        ChatKitRequest::ItemsFeedback { params } => {
            check_feedback_items(&params.item_ids)
                .map_err(|reason| ApiError::invalid("invalid_feedback", reason))?;
            let command = ConversationCommand::Feedback {
                user_id: user,
                conversation_id: conversation_id(&params.thread_id)?,
                item_ids: params.item_ids,
                kind: match params.kind {
                    FeedbackKind::Positive => FeedbackEventKind::Positive,
                    FeedbackKind::Negative => FeedbackEventKind::Negative,
                },
            };
            command_on(&state, &params.thread_id, &command).await?;
            Ok(Json(json!({})).into_response())
        }
    }
}

/// Reads the request by its `type`: the protocol's types this server does not serve
/// → 400 `unsupported_request`; unknown types → 422 `unknown_request_type`; a body of
/// the wrong shape for its type → 422 `invalid_body`.
fn parse(body: Value) -> Result<ChatKitRequest, ApiError> {
    let Some(kind) = body.get("type").and_then(Value::as_str) else {
        return Err(ApiError::invalid(
            "invalid_body",
            "a ChatKit request is a JSON object with a string `type`",
        ));
    };
    if ChatKitRequest::NOT_SERVED.contains(&kind) {
        return Err(ApiError::BadRequest {
            code: "unsupported_request",
            message: format!(
                "{kind} is not supported by this server (no attachments, transcription, structured input or custom actions)"
            ),
        });
    }
    if !ChatKitRequest::SERVED.contains(&kind) {
        let kind = kind.chars().take(100).collect::<String>();
        return Err(ApiError::invalid(
            "unknown_request_type",
            format!(
                "unknown ChatKit request type {kind:?}; this server answers {}",
                ChatKitRequest::SERVED.join(", ")
            ),
        ));
    }
    let kind = kind.to_owned();
    serde_json::from_value(body)
        .map_err(|error| ApiError::invalid("invalid_body", format!("{kind}: {error}")))
}

/// The text of a user message input: its text parts (and tags, by their text) in
/// order, after the quoted text it answers, checked like any chat message.
fn message_text(input: UserMessageInput) -> Result<String, ApiError> {
    if !input.attachments.is_empty() {
        return Err(ApiError::invalid(
            "unsupported_attachments",
            "attachments are not supported by this server",
        ));
    }
    let text: String = input
        .content
        .into_iter()
        .map(|part| match part {
            UserMessageContent::InputText { text } | UserMessageContent::InputTag { text } => text,
        })
        .collect();
    let message = match input.quoted_text.filter(|quote| !quote.trim().is_empty()) {
        Some(quote) => format!("> {}\n\n{text}", quote.trim().replace('\n', "\n> ")),
        None => text,
    };
    Ok(message)
}

/// Starts a message turn with its progress subscribed, checked as `POST /chat` checks
/// it (the message's limits, the user's turn limits).
async fn start(
    state: &AppState,
    user: &UserId,
    message: String,
    conversation: Option<proto_schemas::ConversationId>,
) -> Result<StartedTurn, ApiError> {
    let mut input = ChatInput::parse(ChatBody {
        message,
        conversation_id: None,
    })?;
    input.conversation = conversation;
    turn::start(state, user.clone(), input, None).await
}

fn stream_options() -> StreamEvent {
    // Closing the stream does not stop a turn: it is queued and its answer is kept.
    StreamEvent::StreamOptions {
        stream_options: StreamOptions {
            allow_cancel: false,
        },
    }
}

/// The SSE answer: `prelude`, then the turn as ChatKit events.
async fn stream(
    state: AppState,
    user: &UserId,
    started: StartedTurn,
    prelude: Vec<StreamEvent>,
) -> Response {
    let render = TurnEvents::new(started.conversation_id.to_string(), started.request_id);
    let follow = Follow::started(&state, user, started).await;
    let prelude = prelude.iter().map(sse).collect();
    event_stream(state, follow, prelude, render)
}

/// Sends a conversation command to the agent-workers and maps their answer.
async fn command_on(
    state: &AppState,
    thread_id: &str,
    command: &ConversationCommand,
) -> Result<(), ApiError> {
    match send_command(state, command).await? {
        ConversationCommandReply::Done => Ok(()),
        // A thread's commands do not end turns; "already ended" cannot come back.
        ConversationCommandReply::NotFound | ConversationCommandReply::AlreadyEnded => {
            Err(thread_not_found(thread_id))
        }
        ConversationCommandReply::Invalid { reason } => {
            Err(ApiError::invalid("invalid_request", reason))
        }
        ConversationCommandReply::Unavailable { reason } => {
            Err(ApiError::unavailable("the event log", reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: Value) -> &'static str {
        parse(body).unwrap_err().code()
    }

    #[test]
    fn requests_are_read_by_type() {
        let request = parse(json!({
            "type": "threads.create",
            "metadata": {"any": 1},
            "params": {"input": {
                "content": [{"type": "input_text", "text": "add milk"}],
                "attachments": [],
                "inference_options": {}
            }}
        }))
        .unwrap();
        let ChatKitRequest::ThreadsCreate { params } = request else {
            panic!("threads.create: {request:?}");
        };
        assert_eq!(message_text(params.input).unwrap(), "add milk");
        let list = parse(json!({"type": "threads.list", "params": {}})).unwrap();
        assert_eq!(
            list,
            ChatKitRequest::ThreadsList {
                params: ListParams::default()
            }
        );
    }

    #[test]
    fn unknown_unsupported_and_malformed_requests_are_refused() {
        assert_eq!(
            code(json!({"type": "threads.explode", "params": {}})),
            "unknown_request_type"
        );
        assert_eq!(code(json!({"params": {}})), "invalid_body");
        assert_eq!(code(json!({"type": 7})), "invalid_body");
        assert_eq!(
            code(json!({"type": "attachments.create", "params": {}})),
            "unsupported_request"
        );
        assert_eq!(
            code(json!({"type": "threads.get_by_id", "params": {}})),
            "invalid_body"
        );
        assert_eq!(
            code(
                json!({"type": "items.feedback", "params": {"thread_id": "t", "item_ids": [], "kind": "meh"}})
            ),
            "invalid_body"
        );
    }

    #[test]
    fn quotes_and_tags_are_part_of_the_message() {
        let input: UserMessageInput = serde_json::from_value(json!({
            "content": [
                {"type": "input_text", "text": "done with "},
                {"type": "input_tag", "id": "t1", "text": "milk", "data": {}}
            ],
            "attachments": [],
            "quoted_text": "buy milk\nand eggs",
            "inference_options": {}
        }))
        .unwrap();
        assert_eq!(
            message_text(input).unwrap(),
            "> buy milk\n> and eggs\n\ndone with milk"
        );
        let with_file: UserMessageInput = serde_json::from_value(json!({
            "content": [], "attachments": ["a1"], "inference_options": {}
        }))
        .unwrap();
        assert_eq!(
            message_text(with_file).unwrap_err().code(),
            "unsupported_attachments"
        );
    }
}
