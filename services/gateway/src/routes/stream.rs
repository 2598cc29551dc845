//! `POST /api/{user_id}/chat/stream`: the same turn as `/chat`, relayed as
//! Server-Sent Events while it runs.
//!
//! The request is in JetStream before the response starts, so a client that goes
//! away does not stop the turn: its answer is stored and shows in the history.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt as _, StreamExt as _};
use proto_schemas::chat::{ChatReply, ChatStreamChunk};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::api::{ChatBody, ChatStreamEvent, chunk_event};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, AuthUser};
use crate::idempotency::IdempotencyKey;
use crate::routes::chat::answer;
use crate::state::AppState;
use crate::turn::{self, ChatInput, StartedTurn};

/// Events buffered for a slow client before the relay waits for it.
const EVENT_BUFFER: usize = 64;

/// Send a chat message and follow the turn as Server-Sent Events.
///
/// Events: `delta` (`{"text"}`, a piece of the answer), `tool_call_started`
/// (`{"call_id","name","arguments"}`), `tool_call_finished`
/// (`{"call_id","name","arguments","result"}`), then exactly one of `final` (the same
/// JSON as `POST /chat` answers) or `error` (`{"error":{"code","message","request_id"}}`).
/// Problems found before the turn starts (auth, validation) are plain JSON errors as
/// for `POST /chat`. Disconnecting does not stop the turn.
#[utoipa::path(
    post,
    path = "/api/{user_id}/chat/stream",
    tag = "chat",
    params(
        ("user_id" = String, Path, description = "The user; must be the token's subject"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = r"^[!-~]([ -~]{0,198}[!-~])?$", description = "Retry key, 1 to 200 printable ASCII characters; a retry follows the first turn"),
    ),
    request_body = ChatBody,
    responses(
        (status = 200, description = "An event stream: delta, tool_call_started, tool_call_finished, then final or error", content_type = "text/event-stream", body = ChatStreamEvent),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The token is for another user", body = ErrorBody),
        (status = 404, description = "The conversation does not exist or is not the user's", body = ErrorBody),
        (status = 413, description = "The body is over the size limit", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "Empty or over-long message, bad conversation id or Idempotency-Key", body = ErrorBody),
        (status = 429, description = "The user has too many turns running (`too_many_turns`) or sent too many messages this minute (`rate_limited`); see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before sending again"))),
        (status = 503, description = "The message bus is unavailable, or the queue of turns is full (`busy`); see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before sending again"))),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_chat_stream(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(&headers)?;
    let input = ChatInput::parse(body)?;
    let started = turn::start(&state, user, input, key, true).await?;
    let ids = [
        (
            HeaderName::from_static("x-request-id"),
            started.request_id.to_string(),
        ),
        (
            HeaderName::from_static("x-conversation-id"),
            started.conversation_id.to_string(),
        ),
    ];

    let mut response = event_stream(state, started, Vec::new(), ApiEvents);
    let response_headers = response.headers_mut();
    for (name, value) in ids {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response_headers.insert(name, value);
        }
    }
    Ok(response)
}

/// How a turn's progress chunks and its end become SSE events: the API's named
/// events ([`ApiEvents`]) or ChatKit's thread stream events (`crate::chatkit`).
pub(crate) trait RenderTurn: Send + 'static {
    /// The events one progress chunk becomes (none for chunks the client is not shown).
    fn chunk(&mut self, chunk: ChatStreamChunk) -> Vec<Event>;
    /// The last events: the reply, or why waiting for it ended.
    fn end(&mut self, end: Result<ChatReply, ApiError>) -> Vec<Event>;
}

/// The API's own events: `delta`, `tool_call_started`, `tool_call_finished`,
/// `approval_required`, then `final` or `error`.
struct ApiEvents;

impl RenderTurn for ApiEvents {
    fn chunk(&mut self, chunk: ChatStreamChunk) -> Vec<Event> {
        chunk_event(chunk)
            .map(|(name, data)| Event::default().event(name).data(data.to_string()))
            .into_iter()
            .collect()
    }

