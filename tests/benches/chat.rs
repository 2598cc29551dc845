//! End-to-end chat benchmark: every service as a release process against the machine's
//! NATS and Postgres (offline-llm answering at once), driven only through the public
//! `POST /api/{user}/chat`.
//!
//! Each client is its own user and keeps one conversation going, alternating
//! "add a task to buy milk N" with "show my tasks", one turn after the other, for a
//! bounded time. Every answer is checked (status 200, the same conversation, the
//! expected tool call and, for the list, as many tasks as the user added), so a fast
//! but wrong stack cannot pass: any failed turn is counted, quoted and fails the bench.
//! The run at one client is the baseline latency; the run at many clients gives the
//! throughput.
//!
//! The services are the binaries next to this bench (target/release/), so build them
//! first:
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p system-tests --bench chat
//! ```
//!
//! Settings (environment): `BENCH_WORKERS` agent-worker replicas (2), `BENCH_USERS`
//! concurrent clients (32), `BENCH_SECONDS` of each measured run (20),
//! `BENCH_WARMUP_SECONDS` of load before measuring (3).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions};

const SERVICES: [&str; 5] = [
    "offline-llm",
    "task-service",
    "projection",
    "agent-worker",
    "gateway",
];
/// The gateway's wait for a reply; a turn slower than this is a 504, an error.
const REPLY_TIMEOUT_SECS: u64 = 30;
/// Error answers quoted in full when a run fails.
const QUOTED_ERRORS: usize = 5;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    check_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    workers: usize,
    users: usize,
    seconds: u64,
    warmup_seconds: u64,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            workers: env_number("BENCH_WORKERS", 2, 1)?,
            users: env_number("BENCH_USERS", 32, 1)?,
            seconds: env_number("BENCH_SECONDS", 20, 1)?,
            warmup_seconds: env_number("BENCH_WARMUP_SECONDS", 3, 0)?,
        })
    }

    fn command(&self) -> String {
        format!(
            "BENCH_WORKERS={} BENCH_USERS={} BENCH_SECONDS={} BENCH_WARMUP_SECONDS={} \
             cargo bench -p system-tests --bench chat",
            self.workers, self.users, self.seconds, self.warmup_seconds
        )
    }
}

fn env_number<T>(name: &str, default: T, min: T) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Ok(raw) = std::env::var(name) else {
        return Ok(default);
    };
    let value: T = raw
        .trim()
        .parse()
        .ok()
        .with_context(|| format!("{name}={raw:?} is not a whole number"))?;
    if value < min {
        bail!("{name}={value} is below the minimum of {min}");
    }
    Ok(value)
}

/// `system_tests::binary` panics on a missing binary with the debug build's command;
/// a bench runs the release ones, so say exactly what to build before anything starts.
fn check_binaries() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench runs from target/<profile>/deps/")?
        .to_owned();
    let missing: Vec<&str> = SERVICES
        .into_iter()
        .filter(|name| !dir.join(name).exists())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "the service binaries {} are missing from {}.\n\
             build them first with the profile this bench runs in:\n\n    \
             cargo build --release --workspace --bins\n",
            missing.join(", "),
            dir.display()
        );
        bail!("service binaries missing: {}", missing.join(", "));
    }
    Ok(())
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "end-to-end chat benchmark ({} cores): gateway -> JetStream -> {} agent-worker \
         replica(s) -> task-service, offline-llm at 0 ms",
        std::thread::available_parallelism()?.get(),
        settings.workers
    );
    println!(
        "each client is one user in one conversation, alternating \"add a task to buy milk N\" \
         and \"show my tasks\""
    );
    // The stack shares the cores with the client and whatever else runs here.
    println!("load average at the start: {}\n", load_average());
    let stack = Stack::start_with(StackOptions {
        workers: settings.workers,
        llm_latency_ms: 0,
        dev_login: false,
        reply_timeout_secs: REPLY_TIMEOUT_SECS,
    })
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(REPLY_TIMEOUT_SECS + 10))
        .pool_max_idle_per_host(settings.users.max(1))
        .tcp_nodelay(true)
        .build()?;
    let bench = Bench {
        stack: &stack,
        http: &http,
    };

    if settings.warmup_seconds > 0 {
        let warmup = bench
            .drive("warmup", settings.users, settings.warmup_seconds)
            .await?;
        println!(
            "warm-up: {} turns in {:.1} s at {} clients",
            warmup.tally.turns,
            warmup.elapsed.as_secs_f64(),
            settings.users
        );
        warmup.check(&stack)?;
    }
    let baseline = bench.drive("solo", 1, settings.seconds).await?;
    let concurrent = bench
        .drive("bench", settings.users, settings.seconds)
        .await?;

    println!();
    println!(
        "{:<12} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "run",
        "clients",
        "workers",
        "turns",
        "seconds",
        "turns/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors"
    );
    for (name, result) in [("baseline", &baseline), ("concurrent", &concurrent)] {
        let latency = &result.tally.latency.all;
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<12} {:>7} {:>7} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7}",
            name,
            result.clients,
            settings.workers,
            result.tally.turns,
            result.elapsed.as_secs_f64(),
            result.turns_per_second(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            latency.max() as f64 / 1000.0,
            result.tally.errors,
        );
    }
    println!();
    for (name, result) in [("baseline", &baseline), ("concurrent", &concurrent)] {
        let latency = &result.tally.latency;
        let p50 = |histogram: &Histogram<u64>| histogram.value_at_quantile(0.5) as f64 / 1000.0;
        println!(
            "{name}: {:.0} turns per conversation; p50 {:.1} ms in the first quarter of the \
             run, {:.1} ms in the last",
            result.tally.turns as f64 / result.clients as f64,
            p50(&latency.first_quarter),
            p50(&latency.last_quarter),
        );
    }
    println!("load average at the end: {}", load_average());
    println!("command: {}", settings.command());
    println!("service logs: {}", stack.logs().display());
    println!("benchmark ran for {:.0} s", started.elapsed().as_secs_f64());
    baseline.check(&stack)?;
    concurrent.check(&stack)?;
    Ok(())
}

