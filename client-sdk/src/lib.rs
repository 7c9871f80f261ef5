//! Baton client SDK.
//!
//! Callers get short-lived one-time tokens from a Baton issuer; callees verify them
//! locally with cached, certificate-backed keys (SPEC §8). The verification and
//! token-client halves land with their own issues; today the crate re-exports the
//! identity types every user of the SDK starts from.
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
pub use verify::{
    BuildError, LocalReplayGuard, ReplayError, ReplayGuard, VerifiedCaller, Verifier,
    VerifierBuilder, VerifyError,
};
