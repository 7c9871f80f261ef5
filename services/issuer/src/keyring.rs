//! The token-signing keyring of the embedded store (SPEC §2, §5 JWKS row, §7).
//!
//! ```text
//! baton-data/keyring/        0700
//!   <kid>.key.sealed         0600  PKCS#8 private key, sealed under the KEK for `signing-key:<kid>`
//!   keyring.json             0644  index: kid, alg, state, created_at, certificate (public data)
//! ```
//!
//! Every key is certified by the trust domain's CA with the reserved token-signer ID as
//! its only URI SAN, and published with that certificate in `x5c` (RFC 7517 §4.7), so a
//! verifier holding only the trust bundle can accept the JWKS from any transport.
//!
//! The first start creates one `active` key and one pre-published `next` key, so
//! verifiers already hold the successor when a rotation promotes it. Sealed keys are
//! written before the index: a crash in between leaves unreferenced sealed files, never
//! an index naming a key that does not exist. Every later start re-checks what it reads
//! (the index is plain JSON anyone with write access could edit): each key must match
//! its certificate, the certificate must chain to the CA and name the token signer, the
//! `kid` must be the key's thumbprint, and exactly one key must be active.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_proto::SpiffeId;
use baton_proto::claims::JwsAlgorithm;
use baton_proto::jwks::{Jwk, JwkKey, Jwks, MAX_JWKS_KEYS};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SignatureAlgorithm};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair as _, Signature, UnparsedPublicKey, VerificationAlgorithm,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::datadir::OpenDataDir;
use crate::fsio::{self, Mode};
use crate::pki::{CertificateAuthority, PkiError};
use crate::seal::{Kek, SealError};
use crate::shared::{SharedStore, SharedStoreError};

/// Lifetime of a signing key's certificate. Rotation (a later change) must promote the
/// `next` key before the active one's certificate runs out.
pub const SIGNING_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// The keyring's directory, relative to the data directory.
pub(crate) const KEYRING_DIR: &str = "keyring";
const INDEX: &str = "keyring.json";
const INDEX_VERSION: u8 = 1;
/// The index lists at most [`MAX_JWKS_KEYS`] keys of under 2 KiB each.
const MAX_INDEX_BYTES: u64 = 256 * 1024;
/// How a sealed key's file name ends, after its kid.
pub(crate) const SEALED_SUFFIX: &str = ".key.sealed";
/// A kid is a base64url SHA-256 thumbprint (RFC 7638 §3): 43 characters.
const KID_LEN: usize = 43;
const RESTORE: &str = "restore the keyring directory from a backup, or move it aside and restart \
     to create a new keyring (tokens already issued then stop verifying)";

/// Where a signing key is in its life (SPEC §5: the words `keys list --json` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published ahead of use, so verifiers already hold it when it becomes active.
    Next,
    /// Signs every new token.
    Active,
    /// No longer signs; published until every token it signed has expired.
    Retired,
    /// Withdrawn in an emergency: unpublished at once, and its tokens introspect
    /// inactive. Listed until its entry is dropped like a retired one's.
    Revoked,
}

impl KeyState {
    /// The SPEC word: `next`, `active` or `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the keyring could not be created or loaded. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing a keyring file failed.
    #[error("cannot access {path}; check that it exists and that baton may read and write it")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The index file does not parse or breaks a structural rule.
    #[error("{path} is not a valid keyring index ({reason}); {RESTORE}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The index does not name exactly one active key.
    #[error("{path} names {found} active signing keys, but exactly one must be active; {RESTORE}")]
    ActiveCount {
        /// The index file.
        path: PathBuf,
        /// How many keys are marked active.
        found: usize,
    },
    /// A key's certificate does not parse.
    #[error("signing key {kid}: its certificate is malformed ({reason}); {RESTORE}")]
    Certificate {
        /// The key.
        kid: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key's certificate was not issued by this trust domain's CA.
    #[error(
        "signing key {kid}: its certificate was not issued by this trust domain's CA (keyring from another data directory?); {RESTORE}"
    )]
    NotFromCa {
        /// The key.
        kid: String,
    },
    /// A key's certificate does not carry exactly the reserved token-signer ID.
    #[error(
        "signing key {kid}: its certificate is not an end-entity certificate whose only URI SAN is {expected}; {RESTORE}"
    )]
    NotTokenSigner {
        /// The key.
        kid: String,
        /// The ID a signing key must carry.
        expected: SpiffeId,
    },
    /// The unsealed private key is not a valid key of the recorded algorithm.
    #[error("signing key {kid}: the sealed private key is not a valid {alg} key; {RESTORE}")]
    KeyUnusable {
        /// The key.
        kid: String,
        /// The algorithm the index records.
        alg: JwsAlgorithm,
    },
    /// The unsealed private key is not the one its certificate certifies.
    #[error(
        "signing key {kid}: the sealed private key does not match its certificate (file replaced?); {RESTORE}"
    )]
    KeyMismatch {
        /// The key.
        kid: String,
    },
    /// The recorded kid is not the RFC 7638 thumbprint of the key.
    #[error(
        "signing key {kid}: the kid is not the thumbprint of its key (index edited?); {RESTORE}"
    )]
    KidMismatch {
        /// The recorded kid.
        kid: String,
    },
    /// Sealing or unsealing a private key failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The CA could not certify a new key.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The index already names as many keys as a JWKS may publish.
    #[error(
        "the keyring holds {MAX_JWKS_KEYS} keys, the most a JWKS may publish; retired keys leave once their tokens have expired, rotate again after that"
    )]
    Full,
    /// Key generation failed.
    #[error(
        "the system random number generator failed; retry, and check the host's entropy source"
    )]
    Random,
    /// The shared store could not be read or written; nothing changed.
    #[error(transparent)]
    Shared(#[from] SharedStoreError),
    /// An interrupted key-encryption key rotation could not re-seal the shared store.
    #[error(transparent)]
    KekRotation(#[from] crate::kek_rotate::RecoveryError),
    /// Another replica changed the shared keyring since this one loaded it; nothing was
    /// written. Reload and retry.
    #[error(
        "another issuer replica changed the keyring at the same time; this change was not applied, retry"
    )]
    Conflict,
}

/// Where a keyring lives, with the CA that certifies its keys and the KEK that seals
/// them: the data directory (embedded store) or Redis (distributed store, shared by
/// every replica; each holds the same KEK).
///
/// In Redis the keyring is `{baton}:keyring:index` (the same JSON index as the file),
/// `{baton}:keyring:generation` (bumped by every change) and one sealed envelope per
/// key, `{baton}:keyring:key:<kid>`. A new sealed key is written first with a one-hour
/// expiry; the change is committed by a script that replaces the index only if the
/// generation is still the one the change started from, makes the keys it names
/// permanent and deletes the ones it dropped — all at once, so replicas never see a
/// half-made keyring, and of two concurrent changes exactly one applies.
#[derive(Debug, Clone, Copy)]
pub enum Home<'a> {
    /// `<data-dir>/keyring/`.
    Files(&'a OpenDataDir),
    /// The shared store; the data directory still provides the CA and the KEK.
    Shared(&'a OpenDataDir, &'a SharedStore),
}

impl<'a> From<&'a OpenDataDir> for Home<'a> {
    fn from(data: &'a OpenDataDir) -> Self {
        Self::Files(data)
    }
}

/// Seconds a staged (written but not yet committed) sealed key lives in Redis.
const STAGED_KEY_TTL_SECS: u64 = 3600;
/// Replaces the index if the generation is still `ARGV[1]`; persists KEYS[3..3+ARGV[3]]
/// (the keys the index names) and deletes the remaining KEYS (keys it dropped).
/// Returns the new generation, or -1 when another change came first.
const COMMIT_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
local keep = tonumber(ARGV[3])
for i = 3, #KEYS do
  if i < 3 + keep then redis.call('PERSIST', KEYS[i]) else redis.call('DEL', KEYS[i]) end
end
return redis.call('INCR', KEYS[2])
";

