//! The one command handler behind both NATS and MCP: loads a user's task list from the
//! event log, decides, appends with the expected stream version, and answers.
//!
//! Idempotency (invariant 2): every event a command appends has an id derived from
//! the command id, and a command whose events are already stored is answered from
//! those events without deciding again. Concurrency (invariant 5): appends name the
//! version they were decided on; a conflict re-reads the list and decides again.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use eventlog::{
    AppendError, EventMetadata, EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent,
};
use proto_schemas::events::{DecodeError, EventsAppended, TaskEvent, task_stream};
use proto_schemas::tasks::{TaskCommand, TaskCommandReply, ToolCall, ToolError, ToolOutput};
use proto_schemas::{EventId, Subjects};
use tokio::sync::{Mutex, MutexGuard};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::domain::{self, TaskList};

/// How many times a command is decided again after losing a race for its stream.
/// Commands for one user are serialised within a replica (see [`CommandHandler::lock`]),
/// so only other replicas can win those races; this bound is far above what N
/// replicas hammering one user need.
pub const MAX_ATTEMPTS: u32 = 30;

/// Lock stripes for per-stream serialisation within one replica.
const LOCK_STRIPES: usize = 256;

/// The label of the events a task command causes, in [`EventId::derived`].
const EVENT_LABEL: &str = "task";

/// What a client is told when a command id is sent again with a different call or user.
pub const COMMAND_ID_REUSED: &str = "This command id was already used for a different command";

/// Why a command could not be run at all (as opposed to a domain refusal, which is
/// an answer). The client may retry the same command id.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("event store failed")]
    Store(#[from] StoreError),
    #[error("append to the event store failed")]
    Append(#[source] AppendError),
    #[error("stored event {event_id} cannot be read")]
    Decode {
        event_id: EventId,
        #[source]
        source: DecodeError,
    },
    #[error("task list {stream} kept changing: gave up after {attempts} attempts")]
    Contended { stream: String, attempts: u32 },
}

impl HandleError {
    /// What the client is told: no internals, and whether waiting helps.
    pub fn public_reason(&self) -> &'static str {
        match self {
            Self::Contended { .. } => "The task list is busy right now; please try again",
            Self::Store(_) | Self::Append(_) | Self::Decode { .. } => {
                "Task storage is unavailable right now; please try again"
            }
        }
    }
}

/// Handles task commands against the event log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: EventStore,
    bus: async_nats::Client,
    subjects: Subjects,
    /// Serialises commands on one stream inside this replica, so concurrent commands
    /// for one user queue here instead of burning database round trips on conflicts.
    /// Striped rather than one lock per user, so memory stays bounded.
    stripes: Box<[Mutex<()>]>,
    hasher: RandomState,
}

impl CommandHandler {
    /// `bus` and `subjects` are where the events.appended wake-ups go after a commit.
    pub fn new(store: EventStore, bus: async_nats::Client, subjects: Subjects) -> Self {
        let stripes = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        Self {
            inner: Arc::new(Inner {
                store,
                bus,
                subjects,
                stripes,
                hasher: RandomState::new(),
            }),
        }
    }

