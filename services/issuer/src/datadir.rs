//! The embedded store's data directory (SPEC §7).
//!
//! ```text
//! baton-data/            0700
//!   config.toml          0644  issuer configuration written by `baton init`
//!   bundle.pem           0644  trust bundle: the root CA certificate(s), issuing CA first
//!   ca.key.sealed        0600  the root CA's private key, sealed under the KEK
//!   kek                  0600  dev key-encryption key (only when BATON_KEK_FILE was not set)
//!   join-tokens/         0700  one record per outstanding join token, named by its hash
//!   denylist.json        0600  identity deny list (`baton identities revoke`)
//!   admin.sock           0600  the running issuer's admin socket (gone when it stops)
//!   kek-rotation/        0700  only while `baton kek rotate` runs or after it crashed
//! ```
//!
//! No file holds a private key in plain text. The directory is created whole or not
//! at all: `init` builds it under a temporary name and renames it into place.
//!
//! The directory itself is the lock between processes (`flock(2)` on it): a running
//! issuer and every open hold it shared, `baton kek rotate` exclusive, so a rotation
//! never runs beside an issuer and an open never sees a rotation half made. Every open
//! first finishes or discards what an interrupted rotation left ([`crate::kek_rotate`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_proto::TrustDomain;
use time::OffsetDateTime;

use crate::config::Config;
use crate::fsio::{self, Mode};
use crate::pki::{self, CertificateAuthority, PkiError};
use crate::seal::{Kek, SealError};

const BUNDLE: &str = "bundle.pem";
/// The sealed CA key, relative to the data directory.
pub(crate) const CA_KEY: &str = "ca.key.sealed";
/// The dev KEK, relative to the data directory.
pub(crate) const DEV_KEK: &str = "kek";
const CONFIG: &str = "config.toml";
const JOIN_TOKENS: &str = "join-tokens";
const DENY_LIST: &str = "denylist.json";
/// What the CA key is sealed for (the envelope's purpose).
pub(crate) const CA_KEY_PURPOSE: &str = "ca-key";
const MAX_BUNDLE_BYTES: u64 = 1024 * 1024;
/// How long taking the data directory's lock waits for another holder to let go.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// Where the key-encryption key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    /// An operator-managed file (`BATON_KEK_FILE`), kept apart from the data.
    File(PathBuf),
    /// The dev KEK stored in the data directory itself.
    Dev,
}

/// Why the data directory could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// No data directory at that path.
    #[error("{path} is not a Baton data directory (no {BUNDLE}); run `baton init` first")]
    NotInitialized {
        /// The data directory.
        path: PathBuf,
    },
    /// `init` found an existing, non-empty directory.
    #[error("{path} already exists and is not empty; refusing to overwrite it")]
    AlreadyInitialized {
        /// The data directory.
        path: PathBuf,
    },
    /// No KEK is available for this data directory.
    #[error(
        "no key-encryption key: set BATON_KEK_FILE to the key this data directory was sealed with ({path} does not exist)"
    )]
    KekMissing {
        /// Where the dev KEK would be.
        path: PathBuf,
    },
    /// A file of the data directory is unreadable or malformed.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `baton kek rotate` holds the data directory.
    #[error(
        "a key-encryption key rotation is in progress on {path}; retry once `baton kek rotate` has finished"
    )]
    Busy {
        /// The data directory.
        path: PathBuf,
    },
    /// What an interrupted key-encryption key rotation left could not be finished.
    #[error(transparent)]
    Rotation(#[from] crate::kek_rotate::RecoveryError),
    /// Reading or writing failed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Sealing or unsealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The CA could not be created or loaded.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A data directory, by path. Nothing is read until [`DataDir::open`].
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    /// The opened data directory.
    pub store: OpenDataDir,
    /// Whether a dev KEK was written into the data directory.
    pub dev_kek: bool,
}

/// A data directory made by [`DataDir::init_from`], opened.
#[derive(Debug)]
pub struct Replicated {
    /// The opened store.
    pub store: OpenDataDir,
    /// Whether the seed was copied now (`false`: the directory already was a replica).
    pub copied: bool,
}

/// An opened data directory: KEK loaded, CA unsealed.
#[derive(Debug)]
pub struct OpenDataDir {
    dir: DataDir,
    kek: Kek,
    ca: CertificateAuthority,
    bundle_pem: String,
}

/// A `flock(2)` on the data directory, released when dropped (or when the process
/// dies, however it dies).
#[derive(Debug)]
pub struct DataDirLock {
    _dir: std::fs::File,
}

