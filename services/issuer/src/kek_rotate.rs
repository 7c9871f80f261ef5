//! Key-encryption key rotation (`baton kek rotate --new-kek-file F`, SPEC §7, §9):
//! re-seals every sealed secret under a new KEK, so that a crash at any instant leaves
//! every secret readable under exactly one KEK, and afterwards the old KEK opens
//! nothing.
//!
//! # What is sealed, and where
//!
//! - `<data-dir>/ca.key.sealed`: the CA key (purpose `ca-key`);
//! - `<data-dir>/keyring/<kid>.key.sealed`: the embedded store's signing keys (purpose
//!   `signing-key:<kid>`), including any no index names any more;
//! - in distributed mode, `{baton}:keyring:key:<kid>` in Redis: the shared signing keys,
//!   staged ones (a one-hour expiry, kept) included;
//! - in dev mode, the KEK itself, `<data-dir>/kek`, is replaced by the new one.
//!
//! Nothing else is sealed: join tokens, the deny list and the ledger hold hashes and
//! public data. The KEK does not change the keys themselves, so no kid, certificate,
//! JWKS or keyring generation changes.
//!
//! # Two-phase commit
//!
//! The data directory is held exclusively (`flock`) for the whole rotation: an issuer
//! holds it shared for its whole life, and every open of the data directory holds it
//! shared, so none runs beside a rotation. The command also refuses while an issuer
//! answers on the admin socket.
//!
//! 1. **Verify.** Every secret is opened with the current KEK; one already sealed under
//!    the *new* KEK (Redis keys that another replica's rotation re-sealed, or the
//!    leftovers of an earlier run) is opened with the new one and left alone. Any other
//!    failure refuses the rotation before anything is written.
//! 2. **Prepare.** `<data-dir>/kek-rotation/` (0700) receives a freshly sealed copy (new
//!    nonce) of each file secret under a numbered name and, in dev mode, the new KEK file
//!    as `kek`; each is fsynced, and the directory with it. The new Redis envelopes are
//!    computed in memory. Just before committing, Redis is read again: if it changed
//!    since step 1 (a replica still running), the staging directory is removed and
//!    nothing has changed.
//! 3. **Commit.** `kek-rotation/journal.json` is written atomically (temporary file,
//!    fsync, rename, fsync of the directory). It names every staged file, its target,
//!    the SHA-256 of its staged contents (the KEK file: the new KEK's id instead), and
//!    for each Redis key the exact old envelope expected there and the new one. Its
//!    appearance is the commit point; from then on the rotation only moves forward, and
//!    finishing it needs no KEK at all: renames, and one Redis script.
//! 4. **Apply.** Redis first: one Lua script checks that every key still holds its old
//!    envelope, or one sealed under the new KEK, or has expired, and that the keyring
//!    index is unchanged if any key is still to change; then it sets every new envelope
//!    (`KEEPTTL`) at once, or none. Then each staged file is renamed over its target —
//!    in dev mode the `kek` file with them — and the target directories are fsynced.
//! 5. **Clean up.** The staging directory, journal inside, is renamed to
//!    `kek-rotation.done` (and the data directory fsynced), then removed. Renaming it
//!    whole, rather than removing the journal first, means a staging directory without
//!    a journal only ever is one that never committed.
//!
//! # Recovery, and what each crash leaves
//!
//! Every open of the data directory ([`DataDir::open`]: `serve`, `enroll`, `kek
//! verify`, and `kek rotate` itself) first calls [`recover`]: a staging directory with
//! no journal is removed (roll back); one with a journal is finished (roll forward,
//! idempotent: a staged file already renamed is recognised by its target's contents,
//! and the script accepts keys already re-sealed). The Redis part needs the store,
//! which `DataDir::open` does not know: it renames the files and keeps the journal;
//! every read of the shared keyring (`Home::Shared`) finishes the Redis part first, and
//! only then is the journal removed. Baton reads sealed secrets only through these two
//! paths, so it never reads a half-rotated state:
//!
//! | crash after | on disk / in Redis | the next open | KEK that opens everything |
//! |---|---|---|---|
//! | verifying (or before) | unchanged | nothing to do | old |
//! | staging some or all copies | partial `kek-rotation/`, no journal | removes it | old |
//! | writing the journal | journal and every staged copy durable | renames, script | new |
//! | the Redis script | Redis re-sealed, files not yet | renames | new |
//! | some of the renames | some targets new, the rest staged | renames the rest | new |
//! | all renames | every target new, journal left | finds nothing to rename, retires it | new |
//! | renaming it aside | `kek-rotation.done/` | removes it | new |
//!
//! A crash while the journal is being written leaves only its temporary file: no
//! journal, so a roll back. The old KEK stops opening anything the moment a
//! recovery or the rotation completes the renames, and never before the commit point.
//!
//! # Distributed mode
//!
//! Every replica shares the KEK and each has a copy of the data directory (CA key,
//! dev KEK). The procedure: stop every replica; run `baton kek rotate` on each replica's
//! data directory in turn — the first one re-seals Redis too, the later ones find the
//! Redis keys already under the new KEK and leave them alone; restart every replica
//! with the new KEK. The keyring generation is not bumped, as the keys did not change.
//! A replica left running with the old KEK keeps signing with the keys it holds in
//! memory, but its next keyring reload (after another replica's rotation) fails with
//! "sealed under key-encryption key …" and it keeps its old keyring; if Redis lost its
//! data, it would restore envelopes sealed under the old KEK. Hence: stop them all.
//! Should Redis change after the commit point (a replica left running rotated its keys),
//! the script refuses as a whole, the journal stays, and every open of the keyring
//! says so until the replicas are stopped and the store put right.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit;
use crate::datadir::{CA_KEY, CA_KEY_PURPOSE, DEV_KEK, DataDir, DataDirError, KekSource, LockMode};
use crate::fsio::{self, Mode};
use crate::keyring::{KEYRING_DIR, SEALED_SUFFIX, is_kid, purpose, shared_key_name};
use crate::seal::{Kek, SealError};
use crate::shared::{SharedStore, SharedStoreError};

/// The staging directory, relative to the data directory.
pub const STAGING_DIR: &str = "kek-rotation";
/// The staging directory of a finished rotation, renamed aside before it is removed.
pub const RETIRED_DIR: &str = "kek-rotation.done";
/// The journal (the commit marker), inside the staging directory.
pub const JOURNAL: &str = "journal.json";
/// `BATON_FAILPOINT=kek-rotate:<step>` makes `baton kek rotate` abort at that step
/// (crash-consistency tests only).
pub const FAILPOINT_PREFIX: &str = "kek-rotate:";

const JOURNAL_VERSION: u8 = 1;
const STAGED_KEK: &str = "kek";
/// Sealed secrets are a few KiB at most (as `seal.rs` reads them).
const MAX_SEALED_BYTES: u64 = 64 * 1024;
const MAX_KEK_FILE_BYTES: u64 = 1024;
/// Sealed keys in Redis: at most a JWKS worth named by the index, plus staged ones
/// that crashed rotations left (each expires within the hour).
const MAX_SHARED_KEYS: usize = 1024;
/// The journal holds two envelopes per Redis key and the keyring index.
const MAX_JOURNAL_BYTES: u64 = 4 * 1024 * 1024;
const INDEX_KEY: &str = "keyring:index";

/// The points a rotation passes, in order; [`rotate`] reports each to its hook, which
/// crash tests use to abort the process there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Every secret opened; nothing written yet.
    Verified,
    /// The first staged copy is written (mid-staging).
    StagedOne,
    /// Every staged copy is durable; no journal yet.
    Staged,
    /// The journal is durable: the commit point.
    Committed,
    /// The Redis script ran (with no store: nothing to run).
    SharedApplied,
    /// The first staged copy is renamed over its target (mid-renames).
    RenamedOne,
    /// Every staged copy is in place, directories fsynced; the journal is still there.
    Renamed,
    /// The staging directory, journal inside, is renamed aside; removing it is all
    /// that is left.
    Retired,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 8] = [
        Step::Verified,
        Step::StagedOne,
        Step::Staged,
        Step::Committed,
        Step::SharedApplied,
        Step::RenamedOne,
        Step::Renamed,
        Step::Retired,
    ];

    /// The step's name, as `BATON_FAILPOINT=kek-rotate:<name>` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Step::Verified => "verified",
            Step::StagedOne => "staged-one",
            Step::Staged => "staged",
            Step::Committed => "committed",
            Step::SharedApplied => "shared-applied",
            Step::RenamedOne => "renamed-one",
            Step::Renamed => "renamed",
            Step::Retired => "retired",
        }
    }

    /// The step of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a crash after this step leaves the rotation committed (new KEK).
    pub fn is_committed(self) -> bool {
        self >= Step::Committed
    }
}

