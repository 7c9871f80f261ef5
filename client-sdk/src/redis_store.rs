//! Where a Redis store is, and a connection to its primary that follows failovers
//! (feature `redis`). Shared by the SDK's [`RedisReplayGuard`](crate::RedisReplayGuard)
//! and the Baton issuer's distributed mode, so both accept the same URLs:
//!
//! - one server: `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS),
//!   `unix:///path/to/socket`;
//! - a primary watched by Redis Sentinel:
//!   `redis+sentinel://[user:password@]host[:port][,host[:port]…]/service[/db]`, or
//!   `rediss+sentinel://…` for TLS to the sentinels and the primary. The hosts are
//!   sentinels (port 26379 by default); the user and password are the primary's. Give
//!   sentinels that ask for a password `?sentinel_password=…` (and
//!   `sentinel_username=…`).
//!
//! With Sentinel, the primary is found the way the Sentinel client protocol says: ask
//! each sentinel in turn for the service's primary (`SENTINEL GET-MASTER-ADDR-BY-NAME`),
//! connect, and check with `ROLE` that it is a primary, not a replica still being
//! promoted. Every step is bounded by the caller's timeout, so a sentinel host that
//! drops packets costs a timeout, never a hang. A connection that fails, times out or
//! finds a read-only replica is dropped, and the next operation asks the sentinels
//! again: after a failover, service resumes as soon as Sentinel has promoted a replica.
//!
//! A server can lose writes it acknowledged: replication is asynchronous, so a failover
//! can lose the last writes of the old primary, and a restart loses those not yet on
//! disk (with `appendfsync everysec`, Redis's default for an append-only file, up to a
//! second of them). [`Primary::server`] names the server process a connection reaches
//! (its `run_id`) and [`Primary::keeps_writes`] says whether that process is known to
//! hold every write its predecessor acknowledged, so a replay ledger can notice that
//! it now writes to another process and start a new epoch rather than trust a history
//! that may miss entries.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, RedisResult, ServerErrorKind};

/// Sentinel's default port.
const SENTINEL_PORT: u16 = 26379;

/// Why a store URL was refused. Messages never repeat the URL: it may hold a password.
///
/// ```
/// let err = baton_sdk::redis_store::RedisTarget::parse("memcached://cache:11211").unwrap_err();
/// assert!(err.to_string().contains("redis+sentinel://"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisTargetError {
    /// The scheme is none of the supported ones.
    #[error(
        "not a Redis store URL: use redis://[user:password@]host[:port][/db], rediss:// (TLS), unix:///path, or redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]"
    )]
    Scheme,
    /// The scheme is right but the rest is not.
    #[error("the Redis store URL is malformed: {0}")]
    Malformed(&'static str),
    /// A query option this client does not know.
    #[error(
        "the Redis Sentinel URL has an unknown option {0:?}; known: sentinel_username, sentinel_password"
    )]
    UnknownOption(String),
}

/// Where a Redis store is: one server, or a primary watched by Redis Sentinel.
///
/// Cheap to clone. Its [`Display`](fmt::Display) is the URL with every password
/// replaced by `***`.
///
/// ```
/// use baton_sdk::redis_store::RedisTarget;
///
/// let target = RedisTarget::parse(
///     "redis+sentinel://:s3cret@10.0.0.1,10.0.0.2:26380/baton/2?sentinel_password=pw",
/// )?;
/// assert!(target.is_sentinel());
/// assert_eq!(
///     target.to_string(),
///     "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26380/baton/2?sentinel_password=***"
/// );
/// assert!(!RedisTarget::parse("redis://127.0.0.1:6379/0")?.is_sentinel());
/// # Ok::<(), baton_sdk::redis_store::RedisTargetError>(())
/// ```
#[derive(Clone)]
pub struct RedisTarget {
    kind: Kind,
    shown: Arc<str>,
}

#[derive(Clone)]
enum Kind {
    Server(Arc<Client>),
    Sentinel(Arc<Sentinel>),
}

