//! The issuer's side of visibility: what the request handlers call (one short lock per
//! token request), the anomaly signals raised on the way, and the flush of the records
//! to the store (the data directory, or Redis shared by every replica).
//!
//! Records are sharded by caller: a caller's edges, its identity record and its
//! anomaly baseline sit behind one lock, so a token request takes exactly one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_proto::SpiffeId;

use super::graph::{EdgeEvent, EdgeRef, Graph, GraphFile, Recorded, denial_index};
use super::model::{AnomalyKind, AnomalyView};
use super::redis::RedisGraph;
use crate::fsio::{self, Mode};
use crate::shared::SharedStoreError;

/// Shards of the records (a power of two: the caller's hash picks one).
const SHARDS: usize = 8;
/// Anomaly signals kept for `baton report`.
const RECENT_ANOMALIES: usize = 200;
/// Audiences remembered per caller for the new-audience signal; a caller calling more
/// has no "usual" set worth alerting on.
const MAX_AUDIENCES_PER_CALLER: usize = 4096;
/// Windows of history a caller needs before its rate can spike.
const BASELINE_WINDOWS: u32 = 5;
/// Weight of the newest window in the moving average: about the last ten windows count.
const EWMA_ALPHA: f64 = 0.2;
/// Largest `graph.json` read back.
const MAX_GRAPH_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Name of the embedded store's file in the data directory.
pub const GRAPH_FILE: &str = "graph.json";

/// Thresholds of the anomaly signals (configuration keys `anomaly_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyThresholds {
    /// A caller first seen at least this long ago that mints for an audience it never
    /// used raises `new_audience` (younger callers are still finding their audiences).
    pub new_audience_after: Duration,
    /// The window a caller's rate is counted over.
    pub rate_window: Duration,
    /// Tokens in one window above this multiple of the caller's moving average…
    pub rate_factor: u32,
    /// …and above this many raise `rate_spike`.
    pub rate_min: u32,
    /// The window attestation failures and replays are counted over.
    pub burst_window: Duration,
    /// Attestation failures in one burst window that raise `attestation_failures`.
    pub attestation_failures: u32,
    /// Replayed assertions and tokens in one burst window that raise `replays`.
    pub replays: u32,
}

impl Default for AnomalyThresholds {
    fn default() -> Self {
        Self {
            new_audience_after: Duration::from_secs(3600),
            rate_window: Duration::from_secs(60),
            rate_factor: 5,
            rate_min: 100,
            burst_window: Duration::from_secs(60),
            attestation_failures: 20,
            replays: 5,
        }
    }
}

/// Where the records are kept.
#[derive(Debug)]
pub enum Backend {
    /// `graph.json` in the data directory; the shards hold the whole graph.
    Embedded {
        /// The file.
        path: PathBuf,
    },
    /// Redis; the shards hold what changed since the last flush.
    Redis(RedisGraph),
}

/// Why the records could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VisibilityError {
    /// The distributed store failed.
    #[error(transparent)]
    Store(#[from] SharedStoreError),
    /// The embedded store's file could not be written.
    #[error("cannot write the call graph to {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A caller's anomaly baseline.
#[derive(Debug)]
struct CallerState {
    first_seen: i64,
    /// Hashes of the audiences it was issued tokens for.
    audiences: HashSet<u64>,
    /// Start of the window being counted; `None` until this process sees the caller
    /// mint (a baseline learned from the store has no rate history: after a restart
    /// it must be rebuilt before it can spike).
    window_start: Option<i64>,
    window_count: u64,
    ewma: f64,
    windows: u32,
    spiked: bool,
}

impl CallerState {
    fn new(now: i64) -> Self {
        Self {
            first_seen: now,
            audiences: HashSet::new(),
            window_start: None,
            window_count: 0,
            ewma: 0.0,
            windows: 0,
            spiked: false,
        }
    }

    /// Closes the windows that ended by `now` into the moving average.
    fn roll(&mut self, now: i64, window: i64) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        if now < start + window {
            return;
        }
        let elapsed = (now - start) / window;
        self.ewma = if self.windows == 0 {
            // The first window is the whole history: start the average there, not at 0.
            self.window_count as f64
        } else {
            EWMA_ALPHA * self.window_count as f64 + (1.0 - EWMA_ALPHA) * self.ewma
        };
        // Empty windows since then decay the average.
        let empty = (elapsed - 1).clamp(0, 1000) as i32;
        self.ewma *= (1.0 - EWMA_ALPHA).powi(empty);
        self.windows = self
            .windows
            .saturating_add(u32::try_from(elapsed).unwrap_or(u32::MAX));
        self.window_start = Some(start + elapsed * window);
        self.window_count = 0;
        self.spiked = false;
    }
}

