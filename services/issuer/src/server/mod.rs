//! The issuer's HTTP API (SPEC §5). Handlers are thin: decode the form, call the
//! concept (attestation, policy, minting, introspection), map the typed result to an
//! RFC error.

mod client_auth;
mod error;
mod form;
mod introspection;
pub mod listener;
mod ops;
mod ratelimit;
mod revocation;
mod svid;
pub mod tls;
mod token;
mod wellknown;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use baton_proto::metadata::{
    AuthorizationServerMetadata, INTROSPECT_PATH, JWKS_PATH, METADATA_PATH, REVOKE_PATH, SVID_PATH,
    TOKEN_PATH,
};
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;
pub use ratelimit::{DEFAULT_INTROSPECT_RATE, RateLimiter};

use crate::attest::Attestor;
use crate::introspect::Introspector;
use crate::keyring::Keyring;
use crate::metrics as m;
use crate::policy::PolicyStore;
use crate::replica::StoreHealth;
use crate::svid::SvidIssuer;
use crate::visibility::Visibility;

/// The keyring with the documents that publish it, swapped as one on every rotation
/// so that a request sees one consistent generation.
pub struct Published {
    keyring: Keyring,
    jwks_body: Bytes,
    metadata_body: Bytes,
}

impl Published {
    fn new(issuer: &str, keyring: Keyring) -> Self {
        let mut algs = Vec::new();
        for key in keyring.keys() {
            if !algs.contains(&key.alg()) {
                algs.push(key.alg());
            }
        }
        let metadata = AuthorizationServerMetadata::for_issuer(issuer, &algs);
        Self {
            jwks_body: json_bytes(keyring.jwks()),
            metadata_body: json_bytes(&metadata),
            keyring,
        }
    }

    /// The keyring of this generation.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }
}

/// Everything a request handler needs, built once at start.
pub struct Issuer {
    issuer: String,
    /// Read lock-free by every request; replaced whole by a rotation or revocation.
    published: ArcSwap<Published>,
    attestor: Attestor,
    /// Shares the attestor's replay ledger and deny list.
    introspector: Introspector,
    policy: Arc<PolicyStore>,
    token_ttl: Duration,
    limiter: RateLimiter,
    /// Introspections and revocations per caller: each one costs a signature check and
    /// a ledger write, and one authenticated identity must not take them all.
    check_limiter: RateLimiter,
    /// `Cache-Control` of the JWKS.
    jwks_cache_control: HeaderValue,
    metrics: PrometheusHandle,
    /// `POST /v1/svid`; absent, the endpoint answers 404.
    enrollment: Option<Enrollment>,
    /// Reachability of the distributed store; absent for the embedded one.
    store_health: Option<Arc<StoreHealth>>,
    /// Largest request body read (413 beyond it).
    max_body_bytes: usize,
    /// The call graph and anomaly signals; absent, nothing is recorded.
    visibility: Option<Arc<Visibility>>,
}

/// What `POST /v1/svid` needs beside attestation: the CA and join tokens, and its own
/// per-identity rate limit (certificates are requested far less often than tokens).
pub struct Enrollment {
    issuer: SvidIssuer,
    limiter: RateLimiter,
}

