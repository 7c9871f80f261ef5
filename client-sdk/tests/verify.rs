//! The callee's verifier against SPEC §2 (key trust) and §4 (token rejection rules):
//! one test per rule, named after the sentence it proves. Fixtures are real
//! certificates (rcgen) and real signatures (ring); time is injected with `verify_at`.

// Test and benchmark code: a failed fixture step is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

#[allow(dead_code, unreachable_pub)]
mod verify_support;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_sdk::{
    BuildError, LocalReplayGuard, ReplayError, ReplayGuard, SpiffeId, VerifiedCaller, Verifier,
    VerifyError,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use verify_support::*;

fn audience() -> SpiffeId {
    AUDIENCE.parse().unwrap()
}

/// A verifier for AUDIENCE trusting `ca`, with the static keys of `signers`.
fn verifier_for(ca: &Ca, signers: &[&Signer]) -> Verifier {
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
    Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&keys))
        .unwrap()
        .build()
        .unwrap()
}

/// One CA, one ES256 and one EdDSA signer, and a verifier trusting both keys.
struct Fixture {
    ca: Ca,
    es: Signer,
    ed: Signer,
    verifier: Verifier,
    now: i64,
}

fn fixture() -> Fixture {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let ed = ca.signer(Alg::EdDsa);
    let verifier = verifier_for(&ca, &[&es, &ed]);
    Fixture {
        ca,
        es,
        ed,
        verifier,
        now: unix_now(),
    }
}

impl Fixture {
    /// A valid token from the ES256 key with `edit` applied to its claims.
    fn token_with(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = claims(self.now);
        edit(&mut claims);
        self.es.token(&claims)
    }

