//! The local dev stack (`infra/dev/up.sh`, `infra/dev/down.sh`) on free loopback ports:
//! redis-server, two issuer replicas sharing it, the `payments` and `orders` examples.
//! A token minted by one replica is accepted with keys fetched from the other (one
//! keyring, one issuer URL), the stack refuses to start twice or on a taken port, and
//! `down.sh` leaves no recorded process running and no port listening.

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{Run, baton_bin, https_client};
use serde_json::Value;

const ORDERS: &str = "spiffe://example.org/fn/orders";
const PAYMENTS: &str = "spiffe://example.org/fn/payments";
/// Every process `up.sh` records, by pid file name.
const PROCESSES: [&str; 4] = ["payments", "issuer-1", "issuer-2", "redis"];
/// The most any one script run may take (up.sh waits at most ~2 min on its own).
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);
/// The most a `baton token` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A dev stack in a temporary directory, on four free ports; `down.sh` runs on drop, so
/// a failed assertion leaves nothing running.
struct Stack {
    tmp: tempfile::TempDir,
    redis: u16,
    issuer1: u16,
    issuer2: u16,
    payments: u16,
}

impl Stack {
    fn new() -> Stack {
        // Held together so that the four differ.
        let listeners: Vec<TcpListener> = (0..4)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        Stack {
            tmp: tempfile::tempdir().unwrap(),
            redis: ports[0],
            issuer1: ports[1],
            issuer2: ports[2],
            payments: ports[3],
        }
    }

    /// `BATON_DEV_DIR`: created by `up.sh` itself.
    fn dir(&self) -> PathBuf {
        self.tmp.path().join("baton-dev")
    }

    fn path(&self, rel: &str) -> String {
        self.dir().join(rel).to_string_lossy().into_owned()
    }

    /// `bash infra/dev/<script> <args>` with this stack's settings and the binaries this
    /// test was built with, bounded by [`SCRIPT_LIMIT`].
    fn script(&self, script: &str, args: &[&str]) -> Run {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = Command::new("bash");
        cmd.arg(repo.join("infra/dev").join(script)).args(args);
        cmd.env("BATON_DEV_DIR", self.dir())
            .env("BATON_DEV_REDIS_PORT", self.redis.to_string())
            .env("BATON_DEV_PORT_1", self.issuer1.to_string())
            .env("BATON_DEV_PORT_2", self.issuer2.to_string())
            .env("BATON_DEV_PAYMENTS_PORT", self.payments.to_string())
            .env("BATON_DEV_NO_BUILD", "1")
            .env("BATON_BIN", baton_bin())
            .env("BATON_DEV_EXAMPLES", examples_dir());
        self.run(cmd, script, SCRIPT_LIMIT)
    }

    /// `baton <args>`, bounded by [`COMMAND_LIMIT`].
    fn baton(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(baton_bin());
        cmd.args(args);
        self.run(cmd, "baton", COMMAND_LIMIT)
    }

    /// Runs `cmd` in the temp dir with no inherited `BATON_*` settings (the ones it set
    /// itself excepted), its output captured in files named after `tag`; killed, and
    /// reported as `code: None`, when it outlives `limit`.
    fn run(&self, mut cmd: Command, tag: &str, limit: Duration) -> Run {
        let (out, err) = (
            self.tmp.path().join(format!("{tag}.out")),
            self.tmp.path().join(format!("{tag}.err")),
        );
        let own: Vec<_> = cmd.get_envs().map(|(name, _)| name.to_owned()).collect();
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BATON_") && !own.contains(&name) {
                cmd.env_remove(name);
            }
        }
        cmd.current_dir(self.tmp.path())
            .stdin(Stdio::null())
            // Files, not pipes: the stack's processes outlive the script that starts them.
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + limit;
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            code,
            stdout: fs::read_to_string(out).unwrap_or_default(),
            stderr: fs::read_to_string(err).unwrap_or_default(),
        }
    }

    /// The pid each pid file records, for those present.
    fn recorded_pids(&self) -> Vec<(&'static str, u32)> {
        PROCESSES
            .iter()
            .filter_map(|name| {
                let text = fs::read_to_string(self.dir().join(format!("pids/{name}.pid"))).ok()?;
                Some((*name, text.trim().parse().unwrap()))
            })
            .collect()
    }

    fn ports(&self) -> [u16; 4] {
        [self.redis, self.issuer1, self.issuer2, self.payments]
    }

    /// Every log of the stack, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in fs::read_dir(self.dir().join("logs")).into_iter().flatten() {
            let path = entry.unwrap().path();
            let text = fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let _ = writeln!(all, "--- {}", path.display());
            for line in tail.into_iter().rev() {
                let _ = writeln!(all, "{line}");
            }
        }
        all
    }
}

