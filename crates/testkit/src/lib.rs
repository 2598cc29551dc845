//! Helpers for integration tests that run against the machine's real Postgres and
//! NATS: a fresh database per test, a unique subject prefix per test (so tests run in
//! parallel without seeing each other's messages), polling until something becomes
//! true, and free ports for services under test.
//!
//! Services and stubs run in-process as a [`Running`] task; [`ModelStub`] is a scripted
//! OpenAI-compatible server and [`read_events`] reads a Server-Sent Events response;
//! [`expect_json`] and [`open_event_stream`] check an HTTP answer's status and body;
//! [`TestIdp`] is an identity provider serving a JWKS of keys made in the test;
//! [`NatsServer`] is a NATS server of the test's own, to kill and restart;
//! [`subscribe`] subscribes before the test publishes, and [`assert_success`] checks a
//! process that ran to its end.
//!
//! Both fixtures clean up after themselves when dropped, best effort: a test that
//! crashes the process can leave a `test_…` database or `T…` streams behind, which
//! are safe to delete at any time.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

mod http;
mod idp;
mod model_stub;
mod nats_server;
mod running;
mod sse;

pub use http::{expect_json, open_event_stream};
pub use idp::{KeyKind, TestIdp, TestKey};
pub use model_stub::{ModelStub, Requests, Scripted};
pub use nats_server::NatsServer;
pub use running::Running;
pub use sse::{SseEvent, read_events, read_first_events};

/// The Postgres server tests create their databases on; overridable by env
/// `TEST_POSTGRES_ADMIN_URL` (see [`postgres_admin_url`]).
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The NATS server tests use; overridable by env `TEST_NATS_URL` (see [`nats_url`]).
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// How long clean-up on drop may take before it gives up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The Postgres URL with rights to create and drop databases.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_ADMIN_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.to_owned())
}

/// The NATS server the tests use.
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| NATS_URL.to_owned())
}