    fn verify(&self, token: &str) -> Result<VerifiedCaller, VerifyError> {
        self.verifier.verify_at(token, self.now)
    }
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

/// A token with this header and claims and an arbitrary (wrong) signature.
fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header),
        b64(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

// ---- accepted tokens ----

#[test]
fn valid_es256_and_eddsa_tokens_verify_and_name_the_caller() {
    let f = fixture();
    for signer in [&f.es, &f.ed] {
        let mut claims = claims(f.now);
        claims["cnf"] = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"});
        let caller = f.verify(&signer.token(&claims)).unwrap();
        assert_eq!(caller.id.as_str(), CALLER);
        assert_eq!(caller.scopes, ["payments:charge", "orders:read"]);
        assert!(caller.has_scope("orders:read") && !caller.has_scope("orders"));
        assert_eq!(caller.session_id, "session-1");
        assert_eq!(caller.jti, claims["jti"].as_str().unwrap());
        assert_eq!((caller.issued_at, caller.expires_at), (f.now, f.now + 60));
        assert_eq!(
            caller.cnf_x5t_s256.as_deref(),
            Some("bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2")
        );
    }
    assert_eq!(f.verifier.issuer(), ISSUER);
    assert_eq!(f.verifier.audience().as_str(), AUDIENCE);
    assert_eq!(f.verifier.untrusted_keys(), 0);
}

#[test]
fn token_without_scope_has_no_scopes() {
    let f = fixture();
    let token = f.token_with(|c| {
        c.as_object_mut().unwrap().remove("scope");
    });
    assert_eq!(f.verify(&token).unwrap().scopes, Vec::<String>::new());
}

#[test]
fn verify_uses_the_system_clock() {
    let f = fixture();
    let token = f.es.token(&claims(unix_now()));
    assert_eq!(f.verifier.verify(&token).unwrap().id.as_str(), CALLER);
}

#[test]
fn application_at_jwt_typ_is_accepted() {
    let f = fixture();
    let mut header = f.es.header();
    header["typ"] = json!("application/at+jwt");
    assert!(f.verify(&f.es.sign_raw(&header, &claims(f.now))).is_ok());
}

// ---- SPEC §4: verifiers reject ... ----

#[test]
fn token_over_8_kib_is_rejected() {
    let f = fixture();
    let token = f.token_with(|c| c["pad"] = json!("x".repeat(8 * 1024)));
    assert!(token.len() > 8192);
    assert_eq!(f.verify(&token), Err(VerifyError::TooLarge));
    // Rejected unread: not even its shape matters.
    assert_eq!(f.verify(&"a".repeat(8193)), Err(VerifyError::TooLarge));
}

#[test]
fn token_just_under_8_kib_is_read() {
    let f = fixture();
    let base = f.token_with(|_| {}).len();
    // Grow the claims until the token is exactly 8192 bytes (base64 grows in steps).
    let mut pad = 8192usize.saturating_sub(base) * 3 / 4;
    let token = loop {
        let t = f.token_with(|c| c["pad"] = json!("x".repeat(pad)));
        if t.len() <= 8192 {
            break t;
        }
        pad -= 1;
    };
    assert!(token.len() > 8180);
    assert!(f.verify(&token).is_ok());
}

#[test]
fn token_without_three_segments_is_malformed() {
    let f = fixture();
    let token = f.token_with(|_| {});
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        parts[..2].join("."),
        format!("{token}.x"),
        format!("{}.{}", parts[0], parts[1]),
        String::new(),
        "not a token".to_owned(),
    ] {
        assert!(
            matches!(f.verify(&bad), Err(VerifyError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn non_base64url_segments_are_malformed() {
    let f = fixture();
    let token = f.token_with(|_| {});
    let parts: Vec<&str> = token.split('.').collect();
    // Standard base64 with padding is not base64url.
    let header_std = STANDARD.encode(URL_SAFE_NO_PAD.decode(parts[0]).unwrap());
    for bad in [
        format!("{header_std}=.{}.{}", parts[1], parts[2]),
        format!("{}.{}.+{}", parts[0], parts[1], &parts[2][1..]),
        format!("{}.{}!.{}", parts[0], parts[1], parts[2]),
        format!("{}*.{}.{}", parts[0], parts[1], parts[2]),
    ] {
        assert!(
            matches!(f.verify(&bad), Err(VerifyError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn alg_none_is_rejected() {
    let f = fixture();
    let claims = claims(f.now);
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": f.es.kid});
        let token = format!("{}.{}.", b64(&header), b64(&claims));
        assert_eq!(f.verify(&token), Err(VerifyError::UnsupportedAlgorithm));
    }
}

#[test]
fn hs256_is_rejected() {
    let f = fixture();
    let claims = claims(f.now);
    // The classic confusion: an HMAC keyed with the signer's *public* key.
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": f.es.kid});
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &f.es.public_key());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    assert_eq!(f.verify(&token), Err(VerifyError::UnsupportedAlgorithm));
    for alg in [
        "HS384", "HS512", "RS256", "PS256", "ES384", "ES256K", "Ed25519",
    ] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": f.es.kid});
        let token = unsigned(&header, &claims, &[0; 64]);
        assert_eq!(
            f.verify(&token),
            Err(VerifyError::UnsupportedAlgorithm),
            "{alg}"
        );
    }
}

#[test]
fn header_alg_not_matching_key_is_rejected() {
    let f = fixture();
    let claims = claims(f.now);
    // EdDSA named in the header, ES256 key behind the kid (and the reverse).
    let mut header = f.es.header();
    header["alg"] = json!("EdDSA");
    assert_eq!(
        f.verify(&f.ed.sign_raw(&header, &claims)),
        Err(VerifyError::AlgorithmMismatch)
    );
    let mut header = f.ed.header();
    header["alg"] = json!("ES256");
    assert_eq!(
        f.verify(&f.es.sign_raw(&header, &claims)),
        Err(VerifyError::AlgorithmMismatch)
    );
}

#[test]
fn missing_kid_is_rejected() {
    let f = fixture();
    let claims = claims(f.now);
    for header in [
        json!({"alg": "ES256", "typ": "at+jwt"}),
        json!({"alg": "ES256", "typ": "at+jwt", "kid": ""}),
        json!({"alg": "ES256", "typ": "at+jwt", "kid": null}),
    ] {
        assert_eq!(
            f.verify(&f.es.sign_raw(&header, &claims)),
            Err(VerifyError::MissingKeyId)
        );
    }
}

#[test]
fn unknown_kid_is_rejected() {
    let f = fixture();
    let other = f.ca.signer(Alg::Es256);
    assert_eq!(
        f.verify(&other.token(&claims(f.now))),
        Err(VerifyError::UnknownKey)
    );
    let mut header = f.es.header();
    header["kid"] = json!("../../etc/passwd");
    assert_eq!(
        f.verify(&f.es.sign_raw(&header, &claims(f.now))),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn embedded_jwk_x5c_and_jku_headers_are_never_used() {
    let f = fixture();
    // The attacker holds a workload certificate of the same CA and its key.
    let attacker = f.ca.workload(Alg::Es256, "spiffe://example.org/fn/mallory");
    let claims = claims(f.now);
    let x5c: Vec<String> = attacker.chain.iter().map(|d| STANDARD.encode(d)).collect();
    for kid in [attacker.kid.clone(), f.es.kid.clone()] {
        let header = json!({
            "alg": "ES256", "typ": "at+jwt", "kid": kid,
            "jwk": attacker.jwk(), "x5c": x5c, "jku": "https://evil.example/jwks.json",
            "x5u": "https://evil.example/cert.pem",
        });
        let want = if kid == f.es.kid {
            VerifyError::BadSignature
        } else {
            VerifyError::UnknownKey
        };
        assert_eq!(f.verify(&attacker.sign_raw(&header, &claims)), Err(want));
    }
}

#[test]
fn bad_signature_is_rejected() {
    let f = fixture();
    let token = f.token_with(|_| {});
    let parts: Vec<&str> = token.split('.').collect();
    // Claims changed after signing.
    let forged = f.token_with(|c| c["sub"] = json!("spiffe://example.org/fn/admin"));
    let forged_claims = forged.split('.').nth(1).unwrap();
    let swapped = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
    assert_eq!(f.verify(&swapped), Err(VerifyError::BadSignature));
    // Signed by another key under a trusted kid.
    let other = f.ca.signer(Alg::Es256);
    assert_eq!(
        f.verify(&other.sign_raw(&f.es.header(), &claims(f.now))),
        Err(VerifyError::BadSignature)
    );
    // Truncated, empty, zero and over-long signatures.
    for sig in [&[][..], &[0u8; 32][..], &[0u8; 64][..], &[1u8; 96][..]] {
        let t = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(f.verify(&t), Err(VerifyError::BadSignature));
    }
    // A DER-encoded ECDSA signature is not the JWS form (RFC 7518 §3.4).
    let der_sig = {
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            ring::signature::EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &ring::rand::SystemRandom::new(),
            )
            .unwrap()
            .as_ref(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        key.sign(&ring::rand::SystemRandom::new(), b"x")
            .unwrap()
            .as_ref()
            .to_vec()
    };
    let t = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(der_sig)
    );
    assert_eq!(f.verify(&t), Err(VerifyError::BadSignature));
}

#[test]
fn wrong_typ_is_rejected() {
    let f = fixture();
    let claims = claims(f.now);
    for typ in [
        json!("JWT"),
        json!("jwt"),
        json!("at+jwt "),
        json!(null),
        json!("client-authentication+jwt"),
    ] {
        let mut header = f.es.header();
        header["typ"] = typ;
        assert_eq!(
            f.verify(&f.es.sign_raw(&header, &claims)),
            Err(VerifyError::WrongType)
        );
    }
    let mut header = f.es.header();
    header.as_object_mut().unwrap().remove("typ");
    assert_eq!(
        f.verify(&f.es.sign_raw(&header, &claims)),
        Err(VerifyError::WrongType)
    );
}

#[test]
fn critical_header_extension_is_rejected() {
    let f = fixture();
    let mut header = f.es.header();
    header["crit"] = json!(["b64"]);
    header["b64"] = json!(false);
    assert!(matches!(
        f.verify(&f.es.sign_raw(&header, &claims(f.now))),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn wrong_issuer_is_rejected() {
    let f = fixture();
    for iss in [
        "https://evil.example.org",
        "https://baton.example.org/",
        "https://BATON.example.org",
        "",
    ] {
        let token = f.token_with(|c| c["iss"] = json!(iss));
        assert_eq!(f.verify(&token), Err(VerifyError::WrongIssuer), "{iss}");
    }
}

#[test]
fn audience_of_another_callee_is_rejected() {
    let f = fixture();
    for aud in [
        "spiffe://example.org/fn/ledger",
        "spiffe://example.org/fn/payments/admin",
        "spiffe://other.org/fn/payments",
    ] {
        let token = f.token_with(|c| c["aud"] = json!(aud));
        assert_eq!(f.verify(&token), Err(VerifyError::WrongAudience), "{aud}");
    }
    // SPEC §4: aud is exactly one callee, a string; an array never matches.
    let token = f.token_with(|c| c["aud"] = json!([AUDIENCE]));
    assert!(matches!(f.verify(&token), Err(VerifyError::Malformed(_))));
}

#[test]
fn sub_and_client_id_must_agree() {
    let f = fixture();
    let token = f.token_with(|c| c["client_id"] = json!("spiffe://example.org/fn/other"));
    assert!(matches!(f.verify(&token), Err(VerifyError::Malformed(_))));
}

#[test]
fn a_caller_of_another_trust_domain_is_rejected_even_under_a_trusted_key() {
    let f = fixture();
    for sub in [
        "spiffe://other.org/fn/orders",
        "spiffe://example.org.evil/fn/orders",
    ] {
        let token = f.token_with(|c| {
            c["sub"] = json!(sub);
            c["client_id"] = json!(sub);
        });
        assert_eq!(
            f.verify(&token),
            Err(VerifyError::Malformed("sub is of another trust domain")),
            "{sub}"
        );
    }
    // The control: the same token for a caller of this trust domain verifies.
    let token = f.token_with(|c| {
        c["sub"] = json!("spiffe://example.org/fn/billing");
        c["client_id"] = json!("spiffe://example.org/fn/billing");
    });
    assert!(f.verify(&token).is_ok());
}

#[test]
fn expired_beyond_leeway_is_rejected() {
    let f = fixture();
    let token = f.token_with(|_| {});
    let exp = f.now + 60;
    // RFC 7519 §4.1.4: valid while now < exp (+ leeway 5 s).
    assert_eq!(
        f.verifier.verify_at(&token, exp + 5),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        f.verifier.verify_at(&token, exp + 3600),
        Err(VerifyError::Expired)
    );
}

#[test]
fn expired_within_leeway_is_accepted() {
    let f = fixture();
    let token = f.token_with(|_| {});
    assert!(f.verifier.verify_at(&token, f.now + 64).is_ok());
}

#[test]
fn leeway_is_clamped_to_5_seconds() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let now = unix_now();
    let verifier = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[es.jwk()]))
        .unwrap()
        .leeway(3600)
        .build()
        .unwrap();
    let token = es.token(&claims(now));
    assert_eq!(
        verifier.verify_at(&token, now + 60 + 5),
        Err(VerifyError::Expired)
    );
    let strict = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[es.jwk()]))
        .unwrap()
        .leeway(0)
        .build()
        .unwrap();
    assert_eq!(
        strict.verify_at(&token, now + 60),
        Err(VerifyError::Expired)
    );
    assert!(strict.verify_at(&token, now + 59).is_ok());
}

#[test]
fn nbf_in_future_is_rejected() {
    let f = fixture();
    let token = f.token_with(|c| c["nbf"] = json!(f.now + 6));
    assert_eq!(f.verify(&token), Err(VerifyError::NotYetValid));
    let within = f.token_with(|c| c["nbf"] = json!(f.now + 5));
    assert!(f.verify(&within).is_ok());
}

#[test]
fn iat_in_future_is_rejected() {
    let f = fixture();
    let token = f.token_with(|c| {
        c["iat"] = json!(f.now + 30);
        c["nbf"] = json!(f.now);
    });
    assert_eq!(f.verify(&token), Err(VerifyError::IssuedInFuture));
    // The whole token minted in the future: nbf is checked first.
    let token = f.token_with(|c| {
        c["iat"] = json!(f.now + 30);
        c["nbf"] = json!(f.now + 30);
        c["exp"] = json!(f.now + 90);
    });
    assert_eq!(f.verify(&token), Err(VerifyError::NotYetValid));
}

#[test]
fn lifetime_above_300s_is_rejected() {
    let f = fixture();
    let token = f.token_with(|c| c["exp"] = json!(f.now + 301));
    assert_eq!(f.verify(&token), Err(VerifyError::LifetimeTooLong));
    let token = f.token_with(|c| c["exp"] = json!(i64::MAX));
    assert_eq!(f.verify(&token), Err(VerifyError::LifetimeTooLong));
    let token = f.token_with(|c| {
        c["iat"] = json!(i64::MIN);
        c["nbf"] = json!(i64::MIN);
    });
    assert_eq!(f.verify(&token), Err(VerifyError::LifetimeTooLong));
    let max = f.token_with(|c| c["exp"] = json!(f.now + 300));
    assert!(f.verify(&max).is_ok());
    let backwards = f.token_with(|c| {
        c["iat"] = json!(f.now + 5);
        c["exp"] = json!(f.now + 5);
    });
    assert!(matches!(
        f.verify(&backwards),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn missing_jti_is_rejected() {
    let f = fixture();
    let token = f.token_with(|c| {
        c.as_object_mut().unwrap().remove("jti");
    });
    assert_eq!(f.verify(&token), Err(VerifyError::MissingJti));
    let token = f.token_with(|c| c["jti"] = json!(""));
    assert_eq!(f.verify(&token), Err(VerifyError::MissingJti));
    let token = f.token_with(|c| c["jti"] = json!("j".repeat(257)));
    assert!(matches!(f.verify(&token), Err(VerifyError::Malformed(_))));
}

#[test]
fn claims_that_are_not_an_access_token_are_malformed() {
    let f = fixture();
    for edit in [
        (|c: &mut Value| c["sub"] = json!("not a spiffe id")) as fn(&mut Value),
        |c| c["exp"] = json!("soon"),
        |c| c["scope"] = json!("a  b"),
        |c| {
            c.as_object_mut().unwrap().remove("sid");
        },
        |c| *c = json!(["not", "an", "object"]),
    ] {
        let token = f.token_with(edit);
        assert!(matches!(f.verify(&token), Err(VerifyError::Malformed(_))));
    }
}

#[test]
fn second_presentation_is_replayed() {
    let f = fixture();
    let token = f.token_with(|_| {});
    assert!(f.verify(&token).is_ok());
    assert_eq!(f.verify(&token), Err(VerifyError::Replayed));
    assert_eq!(
        f.verifier.verify_at(&token, f.now + 30),
        Err(VerifyError::Replayed)
    );
    // The same jti under a fresh signature is the same token.
    let jti = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jti).unwrap()).unwrap();
    assert_eq!(f.verify(&f.ed.token(&claims)), Err(VerifyError::Replayed));
}

#[test]
fn a_rejected_token_does_not_burn_its_jti() {
    let f = fixture();
    let token = f.token_with(|_| {});
    // Refused as not yet valid by a verifier whose clock is behind...
    assert_eq!(
        f.verifier.verify_at(&token, f.now - 60),
        Err(VerifyError::NotYetValid)
    );
    // ...and still accepted, once, on time.
    assert!(f.verify(&token).is_ok());
    assert_eq!(f.verify(&token), Err(VerifyError::Replayed));
}

#[test]
fn full_replay_guard_fails_closed() {
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let now = unix_now();
    let verifier = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[es.jwk()]))
        .unwrap()
        .replay_guard(Arc::new(LocalReplayGuard::with_capacity(1)))
        .build()
        .unwrap();
    assert!(verifier.verify_at(&es.token(&claims(now)), now).is_ok());
    let err = verifier
        .verify_at(&es.token(&claims(now)), now)
        .unwrap_err();
    assert_eq!(err, VerifyError::ReplayGuardUnavailable);
    assert!(err.is_unavailable());
}

#[test]
fn shared_replay_guard_makes_tokens_one_time_across_verifiers() {
    #[derive(Debug, Default)]
    struct Shared(LocalReplayGuard);
    impl ReplayGuard for Shared {
        fn consume(&self, jti: &str, exp: i64, now: i64) -> Result<(), ReplayError> {
            self.0.consume(jti, exp, now)
        }
    }
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let guard: Arc<dyn ReplayGuard> = Arc::new(Shared::default());
    let replica = || {
        Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
            .unwrap()
            .jwks(&jwks(&[es.jwk()]))
            .unwrap()
            .replay_guard(Arc::clone(&guard))
            .build()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    let now = unix_now();
    let token = es.token(&claims(now));
    assert!(a.verify_at(&token, now).is_ok());
    assert_eq!(b.verify_at(&token, now), Err(VerifyError::Replayed));
}

#[test]
fn replay_guard_remembers_the_jti_until_exp_plus_leeway() {
    #[derive(Debug, Default)]
    struct Recorder(std::sync::Mutex<Vec<(String, i64, i64)>>);
    impl ReplayGuard for Recorder {
        fn consume(&self, jti: &str, exp: i64, now: i64) -> Result<(), ReplayError> {
            self.0.lock().unwrap().push((jti.to_owned(), exp, now));
            Ok(())
        }
    }
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let recorder = Arc::new(Recorder::default());
    let verifier = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[es.jwk()]))
        .unwrap()
        .replay_guard(recorder.clone())
        .build()
        .unwrap();
    let now = unix_now();
    let caller = verifier.verify_at(&es.token(&claims(now)), now).unwrap();
    assert_eq!(
        recorder.0.lock().unwrap().as_slice(),
        [(caller.jti, now + 60 + 5, now)]
    );
}

// ---- SPEC §2: keys are trusted for their certificate, and only the token signer's ----

fn build_error(ca_pem: &str, keys: &[Value]) -> BuildError {
    Verifier::builder(ISSUER, audience(), ca_pem.as_bytes())
        .unwrap()
        .jwks(&jwks(keys))
        .unwrap_err()
}

fn assert_untrusted(err: BuildError, why: &str) {
    match err {
        BuildError::NoTrustedKey { reason, .. } => {
            assert!(reason.contains(why), "{reason:?} should mention {why:?}")
        }
        other => panic!("expected NoTrustedKey, got {other:?}"),
    }
}

#[test]
fn jwk_signed_by_workload_cert_is_not_trusted() {
    let ca = Ca::new(TD);
    let workload = ca.workload(Alg::Es256, CALLER);
    assert_untrusted(
        build_error(&ca.pem, &[workload.jwk()]),
        "not the token signer",
    );
    // Next to a real signer it is skipped, and tokens it signs stay unverifiable.
    let signer = ca.signer(Alg::Es256);
    let verifier = verifier_for(&ca, &[&signer, &workload]);
    assert_eq!(verifier.untrusted_keys(), 1);
    let now = unix_now();
    assert_eq!(
        verifier.verify_at(&workload.token(&claims(now)), now),
        Err(VerifyError::UnknownKey)
    );
    assert!(verifier.verify_at(&signer.token(&claims(now)), now).is_ok());
}

#[test]
fn reserved_ids_other_than_the_token_signer_are_not_trusted() {
    let ca = Ca::new(TD);
    let now = unix_now();
    for uris in [
        &["spiffe://example.org/baton/admin"][..],
        &["spiffe://example.org/baton/token-signer/x"],
        &["spiffe://example.org/baton"],
        &[SIGNER_ID, "spiffe://example.org/fn/orders"],
        &[],
    ] {
        let leaf = ca.leaf(&LeafSpec {
            alg: Alg::Es256,
            uris,
            not_before: now - 60,
            not_after: now + 3600,
            is_ca: false,
        });
        assert!(
            matches!(
                build_error(&ca.pem, &[leaf.jwk()]),
                BuildError::NoTrustedKey { .. }
            ),
            "{uris:?}"
        );
    }
}

#[test]
fn token_signer_of_another_trust_domain_is_not_trusted() {
    // Same CA, signer ID of another trust domain: a verifier of example.org refuses it.
    let ca = Ca::new(TD);
    let now = unix_now();
    let foreign = ca.leaf(&LeafSpec {
        alg: Alg::Es256,
        uris: &["spiffe://other.org/baton/token-signer"],
        not_before: now - 60,
        not_after: now + 3600,
        is_ca: false,
    });
    assert_untrusted(
        build_error(&ca.pem, &[foreign.jwk()]),
        "not the token signer",
    );
}

#[test]
fn jwk_from_another_ca_is_not_trusted() {
    let ca = Ca::new(TD);
    let rogue = Ca::new(TD);
    let signer = rogue.signer(Alg::Es256);
    assert_untrusted(build_error(&ca.pem, &[signer.jwk()]), "does not chain");
}

#[test]
fn wrong_trust_bundle_trusts_no_key() {
    // The verifier was given another trust domain's bundle: nothing verifies.
    let ca = Ca::new(TD);
    let other = Ca::new("other.org");
    let signer = ca.signer(Alg::EdDsa);
    assert_untrusted(build_error(&other.pem, &[signer.jwk()]), "does not chain");
    // A bundle holding both CAs trusts the key again.
    let both = format!("{}{}", other.pem, ca.pem);
    let verifier = Verifier::builder(ISSUER, audience(), both.as_bytes())
        .unwrap()
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .build()
        .unwrap();
    let now = unix_now();
    assert!(verifier.verify_at(&signer.token(&claims(now)), now).is_ok());
}

#[test]
fn jwk_key_not_matching_its_certificate_is_not_trusted() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let attacker = ca.signer(Alg::Es256);
    let x5c: Vec<String> = signer.chain.iter().map(|d| STANDARD.encode(d)).collect();
    // The attacker's key dressed in the real signer's certificate.
    let jwk = attacker.jwk_with(&attacker.public_key(), x5c.clone());
    assert_untrusted(
        build_error(&ca.pem, &[jwk]),
        "not the key of its certificate",
    );
    // An Ed25519 JWK carrying a P-256 certificate.
    let ed = ca.signer(Alg::EdDsa);
    let jwk = ed.jwk_with(&ed.public_key(), x5c);
    assert_untrusted(
        build_error(&ca.pem, &[jwk]),
        "not the key of its certificate",
    );
}

#[test]
fn jwk_with_expired_or_future_certificate_is_not_trusted() {
    let ca = Ca::new(TD);
    let now = unix_now();
    for (not_before, not_after, why) in [
        (now - 7200, now - 3600, "expired"),
        (now + 3600, now + 7200, "not valid yet"),
    ] {
        let leaf = ca.leaf(&LeafSpec {
            alg: Alg::Es256,
            uris: &[SIGNER_ID],
            not_before,
            not_after,
            is_ca: false,
        });
        assert_untrusted(build_error(&ca.pem, &[leaf.jwk()]), why);
    }
}

#[test]
fn key_is_refused_once_its_certificate_expires() {
    let ca = Ca::new(TD);
    let now = unix_now();
    let signer = ca.leaf(&LeafSpec {
        alg: Alg::Es256,
        uris: &[SIGNER_ID],
        not_before: now - 60,
        not_after: now + 120,
        is_ca: false,
    });
    let verifier = verifier_for(&ca, &[&signer]);
    let later = now + 200;
    let token = signer.token(&claims(later));
    assert_eq!(
        verifier.verify_at(&token, later),
        Err(VerifyError::UnknownKey)
    );
    let earlier = signer.token(&claims(now + 100));
    assert!(verifier.verify_at(&earlier, now + 100).is_ok());
}

#[test]
fn ca_certificate_as_signer_is_not_trusted() {
    let ca = Ca::new(TD);
    let now = unix_now();
    let leaf = ca.leaf(&LeafSpec {
        alg: Alg::Es256,
        uris: &[SIGNER_ID],
        not_before: now - 60,
        not_after: now + 3600,
        is_ca: true,
    });
    assert!(matches!(
        build_error(&ca.pem, &[leaf.jwk()]),
        BuildError::NoTrustedKey { .. }
    ));
}

#[test]
fn jwk_chained_through_an_intermediate_is_trusted() {
    let root = Ca::new(TD);
    let intermediate = root.intermediate();
    let signer = intermediate.signer(Alg::EdDsa);
    assert_eq!(signer.chain.len(), 2);
    let verifier = verifier_for(&root, &[&signer]);
    let now = unix_now();
    assert!(verifier.verify_at(&signer.token(&claims(now)), now).is_ok());
    // Without the intermediate in x5c there is no path.
    let leaf_only = signer.jwk_with(
        &signer.public_key(),
        vec![STANDARD.encode(&signer.chain[0])],
    );
    assert_untrusted(build_error(&root.pem, &[leaf_only]), "does not chain");
}

#[test]
fn jwks_with_private_members_or_bad_shape_is_refused() {
    let ca = Ca::new(TD);
    let signer = ca.signer(Alg::Es256);
    let mut leaked = signer.jwk();
    leaked["d"] = json!("c2VjcmV0");
    let err = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[leaked]))
        .unwrap_err();
    assert!(matches!(err, BuildError::Jwks(_)), "{err:?}");
    assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    for bad in [&b"not json"[..], b"{}", b"{\"keys\":{}}"] {
        let err = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
            .unwrap()
            .jwks(bad)
            .unwrap_err();
        assert!(matches!(err, BuildError::Jwks(_)), "{err:?}");
    }
    let err = build_error(&ca.pem, &[]);
    assert!(
        matches!(err, BuildError::NoTrustedKey { offered: 0, .. }),
        "{err:?}"
    );
    let huge = vec![b' '; 300 * 1024];
    let err = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&huge)
        .unwrap_err();
    assert!(matches!(err, BuildError::JwksTooLarge { .. }), "{err:?}");
}