impl Drop for Stack {
    /// `down.sh`, which must not panic here: this also runs while a failed assertion
    /// unwinds.
    fn drop(&mut self) {
        if !self.dir().exists() {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/dev/down.sh");
        let Ok(mut child) = Command::new("bash")
            .arg(script)
            .env("BATON_DEV_DIR", self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        let deadline = Instant::now() + SCRIPT_LIMIT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Where `cargo build -p baton-sdk --examples` put the examples, beside `baton`.
fn examples_dir() -> PathBuf {
    let dir = baton_bin().with_file_name("examples");
    for name in ["payments", "orders"] {
        assert!(
            dir.join(name).is_file(),
            "{} not built: run `cargo build -p baton-sdk --examples --all-features` (infra/dev/test.sh does)",
            dir.join(name).display()
        );
    }
    dir
}

/// Whether `pid` is a live process (a zombie left for its new parent to reap is not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // pid (comm) state …: comm may hold spaces and parentheses, so split at the last ')'.
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !(state.starts_with('Z') || state.starts_with('X'))
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// `(status, body)` of `GET https://127.0.0.1:<port><path>`, bounded.
async fn get(client: &reqwest::Client, port: u16, path: &str) -> (u16, String) {
    let response = client
        .get(format!("https://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn dev_stack_replicas_share_one_keyring_and_down_stops_everything() {
    let stack = Stack::new();

    let up = stack.script("up.sh", &[]);
    assert_eq!(
        up.code,
        Some(0),
        "up.sh failed:\n{}{}\n{}",
        up.stdout,
        up.stderr,
        stack.logs()
    );

    // orders got its tokens from replica 2; payments verified them with keys fetched from
    // replica 1, and refused a token presented a second time.
    let orders = fs::read_to_string(stack.path("logs/orders.log")).unwrap();
    assert_eq!(orders.matches("charge: 200 OK").count(), 2, "{orders}");
    assert!(orders.contains(&format!("orders is {ORDERS}")), "{orders}");
    assert!(orders.contains("same token, first use: 200 OK"), "{orders}");
    assert!(
        orders.contains("same token, second use: 401 Unauthorized"),
        "{orders}"
    );
    assert!(
        orders.contains("error_description=\"replayed\""),
        "{orders}"
    );

    // Both replicas ready, serving the same keys.
    let bundle = fs::read_to_string(stack.path("seed/bundle.pem")).unwrap();
    let client = https_client(&bundle, None);
    let mut jwks = Vec::new();
    for port in [stack.issuer1, stack.issuer2] {
        assert_eq!(get(&client, port, "/readyz").await.0, 200, "port {port}");
        let (status, body) = get(&client, port, "/.well-known/jwks.json").await;
        assert_eq!(status, 200, "port {port}: {body}");
        jwks.push(serde_json::from_str::<Value>(&body).unwrap());
    }
    assert!(
        jwks[0]["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{}",
        jwks[0]
    );
    assert_eq!(jwks[0], jwks[1], "the replicas serve different keys");

    // From the shell: minted through replica 2, verified with replica 1's keys and `iss`.
    let (cert, key) = (
        stack.path("fn/orders/svid.pem"),
        stack.path("fn/orders/svid.key"),
    );
    let bundle_path = stack.path("seed/bundle.pem");
    let (issuer1, issuer2) = (
        format!("https://localhost:{}", stack.issuer1),
        format!("https://localhost:{}", stack.issuer2),
    );
    let minted = stack.baton(&[
        "token",
        "mint",
        "--issuer",
        &issuer2,
        "--bundle",
        &bundle_path,
        "--cert",
        &cert,
        "--key",
        &key,
        "--audience",
        PAYMENTS,
    ]);
    let token = minted.ok().trim().to_owned();
    let verified = stack.baton(&[
        "token",
        "verify",
        "--issuer",
        &issuer1,
        "--bundle",
        &bundle_path,
        "--audience",
        PAYMENTS,
        &token,
    ]);
    let caller: Value = serde_json::from_str(verified.ok()).unwrap();
    assert_eq!(caller["caller"], ORDERS, "{caller}");
    assert_eq!(caller["audience"], PAYMENTS, "{caller}");

    // Up while up: refused, naming a pid file, and the running stack is left alone.
    let pids = stack.recorded_pids();
    assert_eq!(pids.len(), PROCESSES.len(), "pid files: {pids:?}");
    let again = stack.script("up.sh", &[]);
    assert_ne!(
        again.code,
        Some(0),
        "up.sh started twice:\n{}",
        again.stdout
    );
    assert!(
        again.stderr.contains("already up") && again.stderr.contains(".pid"),
        "{}",
        again.stderr
    );
    assert_eq!(stack.recorded_pids(), pids);
    for (name, pid) in &pids {
        assert!(
            alive(*pid),
            "{name} (pid {pid}) died after the refused up.sh"
        );
    }
    for port in [stack.issuer1, stack.issuer2] {
        assert_eq!(get(&client, port, "/readyz").await.0, 200, "port {port}");
    }

    // Down: every recorded process gone, no port listening, no pid file left.
    let down = stack.script("down.sh", &[]);
    assert_eq!(
        down.code,
        Some(0),
        "down.sh failed:\n{}{}",
        down.stdout,
        down.stderr
    );
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} (pid {pid}) still runs after down.sh");
    }
    for port in stack.ports() {
        assert!(!accepts(port), "port {port} still accepts connections");
    }
    assert!(
        stack.recorded_pids().is_empty(),
        "pid files left after down.sh"
    );
    let down = stack.script("down.sh", &[]);
    assert_eq!(
        down.code,
        Some(0),
        "down.sh with nothing running:\n{}{}",
        down.stdout,
        down.stderr
    );

    // A taken port: refused, naming it, and nothing started.
    let taken = TcpListener::bind(("127.0.0.1", stack.payments)).unwrap();
    let refused = stack.script("up.sh", &[]);
    drop(taken);
    assert_ne!(
        refused.code,
        Some(0),
        "up.sh on a taken port:\n{}",
        refused.stdout
    );
    assert!(
        refused
            .stderr
            .contains(&format!("127.0.0.1:{}", stack.payments)),
        "{}",
        refused.stderr
    );
    assert!(
        stack.recorded_pids().is_empty(),
        "up.sh on a taken port left pid files"
    );
    for port in stack.ports() {
        assert!(!accepts(port), "port {port} listens after a refused up.sh");
    }
}
