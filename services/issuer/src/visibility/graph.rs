//! The call graph's records: one aggregate per (caller, audience, scope) edge and one
//! per identity, in a map with a fixed bound. Never one record per token.
//!
//! A [`Graph`] is what the issuer keeps in memory, what the embedded store writes to
//! the data directory, and (as the changes since the last flush) what a replica adds to
//! the distributed store.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

use serde::{Deserialize, Serialize};

/// The denial reasons an edge counts, in the order of [`EdgeStats::denied`]: the token
/// endpoint's refusals of an attested caller. Any other reason counts as `other`.
pub const DENIAL_REASONS: [&str; 4] = [
    "audience_not_allowed",
    "scope_not_allowed",
    "rate_limited",
    "other",
];

/// Minutes of per-minute counts kept per edge: the rate over the last hour.
pub const MINUTES: usize = 60;

/// The index of `reason` in [`DENIAL_REASONS`].
pub fn denial_index(reason: &str) -> usize {
    DENIAL_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(DENIAL_REASONS.len() - 1)
}

/// One edge: a caller asking for tokens for one audience with one scope (`""`: none;
/// scope-tokens sorted, so `a b` and `b a` are one edge).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeKey {
    /// The attested caller's SPIFFE ID.
    pub caller: Box<str>,
    /// The audience it asked for (as asked: a denied request may name anything).
    pub audience: Box<str>,
    /// The scope, normalized; empty when none was asked for.
    pub scope: Box<str>,
}

/// An [`EdgeKey`] borrowed from a request, to find an edge without allocating. Hashes
/// exactly as the owned key does (same fields, same order, `str` hashing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EdgeRef<'a> {
    /// See [`EdgeKey::caller`].
    pub caller: &'a str,
    /// See [`EdgeKey::audience`].
    pub audience: &'a str,
    /// See [`EdgeKey::scope`].
    pub scope: &'a str,
}

impl hashbrown::Equivalent<EdgeKey> for EdgeRef<'_> {
    fn equivalent(&self, key: &EdgeKey) -> bool {
        *self.caller == *key.caller && *self.audience == *key.audience && *self.scope == *key.scope
    }
}

impl EdgeRef<'_> {
    fn to_owned_key(self) -> EdgeKey {
        EdgeKey {
            caller: self.caller.into(),
            audience: self.audience.into(),
            scope: self.scope.into(),
        }
    }
}

impl EdgeKey {
    /// The borrowed form.
    pub fn as_ref(&self) -> EdgeRef<'_> {
        EdgeRef {
            caller: &self.caller,
            audience: &self.audience,
            scope: &self.scope,
        }
    }
}

/// Counts per minute over the last [`MINUTES`] minutes, in a ring: fixed size whatever
/// the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteRing {
    /// The newest minute counted (Unix minutes); slots older than `MINUTES` before it
    /// are zero.
    newest: i64,
    slots: [u32; MINUTES],
}

impl Default for MinuteRing {
    fn default() -> Self {
        Self {
            newest: i64::MIN,
            slots: [0; MINUTES],
        }
    }
}

impl MinuteRing {
    fn slot(minute: i64) -> usize {
        // rem_euclid of a positive modulus is in 0..MINUTES.
        minute.rem_euclid(MINUTES as i64) as usize
    }

    /// Moves the ring forward to `minute`, zeroing the minutes it skips.
    fn advance(&mut self, minute: i64) {
        if minute <= self.newest {
            return;
        }
        if self.newest == i64::MIN || minute - self.newest >= MINUTES as i64 {
            self.slots = [0; MINUTES];
        } else {
            for m in self.newest + 1..=minute {
                self.slots[Self::slot(m)] = 0;
            }
        }
        self.newest = minute;
    }