/// How a [`DataDirLock`] is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Beside other shared holders: a running issuer, an open.
    Shared,
    /// Alone: a key-encryption key rotation.
    Exclusive,
}

impl DataDir {
    /// Names the data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The trust bundle file.
    pub fn bundle_path(&self) -> PathBuf {
        self.root.join(BUNDLE)
    }

    /// The default configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// The directory of outstanding join tokens.
    pub fn join_tokens_path(&self) -> PathBuf {
        self.root.join(JOIN_TOKENS)
    }

    /// The persisted identity deny list.
    pub fn deny_list_path(&self) -> PathBuf {
        self.root.join(DENY_LIST)
    }

    /// The running issuer's admin socket.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.root.join(crate::admin::SOCKET_FILE)
    }

    pub(crate) fn dev_kek_path(&self) -> PathBuf {
        self.root.join(DEV_KEK)
    }

    /// Locks the data directory, waiting up to [`LOCK_PATIENCE`]: `None` when a holder
    /// of the other mode (or, for [`LockMode::Exclusive`], any holder) keeps it.
    ///
    /// The wait also rides out a lock held a moment too long by a process forked
    /// elsewhere in the same program (the child shares the descriptor until it execs).
    pub fn try_lock(&self, mode: LockMode) -> Result<Option<DataDirLock>, DataDirError> {
        use rustix::fs::{FlockOperation, flock};
        let dir = std::fs::File::open(&self.root).map_err(io_err(&self.root))?;
        let operation = match mode {
            LockMode::Shared => FlockOperation::NonBlockingLockShared,
            LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match flock(&dir, operation) {
                Ok(()) => return Ok(Some(DataDirLock { _dir: dir })),
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                // A file system without flock(2): run as Baton did before it locked
                // (the rotation still refuses while an issuer answers on its socket).
                Err(
                    e @ (rustix::io::Errno::NOLCK
                    | rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::NOSYS),
                ) => {
                    tracing::warn!(
                        data_dir = %self.root.display(),
                        error = %e,
                        "the data directory's file system cannot lock; running without the lock"
                    );
                    return Ok(Some(DataDirLock { _dir: dir }));
                }
                Err(e) => return Err(io_err(&self.root)(e.into())),
            }
        }
    }

    /// Holds the data directory shared, as a running issuer does for its whole life, so
    /// that no `baton kek rotate` can start under it.
    pub fn lock_shared(&self) -> Result<DataDirLock, DataDirError> {
        self.try_lock(LockMode::Shared)?
            .ok_or_else(|| DataDirError::Busy {
                path: self.root.clone(),
            })
    }

    /// Loads the key-encryption key from `source` (the dev one from this directory).
    pub(crate) fn load_kek(&self, source: &KekSource) -> Result<Kek, DataDirError> {
        Ok(match source {
            KekSource::File(path) => Kek::load(path)?,
            KekSource::Dev => {
                let path = self.dev_kek_path();
                if !path.exists() {
                    return Err(DataDirError::KekMissing { path });
                }
                Kek::load(&path)?
            }
        })
    }

    /// Whether `init` has run here.
    pub fn exists(&self) -> bool {
        self.bundle_path().is_file()
    }

    /// Creates a new trust domain here: root CA, sealed CA key, dev KEK (unless the KEK
    /// comes from a file), default configuration. Fails if the directory is not empty.
    pub fn init(
        &self,
        trust_domain: &TrustDomain,
        kek_source: &KekSource,
        ca_ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Initialized, DataDirError> {
        let non_empty = match std::fs::read_dir(&self.root) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        if non_empty {
            return Err(DataDirError::AlreadyInitialized {
                path: self.root.clone(),
            });
        }

        self.build_in_place(|staging| {
            self.populate(staging, trust_domain, kek_source, ca_ttl, now)
        })?;
        let store = self.open(kek_source)?;
        Ok(Initialized {
            store,
            dev_kek: *kek_source == KekSource::Dev,
        })
    }

    /// Makes this data directory a replica of `seed`'s trust domain: the same CA
    /// certificate, sealed CA key and configuration (and, with the dev KEK, that KEK),
    /// for another issuer replica of a distributed store (docs/distributed.md). The
    /// seed may be read-only — a Kubernetes Secret and ConfigMap mounted together, say —
    /// and only needs those files. The sealed key must open under `kek_source` and
    /// match the bundle's issuing CA before anything is written; the copy appears whole
    /// or not at all, as with [`DataDir::init`].
    ///
    /// Idempotent for restarts: when this directory already holds the seed's trust
    /// bundle it is opened as it is (`Ok` with `copied: false`); any other existing
    /// content is refused.
    pub fn init_from(
        &self,
        seed: &DataDir,
        kek_source: &KekSource,
    ) -> Result<Replicated, DataDirError> {
        let read = |path: PathBuf, limit: u64| {
            fsio::read_bounded(&path, limit).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    DataDirError::NotInitialized {
                        path: seed.root.clone(),
                    }
                } else {
                    io_err(&path)(e)
                }
            })
        };
        let bundle = read(seed.bundle_path(), MAX_BUNDLE_BYTES)?;
        if self.exists() {
            let own = self.bundle_path();
            let mine = fsio::read_bounded(&own, MAX_BUNDLE_BYTES).map_err(io_err(&own))?;
            if mine != bundle {
                return Err(DataDirError::Malformed {
                    path: self.root.clone(),
                    reason: format!(
                        "already holds another trust bundle than {}; refusing to overwrite it",
                        seed.bundle_path().display()
                    ),
                });
            }
            let store = self.open(kek_source)?;
            return Ok(Replicated {
                store,
                copied: false,
            });
        }
        if std::fs::read_dir(&self.root).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(DataDirError::AlreadyInitialized {
                path: self.root.clone(),
            });
        }
        let sealed_path = seed.root.join(CA_KEY);
        let sealed = read(sealed_path.clone(), MAX_BUNDLE_BYTES)?;
        let config = match fsio::read_bounded(&seed.config_path(), MAX_BUNDLE_BYTES) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&seed.config_path())(e)),
        };
        let kek_path = match kek_source {
            KekSource::File(path) => path.clone(),
            KekSource::Dev => seed.dev_kek_path(),
        };
        if *kek_source == KekSource::Dev && !kek_path.exists() {
            return Err(DataDirError::KekMissing { path: kek_path });
        }
        let dev_kek = (*kek_source == KekSource::Dev).then_some(&kek_path);
        // Check before writing: the key opens under this KEK and is the bundle's CA's.
        let kek = Kek::load(&kek_path)?;
        let key = kek.open_file(&sealed_path, CA_KEY_PURPOSE)?;
        let certs = pki::pem_certificates(&bundle).map_err(|reason| DataDirError::Malformed {
            path: seed.bundle_path(),
            reason: reason.to_string(),
        })?;
        CertificateAuthority::from_parts(&certs[0], &key)?;

        self.build_in_place(|staging| {
            fsio::create_private_dir(staging).map_err(io_err(staging))?;
            let write = |name: &str, bytes: &[u8], mode: Mode| {
                let path = staging.join(name);
                fsio::write_atomic(&path, bytes, mode).map_err(io_err(&path))
            };
            write(BUNDLE, &bundle, Mode::Public)?;
            write(CA_KEY, &sealed, Mode::Private)?;
            if let Some(config) = &config {
                write(CONFIG, config, Mode::Public)?;
            }
            if let Some(path) = dev_kek {
                let bytes = zeroize::Zeroizing::new(
                    fsio::read_bounded(path, MAX_BUNDLE_BYTES).map_err(io_err(path))?,
                );
                write(DEV_KEK, &bytes, Mode::Private)?;
            }
            Ok(())
        })?;
        let store = self.open(kek_source)?;
        Ok(Replicated {
            store,
            copied: true,
        })
    }

    /// Fills a staging directory beside the data directory with `fill`, then renames
    /// it into place: rename(2) replaces an empty directory atomically, so the whole
    /// trust domain appears at once or not at all. A failed fill leaves nothing behind.
    fn build_in_place(
        &self,
        fill: impl FnOnce(&Path) -> Result<(), DataDirError>,
    ) -> Result<(), DataDirError> {
        let staging = self.staging_path()?;
        let result = fill(&staging).and_then(|()| {
            std::fs::rename(&staging, &self.root).map_err(io_err(&self.root))?;
            fsio::sync_dir(fsio::parent_dir(&self.root)).map_err(io_err(&self.root))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn staging_path(&self) -> Result<PathBuf, DataDirError> {
        let name = self
            .root
            .file_name()
            .ok_or_else(|| DataDirError::Malformed {
                path: self.root.clone(),
                reason: "data directory path has no final component".into(),
            })?
            .to_string_lossy();
        let parent = fsio::parent_dir(&self.root);
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let mut nonce = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| SealError::Random)?;
        Ok(parent.join(format!(".{name}.init-{}", fsio::hex(&nonce))))
    }

    fn populate(
        &self,
        staging: &Path,
        trust_domain: &TrustDomain,
        kek_source: &KekSource,
        ca_ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(), DataDirError> {
        fsio::create_private_dir(staging).map_err(io_err(staging))?;
        let kek = match kek_source {
            KekSource::File(path) => Kek::load(path)?,
            KekSource::Dev => Kek::create_file(&staging.join(DEV_KEK))?,
        };
        let ca = CertificateAuthority::create(trust_domain, ca_ttl, now)?;
        kek.seal_to_file(&staging.join(CA_KEY), CA_KEY_PURPOSE, ca.key_pkcs8())?;
        let bundle = staging.join(BUNDLE);
        fsio::write_atomic(&bundle, ca.cert_pem().as_bytes(), Mode::Public)
            .map_err(io_err(&bundle))?;
        let config = staging.join(CONFIG);
        fsio::write_atomic(&config, Config::default_file().as_bytes(), Mode::Public)
            .map_err(io_err(&config))?;
        Ok(())
    }

    /// Opens an initialized data directory: finishes (or discards) an interrupted
    /// key-encryption key rotation, then loads the KEK, the bundle and the CA.
    pub fn open(&self, kek_source: &KekSource) -> Result<OpenDataDir, DataDirError> {
        let bundle_path = self.bundle_path();
        if !bundle_path.is_file() {
            return Err(DataDirError::NotInitialized {
                path: self.root.clone(),
            });
        }
        let _lock = self.lock_shared()?;
        // Before the KEK is read: a committed rotation may still have to put the new
        // dev KEK in place, and it needs no KEK to do so.
        crate::kek_rotate::recover_locked(self, None)?;
        let kek = self.load_kek(kek_source)?;
        let bundle_bytes =
            fsio::read_bounded(&bundle_path, MAX_BUNDLE_BYTES).map_err(io_err(&bundle_path))?;
        let malformed = |reason: &str| DataDirError::Malformed {
            path: bundle_path.clone(),
            reason: reason.to_owned(),
        };
        let certs = pki::pem_certificates(&bundle_bytes).map_err(malformed)?;
        let bundle_pem = String::from_utf8(bundle_bytes).map_err(|_| malformed("not UTF-8"))?;
        let key_path = self.root.join(CA_KEY);
        let key = kek.open_file(&key_path, CA_KEY_PURPOSE)?;
        // The issuing CA is the bundle's first certificate; later ones are older roots
        // still trusted during a CA rollover.
        let ca = CertificateAuthority::from_parts(&certs[0], &key)?;
        Ok(OpenDataDir {
            dir: self.clone(),
            kek,
            ca,
            bundle_pem,
        })
    }
}

impl OpenDataDir {
    /// The data directory.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// The root CA, key unsealed.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The key-encryption key.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The trust bundle, PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn init_dev(root: &Path) -> Initialized {
        DataDir::new(root)
            .init(
                &td(),
                &KekSource::Dev,
                pki::DEFAULT_CA_TTL,
                OffsetDateTime::now_utc(),
            )
            .unwrap()
    }

    #[test]
    fn init_creates_a_private_directory_that_reopens_to_the_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("baton-data");
        let made = init_dev(&root);
        assert!(made.dev_kek);
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for (name, want) in [
            ("kek", 0o600),
            ("ca.key.sealed", 0o600),
            ("bundle.pem", 0o644),
        ] {
            let mode = fs::metadata(root.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "{name}");
        }
        let opened = DataDir::new(&root).open(&KekSource::Dev).unwrap();
        assert_eq!(opened.ca().cert_der(), made.store.ca().cert_der());
        assert_eq!(opened.ca().trust_domain(), &td());
        // Nothing but the data directory is left in the parent.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_replica_copies_the_trust_domain_once_and_only_under_the_right_kek() {
        let tmp = tempfile::tempdir().unwrap();
        let primary = tmp.path().join("primary");
        let made = init_dev(&primary);
        // The seed as a Kubernetes Secret + ConfigMap would hold it: three files, in a
        // directory that is not a data directory of its own (no KEK, not 0700).
        let seed = tmp.path().join("seed");
        fs::create_dir(&seed).unwrap();
        for name in [BUNDLE, CA_KEY, CONFIG] {
            fs::copy(primary.join(name), seed.join(name)).unwrap();
        }
        let kek = primary.join(DEV_KEK);
        let replica = DataDir::new(tmp.path().join("replica"));

        // Under another KEK the sealed key does not open: refused, nothing written.
        let other = tmp.path().join("other-kek");
        fs::write(&other, [9u8; 32]).unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o600)).unwrap();
        let err = replica
            .init_from(&DataDir::new(&seed), &KekSource::File(other))
            .unwrap_err();
        assert!(matches!(err, DataDirError::Seal(_)), "{err}");
        assert!(!replica.root().exists());
        // The dev KEK lives with the primary, not in this seed: named as missing.
        let err = replica
            .init_from(&DataDir::new(&seed), &KekSource::Dev)
            .unwrap_err();
        assert!(matches!(err, DataDirError::KekMissing { .. }), "{err}");

        let source = KekSource::File(kek.clone());
        let copy = replica.init_from(&DataDir::new(&seed), &source).unwrap();
        assert!(copy.copied);
        assert_eq!(copy.store.ca().cert_der(), made.store.ca().cert_der());
        assert_eq!(
            fs::metadata(replica.root()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(replica.root().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(!replica.root().join(DEV_KEK).exists());
        // Again (a restarted pod): nothing to do.
        let again = replica.init_from(&DataDir::new(&seed), &source).unwrap();
        assert!(!again.copied);
        // Another trust domain's seed over it: refused, the replica unchanged.
        let stranger = tmp.path().join("stranger");
        init_dev(&stranger);
        let err = replica
            .init_from(
                &DataDir::new(&stranger),
                &KekSource::File(stranger.join(DEV_KEK)),
            )
            .unwrap_err();
        assert!(err.to_string().contains("another trust bundle"), "{err}");
        assert_eq!(
            fs::read(replica.root().join(BUNDLE)).unwrap(),
            fs::read(primary.join(BUNDLE)).unwrap()
        );
        // A dev replica of a dev data directory takes its KEK along.
        let dev = DataDir::new(tmp.path().join("dev-replica"));
        dev.init_from(&DataDir::new(&primary), &KekSource::Dev)
            .unwrap();
        assert_eq!(
            fs::read(dev.dev_kek_path()).unwrap(),
            fs::read(&kek).unwrap()
        );
        // Nothing half-made is left beside them.
        let mut names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "dev-replica",
                "other-kek",
                "primary",
                "replica",
                "seed",
                "stranger"
            ]
        );
    }

    #[test]
    fn init_refuses_a_non_empty_directory_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        init_dev(&root);
        let before = fs::read(root.join("bundle.pem")).unwrap();
        let err = DataDir::new(&root)
            .init(
                &td(),
                &KekSource::Dev,
                pki::DEFAULT_CA_TTL,
                OffsetDateTime::now_utc(),
            )
            .unwrap_err();
        assert!(
            matches!(err, DataDirError::AlreadyInitialized { .. }),
            "{err}"
        );
        assert_eq!(fs::read(root.join("bundle.pem")).unwrap(), before);
    }

    #[test]
    fn init_into_an_existing_empty_directory_works() {
        let tmp = tempfile::tempdir().unwrap();
        init_dev(tmp.path());
        assert!(DataDir::new(tmp.path()).exists());
    }

    #[test]
    fn external_kek_is_used_and_required_afterwards() {
        let tmp = tempfile::tempdir().unwrap();
        let kek_path = tmp.path().join("kek.secret");
        Kek::create_file(&kek_path).unwrap();
        let root = tmp.path().join("d");
        let made = DataDir::new(&root)
            .init(
                &td(),
                &KekSource::File(kek_path.clone()),
                pki::DEFAULT_CA_TTL,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert!(!made.dev_kek);
        assert!(!root.join("kek").exists());
        let err = DataDir::new(&root).open(&KekSource::Dev).unwrap_err();
        assert!(matches!(err, DataDirError::KekMissing { .. }), "{err}");
        DataDir::new(&root)
            .open(&KekSource::File(kek_path))
            .unwrap();
    }

    #[test]
    fn wrong_kek_and_corruption_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        init_dev(&root);
        let other = tmp.path().join("other-kek");
        Kek::create_file(&other).unwrap();
        let err = DataDir::new(&root)
            .open(&KekSource::File(other))
            .unwrap_err();
        assert!(
            matches!(err, DataDirError::Seal(SealError::WrongKek { .. })),
            "{err}"
        );

        fs::write(root.join("ca.key.sealed"), b"{\"garbage\":true}").unwrap();
        let err = DataDir::new(&root).open(&KekSource::Dev).unwrap_err();
        assert!(
            matches!(err, DataDirError::Seal(SealError::Corrupt { .. })),
            "{err}"
        );

        fs::write(root.join("bundle.pem"), b"not pem").unwrap();
        let err = DataDir::new(&root).open(&KekSource::Dev).unwrap_err();
        assert!(matches!(err, DataDirError::Malformed { .. }), "{err}");

        let err = DataDir::new(tmp.path().join("nope"))
            .open(&KekSource::Dev)
            .unwrap_err();
        assert!(matches!(err, DataDirError::NotInitialized { .. }), "{err}");
    }
}
