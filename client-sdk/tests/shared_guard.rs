//! Shared replay guards in the verifier (SPEC §7 "A verifier that cannot reach its
//! ledger fails closed", §8 "Replay guard: local, Redis, or remote introspection"),
//! with an in-memory stand-in for the network store: `verify_async` consults the guard
//! last, maps each answer to a typed error, and the synchronous `verify` can never
//! skip it. The real Redis and introspection guards are tested end to end in
//! `tests/tests/sdk_redis_guard.rs` and `tests/tests/sdk_introspection_guard.rs`.

// Test code: a failed fixture step is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

#[allow(dead_code, unreachable_pub)]
mod verify_support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use baton_sdk::{
    BuildError, GuardFuture, GuardUnavailable, LocalReplayGuard, Presentation, SharedReplayError,
    SharedReplayGuard, Verifier, VerifyError,
};
use verify_support::*;

/// Records what it was shown; answers from a script, else one-time in memory.
#[derive(Debug, Default)]
struct Store {
    seen: Mutex<HashSet<String>>,
    calls: Mutex<Vec<String>>,
    answer: Mutex<Option<SharedReplayError>>,
}

impl SharedReplayGuard for Store {
    fn consume<'a>(&'a self, p: Presentation<'a>) -> GuardFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(format!(
                "{} {} {} {} {}",
                p.audience(),
                p.issued_at(),
                p.expires_at(),
                p.keep_until(),
                p.now()
            ));
            if let Some(answer) = *self.answer.lock().unwrap() {
                return Err(answer);
            }
            if self.seen.lock().unwrap().insert(p.jti().to_owned()) {
                Ok(())
            } else {
                Err(SharedReplayError::Replayed)
            }
        })
    }
}

fn verifier(ca: &Ca, signer: &Signer, store: &Arc<Store>) -> Verifier {
    Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .shared_replay_guard(store.clone())
        .build()
        .unwrap()
}

#[tokio::test]
async fn replicas_sharing_a_guard_accept_a_token_once_through_verify_async() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let store = Arc::new(Store::default());
    let (a, b) = (verifier(&ca, &es, &store), verifier(&ca, &es, &store));
    let now = unix_now();
    let token = es.token(&claims(now));
    let caller = a.verify_async_at(&token, now).await.unwrap();
    assert_eq!(caller.id.as_str(), CALLER);
    assert_eq!(
        b.verify_async_at(&token, now).await,
        Err(VerifyError::Replayed)
    );
    // The guard saw the audience, iat, exp and exp + the 5 s leeway, at `now`.
    assert_eq!(
        store.calls.lock().unwrap()[0],
        format!("{AUDIENCE} {now} {} {} {now}", now + 60, now + 65)
    );
}

#[tokio::test]
async fn sync_verify_refuses_rather_than_skip_a_shared_guard() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let store = Arc::new(Store::default());
    let v = verifier(&ca, &es, &store);
    let token = es.token(&claims(unix_now()));
    let err = v.verify(&token).unwrap_err();
    assert_eq!(err, VerifyError::AsyncVerificationRequired);
    assert!(
        err.is_unavailable(),
        "the verifier's fault, not the caller's"
    );
    assert!(err.to_string().contains("verify_async"), "{err}");
    // Even a garbage token gets this answer: the misuse shows on the first request.
    assert_eq!(
        v.verify("garbage"),
        Err(VerifyError::AsyncVerificationRequired)
    );
    // Nothing was consumed: the token is still good through the right call.
    assert!(store.calls.lock().unwrap().is_empty());
    assert!(v.verify_async(&token).await.is_ok());
}

