//! The Redis replay guard (feature `redis`, SPEC §7 "Replay ledger": Redis `SET NX`
//! with expiry): callee replicas that share one Redis accept each token once between
//! them, without calling the issuer.
//!
//! One consume is one round trip: a Lua script that checks the store's epoch and runs
//! `SET <key> 1 NX PXAT <exp_ms>`, atomically. The epoch guards against Redis losing
//! its data (a restart without persistence, a flush): consumed `jti`s are gone then,
//! so every token issued at or before the moment the loss was noticed is refused, as
//! the issuer's in-memory ledger refuses tokens issued before its start.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ring::digest;

use super::shared::{
    GuardFuture, GuardUnavailable, Presentation, SharedReplayError, SharedReplayGuard,
};
use super::unix_now;
use crate::redis_store::{RedisLink, RedisTarget, RedisTargetError};

/// Lua shared by both scripts: leaves the store's epoch in `epoch`. A new one starts
/// at `ARGV[1]` (now, Unix s) when the store has none (first use, or it lost its data),
/// and also when the server is another process (`ARGV[2]`, its run id) than the one
/// recorded in `KEYS[2]` and is not known to hold every write its predecessor
/// acknowledged (`ARGV[3]` = `0`): after a failover, or a restart that may have lost
/// the last second of writes, consumed ids may be missing. `KEYS[1]` is the epoch key.
macro_rules! epoch_lua {
    () => {
        r"
local epoch = tonumber(redis.call('GET', KEYS[1]))
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  redis.call('SET', KEYS[2], ARGV[2])
  if epoch and ARGV[3] ~= '1' then
    epoch = math.max(tonumber(ARGV[1]), epoch + 1)
    redis.call('SET', KEYS[1], string.format('%d', epoch))
  end
end
if not epoch then
  epoch = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], string.format('%d', epoch))
end
"
    };
}

/// KEYS[3]: the token's replay key. ARGV[4]: keep it until (Unix ms); ARGV[5]: iat
/// (Unix s). Returns 1 = consumed, 0 = replayed, -1 = issued at or before the epoch.
const CONSUME: &str = concat!(
    epoch_lua!(),
    r"
if tonumber(ARGV[5]) <= epoch then
  return -1
end
if redis.call('SET', KEYS[3], '1', 'NX', 'PXAT', ARGV[4]) then
  return 1
end
return 0
"
);

/// Starts the epoch if needed; returns it.
const EPOCH: &str = concat!(epoch_lua!(), "return epoch\n");

/// A shared replay guard in Redis: each token is accepted once across every verifier
/// whose guard points at the same Redis with the same key prefix.
///
/// Guarantee (SPEC §7): Redis guard or introspection = once across every verifier and
/// issuer replica sharing the store. (Local SDK guard, by contrast = once per verifier
/// process.)
///
/// - **One round trip per token**, bounded by [`timeout`](RedisGuardBuilder::timeout)
///   (default 1 s): a Lua script runs `SET <prefix><key> 1 NX PXAT <ms>` with the
///   expiry the verifier gives ([`Presentation::keep_until`]: the token's `exp` plus
///   the clock leeway), so Redis forgets each `jti` once its token could no longer be
///   accepted. The layout is the Baton issuer's replay ledger's: with the default
///   prefix `{baton}:ledger:`, the key is the prefix and the hex of the first 128 bits
///   of SHA-256(`access-token <jti>`), and the epoch is `{baton}:ledger:epoch`. So
///   issuer replicas in distributed mode (`store = "redis://…"`) pointed at the same
///   Redis share it: a token this guard accepted introspects inactive at the issuer,
///   and one the issuer consumed is refused here. Fixed size, nothing in the clear.
/// - **Fails closed**: an error, a timeout, or Redis unreachable refuses the token with
///   [`VerifyError::SharedGuardUnavailable`](crate::VerifyError::SharedGuardUnavailable)
///   naming the reason. A failed connection is dropped and the next token connects
///   again, so verification works again once Redis is back, with no rebuild.
/// - **Data loss is caught**: the key `<prefix>epoch` is set to the current time at
///   connect if absent, recreated by the script whenever it has vanished, and moved
///   forward when the server process changed and may have lost writes (below); tokens
///   whose `iat` is at or before it are refused with
///   [`VerifyError::PredatesReplayLedger`](crate::VerifyError::PredatesReplayLedger),
///   since their use before the loss cannot be known.
///
/// Operate Redis with `maxmemory-policy noeviction`: an evicted replay key reopens the
/// replay window for its token. Clocks of verifiers and Redis must agree (NTP), since
/// keys expire at absolute times. The store is one Redis node, or a primary found
/// through Redis Sentinel (`redis+sentinel://` URLs, see
/// [`redis_store`](crate::redis_store)), never a Redis Cluster. After a failover the
/// guard asks the sentinels for the new primary. Whenever the server process changes
/// (failover or restart) and the new one is not known to hold every write the old one
/// acknowledged (`appendfsync always`, and not a promoted replica: replication is
/// asynchronous), the guard starts a new epoch, so tokens issued before are refused as
/// [`PredatesReplayLedger`](crate::VerifyError::PredatesReplayLedger).
///
/// ```no_run
/// # async fn example(bundle_pem: &[u8], token: &str) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use baton_sdk::{RedisReplayGuard, Verifier};
///
/// let guard = RedisReplayGuard::connect("redis://127.0.0.1:6379").await?;
/// let verifier = Verifier::builder(
///     "https://baton.example.org",
///     "spiffe://example.org/fn/payments".parse()?,
///     bundle_pem,
/// )?
/// .shared_replay_guard(Arc::new(guard))
/// .build_fetching()
/// .await?;
/// let caller = verifier.verify_async(token).await?;
/// # let _ = caller; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisReplayGuard {
    link: Arc<RedisLink>,
    script: redis::Script,
    prefix: String,
    epoch_key: String,
    server_key: String,
    timeout: Duration,
}

