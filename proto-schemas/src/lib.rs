//! The wire contract of taskchat: every message that crosses NATS and every event
//! stored in the log, as serde types with JSON Schemas checked in under `schemas/`.
//!
//! # Layout
//! - [`ids`]: typed identifiers (UUIDv7 for internal ids, per-user task numbers).
//! - [`subjects`]: every subject, stream, consumer and bucket name, in one place.
//! - [`chat`]: chat requests, replies and streamed chunks (gateway <-> agent-worker).
//! - [`tasks`]: task commands sent as tool calls and their results (reference shapes).
//! - [`tools`]: the task tools' definitions (descriptions and schemas) for MCP and the
//!   model, generated from [`tasks`].
//! - [`queries`]: read-model queries answered by the projection.
//! - [`events`]: the task and conversation events, their type names, schema
//!   versions and the upcasting hook.
//! - [`schema`]: the registry that generates and checks the JSON Schema files.

pub mod chat;
pub mod conversations;
pub mod events;
pub mod ids;
pub mod queries;
pub mod schema;
pub mod subjects;
pub mod tasks;
pub mod tools;

pub use ids::{ApprovalId, CommandId, ConversationId, EventId, RequestId, TaskNumber, UserId};
pub use subjects::Subjects;
