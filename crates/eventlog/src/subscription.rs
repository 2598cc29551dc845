//! A tail of the whole log: catch up from a checkpoint, then follow new events.
//!
//! The tail reads in batches with [`EventStore::read_all`] (gap-free), waits for a
//! wake-up notice (any stream of `()`, e.g. the NATS `events.appended` subject) when it
//! has caught up, and polls on a timer as well, so a lost notice costs latency and
//! never an event. Events just committed may still sit above the reading horizon
//! while an older transaction is open; after a wake-up that found nothing the tail
//! therefore looks again quickly a few times before it goes back to waiting.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt as _, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::model::{Checkpoint, StoreError, StoredEvent};
use crate::store::EventStore;

/// How a subscription reads and waits.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Events read per query.
    pub batch_size: u32,
    /// The longest wait between reads when no wake-up arrives.
    pub poll_interval: Duration,
    /// Delays of the quick re-reads after a wake-up that found nothing new.
    pub settle_delays: Vec<Duration>,
    /// Pause after a failed read before trying again.
    pub retry_delay: Duration,
    /// The shortest time between two reads while caught up. Under a steady stream of
    /// appends every wake-up would otherwise read (and hand on) a handful of events;
    /// waiting a little lets them gather into one read and one batch downstream, at
    /// the cost of that much more lag. Catching up (full batches) never waits.
    pub min_read_interval: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            poll_interval: Duration::from_millis(500),
            settle_delays: [5, 20, 50, 100].map(Duration::from_millis).to_vec(),
            retry_delay: Duration::from_secs(1),
            min_read_interval: Duration::ZERO,
        }
    }
}

impl EventStore {
    /// Every event after `after`, in the log's reading order, without end. A read
    /// failure is yielded as an error item and the tail retries after
    /// `retry_delay`; dropping the stream stops it.
    pub fn subscribe<W>(
        &self,
        after: Checkpoint,
        wakeups: W,
        options: SubscribeOptions,
    ) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + Unpin + 'static
    where
        W: Stream<Item = ()> + Send + Unpin + 'static,
    {
        let capacity = usize::try_from(options.batch_size).unwrap_or(1_000).max(1);
        let (sender, receiver) = mpsc::channel(capacity);
        tokio::spawn(tail(self.clone(), after, wakeups.boxed(), options, sender));
        ReceiverStream::new(receiver)
    }
}

async fn tail(
    store: EventStore,
    mut checkpoint: Checkpoint,
    mut wakeups: BoxStream<'static, ()>,
    options: SubscribeOptions,
    sender: mpsc::Sender<Result<StoredEvent, StoreError>>,
) {
    // Quick re-reads still owed after the last wake-up.
    let mut settle = Vec::new();
    // When the next read may start, unless the last one came back full.
    let mut next_read = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_read) => {}
            () = sender.closed() => return,
        }
        next_read = tokio::time::Instant::now() + options.min_read_interval;
        match store.read_all(checkpoint, options.batch_size).await {
            Ok(batch) => {
                let full = batch.len() >= usize::try_from(options.batch_size).unwrap_or(usize::MAX);
                if full {
                    next_read = tokio::time::Instant::now();
                }
                let found = !batch.is_empty();
                for event in batch {
                    checkpoint = event.checkpoint();
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if found {
                    // More may be just below the horizon: look again after a short pause.
                    settle = options.settle_delays.clone();
                    settle.reverse();
                }
            }
            Err(error) => {
                tracing::warn!(%error, "event log read failed; retrying");
                if sender.send(Err(error)).await.is_err() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(options.retry_delay) => {}
                    () = sender.closed() => return,
                }
                continue;
            }
        }
        let wait = settle.pop().unwrap_or(options.poll_interval);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            woken = wakeups.next() => match woken {
                Some(()) => {
                    // Notices that queued up meanwhile all say "look again": one read
                    // answers them all.
                    while let Some(Some(())) = wakeups.next().now_or_never() {}
                    settle = options.settle_delays.clone();
                    settle.reverse();
                }
                // The wake-up source ended: carry on with the poll timer alone.
                None => wakeups = futures::stream::pending().boxed(),
            },
            () = sender.closed() => return,
        }
    }
}
