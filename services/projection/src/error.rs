//! What can go wrong while projecting, replaying or verifying. The database failing,
//! the log holding an event this code cannot read, and another writer having moved
//! the read models are different errors because callers react differently: retry,
//! stop and wait for an upgrade, or reload the checkpoint.

use eventlog::{Checkpoint, StoreError};
use proto_schemas::events::DecodeError;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read model database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    EventLog(#[from] StoreError),
    /// An event of a followed stream does not decode (e.g. a schema version newer than
    /// this binary). Skipping it would make the read models disagree with the log, so
    /// projection stops here until a binary that reads it is deployed.
    #[error("event {event_id} at position {position} cannot be projected: {source}")]
    Decode {
        position: i64,
        event_id: Uuid,
        #[source]
        source: DecodeError,
    },
    /// The stored checkpoint is not the one the batch was read from: another writer, or
    /// a replay's swap, moved the read models. Nothing was applied.
    #[error("the read models' checkpoint is no longer {expected:?}; nothing was applied")]
    CheckpointMoved { expected: Checkpoint },
    #[error(
        "the read models have layout version {found}, this binary writes version {expected}: \
         run `projection replay` to rebuild them"
    )]
    Layout { found: i32, expected: i32 },
    #[error(
        "there are no live read models (schema `projection`): run `projection` or `projection replay`"
    )]
    NoReadModels,
    #[error("another replay is running on this database")]
    ReplayRunning,
    #[error("the work was interrupted (the runtime is shutting down)")]
    Interrupted,
    #[error("the event log subscription ended")]
    SubscriptionEnded,
    #[error("a read model row is malformed: {0}")]
    Corrupt(String),
}
