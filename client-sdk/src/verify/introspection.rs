//! The introspection replay guard (feature `client`, SPEC §5 introspect row, §8
//! "remote introspection"): the callee consumes each token at the issuer with
//! RFC 7662 `POST /v1/introspect`, authenticated as itself (mTLS or client assertion,
//! through its own [`TokenClient`]). An introspection by the token's audience is the
//! token's one use, so the issuer's ledger — shared by all its replicas — decides.

use std::fmt;
use std::time::Duration;

use baton_proto::responses::IntrospectionResponse;

use super::shared::{
    GuardFuture, GuardUnavailable, Presentation, SharedReplayError, SharedReplayGuard,
};
use crate::{TokenClient, TokenError};

/// A shared replay guard that consumes each token at the issuer: RFC 7662
/// introspection by the token's audience answers `active: true` once, then
/// `active: false`.
///
/// Guarantee (SPEC §7): Redis guard or introspection = once across every verifier and
/// issuer replica sharing the store. (Local SDK guard, by contrast = once per verifier
/// process.) Every verifier with this guard, and every other introspection of the
/// token, draws on the issuer's one replay ledger.
///
/// - Built from the callee's own [`TokenClient`] (its workload certificate and key, by
///   mTLS or signed assertion as the client is configured): the issuer answers active
///   only to the token's audience, so the client's ID must be the verifier's audience
///   ([`GuardUnavailable::NotAudience`] otherwise).
/// - `active: true` accepts the token; `active: false` refuses it as
///   [`VerifyError::Inactive`](crate::VerifyError::Inactive) (used already, revoked,
///   or not valid at the issuer).
/// - Fails closed: a transport error, a timeout ([`timeout`](Self::timeout), default
///   2 s), any status but 200, or a malformed answer refuses the token with
///   [`VerifyError::SharedGuardUnavailable`](crate::VerifyError::SharedGuardUnavailable).
///
/// Each verification costs one HTTPS round trip to the issuer (on the client's pooled
/// connection), and the issuer must be up for callees to serve.
///
/// ```no_run
/// use std::sync::Arc;
/// use baton_sdk::{IntrospectionReplayGuard, TokenClient, Verifier};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let bundle = std::fs::read("bundle.pem")?;
/// // The callee's own credentials: payments introspects tokens addressed to payments.
/// let me = TokenClient::builder(
///     "https://baton.example.org",
///     &bundle,
///     &std::fs::read("payments/svid.pem")?,
///     &std::fs::read("payments/svid.key")?,
/// )
/// .build()?;
/// let verifier = Verifier::builder("https://baton.example.org", me.id().clone(), &bundle)?
///     .shared_replay_guard(Arc::new(IntrospectionReplayGuard::new(me)))
///     .build_fetching()
///     .await?;
/// # let token = "";
/// let caller = verifier.verify_async(token).await?;
/// # let _ = caller; Ok(()) }
/// ```
#[derive(Clone)]
pub struct IntrospectionReplayGuard {
    client: TokenClient,
    timeout: Duration,
}

impl fmt::Debug for IntrospectionReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionReplayGuard")
            .field("id", self.client.id())
            .field("issuer", &self.client.issuer())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl IntrospectionReplayGuard {
    /// Default bound on one introspection.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A guard introspecting as `client`'s workload, which must be the verifier's
    /// audience. Makes no network call.
    ///
    /// ```no_run
    /// # fn run(client: baton_sdk::TokenClient) {
    /// let guard = baton_sdk::IntrospectionReplayGuard::new(client);
    /// # let _ = guard;
    /// # }
    /// ```
    pub fn new(client: TokenClient) -> Self {
        Self {
            client,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Longest wait for one introspection, connecting included (default
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT)); past it the token is refused as
    /// unavailable. The client's own [`timeout`](crate::TokenClientBuilder::timeout)
    /// applies too: the shorter wins.
    ///
    /// ```no_run
    /// # fn run(client: baton_sdk::TokenClient) {
    /// let guard = baton_sdk::IntrospectionReplayGuard::new(client)
    ///     .timeout(std::time::Duration::from_millis(500));
    /// # let _ = guard;
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn run(&self, p: Presentation<'_>) -> Result<(), SharedReplayError> {
        if p.audience() != self.client.id() {
            return Err(unavailable(GuardUnavailable::NotAudience));
        }
        let answer = tokio::time::timeout(self.timeout, self.client.introspect(p.token()))
            .await
            .map_err(|_| unavailable(GuardUnavailable::Timeout))?
            .map_err(|e| unavailable(classify(&e)))?;
        match answer {
            // RFC 7662 §2.2: nothing more is said about an inactive token.
            IntrospectionResponse::Inactive => Err(SharedReplayError::Inactive),
            // The issuer vouches for the token it parsed: it must be the one verified.
            IntrospectionResponse::Active(claims)
                if claims.jti == p.jti() && claims.aud == *p.audience() =>
            {
                Ok(())
            }
            IntrospectionResponse::Active(_) => Err(unavailable(GuardUnavailable::BadAnswer)),
        }
    }
}

impl SharedReplayGuard for IntrospectionReplayGuard {
    fn consume<'a>(&'a self, presentation: Presentation<'a>) -> GuardFuture<'a> {
        Box::pin(self.run(presentation))
    }
}

fn unavailable(why: GuardUnavailable) -> SharedReplayError {
    SharedReplayError::Unavailable(why)
}

fn classify(e: &TokenError) -> GuardUnavailable {
    match e {
        TokenError::Transport(e) if e.is_timeout() => GuardUnavailable::Timeout,
        TokenError::Transport(_) => GuardUnavailable::Unreachable,
        TokenError::Refused { status, .. } | TokenError::UnexpectedStatus { status } => {
            GuardUnavailable::IssuerStatus(*status)
        }
        TokenError::Signing => GuardUnavailable::Signing,
        _ => GuardUnavailable::BadAnswer,
    }
}
