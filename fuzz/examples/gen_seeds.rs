//! Writes the seed corpora of the JOSE targets into `fuzz/seeds/<target>/`, signed
//! with the fixture keys, in each target's input framing:
//!
//!     cargo +nightly run --manifest-path fuzz/Cargo.toml --example gen_seeds
//!
//! `cert_chain` and `spiffe_id` seeds are files made by hand and with openssl (see
//! `fuzz/README.md`); the fixture certificates are framed here.

use std::fs;
use std::path::{Path, PathBuf};

use baton_fuzz::*;
use serde_json::{Value, json};

fn dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    fs::write(dir(target).join(name), bytes).unwrap();
}

fn token_claims(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut claims = json!({
        "iss": ISSUER, "sub": CALLER, "client_id": CALLER, "aud": AUDIENCE,
        "iat": FUZZ_NOW, "nbf": FUZZ_NOW, "exp": FUZZ_NOW + 60,
        "jti": "seed-jti-1", "sid": "session-1", "scope": "payments:charge orders:read",
    });
    edit(&mut claims);
    serde_json::to_vec(&claims).unwrap()
}

fn assertion_claims(id: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut claims = json!({
        "iss": id, "sub": id, "aud": ISSUER, "jti": "seed-assertion-1",
        "iat": FUZZ_NOW, "exp": FUZZ_NOW + 60,
    });
    edit(&mut claims);
    serde_json::to_vec(&claims).unwrap()
}

