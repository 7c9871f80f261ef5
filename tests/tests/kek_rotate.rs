//! `baton kek rotate --new-kek-file F` end to end (SPEC §7, §9; docs/kek-rotation.md),
//! with the real `baton` binary and, for the distributed store, a real `redis-server`.
//!
//! The crash tests abort the real process (`BATON_FAILPOINT=kek-rotate:<step>`, which
//! calls `abort()`: no destructor, no cleanup runs) at every step of the rotation, then
//! check that exactly one of the old and the new KEK opens every sealed secret — through
//! Baton's own open path (`baton kek verify`: data directory, then keyring) and secret by
//! secret with an independent AES-256-GCM implementation here — and that running the
//! command again finishes or redoes the job.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton_tests::{RedisServer, Run, Sandbox, Server, https_client};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

/// The rotation's steps, in order, as `BATON_FAILPOINT=kek-rotate:<step>` names them;
/// from `committed` on, a crash leaves the rotation committed.
const STEPS: [&str; 8] = [
    "verified",
    "staged-one",
    "staged",
    "committed",
    "shared-applied",
    "renamed-one",
    "renamed",
    "retired",
];
const COMMITTED_FROM: usize = 3;
const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
const POLICY: &str = r#"
[[allow]]
caller = "spiffe://example.org/fn/orders"
audience = "spiffe://example.org/fn/payments"
"#;

/// Writes a fresh random KEK (base64, as `openssl rand -base64 32`) with mode 0600.
fn write_kek(path: &Path) -> PathBuf {
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).unwrap();
    fs::write(path, format!("{}\n", STANDARD.encode(key))).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    path.to_owned()
}

fn kek_bytes(path: &Path) -> [u8; 32] {
    let raw = fs::read(path).unwrap();
    let key = STANDARD.decode(raw.trim_ascii()).unwrap_or(raw);
    key.try_into().unwrap()
}

/// The KEK's public id, computed here as the envelope format defines it.
fn kek_id(path: &Path) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &kek_bytes(path));
    let tag = ring::hmac::sign(&key, b"baton kek identifier v1");
    tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Opens a sealed envelope with the KEK in `kek`, independently of Baton's code.
fn unseal(kek: &Path, purpose: &str, envelope: &str) -> Option<Vec<u8>> {
    let env: Value = serde_json::from_str(envelope).ok()?;
    let nonce = URL_SAFE_NO_PAD.decode(env["nonce"].as_str()?).ok()?;
    let mut buf = URL_SAFE_NO_PAD.decode(env["ciphertext"].as_str()?).ok()?;
    let aad = format!("baton-sealed-v1\0{purpose}\0{}", env["kek_id"].as_str()?);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &kek_bytes(kek)).ok()?);
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(&nonce).ok()?,
            Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A Redis database of the test's server.
struct Db<'a> {
    redis: &'a RedisServer,
    n: u32,
}

impl Db<'_> {
    fn url(&self) -> String {
        format!("{}/{}", self.redis.url(), self.n)
    }

    fn cli(&self, args: &[&str]) -> String {
        let n = self.n.to_string();
        let mut all = vec!["-n", &n];
        all.extend_from_slice(args);
        self.redis.cli(&all)
    }

    fn sealed_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["KEYS", "{baton}:keyring:key:*"])
            .lines()
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }
}

/// One data directory (and, distributed, its Redis database), its old KEK (a copy of
/// the dev one, or the `BATON_KEK_FILE`) and the new KEK.
struct Case<'a> {
    sb: Sandbox,
    old: PathBuf,
    new: PathBuf,
    /// `BATON_KEK_FILE` mode (else dev: `<data-dir>/kek`).
    file_kek: bool,
    db: Option<Db<'a>>,
    /// Every secret's plaintext before the rotation, by location.
    plain: BTreeMap<String, Vec<u8>>,
}

impl<'a> Case<'a> {
    /// A fresh sandbox holding a copy of `template`'s data directory and KEKs.
    fn copy_of(template: &Sandbox, file_kek: bool, db: Option<Db<'a>>) -> Self {
        let sb = Sandbox::new();
        copy_dir(&template.data_dir(), &sb.data_dir());
        fs::copy(template.path().join("old.kek"), sb.path().join("old.kek")).unwrap();
        let old = sb.path().join("old.kek");
        let new = write_kek(&sb.path().join("new.kek"));
        let mut case = Case {
            sb,
            old,
            new,
            file_kek,
            db,
            plain: BTreeMap::new(),
        };
        for (location, purpose, sealed) in case.secrets() {
            let plain = unseal(&case.old, &purpose, &sealed).unwrap();
            case.plain.insert(location, plain);
        }
        case
    }

