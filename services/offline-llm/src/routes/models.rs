//! `GET /v1/models` and `GET /v1/models/{model}`: the one model this server offers.

use axum::Json;
use axum::extract::Path;
use serde_json::{Value, json};

use crate::error::ApiError;

/// The model id listed; completions accept any model name and echo it back.
pub(super) const MODEL_ID: &str = "offline-llm";

/// A fixed creation time (2025-01-01T00:00:00Z), so listings are reproducible.
const MODEL_CREATED: u32 = 1_735_689_600;

fn model() -> Value {
    json!({
        "id": MODEL_ID,
        "object": "model",
        "created": MODEL_CREATED,
        "owned_by": "taskchat",
    })
}

pub(super) async fn list() -> Json<Value> {
    Json(json!({"object": "list", "data": [model()]}))
}

pub(super) async fn retrieve(Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id == MODEL_ID {
        Ok(Json(model()))
    } else {
        Err(ApiError::not_found(
            format!("The model '{id}' does not exist."),
            "model_not_found",
        ))
    }
}
