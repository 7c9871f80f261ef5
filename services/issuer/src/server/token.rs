//! `POST /v1/token` (RFC 6749 §4.4 client credentials, authenticated per RFC 8705
//! `tls_client_auth` or RFC 7523 `private_key_jwt`; SPEC §5).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum_server::tls::TlsInfo;
use baton_proto::SpiffeId;
use baton_proto::claims::{GRANT_TYPE_CLIENT_CREDENTIALS, MAX_BATCH_COUNT, Scope};
use baton_proto::requests::TokenRequest;
use baton_proto::responses::TokenResponse;

use super::client_auth::attest;
use super::error::ApiError;
use super::form::ApiForm;
use super::{AppState, unix_now};
use crate::attest::AuthMethod;
use crate::mint::{self, TokenSpec};
use crate::{audit, metrics as m};

/// Mints `count` one-time tokens for one audience under one attestation.
pub(super) async fn token(
    State(state): State<AppState>,
    tls: Option<axum::Extension<Arc<TlsInfo>>>,
    ApiForm(req): ApiForm<TokenRequest>,
) -> Response {
    let audience = Some(req.audience.as_str());
    match issue(
        &state,
        tls.as_deref().map(|i| i.peer_certificates.as_slice()),
        &req,
    )
    .await
    {
        Ok(response) => response,
        Err((caller, e)) => {
            metrics::counter!(m::TOKEN_DENIALS, "reason" => e.reason()).increment(1);
            // An edge needs an attested caller; the audience is recorded as asked, but
            // only once it is a SPIFFE ID (anything else never reaches policy).
            if let (Some(v), Some(caller)) = (state.visibility(), caller.as_ref())
                && req.audience.parse::<SpiffeId>().is_ok()
            {
                v.denied(
                    caller,
                    &req.audience,
                    req.scope.as_deref(),
                    e.reason(),
                    unix_now(),
                );
            }
            audit::denied(caller.as_ref(), audience, e.code().as_str(), e.reason());
            e.into_response()
        }
    }
}

type Refusal = (Option<SpiffeId>, ApiError);

async fn issue(
    state: &AppState,
    peer_chain: Option<&[Vec<u8>]>,
    req: &TokenRequest,
) -> Result<Response, Refusal> {
    // Cheap syntax checks first; attestation (signature, chain) only for a
    // well-formed request.
    let refuse = |e: ApiError| (None, e);
    if req.grant_type != GRANT_TYPE_CLIENT_CREDENTIALS {
        return Err(refuse(ApiError::unsupported_grant_type()));
    }
    let audience: SpiffeId = req.audience.parse().map_err(|e| {
        refuse(ApiError::malformed_audience(format!(
            "audience is not a SPIFFE ID: {e}"
        )))
    })?;
    let scope: Option<Scope> = req
        .scope
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| refuse(ApiError::malformed_scope(format!("malformed scope: {e}"))))?;
    let count = req.count.unwrap_or(1);
    if count == 0 || count > MAX_BATCH_COUNT {
        return Err(refuse(ApiError::invalid_request(format!(
            "count must be between 1 and {MAX_BATCH_COUNT}"
        ))));
    }

    let now = unix_now();
    let caller = attest(state, peer_chain, req.client_assertion(), now)
        .await
        .map_err(refuse)?;
    let with_caller = |e: ApiError| (Some(caller.id.clone()), e);

    state
        .limiter
        .check(&caller.id)
        .map_err(|wait| with_caller(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64)))?;

    let grant = state
        .policy
        .decide(&caller.id, &audience, scope.as_ref(), state.token_ttl)
        .map_err(|d| with_caller(d.into()))?;

    let key = Arc::clone(state.published().keyring().active());
    let sid = mint::new_session_id().map_err(|_| with_caller(ApiError::internal()))?;
    let method = caller.method.as_str();
    let spec = TokenSpec {
        issuer: &state.issuer,
        caller: &caller.id,
        audience: &audience,
        scope: grant.scope.as_deref(),
        ttl: grant.ttl,
        sid: &sid,
        // RFC 8705 §3: bind the token to the certificate only when the caller proved
        // possession of it on this connection.
        cnf_x5t_s256: match caller.method {
            AuthMethod::Mtls => Some(caller.x5t_s256.as_str()),
            AuthMethod::PrivateKeyJwt => None,
        },
    };
    let mut tokens = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let start = Instant::now();
        let minted = mint::mint(&key, &spec, now).map_err(|e| {
            tracing::error!(error = %e, "minting failed");
            with_caller(ApiError::internal())
        })?;
        m::token_minted(key.alg(), caller.method, start.elapsed());
        audit::issued(&spec, &minted.jti, minted.exp, method, grant.rule);
        tokens.push(minted.token);
    }
    if let Some(v) = state.visibility() {
        v.issued(
            &caller.id,
            &audience,
            grant.scope.as_deref(),
            u32::from(count),
            caller.cert_not_after,
            now,
        );
    }

    let expires_in = grant.ttl.as_secs();
    let body = TokenResponse::new(tokens, expires_in, grant.scope.clone())
        .ok_or_else(|| with_caller(ApiError::internal()))?;
    let mut response = Json(body).into_response();
    // RFC 6749 §5.1: responses carrying tokens are never cached.
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}
