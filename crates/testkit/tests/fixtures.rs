//! The fixtures against the machine's Postgres and NATS: they create what they
//! promise and remove it on drop, and only what is theirs.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use sqlx::{Connection, PgConnection};
use testkit::{TestBus, TestDatabase};

async fn database_exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&testkit::postgres_admin_url())
        .await
        .unwrap();
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn test_database_is_fresh_usable_and_dropped() {
    let database = TestDatabase::create().await.unwrap();
    let name = database.name.clone();
    assert!(
        database.url.ends_with(&format!("/{name}")),
        "{}",
        database.url
    );
    assert!(database_exists(&name).await);

    let pool = database.pool().await;
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(current, name);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a fresh database has no tables");
    sqlx::query("CREATE TABLE scratch (id int)")
        .execute(&pool)
        .await
        .unwrap();

    let via_config = database.database_config().connect().await.unwrap();
    sqlx::query("INSERT INTO scratch VALUES (1)")
        .execute(&via_config)
        .await
        .unwrap();

    // Dropped even while pools still hold open connections.
    drop(database);
    assert!(
        !database_exists(&name).await,
        "database {name} survived its drop"
    );
}

#[tokio::test]
async fn two_test_databases_are_distinct() {
    let first = TestDatabase::create().await.unwrap();
    let second = TestDatabase::create().await.unwrap();
    assert_ne!(first.name, second.name);
}

#[tokio::test]
async fn test_bus_removes_only_its_own_streams_and_buckets() {
    let bus = TestBus::new().await.unwrap();
    let other = TestBus::new().await.unwrap();
    assert_ne!(bus.prefix, other.prefix);
    assert!(
        bus.prefix.starts_with('t') && bus.prefix.len() == 13,
        "{}",
        bus.prefix
    );
    assert_eq!(bus.nats_config().subjects(), bus.subjects);

    for fixture in [&bus, &other] {
        let jetstream = fixture.jetstream();
        jetstream
            .create_stream(stream::Config {
                name: fixture.subjects.chat_requests_stream(),
                subjects: vec![fixture.subjects.chat_requests()],
                ..Default::default()
            })
            .await
            .unwrap();
        platform::bus::kv_bucket(
            &jetstream,
            kv::Config {
                bucket: fixture.subjects.idempotency_bucket(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let mut owned = bus.own_streams().await.unwrap();
    owned.sort();
    let mut expected = vec![
        bus.subjects.chat_requests_stream(),
        format!("KV_{}", bus.subjects.idempotency_bucket()),
    ];
    expected.sort();
    assert_eq!(owned, expected);

    // A client connected through the config reaches the same server.
    let client = bus.nats_config().connect("testkit-test").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .unwrap()
        .unwrap();

    drop(bus);
    let remaining = other.jetstream();
    let mut names = Vec::new();
    let mut listing = remaining.stream_names();
    use futures::TryStreamExt;
    while let Some(name) = listing.try_next().await.unwrap() {
        names.push(name);
    }
    for gone in &expected {
        assert!(!names.contains(gone), "{gone} survived its TestBus");
    }
    assert!(
        names.contains(&other.subjects.chat_requests_stream()),
        "another prefix's stream was deleted"
    );
    assert!(names.contains(&format!("KV_{}", other.subjects.idempotency_bucket())));
}
