#!/usr/bin/env bash
# tests/integration/test_embedded.sh — `make run`'s appliance (scripts/run.sh): first-run
# certificates and config, the embedded redis-server (AOF fsync=always) started and stopped by
# cmtpd, the printed test command works, SIGTERM leaves no process behind.
source "$(dirname "$0")/lib.sh"

PORT=$(free_port) SPORT=$(free_port)
CMTP_STATE_DIR="$T/state" CMTP_PORT=$PORT CMTP_SMTP_PORT=$SPORT CMTP_BUILD="$B" bash "$TOP/scripts/run.sh" >"$T/run.out" 2>"$T/run.err" &
RUN=$!
PIDS+=("$RUN")
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)"
check "make run prints a cmtp-send command" grep -q 'cmtp-send --ca' "$T/run.out"
check "first run made certificates" test -f "$T/state/tls/server.crt"
check "first run wrote a config" test -f "$T/state/cmtpd.conf"
# cmtpd listens before the keeper's redis-server has made its socket (a client meanwhile gets
# 451): wait for it.
check "embedded redis socket exists" poll 10 test -S "$T/state/redis/redis.sock"
check "embedded redis: appendfsync always" bash -c '[ "$(redis-cli -s "$1" CONFIG GET appendfsync | tail -1)" = always ]' _ "$T/state/redis/redis.sock"
check "embedded redis: AOF on" bash -c '[ "$(redis-cli -s "$1" CONFIG GET appendonly | tail -1)" = yes ]' _ "$T/state/redis/redis.sock"
rpid=$(cat "$T/state/redis/redis.pid" 2>/dev/null)
# The command `make run` prints, run as printed (with our build).
cmd=$(grep -A2 'printf' "$T/run.out" | sed "s|build/cmtp-send|$B/cmtp-send|" | tr -d '\\\n')
out=$(bash -c "$cmd" 2>&1)
check "the printed command sends a message" grep -q '^accepted id=' <<<"$out"
# The printed swaks command: SMTP ingress with STARTTLS, delivered into the Maildir.
scmd=$(grep '^  swaks ' "$T/run.out")
check "make run prints a swaks command for its SMTP ingress" [ -n "$scmd" ]
sout=$(bash -c "$scmd --timeout 10" 2>&1)
check "the printed swaks command works (STARTTLS, queued)" \
  bash -c 'grep -q "TLS started with cipher TLSv1.3" <<<"$1" && grep -q "250 2.0.0 Ok: queued as" <<<"$1"' _ "$sout"
check "both test messages land in the Maildir" wait_for bash -c '[ "$(find "$1" -type f 2>/dev/null | wc -l)" -ge 2 ]' _ "$T/state/maildir/example.test/you/new"
# Supervision: kill -9 the embedded redis-server; the keeper restarts it and mail flows again.
kill -9 "$rpid"
wait_for bash -c '[ "$(redis-cli -s "$1" ping 2>/dev/null)" = PONG ]' _ "$T/state/redis/redis.sock"
rpid2=$(cat "$T/state/redis/redis.pid" 2>/dev/null)
check "the keeper restarted redis-server after kill -9" bash -c '[ -n "$1" ] && [ "$1" != "$2" ] && kill -0 "$1"' _ "$rpid2" "$rpid"
ok2=0
for _ in $(seq 1 50); do out=$(bash -c "$cmd" 2>&1); grep -q '^accepted id=' <<<"$out" && { ok2=1; break; }; sleep 0.2; done
check "mail accepted again after the restart" [ $ok2 -eq 1 ]
check "the restart is logged" grep -q 'event=redis-restarted' "$T/run.err"
rpid=$rpid2
kpid=$(pgrep -x -P "$RUN" cmtpd-keeper)
check "the keeper is a child of cmtpd" [ -n "$kpid" ]
kill -TERM "$RUN"
for _ in $(seq 1 100); do kill -0 "$RUN" 2>/dev/null || break; sleep 0.1; done
wait "$RUN"; rc=$?
check "SIGTERM: cmtpd exits 0" [ $rc -eq 0 ]
check "no keeper left" bash -c '[ -n "$1" ] && ! kill -0 "$1" 2>/dev/null' _ "$kpid"
check "the embedded redis-server is stopped" bash -c '[ -n "$1" ] && ! kill -0 "$1" 2>/dev/null' _ "$rpid"
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/run.err" && bad "sanitizer report" || ok "no sanitizer report"
finish
