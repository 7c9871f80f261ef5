//! The identity deny list (SPEC §9 `baton identities revoke`): SPIFFE IDs that get no
//! new token and whose tokens introspect as inactive.
//!
//! Attestation reads the list on every request, so reads are lock-free: the set sits
//! behind an [`ArcSwap`] and a writer publishes a new copy (copy-on-write). Revocations
//! are rare and the list is small, so copying it on write costs nothing that matters.
//!
//! [`DenyStore`] persists the list in the data directory (`denylist.json`, SPEC §7): a
//! writer stores the change durably first, then publishes it to the in-memory list, so
//! a denial the operator was told about survives a restart. In the distributed store
//! the list is a Redis set, `{baton}:deny`, with a generation counter bumped by every
//! change: a denial is written there first, and every replica picks it up with
//! [`DenyStore::refresh`], which reads the set again only when the generation moved.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use baton_proto::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::fsio::{self, Mode};
use crate::shared::{SharedStore, SharedStoreError};

/// The set of denied workload identities.
///
/// ```
/// use baton_issuer::deny::DenyList;
/// let deny = DenyList::new();
/// let id = "spiffe://example.org/fn/orders".parse().unwrap();
/// assert!(deny.insert(&id));
/// assert!(deny.contains(&id));
/// assert!(deny.remove(&id));
/// assert!(!deny.contains(&id));
/// ```
#[derive(Debug, Default)]
pub struct DenyList {
    ids: ArcSwap<HashSet<SpiffeId>>,
}

impl DenyList {
    /// An empty deny list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A deny list holding `ids` (e.g. loaded from the data dir at start).
    pub fn from_ids(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            ids: ArcSwap::from_pointee(ids.into_iter().collect()),
        }
    }

    /// Whether `id` is denied. Lock-free; call it on every request, never cache the answer.
    pub fn contains(&self, id: &SpiffeId) -> bool {
        self.ids.load().contains(id)
    }

    /// Denies `id`. Returns `false` if it was already denied.
    pub fn insert(&self, id: &SpiffeId) -> bool {
        if self.contains(id) {
            return false;
        }
        // `rcu` retries if another writer published in between, so no change is lost.
        let mut added = false;
        self.ids.rcu(|current| {
            let mut next = HashSet::clone(current);
            added = next.insert(id.clone());
            next
        });
        added
    }

    /// Lifts the denial of `id`. Returns `false` if it was not denied.
    pub fn remove(&self, id: &SpiffeId) -> bool {
        if !self.contains(id) {
            return false;
        }
        let mut removed = false;
        self.ids.rcu(|current| {
            let mut next = HashSet::clone(current);
            removed = next.remove(id);
            next
        });
        removed
    }

    /// The current set, as one consistent snapshot (for `baton identities list` and
    /// for persisting the list).
    pub fn snapshot(&self) -> Arc<HashSet<SpiffeId>> {
        self.ids.load_full()
    }

    /// Replaces the whole set at once (e.g. after reloading it from the store).
    pub fn replace(&self, ids: HashSet<SpiffeId>) {
        self.ids.store(Arc::new(ids));
    }

    /// Number of denied identities.
    pub fn len(&self) -> usize {
        self.ids.load().len()
    }

    /// Whether no identity is denied.
    pub fn is_empty(&self) -> bool {
        self.ids.load().is_empty()
    }
}

