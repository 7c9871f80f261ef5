//! The issuer's configuration: one TOML file plus `BATON_*` environment overrides,
//! checked once at start into typed values (SPEC §9: every `serve` flag is also a key).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use baton_proto::claims::{DEFAULT_TOKEN_TTL_SECS, JwsAlgorithm, MAX_TOKEN_TTL_SECS};
use serde::{Deserialize, Deserializer};

use crate::pki::{MAX_SVID_TTL, MIN_SVID_TTL};

/// Keys that a `BATON_<KEY>` environment variable (or a `serve` flag) may override.
const ENV_KEYS: &[&str] = &[
    "listen",
    "http_listen",
    "issuer_url",
    "store",
    "policy",
    "token_ttl",
    "token_alg",
    "svid_ttl",
    "svid_rate_limit",
    "rate_limit",
    "rate_burst",
    "introspect_rate_limit",
    "request_timeout",
    "max_body_bytes",
    "max_connections",
    "tls_handshake_timeout",
    "header_read_timeout",
    "idle_timeout",
    "max_header_bytes",
    "max_headers",
    "http2_max_concurrent_streams",
    "jwks_max_age",
    "rotation_period",
    "log_format",
    "graph_max_edges",
    "graph_retention",
    "policy_report_window",
    "policy_report_min_denials",
    "anomaly_new_audience_after",
    "anomaly_rate_window",
    "anomaly_rate_factor",
    "anomaly_rate_min",
    "anomaly_burst_window",
    "anomaly_attestation_failures",
    "anomaly_replays",
];

/// `BATON_*` variables that are not configuration keys but mean something to `baton`:
/// every other `BATON_*` variable is reported as ignored (a misspelt override would
/// otherwise go unnoticed).
const OTHER_ENV: &[&str] = &[
    "BATON_DATA_DIR",
    "BATON_KEK_FILE",
    "BATON_INIT_FROM",
    "BATON_FAILPOINT",
];

/// Why a configuration was refused. Each names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of its allowed range.
    #[error("invalid configuration: `{key}` {problem}")]
    Range {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// Validated issuer configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTPS listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Plain-HTTP listen address, for use behind a TLS-terminating gateway; off unless set.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// Policy file (SPEC §6); with none, every token request is denied.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Access-token lifetime when the policy sets none (at most 300 s).
    #[serde(default = "default_token_ttl", deserialize_with = "duration")]
    pub token_ttl: Duration,
    /// X.509-SVID lifetime (5 s to 7 days), of `baton enroll` and `POST /v1/svid`.
    #[serde(default = "default_svid_ttl", deserialize_with = "duration")]
    pub svid_ttl: Duration,
    /// `POST /v1/svid` requests per minute allowed to one identity (its burst too):
    /// first certificates from join tokens bound to it and renewals.
    #[serde(default = "default_svid_rate_limit")]
    pub svid_rate_limit: u32,
    /// Issuer identifier (`iss` of every token, RFC 8414 `issuer`); defaults to
    /// `https://<listen>` (`localhost` when listening on all addresses).
    #[serde(default, deserialize_with = "issuer_url")]
    pub issuer_url: Option<String>,
    /// State store: `embedded` (the data directory), or a `redis://`, `rediss://` (TLS,
    /// on ring, trusting the system's CA store or `SSL_CERT_FILE`), `unix://` or
    /// `redis+sentinel://host[:port][,host[:port]…]/service[/db]` URL (distributed:
    /// every replica pointed at it shares keyring, ledger, deny list, join tokens and
    /// policy).
    #[serde(default = "default_store")]
    pub store: String,
    /// Algorithm of newly created signing keys: `ES256` (default) or `EdDSA`.
    #[serde(default = "default_token_alg")]
    pub token_alg: JwsAlgorithm,
    /// Token requests per second allowed to one caller (SPIFFE ID).
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Burst of token requests one caller may make above its rate.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Introspection and revocation requests per second allowed to one caller, and as
    /// many at once.
    #[serde(default = "default_introspect_rate_limit")]
    pub introspect_rate_limit: u32,
    /// Longest time one request may take before it is answered 408.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Largest request body read; a larger one is answered 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Connections open at once, both listeners together. Beyond it the issuer stops
    /// accepting: further connections wait in the kernel's backlog, costing no memory.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest time a client may take to finish the TLS handshake.
    #[serde(
        default = "default_tls_handshake_timeout",
        deserialize_with = "duration"
    )]
    pub tls_handshake_timeout: Duration,
    /// Longest time an HTTP/1.1 client may take to send a request's head (request line
    /// and headers), counted from when the issuer starts waiting for it: slowloris
    /// protection, and the keep-alive bound of an HTTP/1.1 connection between requests.
    #[serde(default = "default_header_read_timeout", deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1: request line and headers; HTTP/2: the decoded
    /// header list): 431 beyond it.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1.1 request: 431 beyond it.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Requests in progress at once on one HTTP/2 connection.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// `Cache-Control: max-age` of the JWKS; verifiers refresh keys within it.
    #[serde(default = "default_jwks_max_age", deserialize_with = "duration")]
    pub jwks_max_age: Duration,
    /// How long a key stays active before the issuer rotates by itself (`"off"`: only
    /// `baton keys rotate`). At most [`MAX_ROTATION_PERIOD`], so that a key's 90-day
    /// certificate outlives its time as `next` and `active` plus its last tokens.
    #[serde(default = "default_rotation_period", deserialize_with = "period")]
    pub rotation_period: Option<Duration>,
    /// Log format: JSON lines, text, or `auto` (text on a terminal, JSON otherwise).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Edges (caller, audience, scope) the call graph keeps at most; beyond it, the
    /// never-issued then least recently seen edges are evicted.
    #[serde(default = "default_graph_max_edges")]
    pub graph_max_edges: usize,
    /// An edge not seen for this long leaves the call graph.
    #[serde(default = "default_graph_retention", deserialize_with = "duration")]
    pub graph_retention: Duration,
    /// `baton policy report`: a rule that granted no token in this window is unused.
    #[serde(
        default = "default_policy_report_window",
        deserialize_with = "duration"
    )]
    pub policy_report_window: Duration,
    /// `baton policy report`: refusals of one caller for one audience in the window
    /// that make it a finding.
    #[serde(default = "default_policy_report_min_denials")]
    pub policy_report_min_denials: u64,
    /// Anomaly `new_audience`: raised for callers first seen at least this long ago.
    #[serde(
        default = "default_anomaly_new_audience_after",
        deserialize_with = "duration"
    )]
    pub anomaly_new_audience_after: Duration,
    /// Anomaly `rate_spike`: the window a caller's token rate is counted over.
    #[serde(default = "default_anomaly_window", deserialize_with = "duration")]
    pub anomaly_rate_window: Duration,
    /// Anomaly `rate_spike`: tokens in one window above this multiple of the caller's
    /// moving average (EWMA)…
    #[serde(default = "default_anomaly_rate_factor")]
    pub anomaly_rate_factor: u32,
    /// …and above this many.
    #[serde(default = "default_anomaly_rate_min")]
    pub anomaly_rate_min: u32,
    /// Anomalies `attestation_failures` and `replays`: the window they are counted over.
    #[serde(default = "default_anomaly_window", deserialize_with = "duration")]
    pub anomaly_burst_window: Duration,
    /// Anomaly `attestation_failures`: failures in one burst window that raise it.
    #[serde(default = "default_anomaly_attestation_failures")]
    pub anomaly_attestation_failures: u32,
    /// Anomaly `replays`: replayed assertions and tokens in one burst window.
    #[serde(default = "default_anomaly_replays")]
    pub anomaly_replays: u32,
}

