//! End-to-end chat benchmark: every service as a release process against the machine's
//! NATS and Postgres (offline-llm answering at once), driven only through the public
//! `POST /api/{user}/chat`.
//!
//! Each client is its own user and keeps one conversation going, one turn after the
//! other. Every answer is checked (status 200, the same conversation, the expected tool
//! call and its result: the task number an add created, or as many tasks as the user
//! added for a list), so a fast but wrong stack cannot pass: any failed turn is counted,
//! quoted and fails the bench. It measures:
//!
//! - **baseline**: one client for a while, alternating "add a task to buy milk N" and
//!   "show my tasks": turn latency with nothing else going on;
//! - **concurrent**: `BENCH_USERS` clients doing the same at once: turns/s and
//!   p50/p90/p99, and over that run the CPU milliseconds per turn of each process
//!   (the services, Postgres, NATS; see `cpu`), the SQL statements per turn of all
//!   services together with the most frequent ones (see `sql`) and the JetStream
//!   messages stored per turn (see `stored`);
//! - **long conversation**: one client sending `BENCH_LONG_TURNS` adds in one
//!   conversation, comparing the latency of its first 50 turns with its last 50: a
//!   turn should cost the same at the 1,000th turn as at the first. Adds only, so that
//!   each answer stays the same size and only the conversation grows.
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
//! concurrent clients (64), `BENCH_SECONDS` of the baseline and concurrent runs (20),
//! `BENCH_WARMUP_SECONDS` of load before measuring (3), `BENCH_LONG_TURNS` turns of the
//! long conversation (1000; 0 skips it).

