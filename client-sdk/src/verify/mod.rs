//! The callee half of the SDK (SPEC §4, §8): verify Baton access tokens locally,
//! synchronously, with cached certificate-backed keys, and hold each to one use.
//!
//! A token is checked in the order a reader expects (go-spiffe's `jwtsvid`): size →
//! three segments → header (allow-listed `alg`, `typ` `at+jwt`, `kid`) → key by `kid`
//! → `alg` equals the key's → signature → claims → `iss` → `aud` → `exp` → `nbf` /
//! `iat` → lifetime → `jti` → replay guard, last, so a token that fails anything else
//! never burns its `jti`.
//!
//! The replay guard is local and synchronous by default (`replay`), or shared and
//! asynchronous (`shared`: Redis in `redis_guard`, the issuer's introspection in
//! `introspection`), consulted only by `verify_async`.

mod error;
#[cfg(feature = "fetch")]
mod fetch;
#[cfg(feature = "client")]
mod introspection;
mod jws;
mod keys;
#[cfg(feature = "redis")]
mod redis_guard;
mod replay;
mod shared;

use std::sync::Arc;
#[cfg(feature = "fetch")]
use std::time::Duration;

use baton_proto::SpiffeId;
use baton_proto::claims::{
    AccessTokenClaims, MAX_CLOCK_LEEWAY_SECS, MAX_TOKEN_BYTES, MAX_TOKEN_TTL_SECS,
};
use baton_proto::json::{UniqueJsonError, from_slice_unique};
use baton_proto::jwks::Jwks;
use serde::Deserialize;

pub use error::{BuildError, VerifyError};
#[cfg(feature = "client")]
pub use introspection::IntrospectionReplayGuard;
#[cfg(feature = "redis")]
pub use redis_guard::{RedisGuardBuilder, RedisGuardError, RedisReplayGuard};
pub use replay::{LocalReplayGuard, ReplayError, ReplayGuard};
pub use shared::{
    GuardFuture, GuardUnavailable, Presentation, SharedReplayError, SharedReplayGuard,
};

use jws::{Compact, Header};
use keys::{KeyStore, KeyTrust, MAX_JWKS_BYTES, TrustedSet};

/// Longest `jti` accepted, in bytes: it is stored by the replay guard.
const MAX_JTI_BYTES: usize = 256;

/// A caller whose token verified: who it is and what it was granted.
///
/// ```
/// # use baton_sdk::VerifiedCaller;
/// fn handle(caller: &VerifiedCaller) -> Result<(), &'static str> {
///     if !caller.has_scope("payments:charge") {
///         return Err("insufficient_scope");
///     }
///     println!("charge requested by {}", caller.id);
///     Ok(())
/// }
/// # let caller = VerifiedCaller {
/// #     id: "spiffe://example.org/fn/orders".parse().unwrap(),
/// #     scopes: vec!["payments:charge".into()],
/// #     session_id: "s".into(), jti: "j".into(), issued_at: 0, expires_at: 60,
/// #     cnf_x5t_s256: None,
/// # };
/// # assert_eq!(handle(&caller), Ok(()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    /// The caller's SPIFFE ID (`sub`, equal to `client_id`).
    pub id: SpiffeId,
    /// Granted scopes (`scope`), in token order without duplicates; empty when none.
    pub scopes: Vec<String>,
    /// The session the token was minted in (`sid`): tokens of one attestation share it.
    pub session_id: String,
    /// The token's unique id (`jti`), now consumed. Log this, never the token.
    pub jti: String,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `cnf.x5t#S256` (RFC 8705 §3.1) when the token is bound to the caller's
    /// certificate: compare it with the thumbprint of the client certificate of an
    /// mTLS connection to enforce the binding.
    pub cnf_x5t_s256: Option<String>,
}

