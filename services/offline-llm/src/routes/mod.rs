//! The HTTP surface: one handler module per route, assembled by [`router`].

mod completions;
mod health;
mod models;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct State {
    /// Added to every completion call, to stand in for a real model's latency.
    pub(crate) latency: Duration,
}

/// The offline-llm routes: `/v1/chat/completions`, `/v1/models`, `/healthz`.
pub fn router(latency: Duration) -> Router {
    let state = Arc::new(State { latency });
    Router::new()
        .route("/v1/chat/completions", post(completions::create))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{model}", get(models::retrieve))
        .route("/healthz", get(health::check))
        .fallback(unknown_route)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// OpenAI answers unknown paths with its error shape; clients print its message.
async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(
        format!("Unknown request URL: {method} {}.", uri.path()),
        "unknown_url",
    )
}
