//! Prometheus metrics (SPEC §5 `/metrics`): one process-wide recorder, rendered by
//! the `/metrics` handler. Metric names live here, once.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use baton_proto::claims::JwsAlgorithm;
use baton_proto::metadata::{
    INTROSPECT_PATH, JWKS_PATH, METADATA_PATH, REVOKE_PATH, SVID_PATH, TOKEN_PATH,
};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::attest::AuthMethod;

/// Access tokens minted. Labels: `alg`, `method` (`tls_client_auth` | `private_key_jwt`).
pub const TOKENS_ISSUED: &str = "baton_tokens_issued_total";
/// Token requests refused after parsing. Label: `reason`.
pub const TOKEN_DENIALS: &str = "baton_token_denials_total";
/// Failed attestations. Labels: `method`, `reason`.
pub const ATTESTATION_FAILURES: &str = "baton_attestation_failures_total";
/// HTTP requests answered. Labels: `route`, `status`.
pub const HTTP_REQUESTS: &str = "baton_http_requests_total";
/// HTTP request latency. Label: `route`.
pub const HTTP_DURATION: &str = "baton_http_request_duration_seconds";
/// Time to mint (sign and encode) one token.
pub const MINT_DURATION: &str = "baton_mint_duration_seconds";
/// Age of each published signing key. Labels: `kid`, `state`.
pub const SIGNING_KEY_AGE: &str = "baton_signing_key_age_seconds";
/// Rules in the policy in force.
pub const POLICY_RULES: &str = "baton_policy_rules";
/// Policy reloads. Label: `result` (`ok` | `refused`).
pub const POLICY_RELOADS: &str = "baton_policy_reloads_total";
/// Introspection requests. Labels: `result` (`active` | `inactive` | `unavailable` |
/// `unauthenticated`), `reason` (`ok` when active, else why: `InactiveReason::reason`,
/// or the attestation failure).
pub const INTROSPECTIONS: &str = "baton_introspections_total";
/// Access tokens consumed (their one use: an introspection by the audience).
pub const TOKENS_CONSUMED: &str = "baton_tokens_consumed_total";
/// One-time ids presented again. Label: `kind` (`access_token` | `client_assertion`).
pub const REPLAY_ATTEMPTS: &str = "baton_replay_attempts_total";
/// Revocation requests (RFC 7009). Label: `result` (`revoked` | `not_a_token` |
/// `refused` | `unavailable` | `unauthenticated`).
pub const REVOCATIONS: &str = "baton_revocations_total";
/// Identities put on the deny list (`baton identities revoke`).
pub const IDENTITIES_REVOKED: &str = "baton_identities_revoked_total";
/// Identities on the deny list now.
pub const DENIED_IDENTITIES: &str = "baton_denied_identities";
/// Entries held by the in-memory replay ledger (consumed ids and revoked sessions,
/// including expired ones not yet purged).
pub const LEDGER_ENTRIES: &str = "baton_ledger_entries";
/// Capacity of the in-memory replay ledger; at capacity, one-time use fails closed (503).
pub const LEDGER_CAPACITY: &str = "baton_ledger_capacity";
/// Admin-socket commands. Labels: `command`, `result` (`ok` | `error`).
pub const ADMIN_COMMANDS: &str = "baton_admin_commands_total";
/// Signing-key rotations. Label: `trigger` (`command` | `schedule`).
pub const KEY_ROTATIONS: &str = "baton_key_rotations_total";
/// Workload certificates issued by `POST /v1/svid`. Label: `method` (`join_token` |
/// `tls_client_auth` | `private_key_jwt`).
pub const SVIDS_ISSUED: &str = "baton_svids_issued_total";
/// `POST /v1/svid` requests refused. Label: `reason`.
pub const SVID_DENIALS: &str = "baton_svid_denials_total";
/// Requests refused with 503 because the distributed store was unreachable.
pub const STORE_REFUSALS: &str = "baton_store_unavailable_refusals_total";
/// 1 while the distributed store answers, 0 while it does not (absent when embedded).
pub const STORE_UP: &str = "baton_store_up";
/// Connections open now, on every listener.
pub const CONNECTIONS_OPEN: &str = "baton_connections_open";
/// The configured `max_connections`.
pub const CONNECTIONS_MAX: &str = "baton_connections_max";
/// Connections ended. Label: `reason` (`listener::Closed::as_str`: `done` |
/// `handshake_failed` | `handshake_timeout` | `header_timeout` | `idle` |
/// `head_too_large` | `malformed` | `shutdown` | `error`).
pub const CONNECTIONS_CLOSED: &str = "baton_connections_closed_total";
/// Times the listeners stopped accepting because `max_connections` were open.
pub const CONNECTION_LIMIT_WAITS: &str = "baton_connection_limit_waits_total";
/// Outstanding join tokens revoked (`baton join-tokens revoke`).
pub const JOIN_TOKENS_REVOKED: &str = "baton_join_tokens_revoked_total";
/// Anomaly signals raised (docs/operations.md). Label: `kind` (`new_audience` |
/// `rate_spike` | `attestation_failures` | `replays`).
pub const ANOMALIES: &str = "baton_anomalies_total";
/// Edges in the call graph (embedded: at each flush; distributed: at each read).
pub const GRAPH_EDGES: &str = "baton_graph_edges";
/// Call-graph records not kept because the graph was full of edges ranking above them.
pub const GRAPH_EDGES_DROPPED: &str = "baton_graph_edges_dropped_total";

