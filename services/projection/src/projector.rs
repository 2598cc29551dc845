//! The live projector: the one writer of the live read models.
//!
//! Every replica runs this loop, but only the one holding the writer lock (a Postgres
//! session advisory lock on a connection of its own) projects; the others answer
//! queries and try the lock now and then, so one of them takes over within a poll
//! interval after the writer stops or dies (its session, and with it the lock, ends).
//!
//! The writer tails the log from the stored checkpoint with
//! [`eventlog::EventStore::subscribe`], woken by `events.appended` notices, and applies
//! whatever has arrived as one batch: one transaction that holds the swap lock (shared),
//! moves the checkpoint by compare-and-set and writes the rows (see
//! [`crate::store::apply_batch`]), all on the lock's own connection. If that
//! connection dies the transaction dies with it, so a writer that lost its lock can
//! never commit. When a replay swaps in rebuilt read models, the compare-and-set fails
//! and the writer carries on from the rebuilt checkpoint.

use std::sync::Arc;
use std::time::Duration;

use eventlog::{EventStore, StoredEvent, SubscribeOptions};
use futures::StreamExt as _;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::error::ProjectionError;
use crate::schema::{self, LIVE_SCHEMA, SWAP_LOCK, Sql, WRITER_LOCK};
use crate::store;

/// The longest pause between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the writer reads and waits.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    /// Most events applied in one transaction.
    pub batch_size: u32,
    /// How often a stand-by replica tries to take the writer lock.
    pub standby_poll: Duration,
    /// First pause after a failure (doubled on each failure in a row, up to 30 s).
    pub retry_delay: Duration,
    /// How often the log is read when no wake-up arrives.
    pub poll_interval: Duration,
    /// The shortest time between two reads of the log while caught up.
    pub min_read_interval: Duration,
}

/// Everything the writer needs.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub pool: PgPool,
    pub store: EventStore,
    pub sql: Arc<Sql>,
    pub bus: async_nats::Client,
    pub subjects: proto_schemas::Subjects,
    pub settings: WriterSettings,
}

