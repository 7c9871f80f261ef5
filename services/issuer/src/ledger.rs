//! The replay ledger (SPEC §7): every one-time id (an access token's or a client
//! assertion's `jti`) is recorded when first used and remembered until it expires, so a
//! second use is refused.
//!
//! The ledger fails closed. It never forgets an unexpired entry to make room — an
//! evicting cache (LRU, moka) would reopen the replay window for whatever it evicts,
//! and an attacker can force evictions by filling it. When it is full of live entries
//! it refuses with [`LedgerError::Full`], which callers answer with 503: a refused
//! request is an outage, an accepted replay is a breach.
//!
//! [`MemoryLedger`] is the embedded store's ledger; a shared Redis ledger
//! (`SET key 1 NX PXAT exp`) will implement [`ReplayLedger`] too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use ring::digest;

/// Why a key was not consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The key was already consumed and has not expired yet.
    #[error("already used: this one-time id was presented before")]
    Replayed,
    /// The ledger holds its maximum of unexpired entries; retry once some expire.
    #[error("replay ledger is full of unexpired entries; retry shortly")]
    Full,
}

/// A store that lets each key be consumed once until it expires.
pub trait ReplayLedger: Send + Sync + std::fmt::Debug {
    /// Records `key` as used until `exp` (Unix seconds): the entry is live while
    /// `now < exp`. Fails with [`LedgerError::Replayed`] if `key` is already live.
    ///
    /// A key whose `exp` is already past is not recorded (nothing could replay it
    /// while it is valid); callers reject expired items before consuming them.
    fn consume(&self, key: &str, exp: i64, now: i64) -> Result<(), LedgerError>;

    /// The time (Unix seconds) since which this ledger has seen every consumed key.
    /// Anything issued before it may have been used already without the ledger
    /// knowing (SPEC §7: after a restart, older tokens answer inactive).
    fn started_at(&self) -> i64;
}

/// Number of independently locked shards: enough that concurrent requests rarely
/// wait on each other, few enough that a full purge is cheap.
const SHARDS: usize = 16;

/// An in-memory replay ledger with a hard bound on its number of live entries.
///
/// Keys are stored as their SHA-256 digest, so each entry costs the same ~48 bytes
/// however long the key is, and memory is bounded by the capacity alone. Expired
/// entries are purged lazily: only when the ledger is full, and only in shards whose
/// earliest expiry has passed, so a full ledger of live entries refuses in O(shards).
///
/// ```
/// use baton_issuer::ledger::{LedgerError, MemoryLedger, ReplayLedger};
/// let ledger = MemoryLedger::new(1000, 1_700_000_000);
/// assert_eq!(ledger.consume("jti-1", 1_700_000_060, 1_700_000_000), Ok(()));
/// assert_eq!(
///     ledger.consume("jti-1", 1_700_000_060, 1_700_000_030),
///     Err(LedgerError::Replayed)
/// );
/// ```
#[derive(Debug)]
pub struct MemoryLedger {
    shards: Box<[Mutex<Shard>]>,
    /// Entries held across all shards, expired or not; never above `capacity`.
    len: AtomicUsize,
    capacity: usize,
    started_at: i64,
}

#[derive(Debug)]
struct Shard {
    /// Key digest → expiry (Unix seconds).
    entries: HashMap<[u8; 32], i64>,
    /// No entry expires before this; `i64::MAX` when empty. Lets a purge skip a shard
    /// that has nothing to free without scanning it.
    earliest: i64,
}

impl Shard {
    /// Drops every entry expired at `now`; returns how many went.
    fn purge(&mut self, now: i64) -> usize {
        if now < self.earliest {
            return 0;
        }
        let before = self.entries.len();
        self.entries.retain(|_, exp| now < *exp);
        self.earliest = self.entries.values().copied().min().unwrap_or(i64::MAX);
        before - self.entries.len()
    }

    fn record(&mut self, digest: [u8; 32], exp: i64) {
        self.entries.insert(digest, exp);
        self.earliest = self.earliest.min(exp);
    }
}

/// What a shard can say about a key without taking a new slot.
enum Lookup {
    Live,
    /// Present but expired: its slot is reused.
    Reused,
    Absent,
}

impl MemoryLedger {
    /// A ledger holding at most `capacity` entries, started at `started_at` (Unix
    /// seconds; pass the process start time). With `capacity` 0 every consume is
    /// refused as [`LedgerError::Full`].
    pub fn new(capacity: usize, started_at: i64) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    entries: HashMap::new(),
                    earliest: i64::MAX,
                })
            })
            .collect();
        Self {
            shards,
            len: AtomicUsize::new(0),
            capacity,
            started_at,
        }
    }

    /// The time this ledger started remembering (SPEC §7).
    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    /// The most entries the ledger holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries currently held, including expired ones not yet purged.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the ledger holds no entry.
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

    fn lookup_and_reuse(shard: &mut Shard, digest: &[u8; 32], exp: i64, now: i64) -> Lookup {
        match shard.entries.get_mut(digest) {
            Some(until) if now < *until => Lookup::Live,
            Some(until) => {
                *until = exp;
                shard.earliest = shard.earliest.min(exp);
                Lookup::Reused
            }
            None => Lookup::Absent,
        }
    }

    /// Purges expired entries from every shard, one lock at a time.
    fn purge_all(&self, now: i64) {
        for i in 0..SHARDS {
            let freed = self.shard(i).purge(now);
            self.len.fetch_sub(freed, Ordering::AcqRel);
        }
    }
}

impl ReplayLedger for MemoryLedger {
    fn consume(&self, key: &str, exp: i64, now: i64) -> Result<(), LedgerError> {
        let d = digest::digest(&digest::SHA256, key.as_bytes());
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.as_ref());
        let index = usize::from(digest[0]);