/// Why an interrupted rotation could not be finished or discarded. Carries no secret.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A `baton kek rotate` holds the data directory.
    #[error(
        "a key-encryption key rotation is in progress on {path}; retry once `baton kek rotate` has finished"
    )]
    Busy {
        /// The data directory.
        path: PathBuf,
    },
    /// The journal does not parse or names something a rotation never writes.
    #[error(
        "{path} is not a valid key-encryption key rotation journal ({reason}); restore the data directory from a backup"
    )]
    Journal {
        /// The journal (or staging directory).
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file the journal names holds neither its staged copy nor its re-sealed secret.
    #[error(
        "cannot finish the key-encryption key rotation journaled in {journal}: {target} {reason}; restore the data directory from a backup"
    )]
    Stuck {
        /// The journal.
        journal: PathBuf,
        /// The file that cannot be put right.
        target: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Redis changed after the rotation committed: the script refused, nothing in Redis
    /// changed, and the journal stays.
    #[error(
        "the shared store changed after the key-encryption key rotation of {data_dir} committed ({key} holds an envelope the rotation did not expect; is a replica still running with the old key?); stop every replica, put the store right, and open the data directory again to finish"
    )]
    SharedChanged {
        /// The data directory whose journal is pending.
        data_dir: PathBuf,
        /// The Redis key that differs.
        key: String,
    },
    /// Reading, renaming or removing failed.
    #[error("cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The shared store did not answer.
    #[error(transparent)]
    Shared(#[from] SharedStoreError),
}

/// Why `baton kek rotate` refused or failed. Carries no secret.
#[derive(Debug, thiserror::Error)]
pub enum KekRotateError {
    /// An issuer answers on the data directory's admin socket.
    #[error(
        "an issuer is running on {data_dir} (it answers on {socket}); stop it, and in distributed mode every replica, before rotating the key-encryption key"
    )]
    IssuerRunning {
        /// The data directory.
        data_dir: PathBuf,
        /// Its admin socket.
        socket: PathBuf,
    },
    /// Another process holds the data directory.
    #[error(
        "{path} is in use by a running issuer or another `baton kek rotate`; stop it before rotating the key-encryption key"
    )]
    Busy {
        /// The data directory.
        path: PathBuf,
    },
    /// The new KEK file is unusable.
    #[error("the new key-encryption key is unusable; nothing was changed")]
    NewKek(#[source] SealError),
    /// The new KEK is the one in use.
    #[error("the new key-encryption key is the one already in use (id {id}); nothing to rotate")]
    SameKek {
        /// Its identifier.
        id: String,
    },
    /// A sealed secret opens under neither KEK (corrupt, tampered with, or sealed under
    /// a third one).
    #[error("refusing to rotate, nothing was changed")]
    Unopenable(#[source] SealError),
    /// Redis changed between verifying and committing.
    #[error(
        "the shared store changed while the rotation was being prepared ({key}); is a replica still running? Nothing was changed; stop every replica and retry"
    )]
    SharedChangedBeforeCommit {
        /// The Redis key that changed.
        key: String,
    },
    /// More sealed keys in Redis than a keyring can hold.
    #[error(
        "the shared store holds more than {MAX_SHARED_KEYS} sealed signing keys; refusing to rotate, nothing was changed"
    )]
    TooManySharedKeys,
    /// A committed rotation still has to re-seal Redis, and no store was given.
    #[error(
        "a key-encryption key rotation of {data_dir} was interrupted after it committed and must still re-seal the shared store: run it again with the store configured (`store` in config.toml, BATON_STORE or --store)"
    )]
    RecoveryNeedsStore {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The data directory or the current KEK could not be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// An interrupted rotation could not be finished.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// The shared store did not answer.
    #[error(transparent)]
    Shared(#[from] SharedStoreError),
    /// Sealing under the new KEK failed.
    #[error("cannot seal under the new key-encryption key")]
    Seal(#[source] SealError),
    /// Writing the staging directory or the journal failed.
    #[error("cannot write {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The KEK in use before.
    pub old_kek_id: String,
    /// The KEK every secret is sealed under now.
    pub new_kek_id: String,
    /// Secrets of the data directory re-sealed.
    pub resealed_files: usize,
    /// Redis keys re-sealed.
    pub resealed_shared: usize,
    /// Secrets found already sealed under the new KEK, left as they were.
    pub already_new: usize,
    /// Whether the data directory's dev KEK file now holds the new KEK.
    pub dev_kek_replaced: bool,
    /// Whether an earlier rotation, interrupted after its commit point, was finished.
    pub finished_interrupted: bool,
}

/// What [`recover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No rotation was interrupted.
    Nothing,
    /// An uncommitted rotation was discarded: the old KEK stays.
    RolledBack,
    /// A committed rotation was finished: the new KEK is in force.
    RolledForward {
        /// The KEK it rotated to.
        new_kek_id: String,
        /// Whether Redis is still to be re-sealed (no store was given); the journal
        /// stays until it is.
        shared_pending: bool,
    },
}

/// Finishes or discards an interrupted rotation of `dir`, holding the data directory
/// shared meanwhile. With `store`, a committed rotation's Redis part is finished too.
pub fn recover(dir: &DataDir, store: Option<&SharedStore>) -> Result<Recovery, RecoveryError> {
    // The common case costs two stats.
    if !staging_path(dir).exists() && !dir.root().join(RETIRED_DIR).exists() {
        return Ok(Recovery::Nothing);
    }
    let lock = dir.try_lock(LockMode::Shared).map_err(|e| match e {
        DataDirError::Io { path, source } => RecoveryError::Io { path, source },
        _ => RecoveryError::Busy {
            path: dir.root().to_owned(),
        },
    })?;
    if lock.is_none() {
        return Err(RecoveryError::Busy {
            path: dir.root().to_owned(),
        });
    }
    recover_locked(dir, store)
}

/// [`recover`] for a caller that already holds the data directory's lock.
pub(crate) fn recover_locked(
    dir: &DataDir,
    store: Option<&SharedStore>,
) -> Result<Recovery, RecoveryError> {
    let retired = dir.root().join(RETIRED_DIR);
    if std::fs::symlink_metadata(&retired).is_ok() {
        // A finished rotation whose staging directory was being removed.
        let journal = fsio::read_bounded(&retired.join(JOURNAL), MAX_JOURNAL_BYTES)
            .ok()
            .and_then(|bytes| Journal::parse(&retired.join(JOURNAL), &bytes).ok());
        remove_dir(dir, &retired)?;
        if let Some(journal) = journal {
            audit::kek_rotated(
                &journal.old_kek_id,
                &journal.new_kek_id,
                journal.files.len(),
                journal.shared.as_ref().map_or(0, |s| s.keys.len()),
                true,
            );
            return Ok(Recovery::RolledForward {
                new_kek_id: journal.new_kek_id,
                shared_pending: false,
            });
        }
    }
    let staging = staging_path(dir);
    match std::fs::symlink_metadata(&staging) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recovery::Nothing),
        Err(source) => {
            return Err(RecoveryError::Io {
                path: staging,
                source,
            });
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(RecoveryError::Journal {
                path: staging,
                reason: "not a directory",
            });
        }
        Ok(_) => {}
    }
    let journal_path = staging.join(JOURNAL);
    let bytes = match fsio::read_bounded(&journal_path, MAX_JOURNAL_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Never committed (or finished but for this directory): everything in it is
            // a copy nobody reads. The old KEK stays in force.
            remove_staging(dir)?;
            tracing::warn!(
                data_dir = %dir.root().display(),
                "discarded an interrupted key-encryption key rotation that had not committed; the old key stays in force"
            );
            return Ok(Recovery::RolledBack);
        }
        Err(source) => {
            return Err(RecoveryError::Io {
                path: journal_path,
                source,
            });
        }
    };
    let journal = Journal::parse(&journal_path, &bytes)?;
    let outcome = apply(dir, &journal, store, &mut |_| {})?;
    if outcome.shared_pending {
        tracing::warn!(
            data_dir = %dir.root().display(),
            "a committed key-encryption key rotation still has to re-seal the shared store; the next start in distributed mode finishes it"
        );
    } else {
        tracing::warn!(
            data_dir = %dir.root().display(),
            new_kek_id = %journal.new_kek_id,
            "finished a key-encryption key rotation that was interrupted after its commit point"
        );
        audit::kek_rotated(
            &journal.old_kek_id,
            &journal.new_kek_id,
            journal.files.len(),
            outcome.shared_resealed,
            true,
        );
    }
    Ok(Recovery::RolledForward {
        new_kek_id: journal.new_kek_id,
        shared_pending: outcome.shared_pending,
    })
}

