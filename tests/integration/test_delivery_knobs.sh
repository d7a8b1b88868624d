#!/usr/bin/env bash
# tests/integration/test_delivery_knobs.sh — the delivery knobs: [delivery] enabled = no (an
# ingest-only node: nothing is claimed, messages stay in Redis), `cmtpctl delivery resume` and
# `delivery pause`, `status` showing the state; [delivery] lease = 2s with kill -9 of the
# delivering node (a second node takes the work over after the lease and delivers it once); and
# a poison message whose every attempt "crashes" (the node is killed during it) ending
# dead-lettered after attempts_crash_max, listed by `cmtpctl queue list --state dead` and never
# attempted again.
source "$(dirname "$0")/lib.sh"

certs "$T/tls" mx.b.test b.test
start_redis r
SEND=("$B/cmtp-send" --timeout 10 --ca "$T/tls/ca.crt" -n b.test -f sender@b.test)
CTL() { local n=$1; shift; "$B/cmtpctl" -s "$T/admin-$n.sock" -t 10 "$@"; }

# conf NAME PORT [extra [delivery] lines...]: a node on the shared Redis and key prefix "k" (all
# nodes share the queue), its own admin socket, state and log.
conf() {
  local name=$1 port=$2; shift 2
  {
    printf '[server]\nhostname = mx.b.test\nlisten = 127.0.0.1:%s\nstate_dir = %s\nworkers = 2\n' \
      "$port" "$T/state-$name"
    printf '[tls]\ncert = %s/server.crt\nkey = %s/server.key\n' "$T/tls" "$T/tls"
    printf '[redis]\naddress = unix:%s\nkey_prefix = k\n' "$T/r.sock"
    printf '[admin]\nsocket = %s\n' "$T/admin-$name.sock"
    printf '[delivery]\nlocal_domains = b.test\nmode = lmtp\nlease = 2s\n'
    printf '%s\n' "$@"
  } >"$T/$name.conf"
}
start() {
  local name=$1 port
  port=$(sed -n 's/^listen = 127.0.0.1:\(.*\)$/\1/p' "$T/$name.conf")
  "$B/cmtpd" -c "$T/$name.conf" 2>>"$T/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  eval "PID_$name=$pid"
  wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" ||
    bad "cmtpd $name listens"
}
# stop NAME: SIGTERM and wait (exit status checked); kill9 NAME: kill -9 and reap.
stop() {
  local p
  eval "p=\$PID_$1"
  kill -TERM "$p" 2>/dev/null
  wait "$p"
  check "cmtpd $1 exits 0 on SIGTERM" [ $? -eq 0 ]
}
kill9() {
  local p
  eval "p=\$PID_$1"
  kill -9 "$p" 2>/dev/null
  wait "$p" 2>/dev/null
}
envs() { rcli r --scan --pattern 'k:*:env:*' | wc -l; }
delivered() { ls "$T/sink" | grep -c "^msg-.*-$1\$"; }
msgs() { ls "$T/sink" | grep -c '^msg-'; }
# state_is NAME STATE: `cmtpctl status` of node NAME says delivery: STATE.
state_is() { CTL "$1" status | grep -q "^delivery: $2\$"; }
gone() { [ "$(envs)" -eq 0 ]; }
send() { "${SEND[@]}" -s "127.0.0.1:$1" -t "$2" "$T/m" >/dev/null; }
printf 'Subject: knobs\r\n\r\nhello\r\n' >"$T/m"

# The LMTP sink (tests/integration/lmtp_sink.py: stall-* holds its first attempt) and a store
# that accepts connections and never answers (every attempt hangs), counting connections.
PS=$(free_port) PX=$(free_port)
mkdir -p "$T/sink"
python3 "$TOP/tests/integration/lmtp_sink.py" "$PS" "$T/sink" 2>"$T/sink.err" &
PIDS+=("$!")
python3 - "$PX" "$T/hang.count" <<'PY' 2>"$T/hang.err" &
import socket, sys, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
n, held = 0, []
open(sys.argv[2], "w").write("0\n")
while True:
    c, _ = s.accept()
    n += 1
    held.append(c)  # never answered, never closed by us
    open(sys.argv[2], "w").write("%d\n" % n)
PY
PIDS+=("$!")
wait_for test -f "$T/sink/ready" || bad "lmtp sink starts"
wait_for test -f "$T/hang.count" || bad "hanging store starts"

PA=$(free_port) PB=$(free_port) PP=$(free_port)
conf a "$PA" "lmtp = 127.0.0.1:$PS" 'enabled = no'
conf b "$PB" "lmtp = 127.0.0.1:$PS"
conf p "$PP" "lmtp = 127.0.0.1:$PX" 'attempts_crash_max = 2'

