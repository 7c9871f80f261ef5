#!/usr/bin/env bash
# Local dev stack with the topology of infra/compose.yaml, as processes on 127.0.0.1
# only: one redis-server, two issuer replicas sharing it (one trust domain, one issuer
# URL), the demo callee `payments` and one run of the caller `orders` against the other
# replica. State, logs and pid files live in $BATON_DEV_DIR (default ./baton-dev);
# infra/dev/down.sh stops it.
#
# Environment: BATON_DEV_DIR, BATON_DEV_REDIS_PORT (6390), BATON_DEV_PORT_1 (8443),
# BATON_DEV_PORT_2 (8444), BATON_DEV_PAYMENTS_PORT (8081); BATON_BIN (the `baton`
# binary) and BATON_DEV_EXAMPLES (the directory holding the `payments` and `orders`
# examples), built into target/debug (or $CARGO_TARGET_DIR/debug) unless given;
# BATON_DEV_NO_BUILD=1 builds nothing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=${BATON_DEV_DIR:-baton-dev}
redis_port=${BATON_DEV_REDIS_PORT:-6390}
port1=${BATON_DEV_PORT_1:-8443}
port2=${BATON_DEV_PORT_2:-8444}
payments_port=${BATON_DEV_PAYMENTS_PORT:-8081}
baton=${BATON_BIN:-}
examples=${BATON_DEV_EXAMPLES:-}
no_build=${BATON_DEV_NO_BUILD:-}
# `baton` warns about every BATON_* variable that is not one of its settings.
unset BATON_BIN BATON_DEV_DIR BATON_DEV_REDIS_PORT BATON_DEV_PORT_1 BATON_DEV_PORT_2 \
  BATON_DEV_PAYMENTS_PORT BATON_DEV_EXAMPLES BATON_DEV_NO_BUILD
names=(payments issuer-1 issuer-2 redis)

die() { echo "up.sh: $*" >&2; exit 1; }

# alive PID: the process exists and is not a zombie (the stack's processes outlive
# this script, and whoever inherits them may be slow to reap them).
alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$stat" ] && [ "${stat:0:1}" != Z ]
}

# recorded NAME: the pid in NAME's pid file, if that process still runs.
recorded() {
  local file="$dir/pids/$1.pid" pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid"; then echo "$pid"; else return 1; fi
}

# listening PORT: something accepts connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for port in "$redis_port" "$port1" "$port2" "$payments_port"; do
  if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    die "not a port: $port (check the BATON_DEV_*PORT* variables)"
  fi
done
[ "$(printf '%s\n' "$redis_port" "$port1" "$port2" "$payments_port" | sort -u | wc -l)" -eq 4 ] ||
  die "the four ports must differ: redis $redis_port, issuers $port1 $port2, payments $payments_port"
for tool in redis-server redis-cli curl ps timeout; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install redis-server curl procps coreutils)"
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
for name in "${names[@]}"; do
  if pid=$(recorded "$name"); then
    die "already up: $dir/pids/$name.pid (pid $pid); stop it with: BATON_DEV_DIR=$dir bash $repo/infra/dev/down.sh"
  fi
done
for port in "$redis_port" "$port1" "$port2" "$payments_port"; do
  listening "$port" && die "port 127.0.0.1:$port is taken (set BATON_DEV_REDIS_PORT, BATON_DEV_PORT_1, BATON_DEV_PORT_2 or BATON_DEV_PAYMENTS_PORT)"
done

target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
if [ "$no_build" != 1 ]; then
  [ -n "$baton" ] || (cd "$repo" && cargo build --locked --bin baton)
  [ -n "$examples" ] || (cd "$repo" && cargo build --locked -p baton-sdk --all-features --examples)
fi
baton=${baton:-$target/debug/baton}
examples=${examples:-$target/debug/examples}
for bin in "$baton" "$examples/payments" "$examples/orders"; do
  [ -x "$bin" ] || die "$bin not found: build it, or set BATON_BIN / BATON_DEV_EXAMPLES"
done

# From here on, a failure stops what this run started and leaves nothing half up.
started=()
cleanup() {
  local status=$? name pid
  trap - EXIT
  if [ "$status" -ne 0 ] && [ "${#started[@]}" -gt 0 ]; then
    echo "up.sh: stopping what this run started" >&2
    for name in "${started[@]}"; do
      pid=$(cat "$dir/pids/$name.pid" 2>/dev/null) || continue
      kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 100); do
      local any=0
      for name in "${started[@]}"; do
        pid=$(cat "$dir/pids/$name.pid" 2>/dev/null) || continue
        alive "$pid" && any=1
      done
      [ "$any" = 0 ] && break
      sleep 0.1
    done
    for name in "${started[@]}"; do
      pid=$(cat "$dir/pids/$name.pid" 2>/dev/null) || continue
      if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
      rm -f "$dir/pids/$name.pid"
    done
  fi
  [ "$status" -eq 0 ] || echo "up.sh: failed; logs in $dir/logs" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOG COMMAND...: runs COMMAND in the background, its pid recorded.
