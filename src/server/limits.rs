//! Per-user limits: how many requests a minute each user may make.

use std::{
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};

use super::ApiError;
use crate::UserId;

/// Per-user limits, each off by default. Part of [`ServerOptions`](super::ServerOptions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// How many requests each user may make a minute, in a burst or spread out; past it, `429`
    /// with `Retry-After`. Counted per server instance.
    pub requests_per_minute: Option<NonZeroU32>,
}

/// How many checks pass between two sweeps of users who have not asked lately, so that the
/// limiter's memory follows the active users rather than every user ever seen.
const SWEEP_EVERY: u64 = 4096;

/// A request rate per user (GCRA, with `governor`): a full minute's quota as a burst, then one
/// request per slice of the minute.
#[derive(Debug)]
pub(crate) struct RateLimit {
    limiter: RateLimiter<UserId, DefaultKeyedStateStore<UserId>, DefaultClock>,
    checks: AtomicU64,
}

impl RateLimit {
    pub(crate) fn new(per_minute: NonZeroU32) -> Self {
        RateLimit {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts a request of `user`: a `429` with `Retry-After` when it is one too many.
    pub(crate) fn check(&self, user: &UserId) -> Result<(), TooManyRequests> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(user).map_err(|not_until| {
            TooManyRequests(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }
}

/// A `429 Too Many Requests` whose `Retry-After` says when the next request will pass.
#[derive(Debug)]
pub(crate) struct TooManyRequests(Duration);

impl IntoResponse for TooManyRequests {
    fn into_response(self) -> Response {
        // Whole seconds, rounded up: a client that waits that long is let through.
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests: try again in {secs} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_a_minute_then_retry_after() {
        let limit = RateLimit::new(NonZeroU32::new(3).unwrap());
        let (a, b) = (UserId::new("a").unwrap(), UserId::new("b").unwrap());
        for _ in 0..3 {
            limit.check(&a).unwrap();
        }
        let refused = limit.check(&a).unwrap_err().into_response();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // One request every 20 s.
        assert!((1..=20).contains(&retry_after), "{retry_after}");
        // Another user is not affected.
        limit.check(&b).unwrap();
    }
}
