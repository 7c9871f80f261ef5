//! Access-token and client-assertion contents (SPEC §3, §4): JOSE header, RFC 9068
//! claims, RFC 7523 assertion claims, RFC 6749 scopes, and the protocol's fixed limits.
//!
//! These types only describe shapes. Deserializing them proves nothing about a token:
//! signature, `iss`, `aud`, time and replay checks belong to the verifier.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SpiffeId;

/// JOSE `typ` of a Baton access token (RFC 9068 §2.1).
pub const TOKEN_TYP: &str = "at+jwt";
/// Largest compact JWS a verifier will look at; anything longer is rejected unread (SPEC §4).
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Token lifetime when nothing else is configured (SPEC §4).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 60;
/// Longest lifetime a token may have, whatever the configuration or policy says (SPEC §4).
pub const MAX_TOKEN_TTL_SECS: u64 = 300;
/// Largest clock skew a verifier may tolerate on `exp`, `nbf` and `iat` (SPEC §4).
pub const MAX_CLOCK_LEEWAY_SECS: u64 = 5;
/// Longest `exp - iat` a client assertion may claim (SPEC §3).
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;
/// Largest `count` of one batch mint (SPEC §5, `POST /v1/token`).
pub const MAX_BATCH_COUNT: u8 = 64;
/// `client_assertion_type` of a `private_key_jwt` client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The only `grant_type` the token endpoint serves (RFC 6749 §4.4).
pub const GRANT_TYPE_CLIENT_CREDENTIALS: &str = "client_credentials";

