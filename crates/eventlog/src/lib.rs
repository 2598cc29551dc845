//! The taskchat event store: an append-only log of events in Postgres.
//!
//! # Layout
//! - [`aggregate`]: the typed core writers use: [`Aggregate`] states loaded through a
//!   [`Repository`] (cache, snapshot, then only the newer events) and changed by
//!   appends that name the version they were decided on.
//! - [`model`]: what goes in and comes out (new and stored events, metadata,
//!   expected versions, checkpoints, outcomes and errors).
//! - [`store`]: [`EventStore`]: appends with optimistic concurrency and idempotent
//!   event ids, reads of one stream, and gap-free reads of the whole log.
//! - [`subscription`]: a catch-up-then-follow tail of the whole log that wakes on a
//!   notice and falls back to polling.
//!
//! Migrations are embedded and run by [`EventStore::open`] / [`EventStore::connect`] /
//! [`EventStore::migrate`].

pub mod aggregate;
pub mod model;
pub mod store;
pub mod subscription;

pub use aggregate::{
    Aggregate, Appended, Executed, Repository, RepositoryError, RepositoryOptions, Versioned,
};
pub use model::{
    AppendError, AppendOutcome, Checkpoint, EventMetadata, ExpectedVersion, NewEvent, StoreError,
    StoredEvent,
};
pub use store::EventStore;
pub use subscription::SubscribeOptions;