impl VerifiedCaller {
    /// Whether `scope` was granted (exact, case-sensitive match, RFC 6749 §3.3).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Verifies Baton access tokens addressed to one callee.
///
/// Build one at start with [`Verifier::builder`], share it behind an [`Arc`] (it is
/// `Send + Sync`), and call [`verify`](Self::verify) for each request: it is
/// synchronous, makes no network call, and returns the [`VerifiedCaller`] or the
/// [`VerifyError`] naming the rule the token broke. Each token is accepted once
/// (default guard: once per process, see [`LocalReplayGuard`]).
///
/// ```
/// # mod support { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_support/mod.rs")); }
/// # use support::*;
/// # let ca = Ca::new(TD);
/// # let signer = ca.signer(Alg::Es256);
/// # let bundle_pem = ca.pem.clone();
/// # let jwks_json = jwks(&[signer.jwk()]);
/// # let token = signer.token(&claims(unix_now()));
/// use baton_sdk::{SpiffeId, Verifier, VerifyError};
///
/// let me: SpiffeId = "spiffe://example.org/fn/payments".parse()?;
/// let verifier = Verifier::builder("https://baton.example.org", me, bundle_pem.as_bytes())?
///     .jwks(&jwks_json)?
///     .build()?;
///
/// let caller = verifier.verify(&token)?;
/// assert_eq!(caller.id.as_str(), "spiffe://example.org/fn/orders");
///
/// // One-time: the second presentation of the same token is refused.
/// assert_eq!(verifier.verify(&token), Err(VerifyError::Replayed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Verifier {
    issuer: String,
    audience: SpiffeId,
    leeway: i64,
    keys: Arc<KeyStore>,
    replay: Arc<dyn ReplayGuard>,
    /// When set, tokens are consumed here instead, by `verify_async` only.
    shared: Option<Arc<dyn SharedReplayGuard>>,
    #[cfg(feature = "fetch")]
    refresher: Option<Refresher>,
}

/// A token that passed every check but the replay guard.
struct Checked {
    claims: AccessTokenClaims,
    scopes: Vec<String>,
    /// `exp` plus the leeway: when the replay guard may forget the `jti`.
    keep_until: i64,
}

