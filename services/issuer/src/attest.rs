//! Attestation (SPEC §3): proves which workload is calling, from its X.509-SVID
//! presented over mTLS (RFC 8705 `tls_client_auth`) or from a client assertion signed
//! with the SVID's key (RFC 7523 `private_key_jwt`).
//!
//! Both paths check the same things about the certificate chain: a real path to the
//! trust bundle (rustls-webpki, never a string comparison), validity period, an
//! end-entity certificate with `digitalSignature`, exactly one URI SAN that is a SPIFFE
//! ID of this trust domain, not reserved (`/baton/…`, so a token-signer certificate can
//! never pose as a caller), and not on the deny list.
//!
//! An assertion is checked in the order a reader expects: shape → header → chain →
//! algorithm bound to the certificate's key → signature → deny list → claims →
//! one-time use. The `jti` is consumed last, so an invalid assertion never burns it.
//!
//! A successful chain verdict is cached per chain fingerprint, so a repeat caller pays
//! one signature check rather than a chain walk. What can change between calls is
//! checked outside the cache on every call: the time against the chain's validity, and
//! the deny list.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_proto::claims::{
    AssertionClaims, JwsAlgorithm, MAX_ASSERTION_LIFETIME_SECS, MAX_CLOCK_LEEWAY_SECS,
};
use baton_proto::json::{UniqueJsonError, from_slice_unique};
use baton_proto::{SpiffeId, SpiffeIdError, TrustDomain};
use moka::sync::Cache;
use ring::digest;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::Deserialize;
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519, Oid};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::deny::DenyList;
use crate::jws::{self, CompactJws, JwsError};
use crate::ledger::{LedgerError, ReplayLedger};

/// Largest client assertion accepted, in bytes. Larger than an access token's 8 KiB
/// (SPEC §4) because the header carries the certificate chain (`x5c`), base64 encoded.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// Most certificates in a presented chain: the leaf, at most one intermediate (the
/// root CA allows path length 1), the root if the client sends it, and one to spare.
pub const MAX_CHAIN_CERTS: usize = 4;
/// Longest `jti` accepted, in bytes: it is stored in the replay ledger.
pub const MAX_JTI_BYTES: usize = 256;
/// How long a chain verdict is reused before the chain is walked again.
const VERDICT_TTL: Duration = Duration::from_secs(5 * 60);
/// Most chain verdicts cached at once.
const VERDICT_CAPACITY: u64 = 10_000;

/// How the caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// Mutual TLS with the workload certificate (RFC 8705 §2.1).
    Mtls,
    /// A client assertion signed with the workload key (RFC 7523 §2.2).
    PrivateKeyJwt,
}

impl AuthMethod {
    /// The RFC 8414 / RFC 7591 name of the method (`token_endpoint_auth_methods_supported`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mtls => "tls_client_auth",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// A caller whose identity was attested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The caller's SPIFFE ID, from its certificate's URI SAN.
    pub id: SpiffeId,
    /// How it proved it.
    pub method: AuthMethod,
    /// Base64url (unpadded) SHA-256 of the leaf certificate's DER: the `cnf` `x5t#S256`
    /// of tokens bound to this certificate (RFC 8705 §3.1).
    pub x5t_s256: String,
    /// End of the leaf certificate's validity, Unix seconds.
    pub cert_not_after: i64,
    /// SHA-256 of the leaf's subject public key (the bit string's contents): tells a
    /// renewal for a new key from one for the same key.
    pub key_sha256: [u8; 32],
}

/// Why a caller's identity was not accepted. Messages name the rule that failed and
/// never contain the assertion or any key material.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// Neither a client certificate nor a client assertion was presented.
    #[error("no client certificate: authenticate with mTLS or a client assertion")]
    NoCertificate,
    /// The chain has more certificates than any Baton chain needs.
    #[error("certificate chain has more than {MAX_CHAIN_CERTS} certificates")]
    ChainTooLong,
    /// The leaf certificate is not valid DER X.509.
    #[error("the leaf certificate is not valid DER X.509")]
    BadCertificate,
    /// A certificate after the leaf is not valid DER X.509. Path building would skip
    /// it, but RFC 7515 §4.1.6 makes the whole chain invalid, and a chain that carries
    /// junk is not one a workload's own library made.
    #[error(
        "certificate {position} of the chain (the leaf is 1) is not valid DER X.509; \
         send the leaf, then its intermediates"
    )]
    BadChainCertificate {
        /// 1-based position in the chain as presented.
        position: usize,
    },
    /// No path from the leaf to the trust bundle.
    #[error("certificate chain does not lead to this trust domain's bundle")]
    UntrustedChain,
    /// A certificate of the chain has expired.
    #[error("certificate has expired: renew the workload certificate")]
    Expired,
    /// A certificate of the chain is not valid yet.
    #[error("certificate is not valid yet: check the clock")]
    NotYetValid,
    /// The leaf is a CA certificate.
    #[error("certificate is a CA certificate; present the workload (end-entity) certificate")]
    NotEndEntity,
    /// The leaf's key usage does not allow signing as a client.
    #[error(
        "certificate key usage does not allow client authentication: it needs digitalSignature, \
         no keyCertSign or cRLSign, and clientAuth if it lists extended key usages"
    )]
    KeyUsage,
    /// The leaf does not carry exactly one URI SAN.
    #[error("certificate must carry exactly one URI SAN, the SPIFFE ID")]
    SanCount,
    /// The leaf's URI SAN is not a valid SPIFFE ID.
    #[error("certificate URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(#[source] SpiffeIdError),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("{id} is not in this issuer's trust domain")]
    ForeignTrustDomain {
        /// The refused ID.
        id: SpiffeId,
    },
    /// The SPIFFE ID lies under `/baton/`, reserved for Baton's own identities.
    #[error("{id} is reserved for Baton itself and never attests as a workload")]
    ReservedId {
        /// The refused ID.
        id: SpiffeId,
    },
    /// The SPIFFE ID is on the identity deny list.
    #[error("{id} is on the identity deny list")]
    Denied {
        /// The refused ID.
        id: SpiffeId,
    },
    /// The client assertion is not a well-formed compact JWS with the expected members.
    #[error("malformed client assertion: {0}")]
    MalformedAssertion(&'static str),
    /// The client assertion is longer than [`MAX_ASSERTION_BYTES`].
    #[error("client assertion is longer than {MAX_ASSERTION_BYTES} bytes")]
    AssertionTooLarge,
    /// The header's `alg` is not ES256 or EdDSA (`none`, HMAC, RSA, …).
    #[error("client assertion alg must be ES256 or EdDSA")]
    UnsupportedAlgorithm,
    /// The certificate's key is neither P-256 nor Ed25519, so it cannot sign an assertion.
    #[error("certificate key is neither EC P-256 nor Ed25519: it cannot sign a client assertion")]
    UnsupportedKey,
    /// The header's `alg` does not match the certificate's key type.
    #[error(
        "client assertion alg does not match the certificate's key (P-256 signs ES256, Ed25519 signs EdDSA)"
    )]
    AlgorithmMismatch,
    /// The signature does not verify with the certificate's key.
    #[error("client assertion signature does not verify with the certificate's key")]
    BadSignature,
    /// `aud` is not one of the accepted audiences.
    #[error("client assertion aud must be this issuer's identifier or its token endpoint URL")]
    WrongAudience,
    /// `iss` and `sub` are not both the certificate's SPIFFE ID.
    #[error("client assertion iss and sub must both equal the certificate's SPIFFE ID")]
    IssuerSubjectMismatch,
    /// `exp` has passed.
    #[error("client assertion has expired: sign a fresh one")]
    AssertionExpired,
    /// `iat` or `nbf` is in the future.
    #[error("client assertion iat or nbf is in the future: check the clock")]
    AssertionNotYetValid,
    /// `exp - iat` exceeds [`MAX_ASSERTION_LIFETIME_SECS`].
    #[error("client assertion lifetime (exp - iat) exceeds {MAX_ASSERTION_LIFETIME_SECS} seconds")]
    AssertionTooLong,
    /// The assertion's `jti` was already used.
    #[error("client assertion jti was already used: sign a fresh assertion for every request")]
    Replayed,
    /// The assertion was issued (`iat`) at or before the replay ledger's epoch (an
    /// issuer restart, or a shared store that lost its data): it may have been used
    /// while no ledger was watching (SPEC §7).
    #[error("assertion issued before the replay ledger's epoch; sign a fresh one")]
    BeforeLedgerEpoch,
    /// The replay ledger cannot record the `jti`; the request must fail closed (503).
    #[error("replay ledger unavailable; retry shortly")]
    LedgerUnavailable,
    /// The attestor was configured with an unusable bundle or audience list.
    #[error("attestation is misconfigured: {0}")]
    InvalidConfig(&'static str),
}

