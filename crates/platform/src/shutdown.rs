//! The root shutdown signal: SIGTERM (Kubernetes, docker stop) or SIGINT (Ctrl-C)
//! cancel one token; the HTTP server, consumers and other loops watch child tokens,
//! finish what they are doing and stop. A process that has not stopped within its
//! grace period then exits anyway: a shutdown that waits on an unreachable NATS or
//! Postgres must not hang until the orchestrator kills it.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT; `grace` after that the process
/// exits with status 1 if it is still running. Call from inside the runtime.
///
/// The handlers are installed before this returns, so a signal that arrives right
/// after start-up is not lost (nor does it kill the process with the default action).
pub fn signal_token(grace: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate());
    let mut interrupt = signal(SignalKind::interrupt());
    let cancel = token.clone();
    tokio::spawn(async move {
        let (terminate, interrupt) = match (terminate.as_mut(), interrupt.as_mut()) {
            (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
            (Err(error), _) | (_, Err(error)) => {
                // Without handlers the default action (exit) still stops the process.
                tracing::error!(%error, "failed to install signal handlers");
                return;
            }
        };
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            () = cancel.cancelled() => return,
        }
        cancel.cancel();
        tokio::time::sleep(grace).await;
        tracing::error!(
            grace_secs = grace.as_secs(),
            "shutdown did not finish within its grace period, exiting now"
        );
        std::process::exit(1);
    });
    token
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // Sends SIGTERM to this very test process: the handler installed by
    // `signal_token` must turn it into a cancellation instead of an exit.
    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        // The test ends long before the grace period would end the test process.
        let token = signal_token(Duration::from_secs(3600));
        assert!(!token.is_cancelled());
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("token was not cancelled by SIGTERM");
    }
}
