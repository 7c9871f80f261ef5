//! Both halves of the SDK together against the real `baton serve` (SPEC §8, §9): a
//! `Verifier` fetching its keys from the issuer accepts a `TokenClient` token once and
//! refuses it for another audience or a second time; the `payments` and `orders`
//! examples run end to end through the axum extractor and the reqwest helper; and
//! `baton token mint | verify | inspect` do the same from the command line.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use baton_sdk::{Auth, SpiffeId, TokenClient, Verifier, VerifyError};
use baton_tests::{Sandbox, Server, baton_bin, https_client};
use serde_json::Value;

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge"]
"#;

struct World {
    sb: Sandbox,
    server: Server,
    bundle: String,
    issuer: String,
}

impl World {
    fn start() -> World {
        let sb = Sandbox::with_workloads(&[(ORDERS, "orders", "ec-p256")], POLICY);
        let server = Server::start(&sb, &["--policy", "policy.toml"]);
        let bundle = sb.bundle();
        let issuer = server.issuer.clone();
        World {
            sb,
            server,
            bundle,
            issuer,
        }
    }

    fn path(&self, rel: &str) -> String {
        self.sb.path().join(rel).display().to_string()
    }

    fn client(&self, auth: Auth) -> TokenClient {
        TokenClient::builder(
            self.issuer.as_str(),
            self.bundle.as_bytes(),
            &fs::read(self.sb.path().join("orders/svid.pem")).unwrap(),
            &fs::read(self.sb.path().join("orders/svid.key")).unwrap(),
        )
        .auth(auth)
        .build()
        .unwrap()
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[tokio::test]
async fn verifier_fetching_from_the_issuer_accepts_a_token_once_for_its_own_audience() {
    let w = World::start();
    let payments = Verifier::builder(w.issuer.as_str(), id(PAYMENTS), w.bundle.as_bytes())
        .unwrap()
        .build_fetching()
        .await
        .unwrap();
    let other = Verifier::builder(
        w.issuer.as_str(),
        id("spiffe://example.org/fn/other"),
        w.bundle.as_bytes(),
    )
    .unwrap()
    .build_fetching()
    .await
    .unwrap();

    for auth in [Auth::Mtls, Auth::Assertion] {
        let client = w.client(auth);
        let token = client
            .token_for_scope(&id(PAYMENTS), "payments:charge")
            .await
            .unwrap();
        assert!(matches!(
            other.verify(&token),
            Err(VerifyError::WrongAudience)
        ));
        let caller = payments.verify(&token).unwrap();
        assert_eq!(caller.id.as_str(), ORDERS);
        assert_eq!(caller.scopes, vec!["payments:charge".to_owned()]);
        assert_eq!(caller.cnf_x5t_s256.is_some(), matches!(auth, Auth::Mtls));
        assert!(matches!(
            payments.verify(&token),
            Err(VerifyError::Replayed)
        ));
    }

    // A verifier trusting another trust domain's bundle accepts none of these keys.
    let stranger = Sandbox::new();
    stranger
        .baton(&["init", "--trust-domain", "example.org"])
        .ok();
    let foreign_bundle = fs::read(stranger.data_dir().join("bundle.pem")).unwrap();
    let built = Verifier::builder(w.issuer.as_str(), id(PAYMENTS), &foreign_bundle)
        .unwrap()
        .http_client(https_client(&w.bundle, None))
        .build_fetching()
        .await;
    assert!(built.is_err(), "keys certified by another CA were trusted");
}

/// Runs a built example binary; panics with its output if it does not start.
fn example(name: &str) -> PathBuf {
    let bin = baton_bin().with_file_name("examples").join(name);
    assert!(
        bin.is_file(),
        "{} not built: run `cargo build -p baton-sdk --examples --all-features` (infra/dev/test.sh does)",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn payments_and_orders_examples_run_end_to_end() {
    let w = World::start();
    let mut payments = Command::new(example("payments"))
        .args([&w.issuer, &w.path("baton-data/bundle.pem"), "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(payments.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first.rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");

    let orders = tokio::task::spawn_blocking({
        let args = [
            w.issuer.clone(),
            w.path("baton-data/bundle.pem"),
            w.path("orders/svid.pem"),
            w.path("orders/svid.key"),
            url,
        ];
        move || Command::new(example("orders")).args(args).output().unwrap()
    })
    .await
    .unwrap();
    let _ = payments.kill();
    let _ = payments.wait();
    let out = String::from_utf8_lossy(&orders.stdout);
    assert!(
        orders.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&orders.stderr)
    );
    assert_eq!(out.matches("charge: 200 OK").count(), 2, "{out}");
    assert!(out.contains(ORDERS), "{out}");
    assert!(out.contains("same token, first use: 200 OK"), "{out}");
    assert!(
        out.contains("same token, second use: 401 Unauthorized"),
        "{out}"
    );
    assert!(out.contains("error_description=\"replayed\""), "{out}");
}

#[tokio::test]
async fn token_cli_mints_verifies_and_inspects() {
    let w = World::start();
    let run = |args: &[&str]| {
        let out = Command::new(baton_bin())
            .args(args)
            .current_dir(w.sb.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (bundle, cert, key) = (
        w.path("baton-data/bundle.pem"),
        w.path("orders/svid.pem"),
        w.path("orders/svid.key"),
    );
    let mut tokens = Vec::new();
    for extra in [&[][..], &["--assertion"][..]] {
        let mut args = vec![
            "token",
            "mint",
            "--issuer",
            &w.issuer,
            "--bundle",
            &bundle,
            "--cert",
            &cert,
            "--key",
            &key,
            "--audience",
            PAYMENTS,
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(0), "{err}");
        tokens.push(out.trim().to_owned());
    }

    // Keys fetched from the issuer.
    let (code, out, err) = run(&[
        "token",
        "verify",
        "--issuer",
        &w.issuer,
        "--bundle",
        &bundle,
        "--audience",
        PAYMENTS,
        &tokens[0],
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["caller"], ORDERS);
    assert!(v["cnf_x5t_s256"].is_string());

    // Keys from a JWKS file; the expected issuer still comes from --issuer.
    let jwks = https_client(&w.bundle, None)
        .get(w.server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    fs::write(w.sb.path().join("jwks.json"), jwks).unwrap();
    let jwks_path = w.path("jwks.json");
    let (code, out, err) = run(&[
        "token",
        "verify",
        "--issuer",
        &w.issuer,
        "--jwks",
        &jwks_path,
        "--bundle",
        &bundle,
        "--audience",
        PAYMENTS,
        &tokens[1],
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["cnf_x5t_s256"].is_null());

    let (code, _, err) = run(&[
        "token",
        "verify",
        "--issuer",
        &w.issuer,
        "--jwks",
        &jwks_path,
        "--bundle",
        &bundle,
        "--audience",
        ORDERS,
        &tokens[1],
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("wrong_audience"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (code, _, err) = run(&[
        "token",
        "verify",
        "--issuer",
        "https://evil.example",
        "--jwks",
        &jwks_path,
        "--bundle",
        &bundle,
        "--audience",
        PAYMENTS,
        &tokens[1],
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("wrong_issuer"), "{err}");

    let (code, out, err) = run(&["token", "inspect", "--json", &tokens[0]]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["claims"]["aud"], PAYMENTS);
    let (code, _, err) = run(&["token", "inspect", &tokens[0]]);
    assert_eq!(code, Some(0));
    assert!(err.contains("NOT VERIFIED"), "{err}");
}
