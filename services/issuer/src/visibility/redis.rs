//! The call graph in the distributed store (SPEC §7 "Distributed", §9 `graph`): every
//! issuer replica aggregates its own [`Graph`] in memory and periodically *adds* the
//! changes since its last flush to Redis; an admin read loads the sum of all replicas.
//!
//! Layout, every key under the `{baton}` hash tag:
//!
//! - `{baton}:graph:edge:<id>`, a hash per edge: `caller`, `audience`, `scope`,
//!   `issued`, `d0`..`d3` (refusals by [`DENIAL_REASONS`](super::graph::DENIAL_REASONS)
//!   index), `first`, `last`, `last_issued` (Unix seconds) and `m:<unix minute>`, the
//!   tokens issued in that minute (only the last hour is kept, plus an hour of a fast
//!   clock's future). `<id>` is the hex of the first 128 bits of the SHA-256 of the
//!   length-prefixed caller, audience and scope: fixed length whatever a caller asks for,
//!   and unambiguous even if an audience holds a NUL.
//! - `{baton}:graph:edges`, a sorted set of edge ids ranked for eviction: the score is
//!   `last` plus [`ISSUED_BIAS`] once the edge got a token, so never-issued edges rank
//!   below every used one, then the least recently seen go first (as [`Graph`] evicts).
//! - `{baton}:graph:ids`, a hash: SPIFFE ID → JSON [`IdentityStats`]; and
//!   `{baton}:graph:ids:seen`, a sorted set of the same IDs scored by their newest time,
//!   for retention. At most `max_edges` identities: a new one is refused when full
//!   (until retention frees room).
//!
//! Concurrency: each write is a Lua script, run atomically by the server, that adds
//! counts (`HINCRBY`) and widens times (min/max), so replicas flushing at once sum
//! exactly. Removal (retention, eviction) deletes an edge only if its rank is still the
//! one read just before, so an edge another replica refreshed meanwhile is kept.
//!
//! The store's contents are not trusted: a field that does not parse, an id that does
//! not match its caller, audience and scope, or a key of the wrong type is skipped by
//! [`RedisGraph::load`] (and repaired or replaced by the next [`RedisGraph::add`]),
//! never a panic or an error.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{RedisResult, Script};
use ring::digest;

use super::graph::{EdgeKey, EdgeRef, EdgeStats, Graph, IdentityStats, MINUTES};
use crate::fsio::hex;
use crate::shared::{SharedStore, SharedStoreError};

/// Added to the rank of an edge that got at least one token: above any Unix time the
/// store keeps ([`MAX_TIME`]), and with it still exact in a double.
pub const ISSUED_BIAS: i64 = 1 << 40;
/// Latest time sent to the store (year 2106): Lua numbers are doubles, and these print
/// exactly with `%d`.
const MAX_TIME: i64 = u32::MAX as i64;
const _: () = assert!(MAX_TIME < ISSUED_BIAS && ISSUED_BIAS + MAX_TIME < 1 << 53);

/// Edges per add script: bounds one script's run time (and thus the store's pause).
const EDGES_PER_SCRIPT: usize = 64;
/// Identities per add script.
const IDS_PER_SCRIPT: usize = 256;
/// Records read or removed per round trip.
const CHUNK: usize = 500;

const EDGE_PREFIX: &str = "graph:edge:";
const INDEX: &str = "graph:edges";
const IDS: &str = "graph:ids";
const IDS_SEEN: &str = "graph:ids:seen";

