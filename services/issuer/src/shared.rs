//! The distributed store's shared state on Redis (SPEC §7 "Distributed"): what every
//! issuer replica reads and writes besides the replay ledger — the sealed keyring and,
//! in time, the deny list, join tokens and policy.
//!
//! These are rare, small operations (a rotation, a revocation, a reload, a twice-a-second
//! generation check), so they use one reused synchronous connection with bounded
//! connect, read and write timeouts, called off the async runtime; the hot path (the
//! replay ledger) has its own multiplexed asynchronous connection. Every key shares the
//! hash tag `{baton}`, so multi-key scripts stay on one slot should the store be a
//! Redis Cluster.
//!
//! The store is one server or a primary found through Redis Sentinel
//! ([`RedisTarget`]): a connection that met any error is not kept, so the next
//! operation connects again and, through Sentinel, to the primary of the moment.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_sdk::redis_store::RedisTarget;

/// Prefix of every key Baton keeps in Redis; the braces are a Cluster hash tag.
pub const KEY_PREFIX: &str = "{baton}:";
/// Default bound on connecting to Redis and on each command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the shared store could not be used. Messages never carry the URL's password.
#[derive(Debug, thiserror::Error)]
pub enum SharedStoreError {
    /// The store URL is not a Redis or Redis Sentinel URL the client accepts.
    #[error("store URL {url} is not usable: {reason}")]
    Url {
        /// The URL with any password removed.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Redis did not answer, or answered with an error.
    #[error("the store {url} is unreachable or refused a command: {reason}")]
    Unavailable {
        /// The URL with any password removed.
        url: String,
        /// The client's error.
        reason: String,
    },
}

/// A Redis server shared by every issuer replica.
#[derive(Clone)]
pub struct SharedStore {
    target: RedisTarget,
    /// For messages: the URL without its password.
    url: String,
    timeout: Duration,
    /// The connection kept between operations; dropped when it breaks.
    idle: Arc<Mutex<Option<redis::Connection>>>,
    /// Set by [`unavailable`](Self::unavailable): the connection in use met an error
    /// (it may be open yet reach a replica, which refuses writes), so it is not kept.
    discard: Arc<AtomicBool>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A connection to the shared store, returned for reuse when dropped unless it broke.
pub struct Connection<'a> {
    conn: Option<redis::Connection>,
    idle: &'a Mutex<Option<redis::Connection>>,
    discard: &'a AtomicBool,
}

impl Deref for Connection<'_> {
    type Target = redis::Connection;

    fn deref(&self) -> &redis::Connection {
        // Present from construction until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Connection<'_> {
    fn deref_mut(&mut self) -> &mut redis::Connection {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        let failed = self.discard.swap(false, Ordering::Relaxed);
        if let Some(conn) = self
            .conn
            .take()
            .filter(|conn| !failed && redis::ConnectionLike::is_open(conn))
        {
            *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        }
    }
}

impl SharedStore {
    /// Checks `url` and makes sure the server answers `PING` within `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, SharedStoreError> {
        let target = RedisTarget::parse(url).map_err(|e| SharedStoreError::Url {
            url: redact(url),
            reason: e.to_string(),
        })?;
        let store = Self {
            url: target.to_string(),
            target,
            timeout,
            idle: Arc::new(Mutex::new(None)),
            discard: Arc::new(AtomicBool::new(false)),
        };
        let mut conn = store.connection()?;
        redis::cmd("PING")
            .query::<String>(&mut *conn)
            .map_err(|e| store.unavailable(&e))?;
        drop(conn);
        Ok(store)
    }

    /// The store's URL without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The idle connection, or a new one, with bounded connect, read and write times.
    /// Concurrent callers each get their own; one is kept for the next call.
    pub fn connection(&self) -> Result<Connection<'_>, SharedStoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let conn = match idle {
            Some(conn) => conn,
            None => self
                .target
                .connect_blocking(self.timeout)
                .map_err(|e| self.unavailable(&e))?,
        };
        Ok(Connection {
            conn: Some(conn),
            idle: &self.idle,
            discard: &self.discard,
        })
    }

    /// An [`SharedStoreError::Unavailable`] for this store. The connection in use is
    /// then not kept.
    pub fn unavailable(&self, e: &redis::RedisError) -> SharedStoreError {
        self.discard.store(true, Ordering::Relaxed);
        SharedStoreError::Unavailable {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// The full name of a Baton key: [`KEY_PREFIX`] + `name`.
    pub fn key(name: &str) -> String {
        format!("{KEY_PREFIX}{name}")
    }
}

/// `url` with every password replaced by `***`, fit for logs and messages.
pub fn redact(url: &str) -> String {
    baton_sdk::redis_store::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:1"), "redis://127.0.0.1:1");
        assert!(!redact("not a url hunter2").contains("hunter2"));
        let err = SharedStore::connect("redis://:hunter2@127.0.0.1:1/0", Duration::from_secs(1))
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(err, SharedStoreError::Unavailable { .. }), "{err}");
    }

    #[test]
    fn unusable_urls_are_named_as_such() {
        let err = SharedStore::connect("http://127.0.0.1:1", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, SharedStoreError::Url { .. }), "{err}");
    }
}
