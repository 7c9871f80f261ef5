//! Shared replay guards (SPEC §7 "Replay ledger", §8 "Replay guard: local, Redis, or
//! remote introspection"): one-time use across every verifier that shares a ledger.
//!
//! A shared guard is a network call, so it is asynchronous and only
//! [`Verifier::verify_async`](crate::Verifier::verify_async) consults it; the
//! synchronous [`Verifier::verify`](crate::Verifier::verify) of a verifier that has
//! one refuses every token ([`VerifyError::AsyncVerificationRequired`](crate::VerifyError::AsyncVerificationRequired))
//! rather than skip it. Like the local guard it runs last, after every other check,
//! and fails closed: a guard that cannot answer in time refuses the token.
//!
//! Guarantees, as SPEC §7 states them: local SDK guard = once per verifier process;
//! Redis guard or introspection = once across every verifier and issuer replica
//! sharing the store.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use baton_proto::SpiffeId;

/// The future a [`SharedReplayGuard`] returns: boxed, so the trait stays object safe
/// and a verifier holds any guard as `Arc<dyn SharedReplayGuard>`.
///
/// ```
/// use baton_sdk::{GuardFuture, GuardUnavailable, SharedReplayError};
/// // A guard whose store is down answers like this, at once.
/// fn down<'a>() -> GuardFuture<'a> {
///     Box::pin(async { Err(SharedReplayError::Unavailable(GuardUnavailable::Unreachable)) })
/// }
/// # let _ = down();
/// ```
pub type GuardFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SharedReplayError>> + Send + 'a>>;

/// A token that passed every other check, as a shared guard needs to see it.
///
/// Made by the verifier; a guard reads what it needs: the `jti` and expiry to record
/// (Redis), or the token itself to introspect at the issuer.
///
/// ```
/// use baton_sdk::{GuardFuture, Presentation, SharedReplayGuard};
///
/// #[derive(Debug)]
/// struct LogOnly;
///
/// impl SharedReplayGuard for LogOnly {
///     fn consume<'a>(&'a self, p: Presentation<'a>) -> GuardFuture<'a> {
///         // Log the jti, never the token.
///         println!("{} for {} until {}", p.jti(), p.audience(), p.keep_until());
///         Box::pin(async { Ok(()) })
///     }
/// }
/// # let _ = LogOnly;
/// ```
#[derive(Clone, Copy)]
pub struct Presentation<'a> {
    pub(crate) token: &'a str,
    pub(crate) audience: &'a SpiffeId,
    pub(crate) jti: &'a str,
    pub(crate) issued_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) keep_until: i64,
    pub(crate) now: i64,
}

impl fmt::Debug for Presentation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token: it is a bearer credential until consumed.
        f.debug_struct("Presentation")
            .field("audience", &self.audience)
            .field("jti", &self.jti)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("keep_until", &self.keep_until)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<'a> Presentation<'a> {
    /// The compact token, verified. Send it only to the issuer (introspection);
    /// never log or store it.
    pub fn token(&self) -> &'a str {
        self.token
    }

    /// The token's `aud`: the verifier's own SPIFFE ID.
    pub fn audience(&self) -> &'a SpiffeId {
        self.audience
    }

    /// The token's `jti`, 1 to 256 bytes.
    pub fn jti(&self) -> &'a str {
        self.jti
    }

    /// The token's `iat`, Unix seconds.
    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    /// The token's `exp`, Unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Unix seconds until which the `jti` must be remembered: `exp` plus the verifier's
    /// clock leeway, after which the verifier refuses the token as expired anyway.
    /// Always later than [`now`](Self::now).
    pub fn keep_until(&self) -> i64 {
        self.keep_until
    }

    /// The verifier's clock for this verification, Unix seconds.
    pub fn now(&self) -> i64 {
        self.now
    }
}

