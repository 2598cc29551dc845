//! add_task throughput and latency, over NATS and over MCP, at 1 and 32 concurrent
//! clients, against the real Postgres and NATS.
//!
//! Spawns task-service in-process on a fresh database and a unique subject prefix,
//! then for each scenario runs a short warm-up and a timed window in which every
//! client sends add_task commands back to back (each waits for its answer). Each
//! client is its own user and moves on to a new user every [`TASKS_PER_USER`] adds,
//! so task lists stay the size people have (every command folds its user's stream).
//!
//! `cargo bench -p task-service --bench commands`; `BENCH_SECONDS` sets the timed
//! window of each scenario (default 5).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use hdrhistogram::Histogram;
use platform::auth::JwtKeys;
use proto_schemas::tasks::{AddTaskArgs, TaskCommand, TaskCommandReply, ToolCall};
use proto_schemas::{CommandId, Subjects, UserId};
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use task_service::{App, Config};
use testkit::{TestBus, TestDatabase};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "task-service-bench-secret-of-32-bytes-or-more";
const WARMUP: Duration = Duration::from_secs(1);
const TASKS_PER_USER: u64 = 100;
const CONCURRENCY: [usize; 2] = [1, 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Nats,
    Mcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Mcp => "mcp",
        }
    }
}

/// Where the clients send their commands.
#[derive(Clone)]
struct Target {
    nats: async_nats::Client,
    subjects: Subjects,
    mcp_url: String,
    keys: JwtKeys,
}

struct Outcome {
    commands: u64,
    elapsed: Duration,
    latencies: Histogram<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let window = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_secs);

    let db = TestDatabase::create().await?;
    let bus = TestBus::new().await?;
    let mut config = Config::try_parse_from(["task-service", "--auth-jwt-secret", SECRET])?;
    config.nats = bus.nats_config();
    config.database = db.database_config();
    // The production default pool, not the test kit's small one.
    config.database.database_max_connections = 10;
    config.listen = "127.0.0.1:0".parse()?;
    let app = App::build(config).await?;
    let target = Target {
        nats: bus.client.clone(),
        subjects: bus.subjects.clone(),
        mcp_url: format!("http://{}/mcp", app.local_addr()),
        keys: JwtKeys::new(SECRET.as_bytes()),
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));

    let mut rows = Vec::new();
    for transport in [Transport::Nats, Transport::Mcp] {
        for clients in CONCURRENCY {
            let outcome = scenario(&target, transport, clients, window).await?;
            rows.push((transport, clients, outcome));
        }
    }

    println!();
    println!(
        "task-service add_task, {}s per scenario, one user per client ({TASKS_PER_USER} tasks each)",
        window.as_secs()
    );
    println!(
        "{:<10} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "transport", "clients", "commands", "cmds/s", "p50 ms", "p99 ms", "max ms"
    );
    for (transport, clients, outcome) in &rows {
        let millis = |micros: u64| micros as f64 / 1_000.0;
        println!(
            "{:<10} {:>7} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            transport.name(),
            clients,
            outcome.commands,
            outcome.commands as f64 / outcome.elapsed.as_secs_f64(),
            millis(outcome.latencies.value_at_quantile(0.50)),
            millis(outcome.latencies.value_at_quantile(0.99)),
            millis(outcome.latencies.max()),
        );
    }

    shutdown.cancel();
    server.await?.context("task-service failed")?;
    Ok(())
}

/// `clients` clients sending add_task over `transport`: a warm-up, then `window` timed.
async fn scenario(
    target: &Target,
    transport: Transport,
    clients: usize,
    window: Duration,
) -> anyhow::Result<Outcome> {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let warm_until = Instant::now() + WARMUP;
    let stop_at = warm_until + window;
    let workers = (0..clients).map(|client| {
        let target = target.clone();
        let user_prefix = format!("bench-{}-{}-{client}", transport.name(), &run_id[20..]);
        tokio::spawn(async move {
            client_loop(target, transport, user_prefix, warm_until, stop_at).await
        })
    });
    let finished = futures::future::join_all(workers).await;
    // The last commands end a little after `stop_at`: count the time they took.
    let elapsed = Instant::now()
        .saturating_duration_since(warm_until)
        .max(window);
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut commands = 0;
    for worker in finished {
        let (count, histogram) = worker??;
        commands += count;
        latencies.add(&histogram)?;
    }
    Ok(Outcome {
        commands,
        elapsed,
        latencies,
    })
}

/// Tracing as a deployed service has it (spans with real trace ids, the W3C
/// propagator), but only warnings are printed, on stderr, so the table stands out.
fn init_tracing() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bench"))
        .with_filter(EnvFilter::new(platform::telemetry::DEFAULT_FILTER));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")));
    tracing_subscriber::registry().with(spans).with(logs).init();
}

type McpClient = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// One client: add_task after add_task until `stop_at`, recording the latency of
/// those that start after `warm_until`.
async fn client_loop(
    target: Target,
    transport: Transport,
    user_prefix: String,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut recorded = 0;
    let mut sent: u64 = 0;
    // An MCP client holds one user's token, so a new user means a new client.
    let mut session: Option<(UserId, McpClient)> = None;
    while Instant::now() < stop_at {
        let user = UserId::parse(&format!("{user_prefix}-{}", sent / TASKS_PER_USER))?;
        let title = format!("bench task {sent}");
        let started = match transport {
            Transport::Nats => {
                let started = Instant::now();
                add_over_nats(&target, user, title).await?;
                started
            }
            Transport::Mcp => {
                if session.as_ref().is_none_or(|(current, _)| *current != user) {
                    if let Some((_, client)) = session.take() {
                        client.cancel().await?;
                    }
                    session = Some((user.clone(), connect_mcp(&target, &user).await?));
                }
                let (_, client) = session.as_ref().expect("connected above");
                // The handshake is not part of a command's latency.
                let started = Instant::now();
                add_over_mcp(client, &user, title).await?;
                started
            }
        };
        sent += 1;
        if started >= warm_until {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            latencies.record(micros.max(1))?;
            recorded += 1;
        }
    }
    if let Some((_, client)) = session {
        client.cancel().await?;
    }
    Ok((recorded, latencies))
}

async fn add_over_nats(target: &Target, user: UserId, title: String) -> anyhow::Result<()> {
    let command = TaskCommand {
        command_id: CommandId::new(),
        user_id: user,
        correlation_id: None,
        call: ToolCall::AddTask(AddTaskArgs {
            title,
            description: String::new(),
        }),
        notify_appended: true,
    };
    let reply: TaskCommandReply = platform::bus::request_json(
        &target.nats,
        target.subjects.task_commands(),
        &command,
        Duration::from_secs(30),
    )
    .await?;
    anyhow::ensure!(
        matches!(reply, TaskCommandReply::Applied { .. }),
        "not applied: {reply:?}"
    );
    Ok(())
}

async fn connect_mcp(target: &Target, user: &UserId) -> anyhow::Result<McpClient> {
    let token = target.keys.mint(user, Duration::from_secs(3600));
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(target.mcp_url.clone()).auth_header(token),
    );
    Ok(().serve(transport).await?)
}

async fn add_over_mcp(client: &McpClient, user: &UserId, title: String) -> anyhow::Result<()> {
    let serde_json::Value::Object(arguments) =
        serde_json::json!({"user_id": user.as_str(), "title": title})
    else {
        unreachable!("a json object literal")
    };
    let result = client
        .call_tool(CallToolRequestParams::new("add_task").with_arguments(arguments))
        .await?;
    anyhow::ensure!(result.is_error != Some(true), "tool error: {result:?}");
    Ok(())
}