/// The JWS algorithms Baton signs and accepts (SPEC §4).
///
/// The set is closed: `none`, HMAC, RSA and any spelling other than the exact
/// registered names fail to deserialize (RFC 7518 §3.1 names are case-sensitive).
///
/// ```
/// use baton_proto::claims::JwsAlgorithm;
/// let alg: JwsAlgorithm = serde_json::from_str(r#""ES256""#).unwrap();
/// assert_eq!(alg, JwsAlgorithm::Es256);
/// assert!(serde_json::from_str::<JwsAlgorithm>(r#""none""#).is_err());
/// assert!(serde_json::from_str::<JwsAlgorithm>(r#""HS256""#).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwsAlgorithm {
    /// ECDSA with P-256 and SHA-256 (RFC 7518 §3.4). The default.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519 (RFC 8037 §3.1).
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl JwsAlgorithm {
    /// The registered JOSE name (`"ES256"` or `"EdDSA"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for JwsAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Protected header of a Baton access token or client assertion (RFC 7515 §4).
///
/// Deserialization refuses any header with `crit` (RFC 7515 §4.1.11): Baton
/// understands no extension, so a critical one makes the JWS invalid. Other
/// unknown members (`jku`, `x5u`, `jwk`, …) are ignored and never followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HeaderRepr")]
pub struct JoseHeader {
    /// Signing algorithm; checked against the key's own algorithm, never trusted alone.
    pub alg: JwsAlgorithm,
    /// Media type: [`TOKEN_TYP`] for access tokens (required there, RFC 9068 §2.1);
    /// client assertions may carry `JWT` or nothing (RFC 7523 does not require it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Key id of the signing key in the issuer's JWKS (access tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Signer's certificate chain, base64 DER, leaf first (client assertions, SPEC §3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct HeaderRepr {
    alg: JwsAlgorithm,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

impl TryFrom<HeaderRepr> for JoseHeader {
    type Error = &'static str;

    fn try_from(r: HeaderRepr) -> Result<Self, Self::Error> {
        if r.crit {
            return Err(
                "JOSE header lists critical extensions (`crit`), none of which Baton supports",
            );
        }
        Ok(Self {
            alg: r.alg,
            typ: r.typ,
            kid: r.kid,
            x5c: r.x5c,
        })
    }
}

/// Deserializes any value (even `null`) as "the member is present".
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Claims of a Baton access token (RFC 9068 §2.2, SPEC §4).
///
/// `aud` is exactly one SPIFFE ID: an array fails to deserialize, so a token can
/// never be addressed to several callees. Unknown claims are ignored (RFC 7519 §4).
///
/// ```
/// use baton_proto::claims::AccessTokenClaims;
/// let json = r#"{"iss":"https://baton.example.org","sub":"spiffe://example.org/fn/a",
///   "client_id":"spiffe://example.org/fn/a","aud":"spiffe://example.org/fn/b",
///   "iat":1700000000,"nbf":1700000000,"exp":1700000060,"jti":"AAAA","sid":"s1"}"#;
/// let claims: AccessTokenClaims = serde_json::from_str(json).unwrap();
/// assert_eq!(claims.aud.as_str(), "spiffe://example.org/fn/b");
///
/// let many = json.replace(r#""aud":"spiffe://example.org/fn/b""#, r#""aud":["spiffe://example.org/fn/b"]"#);
/// assert!(serde_json::from_str::<AccessTokenClaims>(&many).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// Issuer identifier (the issuer URL).
    pub iss: String,
    /// The caller's SPIFFE ID.
    pub sub: SpiffeId,
    /// The caller's SPIFFE ID again (RFC 9068 §2.2 requires `client_id`).
    pub client_id: SpiffeId,
    /// The one callee this token is for.
    pub aud: SpiffeId,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Unique token id (≥128 random bits, base64url); the replay-ledger key.
    pub jti: String,
    /// Session id, shared by the tokens of one attestation; revocable as a whole.
    pub sid: String,
    /// Granted scopes, space-separated (RFC 9068 §2.2.3); see [`Scope`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Certificate binding when minted over mTLS (RFC 8705 §3.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

impl AccessTokenClaims {
    /// Parses [`scope`](Self::scope) into a [`Scope`]; `Ok(None)` when none was granted.
    pub fn scopes(&self) -> Result<Option<Scope>, ScopeError> {
        self.scope.as_deref().map(str::parse).transpose()
    }
}

/// Confirmation claim binding a token to the caller's certificate (RFC 8705 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// Base64url (unpadded) SHA-256 of the caller certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// Claims of a `private_key_jwt` client assertion (RFC 7523 §3, SPEC §3).
///
/// `aud` is one string only: RFC 7523bis closes audience injection by refusing
/// arrays, so an array fails to deserialize. The issuer still checks `iss == sub`,
/// the audience value, the lifetime bound and `jti` replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The caller's SPIFFE ID.
    pub iss: SpiffeId,
    /// The caller's SPIFFE ID; must equal `iss`.
    pub sub: SpiffeId,
    /// The issuer identifier (or, for older clients, the token endpoint URL).
    pub aud: String,
    /// Unique assertion id; an assertion is accepted once.
    pub jti: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expiry, Unix seconds; at most [`MAX_ASSERTION_LIFETIME_SECS`] after `iat`.
    pub exp: i64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Most scope-tokens one [`Scope`] may hold.
pub const MAX_SCOPE_TOKENS: usize = 32;
/// Longest scope-token, in bytes.
pub const MAX_SCOPE_TOKEN_BYTES: usize = 128;

/// A set of RFC 6749 §3.3 scope-tokens, in first-seen order without duplicates.
///
/// Parsing follows the ABNF exactly: tokens are separated by single spaces and
/// each is `1*( %x21 / %x23-5B / %x5D-7E )`, so a leading, trailing or doubled
/// space, a quote, a backslash or any non-ASCII byte is an error.
///
/// ```
/// use baton_proto::claims::Scope;
/// let scope: Scope = "payments:charge orders:read payments:charge".parse().unwrap();
/// assert_eq!(scope.to_string(), "payments:charge orders:read");
/// assert!(scope.contains("orders:read"));
/// assert!("a  b".parse::<Scope>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(Vec<String>);

/// Why a string is not a valid [`Scope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The scope string is empty; omit the parameter instead.
    #[error("scope is empty; omit it to request no scope")]
    Empty,
    /// Two spaces in a row, or a leading or trailing space.
    #[error("scope-token {index} is empty; separate tokens with exactly one space")]
    EmptyToken {
        /// Zero-based position of the empty token.
        index: usize,
    },
    /// A byte outside `%x21 / %x23-5B / %x5D-7E`.
    #[error("scope-token {index} contains a character RFC 6749 §3.3 forbids (byte 0x{byte:02x})")]
    InvalidCharacter {
        /// Zero-based position of the token.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
    /// More than [`MAX_SCOPE_TOKENS`] tokens.
    #[error("scope has more than {MAX_SCOPE_TOKENS} tokens")]
    TooManyTokens,
    /// A token longer than [`MAX_SCOPE_TOKEN_BYTES`].
    #[error("scope-token {index} is longer than {MAX_SCOPE_TOKEN_BYTES} bytes")]
    TokenTooLong {
        /// Zero-based position of the token.
        index: usize,
    },
}

impl Scope {
    /// Iterates the scope-tokens in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Whether `token` is one of the scope-tokens (exact, case-sensitive match, RFC 6749 §3.3).
    pub fn contains(&self, token: &str) -> bool {
        self.0.iter().any(|t| t == token)
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        let mut tokens: Vec<String> = Vec::new();
        for (index, token) in s.split(' ').enumerate() {
            if index >= MAX_SCOPE_TOKENS {
                return Err(ScopeError::TooManyTokens);
            }
            if token.is_empty() {
                return Err(ScopeError::EmptyToken { index });
            }
            if token.len() > MAX_SCOPE_TOKEN_BYTES {
                return Err(ScopeError::TokenTooLong { index });
            }
            if let Some(&byte) = token.as_bytes().iter().find(|&&b| !is_scope_char(b)) {
                return Err(ScopeError::InvalidCharacter { index, byte });
            }
            if !tokens.iter().any(|t| t == token) {
                tokens.push(token.to_owned());
            }
        }
        Ok(Self(tokens))
    }
}

/// RFC 6749 §3.3 / Appendix A: NQCHAR minus space.
fn is_scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(token)?;
        }
        Ok(())
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<'a> IntoIterator for &'a Scope {
    type Item = &'a str;
    type IntoIter = std::iter::Map<std::slice::Iter<'a, String>, fn(&String) -> &str>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(String::as_str)
    }
}
