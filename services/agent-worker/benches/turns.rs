//! Chat-turn benchmark: the whole worker (JetStream, the event log in Postgres,
//! task-service over NATS, a model over HTTP) against the machine's NATS and Postgres,
//! with offline-llm as the model.
//!
//! 1. offline-llm answering at once: latency of one turn at a time, set against the
//!    same two model calls made directly, gives the worker's overhead per turn beyond
//!    the model; then the turns per second one replica sustains.
//! 2. offline-llm taking 200 ms per call: throughput with 1, 2 and 4 replicas sharing
//!    the consumer, which should grow near-linearly while the model dominates.
//!
//! `cargo bench -p agent-worker --bench turns`; about a minute of running time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use agent_worker::machine::{self, TurnState};
use agent_worker::model::{ModelClient, ModelSettings};
use agent_worker::transport::RetryPolicy;
use agent_worker::{Provider, ProviderKind};
use common::Stack;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use proto_schemas::chat::ChatRequest;
use proto_schemas::events::ConversationEvent;
use proto_schemas::{CommandId, RequestId};
use serde_json::json;

const SEQUENTIAL_TURNS: usize = 60;
const THROUGHPUT_TURNS: usize = 400;
const WARM_UP_TURNS: usize = 20;
const SLOW_MODEL_MS: u64 = 200;
/// Turns per replica in the slow-model runs (about 4 s each).
const SLOW_TURNS_PER_REPLICA: usize = 64;
const CONCURRENCY: u16 = 8;
const USERS: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stack = Stack::start_quietly(0).await;
    let mut bench = Bench { counter: 0 };
    println!(
        "agent-worker turns benchmark ({} cores)",
        std::thread::available_parallelism()?.get()
    );
    println!("each turn: \"add a task to buy …\" = model step, add_task command, model step\n");

    // 1. The model answers at once.
    stack
        .spawn_worker(worker_config(&stack, &stack.llm_base.clone()))
        .await;
    bench.batch(&stack, WARM_UP_TURNS).await;

    let mut turn_latency = Histogram::<u64>::new(3)?;
    for _ in 0..SEQUENTIAL_TURNS {
        let elapsed = bench.one(&stack).await;
        turn_latency.record(elapsed.as_micros() as u64)?;
    }
    let model_latency = model_only(&stack).await?;
    let overhead_us = turn_latency
        .value_at_quantile(0.5)
        .saturating_sub(model_latency.value_at_quantile(0.5));
    println!("offline-llm at 0 ms, 1 replica:");
    println!(
        "  one turn at a time ({SEQUENTIAL_TURNS} turns)        {}",
        quantiles(&turn_latency)
    );
    println!(
        "  its two model calls, made directly   {}",
        quantiles(&model_latency)
    );
    println!(
        "  worker overhead per turn (p50)       {:.1} ms",
        overhead_us as f64 / 1000.0
    );
    let elapsed = bench.batch(&stack, THROUGHPUT_TURNS).await;
    println!(
        "  throughput, {CONCURRENCY} turns at a time        {THROUGHPUT_TURNS} turns in {:.2} s = {:.0} turns/s\n",
        elapsed.as_secs_f64(),
        THROUGHPUT_TURNS as f64 / elapsed.as_secs_f64()
    );
    stop_workers(&mut stack).await;

    // 2. The model takes 200 ms a call.
    let (slow_llm, slow) = common::offline_llm(SLOW_MODEL_MS).await;
    stack.services.push(slow);
    println!(
        "offline-llm at {SLOW_MODEL_MS} ms per call, {CONCURRENCY} turns at a time per replica:"
    );
    println!("  replicas   turns   seconds   turns/s   speed-up");
    let mut single = None;
    for replicas in [1usize, 2, 4] {
        for _ in 0..replicas {
            stack.spawn_worker(worker_config(&stack, &slow_llm)).await;
        }
        bench.batch(&stack, replicas * 4).await;
        let turns = SLOW_TURNS_PER_REPLICA * replicas;
        let elapsed = bench.batch(&stack, turns).await;
        let rate = turns as f64 / elapsed.as_secs_f64();
        let base = *single.get_or_insert(rate);
        println!(
            "  {replicas:>8}   {turns:>5}   {:>7.2}   {rate:>7.1}   {:>7.2}x",
            elapsed.as_secs_f64(),
            rate / base
        );
        stop_workers(&mut stack).await;
    }
    println!(
        "\nbenchmark ran for {:.0} s",
        started.elapsed().as_secs_f64()
    );
    stack.stop().await;
    Ok(())
}