        {
            let mut shard = self.shard(index);
            match Self::lookup_and_reuse(&mut shard, &digest, exp, now) {
                Lookup::Live => return Err(LedgerError::Replayed),
                Lookup::Reused => return Ok(()),
                Lookup::Absent if exp <= now => return Ok(()),
                Lookup::Absent => {}
            }
            if self.reserve() {
                shard.record(digest, exp);
                return Ok(());
            }
            let freed = shard.purge(now);
            self.len.fetch_sub(freed, Ordering::AcqRel);
            if self.reserve() {
                shard.record(digest, exp);
                return Ok(());
            }
            // Our shard's lock is released before the others are taken, so two
            // threads purging at once cannot deadlock.
        }
        self.purge_all(now);

        let mut shard = self.shard(index);
        // Another thread may have consumed the same key while the lock was released.
        match Self::lookup_and_reuse(&mut shard, &digest, exp, now) {
            Lookup::Live => return Err(LedgerError::Replayed),
            Lookup::Reused => return Ok(()),
            Lookup::Absent => {}
        }
        if self.reserve() {
            shard.record(digest, exp);
            Ok(())
        } else {
            Err(LedgerError::Full)
        }
    }

    fn started_at(&self) -> i64 {
        self.started_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const T0: i64 = 1_800_000_000;

    #[test]
    fn key_is_refused_as_replayed_until_it_expires() {
        let ledger = MemoryLedger::new(100, T0);
        assert_eq!(ledger.consume("a", T0 + 60, T0), Ok(()));
        assert_eq!(ledger.consume("a", T0 + 60, T0), Err(LedgerError::Replayed));
        assert_eq!(
            ledger.consume("a", T0 + 60, T0 + 59),
            Err(LedgerError::Replayed)
        );
        assert_eq!(
            ledger.consume("b", T0 + 60, T0),
            Ok(()),
            "keys are distinct"
        );
    }

    #[test]
    fn key_may_be_reused_after_its_expiry() {
        let ledger = MemoryLedger::new(100, T0);
        assert_eq!(ledger.consume("a", T0 + 60, T0), Ok(()));
        assert_eq!(ledger.consume("a", T0 + 200, T0 + 60), Ok(()));
        assert_eq!(
            ledger.consume("a", T0 + 200, T0 + 100),
            Err(LedgerError::Replayed),
            "the reuse is recorded with its new expiry"
        );
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn full_ledger_of_unexpired_entries_refuses_and_never_evicts() {
        let ledger = MemoryLedger::new(50, T0);
        for i in 0..50 {
            assert_eq!(ledger.consume(&format!("k{i}"), T0 + 60, T0), Ok(()));
        }
        assert_eq!(ledger.consume("new", T0 + 60, T0), Err(LedgerError::Full));
        assert_eq!(
            ledger.consume("new", T0 + 60, T0 + 59),
            Err(LedgerError::Full)
        );
        // Every original entry is still remembered: nothing was dropped to make room.
        for i in 0..50 {
            assert_eq!(
                ledger.consume(&format!("k{i}"), T0 + 60, T0 + 59),
                Err(LedgerError::Replayed),
                "k{i} must not have been evicted"
            );
        }
        assert_eq!(ledger.len(), 50);
    }

    #[test]
    fn full_ledger_makes_room_by_purging_expired_entries_in_any_shard() {
        let ledger = MemoryLedger::new(40, T0);
        for i in 0..20 {
            ledger.consume(&format!("short{i}"), T0 + 10, T0).unwrap();
            ledger.consume(&format!("long{i}"), T0 + 100, T0).unwrap();
        }
        assert_eq!(
            ledger.consume("x", T0 + 100, T0 + 5),
            Err(LedgerError::Full)
        );
        // At T0+10 the short entries are expired, wherever their shard is.
        for i in 0..20 {
            assert_eq!(
                ledger.consume(&format!("new{i}"), T0 + 100, T0 + 10),
                Ok(())
            );
        }
        assert_eq!(
            ledger.consume("y", T0 + 100, T0 + 10),
            Err(LedgerError::Full)
        );
        for i in 0..20 {
            assert_eq!(
                ledger.consume(&format!("long{i}"), T0 + 100, T0 + 10),
                Err(LedgerError::Replayed)
            );
        }
    }

    #[test]
    fn already_expired_key_takes_no_room() {
        let ledger = MemoryLedger::new(1, T0);
        assert_eq!(ledger.consume("old", T0, T0), Ok(()));
        assert!(ledger.is_empty());
        assert_eq!(ledger.consume("a", T0 + 1, T0), Ok(()));
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let ledger = MemoryLedger::new(0, T0);
        assert_eq!(ledger.consume("a", T0 + 1, T0), Err(LedgerError::Full));
    }

    #[test]
    fn remembers_its_start_time() {
        let ledger = MemoryLedger::new(1, T0);
        assert_eq!(ledger.started_at(), T0);
        let dynamic: &dyn ReplayLedger = &ledger;
        assert_eq!(dynamic.started_at(), T0);
        assert_eq!(ledger.capacity(), 1);
    }

    #[test]
    fn concurrent_consumers_accept_each_key_exactly_once() {
        let ledger = Arc::new(MemoryLedger::new(10_000, T0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|i| ledger.consume(&format!("k{i}"), T0 + 60, T0).is_ok())
                        .count()
                })
            })
            .collect();
        let accepted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(accepted, 500);
        assert_eq!(ledger.len(), 500);
    }

    #[test]
    fn concurrent_consumers_at_capacity_never_exceed_it() {
        let ledger = Arc::new(MemoryLedger::new(100, T0));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let _ = ledger.consume(&format!("{t}-{i}"), T0 + 60, T0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(ledger.len(), 100);
    }
}
