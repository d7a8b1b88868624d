# tests/integration/lib.sh — shared helpers for the integration tests (sourced, not run).
# Every test gets a private folder, a private redis-server on a Unix socket, its own
# certificates and its own cmtpd; everything it starts is stopped by pid on exit.
set -u
export TOP; TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
B=${CMTP_BUILD:-build}
case "$B" in /*) ;; *) B="$TOP/$B" ;; esac
T=$(mktemp -d /tmp/cmtp-it.XXXXXX)
PIDS=()
PASS=0
FAIL=0

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  if [ "$FAIL" -eq 0 ] && [ -z "${CMTP_KEEP:-}" ]; then rm -rf "$T"; else echo "kept $T"; fi
}
trap cleanup EXIT

ok()   { echo "ok   $*"; PASS=$((PASS + 1)); }
bad()  { echo "FAIL $*"; FAIL=$((FAIL + 1)); }
# check DESC CMD...: ok when CMD succeeds.
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
finish() { echo "$PASS passed, $FAIL failed"; [ "$FAIL" -eq 0 ]; }

# free_port: an unused TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for CMD... : retry CMD for up to 10 s.
wait_for() {
  local i
  for i in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# start_redis NAME [extra redis args...]: private redis-server, socket $T/NAME.sock, AOF always.
start_redis() {
  local name=$1; shift
  mkdir -p "$T/$name"
  redis-server --port 0 --unixsocket "$T/$name.sock" --unixsocketperm 700 --dir "$T/$name" \
    --appendonly yes --appendfsync always --save '' --daemonize no \
    --logfile "$T/$name/redis.log" "$@" &
  local pid=$!
  PIDS+=("$pid")
  eval "REDIS_PID_$name=$pid"
  wait_for redis-cli -s "$T/$name.sock" ping || { echo "redis $name did not start"; return 1; }
}

rcli() { local name=$1; shift; redis-cli -s "$T/$name.sock" "$@"; }

# certs DIR NAME...: test certificates (see scripts/gen-certs.sh).
certs() { bash "$TOP/scripts/gen-certs.sh" "$@" >/dev/null; }
