#!/usr/bin/env bash
# tests/integration/test_drain.sh — drain under load loses nothing (RELIABILITY.md case 10):
# while cmtp-bench sends, `cmtpctl drain` stops new sessions and ends the others at a command
# boundary with 421; every acknowledged message is in Redis; clients saw only temporary
# failures; `cmtpctl resume` takes mail again. Also: the daemon's real /metrics output passes
# a strict Prometheus exposition check and counts what happened.
source "$(dirname "$0")/lib.sh"

certs "$T/tls" mx.b.test b.test
start_redis r
PORT=$(free_port)
MPORT=$(free_port)
cat >"$T/cmtpd.conf" <<CONF
[server]
hostname = mx.b.test
listen = 127.0.0.1:$PORT
state_dir = $T/state
workers = 2
conn_per_ip_max = 0
[tls]
cert = $T/tls/server.crt
key = $T/tls/server.key
[redis]
address = unix:$T/r.sock
[delivery]
enabled = no
[admin]
metrics_listen = 127.0.0.1:$MPORT
CONF
"$B/cmtpd" -c "$T/cmtpd.conf" 2>"$T/cmtpd.log" &
CMTPD=$!
PIDS+=("$CMTPD")
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" || bad "cmtpd listens"
ctl() { "$B/cmtpctl" -s "$T/state/cmtpd.sock" "$@"; }
"$B/cmtp-bench" -s "127.0.0.1:$PORT" --ca "$T/tls/ca.crt" -n b.test --conns 16 --size 1k \
  --duration 3 --allow-errors --json -q >"$T/bench.json" 2>"$T/bench.err" &
BENCH=$!
sleep 1.2
check "cmtpctl drain (exit 0)" ctl drain
wait "$BENCH"
acked=$(python3 -c "import json; print(json.load(open('$T/bench.json'))['msgs'])")
errs=$(python3 -c "import json; e=json.load(open('$T/bench.json'))['errors']; print(' '.join('%s=%s'%(k,v) for k,v in e.items() if v))")
echo "acked=$acked errors: $errs"
stored=$(rcli r --scan --pattern 'cmtp:*:env:*' | wc -l)
check "messages were acknowledged before the drain ($acked)" [ "$acked" -gt 0 ]
check "every acknowledged message is in Redis ($stored stored >= $acked acked)" [ "$stored" -ge "$acked" ]
check "clients saw no permanent or protocol failure" bash -c '! grep -qE "(perm|protocol)=[1-9]" <<<"$1"' _ "$errs"
out=$(python3 - "$PORT" "$T/tls/ca.crt" <<'PY' 2>&1
import os, sys
sys.path.insert(0, os.path.join(os.environ["TOP"], "tests/integration"))
import cmtpclient as cc
try:
    c = cc.Conn(int(sys.argv[1]), sys.argv[2], timeout=5)
    print("greeting=%s" % c.read_greeting())
except Exception as e:
    print("refused=%s" % type(e).__name__)
PY
)
check "while drained, a new connection gets no session" bash -c '! grep -q "greeting=220" <<<"$1"' _ "$out"
check "cmtpd still runs while drained" kill -0 "$CMTPD"
check "cmtpctl resume (exit 0)" ctl resume
printf 'after resume\r\n' >"$T/msg"
check "mail accepted again after resume" bash -c '"$1/cmtp-send" --ca "$2/tls/ca.crt" -s "127.0.0.1:$3" -n b.test -f a@a.test -t b@b.test "$2/msg" | grep -q "^accepted"' _ "$B" "$T" "$PORT"
curl -s "http://127.0.0.1:$MPORT/metrics" >"$T/metrics.txt"
check "GET /metrics passes the strict exposition check" python3 "$TOP/tests/integration/promcheck.py" <"$T/metrics.txt"
ctl metrics >"$T/metrics2.txt"
check "cmtpctl metrics passes the strict exposition check" python3 "$TOP/tests/integration/promcheck.py" <"$T/metrics2.txt"
acc=$(sed -n 's/^cmtp_messages_total{outcome="accepted"} //p' "$T/metrics.txt")
check "metrics count the accepted messages ($acc >= $acked)" bash -c '[ -n "$1" ] && [ "$1" -ge "$2" ]' _ "$acc" "$acked"
check "metrics show the queue depth" grep -q '^cmtp_queue_depth{state="scheduled"}' "$T/metrics.txt"
check "metrics show the commit latency histogram" grep -q '^cmtp_commit_duration_seconds_bucket{le="+Inf"}' "$T/metrics.txt"
kill -TERM "$CMTPD"; wait "$CMTPD"; rc=$?
check "SIGTERM exits 0" [ $rc -eq 0 ]
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/cmtpd.log" && bad "sanitizer report" || ok "no sanitizer report"
finish
