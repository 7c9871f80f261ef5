//! `baton keys list | rotate | revoke` against the real issuer over its admin socket
//! (SPEC §9 `keys` row, §5 JWKS row), and scheduled rotation (`rotation_period`).

// Helpers outside #[test] fns are test code too: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_tests::{Sandbox, Server, https_client, kids_in_state};
use serde_json::Value;

async fn published(server: &Server, bundle: &str) -> Vec<String> {
    let jwks: Value = https_client(bundle, None)
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn keys_commands_without_a_running_issuer_fail_with_a_clear_reason() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    for args in [
        &["keys", "list"][..],
        &["keys", "rotate"],
        &["keys", "revoke", "x"],
    ] {
        let run = sb.baton(args);
        assert_eq!(run.code, Some(1), "{args:?}");
        assert!(
            run.stderr.contains("no issuer is running"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn rotate_promotes_next_and_the_jwks_follows_at_once() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    let server = Server::start(&sb, &[]);
    let bundle = sb.bundle();

    let list = sb.keys_json(&["list"]);
    let (active, next) = (kids_in_state(&list, "active"), kids_in_state(&list, "next"));
    assert_eq!((active.len(), next.len()), (1, 1), "{list}");
    for key in list["keys"].as_array().unwrap() {
        assert_eq!(key["alg"], "ES256");
        assert!(key["created_at"].is_i64());
    }
    let table = sb.baton(&["keys", "list"]).ok().to_owned();
    assert!(
        table.contains("KID") && table.contains(&active[0]),
        "{table}"
    );

    let rotated = sb.keys_json(&["rotate"]);
    assert_eq!(kids_in_state(&rotated, "active"), next, "{rotated}");
    assert_eq!(kids_in_state(&rotated, "retired"), active, "{rotated}");
    let new_next = kids_in_state(&rotated, "next");
    assert_eq!(new_next.len(), 1);
    let retired = &rotated["keys"].as_array().unwrap()[0];
    assert!(retired["retires_at"].as_i64().unwrap() > retired["created_at"].as_i64().unwrap());
    let mut jwks = published(&server, &bundle).await;
    jwks.sort();
    let mut want = [active.clone(), next.clone(), new_next.clone()].concat();
    want.sort();
    assert_eq!(jwks, want, "the JWKS shows next, active and retired keys");
    // What the command answered is what a listing shows.
    assert_eq!(sb.keys_json(&["list"])["keys"], rotated["keys"]);
}

#[tokio::test]
async fn revoking_the_active_key_needs_force_and_removes_it_from_the_jwks() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    let server = Server::start(&sb, &[]);
    let bundle = sb.bundle();
    let list = sb.keys_json(&["list"]);
    let (active, next) = (kids_in_state(&list, "active"), kids_in_state(&list, "next"));

    let refused = sb.baton(&["keys", "revoke", &active[0]]);
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(sb.keys_json(&["list"])["keys"], list["keys"]);

    let unknown = sb.baton(&["keys", "revoke", "nope"]);
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("no signing key"),
        "{}",
        unknown.stderr
    );

    let after = sb.keys_json(&["revoke", &active[0], "--force"]);
    assert_eq!(kids_in_state(&after, "active"), next, "{after}");
    assert_eq!(kids_in_state(&after, "revoked"), active, "{after}");
    assert_eq!(kids_in_state(&after, "next").len(), 1, "{after}");
    let jwks = published(&server, &bundle).await;
    assert!(!jwks.contains(&active[0]), "{jwks:?}");
    assert_eq!(jwks.len(), 2);

    // Persisted: a restarted issuer serves the same keyring.
    drop(server);
    let server = Server::start(&sb, &[]);
    assert_eq!(sb.keys_json(&["list"])["keys"], after["keys"]);
    assert_eq!(published(&server, &bundle).await.len(), 2);
}

#[test]
fn the_issuer_rotates_by_itself_every_rotation_period() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    let server = Server::start_with_env(
        &sb,
        &[],
        &[
            ("BATON_JWKS_MAX_AGE", "1s"),
            ("BATON_ROTATION_PERIOD", "2s"),
        ],
    );
    let first = kids_in_state(&sb.keys_json(&["list"]), "active");
    assert!(
        server.wait_for_log("rotated the signing keys"),
        "{:?}",
        server.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    let list = sb.keys_json(&["list"]);
    assert_ne!(kids_in_state(&list, "active"), first, "{list}");
    assert!(
        kids_in_state(&list, "retired").contains(&first[0]),
        "{list}"
    );
}

#[test]
fn a_rotation_period_beyond_the_certificate_lifetime_is_refused_at_start() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    let run = sb.baton_with_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("BATON_ROTATION_PERIOD", std::path::Path::new("100days"))],
    );
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("rotation_period"), "{}", run.stderr);
}

#[test]
fn an_issuer_killed_mid_rotation_restarts_with_the_old_consistent_keyring() {
    let sb = Sandbox::new();
    sb.baton(&["init", "--trust-domain", "example.org"]).ok();
    let mut server = Server::start_with_env(&sb, &[], &[("BATON_FAILPOINT", "rotate-after-seal")]);
    let before = sb.keys_json(&["list"]);
    // The issuer dies after sealing the new key, before writing the index.
    let run = sb.baton(&["keys", "rotate"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        server
            .wait_exit(Duration::from_secs(10))
            .is_none_or(|c| c != 0)
    );
    drop(server);
    let keyring = sb.data_dir().join("keyring");
    let sealed = std::fs::read_dir(&keyring)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".key.sealed")
        })
        .count();
    assert_eq!(sealed, 3, "the new key was sealed before the crash");

    let _server = Server::start(&sb, &[]);
    assert_eq!(sb.keys_json(&["list"])["keys"], before["keys"]);
    let rotated = sb.keys_json(&["rotate"]);
    assert_eq!(
        kids_in_state(&rotated, "active"),
        kids_in_state(&before, "next")
    );
}
