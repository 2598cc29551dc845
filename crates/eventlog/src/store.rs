//! [`EventStore`]: appends and reads against the `events` table.
//!
//! An append is one SQL statement (its own transaction unless the caller passes one):
//! it reads the stream's current version and inserts the batch only when that version
//! is the expected one. Two racing appenders both pass that check, and the unique
//! `(stream_id, stream_version)` constraint turns the loser into a conflict, so no
//! stream ever has two events at one version and nothing is silently merged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use sqlx::PgPool;
use sqlx::Row;
use sqlx::postgres::PgConnection;
use sqlx::postgres::{PgPoolOptions, PgRow};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::model::{
    AppendError, AppendOutcome, Checkpoint, EventMetadata, ExpectedVersion, NewEvent, StoreError,
    StoredEvent,
};

const EVENT_ID_KEY: &str = "events_event_id_key";
const STREAM_VERSION_KEY: &str = "events_stream_version_key";

/// `SELECT <the columns [`decode_row`] reads> FROM events <rest>`, as a static string.
macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT position, transaction_id::text::int8 AS transaction_id, event_id, stream_id, \
             stream_version, event_type, schema_version, payload, metadata, causation_id, \
             correlation_id, recorded_at FROM events ",
            $rest
        )
    };
}

const APPEND_SQL: &str = r#"
WITH current AS (
    SELECT coalesce(max(stream_version), 0) AS version FROM events WHERE stream_id = $1
)
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version,
                    payload, metadata, causation_id, correlation_id)
SELECT e.event_id, $1, current.version + e.ord, e.event_type, e.schema_version,
       e.payload, e.metadata, e.causation_id, e.correlation_id
FROM current,
     unnest($2::uuid[], $3::text[], $4::int4[], $5::jsonb[], $6::jsonb[], $7::uuid[], $8::uuid[])
         WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata,
                              causation_id, correlation_id, ord)
WHERE $9::int8 IS NULL OR current.version = $9::int8
ORDER BY e.ord
RETURNING position, stream_version
"#;

/// The event log on one Postgres database.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    /// Events read back by this store and its clones: see [`Self::events_read`].
    events_read: Arc<AtomicU64>,
}