/// Counts one replay attempt of `kind` (`access_token` | `client_assertion`).
pub fn replay_attempt(kind: &'static str) {
    metrics::counter!(REPLAY_ATTEMPTS, "kind" => kind).increment(1);
}

/// Latency buckets in seconds: mint and verify take tens of microseconds, a request
/// with a cold attestation a few milliseconds.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Every value of the HTTP metrics' `route` label: the API's routes, then `other` (a
/// matched route not listed here) and `unmatched` (no route: 404). Static strings keep
/// the label's values bounded whatever the path.
const ROUTES: [&str; 11] = [
    TOKEN_PATH,
    SVID_PATH,
    INTROSPECT_PATH,
    REVOKE_PATH,
    JWKS_PATH,
    METADATA_PATH,
    "/healthz",
    "/readyz",
    "/metrics",
    "other",
    "unmatched",
];
const OTHER_ROUTE: usize = ROUTES.len() - 2;
const UNMATCHED_ROUTE: usize = ROUTES.len() - 1;

/// A request's `route` label: its matched route (`None`: no route matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(usize);

impl Route {
    /// The label of the route `matched` (axum's `MatchedPath`).
    pub fn of(matched: Option<&str>) -> Self {
        Self(match matched {
            Some(path) => ROUTES[..OTHER_ROUTE]
                .iter()
                .position(|r| *r == path)
                .unwrap_or(OTHER_ROUTE),
            None => UNMATCHED_ROUTE,
        })
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        ROUTES[self.0]
    }
}

/// Handles of the metrics recorded on every request and every token, registered once
/// with the recorder: the hot path then skips the registry lookup (hashing the name
/// and labels, locking a shard) and the `status` label's allocation.
struct HotPath {
    /// `HTTP_DURATION` by route.
    http_duration: [Histogram; ROUTES.len()],
    /// `HTTP_REQUESTS` with status 200, by route; other statuses are looked up.
    http_ok: [Counter; ROUTES.len()],
    mint_duration: Histogram,
    /// `TOKENS_ISSUED` by algorithm, then method.
    issued: [[Counter; 2]; 2],
}

static HOT_PATH: OnceLock<HotPath> = OnceLock::new();

impl HotPath {
    fn register() -> Self {
        let issued = |alg: JwsAlgorithm| {
            [AuthMethod::Mtls, AuthMethod::PrivateKeyJwt].map(
                |m| metrics::counter!(TOKENS_ISSUED, "alg" => alg.as_str(), "method" => m.as_str()),
            )
        };
        Self {
            http_duration: ROUTES.map(|r| metrics::histogram!(HTTP_DURATION, "route" => r)),
            http_ok: ROUTES
                .map(|r| metrics::counter!(HTTP_REQUESTS, "route" => r, "status" => "200")),
            mint_duration: metrics::histogram!(MINT_DURATION),
            issued: [issued(JwsAlgorithm::Es256), issued(JwsAlgorithm::EdDsa)],
        }
    }
}

/// Records one answered HTTP request.
pub fn http_request(route: Route, status: StatusCode, took: Duration) {
    let Some(hot) = HOT_PATH.get() else {
        return; // no recorder installed: metrics are off
    };
    hot.http_duration[route.0].record(took.as_secs_f64());
    if status == StatusCode::OK {
        hot.http_ok[route.0].increment(1);
    } else {
        metrics::counter!(HTTP_REQUESTS, "route" => route.as_str(), "status" => status.as_str().to_owned())
            .increment(1);
    }
}

