//! The SDK's caller half, `baton_sdk::TokenClient`, against the real `baton serve` on
//! loopback TLS (SPEC §3, §5, §8): tokens over mTLS and by signed assertion (ES256 and
//! EdDSA workloads), the prefetch pool's one-time and freshness promises, typed
//! refusals, configuration and trust errors, and the reqwest helper. Tokens are checked
//! with a third-party JWT library (jsonwebtoken) against the published JWKS.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::error::Error as _;
use std::fs;
use std::time::Duration;

use base64::Engine as _;
use baton_proto::error::ErrorCode;
use baton_sdk::reqwest_ext::RequestBuilderExt as _;
use baton_sdk::{Auth, ConfigError, SpiffeId, TokenClient, TokenClientBuilder, TokenError};
use baton_tests::{Sandbox, Server, https_client, pem_blocks};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use ring::digest::{SHA256, digest};
use serde_json::Value;

const ORDERS: &str = "spiffe://example.org/fn/orders";
const INVOICES: &str = "spiffe://example.org/fn/billing/invoices";
const SHORT: &str = "spiffe://example.org/fn/short";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const LEDGER: &str = "spiffe://example.org/fn/ledger";

const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge"]

[[allow]]
caller = "spiffe://example.org/fn/billing/*"
audience = "spiffe://example.org/fn/ledger"

[[allow]]
caller = "spiffe://example.org/fn/short"
audience = "spiffe://example.org/fn/payments"
max_ttl_seconds = 5
"#;

struct World {
    sb: Sandbox,
    _server: Server,
    bundle: String,
    issuer: String,
    jwks: JwkSet,
}

impl World {
    /// A trust domain with three enrolled workloads (orders and short: P-256; invoices:
    /// Ed25519), the policy above, and the issuer running.
    async fn start() -> World {
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (SHORT, "short", "ec-p256"),
                (INVOICES, "invoices", "ed25519"),
            ],
            POLICY,
        );
        let server = Server::start(&sb, &["--policy", "policy.toml"]);
        let bundle = sb.bundle();
        let plain = https_client(&bundle, None);
        let issuer = server.issuer.clone();
        let jwks: JwkSet = plain
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        World {
            sb,
            _server: server,
            bundle,
            issuer,
            jwks,
        }
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.sb.path().join(rel)).unwrap()
    }

    /// A builder for the workload enrolled in `dir`.
    fn builder(&self, dir: &str) -> TokenClientBuilder {
        TokenClient::builder(
            self.issuer.clone(),
            self.bundle.as_bytes(),
            self.read(&format!("{dir}/svid.pem")).as_bytes(),
            self.read(&format!("{dir}/svid.key")).as_bytes(),
        )
    }

    /// Verifies `token` with jsonwebtoken against the published JWKS, for `audience`.
    fn verify(&self, token: &str, audience: &str) -> Value {
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let jwk = self.jwks.find(&header.kid.unwrap()).expect("kid published");
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The error and every source under it, for assertions on the whole story.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[tokio::test]
async fn token_client_over_mtls_gets_a_certificate_bound_token() {
    let w = World::start().await;
    let client = w.builder("orders").auth(Auth::Mtls).build().unwrap();
    assert_eq!(client.id().as_str(), ORDERS);
    assert_eq!(client.issuer(), w.issuer);

    let token = client.token_for(&id(PAYMENTS)).await.unwrap();
    let claims = w.verify(&token, PAYMENTS);
    assert_eq!(claims["sub"], ORDERS);
    assert_eq!(claims["client_id"], ORDERS);
    assert!(claims.get("scope").is_none());
    // RFC 8705 §3.1: bound to the certificate the client presented.
    let leaf = pem_blocks(&w.read("orders/svid.pem")).remove(0);
    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest(&SHA256, &leaf));
    assert_eq!(claims["cnf"]["x5t#S256"], thumb);

    let scoped = client
        .token_for_scope(&id(PAYMENTS), "payments:charge")
        .await
        .unwrap();
    let scoped = w.verify(&scoped, PAYMENTS);
    assert_eq!(scoped["scope"], "payments:charge");
    assert_ne!(scoped["jti"], claims["jti"]);
}

