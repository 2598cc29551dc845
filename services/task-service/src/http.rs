//! The HTTP side of the service: `/mcp` (the MCP tools, behind bearer-token auth), its
//! OAuth protected-resource metadata (RFC 9728) for clients that look for where tokens
//! come from, and `/healthz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use platform::auth::resource::{
    METADATA_PATH, challenge, metadata_document, metadata_url, request_origin,
};
use platform::auth::{AuthError, TokenVerifier, bearer_token};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::handler::CommandHandler;
use crate::mcp::TaskTools;

/// The `--mcp-allowed-hosts` entry that turns `Host` checking off (for ingresses that
/// already check it).
pub(crate) const ANY_HOST: &str = "*";

/// The path MCP is served at.
pub(crate) const MCP_PATH: &str = "/mcp";

/// How `/mcp` checks tokens and describes itself.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub verifier: TokenVerifier,
    /// The public URL of `/mcp` (`MCP_PUBLIC_URL`); None: from each request's Host.
    pub public_url: Option<url::Url>,
}

impl Auth {
    /// The MCP endpoint as a protected resource: its public URL, or `/mcp` at the
    /// origin the request came to.
    fn resource(&self, headers: &HeaderMap) -> Option<url::Url> {
        self.public_url.clone().or_else(|| {
            let mut url = request_origin(headers)?;
            url.set_path(MCP_PATH);
            Some(url)
        })
    }
}

/// The service's routes.
///
/// `allowed_hosts` guards `/mcp` against DNS rebinding (its `Host` header must be one
/// of them, or anything with [`ANY_HOST`]); `mcp_shutdown` ends what the MCP
/// transport still runs once the HTTP server has stopped.
pub(crate) fn router(
    handler: CommandHandler,
    auth: Auth,
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
    let auth = Arc::new(auth);
    // Clients look for the document both where RFC 9728 puts it for `/mcp` and at the
    // root (MCP's discovery tries both).
    let metadata_for_mcp = format!("{METADATA_PATH}{MCP_PATH}");
    Router::new()
        .route_service(MCP_PATH, mcp)
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&auth),
            require_bearer,
        ))
        .route(METADATA_PATH, get(protected_resource))
        .route(&metadata_for_mcp, get(protected_resource))
        .with_state(auth)
        .route("/healthz", get(healthz))
}

/// The RFC 9728 metadata of `/mcp`: the resource, and the authorization server when
/// an issuer is configured.
async fn protected_resource(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    match auth.resource(&headers) {
        Some(resource) => {
            axum::Json(metadata_document(&resource, auth.verifier.issuer())).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": "the Host header does not name a host" })),
        )
            .into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok", "service": "task-service" }))
}

/// Lets a request through only with a valid bearer token, and hands the token's user
/// to the tools as a request extension (which rmcp passes on in the request parts).
async fn require_bearer(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let verified = match bearer_token(request.headers().get(header::AUTHORIZATION)) {
        Ok(token) => auth.verifier.verify(token).await,
        Err(error) => Err(error),
    };
    match verified {
        Ok(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Err(error) => {
            let metadata = auth
                .resource(request.headers())
                .map(|url| metadata_url(&url));
            unauthorized(error, metadata.as_ref())
        }
    }
}

/// 401 with a JSON body saying what was wrong and an RFC 6750 challenge that points at
/// the metadata document.
fn unauthorized(error: AuthError, metadata: Option<&url::Url>) -> Response {
    tracing::debug!(%error, "mcp request refused");
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            challenge("task-service", error, metadata),
        )],
        axum::Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}
