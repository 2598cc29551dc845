//! A turn after it was sent: `GET /api/{user_id}/turns/{request_id}/events` reads its
//! events again (resuming after `Last-Event-ID`), `POST …/cancel` stops it. Both find
//! the turn in JetStream ([`crate::progress`]), so they work on any gateway replica and
//! after a restart.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use proto_schemas::chat::{ChatOutcome, TurnKind};
use proto_schemas::conversations::{ConversationCommand, ConversationCommandReply};

use crate::api::{CancelAccepted, CancelStatus, ChatStreamEvent};
use crate::error::{ApiError, ErrorBody};
use crate::extract::AuthUser;
use crate::progress::{self, ApiEvents, Follow, KnownTurn, LastEventId, Progress};
use crate::routes::conversations::send_command;
use crate::routes::docs::{AuthErrors, UserPath};
use crate::routes::stream::event_stream;
use crate::state::AppState;
use crate::turn;

/// Read a turn's events again, as Server-Sent Events.
///
/// The same events, with the same ids, as `POST /api/{user_id}/chat/stream` sent for
/// the turn. With `Last-Event-ID`, only what came after that event, then the live
/// events until the turn ends (`final` or `error`; `approval_required` for a turn
/// waiting for an approval). A finished turn is replayed and the stream ends; once its
/// progress has expired (after an hour), only its end event is left.
#[utoipa::path(
    get,
    path = "/api/{user_id}/turns/{request_id}/events",
    tag = "chat",
    params(
        UserPath,
        ("request_id" = String, Path, format = Uuid, description = "The turn (`request_id` of the chat answer, `X-Request-Id` of a stream)"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^\s*(0*[0-9]{1,19}|end)\s*$", description = "The id of the last event received: only later events are sent; `end` → 204"),
    ),
    responses(
        (status = 200, description = "An event stream: delta, tool_call_started, tool_call_finished, then final or error (or approval_required)", content_type = "text/event-stream", body = ChatStreamEvent),
        (status = 204, description = "`Last-Event-ID: end`: the turn has nothing more to send"),
        (status = 404, description = "No such turn for this user", body = ErrorBody),
        (status = 422, description = "Bad request id or Last-Event-ID", body = ErrorBody),
        (status = 503, description = "The message bus is unavailable", body = ErrorBody),
        AuthErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_turn_events(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, request)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request_id = progress::parse_request_id(&request)?;
    let after = match LastEventId::from_headers(&headers)? {
        // SSE clients stop reconnecting on 204.
        Some(LastEventId::End) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Some(LastEventId::Chunk(sequence)) => sequence,
        None => 0,
    };
    // Before looking for a stored reply, so that a reply in between is not missed.
    let replies = turn::subscribe_replies(&state, request_id).await?;
    let follow = match progress::find(&state, &user, request_id).await? {
        KnownTurn::Progress(request) => Follow {
            request_id,
            conversation_id: request.conversation_id,
            progress: Some(Progress::open(&state, &user, request_id, after).await?),
            stored: turn::stored_reply(&state, request_id).await,
            replies,
        },
        KnownTurn::Reply(reply) => Follow {
            request_id,
            conversation_id: reply.conversation_id,
            progress: None,
            stored: Some(*reply),
            replies,
        },
    };
    Ok(event_stream(state, follow, Vec::new(), ApiEvents))
}

/// Stop a turn.
///
/// The turn stops at its next safe point: the model call in flight is abandoned, no
/// further tool call starts, the tool calls already made stay made. Its events (and
/// `POST /chat`) end with an `error` of code `cancelled`.
#[utoipa::path(
    post,
    path = "/api/{user_id}/turns/{request_id}/cancel",
    tag = "chat",
    params(
        UserPath,
        ("request_id" = String, Path, format = Uuid, description = "The turn to stop"),
    ),
    responses(
        (status = 202, description = "The turn is being stopped", body = CancelAccepted),
        (status = 404, description = "No such turn for this user", body = ErrorBody),
        (status = 409, description = "The turn has already ended (`turn_finished`)", body = ErrorBody),
        (status = 422, description = "Bad request id", body = ErrorBody),
        (status = 503, description = "The message bus or the event log is unavailable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        AuthErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_cancel_turn(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, request)): Path<(String, String)>,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    let request_id = progress::parse_request_id(&request)?;
    let request = match progress::find(&state, &user, request_id).await? {
        // Whether it has ended meanwhile, the workers tell from the log.
        KnownTurn::Progress(request) => *request,
        KnownTurn::Reply(reply) => match reply.outcome {
            // A paused turn's message is in the log already: the worker only records
            // the ending.
            ChatOutcome::PendingApproval { .. } => {
                turn::about_turn(request_id, user, reply.conversation_id, TurnKind::Message)
            }
            ChatOutcome::Answered { .. } | ChatOutcome::Failed { .. } => {
                return Err(ApiError::TurnFinished { request_id });
            }
        },
    };
    let reply = send_command(&state, &ConversationCommand::CancelTurn { request }).await?;
    match reply {
        ConversationCommandReply::Done => Ok((
            StatusCode::ACCEPTED,
            Json(CancelAccepted {
                request_id,
                status: CancelStatus::Cancelling,
            }),
        )),
        ConversationCommandReply::AlreadyEnded => Err(ApiError::TurnFinished { request_id }),
        ConversationCommandReply::NotFound => Err(ApiError::turn_not_found(request_id)),
        ConversationCommandReply::Unavailable { reason } => {
            Err(ApiError::unavailable("the event log", reason))
        }
        ConversationCommandReply::Invalid { reason } => Err(ApiError::internal(format!(
            "the workers refused a cancel command: {reason}"
        ))),
    }
}
