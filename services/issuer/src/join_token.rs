//! Join tokens (SPEC §9 `baton enroll --join-token`): one-time, short-lived secrets
//! bound to one SPIFFE ID, with which a function fetches its first certificate at
//! start-up, so nothing long-lived is baked into its deployment.
//!
//! Only a SHA-256 hash of each token is stored, one file per token: reading the data
//! directory does not reveal a usable token. Redemption claims the file with an atomic
//! rename before reading it, so of two concurrent redemptions exactly one succeeds.

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
use crate::pki::{self, PkiError};

/// Prefix that makes a join token recognisable (e.g. to secret scanners).
pub const PREFIX: &str = "baton-jt-";
/// Default lifetime of a join token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest lifetime of a join token.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const SECRET_BYTES: usize = 32;
const RECORD_SUFFIX: &str = ".json";
const MAX_RECORD_BYTES: u64 = 4096;

/// Why a join token could not be made or redeemed.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// The token is malformed, unknown, already used or expired. One variant for all
    /// four, so an attacker learns nothing from the answer.
    #[error("join token is invalid, expired or already used")]
    Invalid,
    /// The ID may not be enrolled.
    #[error(transparent)]
    Id(#[from] PkiError),
    /// The lifetime is out of range.
    #[error("join token lifetime {0:?} is outside 1s..=24h")]
    Lifetime(Duration),
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
}

/// A freshly made join token. The token itself is shown once and never stored.
#[derive(Debug)]
pub struct NewJoinToken {
    /// The secret token.
    pub token: Zeroizing<String>,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: SpiffeId,
    expires_at: i64,
}

/// The join tokens of one data directory.
#[derive(Debug, Clone)]
pub struct JoinTokens {
    dir: PathBuf,
}

impl JoinTokens {
    /// The store in directory `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
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
        fsio::create_private_dir(&self.dir).map_err(|source| self.io(&self.dir, source))?;
        self.purge_expired(now);

        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| JoinTokenError::Random)?;
        let token = Zeroizing::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(*secret)));
        let expires_at = now + ttl;
        let record = Record {
            id: id.clone(),
            expires_at: expires_at.unix_timestamp(),
        };
        let path = self.record_path(&token);
        let bytes = serde_json::to_vec(&record).map_err(|_| JoinTokenError::Random)?;
        fsio::write_new(&path, &bytes, Mode::Private).map_err(|source| self.io(&path, source))?;
        Ok(NewJoinToken { token, expires_at })
    }

    /// Redeems `token` once: returns the ID it is bound to and forgets it.
    pub fn redeem(&self, token: &str, now: OffsetDateTime) -> Result<SpiffeId, JoinTokenError> {
        // The token is attacker-controlled: check its shape before it touches a path.
        let well_formed = token
            .strip_prefix(PREFIX)
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .is_some_and(|secret| secret.len() == SECRET_BYTES);
        if !well_formed {
            return Err(JoinTokenError::Invalid);
        }
        let path = self.record_path(token);
        let claimed = path.with_extension("redeeming");
        match std::fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(JoinTokenError::Invalid),
            Err(source) => return Err(self.io(&path, source)),
        }
        let record = fsio::read_bounded(&claimed, MAX_RECORD_BYTES);
        let _ = std::fs::remove_file(&claimed);
        let record: Record = record
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(JoinTokenError::Invalid)?;
        if now.unix_timestamp() >= record.expires_at {
            return Err(JoinTokenError::Invalid);
        }
        Ok(record.id)
    }

    /// Removes records of tokens that expired unused. Best effort: a failure here
    /// leaves only an inert file behind.
    fn purge_expired(&self, now: OffsetDateTime) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let expired = fsio::read_bounded(&path, MAX_RECORD_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                .is_some_and(|r| now.unix_timestamp() >= r.expires_at);
            if expired {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn record_path(&self, token: &str) -> PathBuf {
        let hash = digest(&SHA256, token.as_bytes());
        self.dir
            .join(format!("{}{RECORD_SUFFIX}", fsio::hex(hash.as_ref())))
    }

    fn io(&self, path: &Path, source: io::Error) -> JoinTokenError {
        JoinTokenError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, JoinTokens, TrustDomain, SpiffeId) {
        let tmp = tempfile::tempdir().unwrap();
        let store = JoinTokens::new(tmp.path().join("join-tokens"));
        let td = TrustDomain::new("example.org").unwrap();
        let id: SpiffeId = "spiffe://example.org/fn/orders".parse().unwrap();
        (tmp, store, td, id)
    }

    #[test]
    fn join_token_redeems_once_for_its_id() {
        let (_tmp, store, td, id) = setup();
        let now = OffsetDateTime::now_utc();
        let made = store.create(&td, &id, DEFAULT_TTL, now).unwrap();
        assert!(made.token.starts_with(PREFIX));
        assert_eq!(store.redeem(&made.token, now).unwrap(), id);
        assert!(matches!(
            store.redeem(&made.token, now),
            Err(JoinTokenError::Invalid)
        ));
    }

    #[test]
    fn expired_malformed_and_unknown_tokens_are_invalid() {
        let (_tmp, store, td, id) = setup();
        let now = OffsetDateTime::now_utc();
        let made = store
            .create(&td, &id, Duration::from_secs(60), now)
            .unwrap();
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            store.redeem(&made.token, later),
            Err(JoinTokenError::Invalid)
        ));
        for bad in [
            "",
            "baton-jt-",
            "baton-jt-../../etc/passwd",
            "x",
            &format!("{PREFIX}{}", "A".repeat(43)),
        ] {
            assert!(
                matches!(store.redeem(bad, now), Err(JoinTokenError::Invalid)),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_store_holds_no_usable_token() {
        let (tmp, store, td, id) = setup();
        let made = store
            .create(&td, &id, DEFAULT_TTL, OffsetDateTime::now_utc())
            .unwrap();
        let secret = made.token.strip_prefix(PREFIX).unwrap();
        for entry in std::fs::read_dir(tmp.path().join("join-tokens")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!text.contains(secret) && !path.to_string_lossy().contains(secret));
        }
    }

    #[test]
    fn reserved_foreign_ids_and_long_lifetimes_are_refused() {
        let (_tmp, store, td, _) = setup();
        let now = OffsetDateTime::now_utc();
        let reserved: SpiffeId = "spiffe://example.org/baton/x".parse().unwrap();
        let foreign: SpiffeId = "spiffe://other.org/fn".parse().unwrap();
        let ok: SpiffeId = "spiffe://example.org/fn".parse().unwrap();
        assert!(matches!(
            store.create(&td, &reserved, DEFAULT_TTL, now),
            Err(JoinTokenError::Id(_))
        ));
        assert!(matches!(
            store.create(&td, &foreign, DEFAULT_TTL, now),
            Err(JoinTokenError::Id(_))
        ));
        assert!(matches!(
            store.create(&td, &ok, MAX_TTL + Duration::from_secs(1), now),
            Err(JoinTokenError::Lifetime(_))
        ));
    }
}
