//! Trusting token-signing keys (SPEC §2) and holding them for the hot path.
//!
//! A JWK may arrive over any transport, so a verifier believes nothing it says until
//! its certificate does: a key is used only when
//!
//! 1. its `x5c` leaf chains to the trust bundle (rustls-webpki path validation, the
//!    rest of `x5c` as intermediates) at the time of loading,
//! 2. that leaf is an end-entity certificate whose only name is the reserved
//!    `spiffe://<td>/baton/token-signer` of the verifier's own trust domain — any
//!    workload's certificate chains to the same bundle, and its holder has the
//!    private key, so the chain alone proves nothing about *signing tokens*,
//! 3. the JWK's public key is the certificate's key, and its algorithm the key's.
//!
//! Each accepted key is held as a ring `UnparsedPublicKey` with its algorithm bound at
//! load, in a moka cache keyed by `kid`. Fetched keys expire from the cache at
//! `max-age + max_stale` after the fetch that last confirmed them, so stale keys are
//! served up to that bound and then verification fails closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_proto::claims::JwsAlgorithm;
use baton_proto::jwks::{Jwk, JwkKey, Jwks, MAX_JWKS_KEYS};
use baton_proto::{SpiffeId, TrustDomain};
use moka::Expiry;
use moka::sync::Cache;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519, Oid};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{BuildError, VerifyError};

/// Most certificates in a key's `x5c`: the leaf, at most one intermediate (the root CA
/// allows path length 1), the root if the publisher includes it, and one to spare.
const MAX_CHAIN_CERTS: usize = 4;
/// Largest JWKS document read: [`MAX_JWKS_KEYS`] keys with a few certificates each.
pub(crate) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A trusted token-signing key, ready for the hot path.
pub(crate) struct Key {
    alg: JwsAlgorithm,
    /// The algorithm is bound here, from the key type, at load: never from a token.
    public_key: UnparsedPublicKey<Vec<u8>>,
    /// Latest `notBefore` and earliest `notAfter` over the verified path (Unix
    /// seconds, both inclusive as in webpki): the key is usable only between them.
    not_before: i64,
    not_after: i64,
    /// How long the cache may hold the key: `None` for static keys, else
    /// `max-age + max_stale` from the fetch that confirmed it.
    cache_for: Option<Duration>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The one algorithm this key verifies.
    pub(crate) fn alg(&self) -> JwsAlgorithm {
        self.alg
    }

    /// Whether the key's certificate path is valid at `now` (Unix seconds).
    pub(crate) fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Verifies `signature` over `signing_input` with this key's bound algorithm.
    pub(crate) fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        self.public_key.verify(signing_input, signature).is_ok()
    }
}

/// The keys of one JWKS that passed every trust check.
#[derive(Debug)]
pub(crate) struct TrustedSet {
    keys: Vec<(String, Key)>,
    /// Keys of the document that were refused.
    untrusted: usize,
}

/// What a key must chain to and be named: the trust bundle and the reserved signer ID.
#[derive(Debug)]
pub(crate) struct KeyTrust {
    anchors: Vec<TrustAnchor<'static>>,
    signer_id: SpiffeId,
}

