//! Caller side (SPEC §8): [`TokenClient`] gets fresh one-time tokens from a Baton
//! issuer, attesting with the workload certificate over mTLS or with a signed RFC 7523
//! assertion (SPEC §3), optionally from a small pool filled by batch mints. Built from
//! files, it uses that certificate as is; built from a join token, it generates its
//! key in memory, fetches its certificate and renews it before expiry.
//!
//! The pieces, one job each: `identity` parses and checks the certificate and key,
//! `key` holds the parsed ring key or generates one, `csr` writes certificate requests,
//! `svid` checks the certificates the issuer sends, `assertion` signs assertions,
//! `transport` speaks HTTPS to the token and SVID endpoints, `pool` keeps prefetched
//! tokens, `join` builds a client from a join token, `renew` keeps its certificate
//! fresh.

mod assertion;
mod csr;
mod error;
mod identity;
mod join;
mod key;
mod pool;
mod renew;
mod svid;
mod transport;

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_proto::SpiffeId;
use baton_proto::claims::{CLIENT_ASSERTION_TYPE, GRANT_TYPE_CLIENT_CREDENTIALS, MAX_BATCH_COUNT};
use baton_proto::metadata::{INTROSPECT_PATH, SVID_PATH, TOKEN_PATH};
use baton_proto::requests::{IntrospectRequest, TokenRequest};
use baton_proto::responses::IntrospectionResponse;
use ring::rand::SystemRandom;

pub use error::{ConfigError, SvidError, TokenError};
pub use join::JoinBuilder;
pub use key::KeyType;
pub use renew::{CertificateStatus, RenewalEvent};

use assertion::AssertionSigner;
use identity::WorkloadIdentity;
use pool::Pool;
use renew::Renewal;
use transport::{Endpoints, Urls};

/// Default for [`TokenClientBuilder::min_remaining`].
const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(10);
/// Default for [`TokenClientBuilder::timeout`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// How a [`TokenClient`] proves its identity to the issuer (SPEC §3). Each request
/// uses exactly one method, as RFC 6749 §2.3 requires.
///
/// ```
/// use baton_sdk::Auth;
/// assert_eq!(Auth::default(), Auth::Mtls);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    /// RFC 8705 `tls_client_auth`: the HTTPS connection presents the workload
    /// certificate and key. Tokens come bound to the certificate (`cnf`).
    #[default]
    Mtls,
    /// RFC 7523 `private_key_jwt`: the connection presents no certificate; every
    /// request carries a freshly signed, single-use client assertion. Works through
    /// TLS-terminating proxies.
    Assertion,
}

/// Gets fresh one-time tokens for this workload from a Baton issuer.
///
/// Built once from the workload certificate chain, its private key, the trust bundle
/// and the issuer URL ([`builder`](Self::builder)), or from a join token
/// ([`join`](Self::join)), in which case it also renews its certificate in the
/// background for as long as any clone of it lives. Cheap to clone (clones share one
/// HTTPS connection pool, the parsed key, the token pool and the renewal) and safe to
/// use from many tasks at once.
///
/// ```no_run
/// use baton_sdk::{Auth, SpiffeId, TokenClient};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = TokenClient::builder(
///     "https://baton.example.org",
///     &std::fs::read("bundle.pem")?,
///     &std::fs::read("orders/svid.pem")?,
///     &std::fs::read("orders/svid.key")?,
/// )
/// .auth(Auth::Assertion)
/// .pool(8)
/// .build()?;
///
/// let payments: SpiffeId = "spiffe://example.org/fn/payments".parse()?;
/// let token = client.token_for(&payments).await?;
/// // Send it once, as `Authorization: Bearer <token>`.
/// # let _ = token;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenClient {
    inner: Arc<Inner>,
}

struct Inner {
    id: SpiffeId,
    issuer: String,
    auth: Auth,
    /// Everything that depends on the certificate, replaced whole on renewal. A mint
    /// loads the `Arc` once and uses it to the end, so it never mixes two certificates.
    credentials: RwLock<Arc<Credentials>>,
    pool: Option<Pool>,
    /// Present on a client built from a join token.
    renewal: Option<Renewal>,
}

/// What a client attests with: one certificate's HTTPS client and assertion signer.
struct Credentials {
    /// The HTTPS client: for mTLS it presents the certificate.
    endpoints: Endpoints,
    /// `None` for mTLS, where the HTTPS client itself carries the certificate.
    signer: Option<AssertionSigner>,
    serial: String,
    not_after: i64,
}

/// What building credentials for a new certificate needs besides the certificate.
#[derive(Debug)]
struct Transport {
    roots: rustls::RootCertStore,
    urls: Urls,
    timeout: Duration,
}