impl<'a> Home<'a> {
    fn data(&self) -> &'a OpenDataDir {
        match *self {
            Self::Files(data) | Self::Shared(data, _) => data,
        }
    }

    fn ca(&self) -> &'a CertificateAuthority {
        self.data().ca()
    }

    fn kek(&self) -> &'a Kek {
        self.data().kek()
    }

    /// Where the index lives, for messages.
    fn index_location(&self) -> PathBuf {
        match self {
            Self::Files(data) => keyring_dir(data).join(INDEX),
            Self::Shared(_, store) => PathBuf::from(format!(
                "{}/{}",
                store.url(),
                SharedStore::key("keyring:index")
            )),
        }
    }

    /// Where a sealed key lives, for messages (and on disk, for files).
    fn sealed_location(&self, kid: &str) -> PathBuf {
        match self {
            Self::Files(data) => sealed_path(&keyring_dir(data), kid),
            Self::Shared(_, store) => {
                PathBuf::from(format!("{}/{}", store.url(), shared_key_name(kid)))
            }
        }
    }

    /// The index and its generation, or `None` on a fresh store.
    fn read_index(&self) -> Result<Option<(Vec<u8>, u64)>, KeyringError> {
        match self {
            Self::Files(data) => {
                let path = keyring_dir(data).join(INDEX);
                match fsio::read_bounded(&path, MAX_INDEX_BYTES) {
                    Ok(bytes) => Ok(Some((bytes, 0))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(KeyringError::Io { path, source }),
                }
            }
            Self::Shared(data, store) => {
                // A key-encryption key rotation that crashed after its commit point may
                // still have to re-seal the shared keys: finish it before reading them.
                crate::kek_rotate::recover(data.dir(), Some(store))?;
                let mut conn = store.connection()?;
                let (index, generation): (Option<Vec<u8>>, Option<u64>) = redis::cmd("MGET")
                    .arg(SharedStore::key("keyring:index"))
                    .arg(SharedStore::key("keyring:generation"))
                    .query(&mut *conn)
                    .map_err(|e| store.unavailable(&e))?;
                match index {
                    Some(bytes) if bytes.len() as u64 > MAX_INDEX_BYTES => {
                        Err(KeyringError::Index {
                            path: self.index_location(),
                            reason: "larger than 256 KiB",
                        })
                    }
                    Some(bytes) => Ok(Some((bytes, generation.unwrap_or(0)))),
                    None => Ok(None),
                }
            }
        }
    }

    /// The generation the store holds now (0 for files, which one issuer owns).
    fn generation(&self) -> Result<u64, KeyringError> {
        match self {
            Self::Files(_) => Ok(0),
            Self::Shared(_, store) => {
                let mut conn = store.connection()?;
                let generation: Option<u64> = redis::cmd("GET")
                    .arg(SharedStore::key("keyring:generation"))
                    .query(&mut *conn)
                    .map_err(|e| store.unavailable(&e))?;
                Ok(generation.unwrap_or(0))
            }
        }
    }

    fn write_sealed(&self, kid: &str, sealed: &[u8]) -> Result<(), KeyringError> {
        match self {
            Self::Files(_) => {
                let path = self.sealed_location(kid);
                fsio::write_atomic(&path, sealed, Mode::Private).map_err(|source| {
                    KeyringError::Seal(SealError::Io {
                        path: path.clone(),
                        source,
                    })
                })
            }
            Self::Shared(_, store) => {
                let mut conn = store.connection()?;
                redis::cmd("SET")
                    .arg(shared_key_name(kid))
                    .arg(sealed)
                    .arg("EX")
                    .arg(STAGED_KEY_TTL_SECS)
                    .query::<()>(&mut *conn)
                    .map_err(|e| store.unavailable(&e))?;
                Ok(())
            }
        }
    }

    fn read_sealed(&self, kid: &str) -> Result<Vec<u8>, KeyringError> {
        let path = self.sealed_location(kid);
        match self {
            Self::Files(_) => fsio::read_bounded(&path, MAX_SEALED_BYTES)
                .map_err(|source| KeyringError::Seal(SealError::Io { path, source })),
            Self::Shared(_, store) => {
                let mut conn = store.connection()?;
                let sealed: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(shared_key_name(kid))
                    .query(&mut *conn)
                    .map_err(|e| store.unavailable(&e))?;
                sealed
                    .filter(|s| s.len() as u64 <= MAX_SEALED_BYTES)
                    .ok_or_else(|| {
                        KeyringError::Seal(SealError::Io {
                            path,
                            source: io::Error::from(io::ErrorKind::NotFound),
                        })
                    })
            }
        }
    }

    /// Makes `json` the index if the store is still at `expected`; keeps the sealed keys
    /// of `keep`, removes those of `dropped`. Returns the new generation.
    fn commit(
        &self,
        json: &[u8],
        expected: u64,
        keep: &[&str],
        dropped: &[&str],
    ) -> Result<u64, KeyringError> {
        match self {
            Self::Files(data) => {
                let dir = keyring_dir(data);
                let index_path = dir.join(INDEX);
                // Written last: only now do all the keys it names exist (crash-safe order).
                fsio::write_atomic(&index_path, json, Mode::Public).map_err(io_err(&index_path))?;
                // One issuer owns the directory: every sealed file the index does not
                // name is unreferenced now — dropped (its tokens have expired, or it was
                // revoked) or left by a rotation that crashed before its index.
                let _ = dropped;
                if let Ok(files) = std::fs::read_dir(&dir) {
                    for file in files.flatten() {
                        let name = file.file_name();
                        let unreferenced = name
                            .to_string_lossy()
                            .strip_suffix(SEALED_SUFFIX)
                            .is_some_and(|kid| !keep.contains(&kid));
                        if unreferenced {
                            let _ = std::fs::remove_file(file.path());
                        }
                    }
                }
                Ok(0)
            }
            Self::Shared(_, store) => {
                let mut conn = store.connection()?;
                let script = redis::Script::new(COMMIT_SCRIPT);
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(SharedStore::key("keyring:index"))
                    .key(SharedStore::key("keyring:generation"));
                for kid in keep.iter().chain(dropped) {
                    invocation.key(shared_key_name(kid));
                }
                invocation
                    .arg(expected.to_string())
                    .arg(json)
                    .arg(keep.len());
                let generation: i64 = invocation
                    .invoke(&mut *conn)
                    .map_err(|e| store.unavailable(&e))?;
                u64::try_from(generation).map_err(|_| KeyringError::Conflict)
            }
        }
    }
}

/// Largest sealed key read: an envelope around a PKCS#8 key is well under 1 KiB.
const MAX_SEALED_BYTES: u64 = 64 * 1024;

/// The Redis key of a sealed signing key.
pub(crate) fn shared_key_name(kid: &str) -> String {
    SharedStore::key(&format!("keyring:key:{kid}"))
}

/// The parsed private key, held once and used for every signature (ring: parse once,
/// sign many).
enum KeyPair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl KeyPair {
    fn from_pkcs8(alg: JwsAlgorithm, pkcs8: &[u8]) -> Option<Self> {
        match alg {
            // RFC 7518 §3.4: a JWS ECDSA signature is R‖S fixed width, not ASN.1 DER.
            JwsAlgorithm::Es256 => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8,
                &SystemRandom::new(),
            )
            .ok()
            .map(Self::Es256),
            JwsAlgorithm::EdDsa => Ed25519KeyPair::from_pkcs8(pkcs8).ok().map(Self::EdDsa),
        }
    }

    /// The public half with the one algorithm it verifies, bound now so a token's
    /// header can never choose it.
    fn verifier(&self) -> UnparsedPublicKey<Vec<u8>> {
        let algorithm: &'static dyn VerificationAlgorithm = match self {
            // Fixed-width R‖S, as JWS carries it (RFC 7518 §3.4).
            Self::Es256(_) => &ECDSA_P256_SHA256_FIXED,
            Self::EdDsa(_) => &ED25519,
        };
        UnparsedPublicKey::new(algorithm, self.public_key().raw.to_vec())
    }

    fn public_key(&self) -> PublicKey<'_> {
        match self {
            Self::Es256(k) => PublicKey {
                raw: k.public_key().as_ref(),
                alg: &PKCS_ECDSA_P256_SHA256,
            },
            Self::EdDsa(k) => PublicKey {
                raw: k.public_key().as_ref(),
                alg: &PKCS_ED25519,
            },
        }
    }
}

/// A public key as rcgen needs it to certify the key, without handing rcgen a copy of
/// the private key.
struct PublicKey<'a> {
    /// The subjectPublicKey bits: `0x04‖x‖y` for P-256, the 32-byte key for Ed25519.
    raw: &'a [u8],
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for PublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl PublicKey<'_> {
    fn jwk_key(&self) -> Option<JwkKey> {
        if self.alg == &PKCS_ED25519 {
            return (self.raw.len() == 32).then(|| JwkKey::Ed25519 {
                x: URL_SAFE_NO_PAD.encode(self.raw),
            });
        }
        // SEC 1 §2.3.3 uncompressed point; RFC 7518 §6.2.1.2: each coordinate full width.
        match self.raw {
            [0x04, xy @ ..] if xy.len() == 64 => Some(JwkKey::P256 {
                x: URL_SAFE_NO_PAD.encode(&xy[..32]),
                y: URL_SAFE_NO_PAD.encode(&xy[32..]),
            }),
            _ => None,
        }
    }
}

