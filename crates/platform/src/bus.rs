//! JSON messages over NATS with the W3C trace context in their headers, so that one
//! chat turn is one trace across every service it touches (invariant 8).
//!
//! Senders call [`publish_json`] / [`request_json`] (or put [`traced_headers`] on a
//! JetStream publish); receivers create their handling span and call
//! [`follow_trace`] with the message's headers before entering it. A service that
//! answers requests runs its subscriptions with [`serve`]: bounded concurrency, and a
//! shutdown that drains instead of dropping what NATS already delivered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use opentelemetry::propagation::{Extractor, Injector};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("failed to connect to nats")]
    Connect(#[source] async_nats::ConnectError),
    #[error("failed to publish to nats")]
    Publish(#[source] async_nats::PublishError),
    #[error("nats request failed")]
    Request(#[source] async_nats::RequestError),
    #[error("failed to subscribe on nats")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("failed to flush the nats connection")]
    Flush(#[source] async_nats::client::FlushError),
    /// The connection closed while waiting for an answer from the server.
    #[error("the nats connection closed")]
    Closed,
    #[error("jetstream failed to {operation}")]
    JetStream {
        operation: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// Someone listens on the subject but did not answer in time.
    #[error("nats request timed out")]
    Timeout,
    /// Nobody listens on the subject (the service is down or not yet started).
    #[error("no responders on the nats subject")]
    NoResponders,
    #[error("failed to decode a json message")]
    Decode(#[source] serde_json::Error),
    #[error("failed to encode a json message")]
    Encode(#[source] serde_json::Error),
}

impl BusError {
    /// Whether trying again later may succeed (the peer is down, slow or restarting),
    /// as opposed to a message that will never be understood.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Decode(_) | Self::Encode(_))
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the current tracing span's OpenTelemetry context as `traceparent` (and
/// `tracestate`) headers. Writes nothing when there is no sampled-or-not span context,
/// e.g. outside any span or without the OpenTelemetry layer.
pub fn inject_context(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// The remote context carried by a message's headers; the current context when there
/// are no headers.
pub fn extract_context(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        }),
        None => opentelemetry::Context::current(),
    }
}

/// Makes `span` a child of the trace a message's headers carry.
///
/// Call it right after creating the span and before entering it: once a span has
/// started, its parent can no longer change. Messages without a trace context leave
/// the span where it is (under its local parent, or a new root).
pub fn follow_trace(span: &tracing::Span, headers: Option<&HeaderMap>) {
    crate::trace::follow_context(span, extract_context(headers));
}

/// A new header map that carries the current trace context.
pub fn traced_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject_context(&mut headers);
    headers
}

pub fn encode_json<T: Serialize>(value: &T) -> Result<Bytes, BusError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(BusError::Encode)
}

pub fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, BusError> {
    serde_json::from_slice(payload).map_err(BusError::Decode)
}

/// Publishes `value` as JSON with the current trace context. Core NATS: delivery is
/// at most once and the publish returns once the message is queued for the server.
pub async fn publish_json<T: Serialize>(
    client: &async_nats::Client,
    subject: String,
    value: &T,
) -> Result<(), BusError> {
    let payload = encode_json(value)?;
    client
        .publish_with_headers(subject, traced_headers(), payload)
        .await
        .map_err(BusError::Publish)
}

/// Sends `body` as JSON and waits up to `timeout` for a JSON reply.
pub async fn request_json<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, BusError> {
    let request = async_nats::Request::new()
        .payload(encode_json(body)?)
        .headers(traced_headers())
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject, request)
        .await
        .map_err(|error| match error.kind() {
            async_nats::RequestErrorKind::TimedOut => BusError::Timeout,
            async_nats::RequestErrorKind::NoResponders => BusError::NoResponders,
            _ => BusError::Request(error),
        })?;
    decode_json(&reply.payload)
}

/// Answers a request with `value` as JSON. A message without a reply subject was
/// published rather than requested, so there is nobody to answer and nothing is sent.
pub async fn reply_json<T: Serialize>(
    client: &async_nats::Client,
    message: &async_nats::Message,
    value: &T,
) -> Result<(), BusError> {
    let Some(reply) = message.reply.clone() else {
        tracing::debug!(subject = %message.subject, "message has no reply subject, not replying");
        return Ok(());
    };
    let payload = encode_json(value)?;
    client
        .publish_with_headers(reply, traced_headers(), payload)
        .await
        .map_err(BusError::Publish)
}

/// Serves request-reply messages from `subscribers` with at most `concurrency` handled
/// at once; `what` names the subscriptions in logs.
///
/// On `shutdown` the subscriptions are drained: NATS stops routing new messages here
/// (in a queue group the other replicas get them), the ones already delivered are
/// still handled, for at most `drain_timeout`; then this waits for the in-flight
/// handlers and returns. `handle` is expected to answer the message itself (e.g. with
/// [`reply_json`]) and to log its own failures.
pub async fn serve<F, Fut>(
    subscribers: Vec<async_nats::Subscriber>,
    concurrency: usize,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    what: &'static str,
    handle: F,
) where
    F: Fn(async_nats::Message) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let tasks = TaskTracker::new();
    let mut merged = futures::stream::select_all(subscribers);
    let drain_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_deadline);
    let mut draining = false;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + drain_timeout);
                let mut drained = 0_usize;
                for subscriber in merged.iter_mut() {
                    match subscriber.drain().await {
                        Ok(()) => drained += 1,
                        Err(error) => tracing::warn!(%error, what, "failed to drain a subscription"),
                    }
                }
                // Draining fails only once the client's connection task has stopped,
                // and then nothing more will be delivered: stop without waiting.
                if drained == 0 {
                    break;
                }
                continue;
            }
            () = &mut drain_deadline, if draining => {
                tracing::warn!(what, ?drain_timeout, "gave up draining");
                break;
            }
            message = merged.next() => message,
        };
        let Some(message) = message else { break };
        // Waiting for a permit before taking the next message leaves the backlog in
        // the subscription, bounded, instead of in a pile of spawned tasks.
        let permit = Arc::clone(&limit)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let handled = handle(message);
        tasks.spawn(async move {
            handled.await;
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
    tracing::info!(what, "subscriptions stopped");
}

/// Publishes the events.appended wake-up notice after a commit to the event log.
///
/// Best effort: the commit already happened and tailers also poll, so a lost notice
/// only delays a reader; failures are logged, not returned.
pub async fn notify_appended(
    client: &async_nats::Client,
    subjects: &proto_schemas::Subjects,
    notice: &proto_schemas::events::EventsAppended,
) {
    if let Err(error) = publish_json(client, subjects.events_appended(), notice).await {
        tracing::warn!(
            %error,
            stream = %notice.stream,
            last_position = notice.last_position,
            "failed to publish events appended notice"
        );
    }
}

/// Returns once the NATS server has processed everything `client` sent before, e.g.
/// the subscriptions a service just made, so that a message sent from any connection
/// afterwards reaches them.
///
/// `Client::flush` only empties the socket buffer; the server handles one
/// connection's messages in order, so a message to ourselves coming back is the round
/// trip that proves it.
pub async fn round_trip(client: &async_nats::Client) -> Result<(), BusError> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(BusError::Subscribe)?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(BusError::Publish)?;
    echo.next().await.ok_or(BusError::Closed)?;
    Ok(())
}

