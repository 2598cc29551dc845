//! The turns this replica is running, each with a token that stops it: a cancelled
//! turn's model call is dropped at once (aborting the HTTP call) and no further tool
//! call starts.
//!
//! Every replica subscribes to `chat.cancelled.*` (core NATS, no queue group: only
//! the replica running the turn knows it) and cancels the matching token. The
//! cancellation itself is recorded in the log before the broadcast (see
//! `commands.rs`), so a replica that registers a turn after the broadcast still
//! finds the ending when it opens the turn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use proto_schemas::RequestId;
use tokio_util::sync::CancellationToken;

/// Request id → the token of the turn running it on this replica.
#[derive(Debug, Default)]
pub(crate) struct RunningTurns {
    turns: Mutex<HashMap<RequestId, Registered>>,
}

#[derive(Debug)]
struct Registered {
    token: CancellationToken,
    /// Runs of this request on this replica (a redelivery may overlap the first run).
    runs: usize,
}

impl RunningTurns {
    /// Registers a run of `request`; the guard unregisters it when dropped. Runs of
    /// one request on this replica share one token.
    pub(crate) fn register(self: &Arc<Self>, request: RequestId) -> RunningTurn {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = turns.entry(request).or_insert_with(|| Registered {
            token: CancellationToken::new(),
            runs: 0,
        });
        entry.runs += 1;
        RunningTurn {
            token: entry.token.clone(),
            request,
            turns: Arc::clone(self),
        }
    }

    /// Stops `request`'s turn if it runs here; whether it did.
    pub(crate) fn cancel(&self, request: RequestId) -> bool {
        let turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        match turns.get(&request) {
            Some(registered) => {
                registered.token.cancel();
                true
            }
            None => false,
        }
    }
}

/// One run of a turn, registered until dropped.
#[derive(Debug)]
pub(crate) struct RunningTurn {
    token: CancellationToken,
    request: RequestId,
    turns: Arc<RunningTurns>,
}

impl RunningTurn {
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for RunningTurn {
    fn drop(&mut self) {
        let mut turns = self
            .turns
            .turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(registered) = turns.get_mut(&self.request) {
            registered.runs -= 1;
            if registered.runs == 0 {
                turns.remove(&self.request);
            }
        }
    }
}

/// Cancels the turns named on `cancellations` (`<prefix>.chat.cancelled.<request_id>`)
/// until `shutdown`.
pub(crate) async fn listen(
    turns: Arc<RunningTurns>,
    mut cancellations: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            message = cancellations.next() => match message {
                Some(message) => message,
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        let request = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|token| token.parse::<RequestId>().ok());
        match request {
            Some(request) if turns.cancel(request) => {
                tracing::info!(%request, "stopping a cancelled turn");
            }
            Some(_) => {}
            None => tracing::warn!(subject = %message.subject, "ignoring a malformed cancellation"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_every_run_of_the_turn_while_it_is_registered() {
        let turns = Arc::new(RunningTurns::default());
        let request = RequestId::new();
        let first = turns.register(request);
        let second = turns.register(request);
        drop(first);
        assert!(turns.cancel(request));
        assert!(second.token().is_cancelled());
        drop(second);
        assert!(!turns.cancel(request), "unregistered with its last run");
        let again = turns.register(request);
        assert!(!again.token().is_cancelled(), "a new run starts afresh");
        assert!(!turns.cancel(RequestId::new()));
    }
}
