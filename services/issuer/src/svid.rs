//! Workload certificates over the API (SPEC §5 `POST /v1/svid`, EST-like: RFC 7030
//! `simpleenroll` with a join token, `simplereenroll` with the current certificate).
//!
//! The certificate carries the identity the proof establishes — the join token's bound
//! ID, or the renewing certificate's own — and nothing from the CSR but its public key,
//! whose possession the CSR's signature proves. Every check that can fail on the
//! caller's input runs before a join token is spent.

use std::sync::Arc;
use std::time::Duration;

use baton_proto::SpiffeId;
use rcgen::PublicKeyData as _;
use rcgen::SubjectPublicKeyInfo;
use time::OffsetDateTime;

use crate::attest::sha256;
use crate::datadir::OpenDataDir;
use crate::join_token::{Found, JoinTokenError, JoinTokens};
use crate::ledger::ReplayLedger;
use crate::pki::{self, PkiError};

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// The CSR is malformed, its signature does not verify, or its key type is not
    /// supported (400 `invalid_request`).
    #[error("csr: {0}")]
    Csr(#[source] PkiError),
    /// A renewal presented the current certificate's key again (400 `invalid_request`).
    #[error(
        "renewal needs a new key: the CSR's public key is the current certificate's; generate a fresh key pair"
    )]
    SameKey,
    /// The join token could not be redeemed (401 `invalid_client`, or 503 when the
    /// replay ledger is unavailable).
    #[error(transparent)]
    JoinToken(#[from] JoinTokenError),
    /// Signing the certificate failed: Baton's fault, not the caller's (500).
    #[error("cannot issue the certificate")]
    Issue(#[source] PkiError),
}

/// A CSR's public key, its possession proven by the CSR's signature.
#[derive(Debug)]
pub struct CsrKey {
    spki: SubjectPublicKeyInfo,
    sha256: [u8; 32],
}

impl CsrKey {
    /// Parses a PEM (or DER) CSR and checks its self-signature.
    pub fn parse(csr: &[u8]) -> Result<Self, SvidError> {
        let spki = pki::csr_public_key(csr).map_err(SvidError::Csr)?;
        let sha256 = sha256(spki.der_bytes());
        Ok(Self { spki, sha256 })
    }

    /// Whether this is the key whose subject-public-key SHA-256 is `key_sha256`
    /// (`Attested::key_sha256`). Public keys are not secret: a plain comparison.
    pub fn is(&self, key_sha256: &[u8; 32]) -> bool {
        &self.sha256 == key_sha256
    }
}

/// A certificate issued by [`SvidIssuer::issue`].
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The identity it carries.
    pub id: SpiffeId,
    /// The chain, PEM, leaf first (Baton's CA signs leaves directly: the leaf alone).
    pub chain_pem: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Issues workload certificates for the API: the CA, the join tokens, and the ledger
/// that makes each join token one-time.
#[derive(Debug)]
pub struct SvidIssuer {
    data: Arc<OpenDataDir>,
    join_tokens: JoinTokens,
    ledger: Arc<dyn ReplayLedger>,
    ttl: Duration,
}

impl SvidIssuer {
    /// Issues certificates valid for `ttl` from `data`'s CA, redeeming join tokens of
    /// `data`'s store through `ledger` (the issuer's one replay ledger).
    pub fn new(data: Arc<OpenDataDir>, ledger: Arc<dyn ReplayLedger>, ttl: Duration) -> Self {
        let join_tokens = JoinTokens::new(data.dir().join_tokens_path());
        Self {
            data,
            join_tokens,
            ledger,
            ttl,
        }
    }

    /// Redeems join tokens of `join_tokens` (e.g. the distributed store's) instead of
    /// the data directory's.
    pub fn with_join_tokens(mut self, join_tokens: JoinTokens) -> Self {
        self.join_tokens = join_tokens;
        self
    }

    /// The trust bundle, PEM.
    pub fn bundle_pem(&self) -> &str {
        self.data.bundle_pem()
    }

    /// Looks a join token up without spending it. The lookup is file or store I/O, so
    /// it runs on the blocking pool.
    pub async fn find_join_token(&self, token: &str, now: i64) -> Result<Found, SvidError> {
        let tokens = self.join_tokens.clone();
        let token = zeroize::Zeroizing::new(token.to_owned());
        tokio::task::spawn_blocking(move || tokens.find(&token, now))
            .await
            .map_err(|_| SvidError::JoinToken(JoinTokenError::Unavailable))?
            .map_err(SvidError::from)
    }

    /// Spends a join token found by [`find_join_token`](Self::find_join_token).
    pub async fn redeem(&self, found: Found, now: i64) -> Result<SpiffeId, SvidError> {
        Ok(self
            .join_tokens
            .redeem(found, self.ledger.as_ref(), now)
            .await?)
    }

    /// Certifies `key` as `id` from `now` for the configured lifetime.
    pub fn issue(
        &self,
        id: &SpiffeId,
        key: &CsrKey,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, SvidError> {
        let cert = self
            .data
            .ca()
            .issue_svid(id, &key.spki, self.ttl, now)
            .map_err(SvidError::Issue)?;
        Ok(IssuedSvid {
            id: id.clone(),
            chain_pem: cert.pem(),
            serial: cert.serial,
            not_after: cert.not_after,
        })
    }
}
