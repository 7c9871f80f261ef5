//! Fetching the issuer's JWKS and keeping it fresh (SPEC §8, feature `fetch`).
//!
//! One background Tokio task per verifier refreshes the key set before the
//! `Cache-Control: max-age` of the last fetch runs out, retries with backoff while the
//! issuer is unreachable (the cache serves the old keys up to `max_stale` past
//! `max-age`), and refetches on an unknown `kid` at most once per
//! `min_refresh_interval`, however many unknown kids arrive: `kid` is
//! attacker-controlled, and each one must not cost the issuer a request.
//!
//! `verify` never waits for any of this: it only raises a flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_proto::jwks::Jwks;
use reqwest::header::{ACCEPT, CACHE_CONTROL, HeaderMap};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::keys::{KeyStore, KeyTrust, MAX_JWKS_BYTES, TrustedSet};
use super::{BuildError, unix_now};

/// `max-age` assumed when the JWKS response names none: short, so a rotation or an
/// emergency revocation reaches this verifier soon.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Bounds on the `max-age` honoured: a zero or `no-cache` answer must not make the
/// verifier spin, and a year-long one must not pin revoked keys.
const MIN_MAX_AGE: Duration = Duration::from_secs(1);
const MAX_MAX_AGE: Duration = Duration::from_secs(3600);
/// First and largest pause between attempts while the issuer is unreachable.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Whole-request and connect timeouts of the default HTTP client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to fetch, as the builder configured it.
pub(crate) struct FetchConfig {
    pub(crate) url: String,
    pub(crate) client: reqwest::Client,
    pub(crate) max_stale: Duration,
    pub(crate) min_refresh_interval: Duration,
}

/// The default client: rustls with ring, trusting only the trust bundle (the issuer's
/// server certificate comes from the trust domain's CA).
pub(crate) fn default_client(trust: &KeyTrust) -> Result<reqwest::Client, BuildError> {
    let roots = rustls::RootCertStore {
        roots: trust.anchors().to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(BuildError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        // Keys are trusted by their certificates, not by the transport (SPEC §2), so
        // a CDN redirect is harmless; a redirect loop is not.
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(BuildError::HttpClient)
}

/// When the next attempt is due, and what the last one did.
struct Schedule {
    last_attempt: Option<Instant>,
    next_due: Instant,
    failures: u32,
}

/// Fetches the JWKS into a [`KeyStore`]; shared by the verifier and its refresh task.
pub(crate) struct Fetcher {
    config: FetchConfig,
    trust: Arc<KeyTrust>,
    keys: Arc<KeyStore>,
    /// Held across a fetch, so concurrent refreshes coalesce into one request.
    schedule: Mutex<Schedule>,
    /// Set by `verify` on an unknown kid; cleared when a fetch starts.
    wanted: AtomicBool,
    wake: Notify,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("url", &self.config.url)
            .field("max_stale", &self.config.max_stale)
            .field("min_refresh_interval", &self.config.min_refresh_interval)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Makes the first fetch; the verifier is not built unless it yields a trusted key.
    pub(crate) async fn start(
        config: FetchConfig,
        trust: Arc<KeyTrust>,
    ) -> Result<(Arc<Self>, Arc<KeyStore>), BuildError> {
        let (set, max_age) = fetch(&config, &trust).await?;
        let usable_for = max_age + config.max_stale;
        let keys = Arc::new(KeyStore::new(set, Some(usable_for)));
        let now = Instant::now();
        let fetcher = Arc::new(Self {
            config,
            trust,
            keys: Arc::clone(&keys),
            schedule: Mutex::new(Schedule {
                last_attempt: Some(now),
                next_due: now + refresh_after(max_age),
                failures: 0,
            }),
            wanted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        Ok((fetcher, keys))
    }

    /// Asks the background task for a refresh; never blocks. Any number of calls
    /// between two fetches amount to one request.
    pub(crate) fn want_refresh(&self) {
        if !self.wanted.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Refetches now unless a fetch started less than `min_refresh_interval` ago
    /// (then the keys are as fresh as the rate limit allows, and this returns `Ok`).
    pub(crate) async fn refresh(&self) -> Result<(), BuildError> {
        let mut schedule = self.schedule.lock().await;
        if self.recently_attempted(&schedule) {
            return Ok(());
        }
        self.attempt(&mut schedule).await
    }

    fn recently_attempted(&self, schedule: &Schedule) -> bool {
        schedule
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.config.min_refresh_interval)
    }

    /// One fetch; on success the key set is replaced, on failure the old keys stay
    /// (and age out of the cache at their bound).
    async fn attempt(&self, schedule: &mut Schedule) -> Result<(), BuildError> {
        let started = Instant::now();
        schedule.last_attempt = Some(started);
        // Unknown kids seen from here on ask for the next fetch, not this one.
        self.wanted.store(false, Ordering::Release);
        match fetch(&self.config, &self.trust).await {
            Ok((set, max_age)) => {
                self.keys
                    .replace(set, Some(max_age + self.config.max_stale));
                schedule.failures = 0;
                schedule.next_due = started + refresh_after(max_age);
                Ok(())
            }
            Err(error) => {
                schedule.failures = schedule.failures.saturating_add(1);
                schedule.next_due = started + backoff(schedule.failures);
                Err(error)
            }
        }
    }

    /// The background task: a scheduled refresh before `max-age` runs out, and a
    /// rate-limited one when `verify` met an unknown kid. Runs until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            let next_due = self.schedule.lock().await.next_due;
            let asked = tokio::select! {
                biased;
                () = tokio::time::sleep_until(next_due) => false,
                () = self.wake.notified() => true,
            };
            let mut schedule = self.schedule.lock().await;
            if asked {
                // The refresh-storm guard: wait out the interval since the last
                // attempt; the unknown kids arriving meanwhile ride on this fetch.
                if let Some(last) = schedule.last_attempt {
                    let earliest = last + self.config.min_refresh_interval;
                    if earliest > Instant::now() {
                        drop(schedule);
                        tokio::time::sleep_until(earliest).await;
                        schedule = self.schedule.lock().await;
                    }
                }
                // A fetch that started after the request (scheduled, or a `refresh()`
                // while this task waited) has already answered it.
                if !self.wanted.load(Ordering::Acquire) || self.recently_attempted(&schedule) {
                    continue;
                }
            } else if Instant::now() < schedule.next_due {
                // Rescheduled by a `refresh()` in the meantime.
                continue;
            }
            // Failures are retried on the backoff schedule; the cache serves the old
            // keys until their bound, and `verify` then reports `KeysUnavailable`.
            let _ = self.attempt(&mut schedule).await;
        }
    }
}

/// GET the JWKS, bounded in size, and check its keys.
async fn fetch(
    config: &FetchConfig,
    trust: &KeyTrust,
) -> Result<(TrustedSet, Duration), BuildError> {
    let transport = |source| BuildError::Fetch {
        url: config.url.clone(),
        source,
    };
    let mut response = config
        .client
        .get(&config.url)
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(transport)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(BuildError::FetchStatus {
            url: config.url.clone(),
            status: response.status().as_u16(),
        });
    }
    let too_large = BuildError::JwksTooLarge {
        limit: MAX_JWKS_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large);
    }
    let max_age = max_age(response.headers());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    let jwks: Jwks = serde_json::from_slice(&body).map_err(BuildError::Jwks)?;
    let set = trust.check_set(&jwks, unix_now(), Some(max_age + config.max_stale))?;
    Ok((set, max_age))
}

