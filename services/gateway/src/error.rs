//! The one error type of the HTTP edge: every failure a handler can return, mapped
//! to a status and the JSON body `{"error": {"code", "message", …}}`. 5xx causes are
//! logged here and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::auth::AuthError;
use proto_schemas::chat::{ChatError, ChatErrorCode};
use proto_schemas::{ConversationId, RequestId};
use serde::Serialize;
use utoipa::ToSchema;

/// What a 503 names when the message bus failed, and how a bus outage is told apart.
const MESSAGE_BUS: &str = "the message bus";

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, in words fit for the user.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `message_too_long` or `reply_timeout`.
    pub code: String,
    /// A sentence saying what was wrong and, where it helps, what to do.
    pub message: String,
    /// The chat turn concerned, when there is one (quote it when reporting a problem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub request_id: Option<RequestId>,
    /// The conversation of that turn, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub conversation_id: Option<ConversationId>,
}

/// The turn an error is about; its ids go in the error body, where the client finds
/// the turn again (its answer may still come, or be in the conversation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnIds {
    pub request_id: RequestId,
    pub conversation_id: ConversationId,
}

/// A failed HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("the token does not allow acting for this user")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// The body is not JSON at all.
    #[error("{0}")]
    MalformedJson(String),
    /// A request the server cannot read at all (a path that is not UTF-8, …).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("send the body as JSON with the header Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The client did not send its whole body in time; the connection is closed.
    #[error("the request body did not arrive within {seconds} s")]
    RequestTimeout { seconds: u64 },
    /// More header fields, or more header bytes, than the gateway reads.
    #[error(
        "the request headers are too large: at most {max_fields} fields and {max_bytes} bytes are read"
    )]
    HeadersTooLarge { max_fields: usize, max_bytes: usize },
    /// Well-formed input that breaks a rule (422).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The request is fine but the thing it acts on is not in a state that allows it
    /// (a finished turn cannot be cancelled, a decided approval not decided again).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The turn ran but the named conversation is not the user's or does not exist.
    #[error("conversation {} was not found", .turn.conversation_id)]
    ConversationNotFound { turn: TurnIds },
    /// The person stopped the turn (`POST …/turns/{request_id}/cancel`).
    #[error("you stopped this message before it was answered (request {})", .turn.request_id)]
    Cancelled { turn: TurnIds },
    /// A regenerate found no finished answer to replace (the last turn still runs or
    /// waits for an approval).
    #[error(
        "there is no finished answer to regenerate yet: wait for the last answer, or approve or decline its tool call, then try again (request {})",
        .turn.request_id
    )]
    NothingToRegenerate { turn: TurnIds },
    /// The model, its provider or the worker failed the turn.
    #[error(
        "the assistant could not answer this message right now; please try again (request {})",
        .turn.request_id
    )]
    TurnFailed { code: ChatErrorCode, turn: TurnIds },
    /// The turn has ended: there is nothing to stop.
    #[error("this turn (request {request_id}) has already ended; there is nothing to stop")]
    TurnFinished { request_id: RequestId },
    #[error(
        "the assistant is still working on this message (request {}); its answer will appear in the conversation history",
        .turn.request_id
    )]
    ReplyTimeout { turn: TurnIds },
    #[error(
        "the server is restarting; your message is still being answered (request {}) and will appear in the conversation history",
        .turn.request_id
    )]
    ShuttingDown { turn: TurnIds },
    /// The user has as many turns waiting or running as one user may.
    #[error(
        "you already have {limit} messages being answered; wait for an answer, then send again"
    )]
    TooManyTurns { limit: u32 },
    /// The user sent more messages within a minute than one user may.
    #[error("too many messages in a short time; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The queue of turns is full: the service sheds load rather than answer late.
    #[error("the assistant is busy right now; please try again in a few seconds")]
    Busy,
    /// A backend (NATS, the projection) could not be reached; `cause` goes to the log.
    #[error("{what} is unavailable right now; please try again shortly")]
    Unavailable { what: &'static str, cause: String },
    /// A bug or a broken contract; `cause` goes to the log.
    #[error("something went wrong on our side; please try again")]
    Internal { cause: String },
}

