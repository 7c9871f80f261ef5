//! A [`TokenClient`] built from a join token (SPEC §8, §9 `baton enroll --join-token`):
//! nothing long-lived is deployed with the function; at start it generates its key in
//! memory, redeems the one-time join token for its first certificate, and from then on
//! renews that certificate itself (`renew`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::SpiffeId;
use baton_proto::requests::SvidRequest;
use ring::rand::SystemRandom;
use zeroize::{Zeroize as _, Zeroizing};

use super::error::{ConfigError, TokenError};
use super::key::{self, KeyType};
use super::renew::{self, Callback, Renewal, RenewalEvent};
use super::transport::{self, Endpoints};
use super::{Auth, Credentials, Inner, Options, TokenClient, Transport, csr, issuer_urls, svid};

/// Longest join token accepted: Baton's are about 50 characters.
const MAX_JOIN_TOKEN_BYTES: usize = 1024;

/// Configures a [`TokenClient`] that starts from a join token; made by
/// [`TokenClient::join`].
///
/// The options are those of [`TokenClientBuilder`](crate::TokenClientBuilder), plus the
/// type of key to generate, an optional expected SPIFFE ID, and a callback told about
/// every renewal. `Debug` never shows the join token.
///
/// ```no_run
/// use std::time::Duration;
/// use baton_sdk::{Auth, KeyType, RenewalEvent, TokenClient};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = TokenClient::join(
///     "https://baton.example.org",
///     &std::fs::read("bundle.pem")?,
///     std::fs::read_to_string("/run/secrets/baton-join-token")?,
/// )
/// .expect_id("spiffe://example.org/fn/orders".parse()?)
/// .auth(Auth::Assertion)
/// .key_type(KeyType::Ed25519)
/// .pool(8)
/// .timeout(Duration::from_secs(5))
/// .on_renewal(|event| {
///     if let RenewalEvent::Failed { error, retry_in, .. } = event {
///         eprintln!("certificate renewal failed, retrying in {retry_in:?}: {error}");
///     }
/// })
/// .connect()
/// .await?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
pub struct JoinBuilder {
    issuer_url: String,
    roots: Result<rustls::RootCertStore, ConfigError>,
    join_token: Zeroizing<String>,
    expected_id: Option<SpiffeId>,
    key_type: KeyType,
    options: Options,
    on_renewal: Option<Callback>,
}

impl fmt::Debug for JoinBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinBuilder")
            .field("issuer_url", &self.issuer_url)
            .field("join_token", &"<redacted>")
            .field("expected_id", &self.expected_id)
            .field("key_type", &self.key_type)
            .field("auth", &self.options.auth)
            .field("pool", &self.options.pool)
            .field("min_remaining", &self.options.min_remaining)
            .field("timeout", &self.options.timeout)
            .field("on_renewal", &self.on_renewal.is_some())
            .finish_non_exhaustive()
    }
}

impl JoinBuilder {
    pub(super) fn new(issuer_url: String, bundle_pem: &[u8], join_token: String) -> Self {
        Self {
            issuer_url,
            roots: transport::trust_roots(bundle_pem),
            join_token: Zeroizing::new(join_token),
            expected_id: None,
            key_type: KeyType::default(),
            options: Options::default(),
            on_renewal: None,
        }
    }

