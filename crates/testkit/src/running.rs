//! Something a test runs in-process (a service's `App::run`, a stub server) on its own
//! task until the test stops it, cancels it or drops it.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a clean stop may take before [`Running::stop`] panics.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A spawned task driven by a cancellation token; dropping it cancels the token (the
/// task then winds down on its own, unobserved).
#[derive(Debug)]
pub struct Running {
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Spawns `run(token)` on the current runtime. Any error type that converts into
    /// `anyhow::Error` will do, so `|token| app.run(token)` fits every service.
    pub fn spawn<F, E>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error> + 'static,
    {
        let shutdown = CancellationToken::new();
        let running = run(shutdown.clone());
        let task = tokio::spawn(async move { running.await.map_err(Into::into) });
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }

    /// Cancels and waits until the task has stopped cleanly; panics when it takes
    /// longer than 30 s, panicked or returned an error.
    pub async fn stop(self) {
        self.stop_within(STOP_TIMEOUT).await;
    }

    /// [`Self::stop`] with a time limit of the test's choosing.
    pub async fn stop_within(mut self, limit: Duration) {
        self.shutdown.cancel();
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(limit, task)
            .await
            .unwrap_or_else(|_| panic!("did not stop within {limit:?}"))
            .expect("panicked")
            .expect("failed");
    }

    /// Ends the task the hard way (as a crash would: no graceful shutdown) and waits
    /// until it is gone.
    pub async fn abort(mut self) {
        let task = self.task.take().expect("stopped once");
        task.abort();
        let _ = task.await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
