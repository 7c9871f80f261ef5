//! The embedded store's replay ledger: in memory, bounded, never evicting a live entry.

use std::collections::HashMap;
use std::future::ready;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Digest, LedgerError, LedgerFuture, ReplayLedger, digest_of, is_stale};

/// Number of independently locked shards: enough that concurrent requests rarely
/// wait on each other, few enough that a full purge is cheap.
const SHARDS: usize = 16;

/// An entry's expiry, Unix seconds. A `u32` holds every second until 2106; later
/// times saturate, which keeps the entry (failing closed) rather than dropping it.
type Expiry = u32;

fn expiry(t: i64) -> Expiry {
    Expiry::try_from(t.max(0)).unwrap_or(Expiry::MAX)
}

fn live(exp: Expiry, now: i64) -> bool {
    now < i64::from(exp)
}

/// An in-memory replay ledger with a hard bound on its number of live entries.
///
/// Each entry is a 16-byte key digest and a 4-byte expiry, whatever the key's length,
/// so memory is bounded by the capacity alone: about 45 bytes per live entry measured
/// at a million entries (hash-table slack included; `tests/ledger_memory.rs`). Expired
/// entries are purged when the ledger is full (only in shards whose earliest expiry has
/// passed, so a full ledger of live entries refuses in O(shards)) and by
/// [`purge_expired`](Self::purge_expired), which the issuer calls periodically.
///
/// Its epoch is `started_at`: anything issued at or before it is refused as
/// [`Stale`](LedgerError::Stale), since the process that watched it is gone.
///
/// ```
/// use baton_issuer::ledger::{LedgerError, MemoryLedger, ReplayLedger};
/// # async fn demo() {
/// let ledger = MemoryLedger::new(1000, 1_700_000_000);
/// let (iat, exp) = (Some(1_700_000_001), 1_700_000_060);
/// assert_eq!(ledger.consume("jti-1", iat, exp, 1_700_000_001).await, Ok(()));
/// assert_eq!(
///     ledger.consume("jti-1", iat, exp, 1_700_000_030).await,
///     Err(LedgerError::Replayed)
/// );
/// assert_eq!(
///     ledger.consume("jti-0", Some(1_700_000_000), exp, 1_700_000_030).await,
///     Err(LedgerError::Stale)
/// );
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo());
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
    entries: HashMap<Digest, Expiry>,
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
        self.entries.retain(|_, exp| live(*exp, now));
        self.earliest = self
            .entries
            .values()
            .copied()
            .min()
            .map_or(i64::MAX, i64::from);
        before - self.entries.len()
    }

    fn record(&mut self, digest: Digest, exp: Expiry) {
        self.entries.insert(digest, exp);
        self.earliest = self.earliest.min(i64::from(exp));
    }
}

/// What to do when the key is already live.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnLive {
    /// `consume`: it is a replay.
    Refuse,
    /// `mark`: keep the later expiry.
    Extend,
}

/// What a shard can say about a key without taking a new slot.
enum Lookup {
    /// Live, and `on_live` decided.
    Live(Result<(), LedgerError>),
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