    /// Adds `n` to `minute`; a minute already out of the window is ignored.
    pub fn add(&mut self, minute: i64, n: u32) {
        self.advance(minute);
        if minute > self.newest - MINUTES as i64 {
            let slot = &mut self.slots[Self::slot(minute)];
            *slot = slot.saturating_add(n);
        }
    }

    /// The count of one minute (0 outside the window).
    pub fn get(&self, minute: i64) -> u32 {
        if self.newest == i64::MIN || minute > self.newest || minute <= self.newest - MINUTES as i64
        {
            0
        } else {
            self.slots[Self::slot(minute)]
        }
    }

    /// The minutes with a count, oldest first: `(unix minute, count)`.
    pub fn counts(&self) -> impl Iterator<Item = (i64, u32)> + '_ {
        let start = self.newest.saturating_sub(MINUTES as i64 - 1);
        (start..=self.newest)
            .filter(move |_| self.newest != i64::MIN)
            .map(|m| (m, self.get(m)))
            .filter(|&(_, n)| n > 0)
    }

    /// Events in the 60 seconds before `now` (Unix seconds): this minute's count plus
    /// the part of the previous minute's that falls in the window, assuming it spread
    /// evenly (the sliding-window estimate).
    pub fn last_minute(&self, now: i64) -> f64 {
        let minute = now.div_euclid(60);
        let into = now.rem_euclid(60) as f64 / 60.0;
        f64::from(self.get(minute)) + f64::from(self.get(minute - 1)) * (1.0 - into)
    }

    /// Events in the hour up to `now` (the last 60 whole minutes, this one included).
    pub fn last_hour(&self, now: i64) -> u64 {
        let minute = now.div_euclid(60);
        (minute - MINUTES as i64 + 1..=minute)
            .map(|m| u64::from(self.get(m)))
            .sum()
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (minute, n) in other.counts() {
            self.add(minute, n);
        }
    }
}

impl Serialize for MinuteRing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.counts())
    }
}

impl<'de> Deserialize<'de> for MinuteRing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let counts = Vec::<(i64, u32)>::deserialize(d)?;
        let mut ring = Self::default();
        for (minute, n) in counts {
            ring.add(minute, n);
        }
        Ok(ring)
    }
}

/// What is known about one edge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// Tokens issued.
    pub issued: u64,
    /// Refusals, by [`DENIAL_REASONS`] index.
    pub denied: [u64; DENIAL_REASONS.len()],
    /// First request, Unix seconds.
    pub first_seen: i64,
    /// Last request, Unix seconds.
    pub last_seen: i64,
    /// Last token issued, Unix seconds; 0 when none ever was.
    pub last_issued: i64,
    /// Tokens issued per minute, over the last hour.
    pub minutes: MinuteRing,
}

impl EdgeStats {
    fn new(now: i64) -> Self {
        Self {
            first_seen: now,
            last_seen: now,
            ..Self::default()
        }
    }

    /// Every refusal, whatever the reason.
    pub fn denied_total(&self) -> u64 {
        self.denied.iter().sum()
    }

    /// Adds `other`'s counts and widens the times to cover both.
    pub fn merge(&mut self, other: &Self) {
        self.issued = self.issued.saturating_add(other.issued);
        for (mine, theirs) in self.denied.iter_mut().zip(other.denied) {
            *mine = mine.saturating_add(theirs);
        }
        self.first_seen = match (self.first_seen, other.first_seen) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.last_seen = self.last_seen.max(other.last_seen);
        self.last_issued = self.last_issued.max(other.last_issued);
        self.minutes.merge(&other.minutes);
    }

    /// Eviction order: edges that never got a token go first (a caller probing
    /// audiences must not push real edges out), then the least recently seen.
    fn eviction_rank(&self) -> (bool, i64) {
        (self.issued > 0, self.last_seen)
    }
}

