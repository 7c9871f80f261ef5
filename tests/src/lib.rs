//! Shared helpers for Baton's workspace-level tests: the real `baton` binary run
//! against a throw-away data directory, and `openssl` as an independent second opinion.
#![forbid(unsafe_code)]
// Test support: failing loudly with a message is the point.
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod chromium;
mod redis;
pub use redis::{RedisSentinel, RedisServer};

/// Path of the `baton` binary built alongside this test (same target directory and
/// profile). `cargo test --workspace` builds it before any test runs.
pub fn baton_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test binary> -> target/<profile>/baton
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("baton"))
        .unwrap_or_default();
    assert!(
        bin.is_file(),
        "{} not found: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// `baton`, with none of this process's `BATON_*` variables: only what a test sets
/// afterwards (`env` calls made later win) can change what it checks.
pub fn baton_command() -> Command {
    without_baton_env(Command::new(baton_bin()))
}

/// `cmd` with this process's `BATON_*` variables removed (for a script that runs
/// `baton` itself); call before setting the test's own.
pub fn without_baton_env(mut cmd: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BATON_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A scratch directory with a data directory path inside it, and the means to run
/// `baton` against it with a clean environment.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// What a finished command printed.
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "command failed: {}", self.stderr);
        &self.stdout
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    /// A fresh, empty sandbox.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        }
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory `baton` is pointed at.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("baton-data")
    }

    /// A sandbox with trust domain `example.org` initialized, each `(id, dir, key_type)`
    /// enrolled into `dir` (key type `ec-p256` or `ed25519`), and `policy` written to
    /// `policy.toml`: the common start of every end-to-end test.
    pub fn with_workloads(workloads: &[(&str, &str, &str)], policy: &str) -> Self {
        let sb = Self::new();
        sb.baton(&["init", "--trust-domain", "example.org"]).ok();
        for (id, dir, key_type) in workloads {
            sb.baton(&["enroll", "--id", id, "--out", dir, "--key-type", key_type])
                .ok();
        }
        std::fs::write(sb.path().join("policy.toml"), policy)
            .unwrap_or_else(|e| panic!("cannot write policy.toml: {e}"));
        sb
    }

    /// A file of the sandbox, as text.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel))
            .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    /// The trust bundle of the sandbox's data directory.
    pub fn bundle(&self) -> String {
        self.read("baton-data/bundle.pem")
    }

    /// `baton keys <args> --json` against the running issuer, parsed.
    pub fn keys_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["keys"];
        all.extend_from_slice(args);
        all.push("--json");
        serde_json::from_str(self.baton(&all).ok())
            .unwrap_or_else(|e| panic!("`baton keys` printed no JSON: {e}"))
    }

    /// `baton --data-dir <sandbox> <args>` with no inherited `BATON_*` settings.
    pub fn baton(&self, args: &[&str]) -> Run {
        self.baton_with_env(args, &[])
    }

    /// Like [`Sandbox::baton`], with extra environment variables.
    pub fn baton_with_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Run {
        let mut cmd = baton_command();
        cmd.arg("--data-dir").arg(self.data_dir()).args(args);
        cmd.current_dir(self.path());
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run baton: {e}"))
            .into()
    }

    /// `openssl <args>` in the sandbox.
    pub fn openssl(&self, args: &[&str]) -> Run {
        Command::new("openssl")
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"))
            .into()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// A `baton serve` child process on a loopback port, killed on drop.
pub struct Server {
    child: std::process::Child,
    /// The HTTPS listener's address.
    pub addr: std::net::SocketAddr,
    /// The plain-HTTP listener's address, when `--http-listen` was given.
    pub http_addr: Option<std::net::SocketAddr>,
    /// The issuer identifier (`iss`) it announced.
    pub issuer: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `baton serve --listen 127.0.0.1:0 --log-format json <extra>` against the
    /// sandbox's data directory and waits (at most 30 s) for its "listening" line.
    pub fn start(sb: &Sandbox, extra: &[&str]) -> Server {
        Self::start_with_env(sb, extra, &[])
    }

    /// Like [`Server::start`], with extra environment variables (e.g. `BATON_RATE_LIMIT`).
    pub fn start_with_env(sb: &Sandbox, extra: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead as _;
        let mut cmd = baton_command();
        cmd.arg("--data-dir")
            .arg(sb.data_dir())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .current_dir(sb.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start baton serve: {e}"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let listening = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| {
                        let https = v.get("https_addr")?.as_str()?.to_owned();
                        let http = v
                            .get("http_addr")
                            .and_then(|a| a.as_str())
                            .map(str::to_owned);
                        let issuer = v.get("issuer")?.as_str()?.to_owned();
                        Some((https, http, issuer))
                    });
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
                if let Some(addrs) = listening {
                    let _ = tx.send(addrs);
                }
            }
        });
        let (addr, http_addr, issuer) = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok((addr, http, issuer)) => (
                addr.parse()
                    .unwrap_or_else(|e| panic!("bad address {addr}: {e}")),
                http.and_then(|h| h.parse().ok()),
                issuer,
            ),
            Err(_) => {
                let _ = child.kill();
                let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("baton serve did not start listening:\n{log}");
            }
        };
        Server {
            child,
            addr,
            http_addr,
            issuer,
            log,
        }
    }

    /// `https://127.0.0.1:<port>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits up to 10 s for a log line containing `needle`; says whether one came.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.log().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal (`TERM`, `HUP`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load generator `bin` (`env!("CARGO_BIN_EXE_baton-load")`) with `args` and
