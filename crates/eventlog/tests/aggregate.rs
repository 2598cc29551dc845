//! The typed core against a real Postgres: cached states that go stale are caught by
//! the expected version, cold loads read a snapshot and the events after it only, and
//! retried decisions store nothing twice.

use std::collections::BTreeMap;

use eventlog::{
    Aggregate, EventMetadata, EventStore, Executed, Repository, RepositoryError, RepositoryOptions,
    StoreError, Versioned,
};
use proto_schemas::events::{StreamId, TaskEvent};
use proto_schemas::{EventId, TaskNumber};
use serde::{Deserialize, Serialize};
use testkit::TestDatabase;
use uuid::Uuid;

/// A task list reduced to what these tests need: numbers and titles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Titles {
    tasks: BTreeMap<u32, String>,
    last: u32,
}

impl Aggregate for Titles {
    type Event = TaskEvent;
    const SNAPSHOT_SCHEMA: &'static str = "test-titles/1";

    fn apply(&mut self, event: &TaskEvent) {
        match event {
            TaskEvent::TaskAdded { task_id, title, .. } => {
                self.last = self.last.max(task_id.0);
                self.tasks.insert(task_id.0, title.clone());
            }
            TaskEvent::TaskDeleted { task_id } => {
                self.tasks.remove(&task_id.0);
            }
            _ => {}
        }
    }
}

/// Adds a task with the next number; the answer is that number.
fn add(title: &str) -> impl FnMut(&Titles) -> (Vec<(EventId, TaskEvent)>, u32) + '_ {
    let command = Uuid::now_v7();
    move |state: &Titles| {
        let number = state.last + 1;
        let event = TaskEvent::TaskAdded {
            task_id: TaskNumber(number),
            title: title.to_owned(),
            description: String::new(),
        };
        (vec![(EventId::derived(command, "add", 0), event)], number)
    }
}

/// Deletes task `number` if it exists; the answer says whether it did.
fn delete(number: u32) -> impl FnMut(&Titles) -> (Vec<(EventId, TaskEvent)>, bool) {
    let command = Uuid::now_v7();
    move |state: &Titles| {
        if !state.tasks.contains_key(&number) {
            return (Vec::new(), false);
        }
        let event = TaskEvent::TaskDeleted {
            task_id: TaskNumber(number),
        };
        (vec![(EventId::derived(command, "delete", 0), event)], true)
    }
}

/// Adds `count` tasks titled "`prefix` 0", "`prefix` 1", … one command each.
async fn add_many(repository: &Repository<Titles>, stream: &StreamId, count: u32, prefix: &str) {
    for n in 0..count {
        let title = format!("{prefix} {n}");
        output(
            repository
                .execute(stream, &EventMetadata::default(), add(&title))
                .await
                .unwrap(),
        );
    }
}

fn output<T>(executed: Executed<T>) -> T {
    match executed {
        Executed::Decided { output, .. } => output,
        Executed::AlreadyStored(outcome) => panic!("unexpectedly stored already: {outcome:?}"),
    }
}

fn stream(user: &str) -> StreamId {
    StreamId::Tasks(testkit::user_id(user))
}

async fn repositories(
    snapshot_every: u64,
) -> (
    TestDatabase,
    EventStore,
    Repository<Titles>,
    Repository<Titles>,
) {
    let db = TestDatabase::create().await.unwrap();
    let store = EventStore::connect(&db.url, 10).await.unwrap();
    let options = RepositoryOptions {
        snapshot_every,
        ..RepositoryOptions::default()
    };
    // Two replicas: each its own store handle (read counter) and cache.
    let one = Repository::new(EventStore::from_pool(store.pool().clone()), options);
    let two = Repository::new(EventStore::from_pool(store.pool().clone()), options);
    (db, store, one, two)
}

