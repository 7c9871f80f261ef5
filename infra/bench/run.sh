#!/usr/bin/env bash
# Baton's load benchmark (issue 9): builds release, starts `baton serve` on a throw-away
# trust domain pinned to SERVER_CORES, and runs `baton-load` pinned to LOAD_CORES in
# each mode: token (assertion), token (mTLS), token (assertion, count=64), introspect,
# and the SDK verify loop. Prints each mode's JSON line, then a summary whose ratios
# are against the first mode (token, assertion) measured in this same run.
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
# production; they go to a file in the scratch directory).
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

for tool in taskset curl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done
VERIFY_CONCURRENCY=${VERIFY_CONCURRENCY:-$(taskset -c "$LOAD_CORES" nproc)}

cargo build --release --locked -p baton-issuer -p baton-tests --bin baton --bin baton-load
bin=${CARGO_TARGET_DIR:-target}/release
bin=$(cd "$bin" && pwd)

work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
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
BATON_RATE_LIMIT=1000000000 BATON_RATE_BURST=1000000000 BATON_TOKEN_TTL=300s \
  taskset -c "$SERVER_CORES" "$bin/baton" --data-dir "$data" serve \
  --listen 127.0.0.1:0 --policy "$work/policy.toml" --log-format json \
  </dev/null >/dev/null 2>"$work/server.log" &
server_pid=$!

addr=
for _ in $(seq 300); do
  addr=$(grep -o '"https_addr":"[^"]*"' "$work/server.log" | head -n1 | cut -d'"' -f4 || true)
  [[ -n $addr ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $addr ]] || { echo "run.sh: the issuer did not start" >&2; cat "$work/server.log" >&2; exit 1; }
issuer=https://$addr
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
load() { taskset -c "$LOAD_CORES" "$bin/baton-load" "$@" --duration "$DURATION" --warmup "$WARMUP"; }

results=()
# measure NAME CONCURRENCY MODE-ARGS...
measure() {
  local name=$1 concurrency=$2
  shift 2
  echo "== $name" >&2
  local line
  if ! line=$(load "$@" --concurrency "$concurrency"); then
    echo "run.sh: $name failed" >&2
    line='{}'
  fi
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

# One number out of a flat JSON line (the report's fields are plain numbers).
field() { grep -o "\"$2\":[0-9.]*" <<<"$1" | head -n1 | cut -d: -f2 || true; }

echo
# ok/s: successful requests (or verifications) per second; tokens/s differs for count=64.
printf '%-22s %12s %12s %9s %9s %9s %9s %7s %s\n' mode "ok/s" "tokens/s" p50_us \
  p99_us p999_us max_us errors "tokens/s ÷ token assertion"
base=
for r in "${results[@]}"; do
  name=${r%%$'\t'*}
  json=${r#*$'\t'}
  rps=$(field "$json" throughput_per_s)
  tps=$(field "$json" tokens_per_s)
  tps=${tps:-$rps}
  base=${base:-$tps}
  ratio=$(awk -v a="$tps" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  printf '%-22s %12s %12s %9s %9s %9s %9s %7s %s\n' "$name" "$rps" "$tps" \
    "$(field "$json" p50)" "$(field "$json" p99)" "$(field "$json" p999)" \
    "$(field "$json" max)" "$(field "$json" errors)" "$ratio"
done
