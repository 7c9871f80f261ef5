//! `baton report --html` as a browser sees it (SPEC §9): the page
//! `baton_issuer::visibility::html::render` writes for a hand-built report — a cycle, a
//! self-edge, an edge with only refusals and a hostile audience among its edges — is
//! loaded in headless Chromium, which saves a screenshot to
//! `target/test-artifacts/report-render.png` for people to look at and dumps the DOM it
//! built for the assertions: the graph's boxes are there, and the hostile audience is
//! text, never an element.
//!
//! Nothing is skipped: without `/usr/bin/chromium` the test fails and names the Debian
//! package to install.

// Test code: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use baton_issuer::visibility::html;
use baton_issuer::visibility::model::{
    AnomalyKind, AnomalyView, EdgeView, Finding, FindingKind, GraphView, IdentityView,
    PolicyReport, Report,
};
use baton_tests::chromium;

const NOW: i64 = 1_700_000_000;
const FRONTEND: &str = "spiffe://example.org/ns/web/frontend";
const API: &str = "spiffe://example.org/ns/core/api";
const DB: &str = "spiffe://example.org/ns/core/db";
const PAYMENTS: &str = "spiffe://example.org/ns/core/payments";
const BATCH: &str = "spiffe://example.org/ns/jobs/batch";
const ADMIN: &str = "spiffe://example.org/ns/ops/admin";
const PARTNER: &str = "spiffe://partner.example/billing";
const HOSTILE: &str = "spiffe://example.org/<img src=x onerror=alert(1)>";
const SUGGESTION: &str = "[[allow]]\ncaller = \"spiffe://example.org/ns/web/frontend\"\n\
                          audience = \"spiffe://example.org/ns/core/api\"\nscopes = [\"orders:read\"]\n";

fn edge(
    caller: &str,
    audience: &str,
    scope: &str,
    issued: u64,
    denied: &[(&str, u64)],
) -> EdgeView {
    EdgeView {
        caller: caller.to_owned(),
        audience: audience.to_owned(),
        scope: (!scope.is_empty()).then(|| scope.to_owned()),
        issued,
        denied: denied
            .iter()
            .map(|(r, n)| ((*r).to_owned(), *n))
            .collect::<BTreeMap<_, _>>(),
        first_seen: NOW - 86_400,
        last_seen: NOW - 10,
        last_issued: (issued > 0).then_some(NOW - 10),
        rate_last_minute: 0.5,
        issued_last_hour: issued,
    }
}

fn identity(id: &str, seen_as: &[&str], issued: u64, denied: u64) -> IdentityView {
    IdentityView {
        id: id.to_owned(),
        seen_as: seen_as.iter().map(|s| (*s).to_owned()).collect(),
        cert_not_after: seen_as.contains(&"enrolled").then_some(NOW + 20 * 3600),
        enrolled_at: seen_as.contains(&"enrolled").then_some(NOW - 4 * 3600),
        last_attested: Some(NOW - 120),
        last_token: (issued > 0).then_some(NOW - 10),
        last_called: None,
        tokens_issued: issued,
        tokens_denied: denied,
        join_tokens: Vec::new(),
        denied: false,
    }
}