/// Re-seals every secret of `dir` (and, with `store`, of Redis) under the KEK in
/// `new_kek_file`; `current` is where the KEK in use comes from. `on_step` is told of
/// each [`Step`] as it is reached. Blocking I/O.
pub fn rotate(
    dir: &DataDir,
    current: &KekSource,
    new_kek_file: &Path,
    store: Option<&SharedStore>,
    on_step: &mut dyn FnMut(Step),
) -> Result<Rotated, KekRotateError> {
    // A bad argument changes nothing, not even an interrupted rotation.
    let new = Kek::load(new_kek_file).map_err(KekRotateError::NewKek)?;
    if !dir.exists() {
        return Err(DataDirError::NotInitialized {
            path: dir.root().to_owned(),
        }
        .into());
    }
    let socket = dir.admin_socket_path();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(KekRotateError::IssuerRunning {
            data_dir: dir.root().to_owned(),
            socket,
        });
    }
    let _lock = dir
        .try_lock(LockMode::Exclusive)?
        .ok_or_else(|| KekRotateError::Busy {
            path: dir.root().to_owned(),
        })?;

    let recovered = recover_locked(dir, store)?;
    let finished_interrupted = match &recovered {
        Recovery::RolledForward {
            shared_pending: true,
            ..
        } => {
            return Err(KekRotateError::RecoveryNeedsStore {
                data_dir: dir.root().to_owned(),
            });
        }
        Recovery::RolledForward { new_kek_id, .. } => *new_kek_id == new.id(),
        _ => false,
    };
    // After recovery: in dev mode it may just have put a new KEK in place.
    let old = dir.load_kek(current)?;
    let dev = *current == KekSource::Dev;
    if old.id() == new.id() {
        if finished_interrupted {
            return Ok(Rotated {
                old_kek_id: old.id().to_owned(),
                new_kek_id: new.id().to_owned(),
                resealed_files: 0,
                resealed_shared: 0,
                already_new: 0,
                dev_kek_replaced: dev,
                finished_interrupted,
            });
        }
        return Err(KekRotateError::SameKek {
            id: new.id().to_owned(),
        });
    }

    let plan = Plan::make(dir, &old, &new, dev.then_some(new_kek_file), store)?;
    on_step(Step::Verified);
    let nothing_to_do = plan.files.is_empty() && plan.kek_file.is_none() && plan.shared.is_none();
    let mut rotated = Rotated {
        old_kek_id: old.id().to_owned(),
        new_kek_id: new.id().to_owned(),
        resealed_files: plan.files.len(),
        resealed_shared: 0,
        already_new: plan.already_new,
        dev_kek_replaced: plan.kek_file.is_some(),
        finished_interrupted,
    };
    if nothing_to_do {
        return Ok(rotated);
    }

    remove_stale_temps(dir);
    let journal = prepare(dir, &old, &new, &plan, on_step)?;
    if let (Some(store), Some(before)) = (store, &plan.snapshot) {
        // The last look before the point of no return.
        if let Some(key) = before.differs_from(&Snapshot::read(store)?) {
            remove_staging(dir)?;
            return Err(KekRotateError::SharedChangedBeforeCommit { key });
        }
    }
    let journal_path = staging_path(dir).join(JOURNAL);
    let json = journal.encode(&journal_path)?;
    fsio::write_atomic(&journal_path, &json, Mode::Private).map_err(|source| {
        KekRotateError::Io {
            path: journal_path.clone(),
            source,
        }
    })?;
    on_step(Step::Committed);

    let outcome = apply(dir, &journal, store, on_step)?;
    rotated.resealed_shared = outcome.shared_resealed;
    audit::kek_rotated(
        old.id(),
        new.id(),
        rotated.resealed_files + usize::from(rotated.dev_kek_replaced),
        rotated.resealed_shared,
        false,
    );
    Ok(rotated)
}

fn staging_path(dir: &DataDir) -> PathBuf {
    dir.root().join(STAGING_DIR)
}

/// Removes the staging directory and makes that durable.
fn remove_staging(dir: &DataDir) -> Result<(), RecoveryError> {
    remove_dir(dir, &staging_path(dir))
}

/// Removes `path`, a directory of the data directory, durably; tolerates another
/// process having removed (some of) it first.
fn remove_dir(dir: &DataDir, path: &Path) -> Result<(), RecoveryError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RecoveryError::Io {
                path: path.to_owned(),
                source,
            });
        }
    }
    fsio::sync_dir(dir.root()).map_err(|source| RecoveryError::Io {
        path: dir.root().to_owned(),
        source,
    })
}

/// Temporary files a crashed atomic write of a sealed secret may have left: sealed
/// under the old KEK, read by nobody, and removed so the old KEK opens nothing after.
fn remove_stale_temps(dir: &DataDir) {
    for d in [dir.root().to_owned(), dir.root().join(KEYRING_DIR)] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".sealed.tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Which KEK a secret was found sealed under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Under {
    Old,
    New,
}

/// Opens `sealed` with `old`, or, when it names the new KEK, with `new`.
fn open_either(
    old: &Kek,
    new: &Kek,
    location: &Path,
    purpose: &str,
    sealed: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, Under), SealError> {
    match old.open(location, purpose, sealed) {
        Ok(plain) => Ok((plain, Under::Old)),
        Err(SealError::WrongKek { sealed_with, .. }) if sealed_with == new.id() => new
            .open(location, purpose, sealed)
            .map(|plain| (plain, Under::New)),
        Err(e) => Err(e),
    }
}

/// Redis as the rotation sees it: the keyring index and every sealed key.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    index: Option<Vec<u8>>,
    keys: BTreeMap<String, Vec<u8>>,
}

impl Snapshot {
    fn read(store: &SharedStore) -> Result<Self, KekRotateError> {
        let mut conn = store.connection()?;
        let index: Option<Vec<u8>> = redis::cmd("GET")
            .arg(SharedStore::key(INDEX_KEY))
            .query(&mut *conn)
            .map_err(|e| store.unavailable(&e))?;
        let pattern = format!("{}*", shared_key_name(""));
        let mut names = std::collections::BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(256)
                .query(&mut *conn)
                .map_err(|e| store.unavailable(&e))?;
            names.extend(batch);
            if names.len() > MAX_SHARED_KEYS {
                return Err(KekRotateError::TooManySharedKeys);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut keys = BTreeMap::new();
        for name in names {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&name)
                .query(&mut *conn)
                .map_err(|e| store.unavailable(&e))?;
            // Gone since the scan: a staged key that expired.
            if let Some(value) = value {
                keys.insert(name, value);
            }
        }
        Ok(Self { index, keys })
    }

    /// The first key that differs, if any.
    fn differs_from(&self, now: &Self) -> Option<String> {
        if self.index != now.index {
            return Some(SharedStore::key(INDEX_KEY));
        }
        let names = self.keys.keys().chain(now.keys.keys());
        names
            .into_iter()
            .find(|name| self.keys.get(*name) != now.keys.get(*name))
            .cloned()
    }
}

/// What the rotation will write, all verified before anything is.
struct Plan {
    /// (target relative to the data directory, new envelope).
    files: Vec<(String, Vec<u8>)>,
    /// Dev mode: the new KEK file's contents, for `<data-dir>/kek`.
    kek_file: Option<Zeroizing<Vec<u8>>>,
    /// The Redis keys to re-seal, and the index they were read with.
    shared: Option<SharedPlan>,
    /// What Redis held when verified (to check it again before committing).
    snapshot: Option<Snapshot>,
    already_new: usize,
}