impl Issuer {
    /// Assembles the handler state. `introspector` must share `attestor`'s replay
    /// ledger and deny list, so that assertions, tokens and revoked sessions live in
    /// one store and a denied identity is refused everywhere.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        issuer: String,
        keyring: Keyring,
        attestor: Attestor,
        introspector: Introspector,
        policy: Arc<PolicyStore>,
        token_ttl: Duration,
        limiter: RateLimiter,
        jwks_max_age: Duration,
        metrics: PrometheusHandle,
    ) -> Self {
        let jwks_cache_control =
            HeaderValue::from_str(&format!("public, max-age={}", jwks_max_age.as_secs()))
                .unwrap_or(HeaderValue::from_static("max-age=60"));
        Self {
            published: ArcSwap::from_pointee(Published::new(&issuer, keyring)),
            issuer,
            attestor,
            introspector,
            policy,
            token_ttl,
            limiter,
            check_limiter: RateLimiter::new(DEFAULT_INTROSPECT_RATE, DEFAULT_INTROSPECT_RATE),
            jwks_cache_control,
            metrics,
            enrollment: None,
            store_health: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            visibility: None,
        }
    }

    /// Records every token request of an attested caller in `visibility`'s call graph,
    /// and feeds its anomaly signals.
    pub fn with_visibility(mut self, visibility: Arc<Visibility>) -> Self {
        self.visibility = Some(visibility);
        self
    }

    /// The call graph and anomaly signals, when recorded.
    pub fn visibility(&self) -> Option<&Visibility> {
        self.visibility.as_deref()
    }

    /// Reads request bodies up to `bytes` (default [`DEFAULT_MAX_BODY_BYTES`]); a
    /// larger one is answered 413.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Fails closed while the distributed store is unreachable: every endpoint that
    /// mints, consumes or revokes answers 503 with `Retry-After`, and `/readyz` 503.
    pub fn with_store_health(mut self, health: Arc<StoreHealth>) -> Self {
        self.store_health = Some(health);
        self
    }

    /// Whether the store (embedded: always; distributed: at the last check) answers.
    pub fn store_is_up(&self) -> bool {
        self.store_health.as_ref().is_none_or(|h| h.is_up())
    }

    /// Allows each caller `per_second` introspections and revocations together a
    /// second, and as many at once (default [`DEFAULT_INTROSPECT_RATE`]).
    pub fn with_introspect_rate_limit(mut self, per_second: u32) -> Self {
        self.check_limiter = RateLimiter::new(per_second, per_second);
        self
    }

    /// Serves `POST /v1/svid` with `issuer`, allowing each identity `per_minute`
    /// requests a minute.
    pub fn with_enrollment(mut self, issuer: SvidIssuer, per_minute: u32) -> Self {
        self.enrollment = Some(Enrollment {
            issuer,
            limiter: RateLimiter::per_minute(per_minute),
        });
        self
    }

    /// The current keyring generation: one atomic load, no lock.
    pub fn published(&self) -> Guard<Arc<Published>> {
        self.published.load()
    }

    /// Serves `keyring` from the next request on (after a rotation or revocation).
    pub fn publish(&self, keyring: Keyring) {
        self.published
            .store(Arc::new(Published::new(&self.issuer, keyring)));
    }

    /// Folds the latency samples recorded since the last call into their histogram
    /// buckets. The recorder keeps every sample until then (scraping `/metrics` does
    /// it too), so an issuer nobody scrapes must call this every few seconds or its
    /// memory grows with every request.
    pub fn metrics_upkeep(&self) {
        self.metrics.run_upkeep();
    }

    /// Takes one introspection or revocation from `caller`'s bucket: 429 with
    /// `Retry-After` when it is empty.
    fn check_rate(&self, caller: &baton_proto::SpiffeId) -> Result<(), ApiError> {
        self.check_limiter
            .check(caller)
            .map_err(|wait| ApiError::rate_limited(wait.as_secs_f64().ceil() as u64))
    }

    /// Forgets idle callers' rate-limit state; call periodically.
    pub fn housekeeping(&self) {
        self.limiter.forget_idle();
        self.check_limiter.forget_idle();
        if let Some(enrollment) = &self.enrollment {
            enrollment.limiter.forget_idle();
        }
    }
}

/// The current time in Unix seconds, the resolution of JWT times.
fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    // Serializing plain data structures to memory cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Largest request body read unless configured (`max_body_bytes`). A token request
/// with a client assertion carrying a 4-certificate `x5c` is under 12 KiB; a CSR is at
/// most 16 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared handler state.
pub type AppState = Arc<Issuer>;

