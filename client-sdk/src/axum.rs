//! axum integration (feature `axum`): [`VerifiedCaller`] as an extractor.
//!
//! A handler that takes a `VerifiedCaller` argument runs only for requests carrying a
//! valid, unused Baton token for this service (`Authorization: Bearer …`). Anything
//! else is answered 401 with an RFC 6750 `WWW-Authenticate` header naming the reason,
//! or 503 when the verifier cannot decide (keys or replay guard unavailable): a
//! callee fails closed. The extractor verifies with
//! [`Verifier::verify_async`](crate::Verifier::verify_async), so a shared replay guard
//! (Redis, introspection) is consulted when the verifier has one.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::post};
//! use baton_sdk::{Verifier, VerifiedCaller};
//!
//! async fn charge(caller: VerifiedCaller) -> String {
//!     format!("charged on behalf of {}", caller.id)
//! }
//!
//! # async fn run(verifier: Verifier) -> std::io::Result<()> {
//! let app: Router = Router::new()
//!     .route("/charge", post(charge))
//!     .with_state(Arc::new(verifier));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::{VerifiedCaller, Verifier, VerifyError};

/// Why a request was refused by the [`VerifiedCaller`] extractor.
#[derive(Debug)]
pub enum Rejection {
    /// No `Authorization: Bearer` header (RFC 6750 §3.1: no error code is given).
    MissingToken,
    /// The token was refused.
    Invalid(VerifyError),
}

impl<S> FromRequestParts<S> for VerifiedCaller
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let token = bearer(parts).ok_or(Rejection::MissingToken)?;
        // verify_async is verify for a local guard, and the only way to consult a
        // shared one (Redis, introspection).
        verifier
            .verify_async(token)
            .await
            .map_err(Rejection::Invalid)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive,
/// RFC 6750 §2.1).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, challenge) = match &self {
            Rejection::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"baton\"".to_owned(),
            ),
            Rejection::Invalid(e) if e.is_unavailable() => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "Bearer realm=\"baton\", error=\"temporarily_unavailable\", error_description=\"{}\"",
                    e.reason()
                ),
            ),
            Rejection::Invalid(e) => (
                StatusCode::UNAUTHORIZED,
                // RFC 6750 §3: the reason is a fixed label, never the token.
                format!(
                    "Bearer realm=\"baton\", error=\"invalid_token\", error_description=\"{}\"",
                    e.reason()
                ),
            ),
        };
        let mut response = status.into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