impl Credentials {
    /// The credentials of `identity` for attesting with `auth` to `issuer`. An
    /// assertion client presents no certificate, so it reuses `plain` when given.
    fn new(
        auth: Auth,
        identity: WorkloadIdentity,
        issuer: &str,
        transport: &Transport,
        plain: Option<reqwest::Client>,
    ) -> Result<Self, TokenError> {
        let WorkloadIdentity {
            id,
            chain,
            key,
            key_der,
            serial,
            not_after,
        } = identity;
        // Each client keeps only what its method needs: mTLS hands the key to rustls,
        // assertions keep the parsed ring key and present no certificate.
        let (http, signer) = match auth {
            Auth::Mtls => (
                transport::https_client(
                    transport.roots.clone(),
                    Some((chain, key_der.clone_key())),
                    transport.timeout,
                )?,
                None,
            ),
            Auth::Assertion => {
                let signer = AssertionSigner::new(id, key, &chain, issuer.to_owned())?;
                let http = match plain {
                    Some(http) => http,
                    None => {
                        transport::https_client(transport.roots.clone(), None, transport.timeout)?
                    }
                };
                (http, Some(signer))
            }
        };
        Ok(Self {
            endpoints: Endpoints::new(http, transport.urls.clone()),
            signer,
            serial,
            not_after,
        })
    }
}

impl Inner {
    fn new(
        id: SpiffeId,
        issuer: String,
        auth: Auth,
        credentials: Credentials,
        options: &Options,
        renewal: Option<Renewal>,
    ) -> Self {
        Self {
            id,
            issuer,
            auth,
            credentials: RwLock::new(Arc::new(credentials)),
            pool: (options.pool > 1).then(|| Pool::new(options.pool, options.min_remaining)),
            renewal,
        }
    }

    /// The credentials in use now.
    fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(
            &self
                .credentials
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Puts renewed credentials in use; mints in flight keep the ones they loaded.
    fn swap(&self, credentials: Credentials) {
        let mut current = self
            .credentials
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = std::mem::replace(&mut *current, Arc::new(credentials));
        drop(current);
        // The old HTTPS client (and its connections) goes once its last mint is done,
        // never while the lock is held.
        drop(previous);
    }

    fn status(&self) -> CertificateStatus {
        let credentials = self.credentials();
        let mut status = CertificateStatus {
            id: self.id.clone(),
            serial: credentials.serial.clone(),
            not_after: credentials.not_after,
            auto_renew: false,
            renewals: 0,
            consecutive_failures: 0,
            last_error: None,
            next_attempt: None,
        };
        if let Some(renewal) = &self.renewal {
            renewal.describe(&mut status);
        }
        status
    }
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("TokenClient")
            .field("id", &inner.id)
            .field("issuer", &inner.issuer)
            .field("auth", &inner.auth)
            .field("pool", &inner.pool.is_some())
            .field("auto_renew", &inner.renewal.is_some())
            .finish_non_exhaustive()
    }
}

