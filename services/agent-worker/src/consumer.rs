//! Taking chat turns off JetStream: one durable pull consumer shared by every replica
//! (invariant 7), at most `concurrency` turns per replica, in-progress acks while a
//! turn runs, delayed redelivery after a failed attempt, and an answer for every
//! request whose attempts ran out, so that nothing stays stuck in the work queue.
//!
//! A replica only asks the server for as many messages as it has free turn slots:
//! a message is never parked in one replica's buffer (its ack timer running) while
//! another replica sits idle.
//!
//! Redelivery timing: the consumer has no `backoff` list, because nats-server makes
//! `backoff[0]` replace `ack_wait` (it would make the first attempt time out after
//! the first backoff). A crashed worker's message comes back after `ack_wait`; a
//! failed attempt is nak'd with the delay of its attempt number instead.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use proto_schemas::chat::{ChatErrorCode, ChatRequest};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::prompt::{DELIVERY_EXHAUSTED_MESSAGE, TURN_FAILED_MESSAGE};
use crate::turn::Worker;
use platform::error_chain;

/// How long one pull request waits on the server for messages. Short, so that a
/// shutting-down replica hands its slot back quickly.
pub(crate) const PULL_EXPIRY: Duration = Duration::from_secs(2);

/// Consumer-side settings.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    /// Turns one replica runs at once.
    pub concurrency: usize,
    /// Delay before attempt n+1 after attempt n failed (the last entry repeats).
    pub redelivery_backoff: Vec<Duration>,
}

/// The consumer configuration every replica asks for. It takes every request of the
/// stream, whatever the user's subject (and requests an older gateway queued on the
/// stream's earlier, single subject).
pub(crate) fn consumer_config(
    subjects: &proto_schemas::Subjects,
    ack_wait: Duration,
    max_deliver: i64,
) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(subjects.chat_workers_consumer()),
        description: Some("agent-worker replicas taking chat turns".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// The shared consumer, created with `config` if missing. One made by an older
/// version with a subject filter is replaced (the requests it had not acked stay in
/// the work queue and go to the new one); one with other timings is updated, so that
/// the replicas started last set them.
pub(crate) async fn ensure_consumer(
    requests: &jetstream::stream::Stream,
    config: jetstream::consumer::pull::Config,
) -> anyhow::Result<PullConsumer> {
    let name = config.durable_name.clone().unwrap_or_default();
    let consumer: PullConsumer = requests
        .get_or_create_consumer(&name, config.clone())
        .await?;
    let current = &consumer.cached_info().config;
    if current.filter_subject != config.filter_subject {
        tracing::info!(filter = %current.filter_subject, "replacing the chat workers consumer of an older version");
        requests.delete_consumer(&name).await?;
        return Ok(requests.get_or_create_consumer(&name, config).await?);
    }
    if current.ack_wait != config.ack_wait || current.max_deliver != config.max_deliver {
        // The server updates a durable consumer that is created again with new timings.
        match requests.create_consumer(config).await {
            Ok(updated) => return Ok(updated),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "could not update the chat workers consumer, using it as it is")
            }
        }
    }
    Ok(consumer)
}

/// The delay before the attempt after failed attempt `delivered` (1-based).
pub(crate) fn redelivery_delay(backoff: &[Duration], delivered: i64) -> Duration {
    let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(0);
    backoff
        .get(index)
        .or(backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}

/// How often a running turn tells the server it is alive: well within `ack_wait`.
pub(crate) fn progress_interval(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// Whether this delivery is the last the consumer allows (`max_deliver` ≤ 0 means
/// unlimited).
pub(crate) fn is_last_delivery(delivered: i64, max_deliver: i64) -> bool {
    max_deliver > 0 && delivered >= max_deliver
}

/// Pulls and runs chat turns until `shutdown`, then lets the turns in flight finish.
pub(crate) async fn run(
    worker: Arc<Worker>,
    consumer: PullConsumer,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) {
    let consumer_config = &consumer.cached_info().config;
    let limits = Arc::new(Limits {
        max_deliver: consumer_config.max_deliver,
        progress: progress_interval(consumer_config.ack_wait),
        backoff: settings.redelivery_backoff.clone(),
    });
    let concurrency = settings.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let turns = TaskTracker::new();
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let mut permits = vec![first];
        while permits.len() < concurrency {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRY)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "failed to pull chat requests, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // The batch is read to its end even when shutting down: its messages are
        // already delivered to this replica, and it ends within the pull expiry.
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => {
                    let permit = permits
                        .pop()
                        .expect("a batch holds at most one message per permit");
                    turns.spawn(handle(
                        Arc::clone(&worker),
                        Arc::clone(&limits),
                        message,
                        permit,
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "pull request ended with an error");
                    break;
                }
            }
        }
    }
    turns.close();
    tracing::info!(
        in_flight = turns.len(),
        "stopped pulling chat requests, finishing turns in flight"
    );
    turns.wait().await;
}