/// A service watched by sentinels, and how to reach its primary once named.
struct Sentinel {
    service: String,
    sentinels: Vec<redis::ConnectionInfo>,
    /// `redis` or `rediss`: the primary's scheme.
    scheme: &'static str,
    /// The primary's user info as written in the URL (still percent-encoded), with
    /// its `@`, or empty.
    userinfo: String,
    db: i64,
    /// The sentinel that answered last, asked first next time.
    preferred: AtomicUsize,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisTarget").field(&self.shown).finish()
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::str::FromStr for RedisTarget {
    type Err = RedisTargetError;

    fn from_str(url: &str) -> Result<Self, RedisTargetError> {
        Self::parse(url)
    }
}

impl RedisTarget {
    /// Parses a store URL (see the [module](self) for the forms). Connects to nothing.
    pub fn parse(url: &str) -> Result<Self, RedisTargetError> {
        let (scheme, rest) = url.split_once("://").ok_or(RedisTargetError::Scheme)?;
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" | "valkey" | "valkeys" => {
                let client = Client::open(url)
                    .map_err(|_| RedisTargetError::Malformed("not a valid Redis URL"))?;
                Ok(Self {
                    kind: Kind::Server(Arc::new(client)),
                    shown: redact_server(url).into(),
                })
            }
            "redis+sentinel" => Self::sentinel(rest, false),
            "rediss+sentinel" => Self::sentinel(rest, true),
            _ => Err(RedisTargetError::Scheme),
        }
    }

    fn sentinel(rest: &str, tls: bool) -> Result<Self, RedisTargetError> {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let scheme = if tls { "rediss" } else { "redis" };
        // The url crate reads everything but the host list, which it cannot.
        let at = userinfo.map_or_else(String::new, |u| format!("{u}@"));
        let probe = url::Url::parse(&format!("redis://{at}sentinels{tail}"))
            .map_err(|_| RedisTargetError::Malformed("bad user info, path or query"))?;
        if probe.fragment().is_some() {
            return Err(RedisTargetError::Malformed(
                "a fragment (#) has no meaning here",
            ));
        }

        let mut segments = probe.path_segments().into_iter().flatten();
        let service = segments.next().unwrap_or_default();
        if service.is_empty()
            || !service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(RedisTargetError::Malformed(
                "the path must name the Sentinel service: /service[/db]",
            ));
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<i64>()
                .ok()
                .filter(|db| *db >= 0)
                .ok_or(RedisTargetError::Malformed("the database must be a number"))?,
        };
        if segments.next().is_some() {
            return Err(RedisTargetError::Malformed(
                "the path must be /service or /service/db",
            ));
        }

        let mut sentinel_user = None;
        let mut sentinel_password = None;
        for (name, value) in probe.query_pairs() {
            match &*name {
                "sentinel_username" => sentinel_user = Some(value.into_owned()),
                "sentinel_password" => sentinel_password = Some(value.into_owned()),
                _ => return Err(RedisTargetError::UnknownOption(name.into_owned())),
            }
        }

        let mut sentinels = Vec::new();
        let mut shown_hosts = Vec::new();
        for host in hosts.split(',') {
            let parsed = url::Url::parse(&format!("redis://{host}"))
                .ok()
                .filter(|u| u.path().is_empty() && !host.contains('@'))
                .and_then(|u| Some((u.host_str()?.to_owned(), u.port())))
                .filter(|(h, _)| !h.is_empty())
                .ok_or(RedisTargetError::Malformed(
                    "sentinels must be host[:port], separated by commas",
                ))?;
            let (host, port) = (parsed.0, parsed.1.unwrap_or(SENTINEL_PORT));
            let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(
                format!("{scheme}://{host}:{port}"),
            )
            .map_err(|_| RedisTargetError::Malformed("a sentinel address is not valid"))?;
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &sentinel_user {
                settings = settings.set_username(user);
            }
            if let Some(password) = &sentinel_password {
                settings = settings.set_password(password);
            }
            info = info.set_redis_settings(settings);
            sentinels.push(info);
            shown_hosts.push(format!("{host}:{port}"));
        }

        let mut shown = format!("{scheme}+sentinel://");
        if !probe.username().is_empty() || probe.password().is_some() {
            shown.push_str(probe.username());
            if probe.password().is_some() {
                shown.push_str(":***");
            }
            shown.push('@');
        }
        shown.push_str(&shown_hosts.join(","));
        shown.push('/');
        shown.push_str(service);
        if db != 0 {
            shown.push_str(&format!("/{db}"));
        }
        let mut options = Vec::new();
        if let Some(user) = &sentinel_user {
            options.push(format!("sentinel_username={user}"));
        }
        if sentinel_password.is_some() {
            options.push("sentinel_password=***".to_owned());
        }
        if !options.is_empty() {
            shown.push('?');
            shown.push_str(&options.join("&"));
        }

        Ok(Self {
            kind: Kind::Sentinel(Arc::new(Sentinel {
                service: service.to_owned(),
                sentinels,
                scheme,
                userinfo: at,
                db,
                preferred: AtomicUsize::new(0),
            })),
            shown: shown.into(),
        })
    }

    /// Whether the primary is found through Redis Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.kind, Kind::Sentinel(_))
    }

    /// A blocking connection to the primary, with every step and each later command's
    /// reads and writes bounded by `timeout`. Through Sentinel, the server is checked
    /// to be the primary.
    ///
    /// # Errors
    ///
    /// The client's error: unreachable, refused, or (Sentinel) no primary known or the
    /// named one is a replica (`READONLY`).
    pub fn connect_blocking(&self, timeout: Duration) -> RedisResult<redis::Connection> {
        let client = match &self.kind {
            Kind::Server(client) => Client::clone(client),
            Kind::Sentinel(sentinel) => sentinel.primary_client(timeout)?,
        };
        let mut conn = client.get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        if self.is_sentinel() {
            let role: redis::Value = redis::cmd("ROLE").query(&mut conn)?;
            require_primary(&role)?;
        }
        Ok(conn)
    }

    /// An asynchronous multiplexed connection to the primary, each step bounded by
    /// `timeout`, named by its run id; through Sentinel, checked to be the primary.
    async fn connect(&self, timeout: Duration) -> RedisResult<Primary> {
        let client = match &self.kind {
            Kind::Server(client) => Client::clone(client),
            Kind::Sentinel(sentinel) => {
                // Rare (after a failure only) and short: the blocking discovery runs
                // on the blocking pool rather than a second, asynchronous copy of it.
                let sentinel = Arc::clone(sentinel);
                tokio::task::spawn_blocking(move || sentinel.primary_client(timeout))
                    .await
                    .map_err(|_| {
                        RedisError::from((ErrorKind::Client, "the Sentinel lookup was cancelled"))
                    })??
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.is_sentinel() {
            let role: redis::Value = redis::cmd("ROLE").query_async(&mut connection).await?;
            require_primary(&role)?;
        }
        // The default sections: server, persistence and replication among them.
        let info: String = redis::cmd("INFO").query_async(&mut connection).await?;
        // Managed services often disable CONFIG: then nothing is known to be durable.
        let fsync: Option<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut connection)
            .await
            .ok();
        let fsync_always = fsync.is_some_and(|pair| pair.get(1).is_some_and(|v| v == "always"));
        Ok(Primary {
            connection,
            server: run_id(&info)?,
            keeps_writes: keeps_writes(&info, fsync_always),
        })
    }
}

