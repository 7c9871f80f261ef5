//! Baton client SDK (SPEC §8): one-time workload tokens for function-to-function calls.
//!
//! - **Callee**: a [`Verifier`] checks tokens locally — no network call per token —
//!   with signing keys it trusts only when their `x5c` certificate chains to the trust
//!   bundle and carries the reserved `spiffe://<td>/baton/token-signer` ID. Keys come
//!   from a JWKS file or, with the `fetch` feature, from the issuer, cached and
//!   refreshed in the background. A replay guard makes each token usable once:
//!   local by default, or shared by every replica (see below).
//! - **Caller** (`client` feature): a [`TokenClient`] gets a fresh token for one
//!   audience over mTLS or with a signed client assertion, optionally from a small
//!   prefetched pool. It is built from a workload certificate and key, or from a join
//!   token ([`TokenClient::join`]): then it generates its key in memory, fetches its
//!   certificate, and renews it before expiry.
//! - **Integrations**: an axum extractor (`axum` feature, [`mod@axum`]) and a reqwest
//!   helper (`reqwest` feature, [`RequestBuilderExt`]).
//!
//! With `default-features = false` only verification from a JWKS remains: no tokio, no
//! HTTP client.
//!
//! # Replay guards: what "one-time" means
//!
//! Guarantees, as SPEC §7 states them: local SDK guard = once per verifier process;
//! Redis guard or introspection = once across every verifier and issuer replica
//! sharing the store.
//!
//! | guard | how | call | guarantee |
//! |---|---|---|---|
//! | [`LocalReplayGuard`] (default) | in memory, no network call | [`Verifier::verify`] | once per verifier process |
//! | `RedisReplayGuard` (feature `redis`) | one `SET NX PXAT` round trip to a shared Redis | [`Verifier::verify_async`] | once across every verifier and issuer replica sharing the store |
//! | `IntrospectionReplayGuard` (feature `client`) | RFC 7662 introspection at the issuer, as the callee | [`Verifier::verify_async`] | once across every verifier and issuer replica sharing the store |
//!
//! Shared guards ([`SharedReplayGuard`]) are set with
//! [`VerifierBuilder::shared_replay_guard`]; they fail closed (a guard that cannot
//! answer in time refuses the token), and a verifier that has one refuses the
//! synchronous `verify` ([`VerifyError::AsyncVerificationRequired`]) rather than skip
//! it.
//!
//! ```
//! use baton_sdk::SpiffeId;
//! let me: SpiffeId = "spiffe://example.org/fn/payments".parse()?;
//! assert_eq!(me.trust_domain_name(), "example.org");
//! # Ok::<(), baton_sdk::SpiffeIdError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use baton_proto::{SpiffeId, SpiffeIdError, TrustDomain};

mod verify;
#[cfg(feature = "client")]
pub use verify::IntrospectionReplayGuard;
pub use verify::{
    BuildError, GuardFuture, GuardUnavailable, LocalReplayGuard, Presentation, ReplayError,
    ReplayGuard, SharedReplayError, SharedReplayGuard, VerifiedCaller, Verifier, VerifierBuilder,
    VerifyError,
};
#[cfg(feature = "redis")]
pub use verify::{RedisGuardBuilder, RedisGuardError, RedisReplayGuard};
#[cfg(feature = "redis")]
pub mod redis_store;

#[cfg(feature = "client")]
mod client;
/// The RFC 6749 error code of [`TokenError::Refused`], so callers can match on it.
#[cfg(feature = "client")]
pub use baton_proto::error::ErrorCode;
#[cfg(feature = "client")]
pub use client::{
    Auth, CertificateStatus, ConfigError, JoinBuilder, KeyType, RenewalEvent, SvidError,
    TokenClient, TokenClientBuilder, TokenError,
};

#[cfg(feature = "reqwest")]
pub mod reqwest_ext;
#[cfg(feature = "reqwest")]
pub use reqwest_ext::RequestBuilderExt;

#[cfg(feature = "axum")]
pub mod axum;

/// docs/sdk-guide.md, compiled as doctests: its snippets use every integration.
#[cfg(all(
    doctest,
    feature = "fetch",
    feature = "axum",
    feature = "reqwest",
    feature = "redis"
))]
#[doc = include_str!("../../docs/sdk-guide.md")]
pub struct SdkGuide;