impl AttestError {
    /// A stable, low-cardinality label for metrics (`denied` by reason, SPEC §5).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::ChainTooLong => "chain_too_long",
            Self::BadCertificate => "bad_certificate",
            Self::BadChainCertificate { .. } => "bad_chain_certificate",
            Self::UntrustedChain => "untrusted_chain",
            Self::Expired => "certificate_expired",
            Self::NotYetValid => "certificate_not_yet_valid",
            Self::NotEndEntity => "not_end_entity",
            Self::KeyUsage => "key_usage",
            Self::SanCount => "san_count",
            Self::BadSpiffeId(_) => "bad_spiffe_id",
            Self::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Self::ReservedId { .. } => "reserved_id",
            Self::Denied { .. } => "denied",
            Self::MalformedAssertion(_) => "malformed_assertion",
            Self::AssertionTooLarge => "assertion_too_large",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::UnsupportedKey => "unsupported_key",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience => "wrong_audience",
            Self::IssuerSubjectMismatch => "issuer_subject_mismatch",
            Self::AssertionExpired => "assertion_expired",
            Self::AssertionNotYetValid => "assertion_not_yet_valid",
            Self::AssertionTooLong => "assertion_too_long",
            Self::Replayed => "replayed",
            Self::BeforeLedgerEpoch => "before_ledger_epoch",
            Self::LedgerUnavailable => "ledger_unavailable",
            Self::InvalidConfig(_) => "invalid_config",
        }
    }

    /// Whether the failure is Baton's, not the caller's: the HTTP layer answers 503
    /// with `Retry-After` instead of 401 `invalid_client`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::LedgerUnavailable)
    }
}

/// The public key of a leaf certificate, with the one JWS algorithm it may verify.
#[derive(Debug)]
struct LeafKey {
    alg: JwsAlgorithm,
    /// Uncompressed point `0x04‖x‖y` (P-256) or the raw 32 bytes (Ed25519): what ring's
    /// `UnparsedPublicKey` takes.
    public_key: Vec<u8>,
}

/// What a successful chain walk established; cached per chain fingerprint.
#[derive(Debug)]
struct Verdict {
    id: SpiffeId,
    x5t_s256: String,
    leaf_not_after: i64,
    /// Latest `notBefore` and earliest `notAfter` over the verified path: the verdict
    /// holds only between them, whenever it is reused.
    not_before: i64,
    not_after: i64,
    /// `None` for keys that can authenticate over TLS but cannot sign ES256 / EdDSA.
    key: Option<LeafKey>,
    key_sha256: [u8; 32],
}

impl Verdict {
    /// Mirrors webpki's own bounds (both inclusive), so a cached verdict agrees with a
    /// fresh walk at the same `now`.
    fn check_time(&self, now: i64) -> Result<(), AttestError> {
        if now < self.not_before {
            return Err(AttestError::NotYetValid);
        }
        if now > self.not_after {
            return Err(AttestError::Expired);
        }
        Ok(())
    }

    fn attested(&self, method: AuthMethod) -> Attested {
        Attested {
            id: self.id.clone(),
            method,
            x5t_s256: self.x5t_s256.clone(),
            cert_not_after: self.leaf_not_after,
            key_sha256: self.key_sha256,
        }
    }
}

/// A client assertion that passed every check but one-time use.
struct Checked {
    verdict: Arc<Verdict>,
    /// Names the caller (jtis are unique per issuer of the assertion, RFC 7519
    /// §4.1.7).
    replay_key: String,
    iat: i64,
    /// Kept until the assertion stops being acceptable, exp + leeway.
    until: i64,
}

/// Checks callers' attested identities against one trust bundle and trust domain.
///
/// Build one at start (and again when the bundle changes); share it behind an `Arc`.
pub struct Attestor {
    anchors: Vec<TrustAnchor<'static>>,
    trust_domain: TrustDomain,
    audiences: Vec<String>,
    deny: Arc<DenyList>,
    ledger: Arc<dyn ReplayLedger>,
    verdicts: Cache<[u8; 32], Arc<Verdict>>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("anchors", &self.anchors.len())
            .field("trust_domain", &self.trust_domain)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl Attestor {
    /// An attestor trusting the CA certificates of `bundle` (DER) for workloads of
    /// `trust_domain`, accepting client assertions addressed to one of `audiences`
    /// (the issuer identifier and the token endpoint URL, SPEC §3).
    pub fn new(
        bundle: Vec<Vec<u8>>,
        trust_domain: TrustDomain,
        audiences: Vec<String>,
        deny: Arc<DenyList>,
        ledger: Arc<dyn ReplayLedger>,
    ) -> Result<Self, AttestError> {
        if bundle.is_empty() {
            return Err(AttestError::InvalidConfig("the trust bundle is empty"));
        }
        let anchors = bundle
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map(|anchor| anchor.to_owned())
                    .map_err(|_| {
                        AttestError::InvalidConfig("a trust bundle certificate does not parse")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(AttestError::InvalidConfig(
                "accepted assertion audiences must be non-empty strings",
            ));
        }
        Ok(Self {
            anchors,
            trust_domain,
            audiences,
            deny,
            ledger,
            verdicts: Cache::builder()
                .max_capacity(VERDICT_CAPACITY)
                .time_to_live(VERDICT_TTL)
                .build(),
        })
    }

    /// The trust domain whose workloads this attestor accepts.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Attests a caller from the certificate chain it presented over mTLS (leaf first).
    ///
    /// The TLS handshake has already proved that the peer holds the leaf's private key
    /// (RFC 8705 §2.1); this checks that the chain names a workload of this trust domain.
    pub fn attest_mtls<C: AsRef<[u8]>>(
        &self,
        chain: &[C],
        now: i64,
    ) -> Result<Attested, AttestError> {
        let verdict = self.verify_chain(chain, now)?;
        self.check_not_denied(&verdict.id)?;
        Ok(verdict.attested(AuthMethod::Mtls))
    }

    /// Attests a caller from a `private_key_jwt` client assertion (RFC 7523 §3, SPEC §3)
    /// and consumes its `jti`: the same assertion is accepted once, and only if it was
    /// issued after the replay ledger's epoch.
    ///
    /// Everything but the ledger is checked synchronously first; only a valid
    /// assertion waits on the ledger.
    pub async fn attest_assertion(&self, jws: &str, now: i64) -> Result<Attested, AttestError> {
        let Checked {
            verdict,
            replay_key,
            iat,
            until,
        } = self.check_assertion(jws, now)?;
        self.ledger
            .consume(&replay_key, Some(iat), until, now)
            .await
            .map_err(|e| match e {
                LedgerError::Replayed => {
                    // Only here is the replaying caller known (its signature verified).
                    crate::metrics::replay_attempt("client_assertion");
                    crate::audit::replayed(&verdict.id, "client_assertion", None);
                    AttestError::Replayed
                }
                LedgerError::Stale => AttestError::BeforeLedgerEpoch,
                LedgerError::Full | LedgerError::Unavailable => AttestError::LedgerUnavailable,
            })?;
        Ok(verdict.attested(AuthMethod::PrivateKeyJwt))
    }

    /// Every check of [`attest_assertion`](Self::attest_assertion) but one-time use.
    fn check_assertion(&self, jws: &str, now: i64) -> Result<Checked, AttestError> {
        let jws = CompactJws::parse(jws, MAX_ASSERTION_BYTES)?;
        let header = &jws.header;
        let signature = jws.signature()?;

        // The header is attacker-controlled: it only says which chain to check, and the
        // algorithm it names must agree with the key that chain certifies.
        // RFC 8725 §3.11 (explicit typing): no `typ`, `JWT`, or the RFC 7523bis
        // `client-authentication+jwt`, so an access token (`at+jwt`) is never taken
        // for a client assertion.
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !jws::typ_is(t, &["JWT", "client-authentication+jwt"]))
        {
            return Err(AttestError::MalformedAssertion(
                "typ must be JWT or client-authentication+jwt",
            ));
        }
        let x5c = header
            .x5c
            .as_deref()
            .ok_or(AttestError::MalformedAssertion(
                "the header must carry the certificate chain in x5c",
            ))?;
        if x5c.is_empty() {
            return Err(AttestError::MalformedAssertion("x5c is empty"));
        }
        if x5c.len() > MAX_CHAIN_CERTS {
            return Err(AttestError::ChainTooLong);
        }
        let chain = x5c
            .iter()
            .map(|cert| STANDARD.decode(cert))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                // RFC 7515 §4.1.6: x5c entries are base64 (not base64url) DER.
                AttestError::MalformedAssertion("an x5c entry is not standard base64")
            })?;
        let verdict = self.verify_chain(&chain, now)?;
        let key = verdict.key.as_ref().ok_or(AttestError::UnsupportedKey)?;
        if key.alg != header.alg {
            return Err(AttestError::AlgorithmMismatch);
        }
        let algorithm: &dyn VerificationAlgorithm = match key.alg {
            JwsAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            JwsAlgorithm::EdDsa => &signature::ED25519,
        };
        UnparsedPublicKey::new(algorithm, &key.public_key)
            .verify(jws.signing_input.as_bytes(), &signature)
            .map_err(|_| AttestError::BadSignature)?;

