//! Form bodies (`application/x-www-form-urlencoded`) of the issuer's POST endpoints (SPEC §5).
//!
//! Fields stay plain strings: the issuer validates them and answers the matching
//! RFC 6749 error. Two RFC 6749 §3.1 rules are applied while decoding: a parameter
//! sent with an empty value counts as omitted, and a repeated parameter fails to
//! decode (serde refuses duplicate fields). Unknown parameters are ignored (§3.2).
//!
//! `Debug` output redacts tokens, assertions and join tokens, so a logged request
//! never echoes a credential (SPEC §5).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::claims::CLIENT_ASSERTION_TYPE;

/// `POST /v1/token`: RFC 6749 §4.4 client-credentials request with RFC 8707 audience.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Must be [`GRANT_TYPE_CLIENT_CREDENTIALS`](crate::claims::GRANT_TYPE_CLIENT_CREDENTIALS).
    pub grant_type: String,
    /// The callee's SPIFFE ID.
    pub audience: String,
    /// Requested scopes, space-separated; see [`Scope`](crate::claims::Scope).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub scope: Option<String>,
    /// Number of one-time tokens to mint, 1 to [`MAX_BATCH_COUNT`](crate::claims::MAX_BATCH_COUNT); absent means 1.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count"
    )]
    pub count: Option<u8>,
    /// [`CLIENT_ASSERTION_TYPE`] when authenticating with `private_key_jwt`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion_type: Option<String>,
    /// The signed client assertion (compact JWS).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion: Option<String>,
}

/// `POST /v1/introspect`: RFC 7662 §2.1 introspection request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntrospectRequest {
    /// The access token to introspect.
    pub token: String,
    /// Optional hint (RFC 7662 §2.1); Baton has one token type and ignores it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub token_type_hint: Option<String>,
    /// [`CLIENT_ASSERTION_TYPE`] when authenticating with `private_key_jwt`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion_type: Option<String>,
    /// The signed client assertion (compact JWS).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion: Option<String>,
}

/// `POST /v1/revoke`: RFC 7009 §2.1 revocation request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// The access token to revoke.
    pub token: String,
    /// Optional hint (RFC 7009 §2.1); Baton has one token type and ignores it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub token_type_hint: Option<String>,
    /// [`CLIENT_ASSERTION_TYPE`] when authenticating with `private_key_jwt`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion_type: Option<String>,
    /// The signed client assertion (compact JWS).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion: Option<String>,
}

/// `POST /v1/svid`: EST-like certificate (re-)enrollment (RFC 7030 §4.2).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidRequest {
    /// PKCS#10 certificate signing request, PEM.
    pub csr: String,
    /// One-time join token from `baton enroll --join-token`, for a first certificate.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub join_token: Option<String>,
    /// [`CLIENT_ASSERTION_TYPE`] when renewing with `private_key_jwt`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion_type: Option<String>,
    /// The signed client assertion (compact JWS).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub client_assertion: Option<String>,
}

/// A `private_key_jwt` client assertion whose type has been checked (RFC 7523 §2.2).
///
/// It is only the unverified JWS; the issuer still verifies it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientAssertion<'a>(&'a str);

impl<'a> ClientAssertion<'a> {
    /// The compact JWS, unverified.
    pub fn jws(&self) -> &'a str {
        self.0
    }
}

impl fmt::Debug for ClientAssertion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAssertion(<redacted>)")
    }
}

/// Why a form's assertion parameters do not make a usable client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientAssertionError {
    /// `client_assertion_type` was sent without `client_assertion`.
    #[error("client_assertion_type given without client_assertion")]
    MissingAssertion,
    /// `client_assertion` was sent without `client_assertion_type` (RFC 7521 §4.2 requires both).
    #[error("client_assertion given without client_assertion_type")]
    MissingType,
    /// `client_assertion_type` is not the RFC 7523 JWT bearer type.
    #[error("unsupported client_assertion_type; use {CLIENT_ASSERTION_TYPE}")]
    UnsupportedType,
}

/// RFC 7521 §4.2: both parameters together, or neither (then mTLS must authenticate).
fn assertion_pair<'a>(
    ty: Option<&'a str>,
    jws: Option<&'a str>,
) -> Result<Option<ClientAssertion<'a>>, ClientAssertionError> {
    match (ty, jws) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ClientAssertionError::MissingAssertion),
        (None, Some(_)) => Err(ClientAssertionError::MissingType),
        (Some(ty), Some(_)) if ty != CLIENT_ASSERTION_TYPE => {
            Err(ClientAssertionError::UnsupportedType)
        }
        (Some(_), Some(jws)) => Ok(Some(ClientAssertion(jws))),
    }
}

macro_rules! client_assertion_accessor {
    ($($t:ty),*) => {$(
        impl $t {
            /// The client assertion, if the form carries one; `Ok(None)` means the
            /// caller must authenticate with mTLS instead.
            ///
            /// # Errors
            /// When only one of the two parameters is present, or the type is not
            /// [`CLIENT_ASSERTION_TYPE`]; the issuer answers `invalid_client`.
            pub fn client_assertion(&self) -> Result<Option<ClientAssertion<'_>>, ClientAssertionError> {
                assertion_pair(self.client_assertion_type.as_deref(), self.client_assertion.as_deref())
            }
        }
    )*};
}

client_assertion_accessor!(TokenRequest, IntrospectRequest, RevokeRequest, SvidRequest);

/// Prints a credential field as present or absent, never its value.
struct Redacted(bool);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "<redacted>" } else { "None" })
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("grant_type", &self.grant_type)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("count", &self.count)
            .field("client_assertion_type", &self.client_assertion_type)
            .field(
                "client_assertion",
                &Redacted(self.client_assertion.is_some()),
            )
            .finish()
    }
}

impl fmt::Debug for IntrospectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectRequest")
            .field("token", &Redacted(true))
            .field("token_type_hint", &self.token_type_hint)
            .field("client_assertion_type", &self.client_assertion_type)
            .field(
                "client_assertion",
                &Redacted(self.client_assertion.is_some()),
            )
            .finish()
    }
}

impl fmt::Debug for RevokeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeRequest")
            .field("token", &Redacted(true))
            .field("token_type_hint", &self.token_type_hint)
            .field("client_assertion_type", &self.client_assertion_type)
            .field(
                "client_assertion",
                &Redacted(self.client_assertion.is_some()),
            )
            .finish()
    }
}

impl fmt::Debug for SvidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidRequest")
            .field("csr", &self.csr)
            .field("join_token", &Redacted(self.join_token.is_some()))
            .field("client_assertion_type", &self.client_assertion_type)
            .field(
                "client_assertion",
                &Redacted(self.client_assertion.is_some()),
            )
            .finish()
    }
}

/// RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they
/// were omitted from the request."
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// `count` arrives as a string in a form and as a number in JSON; empty means omitted.
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    struct CountVisitor;

    impl<'a> serde::de::Visitor<'a> for CountVisitor {
        type Value = Option<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a count from 0 to 255")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.is_empty() {
                return Ok(None);
            }
            // u8::from_str accepts a leading '+'; a count is plain digits.
            if !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(E::custom("count is not a decimal number"));
            }
            v.parse()
                .map(Some)
                .map_err(|_| E::custom("count out of range"))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            u8::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("count out of range"))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u8::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("count out of range"))
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'a>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    d.deserialize_option(CountVisitor)
}
