//! Baton's hot paths next to the cryptography they cannot avoid (issue 9, item 1, and
//! the batch-mint figure of item 6).
//!
//! `cargo bench -p baton-issuer --bench hotpath` (about two minutes on two cores; the
//! memory figure reads `/proc/self/statm`, so Linux). `cargo test -p baton-issuer
//! --bench hotpath` runs every benchmark once as a smoke test and skips the report. To
//! profile one benchmark alone (no report):
//! `cargo bench -p baton-issuer --bench hotpath -- --profile-time 8 mint_ES256/mint_limiter`
//! under `perf record`.
//!
//! Everything runs in this process, per token algorithm (ES256, EdDSA), over a real data
//! directory (CA, sealed keyring): the real attestor over an in-memory replay ledger,
//! the real policy store and, for the batch, the real router (`server::app`) driven with
//! `oneshot` — no socket, no TLS. As under `baton serve`, the Prometheus recorder is
//! installed and audit events go through the JSON log subscriber at `info`, written to
//! `/dev/null` (one `write` per event, as to stderr). Client assertions and certificates
//! are made before the timed loops; every assertion carries a fresh `jti`.
//!
//! Criterion first prints its own (wall-clock) estimate per benchmark. Then the report:
//! each line puts a Baton operation beside its floor, both measured in this run,
//! interleaved in many short rounds (who goes first rotates; the first round is a
//! discarded warm-up) over the same inputs, and prints the median per-operation time of
//! each, their ratio, the ratio by the wall clock, and the issue's goal where it sets
//! one. Times are this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): every measured
//! operation runs on the benchmark thread and never blocks, so CPU time is what it costs,
//! without the time a busy two-core machine keeps the thread off a core; the goal is
//! judged on it. The wall ratio shows how far the noise moved the same rounds. Lines:
//!
//! - `mint <alg> core`: what the token endpoint does after attestation for one token —
//!   policy decision (`PolicyStore::decide`), the active key, a session id, claims and
//!   `mint::mint` (jti, JSON, base64url, signature) — against one raw ring sign, with a
//!   key of the same type, of an input as long as the token's signing input. Goal ≤ 1.3.
//! - `mint <alg> + limiter, metrics, audit`: the same plus the rest of the handler's
//!   per-token work: the per-caller rate limiter, the mint histogram and counter, and the
//!   `token.issued` audit event. Same floor and goal.
//! - `mint <alg> + call graph`: the line above plus the call-graph record of the
//!   token (`Visibility::issued`: the edge, the caller's identity record, the anomaly
//!   baselines, under one shard lock) — against the line above without it: the cost
//!   of visibility on the mint path (issue 12). Goal ≤ 1.05.
//! - `attest <alg> warm`: `Attestor::attest_assertion` of an assertion whose chain verdict
//!   is cached (parse, cache hit, signature, deny list, claims, `jti` consumed in the
//!   ledger) — against one raw ring verify of that assertion's signature.
//! - `attest <alg> cold`: the same for an assertion whose certificate the attestor has
//!   never seen (a fresh SVID for the workload's key, as after a renewal), so the verdict
//!   cache misses: webpki walks the chain, x509-parser reads the leaf, the SVID rules are
//!   checked and the verdict is cached — against a raw verify plus webpki's
//!   `verify_for_usage` of that certificate against the same bundle.
//! - `ledger consume, 1 M outstanding`: `MemoryLedger::consume` of a fresh key into a
//!   ledger already holding a million live entries — against the structure's floor, the
//!   key's SHA-256 and an insert into one `Mutex<HashMap>` of the same size. The line
//!   under it gives the bytes per outstanding `jti`: the growth of the resident set
//!   (`/proc/self/statm`, measured first thing in the process) while a ledger is filled
//!   with a million entries, divided by a million.
//! - `batch <alg> count=N`: one `POST /v1/token` through the router with one assertion
//!   (warm verdict) and `count` = N (1, 16, 64): form decoding, attestation, rate limit,
//!   policy, N mints with their metrics and audit events, the JSON response. Per token
//!   (request time ÷ N) against one raw ring sign; the line under it gives the request
//!   time, tokens/s, and tokens/s as a fraction of the sign-only ceiling (1 ÷ raw sign).