impl ApiError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            what,
            cause: cause.to_string(),
        }
    }

    /// The message bus failed (`cause` says how): a 503 that a retry may cure, which
    /// [`Self::is_bus_outage`] recognises.
    pub fn bus_unavailable(cause: impl std::fmt::Display) -> Self {
        Self::unavailable(MESSAGE_BUS, cause)
    }

    /// No turn of this user's with this id (another user's is not found either).
    pub fn turn_not_found(request_id: RequestId) -> Self {
        Self::NotFound(format!("turn {request_id} was not found"))
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal {
            cause: cause.to_string(),
        }
    }

    /// What `turn` failing with `error` becomes.
    pub fn from_turn(error: &ChatError, turn: TurnIds) -> Self {
        match error.code {
            ChatErrorCode::ConversationNotFound => Self::ConversationNotFound { turn },
            ChatErrorCode::Cancelled => Self::Cancelled { turn },
            ChatErrorCode::NothingToRegenerate => Self::NothingToRegenerate { turn },
            code => Self::TurnFailed { code, turn },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::ConversationNotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::MalformedJson(_) | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            // The person stopped the turn: the request conflicts with their own later one.
            Self::Cancelled { .. } | Self::NothingToRegenerate { .. } => StatusCode::CONFLICT,
            Self::TurnFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::TurnFinished { .. } => StatusCode::CONFLICT,
            Self::ReplyTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::TooManyTurns { .. } | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown { .. } | Self::Busy | Self::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(AuthError::Missing) => "missing_token",
            Self::Unauthorized(AuthError::Invalid) => "invalid_token",
            Self::Unauthorized(AuthError::Expired) => "expired_token",
            Self::Forbidden => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::MalformedJson(_) => "malformed_json",
            Self::BadRequest { code, .. } => code,
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::Invalid { code, .. } | Self::Conflict { code, .. } => code,
            Self::ConversationNotFound { .. } => "conversation_not_found",
            Self::Cancelled { .. } => "cancelled",
            Self::NothingToRegenerate { .. } => "nothing_to_regenerate",
            Self::TurnFailed { code, .. } => match code {
                ChatErrorCode::ModelUnavailable => "model_unavailable",
                ChatErrorCode::DeliveryExhausted => "delivery_exhausted",
                ChatErrorCode::ConversationNotFound => "conversation_not_found",
                // Answered as `Cancelled`; kept for a reply that names it otherwise.
                ChatErrorCode::Cancelled => "cancelled",
                ChatErrorCode::NothingToRegenerate => "nothing_to_regenerate",
                ChatErrorCode::Internal => "turn_failed",
            },
            Self::TurnFinished { .. } => "turn_finished",
            Self::ReplyTimeout { .. } => "reply_timeout",
            Self::ShuttingDown { .. } => "shutting_down",
            Self::TooManyTurns { .. } => "too_many_turns",
            Self::RateLimited { .. } => "rate_limited",
            Self::Busy => "busy",
            Self::Unavailable { .. } => "service_unavailable",
            Self::Internal { .. } => "internal",
        }
    }

    /// A new turn refused before it was queued (nothing of it was stored).
    pub fn is_admission_refusal(&self) -> bool {
        matches!(
            self,
            Self::TooManyTurns { .. } | Self::RateLimited { .. } | Self::Busy
        )
    }

    /// The message bus could not be reached: a step that is safe to repeat may wait
    /// for it to come back (a restart takes seconds).
    pub fn is_bus_outage(&self) -> bool {
        matches!(self, Self::Unavailable { what, .. } if *what == MESSAGE_BUS)
    }

    /// Seconds the client should wait before trying again (`Retry-After`), for the
    /// errors that a later retry can cure.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            // A turn takes seconds; by then one of the user's turns has usually ended.
            Self::TooManyTurns { .. } => Some(2),
            Self::Busy | Self::Unavailable { .. } | Self::ShuttingDown { .. } => Some(5),
            _ => None,
        }
    }

    /// The JSON body sent to the client (no internal causes).
    pub fn body(&self) -> ErrorBody {
        let (request_id, conversation_id) = match self {
            Self::ConversationNotFound { turn }
            | Self::Cancelled { turn }
            | Self::NothingToRegenerate { turn }
            | Self::TurnFailed { turn, .. }
            | Self::ReplyTimeout { turn }
            | Self::ShuttingDown { turn } => (Some(turn.request_id), Some(turn.conversation_id)),
            Self::TurnFinished { request_id } => (Some(*request_id), None),
            _ => (None, None),
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                request_id,
                conversation_id,
            },
        }
    }

    fn log(&self) {
        match self {
            Self::Unavailable { what, cause } => {
                tracing::warn!(what, cause = %cause, "backend unavailable")
            }
            Self::Internal { cause } => tracing::error!(cause = %cause, "request failed"),
            Self::TurnFailed { code, turn } => {
                // The worker logged the cause; this line ties the HTTP answer to it.
                tracing::warn!(?code, request_id = %turn.request_id, "chat turn failed")
            }
            Self::Busy => tracing::warn!("the chat queue is full, a turn was refused"),
            Self::ReplyTimeout { turn } => {
                tracing::warn!(request_id = %turn.request_id, "no reply within the timeout")
            }
            other => tracing::debug!(code = other.code(), error = %other, "request refused"),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        Self::Unauthorized(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, Self::RequestTimeout { .. }) {
            // The rest of the body may still be on its way: the connection cannot be
            // reused for another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::Unauthorized(error) = &self {
            // RFC 6750: say which scheme is expected, and whether the token was bad. The
            // router's layer adds where the metadata is, and needs the error for that.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                platform::auth::resource::challenge(crate::routes::REALM, *error, None),
            );
            response.extensions_mut().insert(*error);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_stay_out_of_the_body() {
        let error = ApiError::internal("connection refused by 10.0.0.7");
        let body = serde_json::to_string(&error.body()).unwrap();
        assert!(!body.contains("10.0.0.7"), "{body}");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let error = ApiError::unavailable("the projection", "no responders on queries.tasks");
        let body = serde_json::to_string(&error.body()).unwrap();
        assert!(!body.contains("responders"), "{body}");
    }

    #[test]
    fn refusals_a_retry_can_cure_say_when_to_retry() {
        let cases = [
            (
                ApiError::TooManyTurns { limit: 8 },
                429,
                "too_many_turns",
                Some("2"),
            ),
            (
                ApiError::RateLimited {
                    retry_after_secs: 17,
                },
                429,
                "rate_limited",
                Some("17"),
            ),
            (ApiError::Busy, 503, "busy", Some("5")),
            (
                ApiError::bus_unavailable("down"),
                503,
                "service_unavailable",
                Some("5"),
            ),
            (ApiError::internal("bug"), 500, "internal", None),
        ];
        for (error, status, code, retry_after) in cases {
            assert_eq!(error.code(), code);
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            let header = response.headers().get(header::RETRY_AFTER);
            assert_eq!(
                header.map(|value| value.to_str().unwrap()),
                retry_after,
                "{code}"
            );
        }
    }

    #[test]
    fn failed_turns_map_to_their_statuses() {
        let request = RequestId::new();
        let conversation = ConversationId::new();
        let failed = |code, message: &str| {
            let error = ChatError {
                code,
                message: message.into(),
            };
            let turn = TurnIds {
                request_id: request,
                conversation_id: conversation,
            };
            ApiError::from_turn(&error, turn)
        };
        let error = failed(ChatErrorCode::ConversationNotFound, "no such conversation");
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        assert_eq!(error.code(), "conversation_not_found");
        let error = failed(ChatErrorCode::NothingToRegenerate, "not yet");
        assert_eq!(error.status(), StatusCode::CONFLICT);
        assert_eq!(error.code(), "nothing_to_regenerate");
        assert_eq!(error.body().error.conversation_id, Some(conversation));
        for code in [
            ChatErrorCode::ModelUnavailable,
            ChatErrorCode::DeliveryExhausted,
            ChatErrorCode::Internal,
        ] {
            let error = failed(code, "provider said 500: stack trace");
            assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
            let body = error.body();
            assert_eq!(body.error.request_id, Some(request));
            assert!(body.error.message.contains(&request.to_string()));
            assert!(!body.error.message.contains("stack trace"));
        }
    }
}
