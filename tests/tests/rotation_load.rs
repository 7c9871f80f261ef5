//! Proof under load (issue 6, SPEC §9 `keys`): callers mint and a callee's SDK
//! verifier checks tokens continuously on loopback while `baton keys rotate` runs ten
//! times, one JWKS max-age apart; not one valid token may fail. Then an emergency
//! `keys revoke` of a retired key makes its outstanding tokens inactive at
//! introspection, and the verifier refuses them within one refresh.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_sdk::{SpiffeId, TokenClient, Verifier, VerifyError};
use baton_tests::{Sandbox, Server, https_client, kids_in_state};
use serde_json::Value;

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
"#;
/// The JWKS max-age the issuer announces: verifiers refresh at three quarters of it.
const MAX_AGE: Duration = Duration::from_secs(2);
/// One max-age and some: each `next` key has been fetched by every verifier before a
/// rotation makes it sign (the protocol's promise).
const BETWEEN_ROTATIONS: Duration = Duration::from_millis(2600);
const ROTATIONS: usize = 10;
const CALLERS: usize = 3;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_rotations_under_load_fail_no_valid_token_and_revocation_is_immediate() {
    let started = Instant::now();
    let sb = Sandbox::with_workloads(
        &[
            (ORDERS, "orders", "ec-p256"),
            (PAYMENTS, "payments", "ec-p256"),
        ],
        POLICY,
    );
    let server = Server::start_with_env(
        &sb,
        &["--policy", "policy.toml"],
        &[
            ("BATON_JWKS_MAX_AGE", "2s"),
            ("BATON_RATE_LIMIT", "100000"),
            ("BATON_RATE_BURST", "100000"),
            ("BATON_INTROSPECT_RATE_LIMIT", "100000"),
        ],
    );
    let bundle = sb.bundle();
    let verifier = Arc::new(
        Verifier::builder(server.issuer.as_str(), id(PAYMENTS), bundle.as_bytes())
            .unwrap()
            .build_fetching()
            .await
            .unwrap(),
    );
    let client = Arc::new(
        TokenClient::builder(
            server.issuer.as_str(),
            bundle.as_bytes(),
            &fs::read(sb.path().join("orders/svid.pem")).unwrap(),
            &fs::read(sb.path().join("orders/svid.key")).unwrap(),
        )
        .build()
        .unwrap(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let verified = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mint_errors = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (stop, verified, failures, mint_errors) = (
            stop.clone(),
            verified.clone(),
            failures.clone(),
            mint_errors.clone(),
        );
        let (client, verifier) = (client.clone(), verifier.clone());
        callers.push(tokio::spawn(async move {
            let mut reasons = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let token = match client.token_for(&id(PAYMENTS)).await {
                    Ok(token) => token,
                    Err(e) => {
                        mint_errors.fetch_add(1, Ordering::Relaxed);
                        reasons.push(format!("mint: {e}"));
                        continue;
                    }
                };
                match verifier.verify(&token) {
                    Ok(_) => {
                        verified.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        reasons.push(format!("verify: {e}"));
                    }
                }
            }
            reasons
        }));
    }

    let first = sb.keys_json(&["list"]);
    let mut actives = kids_in_state(&first, "active");
    for _ in 0..ROTATIONS {
        tokio::time::sleep(BETWEEN_ROTATIONS).await;
        // The CLI blocks; keep the callers' runtime threads free meanwhile.
        let list = tokio::task::block_in_place(|| sb.keys_json(&["rotate"]));
        let active = kids_in_state(&list, "active");
        assert_eq!(active.len(), 1, "{list}");
        assert!(
            !actives.contains(&active[0]),
            "rotation reused a key: {list}"
        );
        actives.push(active[0].clone());
        assert_eq!(kids_in_state(&list, "next").len(), 1, "{list}");
    }
    // Let the last key sign for a while too.
    tokio::time::sleep(BETWEEN_ROTATIONS).await;
    stop.store(true, Ordering::Relaxed);
    let mut reasons = Vec::new();
    for caller in callers {
        reasons.extend(caller.await.unwrap());
    }
    let (verified, failures, mint_errors) = (
        verified.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        mint_errors.load(Ordering::Relaxed),
    );
    println!(
        "rotation load: {ROTATIONS} rotations, {verified} tokens verified, {failures} verification failures, {mint_errors} mint errors"
    );
    reasons.truncate(10);
    assert_eq!(failures, 0, "valid tokens failed verification: {reasons:?}");
    assert_eq!(mint_errors, 0, "minting failed: {reasons:?}");
    assert!(verified > 0);

    // Emergency: a token signed by the active key, which a rotation then retires.
    let outstanding = client.token_for(&id(PAYMENTS)).await.unwrap();
    let for_sdk = client.token_for(&id(PAYMENTS)).await.unwrap();
    let signer = actives.last().unwrap().clone();
    let list = sb.keys_json(&["rotate"]);
    assert!(kids_in_state(&list, "retired").contains(&signer), "{list}");
    sb.keys_json(&["revoke", &signer]);
    let jwks: Value = https_client(&bundle, None)
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != signer.as_str()),
        "a revoked key is still published: {jwks}"
    );
    let payments = https_client(
        &bundle,
        Some((&sb.read("payments/svid.pem"), &sb.read("payments/svid.key"))),
    );
    let answer: Value = payments
        .post(server.url("/v1/introspect"))
        .form(&[("token", outstanding.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer, serde_json::json!({"active": false}));

    // The verifier drops the key within one refresh (three quarters of a max-age).
    tokio::time::sleep(MAX_AGE + Duration::from_millis(500)).await;
    assert!(matches!(
        verifier.verify(&for_sdk),
        Err(VerifyError::UnknownKey)
    ));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
