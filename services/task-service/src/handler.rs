//! The one command handler behind both NATS and MCP: decides a command on the user's
//! task list and appends the decision, through the event log's typed core
//! ([`eventlog::Repository`]: a cached list, checked by the expected version of the
//! append, docs/ARCHITECTURE.md invariant 5).
//!
//! Idempotency (invariant 2): every event a command appends has an id derived from
//! the command id. A command whose events are stored already is answered from those
//! events, without deciding again: a re-decision that produces events finds their ids
//! stored on append; one that produces none (a refusal, a no-op) looks its command up
//! before answering.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use eventlog::{
    EventMetadata, EventStore, Executed, Repository, RepositoryError, RepositoryOptions,
    StoreError, StoredEvent,
};
use proto_schemas::events::{EventsAppended, StreamId};
use proto_schemas::tasks::{TaskCommand, TaskCommandReply, ToolCall, ToolError, ToolOutput};
use proto_schemas::{EventId, Subjects};
use tokio::sync::{Mutex, MutexGuard};
use tracing::Instrument as _;

use crate::domain::{self, TaskList};

/// Lock stripes for per-stream serialisation within one replica.
const LOCK_STRIPES: usize = 256;

/// The label of the events a task command causes, in [`EventId::derived`].
const EVENT_LABEL: &str = "task";

/// What a client is told when a command id is sent again with a different call or user.
pub(crate) const COMMAND_ID_REUSED: &str =
    "This command id was already used for a different command";

/// Why a command could not be run at all (as opposed to a domain refusal, which is
/// an answer). The client may retry the same command id.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    #[error("event store failed")]
    Store(#[from] StoreError),
    #[error("task list failed to load or change")]
    Repository(#[from] RepositoryError),
}

impl HandleError {
    /// What the client is told: no internals, and whether waiting helps.
    pub(crate) fn public_reason(&self) -> &'static str {
        match self {
            Self::Repository(RepositoryError::Contended { .. }) => {
                "The task list is busy right now; please try again"
            }
            Self::Store(_) | Self::Repository(_) => {
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
    lists: Repository<TaskList>,
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
                lists: Repository::new(store, RepositoryOptions::default()),
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
                    tracing::error!(error = %platform::error_chain(&error), "task command failed");
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
        let lists = &self.inner.lists;
        let stream = StreamId::Tasks(command.user_id.clone());
        // Reads change nothing, so they need neither the lock nor the replay check.
        if let ToolCall::ListTasks(args) = &command.call {
            let list = lists.load(&stream).await?;
            return Ok(ToolOutput::Listing(list.state.list(args.status)));
        }

        let _serialised = self.lock(&stream).await;
        let cause = command.command_id.as_uuid();
        let metadata = EventMetadata::traced(
            Some(cause),
            command.correlation_id,
            Some(command.user_id.to_string()),
        );
        let executed = lists
            .execute(&stream, &metadata, |list| {
                let (events, output) = domain::execute(list, &command.call);
                let events = (0u32..)
                    .zip(events)
                    .map(|(index, event)| (EventId::derived(cause, EVENT_LABEL, index), event))
                    .collect();
                (events, output)
            })
            .await?;
        match executed {
            Executed::Decided {
                output,
                appended: Some(outcome),
            } => {
                if command.notify_appended {
                    let notice = EventsAppended {
                        stream: stream.to_string(),
                        last_position: outcome.last_position,
                    };
                    platform::bus::notify_appended(&self.inner.bus, &self.inner.subjects, &notice)
                        .await;
                }
                Ok(output)
            }
            // A refusal or a no-op: the answer, unless this command ran before and
            // changed the list then (a retried delete must not answer "not found").
            Executed::Decided {
                output,
                appended: None,
            } => {
                let caused = lists.store().find_by_causation(cause).await?;
                if caused.is_empty() {
                    Ok(output)
                } else {
                    tracing::info!(
                        events = caused.len(),
                        "command seen before, answering from its events"
                    );
                    self.replay(command, &stream, &caused).await
                }
            }
            Executed::AlreadyStored(_) => {
                tracing::info!("command seen before, answering from its events");
                let caused = lists.store().find_by_causation(cause).await?;
                self.replay(command, &stream, &caused).await
            }
        }
    }

    /// The first answer to a command whose events are stored: the list as it was just
    /// before them, then what the events say.
    ///
    /// Reads the stream up to those events: a rare path (a retried command), so it
    /// does not need a snapshot of the list as it was then.
    async fn replay(
        &self,
        command: &TaskCommand,
        stream: &StreamId,
        caused: &[StoredEvent],
    ) -> Result<ToolOutput, HandleError> {
        let stream = stream.to_string();
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
        let before_count = u32::try_from(first.saturating_sub(1)).unwrap_or(u32::MAX);
        let before = self
            .inner
            .lists
            .store()
            .read_stream_after(&stream, 0, Some(before_count))
            .await?;
        let before = TaskList::from_events(&Repository::<TaskList>::decode_all(&before)?);
        let events = Repository::<TaskList>::decode_all(caused)?;
        Ok(
            domain::report(&before, &command.call, &events).unwrap_or_else(|| {
                tracing::warn!("command id already used for a different call");
                reused()
            }),
        )
    }

    async fn lock(&self, stream: &StreamId) -> MutexGuard<'_, ()> {
        let stripes = &self.inner.stripes;
        let index =
            usize::try_from(self.inner.hasher.hash_one(stream)).unwrap_or(0) % stripes.len();
        stripes[index].lock().await
    }
}
