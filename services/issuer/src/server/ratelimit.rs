//! Per-caller rate limit (SPEC §5: 429 with `Retry-After`), keyed on the attested
//! SPIFFE ID rather than the address: many functions share a NAT, and one caller
//! can come from many addresses.

use std::num::NonZeroU32;
use std::time::Duration;

use baton_proto::SpiffeId;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Governor};

/// Introspection and revocation requests per second one caller may make, and as many
/// at once, unless configured (`introspect_rate_limit`). A callee that introspects
/// every token it receives needs as many as all its callers' tokens together, so the
/// default sits well above the token rate; what it bounds is one flooding identity.
pub const DEFAULT_INTROSPECT_RATE: u32 = 1000;

/// A token bucket per caller.
pub struct RateLimiter {
    inner: Governor<SpiffeId, DefaultKeyedStateStore<SpiffeId>, DefaultClock>,
    clock: DefaultClock,
}

impl RateLimiter {
    /// `per_second` sustained, `burst` at once (both at least 1).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        Self::with_quota(Quota::per_second(rate), burst)
    }

    /// `per_minute` sustained, and as many at once (at least 1): for rare requests
    /// such as certificate renewals.
    pub fn per_minute(per_minute: u32) -> Self {
        let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self::with_quota(Quota::per_minute(rate), per_minute)
    }

    fn with_quota(quota: Quota, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        Self {
            inner: Governor::new(
                quota.allow_burst(burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }

    /// Takes one request from `caller`'s bucket, or says how long to wait.
    pub fn check(&self, caller: &SpiffeId) -> Result<(), Duration> {
        self.inner
            .check_key(caller)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets callers whose buckets are full again, bounding memory.
    pub fn forget_idle(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_wait_per_caller() {
        let limiter = RateLimiter::new(1, 2);
        let a: SpiffeId = "spiffe://example.org/a".parse().unwrap();
        let b: SpiffeId = "spiffe://example.org/b".parse().unwrap();
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_ok());
        let wait = limiter.check(&a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limiter.check(&b).is_ok(), "callers have separate buckets");
    }

    #[test]
    fn per_minute_quota_refills_over_a_minute() {
        let limiter = RateLimiter::per_minute(3);
        let a: SpiffeId = "spiffe://example.org/a".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(&a).is_ok());
        }
        let wait = limiter.check(&a).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
    }
}
