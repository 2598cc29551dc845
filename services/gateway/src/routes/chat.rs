//! `POST /api/{user_id}/chat`: one chat turn, answered when the worker replies.

use axum::Json;
use axum::extract::State;
use proto_schemas::UserId;
use proto_schemas::chat::{ChatOutcome, ChatReply};

use crate::api::{ChatAnswer, ChatBody};
use crate::error::{ApiError, ErrorBody, TurnIds};
use crate::extract::AuthUser;
use crate::routes::docs::{
    AuthErrors, IdempotencyKeyHeader, JsonBodyErrors, TurnRefusals, TurnWaitErrors, UserPath,
};
use crate::state::AppState;
use crate::turn::{self, TurnRequest};

/// Send a chat message and get the assistant's answer.
///
/// The turn runs on an agent-worker through JetStream. If no reply comes within the
/// gateway's reply timeout the answer is 504 with the request id; the turn still
/// completes and shows in the conversation's history. A retry with the same
/// `Idempotency-Key` returns the first turn's answer and runs nothing twice.
#[utoipa::path(
    post,
    path = "/api/{user_id}/chat",
    tag = "chat",
    params(UserPath, IdempotencyKeyHeader),
    request_body = ChatBody,
    responses(
        (status = 200, description = "The assistant's answer", body = ChatAnswer),
        (status = 404, description = "The conversation does not exist or is not the user's", body = ErrorBody),
        (status = 422, description = "Empty or over-long message, bad conversation id or Idempotency-Key", body = ErrorBody),
        AuthErrors,
        JsonBodyErrors,
        TurnRefusals,
        TurnWaitErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_chat(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    request: TurnRequest,
) -> Result<Json<ChatAnswer>, ApiError> {
    run_turn(&state, user, request).await
}

/// Queues the turn and waits for its reply: `POST /chat` and its regenerate twin.
pub(crate) async fn run_turn(
    state: &AppState,
    user: UserId,
    request: TurnRequest,
) -> Result<Json<ChatAnswer>, ApiError> {
    let mut started = turn::start(state, user, request.input, request.key).await?;
    let reply = match started.stored.take() {
        Some(reply) => reply,
        None => {
            turn::wait_for_reply(
                state,
                &mut started.replies,
                started.request_id,
                started.conversation_id,
            )
            .await?
        }
    };
    answer(reply).map(Json)
}

/// The HTTP answer a reply becomes: the answer, or the error the failed turn means.
pub(crate) fn answer(reply: ChatReply) -> Result<ChatAnswer, ApiError> {
    match reply.outcome {
        ChatOutcome::Answered {
            response,
            tool_calls,
        } => Ok(ChatAnswer {
            conversation_id: reply.conversation_id,
            response,
            tool_calls: tool_calls.into_iter().map(Into::into).collect(),
            request_id: reply.request_id,
            pending_approval: None,
        }),
        ChatOutcome::PendingApproval {
            approval,
            tool_calls,
        } => Ok(ChatAnswer {
            conversation_id: reply.conversation_id,
            response: String::new(),
            tool_calls: tool_calls.into_iter().map(Into::into).collect(),
            request_id: reply.request_id,
            pending_approval: Some(approval.into()),
        }),
        ChatOutcome::Failed { error } => {
            let turn = TurnIds {
                request_id: reply.request_id,
                conversation_id: reply.conversation_id,
            };
            Err(ApiError::from_turn(&error, turn))
        }
    }
}
