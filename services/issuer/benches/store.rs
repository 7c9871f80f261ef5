//! What the shared Redis store costs next to the embedded store (issue 8, item 6).
//!
//! For each store, in the same run, against a real `redis-server` on loopback started
//! here: the token endpoint's work for a client assertion (attest it, consuming its
//! `jti` through the ledger, then mint one token), the audience's introspection of a
//! fresh token (its one use, through the ledger), and a raw ledger `consume` of a fresh
//! key (the floor). Assertions and tokens are signed outside the timed loop, so the
//! client's signing is not measured. Then an interleaved measurement prints, per item,
//! the median time of each store, its sequential throughput and the Redis ÷ embedded
//! ratio.
//!
//! Everything runs on a current-thread tokio runtime, one operation per `block_on`: one
//! client, no concurrency, so the numbers are latencies; a server spreads requests over
//! its workers and Redis answers many connections at once.
//!
//! `cargo bench -p baton-issuer --bench store` (needs `redis-server` on the PATH).

// Benchmark code: a failed fixture step is a failed benchmark.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_issuer::attest::Attestor;
use baton_issuer::datadir::{DataDir, KekSource, OpenDataDir};
use baton_issuer::deny::DenyList;
use baton_issuer::introspect::Introspector;
use baton_issuer::keyring::Keyring;
use baton_issuer::ledger::{MemoryLedger, RedisLedger, ReplayLedger};
use baton_issuer::mint::{self, TokenSpec};
use baton_issuer::pki::{DEFAULT_CA_TTL, KeyType};
use baton_proto::claims::JwsAlgorithm;
use baton_proto::{SpiffeId, TrustDomain};
use baton_tests::RedisServer;
use criterion::{BatchSize, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;
use time::OffsetDateTime;
use tokio::runtime::Runtime;

const ISSUER: &str = "https://baton.example.org";
const CALLER: &str = "spiffe://example.org/fn/orders";
const AUDIENCE: &str = "spiffe://example.org/fn/payments";
/// Lifetime of the benchmark's assertions and tokens: far longer than the run, since
/// every operation is given the same `now`.
const TTL_SECS: i64 = 60;

/// A unique id per assertion, token key and raw ledger key of the whole run.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The workload: its certificate (in every assertion's `x5c`) and its parsed key.
struct Workload {
    header_b64: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Workload {
    fn new(data: &OpenDataDir, now: i64) -> Workload {
        let key = KeyType::EcP256.generate().unwrap();
        let cert = data
            .ca()
            .issue_svid(
                &CALLER.parse().unwrap(),
                &key,
                Duration::from_secs(86_400),
                OffsetDateTime::from_unix_timestamp(now - 60).unwrap(),
            )
            .unwrap();
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.serialized_der(), &rng)
                .unwrap();
        let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(&cert.der)]});
        Workload {
            header_b64: URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            key,
            rng,
        }
    }

    /// A fresh client assertion (RFC 7523) issued at `now`, with a unique `jti`.
    fn assertion(&self, now: i64) -> String {
        let claims = json!({
            "iss": CALLER,
            "sub": CALLER,
            "aud": ISSUER,
            "jti": format!("bench-{}", next_id()),
            "iat": now,
            "exp": now + TTL_SECS,
        });
        let mut jws = format!("{}.", self.header_b64);
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&claims).unwrap(), &mut jws);
        let signature = self.key.sign(&self.rng, jws.as_bytes()).unwrap();
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        jws
    }
}

/// One store's issuer side: the attestor and introspector over its ledger.
struct Store {
    name: &'static str,
    ledger: Arc<dyn ReplayLedger>,
    attestor: Attestor,
    introspector: Introspector,
}