impl Checked {
    fn into_caller(self) -> VerifiedCaller {
        let claims = self.claims;
        VerifiedCaller {
            id: claims.sub,
            scopes: self.scopes,
            session_id: claims.sid,
            jti: claims.jti,
            issued_at: claims.iat,
            expires_at: claims.exp,
            cnf_x5t_s256: claims.cnf.map(|cnf| cnf.x5t_s256),
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("keys", &self.keys)
            .field("replay", &self.replay)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Starts building a verifier for tokens minted by `issuer` (the issuer URL,
    /// compared exactly with `iss`) for `audience` (this service's own SPIFFE ID),
    /// whose signing keys are certified by the CA certificates in `bundle_pem`.
    ///
    /// Keys come from a JWKS document ([`VerifierBuilder::jwks`], then
    /// [`build`](VerifierBuilder::build)) or from the issuer
    /// (`build_fetching`, feature `fetch`).
    pub fn builder(
        issuer: impl Into<String>,
        audience: SpiffeId,
        bundle_pem: &[u8],
    ) -> Result<VerifierBuilder, BuildError> {
        let issuer = issuer.into();
        if issuer.is_empty() {
            return Err(BuildError::EmptyIssuer);
        }
        let trust = KeyTrust::new(bundle_pem, &audience.trust_domain())?;
        Ok(VerifierBuilder {
            issuer,
            audience,
            trust: Arc::new(trust),
            static_keys: None,
            replay: None,
            shared: None,
            leeway: MAX_CLOCK_LEEWAY_SECS,
            #[cfg(feature = "fetch")]
            fetch: FetchOptions::default(),
        })
    }

    /// Verifies `token` at the system clock's time; see [`verify_at`](Self::verify_at).
    pub fn verify(&self, token: &str) -> Result<VerifiedCaller, VerifyError> {
        self.verify_at(token, unix_now())
    }

    /// Verifies `token` as of `now` (Unix seconds) and consumes its `jti`.
    ///
    /// Every rejection rule of SPEC §4 applies, in this order, and the first that
    /// fails is returned: size ≤ 8 KiB → three base64url segments → header (`alg`
    /// `ES256` or `EdDSA` only, `typ` `at+jwt`, `kid` present; embedded `jwk`, `x5c`,
    /// `jku` are ignored) → key by `kid` → `alg` equals the key's own → signature →
    /// claims → `iss` → `aud` → `exp` → `nbf`, `iat` → lifetime ≤ 300 s → `jti` →
    /// replay guard. The clock is injected for tests and replays of recorded traffic;
    /// services call [`verify`](Self::verify). Never makes a network call: with fetched keys, an
    /// unknown `kid` returns [`VerifyError::UnknownKey`] and asks the background task
    /// for a rate-limited refresh.
    ///
    /// A verifier built with a
    /// [`shared_replay_guard`](VerifierBuilder::shared_replay_guard) refuses every
    /// token here with [`VerifyError::AsyncVerificationRequired`]: only
    /// [`verify_async`](Self::verify_async) consults that guard, and skipping it
    /// would silently weaken "once across replicas" to "once per process".
    pub fn verify_at(&self, token: &str, now: i64) -> Result<VerifiedCaller, VerifyError> {
        if self.shared.is_some() {
            return Err(VerifyError::AsyncVerificationRequired);
        }
        let checked = self.check(token, now)?;
        // Last, so a token that fails any check above leaves its jti unused. The guard
        // remembers the jti until this verifier would refuse the token anyway.
        self.replay
            .consume(&checked.claims.jti, checked.keep_until, now)
            .map_err(|e| match e {
                ReplayError::Replayed => VerifyError::Replayed,
                ReplayError::Unavailable => VerifyError::ReplayGuardUnavailable,
            })?;
        Ok(checked.into_caller())
    }

    /// Verifies `token` at the system clock's time, consuming it in the shared replay
    /// guard when one is configured; see [`verify_async_at`](Self::verify_async_at).
    ///
    /// ```
    /// # mod support { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_support/mod.rs")); }
    /// # use support::*;
    /// # let ca = Ca::new(TD);
    /// # let signer = ca.signer(Alg::Es256);
    /// # let bundle_pem = ca.pem.clone();
    /// # let jwks_json = jwks(&[signer.jwk()]);
    /// # let token = signer.token(&claims(unix_now()));
    /// # tokio::runtime::Runtime::new()?.block_on(async {
    /// use baton_sdk::{Verifier, VerifyError};
    ///
    /// // With the default local guard, verify_async is verify, awaited.
    /// let verifier = Verifier::builder("https://baton.example.org", "spiffe://example.org/fn/payments".parse()?, bundle_pem.as_bytes())?
    ///     .jwks(&jwks_json)?
    ///     .build()?;
    /// let caller = verifier.verify_async(&token).await?;
    /// assert_eq!(caller.id.as_str(), "spiffe://example.org/fn/orders");
    /// assert_eq!(verifier.verify_async(&token).await, Err(VerifyError::Replayed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn verify_async(&self, token: &str) -> Result<VerifiedCaller, VerifyError> {
        self.verify_async_at(token, unix_now()).await
    }

    /// Verifies `token` as of `now` (Unix seconds) like [`verify_at`](Self::verify_at),
    /// then consumes its `jti` in the shared replay guard, if the verifier has one
    /// (else in its local guard, with no network call).
    ///
    /// Every local check runs first, so a token that fails one never reaches the
    /// guard. The guard's answer maps to [`VerifyError::Replayed`],
    /// [`VerifyError::Inactive`] (introspection), [`VerifyError::PredatesReplayLedger`]
    /// (Redis lost its data after the token was issued) or
    /// [`VerifyError::SharedGuardUnavailable`] (fail closed: the token is refused).
    /// An unknown `kid` is handled as in `verify_at`.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "redis", feature = "fetch"))]
    /// # async fn example(redis_url: &str, bundle_pem: &[u8], token: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use baton_sdk::{RedisReplayGuard, Verifier};
    ///
    /// let guard = RedisReplayGuard::connect(redis_url).await?;
    /// let verifier = Verifier::builder("https://baton.example.org", "spiffe://example.org/fn/payments".parse()?, bundle_pem)?
    ///     .shared_replay_guard(Arc::new(guard))
    ///     .build_fetching()
    ///     .await?;
    /// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    /// let caller = verifier.verify_async_at(token, now).await?;
    /// # let _ = caller;
    /// # Ok(()) }
    /// ```
    pub async fn verify_async_at(
        &self,
        token: &str,
        now: i64,
    ) -> Result<VerifiedCaller, VerifyError> {
        let Some(guard) = &self.shared else {
            return self.verify_at(token, now);
        };
        let checked = self.check(token, now)?;
        let presentation = Presentation {
            token,
            audience: &self.audience,
            jti: &checked.claims.jti,
            issued_at: checked.claims.iat,
            expires_at: checked.claims.exp,
            keep_until: checked.keep_until,
            now,
        };
        guard.consume(presentation).await.map_err(|e| match e {
            SharedReplayError::Replayed => VerifyError::Replayed,
            SharedReplayError::Inactive => VerifyError::Inactive,
            SharedReplayError::PredatesEpoch => VerifyError::PredatesReplayLedger,
            SharedReplayError::Unavailable(why) => VerifyError::SharedGuardUnavailable(why),
        })?;
        Ok(checked.into_caller())
    }

    /// Every check but the replay guard, in SPEC §4 order.
    fn check(&self, token: &str, now: i64) -> Result<Checked, VerifyError> {
        // Shape: bounded before anything is decoded.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let jws = Compact::split(token)?;
        let header_json = jws::decode(jws.header_b64, "the header is not base64url")?;
        let claims_json = jws::decode(jws.payload_b64, "the claims are not base64url")?;
        let header = Header::parse(&header_json)?;

        // kid is attacker-controlled: it is only ever a cache lookup.
        let key = self
            .keys
            .get(&header.kid, now)
            .inspect_err(|_| self.want_refresh())?;
        if header.alg != key.alg() {
            return Err(VerifyError::AlgorithmMismatch);
        }
        let signature = jws.signature().ok_or(VerifyError::BadSignature)?;
        if !key.verify(jws.signing_input, signature) {
            return Err(VerifyError::BadSignature);
        }

        // Authenticated from here on: only now are the claims read.
        let claims = parse_claims(&claims_json)?;
        self.check_claims(&claims, now)?;
        let scopes = match claims.scopes() {
            Ok(scope) => scope.map_or_else(Vec::new, |s| s.iter().map(str::to_owned).collect()),
            Err(_) => return Err(VerifyError::Malformed("scope is not an RFC 6749 scope")),
        };
        let keep_until = claims.exp.saturating_add(self.leeway);
        Ok(Checked {
            claims,
            scopes,
            keep_until,
        })
    }

    /// RFC 9068 §4 / RFC 7519 §4.1 with the SPEC §4 limits, in go-spiffe's order.
    fn check_claims(&self, claims: &AccessTokenClaims, now: i64) -> Result<(), VerifyError> {
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(VerifyError::WrongAudience);
        }
        // RFC 9068 §2.2: for client credentials both name the client; an issuer that
        // makes them differ is not one Baton knows how to read.
        if claims.sub != claims.client_id {
            return Err(VerifyError::Malformed("sub and client_id differ"));
        }
        // A Baton issuer mints for callers of its own trust domain only; a signing key
        // that vouches for another's callers is not one to believe.
        if claims.sub.trust_domain_name() != self.audience.trust_domain_name() {
            return Err(VerifyError::Malformed("sub is of another trust domain"));
        }
        if claims.exp <= now.saturating_sub(self.leeway) {
            return Err(VerifyError::Expired);
        }
        let horizon = now.saturating_add(self.leeway);
        if claims.nbf > horizon {
            return Err(VerifyError::NotYetValid);
        }
        if claims.iat > horizon {
            return Err(VerifyError::IssuedInFuture);
        }
        match claims.exp.checked_sub(claims.iat) {
            Some(lifetime) if lifetime <= 0 => {
                return Err(VerifyError::Malformed("exp is not later than iat"));
            }
            Some(lifetime) if lifetime <= MAX_TOKEN_TTL_SECS as i64 => {}
            _ => return Err(VerifyError::LifetimeTooLong),
        }
        if claims.jti.is_empty() {
            return Err(VerifyError::MissingJti);
        }
        if claims.jti.len() > MAX_JTI_BYTES {
            return Err(VerifyError::Malformed("jti is longer than 256 bytes"));
        }
        Ok(())
    }

    /// The SPIFFE ID tokens must be addressed to (`aud`): this service's own.
    pub fn audience(&self) -> &SpiffeId {
        &self.audience
    }

    /// The issuer identifier tokens must carry in `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many keys of the last loaded JWKS failed the trust checks and are not used
    /// (wrong chain, not the token signer, key not matching its certificate, …). A
    /// non-zero value deserves an operator's look; verification does not depend on it.
    pub fn untrusted_keys(&self) -> usize {
        self.keys.untrusted()
    }

    /// Refetches the issuer's keys now, unless a fetch started less than
    /// `min_refresh_interval` ago (then it returns `Ok` at once: the keys are as fresh
    /// as the rate limit allows). For an async caller that met
    /// [`VerifyError::UnknownKey`] and wants to retry once; a verifier with static
    /// keys has nothing to refresh and returns `Ok`.
    ///
    /// ```no_run
    /// # async fn example(verifier: &baton_sdk::Verifier, token: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use baton_sdk::VerifyError;
    /// let caller = match verifier.verify(token) {
    ///     Err(VerifyError::UnknownKey) => {
    ///         verifier.refresh().await?;
    ///         verifier.verify(token)?
    ///     }
    ///     other => other?,
    /// };
    /// # let _ = caller; Ok(()) }
    /// ```
    #[cfg(feature = "fetch")]
    pub async fn refresh(&self) -> Result<(), BuildError> {
        match &self.refresher {
            Some(refresher) => refresher.fetcher.refresh().await,
            None => Ok(()),
        }
    }

    fn want_refresh(&self) {
        #[cfg(feature = "fetch")]
        if let Some(refresher) = &self.refresher {
            refresher.fetcher.want_refresh();
        }
    }
}

/// The system clock in Unix seconds; 0 if it reads before 1970, which makes every
/// certificate and token look not yet valid (fails closed).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The claims, with a missing `jti` or a repeated claim told apart from a broken
/// claim set.
fn parse_claims(json: &[u8]) -> Result<AccessTokenClaims, VerifyError> {
    // RFC 7519 §4: claim names are unique; one parse checks them as it reads.
    from_slice_unique::<AccessTokenClaims>(json).map_err(|e| {
        if let UniqueJsonError::DuplicateMember = e {
            return VerifyError::Malformed("the claims have a duplicate member (RFC 7519 §4)");
        }
        // Only on failure, so the hot path parses once.
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            jti: Option<serde::de::IgnoredAny>,
            #[serde(default)]
            aud: Option<serde_json::Value>,
        }
        match from_slice_unique::<Probe>(json) {
            // RFC 9068 allows an array; SPEC §4 does not: one token, one callee.
            Ok(Probe {
                aud: Some(serde_json::Value::Array(_)),
                ..
            }) => VerifyError::Malformed("aud is an array; a Baton token names one audience"),
            Ok(Probe { jti: None, .. }) => VerifyError::MissingJti,
            _ => VerifyError::Malformed("the claims are not a Baton access token's claim set"),
        }
    })
}

