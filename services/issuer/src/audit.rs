//! Audit events: one structured `tracing` event per issuance and per denial, under
//! the `baton::audit` target so operators can route them apart from diagnostics.
//! They name who asked, for whom, the outcome and the token's `jti` — never a token,
//! an assertion or key material.

use baton_proto::SpiffeId;

use crate::mint::TokenSpec;

/// Target of every audit event.
pub const TARGET: &str = "baton::audit";

/// A token was minted from `spec` under policy rule `rule` (1-based, file order).
pub fn issued(spec: &TokenSpec<'_>, jti: &str, exp: i64, method: &str, rule: usize) {
    tracing::info!(
        target: TARGET,
        event = "token.issued",
        caller = %spec.caller,
        audience = %spec.audience,
        jti,
        sid = spec.sid,
        scope = spec.scope.unwrap_or(""),
        method,
        rule,
        exp,
    );
}

/// A token request was refused. `caller` is known once attestation succeeded.
pub fn denied(caller: Option<&SpiffeId>, audience: Option<&str>, error: &str, reason: &str) {
    tracing::warn!(
        target: TARGET,
        event = "token.denied",
        caller = caller.map(SpiffeId::as_str).unwrap_or(""),
        // The audience is attacker-supplied: bounded so a log line stays a line.
        audience = audience.map(|a| truncate(a, 256)).unwrap_or(""),
        error,
        reason,
    );
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
