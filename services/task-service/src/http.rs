//! The HTTP side of the service: `/mcp` (the MCP tools, behind bearer-token auth) and
//! `/healthz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use platform::auth::{AuthError, JwtKeys, bearer_token};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::handler::CommandHandler;
use crate::mcp::TaskTools;

/// The `--mcp-allowed-hosts` entry that turns `Host` checking off (for ingresses that
/// already check it).
pub(crate) const ANY_HOST: &str = "*";

/// The service's routes.
///
/// `allowed_hosts` guards `/mcp` against DNS rebinding (its `Host` header must be one
/// of them, or anything with [`ANY_HOST`]); `mcp_shutdown` ends what the MCP
/// transport still runs once the HTTP server has stopped.
pub(crate) fn router(
    handler: CommandHandler,
    keys: JwtKeys,
    allowed_hosts: &[String],
    mcp_shutdown: CancellationToken,
) -> Router {
    let config = StreamableHttpServerConfig::default()
        // No sessions and plain JSON answers: every POST stands alone, so replicas
        // behind a load balancer need no shared state or sticky routing.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_cancellation_token(mcp_shutdown);
    let config = if allowed_hosts.iter().any(|host| host == ANY_HOST) {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(allowed_hosts.iter().cloned())
    };
    let tools = TaskTools::new(handler);
    let mcp = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", mcp)
        .route_layer(middleware::from_fn_with_state(
            Arc::new(keys),
            require_bearer,
        ))
        .route("/healthz", get(healthz))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok", "service": "task-service" }))
}

/// Lets a request through only with a valid bearer token, and hands the token's user
/// to the tools as a request extension (which rmcp passes on in the request parts).
async fn require_bearer(
    State(keys): State<Arc<JwtKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    let verified = bearer_token(request.headers().get(header::AUTHORIZATION))
        .and_then(|token| keys.verify(token));
    match verified {
        Ok(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Err(error) => unauthorized(error),
    }
}

/// 401 with a JSON body saying what was wrong and an RFC 6750 challenge.
fn unauthorized(error: AuthError) -> Response {
    let challenge = match error {
        AuthError::Missing => r#"Bearer realm="task-service""#,
        AuthError::Invalid | AuthError::Expired => {
            r#"Bearer realm="task-service", error="invalid_token""#
        }
    };
    tracing::debug!(%error, "mcp request refused");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        axum::Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}
