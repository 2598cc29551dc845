//! The event store against a real Postgres: appends, conflicts, idempotency, reads.

use eventlog::{AppendError, Checkpoint, EventMetadata, EventStore, ExpectedVersion, NewEvent};
use proto_schemas::events::TaskEvent;
use proto_schemas::{EventId, TaskNumber};
use std::time::Duration;

use futures::StreamExt;
use testkit::TestDatabase;

use uuid::Uuid;

async fn store() -> (TestDatabase, EventStore) {
    let db = TestDatabase::create().await.unwrap();
    let store = EventStore::connect(&db.url, 20).await.unwrap();
    (db, store)
}

/// A task added with `title` and no description.
fn task_added(n: u32, title: &str) -> TaskEvent {
    TaskEvent::TaskAdded {
        task_id: TaskNumber(n),
        title: title.to_owned(),
        description: String::new(),
    }
}

/// Task `n` added, titled "task {n}", ready to append.
fn added(n: u32) -> NewEvent {
    NewEvent::new(
        EventId::new(),
        &task_added(n, &format!("task {n}")),
        EventMetadata::default(),
    )
}

/// Waits until `count` events are below the reading horizon. Transactions of other
/// tests on the same Postgres (any database) hold the horizon back for a moment.
async fn all_events_readable(store: &EventStore, count: usize) -> Vec<eventlog::StoredEvent> {
    testkit::eventually(Duration::from_secs(10), "events readable", || async {
        let events = store.read_all(Checkpoint::START, 1_000).await.unwrap();
        (events.len() == count).then_some(events)
    })
    .await
}

#[tokio::test]
async fn appends_and_reads_a_stream_in_order_with_metadata() {
    let (_db, store) = store().await;
    let causation = Uuid::now_v7();
    let mut first = added(1);
    first.metadata = EventMetadata {
        causation_id: Some(causation),
        correlation_id: Some(Uuid::now_v7()),
        user_id: Some("alice".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    };
    let outcome = store
        .append(
            "tasks-alice",
            ExpectedVersion::NoStream,
            &[first.clone(), added(2)],
        )
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, 2);
    assert!(!outcome.already_stored);

    let events = store.read_stream("tasks-alice").await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(events[0].event_id, first.event_id);
    assert_eq!(events[0].metadata, first.metadata);
    assert_eq!(events[0].schema_version, 2);
    assert_eq!(
        events[1].decode::<TaskEvent>().unwrap(),
        task_added(2, "task 2")
    );
    assert_eq!(store.stream_version("tasks-alice").await.unwrap(), 2);
    assert_eq!(store.stream_version("tasks-nobody").await.unwrap(), 0);
    let caused = store.find_by_causation(causation).await.unwrap();
    assert_eq!(caused.len(), 1);
    assert_eq!(caused[0].event_id, first.event_id);
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict_and_writes_nothing() {
    let (_db, store) = store().await;
    store
        .append("s", ExpectedVersion::NoStream, &[added(1)])
        .await
        .unwrap();

    let stale = store
        .append("s", ExpectedVersion::NoStream, &[added(2)])
        .await;
    assert!(
        matches!(stale, Err(AppendError::Conflict { actual: 1, .. })),
        "{stale:?}"
    );
    let ahead = store
        .append("s", ExpectedVersion::Exact(5), &[added(2)])
        .await;
    assert!(
        matches!(ahead, Err(AppendError::Conflict { actual: 1, .. })),
        "{ahead:?}"
    );
    assert_eq!(store.read_stream("s").await.unwrap().len(), 1);

    let next = store
        .append("s", ExpectedVersion::Exact(1), &[added(2)])
        .await
        .unwrap();
    assert_eq!(next.stream_version, 2);
}

#[tokio::test]
async fn re_appending_stored_event_ids_returns_the_first_outcome_and_writes_nothing() {
    let (_db, store) = store().await;
    let batch = [added(1), added(2)];
    let first = store
        .append("s", ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    store
        .append("s", ExpectedVersion::Exact(2), &[added(3)])
        .await
        .unwrap();

    // The retry carries the same ids and the same (now stale) expectation.
    let retry = store
        .append("s", ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    assert!(retry.already_stored);
    assert_eq!(retry.stream_version, first.stream_version);
    assert_eq!(retry.last_position, first.last_position);
    let retry_any = store
        .append("s", ExpectedVersion::Any, &batch)
        .await
        .unwrap();
    assert!(retry_any.already_stored);
    assert_eq!(store.read_stream("s").await.unwrap().len(), 3);

    let mixed = store
        .append("s", ExpectedVersion::Any, &[batch[0].clone(), added(9)])
        .await;
    assert!(
        matches!(mixed, Err(AppendError::PartiallyStored { .. })),
        "{mixed:?}"
    );
    assert_eq!(store.read_stream("s").await.unwrap().len(), 3);
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, &[]).await,
        Err(AppendError::Empty)
    ));
}

#[tokio::test]
async fn racing_appends_with_one_expected_version_let_exactly_one_win() {
    let (_db, store) = store().await;
    let attempts = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append("race", ExpectedVersion::NoStream, &[added(i)])
                .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let wins = results
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Err(AppendError::Conflict { .. })))
        .count();
    assert_eq!((wins, conflicts), (1, 15));
    assert_eq!(store.read_stream("race").await.unwrap().len(), 1);
}

#[tokio::test]
async fn racing_appends_with_any_version_all_land_on_consecutive_versions() {
    let (_db, store) = store().await;
    let appends = (0..32).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.append("any", ExpectedVersion::Any, &[added(i)]).await })
    });
    for result in futures::future::join_all(appends).await {
        result.unwrap().unwrap();
    }
    let versions: Vec<u64> = store
        .read_stream("any")
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=32).collect::<Vec<_>>());
}

#[tokio::test]
async fn old_schema_versions_are_upcast_on_read() {
    let (_db, store) = store().await;
    // A TaskAdded written by an older release, before descriptions existed.
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload) \
         VALUES ($1, 'tasks-old', 1, 'TaskAdded', 1, '{\"task_id\": 1, \"title\": \"Buy milk\"}')",
    )
    .bind(Uuid::now_v7())
    .execute(store.pool())
    .await
    .unwrap();
    let events = all_events_readable(&store, 1).await;
    assert_eq!(
        events[0].decode::<TaskEvent>().unwrap(),
        task_added(1, "Buy milk")
    );
}

#[tokio::test]
async fn read_all_pages_through_the_log_in_order() {
    let (_db, store) = store().await;
    for stream in ["a", "b", "c"] {
        let batch: Vec<_> = (1..=5).map(added).collect();
        store
            .append(stream, ExpectedVersion::NoStream, &batch)
            .await
            .unwrap();
    }
    all_events_readable(&store, 15).await;
    let mut checkpoint = Checkpoint::START;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all(checkpoint, 4).await.unwrap();
        let Some(last) = page.last() else { break };
        checkpoint = last.checkpoint();
        seen.extend(page.into_iter().map(|e| e.position));
    }
    assert_eq!(seen.len(), 15);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let streamed: Vec<i64> = store
        .read_all_streaming(Checkpoint::START)
        .map(|event| event.unwrap().position)
        .collect()
        .await;
    assert_eq!(
        streamed, seen,
        "the streamed read sees the same events in the same order"
    );
    assert_eq!(store.size().await.unwrap().0, 15);
}
