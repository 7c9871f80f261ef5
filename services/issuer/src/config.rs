//! The issuer's configuration: one TOML file plus `BATON_*` environment overrides,
//! checked once at start into typed values (SPEC §9: every `serve` flag is also a key).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use baton_proto::claims::{DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS};
use serde::{Deserialize, Deserializer};

use crate::pki::{MAX_SVID_TTL, MIN_SVID_TTL};

/// Keys that a `BATON_<KEY>` environment variable may override (all string-valued).
const ENV_KEYS: &[&str] = &["listen", "http_listen", "policy", "token_ttl", "svid_ttl"];

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
    /// X.509-SVID lifetime (1 min to 7 days).
    #[serde(default = "default_svid_ttl", deserialize_with = "duration")]
    pub svid_ttl: Duration,
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
                table.insert(key, toml::Value::String(value));
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
                problem: "must be between 1m and 7days".to_owned(),
            });
        }
        Ok(())
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
# Lifetime of workload certificates (X.509-SVIDs); 1m to 7days.
svid_ttl = "24h"
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
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("token_ttl = \"301s\"", "token_ttl"),
            ("token_ttl = \"0s\"", "token_ttl"),
            ("svid_ttl = \"30days\"", "svid_ttl"),
            ("svid_ttl = \"soon\"", "svid_ttl"),
            ("listen = \"localhost\"", "listen"),
            ("lisen = \"127.0.0.1:1\"", "lisen"),
        ] {
            let err = Config::from_toml(text, no_env()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
