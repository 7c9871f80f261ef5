//! Join tokens (SPEC §9 `baton enroll --join-token`): one-time, short-lived secrets
//! bound to one SPIFFE ID, with which a function fetches its first certificate at
//! start-up (`POST /v1/svid`), so nothing long-lived is baked into its deployment.
//!
//! Only a SHA-256 hash of each token is stored, one file per token: reading the data
//! directory does not reveal a usable token. The first 16 hex digits of that hash are
//! the token's *handle*, which operators see in listings and revoke by; it reveals
//! nothing about the token.
//!
//! Redemption is two-phase so that nothing is spent on a request that fails for
//! another reason: [`JoinTokens::find`] reads the record (the caller then checks the
//! deny list, rate limit and CSR), and [`JoinTokens::redeem`] consumes it. Consuming
//! takes two gates, both of which must pass:
//!
//! 1. the replay ledger, the same one assertions and access tokens go through, keyed by
//!    the token's hash until its expiry — the gate every replica sharing the ledger
//!    sees (SPEC §7);
//! 2. an atomic rename of the record file, which a revocation or a restarted issuer
//!    (whose in-memory ledger starts empty) also sees.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_proto::{SpiffeId, TrustDomain};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::fsio::{self, Mode};
use crate::ledger::{LedgerError, ReplayLedger};
use crate::pki::{self, PkiError};
use crate::shared::{SharedStore, SharedStoreError};

mod shared;

/// Prefix that makes a join token recognisable (e.g. to secret scanners).
pub const PREFIX: &str = "baton-jt-";
/// Default lifetime of a join token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest lifetime of a join token.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Hex digits of a handle: 64 bits, unique among any realistic number of tokens.
pub const HANDLE_LEN: usize = 16;
/// Fewest hex digits of a handle that `revoke` accepts as a prefix.
pub const MIN_HANDLE_PREFIX: usize = 8;
const SECRET_BYTES: usize = 32;
const RECORD_SUFFIX: &str = "json";
const MAX_RECORD_BYTES: u64 = 4096;
/// Most records `list` and `revoke` read: a bound on the work one admin command does.
const MAX_RECORDS: usize = 100_000;

/// Why a join token could not be made, redeemed or revoked.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// The token is malformed, unknown, revoked, already used or expired. One variant
    /// for all, so an attacker learns nothing from the answer.
    #[error("join token is invalid, expired or already used")]
    Invalid,
    /// The replay ledger cannot record the redemption; nothing was spent (503).
    #[error("replay ledger unavailable; retry shortly")]
    Unavailable,
    /// The ID may not be enrolled.
    #[error(transparent)]
    Id(#[from] PkiError),
    /// The lifetime is out of range.
    #[error("join token lifetime {0:?} is outside 1s..=24h")]
    Lifetime(Duration),
    /// A handle given to `revoke` is not 8 to 16 hex digits.
    #[error(
        "a join token handle is {MIN_HANDLE_PREFIX} to {HANDLE_LEN} hex digits, as `baton join-tokens list` shows"
    )]
    BadHandle,
    /// A handle prefix matches more than one outstanding token.
    #[error("handle {0} matches more than one join token; give more digits")]
    AmbiguousHandle(String),
    /// The token store failed.
    #[error("join token store {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The distributed store failed; nothing was made, spent or revoked.
    #[error("join tokens: {0}")]
    Shared(#[from] SharedStoreError),
}

/// A freshly made join token. The token itself is shown once and never stored.
#[derive(Debug)]
pub struct NewJoinToken {
    /// The secret token.
    pub token: Zeroizing<String>,
    /// Its handle, for listing and revoking.
    pub handle: String,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// An outstanding (made, unused, unexpired) join token, as listed to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outstanding {
    /// The handle: the first [`HANDLE_LEN`] hex digits of the token's SHA-256.
    pub handle: String,
    /// The identity it yields.
    pub id: SpiffeId,
    /// When it was made, Unix seconds (absent for tokens made by older versions).
    pub created_at: Option<i64>,
    /// When it stops being accepted, Unix seconds.
    pub expires_at: i64,
}

