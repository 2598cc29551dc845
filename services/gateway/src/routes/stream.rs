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

    let (events, receiver) = mpsc::channel(EVENT_BUFFER);
    tokio::spawn(relay(state, started, events).instrument(tracing::Span::current()));
    let stream = ReceiverStream::new(receiver).map(Ok::<_, Infallible>);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    let response_headers = response.headers_mut();
    for (name, value) in ids {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response_headers.insert(name, value);
        }
    }
    // Reverse proxies (nginx ingress) would otherwise hold events back.
    response_headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// Forwards the turn's progress and its end to `events` until the reply arrives, the
/// wait times out, the server stops or the client goes away.
async fn relay(state: AppState, started: StartedTurn, events: mpsc::Sender<Event>) {
    let StartedTurn {
        request_id,
        conversation_id,
        stored,
        mut replies,
        chunks,
    } = started;
    if let Some(reply) = stored {
        let _ = events.send(end_event(reply)).await;
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
                Some(event) => {
                    if events.send(event).await.is_err() {
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
                        if let Some(event) = decode_chunk(&message.payload)
                            && events.send(event).await.is_err()
                        {
                            return;
                        }
                    }
                }
                let event = match reply {
                    Ok(reply) => end_event(reply),
                    Err(end) => error_event(&turn::wait_error(end, request_id, conversation_id)),
                };
                let _ = events.send(event).await;
                return;
            }
        }
    }
}

/// The next readable chunk as an event; `None` when the subscription ended.
async fn next_chunk(chunks: &mut Option<async_nats::Subscriber>) -> Option<Event> {
    let subscriber = chunks.as_mut()?;
    loop {
        let message = subscriber.next().await?;
        if let Some(event) = decode_chunk(&message.payload) {
            return Some(event);
        }
    }
}

fn decode_chunk(payload: &[u8]) -> Option<Event> {
    match platform::bus::decode_json::<ChatStreamChunk>(payload) {
        Ok(chunk) => {
            let (name, data) = chunk_event(chunk)?;
            Some(Event::default().event(name).data(data.to_string()))
        }
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