/// A replay guard reached over the network and shared by many verifiers: each token
/// is accepted once by all of them together.
///
/// Provided: [`RedisReplayGuard`](crate::RedisReplayGuard) (feature `redis`) and
/// [`IntrospectionReplayGuard`](crate::IntrospectionReplayGuard) (feature `client`).
/// Give one to [`VerifierBuilder::shared_replay_guard`](crate::VerifierBuilder::shared_replay_guard)
/// and verify with [`Verifier::verify_async`](crate::Verifier::verify_async).
///
/// Guarantees (SPEC §7): local SDK guard = once per verifier process; Redis guard or
/// introspection = once across every verifier and issuer replica sharing the store.
///
/// An implementation must fail closed and bound its own time: `Ok` only when the
/// `jti` is now recorded as used and was not before; [`SharedReplayError::Unavailable`]
/// whenever it cannot tell — store down, timeout, unexpected answer — never `Ok`.
///
/// ```
/// use std::collections::HashSet;
/// use std::sync::Mutex;
/// use baton_sdk::{GuardFuture, Presentation, SharedReplayError, SharedReplayGuard};
///
/// /// Stands in for a networked store in tests: remembers every jti for ever.
/// #[derive(Debug, Default)]
/// struct InMemory(Mutex<HashSet<String>>);
///
/// impl SharedReplayGuard for InMemory {
///     fn consume<'a>(&'a self, p: Presentation<'a>) -> GuardFuture<'a> {
///         Box::pin(async move {
///             let mut seen = self.0.lock().map_err(|_| {
///                 SharedReplayError::Unavailable(baton_sdk::GuardUnavailable::StoreError)
///             })?;
///             if seen.insert(p.jti().to_owned()) {
///                 Ok(())
///             } else {
///                 Err(SharedReplayError::Replayed)
///             }
///         })
///     }
/// }
/// # let _ = InMemory::default();
/// ```
pub trait SharedReplayGuard: Send + Sync + fmt::Debug {
    /// Consumes the presented token's `jti`: succeeds once, then fails with
    /// [`SharedReplayError::Replayed`] (or [`Inactive`](SharedReplayError::Inactive))
    /// until [`keep_until`](Presentation::keep_until).
    fn consume<'a>(&'a self, presentation: Presentation<'a>) -> GuardFuture<'a>;
}

/// Why a [`SharedReplayGuard`] did not accept a token.
///
/// ```
/// use baton_sdk::{GuardUnavailable, SharedReplayError};
/// let err = SharedReplayError::Unavailable(GuardUnavailable::Timeout);
/// assert!(err.is_unavailable());
/// assert!(!SharedReplayError::Replayed.is_unavailable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SharedReplayError {
    /// The `jti` was consumed before (by this verifier or any other sharing the store).
    #[error("this jti was already used")]
    Replayed,
    /// The issuer's introspection answered `active: false`: the token was used
    /// already, revoked, or is otherwise not valid (RFC 7662 tells no more).
    #[error("the issuer reports the token inactive")]
    Inactive,
    /// The token was issued at or before the shared store's epoch: the store lost its
    /// data (restart without persistence, flush) after the token was issued, so
    /// whether it was used cannot be known.
    #[error("the token predates the replay store's epoch")]
    PredatesEpoch,
    /// The guard cannot tell whether the token was used. The verifier refuses it:
    /// fail closed.
    #[error("shared replay guard unavailable: {0}")]
    Unavailable(GuardUnavailable),
}

impl SharedReplayError {
    /// Whether the guard could not decide (the verifier's failure, not the token's).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Why a shared replay guard could not decide; the token is refused (fail closed).
///
/// ```
/// use baton_sdk::GuardUnavailable;
/// assert_eq!(
///     GuardUnavailable::Timeout.to_string(),
///     "no answer within the guard's timeout"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardUnavailable {
    /// The store or the issuer did not answer within the guard's timeout.
    #[error("no answer within the guard's timeout")]
    Timeout,
    /// The store or the issuer cannot be reached (connection refused or lost, TLS).
    #[error("the store or issuer cannot be reached")]
    Unreachable,
    /// The store answered with an error or an unexpected reply.
    #[error("the store answered with an error")]
    StoreError,
    /// The issuer answered the introspection with this HTTP status instead of 200:
    /// 5xx is an outage; 401 means the callee's own authentication was refused.
    #[error("the issuer answered HTTP {0} to the introspection")]
    IssuerStatus(u16),
    /// The issuer answered 200 with something that is not an RFC 7662 answer for
    /// this token.
    #[error("the issuer's introspection answer is malformed or about another token")]
    BadAnswer,
    /// The introspecting workload is not the verifier's audience, so the issuer would
    /// never answer active: configure the guard with the callee's own credentials.
    #[error("the introspection guard's workload is not this verifier's audience")]
    NotAudience,
    /// The guard could not sign its client assertion (system random number generator).
    #[error("the introspection guard could not sign its client assertion")]
    Signing,
}