/// The 1, 5 and 15 minute load averages, where the system has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|line| {
            let fields: Vec<&str> = line.split_whitespace().take(3).collect();
            (fields.len() == 3).then(|| fields.join(" "))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

struct Bench<'a> {
    stack: &'a Stack,
    http: &'a reqwest::Client,
}

/// The time a run is driven for. Turns are sent until `deadline`; those in flight then
/// finish and count.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    deadline: Instant,
}

impl Window {
    fn quarter(&self) -> Duration {
        (self.deadline - self.started) / 4
    }
}

/// Turn latency in microseconds, answered turns only: over the whole run, and over its
/// first and last quarter, since every turn rereads its whole conversation and the
/// conversations only grow.
struct Latency {
    all: Histogram<u64>,
    first_quarter: Histogram<u64>,
    last_quarter: Histogram<u64>,
}

impl Latency {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            all: Histogram::new(3)?,
            first_quarter: Histogram::new(3)?,
            last_quarter: Histogram::new(3)?,
        })
    }

    fn record(&mut self, window: Window, sent: Instant, latency: Duration) -> anyhow::Result<()> {
        let micros = latency.as_micros() as u64;
        self.all.record(micros)?;
        if sent < window.started + window.quarter() {
            self.first_quarter.record(micros)?;
        }
        if sent >= window.deadline - window.quarter() {
            self.last_quarter.record(micros)?;
        }
        Ok(())
    }

    fn add(&mut self, other: &Self) -> anyhow::Result<()> {
        self.all.add(&other.all)?;
        self.first_quarter.add(&other.first_quarter)?;
        self.last_quarter.add(&other.last_quarter)?;
        Ok(())
    }
}

/// What one or more clients saw.
struct Tally {
    turns: u64,
    errors: u64,
    /// The first few failed turns, quoted when the run fails.
    samples: Vec<String>,
    latency: Latency,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            turns: 0,
            errors: 0,
            samples: Vec::new(),
            latency: Latency::new()?,
        })
    }

    fn add(&mut self, other: Self) -> anyhow::Result<()> {
        self.turns += other.turns;
        self.errors += other.errors;
        self.latency.add(&other.latency)?;
        let room = QUOTED_ERRORS.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
        Ok(())
    }
}

/// What one run measured.
struct RunResult {
    label: &'static str,
    clients: usize,
    tally: Tally,
    /// From the first request to the last answer.
    elapsed: Duration,
}

impl RunResult {
    fn turns_per_second(&self) -> f64 {
        self.tally.turns as f64 / self.elapsed.as_secs_f64()
    }

    fn check(&self, stack: &Stack) -> anyhow::Result<()> {
        let tally = &self.tally;
        if tally.errors == 0 {
            return Ok(());
        }
        eprintln!(
            "\n{} run: {} of {} turns failed; the first ones:",
            self.label,
            tally.errors,
            tally.turns + tally.errors
        );
        for sample in &tally.samples {
            eprintln!("  {sample}");
        }
        eprintln!("service logs: {}", stack.logs().display());
        bail!("{} turns failed in the {} run", tally.errors, self.label)
    }
}

