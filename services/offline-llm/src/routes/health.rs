//! `GET /healthz`: liveness for process supervisors and test harnesses.

use axum::Json;
use serde_json::{Value, json};

pub(super) async fn check() -> Json<Value> {
    Json(json!({"status": "ok", "service": "offline-llm"}))
}
