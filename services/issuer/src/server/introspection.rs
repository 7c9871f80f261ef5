//! `POST /v1/introspect` (RFC 7662; SPEC §5): the caller authenticates, the issuer
//! checks the token itself, and the token's audience introspecting it is its one use.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum_server::tls::TlsInfo;
use baton_proto::requests::IntrospectRequest;
use baton_proto::responses::IntrospectionResponse;

use super::client_auth::attest;
use super::error::ApiError;
use super::form::ApiForm;
use super::{AppState, unix_now};
use crate::introspect::InactiveReason;
use crate::{audit, metrics as m};

/// Answers `{"active":true, …claims}` once, to the token's audience, and
/// `{"active":false}` for everything else; 401 when the caller does not authenticate.
pub(super) async fn introspect(
    State(state): State<AppState>,
    tls: Option<axum::Extension<Arc<TlsInfo>>>,
    ApiForm(req): ApiForm<IntrospectRequest>,
) -> Response {
    let now = unix_now();
    let peer_chain = tls.as_deref().map(|i| i.peer_certificates.as_slice());
    let caller = match attest(&state, peer_chain, req.client_assertion(), now).await {
        Ok(caller) => caller,
        Err(e) => {
            metrics::counter!(m::INTROSPECTIONS, "result" => "unauthenticated", "reason" => e.reason())
                .increment(1);
            audit::unauthenticated("introspect", e.code().as_str(), e.reason());
            return e.into_response();
        }
    };
    if let Err(refusal) = state.check_rate(&caller.id) {
        metrics::counter!(m::INTROSPECTIONS, "result" => "refused", "reason" => "rate_limited")
            .increment(1);
        audit::introspected(&caller.id, None, false, "rate_limited");
        return refusal.into_response();
    }
    // token_type_hint is ignored (RFC 7662 §2.1): Baton has one kind of token.
    match state
        .introspector
        .introspect(state.published().keyring(), &req.token, &caller.id, now)
        .await
    {
        Ok(claims) => {
            metrics::counter!(m::INTROSPECTIONS, "result" => "active", "reason" => "ok")
                .increment(1);
            metrics::counter!(m::TOKENS_CONSUMED).increment(1);
            audit::introspected(&caller.id, Some(&claims), true, "ok");
            audit::consumed(&caller.id, &claims);
            answer(&IntrospectionResponse::from(claims))
        }
        Err(rejection) => {
            let reason = rejection.reason;
            let claims = rejection.claims.as_deref();
            if reason.is_unavailable() {
                metrics::counter!(m::INTROSPECTIONS, "result" => "unavailable", "reason" => reason.reason())
                    .increment(1);
                audit::introspected(&caller.id, claims, false, reason.reason());
                // Nothing was consumed: the caller may retry, and must not take an
                // outage for a verdict on the token.
                return ApiError::unavailable("replay ledger unavailable; retry shortly")
                    .into_response();
            }
            metrics::counter!(m::INTROSPECTIONS, "result" => "inactive", "reason" => reason.reason())
                .increment(1);
            if reason == InactiveReason::Replayed {
                m::replay_attempt("access_token");
                if let Some(v) = state.visibility() {
                    v.replayed(Some(&caller.id), super::unix_now());
                }
                audit::replayed(&caller.id, "access_token", claims);
            }
            audit::introspected(&caller.id, claims, false, reason.reason());
            // RFC 7662 §2.2: an inactive answer says nothing else, not even why.
            answer(&IntrospectionResponse::Inactive)
        }
    }
}

fn answer(body: &IntrospectionResponse) -> Response {
    let mut response = Json(body).into_response();
    // RFC 7662 §4: introspection answers are sensitive and must not be cached.
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