    /// Every sealed secret: (location, purpose, envelope).
    fn secrets(&self) -> Vec<(String, String, String)> {
        let root = self.sb.data_dir();
        let mut out = vec![(
            "ca.key.sealed".to_owned(),
            "ca-key".to_owned(),
            fs::read_to_string(root.join("ca.key.sealed")).unwrap(),
        )];
        if let Ok(entries) = fs::read_dir(root.join("keyring")) {
            let mut names: Vec<String> = entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                if let Some(kid) = name.strip_suffix(".key.sealed") {
                    out.push((
                        format!("keyring/{name}"),
                        format!("signing-key:{kid}"),
                        fs::read_to_string(root.join("keyring").join(&name)).unwrap(),
                    ));
                }
            }
        }
        if let Some(db) = &self.db {
            for key in db.sealed_keys() {
                let kid = key.strip_prefix("{baton}:keyring:key:").unwrap();
                out.push((
                    key.clone(),
                    format!("signing-key:{kid}"),
                    db.cli(&["GET", &key]),
                ));
            }
        }
        out
    }

    /// `baton <args>` with the current KEK as this mode takes it (dev: none given).
    fn baton(&self, args: &[&str]) -> Run {
        self.baton_with_kek(args, self.file_kek.then_some(&self.old))
    }

    fn baton_with_kek(&self, args: &[&str], kek: Option<&PathBuf>) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        let url = self.db.as_ref().map(Db::url);
        if let Some(url) = &url {
            all.extend(["--store", url]);
        }
        match kek {
            Some(kek) => self
                .sb
                .baton_with_env(&all, &[("BATON_KEK_FILE", kek.as_path())]),
            None => self.sb.baton(&all),
        }
    }

    fn rotate(&self, failpoint: Option<&str>) -> Run {
        let new = self.new.display().to_string();
        let args = ["kek", "rotate", "--new-kek-file", &new, "--json"];
        let url = self.db.as_ref().map(Db::url);
        let mut all: Vec<&str> = args.to_vec();
        if let Some(url) = &url {
            all.extend(["--store", url]);
        }
        let failpoint = failpoint.map(|step| PathBuf::from(format!("kek-rotate:{step}")));
        let mut env: Vec<(&str, &Path)> = Vec::new();
        if self.file_kek {
            env.push(("BATON_KEK_FILE", &self.old));
        }
        if let Some(fp) = &failpoint {
            env.push(("BATON_FAILPOINT", fp));
        }
        self.sb.baton_with_env(&all, &env)
    }

    /// `baton kek verify --json` with `kek` given as BATON_KEK_FILE.
    fn verify_with(&self, kek: &PathBuf) -> Run {
        self.baton_with_kek(&["kek", "verify", "--json"], Some(kek))
    }

    /// Exactly `winner` opens everything — through `baton kek verify` (the data
    /// directory, then the keyring: Baton's own open path) and secret by secret — and
    /// `loser` opens nothing; nothing staged or temporary is left.
    fn assert_settled(&self, winner: &PathBuf, loser: &PathBuf, what: &str) {
        // The loser first: its open runs the recovery, which must settle the same way.
        let refused = self.verify_with(loser);
        assert_eq!(refused.code, Some(1), "{what}: {}", refused.stdout);
        // Refused at the data directory already (the CA key), as `enroll` would be.
        assert!(
            refused.stderr.contains(&format!(
                "ca.key.sealed was sealed under key-encryption key {}",
                kek_id(winner)
            )),
            "{what}: {}",
            refused.stderr
        );
        let opened: Value = serde_json::from_str(self.verify_with(winner).ok()).unwrap();
        assert_eq!(opened["kek_id"], kek_id(winner), "{what}");
        let keys = self.plain.len() - 1;
        let want = match self.db {
            Some(_) => (1, keys),
            None => (1 + keys, 0),
        };
        assert_eq!(
            (
                opened["opened"]["files"].as_u64().unwrap() as usize,
                opened["opened"]["shared"].as_u64().unwrap() as usize
            ),
            want,
            "{what}: every key of the keyring opened"
        );
        if !self.file_kek {
            // Dev mode: the data directory's own KEK is the winner too.
            let dev: Value =
                serde_json::from_str(self.baton(&["kek", "verify", "--json"]).ok()).unwrap();
            assert_eq!(dev["kek_id"], kek_id(winner), "{what}");
        }

        let secrets = self.secrets();
        assert_eq!(secrets.len(), self.plain.len(), "{what}");
        for (location, purpose, sealed) in secrets {
            let env: Value = serde_json::from_str(&sealed).unwrap();
            assert_eq!(env["kek_id"], kek_id(winner), "{what}: {location}");
            assert_eq!(
                unseal(winner, &purpose, &sealed).as_ref(),
                Some(&self.plain[&location]),
                "{what}: {location} opens under the winning KEK, to the same key"
            );
            assert_eq!(unseal(loser, &purpose, &sealed), None, "{what}: {location}");
        }

        let root = self.sb.data_dir();
        for gone in ["kek-rotation", "kek-rotation.done"] {
            assert!(!root.join(gone).exists(), "{what}: {gone} left behind");
        }
        for dir in [root.clone(), root.join("keyring")] {
            for entry in fs::read_dir(&dir).into_iter().flatten() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(!name.contains(".tmp-"), "{what}: {name} left behind");
            }
        }
    }

    /// Every file of the data directory with its contents.
    fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap().map(Result::unwrap) {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if !path.ends_with("admin.sock") {
                    out.insert(path.clone(), fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.sb.data_dir(), &mut out);
        out
    }
}

