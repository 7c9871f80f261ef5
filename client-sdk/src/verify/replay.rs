//! One-time use of tokens (SPEC §4, §7 "Replay ledger").
//!
//! Every verified token's `jti` is consumed in a [`ReplayGuard`] as the very last
//! check, so a token that fails any other rule never burns its `jti`. The guard fails
//! closed: a guard that cannot record a `jti` refuses the token
//! ([`ReplayError::Unavailable`]) — a refused request is an outage, an accepted replay
//! is a breach.
//!
//! Guarantees, as SPEC §7 states them: local SDK guard = once per verifier process;
//! Redis guard or introspection = once across every verifier and issuer replica
//! sharing the store.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use ring::digest;

/// Why a `jti` was not consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The `jti` was consumed before and its token has not expired: a replay.
    #[error("this jti was already used")]
    Replayed,
    /// The guard cannot record the `jti` (full of live entries, or its store is
    /// unreachable). The verifier refuses the token: fail closed.
    #[error("the replay guard cannot record the jti; retry shortly")]
    Unavailable,
}

/// A store in which each token id can be consumed once until its token expires.
///
/// [`LocalReplayGuard`] is the default. A shared guard (Redis `SET jti 1 NX PXAT exp`,
/// or the issuer's introspection) implements this trait to make tokens one-time across
/// every verifier that shares it. The verifier consumes the `jti` as its very last
/// check, so a token refused for any other reason never burns it, and a guard that
/// cannot answer refuses the token (fail closed).
///
/// Guarantees (SPEC §7): local SDK guard = once per verifier process; Redis guard or
/// introspection = once across every verifier and issuer replica sharing the store.
///
/// ```
/// use std::collections::HashSet;
/// use std::sync::Mutex;
/// use baton_sdk::{ReplayError, ReplayGuard};
///
/// /// Remembers every jti for ever: fine for a test, unbounded in production.
/// #[derive(Debug, Default)]
/// struct Forever(Mutex<HashSet<String>>);
///
/// impl ReplayGuard for Forever {
///     fn consume(&self, jti: &str, _exp: i64, _now: i64) -> Result<(), ReplayError> {
///         let mut seen = self.0.lock().map_err(|_| ReplayError::Unavailable)?;
///         if seen.insert(jti.to_owned()) { Ok(()) } else { Err(ReplayError::Replayed) }
///     }
/// }
///
/// let guard = Forever::default();
/// assert_eq!(guard.consume("jti-1", 1_700_000_060, 1_700_000_000), Ok(()));
/// assert_eq!(guard.consume("jti-1", 1_700_000_060, 1_700_000_001), Err(ReplayError::Replayed));
/// ```
pub trait ReplayGuard: Send + Sync + std::fmt::Debug {
    /// Records `jti` as used until `exp` (Unix seconds) and succeeds, or fails with
    /// [`ReplayError::Replayed`] if it is already recorded and `now < exp`.
    ///
    /// The verifier calls this last, once every other check passed, with `exp` = the
    /// token's `exp` plus the verifier's clock leeway: the instant after which the
    /// verifier would refuse the token as expired anyway, so the guard may forget the
    /// `jti` then. A guard that cannot answer must return [`ReplayError::Unavailable`],
    /// never `Ok`.
    fn consume(&self, jti: &str, exp: i64, now: i64) -> Result<(), ReplayError>;
}

/// Shards locked independently, so concurrent verifications rarely wait on each other.
const SHARDS: usize = 16;
/// Expired entries dropped per call at most, so no single verification pays for a
/// burst of expiries; the full sweep happens only when the guard is full.
const EXPIRE_BUDGET: usize = 64;

