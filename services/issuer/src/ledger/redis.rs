//! The shared replay ledger (SPEC §7, distributed mode): one Redis or Valkey for every
//! issuer replica, so an id consumed through one replica is refused by all.
//!
//! Each operation is one round trip — a Lua script, run atomically by the server — and
//! is bounded by a timeout. Whatever goes wrong on the way (refused connection, lost
//! connection, timeout, a server error such as out-of-memory) is
//! [`LedgerError::Unavailable`]: the ledger fails closed and never answers `Ok` for a
//! write it could not confirm. A consume that timed out may still have been recorded by
//! the server; the item is then spent, which is the safe side.
//!
//! Keys are `{baton}:ledger:` (the hash tag every Baton key shares) and the hex of the first 128 bits of the logical key's
//! SHA-256, so their length is fixed whatever the caller sends and no token, `jti` or
//! SPIFFE ID is stored in the clear. The epoch lives in `{baton}:ledger:epoch`, without
//! expiry; a store that lost it (restarted without persistence, flushed) gets a new one
//! from the first script that notices, and every item issued before is then
//! [`Stale`](LedgerError::Stale).
//!
//! A store can also lose the newest entries while keeping the epoch key: after a
//! failover (replication is asynchronous, whether through Sentinel or behind a managed
//! endpoint), or a restart with `appendfsync everysec` (Redis's default for an
//! append-only file: up to a second of writes). So every script also carries the
//! server's run id, and `{baton}:ledger:epoch-server` records the last one seen: the
//! first operation through another server process starts a new epoch unless that
//! process is known to hold every acknowledged write (`appendfsync always` and not a
//! promoted replica; see [`baton_sdk::redis_store::Primary`]). A failover thus costs
//! the tokens outstanding at that moment (refused as stale, callers fetch new ones) and
//! never a second acceptance.
//!
//! Clocks: issue times come from the issuers, expiries are enforced by the Redis
//! server. An entry is kept until the later of its `exp` and the server's clock plus
//! the lifetime left by the caller's clock, so a server clock running ahead never
//! shortens it. A new epoch is the later of the caller's and the server's clock.
//!
//! The store must not evict keys (`maxmemory-policy noeviction`, Redis's default):
//! every ledger key carries an expiry, so even `volatile-*` policies could drop a live
//! entry and reopen its replay window. [`RedisLedger::connect`] refuses a store it can
//! see is configured to evict.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_sdk::redis_store::{Primary, RedisLink, RedisTarget};
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, Script};
use tracing::{debug, info, warn};

use super::{Consumed, LedgerError, LedgerFuture, ReplayLedger, digest_of};

/// How long one ledger operation may take before it fails as
/// [`LedgerError::Unavailable`], unless [`RedisLedger::connect_with_timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Namespace of every ledger key.
const KEY_PREFIX: &str = "{baton}:ledger:";
/// The epoch's key: outside the digest keys' space (those are 32 hex digits).
const EPOCH_KEY: &str = "{baton}:ledger:epoch";
/// The run id of the last server process the ledger ran on.
const EPOCH_SERVER_KEY: &str = "{baton}:ledger:epoch-server";
/// Highest expiry or issue time sent to the store (year 2106, as the memory ledger
/// saturates): Lua numbers are doubles and print exactly below 10^14.
const MAX_TIME: i64 = u32::MAX as i64;
const _: () = assert!(
    MAX_TIME * 1000 < 100_000_000_000_000,
    "Lua's %.14g must print it"
);

/// Lua shared by the scripts that need the epoch: reads it, or sets a lost or absent
/// one to the later of the caller's clock (`ARGV[1]`) and the server's. It also starts
/// a new one when the server is another process (`ARGV[2]`, its run id) than the one
/// recorded in `KEYS[2]` and is not known to hold every write its predecessor
/// acknowledged (`ARGV[3]` = `0`). Leaves it in `epoch` and the server's seconds in
/// `server_now`. `KEYS[1]` is the epoch key.
macro_rules! epoch_lua {
    () => {
        r#"
local now = tonumber(ARGV[1])
local server_now = tonumber(redis.call('TIME')[1])
local epoch = tonumber(redis.call('GET', KEYS[1]))
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  redis.call('SET', KEYS[2], ARGV[2])
  if epoch and ARGV[3] ~= '1' then
    epoch = math.max(now, server_now, epoch + 1)
    redis.call('SET', KEYS[1], string.format('%d', epoch))
  end
end
if not epoch then
  epoch = math.max(now, server_now)
  redis.call('SET', KEYS[1], string.format('%d', epoch))
end
"#
    };
}