/// What every turn of a replica needs to know about its consumer.
#[derive(Debug)]
struct Limits {
    max_deliver: i64,
    progress: Duration,
    backoff: Vec<Duration>,
}

async fn handle(
    worker: Arc<Worker>,
    limits: Arc<Limits>,
    message: jetstream::Message,
    _slot: OwnedSemaphorePermit,
) {
    let (delivered, stream_sequence) = match message.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(error) => {
            tracing::warn!(%error, "chat request without jetstream metadata, ignored");
            return;
        }
    };
    let span = tracing::info_span!(
        "chat_turn",
        replica = %worker.replica,
        request_id = tracing::field::Empty,
        conversation_id = tracing::field::Empty,
        delivered,
        stream_sequence
    );
    platform::bus::follow_trace(&span, message.headers.as_ref());
    async {
        let request: ChatRequest = match platform::bus::decode_json(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                // Never valid, so never retried; with no request id there is nobody to answer.
                tracing::warn!(error = %error_chain(&error), "malformed chat request, dropped");
                settle(&message, AckKind::Term).await;
                return;
            }
        };
        tracing::Span::current()
            .record("request_id", tracing::field::display(request.request_id))
            .record("conversation_id", tracing::field::display(request.conversation_id));
        let started = std::time::Instant::now();
        match keep_alive(&message, limits.progress, worker.run_turn(&request)).await {
            Ok(reply) => {
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    outcome = outcome_name(&reply.outcome),
                    "chat turn answered"
                );
                settle(&message, AckKind::Ack).await;
            }
            // The same turn would fail the same way: end it now, with no redelivery.
            Err(error) if error.is_permanent() => {
                tracing::error!(error = %error_chain(&error), "chat turn failed for good, not retried");
                let failure = worker.end_with_failure(&request, ChatErrorCode::Internal, TURN_FAILED_MESSAGE);
                keep_alive(&message, limits.progress, failure).await;
                settle(&message, AckKind::Ack).await;
            }
            Err(error) if !is_last_delivery(delivered, limits.max_deliver) => {
                let delay = redelivery_delay(&limits.backoff, delivered);
                tracing::warn!(
                    error = %error_chain(&error),
                    retry_in_ms = delay.as_millis() as u64,
                    "chat turn failed, it will be retried"
                );
                settle(&message, AckKind::Nak(Some(delay))).await;
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "chat turn failed on its last delivery, giving up");
                let failure = worker.end_with_failure(&request, ChatErrorCode::DeliveryExhausted, DELIVERY_EXHAUSTED_MESSAGE);
                keep_alive(&message, limits.progress, failure).await;
                settle(&message, AckKind::Ack).await;
            }
        }
    }
    .instrument(span)
    .await
}

fn outcome_name(outcome: &proto_schemas::chat::ChatOutcome) -> &'static str {
    match outcome {
        proto_schemas::chat::ChatOutcome::Answered { .. } => "answered",
        proto_schemas::chat::ChatOutcome::Failed { .. } => "failed",
        proto_schemas::chat::ChatOutcome::PendingApproval { .. } => "pending_approval",
    }
}

/// Runs `work`, sending in-progress acks every `interval` so that the server does not
/// hand the message to another replica while this one is still on it.
async fn keep_alive<T>(
    message: &jetstream::Message,
    interval: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticks.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(%error, "failed to send an in-progress ack");
                }
            }
        }
    }
}

/// Acks (or naks, or terminates) a message. Not a double ack: a lost ack only means a
/// redelivery, which finds the turn recorded and republishes its reply (deduplicated
/// by request id), so waiting for the server's confirmation would buy nothing but a
/// round trip per turn.
async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, "failed to settle the chat request message");
    }
}