/// The default replay guard: each `jti` is accepted once per process.
///
/// Memory is bounded by the capacity (default [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY)
/// entries of about 80 bytes each, allocated only as tokens arrive). Entries expire
/// with their token (plus the verifier's leeway) and are dropped as time passes. An
/// unexpired entry is never evicted to make room — an evicting cache would reopen the
/// replay window for whatever it evicts, and an attacker could force evictions — so a
/// guard full of live entries refuses with [`ReplayError::Unavailable`].
///
/// Guarantee: once per verifier process. Verifiers in different processes (replicas,
/// restarts) do not share it; use a shared guard for "once across replicas".
///
/// ```
/// use baton_sdk::{LocalReplayGuard, ReplayError, ReplayGuard};
/// let guard = LocalReplayGuard::with_capacity(2);
/// let now = 1_700_000_000;
/// assert_eq!(guard.consume("a", now + 60, now), Ok(()));
/// assert_eq!(guard.consume("a", now + 60, now + 59), Err(ReplayError::Replayed));
/// assert_eq!(guard.consume("b", now + 60, now), Ok(()));
/// // Full of live entries: refuse rather than forget one.
/// assert_eq!(guard.consume("c", now + 60, now), Err(ReplayError::Unavailable));
/// // Once "a" and "b" expired, their room is free again.
/// assert_eq!(guard.consume("c", now + 120, now + 60), Ok(()));
/// ```
#[derive(Debug)]
pub struct LocalReplayGuard {
    shards: Box<[Mutex<Shard>]>,
    /// Entries held across all shards; never above `capacity`.
    len: AtomicUsize,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Shard {
    /// SHA-256 of the `jti` → the time it may be forgotten (Unix seconds).
    live: HashMap<[u8; 32], i64>,
    /// The same entries by expiry, earliest first. An entry whose expiry moved (a
    /// `jti` reused after it expired) leaves a stale copy here, skipped when popped.
    by_expiry: BinaryHeap<Reverse<(i64, [u8; 32])>>,
}

impl Shard {
    /// Drops up to `budget` entries expired at `now`; returns how many went.
    fn expire(&mut self, now: i64, budget: usize) -> usize {
        let mut freed = 0;
        for _ in 0..budget {
            match self.by_expiry.peek() {
                Some(Reverse((exp, _))) if *exp <= now => {}
                _ => break,
            }
            let Some(Reverse((_, digest))) = self.by_expiry.pop() else {
                break;
            };
            if self.live.get(&digest).is_some_and(|until| *until <= now) {
                self.live.remove(&digest);
                freed += 1;
            }
        }
        freed
    }
}

impl Default for LocalReplayGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalReplayGuard {
    /// Default capacity: a million live tokens, e.g. about 15 000 verifications a
    /// second of 60-second tokens. About 80 MB when full; nothing is allocated up front.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// A guard with the [default capacity](Self::DEFAULT_CAPACITY).
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A guard holding at most `capacity` live entries. With `capacity` 0 every token
    /// is refused as [`ReplayError::Unavailable`].
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// The most live entries the guard holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries currently held, including expired ones not yet dropped.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the guard holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        // No code path panics while holding a shard lock, so a poisoned lock still
        // guards a consistent map: keep using it rather than fail every request.
        self.shards[i % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one slot of the capacity, if any is free.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, freed: usize) {
        if freed > 0 {
            self.len.fetch_sub(freed, Ordering::AcqRel);
        }
    }

