//! A real `redis-server` (the Debian package; `.ci/run` installs it) on a free loopback
//! port, started and killed by the test that needs it: no persistence, so a restart is
//! a store that lost its data unless the test asks for an append-only file.
//!
//! [`RedisSentinel`] is a whole Sentinel topology of such servers (a primary, a replica
//! and one sentinel watching them), for tests that kill the primary and want a failover.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `appendfsync` of an append-only file, or `None` for no persistence.
    appendonly: Option<&'static str>,
    /// `(certificate, key, CA)` PEM files: TLS only, on `port`.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// The primary's port, for a replica (`--replicaof 127.0.0.1 <port>`).
    replica_of: Option<u16>,
}

impl RedisServer {
    /// Starts a server with no persistence on a free port and waits (at most 10 s)
    /// until it answers `PING`.
    pub fn start() -> RedisServer {
        Self::launch(free_port(), None, None, None)
    }

    /// Starts a server that logs every write to an append-only file (`appendfsync
    /// always`), so it keeps its data across [`restart`](Self::restart).
    pub fn start_durable() -> RedisServer {
        Self::launch(free_port(), Some("always"), None, None)
    }

    /// Starts a server with an append-only file synced once a second (`appendfsync
    /// everysec`, Redis's default): it keeps most of its data across a restart, but
    /// may lose the last second of acknowledged writes to a crash.
    pub fn start_everysec() -> RedisServer {
        Self::launch(free_port(), Some("everysec"), None, None)
    }

    /// Starts a server with no persistence on `port` (e.g. one a killed server used).
    pub fn start_on(port: u16) -> RedisServer {
        Self::launch(port, None, None, None)
    }

    /// Starts a server that speaks TLS only, with the certificate chain and key in
    /// these PEM files, issued by `ca` (no client certificates asked for).
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> RedisServer {
        let tls = (cert.to_owned(), key.to_owned(), ca.to_owned());
        Self::launch(free_port(), None, Some(tls), None)
    }

    /// Starts a replica of the server on `primary` (loopback), with no persistence, on
    /// a free port; waits until it answers `PING`, not until it has synced.
    fn start_replica_of(primary: u16) -> RedisServer {
        Self::launch(free_port(), None, None, Some(primary))
    }