impl Writer {
    /// Projects while this replica holds the writer lock, stands by while another
    /// does, and retries after failures, until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut pauses = self.pauses();
        while !shutdown.is_cancelled() {
            match self.hold_lock_and_project(&shutdown, &mut pauses).await {
                Ok(()) => break,
                Err(error) => {
                    // The schedule never runs out; the fallback only satisfies the type.
                    let pause = pauses.next().unwrap_or(MAX_BACKOFF);
                    tracing::error!(%error, retry_in = ?pause, "projecting the event log failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::info!("projector stopped");
    }

    /// The pauses between attempts after failures: the workspace's schedule from
    /// `retry_delay` up to [`MAX_BACKOFF`], for as long as the process runs, started
    /// afresh once a batch goes through.
    fn pauses(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder as _;

        platform::retry::exponential(self.settings.retry_delay, MAX_BACKOFF, 0)
            .without_max_times()
            .build()
    }

    async fn hold_lock_and_project(
        &self,
        shutdown: &CancellationToken,
        pauses: &mut backon::ExponentialBackoff,
    ) -> Result<(), ProjectionError> {
        // A connection of its own, never returned to the pool: the session lock lives
        // as long as it does.
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let result = async {
            if !self.wait_for_lock(&mut conn, shutdown).await? {
                return Ok(());
            }
            tracing::info!("took the writer lock, projecting the event log");
            self.project(&mut conn, shutdown, pauses).await
        }
        .await;
        // Closing ends the session, which releases the lock for a stand-by.
        if let Err(error) = conn.close().await {
            tracing::debug!(%error, "failed to close the writer connection cleanly");
        }
        result
    }

    /// Waits until this session holds the writer lock (true) or `shutdown` (false).
    async fn wait_for_lock(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<bool, ProjectionError> {
        let mut said = false;
        loop {
            if schema::try_session_lock(conn, WRITER_LOCK).await? {
                return Ok(true);
            }
            if !said {
                tracing::info!(
                    "another replica writes the read models, answering queries and standing by"
                );
                said = true;
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.standby_poll) => {}
                () = shutdown.cancelled() => return Ok(false),
            }
        }
    }

    /// Tails the log and applies it in batches until `shutdown`.
    async fn project(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
        pauses: &mut backon::ExponentialBackoff,
    ) -> Result<(), ProjectionError> {
        loop {
            // (Re)start from the stored checkpoint: at start-up, and after a replay
            // swapped in read models with a checkpoint of their own.
            let stored = {
                let mut tx = conn.begin().await?;
                schema::xact_lock(&mut tx, SWAP_LOCK).await?;
                // Recreates the live tables if someone dropped them; a replay's swap
                // replaces them either way.
                schema::create_tables(&mut tx, LIVE_SCHEMA).await?;
                let stored = store::read_checkpoint(&mut tx, &self.sql).await?;
                tx.commit().await?;
                stored
            };
            stored.check_layout()?;
            tracing::info!(
                transaction_id = stored.checkpoint.transaction_id,
                position = stored.checkpoint.position,
                events_applied = stored.events_applied,
                "projecting from the stored checkpoint"
            );
            let wakeups = match platform::bus::appended_wakeups(&self.bus, &self.subjects).await {
                Ok(wakeups) => wakeups.boxed(),
                Err(error) => {
                    tracing::warn!(%error, "no events.appended wake-ups, polling the log only");
                    futures::stream::pending().boxed()
                }
            };
            let options = SubscribeOptions {
                batch_size: self.settings.batch_size,
                poll_interval: self.settings.poll_interval,
                min_read_interval: self.settings.min_read_interval,
                ..SubscribeOptions::default()
            };
            let batch_size = usize::try_from(self.settings.batch_size)
                .unwrap_or(1_000)
                .max(1);
            let mut events = self
                .store
                .subscribe(stored.checkpoint, wakeups, options)
                .ready_chunks(batch_size);
            let mut at = stored.checkpoint;
            loop {
                let chunk = tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    chunk = events.next() => chunk,
                };
                // The subscription never ends while it is held; treat an end as a failure.
                let Some(chunk) = chunk else {
                    return Err(ProjectionError::SubscriptionEnded);
                };
                // A failed read is reported and retried by the subscription itself,
                // from where it stood, so dropping the error loses no event.
                let batch: Vec<StoredEvent> = chunk
                    .into_iter()
                    .filter_map(|item| {
                        item.map_err(|error| tracing::debug!(%error, "event log read failed"))
                            .ok()
                    })
                    .collect();
                if batch.is_empty() {
                    continue;
                }
                let mut tx = conn.begin().await?;
                schema::xact_lock_shared(&mut tx, SWAP_LOCK).await?;
                match store::apply_batch(&mut tx, &self.sql, at, &batch).await {
                    Ok(applied) => {
                        tx.commit().await?;
                        tracing::debug!(
                            events = batch.len(),
                            events_applied = applied.events_applied,
                            position = applied.checkpoint.position,
                            "applied a batch"
                        );
                        at = applied.checkpoint;
                        *pauses = self.pauses();
                        trace_projected(&batch);
                    }
                    Err(ProjectionError::CheckpointMoved { .. }) => {
                        tx.rollback().await?;
                        tracing::info!(
                            "the read models were replaced (replay), continuing from their checkpoint"
                        );
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
    }
}

/// Records each applied event in the trace of the chat turn (or command) that appended
/// it, from the W3C context stored in its metadata, so a turn's trace shows when its
/// events reached the read models. Replays do not do this: they are not part of a turn.
fn trace_projected(batch: &[StoredEvent]) {
    for event in batch {
        let Some(traceparent) = &event.metadata.traceparent else {
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", traceparent.as_str());
        if let Some(tracestate) = &event.metadata.tracestate {
            headers.insert("tracestate", tracestate.as_str());
        }
        let span = tracing::info_span!(
            "event_projected",
            stream = %event.stream_id,
            event_type = %event.event_type,
            position = event.position
        );
        platform::bus::follow_trace(&span, Some(&headers));
    }
}
