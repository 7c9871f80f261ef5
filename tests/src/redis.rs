//! A real `redis-server` (the Debian package; `.ci/run` installs it) on a free loopback
//! port, started and killed by the test that needs it: no persistence, so a restart is
//! a store that lost its data unless the test asks for an append-only file.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
    /// `(certificate, key, CA)` PEM files: TLS only, on `port`.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl RedisServer {
    /// Starts a server with no persistence on a free port and waits (at most 10 s)
    /// until it answers `PING`.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server that logs every write to an append-only file (`appendfsync
    /// always`), so it keeps its data across [`restart`](Self::restart).
    pub fn start_durable() -> RedisServer {
        Self::start_with(true)
    }

    /// Starts a server with no persistence on `port` (e.g. one a killed server used).
    pub fn start_on(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            appendonly: false,
            tls: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that speaks TLS only, with the certificate chain and key in
    /// these PEM files, issued by `ca` (no client certificates asked for).
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> RedisServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            appendonly: false,
            tls: Some((cert.to_owned(), key.to_owned(), ca.to_owned())),
        };
        server.spawn();
        server
    }

    fn start_with(appendonly: bool) -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            appendonly,
            tls: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://localhost:<port>` for TLS.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://localhost:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no shutdown save) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli <args>` against the server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.tls.is_some() {
            // The harness's own check of a server it started: no verification needed.
            cmd.args(["--tls", "--insecure"]);
        }
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        match &self.tls {
            Some((cert, key, ca)) => {
                cmd.args(["--bind", "127.0.0.1", "--port", "0"])
                    .args(["--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()]);
            }
        }
        cmd.args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]) == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` from PATH, or Debian's location.
fn binary() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/redis-server");
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("redis-server")
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