impl fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("RedisReplayGuard")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisReplayGuard {
    /// Default key prefix: the Baton issuer's replay ledger's, so a guard and issuer
    /// replicas on one Redis share one-time use.
    pub const DEFAULT_PREFIX: &'static str = "{baton}:ledger:";
    /// Default bound on one consume (and on the first connection).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    /// Connects with the defaults: key prefix
    /// [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX), timeout
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT). See [`RedisGuardBuilder::connect`].
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), baton_sdk::RedisGuardError> {
    /// let guard = baton_sdk::RedisReplayGuard::connect("redis://:secret@redis.internal:6379/0").await?;
    /// # let _ = guard; Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, RedisGuardError> {
        Self::builder(url).connect().await
    }

    /// Starts configuring a guard for the Redis at `url`: `redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS, or `redis+sentinel://host[:port][,host[:port]…]/service` for
    /// a primary found through Redis Sentinel (see [`redis_store`](crate::redis_store)).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), baton_sdk::RedisGuardError> {
    /// use std::time::Duration;
    /// let guard = baton_sdk::RedisReplayGuard::builder("redis://127.0.0.1:6379")
    ///     .key_prefix("payments:replay:")
    ///     .timeout(Duration::from_millis(300))
    ///     .connect()
    ///     .await?;
    /// # let _ = guard; Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>) -> RedisGuardBuilder {
        RedisGuardBuilder {
            url: url.into(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// The Redis key of `jti`: the issuer ledger's key of an access token (its
    /// `jti`s are 128 random bits, unique across audiences).
    fn key(&self, jti: &str) -> String {
        use std::fmt::Write as _;
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"access-token ");
        ctx.update(jti.as_bytes());
        let digest = ctx.finish();
        let mut key = self.prefix.clone();
        for byte in &digest.as_ref()[..16] {
            let _ = write!(key, "{byte:02x}");
        }
        key
    }

    async fn run(&self, p: Presentation<'_>) -> Result<(), SharedReplayError> {
        let key = self.key(p.jti());
        let keep_until_ms = p.keep_until().saturating_mul(1000);
        let (script, epoch_key, server_key) = (&self.script, &self.epoch_key, &self.server_key);
        let key = &key;
        let consume = self.link.run(|mut primary| async move {
            script
                .key(epoch_key)
                .key(server_key)
                .key(key)
                .arg(p.now())
                .arg(&*primary.server)
                .arg(primary.keeps_writes_arg())
                .arg(keep_until_ms)
                .arg(p.issued_at())
                .invoke_async::<i64>(&mut primary.connection)
                .await
        });
        let answer = match tokio::time::timeout(self.timeout, consume).await {
            Ok(answer) => answer,
            Err(_) => {
                self.link.failed();
                return Err(unavailable(GuardUnavailable::Timeout));
            }
        };
        match answer {
            Ok(1) => Ok(()),
            Ok(0) => Err(SharedReplayError::Replayed),
            Ok(-1) => Err(SharedReplayError::PredatesEpoch),
            Ok(_) => Err(unavailable(GuardUnavailable::StoreError)),
            Err(e) => Err(unavailable(classify(&e))),
        }
    }
}

impl SharedReplayGuard for RedisReplayGuard {
    fn consume<'a>(&'a self, presentation: Presentation<'a>) -> GuardFuture<'a> {
        Box::pin(self.run(presentation))
    }
}

fn unavailable(why: GuardUnavailable) -> SharedReplayError {
    SharedReplayError::Unavailable(why)
}

fn classify(e: &redis::RedisError) -> GuardUnavailable {
    if e.is_timeout() {
        GuardUnavailable::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        GuardUnavailable::Unreachable
    } else {
        GuardUnavailable::StoreError
    }
}

