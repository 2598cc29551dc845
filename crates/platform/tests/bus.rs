//! The bus helpers against the machine's NATS server (127.0.0.1:4222, or
//! `TEST_NATS_URL`), each test under its own subject prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use opentelemetry::trace::TraceContextExt;
use platform::bus::{self, BusError};
use platform::config::NatsConfig;
use proto_schemas::events::EventsAppended;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
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

/// A client under a fresh prefix and the subject `<prefix>.test.<name>`.
async fn client_on(name: &str) -> (async_nats::Client, String) {
    let config = nats_config();
    let client = config.connect("bus-test").await.unwrap();
    (client, format!("{}.test.{name}", config.subject_prefix))
}

/// Asks `subject` to double `n`, waiting at most `timeout`.
async fn ping(
    client: &async_nats::Client,
    subject: String,
    n: u32,
    timeout: Duration,
) -> Result<Pong, BusError> {
    bus::request_json(client, subject, &Ping { n }, timeout).await
}

/// [`ping`] that must fail: its error.
async fn ping_error(client: &async_nats::Client, subject: String, timeout: Duration) -> BusError {
    ping(client, subject, 1, timeout)
        .await
        .expect_err("the ping must fail")
}

/// Answers `Ping`s on `subject` with `Pong`s, following each request's trace.
async fn spawn_responder(client: async_nats::Client, subject: String) {
    let mut requests = testkit::subscribe(&client, subject).await;
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
    let (client, subject) = client_on("ping").await;
    spawn_responder(client.clone(), subject.clone()).await;

    let pong = ping(&client, subject, 21, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(pong.doubled, 42);
}

#[tokio::test]
async fn request_without_responder_is_no_responders() {
    let (client, subject) = client_on("nobody").await;
    let error = ping_error(&client, subject, Duration::from_secs(5)).await;
    assert!(matches!(error, BusError::NoResponders), "{error:?}");
}

#[tokio::test]
async fn slow_responder_is_a_timeout() {
    let (client, subject) = client_on("slow").await;
    // Subscribed but never answering.
    let _silent = testkit::subscribe(&client, subject.clone()).await;
    let error = ping_error(&client, subject, Duration::from_millis(200)).await;
    assert!(matches!(error, BusError::Timeout), "{error:?}");
}

#[tokio::test]
async fn undecodable_reply_is_a_decode_error() {
    let (client, subject) = client_on("garbage").await;
    let mut requests = testkit::subscribe(&client, subject.clone()).await;
    let responder = client.clone();
    tokio::spawn(async move {
        let message = requests.next().await.unwrap();
        responder
            .publish(message.reply.unwrap(), "not json".into())
            .await
            .unwrap();
    });
    let error = ping_error(&client, subject, Duration::from_secs(5)).await;
    assert!(matches!(error, BusError::Decode(_)), "{error:?}");
}

#[tokio::test]
async fn trace_context_crosses_the_bus() {
    platform::telemetry::init_for_tests();
    let (client, subject) = client_on("traced").await;
    spawn_responder(client.clone(), subject.clone()).await;

    let caller = tracing::info_span!("caller");
    let caller_trace = caller.context().span().span_context().trace_id();
    assert_ne!(
        caller_trace,
        opentelemetry::trace::TraceId::INVALID,
        "spans need real ids"
    );

    let pong = ping(&client, subject, 1, Duration::from_secs(5))
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

/// A handler for [`bus::serve`] that reports each message it starts on `started`,
/// waits for a permit of `gate`, then echoes the payload back; `in_flight` and
/// `most_in_flight` count how many run at once.
#[derive(Clone)]
struct GatedEcho {
    client: async_nats::Client,
    gate: Arc<Semaphore>,
    started: mpsc::UnboundedSender<()>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl GatedEcho {
    async fn handle(self, message: async_nats::Message) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        self.started.send(()).unwrap();
        self.gate.acquire().await.unwrap().forget();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let reply = message
            .reply
            .clone()
            .expect("requests carry a reply subject");
        self.client.publish(reply, message.payload).await.unwrap();
    }
}

/// A [`GatedEcho`] served by [`bus::serve`] in a task of its own, in a queue group
/// on `subject`, and a separate connection to call it with.
struct EchoService {
    echo: GatedEcho,
    started: mpsc::UnboundedReceiver<()>,
    caller: async_nats::Client,
    subject: String,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl EchoService {
    /// Subscribed when this returns, so requests sent afterwards reach it.
    async fn start(concurrency: usize) -> Self {
        let config = nats_config();
        let server = config.connect("bus-test-server").await.unwrap();
        let caller = config.connect("bus-test-caller").await.unwrap();
        let subject = format!("{}.test.serve", config.subject_prefix);
        let subscriber = server
            .queue_subscribe(subject.clone(), "serve-test".to_owned())
            .await
            .unwrap();
        // The caller is another connection: only a round trip (not a flush) makes
        // sure the server has the subscription before the caller publishes.
        bus::round_trip(&server).await.unwrap();
        let (started_tx, started) = mpsc::unbounded_channel();
        let echo = GatedEcho {
            client: server,
            gate: Arc::new(Semaphore::new(0)),
            started: started_tx,
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
        };
        let shutdown = CancellationToken::new();
        let handler = echo.clone();
        let serving = tokio::spawn(bus::serve(
            vec![subscriber],
            concurrency,
            shutdown.clone(),
            Duration::from_secs(10),
            "echo",
            move |message| handler.clone().handle(message),
        ));
        Self {
            echo,
            started,
            caller,
            subject,
            shutdown,
            serving,
        }
    }

    /// Publishes requests `0..count` with replies to `<inbox>.<n>`, and returns the
    /// subscription the replies arrive on. Flushed: NATS has routed them all when this
    /// returns.
    async fn send_requests(&self, count: usize) -> async_nats::Subscriber {
        let inbox = self.caller.new_inbox();
        let replies = self.caller.subscribe(format!("{inbox}.*")).await.unwrap();
        for n in 0..count {
            self.caller
                .publish_with_reply(
                    self.subject.clone(),
                    format!("{inbox}.{n}"),
                    n.to_string().into(),
                )
                .await
                .unwrap();
        }
        self.caller.flush().await.unwrap();
        replies
    }

    /// Whether a handler started within `timeout`.
    async fn started_within(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.started.recv()).await,
            Ok(Some(()))
        )
    }
}

/// The request numbers of the next `count` replies, sorted.
async fn replies(replies: &mut async_nats::Subscriber, count: usize) -> Vec<usize> {
    let mut payloads = Vec::new();
    for _ in 0..count {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("no reply within 5s")
            .expect("reply subscription ended");
        payloads.push(
            std::str::from_utf8(&reply.payload)
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    payloads.sort();
    payloads
}

#[tokio::test]
async fn serve_handles_at_most_concurrency_messages_at_once() {
    let mut service = EchoService::start(2).await;

    let mut reply_rx = service.send_requests(3).await;
    for _ in 0..2 {
        assert!(
            service.started_within(Duration::from_secs(5)).await,
            "the first two messages were not handled"
        );
    }
    assert!(
        !service.started_within(Duration::from_millis(300)).await,
        "a third message was handled while two were in flight"
    );

    // One handler finishing frees the permit the third message waits for.
    service.echo.gate.add_permits(1);
    assert!(
        service.started_within(Duration::from_secs(5)).await,
        "the third message was not handled once a handler finished"
    );
    service.echo.gate.add_permits(2);
    assert_eq!(replies(&mut reply_rx, 3).await, [0, 1, 2]);
    assert_eq!(service.echo.most_in_flight.load(Ordering::SeqCst), 2);

    service.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), service.serving)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
}

#[tokio::test]
async fn serve_answers_what_was_delivered_before_shutdown_then_returns() {
    let mut service = EchoService::start(1).await;

    // One in flight and the rest queued behind it when the shutdown comes. Many, as
    // the loop picks at random between the shutdown and a ready message: a loop that
    // stopped at the shutdown instead of draining would pass only by a long fluke.
    const SENT: usize = 20;
    let mut reply_rx = service.send_requests(SENT).await;
    assert!(
        service.started_within(Duration::from_secs(5)).await,
        "the first message was not handled"
    );
    service.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !service.serving.is_finished(),
        "serve returned with messages still to answer"
    );

    service.echo.gate.add_permits(SENT);
    assert_eq!(
        replies(&mut reply_rx, SENT).await,
        (0..SENT).collect::<Vec<_>>()
    );
    tokio::time::timeout(Duration::from_secs(5), service.serving)
        .await
        .expect("serve did not return after draining")
        .unwrap();
    assert_eq!(service.echo.most_in_flight.load(Ordering::SeqCst), 1);

    // Drained means unsubscribed: nobody takes new requests any more.
    let error = ping_error(&service.caller, service.subject, Duration::from_secs(5)).await;
    assert!(matches!(error, BusError::NoResponders), "{error:?}");
}
