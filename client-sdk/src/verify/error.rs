//! Why a token or a verifier configuration was refused. Errors are data (STYLE §2):
//! one variant per SPEC §4 rejection, a stable label for metrics and
//! `WWW-Authenticate`, and messages that never contain the token or key material.

use baton_proto::claims::{MAX_TOKEN_BYTES, MAX_TOKEN_TTL_SECS};

use super::shared::GuardUnavailable;

/// Why [`Verifier::verify`](crate::Verifier::verify) or
/// [`Verifier::verify_async`](crate::Verifier::verify_async) refused a token.
///
/// Each variant is one rejection rule of SPEC §4; [`reason`](Self::reason) gives its
/// stable snake_case label. Messages say what went wrong and what to do, and never
/// contain the token.
///
/// ```
/// use baton_sdk::VerifyError;
/// let err = VerifyError::Replayed;
/// assert_eq!(err.reason(), "replayed");
/// assert!(!err.is_unavailable());
/// // Failures on the verifier's side are outages, not the caller's fault: answer 503.
/// assert!(VerifyError::ReplayGuardUnavailable.is_unavailable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is longer than 8 KiB; it was not read.
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes; a Baton access token is far smaller")]
    TooLarge,
    /// The token is not a compact JWS carrying a Baton access token; the text names
    /// the broken rule.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not `ES256` or `EdDSA` (`none`, HMAC and RSA never verify).
    #[error("token alg is not ES256 or EdDSA; none, HMAC and RSA tokens are never accepted")]
    UnsupportedAlgorithm,
    /// The header's `alg` differs from the algorithm of the key its `kid` names.
    #[error("token alg does not match the algorithm of the signing key its kid names")]
    AlgorithmMismatch,
    /// The header has no `kid` (or an empty one).
    #[error("token header has no kid; Baton tokens name their signing key")]
    MissingKeyId,
    /// No trusted key carries the token's `kid`: it is unknown, was withdrawn, or its
    /// certificate is not valid at this time. A verifier that fetches its keys has
    /// asked for a (rate-limited) refresh.
    #[error(
        "no trusted signing key has this token's kid; if the issuer rotated its keys, retry \
         after the verifier's key refresh"
    )]
    UnknownKey,
    /// The verifier holds no usable keys: the issuer's key set could not be fetched for
    /// longer than the configured stale bound. Fails closed.
    #[error(
        "signing keys are unavailable: the issuer's JWKS has not been fetched for longer than \
         the stale bound; check that this service can reach the issuer"
    )]
    KeysUnavailable,
    /// The signature does not verify with the key the `kid` names.
    #[error("token signature does not verify")]
    BadSignature,
    /// The header's `typ` is not `at+jwt` (RFC 9068 §2.1): this is not an access token.
    #[error("token typ is not at+jwt; only Baton access tokens are accepted")]
    WrongType,
    /// `iss` is not the configured issuer.
    #[error("token was issued by another issuer")]
    WrongIssuer,
    /// `aud` is not this verifier's own SPIFFE ID.
    #[error(
        "token is addressed to another service; the caller must request a token for this service's SPIFFE ID"
    )]
    WrongAudience,
    /// `exp` has passed, beyond the clock leeway.
    #[error("token has expired; the caller must request a fresh one")]
    Expired,
    /// `nbf` is in the future, beyond the clock leeway.
    #[error("token is not valid yet (nbf in the future); check the clocks of issuer and service")]
    NotYetValid,
    /// `iat` is in the future, beyond the clock leeway.
    #[error("token was issued in the future (iat); check the clocks of issuer and service")]
    IssuedInFuture,
    /// `exp - iat` exceeds the SPEC §4 maximum of 300 s.
    #[error("token lifetime (exp - iat) exceeds {MAX_TOKEN_TTL_SECS} seconds")]
    LifetimeTooLong,
    /// The token has no `jti` (or an empty one), so it cannot be used once.
    #[error("token has no jti, so it cannot be held to one use")]
    MissingJti,
    /// The token's `jti` was already consumed: tokens are one-time.
    #[error(
        "token was already used; tokens are one-time, so the caller must request a fresh one per call"
    )]
    Replayed,
    /// The replay guard could not record the `jti`. Fails closed.
    #[error("replay guard unavailable; retry shortly")]
    ReplayGuardUnavailable,
    /// The shared replay guard (Redis, introspection) could not tell whether the token
    /// was used; the inner value says why. Fails closed.
    #[error("shared replay guard unavailable ({0}); retry shortly")]
    SharedGuardUnavailable(GuardUnavailable),
    /// The issuer's introspection answered inactive: the token was used already (by
    /// this or another verifier, or introspected), revoked, or is otherwise not valid.
    #[error(
        "the issuer reports the token inactive (already used or revoked); the caller must \
         request a fresh one per call"
    )]
    Inactive,
    /// The token was issued at or before the shared replay store's epoch: the store
    /// lost its data since, so whether the token was used cannot be known.
    #[error(
        "token was issued before the shared replay store lost its data, so it may have been \
         used already; the caller must request a fresh one"
    )]
    PredatesReplayLedger,
    /// This verifier has a shared replay guard, which only
    /// [`Verifier::verify_async`](crate::Verifier::verify_async) consults: the
    /// synchronous `verify` refuses every token rather than skip the guard.
    #[error(
        "this verifier has a shared replay guard: call Verifier::verify_async, which consults \
         it (verify refuses rather than skip it)"
    )]
    AsyncVerificationRequired,
}