// Benchmark code: a failed fixture step is a failed benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_issuer::attest::{Attested, Attestor, AuthMethod};
use baton_issuer::audit;
use baton_issuer::datadir::{DataDir, KekSource, OpenDataDir};
use baton_issuer::deny::DenyList;
use baton_issuer::introspect::Introspector;
use baton_issuer::keyring::Keyring;
use baton_issuer::ledger::{MemoryLedger, ReplayLedger};
use baton_issuer::metrics as m;
use baton_issuer::mint::{self, TokenSpec};
use baton_issuer::pki::{DEFAULT_CA_TTL, KeyType};
use baton_issuer::policy::{Policy, PolicyStore};
use baton_issuer::server::{self, Issuer, RateLimiter};
use baton_issuer::visibility::{AnomalyThresholds, Backend, GRAPH_FILE, Visibility};
use baton_proto::claims::{
    CLIENT_ASSERTION_TYPE, GRANT_TYPE_CLIENT_CREDENTIALS, JwsAlgorithm, Scope,
};
use baton_proto::metadata::TOKEN_PATH;
use baton_proto::{SpiffeId, TrustDomain};
use criterion::{BatchSize, Criterion, Throughput};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair as _, Signature, UnparsedPublicKey, VerificationAlgorithm,
};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::json;
use time::OffsetDateTime;
use tokio::runtime::Runtime;
use tower::ServiceExt as _;
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage};

const ISSUER: &str = "https://baton.example.org";
const CALLER: &str = "spiffe://example.org/fn/orders";
const AUDIENCE: &str = "spiffe://example.org/fn/payments";
const SCOPE: &str = "payments:charge";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge"]
max_ttl_seconds = 60
"#;
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Lifetime of the benchmark's assertions: far longer than any use of one.
const ASSERTION_TTL_SECS: i64 = 60;
const BATCH_COUNTS: [u8; 3] = [1, 16, 64];
/// Outstanding `jti`s for the ledger figures (issue 9: "1 M entries").
const LEDGER_ENTRIES: usize = 1_000_000;
/// The ledger figures' clock: any fixed time works, the ledger only compares.
const LEDGER_T0: i64 = 1_800_000_000;
/// Interleaved rounds per report line, after one discarded warm-up round. Many short
/// rounds (a few milliseconds each) rather than few long ones: on a busy machine most
/// short rounds run undisturbed, and the median picks them.
const ROUNDS: usize = 41;

/// A unique number per assertion and ledger key of the whole run.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A `jti`-shaped id: 128 bits, base64url (22 characters), unique in the run.
fn fresh_jti(out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(u128::from(next_id()).to_be_bytes(), out);
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Polls a future that is ready at once: the in-memory ledger never waits, so
/// attestation over it completes on the first poll without a runtime's overhead.
fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the in-memory ledger answers at once"),
    }
}

/// A parsed ring key pair of one JWS algorithm.
enum RingKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl RingKey {
    fn from_rcgen(key: &rcgen::KeyPair, key_type: KeyType) -> RingKey {
        let pkcs8 = key.serialized_der();
        match key_type {
            KeyType::EcP256 => RingKey::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &SystemRandom::new(),
                )
                .unwrap(),
            ),
            KeyType::Ed25519 => {
                RingKey::EdDsa(Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).unwrap())
            }
        }
    }

    fn sign(&self, message: &[u8]) -> Signature {
        match self {
            // As the keyring signs: a `SystemRandom` per signature (it is zero-sized).
            RingKey::Es256(k) => k.sign(&SystemRandom::new(), message).unwrap(),
            RingKey::EdDsa(k) => k.sign(message),
        }
    }

    fn public_key(&self) -> &[u8] {
        match self {
            RingKey::Es256(k) => k.public_key().as_ref(),
            RingKey::EdDsa(k) => k.public_key().as_ref(),
        }
    }

    fn verification(&self) -> &'static dyn VerificationAlgorithm {
        match self {
            RingKey::Es256(_) => &ECDSA_P256_SHA256_FIXED,
            RingKey::EdDsa(_) => &ED25519,
        }
    }
}

fn key_type(alg: JwsAlgorithm) -> KeyType {
    match alg {
        JwsAlgorithm::Es256 => KeyType::EcP256,
        JwsAlgorithm::EdDsa => KeyType::Ed25519,
    }
}

/// A signed client assertion, with where its signature starts.
struct Assertion {
    jws: String,
    /// Length of `header.payload`, the signing input (RFC 7515 §5.1).
    signing_len: usize,
    signature: Signature,
}

impl Assertion {
    fn signing_input(&self) -> &[u8] {
        &self.jws.as_bytes()[..self.signing_len]
    }
}

/// The calling workload: its key, and the certificate every warm assertion carries.
struct Workload {
    id: SpiffeId,
    /// What fresh certificates certify.
    cert_key: rcgen::KeyPair,
    key: RingKey,
    alg: JwsAlgorithm,
    /// The base64url JOSE header naming the long-lived certificate in `x5c`.
    header_b64: String,
}