#[tokio::test]
async fn token_client_by_assertion_gets_a_token() {
    let w = World::start().await;
    for (dir, caller, audience) in [("orders", ORDERS, PAYMENTS), ("invoices", INVOICES, LEDGER)] {
        let client = w.builder(dir).auth(Auth::Assertion).build().unwrap();
        assert_eq!(client.id().as_str(), caller);
        let mut jtis = HashSet::new();
        // Each request carries a new assertion: the issuer's replay guard never fires.
        for _ in 0..3 {
            let token = client.token_for(&id(audience)).await.unwrap();
            let claims = w.verify(&token, audience);
            assert_eq!(claims["sub"], caller, "{dir}");
            assert!(
                claims.get("cnf").is_none(),
                "no certificate binding without mTLS"
            );
            jtis.insert(claims["jti"].as_str().unwrap().to_owned());
        }
        assert_eq!(jtis.len(), 3);
    }
    // The issuer URL with a trailing slash names the same issuer.
    let client = TokenClient::builder(
        format!("{}/", w.issuer),
        w.bundle.as_bytes(),
        w.read("orders/svid.pem").as_bytes(),
        w.read("orders/svid.key").as_bytes(),
    )
    .auth(Auth::Assertion)
    .build()
    .unwrap();
    assert_eq!(client.issuer(), w.issuer);
    client.token_for(&id(PAYMENTS)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tokens_are_never_handed_out_twice() {
    let w = World::start().await;
    for auth in [Auth::Mtls, Auth::Assertion] {
        let client = w
            .builder("orders")
            .auth(auth)
            .pool(8)
            .min_remaining(Duration::from_secs(10))
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.token_for(&id(PAYMENTS)).await })
            })
            .collect();
        let mut jtis = HashSet::new();
        let mut sessions = HashSet::new();
        for task in tasks {
            let token = task.await.unwrap().unwrap();
            let claims = w.verify(&token, PAYMENTS);
            assert!(claims["exp"].as_i64().unwrap() - now() >= 10);
            assert!(
                jtis.insert(claims["jti"].as_str().unwrap().to_owned()),
                "{auth:?}: a token was handed out twice"
            );
            sessions.insert(claims["sid"].as_str().unwrap().to_owned());
        }
        assert_eq!(jtis.len(), 32);
        // One batch mint (one attestation, one session) per 8 tokens.
        assert_eq!(sessions.len(), 4, "{auth:?}");
    }
}

#[tokio::test]
async fn pool_skips_tokens_near_expiry() {
    let w = World::start().await;
    // The policy grants `short` 5-second tokens; the client wants 30 s left on any
    // pooled token, so none is ever pooled and every call mints afresh.
    let client = w
        .builder("short")
        .pool(8)
        .min_remaining(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut sessions = HashSet::new();
    for _ in 0..4 {
        let token = client.token_for(&id(PAYMENTS)).await.unwrap();
        let claims = w.verify(&token, PAYMENTS);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            5
        );
        sessions.insert(claims["sid"].as_str().unwrap().to_owned());
    }
    assert_eq!(sessions.len(), 4, "every token comes from its own mint");
}

