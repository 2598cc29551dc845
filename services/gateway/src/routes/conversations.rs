//! Changing a conversation: rename, delete, and regenerate its last answer.
//!
//! Renames and deletes are conversation events, appended by the agent-workers (who
//! own the conversation streams) on a `ConversationCommand` sent here
//! ([`send_command`], also used to cancel turns). A regenerate is a chat turn of its
//! own (`TurnKind::Regenerate`), queued and answered like `POST /chat`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use platform::BusError;
use platform::error_chain;
use std::time::Duration;

use proto_schemas::conversations::{
    ConversationCommand, ConversationCommandReply, ConversationTitle, InvalidTitle,
};
use proto_schemas::queries::{MessageView, MessagesQuery, PageRequest};
use proto_schemas::{ConversationId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{ChatAnswer, ChatStreamEvent};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, AuthUser};
use crate::routes::chat::run_turn;
use crate::routes::docs::{
    AuthErrors, ConversationPath, IdempotencyKeyHeader, JsonBodyErrors, TurnRefusals,
    TurnWaitErrors,
};
use crate::routes::stream::stream_turn;
use crate::state::AppState;
use crate::turn::TurnRequest;

/// A new title for a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"title": "Groceries"}))]
pub(crate) struct RenameBody {
    /// 1 to 200 characters, not only whitespace, no control characters (trimmed).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub title: String,
}

/// A renamed conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct RenamedConversation {
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: ConversationId,
    pub title: String,
}

/// Sends `command` to the agent-workers and returns their answer; a bus failure is
/// 503 (the command may or may not have been applied: each is safe to repeat).
pub(crate) async fn send_command(
    state: &AppState,
    command: &ConversationCommand,
) -> Result<ConversationCommandReply, ApiError> {
    platform::bus::request_json::<_, ConversationCommandReply>(
        state.client(),
        state.subjects().conversation_commands(),
        command,
        state.settings().query_timeout,
    )
    .await
    .map_err(|error| match error {
        BusError::Decode(_) => ApiError::internal(format!(
            "unreadable answer to a conversation command: {}",
            error_chain(&error)
        )),
        other => ApiError::unavailable("the agent workers", error_chain(&other)),
    })
}

/// A conversation id from the path; not a UUID → 422.
pub(crate) fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::invalid(
            "invalid_conversation_id",
            format!("conversation id {raw:?} is not a valid id"),
        )
    })
}

/// What a rename or delete came to, as the API answers it.
fn changed(
    reply: ConversationCommandReply,
    conversation_id: ConversationId,
) -> Result<(), ApiError> {
    match reply {
        ConversationCommandReply::Done => Ok(()),
        ConversationCommandReply::NotFound | ConversationCommandReply::AlreadyEnded => Err(
            ApiError::NotFound(format!("conversation {conversation_id} was not found")),
        ),
        ConversationCommandReply::Invalid { reason } => {
            Err(ApiError::invalid("invalid_title", reason))
        }
        ConversationCommandReply::Unavailable { reason } => {
            Err(ApiError::unavailable("the event log", reason))
        }
    }
}

/// Rename a conversation. Its title no longer follows its first message.
#[utoipa::path(
    patch,
    path = "/api/{user_id}/conversations/{conversation_id}",
    tag = "reads",
    params(ConversationPath),
    request_body = RenameBody,
    responses(
        (status = 200, description = "Renamed", body = RenamedConversation),
        (status = 404, description = "No such conversation of this user's (or it was deleted)", body = ErrorBody),
        (status = 422, description = "A blank, over-long or control-character title (`invalid_title`), or a bad id", body = ErrorBody),
        (status = 503, description = "The workers or the event log are unavailable", body = ErrorBody),
        AuthErrors,
        JsonBodyErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn patch_conversation(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, conversation)): Path<(String, String)>,
    ApiJson(body): ApiJson<RenameBody>,
) -> Result<Json<RenamedConversation>, ApiError> {
    let conversation_id = conversation_id(&conversation)?;
    let title = ConversationTitle::parse(&body.title)
        .map_err(|error: InvalidTitle| ApiError::invalid("invalid_title", error.to_string()))?;
    let command = ConversationCommand::Rename {
        user_id: user,
        conversation_id,
        title: title.as_str().to_owned(),
    };
    changed(send_command(&state, &command).await?, conversation_id)?;
    Ok(Json(RenamedConversation {
        conversation_id,
        title: title.into_inner(),
    }))
}