impl Workload {
    fn new(data: &OpenDataDir, alg: JwsAlgorithm, now: i64) -> Workload {
        let cert_key = key_type(alg).generate().unwrap();
        let key = RingKey::from_rcgen(&cert_key, key_type(alg));
        let mut workload = Workload {
            id: CALLER.parse().unwrap(),
            cert_key,
            key,
            alg,
            header_b64: String::new(),
        };
        let cert = workload.svid(data, now);
        workload.header_b64 = workload.header_for(&cert);
        workload
    }

    /// A new certificate for the workload's key: a random serial makes it one the
    /// attestor has never seen.
    fn svid(&self, data: &OpenDataDir, now: i64) -> Vec<u8> {
        data.ca()
            .issue_svid(
                &self.id,
                &self.cert_key,
                Duration::from_secs(86_400),
                OffsetDateTime::from_unix_timestamp(now - 60).unwrap(),
            )
            .unwrap()
            .der
    }

    fn header_for(&self, cert_der: &[u8]) -> String {
        let header =
            json!({"alg": self.alg.as_str(), "typ": "JWT", "x5c": [STANDARD.encode(cert_der)]});
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap())
    }

    /// A client assertion (RFC 7523) issued at `iat` with a fresh `jti`.
    fn assertion(&self, header_b64: &str, iat: i64) -> Assertion {
        let mut jti = String::new();
        fresh_jti(&mut jti);
        let claims = json!({
            "iss": CALLER,
            "sub": CALLER,
            "aud": ISSUER,
            "jti": jti,
            "iat": iat,
            "exp": iat + ASSERTION_TTL_SECS,
        });
        let mut jws = format!("{header_b64}.");
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&claims).unwrap(), &mut jws);
        let signing_len = jws.len();
        let signature = self.key.sign(jws.as_bytes());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Assertion {
            jws,
            signing_len,
            signature,
        }
    }
}

/// One token algorithm's issuer, in process, and the floors to compare it with.
struct Setup {
    alg: JwsAlgorithm,
    /// The `now` of every direct call: after the ledger's epoch, before any expiry.
    now: i64,
    caller: SpiffeId,
    audience: SpiffeId,
    scope: Scope,
    policy: Arc<PolicyStore>,
    /// The handler's per-caller limiter, for the direct mint (the router has its own).
    limiter: RateLimiter,
    /// The call graph the router's state records into (the direct mint's too).
    visibility: Arc<Visibility>,
    /// The router's state: its keyring is the one the handler mints with.
    state: Arc<Issuer>,
    router: Router,
    /// Shares the router's ledger and deny list; its own verdict cache.
    attestor: Attestor,
    /// The trust bundle as webpki anchors, for the cold floor.
    anchors: Vec<TrustAnchor<'static>>,
    workload: Workload,
    /// The raw-sign floor: a fresh key of the token algorithm's type.
    raw_key: RingKey,
    /// A token's signing input, for the raw-sign floor.
    signing_input: Vec<u8>,
    data: OpenDataDir,
    rt: Runtime,
    _tmp: tempfile::TempDir,
}

