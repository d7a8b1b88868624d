#!/usr/bin/env bash
# tests/integration/test_limits.sh — connection limits and deadlines: conn_per_ip_max refuses
# the connection before any TLS byte; a silent TCP peer is closed at the handshake deadline; a
# silent CMTP session gets `605 timeout` at the idle deadline; a stalled command line at the
# command deadline; other clients are served meanwhile; [limits] line_max and rcpt_max are
# advertised in the greeting and enforced.
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
conn_per_ip_max = 5
[tls]
cert = $T/tls/server.crt
key = $T/tls/server.key
[redis]
address = unix:$T/r.sock
[timeouts]
handshake = 1s
idle = 1s
command = 1s
[limits]
line_max = 2048
rcpt_max = 3
CONF
"$B/cmtpd" -c "$T/cmtpd.conf" 2>"$T/cmtpd.log" &
PIDS+=("$!")
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)"
out=$(python3 - "$PORT" "$T/tls/ca.crt" <<'PY' 2>&1
import os, socket, sys, time
sys.path.insert(0, os.path.join(os.environ.get("TOP", "."), "tests/integration"))
import cmtpclient as cc
port, ca = int(sys.argv[1]), sys.argv[2]
def res(name, cond, why=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else " " + str(why)), flush=True)
time.sleep(0.3)  # the readiness probe's connection must be gone
conns = [cc.Conn(port, ca) for _ in range(5)]
res("5 connections from one IP greeted", all(c.read_greeting().startswith("220") for c in conns))
try:
    x = cc.Conn(port, ca, timeout=3)
    g = x.read_greeting()
    res("6th connection from the same IP refused", False, g)
except (OSError, ConnectionError) as e:
    res("6th connection from the same IP refused before TLS", True)
conns.pop().close()
time.sleep(0.3)
try:
    y = cc.Conn(port, ca)
    res("a slot freed by a close is usable again", y.read_greeting().startswith("220"))
    y.close()
except OSError as e:
    res("a slot freed by a close is usable again", False, e)
for c in conns:
    c.close()
time.sleep(0.3)
# Handshake deadline: a TCP peer that sends nothing is closed after ~1 s.
s = socket.create_connection(("127.0.0.1", port), 5)
t0 = time.time()
s.settimeout(5)
try:
    d = s.recv(100)
except OSError:
    d = b""
res("silent TCP peer closed at the handshake deadline (%.1fs)" % (time.time() - t0),
    d == b"" and 0.5 < time.time() - t0 < 3.5)
# Idle deadline: greeting, then silence: 605 timeout and close.
c = cc.Conn(port, ca)
c.read_greeting()
t0 = time.time()
try:
    r = c.read_line()
except (OSError, ConnectionError) as e:
    r = repr(e)
res("idle session: 605 timeout (%.1fs)" % (time.time() - t0), r.startswith("605 timeout"), r)
# Command deadline: half a line, then silence.
c = cc.Conn(port, ca)
c.read_greeting()
c.send("NOOP")
try:
    r = c.read_line()
except (OSError, ConnectionError) as e:
    r = repr(e)
res("stalled command line: 605 timeout", r.startswith("605 timeout"), r)
# Meanwhile others are served.
c = cc.Conn(port, ca)
c.read_greeting()
_, _, end = cc.send_message(c, "a@a.test", ["b@b.test"], b"still served")
res("a well-behaved client is served", (end or "").startswith("250 accepted"), end)
# [limits]: line-max=2048 and rcpt-max=3 advertised; a 2048-octet line is a line, 2049 is not.
c = cc.Conn(port, ca)
g = c.read_greeting()
res("greeting advertises line-max=2048 rcpt-max=3", " line-max=2048 " in g and " rcpt-max=3 " in g, g)
c.send("NOOP " + "x" * (2048 - 7) + "\r\n")
r = c.read_line()
res("a line of exactly line-max octets is read as a line", r.startswith("501 "), r)
c.send("NOOP " + "x" * (2048 - 6) + "\r\n")
try:
    r = c.read_line()
except (OSError, ConnectionError) as e:
    r = repr(e)
res("one octet past line-max: 600 line-too-long", r.startswith("600 line-too-long"), r)
PY
)
echo "$out"
PASS=$((PASS + $(grep -c '^ok ' <<<"$out"))); FAIL=$((FAIL + $(grep -c '^FAIL' <<<"$out")))
grep -q 'Traceback' <<<"$out" && bad "python crashed"
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/cmtpd.log" && bad "sanitizer report" || ok "no sanitizer report"
finish