/// When to refresh after a fetch that said `max_age`: at three quarters of it, so a
/// slow or failed attempt still has time before the keys go stale.
fn refresh_after(max_age: Duration) -> Duration {
    max_age * 3 / 4
}

/// Pause before attempt number `failures + 1`: 1 s, 2 s, 4 s, … up to 30 s.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    (FIRST_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

/// The `max-age` of a response (RFC 9111 §5.2.2.1), clamped to the honoured bounds.
fn max_age(headers: &HeaderMap) -> Duration {
    let values = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    parse_max_age(values)
        .unwrap_or(DEFAULT_MAX_AGE)
        .clamp(MIN_MAX_AGE, MAX_MAX_AGE)
}

/// `max-age=N` of the `Cache-Control` values; `no-cache` / `no-store` count as 0.
fn parse_max_age<'a>(values: impl Iterator<Item = &'a str>) -> Option<Duration> {
    let mut found = None;
    for directive in values.flat_map(|v| v.split(',')).map(str::trim) {
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age") {
            // RFC 9111 §1.2.2: delta-seconds; a quoted form is tolerated, and a value
            // too large to represent means "very long" (clamped by the caller).
            let digits = value.trim().trim_matches('"');
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let secs = digits.parse::<u64>().unwrap_or(u64::MAX);
            found = Some(found.map_or(secs, |f: u64| f.min(secs)));
        }
    }
    found.map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Option<u64> {
        parse_max_age(values.iter().copied()).map(|d| d.as_secs())
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(parse(&["public, max-age=300"]), Some(300));
        assert_eq!(parse(&["MAX-AGE = 60"]), Some(60));
        assert_eq!(parse(&["max-age=\"30\""]), Some(30));
        assert_eq!(parse(&["max-age=60", "max-age=10"]), Some(10));
        assert_eq!(parse(&["max-age=99999999999999999999999"]), Some(u64::MAX));
        assert_eq!(parse(&["public, no-cache"]), Some(0));
        assert_eq!(parse(&["no-store, max-age=600"]), Some(0));
        assert_eq!(parse(&["public"]), None);
        assert_eq!(parse(&["max-age=-1", "max-age=abc", "max-age="]), None);
        assert_eq!(parse(&["s-maxage=10"]), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn max_age_is_clamped() {
        let mut headers = HeaderMap::new();
        assert_eq!(max_age(&headers), DEFAULT_MAX_AGE);
        headers.insert(CACHE_CONTROL, "max-age=0".parse().unwrap());
        assert_eq!(max_age(&headers), MIN_MAX_AGE);
        headers.insert(CACHE_CONTROL, "max-age=31536000".parse().unwrap());
        assert_eq!(max_age(&headers), MAX_MAX_AGE);
        headers.insert(CACHE_CONTROL, "public, max-age=300".parse().unwrap());
        assert_eq!(max_age(&headers), Duration::from_secs(300));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(refresh_after(Duration::from_secs(300)).as_secs(), 225);
    }
}