/// Configures a [`Verifier`]; made by [`Verifier::builder`].
///
/// ```
/// # mod support { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_support/mod.rs")); }
/// # use support::*;
/// # let ca = Ca::new(TD);
/// # let dir = std::env::temp_dir().join(format!("baton-sdk-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # std::fs::write(dir.join("bundle.pem"), &ca.pem)?;
/// # std::fs::write(dir.join("jwks.json"), jwks(&[ca.signer(Alg::EdDsa).jwk()]))?;
/// use std::sync::Arc;
/// use baton_sdk::{LocalReplayGuard, Verifier};
///
/// // `baton token verify --jwks FILE`: keys from a file instead of the issuer.
/// let bundle = std::fs::read(dir.join("bundle.pem"))?;
/// let verifier = Verifier::builder("https://baton.example.org", "spiffe://example.org/fn/payments".parse()?, &bundle)?
///     .jwks(&std::fs::read(dir.join("jwks.json"))?)?
///     .leeway(2)
///     .replay_guard(Arc::new(LocalReplayGuard::with_capacity(10_000)))
///     .build()?;
/// assert_eq!(verifier.issuer(), "https://baton.example.org");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct VerifierBuilder {
    issuer: String,
    audience: SpiffeId,
    trust: Arc<KeyTrust>,
    static_keys: Option<TrustedSet>,
    replay: Option<Arc<dyn ReplayGuard>>,
    shared: Option<Arc<dyn SharedReplayGuard>>,
    leeway: u64,
    #[cfg(feature = "fetch")]
    fetch: FetchOptions,
}