impl EventStore {
    /// Connects by URL, then runs the embedded migrations: for tools and tests. Services
    /// open their pool from their `DatabaseConfig` and call [`Self::open`].
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(database_url)
            .await?;
        Self::open(pool).await
    }

    /// Wraps `pool` and runs the embedded migrations.
    pub async fn open(pool: PgPool) -> Result<Self, StoreError> {
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps a pool whose database is already migrated (or call [`Self::migrate`]).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            events_read: Arc::default(),
        }
    }

    /// How many events this store (and its clones) has read back by stream,
    /// causation or page of the log, not counting [`Self::read_all_streaming`]: what
    /// writers' loads cost, for checks that a load reads what it needs and no more.
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    fn decode_rows(&self, rows: &[PgRow]) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_read
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        rows.iter().map(decode_row).collect()
    }

    /// Creates or updates the `events` table. Other migrators (read models) share the
    /// database, so migrations this one doesn't know are not an error.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends `events` to `stream` if the stream is at `expected`.
    ///
    /// Idempotent by event id: when every event id is stored already, nothing is
    /// written and the stored outcome is returned (`already_stored`), even if the
    /// stream has moved on since.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, AppendError> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        append_on(&mut conn, stream, expected, events).await
    }

    /// The events of one stream, oldest first.
    pub async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_stream_after(stream, 0, None).await
    }

    /// The events of one stream after version `after`, oldest first, at most `limit`
    /// of them: a writer that knows the stream up to `after` reads only what is new.
    pub async fn read_stream_after(
        &self,
        stream: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = select_events!(
            "WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version LIMIT $3"
        );
        let rows = sqlx::query(sql)
            .bind(stream)
            .bind(to_sql_version(after))
            .bind(limit.map(i64::from))
            .fetch_all(&self.pool)
            .await?;
        self.decode_rows(&rows)
    }

    /// The latest snapshot of `stream` in the shape `state_schema`, with the stream
    /// version it was taken at.
    pub async fn load_snapshot(
        &self,
        stream: &str,
        state_schema: &str,
    ) -> Result<Option<(u64, serde_json::Value)>, StoreError> {
        let row: Option<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT stream_version, state FROM snapshots WHERE stream_id = $1 AND state_schema = $2",
        )
        .bind(stream)
        .bind(state_schema)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(version, state)| (to_version(version), state)))
    }

    /// Stores `state` as the snapshot of `stream` at `stream_version`, unless a newer
    /// one of the same shape is stored already.
    pub async fn save_snapshot(
        &self,
        stream: &str,
        state_schema: &str,
        stream_version: u64,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, state_schema, stream_version, state) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stream_id) DO UPDATE \
                SET state_schema = EXCLUDED.state_schema, \
                    stream_version = EXCLUDED.stream_version, \
                    state = EXCLUDED.state, taken_at = now() \
              WHERE snapshots.state_schema <> EXCLUDED.state_schema \
                 OR snapshots.stream_version < EXCLUDED.stream_version",
        )
        .bind(stream)
        .bind(state_schema)
        .bind(to_sql_version(stream_version))
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The version of the stream's last event (0 when the stream has none).
    pub async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let version: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1",
        )
        .bind(stream)
        .fetch_one(&self.pool)
        .await?;
        Ok(to_version(version))
    }

    /// The events caused by one command or request, in log order.
    pub async fn find_by_causation(
        &self,
        causation_id: Uuid,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = select_events!("WHERE causation_id = $1 ORDER BY position");
        let rows = sqlx::query(sql)
            .bind(causation_id)
            .fetch_all(&self.pool)
            .await?;
        self.decode_rows(&rows)
    }

    /// Up to `limit` events after `after`, in the log's reading order.
    ///
    /// Gap-free: only events of transactions older than every transaction still in
    /// flight are returned, so an event that commits later can never land behind a
    /// checkpoint a reader has already passed.
    pub async fn read_all(
        &self,
        after: Checkpoint,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = select_events!(
            // `events.` matters: the bare name would mean the int8 output column and
            // turn an index scan into a sort of the whole table.
            "WHERE (events.transaction_id, position) > ($1::int8::text::xid8, $2) \
               AND events.transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY events.transaction_id, position \
             LIMIT $3"
        );
        let rows = sqlx::query(sql)
            .bind(after.transaction_id)
            .bind(after.position)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        self.decode_rows(&rows)
    }

    /// Every event after `after` that is below the reading horizon now, streamed in
    /// reading order by one query: for replays and catch-ups of many events.
    ///
    /// Rows are decoded on a task of their own while the caller consumes earlier ones,
    /// so the database, the row decoding and the caller's work overlap. The query holds
    /// one snapshot until it ends; a tail that must follow new events goes on with
    /// [`Self::subscribe`] from the last checkpoint.
    pub fn read_all_streaming(
        &self,
        after: Checkpoint,
    ) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + Unpin + 'static {
        const CHUNK: usize = 512;
        let (sender, receiver) = mpsc::channel::<Vec<Result<StoredEvent, StoreError>>>(8);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let sql = select_events!(
                // `events.` matters here too: see `read_all`.
                "WHERE (events.transaction_id, position) > ($1::int8::text::xid8, $2) \
                   AND events.transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY events.transaction_id, position"
            );
            let mut rows = sqlx::query(sql)
                .bind(after.transaction_id)
                .bind(after.position)
                .fetch(&pool);
            let mut chunk = Vec::with_capacity(CHUNK);
            while let Some(row) = rows.next().await {
                let failed = row.is_err();
                chunk.push(
                    row.map_err(StoreError::from)
                        .and_then(|row| decode_row(&row)),
                );
                if (chunk.len() == CHUNK || failed)
                    && sender
                        .send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                        .await
                        .is_err()
                {
                    return;
                }
                if failed {
                    return;
                }
            }
            if !chunk.is_empty() {
                let _ = sender.send(chunk).await;
            }
        });
        ReceiverStream::new(receiver).flat_map(futures::stream::iter)
    }

    /// The number of events in the log and the highest position (for progress and ETA).
    pub async fn size(&self) -> Result<(u64, i64), StoreError> {
        let (count, max_position): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), max(position) FROM events")
                .fetch_one(&self.pool)
                .await?;
        Ok((to_version(count), max_position.unwrap_or(0)))
    }
}

