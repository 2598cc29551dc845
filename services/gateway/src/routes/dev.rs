//! `POST /api/dev/token`: hands out tokens for local development. Mounted only when
//! `AUTH_DEV_LOGIN=true`, because it lets anyone act as any user.

use axum::Json;
use axum::extract::State;
use proto_schemas::UserId;

use crate::api::{DevToken, DevTokenRequest};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::routes::docs::JsonBodyErrors;
use crate::state::AppState;

/// Mint a token for any user (development only; absent unless `AUTH_DEV_LOGIN=true`).
#[utoipa::path(
    post,
    path = "/api/dev/token",
    tag = "dev",
    request_body = DevTokenRequest,
    responses(
        (status = 200, description = "A bearer token", body = DevToken),
        (status = 422, description = "Not a valid user id", body = ErrorBody),
        JsonBodyErrors,
    )
)]
pub(crate) async fn post_dev_token(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DevTokenRequest>,
) -> Result<Json<DevToken>, ApiError> {
    let user = UserId::parse(&body.user_id)
        .map_err(|error| ApiError::invalid("invalid_user_id", error.to_string()))?;
    let ttl = state.settings().dev_token_ttl;
    // Dev mode always has a secret (the built-in one when AUTH_JWT_SECRET is unset).
    let keys = state
        .verifier()
        .signing_keys()
        .ok_or_else(|| ApiError::internal("dev login is on but there is no signing secret"))?;
    let token = keys.mint(&user, ttl);
    tracing::info!(user = %user, "dev token minted");
    Ok(Json(DevToken {
        token,
        token_type: "Bearer".to_owned(),
        user_id: user.to_string(),
        expires_in: ttl.as_secs(),
    }))
}
