//! The issuer's published signing keys: `GET /.well-known/jwks.json` (RFC 7517, RFC 8037, SPEC §5).
//!
//! A verifier may fetch this document over any transport (SPEC §2), so parsing is
//! strict about everything that could turn a key set into an attack:
//!
//! - a JWK carrying private or symmetric key members (`d`, `p`, `q`, `dp`, `dq`,
//!   `qi`, `oth`, `k`) is refused — a JWKS that leaks a private key or smuggles an
//!   HMAC secret is broken, not merely odd;
//! - only EC P-256 (for `ES256`) and OKP Ed25519 (for `EdDSA`) keys exist, and the
//!   algorithm is derived from the key, so `alg` can never disagree with it;
//! - `use` must be `"sig"`, `x5c` must be non-empty (every key is certified, SPEC §2);
//! - a set holds at most [`MAX_JWKS_KEYS`] keys with distinct `kid`s.
//!
//! Other unknown members are ignored (RFC 7517 §4). Passing these checks says
//! nothing about trust: the verifier still validates each `x5c` chain.

use serde::{Deserialize, Serialize};

use crate::claims::{JwsAlgorithm, present};

/// Most keys a JWKS may hold. Rotation publishes at most `next`, `active` and a
/// few `retired` keys; anything far beyond that is a hostile document.
pub const MAX_JWKS_KEYS: usize = 32;

/// A JWK Set (RFC 7517 §5).
///
/// ```
/// use baton_proto::jwks::Jwks;
/// let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
/// let json = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}",
///     "kid":"k1","use":"sig","alg":"EdDSA","x5c":["MIIB"]}}]}}"#);
/// let jwks: Jwks = serde_json::from_str(&json).unwrap();
/// assert!(jwks.get("k1").is_some());
///
/// let leaked = json.replace(r#""use":"sig""#, r#""use":"sig","d":"secret""#);
/// assert!(serde_json::from_str::<Jwks>(&leaked).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JwksRepr")]
pub struct Jwks {
    /// The keys, each with a distinct `kid`.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The key with this `kid`, if published.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

#[derive(Deserialize)]
struct JwksRepr {
    keys: Vec<Jwk>,
}

impl TryFrom<JwksRepr> for Jwks {
    type Error = JwkError;

    fn try_from(r: JwksRepr) -> Result<Self, Self::Error> {
        if r.keys.len() > MAX_JWKS_KEYS {
            return Err(JwkError::TooManyKeys);
        }
        for (i, key) in r.keys.iter().enumerate() {
            if r.keys[..i].iter().any(|k| k.kid == key.kid) {
                return Err(JwkError::DuplicateKid);
            }
        }
        Ok(Self { keys: r.keys })
    }
}

/// One public signing key (RFC 7517 §4) with its certificate chain.
///
/// On the wire it always carries `kty`, `crv`, `x` (and `y` for EC), `kid`,
/// `use: "sig"`, `alg` and `x5c`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "JwkRepr")]
pub struct Jwk {
    /// Key id, as in the tokens' `kid` header.
    pub kid: String,
    /// The public key.
    pub key: JwkKey,
    /// Certificate chain, base64 (standard, padded) DER, leaf first (RFC 7517 §4.7); never empty.
    pub x5c: Vec<String>,
}

impl Jwk {
    /// The one algorithm this key verifies.
    pub fn alg(&self) -> JwsAlgorithm {
        self.key.alg()
    }
}

/// Public key parameters; coordinates are 32-byte values, base64url without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwkKey {
    /// `kty: "EC"`, `crv: "P-256"` (RFC 7518 §6.2.1), for `ES256`.
    P256 {
        /// X coordinate.
        x: String,
        /// Y coordinate.
        y: String,
    },
    /// `kty: "OKP"`, `crv: "Ed25519"` (RFC 8037 §2), for `EdDSA`.
    Ed25519 {
        /// The public key.
        x: String,
    },
}

impl JwkKey {
    /// The one algorithm this key verifies.
    pub fn alg(&self) -> JwsAlgorithm {
        match self {
            Self::P256 { .. } => JwsAlgorithm::Es256,
            Self::Ed25519 { .. } => JwsAlgorithm::EdDsa,
        }
    }
}

#[derive(Serialize)]
struct JwkOut<'a> {
    kty: &'static str,
    crv: &'static str,
    x: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<&'a str>,
    kid: &'a str,
    #[serde(rename = "use")]
    key_use: &'static str,
    alg: JwsAlgorithm,
    x5c: &'a [String],
}