/// A hash's fields and values as read, unchecked.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Lua shared by the add scripts: `time_of` (a stored time, or nil if it is not one),
/// `incr` (`HINCRBY` that repairs a field someone else wrote and saturates on overflow)
/// and `own` (deletes a key of the wrong type: it would fail the script half-way, after
/// some of its writes, and a retry would count them twice).
macro_rules! helpers_lua {
    () => {
        r#"
local MAX_TIME = 4294967295
local MAX_COUNT = '9223372036854775807'
local function time_of(v)
  local n = tonumber(v)
  if n and n >= 0 and n <= MAX_TIME and n == math.floor(n) then return n end
  return nil
end
local function incr(key, field, by)
  local r = redis.pcall('HINCRBY', key, field, by)
  if type(r) == 'number' then return r end
  local old = redis.call('HGET', key, field)
  if old and string.match(old, '^%d+$') and tonumber(old) + tonumber(by) >= 9.2e18 then
    r = MAX_COUNT
  else
    r = by
  end
  redis.call('HSET', key, field, r)
  return tonumber(r)
end
local function own(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then redis.call('DEL', key) end
end
"#
    };
}

/// Adds edges. `KEYS[1]` the index, `KEYS[1 + i]` edge i's hash. `ARGV[1]`, `ARGV[2]`:
/// the oldest and newest minute kept; `ARGV[3]`: [`ISSUED_BIAS`]; then per edge: id,
/// caller, audience, scope, issued, d0, d1, d2, d3, first, last, last_issued, the number
/// of minutes n, and n (minute, count) pairs.
const ADD_EDGES_LUA: &str = concat!(
    helpers_lua!(),
    r#"
local oldest = tonumber(ARGV[1])
local newest = tonumber(ARGV[2])
local bias = tonumber(ARGV[3])
own(KEYS[1], 'zset')
for k = 2, #KEYS do own(KEYS[k], 'hash') end
local a = 4
for k = 2, #KEYS do
  local key = KEYS[k]
  local id = ARGV[a]
  redis.call('HSET', key, 'caller', ARGV[a + 1], 'audience', ARGV[a + 2], 'scope', ARGV[a + 3])
  local issued = incr(key, 'issued', ARGV[a + 4])
  for d = 0, 3 do incr(key, 'd' .. d, ARGV[a + 5 + d]) end
  local first = tonumber(ARGV[a + 9])
  local last = tonumber(ARGV[a + 10])
  local last_issued = tonumber(ARGV[a + 11])
  local old = time_of(redis.call('HGET', key, 'first'))
  if old and old > 0 and (first == 0 or old < first) then first = old end
  old = time_of(redis.call('HGET', key, 'last'))
  if old and old > last then last = old end
  old = time_of(redis.call('HGET', key, 'last_issued'))
  if old and old > last_issued then last_issued = old end
  redis.call('HSET', key, 'first', string.format('%d', first), 'last', string.format('%d', last),
    'last_issued', string.format('%d', last_issued))
  local n = tonumber(ARGV[a + 12])
  a = a + 13
  for _ = 1, n do
    local minute = tonumber(ARGV[a])
    if minute >= oldest and minute <= newest then incr(key, 'm:' .. ARGV[a], ARGV[a + 1]) end
    a = a + 2
  end
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, 2) == 'm:' then
      local m = tonumber(string.sub(f, 3))
      if not m or m < oldest or m > newest then redis.call('HDEL', key, f) end
    end
  end
  local score = last
  if issued > 0 then score = score + bias end
  redis.call('ZADD', KEYS[1], string.format('%d', score), id)
end
return 0
"#
);

/// Merges identities, keeping the newest of each time. `KEYS[1]` the identities' hash,
/// `KEYS[2]` their ranks; `ARGV[1]` the most identities kept; then per identity: id,
/// cert_not_after, last_attested, enrolled_at.
const ADD_IDS_LUA: &str = concat!(
    helpers_lua!(),
    r#"
own(KEYS[1], 'hash')
own(KEYS[2], 'zset')
local max = tonumber(ARGV[1])
local function field(t, name)
  local n = time_of(t[name])
  if n then return n end
  return 0
end
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  local old = redis.call('HGET', KEYS[1], id)
  if old or redis.call('HLEN', KEYS[1]) < max then
    local cna = tonumber(ARGV[i + 1])
    local la = tonumber(ARGV[i + 2])
    local ea = tonumber(ARGV[i + 3])
    if old then
      local ok, t = pcall(cjson.decode, old)
      if ok and type(t) == 'table' then
        cna = math.max(cna, field(t, 'cert_not_after'))
        la = math.max(la, field(t, 'last_attested'))
        ea = math.max(ea, field(t, 'enrolled_at'))
      end
    end
    redis.call('HSET', KEYS[1], id, string.format(
      '{"cert_not_after":%d,"last_attested":%d,"enrolled_at":%d}', cna, la, ea))
    redis.call('ZADD', KEYS[2], string.format('%d', math.max(cna, la, ea)), id)
  end
end
return 0
"#
);