/// 12 random hex characters (the random tail of a UUIDv7: its head is the clock,
/// which tests started together share).
fn random_hex12() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// A fresh, empty database for one test, dropped (WITH (FORCE)) when dropped (best effort, in a blocking drop: spawn a std thread with its own small runtime, or use a sync approach).
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates `test_<uuid v7>` on the admin server.
    pub async fn create() -> anyhow::Result<Self> {
        let admin_url = postgres_admin_url();
        // Time-ordered, so leftovers from crashed runs show when they were made.
        let name = format!("test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("failed to connect to postgres at {admin_url}"))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("failed to create database {name}"))?;
        // Best effort: closing politely only saves the server a log line.
        let _ = admin.close().await;
        let url = replace_database(&admin_url, &name)?;
        Ok(Self { name, url })
    }

    /// A small pool on the test database. Panics when it cannot connect: the
    /// database was just created, so that is a broken test environment.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("failed to connect to {}: {error}", self.name))
    }

    /// The settings a service under test needs to use this database.
    pub fn database_config(&self) -> platform::config::DatabaseConfig {
        platform::config::DatabaseConfig {
            database_url: self.url.clone(),
            database_max_connections: 5,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await, and may run inside a runtime that must not be blocked
        // on itself: run the clean-up on its own thread with its own runtime.
        let outcome = std::thread::spawn(move || {
            block_on_own_runtime(async move {
                let mut admin = PgConnection::connect(&postgres_admin_url()).await?;
                // FORCE ends the connections pools opened by the test still hold.
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                let _ = admin.close().await;
                Ok(())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("testkit: failed to drop database {}: {error:#}", self.name)
            }
            Err(_) => eprintln!("testkit: clean-up of database {} panicked", self.name),
        }
    }
}

/// `admin_url` with its database (the path) replaced by `database`, keeping the
/// user, host and query parameters.
fn replace_database(admin_url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = admin_url
        .find("://")
        .map(|index| index + 3)
        .with_context(|| format!("postgres url {admin_url:?} has no scheme"))?;
    let (head, rest) = admin_url.split_at(scheme_end);
    let (rest, query) = match rest.find('?') {
        Some(index) => rest.split_at(index),
        None => (rest, ""),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(format!("{head}{authority}/{database}{query}"))
}

/// A unique subject prefix (e.g. "t" + 12 hex chars) and a connected client; on drop deletes (best effort) every JetStream stream and KV bucket whose name starts with the prefix's stream form.
#[derive(Debug)]
pub struct TestBus {
    pub prefix: String,
    pub subjects: proto_schemas::Subjects,
    pub client: async_nats::Client,
    pub nats_url: String,
}

impl TestBus {
    /// Connects to the test NATS server under a new prefix. Unlike services, fails
    /// at once when the server is unreachable.
    pub async fn new() -> anyhow::Result<Self> {
        Self::at(nats_url()).await
    }

    /// [`Self::new`] on the server at `nats_url` (a [`NatsServer`]'s, say).
    pub async fn at(nats_url: String) -> anyhow::Result<Self> {
        let prefix = format!("t{}", random_hex12());
        let client = async_nats::ConnectOptions::new()
            .name(format!("testkit-{prefix}"))
            .connect(nats_url.as_str())
            .await
            .with_context(|| format!("failed to connect to nats at {nats_url}"))?;
        Ok(Self {
            subjects: proto_schemas::Subjects::new(&prefix),
            prefix,
            client,
            nats_url,
        })
    }

    /// The settings a service under test needs to use this prefix.
    pub fn nats_config(&self) -> platform::config::NatsConfig {
        platform::config::NatsConfig {
            nats_url: self.nats_url.clone(),
            subject_prefix: self.prefix.clone(),
            stream_replicas: 1,
        }
    }

    /// A JetStream context on [`Self::client`].
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// The JetStream names of this prefix's streams, KV buckets and object stores.
    pub async fn own_streams(&self) -> anyhow::Result<Vec<String>> {
        own_streams(&self.jetstream(), &self.subjects).await
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let url = self.nats_url.clone();
        let subjects = self.subjects.clone();
        let outcome = std::thread::spawn(move || {
            block_on_own_runtime(async move {
                // A client of its own: the test's client lives on the test's runtime,
                // which may be the very thread this drop blocks.
                let client = async_nats::connect(url.as_str()).await?;
                let jetstream = async_nats::jetstream::new(client);
                for stream in own_streams(&jetstream, &subjects).await? {
                    jetstream
                        .delete_stream(&stream)
                        .await
                        .with_context(|| format!("failed to delete stream {stream}"))?;
                }
                Ok(())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!(
                    "testkit: failed to clean up prefix {}: {error:#}",
                    self.prefix
                )
            }
            Err(_) => eprintln!("testkit: clean-up of prefix {} panicked", self.prefix),
        }
    }
}

/// The prefix's stream form, e.g. `T3F2A…` for prefix `t3f2a…`.
fn stream_prefix(subjects: &proto_schemas::Subjects) -> String {
    let stream = subjects.chat_requests_stream();
    stream
        .strip_suffix("_CHAT_REQUESTS")
        .unwrap_or(&stream)
        .to_owned()
}

async fn own_streams(
    jetstream: &async_nats::jetstream::Context,
    subjects: &proto_schemas::Subjects,
) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{}_", stream_prefix(subjects));
    // KV buckets and object stores are streams named KV_<bucket> and OBJ_<store>.
    let owned = [
        prefix.clone(),
        format!("KV_{prefix}"),
        format!("OBJ_{prefix}"),
    ];
    let names: Vec<String> = jetstream
        .stream_names()
        .try_collect()
        .await
        .context("failed to list streams")?;
    Ok(names
        .into_iter()
        .filter(|name| owned.iter().any(|p| name.starts_with(p)))
        .collect())
}

fn block_on_own_runtime<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the clean-up runtime")?;
    runtime.block_on(async {
        tokio::time::timeout(CLEANUP_TIMEOUT, work)
            .await
            .context("clean-up timed out")?
    })
}

/// Polls `check` every 20 ms until it returns Some or `timeout` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that a process run to its end (say `projection verify`) succeeded; the
/// failure names `what` and shows everything the process wrote to stdout and stderr.
pub fn assert_success(what: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Subscribes `client` to `subject` and waits until the server has the subscription
/// (a round trip: a flush only empties the socket buffer), so that nothing published
/// after this returns, from any connection, is missed. Panics when either fails.
pub async fn subscribe(
    client: &async_nats::Client,
    subject: impl async_nats::ToSubject,
) -> async_nats::Subscriber {
    let subscriber = client.subscribe(subject).await.expect("subscribed");
    registered(client).await;
    subscriber
}

/// Returns once the server has processed (and so registered) the subscriptions
/// `client` sent before: a round trip, at most 5 s. Panics when it fails.
pub async fn registered(client: &async_nats::Client) {
    tokio::time::timeout(Duration::from_secs(5), platform::bus::round_trip(client))
        .await
        .expect("nats echoed in time")
        .expect("the subscription reached the server");
}

/// A user id tests write as a literal; panics when it is not a valid one.
pub fn user_id(user: &str) -> proto_schemas::UserId {
    proto_schemas::UserId::parse(user).expect("valid user id")
}

/// A free TCP port on 127.0.0.1.
///
/// Free when asked: another process may take it before the caller binds it. Prefer
/// binding port 0 directly where the code under test allows it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("failed to find a free port on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://u:p@h/postgres?sslmode=disable",
                "postgres://u:p@h/x?sslmode=disable",
            ),
            ("postgres://h:5432", "postgres://h:5432/x"),
            (
                "postgres://h:5432/?application_name=a",
                "postgres://h:5432/x?application_name=a",
            ),
        ];
        for (admin, expected) in cases {
            assert_eq!(replace_database(admin, "x").unwrap(), expected);
        }
        assert!(replace_database("not a url", "x").is_err());
    }

    #[test]
    fn stream_prefix_matches_the_subjects_names() {
        let subjects = proto_schemas::Subjects::new("tab12");
        assert_eq!(stream_prefix(&subjects), "TAB12");
        assert!(subjects.idempotency_bucket().starts_with("TAB12_"));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[tokio::test]
    async fn eventually_returns_once_the_check_passes() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), "third call", || {
            calls += 1;
            let done = calls >= 3;
            async move { done.then_some(calls) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for nothing")]
    async fn eventually_panics_with_what_it_waited_for() {
        eventually(Duration::from_millis(100), "nothing", || async {
            None::<()>
        })
        .await;
    }
}
