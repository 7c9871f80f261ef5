//! Client authentication shared by every endpoint that needs a caller (SPEC §3):
//! RFC 8705 `tls_client_auth` or RFC 7523 `private_key_jwt`, exactly one per request
//! (RFC 6749 §2.3).

use baton_proto::requests::{ClientAssertion, ClientAssertionError};

use super::AppState;
use super::error::ApiError;
use crate::attest::{AttestError, Attested, AuthMethod};
use crate::metrics as m;

/// Attests the caller from its TLS client certificate chain or the form's client
/// assertion (`assertion`, from the form's `client_assertion()`), never both.
pub(super) async fn attest(
    state: &AppState,
    peer_chain: Option<&[Vec<u8>]>,
    assertion: Result<Option<ClientAssertion<'_>>, ClientAssertionError>,
    now: i64,
) -> Result<Attested, ApiError> {
    let assertion = assertion.map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let peer_chain = peer_chain.filter(|c| !c.is_empty());
    let (result, method) = match (assertion, peer_chain) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(
                "use one client authentication method: a client certificate or a client_assertion, not both",
            ));
        }
        (Some(assertion), None) => (
            state.attestor.attest_assertion(assertion.jws(), now).await,
            AuthMethod::PrivateKeyJwt,
        ),
        (None, Some(chain)) => (state.attestor.attest_mtls(chain, now), AuthMethod::Mtls),
        (None, None) => return Err(ApiError::no_client_authentication()),
    };
    result.map_err(|e: AttestError| {
        metrics::counter!(m::ATTESTATION_FAILURES, "method" => method.as_str(), "reason" => e.reason())
            .increment(1);
        if let Some(v) = state.visibility() {
            match e {
                AttestError::Replayed => v.replayed(None, now),
                // An outage of the ledger is not a caller failing to prove itself.
                _ if e.is_unavailable() => {}
                _ => v.attestation_failed(now),
            }
        }
        ApiError::from(e)
    })
}