impl VerifyError {
    /// A stable, low-cardinality snake_case label: the `error_description` of a
    /// `WWW-Authenticate` challenge and the `reason` label of metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::MissingKeyId => "missing_key_id",
            Self::UnknownKey => "unknown_key",
            Self::KeysUnavailable => "keys_unavailable",
            Self::BadSignature => "bad_signature",
            Self::WrongType => "wrong_type",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::MissingJti => "missing_jti",
            Self::Replayed => "replayed",
            Self::ReplayGuardUnavailable | Self::SharedGuardUnavailable(_) => {
                "replay_guard_unavailable"
            }
            Self::Inactive => "inactive",
            Self::PredatesReplayLedger => "predates_replay_ledger",
            Self::AsyncVerificationRequired => "verify_async_required",
        }
    }

    /// Whether the failure is the verifier's, not the token's: keys or replay guard
    /// unavailable, or a shared guard the caller of `verify` skipped. An HTTP callee
    /// answers these with 503 and `Retry-After` rather than 401, so callers retry
    /// instead of giving up.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::KeysUnavailable
                | Self::ReplayGuardUnavailable
                | Self::SharedGuardUnavailable(_)
                | Self::AsyncVerificationRequired
        )
    }
}

/// Why a [`Verifier`](crate::Verifier) could not be built, or its keys refreshed.
///
/// No variant carries key material or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The issuer identifier is empty.
    #[error(
        "the issuer identifier is empty; pass the issuer URL exactly as tokens carry it in iss"
    )]
    EmptyIssuer,
    /// The trust bundle is not usable; the text says why.
    #[error("trust bundle refused: {0}; pass the trust domain's CA certificates in PEM")]
    Bundle(&'static str),
    /// The JWKS document does not parse, or breaks Baton's JWKS rules (private key
    /// members, unsupported key types, missing `x5c`, …).
    #[error("JWKS refused: {0}")]
    Jwks(#[source] serde_json::Error),
    /// The JWKS document is larger than any honest key set.
    #[error("JWKS is larger than {limit} bytes; refusing to read it")]
    JwksTooLarge {
        /// The size limit, in bytes.
        limit: usize,
    },
    /// Not one key of the JWKS passed the trust checks (chain to the bundle, the
    /// reserved token-signer ID, key matching its certificate).
    #[error(
        "none of the {offered} keys in the JWKS is trusted (key {kid}: {reason}); check that the \
         bundle is this trust domain's and that the keys come from its issuer"
    )]
    NoTrustedKey {
        /// How many keys the JWKS offered.
        offered: usize,
        /// The first refused key.
        kid: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Both a local [`replay_guard`](crate::VerifierBuilder::replay_guard) and a
    /// [`shared_replay_guard`](crate::VerifierBuilder::shared_replay_guard) were given.
    #[error(
        "replay_guard (local) and shared_replay_guard exclude each other; a verifier consumes \
         each token in one ledger"
    )]
    ConflictingReplayGuards,
    /// [`build`](crate::VerifierBuilder::build) was called without static keys.
    #[error(
        "no key source: give static keys with VerifierBuilder::jwks, or fetch them from the issuer \
         with VerifierBuilder::build_fetching (feature `fetch`)"
    )]
    NoKeySource,
    /// Both static keys and fetching were asked for.
    #[error(
        "static keys (VerifierBuilder::jwks) and fetched keys (build_fetching) exclude each other; choose one"
    )]
    ConflictingKeySources,
    /// `build_fetching` was awaited outside a Tokio runtime, which the background
    /// refresh needs.
    #[cfg(feature = "fetch")]
    #[error("build_fetching must run inside a Tokio runtime, which keeps the keys refreshed")]
    NoRuntime,
    /// The default HTTPS client could not be configured.
    #[cfg(feature = "fetch")]
    #[error("cannot configure TLS for the JWKS client: {0}")]
    Tls(#[source] rustls::Error),
    /// The HTTP client could not be built.
    #[cfg(feature = "fetch")]
    #[error("cannot build the JWKS HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The JWKS could not be fetched (connection, TLS, timeout).
    #[cfg(feature = "fetch")]
    #[error("fetching the JWKS from {url} failed; check that the issuer is reachable: {source}")]
    Fetch {
        /// The JWKS URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The JWKS endpoint answered with a status other than 200.
    #[cfg(feature = "fetch")]
    #[error("the JWKS endpoint {url} answered HTTP {status}, not 200")]
    FetchStatus {
        /// The JWKS URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
}