        // Checked after the signature: anyone holding the (public) certificate could
        // otherwise probe whether its owner is denied.
        self.check_not_denied(&verdict.id)?;

        let claims = parse_claims(&jws.payload()?)?;
        self.check_claims(&claims, &verdict.id, now)?;

        // The jti is consumed after this returns, so an assertion that fails any check
        // above leaves it unused.
        let replay_key = format!("client-assertion {} {}", verdict.id, claims.jti);
        Ok(Checked {
            verdict,
            replay_key,
            iat: claims.iat,
            until: claims.exp.saturating_add(leeway()),
        })
    }

    fn check_claims(
        &self,
        claims: &AssertionClaims,
        cert_id: &SpiffeId,
        now: i64,
    ) -> Result<(), AttestError> {
        // RFC 7523 §3 items 1–2: for client authentication iss and sub are the client,
        // which here is the identity its certificate proves.
        if claims.iss != claims.sub || &claims.sub != cert_id {
            return Err(AttestError::IssuerSubjectMismatch);
        }
        // RFC 7523 §3 item 3, with RFC 7523bis: one string, equal to an accepted value.
        if !self.audiences.contains(&claims.aud) {
            return Err(AttestError::WrongAudience);
        }
        if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_BYTES {
            return Err(AttestError::MalformedAssertion(
                "jti must be 1 to 256 bytes long",
            ));
        }
        // RFC 7519 §4.1.4–6 with the leeway of SPEC §4.
        if claims.exp <= now.saturating_sub(leeway()) {
            return Err(AttestError::AssertionExpired);
        }
        let horizon = now.saturating_add(leeway());
        if claims.iat > horizon || claims.nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(AttestError::AssertionNotYetValid);
        }
        match claims.exp.checked_sub(claims.iat) {
            Some(lifetime) if lifetime <= 0 => Err(AttestError::MalformedAssertion(
                "exp must be later than iat",
            )),
            Some(lifetime) if lifetime <= MAX_ASSERTION_LIFETIME_SECS as i64 => Ok(()),
            _ => Err(AttestError::AssertionTooLong),
        }
    }

    /// Refuses `id` if it is on the identity deny list.
    pub fn check_not_denied(&self, id: &SpiffeId) -> Result<(), AttestError> {
        if self.deny.contains(id) {
            return Err(AttestError::Denied { id: id.clone() });
        }
        Ok(())
    }

    /// The verdict for `chain` at `now`: from the cache if this exact chain passed
    /// before, else from a full walk. Only successes are cached.
    fn verify_chain<C: AsRef<[u8]>>(
        &self,
        chain: &[C],
        now: i64,
    ) -> Result<Arc<Verdict>, AttestError> {
        if chain.is_empty() {
            return Err(AttestError::NoCertificate);
        }
        if chain.len() > MAX_CHAIN_CERTS {
            return Err(AttestError::ChainTooLong);
        }
        let fingerprint = chain_fingerprint(chain);
        let verdict = match self.verdicts.get(&fingerprint) {
            Some(verdict) => verdict,
            None => {
                let verdict = Arc::new(self.walk_chain(chain, now)?);
                self.verdicts.insert(fingerprint, Arc::clone(&verdict));
                verdict
            }
        };
        verdict.check_time(now)?;
        Ok(verdict)
    }

    fn walk_chain<C: AsRef<[u8]>>(&self, chain: &[C], now: i64) -> Result<Verdict, AttestError> {
        let (leaf_der, rest) = chain.split_first().ok_or(AttestError::NoCertificate)?;
        let leaf_der = CertificateDer::from(leaf_der.as_ref());
        let end_entity =
            EndEntityCert::try_from(&leaf_der).map_err(|_| AttestError::BadCertificate)?;
        let intermediates: Vec<CertificateDer<'_>> = rest
            .iter()
            .map(|der| CertificateDer::from(der.as_ref()))
            .collect();
        for (i, der) in intermediates.iter().enumerate() {
            match X509Certificate::from_der(der.as_ref()) {
                Ok(([], _)) => {}
                _ => return Err(AttestError::BadChainCertificate { position: i + 2 }),
            }
        }
        let time =
            UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or_default()));
        let path = end_entity
            .verify_for_usage(
                ALL_VERIFICATION_ALGS,
                &self.anchors,
                &intermediates,
                time,
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(chain_error)?;

        let (rest, leaf) = X509Certificate::from_der(leaf_der.as_ref())
            .map_err(|_| AttestError::BadCertificate)?;
        if !rest.is_empty() {
            return Err(AttestError::BadCertificate);
        }
        let id = self.check_leaf(&leaf)?;

        let mut not_before = leaf.validity().not_before.timestamp();
        let leaf_not_after = leaf.validity().not_after.timestamp();
        let mut not_after = leaf_not_after;
        for cert in path.intermediate_certificates() {
            let der = cert.der();
            let (_, cert) =
                X509Certificate::from_der(der.as_ref()).map_err(|_| AttestError::UntrustedChain)?;
            not_before = not_before.max(cert.validity().not_before.timestamp());
            not_after = not_after.min(cert.validity().not_after.timestamp());
        }
        let thumbprint = digest::digest(&digest::SHA256, leaf_der.as_ref());
        let key_sha256 = sha256(&leaf.public_key().subject_public_key.data);
        Ok(Verdict {
            id,
            x5t_s256: URL_SAFE_NO_PAD.encode(thumbprint.as_ref()),
            leaf_not_after,
            not_before,
            not_after,
            key: leaf_key(leaf.public_key()),
            key_sha256,
        })
    }

    /// The X.509-SVID rules webpki does not check (SPIFFE X.509-SVID §4–5, SPEC §2).
    fn check_leaf(&self, leaf: &X509Certificate<'_>) -> Result<SpiffeId, AttestError> {
        // SPIFFE X.509-SVID §4.1: a leaf SVID has cA false.
        if leaf.is_ca() {
            return Err(AttestError::NotEndEntity);
        }
        // SPIFFE X.509-SVID §4.3: digitalSignature set, keyCertSign and cRLSign not.
        let usage = leaf
            .key_usage()
            .ok()
            .flatten()
            .ok_or(AttestError::KeyUsage)?;
        if !usage.value.digital_signature() || usage.value.key_cert_sign() || usage.value.crl_sign()
        {
            return Err(AttestError::KeyUsage);
        }
        // SPIFFE X.509-SVID §2: exactly one URI SAN; other name types may appear.
        let san = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .ok_or(AttestError::SanCount)?;
        let mut uris = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let (Some(uri), None) = (uris.next(), uris.next()) else {
            return Err(AttestError::SanCount);
        };
        let id = SpiffeId::new(uri).map_err(AttestError::BadSpiffeId)?;
        if !id.is_member_of(&self.trust_domain) {
            return Err(AttestError::ForeignTrustDomain { id });
        }
        // SPEC §2: `/baton/…` identities (the token signer) are Baton's own; a
        // workload presenting one would be impersonating the issuer.
        if id.is_reserved() {
            return Err(AttestError::ReservedId { id });
        }
        Ok(id)
    }
}

