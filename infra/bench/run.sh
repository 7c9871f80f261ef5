#!/usr/bin/env bash
# Baton's load benchmark (issue 9): builds release, starts `baton serve` on a throw-away
# trust domain pinned to SERVER_CORES, and runs `baton-load` pinned to LOAD_CORES in
# each mode: token (assertion), token (mTLS), token (assertion, count=64), introspect,
# and the SDK verify loop. Prints each mode's JSON line, then a summary whose ratios
# are against the first mode (token, assertion) measured in this same run.
#
# Then, unless FLOOR=0, it stops the issuer and starts `baton-floor` (the HTTP floor:
# the issuer's server stack doing only the unavoidable cryptography; see the header of
# tests/src/bin/baton-floor/main.rs) pinned to the same SERVER_CORES, measures it with
# the same baton-load settings in the four HTTP modes, and prints a second table:
# Baton ÷ floor is Baton's own overhead on top of what kernel, HTTP and TLS cost. The
# floor's JSON lines carry "server":"floor" (compare.sh tells them apart by it).
#
#   bash infra/bench/run.sh                         # defaults below
#   DURATION=30 CONCURRENCY=64 SERVER_CORES=0,1 LOAD_CORES=1 bash infra/bench/run.sh
#
# Environment: DURATION (measured seconds per mode, 10), WARMUP (seconds, 1),
# CONCURRENCY (workers, 32), SERVER_CORES (taskset list for the issuer, "0"),
# LOAD_CORES (taskset list for baton-load, "1"), VERIFY_CONCURRENCY (threads of the
# verify loop; default one per load core: verification is pure CPU, and more threads
# than cores only adds preemption to its latencies), CARGO_TARGET_DIR (as cargo uses it),
# RUST_LOG (the issuer's log filter; default info, audit events included, as in
# production; they go to a file in the scratch directory), FLOOR (0: skip the floor),
# SPIN (1: `baton-load --spin`, the load keeps its cores busy so that no answer has to
# wake a sleeping client; see BENCHMARKS.md, "What loopback costs on a VM").
#
# The issuer runs with its per-caller rate limit lifted (the benchmark measures the
# service, not the limiter) and token_ttl 300 s (tokens minted before a run must
# outlive it). Needs taskset (util-linux) and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CONCURRENCY=${CONCURRENCY:-32}
SERVER_CORES=${SERVER_CORES:-0}
LOAD_CORES=${LOAD_CORES:-1}
FLOOR=${FLOOR:-1}

for tool in taskset curl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done
VERIFY_CONCURRENCY=${VERIFY_CONCURRENCY:-$(taskset -c "$LOAD_CORES" nproc)}

cargo build --release --locked -p baton-issuer -p baton-tests --bin baton --bin baton-load \
  --bin baton-floor
bin=${CARGO_TARGET_DIR:-target}/release
bin=$(cd "$bin" && pwd)

work=$(mktemp -d)
server_pid=
floor_pid=
# stop PID: SIGTERM (both servers stop gracefully on it), then wait for the exit.
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  if [[ -n $server_pid ]]; then stop "$server_pid"; fi
  if [[ -n $floor_pid ]]; then stop "$floor_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT

data=$work/data
baton() { "$bin/baton" --data-dir "$data" "$@"; }
baton init --trust-domain example.org >/dev/null
ORDERS=spiffe://example.org/fn/orders
PAYMENTS=spiffe://example.org/fn/payments
baton enroll --id "$ORDERS" --out "$work/orders" --key-type ec-p256 >/dev/null
baton enroll --id "$PAYMENTS" --out "$work/payments" --key-type ec-p256 >/dev/null
cat >"$work/policy.toml" <<EOF
[[allow]]
caller = "$ORDERS"
audience = "$PAYMENTS"
EOF
bundle=$data/bundle.pem

# Port 0: the issuer picks a free one and names it in its "listening" log line.
BATON_RATE_LIMIT=1000000000 BATON_RATE_BURST=1000000000 BATON_INTROSPECT_RATE_LIMIT=1000000000 \
  BATON_TOKEN_TTL=300s \
  taskset -c "$SERVER_CORES" "$bin/baton" --data-dir "$data" serve \
  --listen 127.0.0.1:0 --policy "$work/policy.toml" --log-format json \
  </dev/null >/dev/null 2>"$work/server.log" &