impl Sentinel {
    /// Asks the sentinels, the last one that answered first, for the primary.
    fn primary_client(&self, timeout: Duration) -> RedisResult<Client> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.sentinels.len() {
            let at = (first + i) % self.sentinels.len();
            match self.ask(&self.sentinels[at], timeout) {
                Ok((host, port)) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    let url = format!(
                        "{}://{}{host}:{port}/{}",
                        self.scheme, self.userinfo, self.db
                    );
                    return Client::open(url);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((ErrorKind::EmptySentinelList, "no sentinel in the URL"))
        }))
    }

    fn ask(
        &self,
        sentinel: &redis::ConnectionInfo,
        timeout: Duration,
    ) -> RedisResult<(String, u16)> {
        let mut conn = Client::open(sentinel.clone())?.get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.service)
            .query(&mut conn)?;
        addr.ok_or_else(|| {
            RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "the sentinel does not monitor this service",
            ))
        })
    }
}

/// Refuses a server whose `ROLE` is not `master`: during a failover a sentinel may
/// still name a primary that has just become a replica.
fn require_primary(role: &redis::Value) -> RedisResult<()> {
    let first = match role {
        redis::Value::Array(items) => items.first(),
        _ => None,
    };
    let is_primary = match first {
        Some(redis::Value::BulkString(name)) => name == b"master",
        Some(redis::Value::SimpleString(name)) => name == "master",
        _ => false,
    };
    if is_primary {
        Ok(())
    } else {
        Err(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "the server Sentinel named is not a primary (a failover is under way)",
        )))
    }
}

