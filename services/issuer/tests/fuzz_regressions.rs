//! Inputs the fuzz targets (`fuzz/`, targets `client_assertion` and `cert_chain`) found
//! or guard, replayed on stable as ordinary tests against the public `Attestor`, with
//! a real CA and a real workload key, so the rule under test is the one behind the
//! signature. See `fuzz/README.md`, "Findings".

// Test code: a failed fixture step is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_issuer::attest::{AttestError, Attestor};
use baton_issuer::deny::DenyList;
use baton_issuer::ledger::MemoryLedger;
use baton_issuer::pki::{CertificateAuthority, DEFAULT_CA_TTL, KeyType};
use baton_proto::{SpiffeId, TrustDomain};
use rcgen::KeyPair;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use time::OffsetDateTime;

const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "https://baton.example.org";
const CALLER: &str = "spiffe://example.org/fn/orders";

fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

struct Fixture {
    attestor: Attestor,
    chain: Vec<u8>,
    key: KeyPair,
}

fn fixture() -> Fixture {
    let td = TrustDomain::new("example.org").unwrap();
    let ca = CertificateAuthority::create(&td, DEFAULT_CA_TTL, at(NOW - 3600)).unwrap();
    let key = KeyType::EcP256.generate().unwrap();
    let id: SpiffeId = CALLER.parse().unwrap();
    let cert = ca
        .issue_svid(&id, &key, Duration::from_secs(86_400), at(NOW - 60))
        .unwrap();
    let attestor = Attestor::new(
        vec![ca.cert_der().to_vec()],
        td,
        vec![ISSUER.to_owned()],
        Arc::new(DenyList::new()),
        Arc::new(MemoryLedger::new(100, NOW - 600)),
    )
    .unwrap();
    Fixture {
        attestor,
        chain: cert.der,
        key,
    }
}

impl Fixture {
    fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(&self.chain)]})
    }

    /// A compact JWS over exactly these header and claims bytes (need not be UTF-8),
    /// signed with the workload's key.
    fn sign_bytes(&self, header: &[u8], claims: &[u8]) -> String {
        let mut jws = URL_SAFE_NO_PAD.encode(header);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            self.key.serialized_der(),
            &rng,
        )
        .unwrap();
        let signature = key.sign(&rng, jws.as_bytes()).unwrap();
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        jws
    }
}

fn claims(jti: &str) -> Value {
    json!({"iss": CALLER, "sub": CALLER, "aud": ISSUER, "jti": jti, "iat": NOW, "exp": NOW + 60})
}

/// `{…,"x-fuzz":"\xff"}`: valid JSON but for one byte inside a member nobody reads.
fn with_invalid_utf8_member(json: &Value) -> Vec<u8> {
    let text = serde_json::to_string(json).unwrap();
    [
        text.trim_end_matches('}').as_bytes(),
        b",\"x-fuzz\":\"\xff\"}",
    ]
    .concat()
}

/// Found by an earlier fuzz run (fixed in db00637): serde_json skims the strings of
/// members it skips, so 0xFF there was accepted, where a stricter reader of the same
/// assertion refuses it or reads it differently (RFC 8259 §8.1).
#[tokio::test]
async fn non_utf8_byte_in_an_unknown_assertion_claim_is_malformed() {
    let f = fixture();
    let header = serde_json::to_vec(&f.header()).unwrap();
    let jws = f.sign_bytes(&header, &with_invalid_utf8_member(&claims("jti-1")));
    let err = f.attestor.attest_assertion(&jws, NOW).await.unwrap_err();
    assert!(matches!(err, AttestError::MalformedAssertion(_)), "{err:?}");
    // The refusal spent nothing: the same jti in a well-formed assertion attests.
    let jws = f.sign_bytes(&header, &serde_json::to_vec(&claims("jti-1")).unwrap());
    assert_eq!(
        f.attestor
            .attest_assertion(&jws, NOW)
            .await
            .unwrap()
            .id
            .as_str(),
        CALLER
    );
}

#[tokio::test]
async fn non_utf8_byte_in_an_unknown_assertion_header_member_is_malformed() {
    let f = fixture();
    let header = with_invalid_utf8_member(&f.header());
    let jws = f.sign_bytes(&header, &serde_json::to_vec(&claims("jti-2")).unwrap());
    let err = f.attestor.attest_assertion(&jws, NOW).await.unwrap_err();
    assert!(matches!(err, AttestError::MalformedAssertion(_)), "{err:?}");
}
