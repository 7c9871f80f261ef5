//! One replica of a distributed issuer (SPEC §7 "Distributed"): keeps what it serves
//! in step with the shared store, and knows whether the store is reachable.
//!
//! Propagation is by polling, not pub/sub: every [`POLL_INTERVAL`] the replica reads
//! three generation numbers (keyring, deny list, policy version) over one kept
//! connection and reloads only what moved. Polling survives reconnects and missed messages by
//! construction — a pub/sub message sent while a replica was reconnecting is lost, a
//! generation number is not — and one small read a second per replica costs Redis
//! nothing. A change made on any replica is thus served by every replica within about
//! a second, well inside the JWKS max-age SPEC §7 allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use crate::datadir::OpenDataDir;
use crate::deny::{DenyFileError, DenyStore};
use crate::keyring::{Home, Keyring, KeyringError};
use crate::policy::{PolicyError, PolicyStore};
use crate::server::Issuer;
use crate::shared::SharedStore;

/// How often a replica checks the shared store for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Whether the shared store answered lately. Read on every request (one atomic load).
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
    /// Unix seconds of the last change of state.
    since: AtomicI64,
}

impl StoreHealth {
    /// A store believed reachable (it answered at start-up).
    pub fn new(now: i64) -> Self {
        Self {
            up: AtomicBool::new(true),
            since: AtomicI64::new(now),
        }
    }

    /// Whether the store answered the last check.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// When the store last went up or down, Unix seconds.
    pub fn since(&self) -> i64 {
        self.since.load(Ordering::Acquire)
    }

    /// Records the outcome of a check; returns whether the state changed.
    pub fn record(&self, up: bool, now: i64) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            self.since.store(now, Ordering::Release);
        }
        changed
    }
}

/// Why a synchronisation step failed; the replica keeps serving what it has.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The keyring could not be read or did not check out.
    #[error("keyring: {0}")]
    Keyring(#[from] KeyringError),
    /// The deny list could not be read.
    #[error(transparent)]
    Deny(#[from] DenyFileError),
    /// The policy could not be read or did not check out.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// What one [`ReplicaSync::tick`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// A new keyring generation is now published.
    pub keyring: bool,
    /// The deny list changed.
    pub deny: bool,
    /// A new policy is in force.
    pub policy: bool,
}

/// Pulls the shared store's changes into this replica.
pub struct ReplicaSync {
    data: Arc<OpenDataDir>,
    shared: SharedStore,
    issuer: Arc<Issuer>,
    deny: Arc<DenyStore>,
    policy: Arc<PolicyStore>,
    health: Arc<StoreHealth>,
}

impl std::fmt::Debug for ReplicaSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSync")
            .field("store", &self.shared.url())
            .field("up", &self.health.is_up())
            .finish_non_exhaustive()
    }
}

impl ReplicaSync {
    /// Syncs `issuer`'s keyring, `deny` and `policy` from `shared`, recording
    /// reachability in `health`.
    pub fn new(
        data: Arc<OpenDataDir>,
        shared: SharedStore,
        issuer: Arc<Issuer>,
        deny: Arc<DenyStore>,
        policy: Arc<PolicyStore>,
        health: Arc<StoreHealth>,
    ) -> Self {
        Self {
            data,
            shared,
            issuer,
            deny,
            policy,
            health,
        }
    }

    /// One check: reloads and publishes whatever another replica changed. Blocking
    /// I/O: run it off the async runtime. A failure leaves everything as it was and
    /// marks the store down; the next success marks it up again.
    pub fn tick(&self, now: i64) -> Result<Changes, SyncError> {
        let result = self.pull();
        let reachable = match &result {
            Ok(_) => true,
            Err(e) => !e.is_unreachable(),
        };
        metrics::gauge!(crate::metrics::STORE_UP).set(if reachable { 1.0 } else { 0.0 });
        if self.health.record(reachable, now) {
            if reachable {
                tracing::info!(store = %self.shared.url(), "the shared store is reachable again");
            } else {
                tracing::error!(store = %self.shared.url(), "the shared store is unreachable: minting and introspection answer 503 until it returns");
            }
        }
        result
    }

    fn pull(&self) -> Result<Changes, SyncError> {
        let home = Home::Shared(&self.data, &self.shared);
        let mut changes = Changes::default();
        let published = self.issuer.published();
        if published.keyring().is_stale(home)? {
            let keyring = match Keyring::current(home)? {
                Some(keyring) => keyring,
                // The store lost its data: put back the keys every verifier trusts.
                None => match published.keyring().restore(home) {
                    Ok(keyring) => {
                        tracing::warn!("the shared store held no keyring; restored this replica's");
                        keyring
                    }
                    Err(KeyringError::Conflict) => Keyring::reload(home)?,
                    Err(e) => return Err(e.into()),
                },
            };
            tracing::info!(
                generation = keyring.generation(),
                active = %keyring.active().kid(),
                "keyring changed by another replica; now serving it"
            );
            self.issuer.publish(keyring);
            changes.keyring = true;
        }
        changes.deny = self.deny.refresh()?;
        changes.policy = self.policy.refresh()?;
        Ok(changes)
    }
}

impl SyncError {
    /// Whether the store did not answer (as opposed to answering with bad data).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Keyring(KeyringError::Shared(_))
                | Self::Deny(DenyFileError::Shared(_))
                | Self::Policy(PolicyError::Shared(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_records_changes_of_state_only() {
        let health = StoreHealth::new(10);
        assert!(health.is_up());
        assert!(!health.record(true, 11), "still up");
        assert_eq!(health.since(), 10);
        assert!(health.record(false, 12));
        assert!(!health.is_up());
        assert_eq!(health.since(), 12);
        assert!(health.record(true, 15));
        assert!(health.is_up());
    }
}