impl Setup {
    fn new(alg: JwsAlgorithm) -> Setup {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let started = OffsetDateTime::now_utc();
        let data = DataDir::new(tmp.path().join("data"))
            .init(&td, &KekSource::Dev, DEFAULT_CA_TTL, started)
            .unwrap()
            .store;
        let keyring = Keyring::load_or_init(&data, alg, started).unwrap();
        let now = started.unix_timestamp() + 1;

        let deny = Arc::new(DenyList::new());
        // Capacity far above what a run consumes: no assertion may meet `Full`. The
        // epoch is a second back, so assertions issued in this very second (the router's,
        // which reads the real clock) are not stale.
        let ledger: Arc<dyn ReplayLedger> =
            Arc::new(MemoryLedger::new(100_000_000, started.unix_timestamp() - 1));
        let bundle = vec![data.ca().cert_der().to_vec()];
        // As `baton serve`: the issuer identifier and the token endpoint URL.
        let audiences = vec![ISSUER.to_owned(), format!("{ISSUER}{TOKEN_PATH}")];
        let attestor = || {
            Attestor::new(
                bundle.clone(),
                td.clone(),
                audiences.clone(),
                Arc::clone(&deny),
                Arc::clone(&ledger),
            )
            .unwrap()
        };
        let policy = Arc::new(PolicyStore::new(
            Policy::from_toml(POLICY, Some(&td)).unwrap(),
            None,
            Some(td.clone()),
        ));
        // Far above the run's request rate: the limiter is paid for, never refuses.
        let limiter = || RateLimiter::new(1_000_000, 1_000_000);
        let visibility = Arc::new(Visibility::new(
            Backend::Embedded {
                path: tmp.path().join(GRAPH_FILE),
            },
            10_000,
            Duration::from_secs(30 * 86400),
            AnomalyThresholds::default(),
        ));
        let state = Arc::new(
            Issuer::new(
                ISSUER.to_owned(),
                keyring,
                attestor(),
                Introspector::new(ISSUER.to_owned(), Arc::clone(&deny), Arc::clone(&ledger)),
                Arc::clone(&policy),
                TOKEN_TTL,
                limiter(),
                Duration::from_secs(60),
                m::handle(),
            )
            // As `baton serve`: every request recorded in the call graph.
            .with_visibility(Arc::clone(&visibility)),
        );
        let router = server::app(Arc::clone(&state), Duration::from_secs(30));
        let anchors = bundle
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let workload = Workload::new(&data, alg, now);
        let raw_key = RingKey::from_rcgen(&key_type(alg).generate().unwrap(), key_type(alg));

        let mut setup = Setup {
            alg,
            now,
            caller: CALLER.parse().unwrap(),
            audience: AUDIENCE.parse().unwrap(),
            scope: SCOPE.parse().unwrap(),
            policy,
            limiter: limiter(),
            visibility,
            state,
            router,
            attestor: attestor(),
            anchors,
            workload,
            raw_key,
            signing_input: Vec::new(),
            data,
            rt,
            _tmp: tmp,
        };
        let token = setup.mint_core();
        setup.signing_input = token.rsplit_once('.').unwrap().0.as_bytes().to_vec();
        // Each path once, which also fills both attestors' verdict caches with the
        // workload's certificate, as a running issuer's would be.
        setup.attest(&setup.warm_input());
        setup.send(setup.token_request(1, &setup.live_assertion()));
        setup
    }

    fn name(&self) -> &'static str {
        self.alg.as_str()
    }

    /// The token endpoint after attestation, for one token: policy, key, session,
    /// claims, signature.
    fn mint_core(&self) -> String {
        let grant = self
            .policy
            .decide(&self.caller, &self.audience, Some(&self.scope), TOKEN_TTL)
            .unwrap();
        let key = Arc::clone(self.state.published().keyring().active());
        let sid = mint::new_session_id().unwrap();
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &self.caller,
            audience: &self.audience,
            scope: grant.scope.as_deref(),
            ttl: grant.ttl,
            sid: &sid,
            cnf_x5t_s256: None,
        };
        mint::mint(&key, &spec, self.now).unwrap().token
    }

    /// [`mint_core`](Self::mint_core) with the rest of the handler's per-token work,
    /// in the handler's order (`server/token.rs`).
    fn mint_endpoint(&self) -> String {
        self.limiter.check(&self.caller).unwrap();
        let grant = self
            .policy
            .decide(&self.caller, &self.audience, Some(&self.scope), TOKEN_TTL)
            .unwrap();
        let key = Arc::clone(self.state.published().keyring().active());
        let sid = mint::new_session_id().unwrap();
        let method = AuthMethod::PrivateKeyJwt;
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &self.caller,
            audience: &self.audience,
            scope: grant.scope.as_deref(),
            ttl: grant.ttl,
            sid: &sid,
            cnf_x5t_s256: None,
        };
        let start = Instant::now();
        let minted = mint::mint(&key, &spec, self.now).unwrap();
        m::token_minted(key.alg(), method, start.elapsed());
        audit::issued(&spec, &minted.jti, minted.exp, method.as_str(), grant.rule);
        minted.token
    }

    /// [`mint_endpoint`](Self::mint_endpoint) and the token's call-graph record, as the
    /// handler makes it.
    fn mint_graph(&self) -> String {
        let token = self.mint_endpoint();
        self.visibility.issued(
            &self.caller,
            &self.audience,
            Some(SCOPE),
            1,
            self.now + 3600,
            self.now,
        );
        token
    }

    fn raw_sign(&self) -> Signature {
        self.raw_key.sign(black_box(&self.signing_input))
    }

    /// An assertion with the workload's usual certificate, issued at the setup's `now`.
    fn warm_input(&self) -> Assertion {
        self.workload.assertion(&self.workload.header_b64, self.now)
    }

    /// An assertion with a certificate never seen before, and that certificate.
    fn cold_input(&self) -> (Assertion, Vec<u8>) {
        let cert = self.workload.svid(&self.data, self.now);
        let header = self.workload.header_for(&cert);
        (self.workload.assertion(&header, self.now), cert)
    }

    /// An assertion issued now, for the router, which reads the real clock.
    fn live_assertion(&self) -> Assertion {
        self.workload
            .assertion(&self.workload.header_b64, unix_now())
    }

    fn attest(&self, assertion: &Assertion) -> Attested {
        now_or_never(self.attestor.attest_assertion(&assertion.jws, self.now))
            .unwrap_or_else(|e| panic!("{}: attest: {e}", self.name()))
    }

    fn raw_verify(&self, assertion: &Assertion) {
        UnparsedPublicKey::new(
            self.workload.key.verification(),
            self.workload.key.public_key(),
        )
        .verify(assertion.signing_input(), assertion.signature.as_ref())
        .unwrap();
    }

    /// webpki's chain check of a workload certificate, as the attestor calls it.
    fn webpki_check(&self, cert_der: &[u8]) {
        let der = CertificateDer::from(cert_der);
        let leaf = EndEntityCert::try_from(&der).unwrap();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(self.now as u64));
        leaf.verify_for_usage(
            ALL_VERIFICATION_ALGS,
            &self.anchors,
            &[],
            time,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    }

    /// `POST /v1/token` for `count` tokens, authenticated by `assertion`.
    fn token_request(&self, count: u8, assertion: &Assertion) -> Request<Body> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT_TYPE_CLIENT_CREDENTIALS)
            .append_pair("audience", AUDIENCE)
            .append_pair("scope", SCOPE)
            .append_pair("count", &count.to_string())
            .append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .append_pair("client_assertion", &assertion.jws)
            .finish();
        Request::post(TOKEN_PATH)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    }

    /// Sends a request through the router and reads the whole response body.
    fn send(&self, request: Request<Body>) {
        let (status, body) = self.rt.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, body)
        });
        if status != StatusCode::OK {
            panic!(
                "{}: token request answered {status}: {}",
                self.name(),
                String::from_utf8_lossy(&body)
            );
        }
        black_box(body);
    }
}

