//! The workspace's retry schedules, built on `backon`: code that tries an operation
//! again takes its schedule from here instead of writing its own loop, so that every
//! retry in the system backs off the same way (exponentially, with jitter, bounded).

use std::time::Duration;

use backon::ExponentialBuilder;

/// For a server that should answer in a moment (a JetStream API call, a connection
/// being re-established): 4 more tries over about a second.
pub fn quick() -> ExponentialBuilder {
    exponential(Duration::from_millis(50), Duration::from_millis(500), 4)
}

/// For an idempotent step that needs the message bus while it may be restarting
/// (the client reconnects on its own; JetStream needs a moment after that): 8 more
/// tries over about 10 s, well within what a client waits for a chat answer.
pub fn bus_outage() -> ExponentialBuilder {
    exponential(Duration::from_millis(200), Duration::from_secs(2), 8)
}

/// For a request to another service that may be restarting or briefly overloaded:
/// `attempts` tries in all (at least one), pauses doubling from 200 ms up to 3 s.
pub fn service_call(attempts: u32) -> ExponentialBuilder {
    let retries = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    exponential(Duration::from_millis(200), Duration::from_secs(3), retries)
}

/// Pauses doubling from `first` up to `longest`, each jittered, for `retries` more
/// tries: the shape of every schedule here, for a caller with its own bounds (a
/// model provider's configured retries, say).
pub fn exponential(first: Duration, longest: Duration, retries: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest)
        .with_max_times(retries)
        .with_jitter()
}
