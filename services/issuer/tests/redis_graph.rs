//! The call graph in the distributed store against a real `redis-server` (SPEC §7
//! "Distributed", §9 `graph`): replicas add their deltas and the sums come back,
//! minute counts included; the bounds (max edges, never-issued evicted first,
//! retention, identities) hold in the store; concurrent adds sum exactly; an
//! unreachable store is an error, not a panic; hostile contents are skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use baton_issuer::shared::{SharedStore, SharedStoreError};
use baton_issuer::visibility::graph::{EdgeEvent, EdgeRef, EdgeStats, Graph};
use baton_issuer::visibility::redis::RedisGraph;
use baton_tests::RedisServer;

/// The start of a minute, so minute arithmetic in the tests reads plainly.
const T0: i64 = 28_333_333 * 60;
const DAY: Duration = Duration::from_secs(86_400);
const INDEX: &str = "{baton}:graph:edges";

fn store(server: &RedisServer) -> SharedStore {
    SharedStore::connect(&server.url(), Duration::from_secs(2)).unwrap()
}

fn replica(server: &RedisServer, max_edges: usize, retention: Duration) -> RedisGraph {
    RedisGraph::new(store(server), max_edges, retention)
}

fn edge<'a>(caller: &'a str, audience: &'a str) -> EdgeRef<'a> {
    EdgeRef {
        caller,
        audience,
        scope: "",
    }
}

fn stats<'g>(graph: &'g Graph, edge: EdgeRef<'_>) -> &'g EdgeStats {
    graph
        .edge(edge)
        .unwrap_or_else(|| panic!("no edge {edge:?} in {graph:?}"))
}

fn edge_keys(server: &RedisServer) -> Vec<String> {
    let out = server.cli(&["--scan", "--pattern", "{baton}:graph:edge:*"]);
    out.lines().map(str::to_owned).collect()
}

/// The store key of the edge whose audience is `audience`.
fn key_of(server: &RedisServer, audience: &str) -> String {
    edge_keys(server)
        .into_iter()
        .find(|k| server.cli(&["HGET", k, "audience"]) == audience)
        .unwrap_or_else(|| panic!("no stored edge for {audience}"))
}

#[test]
fn replicas_adding_the_same_and_different_edges_sum_counts_and_widen_times() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server, 100, DAY), replica(&server, 100, DAY));
    let shared = edge("spiffe://t/a", "spiffe://t/b");
    let scoped = EdgeRef {
        scope: "read write",
        ..shared
    };

    let mut da = Graph::new(100);
    da.record(shared, EdgeEvent::Issued(2), T0 + 10);
    da.record(shared, EdgeEvent::Denied(0), T0 + 20);
    let mut db = Graph::new(100);
    db.record(shared, EdgeEvent::Issued(3), T0 - 100);
    db.record(shared, EdgeEvent::Denied(2), T0 + 200);
    db.record(scoped, EdgeEvent::Issued(1), T0 + 5);
    a.add(&da, T0 + 30).unwrap();
    b.add(&db, T0 + 210).unwrap();
    // A second flush of the same changes adds again: the store sums, never overwrites.
    a.add(&da, T0 + 40).unwrap();

    let graph = b.load(T0 + 210).unwrap();
    assert_eq!(graph.len(), 2);
    let s = stats(&graph, shared);
    assert_eq!(s.issued, 2 + 3 + 2);
    assert_eq!(s.denied, [2, 0, 1, 0]);
    assert_eq!(
        (s.first_seen, s.last_seen, s.last_issued),
        (T0 - 100, T0 + 200, T0 + 10)
    );
    let s = stats(&graph, scoped);
    assert_eq!((s.issued, s.first_seen, s.last_seen), (1, T0 + 5, T0 + 5));
    // No SPIFFE ID or audience in key names: fixed-length ids.
    for key in edge_keys(&server) {
        assert_eq!(key.len(), "{baton}:graph:edge:".len() + 32, "{key}");
    }
}