/// Removes edges whose rank is still the one read. `KEYS[1]` the index, `KEYS[1 + i]`
/// edge i's hash; `ARGV[2i - 1]`, `ARGV[2i]` its id and rank. Returns how many went.
const DROP_EDGES_LUA: &str = r#"
local removed = 0
for k = 2, #KEYS do
  local id = ARGV[2 * k - 3]
  local s = redis.call('ZSCORE', KEYS[1], id)
  if s and tonumber(s) == tonumber(ARGV[2 * k - 2]) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', KEYS[k])
    removed = removed + 1
  end
end
return removed
"#;

/// Removes identities whose rank is still the one read. `KEYS[1]` the ranks, `KEYS[2]`
/// the identities' hash; `ARGV` (id, rank) pairs. Returns how many went.
const DROP_IDS_LUA: &str = r#"
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'hash' then redis.call('DEL', KEYS[2]) end
local removed = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    removed = removed + 1
  end
end
return removed
"#;

/// The call graph of every replica, in the shared store.
///
/// ```no_run
/// use std::time::Duration;
/// use baton_issuer::shared::SharedStore;
/// use baton_issuer::visibility::graph::{EdgeEvent, EdgeRef, Graph};
/// use baton_issuer::visibility::redis::RedisGraph;
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SharedStore::connect("redis://127.0.0.1:6379", Duration::from_secs(2))?;
/// let shared = RedisGraph::new(store, 10_000, Duration::from_secs(30 * 86_400));
/// let mut local = Graph::new(10_000);
/// let edge = EdgeRef { caller: "spiffe://t/a", audience: "spiffe://t/b", scope: "" };
/// local.record(edge, EdgeEvent::Issued(1), 1_700_000_000);
/// shared.add(&local.take(), 1_700_000_005)?;
/// let all = shared.load(1_700_000_010)?;
/// assert_eq!(all.edge(edge).map(|s| s.issued), Some(1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisGraph {
    store: SharedStore,
    max_edges: usize,
    retention: Duration,
}

static ADD_EDGES: LazyLock<Script> = LazyLock::new(|| Script::new(ADD_EDGES_LUA));
static ADD_IDS: LazyLock<Script> = LazyLock::new(|| Script::new(ADD_IDS_LUA));
static DROP_EDGES: LazyLock<Script> = LazyLock::new(|| Script::new(DROP_EDGES_LUA));
static DROP_IDS: LazyLock<Script> = LazyLock::new(|| Script::new(DROP_IDS_LUA));

impl RedisGraph {
    /// The graph in `store`, holding at most `max_edges` edges (and as many identities)
    /// seen within `retention`.
    pub fn new(store: SharedStore, max_edges: usize, retention: Duration) -> Self {
        Self {
            store,
            max_edges: max_edges.max(1),
            retention,
        }
    }

