//! `projection replay`: rebuilds every read model from the first event into a fresh
//! schema, then swaps it in for the live one atomically, while the live read models
//! keep answering queries (and the live writer keeps projecting) until the swap.
//!
//! 1. Under the replay lock (one replay at a time), schemas left by replays that died
//!    are dropped and a new `projection_build_<millis>` schema is created.
//! 2. The whole log is applied to it in large batches, the next batch being read
//!    while the previous one is written. Batches commit asynchronously
//!    (`synchronous_commit = off`): the build is invisible until the swap, whose own
//!    synchronous commit makes everything before it durable.
//! 3. The swap transaction takes the swap lock, which waits for the live writer's
//!    batch in flight and holds off its next one; applies the events that arrived
//!    meanwhile; renames `projection` away and the build to `projection`; commits.
//!    Queries see the old read models up to that commit and the new ones after it.
//!    The live writer's next batch finds a checkpoint it did not write, so it reloads
//!    it and continues from the rebuilt read models.

use std::time::{Duration, Instant};

use eventlog::{Checkpoint, EventStore, StoredEvent};
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::error::ProjectionError;
use crate::progress::{Progress, ProgressMode};
use crate::schema::{
    self, BUILD_SCHEMA_PREFIX, LIVE_SCHEMA, OLD_SCHEMA_PREFIX, REPLAY_LOCK, SWAP_LOCK, Sql,
};
use crate::store;

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Events read and applied per transaction.
    pub batch_size: u32,
    pub progress: ProgressMode,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            progress: ProgressMode::Off,
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySummary {
    /// Events applied to the rebuilt read models.
    pub events: u64,
    /// From the first read to the swap's commit.
    pub elapsed: Duration,
    /// The checkpoint the rebuilt read models went live with.
    pub checkpoint: Checkpoint,
    /// Whether live read models existed and were replaced (false on a first build).
    pub replaced: bool,
}

impl ReplaySummary {
    pub fn events_per_second(&self) -> f64 {
        crate::progress::per_second(self.events, self.elapsed)
    }
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} events in {:.1} s ({} events/s) and {} the live read models at checkpoint \
             (transaction {}, position {})",
            crate::progress::thousands(self.events),
            self.elapsed.as_secs_f64(),
            crate::progress::thousands(self.events_per_second().round() as u64),
            if self.replaced { "replaced" } else { "created" },
            self.checkpoint.transaction_id,
            self.checkpoint.position,
        )
    }
}

/// Rebuilds the read models from the whole log and swaps them in.
pub async fn replay(
    pool: &PgPool,
    options: &ReplayOptions,
) -> Result<ReplaySummary, ProjectionError> {
    // The replay lock is a session lock: it needs a connection that is never returned
    // to the pool still holding it.
    let mut lock = PgConnection::connect_with(&pool.connect_options()).await?;
    if !schema::try_session_lock(&mut lock, REPLAY_LOCK).await? {
        return Err(ProjectionError::ReplayRunning);
    }
    let result = replay_locked(pool, options).await;
    if let Err(error) = lock.close().await {
        tracing::debug!(%error, "failed to close the replay lock connection cleanly");
    }
    result
}

async fn replay_locked(
    pool: &PgPool,
    options: &ReplayOptions,
) -> Result<ReplaySummary, ProjectionError> {
    let store = EventStore::from_pool(pool.clone());
    store.migrate().await?;
    let mut conn = pool.acquire().await?;
    // Nobody else builds while this replay holds the lock, so these are leftovers.
    for leftover in schema::leftover_schemas(&mut conn).await? {
        tracing::info!(schema = %leftover, "dropping a schema left by an earlier replay");
        schema::drop_schema(&mut conn, &leftover).await?;
    }
    let stamp = chrono::Utc::now().timestamp_millis();
    let build = format!("{BUILD_SCHEMA_PREFIX}{stamp}");
    schema::create_tables(&mut conn, &build).await?;
    let sql = Sql::for_schema(&build);
    let result = build_and_swap(&mut conn, &store, &sql, &build, stamp, options).await;
    if result.is_err() {
        // Best effort: the next replay drops it anyway.
        if let Err(error) = schema::drop_schema(&mut conn, &build).await {
            tracing::warn!(%error, schema = %build, "failed to drop the unfinished build schema");
        }
    }
    result
}

async fn build_and_swap(
    conn: &mut PgConnection,
    store: &EventStore,
    sql: &Sql,
    build: &str,
    stamp: i64,
    options: &ReplayOptions,
) -> Result<ReplaySummary, ProjectionError> {
    let batch_size = options.batch_size.max(1);
    let full = usize::try_from(batch_size).unwrap_or(usize::MAX);
    let (expected, _) = store.size().await?;
    let mut progress = Progress::new(options.progress, expected);
    tracing::info!(schema = %build, events = expected, "replaying the event log");
    let started = Instant::now();
    let mut at = Checkpoint::START;
    let mut done = 0u64;

    // Bulk: read batch n + 1 while batch n is written.
    let mut next = Some(spawn_read(store, at, batch_size));
    while let Some(reading) = next.take() {
        let batch = reading.await.map_err(|_| ProjectionError::Interrupted)??;
        let Some(last) = batch.last() else { break };
        let after = last.checkpoint();
        if batch.len() >= full {
            next = Some(spawn_read(store, after, batch_size));
        }
        let mut tx = conn.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        store::apply_batch(&mut tx, sql, at, &batch).await?;
        tx.commit().await?;
        at = after;
        done += batch.len() as u64;
        progress.update(done);
    }

    // Swap: catch up with what arrived meanwhile and go live, in one transaction.
    let mut tx = conn.begin().await?;
    schema::xact_lock(&mut tx, SWAP_LOCK).await?;
    loop {
        let batch = store.read_all(at, batch_size).await?;
        let Some(last) = batch.last() else { break };
        let after = last.checkpoint();
        store::apply_batch(&mut tx, sql, at, &batch).await?;
        at = after;
        done += batch.len() as u64;
        progress.update(done);
        if batch.len() < full {
            break;
        }
    }
    let replaced = schema::schema_exists(&mut tx, LIVE_SCHEMA).await?;
    let old = format!("{OLD_SCHEMA_PREFIX}{stamp}");
    if replaced {
        schema::rename_schema(&mut tx, LIVE_SCHEMA, &old).await?;
    }
    schema::rename_schema(&mut tx, build, LIVE_SCHEMA).await?;
    tx.commit().await?;
    let elapsed = started.elapsed();
    progress.finish(done);
    if replaced {
        // The old generation is unreachable now; dropping it waits for the queries
        // that still read it.
        if let Err(error) = schema::drop_schema(conn, &old).await {
            tracing::warn!(%error, schema = %old, "failed to drop the replaced read models; the next replay drops them");
        }
    }
    let summary = ReplaySummary {
        events: done,
        elapsed,
        checkpoint: at,
        replaced,
    };
    tracing::info!(events = done, elapsed = ?elapsed, events_per_second = summary.events_per_second().round(), "replay swapped in");
    Ok(summary)
}

fn spawn_read(
    store: &EventStore,
    after: Checkpoint,
    limit: u32,
) -> tokio::task::JoinHandle<Result<Vec<StoredEvent>, eventlog::StoreError>> {
    let store = store.clone();
    tokio::spawn(async move { store.read_all(after, limit).await })
}
