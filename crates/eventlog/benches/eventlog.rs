//! Event store benchmark: append rates against a plain-INSERT floor, and replay rate.
//!
//! `make bench-eventlog` (= `cargo bench -p eventlog --bench eventlog`). Runs against the
//! local Postgres in a fresh database. Every figure is printed beside its floor: the
//! same rows written by plain INSERTs with the same commit pattern into a table with
//! no constraints beyond its primary key, or read back by plain position order, so the
//! ratio is what the event store's guarantees cost.
//!
//! Sizes: `BENCH_APPENDS` single-event appends per scenario (default 4000),
//! `BENCH_REPLAY_EVENTS` events replayed (default 1,000,000).

use std::time::Instant;

use eventlog::{Checkpoint, EventMetadata, EventStore, ExpectedVersion, NewEvent};
use futures::StreamExt;
use proto_schemas::events::TaskEvent;
use proto_schemas::{EventId, TaskNumber};
use sqlx::PgPool;
use testkit::TestDatabase;
use uuid::Uuid;

const FLOOR_TABLE: &str = "CREATE TABLE floor_events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id uuid NOT NULL, stream_id text NOT NULL, stream_version bigint NOT NULL,
    event_type text NOT NULL, schema_version integer NOT NULL, payload jsonb NOT NULL,
    metadata jsonb NOT NULL, causation_id uuid, correlation_id uuid,
    recorded_at timestamptz NOT NULL DEFAULT now())";

const FLOOR_INSERT_BATCH: &str = "INSERT INTO floor_events (event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, causation_id, correlation_id) \
     SELECT e.event_id, $1, e.ord, e.event_type, e.schema_version, e.payload, e.metadata, \
            e.causation_id, e.correlation_id \
     FROM unnest($2::uuid[], $3::text[], $4::int4[], $5::jsonb[], $6::jsonb[], $7::uuid[], \
                 $8::uuid[]) WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, \
                 metadata, causation_id, correlation_id, ord)";

const FLOOR_INSERT_ONE: &str = "INSERT INTO floor_events (event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, causation_id, correlation_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sample_event(n: u32) -> NewEvent {
    let event = TaskEvent::TaskAdded {
        task_id: TaskNumber(n),
        title: format!("Buy groceries for the week, item {n}"),
        description: "Milk, eggs, bread and coffee".into(),
    };
    let metadata = EventMetadata {
        causation_id: Some(Uuid::now_v7()),
        correlation_id: Some(Uuid::now_v7()),
        user_id: Some("bench-user".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    };
    NewEvent::new(EventId::new(), &event, metadata)
}

async fn floor_insert(pool: &PgPool, stream: &str, events: &[NewEvent]) {
    if let [event] = events {
        sqlx::query(FLOOR_INSERT_ONE)
            .bind(event.event_id.as_uuid())
            .bind(stream)
            .bind(1_i64)
            .bind(&event.encoded.event_type)
            .bind(event.encoded.schema_version as i32)
            .bind(&event.encoded.payload)
            .bind(serde_json::to_value(&event.metadata).unwrap())
            .bind(event.metadata.causation_id)
            .bind(event.metadata.correlation_id)
            .execute(pool)
            .await
            .unwrap();
        return;
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id.as_uuid()).collect();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e.encoded.event_type.as_str())
        .collect();
    let versions: Vec<i32> = events
        .iter()
        .map(|e| e.encoded.schema_version as i32)
        .collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.encoded.payload).collect();
    let metadata: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(&e.metadata).unwrap())
        .collect();
    let causations: Vec<Option<Uuid>> = events.iter().map(|e| e.metadata.causation_id).collect();
    let correlations: Vec<Option<Uuid>> =
        events.iter().map(|e| e.metadata.correlation_id).collect();
    sqlx::query(FLOOR_INSERT_BATCH)
        .bind(stream)
        .bind(&ids)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&causations)
        .bind(&correlations)
        .execute(pool)
        .await
        .unwrap();
}

