//! The optional prefetch pool (SPEC §8): per (audience, scope), a small queue of
//! one-time tokens filled by one batch mint (`count`, SPEC §5).
//!
//! Two promises, both about one-time tokens: a token leaves the queue by being popped,
//! so no two callers ever get the same one; and a pooled token is handed out only while
//! at least `min_remaining` of its validity is left, so a callee does not receive one
//! that expires in flight. The token a refill returns to its own caller is as fresh as
//! the issuer makes them and is handed out whatever its lifetime; when even fresh tokens
//! are too short-lived to pool, refills mint one token at a time instead of a batch
//! that would be thrown away.
//!
//! Only one refill per queue runs at a time (an async mutex); callers that find the
//! queue empty wait for it and then pop, so a burst of callers costs one batch mint
//! per `size` tokens rather than one each. The queue itself sits behind a std mutex
//! that is never held across an await.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_proto::SpiffeId;
use serde::Deserialize;

use super::error::TokenError;

/// Most (audience, scope) queues one pool keeps. An application that builds scopes
/// from its input would otherwise add a queue, and up to `size` tokens, per value.
pub(crate) const MAX_QUEUES: usize = 1024;

/// What a queue is keyed on: the callee and the exact scope string asked for.
pub(crate) type PoolKey = (SpiffeId, Option<String>);

/// Prefetched tokens for every (audience, scope) a client has asked for.
#[derive(Debug)]
pub(crate) struct Pool {
    size: u8,
    min_remaining: i64,
    max_queues: usize,
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    queue: Mutex<VecDeque<Pooled>>,
    /// Held while a batch mint for this key is in flight.
    refill: tokio::sync::Mutex<()>,
    /// The last mint's tokens were too short-lived to pool: mint one at a time.
    short_lived: AtomicBool,
}

struct Pooled {
    token: String,
    exp: i64,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pooled(<redacted>, exp {})", self.exp)
    }
}

impl Pool {
    /// A pool refilled `size` tokens at a time, handing out pooled tokens only while
    /// at least `min_remaining` (rounded up to whole seconds) of validity is left.
    pub(crate) fn new(size: u8, min_remaining: Duration) -> Self {
        let secs = min_remaining
            .as_secs()
            .saturating_add(u64::from(min_remaining.subsec_nanos() > 0));
        Self {
            size,
            min_remaining: i64::try_from(secs).unwrap_or(i64::MAX),
            max_queues: MAX_QUEUES,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A token for `key`: a pooled one if one is fresh enough, else the first of a new
    /// batch from `mint(count)`, the rest of which is queued. `now` gives Unix seconds.
    pub(crate) async fn take<C, F, Fut>(
        &self,
        key: PoolKey,
        now: C,
        mint: F,
    ) -> Result<String, TokenError>
    where
        C: Fn() -> i64,
        F: FnOnce(u8) -> Fut,
        Fut: Future<Output = Result<Vec<String>, TokenError>>,
    {
        let slot = self.slot(key, now());
        if let Some(token) = slot.pop_fresh(now(), self.min_remaining) {
            return Ok(token);
        }
        let _refilling = slot.refill.lock().await;
        // Another caller may have refilled the queue while this one waited.
        if let Some(token) = slot.pop_fresh(now(), self.min_remaining) {
            return Ok(token);
        }
        let count = if slot.short_lived.load(Ordering::Relaxed) {
            1
        } else {
            self.size
        };
        let mut batch = mint(count).await?.into_iter();
        let first = batch
            .next()
            .ok_or(TokenError::Malformed("the issuer returned no token"))?;
        let now = now();
        let first_fresh = unverified_exp(&first).is_some_and(|exp| self.is_fresh(exp, now));
        slot.short_lived.store(!first_fresh, Ordering::Relaxed);
        let mut queue = lock(&slot.queue);
        queue.extend(batch.filter_map(|token| {
            let exp = unverified_exp(&token)?;
            self.is_fresh(exp, now).then_some(Pooled { token, exp })
        }));
        Ok(first)
    }

    /// The queue of `key`. At [`MAX_QUEUES`], queues that no caller is using and that
    /// hold no token still fresh at `now` are forgotten first; if every queue is in use
    /// or holds fresh tokens, `key` gets a queue of its own that is not kept, minting
    /// one token at a time (nothing is minted only to be thrown away).
    fn slot(&self, key: PoolKey, now: i64) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(&key) {
            return Arc::clone(slot);
        }
        if slots.len() >= self.max_queues {
            slots.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || lock(&slot.queue).iter().any(|p| self.is_fresh(p.exp, now))
            });
        }
        if slots.len() >= self.max_queues {
            return Arc::new(Slot {
                short_lived: AtomicBool::new(true),
                ..Slot::default()
            });
        }
        Arc::clone(slots.entry(key).or_default())
    }

    fn is_fresh(&self, exp: i64, now: i64) -> bool {
        exp.saturating_sub(now) >= self.min_remaining
    }

    /// How many tokens are queued for `key` (tests).
    #[cfg(test)]
    fn queued(&self, key: &PoolKey) -> usize {
        lock(&self.slots)
            .get(key)
            .map_or(0, |slot| lock(&slot.queue).len())
    }
}