    /// Runs one command and answers it. Never fails: a store failure becomes
    /// [`TaskCommandReply::Unavailable`] (logged with its cause), a domain refusal an
    /// applied `{"error", …}` output.
    pub async fn handle(&self, command: TaskCommand) -> TaskCommandReply {
        let span = tracing::info_span!(
            "handle_task_command",
            command_id = %command.command_id,
            user_id = %command.user_id,
            tool = command.call.name(),
        );
        async {
            match self.execute(&command).await {
                Ok(output) => {
                    tracing::debug!(refused = output.is_error(), "task command handled");
                    TaskCommandReply::Applied { output }
                }
                Err(error) => {
                    tracing::error!(error = %error_chain(&error), "task command failed");
                    TaskCommandReply::Unavailable {
                        reason: error.public_reason().to_owned(),
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn execute(&self, command: &TaskCommand) -> Result<ToolOutput, HandleError> {
        let stream = task_stream(&command.user_id);
        // Reads change nothing, so they need neither the lock nor the replay check.
        if let ToolCall::ListTasks(args) = &command.call {
            let (list, _) = fold(&self.inner.store.read_stream(&stream).await?)?;
            return Ok(ToolOutput::Listing(list.list(args.status)));
        }

        let _serialised = self.lock(&stream).await;
        let cause = command.command_id.as_uuid();
        let caused = self.inner.store.find_by_causation(cause).await?;
        if !caused.is_empty() {
            tracing::info!(
                events = caused.len(),
                "command seen before, answering from its events"
            );
            return self.replay(command, &stream, &caused).await;
        }

        let metadata = metadata_for(command);
        for attempt in 1..=MAX_ATTEMPTS {
            let (list, version) = fold(&self.inner.store.read_stream(&stream).await?)?;
            let (events, output) = domain::execute(&list, &command.call);
            if events.is_empty() {
                return Ok(output);
            }
            let batch: Vec<NewEvent> = (0u32..)
                .zip(&events)
                .map(|(index, event)| {
                    let id = EventId::derived(cause, EVENT_LABEL, index);
                    NewEvent::new(id, event, metadata.clone())
                })
                .collect();
            match self
                .inner
                .store
                .append(&stream, ExpectedVersion::Exact(version), &batch)
                .await
            {
                // A duplicate of this command, handled by another replica, got there first.
                Ok(outcome) if outcome.already_stored => {
                    tracing::info!(
                        "a duplicate of this command was stored first, answering from it"
                    );
                    let caused = self.inner.store.find_by_causation(cause).await?;
                    return self.replay(command, &stream, &caused).await;
                }
                Ok(outcome) => {
                    let notice = EventsAppended {
                        stream: stream.clone(),
                        last_position: outcome.last_position,
                    };
                    platform::bus::notify_appended(&self.inner.bus, &self.inner.subjects, &notice)
                        .await;
                    return Ok(output);
                }
                Err(AppendError::Conflict { actual, .. }) => {
                    tracing::debug!(
                        attempt,
                        expected = version,
                        actual,
                        "task list moved, deciding again"
                    );
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(error) => return Err(HandleError::Append(error)),
            }
        }
        Err(HandleError::Contended {
            stream,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The first answer to a command whose events are stored: the list as it was just
    /// before them, then what the events say.
    async fn replay(
        &self,
        command: &TaskCommand,
        stream: &str,
        caused: &[StoredEvent],
    ) -> Result<ToolOutput, HandleError> {
        let reused = || {
            ToolOutput::Refused(ToolError {
                error: COMMAND_ID_REUSED.to_owned(),
                task_id: None,
            })
        };
        if caused.iter().any(|event| event.stream_id != stream) {
            tracing::warn!(stream, "command id already used on another stream");
            return Ok(reused());
        }
        let first = caused
            .iter()
            .map(|event| event.stream_version)
            .min()
            .unwrap_or(0);
        let history = self.inner.store.read_stream(stream).await?;
        let before: Vec<StoredEvent> = history
            .into_iter()
            .filter(|event| event.stream_version < first)
            .collect();
        let (before, _) = fold(&before)?;
        let events = decode_all(caused)?;
        Ok(
            domain::report(&before, &command.call, &events).unwrap_or_else(|| {
                tracing::warn!("command id already used for a different call");
                reused()
            }),
        )
    }

    async fn lock(&self, stream: &str) -> MutexGuard<'_, ()> {
        let stripes = &self.inner.stripes;
        let index =
            usize::try_from(self.inner.hasher.hash_one(stream)).unwrap_or(0) % stripes.len();
        stripes[index].lock().await
    }

    /// A short, growing, jittered pause, so replicas that collided do not collide again.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling_micros = u64::from(attempt.min(20)) * 2_000;
        let jitter = self
            .inner
            .hasher
            .hash_one((attempt, std::time::Instant::now()))
            % ceiling_micros;
        Duration::from_micros(ceiling_micros / 2 + jitter / 2)
    }
}

/// The list after `events` and the stream version it is at.
fn fold(events: &[StoredEvent]) -> Result<(TaskList, u64), HandleError> {
    let decoded = decode_all(events)?;
    let version = events.last().map_or(0, |event| event.stream_version);
    Ok((TaskList::from_events(&decoded), version))
}

fn decode_all(events: &[StoredEvent]) -> Result<Vec<TaskEvent>, HandleError> {
    events
        .iter()
        .map(|event| {
            event
                .decode::<TaskEvent>()
                .map_err(|source| HandleError::Decode {
                    event_id: event.event_id,
                    source,
                })
        })
        .collect()
}

fn metadata_for(command: &TaskCommand) -> EventMetadata {
    let (traceparent, tracestate) = current_trace_context();
    EventMetadata {
        causation_id: Some(command.command_id.as_uuid()),
        correlation_id: command.correlation_id,
        user_id: Some(command.user_id.to_string()),
        traceparent,
        tracestate,
    }
}

/// The W3C `traceparent` / `tracestate` of the current span, stored with each event so
/// that a read model's work can be linked back to the command that caused it.
fn current_trace_context() -> (Option<String>, Option<String>) {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    let tracestate = carrier
        .remove("tracestate")
        .filter(|state| !state.is_empty());
    (carrier.remove("traceparent"), tracestate)
}

/// `error: cause: cause …`, for one log field.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
