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

# poll SECONDS CMD...: retry CMD every 0.1 s for up to SECONDS.
poll() {
  local n=$(($1 * 10)) i; shift
  for i in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# pyck SCRIPT ARGS...: a Python check that prints "ok" when it holds.
pyck() { local s=$1; shift; [ "$(python3 -c "$s" "$@" 2>&1)" = ok ]; }

# listening [HOST] PORT: something accepts TCP connections there (HOST defaults to 127.0.0.1).
listening() {
  local host=127.0.0.1
  [ $# -gt 1 ] && { host=$1; shift; }
  python3 -c "import socket; socket.create_connection(('$host', $1), 1)"
}

# start_dovecot DIR: a private Dovecot LMTP server (root only: it delivers as nobody) with a
# static userdb, Maildirs under DIR/mail/<domain>/<user>, no Received: field of its own, and its
# LMTP Unix socket at DIR/run/lmtp; [PORT] adds a TCP listener on 127.0.0.1. Returns non-zero
# when it cannot run here (not root, or no dovecot-lmtpd).
start_dovecot() {
  local dir=$1 port=${2:-}
  [ "$(id -u)" -eq 0 ] && command -v dovecot >/dev/null || return 1
  mkdir -p "$dir/run" "$dir/state" "$dir/mail"
  chown nobody:nogroup "$dir/mail" 2>/dev/null
  chmod o+x "$T" "$dir"
  {
    cat <<CONF
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:$dir/mail/%d/%n
first_valid_uid = 1
lmtp_add_received_header = no
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$dir/home/%d/%n
}
service lmtp {
CONF
    [ -n "$port" ] && printf '  inet_listener lmtp {\n    address = 127.0.0.1\n    port = %s\n  }\n' "$port"
    printf '  unix_listener lmtp {\n    mode = 0600\n  }\n}\n'
  } >"$dir/dovecot.conf"
  dovecot -F -c "$dir/dovecot.conf" 2>"$dir/stderr" &
  PIDS+=("$!")
}