/// The floor of the ledger's design: the key's digest (as the ledger keys entries)
/// and one insert into one locked map, with no shards, capacity or epoch.
struct FloorLedger {
    map: Mutex<HashMap<[u8; 16], u32>>,
}

impl FloorLedger {
    fn consume(&self, key: &str, exp: u32) {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut short = [0u8; 16];
        short.copy_from_slice(&digest.as_ref()[..16]);
        match self.map.lock().unwrap().entry(short) {
            Entry::Occupied(_) => panic!("fresh keys only"),
            Entry::Vacant(slot) => {
                slot.insert(exp);
            }
        }
    }
}

/// Replay-ledger keys shaped like the issuer's: a prefix and a 22-character `jti`.
fn ledger_keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let mut key = String::from("access-token ");
            fresh_jti(&mut key);
            key
        })
        .collect()
}

fn consume(ledger: &MemoryLedger, key: &str) {
    now_or_never(ledger.consume(key, Some(LEDGER_T0 + 1), LEDGER_T0 + 300, LEDGER_T0 + 1)).unwrap();
}

/// Bytes the process holds in RAM, from `/proc/self/statm` (pages) and the page size.
fn resident_bytes(page_size: usize) -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap();
    pages * page_size
}

/// The kernel's page size, as `/proc/self/smaps` states it (statm counts pages).
fn page_size() -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    smaps
        .lines()
        .find_map(|line| line.strip_prefix("KernelPageSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(4096, |kib| kib * 1024)
}

/// The ledger figures, measured first: the bytes per outstanding `jti` (while the heap
/// is quiet), then `consume` into the full-size ledger against its floor.
fn ledger_figures() -> Vec<Row> {
    let page = page_size();
    let mut key = String::with_capacity(64);
    let before = resident_bytes(page);
    let ledger = MemoryLedger::new(usize::MAX, LEDGER_T0);
    for _ in 0..LEDGER_ENTRIES {
        key.clear();
        key.push_str("access-token ");
        fresh_jti(&mut key);
        consume(&ledger, &key);
    }
    let grown = resident_bytes(page).saturating_sub(before);

    let floor = FloorLedger {
        map: Mutex::new(HashMap::new()),
    };
    for _ in 0..LEDGER_ENTRIES {
        key.clear();
        key.push_str("access-token ");
        fresh_jti(&mut key);
        floor.consume(&key, (LEDGER_T0 + 300) as u32);
    }

    const PER_ROUND: usize = 5_000;
    let [baton, base] = interleaved(
        ROUNDS,
        || ledger_keys(PER_ROUND),
        [
            &mut |keys: &Vec<String>| per_op(keys, |k| consume(&ledger, k)),
            &mut |keys: &Vec<String>| per_op(keys, |k| floor.consume(k, (LEDGER_T0 + 300) as u32)),
        ],
    );
    let mut note = String::new();
    write!(
        note,
        "memory: {:.1} bytes per outstanding jti (resident set +{:.1} MiB for {LEDGER_ENTRIES} entries)",
        grown as f64 / LEDGER_ENTRIES as f64,
        grown as f64 / (1024.0 * 1024.0),
    )
    .unwrap();
    vec![Row {
        figure: "ledger consume, 1 M outstanding".to_owned(),
        baton,
        floor: base,
        floor_name: "SHA-256 + insert into one Mutex<HashMap> of 1 M",
        goal: None,
        note,
    }]
}

/// Time per operation: elapsed (wall clock) and this thread's CPU time (user and
/// kernel), which leaves out the time the thread waited for a core.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

/// CPU time this thread has used. Everything measured runs on this thread (the router
/// too: its runtime is current-thread), so this is the work the operation costs.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            cpu: thread_cpu(),
            wall: Instant::now(),
        }
    }

    /// Time per operation since the start, over `n` operations.
    fn per_op(&self, n: u32) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = thread_cpu().saturating_sub(self.cpu);
        Sample {
            wall: wall / n,
            cpu: cpu / n,
        }
    }
}

