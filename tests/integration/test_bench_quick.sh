#!/usr/bin/env bash
# tests/integration/test_bench_quick.sh — cmtp-bench in quick mode against the real cmtpd and a
# private redis-server: handshakes (full and resumed), 1 KiB and 64 KiB persistent sessions,
# one connection per message, the open loop, --msgs, idle sessions, error classes and exit
# status, JSON and table output; then SMTP+STARTTLS against a private Postfix when possible.
# Proves the bench works and its numbers are sane; it measures nothing worth quoting.
source "$(dirname "$0")/lib.sh"

certs "$T/tls" localhost
start_redis r
PORT=$(free_port)
cat >"$T/cmtpd.conf" <<CONF
[server]
hostname = mx.bench.example
listen = 127.0.0.1:$PORT
state_dir = $T/state
workers = 1
conn_per_ip_max = 10000
[tls]
cert = $T/tls/server.crt
key = $T/tls/server.key
[redis]
address = unix:$T/r.sock
[admin]
socket = $T/cmtpd.sock
[timeouts]
idle = 20s
CONF
# SMTP + STARTTLS against a private Postfix instance (bench/postfix.sh: own config, queue and
# port; delivery to discard:). Needs root (Postfix's master drops to the postfix user) and
# Debian's postfix. Its start (several seconds of postfix-script checks) runs in the background
# meanwhile.
source "$TOP/bench/postfix.sh"
PF=$T/pf
SMTP_OK=
if pf_available; then
  SMTP_OK=1
  SPORT=$(free_port)
  pf_setup "$PF" "$SPORT" "$T/tls/server.crt" "$T/tls/server.key" 20 && pf_start "$PF"
fi
# stop_all stops the private master by its pid (its children follow), then the usual cleanup.
stop_all() {
  [ -z "$SMTP_OK" ] || pf_stop "$PF"
  cleanup
}
trap stop_all EXIT

"$B/cmtpd" -c "$T/cmtpd.conf" 2>"$T/cmtpd.log" &
CMTPD=$!
PIDS+=("$CMTPD")
if ! wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)"; then
  bad "cmtpd listens (log: $(tail -n 3 "$T/cmtpd.log" | tr '\n' ' '))"
  finish
  exit 1
fi
ok "cmtpd listens"

# bench NAME ARGS...: run cmtp-bench against cmtpd with --json, keep stdout in $T/NAME.json,
# stderr in $T/NAME.err, and the exit status in $RC.
bench() {
  local name=$1; shift
  timeout 60 "$B/cmtp-bench" --ca "$T/tls/ca.crt" -s "127.0.0.1:$PORT" --json -q \
    -p "$CMTPD" -p "$REDIS_PID_r" "$@" >"$T/$name.json" 2>"$T/$name.err"
  RC=$?
}
# jcheck NAME [DESC EXPR]...: one Python process checks every EXPR (an expression over the JSON
# object j of run NAME) and prints ok/FAIL lines, which are folded into this script's counts.
# A run that is expected to succeed gets the common checks too (see sane_exprs).
jcheck() {
  local name=$1; shift
  local out
  out=$(python3 - "$T/$name.json" "$name" "$@" <<'PY' 2>&1
import json, sys
path, name, args = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    j = json.load(open(path))
except Exception as e:
    print("FAIL %s: no JSON object (%s)" % (name, e))
    sys.exit(0)
for desc, expr in zip(args[0::2], args[1::2]):
    try:
        good = bool(eval(expr, {"j": j}))
    except Exception as e:
        good = False
        desc += " (%s)" % e
    print("%s %s: %s" % ("ok  " if good else "FAIL", name, desc))
PY
)
  echo "$out"
  PASS=$((PASS + $(grep -c '^ok ' <<<"$out")))
  FAIL=$((FAIL + $(grep -c '^FAIL' <<<"$out")))
}
# sane NAME [DESC EXPR]...: exit 0 plus the checks of every successful run, plus the given ones.
sane() {
  local name=$1; shift
  check "$name: exit 0" [ "$RC" -eq 0 ]
  jcheck "$name" \
    "no errors" 'j["errors"]["total"] == 0 and j["first_error"] == ""' \
    "server CPU per operation measured (> 0)" \
    'j["server_cpu_us_per_op"] is not None and j["server_cpu_us_per_op"] > 0 and all(s["cpu_ok"] for s in j["servers"])' \
    "own CPU measured" 'j["bench_cpu_us"] > 0' \
    "$@"
}

