//! The health port of agent-worker and projection (what Kubernetes probes), against
//! the machine's NATS server (127.0.0.1:4222, or `TEST_NATS_URL`).

use std::net::SocketAddr;

use platform::health::{self, HealthConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The status line of `GET path` on `addr`, over a plain connection.
async fn status_line(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_health_port_answers_alive_and_ready_while_nats_is_connected() {
    let url = std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bus = async_nats::connect(url).await.unwrap();
    let shutdown = CancellationToken::new();
    let config = HealthConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
    };
    let addr = health::spawn(config, bus, shutdown.clone())
        .await
        .unwrap()
        .expect("a health port when HEALTH_LISTEN is set");

    assert_eq!(status_line(addr, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(status_line(addr, "/readyz").await, "HTTP/1.1 200 OK");
    assert_eq!(status_line(addr, "/other").await, "HTTP/1.1 404 Not Found");

    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the port closes on shutdown");
}

#[tokio::test]
async fn no_health_port_unless_configured() {
    let url = std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bus = async_nats::connect(url).await.unwrap();
    let spawned = health::spawn(HealthConfig::default(), bus, CancellationToken::new()).await;
    assert_eq!(spawned.unwrap(), None);
}
