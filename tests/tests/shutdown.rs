//! SIGTERM ends a service within its grace period whatever its backends do: here an
//! agent-worker whose NATS accepts the connection and never answers.

use std::process::Stdio;
use std::time::Duration;

use testkit::TestDatabase;
use tokio::io::AsyncReadExt as _;

#[tokio::test]
async fn sigterm_ends_a_worker_stuck_on_an_unanswering_bus_within_its_grace_period() {
    let db = TestDatabase::create().await.unwrap();
    // A "NATS server" that takes connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });

    let mut worker = tokio::process::Command::new(system_tests::binary("agent-worker"))
        .env("NATS_URL", &silent_url)
        .env("DATABASE_URL", &db.url)
        .env("SHUTDOWN_GRACE_SECS", "2")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        // The log goes to stdout.
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker should still be waiting for its bus"
    );
    let pid = worker.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());

    // Generous against a 2 s grace period: the point is that it ends at all.
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker exited after SIGTERM")
        .unwrap();
    assert!(!status.success(), "a forced exit is a failure: {status}");
    let mut log = String::new();
    worker
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("grace period"), "{log}");
    held.abort();
}
