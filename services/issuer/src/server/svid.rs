//! `POST /v1/svid` (SPEC §5; EST-like, RFC 7030 `simpleenroll` / `simplereenroll`): a
//! first workload certificate for a join token, or a renewal for a caller proving its
//! current certificate (mTLS or client assertion), each for the key of a CSR.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum_server::tls::TlsInfo;
use baton_proto::SpiffeId;
use baton_proto::requests::SvidRequest;
use baton_proto::responses::SvidResponse;
use time::OffsetDateTime;

use super::client_auth::attest;
use super::error::ApiError;
use super::form::ApiForm;
use super::{AppState, Enrollment};
use crate::join_token::JoinTokenError;
use crate::svid::{CsrKey, SvidError};
use crate::{audit, metrics as m};

/// The proof a request offers, for metrics and audit.
const JOIN_TOKEN: &str = "join_token";

pub(super) async fn svid(
    State(state): State<AppState>,
    tls: Option<axum::Extension<Arc<TlsInfo>>>,
    ApiForm(req): ApiForm<SvidRequest>,
) -> Response {
    let peer_chain = tls
        .as_deref()
        .map(|i| i.peer_certificates.as_slice())
        .filter(|c| !c.is_empty());
    match issue(&state, peer_chain, &req).await {
        Ok(response) => response,
        Err(refusal) => {
            let e = refusal.error;
            metrics::counter!(m::SVID_DENIALS, "reason" => e.reason()).increment(1);
            audit::svid_denied(
                refusal.id.as_ref(),
                refusal.method,
                e.code().as_str(),
                e.reason(),
            );
            e.into_response()
        }
    }
}

struct Refusal {
    id: Option<SpiffeId>,
    method: &'static str,
    error: ApiError,
}

async fn issue(
    state: &AppState,
    peer_chain: Option<&[Vec<u8>]>,
    req: &SvidRequest,
) -> Result<Response, Refusal> {
    let assertion = req.client_assertion();
    let method = match (&req.join_token, &assertion, peer_chain) {
        (Some(_), _, _) => JOIN_TOKEN,
        (None, Ok(Some(_)), _) => "private_key_jwt",
        (None, _, Some(_)) => "tls_client_auth",
        _ => "none",
    };
    let anonymous = refuse(None, method);
    let Some(enrollment) = state.enrollment.as_ref() else {
        return Err(anonymous(ApiError::not_found()));
    };
    let svid = &enrollment.issuer;
    // Input-only checks first: nothing is spent on a request that cannot succeed.
    let key = CsrKey::parse(req.csr.as_bytes()).map_err(|e| anonymous(svid_error(e)))?;
    let now = OffsetDateTime::now_utc();
    let unix = now.unix_timestamp();

    let (id, proof) = match req.join_token.as_deref() {
        Some(token) => {
            if peer_chain.is_some() || !matches!(assertion, Ok(None)) {
                return Err(anonymous(ApiError::invalid_request(
                    "a join token is the whole proof for a first certificate: send no client certificate or client_assertion with it",
                )));
            }
            let found = svid
                .find_join_token(token, unix)
                .await
                .map_err(|e| anonymous(svid_error(e)))?;
            let id = found.id.clone();
            let refuse = refuse(Some(&id), method);
            state
                .attestor
                .check_not_denied(&id)
                .map_err(|e| refuse(e.into()))?;
            limit(enrollment, &id).map_err(&refuse)?;
            // Last: a token is spent only by a request that gets its certificate.
            svid.redeem(found, unix)
                .await
                .map_err(|e| refuse(svid_error(e)))?;
            (id, JOIN_TOKEN)
        }
        None => {
            // Attestation checks the chain, the certificate's validity (an expired
            // certificate cannot renew) and the deny list, and spends an assertion.
            let caller = attest(state, peer_chain, assertion, unix)
                .await
                .map_err(&anonymous)?;
            let refuse = refuse(Some(&caller.id), method);
            limit(enrollment, &caller.id).map_err(&refuse)?;
            if key.is(&caller.key_sha256) {
                return Err(refuse(svid_error(SvidError::SameKey)));
            }
            (caller.id, caller.method.as_str())
        }
    };

    let issued = svid
        .issue(&id, &key, now)
        .map_err(|e| refuse(Some(&id), method)(svid_error(e)))?;
    metrics::counter!(m::SVIDS_ISSUED, "method" => proof).increment(1);
    audit::svid_issued(&issued, proof);
    if let Some(v) = state.visibility() {
        v.enrolled(&id, issued.not_after.unix_timestamp(), super::unix_now());
    }
    let body = SvidResponse {
        svid: issued.chain_pem,
        bundle: svid.bundle_pem().to_owned(),
        expires_at: u64::try_from(issued.not_after.unix_timestamp()).unwrap_or_default(),
    };
    let mut response = Json(body).into_response();
    // It carries a credential's certificate: like token responses, never cached.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Turns an error into a refusal of the request by `id` (once known) via `method`.
fn refuse(id: Option<&SpiffeId>, method: &'static str) -> impl Fn(ApiError) -> Refusal + use<> {
    let id = id.cloned();
    move |error| Refusal {
        id: id.clone(),
        method,
        error,
    }
}

/// Takes one request from `id`'s certificate bucket.
fn limit(enrollment: &Enrollment, id: &SpiffeId) -> Result<(), ApiError> {
    enrollment.limiter.check(id).map_err(|wait| {
        ApiError::rate_limited(wait.as_secs_f64().ceil() as u64)
            .with_description("this identity exceeded its certificate request rate; retry later")
    })
}

fn svid_error(e: SvidError) -> ApiError {
    match e {
        SvidError::Csr(_) | SvidError::SameKey => ApiError::invalid_request(e.to_string()),
        SvidError::JoinToken(JoinTokenError::Invalid) => ApiError::invalid_join_token(),
        SvidError::JoinToken(JoinTokenError::Unavailable | JoinTokenError::Shared(_)) => {
            ApiError::unavailable("replay ledger unavailable; retry shortly")
        }
        SvidError::JoinToken(e) => {
            tracing::error!(error = %e, "join token store failed");
            ApiError::internal()
        }
        SvidError::Issue(e) => {
            tracing::error!(error = %e, "issuing a workload certificate failed");
            ApiError::internal()
        }
    }
}
