//! Smoke test of the HTTP floor (`baton-floor`, issue 9): started with certificates
//! from a real `baton init`/`baton enroll` sandbox, it serves the load generator's
//! token (assertion and mTLS) and introspect modes for about a second each with
//! successes and no errors, and it refuses what it claims to check: an assertion
//! whose signature is wrong, a token request with neither assertion nor client
//! certificate, an introspection without one. No timing is asserted: the machine is
//! shared and noisy.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use baton_tests::{Sandbox, https_client, pem_blocks, sign_jws};
use serde_json::{Value, json};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const RUN: &[&str] = &["--concurrency", "2", "--duration", "1", "--quiet"];
const ISSUER_ID: &str = "https://floor.example.test";

/// A `baton-floor` child process on a loopback port, killed on drop.
struct Floor {
    child: Child,
    addr: String,
}

impl Floor {
    fn start(sb: &Sandbox) -> Floor {
        let file = |rel: &str| sb.path().join(rel);
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton-floor"))
            .arg("--bundle-out")
            .arg(file("floor.pem"))
            .arg("--caller-cert")
            .arg(file("orders/svid.pem"))
            .arg("--client-bundle")
            .arg(file("baton-data/bundle.pem"))
            .args(["--issuer-id", ISSUER_ID])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            let addr = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| Some(v.get("https_addr")?.as_str()?.to_owned()));
            if let Some(addr) = addr {
                return Floor { child, addr };
            }
            seen.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("baton-floor did not start listening:\n{}", seen.join("\n"));
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `baton-load <args> <RUN>` and returns its JSON report, after checking that
/// requests succeeded and none failed.
fn load(args: &[&str]) -> Value {
    let args = [args, RUN].concat();
    let report = baton_tests::load_report(env!("CARGO_BIN_EXE_baton-load"), &args);
    assert!(
        report["ok"].as_u64().unwrap() > 0,
        "nothing succeeded: {report}"
    );
    assert_eq!(report["errors"], 0, "errors: {report}");
    report
}

/// A client assertion as baton-load signs it: orders' chain in `x5c`, its key.
fn assertion(sb: &Sandbox) -> String {
    let x5c: Vec<String> = pem_blocks(&sb.read("orders/svid.pem"))
        .iter()
        .map(|der| STANDARD.encode(der))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sign_jws(
        &json!({"alg": "ES256", "typ": "JWT", "x5c": x5c}),
        &json!({"iss": ORDERS, "sub": ORDERS, "aud": ISSUER_ID, "iat": now, "exp": now + 60,
                "jti": format!("smoke-{now}")}),
        &sb.read("orders/svid.key"),
    )
}

/// `jws` with one character of its signature changed (mid-signature, so the decoded
/// bytes differ and the base64url stays well-formed).
fn flip_signature(jws: &str) -> String {
    let mut bytes = jws.as_bytes().to_vec();
    let i = jws.rfind('.').unwrap() + 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn token_form(assertion: Option<&str>) -> String {
    let mut form =
        "grant_type=client_credentials&audience=spiffe%3A%2F%2Fexample.org%2Ffn%2Fpayments"
            .to_owned();
    if let Some(a) = assertion {
        form.push_str("&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=");
        form.push_str(a);
    }
    form
}

async fn post(client: &reqwest::Client, url: &str, form: String) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn floor_serves_every_load_mode_without_errors() {
    let sb = Sandbox::with_workloads(
        &[
            (ORDERS, "orders", "ec-p256"),
            (PAYMENTS, "payments", "ed25519"),
        ],
        "",
    );
    let floor = Floor::start(&sb);
    let base = format!("https://{}", floor.addr);
    let file = |rel: &str| path(&sb.path().join(rel));
    let bundle = file("floor.pem");
    let common = ["--issuer", &base, "--bundle", &bundle];
    let orders = [
        "--cert",
        &file("orders/svid.pem"),
        "--key",
        &file("orders/svid.key"),
    ];
    let token = |mode: &str| {
        // No --issuer-id: the assertion mode discovers it from the floor's metadata.
        load(
            &[
                &["token"][..],
                &common[..],
                &orders[..],
                &["--audience", PAYMENTS, "--mode", mode, "--warmup", "0.2"],
            ]
            .concat(),
        )
    };
    assert_eq!(token("assertion")["mode"], "token-assertion");
    let mtls = token("mtls");
    assert_eq!(mtls["connections_opened"], 2, "one per worker: {mtls}");

    // The audience (payments, an Ed25519 workload) introspects; orders mints.
    let introspect = load(
        &[
            &["introspect"][..],
            &common[..],
            &[
                "--cert",
                &file("payments/svid.pem"),
                "--key",
                &file("payments/svid.key"),
                "--caller-cert",
                &file("orders/svid.pem"),
                "--caller-key",
                &file("orders/svid.key"),
                "--tokens",
                "1500",
                "--warmup",
                "0",
            ],
        ]
        .concat(),
    );
    assert_eq!(introspect["mode"], "introspect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_refuses_bad_signatures_and_unauthenticated_requests() {
    let sb = Sandbox::with_workloads(
        &[
            (ORDERS, "orders", "ec-p256"),
            (PAYMENTS, "payments", "ed25519"),
        ],
        "",
    );
    let floor = Floor::start(&sb);
    let floor_bundle = sb.read("floor.pem");
    let anonymous = https_client(&floor_bundle, None);
    let (orders_pem, orders_key) = (sb.read("orders/svid.pem"), sb.read("orders/svid.key"));
    let orders = https_client(&floor_bundle, Some((&orders_pem, &orders_key)));
    let token_url = floor.url("/v1/token");

    // Discovery names the configured issuer.
    let metadata: Value = anonymous
        .get(floor.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], ISSUER_ID);

    // The control: a good assertion is accepted, on a connection with no certificate.
    let good = assertion(&sb);
    let (status, body) = post(&anonymous, &token_url, token_form(Some(&good))).await;
    assert_eq!(status, 200, "{body}");
    let minted = body["access_token"].as_str().unwrap().to_owned();

    // One character of the signature changed: refused, so the floor really verifies.
    let (status, body) = post(
        &anonymous,
        &token_url,
        token_form(Some(&flip_signature(&good))),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("invalid_client")),
        "{body}"
    );

    // Neither an assertion nor a client certificate: refused.
    let (status, body) = post(&anonymous, &token_url, token_form(None)).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("invalid_client")),
        "{body}"
    );

    // Over mTLS, a batch: count tokens, bound to the certificate.
    let (status, body) = post(&orders, &token_url, format!("{}&count=3", token_form(None))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_tokens"].as_array().unwrap().len(), 3);

    // Introspection: a certificate is required; its own token is active with its
    // claims, a tampered one inactive.
    let introspect_url = floor.url("/v1/introspect");
    let (status, _) = post(&anonymous, &introspect_url, format!("token={minted}")).await;
    assert_eq!(status, 401);
    let (status, body) = post(&orders, &introspect_url, format!("token={minted}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(
        (&body["iss"], &body["sub"], &body["aud"]),
        (&json!(ISSUER_ID), &json!(ORDERS), &json!(PAYMENTS))
    );
    let (_, body) = post(
        &orders,
        &introspect_url,
        format!("token={}", flip_signature(&minted)),
    )
    .await;
    assert_eq!(body, json!({"active": false}));
}