#[test]
fn bad_bundle_or_issuer_is_refused_at_build() {
    let ca = Ca::new(TD);
    for bundle in [
        &b""[..],
        b"not pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        let err = Verifier::builder(ISSUER, audience(), bundle).unwrap_err();
        assert!(matches!(err, BuildError::Bundle(_)), "{err:?}");
    }
    let err = Verifier::builder("", audience(), ca.pem.as_bytes()).unwrap_err();
    assert!(matches!(err, BuildError::EmptyIssuer));
    let err = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
        .unwrap()
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::NoKeySource), "{err:?}");
}

// ---- errors ----

#[test]
fn every_reason_is_a_distinct_snake_case_label() {
    let all = [
        VerifyError::TooLarge,
        VerifyError::Malformed("x"),
        VerifyError::UnsupportedAlgorithm,
        VerifyError::AlgorithmMismatch,
        VerifyError::MissingKeyId,
        VerifyError::UnknownKey,
        VerifyError::KeysUnavailable,
        VerifyError::BadSignature,
        VerifyError::WrongType,
        VerifyError::WrongIssuer,
        VerifyError::WrongAudience,
        VerifyError::Expired,
        VerifyError::NotYetValid,
        VerifyError::IssuedInFuture,
        VerifyError::LifetimeTooLong,
        VerifyError::MissingJti,
        VerifyError::Replayed,
        VerifyError::ReplayGuardUnavailable,
    ];
    let mut seen = std::collections::HashSet::new();
    for err in all {
        let reason = err.reason();
        assert!(seen.insert(reason), "duplicate {reason}");
        assert!(reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn error_messages_never_contain_the_token() {
    let f = fixture();
    let good = f.token_with(|_| {});
    let cases = [
        f.token_with(|c| c["aud"] = json!("spiffe://example.org/fn/x")),
        f.token_with(|c| c["exp"] = json!(f.now - 3600)),
        format!("{good}x"),
        good.replace('.', ","),
    ];
    for token in cases {
        let err = f.verify(&token).unwrap_err();
        let text = format!("{err} {err:?}");
        for part in token.split(['.', ',']).filter(|p| p.len() > 8) {
            assert!(!text.contains(part), "{text}");
        }
    }
}

// ---- hostile input ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verify_never_panics_on_arbitrary_strings(s in ".{0,300}") {
        let f = VERIFIER.with(|v| v.clone());
        let _ = f.verify_at(&s, 1_800_000_000);
    }

    #[test]
    fn verify_never_panics_on_arbitrary_segments(
        header in proptest::collection::vec(any::<u8>(), 0..200),
        payload in proptest::collection::vec(any::<u8>(), 0..400),
        signature in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let f = VERIFIER.with(|v| v.clone());
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature)
        );
        let _ = f.verify_at(&token, 1_800_000_000);
    }

    #[test]
    fn verify_never_panics_on_json_headers_and_claims(
        alg in prop_oneof![
            Just("ES256".to_owned()),
            Just("EdDSA".to_owned()),
            Just("none".to_owned()),
            ".{0,8}",
        ],
        typ in prop_oneof![Just("at+jwt".to_owned()), ".{0,12}"],
        kid in ".{0,40}",
        exp in any::<i64>(),
        iat in any::<i64>(),
        jti in ".{0,20}",
    ) {
        let f = VERIFIER.with(|v| v.clone());
        let header = json!({"alg": alg, "typ": typ, "kid": kid});
        let claims = json!({
            "iss": ISSUER, "sub": CALLER, "client_id": CALLER, "aud": AUDIENCE,
            "iat": iat, "nbf": iat, "exp": exp, "jti": jti, "sid": "s",
        });
        let _ = f.verify_at(&unsigned(&header, &claims, &[0; 64]), 1_800_000_000);
    }

    #[test]
    fn mutated_valid_tokens_never_verify_and_never_panic(
        index in any::<prop::sample::Index>(),
        byte in 0x21u8..0x7f,
    ) {
        let (verifier, token) = SIGNED.with(|s| s.clone());
        let mut bytes = token.into_bytes();
        let i = index.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let mutated = String::from_utf8(bytes).unwrap();
        // Each mutation either breaks the token or, at most, re-encodes the same
        // bits (base64 is canonical here, so even that is refused).
        prop_assert!(verifier.verify_at(&mutated, unix_now()).is_err());
    }
}

