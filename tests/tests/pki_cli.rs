//! End to end through the real `baton` binary: `init` and `enroll` (SPEC §2, §7, §9),
//! checked by independent tools — openssl and rustls-webpki — not by Baton's own code.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use baton_tests::Sandbox;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

fn initialized() -> Sandbox {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    sb
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn openssl_verifies(sb: &Sandbox, out: &str) {
    let run = sb.openssl(&[
        "verify",
        "-CAfile",
        &format!("{out}/bundle.pem"),
        &format!("{out}/svid.pem"),
    ]);
    assert_eq!(
        run.code,
        Some(0),
        "openssl verify: {}{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains(": OK"), "{}", run.stdout);
}

fn openssl_text(sb: &Sandbox, cert: &str) -> String {
    sb.openssl(&["x509", "-in", cert, "-noout", "-text"])
        .ok()
        .to_owned()
}

#[test]
fn enroll_with_openssl_p256_csr_yields_a_certificate_openssl_verifies() {
    let sb = initialized();
    sb.openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "w.key",
        "-out",
        "w.csr",
        "-subj",
        "/CN=w",
    ])
    .ok();
    sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/orders",
        "--csr",
        "w.csr",
        "--out",
        "out",
    ])
    .ok();
    openssl_verifies(&sb, "out");
    assert!(
        !sb.path().join("out/svid.key").exists(),
        "with --csr no key is written"
    );

    // The certificate certifies the CSR's key.
    let cert_key = sb.openssl(&["x509", "-in", "out/svid.pem", "-noout", "-pubkey"]);
    let csr_key = sb.openssl(&["pkey", "-in", "w.key", "-pubout"]);
    assert_eq!(cert_key.ok(), csr_key.ok());
}

#[test]
fn enroll_with_ed25519_csr_yields_a_certificate_openssl_verifies() {
    let sb = initialized();
    sb.openssl(&["genpkey", "-algorithm", "ed25519", "-out", "e.key"])
        .ok();
    sb.openssl(&[
        "req", "-new", "-key", "e.key", "-out", "e.csr", "-subj", "/CN=e",
    ])
    .ok();
    sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/ed",
        "--csr",
        "e.csr",
        "--out",
        "out",
    ])
    .ok();
    openssl_verifies(&sb, "out");
    assert!(openssl_text(&sb, "out/svid.pem").contains("ED25519"));
}

#[test]
fn hostile_csr_asking_for_ca_and_reserved_id_gets_only_its_bound_id() {
    let sb = initialized();
    sb.openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "h.key",
        "-out",
        "h.csr",
        "-subj",
        "/CN=evil",
        "-addext",
        "subjectAltName=URI:spiffe://example.org/baton/token-signer,DNS:evil.example",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])
    .ok();
    sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/a",
        "--csr",
        "h.csr",
        "--out",
        "out",
    ])
    .ok();
    openssl_verifies(&sb, "out");
    let text = openssl_text(&sb, "out/svid.pem");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("URI:spiffe://example.org/fn/a"), "{text}");
    for absent in ["token-signer", "evil", "Certificate Sign", "CA:TRUE"] {
        assert!(
            !text.contains(absent),
            "certificate carries {absent}: {text}"
        );
    }
}

#[test]
fn enroll_without_csr_writes_a_private_key_the_certificate_matches() {
    let sb = initialized();
    let out = sb
        .baton(&[
            "enroll",
            "--id",
            "spiffe://example.org/fn/gen",
            "--out",
            "out",
            "--json",
        ])
        .ok()
        .to_owned();
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["id"], "spiffe://example.org/fn/gen");
    openssl_verifies(&sb, "out");

    let key = sb.path().join("out/svid.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cert_key = sb.openssl(&["x509", "-in", "out/svid.pem", "-noout", "-pubkey"]);
    let own_key = sb.openssl(&["pkey", "-in", "out/svid.key", "-pubout"]);
    assert_eq!(cert_key.ok(), own_key.ok());

    // Default lifetime is 24 h (plus one minute of back-dating for clock skew).
    let pem = fs::read_to_string(sb.path().join("out/svid.pem")).unwrap();
    let der = pem_der(&pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let v = cert.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        24 * 3600 + 60
    );
    assert_eq!(
        summary["expires_at"].as_i64().unwrap(),
        v.not_after.timestamp()
    );
}

