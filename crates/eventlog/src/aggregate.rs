//! The typed core every writer uses: a stream's state as a fold of its events
//! ([`Aggregate`]), loaded through a [`Repository`] from a cache, a snapshot and only
//! the events after it, and changed only by appends that name the version the change
//! was decided on.
//!
//! Why a writer's cost does not grow with its stream: a state is kept in a bounded
//! in-process cache keyed by stream; a cache miss loads the stream's snapshot and the
//! events after it; a snapshot is written every [`RepositoryOptions::snapshot_every`]
//! events by whoever appended them. A cached state may be stale (another replica
//! appended since), so it is never trusted blindly: every append names the version
//! the decision was made on, and a conflict brings the state up to date by reading
//! only the events after that version, then the caller decides again (invariant 5 of
//! docs/ARCHITECTURE.md). A decision that appends nothing (a refusal, a no-op) cannot
//! be checked by an append, so [`Repository::execute`] confirms it on fresh state.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder as _;
use proto_schemas::EventId;
use proto_schemas::events::{DecodeError, EventFamily, StreamId};
use quick_cache::sync::Cache;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{
    AppendError, AppendOutcome, EventMetadata, ExpectedVersion, NewEvent, StoreError, StoredEvent,
};
use crate::store::EventStore;

/// A stream's state: a pure fold of its events.
///
/// The state is also its snapshot (serde), so it must hold only what the fold
/// produces, and stay bounded: a state that grows with its stream makes every load
/// and snapshot grow with it.
pub trait Aggregate:
    Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    type Event: EventFamily + Send + Sync;

    /// Names the snapshot's shape. Change it whenever the state's fields change:
    /// snapshots of another shape are ignored and the state is folded again.
    const SNAPSHOT_SCHEMA: &'static str;

    /// Folds one event in. Events are facts: an odd one is tolerated, not refused.
    fn apply(&mut self, event: &Self::Event);

    /// Roughly how many bytes the state holds: its share of the cache's budget.
    fn weight(&self) -> u64 {
        1024
    }
}

/// A state and the version of the stream it is the fold of (0: no events yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Versioned<A> {
    pub state: A,
    pub version: u64,
}

impl<A> Versioned<A> {
    /// What an append decided on this state expects the stream to be at.
    pub fn expected(&self) -> ExpectedVersion {
        if self.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(self.version)
        }
    }
}

/// Settings of a [`Repository`].
#[derive(Debug, Clone, Copy)]
pub struct RepositoryOptions {
    /// A snapshot is written each time a stream's version passes a multiple of this,
    /// which bounds a cold load to one snapshot row plus at most about this many events.
    pub snapshot_every: u64,
    /// The cache's budget, in bytes as the states' [`Aggregate::weight`] counts them.
    pub cache_bytes: u64,
    /// Decisions tried on a stream that keeps moving before giving up.
    pub max_attempts: u32,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        Self {
            snapshot_every: 100,
            cache_bytes: 64 * 1024 * 1024,
            max_attempts: 30,
        }
    }
}

/// Why a load or a write did not happen. A conflict is not an error: see [`Appended`].
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored event {event_id} of stream {stream} cannot be read")]
    Decode {
        stream: String,
        event_id: EventId,
        #[source]
        source: DecodeError,
    },
    /// Some but not all of a batch's event ids are stored: a caller bug, since a
    /// retried decision must carry the same ids as the first.
    #[error("some events of the batch for stream {stream} are stored already, others are not")]
    PartiallyStored { stream: String },
    #[error("an append needs at least one event")]
    Empty,
    #[error("stream {stream} kept changing: gave up after {attempts} decisions")]
    Contended { stream: String, attempts: u32 },
}

impl RepositoryError {
    /// Whether trying again can help. A value the database refuses (SQLSTATE class 22,
    /// data exception; 54, program limit exceeded), an event that does not decode or a
    /// batch that is partly stored fail the same way every time: the caller should
    /// give up at once rather than retry. Lost connections, time-outs and contention
    /// pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Decode { .. } | Self::PartiallyStored { .. } | Self::Empty => true,
            Self::Store(StoreError::Corrupt { .. }) => true,
            Self::Store(StoreError::Database(error)) => error
                .as_database_error()
                .and_then(|db| db.code())
                .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
            Self::Store(StoreError::Migrate(_)) | Self::Contended { .. } => false,
        }
    }
}

/// What an append did. In every case `current` is left at what the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Appended {
    /// Written; `current` includes the events.
    Written(AppendOutcome),
    /// Every event id was stored already (a retried decision): nothing was written,
    /// and `current` was brought up to date.
    AlreadyStored(AppendOutcome),
    /// Another writer moved the stream first: nothing was written, `current` was
    /// brought up to date, decide again.
    Conflict { actual: u64 },
}

