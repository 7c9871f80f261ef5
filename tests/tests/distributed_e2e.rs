//! Distributed mode end to end (SPEC §7 "Distributed", issue 8): two real `baton serve`
//! replicas sharing one real `redis-server`. A token and an assertion are each accepted
//! once across both; a rotation, a denial, a policy reload and a join token made on one
//! replica are honoured by the other; with Redis gone both fail closed (503 with
//! `Retry-After`, `/readyz` says so) and heal by themselves when it returns; and neither
//! Redis restarting nor a replica killed with SIGKILL mid-load lets any token be
//! accepted twice. Through Redis Sentinel, both replicas follow a failover of the
//! primary mid-load, again with no token accepted twice.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use baton_tests::{
    RedisSentinel, RedisServer, Sandbox, Server, https_client, kids_in_state, pem_blocks, sign_jws,
};
use serde_json::{Value, json};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Both replicas are one issuer: one identifier.
const ISSUER: &str = "https://baton.test";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
"#;

/// Two replicas over one Redis. Each replica has its own data directory (a copy of the
/// first: same CA, same KEK) and its own admin socket. `S` is the Redis the cluster
/// owns, if any (a Sentinel topology stays with the test, which kills its primary).
struct Cluster<S = RedisServer> {
    redis: S,
    sbs: [Sandbox; 2],
    servers: [Option<Server>; 2],
    bundle: String,
}

impl Cluster {
    fn start() -> Cluster {
        Self::start_with(RedisServer::start())
    }

    fn start_with(redis: RedisServer) -> Cluster {
        let url = redis.url();
        Cluster::start_at(redis, &url)
    }
}

