//! `POST /v1/chat/completions`: validate, wait out the configured latency, let the
//! rules decide, and answer whole or as server-sent events ending in `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;

use crate::error::ApiError;
use crate::rules;
use crate::wire::{self, Completion};

pub(super) async fn create(
    State(state): State<Arc<super::State>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = wire::parse(&body?)?;
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    let reply = rules::respond(&request.conversation);
    let completion = Completion::new(request.model.clone(), reply, request.prompt_chars);
    tracing::debug!(
        model = %request.model,
        stream = request.stream,
        finish_reason = completion.finish_reason(),
        tools = ?completion.tool_names(),
        "completion served"
    );
    if !request.stream {
        return Ok(Json(completion).into_response());
    }
    let events = completion
        .chunks(request.include_usage)
        .into_iter()
        .chain(std::iter::once("[DONE]".to_owned()))
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Ok(Sse::new(stream::iter(events)).into_response())
}
