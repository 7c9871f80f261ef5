//! Audit events: one structured `tracing` event per issuance, denial, introspection,
//! consumption, replay attempt, revocation, identity revocation, workload certificate,
//! join-token revocation, key-encryption key rotation and anomaly signal, under the `baton::audit`
//! target so operators can route them apart from diagnostics. They name who asked, for whom, the outcome and the
//! token's `jti` and `sid` — never a token, a join token, an assertion or key
//! material. A `jti` is logged only once the token's signature verified; an
//! unverified token's claims are whatever an attacker wrote.

use baton_proto::SpiffeId;
use baton_proto::claims::AccessTokenClaims;

use crate::mint::TokenSpec;
use crate::svid::IssuedSvid;

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

/// A request to `endpoint` (`introspect`, `revoke`) was refused before any token was
/// looked at: the caller did not authenticate (`reason`, as in attestation metrics).
pub fn unauthenticated(endpoint: &str, error: &str, reason: &str) {
    tracing::warn!(
        target: TARGET,
        event = "request.unauthenticated",
        endpoint,
        error,
        reason,
    );
}

/// An introspection was answered: `active`, or inactive for `reason`. `claims` are the
/// token's when its signature verified.
pub fn introspected(
    caller: &SpiffeId,
    claims: Option<&AccessTokenClaims>,
    active: bool,
    reason: &str,
) {
    tracing::info!(
        target: TARGET,
        event = "token.introspected",
        caller = %caller,
        active,
        reason,
        jti = claims.map_or("", |c| c.jti.as_str()),
        sid = claims.map_or("", |c| c.sid.as_str()),
        sub = claims.map_or("", |c| c.sub.as_str()),
    );
}

/// A token was consumed: its one use, by its audience `caller`.
pub fn consumed(caller: &SpiffeId, claims: &AccessTokenClaims) {
    tracing::info!(
        target: TARGET,
        event = "token.consumed",
        caller = %caller,
        sub = %claims.sub,
        jti = claims.jti,
        sid = claims.sid,
        exp = claims.exp,
    );
}

/// A one-time id was presented again: an access token (`jti`, `sid`) or a client
/// assertion of `caller` (its `jti` is not logged: it was never verified as unique).
pub fn replayed(caller: &SpiffeId, kind: &str, claims: Option<&AccessTokenClaims>) {
    tracing::warn!(
        target: TARGET,
        event = "replay.attempt",
        kind,
        caller = %caller,
        jti = claims.map_or("", |c| c.jti.as_str()),
        sid = claims.map_or("", |c| c.sid.as_str()),
        sub = claims.map_or("", |c| c.sub.as_str()),
    );
}

/// A revocation request (RFC 7009) by `caller`: `result` is `revoked`, `not_a_token`,
/// `refused` or `unavailable`; `claims` when the token was authentic.
pub fn revocation(
    caller: &SpiffeId,
    result: &str,
    reason: &str,
    claims: Option<&AccessTokenClaims>,
) {
    tracing::info!(
        target: TARGET,
        event = "session.revocation",
        caller = %caller,
        result,
        reason,
        jti = claims.map_or("", |c| c.jti.as_str()),
        sid = claims.map_or("", |c| c.sid.as_str()),
        sub = claims.map_or("", |c| c.sub.as_str()),
        until = claims.map_or(0, |c| c.exp),
    );
}

/// An identity was put on the deny list (admin socket); `newly` is false when it
/// already was.
pub fn identity_revoked(id: &SpiffeId, newly: bool) {
    tracing::warn!(
        target: TARGET,
        event = "identity.revoked",
        id = %id,
        newly,
        via = "admin_socket",
    );
}

/// A workload certificate was issued by `POST /v1/svid`; `method` is `join_token`
/// (first certificate) or the client authentication of a renewal.
pub fn svid_issued(svid: &IssuedSvid, method: &str) {
    tracing::info!(
        target: TARGET,
        event = "svid.issued",
        id = %svid.id,
        serial = svid.serial,
        method,
        not_after = svid.not_after.unix_timestamp(),
    );
}

/// A `POST /v1/svid` request was refused. `id` is known once the join token was found
/// or the renewing caller attested; `method` is how the caller tried to prove itself.
pub fn svid_denied(id: Option<&SpiffeId>, method: &str, error: &str, reason: &str) {
    tracing::warn!(
        target: TARGET,
        event = "svid.denied",
        id = id.map(SpiffeId::as_str).unwrap_or(""),
        method,
        error,
        reason,
    );
}

/// Outstanding join tokens were revoked (admin socket), by handle or identity.
pub fn join_token_revoked(handle: &str, id: &SpiffeId) {
    tracing::warn!(
        target: TARGET,
        event = "join_token.revoked",
        handle,
        id = %id,
        via = "admin_socket",
    );
}

/// Every sealed secret was re-sealed from KEK `old_kek_id` to `new_kek_id` (public
/// identifiers, never key bytes): `files` in the data directory (the dev KEK file
/// counted), `shared` in Redis; `recovered` when an interrupted rotation was finished.
pub fn kek_rotated(
    old_kek_id: &str,
    new_kek_id: &str,
    files: usize,
    shared: usize,
    recovered: bool,
) {
    tracing::warn!(
        target: TARGET,
        event = "kek.rotated",
        old_kek_id,
        new_kek_id,
        files,
        shared,
        recovered,
    );
}

/// An anomaly signal was raised (thresholds in the configuration, `anomaly_*`). The
/// caller is attested; an audience of a new-audience signal was granted by policy.
pub fn anomaly(anomaly: &crate::visibility::model::AnomalyView) {
    tracing::warn!(
        target: TARGET,
        event = "anomaly",
        kind = anomaly.kind.as_str(),
        caller = anomaly.caller.as_deref().unwrap_or(""),
        audience = anomaly.audience.as_deref().unwrap_or(""),
        observed = anomaly.observed,
        threshold = anomaly.threshold,
        detail = %anomaly.detail,
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