impl Bench<'_> {
    /// `clients` users, each with its own conversation, chatting one turn after the
    /// other until `seconds` have passed.
    async fn drive(
        &self,
        label: &'static str,
        clients: usize,
        seconds: u64,
    ) -> anyhow::Result<RunResult> {
        let started = Instant::now();
        let window = Window {
            started,
            deadline: started + Duration::from_secs(seconds),
        };
        let tallies = futures::future::join_all(
            (0..clients).map(|client| self.client(format!("{label}-{client}"), window)),
        )
        .await;
        let elapsed = started.elapsed();
        let mut tally = Tally::new()?;
        for client in tallies {
            tally.add(client?)?;
        }
        Ok(RunResult {
            label,
            clients,
            tally,
            elapsed,
        })
    }

    async fn client(&self, user: String, window: Window) -> anyhow::Result<Tally> {
        let url = format!("{}/api/{user}/chat", self.stack.gateway);
        let token = self.stack.token(&user);
        let mut tally = Tally::new()?;
        let mut conversation: Option<String> = None;
        // Tasks this user has; unknown after a failed add (it may have happened) until
        // the next answer says.
        let mut added: Option<u64> = Some(0);
        let mut step: u64 = 0;
        while Instant::now() < window.deadline {
            let expected = if step.is_multiple_of(2) {
                Expect::Added(added.map(|n| n + 1))
            } else {
                Expect::Listed(added)
            };
            let message = match expected {
                Expect::Added(_) => format!("add a task to buy milk {}", step / 2 + 1),
                Expect::Listed(_) => "show my tasks".to_owned(),
            };
            step += 1;
            let mut body = json!({ "message": message });
            if let Some(id) = &conversation {
                body["conversation_id"] = id.as_str().into();
            }
            let sent = Instant::now();
            let answer = self.post(&url, &token, &body).await;
            let latency = sent.elapsed();
            let verdict = answer.and_then(|(status, answer)| {
                if status != StatusCode::OK {
                    bail!("{status}: {answer}");
                }
                let tasks = expected.check(&answer, conversation.as_deref())?;
                Ok((answer, tasks))
            });
            match verdict {
                Ok((answer, tasks)) => {
                    tally.turns += 1;
                    tally.latency.record(window, sent, latency)?;
                    if conversation.is_none() {
                        conversation = answer["conversation_id"].as_str().map(str::to_owned);
                    }
                    added = Some(tasks);
                }
                Err(error) => {
                    tally.errors += 1;
                    if tally.samples.len() < QUOTED_ERRORS {
                        tally.samples.push(format!("{user} {message:?}: {error:#}"));
                    }
                    if matches!(expected, Expect::Added(_)) {
                        added = None;
                    }
                }
            }
        }
        Ok(tally)
    }

    async fn post(
        &self,
        url: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .context("request failed")?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("non-JSON answer ({status}): {text}"))?;
        Ok((status, json))
    }
}

/// What a turn must have done; `None` where the user's task count is unknown.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// add_task created the user's task number n.
    Added(Option<u64>),
    /// list_tasks showed the n tasks the user has added.
    Listed(Option<u64>),
}

impl Expect {
    /// Checks the answer; returns how many tasks the user has now.
    fn check(self, answer: &Value, conversation: Option<&str>) -> anyhow::Result<u64> {
        let id = answer["conversation_id"]
            .as_str()
            .context("no conversation_id")?;
        if let Some(expected) = conversation
            && id != expected
        {
            bail!("answered in conversation {id}, not {expected}");
        }
        if answer["response"].as_str().is_none_or(str::is_empty) {
            bail!("an empty response: {answer}");
        }
        let call = &answer["tool_calls"][0];
        let (tool, field, expected) = match self {
            Self::Added(n) => ("add_task", "task_id", n),
            Self::Listed(n) => ("list_tasks", "count", n),
        };
        let got = call["result"][field].as_u64();
        match (call["name"] == tool, got, expected) {
            (true, Some(got), None) => Ok(got),
            (true, Some(got), Some(expected)) if got == expected => Ok(got),
            _ => bail!(
                "expected {tool} with {field} {}: {answer}",
                expected.map_or_else(|| "any".to_owned(), |n| n.to_string())
            ),
        }
    }
}