/// Delete a conversation: it is gone from every read, and no turn can continue it.
/// Its events stay in the log as history.
#[utoipa::path(
    delete,
    path = "/api/{user_id}/conversations/{conversation_id}",
    tag = "reads",
    params(ConversationPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such conversation of this user's (or it was deleted already)", body = ErrorBody),
        (status = 422, description = "A bad id", body = ErrorBody),
        (status = 503, description = "The workers or the event log are unavailable", body = ErrorBody),
        AuthErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_conversation(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, conversation)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation_id(&conversation)?;
    let command = ConversationCommand::Delete {
        user_id: user.clone(),
        conversation_id,
    };
    changed(send_command(&state, &command).await?, conversation_id)?;
    hidden_from_reads(&state, &user, conversation_id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// How long a delete waits for the read models to stop showing the conversation.
const READS_CATCH_UP: Duration = Duration::from_secs(2);

/// Waits (briefly) until the read models no longer find the deleted conversation, so
/// that a read right after the 204 agrees with it. The read models follow the log
/// within milliseconds; past [`READS_CATCH_UP`] the delete is answered anyway (it is
/// recorded, and the reads will follow).
pub(crate) async fn hidden_from_reads(
    state: &AppState,
    user: &UserId,
    conversation_id: ConversationId,
) {
    let query = MessagesQuery {
        user_id: user.clone(),
        conversation_id,
        page: PageRequest {
            limit: 1,
            cursor: None,
        },
    };
    let deadline = tokio::time::Instant::now() + READS_CATCH_UP;
    loop {
        let reply =
            super::reads::ask::<_, MessageView>(state, state.subjects().query_messages(), &query)
                .await;
        if matches!(reply, Err(ApiError::NotFound(_))) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Answer the conversation's last message again.
///
/// The earlier answer stays in the log, marked superseded; the messages show the new
/// one. The earlier answer's tool calls are not undone. Answers as `POST /chat` does;
/// only an ended turn is answered again (409 while the last one runs or waits for an
/// approval).
#[utoipa::path(
    post,
    path = "/api/{user_id}/conversations/{conversation_id}/regenerate",
    tag = "chat",
    params(ConversationPath, IdempotencyKeyHeader),
    responses(
        (status = 200, description = "The new answer", body = ChatAnswer),
        (status = 404, description = "No such conversation of this user's", body = ErrorBody),
        (status = 409, description = "No finished answer to regenerate: the last turn still runs or waits for an approval (`nothing_to_regenerate`)", body = ErrorBody),
        (status = 422, description = "A bad id or Idempotency-Key", body = ErrorBody),
        AuthErrors,
        TurnRefusals,
        TurnWaitErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_regenerate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, conversation)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ChatAnswer>, ApiError> {
    let request = TurnRequest::regenerate(conversation_id(&conversation)?, &headers)?;
    run_turn(&state, user, request).await
}

/// Answer the conversation's last message again, followed as Server-Sent Events (the
/// events of `POST /api/{user_id}/chat/stream`; a last turn that has not ended yet is
/// an `error` event `nothing_to_regenerate`).
#[utoipa::path(
    post,
    path = "/api/{user_id}/conversations/{conversation_id}/regenerate/stream",
    tag = "chat",
    params(ConversationPath, IdempotencyKeyHeader),
    responses(
        (status = 200, description = "An event stream, as for `POST /chat/stream`", content_type = "text/event-stream", body = ChatStreamEvent),
        (status = 422, description = "A bad id or Idempotency-Key", body = ErrorBody),
        AuthErrors,
        TurnRefusals,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_regenerate_stream(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, conversation)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = TurnRequest::regenerate(conversation_id(&conversation)?, &headers)?;
    stream_turn(state, user, request).await
}
