//! End to end against the real `baton serve` on loopback TLS (SPEC §3–§6, §9): tokens
//! minted by signed assertion and by mTLS are checked with a third-party JWT library
//! (jsonwebtoken) against the published JWKS, and each key's `x5c` with rustls-webpki
//! against the trust bundle; hostile callers are refused with the SPEC's errors.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::time::Duration;

use base64::Engine as _;
use baton_tests::{Sandbox, Server, https_client, pem_blocks, sign_jws};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use ring::digest::{SHA256, digest};
use serde_json::{Value, json};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const INVOICES: &str = "spiffe://example.org/fn/billing/invoices";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const LEDGER: &str = "spiffe://example.org/fn/ledger";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge"]
max_ttl_seconds = 30

[[allow]]
caller = "spiffe://example.org/fn/billing/*"
audience = "spiffe://example.org/fn/ledger"
"#;

struct World {
    sb: Sandbox,
    server: Server,
    bundle: String,
    issuer: String,
    client: reqwest::Client,
}

impl World {
    async fn start() -> World {
        Self::start_with(&[], &[]).await
    }

    async fn start_with(extra: &[&str], env: &[(&str, &str)]) -> World {
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (INVOICES, "invoices", "ed25519"),
            ],
            POLICY,
        );
        let mut args = vec!["--policy", "policy.toml"];
        args.extend_from_slice(extra);
        let server = Server::start_with_env(&sb, &args, env);
        let bundle = sb.bundle();
        let client = https_client(&bundle, None);
        let issuer = server.issuer.clone();
        World {
            sb,
            server,
            bundle,
            issuer,
            client,
        }
    }

    fn read(&self, rel: &str) -> String {
        self.sb.read(rel)
    }

    /// A client presenting the workload certificate in `dir` over mTLS.
    fn mtls_client(&self, dir: &str) -> reqwest::Client {
        let chain = self.read(&format!("{dir}/svid.pem"));
        let key = self.read(&format!("{dir}/svid.key"));
        https_client(&self.bundle, Some((&chain, &key)))
    }

    /// A fresh RFC 7523 assertion signed with the workload key in `dir`.
    fn assertion(&self, dir: &str, id: &str, alg: &str, jti: &str) -> String {
        self.assertion_with(
            dir,
            alg,
            json!({
                "iss": id, "sub": id, "aud": self.issuer, "jti": jti,
                "iat": now(), "exp": now() + 60,
            }),
        )
    }

    fn assertion_with(&self, dir: &str, alg: &str, claims: Value) -> String {
        let x5c: Vec<String> = pem_blocks(&self.read(&format!("{dir}/svid.pem")))
            .iter()
            .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
            .collect();
        let header = json!({"alg": alg, "typ": "JWT", "x5c": x5c});
        sign_jws(&header, &claims, &self.read(&format!("{dir}/svid.key")))
    }

    async fn token(
        &self,
        client: &reqwest::Client,
        form: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let resp = client
            .post(self.server.url("/v1/token"))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    async fn token_by_assertion(
        &self,
        assertion: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("audience", audience),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let (status, body, _) = self.token(&self.client, &form).await;
        (status, body)
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Verifies `token` with jsonwebtoken against the published JWKS and checks the
    /// signing key's `x5c` chain and reserved identity with webpki and x509-parser.
    async fn verify_with_third_party(&self, token: &str, audience: &str) -> Value {
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let kid = header.kid.clone().unwrap();
        let resp = self
            .client
            .get(self.server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
        assert!(cache.contains("max-age="), "{cache}");
        let jwks: JwkSet = resp.json().await.unwrap();
        assert!(
            jwks.keys.len() >= 2,
            "an active and a pre-published next key"
        );
        let jwk = jwks.find(&kid).expect("token kid is published");

        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
                .unwrap();

        // The key is trusted only through its certificate: chain to the bundle, and
        // the reserved token-signer ID as its only URI SAN.
        let x5c = jwk.common.x509_chain.as_ref().expect("x5c");
        let leaf = base64::engine::general_purpose::STANDARD
            .decode(&x5c[0])
            .unwrap();
        let anchor_der = rustls_pki_types::CertificateDer::from(pem_blocks(&self.bundle).remove(0));
        let anchors = [webpki::anchor_from_trusted_cert(&anchor_der).unwrap()];
        let leaf_der = rustls_pki_types::CertificateDer::from(leaf.clone());
        webpki::EndEntityCert::try_from(&leaf_der)
            .unwrap()
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                rustls_pki_types::UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![x509_parser::extensions::GeneralName::URI(
                "spiffe://example.org/baton/token-signer"
            )]
        );
        data.claims
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn counter(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name_and_labels.split('{').next().unwrap()))
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
async fn token_by_assertion_and_by_mtls_verify_with_a_third_party_library() {
    let w = World::start().await;
    let before = w.metrics().await;

    // ES256 workload key, signed assertion.
    let a = w.assertion("orders", ORDERS, "ES256", "a-1");
    let (status, body) = w
        .token_by_assertion(&a, PAYMENTS, Some("payments:charge"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "payments:charge");
    assert_eq!(
        body["expires_in"], 30,
        "capped by the rule's max_ttl_seconds"
    );
    let claims = w
        .verify_with_third_party(body["access_token"].as_str().unwrap(), PAYMENTS)
        .await;
    assert_eq!(claims["sub"], ORDERS);
    assert_eq!(claims["client_id"], ORDERS);
    assert_eq!(claims["aud"], PAYMENTS);
    assert_eq!(claims["scope"], "payments:charge");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        30
    );
    assert!(claims["jti"].as_str().unwrap().len() >= 22);
    assert!(claims["sid"].is_string());
    assert!(
        claims.get("cnf").is_none(),
        "no certificate binding without mTLS"
    );

    // EdDSA workload key under a prefix rule, no scope.
    let a = w.assertion("invoices", INVOICES, "EdDSA", "b-1");
    let (status, body) = w.token_by_assertion(&a, LEDGER, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("scope").is_none());
    let claims = w
        .verify_with_third_party(body["access_token"].as_str().unwrap(), LEDGER)
        .await;
    assert_eq!(claims["sub"], INVOICES);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );

    // mTLS: the token is bound to the client certificate (RFC 8705 §3.1).
    let (status, body, headers) = w
        .token(
            &w.mtls_client("orders"),
            &[("grant_type", "client_credentials"), ("audience", PAYMENTS)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let claims = w
        .verify_with_third_party(body["access_token"].as_str().unwrap(), PAYMENTS)
        .await;
    let leaf = pem_blocks(&w.read("orders/svid.pem")).remove(0);
    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest(&SHA256, &leaf));
    assert_eq!(claims["cnf"]["x5t#S256"], thumb);

    let after = w.metrics().await;
    let issued = |m: &str| counter(m, "baton_tokens_issued_total");
    assert_eq!(issued(&after) - issued(&before), 3.0, "{after}");
    assert!(
        after.contains("baton_http_request_duration_seconds"),
        "{after}"
    );
    assert!(after.contains("baton_signing_key_age_seconds"), "{after}");
}

#[tokio::test]
async fn batch_mint_returns_distinct_one_time_tokens() {
    let w = World::start().await;
    let a = w.assertion("orders", ORDERS, "ES256", "batch-1");
    let (status, body, _) = w
        .token(
            &w.client,
            &[
                ("grant_type", "client_credentials"),
                ("audience", PAYMENTS),
                ("count", "5"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let tokens: Vec<&str> = body["access_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 5);
    assert_eq!(tokens[0], body["access_token"]);
    let mut jtis = std::collections::HashSet::new();
    let mut sids = std::collections::HashSet::new();
    for t in &tokens {
        let claims = w.verify_with_third_party(t, PAYMENTS).await;
        jtis.insert(claims["jti"].as_str().unwrap().to_owned());
        sids.insert(claims["sid"].as_str().unwrap().to_owned());
    }
    assert_eq!(jtis.len(), 5, "every token has its own jti");
    assert_eq!(sids.len(), 1, "one attestation, one session");
}

#[tokio::test]
async fn hostile_callers_are_refused_with_the_spec_errors() {
    let w = World::start().await;
    let before = w.metrics().await;

    // A replayed assertion: accepted once, then invalid_client.
    let a = w.assertion("orders", ORDERS, "ES256", "replay-1");
    assert_eq!(w.token_by_assertion(&a, PAYMENTS, None).await.0, 200);
    let (status, body) = w.token_by_assertion(&a, PAYMENTS, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&a[..40]),
        "the assertion is not echoed"
    );

    // A self-signed impostor claiming the orders identity, over mTLS and as x5c.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(ORDERS.try_into().unwrap())];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let impostor = params.self_signed(&key).unwrap();
    fs::create_dir_all(w.sb.path().join("impostor")).unwrap();
    fs::write(w.sb.path().join("impostor/svid.pem"), impostor.pem()).unwrap();
    fs::write(w.sb.path().join("impostor/svid.key"), key.serialize_pem()).unwrap();
    let (status, body, _) = w
        .token(
            &w.mtls_client("impostor"),
            &[("grant_type", "client_credentials"), ("audience", PAYMENTS)],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let a = w.assertion("impostor", ORDERS, "ES256", "imp-1");
    let (status, body) = w.token_by_assertion(&a, PAYMENTS, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );

    // A certificate from another trust domain's CA, same SPIFFE ID.
    let other = Sandbox::new();
    other.baton(&["init", "--trust-domain", "example.org"]).ok();
    let foreign_out = w.sb.path().join("foreign");
    other
        .baton(&[
            "enroll",
            "--id",
            ORDERS,
            "--out",
            foreign_out.to_str().unwrap(),
        ])
        .ok();
    let (status, body, _) = w
        .token(
            &w.mtls_client("foreign"),
            &[("grant_type", "client_credentials"), ("audience", PAYMENTS)],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let a = w.assertion("foreign", ORDERS, "ES256", "for-1");
    assert_eq!(w.token_by_assertion(&a, PAYMENTS, None).await.0, 401);

    // An audience the policy does not list: invalid_target.
    let a = w.assertion("orders", ORDERS, "ES256", "aud-1");
    let (status, body) = w.token_by_assertion(&a, LEDGER, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );

    // A scope the rule does not grant: invalid_scope.
    let a = w.assertion("orders", ORDERS, "ES256", "scope-1");
    let (status, body) = w
        .token_by_assertion(&a, PAYMENTS, Some("payments:refund"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );

    // A rule without scopes grants no scope request.
    let a = w.assertion("invoices", INVOICES, "EdDSA", "scope-2");
    let (status, body) = w.token_by_assertion(&a, LEDGER, Some("ledger:read")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );

    let after = w.metrics().await;
    let failures = |m: &str| counter(m, "baton_attestation_failures_total");
    assert!(failures(&after) - failures(&before) >= 5.0, "{after}");
    let denials =
        |m: &str, r: &str| counter(m, &format!("baton_token_denials_total{{reason=\"{r}\"}}"));
    assert_eq!(
        denials(&after, "audience_not_allowed") - denials(&before, "audience_not_allowed"),
        1.0,
        "{after}"
    );
    assert_eq!(
        denials(&after, "scope_not_allowed") - denials(&before, "scope_not_allowed"),
        2.0,
        "{after}"
    );

    // The audit log names the refusal without the assertion.
    assert!(w.server.wait_for_log("token.denied"));
    assert!(w.server.wait_for_log("token.issued"));
    let log = w.server.log().join("\n");
    assert!(!log.contains(&a[..40]), "assertions never reach the log");
}

#[tokio::test]
async fn malformed_requests_get_rfc_6749_errors() {
    let w = World::start().await;
    let a = w.assertion("orders", ORDERS, "ES256", "m-1");
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("grant_type", "password"), ("audience", PAYMENTS)],
            400,
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "client_credentials")],
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("audience", "https://evil"),
            ],
            400,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("audience", PAYMENTS),
                ("scope", "bad\"scope"),
            ],
            400,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("audience", PAYMENTS),
                ("count", "65"),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![("grant_type", "client_credentials"), ("audience", PAYMENTS)],
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("audience", PAYMENTS),
                ("client_assertion", &a),
            ],
            400,
            "invalid_request",
        ),
    ];
    for (form, status, error) in cases {
        let (got, body, _) = w.token(&w.client, &form).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{form:?}: {body}"
        );
    }

    let big = "x".repeat(70 * 1024);
    let (status, body, _) = w
        .token(
            &w.client,
            &[("grant_type", "client_credentials"), ("audience", &big)],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("invalid_request")),
        "{body}"
    );

    let resp = w
        .client
        .post(w.server.url("/v1/token"))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            w.client
                .get(w.server.url(path))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let meta: Value = w
        .client
        .get(w.server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["token_endpoint"], format!("{}/v1/token", w.issuer));
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
}