/// The router, with body limit, timeout and request metrics. No listener: the
/// caller serves it with [`listener::Connections`], or drives it in tests with
/// `oneshot`.
pub fn app(state: AppState, request_timeout: Duration) -> Router {
    let body_limit = state.max_body_bytes;
    Router::new()
        .route(TOKEN_PATH, post(token::token))
        .route(SVID_PATH, post(svid::svid))
        .route(INTROSPECT_PATH, post(introspection::introspect))
        .route(REVOKE_PATH, post(revocation::revoke))
        .route(JWKS_PATH, get(wellknown::jwks))
        .route(METADATA_PATH, get(wellknown::metadata))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::not_found() })
        .with_state(Arc::clone(&state))
        .layer(middleware::from_fn_with_state(
            Front {
                state,
                request_timeout,
            },
            front,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
}

/// What [`front`] needs.
#[derive(Clone)]
struct Front {
    state: AppState,
    request_timeout: Duration,
}

/// Records every request's route, status and latency, bounds its time (408), and
/// fails closed while the distributed store is unreachable. One middleware for all
/// three: each `from_fn` layer boxes the request's future once more; and the timeout
/// inside the metrics, so that a 408 is counted like any other answer.
async fn front(State(front): State<Front>, req: Request, next: Next) -> Response {
    let route = m::Route::of(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let start = Instant::now();
    let answer = async {
        if front.state.store_is_up() {
            next.run(req).await
        } else {
            store_down(req, next).await
        }
    };
    // The whole request: reading the body (a client that sends it slowly) and the
    // handler. Dropping the future cancels both.
    let response = match tokio::time::timeout(front.request_timeout, answer).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(front.request_timeout).into_response(),
    };
    m::http_request(route, response.status(), start.elapsed());
    response
}

/// With the distributed store unreachable, no one-time id can be checked or recorded:
/// the endpoints that need the store answer 503 `temporarily_unavailable` with
/// `Retry-After` before doing anything, and `/readyz` says why. JWKS, metadata,
/// liveness and metrics keep answering from memory.
async fn store_down(req: Request, next: Next) -> Response {
    match req.uri().path() {
        TOKEN_PATH | INTROSPECT_PATH | REVOKE_PATH | SVID_PATH => {
            metrics::counter!(m::STORE_REFUSALS).increment(1);
            ApiError::unavailable("the shared store is unreachable; retry shortly").into_response()
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the shared store is unreachable\n",
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deny::DenyList;
    use crate::ledger::{MemoryLedger, ReplayLedger};
    use crate::policy::Policy;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, header};
    use baton_proto::claims::JwsAlgorithm;
    use tower::ServiceExt as _;

    const ISSUER: &str = "https://baton.example.org";

    /// The router over a fresh data directory, with a ledger of `capacity` entries.
    fn router(capacity: usize) -> (tempfile::TempDir, Router) {
        router_with_timeout(capacity, Duration::from_secs(5))
    }

    fn router_with_timeout(capacity: usize, timeout: Duration) -> (tempfile::TempDir, Router) {
        let (tmp, store, keyring) = crate::keyring::tests::keyring(JwsAlgorithm::Es256);
        let td = store.ca().trust_domain().clone();
        let deny = Arc::new(DenyList::new());
        let ledger: Arc<dyn ReplayLedger> = Arc::new(MemoryLedger::new(capacity, 0));
        let attestor = Attestor::new(
            vec![store.ca().cert_der().to_vec()],
            td.clone(),
            vec![ISSUER.to_owned()],
            Arc::clone(&deny),
            Arc::clone(&ledger),
        )
        .unwrap();
        let state = Arc::new(Issuer::new(
            ISSUER.to_owned(),
            keyring,
            attestor,
            Introspector::new(ISSUER.to_owned(), deny, ledger),
            Arc::new(PolicyStore::new(Policy::deny_all(), None, Some(td))),
            Duration::from_secs(60),
            RateLimiter::new(10, 10),
            Duration::from_secs(60),
            m::handle(),
        ));
        (tmp, app(state, timeout))
    }

    async fn send(router: &Router, req: HttpRequest<Body>) -> (StatusCode, String, String) {
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let cache = resp
            .headers()
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), cache)
    }

    fn form(path: &str, body: &str) -> HttpRequest<Body> {
        HttpRequest::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    /// A request body that never arrives: a client that stalls after its head.
    struct Stalled;

    impl axum::body::HttpBody for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_request_over_request_timeout_is_408_json_and_counted() {
        let (_tmp, router) = router_with_timeout(10, Duration::from_millis(50));
        let series = format!(
            r#"{}{{route="{TOKEN_PATH}",status="408"}}"#,
            m::HTTP_REQUESTS
        );
        let count = || {
            m::handle()
                .render()
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let before = count();
        let req = HttpRequest::post(TOKEN_PATH)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::new(Stalled))
            .unwrap();
        let (status, body, cache) = send(&router, req).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "temporarily_unavailable", "{body}");
        assert!(json["error_description"].is_string(), "{body}");
        assert_eq!(cache, "no-store");
        // Counted by the request metrics like any other answer.
        assert_eq!(count(), before + 1.0);
    }

    #[tokio::test]
    async fn readyz_is_503_while_the_ledger_is_full() {
        let get = || HttpRequest::get("/readyz").body(Body::empty()).unwrap();
        let (_tmp, full) = router(0);
        let (status, body, _) = send(&full, get()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("replay ledger is full"), "{body}");
        let (_tmp, roomy) = router(10);
        assert_eq!(send(&roomy, get()).await.0, StatusCode::OK);
    }

    #[test]
    fn stale_assertion_is_invalid_client_and_an_unreachable_ledger_is_503_with_retry_after() {
        use crate::attest::AttestError;
        let stale = ApiError::from(AttestError::BeforeLedgerEpoch).into_response();
        assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
        assert!(stale.headers().get(header::RETRY_AFTER).is_none());
        let down = ApiError::from(AttestError::LedgerUnavailable).into_response();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn introspection_and_revocation_require_client_authentication() {
        let (_tmp, router) = router(10);
        for path in [INTROSPECT_PATH, REVOKE_PATH] {
            let (status, body, cache) = send(&router, form(path, "token=a.b.c")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            assert!(body.contains("invalid_client"), "{path}: {body}");
            assert_eq!(cache, "no-store");

            // RFC 7521 §4.2: an assertion without its type is malformed, not anonymous.
            let (status, body, _) =
                send(&router, form(path, "token=a.b.c&client_assertion=x")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert!(body.contains("invalid_request"), "{path}: {body}");

            let (status, body, _) = send(&router, form(path, "token_type_hint=x")).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{path}: missing token: {body}"
            );
        }
    }
}