    /// How to attest to the issuer, for tokens and for renewals; [`Auth::Mtls`] by
    /// default. (The first certificate is always fetched with the join token alone.)
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::JoinBuilder) {
    /// let builder = builder.auth(baton_sdk::Auth::Assertion);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn auth(mut self, auth: Auth) -> Self {
        self.options.auth = auth;
        self
    }

    /// A prefetch pool, as [`TokenClientBuilder::pool`](crate::TokenClientBuilder::pool).
    ///
    /// Pooled tokens outlive a renewal: they stay valid until their own short expiry.
    /// With [`Auth::Mtls`] those minted before a renewal are bound (`cnf`) to the
    /// previous certificate, which matters only to a callee that checks the binding
    /// against the certificate of the connection the token arrives on.
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::JoinBuilder) {
    /// let builder = builder.pool(8);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn pool(mut self, size: u8) -> Self {
        self.options.pool = size;
        self
    }

    /// As [`TokenClientBuilder::min_remaining`](crate::TokenClientBuilder::min_remaining).
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::JoinBuilder) {
    /// let builder = builder.min_remaining(std::time::Duration::from_secs(20));
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn min_remaining(mut self, min_remaining: Duration) -> Self {
        self.options.min_remaining = min_remaining;
        self
    }

    /// Time allowed for one request to the issuer — token, first certificate or
    /// renewal — connecting included (15 s by default).
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::JoinBuilder) {
    /// let builder = builder.timeout(std::time::Duration::from_secs(3));
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// The type of key to generate, now and at each renewal; [`KeyType::EcP256`] by
    /// default.
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::JoinBuilder) {
    /// let builder = builder.key_type(baton_sdk::KeyType::Ed25519);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn key_type(mut self, key_type: KeyType) -> Self {
        self.key_type = key_type;
        self
    }

    /// Refuses a first certificate for any other SPIFFE ID than `id` (a join token
    /// is bound to one ID by whoever made it; this catches a token meant for another
    /// function). Renewals always keep the ID of the first certificate.
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::JoinBuilder) -> Result<(), baton_sdk::SpiffeIdError> {
    /// let builder = builder.expect_id("spiffe://example.org/fn/orders".parse()?);
    /// # let _ = builder;
    /// # Ok(())
    /// # }
    /// ```
    pub fn expect_id(mut self, id: SpiffeId) -> Self {
        self.expected_id = Some(id);
        self
    }

    /// Calls `callback` after every renewal attempt, from the renewal task: with
    /// [`RenewalEvent::Renewed`] once a new certificate is in use, with
    /// [`RenewalEvent::Failed`] when an attempt failed (the client keeps its current
    /// certificate and tries again). [`TokenClient::certificate`] shows the same.
    ///
    /// Keep it quick, and do not capture the [`TokenClient`] in it: the client could
    /// then never be dropped, and would renew forever. A panic in it is caught.
    ///
    /// ```no_run
    /// # fn run(builder: baton_sdk::JoinBuilder) {
    /// use baton_sdk::RenewalEvent;
    /// let builder = builder.on_renewal(|event| match event {
    ///     RenewalEvent::Renewed(status) => println!("new certificate, serial {}", status.serial),
    ///     RenewalEvent::Failed { error, .. } => eprintln!("renewal failed: {error}"),
    ///     _ => {}
    /// });
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn on_renewal<F>(mut self, callback: F) -> Self
    where
        F: Fn(&RenewalEvent<'_>) + Send + Sync + 'static,
    {
        self.on_renewal = Some(Box::new(callback));
        self
    }

    /// Checks the configuration, generates a key, redeems the join token for a
    /// certificate (the one network call), checks the certificate, and starts
    /// renewing it on the current tokio runtime.
    ///
    /// The certificate must chain to the configured trust bundle, certify the key just
    /// generated, and carry exactly one URI SAN, a SPIFFE ID (the one given to
    /// [`expect_id`](Self::expect_id), if any); the issuer's `bundle` is not used.
    ///
    /// ```no_run
    /// # async fn run(builder: baton_sdk::JoinBuilder) -> Result<(), baton_sdk::TokenError> {
    /// let client = builder.connect().await?;
    /// assert_eq!(client.certificate().renewals, 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`TokenError::Config`] as for
    /// [`TokenClientBuilder::build`](crate::TokenClientBuilder::build), when the
    /// join token is empty or malformed, and outside a tokio runtime (the renewal task
    /// runs on the runtime `connect` runs on); [`TokenError::Refused`] with
    /// `invalid_client` when the issuer does not accept the join token (unknown,
    /// expired or already used: a join token works once); [`TokenError::Svid`] when
    /// the certificate fails a check; [`TokenError::Transport`] when the issuer cannot
    /// be reached.
    pub async fn connect(self) -> Result<TokenClient, TokenError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime.into());
        }
        let (issuer, urls) = issuer_urls(&self.issuer_url)?;
        let roots = self.roots?;
        self.options.check()?;
        let join_token = check_join_token(&self.join_token)?;
        let transport = Transport {
            roots,
            urls,
            timeout: self.options.timeout,
        };
        // The join token alone proves who the caller is: no client certificate yet.
        let plain = transport::https_client(transport.roots.clone(), None, transport.timeout)?;
        let endpoints = Endpoints::new(plain.clone(), transport.urls.clone());

        let rng = SystemRandom::new();
        let (key, key_der) = key::generate(self.key_type, &rng)?;
        let mut form = SvidRequest {
            csr: csr::request_pem(&key_der, self.key_type)?,
            join_token: Some(join_token.to_owned()),
            client_assertion_type: None,
            client_assertion: None,
        };
        let answer = endpoints.svid(&form).await;
        // The form's copy; the request body's bytes belong to the HTTP stack.
        form.join_token.zeroize();
        let answer = answer?;
        let identity = svid::check(
            &answer.svid,
            key,
            key_der,
            &transport.roots.roots,
            self.expected_id.as_ref(),
            super::unix_now(),
        )?;

        let id = identity.id.clone();
        let credentials = Credentials::new(
            self.options.auth,
            identity,
            &issuer,
            &transport,
            Some(plain),
        )?;
        let (renewal, task) = Renewal::new(self.key_type, transport, credentials.not_after);
        let inner = Arc::new(Inner::new(
            id,
            issuer,
            self.options.auth,
            credentials,
            &self.options,
            Some(renewal),
        ));
        renew::start(&inner, task, self.on_renewal);
        Ok(TokenClient { inner })
    }
}