/// Records one minted token: signed with `alg`, for a caller attested by `method`,
/// in `took`.
pub fn token_minted(alg: JwsAlgorithm, method: AuthMethod, took: Duration) {
    let Some(hot) = HOT_PATH.get() else {
        return;
    };
    hot.mint_duration.record(took.as_secs_f64());
    let alg = match alg {
        JwsAlgorithm::Es256 => 0,
        JwsAlgorithm::EdDsa => 1,
    };
    let method = match method {
        AuthMethod::Mtls => 0,
        AuthMethod::PrivateKeyJwt => 1,
    };
    hot.issued[alg][method].increment(1);
}

/// The [`SIGNING_KEY_AGE`] samples of the keys in force, each `(kid, state, age in
/// seconds)`, in Prometheus text format, to append to the recorder's page. Rendered
/// per scrape rather than recorded as gauges: the recorder never forgets a label set,
/// so every key dropped from the keyring, and every state a key has left, would stay
/// on the page with a frozen age — wrong, and one series more per rotation, without
/// bound.
pub fn render_key_ages<'a>(keys: impl IntoIterator<Item = (&'a str, &'a str, f64)>) -> String {
    use std::fmt::Write as _;
    let mut page = format!(
        "# HELP {SIGNING_KEY_AGE} Age of each published signing key.\n# TYPE {SIGNING_KEY_AGE} gauge\n"
    );
    for (kid, state, age) in keys {
        let _ = writeln!(
            page,
            "{SIGNING_KEY_AGE}{{kid=\"{}\",state=\"{}\"}} {age}",
            label_value(kid),
            label_value(state)
        );
    }
    page
}

/// A Prometheus label value, escaped (text format: backslash, quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder =
                match builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS) {
                    Ok(b) => b,
                    // Only an empty bucket list is refused; BUCKETS is not empty.
                    Err(_) => PrometheusBuilder::new(),
                };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding
            // program); then this handle renders an empty page rather than failing.
            let _ = metrics::set_global_recorder(recorder);
            // After the recorder, or the handles would record into nothing.
            let _ = HOT_PATH.set(HotPath::register());
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_stay_within_the_fixed_set() {
        assert_eq!(Route::of(Some(TOKEN_PATH)).as_str(), TOKEN_PATH);
        assert_eq!(Route::of(Some("/metrics")).as_str(), "/metrics");
        // A route added to the router but not here is counted, under a bounded label.
        assert_eq!(Route::of(Some("/v1/new")).as_str(), "other");
        assert_eq!(Route::of(None).as_str(), "unmatched");
    }

    /// The value of the sample line `series` (name and labels, as rendered).
    fn sample(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn key_ages_list_exactly_the_keys_given_escaped() {
        let page = render_key_ages([("k1", "active", 12.0), ("k\"2\\", "next", 0.5)]);
        let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                r#"baton_signing_key_age_seconds{kid="k1",state="active"} 12"#,
                r#"baton_signing_key_age_seconds{kid="k\"2\\",state="next"} 0.5"#,
            ],
            "{page}"
        );
        // A key no longer in force is no longer on the page.
        let later = render_key_ages([("k3", "active", 1.0)]);
        assert!(!later.contains("k1"), "{later}");
    }

    #[test]
    fn registered_handles_and_looked_up_series_both_reach_the_page() {
        let handle = handle();
        // A route no other test's router serves, so parallel tests add nothing to it.
        let route = Route::of(Some("/test-only"));
        let ok = format!(r#"{HTTP_REQUESTS}{{route="other",status="200"}}"#);
        let refused = format!(r#"{HTTP_REQUESTS}{{route="other",status="401"}}"#);
        let before = handle.render();
        let (ok0, refused0) = (
            sample(&before, &ok).unwrap_or(0.0),
            sample(&before, &refused).unwrap_or(0.0),
        );
        http_request(route, StatusCode::OK, Duration::from_micros(80));
        http_request(route, StatusCode::OK, Duration::from_micros(90));
        http_request(route, StatusCode::UNAUTHORIZED, Duration::from_micros(70));
        let after = handle.render();
        assert_eq!(sample(&after, &ok), Some(ok0 + 2.0), "{after}");
        assert_eq!(sample(&after, &refused), Some(refused0 + 1.0), "{after}");

        let issued = format!(r#"{TOKENS_ISSUED}{{alg="EdDSA",method="tls_client_auth"}}"#);
        let issued0 = sample(&handle.render(), &issued).unwrap_or(0.0);
        token_minted(
            JwsAlgorithm::EdDsa,
            AuthMethod::Mtls,
            Duration::from_micros(30),
        );
        // Other tests may mint in parallel: at least this one was counted.
        assert!(sample(&handle.render(), &issued).is_some_and(|n| n >= issued0 + 1.0));
    }
}
