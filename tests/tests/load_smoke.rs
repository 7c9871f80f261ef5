//! Smoke test of the load generator (`baton-load`, issue 9): each mode runs for about a
//! second at small concurrency against a real `baton serve` (the peer mode against a
//! stand-in OAuth 2.0 server on plain HTTP that checks every RFC 7523 assertion), and
//! prints one JSON report with successes and no errors. No timing is asserted: the
//! machine is shared and noisy.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_tests::{Sandbox, Server};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
"#;
const RUN: &[&str] = &["--concurrency", "2", "--duration", "1", "--quiet"];
/// A fixed supply, smaller than a second's worth: no warm-up (it could spend them all),
/// and the run stops when they are spent.
const NO_WARMUP: &[&str] = &["--warmup", "0"];
const WARMUP: &[&str] = &["--warmup", "0.2"];

/// Runs `baton-load <args> <RUN>` and returns its JSON report, after checking the
/// fields every mode prints and that every request in the window succeeded.
fn load(args: &[&str]) -> Value {
    let args = [args, RUN].concat();
    let report = baton_tests::load_report(env!("CARGO_BIN_EXE_baton-load"), &args);
    for field in [
        "mode",
        "concurrency",
        "duration_s",
        "requests",
        "throughput_per_s",
        "error_kinds",
    ] {
        assert!(report.get(field).is_some(), "no `{field}` in {report}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            report["latency_us"][p].is_number(),
            "no latency {p}: {report}"
        );
    }
    assert!(
        report["ok"].as_u64().unwrap() > 0,
        "nothing succeeded: {report}"
    );
    assert_eq!(report["errors"], 0, "errors: {report}");
    report
}

#[test]
fn every_issuer_mode_reports_successes_and_no_errors() {
    let sb = Sandbox::with_workloads(
        &[
            (ORDERS, "orders", "ec-p256"),
            (PAYMENTS, "payments", "ed25519"),
        ],
        POLICY,
    );
    // The per-caller rate limit would turn a load test into a limiter test.
    let server = Server::start_with_env(
        &sb,
        &["--policy", "policy.toml"],
        &[
            ("BATON_RATE_LIMIT", "1000000"),
            ("BATON_RATE_BURST", "1000000"),
            ("BATON_INTROSPECT_RATE_LIMIT", "1000000"),
        ],
    );
    let base = format!("https://{}", server.addr);
    let file = |rel: &str| sb.path().join(rel).display().to_string();
    let bundle = file("baton-data/bundle.pem");
    let common = ["--issuer", &base, "--bundle", &bundle];
    let orders = [
        "--cert",
        &file("orders/svid.pem"),
        "--key",
        &file("orders/svid.key"),
    ];
    let callers = [
        "--caller-cert",
        &file("orders/svid.pem"),
        "--caller-key",
        &file("orders/svid.key"),
    ];

    let assertion = load(
        &[
            &["token"],
            &common[..],
            &orders[..],
            &["--audience", PAYMENTS, "--mode", "assertion"],
            WARMUP,
        ]
        .concat(),
    );
    assert_eq!(assertion["mode"], "token-assertion");
    assert!(assertion["calibration_per_s"].as_f64().unwrap() > 0.0);
    assert!(assertion["prepared"].as_u64().unwrap() > 0);
    // Keep-alive: the calibration opened the workers' connections; the run opened none.
    assert_eq!(assertion["connections_opened"], 0, "{assertion}");

    let mtls = load(
        &[
            &["token"],
            &common[..],
            &orders[..],
            &["--audience", PAYMENTS, "--mode", "mtls"],
            WARMUP,
        ]
        .concat(),
    );
    assert_eq!(mtls["mode"], "token-mtls");
    assert_eq!(mtls["connections_opened"], 2, "one per worker: {mtls}");

    let batch = load(
        &[
            &["token"],
            &common[..],
            &orders[..],
            &[
                "--audience",
                PAYMENTS,
                "--mode",
                "assertion",
                "--count",
                "64",
            ],
            // More than 1.2 s of batches here: the run is not cut short.
            &["--assertions", "5000"],
            WARMUP,
        ]
        .concat(),
    );
    assert_eq!(batch["count"], 64);
    let (ok, tokens_per_s) = (
        batch["throughput_per_s"].as_f64().unwrap(),
        batch["tokens_per_s"].as_f64().unwrap(),
    );
    assert!((tokens_per_s - 64.0 * ok).abs() <= 64.0, "{batch}");

    // The audience (payments, an Ed25519 workload) introspects; orders mints.
    let introspect = load(
        &[
            &["introspect"],
            &common[..],
            &[
                "--cert",
                &file("payments/svid.pem"),
                "--key",
                &file("payments/svid.key"),
            ],
            &callers[..],
            &["--tokens", "1500"],
            NO_WARMUP,
        ]
        .concat(),
    );
    assert_eq!(introspect["mode"], "introspect");

    let verify = load(
        &[
            &["verify"],
            &common[..],
            &["--audience", PAYMENTS],
            &callers[..],
            &["--tokens", "3000"],
            NO_WARMUP,
        ]
        .concat(),
    );
    assert_eq!(verify["mode"], "verify");
    assert!(verify["cold_start_ms"].as_f64().unwrap() > 0.0, "{verify}");
}

