//! The test harness's `redis-server` is real: it answers, keeps data while it runs,
//! loses it on a restart without persistence, and keeps it with an append-only file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use baton_tests::RedisServer;

#[test]
fn restart_loses_data_unless_the_server_is_durable() {
    let mut plain = RedisServer::start();
    assert_eq!(plain.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(plain.cli(&["GET", "k"]), "v");
    plain.kill();
    assert_ne!(plain.cli(&["PING"]), "PONG", "killed means unreachable");
    plain.restart();
    assert_eq!(plain.cli(&["GET", "k"]), "");

    let mut durable = RedisServer::start_durable();
    assert_eq!(durable.cli(&["SET", "k", "v"]), "OK");
    durable.restart();
    assert_eq!(durable.cli(&["GET", "k"]), "v");
    assert!(durable.url().starts_with("redis://127.0.0.1:"));
}