server_pid=$!

# listening_addr PID LOG NAME: the "https_addr" a server names in LOG once it listens.
listening_addr() {
  local pid=$1 log=$2 name=$3 addr=
  for _ in $(seq 300); do
    addr=$(grep -o '"https_addr":"[^"]*"' "$log" | head -n1 | cut -d'"' -f4 || true)
    [[ -n $addr ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n $addr ]] || { echo "run.sh: $name did not start" >&2; cat "$log" >&2; exit 1; }
  echo "$addr"
}
addr=$(listening_addr "$server_pid" "$work/server.log" "the issuer")
issuer=https://$addr
# Its identifier (`iss`), for the floor's tokens to have the same size.
issuer_id=$(grep '"https_addr"' "$work/server.log" | grep -o '"issuer":"[^"]*"' | head -n1 |
  cut -d'"' -f4 || true)
for _ in $(seq 100); do
  curl -fsS --cacert "$bundle" "$issuer/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS --cacert "$bundle" "$issuer/readyz" >/dev/null
echo "issuer $issuer on cores $SERVER_CORES; load on cores $LOAD_CORES;" \
  "concurrency $CONCURRENCY, warm-up ${WARMUP}s, ${DURATION}s per mode" >&2

orders=(--cert "$work/orders/svid.pem" --key "$work/orders/svid.key")
payments=(--cert "$work/payments/svid.pem" --key "$work/payments/svid.key")
callers=(--caller-cert "$work/orders/svid.pem" --caller-key "$work/orders/svid.key")
SPIN=${SPIN:-0}
spin=()
if [[ $SPIN == 1 ]]; then spin=(--spin); fi
load() {
  taskset -c "$LOAD_CORES" "$bin/baton-load" "$@" --duration "$DURATION" --warmup "$WARMUP" \
    "${spin[@]}"
}

# run_load NAME CONCURRENCY MODE-ARGS...: one mode's JSON line ('{}' if it failed).
run_load() {
  local name=$1 concurrency=$2
  shift 2
  echo "== $name" >&2
  local line
  if ! line=$(load "$@" --concurrency "$concurrency"); then
    echo "run.sh: $name failed" >&2
    line='{}'
  fi
  echo "$line"
}

results=()
# measure NAME CONCURRENCY MODE-ARGS...
measure() {
  local name=$1 line
  line=$(run_load "$@")
  echo "$line"
  results+=("$name"$'\t'"$line")
}

issuer_args=(--issuer "$issuer" --bundle "$bundle")
measure "token assertion" "$CONCURRENCY" token "${issuer_args[@]}" "${orders[@]}" \
  --audience "$PAYMENTS" --mode assertion
measure "token mtls" "$CONCURRENCY" token "${issuer_args[@]}" "${orders[@]}" \
  --audience "$PAYMENTS" --mode mtls
measure "token assertion x64" "$CONCURRENCY" token "${issuer_args[@]}" "${orders[@]}" \
  --audience "$PAYMENTS" --mode assertion --count 64
measure "introspect" "$CONCURRENCY" introspect "${issuer_args[@]}" "${payments[@]}" \
  "${callers[@]}"
measure "sdk verify" "$VERIFY_CONCURRENCY" verify "${issuer_args[@]}" \
  --audience "$PAYMENTS" "${callers[@]}"