/// Version of the deny-list file format.
const FILE_VERSION: u8 = 1;
/// Largest deny-list file read: tens of thousands of IDs, far beyond any real list.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why the persisted deny list could not be read or written. Startup refuses to run
/// with an unreadable list rather than forget denials.
#[derive(Debug, thiserror::Error)]
pub enum DenyFileError {
    /// Reading the file failed.
    #[error("cannot read the identity deny list {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file does not parse, or holds something that is not a SPIFFE ID.
    #[error(
        "{path} is not a valid identity deny list ({reason}); restore it from a backup or fix it by hand"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing the file failed; the identity was not denied.
    #[error("cannot write the identity deny list {path}; the identity was not denied")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The shared store failed; nothing changed.
    #[error("identity deny list: {0}")]
    Shared(#[from] SharedStoreError),
    /// The shared store holds something that is not a SPIFFE ID.
    #[error(
        "the shared identity deny list holds {0:?}, which is not a SPIFFE ID; remove it with redis-cli SREM"
    )]
    SharedInvalid(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyFile {
    version: u8,
    /// Sorted, so the file diffs cleanly.
    denied: Vec<String>,
}

/// The deny list and the file that persists it.
///
/// ```
/// use baton_issuer::deny::DenyStore;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("denylist.json");
/// let store = DenyStore::open(path.clone()).unwrap();
/// let id = "spiffe://example.org/fn/orders".parse().unwrap();
/// assert!(store.deny(&id).unwrap());
/// assert!(store.list().contains(&id));
/// // A restart reads it back.
/// assert!(DenyStore::open(path).unwrap().list().contains(&id));
/// ```
#[derive(Debug)]
pub struct DenyStore {
    list: Arc<DenyList>,
    path: PathBuf,
    /// The distributed store holding the list, when there is one.
    shared: Option<SharedStore>,
    /// The shared list's generation the in-memory list reflects.
    generation: AtomicU64,
    /// Serializes writers, so two denials cannot each write a file missing the other.
    writing: Mutex<()>,
}

/// Adds ARGV[1] to the set KEYS[1]; when it was new, bumps the generation KEYS[2].
/// Returns 1 if added, 0 if already there.
const DENY_SCRIPT: &str = r"
local added = redis.call('SADD', KEYS[1], ARGV[1])
if added == 1 then redis.call('INCR', KEYS[2]) end
return added
";

impl DenyStore {
    /// Loads the list persisted at `path`; a missing file is an empty list. Blocking
    /// I/O: call it at start-up.
    pub fn open(path: PathBuf) -> Result<Self, DenyFileError> {
        let ids = match fsio::read_bounded(&path, MAX_FILE_BYTES) {
            Ok(bytes) => parse_file(&path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(source) => return Err(DenyFileError::Read { path, source }),
        };
        Ok(Self {
            list: Arc::new(DenyList::from_ids(ids)),
            path,
            shared: None,
            generation: AtomicU64::new(0),
            writing: Mutex::new(()),
        })
    }

    /// The list kept in the distributed store. Denials recorded in the data directory's
    /// file at `path` (from embedded mode) are added to it first, so moving to Redis
    /// forgets none. Blocking I/O: call it at start-up.
    pub fn open_shared(path: PathBuf, shared: SharedStore) -> Result<Self, DenyFileError> {
        let local = Self::open(path)?;
        for id in local.list.snapshot().iter() {
            local.add_shared(&shared, id)?;
        }
        let store = Self {
            shared: Some(shared),
            ..local
        };
        store.refresh()?;
        Ok(store)
    }

    /// Reloads the shared list if another replica changed it; returns whether it did.
    /// A no-op for the embedded store. Blocking I/O.
    pub fn refresh(&self) -> Result<bool, DenyFileError> {
        let Some(shared) = &self.shared else {
            return Ok(false);
        };
        let mut conn = shared.connection()?;
        let generation: Option<u64> = redis::cmd("GET")
            .arg(SharedStore::key("deny:generation"))
            .query(&mut *conn)
            .map_err(|e| shared.unavailable(&e))?;
        let generation = generation.unwrap_or(0);
        let known = self.generation.load(Ordering::Acquire);
        if generation == known && generation != 0 {
            return Ok(false);
        }
        if generation == 0 && known != 0 {
            // The store lost its data: denials are never forgotten, put ours back.
            tracing::warn!("the shared store held no deny list; restoring this replica's");
            drop(conn);
            for id in self.list.snapshot().iter() {
                self.add_shared(shared, id)?;
            }
            conn = shared.connection()?;
        }
        // Read the generation again inside the transaction, so the set and the number
        // recorded belong together.
        let (members, generation): (Vec<String>, Option<u64>) = redis::pipe()
            .atomic()
            .cmd("SMEMBERS")
            .arg(SharedStore::key("deny"))
            .cmd("GET")
            .arg(SharedStore::key("deny:generation"))
            .query(&mut *conn)
            .map_err(|e| shared.unavailable(&e))?;
        let ids = members
            .into_iter()
            .map(|m| {
                m.parse::<SpiffeId>()
                    .map_err(|_| DenyFileError::SharedInvalid(m))
            })
            .collect::<Result<HashSet<_>, _>>()?;
        let changed = *self.list.snapshot() != ids;
        self.list.replace(ids);
        self.generation
            .store(generation.unwrap_or(0), Ordering::Release);
        Ok(changed)
    }

    fn add_shared(&self, shared: &SharedStore, id: &SpiffeId) -> Result<bool, DenyFileError> {
        let mut conn = shared.connection()?;
        let added: i64 = redis::Script::new(DENY_SCRIPT)
            .key(SharedStore::key("deny"))
            .key(SharedStore::key("deny:generation"))
            .arg(id.as_str())
            .invoke(&mut *conn)
            .map_err(|e| shared.unavailable(&e))?;
        Ok(added == 1)
    }

    /// The in-memory list, to share with attestation and introspection.
    pub fn list(&self) -> &Arc<DenyList> {
        &self.list
    }

    /// The file the list is persisted in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Denies `id`: written durably first (atomic write, fsync), then put in force.
    /// Returns `false` if it was already denied. Blocking I/O: call it off the async
    /// runtime.
    pub fn deny(&self, id: &SpiffeId) -> Result<bool, DenyFileError> {
        let _serial = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = &self.shared {
            let added = self.add_shared(shared, id)?;
            // In force here at once; the other replicas follow at their next refresh.
            self.list.insert(id);
            return Ok(added);
        }
        if self.list.contains(id) {
            return Ok(false);
        }
        let mut next = HashSet::clone(&self.list.snapshot());
        next.insert(id.clone());
        let mut denied: Vec<String> = next.iter().map(|i| i.as_str().to_owned()).collect();
        denied.sort_unstable();
        let mut json = serde_json::to_vec_pretty(&DenyFile {
            version: FILE_VERSION,
            denied,
        })
        .map_err(|e| DenyFileError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        json.push(b'\n');
        fsio::write_atomic(&self.path, &json, Mode::Private).map_err(|source| {
            DenyFileError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(self.list.insert(id))
    }
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<HashSet<SpiffeId>, DenyFileError> {
    let invalid = |reason: String| DenyFileError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file: DenyFile = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if file.version != FILE_VERSION {
        return Err(invalid(format!("unknown version {}", file.version)));
    }
    file.denied
        .iter()
        .map(|s| {
            s.parse::<SpiffeId>()
                .map_err(|e| invalid(format!("{s:?} is not a SPIFFE ID: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn denied_identity_is_reported_until_its_denial_is_lifted() {
        let deny = DenyList::new();
        let orders = id("spiffe://example.org/fn/orders");
        let payments = id("spiffe://example.org/fn/payments");
        assert!(!deny.contains(&orders));
        assert!(deny.insert(&orders));
        assert!(!deny.insert(&orders), "second insert is a no-op");
        assert!(deny.contains(&orders));
        assert!(!deny.contains(&payments));
        assert_eq!(deny.len(), 1);
        assert!(deny.remove(&orders));
        assert!(!deny.remove(&orders));
        assert!(deny.is_empty());
    }

    #[test]
    fn snapshot_is_unaffected_by_later_writes() {
        let deny = DenyList::from_ids([id("spiffe://example.org/a")]);
        let before = deny.snapshot();
        deny.insert(&id("spiffe://example.org/b"));
        assert_eq!(before.len(), 1);
        assert_eq!(deny.snapshot().len(), 2);
        deny.replace(HashSet::new());
        assert!(deny.is_empty());
    }

    #[test]
    fn concurrent_writers_lose_no_denial() {
        let deny = Arc::new(DenyList::new());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let deny = Arc::clone(&deny);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        deny.insert(&id(&format!("spiffe://example.org/t{t}/{i}")));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(deny.len(), 400);
    }

    #[test]
    fn denial_is_persisted_before_it_is_applied_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("denylist.json");
        let store = DenyStore::open(path.clone()).unwrap();
        assert!(store.list().is_empty());
        let (a, b) = (id("spiffe://example.org/b"), id("spiffe://example.org/a"));
        assert!(store.deny(&a).unwrap());
        assert!(!store.deny(&a).unwrap(), "second denial is a no-op");
        assert!(store.deny(&b).unwrap());
        let reopened = DenyStore::open(path.clone()).unwrap();
        assert!(reopened.list().contains(&a) && reopened.list().contains(&b));
        assert_eq!(reopened.list().len(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.find("example.org/a").unwrap() < text.find("example.org/b").unwrap());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_damaged_deny_list_refuses_to_load_rather_than_forget_denials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("denylist.json");
        for bad in [
            "not json",
            r#"{"version":2,"denied":[]}"#,
            r#"{"version":1,"denied":["https://x"]}"#,
            r#"{"version":1,"denied":[],"extra":1}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = DenyStore::open(path.clone()).unwrap_err();
            assert!(matches!(err, DenyFileError::Invalid { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("denylist.json"), "{err}");
        }
    }

    #[test]
    fn shared_denials_reach_every_replica_and_keep_local_ones() {
        let redis = baton_tests::RedisServer::start();
        let shared = || SharedStore::connect(&redis.url(), crate::shared::DEFAULT_TIMEOUT).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let old = id("spiffe://example.org/fn/old");
        let local = dir.path().join("denylist.json");
        DenyStore::open(local.clone()).unwrap().deny(&old).unwrap();

        let a = DenyStore::open_shared(local, shared()).unwrap();
        let b = DenyStore::open_shared(dir.path().join("none.json"), shared()).unwrap();
        assert!(
            a.list().contains(&old) && b.list().contains(&old),
            "migrated"
        );

        let orders = id("spiffe://example.org/fn/orders");
        assert!(a.deny(&orders).unwrap());
        assert!(
            a.list().contains(&orders),
            "in force where it was made at once"
        );
        assert!(!b.list().contains(&orders));
        assert!(b.refresh().unwrap());
        assert!(b.list().contains(&orders));
        assert!(!b.refresh().unwrap(), "nothing new");
        assert!(!b.deny(&orders).unwrap(), "already denied everywhere");
        assert_eq!(redis.cli(&["SCARD", "{baton}:deny"]), "2");

        // The store loses its data: the next refresh puts the denials back.
        assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
        b.refresh().unwrap();
        assert!(b.list().contains(&orders) && b.list().contains(&old));
        assert_eq!(redis.cli(&["SCARD", "{baton}:deny"]), "2");
    }

    #[test]
    fn an_unreachable_shared_store_denies_nothing_and_says_so() {
        let mut redis = baton_tests::RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedStore::connect(&redis.url(), crate::shared::DEFAULT_TIMEOUT).unwrap();
        let store = DenyStore::open_shared(dir.path().join("d.json"), shared).unwrap();
        redis.kill();
        let orders = id("spiffe://example.org/fn/orders");
        assert!(matches!(store.deny(&orders), Err(DenyFileError::Shared(_))));
        assert!(!store.list().contains(&orders));
        assert!(matches!(store.refresh(), Err(DenyFileError::Shared(_))));
    }

    #[test]
    fn failed_write_leaves_the_identity_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DenyStore::open(dir.path().join("missing-dir/denylist.json")).unwrap();
        let orders = id("spiffe://example.org/fn/orders");
        assert!(matches!(
            store.deny(&orders),
            Err(DenyFileError::Write { .. })
        ));
        assert!(!store.list().contains(&orders));
    }
}