#[cfg(feature = "fetch")]
#[derive(Debug)]
struct FetchOptions {
    url: Option<String>,
    client: Option<reqwest::Client>,
    max_stale: Duration,
    min_refresh_interval: Duration,
}

#[cfg(feature = "fetch")]
impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            url: None,
            client: None,
            max_stale: VerifierBuilder::DEFAULT_MAX_STALE,
            min_refresh_interval: VerifierBuilder::DEFAULT_MIN_REFRESH_INTERVAL,
        }
    }
}

impl VerifierBuilder {
    /// Default [`max_stale`](Self::max_stale): 15 minutes. While the issuer is down
    /// no new tokens are minted either, so a longer bound mostly serves a network
    /// partition between this service and the issuer.
    #[cfg(feature = "fetch")]
    pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(15 * 60);
    /// Default [`min_refresh_interval`](Self::min_refresh_interval): 10 seconds.
    #[cfg(feature = "fetch")]
    pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

    /// Uses the keys of a JWKS document (`GET /.well-known/jwks.json` saved to a file,
    /// for instance) for the verifier's lifetime, with no fetching.
    ///
    /// Each key is checked now (chain to the bundle, reserved token-signer ID, key
    /// matching its certificate); keys that fail are skipped, and it is an error only
    /// when none passes. Keys are still refused at verify time once their certificate
    /// has expired.
    pub fn jwks(mut self, jwks_json: &[u8]) -> Result<Self, BuildError> {
        if jwks_json.len() > MAX_JWKS_BYTES {
            return Err(BuildError::JwksTooLarge {
                limit: MAX_JWKS_BYTES,
            });
        }
        let jwks: Jwks = serde_json::from_slice(jwks_json).map_err(BuildError::Jwks)?;
        self.static_keys = Some(self.trust.check_set(&jwks, unix_now(), None)?);
        Ok(self)
    }