#[test]
fn minute_counts_from_replicas_merge_into_the_last_hour_and_minute() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server, 100, DAY), replica(&server, 100, DAY));
    let e = edge("spiffe://t/a", "spiffe://t/b");
    let minute = T0 / 60;

    // An hour and more ago: its minute must not count, and leaves the store.
    let mut old = Graph::new(100);
    old.record(e, EdgeEvent::Issued(50), T0 - 70 * 60);
    b.add(&old, T0 - 70 * 60).unwrap();

    let mut da = Graph::new(100);
    da.record(e, EdgeEvent::Issued(4), T0 + 5);
    da.record(e, EdgeEvent::Issued(6), T0 + 65);
    let mut db = Graph::new(100);
    db.record(e, EdgeEvent::Issued(10), T0 + 70);
    a.add(&da, T0 + 66).unwrap();
    b.add(&db, T0 + 71).unwrap();

    let graph = a.load(T0 + 90).unwrap();
    let s = stats(&graph, e);
    assert_eq!(s.issued, 70);
    assert_eq!((s.minutes.get(minute), s.minutes.get(minute + 1)), (4, 16));
    assert_eq!(s.minutes.last_hour(T0 + 90), 20);
    // Half-way through minute + 1: all of it and half of the one before.
    assert!((s.minutes.last_minute(T0 + 90) - 18.0).abs() < 1e-9);

    let mut fields: Vec<String> = server
        .cli(&["HKEYS", &key_of(&server, "spiffe://t/b")])
        .lines()
        .filter(|f| f.starts_with("m:"))
        .map(str::to_owned)
        .collect();
    fields.sort();
    assert_eq!(fields, [format!("m:{minute}"), format!("m:{}", minute + 1)]);
}

#[test]
fn a_full_store_keeps_max_edges_and_evicts_never_issued_edges_first() {
    let server = RedisServer::start();
    let g = replica(&server, 8, DAY);
    let mut delta = Graph::new(100);
    for i in 0..4 {
        let aud = format!("used{i}");
        delta.record(edge("spiffe://t/a", &aud), EdgeEvent::Issued(1), T0 + i);
    }
    for i in 0..4 {
        let aud = format!("probe{i}");
        delta.record(
            edge("spiffe://t/a", &aud),
            EdgeEvent::Denied(0),
            T0 + 100 + i,
        );
    }
    g.add(&delta, T0 + 200).unwrap();
    assert_eq!(server.cli(&["ZCARD", INDEX]), "8");

    // Two more used edges: over the bound by two, so the two lowest-ranked go plus an
    // eighth (one): the three oldest never-issued edges, though every used edge is older.
    let mut delta = Graph::new(100);
    delta.record(edge("spiffe://t/b", "new0"), EdgeEvent::Issued(1), T0 + 300);
    delta.record(edge("spiffe://t/b", "new1"), EdgeEvent::Issued(1), T0 + 301);
    g.add(&delta, T0 + 301).unwrap();
    assert_eq!(server.cli(&["ZCARD", INDEX]), "7");
    assert_eq!(
        edge_keys(&server).len(),
        7,
        "evicted edges' hashes are deleted"
    );

    let graph = g.load(T0 + 301).unwrap();
    assert_eq!(graph.len(), 7);
    for i in 0..3 {
        assert!(
            graph
                .edge(edge("spiffe://t/a", &format!("probe{i}")))
                .is_none()
        );
    }
    assert!(graph.edge(edge("spiffe://t/a", "probe3")).is_some());
    for i in 0..4 {
        assert!(
            graph
                .edge(edge("spiffe://t/a", &format!("used{i}")))
                .is_some()
        );
    }
}

#[test]
fn edges_and_identities_older_than_the_retention_are_pruned() {
    let server = RedisServer::start();
    let hour = Duration::from_secs(3600);
    // A replica keeping a day writes what a one-hour replica no longer shows.
    let long = replica(&server, 100, DAY);
    let mut delta = Graph::new(100);
    delta.record(
        edge("spiffe://t/a", "old-used"),
        EdgeEvent::Issued(1),
        T0 - 7200,
    );
    delta.record(
        edge("spiffe://t/a", "old-probe"),
        EdgeEvent::Denied(1),
        T0 - 7200,
    );
    delta.attested("spiffe://t/gone", T0 - 3700, T0 - 7200);
    delta.attested("spiffe://t/cert-live", T0 + 86_400, T0 - 7200);
    long.add(&delta, T0 - 7000).unwrap();
    assert_eq!(server.cli(&["ZCARD", INDEX]), "2");

    let short = replica(&server, 100, hour);
    assert_eq!(
        short.load(T0).unwrap().len(),
        0,
        "load leaves stale edges out"
    );
    let mut delta = Graph::new(100);
    delta.record(edge("spiffe://t/a", "fresh"), EdgeEvent::Issued(1), T0);
    short.add(&delta, T0).unwrap();

    assert_eq!(server.cli(&["ZCARD", INDEX]), "1");
    assert_eq!(edge_keys(&server).len(), 1);
    let graph = long.load(T0).unwrap();
    assert!(graph.edge(edge("spiffe://t/a", "fresh")).is_some());
    assert_eq!(graph.len(), 1);
    let ids: Vec<&str> = graph.identities().map(|(id, _)| id).collect();
    assert_eq!(ids, ["spiffe://t/cert-live"]);
    assert_eq!(
        server.cli(&["HKEYS", "{baton}:graph:ids"]),
        "spiffe://t/cert-live"
    );
}

