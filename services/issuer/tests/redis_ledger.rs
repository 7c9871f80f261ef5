//! The shared replay ledger against a real `redis-server` (SPEC §7, distributed mode):
//! one use per key across replicas, expiries enforced by the store, the epoch rule
//! after the store loses its data, and failing closed — never `Ok` — while the store
//! is unreachable, then recovering by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_issuer::ledger::{Consumed, LedgerError, RedisConnectError, RedisLedger, ReplayLedger};
use baton_tests::RedisServer;

/// Generous bound for "promptly" on a loaded CI machine; the ledger's own timeout is 1 s.
const PROMPTLY: Duration = Duration::from_secs(5);

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn connect(server: &RedisServer) -> RedisLedger {
    RedisLedger::connect(&server.url()).await.unwrap()
}

/// The ledger's keys in the store, the epoch and its server aside.
fn item_keys(server: &RedisServer) -> Vec<String> {
    server
        .cli(&["--scan", "--pattern", "{baton}:ledger:*"])
        .lines()
        .filter(|k| !k.starts_with("{baton}:ledger:epoch"))
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) until the ledger reaches the store again after a restart.
async fn wait_until_ready(ledger: &RedisLedger) {
    let deadline = Instant::now() + PROMPTLY;
    while ledger.ready(unix_now()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the ledger did not reconnect within {PROMPTLY:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn key_is_consumed_once_and_stored_only_as_a_fixed_length_hash() {
    let server = RedisServer::start();
    let ledger = connect(&server).await;
    let epoch = ledger.epoch(unix_now()).await.unwrap();
    let (iat, now) = (Some(epoch + 1), epoch + 1);
    let secret = "access-token do-not-store-me";
    assert_eq!(ledger.consume(secret, iat, now + 60, now).await, Ok(()));
    assert_eq!(
        ledger.consume(secret, iat, now + 60, now + 30).await,
        Err(LedgerError::Replayed)
    );
    let long = format!("client-assertion {}", "j".repeat(10_000));
    assert_eq!(ledger.consume(&long, iat, now + 60, now).await, Ok(()));

    let keys = item_keys(&server);
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        assert_eq!(key.len(), "{baton}:ledger:".len() + 32, "{key}");
        assert!(!key.contains("do-not-store-me") && !key.contains("jjj"));
    }
    assert_eq!(ledger.contains(secret, now).await, Ok(true));
    assert_eq!(ledger.contains("never-seen", now).await, Ok(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_consumers_on_two_replicas_accept_exactly_one() {
    let server = RedisServer::start();
    let replicas = [
        Arc::new(connect(&server).await),
        Arc::new(connect(&server).await),
    ];
    let epoch = replicas[0].epoch(unix_now()).await.unwrap();
    assert_eq!(
        replicas[1].epoch(unix_now()).await,
        Ok(epoch),
        "one shared epoch"
    );
    let now = epoch + 1;
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let ledger = Arc::clone(&replicas[i % 2]);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                ledger
                    .consume("access-token contested", Some(now), now + 60, now)
                    .await
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => accepted += 1,
            Err(e) => assert_eq!(e, LedgerError::Replayed),
        }
    }
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn entry_expires_at_its_exp_and_may_then_be_used_again() {
    let server = RedisServer::start();
    let ledger = connect(&server).await;
    let now = unix_now();
    ledger.epoch(now).await.unwrap();

    // PXAT is the item's exp (or later, by as much as the store's clock runs ahead).
    ledger.consume("long", None, now + 60, now).await.unwrap();
    let key = item_keys(&server).pop().unwrap();
    let pxat: i64 = server.cli(&["PEXPIRETIME", &key]).parse().unwrap();
    assert!(
        (now + 60) * 1000 <= pxat && pxat <= (now + 62) * 1000,
        "PXAT {pxat} for exp {}",
        now + 60
    );

    // Already expired by the caller's clock: nothing to record.
    assert_eq!(ledger.consume("old", None, now, now).await, Ok(()));
    assert_eq!(ledger.contains("old", now).await, Ok(false));

    // A real expiry, enforced by the store.
    let now = unix_now();
    ledger.consume("short", None, now + 1, now).await.unwrap();
    assert_eq!(
        ledger.consume("short", None, now + 1, now).await,
        Err(LedgerError::Replayed)
    );
    let deadline = Instant::now() + PROMPTLY;
    while ledger.contains("short", unix_now()).await == Ok(true) {
        assert!(Instant::now() < deadline, "the entry did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = unix_now();
    assert_eq!(ledger.consume("short", None, now + 60, now).await, Ok(()));
}

#[tokio::test]
async fn mark_keeps_the_later_expiry_and_a_marked_key_cannot_be_consumed() {
    let server = RedisServer::start();
    let ledger = connect(&server).await;
    let now = unix_now();
    let pxat = |server: &RedisServer| -> i64 {
        let key = item_keys(server).pop().unwrap();
        server.cli(&["PEXPIRETIME", &key]).parse().unwrap()
    };

    assert_eq!(ledger.contains("revoked-session s", now).await, Ok(false));
    assert_eq!(
        ledger.mark("revoked-session s", now + 60, now).await,
        Ok(())
    );
    assert_eq!(ledger.contains("revoked-session s", now).await, Ok(true));
    let first = pxat(&server);
    assert!(first >= (now + 60) * 1000, "{first}");

    // An earlier expiry does not shorten it; a later one extends it.
    assert_eq!(
        ledger.mark("revoked-session s", now + 30, now).await,
        Ok(())
    );
    assert_eq!(pxat(&server), first);
    assert_eq!(
        ledger.mark("revoked-session s", now + 90, now).await,
        Ok(())
    );
    assert!(pxat(&server) >= (now + 90) * 1000);

    assert_eq!(
        ledger
            .consume("revoked-session s", None, now + 60, now)
            .await,
        Err(LedgerError::Replayed)
    );
    // An already expired mark records nothing.
    assert_eq!(ledger.mark("revoked-session old", now, now).await, Ok(()));
    assert_eq!(ledger.contains("revoked-session old", now).await, Ok(false));
    assert_eq!(item_keys(&server).len(), 1);
}

#[tokio::test]
async fn after_a_flush_everything_issued_before_is_stale() {
    let server = RedisServer::start();
    let ledger = connect(&server).await;
    let epoch = ledger.epoch(unix_now()).await.unwrap();
    let (iat, now) = (epoch + 1, epoch + 1);
    assert_eq!(
        ledger
            .consume("access-token t", Some(iat), now + 60, now)
            .await,
        Ok(())
    );

    assert_eq!(server.cli(&["FLUSHALL"]), "OK");

    // The store forgot the consumption; the epoch rule refuses the replay anyway.
    let later = now + 1;
    assert_eq!(
        ledger
            .consume("access-token t", Some(iat), now + 60, later)
            .await,
        Err(LedgerError::Stale)
    );
    let new_epoch = ledger.epoch(later).await.unwrap();
    assert!(new_epoch >= later, "{new_epoch} < {later}");
    assert!(item_keys(&server).is_empty(), "a stale item burns nothing");
    // Issued after the new epoch: consumed as usual.
    let fresh = new_epoch + 1;
    assert_eq!(
        ledger
            .consume("access-token u", Some(fresh), fresh + 60, fresh)
            .await,
        Ok(())
    );
    // Keys with their own durable gate (join tokens) pass no issue time.
    assert_eq!(
        ledger
            .consume("join-token j", None, fresh + 60, fresh)
            .await,
        Ok(())
    );
}

/// A ledger on `server` that consumed `access-token t`, issued just after its epoch,
/// before the server restarted (SIGKILL): the reconnected ledger, the epoch before the
/// restart and the token's `iat`.
async fn consumed_then_restarted(server: &mut RedisServer) -> (RedisLedger, i64, i64) {
    let ledger = connect(server).await;
    let epoch = ledger.epoch(unix_now()).await.unwrap();
    let iat = epoch + 1;
    ledger
        .consume("access-token t", Some(iat), iat + 120, iat)
        .await
        .unwrap();
    if server
        .cli(&["CONFIG", "GET", "appendonly"])
        .ends_with("yes")
    {
        // On disk before the crash: what the restart keeps is then up to the server's
        // promise, not to timing.
        server.cli(&["BGREWRITEAOF"]);
        std::thread::sleep(Duration::from_millis(1500));
    }
    server.restart();
    wait_until_ready(&ledger).await;
    (ledger, epoch, iat)
}

/// After a restart that started a new epoch: anything issued at `iat` is stale, the new
/// epoch is later than `epoch` and stays put, and a token issued after it is accepted.
async fn assert_new_epoch(ledger: &RedisLedger, epoch: i64, iat: i64) {
    let now = unix_now().max(iat + 1);
    assert_eq!(
        ledger
            .consume("access-token outstanding", Some(iat), iat + 120, now)
            .await,
        Err(LedgerError::Stale),
        "issued before the restart: its use may be among the lost writes"
    );
    let new_epoch = ledger.epoch(now).await.unwrap();
    assert!(new_epoch > epoch);
    let fresh = new_epoch + 1;
    assert_eq!(
        ledger
            .consume("access-token fresh", Some(fresh), fresh + 60, fresh)
            .await,
        Ok(())
    );
    assert_eq!(
        ledger.epoch(fresh).await,
        Ok(new_epoch),
        "one new epoch per server process, not per operation"
    );
}

#[tokio::test]
async fn store_restarted_without_persistence_sets_a_new_epoch() {
    let mut server = RedisServer::start();
    let (ledger, epoch, iat) = consumed_then_restarted(&mut server).await;
    assert_eq!(server.cli(&["EXISTS", "{baton}:ledger:epoch"]), "0");
    assert_new_epoch(&ledger, epoch, iat).await;
}

#[tokio::test]
async fn durable_store_restart_keeps_consumed_keys_consumed() {
    let mut server = RedisServer::start_durable();
    let (ledger, epoch, iat) = consumed_then_restarted(&mut server).await;
    assert_eq!(ledger.epoch(iat + 1).await, Ok(epoch), "the epoch survived");
    assert_eq!(
        ledger
            .consume("access-token t", Some(iat), iat + 120, iat + 1)
            .await,
        Err(LedgerError::Replayed)
    );
}

#[tokio::test]
async fn a_restart_that_may_have_lost_acknowledged_writes_starts_a_new_epoch() {
    // `appendfsync everysec` keeps the epoch key and the entries across a process
    // crash, but a machine crash may lose the last second of consumed ids: the ledger
    // must not take what it finds as complete.
    let mut server = RedisServer::start_everysec();
    let (ledger, epoch, iat) = consumed_then_restarted(&mut server).await;
    assert_eq!(server.cli(&["EXISTS", "{baton}:ledger:epoch"]), "1");
    assert_new_epoch(&ledger, epoch, iat).await;
}

#[tokio::test]
async fn unreachable_store_fails_closed_promptly_and_recovers_by_itself() {
    let mut server = RedisServer::start();
    let ledger = connect(&server).await;
    let now = unix_now();
    assert_eq!(ledger.ready(now).await, Ok(()));

    server.kill();
    let started = Instant::now();
    assert_eq!(
        ledger.consume("a", Some(now + 1), now + 60, now + 1).await,
        Err(LedgerError::Unavailable)
    );
    assert_eq!(
        ledger.mark("b", now + 60, now).await,
        Err(LedgerError::Unavailable)
    );
    assert_eq!(
        ledger.contains("b", now).await,
        Err(LedgerError::Unavailable)
    );
    assert_eq!(ledger.epoch(now).await, Err(LedgerError::Unavailable));
    assert_eq!(ledger.ready(now).await, Err(LedgerError::Unavailable));
    assert!(
        started.elapsed() < PROMPTLY,
        "five failing operations took {:?}",
        started.elapsed()
    );

    // The same ledger, not a rebuilt one, finds the store again.
    server.restart();
    wait_until_ready(&ledger).await;
    let epoch = ledger.epoch(unix_now()).await.unwrap();
    let fresh = epoch + 1;
    assert_eq!(
        ledger.consume("a", Some(fresh), fresh + 60, fresh).await,
        Ok(())
    );
}

#[tokio::test]
async fn connecting_to_a_store_that_is_down_fails_within_a_bound() {
    let mut server = RedisServer::start();
    server.kill();
    let started = Instant::now();
    let err = RedisLedger::connect_with_timeout(&server.url(), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, RedisConnectError::Unreachable(_)), "{err}");
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
}

#[tokio::test]
async fn store_that_evicts_keys_is_refused() {
    let server = RedisServer::start();
    assert_eq!(server.cli(&["CONFIG", "SET", "maxmemory", "100mb"]), "OK");
    assert_eq!(
        server.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]),
        "OK"
    );
    let err = RedisLedger::connect(&server.url()).await.unwrap_err();
    assert_eq!(
        err,
        RedisConnectError::EvictingStore("volatile-lru".to_owned())
    );
    // noeviction, Redis's default, is what the ledger needs.
    assert_eq!(
        server.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    assert!(RedisLedger::connect(&server.url()).await.is_ok());
}

#[tokio::test]
async fn consume_unless_a_live_blocker_is_one_step_that_records_nothing_when_blocked() {
    let server = RedisServer::start();
    let ledger = connect(&server).await;
    let now = ledger.epoch(unix_now()).await.unwrap() + 1;
    ledger
        .mark("revoked-session s1", now + 60, now)
        .await
        .unwrap();

    assert_eq!(
        ledger
            .consume_unless(
                "access-token a",
                "revoked-session s1",
                Some(now),
                now + 60,
                now
            )
            .await,
        Ok(Consumed::Blocked)
    );
    assert_eq!(
        ledger.contains("access-token a", now).await,
        Ok(false),
        "nothing recorded"
    );
    assert_eq!(
        ledger
            .consume_unless(
                "access-token b",
                "revoked-session s2",
                Some(now),
                now + 60,
                now
            )
            .await,
        Ok(Consumed::Yes)
    );
    assert_eq!(
        ledger
            .consume_unless(
                "access-token b",
                "revoked-session s2",
                Some(now),
                now + 60,
                now
            )
            .await,
        Err(LedgerError::Replayed)
    );
    assert_eq!(
        ledger
            .consume_unless(
                "access-token c",
                "revoked-session s2",
                Some(now - 1),
                now + 60,
                now
            )
            .await,
        Err(LedgerError::Stale),
        "the epoch still applies"
    );
}
