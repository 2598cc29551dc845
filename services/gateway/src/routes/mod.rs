//! The HTTP routes, the API description generated from them, and the per-request
//! span that ties each request to the trace of everything it causes on the bus.

pub(crate) mod approvals;
pub(crate) mod chat;
pub(crate) mod conversations;
pub(crate) mod dev;
pub(crate) mod docs;
pub(crate) mod health;
pub(crate) mod identity;
pub(crate) mod reads;
pub(crate) mod stream;
pub(crate) mod turns;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::state::AppState;

pub(crate) use identity::REALM;

/// The path of the development login route, present only with `AUTH_DEV_LOGIN=true`.
pub(crate) const DEV_TOKEN_PATH: &str = "/api/dev/token";

/// The API description: every route with its request and response types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskchat",
        description = "An AI assistant that manages your todo list through chat. Send `Authorization: Bearer <JWT>` on every `/api/{user_id}/…` route: an HS256 token signed with the deployment's secret (`sub` = user id), or a token of the deployment's identity provider (RS256, ES256 or EdDSA, checked against its JWKS). `GET /api/me` says which user a token acts for."
    ),
    paths(
        chat::post_chat,
        stream::post_chat_stream,
        approvals::post_approval,
        turns::get_turn_events,
        turns::post_cancel_turn,
        conversations::post_regenerate,
        conversations::post_regenerate_stream,
        crate::chatkit::post_chatkit,
        reads::get_tasks,
        reads::get_conversations,
        conversations::patch_conversation,
        conversations::delete_conversation,
        reads::get_messages,
        identity::get_me,
        dev::post_dev_token,
        health::healthz,
        health::readyz,
    ),
    components(schemas(
        api::ChatBody,
        api::ChatAnswer,
        api::ToolCallOut,
        api::DeltaEvent,
        api::ToolCallStartedEvent,
        api::ToolCallFinishedEvent,
        api::ChatStreamEvent,
        api::PendingApprovalOut,
        approvals::ApprovalBody,
        conversations::RenameBody,
        conversations::RenamedConversation,
        api::CancelAccepted,
        api::CancelStatus,
        crate::chatkit::types::ChatKitRequest,
        crate::chatkit::ChatKitAnswer,
        crate::chatkit::ChatKitStreamEvent,
        api::TaskStatusParam,
        api::TaskItem,
        api::TaskPage,
        api::ConversationItem,
        api::ConversationPage,
        api::Role,
        api::MessageItem,
        api::MessagePage,
        api::DevTokenRequest,
        api::DevToken,
        api::Health,
        api::Readiness,
        ErrorBody,
        ErrorDetail,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "chat", description = "Chat turns with the assistant"),
        (name = "reads", description = "Tasks and conversation history"),
        (name = "chatkit", description = "ChatKit's server protocol, for ChatKit front ends"),
        (name = "dev", description = "Local development helpers"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 signed with AUTH_JWT_SECRET (`sub` = user id), or an identity \
                         provider's RS256/ES256/EdDSA token checked against AUTH_JWKS_URL",
                    ))
                    .build(),
            ),
        );
    }
}

/// The API description as served: without the dev login route when it is off.
pub(crate) fn openapi(dev_login: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if !dev_login {
        doc.paths.paths.remove(DEV_TOKEN_PATH);
    }
    doc
}

/// Every route of the gateway over `state`.
pub fn router(state: AppState) -> Router {
    let settings = state.settings().clone();
    let doc = Arc::new(
        openapi(settings.dev_login)
            .to_json()
            .unwrap_or_else(|error| {
                // The document is built from static types; failing here is a bug worth seeing.
                tracing::error!(%error, "failed to serialize the api description");
                "{}".to_owned()
            }),
    );

    let mut routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/api/{user_id}/chat", post(chat::post_chat))
        .route("/api/{user_id}/chat/stream", post(stream::post_chat_stream))
        .route(
            "/api/{user_id}/turns/{request_id}/approvals/{approval_id}",
            post(approvals::post_approval),
        )
        .route(
            "/api/{user_id}/turns/{request_id}/events",
            get(turns::get_turn_events),
        )
        .route(
            "/api/{user_id}/turns/{request_id}/cancel",
            post(turns::post_cancel_turn),
        )
        .route(
            "/api/{user_id}/conversations",
            get(reads::get_conversations),
        )
        .route(
            "/api/{user_id}/conversations/{conversation_id}",
            patch(conversations::patch_conversation).delete(conversations::delete_conversation),
        )
        .route(
            "/api/{user_id}/conversations/{conversation_id}/regenerate",
            post(conversations::post_regenerate),
        )
        .route(
            "/api/{user_id}/conversations/{conversation_id}/regenerate/stream",
            post(conversations::post_regenerate_stream),
        )
        .route(
            "/api/{user_id}/conversations/{conversation_id}/messages",
            get(reads::get_messages),
        )
        .route("/api/{user_id}/tasks", get(reads::get_tasks))
        .route(crate::chatkit::PATH, post(crate::chatkit::post_chatkit))
        .route("/api/me", get(identity::get_me))
        .route(
            platform::auth::resource::METADATA_PATH,
            get(identity::protected_resource),
        );
    if settings.dev_login {
        routes = routes.route(DEV_TOKEN_PATH, post(dev::post_dev_token));
    }
    routes
        .merge(crate::web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::from_fn(crate::extract::limit_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            identity::point_challenges_at_metadata,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // 5xx causes are logged by ApiError, with more to say.
                .on_failure(()),
        )
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("there is no {method} {}", uri.path()))
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::MethodNotAllowed
}

/// The span of one HTTP request, a child of the caller's trace when the request
/// carries a W3C `traceparent`.
fn request_span(request: &Request<Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "http request",
        otel.name = %format!("{} {route}", request.method()),
        method = %request.method(),
        route,
        path = %request.uri().path(),
        request_id = tracing::field::Empty,
    );
    platform::trace::follow_http_trace(&span, request.headers());
    span
}