/// What is known about one identity beyond its edges: its certificate and enrollment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityStats {
    /// End of validity of the newest certificate seen for it (attested or issued),
    /// Unix seconds; 0 when none was seen.
    #[serde(default)]
    pub cert_not_after: i64,
    /// Last successful attestation, Unix seconds; 0 when never.
    #[serde(default)]
    pub last_attested: i64,
    /// Last certificate issued to it by this trust domain (`baton enroll` or
    /// `POST /v1/svid`), Unix seconds; 0 when never.
    #[serde(default)]
    pub enrolled_at: i64,
}

impl IdentityStats {
    /// Keeps the newest of each.
    pub fn merge(&mut self, other: &Self) {
        self.cert_not_after = self.cert_not_after.max(other.cert_not_after);
        self.last_attested = self.last_attested.max(other.last_attested);
        self.enrolled_at = self.enrolled_at.max(other.enrolled_at);
    }

    fn last_activity(&self) -> i64 {
        self.last_attested.max(self.enrolled_at)
    }
}

/// One change to an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeEvent {
    /// `n` tokens issued in one request.
    Issued(u32),
    /// One request refused for the [`DENIAL_REASONS`] reason at this index.
    Denied(usize),
}

/// Whether a [`Graph::record`] found the edge, made it, or had no room for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The edge was known.
    Existing,
    /// The edge is new.
    New,
    /// The graph is full of edges that rank above this one: not recorded.
    Dropped,
}

type Edges = hashbrown::HashMap<EdgeKey, EdgeStats, RandomState>;

/// Edges and identities with a fixed bound on each. Full, it evicts a batch of the
/// lowest-ranked edges (never-issued first, then least recently seen), so the cost of
/// eviction is spread over many insertions.
#[derive(Debug, Clone)]
pub struct Graph {
    edges: Edges,
    identities: HashMap<Box<str>, IdentityStats>,
    max_edges: usize,
    max_identities: usize,
}

impl Graph {
    /// An empty graph holding at most `max_edges` edges and as many identities.
    pub fn new(max_edges: usize) -> Self {
        Self {
            edges: Edges::with_hasher(RandomState::new()),
            identities: HashMap::new(),
            max_edges: max_edges.max(1),
            max_identities: max_edges.max(1),
        }
    }

    /// The bound on edges.
    pub fn max_edges(&self) -> usize {
        self.max_edges
    }