    /// Adds the records of `delta` (the changes since the last flush) to the store: counts
    /// summed, times widened. Then prunes edges last seen before `now` minus the
    /// retention and keeps at most `max_edges`, evicting the lowest-ranked (never-issued
    /// first, then least recently seen) plus an eighth, so eviction is not paid on every
    /// flush. Blocking I/O.
    ///
    /// Edges go in batches, each atomic: on an error, some batches may have been added.
    pub fn add(&self, delta: &Graph, now: i64) -> Result<(), SharedStoreError> {
        let mut conn = self.store.connection()?;
        let conn = &mut *conn;
        let minute = now.div_euclid(60);
        let (oldest, newest) = (minute - (MINUTES as i64 - 1), minute + MINUTES as i64);
        let window = oldest..=newest;
        let edges: Vec<(&EdgeKey, &EdgeStats)> = delta.edges().collect();
        for batch in edges.chunks(EDGES_PER_SCRIPT) {
            let mut script = ADD_EDGES.prepare_invoke();
            script
                .key(SharedStore::key(INDEX))
                .arg(oldest)
                .arg(newest)
                .arg(ISSUED_BIAS);
            for (key, stats) in batch {
                let id = edge_id(key.as_ref());
                script
                    .key(edge_key(&id))
                    .arg(&id)
                    .arg(&*key.caller)
                    .arg(&*key.audience)
                    .arg(&*key.scope)
                    .arg(count_arg(stats.issued));
                for d in stats.denied {
                    script.arg(count_arg(d));
                }
                script
                    .arg(time_arg(stats.first_seen))
                    .arg(time_arg(stats.last_seen))
                    .arg(time_arg(stats.last_issued));
                let minutes: Vec<(i64, u32)> = stats
                    .minutes
                    .counts()
                    .filter(|(m, _)| window.contains(m))
                    .collect();
                script.arg(minutes.len());
                for (m, n) in minutes {
                    script.arg(m).arg(n);
                }
            }
            script
                .invoke::<()>(conn)
                .map_err(|e| self.store.unavailable(&e))?;
        }

        let ids: Vec<(&str, &IdentityStats)> = delta.identities().collect();
        for batch in ids.chunks(IDS_PER_SCRIPT) {
            let mut script = ADD_IDS.prepare_invoke();
            script
                .key(SharedStore::key(IDS))
                .key(SharedStore::key(IDS_SEEN))
                .arg(self.max_edges);
            for (id, stats) in batch {
                script
                    .arg(*id)
                    .arg(time_arg(stats.cert_not_after))
                    .arg(time_arg(stats.last_attested))
                    .arg(time_arg(stats.enrolled_at));
            }
            script
                .invoke::<()>(conn)
                .map_err(|e| self.store.unavailable(&e))?;
        }

        self.trim(conn, now)
    }

    /// Everything in the store as one [`Graph`] of at most `max_edges`: the
    /// highest-ranked edges, with their minute counts of the hour up to `now`, and the
    /// identities; records older than the retention are left out. Malformed records are
    /// skipped. Blocking I/O.
    pub fn load(&self, now: i64) -> Result<Graph, SharedStoreError> {
        let mut conn = self.store.connection()?;
        let conn = &mut *conn;
        let cutoff = self.cutoff(now);
        let now_minute = now.div_euclid(60);
        let mut graph = Graph::new(self.max_edges);

        // A key of the wrong type answers WRONGTYPE: read as empty (the next add
        // replaces it).
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("ZREVRANGE")
            .arg(SharedStore::key(INDEX))
            .arg(0)
            .arg(self.max_edges - 1)
            .cmd("HGETALL")
            .arg(SharedStore::key(IDS));
        let (members, identities): (RedisResult<Vec<Vec<u8>>>, RedisResult<Fields>) =
            pipe.query(conn).map_err(|e| self.store.unavailable(&e))?;
        let members = members.unwrap_or_default();
        let ids: Vec<&str> = members
            .iter()
            .filter_map(|m| std::str::from_utf8(m).ok())
            .filter(|id| is_edge_id(id))
            .collect();
        for chunk in ids.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for id in chunk {
                pipe.cmd("HGETALL").arg(edge_key(id));
            }
            let hashes: Vec<RedisResult<Fields>> =
                pipe.query(conn).map_err(|e| self.store.unavailable(&e))?;
            for (id, fields) in chunk.iter().zip(hashes) {
                let Ok(fields) = fields else { continue };
                if let Some((key, stats)) = parse_edge(id, &fields, now_minute) {
                    graph.merge_edge(key, &stats);
                }
            }
        }

        for (id, value) in identities.unwrap_or_default() {
            let (Ok(id), Ok(stats)) = (
                std::str::from_utf8(&id),
                serde_json::from_slice::<IdentityStats>(&value),
            ) else {
                continue;
            };
            graph.merge_identity(id, &stats);
        }

