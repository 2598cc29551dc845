//! What every taskchat service needs at start-up and on the bus: settings, logging
//! and tracing, a shutdown signal, NATS helpers that carry the W3C trace context,
//! and bearer-token auth.
//!
//! # Layout
//! - [`config`]: clap `Args` structs (NATS, Postgres, telemetry, auth) that each
//!   service flattens into its own `Config`.
//! - [`telemetry`]: one tracing subscriber per process (`RUST_LOG`, plain or JSON
//!   logs, OTLP export of spans when an endpoint is set).
//! - [`shutdown`]: a `CancellationToken` cancelled on SIGTERM or SIGINT.
//! - [`start`]: both of the above, as each service's `main` begins.
//! - [`bus`]: JSON publish / request / reply over NATS with `traceparent` headers,
//!   and the `events.appended` wake-ups that tail the event log.
//! - [`trace`]: the W3C trace context of incoming HTTP requests.
//! - [`streams`]: the JetStream streams of a chat turn (requests, replies).
//! - [`auth`]: bearer tokens (HS256 with the shared secret, or an identity
//!   provider's via its JWKS) and the RFC 9728 metadata that points clients at it.
//! - [`http`]: the HTTP accept loop, with header read timeouts.
//! - [`health`]: the probe port of services that serve no HTTP of their own.

pub mod auth;
pub mod bus;
pub mod config;
pub mod health;
pub mod http;
pub mod retry;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
pub mod trace;

pub use bus::BusError;

/// What every service's `main` does before it builds the app: telemetry on, and the
/// token that SIGTERM or SIGINT cancel armed (with the forced exit after the grace
/// period).
///
/// Hold the guard until the service has stopped: dropping it exports the last spans.
/// Call from inside the Tokio runtime, once per process.
pub fn start(
    service_name: &'static str,
    process: &config::ProcessConfig,
) -> anyhow::Result<(
    telemetry::TelemetryGuard,
    tokio_util::sync::CancellationToken,
)> {
    let guard = telemetry::init(service_name, &process.telemetry)?;
    Ok((guard, shutdown::signal_token(process.shutdown.grace())))
}

/// Binds a service's HTTP listener; returns it with the address it got (port 0 picks
/// a free one).
pub async fn bind_http(
    addr: std::net::SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    use anyhow::Context as _;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    let local_addr = listener
        .local_addr()
        .context("failed to read the bound address")?;
    Ok((listener, local_addr))
}

/// `error: cause: cause …`: an error and its sources as one log field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