#[derive(Debug)]
struct Shard {
    graph: Graph,
    callers: HashMap<Box<str>, CallerState>,
}

#[derive(Debug, Default)]
struct Burst {
    window_start: i64,
    count: u64,
    raised: bool,
}

impl Burst {
    /// Counts one event at `now`; true when this one crosses `threshold`.
    fn count(&mut self, now: i64, window: i64, threshold: u32) -> Option<u64> {
        if now >= self.window_start + window {
            self.window_start = now - now.rem_euclid(window);
            self.count = 0;
            self.raised = false;
        }
        self.count += 1;
        if !self.raised && self.count >= u64::from(threshold) {
            self.raised = true;
            return Some(self.count);
        }
        None
    }
}

/// The call graph, inventory records and anomaly signals of one issuer.
#[derive(Debug)]
pub struct Visibility {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_edges: usize,
    retention: Duration,
    thresholds: AnomalyThresholds,
    backend: Backend,
    recent: Mutex<VecDeque<AnomalyView>>,
    failures: Mutex<Burst>,
    replays: Mutex<Burst>,
    /// Serializes flushes (the upkeep task and an admin read may overlap).
    flushing: Mutex<()>,
    /// Set by every record; an embedded flush with nothing new writes nothing.
    dirty: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The scope as an edge names it: scope-tokens sorted, so request order does not
/// split an edge.
fn edge_scope(scope: Option<&str>) -> std::borrow::Cow<'_, str> {
    match scope {
        None => "".into(),
        Some(s) if !s.contains(' ') => s.into(),
        Some(s) => {
            let mut tokens: Vec<&str> = s.split(' ').filter(|t| !t.is_empty()).collect();
            tokens.sort_unstable();
            tokens.dedup();
            tokens.join(" ").into()
        }
    }
}

