#!/usr/bin/env bash
# Stops the local dev stack of infra/dev/up.sh: payments, both issuer replicas (SIGTERM,
# then SIGKILL after 10 s), then redis-server; removes the pid files. `--purge` also
# deletes the state directory ($BATON_DEV_DIR, default ./baton-dev, as for up.sh; the
# processes are found by their pid files, so the ports need not be given). Nothing
# running is not an error.
set -euo pipefail
dir=${BATON_DEV_DIR:-baton-dev}
purge=0
for arg in "$@"; do
  case $arg in
    --purge) purge=1 ;;
    *) echo "usage: down.sh [--purge]" >&2; exit 2 ;;
  esac
done
if [ ! -d "$dir" ]; then
  echo "nothing to stop: no $dir"
  exit 0
fi
dir=$(cd "$dir" && pwd)

# alive PID: the process exists and is not a zombie (whoever inherited the stack's
# processes may be slow to reap them).
alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$stat" ] && [ "${stat:0:1}" != Z ]
}

# stop NAME...: SIGTERM to each recorded process, up to 10 s for all to exit, then
# SIGKILL to what is left; pid files removed.
stop() {
  local names=("$@") name pid i pids=()
  for name in "${names[@]}"; do
    pids+=("")
    [ -f "$dir/pids/$name.pid" ] || continue
    pid=$(cat "$dir/pids/$name.pid")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids[${#pids[@]} - 1]=$pid
    else
      echo "$name: not running (stale $dir/pids/$name.pid)"
      rm -f "$dir/pids/$name.pid"
    fi
  done
  for ((i = 0; i < 100; i++)); do
    local any=0
    for pid in "${pids[@]}"; do
      [ -n "$pid" ] && alive "$pid" && any=1
    done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for ((i = 0; i < ${#names[@]}; i++)); do
    name=${names[i]}
    pid=${pids[i]}
    [ -n "$pid" ] || continue
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 20); do alive "$pid" && sleep 0.1; done
      echo "$name: pid $pid did not stop within 10 s of SIGTERM: killed"
    else
      echo "$name: stopped (pid $pid)"
    fi
    rm -f "$dir/pids/$name.pid"
  done
}

if ! compgen -G "$dir/pids/*.pid" >/dev/null; then
  echo "nothing running in $dir"
fi
# Callers first, then the issuers (which drain), then the store they use.
stop payments
stop issuer-1 issuer-2
stop redis

if [ "$purge" = 1 ]; then
  rm -rf "$dir"
  echo "deleted $dir"
fi