/// The JWS leeway of SPEC §4, as a signed number of seconds.
fn leeway() -> i64 {
    MAX_CLOCK_LEEWAY_SECS as i64
}

/// SHA-256 over the length-prefixed DER of every certificate, so two different chains
/// never share a fingerprint by moving bytes from one certificate to the next.
fn chain_fingerprint<C: AsRef<[u8]>>(chain: &[C]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for cert in chain {
        let der = cert.as_ref();
        ctx.update(&(der.len() as u64).to_be_bytes());
        ctx.update(der);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn chain_error(error: webpki::Error) -> AttestError {
    tracing::debug!(?error, "client certificate chain refused");
    match error {
        webpki::Error::CertExpired { .. } => AttestError::Expired,
        webpki::Error::CertNotValidYet { .. } => AttestError::NotYetValid,
        webpki::Error::CaUsedAsEndEntity => AttestError::NotEndEntity,
        webpki::Error::RequiredEkuNotFoundContext(_) => AttestError::KeyUsage,
        _ => AttestError::UntrustedChain,
    }
}

/// SHA-256 of `bytes`, as an array.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

fn leaf_key(spki: &SubjectPublicKeyInfo<'_>) -> Option<LeafKey> {
    let algorithm = &spki.algorithm;
    let key = &spki.subject_public_key.data;
    if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = algorithm
            .parameters
            .as_ref()
            .and_then(|p| Oid::try_from(p.clone()).ok())?;
        // RFC 5480 §2.2: an uncompressed point, 0x04‖x‖y.
        (curve == OID_EC_P256 && key.len() == 65 && key.first() == Some(&0x04)).then(|| LeafKey {
            alg: JwsAlgorithm::Es256,
            public_key: key.to_vec(),
        })
    } else if algorithm.algorithm == OID_SIG_ED25519 {
        // RFC 8410 §3: no parameters; the key is the raw 32 bytes.
        (algorithm.parameters.is_none() && key.len() == 32).then(|| LeafKey {
            alg: JwsAlgorithm::EdDsa,
            public_key: key.to_vec(),
        })
    } else {
        None
    }
}

impl From<JwsError> for AttestError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::TooLarge => Self::AssertionTooLarge,
            JwsError::UnsupportedAlgorithm => Self::UnsupportedAlgorithm,
            JwsError::Segments => Self::MalformedAssertion(
                "a compact JWS has exactly three base64url segments (RFC 7515 §7.1)",
            ),
            JwsError::Encoding(what) => Self::MalformedAssertion(what),
            JwsError::Header => Self::MalformedAssertion(
                "the header must be a JSON object with alg and x5c, and no crit (RFC 7515 §4.1.11)",
            ),
        }
    }
}

