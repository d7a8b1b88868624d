#!/usr/bin/env bash
# tests/integration/test_ingest.sh — cmtpd against a private redis-server with real TLS peers
# (cmtp-send on BoringSSL, Python's ssl on the system OpenSSL): durable accept, byte-exact
# storage, dedup, limits, split input, 1,000 connections, Redis down/slow and recovery.
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
conn_per_ip_max = 0
conn_max = 4000
[tls]
cert = $T/tls/server.crt
key = $T/tls/server.key
[redis]
address = unix:$T/r.sock
[delivery]
# An ingest-only node: accepted messages stay in Redis for the checks (test_delivery.sh
# covers delivery).
enabled = no
local_domains = b.test
[timeouts]
idle = 20s
CONF
"$B/cmtpd" -c "$T/cmtpd.conf" --check >/dev/null && ok "cmtpd --check accepts the config" || bad "cmtpd --check"
"$B/cmtpd" -c "$T/cmtpd.conf" 2>"$T/cmtpd.log" &
CMTPD=$!
PIDS+=("$CMTPD")
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" || bad "cmtpd listens"

py() { python3 "$TOP/tests/integration/ingest_cases.py" "$PORT" "$T/tls/ca.crt" "$T/r.sock" cmtp "$@"; }
run_py() { # run_py GROUP...: fold the Python checks into this script's counts.
  local out; out=$(py "$@" 2>&1); echo "$out" | grep -v '^[0-9]* passed'
  PASS=$((PASS + $(echo "$out" | grep -c '^ok '))); FAIL=$((FAIL + $(echo "$out" | grep -c '^FAIL')))
  echo "$out" | grep -q 'Traceback' && bad "python cases $* crashed"
  return 0
}

# cmtp-send, our client: per-recipient output and exit status.
printf 'Subject: hi\r\n\r\nhello\r\n' >"$T/msg"
out=$("$B/cmtp-send" --ca "$T/tls/ca.crt" -s "127.0.0.1:$PORT" -n b.test -f a@a.test -t b@b.test "$T/msg")
rc=$?
check "cmtp-send exit 0" [ $rc -eq 0 ]
check "cmtp-send prints the disposition" grep -q '^rcpt b@b.test final$' <<<"$out"
check "cmtp-send prints accepted" grep -q '^accepted id=' <<<"$out"
"$B/cmtp-send" --ca "$T/tls/ca.crt" -s "127.0.0.1:$PORT" -n wrong.example -f a@a.test -t b@b.test "$T/msg" >/dev/null 2>"$T/err"
check "cmtp-send refuses a certificate for another name (exit 75)" [ $? -eq 75 ]
"$B/cmtp-send" --ca "$T/tls/ca.crt" -s "127.0.0.1:$PORT" -n b.test -f a@a.test -t b@nowhere.test "$T/msg" >"$T/out" 2>&1
check "cmtp-send: refused recipient exit 65" [ $? -eq 65 ]
check "cmtp-send: refused recipient printed" grep -q 'refused 550 no-mailbox' "$T/out"

run_py basic dedup limits split

# TLS probes: refused before any protocol byte. The greeting never appears.
probe() { timeout 10 openssl s_client -connect "127.0.0.1:$PORT" -CAfile "$T/tls/ca.crt" -servername localhost "$@" </dev/null 2>&1; }
out=$( (sleep 1; printf 'NOOP\nQUIT\n') | timeout 10 openssl s_client -crlf -quiet -connect "127.0.0.1:$PORT" -CAfile "$T/tls/ca.crt" -servername localhost -tls1_3 -alpn cmtp/1 2>&1)
check "s_client: NOOP and QUIT answered" bash -c 'grep -q "^250 ok" <<<"$1" && grep -q "^221 bye" <<<"$1"' _ "$out"
check "s_client TLS 1.3 + ALPN cmtp/1 gets the greeting" grep -q '220 ready proto=cmtp/1' <<<"$out"
out=$(probe -tls1_2 -alpn cmtp/1); check "TLS 1.2 refused" bash -c '! grep -q "220 ready" <<<"$1" && grep -qiE "alert|error" <<<"$1"' _ "$out"
out=$(probe -tls1_3); check "no ALPN refused" bash -c '! grep -q "220 ready" <<<"$1" && grep -qiE "alert|error" <<<"$1"' _ "$out"
out=$(probe -tls1_3 -alpn smtp); check "wrong ALPN refused" bash -c '! grep -q "220 ready" <<<"$1" && grep -qiE "no.application.protocol|alert" <<<"$1"' _ "$out"
got=$(python3 - "$PORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.sendall(b"MAIL FROM:<a@a.test> TXN=aaaaaaaaaaaaaaaa SIZE=1 DIGEST=00\r\n")
s.settimeout(5)
data = b""
try:
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
except OSError:
    pass
print("reply=%r" % data[:40])
PY
)
check "plaintext first bytes: no protocol reply" bash -c '! grep -q "reply=b.2\|reply=b.5\|reply=b.6" <<<"$1"' _ "$got"

# 1,000 concurrent connections, each with a message.
run_py concurrent

# Redis stopped: temporary failure, never an ack; recovery when it returns.
kill -STOP "$REDIS_PID_r"
run_py redis_down
kill -CONT "$REDIS_PID_r"
run_py redis_up
kill "$REDIS_PID_r"; wait "$REDIS_PID_r" 2>/dev/null
run_py redis_down
start_redis r
run_py redis_up

# Drain: SIGTERM exits 0.
kill -TERM "$CMTPD"
for _ in $(seq 1 100); do kill -0 "$CMTPD" 2>/dev/null || break; sleep 0.1; done
wait "$CMTPD"; rc=$?
check "SIGTERM drains and exits 0" [ $rc -eq 0 ]
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/cmtpd.log" && bad "sanitizer report in cmtpd log" || ok "no sanitizer report"
finish