impl KeyTrust {
    /// Trusts the CA certificates of `bundle_pem` to certify the token signer of
    /// `trust_domain`.
    pub(crate) fn new(bundle_pem: &[u8], trust_domain: &TrustDomain) -> Result<Self, BuildError> {
        let mut anchors = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(bundle_pem) {
            let block = block.map_err(|_| BuildError::Bundle("it is not valid PEM"))?;
            if block.label != "CERTIFICATE" {
                return Err(BuildError::Bundle(
                    "it holds a PEM block other than CERTIFICATE",
                ));
            }
            let der = CertificateDer::from(block.contents.as_slice());
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|_| BuildError::Bundle("a certificate does not parse"))?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(BuildError::Bundle("it holds no certificate"));
        }
        Ok(Self {
            anchors,
            signer_id: trust_domain.token_signer_id(),
        })
    }

    /// The trust anchors, for a TLS client that fetches the JWKS.
    #[cfg(feature = "fetch")]
    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// Checks every key of `jwks` at `now` (Unix seconds); keys that fail are skipped.
    /// Fails only when not one key is trusted.
    pub(crate) fn check_set(
        &self,
        jwks: &Jwks,
        now: i64,
        cache_for: Option<Duration>,
    ) -> Result<TrustedSet, BuildError> {
        let mut keys = Vec::with_capacity(jwks.keys.len());
        let mut first_refusal = None;
        for jwk in &jwks.keys {
            match self.check(jwk, now, cache_for) {
                Ok(key) => keys.push((jwk.kid.clone(), key)),
                Err(reason) => {
                    first_refusal.get_or_insert((jwk.kid.clone(), reason));
                }
            }
        }
        let untrusted = jwks.keys.len() - keys.len();
        if keys.is_empty() {
            let (kid, reason) =
                first_refusal.unwrap_or_else(|| (String::new(), "the JWKS holds no key"));
            return Err(BuildError::NoTrustedKey {
                offered: jwks.keys.len(),
                kid,
                reason,
            });
        }
        Ok(TrustedSet { keys, untrusted })
    }

    /// The SPEC §2 checks for one key. The reason names the rule, never key material.
    fn check(&self, jwk: &Jwk, now: i64, cache_for: Option<Duration>) -> Result<Key, &'static str> {
        if jwk.x5c.len() > MAX_CHAIN_CERTS {
            return Err("its x5c chain is longer than any Baton chain");
        }
        // RFC 7517 §4.7: x5c entries are base64 (not base64url) DER, leaf first.
        let chain = jwk
            .x5c
            .iter()
            .map(|cert| STANDARD.decode(cert))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "an x5c entry is not standard base64")?;
        let (leaf_der, rest) = chain.split_first().ok_or("its x5c is empty")?;
        let leaf_der = CertificateDer::from(leaf_der.as_slice());
        let end_entity =
            EndEntityCert::try_from(&leaf_der).map_err(|_| "its certificate does not parse")?;
        let intermediates: Vec<CertificateDer<'_>> = rest
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let time =
            UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or_default()));
        // Token-signer certificates carry no extended key usage (the issuer makes
        // none), which `required_if_present` accepts; the reserved name checked below
        // is what makes a certificate a signer. A CA certificate fails here as
        // `CaUsedAsEndEntity`.
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
            .map_err(|error| match error {
                webpki::Error::CertExpired { .. } => "its certificate has expired",
                webpki::Error::CertNotValidYet { .. } => "its certificate is not valid yet",
                _ => "its certificate does not chain to the trust bundle",
            })?;

        let (trailing, leaf) = X509Certificate::from_der(leaf_der.as_ref())
            .map_err(|_| "its certificate does not parse")?;
        if !trailing.is_empty() {
            return Err("its certificate has trailing bytes");
        }
        self.check_signer(&leaf)?;

        let (cert_alg, cert_key) =
            leaf_key(&leaf).ok_or("its certificate key is neither P-256 nor Ed25519")?;
        let (jwk_alg, jwk_key) = jwk_key(&jwk.key).ok_or("its key parameters do not decode")?;
        if cert_alg != jwk_alg || cert_key != jwk_key {
            return Err("its key is not the key of its certificate");
        }

        let mut not_before = leaf.validity().not_before.timestamp();
        let mut not_after = leaf.validity().not_after.timestamp();
        for cert in path.intermediate_certificates() {
            let der = cert.der();
            let (_, cert) = X509Certificate::from_der(der.as_ref())
                .map_err(|_| "an intermediate certificate does not parse")?;
            not_before = not_before.max(cert.validity().not_before.timestamp());
            not_after = not_after.min(cert.validity().not_after.timestamp());
        }
        let algorithm: &'static dyn VerificationAlgorithm = match jwk_alg {
            JwsAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            JwsAlgorithm::EdDsa => &signature::ED25519,
        };
        Ok(Key {
            alg: jwk_alg,
            public_key: UnparsedPublicKey::new(algorithm, jwk_key),
            not_before,
            not_after,
            cache_for,
        })
    }

    /// SPEC §2: the leaf is an end entity for signing whose only name is the reserved
    /// token-signer ID of this trust domain.
    fn check_signer(&self, leaf: &X509Certificate<'_>) -> Result<(), &'static str> {
        if leaf.is_ca() {
            return Err("its certificate is a CA certificate");
        }
        let usage = leaf
            .key_usage()
            .ok()
            .flatten()
            .ok_or("its certificate has no key usage")?;
        if !usage.value.digital_signature() || usage.value.key_cert_sign() || usage.value.crl_sign()
        {
            return Err("its certificate key usage is not digitalSignature only");
        }
        let san = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .ok_or("its certificate names no identity")?;
        // Exactly one name, and it is the reserved ID: a workload SVID of the same CA
        // names a workload, and a signer of another trust domain names that domain.
        match san.value.general_names.as_slice() {
            [GeneralName::URI(uri)] if *uri == self.signer_id.as_str() => Ok(()),
            _ => Err("its certificate is not the token signer of this trust domain"),
        }
    }
}

/// The key type and raw public key of a certificate: `0x04‖x‖y` for P-256, the 32
/// bytes for Ed25519 — what ring's `UnparsedPublicKey` takes.
fn leaf_key(leaf: &X509Certificate<'_>) -> Option<(JwsAlgorithm, Vec<u8>)> {
    let spki = leaf.public_key();
    let algorithm = &spki.algorithm;
    let key = &spki.subject_public_key.data;
    if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = algorithm
            .parameters
            .as_ref()
            .and_then(|p| Oid::try_from(p.clone()).ok())?;
        // RFC 5480 §2.2: an uncompressed point.
        (curve == OID_EC_P256 && key.len() == 65 && key.first() == Some(&0x04))
            .then(|| (JwsAlgorithm::Es256, key.to_vec()))
    } else if algorithm.algorithm == OID_SIG_ED25519 {
        // RFC 8410 §3: no parameters; the key is the raw 32 bytes.
        (algorithm.parameters.is_none() && key.len() == 32)
            .then(|| (JwsAlgorithm::EdDsa, key.to_vec()))
    } else {
        None
    }
}