/// `consume`: `KEYS[3]` the item's key, and `KEYS[4]` if given a blocker; `ARGV[4]` its
/// issue time or `-`, `ARGV[5]` its expiry. Returns 0 consumed (or already expired:
/// nothing recorded), 1 replayed, 2 stale, 3 blocked (the blocker is live: nothing
/// recorded).
const CONSUME_LUA: &str = concat!(
    epoch_lua!(),
    r#"
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
  return 3
end
if ARGV[4] ~= '-' and tonumber(ARGV[4]) <= epoch then
  return 2
end
local exp = tonumber(ARGV[5])
if exp <= now then
  return 0
end
local at_ms = math.max(exp, server_now + (exp - now)) * 1000
if redis.call('SET', KEYS[3], '1', 'NX', 'PXAT', string.format('%d', at_ms)) then
  return 0
end
return 1
"#
);

/// `epoch`: returns it, creating it if needed.
const EPOCH_LUA: &str = concat!(epoch_lua!(), "return epoch\n");

/// `mark`: `KEYS[1]` the key; `ARGV[1]` now, `ARGV[2]` expiry. Sets the key live until
/// the later of its current expiry and the new one. Returns 0.
const MARK_LUA: &str = r#"
local now = tonumber(ARGV[1])
local exp = tonumber(ARGV[2])
if exp <= now then
  return 0
end
local t = redis.call('TIME')
local server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at_ms = math.max(exp * 1000, server_ms + (exp - now) * 1000)
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 or (ttl >= 0 and server_ms + ttl >= at_ms) then
  return 0
end
redis.call('SET', KEYS[1], '1', 'PXAT', string.format('%d', at_ms))
return 0
"#;

/// Why [`RedisLedger::connect`] gave up. No variant carries the URL: it may hold a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConnectError {
    /// The URL does not parse as a Redis URL.
    #[error(
        "the store URL is not a Redis URL: use redis://[user:password@]host[:port][/db], rediss:// (TLS), unix:///path or redis+sentinel://host[:port][,host[:port]...]/service[/db]"
    )]
    BadUrl,
    /// No answer within the bound: the store is down, or the host or port is wrong.
    #[error(
        "the Redis store did not answer within {0:?}: check that it runs and the URL's host and port"
    )]
    Unreachable(Duration),
    /// The store answered but refused us (authentication, ACL, a server error).
    #[error(
        "the Redis store refused the connection ({0}): check the URL's user, password and database"
    )]
    Refused(String),
    /// The store evicts keys under memory pressure, which could drop unexpired ledger
    /// entries and reopen their replay window.
    #[error(
        "the Redis store's maxmemory-policy is {0}: it may evict unexpired replay-ledger entries; set maxmemory-policy noeviction"
    )]
    EvictingStore(String),
}

