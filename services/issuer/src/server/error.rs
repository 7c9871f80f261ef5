//! RFC 6749 §5.2 error responses: every refusal of the HTTP API is one [`ApiError`],
//! mapped from the typed errors of attestation and policy in exactly one place.
//! Descriptions say what to fix; none echoes a token, an assertion or key material.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_proto::error::{ErrorBody, ErrorCode};

use crate::attest::AttestError;
use crate::policy::Denial;

/// An RFC 6749 error with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    description: Cow<'static, str>,
    retry_after: Option<u64>,
    /// Stable label for metrics and audit (`reason`).
    reason: &'static str,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: ErrorCode,
        reason: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            reason,
        }
    }

    /// 400 `invalid_request`: the request is malformed.
    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "invalid_request",
            description,
        )
    }

    /// 400 `unsupported_grant_type`.
    pub fn unsupported_grant_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnsupportedGrantType,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        )
    }

    /// 400 `invalid_target` for an audience that is not a SPIFFE ID.
    pub fn malformed_audience(description: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidTarget,
            "malformed_audience",
            description,
        )
    }

    /// 400 `invalid_scope` for a scope that is not RFC 6749 §3.3 syntax.
    pub fn malformed_scope(description: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidScope,
            "malformed_scope",
            description,
        )
    }

    /// 401 `invalid_client`: no client authentication was offered.
    pub fn no_client_authentication() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidClient,
            "no_credentials",
            "authenticate with a workload certificate (mTLS) or a client_assertion (private_key_jwt)",
        )
    }

    /// 401 `invalid_client`: a join token that is malformed, unknown, revoked, used or
    /// expired — one answer for all, so guessing learns nothing.
    pub fn invalid_join_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidClient,
            "invalid_join_token",
            "join token is invalid, expired or already used: ask the operator for a fresh one (`baton enroll --join-token`)",
        )
    }

    /// 400 `unauthorized_client`: the caller authenticated but may not do this
    /// (RFC 7009 §2.1: revoking a token neither issued to it nor addressed to it).
    pub fn unauthorized_client(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnauthorizedClient,
            "unauthorized_client",
            description,
        )
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidRequest,
            "too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 408 `temporarily_unavailable`: the request (its body, or the issuer's work on
    /// it) took longer than `limit`. A retry may well succeed.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::TemporarilyUnavailable,
            "request_timeout",
            format!(
                "the request took longer than {} ms (a body sent too slowly, or an overloaded issuer); retry",
                limit.as_millis()
            ),
        )
    }

    /// 429 `slow_down` with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::SlowDown,
            "rate_limited",
            "this caller exceeded its request rate for this endpoint; retry later",
        );
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }

    /// 503 `temporarily_unavailable` with `Retry-After`.
    pub fn unavailable(description: impl Into<Cow<'static, str>>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TemporarilyUnavailable,
            "unavailable",
            description,
        );
        e.retry_after = Some(1);
        e
    }

    /// 500 `server_error`; details go to the log, not to the client.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ServerError,
            "internal",
            "internal error; see the issuer's log",
        )
    }

    /// 404 for an unknown path.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            "not_found",
            "no such endpoint",
        )
    }

    /// The same error with another description.
    pub fn with_description(mut self, description: impl Into<Cow<'static, str>>) -> Self {
        self.description = description.into();
        self
    }

    /// The RFC 6749 error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The stable reason label.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl From<AttestError> for ApiError {
    fn from(e: AttestError) -> Self {
        if e.is_unavailable() {
            let mut api = Self::unavailable("replay ledger unavailable; retry shortly");
            api.reason = e.reason();
            return api;
        }
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidClient,
            e.reason(),
            e.to_string(),
        )
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        // Every policy refusal is a 400: invalid_target or invalid_scope (RFC 8707, 6749).
        Self::new(
            StatusCode::BAD_REQUEST,
            d.error_code(),
            d.reason(),
            d.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.code, self.description);
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        // RFC 6749 §5.1: token endpoint responses are never cached.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