/// The options both builders share.
#[derive(Debug, Clone, Copy)]
struct Options {
    auth: Auth,
    pool: u8,
    min_remaining: Duration,
    timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth: Auth::default(),
            pool: 0,
            min_remaining: DEFAULT_MIN_REMAINING,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Options {
    fn check(&self) -> Result<(), ConfigError> {
        if self.pool > MAX_BATCH_COUNT {
            return Err(ConfigError::PoolSize(self.pool));
        }
        Ok(())
    }
}

impl TokenClient {
    /// Starts building a client for the issuer whose identifier is `issuer_url` (an
    /// `https` URL; its token endpoint is `<issuer_url>/v1/token`), trusting the CA
    /// certificates of `bundle_pem` only, as the workload whose certificate chain
    /// (leaf first) is `cert_chain_pem` and whose PKCS#8 private key is `key_pem`.
    ///
    /// The PEM inputs are parsed right away; errors are reported by
    /// [`TokenClientBuilder::build`].
    ///
    /// ```no_run
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = baton_sdk::TokenClient::builder(
    ///     "https://baton.example.org",
    ///     &std::fs::read("bundle.pem")?,
    ///     &std::fs::read("svid.pem")?,
    ///     &std::fs::read("svid.key")?,
    /// )
    /// .build()?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(
        issuer_url: impl Into<String>,
        bundle_pem: &[u8],
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> TokenClientBuilder {
        let rng = SystemRandom::new();
        TokenClientBuilder {
            issuer_url: issuer_url.into(),
            roots: transport::trust_roots(bundle_pem),
            identity: WorkloadIdentity::from_pem(cert_chain_pem, key_pem, &rng),
            options: Options::default(),
        }
    }

    /// Starts building a client that has no certificate yet: it generates its private
    /// key in memory (never written anywhere), redeems `join_token` — the one-time
    /// token printed by `baton enroll --id ID --join-token` — for a certificate from
    /// `<issuer_url>/v1/svid`, and renews that certificate in the background before it
    /// expires. Only the CA certificates of `bundle_pem` are trusted, for the issuer's
    /// HTTPS certificate and for every workload certificate it sends.
    ///
    /// Nothing happens until [`JoinBuilder::connect`], which makes the one network
    /// call. Surrounding whitespace of `join_token` (a trailing newline from a file) is
    /// ignored; the client keeps no copy of it after `connect`, and never prints it.
    ///
    /// ```no_run
    /// use baton_sdk::{Auth, TokenClient};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = TokenClient::join(
    ///     "https://baton.example.org",
    ///     &std::fs::read("bundle.pem")?,
    ///     std::env::var("BATON_JOIN_TOKEN")?,
    /// )
    /// .auth(Auth::Mtls)
    /// .connect()
    /// .await?;
    /// println!("I am {}", client.id());
    /// # Ok(())
    /// # }
    /// ```
    pub fn join(
        issuer_url: impl Into<String>,
        bundle_pem: &[u8],
        join_token: impl Into<String>,
    ) -> JoinBuilder {
        JoinBuilder::new(issuer_url.into(), bundle_pem, join_token.into())
    }

    /// A fresh one-time token for `audience`, with no scope.
    ///
    /// With a pool, the token may come from an earlier batch, but it is never handed
    /// out twice and has at least [`min_remaining`](TokenClientBuilder::min_remaining)
    /// of validity left; otherwise it is minted for this call.
    ///
    /// ```no_run
    /// # async fn run(client: baton_sdk::TokenClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let payments: baton_sdk::SpiffeId = "spiffe://example.org/fn/payments".parse()?;
    /// let token = client.token_for(&payments).await?;
    /// # let _ = token;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`TokenError::Refused`] when the issuer refuses (for instance
    /// `invalid_target` when policy does not allow the audience),
    /// [`TokenError::Transport`] when it cannot be reached; see [`TokenError`].
    pub async fn token_for(&self, audience: &SpiffeId) -> Result<String, TokenError> {
        self.token(audience, None).await
    }

    /// Like [`token_for`](Self::token_for), asking for `scope` (space-separated
    /// RFC 6749 scope-tokens, each of which the policy must grant).
    ///
    /// ```no_run
    /// # async fn run(client: baton_sdk::TokenClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let payments: baton_sdk::SpiffeId = "spiffe://example.org/fn/payments".parse()?;
    /// let token = client.token_for_scope(&payments, "payments:charge").await?;
    /// # let _ = token;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`token_for`](Self::token_for); a scope the policy does not grant is
    /// [`TokenError::Refused`] with `invalid_scope`.
    pub async fn token_for_scope(
        &self,
        audience: &SpiffeId,
        scope: &str,
    ) -> Result<String, TokenError> {
        self.token(audience, Some(scope)).await
    }

    /// This workload's SPIFFE ID, from its certificate's URI SAN.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let key = rcgen::KeyPair::generate()?;
    /// # let mut params = rcgen::CertificateParams::default();
    /// # params.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org/fn/orders".try_into()?)];
    /// # let cert = params.self_signed(&key)?;
    /// # let (bundle, svid, svid_key) = (cert.pem(), cert.pem(), key.serialize_pem());
    /// let client = baton_sdk::TokenClient::builder(
    ///     "https://baton.example.org",
    ///     bundle.as_bytes(),
    ///     svid.as_bytes(),
    ///     svid_key.as_bytes(),
    /// )
    /// .build()?;
    /// assert_eq!(client.id().as_str(), "spiffe://example.org/fn/orders");
    /// # Ok(())
    /// # }
    /// ```
    pub fn id(&self) -> &SpiffeId {
        &self.inner.id
    }

    /// The issuer identifier, as given to [`builder`](Self::builder) without a
    /// trailing `/`: the `aud` of this client's assertions and the `iss` of its tokens.
    ///
    /// ```no_run
    /// # fn run(client: baton_sdk::TokenClient) {
    /// assert_eq!(client.issuer(), "https://baton.example.org");
    /// # }
    /// ```
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The certificate this client attests with now, and how its renewal is going
    /// (only a client built with [`join`](Self::join) renews).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let key = rcgen::KeyPair::generate()?;
    /// # let mut params = rcgen::CertificateParams::default();
    /// # params.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org/fn/orders".try_into()?)];
    /// # let cert = params.self_signed(&key)?;
    /// # let (bundle, svid, svid_key) = (cert.pem(), cert.pem(), key.serialize_pem());
    /// let client = baton_sdk::TokenClient::builder(
    ///     "https://baton.example.org",
    ///     bundle.as_bytes(),
    ///     svid.as_bytes(),
    ///     svid_key.as_bytes(),
    /// )
    /// .build()?;
    /// let status = client.certificate();
    /// assert_eq!(status.id, *client.id());
    /// assert!(!status.auto_renew);
    /// assert_eq!(status.renewals, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn certificate(&self) -> CertificateStatus {
        self.inner.status()
    }

