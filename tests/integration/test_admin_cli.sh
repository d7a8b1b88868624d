#!/usr/bin/env bash
# tests/integration/test_admin_cli.sh — cmtpctl as an operator runs it: help and usage errors
# (no daemon needed), exit code 3 without a daemon or on a stale socket, then against a real
# cmtpd with a private redis-server: status/stats/metrics/queue answers, --json, errors (exit 1),
# another uid refused (exit 3), the socket's mode and its removal at exit. The daemon part is
# skipped (and said so) while cmtpd does not serve its admin socket yet.
source "$(dirname "$0")/lib.sh"

CTL="$B/cmtpctl"
[ -x "$CTL" ] || { bad "cmtpctl not built at $CTL"; finish; exit 1; }

# run_ctl EXPECTED_CODE DESC ARGS...: run cmtpctl, keep stdout/stderr in $T/out and $T/err.
run_ctl() {
  local want=$1 desc=$2; shift 2
  "$CTL" "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ "$rc" -eq "$want" ]; then ok "$desc (exit $rc)"; else bad "$desc: exit $rc, wanted $want"; cat "$T/err"; fi
}

# --- without a daemon -------------------------------------------------------------------------
run_ctl 0 "--help" --help
check "--help documents the exit codes" grep -q '^  3  no answer' "$T/out"
run_ctl 0 "help lists every command" help
check "help shows queue show's usage" grep -q 'queue show ID \[--body\]' "$T/out"
run_ctl 0 "COMMAND --help" queue list --help
check "per-command help" grep -q '^usage: cmtpctl queue list \[--dest DOMAIN\]' "$T/out"
run_ctl 0 "help COMMAND" help reload
check "help reload explains the validation" grep -q 'old one stays in force' "$T/out"
run_ctl 2 "no command is a usage error"
run_ctl 2 "unknown command" frobnicate
check "unknown command is named" grep -q 'unknown command' "$T/err"
run_ctl 2 "bad queue id" queue show nope
run_ctl 2 "bad option" -x status
run_ctl 2 "an argument with a space" queue show "A-1 --body"
run_ctl 3 "no socket" -s "$T/none.sock" status
check "no socket: the message says so" grep -q 'no admin socket at' "$T/err"
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$T/stale.sock"
run_ctl 3 "stale socket" -s "$T/stale.sock" status
check "stale socket: the message says so" grep -q 'nobody listens' "$T/err"
CMTPCTL_SOCKET="$T/none.sock" "$CTL" status >/dev/null 2>"$T/err"
check "\$CMTPCTL_SOCKET is used" grep -q "$T/none.sock" "$T/err"

# --- against cmtpd ----------------------------------------------------------------------------
certs "$T/tls" mx.b.test b.test
start_redis r
PORT=$(free_port)
SOCK="$T/state/cmtpd.sock"
cat >"$T/cmtpd.conf" <<CONF
[server]
hostname = mx.b.test
listen = 127.0.0.1:$PORT
state_dir = $T/state
workers = 2
[tls]
cert = $T/tls/server.crt
key = $T/tls/server.key
[redis]
address = unix:$T/r.sock
[admin]
socket = $SOCK
CONF
"$B/cmtpd" -c "$T/cmtpd.conf" 2>"$T/cmtpd.log" &
CMTPD=$!
PIDS+=("$CMTPD")
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" || bad "cmtpd listens"
for _ in $(seq 1 30); do [ -S "$SOCK" ] && break; sleep 0.1; done
if [ ! -S "$SOCK" ]; then
  echo "skip: cmtpd does not serve the admin socket yet (daemon/admin_glue.c): daemon checks skipped"
  finish
  exit $?
fi
export CMTPCTL_SOCKET="$SOCK"

check "socket mode is 0600" [ "$(stat -c %a "$SOCK")" = 600 ]
run_ctl 0 "status" status
check "status shows the version" grep -q '^version: ' "$T/out"
check "status shows the workers" grep -q '^workers: 2$' "$T/out"
run_ctl 0 "status --json" --json status
check "status --json: ok, pid, workers, listeners, redis" python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["ok"] is True and j["pid"] == int(sys.argv[2]) and j["workers"] == 2
assert isinstance(j["listeners"], list) and isinstance(j["redis"], dict)
assert isinstance(j["uptime_s"], int)' "$T/out" "$CMTPD"
run_ctl 0 "stats" stats
check "stats is a table with a TOTAL column" grep -q '^COUNTER .*TOTAL' "$T/out"
run_ctl 0 "stats --json" --json stats
check "stats --json: workers and total" python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert len(j["workers"]) == 2 and isinstance(j["total"], dict)' "$T/out"
run_ctl 0 "metrics" metrics
check "metrics is Prometheus text" grep -q '^# TYPE ' "$T/out"
run_ctl 0 "queue summary" queue summary
run_ctl 0 "queue list" queue list --limit 5
run_ctl 1 "queue show of an unknown id" queue show 0000000000-0
run_ctl 0 "log level debug" log level debug
run_ctl 0 "log level info" log level info
run_ctl 0 "version" version
check "version names cmtpd" grep -q '^cmtpd ' "$T/out"
setpriv --reuid=65534 --regid=65534 --clear-groups "$CTL" status >/dev/null 2>"$T/err"
check "another uid is refused (exit 3)" [ $? -eq 3 ]
check "the refusal says permission denied" grep -q 'permission denied' "$T/err"

kill -TERM "$CMTPD"
for _ in $(seq 1 100); do kill -0 "$CMTPD" 2>/dev/null || break; sleep 0.1; done
check "the socket is removed at exit" [ ! -e "$SOCK" ]
run_ctl 3 "after exit: no daemon" status
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/cmtpd.log" && bad "sanitizer report" || ok "no sanitizer report"
finish
