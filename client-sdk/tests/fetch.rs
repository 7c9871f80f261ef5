//! Fetched keys (SPEC §8, feature `fetch`): refreshed in the background before
//! `max-age`, served stale while the issuer is unreachable up to a bound and then
//! refused, refetched on an unknown `kid` at most once per interval — against a tiny
//! counting JWKS server on loopback that can be switched to fail.
//!
//! The background task runs on real time, so the ages here are one or two seconds and
//! every wait is a bounded poll, not a fixed sleep.
#![cfg(feature = "fetch")]
// Test and benchmark code: a failed fixture step is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

#[allow(dead_code, unreachable_pub)]
mod verify_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_sdk::{BuildError, SpiffeId, Verifier, VerifierBuilder, VerifyError};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use verify_support::*;

/// What the JWKS server answers, and what it was asked.
struct ServerState {
    body: Mutex<Vec<u8>>,
    cache_control: Mutex<String>,
    failing: AtomicBool,
    /// Path and arrival time of every request.
    requests: Mutex<Vec<(String, Instant)>>,
}

struct JwksServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    scheme: &'static str,
}

impl JwksServer {
    async fn start(keys: &[Value], max_age: u64) -> JwksServer {
        Self::start_with(keys, max_age, None).await
    }

    async fn start_with(
        keys: &[Value],
        max_age: u64,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            body: Mutex::new(jwks(keys)),
            cache_control: Mutex::new(format!("public, max-age={max_age}")),
            failing: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let served = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&served);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                answer(stream, &state).await;
                            }
                        }
                        None => answer(socket, &state).await,
                    }
                });
            }
        });
        JwksServer {
            addr,
            state,
            scheme,
        }
    }

    fn url(&self) -> String {
        format!("{}://{}/.well-known/jwks.json", self.scheme, self.addr)
    }

    fn requests(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    fn request_times(&self) -> Vec<Instant> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at)| *at)
            .collect()
    }

    fn publish(&self, keys: &[Value]) {
        *self.state.body.lock().unwrap() = jwks(keys);
    }

    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }
}

