//! What can go wrong when getting a token or a certificate: typed, so a caller can tell
//! its own misconfiguration from a refusal by the issuer, from a network failure and
//! from a certificate the client will not use. No message carries a token, a join
//! token, an assertion, key material, a whole certificate or a request URL.

use std::time::Duration;

use baton_proto::error::ErrorCode;
use baton_proto::{SpiffeId, SpiffeIdError};

/// Why a [`TokenClient`](crate::TokenClient) could not return a token.
///
/// ```
/// use baton_sdk::{ConfigError, TokenClient, TokenError};
/// let err = TokenClient::builder("https://baton.example.org", b"", b"", b"")
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, TokenError::Config(ConfigError::Bundle(_))));
/// assert!(!err.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The client's configuration is unusable (PEM, certificate, key, issuer URL, TLS,
    /// join token). Only [`TokenClientBuilder::build`](crate::TokenClientBuilder::build)
    /// and [`JoinBuilder::connect`](crate::JoinBuilder::connect) return it.
    #[error("token client configuration: {0}")]
    Config(#[from] ConfigError),
    /// The HTTPS exchange with the issuer failed: connection, TLS handshake (for
    /// instance an issuer certificate outside the trust bundle), timeout or I/O.
    /// The source error never names the URL.
    #[error(
        "HTTPS request to the issuer failed; check the issuer URL, the trust bundle and the network"
    )]
    Transport(#[source] reqwest::Error),
    /// The issuer refused the request with an RFC 6749 §5.2 error.
    #[error("the issuer refused the request ({status} {error}){}", describe(description.as_deref()))]
    Refused {
        /// HTTP status of the answer.
        status: u16,
        /// The RFC 6749 error code, e.g. [`ErrorCode::InvalidTarget`] for an audience
        /// the policy does not allow, or [`ErrorCode::InvalidClient`] for a join token
        /// that is unknown, expired or already used.
        error: ErrorCode,
        /// The issuer's `error_description`, reduced to printable ASCII and bounded.
        description: Option<String>,
        /// The `Retry-After` of a 429 or 503 answer.
        retry_after: Option<Duration>,
    },
    /// The issuer answered with an HTTP status and a body that is not an RFC 6749 error
    /// (a gateway page, for instance).
    #[error("the issuer answered HTTP {status} without an RFC 6749 error body")]
    UnexpectedStatus {
        /// HTTP status of the answer.
        status: u16,
    },
    /// The issuer answered 200 with something that is not a usable token or
    /// certificate response.
    #[error("malformed response from the issuer: {0}")]
    Malformed(&'static str),
    /// Signing the client assertion failed: the system random number generator is
    /// unavailable.
    #[error("cannot sign the client assertion: the system random number generator failed")]
    Signing,
    /// Generating a new private key or its certificate signing request failed: the
    /// system random number generator is unavailable.
    #[error(
        "cannot generate a private key and its certificate request: the system random number generator failed"
    )]
    KeyGeneration,
    /// The issuer sent a certificate this client will not use; the client keeps the
    /// one it has, if any.
    #[error("refused the certificate the issuer sent: {0}")]
    Svid(#[from] SvidError),
}

impl TokenError {
    /// Whether trying again later may succeed: the issuer was rate limiting (429),
    /// temporarily unavailable (503, or a gateway's 502 / 504), or unreachable.
    ///
    /// A refusal on the merits (`invalid_client`, `invalid_target`, `invalid_scope`, …)
    /// and a configuration error are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Refused { status, error, .. } => {
                matches!(status, 429 | 503)
                    || matches!(
                        error,
                        ErrorCode::SlowDown | ErrorCode::TemporarilyUnavailable
                    )
            }
            Self::UnexpectedStatus { status } => matches!(status, 429 | 502 | 503 | 504),
            Self::Config(_)
            | Self::Malformed(_)
            | Self::Signing
            | Self::KeyGeneration
            | Self::Svid(_) => false,
        }
    }

    /// How long the issuer asked the caller to wait (`Retry-After`), when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn describe(description: Option<&str>) -> String {
    description.map(|d| format!(": {d}")).unwrap_or_default()
}

