//! Visibility end to end (SPEC §9, issue 12): real workloads call the real issuer over
//! mTLS; `baton graph`, `baton identities list`, `baton policy report` and `baton report
//! --html` then show, through the admin socket only, what happened; anomaly signals
//! reach the audit log and `/metrics`; the graph survives a restart. The HTML report is
//! looked at as a person would: rendered by headless Chromium, with a screenshot kept
//! in `target/test-artifacts/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use baton_tests::{Sandbox, Server, https_client};
use serde_json::Value;

const TD: &str = "spiffe://example.org";
const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const LEDGER: &str = "spiffe://example.org/fn/ledger";
const INVOICES: &str = "spiffe://example.org/fn/billing/invoices";
const REPORTS: &str = "spiffe://example.org/fn/reports";
const ADMIN: &str = "spiffe://example.org/fn/admin";

const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
scopes = ["payments:charge", "payments:refund"]

[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/ledger"

[[allow]]
caller = "spiffe://example.org/fn/billing/*"
audience = "spiffe://example.org/fn/ledger"

[[allow]]
caller = "spiffe://example.org/fn/reports"
audience = "spiffe://example.org/fn/payments"
"#;

struct World {
    sb: Sandbox,
    server: Server,
    bundle: String,
}

fn start(sb: &Sandbox) -> Server {
    Server::start_with_env(
        sb,
        &["--policy", "policy.toml"],
        &[
            ("BATON_ANOMALY_NEW_AUDIENCE_AFTER", "1s"),
            ("BATON_ANOMALY_ATTESTATION_FAILURES", "3"),
        ],
    )
}

impl World {
    fn start() -> World {
        let sb = Sandbox::with_workloads(
            &[
                (ORDERS, "orders", "ec-p256"),
                (PAYMENTS, "payments", "ec-p256"),
                (LEDGER, "ledger", "ec-p256"),
                (INVOICES, "invoices", "ec-p256"),
                (REPORTS, "reports", "ec-p256"),
            ],
            POLICY,
        );
        let server = start(&sb);
        let bundle = sb.bundle();
        World { sb, server, bundle }
    }

    fn client(&self, dir: &str) -> reqwest::Client {
        https_client(
            &self.bundle,
            Some((
                &self.sb.read(&format!("{dir}/svid.pem")),
                &self.sb.read(&format!("{dir}/svid.key")),
            )),
        )
    }

    async fn token(&self, dir: &str, form: &[(&str, &str)]) -> (u16, String) {
        let mut all = vec![("grant_type", "client_credentials")];
        all.extend_from_slice(form);
        let resp = self
            .client(dir)
            .post(self.server.url("/v1/token"))
            .form(&all)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = https_client(&self.bundle, None)
            .get(self.server.url(path))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.sb.baton(args);
        serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

fn edge<'a>(graph: &'a Value, caller: &str, audience: &str) -> Option<&'a Value> {
    graph
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["caller"] == caller && e["audience"] == audience)
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_graph_inventory_report_and_anomalies_show_what_really_happened() {
    let mut w = World::start();

    // Traffic: orders charges payments (one batch of 3, scope in reverse order), then
    // — its history over a second old — calls ledger for the first time; invoices uses
    // the billing prefix rule; orders keeps asking for admin, which no rule allows.
    let (status, body) = w
        .token(
            "orders",
            &[
                ("audience", PAYMENTS),
                ("scope", "payments:charge"),
                ("count", "3"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.token("orders", &[("audience", LEDGER)]).await.0, 200);
    assert_eq!(w.token("invoices", &[("audience", LEDGER)]).await.0, 200);
    for _ in 0..4 {
        assert_eq!(w.token("orders", &[("audience", ADMIN)]).await.0, 400);
    }
    // Three requests with a forged client assertion: an attestation-failure burst.
    let plain = https_client(&w.bundle, None);
    for _ in 0..3 {
        let resp = plain
            .post(w.server.url("/v1/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", PAYMENTS),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }

    // The graph: one record per edge, with counts, scope and denial reasons.
    let graph = w.json(&["graph", "--json"]);
    let edges = &graph["edges"];
    let charge = edge(edges, ORDERS, PAYMENTS).expect("orders -> payments");
    assert_eq!(charge["issued"], 3);
    assert_eq!(charge["scope"], "payments:charge");
    assert!(charge["issued_last_hour"].as_u64() == Some(3), "{charge}");
    assert_eq!(edge(edges, INVOICES, LEDGER).unwrap()["issued"], 1);
    let probe = edge(edges, ORDERS, ADMIN).expect("the refused edge is recorded");
    assert_eq!(probe["issued"], 0);
    assert_eq!(probe["denied"]["audience_not_allowed"], 4);
    assert_eq!(edges.as_array().unwrap().len(), 4, "{graph}");
    // Nothing per token: no jti, no token in the graph.
    assert!(!graph.to_string().contains("eyJ"), "{graph}");

    let dot = w.sb.baton(&["graph", "--dot"]);
    let dot = dot.ok();
    assert!(dot.starts_with("digraph baton {"), "{dot}");
    assert!(
        dot.contains(&format!("\"{ORDERS}\" -> \"{PAYMENTS}\"")),
        "{dot}"
    );
    assert!(
        dot.contains("style=dashed"),
        "the refused edge is drawn apart: {dot}"
    );
    let text = w.sb.baton(&["graph"]);
    assert!(text.ok().contains("4 edges"), "{}", text.ok());

    // The inventory: every enrolled identity (recorded by `baton enroll` before the
    // issuer ran), with its certificate's expiry; callers with their last token; a
    // revoked identity and an outstanding join token.
    w.sb.baton(&["identities", "revoke", REPORTS]).ok();
    w.sb.baton(&["enroll", "--id", &format!("{TD}/fn/new"), "--join-token"])
        .ok();
    let ids = w.json(&["identities", "list", "--json"]);
    let find = |id: &str| {
        ids.as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {ids}"))
            .clone()
    };
    for id in [ORDERS, PAYMENTS, LEDGER, INVOICES, REPORTS] {
        let v = find(id);
        assert!(v["cert_not_after"].as_i64().unwrap() > 0, "{v}");
        assert!(
            v["seen_as"]
                .as_array()
                .unwrap()
                .contains(&"enrolled".into()),
            "{v}"
        );
    }
    let orders = find(ORDERS);
    assert!(orders["last_token"].as_i64().is_some(), "{orders}");
    assert_eq!(orders["tokens_issued"], 4);
    assert_eq!(orders["tokens_denied"], 4);
    assert_eq!(find(REPORTS)["denied"], true);
    assert_eq!(find(ORDERS)["denied"], false);
    assert_eq!(
        find(&format!("{TD}/fn/new"))["join_tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The refused audience is not an identity: nobody ever got a token for it.
    assert!(ids.as_array().unwrap().iter().all(|v| v["id"] != ADMIN));

    // The least-privilege report, each finding with a concrete rule.
    let report = w.json(&["policy", "report", "--json", "--min-denials", "3"]);
    let findings = report["findings"].as_array().unwrap();
    let of = |kind: &str, rule: Option<u64>| {
        findings
            .iter()
            .find(|f| f["kind"] == kind && f["rule"].as_u64() == rule)
            .unwrap_or_else(|| panic!("no {kind} for rule {rule:?} in {report}"))
    };
    let unused = of("unused_rule", Some(4));
    assert!(
        unused["suggestion"].as_str().unwrap().contains("delete"),
        "{unused}"
    );
    let scopes = of("unused_scopes", Some(1));
    assert!(
        !scopes["suggestion"]
            .as_str()
            .unwrap()
            .contains("payments:refund"),
        "{scopes}"
    );
    let broad = of("broader_than_used", Some(3));
    assert!(
        broad["suggestion"].as_str().unwrap().contains(INVOICES),
        "{broad}"
    );
    let denied = of("repeatedly_denied", None);
    let suggestion = denied["suggestion"].as_str().unwrap();
    assert!(
        suggestion.contains(ADMIN) && suggestion.contains(ORDERS),
        "{denied}"
    );
    let human = w.sb.baton(&["policy", "report", "--min-denials", "3"]);
    assert!(
        human.ok().contains("[unused_rule] rule 4"),
        "{}",
        human.ok()
    );

    // Anomalies: orders' first call to ledger, and the burst of forged assertions, are
    // each an audit event and a count on /metrics.
    assert!(w.server.wait_for_log("\"kind\":\"new_audience\""));
    assert!(w.server.wait_for_log("\"kind\":\"attestation_failures\""));
    let (status, metrics) = w.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("baton_anomalies_total{kind=\"new_audience\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_anomalies_total{kind=\"attestation_failures\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_anomalies_total{kind=\"rate_spike\"} 0"),
        "an alert needs the series before the first spike: {metrics}"
    );
    // The system's shape stays off the public listener.
    assert!(!metrics.contains("fn/admin") && !metrics.contains("fn/orders"));
    for path in [
        "/graph",
        "/v1/graph",
        "/v1/report",
        "/admin",
        "/v1/identities",
    ] {
        assert_eq!(w.get(path).await.0, 404, "{path}");
    }

    // The HTML report, as a person sees it.
    let html = w.sb.path().join("report.html");
    let out = w.sb.baton(&["report", "--html", html.to_str().unwrap()]);
    assert!(out.ok().contains("4 edges"), "{}", out.ok());
    let mode = std::fs::metadata(&html).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
    let png = artifacts().join("visibility-report.png");
    let dom = baton_tests::chromium::render(&html, &png).expect("chromium renders the report");
    for needle in [
        ORDERS,
        PAYMENTS,
        LEDGER,
        INVOICES,
        "unused_rule",
        "new_audience",
    ] {
        assert!(dom.contains(needle), "{needle} not on the rendered page");
    }
    assert!(dom.contains("<svg"), "the graph is drawn");
    let drawn = dom.matches("class=\"edge\"").count();
    assert_eq!(drawn, 4, "one arrow per caller → audience pair");
    let png_size = std::fs::metadata(&png).unwrap().len();
    assert!(png_size > 10_000, "screenshot is {png_size} bytes");

    // The graph outlives the issuer: flushed at shutdown, read back at start.
    w.server.signal("TERM");
    assert_eq!(w.server.wait_exit(Duration::from_secs(15)), Some(0));
    let file = w.sb.data_dir().join("graph.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    w.server = start(&w.sb);
    let again = w.json(&["graph", "--json"]);
    assert_eq!(
        edge(&again["edges"], ORDERS, PAYMENTS).unwrap()["issued"],
        3
    );
    assert_eq!(
        edge(&again["edges"], ORDERS, ADMIN).unwrap()["denied"]["audience_not_allowed"],
        4
    );
}

#[test]
fn visibility_commands_need_the_running_issuer() {
    let sb = Sandbox::with_workloads(&[], "");
    for args in [
        &["graph", "--json"][..],
        &["identities", "list"][..],
        &["policy", "report"][..],
        &["report", "--html", "x.html"][..],
    ] {
        let run = sb.baton(args);
        assert_ne!(run.code, Some(0), "{args:?}");
        assert!(
            run.stderr.contains("no issuer is running"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert!(!sb.path().join("x.html").exists());
}