    /// Replaces the default replay guard (a [`LocalReplayGuard`] of default capacity,
    /// one per verifier) with another synchronous one, consulted by
    /// [`Verifier::verify`] with no network call. For one-time use across replicas,
    /// use [`shared_replay_guard`](Self::shared_replay_guard) instead.
    pub fn replay_guard(mut self, guard: Arc<dyn ReplayGuard>) -> Self {
        self.replay = Some(guard);
        self
    }

    /// Consumes tokens in a shared replay guard instead of the local one, so each is
    /// accepted once across every verifier sharing its store: a
    /// [`RedisReplayGuard`](crate::RedisReplayGuard) (feature `redis`) or an
    /// [`IntrospectionReplayGuard`](crate::IntrospectionReplayGuard) (feature `client`).
    ///
    /// A shared guard is a network call: verify with
    /// [`Verifier::verify_async`]; the synchronous [`Verifier::verify`] of such a
    /// verifier refuses every token with [`VerifyError::AsyncVerificationRequired`]
    /// rather than skip the guard. Excludes [`replay_guard`](Self::replay_guard)
    /// ([`BuildError::ConflictingReplayGuards`]).
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "client", feature = "fetch"))]
    /// # async fn example(bundle_pem: &[u8], client: baton_sdk::TokenClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use baton_sdk::{IntrospectionReplayGuard, Verifier};
    ///
    /// // The callee's own TokenClient: it introspects as the token's audience.
    /// let guard = IntrospectionReplayGuard::new(client.clone());
    /// let verifier = Verifier::builder("https://baton.example.org", client.id().clone(), bundle_pem)?
    ///     .shared_replay_guard(Arc::new(guard))
    ///     .build_fetching()
    ///     .await?;
    /// # let _ = verifier; Ok(()) }
    /// ```
    pub fn shared_replay_guard(mut self, guard: Arc<dyn SharedReplayGuard>) -> Self {
        self.shared = Some(guard);
        self
    }

    /// The local guard (default: a [`LocalReplayGuard`] of default capacity) and the
    /// shared one, if any; never both configured.
    #[allow(clippy::type_complexity)]
    fn guards(
        replay: Option<Arc<dyn ReplayGuard>>,
        shared: Option<Arc<dyn SharedReplayGuard>>,
    ) -> Result<(Arc<dyn ReplayGuard>, Option<Arc<dyn SharedReplayGuard>>), BuildError> {
        match (replay, shared) {
            (Some(_), Some(_)) => Err(BuildError::ConflictingReplayGuards),
            // With a shared guard the local one is never consulted: keep an empty one
            // rather than an Option, so verify_at stays branch-free past its first line.
            (None, Some(shared)) => {
                Ok((Arc::new(LocalReplayGuard::with_capacity(0)), Some(shared)))
            }
            (replay, None) => Ok((
                replay.unwrap_or_else(|| Arc::new(LocalReplayGuard::new())),
                None,
            )),
        }
    }

    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (default and
    /// maximum: 5, SPEC §4; larger values are clamped to 5).
    pub fn leeway(mut self, secs: u64) -> Self {
        self.leeway = secs.min(MAX_CLOCK_LEEWAY_SECS);
        self
    }

    /// How long past the JWKS `max-age` the last fetched keys stay in use while the
    /// issuer cannot be reached (default [`DEFAULT_MAX_STALE`](Self::DEFAULT_MAX_STALE)).
    /// After that, verification fails closed with [`VerifyError::KeysUnavailable`].
    #[cfg(feature = "fetch")]
    pub fn max_stale(mut self, bound: Duration) -> Self {
        self.fetch.max_stale = bound;
        self
    }

    /// Least time between two fetches caused by unknown `kid`s or
    /// [`Verifier::refresh`] (default
    /// [`DEFAULT_MIN_REFRESH_INTERVAL`](Self::DEFAULT_MIN_REFRESH_INTERVAL)): however
    /// many unknown kids an attacker sends, the issuer sees at most one request per
    /// interval from this verifier.
    #[cfg(feature = "fetch")]
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.fetch.min_refresh_interval = interval;
        self
    }

    /// Where to fetch the JWKS (default: `<issuer>/.well-known/jwks.json`). Any
    /// transport will do, plain HTTP included: every key is trusted for its
    /// certificate, not for where it came from (SPEC §2).
    #[cfg(feature = "fetch")]
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.fetch.url = Some(url.into());
        self
    }

    /// The HTTP client for JWKS fetches (default: rustls with ring, trusting only the
    /// trust bundle, 10 s timeout).
    #[cfg(feature = "fetch")]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.fetch.client = Some(client);
        self
    }

    /// Builds a verifier with the static keys given to [`jwks`](Self::jwks).
    pub fn build(self) -> Result<Verifier, BuildError> {
        let (replay, shared) = Self::guards(self.replay, self.shared)?;
        let set = self.static_keys.ok_or(BuildError::NoKeySource)?;
        Ok(Verifier {
            issuer: self.issuer,
            audience: self.audience,
            leeway: self.leeway as i64,
            keys: Arc::new(KeyStore::new(set, None)),
            replay,
            shared,
            #[cfg(feature = "fetch")]
            refresher: None,
        })
    }

    /// Fetches the issuer's JWKS once (failing if that fetch fails or yields no trusted
    /// key), then builds a verifier whose keys a background Tokio task keeps fresh:
    /// refreshed before the `Cache-Control: max-age` runs out, served stale up to
    /// [`max_stale`](Self::max_stale) while the issuer is unreachable, and refetched
    /// on an unknown `kid` at most once per
    /// [`min_refresh_interval`](Self::min_refresh_interval). The task stops when the
    /// verifier is dropped.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use baton_sdk::Verifier;
    ///
    /// let bundle = std::fs::read("bundle.pem")?;
    /// let verifier = Verifier::builder("https://127.0.0.1:8443", "spiffe://example.org/fn/payments".parse()?, &bundle)?
    ///     .max_stale(Duration::from_secs(600))
    ///     .build_fetching()
    ///     .await?;
    /// # let _ = verifier; Ok(()) }
    /// ```
    #[cfg(feature = "fetch")]
    pub async fn build_fetching(self) -> Result<Verifier, BuildError> {
        if self.static_keys.is_some() {
            return Err(BuildError::ConflictingKeySources);
        }
        let (replay, shared) = Self::guards(self.replay, self.shared)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let client = match self.fetch.client {
            Some(client) => client,
            None => fetch::default_client(&self.trust)?,
        };
        let url = self.fetch.url.unwrap_or_else(|| {
            format!(
                "{}{}",
                self.issuer.trim_end_matches('/'),
                baton_proto::metadata::JWKS_PATH
            )
        });
        let config = fetch::FetchConfig {
            url,
            client,
            max_stale: self.fetch.max_stale,
            min_refresh_interval: self.fetch.min_refresh_interval,
        };
        let (fetcher, keys) = fetch::Fetcher::start(config, self.trust).await?;
        let task = runtime.spawn(Arc::clone(&fetcher).run());
        Ok(Verifier {
            issuer: self.issuer,
            audience: self.audience,
            leeway: self.leeway as i64,
            keys,
            replay,
            shared,
            refresher: Some(Refresher {
                fetcher,
                task: task.abort_handle(),
            }),
        })
    }
}