start() {
  local name=$1 log=$2
  shift 2
  "$@" </dev/null >"$log" 2>&1 &
  echo "$!" >"$dir/pids/$name.pid"
  started+=("$name")
}

# wait_for NAME WHAT SECONDS COMMAND...: polls COMMAND until it succeeds; fails with the
# tail of NAME's log if NAME exits first or SECONDS pass.
wait_for() {
  local name=$1 what=$2 limit=$3 pid i
  shift 3
  pid=$(cat "$dir/pids/$name.pid")
  for ((i = 0; i < limit * 10; i++)); do
    "$@" && return 0
    if ! alive "$pid"; then
      tail -n 20 "$dir/logs/$name.log" >&2 || true
      die "$name exited before $what (log: $dir/logs/$name.log)"
    fi
    sleep 0.1
  done
  tail -n 20 "$dir/logs/$name.log" >&2 || true
  die "$name: no $what within ${limit}s (log: $dir/logs/$name.log)"
}

umask 077
mkdir -p "$dir/pids" "$dir/logs" "$dir/redis" "$dir/fn"
export BATON_KEK_FILE="$dir/kek"
if [ ! -s "$dir/kek" ]; then
  head -c 32 /dev/urandom | base64 >"$dir/kek.tmp"
  chmod 600 "$dir/kek.tmp"
  mv "$dir/kek.tmp" "$dir/kek"
fi

echo "redis-server on 127.0.0.1:$redis_port"
start redis "$dir/logs/redis.log" redis-server --bind 127.0.0.1 --port "$redis_port" \
  --appendonly yes --appendfsync always --maxmemory-policy noeviction \
  --dir "$dir/redis" --daemonize no
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ]; }
wait_for redis "answer to PING" 10 redis_ping

"$baton" --data-dir "$dir/seed" init --trust-domain example.org --if-missing >/dev/null
for fn in orders payments; do
  rm -rf "$dir/fn/$fn"
  "$baton" --data-dir "$dir/seed" enroll --id "spiffe://example.org/fn/$fn" \
    --out "$dir/fn/$fn" >/dev/null
done

ports=("$port1" "$port2")
for n in 1 2; do
  port=${ports[n - 1]}
  echo "issuer-$n on https://127.0.0.1:$port (iss https://localhost:$port1)"
  start "issuer-$n" "$dir/logs/issuer-$n.log" "$baton" --data-dir "$dir/issuer-$n" serve \
    --init-from "$dir/seed" --store "redis://127.0.0.1:$redis_port" \
    --listen "127.0.0.1:$port" --issuer-url "https://localhost:$port1" \
    --policy "$repo/infra/config/policy.toml" --log-format json
done
ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
    --cacert "$dir/seed/bundle.pem" "https://127.0.0.1:$1/readyz")" = 200 ]
}
for n in 1 2; do
  wait_for "issuer-$n" "200 on /readyz" 60 ready "${ports[n - 1]}"
done

echo "payments on http://127.0.0.1:$payments_port"
start payments "$dir/logs/payments.log" "$examples/payments" "https://localhost:$port1" \
  "$dir/seed/bundle.pem" "127.0.0.1:$payments_port"
wait_for payments "listener on 127.0.0.1:$payments_port" 30 listening "$payments_port"

# A token minted by replica 2, accepted by payments with keys fetched from replica 1.
echo "orders against issuer-2"
orders=("$examples/orders" "https://localhost:$port2" "$dir/seed/bundle.pem"
  "$dir/fn/orders/svid.pem" "$dir/fn/orders/svid.key" "http://127.0.0.1:$payments_port")
timeout 60 "${orders[@]}" </dev/null >"$dir/logs/orders.log" 2>&1 ||
  { cat "$dir/logs/orders.log" >&2; die "orders failed (log: $dir/logs/orders.log)"; }
sed 's/^/  /' "$dir/logs/orders.log"
[ "$(grep -c '^charge: 200 ' "$dir/logs/orders.log")" = 2 ] ||
  die "payments did not accept the tokens minted by issuer-2 (logs in $dir/logs)"

cat <<EOF

Baton dev stack up (state in $dir):
  redis       redis://127.0.0.1:$redis_port
  issuer-1    https://localhost:$port1    issuer-2  https://localhost:$port2
              (one issuer URL for both: https://localhost:$port1; trust bundle $dir/seed/bundle.pem)
  payments    http://127.0.0.1:$payments_port/charge
  logs        $dir/logs    pids  $dir/pids

Try:
  export BATON_KEK_FILE=$dir/kek    # for commands that unseal keys: $baton --data-dir $dir/seed enroll …
  ${orders[*]}
  $baton token mint --issuer https://localhost:$port2 --bundle $dir/seed/bundle.pem \\
    --cert $dir/fn/orders/svid.pem --key $dir/fn/orders/svid.key --audience spiffe://example.org/fn/payments
  $baton keys list --data-dir $dir/issuer-1
Stop it:
  BATON_DEV_DIR=$dir bash $repo/infra/dev/down.sh    # --purge also deletes $dir
EOF