    /// Number of edges.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Whether there is no edge and no identity.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty() && self.identities.is_empty()
    }

    /// The hash of an edge key in this graph (for sharding by the same hasher).
    pub fn hash_of(&self, edge: EdgeRef<'_>) -> u64 {
        self.edges.hasher().hash_one(edge)
    }

    /// Records `event` on `edge` at Unix time `now`.
    pub fn record(&mut self, edge: EdgeRef<'_>, event: EdgeEvent, now: i64) -> Recorded {
        let (stats, recorded) = match self.edges.get_mut(&edge) {
            Some(stats) => (stats, Recorded::Existing),
            None => {
                if self.edges.len() >= self.max_edges {
                    let incoming = matches!(event, EdgeEvent::Issued(_));
                    if !self.evict_for(incoming) {
                        return Recorded::Dropped;
                    }
                }
                let stats = self
                    .edges
                    .entry(edge.to_owned_key())
                    .or_insert_with(|| EdgeStats::new(now));
                (stats, Recorded::New)
            }
        };
        stats.last_seen = stats.last_seen.max(now);
        match event {
            EdgeEvent::Issued(n) => {
                stats.issued = stats.issued.saturating_add(u64::from(n));
                stats.last_issued = stats.last_issued.max(now);
                stats.minutes.add(now.div_euclid(60), n);
            }
            EdgeEvent::Denied(reason) => {
                let i = reason.min(DENIAL_REASONS.len() - 1);
                stats.denied[i] = stats.denied[i].saturating_add(1);
            }
        }
        recorded
    }

    /// Makes room for one edge: evicts the lowest-ranked eighth of the edges. An edge
    /// that would get no token (`incoming_issued` false) is not worth evicting an edge
    /// that got some: then only never-issued edges go, and if there are none the
    /// newcomer is dropped.
    fn evict_for(&mut self, incoming_issued: bool) -> bool {
        let batch = (self.max_edges / 8).max(1);
        let mut ranked: Vec<((bool, i64), &EdgeKey)> = self
            .edges
            .iter()
            .filter(|(_, s)| incoming_issued || s.issued == 0)
            .map(|(k, s)| (s.eviction_rank(), k))
            .collect();
        if ranked.is_empty() {
            return false;
        }
        let batch = batch.min(ranked.len());
        ranked.select_nth_unstable_by_key(batch - 1, |(rank, _)| *rank);
        let doomed: Vec<EdgeKey> = ranked[..batch].iter().map(|(_, k)| (*k).clone()).collect();
        for key in doomed {
            self.edges.remove(&key);
        }
        true
    }

    /// Notes a successful attestation of `id` with a certificate valid until
    /// `cert_not_after`.
    pub fn attested(&mut self, id: &str, cert_not_after: i64, now: i64) {
        let stats = self.identity_mut(id);
        if let Some(stats) = stats {
            stats.last_attested = stats.last_attested.max(now);
            stats.cert_not_after = stats.cert_not_after.max(cert_not_after);
        }
    }

    /// Notes a certificate issued to `id`, valid until `cert_not_after`.
    pub fn enrolled(&mut self, id: &str, cert_not_after: i64, now: i64) {
        if let Some(stats) = self.identity_mut(id) {
            stats.enrolled_at = stats.enrolled_at.max(now);
            stats.cert_not_after = stats.cert_not_after.max(cert_not_after);
        }
    }

    /// Merges `stats` into the record of `id`.
    pub fn merge_identity(&mut self, id: &str, stats: &IdentityStats) {
        if let Some(mine) = self.identity_mut(id) {
            mine.merge(stats);
        }
    }

    fn identity_mut(&mut self, id: &str) -> Option<&mut IdentityStats> {
        if !self.identities.contains_key(id) {
            if self.identities.len() >= self.max_identities {
                // Identities are attested or enrolled, not made up by callers: dropping
                // the least recently active one is fair.
                let oldest = self
                    .identities
                    .iter()
                    .min_by_key(|(_, s)| s.last_activity())
                    .map(|(k, _)| k.clone())?;
                self.identities.remove(&oldest);
            }
            self.identities.insert(id.into(), IdentityStats::default());
        }
        self.identities.get_mut(id)
    }

    /// Merges an edge's stats (from a store or another graph).
    pub fn merge_edge(&mut self, key: EdgeKey, stats: &EdgeStats) -> Recorded {
        if let Some(mine) = self.edges.get_mut(&key) {
            mine.merge(stats);
            return Recorded::Existing;
        }
        if self.edges.len() >= self.max_edges && !self.evict_for(stats.issued > 0) {
            return Recorded::Dropped;
        }
        self.edges.insert(key, stats.clone());
        Recorded::New
    }

    /// Adds everything in `other`.
    pub fn merge(&mut self, other: &Self) {
        for (key, stats) in &other.edges {
            self.merge_edge(key.clone(), stats);
        }
        for (id, stats) in &other.identities {
            self.merge_identity(id, stats);
        }
    }

    /// Drops edges last seen before `cutoff`, and identities with no activity since;
    /// returns how many edges went.
    pub fn prune(&mut self, cutoff: i64) -> usize {
        let before = self.edges.len();
        self.edges.retain(|_, s| s.last_seen >= cutoff);
        self.identities
            .retain(|_, s| s.last_activity() >= cutoff || s.cert_not_after >= cutoff);
        before - self.edges.len()
    }

    /// Every edge, in no particular order.
    pub fn edges(&self) -> impl Iterator<Item = (&EdgeKey, &EdgeStats)> {
        self.edges.iter()
    }

    /// Every identity record.
    pub fn identities(&self) -> impl Iterator<Item = (&str, &IdentityStats)> {
        self.identities.iter().map(|(k, v)| (&**k, v))
    }

    /// The stats of one edge.
    pub fn edge(&self, edge: EdgeRef<'_>) -> Option<&EdgeStats> {
        self.edges.get(&edge)
    }

    /// Takes every record out, leaving the graph empty with the same bounds.
    pub fn take(&mut self) -> Self {
        let empty = Self {
            edges: Edges::with_hasher(self.edges.hasher().clone()),
            identities: HashMap::new(),
            max_edges: self.max_edges,
            max_identities: self.max_identities,
        };
        std::mem::replace(self, empty)
    }
}