floor_results=()
if [[ $FLOOR != 0 ]]; then
  # The server cores are the floor's alone while it is measured.
  stop "$server_pid"
  server_pid=
  floor_args=(--listen 127.0.0.1:0 --bundle-out "$work/floor.pem"
    --caller-cert "$work/orders/svid.pem" --client-bundle "$bundle")
  # Baton's `iss`, so that the floor's tokens have the size of Baton's.
  if [[ -n $issuer_id ]]; then floor_args+=(--issuer-id "$issuer_id"); fi
  taskset -c "$SERVER_CORES" "$bin/baton-floor" "${floor_args[@]}" \
    </dev/null >/dev/null 2>"$work/floor.log" &
  floor_pid=$!
  floor_addr=$(listening_addr "$floor_pid" "$work/floor.log" "baton-floor")
  echo "floor https://$floor_addr on cores $SERVER_CORES" >&2
  # measure_floor NAME MODE-ARGS...: as measure, the line tagged "server":"floor".
  measure_floor() {
    local name=$1 line
    shift
    line=$(run_load "floor $name" "$CONCURRENCY" "$@")
    if [[ $line == '{}' ]]; then
      line='{"server":"floor"}'
    else
      line="{\"server\":\"floor\",${line#\{}"
    fi
    echo "$line"
    floor_results+=("$name"$'\t'"$line")
  }
  # The same certificates and settings as Baton's modes; only the server differs
  # (the floor's own certificate, its metadata for discovery).
  floor_server=(--issuer "https://$floor_addr" --bundle "$work/floor.pem")
  measure_floor "token assertion" token "${floor_server[@]}" "${orders[@]}" \
    --audience "$PAYMENTS" --mode assertion
  measure_floor "token mtls" token "${floor_server[@]}" "${orders[@]}" \
    --audience "$PAYMENTS" --mode mtls
  measure_floor "token assertion x64" token "${floor_server[@]}" "${orders[@]}" \
    --audience "$PAYMENTS" --mode assertion --count 64
  measure_floor "introspect" introspect "${floor_server[@]}" "${payments[@]}" \
    "${callers[@]}"
  stop "$floor_pid"
  floor_pid=
fi

# One number out of a flat JSON line (the report's fields are plain numbers).
field() { grep -o "\"$2\":[0-9.]*" <<<"$1" | head -n1 | cut -d: -f2 || true; }
# Tokens per second: tokens_per_s for batches, else successful requests per second.
tokens_per_s() {
  local tps
  tps=$(field "$1" tokens_per_s)
  echo "${tps:-$(field "$1" throughput_per_s)}"
}

echo
# ok/s: successful requests (or verifications) per second; tokens/s differs for count=64.
printf '%-22s %12s %12s %9s %9s %9s %9s %7s %s\n' mode "ok/s" "tokens/s" p50_us \
  p99_us p999_us max_us errors "tokens/s ÷ token assertion"
base=
for r in "${results[@]}"; do
  name=${r%%$'\t'*}
  json=${r#*$'\t'}
  rps=$(field "$json" throughput_per_s)
  tps=$(tokens_per_s "$json")
  base=${base:-$tps}
  ratio=$(awk -v a="$tps" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  printf '%-22s %12s %12s %9s %9s %9s %9s %7s %s\n' "$name" "$rps" "$tps" \
    "$(field "$json" p50)" "$(field "$json" p99)" "$(field "$json" p999)" \
    "$(field "$json" max)" "$(field "$json" errors)" "$ratio"
done

if ((${#floor_results[@]} > 0)); then
  echo
  # Same run, same server cores, same load: Baton ÷ floor is Baton's own cost per token
  # on top of the kernel, HTTP and TLS (introspect: introspections per second).
  printf '%-22s %14s %14s %12s %s\n' mode "Baton tokens/s" "floor tokens/s" \
    "floor errors" "Baton ÷ floor"
  for r in "${floor_results[@]}"; do
    name=${r%%$'\t'*}
    floor_json=${r#*$'\t'}
    baton_json='{}'
    for b in "${results[@]}"; do
      if [[ ${b%%$'\t'*} == "$name" ]]; then baton_json=${b#*$'\t'}; fi
    done
    baton_tps=$(tokens_per_s "$baton_json")
    floor_tps=$(tokens_per_s "$floor_json")
    ratio=$(awk -v a="$baton_tps" -v b="$floor_tps" \
      'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }')
    floor_errors=$(field "$floor_json" errors)
    printf '%-22s %14s %14s %12s %s\n' "$name" "${baton_tps:--}" "${floor_tps:--}" \
      "${floor_errors:--}" "$ratio"
  done
fi
