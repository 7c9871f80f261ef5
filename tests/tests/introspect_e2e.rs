//! One-time use end to end against the real `baton serve` (SPEC §4 "one-time", §5
//! introspect and revoke rows, §7 replay ledger, §9 `identities revoke` and `policy
//! reload`): RFC 7662 introspection consumes a token once, RFC 7009 revocation kills a
//! session, the deny list and the policy change through the admin socket, and a
//! restarted issuer opens no replay window.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::time::Duration;

use base64::Engine as _;
use baton_tests::{Sandbox, Server, https_client, pem_blocks, sign_jws};
use serde_json::{Value, json};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const LEDGER: &str = "spiffe://example.org/fn/ledger";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Fixed, so that tokens keep their `iss` across a restart on another port: a
/// restarted issuer must refuse them by the start-time rule, not by a changed `iss`.
const ISSUER_URL: &str = "https://localhost:8443";

const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge"]
"#;

struct World {
    sb: Sandbox,
    server: Server,
    bundle: String,
    plain: reqwest::Client,
}

impl World {
    fn start() -> World {
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (PAYMENTS, "payments", "ec-p256"),
                (LEDGER, "ledger", "ec-p256"),
            ],
            POLICY,
        );
        let server = start_server(&sb);
        let bundle = sb.bundle();
        let plain = https_client(&bundle, None);
        World {
            sb,
            server,
            bundle,
            plain,
        }
    }

    /// SIGTERM, wait for a clean exit, start again on the same data directory.
    fn restart(&mut self) {
        self.server.signal("TERM");
        assert_eq!(self.server.wait_exit(Duration::from_secs(15)), Some(0));
        self.server = start_server(&self.sb);
    }

    fn read(&self, rel: &str) -> String {
        self.sb.read(rel)
    }

    /// A client presenting the workload certificate in `dir` over mTLS.
    fn mtls(&self, dir: &str) -> reqwest::Client {
        let chain = self.read(&format!("{dir}/svid.pem"));
        let key = self.read(&format!("{dir}/svid.key"));
        https_client(&self.bundle, Some((&chain, &key)))
    }

    /// A fresh RFC 7523 client assertion for the workload in `dir`.
    fn assertion(&self, dir: &str, id: &str) -> String {
        let x5c: Vec<String> = pem_blocks(&self.read(&format!("{dir}/svid.pem")))
            .iter()
            .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
            .collect();
        let claims = json!({
            "iss": id, "sub": id, "aud": ISSUER_URL, "jti": unique("a"),
            "iat": now(), "exp": now() + 60,
        });
        sign_jws(
            &json!({"alg": "ES256", "typ": "JWT", "x5c": x5c}),
            &claims,
            &self.read(&format!("{dir}/svid.key")),
        )
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let resp = client
            .post(self.server.url(path))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.text().await.unwrap(), headers)
    }

    /// `count` tokens for `audience`, minted by orders over mTLS (one session).
    async fn mint(&self, audience: &str, count: u8) -> Vec<String> {
        let count = count.to_string();
        let (status, body, _) = self
            .post(
                &self.mtls("orders"),
                "/v1/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("audience", audience),
                    ("count", &count),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        match body.get("access_tokens") {
            Some(all) => all
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect(),
            None => vec![body["access_token"].as_str().unwrap().to_owned()],
        }
    }

    /// Introspects `token` as the workload in `dir`, over mTLS.
    async fn introspect(&self, dir: &str, token: &str) -> Value {
        let (status, body, headers) = self
            .post(&self.mtls(dir), "/v1/introspect", &[("token", token)])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["cache-control"], "no-store");
        serde_json::from_str(&body).unwrap()
    }

    /// Revokes `token` as the workload in `dir`, over mTLS.
    async fn revoke(&self, dir: &str, token: &str) -> (u16, String) {
        let (status, body, _) = self
            .post(&self.mtls(dir), "/v1/revoke", &[("token", token)])
            .await;
        (status, body)
    }

    async fn metrics(&self) -> String {
        self.plain
            .get(self.server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn start_server(sb: &Sandbox) -> Server {
    Server::start(sb, &["--policy", "policy.toml", "--issuer-url", ISSUER_URL])
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// RFC 7662 §2.2 as SPEC §5 words it: `{"active":false}` and nothing else.
fn assert_inactive(answer: &Value) {
    assert_eq!(answer, &json!({"active": false}));
}

fn counter(metrics: &str, name_and_labels: &str) -> f64 {
    let name = name_and_labels.split('{').next().unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            name_and_labels
                .split(['{', ',', '}'])
                .skip(1)
                .filter(|p| !p.is_empty())
                .all(|p| l.contains(p))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn token_is_active_once_then_inactive() {
    let w = World::start();
    let token = w.mint(PAYMENTS, 1).await.remove(0);

    let answer = w.introspect("payments", &token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], ORDERS);
    assert_eq!(answer["client_id"], ORDERS);
    assert_eq!(answer["aud"], PAYMENTS);
    assert_eq!(answer["iss"], ISSUER_URL);
    assert_eq!(answer["token_type"], "Bearer");
    assert!(answer["jti"].as_str().unwrap().len() >= 22);
    assert!(answer["sid"].is_string());
    assert!(answer["cnf"]["x5t#S256"].is_string(), "minted over mTLS");

    assert_inactive(&w.introspect("payments", &token).await);
    assert_inactive(&w.introspect("payments", &token).await);

    // The same holds when the audience authenticates with a client assertion.
    let token = w.mint(PAYMENTS, 1).await.remove(0);
    let form = |assertion: &str| {
        vec![
            ("token".to_owned(), token.clone()),
            (
                "client_assertion_type".to_owned(),
                ASSERTION_TYPE.to_owned(),
            ),
            ("client_assertion".to_owned(), assertion.to_owned()),
        ]
    };
    for expected in [true, false] {
        let resp = w
            .plain
            .post(w.server.url("/v1/introspect"))
            .form(&form(&w.assertion("payments", PAYMENTS)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["active"], expected, "{answer}");
    }
}

#[tokio::test]
async fn introspection_by_non_audience_is_inactive() {
    let w = World::start();
    let token = w.mint(PAYMENTS, 1).await.remove(0);
    // An unrelated workload, and the token's own caller: neither is its audience.
    assert_inactive(&w.introspect("ledger", &token).await);
    assert_inactive(&w.introspect("orders", &token).await);
    // Those introspections did not use the token up.
    assert_eq!(w.introspect("payments", &token).await["active"], true);
    assert_inactive(&w.introspect("payments", &token).await);
}

#[tokio::test]
async fn introspection_without_authentication_is_401() {
    let w = World::start();
    let token = w.mint(PAYMENTS, 1).await.remove(0);
    let (status, body, headers) = w
        .post(&w.plain, "/v1/introspect", &[("token", &token)])
        .await;
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, error["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!body.contains(&token[..40]), "the token is not echoed");

    // A forged assertion (ledger's certificate, signed by another key) is no better.
    let mut forged = w.assertion("ledger", LEDGER);
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let (status, _, _) = w
        .post(
            &w.plain,
            "/v1/introspect",
            &[
                ("token", &token),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &forged),
            ],
        )
        .await;
    assert_eq!(status, 401);

    // Unauthenticated attempts do not consume the token.
    assert_eq!(w.introspect("payments", &token).await["active"], true);
}

#[tokio::test]
async fn revoked_session_tokens_are_inactive() {
    let w = World::start();
    let batch = w.mint(PAYMENTS, 5).await;
    let other_session = w.mint(PAYMENTS, 1).await.remove(0);

    // The token's caller revokes one token: the whole session goes.
    let (status, body) = w.revoke("orders", &batch[2]).await;
    assert_eq!((status, body.as_str()), (200, ""));
    for token in &batch {
        assert_inactive(&w.introspect("payments", token).await);
    }
    assert_eq!(
        w.introspect("payments", &other_session).await["active"],
        true,
        "other sessions are untouched"
    );

    // The audience may revoke too, and revoking twice is fine.
    let batch = w.mint(PAYMENTS, 2).await;
    for _ in 0..2 {
        assert_eq!(w.revoke("payments", &batch[0]).await.0, 200);
    }
    assert_inactive(&w.introspect("payments", &batch[1]).await);

    let metrics = w.metrics().await;
    assert_eq!(
        counter(&metrics, "baton_revocations_total{result=\"revoked\"}"),
        3.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "baton_introspections_total{result=\"inactive\",reason=\"revoked_session\"}"
        ) >= 6.0,
        "{metrics}"
    );
    assert!(w.server.wait_for_log("session.revocation"));
}

#[tokio::test]
async fn revoke_by_an_unrelated_caller_is_refused() {
    let w = World::start();
    let token = w.mint(PAYMENTS, 1).await.remove(0);
    let (status, body) = w.revoke("ledger", &token).await;
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    assert!(!body.contains(&token[..40]), "the token is not echoed");
    assert_eq!(
        w.introspect("payments", &token).await["active"],
        true,
        "a refused revocation revokes nothing"
    );
}

#[tokio::test]
async fn revoke_of_garbage_is_200() {
    let w = World::start();
    // Another issuer's token: well formed, but not ours.
    let other = World::start();
    let foreign = other.mint(PAYMENTS, 1).await.remove(0);
    let mut tampered = w.mint(PAYMENTS, 1).await.remove(0);
    tampered.insert(tampered.len() / 2, 'x');
    for token in ["garbage", "a.b.c", &foreign, &tampered, &"x".repeat(9000)] {
        let (status, body) = w.revoke("orders", token).await;
        assert_eq!((status, body.as_str()), (200, ""), "{token:.40}");
    }
    // Authentication is still required.
    let (status, _, _) = w
        .post(&w.plain, "/v1/revoke", &[("token", "garbage")])
        .await;
    assert_eq!(status, 401);
    let metrics = w.metrics().await;
    assert_eq!(
        counter(&metrics, "baton_revocations_total{result=\"not_a_token\"}"),
        5.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn denied_identity_gets_no_tokens_and_its_outstanding_tokens_are_inactive() {
    let mut w = World::start();
    let tokens = w.mint(PAYMENTS, 3).await;

    let out = w.sb.baton(&["identities", "revoke", ORDERS]);
    assert!(out.ok().contains("revoked"), "{}", out.stdout);
    assert!(w.sb.data_dir().join("denylist.json").is_file());

    assert_inactive(&w.introspect("payments", &tokens[0]).await);
    let (status, body, _) = w
        .post(
            &w.mtls("orders"),
            "/v1/token",
            &[("grant_type", "client_credentials"), ("audience", PAYMENTS)],
        )
        .await;
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, error["error"].as_str()),
        (401, Some("invalid_client"))
    );

    // Revoking again says so; --json prints the issuer's reply.
    let out = w.sb.baton(&["identities", "revoke", ORDERS, "--json"]);
    let reply: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["already_revoked"], true);

    // Refusals are clear: not a SPIFFE ID, another trust domain.
    let out = w.sb.baton(&["identities", "revoke", "orders"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let out =
        w.sb.baton(&["identities", "revoke", "spiffe://other.org/fn/x"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("trust domain"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // The denial is persisted: it survives a restart.
    w.restart();
    assert_inactive(&w.introspect("payments", &tokens[1]).await);
    let (status, _, _) = w
        .post(
            &w.mtls("orders"),
            "/v1/token",
            &[("grant_type", "client_credentials"), ("audience", PAYMENTS)],
        )
        .await;
    assert_eq!(status, 401);
    assert!(w.server.wait_for_log("\"reason\":\"denied\""));
    let metrics = w.metrics().await;
    assert_eq!(
        counter(&metrics, "baton_denied_identities"),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn replays_are_counted_in_metrics() {
    let w = World::start();
    let before = w.metrics().await;

    let token = w.mint(PAYMENTS, 1).await.remove(0);
    assert_eq!(w.introspect("payments", &token).await["active"], true);
    assert_inactive(&w.introspect("payments", &token).await);
    assert_inactive(&w.introspect("payments", &token).await);

    // A replayed client assertion counts too.
    let assertion = w.assertion("orders", ORDERS);
    let form = [
        ("grant_type", "client_credentials"),
        ("audience", PAYMENTS),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
    ];
    assert_eq!(w.post(&w.plain, "/v1/token", &form).await.0, 200);
    assert_eq!(w.post(&w.plain, "/v1/token", &form).await.0, 401);

    let after = w.metrics().await;
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(
        delta("baton_replay_attempts_total{kind=\"access_token\"}"),
        2.0,
        "{after}"
    );
    assert_eq!(
        delta("baton_replay_attempts_total{kind=\"client_assertion\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(delta("baton_tokens_consumed_total"), 1.0, "{after}");
    assert_eq!(
        delta("baton_introspections_total{result=\"active\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("baton_introspections_total{result=\"inactive\",reason=\"replayed\"}"),
        2.0,
        "{after}"
    );

    // The audit log names the replay by jti, never the token.
    assert!(w.server.wait_for_log("replay.attempt"));
    assert!(w.server.wait_for_log("token.consumed"));
    let log = w.server.log().join("\n");
    let jti = serde_json::from_slice::<Value>(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(log.contains(&jti), "the jti is audited");
    for part in token.split('.').skip(1) {
        assert!(!log.contains(part), "tokens never reach the log");
    }
}

#[tokio::test]
async fn restarted_issuer_refuses_tokens_consumed_before_the_restart() {
    let mut w = World::start();
    let tokens = w.mint(PAYMENTS, 2).await;
    let (consumed, unused) = (&tokens[0], &tokens[1]);
    assert_eq!(w.introspect("payments", consumed).await["active"], true);
    assert!(w.sb.data_dir().join("admin.sock").exists());

    w.restart();

    // The new ledger never saw the first token used, and cannot know about the second:
    // both predate it, so both are inactive (SPEC §7: no replay window).
    assert_inactive(&w.introspect("payments", consumed).await);
    assert_inactive(&w.introspect("payments", unused).await);
    assert!(
        w.server.wait_for_log("issued_before_start"),
        "{:?}",
        w.server.log()
    );
    // Tokens minted by the new process work at once.
    let fresh = w.mint(PAYMENTS, 1).await.remove(0);
    assert_eq!(w.introspect("payments", &fresh).await["active"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_parallel_introspections_yield_exactly_one_active() {
    let w = std::sync::Arc::new(World::start());
    let token = std::sync::Arc::new(w.mint(PAYMENTS, 1).await.remove(0));
    let client = w.mtls("payments");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (w, token, client, barrier) =
            (w.clone(), token.clone(), client.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let (status, body, _) = w
                .post(&client, "/v1/introspect", &[("token", token.as_str())])
                .await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()
        });
    }
    let mut active = 0;
    let mut inactive = 0;
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.unwrap();
        if answer["active"] == true {
            active += 1;
        } else {
            assert_inactive(&answer);
            inactive += 1;
        }
    }
    assert_eq!((active, inactive), (1, 63));
}

#[tokio::test]
async fn policy_reload_over_the_admin_socket() {
    let w = World::start();
    let ask_ledger = || async {
        w.post(
            &w.mtls("orders"),
            "/v1/token",
            &[("grant_type", "client_credentials"), ("audience", LEDGER)],
        )
        .await
        .0
    };
    assert_eq!(ask_ledger().await, 400, "not allowed yet");

    let extended = format!("{POLICY}\n[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{LEDGER}\"\n");
    fs::write(w.sb.path().join("policy.toml"), extended).unwrap();
    let out = w.sb.baton(&["policy", "reload"]);
    assert!(out.ok().contains("policy reloaded"), "{}", out.stdout);
    assert!(out.stdout.contains("2 rules"), "{}", out.stdout);
    // The reply comes once the policy is in force: no waiting.
    assert_eq!(ask_ledger().await, 200);

    fs::write(
        w.sb.path().join("policy.toml"),
        "[[allow]]\ncaller = \"nonsense\"\n",
    )
    .unwrap();
    let out = w.sb.baton(&["policy", "reload"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert!(
        out.stderr.contains("previous policy stays"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let out = w.sb.baton(&["policy", "reload", "--json"]);
    assert_eq!(out.code, Some(1));
    let reply: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (reply["ok"].clone(), reply["reloaded"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(reply["rules_in_force"], 2);
    assert_eq!(ask_ledger().await, 200, "the old policy stays in force");

    let metrics = w.metrics().await;
    assert_eq!(
        counter(&metrics, "baton_policy_reloads_total{result=\"refused\"}"),
        2.0,
        "{metrics}"
    );
}

#[test]
fn admin_commands_without_a_running_issuer_fail_clearly() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    let dd = sb.data_dir();
    let expected = format!(
        "baton: no issuer is running for {} (cannot connect to {})\n",
        dd.display(),
        dd.join("admin.sock").display()
    );
    for args in [
        &["identities", "revoke", ORDERS][..],
        &["policy", "reload"][..],
        &["policy", "reload", "--json"][..],
    ] {
        let out = sb.baton(args);
        assert_eq!(out.code, Some(1), "{args:?}");
        assert_eq!(out.stderr, expected, "{args:?}");
        assert_eq!(out.stdout, "");
    }

    // The same after an issuer was killed and left its socket file behind.
    fs::write(sb.path().join("policy.toml"), POLICY).unwrap();
    let server = start_server(&sb);
    drop(server); // SIGKILL: no chance to clean up
    assert!(
        dd.join("admin.sock").exists(),
        "a killed issuer leaves its socket"
    );
    let out = sb.baton(&["identities", "revoke", ORDERS]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(1), expected.as_str())
    );
}

#[test]
fn admin_socket_is_owner_only() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    fs::write(sb.path().join("policy.toml"), POLICY).unwrap();
    let socket = sb.data_dir().join("admin.sock");
    let uid = fs::metadata(sb.path()).unwrap().uid();

    let check = || {
        let meta = fs::symlink_metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
        assert_eq!(meta.uid(), uid);
        let dir = fs::metadata(sb.data_dir()).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700, "data dir mode");
    };

    let server = start_server(&sb);
    check();
    // A second issuer on the same data directory is refused, and leaves the socket be.
    let out = sb.baton(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--policy",
        "policy.toml",
    ]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("already running"), "{}", out.stderr);
    check();

    // Killed: the stale socket is replaced at the next start, with the same mode.
    drop(server);
    assert!(socket.exists());
    let mut server = start_server(&sb);
    check();
    assert!(
        server.wait_for_log("stale admin socket"),
        "{:?}",
        server.log()
    );
    sb.baton(&["policy", "reload"]).ok();

    // Stopped cleanly: the socket is gone.
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(!socket.exists(), "removed on shutdown");
}

#[tokio::test]
async fn a_caller_over_its_introspection_rate_gets_429_and_others_are_unaffected() {
    let sb = Sandbox::with_workloads(
        &[
            (ORDERS, "orders", "ec-p256"),
            (PAYMENTS, "payments", "ec-p256"),
        ],
        POLICY,
    );
    let server = Server::start_with_env(
        &sb,
        &["--policy", "policy.toml", "--issuer-url", ISSUER_URL],
        &[("BATON_INTROSPECT_RATE_LIMIT", "2")],
    );
    let bundle = sb.bundle();
    let w = World {
        plain: https_client(&bundle, None),
        bundle,
        server,
        sb,
    };
    let tokens = w.mint(PAYMENTS, 3).await;
    // Two at once is the bucket; the second drains it.
    assert_eq!(w.introspect("payments", &tokens[0]).await["active"], true);
    assert_eq!(w.introspect("payments", &tokens[1]).await["active"], true);
    let payments = w.mtls("payments");
    for path in ["/v1/introspect", "/v1/revoke"] {
        let (status, body, headers) = w.post(&payments, path, &[("token", &tokens[2])]).await;
        assert_eq!(status, 429, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "slow_down", "{path}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{path}: {retry}");
    }
    // Refused before the token was looked at: nothing was consumed or revoked, so
    // once the bucket refills the token is still good for its one use.
    let metrics = w.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "baton_introspections_total{result=\"refused\",reason=\"rate_limited\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(&metrics, "baton_revocations_total{result=\"rate_limited\"}"),
        1.0
    );
    // Another caller has its own bucket: orders revokes another session at once.
    let other_session = w.mint(PAYMENTS, 1).await.remove(0);
    assert_eq!(w.revoke("orders", &other_session).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(w.introspect("payments", &tokens[2]).await["active"], true);
    assert_inactive(&w.introspect("payments", &other_session).await);
}
