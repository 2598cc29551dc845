//! A health port for services that serve no HTTP of their own (agent-worker,
//! projection), so that an orchestrator can probe them: `GET /healthz` answers 200
//! while the process's runtime answers at all (liveness), `GET /readyz` answers 200
//! while the NATS connection is up and 503 otherwise (readiness). Off unless
//! `HEALTH_LISTEN` is set: on a developer machine nothing listens.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Where the health port listens.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct HealthConfig {
    /// Address of the health port (`/healthz`, `/readyz`), e.g. 0.0.0.0:8090; unset, none.
    #[arg(long = "health-listen", env = "HEALTH_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// Binds the health port when one is configured and serves it until `shutdown` is
/// cancelled; returns the bound address. Binding fails loudly (a probe that can
/// never answer would only restart the pod in a loop).
pub async fn spawn(
    config: HealthConfig,
    bus: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let (listener, local_addr) = crate::bind_http(addr)
        .await
        .context("failed to bind the health port")?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(bus);
    tokio::spawn(crate::http::serve(
        listener,
        router,
        crate::http::HttpConfig::default(),
        shutdown.cancelled_owned(),
    ));
    tracing::info!(%local_addr, "health port listening");
    Ok(Some(local_addr))
}

async fn ready(State(bus): State<async_nats::Client>) -> (StatusCode, String) {
    let state = bus.connection_state();
    if state == async_nats::connection::State::Connected {
        (StatusCode::OK, "ok".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("nats connection is {state}"),
        )
    }
}