impl Serialize for Jwk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (kty, crv, x, y) = match &self.key {
            JwkKey::P256 { x, y } => ("EC", "P-256", x, Some(y.as_str())),
            JwkKey::Ed25519 { x } => ("OKP", "Ed25519", x, None),
        };
        JwkOut {
            kty,
            crv,
            x,
            y,
            kid: &self.kid,
            key_use: "sig",
            alg: self.alg(),
            x5c: &self.x5c,
        }
        .serialize(s)
    }
}

#[derive(Deserialize)]
struct JwkRepr {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    kid: String,
    #[serde(rename = "use")]
    key_use: String,
    alg: JwsAlgorithm,
    x5c: Vec<String>,
    // Presence alone is fatal, even as `null`, so these record presence, not value.
    #[serde(default, deserialize_with = "present")]
    d: bool,
    #[serde(default, deserialize_with = "present")]
    p: bool,
    #[serde(default, deserialize_with = "present")]
    q: bool,
    #[serde(default, deserialize_with = "present")]
    dp: bool,
    #[serde(default, deserialize_with = "present")]
    dq: bool,
    #[serde(default, deserialize_with = "present")]
    qi: bool,
    #[serde(default, deserialize_with = "present")]
    oth: bool,
    #[serde(default, deserialize_with = "present")]
    k: bool,
}

/// Why a JWK or JWKS is refused. Messages name the member, never its value.
#[derive(Debug, thiserror::Error)]
enum JwkError {
    #[error("JWK carries private or symmetric key member `{0}`; refusing the key set")]
    PrivateMember(&'static str),
    #[error("unsupported JWK key type or curve; only EC P-256 and OKP Ed25519 are accepted")]
    UnsupportedKey,
    #[error("JWK member `{0}` is missing")]
    Missing(&'static str),
    #[error("JWK member `{0}` does not belong to this key type")]
    Unexpected(&'static str),
    #[error("JWK member `{0}` is not a 32-byte base64url value")]
    BadCoordinate(&'static str),
    #[error("JWK `use` must be \"sig\"")]
    NotSig,
    #[error("JWK `alg` does not match its key type")]
    AlgMismatch,
    #[error("JWK `x5c` is empty; every Baton signing key must be certified")]
    EmptyX5c,
    #[error("JWKS holds more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
    #[error("JWKS holds two keys with the same `kid`")]
    DuplicateKid,
}

impl TryFrom<JwkRepr> for Jwk {
    type Error = JwkError;

    fn try_from(r: JwkRepr) -> Result<Self, Self::Error> {
        let private = [
            (r.d, "d"),
            (r.p, "p"),
            (r.q, "q"),
            (r.dp, "dp"),
            (r.dq, "dq"),
            (r.qi, "qi"),
            (r.oth, "oth"),
            (r.k, "k"),
        ];
        if let Some((_, name)) = private.iter().find(|(present, _)| *present) {
            return Err(JwkError::PrivateMember(name));
        }
        let key = match (r.kty.as_str(), r.crv.as_deref()) {
            ("EC", Some("P-256")) => JwkKey::P256 {
                x: coordinate(r.x, "x")?,
                y: coordinate(r.y, "y")?,
            },
            ("OKP", Some("Ed25519")) => {
                if r.y.is_some() {
                    return Err(JwkError::Unexpected("y"));
                }
                JwkKey::Ed25519 {
                    x: coordinate(r.x, "x")?,
                }
            }
            _ => return Err(JwkError::UnsupportedKey),
        };
        if r.key_use != "sig" {
            return Err(JwkError::NotSig);
        }
        if r.alg != key.alg() {
            return Err(JwkError::AlgMismatch);
        }
        if r.x5c.is_empty() {
            return Err(JwkError::EmptyX5c);
        }
        Ok(Self {
            kid: r.kid,
            key,
            x5c: r.x5c,
        })
    }
}

/// RFC 7518 §6.2.1.2 / RFC 8037 §2: a P-256 coordinate or Ed25519 key is exactly
/// 32 bytes, i.e. 43 base64url characters without padding.
fn coordinate(v: Option<String>, name: &'static str) -> Result<String, JwkError> {
    let v = v.ok_or(JwkError::Missing(name))?;
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if v.len() == 43 && v.bytes().all(b64url) {
        Ok(v)
    } else {
        Err(JwkError::BadCoordinate(name))
    }
}