/// [`round_trip`] at start-up, waiting at most `timeout`: a server that is not
/// reachable yet is logged, not an error, because the client keeps reconnecting and
/// registers the subscriptions again once connected. `waiting` names what waits
/// meanwhile (e.g. "commands").
pub async fn await_subscriptions(client: &async_nats::Client, timeout: Duration, waiting: &str) {
    match tokio::time::timeout(timeout, round_trip(client)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, waiting, "nats round trip failed, waiting for the connection")
        }
        Err(_) => tracing::warn!(
            waiting,
            "nats not reachable yet, waiting for the connection"
        ),
    }
}

/// A stream of () that yields each time an events.appended notice arrives (for eventlog subscriptions' wake-ups). Subscribes before returning.
///
/// The subscription is sent (flushed), not confirmed by a [`round_trip`]: a notice
/// another connection publishes before the server has registered it is missed, which
/// the tailer's polling covers. The stream ends when the client is closed.
pub async fn appended_wakeups(
    client: &async_nats::Client,
    subjects: &proto_schemas::Subjects,
) -> Result<impl Stream<Item = ()> + Send + Unpin + 'static, BusError> {
    let subscriber = client
        .subscribe(subjects.events_appended())
        .await
        .map_err(BusError::Subscribe)?;
    client.flush().await.map_err(BusError::Flush)?;
    Ok(subscriber.map(|_| ()))
}

/// Gets the KV bucket `config.bucket`, creating it when missing.
///
/// Use this instead of `jetstream::Context::create_key_value`: that first asks for the
/// account info, whose reply from nats-server 2.9 lacks fields async-nats 0.51
/// requires, so it always fails there. This builds the bucket's backing stream the
/// same way (`KV_<bucket>`, subjects `$KV.<bucket>.>`, rollups, no deletes, discard
/// new, direct get) without that call. An existing bucket is used as it is.
/// Mirrors and sources are not supported here.
pub async fn kv_bucket(
    jetstream: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, BusError> {
    use async_nats::jetstream::stream;

    let bucket = config.bucket.clone();
    let stream_config = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(config.description).filter(|d| !d.is_empty()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: config.history.max(1),
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        max_message_size: config.max_value_size,
        storage: config.storage,
        republish: config.republish,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: config.num_replicas.max(1),
        discard: stream::DiscardPolicy::New,
        placement: config.placement,
        ..Default::default()
    };
    jetstream
        .get_or_create_stream(stream_config)
        .await
        .map_err(|error| BusError::JetStream {
            operation: "create kv bucket",
            source: error.into(),
        })?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|error| BusError::JetStream {
            operation: "open kv bucket",
            source: error.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    use crate::trace::sample::{TRACEPARENT, assert_is_the_sample, with_propagator};

    #[test]
    fn json_round_trips_and_rejects_garbage() {
        let bytes = encode_json(&serde_json::json!({"a": 1})).unwrap();
        let value: serde_json::Value = decode_json(&bytes).unwrap();
        assert_eq!(value["a"], 1);
        let error = decode_json::<serde_json::Value>(b"{not json").unwrap_err();
        assert!(matches!(error, BusError::Decode(_)));
        assert!(!error.is_transient());
        assert!(BusError::Timeout.is_transient());
    }

    #[test]
    fn no_span_means_no_trace_headers() {
        with_propagator();
        let headers = traced_headers();
        assert!(headers.get("traceparent").is_none());
        let context = extract_context(Some(&headers));
        assert!(!context.span().span_context().is_valid());
    }

    #[test]
    fn extracts_a_well_formed_traceparent() {
        with_propagator();
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", TRACEPARENT);
        assert_is_the_sample(&extract_context(Some(&headers)));
    }
}