/// A join token found valid by [`JoinTokens::find`] and not yet spent.
#[derive(Debug)]
pub struct Found {
    /// The identity the token is bound to.
    pub id: SpiffeId,
    /// When the token stops being accepted, Unix seconds.
    pub expires_at: i64,
    hash_hex: String,
}

/// What `revoke` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The one token whose handle starts with these hex digits.
    Handle(String),
    /// Every outstanding token bound to this identity.
    Id(SpiffeId),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    id: SpiffeId,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
}

/// The join tokens of one data directory, or of the distributed store.
#[derive(Debug, Clone)]
pub struct JoinTokens {
    dir: PathBuf,
    /// Where the records live in distributed mode, instead of `dir`.
    shared: Option<SharedStore>,
}

impl JoinTokens {
    /// The store in directory `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            shared: None,
        }
    }

    /// The records in the distributed store, shared by every replica (`dir` is then
    /// unused).
    pub fn with_shared_store(mut self, shared: SharedStore) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Makes a join token for `id`, valid for `ttl`.
    pub fn create(
        &self,
        trust_domain: &TrustDomain,
        id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<NewJoinToken, JoinTokenError> {
        pki::check_workload_id(trust_domain, id)?;
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(JoinTokenError::Lifetime(ttl));
        }
        if self.shared.is_none() {
            fsio::create_private_dir(&self.dir).map_err(|source| self.io(&self.dir, source))?;
            self.records(now)?;
        }

        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| JoinTokenError::Random)?;
        let token = Zeroizing::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(*secret)));
        let expires_at = now + ttl;
        let record = Record {
            id: id.clone(),
            expires_at: expires_at.unix_timestamp(),
            created_at: Some(now.unix_timestamp()),
        };
        let hash_hex = hash_hex(&token);
        match &self.shared {
            Some(store) => shared::insert(store, &hash_hex, &record)?,
            None => {
                let path = self.record_path(&hash_hex);
                let bytes = serde_json::to_vec(&record).map_err(|_| JoinTokenError::Random)?;
                fsio::write_new(&path, &bytes, Mode::Private)
                    .map_err(|source| self.io(&path, source))?;
            }
        }
        Ok(NewJoinToken {
            token,
            handle: hash_hex[..HANDLE_LEN].to_owned(),
            expires_at,
        })
    }

    /// Looks `token` up without spending it: the identity it is bound to, if it is
    /// outstanding at `now`.
    pub fn find(&self, token: &str, now: i64) -> Result<Found, JoinTokenError> {
        // The token is attacker-controlled: check its shape before it touches a path.
        let well_formed = token
            .strip_prefix(PREFIX)
            .filter(|s| s.len() == 43)
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .is_some_and(|secret| secret.len() == SECRET_BYTES);
        if !well_formed {
            return Err(JoinTokenError::Invalid);
        }
        let hash_hex = hash_hex(token);
        let record = match &self.shared {
            Some(store) => shared::get(store, &hash_hex)?.ok_or(JoinTokenError::Invalid)?,
            None => {
                let path = self.record_path(&hash_hex);
                match fsio::read_bounded(&path, MAX_RECORD_BYTES) {
                    Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
                        .map_err(|_| JoinTokenError::Invalid)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(JoinTokenError::Invalid);
                    }
                    Err(source) => return Err(self.io(&path, source)),
                }
            }
        };
        if now >= record.expires_at {
            self.remove(&hash_hex);
            return Err(JoinTokenError::Invalid);
        }
        Ok(Found {
            id: record.id,
            expires_at: record.expires_at,
            hash_hex,
        })
    }

    /// Spends `found` once: through `ledger` (shared by every replica that shares the
    /// ledger) and by claiming its record file (seen by revocation and restarts). Of
    /// any number of concurrent redemptions of one token, exactly one succeeds.
    pub async fn redeem(
        &self,
        found: Found,
        ledger: &dyn ReplayLedger,
        now: i64,
    ) -> Result<SpiffeId, JoinTokenError> {
        let key = format!("join-token {}", found.hash_hex);
        // No issue time: the record file is the durable gate that a ledger which lost
        // its memory (restart, store data loss) cannot replace, so the epoch rule has
        // nothing to add here.
        ledger
            .consume(&key, None, found.expires_at, now)
            .await
            .map_err(|e| match e {
                LedgerError::Replayed => JoinTokenError::Invalid,
                _ => JoinTokenError::Unavailable,
            })?;
        // The claim is file or store I/O: off the async runtime.
        let tokens = self.clone();
        let hash_hex = found.hash_hex;
        let claimed = tokio::task::spawn_blocking(move || tokens.claim(&hash_hex))
            .await
            .map_err(|_| JoinTokenError::Unavailable)??;
        if claimed {
            Ok(found.id)
        } else {
            // Revoked, expired, or redeemed by an issuer that restarted since it was found.
            Err(JoinTokenError::Invalid)
        }
    }

    /// Claims the record of `hash_hex` (rename, or `DEL` in the distributed store);
    /// says whether this call got it.
    fn claim(&self, hash_hex: &str) -> Result<bool, JoinTokenError> {
        if let Some(store) = &self.shared {
            return shared::claim(store, hash_hex);
        }
        let path = self.record_path(hash_hex);
        let claimed = path.with_extension("redeemed");
        match std::fs::rename(&path, &claimed) {
            Ok(()) => {
                let _ = std::fs::remove_file(&claimed);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(self.io(&path, source)),
        }
    }

    /// Every outstanding token at `now`, soonest expiry first. Expired records are
    /// removed on the way.
    pub fn list(&self, now: OffsetDateTime) -> Result<Vec<Outstanding>, JoinTokenError> {
        let mut all: Vec<Outstanding> = self
            .records(now)?
            .into_iter()
            .map(|(_, outstanding)| outstanding)
            .collect();
        all.sort_by(|a, b| (a.expires_at, &a.handle).cmp(&(b.expires_at, &b.handle)));
        Ok(all)
    }

    /// Revokes the outstanding tokens `selector` names and returns them; none is an
    /// empty list, not an error. A handle prefix must match at most one token.
    pub fn revoke(
        &self,
        selector: &Selector,
        now: OffsetDateTime,
    ) -> Result<Vec<Outstanding>, JoinTokenError> {
        if let Selector::Handle(prefix) = selector {
            let hex = prefix.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex || !(MIN_HANDLE_PREFIX..=HANDLE_LEN).contains(&prefix.len()) {
                return Err(JoinTokenError::BadHandle);
            }
        }
        let chosen: Vec<(String, Outstanding)> = self
            .records(now)?
            .into_iter()
            .filter(|(_, o)| match selector {
                Selector::Handle(prefix) => o.handle.starts_with(&prefix.to_ascii_lowercase()),
                Selector::Id(id) => &o.id == id,
            })
            .collect();
        if let Selector::Handle(prefix) = selector
            && chosen.len() > 1
        {
            return Err(JoinTokenError::AmbiguousHandle(prefix.clone()));
        }
        let mut revoked = Vec::with_capacity(chosen.len());
        for (hash_hex, outstanding) in chosen {
            if let Some(store) = &self.shared {
                if shared::claim(store, &hash_hex)? {
                    revoked.push(outstanding);
                }
                continue;
            }
            let path = self.record_path(&hash_hex);
            match std::fs::remove_file(&path) {
                Ok(()) => revoked.push(outstanding),
                // Redeemed or revoked meanwhile: not outstanding any more either way.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(self.io(&path, source)),
            }
        }
        Ok(revoked)
    }

    /// Removes the record of `hash_hex`, best effort (an expired record is inert).
    fn remove(&self, hash_hex: &str) {
        match &self.shared {
            Some(store) => {
                let _ = shared::claim(store, hash_hex);
            }
            None => {
                let _ = std::fs::remove_file(self.record_path(hash_hex));
            }
        }
    }

    /// The outstanding records with their hashes; removes expired ones (best effort:
    /// a failure leaves only an inert file behind) and ignores anything unreadable.
    fn records(&self, now: OffsetDateTime) -> Result<Vec<(String, Outstanding)>, JoinTokenError> {
        let now = now.unix_timestamp();
        let outstanding = |hash: &str, record: Record| Outstanding {
            handle: hash[..HANDLE_LEN].to_owned(),
            id: record.id,
            created_at: record.created_at,
            expires_at: record.expires_at,
        };
        if let Some(store) = &self.shared {
            // Redis expires records with their tokens.
            return Ok(shared::all(store)?
                .into_iter()
                .filter(|(hash, record)| hash.len() == 64 && now < record.expires_at)
                .map(|(hash, record)| {
                    let o = outstanding(&hash, record);
                    (hash, o)
                })
                .collect());
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries.flatten().take(MAX_RECORDS) {
            let path = entry.path();
            let Some(hash) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| s.len() == 64 && path.extension().is_some_and(|e| e == RECORD_SUFFIX))
            else {
                continue;
            };
            let Some(record) = fsio::read_bounded(&path, MAX_RECORD_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            else {
                continue;
            };
            if now >= record.expires_at {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            out.push((hash.to_owned(), outstanding(hash, record)));
        }
        Ok(out)
    }

    fn record_path(&self, hash_hex: &str) -> PathBuf {
        self.dir.join(format!("{hash_hex}.{RECORD_SUFFIX}"))
    }

    fn io(&self, path: &Path, source: io::Error) -> JoinTokenError {
        JoinTokenError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn hash_hex(token: &str) -> String {
    fsio::hex(digest(&SHA256, token.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::MemoryLedger;

    struct Setup {
        tmp: tempfile::TempDir,
        store: JoinTokens,
        td: TrustDomain,
        id: SpiffeId,
        ledger: MemoryLedger,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let store = JoinTokens::new(tmp.path().join("join-tokens"));
        Setup {
            store,
            tmp,
            td: TrustDomain::new("example.org").unwrap(),
            id: "spiffe://example.org/fn/orders".parse().unwrap(),
            ledger: MemoryLedger::new(100, 0),
        }
    }

    async fn redeem(s: &Setup, token: &str, now: i64) -> Result<SpiffeId, JoinTokenError> {
        let found = s.store.find(token, now)?;
        s.store.redeem(found, &s.ledger, now).await
    }

    #[tokio::test]
    async fn join_token_redeems_once_for_its_id() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let made = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        assert!(made.token.starts_with(PREFIX));
        let t = now.unix_timestamp();
        assert_eq!(redeem(&s, &made.token, t).await.unwrap(), s.id);
        assert!(matches!(
            redeem(&s, &made.token, t).await,
            Err(JoinTokenError::Invalid)
        ));
        assert!(s.store.list(now).unwrap().is_empty());
    }

    #[tokio::test]
    async fn finding_a_token_does_not_spend_it() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let made = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let t = now.unix_timestamp();
        for _ in 0..3 {
            assert_eq!(s.store.find(&made.token, t).unwrap().id, s.id);
        }
        assert_eq!(redeem(&s, &made.token, t).await.unwrap(), s.id);
    }

    #[tokio::test]
    async fn the_ledger_alone_refuses_a_second_redemption() {
        // Another replica sharing the ledger redeemed it; this one still has the file.
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let made = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let t = now.unix_timestamp();
        let copy = tempfile::tempdir().unwrap();
        let other = JoinTokens::new(copy.path());
        for entry in std::fs::read_dir(&s.store.dir).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        assert_eq!(redeem(&s, &made.token, t).await.unwrap(), s.id);
        let found = other.find(&made.token, t).unwrap();
        assert!(matches!(
            other.redeem(found, &s.ledger, t).await,
            Err(JoinTokenError::Invalid)
        ));
    }

    #[tokio::test]
    async fn the_record_alone_refuses_a_second_redemption() {
        // A restarted issuer: its in-memory ledger is empty, the record is gone.
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let made = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let t = now.unix_timestamp();
        assert_eq!(redeem(&s, &made.token, t).await.unwrap(), s.id);
        let fresh = MemoryLedger::new(100, t);
        assert!(matches!(
            s.store.find(&made.token, t),
            Err(JoinTokenError::Invalid)
        ));
        // Even a lookup done before the first redemption cannot be spent again.
        let made = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let early = s.store.find(&made.token, t).unwrap();
        assert_eq!(redeem(&s, &made.token, t).await.unwrap(), s.id);
        assert!(matches!(
            s.store.redeem(early, &fresh, t).await,
            Err(JoinTokenError::Invalid)
        ));
    }

    /// Runs a future on this thread: the memory ledger answers at once.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn concurrent_redemptions_yield_exactly_one_identity() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let made = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let t = now.unix_timestamp();
        let wins = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| block_on(redeem(&s, &made.token, t)).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join())
                .filter(|r| matches!(r, Ok(true)))
                .count()
        });
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn a_full_ledger_spends_nothing() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let made = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let t = now.unix_timestamp();
        let full = MemoryLedger::new(0, 0);
        let found = s.store.find(&made.token, t).unwrap();
        assert!(matches!(
            s.store.redeem(found, &full, t).await,
            Err(JoinTokenError::Unavailable)
        ));
        assert_eq!(redeem(&s, &made.token, t).await.unwrap(), s.id);
    }

    #[tokio::test]
    async fn expired_malformed_and_unknown_tokens_are_invalid() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let made = s
            .store
            .create(&s.td, &s.id, Duration::from_secs(60), now)
            .unwrap();
        let later = now.unix_timestamp() + 60;
        assert!(matches!(
            redeem(&s, &made.token, later).await,
            Err(JoinTokenError::Invalid)
        ));
        let unknown = format!("{PREFIX}{}", "A".repeat(43));
        for bad in [
            "",
            "baton-jt-",
            "baton-jt-../../etc/passwd",
            "x",
            &unknown,
            &format!("{}=", made.token.as_str()),
        ] {
            assert!(
                matches!(
                    redeem(&s, bad, now.unix_timestamp()).await,
                    Err(JoinTokenError::Invalid)
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn the_store_holds_no_usable_token() {
        let s = setup();
        let made = s
            .store
            .create(&s.td, &s.id, DEFAULT_TTL, OffsetDateTime::now_utc())
            .unwrap();
        let secret = made.token.strip_prefix(PREFIX).unwrap();
        for entry in std::fs::read_dir(s.tmp.path().join("join-tokens")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!text.contains(secret) && !path.to_string_lossy().contains(secret));
        }
        assert!(
            !format!("{:?}", s.store.list(OffsetDateTime::now_utc()).unwrap()).contains(secret)
        );
    }

    #[tokio::test]
    async fn list_shows_outstanding_tokens_by_handle_and_drops_expired_ones() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let other: SpiffeId = "spiffe://example.org/fn/payments".parse().unwrap();
        let a = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let b = s
            .store
            .create(&s.td, &other, Duration::from_secs(60), now)
            .unwrap();
        let listed = s.store.list(now).unwrap();
        assert_eq!(listed.len(), 2);
        // Soonest expiry first.
        assert_eq!(
            (listed[0].handle.as_str(), &listed[0].id),
            (b.handle.as_str(), &other)
        );
        assert_eq!(
            (listed[1].handle.as_str(), &listed[1].id),
            (a.handle.as_str(), &s.id)
        );
        assert_eq!(listed[1].created_at, Some(now.unix_timestamp()));
        assert_eq!(listed[1].expires_at, (now + DEFAULT_TTL).unix_timestamp());

        let later = now + Duration::from_secs(61);
        assert_eq!(s.store.list(later).unwrap().len(), 1);
        assert_eq!(
            std::fs::read_dir(&s.store.dir).unwrap().count(),
            1,
            "the expired record was removed"
        );
    }

    #[tokio::test]
    async fn revoke_by_handle_or_identity_makes_tokens_unusable() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let other: SpiffeId = "spiffe://example.org/fn/payments".parse().unwrap();
        let a1 = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let a2 = s.store.create(&s.td, &s.id, DEFAULT_TTL, now).unwrap();
        let b = s.store.create(&s.td, &other, DEFAULT_TTL, now).unwrap();

        let revoked = s
            .store
            .revoke(&Selector::Handle(b.handle[..8].to_ascii_uppercase()), now)
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].id, other);
        assert!(matches!(
            redeem(&s, &b.token, t).await,
            Err(JoinTokenError::Invalid)
        ));

        let revoked = s.store.revoke(&Selector::Id(s.id.clone()), now).unwrap();
        assert_eq!(revoked.len(), 2);
        for made in [&a1, &a2] {
            assert!(matches!(
                redeem(&s, &made.token, t).await,
                Err(JoinTokenError::Invalid)
            ));
        }
        assert!(s.store.list(now).unwrap().is_empty());
        // Nothing left to revoke is an empty answer, not an error.
        assert!(
            s.store
                .revoke(&Selector::Id(s.id.clone()), now)
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn revoke_refuses_short_non_hex_and_ambiguous_handles() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        for bad in [
            "",
            "abc",
            "0123456",
            "zzzzzzzz",
            "../../etc",
            &"0".repeat(17),
        ] {
            assert!(
                matches!(
                    s.store.revoke(&Selector::Handle(bad.to_owned()), now),
                    Err(JoinTokenError::BadHandle)
                ),
                "{bad}"
            );
        }
        // Two records whose handles share a prefix.
        std::fs::create_dir_all(&s.store.dir).unwrap();
        for hash in ["ab".repeat(32), format!("abababab{}", "cd".repeat(28))] {
            let record = Record {
                id: s.id.clone(),
                expires_at: now.unix_timestamp() + 60,
                created_at: None,
            };
            std::fs::write(
                s.store.record_path(&hash),
                serde_json::to_vec(&record).unwrap(),
            )
            .unwrap();
        }
        assert!(matches!(
            s.store.revoke(&Selector::Handle("abababab".into()), now),
            Err(JoinTokenError::AmbiguousHandle(_))
        ));
        assert_eq!(
            s.store.list(now).unwrap().len(),
            2,
            "an ambiguous revoke removes nothing"
        );
    }

    #[tokio::test]
    async fn reserved_foreign_ids_and_long_lifetimes_are_refused() {
        let s = setup();
        let now = OffsetDateTime::now_utc();
        let reserved: SpiffeId = "spiffe://example.org/baton/x".parse().unwrap();
        let foreign: SpiffeId = "spiffe://other.org/fn".parse().unwrap();
        assert!(matches!(
            s.store.create(&s.td, &reserved, DEFAULT_TTL, now),
            Err(JoinTokenError::Id(_))
        ));
        assert!(matches!(
            s.store.create(&s.td, &foreign, DEFAULT_TTL, now),
            Err(JoinTokenError::Id(_))
        ));
        assert!(matches!(
            s.store
                .create(&s.td, &s.id, MAX_TTL + Duration::from_secs(1), now),
            Err(JoinTokenError::Lifetime(_))
        ));
    }
}