/// returns its one-line JSON report, panicking with its stderr if it failed.
pub fn load_report(bin: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "baton-load {args:?} failed: {stderr}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

/// DER blocks of a PEM file, in order; panics on bad base64 (test fixtures).
pub fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    try_pem_blocks(pem).unwrap_or_else(|e| panic!("bad PEM: {e}"))
}

/// DER blocks of a PEM document, in order, or the base64 error of the first bad one.
pub fn try_pem_blocks(pem: &str) -> Result<Vec<Vec<u8>>, base64::DecodeError> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            inside = true;
            body.clear();
        } else if line.starts_with("-----END") {
            inside = false;
            out.push(base64::engine::general_purpose::STANDARD.decode(&body)?);
        } else if inside {
            body.push_str(line.trim());
        }
    }
    Ok(out)
}

/// An HTTPS client that trusts `bundle_pem` and, when given, presents `identity`
/// (certificate chain PEM, PKCS#8 key PEM) for mTLS.
pub fn https_client(bundle_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_blocks(bundle_pem) {
        roots
            .add(CertificateDer::from(der))
            .unwrap_or_else(|e| panic!("bundle: {e}"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| panic!("tls: {e}"))
    .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => {
            let chain = pem_blocks(chain)
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                pem_blocks(key)
                    .pop()
                    .unwrap_or_else(|| panic!("no key in PEM")),
            ));
            builder
                .with_client_auth_cert(chain, key)
                .unwrap_or_else(|e| panic!("client cert: {e}"))
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// Signs a compact JWS over `header` and `claims` with a PKCS#8 P-256 (ES256) or
/// Ed25519 (EdDSA) key, as a workload's client library would.
pub fn sign_jws(header: &serde_json::Value, claims: &serde_json::Value, key_pem: &str) -> String {
    use base64::Engine as _;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let der = pem_blocks(key_pem)
        .pop()
        .unwrap_or_else(|| panic!("no key in PEM"));
    let rng = ring::rand::SystemRandom::new();
    let sig = match header["alg"].as_str() {
        Some("EdDSA") => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .unwrap_or_else(|e| panic!("ed25519 key: {e}"))
            .sign(input.as_bytes())
            .as_ref()
            .to_vec(),
        _ => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .unwrap_or_else(|e| panic!("p256 key: {e}"))
            .sign(&rng, input.as_bytes())
            .unwrap_or_else(|e| panic!("sign: {e}"))
            .as_ref()
            .to_vec(),
    };
    format!("{input}.{}", b64.encode(sig))
}

/// The kids of a `baton keys list --json` answer whose state is `state`.
pub fn kids_in_state(list: &serde_json::Value, state: &str) -> Vec<String> {
    list["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| k["state"] == state)
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