/// RFC 7638 §3.2 JWK thumbprint: base64url SHA-256 of the required members in
/// lexicographic order with no white space (RFC 8037 §2 for OKP).
fn thumbprint(key: &JwkKey) -> String {
    // The members are base64url strings, so no JSON escaping is needed.
    let canonical = match key {
        JwkKey::P256 { x, y } => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
        JwkKey::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
    };
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// One token-signing key: its certificate, public JWK and parsed private key.
pub struct SigningKey {
    kid: String,
    alg: JwsAlgorithm,
    state: KeyState,
    created_at: OffsetDateTime,
    activated_at: Option<OffsetDateTime>,
    retires_at: Option<OffsetDateTime>,
    not_after: OffsetDateTime,
    cert_der: Vec<u8>,
    jwk: Jwk,
    key_pair: KeyPair,
    /// The public half, parsed once with its algorithm, for verifying tokens.
    verifier: UnparsedPublicKey<Vec<u8>>,
    /// The base64url JOSE header of every token this key signs, encoded once.
    token_header_b64: String,
    /// The sealed envelope the key was loaded from (ciphertext under the KEK), kept so a
    /// replica can restore a shared store that lost its data.
    sealed: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retires_at", &self.retires_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key id: the RFC 7638 thumbprint of the public key, as in tokens' `kid` header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one JWS algorithm this key signs with.
    pub fn alg(&self) -> JwsAlgorithm {
        self.alg
    }

    /// Where the key is in its life.
    pub fn state(&self) -> KeyState {
        self.state
    }

    /// When the key was created.
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    /// When the key became active, if it ever did.
    pub fn activated_at(&self) -> Option<OffsetDateTime> {
        self.activated_at
    }

    /// When a retired or revoked key leaves the index (and a retired one the JWKS).
    pub fn retires_at(&self) -> Option<OffsetDateTime> {
        self.retires_at
    }

    fn to_entry(&self) -> IndexEntry {
        IndexEntry {
            kid: self.kid.clone(),
            alg: self.alg,
            state: self.state,
            created_at: self.created_at.unix_timestamp(),
            activated_at: self.activated_at.map(OffsetDateTime::unix_timestamp),
            retires_at: self.retires_at.map(OffsetDateTime::unix_timestamp),
            cert: STANDARD.encode(&self.cert_der),
        }
    }

    /// The public key as published in the JWKS, with `x5c`.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The key's certificate (DER), issued by the trust domain's CA.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// End of the certificate's validity: verifiers refuse the key after it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The base64url-encoded protected header of tokens signed with this key.
    pub(crate) fn token_header_b64(&self) -> &str {
        &self.token_header_b64
    }

    /// Signs a JWS signing input (RFC 7515 §5.1): ES256 gives 64 bytes R‖S, EdDSA 64 bytes.
    /// Fails only if the system random number generator fails (ECDSA nonces).
    pub(crate) fn sign(&self, signing_input: &[u8]) -> Result<Signature, ring::error::Unspecified> {
        match &self.key_pair {
            KeyPair::Es256(k) => k.sign(&SystemRandom::new(), signing_input),
            KeyPair::EdDsa(k) => Ok(k.sign(signing_input)),
        }
    }

    /// Whether `signature` is this key's signature over a JWS signing input, with the
    /// key's own algorithm (ES256: 64 bytes R‖S; EdDSA: 64 bytes).
    pub(crate) fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        self.verifier.verify(signing_input, signature).is_ok()
    }
}

/// The issuer's signing keys: exactly one active, plus `next` and `retired` ones, all
/// published in a precomputed JWKS.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<Arc<SigningKey>>,
    active: Arc<SigningKey>,
    jwks: Jwks,
    /// The store's generation this keyring was loaded at (always 0 for files).
    generation: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    version: u8,
    keys: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexEntry {
    kid: String,
    alg: JwsAlgorithm,
    state: KeyState,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds: when the key was promoted to active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activated_at: Option<i64>,
    /// Unix seconds: when a retired or revoked key is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retires_at: Option<i64>,
    /// The certificate, base64 (standard, padded) DER, as in `x5c`.
    cert: String,
}

impl Keyring {
    /// Loads the keyring of `store`, creating it on first start with one `active` and
    /// one `next` key of algorithm `alg`.
    ///
    /// `alg` applies only to keys created now; an existing keyring keeps its keys. This
    /// seals, writes and fsyncs files: call it at start-up or in `spawn_blocking`.
    pub fn load_or_init<'a>(
        home: impl Into<Home<'a>>,
        alg: JwsAlgorithm,
        now: OffsetDateTime,
    ) -> Result<Self, KeyringError> {
        let home = home.into();
        let keyring = match home.read_index()? {
            Some((bytes, generation)) => Self::load(&home, &bytes, generation)?,
            None => match Self::init(&home, alg, now) {
                // Another replica seeded the shared store first: use its keyring.
                Err(KeyringError::Conflict) => match home.read_index()? {
                    Some((bytes, generation)) => Self::load(&home, &bytes, generation)?,
                    None => return Err(KeyringError::Conflict),
                },
                other => other?,
            },
        };
        if keyring.active.alg != alg {
            tracing::warn!(
                configured = %alg,
                active = %keyring.active.alg,
                "the active signing key uses another algorithm than configured; new keys will use the configured one"
            );
        }
        if keyring.active.not_after <= now {
            tracing::warn!(
                kid = %keyring.active.kid,
                not_after = %keyring.active.not_after,
                "the active signing key's certificate has expired: verifiers will refuse its tokens until the keyring is rotated"
            );
        }
        Ok(keyring)
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> &Arc<SigningKey> {
        &self.active
    }

    /// Every key, as listed in the index.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The published key set: `next`, `active` and `retired` keys, each with `x5c`.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// The key with this `kid`, if the keyring holds it.
    pub fn get(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    fn init(home: &Home<'_>, alg: JwsAlgorithm, now: OffsetDateTime) -> Result<Self, KeyringError> {
        if let Home::Files(data) = home {
            let dir = keyring_dir(data);
            fsio::create_private_dir(&dir).map_err(io_err(&dir))?;
            let root = data.dir().root();
            fsio::sync_dir(root).map_err(io_err(root))?;
            let leftovers = count_sealed_files(&dir)?;
            if leftovers > 0 {
                // Sealed keys without an index come from a start that crashed before
                // writing it: never published, never used, and useless without the KEK.
                tracing::warn!(
                    count = leftovers,
                    dir = %dir.display(),
                    "ignoring sealed signing keys that no keyring index names"
                );
            }
        }

        let created_at = now.replace_nanosecond(0).unwrap_or(now);
        let mut entries = Vec::with_capacity(2);
        for state in [KeyState::Active, KeyState::Next] {
            entries.push(create_key(home, alg, state, created_at)?);
        }
        let keyring = Self::commit(home, entries, 0, &[])?;
        tracing::info!(%alg, "created the signing keyring: one active and one next key");
        Ok(keyring)
    }

    fn load(home: &Home<'_>, bytes: &[u8], generation: u64) -> Result<Self, KeyringError> {
        let index_path = home.index_location();
        let bad_index = |reason| KeyringError::Index {
            path: index_path.clone(),
            reason,
        };
        let index: Index =
            serde_json::from_slice(bytes).map_err(|_| bad_index("not a keyring index"))?;
        if index.version != INDEX_VERSION {
            return Err(bad_index("unknown version"));
        }
        if index.keys.len() > MAX_JWKS_KEYS {
            return Err(bad_index("more keys than a JWKS may publish"));
        }
        for (i, entry) in index.keys.iter().enumerate() {
            // The kid becomes a file name: accept only the thumbprint alphabet, so an
            // edited index cannot point outside the keyring directory.
            if !is_kid(&entry.kid) {
                return Err(bad_index("a kid is not a base64url SHA-256 thumbprint"));
            }
            if index.keys[..i].iter().any(|e| e.kid == entry.kid) {
                return Err(bad_index("two keys share a kid"));
            }
        }
        let found = index
            .keys
            .iter()
            .filter(|e| e.state == KeyState::Active)
            .count();
        if found != 1 {
            return Err(KeyringError::ActiveCount {
                path: index_path,
                found,
            });
        }

        let checker = CertChecker::new(home.ca())?;
        let mut keys = Vec::with_capacity(index.keys.len());
        for entry in index.keys {
            keys.push(Arc::new(load_key(home, &checker, entry)?));
        }
        let active = keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .cloned()
            .ok_or(KeyringError::ActiveCount {
                path: index_path,
                found: 0,
            })?;
        // SPEC §5: a revoked key leaves the JWKS at once.
        let jwks = Jwks {
            keys: keys
                .iter()
                .filter(|k| k.state != KeyState::Revoked)
                .map(|k| k.jwk.clone())
                .collect(),
        };
        Ok(Self {
            keys,
            active,
            jwks,
            generation,
        })
    }

    /// The store generation this keyring was loaded at.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the store holds a newer keyring than this one (another replica rotated
    /// or revoked); always `false` for files.
    pub fn is_stale<'a>(&self, home: impl Into<Home<'a>>) -> Result<bool, KeyringError> {
        Ok(home.into().generation()? != self.generation)
    }

    /// Writes this keyring into a shared store that holds none (Redis restarted without
    /// persistence, or was flushed), so the replicas keep the keys their verifiers
    /// trust. Of several replicas restoring at once, one wins and the others get
    /// [`KeyringError::Conflict`] and reload. Blocking I/O.
    pub fn restore<'a>(&self, home: impl Into<Home<'a>>) -> Result<Self, KeyringError> {
        let home = home.into();
        for key in &self.keys {
            home.write_sealed(&key.kid, &key.sealed)?;
        }
        let entries = self.keys.iter().map(|k| k.to_entry()).collect();
        Self::commit(&home, entries, 0, &[])
    }

    /// The keyring the store holds now, or `None` when it holds none, without creating
    /// one.
    pub fn current<'a>(home: impl Into<Home<'a>>) -> Result<Option<Self>, KeyringError> {
        let home = home.into();
        home.read_index()?
            .map(|(bytes, generation)| Self::load(&home, &bytes, generation))
            .transpose()
    }

    /// Loads the keyring the store holds now, without creating one.
    pub fn reload<'a>(home: impl Into<Home<'a>>) -> Result<Self, KeyringError> {
        let home = home.into();
        Self::current(home)?.ok_or_else(|| KeyringError::Index {
            path: home.index_location(),
            reason: "missing",
        })
    }
}