#[tokio::test]
async fn a_stale_cache_is_caught_by_the_expected_version_and_decided_again() {
    let (_db, _store, one, two) = repositories(100).await;
    let alice = stream("alice");
    let metadata = EventMetadata::default();
    assert_eq!(
        output(one.execute(&alice, &metadata, add("a")).await.unwrap()),
        1
    );
    // Replica two caches the list at version 1.
    assert_eq!(
        output(two.execute(&alice, &metadata, add("b")).await.unwrap()),
        2
    );
    // Replica one's cache still says version 1: its append conflicts, and the
    // decision is made again on the fresh list, so the number is 3, not 2 again.
    assert_eq!(
        output(one.execute(&alice, &metadata, add("c")).await.unwrap()),
        3
    );
    let list = two.load(&alice).await.unwrap();
    assert_eq!(list.version, 3);
    assert_eq!(
        list.state.tasks.values().cloned().collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
}

#[tokio::test]
async fn a_decision_with_nothing_to_append_is_confirmed_on_fresh_state() {
    let (_db, _store, one, two) = repositories(100).await;
    let alice = stream("alice");
    let metadata = EventMetadata::default();
    // Replica two caches the empty list; replica one adds task 1.
    assert!(!output(
        two.execute(&alice, &metadata, delete(1)).await.unwrap()
    ));
    output(one.execute(&alice, &metadata, add("a")).await.unwrap());
    // Replica two's cache says there is no task 1; a refusal is checked by no append,
    // so it must not be answered from the cache.
    assert!(output(
        two.execute(&alice, &metadata, delete(1)).await.unwrap()
    ));
    assert!(one.load(&alice).await.unwrap().state.tasks.is_empty());
}

#[tokio::test]
async fn a_retried_decision_stores_nothing_twice() {
    let (_db, store, one, two) = repositories(100).await;
    let alice = stream("alice");
    let metadata = EventMetadata::default();
    let mut first = add("a");
    output(one.execute(&alice, &metadata, &mut first).await.unwrap());
    output(one.execute(&alice, &metadata, add("b")).await.unwrap());
    // The same command again, on another replica: the same event id is stored.
    let again = two.execute(&alice, &metadata, &mut first).await.unwrap();
    assert!(
        matches!(again, Executed::AlreadyStored(ref outcome) if outcome.stream_version == 1),
        "{again:?}"
    );
    assert_eq!(
        store.read_stream(&alice.to_string()).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_cold_load_of_a_long_stream_reads_a_snapshot_and_the_events_after_it() {
    let (_db, store, writer, _) = repositories(50).await;
    let alice = stream("alice");
    add_many(&writer, &alice, 1_234, "task").await;
    let expected = writer.load(&alice).await.unwrap();
    assert_eq!(expected.version, 1_234);

    // A replica that never saw the stream.
    let cold = Repository::<Titles>::new(
        EventStore::from_pool(store.pool().clone()),
        RepositoryOptions {
            snapshot_every: 50,
            ..RepositoryOptions::default()
        },
    );
    let before = cold.store().events_read();
    let loaded = cold.load(&alice).await.unwrap();
    assert_eq!(loaded, expected);
    let read = cold.store().events_read() - before;
    assert!(
        read <= 50,
        "a cold load read {read} events of a 1,234-event stream"
    );

    // Stale by more than a snapshot's worth: caught up from the newer snapshot,
    // not by reading every event in between.
    add_many(&writer, &alice, 300, "more").await;
    let before = cold.store().events_read();
    let caught_up = cold.load(&alice).await.unwrap();
    assert_eq!(caught_up, writer.load(&alice).await.unwrap());
    let read = cold.store().events_read() - before;
    assert!(read <= 51 + 50, "catching up read {read} events");
}

#[tokio::test]
async fn snapshots_of_another_shape_or_that_do_not_decode_are_ignored() {
    let (_db, store, writer, _) = repositories(10).await;
    let alice = stream("alice");
    add_many(&writer, &alice, 25, "task").await;
    let expected: Versioned<Titles> = writer.load(&alice).await.unwrap();
    store
        .save_snapshot(
            &alice.to_string(),
            Titles::SNAPSHOT_SCHEMA,
            30,
            &serde_json::json!({"not": "a titles state"}),
        )
        .await
        .unwrap();
    let fresh = Repository::<Titles>::new(
        EventStore::from_pool(store.pool().clone()),
        RepositoryOptions::default(),
    );
    assert_eq!(fresh.load(&alice).await.unwrap(), expected);
}

#[tokio::test]
async fn values_the_database_refuses_are_permanent_failures_and_lost_connections_are_not() {
    let (_db, store, _, _) = repositories(100).await;
    let refused = sqlx::query("SELECT $1::jsonb")
        .bind("\"\\u0000\"")
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(RepositoryError::from(StoreError::from(refused)).is_permanent());

    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect("postgres://postgres@127.0.0.1:1/none")
        .await
        .unwrap_err();
    assert!(!RepositoryError::from(StoreError::from(unreachable)).is_permanent());
}