fn report() -> Report {
    let nope = "audience_not_allowed";
    let mut batch = identity(BATCH, &["enrolled", "attested", "caller"], 1, 7);
    batch.join_tokens.push("jt_7Qx2".to_owned());
    let mut admin = identity(ADMIN, &["enrolled", "audience"], 0, 0);
    admin.denied = true;
    admin.cert_not_after = Some(NOW - 60);
    Report {
        trust_domain: "example.org".to_owned(),
        graph: GraphView {
            generated_at: NOW,
            store: "embedded".to_owned(),
            max_edges: 10_000,
            edges: vec![
                edge(FRONTEND, API, "orders:read", 1200, &[]),
                edge(
                    FRONTEND,
                    API,
                    "orders:write",
                    8,
                    &[("scope_not_allowed", 2)],
                ),
                edge(FRONTEND, PARTNER, "", 14, &[]),
                edge(API, DB, "", 3000, &[]),
                edge(API, PAYMENTS, "payments:charge", 45, &[]),
                // A cycle: payments calls back into api.
                edge(PAYMENTS, API, "orders:read", 3, &[]),
                edge(BATCH, BATCH, "", 1, &[]),
                edge(BATCH, ADMIN, "", 0, &[(nope, 6)]),
                edge(BATCH, HOSTILE, "", 0, &[(nope, 1)]),
            ],
        },
        identities: vec![
            identity(FRONTEND, &["enrolled", "attested", "caller"], 1222, 2),
            identity(
                API,
                &["enrolled", "attested", "caller", "audience"],
                3045,
                0,
            ),
            identity(DB, &["enrolled", "audience"], 0, 0),
            identity(
                PAYMENTS,
                &["enrolled", "attested", "caller", "audience"],
                3,
                0,
            ),
            batch,
            admin,
            identity(HOSTILE, &["audience"], 0, 0),
        ],
        policy: PolicyReport {
            generated_at: NOW,
            window_seconds: 30 * 86_400,
            min_denials: 3,
            policy_file: Some("/etc/baton/policy.toml".to_owned()),
            rules: 4,
            findings: vec![
                Finding {
                    kind: FindingKind::UnusedScopes,
                    rule: Some(1),
                    current: Some(
                        "[[allow]]\ncaller = \"spiffe://example.org/ns/web/frontend\"\n\
                         audience = \"spiffe://example.org/ns/core/api\"\n\
                         scopes = [\"orders:read\", \"orders:refund\"]\n"
                            .to_owned(),
                    ),
                    summary:
                        "rule 1 allows scopes orders:read, orders:refund but only orders:read was \
                              granted in the last 30days; never granted: orders:refund"
                            .to_owned(),
                    suggestion: SUGGESTION.to_owned(),
                },
                Finding {
                    kind: FindingKind::RepeatedlyDenied,
                    rule: None,
                    current: None,
                    summary: format!("{BATCH} was refused 6 times for {ADMIN} in the last 30days"),
                    suggestion: format!(
                        "# if {BATCH} should call {ADMIN}:\n[[allow]]\ncaller = \"{BATCH}\"\naudience = \"{ADMIN}\"\n"
                    ),
                },
            ],
        },
        anomalies: vec![AnomalyView {
            kind: AnomalyKind::NewAudience,
            at: NOW - 300,
            caller: Some(BATCH.to_owned()),
            audience: Some(HOSTILE.to_owned()),
            observed: 1.0,
            threshold: 0.0,
            detail: format!("{BATCH} asked for {HOSTILE} for the first time"),
        }],
    }
}

/// Names of the elements in a serialized DOM. Text escapes `<`; attribute values are
/// quoted and may hold `<` and `>` (Chromium's serializer leaves them), so quotes are
/// skipped inside tags.
fn element_names(dom: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = dom.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '<' {
            continue;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '>' || c == '/' && !name.is_empty() {
                break;
            }
            name.push(c);
            chars.next();
        }
        if !name.starts_with('/') {
            names.push(name.to_ascii_lowercase());
        }
        let mut quote = None;
        for c in chars.by_ref() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '>') => break,
                _ => {}
            }
        }
    }
    names
}

#[test]
fn report_page_renders_in_chromium_with_hostile_strings_inert() {
    assert!(
        chromium::available(),
        "{} is missing: apt-get install chromium",
        chromium::CHROMIUM
    );
    let page = html::render(&report());
    let dir = tempfile::tempdir().unwrap();
    let html_path = dir.path().join("report.html");
    std::fs::write(&html_path, &page).unwrap();
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("report-render.png");
    let _ = std::fs::remove_file(&png);

    let dom = chromium::render(&html_path, &png).unwrap();

    assert!(
        dom.contains("<span class=\"td\">example.org</span>"),
        "{dom}"
    );
    for id in [FRONTEND, API, DB, PAYMENTS, BATCH, ADMIN, PARTNER] {
        assert!(
            dom.contains(&format!("<g class=\"node\" data-id=\"{id}\">")),
            "no box for {id}"
        );
    }
    let elements = element_names(&dom);
    let count = |name: &str| elements.iter().filter(|e| *e == name).count();
    assert_eq!(
        dom.matches("<g class=\"node\"").count(),
        8,
        "7 identities and the hostile audience"
    );
    assert_eq!(
        dom.matches("<g class=\"edge\"").count(),
        8,
        "frontend → api summed over scopes"
    );
    assert_eq!(count("svg"), 1);
    // The finding's suggestion as written (text nodes keep quotes and newlines).
    assert!(dom.contains(SUGGESTION), "{dom}");
    assert!(dom.contains("Repeatedly denied"));
    // The hostile audience: text in the table, the box's title and the anomaly, and no
    // element of it anywhere.
    assert_eq!(count("img"), 0, "{elements:?}");
    assert_eq!(count("script"), 0, "{elements:?}");
    assert!(
        dom.matches("spiffe://example.org/&lt;img src=x onerror=alert(1)&gt;")
            .count()
            >= 3,
        "{dom}"
    );
    assert!(
        !elements
            .iter()
            .any(|e| e == "iframe" || e == "object" || e == "a")
    );

    let (width, height, size) = chromium::png_stats(&png).unwrap();
    assert_eq!(width, chromium::WINDOW.0, "screenshot {width}x{height}");
    assert!(
        size > 10 * 1024,
        "screenshot of {size} bytes: a blank page?"
    );
}