thread_local! {
    static VERIFIER: Arc<Verifier> = {
        let f = fixture();
        Arc::new(f.verifier)
    };
    /// A verifier whose replay guard accepts everything, and one valid token.
    static SIGNED: (Arc<Verifier>, String) = {
        #[derive(Debug)]
        struct AcceptAll;
        impl ReplayGuard for AcceptAll {
            fn consume(&self, _: &str, _: i64, _: i64) -> Result<(), ReplayError> {
                Ok(())
            }
        }
        let ca = Ca::new(TD);
        let es = ca.signer(Alg::Es256);
        let verifier = Verifier::builder(ISSUER, audience(), ca.pem.as_bytes())
            .unwrap()
            .jwks(&jwks(&[es.jwk()]))
            .unwrap()
            .replay_guard(Arc::new(AcceptAll))
            .build()
            .unwrap();
        let token = es.token(&claims(unix_now()));
        assert!(verifier.verify(&token).is_ok());
        (Arc::new(verifier), token)
    };
}

#[test]
fn verifier_is_send_sync_and_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Verifier>();
    assert_send_sync::<VerifyError>();
    assert_send_sync::<BuildError>();
    let f = fixture();
    let verifier = Arc::new(f.verifier);
    let tokens: Vec<String> = (0..64).map(|_| f.es.token(&claims(f.now))).collect();
    let now = f.now;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let verifier = Arc::clone(&verifier);
            let tokens = tokens.clone();
            std::thread::spawn(move || {
                tokens
                    .iter()
                    .filter(|t| verifier.verify_at(t, now).is_ok())
                    .count()
            })
        })
        .collect();
    let accepted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        accepted, 64,
        "each token accepted exactly once across threads"
    );
}