        graph.prune(cutoff);
        Ok(graph)
    }

    /// The oldest `last_seen` kept.
    fn cutoff(&self, now: i64) -> i64 {
        let retention = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        now.saturating_sub(retention)
    }

    /// Retention and the bound on edges; retention on identities.
    fn trim(&self, conn: &mut redis::Connection, now: i64) -> Result<(), SharedStoreError> {
        let cutoff = self.cutoff(now).clamp(0, MAX_TIME + 1);
        let index = SharedStore::key(INDEX);
        // Bounds the rounds should other replicas keep adding stale edges meanwhile.
        let rounds = self.max_edges / CHUNK + 2;

        // Stale edges, in both halves of the rank: never issued, issued.
        for (min, max) in [
            ("-inf".to_owned(), format!("({cutoff}")),
            (
                ISSUED_BIAS.to_string(),
                format!("({}", ISSUED_BIAS + cutoff),
            ),
        ] {
            for _ in 0..rounds {
                let found = self.range_by_score(conn, &index, &min, &max)?;
                let removed = self.drop_edges(conn, &found)?;
                if found.len() < CHUNK || removed == 0 {
                    break;
                }
            }
        }

        // The bound: the lowest-ranked go.
        let card: usize = redis::cmd("ZCARD")
            .arg(&index)
            .query(conn)
            .map_err(|e| self.store.unavailable(&e))?;
        if card > self.max_edges {
            let mut left = (card - self.max_edges + (self.max_edges / 8).max(1)).min(card);
            while left > 0 {
                let found: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(left.min(CHUNK) - 1)
                    .arg("WITHSCORES")
                    .query(conn)
                    .map_err(|e| self.store.unavailable(&e))?;
                let removed = self.drop_edges(conn, &found)?;
                if found.is_empty() || removed == 0 {
                    break;
                }
                left = left.saturating_sub(removed);
            }
        }

        // Identities with no activity and no live certificate since the cutoff.
        let seen = SharedStore::key(IDS_SEEN);
        for _ in 0..rounds {
            let found = self.range_by_score(conn, &seen, "-inf", &format!("({cutoff}"))?;
            if found.is_empty() {
                break;
            }
            let mut script = DROP_IDS.prepare_invoke();
            script.key(&seen).key(SharedStore::key(IDS));
            for (id, score) in &found {
                script.arg(id).arg(score);
            }
            let removed: usize = script
                .invoke(conn)
                .map_err(|e| self.store.unavailable(&e))?;
            if found.len() < CHUNK || removed == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Up to [`CHUNK`] members of the sorted set `key` with a score in `min..max`
    /// (`ZRANGEBYSCORE` syntax), with their scores.
    fn range_by_score(
        &self,
        conn: &mut redis::Connection,
        key: &str,
        min: &str,
        max: &str,
    ) -> Result<Vec<(Vec<u8>, String)>, SharedStoreError> {
        redis::cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg(min)
            .arg(max)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(CHUNK)
            .query(conn)
            .map_err(|e| self.store.unavailable(&e))
    }

    /// Removes the edges `found` (id, rank) whose rank has not changed since; returns
    /// how many went.
    fn drop_edges(
        &self,
        conn: &mut redis::Connection,
        found: &[(Vec<u8>, String)],
    ) -> Result<usize, SharedStoreError> {
        if found.is_empty() {
            return Ok(0);
        }
        let mut script = DROP_EDGES.prepare_invoke();
        script.key(SharedStore::key(INDEX));
        for (id, score) in found {
            // Whatever the member is, its key stays under the hash tag: `{baton}` is the
            // first brace pair.
            let mut key = SharedStore::key(EDGE_PREFIX).into_bytes();
            key.extend_from_slice(id);
            script.key(key).arg(id).arg(score);
        }
        script.invoke(conn).map_err(|e| self.store.unavailable(&e))
    }
}

/// The id of an edge: the hex of the first 128 bits of the SHA-256 of its
/// length-prefixed parts.
fn edge_id(edge: EdgeRef<'_>) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [edge.caller, edge.audience, edge.scope] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    hex(&ctx.finish().as_ref()[..16])
}

fn is_edge_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn edge_key(id: &str) -> String {
    SharedStore::key(&format!("{EDGE_PREFIX}{id}"))
}

/// A count as the store's integers hold it (`HINCRBY` is signed 64-bit).
fn count_arg(n: u64) -> u64 {
    n.min(i64::MAX as u64)
}

/// A time as the store keeps it: within `0..=MAX_TIME`.
fn time_arg(t: i64) -> i64 {
    t.clamp(0, MAX_TIME)
}

/// The edge stored under `id` from its hash's fields, or `None` if anything in it is
/// not what [`RedisGraph::add`] writes. Minute counts outside the hour up to
/// `now_minute` are left out; a malformed one is skipped alone.
fn parse_edge(id: &str, fields: &Fields, now_minute: i64) -> Option<(EdgeKey, EdgeStats)> {
    let (mut caller, mut audience, mut scope, mut last) = (None, None, None, None);
    let mut stats = EdgeStats::default();
    let mut minutes: Vec<(i64, u32)> = Vec::new();
    for (name, value) in fields {
        match name.as_slice() {
            b"caller" => caller = Some(std::str::from_utf8(value).ok()?),
            b"audience" => audience = Some(std::str::from_utf8(value).ok()?),
            b"scope" => scope = Some(std::str::from_utf8(value).ok()?),
            b"issued" => stats.issued = parse_count(value)?,
            b"d0" => stats.denied[0] = parse_count(value)?,
            b"d1" => stats.denied[1] = parse_count(value)?,
            b"d2" => stats.denied[2] = parse_count(value)?,
            b"d3" => stats.denied[3] = parse_count(value)?,
            b"first" => stats.first_seen = parse_time(value)?,
            b"last" => last = Some(parse_time(value)?),
            b"last_issued" => stats.last_issued = parse_time(value)?,
            name => {
                let Some(minute) = name.strip_prefix(b"m:") else {
                    continue;
                };
                let (Some(minute), Some(n)) = (parse_int::<i64>(minute), parse_count(value)) else {
                    continue;
                };
                if minute > now_minute - MINUTES as i64 && minute <= now_minute {
                    minutes.push((minute, u32::try_from(n).unwrap_or(u32::MAX)));
                }
            }
        }
    }
    let key = EdgeKey {
        caller: caller?.into(),
        audience: audience?.into(),
        scope: scope?.into(),
    };
    if edge_id(key.as_ref()) != id {
        return None;
    }
    stats.last_seen = last?;
    minutes.sort_unstable();
    for (minute, n) in minutes {
        stats.minutes.add(minute, n);
    }
    Some((key, stats))
}

/// Decimal digits with an optional `-`, as Redis prints integers.
fn parse_int<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_count(bytes: &[u8]) -> Option<u64> {
    parse_int(bytes)
}

fn parse_time(bytes: &[u8]) -> Option<i64> {
    parse_int(bytes).filter(|t| (0..=MAX_TIME).contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_fixed_length_and_unambiguous() {
        let a = edge_id(EdgeRef {
            caller: "a",
            audience: "b\0c",
            scope: "",
        });
        let b = edge_id(EdgeRef {
            caller: "a",
            audience: "b",
            scope: "c",
        });
        assert_ne!(a, b);
        assert!(is_edge_id(&a) && is_edge_id(&b));
    }

    #[test]
    fn malformed_records_are_skipped() {
        let key = EdgeKey {
            caller: "c".into(),
            audience: "a".into(),
            scope: "".into(),
        };
        let id = edge_id(key.as_ref());
        let f = |pairs: &[(&str, &str)]| -> Fields {
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect()
        };
        let good = [
            ("caller", "c"),
            ("audience", "a"),
            ("scope", ""),
            ("issued", "3"),
            ("last", "120"),
            ("m:2", "3"),
            ("m:x", "1"),
            ("m:-9223372036854775808", "1"),
        ];
        let (k, s) = parse_edge(&id, &f(&good[..8]), 2).unwrap();
        assert_eq!(
            (k, s.issued, s.last_seen, s.minutes.get(2)),
            (key, 3, 120, 3)
        );
        for bad in [
            ("issued", "-1"),
            ("issued", "1e3"),
            ("last", "99999999999"),
            ("first", "+5"),
            ("caller", "d"),
        ] {
            let mut fields = good[..5].to_vec();
            fields.push(bad);
            assert!(parse_edge(&id, &f(&fields), 2).is_none(), "{bad:?}");
        }
        assert!(parse_edge(&id, &f(&good[..4]), 2).is_none(), "no last");
    }
}