impl<S> Cluster<S> {
    /// Two replicas whose `store` is `url`.
    fn start_at(redis: S, url: &str) -> Cluster<S> {
        let first = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (PAYMENTS, "payments", "ec-p256"),
            ],
            POLICY,
        );
        let config = format!(
            "store = \"{url}\"\nissuer_url = \"{ISSUER}\"\njwks_max_age = \"5s\"\nrotation_period = \"off\"\n"
        );
        std::fs::write(first.data_dir().join("config.toml"), &config).unwrap();
        let second = Sandbox::new();
        copy_dir(first.path(), second.path());
        let bundle = first.bundle();
        let mut cluster = Cluster {
            redis,
            sbs: [first, second],
            servers: [None, None],
            bundle,
        };
        for i in 0..2 {
            cluster.start_replica(i);
        }
        cluster
    }

    fn start_replica(&mut self, i: usize) {
        self.servers[i] = Some(Server::start(&self.sbs[i], &["--policy", "policy.toml"]));
    }

    fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().unwrap()
    }

    fn mtls(&self, dir: &str) -> reqwest::Client {
        let sb = &self.sbs[0];
        https_client(
            &self.bundle,
            Some((
                &sb.read(&format!("{dir}/svid.pem")),
                &sb.read(&format!("{dir}/svid.key")),
            )),
        )
    }

    fn assertion(&self) -> String {
        let sb = &self.sbs[0];
        let x5c: Vec<String> = pem_blocks(&sb.read("orders/svid.pem"))
            .iter()
            .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
            .collect();
        let now = unix_now();
        sign_jws(
            &json!({"alg": "ES256", "typ": "JWT", "x5c": x5c}),
            &json!({"iss": ORDERS, "sub": ORDERS, "aud": ISSUER, "jti": unique(),
                    "iat": now, "exp": now + 60}),
            &sb.read("orders/svid.key"),
        )
    }

    async fn post(
        &self,
        replica: usize,
        client: &reqwest::Client,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let resp = client
            .post(self.server(replica).url(path))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
        (status, body, headers)
    }

    /// A token for payments, minted by orders over mTLS on `replica`.
    async fn mint(&self, replica: usize, client: &reqwest::Client) -> Result<String, u16> {
        let (status, body, _) = self
            .post(
                replica,
                client,
                "/v1/token",
                &[("grant_type", "client_credentials"), ("audience", PAYMENTS)],
            )
            .await;
        match status {
            200 => Ok(body["access_token"].as_str().unwrap().to_owned()),
            other => Err(other),
        }
    }

    /// Introspection by payments (the audience: its one use) on `replica`.
    async fn consume(
        &self,
        replica: usize,
        client: &reqwest::Client,
        token: &str,
    ) -> Result<bool, u16> {
        let (status, body, _) = self
            .post(replica, client, "/v1/introspect", &[("token", token)])
            .await;
        match status {
            200 => Ok(body["active"] == json!(true)),
            other => Err(other),
        }
    }

    async fn get(&self, replica: usize, path: &str) -> (u16, String) {
        let resp = https_client(&self.bundle, None)
            .get(self.server(replica).url(path))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn active_kid(&self, replica: usize) -> String {
        let (_, body) = self.get(replica, "/.well-known/jwks.json").await;
        let token = self.mint(replica, &self.mtls("orders")).await.unwrap();
        let header = token.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        let kid = header["kid"].as_str().unwrap().to_owned();
        assert!(body.contains(&kid), "the signing key is published: {body}");
        kid
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn unique() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 100 ms for up to `limit`.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_an_assertion_are_each_accepted_once_across_replicas() {
    let c = Cluster::start();
    let orders = c.mtls("orders");
    let payments = c.mtls("payments");
    // Minted on either, consumed on either: once.
    for (mint_on, first, second) in [(0, 0, 1), (1, 1, 0), (0, 1, 0)] {
        let token = c.mint(mint_on, &orders).await.unwrap();
        assert_eq!(c.consume(first, &payments, &token).await, Ok(true));
        assert_eq!(c.consume(second, &payments, &token).await, Ok(false));
    }
    // Concurrent presentations split across both replicas: exactly one is active.
    let token = c.mint(0, &orders).await.unwrap();
    let c = Arc::new(c);
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let (c, token, payments) = (Arc::clone(&c), token.clone(), payments.clone());
            tokio::spawn(async move { c.consume(i % 2, &payments, &token).await })
        })
        .collect();
    let mut active = 0;
    for h in handles {
        if h.await.unwrap() == Ok(true) {
            active += 1;
        }
    }
    assert_eq!(active, 1);

    // One signed assertion, presented to both.
    let assertion = c.assertion();
    let form = [
        ("grant_type", "client_credentials"),
        ("audience", PAYMENTS),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
    ];
    let plain = https_client(&c.bundle, None);
    let (a, _, _) = c.post(0, &plain, "/v1/token", &form).await;
    let (b, body, _) = c.post(1, &plain, "/v1/token", &form).await;
    assert_eq!((a, b), (200, 401), "{body}");
    assert!(body.to_string().contains("already used"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_redis_guards_and_issuer_replicas_share_one_time_use() {
    use baton_sdk::{RedisReplayGuard, Verifier, VerifyError};
    let c = Cluster::start();
    let (_, jwks) = c.get(0, "/.well-known/jwks.json").await;
    let guard = RedisReplayGuard::connect(&c.redis.url()).await.unwrap();
    let verifier = Verifier::builder(ISSUER, PAYMENTS.parse().unwrap(), c.bundle.as_bytes())
        .unwrap()
        .jwks(jwks.as_bytes())
        .unwrap()
        .shared_replay_guard(Arc::new(guard))
        .build()
        .unwrap();
    let orders = c.mtls("orders");
    let payments = c.mtls("payments");

    // Accepted by a callee's guard: the issuer's introspection finds it used.
    let token = c.mint(0, &orders).await.unwrap();
    let caller = verifier.verify_async(&token).await.unwrap();
    assert_eq!(caller.id.as_str(), ORDERS);
    assert_eq!(c.consume(1, &payments, &token).await, Ok(false));

    // Consumed by introspection at the issuer: the guard refuses it.
    let token = c.mint(1, &orders).await.unwrap();
    assert_eq!(c.consume(0, &payments, &token).await, Ok(true));
    assert!(matches!(
        verifier.verify_async(&token).await,
        Err(VerifyError::Replayed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_through_one_replica_are_served_by_the_other() {
    let c = Cluster::start();
    let before = c.active_kid(1).await;
    assert_eq!(c.active_kid(0).await, before, "one keyring");

    // Rotation through replica 0's admin socket.
    let listed = c.sbs[0].keys_json(&["rotate"]);
    let rotated = kids_in_state(&listed, "active").pop().unwrap();
    assert_ne!(rotated, before);
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.active_kid(1).await == rotated
        })
        .await,
        "replica 1 signs with the rotated key"
    );
    let other = c.sbs[1].keys_json(&["list"]);
    assert_eq!(kids_in_state(&other, "active"), vec![rotated.clone()]);

    // A join token made with replica 0's data directory redeems on replica 1, once.
    let out = c.sbs[0].baton(&["enroll", "--id", PAYMENTS, "--join-token", "--json"]);
    let join: Value = serde_json::from_str(out.ok()).unwrap();
    let token = join["join_token"].as_str().unwrap();
    let csr = c.sbs[0]
        .openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "jt.key",
            "-subj",
            "/CN=x",
        ])
        .ok()
        .to_owned();
    let plain = https_client(&c.bundle, None);
    let form = [("csr", csr.as_str()), ("join_token", token)];
    let (first, body, _) = c.post(1, &plain, "/v1/svid", &form).await;
    assert_eq!(first, 200, "{body}");
    let (second, _, _) = c.post(0, &plain, "/v1/svid", &form).await;
    assert_eq!(second, 401);
    let listed = c.sbs[1].baton(&["join-tokens", "list", "--json"]);
    assert_eq!(listed.ok().trim(), "[]");

    // A denial through replica 1 stops minting on replica 0.
    c.sbs[1].baton(&["identities", "revoke", ORDERS]).ok();
    let orders = c.mtls("orders");
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.mint(0, &orders).await == Err(401)
        })
        .await,
        "replica 0 refuses the denied identity"
    );

    // A policy reload through replica 0 (payments may now call orders) reaches replica 1.
    let more = format!("{POLICY}\n[[allow]]\ncaller = \"{PAYMENTS}\"\naudience = \"{ORDERS}\"\n");
    std::fs::write(c.sbs[0].path().join("policy.toml"), more).unwrap();
    c.sbs[0].baton(&["policy", "reload"]).ok();
    let payments = c.mtls("payments");
    let form = [("grant_type", "client_credentials"), ("audience", ORDERS)];
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.post(1, &payments, "/v1/token", &form).await.0 == 200
        })
        .await,
        "replica 1 follows the reloaded policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_both_replicas_fail_closed_and_heal_when_it_returns() {
    let mut c = Cluster::start_with(RedisServer::start_durable());
    let orders = c.mtls("orders");
    let payments = c.mtls("payments");
    let token = c.mint(0, &orders).await.unwrap();
    c.redis.kill();

    for replica in 0..2 {
        assert!(
            eventually(Duration::from_secs(5), || async {
                c.get(replica, "/readyz").await.0 == 503
            })
            .await,
            "readyz reflects the store"
        );
        // Each replica notices at its next check of the store (every 0.5 s).
        let form = [("grant_type", "client_credentials"), ("audience", PAYMENTS)];
        assert!(
            eventually(Duration::from_secs(5), || async {
                c.post(replica, &orders, "/v1/token", &form).await.0 == 503
            })
            .await,
            "replica {replica} stops minting"
        );
        let (status, body, headers) = c.post(replica, &orders, "/v1/token", &form).await;
        assert_eq!(status, 503, "{body}");
        assert!(headers.contains_key("retry-after"));
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(c.consume(replica, &payments, &token).await, Err(503));
        assert_eq!(
            c.get(replica, "/healthz").await.0,
            200,
            "alive, only not ready"
        );
    }

    c.redis.restart();
    for replica in 0..2 {
        assert!(
            eventually(Duration::from_secs(10), || async {
                c.get(replica, "/readyz").await.0 == 200
            })
            .await,
            "replica {replica} is ready again"
        );
    }
    // The token minted before the outage is still good once, and only once.
    assert_eq!(c.consume(1, &payments, &token).await, Ok(true));
    assert_eq!(c.consume(0, &payments, &token).await, Ok(false));
    assert!(c.mint(0, &orders).await.is_ok());
}