    fn launch(
        port: u16,
        appendonly: Option<&'static str>,
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
        replica_of: Option<u16>,
    ) -> RedisServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            appendonly,
            tls,
            replica_of,
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
        if let Some(fsync) = self.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", fsync]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        // A replica that asks for a full sync gets it at once, not after 5 s.
        cmd.args(["--repl-diskless-sync-delay", "0"]);
        if let Some(primary) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
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

/// The name the sentinel of a [`RedisSentinel`] monitors its primary under.
const SERVICE: &str = "baton";

/// A Redis Sentinel topology on free loopback ports: a primary and one replica (both
/// [`RedisServer`]s with no persistence) and one sentinel (`redis-server --sentinel`)
/// monitoring them as `baton` with quorum 1, so that killing the primary promotes the
/// replica within a few seconds. Every child is killed on drop.
pub struct RedisSentinel {
    /// The data nodes, primary first as started; failover changes which one is primary.
    nodes: Vec<RedisServer>,
    sentinel: Option<Child>,
    sentinel_port: u16,
    /// Holds `sentinel.conf` (which the sentinel rewrites) and `sentinel.log`.
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts the primary, a replica of it and a sentinel monitoring the primary
    /// (`down-after-milliseconds 1000`, `failover-timeout 5000`, `parallel-syncs 1`),
    /// and waits (at most 15 s) until the replica's link to the primary is up and the
    /// sentinel knows the replica: from then on, killing the primary means a failover.
    pub fn start() -> RedisSentinel {
        let deadline = Instant::now() + Duration::from_secs(15);
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(primary.port());
        // Synced before the sentinel starts, so its first `INFO` of the primary already
        // lists the replica (the next one would be 10 s later).
        while info_field(&replica.cli(&["INFO", "replication"]), "master_link_status") != Some("up")
        {
            if Instant::now() >= deadline {
                panic!(
                    "replica on port {} did not sync with the primary on port {}:\n{}",
                    replica.port(),
                    primary.port(),
                    replica.cli(&["INFO", "replication"])
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut topology = RedisSentinel {
            nodes: vec![primary, replica],
            sentinel: None,
            sentinel_port: free_port(),
            dir,
        };
        topology.spawn_sentinel();
        loop {
            let replicas = cli(topology.sentinel_port, &["SENTINEL", "replicas", SERVICE]);
            if sentinel_replica_ready(&replicas) {
                return topology;
            }
            if Instant::now() >= deadline {
                panic!(
                    "sentinel on port {} did not see a healthy replica of {SERVICE}: \
                     `SENTINEL replicas {SERVICE}` said {replicas:?}\n{}",
                    topology.sentinel_port,
                    topology.sentinel_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+sentinel://127.0.0.1:<sentinel port>/baton`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{SERVICE}",
            self.sentinel_port
        )
    }

    /// The sentinel's port.
    pub fn sentinel_port(&self) -> u16 {
        self.sentinel_port
    }

    /// The port of the primary as the sentinel names it now
    /// (`SENTINEL get-master-addr-by-name baton`).
    pub fn primary_port(&self) -> u16 {
        self.sentinel_primary().unwrap_or_else(|| {
            panic!(
                "sentinel on port {} names no primary for {SERVICE}\n{}",
                self.sentinel_port,
                self.sentinel_log()
            )
        })
    }

    /// Kills the current primary (as the sentinel names it) with SIGKILL and waits for
    /// it to exit.
    pub fn kill_primary(&mut self) {
        let port = self.primary_port();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("the sentinel's primary (port {port}) is not ours"));
        node.kill();
    }

    /// Waits until the sentinel names a primary other than `old_primary_port` and that
    /// server answers `ROLE` as `master`; returns its port. Panics after `within`.
    pub fn wait_for_failover(&self, old_primary_port: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        let mut named = None;
        while Instant::now() < deadline {
            named = self.sentinel_primary();
            if let Some(port) = named.filter(|&p| p != old_primary_port)
                && cli(port, &["ROLE"]).lines().next() == Some("master")
            {
                return port;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no failover away from port {old_primary_port} within {within:?}: the sentinel \
             names {named:?}\n{}",
            self.sentinel_log()
        );
    }

    /// Runs `redis-cli <args>` against the current primary and returns its output.
    ///
    /// Every call is a new connection, so `WAIT` here waits for nothing (it counts
    /// replicas that have this connection's writes, and it made none): use
    /// [`wait_for_replication`](Self::wait_for_replication) instead.
    pub fn cli_primary(&self, args: &[&str]) -> String {
        cli(self.primary_port(), args)
    }

    /// Waits until every running replica has applied every write the primary had
    /// taken when this was called (its `slave_repl_offset` reaches the primary's
    /// `master_repl_offset`), so that a failover from now on loses none of them.
    /// Panics after `within`, or if no replica is running.
    pub fn wait_for_replication(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let primary = self.primary_port();
        let target: u64 = info_field(
            &cli(primary, &["INFO", "replication"]),
            "master_repl_offset",
        )
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("primary on port {primary} reports no master_repl_offset"));
        let replicas: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some() && n.port() != primary)
            .map(RedisServer::port)
            .collect();
        assert!(
            !replicas.is_empty(),
            "no replica of port {primary} is running"
        );
        for port in replicas {
            loop {
                let info = cli(port, &["INFO", "replication"]);
                let applied =
                    info_field(&info, "slave_repl_offset").and_then(|v| v.parse::<u64>().ok());
                if info_field(&info, "master_link_status") == Some("up")
                    && applied.is_some_and(|a| a >= target)
                {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "replica on port {port} did not reach offset {target} of the primary \
                         on port {primary} within {within:?}:\n{info}"
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The sentinel's answer to `get-master-addr-by-name`, if it gave one.
    fn sentinel_primary(&self) -> Option<u16> {
        let out = cli(
            self.sentinel_port,
            &["SENTINEL", "get-master-addr-by-name", SERVICE],
        );
        let mut lines = out.lines();
        let _host = lines.next()?;
        lines.next()?.trim().parse().ok()
    }

    /// What the sentinel logged so far, for panic messages.
    fn sentinel_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default();
        let mut out = String::from("sentinel log:\n");
        for line in log.lines() {
            let _ = writeln!(out, "  {line}");
        }
        out
    }

    fn spawn_sentinel(&mut self) {
        let dir = self.dir.path();
        let conf = dir.join("sentinel.conf");
        let primary = self.nodes[0].port();
        let text = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             daemonize no\n\
             logfile \"\"\n\
             dir {dir}\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 5000\n\
             sentinel parallel-syncs {SERVICE} 1\n",
            port = self.sentinel_port,
            dir = dir.display(),
        );
        std::fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        let log = std::fs::File::create(dir.join("sentinel.log"))
            .unwrap_or_else(|e| panic!("cannot create sentinel.log: {e}"));
        let child = Command::new(binary())
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel: {e}"));
        self.sentinel = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cli(self.sentinel_port, &["PING"]) == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "sentinel on port {} did not answer PING\n{}",
            self.sentinel_port,
            self.sentinel_log()
        );
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        // The sentinel first, so it does not react to the data nodes going away.
        if let Some(mut child) = self.sentinel.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// Whether a `SENTINEL replicas` answer (redis-cli's flat, one-field-a-line form)
/// lists a replica the sentinel could promote: flags just `slave`, link to primary ok.
fn sentinel_replica_ready(answer: &str) -> bool {
    let lines: Vec<&str> = answer.lines().map(str::trim).collect();
    let value = |field: &str| lines.windows(2).find(|w| w[0] == field).map(|w| w[1]);
    value("flags") == Some("slave") && value("master-link-status") == Some("ok")
}

/// The value of `field` in an `INFO` answer (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// Runs `redis-cli <args>` against a plain server on loopback `port`.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
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
