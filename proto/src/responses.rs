//! JSON bodies of the issuer's successful responses (SPEC §5).

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use crate::SpiffeId;
use crate::claims::{AccessTokenClaims, Confirmation, MAX_BATCH_COUNT};

/// The `token_type` of every Baton token: `Bearer` (RFC 6750), even when
/// certificate-bound (RFC 8705 §3 keeps the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TokenType {
    /// `"Bearer"`.
    #[default]
    Bearer,
}

/// `POST /v1/token` 200 body (RFC 6749 §5.1).
///
/// Deserialization checks the batch shape SPEC §5 promises: `access_tokens`, when
/// present, holds 1 to [`MAX_BATCH_COUNT`] tokens and starts with `access_token`.
/// `Debug` prints how many tokens there are, never the tokens.
///
/// ```
/// use baton_proto::responses::TokenResponse;
/// let batch = TokenResponse::new(vec!["t1".into(), "t2".into()], 60, None).unwrap();
/// assert_eq!(batch.access_token, "t1");
/// assert_eq!(batch.tokens().len(), 2);
/// let json = serde_json::to_string(&batch).unwrap();
/// assert_eq!(
///     json,
///     r#"{"access_token":"t1","token_type":"Bearer","expires_in":60,"access_tokens":["t1","t2"]}"#,
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TokenResponseRepr")]
pub struct TokenResponse {
    /// The (first) access token.
    pub access_token: String,
    /// Always [`TokenType::Bearer`].
    pub token_type: TokenType,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// Granted scopes, space-separated; omitted when none (RFC 6749 §5.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Every token of a batch (`count` > 1), the first equal to `access_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_tokens: Option<Vec<String>>,
}

impl TokenResponse {
    /// Builds the response for `tokens` minted under one attestation.
    ///
    /// Returns `None` when `tokens` is empty or longer than [`MAX_BATCH_COUNT`].
    pub fn new(tokens: Vec<String>, expires_in: u64, scope: Option<String>) -> Option<Self> {
        if tokens.len() > usize::from(MAX_BATCH_COUNT) {
            return None;
        }
        let access_token = tokens.first()?.clone();
        let access_tokens = (tokens.len() > 1).then_some(tokens);
        Some(Self {
            access_token,
            token_type: TokenType::Bearer,
            expires_in,
            scope,
            access_tokens,
        })
    }

    /// All tokens of the response: the batch if there is one, else just `access_token`.
    pub fn tokens(&self) -> &[String] {
        match &self.access_tokens {
            Some(all) => all,
            None => std::slice::from_ref(&self.access_token),
        }
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field(
                "tokens",
                &format_args!("<{} redacted>", self.tokens().len()),
            )
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponseRepr {
    access_token: String,
    token_type: TokenType,
    expires_in: u64,
    scope: Option<String>,
    access_tokens: Option<Vec<String>>,
}

impl TryFrom<TokenResponseRepr> for TokenResponse {
    type Error = &'static str;

    fn try_from(r: TokenResponseRepr) -> Result<Self, Self::Error> {
        if let Some(all) = &r.access_tokens {
            if all.is_empty() || all.len() > usize::from(MAX_BATCH_COUNT) {
                return Err("access_tokens must hold 1 to 64 tokens");
            }
            if all.first() != Some(&r.access_token) {
                return Err("access_tokens must start with access_token");
            }
        }
        Ok(Self {
            access_token: r.access_token,
            token_type: r.token_type,
            expires_in: r.expires_in,
            scope: r.scope,
            access_tokens: r.access_tokens,
        })
    }
}

/// `POST /v1/introspect` 200 body (RFC 7662 §2.2).
///
/// An inactive answer carries nothing but `"active": false` (RFC 7662 §2.2, SPEC §5),
/// and this type cannot express anything else. When deserializing, `"active": false`
/// yields [`Inactive`](Self::Inactive) whatever other members are sent, while
/// `"active": true` requires every claim of [`AccessTokenClaims`].
///
/// ```
/// use baton_proto::responses::IntrospectionResponse;
/// let inactive = IntrospectionResponse::Inactive;
/// assert_eq!(serde_json::to_string(&inactive).unwrap(), r#"{"active":false}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntrospectionResponse {
    /// Invalid, expired, replayed, revoked or not the caller's business.
    Inactive,
    /// Active; serialized as `active: true`, the token's claims and `token_type: "Bearer"`.
    Active(Box<AccessTokenClaims>),
}

impl IntrospectionResponse {
    /// Whether the token is active.
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Active(_))
    }

    /// The token's claims when active.
    pub fn claims(&self) -> Option<&AccessTokenClaims> {
        match self {
            Self::Inactive => None,
            Self::Active(claims) => Some(claims),
        }
    }
}

impl From<AccessTokenClaims> for IntrospectionResponse {
    fn from(claims: AccessTokenClaims) -> Self {
        Self::Active(Box::new(claims))
    }
}

#[derive(Serialize)]
struct ActiveOut<'a> {
    active: bool,
    #[serde(flatten)]
    claims: &'a AccessTokenClaims,
    token_type: TokenType,
}

impl Serialize for IntrospectionResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Inactive => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("active", &false)?;
                map.end()
            }
            Self::Active(claims) => ActiveOut {
                active: true,
                claims,
                token_type: TokenType::Bearer,
            }
            .serialize(s),
        }
    }
}

/// Every member an introspection answer may carry, listed out rather than
/// flattened so that duplicate members are still refused.
#[derive(Deserialize)]
struct IntrospectionRepr {
    active: bool,
    iss: Option<String>,
    sub: Option<SpiffeId>,
    client_id: Option<SpiffeId>,
    aud: Option<SpiffeId>,
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
    jti: Option<String>,
    sid: Option<String>,
    scope: Option<String>,
    cnf: Option<Confirmation>,
    #[serde(rename = "token_type")]
    _token_type: Option<TokenType>,
}

impl<'de> Deserialize<'de> for IntrospectionResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn required<T, E: serde::de::Error>(v: Option<T>, name: &'static str) -> Result<T, E> {
            v.ok_or_else(|| E::custom(format_args!("active introspection response lacks `{name}`")))
        }

        let r = IntrospectionRepr::deserialize(d)?;
        if !r.active {
            return Ok(Self::Inactive);
        }
        Ok(Self::Active(Box::new(AccessTokenClaims {
            iss: required(r.iss, "iss")?,
            sub: required(r.sub, "sub")?,
            client_id: required(r.client_id, "client_id")?,
            aud: required(r.aud, "aud")?,
            iat: required(r.iat, "iat")?,
            nbf: required(r.nbf, "nbf")?,
            exp: required(r.exp, "exp")?,
            jti: required(r.jti, "jti")?,
            sid: required(r.sid, "sid")?,
            scope: r.scope,
            cnf: r.cnf,
        })))
    }
}

/// `POST /v1/svid` 200 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidResponse {
    /// The new X.509-SVID, PEM, leaf first, then any intermediates.
    pub svid: String,
    /// The trust bundle (CA certificates), PEM.
    pub bundle: String,
    /// The SVID's `notAfter`, Unix seconds.
    pub expires_at: u64,
}
