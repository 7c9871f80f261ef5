//! `/.well-known/jwks.json` (RFC 7517) and `/.well-known/oauth-authorization-server`
//! (RFC 8414), served from documents serialized once.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// `GET /.well-known/jwks.json`: every `next`, `active` and `retired` key, each with
/// its `x5c`. Verifiers may cache it for `max-age`; a new key is pre-published as
/// `next` long before it signs anything.
pub(super) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, state.jwks_cache_control.clone()),
        ],
        state.published().jwks_body.clone(),
    )
}

/// `GET /.well-known/oauth-authorization-server`.
pub(super) async fn metadata(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.published().metadata_body.clone(),
    )
}