"$B/cmtp-bench" --help >"$T/help.txt"
check "--help exits 0 and documents the options" \
  grep -q -- '--rate R' "$T/help.txt"
"$B/cmtp-bench" --rate 10 --handshakes >/dev/null 2>"$T/usage.err"
check "contradictory options: exit 2 with a reason" \
  bash -c '[ $1 -eq 2 ] && grep -q exclude "$2"' _ $? "$T/usage.err"

# Full TLS 1.3 handshakes.
bench hs --handshakes -c 4 -d 1
sane hs \
  "handshakes: counted, rate > 0, none resumed" \
  'j["mode"] == "handshakes" and j["handshakes"] > 10 and j["handshakes_per_s"] > 0 and j["resumed"] == 0' \
  "handshakes: latency percentiles ordered" \
  '(lambda l: l["count"] == j["handshakes"] and 0 < l["p50"] <= l["p99"] <= l["max"])(j["latency_us"]["handshake"])'

# Resumed handshakes: every connection after a session's first offers its ticket.
bench res --handshakes --resume -c 2 -d 0.7
sane res \
  "--resume: most handshakes resumed" \
  'j["resumed"] > 0 and j["resumed"] >= j["handshakes"] - 2'

# 1 KiB, persistent sessions (closed loop), after a short warm-up.
txn_keys() { rcli r --scan --pattern '*:txn:*' | wc -l; }
before=$(txn_keys)
bench k1 -c 8 -d 1 -w 0.3 --size 1k
stored=$(($(txn_keys) - before))
sane k1 \
  "every acknowledged message has its transaction in Redis ($stored)" \
  "j['msgs'] <= $stored" \
  "1k: messages accepted at a rate > 0" \
  'j["msgs"] > 50 and j["msgs_per_s"] > 0 and j["body_bytes"] == 1024 * j["msgs"]' \
  "1k: ack latency histogram matches the count" \
  '(lambda l: l["count"] == j["msgs"] and 0 < l["min"] <= l["p50"] <= l["p90"] <= l["p99"] <= l["p999"] <= l["max"])(j["latency_us"]["ack"])' \
  "1k: measured interval is the duration" \
  'abs(j["elapsed_s"] - 1.0) < 0.01' \
  "1k: no duplicate acknowledgements" \
  'j["dups"] == 0' \
  "1k: persistent sessions (new handshakes only at the server's txn-max)" \
  'j["handshakes"] <= j["reconnects"] + 8'

# 64 KiB bodies.
bench k64 -c 4 -d 0.7 --size 64k
sane k64 \
  "64k: messages accepted, body octets add up" \
  'j["msgs"] > 5 and j["body_bytes"] == 65536 * j["msgs"] and j["size"] == "64k"'

# One connection (and full handshake) per message.
bench pc --per-conn 1 -c 4 -d 0.7
sane pc \
  "per-conn: one handshake per message" \
  'j["per_conn"] and j["msgs"] > 5 and abs(j["handshakes"] - j["msgs"]) <= 4'

# Open loop at a modest rate: the arrivals happen on schedule, latency from the schedule.
bench open --rate 200 -d 1.5 -c 8
sane open \
  "open loop: about rate x duration messages (300)" \
  '270 <= j["msgs"] <= 301' \
  "open loop: sched latency >= ack latency, both counted" \
  '(lambda s, a: s["count"] == a["count"] == j["msgs"] and s["p50"] >= a["p50"])(j["latency_us"]["sched"], j["latency_us"]["ack"])'