/// One HTTP/1.1 exchange per connection: enough for a JWKS GET.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: &ServerState) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if request.len() > 16 * 1024 {
            return;
        }
    }
    let path = String::from_utf8_lossy(&request)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    state.requests.lock().unwrap().push((path, Instant::now()));
    let response = if state.failing.load(Ordering::SeqCst) {
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .to_vec()
    } else {
        let body = state.body.lock().unwrap().clone();
        let cache_control = state.cache_control.lock().unwrap().clone();
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: {cache_control}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        response
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn audience() -> SpiffeId {
    AUDIENCE.parse().unwrap()
}

fn builder(ca: &Ca, server: &JwksServer) -> VerifierBuilder {
    Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks_url(server.url())
}

/// A fresh, valid token from `signer` (a new jti each time).
fn token(signer: &Signer) -> String {
    signer.token(&claims(unix_now()))
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_keys_verify_tokens_and_default_url_is_the_issuers_well_known_jwks() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[signer.jwk()], 300).await;
    // Default URL: `<issuer>/.well-known/jwks.json`, trailing slash or not.
    let issuer = format!("http://{}/", server.addr);
    let verifier = Verifier::builder(issuer.clone(), audience(), ca.pem.as_bytes())
        .unwrap()
        .build_fetching()
        .await
        .unwrap();
    let mut claims = claims(unix_now());
    claims["iss"] = json!(issuer);
    assert!(verifier.verify(&signer.token(&claims)).is_ok());
    let paths: Vec<String> = server
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(paths, ["/.well-known/jwks.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_refreshed_in_the_background_before_max_age() {
    let ca = Ca::new(TD);
    let current = ca.signer(Alg::Es256);
    let next = ca.signer(Alg::EdDsa);
    let server = JwksServer::start(&[current.jwk()], 1).await;
    let verifier = builder(&ca, &server).build_fetching().await.unwrap();
    let started = server.request_times()[0];
    // The issuer pre-publishes its next key; no token names it yet.
    server.publish(&[current.jwk(), next.jwk()]);
    assert!(eventually(Duration::from_secs(3), || server.requests() >= 2).await);
    let refreshed_after = server.request_times()[1] - started;
    assert!(
        refreshed_after < Duration::from_secs(1),
        "refreshed {refreshed_after:?} after the fetch; max-age was 1 s"
    );
    assert!(verifier.verify(&token(&next)).is_ok());
    assert!(verifier.verify(&token(&current)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_are_served_while_the_issuer_is_down_then_verification_fails_closed() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[signer.jwk()], 1).await;
    let verifier = builder(&ca, &server)
        .max_stale(Duration::from_secs(1))
        .min_refresh_interval(Duration::from_millis(50))
        .build_fetching()
        .await
        .unwrap();
    let fetched = Instant::now();
    server.set_failing(true);

    // Past max-age (1 s), within max-age + max_stale (2 s): the old keys still serve.
    assert!(
        eventually(Duration::from_secs(3), || server.requests() >= 2).await,
        "the verifier retries while the issuer is down"
    );
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(fetched.elapsed())).await;
    assert!(fetched.elapsed() > Duration::from_secs(1));
    assert!(verifier.verify(&token(&signer)).is_ok(), "stale keys serve");

    // Past the bound: fail closed.
    assert!(
        eventually(Duration::from_secs(4), || {
            verifier.verify(&token(&signer)) == Err(VerifyError::KeysUnavailable)
        })
        .await
    );
    assert!(
        fetched.elapsed() >= Duration::from_millis(1900),
        "keys refused after {:?}, before max-age + max_stale",
        fetched.elapsed()
    );
    let err = verifier.verify(&token(&signer)).unwrap_err();
    assert!(err.is_unavailable());
    // Refreshing cannot help while the issuer is down.
    let _ = verifier.refresh().await;
    assert_eq!(
        verifier.verify(&token(&signer)),
        Err(VerifyError::KeysUnavailable)
    );

    // The issuer comes back: the next refresh restores service.
    server.set_failing(false);
    let mut restored = false;
    for _ in 0..50 {
        if verifier.refresh().await.is_ok() && verifier.verify(&token(&signer)).is_ok() {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kids_cause_at_most_one_refresh_per_interval() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[signer.jwk()], 300).await;
    let interval = Duration::from_secs(1);
    let verifier = builder(&ca, &server)
        .min_refresh_interval(interval)
        .build_fetching()
        .await
        .unwrap();
    assert_eq!(server.requests(), 1);

    // An attacker sprays 10 000 tokens, each naming a random kid.
    let valid = token(&signer);
    let (_, claims_and_signature) = valid.split_once('.').unwrap();
    let start = Instant::now();
    for _ in 0..10_000 {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": random_id()});
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        let token = format!("{header}.{claims_and_signature}");
        assert_eq!(verifier.verify(&token), Err(VerifyError::UnknownKey));
    }
    let spray = start.elapsed();
    // Wait out one more interval after the spray, so every fetch it could cause is done.
    tokio::time::sleep(interval + Duration::from_millis(500)).await;
    let fetches = server.requests() - 1;
    let intervals = (start.elapsed().as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
    println!("{fetches} JWKS fetch(es) for 10 000 unknown kids sprayed over {spray:?}");
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} fetches for 10 000 unknown kids sprayed over {spray:?}"
    );
    assert!(
        fetches <= intervals,
        "{fetches} fetches in {intervals} intervals"
    );
    // Verification of real tokens was never disturbed.
    assert!(verifier.verify(&token(&signer)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_triggers_a_refresh_that_finds_a_rotated_key() {
    let ca = Ca::new(TD);
    let old = ca.signer(Alg::Es256);
    let new = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[old.jwk()], 300).await;
    let verifier = builder(&ca, &server)
        .min_refresh_interval(Duration::from_millis(200))
        .build_fetching()
        .await
        .unwrap();
    // Rotation without pre-publication: the first token of the new key is unknown...
    server.publish(&[old.jwk(), new.jwk()]);
    assert_eq!(verifier.verify(&token(&new)), Err(VerifyError::UnknownKey));
    // ...and asks for a refresh, which finds it without any scheduled refresh.
    assert!(
        eventually(Duration::from_secs(3), || verifier
            .verify(&token(&new))
            .is_ok())
        .await
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_retries_once_and_is_rate_limited() {
    let ca = Ca::new(TD);
    let old = ca.signer(Alg::Es256);
    let new = ca.signer(Alg::EdDsa);
    let server = JwksServer::start(&[old.jwk()], 300).await;
    let verifier = builder(&ca, &server)
        .min_refresh_interval(Duration::from_millis(300))
        .build_fetching()
        .await
        .unwrap();
    server.publish(&[old.jwk(), new.jwk()]);
    // Within the interval of the first fetch: nothing is fetched.
    verifier.refresh().await.unwrap();
    assert_eq!(server.requests(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    // The async caller's retry: refresh once, verify again.
    let fresh = token(&new);
    assert_eq!(verifier.verify(&fresh), Err(VerifyError::UnknownKey));
    verifier.refresh().await.unwrap();
    assert!(verifier.verify(&fresh).is_ok());
    // Many concurrent refreshes cost one request at most.
    let before = server.requests();
    let verifier = Arc::new(verifier);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let verifier = Arc::clone(&verifier);
            tokio::spawn(async move { verifier.refresh().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(server.requests() - before <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_withdrawn_by_the_issuer_is_dropped_at_the_next_refresh() {
    let ca = Ca::new(TD);
    let revoked = ca.signer(Alg::Es256);
    let kept = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[revoked.jwk(), kept.jwk()], 300).await;
    let verifier = builder(&ca, &server)
        .min_refresh_interval(Duration::ZERO)
        .build_fetching()
        .await
        .unwrap();
    assert!(verifier.verify(&token(&revoked)).is_ok());
    // `baton keys revoke`: the key leaves the JWKS.
    server.publish(&[kept.jwk()]);
    verifier.refresh().await.unwrap();
    assert_eq!(
        verifier.verify(&token(&revoked)),
        Err(VerifyError::UnknownKey)
    );
    assert!(verifier.verify(&token(&kept)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_old_keys() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[signer.jwk()], 300).await;
    let verifier = builder(&ca, &server)
        .min_refresh_interval(Duration::ZERO)
        .build_fetching()
        .await
        .unwrap();
    // The issuer fails: the error surfaces, the keys stay.
    server.set_failing(true);
    assert!(matches!(
        verifier.refresh().await,
        Err(BuildError::FetchStatus { status: 503, .. })
    ));
    assert!(verifier.verify(&token(&signer)).is_ok());
    server.set_failing(false);
    // Someone serves a key set of workload certificates: refused whole.
    let workload = ca.workload(Alg::Es256, CALLER);
    server.publish(&[workload.jwk()]);
    assert!(matches!(
        verifier.refresh().await,
        Err(BuildError::NoTrustedKey { .. })
    ));
    assert!(verifier.verify(&token(&signer)).is_ok());
    assert_eq!(
        verifier.verify(&token(&workload)),
        Err(VerifyError::UnknownKey)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_fetch_fails_the_build() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[signer.jwk()], 300).await;
    server.set_failing(true);
    let err = builder(&ca, &server).build_fetching().await.unwrap_err();
    assert!(
        matches!(err, BuildError::FetchStatus { status: 503, .. }),
        "{err:?}"
    );

    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let err = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks_url(url.clone())
        .build_fetching()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Fetch { .. }), "{err:?}");
    assert!(err.to_string().contains(&url));

    // Keys from another trust domain's CA.
    let rogue = Ca::new(TD).signer(Alg::Es256);
    server.set_failing(false);
    server.publish(&[rogue.jwk()]);
    let err = builder(&ca, &server).build_fetching().await.unwrap_err();
    assert!(matches!(err, BuildError::NoTrustedKey { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_keys_and_fetching_exclude_each_other() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[signer.jwk()], 300).await;
    let err = builder(&ca, &server)
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .build_fetching()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::ConflictingKeySources), "{err:?}");
    // A static verifier has nothing to refresh.
    let verifier = builder(&ca, &server)
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .build()
        .unwrap();
    verifier.refresh().await.unwrap();
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_verifier_stops_its_refresh_task() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start(&[signer.jwk()], 1).await;
    let verifier = builder(&ca, &server).build_fetching().await.unwrap();
    drop(verifier);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.requests(), 1);
}

fn tls_acceptor(ca: &Ca) -> tokio_rustls::TlsAcceptor {
    let (cert, key) = ca.tls_server();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.into()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_client_fetches_over_https_trusting_only_the_bundle() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let server = JwksServer::start_with(&[signer.jwk()], 300, Some(tls_acceptor(&ca))).await;
    let verifier = builder(&ca, &server).build_fetching().await.unwrap();
    assert!(verifier.verify(&token(&signer)).is_ok());

    // A server whose certificate another CA issued is not the issuer.
    let rogue = Ca::new(TD);
    let impostor = JwksServer::start_with(&[signer.jwk()], 300, Some(tls_acceptor(&rogue))).await;
    let err = builder(&ca, &impostor).build_fetching().await.unwrap_err();
    assert!(matches!(err, BuildError::Fetch { .. }), "{err:?}");
    assert_eq!(impostor.requests(), 0);
}
