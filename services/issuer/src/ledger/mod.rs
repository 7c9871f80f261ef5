//! The replay ledger (SPEC §7): every one-time id (an access token's or a client
//! assertion's `jti`, a join token) is recorded when first used and remembered until it
//! expires, so a second use is refused. The same store holds the issuer's other
//! short-lived marks — revoked sessions (`sid`, RFC 7009) — which are checked rather
//! than consumed.
//!
//! The ledger fails closed. It never forgets an unexpired entry to make room — an
//! evicting cache (LRU, moka) would reopen the replay window for whatever it evicts,
//! and an attacker can force evictions by filling it. When it is full of live entries
//! it refuses with [`LedgerError::Full`], and when its store cannot be reached with
//! [`LedgerError::Unavailable`]; callers answer both with 503: a refused request is an
//! outage, an accepted replay is a breach.
//!
//! A ledger also knows its *epoch*: the instant since which it has seen every
//! consumption. Anything issued at or before it may have been used while no ledger
//! was watching — before an in-memory ledger's process started, or before a Redis
//! that lost its data came back — so [`consume`](ReplayLedger::consume) refuses it as
//! [`LedgerError::Stale`]. A restart or a data loss therefore opens no replay window.
//!
//! [`MemoryLedger`] is the embedded store's ledger; [`RedisLedger`] is shared by every
//! issuer replica over one Redis. Both are used through [`ReplayLedger`], whose methods
//! return futures so that a networked ledger never blocks a runtime worker.

mod memory;
mod redis;

use std::future::Future;
use std::pin::Pin;

use ring::digest;

pub use self::memory::MemoryLedger;
pub use self::redis::{DEFAULT_TIMEOUT, RedisConnectError, RedisLedger};

/// Why a key was not recorded, or could not be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The key was already consumed and has not expired yet.
    #[error("already used: this one-time id was presented before")]
    Replayed,
    /// The item was issued at or before the ledger's epoch: it may have been used
    /// while no ledger was watching, so it is refused.
    #[error("issued before the replay ledger's epoch; obtain a fresh one")]
    Stale,
    /// The ledger holds its maximum of unexpired entries; retry once some expire.
    #[error("replay ledger is full of unexpired entries; retry shortly")]
    Full,
    /// The ledger's store did not answer in time or could not be reached; nothing was
    /// recorded. Retry shortly.
    #[error("replay ledger store is unreachable; retry shortly")]
    Unavailable,
}

/// What [`ReplayLedger::consume_unless`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// The key is now consumed.
    Yes,
    /// The blocker was live: nothing was recorded.
    Blocked,
}

/// What every [`ReplayLedger`] method returns: a boxed future, so the trait stays
/// object safe (`Arc<dyn ReplayLedger>`) and `Send` across `.await` in handlers.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store that lets each key be consumed once until it expires.
///
/// Keys are namespaced by their caller (`client-assertion <id> <jti>`,
/// `access-token <jti>`, `revoked-session <sid>`, `join-token <hash>`), so one ledger
/// serves every use. Times are Unix seconds.
pub trait ReplayLedger: Send + Sync + std::fmt::Debug {
    /// Records `key` as used until `exp`: the entry is live while `now < exp`.
    ///
    /// Fails with [`LedgerError::Stale`] when `issued_at` is at or before the ledger's
    /// [`epoch`](Self::epoch) (pass `None` for keys with a durable gate of their own,
    /// such as join tokens), and with [`LedgerError::Replayed`] if `key` is already
    /// live. A key whose `exp` is already past is not recorded (nothing could replay
    /// it while it is valid); callers reject expired items before consuming them.
    fn consume<'a>(
        &'a self,
        key: &'a str,
        issued_at: Option<i64>,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>>;

    /// [`consume`](Self::consume), unless `blocker` is live at `now` (a revoked
    /// session): then nothing is recorded and the answer is
    /// [`Consumed::Blocked`]. One step where the store allows it (one round trip to
    /// Redis); otherwise a lookup, then the consume.
    fn consume_unless<'a>(
        &'a self,
        key: &'a str,
        blocker: &'a str,
        issued_at: Option<i64>,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<Consumed, LedgerError>> {
        Box::pin(async move {
            if self.contains(blocker, now).await? {
                return Ok(Consumed::Blocked);
            }
            self.consume(key, issued_at, exp, now).await?;
            Ok(Consumed::Yes)
        })
    }

    /// Records `key` as live until `exp`, whether or not it already is; a live entry
    /// keeps the later of its two expiries. For marks that are checked with
    /// [`contains`](Self::contains) rather than consumed (revoked sessions).
    fn mark<'a>(
        &'a self,
        key: &'a str,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>>;

    /// Whether `key` is live at `now` (consumed or marked, and not expired).
    ///
    /// Fails when the ledger cannot answer; callers must then fail closed.
    fn contains<'a>(
        &'a self,
        key: &'a str,
        now: i64,
    ) -> LedgerFuture<'a, Result<bool, LedgerError>>;

    /// The time since which this ledger has seen every consumed key (SPEC §7).
    /// Anything issued at or before it may have been used already without the ledger
    /// knowing. A shared ledger that finds its epoch lost sets it to `now`.
    fn epoch(&self, now: i64) -> LedgerFuture<'_, Result<i64, LedgerError>>;

    /// Whether the ledger can record a new entry now (readiness: `/readyz`): `Ok`, or
    /// the error a consume would meet ([`Full`](LedgerError::Full),
    /// [`Unavailable`](LedgerError::Unavailable)).
    fn ready(&self, now: i64) -> LedgerFuture<'_, Result<(), LedgerError>>;
}

/// What an entry is keyed by: the first 128 bits of the key's SHA-256.
///
/// 128 bits are plenty: a collision can only make the ledger refuse a fresh key as a
/// replay (never accept a replay), its chance among a million live entries is about
/// 10^-27, and forcing one onto another caller's key is a second-preimage search.
type Digest = [u8; 16];

fn digest_of(key: &str) -> Digest {
    let full = digest::digest(&digest::SHA256, key.as_bytes());
    let mut out = Digest::default();
    let n = out.len();
    out.copy_from_slice(&full.as_ref()[..n]);
    out
}

/// The epoch rule, strictly after: with whole seconds, an item issued in the second
/// the epoch was taken may predate it.
fn is_stale(issued_at: Option<i64>, epoch: i64) -> bool {
    issued_at.is_some_and(|iat| iat <= epoch)
}