/// Configures a [`RedisReplayGuard`]; made by [`RedisReplayGuard::builder`].
///
/// ```no_run
/// # async fn example() -> Result<(), baton_sdk::RedisGuardError> {
/// let guard = baton_sdk::RedisReplayGuard::builder("redis://127.0.0.1:6379")
///     .key_prefix("baton:sdk:replay:")
///     .connect()
///     .await?;
/// # let _ = guard; Ok(()) }
/// ```
pub struct RedisGuardBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisGuardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGuardBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisGuardBuilder {
    /// Prefix of every key the guard writes (default
    /// [`RedisReplayGuard::DEFAULT_PREFIX`]). Verifiers share one-time use exactly
    /// when they share the Redis and the prefix; give a distinct prefix to unrelated
    /// deployments on one Redis.
    ///
    /// ```
    /// let builder = baton_sdk::RedisReplayGuard::builder("redis://127.0.0.1").key_prefix("team-a:");
    /// # let _ = builder;
    /// ```
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Longest wait for one consume, and for each connection attempt; past it the
    /// token is refused as unavailable (default [`RedisReplayGuard::DEFAULT_TIMEOUT`]).
    ///
    /// ```
    /// let builder = baton_sdk::RedisReplayGuard::builder("redis://127.0.0.1")
    ///     .timeout(std::time::Duration::from_millis(250));
    /// # let _ = builder;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects (within the timeout) and records the store's epoch if it has none
    /// yet. Fails if Redis cannot be reached now, so a misconfigured URL shows at
    /// start; once connected, outages are handled per token (fail closed) and the
    /// connection heals by itself. Must run inside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn example() {
    /// match baton_sdk::RedisReplayGuard::builder("redis://127.0.0.1:6379").connect().await {
    ///     Ok(guard) => { let _ = guard; }
    ///     Err(e) => eprintln!("replay guard: {e}"),
    /// }
    /// # }
    /// ```
    pub async fn connect(self) -> Result<RedisReplayGuard, RedisGuardError> {
        if self.prefix.is_empty() {
            return Err(RedisGuardError::EmptyPrefix);
        }
        if self.timeout.is_zero() {
            return Err(RedisGuardError::ZeroTimeout);
        }
        tokio::runtime::Handle::try_current().map_err(|_| RedisGuardError::NoRuntime)?;
        let target = RedisTarget::parse(&self.url).map_err(RedisGuardError::Url)?;
        let guard = RedisReplayGuard {
            link: Arc::new(RedisLink::new(target, self.timeout)),
            script: redis::Script::new(CONSUME),
            epoch_key: format!("{}epoch", self.prefix),
            server_key: format!("{}epoch-server", self.prefix),
            prefix: self.prefix,
            timeout: self.timeout,
        };
        // First use of this store (or of this primary): start its epoch now, so
        // tokens minted from here on are accepted (the script would otherwise start it
        // at the first token).
        let epoch = redis::Script::new(EPOCH);
        let started = guard.link.run(|mut primary| {
            let (epoch, guard) = (&epoch, &guard);
            async move {
                epoch
                    .key(&guard.epoch_key)
                    .key(&guard.server_key)
                    .arg(unix_now())
                    .arg(&*primary.server)
                    .arg(primary.keeps_writes_arg())
                    .invoke_async::<i64>(&mut primary.connection)
                    .await
            }
        });
        tokio::time::timeout(guard.timeout, started)
            .await
            .map_err(|_| RedisGuardError::Timeout)?
            .map_err(RedisGuardError::Connect)?;
        Ok(guard)
    }
}

/// Why a [`RedisReplayGuard`] could not be set up.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let err = baton_sdk::RedisReplayGuard::connect("not a url").await.unwrap_err();
/// assert!(matches!(err, baton_sdk::RedisGuardError::Url(_)));
/// # });
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisGuardError {
    /// The URL is not a Redis URL (its message never repeats the URL).
    #[error("Redis URL refused: {0}")]
    Url(#[source] RedisTargetError),
    /// Redis refused the connection or the first command (wrong password, wrong
    /// database, not reachable).
    #[error("cannot use Redis for the replay guard: {0}")]
    Connect(#[source] redis::RedisError),
    /// Redis did not answer within the guard's timeout.
    #[error("Redis did not answer within the replay guard's timeout; check that it is reachable")]
    Timeout,
    /// The key prefix is empty: every key needs a namespace.
    #[error("the replay guard's key prefix is empty; choose one such as \"baton:sdk:replay:\"")]
    EmptyPrefix,
    /// A zero timeout would refuse every token.
    #[error("the replay guard's timeout is zero; every token would be refused")]
    ZeroTimeout,
    /// `connect` was awaited outside a Tokio runtime, which the connection needs.
    #[error("RedisReplayGuard::connect must run inside a Tokio runtime")]
    NoRuntime,
}