/// What [`Repository::execute`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Executed<T> {
    /// The decision's events were appended (`None`: it had none, on fresh state).
    Decided {
        output: T,
        appended: Option<AppendOutcome>,
    },
    /// The decision's event ids were stored by an earlier run of the same command:
    /// nothing was written, and its first answer is the caller's to reconstruct.
    AlreadyStored(AppendOutcome),
}

type StateCache<A> = Cache<String, Arc<Versioned<A>>, StateWeighter>;

#[derive(Debug, Clone, Copy)]
struct StateWeighter;

impl<A: Aggregate> quick_cache::Weighter<String, Arc<Versioned<A>>> for StateWeighter {
    fn weight(&self, key: &String, value: &Arc<Versioned<A>>) -> u64 {
        key.len() as u64 + value.state.weight()
    }
}

/// Loads and changes the streams of one aggregate type. Cheap to clone; clones share
/// the cache.
pub struct Repository<A: Aggregate> {
    store: EventStore,
    cache: Arc<StateCache<A>>,
    options: RepositoryOptions,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            cache: Arc::clone(&self.cache),
            options: self.options,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::SNAPSHOT_SCHEMA)
            .field("cached_streams", &self.cache.len())
            .field("options", &self.options)
            .finish()
    }
}

impl<A: Aggregate> Repository<A> {
    pub fn new(store: EventStore, options: RepositoryOptions) -> Self {
        let options = RepositoryOptions {
            snapshot_every: options.snapshot_every.max(1),
            max_attempts: options.max_attempts.max(1),
            ..options
        };
        // The item estimate only sizes the cache's tables; the weight is the bound.
        let estimated_items = usize::try_from(options.cache_bytes / 4096)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 20);
        Self {
            store,
            cache: Arc::new(Cache::with_weighter(
                estimated_items,
                options.cache_bytes.max(1),
                StateWeighter,
            )),
            options,
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The stream's state as the store holds it now: the cached state brought up to
    /// date with the events after it (usually none), or a cold load.
    pub async fn load(&self, stream: &StreamId) -> Result<Versioned<A>, RepositoryError> {
        let name = stream.to_string();
        match self.cached(&name) {
            Some(mut current) => {
                self.catch_up(&name, &mut current).await?;
                Ok(current)
            }
            None => self.load_cold(&name).await,
        }
    }

    /// Brings `current` up to date with the store.
    pub async fn refresh(
        &self,
        stream: &StreamId,
        current: &mut Versioned<A>,
    ) -> Result<(), RepositoryError> {
        self.catch_up(&stream.to_string(), current).await
    }

    /// Appends `events`, decided on `current`, if the stream is still at
    /// `current.version`. See [`Appended`] for what happens to `current`.
    pub async fn append(
        &self,
        stream: &StreamId,
        current: &mut Versioned<A>,
        events: &[(EventId, A::Event)],
        metadata: &EventMetadata,
    ) -> Result<Appended, RepositoryError> {
        let name = stream.to_string();
        let batch: Vec<NewEvent> = events
            .iter()
            .map(|(id, event)| NewEvent::new(*id, event, metadata.clone()))
            .collect();
        match self.store.append(&name, current.expected(), &batch).await {
            Ok(outcome) if !outcome.already_stored => {
                let before = current.version;
                for (_, event) in events {
                    current.state.apply(event);
                }
                current.version = outcome.stream_version;
                self.remember(&name, current);
                let every = self.options.snapshot_every;
                if before / every != current.version / every {
                    self.save_snapshot(&name, current).await;
                }
                Ok(Appended::Written(outcome))
            }
            Ok(outcome) => {
                self.catch_up(&name, current).await?;
                Ok(Appended::AlreadyStored(outcome))
            }
            Err(AppendError::Conflict { actual, .. }) => {
                self.catch_up(&name, current).await?;
                Ok(Appended::Conflict { actual })
            }
            Err(AppendError::PartiallyStored { stream }) => {
                Err(RepositoryError::PartiallyStored { stream })
            }
            Err(AppendError::Empty) => Err(RepositoryError::Empty),
            Err(AppendError::Store(error)) => Err(RepositoryError::Store(error)),
        }
    }

    /// Decides on the stream's state and appends the decision, deciding again on
    /// fresh state while other writers move the stream (with a short jittered pause,
    /// so that colliding writers do not collide again).
    ///
    /// `decide` returns the events to append, each with an id derived from the
    /// command (so a retried command stores nothing twice), and the answer to give
    /// once they are stored.
    pub async fn execute<T>(
        &self,
        stream: &StreamId,
        metadata: &EventMetadata,
        mut decide: impl FnMut(&A) -> (Vec<(EventId, A::Event)>, T),
    ) -> Result<Executed<T>, RepositoryError> {
        let name = stream.to_string();
        let (mut current, mut fresh) = match self.cached(&name) {
            Some(current) => (current, false),
            None => (self.load_cold(&name).await?, true),
        };
        let mut pauses = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(40))
            .with_jitter()
            .with_max_times(self.options.max_attempts as usize)
            .build();
        loop {
            let (events, output) = decide(&current.state);
            if events.is_empty() {
                if fresh {
                    return Ok(Executed::Decided {
                        output,
                        appended: None,
                    });
                }
                // Nothing to append means nothing checks the version: confirm the
                // decision on the store's state before answering it.
                self.catch_up(&name, &mut current).await?;
                fresh = true;
                continue;
            }
            match self.append(stream, &mut current, &events, metadata).await? {
                Appended::Written(outcome) => {
                    return Ok(Executed::Decided {
                        output,
                        appended: Some(outcome),
                    });
                }
                Appended::AlreadyStored(outcome) => return Ok(Executed::AlreadyStored(outcome)),
                Appended::Conflict { actual } => {
                    fresh = true;
                    let Some(pause) = pauses.next() else {
                        return Err(RepositoryError::Contended {
                            stream: name,
                            attempts: self.options.max_attempts,
                        });
                    };
                    tracing::debug!(stream = %name, actual, "stream moved, deciding again");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Decodes stored events of this aggregate's family.
    pub fn decode_all(events: &[StoredEvent]) -> Result<Vec<A::Event>, RepositoryError> {
        events
            .iter()
            .map(|event| {
                event
                    .decode::<A::Event>()
                    .map_err(|source| RepositoryError::Decode {
                        stream: event.stream_id.clone(),
                        event_id: event.event_id,
                        source,
                    })
            })
            .collect()
    }

    fn cached(&self, name: &str) -> Option<Versioned<A>> {
        self.cache.get(name).map(Arc::unwrap_or_clone)
    }

    /// Caches `current` unless the cache already holds a newer version.
    fn remember(&self, name: &str, current: &Versioned<A>) {
        if self
            .cache
            .peek(name)
            .is_some_and(|cached| cached.version >= current.version)
        {
            return;
        }
        self.cache
            .insert(name.to_owned(), Arc::new(current.clone()));
    }

    /// The snapshot (when there is one of this shape) and the events after it.
    async fn load_cold(&self, name: &str) -> Result<Versioned<A>, RepositoryError> {
        let mut current = match self.store.load_snapshot(name, A::SNAPSHOT_SCHEMA).await? {
            Some((version, state)) => match serde_json::from_value(state) {
                Ok(state) => Versioned { state, version },
                Err(error) => {
                    tracing::warn!(stream = name, %error, "snapshot does not decode, folding the stream again");
                    Versioned::default()
                }
            },
            None => Versioned::default(),
        };
        let snapshot_version = current.version;
        let events = self
            .store
            .read_stream_after(name, current.version, None)
            .await?;
        self.apply_stored(&mut current, &events)?;
        self.remember(name, &current);
        // No snapshot for a long stretch (a new state shape, or failed writes):
        // write one now, so the next cold load is short again.
        if current.version - snapshot_version > self.options.snapshot_every {
            self.save_snapshot(name, &current).await;
        }
        Ok(current)
    }

    /// Applies the events after `current.version`; when more than a snapshot's worth
    /// came in since, a cold load is cheaper than reading them all.
    async fn catch_up(
        &self,
        name: &str,
        current: &mut Versioned<A>,
    ) -> Result<(), RepositoryError> {
        let limit = u32::try_from(self.options.snapshot_every + 1).unwrap_or(u32::MAX);
        let events = self
            .store
            .read_stream_after(name, current.version, Some(limit))
            .await?;
        if events.len() as u64 > self.options.snapshot_every {
            *current = self.load_cold(name).await?;
            return Ok(());
        }
        self.apply_stored(current, &events)?;
        self.remember(name, current);
        Ok(())
    }

    fn apply_stored(
        &self,
        current: &mut Versioned<A>,
        events: &[StoredEvent],
    ) -> Result<(), RepositoryError> {
        for (stored, event) in events.iter().zip(Self::decode_all(events)?) {
            current.state.apply(&event);
            current.version = stored.stream_version;
        }
        Ok(())
    }

    /// Best effort: a snapshot only saves later loads work, so a failure is logged.
    async fn save_snapshot(&self, name: &str, current: &Versioned<A>) {
        let saved = match serde_json::to_value(&current.state) {
            Ok(state) => self
                .store
                .save_snapshot(name, A::SNAPSHOT_SCHEMA, current.version, &state)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = saved {
            tracing::warn!(stream = name, version = current.version, %error, "failed to save a snapshot");
        }
    }
}