impl Slot {
    /// Pops queued tokens until one has at least `min_remaining` seconds left; the
    /// stale ones popped on the way are dropped.
    fn pop_fresh(&self, now: i64, min_remaining: i64) -> Option<String> {
        let mut queue = lock(&self.queue);
        while let Some(pooled) = queue.pop_front() {
            if pooled.exp.saturating_sub(now) >= min_remaining {
                return Some(pooled.token);
            }
        }
        None
    }
}

/// A poisoned queue is still a valid queue: every operation on it is a single push or
/// pop, so a panic elsewhere cannot leave it half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `exp` claim of a JWT, read without verifying anything. Used only to decide how
/// long to keep one of our own tokens, just received from the issuer over
/// authenticated TLS; never to accept a token.
fn unverified_exp(token: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: i64,
    }
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Exp>(&json).ok().map(|c| c.exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicI64, AtomicUsize};

    const NOW: i64 = 1_800_000_000;

    fn key(aud: &str, scope: Option<&str>) -> PoolKey {
        (aud.parse().unwrap(), scope.map(str::to_owned))
    }

    /// A token-shaped string with a unique id and the given expiry.
    fn token(id: usize, exp: i64) -> String {
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp},"jti":"{id}"}}"#));
        format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln")
    }

    /// A fake issuer: counts mints, remembers each `count`, hands out unique tokens
    /// living `ttl` seconds from the shared clock.
    #[derive(Default)]
    struct FakeIssuer {
        clock: AtomicI64,
        ttl: AtomicI64,
        next_id: AtomicUsize,
        counts: Mutex<Vec<u8>>,
    }

    impl FakeIssuer {
        fn new(ttl: i64) -> Arc<Self> {
            let issuer = Self::default();
            issuer.clock.store(NOW, Ordering::SeqCst);
            issuer.ttl.store(ttl, Ordering::SeqCst);
            Arc::new(issuer)
        }

        fn now(&self) -> i64 {
            self.clock.load(Ordering::SeqCst)
        }

        async fn mint(&self, count: u8) -> Result<Vec<String>, TokenError> {
            lock(&self.counts).push(count);
            tokio::task::yield_now().await;
            let exp = self.now() + self.ttl.load(Ordering::SeqCst);
            Ok((0..count)
                .map(|_| token(self.next_id.fetch_add(1, Ordering::SeqCst), exp))
                .collect())
        }

        fn mints(&self) -> Vec<u8> {
            lock(&self.counts).clone()
        }

        async fn take(&self, pool: &Pool, key: PoolKey) -> Result<String, TokenError> {
            pool.take(key, || self.now(), |n| self.mint(n)).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_takers_never_share_a_token_and_share_batch_mints() {
        let issuer = FakeIssuer::new(60);
        let pool = Arc::new(Pool::new(8, Duration::from_secs(10)));
        let k = key("spiffe://example.org/fn/payments", None);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (issuer, pool, k) = (Arc::clone(&issuer), Arc::clone(&pool), k.clone());
                tokio::spawn(async move { issuer.take(&pool, k).await.unwrap() })
            })
            .collect();
        let mut seen = HashSet::new();
        for task in tasks {
            assert!(
                seen.insert(task.await.unwrap()),
                "a token was handed out twice"
            );
        }
        assert_eq!(seen.len(), 64);
        // Refills are serialised and happen only on an empty queue: 64 / 8 batches.
        assert_eq!(issuer.mints(), vec![8; 8]);
        assert_eq!(pool.queued(&k), 0);
    }

    #[tokio::test]
    async fn pooled_tokens_closer_to_expiry_than_min_remaining_are_dropped() {
        let issuer = FakeIssuer::new(60);
        let pool = Pool::new(4, Duration::from_secs(10));
        let k = key("spiffe://example.org/fn/payments", None);
        issuer.take(&pool, k.clone()).await.unwrap();
        assert_eq!(pool.queued(&k), 3);
        // 50 s later the pooled tokens have exactly min_remaining left: still good.
        issuer.clock.store(NOW + 50, Ordering::SeqCst);
        issuer.take(&pool, k.clone()).await.unwrap();
        assert_eq!(issuer.mints().len(), 1);
        // One second later they have 9 s left: dropped, and a new batch is minted.
        issuer.clock.store(NOW + 51, Ordering::SeqCst);
        let fresh = issuer.take(&pool, k.clone()).await.unwrap();
        assert_eq!(unverified_exp(&fresh), Some(NOW + 51 + 60));
        assert_eq!(issuer.mints(), vec![4, 4]);
        assert_eq!(pool.queued(&k), 3);
    }

    #[tokio::test]
    async fn tokens_too_short_lived_to_pool_are_minted_one_at_a_time() {
        let issuer = FakeIssuer::new(5);
        let pool = Pool::new(8, Duration::from_secs(10));
        let k = key("spiffe://example.org/fn/payments", None);
        let mut tokens = HashSet::new();
        for _ in 0..4 {
            // Each fresh token is handed out even though it has only 5 s left.
            tokens.insert(issuer.take(&pool, k.clone()).await.unwrap());
            assert_eq!(pool.queued(&k), 0);
        }
        assert_eq!(tokens.len(), 4);
        assert_eq!(issuer.mints(), vec![8, 1, 1, 1]);
        // Once the issuer grants longer lifetimes again, batches resume.
        issuer.ttl.store(60, Ordering::SeqCst);
        issuer.take(&pool, k.clone()).await.unwrap();
        issuer.take(&pool, k.clone()).await.unwrap();
        assert_eq!(issuer.mints(), vec![8, 1, 1, 1, 1, 8]);
    }

    #[tokio::test]
    async fn queues_are_bounded_and_idle_or_stale_ones_are_forgotten_first() {
        let issuer = FakeIssuer::new(60);
        let mut pool = Pool::new(4, Duration::from_secs(10));
        pool.max_queues = 3;
        let scoped = |i: usize| key("spiffe://example.org/fn/payments", Some(&format!("s{i}")));
        for i in 0..3 {
            issuer.take(&pool, scoped(i)).await.unwrap();
        }
        // Every queue holds fresh tokens: a fourth scope is served, unpooled, one
        // token at a time, and nothing is queued for it.
        issuer.take(&pool, scoped(3)).await.unwrap();
        assert_eq!(issuer.mints(), vec![4, 4, 4, 1]);
        assert_eq!(pool.queued(&scoped(3)), 0);
        assert_eq!(lock(&pool.slots).len(), 3);
        // Once their tokens are stale, the old queues make room for new ones.
        issuer.clock.store(NOW + 55, Ordering::SeqCst);
        issuer.take(&pool, scoped(4)).await.unwrap();
        assert_eq!(pool.queued(&scoped(4)), 3);
        assert_eq!(lock(&pool.slots).len(), 1);
    }

    #[tokio::test]
    async fn audiences_and_scopes_have_their_own_queues() {
        let issuer = FakeIssuer::new(60);
        let pool = Pool::new(3, Duration::from_secs(10));
        let keys = [
            key("spiffe://example.org/fn/payments", None),
            key("spiffe://example.org/fn/payments", Some("payments:charge")),
            key("spiffe://example.org/fn/ledger", None),
        ];
        for k in &keys {
            issuer.take(&pool, k.clone()).await.unwrap();
        }
        assert_eq!(issuer.mints(), vec![3, 3, 3]);
        for k in &keys {
            assert_eq!(pool.queued(k), 2);
        }
    }

    #[tokio::test]
    async fn a_failed_mint_is_returned_and_the_next_take_tries_again() {
        let issuer = FakeIssuer::new(60);
        let pool = Pool::new(4, Duration::from_secs(10));
        let k = key("spiffe://example.org/fn/payments", None);
        let err = pool
            .take(
                k.clone(),
                || NOW,
                |_| async { Err(TokenError::UnexpectedStatus { status: 502 }) },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::UnexpectedStatus { status: 502 }));
        let err = pool
            .take(k.clone(), || NOW, |_| async { Ok(Vec::new()) })
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)));
        assert!(issuer.take(&pool, k.clone()).await.is_ok());
        assert_eq!(pool.queued(&k), 3);
    }

    #[tokio::test]
    async fn tokens_whose_expiry_cannot_be_read_are_not_pooled() {
        let pool = Pool::new(4, Duration::from_secs(10));
        let k = key("spiffe://example.org/fn/payments", None);
        let first = pool
            .take(
                k.clone(),
                || NOW,
                |n| async move { Ok((0..n).map(|i| format!("opaque-{i}")).collect()) },
            )
            .await
            .unwrap();
        assert_eq!(first, "opaque-0");
        assert_eq!(pool.queued(&k), 0);
    }

    #[test]
    fn min_remaining_rounds_up_to_whole_seconds() {
        assert_eq!(
            Pool::new(2, Duration::from_millis(10_001)).min_remaining,
            11
        );
        assert_eq!(Pool::new(2, Duration::from_secs(10)).min_remaining, 10);
        assert_eq!(Pool::new(2, Duration::MAX).min_remaining, i64::MAX);
    }

    #[test]
    fn unverified_exp_reads_only_well_formed_payloads() {
        assert_eq!(unverified_exp(&token(1, 42)), Some(42));
        for junk in ["", "a", "a.b.c", "a.e30.c", "a.!!.c"] {
            assert_eq!(unverified_exp(junk), None, "{junk}");
        }
    }
}
