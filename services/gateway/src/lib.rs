//! gateway: taskchat's public HTTP API. It verifies bearer tokens, publishes chat
//! turns to JetStream and waits for (or streams) their replies, and answers reads
//! from the projection over NATS request-reply.
//!
//! # Layout
//! - [`config`]: the command line (`serve`, the default, and `token`).
//! - [`routes`]: the axum router, the OpenAPI description and the request span;
//!   one module per route family.
//! - [`chatkit`]: `POST /chatkit`, ChatKit's server protocol over the same turns,
//!   conversations and read models.
//! - [`turn`]: one chat turn on the bus (validate, settle the request id, subscribe,
//!   publish, wait).
//! - [`progress`]: a turn's events as JetStream keeps them (SSE ids, resuming
//!   after `Last-Event-ID`, finding a user's turn).
//! - [`idempotency`]: `Idempotency-Key` → request id, in a JetStream KV bucket.
//! - [`extract`]: the verified user and JSON/query extractors with the API's errors.
//! - [`error`]: the one error type of the HTTP edge.
//! - [`api`]: the JSON shapes of the HTTP API.
//! - [`state`]: what handlers share.
//! - [`web`]: the chat page at `/` and its assets, embedded in the binary.
//!
//! [`App::build`] connects and binds; [`App::run`] serves until a shutdown token is
//! cancelled. `main` and the tests drive it the same way.

mod admission;
mod api;
mod chatkit;
mod config;
mod error;
mod extract;
mod idempotency;
mod progress;
mod routes;
mod state;
mod turn;
mod web;

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config, TokenArgs};
pub use error::ApiError;
pub use routes::router;
pub use state::{AppState, Settings};

/// The name the service reports in logs, traces and its NATS connection.
pub const SERVICE_NAME: &str = "gateway";

/// A built, not yet serving, gateway.
#[derive(Debug)]
pub struct App {
    state: AppState,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl App {
    /// Connects to NATS, makes sure the chat streams and the idempotency bucket exist,
    /// and binds the HTTP listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First, so that unusable auth settings stop the start with their reason.
        let verifier = config
            .auth
            .verifier()
            .await
            .context("refusing to start with these auth settings")?;
        let client = config.nats.connect(SERVICE_NAME).await?;
        // Long waits (replies, streams) end when the server stops; `run` cancels this.
        let shutdown = CancellationToken::new();
        let state = AppState::new(
            client,
            config.nats.subjects(),
            verifier,
            Settings::from_config(&config),
            shutdown.clone(),
        );
        state.prepare().await.with_context(|| {
            format!(
                "failed to set up the chat streams on {}",
                config.nats.redacted_url()
            )
        })?;
        let (listener, local_addr) = platform::bind_http(config.listen).await?;
        Ok(Self {
            state,
            listener,
            local_addr,
            shutdown,
        })
    }

    /// The address the HTTP server is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish
    /// (waits for replies end early with 503 / an SSE `error` carrying the request id).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            state,
            listener,
            local_addr,
            shutdown: waits,
        } = self;
        let client = state.client().clone();
        tracing::info!(
            addr = %local_addr,
            subject = %state.subjects().chat_requests(),
            dev_login = state.settings().dev_login,
            "gateway serving"
        );
        let http = state.settings().http;
        platform::http::serve(listener, router(state), http, async move {
            shutdown.cancelled().await;
            waits.cancel();
        })
        .await;
        if let Err(error) = client.flush().await {
            tracing::warn!(%error, "failed to flush nats on shutdown");
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}
