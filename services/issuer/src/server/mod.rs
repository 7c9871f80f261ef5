//! The issuer's HTTP API (SPEC §5). Handlers are thin: decode the form, call the
//! concept (attestation, policy, minting), map the typed result to an RFC error.

mod error;
mod form;
mod ops;
mod ratelimit;
pub mod tls;
mod token;
mod wellknown;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use baton_proto::metadata::{AuthorizationServerMetadata, JWKS_PATH, METADATA_PATH, TOKEN_PATH};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;
pub use ratelimit::RateLimiter;

use crate::attest::Attestor;
use crate::keyring::Keyring;
use crate::metrics as m;
use crate::policy::PolicyStore;

/// Everything a request handler needs, built once at start.
pub struct Issuer {
    issuer: String,
    keyring: Keyring,
    attestor: Attestor,
    policy: Arc<PolicyStore>,
    token_ttl: Duration,
    limiter: RateLimiter,
    /// `Cache-Control` of the JWKS, and the JWKS and metadata documents, serialized
    /// once: they change only with the keyring.
    jwks_cache_control: HeaderValue,
    jwks_body: Bytes,
    metadata_body: Bytes,
    metrics: PrometheusHandle,
}

impl Issuer {
    /// Assembles the handler state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        issuer: String,
        keyring: Keyring,
        attestor: Attestor,
        policy: Arc<PolicyStore>,
        token_ttl: Duration,
        limiter: RateLimiter,
        jwks_max_age: Duration,
        metrics: PrometheusHandle,
    ) -> Self {
        let mut algs = Vec::new();
        for key in keyring.keys() {
            if !algs.contains(&key.alg()) {
                algs.push(key.alg());
            }
        }
        let metadata = AuthorizationServerMetadata::for_issuer(&issuer, &algs);
        let jwks_cache_control =
            HeaderValue::from_str(&format!("public, max-age={}", jwks_max_age.as_secs()))
                .unwrap_or(HeaderValue::from_static("max-age=60"));
        Self {
            jwks_body: json_bytes(keyring.jwks()),
            metadata_body: json_bytes(&metadata),
            issuer,
            keyring,
            attestor,
            policy,
            token_ttl,
            limiter,
            jwks_cache_control,
            metrics,
        }
    }

    /// Forgets idle callers' rate-limit state; call periodically.
    pub fn housekeeping(&self) {
        self.limiter.forget_idle();
    }
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    // Serializing plain data structures to memory cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Shared handler state.
pub type AppState = Arc<Issuer>;

/// The router, with body limit, timeout and request metrics. No listener: the
/// caller serves it over TLS, plain HTTP, or drives it in tests with `oneshot`.
pub fn app(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(token::token))
        .route(JWKS_PATH, get(wellknown::jwks))
        .route(METADATA_PATH, get(wellknown::metadata))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::not_found() })
        .with_state(state)
        .layer(middleware::from_fn(record_request))
        .layer(DefaultBodyLimit::max(form::MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
}

async fn record_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| match p.as_str() {
            // Static strings keep label values bounded whatever the path.
            TOKEN_PATH => TOKEN_PATH,
            JWKS_PATH => JWKS_PATH,
            METADATA_PATH => METADATA_PATH,
            "/healthz" => "/healthz",
            "/readyz" => "/readyz",
            "/metrics" => "/metrics",
            _ => "other",
        });
    let start = Instant::now();
    let response = next.run(req).await.into_response();
    metrics::histogram!(m::HTTP_DURATION, "route" => route).record(start.elapsed().as_secs_f64());
    metrics::counter!(m::HTTP_REQUESTS, "route" => route, "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}
