//! Prometheus metrics (SPEC §5 `/metrics`): one process-wide recorder, rendered by
//! the `/metrics` handler. Metric names live here, once.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Latency buckets in seconds: mint and verify take tens of microseconds, a request
/// with a cold attestation a few milliseconds.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

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
            handle
        })
        .clone()
}
