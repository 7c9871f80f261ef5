//! The SDK's Redis replay guard against a real `redis-server` (SPEC §7: "Redis guard
//! = once across every verifier and issuer replica sharing the store"; "A verifier
//! that cannot reach its ledger fails closed"): two callee replicas share one-time
//! use, also under concurrent presentations; a restarted verifier still refuses a
//! replay; a dead Redis refuses tokens within a bound and the same verifier works
//! again once Redis is back; a Redis that lost its data refuses every token issued
//! before the loss (epoch) and accepts fresh ones; through Redis Sentinel, the guards
//! follow a failover and refuse every token issued before it (its use on the old
//! primary may not have been replicated).
//!
//! Tokens are signed locally with the SDK's own fixtures (a real CA and real
//! signatures), so `iat` can be set to the second, with no sleeping.

// Test code: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code, unreachable_pub, clippy::all)]
#[path = "../../client-sdk/tests/verify_support/mod.rs"]
mod verify_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_sdk::{GuardUnavailable, RedisReplayGuard, Verifier, VerifyError};
use baton_tests::{RedisSentinel, RedisServer};
use serde_json::Value;
use verify_support::*;

/// One callee replica: its own verifier and its own Redis connection.
async fn replica(ca: &Ca, signer: &Signer, redis: &RedisServer) -> Verifier {
    replica_at(ca, signer, &redis.url()).await
}

/// One callee replica whose guard's store is `url`.
async fn replica_at(ca: &Ca, signer: &Signer, url: &str) -> Verifier {
    let guard = RedisReplayGuard::builder(url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    Verifier::builder(ISSUER, AUDIENCE.parse().unwrap(), ca.pem.as_bytes())
        .unwrap()
        .jwks(&jwks(&[signer.jwk()]))
        .unwrap()
        .shared_replay_guard(Arc::new(guard))
        .build()
        .unwrap()
}

/// Claims issued at `iat` (valid 60 s), with a fresh jti.
fn issued_at(iat: i64) -> Value {
    claims(iat)
}

/// A clock one second past the replicas' connect: `connect` starts a fresh store's
/// epoch at its own second, and tokens issued at or before the epoch are refused, so
/// the tests issue and verify at the next second (injected, not slept for).
fn after_connect() -> i64 {
    unix_now() + 1
}

/// Verifies until the answer is not "unavailable" (the guard reconnecting), for at
/// most 15 s; returns the first other answer.
async fn once_reachable(
    v: &Verifier,
    token: &str,
    now: i64,
) -> Result<baton_sdk::VerifiedCaller, VerifyError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match v.verify_async_at(token, now).await {
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn two_replicas_sharing_one_redis_accept_a_token_exactly_once() {
    let redis = RedisServer::start();
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let (a, b) = (
        replica(&ca, &es, &redis).await,
        replica(&ca, &es, &redis).await,
    );
    let now = after_connect();
    let c = issued_at(now);
    let token = es.token(&c);

    let caller = a.verify_async_at(&token, now).await.unwrap();
    assert_eq!(caller.id.as_str(), CALLER);
    assert_eq!(
        b.verify_async_at(&token, now).await,
        Err(VerifyError::Replayed)
    );
    assert_eq!(
        a.verify_async_at(&token, now).await,
        Err(VerifyError::Replayed)
    );
    // The synchronous call cannot be used to get around the shared guard.
    assert_eq!(
        b.verify(&token),
        Err(VerifyError::AsyncVerificationRequired)
    );

    // One key per token plus the epoch and its server; the token's key lives until
    // exp + 5 s leeway (PXAT), and its name is a digest, not the jti.
    let keys = redis.cli(&["KEYS", "{baton}:ledger:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let token_key = keys
        .iter()
        .find(|k| !k.starts_with("{baton}:ledger:epoch"))
        .copied()
        .unwrap();
    assert!(!token_key.contains(c["jti"].as_str().unwrap()));
    assert_eq!(
        redis.cli(&["PEXPIRETIME", token_key]),
        ((now + 60 + 5) * 1000).to_string()
    );
    let epoch: i64 = redis.cli(&["GET", "{baton}:ledger:epoch"]).parse().unwrap();
    assert!(
        epoch < now,
        "the epoch was set at connect, before the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_presentations_across_two_replicas_accept_exactly_one() {
    let redis = RedisServer::start();
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::EdDsa);
    let a = Arc::new(replica(&ca, &es, &redis).await);
    let b = Arc::new(replica(&ca, &es, &redis).await);
    let now = after_connect();
    let token = Arc::new(es.token(&issued_at(now)));
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let v = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (token, barrier) = (token.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            v.verify_async_at(&token, now).await
        });
    }
    let (mut accepted, mut replayed) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => accepted += 1,
            Err(VerifyError::Replayed) => replayed += 1,
            Err(other) => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, replayed), (1, 31));
}

#[tokio::test]
async fn replay_after_a_verifier_restart_is_refused() {
    let redis = RedisServer::start();
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let first = replica(&ca, &es, &redis).await;
    let now = after_connect();
    let token = es.token(&issued_at(now));
    assert!(first.verify_async_at(&token, now).await.is_ok());
    drop(first);
    // A new process: new verifier, new connection, same Redis.
    let restarted = replica(&ca, &es, &redis).await;
    assert_eq!(
        restarted.verify_async_at(&token, now).await,
        Err(VerifyError::Replayed)
    );
}