/// A replay ledger in Redis (or Valkey), shared by every issuer replica using it.
///
/// Cheap to share behind an `Arc`; the connection inside is dropped when an operation
/// fails and made again by the next one (through Sentinel, to the primary of the
/// moment), so the ledger heals by itself and fails each operation closed meanwhile.
///
/// ```no_run
/// use baton_issuer::ledger::{RedisLedger, ReplayLedger};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let ledger = RedisLedger::connect("redis://127.0.0.1:6379").await?;
/// let now = 1_700_000_100;
/// ledger.consume("access-token abc", Some(now), now + 60, now).await?;
/// # Ok(())
/// # }
/// ```
pub struct RedisLedger {
    link: RedisLink,
    timeout: Duration,
    consume: Script,
    mark: Script,
    epoch: Script,
    /// Whether the last operation reached the store: logs a change once, not every
    /// failed request during an outage.
    reachable: AtomicBool,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's details include the URL: leave them out.
        f.debug_struct("RedisLedger")
            .field("timeout", &self.timeout)
            .field("reachable", &self.reachable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisLedger {
    /// Connects to the store at `url` with [`DEFAULT_TIMEOUT`] per operation.
    pub async fn connect(url: &str) -> Result<Self, RedisConnectError> {
        Self::connect_with_timeout(url, DEFAULT_TIMEOUT).await
    }

    /// Connects to the store at `url` (`redis://`, `rediss://`, `valkey://`, `unix://`,
    /// `redis+sentinel://`; see [`baton_sdk::redis_store`]), bounding
    /// every later operation by `timeout`. Gives up after three times `timeout` when
    /// the store does not answer, so a start with the store down fails rather than
    /// hangs. Fixes the ledger's epoch if the store has none yet.
    pub async fn connect_with_timeout(
        url: &str,
        timeout: Duration,
    ) -> Result<Self, RedisConnectError> {
        let target = RedisTarget::parse(url).map_err(|_| RedisConnectError::BadUrl)?;
        let bound = timeout.saturating_mul(3);
        let start = async {
            let link = RedisLink::new(target, timeout);
            let mut primary = link.primary().await?;
            check_no_eviction(&mut primary.connection).await?;
            let ledger = Self {
                link,
                timeout,
                consume: Script::new(CONSUME_LUA),
                mark: Script::new(MARK_LUA),
                epoch: Script::new(EPOCH_LUA),
                reachable: AtomicBool::new(true),
            };
            let epoch: i64 = ledger
                .epoch
                .key(EPOCH_KEY)
                .key(EPOCH_SERVER_KEY)
                .arg(clamp(unix_now()))
                .arg(&*primary.server)
                .arg(primary.keeps_writes_arg())
                .invoke_async(&mut primary.connection)
                .await?;
            debug!(epoch, "replay ledger store connected");
            Ok::<_, StartError>(ledger)
        };
        match tokio::time::timeout(bound, start).await {
            Err(_) => Err(RedisConnectError::Unreachable(bound)),
            Ok(Ok(ledger)) => Ok(ledger),
            Ok(Err(StartError::Evicting(policy))) => Err(RedisConnectError::EvictingStore(policy)),
            Ok(Err(StartError::Redis(e))) if is_unreachable(&e) => {
                Err(RedisConnectError::Unreachable(bound))
            }
            Ok(Err(StartError::Redis(e))) => Err(RedisConnectError::Refused(describe(&e))),
        }
    }

    /// The per-operation bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one store operation on the primary ([`RedisLink::run`]: once more on a new
    /// connection if the kept one was gone), the whole bounded by the timeout; any
    /// failure is `Unavailable` and drops the connection, so the next operation makes
    /// a new one (to the primary of the moment).
    async fn run<T, F>(&self, op: impl Fn(Primary) -> F) -> Result<T, LedgerError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let outcome = tokio::time::timeout(self.timeout, self.link.run(op)).await;
        match outcome {
            Ok(Ok(value)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    info!("replay ledger store reachable again");
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                self.link.failed();
                self.unreachable(&describe(&e));
                Err(LedgerError::Unavailable)
            }
            Err(_) => {
                self.link.failed();
                self.unreachable("timed out");
                Err(LedgerError::Unavailable)
            }
        }
    }

    /// The consume script for `key`, refused when `blocker` is live: its status.
    async fn run_consume(
        &self,
        key: &str,
        blocker: Option<&str>,
        issued_at: Option<i64>,
        exp: i64,
        now: i64,
    ) -> Result<i64, LedgerError> {
        let issued_at = issued_at.map_or_else(|| "-".to_owned(), |iat| clamp(iat).to_string());
        let (key, blocker) = (store_key(key), blocker.map(store_key));
        let (script, key, blocker, issued_at) = (&self.consume, &key, &blocker, &issued_at);
        self.run(|mut primary| async move {
            let mut invocation = script.key(EPOCH_KEY);
            invocation.key(EPOCH_SERVER_KEY).key(key);
            if let Some(blocker) = blocker {
                invocation.key(blocker);
            }
            invocation
                .arg(clamp(now))
                .arg(&*primary.server)
                .arg(primary.keeps_writes_arg())
                .arg(issued_at)
                .arg(clamp(exp))
                .invoke_async(&mut primary.connection)
                .await
        })
        .await
    }

    fn unreachable(&self, why: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            warn!(
                error = why,
                "replay ledger store unavailable: one-time ids fail closed (503)"
            );
        } else {
            debug!(error = why, "replay ledger store still unavailable");
        }
    }
}

