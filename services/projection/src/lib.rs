//! projection: the read models of taskchat — task lists per user, conversations per
//! user, messages per conversation with the tool calls of each turn — folded from the
//! event log, answered over NATS, and rebuilt from scratch by replay.
//!
//! # Layout
//! - [`model`]: the pure fold of events into read models (shared by every path).
//! - [`schema`]: the Postgres schemas and tables, their SQL, the advisory locks.
//! - [`store`]: applying a batch with its checkpoint in one transaction; loading all.
//! - [`projector`]: the live single writer (writer lock, tail, batches).
//! - [`queries`]: query answers over NATS request-reply (queue group).
//! - [`cursor`]: opaque keyset cursors and page limits.
//! - [`replay`]: rebuild into a fresh schema and swap it in atomically.
//! - [`verify`]: fold the log afresh and compare with the live read models.
//! - [`progress`]: replay progress on a terminal or as plain lines.
//!
//! [`App::build`] connects and subscribes; [`App::run`] projects and answers until a
//! shutdown token is cancelled. [`replay()`] and [`verify()`] are what the `replay` and
//! `verify` subcommands run. `main` and the tests drive all of them the same way.

mod cursor;
mod error;
mod model;
pub mod progress;
mod projector;
pub mod queries;
pub mod replay;
pub mod schema;
pub mod store;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use eventlog::EventStore;
use platform::config::{DatabaseConfig, NatsConfig, ProcessConfig, TelemetryConfig};
use platform::health::HealthConfig;
use sqlx::{Connection as _, PgPool};
use tokio_util::sync::CancellationToken;

pub use error::ProjectionError;
pub use progress::ProgressMode;
pub use queries::Reader;
pub use replay::{ReplayOptions, ReplaySummary, replay};
pub use verify::{VerifyOptions, VerifyReport, verify};

/// The name the service reports in logs, traces and its NATS connection.
pub const SERVICE_NAME: &str = "projection";

/// How long start-up waits for NATS to confirm the query subscriptions. NATS being
/// down is not fatal (the client keeps reconnecting), only logged.
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The command line: `projection [run]`, `projection replay`, `projection verify`,
/// `projection migrate`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "projection",
    version,
    about = "taskchat read models: tails the event log into task lists, conversations and \
             messages, answers queries over NATS, rebuilds by replay and checks by verify",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The settings of `run`, which is what `projection` alone does.
    #[command(flatten)]
    pub run: Config,
}

impl Cli {
    /// The subcommand to run (`run` when none was named).
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.run))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Project the event log into the live read models and answer queries (the default).
    Run(Config),
    /// Rebuild every read model from the first event into a fresh schema, then swap it
    /// in atomically; queries keep being answered meanwhile.
    Replay(ReplayConfig),
    /// Fold the log afresh and compare with the live read models: exit code 0 when
    /// identical, 1 (with the differences printed) when not.
    Verify(VerifyConfig),
    /// Bring the database's schema up to date (the event log's migrations and the live
    /// read model tables) and exit: what every service also does as it starts, run
    /// once before a rollout (the Kubernetes init container). Idempotent.
    Migrate(MigrateConfig),
}

/// What every `--batch-size` accepts: at least one event, and few enough that a
/// batch's transaction stays short.
fn batch_size_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=100_000)
}

/// Settings of `projection run`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub process: ProcessConfig,
    #[command(flatten)]
    pub health: HealthConfig,
    /// Most events the live projector applies in one transaction.
    #[arg(long, env = "PROJECTION_BATCH_SIZE", default_value_t = 1_000, value_parser = batch_size_range())]
    pub batch_size: u32,
    /// How often the event log is read when no events.appended wake-up arrives, in milliseconds.
    #[arg(long, env = "PROJECTION_POLL_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_interval_ms: u64,
    /// The shortest time between two reads of the log while caught up, in
    /// milliseconds: appends that arrive meanwhile are applied as one batch (fewer
    /// transactions under load), and the read models lag by up to this much more.
    #[arg(long, env = "PROJECTION_MIN_READ_INTERVAL_MS", default_value_t = 20)]
    pub min_read_interval_ms: u64,
    /// How often a stand-by replica tries to become the writer, in milliseconds.
    #[arg(long, env = "PROJECTION_STANDBY_POLL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub standby_poll_ms: u64,
    /// First pause after a projection failure, in milliseconds (doubled on each failure
    /// in a row, up to 30 s).
    #[arg(long, env = "PROJECTION_RETRY_DELAY_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_delay_ms: u64,
    /// Most queries this replica answers at once.
    #[arg(long, env = "PROJECTION_QUERY_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub query_concurrency: u16,
}

/// Settings of `projection replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Events read and applied per transaction.
    #[arg(long, env = "PROJECTION_REPLAY_BATCH_SIZE", default_value_t = 5_000, value_parser = batch_size_range())]
    pub batch_size: u32,
    /// How progress is shown on stderr: a bar on a terminal and plain lines otherwise (auto), or as asked.
    #[arg(long, env = "PROJECTION_PROGRESS", value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

impl ReplayConfig {
    pub fn options(&self) -> ReplayOptions {
        ReplayOptions {
            batch_size: self.batch_size,
            progress: self.progress,
        }
    }
}