impl Plan {
    fn make(
        dir: &DataDir,
        old: &Kek,
        new: &Kek,
        dev_kek_from: Option<&Path>,
        store: Option<&SharedStore>,
    ) -> Result<Self, KekRotateError> {
        let mut plan = Plan {
            files: Vec::new(),
            kek_file: None,
            shared: None,
            snapshot: None,
            already_new: 0,
        };
        let unopenable = KekRotateError::Unopenable;
        let reseal = |location: &Path,
                      purpose: &str,
                      sealed: &[u8],
                      already_new: &mut usize|
         -> Result<Option<Vec<u8>>, KekRotateError> {
            let (plain, under) =
                open_either(old, new, location, purpose, sealed).map_err(unopenable)?;
            if under == Under::New {
                *already_new += 1;
                return Ok(None);
            }
            let resealed = new.seal(purpose, &plain).map_err(KekRotateError::Seal)?;
            // Checked before it replaces anything: the new envelope gives back the same key.
            let back = new
                .open(location, purpose, &resealed)
                .map_err(KekRotateError::Seal)?;
            if *back != *plain {
                return Err(KekRotateError::Seal(SealError::Random));
            }
            Ok(Some(resealed))
        };

        let mut file_secrets = vec![(CA_KEY.to_owned(), CA_KEY_PURPOSE.to_owned())];
        let keyring = dir.root().join(KEYRING_DIR);
        match std::fs::read_dir(&keyring) {
            Ok(entries) => {
                let mut kids = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|source| KekRotateError::Io {
                        path: keyring.clone(),
                        source,
                    })?;
                    let name = entry.file_name();
                    // Only what Baton reads: `<kid>.key.sealed`, kid-shaped.
                    if let Some(kid) = name
                        .to_str()
                        .and_then(|n| n.strip_suffix(SEALED_SUFFIX))
                        .filter(|kid| is_kid(kid))
                    {
                        kids.push(kid.to_owned());
                    }
                }
                kids.sort();
                for kid in kids {
                    file_secrets
                        .push((format!("{KEYRING_DIR}/{kid}{SEALED_SUFFIX}"), purpose(&kid)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KekRotateError::Io {
                    path: keyring,
                    source,
                });
            }
        }
        for (target, purpose) in file_secrets {
            let path = dir.root().join(&target);
            let sealed = fsio::read_bounded(&path, MAX_SEALED_BYTES).map_err(|source| {
                KekRotateError::Unopenable(SealError::Io {
                    path: path.clone(),
                    source,
                })
            })?;
            if let Some(resealed) = reseal(&path, &purpose, &sealed, &mut plan.already_new)? {
                plan.files.push((target, resealed));
            }
        }

        if let Some(from) = dev_kek_from {
            let bytes = fsio::read_bounded(from, MAX_KEK_FILE_BYTES)
                .map_err(|source| {
                    KekRotateError::NewKek(SealError::KekUnreadable {
                        path: from.to_owned(),
                        source,
                    })
                })
                .map(Zeroizing::new)?;
            plan.kek_file = Some(bytes);
        }

        if let Some(store) = store {
            let snapshot = Snapshot::read(store)?;
            let mut keys = Vec::new();
            for (name, sealed) in &snapshot.keys {
                let Some(kid) = name
                    .strip_prefix(&shared_key_name(""))
                    .filter(|kid| is_kid(kid))
                else {
                    // Not a key Baton would ever read.
                    continue;
                };
                let location = PathBuf::from(format!("{}/{name}", store.url()));
                if let Some(resealed) =
                    reseal(&location, &purpose(kid), sealed, &mut plan.already_new)?
                {
                    // Envelopes are JSON text; one that is not would not have opened.
                    let old = String::from_utf8(sealed.clone())
                        .map_err(|_| KekRotateError::Seal(SealError::Random))?;
                    let new = String::from_utf8(resealed)
                        .map_err(|_| KekRotateError::Seal(SealError::Random))?;
                    keys.push(SharedKey {
                        key: name.clone(),
                        old,
                        new,
                    });
                }
            }
            if !keys.is_empty() {
                let index = match &snapshot.index {
                    Some(bytes) => Some(String::from_utf8(bytes.clone()).map_err(|_| {
                        KekRotateError::SharedChangedBeforeCommit {
                            key: SharedStore::key(INDEX_KEY),
                        }
                    })?),
                    None => None,
                };
                plan.shared = Some(SharedPlan { index, keys });
            }
            plan.snapshot = Some(snapshot);
        }
        Ok(plan)
    }
}

