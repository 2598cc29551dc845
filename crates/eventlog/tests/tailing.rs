//! The log's tail never skips an event, however transactions interleave (invariant 4).
//!
//! Positions are handed out at insert time but transactions commit in another order.
//! A reader that followed `position` alone would pass a hole that a slow transaction
//! fills later, and never see that event. These tests make exactly that happen.

use std::collections::HashMap;
use std::time::Duration;

use eventlog::{Checkpoint, EventStore, ExpectedVersion, NewEvent, SubscribeOptions};
use futures::StreamExt;
use proto_schemas::events::TaskEvent;
use proto_schemas::{EventId, TaskNumber};
use testkit::TestDatabase;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use uuid::Uuid;

const INSERT_EVENT: &str = "INSERT INTO events (event_id, stream_id, stream_version, event_type, \
     schema_version, payload) VALUES ($1, $2, $3, 'TaskCompleted', 1, $4)";

async fn insert_raw(conn: &mut sqlx::PgConnection, stream: &str, version: i64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(INSERT_EVENT)
        .bind(id)
        .bind(stream)
        .bind(version)
        .bind(serde_json::json!({"task_id": version}))
        .execute(conn)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn an_event_committed_late_is_read_after_the_older_transaction_ends() {
    let db = TestDatabase::create().await.unwrap();
    let store = EventStore::connect(&db.url, 5).await.unwrap();

    // The slow transaction takes the lower position and stays open…
    let mut slow = store.pool().begin().await.unwrap();
    let slow_id = insert_raw(&mut slow, "slow", 1).await;
    // …while a fast one takes the next position and commits.
    let mut fast = store.pool().begin().await.unwrap();
    let fast_id = insert_raw(&mut fast, "fast", 1).await;
    fast.commit().await.unwrap();

    assert!(
        store
            .read_all(Checkpoint::START, 100)
            .await
            .unwrap()
            .is_empty(),
        "nothing may be read past a transaction that is still open"
    );
    slow.commit().await.unwrap();
    // Other tests' transactions on this Postgres may hold the horizon for a moment.
    let read: Vec<Uuid> =
        testkit::eventually(Duration::from_secs(10), "both events readable", || async {
            let events = store.read_all(Checkpoint::START, 100).await.unwrap();
            (events.len() == 2).then(|| events.iter().map(|e| e.event_id.as_uuid()).collect())
        })
        .await;
    assert_eq!(read, [slow_id, fast_id]);
}

/// Many writers in parallel transactions that stay open for random times, and one
/// tailer running all along: the tailer sees every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tail_sees_every_event_of_concurrent_writers_exactly_once() {
    const WRITERS: usize = 16;
    const TRANSACTIONS_PER_WRITER: usize = 40;

    let db = TestDatabase::create().await.unwrap();
    let store = EventStore::connect(&db.url, 40).await.unwrap();
    let (wake, wakeups) = mpsc::unbounded_channel();
    let options = SubscribeOptions {
        batch_size: 50,
        ..SubscribeOptions::default()
    };
    let mut tail = store.subscribe(
        Checkpoint::START,
        UnboundedReceiverStream::new(wakeups),
        options,
    );

    let writers = (0..WRITERS).map(|writer| {
        let store = store.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            let stream = format!("writer-{writer}");
            let mut written = Vec::new();
            let mut version = 0;
            for round in 0..TRANSACTIONS_PER_WRITER {
                if (writer + round) % 3 == 0 {
                    // Through the store's own append.
                    let events: Vec<NewEvent> = (0..2)
                        .map(|i| {
                            let event = TaskEvent::TaskCompleted {
                                task_id: TaskNumber(i),
                            };
                            NewEvent::new(EventId::new(), &event, Default::default())
                        })
                        .collect();
                    store
                        .append(&stream, ExpectedVersion::Exact(version), &events)
                        .await
                        .unwrap();
                    written.extend(events.iter().map(|e| e.event_id.as_uuid()));
                    version += 2;
                } else {
                    // A transaction that holds its positions while others commit.
                    let mut tx = store.pool().begin().await.unwrap();
                    for _ in 0..1 + round % 3 {
                        version += 1;
                        let version = i64::try_from(version).unwrap();
                        written.push(insert_raw(&mut tx, &stream, version).await);
                    }
                    let hold = (writer * 7 + round * 13) % 11;
                    tokio::time::sleep(Duration::from_millis(hold as u64)).await;
                    tx.commit().await.unwrap();
                }
                let _ = wake.send(());
            }
            written
        })
    });
    let mut expected: Vec<Uuid> = Vec::new();
    for writer in futures::future::join_all(writers).await {
        expected.extend(writer.unwrap());
    }

    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut last = Checkpoint::START;
    let mut count = 0;
    while count < expected.len() {
        let event = tokio::time::timeout(Duration::from_secs(30), tail.next())
            .await
            .unwrap_or_else(|_| panic!("tail stalled after {count} of {} events", expected.len()))
            .expect("the tail does not end")
            .expect("reads succeed");
        assert!(event.checkpoint() > last, "the tail goes forward only");
        last = event.checkpoint();
        *seen.entry(event.event_id.as_uuid()).or_default() += 1;
        count += 1;
    }
    // Nothing more (no duplicates) arrives once everything is seen.
    let extra = tokio::time::timeout(Duration::from_millis(700), tail.next()).await;
    assert!(extra.is_err(), "unexpected extra event: {extra:?}");

    assert_eq!(seen.len(), expected.len(), "every event seen");
    assert!(seen.values().all(|&n| n == 1), "each event seen once");
    assert!(expected.iter().all(|id| seen.contains_key(id)));
}
