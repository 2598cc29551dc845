//! Flood benchmark: does one user sending turns as fast as they can slow anyone else?
//!
//! The whole stack runs as release processes (offline-llm answering each call after
//! `FLOOD_MODEL_MS`, 200 by default, like a fast hosted model). A calm user sends
//! `FLOOD_CALM_TURNS` add turns one after the other, first on the idle stack, then
//! while a flooding user sends `FLOOD_BURST` (200) turns at once, every second. It
//! prints the calm user's p50 both times and their ratio, and what the flooding user
//! got back: how many turns were answered and how many refused (429) beyond the
//! per-user limit. The calm user's turns must all be answered.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p system-tests --bench flood
//! ```

mod common;

use std::time::{Duration, Instant};

use anyhow::bail;
use reqwest::StatusCode;
use serde_json::json;
use system_tests::{Stack, env_number};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn run() -> anyhow::Result<()> {
    let model_ms = env_number("FLOOD_MODEL_MS", 200, 0)?;
    let calm_turns = env_number("FLOOD_CALM_TURNS", 20, 1)?;
    let burst = env_number("FLOOD_BURST", 200, 1)?;
    println!(
        "flood benchmark: model {model_ms} ms per call, 2 agent-workers; a calm user's {calm_turns} \
         turns, idle and while another user sends {burst} turns at once every second"
    );
    println!(
        "command: FLOOD_MODEL_MS={model_ms} FLOOD_CALM_TURNS={calm_turns} FLOOD_BURST={burst} \
         cargo bench -p system-tests --bench flood"
    );
    // Only the turns-in-flight limit refuses the flood here, not the message rate.
    let stack = common::load_stack(model_ms).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::try_from(burst)? + 8)
        .build()?;

    let idle = calm(&stack, &http, "calm-idle", calm_turns).await?;

    let stop = CancellationToken::new();
    let flooding = tokio::spawn(flood(
        stack.gateway.clone(),
        stack.token("flood"),
        http.clone(),
        burst,
        stop.clone(),
    ));
    // Let the first burst reach the queue before the calm user starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flooded = calm(&stack, &http, "calm-flooded", calm_turns).await?;
    stop.cancel();
    let (answered, refused, other) = flooding.await??;

    let (idle_p50, flooded_p50) = (median(idle), median(flooded));
    println!();
    println!("calm user, idle stack:    p50 {idle_p50:.1} ms");
    println!(
        "calm user, during flood:  p50 {flooded_p50:.1} ms ({:.2}x)",
        flooded_p50 / idle_p50
    );
    println!(
        "flooding user: {answered} turns answered, {refused} refused with 429, {other} other answers"
    );
    if other > 0 {
        bail!("the flooding user got {other} answers that were neither 200 nor 429");
    }
    Ok(())
}

/// `turns` add turns of `user`, one after the other; their latencies in ms.
async fn calm(
    stack: &Stack,
    http: &reqwest::Client,
    user: &str,
    turns: u64,
) -> anyhow::Result<Vec<f64>> {
    let token = stack.token(user);
    let mut latencies = Vec::new();
    for n in 0..turns {
        let started = Instant::now();
        let turn = http
            .post(format!("{}/api/{user}/chat", stack.gateway))
            .bearer_auth(&token)
            .json(&json!({"message": format!("add a task to water plant {n}")}));
        common::send_turn(turn, "the calm user's turn").await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// Sends `burst` turns at once every second until `stop`; counts 200s, 429s, others.
async fn flood(
    gateway: String,
    token: String,
    http: reqwest::Client,
    burst: u64,
    stop: CancellationToken,
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut answered, mut refused, mut other) = (0, 0, 0);
    let mut waves = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        for n in 0..burst {
            let request = http
                .post(format!("{gateway}/api/flood/chat"))
                .bearer_auth(&token)
                .json(&json!({"message": format!("add a task to flood {n}")}));
            waves.spawn(async move { request.send().await.map(|response| response.status()) });
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    while let Some(status) = waves.join_next().await {
        match status? {
            Ok(StatusCode::OK) => answered += 1,
            Ok(StatusCode::TOO_MANY_REQUESTS) => refused += 1,
            _ => other += 1,
        }
    }
    Ok((answered, refused, other))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