/// The JetStream advisory published when a message has used up `max_deliver`.
#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// The advisory subject for the chat consumer.
pub(crate) fn max_deliveries_subject(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

/// Answers requests whose last attempt died with its worker (a crash or SIGKILL on the
/// last delivery leaves no one to say so): the request is read back from the stream,
/// its turn ends with a failure reply and a `TurnFailed` event (unless it had ended),
/// and the message is deleted so that it does not sit in the work queue.
pub(crate) async fn answer_exhausted(
    worker: Arc<Worker>,
    requests: jetstream::stream::Stream,
    mut advisories: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    loop {
        let advisory = tokio::select! {
            () = shutdown.cancelled() => break,
            advisory = advisories.next() => match advisory {
                Some(advisory) => advisory,
                None => break,
            },
        };
        let advisory: MaxDeliveriesAdvisory = match platform::bus::decode_json(&advisory.payload) {
            Ok(advisory) => advisory,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "unreadable max-deliveries advisory");
                continue;
            }
        };
        answer_one(&worker, &requests, &advisory).await;
    }
    if let Err(error) = advisories.unsubscribe().await {
        tracing::debug!(%error, "failed to unsubscribe from advisories");
    }
}

async fn answer_one(
    worker: &Worker,
    requests: &jetstream::stream::Stream,
    advisory: &MaxDeliveriesAdvisory,
) {
    let stored = match requests.get_raw_message(advisory.stream_seq).await {
        Ok(stored) => stored,
        Err(error) => {
            // Usually: already answered and deleted by another replica.
            tracing::debug!(stream_sequence = advisory.stream_seq, %error, "exhausted chat request is gone");
            return;
        }
    };
    let span = tracing::info_span!(
        "chat_turn_exhausted",
        stream_sequence = advisory.stream_seq,
        deliveries = advisory.deliveries,
        request_id = tracing::field::Empty
    );
    platform::bus::follow_trace(&span, Some(&stored.headers));
    async {
        match platform::bus::decode_json::<ChatRequest>(&stored.payload) {
            Ok(request) => {
                tracing::Span::current().record("request_id", tracing::field::display(request.request_id));
                tracing::error!("chat request used every delivery without an answer, answering with an error");
                worker
                    .end_with_failure(&request, ChatErrorCode::DeliveryExhausted, DELIVERY_EXHAUSTED_MESSAGE)
                    .await;
            }
            Err(error) => tracing::warn!(error = %error_chain(&error), "malformed exhausted chat request, deleting"),
        }
        if let Err(error) = requests.delete_message(advisory.stream_seq).await {
            tracing::debug!(%error, "failed to delete the exhausted chat request");
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_back_off_by_attempt_number() {
        let backoff = [
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(30),
        ];
        assert_eq!(redelivery_delay(&backoff, 1), Duration::from_secs(2));
        assert_eq!(redelivery_delay(&backoff, 2), Duration::from_secs(10));
        assert_eq!(redelivery_delay(&backoff, 3), Duration::from_secs(30));
        assert_eq!(redelivery_delay(&backoff, 9), Duration::from_secs(30));
        assert_eq!(redelivery_delay(&[], 1), Duration::from_secs(1));
    }

    #[test]
    fn the_last_delivery_is_known() {
        assert!(!is_last_delivery(1, 4));
        assert!(!is_last_delivery(3, 4));
        assert!(is_last_delivery(4, 4));
        assert!(!is_last_delivery(100, -1), "unlimited");
    }

    #[test]
    fn progress_acks_come_well_within_ack_wait() {
        assert_eq!(
            progress_interval(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            progress_interval(Duration::from_millis(150)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn advisories_parse() {
        let payload = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2024-01-01T00:00:00Z","stream":"S","consumer":"C","stream_seq":42,"deliveries":4}"#;
        let advisory: MaxDeliveriesAdvisory = platform::bus::decode_json(payload).unwrap();
        assert_eq!(advisory.stream_seq, 42);
        assert_eq!(advisory.deliveries, 4);
        assert_eq!(
            max_deliveries_subject("T_CHAT_REQUESTS", "agent-workers"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.T_CHAT_REQUESTS.agent-workers"
        );
    }
}