    /// Drops every entry expired at `now`, one shard lock at a time. The ledger also
    /// does this by itself when full; calling it periodically keeps [`len`](Self::len)
    /// close to the number of live entries.
    pub fn purge_expired(&self, now: i64) {
        for i in 0..SHARDS {
            let freed = self.shard(i).purge(now);
            self.len.fetch_sub(freed, Ordering::AcqRel);
        }
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

    fn lookup_and_reuse(
        shard: &mut Shard,
        digest: &Digest,
        exp: Expiry,
        now: i64,
        on_live: OnLive,
    ) -> Lookup {
        match shard.entries.get_mut(digest) {
            Some(until) if live(*until, now) => Lookup::Live(match on_live {
                OnLive::Refuse => Err(LedgerError::Replayed),
                OnLive::Extend => {
                    *until = (*until).max(exp);
                    Ok(())
                }
            }),
            Some(until) => {
                *until = exp;
                shard.earliest = shard.earliest.min(i64::from(exp));
                Lookup::Reused
            }
            None => Lookup::Absent,
        }
    }

    /// `consume` and `mark`: one algorithm, differing only on a live key.
    fn record(&self, key: &str, exp: i64, now: i64, on_live: OnLive) -> Result<(), LedgerError> {
        let digest = digest_of(key);
        let index = usize::from(digest[0]);
        let exp_at = expiry(exp);

        {
            let mut shard = self.shard(index);
            match Self::lookup_and_reuse(&mut shard, &digest, exp_at, now, on_live) {
                Lookup::Live(result) => return result,
                Lookup::Reused => return Ok(()),
                Lookup::Absent if !live(exp_at, now) => return Ok(()),
                Lookup::Absent => {}
            }
            if self.reserve() {
                shard.record(digest, exp_at);
                return Ok(());
            }
            let freed = shard.purge(now);
            self.len.fetch_sub(freed, Ordering::AcqRel);
            if self.reserve() {
                shard.record(digest, exp_at);
                return Ok(());
            }
            // Our shard's lock is released before the others are taken, so two
            // threads purging at once cannot deadlock.
        }
        self.purge_expired(now);

        let mut shard = self.shard(index);
        // Another thread may have recorded the same key while the lock was released.
        match Self::lookup_and_reuse(&mut shard, &digest, exp_at, now, on_live) {
            Lookup::Live(result) => return result,
            Lookup::Reused => return Ok(()),
            Lookup::Absent => {}
        }
        if self.reserve() {
            shard.record(digest, exp_at);
            Ok(())
        } else {
            Err(LedgerError::Full)
        }
    }
}

impl ReplayLedger for MemoryLedger {
    fn consume<'a>(
        &'a self,
        key: &'a str,
        issued_at: Option<i64>,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>> {
        let result = if is_stale(issued_at, self.started_at) {
            Err(LedgerError::Stale)
        } else {
            self.record(key, exp, now, OnLive::Refuse)
        };
        Box::pin(ready(result))
    }

    fn mark<'a>(
        &'a self,
        key: &'a str,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>> {
        Box::pin(ready(self.record(key, exp, now, OnLive::Extend)))
    }