/// Writes the staging directory and returns the journal that commits it.
fn prepare(
    dir: &DataDir,
    old: &Kek,
    new: &Kek,
    plan: &Plan,
    on_step: &mut dyn FnMut(Step),
) -> Result<Journal, KekRotateError> {
    let staging = staging_path(dir);
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| KekRotateError::Io { path, source }
    };
    // Recovery removed any earlier one; a new one appearing now is not ours to reuse.
    std::fs::create_dir(&staging).map_err(io_err(&staging))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(&staging))?;
    fsio::sync_dir(dir.root()).map_err(io_err(dir.root()))?;

    let mut files = Vec::with_capacity(plan.files.len() + 1);
    for (i, (target, sealed)) in plan.files.iter().enumerate() {
        let staged = i.to_string();
        let path = staging.join(&staged);
        // write_new fsyncs the file and the directory.
        fsio::write_new(&path, sealed, Mode::Private).map_err(io_err(&path))?;
        files.push(StagedFile {
            staged,
            target: target.clone(),
            sha256: Some(sha256_hex(sealed)),
        });
        if i == 0 {
            on_step(Step::StagedOne);
        }
    }
    if let Some(bytes) = &plan.kek_file {
        let path = staging.join(STAGED_KEK);
        fsio::write_new(&path, bytes, Mode::Private).map_err(io_err(&path))?;
        // The file may have changed since it was loaded: stage only the key verified.
        let staged = Kek::load(&path).map_err(KekRotateError::NewKek)?;
        if staged.id() != new.id() {
            return Err(KekRotateError::NewKek(SealError::KekFormat { path }));
        }
        if plan.files.is_empty() {
            on_step(Step::StagedOne);
        }
        files.push(StagedFile {
            staged: STAGED_KEK.to_owned(),
            target: DEV_KEK.to_owned(),
            sha256: None,
        });
    }
    fsio::sync_dir(&staging).map_err(io_err(&staging))?;
    on_step(Step::Staged);
    Ok(Journal {
        version: JOURNAL_VERSION,
        old_kek_id: old.id().to_owned(),
        new_kek_id: new.id().to_owned(),
        files,
        shared: plan.shared.clone(),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    fsio::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The commit marker and everything needed to finish without a KEK.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    version: u8,
    old_kek_id: String,
    new_kek_id: String,
    files: Vec<StagedFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared: Option<SharedPlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StagedFile {
    /// Name inside the staging directory.
    staged: String,
    /// Path relative to the data directory.
    target: String,
    /// SHA-256 of the staged envelope; `None` for the KEK file, recognised by its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedPlan {
    /// The keyring index the keys were read with (`None`: there was none).
    index: Option<String>,
    keys: Vec<SharedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedKey {
    key: String,
    old: String,
    new: String,
}

impl Journal {
    fn encode(&self, path: &Path) -> Result<Vec<u8>, KekRotateError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| KekRotateError::Io {
            path: path.to_owned(),
            source: io::Error::other(e),
        })?;
        json.push(b'\n');
        Ok(json)
    }

    /// Parses and checks a journal: anyone able to write the data directory could have
    /// written it, so it may name only what a rotation writes.
    fn parse(path: &Path, bytes: &[u8]) -> Result<Self, RecoveryError> {
        let bad = |reason| RecoveryError::Journal {
            path: path.to_owned(),
            reason,
        };
        let journal: Journal =
            serde_json::from_slice(bytes).map_err(|_| bad("not a rotation journal"))?;
        if journal.version != JOURNAL_VERSION {
            return Err(bad("unknown version"));
        }
        let is_kek_id = |id: &str| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_kek_id(&journal.new_kek_id) || !is_kek_id(&journal.old_kek_id) {
            return Err(bad("a key-encryption key id is malformed"));
        }
        for (i, file) in journal.files.iter().enumerate() {
            let staged_ok = match &file.sha256 {
                None => file.staged == STAGED_KEK && file.target == DEV_KEK,
                Some(hash) => {
                    hash.len() == 64
                        && hash.bytes().all(|b| b.is_ascii_hexdigit())
                        && file.staged.len() <= 6
                        && !file.staged.is_empty()
                        && file.staged.bytes().all(|b| b.is_ascii_digit())
                        && is_sealed_target(&file.target)
                }
            };
            if !staged_ok {
                return Err(bad("it names a file a rotation never writes"));
            }
            let earlier = &journal.files[..i];
            if earlier
                .iter()
                .any(|f| f.staged == file.staged || f.target == file.target)
            {
                return Err(bad("it names a file twice"));
            }
        }
        if let Some(shared) = &journal.shared {
            if shared.keys.len() > MAX_SHARED_KEYS {
                return Err(bad("too many shared keys"));
            }
            let prefix = shared_key_name("");
            for key in &shared.keys {
                let named_right = key.key.strip_prefix(&prefix).is_some_and(is_kid);
                if !named_right {
                    return Err(bad("it names a Redis key a rotation never writes"));
                }
            }
        }
        Ok(journal)
    }
}

/// `ca.key.sealed` or `keyring/<kid>.key.sealed`.
fn is_sealed_target(target: &str) -> bool {
    target == CA_KEY
        || target
            .strip_prefix(KEYRING_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix(SEALED_SUFFIX))
            .is_some_and(is_kid)
}

/// Sets every new envelope if each key still holds its old one, or one under the new
/// KEK (`ARGV[1]`), or has expired; and, if any is still to change, only if the keyring
/// index is what it was (`ARGV[2]` `absent` or `equal` to `ARGV[3]`). For `KEYS[i]`,
/// `i >= 2`: the old envelope is `ARGV[2i]`, the new one `ARGV[2i+1]`. All or nothing.
const APPLY_SCRIPT: &str = r"
local function under_new(v)
  local ok, env = pcall(cjson.decode, v)
  return ok and type(env) == 'table' and env['kek_id'] == ARGV[1]
end
local pending = {}
for i = 2, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur == ARGV[2 * i] then
    pending[#pending + 1] = i
  elseif cur and cur ~= ARGV[2 * i + 1] and not under_new(cur) then
    return {'conflict', KEYS[i]}
  end
end
if #pending > 0 then
  local index = redis.call('GET', KEYS[1])
  if ARGV[2] == 'absent' then
    if index then return {'conflict', KEYS[1]} end
  elseif index ~= ARGV[3] then
    return {'conflict', KEYS[1]}
  end
end
for _, i in ipairs(pending) do
  redis.call('SET', KEYS[i], ARGV[2 * i + 1], 'KEEPTTL')
end
return {'ok', tostring(#pending)}
";

struct Applied {
    shared_pending: bool,
    shared_resealed: usize,
}

/// Rolls a committed journal forward; idempotent, and needs no KEK.
fn apply(
    dir: &DataDir,
    journal: &Journal,
    store: Option<&SharedStore>,
    on_step: &mut dyn FnMut(Step),
) -> Result<Applied, RecoveryError> {
    let staging = staging_path(dir);
    let journal_path = staging.join(JOURNAL);
    let mut applied = Applied {
        shared_pending: false,
        shared_resealed: 0,
    };
    if let Some(shared) = &journal.shared {
        match store {
            Some(store) => {
                applied.shared_resealed = run_apply_script(dir, store, journal, shared)?;
            }
            None => applied.shared_pending = true,
        }
    }
    on_step(Step::SharedApplied);

    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RecoveryError::Io { path, source }
    };
    let mut synced_keyring = false;
    for (i, file) in journal.files.iter().enumerate() {
        finish_file(dir, &journal_path, journal, file)?;
        synced_keyring |= file.target.starts_with(KEYRING_DIR);
        if i == 0 {
            on_step(Step::RenamedOne);
        }
    }
    // The renames are durable before the journal may go.
    if synced_keyring {
        let keyring = dir.root().join(KEYRING_DIR);
        fsio::sync_dir(&keyring).map_err(io_err(&keyring))?;
    }
    fsio::sync_dir(dir.root()).map_err(io_err(dir.root()))?;
    on_step(Step::Renamed);
    if applied.shared_pending {
        return Ok(applied);
    }

    // Finished: the whole directory leaves at once, so that no staging directory
    // without a journal is ever a finished one.
    let retired = dir.root().join(RETIRED_DIR);
    remove_dir(dir, &retired)?;
    match std::fs::rename(&staging, &retired) {
        Ok(()) => {}
        // Another recovery retired it first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RecoveryError::Io {
                path: staging,
                source,
            });
        }
    }
    fsio::sync_dir(dir.root()).map_err(io_err(dir.root()))?;
    on_step(Step::Retired);
    remove_dir(dir, &retired)?;
    Ok(applied)
}

