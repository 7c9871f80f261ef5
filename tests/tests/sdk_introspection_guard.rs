//! The SDK's introspection replay guard against the real `baton serve` (SPEC §5: "An
//! introspection by the token's audience is its one use"; §7: "introspection = once
//! across every verifier and issuer replica sharing the store"; "A verifier that
//! cannot reach its ledger fails closed"): two callee verifiers consuming through the
//! issuer accept a token exactly once between them, a token consumed by a direct
//! introspection is refused by the verifiers, a guard holding another workload's
//! credentials burns nothing, and a dead issuer refuses tokens within a bound.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_sdk::{
    Auth, GuardUnavailable, IntrospectionReplayGuard, SpiffeId, TokenClient, Verifier, VerifyError,
};
use baton_tests::{Sandbox, Server, https_client};
use serde_json::Value;

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const LEDGER: &str = "spiffe://example.org/fn/ledger";
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
    issuer: String,
}

impl World {
    fn start() -> World {
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (PAYMENTS, "payments", "ec-p256"),
                (LEDGER, "ledger", "ed25519"),
            ],
            POLICY,
        );
        let server = Server::start(&sb, &["--policy", "policy.toml"]);
        let bundle = sb.bundle();
        let issuer = server.issuer.clone();
        World {
            sb,
            server,
            bundle,
            issuer,
        }
    }

    /// The workload in `dir` as a token client attesting with `auth`.
    fn client(&self, dir: &str, auth: Auth) -> TokenClient {
        TokenClient::builder(
            self.issuer.as_str(),
            self.bundle.as_bytes(),
            &fs::read(self.sb.path().join(format!("{dir}/svid.pem"))).unwrap(),
            &fs::read(self.sb.path().join(format!("{dir}/svid.key"))).unwrap(),
        )
        .auth(auth)
        .build()
        .unwrap()
    }

    /// A payments replica whose guard introspects as `guard_client`.
    async fn verifier(&self, guard_client: TokenClient) -> Verifier {
        let guard = IntrospectionReplayGuard::new(guard_client).timeout(Duration::from_secs(3));
        Verifier::builder(self.issuer.as_str(), id(PAYMENTS), self.bundle.as_bytes())
            .unwrap()
            .shared_replay_guard(Arc::new(guard))
            .build_fetching()
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        self.client("orders", Auth::Mtls)
            .token_for(&id(PAYMENTS))
            .await
            .unwrap()
    }

    /// A direct RFC 7662 introspection by payments over mTLS.
    async fn introspect(&self, token: &str) -> Value {
        let chain = self.sb.read("payments/svid.pem");
        let key = self.sb.read("payments/svid.key");
        https_client(&self.bundle, Some((&chain, &key)))
            .post(self.server.url("/v1/introspect"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[tokio::test]
async fn two_verifiers_consuming_through_the_issuer_accept_a_token_exactly_once() {
    let w = World::start();
    // One replica attests by mTLS, the other by client assertion: both are payments.
    let a = w.verifier(w.client("payments", Auth::Mtls)).await;
    let b = w.verifier(w.client("payments", Auth::Assertion)).await;

    let token = w.token().await;
    let caller = a.verify_async(&token).await.unwrap();
    assert_eq!(caller.id.as_str(), ORDERS);
    assert_eq!(b.verify_async(&token).await, Err(VerifyError::Inactive));
    assert_eq!(a.verify_async(&token).await, Err(VerifyError::Inactive));
    // The issuer's ledger holds the use: a direct introspection finds it spent.
    assert_eq!(
        w.introspect(&token).await,
        serde_json::json!({"active": false})
    );

    // The other way round, by the other replica.
    let token = w.token().await;
    assert!(b.verify_async(&token).await.is_ok());
    assert_eq!(a.verify_async(&token).await, Err(VerifyError::Inactive));

    // The synchronous call cannot be used to get around the issuer.
    let token = w.token().await;
    assert_eq!(
        a.verify(&token),
        Err(VerifyError::AsyncVerificationRequired)
    );
    assert!(
        a.verify_async(&token).await.is_ok(),
        "verify burned nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_presentations_across_two_verifiers_accept_exactly_one() {
    let w = World::start();
    let a = Arc::new(w.verifier(w.client("payments", Auth::Mtls)).await);
    let b = Arc::new(w.verifier(w.client("payments", Auth::Assertion)).await);
    let token = Arc::new(w.token().await);
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let v = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (token, barrier) = (token.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            v.verify_async(&token).await
        });
    }
    let (mut accepted, mut inactive) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => accepted += 1,
            Err(VerifyError::Inactive) => inactive += 1,
            Err(other) => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, inactive), (1, 15));
}

#[tokio::test]
async fn a_token_consumed_by_introspection_is_refused_by_the_verifiers() {
    let w = World::start();
    let v = w.verifier(w.client("payments", Auth::Mtls)).await;
    let token = w.token().await;
    assert_eq!(w.introspect(&token).await["active"], true);
    assert_eq!(v.verify_async(&token).await, Err(VerifyError::Inactive));
}

#[tokio::test]
async fn a_guard_with_another_workloads_credentials_fails_closed_and_burns_nothing() {
    let w = World::start();
    // ledger is a valid workload, but not the tokens' audience: the issuer would
    // answer inactive to it, so the guard refuses to ask.
    let wrong = w.verifier(w.client("ledger", Auth::Mtls)).await;
    let token = w.token().await;
    let err = wrong.verify_async(&token).await.unwrap_err();
    assert_eq!(
        err,
        VerifyError::SharedGuardUnavailable(GuardUnavailable::NotAudience)
    );
    assert!(err.is_unavailable());
    let right = w.verifier(w.client("payments", Auth::Mtls)).await;
    assert!(right.verify_async(&token).await.is_ok());
}

#[tokio::test]
async fn a_dead_issuer_fails_closed_within_a_bound() {
    let w = World::start();
    let v = w.verifier(w.client("payments", Auth::Mtls)).await;
    let token = w.token().await;
    let World { server, .. } = w;
    drop(server); // SIGKILL
    let started = Instant::now();
    let err = v.verify_async(&token).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::SharedGuardUnavailable(
                GuardUnavailable::Unreachable | GuardUnavailable::Timeout
            )
        ),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused in {:?}",
        started.elapsed()
    );
}
