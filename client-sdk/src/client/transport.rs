//! The HTTPS side of the token client: one reqwest client (one connection pool) whose
//! rustls configuration, on ring, trusts only the trust bundle and presents the workload
//! certificate when mTLS is the attestation; and the exchanges with `POST /v1/token`
//! and `POST /v1/svid`, mapping the issuer's answer to tokens, a certificate, or a
//! typed error (SPEC §5).

use std::sync::Arc;
use std::time::Duration;

use baton_proto::error::ErrorBody;
use baton_proto::requests::{IntrospectRequest, SvidRequest, TokenRequest};
use baton_proto::responses::{IntrospectionResponse, SvidResponse, TokenResponse};
use reqwest::header::RETRY_AFTER;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use super::error::{ConfigError, TokenError};

/// Largest response body read: a full batch (64 tokens of at most 8 KiB) plus JSON.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Longest `error_description` kept from a refusal.
const MAX_DESCRIPTION_BYTES: usize = 512;
/// Time allowed to open a connection (TCP and TLS) to the issuer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The trust anchors of `bundle_pem`: the only roots the client trusts.
pub(crate) fn trust_roots(bundle_pem: &[u8]) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem) {
        let cert = cert.map_err(|_| ConfigError::Bundle("the PEM does not parse"))?;
        roots
            .add(cert)
            .map_err(|_| ConfigError::Bundle("a certificate is not a usable CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(ConfigError::Bundle("no CERTIFICATE block in the PEM"));
    }
    Ok(roots)
}

/// An HTTPS client trusting `roots` only, presenting `client_auth` (chain, key) when
/// given, speaking HTTP/2 or HTTP/1.1 over one reused connection pool.
pub(crate) fn https_client(
    roots: rustls::RootCertStore,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    timeout: Duration,
) -> Result<reqwest::Client, ConfigError> {
    // Explicit provider: the process-wide default panics when more than one is built in.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ConfigError::Tls)?
    .with_root_certificates(roots);
    let mut config = match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(ConfigError::Tls)?,
        None => builder.with_no_client_auth(),
    };
    // reqwest leaves ALPN to a preconfigured rustls config.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .https_only(true)
        // A redirect could carry a signed assertion to another endpoint.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout)
        .user_agent(concat!("baton-sdk/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ConfigError::HttpClient)
}

/// The URLs of the issuer endpoints a token client calls.
#[derive(Debug, Clone)]
pub(crate) struct Urls {
    /// `POST /v1/token`.
    pub(crate) token: reqwest::Url,
    /// `POST /v1/svid`.
    pub(crate) svid: reqwest::Url,
    /// `POST /v1/introspect`.
    pub(crate) introspect: reqwest::Url,
}

/// The endpoints of one issuer, reached through one HTTPS client.
#[derive(Debug)]
pub(crate) struct Endpoints {
    http: reqwest::Client,
    urls: Urls,
}

impl Endpoints {
    pub(crate) fn new(http: reqwest::Client, urls: Urls) -> Self {
        Self { http, urls }
    }

    /// The HTTPS client (cheap to clone: clones share its connection pool).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Posts `form` to the token endpoint and returns the minted tokens, at most
    /// `count` of them.
    pub(crate) async fn token(
        &self,
        form: &TokenRequest,
        count: u8,
    ) -> Result<Vec<String>, TokenError> {
        let body = self.post(&self.urls.token, form).await?;
        let response: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| TokenError::Malformed("the body is not an RFC 6749 token response"))?;
        let tokens = match response.access_tokens {
            Some(all) => all,
            None => vec![response.access_token],
        };
        if tokens.len() > usize::from(count.max(1)) {
            return Err(TokenError::Malformed(
                "the issuer returned more tokens than requested",
            ));
        }
        if tokens.iter().any(String::is_empty) {
            return Err(TokenError::Malformed("the issuer returned an empty token"));
        }
        Ok(tokens)
    }

    /// Posts `form` to the SVID endpoint and returns its answer, unchecked.
    pub(crate) async fn svid(&self, form: &SvidRequest) -> Result<SvidResponse, TokenError> {
        let body = self.post(&self.urls.svid, form).await?;
        serde_json::from_slice(&body)
            .map_err(|_| TokenError::Malformed("the body is not an SVID response"))
    }

    /// Posts `form` to the introspection endpoint and returns its RFC 7662 answer.
    pub(crate) async fn introspect(
        &self,
        form: &IntrospectRequest,
    ) -> Result<IntrospectionResponse, TokenError> {
        let body = self.post(&self.urls.introspect, form).await?;
        serde_json::from_slice(&body).map_err(|_| {
            TokenError::Malformed("the body is not an RFC 7662 introspection response")
        })
    }

    /// Posts `form` to `url`: the body of a 2xx answer, or the refusal as a typed error.
    async fn post<F: Serialize>(
        &self,
        url: &reqwest::Url,
        form: &F,
    ) -> Result<Vec<u8>, TokenError> {
        let response = self
            .http
            .post(url.clone())
            .form(form)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(response).await?;

        if status.is_success() {
            return body.ok_or(TokenError::Malformed("the response is larger than 1 MiB"));
        }

        let status = status.as_u16();
        match body.and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok()) {
            Some(ErrorBody {
                error,
                error_description,
            }) => Err(TokenError::Refused {
                status,
                error,
                description: error_description.as_deref().map(sanitize),
                retry_after,
            }),
            None => Err(TokenError::UnexpectedStatus { status }),
        }
    }
}

/// A transport error without the URL (RFC 6749 errors never carry a secret, but a URL
/// configured by an operator might).
fn transport(error: reqwest::Error) -> TokenError {
    TokenError::Transport(error.without_url())
}

/// The body, or `None` when it is larger than [`MAX_RESPONSE_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, TokenError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// RFC 6749 §5.2 allows only printable ASCII in `error_description`; anything else,
/// and anything beyond a bound, is dropped so the text is safe to log.
fn sanitize(description: &str) -> String {
    description
        .chars()
        .filter(|c| matches!(c, ' '..='~'))
        .take(MAX_DESCRIPTION_BYTES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_reduced_to_bounded_printable_ascii() {
        assert_eq!(sanitize("audience not allowed"), "audience not allowed");
        assert_eq!(sanitize("line\nbreak\u{1b}[31m é"), "linebreak[31m ");
        assert_eq!(sanitize(&"x".repeat(2000)).len(), MAX_DESCRIPTION_BYTES);
    }

    #[test]
    fn bundle_without_certificates_is_refused() {
        for pem in [
            &b""[..],
            b"junk",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(matches!(trust_roots(pem), Err(ConfigError::Bundle(_))));
        }
        let junk_cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            trust_roots(junk_cert),
            Err(ConfigError::Bundle(m)) if m.contains("CA certificate")
        ));
    }
}