impl Store {
    fn new(name: &'static str, data: &OpenDataDir, ledger: Arc<dyn ReplayLedger>) -> Store {
        let deny = Arc::new(DenyList::new());
        let ca = data.ca();
        let attestor = Attestor::new(
            vec![ca.cert_der().to_vec()],
            ca.trust_domain().clone(),
            vec![ISSUER.to_owned()],
            Arc::clone(&deny),
            Arc::clone(&ledger),
        )
        .unwrap();
        let introspector = Introspector::new(ISSUER.to_owned(), deny, Arc::clone(&ledger));
        Store {
            name,
            ledger,
            attestor,
            introspector,
        }
    }
}

/// Everything both stores share, and the two stores.
///
/// Fields drop in order: the stores (and the Redis connection) before the server and
/// the runtime they use.
struct Setup {
    stores: [Store; 2],
    keyring: Keyring,
    workload: Workload,
    audience: SpiffeId,
    /// The `now` of every operation: after both ledgers' epochs, so nothing is stale.
    now: i64,
    // Kept alive for the whole run: the Redis child process and the data directory.
    _redis: RedisServer,
    _tmp: tempfile::TempDir,
    rt: Runtime,
}

impl Setup {
    fn new() -> Setup {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let data = DataDir::new(tmp.path().join("data"))
            .init(
                &td,
                &KekSource::Dev,
                DEFAULT_CA_TTL,
                OffsetDateTime::now_utc(),
            )
            .unwrap()
            .store;
        let keyring =
            Keyring::load_or_init(&data, JwsAlgorithm::Es256, OffsetDateTime::now_utc()).unwrap();

        let redis_server = RedisServer::start();
        let redis = rt
            .block_on(RedisLedger::connect(&redis_server.url()))
            .unwrap();
        let started = OffsetDateTime::now_utc().unix_timestamp();
        let redis_epoch = rt.block_on(redis.epoch(started)).unwrap();
        let now = started.max(redis_epoch) + 1;
        // Capacity far above what a run consumes: the floor must never meet `Full`.
        let memory = MemoryLedger::new(100_000_000, started);

        let workload = Workload::new(&data, now);
        let stores = [
            Store::new("embedded", &data, Arc::new(memory)),
            Store::new("redis", &data, Arc::new(redis)),
        ];
        let setup = Setup {
            rt,
            _tmp: tmp,
            _redis: redis_server,
            keyring,
            workload,
            audience: AUDIENCE.parse().unwrap(),
            now,
            stores,
        };
        // Each path once per store, which also fills the attestor's chain-verdict cache
        // as a running issuer's would be.
        for store in &setup.stores {
            let assertion = setup.workload.assertion(now);
            setup.mint_with_assertion(store, &assertion);
            let token = setup.token();
            setup.introspect(store, &token);
            setup.consume(store, &raw_key());
        }
        setup
    }

    /// The token endpoint's work for a `private_key_jwt` caller: attest (consuming the
    /// assertion's `jti`), then mint one token under a new session. Policy evaluation
    /// is left out: it is local and the same for both stores.
    fn mint_with_assertion(&self, store: &Store, assertion: &str) -> String {
        let attested = self
            .rt
            .block_on(store.attestor.attest_assertion(assertion, self.now))
            .unwrap_or_else(|e| panic!("{}: attest: {e}", store.name));
        let sid = mint::new_session_id().unwrap();
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &attested.id,
            audience: &self.audience,
            scope: None,
            ttl: Duration::from_secs(TTL_SECS as u64),
            sid: &sid,
            cnf_x5t_s256: None,
        };
        mint::mint(self.keyring.active(), &spec, self.now)
            .unwrap()
            .token
    }

    /// A fresh token for the audience, minted outside any timing.
    fn token(&self) -> String {
        let caller: SpiffeId = CALLER.parse().unwrap();
        let sid = mint::new_session_id().unwrap();
        let spec = TokenSpec {
            issuer: ISSUER,
            caller: &caller,
            audience: &self.audience,
            scope: None,
            ttl: Duration::from_secs(TTL_SECS as u64),
            sid: &sid,
            cnf_x5t_s256: None,
        };
        mint::mint(self.keyring.active(), &spec, self.now)
            .unwrap()
            .token
    }

    /// The audience introspects `token`: its one use.
    fn introspect(&self, store: &Store, token: &str) {
        self.rt
            .block_on(
                store
                    .introspector
                    .introspect(&self.keyring, token, &self.audience, self.now),
            )
            .unwrap_or_else(|e| panic!("{}: introspect: {:?}", store.name, e.reason));
    }

    fn consume(&self, store: &Store, key: &str) {
        self.rt
            .block_on(
                store
                    .ledger
                    .consume(key, Some(self.now), self.now + TTL_SECS, self.now),
            )
            .unwrap_or_else(|e| panic!("{}: consume: {e}", store.name));
    }
}