/// [`EventStore::append`] on one connection in autocommit mode: the follow-up reads after
/// a constraint violation need a connection whose transaction was not aborted by it.
async fn append_on(
    conn: &mut PgConnection,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, AppendError> {
    if events.is_empty() {
        return Err(AppendError::Empty);
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id.as_uuid()).collect();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e.encoded.event_type.as_str())
        .collect();
    let versions: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.encoded.schema_version).unwrap_or(i32::MAX))
        .collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.encoded.payload).collect();
    let metadata: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(&e.metadata).expect("metadata serializes"))
        .collect();
    let causations: Vec<Option<Uuid>> = events.iter().map(|e| e.metadata.causation_id).collect();
    let correlations: Vec<Option<Uuid>> =
        events.iter().map(|e| e.metadata.correlation_id).collect();
    let expected_version = expected
        .as_version()
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX));

    loop {
        let result = sqlx::query(APPEND_SQL)
            .bind(stream)
            .bind(&ids)
            .bind(&types)
            .bind(&versions)
            .bind(&payloads)
            .bind(&metadata)
            .bind(&causations)
            .bind(&correlations)
            .bind(expected_version)
            .fetch_all(&mut *conn)
            .await;
        match result {
            Ok(rows) if !rows.is_empty() => {
                let last = rows.last().expect("non-empty");
                return Ok(AppendOutcome {
                    stream_version: to_version(last.get("stream_version")),
                    last_position: last.get("position"),
                    already_stored: false,
                });
            }
            // The version check failed: a retry of an append that already happened,
            // or a real conflict.
            Ok(_) => return stored_or_conflict(conn, stream, expected, &ids).await,
            Err(error) => match violated_constraint(&error) {
                Some(EVENT_ID_KEY) => {
                    return stored_or_conflict(conn, stream, expected, &ids).await;
                }
                // Lost a race for the same version. With `Any` that is not a conflict:
                // go again on top of the winner.
                Some(STREAM_VERSION_KEY) if expected == ExpectedVersion::Any => continue,
                Some(STREAM_VERSION_KEY) => {
                    return stored_or_conflict(conn, stream, expected, &ids).await;
                }
                _ => return Err(error.into()),
            },
        }
    }
}

async fn stored_or_conflict(
    conn: &mut PgConnection,
    stream: &str,
    expected: ExpectedVersion,
    ids: &[Uuid],
) -> Result<AppendOutcome, AppendError> {
    let stored: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT stream_version, position FROM events WHERE event_id = ANY($1) ORDER BY position",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if stored.len() == ids.len() {
        let (stream_version, last_position) = *stored.last().expect("ids are not empty");
        return Ok(AppendOutcome {
            stream_version: to_version(stream_version),
            last_position,
            already_stored: true,
        });
    }
    if !stored.is_empty() {
        return Err(AppendError::PartiallyStored {
            stream: stream.to_owned(),
        });
    }
    let actual: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1",
    )
    .bind(stream)
    .fetch_one(&mut *conn)
    .await?;
    Err(AppendError::Conflict {
        stream: stream.to_owned(),
        expected,
        actual: to_version(actual),
    })
}

fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    error.as_database_error().and_then(|db| db.constraint())
}

fn to_version(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_sql_version(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

fn decode_row(row: &PgRow) -> Result<StoredEvent, StoreError> {
    let event_id: Uuid = row.try_get("event_id")?;
    let corrupt = |reason: String| StoreError::Corrupt { event_id, reason };
    // Straight from the row's JSON into the struct: no intermediate `Value`.
    let sqlx::types::Json(mut metadata): sqlx::types::Json<EventMetadata> =
        row.try_get("metadata")?;
    metadata.causation_id = row.try_get("causation_id")?;
    metadata.correlation_id = row.try_get("correlation_id")?;
    let schema_version: i32 = row.try_get("schema_version")?;
    let recorded_at: DateTime<Utc> = row.try_get("recorded_at")?;
    Ok(StoredEvent {
        position: row.try_get("position")?,
        transaction_id: row.try_get("transaction_id")?,
        event_id: event_id.into(),
        stream_id: row.try_get("stream_id")?,
        stream_version: to_version(row.try_get("stream_version")?),
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(format!("schema version {schema_version}")))?,
        payload: row.try_get("payload")?,
        metadata,
        recorded_at,
    })
}