impl Visibility {
    /// Records kept in `backend`, at most `max_edges` edges (split evenly over the
    /// shards), edges unseen for `retention` dropped.
    pub fn new(
        backend: Backend,
        max_edges: usize,
        retention: Duration,
        thresholds: AnomalyThresholds,
    ) -> Self {
        let per_shard = max_edges.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    graph: Graph::new(per_shard),
                    callers: HashMap::new(),
                })
            })
            .collect();
        metrics::counter!(crate::metrics::GRAPH_EDGES_DROPPED).absolute(0);
        for kind in AnomalyKind::ALL {
            // Present at zero, so that an alert on its increase has a series to watch.
            metrics::counter!(crate::metrics::ANOMALIES, "kind" => kind.as_str()).absolute(0);
        }
        Self {
            shards,
            hasher: RandomState::new(),
            max_edges,
            retention,
            thresholds,
            backend,
            recent: Mutex::new(VecDeque::new()),
            failures: Mutex::new(Burst::default()),
            replays: Mutex::new(Burst::default()),
            flushing: Mutex::new(()),
            dirty: AtomicBool::new(false),
        }
    }

    /// Loads what the store holds: the embedded graph into memory, and every caller's
    /// history into the anomaly baselines. Blocking I/O. An unreadable embedded file is
    /// set aside (`graph.json.unreadable`) and the graph starts empty: it is a record
    /// of use, not a security decision.
    pub fn load(&self, now: i64) -> Result<(), VisibilityError> {
        let graph = match &self.backend {
            Backend::Embedded { path } => {
                let graph = read_graph_file(path, self.max_edges);
                for (key, stats) in graph.edges() {
                    let mut shard = self.shard(&key.caller);
                    shard.graph.merge_edge(key.clone(), stats);
                }
                for (id, stats) in graph.identities() {
                    self.shard(id).graph.merge_identity(id, stats);
                }
                graph
            }
            Backend::Redis(redis) => redis.load(now)?,
        };
        self.seed(&graph);
        Ok(())
    }

    /// Teaches the anomaly baselines what `graph` knows of each caller.
    fn seed(&self, graph: &Graph) {
        for (key, stats) in graph.edges() {
            let mut shard = self.shard(&key.caller);
            let hash = self.hasher.hash_one(&*key.audience);
            let state = shard
                .callers
                .entry(key.caller.clone())
                .or_insert_with(|| CallerState::new(stats.first_seen));
            state.first_seen = state.first_seen.min(stats.first_seen);
            if stats.issued > 0 && state.audiences.len() < MAX_AUDIENCES_PER_CALLER {
                state.audiences.insert(hash);
            }
        }
    }

    /// The shard of `caller`'s records, for a change to them.
    fn shard_mut(&self, caller: &str) -> MutexGuard<'_, Shard> {
        // Read first: every request writing the flag would bounce its cache line
        // between cores.
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        }
        self.shard(caller)
    }

    fn shard(&self, caller: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(caller) as usize & (SHARDS - 1);
        lock(&self.shards[i])
    }

    /// `count` tokens issued to `caller` for `audience` with `scope`, under a
    /// certificate valid until `cert_not_after`. The hot path: one lock, no I/O, an
    /// allocation only for a new edge or a multi-token scope.
    pub fn issued(
        &self,
        caller: &SpiffeId,
        audience: &SpiffeId,
        scope: Option<&str>,
        count: u32,
        cert_not_after: i64,
        now: i64,
    ) {
        let scope = edge_scope(scope);
        let edge = EdgeRef {
            caller: caller.as_str(),
            audience: audience.as_str(),
            scope: &scope,
        };
        let audience_hash = self.hasher.hash_one(audience.as_str());
        let t = &self.thresholds;
        let mut raised = Vec::new();
        {
            let mut shard = self.shard_mut(caller.as_str());
            if shard.graph.record(edge, EdgeEvent::Issued(count), now) == Recorded::Dropped {
                metrics::counter!(crate::metrics::GRAPH_EDGES_DROPPED).increment(1);
            }
            shard.graph.attested(caller.as_str(), cert_not_after, now);
            let state = match shard.callers.get_mut(caller.as_str()) {
                Some(state) => state,
                None => shard
                    .callers
                    .entry(caller.as_str().into())
                    .or_insert_with(|| CallerState::new(now)),
            };
            let window = t.rate_window.as_secs().max(1) as i64;
            state.roll(now, window);
            state.window_count += u64::from(count);
            let threshold = (state.ewma * f64::from(t.rate_factor)).max(f64::from(t.rate_min));
            if state.windows >= BASELINE_WINDOWS
                && !state.spiked
                && state.window_count as f64 > threshold
            {
                state.spiked = true;
                raised.push(AnomalyView {
                    kind: AnomalyKind::RateSpike,
                    at: now,
                    caller: Some(caller.to_string()),
                    audience: None,
                    observed: state.window_count as f64,
                    threshold,
                    detail: format!(
                        "{caller} minted {} tokens within {window}s, against a moving average of {:.1} per window",
                        state.window_count, state.ewma
                    ),
                });
            }
            if state.audiences.len() < MAX_AUDIENCES_PER_CALLER
                && state.audiences.insert(audience_hash)
            {
                let age = now - state.first_seen;
                if age >= t.new_audience_after.as_secs() as i64 {
                    raised.push(AnomalyView {
                        kind: AnomalyKind::NewAudience,
                        at: now,
                        caller: Some(caller.to_string()),
                        audience: Some(audience.to_string()),
                        observed: 1.0,
                        threshold: 0.0,
                        detail: format!(
                            "{caller} minted a token for {audience}, an audience it never used in {age}s of history"
                        ),
                    });
                }
            }
        }
        for anomaly in raised {
            self.raise(anomaly);
        }
    }

    /// A token request by the attested `caller` for `audience` was refused for
    /// `reason` (the error's reason label).
    pub fn denied(
        &self,
        caller: &SpiffeId,
        audience: &str,
        scope: Option<&str>,
        reason: &str,
        now: i64,
    ) {
        let scope = edge_scope(scope);
        let edge = EdgeRef {
            caller: caller.as_str(),
            audience,
            scope: &scope,
        };
        let mut shard = self.shard_mut(caller.as_str());
        if shard
            .graph
            .record(edge, EdgeEvent::Denied(denial_index(reason)), now)
            == Recorded::Dropped
        {
            metrics::counter!(crate::metrics::GRAPH_EDGES_DROPPED).increment(1);
        }
    }

    /// A certificate valid until `not_after` was issued to `id`.
    pub fn enrolled(&self, id: &SpiffeId, not_after: i64, now: i64) {
        self.shard_mut(id.as_str())
            .graph
            .enrolled(id.as_str(), not_after, now);
    }

    /// A caller failed attestation (any reason but an unreachable ledger).
    pub fn attestation_failed(&self, now: i64) {
        let t = &self.thresholds;
        let window = t.burst_window.as_secs().max(1) as i64;
        let crossed = lock(&self.failures).count(now, window, t.attestation_failures);
        if let Some(count) = crossed {
            self.raise(AnomalyView {
                kind: AnomalyKind::AttestationFailures,
                at: now,
                caller: None,
                audience: None,
                observed: count as f64,
                threshold: f64::from(t.attestation_failures),
                detail: format!("{count} attestation failures within {window}s"),
            });
        }
    }

    /// A replayed client assertion or token was refused; `caller` is the verified
    /// sender when known.
    pub fn replayed(&self, caller: Option<&SpiffeId>, now: i64) {
        let t = &self.thresholds;
        let window = t.burst_window.as_secs().max(1) as i64;
        let crossed = lock(&self.replays).count(now, window, t.replays);
        if let Some(count) = crossed {
            self.raise(AnomalyView {
                kind: AnomalyKind::Replays,
                at: now,
                caller: caller.map(ToString::to_string),
                audience: None,
                observed: count as f64,
                threshold: f64::from(t.replays),
                detail: format!("{count} replayed assertions or tokens within {window}s"),
            });
        }
    }

    fn raise(&self, anomaly: AnomalyView) {
        metrics::counter!(crate::metrics::ANOMALIES, "kind" => anomaly.kind.as_str()).increment(1);
        crate::audit::anomaly(&anomaly);
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_ANOMALIES {
            recent.pop_back();
        }
        recent.push_front(anomaly);
    }

    /// Anomaly signals this issuer raised, newest first (at most 200).
    pub fn recent_anomalies(&self) -> Vec<AnomalyView> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// The bound on edges.
    pub fn max_edges(&self) -> usize {
        self.max_edges
    }

    /// Writes the records to the store: the embedded file (whole, pruned of stale
    /// edges), or the changes since the last flush to Redis (kept for the next flush if
    /// Redis fails, within the bound). Blocking I/O: call it off the async runtime.
    pub fn flush(&self, now: i64) -> Result<(), VisibilityError> {
        let _one = lock(&self.flushing);
        let cutoff = now - self.retention.as_secs() as i64;
        match &self.backend {
            Backend::Embedded { path } => {
                // Pruning alone changes nothing worth a write before the next record.
                if !self.dirty.swap(false, Ordering::Relaxed) {
                    return Ok(());
                }
                let mut whole = Graph::new(self.max_edges);
                for shard in &self.shards[..] {
                    let mut shard = lock(shard);
                    shard.graph.prune(cutoff);
                    let Shard { graph, callers } = &mut *shard;
                    let kept: HashSet<&str> = graph.edges().map(|(k, _)| &*k.caller).collect();
                    callers.retain(|caller, _| kept.contains(&**caller));
                    whole.merge(&shard.graph);
                }
                metrics::gauge!(crate::metrics::GRAPH_EDGES).set(whole.len() as f64);
                write_graph_file(path, &whole).inspect_err(|_| {
                    // Still to be written: the next flush tries again.
                    self.dirty.store(true, Ordering::Relaxed);
                })
            }
            Backend::Redis(redis) => {
                let mut delta = Graph::new(self.max_edges);
                for shard in &self.shards[..] {
                    delta.merge(&lock(shard).graph.take());
                }
                if delta.is_empty() {
                    return Ok(());
                }
                if let Err(e) = redis.add(&delta, now) {
                    // Put it back: counted at the next flush instead of lost.
                    for (key, stats) in delta.edges() {
                        self.shard(&key.caller).graph.merge_edge(key.clone(), stats);
                    }
                    for (id, stats) in delta.identities() {
                        self.shard(id).graph.merge_identity(id, stats);
                    }
                    return Err(e.into());
                }
                Ok(())
            }
        }
    }

    /// Every record, as the store holds it after a flush of this issuer's own. Blocking.
    pub fn snapshot(&self, now: i64) -> Result<Graph, VisibilityError> {
        match &self.backend {
            Backend::Embedded { .. } => {
                let cutoff = now - self.retention.as_secs() as i64;
                let mut whole = Graph::new(self.max_edges);
                for shard in &self.shards[..] {
                    whole.merge(&lock(shard).graph);
                }
                whole.prune(cutoff);
                Ok(whole)
            }
            Backend::Redis(redis) => {
                self.flush(now)?;
                let graph = redis.load(now)?;
                metrics::gauge!(crate::metrics::GRAPH_EDGES).set(graph.len() as f64);
                // What other replicas learned teaches this one's baselines too.
                self.seed(&graph);
                Ok(graph)
            }
        }
    }

    /// Relearns the baselines from the store (distributed: what other replicas saw).
    pub fn refresh(&self, now: i64) -> Result<(), VisibilityError> {
        if let Backend::Redis(redis) = &self.backend {
            let graph = redis.load(now)?;
            metrics::gauge!(crate::metrics::GRAPH_EDGES).set(graph.len() as f64);
            self.seed(&graph);
        }
        Ok(())
    }
}