#[tokio::test]
async fn redis_down_fails_closed_within_a_bound_and_the_same_verifier_heals_after_restart() {
    // Durable, so the restart keeps its data: this test is about reachability only.
    let mut redis = RedisServer::start_durable();
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let v = replica(&ca, &es, &redis).await;
    let now = after_connect();
    let used = es.token(&issued_at(now));
    assert!(v.verify_async_at(&used, now).await.is_ok());

    redis.kill();
    let presented_during_outage = es.token(&issued_at(now));
    for _ in 0..3 {
        let started = Instant::now();
        let err = v
            .verify_async_at(&presented_during_outage, now)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::SharedGuardUnavailable(
                    GuardUnavailable::Unreachable | GuardUnavailable::Timeout
                )
            ),
            "{err:?}"
        );
        assert!(err.is_unavailable());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused in {:?}",
            started.elapsed()
        );
    }

    redis.restart();
    // No rebuild: the connection heals by itself. The outage burned nothing, so the
    // token refused while Redis was down is accepted once now, and the one used
    // before the outage is still a replay.
    let healed = once_reachable(&v, &presented_during_outage, now).await;
    assert!(healed.is_ok(), "{healed:?}");
    assert_eq!(
        v.verify_async_at(&presented_during_outage, now).await,
        Err(VerifyError::Replayed)
    );
    assert_eq!(
        v.verify_async_at(&used, now).await,
        Err(VerifyError::Replayed)
    );
}

#[tokio::test]
async fn after_redis_loses_its_data_tokens_issued_before_are_refused_and_fresh_ones_accepted() {
    let mut redis = RedisServer::start();
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let v = replica(&ca, &es, &redis).await;
    let now = after_connect();
    let used = es.token(&issued_at(now));
    let unused = es.token(&issued_at(now));
    assert!(v.verify_async_at(&used, now).await.is_ok());

    // No persistence: the restart forgets every consumed jti, and the epoch.
    redis.restart();
    assert_eq!(redis.cli(&["EXISTS", "{baton}:ledger:epoch"]), "0");

    // Without the epoch this replay would be accepted. Both tokens predate the loss.
    assert_eq!(
        once_reachable(&v, &used, now).await,
        Err(VerifyError::PredatesReplayLedger)
    );
    assert_eq!(
        v.verify_async_at(&unused, now).await,
        Err(VerifyError::PredatesReplayLedger)
    );
    assert_eq!(
        redis.cli(&["GET", "{baton}:ledger:epoch"]),
        now.to_string(),
        "the epoch is recreated at the verifier's clock"
    );
    let err = VerifyError::PredatesReplayLedger;
    assert!(!err.is_unavailable(), "the caller needs a fresh token: 401");

    // A token issued after the new epoch is accepted, once.
    let later = now + 1;
    let fresh = es.token(&issued_at(later));
    assert!(v.verify_async_at(&fresh, later).await.is_ok());
    assert_eq!(
        v.verify_async_at(&fresh, later).await,
        Err(VerifyError::Replayed)
    );
}

#[tokio::test]
async fn a_flushed_store_is_caught_like_a_restart() {
    let redis = RedisServer::start();
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let v = replica(&ca, &es, &redis).await;
    let now = after_connect();
    let token = es.token(&issued_at(now));
    assert!(v.verify_async_at(&token, now).await.is_ok());
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    assert_eq!(
        v.verify_async_at(&token, now).await,
        Err(VerifyError::PredatesReplayLedger)
    );
}

#[tokio::test]
async fn connect_fails_clearly_when_redis_is_not_there() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let started = Instant::now();
    let err = RedisReplayGuard::builder(url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(
            err,
            baton_sdk::RedisGuardError::Connect(_) | baton_sdk::RedisGuardError::Timeout
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_guards_follow_a_failover_and_refuse_tokens_from_before_it() {
    let mut sentinel = RedisSentinel::start();
    let ca = Ca::new(TD);
    let es = ca.signer(Alg::Es256);
    let (a, b) = (
        replica_at(&ca, &es, &sentinel.url()).await,
        replica_at(&ca, &es, &sentinel.url()).await,
    );
    let now = after_connect();
    let used = es.token(&issued_at(now));
    let outstanding = es.token(&issued_at(now));
    assert!(a.verify_async_at(&used, now).await.is_ok());
    assert_eq!(
        b.verify_async_at(&used, now).await,
        Err(VerifyError::Replayed)
    );
    sentinel.wait_for_replication(Duration::from_secs(5));

    let old = sentinel.primary_port();
    sentinel.kill_primary();
    tokio::task::block_in_place(|| sentinel.wait_for_failover(old, Duration::from_secs(30)));

    // The same verifiers, no rebuild, find the new primary; it starts a new epoch, so
    // the token never presented is refused like the one that was.
    assert_eq!(
        once_reachable(&b, &outstanding, now).await,
        Err(VerifyError::PredatesReplayLedger)
    );
    assert_eq!(
        a.verify_async_at(&used, now).await,
        Err(VerifyError::PredatesReplayLedger)
    );
    let later = now + 1;
    let fresh = es.token(&issued_at(later));
    assert!(a.verify_async_at(&fresh, later).await.is_ok());
    assert_eq!(
        b.verify_async_at(&fresh, later).await,
        Err(VerifyError::Replayed)
    );
}
