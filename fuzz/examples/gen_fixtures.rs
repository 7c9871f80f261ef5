//! Writes the fixture PKI of the fuzz targets into `fuzz/fixtures/` with the issuer's
//! own `pki` module: a trust-domain CA, two token signers and two workload SVIDs (ES256
//! and Ed25519 each). Run once; the files are committed so every run, and every crash
//! input, sees the same certificates:
//!
//!     cargo +nightly run --manifest-path fuzz/Cargo.toml --example gen_fixtures
//!
//! The CA key goes to `fuzz/target/fixture-ca/` (not committed), for making further
//! seed certificates with openssl.

use std::fs;
use std::path::Path;
use std::time::Duration;

use baton_issuer::pki::{CertificateAuthority, DEFAULT_CA_TTL, KeyType};
use baton_proto::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

// The same values as in src/lib.rs, which compiles these files in and so cannot be
// a dependency of the program that makes them.
const FUZZ_NOW: i64 = 1_796_000_000;
const FIXTURE_START: i64 = 1_793_491_200;
const TD: &str = "example.org";
const CALLER: &str = "spiffe://example.org/fn/orders";
const CALLER_ED: &str = "spiffe://example.org/fn/billing";

fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let scratch = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixture-ca");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&scratch).unwrap();
    let ca = CertificateAuthority::create(
        &TrustDomain::new(TD).unwrap(),
        DEFAULT_CA_TTL,
        at(FIXTURE_START),
    )
    .unwrap();
    fs::write(dir.join("ca.der"), ca.cert_der()).unwrap();
    fs::write(scratch.join("ca.pem"), ca.cert_pem()).unwrap();
    fs::write(
        scratch.join("ca.key.pem"),
        baton_issuer::pki::pem_encode("PRIVATE KEY", ca.key_pkcs8()),
    )
    .unwrap();

    let five_years = Duration::from_secs(5 * 365 * 86_400);
    for (name, key_type) in [("es256", KeyType::EcP256), ("eddsa", KeyType::Ed25519)] {
        let key = key_type.generate().unwrap();
        let cert = ca
            .issue_token_signer(&key, five_years, at(FIXTURE_START))
            .unwrap();
        fs::write(dir.join(format!("signer-{name}.der")), &cert.der).unwrap();
        fs::write(dir.join(format!("signer-{name}.pk8")), key.serialized_der()).unwrap();
    }
    let week = Duration::from_secs(7 * 86_400);
    for (name, key_type, id) in [
        ("es256", KeyType::EcP256, CALLER),
        ("eddsa", KeyType::Ed25519, CALLER_ED),
    ] {
        let key = key_type.generate().unwrap();
        let id: SpiffeId = id.parse().unwrap();
        let cert = ca
            .issue_svid(&id, &key, week, at(FUZZ_NOW - 86_400))
            .unwrap();
        fs::write(dir.join(format!("workload-{name}.der")), &cert.der).unwrap();
        fs::write(
            dir.join(format!("workload-{name}.pk8")),
            key.serialized_der(),
        )
        .unwrap();
    }
    println!("fixtures written to {}", dir.display());
}