    fn contains<'a>(
        &'a self,
        key: &'a str,
        now: i64,
    ) -> LedgerFuture<'a, Result<bool, LedgerError>> {
        let digest = digest_of(key);
        let shard = self.shard(usize::from(digest[0]));
        let live = shard
            .entries
            .get(&digest)
            .is_some_and(|exp| live(*exp, now));
        Box::pin(ready(Ok(live)))
    }

    fn epoch(&self, _now: i64) -> LedgerFuture<'_, Result<i64, LedgerError>> {
        // An in-memory ledger starts empty with its process: it has seen every
        // consumption since it started, and none before.
        Box::pin(ready(Ok(self.started_at)))
    }

    fn ready(&self, now: i64) -> LedgerFuture<'_, Result<(), LedgerError>> {
        let room = self.len() < self.capacity || {
            self.purge_expired(now);
            self.len() < self.capacity
        };
        Box::pin(ready(if room { Ok(()) } else { Err(LedgerError::Full) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const T0: i64 = 1_800_000_000;

    #[tokio::test]
    async fn key_is_refused_as_replayed_until_it_expires() {
        let ledger = MemoryLedger::new(100, T0);
        assert_eq!(ledger.consume("a", None, T0 + 60, T0).await, Ok(()));
        assert_eq!(
            ledger.consume("a", None, T0 + 60, T0).await,
            Err(LedgerError::Replayed)
        );
        assert_eq!(
            ledger.consume("a", None, T0 + 60, T0 + 59).await,
            Err(LedgerError::Replayed)
        );
        assert_eq!(
            ledger.consume("b", None, T0 + 60, T0).await,
            Ok(()),
            "keys are distinct"
        );
    }

    #[tokio::test]
    async fn key_may_be_reused_after_its_expiry() {
        let ledger = MemoryLedger::new(100, T0);
        assert_eq!(ledger.consume("a", None, T0 + 60, T0).await, Ok(()));
        assert_eq!(ledger.consume("a", None, T0 + 200, T0 + 60).await, Ok(()));
        assert_eq!(
            ledger.consume("a", None, T0 + 200, T0 + 100).await,
            Err(LedgerError::Replayed),
            "the reuse is recorded with its new expiry"
        );
        assert_eq!(ledger.len(), 1);
    }

    #[tokio::test]
    async fn full_ledger_of_unexpired_entries_refuses_and_never_evicts() {
        let ledger = MemoryLedger::new(50, T0);
        for i in 0..50 {
            assert_eq!(
                ledger.consume(&format!("k{i}"), None, T0 + 60, T0).await,
                Ok(())
            );
        }
        assert_eq!(
            ledger.consume("new", None, T0 + 60, T0).await,
            Err(LedgerError::Full)
        );
        assert_eq!(
            ledger.consume("new", None, T0 + 60, T0 + 59).await,
            Err(LedgerError::Full)
        );
        // Every original entry is still remembered: nothing was dropped to make room.
        for i in 0..50 {
            assert_eq!(
                ledger
                    .consume(&format!("k{i}"), None, T0 + 60, T0 + 59)
                    .await,
                Err(LedgerError::Replayed),
                "k{i} must not have been evicted"
            );
        }
        assert_eq!(ledger.len(), 50);
    }

    #[tokio::test]
    async fn full_ledger_makes_room_by_purging_expired_entries_in_any_shard() {
        let ledger = MemoryLedger::new(40, T0);
        for i in 0..20 {
            ledger
                .consume(&format!("short{i}"), None, T0 + 10, T0)
                .await
                .unwrap();
            ledger
                .consume(&format!("long{i}"), None, T0 + 100, T0)
                .await
                .unwrap();
        }
        assert_eq!(
            ledger.consume("x", None, T0 + 100, T0 + 5).await,
            Err(LedgerError::Full)
        );
        // At T0+10 the short entries are expired, wherever their shard is.
        for i in 0..20 {
            assert_eq!(
                ledger
                    .consume(&format!("new{i}"), None, T0 + 100, T0 + 10)
                    .await,
                Ok(())
            );
        }
        assert_eq!(
            ledger.consume("y", None, T0 + 100, T0 + 10).await,
            Err(LedgerError::Full)
        );
        for i in 0..20 {
            assert_eq!(
                ledger
                    .consume(&format!("long{i}"), None, T0 + 100, T0 + 10)
                    .await,
                Err(LedgerError::Replayed)
            );
        }
    }

    #[tokio::test]
    async fn already_expired_key_takes_no_room() {
        let ledger = MemoryLedger::new(1, T0);
        assert_eq!(ledger.consume("old", None, T0, T0).await, Ok(()));
        assert!(ledger.is_empty());
        assert_eq!(ledger.consume("a", None, T0 + 1, T0).await, Ok(()));
    }

    #[tokio::test]
    async fn zero_capacity_refuses_everything() {
        let ledger = MemoryLedger::new(0, T0);
        assert_eq!(
            ledger.consume("a", None, T0 + 1, T0).await,
            Err(LedgerError::Full)
        );
    }

    #[tokio::test]
    async fn remembers_its_start_time() {
        let ledger = MemoryLedger::new(1, T0);
        assert_eq!(ledger.started_at(), T0);
        let dynamic: &dyn ReplayLedger = &ledger;
        assert_eq!(dynamic.epoch(T0 + 100).await, Ok(T0));
        assert_eq!(ledger.capacity(), 1);
    }

    #[tokio::test]
    async fn item_issued_at_or_before_the_start_is_stale_and_takes_no_room() {
        let ledger = MemoryLedger::new(10, T0);
        for iat in [T0 - 100, T0] {
            assert_eq!(
                ledger.consume("old", Some(iat), T0 + 60, T0 + 1).await,
                Err(LedgerError::Stale),
                "iat {iat}"
            );
        }
        assert!(ledger.is_empty());
        assert_eq!(
            ledger.consume("new", Some(T0 + 1), T0 + 60, T0 + 1).await,
            Ok(())
        );
        assert_eq!(
            ledger.consume("new", Some(T0 + 1), T0 + 60, T0 + 2).await,
            Err(LedgerError::Replayed)
        );
        // Keys with their own durable gate (join tokens) pass no issue time.
        assert_eq!(ledger.consume("gated", None, T0 + 60, T0 + 1).await, Ok(()));
    }

    /// Runs a ledger future on this thread: the memory ledger's are always ready.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn concurrent_consumers_accept_each_key_exactly_once() {
        let ledger = Arc::new(MemoryLedger::new(10_000, T0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|i| {
                            block_on(ledger.consume(&format!("k{i}"), None, T0 + 60, T0)).is_ok()
                        })
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
                        let _ = block_on(ledger.consume(&format!("{t}-{i}"), None, T0 + 60, T0));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(ledger.len(), 100);
    }

    #[tokio::test]
    async fn marked_key_is_contained_until_it_expires_and_a_mark_keeps_the_later_expiry() {
        let ledger = MemoryLedger::new(10, T0);
        assert_eq!(ledger.contains("s", T0).await, Ok(false));
        assert_eq!(ledger.mark("s", T0 + 60, T0).await, Ok(()));
        assert_eq!(ledger.contains("s", T0 + 59).await, Ok(true));
        // Marking again is no error, and an earlier expiry does not shorten it.
        assert_eq!(ledger.mark("s", T0 + 30, T0 + 1).await, Ok(()));
        assert_eq!(ledger.contains("s", T0 + 59).await, Ok(true));
        assert_eq!(ledger.mark("s", T0 + 90, T0 + 2).await, Ok(()));
        assert_eq!(ledger.contains("s", T0 + 89).await, Ok(true));
        assert_eq!(ledger.contains("s", T0 + 90).await, Ok(false));
        assert_eq!(ledger.len(), 1);
    }

    #[tokio::test]
    async fn consumed_key_is_contained_and_a_marked_key_cannot_be_consumed() {
        let ledger = MemoryLedger::new(10, T0);
        ledger.consume("a", None, T0 + 60, T0).await.unwrap();
        assert_eq!(ledger.contains("a", T0 + 1).await, Ok(true));
        ledger.mark("b", T0 + 60, T0).await.unwrap();
        assert_eq!(
            ledger.consume("b", None, T0 + 60, T0).await,
            Err(LedgerError::Replayed)
        );
    }

    #[tokio::test]
    async fn mark_on_a_full_ledger_fails_closed_and_already_expired_mark_takes_no_room() {
        let ledger = MemoryLedger::new(1, T0);
        ledger.consume("a", None, T0 + 60, T0).await.unwrap();
        assert_eq!(ledger.mark("s", T0 + 60, T0).await, Err(LedgerError::Full));
        assert_eq!(ledger.mark("old", T0, T0).await, Ok(()));
        assert_eq!(ledger.contains("old", T0).await, Ok(false));
        // Re-marking a live key needs no new room.
        assert_eq!(ledger.mark("a", T0 + 90, T0).await, Ok(()));
    }

    #[tokio::test]
    async fn ready_until_full_of_live_entries_and_again_once_they_expire() {
        let ledger = MemoryLedger::new(2, T0);
        assert_eq!(ledger.ready(T0).await, Ok(()));
        ledger.consume("a", None, T0 + 10, T0).await.unwrap();
        ledger.consume("b", None, T0 + 60, T0).await.unwrap();
        assert_eq!(ledger.ready(T0 + 9).await, Err(LedgerError::Full));
        assert_eq!(
            ledger.ready(T0 + 10).await,
            Ok(()),
            "the expired entry is purged"
        );
        assert_eq!(ledger.len(), 1);
    }

    #[tokio::test]
    async fn periodic_purge_frees_expired_entries_only() {
        let ledger = MemoryLedger::new(100, T0);
        for i in 0..20 {
            ledger
                .consume(&format!("short{i}"), None, T0 + 10, T0)
                .await
                .unwrap();
            ledger
                .consume(&format!("long{i}"), None, T0 + 100, T0)
                .await
                .unwrap();
        }
        ledger.purge_expired(T0 + 9);
        assert_eq!(ledger.len(), 40);
        ledger.purge_expired(T0 + 10);
        assert_eq!(ledger.len(), 20);
        assert_eq!(
            ledger.consume("long7", None, T0 + 100, T0 + 10).await,
            Err(LedgerError::Replayed)
        );
    }

    #[tokio::test]
    async fn expiries_beyond_2106_saturate_and_stay_live() {
        let ledger = MemoryLedger::new(10, T0);
        ledger.consume("far", None, i64::MAX, T0).await.unwrap();
        assert_eq!(
            ledger.contains("far", i64::from(u32::MAX) - 1).await,
            Ok(true)
        );
        assert_eq!(expiry(-5), 0);
    }

    #[tokio::test]
    async fn keys_of_any_length_cost_one_fixed_size_entry() {
        let ledger = MemoryLedger::new(10, T0);
        let long = "k".repeat(100_000);
        ledger.consume(&long, None, T0 + 60, T0).await.unwrap();
        assert_eq!(
            ledger.consume(&long, None, T0 + 60, T0).await,
            Err(LedgerError::Replayed)
        );
        assert_eq!(ledger.consume(&long[1..], None, T0 + 60, T0).await, Ok(()));
        assert_eq!(std::mem::size_of::<(Digest, Expiry)>(), 20);
    }
}