/// Why `keys revoke` was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No key of the keyring has this kid.
    #[error("no signing key has kid {kid}; `baton keys list` shows the keys")]
    UnknownKid {
        /// The kid asked for.
        kid: String,
    },
    /// The key is already revoked.
    #[error("signing key {kid} is already revoked")]
    AlreadyRevoked {
        /// The key.
        kid: String,
    },
    /// The key is the one signing every token, and `force` was not given.
    #[error(
        "signing key {kid} is the active key: revoking it makes every outstanding token inactive and promotes the next key at once; repeat with --force to do so"
    )]
    ActiveNeedsForce {
        /// The key.
        kid: String,
    },
    /// Writing the new keyring failed; the old one stays in force.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

/// Key lifecycle (SPEC §9 `keys`). Each step computes the new index from this keyring,
/// writes any new sealed key first and the index last (atomically), then loads what
/// was written: a crash at any point leaves the old or the new keyring, never a mix.
/// These seal, write and fsync: call them off the async runtime.
impl Keyring {
    /// Rotates: the oldest `next` key becomes `active`, the `active` one `retired`
    /// until `now + retire_after`, and a new `next` key of algorithm `alg` is created.
    /// Retired and revoked keys whose time has passed are dropped.
    pub fn rotate<'a>(
        &self,
        home: impl Into<Home<'a>>,
        alg: JwsAlgorithm,
        now: OffsetDateTime,
        retire_after: Duration,
    ) -> Result<Self, KeyringError> {
        let home = home.into();
        let entries = self.stage_rotation(&home, alg, now, retire_after)?;
        self.commit_change(&home, entries)
    }

    /// The first half of [`Keyring::rotate`] alone: seals the new `next` key and
    /// writes no index. Only for crash-consistency tests (`BATON_FAILPOINT`).
    pub(crate) fn seal_next_without_index<'a>(
        &self,
        home: impl Into<Home<'a>>,
        alg: JwsAlgorithm,
        now: OffsetDateTime,
        retire_after: Duration,
    ) -> Result<(), KeyringError> {
        self.stage_rotation(&home.into(), alg, now, retire_after)
            .map(drop)
    }

    /// The rotated index, with the new `next` key already sealed on disk.
    fn stage_rotation(
        &self,
        home: &Home<'_>,
        alg: JwsAlgorithm,
        now: OffsetDateTime,
        retire_after: Duration,
    ) -> Result<Vec<IndexEntry>, KeyringError> {
        let now = whole_second(now);
        let mut entries = self.live_entries(now);
        if entries.len() >= MAX_JWKS_KEYS {
            return Err(KeyringError::Full);
        }
        let retires_at = (now + retire_after).unix_timestamp();
        for entry in &mut entries {
            if entry.state == KeyState::Active {
                entry.state = KeyState::Retired;
                entry.retires_at = Some(retires_at);
            }
        }
        promote_next(home, &mut entries, alg, now)?;
        entries.push(create_key(home, alg, KeyState::Next, now)?);
        Ok(entries)
    }

    /// Revokes `kid`: it leaves the JWKS at once and its tokens introspect inactive.
    /// Revoking the `active` key needs `force`, and promotes the `next` key at once;
    /// revoking the `active` or `next` key creates a new `next`.
    pub fn revoke<'a>(
        &self,
        home: impl Into<Home<'a>>,
        alg: JwsAlgorithm,
        kid: &str,
        force: bool,
        now: OffsetDateTime,
        retire_after: Duration,
    ) -> Result<Self, RevokeError> {
        let home = home.into();
        let key = self.get(kid).ok_or_else(|| RevokeError::UnknownKid {
            kid: kid.to_owned(),
        })?;
        let was = key.state;
        match was {
            KeyState::Revoked => {
                return Err(RevokeError::AlreadyRevoked {
                    kid: kid.to_owned(),
                });
            }
            KeyState::Active if !force => {
                return Err(RevokeError::ActiveNeedsForce {
                    kid: kid.to_owned(),
                });
            }
            _ => {}
        }
        let now = whole_second(now);
        let mut entries = self.live_entries(now);
        let retires_at = (now + retire_after).unix_timestamp();
        for entry in entries.iter_mut().filter(|e| e.kid == kid) {
            entry.state = KeyState::Revoked;
            entry.retires_at = Some(entry.retires_at.unwrap_or(0).max(retires_at));
        }
        if was == KeyState::Active {
            promote_next(&home, &mut entries, alg, now)?;
        }
        if matches!(was, KeyState::Active | KeyState::Next) {
            if entries.len() >= MAX_JWKS_KEYS {
                return Err(KeyringError::Full.into());
            }
            entries.push(create_key(&home, alg, KeyState::Next, now)?);
        }
        Ok(self.commit_change(&home, entries)?)
    }

    /// Drops retired and revoked keys whose time has passed; `None` when none has.
    pub fn purge_expired<'a>(
        &self,
        home: impl Into<Home<'a>>,
        now: OffsetDateTime,
    ) -> Result<Option<Self>, KeyringError> {
        let entries = self.live_entries(now);
        if entries.len() == self.keys.len() {
            return Ok(None);
        }
        self.commit_change(&home.into(), entries).map(Some)
    }

    /// Every key but retired and revoked ones whose `retires_at` has passed.
    fn live_entries(&self, now: OffsetDateTime) -> Vec<IndexEntry> {
        self.keys
            .iter()
            .filter(|k| {
                !(matches!(k.state, KeyState::Retired | KeyState::Revoked)
                    && k.retires_at.is_some_and(|t| t <= now))
            })
            .map(|k| k.to_entry())
            .collect()
    }

    /// Commits `entries` as the successor of this keyring: the sealed keys this one
    /// holds and `entries` no longer names are removed.
    fn commit_change(
        &self,
        home: &Home<'_>,
        entries: Vec<IndexEntry>,
    ) -> Result<Self, KeyringError> {
        let dropped: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_str())
            .filter(|kid| !entries.iter().any(|e| e.kid == *kid))
            .collect();
        Self::commit(home, entries, self.generation, &dropped)
    }

    /// Writes the index (last, atomically, if the store is still at `expected`), loads
    /// it back with every check, and removes the sealed keys of `dropped`.
    fn commit(
        home: &Home<'_>,
        entries: Vec<IndexEntry>,
        expected: u64,
        dropped: &[&str],
    ) -> Result<Self, KeyringError> {
        let kids: Vec<String> = entries.iter().map(|e| e.kid.clone()).collect();
        let json = encode_index(&home.index_location(), entries)?;
        let keep: Vec<&str> = kids.iter().map(String::as_str).collect();
        let generation = home.commit(&json, expected, &keep, dropped)?;
        Self::load(home, &json, generation)
    }
}

/// Promotes the oldest `next` key to `active`, or, should there be none (an edited
/// index), creates an active key.
fn promote_next(
    home: &Home<'_>,
    entries: &mut Vec<IndexEntry>,
    alg: JwsAlgorithm,
    now: OffsetDateTime,
) -> Result<(), KeyringError> {
    match entries.iter_mut().find(|e| e.state == KeyState::Next) {
        Some(next) => {
            next.state = KeyState::Active;
            next.activated_at = Some(now.unix_timestamp());
        }
        None => {
            if entries.len() >= MAX_JWKS_KEYS {
                return Err(KeyringError::Full);
            }
            entries.push(create_key(home, alg, KeyState::Active, now)?);
        }
    }
    Ok(())
}

fn whole_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn keyring_dir(store: &OpenDataDir) -> PathBuf {
    store.dir().root().join(KEYRING_DIR)
}

/// The index as it is stored.
fn encode_index(index_path: &Path, keys: Vec<IndexEntry>) -> Result<Vec<u8>, KeyringError> {
    let index = Index {
        version: INDEX_VERSION,
        keys,
    };
    let mut json = serde_json::to_vec_pretty(&index).map_err(|_| KeyringError::Index {
        path: index_path.to_owned(),
        reason: "cannot be encoded",
    })?;
    json.push(b'\n');
    Ok(json)
}

