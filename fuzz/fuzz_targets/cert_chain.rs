//! The certificate path, on arbitrary DER chains (leaf first, framed by
//! `baton_fuzz::der_chain`: `len (u16 BE) ‖ der`, repeated):
//! - the issuer's mTLS attestation (`Attestor::attest_mtls`): chain length, the path
//!   to the bundle (rustls-webpki), validity, end-entity with `digitalSignature`,
//!   exactly one URI SAN that is a non-reserved SPIFFE ID of the trust domain, deny
//!   list, the leaf key;
//! - the SDK's token-signer check (`VerifierBuilder::jwks`), with the chain as a JWK's
//!   `x5c` and the JWK's key taken from the leaf, so a matching key is not the only
//!   thing that stops it: chain, reserved token-signer ID, key usage;
//! - the issuer's PEM bundle reader (`pki::pem_certificates`) and CSR key reader
//!   (`pki::csr_public_key`) on the raw input.
//!
//! Selector byte `s` first: `s & 1` runs the SDK check too (it builds a verifier).
#![no_main]

use baton_fuzz::{AUDIENCE, FUZZ_NOW, ISSUER, TD, bundle_pem, der_chain, issuer, jwk};
use baton_proto::TrustDomain;
use baton_sdk::Verifier;
use libfuzzer_sys::fuzz_target;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::{FromDer, X509Certificate};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let chain = der_chain(rest);
    let issuer = issuer();
    if let Ok(attested) = issuer.attestor.attest_mtls(&chain, FUZZ_NOW) {
        let td = TrustDomain::new(TD).expect("TD");
        assert!(attested.id.is_member_of(&td), "attested {}", attested.id);
        assert!(!attested.id.is_reserved(), "attested {}", attested.id);
        assert!(!issuer.deny.contains(&attested.id));
    }
    if selector & 1 == 1 {
        signer_chain(&chain);
    }
    let _ = baton_issuer::pki::pem_certificates(rest);
    let _ = baton_issuer::pki::csr_public_key(rest);
});

fn signer_chain(chain: &[&[u8]]) {
    let Some(leaf) = chain.first() else {
        return;
    };
    let (alg, key) = match X509Certificate::from_der(leaf) {
        Ok((_, cert)) => {
            let spki = cert.public_key();
            let alg = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
                "ES256"
            } else if spki.algorithm.algorithm == OID_SIG_ED25519 {
                "EdDSA"
            } else {
                "ES256"
            };
            (alg, spki.subject_public_key.data.to_vec())
        }
        Err(_) => ("ES256", vec![4; 65]),
    };
    let jwks = serde_json::to_vec(&serde_json::json!({
        "keys": [jwk(alg, &key, "fuzz-chain", chain)]
    }))
    .expect("JSON");
    let audience = AUDIENCE.parse().expect("audience");
    let builder = Verifier::builder(ISSUER, audience, bundle_pem().as_bytes()).expect("bundle");
    let _ = builder.jwks(&jwks);
}
