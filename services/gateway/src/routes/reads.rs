//! The read API: tasks, conversations and messages, answered by the projection over
//! NATS request-reply for the verified user only.

use axum::Json;
use axum::extract::{Path, State};
use platform::BusError;
use proto_schemas::queries::{
    ConversationSummary, ConversationsQuery, MAX_PAGE_LIMIT, MessageView, MessagesQuery, Page,
    PageRequest, QueryReply, TasksQuery,
};
use proto_schemas::tasks::{StatusFilter, TaskView};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    ConversationPage, MessagePage, PageParams, TaskListParams, TaskPage, TaskStatusParam,
};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, AuthUser};
use crate::routes::docs::{AuthErrors, ConversationPath, UserPath};
use platform::error_chain;

use crate::state::AppState;

/// The user's tasks.
#[utoipa::path(
    get,
    path = "/api/{user_id}/tasks",
    tag = "reads",
    params(UserPath, TaskListParams),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 422, description = "Bad status, limit or cursor", body = ErrorBody),
        (status = 503, description = "The read models are unavailable", body = ErrorBody),
        AuthErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_tasks(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(params): ApiQuery<TaskListParams>,
) -> Result<Json<TaskPage>, ApiError> {
    let status = match params.status.unwrap_or_default() {
        TaskStatusParam::All => StatusFilter::All,
        TaskStatusParam::Pending => StatusFilter::Pending,
        TaskStatusParam::Completed => StatusFilter::Completed,
    };
    let page = page_request(params.limit, params.cursor)?;
    let query = TasksQuery {
        user_id: user,
        status,
        page,
    };
    let page: Page<TaskView> = ask(&state, state.subjects().query_tasks(), &query).await?;
    Ok(Json(TaskPage::from(page)))
}

/// The user's conversations, most recently active first.
#[utoipa::path(
    get,
    path = "/api/{user_id}/conversations",
    tag = "reads",
    params(UserPath, PageParams),
    responses(
        (status = 200, description = "A page of conversations", body = ConversationPage),
        (status = 422, description = "Bad limit or cursor", body = ErrorBody),
        (status = 503, description = "The read models are unavailable", body = ErrorBody),
        AuthErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_conversations(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ConversationPage>, ApiError> {
    let query = ConversationsQuery {
        user_id: user,
        page: page_request(params.limit, params.cursor)?,
    };
    let page: Page<ConversationSummary> =
        ask(&state, state.subjects().query_conversations(), &query).await?;
    Ok(Json(ConversationPage::from(page)))
}

/// The messages of one of the user's conversations, oldest first, with each turn's
/// tool calls.
#[utoipa::path(
    get,
    path = "/api/{user_id}/conversations/{conversation_id}/messages",
    tag = "reads",
    params(ConversationPath, PageParams),
    responses(
        (status = 200, description = "A page of messages", body = MessagePage),
        (status = 404, description = "No such conversation for this user", body = ErrorBody),
        (status = 422, description = "Bad conversation id, limit or cursor", body = ErrorBody),
        (status = 503, description = "The read models are unavailable", body = ErrorBody),
        AuthErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_messages(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((_, conversation)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let conversation_id = super::conversations::conversation_id(&conversation)?;
    let query = MessagesQuery {
        user_id: user,
        conversation_id,
        page: page_request(params.limit, params.cursor)?,
    };
    let page: Page<MessageView> = ask(&state, state.subjects().query_messages(), &query)
        .await
        .map_err(|error| match error {
            ApiError::NotFound(_) => {
                ApiError::NotFound(format!("conversation {conversation_id} was not found"))
            }
            other => other,
        })?;
    Ok(Json(MessagePage::from(page)))
}

/// Checks `limit` (1 to [`MAX_PAGE_LIMIT`]) and builds the page request.
fn page_request(limit: Option<u32>, cursor: Option<String>) -> Result<PageRequest, ApiError> {
    let mut page = PageRequest {
        cursor: cursor.filter(|c| !c.is_empty()),
        ..PageRequest::default()
    };
    if let Some(limit) = limit {
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(ApiError::invalid(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
            ));
        }
        page.limit = limit;
    }
    Ok(page)
}

/// Sends a query to the projection and maps its answer to the API's statuses.
pub(crate) async fn ask<Q: Serialize, T: DeserializeOwned>(
    state: &AppState,
    subject: String,
    query: &Q,
) -> Result<Page<T>, ApiError> {
    let reply = platform::bus::request_json::<Q, QueryReply<T>>(
        state.client(),
        subject.clone(),
        query,
        state.settings().query_timeout,
    )
    .await;
    match reply {
        Ok(QueryReply::Found { page }) => Ok(page),
        Ok(QueryReply::NotFound) => Err(ApiError::NotFound("not found".to_owned())),
        Ok(QueryReply::Invalid { reason }) => Err(ApiError::invalid("invalid_query", reason)),
        Ok(QueryReply::Unavailable { reason }) => {
            Err(ApiError::unavailable("the read model", reason))
        }
        Err(error @ BusError::Decode(_)) => Err(ApiError::internal(format!(
            "unreadable answer on {subject}: {}",
            error_chain(&error)
        ))),
        Err(error) => Err(ApiError::unavailable(
            "the read model",
            format!("{subject}: {}", error_chain(&error)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits_are_checked() {
        assert_eq!(page_request(None, None).unwrap(), PageRequest::default());
        assert_eq!(
            page_request(Some(200), Some("c".into())).unwrap().limit,
            200
        );
        assert_eq!(
            page_request(Some(1), Some(String::new())).unwrap().cursor,
            None
        );
        for bad in [0, MAX_PAGE_LIMIT + 1] {
            assert_eq!(
                page_request(Some(bad), None).unwrap_err().code(),
                "invalid_limit"
            );
        }
    }
}