/// What is wrong with the material a [`TokenClient`](crate::TokenClient) is built from.
///
/// Messages say which input to fix; none repeats key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The issuer URL is not an absolute `https` URL without credentials, query or
    /// fragment.
    #[error("issuer URL: {0}")]
    IssuerUrl(&'static str),
    /// The trust bundle PEM holds no usable CA certificate.
    #[error("trust bundle: {0}")]
    Bundle(&'static str),
    /// The certificate chain PEM holds no certificate, or the leaf does not parse.
    #[error("certificate chain: {0}")]
    Certificate(&'static str),
    /// The leaf certificate does not carry exactly one URI SAN.
    #[error("the leaf certificate must carry exactly one URI SAN, the workload's SPIFFE ID")]
    SanCount,
    /// The leaf certificate's URI SAN is not a valid SPIFFE ID.
    #[error("the leaf certificate's URI SAN is not a valid SPIFFE ID: {0}")]
    SpiffeId(#[source] SpiffeIdError),
    /// The key PEM is not a PKCS#8 P-256 or Ed25519 private key.
    #[error("private key: {0}")]
    Key(&'static str),
    /// The private key does not belong to the leaf certificate.
    #[error("the private key does not match the leaf certificate's public key")]
    KeyMismatch,
    /// The join token is empty, too long, or holds characters no join token has.
    #[error("join token: {0}")]
    JoinToken(&'static str),
    /// [`JoinBuilder::connect`](crate::JoinBuilder::connect) was polled outside a
    /// tokio runtime, which it needs for its requests and its renewal task.
    #[error(
        "a client built from a join token needs a tokio runtime: call connect() from within one"
    )]
    NoRuntime,
    /// The prefetch pool is larger than one batch mint may be.
    #[error("pool size {0} exceeds the issuer's batch limit of {max}", max = baton_proto::claims::MAX_BATCH_COUNT)]
    PoolSize(u8),
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// reqwest could not build the HTTPS client.
    #[error("HTTPS client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Why a certificate sent by the issuer's `POST /v1/svid` was refused (SPEC §2, §5).
///
/// A client built with [`TokenClient::join`](crate::TokenClient::join) checks every
/// certificate before using it: it must chain to the trust bundle the client was
/// configured with (the `bundle` the issuer sends along is not trusted to replace it),
/// certify the key the client just generated, and carry exactly one URI SAN, the
/// SPIFFE ID — on renewal the same ID as before.
///
/// ```
/// use baton_sdk::SvidError;
/// let err = SvidError::KeyMismatch;
/// assert_eq!(err.to_string(), "the certificate is not for the key this client generated");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The PEM holds no certificate, too many, or one that does not parse.
    #[error("the certificate chain does not parse: {0}")]
    Certificate(&'static str),
    /// The chain does not verify against the configured trust bundle at this time, or
    /// the leaf is not a client-authentication end-entity certificate.
    #[error("the certificate does not verify against the configured trust bundle: {0}")]
    Untrusted(&'static str),
    /// The leaf does not carry exactly one URI SAN.
    #[error("the certificate must carry exactly one URI SAN, the workload's SPIFFE ID")]
    SanCount,
    /// The leaf's URI SAN is not a valid SPIFFE ID.
    #[error("the certificate's URI SAN is not a valid SPIFFE ID: {0}")]
    SpiffeId(#[source] SpiffeIdError),
    /// The leaf certifies another public key than the one this client generated.
    #[error("the certificate is not for the key this client generated")]
    KeyMismatch,
    /// The leaf names another SPIFFE ID than the one expected.
    #[error("the certificate is for {found}, not {expected}")]
    WrongId {
        /// The ID this client holds (renewal) or was told to expect.
        expected: SpiffeId,
        /// The ID the certificate carries.
        found: SpiffeId,
    },
}