fn main() {
    let sdk = sdk();
    let header_es = token_header("ES256", KID_ES256);
    let header_ed = token_header("EdDSA", KID_EDDSA);
    let valid = token_claims(|_| {});

    // verify_token: raw tokens (selector 0) and structured header + claims.
    let raw_es = sdk.es256.sign(&header_es, &valid);
    let raw_ed = sdk.eddsa.sign(&header_ed, &valid);
    write(
        "verify_token",
        "raw-es256",
        &[&[0u8][..], raw_es.as_bytes()].concat(),
    );
    write(
        "verify_token",
        "raw-eddsa",
        &[&[0u8][..], raw_ed.as_bytes()].concat(),
    );
    write("verify_token", "raw-not-jws", b"\0eyJhbGciOiJub25lIn0.e30.");
    write(
        "verify_token",
        "structured-es256",
        &frame(1, &header_es, &valid),
    );
    write(
        "verify_token",
        "structured-eddsa",
        &frame(0x81, &header_ed, &valid),
    );
    let header_extra = serde_json::to_vec(&json!({
        "alg": "ES256", "typ": "at+jwt", "kid": KID_ES256,
        "x5c": ["MIIB"], "jwk": {"kty": "EC"}, "jku": "https://evil.example",
    }))
    .unwrap();
    write(
        "verify_token",
        "structured-ignored-members",
        &frame(1, &header_extra, &valid),
    );
    let header_crit = serde_json::to_vec(&json!({
        "alg": "ES256", "typ": "application/at+jwt", "kid": KID_ES256, "crit": ["exp"],
    }))
    .unwrap();
    write(
        "verify_token",
        "structured-crit",
        &frame(1, &header_crit, &valid),
    );
    let header_none = br#"{"alg":"none","typ":"at+jwt","kid":"fuzz-es256"}"#;
    write(
        "verify_token",
        "structured-alg-none",
        &frame(1, header_none, &valid),
    );

    // verify_claims: selector (signer) + claims.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("valid", valid.clone()),
        (
            "cnf",
            token_claims(|c| {
                c["cnf"] = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
            }),
        ),
        (
            "no-scope",
            token_claims(|c| {
                c.as_object_mut().unwrap().remove("scope");
            }),
        ),
        ("dup-scope", token_claims(|c| c["scope"] = json!("a b a"))),
        (
            "aud-array",
            token_claims(|c| c["aud"] = json!([AUDIENCE, "x"])),
        ),
        (
            "expired",
            token_claims(|c| {
                c["iat"] = json!(FUZZ_NOW - 400);
                c["exp"] = json!(FUZZ_NOW - 100);
            }),
        ),
        (
            "future",
            token_claims(|c| c["nbf"] = json!(FUZZ_NOW + 1000)),
        ),
        (
            "too-long",
            token_claims(|c| c["exp"] = json!(FUZZ_NOW + 3600)),
        ),
        ("float-exp", token_claims(|c| c["exp"] = json!(1.796e9))),
        (
            "sub-differs",
            token_claims(|c| c["client_id"] = json!(CALLER_ED)),
        ),
        (
            "unknown-member",
            token_claims(|c| c["x-extra"] = json!({"nested": [1, 2, null]})),
        ),
        ("empty-jti", token_claims(|c| c["jti"] = json!(""))),
    ];
    for (name, claims) in &cases {
        write("verify_claims", name, &[&[0u8][..], claims].concat());
    }
    write(
        "verify_claims",
        "valid-eddsa",
        &[&[0x80u8][..], &valid].concat(),
    );
    write(
        "verify_claims",
        "duplicate-member",
        &[
            &[0u8][..],
            br#"{"iss":"https://baton.example.org","iss":"x"}"#,
        ]
        .concat(),
    );

    // client_assertion: raw (0), header + claims (1), claims under the real header (2).
    let issuer = issuer();
    for (selector, name) in [(0u8, "es256"), (0x80, "eddsa")] {
        let (key, chain, id) = issuer.workload(selector);
        let header = assertion_header(key.alg(), &[chain]);
        let claims = assertion_claims(id, |_| {});
        let raw = key.sign(&header, &claims);
        write(
            "client_assertion",
            &format!("raw-{name}"),
            &[&[selector][..], raw.as_bytes()].concat(),
        );
        write(
            "client_assertion",
            &format!("structured-{name}"),
            &frame(selector | 1, &header, &claims),
        );
        write(
            "client_assertion",
            &format!("claims-{name}"),
            &[&[selector | 2][..], &claims].concat(),
        );
    }
    let id = CALLER;
    let variants: Vec<(&str, Vec<u8>)> = vec![
        (
            "nbf-endpoint",
            assertion_claims(id, |c| {
                c["nbf"] = json!(FUZZ_NOW);
                c["aud"] = json!(TOKEN_ENDPOINT);
            }),
        ),
        (
            "aud-array",
            assertion_claims(id, |c| c["aud"] = json!([ISSUER])),
        ),
        (
            "iss-differs",
            assertion_claims(id, |c| c["iss"] = json!(CALLER_ED)),
        ),
        (
            "too-long",
            assertion_claims(id, |c| c["exp"] = json!(FUZZ_NOW + 3600)),
        ),
        (
            "stale",
            assertion_claims(id, |c| {
                c["iat"] = json!(FUZZ_NOW - 7200);
                c["exp"] = json!(FUZZ_NOW + 10);
            }),
        ),
        (
            "extra",
            assertion_claims(id, |c| c["cnf"] = json!({"x": "y"})),
        ),
    ];
    for (name, claims) in &variants {
        write(
            "client_assertion",
            &format!("claims-{name}"),
            &[&[2u8][..], claims].concat(),
        );
    }
    let typed = serde_json::to_vec(&json!({
        "alg": "ES256", "typ": "client-authentication+jwt", "kid": "k",
        "x5c": [base64_std(WORKLOAD_ES256_DER), base64_std(CA_DER)],
    }))
    .unwrap();
    write(
        "client_assertion",
        "structured-typed-with-root",
        &frame(1, &typed, &assertion_claims(id, |_| {})),
    );
    let crit = serde_json::to_vec(&json!({
        "alg": "ES256", "crit": ["b64"], "b64": false, "x5c": [base64_std(WORKLOAD_ES256_DER)],
    }))
    .unwrap();
    write(
        "client_assertion",
        "structured-crit",
        &frame(1, &crit, &assertion_claims(id, |_| {})),
    );

    // cert_chain: the fixture certificates, framed (selector 1: SDK check too).
    let chains: [(&str, Vec<&[u8]>); 6] = [
        ("workload-es256", vec![WORKLOAD_ES256_DER]),
        ("workload-eddsa", vec![WORKLOAD_EDDSA_DER, CA_DER]),
        ("signer-es256", vec![SIGNER_ES256_DER]),
        ("signer-eddsa", vec![SIGNER_EDDSA_DER]),
        ("ca-only", vec![CA_DER]),
        (
            "too-long",
            vec![WORKLOAD_ES256_DER, CA_DER, CA_DER, CA_DER, CA_DER],
        ),
    ];
    for (name, chain) in chains {
        write(
            "cert_chain",
            name,
            &[&[1u8][..], &frame_chain(&chain)].concat(),
        );
    }
    // The valid seeds must reach the success path, or the fuzzer starts blind.
    for token in [&raw_es, &raw_ed] {
        sdk.reset_replay_guard();
        let verified = sdk.verifier.verify_at(token, FUZZ_NOW);
        assert!(verified.is_ok(), "valid seed token refused: {verified:?}");
    }
    for selector in [0u8, 0x80] {
        let (key, chain, id) = issuer.workload(selector);
        let jws = key.sign(
            &assertion_header(key.alg(), &[chain]),
            &assertion_claims(id, |c| c["jti"] = json!("self-check")),
        );
        let attested = issuer
            .runtime
            .block_on(issuer.attestor.attest_assertion(&jws, FUZZ_NOW));
        assert!(
            attested.is_ok(),
            "valid seed assertion refused: {attested:?}"
        );
        let mtls = issuer.attestor.attest_mtls(&[chain], FUZZ_NOW);
        assert!(mtls.is_ok(), "valid seed chain refused: {mtls:?}");
    }
    println!("seeds written; valid seeds verified");
}

fn base64_std(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}
