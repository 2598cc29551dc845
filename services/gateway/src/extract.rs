//! Extractors that turn a request into checked inputs or an [`ApiError`]: the verified
//! user of `/api/{user_id}/…` routes, JSON bodies and query strings with the error
//! statuses the API promises (400 / 408 / 413 / 415 / 422), and the limit on
//! request headers (431).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection, RawPathParamsRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, Request};
use axum::http::header;
use axum::http::request::Parts;
use platform::auth::bearer_token;
use proto_schemas::UserId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// The user a bearer token names, verified. Missing, invalid or expired token → 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenUser(pub UserId);

impl FromRequestParts<AppState> for TokenUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts.headers.get(header::AUTHORIZATION))?;
        Ok(Self(state.verifier().verify(token).await?))
    }
}

/// The user a request acts for: the token's user, which must equal the path's
/// `{user_id}`. Missing, invalid or expired token → 401; another user's path → 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthUser(pub UserId);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let TokenUser(user) = TokenUser::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| match rejection {
                RawPathParamsRejection::InvalidUtf8InPathParam(_) => ApiError::BadRequest {
                    code: "invalid_path",
                    message: "the path is not valid UTF-8 once percent-decoded".to_owned(),
                },
                other => ApiError::internal(format!("path parameters unavailable: {other}")),
            })?;
        let path_user = params
            .iter()
            .find_map(|(name, value)| (name == "user_id").then_some(value))
            .ok_or_else(|| {
                ApiError::internal("route without a {user_id} parameter uses AuthUser")
            })?;
        if path_user != user.as_str() {
            return Err(ApiError::Forbidden);
        }
        Ok(Self(user))
    }
}

/// A JSON object body, with axum's rejections mapped to the API's error shape: not
/// JSON → 400, JSON of the wrong shape (or not an object) → 422, no JSON content type →
/// 415, too large → 413.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let settings = state.settings();
        // A total deadline, not one per chunk: a client dripping a byte at a time would
        // otherwise hold the connection for as long as it likes.
        let read = Json::<serde_json::Value>::from_request(request, state);
        let Json(value) = tokio::time::timeout(settings.body_read_timeout, read)
            .await
            .map_err(|_| ApiError::RequestTimeout {
                seconds: settings.body_read_timeout.as_secs(),
            })?
            .map_err(|rejection| json_rejection(rejection, settings.max_body_bytes))?;
        // serde reads a struct from a JSON array too (fields by position): the API's
        // bodies are objects, so anything else is the wrong shape.
        if !value.is_object() {
            return Err(ApiError::invalid(
                "invalid_body",
                "the request body must be a JSON object",
            ));
        }
        serde_json::from_value(value)
            .map(Self)
            .map_err(|error| ApiError::invalid("invalid_body", error.to_string()))
    }
}

fn json_rejection(rejection: JsonRejection, limit: usize) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(error) => ApiError::MalformedJson(format!(
            "the request body is not valid JSON: {}",
            error
                .body_text()
                .trim_start_matches("Failed to parse the request body as JSON: ")
        )),
        JsonRejection::JsonDataError(error) => ApiError::invalid(
            "invalid_body",
            error
                .body_text()
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
                .to_owned(),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::BytesRejection(error)
            if error.status() == http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::PayloadTooLarge { limit }
        }
        other => ApiError::MalformedJson(other.body_text()),
    }
}

/// A query string; parameters of the wrong shape → 422.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    ApiError::invalid(
        "invalid_query",
        text.trim_start_matches("Failed to deserialize query string: ")
            .to_owned(),
    )
}

/// Header fields the gateway reads; hyper itself stops at
/// [`platform::http::MAX_HEADER_FIELDS`] with a bare 431, this answers with the API's
/// error body well before that.
pub(crate) const MAX_HEADER_FIELDS: usize = 100;

/// Header bytes (names and values) the gateway reads: room for an identity provider's
/// large JWT several times over.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Middleware: 431 with the API's error body when a request's headers pass
/// [`MAX_HEADER_FIELDS`] or [`MAX_HEADER_BYTES`].
pub(crate) async fn limit_headers(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;

    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADER_FIELDS || bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge {
            max_fields: MAX_HEADER_FIELDS,
            max_bytes: MAX_HEADER_BYTES,
        }
        .into_response();
    }
    next.run(request).await
}
