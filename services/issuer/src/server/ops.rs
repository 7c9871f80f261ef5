//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::ledger::LedgerError;
use crate::metrics as m;

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// `GET /readyz`: keys loaded and the store reachable. Not ready when the replay
/// ledger's store does not answer, or when the ledger is full of live entries: every
/// one-time use then fails closed (503) until the store is back or entries expire.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let _ = state.published().keyring().active();
    match state.introspector.ready(super::unix_now()).await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(LedgerError::Full) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the replay ledger is full of unexpired entries\n",
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the replay ledger's store is unreachable\n",
        ),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = time::OffsetDateTime::now_utc();
    let published = state.published();
    let ages = published.keyring().keys().iter().map(|key| {
        let age = (now - key.created_at()).as_seconds_f64().max(0.0);
        (key.kid(), key.state().as_str(), age)
    });
    let key_ages = m::render_key_ages(ages);
    state.metrics.run_upkeep();
    let mut page = state.metrics.render();
    page.push_str(&key_ages);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
}