    async fn token(&self, audience: &SpiffeId, scope: Option<&str>) -> Result<String, TokenError> {
        match &self.inner.pool {
            Some(pool) => {
                let key = (audience.clone(), scope.map(str::to_owned));
                pool.take(key, unix_now, |count| self.mint(audience, scope, count))
                    .await
            }
            None => self
                .mint(audience, scope, 1)
                .await?
                .into_iter()
                .next()
                .ok_or(TokenError::Malformed("the issuer returned no token")),
        }
    }

    /// Introspects `token` at the issuer (RFC 7662), attesting as this workload. When
    /// this workload is the token's audience, an active answer is the token's one use
    /// (SPEC §5): the issuer consumes its `jti`.
    pub(crate) async fn introspect(
        &self,
        token: &str,
    ) -> Result<IntrospectionResponse, TokenError> {
        let credentials = self.inner.credentials();
        let assertion = credentials
            .signer
            .as_ref()
            .map(|signer| signer.sign(unix_now()))
            .transpose()?;
        let form = IntrospectRequest {
            token: token.to_owned(),
            token_type_hint: None,
            client_assertion_type: assertion.as_ref().map(|_| CLIENT_ASSERTION_TYPE.to_owned()),
            client_assertion: assertion,
        };
        credentials.endpoints.introspect(&form).await
    }

    /// One request to the token endpoint for `count` tokens.
    async fn mint(
        &self,
        audience: &SpiffeId,
        scope: Option<&str>,
        count: u8,
    ) -> Result<Vec<String>, TokenError> {
        let credentials = self.inner.credentials();
        let assertion = credentials
            .signer
            .as_ref()
            .map(|signer| signer.sign(unix_now()))
            .transpose()?;
        let form = TokenRequest {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIALS.to_owned(),
            audience: audience.as_str().to_owned(),
            scope: scope.map(str::to_owned),
            count: (count > 1).then_some(count),
            client_assertion_type: assertion.as_ref().map(|_| CLIENT_ASSERTION_TYPE.to_owned()),
            client_assertion: assertion,
        };
        credentials.endpoints.token(&form, count).await
    }
}

/// Configures a [`TokenClient`]; made by [`TokenClient::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use baton_sdk::{Auth, TokenClient};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = TokenClient::builder(
///     "https://baton.example.org",
///     &std::fs::read("bundle.pem")?,
///     &std::fs::read("svid.pem")?,
///     &std::fs::read("svid.key")?,
/// )
/// .auth(Auth::Mtls)
/// .pool(16)
/// .min_remaining(Duration::from_secs(15))
/// .timeout(Duration::from_secs(5))
/// .build()?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
pub struct TokenClientBuilder {
    issuer_url: String,
    roots: Result<rustls::RootCertStore, ConfigError>,
    identity: Result<WorkloadIdentity, ConfigError>,
    options: Options,
}

impl fmt::Debug for TokenClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClientBuilder")
            .field("issuer_url", &self.issuer_url)
            .field("auth", &self.options.auth)
            .field("pool", &self.options.pool)
            .field("min_remaining", &self.options.min_remaining)
            .field("timeout", &self.options.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenClientBuilder {
    /// How to attest to the issuer; [`Auth::Mtls`] by default.
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::TokenClientBuilder) {
    /// let builder = builder.auth(baton_sdk::Auth::Assertion);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn auth(mut self, auth: Auth) -> Self {
        self.options.auth = auth;
        self
    }

    /// Keeps a prefetch pool per (audience, scope), refilled by one batch mint of
    /// `size` tokens (at most 64) when it runs dry. `0` (the default) or `1` means no
    /// pool: every call mints one token.
    ///
    /// A pool saves a round trip on most calls at the cost of tokens minted before
    /// they are needed; they stay one-time (each is handed out once) and are dropped
    /// once less than [`min_remaining`](Self::min_remaining) of validity is left.
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::TokenClientBuilder) {
    /// let builder = builder.pool(8);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn pool(mut self, size: u8) -> Self {
        self.options.pool = size;
        self
    }