#[tokio::test]
async fn denied_audience_is_a_typed_invalid_target_error() {
    let w = World::start().await;
    for auth in [Auth::Mtls, Auth::Assertion] {
        let client = w.builder("orders").auth(auth).build().unwrap();
        let err = client.token_for(&id(LEDGER)).await.unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Refused {
                    status: 400,
                    error: ErrorCode::InvalidTarget,
                    ..
                }
            ),
            "{auth:?}: {err:?}"
        );
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("invalid_target"), "{err}");

        let err = client
            .token_for_scope(&id(PAYMENTS), "payments:refund")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Refused {
                    error: ErrorCode::InvalidScope,
                    ..
                }
            ),
            "{auth:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn key_not_matching_certificate_is_a_config_error() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    sb.baton(&["enroll", "--id", ORDERS, "--out", "orders"])
        .ok();
    sb.baton(&["enroll", "--id", PAYMENTS, "--out", "payments"])
        .ok();
    sb.baton(&[
        "enroll",
        "--id",
        INVOICES,
        "--out",
        "invoices",
        "--key-type",
        "ed25519",
    ])
    .ok();
    let read = |rel: &str| fs::read(sb.path().join(rel)).unwrap();
    let bundle = read("baton-data/bundle.pem");
    // Another workload's key of the same type, and a key of another type.
    for key in ["payments/svid.key", "invoices/svid.key"] {
        let err = TokenClient::builder(
            "https://localhost:8443",
            &bundle,
            &read("orders/svid.pem"),
            &read(key),
        )
        .build()
        .unwrap_err();
        assert!(
            matches!(err, TokenError::Config(ConfigError::KeyMismatch)),
            "{key}: {err:?}"
        );
    }
    // A certificate where the bundle belongs, and junk where the key belongs.
    let err = TokenClient::builder(
        "https://localhost:8443",
        &bundle,
        &read("orders/svid.key"),
        &read("orders/svid.key"),
    )
    .build()
    .unwrap_err();
    assert!(
        matches!(err, TokenError::Config(ConfigError::Certificate(_))),
        "{err:?}"
    );
    let err = TokenClient::builder(
        "https://localhost:8443",
        &bundle,
        &read("orders/svid.pem"),
        &read("orders/svid.pem"),
    )
    .build()
    .unwrap_err();
    assert!(
        matches!(err, TokenError::Config(ConfigError::Key(_))),
        "{err:?}"
    );
    // The message never repeats the key.
    let key = String::from_utf8(read("payments/svid.key")).unwrap();
    let body = key.lines().nth(1).unwrap();
    let err = TokenClient::builder(
        "https://localhost:8443",
        &bundle,
        &read("orders/svid.pem"),
        key.as_bytes(),
    )
    .build()
    .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(body));
}

#[tokio::test]
async fn untrusted_issuer_certificate_is_a_transport_error() {
    let w = World::start().await;
    let other = Sandbox::new();
    other.baton(&["init", "--trust-domain", "example.org"]).ok();
    let other_bundle = fs::read(other.data_dir().join("bundle.pem")).unwrap();
    for auth in [Auth::Mtls, Auth::Assertion] {
        let client = TokenClient::builder(
            w.issuer.clone(),
            &other_bundle,
            w.read("orders/svid.pem").as_bytes(),
            w.read("orders/svid.key").as_bytes(),
        )
        .auth(auth)
        .build()
        .unwrap();
        let err = client.token_for(&id(PAYMENTS)).await.unwrap_err();
        assert!(matches!(err, TokenError::Transport(_)), "{auth:?}: {err:?}");
        assert!(err.is_retryable());
        let story = chain(&err);
        assert!(story.to_lowercase().contains("certificate"), "{story}");
        assert!(!story.contains("localhost"), "no URL in the error: {story}");
        assert!(err.source().is_some());
    }
}

#[tokio::test]
async fn request_builder_ext_attaches_a_bearer_token() {
    let w = World::start().await;
    let client = w.builder("orders").build().unwrap();
    let http = https_client(&w.bundle, None);
    let request = http
        .post("https://payments.internal/charge")
        .baton_token(&client, &id(PAYMENTS))
        .await
        .unwrap()
        .build()
        .unwrap();
    let header = &request.headers()[reqwest::header::AUTHORIZATION];
    assert!(header.is_sensitive(), "reqwest must never print the token");
    let token = header.to_str().unwrap().strip_prefix("Bearer ").unwrap();
    let claims = w.verify(token, PAYMENTS);
    assert_eq!(claims["sub"], ORDERS);
    assert!(!format!("{request:?}").contains(token));

    // Refusals come through as the client's own typed error.
    let err = http
        .get("https://ledger.internal/")
        .baton_token(&client, &id(LEDGER))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        TokenError::Refused {
            error: ErrorCode::InvalidTarget,
            ..
        }
    ));
}