/// The value of `field` in an `INFO` answer.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Whether a server holds every write acknowledged before it started: it writes each
/// one to its append-only file before answering (`appendfsync always`), and it is not
/// a replica promoted since it started (whose primary replicated asynchronously; a
/// promotion sets `second_repl_offset`).
fn keeps_writes(info: &str, fsync_always: bool) -> bool {
    fsync_always
        && info_field(info, "aof_enabled") == Some("1")
        && info_field(info, "second_repl_offset") == Some("-1")
}

/// The `run_id` line of `INFO server`.
fn run_id(info: &str) -> RedisResult<Arc<str>> {
    info_field(info, "run_id")
        .map(Arc::from)
        .filter(|id: &Arc<str>| !id.is_empty())
        .ok_or_else(|| {
            RedisError::from((ErrorKind::UnexpectedReturnType, "INFO server has no run_id"))
        })
}

/// Whether `e` says the connection was unusable, not that the operation failed on a
/// working one: lost, closed, refused, or reaching a server that is no longer the
/// primary (`READONLY`: nothing was written).
fn is_stale_connection(e: &RedisError) -> bool {
    !e.is_timeout()
        && (e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly))
}

/// `url` with the password of its user info, if any, replaced by `***`.
fn redact_server(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// A store URL fit for logs and messages: [`RedisTarget`]'s form when it parses,
/// otherwise one with the password removed, or a placeholder.
///
/// ```
/// let shown = baton_sdk::redis_store::redact("redis://:hunter2@10.0.0.5:6379/0");
/// assert_eq!(shown, "redis://:***@10.0.0.5:6379/0");
/// assert!(!baton_sdk::redis_store::redact("redis+sentinel://:hunter2@a,b").contains("hunter2"));
/// ```
pub fn redact(url: &str) -> String {
    match RedisTarget::parse(url) {
        Ok(target) => target.to_string(),
        Err(_) if url.contains("+sentinel://") => "<unparseable Sentinel URL>".to_owned(),
        Err(_) => redact_server(url),
    }
}

/// A connection to a store's primary, and which server process it reaches.
#[derive(Clone)]
pub struct Primary {
    /// Multiplexed: clone it per operation.
    pub connection: MultiplexedConnection,
    /// The server's `run_id`: it changes with every restart and failover.
    pub server: Arc<str>,
    /// Whether this server is known to hold every write acknowledged before it
    /// started: `appendonly yes` with `appendfsync always`, and not a replica promoted
    /// since. When `false`, writes its predecessor (the same server before a restart,
    /// or the old primary) acknowledged may be missing.
    pub keeps_writes: bool,
}

impl Primary {
    /// `"1"` or `"0"`: [`keeps_writes`](Self::keeps_writes) as a script argument.
    pub fn keeps_writes_arg(&self) -> &'static str {
        if self.keeps_writes { "1" } else { "0" }
    }
}