#[test]
fn svid_passes_a_real_path_validator_for_client_auth() {
    let sb = initialized();
    sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/p",
        "--out",
        "out",
        "--key-type",
        "ed25519",
    ])
    .ok();
    let bundle = pem_der(&fs::read_to_string(sb.path().join("out/bundle.pem")).unwrap());
    let leaf = pem_der(&fs::read_to_string(sb.path().join("out/svid.pem")).unwrap());
    let bundle = CertificateDer::from(bundle);
    let anchors = [anchor_from_trusted_cert(&bundle).unwrap()];
    let leaf = CertificateDer::from(leaf);
    let ee = EndEntityCert::try_from(&leaf).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        KeyUsage::client_auth(),
        None,
        None,
    )
    .unwrap();

    // A CA from another `init` does not anchor it.
    let other = initialized();
    let foreign = pem_der(&fs::read_to_string(other.data_dir().join("bundle.pem")).unwrap());
    let foreign = CertificateDer::from(foreign);
    let anchors = [anchor_from_trusted_cert(&foreign).unwrap()];
    assert!(
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::now(),
            KeyUsage::client_auth(),
            None,
            None,
        )
        .is_err()
    );
}

#[test]
fn invalid_spiffe_ids_are_each_refused_with_a_clear_message_and_nothing_written() {
    let sb = initialized();
    let cases = [
        ("spiffe://Example.org/fn", "lower case"),
        ("spiffe://example.org/fn/../admin", "\".\" or \"..\""),
        ("spiffe://example.org/fn//x", "empty segment"),
        ("spiffe://example.org/fn/", "empty segment"),
        ("https://example.org/fn", "must start with \"spiffe://\""),
        ("spiffe://example.org/fn?x=1", "query"),
        ("spiffe://example.org/fn#f", "fragment"),
        ("spiffe://example.org:8443/fn", "port"),
        ("spiffe://example.org", "no path"),
        ("spiffe://other.org/fn", "not in trust domain example.org"),
        ("spiffe://example.org/baton/token-signer", "reserved"),
    ];
    for (id, phrase) in cases {
        for extra in [&["--out", "out"][..], &["--join-token"][..]] {
            let mut args = vec!["enroll", "--id", id];
            args.extend_from_slice(extra);
            let run = sb.baton(&args);
            assert_ne!(run.code, Some(0), "{id} was accepted");
            assert!(run.stderr.contains(phrase), "{id}: {:?}", run.stderr);
            assert_eq!(
                run.stderr.trim_end().lines().count(),
                1,
                "{id}: {:?}",
                run.stderr
            );
            assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        }
    }
    assert!(!sb.path().join("out").exists());
    assert!(!sb.data_dir().join("join-tokens").exists());
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// DER prefix of an unencrypted PKCS#8 P-256 private key (RFC 5958 / SEC 1).
const PKCS8_P256_PREFIX: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01,
];

fn has_jwk_private_member(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(map) => {
            map.contains_key("d") || map.values().any(has_jwk_private_member)
        }
        serde_json::Value::Array(items) => items.iter().any(has_jwk_private_member),
        _ => false,
    }
}

fn decoded_strings(v: &serde_json::Value, out: &mut Vec<Vec<u8>>) {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    match v {
        serde_json::Value::String(s) => {
            out.extend(STANDARD.decode(s).ok());
            out.extend(URL_SAFE_NO_PAD.decode(s).ok());
        }
        serde_json::Value::Object(map) => map.values().for_each(|v| decoded_strings(v, out)),
        serde_json::Value::Array(items) => items.iter().for_each(|v| decoded_strings(v, out)),
        _ => {}
    }
}

