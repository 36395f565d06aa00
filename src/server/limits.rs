//! Per-user limits: how many requests a minute each user may make, and how many live replies
//! each may have at once.

use std::{
    hash::{BuildHasher, RandomState},
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

use tokio::sync::{Mutex, MutexGuard};

use super::{ApiError, AppState};
use crate::{StreamHub, UserId};

/// Per-user limits, each off by default. Part of [`ServerOptions`](super::ServerOptions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// How many requests each user may make a minute, in a burst or spread out; past it, `429`
    /// with `Retry-After`. Counted per server instance.
    pub requests_per_minute: Option<NonZeroU32>,
    /// How many live replies each user may have at once; one more (a send, a regenerate, a
    /// `useChat` request) is `429`. Counted by the hub ([`StreamHub::live_count`]), so across
    /// every instance sharing it; a hub that cannot count does not limit.
    pub max_live_per_user: Option<usize>,
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

/// How many stripes of turns the users of one instance share.
const TURNS: usize = 64;

/// At most `max` live replies per user, counted by the hub.
///
/// Counting and starting are two steps: a user's next reply waits for its turn on this
/// instance (one of a few striped locks), so that two requests of one user here cannot both
/// pass at the limit. Requests racing on two instances can, by one reply each, for a moment.
#[derive(Debug)]
pub(crate) struct LiveLimit {
    max: usize,
    turns: Vec<Mutex<()>>,
    hasher: RandomState,
}

impl LiveLimit {
    pub(crate) fn new(max: usize) -> Self {
        LiveLimit {
            max,
            turns: (0..TURNS).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The user's turn to start a reply (to hold until it has started), or `429` when they
    /// already have `max` live replies.
    async fn admit(
        &self,
        hub: &dyn StreamHub,
        owner: &UserId,
    ) -> Result<MutexGuard<'_, ()>, ApiError> {
        let stripe = self.hasher.hash_one(owner) as usize % self.turns.len();
        let turn = self.turns[stripe].lock().await;
        match hub.live_count(owner).await? {
            Some(live) if live >= self.max => {
                tracing::info!(user = %owner, live, "live reply limit reached");
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_live_replies",
                    format!(
                        "at most {} live replies at once: wait for one to finish, or stop one",
                        self.max
                    ),
                ))
            }
            _ => Ok(turn),
        }
    }
}

/// Before a reply of `owner` starts: the turn to hold until it has started (`None` without a
/// limit), or `429`.
pub(crate) async fn live_turn<'a>(
    state: &'a AppState,
    owner: &UserId,
) -> Result<Option<MutexGuard<'a, ()>>, ApiError> {
    let Some(limit) = &state.gate.live else {
        return Ok(None);
    };
    limit.admit(&**state.service.hub(), owner).await.map(Some)
}