/// Puts one staged file in place, or recognises it is already there.
fn finish_file(
    dir: &DataDir,
    journal_path: &Path,
    journal: &Journal,
    file: &StagedFile,
) -> Result<(), RecoveryError> {
    let staged = staging_path(dir).join(&file.staged);
    let target = dir.root().join(&file.target);
    let holds_it = |path: &Path| -> bool {
        match &file.sha256 {
            Some(hash) => fsio::read_bounded(path, MAX_SEALED_BYTES)
                .is_ok_and(|bytes| sha256_hex(&bytes) == *hash),
            None => Kek::load(path).is_ok_and(|kek| kek.id() == journal.new_kek_id),
        }
    };
    let stuck = |reason| RecoveryError::Stuck {
        journal: journal_path.to_owned(),
        target: target.clone(),
        reason,
    };
    match std::fs::symlink_metadata(&staged) {
        Ok(_) => {
            if !holds_it(&staged) {
                return Err(stuck("has a staged copy that does not match the journal"));
            }
            match std::fs::rename(&staged, &target) {
                Ok(()) => Ok(()),
                // Another recovery renamed it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound && holds_it(&target) => Ok(()),
                Err(source) => Err(RecoveryError::Io {
                    path: target.clone(),
                    source,
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if holds_it(&target) {
                Ok(())
            } else {
                Err(stuck(
                    "holds neither its staged copy nor the re-sealed secret",
                ))
            }
        }
        Err(source) => Err(RecoveryError::Io {
            path: staged,
            source,
        }),
    }
}

fn run_apply_script(
    dir: &DataDir,
    store: &SharedStore,
    journal: &Journal,
    shared: &SharedPlan,
) -> Result<usize, RecoveryError> {
    let mut conn = store.connection()?;
    let script = redis::Script::new(APPLY_SCRIPT);
    let mut invocation = script.prepare_invoke();
    invocation.key(SharedStore::key(INDEX_KEY));
    invocation.arg(&journal.new_kek_id);
    match &shared.index {
        Some(index) => invocation.arg("equal").arg(index.as_bytes()),
        None => invocation.arg("absent").arg(""),
    };
    for key in &shared.keys {
        invocation
            .key(&key.key)
            .arg(key.old.as_bytes())
            .arg(key.new.as_bytes());
    }
    let reply: Vec<String> = invocation
        .invoke(&mut *conn)
        .map_err(|e| store.unavailable(&e))?;
    match reply.as_slice() {
        [ok, n] if ok == "ok" => Ok(n.parse().unwrap_or(0)),
        [conflict, key] if conflict == "conflict" => Err(RecoveryError::SharedChanged {
            data_dir: dir.root().to_owned(),
            key: key.clone(),
        }),
        _ => Err(RecoveryError::Shared(SharedStoreError::Unavailable {
            url: store.url().to_owned(),
            reason: "unexpected reply from the rotation script".to_owned(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::OpenDataDir;
    use crate::keyring::{Home, Keyring};
    use crate::pki;
    use baton_proto::TrustDomain;
    use baton_proto::claims::JwsAlgorithm;
    use baton_proto::jwks::Jwks;
    use std::fs;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use time::OffsetDateTime;

    /// A data directory with a keyring, a copy of its KEK and a new KEK beside it.
    #[derive(Clone)]
    pub(super) struct Fixture {
        pub(super) tmp: std::rc::Rc<tempfile::TempDir>,
        pub(super) dir: DataDir,
        pub(super) source: KekSource,
        pub(super) old: PathBuf,
        pub(super) new: PathBuf,
        pub(super) jwks: Jwks,
        /// Every sealed secret's plaintext before the rotation, by location.
        pub(super) plain: BTreeMap<String, Vec<u8>>,
    }

    pub(super) fn kek_file(path: &Path) -> PathBuf {
        Kek::create_file(path).unwrap();
        path.to_owned()
    }

    impl Fixture {
        /// Dev mode (`<data-dir>/kek`), embedded keyring.
        pub(super) fn dev() -> Self {
            Self::make(false, None)
        }

        /// `BATON_KEK_FILE` mode, keyring in `store` when given, else embedded.
        pub(super) fn file(store: Option<&SharedStore>) -> Self {
            Self::make(true, store)
        }

        fn make(file_kek: bool, store: Option<&SharedStore>) -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let old = tmp.path().join("old.kek");
            let source = if file_kek {
                kek_file(&old);
                KekSource::File(old.clone())
            } else {
                KekSource::Dev
            };
            let dir = DataDir::new(tmp.path().join("d"));
            let made = dir
                .init(
                    &TrustDomain::new("example.org").unwrap(),
                    &source,
                    pki::DEFAULT_CA_TTL,
                    OffsetDateTime::now_utc(),
                )
                .unwrap()
                .store;
            if !file_kek {
                fs::copy(dir.root().join(DEV_KEK), &old).unwrap();
            }
            let home = match store {
                Some(store) => Home::Shared(&made, store),
                None => Home::Files(&made),
            };
            let ring = Keyring::load_or_init(home, JwsAlgorithm::Es256, OffsetDateTime::now_utc())
                .unwrap();
            let new = kek_file(&tmp.path().join("new.kek"));
            let mut fixture = Fixture {
                tmp: std::rc::Rc::new(tmp),
                dir,
                source,
                old,
                new,
                jwks: ring.jwks().clone(),
                plain: BTreeMap::new(),
            };
            let old_kek = Kek::load(&fixture.old).unwrap();
            for (location, purpose, sealed) in fixture.secrets(store) {
                let plain = old_kek
                    .open(Path::new(&location), &purpose, &sealed)
                    .unwrap();
                fixture.plain.insert(location, plain.to_vec());
            }
            fixture
        }

        pub(super) fn root(&self) -> &Path {
            self.dir.root()
        }

        /// The same fixture over a copy of the data directory as it is now.
        pub(super) fn copy(&self, name: &str) -> Fixture {
            let to = self.tmp.path().join(name);
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(self.root())
                .arg(&to)
                .status()
                .unwrap();
            assert!(status.success());
            Fixture {
                dir: DataDir::new(to),
                ..self.clone()
            }
        }

        /// Every sealed secret: (location, purpose, envelope).
        pub(super) fn secrets(
            &self,
            store: Option<&SharedStore>,
        ) -> Vec<(String, String, Vec<u8>)> {
            let mut out = vec![(
                CA_KEY.to_owned(),
                CA_KEY_PURPOSE.to_owned(),
                fs::read(self.root().join(CA_KEY)).unwrap(),
            )];
            if let Ok(entries) = fs::read_dir(self.root().join(KEYRING_DIR)) {
                for entry in entries.map(Result::unwrap) {
                    let name = entry.file_name().into_string().unwrap();
                    if let Some(kid) = name.strip_suffix(SEALED_SUFFIX) {
                        out.push((
                            format!("{KEYRING_DIR}/{name}"),
                            purpose(kid),
                            fs::read(entry.path()).unwrap(),
                        ));
                    }
                }
            }
            if let Some(store) = store {
                let mut conn = store.connection().unwrap();
                let names: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", shared_key_name("")))
                    .query(&mut *conn)
                    .unwrap();
                for name in names {
                    let sealed: Vec<u8> = redis::cmd("GET").arg(&name).query(&mut *conn).unwrap();
                    let kid = name.strip_prefix(&shared_key_name("")).unwrap();
                    out.push((name.clone(), purpose(kid), sealed));
                }
            }
            out
        }

        /// The rotation as `baton kek rotate` runs it.
        pub(super) fn rotate(
            &self,
            store: Option<&SharedStore>,
            on_step: &mut dyn FnMut(Step),
        ) -> Result<Rotated, KekRotateError> {
            rotate(&self.dir, &self.source, &self.new, store, on_step)
        }

        /// Runs the rotation and "crashes" at `step`: unwinds out of it, dropping only
        /// what a dying process drops (the lock), as no cleanup code exists to run.
        pub(super) fn crash_at(&self, step: Step, store: Option<&SharedStore>) {
            let crashed = catch_unwind(AssertUnwindSafe(|| {
                let _ = self.rotate(store, &mut |s| {
                    if s == step {
                        std::panic::resume_unwind(Box::new("crash"));
                    }
                });
            }));
            assert!(crashed.is_err(), "the rotation never reached {step:?}");
        }

        /// Opens the data directory through Baton's own path with `kek`, and the
        /// keyring (files, or `store`).
        pub(super) fn open_with(
            &self,
            kek: &Path,
            store: Option<&SharedStore>,
        ) -> Result<(OpenDataDir, Jwks), String> {
            let data = self
                .dir
                .open(&KekSource::File(kek.to_owned()))
                .map_err(|e| format!("{e:?}"))?;
            let home = match store {
                Some(store) => Home::Shared(&data, store),
                None => Home::Files(&data),
            };
            let ring = Keyring::current(home).map_err(|e| format!("{e:?}"))?;
            let jwks = ring.unwrap().jwks().clone();
            Ok((data, jwks))
        }

        /// Exactly `winner` opens everything, through Baton's open path and secret by
        /// secret; `loser` opens nothing; nothing staged remains.
        pub(super) fn assert_settled(
            &self,
            winner: &Path,
            loser: &Path,
            store: Option<&SharedStore>,
        ) {
            // The loser first: its open runs the recovery, which must settle the same way.
            let refused = self.open_with(loser, store).unwrap_err();
            assert!(refused.contains("WrongKek"), "{refused}");
            let (_, jwks) = self.open_with(winner, store).unwrap();
            assert_eq!(jwks, self.jwks, "the signing keys are the same keys");
            assert!(
                !self.root().join(STAGING_DIR).exists(),
                "staging left behind"
            );
            let win = Kek::load(winner).unwrap();
            let lose = Kek::load(loser).unwrap();
            let secrets = self.secrets(store);
            assert_eq!(secrets.len(), self.plain.len());
            for (location, purpose, sealed) in secrets {
                let path = Path::new(&location);
                let plain = win
                    .open(path, &purpose, &sealed)
                    .unwrap_or_else(|e| panic!("{location}: {e}"));
                assert_eq!(*plain, self.plain[&location], "{location}");
                assert!(
                    matches!(
                        lose.open(path, &purpose, &sealed),
                        Err(SealError::WrongKek { .. })
                    ),
                    "{location} opens under the losing KEK"
                );
            }
            if self.source == KekSource::Dev {
                let dev = Kek::load(&self.root().join(DEV_KEK)).unwrap();
                assert_eq!(dev.id(), win.id(), "the data directory's KEK");
            }
            let temps: Vec<_> = [self.root().to_owned(), self.root().join(KEYRING_DIR)]
                .iter()
                .filter_map(|d| fs::read_dir(d).ok())
                .flatten()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains(".tmp-"))
                .collect();
            assert!(temps.is_empty(), "{temps:?}");
        }

        /// Every file of the data directory with its contents.
        pub(super) fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
            fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
                for entry in fs::read_dir(dir).unwrap().map(Result::unwrap) {
                    let path = entry.path();
                    if path.is_dir() {
                        walk(&path, out);
                    } else {
                        out.insert(path.clone(), fs::read(&path).unwrap_or_default());
                    }
                }
            }
            let mut out = BTreeMap::new();
            walk(self.root(), &mut out);
            out
        }
    }

    #[test]
    fn rotation_reseals_every_secret_and_the_old_kek_opens_nothing() {
        let f = Fixture::dev();
        let done = f.rotate(None, &mut |_| {}).unwrap();
        assert_eq!(done.resealed_files, 3, "the CA key and two signing keys");
        assert_eq!(done.resealed_shared, 0);
        assert_eq!(done.already_new, 0);
        assert!(done.dev_kek_replaced);
        assert!(!done.finished_interrupted);
        assert_eq!(done.old_kek_id, Kek::load(&f.old).unwrap().id());
        assert_eq!(done.new_kek_id, Kek::load(&f.new).unwrap().id());
        f.assert_settled(&f.new, &f.old, None);
        // The dev KEK in the data directory is the new one: a plain open works.
        f.dir.open(&KekSource::Dev).unwrap();
        let mode = fs::metadata(f.root().join(DEV_KEK))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn with_a_kek_file_the_data_directory_gets_no_kek_and_a_rerun_finds_nothing_to_do() {
        let f = Fixture::file(None);
        let done = f.rotate(None, &mut |_| {}).unwrap();
        assert_eq!((done.resealed_files, done.dev_kek_replaced), (3, false));
        assert!(!f.root().join(DEV_KEK).exists());
        f.assert_settled(&f.new, &f.old, None);

        // The operator has not switched BATON_KEK_FILE yet and runs it again.
        let again = f.rotate(None, &mut |_| {}).unwrap();
        assert_eq!((again.resealed_files, again.already_new), (0, 3));
        f.assert_settled(&f.new, &f.old, None);
        // Switched: the new KEK is the one in use.
        let err = rotate(
            &f.dir,
            &KekSource::File(f.new.clone()),
            &f.new,
            None,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, KekRotateError::SameKek { .. }), "{err}");
    }

    #[test]
    fn a_crash_at_any_step_leaves_exactly_one_kek_that_opens_everything() {
        for step in Step::ALL {
            let f = Fixture::dev();
            let mut reached = Vec::new();
            f.rotate(None, &mut |s| reached.push(s)).unwrap();
            assert_eq!(reached, Step::ALL, "every step is reached, in order");

            let f = Fixture::dev();
            f.crash_at(step, None);
            let untouched = f.copy("untouched");
            let committed = step.is_committed();
            let (winner, loser) = if committed {
                (&f.new, &f.old)
            } else {
                (&f.old, &f.new)
            };
            f.assert_settled(winner, loser, None);
            // Run again once an open settled it: done afresh, or already done.
            match f.rotate(None, &mut |_| {}) {
                Ok(done) if !committed => assert_eq!(done.resealed_files, 3),
                Err(KekRotateError::SameKek { id }) if committed => {
                    assert_eq!(id, Kek::load(&f.new).unwrap().id());
                }
                other => panic!("{step:?}: {other:?}"),
            }
            f.assert_settled(&f.new, &f.old, None);

            // Run again before anything else opened it: the command finishes it itself.
            let done = untouched.rotate(None, &mut |_| {}).unwrap();
            assert_eq!(done.finished_interrupted, committed, "{step:?}");
            assert_eq!(
                done.resealed_files,
                if committed { 0 } else { 3 },
                "{step:?}"
            );
            untouched.assert_settled(&f.new, &f.old, None);
        }
    }

    #[test]
    fn an_unusable_or_unchanged_new_kek_changes_nothing() {
        let f = Fixture::dev();
        let before = f.snapshot();
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let p = f.tmp.path().join(name);
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let cases = [
            (write("open.kek", &[7u8; 32], 0o644), "KekPermissions"),
            (write("short.kek", &[7u8; 16], 0o600), "KekFormat"),
            (f.tmp.path().join("missing.kek"), "KekUnreadable"),
        ];
        for (path, want) in cases {
            let err = rotate(&f.dir, &f.source, &path, None, &mut |_| {}).unwrap_err();
            assert!(matches!(err, KekRotateError::NewKek(_)), "{err}");
            assert!(format!("{err:?}").contains(want), "{err:?}");
        }
        let err = rotate(&f.dir, &f.source, &f.old, None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, KekRotateError::SameKek { .. }), "{err}");
        assert_eq!(f.snapshot(), before);
    }

    #[test]
    fn a_secret_that_does_not_open_refuses_the_rotation_before_anything_is_written() {
        let f = Fixture::dev();
        let kid = f.jwks.keys[1].kid.clone();
        let target = f
            .root()
            .join(KEYRING_DIR)
            .join(format!("{kid}{SEALED_SUFFIX}"));
        let sealed = fs::read_to_string(&target).unwrap();
        let mut envelope: serde_json::Value = serde_json::from_str(&sealed).unwrap();
        let ct = envelope["ciphertext"].as_str().unwrap().to_owned();
        let flipped = if ct.starts_with('A') { "B" } else { "A" };
        envelope["ciphertext"] = format!("{flipped}{}", &ct[1..]).into();
        fs::write(&target, serde_json::to_vec(&envelope).unwrap()).unwrap();
        let before = f.snapshot();
        let mut steps = Vec::new();
        let err = f.rotate(None, &mut |s| steps.push(s)).unwrap_err();
        assert!(
            matches!(err, KekRotateError::Unopenable(SealError::Corrupt { .. })),
            "{err:?}"
        );
        assert!(steps.is_empty());
        assert_eq!(f.snapshot(), before);

        // Sealed under a third KEK: named as such, and again nothing changes.
        let third = Kek::load(&kek_file(&f.tmp.path().join("third.kek"))).unwrap();
        third
            .seal_to_file(&target, &purpose(&kid), b"whatever")
            .unwrap();
        let before = f.snapshot();
        let err = f.rotate(None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, KekRotateError::Unopenable(SealError::WrongKek { .. })),
            "{err:?}"
        );
        assert_eq!(f.snapshot(), before);
    }

    #[test]
    fn a_running_issuer_or_a_rotation_in_progress_is_refused() {
        let f = Fixture::dev();
        let before = f.snapshot();
        // An issuer answering on the admin socket.
        let socket = std::os::unix::net::UnixListener::bind(f.dir.admin_socket_path()).unwrap();
        let err = f.rotate(None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, KekRotateError::IssuerRunning { .. }), "{err}");
        assert!(err.to_string().contains("stop it"), "{err}");
        drop(socket);
        fs::remove_file(f.dir.admin_socket_path()).unwrap();

        // An issuer holding the data directory (as `serve` does before its socket).
        let held = f.dir.lock_shared().unwrap();
        let err = f.rotate(None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, KekRotateError::Busy { .. }), "{err}");
        drop(held);
        assert_eq!(f.snapshot(), before);

        // A rotation holding it: opens wait for it to finish rather than read half of it.
        let rotating = f.dir.try_lock(LockMode::Exclusive).unwrap().unwrap();
        let err = f.dir.open(&KekSource::Dev).unwrap_err();
        assert!(matches!(err, DataDirError::Busy { .. }), "{err}");
        drop(rotating);
        f.dir.open(&KekSource::Dev).unwrap();
    }

    #[test]
    fn a_journal_naming_anything_else_is_refused_not_followed() {
        let f = Fixture::dev();
        let outside = f.tmp.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        let staging = f.root().join(STAGING_DIR);
        fsio::create_private_dir(&staging).unwrap();
        fs::write(staging.join("0"), b"x").unwrap();
        let hash = sha256_hex(b"x");
        for target in [
            "../outside",
            "/etc/passwd",
            "keyring/../../outside",
            "bundle.pem",
        ] {
            let journal = json_journal(target, &hash);
            fs::write(staging.join(JOURNAL), journal).unwrap();
            let err = f.dir.open(&KekSource::Dev).unwrap_err();
            assert!(
                matches!(err, DataDirError::Rotation(RecoveryError::Journal { .. })),
                "{target}: {err}"
            );
        }
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        // A staged copy that is not what the journal says is not put in place.
        fs::write(
            staging.join(JOURNAL),
            json_journal(CA_KEY, &sha256_hex(b"y")),
        )
        .unwrap();
        let ca = fs::read(f.root().join(CA_KEY)).unwrap();
        let err = f.dir.open(&KekSource::Dev).unwrap_err();
        assert!(
            matches!(err, DataDirError::Rotation(RecoveryError::Stuck { .. })),
            "{err}"
        );
        assert_eq!(fs::read(f.root().join(CA_KEY)).unwrap(), ca);
    }

    fn json_journal(target: &str, hash: &str) -> String {
        serde_json::json!({
            "version": 1,
            "old_kek_id": "0123456789abcdef",
            "new_kek_id": "fedcba9876543210",
            "files": [{"staged": "0", "target": target, "sha256": hash}],
        })
        .to_string()
    }
}

