//! `POST /v1/revoke` (RFC 7009; SPEC §5): the token's caller or audience revokes the
//! token's whole session.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum_server::tls::TlsInfo;
use baton_proto::requests::RevokeRequest;

use super::client_auth::attest;
use super::error::ApiError;
use super::form::ApiForm;
use super::{AppState, unix_now};
use crate::introspect::RevokeError;
use crate::{audit, metrics as m};

/// 200 with an empty body when the session is revoked or there was nothing to revoke
/// (RFC 7009 §2.2); 400 `unauthorized_client` when the caller may not revoke the token
/// (§2.1); 401 without authentication.
pub(super) async fn revoke(
    State(state): State<AppState>,
    tls: Option<axum::Extension<Arc<TlsInfo>>>,
    ApiForm(req): ApiForm<RevokeRequest>,
) -> Response {
    let now = unix_now();
    let peer_chain = tls.as_deref().map(|i| i.peer_certificates.as_slice());
    let caller = match attest(&state, peer_chain, req.client_assertion(), now).await {
        Ok(caller) => caller,
        Err(e) => {
            metrics::counter!(m::REVOCATIONS, "result" => "unauthenticated").increment(1);
            audit::unauthenticated("revoke", e.code().as_str(), e.reason());
            return e.into_response();
        }
    };
    if let Err(refusal) = state.check_rate(&caller.id) {
        metrics::counter!(m::REVOCATIONS, "result" => "rate_limited").increment(1);
        audit::revocation(&caller.id, "refused", "rate_limited", None);
        return refusal.into_response();
    }
    // token_type_hint is ignored (RFC 7009 §2.1 allows it): Baton has one kind of token.
    match state
        .introspector
        .revoke(state.published().keyring(), &req.token, &caller.id, now)
        .await
    {
        Ok(claims) => {
            metrics::counter!(m::REVOCATIONS, "result" => "revoked").increment(1);
            audit::revocation(&caller.id, "revoked", "ok", Some(&claims));
            empty_ok()
        }
        Err(RevokeError::NotAToken(reason)) => {
            metrics::counter!(m::REVOCATIONS, "result" => "not_a_token").increment(1);
            audit::revocation(&caller.id, "not_a_token", reason.reason(), None);
            // RFC 7009 §2.2: an invalid token needs no revoking, and saying so would
            // tell a caller which strings are live tokens.
            empty_ok()
        }
        Err(e @ RevokeError::NotYours(_)) => {
            metrics::counter!(m::REVOCATIONS, "result" => "refused").increment(1);
            if let RevokeError::NotYours(claims) = &e {
                audit::revocation(&caller.id, "refused", "not_sub_or_aud", Some(claims));
            }
            ApiError::unauthorized_client(e.to_string()).into_response()
        }
        Err(RevokeError::Unavailable(claims)) => {
            metrics::counter!(m::REVOCATIONS, "result" => "unavailable").increment(1);
            audit::revocation(
                &caller.id,
                "unavailable",
                "ledger_unavailable",
                Some(&claims),
            );
            ApiError::unavailable("replay ledger unavailable; retry shortly").into_response()
        }
    }
}

fn empty_ok() -> Response {
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}