#[test]
fn no_file_in_the_data_dir_holds_a_plaintext_private_key() {
    let sb = initialized();
    sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/a",
        "--out",
        "out",
    ])
    .ok();
    sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/b",
        "--join-token",
    ])
    .ok();

    // The check itself must be able to fail: the workload key written outside is caught.
    let workload_key = fs::read(sb.path().join("out/svid.key")).unwrap();
    assert!(String::from_utf8_lossy(&workload_key).contains("PRIVATE KEY"));
    assert!(pem_der(&String::from_utf8_lossy(&workload_key)).starts_with(PKCS8_P256_PREFIX));

    let all = files(&sb.data_dir());
    assert!(all.len() >= 5, "{all:?}");
    for path in all {
        let bytes = fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a PEM private key",
            path.display()
        );
        assert!(
            !bytes
                .windows(PKCS8_P256_PREFIX.len())
                .any(|w| w == PKCS8_P256_PREFIX),
            "{} holds a DER private key",
            path.display()
        );
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            assert!(
                !has_jwk_private_member(&json),
                "{} holds a JWK `d`",
                path.display()
            );
            let mut decoded = Vec::new();
            decoded_strings(&json, &mut decoded);
            for d in decoded {
                assert!(
                    !d.starts_with(PKCS8_P256_PREFIX),
                    "{} encodes a key",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn data_dir_and_its_secrets_are_owner_only() {
    let sb = initialized();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sb.data_dir()), 0o700);
    assert_eq!(mode(&sb.data_dir().join("kek")), 0o600);
    assert_eq!(mode(&sb.data_dir().join("ca.key.sealed")), 0o600);
}

