//! Inputs the fuzz targets (`fuzz/`, target `verify_token` / `verify_claims`) found or
//! guard, replayed on stable as ordinary tests: each signed with a trusted key, so the
//! rule under test is the one behind the signature. See `fuzz/README.md`, "Findings".

// Test code: a failed fixture step is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

#[allow(dead_code, unreachable_pub)]
mod verify_support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_sdk::{Verifier, VerifyError};
use verify_support::*;

fn verifier(ca: &Ca, signer: &Signer) -> Verifier {
    Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .build()
        .unwrap()
}

/// A compact JWS over exactly these header and claims bytes, which need not be UTF-8.
fn sign_bytes(signer: &Signer, header: &[u8], claims: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let signature = signer.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// `{…,"x-fuzz":"\xff"}`: valid JSON but for one byte inside a member nobody reads.
fn with_invalid_utf8_member(json: &serde_json::Value) -> Vec<u8> {
    let text = serde_json::to_string(json).unwrap();
    [
        text.trim_end_matches('}').as_bytes(),
        b",\"x-fuzz\":\"\xff\"}",
    ]
    .concat()
}

/// Found by an earlier fuzz run (fixed in db00637): serde_json skims the strings of
/// members it skips, so 0xFF there was accepted, where a stricter reader of the same
/// token refuses it or reads it differently (RFC 8259 §8.1).
#[test]
fn non_utf8_byte_in_an_unknown_claim_is_malformed() {
    let ca = Ca::new(TD);
    let now = unix_now();
    for alg in [Alg::Es256, Alg::EdDsa] {
        let signer = ca.signer(alg);
        let verifier = verifier(&ca, &signer);
        let header = serde_json::to_vec(&signer.header()).unwrap();
        let claims = with_invalid_utf8_member(&claims(now));
        let token = sign_bytes(&signer, &header, &claims);
        assert!(
            matches!(
                verifier.verify_at(&token, now),
                Err(VerifyError::Malformed(_))
            ),
            "{alg:?}: {:?}",
            verifier.verify_at(&token, now)
        );
    }
}

#[test]
fn non_utf8_byte_in_an_unknown_header_member_is_malformed() {
    let ca = Ca::new(TD);
    let now = unix_now();
    let signer = ca.signer(Alg::Es256);
    let verifier = verifier(&ca, &signer);
    let header = with_invalid_utf8_member(&signer.header());
    let claims = serde_json::to_vec(&claims(now)).unwrap();
    let token = sign_bytes(&signer, &header, &claims);
    assert!(
        matches!(
            verifier.verify_at(&token, now),
            Err(VerifyError::Malformed(_))
        ),
        "{:?}",
        verifier.verify_at(&token, now)
    );
}

/// The same token with the member's byte made valid UTF-8 verifies: the refusal
/// above is about the byte, not about unknown members.
#[test]
fn the_same_unknown_claim_in_valid_utf8_is_accepted() {
    let ca = Ca::new(TD);
    let now = unix_now();
    let signer = ca.signer(Alg::Es256);
    let verifier = verifier(&ca, &signer);
    let header = serde_json::to_vec(&signer.header()).unwrap();
    let claims = with_invalid_utf8_member(&claims(now));
    let claims = String::from_utf8_lossy(&claims).into_owned();
    let token = sign_bytes(&signer, &header, claims.as_bytes());
    let caller = verifier.verify_at(&token, now).unwrap();
    assert_eq!(caller.id.as_str(), CALLER);
}