fn create_key(
    home: &Home<'_>,
    alg: JwsAlgorithm,
    state: KeyState,
    created_at: OffsetDateTime,
) -> Result<IndexEntry, KeyringError> {
    let rng = SystemRandom::new();
    // ring's PKCS#8 document is not wiped on drop (it offers no way to); it lives only
    // on this stack frame, and what leaves it is sealed.
    let pkcs8 = match alg {
        JwsAlgorithm::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
        JwsAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
    }
    .map_err(|_| KeyringError::Random)?;
    let key_pair = KeyPair::from_pkcs8(alg, pkcs8.as_ref()).ok_or(KeyringError::Random)?;
    let public = key_pair.public_key();
    let jwk_key = public.jwk_key().ok_or(KeyringError::Random)?;
    let kid = thumbprint(&jwk_key);
    let cert = home
        .ca()
        .issue_token_signer(&public, SIGNING_CERT_TTL, created_at)?;
    let sealed = home.kek().seal(&purpose(&kid), pkcs8.as_ref())?;
    home.write_sealed(&kid, &sealed)?;
    Ok(IndexEntry {
        kid,
        alg,
        state,
        created_at: created_at.unix_timestamp(),
        activated_at: (state == KeyState::Active).then(|| created_at.unix_timestamp()),
        retires_at: None,
        cert: STANDARD.encode(&cert.der),
    })
}

/// The CA certificate and the ID every signing-key certificate must carry.
struct CertChecker<'a> {
    ca: X509Certificate<'a>,
    signer_id: SpiffeId,
}

impl<'a> CertChecker<'a> {
    fn new(authority: &'a CertificateAuthority) -> Result<Self, KeyringError> {
        let (_, ca) = X509Certificate::from_der(authority.cert_der())
            .map_err(|_| PkiError::Ca("CA certificate does not parse"))?;
        Ok(Self {
            ca,
            signer_id: authority.trust_domain().token_signer_id(),
        })
    }

    /// Parses a signing key's certificate and checks it names the token signer and was
    /// signed by the CA. x509-parser checks one signature, which is the whole chain here.
    fn check<'c>(&self, kid: &str, der: &'c [u8]) -> Result<X509Certificate<'c>, KeyringError> {
        let malformed = |reason| KeyringError::Certificate {
            kid: kid.to_owned(),
            reason,
        };
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|_| malformed("not an X.509 certificate"))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the certificate"));
        }
        if cert.issuer() != self.ca.subject()
            || cert.verify_signature(Some(self.ca.public_key())).is_err()
        {
            return Err(KeyringError::NotFromCa {
                kid: kid.to_owned(),
            });
        }
        let not_signer = || KeyringError::NotTokenSigner {
            kid: kid.to_owned(),
            expected: self.signer_id.clone(),
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|_| not_signer())?
            .ok_or_else(not_signer)?;
        let only_signer_id = matches!(
            san.value.general_names.as_slice(),
            [GeneralName::URI(uri)] if *uri == self.signer_id.as_str()
        );
        if !only_signer_id || cert.is_ca() {
            return Err(not_signer());
        }
        Ok(cert)
    }
}

fn load_key(
    home: &Home<'_>,
    checker: &CertChecker<'_>,
    entry: IndexEntry,
) -> Result<SigningKey, KeyringError> {
    let IndexEntry {
        kid,
        alg,
        state,
        created_at,
        activated_at,
        retires_at,
        cert,
    } = entry;
    let cert_der = STANDARD
        .decode(&cert)
        .map_err(|_| KeyringError::Certificate {
            kid: kid.clone(),
            reason: "not base64",
        })?;
    let parsed = checker.check(&kid, &cert_der)?;
    let not_after = parsed.validity().not_after.to_datetime();
    let cert_spki = parsed.public_key().raw;

    // The purpose names the kid, so a sealed file copied over another key's is refused
    // by the AEAD before its contents are even parsed.
    let sealed = home.read_sealed(&kid)?;
    let pkcs8 = home
        .kek()
        .open(&home.sealed_location(&kid), &purpose(&kid), &sealed)?;
    let key_pair = KeyPair::from_pkcs8(alg, &pkcs8).ok_or_else(|| KeyringError::KeyUnusable {
        kid: kid.clone(),
        alg,
    })?;
    drop(pkcs8);
    let public = key_pair.public_key();
    if public.subject_public_key_info() != cert_spki {
        return Err(KeyringError::KeyMismatch { kid });
    }
    let jwk_key = public
        .jwk_key()
        .ok_or_else(|| KeyringError::KeyMismatch { kid: kid.clone() })?;
    if thumbprint(&jwk_key) != kid {
        return Err(KeyringError::KidMismatch { kid });
    }
    let time = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t).map_err(|_| KeyringError::Index {
            path: home.index_location(),
            reason: "a time is out of range",
        })
    };
    let created_at = time(created_at)?;
    let activated_at = activated_at.map(time).transpose()?;
    let retires_at = retires_at.map(time).transpose()?;
    let jwk = Jwk {
        kid: kid.clone(),
        key: jwk_key,
        // RFC 7517 §4.7: the leaf alone; verifiers anchor it in the trust bundle.
        x5c: vec![cert],
    };
    let token_header_b64 = crate::mint::token_header_b64(alg, &kid);
    let verifier = key_pair.verifier();
    Ok(SigningKey {
        kid,
        alg,
        state,
        created_at,
        activated_at,
        retires_at,
        not_after,
        cert_der,
        jwk,
        key_pair,
        verifier,
        token_header_b64,
        sealed,
    })
}

/// Whether `s` has the shape of a kid (a base64url SHA-256 thumbprint), so it may be
/// used in a file or key name.
pub(crate) fn is_kid(s: &str) -> bool {
    s.len() == KID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn sealed_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}{SEALED_SUFFIX}"))
}

/// What a signing key is sealed for (the envelope's purpose).
pub(crate) fn purpose(kid: &str) -> String {
    format!("signing-key:{kid}")
}