#[test]
fn identities_merge_keeping_the_newest_times_up_to_the_bound() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server, 2, DAY), replica(&server, 2, DAY));
    let x = "spiffe://t/x";
    let mut da = Graph::new(2);
    da.attested(x, T0 + 3600, T0);
    let mut db = Graph::new(2);
    db.attested(x, T0 + 60, T0 - 50);
    db.enrolled(x, T0 + 1800, T0 + 10);
    a.add(&da, T0).unwrap();
    b.add(&db, T0 + 10).unwrap();

    let graph = a.load(T0 + 10).unwrap();
    let (_, s) = graph.identities().find(|(id, _)| *id == x).unwrap();
    assert_eq!(
        (s.cert_not_after, s.last_attested, s.enrolled_at),
        (T0 + 3600, T0, T0 + 10)
    );

    // Full (two identities): a third is refused, the known ones still merge.
    let mut more = Graph::new(2);
    more.attested("spiffe://t/y", T0 + 60, T0 + 20);
    a.add(&more, T0 + 20).unwrap();
    let mut more = Graph::new(2);
    more.attested("spiffe://t/z", T0 + 60, T0 + 30);
    more.attested(x, T0 + 60, T0 + 30);
    a.add(&more, T0 + 30).unwrap();
    let graph = a.load(T0 + 30).unwrap();
    let mut ids: Vec<&str> = graph.identities().map(|(id, _)| id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [x, "spiffe://t/y"]);
    let (_, s) = graph.identities().find(|(id, _)| *id == x).unwrap();
    assert_eq!(s.last_attested, T0 + 30);
}

#[test]
fn four_replicas_adding_at_once_sum_exactly() {
    let server = RedisServer::start();
    const ROUNDS: i64 = 25;
    std::thread::scope(|scope| {
        for t in 0..4 {
            let g = replica(&server, 100, DAY);
            scope.spawn(move || {
                let own = format!("own{t}");
                for round in 0..ROUNDS {
                    let now = T0 + round;
                    let mut delta = Graph::new(100);
                    delta.record(edge("spiffe://t/a", "common"), EdgeEvent::Issued(1), now);
                    delta.record(edge("spiffe://t/a", "common"), EdgeEvent::Denied(3), now);
                    delta.record(edge("spiffe://t/a", &own), EdgeEvent::Issued(2), now);
                    delta.attested("spiffe://t/a", T0 + 3600 + round, now);
                    g.add(&delta, now).unwrap();
                }
            });
        }
    });
    let graph = replica(&server, 100, DAY).load(T0 + ROUNDS).unwrap();
    let s = stats(&graph, edge("spiffe://t/a", "common"));
    assert_eq!((s.issued, s.denied), (4 * 25, [0, 0, 0, 4 * 25]));
    assert_eq!((s.first_seen, s.last_seen), (T0, T0 + ROUNDS - 1));
    assert_eq!(s.minutes.get(T0 / 60), 4 * 25);
    for t in 0..4 {
        let s = stats(&graph, edge("spiffe://t/a", &format!("own{t}")));
        assert_eq!(s.issued, 2 * 25);
    }
    let (_, id) = graph.identities().next().unwrap();
    assert_eq!(id.cert_not_after, T0 + 3600 + ROUNDS - 1);
}