    fn end(&mut self, end: Result<ChatReply, ApiError>) -> Vec<Event> {
        vec![match end {
            Ok(reply) => end_event(reply),
            Err(error) => error_event(&error),
        }]
    }
}

/// The SSE response that sends `prelude`, then relays `started` rendered by `render`.
pub(crate) fn event_stream(
    state: AppState,
    started: StartedTurn,
    prelude: Vec<Event>,
    render: impl RenderTurn,
) -> Response {
    let (events, receiver) = mpsc::channel(EVENT_BUFFER.max(prelude.len()));
    for event in prelude {
        // The channel is new and has room for the prelude.
        let _ = events.try_send(event);
    }
    tokio::spawn(relay(state, started, events, render).instrument(tracing::Span::current()));
    let stream = ReceiverStream::new(receiver).map(Ok::<_, Infallible>);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Reverse proxies (nginx ingress) would otherwise hold events back.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// Forwards the turn's progress and its end to `events` until the reply arrives, the
/// wait times out, the server stops or the client goes away.
async fn relay(
    state: AppState,
    started: StartedTurn,
    events: mpsc::Sender<Event>,
    mut render: impl RenderTurn,
) {
    let StartedTurn {
        request_id,
        conversation_id,
        stored,
        mut replies,
        chunks,
    } = started;
    if let Some(reply) = stored {
        send_all(&events, render.end(Ok(reply))).await;
        return;
    }
    let mut chunks = chunks;
    let deadline = turn::deadline(state.settings().reply_timeout);
    loop {
        tokio::select! {
            // Chunks first: a chunk and the reply may both be waiting, and the chunk
            // was sent earlier.
            biased;
            () = events.closed() => {
                tracing::info!(%request_id, "stream client went away, the turn goes on");
                return;
            }
            chunk = next_chunk(&mut chunks), if chunks.is_some() => match chunk {
                Some(chunk) => {
                    if !send_all(&events, render.chunk(chunk)).await {
                        return;
                    }
                }
                None => chunks = None,
            },
            reply = turn::next_reply(&state, &mut replies, request_id, deadline) => {
                // The worker sends every chunk before the reply, and one connection
                // delivers in order: whatever chunks there are have been buffered.
                if let Some(subscriber) = chunks.as_mut() {
                    while let Some(Some(message)) = subscriber.next().now_or_never() {
                        if let Some(chunk) = decode_chunk(&message.payload)
                            && !send_all(&events, render.chunk(chunk)).await
                        {
                            return;
                        }
                    }
                }
                let end = reply.map_err(|end| turn::wait_error(end, request_id, conversation_id));
                send_all(&events, render.end(end)).await;
                return;
            }
        }
    }
}

/// Sends `batch` in order; false when the client went away.
async fn send_all(events: &mpsc::Sender<Event>, batch: Vec<Event>) -> bool {
    for event in batch {
        if events.send(event).await.is_err() {
            return false;
        }
    }
    true
}

/// The next readable chunk; `None` when the subscription ended.
async fn next_chunk(chunks: &mut Option<async_nats::Subscriber>) -> Option<ChatStreamChunk> {
    let subscriber = chunks.as_mut()?;
    loop {
        let message = subscriber.next().await?;
        if let Some(chunk) = decode_chunk(&message.payload) {
            return Some(chunk);
        }
    }
}

fn decode_chunk(payload: &[u8]) -> Option<ChatStreamChunk> {
    match platform::bus::decode_json::<ChatStreamChunk>(payload) {
        Ok(chunk) => Some(chunk),
        Err(error) => {
            tracing::warn!(%error, "ignoring an unreadable stream chunk");
            None
        }
    }
}

/// `final` with the answer, or `error` for a failed turn.
fn end_event(reply: ChatReply) -> Event {
    match answer(reply) {
        Ok(answer) => Event::default()
            .event("final")
            .data(serde_json::to_string(&answer).unwrap_or_default()),
        Err(error) => error_event(&error),
    }
}

fn error_event(error: &ApiError) -> Event {
    if error.status().is_server_error() {
        tracing::warn!(code = error.code(), error = %error, "chat stream ended with an error");
    }
    Event::default()
        .event("error")
        .data(serde_json::to_string(&error.body()).unwrap_or_default())
}
