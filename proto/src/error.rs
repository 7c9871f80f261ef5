//! RFC 6749 §5.2 error bodies returned by every issuer endpoint (SPEC §5).
//!
//! Only the body lives here; the HTTP status and `Retry-After` belong to the issuer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `error` code of an error body.
///
/// The set is closed: an unknown code fails to deserialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: missing, repeated or unparsable parameter (RFC 6749 §5.2).
    InvalidRequest,
    /// Client authentication (attestation) failed (RFC 6749 §5.2).
    InvalidClient,
    /// The grant (e.g. a join token) is invalid, expired or already used (RFC 6749 §5.2).
    InvalidGrant,
    /// The authenticated client may not use this grant type (RFC 6749 §5.2).
    UnauthorizedClient,
    /// `grant_type` is not `client_credentials` (RFC 6749 §5.2).
    UnsupportedGrantType,
    /// The requested scope is invalid or exceeds what policy grants (RFC 6749 §5.2).
    InvalidScope,
    /// The audience is not allowed by policy (RFC 8707 §2).
    InvalidTarget,
    /// Revocation of this token type is not supported (RFC 7009 §2.2.1).
    UnsupportedTokenType,
    /// The request was understood and refused (RFC 6749 §4.1.2.1).
    AccessDenied,
    /// The caller exceeded its rate; sent with 429 and `Retry-After` (code borrowed from RFC 8628 §3.5).
    SlowDown,
    /// A dependency (the store) is unreachable; sent with 503 and `Retry-After`.
    TemporarilyUnavailable,
    /// Unexpected failure inside the issuer.
    ServerError,
}

impl ErrorCode {
    /// The code as it appears on the wire, e.g. `"invalid_client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::AccessDenied => "access_denied",
            Self::SlowDown => "slow_down",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RFC 6749 §5.2 error body: `{"error": …, "error_description": …}`.
///
/// The description is for humans and must never contain a token or key material
/// (SPEC §5); RFC 6749 §5.2 limits it to printable ASCII without `"` and `\`.
///
/// ```
/// use baton_proto::error::{ErrorBody, ErrorCode};
/// let body = ErrorBody::new(ErrorCode::InvalidTarget, "audience not allowed by policy");
/// assert_eq!(
///     serde_json::to_string(&body).unwrap(),
///     r#"{"error":"invalid_target","error_description":"audience not allowed by policy"}"#,
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error code.
    pub error: ErrorCode,
    /// Human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

impl ErrorBody {
    /// An error body with a description.
    pub fn new(error: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            error,
            error_description: Some(description.into()),
        }
    }
}

impl From<ErrorCode> for ErrorBody {
    fn from(error: ErrorCode) -> Self {
        Self {
            error,
            error_description: None,
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error_description {
            Some(d) => write!(f, "{}: {d}", self.error),
            None => f.write_str(self.error.as_str()),
        }
    }
}

impl std::error::Error for ErrorBody {}