/// The join token without surrounding whitespace, if it looks like one: printable
/// ASCII with no space, at most [`MAX_JOIN_TOKEN_BYTES`]. Errors never repeat it.
fn check_join_token(token: &str) -> Result<&str, ConfigError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ConfigError::JoinToken(
            "it is empty; pass what `baton enroll --id ID --join-token` printed",
        ));
    }
    if token.len() > MAX_JOIN_TOKEN_BYTES {
        return Err(ConfigError::JoinToken("it is longer than 1 KiB"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::JoinToken(
            "it holds whitespace or characters outside printable ASCII",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "baton-jt-c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0";

    #[test]
    fn join_tokens_lose_surrounding_whitespace_only() {
        assert_eq!(check_join_token(TOKEN).unwrap(), TOKEN);
        assert_eq!(check_join_token(&format!("  {TOKEN}\n")).unwrap(), TOKEN);
        for bad in [
            String::new(),
            "\n".to_owned(),
            format!("{TOKEN} {TOKEN}"),
            format!("{TOKEN}\u{e9}"),
            "x".repeat(MAX_JOIN_TOKEN_BYTES + 1),
        ] {
            let err = check_join_token(&bad).unwrap_err();
            assert!(matches!(err, ConfigError::JoinToken(_)), "{bad:?}");
            assert!(!err.to_string().contains(TOKEN));
        }
    }

    #[test]
    fn debug_never_shows_the_join_token() {
        let builder = JoinBuilder::new(
            "https://baton.example.org".to_owned(),
            b"",
            TOKEN.to_owned(),
        )
        .on_renewal(|_| {});
        let debug = format!("{builder:?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn connect_outside_a_tokio_runtime_is_an_error_not_a_panic() {
        use std::future::Future as _;
        use std::task::{Context, Poll, Waker};
        let connect = TokenClient::join("https://192.0.2.1", b"", TOKEN).connect();
        let mut connect = std::pin::pin!(connect);
        match connect
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(Err(TokenError::Config(ConfigError::NoRuntime))) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn configuration_errors_come_before_any_network_call() {
        // The issuer URL, bundle, pool size and join token are all checked first; the
        // address is unroutable, so reaching the network would show as Transport.
        let bundle = rcgen::CertificateParams::default()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        type Expect = fn(&ConfigError) -> bool;
        let cases: [(JoinBuilder, Expect); 4] = [
            (
                TokenClient::join("http://192.0.2.1", bundle.as_bytes(), TOKEN),
                |e| matches!(e, ConfigError::IssuerUrl(_)),
            ),
            (TokenClient::join("https://192.0.2.1", b"", TOKEN), |e| {
                matches!(e, ConfigError::Bundle(_))
            }),
            (
                TokenClient::join("https://192.0.2.1", bundle.as_bytes(), TOKEN).pool(65),
                |e| matches!(e, ConfigError::PoolSize(65)),
            ),
            (
                TokenClient::join("https://192.0.2.1", bundle.as_bytes(), " \n"),
                |e| matches!(e, ConfigError::JoinToken(_)),
            ),
        ];
        for (builder, expected) in cases {
            match builder.timeout(Duration::from_millis(1)).connect().await {
                Err(TokenError::Config(e)) => assert!(expected(&e), "{e}"),
                Err(e) => panic!("expected a configuration error, got {e}"),
                Ok(_) => panic!("connected to nothing"),
            }
        }
    }
}