/// A dev-mode data directory whose keyring the issuer created, and a copy of its KEK
/// as `old.kek`.
fn embedded_template() -> Sandbox {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    // The keyring is created by the issuer's first start; SIGKILL leaves a stale
    // admin socket, which must not be taken for a running issuer.
    drop(Server::start(&sb, &[]));
    fs::copy(sb.data_dir().join("kek"), sb.path().join("old.kek")).unwrap();
    sb
}

/// A `BATON_KEK_FILE` data directory whose keyring the issuer created in database 0.
fn distributed_template(redis: &RedisServer) -> Sandbox {
    let sb = Sandbox::new();
    let old = write_kek(&sb.path().join("old.kek"));
    sb.baton_with_env(
        &["init", "--trust-domain", "example.org"],
        &[("BATON_KEK_FILE", &old)],
    )
    .ok();
    let url = format!("{}/0", redis.url());
    let old = old.display().to_string();
    drop(Server::start_with_env(
        &sb,
        &["--store", &url],
        &[("BATON_KEK_FILE", &old)],
    ));
    sb
}

/// Database `n` of `redis`, holding a copy of database 0's keyring.
fn keyring_copy(redis: &RedisServer, n: u32) -> Db<'_> {
    let template = Db { redis, n: 0 };
    let db = Db { redis, n };
    for key in template.cli(&["KEYS", "{baton}:keyring:*"]).lines() {
        assert_eq!(template.cli(&["COPY", key, key, "DB", &n.to_string()]), "1");
    }
    assert_eq!(db.sealed_keys().len(), 2);
    db
}

