//! Sealing secrets at rest (SPEC §7): every private key Baton stores is encrypted with
//! AES-256-GCM under a key-encryption key (KEK) that lives outside the data (an
//! operator-provided `BATON_KEK_FILE`) or, in dev, in a 0600 file beside it.
//!
//! A sealed file is a small JSON envelope. Its associated data binds the ciphertext to
//! its *purpose* (e.g. `ca-key`), so one sealed file cannot be swapped for another,
//! and to the KEK's identifier, so a wrong KEK is named as such rather than reported
//! as corruption.

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fsio::{self, Mode};

const KEK_LEN: usize = 32;
const ENVELOPE_VERSION: u8 = 1;
const ENVELOPE_ALG: &str = "A256GCM";
/// Sealed secrets are private keys and tokens: a few KiB at most.
const MAX_SEALED_FILE_BYTES: u64 = 64 * 1024;
const MAX_KEK_FILE_BYTES: u64 = 1024;

/// Why a secret could not be sealed or unsealed. None of these carries secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The KEK file could not be read.
    #[error("cannot read the key-encryption key {path}")]
    KekUnreadable {
        /// The KEK file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The KEK file is readable by others than its owner (see [`Kek::load`]).
    #[error(
        "the key-encryption key {path} is readable by group or others (mode {mode:o}); run `chmod 600` on it (or, owned by root, at most 0640)"
    )]
    KekPermissions {
        /// The KEK file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The KEK file does not hold a 256-bit key.
    #[error(
        "the key-encryption key {path} must hold 32 bytes, raw or base64 (e.g. `openssl rand -base64 32`)"
    )]
    KekFormat {
        /// The KEK file.
        path: PathBuf,
    },
    /// The file was sealed under another KEK.
    #[error(
        "{path} was sealed under key-encryption key {sealed_with}, but the key given is {have}: point BATON_KEK_FILE at the right key"
    )]
    WrongKek {
        /// The sealed file.
        path: PathBuf,
        /// Identifier of the KEK the file names.
        sealed_with: String,
        /// Identifier of the KEK in use.
        have: String,
    },
    /// The sealed file is damaged, truncated, tampered with, or not a sealed file.
    #[error("{path} is corrupt or has been tampered with: {reason}")]
    Corrupt {
        /// The sealed file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Reading or writing the sealed file failed.
    #[error("cannot access {path}")]
    Io {
        /// The sealed file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A key-encryption key, held only in memory and wiped on drop.
pub struct Kek {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// Generates a fresh random KEK.
    pub fn generate() -> Result<(Self, Zeroizing<[u8; KEK_LEN]>), SealError> {
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| SealError::Random)?;
        Ok((Self::from_bytes(&bytes), bytes))
    }

    /// Loads a KEK file: 32 raw bytes, or their base64 (standard or URL-safe, padded or
    /// not) with optional surrounding white space. The file must be private: owned by
    /// this user and unreadable by group and others (0600 or less), or owned by root and
    /// readable by at most its group (0640 or less) — PostgreSQL's rule for its key
    /// files, which admits a Kubernetes Secret mounted `defaultMode: 0440` for the pod's
    /// `fsGroup`, and nothing wider.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let unreadable = |source| SealError::KekUnreadable {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        let mode = meta.permissions().mode();
        if !private_enough(mode, meta.uid(), rustix::process::geteuid().as_raw()) {
            return Err(SealError::KekPermissions {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
        let raw = Zeroizing::new(fsio::read_bounded(path, MAX_KEK_FILE_BYTES).map_err(unreadable)?);
        let bytes = decode_kek(&raw).ok_or_else(|| SealError::KekFormat {
            path: path.to_owned(),
        })?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Writes a newly generated dev KEK to `path` (0600, never overwriting).
    pub fn create_file(path: &Path) -> Result<Self, SealError> {
        let (kek, bytes) = Self::generate()?;
        let encoded = Zeroizing::new(format!("{}\n", STANDARD.encode(bytes.as_ref())));
        fsio::write_new(path, encoded.as_bytes(), Mode::Private).map_err(|source| {
            SealError::Io {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(kek)
    }

    fn from_bytes(bytes: &[u8; KEK_LEN]) -> Self {
        // A public identifier for the KEK: an HMAC under the key itself, so it reveals
        // nothing about the key yet tells a wrong KEK apart from a corrupt file.
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"baton kek identifier v1",
        );
        let id = fsio::hex(&tag.as_ref()[..8]);
        let key = match UnboundKey::new(&AES_256_GCM, bytes) {
            Ok(k) => LessSafeKey::new(k),
            // AES_256_GCM takes exactly KEK_LEN bytes, which the array type guarantees.
            Err(_) => unreachable!("AES-256-GCM key length is fixed by the type"),
        };
        Self { key, id }
    }

    /// The KEK's public identifier (16 hex digits), as recorded in sealed files.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext` for `purpose` into a sealed envelope.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = Zeroizing::new(plaintext.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(purpose, &self.id)),
                &mut *buf,
            )
            .map_err(|_| SealError::Random)?;
        let envelope = Envelope {
            baton_sealed: ENVELOPE_VERSION,
            alg: ENVELOPE_ALG.to_owned(),
            purpose: purpose.to_owned(),
            kek_id: self.id.clone(),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ciphertext: URL_SAFE_NO_PAD.encode(&*buf),
        };
        let mut out = serde_json::to_vec_pretty(&envelope).map_err(|_| SealError::Random)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Decrypts a sealed envelope read from `path`, checking it was sealed for `purpose`.
    pub fn open(
        &self,
        path: &Path,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let corrupt = |reason| SealError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let envelope: Envelope =
            serde_json::from_slice(sealed).map_err(|_| corrupt("not a sealed envelope"))?;
        if envelope.baton_sealed != ENVELOPE_VERSION || envelope.alg != ENVELOPE_ALG {
            return Err(corrupt("unknown envelope version or algorithm"));
        }
        if envelope.purpose != purpose {
            return Err(corrupt("sealed for another purpose (file swapped?)"));
        }
        if envelope.kek_id != self.id {
            return Err(SealError::WrongKek {
                path: path.to_owned(),
                sealed_with: envelope.kek_id,
                have: self.id.clone(),
            });
        }
        let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
            .decode(&envelope.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| corrupt("bad nonce"))?;
        let mut buf = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(&envelope.ciphertext)
                .map_err(|_| corrupt("bad ciphertext encoding"))?,
        );
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&envelope.purpose, &envelope.kek_id)),
                &mut buf,
            )
            .map_err(|_| corrupt("authentication failed"))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Seals `plaintext` and writes it atomically to `path` (0600).
    pub fn seal_to_file(
        &self,
        path: &Path,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<(), SealError> {
        let sealed = self.seal(purpose, plaintext)?;
        fsio::write_atomic(path, &sealed, Mode::Private).map_err(|source| SealError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads and unseals the file at `path`.
    pub fn open_file(&self, path: &Path, purpose: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let sealed =
            fsio::read_bounded(path, MAX_SEALED_FILE_BYTES).map_err(|source| SealError::Io {
                path: path.to_owned(),
                source,
            })?;
        self.open(path, purpose, &sealed)
    }
}

fn aad(purpose: &str, kek_id: &str) -> Vec<u8> {
    format!("baton-sealed-v{ENVELOPE_VERSION}\0{purpose}\0{kek_id}").into_bytes()
}

fn decode_kek(raw: &[u8]) -> Option<Zeroizing<[u8; KEK_LEN]>> {
    let trimmed = raw.trim_ascii();
    let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(trimmed).ok().filter(|d| d.len() == KEK_LEN))
        .map(Zeroizing::new);
    let bytes: &[u8] = match &decoded {
        Some(d) => d,
        None if raw.len() == KEK_LEN => raw,
        None => return None,
    };
    let mut key = Zeroizing::new([0u8; KEK_LEN]);
    key.copy_from_slice(bytes);
    Some(key)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    baton_sealed: u8,
    alg: String,
    purpose: String,
    kek_id: String,
    nonce: String,
    ciphertext: String,
}

/// Whether a KEK file of `mode`, owned by `owner`, is private enough for a process
/// running as `euid` (see [`Kek::load`]).
fn private_enough(mode: u32, owner: u32, euid: u32) -> bool {
    let mode = mode & 0o777;
    if mode & 0o077 == 0 {
        return true;
    }
    // Root's file, shared with one group read-only: the group is the deployment's
    // choice (fsGroup); nobody else may read, and no one but root may write.
    owner == 0 && euid != 0 && mode & 0o037 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn kek_in(dir: &Path) -> (Kek, PathBuf) {
        let path = dir.join("kek");
        (Kek::create_file(&path).unwrap(), path)
    }

    #[test]
    fn sealed_secret_opens_only_with_its_kek_and_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let (kek, kek_path) = kek_in(dir.path());
        let file = dir.path().join("s.sealed");
        kek.seal_to_file(&file, "ca-key", b"top secret").unwrap();

        let reloaded = Kek::load(&kek_path).unwrap();
        assert_eq!(reloaded.id(), kek.id());
        assert_eq!(
            &**reloaded.open_file(&file, "ca-key").unwrap(),
            b"top secret"
        );

        let sealed = fs::read_to_string(&file).unwrap();
        assert!(!sealed.contains("top secret"));

        let err = kek.open_file(&file, "signing-key").unwrap_err();
        assert!(matches!(err, SealError::Corrupt { .. }), "{err}");

        let (other, _) = Kek::generate().unwrap();
        let err = other.open_file(&file, "ca-key").unwrap_err();
        assert!(matches!(err, SealError::WrongKek { .. }), "{err}");
        assert!(err.to_string().contains(kek.id()));
    }

    #[test]
    fn tampering_is_detected_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let (kek, _) = kek_in(dir.path());
        let sealed = kek.seal("p", b"secret bytes").unwrap();
        let text = String::from_utf8(sealed.clone()).unwrap();
        let mut env: serde_json::Value = serde_json::from_str(&text).unwrap();

        // Flip one ciphertext character.
        let ct = env["ciphertext"].as_str().unwrap().to_owned();
        let flipped = if ct.starts_with('A') { "B" } else { "A" };
        env["ciphertext"] = format!("{flipped}{}", &ct[1..]).into();
        let tampered = serde_json::to_vec(&env).unwrap();

        let path = Path::new("x");
        for bad in [
            &tampered[..],
            &sealed[..sealed.len() / 2],
            b"",
            b"not json",
            b"{\"baton_sealed\":9}",
        ] {
            let err = kek.open(path, "p", bad).unwrap_err();
            assert!(matches!(err, SealError::Corrupt { .. }), "{err}");
        }
    }

    #[test]
    fn kek_file_privacy_is_postgres_rule() {
        let (me, root) = (1000, 0);
        // The owner's own file: nothing for group or others.
        assert!(private_enough(0o100600, me, me));
        assert!(private_enough(0o400, me, me));
        assert!(!private_enough(0o640, me, me));
        assert!(!private_enough(0o604, me, me));
        // Root's file: one group may read (a Secret mounted 0440 for the fsGroup) ...
        assert!(private_enough(0o440, root, me));
        assert!(private_enough(0o640, root, me));
        // ... but not write, and others may not read.
        assert!(!private_enough(0o660, root, me));
        assert!(!private_enough(0o444, root, me));
        assert!(!private_enough(0o641, root, me));
        // Running as root, root's file is the owner's own: the strict rule.
        assert!(!private_enough(0o640, root, root));
        // Another user's file shared with a group: refused.
        assert!(!private_enough(0o440, 1001, me));
    }

    #[test]
    fn kek_file_formats_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let raw = write("raw", &[7u8; 32], 0o600);
        let b64 = write(
            "b64",
            format!("{}\n", STANDARD.encode([7u8; 32])).as_bytes(),
            0o400,
        );
        assert_eq!(Kek::load(&raw).unwrap().id(), Kek::load(&b64).unwrap().id());

        let short = write("short", &[7u8; 16], 0o600);
        assert!(matches!(
            Kek::load(&short),
            Err(SealError::KekFormat { .. })
        ));
        let open = write("open", &[7u8; 32], 0o644);
        assert!(matches!(
            Kek::load(&open),
            Err(SealError::KekPermissions { mode: 0o644, .. })
        ));
        assert!(matches!(
            Kek::load(&dir.path().join("missing")),
            Err(SealError::KekUnreadable { .. })
        ));
    }
}