/// The distributed store, against a real `redis-server`.
#[cfg(test)]
mod shared_tests {
    use super::tests::Fixture;
    use super::*;
    use crate::shared::DEFAULT_TIMEOUT;
    use baton_tests::RedisServer;

    fn connect(redis: &RedisServer) -> SharedStore {
        SharedStore::connect(&redis.url(), DEFAULT_TIMEOUT).unwrap()
    }

    /// A staged signing key (with its one-hour expiry) that a crashed rotation left.
    fn stage_orphan(f: &Fixture, redis: &RedisServer) -> String {
        let kid = "A".repeat(43);
        let sealed = Kek::load(&f.old)
            .unwrap()
            .seal(&purpose(&kid), b"orphan")
            .unwrap();
        let name = shared_key_name(&kid);
        let store = connect(redis);
        let mut conn = store.connection().unwrap();
        redis::cmd("SET")
            .arg(&name)
            .arg(sealed)
            .arg("EX")
            .arg(3600)
            .query::<()>(&mut *conn)
            .unwrap();
        name
    }

    fn fixture(redis: &RedisServer) -> (Fixture, SharedStore) {
        assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
        let store = connect(redis);
        let mut f = Fixture::file(Some(&store));
        let name = stage_orphan(&f, redis);
        let kid = name.strip_prefix(&shared_key_name("")).unwrap();
        f.plain.insert(name.clone(), b"orphan".to_vec());
        assert_eq!(purpose(kid), format!("signing-key:{kid}"));
        (f, store)
    }