fn assert_crashed(run: &Run, step: &str) {
    assert_eq!(
        run.code, None,
        "{step}: the process was to abort: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("failpoint kek-rotate:{step}")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_crash_at_every_step_leaves_one_kek_that_opens_everything_embedded() {
    let template = embedded_template();
    for (i, step) in STEPS.iter().enumerate() {
        let committed = i >= COMMITTED_FROM;
        let case = Case::copy_of(&template, false, None);
        assert_eq!(case.plain.len(), 3, "the CA key and two signing keys");
        assert_crashed(&case.rotate(Some(step)), step);
        // The crashed state, untouched, for running the command again first thing.
        let again = Sandbox::new();
        copy_dir(&case.sb.data_dir(), &again.data_dir());

        let (winner, loser) = if committed {
            (&case.new, &case.old)
        } else {
            (&case.old, &case.new)
        };
        case.assert_settled(winner, loser, step);

        // Again, once an open has settled it: done afresh, or already done.
        let rerun = case.rotate(None);
        if committed {
            assert_eq!(rerun.code, Some(1), "{step}");
            assert!(
                rerun.stderr.contains("already in use"),
                "{step}: {}",
                rerun.stderr
            );
        } else {
            let done: Value = serde_json::from_str(rerun.ok()).unwrap();
            assert_eq!(done["resealed"]["files"], 3, "{step}");
        }
        case.assert_settled(&case.new, &case.old, step);

        // Again, before anything else opened it: the command finishes the job itself.
        let again = Case {
            sb: again,
            old: case.old.clone(),
            new: case.new.clone(),
            file_kek: false,
            db: None,
            plain: case.plain.clone(),
        };
        let done: Value = serde_json::from_str(again.rotate(None).ok()).unwrap();
        assert_eq!(done["finished_interrupted"], committed, "{step}: {done}");
        assert_eq!(done["new_kek_id"], kek_id(&case.new), "{step}");
        again.assert_settled(&case.new, &case.old, step);
    }
}

#[test]
fn a_crash_at_every_step_leaves_one_kek_that_opens_everything_distributed() {
    let redis = RedisServer::start();
    let template = distributed_template(&redis);
    for (i, step) in STEPS.iter().enumerate() {
        let committed = i >= COMMITTED_FROM;
        let db = keyring_copy(&redis, i as u32 + 1);
        let case = Case::copy_of(&template, true, Some(db));
        assert_eq!(case.plain.len(), 3, "the CA key, two signing keys in Redis");
        let generation = case
            .db
            .as_ref()
            .unwrap()
            .cli(&["GET", "{baton}:keyring:generation"]);
        assert_crashed(&case.rotate(Some(step)), step);
        let (winner, loser) = if committed {
            (&case.new, &case.old)
        } else {
            (&case.old, &case.new)
        };
        case.assert_settled(winner, loser, step);

        // BATON_KEK_FILE still names the old key: the command runs again cleanly.
        let done: Value = serde_json::from_str(case.rotate(None).ok()).unwrap();
        let (files, shared) = if committed { (0, 0) } else { (1, 2) };
        assert_eq!(done["resealed"]["files"], files, "{step}: {done}");
        assert_eq!(done["resealed"]["shared"], shared, "{step}: {done}");
        case.assert_settled(&case.new, &case.old, step);
        // The keys themselves did not change.
        let db = case.db.as_ref().unwrap();
        assert_eq!(db.cli(&["GET", "{baton}:keyring:generation"]), generation);
        for key in db.sealed_keys() {
            assert_eq!(db.cli(&["TTL", &key]), "-1", "{key} stays permanent");
        }
    }
}

#[test]
fn later_replicas_find_redis_rotated_and_reseal_only_their_own_data_directory() {
    let redis = RedisServer::start();
    let template = distributed_template(&redis);
    let first = Case::copy_of(&template, true, Some(keyring_copy(&redis, 1)));
    let second = Case {
        new: first.new.clone(),
        ..Case::copy_of(
            &template,
            true,
            Some(Db {
                redis: &redis,
                n: 1,
            }),
        )
    };

    let done: Value = serde_json::from_str(first.rotate(None).ok()).unwrap();
    assert_eq!(
        (
            done["resealed"]["files"].as_u64(),
            done["resealed"]["shared"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert!(
        done["next"]
            .as_str()
            .unwrap()
            .contains("every other replica"),
        "{done}"
    );
    let redis_after = first.secrets()[1..].to_vec();

    // The second replica, still on the old key, cannot open its keyring any more…
    let stale = second.verify_with(&second.old);
    assert_eq!(stale.code, Some(1));
    // …and its rotation re-seals its CA key only.
    let done: Value = serde_json::from_str(second.rotate(None).ok()).unwrap();
    assert_eq!(
        (
            done["resealed"]["files"].as_u64(),
            done["resealed"]["shared"].as_u64(),
            done["already_new"].as_u64()
        ),
        (Some(1), Some(0), Some(2)),
        "{done}"
    );
    assert_eq!(
        second.secrets()[1..].to_vec(),
        redis_after,
        "Redis untouched"
    );
    first.assert_settled(&first.new, &first.old, "first replica");
    second.assert_settled(&second.new, &second.old, "second replica");
}

#[test]
fn refusals_change_nothing_and_say_why() {
    let template = embedded_template();
    let case = Case::copy_of(&template, false, None);
    let before = case.files();
    let new = case.new.display().to_string();

    // A new KEK others may read.
    fs::set_permissions(&case.new, fs::Permissions::from_mode(0o644)).unwrap();
    let run = case.rotate(None);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("chmod 600") && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("baton:"))
            .count(),
        1
    );
    fs::set_permissions(&case.new, fs::Permissions::from_mode(0o600)).unwrap();

    // Not a KEK at all.
    let short = case.sb.path().join("short.kek");
    fs::write(&short, [7u8; 16]).unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    let run = case
        .sb
        .baton(&["kek", "rotate", "--new-kek-file", short.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("32 bytes"), "{}", run.stderr);

    // The KEK in use, given as the new one.
    let run = case.sb.baton(&[
        "kek",
        "rotate",
        "--new-kek-file",
        case.old.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("already in use"), "{}", run.stderr);
    assert_eq!(case.files(), before);

    // A running issuer.
    let server = Server::start(&case.sb, &[]);
    let run = case.rotate(None);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("an issuer is running"),
        "{}",
        run.stderr
    );
    drop(server);

    // A sealed key that does not open: refused before anything is written.
    let keyring = case.sb.data_dir().join("keyring");
    let victim = fs::read_dir(&keyring)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".key.sealed"))
        .unwrap();
    let mut env: Value = serde_json::from_str(&fs::read_to_string(&victim).unwrap()).unwrap();
    let ct = env["ciphertext"].as_str().unwrap().to_owned();
    let flipped = if ct.starts_with('A') { "B" } else { "A" };
    env["ciphertext"] = format!("{flipped}{}", &ct[1..]).into();
    fs::write(&victim, serde_json::to_string(&env).unwrap()).unwrap();
    let before = case.files();
    let run = case.sb.baton(&["kek", "rotate", "--new-kek-file", &new]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("corrupt") && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
    assert_eq!(case.files(), before);
    assert!(!case.sb.data_dir().join("kek-rotation").exists());

    let help = case.sb.baton(&["kek", "rotate", "--help"]);
    assert!(help.ok().contains("--new-kek-file"));
}

fn mint(sb: &Sandbox, server: &Server) -> String {
    let run = sb.baton(&[
        "token",
        "mint",
        "--issuer",
        &server.issuer,
        "--bundle",
        "baton-data/bundle.pem",
        "--cert",
        "orders/svid.pem",
        "--key",
        "orders/svid.key",
        "--audience",
        PAYMENTS,
    ]);
    run.ok().trim().to_owned()
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

async fn jwks(sb: &Sandbox, server: &Server) -> Value {
    https_client(&sb.bundle(), None)
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_restarted_with_the_new_kek_signs_with_the_same_keys_and_the_old_kek_is_refused()
{
    let sb = Sandbox::new();
    let old = write_kek(&sb.path().join("old.kek"));
    let new = write_kek(&sb.path().join("new.kek"));
    let with_old = [("BATON_KEK_FILE", old.as_path())];
    sb.baton_with_env(&["init", "--trust-domain", "example.org"], &with_old)
        .ok();
    sb.baton_with_env(
        &[
            "enroll",
            "--id",
            ORDERS,
            "--out",
            "orders",
            "--key-type",
            "ec-p256",
        ],
        &with_old,
    )
    .ok();
    fs::write(sb.path().join("policy.toml"), POLICY).unwrap();
    let serve = |kek: &Path| {
        let kek = kek.display().to_string();
        Server::start_with_env(
            &sb,
            &["--policy", "policy.toml"],
            &[("BATON_KEK_FILE", &kek)],
        )
    };

    let server = serve(&old);
    let published = jwks(&sb, &server).await;
    let signer = kid_of(&mint(&sb, &server));
    drop(server);

    let run = sb.baton_with_env(
        &["kek", "rotate", "--new-kek-file", new.to_str().unwrap()],
        &with_old,
    );
    let text = run.ok();
    assert!(
        text.contains(&kek_id(&new)) && text.contains(&kek_id(&old)),
        "{text}"
    );
    assert!(text.contains("BATON_KEK_FILE="), "{text}");
    // The audit event names the two KEK ids and nothing secret.
    let audit = run
        .stderr
        .lines()
        .find(|l| l.contains("kek.rotated"))
        .unwrap_or_else(|| panic!("no audit event: {}", run.stderr));
    assert!(
        audit.contains(&kek_id(&old)) && audit.contains(&kek_id(&new)),
        "{audit}"
    );
    assert!(
        !audit.contains(STANDARD.encode(kek_bytes(&new)).as_str()),
        "{audit}"
    );

    let server = serve(&new);
    assert_eq!(
        jwks(&sb, &server).await,
        published,
        "the same keys are published"
    );
    let token = mint(&sb, &server);
    assert_eq!(kid_of(&token), signer, "the same key signs");
    let verified = sb.baton(&[
        "token",
        "verify",
        "--issuer",
        &server.issuer,
        "--bundle",
        "baton-data/bundle.pem",
        "--audience",
        PAYMENTS,
        &token,
    ]);
    let verified: Value = serde_json::from_str(verified.ok()).unwrap();
    assert_eq!(verified["caller"], ORDERS);
    drop(server);

    let refused = sb.baton_with_env(&["serve", "--listen", "127.0.0.1:0"], &with_old);
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains(&format!(
            "was sealed under key-encryption key {}, but the key given is {}",
            kek_id(&new),
            kek_id(&old)
        )),
        "{}",
        refused.stderr
    );
}
