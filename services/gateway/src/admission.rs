//! Admission of chat turns, before anything is queued: how many messages one user may
//! send per minute to this replica (a keyed GCRA limiter from `governor`).
//!
//! The other two bounds, turns one user has waiting or running and turns queued in
//! all, hold across every replica because the requests stream enforces them when a
//! request is published (see `platform::streams::QueueLimits`); `turn::publish` turns
//! its refusals into the same kind of error as here.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use proto_schemas::UserId;

use crate::error::ApiError;

/// Checks between two sweeps of users idle long enough to have their full quota back:
/// what bounds the limiter's memory to the users active within about a minute.
const SWEEP_EVERY: u64 = 4_096;

/// The per-user rate of chat messages on this replica.
pub(crate) struct TurnRate {
    limiter: Option<DefaultKeyedRateLimiter<UserId>>,
    checks: AtomicU64,
}

impl TurnRate {
    /// `per_minute` messages a minute per user, as a burst or spread out; 0: no limit.
    pub(crate) fn per_minute(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute)
                .map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate))),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one message of `user`'s quota, or says how long until one is free.
    pub(crate) fn admit(&self, user: &UserId) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(user).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }
}

impl std::fmt::Debug for TurnRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRate")
            .field("limited", &self.limiter.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn each_user_has_a_quota_of_their_own() {
        let rate = TurnRate::per_minute(2);
        assert!(rate.admit(&user("ada")).is_ok());
        assert!(rate.admit(&user("ada")).is_ok());
        match rate.admit(&user("ada")) {
            Err(ApiError::RateLimited { retry_after_secs }) => {
                assert!((1..=30).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(rate.admit(&user("bob")).is_ok());
    }

    #[test]
    fn zero_means_no_limit() {
        let rate = TurnRate::per_minute(0);
        for _ in 0..1_000 {
            assert!(rate.admit(&user("ada")).is_ok());
        }
    }
}