/// The on-disk and wire form of a [`Graph`].
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    /// Format version.
    pub version: u32,
    /// Edges.
    pub edges: Vec<(EdgeKey, EdgeStats)>,
    /// Identities.
    pub identities: Vec<(String, IdentityStats)>,
}

/// Version of [`GraphFile`].
pub const GRAPH_FILE_VERSION: u32 = 1;

impl Graph {
    /// The records, sorted, for writing.
    pub fn to_file(&self) -> GraphFile {
        let mut edges: Vec<(EdgeKey, EdgeStats)> = self
            .edges
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        edges.sort_by(|a, b| a.0.cmp(&b.0));
        let mut identities: Vec<(String, IdentityStats)> = self
            .identities
            .iter()
            .map(|(k, s)| (k.to_string(), s.clone()))
            .collect();
        identities.sort_by(|a, b| a.0.cmp(&b.0));
        GraphFile {
            version: GRAPH_FILE_VERSION,
            edges,
            identities,
        }
    }

    /// A graph of at most `max_edges` holding what `file` holds (lowest-ranked edges
    /// evicted when it holds more).
    pub fn from_file(file: GraphFile, max_edges: usize) -> Self {
        let mut graph = Self::new(max_edges);
        for (key, stats) in file.edges {
            graph.merge_edge(key, &stats);
        }
        for (id, stats) in file.identities {
            graph.merge_identity(&id, &stats);
        }
        graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge<'a>(caller: &'a str, audience: &'a str) -> EdgeRef<'a> {
        EdgeRef {
            caller,
            audience,
            scope: "",
        }
    }

    #[test]
    fn borrowed_and_owned_keys_find_the_same_edge() {
        let mut g = Graph::new(10);
        assert_eq!(
            g.record(edge("a", "b"), EdgeEvent::Issued(3), 100),
            Recorded::New
        );
        assert_eq!(
            g.record(edge("a", "b"), EdgeEvent::Issued(2), 160),
            Recorded::Existing
        );
        assert_eq!(
            g.record(
                edge("a", "b"),
                EdgeEvent::Denied(denial_index("rate_limited")),
                170
            ),
            Recorded::Existing
        );
        let s = g.edge(edge("a", "b")).unwrap();
        assert_eq!(
            (s.issued, s.first_seen, s.last_seen, s.last_issued),
            (5, 100, 170, 160)
        );
        assert_eq!(s.denied, [0, 0, 1, 0]);
        assert_eq!(denial_index("never heard of it"), 3);
        // Scope is part of the edge.
        let scoped = EdgeRef {
            scope: "x",
            ..edge("a", "b")
        };
        assert!(g.edge(scoped).is_none());
    }

    #[test]
    fn minute_ring_keeps_one_hour_and_estimates_the_last_minute() {
        let mut r = MinuteRing::default();
        r.add(1000, 10);
        r.add(1001, 6);
        assert_eq!(r.get(1000), 10);
        assert_eq!(r.last_hour(1001 * 60 + 30), 16);
        // Half-way through minute 1001: all of it plus half of minute 1000.
        assert!((r.last_minute(1001 * 60 + 30) - 11.0).abs() < 1e-9);
        // 59 minutes later minute 1000 has left the hour, 1001 has not.
        r.add(1060, 1);
        assert_eq!(r.get(1000), 0);
        assert_eq!(r.get(1001), 6);
        assert_eq!(r.last_hour(1060 * 60), 7);
        // An update too old for the window is ignored, not wrapped onto a live slot.
        r.add(990, 5);
        assert_eq!(r.last_hour(1060 * 60), 7);
        // A long silence clears everything.
        r.add(5000, 2);
        assert_eq!(r.counts().collect::<Vec<_>>(), [(5000, 2)]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<MinuteRing>(&json).unwrap(), r);
    }

    #[test]
    fn a_full_graph_evicts_never_issued_edges_before_used_ones() {
        let mut g = Graph::new(8);
        for i in 0..4 {
            g.record(
                edge("a", &format!("used{i}")),
                EdgeEvent::Issued(1),
                100 + i,
            );
        }
        for i in 0..4 {
            g.record(
                edge("a", &format!("probe{i}")),
                EdgeEvent::Denied(0),
                200 + i,
            );
        }
        assert_eq!(g.len(), 8);
        // A new used edge evicts the oldest never-issued one, even though used edges
        // are older.
        g.record(edge("b", "new"), EdgeEvent::Issued(1), 300);
        assert_eq!(g.len(), 8);
        assert!(g.edge(edge("a", "probe0")).is_none());
        assert!(g.edge(edge("a", "used0")).is_some());
        // Fill the probes back with denials until only used edges would be left to evict.
        let mut g = Graph::new(4);
        for i in 0..4 {
            g.record(
                edge("a", &format!("used{i}")),
                EdgeEvent::Issued(1),
                100 + i,
            );
        }
        assert_eq!(
            g.record(edge("x", "probe"), EdgeEvent::Denied(0), 500),
            Recorded::Dropped
        );
        assert_eq!(g.len(), 4);
        // A used newcomer evicts the least recently seen used edge.
        assert_eq!(
            g.record(edge("y", "z"), EdgeEvent::Issued(1), 500),
            Recorded::New
        );
        assert!(g.edge(edge("a", "used0")).is_none());
        assert!(g.len() <= 4);
    }

    #[test]
    fn pruning_drops_stale_edges_and_identities() {
        let mut g = Graph::new(10);
        g.record(edge("a", "old"), EdgeEvent::Issued(1), 100);
        g.record(edge("a", "new"), EdgeEvent::Issued(1), 1000);
        g.attested("spiffe://t/old", 150, 100);
        g.attested("spiffe://t/new", 5000, 1000);
        assert_eq!(g.prune(500), 1);
        assert!(g.edge(edge("a", "new")).is_some());
        let ids: Vec<&str> = g.identities().map(|(id, _)| id).collect();
        assert_eq!(ids, ["spiffe://t/new"]);
    }

    #[test]
    fn merging_adds_counts_and_widens_times() {
        let mut a = Graph::new(10);
        let mut b = Graph::new(10);
        a.record(edge("c", "d"), EdgeEvent::Issued(2), 120);
        b.record(edge("c", "d"), EdgeEvent::Issued(3), 60);
        b.record(edge("c", "d"), EdgeEvent::Denied(1), 600);
        b.enrolled("spiffe://t/c", 9000, 60);
        a.merge(&b);
        let s = a.edge(edge("c", "d")).unwrap();
        assert_eq!(
            (s.issued, s.first_seen, s.last_seen, s.last_issued),
            (5, 60, 600, 120)
        );
        assert_eq!(s.minutes.last_hour(600), 5);
        let file = a.to_file();
        let json = serde_json::to_vec(&file).unwrap();
        let back = Graph::from_file(serde_json::from_slice(&json).unwrap(), 10);
        assert_eq!(back.edge(edge("c", "d")), Some(s));
        assert_eq!(back.identities().count(), 1);
    }
}
