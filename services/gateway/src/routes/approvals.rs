//! `POST /api/{user_id}/turns/{request_id}/approvals/{approval_id}`: the person's
//! decision on a tool call that waits for approval (`AGENT_CONFIRM_TOOLS`).
//!
//! A paused turn holds no worker: it is state in the log, and its pending reply sits
//! in the replies stream. The decision goes to the workers as a request of its own
//! (`TurnKind::Approval`, message id per approval, so a double click resumes the turn
//! once); this route then waits for the turn's next reply like `POST /chat` does.

use axum::Json;
use axum::extract::{Path, State};
use proto_schemas::ApprovalId;
use proto_schemas::chat::{ChatOutcome, ChatReply, TurnKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::ChatAnswer;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, AuthUser};
use crate::routes::chat::answer;
use crate::routes::docs::{AuthErrors, JsonBodyErrors, TurnWaitErrors, UserPath};
use crate::state::AppState;
use crate::turn;

/// The person's decision on a tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"approve": true}))]
pub(crate) struct ApprovalBody {
    /// `true` runs the call; `false` tells the model the person declined it.
    pub approve: bool,
}

/// Approve or decline a tool call the turn waits on, and get the turn's next answer.
///
/// The answer has the shape of `POST /chat`'s: the turn's answer, or another
/// `pending_approval` when the model asks for a second confirmed call.
#[utoipa::path(
    post,
    path = "/api/{user_id}/turns/{request_id}/approvals/{approval_id}",
    tag = "chat",
    params(
        UserPath,
        ("request_id" = String, Path, format = Uuid, description = "The paused turn (`request_id` of its answer)"),
        ("approval_id" = String, Path, format = Uuid, description = "The `approval_id` of its `pending_approval`"),
    ),
    request_body = ApprovalBody,
    responses(
        (status = 200, description = "The turn's next answer", body = ChatAnswer),
        (status = 404, description = "No such turn of this user's, or no such approval", body = ErrorBody),
        (status = 409, description = "The approval was decided already (`approval_not_pending`) or the turn has ended (`turn_finished`)", body = ErrorBody),
        (status = 422, description = "Bad ids or a body without a boolean `approve`", body = ErrorBody),
        (status = 503, description = "The message bus is unavailable", body = ErrorBody),
        AuthErrors,
        JsonBodyErrors,
        TurnWaitErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_approval(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, request, approval)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<ApprovalBody>,
) -> Result<Json<ChatAnswer>, ApiError> {
    let request_id = crate::progress::parse_request_id(&request)?;
    let approval_id: ApprovalId = approval.parse().map_err(|_| {
        ApiError::invalid(
            "invalid_approval_id",
            format!("approval id {approval:?} is not a valid id"),
        )
    })?;
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    let not_found = || ApiError::turn_not_found(request_id);
    // The pending reply says whose turn it is and what it waits for.
    let paused = turn::stored_reply(&state, request_id)
        .await
        .filter(|reply| reply.user_id.as_ref() == Some(&user))
        .ok_or_else(not_found)?;
    match &paused.outcome {
        ChatOutcome::PendingApproval { approval, .. } if approval.approval_id == approval_id => {}
        ChatOutcome::PendingApproval { .. } => {
            return Err(ApiError::Conflict {
                code: "approval_not_pending",
                message: format!(
                    "approval {approval_id} is not waiting for a decision: it was decided, or the turn waits on another one"
                ),
            });
        }
        ChatOutcome::Answered { .. } | ChatOutcome::Failed { .. } => {
            return Err(ApiError::TurnFinished { request_id });
        }
    }

    let mut replies = turn::subscribe_replies(&state, request_id).await?;
    let kind = TurnKind::Approval {
        approval_id,
        approve: body.approve,
    };
    let decision = turn::about_turn(request_id, user, paused.conversation_id, kind);
    use backon::Retryable as _;
    (|| turn::publish(&state, &decision))
        .retry(platform::retry::bus_outage())
        .when(ApiError::is_bus_outage)
        .await?;
    // A repeated decision (a double click) was dropped as a duplicate, and its
    // reply may be out already: answer from the store unless it still waits.
    let reply = match turn::stored_reply(&state, request_id).await {
        Some(reply) if !still_waits(&reply, approval_id) => reply,
        _ => turn::wait_for_reply(&state, &mut replies, request_id, paused.conversation_id).await?,
    };
    answer(reply).map(Json)
}

/// Whether `reply` is the pause on `approval_id` itself.
fn still_waits(reply: &ChatReply, approval_id: ApprovalId) -> bool {
    matches!(&reply.outcome, ChatOutcome::PendingApproval { approval, .. } if approval.approval_id == approval_id)
}
