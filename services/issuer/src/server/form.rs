//! `application/x-www-form-urlencoded` bodies (RFC 6749 §3.2) with RFC-shaped errors:
//! axum's own rejections are plain text, and a client of an OAuth endpoint expects
//! `{error, error_description}`.

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body the issuer reads. A token request with a client assertion
/// carrying a 4-certificate `x5c` is under 12 KiB; a CSR is at most 16 KiB.
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024;

/// A decoded form body.
pub(super) struct ApiForm<T>(pub(super) T);

impl<T, S> FromRequest<S> for ApiForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::too_large(MAX_BODY_BYTES)
                }
                FormRejection::InvalidFormContentType(_) => {
                    ApiError::invalid_request("the body must be application/x-www-form-urlencoded")
                }
                // serde's message names the missing or mistyped parameter, never a
                // value, so it is safe to return.
                FormRejection::FailedToDeserializeForm(e) => {
                    ApiError::invalid_request(format!("malformed form: {}", e.body_text()))
                }
                FormRejection::FailedToDeserializeFormBody(e) => {
                    ApiError::invalid_request(format!("malformed form: {}", e.body_text()))
                }
                _ => ApiError::invalid_request("unreadable request body"),
            }),
        }
    }
}
