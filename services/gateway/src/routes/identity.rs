//! Who a token is, and where tokens come from: `GET /api/me` (the web page asks it
//! which user a pasted token signs in as, whatever claim the identity provider puts
//! the user in), the OAuth protected-resource metadata document (RFC 9728), and the
//! layer that makes every 401 point at that document.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use platform::auth::AuthError;
use platform::auth::resource::{challenge, metadata_document, metadata_url, request_origin};

use crate::api::Me;
use crate::error::ApiError;
use crate::extract::TokenUser;
use crate::routes::docs::Unauthorized;
use crate::state::AppState;

/// The realm named in the gateway's challenges.
pub(crate) const REALM: &str = "taskchat";

/// Who the bearer token signs in as.
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "reads",
    responses(
        (status = 200, description = "The token's user", body = Me),
        Unauthorized,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_me(TokenUser(user): TokenUser) -> Json<Me> {
    Json(Me {
        user_id: user.to_string(),
    })
}

/// `GET /.well-known/oauth-protected-resource`: the gateway's RFC 9728 metadata.
pub(crate) async fn protected_resource(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let resource = resource(&state, &headers).ok_or_else(|| ApiError::BadRequest {
        code: "invalid_host",
        message: "the Host header does not name a host".to_owned(),
    })?;
    Ok(Json(metadata_document(
        &resource,
        state.verifier().issuer(),
    )))
}

/// The gateway as a protected resource: its public URL, or the origin a request came to.
fn resource(state: &AppState, headers: &HeaderMap) -> Option<url::Url> {
    state
        .settings()
        .public_url
        .clone()
        .or_else(|| request_origin(headers))
}

/// Adds the metadata document's URL to the challenge of every 401 (the challenge
/// [`ApiError`] writes cannot know the host the request came to).
pub(crate) async fn point_challenges_at_metadata(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // Only the headers that name the origin are kept (cheap clones): the URL is built
    // for a 401 alone, not for every request.
    let origin: HeaderMap = [header::HOST, FORWARDED_PROTO]
        .into_iter()
        .filter_map(|name| {
            let value = request.headers().get(&name)?.clone();
            Some((name, value))
        })
        .collect();
    let mut response = next.run(request).await;
    if let Some(error) = response.extensions().get::<AuthError>().copied() {
        let metadata = resource(&state, &origin).map(|url| metadata_url(&url));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            challenge(REALM, error, metadata.as_ref()),
        );
    }
    response
}

/// The header a TLS-terminating proxy names the client's scheme in.
const FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");
