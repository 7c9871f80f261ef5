//! Signing-key lifecycle of a running issuer (SPEC §9 `keys`): rotation on command or
//! on schedule, emergency revocation, and dropping retired keys whose tokens have all
//! expired. Each step persists the keyring first and only then publishes it, so what
//! the issuer serves is always what a restart would load.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::claims::{JwsAlgorithm, MAX_TOKEN_TTL_SECS};
use time::OffsetDateTime;

use crate::datadir::OpenDataDir;
use crate::keyring::{Home, KeyState, KeyringError, RevokeError};
use crate::server::Issuer;
use crate::shared::SharedStore;

/// Runs key-lifecycle steps against the data directory and publishes their result.
pub struct KeyLifecycle {
    store: Arc<OpenDataDir>,
    /// The distributed store holding the keyring, when there is one.
    shared: Option<SharedStore>,
    alg: JwsAlgorithm,
    retire_after: Duration,
    jwks_max_age: Duration,
    rotation_period: Option<Duration>,
    issuer: Arc<Issuer>,
    /// One step at a time: each starts from the keyring the previous one published.
    lock: Mutex<()>,
    /// Crash-consistency test hook: abort between sealing the new key and writing the
    /// index, as a power cut would.
    crash_after_seal: bool,
}

/// The `BATON_FAILPOINT` value that makes a rotation abort the process between its
/// two writes (end-to-end crash tests only).
pub const FAILPOINT_ROTATE_AFTER_SEAL: &str = "rotate-after-seal";

impl std::fmt::Debug for KeyLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLifecycle")
            .field("alg", &self.alg)
            .field("retire_after", &self.retire_after)
            .field("rotation_period", &self.rotation_period)
            .finish_non_exhaustive()
    }
}

impl KeyLifecycle {
    /// New keys use `alg`. A retired key stays published for the longest token
    /// lifetime plus `jwks_max_age`: by then every token it signed has expired and
    /// every verifier has refetched the JWKS. `rotation_period`: rotate by itself
    /// once the active key has been active that long.
    pub fn new(
        store: Arc<OpenDataDir>,
        alg: JwsAlgorithm,
        jwks_max_age: Duration,
        rotation_period: Option<Duration>,
        issuer: Arc<Issuer>,
    ) -> Self {
        Self {
            store,
            shared: None,
            alg,
            retire_after: Duration::from_secs(MAX_TOKEN_TTL_SECS) + jwks_max_age,
            jwks_max_age,
            rotation_period,
            issuer,
            lock: Mutex::new(()),
            crash_after_seal: false,
        }
    }

    /// Keeps the keyring in the distributed store instead of the data directory.
    pub fn with_shared_store(mut self, shared: SharedStore) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Where the keyring lives.
    fn home(&self) -> Home<'_> {
        match &self.shared {
            Some(shared) => Home::Shared(&self.store, shared),
            None => Home::Files(&self.store),
        }
    }

    /// Arms the [`FAILPOINT_ROTATE_AFTER_SEAL`] hook: the next rotation aborts the
    /// process after sealing its new key and before writing the index.
    pub fn crash_after_seal(mut self, armed: bool) -> Self {
        self.crash_after_seal = armed;
        self
    }

    /// How often to call [`KeyLifecycle::tick`]: every JWKS max-age, at most a minute,
    /// so a due rotation or an expired retired key waits at most that long.
    pub fn tick_interval(&self) -> Duration {
        self.jwks_max_age.min(Duration::from_secs(60))
    }

    /// The keys as `keys list` shows them.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.issuer
            .published()
            .keyring()
            .keys()
            .iter()
            .map(|k| KeyInfo {
                kid: k.kid().to_owned(),
                state: k.state(),
                alg: k.alg(),
                created_at: k.created_at(),
                activated_at: k.activated_at(),
                retires_at: k.retires_at(),
            })
            .collect()
    }

    /// Rotates and publishes; answers only once the new keyring is on disk. Blocking.
    pub fn rotate(&self, now: OffsetDateTime) -> Result<(), KeyringError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.issuer.published();
        let keyring = current.keyring();
        let rotated = if self.crash_after_seal {
            keyring.seal_next_without_index(self.home(), self.alg, now, self.retire_after)?;
            tracing::error!("failpoint {FAILPOINT_ROTATE_AFTER_SEAL}: aborting mid-rotation");
            std::process::abort();
        } else {
            keyring.rotate(self.home(), self.alg, now, self.retire_after)?
        };
        tracing::info!(
            active = %rotated.active().kid(),
            retired = %current.keyring().active().kid(),
            "rotated the signing keys"
        );
        self.issuer.publish(rotated);
        Ok(())
    }

    /// Revokes `kid` and publishes; answers only once the new keyring is on disk.
    /// Blocking.
    pub fn revoke(&self, kid: &str, force: bool, now: OffsetDateTime) -> Result<(), RevokeError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.issuer.published();
        let revoked =
            current
                .keyring()
                .revoke(self.home(), self.alg, kid, force, now, self.retire_after)?;
        tracing::warn!(%kid, active = %revoked.active().kid(), "revoked a signing key");
        self.issuer.publish(revoked);
        Ok(())
    }

    /// The periodic step: rotates when the active key is due, else drops keys whose
    /// time has passed. Returns whether it rotated. Blocking.
    pub fn tick(&self, now: OffsetDateTime) -> Result<bool, KeyringError> {
        if self.rotation_due(now) {
            self.rotate(now)?;
            return Ok(true);
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(purged) = self
            .issuer
            .published()
            .keyring()
            .purge_expired(self.home(), now)?
        {
            tracing::info!("dropped retired signing keys whose tokens have all expired");
            self.issuer.publish(purged);
        }
        Ok(false)
    }

    fn rotation_due(&self, now: OffsetDateTime) -> bool {
        let Some(period) = self.rotation_period else {
            return false;
        };
        let published = self.issuer.published();
        let active = published.keyring().active();
        let since = active.activated_at().unwrap_or(active.created_at());
        now >= since + period
    }
}

/// One key as `keys list` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub kid: String,
    /// Its state.
    pub state: KeyState,
    /// Its algorithm.
    pub alg: JwsAlgorithm,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it became active.
    pub activated_at: Option<OffsetDateTime>,
    /// When it leaves the index.
    pub retires_at: Option<OffsetDateTime>,
}