# A fixed number of messages per session, and a mixed body size.
bench msgs -c 3 -m 10 --size mix
sane msgs \
  "--msgs: exactly sessions x msgs messages" \
  'j["msgs"] == 30 and j["size"] == "mix"'

# Idle sessions: the server's memory per idle TLS connection.
bench idle --idle 100 --idle-hold 0.5
check "idle: exit 0" [ "$RC" -eq 0 ]
jcheck idle "every session open, RSS read before and after" \
  'j["idle_open"] == 100 and j["errors"]["total"] == 0 and j["servers"][0]["rss_ok"] and j["servers"][0]["rss_after_kib"] > 0'

# Errors: a certificate for another name fails every session with class tls, exit 1; with
# --allow-errors the exit status is 0.
bench badname -n wrong.example -c 2 -m 2
check "wrong verify name: exit 1" [ "$RC" -eq 1 ]
jcheck badname "wrong verify name: tls errors counted, nothing accepted" \
  'j["errors"]["tls"] >= 2 and j["errors"]["total"] == j["errors"]["tls"] and j["msgs"] == 0 and "tls" in j["first_error"]'
bench badname2 -n wrong.example -c 1 -m 1 --allow-errors
check "--allow-errors: exit 0" [ "$RC" -eq 0 ]
bench refused -s "127.0.0.1:$(free_port)" -c 1 -m 2
check "nobody listening: connect errors, exit 1" \
  bash -c '[ $1 -eq 1 ]' _ "$RC"
jcheck refused "nobody listening: class connect" 'j["errors"]["connect"] == 2'

# The table (no --json) and the progress line.
timeout 30 "$B/cmtp-bench" --ca "$T/tls/ca.crt" -s "127.0.0.1:$PORT" -c 2 -d 1.2 \
  --hist "$T/hist.dat" >"$T/table.txt" 2>"$T/progress.txt"
check "table: messages, latency and CPU lines" \
  bash -c 'grep -q "^  messages" "$1" && grep -q "^  ack " "$1" && grep -q "CPU" "$1"' _ "$T/table.txt"
check "progress line once a second on stderr" grep -q 'msg/s  total' "$T/progress.txt"
check "--hist: gnuplot data ends at cumulative 1" bash -c 'tail -n 1 "$1" | grep -q " 1.000000$"' _ "$T/hist.dat"

kill -0 "$CMTPD" 2>/dev/null && ok "cmtpd still running" || bad "cmtpd died"
grep -q 'ERROR: AddressSanitizer\|runtime error' "$T/cmtpd.log" "$T"/*.err && bad "sanitizer report" || ok "no sanitizer report"

# SMTP + STARTTLS against the private Postfix started above.
if [ -n "$SMTP_OK" ]; then
  if pf_wait "$PF" "$SPORT"; then
    MASTER=$PF_MASTER
    ok "private postfix listens on $SPORT"
    sbench() {
      local name=$1; shift
      timeout 60 "$B/cmtp-bench" --proto smtp --ca "$T/tls/ca.crt" -s "127.0.0.1:$SPORT" --json -q \
        --server-tree "$MASTER" "$@" >"$T/$name.json" 2>"$T/$name.err"
      RC=$?
    }
    sbench smtp -c 4 -d 1
    sane smtp \
      "smtp: messages accepted after STARTTLS (TLS 1.3, verified)" \
      'j["proto"] == "smtp" and j["msgs"] > 5'
    check "smtp: postfix logged sessions with STARTTLS, MAIL, RCPT and DATA" \
      wait_for grep -q 'ehlo=2 starttls=1 mail=[1-9][0-9]* rcpt=[1-9][0-9]* data=[1-9]' "$PF/maillog"
    sbench smtppc -c 2 -d 0.7 --per-conn --size 64k
    sane smtppc \
      "smtp per-conn 64k: a handshake per message" \
      'j["msgs"] > 0 and abs(j["handshakes"] - j["msgs"]) <= 2'
  else
    bad "private postfix did not start: $(pf_log_tail "$PF")"
  fi
else
  echo "skip SMTP checks: needs root and /usr/sbin/postfix"
fi

finish