fn raw_key() -> String {
    format!("bench-raw {}", next_id())
}

/// The three measured items, each with its untimed input and its timed operation.
#[derive(Clone, Copy)]
enum Item {
    Mint,
    Introspect,
    Consume,
}

impl Item {
    const ALL: [Item; 3] = [Item::Mint, Item::Introspect, Item::Consume];

    fn name(self) -> &'static str {
        match self {
            Item::Mint => "mint_with_assertion",
            Item::Introspect => "introspect_by_audience",
            Item::Consume => "ledger_consume",
        }
    }

    /// A fresh input: a signed assertion, a minted token, or a new ledger key.
    fn input(self, s: &Setup) -> String {
        match self {
            Item::Mint => s.workload.assertion(s.now),
            Item::Introspect => s.token(),
            Item::Consume => raw_key(),
        }
    }

    fn run(self, s: &Setup, store: &Store, input: &str) {
        match self {
            Item::Mint => {
                black_box(s.mint_with_assertion(store, input));
            }
            Item::Introspect => s.introspect(store, input),
            Item::Consume => s.consume(store, input),
        }
    }
}

fn benches(c: &mut Criterion, s: &Setup) {
    for item in Item::ALL {
        let mut group = c.benchmark_group(format!("store_{}", item.name()));
        for store in &s.stores {
            group.bench_function(store.name, |b| {
                b.iter_batched(
                    || item.input(s),
                    |input| item.run(s, store, &input),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_second(d: Duration) -> f64 {
    1.0 / d.as_secs_f64()
}

/// Both stores interleaved round by round, so both see the same machine state; per item
/// the median per-operation time of each, its throughput and their ratio.
fn ratio_report(s: &Setup) {
    const ROUNDS: usize = 11;
    const PER_ROUND: usize = 400;
    println!();
    println!(
        "Redis store vs embedded store (median of {ROUNDS} interleaved rounds of {PER_ROUND}; one client, sequential):"
    );
    for item in Item::ALL {
        let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (store, times) in s.stores.iter().zip(&mut times) {
                let inputs: Vec<String> = (0..PER_ROUND).map(|_| item.input(s)).collect();
                let t = Instant::now();
                for input in &inputs {
                    item.run(s, store, input);
                }
                times.push(t.elapsed() / PER_ROUND as u32);
            }
        }
        let [embedded, redis] = times.map(median);
        println!(
            "  {:<22}  embedded {:>9.2?} ({:>7.0} ops/s)   redis {:>9.2?} ({:>7.0} ops/s)   = {:.2}x (+{:.2?})",
            item.name(),
            embedded,
            per_second(embedded),
            redis,
            per_second(redis),
            redis.as_secs_f64() / embedded.as_secs_f64(),
            redis.saturating_sub(embedded),
        );
    }
}

fn main() {
    let setup = Setup::new();
    // Modest defaults so the whole run takes a few minutes on two cores; command-line
    // options still override them.
    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut criterion, &setup);
    criterion.final_summary();
    // `cargo test --benches` runs each benchmark once as a smoke test; the ratio is
    // measured only under `cargo bench`.
    if std::env::args().any(|a| a == "--bench") {
        ratio_report(&setup);
    }
}