# ---------------------------------------------------------------------------------------------
# 1. enabled = no: an ingest-only node. Messages are accepted and stay in Redis.
start a
check "enabled=no: status says delivery paused" state_is a paused
send "$PA" one@b.test
send "$PA" two@b.test
sleep 1.5
check "enabled=no: nothing delivered" [ "$(msgs)" -eq 0 ]
check "enabled=no: both messages stay in Redis" [ "$(envs)" -eq 2 ]
check "enabled=no: nothing claimed (no lease taken)" [ "$(rcli r --scan --pattern 'k:*:leases' | wc -l)" -eq 0 ]
check "enabled=no: no delivery attempt logged" bash -c "! grep -q 'event=delivered\|event=deferred' '$T/a.log'"
out=$(CTL a delivery resume)
check "delivery resume: answers running" grep -q '^delivery: running' <<<"$out"
check "delivery resume: both are delivered" poll 5 eval '[ "$(msgs)" -eq 2 ]'
check "delivery resume: removed from Redis" poll 5 gone
check "delivery resume: status says running" state_is a running

# 2. pause: no new work is claimed until resume.
out=$(CTL a delivery pause)
check "delivery pause: answers paused" grep -q '^delivery: paused' <<<"$out"
check "delivery pause: logged with the admin" grep -q 'event=delivery-paused by=admin' "$T/a.log"
sleep 0.4 # every worker has seen the flag (one tick)
send "$PA" three@b.test
sleep 1.5
check "paused: the new message is not delivered" [ "$(delivered three@b.test)" -eq 0 ]
check "paused: it stays queued" [ "$(envs)" -eq 1 ]
CTL a delivery resume >/dev/null
check "resumed: it is delivered" poll 5 eval '[ "$(delivered three@b.test)" -eq 1 ]'
check "resumed: the JSON reply names the state" bash -c "'$B/cmtpctl' -s '$T/admin-a.sock' --json delivery resume | grep -q '\"delivery\":\"running\"'"
stop a

# ---------------------------------------------------------------------------------------------
# 3. lease = 2s: node B is killed during a delivery (the sink holds its first attempt of
# stall-*); node A, started afterwards, takes the work over once the lease expired and
# delivers it exactly once.
start b
send "$PB" stall-1@b.test
check "takeover: the store holds B's delivery" poll 8 test -f "$T/sink/stalled"
kill9 b
t0=$(date +%s.%N)
sed -i 's/^enabled = no$/enabled = yes/' "$T/a.conf"
start a
check "takeover: A delivers it" poll 10 eval '[ "$(delivered stall-1@b.test)" -ge 1 ]'
t1=$(date +%s.%N)
el=$(python3 -c "print('%.1f' % ($t1 - $t0))")
echo "     taken over and delivered ${el}s after the kill"
check "takeover: not before the 2 s lease expired" python3 -c "import sys; sys.exit(0 if $t1 - $t0 >= 1.5 else 1)"
check "takeover: within a few seconds of it" python3 -c "import sys; sys.exit(0 if $t1 - $t0 <= 8 else 1)"
sleep 1
check "takeover: delivered once" [ "$(delivered stall-1@b.test)" -eq 1 ]
check "takeover: removed from Redis" poll 5 gone
stop a

# ---------------------------------------------------------------------------------------------
# 4. A poison message: every attempt hangs and the node is killed during it (attempts_crash_max
# = 2, lease 2s). The first restart takes it over (crash 1), the second finds the lease expired
# again (crash 2) and dead-letters it instead of delivering.
start p
send "$PP" poison@b.test
QID=$(rcli r --scan --pattern 'k:*:env:*' | sed 's/.*:env://' | head -1)
for round in 1 2; do
  want=$round
  check "poison: attempt $round reaches the store" poll 8 eval '[ "$(cat "$T/hang.count")" -ge $want ]'
  kill9 p
  sleep 2.3 # the lease expires
  start p
done
check "poison: dead-lettered after 2 crashed attempts" poll 5 grep -q "event=dead-lettered qid=$QID" "$T/p.log"
out=$(CTL p queue list --state dead)
check "poison: listed by cmtpctl queue list --state dead" grep -q "$QID" <<<"$out"
sleep 1.5
check "poison: not attempted again" [ "$(cat "$T/hang.count")" -eq 2 ]
check "poison: its record is kept in Redis" [ "$(envs)" -eq 1 ]
show=$(CTL p queue show "$QID")
check "poison: queue show says dead with the crash count" bash -c "grep -qi 'dead' <<<\"\$1\" && grep -q '2' <<<\"\$1\"" _ "$show"
stop p

san=$(cat "$T"/[abp].log 2>/dev/null | grep -c 'ERROR: AddressSanitizer\|runtime error\|LeakSanitizer')
check "no sanitizer report in any cmtpd log" [ "$san" -eq 0 ]
finish