/// Load on both replicas: every token is minted on one and presented to both. Returns
/// how many tokens were accepted more than once, and how many were accepted at all.
async fn load<S>(c: Arc<Cluster<S>>, stop: Arc<AtomicBool>, only: Option<usize>) -> (usize, usize) {
    let orders = c.mtls("orders");
    let payments = c.mtls("payments");
    let mut accepted: HashMap<String, usize> = HashMap::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mint_on = only.unwrap_or(n % 2);
        let Ok(token) = c.mint(mint_on, &orders).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for replica in [0, 1] {
            if only.is_some_and(|o| o != replica) {
                continue;
            }
            if c.servers[replica].is_none() {
                continue;
            }
            if let Ok(true) = c.consume(replica, &payments, &token).await {
                *accepted.entry(token.clone()).or_default() += 1;
            }
        }
        // Presented again to both: a replay must never be accepted.
        for replica in [1, 0] {
            if only.is_some_and(|o| o != replica) {
                continue;
            }
            if let Ok(true) = c.consume(replica, &payments, &token).await {
                *accepted.entry(token.clone()).or_default() += 1;
            }
        }
    }
    let twice = accepted.values().filter(|&&n| n > 1).count();
    (twice, accepted.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_mid_load_never_lets_a_token_through_twice() {
    // No persistence: Redis comes back empty, and the ledger's epoch rule must refuse
    // every token issued before, whatever replica sees it.
    let c = Arc::new(Cluster::start());
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(load(Arc::clone(&c), Arc::clone(&stop), None));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill and restart through a raw handle: the cluster is shared with the load.
    let port = c.redis.port().to_string();
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", &port, "SHUTDOWN", "NOSAVE"])
        .status();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let revived = RedisServer::start_on(c.redis.port());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let (twice, accepted) = worker.await.unwrap();
    assert_eq!(twice, 0, "a token was accepted twice");
    assert!(accepted > 0, "the load accepted tokens at all");
    // Service resumed after the restart.
    assert!(c.mint(0, &c.mtls("orders")).await.is_ok());
    drop(revived);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_loses_nothing() {
    let mut c = Cluster::start();
    // Tokens consumed on replica 0 before it dies stay consumed for replica 1.
    let orders = c.mtls("orders");
    let payments = c.mtls("payments");
    let mut consumed = Vec::new();
    for _ in 0..5 {
        let token = c.mint(0, &orders).await.unwrap();
        assert_eq!(c.consume(0, &payments, &token).await, Ok(true));
        consumed.push(token);
    }
    let unconsumed = c.mint(0, &orders).await.unwrap();
    let rotated = kids_in_state(&c.sbs[0].keys_json(&["rotate"]), "active")
        .pop()
        .unwrap();

    c.servers[0].as_mut().unwrap().signal("KILL");
    c.servers[0] = None;

    for token in &consumed {
        assert_eq!(
            c.consume(1, &payments, token).await,
            Ok(false),
            "still consumed"
        );
    }
    assert_eq!(
        c.consume(1, &payments, &unconsumed).await,
        Ok(true),
        "still valid once"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.active_kid(1).await == rotated
        })
        .await,
        "the rotation made before the kill is served"
    );

    // Load on the survivor, then the killed replica comes back into the same state.
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(load(Arc::clone(&c), Arc::clone(&stop), Some(1)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (twice, accepted) = worker.await.unwrap();
    assert_eq!(twice, 0);
    assert!(accepted > 0);
    let mut c = Arc::into_inner(c).unwrap();
    c.start_replica(0);
    assert_eq!(c.active_kid(0).await, rotated);
    for token in &consumed {
        assert_eq!(c.consume(0, &payments, token).await, Ok(false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_can_be_reached_over_tls_and_an_untrusted_one_is_refused() {
    // A CA and a server certificate for localhost, made by openssl.
    let sb = Sandbox::with_workloads(
        &[
            (ORDERS, "orders", "ec-p256"),
            (PAYMENTS, "payments", "ec-p256"),
        ],
        POLICY,
    );
    sb.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "redis-ca.key",
        "-out",
        "redis-ca.pem",
        "-subj",
        "/CN=redis test CA",
        "-days",
        "1",
    ])
    .ok();
    sb.openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=localhost",
    ])
    .ok();
    std::fs::write(
        sb.path().join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    sb.openssl(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "redis-ca.pem",
        "-CAkey",
        "redis-ca.key",
        "-CAcreateserial",
        "-out",
        "redis.pem",
        "-days",
        "1",
        "-extfile",
        "ext",
    ])
    .ok();
    let redis = RedisServer::start_tls(
        &sb.path().join("redis.pem"),
        &sb.path().join("redis.key"),
        &sb.path().join("redis-ca.pem"),
    );
    assert!(redis.url().starts_with("rediss://"));
    std::fs::write(
        sb.data_dir().join("config.toml"),
        format!("store = \"{}\"\nissuer_url = \"{ISSUER}\"\n", redis.url()),
    )
    .unwrap();

    // Not trusting the store's certificate: the issuer refuses to start, saying why.
    let empty = sb.path().join("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    let refused = sb.baton_with_env(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            "policy.toml",
        ],
        &[("SSL_CERT_FILE", empty.as_path())],
    );
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("distributed store"),
        "{}",
        refused.stderr
    );

    // Trusting it (SSL_CERT_FILE, as rustls-native-certs reads it): a working replica.
    let ca = sb.path().join("redis-ca.pem").display().to_string();
    let server =
        Server::start_with_env(&sb, &["--policy", "policy.toml"], &[("SSL_CERT_FILE", &ca)]);
    let bundle = sb.bundle();
    let orders = https_client(
        &bundle,
        Some((&sb.read("orders/svid.pem"), &sb.read("orders/svid.key"))),
    );
    let payments = https_client(
        &bundle,
        Some((&sb.read("payments/svid.pem"), &sb.read("payments/svid.key"))),
    );
    let minted: Value = orders
        .post(server.url("/v1/token"))
        .form(&[("grant_type", "client_credentials"), ("audience", PAYMENTS)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["access_token"].as_str().unwrap();
    for expected in [true, false] {
        let answer: Value = payments
            .post(server.url("/v1/introspect"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["active"], json!(expected), "{answer}");
    }
    assert!(
        redis.cli(&["DBSIZE"]).parse::<u64>().unwrap() > 0,
        "state went to Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_both_replicas_follow_a_failover_mid_load() {
    let mut sentinel = RedisSentinel::start();
    let c = Arc::new(Cluster::start_at((), &sentinel.url()));
    let orders = c.mtls("orders");
    let payments = c.mtls("payments");
    let used = c.mint(0, &orders).await.unwrap();
    assert_eq!(c.consume(1, &payments, &used).await, Ok(true));
    let outstanding = c.mint(1, &orders).await.unwrap();
    let kid = c.active_kid(0).await;
    // Everything so far has reached the replica: this test is about following the
    // failover, not about what asynchronous replication may lose.
    sentinel.wait_for_replication(Duration::from_secs(5));

    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(load(Arc::clone(&c), Arc::clone(&stop), None));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = sentinel.primary_port();
    sentinel.kill_primary();
    let new =
        tokio::task::block_in_place(|| sentinel.wait_for_failover(old, Duration::from_secs(30)));
    assert_ne!(new, old);
    for replica in 0..2 {
        assert!(
            eventually(Duration::from_secs(20), || async {
                c.mint(replica, &orders).await.is_ok()
            })
            .await,
            "replica {replica} mints again through the new primary"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (twice, accepted) = worker.await.unwrap();
    assert_eq!(twice, 0, "a token was accepted twice");
    assert!(accepted > 0, "the load accepted tokens at all");

    // The new primary had the keyring: the same key signs.
    assert_eq!(c.active_kid(1).await, kid);
    for replica in 0..2 {
        assert_eq!(c.get(replica, "/readyz").await.0, 200);
    }
    // Used before the failover: still used. Outstanding: refused too, since its use
    // on the old primary might not have reached the new one (a new ledger epoch).
    assert_eq!(c.consume(0, &payments, &used).await, Ok(false));
    assert_eq!(c.consume(1, &payments, &outstanding).await, Ok(false));
    // Minted after the failover: once across both replicas.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = c.mint(0, &orders).await.unwrap();
    assert_eq!(c.consume(1, &payments, &fresh).await, Ok(true));
    assert_eq!(c.consume(0, &payments, &fresh).await, Ok(false));
    let epoch_server = sentinel.cli_primary(&["GET", "{baton}:ledger:epoch-server"]);
    let run_id = sentinel.cli_primary(&["INFO", "server"]);
    assert!(
        !epoch_server.is_empty() && run_id.contains(&format!("run_id:{epoch_server}")),
        "the epoch names the new primary: {epoch_server}"
    );
}

/// Issue 12: the call graph is kept in the store; `baton graph` on any replica reads
/// the sum of what every replica recorded, and the enrollments `baton enroll` makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_graph_in_redis_sums_every_replica() {
    let c = Cluster::start();
    let orders = c.mtls("orders");
    // Enrolled through the admin socket of replica 1, into the shared store
    // (first: the flush that carries the refusal below carries it too).
    c.sbs[1]
        .baton(&[
            "enroll",
            "--id",
            "spiffe://example.org/fn/late",
            "--out",
            "late",
        ])
        .ok();
    for replica in [0, 0, 1, 1, 1] {
        c.mint(replica, &orders).await.unwrap();
    }
    let ledger = "spiffe://example.org/fn/ledger";
    let (status, _, _) = c
        .post(
            1,
            &orders,
            "/v1/token",
            &[("grant_type", "client_credentials"), ("audience", ledger)],
        )
        .await;
    assert_eq!(status, 400);

    // Replica 0 sees replica 1's records once replica 1 has flushed (every 5 s).
    let read = || {
        let out = c.sbs[0].baton(&["graph", "--json"]);
        serde_json::from_str::<Value>(out.ok()).unwrap()
    };
    let summed = eventually(Duration::from_secs(20), || {
        let graph = read();
        async move {
            let edges = graph["edges"].as_array().unwrap().clone();
            let issued = edges
                .iter()
                .find(|e| e["caller"] == ORDERS && e["audience"] == PAYMENTS)
                .map(|e| e["issued"].clone());
            let denied = edges
                .iter()
                .find(|e| e["audience"] == "spiffe://example.org/fn/ledger")
                .map(|e| e["denied"]["audience_not_allowed"].clone());
            issued == Some(json!(5)) && denied == Some(json!(1))
        }
    })
    .await;
    assert!(summed, "{}", read());
    assert!(read()["store"].as_str().unwrap().starts_with("redis://"));
    let ids = c.sbs[0].baton(&["identities", "list", "--json"]);
    let ids: Value = serde_json::from_str(ids.ok()).unwrap();
    let late = ids
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "spiffe://example.org/fn/late")
        .unwrap_or_else(|| panic!("{ids}"));
    assert!(late["cert_not_after"].as_i64().unwrap() > 0, "{late}");
    // Nothing went to the data directories: the store holds the graph. (The file the
    // first one has holds only the enrollments made before it had a store.)
    for sb in &c.sbs {
        let file = std::fs::read_to_string(sb.data_dir().join("graph.json")).unwrap_or_default();
        assert!(
            !file.contains("fn/late") && !file.contains("\"issued\""),
            "{file}"
        );
    }
    let keys = c.redis.cli(&["KEYS", "{baton}:graph:*"]);
    assert!(keys.contains("{baton}:graph:"), "{keys}");
}