fn parse_claims(json: &[u8]) -> Result<AssertionClaims, AttestError> {
    from_slice_unique::<AssertionClaims>(json).map_err(|e| {
        if matches!(e, UniqueJsonError::DuplicateMember) {
            // RFC 7519 §4: a repeated claim is refused, or two readers could disagree
            // on who the caller is or for which server the assertion was made.
            return AttestError::MalformedAssertion("a claim appears twice in the assertion");
        }
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            aud: Option<serde_json::Value>,
        }
        match serde_json::from_slice::<Probe>(json) {
            // RFC 7523bis closes audience injection by allowing one string only.
            Ok(Probe {
                aud: Some(serde_json::Value::Array(_)),
            }) => AttestError::MalformedAssertion("aud must be one string, not an array"),
            _ => AttestError::MalformedAssertion(
                "the claims need iss and sub (SPIFFE IDs), aud and jti (strings), iat and exp (integers)",
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::MemoryLedger;
    use crate::pki::{CertificateAuthority, DEFAULT_CA_TTL, KeyType};
    use proptest::prelude::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    };
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
    use serde_json::{Value, json};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use time::OffsetDateTime;

    const NOW: i64 = 1_800_000_000;
    const DAY: Duration = Duration::from_secs(86_400);
    const ISSUER: &str = "https://baton.example.org";
    const TOKEN_ENDPOINT: &str = "https://baton.example.org/v1/token";

    fn at(t: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn new_ca(name: &str) -> CertificateAuthority {
        CertificateAuthority::create(&td(name), DEFAULT_CA_TTL, at(NOW - 3600)).unwrap()
    }

    /// A workload's certificate chain (leaf first) and private key.
    struct Workload {
        chain: Vec<Vec<u8>>,
        key: KeyPair,
        key_type: KeyType,
        id: SpiffeId,
    }

    impl Workload {
        fn alg(&self) -> &'static str {
            match self.key_type {
                KeyType::EcP256 => "ES256",
                KeyType::Ed25519 => "EdDSA",
            }
        }

        fn header(&self) -> Value {
            json!({
                "alg": self.alg(),
                "typ": "JWT",
                "x5c": self.chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>(),
            })
        }

        fn claims(&self, jti: &str) -> Value {
            json!({
                "iss": self.id.as_str(),
                "sub": self.id.as_str(),
                "aud": ISSUER,
                "jti": jti,
                "iat": NOW,
                "exp": NOW + 60,
            })
        }

        /// A compact JWS signed with the workload's own key, whatever the header says.
        fn sign(&self, header: &Value, claims: &Value) -> String {
            self.sign_raw(header, &serde_json::to_vec(claims).unwrap())
        }

        /// As [`Self::sign`], over claim bytes that need not be JSON at all.
        fn sign_raw(&self, header: &Value, claims: &[u8]) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let pkcs8 = self.key.serialized_der();
            let signature = match self.key_type {
                KeyType::EcP256 => {
                    let rng = SystemRandom::new();
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                        .unwrap()
                        .sign(&rng, input.as_bytes())
                        .unwrap()
                        .as_ref()
                        .to_vec()
                }
                KeyType::Ed25519 => Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .unwrap()
                    .sign(input.as_bytes())
                    .as_ref()
                    .to_vec(),
            };
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
        }

        fn assertion(&self, jti: &str) -> String {
            self.sign(&self.header(), &self.claims(jti))
        }

        fn assertion_with(&self, edit: impl FnOnce(&mut Value)) -> String {
            let mut claims = self.claims(&fresh_jti());
            edit(&mut claims);
            self.sign(&self.header(), &claims)
        }
    }

    fn next() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn fresh_jti() -> String {
        format!("jti-{}", next())
    }

    fn svid(ca: &CertificateAuthority, path: &str, key_type: KeyType) -> Workload {
        let key = key_type.generate().unwrap();
        let id = id(&format!("spiffe://{}{path}", ca.trust_domain()));
        let cert = ca.issue_svid(&id, &key, DAY, at(NOW - 60)).unwrap();
        Workload {
            chain: vec![cert.der],
            key,
            key_type,
            id,
        }
    }

    /// A leaf signed by `ca` from SVID-like parameters that `edit` may break.
    fn custom_leaf(
        ca: &CertificateAuthority,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Workload {
        let key = KeyType::EcP256.generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/fn/custom".try_into().unwrap(),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(NOW - 60);
        params.not_after = at(NOW + 3600);
        params.serial_number = Some(SerialNumber::from(next()));
        edit(&mut params);
        let issuer = Issuer::from_ca_cert_der(
            &ca.cert_der().to_vec().into(),
            KeyPair::try_from(ca.key_pkcs8()).unwrap(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Workload {
            chain: vec![cert.der().to_vec()],
            key,
            key_type: KeyType::EcP256,
            id: id("spiffe://example.org/fn/custom"),
        }
    }

    struct Fixture {
        ca: CertificateAuthority,
        deny: Arc<DenyList>,
        ledger: Arc<MemoryLedger>,
        attestor: Attestor,
    }

    fn fixture_with(extra_bundle: &[&CertificateAuthority], ledger_capacity: usize) -> Fixture {
        let ca = new_ca("example.org");
        let mut bundle = vec![ca.cert_der().to_vec()];
        bundle.extend(extra_bundle.iter().map(|c| c.cert_der().to_vec()));
        let deny = Arc::new(DenyList::new());
        // Started long enough ago that the epoch rule refuses none of the assertions
        // these tests sign (the oldest `iat` is NOW - 300, a full lifetime back).
        let ledger = Arc::new(MemoryLedger::new(ledger_capacity, NOW - 600));
        let attestor = Attestor::new(
            bundle,
            td("example.org"),
            vec![ISSUER.to_owned(), TOKEN_ENDPOINT.to_owned()],
            Arc::clone(&deny),
            ledger.clone(),
        )
        .unwrap();
        Fixture {
            ca,
            deny,
            ledger,
            attestor,
        }
    }

    fn fixture() -> Fixture {
        fixture_with(&[], 1000)
    }

    fn thumbprint(der: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der))
    }

    #[tokio::test]
    async fn valid_mtls_chain_is_attested_with_its_thumbprint() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let attested = f.attestor.attest_mtls(&w.chain, NOW).unwrap();
        assert_eq!(attested.id, w.id);
        assert_eq!(attested.method, AuthMethod::Mtls);
        assert_eq!(attested.x5t_s256, thumbprint(&w.chain[0]));
        assert_eq!(attested.x5t_s256.len(), 43);
        assert_eq!(attested.cert_not_after, NOW - 60 + 86_400);
        // Repeat callers hit the verdict cache and get the same answer.
        assert!(
            f.attestor
                .verdicts
                .contains_key(&chain_fingerprint(&w.chain))
        );
        assert_eq!(f.attestor.attest_mtls(&w.chain, NOW + 1).unwrap(), attested);
    }

    #[tokio::test]
    async fn valid_es256_assertion_is_attested() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let attested = f
            .attestor
            .attest_assertion(&w.assertion("a1"), NOW)
            .await
            .unwrap();
        assert_eq!(attested.id, w.id);
        assert_eq!(attested.method, AuthMethod::PrivateKeyJwt);
        assert_eq!(attested.x5t_s256, thumbprint(&w.chain[0]));
    }

    #[tokio::test]
    async fn valid_eddsa_assertion_is_attested() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/payments", KeyType::Ed25519);
        let attested = f
            .attestor
            .attest_assertion(&w.assertion("e1"), NOW)
            .await
            .unwrap();
        assert_eq!(attested.id, w.id);
        assert_eq!(attested.method, AuthMethod::PrivateKeyJwt);
    }

    #[tokio::test]
    async fn assertion_without_typ_or_with_rfc7523bis_typ_is_attested() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        for typ in [
            None,
            Some("client-authentication+jwt"),
            Some("application/jwt"),
        ] {
            let mut header = w.header();
            match typ {
                Some(t) => header["typ"] = json!(t),
                None => {
                    header.as_object_mut().unwrap().remove("typ");
                }
            }
            let jws = w.sign(&header, &w.claims(&fresh_jti()));
            assert!(
                f.attestor.attest_assertion(&jws, NOW).await.is_ok(),
                "{typ:?}"
            );
        }
    }

    #[tokio::test]
    async fn access_token_typ_is_not_a_client_assertion() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let mut header = w.header();
        header["typ"] = json!("at+jwt");
        let jws = w.sign(&header, &w.claims(&fresh_jti()));
        assert!(matches!(
            f.attestor.attest_assertion(&jws, NOW).await,
            Err(AttestError::MalformedAssertion(_))
        ));
    }

    #[tokio::test]
    async fn chain_through_an_intermediate_is_attested_and_without_it_is_untrusted() {
        let f = fixture();
        let root_issuer = Issuer::from_ca_cert_der(
            &f.ca.cert_der().to_vec().into(),
            KeyPair::try_from(f.ca.key_pkcs8()).unwrap(),
        )
        .unwrap();
        let inter_key = KeyType::EcP256.generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Baton intermediate");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(NOW - 3600);
        params.not_after = at(NOW + 30 * 86_400);
        params.serial_number = Some(SerialNumber::from(42u64));
        let inter = params.signed_by(&inter_key, &root_issuer).unwrap();
        let inter_ca =
            CertificateAuthority::from_parts(inter.der(), inter_key.serialized_der()).unwrap();

        let mut w = svid(&inter_ca, "/fn/regional", KeyType::Ed25519);
        assert!(matches!(
            f.attestor.attest_mtls(&w.chain, NOW),
            Err(AttestError::UntrustedChain)
        ));
        w.chain.push(inter.der().to_vec());
        assert_eq!(f.attestor.attest_mtls(&w.chain, NOW).unwrap().id, w.id);
        assert!(
            f.attestor
                .attest_assertion(&w.assertion("i1"), NOW)
                .await
                .is_ok()
        );
        // The verdict only holds while the intermediate is valid too.
        assert!(matches!(
            f.attestor.attest_mtls(&w.chain, NOW + 31 * 86_400),
            Err(AttestError::Expired)
        ));
    }

    #[tokio::test]
    async fn replayed_assertion_is_refused() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let jws = w.assertion("once");
        f.attestor.attest_assertion(&jws, NOW).await.unwrap();
        let err = f
            .attestor
            .attest_assertion(&jws, NOW + 30)
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::Replayed));
        assert_eq!(err.reason(), "replayed");
        // A new assertion that reuses the jti is a replay too.
        let reused = w.assertion_with(|c| {
            c["jti"] = json!("once");
            c["iat"] = json!(NOW + 1);
        });
        assert!(matches!(
            f.attestor.attest_assertion(&reused, NOW + 1).await,
            Err(AttestError::Replayed)
        ));
        // Until exp + leeway, the last moment it could be accepted, it stays recorded.
        assert!(matches!(
            f.attestor.attest_assertion(&jws, NOW + 60 + 4).await,
            Err(AttestError::Replayed)
        ));
    }

    #[tokio::test]
    async fn assertion_issued_at_or_before_the_ledger_epoch_is_invalid_client() {
        // The issuer consumed an assertion, then restarted: its new ledger starts empty
        // at NOW + 5 and has never seen that jti.
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let jws = w.assertion("before-restart");
        f.attestor.attest_assertion(&jws, NOW).await.unwrap();
        let restarted_ledger = Arc::new(MemoryLedger::new(100, NOW + 5));
        let restarted = Attestor::new(
            vec![f.ca.cert_der().to_vec()],
            td("example.org"),
            vec![ISSUER.to_owned()],
            Arc::clone(&f.deny),
            restarted_ledger.clone(),
        )
        .unwrap();
        // Still within its five-minute life: without the epoch rule, this replay would
        // be accepted.
        let err = restarted
            .attest_assertion(&jws, NOW + 10)
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::BeforeLedgerEpoch), "{err}");
        assert_eq!(err.reason(), "before_ledger_epoch");
        assert!(!err.is_unavailable(), "the caller's to fix: 401, not 503");
        assert_eq!(
            err.to_string(),
            "assertion issued before the replay ledger's epoch; sign a fresh one"
        );
        // Issued in the epoch's own second is refused too; one second later is fresh.
        let at_epoch = w.assertion_with(|c| c["iat"] = json!(NOW + 5));
        assert!(matches!(
            restarted.attest_assertion(&at_epoch, NOW + 10).await,
            Err(AttestError::BeforeLedgerEpoch)
        ));
        assert!(
            restarted_ledger.is_empty(),
            "a stale assertion burns nothing"
        );
        let fresh = w.assertion_with(|c| c["iat"] = json!(NOW + 6));
        assert!(restarted.attest_assertion(&fresh, NOW + 10).await.is_ok());
    }

    #[tokio::test]
    async fn same_jti_from_two_callers_is_not_a_replay() {
        let f = fixture();
        let a = svid(&f.ca, "/fn/a", KeyType::EcP256);
        let b = svid(&f.ca, "/fn/b", KeyType::Ed25519);
        f.attestor
            .attest_assertion(&a.assertion("shared"), NOW)
            .await
            .unwrap();
        f.attestor
            .attest_assertion(&b.assertion("shared"), NOW)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn failed_assertion_does_not_burn_its_jti() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let wrong_aud = w.assertion_with(|c| {
            c["jti"] = json!("precious");
            c["aud"] = json!("https://elsewhere.example");
        });
        assert!(matches!(
            f.attestor.attest_assertion(&wrong_aud, NOW).await,
            Err(AttestError::WrongAudience)
        ));
        let mut tampered = w.assertion("precious");
        tampered.push('A');
        assert!(f.attestor.attest_assertion(&tampered, NOW).await.is_err());
        f.deny.insert(&w.id);
        assert!(matches!(
            f.attestor
                .attest_assertion(&w.assertion("precious"), NOW)
                .await,
            Err(AttestError::Denied { .. })
        ));
        f.deny.remove(&w.id);
        assert!(f.ledger.is_empty());
        f.attestor
            .attest_assertion(&w.assertion("precious"), NOW)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn self_signed_impostor_with_a_valid_spiffe_id_is_untrusted() {
        let f = fixture();
        let key = KeyType::EcP256.generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/fn/orders".try_into().unwrap(),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = at(NOW - 60);
        params.not_after = at(NOW + 3600);
        let cert = params.self_signed(&key).unwrap();
        let impostor = Workload {
            chain: vec![cert.der().to_vec()],
            key,
            key_type: KeyType::EcP256,
            id: id("spiffe://example.org/fn/orders"),
        };
        assert!(matches!(
            f.attestor.attest_mtls(&impostor.chain, NOW),
            Err(AttestError::UntrustedChain)
        ));
        assert!(matches!(
            f.attestor
                .attest_assertion(&impostor.assertion("x"), NOW)
                .await,
            Err(AttestError::UntrustedChain)
        ));
        // Only successes are cached.
        assert!(
            !f.attestor
                .verdicts
                .contains_key(&chain_fingerprint(&impostor.chain))
        );
    }

    #[tokio::test]
    async fn certificate_from_another_ca_is_untrusted() {
        let f = fixture();
        let rogue = new_ca("example.org");
        let w = svid(&rogue, "/fn/orders", KeyType::EcP256);
        assert!(matches!(
            f.attestor.attest_mtls(&w.chain, NOW),
            Err(AttestError::UntrustedChain)
        ));
        // Sending the rogue root along does not help: trust comes from the bundle only.
        let mut with_root = w.chain.clone();
        with_root.push(rogue.cert_der().to_vec());
        assert!(matches!(
            f.attestor.attest_mtls(&with_root, NOW),
            Err(AttestError::UntrustedChain)
        ));
    }

    #[tokio::test]
    async fn token_signer_certificate_never_attests_as_a_workload() {
        let f = fixture();
        let key = KeyType::EcP256.generate().unwrap();
        let cert =
            f.ca.issue_token_signer(&key, Duration::from_secs(3600), at(NOW - 60))
                .unwrap();
        let signer = Workload {
            chain: vec![cert.der],
            key,
            key_type: KeyType::EcP256,
            id: td("example.org").token_signer_id(),
        };
        let err = f.attestor.attest_mtls(&signer.chain, NOW).unwrap_err();
        assert!(matches!(err, AttestError::ReservedId { .. }), "{err}");
        assert!(matches!(
            f.attestor
                .attest_assertion(&signer.assertion("s"), NOW)
                .await,
            Err(AttestError::ReservedId { .. })
        ));
    }

    #[tokio::test]
    async fn workload_of_a_foreign_trust_domain_is_refused() {
        let other = new_ca("other.org");
        let f = fixture_with(&[&other], 1000);
        let w = svid(&other, "/fn/orders", KeyType::EcP256);
        let err = f.attestor.attest_mtls(&w.chain, NOW).unwrap_err();
        assert!(
            matches!(err, AttestError::ForeignTrustDomain { .. }),
            "{err}"
        );
        assert_eq!(err.reason(), "foreign_trust_domain");
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_certificates_are_refused() {
        let f = fixture();
        let key = KeyType::EcP256.generate().unwrap();
        let old =
            f.ca.issue_svid(
                &id("spiffe://example.org/fn/old"),
                &key,
                DAY,
                at(NOW - 3 * 86_400),
            )
            .unwrap();
        assert!(matches!(
            f.attestor.attest_mtls(&[old.der], NOW),
            Err(AttestError::Expired)
        ));
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        assert!(matches!(
            f.attestor.attest_mtls(&w.chain, NOW - 3600),
            Err(AttestError::NotYetValid)
        ));
    }

    #[tokio::test]
    async fn cached_verdict_still_expires_with_the_leaf() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let attested = f.attestor.attest_mtls(&w.chain, NOW).unwrap();
        assert!(
            f.attestor
                .attest_mtls(&w.chain, attested.cert_not_after)
                .is_ok()
        );
        assert!(matches!(
            f.attestor
                .attest_mtls(&w.chain, attested.cert_not_after + 1),
            Err(AttestError::Expired)
        ));
        assert!(matches!(
            f.attestor.attest_mtls(&w.chain, NOW - 3600),
            Err(AttestError::NotYetValid)
        ));
    }

    #[tokio::test]
    async fn denied_identity_is_refused_even_when_its_verdict_is_cached() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        f.attestor.attest_mtls(&w.chain, NOW).unwrap();
        f.attestor
            .attest_assertion(&w.assertion("d1"), NOW)
            .await
            .unwrap();
        f.deny.insert(&w.id);
        let err = f.attestor.attest_mtls(&w.chain, NOW).unwrap_err();
        assert!(matches!(err, AttestError::Denied { .. }));
        assert_eq!(err.reason(), "denied");
        assert!(matches!(
            f.attestor.attest_assertion(&w.assertion("d2"), NOW).await,
            Err(AttestError::Denied { .. })
        ));
        f.deny.remove(&w.id);
        assert!(f.attestor.attest_mtls(&w.chain, NOW).is_ok());
    }

    #[tokio::test]
    async fn ca_certificate_is_not_an_end_entity() {
        let f = fixture();
        let err = f.attestor.attest_mtls(&[f.ca.cert_der()], NOW).unwrap_err();
        assert!(matches!(err, AttestError::NotEndEntity), "{err}");
    }

    #[tokio::test]
    async fn leaf_breaking_an_svid_rule_is_refused_with_that_rule() {
        let f = fixture();
        type Edit = fn(&mut CertificateParams);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "no digitalSignature",
                |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
                "key_usage",
            ),
            (
                "no key usage at all",
                |p| p.key_usages = vec![],
                "key_usage",
            ),
            (
                "server-only EKU",
                |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth],
                "key_usage",
            ),
            (
                "two URI SANs",
                |p| {
                    p.subject_alt_names.push(SanType::URI(
                        "spiffe://example.org/fn/other".try_into().unwrap(),
                    ))
                },
                "san_count",
            ),
            (
                "DNS SAN only",
                |p| {
                    p.subject_alt_names =
                        vec![SanType::DnsName("orders.example.org".try_into().unwrap())]
                },
                "san_count",
            ),
            (
                "dot-dot path",
                |p| {
                    p.subject_alt_names = vec![SanType::URI(
                        "spiffe://example.org/fn/../admin".try_into().unwrap(),
                    )]
                },
                "bad_spiffe_id",
            ),
            (
                "https URI",
                |p| {
                    p.subject_alt_names =
                        vec![SanType::URI("https://example.org/fn".try_into().unwrap())]
                },
                "bad_spiffe_id",
            ),
            (
                "reserved path",
                |p| {
                    p.subject_alt_names = vec![SanType::URI(
                        "spiffe://example.org/baton/admin".try_into().unwrap(),
                    )]
                },
                "reserved_id",
            ),
        ];
        for (what, edit, reason) in cases {
            let w = custom_leaf(&f.ca, *edit);
            let err = f.attestor.attest_mtls(&w.chain, NOW).unwrap_err();
            assert_eq!(err.reason(), *reason, "{what}: {err}");
        }
        // A DNS SAN beside the one URI SAN is allowed (SPIFFE X.509-SVID §2).
        let w = custom_leaf(&f.ca, |p| {
            p.subject_alt_names
                .push(SanType::DnsName("orders.example.org".try_into().unwrap()))
        });
        assert!(f.attestor.attest_mtls(&w.chain, NOW).is_ok());
    }

    #[tokio::test]
    async fn token_endpoint_audience_is_accepted_and_any_other_refused() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let jws = w.assertion_with(|c| c["aud"] = json!(TOKEN_ENDPOINT));
        assert!(f.attestor.attest_assertion(&jws, NOW).await.is_ok());
        for aud in [
            json!("https://baton.example.org/"),
            json!("https://evil.example"),
            json!(""),
        ] {
            let jws = w.assertion_with(|c| c["aud"] = aud.clone());
            assert!(
                matches!(
                    f.attestor.attest_assertion(&jws, NOW).await,
                    Err(AttestError::WrongAudience)
                ),
                "{aud}"
            );
        }
    }

    #[tokio::test]
    async fn audience_array_is_refused_even_when_it_holds_the_issuer() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let jws = w.assertion_with(|c| c["aud"] = json!([ISSUER]));
        let err = f.attestor.attest_assertion(&jws, NOW).await.unwrap_err();
        assert!(
            matches!(err, AttestError::MalformedAssertion(m) if m.contains("array")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn repeated_claims_and_invalid_utf8_are_refused_and_burn_nothing() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let jti = fresh_jti();
        let valid = serde_json::to_string(&w.claims(&jti)).unwrap();
        let body = valid.trim_end_matches('}');
        let other = format!("spiffe://{}/fn/admin", f.ca.trust_domain());
        let cases: [(&str, Vec<u8>); 3] = [
            // Another reader taking the last `sub` would see another caller.
            (
                "sub twice",
                format!(r#"{body},"sub":"{other}"}}"#).into_bytes(),
            ),
            (
                "unknown claim twice",
                format!(r#"{body},"x":1,"x":2}}"#).into_bytes(),
            ),
            (
                "bad UTF-8 in a skipped claim",
                [body.as_bytes(), b",\"x\":\"\xff\"}"].concat(),
            ),
        ];
        for (case, claims) in cases {
            let jws = w.sign_raw(&w.header(), &claims);
            let err = f.attestor.attest_assertion(&jws, NOW).await.unwrap_err();
            assert!(
                matches!(err, AttestError::MalformedAssertion(_)),
                "{case}: {err}"
            );
        }
        // None of them spent the jti: the well-formed assertion with it still attests.
        let jws = w.sign_raw(&w.header(), valid.as_bytes());
        let attested = f.attestor.attest_assertion(&jws, NOW).await.unwrap();
        assert_eq!(attested.id, w.id);
    }

    #[tokio::test]
    async fn assertion_lifetime_over_five_minutes_is_refused() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let at_limit = w.assertion_with(|c| c["exp"] = json!(NOW + 300));
        assert!(f.attestor.attest_assertion(&at_limit, NOW).await.is_ok());
        let too_long = w.assertion_with(|c| c["exp"] = json!(NOW + 301));
        assert!(matches!(
            f.attestor.attest_assertion(&too_long, NOW).await,
            Err(AttestError::AssertionTooLong)
        ));
        let overflow = w.assertion_with(|c| {
            c["iat"] = json!(i64::MIN);
            c["exp"] = json!(i64::MAX);
        });
        assert!(f.attestor.attest_assertion(&overflow, NOW).await.is_err());
        let backwards = w.assertion_with(|c| c["exp"] = json!(NOW - 1));
        assert!(f.attestor.attest_assertion(&backwards, NOW).await.is_err());
    }

    #[tokio::test]
    async fn assertion_times_are_checked_with_five_seconds_of_leeway() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let expired = w.assertion_with(|c| c["exp"] = json!(NOW - 5));
        assert!(matches!(
            f.attestor.attest_assertion(&expired, NOW).await,
            Err(AttestError::AssertionExpired)
        ));
        let barely = w.assertion_with(|c| {
            c["iat"] = json!(NOW - 50);
            c["exp"] = json!(NOW - 4);
        });
        assert!(f.attestor.attest_assertion(&barely, NOW).await.is_ok());
        let future = w.assertion_with(|c| {
            c["iat"] = json!(NOW + 6);
            c["exp"] = json!(NOW + 60);
        });
        assert!(matches!(
            f.attestor.attest_assertion(&future, NOW).await,
            Err(AttestError::AssertionNotYetValid)
        ));
        let skewed = w.assertion_with(|c| c["iat"] = json!(NOW + 5));
        assert!(f.attestor.attest_assertion(&skewed, NOW).await.is_ok());
        let nbf = w.assertion_with(|c| c["nbf"] = json!(NOW + 10));
        assert!(matches!(
            f.attestor.attest_assertion(&nbf, NOW).await,
            Err(AttestError::AssertionNotYetValid)
        ));
    }

    #[tokio::test]
    async fn alg_that_does_not_match_the_key_type_is_refused() {
        let f = fixture();
        for (key_type, claimed) in [(KeyType::EcP256, "EdDSA"), (KeyType::Ed25519, "ES256")] {
            let w = svid(&f.ca, "/fn/orders", key_type);
            let mut header = w.header();
            header["alg"] = json!(claimed);
            let jws = w.sign(&header, &w.claims(&fresh_jti()));
            assert!(matches!(
                f.attestor.attest_assertion(&jws, NOW).await,
                Err(AttestError::AlgorithmMismatch)
            ));
        }
    }

    #[tokio::test]
    async fn alg_none_and_hmac_are_refused() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        for alg in ["none", "HS256", "RS256", "es256", "ES384"] {
            let mut header = w.header();
            header["alg"] = json!(alg);
            let jws = w.sign(&header, &w.claims(&fresh_jti()));
            let err = f.attestor.attest_assertion(&jws, NOW).await.unwrap_err();
            assert!(
                matches!(err, AttestError::UnsupportedAlgorithm),
                "{alg}: {err}"
            );
            // The classic `alg: none` form, with an empty signature.
            let unsigned = format!("{}.", jws.rsplit_once('.').unwrap().0);
            assert!(f.attestor.attest_assertion(&unsigned, NOW).await.is_err());
        }
    }

    #[tokio::test]
    async fn iss_and_sub_must_both_be_the_certificate_identity() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let other = "spiffe://example.org/fn/payments";
        for (iss, sub) in [
            (w.id.as_str(), other),
            (other, w.id.as_str()),
            (other, other),
        ] {
            let jws = w.assertion_with(|c| {
                c["iss"] = json!(iss);
                c["sub"] = json!(sub);
            });
            assert!(matches!(
                f.attestor.attest_assertion(&jws, NOW).await,
                Err(AttestError::IssuerSubjectMismatch)
            ));
        }
    }

    #[tokio::test]
    async fn tampered_assertion_is_refused() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::Ed25519);
        let jws = w.assertion("t1");
        let (input, sig) = jws.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[0] ^= 1;
        let bad_sig = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert!(matches!(
            f.attestor.attest_assertion(&bad_sig, NOW).await,
            Err(AttestError::BadSignature)
        ));
        // Swapping in other claims under the original signature.
        let (header, _) = input.split_once('.').unwrap();
        let mut claims = w.claims("t1");
        claims["sub"] = json!("spiffe://example.org/fn/admin");
        let forged = format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
            jws.rsplit_once('.').unwrap().1
        );
        assert!(matches!(
            f.attestor.attest_assertion(&forged, NOW).await,
            Err(AttestError::BadSignature)
        ));
        assert!(f.attestor.attest_assertion(&jws, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn malformed_assertions_are_refused_without_echoing_them() {
        let f = fixture();
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let claims = w.claims("m");
        let mut no_x5c = w.header();
        no_x5c.as_object_mut().unwrap().remove("x5c");
        let mut empty_x5c = w.header();
        empty_x5c["x5c"] = json!([]);
        let mut long_x5c = w.header();
        long_x5c["x5c"] = json!(vec![STANDARD.encode(&w.chain[0]); 5]);
        let mut url_x5c = w.header();
        url_x5c["x5c"] = json!([URL_SAFE_NO_PAD.encode(&w.chain[0])]);
        let mut junk_x5c = w.header();
        junk_x5c["x5c"] = json!([STANDARD.encode(b"not a certificate")]);
        let mut crit = w.header();
        crit["crit"] = json!(["exp"]);
        let cases: Vec<(String, &str)> = vec![
            (w.sign(&no_x5c, &claims), "malformed_assertion"),
            (w.sign(&empty_x5c, &claims), "malformed_assertion"),
            (w.sign(&long_x5c, &claims), "chain_too_long"),
            (w.sign(&url_x5c, &claims), "malformed_assertion"),
            (w.sign(&junk_x5c, &claims), "bad_certificate"),
            (w.sign(&crit, &claims), "malformed_assertion"),
            (w.sign(&json!("header"), &claims), "malformed_assertion"),
            (
                w.sign(&w.header(), &json!({"iss": 1})),
                "malformed_assertion",
            ),
            (format!("{}.extra", w.assertion("m")), "malformed_assertion"),
            ("a.b".to_owned(), "malformed_assertion"),
            (String::new(), "malformed_assertion"),
            ("!!.!!.!!".to_owned(), "malformed_assertion"),
            ("A".repeat(MAX_ASSERTION_BYTES + 1), "assertion_too_large"),
        ];
        for (jws, reason) in &cases {
            let err = f.attestor.attest_assertion(jws, NOW).await.unwrap_err();
            assert_eq!(err.reason(), *reason, "{err}");
            let message = err.to_string();
            if let Some((_, sig)) = jws.rsplit_once('.') {
                assert!(sig.len() < 8 || !message.contains(sig), "{message}");
            }
        }
        let empty_jti = w.assertion_with(|c| c["jti"] = json!(""));
        assert!(f.attestor.attest_assertion(&empty_jti, NOW).await.is_err());
        let long_jti = w.assertion_with(|c| c["jti"] = json!("j".repeat(MAX_JTI_BYTES + 1)));
        assert!(f.attestor.attest_assertion(&long_jti, NOW).await.is_err());
        assert!(f.ledger.is_empty());
    }

    #[tokio::test]
    async fn missing_or_oversized_chain_is_refused() {
        let f = fixture();
        let none: [&[u8]; 0] = [];
        assert!(matches!(
            f.attestor.attest_mtls(&none, NOW),
            Err(AttestError::NoCertificate)
        ));
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let five = vec![w.chain[0].clone(); 5];
        assert!(matches!(
            f.attestor.attest_mtls(&five, NOW),
            Err(AttestError::ChainTooLong)
        ));
        assert!(matches!(
            f.attestor.attest_mtls(&[b"junk".to_vec()], NOW),
            Err(AttestError::BadCertificate)
        ));
    }

    #[tokio::test]
    async fn junk_after_the_leaf_invalidates_the_chain_on_both_paths() {
        let f = fixture();
        // Directly under the root: path building alone would find the root and never
        // look at what follows the leaf.
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        let mut padded = f.ca.cert_der().to_vec();
        padded.push(0);
        for (what, extra) in [
            ("junk", b"not a certificate".to_vec()),
            ("empty", Vec::new()),
            ("trailing bytes", padded),
        ] {
            let mut chain = w.chain.clone();
            chain.push(extra);
            let err = f.attestor.attest_mtls(&chain, NOW).unwrap_err();
            assert!(
                matches!(err, AttestError::BadChainCertificate { position: 2 }),
                "{what}: {err}"
            );
            assert_eq!(err.reason(), "bad_chain_certificate");
            let header = json!({
                "alg": "ES256",
                "x5c": chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>(),
            });
            let jws = w.sign(&header, &w.claims(&fresh_jti()));
            assert!(
                matches!(
                    f.attestor.attest_assertion(&jws, NOW).await,
                    Err(AttestError::BadChainCertificate { position: 2 })
                ),
                "{what}"
            );
        }
        // A well-formed certificate that certifies nothing here is extraneous, not
        // junk: ignored, as TLS 1.3 (RFC 8446 §4.4.2) ignores it.
        let mut chain = w.chain.clone();
        chain.push(new_ca("other.org").cert_der().to_vec());
        assert_eq!(f.attestor.attest_mtls(&chain, NOW).unwrap().id, w.id);
        assert!(f.ledger.is_empty());
    }

    #[tokio::test]
    async fn full_ledger_makes_attestation_unavailable_not_unauthorized() {
        let f = fixture_with(&[], 1);
        let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
        f.attestor
            .attest_assertion(&w.assertion("f1"), NOW)
            .await
            .unwrap();
        let err = f
            .attestor
            .attest_assertion(&w.assertion("f2"), NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::LedgerUnavailable));
        assert!(err.is_unavailable());
        assert!(!AttestError::Replayed.is_unavailable());
        // mTLS needs no ledger and keeps working.
        assert!(f.attestor.attest_mtls(&w.chain, NOW).is_ok());
    }

    #[tokio::test]
    async fn attestor_refuses_an_unusable_configuration() {
        let deny = Arc::new(DenyList::new());
        let ledger: Arc<dyn ReplayLedger> = Arc::new(MemoryLedger::new(1, NOW));
        let ca = new_ca("example.org");
        let audiences = vec![ISSUER.to_owned()];
        for (bundle, audiences) in [
            (vec![], audiences.clone()),
            (vec![b"junk".to_vec()], audiences.clone()),
            (vec![ca.cert_der().to_vec()], vec![]),
            (vec![ca.cert_der().to_vec()], vec![String::new()]),
        ] {
            let err = Attestor::new(
                bundle,
                td("example.org"),
                audiences,
                Arc::clone(&deny),
                Arc::clone(&ledger),
            )
            .unwrap_err();
            assert_eq!(err.reason(), "invalid_config");
        }
    }

    /// Runs an attestation to completion on this thread: the memory ledger answers at
    /// once, so no runtime beyond a current-thread one is needed.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// One attestor and one valid (never submitted) assertion for the property tests.
    fn shared() -> &'static (Attestor, String) {
        static SHARED: OnceLock<(Attestor, String)> = OnceLock::new();
        SHARED.get_or_init(|| {
            let f = fixture();
            let w = svid(&f.ca, "/fn/orders", KeyType::EcP256);
            let jws = w.assertion("never-submitted");
            (f.attestor, jws)
        })
    }

    proptest! {
        #[test]
        fn attest_assertion_never_panics_on_arbitrary_strings(s in ".{0,2048}") {
            let _ = block_on(shared().0.attest_assertion(&s, NOW));
        }

        #[test]
        fn attest_assertion_never_panics_on_jws_shaped_strings(
            s in "[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,100}"
        ) {
            let _ = block_on(shared().0.attest_assertion(&s, NOW));
        }

        #[test]
        fn any_one_character_change_to_a_valid_assertion_is_refused(
            index in any::<prop::sample::Index>(),
            replacement in "[A-Za-z0-9_.-]",
        ) {
            let (attestor, jws) = shared();
            let i = index.index(jws.len());
            let mut mutated = jws.clone();
            mutated.replace_range(i..=i, &replacement);
            prop_assume!(mutated != *jws);
            prop_assert!(block_on(attestor.attest_assertion(&mutated, NOW)).is_err());
        }
    }
}
