//! What the load benchmarks (`flood`, `failover`) share: the stack they load and how a
//! turn they send must be answered.

use anyhow::ensure;
use reqwest::StatusCode;
use system_tests::{Stack, StackOptions};

/// The stack the load benchmarks run: two agent-workers whose offline-llm answers each
/// call after `model_ms`, no dev login, a minute's wait for a reply, and no per-user
/// message rate (the synthetic users send far faster than a person: only the
/// turns-in-flight limit may refuse them).
pub(crate) async fn load_stack(model_ms: u64) -> anyhow::Result<Stack> {
    Stack::start_with(StackOptions {
        workers: 2,
        llm_latency_ms: model_ms,
        dev_login: false,
        reply_timeout_secs: 60,
        env: vec![("GATEWAY_TURNS_PER_MINUTE", "0".into())],
        ..Default::default()
    })
    .await
}

/// Sends the chat turn `request`; an error naming `turn`, the status and the body
/// unless it is answered 200.
pub(crate) async fn send_turn(request: reqwest::RequestBuilder, turn: &str) -> anyhow::Result<()> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.text().await?;
    ensure!(status == StatusCode::OK, "{turn} got {status}: {body}");
    Ok(())
}
