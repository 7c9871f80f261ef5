//! The test harness's Sentinel topology is real: a write to the primary reaches the
//! replica, and killing the primary makes the sentinel promote the replica, which
//! keeps the data and takes writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use baton_tests::RedisSentinel;

#[test]
fn killing_the_primary_promotes_the_replica_with_the_data() {
    let started = Instant::now();
    let mut topology = RedisSentinel::start();
    eprintln!("topology up in {:?}", started.elapsed());
    assert!(topology.url().starts_with("redis+sentinel://127.0.0.1:"));
    assert!(topology.url().ends_with("/baton"));

    assert_eq!(topology.cli_primary(&["SET", "k", "v"]), "OK");
    // Not `WAIT`: each `cli_primary` is a new connection, with no writes to wait for.
    topology.wait_for_replication(Duration::from_secs(5));

    let old = topology.primary_port();
    let killed = Instant::now();
    topology.kill_primary();
    let new = topology.wait_for_failover(old, Duration::from_secs(20));
    eprintln!("failover in {:?}", killed.elapsed());

    assert_ne!(new, old);
    assert_eq!(topology.primary_port(), new);
    assert_eq!(topology.cli_primary(&["GET", "k"]), "v");
    assert_eq!(
        topology.cli_primary(&["ROLE"]).lines().next(),
        Some("master")
    );
    assert_eq!(topology.cli_primary(&["SET", "k2", "v2"]), "OK");
}