mod cpu;
mod sql;
mod stored;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions, env_number};

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
/// The turns at each end of a run of a fixed number of turns whose latency is compared.
const EDGE_TURNS: u64 = 50;

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
    long_turns: u64,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            workers: env_number("BENCH_WORKERS", 2, 1)?,
            users: env_number("BENCH_USERS", 64, 1)?,
            seconds: env_number("BENCH_SECONDS", 20, 1)?,
            warmup_seconds: env_number("BENCH_WARMUP_SECONDS", 3, 0)?,
            long_turns: env_number("BENCH_LONG_TURNS", 1000, 0)?,
        })
    }

    fn command(&self) -> String {
        format!(
            "BENCH_WORKERS={} BENCH_USERS={} BENCH_SECONDS={} BENCH_WARMUP_SECONDS={} \
             BENCH_LONG_TURNS={} cargo bench -p system-tests --bench chat",
            self.workers, self.users, self.seconds, self.warmup_seconds, self.long_turns
        )
    }
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
    println!("command: {}", settings.command());
    // The stack shares the cores with the client and whatever else runs here.
    println!("load average at the start: {}", load_average());
    let stack = Stack::start_with(StackOptions {
        workers: settings.workers,
        llm_latency_ms: 0,
        dev_login: false,
        reply_timeout_secs: REPLY_TIMEOUT_SECS,
        // The clients are synthetic users sending turns back to back, far faster than
        // a person: the per-user message rate would refuse most of them.
        env: vec![("GATEWAY_TURNS_PER_MINUTE", "0".into())],
        ..Default::default()
    })
    .await?;
    println!("service logs: {}\n", stack.logs().display());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(REPLY_TIMEOUT_SECS + 10))
        .pool_max_idle_per_host(settings.users.max(1))
        .tcp_nodelay(true)
        .build()?;
    let bench = Bench {
        stack: &stack,
        http: &http,
    };

    println!(
        "baseline and concurrent runs: each client is one user in one conversation, \
         alternating \"add a task to buy milk N\" and \"show my tasks\""
    );
    let timed = Length::Seconds(settings.seconds);
    if settings.warmup_seconds > 0 {
        let warmup = bench
            .drive(
                "warmup",
                settings.users,
                Length::Seconds(settings.warmup_seconds),
                Script::AddAndList,
            )
            .await?;
        println!(
            "warm-up: {} turns in {:.1} s at {} clients",
            warmup.tally.turns,
            warmup.elapsed.as_secs_f64(),
            settings.users
        );
        warmup.check(&stack)?;
    }
    let baseline = bench.drive("solo", 1, timed, Script::AddAndList).await?;

    // What the concurrent run costs: CPU of every process, statements in the database.
    let processes = cpu::Processes::of(&stack);
    let statements = sql::Statements::start(&stack.db.url).await;
    let stored_before = stored::sample(&stack.bus).await;
    let cpu_before = processes.sample();
    let concurrent = bench
        .drive("bench", settings.users, timed, Script::AddAndList)
        .await?;
    let cpu_after = processes.sample();
    let stored_after = stored::sample(&stack.bus).await;
    let statements = match statements {
        Ok(statements) => statements.read().await,
        Err(error) => Err(error),
    };

    println!();
    report_runs(
        settings,
        &[("baseline", &baseline), ("concurrent", &concurrent)],
    );
    println!();
    processes.report(
        &cpu_before,
        &cpu_after,
        concurrent.tally.turns,
        concurrent.elapsed,
    );
    println!();
    match statements {
        Ok(counts) => counts.report(concurrent.tally.turns),
        Err(error) => println!("SQL statements per turn: not counted: {error:#}"),
    }
    match (stored_before, stored_after) {
        (Ok(before), Ok(after)) => stored::report(&before, &after, concurrent.tally.turns),
        (Err(error), _) | (_, Err(error)) => {
            println!("JetStream messages per turn: not counted: {error:#}")
        }
    }
    baseline.check(&stack)?;
    concurrent.check(&stack)?;

    if settings.long_turns > 0 {
        println!();
        println!(
            "long conversation: one user sending {} adds in one conversation...",
            settings.long_turns
        );
        let long = bench
            .drive("long", 1, Length::Turns(settings.long_turns), Script::Adds)
            .await?;
        report_long(&long);
        long.check(&stack)?;
    }

    println!();
    println!("load average at the end: {}", load_average());
    println!("benchmark ran for {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Turns/s and latency of timed runs, then how latency moved within each run.
fn report_runs(settings: Settings, runs: &[(&str, &RunResult)]) {
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
    for (name, result) in runs {
        let latency = &result.tally.latency.all;
        println!(
            "{:<12} {:>7} {:>7} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7}",
            name,
            result.clients,
            settings.workers,
            result.tally.turns,
            result.elapsed.as_secs_f64(),
            result.turns_per_second(),
            ms(latency, 0.5),
            ms(latency, 0.9),
            ms(latency, 0.99),
            latency.max() as f64 / 1000.0,
            result.tally.errors,
        );
    }
    println!();
    for (name, result) in runs {
        let latency = &result.tally.latency;
        let (first, last) = result.span.part_names();
        println!(
            "{name}: {:.0} turns per conversation; p50 {:.1} ms in {first}, {:.1} ms in {last}",
            result.tally.turns as f64 / result.clients as f64,
            ms(&latency.first, 0.5),
            ms(&latency.last, 0.5),
        );
    }
}

/// The first turns of the long conversation against its last ones.
fn report_long(long: &RunResult) {
    let latency = &long.tally.latency;
    println!(
        "long conversation: {} turns answered in {:.1} s ({:.1} turns/s), {} errors; \
         p50 {:.1} ms over all turns",
        long.tally.turns,
        long.elapsed.as_secs_f64(),
        long.turns_per_second(),
        long.tally.errors,
        ms(&latency.all, 0.5),
    );
    let (first, last) = long.span.part_names();
    println!(
        "  {:<16} {:>6} {:>8} {:>8}",
        "turns", "count", "p50 ms", "p90 ms"
    );
    for (name, histogram) in [(&first, &latency.first), (&last, &latency.last)] {
        println!(
            "  {:<16} {:>6} {:>8.1} {:>8.1}",
            name,
            histogram.len(),
            ms(histogram, 0.5),
            ms(histogram, 0.9)
        );
    }
    let ratio = |q: f64| {
        let (first, last) = (ms(&latency.first, q), ms(&latency.last, q));
        if first > 0.0 {
            format!("{:.2}x", last / first)
        } else {
            "n/a".to_owned()
        }
    };
    println!(
        "  {last} against {first}: p50 {}, p90 {}",
        ratio(0.5),
        ratio(0.9)
    );
}

/// The latency at quantile `q` in milliseconds (histograms hold microseconds).
fn ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1000.0
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

/// How long each client of a run chats.
#[derive(Debug, Clone, Copy)]
enum Length {
    Seconds(u64),
    Turns(u64),
}

/// A started run's length, and which of its turns make its first and its last part:
/// their latencies tell whether turns get slower as the conversations grow.
#[derive(Debug, Clone, Copy)]
enum Span {
    /// Turns are sent until `deadline`; those in flight then finish and count. The parts
    /// are the first and the last quarter of the time.
    Timed { started: Instant, deadline: Instant },
    /// Each client sends `turns` turns; the parts are its first and its last `edge`.
    Counted { turns: u64, edge: u64 },
}

impl Span {
    fn start(length: Length) -> Self {
        match length {
            Length::Seconds(seconds) => {
                let started = Instant::now();
                Self::Timed {
                    started,
                    deadline: started + Duration::from_secs(seconds),
                }
            }
            Length::Turns(turns) => Self::Counted {
                turns,
                edge: EDGE_TURNS.min(turns / 2).max(1),
            },
        }
    }

    /// Whether a client that has sent `sent` turns sends another.
    fn goes_on(&self, sent: u64) -> bool {
        match *self {
            Self::Timed { deadline, .. } => Instant::now() < deadline,
            Self::Counted { turns, .. } => sent < turns,
        }
    }

    /// Whether a client's turn number `turn` (from 1), sent at `sent`, is in the first
    /// part and whether it is in the last.
    fn parts_of(&self, turn: u64, sent: Instant) -> (bool, bool) {
        match *self {
            Self::Timed { started, deadline } => {
                let quarter = (deadline - started) / 4;
                (sent < started + quarter, sent >= deadline - quarter)
            }
            Self::Counted { turns, edge } => (turn <= edge, turn > turns.saturating_sub(edge)),
        }
    }

    /// What the first and the last part are, for the report.
    fn part_names(&self) -> (String, String) {
        match *self {
            Self::Timed { .. } => (
                "the first quarter of the run".to_owned(),
                "the last".to_owned(),
            ),
            Self::Counted { turns, edge } => (
                format!("turns 1-{edge}"),
                format!("turns {}-{turns}", turns - edge + 1),
            ),
        }
    }
}

/// What each client says, turn after turn.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// "add a task to buy milk N" and "show my tasks" in turn.
    AddAndList,
    /// "add a task to buy milk N" only: every answer the same size, whatever the
    /// conversation's length.
    Adds,
}

