//! The JetStream streams of a chat turn, defined once: the gateway (which publishes
//! requests and reads replies) and the agent-worker (which consumes requests and
//! publishes replies) both ensure them at start-up, so either may start first.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use proto_schemas::Subjects;

use backon::Retryable as _;

use crate::BusError;

/// How long a JetStream message id (= request id) is remembered, so that a request
/// published twice within this window is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long final replies are kept for late readers and retried POSTs; it is also
/// the window in which an Idempotency-Key is honoured.
pub const REPLY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a turn's progress (its SSE events) can be read again after it was
/// published. Turns end within minutes; after this only their final reply is kept.
pub const PROGRESS_RETENTION: Duration = Duration::from_secs(60 * 60);

/// The most bytes the progress stream holds; past it the oldest progress goes first.
pub const PROGRESS_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// A chat request not taken within this time is dropped (the user has long gone).
pub const REQUEST_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Bounds on the chat turns in the requests stream (waiting or running: a request
/// stays until a worker acks it). JetStream checks them when a request is published,
/// so they hold across every gateway replica, and a request beyond them is refused,
/// never queued: one user cannot fill the queue, and the queue cannot grow past what
/// the workers can answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Turns one user may have waiting or running at once.
    pub per_user: u32,
    /// Turns all users together may have waiting or running.
    pub total: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            per_user: 8,
            total: 2_000,
        }
    }
}

/// Why the requests stream refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The user has [`QueueLimits::per_user`] turns waiting or running.
    UserLimit,
    /// The stream holds [`QueueLimits::total`] turns.
    Full,
}

impl QueueRefusal {
    /// The refusal a failed publish to the requests stream stands for, if any.
    pub fn of(error: &jetstream::context::PublishError) -> Option<Self> {
        let source = std::error::Error::source(error)?;
        let error = source.downcast_ref::<jetstream::Error>()?;
        if error.error_code() != jetstream::ErrorCode::STREAM_STORE_FAILED {
            return None;
        }
        // nats-server's ErrMaxMsgsPerSubject and ErrMaxMsgs.
        let text = error.to_string();
        if text.contains("maximum messages per subject exceeded") {
            Some(Self::UserLimit)
        } else if text.contains("maximum messages exceeded") {
            Some(Self::Full)
        } else {
            None
        }
    }
}

/// The work-queue stream of chat requests, one subject per user: each request is
/// removed once a worker acks it, and [`QueueLimits`] bound what it holds.
pub fn chat_requests_config(
    subjects: &Subjects,
    replicas: usize,
    limits: QueueLimits,
) -> stream::Config {
    stream::Config {
        name: subjects.chat_requests_stream(),
        description: Some("taskchat chat turns waiting for an agent-worker".into()),
        subjects: vec![subjects.chat_requests()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: REQUEST_MAX_AGE,
        max_messages_per_subject: i64::from(limits.per_user.max(1)),
        max_messages: i64::from(limits.total.max(1)),
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
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

/// The stream that keeps each turn's progress chunks for a while, readable by
/// subject from any sequence: the SSE event ids are its sequence numbers. Memory
/// storage: progress is a preview (the final reply is kept in the replies stream, the
/// turn in the log), so losing it with a NATS restart costs a replay, not an answer.
pub fn chat_progress_config(subjects: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: subjects.chat_progress_stream(),
        description: Some("taskchat turns' progress, kept for clients that re-attach".into()),
        subjects: vec![subjects.chat_streams()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::Memory,
        max_age: PROGRESS_RETENTION,
        max_bytes: PROGRESS_MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Creates the chat streams if they are missing. With `limits` (the gateway, which
/// admits turns) an existing requests stream gets those limits and the per-user
/// subjects (a stream made by an older version is brought up to date; the requests
/// it holds are still delivered); without (the workers) it is left as it is.
pub async fn ensure_chat_streams(
    jetstream: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
    limits: Option<QueueLimits>,
) -> Result<(stream::Stream, stream::Stream), BusError> {
    let wanted = chat_requests_config(subjects, replicas, limits.unwrap_or_default());
    let mut requests = ensure(jetstream, wanted.clone()).await?;
    let current = &requests.cached_info().config;
    let admits_as_wanted = current.subjects == wanted.subjects
        && current.max_messages_per_subject == wanted.max_messages_per_subject
        && current.max_messages == wanted.max_messages
        && current.discard == wanted.discard
        && current.discard_new_per_subject == wanted.discard_new_per_subject;
    if limits.is_some() && !admits_as_wanted {
        let config = stream::Config {
            num_replicas: current.num_replicas,
            ..wanted
        };
        jetstream
            .update_stream(&config)
            .await
            .map_err(|error| BusError::JetStream {
                operation: "update the chat requests stream",
                source: Box::new(error),
            })?;
        requests = ensure(jetstream, config).await?;
        tracing::info!(
            stream = %requests.cached_info().config.name,
            per_user = requests.cached_info().config.max_messages_per_subject,
            total = requests.cached_info().config.max_messages,
            "chat requests stream limits set"
        );
    }
    let replies = ensure(jetstream, chat_replies_config(subjects, replicas)).await?;
    ensure_progress_stream(jetstream, subjects, replicas).await?;
    Ok((requests, replies))
}

/// Creates the progress stream if it is missing. It is kept in memory, so a NATS
/// restart loses it: the gateway calls this again when a publish finds no stream.
pub async fn ensure_progress_stream(
    jetstream: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<stream::Stream, BusError> {
    ensure(jetstream, chat_progress_config(subjects, replicas)).await
}

/// Gets or creates a stream. A server error (nats-server can fail to create a stream's
/// store while another stream is being deleted) is tried again a few times.
async fn ensure(
    jetstream: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, BusError> {
    let attempt = || jetstream.get_or_create_stream(config.clone());
    attempt
        .retry(crate::retry::quick())
        .when(|error| {
            matches!(error.kind(), jetstream::context::CreateStreamErrorKind::JetStream(error) if error.code() >= 500)
        })
        .await
        .map_err(|error| BusError::JetStream {
            operation: "create stream",
            source: Box::new(error),
        })
}