#[test]
fn external_kek_keeps_the_key_out_of_the_data_dir_and_a_wrong_kek_is_named() {
    let sb = Sandbox::new();
    let kek = sb.path().join("kek.b64");
    let b64 = sb.openssl(&["rand", "-base64", "32"]).ok().to_owned();
    fs::write(&kek, b64).unwrap();
    fs::set_permissions(&kek, fs::Permissions::from_mode(0o600)).unwrap();
    let env = [("BATON_KEK_FILE", kek.as_path())];
    sb.baton_with_env(&["init", "--trust-domain", "example.org"], &env)
        .ok();
    assert!(!sb.data_dir().join("kek").exists());

    sb.baton_with_env(
        &["enroll", "--id", "spiffe://example.org/fn/a", "--out", "a"],
        &env,
    )
    .ok();

    let run = sb.baton(&["enroll", "--id", "spiffe://example.org/fn/a", "--out", "b"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("BATON_KEK_FILE"), "{}", run.stderr);

    let wrong = sb.path().join("wrong");
    fs::write(&wrong, [9u8; 32]).unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let run = sb.baton_with_env(
        &["enroll", "--id", "spiffe://example.org/fn/a", "--out", "c"],
        &[("BATON_KEK_FILE", wrong.as_path())],
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("sealed under key-encryption key"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"));
    assert!(!sb.path().join("c").exists());

    fs::set_permissions(&kek, fs::Permissions::from_mode(0o644)).unwrap();
    let run = sb.baton_with_env(
        &["enroll", "--id", "spiffe://example.org/fn/a", "--out", "d"],
        &env,
    );
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
}

#[test]
fn corrupt_data_dir_is_a_clear_error_not_a_panic() {
    let sb = initialized();
    let sealed = sb.data_dir().join("ca.key.sealed");
    let mut bytes = fs::read(&sealed).unwrap();
    let at = bytes.len() / 2;
    bytes.truncate(at);
    fs::write(&sealed, bytes).unwrap();
    let run = sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/a",
        "--out",
        "out",
    ]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("corrupt"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"));

    let run = Sandbox::new().baton(&["enroll", "--id", "spiffe://example.org/fn/a", "--out", "o"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("baton init"), "{}", run.stderr);
}

#[test]
fn init_refuses_to_overwrite_an_existing_trust_domain() {
    let sb = initialized();
    let before = fs::read(sb.data_dir().join("bundle.pem")).unwrap();
    let run = sb.baton(&["init", "--trust-domain", "example.org"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert_eq!(fs::read(sb.data_dir().join("bundle.pem")).unwrap(), before);
}

#[test]
fn out_inside_the_data_dir_is_refused_before_anything_is_written() {
    let sb = initialized();
    let inside = sb.data_dir().join("workload");
    let run = sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/a",
        "--out",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("inside the data directory"),
        "{}",
        run.stderr
    );
    assert!(!inside.exists());
}

#[test]
fn join_token_is_printed_once_and_stored_only_as_a_hash() {
    let sb = initialized();
    let out = sb
        .baton(&[
            "enroll",
            "--id",
            "spiffe://example.org/fn/j",
            "--join-token",
            "--ttl",
            "5m",
            "--json",
        ])
        .ok()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = v["join_token"].as_str().unwrap();
    assert!(
        token.starts_with("baton-jt-") && token.len() > 40,
        "{token}"
    );
    assert_eq!(v["id"], "spiffe://example.org/fn/j");
    for path in files(&sb.data_dir()) {
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
        assert!(
            !text.contains(&token["baton-jt-".len()..]),
            "{} holds the token",
            path.display()
        );
    }
    let run = sb.baton(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/j",
        "--join-token",
        "--ttl",
        "2days",
    ]);
    assert!(run.stderr.contains("24h"), "{}", run.stderr);
}

#[test]
fn every_command_has_help() {
    let sb = Sandbox::new();
    for args in [&["--help"][..], &["init", "--help"], &["enroll", "--help"]] {
        let run = sb.baton(args);
        assert_eq!(run.code, Some(0));
        assert!(run.stdout.contains("Usage: baton"), "{}", run.stdout);
    }
    let run = sb.baton(&["frobnicate"]);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_replica_data_directory_is_made_once_from_its_seed_and_issues_under_the_same_ca() {
    let sb = initialized();
    let replica = sb.path().join("replica");
    // `baton --data-dir replica <args>`, the dev KEK found through the seed.
    let in_replica = |args: &[&str]| {
        baton_tests::Run::from(
            std::process::Command::new(baton_tests::baton_bin())
                .arg("--data-dir")
                .arg(&replica)
                .args(args)
                .current_dir(sb.path())
                .env_remove("BATON_KEK_FILE")
                .env_remove("BATON_DATA_DIR")
                .output()
                .unwrap(),
        )
    };
    let json = |args: &[&str]| {
        let mut all = vec!["init", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str::<serde_json::Value>(in_replica(&all).ok()).unwrap()
    };
    let seed = sb.data_dir();
    let seed = seed.to_str().unwrap();
    let first = json(&["--from", seed]);
    assert_eq!(first["created"], true);
    assert_eq!(first["from"], seed);
    assert_eq!(first["trust_domain"], "example.org");
    // Again, as a container does at every start: nothing to do, nothing changed.
    let bundle = fs::read(replica.join("bundle.pem")).unwrap();
    assert_eq!(json(&["--from", seed])["created"], false);
    assert_eq!(
        json(&["--trust-domain", "example.org", "--if-missing"])["created"],
        false
    );
    assert_eq!(fs::read(replica.join("bundle.pem")).unwrap(), bundle);
    assert_eq!(bundle, fs::read(sb.data_dir().join("bundle.pem")).unwrap());
    // --if-missing is no licence to open another trust domain's directory.
    let other = in_replica(&["init", "--trust-domain", "example.com", "--if-missing"]);
    assert_eq!(other.code, Some(1));
    assert!(
        other
            .stderr
            .contains("already holds trust domain example.org"),
        "{}",
        other.stderr
    );

    // A certificate the replica issues chains to the seed's bundle, as openssl sees it.
    in_replica(&[
        "enroll",
        "--id",
        "spiffe://example.org/fn/replicated",
        "--out",
        "fn",
    ])
    .ok();
    let run = sb.openssl(&["verify", "-CAfile", "baton-data/bundle.pem", "fn/svid.pem"]);
    assert!(run.stdout.contains(": OK"), "{}{}", run.stdout, run.stderr);
}
