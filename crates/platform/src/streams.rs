//! The JetStream streams of a chat turn, defined once: the gateway (which publishes
//! requests and reads replies) and the agent-worker (which consumes requests and
//! publishes replies) both ensure them at start-up, so either may start first.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use proto_schemas::Subjects;

use crate::BusError;

/// How long a JetStream message id (= request id) is remembered, so that a request
/// published twice within this window is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long final replies are kept for late readers and retried POSTs; it is also
/// the window in which an Idempotency-Key is honoured.
pub const REPLY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A chat request not taken within this time is dropped (the user has long gone).
pub const REQUEST_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The work-queue stream of chat requests: each request is removed once a worker acks it.
pub fn chat_requests_config(subjects: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: subjects.chat_requests_stream(),
        description: Some("taskchat chat turns waiting for an agent-worker".into()),
        subjects: vec![subjects.chat_requests()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: REQUEST_MAX_AGE,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// The stream that keeps each turn's final reply, readable by subject.
pub fn chat_replies_config(subjects: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: subjects.chat_replies_stream(),
        description: Some("taskchat final replies, kept for late readers and retries".into()),
        subjects: vec![subjects.chat_replies_wildcard()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: REPLY_RETENTION,
        max_messages_per_subject: 1,
        allow_direct: true,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Creates both chat streams if they are missing (an existing stream is left as it is).
pub async fn ensure_chat_streams(
    jetstream: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<(stream::Stream, stream::Stream), BusError> {
    let requests = ensure(jetstream, chat_requests_config(subjects, replicas)).await?;
    let replies = ensure(jetstream, chat_replies_config(subjects, replicas)).await?;
    Ok((requests, replies))
}

async fn ensure(
    jetstream: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, BusError> {
    jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|error| BusError::JetStream {
            operation: "create stream",
            source: Box::new(error),
        })
}