/// Settings of `projection migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

/// Settings of `projection verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Events read per query while folding the log.
    #[arg(long, env = "PROJECTION_VERIFY_BATCH_SIZE", default_value_t = 5_000, value_parser = batch_size_range())]
    pub batch_size: u32,
    /// Most differences printed (all are counted).
    #[arg(long, env = "PROJECTION_VERIFY_MAX_DIFFERENCES", default_value_t = 50)]
    pub max_differences: usize,
}

impl VerifyConfig {
    pub fn options(&self) -> VerifyOptions {
        VerifyOptions {
            batch_size: self.batch_size,
            max_differences: self.max_differences,
        }
    }
}

/// A built, not yet running, projection replica.
#[derive(Debug)]
pub struct App {
    config: Config,
    store: EventStore,
    reader: Reader,
    sql: Arc<schema::Sql>,
    bus: async_nats::Client,
    subscribers: Vec<async_nats::Subscriber>,
}

impl App {
    /// Connects to Postgres (running the event log's migrations and creating the live
    /// read model tables if missing) and NATS, and subscribes to the queries.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = config.database.open_event_store().await?;
        ensure_live_tables(store.pool())
            .await
            .context("failed to create the read model tables")?;
        let sql = Arc::new(schema::Sql::for_schema(schema::LIVE_SCHEMA));
        let reader = Reader::new(store.pool().clone(), Arc::clone(&sql));

        let bus = config.nats.connect(SERVICE_NAME).await?;
        let subjects = config.nats.subjects();
        let subscribers = queries::subscribe(&bus, &subjects)
            .await
            .context("failed to subscribe to the queries")?;
        // Once the server has the subscriptions, a query sent after build() returns
        // reaches this replica.
        platform::bus::await_subscriptions(&bus, NATS_READY_TIMEOUT, "queries").await;
        Ok(Self {
            config,
            store,
            reader,
            sql,
            bus,
            subscribers,
        })
    }

    /// Answers queries from the live read models (the same code the NATS handlers run).
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The pool on the event log's and read models' database.
    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Projects (while this replica holds the writer lock) and answers queries until
    /// `shutdown` is cancelled, then finishes the batch and queries in flight.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = &self.config;
        platform::health::spawn(config.health, self.bus.clone(), shutdown.child_token()).await?;
        let subjects = config.nats.subjects();
        let writer = projector::Writer {
            pool: self.store.pool().clone(),
            store: self.store,
            sql: self.sql,
            bus: self.bus.clone(),
            subjects: subjects.clone(),
            settings: projector::WriterSettings {
                batch_size: config.batch_size,
                standby_poll: Duration::from_millis(config.standby_poll_ms),
                retry_delay: Duration::from_millis(config.retry_delay_ms),
                poll_interval: Duration::from_millis(config.poll_interval_ms),
                min_read_interval: Duration::from_millis(config.min_read_interval_ms),
            },
        };
        let writer = tokio::spawn(writer.run(shutdown.child_token()));
        queries::serve(
            self.reader,
            self.bus.clone(),
            subjects,
            self.subscribers,
            usize::from(config.query_concurrency),
            shutdown.child_token(),
        )
        .await;
        writer.await.context("the projector task failed")?;
        if let Err(error) = self.bus.flush().await {
            tracing::debug!(%error, "failed to flush nats on shutdown");
        }
        Ok(())
    }
}

/// Creates the live schema and tables if missing (under the swap lock, so replicas
/// starting together and a replay's swap do not race).
pub async fn ensure_live_tables(pool: &PgPool) -> Result<(), ProjectionError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    schema::xact_lock(&mut tx, schema::SWAP_LOCK).await?;
    schema::create_tables(&mut tx, schema::LIVE_SCHEMA).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_parse_and_run_is_the_default() {
        let run = Cli::try_parse_from(["projection", "--batch-size", "10"])
            .unwrap()
            .into_command();
        assert!(matches!(run, Command::Run(config) if config.batch_size == 10));
        let run = Cli::try_parse_from(["projection", "run", "--query-concurrency", "3"])
            .unwrap()
            .into_command();
        assert!(matches!(run, Command::Run(config) if config.query_concurrency == 3));
        let replay = Cli::try_parse_from([
            "projection",
            "replay",
            "--batch-size",
            "7",
            "--progress",
            "lines",
        ])
        .unwrap()
        .into_command();
        assert!(matches!(
            replay,
            Command::Replay(config) if config.batch_size == 7 && config.progress == ProgressMode::Lines
        ));
        let migrate = Cli::try_parse_from(["projection", "migrate"])
            .unwrap()
            .into_command();
        assert!(matches!(migrate, Command::Migrate(_)));
        let verify = Cli::try_parse_from(["projection", "verify", "--max-differences", "5"])
            .unwrap()
            .into_command();
        assert!(matches!(verify, Command::Verify(config) if config.max_differences == 5));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Cli::try_parse_from(["projection", "--batch-size", "0"]).is_err());
        assert!(Cli::try_parse_from(["projection", "replay", "--progress", "loud"]).is_err());
        assert!(Cli::try_parse_from(["projection", "rebuild"]).is_err());
    }
}