#[tokio::test]
async fn policy_reloads_on_sighup_and_an_invalid_policy_keeps_the_old_one() {
    let w = World::start().await;
    let a = w.assertion("orders", ORDERS, "ES256", "r-1");
    assert_eq!(w.token_by_assertion(&a, LEDGER, None).await.0, 400);

    let extended = format!("{POLICY}\n[[allow]]\ncaller = \"{ORDERS}\"\naudience = \"{LEDGER}\"\n");
    fs::write(w.sb.path().join("policy.toml"), extended).unwrap();
    w.server.signal("HUP");
    let mut allowed = false;
    for i in 0..100 {
        let a = w.assertion("orders", ORDERS, "ES256", &format!("r-2-{i}"));
        if w.token_by_assertion(&a, LEDGER, None).await.0 == 200 {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(allowed, "the reloaded policy never took effect");

    fs::write(
        w.sb.path().join("policy.toml"),
        "[[allow]]\ncaller = \"nonsense\"\n",
    )
    .unwrap();
    w.server.signal("HUP");
    let mut refused_logged = false;
    for _ in 0..100 {
        if w.server
            .log()
            .iter()
            .any(|l| l.contains("policy reload refused"))
        {
            refused_logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused_logged, "{:?}", w.server.log());
    let a = w.assertion("orders", ORDERS, "ES256", "r-3");
    assert_eq!(
        w.token_by_assertion(&a, LEDGER, None).await.0,
        200,
        "old policy still in force"
    );
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let mut w = World::start().await;
    w.server.signal("TERM");
    assert_eq!(w.server.wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn serve_on_a_fresh_machine_initializes_a_dev_trust_domain() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    assert!(sb.data_dir().join("bundle.pem").is_file());
    assert!(
        server.wait_for_log("DEV trust domain"),
        "{:?}",
        server.log()
    );
    assert!(server.wait_for_log("next:"), "{:?}", server.log());
    assert!(server.addr.ip().is_loopback());
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected() {
    let w = World::start_with(&[], &[("BATON_RATE_LIMIT", "1"), ("BATON_RATE_BURST", "2")]).await;
    for i in 0..2 {
        let a = w.assertion("orders", ORDERS, "ES256", &format!("rl-{i}"));
        assert_eq!(w.token_by_assertion(&a, PAYMENTS, None).await.0, 200);
    }
    let a = w.assertion("orders", ORDERS, "ES256", "rl-3");
    let (status, body, headers) = w
        .token(
            &w.client,
            &[
                ("grant_type", "client_credentials"),
                ("audience", PAYMENTS),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &a),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("slow_down")),
        "{body}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another caller has its own bucket.
    let a = w.assertion("invoices", INVOICES, "EdDSA", "rl-other");
    assert_eq!(w.token_by_assertion(&a, LEDGER, None).await.0, 200);
}

#[tokio::test]
async fn plain_http_listener_serves_assertion_callers_behind_a_gateway() {
    let w = World::start_with(&["--http-listen", "127.0.0.1:0"], &[]).await;
    let http = w.server.http_addr.expect("http listener address is logged");
    let plain = https_client(&w.bundle, None);
    let a = w.assertion("orders", ORDERS, "ES256", "plain-1");
    let resp = plain
        .post(format!("http://{http}/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", PAYMENTS),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    w.verify_with_third_party(body["access_token"].as_str().unwrap(), PAYMENTS)
        .await;
    // Without TLS there is no certificate to attest.
    let resp = plain
        .post(format!("http://{http}/v1/token"))
        .form(&[("grant_type", "client_credentials"), ("audience", PAYMENTS)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
