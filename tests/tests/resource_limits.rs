//! Resource limits of the real `baton serve` over loopback TLS (docs/limits.md, SPEC
//! §5): hundreds of idle, half-open and slowloris connections are held while callers
//! keep getting tokens, and each is closed by its own limit; connections beyond
//! `max_connections` wait in the backlog until one closes; oversized bodies are 413
//! (RFC 6749 JSON) and oversized request heads 431.
//!
//! Timing: the limits are configured small (seconds) so the file runs in well under
//! 15 s; close times are asserted only against the configured limit plus generous
//! slack, and mint latency is printed, never asserted tightly.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_tests::{Sandbox, Server, https_client, pem_blocks};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
"#;

/// Slack allowed, beyond a configured timeout, for the close to reach the client on a
/// loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(5);

fn start(env: &[(&str, &str)]) -> (Sandbox, Server) {
    let sb = Sandbox::with_workloads(&[(ORDERS, "orders", "ec-p256")], POLICY);
    let server = Server::start_with_env(&sb, &["--policy", "policy.toml"], env);
    (sb, server)
}

/// The workload `orders` as an mTLS caller, with its own connection pool.
fn orders(sb: &Sandbox) -> reqwest::Client {
    https_client(
        &sb.bundle(),
        Some((&sb.read("orders/svid.pem"), &sb.read("orders/svid.key"))),
    )
}