fn count_sealed_files(dir: &Path) -> Result<usize, KeyringError> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_name().to_string_lossy().ends_with(SEALED_SUFFIX) {
            count += 1;
        }
    }
    Ok(count)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyringError + '_ {
    move |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datadir::{DataDir, KekSource};
    use crate::pki::{self, CertificateAuthority, KeyType};
    use baton_proto::TrustDomain;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    pub(crate) fn store_in(root: &Path) -> OpenDataDir {
        DataDir::new(root)
            .init(&td(), &KekSource::Dev, pki::DEFAULT_CA_TTL, now())
            .unwrap()
            .store
    }

    /// A fresh data directory and its keyring, for this module's and `mint`'s tests.
    pub(crate) fn keyring(alg: JwsAlgorithm) -> (tempfile::TempDir, OpenDataDir, Keyring) {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_in(&tmp.path().join("d"));
        let ring = Keyring::load_or_init(&store, alg, now()).unwrap();
        (tmp, store, ring)
    }

    fn reload(store: &OpenDataDir) -> Result<Keyring, KeyringError> {
        Keyring::load_or_init(store, JwsAlgorithm::Es256, now())
    }

    fn edit_index(store: &OpenDataDir, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = keyring_dir(store).join(INDEX);
        let mut index: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edit(&mut index);
        fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    }

    #[test]
    fn key_states_serialize_as_the_spec_words() {
        for (state, word) in [
            (KeyState::Next, "next"),
            (KeyState::Active, "active"),
            (KeyState::Retired, "retired"),
        ] {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{word}\"")
            );
            assert_eq!(state.to_string(), word);
            let back: KeyState = serde_json::from_str(&format!("\"{word}\"")).unwrap();
            assert_eq!(back, state);
        }
        assert!(serde_json::from_str::<KeyState>("\"Active\"").is_err());
    }

    #[test]
    fn each_key_verifies_its_own_signatures_and_nothing_else() {
        for alg in [JwsAlgorithm::Es256, JwsAlgorithm::EdDsa] {
            let (_tmp, _store, ring) = keyring(alg);
            let (a, b) = (&ring.keys()[0], &ring.keys()[1]);
            let sig = a.sign(b"header.payload").unwrap();
            assert!(a.verify(b"header.payload", sig.as_ref()), "{alg}");
            assert!(
                !a.verify(b"header.payloaX", sig.as_ref()),
                "{alg}: other input"
            );
            assert!(
                !b.verify(b"header.payload", sig.as_ref()),
                "{alg}: other key"
            );
            assert!(
                !a.verify(b"header.payload", &sig.as_ref()[..63]),
                "{alg}: short"
            );
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 Appendix A.3.
        let key = JwkKey::Ed25519 {
            x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
        };
        assert_eq!(
            thumbprint(&key),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn first_start_creates_one_active_and_one_next_key_certified_by_the_ca() {
        for alg in [JwsAlgorithm::Es256, JwsAlgorithm::EdDsa] {
            let (_tmp, store, ring) = keyring(alg);
            let states: Vec<_> = ring.keys().iter().map(|k| k.state()).collect();
            assert_eq!(states, [KeyState::Active, KeyState::Next]);
            assert_eq!(ring.active().state(), KeyState::Active);
            assert_ne!(ring.keys()[0].kid(), ring.keys()[1].kid());

            let (_, ca) = X509Certificate::from_der(store.ca().cert_der()).unwrap();
            for key in ring.keys() {
                assert_eq!(key.alg(), alg);
                assert_eq!(key.jwk().alg(), alg);
                assert!(is_kid(key.kid()));
                assert_eq!(key.jwk().kid, key.kid());
                assert_eq!(key.jwk().x5c, vec![STANDARD.encode(key.cert_der())]);
                assert!(std::ptr::eq(ring.get(key.kid()).unwrap().as_ref(), &**key));

                let (_, cert) = X509Certificate::from_der(key.cert_der()).unwrap();
                cert.verify_signature(Some(ca.public_key())).unwrap();
                let names = &cert
                    .subject_alternative_name()
                    .unwrap()
                    .unwrap()
                    .value
                    .general_names;
                assert_eq!(
                    names,
                    &vec![GeneralName::URI("spiffe://example.org/baton/token-signer")]
                );
                let lifetime = key.not_after() - key.created_at();
                assert_eq!(lifetime.whole_seconds(), SIGNING_CERT_TTL.as_secs() as i64);
            }
            assert!(ring.get("nope").is_none());
        }
    }

    #[test]
    fn jwks_publishes_every_key_with_sig_use_alg_and_x5c() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::Es256);
        let json = serde_json::to_value(ring.jwks()).unwrap();
        let keys = json["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for (jwk, key) in keys.iter().zip(ring.keys()) {
            assert_eq!(jwk["kid"], key.kid());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["alg"], "ES256");
            assert_eq!(jwk["kty"], "EC");
            assert_eq!(jwk["x5c"].as_array().unwrap().len(), 1);
            assert!(jwk.get("d").is_none());
        }
        // What a verifier parses back is what was published.
        let back: Jwks = serde_json::from_value(json).unwrap();
        assert_eq!(&back, ring.jwks());
    }

    #[test]
    fn keyring_persists_and_reloads_to_the_same_kids() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::EdDsa);
        // The configured algorithm applies to new keys only.
        let again = reload(&store).unwrap();
        let kids = |r: &Keyring| {
            r.keys()
                .iter()
                .map(|k| k.kid().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(&again), kids(&ring));
        assert_eq!(again.active().kid(), ring.active().kid());
        assert_eq!(again.active().alg(), JwsAlgorithm::EdDsa);
        assert_eq!(again.jwks(), ring.jwks());
        for (a, b) in again.keys().iter().zip(ring.keys()) {
            assert_eq!(a.cert_der(), b.cert_der());
            assert_eq!(a.created_at(), b.created_at());
            assert_eq!(a.not_after(), b.not_after());
        }
    }

    #[test]
    fn retired_keys_load_and_stay_published() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        edit_index(&store, |index| {
            index["keys"][0]["state"] = "retired".into();
            index["keys"][1]["state"] = "active".into();
        });
        let again = reload(&store).unwrap();
        assert_eq!(again.active().kid(), ring.keys()[1].kid());
        assert_eq!(
            again.get(ring.keys()[0].kid()).unwrap().state(),
            KeyState::Retired
        );
        assert_eq!(again.jwks().keys.len(), 2);
    }

    #[test]
    fn files_are_sealed_private_and_hold_no_plain_private_key() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let dir = keyring_dir(&store);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(INDEX)), 0o644);
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = fs::read_to_string(&path).unwrap();
            assert!(!text.contains("PRIVATE KEY"), "{}", path.display());
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(!has_member(&json, "d"), "{}", path.display());
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        names.sort();
        let mut want: Vec<String> = ring
            .keys()
            .iter()
            .map(|k| format!("{}{SEALED_SUFFIX}", k.kid()))
            .chain([INDEX.to_owned()])
            .collect();
        want.sort();
        assert_eq!(names, want);
        for key in ring.keys() {
            assert_eq!(mode(&sealed_path(&dir, key.kid())), 0o600);
        }
    }

    fn has_member(v: &serde_json::Value, name: &str) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.contains_key(name) || m.values().any(|v| has_member(v, name))
            }
            serde_json::Value::Array(a) => a.iter().any(|v| has_member(v, name)),
            _ => false,
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (_tmp, _store, ring) = keyring(JwsAlgorithm::EdDsa);
        let key = ring.active();
        let debug = format!("{:?} {ring:?}", **key);
        assert!(debug.contains(key.kid()));
        let JwkKey::Ed25519 { x } = &key.jwk().key else {
            panic!("not an Ed25519 key")
        };
        // The Debug of the keyring shows the public JWKS, never a private scalar; the
        // SigningKey's own Debug shows not even the public key.
        assert!(!format!("{:?}", **key).contains(x.as_str()));
        assert!(!debug.contains("pkcs8") && !debug.contains("key_pair"));
    }

    #[test]
    fn a_start_that_crashed_before_the_index_starts_over() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_in(&tmp.path().join("d"));
        let first = Keyring::load_or_init(&store, JwsAlgorithm::Es256, now()).unwrap();
        fs::remove_file(keyring_dir(&store).join(INDEX)).unwrap();
        let second = reload(&store).unwrap();
        assert_ne!(second.active().kid(), first.active().kid());
        assert_eq!(
            reload(&store).unwrap().active().kid(),
            second.active().kid()
        );
    }

    #[test]
    fn a_swapped_or_corrupted_sealed_key_is_a_typed_error() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let dir = keyring_dir(&store);
        let [a, b] = [ring.keys()[0].kid(), ring.keys()[1].kid()];
        let b_sealed = fs::read(sealed_path(&dir, b)).unwrap();

        fs::copy(sealed_path(&dir, a), sealed_path(&dir, b)).unwrap();
        let err = reload(&store).unwrap_err();
        assert!(
            matches!(err, KeyringError::Seal(SealError::Corrupt { .. })),
            "{err}"
        );

        fs::write(sealed_path(&dir, b), b"{\"garbage\":1}").unwrap();
        let err = reload(&store).unwrap_err();
        assert!(
            matches!(err, KeyringError::Seal(SealError::Corrupt { .. })),
            "{err}"
        );

        fs::remove_file(sealed_path(&dir, b)).unwrap();
        let err = reload(&store).unwrap_err();
        assert!(
            matches!(err, KeyringError::Seal(SealError::Io { .. })),
            "{err}"
        );

        fs::write(sealed_path(&dir, b), &b_sealed).unwrap();
        reload(&store).unwrap();
    }

    #[test]
    fn a_resealed_foreign_key_does_not_match_its_certificate() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let dir = keyring_dir(&store);
        let kid = ring.active().kid();
        // Someone holding the KEK seals another key under the right purpose.
        let other =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        store
            .kek()
            .seal_to_file(&sealed_path(&dir, kid), &purpose(kid), other.as_ref())
            .unwrap();
        let err = reload(&store).unwrap_err();
        assert!(matches!(err, KeyringError::KeyMismatch { .. }), "{err}");

        store
            .kek()
            .seal_to_file(&sealed_path(&dir, kid), &purpose(kid), b"not pkcs8")
            .unwrap();
        let err = reload(&store).unwrap_err();
        assert!(matches!(err, KeyringError::KeyUnusable { .. }), "{err}");
    }

    #[test]
    fn a_tampered_index_is_a_typed_error() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let index_path = keyring_dir(&store).join(INDEX);
        let original = fs::read(&index_path).unwrap();
        let restore = || fs::write(&index_path, &original).unwrap();

        type Check = fn(&KeyringError) -> bool;
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let other_ca = CertificateAuthority::create(&td(), pki::DEFAULT_CA_TTL, now()).unwrap();
        let active_key = ring.active();
        // A certificate for the right key, but from another trust domain's CA.
        let foreign = other_ca
            .issue_token_signer(&active_key.key_pair.public_key(), SIGNING_CERT_TTL, now())
            .unwrap();
        // A workload SVID from the right CA.
        let workload = store
            .ca()
            .issue_svid(
                &"spiffe://example.org/fn/a".parse().unwrap(),
                &KeyType::EcP256.generate().unwrap(),
                Duration::from_secs(3600),
                now(),
            )
            .unwrap();
        let foreign = STANDARD.encode(&foreign.der);
        let workload = STANDARD.encode(&workload.der);
        let next_kid = ring.keys()[1].kid().to_owned();

        let cases: Vec<(&str, Edit, Check)> = vec![
            (
                "two active keys",
                Box::new(|i| i["keys"][1]["state"] = "active".into()),
                |e| matches!(e, KeyringError::ActiveCount { found: 2, .. }),
            ),
            (
                "no active key",
                Box::new(|i| i["keys"][0]["state"] = "retired".into()),
                |e| matches!(e, KeyringError::ActiveCount { found: 0, .. }),
            ),
            (
                "unknown state",
                Box::new(|i| i["keys"][0]["state"] = "Active".into()),
                |e| matches!(e, KeyringError::Index { .. }),
            ),
            (
                "kid as a path",
                Box::new(|i| i["keys"][0]["kid"] = "../../../../etc/passwd".into()),
                |e| matches!(e, KeyringError::Index { .. }),
            ),
            (
                "duplicate kid",
                Box::new(|i| i["keys"][1] = i["keys"][0].clone()),
                |e| matches!(e, KeyringError::Index { .. }),
            ),
            (
                "unknown member",
                Box::new(|i| i["keys"][0]["d"] = "x".into()),
                |e| matches!(e, KeyringError::Index { .. }),
            ),
            (
                "certificate from another CA",
                Box::new(move |i| i["keys"][0]["cert"] = foreign.clone().into()),
                |e| matches!(e, KeyringError::NotFromCa { .. }),
            ),
            (
                "workload certificate",
                Box::new(move |i| i["keys"][0]["cert"] = workload.clone().into()),
                |e| matches!(e, KeyringError::NotTokenSigner { .. }),
            ),
            (
                "certificate of the other key",
                Box::new(|i| i["keys"][0]["cert"] = i["keys"][1]["cert"].clone()),
                |e| matches!(e, KeyringError::KeyMismatch { .. }),
            ),
            (
                "certificate not base64",
                Box::new(|i| i["keys"][0]["cert"] = "%%%".into()),
                |e| matches!(e, KeyringError::Certificate { .. }),
            ),
            (
                "algorithm flipped",
                Box::new(|i| i["keys"][0]["alg"] = "EdDSA".into()),
                |e| matches!(e, KeyringError::KeyUnusable { .. }),
            ),
            (
                "algorithm none",
                Box::new(|i| i["keys"][0]["alg"] = "none".into()),
                |e| matches!(e, KeyringError::Index { .. }),
            ),
            (
                "future version",
                Box::new(|i| i["version"] = 2.into()),
                |e| matches!(e, KeyringError::Index { .. }),
            ),
        ];
        for (name, edit, check) in cases {
            edit_index(&store, edit);
            let err = reload(&store).unwrap_err();
            assert!(check(&err), "{name}: {err}");
            restore();
        }

        // A kid that is well formed but not the key's thumbprint: renaming the sealed
        // file along with it still fails, first on the purpose, and if resealed, on
        // the thumbprint.
        let dir = keyring_dir(&store);
        let fake = "A".repeat(KID_LEN);
        let pkcs8 = store
            .kek()
            .open_file(&sealed_path(&dir, &next_kid), &purpose(&next_kid))
            .unwrap();
        store
            .kek()
            .seal_to_file(&sealed_path(&dir, &fake), &purpose(&fake), &pkcs8)
            .unwrap();
        edit_index(&store, |i| i["keys"][1]["kid"] = fake.clone().into());
        let err = reload(&store).unwrap_err();
        assert!(matches!(err, KeyringError::KidMismatch { .. }), "{err}");
        restore();

        fs::write(&index_path, b"not json").unwrap();
        let err = reload(&store).unwrap_err();
        assert!(matches!(err, KeyringError::Index { .. }), "{err}");
        restore();
        reload(&store).unwrap();
    }

    const RETIRE_AFTER: Duration = Duration::from_secs(302);

    fn kids_and_states(ring: &Keyring) -> Vec<(String, KeyState)> {
        ring.keys()
            .iter()
            .map(|k| (k.kid().to_owned(), k.state()))
            .collect()
    }

    fn published(ring: &Keyring) -> Vec<String> {
        ring.jwks().keys.iter().map(|k| k.kid.clone()).collect()
    }

    /// What was persisted is what is in force: a reload sees the same keys and states.
    fn assert_reloads_the_same(store: &OpenDataDir, ring: &Keyring) {
        let again = reload(store).unwrap();
        assert_eq!(kids_and_states(&again), kids_and_states(ring));
        assert_eq!(again.jwks(), ring.jwks());
        for (a, b) in again.keys().iter().zip(ring.keys()) {
            assert_eq!(a.activated_at(), b.activated_at());
            assert_eq!(a.retires_at(), b.retires_at());
        }
    }

    #[test]
    fn rotation_promotes_next_retires_active_and_prepublishes_a_new_next() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let (active, next) = (
            ring.keys()[0].kid().to_owned(),
            ring.keys()[1].kid().to_owned(),
        );
        let t = whole_second(now());
        let rotated = ring
            .rotate(&store, JwsAlgorithm::Es256, t, RETIRE_AFTER)
            .unwrap();
        let states = kids_and_states(&rotated);
        assert_eq!(states.len(), 3);
        assert_eq!(states[0], (active.clone(), KeyState::Retired));
        assert_eq!(states[1], (next.clone(), KeyState::Active));
        assert_eq!(states[2].1, KeyState::Next);
        assert_eq!(rotated.active().kid(), next);
        assert_eq!(rotated.active().activated_at(), Some(t));
        assert_eq!(
            rotated.get(&active).unwrap().retires_at(),
            Some(t + RETIRE_AFTER)
        );
        // The retired key stays published for its outstanding tokens.
        assert_eq!(published(&rotated).len(), 3);
        assert_reloads_the_same(&store, &rotated);

        // A second rotation keeps both retired keys until their time.
        let again = rotated
            .rotate(
                &store,
                JwsAlgorithm::Es256,
                t + Duration::from_secs(10),
                RETIRE_AFTER,
            )
            .unwrap();
        assert_eq!(again.keys().len(), 4);
        assert_eq!(again.active().kid(), states[2].0);
        assert_reloads_the_same(&store, &again);
    }

    #[test]
    fn retired_keys_leave_the_jwks_index_and_disk_once_their_tokens_expired() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let t = whole_second(now());
        let old = ring.active().kid().to_owned();
        let rotated = ring
            .rotate(&store, JwsAlgorithm::Es256, t, RETIRE_AFTER)
            .unwrap();
        assert!(
            rotated
                .purge_expired(&store, t + Duration::from_secs(301))
                .unwrap()
                .is_none()
        );
        let purged = rotated
            .purge_expired(&store, t + RETIRE_AFTER)
            .unwrap()
            .unwrap();
        assert!(purged.get(&old).is_none());
        assert!(!published(&purged).contains(&old));
        assert!(!sealed_path(&keyring_dir(&store), &old).exists());
        assert_reloads_the_same(&store, &purged);
        // A rotation drops them too.
        let rotated = purged
            .rotate(&store, JwsAlgorithm::Es256, t, RETIRE_AFTER)
            .unwrap();
        let later = rotated
            .rotate(&store, JwsAlgorithm::Es256, t + RETIRE_AFTER, RETIRE_AFTER)
            .unwrap();
        assert_eq!(
            later
                .keys()
                .iter()
                .filter(|k| k.state() == KeyState::Retired)
                .count(),
            1
        );
    }

    #[test]
    fn a_revoked_key_leaves_the_jwks_at_once_and_the_active_one_needs_force() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let t = whole_second(now());
        let alg = JwsAlgorithm::Es256;
        let ring = ring.rotate(&store, alg, t, RETIRE_AFTER).unwrap();
        let retired = ring.keys()[0].kid().to_owned();
        let active = ring.active().kid().to_owned();

        // A retired key: gone from the JWKS, still listed as revoked.
        let ring = ring
            .revoke(&store, alg, &retired, false, t, RETIRE_AFTER)
            .unwrap();
        assert_eq!(ring.get(&retired).unwrap().state(), KeyState::Revoked);
        assert!(!published(&ring).contains(&retired));
        assert_eq!(published(&ring).len(), 2);
        assert_reloads_the_same(&store, &ring);
        assert!(matches!(
            ring.revoke(&store, alg, &retired, true, t, RETIRE_AFTER),
            Err(RevokeError::AlreadyRevoked { .. })
        ));
        assert!(matches!(
            ring.revoke(&store, alg, "nope", true, t, RETIRE_AFTER),
            Err(RevokeError::UnknownKid { .. })
        ));

        // The active key: refused without force, and nothing changes on disk.
        let err = ring
            .revoke(&store, alg, &active, false, t, RETIRE_AFTER)
            .unwrap_err();
        assert!(matches!(err, RevokeError::ActiveNeedsForce { .. }), "{err}");
        assert_reloads_the_same(&store, &ring);

        // With force, the next key takes over at once and a new next is published.
        let next = ring
            .keys()
            .iter()
            .find(|k| k.state() == KeyState::Next)
            .unwrap()
            .kid()
            .to_owned();
        let ring = ring
            .revoke(&store, alg, &active, true, t, RETIRE_AFTER)
            .unwrap();
        assert_eq!(ring.active().kid(), next);
        assert_eq!(ring.get(&active).unwrap().state(), KeyState::Revoked);
        assert!(!published(&ring).contains(&active));
        let nexts = ring
            .keys()
            .iter()
            .filter(|k| k.state() == KeyState::Next)
            .count();
        assert_eq!(nexts, 1);
        assert_reloads_the_same(&store, &ring);

        // Revoking the next key pre-publishes another.
        let next = ring
            .keys()
            .iter()
            .find(|k| k.state() == KeyState::Next)
            .unwrap()
            .kid()
            .to_owned();
        let ring = ring
            .revoke(&store, alg, &next, false, t, RETIRE_AFTER)
            .unwrap();
        assert_eq!(ring.get(&next).unwrap().state(), KeyState::Revoked);
        let nexts = ring
            .keys()
            .iter()
            .filter(|k| k.state() == KeyState::Next)
            .count();
        assert_eq!(nexts, 1);
        assert_reloads_the_same(&store, &ring);
    }

    #[test]
    fn a_crash_between_sealing_the_new_key_and_writing_the_index_keeps_the_old_keyring() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let before = kids_and_states(&ring);
        // The new `next` key is sealed on disk; the process dies before the index.
        let staged = ring
            .stage_rotation(
                &Home::Files(&store),
                JwsAlgorithm::Es256,
                now(),
                RETIRE_AFTER,
            )
            .unwrap();
        let orphan = staged.last().unwrap().kid.clone();
        assert!(sealed_path(&keyring_dir(&store), &orphan).exists());
        drop(staged);

        let restarted = reload(&store).unwrap();
        assert_eq!(kids_and_states(&restarted), before);
        assert!(restarted.get(&orphan).is_none());
        // The next rotation works and sweeps the orphan away.
        let rotated = restarted
            .rotate(&store, JwsAlgorithm::Es256, now(), RETIRE_AFTER)
            .unwrap();
        assert_eq!(rotated.active().kid(), before[1].0);
        assert!(!sealed_path(&keyring_dir(&store), &orphan).exists());
        assert_reloads_the_same(&store, &rotated);
    }

    #[test]
    fn a_full_keyring_refuses_to_rotate_and_stays_in_force() {
        let (_tmp, store, mut ring) = keyring(JwsAlgorithm::EdDsa);
        let t = whole_second(now());
        while ring.keys().len() < MAX_JWKS_KEYS {
            ring = ring
                .rotate(&store, JwsAlgorithm::EdDsa, t, RETIRE_AFTER)
                .unwrap();
        }
        let err = ring
            .rotate(&store, JwsAlgorithm::EdDsa, t, RETIRE_AFTER)
            .unwrap_err();
        assert!(matches!(err, KeyringError::Full), "{err}");
        assert_reloads_the_same(&store, &ring);
    }

    #[test]
    fn error_messages_carry_no_key_material() {
        let (_tmp, store, ring) = keyring(JwsAlgorithm::Es256);
        let dir = keyring_dir(&store);
        let kid = ring.active().kid();
        let pkcs8 = store
            .kek()
            .open_file(&sealed_path(&dir, kid), &purpose(kid))
            .unwrap();
        fs::write(sealed_path(&dir, kid), b"{}").unwrap();
        let err = reload(&store).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&STANDARD.encode(&*pkcs8)));
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(&*pkcs8)));
    }
}