    /// The least validity a pooled token must have left to be handed out (10 s by
    /// default; rounded up to whole seconds). A token minted for the call itself is
    /// handed out whatever its lifetime, since no fresher one exists.
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::TokenClientBuilder) {
    /// let builder = builder.min_remaining(std::time::Duration::from_secs(20));
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn min_remaining(mut self, min_remaining: Duration) -> Self {
        self.options.min_remaining = min_remaining;
        self
    }

    /// Time allowed for one token request, connecting included (15 s by default).
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::TokenClientBuilder) {
    /// let builder = builder.timeout(std::time::Duration::from_secs(3));
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// Checks the configuration and builds the client. Makes no network call.
    ///
    /// ```
    /// use baton_sdk::{ConfigError, TokenClient, TokenError};
    /// let err = TokenClient::builder("http://baton.example.org", b"", b"", b"")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, TokenError::Config(ConfigError::IssuerUrl(_))));
    /// ```
    ///
    /// # Errors
    /// [`TokenError::Config`] when the issuer URL is not an `https` URL without
    /// credentials, query or fragment; the bundle holds no CA certificate; the chain's
    /// leaf does not carry exactly one URI SAN that is a SPIFFE ID; the key is not a
    /// PKCS#8 P-256 or Ed25519 key, or not the leaf's; or the pool exceeds 64.
    pub fn build(self) -> Result<TokenClient, TokenError> {
        let (issuer, urls) = issuer_urls(&self.issuer_url)?;
        let roots = self.roots?;
        let identity = self.identity?;
        self.options.check()?;
        let id = identity.id.clone();
        let transport = Transport {
            roots,
            urls,
            timeout: self.options.timeout,
        };
        let credentials = Credentials::new(self.options.auth, identity, &issuer, &transport, None)?;
        Ok(TokenClient {
            inner: Arc::new(Inner::new(
                id,
                issuer,
                self.options.auth,
                credentials,
                &self.options,
                None,
            )),
        })
    }
}

/// The issuer identifier (as given, without a trailing `/`) and its endpoints.
fn issuer_urls(issuer_url: &str) -> Result<(String, Urls), ConfigError> {
    let issuer = issuer_url.trim_end_matches('/');
    let url =
        reqwest::Url::parse(issuer).map_err(|_| ConfigError::IssuerUrl("not an absolute URL"))?;
    if url.scheme() != "https" {
        return Err(ConfigError::IssuerUrl("the scheme must be https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::IssuerUrl("must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::IssuerUrl("must not carry a query or fragment"));
    }
    let endpoint = |path: &str| {
        reqwest::Url::parse(&format!("{issuer}{path}"))
            .map_err(|_| ConfigError::IssuerUrl("not an absolute URL"))
    };
    let urls = Urls {
        token: endpoint(TOKEN_PATH)?,
        svid: endpoint(SVID_PATH)?,
        introspect: endpoint(INTROSPECT_PATH)?,
    };
    Ok((issuer.to_owned(), urls))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_identifier_loses_only_its_trailing_slash() {
        let (issuer, urls) = issuer_urls("https://baton.example.org/").unwrap();
        assert_eq!(issuer, "https://baton.example.org");
        assert_eq!(urls.token.as_str(), "https://baton.example.org/v1/token");
        assert_eq!(urls.svid.as_str(), "https://baton.example.org/v1/svid");
        assert_eq!(
            urls.introspect.as_str(),
            "https://baton.example.org/v1/introspect"
        );
        let (issuer, urls) = issuer_urls("https://gw.example.org:8443/baton").unwrap();
        assert_eq!(issuer, "https://gw.example.org:8443/baton");
        assert_eq!(
            urls.token.as_str(),
            "https://gw.example.org:8443/baton/v1/token"
        );
        assert_eq!(
            urls.svid.as_str(),
            "https://gw.example.org:8443/baton/v1/svid"
        );
    }

    #[test]
    fn unusable_issuer_urls_are_config_errors() {
        for url in [
            "",
            "baton.example.org",
            "http://baton.example.org",
            "https://user:secret@baton.example.org",
            "https://baton.example.org?x=1",
            "https://baton.example.org#frag",
        ] {
            let err = issuer_urls(url).unwrap_err();
            assert!(matches!(err, ConfigError::IssuerUrl(_)), "{url}");
            assert!(!err.to_string().contains("secret"));
        }
    }
}