/// How the issuer writes its logs (to stderr). Also `serve --log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    #[default]
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line (production).
    Json,
}

impl LogFormat {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// `Ok` when `ok`, else the range error of `key`.
fn in_range(key: &'static str, ok: bool, problem: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Range {
            key,
            problem: problem.to_owned(),
        })
    }
}

/// Largest `max_body_bytes`.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest `max_connections`.
const MAX_CONNECTIONS: usize = 1_000_000;

/// Longest `rotation_period`: a key is `next` for one period and `active` for the
/// next, and its certificate (`keyring::SIGNING_CERT_TTL`, 90 days) must cover both
/// with room to spare.
pub const MAX_ROTATION_PERIOD: Duration = Duration::from_secs(40 * 24 * 3600);

fn default_rotation_period() -> Option<Duration> {
    Some(Duration::from_secs(30 * 24 * 3600))
}

fn period<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "off" {
        return Ok(None);
    }
    humantime::parse_duration(&s).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is neither \"off\" nor a duration like \"30days\" ({e})"
        ))
    })
}

fn default_store() -> String {
    "embedded".to_owned()
}

fn default_token_alg() -> JwsAlgorithm {
    JwsAlgorithm::Es256
}

fn default_rate_limit() -> u32 {
    100
}

fn default_svid_rate_limit() -> u32 {
    60
}

fn default_rate_burst() -> u32 {
    200
}

fn default_introspect_rate_limit() -> u32 {
    crate::server::DEFAULT_INTROSPECT_RATE
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}

fn default_max_connections() -> usize {
    4096
}

fn default_tls_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_http2_max_concurrent_streams() -> u32 {
    100
}

fn default_graph_max_edges() -> usize {
    10_000
}

fn default_graph_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_policy_report_window() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_policy_report_min_denials() -> u64 {
    10
}

fn default_anomaly_new_audience_after() -> Duration {
    Duration::from_secs(3600)
}

fn default_anomaly_window() -> Duration {
    Duration::from_secs(60)
}

