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
/// Outstanding join tokens revoked (`baton join-tokens revoke`).
pub const JOIN_TOKENS_REVOKED: &str = "baton_join_tokens_revoked_total";

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