    /// Records `digest` unless it is live. `None`: no slot was free.
    fn try_record(
        &self,
        shard: &mut Shard,
        digest: [u8; 32],
        exp: i64,
        now: i64,
    ) -> Option<Result<(), ReplayError>> {
        match shard.live.get_mut(&digest) {
            Some(until) if now < *until => return Some(Err(ReplayError::Replayed)),
            Some(until) => {
                // Expired but not dropped yet: reuse its slot.
                *until = exp;
                shard.by_expiry.push(Reverse((exp, digest)));
                return Some(Ok(()));
            }
            None => {}
        }
        if !self.reserve() {
            return None;
        }
        shard.live.insert(digest, exp);
        shard.by_expiry.push(Reverse((exp, digest)));
        Some(Ok(()))
    }
}

impl ReplayGuard for LocalReplayGuard {
    fn consume(&self, jti: &str, exp: i64, now: i64) -> Result<(), ReplayError> {
        if exp <= now {
            // Nothing could replay it while it is acceptable; the verifier refuses
            // expired tokens before it consumes them.
            return Ok(());
        }
        // A fixed-size digest keeps every entry the same size whatever the jti.
        let mut digest = [0u8; 32];
        digest.copy_from_slice(digest::digest(&digest::SHA256, jti.as_bytes()).as_ref());
        let index = usize::from(digest[0]);
        {
            let mut shard = self.shard(index);
            let freed = shard.expire(now, EXPIRE_BUDGET);
            self.release(freed);
            if let Some(result) = self.try_record(&mut shard, digest, exp, now) {
                return result;
            }
            // Full: sweep every shard, one lock at a time (ours is released first, so
            // two threads sweeping at once cannot deadlock).
        }
        for i in 0..SHARDS {
            let freed = self.shard(i).expire(now, usize::MAX);
            self.release(freed);
        }
        let mut shard = self.shard(index);
        // Another thread may have consumed the same jti while the lock was released.
        self.try_record(&mut shard, digest, exp, now)
            .unwrap_or(Err(ReplayError::Unavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const T0: i64 = 1_800_000_000;

    #[test]
    fn jti_is_refused_as_replayed_until_it_expires_then_accepted_again() {
        let guard = LocalReplayGuard::with_capacity(100);
        assert_eq!(guard.consume("a", T0 + 60, T0), Ok(()));
        assert_eq!(guard.consume("a", T0 + 60, T0), Err(ReplayError::Replayed));
        assert_eq!(
            guard.consume("a", T0 + 60, T0 + 59),
            Err(ReplayError::Replayed)
        );
        assert_eq!(guard.consume("b", T0 + 60, T0), Ok(()));
        // After expiry the verifier refuses the token itself; the guard may forget it.
        assert_eq!(guard.consume("a", T0 + 200, T0 + 60), Ok(()));
        assert_eq!(
            guard.consume("a", T0 + 200, T0 + 61),
            Err(ReplayError::Replayed)
        );
    }

    #[test]
    fn full_guard_refuses_and_never_evicts_a_live_entry() {
        let guard = LocalReplayGuard::with_capacity(50);
        for i in 0..50 {
            assert_eq!(guard.consume(&format!("j{i}"), T0 + 300, T0), Ok(()));
        }
        assert_eq!(
            guard.consume("one-more", T0 + 300, T0),
            Err(ReplayError::Unavailable)
        );
        for i in 0..50 {
            assert_eq!(
                guard.consume(&format!("j{i}"), T0 + 300, T0 + 1),
                Err(ReplayError::Replayed),
                "j{i} must still be remembered"
            );
        }
        assert_eq!(guard.len(), 50);
        // Once they expired, their room is free again.
        assert_eq!(guard.consume("one-more", T0 + 600, T0 + 300), Ok(()));
        for i in 0..49 {
            assert_eq!(guard.consume(&format!("j{i}"), T0 + 600, T0 + 300), Ok(()));
        }
        assert_eq!(guard.len(), 50);
    }

    #[test]
    fn zero_capacity_fails_closed() {
        let guard = LocalReplayGuard::with_capacity(0);
        assert_eq!(
            guard.consume("a", T0 + 60, T0),
            Err(ReplayError::Unavailable)
        );
    }

    #[test]
    fn expired_entries_are_dropped_as_time_passes_not_only_when_full() {
        let guard = LocalReplayGuard::with_capacity(1_000_000);
        for i in 0..1_000 {
            guard.consume(&format!("old{i}"), T0 + 10, T0).unwrap();
        }
        assert_eq!(guard.len(), 1_000);
        // Each later call drops a bounded number of expired entries on its shard.
        for i in 0..2_000 {
            guard
                .consume(&format!("new{i}"), T0 + 1_000, T0 + 20)
                .unwrap();
        }
        assert_eq!(guard.len(), 2_000, "every expired entry has been dropped");
    }

    #[test]
    fn memory_is_bounded_by_capacity_under_churn() {
        let guard = LocalReplayGuard::with_capacity(64);
        for round in 0..100i64 {
            for i in 0..64 {
                let now = T0 + round * 10;
                assert_eq!(guard.consume(&format!("{round}-{i}"), now + 5, now), Ok(()));
            }
            assert!(guard.len() <= 64);
        }
        let heap: usize = (0..SHARDS).map(|i| guard.shard(i).by_expiry.len()).sum();
        assert!(heap <= 2 * 64, "expiry index stays bounded: {heap}");
    }

    #[test]
    fn concurrent_presentations_of_one_jti_succeed_once() {
        let guard = Arc::new(LocalReplayGuard::with_capacity(1_000));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let guard = Arc::clone(&guard);
                std::thread::spawn(move || {
                    (0..200)
                        .filter(|i| guard.consume(&format!("j{i}"), T0 + 60, T0).is_ok())
                        .count()
                })
            })
            .collect();
        let accepted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(accepted, 200);
    }
}