impl ReplayLedger for RedisLedger {
    fn consume<'a>(
        &'a self,
        key: &'a str,
        issued_at: Option<i64>,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            match self.run_consume(key, None, issued_at, exp, now).await? {
                0 => Ok(()),
                1 => Err(LedgerError::Replayed),
                2 => Err(LedgerError::Stale),
                _ => Err(LedgerError::Unavailable),
            }
        })
    }

    fn consume_unless<'a>(
        &'a self,
        key: &'a str,
        blocker: &'a str,
        issued_at: Option<i64>,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<Consumed, LedgerError>> {
        Box::pin(async move {
            match self
                .run_consume(key, Some(blocker), issued_at, exp, now)
                .await?
            {
                0 => Ok(Consumed::Yes),
                1 => Err(LedgerError::Replayed),
                2 => Err(LedgerError::Stale),
                3 => Ok(Consumed::Blocked),
                _ => Err(LedgerError::Unavailable),
            }
        })
    }

    fn mark<'a>(
        &'a self,
        key: &'a str,
        exp: i64,
        now: i64,
    ) -> LedgerFuture<'a, Result<(), LedgerError>> {
        let (script, key) = (&self.mark, store_key(key));
        Box::pin(async move {
            let key = &key;
            let _: i64 = self
                .run(|mut primary| async move {
                    script
                        .key(key)
                        .arg(clamp(now))
                        .arg(clamp(exp))
                        .invoke_async(&mut primary.connection)
                        .await
                })
                .await?;
            Ok(())
        })
    }

    fn contains<'a>(
        &'a self,
        key: &'a str,
        _now: i64,
    ) -> LedgerFuture<'a, Result<bool, LedgerError>> {
        let key = store_key(key);
        Box::pin(async move {
            let key = &key;
            let n: i64 = self
                .run(|mut primary| async move {
                    redis::cmd("EXISTS")
                        .arg(key)
                        .query_async(&mut primary.connection)
                        .await
                })
                .await?;
            Ok(n > 0)
        })
    }

    fn epoch(&self, now: i64) -> LedgerFuture<'_, Result<i64, LedgerError>> {
        let script = &self.epoch;
        Box::pin(async move {
            self.run(|mut primary| async move {
                script
                    .key(EPOCH_KEY)
                    .key(EPOCH_SERVER_KEY)
                    .arg(clamp(now))
                    .arg(&*primary.server)
                    .arg(primary.keeps_writes_arg())
                    .invoke_async(&mut primary.connection)
                    .await
            })
            .await
        })
    }

    fn ready(&self, _now: i64) -> LedgerFuture<'_, Result<(), LedgerError>> {
        Box::pin(async move {
            let _: String = self
                .run(|mut primary| async move {
                    redis::cmd("PING")
                        .query_async(&mut primary.connection)
                        .await
                })
                .await?;
            Ok(())
        })
    }
}

/// What can stop a connection from starting, before it becomes a public error.
enum StartError {
    Redis(RedisError),
    Evicting(String),
}

impl From<RedisError> for StartError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

/// Refuses a store that says it evicts keys when full. A store that hides its
/// configuration (managed services often disable `CONFIG`) is taken on trust.
async fn check_no_eviction(conn: &mut MultiplexedConnection) -> Result<(), StartError> {
    let config: Vec<String> = match redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await
    {
        Ok(config) => config,
        Err(e) if is_unreachable(&e) => return Err(e.into()),
        Err(e) => {
            debug!(error = %describe(&e), "cannot read the store's eviction policy; assuming noeviction");
            return Ok(());
        }
    };
    let value = |name: &str| {
        config
            .chunks(2)
            .find(|pair| pair.first().is_some_and(|n| n == name))
            .and_then(|pair| pair.get(1))
            .map(String::as_str)
    };
    let limited = value("maxmemory").is_some_and(|m| m != "0");
    match value("maxmemory-policy") {
        Some(policy) if limited && policy != "noeviction" => {
            Err(StartError::Evicting(policy.to_owned()))
        }
        _ => Ok(()),
    }
}

/// The store key of a logical key: fixed length, and nothing of the key in the clear.
fn store_key(key: &str) -> String {
    use std::fmt::Write as _;
    let digest = digest_of(key);
    let mut out = String::with_capacity(KEY_PREFIX.len() + 2 * digest.len());
    out.push_str(KEY_PREFIX);
    for byte in digest {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn clamp(t: i64) -> i64 {
    t.clamp(0, MAX_TIME)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped()
}

/// A log-safe description: the error's kind and the server's message, never the URL.
fn describe(e: &RedisError) -> String {
    match e.kind() {
        ErrorKind::Io => e.to_string(),
        kind => format!("{kind:?}: {}", e.detail().unwrap_or("no detail")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_are_fixed_length_and_namespaced() {
        let short = store_key("a");
        let long = store_key(&"k".repeat(10_000));
        assert_eq!(short.len(), KEY_PREFIX.len() + 32);
        assert_eq!(short.len(), long.len());
        assert!(short.starts_with(KEY_PREFIX));
        assert_ne!(short, long);
        assert_ne!(short, EPOCH_KEY, "digest keys never collide with the epoch");
        assert!(!store_key("access-token secret-jti").contains("secret"));
    }

    #[tokio::test]
    async fn malformed_urls_are_refused_without_echoing_them() {
        let err = RedisLedger::connect("http://:hunter2@cache")
            .await
            .unwrap_err();
        assert_eq!(err, RedisConnectError::BadUrl);
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn times_are_clamped_to_what_lua_prints_exactly() {
        assert_eq!(clamp(i64::MAX), MAX_TIME);
        assert_eq!(clamp(-5), 0);
    }
}
