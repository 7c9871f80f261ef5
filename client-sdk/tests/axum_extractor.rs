//! The axum extractor (feature `axum`): a handler taking `VerifiedCaller` runs only for
//! a valid, unused token for this callee; everything else is 401 with an RFC 6750
//! `WWW-Authenticate` challenge naming the reason, never the token.
#![cfg(feature = "axum")]
// Test code: a failed fixture step is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

#[allow(dead_code, unreachable_pub)]
mod verify_support;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use baton_sdk::{VerifiedCaller, Verifier};
use tower::ServiceExt as _;
use verify_support::*;

fn app(ca: &Ca, signer: &Signer) -> Router {
    let verifier = Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .build()
        .unwrap();
    Router::new()
        .route(
            "/",
            get(|caller: VerifiedCaller| async move { caller.id.to_string() }),
        )
        .with_state(Arc::new(verifier))
}

async fn call(app: &Router, authorization: Option<&str>) -> (StatusCode, Option<String>, String) {
    let mut req = Request::builder().uri("/");
    if let Some(value) = authorization {
        req = req.header(header::AUTHORIZATION, value);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let challenge = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    (
        status,
        challenge,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn valid_token_reaches_the_handler_once_then_is_refused_as_replayed() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let app = app(&ca, &signer);
    let token = signer.token(&claims(unix_now()));

    let (status, _, body) = call(&app, Some(&format!("Bearer {token}"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, CALLER));

    let (status, challenge, body) = call(&app, Some(&format!("bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = challenge.unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(
        challenge.contains("error_description=\"replayed\""),
        "{challenge}"
    );
    assert!(!challenge.contains(&token) && !body.contains(&token));
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_401_with_a_bare_challenge() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::EdDsa);
    let app = app(&ca, &signer);
    for authorization in [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
        Some("Bearer"),
    ] {
        let (status, challenge, _) = call(&app, authorization).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"baton\""),
            "{authorization:?}"
        );
    }
    let (status, challenge, _) = call(&app, Some("Bearer not.a.token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.unwrap().contains("error=\"invalid_token\""));
}

#[tokio::test]
async fn token_for_another_callee_is_refused_with_its_reason() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let app = app(&ca, &signer);
    let mut c = claims(unix_now());
    c["aud"] = "spiffe://example.org/fn/other".into();
    let (status, challenge, _) = call(&app, Some(&format!("Bearer {}", signer.token(&c)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge
            .unwrap()
            .contains("error_description=\"wrong_audience\"")
    );
}

/// A shared replay guard stand-in: one-time in memory, or down.
#[derive(Debug, Default)]
struct Shared {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    down: std::sync::atomic::AtomicBool,
}

impl baton_sdk::SharedReplayGuard for Shared {
    fn consume<'a>(&'a self, p: baton_sdk::Presentation<'a>) -> baton_sdk::GuardFuture<'a> {
        use baton_sdk::{GuardUnavailable, SharedReplayError};
        Box::pin(async move {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SharedReplayError::Unavailable(
                    GuardUnavailable::Unreachable,
                ));
            }
            if self.seen.lock().unwrap().insert(p.jti().to_owned()) {
                Ok(())
            } else {
                Err(SharedReplayError::Replayed)
            }
        })
    }
}

#[tokio::test]
async fn extractor_consults_a_shared_guard_and_answers_503_when_it_is_down() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let shared = Arc::new(Shared::default());
    let verifier = Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .shared_replay_guard(shared.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|caller: VerifiedCaller| async move { caller.id.to_string() }),
        )
        .with_state(Arc::new(verifier));

    let token = signer.token(&claims(unix_now()));
    let (status, _, body) = call(&app, Some(&format!("Bearer {token}"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, CALLER));
    let (status, challenge, _) = call(&app, Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge
            .unwrap()
            .contains("error_description=\"replayed\"")
    );

    shared.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let fresh = signer.token(&claims(unix_now()));
    let (status, challenge, _) = call(&app, Some(&format!("Bearer {fresh}"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        challenge
            .unwrap()
            .contains("error_description=\"replay_guard_unavailable\"")
    );
    // The outage burned nothing: once the guard is back, the token is accepted once.
    shared
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, _, _) = call(&app, Some(&format!("Bearer {fresh}"))).await;
    assert_eq!(status, StatusCode::OK);
}