#[test]
fn an_unreachable_store_is_unavailable_and_recovers() {
    let mut server = RedisServer::start();
    let g = replica(&server, 100, DAY);
    let mut delta = Graph::new(100);
    delta.record(edge("spiffe://t/a", "b"), EdgeEvent::Issued(1), T0);
    g.add(&delta, T0).unwrap();

    server.kill();
    assert!(matches!(
        g.add(&delta, T0),
        Err(SharedStoreError::Unavailable { .. })
    ));
    assert!(matches!(
        g.load(T0),
        Err(SharedStoreError::Unavailable { .. })
    ));

    // A store that lost its data while down: the next flush starts it again.
    server.restart();
    g.add(&delta, T0 + 1).unwrap();
    assert_eq!(
        stats(&g.load(T0 + 1).unwrap(), edge("spiffe://t/a", "b")).issued,
        1
    );
}

#[test]
fn hostile_store_contents_are_skipped_by_load_and_repaired_by_add() {
    let server = RedisServer::start();
    let g = replica(&server, 100, DAY);
    let mut delta = Graph::new(100);
    for aud in ["bad-count", "bad-time", "bad-minute", "wrong-type", "fine"] {
        delta.record(edge("spiffe://t/a", aud), EdgeEvent::Issued(1), T0);
    }
    delta.attested("spiffe://t/a", T0 + 60, T0);
    g.add(&delta, T0).unwrap();
    let minute = (T0 / 60).to_string();

    server.cli(&["HSET", &key_of(&server, "bad-count"), "issued", "many"]);
    server.cli(&["HSET", &key_of(&server, "bad-time"), "last", "-5"]);
    let bad_minute = key_of(&server, "bad-minute");
    server.cli(&["HSET", &bad_minute, &format!("m:{minute}"), "x"]);
    server.cli(&["HSET", &bad_minute, "m:soon", "1"]);
    let wrong_type = key_of(&server, "wrong-type");
    server.cli(&["DEL", &wrong_type]);
    server.cli(&["SET", &wrong_type, "not a hash"]);
    // A record whose id is not its caller, audience and scope's; members that are not ids.
    let forged = format!("{{baton}}:graph:edge:{}", "0".repeat(32));
    let fine = key_of(&server, "fine");
    server.cli(&["COPY", &fine, &forged]);
    server.cli(&["ZADD", INDEX, "5", &"0".repeat(32)]);
    server.cli(&["ZADD", INDEX, "5", "../../etc/passwd"]);
    // An identity that is not JSON, and one with non-UTF-8 bytes in its value.
    server.cli(&["HSET", "{baton}:graph:ids", "spiffe://t/bad", "{not json"]);
    {
        let store = store(&server);
        let mut conn = store.connection().unwrap();
        redis::cmd("HSET")
            .arg(&fine)
            .arg("m:1")
            .arg(&b"\xff\xfe"[..])
            .query::<i64>(&mut *conn)
            .unwrap();
        redis::cmd("HSET")
            .arg("{baton}:graph:ids")
            .arg(&b"spiffe://t/\xff"[..])
            .arg("{}")
            .query::<i64>(&mut *conn)
            .unwrap();
    }

    let graph = g.load(T0).unwrap();
    let mut audiences: Vec<&str> = graph.edges().map(|(k, _)| &*k.audience).collect();
    audiences.sort_unstable();
    assert_eq!(audiences, ["bad-minute", "fine"]);
    assert_eq!(
        stats(&graph, edge("spiffe://t/a", "bad-minute"))
            .minutes
            .last_hour(T0),
        0
    );
    let ids: Vec<&str> = graph.identities().map(|(id, _)| id).collect();
    assert_eq!(ids, ["spiffe://t/a"]);

    // The next flush repairs what it touches: counts restart from the delta.
    g.add(&delta, T0 + 1).unwrap();
    let graph = g.load(T0 + 1).unwrap();
    for aud in ["bad-count", "bad-time", "wrong-type"] {
        assert!(graph.edge(edge("spiffe://t/a", aud)).is_some(), "{aud}");
    }
    assert_eq!(stats(&graph, edge("spiffe://t/a", "bad-count")).issued, 1);
    assert_eq!(stats(&graph, edge("spiffe://t/a", "fine")).issued, 2);

    // Even the index of another type: read as empty, replaced by the next flush.
    server.cli(&["DEL", INDEX]);
    server.cli(&["SET", INDEX, "not a sorted set"]);
    assert_eq!(g.load(T0 + 2).unwrap().len(), 0);
    g.add(&delta, T0 + 2).unwrap();
    assert_eq!(g.load(T0 + 2).unwrap().len(), 5);
}
