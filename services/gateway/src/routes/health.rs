//! `/healthz` (the process answers) and `/readyz` (NATS is connected and the
//! projection answers its health query), for load balancers and `make up`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use proto_schemas::queries::ProjectionHealth;

use crate::api::{Health, Readiness};
use crate::error::{ApiError, ErrorBody};
use platform::error_chain;

use crate::state::AppState;

/// The longest `/readyz` waits for the projection: probes have short timeouts.
const READY_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        service: "gateway".to_owned(),
    })
}

/// NATS is connected and the projection answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "NATS or the projection is unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let connection = state.client().connection_state();
    if connection != async_nats::connection::State::Connected {
        return Err(ApiError::bus_unavailable(format!(
            "nats connection is {connection}"
        )));
    }
    let timeout = READY_QUERY_TIMEOUT.min(state.settings().query_timeout);
    let health: ProjectionHealth = platform::bus::request_json(
        state.client(),
        state.subjects().query_health(),
        &serde_json::json!({}),
        timeout,
    )
    .await
    .map_err(|error| {
        ApiError::unavailable(
            "the read model",
            format!("health query: {}", error_chain(&error)),
        )
    })?;
    Ok(Json(Readiness {
        status: "ready".to_owned(),
        projection_events_applied: health.events_applied,
    }))
}