fn default_anomaly_rate_factor() -> u32 {
    5
}

fn default_anomaly_rate_min() -> u32 {
    100
}

fn default_anomaly_attestation_failures() -> u32 {
    20
}

fn default_anomaly_replays() -> u32 {
    5
}

fn default_jwks_max_age() -> Duration {
    Duration::from_secs(300)
}

fn issuer_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let url = url::Url::parse(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a URL ({e})")))?;
    // RFC 8414 §2: the issuer is an https URL with no query or fragment.
    if url.scheme() != "https" || url.query().is_some() || url.fragment().is_some() {
        return Err(serde::de::Error::custom(format!(
            "{s:?} must be an https URL without query or fragment"
        )));
    }
    Ok(Some(s.trim_end_matches('/').to_owned()))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(DEFAULT_TOKEN_TTL_SECS)
}

fn default_svid_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"60s\" or \"24h\" ({e})"
        ))
    })
}

/// One line: the message and, when known, the line it is about.
fn describe(e: &toml::de::Error, text: &str) -> String {
    let line = e.span().and_then(|span| {
        let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let end = text[span.start..]
            .find('\n')
            .map_or(text.len(), |i| span.start + i);
        text.get(start..end)
    });
    match line {
        Some(line) => format!("{} in `{}`", e.message().trim_end(), line.trim()),
        None => e.message().trim_end().to_owned(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            http_listen: None,
            policy: None,
            token_ttl: default_token_ttl(),
            svid_ttl: default_svid_ttl(),
            svid_rate_limit: default_svid_rate_limit(),
            issuer_url: None,
            store: default_store(),
            token_alg: default_token_alg(),
            rate_limit: default_rate_limit(),
            rate_burst: default_rate_burst(),
            introspect_rate_limit: default_introspect_rate_limit(),
            request_timeout: default_request_timeout(),
            max_body_bytes: default_max_body_bytes(),
            max_connections: default_max_connections(),
            tls_handshake_timeout: default_tls_handshake_timeout(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            jwks_max_age: default_jwks_max_age(),
            rotation_period: default_rotation_period(),
            log_format: LogFormat::Auto,
            graph_max_edges: default_graph_max_edges(),
            graph_retention: default_graph_retention(),
            policy_report_window: default_policy_report_window(),
            policy_report_min_denials: default_policy_report_min_denials(),
            anomaly_new_audience_after: default_anomaly_new_audience_after(),
            anomaly_rate_window: default_anomaly_window(),
            anomaly_rate_factor: default_anomaly_rate_factor(),
            anomaly_rate_min: default_anomaly_rate_min(),
            anomaly_burst_window: default_anomaly_window(),
            anomaly_attestation_failures: default_anomaly_attestation_failures(),
            anomaly_replays: default_anomaly_replays(),
        }
    }
}

impl Config {
    /// Parses a TOML configuration, applies `BATON_<KEY>` overrides from `env`, and
    /// validates the result.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.message().to_owned()))?;
        for (name, value) in env {
            let Some(key) = name.strip_prefix("BATON_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if ENV_KEYS.contains(&key.as_str()) {
                let value = match value.parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => toml::Value::String(value),
                };
                // Alone first, so that a bad value names the variable that set it.
                let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
                let alone =
                    toml::to_string(&alone).map_err(|e| ConfigError::Parse(e.to_string()))?;
                if let Err(e) = toml::from_str::<Config>(&alone) {
                    return Err(ConfigError::Parse(format!(
                        "{} (from the environment variable {name})",
                        describe(&e, &alone)
                    )));
                }
                table.insert(key, value);
            }
        }
        // Deserialize from text, not from the table, so that errors carry a position
        // and can name the offending line.
        let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let config: Config =
            toml::from_str(&merged).map_err(|e| ConfigError::Parse(describe(&e, &merged)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let max_token = Duration::from_secs(MAX_TOKEN_TTL_SECS);
        if self.token_ttl.is_zero() || self.token_ttl > max_token {
            return Err(ConfigError::Range {
                key: "token_ttl",
                problem: format!("must be between 1s and {}s", MAX_TOKEN_TTL_SECS),
            });
        }
        if !(MIN_SVID_TTL..=MAX_SVID_TTL).contains(&self.svid_ttl) {
            return Err(ConfigError::Range {
                key: "svid_ttl",
                problem: "must be between 5s and 7days".to_owned(),
            });
        }
        if let Some(url) = self.redis_url()
            && let Err(e) = baton_sdk::redis_store::RedisTarget::parse(url)
        {
            return Err(ConfigError::Range {
                key: "store",
                problem: format!(
                    "{:?} is neither \"embedded\" (the data directory) nor a usable Redis URL: {e}",
                    crate::shared::redact(url)
                ),
            });
        }
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return Err(ConfigError::Range {
                key: "rate_limit",
                problem: "and `rate_burst` must be at least 1".to_owned(),
            });
        }
        if self.introspect_rate_limit == 0 {
            return Err(ConfigError::Range {
                key: "introspect_rate_limit",
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.svid_rate_limit == 0 {
            return Err(ConfigError::Range {
                key: "svid_rate_limit",
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.request_timeout.is_zero() || self.request_timeout > Duration::from_secs(300) {
            return Err(ConfigError::Range {
                key: "request_timeout",
                problem: "must be between 1s and 300s".to_owned(),
            });
        }
        self.validate_limits()?;
        self.validate_visibility()?;
        if self.jwks_max_age.is_zero() || self.jwks_max_age > Duration::from_secs(86400) {
            return Err(ConfigError::Range {
                key: "jwks_max_age",
                problem: "must be between 1s and 24h".to_owned(),
            });
        }
        if let Some(period) = self.rotation_period {
            // The `next` key must have been published for a whole JWKS max-age before it
            // signs, or a verifier with a fresh cache would not know it yet.
            let min = 2 * self.jwks_max_age;
            if period < min || period > MAX_ROTATION_PERIOD {
                return Err(ConfigError::Range {
                    key: "rotation_period",
                    problem: format!(
                        "must be \"off\" or between twice `jwks_max_age` ({}s) and 40days",
                        min.as_secs()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The connection and request limits (docs/limits.md): each within a range that
    /// keeps the issuer serving and bounds what one client can hold.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let within = |d: Duration, min_ms: u64, max_s: u64| {
            d >= Duration::from_millis(min_ms) && d <= Duration::from_secs(max_s)
        };
        in_range(
            "max_body_bytes",
            (1024..=MAX_BODY_BYTES).contains(&self.max_body_bytes),
            "must be between 1024 and 16777216 (16 MiB)",
        )?;
        in_range(
            "max_connections",
            (1..=MAX_CONNECTIONS).contains(&self.max_connections),
            "must be between 1 and 1000000",
        )?;
        in_range(
            "tls_handshake_timeout",
            within(self.tls_handshake_timeout, 100, 60),
            "must be between 100ms and 60s",
        )?;
        in_range(
            "header_read_timeout",
            within(self.header_read_timeout, 100, 60),
            "must be between 100ms and 60s",
        )?;
        in_range(
            "idle_timeout",
            within(self.idle_timeout, 100, 3600),
            "must be between 100ms and 1h",
        )?;
        // hyper's HTTP/1 read buffer, which bounds the head, is at least 8 KiB.
        in_range(
            "max_header_bytes",
            (8192..=1024 * 1024).contains(&self.max_header_bytes),
            "must be between 8192 and 1048576 (1 MiB)",
        )?;
        in_range(
            "max_headers",
            (1..=1000).contains(&self.max_headers),
            "must be between 1 and 1000",
        )?;
        in_range(
            "http2_max_concurrent_streams",
            (1..=10_000).contains(&self.http2_max_concurrent_streams),
            "must be between 1 and 10000",
        )
    }

    /// The call graph's bounds and the anomaly thresholds.
    fn validate_visibility(&self) -> Result<(), ConfigError> {
        let hours = |d: Duration, min_s: u64, max_h: u64| {
            d >= Duration::from_secs(min_s) && d <= Duration::from_secs(max_h * 3600)
        };
        in_range(
            "graph_max_edges",
            (16..=1_000_000).contains(&self.graph_max_edges),
            "must be between 16 and 1000000",
        )?;
        in_range(
            "graph_retention",
            hours(self.graph_retention, 3600, 400 * 24),
            "must be between 1h and 400days",
        )?;
        in_range(
            "policy_report_window",
            hours(self.policy_report_window, 60, 400 * 24),
            "must be between 1m and 400days",
        )?;
        in_range(
            "policy_report_min_denials",
            self.policy_report_min_denials >= 1,
            "must be at least 1",
        )?;
        in_range(
            "anomaly_new_audience_after",
            hours(self.anomaly_new_audience_after, 0, 400 * 24),
            "must be between 0s and 400days",
        )?;
        in_range(
            "anomaly_rate_window",
            hours(self.anomaly_rate_window, 1, 24),
            "must be between 1s and 24h",
        )?;
        in_range(
            "anomaly_rate_factor",
            (2..=1000).contains(&self.anomaly_rate_factor),
            "must be between 2 and 1000",
        )?;
        in_range(
            "anomaly_rate_min",
            self.anomaly_rate_min >= 1,
            "must be at least 1",
        )?;
        in_range(
            "anomaly_burst_window",
            hours(self.anomaly_burst_window, 1, 24),
            "must be between 1s and 24h",
        )?;
        in_range(
            "anomaly_attestation_failures",
            self.anomaly_attestation_failures >= 1,
            "must be at least 1",
        )?;
        in_range(
            "anomaly_replays",
            self.anomaly_replays >= 1,
            "must be at least 1",
        )
    }

    /// The anomaly thresholds.
    pub fn anomaly_thresholds(&self) -> crate::visibility::AnomalyThresholds {
        crate::visibility::AnomalyThresholds {
            new_audience_after: self.anomaly_new_audience_after,
            rate_window: self.anomaly_rate_window,
            rate_factor: self.anomaly_rate_factor,
            rate_min: self.anomaly_rate_min,
            burst_window: self.anomaly_burst_window,
            attestation_failures: self.anomaly_attestation_failures,
            replays: self.anomaly_replays,
        }
    }

    /// What the listeners enforce on every connection.
    pub fn connection_limits(&self) -> crate::server::listener::Limits {
        crate::server::listener::Limits {
            max_connections: self.max_connections,
            tls_handshake_timeout: self.tls_handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
        }
    }

    /// The Redis URL of a distributed store (checked when the configuration loads), or
    /// `None` for the embedded one.
    pub fn redis_url(&self) -> Option<&str> {
        (self.store != "embedded").then_some(self.store.as_str())
    }

    /// The issuer identifier: `issuer_url`, or `https://<listen>` with `localhost`
    /// standing in for an unspecified address.
    pub fn issuer(&self) -> String {
        if let Some(url) = &self.issuer_url {
            return url.clone();
        }
        let ip = self.listen.ip();
        if ip.is_unspecified() || ip.is_loopback() {
            format!("https://localhost:{}", self.listen.port())
        } else {
            format!("https://{}", self.listen)
        }
    }

    /// Every setting in force, as a configuration file that loads back to the same
    /// settings (the issuer URL resolved, a store password shown as `***`): what
    /// `baton serve --check-config` prints.
    pub fn to_toml(&self) -> String {
        let duration = |d: Duration| format!("{:?}", humantime::format_duration(d).to_string());
        let mut lines = vec![
            format!("listen = \"{}\"", self.listen),
            match self.http_listen {
                Some(addr) => format!("http_listen = \"{addr}\""),
                None => "# http_listen: off".to_owned(),
            },
            format!("issuer_url = {:?}", self.issuer()),
            // Never a password: the URL as the logs show it.
            match self.redis_url() {
                Some(url) => format!("store = {:?}", crate::shared::redact(url)),
                None => format!("store = {:?}", self.store),
            },
            match &self.policy {
                Some(path) => format!("policy = {:?}", path.display().to_string()),
                None => "# policy: none (every token request is denied)".to_owned(),
            },
        ];
        lines.extend([
            format!("token_ttl = {}", duration(self.token_ttl)),
            format!("token_alg = \"{}\"", self.token_alg),
            format!("svid_ttl = {}", duration(self.svid_ttl)),
            format!("svid_rate_limit = {}", self.svid_rate_limit),
            format!("rate_limit = {}", self.rate_limit),
            format!("rate_burst = {}", self.rate_burst),
            format!("introspect_rate_limit = {}", self.introspect_rate_limit),
            format!("request_timeout = {}", duration(self.request_timeout)),
            format!("max_body_bytes = {}", self.max_body_bytes),
            format!("max_connections = {}", self.max_connections),
            format!(
                "tls_handshake_timeout = {}",
                duration(self.tls_handshake_timeout)
            ),
            format!(
                "header_read_timeout = {}",
                duration(self.header_read_timeout)
            ),
            format!("idle_timeout = {}", duration(self.idle_timeout)),
            format!("max_header_bytes = {}", self.max_header_bytes),
            format!("max_headers = {}", self.max_headers),
            format!(
                "http2_max_concurrent_streams = {}",
                self.http2_max_concurrent_streams
            ),
            format!("jwks_max_age = {}", duration(self.jwks_max_age)),
            match self.rotation_period {
                Some(period) => format!("rotation_period = {}", duration(period)),
                None => "rotation_period = \"off\"".to_owned(),
            },
            format!("log_format = \"{}\"", self.log_format.as_str()),
            format!("graph_max_edges = {}", self.graph_max_edges),
            format!("graph_retention = {}", duration(self.graph_retention)),
            format!(
                "policy_report_window = {}",
                duration(self.policy_report_window)
            ),
            format!(
                "policy_report_min_denials = {}",
                self.policy_report_min_denials
            ),
            format!(
                "anomaly_new_audience_after = {}",
                duration(self.anomaly_new_audience_after)
            ),
            format!(
                "anomaly_rate_window = {}",
                duration(self.anomaly_rate_window)
            ),
            format!("anomaly_rate_factor = {}", self.anomaly_rate_factor),
            format!("anomaly_rate_min = {}", self.anomaly_rate_min),
            format!(
                "anomaly_burst_window = {}",
                duration(self.anomaly_burst_window)
            ),
            format!(
                "anomaly_attestation_failures = {}",
                self.anomaly_attestation_failures
            ),
            format!("anomaly_replays = {}", self.anomaly_replays),
        ]);
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    /// The `BATON_*` variables of `env` that are neither a configuration key nor one of
    /// `baton`'s other variables: ignored, and worth a warning (a misspelt override).
    pub fn unknown_env(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        let mut unknown: Vec<String> = env
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| {
                name.strip_prefix("BATON_").is_some_and(|key| {
                    !ENV_KEYS.contains(&key.to_ascii_lowercase().as_str())
                        && !OTHER_ENV.contains(&name.as_str())
                        // The dev stack's scripts (infra/dev/up.sh).
                        && !key.starts_with("DEV_")
                })
            })
            .collect();
        unknown.sort();
        unknown
    }

    /// Every configuration key, in the order of the file `baton init` writes.
    pub fn keys() -> &'static [&'static str] {
        ENV_KEYS
    }

    /// The commented configuration file `baton init` writes.
    pub fn default_file() -> String {
        format!(
            r#"# Baton issuer configuration. Every key can also be set by a `baton serve` flag
# of the same name or a BATON_<KEY> environment variable (e.g. BATON_TOKEN_TTL).

# HTTPS listener (server certificate from this trust domain's CA).
listen = "{listen}"
# Plain-HTTP listener, only for use behind a TLS-terminating gateway. Off unless set.
# http_listen = "127.0.0.1:8080"

# Policy file (default deny: with no policy, no token is issued).
# policy = "policy.toml"

# Access-token lifetime when the policy names none; never above 300s.
token_ttl = "{token}s"
# Lifetime of workload certificates (X.509-SVIDs); 5s to 7days. Clients that
# bootstrap from a join token renew at about half of it.
svid_ttl = "24h"
# POST /v1/svid requests per minute per identity (first certificates and renewals).
svid_rate_limit = 60

# Issuer identifier: the `iss` of every token and the `aud` of client assertions.
# Default: https://localhost:<port> on a loopback or wildcard listener.
# issuer_url = "https://baton.example.org"
# Algorithm of new signing keys: "ES256" (default) or "EdDSA".
token_alg = "ES256"
# State store: "embedded" (this data directory) or a Redis URL shared by every
# replica (distributed mode; see docs/distributed.md): redis://, rediss:// (TLS),
# unix:// or redis+sentinel://sentinel-a:26379,sentinel-b:26379/service.
# store = "redis://127.0.0.1:6379/0"
# Per-caller token request rate (per second) and burst.
rate_limit = 100
rate_burst = 200
# Per-caller introspection and revocation rate (per second, and as many at once): a
# callee that introspects every token it receives needs all its callers' rate.
introspect_rate_limit = 1000
request_timeout = "10s"

# Resource limits (docs/limits.md). Largest request body (413 beyond it).
max_body_bytes = 65536
# Connections open at once on both listeners together; more wait in the kernel's
# accept queue until one closes.
max_connections = 4096
# A client must finish its TLS handshake within tls_handshake_timeout, and send each
# HTTP/1.1 request head within header_read_timeout (also how long a kept-alive
# HTTP/1.1 connection may wait between requests); a connection with no request in
# progress for idle_timeout is closed.
tls_handshake_timeout = "10s"
header_read_timeout = "5s"
idle_timeout = "30s"
# Largest request head in bytes, and most header fields (431 beyond either).
max_header_bytes = 16384
max_headers = 100
# Requests in progress at once on one HTTP/2 connection.
http2_max_concurrent_streams = 100

# Cache-Control max-age of /.well-known/jwks.json.
jwks_max_age = "5m"
# The issuer rotates its signing key by itself this often ("off": only by
# `baton keys rotate`); between twice jwks_max_age and 40days.
rotation_period = "30days"

# Logs go to stderr: "json" (one object per line), "text", or "auto" (text on a
# terminal, JSON otherwise). RUST_LOG filters them (default "info").
log_format = "auto"

# Visibility (docs/visibility.md), read through the admin socket only. The call graph
# keeps one record per (caller, audience, scope) edge, at most graph_max_edges, and
# drops edges unseen for graph_retention.
graph_max_edges = 10000
graph_retention = "30days"
# `baton policy report`: a rule that granted nothing within the window is unused; a
# caller refused this many times for one audience within it is a finding.
policy_report_window = "7days"
policy_report_min_denials = 10

# Anomaly signals: each an audit event (event = "anomaly") and a count in
# baton_anomalies_total{{kind}}. new_audience: a caller first seen at least
# anomaly_new_audience_after ago mints for an audience it never used. rate_spike:
# a caller mints more than anomaly_rate_factor times its moving average, and more
# than anomaly_rate_min, within one anomaly_rate_window. attestation_failures and
# replays: that many within one anomaly_burst_window.
anomaly_new_audience_after = "1h"
anomaly_rate_window = "1m"
anomaly_rate_factor = 5
anomaly_rate_min = 100
anomaly_burst_window = "1m"
anomaly_attestation_failures = 20
anomaly_replays = 5
"#,
            listen = default_listen(),
            token = DEFAULT_TOKEN_TTL_SECS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn store_is_embedded_or_a_redis_url() {
        let env = std::iter::empty::<(String, String)>;
        assert_eq!(Config::from_toml("", env()).unwrap().redis_url(), None);
        let redis =
            Config::from_toml("store = \"redis://:secret@10.0.0.5:6379/2\"", env()).unwrap();
        assert_eq!(redis.redis_url(), Some("redis://:secret@10.0.0.5:6379/2"));
        let err = Config::from_toml("store = \"memcached://:secret@x\"", env()).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let tls = Config::from_toml("store = \"rediss://x:6380\"", env()).unwrap();
        assert_eq!(tls.redis_url(), Some("rediss://x:6380"));
        let sentinel = "redis+sentinel://:secret@s1,s2:26380/baton";
        let ha = Config::from_toml(&format!("store = \"{sentinel}\""), env()).unwrap();
        assert_eq!(ha.redis_url(), Some(sentinel));
        let err = Config::from_toml("store = \"redis+sentinel://:secret@s1\"", env()).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("store") && shown.contains("service"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn default_file_parses_to_the_defaults() {
        let config = Config::from_toml(&Config::default_file(), no_env()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("BATON_TOKEN_TTL".to_owned(), "30s".to_owned()),
            ("BATON_KEK_FILE".to_owned(), "/ignored".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let config = Config::from_toml("token_ttl = \"90s\"", env).unwrap();
        assert_eq!(config.token_ttl, Duration::from_secs(30));
        let env = vec![("BATON_RATE_LIMIT".to_owned(), "7".to_owned())];
        assert_eq!(Config::from_toml("", env).unwrap().rate_limit, 7);
        let env = vec![
            ("BATON_MAX_CONNECTIONS".to_owned(), "8".to_owned()),
            ("BATON_IDLE_TIMEOUT".to_owned(), "750ms".to_owned()),
        ];
        let limited = Config::from_toml("", env).unwrap();
        assert_eq!(limited.max_connections, 8);
        assert_eq!(limited.idle_timeout, Duration::from_millis(750));
    }

    #[test]
    fn issuer_defaults_to_the_listener() {
        assert_eq!(Config::default().issuer(), "https://localhost:8443");
        let c = Config::from_toml("listen = \"10.0.0.1:443\"", no_env()).unwrap();
        assert_eq!(c.issuer(), "https://10.0.0.1:443");
        let c = Config::from_toml("issuer_url = \"https://b.example/\"", no_env()).unwrap();
        assert_eq!(c.issuer(), "https://b.example");
    }

    #[test]
    fn rotation_period_defaults_to_30_days_and_may_be_off() {
        let config = Config::from_toml("", no_env()).unwrap();
        assert_eq!(
            config.rotation_period,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        let off = Config::from_toml("rotation_period = \"off\"", no_env()).unwrap();
        assert_eq!(off.rotation_period, None);
        let env = vec![
            ("BATON_JWKS_MAX_AGE".to_owned(), "2s".to_owned()),
            ("BATON_ROTATION_PERIOD".to_owned(), "4s".to_owned()),
        ];
        let short = Config::from_toml("", env).unwrap();
        assert_eq!(short.rotation_period, Some(Duration::from_secs(4)));
    }

    #[test]
    fn every_setting_round_trips_through_to_toml() {
        let text = r#"
            listen = "10.0.0.7:9443"
            http_listen = "127.0.0.1:8080"
            issuer_url = "https://baton.example.org"
            store = "redis://10.0.0.5:6379/2"
            policy = "/etc/baton/policy.toml"
            token_ttl = "90s"
            token_alg = "EdDSA"
            svid_ttl = "12h"
            svid_rate_limit = 7
            rate_limit = 11
            rate_burst = 13
            introspect_rate_limit = 17
            request_timeout = "9s"
            max_body_bytes = 4096
            max_connections = 19
            tls_handshake_timeout = "3s"
            header_read_timeout = "4s"
            idle_timeout = "5m"
            max_header_bytes = 9000
            max_headers = 23
            http2_max_concurrent_streams = 29
            jwks_max_age = "2m"
            rotation_period = "10days"
            log_format = "json"
            graph_max_edges = 500
            graph_retention = "2days"
            policy_report_window = "3days"
            policy_report_min_denials = 4
            anomaly_new_audience_after = "10m"
            anomaly_rate_window = "30s"
            anomaly_rate_factor = 7
            anomaly_rate_min = 50
            anomaly_burst_window = "2m"
            anomaly_attestation_failures = 9
            anomaly_replays = 3
        "#;
        let config = Config::from_toml(text, no_env()).unwrap();
        assert_ne!(config, Config::default());
        let rendered = config.to_toml();
        assert_eq!(Config::from_toml(&rendered, no_env()).unwrap(), config);
        // Each key once, so the example above really set every one.
        for key in Config::keys() {
            let set = rendered
                .lines()
                .filter(|l| l.starts_with(&format!("{key} = ")));
            assert_eq!(set.count(), 1, "{key} in\n{rendered}");
            assert!(text.contains(&format!("{key} = ")), "{key} not exercised");
        }
        let defaults = Config::default();
        let mut rendered = Config::from_toml(&defaults.to_toml(), no_env()).unwrap();
        rendered.issuer_url = None;
        assert_eq!(rendered, defaults);
        let off = Config::from_toml("rotation_period = \"off\"", no_env()).unwrap();
        assert_eq!(
            Config::from_toml(&off.to_toml(), no_env())
                .unwrap()
                .rotation_period,
            None
        );
    }

    #[test]
    fn the_init_file_names_every_key() {
        let file = Config::default_file();
        for key in Config::keys() {
            assert!(
                file.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
                "{key} is missing from the file `baton init` writes"
            );
        }
    }

    #[test]
    fn the_printed_store_hides_its_password() {
        let config =
            Config::from_toml("store = \"redis://:hunter2@10.0.0.5:6379\"", no_env()).unwrap();
        assert!(
            !config.to_toml().contains("hunter2"),
            "{}",
            config.to_toml()
        );
    }

    #[test]
    fn misspelt_overrides_are_reported() {
        let env = [
            ("BATON_TOKEN_TTL", "30s"),
            ("BATON_TOKEN_TL", "30s"),
            ("BATON_KEK_FILE", "/k"),
            ("BATON_DATA_DIR", "/d"),
            ("BATON_LOG_FORMAT", "json"),
            ("HOME", "/root"),
            ("BATON_RATELIMIT", "5"),
            ("BATON_DEV_DIR", "/tmp/dev"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            Config::unknown_env(env.clone()),
            ["BATON_RATELIMIT", "BATON_TOKEN_TL"]
        );
        let config = Config::from_toml("", env).unwrap();
        assert_eq!(config.token_ttl, Duration::from_secs(30));
        assert_eq!(config.log_format, LogFormat::Json);
        let err = Config::from_toml("", [("BATON_TOKEN_TTL".to_owned(), "soon".to_owned())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token_ttl") && err.contains("BATON_TOKEN_TTL"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("token_ttl = \"301s\"", "token_ttl"),
            ("token_ttl = \"0s\"", "token_ttl"),
            ("svid_ttl = \"30days\"", "svid_ttl"),
            ("svid_ttl = \"soon\"", "svid_ttl"),
            ("svid_ttl = \"4s\"", "svid_ttl"),
            ("svid_rate_limit = 0", "svid_rate_limit"),
            ("introspect_rate_limit = 0", "introspect_rate_limit"),
            ("listen = \"localhost\"", "listen"),
            ("lisen = \"127.0.0.1:1\"", "lisen"),
            ("issuer_url = \"http://x\"", "issuer_url"),
            ("store = \"memcached://127.0.0.1\"", "store"),
            ("token_alg = \"HS256\"", "token_alg"),
            ("log_format = \"xml\"", "log_format"),
            ("rate_limit = 0", "rate_limit"),
            // Beyond what a 90-day signing certificate covers as `next` then `active`.
            ("rotation_period = \"41days\"", "rotation_period"),
            // Shorter than a `next` key needs to reach every verifier's cache.
            ("rotation_period = \"9m\"", "rotation_period"),
            ("rotation_period = \"never\"", "rotation_period"),
            ("max_body_bytes = 1023", "max_body_bytes"),
            ("max_body_bytes = 16777217", "max_body_bytes"),
            ("max_connections = 0", "max_connections"),
            ("max_connections = 1000001", "max_connections"),
            ("max_connections = -1", "max_connections"),
            ("tls_handshake_timeout = \"0s\"", "tls_handshake_timeout"),
            ("tls_handshake_timeout = \"61s\"", "tls_handshake_timeout"),
            ("header_read_timeout = \"99ms\"", "header_read_timeout"),
            ("header_read_timeout = \"2m\"", "header_read_timeout"),
            ("idle_timeout = \"0s\"", "idle_timeout"),
            ("idle_timeout = \"2h\"", "idle_timeout"),
            // hyper refuses (panics on) an HTTP/1 buffer under 8 KiB.
            ("max_header_bytes = 8191", "max_header_bytes"),
            ("max_header_bytes = 1048577", "max_header_bytes"),
            ("max_headers = 0", "max_headers"),
            ("max_headers = 1001", "max_headers"),
            (
                "http2_max_concurrent_streams = 0",
                "http2_max_concurrent_streams",
            ),
            (
                "http2_max_concurrent_streams = 10001",
                "http2_max_concurrent_streams",
            ),
        ] {
            let err = Config::from_toml(text, no_env()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