/// Runs `writers` tasks, each writing `batches` batches of `batch_size` events to its
/// own stream, through the store (`floor == false`) or plain INSERTs; returns seconds.
async fn run_writes(
    store: &EventStore,
    floor: bool,
    writers: usize,
    batches: usize,
    batch_size: usize,
) -> f64 {
    // Events are built up front so that only the writes are timed.
    let work: Vec<Vec<Vec<NewEvent>>> = (0..writers)
        .map(|_| {
            (0..batches)
                .map(|_| (0..batch_size).map(|i| sample_event(i as u32)).collect())
                .collect()
        })
        .collect();
    let started = Instant::now();
    let tasks = work.into_iter().enumerate().map(|(writer, batches)| {
        let store = store.clone();
        tokio::spawn(async move {
            let stream = format!("bench-{}-{writer}", Uuid::now_v7());
            let mut version = 0u64;
            for batch in batches {
                if floor {
                    floor_insert(store.pool(), &stream, &batch).await;
                } else {
                    let outcome = store
                        .append(&stream, ExpectedVersion::Exact(version), &batch)
                        .await
                        .unwrap();
                    version = outcome.stream_version;
                }
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    started.elapsed().as_secs_f64()
}

struct Row {
    name: String,
    events: usize,
    ours: f64,
    floor: f64,
}

fn print_rows(rows: &[Row]) {
    println!(
        "\n{:<38} {:>9} {:>12} {:>14} {:>10}",
        "scenario", "events", "events/s", "floor ev/s", "vs floor"
    );
    for row in rows {
        println!(
            "{:<38} {:>9} {:>12.0} {:>14.0} {:>9.2}x",
            row.name,
            row.events,
            row.events as f64 / row.ours,
            row.events as f64 / row.floor,
            row.ours / row.floor,
        );
    }
    println!("(vs floor = time taken / floor's time taken; 1.00x = as fast as plain SQL)");
}

/// Fills the log with `count` events of 1,000-event streams, server-side.
async fn seed(pool: &PgPool, count: usize) {
    let chunk = 100_000;
    let mut done = 0;
    while done < count {
        let n = chunk.min(count - done);
        sqlx::query(
            "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, \
                                 payload, metadata, causation_id, correlation_id) \
             SELECT gen_random_uuid(), 'replay-' || (($1 + g) / 1000), (($1 + g) % 1000) + 1, \
                    'TaskAdded', 2, \
                    jsonb_build_object('task_id', (($1 + g) % 1000) + 1, \
                        'title', 'Buy groceries for the week, item ' || g, \
                        'description', 'Milk, eggs, bread and coffee'), \
                    '{\"user_id\": \"bench-user\"}'::jsonb, gen_random_uuid(), gen_random_uuid() \
             FROM generate_series(0, $2 - 1) AS g",
        )
        .bind(done as i64)
        .bind(n as i64)
        .execute(pool)
        .await
        .unwrap();
        done += n;
    }
    sqlx::query("VACUUM ANALYZE events")
        .execute(pool)
        .await
        .unwrap();
}

async fn replay(store: &EventStore) -> (usize, f64) {
    let started = Instant::now();
    let mut events = store.read_all_streaming(Checkpoint::START);
    let mut count = 0;
    while let Some(event) = events.next().await {
        std::hint::black_box(event.unwrap().decode::<TaskEvent>().unwrap());
        count += 1;
    }
    (count, started.elapsed().as_secs_f64())
}

/// The floor of a replay: one plain query in position order, streamed and decoded the
/// same way.
async fn replay_floor(pool: &PgPool) -> (usize, f64) {
    let started = Instant::now();
    let mut rows = sqlx::query_as::<_, (i64, String, i32, serde_json::Value, serde_json::Value)>(
        "SELECT position, event_type, schema_version, payload, metadata FROM events \
         ORDER BY position",
    )
    .fetch(pool);
    let mut count = 0;
    while let Some(row) = rows.next().await {
        let (_, event_type, version, payload, _) = row.unwrap();
        std::hint::black_box(
            <TaskEvent as proto_schemas::events::EventFamily>::decode(
                &event_type,
                version as u32,
                payload,
            )
            .unwrap(),
        );
        count += 1;
    }
    (count, started.elapsed().as_secs_f64())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let appends = env_number("BENCH_APPENDS", 4_000);
        let replay_events = env_number("BENCH_REPLAY_EVENTS", 1_000_000);
        let db = TestDatabase::create().await.unwrap();
        let store = EventStore::connect(&db.url, 20).await.unwrap();
        sqlx::query(FLOOR_TABLE)
            .execute(store.pool())
            .await
            .unwrap();
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync')",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        println!("eventlog benchmark on {} (postgres {settings:?})", db.name);

        let mut rows = Vec::new();
        for (writers, batch_size) in [(1, 1), (16, 1), (1, 100), (16, 100)] {
            let total_batches = (appends / batch_size).max(writers * 4);
            let batches = total_batches / writers;
            let events = writers * batches * batch_size;
            // Warm up both paths (connections, plans) before timing.
            run_writes(&store, false, writers, 2, batch_size).await;
            run_writes(&store, true, writers, 2, batch_size).await;
            let floor = run_writes(&store, true, writers, batches, batch_size).await;
            let ours = run_writes(&store, false, writers, batches, batch_size).await;
            let kind = if batch_size == 1 {
                "single-event".to_owned()
            } else {
                format!("{batch_size}-event batches")
            };
            rows.push(Row {
                name: format!("append {kind}, {writers} writer(s)"),
                events,
                ours,
                floor,
            });
        }
        print_rows(&rows);

        sqlx::query("TRUNCATE events")
            .execute(store.pool())
            .await
            .unwrap();
        let seeding = Instant::now();
        seed(store.pool(), replay_events).await;
        println!(
            "\nseeded {replay_events} events in {:.1}s",
            seeding.elapsed().as_secs_f64()
        );
        let (floor_count, floor) = replay_floor(store.pool()).await;
        let (count, ours) = replay(&store).await;
        assert_eq!(count, replay_events, "replay saw every event");
        assert_eq!(floor_count, replay_events);
        print_rows(&[Row {
            name: "replay: read_all_streaming + decode".into(),
            events: count,
            ours,
            floor,
        }]);
        let rate = count as f64 / ours;
        println!("\nreplay rate {rate:.0} events/s (target >= 200000)");
    });
}