impl fmt::Debug for Primary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Primary")
            .field("server", &self.server)
            .field("keeps_writes", &self.keeps_writes)
            .finish_non_exhaustive()
    }
}

/// A connection to a store's primary that heals by itself: the first operation after
/// a failure connects again (asking the sentinels again, so it follows a failover).
/// Operations wait for the connection attempt in flight rather than start their own.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use baton_sdk::redis_store::{RedisLink, RedisTarget};
///
/// let target = RedisTarget::parse("redis+sentinel://10.0.0.1,10.0.0.2/baton")?;
/// let link = RedisLink::new(target, Duration::from_secs(1));
/// let pong: String = link
///     .run(|mut primary| async move { redis::cmd("PING").query_async(&mut primary.connection).await })
///     .await?;
/// # let _ = pong; Ok(()) }
/// ```
pub struct RedisLink {
    target: RedisTarget,
    timeout: Duration,
    current: Mutex<Option<Primary>>,
    dialing: tokio::sync::Mutex<()>,
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLink")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to `target` whose connection attempts are each bounded by `timeout`.
    /// Connects to nothing yet.
    pub fn new(target: RedisTarget, timeout: Duration) -> Self {
        Self {
            target,
            timeout,
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// Where the link goes.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// Runs `op` on the primary. Any error drops the connection. An error that says
    /// the connection was already gone when `op` started (closed by a restart, or
    /// reaching a former primary that now refuses writes) is tried once more on a new
    /// connection, so a failover or restart between two operations costs no failed
    /// operation. That second try is safe for a one-time write: the first either never
    /// reached a primary or, if its answer alone was lost, makes the second see it as
    /// already done (refused, the safe side). Timeouts are the caller's to bound.
    ///
    /// # Errors
    ///
    /// The client's error when no primary could be reached, or `op`'s.
    pub async fn run<T, F, Fut>(&self, op: F) -> RedisResult<T>
    where
        F: Fn(Primary) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (primary, reused) = self.connection().await?;
        match op(primary).await {
            Ok(value) => Ok(value),
            Err(e) => {
                self.failed();
                if !(reused && is_stale_connection(&e)) {
                    return Err(e);
                }
                let (primary, _) = self.connection().await?;
                let again = op(primary).await;
                if again.is_err() {
                    self.failed();
                }
                again
            }
        }
    }

    /// The current connection to the primary, connecting first if there is none.
    ///
    /// # Errors
    ///
    /// The client's error when no primary could be reached.
    pub async fn primary(&self) -> RedisResult<Primary> {
        self.connection().await.map(|(primary, _)| primary)
    }

    /// The connection, and whether it was made before this call.
    async fn connection(&self) -> RedisResult<(Primary, bool)> {
        if let Some(primary) = self.current() {
            return Ok((primary, true));
        }
        let _turn = self.dialing.lock().await;
        if let Some(primary) = self.current() {
            return Ok((primary, true));
        }
        let primary = self.target.connect(self.timeout).await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(primary.clone());
        Ok((primary, false))
    }

    /// Drops the current connection after an operation on it failed in any way (lost,
    /// timed out, refused by a replica, a server error): the next operation connects
    /// again, and through Sentinel asks for the primary again.
    pub fn failed(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn current(&self) -> Option<Primary> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> RedisTargetError {
        RedisTarget::parse(url).unwrap_err()
    }

    #[test]
    fn sentinel_urls_name_sentinels_service_and_database() {
        let t = RedisTarget::parse("redis+sentinel://[::1]:26380,sentinel-b/baton-store").unwrap();
        assert_eq!(
            t.to_string(),
            "redis+sentinel://[::1]:26380,sentinel-b:26379/baton-store"
        );
        let Kind::Sentinel(s) = &t.kind else {
            panic!("not a sentinel target")
        };
        assert_eq!(
            (s.service.as_str(), s.db, s.sentinels.len()),
            ("baton-store", 0, 2)
        );
        assert_eq!(s.scheme, "redis");

        let tls = RedisTarget::parse("rediss+sentinel://user:p%40ss@h:1/svc/3").unwrap();
        let Kind::Sentinel(s) = &tls.kind else {
            panic!("not a sentinel target")
        };
        assert_eq!(
            (s.scheme, s.db, s.userinfo.as_str()),
            ("rediss", 3, "user:p%40ss@")
        );
        assert_eq!(tls.to_string(), "rediss+sentinel://user:***@h:1/svc/3");
    }

    #[test]
    fn malformed_sentinel_urls_are_refused_without_echoing_secrets() {
        for url in [
            "redis+sentinel://:hunter2@h1,h2",
            "redis+sentinel://:hunter2@h1/",
            "redis+sentinel://h1/svc/notanumber",
            "redis+sentinel://h1/svc/0/extra",
            "redis+sentinel://h1/sv%20c",
            "redis+sentinel://h1,,h2/svc",
            "redis+sentinel://h1:99999/svc",
            "redis+sentinel:///svc",
            "redis+sentinel://h1/svc#frag",
        ] {
            let err = refused(url);
            assert!(
                matches!(err, RedisTargetError::Malformed(_)),
                "{url}: {err:?}"
            );
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert_eq!(
            refused("redis+sentinel://h1/svc?password=hunter2"),
            RedisTargetError::UnknownOption("password".into())
        );
        assert_eq!(refused("memcached://h1"), RedisTargetError::Scheme);
        assert_eq!(refused("no scheme"), RedisTargetError::Scheme);
        assert!(matches!(
            refused("redis://h1:notaport"),
            RedisTargetError::Malformed(_)
        ));
    }

    #[test]
    fn passwords_never_reach_the_shown_url() {
        let t = RedisTarget::parse(
            "redis+sentinel://u:hunter2@h/svc?sentinel_username=s&sentinel_password=hunter3",
        )
        .unwrap();
        let shown = t.to_string();
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(!format!("{t:?}").contains("hunter"));
        assert_eq!(
            redact("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert!(!redact("not a url hunter2").contains("hunter2"));
        assert!(!redact("redis+sentinel://:hunter2@h1/svc?x=1").contains("hunter2"));
    }

    #[test]
    fn only_a_master_role_is_a_primary() {
        use redis::Value;
        let master = Value::Array(vec![Value::BulkString(b"master".to_vec()), Value::Int(0)]);
        let replica = Value::Array(vec![Value::BulkString(b"slave".to_vec())]);
        assert!(require_primary(&master).is_ok());
        let err = require_primary(&replica).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly));
        assert!(require_primary(&Value::Nil).is_err());
    }

    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f1c0d\r\ntcp_port:6379\r\n";
        assert_eq!(&*run_id(info).unwrap(), "4f1c0d");
        assert!(run_id("# Server\r\nrun_id:\r\n").is_err());
        assert!(run_id("# Server\r\nrun_idx:1\r\n").is_err());
    }

    #[test]
    fn only_a_synced_unpromoted_server_keeps_every_acknowledged_write() {
        let info = |aof: &str, second: &str| {
            format!(
                "# Persistence\r\naof_enabled:{aof}\r\n# Replication\r\nsecond_repl_offset:{second}\r\n"
            )
        };
        assert!(keeps_writes(&info("1", "-1"), true));
        assert!(
            !keeps_writes(&info("1", "-1"), false),
            "everysec may lose a second"
        );
        assert!(!keeps_writes(&info("0", "-1"), true), "no append-only file");
        assert!(
            !keeps_writes(&info("1", "1234"), true),
            "a promoted replica"
        );
        assert!(!keeps_writes("", true), "nothing known");
    }
}