/// The background refresh of a fetching verifier; stopped when the verifier drops.
#[cfg(feature = "fetch")]
struct Refresher {
    fetcher: Arc<fetch::Fetcher>,
    task: tokio::task::AbortHandle,
}

#[cfg(feature = "fetch")]
impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIMS: &str = r#""iss":"https://baton.example.org","sub":"spiffe://example.org/fn/orders","client_id":"spiffe://example.org/fn/orders","aud":"spiffe://example.org/fn/payments","iat":1700000000,"nbf":1700000000,"exp":1700000060,"jti":"AAAA","sid":"s1""#;

    fn claims(extra: &str) -> Result<AccessTokenClaims, VerifyError> {
        parse_claims(format!("{{{extra}{CLAIMS}}}").as_bytes())
    }

    #[test]
    fn claims_parse_once_and_refuse_any_repeated_name() {
        assert_eq!(claims("").unwrap().jti, "AAAA");
        assert_eq!(claims(r#""role":"x","#).unwrap().jti, "AAAA");
        // Each repeats a claim that follows: "first one wins" and "last one wins"
        // readers would disagree, so the token means nothing.
        for extra in [
            r#""aud":"spiffe://example.org/fn/ledger","#,
            r#""sub":"spiffe://example.org/fn/ledger","#,
            r#""exp":1,"#,
            r#""j\u0074i":"BBBB","#,
            r#""role":"admin","role":"user","#,
        ] {
            assert_eq!(
                claims(extra),
                Err(VerifyError::Malformed(
                    "the claims have a duplicate member (RFC 7519 §4)"
                )),
                "{extra}"
            );
        }
    }

    #[test]
    fn broken_claims_are_told_apart_on_the_failure_path_only() {
        let no_jti = CLAIMS.replace(r#","jti":"AAAA""#, "");
        assert_eq!(
            parse_claims(format!("{{{no_jti}}}").as_bytes()),
            Err(VerifyError::MissingJti)
        );
        let many = CLAIMS.replace(
            r#""aud":"spiffe://example.org/fn/payments""#,
            r#""aud":["spiffe://example.org/fn/payments"]"#,
        );
        assert_eq!(
            parse_claims(format!("{{{many}}}").as_bytes()),
            Err(VerifyError::Malformed(
                "aud is an array; a Baton token names one audience"
            ))
        );
        for json in ["[]", r#"["AAAA"]"#, "", "{", r#"{"jti":1}"#] {
            assert_eq!(
                parse_claims(json.as_bytes()),
                Err(VerifyError::Malformed(
                    "the claims are not a Baton access token's claim set"
                )),
                "{json}"
            );
        }
    }
}