/// What the stand-in peer saw.
#[derive(Default)]
struct PeerLog {
    accepted: u64,
    refused: Vec<String>,
    jtis: HashSet<String>,
    connections: u64,
}

/// The stand-in peer's verdict on one token request body: `Err` says why it is refused.
fn check_request(
    body: &str,
    public_key: &[u8],
    token_url: &str,
    log: &mut PeerLog,
) -> Result<(), String> {
    let form: Vec<(String, String)> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or(format!("no {name}"))
    };
    if get("grant_type")? != "client_credentials"
        || get("client_id")? != "peer-client"
        || get("resource")? != "https://api.example.test/"
        || get("client_assertion_type")? != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return Err(format!("unexpected form: {body}"));
    }
    let jws = get("client_assertion")?;
    let (input, sig) = jws.rsplit_once('.').ok_or("not a JWS")?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public_key)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| "bad signature".to_owned())?;
    let (header, claims) = input.split_once('.').ok_or("not a JWS")?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    if header["alg"] != "ES256" || header["kid"] != "k1" {
        return Err(format!("header {header}"));
    }
    if claims["iss"] != "peer-client"
        || claims["sub"] != "peer-client"
        || claims["aud"] != token_url
    {
        return Err(format!("claims {claims}"));
    }
    let lifetime = claims["exp"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(claims["iat"].as_u64().unwrap_or(0));
    if lifetime == 0 || lifetime > 300 {
        return Err(format!("lifetime {lifetime}"));
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
    if !log.jtis.insert(jti) {
        return Err("replayed jti".to_owned());
    }
    Ok(())
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Serves HTTP/1.1 keep-alive on `listener`, answering each token request 200 with an
/// access token when it passes [`check_request`], 400 `invalid_client` otherwise.
async fn serve_peer(
    listener: tokio::net::TcpListener,
    public_key: Vec<u8>,
    token_url: String,
    log: Arc<Mutex<PeerLog>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        log.lock().unwrap().connections += 1;
        let (public_key, token_url, log) = (public_key.clone(), token_url.clone(), log.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            loop {
                let mut length = 0;
                let mut line = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                read.read_exact(&mut body).await.unwrap();
                let verdict = {
                    let mut log = log.lock().unwrap();
                    let verdict = check_request(
                        &String::from_utf8_lossy(&body),
                        &public_key,
                        &token_url,
                        &mut log,
                    );
                    match &verdict {
                        Ok(()) => log.accepted += 1,
                        Err(why) => log.refused.push(why.clone()),
                    }
                    verdict
                };
                let (status, answer) = match verdict {
                    Ok(()) => (
                        "200 OK",
                        r#"{"access_token":"opaque","token_type":"Bearer","expires_in":60}"#,
                    ),
                    Err(_) => ("400 Bad Request", r#"{"error":"invalid_client"}"#),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                if write.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_mode_sends_rfc7523_client_credentials_over_plain_http() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("peer.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(PeerLog::default()));
    tokio::spawn(serve_peer(
        listener,
        key.public_key_raw().to_vec(),
        token_url.clone(),
        log.clone(),
    ));

    let key_path = key_path.display().to_string();
    let args = [
        "peer",
        "--token-url",
        &token_url,
        "--client-id",
        "peer-client",
        "--key",
        &key_path,
        "--resource",
        "https://api.example.test/",
        "--kid",
        "k1",
        "--insecure-http",
        "--assertions",
        "3000",
        "--warmup",
        "0",
    ]
    .map(str::to_owned);
    let report = tokio::task::spawn_blocking(move || {
        load(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(report["mode"], "peer");

    let log = log.lock().unwrap();
    assert!(
        log.refused.is_empty(),
        "refused: {:?}",
        &log.refused[..log.refused.len().min(3)]
    );
    assert!(log.accepted >= report["ok"].as_u64().unwrap());
    // Two workers, each on one kept-alive connection, through calibration and run.
    assert_eq!(log.connections, 2);

    // Plain http is refused without the explicit flag.
    let out = Command::new(env!("CARGO_BIN_EXE_baton-load"))
        .args([
            "peer",
            "--token-url",
            &token_url,
            "--client-id",
            "c",
            "--key",
            &key_path,
        ])
        .args(["--resource", "https://api.example.test/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-http"));
}
