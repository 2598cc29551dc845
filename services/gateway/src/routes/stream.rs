//! `POST /api/{user_id}/chat/stream`: the same turn as `/chat`, relayed as
//! Server-Sent Events while it runs.
//!
//! The request is in JetStream before the response starts, so a client that goes
//! away does not stop the turn: its answer is stored and shows in the history, and
//! its events can be read again (`GET …/turns/{request_id}/events`, see
//! [`crate::progress`]).

use proto_schemas::UserId;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::api::{ChatBody, ChatStreamEvent};
use crate::error::{ApiError, ErrorBody};
use crate::extract::AuthUser;
use crate::progress::{self, ApiEvents, Follow, RenderTurn};
use crate::routes::docs::{
    AuthErrors, IdempotencyKeyHeader, JsonBodyErrors, TurnRefusals, UserPath,
};
use crate::state::AppState;
use crate::turn::{self, TurnRequest};

/// Events buffered for a slow client before the relay waits for it.
const EVENT_BUFFER: usize = 64;

/// Send a chat message and follow the turn as Server-Sent Events.
///
/// Events: `delta` (`{"text"}`, a piece of the answer), `tool_call_started`
/// (`{"call_id","name","arguments"}`), `tool_call_finished`
/// (`{"call_id","name","arguments","result"}`), then exactly one of `final` (the same
/// JSON as `POST /chat` answers) or `error` (`{"error":{"code","message","request_id"}}`);
/// a turn paused for an approval ends with `approval_required` instead. Every event
/// has an `id:` that is the same on every read of the turn (the end event's is `end`):
/// after a dropped connection, `GET /api/{user_id}/turns/{request_id}/events` with
/// `Last-Event-ID` sends the rest (the request id is in the `X-Request-Id` header).
/// Problems found before the turn starts (auth, validation) are plain JSON errors as
/// for `POST /chat`. Disconnecting does not stop the turn.
#[utoipa::path(
    post,
    path = "/api/{user_id}/chat/stream",
    tag = "chat",
    params(UserPath, IdempotencyKeyHeader),
    request_body = ChatBody,
    responses(
        (status = 200, description = "An event stream: delta, tool_call_started, tool_call_finished, then final or error", content_type = "text/event-stream", body = ChatStreamEvent),
        (status = 404, description = "The conversation does not exist or is not the user's", body = ErrorBody),
        (status = 422, description = "Empty or over-long message, bad conversation id or Idempotency-Key", body = ErrorBody),
        AuthErrors,
        JsonBodyErrors,
        TurnRefusals,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_chat_stream(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    request: TurnRequest,
) -> Result<Response, ApiError> {
    stream_turn(state, user, request).await
}

/// Queues the turn and follows it as Server-Sent Events: `POST /chat/stream` and its
/// regenerate twin.
pub(crate) async fn stream_turn(
    state: AppState,
    user: UserId,
    request: TurnRequest,
) -> Result<Response, ApiError> {
    let started = turn::start(&state, user.clone(), request.input, request.key).await?;
    let follow = Follow::started(&state, &user, started).await;
    let ids = [
        (
            HeaderName::from_static("x-request-id"),
            follow.request_id.to_string(),
        ),
        (
            HeaderName::from_static("x-conversation-id"),
            follow.conversation_id.to_string(),
        ),
    ];

    let mut response = event_stream(state, follow, Vec::new(), ApiEvents);
    let response_headers = response.headers_mut();
    for (name, value) in ids {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response_headers.insert(name, value);
        }
    }
    Ok(response)
}

/// The SSE response that sends `prelude`, then relays `follow` rendered by `render`
/// (see [`progress::relay`]).
pub(crate) fn event_stream(
    state: AppState,
    follow: Follow,
    prelude: Vec<Event>,
    render: impl RenderTurn,
) -> Response {
    let (events, receiver) = mpsc::channel(EVENT_BUFFER.max(prelude.len()));
    for event in prelude {
        // The channel is new and has room for the prelude.
        let _ = events.try_send(event);
    }
    tokio::spawn(
        progress::relay(state, follow, events, render).instrument(tracing::Span::current()),
    );
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
