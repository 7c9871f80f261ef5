#!/usr/bin/env bash
# Side-by-side peer run (issue 9, item 3): panva oidc-provider and Baton on the same
# server core, driven by the same load generator with the same settings, in one run.
#
#   bash infra/bench/compare.sh
#
# Steps: install the peer (npm ci, once); build baton and baton-load (release); start
# the peer (infra/bench/peer/provider.mjs: client_credentials, ES256 private_key_jwt,
# ES256 JWT access tokens by resource indicator) pinned to SERVER_CORES and check it
# with check.mjs; measure it with `baton-load peer` pinned to LOAD_CORES; stop it; run
# Baton's own pinned script infra/bench/run.sh with the same settings; print the ratios.
# When run.sh also measured its HTTP floor (baton-floor; lines tagged "server":"floor"),
# the summary adds Baton ÷ floor for each HTTP mode.
#
# Goals on one server core: Baton assertion mode ≥ 5× the peer, mTLS mode ≥ 10×.
# The peer cannot introspect its own JWT access tokens, so Baton's introspection is
# compared with the one-verify ceiling (ES256 verify ≈ 75 µs → ≈ 13 k/s per core) and
# with the SDK verify loop measured by run.sh in the same run, not with the peer.
#
# Environment (all optional):
#   DURATION=10 CONCURRENCY=32   passed to both halves (run.sh reads the same names)
#   SPIN=0                       1: the load generator keeps its cores busy (--spin), both halves
#   SERVER_CORES=0 LOAD_CORES=1  taskset core lists for the servers and the load
#   PEER_PORT=3999               loopback port of the peer
#   PEER_WARMUP=6                seconds the peer runs before its window (JIT warm-up)
#   PEER_MAX_RATE=5000           tokens/s to pre-sign peer assertions for
#   VERIFY_CEILING_US=75         one ES256 verify, for the introspection ceiling
#   BATON_LOAD=path              a prebuilt load generator (skips the cargo build)
#   CARGO_TARGET_DIR             where cargo builds (default: <repo>/target)
# Raw outputs are kept in a temporary directory whose path is printed at the end.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

DURATION="${DURATION:-10}"
CONCURRENCY="${CONCURRENCY:-32}"
SERVER_CORES="${SERVER_CORES:-0}"
LOAD_CORES="${LOAD_CORES:-1}"
PEER_PORT="${PEER_PORT:-3999}"
VERIFY_CEILING_US="${VERIFY_CEILING_US:-75}"
SPIN="${SPIN:-0}"
export DURATION CONCURRENCY SERVER_CORES LOAD_CORES SPIN

for tool in node npm openssl taskset python3; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool is required" >&2; exit 1; }
done

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 20)); then
  echo "compare.sh: Node.js 20 or later is required (found $(node --version))" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/baton-compare.XXXXXX")"