/// The same form, from the JWK's coordinates (RFC 7518 §6.2.1, RFC 8037 §2).
fn jwk_key(key: &JwkKey) -> Option<(JwsAlgorithm, Vec<u8>)> {
    match key {
        JwkKey::P256 { x, y } => {
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend(URL_SAFE_NO_PAD.decode(x).ok()?);
            point.extend(URL_SAFE_NO_PAD.decode(y).ok()?);
            (point.len() == 65).then_some((JwsAlgorithm::Es256, point))
        }
        JwkKey::Ed25519 { x } => {
            let raw = URL_SAFE_NO_PAD.decode(x).ok()?;
            (raw.len() == 32).then_some((JwsAlgorithm::EdDsa, raw))
        }
    }
}

/// Per-entry expiry: each key lives `cache_for` after the insert that last confirmed it.
struct KeyExpiry;

impl Expiry<String, Arc<Key>> for KeyExpiry {
    fn expire_after_create(&self, _: &String, key: &Arc<Key>, _: Instant) -> Option<Duration> {
        key.cache_for
    }

    fn expire_after_update(
        &self,
        _: &String,
        key: &Arc<Key>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        key.cache_for
    }
}

/// The trusted keys by `kid`, and how long they may be used without a fresh fetch.
pub(crate) struct KeyStore {
    cache: Cache<String, Arc<Key>>,
    /// Origin of the millisecond clock below.
    origin: Instant,
    /// Milliseconds after `origin` until which the key set is usable: the last
    /// successful fetch plus `max-age + max_stale`; `u64::MAX` for static keys.
    usable_until_ms: AtomicU64,
    untrusted: AtomicUsize,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.cache.entry_count())
            .field("untrusted", &self.untrusted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// A store holding `set`, usable for `usable_for` (`None`: for ever).
    pub(crate) fn new(set: TrustedSet, usable_for: Option<Duration>) -> Self {
        let store = Self {
            // Room for two full key sets, so inserting a new set before the old keys
            // are invalidated never meets the capacity bound.
            cache: Cache::builder()
                .max_capacity(4 * MAX_JWKS_KEYS as u64)
                .expire_after(KeyExpiry)
                .build(),
            origin: Instant::now(),
            usable_until_ms: AtomicU64::new(0),
            untrusted: AtomicUsize::new(0),
        };
        store.replace(set, usable_for);
        store
    }

    /// The key named `kid`, if it is trusted and valid at `now`.
    ///
    /// `Err(UnknownKey)` when no such key is usable; `Err(KeysUnavailable)` when the
    /// whole set went stale, so no key at all is usable.
    pub(crate) fn get(&self, kid: &str, now: i64) -> Result<Arc<Key>, VerifyError> {
        match self.cache.get(kid) {
            Some(key) if key.valid_at(now) => Ok(key),
            Some(_) => Err(VerifyError::UnknownKey),
            None if self.is_stale() => Err(VerifyError::KeysUnavailable),
            None => Err(VerifyError::UnknownKey),
        }
    }

    /// Replaces the key set with a freshly trusted one: a successful load is
    /// authoritative, so a key it no longer lists (revoked, expired) goes at once.
    pub(crate) fn replace(&self, set: TrustedSet, usable_for: Option<Duration>) {
        let stale: Vec<Arc<String>> = self
            .cache
            .iter()
            .map(|(kid, _)| kid)
            .filter(|kid| !set.keys.iter().any(|(k, _)| k == kid.as_str()))
            .collect();
        for kid in stale {
            self.cache.invalidate(kid.as_str());
        }
        for (kid, key) in set.keys {
            self.cache.insert(kid, Arc::new(key));
        }
        self.untrusted.store(set.untrusted, Ordering::Relaxed);
        let until = match usable_for {
            None => u64::MAX,
            Some(d) => self.elapsed_ms().saturating_add(millis(d)),
        };
        self.usable_until_ms.store(until, Ordering::Release);
        self.cache.run_pending_tasks();
    }

    /// How many keys of the last loaded JWKS failed the trust checks.
    pub(crate) fn untrusted(&self) -> usize {
        self.untrusted.load(Ordering::Relaxed)
    }

    fn is_stale(&self) -> bool {
        self.elapsed_ms() >= self.usable_until_ms.load(Ordering::Acquire)
    }

    fn elapsed_ms(&self) -> u64 {
        millis(self.origin.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