impl Script {
    /// Turn `step` (from 0): `Some(n)` adds the script's n-th task, `None` lists the tasks.
    fn turn(self, step: u64) -> Option<u64> {
        match self {
            Self::AddAndList if !step.is_multiple_of(2) => None,
            Self::AddAndList => Some(step / 2 + 1),
            Self::Adds => Some(step + 1),
        }
    }
}

/// Turn latency in microseconds, answered turns only: over the whole run, and over its
/// first and its last part (see [`Span`]).
struct Latency {
    all: Histogram<u64>,
    first: Histogram<u64>,
    last: Histogram<u64>,
}

impl Latency {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            all: Histogram::new(3)?,
            first: Histogram::new(3)?,
            last: Histogram::new(3)?,
        })
    }

    fn record(
        &mut self,
        span: &Span,
        turn: u64,
        sent: Instant,
        latency: Duration,
    ) -> anyhow::Result<()> {
        let micros = latency.as_micros() as u64;
        self.all.record(micros)?;
        let (first, last) = span.parts_of(turn, sent);
        if first {
            self.first.record(micros)?;
        }
        if last {
            self.last.record(micros)?;
        }
        Ok(())
    }

    fn add(&mut self, other: &Self) -> anyhow::Result<()> {
        self.all.add(&other.all)?;
        self.first.add(&other.first)?;
        self.last.add(&other.last)?;
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
    span: Span,
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
    /// other for `length`.
    async fn drive(
        &self,
        label: &'static str,
        clients: usize,
        length: Length,
        script: Script,
    ) -> anyhow::Result<RunResult> {
        let started = Instant::now();
        let span = Span::start(length);
        let tallies = futures::future::join_all(
            (0..clients).map(|client| self.client(format!("{label}-{client}"), span, script)),
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
            span,
            tally,
            elapsed,
        })
    }

    async fn client(&self, user: String, span: Span, script: Script) -> anyhow::Result<Tally> {
        let url = format!("{}/api/{user}/chat", self.stack.gateway);
        let token = self.stack.token(&user);
        let mut tally = Tally::new()?;
        let mut conversation: Option<String> = None;
        // Tasks this user has; unknown after a failed add (it may have happened) until
        // the next answer says.
        let mut added: Option<u64> = Some(0);
        let mut step: u64 = 0;
        while span.goes_on(step) {
            let (message, expected) = match script.turn(step) {
                Some(n) => (
                    format!("add a task to buy milk {n}"),
                    Expect::Added(added.map(|n| n + 1)),
                ),
                None => ("show my tasks".to_owned(), Expect::Listed(added)),
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
                    tally.latency.record(&span, step, sent, latency)?;
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