#[tokio::test]
async fn tokens_failing_any_other_check_never_reach_the_shared_guard() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let store = Arc::new(Store::default());
    let v = verifier(&ca, &es, &store);
    let now = unix_now();
    let mut wrong_aud = claims(now);
    wrong_aud["aud"] = "spiffe://example.org/fn/other".into();
    let expired = claims(now - 600);
    let mut tampered = es.token(&claims(now));
    tampered.insert(tampered.len() / 2, 'A');
    for (token, expected) in [
        (es.token(&wrong_aud), VerifyError::WrongAudience),
        (es.token(&expired), VerifyError::Expired),
    ] {
        assert_eq!(v.verify_async_at(&token, now).await, Err(expected));
    }
    assert!(v.verify_async_at(&tampered, now).await.is_err());
    assert!(store.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn guard_answers_map_to_typed_verify_errors_and_fail_closed() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let store = Arc::new(Store::default());
    let v = verifier(&ca, &es, &store);
    let cases = [
        (SharedReplayError::Replayed, VerifyError::Replayed, false),
        (SharedReplayError::Inactive, VerifyError::Inactive, false),
        (
            SharedReplayError::PredatesEpoch,
            VerifyError::PredatesReplayLedger,
            false,
        ),
        (
            SharedReplayError::Unavailable(GuardUnavailable::Timeout),
            VerifyError::SharedGuardUnavailable(GuardUnavailable::Timeout),
            true,
        ),
        (
            SharedReplayError::Unavailable(GuardUnavailable::Unreachable),
            VerifyError::SharedGuardUnavailable(GuardUnavailable::Unreachable),
            true,
        ),
        (
            SharedReplayError::Unavailable(GuardUnavailable::IssuerStatus(503)),
            VerifyError::SharedGuardUnavailable(GuardUnavailable::IssuerStatus(503)),
            true,
        ),
    ];
    for (answer, expected, unavailable) in cases {
        *store.answer.lock().unwrap() = Some(answer);
        let token = es.token(&claims(unix_now()));
        let err = v.verify_async(&token).await.unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.is_unavailable(), unavailable, "{err:?}");
        assert!(!err.to_string().contains(&token[..30]), "never the token");
    }
    assert_eq!(
        VerifyError::SharedGuardUnavailable(GuardUnavailable::Timeout).reason(),
        "replay_guard_unavailable"
    );
    assert_eq!(VerifyError::Inactive.reason(), "inactive");
    assert_eq!(
        VerifyError::PredatesReplayLedger.reason(),
        "predates_replay_ledger"
    );
}

#[tokio::test]
async fn verify_async_without_a_shared_guard_is_the_local_guard() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let v = Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[es.jwk()]))
        .unwrap()
        .build()
        .unwrap();
    let token = es.token(&claims(unix_now()));
    assert!(v.verify_async(&token).await.is_ok());
    assert_eq!(v.verify(&token), Err(VerifyError::Replayed));
    assert_eq!(v.verify_async(&token).await, Err(VerifyError::Replayed));
}

#[test]
fn local_and_shared_guards_exclude_each_other() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let err = Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[es.jwk()]))
        .unwrap()
        .replay_guard(Arc::new(LocalReplayGuard::new()))
        .shared_replay_guard(Arc::new(Store::default()))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::ConflictingReplayGuards), "{err}");
}

#[tokio::test]
async fn presentation_debug_never_shows_the_token() {
    #[derive(Debug, Default)]
    struct Printer(Mutex<String>);
    impl SharedReplayGuard for Printer {
        fn consume<'a>(&'a self, p: Presentation<'a>) -> GuardFuture<'a> {
            *self.0.lock().unwrap() = format!("{p:?}");
            Box::pin(async { Ok(()) })
        }
    }
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let printer = Arc::new(Printer::default());
    let v = Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[es.jwk()]))
        .unwrap()
        .shared_replay_guard(printer.clone())
        .build()
        .unwrap();
    let token = es.token(&claims(unix_now()));
    let caller = v.verify_async(&token).await.unwrap();
    let printed = printer.0.lock().unwrap().clone();
    assert!(printed.contains(&caller.jti), "{printed}");
    for part in token.split('.') {
        assert!(!printed.contains(part), "{printed}");
    }
}