    #[test]
    fn redis_keys_are_resealed_in_place_and_a_second_replica_finds_them_done() {
        let redis = RedisServer::start();
        let (a, store) = fixture(&redis);
        let generation = redis.cli(&["GET", "{baton}:keyring:generation"]);
        let orphan = shared_key_name(&"A".repeat(43));

        // A second replica: a copy of the data directory, the same KEK, the same Redis.
        let b_root = a.tmp.path().join("b");
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(a.root())
            .arg(&b_root)
            .status()
            .unwrap();
        assert!(status.success());

        let done = a.rotate(Some(&store), &mut |_| {}).unwrap();
        assert_eq!((done.resealed_files, done.resealed_shared), (1, 3));
        a.assert_settled(&a.new, &a.old, Some(&store));
        // The keys did not change: no new generation; staged keys keep their expiry,
        // committed ones stay permanent.
        assert_eq!(
            redis.cli(&["GET", "{baton}:keyring:generation"]),
            generation
        );
        let ttl: i64 = redis.cli(&["TTL", &orphan]).parse().unwrap();
        assert!(ttl > 3000, "{ttl}");
        for key in &a.jwks.keys {
            assert_eq!(redis.cli(&["TTL", &shared_key_name(&key.kid)]), "-1");
        }

        let b = DataDir::new(&b_root);
        let before: Vec<_> = a.secrets(Some(&store)).into_iter().skip(1).collect();
        let done = rotate(&b, &a.source, &a.new, Some(&store), &mut |_| {}).unwrap();
        assert_eq!(
            (done.resealed_files, done.resealed_shared, done.already_new),
            (1, 0, 3),
            "the second replica re-seals its own CA key and leaves Redis alone"
        );
        let after: Vec<_> = a.secrets(Some(&store)).into_iter().skip(1).collect();
        assert_eq!(before, after, "Redis untouched by the second replica");
        let opened = b.open(&KekSource::File(a.new.clone())).unwrap();
        let ring = crate::keyring::Keyring::current(crate::keyring::Home::Shared(&opened, &store))
            .unwrap()
            .unwrap();
        assert_eq!(ring.jwks(), &a.jwks);
        let err = b.open(&KekSource::File(a.old.clone())).unwrap_err();
        assert!(
            matches!(err, DataDirError::Seal(SealError::WrongKek { .. })),
            "{err}"
        );
    }

    #[test]
    fn a_crash_at_any_step_leaves_exactly_one_kek_for_files_and_redis_alike() {
        let redis = RedisServer::start();
        for step in Step::ALL {
            let (f, store) = fixture(&redis);
            f.crash_at(step, Some(&store));
            let (winner, loser) = if step.is_committed() {
                (&f.new, &f.old)
            } else {
                (&f.old, &f.new)
            };
            f.assert_settled(winner, loser, Some(&store));
            f.rotate(Some(&store), &mut |_| {}).unwrap();
            f.assert_settled(&f.new, &f.old, Some(&store));
        }
    }

    #[test]
    fn an_open_without_the_store_finishes_the_files_and_the_keyring_read_finishes_redis() {
        let redis = RedisServer::start();
        let (f, store) = fixture(&redis);
        f.crash_at(Step::Committed, Some(&store));
        // `enroll`: the data directory alone. The files roll forward, the journal stays
        // for Redis.
        let data = f.dir.open(&KekSource::File(f.new.clone())).unwrap();
        assert!(f.root().join(STAGING_DIR).join(JOURNAL).exists());
        // The command without its store refuses to go on, saying why.
        let err = f.rotate(None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, KekRotateError::RecoveryNeedsStore { .. }),
            "{err}"
        );
        // `serve`: reading the shared keyring finishes Redis first.
        crate::keyring::Keyring::current(crate::keyring::Home::Shared(&data, &store))
            .unwrap()
            .unwrap();
        assert!(!f.root().join(STAGING_DIR).exists());
        f.assert_settled(&f.new, &f.old, Some(&store));
    }

    #[test]
    fn redis_changing_before_the_commit_point_changes_nothing() {
        let redis = RedisServer::start();
        let (f, store) = fixture(&redis);
        let files = f.snapshot();
        let err = f
            .rotate(Some(&store), &mut |s| {
                if s == Step::Staged {
                    // A replica left running adds a key.
                    redis.cli(&["SET", &shared_key_name(&"B".repeat(43)), "x"]);
                }
            })
            .unwrap_err();
        assert!(
            matches!(err, KekRotateError::SharedChangedBeforeCommit { .. }),
            "{err}"
        );
        assert_eq!(f.snapshot(), files);
        redis.cli(&["DEL", &shared_key_name(&"B".repeat(43))]);
        f.assert_settled(&f.old, &f.new, Some(&store));
    }

    #[test]
    fn redis_changing_after_the_commit_point_is_refused_whole_until_put_right() {
        let redis = RedisServer::start();
        let (f, store) = fixture(&redis);
        let index: Vec<u8> = redis::cmd("GET")
            .arg("{baton}:keyring:index")
            .query(&mut *store.connection().unwrap())
            .unwrap();
        let err = f
            .rotate(Some(&store), &mut |s| {
                if s == Step::Committed {
                    redis.cli(&["SET", "{baton}:keyring:index", "changed"]);
                }
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                KekRotateError::Recovery(RecoveryError::SharedChanged { .. })
            ),
            "{err}"
        );
        // All or nothing: every Redis key still holds its old envelope.
        let old = Kek::load(&f.old).unwrap();
        for (location, purpose, sealed) in f.secrets(Some(&store)).into_iter().skip(1) {
            old.open(Path::new(&location), &purpose, &sealed).unwrap();
        }
        // Until the store is put right, reading the shared keyring says why.
        let data = f.dir.open(&KekSource::File(f.new.clone())).unwrap();
        let err = crate::keyring::Keyring::current(crate::keyring::Home::Shared(&data, &store))
            .unwrap_err();
        assert!(err.to_string().contains("stop every replica"), "{err}");
        let mut conn = store.connection().unwrap();
        redis::cmd("SET")
            .arg("{baton}:keyring:index")
            .arg(index)
            .query::<()>(&mut *conn)
            .unwrap();
        drop(conn);
        recover(&f.dir, Some(&store)).unwrap();
        f.assert_settled(&f.new, &f.old, Some(&store));
    }
}