peer_pid=""
cleanup() {
  if [[ -n "$peer_pid" ]] && kill -0 "$peer_pid" 2>/dev/null; then
    kill -TERM "$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# (1) The peer, exactly as locked in package-lock.json.
if [[ ! -d "$here/peer/node_modules" ]]; then
  echo "== installing the peer (npm ci)" >&2
  (cd "$here/peer" && npm ci --no-audit --no-fund)
fi

# The load generator measures both halves, so build it before the peer runs.
if [[ -z "${BATON_LOAD:-}" ]]; then
  echo "== building baton and baton-load (release)" >&2
  cargo build --release --locked -p baton-issuer -p baton-tests --bin baton --bin baton-load \
    --bin baton-floor
  BATON_LOAD="${CARGO_TARGET_DIR:-$root/target}/release/baton-load"
fi
[[ -x "$BATON_LOAD" ]] || { echo "compare.sh: no load generator at $BATON_LOAD" >&2; exit 1; }

# (2) The peer's client key: a fresh P-256 key per run, PKCS#8 PEM.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/client.pem" 2>/dev/null

# (3) The peer on the server core, production mode, logging nothing per request.
echo "== starting the peer on core(s) $SERVER_CORES, port $PEER_PORT" >&2
: >"$work/peer-server.log" # exists before the background job opens it, for the polls below
PEER_PORT="$PEER_PORT" PEER_CLIENT_KEY="$work/client.pem" NODE_ENV=production \
  taskset -c "$SERVER_CORES" node "$here/peer/provider.mjs" >"$work/peer-server.log" 2>&1 &
peer_pid=$!
for _ in $(seq 1 100); do
  grep -q '^listening ' "$work/peer-server.log" && break
  kill -0 "$peer_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^listening ' "$work/peer-server.log"; then
  echo "compare.sh: the peer did not start:" >&2
  cat "$work/peer-server.log" >&2
  exit 1
fi
# One real request (and the refusals that must happen) before measuring anything.
if ! PEER_PORT="$PEER_PORT" PEER_CLIENT_KEY="$work/client.pem" \
  node "$here/peer/check.mjs" >"$work/peer-check.log" 2>&1; then
  echo "compare.sh: the peer's setup check failed:" >&2
  cat "$work/peer-check.log" >&2
  exit 1
fi

# (4) The peer under load. Plain HTTP on loopback: pass the opt-in flag if the load
# generator has one.
# The peer's warm-up is longer than Baton's: Node.js compiles its hot paths as it goes,
# and the peer's rate still climbs for about 4 s after start (measured: 640/s in the
# first second, ~1 800/s from the fifth). A short warm-up would flatter every ratio.
PEER_WARMUP="${PEER_WARMUP:-6}"
peer_args=(peer --token-url "http://127.0.0.1:$PEER_PORT/token" --client-id baton-bench
  --key "$work/client.pem" --resource https://payments.example
  --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$PEER_WARMUP")
peer_help="$("$BATON_LOAD" peer --help 2>/dev/null || true)"
if grep -q -- '--insecure-http' <<<"$peer_help"; then
  peer_args+=(--insecure-http)
fi
# A calibration against a cold (not yet JIT-compiled) peer underestimates its warm
# rate, and running out of assertions would shorten the window: size the supply for
# PEER_MAX_RATE (far above what one Node.js core mints) over warm-up and window.
# SPIN=1: the same busy load generator for the peer as run.sh gives Baton and the floor.
if [[ $SPIN == 1 ]]; then
  peer_args+=(--spin)
fi
if grep -q -- '--assertions' <<<"$peer_help"; then
  peer_args+=(--assertions "$(((DURATION + PEER_WARMUP + 1) * ${PEER_MAX_RATE:-5000}))")
fi
echo "== measuring the peer: concurrency $CONCURRENCY, ${DURATION}s, load on core(s) $LOAD_CORES" >&2
taskset -c "$LOAD_CORES" "$BATON_LOAD" "${peer_args[@]}" >"$work/peer.json"
cat "$work/peer.json"

# (5) Free the server core before Baton uses it.
kill -TERM "$peer_pid"
wait "$peer_pid" 2>/dev/null || true
peer_pid=""
if grep -q 'server_error' "$work/peer-server.log"; then
  echo "compare.sh: the peer reported server errors:" >&2
  grep 'server_error' "$work/peer-server.log" >&2
fi

status=0
# (6) Baton, by its own pinned script (same DURATION, CONCURRENCY, SERVER_CORES).
if [[ -f "$here/run.sh" ]]; then
  echo "== measuring Baton (infra/bench/run.sh)" >&2
  bash "$here/run.sh" | tee "$work/baton.out"
else
  echo "compare.sh: infra/bench/run.sh is missing; only the peer was measured" >&2
  : >"$work/baton.out"
  status=1
fi

# (7) The ratios.
if ! python3 - "$work/peer.json" "$work/baton.out" "$VERIFY_CEILING_US" <<'PY'
import json
import sys

peer_path, baton_path, verify_us = sys.argv[1], sys.argv[2], float(sys.argv[3])


def json_lines(path):
    """Every line of the file that is a JSON object; anything else is commentary."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def num(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def error_count(line):
    """`errors` is a count or a map of error kinds to counts."""
    errors = line.get("errors")
    if isinstance(errors, dict):
        return int(sum(v for v in errors.values() if num(v) is not None))
    return int(num(errors) or 0)


def batch_size(line):
    for key in ("count", "batch", "batch_size"):
        if num(line.get(key)) is not None:
            return int(line[key])
    return 1


def tokens_per_s(line):
    """Tokens minted per second: tokens_per_s for batches, else requests per second."""
    if line is None:
        return None
    tokens = num(line.get("tokens_per_s"))
    if tokens is not None:
        return tokens
    rate = num(line.get("throughput_per_s"))
    return None if rate is None else rate * batch_size(line)


def classify(line):
    """Which figure a run.sh line is, from its mode (and sub-mode) fields."""
    words = " ".join(str(v) for k, v in line.items()
                     if isinstance(v, str) and ("mode" in k or k in ("auth", "name", "kind"))).lower()
    if "introspect" in words:
        return "introspect"
    if "verify" in words:
        return "verify"
    if "peer" in words:
        return None
    if "token" in words or "assertion" in words or "mtls" in words:
        tokens, requests = num(line.get("tokens_per_s")), num(line.get("throughput_per_s"))
        if batch_size(line) > 1 or "batch" in words or (tokens and requests and tokens > requests * 1.01):
            return "batch"
        return "mtls" if "mtls" in words else "assertion"
    return None


peer = (json_lines(peer_path) or [None])[-1]
baton = {}
# run.sh's HTTP floor (baton-floor): the same modes, told apart by "server":"floor".
floor = {}
for line in json_lines(baton_path):
    kind = classify(line)
    if kind is not None:
        (floor if line.get("server") == "floor" else baton)[kind] = line  # the last line of a kind wins

peer_rate = tokens_per_s(peer)
ceiling = 1e6 / verify_us
verify_rate = num(baton.get("verify", {}).get("throughput_per_s"))
# Introspection answers one token per request, whatever batch its tokens were minted in.
introspect_rate = num(baton.get("introspect", {}).get("throughput_per_s"))


def fmt(rate):
    return "n/a" if rate is None else f"{rate:,.0f}/s"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}×"


def verdict(r, goal):
    if goal is None or r is None:
        return ""
    return "met" if r >= goal else "MISSED"


def p(line, q):
    lat = (line or {}).get("latency_us") or {}
    v = num(lat.get(q))
    return "n/a" if v is None else f"{v / 1000:.1f}"


rows = [
    ("peer (oidc-provider) tokens", peer, peer_rate, None, None, None),
    ("Baton assertion tokens", baton.get("assertion"), tokens_per_s(baton.get("assertion")), peer_rate, 5.0, "× peer"),
    ("Baton mTLS tokens", baton.get("mtls"), tokens_per_s(baton.get("mtls")), peer_rate, 10.0, "× peer"),
    (f"Baton batch tokens (count={batch_size(baton['batch']) if 'batch' in baton else '?'})", baton.get("batch"),
     tokens_per_s(baton.get("batch")), peer_rate, None, "× peer"),
    ("Baton introspection", baton.get("introspect"), introspect_rate, ceiling, None,
     f"of the ceiling 1/({verify_us:g} µs) = {ceiling:,.0f}/s"),
]

print()
print(f"side by side, one server core; concurrency {(peer or {}).get('concurrency', '?')}")
header = f"{'figure':<38} {'rate':>11} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'ratio':>8}  against / goal"
print(header)
print("-" * len(header))
summary = {"mode": "compare"}
for name, line, rate, base, goal, against in rows:
    r = ratio(rate, base)
    goal_text = "" if goal is None else f", goal ≥ {goal:g}× {verdict(r, goal)}"
    errors = "n/a" if line is None else str(error_count(line))
    print(f"{name:<38} {fmt(rate):>11} {p(line, 'p50'):>7} {p(line, 'p99'):>7} {errors:>6} "
          f"{fmt_ratio(r) if base else '':>8}  {(against or '') + goal_text}")
if verify_rate is not None:
    r = ratio(introspect_rate, verify_rate)
    print(f"{'  vs the SDK verify loop, same run':<38} {fmt(verify_rate):>11} {'':>7} {'':>7} {'':>6} "
          f"{fmt_ratio(r):>8}  of one-core SDK verifies")
print("(the peer cannot introspect its own JWT access tokens: introspection is compared with the ceiling)")

# Baton ÷ its HTTP floor (same run, same server cores): Baton's own cost on top of the
# kernel, HTTP and TLS. Introspection counts one token per request.
floor_modes = [
    ("assertion", "token assertion"),
    ("mtls", "token mtls"),
    ("batch", "token assertion x64"),
    ("introspect", "introspect"),
]


def rate_of(kind, line):
    if line is None:
        return None
    return num(line.get("throughput_per_s")) if kind == "introspect" else tokens_per_s(line)


floor_ratios = {}
if floor:
    print()
    print("Baton ÷ its HTTP floor (baton-floor: the same stack doing only the unavoidable crypto)")
    header = f"{'mode':<38} {'Baton':>11} {'floor':>11} {'errors':>6} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    for kind, name in floor_modes:
        b, f = rate_of(kind, baton.get(kind)), rate_of(kind, floor.get(kind))
        r = ratio(b, f)
        floor_ratios[kind] = r
        errors = "n/a" if kind not in floor else str(error_count(floor[kind]))
        print(f"{name:<38} {fmt(b):>11} {fmt(f):>11} {errors:>6} {fmt_ratio(r):>8}")

summary.update({
    "peer_tokens_per_s": peer_rate,
    "assertion_tokens_per_s": tokens_per_s(baton.get("assertion")),
    "mtls_tokens_per_s": tokens_per_s(baton.get("mtls")),
    "batch_tokens_per_s": tokens_per_s(baton.get("batch")),
    "introspect_per_s": introspect_rate,
    "assertion_ratio": ratio(tokens_per_s(baton.get("assertion")), peer_rate),
    "mtls_ratio": ratio(tokens_per_s(baton.get("mtls")), peer_rate),
    "batch_ratio": ratio(tokens_per_s(baton.get("batch")), peer_rate),
    "introspect_of_ceiling": ratio(introspect_rate, ceiling),
    "introspect_of_sdk_verify": ratio(introspect_rate, verify_rate),
})
if floor:
    summary.update({f"floor_{kind}_per_s": rate_of(kind, floor.get(kind)) for kind, _ in floor_modes})
    summary.update({f"{kind}_of_floor": floor_ratios.get(kind) for kind, _ in floor_modes})
print(json.dumps(summary))
for name, line in ([("peer", peer)] + sorted(baton.items())
                   + [(f"floor {k}", v) for k, v in sorted(floor.items())]):
    if line is not None and line.get("exhausted") is True:
        print(f"compare.sh: the {name} run used up its pre-generated inputs: its window was "
              f"{line.get('duration_s', '?')} s, not the full duration", file=sys.stderr)
if peer is None or error_count(peer) > 0 or (peer_rate or 0) <= 0:
    print("compare.sh: the peer run has no successful requests or has errors; see the raw JSON", file=sys.stderr)
    sys.exit(1)
PY
then status=1; fi

echo "raw outputs: $work" >&2
exit "$status"
