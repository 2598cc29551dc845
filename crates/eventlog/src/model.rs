//! The event store's vocabulary: events going in, events coming out, where a reader
//! stands in the log, and the two ways an append can fail (the domain's conflict and
//! the store's failure are different errors).

use chrono::{DateTime, Utc};
use proto_schemas::EventId;
use proto_schemas::events::{DecodeError, EncodedEvent, EventFamily};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who caused an event and which trace it belongs to. Stored with every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The command or request that caused the event (indexed: see
    /// [`crate::EventStore::find_by_causation`]).
    #[serde(skip)]
    pub causation_id: Option<Uuid>,
    /// The chat turn (request) the event is part of.
    #[serde(skip)]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// W3C trace context of the span that appended the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl EventMetadata {
    /// The metadata of events caused by `causation_id` in the turn `correlation_id` of
    /// `user_id`, with the W3C trace context of the current span, so that a read
    /// model's work can be linked back to the trace that caused it. The one way
    /// writers build metadata.
    pub fn traced(
        causation_id: Option<Uuid>,
        correlation_id: Option<Uuid>,
        user_id: Option<String>,
    ) -> Self {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let context = tracing::Span::current().context();
        let mut carrier = std::collections::HashMap::<String, String>::new();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut carrier);
        });
        Self {
            causation_id,
            correlation_id,
            user_id,
            traceparent: carrier.remove("traceparent"),
            tracestate: carrier
                .remove("tracestate")
                .filter(|state| !state.is_empty()),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: EventId,
    pub encoded: EncodedEvent,
    pub metadata: EventMetadata,
}

impl NewEvent {
    pub fn new<E: EventFamily>(event_id: EventId, event: &E, metadata: EventMetadata) -> Self {
        Self {
            event_id,
            encoded: event.encode(),
            metadata,
        }
    }
}

/// An event as read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global insert order. Not commit order: tail by [`Checkpoint`], not by position.
    pub position: i64,
    pub transaction_id: i64,
    pub event_id: EventId,
    pub stream_id: String,
    /// 1 for the first event of a stream, then 2, 3, …
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// Decodes the payload as the current version of `E`, upcasting old versions.
    pub fn decode<E: EventFamily>(&self) -> Result<E, DecodeError> {
        E::decode(&self.event_type, self.schema_version, self.payload.clone())
    }

    /// The checkpoint just after this event.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }
}

/// A reader's place in the whole log: the last event it has seen, in the log's
/// reading order of (transaction id, position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    pub transaction_id: i64,
    pub position: i64,
}

impl Checkpoint {
    /// Before the first event.
    pub const START: Checkpoint = Checkpoint {
        transaction_id: 0,
        position: 0,
    };
}

/// What the appender believes about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds (concurrent appends are serialised by retry).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version.
    Exact(u64),
}

impl ExpectedVersion {
    pub(crate) fn as_version(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(version) => Some(version),
        }
    }
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's version after the batch (the version of its last event).
    pub stream_version: u64,
    /// The global position of the batch's last event.
    pub last_position: i64,
    /// True when every event id was stored already: nothing was written, and the
    /// outcome is that of the first append.
    pub already_stored: bool,
}

/// The store itself failed (connection, SQL, corrupt row).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored event {event_id} is malformed: {reason}")]
    Corrupt { event_id: Uuid, reason: String },
}

/// Why an append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer moved the stream: re-read it, decide again, retry.
    #[error("stream {stream} is at version {actual}, expected {expected:?}")]
    Conflict {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// Some but not all of the batch's event ids are stored: a caller bug, since a
    /// retried batch must carry the same ids as the first attempt.
    #[error("some events of the batch for stream {stream} are stored already, others are not")]
    PartiallyStored { stream: String },
    #[error("an append needs at least one event")]
    Empty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}
