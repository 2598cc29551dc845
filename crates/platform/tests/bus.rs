//! The bus helpers against the machine's NATS server (127.0.0.1:4222, or
//! `TEST_NATS_URL`), each test under its own subject prefix.

use std::time::Duration;

use futures::StreamExt;
use opentelemetry::trace::TraceContextExt;
use platform::bus::{self, BusError};
use platform::config::NatsConfig;
use proto_schemas::events::EventsAppended;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn nats_config() -> NatsConfig {
    let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    NatsConfig {
        nats_url: std::env::var("TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        subject_prefix: prefix,
        stream_replicas: 1,
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Ping {
    n: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Pong {
    doubled: u32,
    traceparent: Option<String>,
}

/// Answers `Ping`s on `subject` with `Pong`s, following each request's trace.
async fn spawn_responder(client: async_nats::Client, subject: String) {
    let mut requests = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let span = tracing::info_span!("handle ping");
            bus::follow_trace(&span, message.headers.as_ref());
            async {
                let ping: Ping = bus::decode_json(&message.payload).unwrap();
                let reply = Pong {
                    doubled: ping.n * 2,
                    traceparent: message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("traceparent"))
                        .map(|v| v.as_str().to_owned()),
                };
                bus::reply_json(&client, &message, &reply).await.unwrap();
            }
            .instrument(span)
            .await;
        }
    });
}

#[tokio::test]
async fn request_json_round_trips_through_a_responder() {
    platform::telemetry::init_for_tests();
    let config = nats_config();
    let client = config.connect("bus-test").await.unwrap();
    let subject = format!("{}.test.ping", config.subject_prefix);
    spawn_responder(client.clone(), subject.clone()).await;

    let pong: Pong = bus::request_json(&client, subject, &Ping { n: 21 }, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(pong.doubled, 42);
}

#[tokio::test]
async fn request_without_responder_is_no_responders() {
    let config = nats_config();
    let client = config.connect("bus-test").await.unwrap();
    let subject = format!("{}.test.nobody", config.subject_prefix);
    let error =
        bus::request_json::<_, Pong>(&client, subject, &Ping { n: 1 }, Duration::from_secs(5))
            .await
            .unwrap_err();
    assert!(matches!(error, BusError::NoResponders), "{error:?}");
}

#[tokio::test]
async fn slow_responder_is_a_timeout() {
    let config = nats_config();
    let client = config.connect("bus-test").await.unwrap();
    let subject = format!("{}.test.slow", config.subject_prefix);
    // Subscribed but never answering.
    let _silent = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let error =
        bus::request_json::<_, Pong>(&client, subject, &Ping { n: 1 }, Duration::from_millis(200))
            .await
            .unwrap_err();
    assert!(matches!(error, BusError::Timeout), "{error:?}");
}

#[tokio::test]
async fn undecodable_reply_is_a_decode_error() {
    let config = nats_config();
    let client = config.connect("bus-test").await.unwrap();
    let subject = format!("{}.test.garbage", config.subject_prefix);
    let mut requests = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        let message = requests.next().await.unwrap();
        responder
            .publish(message.reply.unwrap(), "not json".into())
            .await
            .unwrap();
    });
    let error =
        bus::request_json::<_, Pong>(&client, subject, &Ping { n: 1 }, Duration::from_secs(5))
            .await
            .unwrap_err();
    assert!(matches!(error, BusError::Decode(_)), "{error:?}");
}

#[tokio::test]
async fn trace_context_crosses_the_bus() {
    platform::telemetry::init_for_tests();
    let config = nats_config();
    let client = config.connect("bus-test").await.unwrap();
    let subject = format!("{}.test.traced", config.subject_prefix);
    spawn_responder(client.clone(), subject.clone()).await;

    let caller = tracing::info_span!("caller");
    let caller_trace = caller.context().span().span_context().trace_id();
    assert_ne!(
        caller_trace,
        opentelemetry::trace::TraceId::INVALID,
        "spans need real ids"
    );

    let pong: Pong = bus::request_json(&client, subject, &Ping { n: 1 }, Duration::from_secs(5))
        .instrument(caller.clone())
        .await
        .unwrap();
    let traceparent = pong
        .traceparent
        .expect("request carried no traceparent header");
    assert!(
        traceparent.contains(&caller_trace.to_string()),
        "traceparent {traceparent} is not in trace {caller_trace}"
    );

    // The receiving side: a span that follows the headers joins the caller's trace.
    let headers = caller.in_scope(bus::traced_headers);
    let extracted = bus::extract_context(Some(&headers));
    assert_eq!(extracted.span().span_context().trace_id(), caller_trace);
    let receiver = tracing::info_span!("receiver");
    bus::follow_trace(&receiver, Some(&headers));
    assert_eq!(
        receiver.context().span().span_context().trace_id(),
        caller_trace
    );

    // Without headers a span stays in its own trace.
    let unrelated = tracing::info_span!("unrelated");
    bus::follow_trace(&unrelated, None);
    assert_ne!(
        unrelated.context().span().span_context().trace_id(),
        caller_trace
    );
}

#[tokio::test]
async fn notify_appended_wakes_appended_wakeups() {
    let config = nats_config();
    let subjects = config.subjects();
    let listener = config.connect("bus-test-listener").await.unwrap();
    let publisher = config.connect("bus-test-publisher").await.unwrap();
    let mut wakeups = bus::appended_wakeups(&listener, &subjects).await.unwrap();

    // Another deployment's notices must not wake this one.
    let other = NatsConfig {
        subject_prefix: format!("{}x", config.subject_prefix),
        ..config
    };
    let notice = EventsAppended {
        stream: "tasks-ada".into(),
        last_position: 7,
    };
    bus::notify_appended(&publisher, &other.subjects(), &notice).await;
    publisher.flush().await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(200), wakeups.next()).await;
    assert!(early.is_err(), "woken by another prefix's notice");

    for _ in 0..2 {
        bus::notify_appended(&publisher, &subjects, &notice).await;
        tokio::time::timeout(Duration::from_secs(5), wakeups.next())
            .await
            .expect("no wake-up within 5s")
            .expect("wake-up stream ended");
    }
}

#[tokio::test]
async fn kv_bucket_creates_then_reopens_a_working_bucket() {
    let config = nats_config();
    let client = config.connect("bus-test").await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let bucket = config.subjects().idempotency_bucket();
    let kv_config = || async_nats::jetstream::kv::Config {
        bucket: bucket.clone(),
        history: 1,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    };

    let store = bus::kv_bucket(&jetstream, kv_config()).await.unwrap();
    store.put("ada.key-1", "request-1".into()).await.unwrap();
    // A second service (or a restart) opens the same bucket and sees the value.
    let again = bus::kv_bucket(&jetstream, kv_config()).await.unwrap();
    let value = again
        .get("ada.key-1")
        .await
        .unwrap()
        .expect("value written before reopening");
    assert_eq!(&value[..], b"request-1");
    // `create` is the first-writer-wins primitive idempotency keys rely on.
    assert!(again.create("ada.key-1", "request-2".into()).await.is_err());

    jetstream
        .delete_stream(format!("KV_{bucket}"))
        .await
        .unwrap();
}