fn worker_config(stack: &Stack, llm_base: &str) -> agent_worker::Config {
    let mut config = stack.worker_config();
    config.provider.llm_base_url = Some(llm_base.to_owned());
    config.concurrency = CONCURRENCY;
    config.ack_wait_secs = 30;
    config
}

async fn stop_workers(stack: &mut Stack) {
    for worker in stack.workers.drain(..) {
        worker.stop().await;
    }
}

struct Bench {
    counter: usize,
}

impl Bench {
    fn request(&mut self, stack: &Stack) -> ChatRequest {
        self.counter += 1;
        let user = format!("bench-{}", self.counter % USERS);
        stack.new_chat(&user, &format!("add a task to buy item {}", self.counter))
    }

    /// One turn, published and answered: the latency the user sees.
    async fn one(&mut self, stack: &Stack) -> Duration {
        let request = self.request(stack);
        let mut replies = testkit::subscribe(
            &stack.bus.client,
            stack.bus.subjects.chat_reply(request.request_id),
        )
        .await;
        let started = Instant::now();
        stack.publish(&request).await;
        tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .expect("a reply in time");
        started.elapsed()
    }

    /// `turns` turns published at once; the time until the last is answered.
    async fn batch(&mut self, stack: &Stack, turns: usize) -> Duration {
        let requests: Vec<ChatRequest> = (0..turns).map(|_| self.request(stack)).collect();
        let mut waiting: HashSet<String> = requests
            .iter()
            .map(|request| stack.bus.subjects.chat_reply(request.request_id))
            .collect();
        let mut replies = testkit::subscribe(
            &stack.bus.client,
            stack.bus.subjects.chat_replies_wildcard(),
        )
        .await;
        let started = Instant::now();
        let jetstream = stack.jetstream();
        let publishing = futures::future::join_all(
            requests
                .iter()
                .map(|request| common::publish_request(&jetstream, &stack.bus.subjects, request)),
        );
        let collecting = async {
            while !waiting.is_empty() {
                let reply = tokio::time::timeout(Duration::from_secs(120), replies.next())
                    .await
                    .expect("replies keep coming")
                    .expect("subscribed");
                waiting.remove(reply.subject.as_str());
            }
        };
        tokio::join!(publishing, collecting);
        started.elapsed()
    }
}

/// The two model steps of an add-task turn, sent straight to offline-llm through the
/// worker's own model client, with the messages the worker would send.
async fn model_only(stack: &Stack) -> anyhow::Result<Histogram<u64>> {
    let catalog = agent_worker::tools::ToolCatalog::builtin();
    let provider = Provider {
        kind: ProviderKind::Custom,
        base_url: stack.llm_base.clone(),
        model: "offline-llm".into(),
        api_key: None,
    };
    let settings = ModelSettings {
        timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            max_retries: 0,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(1),
        },
    };
    let model = ModelClient::new(&provider, settings)?;
    let mut histogram = Histogram::<u64>::new(3)?;
    for i in 0..SEQUENTIAL_TURNS {
        let request = RequestId::new();
        let mut events = vec![ConversationEvent::UserMessageReceived {
            request_id: request,
            text: format!("add a task to buy item {i}"),
            regenerates: None,
        }];
        let started = Instant::now();
        let state = TurnState::from_events(&events, request);
        let messages =
            machine::model_messages(agent_worker::prompt::DEFAULT_SYSTEM_PROMPT, &[], &state, 0);
        let step = model.step(&messages, catalog.tools(), |_| {}).await?;
        let call = step.calls.first().expect("offline-llm calls add_task");
        events.push(ConversationEvent::ToolCallRequested {
            request_id: request,
            step: 0,
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: machine::parse_arguments(&call.arguments),
            command_id: CommandId::for_tool_call(request, 0, 0),
        });
        events.push(ConversationEvent::ToolCallCompleted {
            request_id: request,
            call_id: call.id.clone(),
            name: call.name.clone(),
            result: json!({"task_id": i + 1, "status": "created", "title": format!("Buy item {i}")}),
        });
        let state = TurnState::from_events(&events, request);
        let messages =
            machine::model_messages(agent_worker::prompt::DEFAULT_SYSTEM_PROMPT, &[], &state, 1);
        model.step(&messages, catalog.tools(), |_| {}).await?;
        histogram.record(started.elapsed().as_micros() as u64)?;
    }
    Ok(histogram)
}

fn quantiles(histogram: &Histogram<u64>) -> String {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:>6.1} ms   p90 {:>6.1} ms   p99 {:>6.1} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99)
    )
}
