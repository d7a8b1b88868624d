#!/usr/bin/env bash
# tests/integration/test_ops.sh — privileges and reload (RELIABILITY.md cases 22 and 25):
# cmtpd binds, then runs as [server] user with no capabilities, no_new_privs and an execve
# ban (checked in /proc); SIGHUP reloads certificates with established sessions kept and zero
# failed handshakes under load; a broken certificate is refused and the old one kept.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "needs root (drops to nobody)"; echo "0 passed, 0 failed"; exit 0; }

chmod 755 "$T"
certs "$T/tls" mx.b.test b.test
cp "$T/tls/server.crt" "$T/tls/live.crt"; cp "$T/tls/server.key" "$T/tls/live.key"
# After the switch to [server] user, a reload reads the key as that user (docs/CONFIG.md).
chown nobody "$T/tls/live.key"
PORT=$(free_port)
cat >"$T/cmtpd.conf" <<CONF
[server]
hostname = mx.b.test
listen = 127.0.0.1:$PORT
state_dir = $T/state
workers = 2
user = nobody
[tls]
cert = $T/tls/live.crt
key = $T/tls/live.key
CONF
"$B/cmtpd" -c "$T/cmtpd.conf" 2>"$T/cmtpd.log" &
CMTPD=$!
PIDS+=("$CMTPD")
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" || bad "cmtpd listens"
st=$(cat /proc/$CMTPD/status)
check "runs as nobody (real, effective, saved uid)" grep -qE '^Uid:\s+65534\s+65534\s+65534\s+65534' <<<"$st"
check "no effective capability" grep -qE '^CapEff:\s+0+$' <<<"$st"
check "no permitted capability" grep -qE '^CapPrm:\s+0+$' <<<"$st"
check "no_new_privs set" grep -qE '^NoNewPrivs:\s+1' <<<"$st"
check "seccomp filter active (execve forbidden)" grep -qE '^Seccomp:\s+2' <<<"$st"
for t in /proc/$CMTPD/task/*; do grep -qE '^Seccomp:\s+2' "$t/status" || bad "thread $(basename $t) without seccomp"; done
rp=$(cat "$T/state/redis/redis.pid" 2>/dev/null)
check "embedded redis-server runs as nobody too" bash -c '[ -n "$1" ] && grep -qE "^Uid:\s+65534" /proc/$1/status' _ "$rp"
send() { "$B/cmtp-send" --ca "$T/tls/ca.crt" -s "127.0.0.1:$PORT" -n b.test -f a@a.test -t b@b.test "$T/msg"; }
printf 'hello\r\n' >"$T/msg"
check "mail accepted after the privilege drop" bash -c "$(declare -f send); B='$B' T='$T' PORT=$PORT send >/dev/null"
fp() { openssl s_client -connect "127.0.0.1:$PORT" -alpn cmtp/1 -tls1_3 -CAfile "$T/tls/ca.crt" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256; }
f1=$(fp)
# An established session survives the reload.
python3 - "$PORT" "$T/tls/ca.crt" "$CMTPD" "$T/tls" >"$T/keep.out" 2>&1 <<'PY' &
import os, shutil, signal, sys, time
sys.path.insert(0, os.path.join(os.environ["TOP"], "tests/integration"))
import cmtpclient as cc
port, ca, pid, tls = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = cc.Conn(port, ca); c.read_greeting()
time.sleep(2.5)
_, _, end = cc.send_message(c, "a@a.test", ["b@b.test"], b"across the reload")
print("end=%s" % end)
PY
KEEP=$!
sleep 0.5
# Reload under handshake load: the new certificate (P-256) is served, no handshake fails.
"$B/cmtp-bench" -s "127.0.0.1:$PORT" --ca "$T/tls/ca.crt" -n b.test --handshakes --conns 4 --duration 3 --json >"$T/hs.json" 2>/dev/null &
BENCH=$!
sleep 0.7
cp "$T/tls/server-p256.crt" "$T/tls/live.crt"; cp "$T/tls/server-p256.key" "$T/tls/live.key"; chown nobody "$T/tls/live.key"
kill -HUP "$CMTPD"
sleep 0.5; kill -HUP "$CMTPD"; sleep 0.5
wait "$BENCH"; brc=$?
wait "$KEEP"
check "an established session is kept across reloads" grep -q 'end=250 accepted' "$T/keep.out"
check "reload under load: zero failed handshakes" python3 -c "
import json,sys; r=json.load(open('$T/hs.json')); e=r.get('errors',{}); n=sum(v for v in e.values()) if isinstance(e,dict) else e
sys.exit(0 if $brc==0 and n==0 and r.get('handshakes',0)>0 else 1)"
f2=$(fp)
check "the reloaded certificate is served" bash -c '[ -n "$1" ] && [ -n "$2" ] && [ "$1" != "$2" ]' _ "$f1" "$f2"
check "reload logged" grep -q 'event=reloaded' "$T/cmtpd.log"
# A broken certificate is refused and the old one kept.
echo "not a certificate" >"$T/tls/live.crt"
kill -HUP "$CMTPD"; sleep 0.5
check "broken certificate: reload refused and logged" grep -q 'event=reload-refused' "$T/cmtpd.log"
check "broken certificate: the old one is still served" [ "$(fp)" = "$f2" ]
check "mail still accepted after the refused reload" bash -c "$(declare -f send); B='$B' T='$T' PORT=$PORT send >/dev/null"
kill -TERM "$CMTPD"; wait "$CMTPD"; rc=$?
check "SIGTERM exits 0" [ $rc -eq 0 ]
check "embedded redis stopped" bash -c '! kill -0 "$1" 2>/dev/null' _ "$rp"
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/cmtpd.log" && bad "sanitizer report" || ok "no sanitizer report"
finish