/// Time per item of `op` over `items`.
fn per_op<T>(items: &[T], mut op: impl FnMut(&T)) -> Sample {
    let watch = Stopwatch::start();
    for item in items {
        op(item);
    }
    watch.per_op(items.len() as u32)
}

/// Time per call of `op`, called `n` times.
fn per_call<R>(n: u32, mut op: impl FnMut() -> R) -> Sample {
    let watch = Stopwatch::start();
    for _ in 0..n {
        black_box(op());
    }
    watch.per_op(n)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `rounds` rounds (plus a discarded warm-up) of every contender on the same
/// round's inputs from `prepare`, rotating who goes first, so all see the same machine
/// state; each contender returns its time per operation. The medians of each (wall and
/// CPU time separately).
fn interleaved<T, const N: usize>(
    rounds: usize,
    mut prepare: impl FnMut() -> T,
    contenders: [&mut dyn FnMut(&T) -> Sample; N],
) -> [Sample; N] {
    let mut times: [Vec<Sample>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    for round in 0..=rounds {
        let inputs = prepare();
        for k in 0..N {
            let i = (round + k) % N;
            let t = contenders[i](&inputs);
            if round > 0 {
                times[i].push(t);
            }
        }
    }
    times.map(|samples| Sample {
        wall: median(samples.iter().map(|s| s.wall).collect()),
        cpu: median(samples.iter().map(|s| s.cpu).collect()),
    })
}

/// One line of the report.
struct Row {
    figure: String,
    baton: Sample,
    floor: Sample,
    floor_name: &'static str,
    /// Highest acceptable Baton ÷ floor, when the issue sets one.
    goal: Option<f64>,
    /// A line printed under the row, if not empty.
    note: String,
}

fn ratio(baton: Duration, floor: Duration) -> f64 {
    baton.as_secs_f64() / floor.as_secs_f64()
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "Baton hot paths vs their floors: median per operation of {ROUNDS} interleaved rounds, same run."
    );
    println!(
        "Times are thread CPU time; the goal is judged on the CPU ratio; the wall ratio is the same rounds by the clock."
    );
    println!(
        "  {:<38} {:>9} {:>9} {:>7} {:>7}  {:<24}  baseline",
        "figure", "baton", "baseline", "ratio", "wall", "goal"
    );
    for row in rows {
        let cpu_ratio = ratio(row.baton.cpu, row.floor.cpu);
        let wall_ratio = ratio(row.baton.wall, row.floor.wall);
        let goal = match row.goal {
            None => "-".to_owned(),
            Some(goal) if cpu_ratio <= goal => format!("<= {goal:.2}: met"),
            Some(goal) => format!(
                "<= {goal:.2}: MISSED by {:.0} %",
                (cpu_ratio / goal - 1.0) * 100.0
            ),
        };
        println!(
            "  {:<38} {:>9.2?} {:>9.2?} {:>6.3}x {:>6.3}x  {:<24}  {}",
            row.figure, row.baton.cpu, row.floor.cpu, cpu_ratio, wall_ratio, goal, row.floor_name
        );
        if !row.note.is_empty() {
            println!("  {:<38} {}", "", row.note);
        }
    }
}

/// The mint, attestation and batch lines of one algorithm.
fn setup_figures(s: &Setup, rows: &mut Vec<Row>) {
    let alg = s.name();

    const MINTS: u32 = 100;
    let [raw, core, endpoint, graph] = interleaved(
        ROUNDS,
        || (),
        [
            &mut |_: &()| per_call(MINTS, || s.raw_sign()),
            &mut |_: &()| per_call(MINTS, || s.mint_core()),
            &mut |_: &()| per_call(MINTS, || s.mint_endpoint()),
            &mut |_: &()| per_call(MINTS, || s.mint_graph()),
        ],
    );
    let floor_name = "raw ring sign, same key type and input length";
    rows.push(Row {
        figure: format!("mint {alg} core"),
        baton: core,
        floor: raw,
        floor_name,
        goal: Some(1.3),
        note: String::new(),
    });
    rows.push(Row {
        figure: format!("mint {alg} + limiter, metrics, audit"),
        baton: endpoint,
        floor: raw,
        floor_name,
        goal: Some(1.3),
        note: String::new(),
    });
    rows.push(Row {
        figure: format!("mint {alg} + call graph"),
        baton: graph,
        floor: endpoint,
        floor_name: "the line above, without the call graph",
        goal: Some(1.05),
        note: String::new(),
    });

    const WARM: usize = 40;
    let [baton, base] = interleaved(
        ROUNDS,
        || (0..WARM).map(|_| s.warm_input()).collect::<Vec<_>>(),
        [
            &mut |inputs: &Vec<Assertion>| per_op(inputs, |a| drop(black_box(s.attest(a)))),
            &mut |inputs: &Vec<Assertion>| per_op(inputs, |a| s.raw_verify(a)),
        ],
    );
    rows.push(Row {
        figure: format!("attest {alg} warm (verdict cached)"),
        baton,
        floor: base,
        floor_name: "raw ring verify of the assertion",
        goal: None,
        note: String::new(),
    });

    const COLD: usize = 20;
    let [baton, base] = interleaved(
        ROUNDS,
        || (0..COLD).map(|_| s.cold_input()).collect::<Vec<_>>(),
        [
            &mut |inputs: &Vec<(Assertion, Vec<u8>)>| {
                per_op(inputs, |(a, _)| drop(black_box(s.attest(a))))
            },
            &mut |inputs: &Vec<(Assertion, Vec<u8>)>| {
                per_op(inputs, |(a, cert)| {
                    s.raw_verify(a);
                    s.webpki_check(cert);
                })
            },
        ],
    );
    rows.push(Row {
        figure: format!("attest {alg} cold (new certificate)"),
        baton,
        floor: base,
        floor_name: "raw verify + webpki chain check of the leaf",
        goal: None,
        note: String::new(),
    });

    // Requests per round per count, so each contender runs about as long.
    const REQUESTS: [usize; 3] = [24, 6, 2];
    const SIGNS: u32 = 120;
    let prepare = || REQUESTS.map(|n| (0..n).map(|_| s.live_assertion()).collect::<Vec<_>>());
    let batch = |i: usize| {
        move |inputs: &[Vec<Assertion>; 3]| {
            let count = BATCH_COUNTS[i];
            let requests: Vec<_> = inputs[i]
                .iter()
                .map(|a| s.token_request(count, a))
                .collect();
            let n = requests.len() as u32;
            let watch = Stopwatch::start();
            for request in requests {
                s.send(request);
            }
            watch.per_op(n)
        }
    };
    let (mut b1, mut b16, mut b64) = (batch(0), batch(1), batch(2));
    let [raw, t1, t16, t64] = interleaved(
        ROUNDS,
        prepare,
        [
            &mut |_: &[Vec<Assertion>; 3]| per_call(SIGNS, || s.raw_sign()),
            &mut b1,
            &mut b16,
            &mut b64,
        ],
    );
    let ceiling = 1.0 / raw.cpu.as_secs_f64();
    let wall_ceiling = 1.0 / raw.wall.as_secs_f64();
    for (count, request) in BATCH_COUNTS.into_iter().zip([t1, t16, t64]) {
        let per_token = Sample {
            wall: request.wall / u32::from(count),
            cpu: request.cpu / u32::from(count),
        };
        let tokens_per_second = 1.0 / per_token.cpu.as_secs_f64();
        let wall_tokens_per_second = 1.0 / per_token.wall.as_secs_f64();
        rows.push(Row {
            figure: format!("batch {alg} count={count}, per token"),
            baton: per_token,
            floor: raw,
            floor_name: "raw ring sign",
            goal: None,
            note: format!(
                "{:.2?} per request; {tokens_per_second:.0} tokens/s = {:.2} of the sign-only ceiling ({ceiling:.0}/s); by the clock {wall_tokens_per_second:.0}/s = {:.2}",
                request.cpu,
                tokens_per_second / ceiling,
                wall_tokens_per_second / wall_ceiling,
            ),
        });
    }
}

fn benches(c: &mut Criterion, setups: &[Setup]) {
    for s in setups {
        let alg = s.name();
        let mut group = c.benchmark_group(format!("mint_{alg}"));
        group.bench_function("raw_ring_sign", |b| b.iter(|| s.raw_sign()));
        group.bench_function("mint_core", |b| b.iter(|| s.mint_core()));
        group.bench_function("mint_limiter_metrics_audit", |b| {
            b.iter(|| s.mint_endpoint())
        });
        group.bench_function("mint_call_graph", |b| b.iter(|| s.mint_graph()));
        group.finish();

        let mut group = c.benchmark_group(format!("attest_{alg}"));
        let fixed = s.warm_input();
        group.bench_function("raw_ring_verify", |b| b.iter(|| s.raw_verify(&fixed)));
        group.bench_function("attest_warm", |b| {
            b.iter_batched(|| s.warm_input(), |a| s.attest(&a), BatchSize::SmallInput)
        });
        let (fixed, cert) = s.cold_input();
        group.bench_function("raw_verify_webpki_chain", |b| {
            b.iter(|| {
                s.raw_verify(&fixed);
                s.webpki_check(&cert);
            })
        });
        group.bench_function("attest_cold", |b| {
            b.iter_batched(|| s.cold_input().0, |a| s.attest(&a), BatchSize::SmallInput)
        });
        group.finish();

        let mut group = c.benchmark_group(format!("batch_{alg}"));
        for count in BATCH_COUNTS {
            group.throughput(Throughput::Elements(u64::from(count)));
            group.bench_function(format!("count_{count}"), |b| {
                b.iter_batched(
                    || s.token_request(count, &s.live_assertion()),
                    |request| s.send(request),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }

    // A fresh ledger per sample, sized for it: a long-lived one would grow by millions
    // of entries over the measurement. The report's line measures at 1 M outstanding.
    let mut group = c.benchmark_group("ledger");
    group.bench_function("memory_ledger_consume", |b| {
        b.iter_custom(|iters| {
            let keys = ledger_keys(iters as usize);
            let ledger = MemoryLedger::new(keys.len(), LEDGER_T0);
            let start = Instant::now();
            for key in &keys {
                consume(&ledger, key);
            }
            start.elapsed()
        })
    });
    group.bench_function("floor_sha256_hashmap_insert", |b| {
        b.iter_custom(|iters| {
            let keys = ledger_keys(iters as usize);
            let floor = FloorLedger {
                map: Mutex::new(HashMap::new()),
            };
            let start = Instant::now();
            for key in &keys {
                floor.consume(key, (LEDGER_T0 + 300) as u32);
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Audit events as `baton serve` writes them (JSON, `info`), to `/dev/null`: formatted
/// and written for real, one `write` each, and discarded.
fn install_audit_log() {
    let dev_null: &'static std::fs::File = Box::leak(Box::new(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap(),
    ));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(move || dev_null)
        .json()
        .flatten_event(true)
        .init();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each benchmark once
    // as a smoke test, without the report.
    // `--profile-time` (for a profiler) runs only the selected benchmarks.
    let args: Vec<String> = std::env::args().collect();
    let report = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time");
    // First, while the heap is quiet: the resident-set growth must be the ledger's.
    let mut rows = if report { ledger_figures() } else { Vec::new() };

    install_audit_log();
    m::handle();
    let setups = [
        Setup::new(JwsAlgorithm::Es256),
        Setup::new(JwsAlgorithm::EdDsa),
    ];
    // Modest settings so the whole run stays within a few minutes on two cores;
    // command-line options still override them.
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    benches(&mut criterion, &setups);
    criterion.final_summary();

    if report {
        let mut lines = Vec::new();
        for s in &setups {
            setup_figures(s, &mut lines);
        }
        lines.append(&mut rows);
        print_table(&lines);
    }
}
