//! The SDK's `TokenClient` built from a join token, against the real `baton serve`
//! (SPEC §8 "or from a join token: it generates its key in memory, fetches its
//! certificate, and renews it before expiry"; §5 `POST /v1/svid`).
//!
//! With certificates living 6 s, a client mints tokens without pause for 15 s — long
//! past the first certificate's expiry — without a single failure, while renewing at
//! least three times to new serials; every token verifies with the SDK's `Verifier`.
//! A join token works once. After the identity is revoked, renewal failures are
//! reported (callback and status) and retried, and nothing panics. Both attestation
//! methods run, in parallel tests.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_proto::error::ErrorCode;
use baton_sdk::{Auth, KeyType, RenewalEvent, SpiffeId, TokenClient, TokenError, Verifier};
use baton_tests::{Sandbox, Server};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";

const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
"#;

/// Certificate lifetime: renewal every ~3 s.
const SVID_TTL: &str = "6s";
/// How long the client mints: more than two lifetimes of the first certificate.
const MINTING: Duration = Duration::from_secs(15);
/// Pause between mints.
const MINT_EVERY: Duration = Duration::from_millis(150);

/// What the renewal callback saw.
#[derive(Debug, Clone)]
enum Seen {
    Renewed { serial: String },
    Failed { refusal: Option<(u16, ErrorCode)> },
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The error and every source under it.
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

/// Polls `done` every 50 ms for at most `limit`; says whether it came true.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

async fn join_mint_renew_revoke(auth: Auth, key_type: KeyType) {
    let sb = Sandbox::with_workloads(&[], POLICY);
    let server = Server::start_with_env(
        &sb,
        &["--policy", "policy.toml"],
        &[("BATON_SVID_TTL", SVID_TTL)],
    );
    let bundle = sb.bundle();
    let join_token = sb
        .baton(&["enroll", "--id", ORDERS, "--join-token"])
        .ok()
        .trim()
        .to_owned();
    assert!(join_token.starts_with("baton-jt-"), "{join_token}");

    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let record = Arc::clone(&seen);
    let started = Instant::now();
    let client = TokenClient::join(server.issuer.clone(), bundle.as_bytes(), join_token.clone())
        .auth(auth)
        .key_type(key_type)
        .expect_id(id(ORDERS))
        .on_renewal(move |event| {
            let seen = match event {
                RenewalEvent::Renewed(status) => Seen::Renewed {
                    serial: status.serial.clone(),
                },
                RenewalEvent::Failed { error, .. } => Seen::Failed {
                    refusal: match error {
                        TokenError::Refused { status, error, .. } => Some((*status, *error)),
                        _ => None,
                    },
                },
                _ => return,
            };
            record.lock().unwrap().push(seen);
        })
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{auth:?}: connect: {}", chain(&e)));
    eprintln!("{auth:?}: connected in {:?}", started.elapsed());
    assert_eq!(client.id().as_str(), ORDERS);
    let first = client.certificate();
    assert!(first.auto_renew);
    assert_eq!(first.renewals, 0);
    assert_eq!(first.consecutive_failures, 0);
    assert!(first.last_error.is_none());
    assert!(first.not_after <= unix_now() + 6, "{first:?}");
    let next = first.next_attempt.unwrap();
    assert!(next > unix_now() && next < first.not_after, "{first:?}");

    // A join token works once: a second client with it is refused, and the error does
    // not repeat it.
    let again = TokenClient::join(server.issuer.clone(), bundle.as_bytes(), join_token.clone())
        .auth(auth)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            TokenError::Refused {
                status: 401,
                error: ErrorCode::InvalidClient,
                ..
            }
        ),
        "{}",
        chain(&again)
    );
    assert!(!chain(&again).contains(&join_token));
    assert!(!format!("{again:?}").contains(&join_token));

    let verifier = Verifier::builder(server.issuer.as_str(), id(PAYMENTS), bundle.as_bytes())
        .unwrap()
        .build_fetching()
        .await
        .unwrap();

    // Mint without pause, across several renewals: not one failure.
    let payments = id(PAYMENTS);
    let minting = Instant::now();
    let mut minted = 0u32;
    let mut bindings = HashSet::new();
    while minting.elapsed() < MINTING {
        let token = client.token_for(&payments).await.unwrap_or_else(|e| {
            panic!(
                "{auth:?}: mint #{minted} at {:?} failed: {} (status {:?})",
                minting.elapsed(),
                chain(&e),
                client.certificate()
            )
        });
        let caller = verifier
            .verify(&token)
            .unwrap_or_else(|e| panic!("{auth:?}: token #{minted} does not verify: {e}"));
        assert_eq!(caller.id.as_str(), ORDERS);
        match auth {
            // Bound to the certificate the client presented when it minted.
            Auth::Mtls => {
                bindings.insert(caller.cnf_x5t_s256.expect("mTLS tokens are bound"));
            }
            _ => assert!(caller.cnf_x5t_s256.is_none()),
        }
        minted += 1;
        tokio::time::sleep(MINT_EVERY).await;
    }

    let status = client.certificate();
    let events = seen.lock().unwrap().clone();
    eprintln!(
        "{auth:?}: {minted} tokens in {:?}; {} renewals; {events:?}",
        minting.elapsed(),
        status.renewals
    );
    assert!(
        events.iter().all(|e| matches!(e, Seen::Renewed { .. })),
        "{events:?}"
    );
    assert!(status.renewals >= 3, "{status:?}");
    assert_eq!(status.renewals, events.len() as u64);
    assert_eq!(status.consecutive_failures, 0);
    assert!(status.last_error.is_none());
    // Every renewal is a new certificate (the issuer issues one only for a new key).
    let mut serials: HashSet<String> = events
        .iter()
        .filter_map(|e| match e {
            Seen::Renewed { serial } => Some(serial.clone()),
            Seen::Failed { .. } => None,
        })
        .collect();
    serials.insert(first.serial.clone());
    assert_eq!(serials.len() as u64, status.renewals + 1, "{serials:?}");
    assert!(serials.contains(&status.serial));
    assert!(status.not_after > first.not_after);
    if auth == Auth::Mtls {
        // Each renewed certificate took over the HTTPS client: tokens were bound to at
        // least as many certificates as there were renewals.
        assert!(bindings.len() as u64 >= status.renewals, "{bindings:?}");
    }

    // Revoke the identity on the running issuer: renewals now fail, are reported, and
    // are retried; the client keeps its certificate and nothing panics.
    sb.baton(&["identities", "revoke", ORDERS]).ok();
    let serial_before = client.certificate().serial;
    let reported = eventually(Duration::from_secs(10), || {
        client.certificate().consecutive_failures >= 2
    })
    .await;
    let status = client.certificate();
    let events = seen.lock().unwrap().clone();
    assert!(
        reported,
        "no renewal failure reported: {status:?} {events:?}"
    );
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(status.serial, serial_before);
    let refusals: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Seen::Failed { refusal } => Some(*refusal),
            Seen::Renewed { .. } => None,
        })
        .collect();
    assert!(refusals.len() >= 2, "{events:?}");
    assert!(
        refusals
            .iter()
            .all(|r| *r == Some((401, ErrorCode::InvalidClient))),
        "{events:?}"
    );
    // The client itself still answers, with a refusal rather than a panic.
    let denied = client.token_for(&payments).await.unwrap_err();
    assert!(
        matches!(denied, TokenError::Refused { status: 401, .. }),
        "{}",
        chain(&denied)
    );
    eprintln!("{auth:?}: done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_client_over_mtls_renews_while_minting_without_a_failure() {
    join_mint_renew_revoke(Auth::Mtls, KeyType::EcP256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_client_by_assertion_renews_while_minting_without_a_failure() {
    join_mint_renew_revoke(Auth::Assertion, KeyType::Ed25519).await;
}
