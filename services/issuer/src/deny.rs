//! The identity deny list (SPEC §9 `baton identities revoke`): SPIFFE IDs that get no
//! new token and whose tokens introspect as inactive.
//!
//! Attestation reads the list on every request, so reads are lock-free: the set sits
//! behind an [`ArcSwap`] and a writer publishes a new copy (copy-on-write). Revocations
//! are rare and the list is small, so copying it on write costs nothing that matters.
//!
//! The list lives in memory only for now. Persistence (the data dir, or Redis in the
//! distributed store, SPEC §7) will sit behind the same methods: a writer stores the
//! change durably first, then publishes it here.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use baton_proto::SpiffeId;

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
}