/// One token for `orders` → `payments` over mTLS: the status and body.
async fn mint(server: &Server, client: &reqwest::Client) -> (u16, Value) {
    let resp = client
        .post(server.url("/v1/token"))
        .form(&[("grant_type", "client_credentials"), ("audience", PAYMENTS)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A raw TLS client trusting the sandbox's bundle, offering `alpn`.
fn connector(sb: &Sandbox, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_blocks(&sb.bundle()) {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn handshake(tls: &TlsConnector, server: &Server) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    tls.connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads and discards until the server closes (EOF or reset), at most `limit`; how
/// long that took from `since`, or `None` if it stayed open.
async fn closed_within<R: tokio::io::AsyncRead + Unpin>(
    conn: &mut R,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// A counter's value on a `/metrics` page (0 when absent).
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(server: &Server, client: &reqwest::Client) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Siege {
    /// TCP connected, nothing sent: the TLS handshake never starts.
    IdleTcp,
    /// The first bytes of a ClientHello, then nothing.
    HalfHello,
    /// TLS done, then an HTTP/1.1 request head dribbled a byte at a time (slowloris).
    SlowHead,
    /// TLS done with ALPN h2, the HTTP/2 preface sent, then no request.
    IdleH2,
}

/// One hostile connection: held open until the server closes it. Returns its kind and
/// how long after it was armed the server closed it (`None`: still open at `limit`).
async fn besiege(
    kind: Siege,
    addr: std::net::SocketAddr,
    tls: TlsConnector,
    limit: Duration,
    armed: Arc<AtomicUsize>,
) -> (Siege, Option<Duration>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let armed = move || {
        armed.fetch_add(1, Ordering::SeqCst);
    };
    let closed = match kind {
        Siege::IdleTcp => {
            let mut tcp = tcp;
            armed();
            closed_within(&mut tcp, Instant::now(), limit).await
        }
        Siege::HalfHello => {
            let mut tcp = tcp;
            // A TLS record header announcing a 512-byte handshake message, and 2 bytes.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .unwrap();
            armed();
            closed_within(&mut tcp, Instant::now(), limit).await
        }
        Siege::SlowHead => {
            let mut conn = tls
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            armed();
            let since = Instant::now();
            let head = b"POST /v1/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut closed = None;
            for byte in head.iter().cycle() {
                if since.elapsed() > limit {
                    break;
                }
                if conn.write_all(&[*byte]).await.is_err() || conn.flush().await.is_err() {
                    closed = Some(since.elapsed());
                    break;
                }
                // Between bytes, watch for the server's close.
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(250), conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        closed = Some(since.elapsed());
                        break;
                    }
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
            closed
        }
        Siege::IdleH2 => {
            let mut conn = tls
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let since = Instant::now();
            // RFC 9113 §3.4: the client preface, then an empty SETTINGS frame.
            conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .unwrap();
            conn.flush().await.unwrap();
            armed();
            closed_within(&mut conn, since, limit).await
        }
    };
    (kind, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_open_and_slowloris_connections_are_closed_while_callers_keep_getting_tokens() {
    let handshake_timeout = Duration::from_secs(4);
    let header_timeout = Duration::from_secs(4);
    let idle_timeout = Duration::from_secs(5);
    let (sb, server) = start(&[
        ("BATON_TLS_HANDSHAKE_TIMEOUT", "4s"),
        ("BATON_HEADER_READ_TIMEOUT", "4s"),
        ("BATON_IDLE_TIMEOUT", "5s"),
        // This test measures the listener, not the per-caller rate limit.
        ("BATON_RATE_LIMIT", "10000"),
        ("BATON_RATE_BURST", "10000"),
    ]);
    let h1 = connector(&sb, b"http/1.1");
    let h2 = connector(&sb, b"h2");
    let caller = orders(&sb);
    assert_eq!(mint(&server, &caller).await.0, 200, "before the siege");

    // 400 hostile connections: 120 idle TCP, 100 half-open TLS, 120 slowloris, 60 idle h2.
    let plan = [
        (Siege::IdleTcp, 120),
        (Siege::HalfHello, 100),
        (Siege::SlowHead, 120),
        (Siege::IdleH2, 60),
    ];
    let limit = idle_timeout + SLACK + Duration::from_secs(2);
    let armed = Arc::new(AtomicUsize::new(0));
    let mut siege = Vec::new();
    for (kind, count) in plan {
        for _ in 0..count {
            let tls = if kind == Siege::IdleH2 { &h2 } else { &h1 };
            let task = besiege(kind, server.addr, tls.clone(), limit, Arc::clone(&armed));
            siege.push(tokio::spawn(task));
        }
    }
    let held = siege.len();
    let t = Instant::now();
    while armed.load(Ordering::SeqCst) < held {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "siege not in place: {armed:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let siege_start = Instant::now();
    println!("siege in place in {:?}", t.elapsed());
    // The issuer holds every one of them, and the caller's connection.
    let page = metrics(&server, &caller).await;
    let open_at_start = sample(&page, "baton_connections_open");
    assert!(open_at_start > held as f64, "{open_at_start}: {page}");

    // Callers mint while the siege holds, until its first limit (3.5 s from now at
    // the earliest): on their kept-alive connection, and on a fresh connection (a new
    // accept and handshake) every fifth time.
    let mut mints = 0;
    let mut slowest = Duration::ZERO;
    let window = Duration::from_millis(2500);
    while siege_start.elapsed() < window || mints < 30 {
        let fresh;
        let client = if mints % 5 == 4 {
            fresh = orders(&sb);
            &fresh
        } else {
            &caller
        };
        let t = Instant::now();
        let (status, body) = mint(&server, client).await;
        let took = t.elapsed();
        assert_eq!(status, 200, "mint {mints} during the siege: {body}");
        assert!(body["access_token"].is_string(), "{body}");
        // A liveness bound, not a performance one: a caller is never starved.
        assert!(took < Duration::from_secs(5), "mint {mints} took {took:?}");
        slowest = slowest.max(took);
        mints += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let minted_in = siege_start.elapsed();

    let mut worst = std::collections::HashMap::new();
    for task in siege {
        let (kind, closed) = task.await.unwrap();
        let configured = match kind {
            Siege::IdleTcp | Siege::HalfHello => handshake_timeout,
            Siege::SlowHead => header_timeout,
            Siege::IdleH2 => idle_timeout,
        };
        let Some(after) = closed else {
            panic!("a {kind:?} connection was still open {limit:?} after it was armed");
        };
        // Closed by its limit: not before it (500 ms for clocks that start apart), and
        // within generous slack after it.
        assert!(
            after + Duration::from_millis(500) >= configured && after <= configured + SLACK,
            "{kind:?} closed after {after:?}; configured {configured:?}"
        );
        let (lo, hi, n) =
            worst
                .entry(format!("{kind:?}"))
                .or_insert((Duration::MAX, Duration::ZERO, 0));
        *lo = (*lo).min(after);
        *hi = (*hi).max(after);
        *n += 1;
    }

    let page = metrics(&server, &caller).await;
    let closed = |reason: &str| {
        sample(
            &page,
            &format!(r#"baton_connections_closed_total{{reason="{reason}"}}"#),
        )
    };
    assert!(closed("handshake_timeout") >= 220.0, "{page}");
    assert!(closed("header_timeout") >= 120.0, "{page}");
    assert!(closed("idle") >= 60.0, "{page}");
    println!(
        "siege: {held} connections held ({open_at_start} open on the issuer); {mints} mints in {minted_in:?} during it, slowest {slowest:?}"
    );
    let mut kinds: Vec<_> = worst.into_iter().collect();
    kinds.sort();
    for (kind, (lo, hi, n)) in kinds {
        println!("  {kind}: {n} closed after {lo:?} .. {hi:?}");
    }
    println!(
        "  closed by reason: handshake_timeout {} header_timeout {} idle {}",
        closed("handshake_timeout"),
        closed("header_timeout"),
        closed("idle")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_in_the_backlog_until_one_closes() {
    let (sb, server) = start(&[
        ("BATON_MAX_CONNECTIONS", "4"),
        ("BATON_HEADER_READ_TIMEOUT", "20s"),
        ("BATON_IDLE_TIMEOUT", "20s"),
    ]);
    let tls = connector(&sb, b"http/1.1");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(handshake(&tls, &server).await);
    }

    // The fifth connects (the kernel's backlog accepts it) but is not accepted by the
    // issuer: its handshake gets no answer while four are open.
    let fifth = tokio::spawn({
        let tls = tls.clone();
        let addr = server.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let conn = tls
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            (conn, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!fifth.is_finished(), "served beyond max_connections");

    let released = Instant::now();
    drop(held.pop());
    let (mut conn, served_at) = tokio::time::timeout(SLACK, fifth)
        .await
        .expect("the waiting connection is served once a slot frees")
        .unwrap();
    println!(
        "fifth connection accepted {:?} after a slot freed",
        served_at.duration_since(released)
    );
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Once the holders leave, callers are served again.
    drop(held);
    drop(conn);
    let caller = orders(&sb);
    let (status, body) = mint(&server, &caller).await;
    assert_eq!(status, 200, "{body}");
    let page = metrics(&server, &caller).await;
    assert!(
        sample(&page, "baton_connection_limit_waits_total") >= 1.0,
        "{page}"
    );
    assert_eq!(sample(&page, "baton_connections_max"), 4.0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413_json_and_an_oversized_head_is_431() {
    let (sb, server) = start(&[
        ("BATON_MAX_BODY_BYTES", "4096"),
        ("BATON_MAX_HEADERS", "20"),
        ("BATON_MAX_HEADER_BYTES", "8192"),
        ("BATON_HTTP2_MAX_CONCURRENT_STREAMS", "7"),
    ]);
    let caller = orders(&sb);

    // HTTP/2 (RFC 9113 §6.5.2): the issuer announces its stream and header-list
    // limits in its first SETTINGS frame.
    let mut h2 = handshake(&connector(&sb, b"h2"), &server).await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    h2.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "first frame is SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    h2.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3), SETTINGS_MAX_HEADER_LIST_SIZE (0x6).
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    assert!(settings.contains(&(0x6, 8192)), "{settings:?}");
    drop(h2);

    let padding = "a".repeat(5000);
    let resp = caller
        .post(server.url("/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", PAYMENTS),
            ("padding", &padding),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("4096"),
        "{body}"
    );
    // Under the limit, the same request is served.
    let padding = "a".repeat(3000);
    let resp = caller
        .post(server.url("/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", PAYMENTS),
            ("padding", &padding),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let get = |headers: usize, value_len: usize| {
        let mut req = caller.get(server.url("/healthz"));
        for i in 0..headers {
            req = req.header(format!("x-h{i}"), "v".repeat(value_len));
        }
        req.send()
    };
    // Within both limits (a few headers of its own ride along too).
    assert_eq!(get(12, 400).await.unwrap().status().as_u16(), 200);
    // Too many header fields, and too many bytes of head: 431, then the connection
    // closes (hyper answers and stops reading).
    assert_eq!(get(30, 1).await.unwrap().status().as_u16(), 431);
    assert_eq!(get(2, 6000).await.unwrap().status().as_u16(), 431);
    // The issuer goes on serving.
    assert_eq!(mint(&server, &caller).await.0, 200);
    let page = metrics(&server, &caller).await;
    let too_large = sample(
        &page,
        r#"baton_connections_closed_total{reason="head_too_large"}"#,
    );
    assert!(too_large >= 2.0, "{page}");
}