/// Adds `delta` to the embedded graph file `path`, for a command run while no issuer
/// runs on the data directory (`baton enroll`). Blocking I/O.
pub fn add_to_graph_file(path: &std::path::Path, delta: &Graph) -> Result<(), VisibilityError> {
    let mut graph = read_graph_file(path, delta.max_edges());
    graph.merge(delta);
    write_graph_file(path, &graph)
}

fn write_graph_file(path: &std::path::Path, graph: &Graph) -> Result<(), VisibilityError> {
    let json = serde_json::to_vec(&graph.to_file()).unwrap_or_default();
    fsio::write_atomic(path, &json, Mode::Private).map_err(|source| VisibilityError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads the embedded graph file; a missing one is an empty graph, an unreadable one
/// is moved aside with a warning.
fn read_graph_file(path: &std::path::Path, max_edges: usize) -> Graph {
    let bytes = match fsio::read_bounded(path, MAX_GRAPH_FILE_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Graph::new(max_edges),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the call graph; starting with an empty one");
            return Graph::new(max_edges);
        }
    };
    match serde_json::from_slice::<GraphFile>(&bytes) {
        Ok(file) if file.version == super::graph::GRAPH_FILE_VERSION => {
            Graph::from_file(file, max_edges)
        }
        Ok(_) | Err(_) => {
            let aside = path.with_extension("json.unreadable");
            let _ = std::fs::rename(path, &aside);
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), "the call graph file is not one this version reads; set it aside and starting empty");
            Graph::new(max_edges)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://example.org/{s}")).unwrap()
    }

    fn visibility(dir: &std::path::Path, thresholds: AnomalyThresholds) -> Visibility {
        Visibility::new(
            Backend::Embedded {
                path: dir.join(GRAPH_FILE),
            },
            100,
            Duration::from_secs(86400),
            thresholds,
        )
    }

    fn kinds(v: &Visibility) -> Vec<AnomalyKind> {
        v.recent_anomalies().iter().map(|a| a.kind).collect()
    }

    #[test]
    fn new_audience_is_signalled_only_for_an_established_caller() {
        let dir = tempfile::tempdir().unwrap();
        let v = visibility(dir.path(), AnomalyThresholds::default());
        let (orders, payments, ledger) = (id("orders"), id("payments"), id("ledger"));
        // A young caller finds its audiences without alarms.
        v.issued(&orders, &payments, None, 1, 0, 1000);
        v.issued(&orders, &ledger, None, 1, 0, 1100);
        assert!(kinds(&v).is_empty());
        // An hour later, a known audience is quiet and a new one is signalled, once.
        v.issued(&orders, &payments, None, 1, 0, 1000 + 3600);
        assert!(kinds(&v).is_empty());
        let admin = id("admin");
        v.issued(&orders, &admin, Some("b a"), 1, 0, 1000 + 3601);
        v.issued(&orders, &admin, None, 1, 0, 1000 + 3602);
        assert_eq!(kinds(&v), [AnomalyKind::NewAudience]);
        let a = &v.recent_anomalies()[0];
        assert_eq!(a.caller.as_deref(), Some(orders.as_str()));
        assert_eq!(a.audience.as_deref(), Some(admin.as_str()));
        // The scope was normalized into the edge's key.
        let g = v.snapshot(1000 + 3602).unwrap();
        let scopes: Vec<&str> = g.edges().map(|(k, _)| &*k.scope).collect();
        assert!(scopes.contains(&"a b"), "{scopes:?}");
    }

    #[test]
    fn a_rate_far_above_the_callers_own_average_is_a_spike() {
        let dir = tempfile::tempdir().unwrap();
        let t = AnomalyThresholds {
            rate_window: Duration::from_secs(10),
            rate_factor: 5,
            rate_min: 20,
            ..AnomalyThresholds::default()
        };
        let v = visibility(dir.path(), t);
        let (a, b) = (id("a"), id("b"));
        // Ten windows of 10 tokens: the baseline.
        for w in 0..10 {
            v.issued(&a, &b, None, 10, 0, w * 10);
        }
        // 40 in one window: 4× the average, not a spike.
        v.issued(&a, &b, None, 40, 0, 100);
        assert!(kinds(&v).is_empty());
        // That window raised the average to 16: 60 in the next is not a spike, 90 is.
        v.issued(&a, &b, None, 30, 0, 110);
        v.issued(&a, &b, None, 30, 0, 111);
        assert!(kinds(&v).is_empty());
        v.issued(&a, &b, None, 30, 0, 112);
        assert_eq!(kinds(&v), [AnomalyKind::RateSpike]);
        let spike = &v.recent_anomalies()[0];
        assert_eq!((spike.observed, spike.threshold), (90.0, 80.0));
        // Once per window.
        v.issued(&a, &b, None, 30, 0, 113);
        assert_eq!(kinds(&v).len(), 1);
        // A caller whose history came from the store has no rate baseline yet: its
        // first window after a restart is not a spike.
        let old = id("old");
        let mut graph = Graph::new(10);
        graph.record(
            EdgeRef {
                caller: old.as_str(),
                audience: b.as_str(),
                scope: "",
            },
            EdgeEvent::Issued(5),
            0,
        );
        v.seed(&graph);
        v.issued(&old, &b, None, 10_000, 0, 500);
        assert_eq!(kinds(&v).len(), 1);
        // A caller with no history does not spike whatever its first window holds.
        let c = id("c");
        v.issued(&c, &b, None, 10_000, 0, 120);
        assert_eq!(kinds(&v).len(), 1);
    }

    #[test]
    fn bursts_of_attestation_failures_and_replays_are_signalled_once_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let t = AnomalyThresholds {
            burst_window: Duration::from_secs(60),
            attestation_failures: 3,
            replays: 2,
            ..AnomalyThresholds::default()
        };
        let v = visibility(dir.path(), t);
        v.attestation_failed(60);
        v.attestation_failed(61);
        assert!(kinds(&v).is_empty());
        v.attestation_failed(62);
        v.attestation_failed(63);
        assert_eq!(kinds(&v), [AnomalyKind::AttestationFailures]);
        // The next window counts afresh.
        v.attestation_failed(125);
        assert_eq!(kinds(&v).len(), 1);
        v.replayed(Some(&id("x")), 130);
        v.replayed(None, 131);
        assert_eq!(kinds(&v)[0], AnomalyKind::Replays);
    }

    #[test]
    fn the_embedded_graph_survives_a_restart_and_keeps_baselines() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let v = visibility(dir.path(), AnomalyThresholds::default());
        v.issued(&a, &b, None, 3, 5000, 100);
        v.denied(
            &a,
            "spiffe://example.org/c",
            None,
            "audience_not_allowed",
            101,
        );
        v.enrolled(&c, 9000, 102);
        v.flush(200).unwrap();
        // A flush with nothing new writes nothing; the next record is written.
        let file = dir.path().join(GRAPH_FILE);
        let written = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        v.flush(205).unwrap();
        assert!(!file.exists());
        v.enrolled(&c, 9000, 102);
        v.flush(210).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), written);
        drop(v);

        let v = visibility(dir.path(), AnomalyThresholds::default());
        v.load(10_000).unwrap();
        let g = v.snapshot(10_000).unwrap();
        assert_eq!(g.len(), 2);
        let ids: HashMap<&str, _> = g.identities().collect();
        assert_eq!(ids[a.as_str()].cert_not_after, 5000);
        assert_eq!(ids[c.as_str()].enrolled_at, 102);
        // The baseline came back: b is a known audience of a (no signal), c is not.
        v.issued(&a, &b, None, 1, 0, 10_000);
        assert!(kinds(&v).is_empty());
        v.issued(&a, &c, None, 1, 0, 10_001);
        assert_eq!(kinds(&v), [AnomalyKind::NewAudience]);
    }

    #[test]
    fn an_unreadable_graph_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(GRAPH_FILE), b"{not json").unwrap();
        let v = visibility(dir.path(), AnomalyThresholds::default());
        v.load(0).unwrap();
        assert!(v.snapshot(0).unwrap().is_empty());
        assert!(dir.path().join("graph.json.unreadable").is_file());
    }
}
