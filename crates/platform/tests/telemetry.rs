//! `telemetry::init` with OTLP export on: spans reach a (fake) collector over HTTP.
//! Its own test binary, because `init` installs the process-wide subscriber.

use std::time::Duration;

use platform::config::{LogFormat, TelemetryConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One HTTP request as the collector saw it.
struct Received {
    request_line: String,
    body: Vec<u8>,
}

/// A minimal OTLP/HTTP collector: answers every POST with 200 and forwards it.
async fn fake_collector() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut content_length = 0;
                    loop {
                        let mut line = String::new();
                        stream.read_line(&mut line).await.unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            content_length = value.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; content_length];
                    stream.read_exact(&mut body).await.unwrap();
                    stream
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = sender.send(Received {
                        request_line: request_line.trim_end().to_owned(),
                        body,
                    });
                }
            });
        }
    });
    (endpoint, receiver)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_otlp_endpoint_on_shutdown() {
    let (endpoint, mut received) = fake_collector().await;
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        otlp_endpoint: Some(endpoint),
    };
    let guard = platform::telemetry::init("telemetry-test", &config).unwrap();

    // A second init in the same process is refused, not silently ignored.
    assert!(platform::telemetry::init("telemetry-test", &config).is_err());

    tracing::info_span!("exported work").in_scope(|| tracing::info!("inside the span"));
    // Dropping the guard flushes the batch still buffered.
    drop(guard);

    let request = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("collector received nothing within 10s")
        .unwrap();
    assert_eq!(request.request_line, "POST /v1/traces HTTP/1.1");
    assert!(
        contains(&request.body, "exported work"),
        "span name missing from the export"
    );
    assert!(
        contains(&request.body, "telemetry-test"),
        "service.name missing from the export"
    );
}