/// The keyring in the distributed store, against a real `redis-server`.
#[cfg(test)]
mod shared_tests {
    use super::tests::store_in;
    use super::*;
    use crate::datadir::{DataDir, KekSource};
    use crate::shared::DEFAULT_TIMEOUT;
    use baton_tests::RedisServer;

    const RETIRE_AFTER: Duration = Duration::from_secs(302);

    struct Cluster {
        _tmp: tempfile::TempDir,
        redis: RedisServer,
        /// Two replicas: the same trust domain and KEK, one Redis.
        data: [OpenDataDir; 2],
        store: SharedStore,
    }

    impl Cluster {
        fn new() -> Cluster {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("d");
            let first = store_in(&root);
            let second = DataDir::new(&root).open(&KekSource::Dev).unwrap();
            let redis = RedisServer::start();
            let store = SharedStore::connect(&redis.url(), DEFAULT_TIMEOUT).unwrap();
            Cluster {
                _tmp: tmp,
                redis,
                data: [first, second],
                store,
            }
        }

        fn home(&self, replica: usize) -> Home<'_> {
            Home::Shared(&self.data[replica], &self.store)
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn replicas_starting_together_share_one_seeded_keyring() {
        let c = Cluster::new();
        let rings = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let home = c.home(i);
                    scope.spawn(move || Keyring::load_or_init(home, JwsAlgorithm::Es256, now()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(rings[0].active().kid(), rings[1].active().kid());
        assert_eq!(rings[0].jwks(), rings[1].jwks());
        assert_eq!(rings[0].keys().len(), 2);
        assert_eq!(c.redis.cli(&["GET", "{baton}:keyring:generation"]), "1");
        // Only the winner's two keys are permanent; a loser's staged keys expire.
        let ttls: Vec<String> = rings[0]
            .keys()
            .iter()
            .map(|k| c.redis.cli(&["TTL", &shared_key_name(k.kid())]))
            .collect();
        assert_eq!(ttls, ["-1", "-1"]);
    }

    #[test]
    fn private_keys_are_stored_sealed() {
        let c = Cluster::new();
        let ring = Keyring::load_or_init(c.home(0), JwsAlgorithm::EdDsa, now()).unwrap();
        let stored = c.redis.cli(&["GET", &shared_key_name(ring.active().kid())]);
        let envelope: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert!(envelope["ciphertext"].is_string(), "{stored}");
        assert!(!stored.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_rotation_on_one_replica_is_seen_by_the_other_and_a_stale_change_conflicts() {
        let c = Cluster::new();
        let a = Keyring::load_or_init(c.home(0), JwsAlgorithm::Es256, now()).unwrap();
        let b = Keyring::load_or_init(c.home(1), JwsAlgorithm::Es256, now()).unwrap();
        assert!(!b.is_stale(c.home(1)).unwrap());

        let rotated = a
            .rotate(c.home(0), JwsAlgorithm::Es256, now(), RETIRE_AFTER)
            .unwrap();
        assert!(b.is_stale(c.home(1)).unwrap());
        let seen = Keyring::reload(c.home(1)).unwrap();
        assert_eq!(seen.active().kid(), rotated.active().kid());
        assert_eq!(seen.jwks(), rotated.jwks());
        assert_eq!(seen.generation(), rotated.generation());

        // Replica b rotates from what it loaded before: refused, nothing written.
        let before = c.redis.cli(&["GET", "{baton}:keyring:index"]);
        assert!(matches!(
            b.rotate(c.home(1), JwsAlgorithm::Es256, now(), RETIRE_AFTER),
            Err(KeyringError::Conflict)
        ));
        assert_eq!(c.redis.cli(&["GET", "{baton}:keyring:index"]), before);
        assert_eq!(
            Keyring::reload(c.home(0)).unwrap().active().kid(),
            rotated.active().kid()
        );
    }

    #[test]
    fn revoked_and_expired_keys_leave_the_store() {
        let c = Cluster::new();
        let ring = Keyring::load_or_init(c.home(0), JwsAlgorithm::Es256, now()).unwrap();
        let first = ring.active().kid().to_owned();
        let ring = ring
            .rotate(c.home(0), JwsAlgorithm::Es256, now(), RETIRE_AFTER)
            .unwrap();
        let later = now() + RETIRE_AFTER + Duration::from_secs(1);
        let purged = ring.purge_expired(c.home(0), later).unwrap().unwrap();
        assert!(purged.get(&first).is_none());
        assert_eq!(c.redis.cli(&["EXISTS", &shared_key_name(&first)]), "0");
        let next = purged
            .keys()
            .iter()
            .find(|k| k.state() == KeyState::Next)
            .unwrap()
            .kid()
            .to_owned();
        let revoked = purged
            .revoke(
                c.home(1),
                JwsAlgorithm::Es256,
                &next,
                false,
                later,
                RETIRE_AFTER,
            )
            .unwrap();
        assert_eq!(revoked.get(&next).unwrap().state(), KeyState::Revoked);
        assert!(revoked.jwks().keys.iter().all(|k| k.kid != next));
        assert_eq!(Keyring::reload(c.home(0)).unwrap().jwks(), revoked.jwks());
    }

    #[test]
    fn a_replica_restores_a_store_that_lost_its_keyring() {
        let c = Cluster::new();
        let ring = Keyring::load_or_init(c.home(0), JwsAlgorithm::Es256, now()).unwrap();
        assert_eq!(c.redis.cli(&["FLUSHALL"]), "OK");
        assert!(ring.is_stale(c.home(0)).unwrap());
        assert!(Keyring::current(c.home(0)).unwrap().is_none());
        let restored = ring.restore(c.home(0)).unwrap();
        assert_eq!(restored.jwks(), ring.jwks());
        // A second replica restoring at the same time loses and reloads the same keys.
        assert!(matches!(
            ring.restore(c.home(1)),
            Err(KeyringError::Conflict)
        ));
        assert_eq!(Keyring::reload(c.home(1)).unwrap().jwks(), ring.jwks());
    }

    #[test]
    fn an_unreachable_store_is_a_typed_error_and_changes_nothing() {
        let mut c = Cluster::new();
        let ring = Keyring::load_or_init(c.home(0), JwsAlgorithm::Es256, now()).unwrap();
        c.redis.kill();
        let started = std::time::Instant::now();
        let err = ring
            .rotate(c.home(0), JwsAlgorithm::Es256, now(), RETIRE_AFTER)
            .unwrap_err();
        assert!(matches!(err, KeyringError::Shared(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            Keyring::reload(c.home(1)),
            Err(KeyringError::Shared(_))
        ));
        c.redis.restart();
        // A store that lost its data is a fresh one: the keyring is seeded anew.
        let fresh = Keyring::load_or_init(c.home(1), JwsAlgorithm::Es256, now()).unwrap();
        assert_ne!(fresh.active().kid(), ring.active().kid());
    }
}
