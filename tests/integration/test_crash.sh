#!/usr/bin/env bash
# tests/integration/test_crash.sh — RELIABILITY.md cases 1-3: kill -9 of cmtpd mid-body and
# right after the ack, kill -9 of redis-server right after acks. Oracle: every acknowledged
# message is in Redis afterwards; a retransmission with the same txid is never stored twice.
source "$(dirname "$0")/lib.sh"

certs "$T/tls" mx.b.test b.test
start_redis r
PORT=$(free_port)
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
[delivery]
# An ingest-only node: acknowledged messages stay in Redis, where the oracle looks for them.
enabled = no
CONF
start_cmtpd() {
  "$B/cmtpd" -c "$T/cmtpd.conf" 2>>"$T/cmtpd.log" &
  CMTPD=$!
  PIDS+=("$CMTPD")
  wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)"
}
py() { python3 "$TOP/tests/integration/crash_cases.py" "$PORT" "$T/tls/ca.crt" "$@" 2>&1; }
envs() { rcli r --scan --pattern 'cmtp:*:env:*' | wc -l; }
txn_qid() { # the qid the dedup key of txid $1 names
  local k; k=$(rcli r --scan --pattern "cmtp:*:txn:$1"); [ -n "$k" ] && rcli r GET "$k" | head -n 1
}

# Case 1: kill -9 after part of the body, before the ack.
start_cmtpd
TX1=crashtxn1aaaaaaaaaaaa
out=$(py mid-body "$CMTPD" "$TX1")
check "case 1: the client sees no ack" bash -c '! grep -q "end=250" <<<"$1"' _ "$out"
wait "$CMTPD" 2>/dev/null
check "case 1: nothing committed for the txid" [ -z "$(txn_qid $TX1)" ]
start_cmtpd
out=$(py send "$TX1")
check "case 1: retry with the same txid accepted" grep -q 'end=250 accepted' <<<"$out"
check "case 1: retry is not a dup (first never acknowledged)" bash -c '! grep -q "dup=1" <<<"$1"' _ "$out"
q1=$(txn_qid $TX1)
check "case 1: stored once" [ -n "$q1" ]

# Case 2: kill -9 right after the ack.
TX2=crashtxn2bbbbbbbbbbbb
out=$(py send-then-kill "$CMTPD" "$TX2")
check "case 2: acked" grep -q 'end=250 accepted' <<<"$out"
qid2=$(sed -n 's/.*id=\([^ ]*\).*/\1/p' <<<"$out")
wait "$CMTPD" 2>/dev/null
check "case 2: acked message present after kill -9" [ "$(txn_qid $TX2)" = "$qid2" ]
start_cmtpd
out=$(py send "$TX2")
check "case 2: retransmission returns the first result (dup=1, same id)" \
  bash -c 'grep -q "dup=1" <<<"$1" && grep -q "id=$2 " <<<"$1"' _ "$out" "$qid2"

# Case 3: kill -9 redis-server right after acks; restart from its AOF; nothing lost.
out=$(py many 40)
acked=$(grep -c '^qid=' <<<"$out")
check "case 3: 40 messages acked" [ "$acked" -eq 40 ]
kill -9 "$REDIS_PID_r"; wait "$REDIS_PID_r" 2>/dev/null
start_redis r
lost=0
for q in $(sed -n 's/^qid=//p' <<<"$out"); do
  s=${q##*-}
  [ "$(rcli r EXISTS "cmtp:{s$s}:env:$q")" = 1 ] || lost=$((lost + 1))
done
check "case 3: zero acknowledged messages lost after kill -9 of redis ($acked acked)" [ "$lost" -eq 0 ]
out=$(py many 3)
check "case 3: cmtpd recovers after the redis restart" [ "$(grep -c '^qid=' <<<"$out")" -eq 3 ]
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/cmtpd.log" && bad "sanitizer report in cmtpd log" || ok "no sanitizer report"
finish
