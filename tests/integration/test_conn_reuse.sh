#!/usr/bin/env bash
# tests/integration/test_conn_reuse.sh — LMTP connection reuse (daemon/delivery_smtp.c, the idle
# pool): 20 messages to one LMTP store go over far fewer than 20 connections and LHLOs, bodies
# byte-exact, the metrics count the reuse; a 421 ends its connection (never reused); the idle
# timeout QUITs pooled connections; a store that closes idle connections after 1 s, and one
# that drops a connection when the next command comes after 1 s idle (a stale pooled connection:
# the job tries again on a fresh one) defer no recipient; SMTP with STARTTLS required and the
# certificate verified reuses the TLS session; SIGTERM drains with pooled connections. And
# bench/lmtp_sink_main.c (cmtp-lmtp-sink), the benchmark's C LMTP store.
source "$(dirname "$0")/lib.sh"

certs "$T/tls" mx.b.test b.test smtp.b.test
start_redis r
SEND=("$B/cmtp-send" --timeout 10 --ca "$T/tls/ca.crt" -n b.test -f sender@b.test -q)
CTL() { local n=$1; shift; "$B/cmtpctl" -s "$T/admin-$n.sock" -t 10 "$@"; }

# conf NAME PORT LMTP [extra lines...]: a node with one worker (one pool), its own key prefix,
# delivering b.test over LMTP to 127.0.0.1:LMTP.
conf() {
  local name=$1 port=$2 lmtp=$3; shift 3
  {
    printf '[server]\nhostname = mx.b.test\nlisten = 127.0.0.1:%s\nstate_dir = %s\nworkers = 1\n' \
      "$port" "$T/state-$name"
    printf 'conn_per_ip_max = 0\n'
    printf '[tls]\ncert = %s/server.crt\nkey = %s/server.key\n' "$T/tls" "$T/tls"
    printf '[redis]\naddress = unix:%s\nkey_prefix = %s\n' "$T/r.sock" "$name"
    printf '[admin]\nsocket = %s\n' "$T/admin-$name.sock"
    printf '[log]\nlevel = debug\n'
    printf '[delivery]\nlocal_domains = b.test\nmode = lmtp\nlmtp = 127.0.0.1:%s\n' "$lmtp"
    printf '%s\n' "$@"
  } >"$T/$name.conf"
}
launch() {
  "$B/cmtpd" -c "$T/$1.conf" 2>>"$T/$1.log" &
  local pid=$!
  PIDS+=("$pid")
  eval "PID_$1=$pid"
}
await() {
  local port
  port=$(sed -n 's/^listen = 127.0.0.1:\(.*\)$/\1/p' "$T/$1.conf")
  wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" ||
    bad "cmtpd $1 listens"
}
poll() {
  local n=$(($1 * 10)) i; shift
  for i in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
port_of() { sed -n 's/^listen = 127.0.0.1:\(.*\)$/\1/p' "$T/$1.conf"; }
send() { "${SEND[@]}" -s "127.0.0.1:$(port_of "$1")" -t "$2" "$3" >/dev/null; }
# sink NAME [options]: the scripted LMTP store (tests/integration/lmtp_sink.py) logging
# connections into $T/NAME/conns; its port in SP_NAME.
sink() {
  local name=$1 port; shift
  port=$(free_port)
  mkdir -p "$T/$name"
  python3 "$TOP/tests/integration/lmtp_sink.py" "$port" "$T/$name" --conn-log "$@" \
    2>"$T/$name.err" &
  PIDS+=("$!")
  eval "SP_$name=$port"
}
# ev SINK WHAT: how many "WHAT N" connection events SINK logged.
ev() { grep -c "^$2 " "$T/$1/conns" 2>/dev/null || true; }
msgs() { ls "$T/$1" | grep -c '^msg-'; }
metric() { CTL "$1" metrics | awk -v m="$2" '$1 == m {print $2}'; }
# body_ok FILE ORIG: FILE is ORIG after exactly one header field (the CMTP-Trace field).
body_ok() {
  python3 -c 'import sys
d = open(sys.argv[1], "rb").read()
i = d.index(b"\r\n")
while d[i + 2:i + 3] in (b" ", b"\t"):
    i = d.index(b"\r\n", i + 2)
sys.exit(0 if d.lower().startswith(b"cmtp-trace:") and d[i + 2:] == open(sys.argv[2], "rb").read() else 1)' "$1" "$2"
}

printf 'Subject: reuse\r\n\r\nline\r\n.\r\n..two\r\n.x\r\nbin \000\377 8bit \303\251\r\nend\r\n' >"$T/m"

sink s1
sink s2 --idle-close 1
sink s3 --idle-drop 1
sink s4 --chunking
PC=$(free_port)
"$B/cmtp-lmtp-sink" -p "$PC" -o "$T/c.count" 2>"$T/c.err" &
PID_csink=$!
PIDS+=("$PID_csink")
conf a "$(free_port)" "$SP_s1" 'concurrency_per_dest = 2' # two deliveries, two connections at once
conf b "$(free_port)" "$SP_s2"
conf c "$(free_port)" "$SP_s3"
conf d "$(free_port)" "$PC"
conf f "$(free_port)" "$SP_s4"
PT=$(free_port)
mkdir -p "$T/st"
python3 "$TOP/tests/integration/smtp_sink.py" "$PT" "$T/st" --cert "$T/tls/server-p256.crt" \
  --key "$T/tls/server-p256.key" 2>"$T/st.err" &
PIDS+=("$!")
conf e "$(free_port)" 0
sed -i -e 's/^mode = lmtp$/mode = smtp/' -e "s/^lmtp = 127.0.0.1:0\$/smtp = 127.0.0.1:$PT/" "$T/e.conf"
printf 'smtp_starttls = require\nsmtp_tls_verify = yes\nsmtp_tls_name = smtp.b.test\n' >>"$T/e.conf"
printf '[tls]\nca = %s/ca.crt\n' "$T/tls" >>"$T/e.conf"
for n in a b c d e f; do launch $n; done
for n in a b c d e f; do await $n; done
for s in s1 s2 s3; do wait_for test -f "$T/$s/ready" || bad "lmtp sink $s starts"; done

# ---------------------------------------------------------------------------------------------
# 1. 20 messages (4 senders in parallel, 5 each) to one store: far fewer connections and LHLOs.
senders=()
for k in 0 1 2 3; do
  (for i in 1 2 3 4 5; do send a "u$k-$i@b.test" "$T/m"; done) &
  senders+=("$!")
done
for p in "${senders[@]}"; do wait "$p"; done
poll 15 eval '[ "$(msgs s1)" -ge 20 ]'
check "reuse: 20 messages delivered" [ "$(msgs s1)" -eq 20 ]
n_open=$(ev s1 open)
n_lhlo=$(ev s1 lhlo)
check "reuse: far fewer than 20 connections ($n_open)" [ "$n_open" -ge 1 ] && [ "$n_open" -le 4 ]
check "reuse: one LHLO per connection ($n_lhlo)" [ "$n_lhlo" -eq "$n_open" ]
check "reuse: some connection carried several messages" \
  bash -c "awk '\$1 == \"deliver\" {n[\$2]++} END {for (c in n) if (n[c] > 1) ok = 1; exit !ok}' '$T/s1/conns'"
bad_bodies=0
for f in "$T/s1"/msg-*; do body_ok "$f" "$T/m" || bad_bodies=$((bad_bodies + 1)); done
check "reuse: every body byte-exact after the trace field" [ "$bad_bodies" -eq 0 ]
check "reuse: nothing deferred" bash -c "! grep -q 'event=deferred' '$T/a.log'"
reused=$(metric a cmtp_delivery_connections_reused_total)
conns=$(metric a cmtp_delivery_connections_total)
check "reuse: metrics count the reused deliveries ($reused) and connections ($conns)" \
  [ "${reused:-0}" -eq $((20 - n_open)) ] && [ "${conns:-0}" -eq "$n_open" ]

# 2. A 421 from the store ends its connection: the next message goes over another one.
send a r421-x@b.test "$T/m"
check "421: the store answered 421" poll 5 grep -q '^421 r421-x@b.test' "$T/s1/log"
c421=$(awk '$1 == "r421" {print $2; exit}' "$T/s1/conns")
check "421: deferred, not delivered" poll 5 grep -q 'event=deferred.*r421-x@b.test' "$T/a.log"
send a after@b.test "$T/m"
check "421: the next message is delivered" poll 5 eval '[ "$(msgs s1)" -eq 21 ]'
c_after=$(awk '$1 == "deliver" {c = $2} END {print c}' "$T/s1/conns")
check "421: over another connection ($c421 -> $c_after)" [ -n "$c421" ] && [ "$c_after" != "$c421" ]
check "421: that connection carried nothing more and is closed" bash -c \
  "awk -v c='$c421' '\$2 == c && seen && \$1 != \"close\" {bad = 1} \$2 == c && \$1 == \"r421\" {seen = 1} \$2 == c && \$1 == \"close\" {closed = 1} END {exit bad || !closed}' '$T/s1/conns'"

# 3. The idle timeout (5 s) QUITs every pooled connection.
check "idle: every connection QUIT and closed after the idle timeout" \
  poll 9 eval '[ "$(ev s1 close)" -eq "$(ev s1 open)" ] && [ "$(ev s1 quit)" -ge 1 ]'
check "idle: QUITs logged by the store ($(ev s1 quit)) for the pooled ones" \
  [ "$(ev s1 quit)" -eq "$(($(ev s1 open) - 1))" ]

# ---------------------------------------------------------------------------------------------
# 4. A store that closes connections idle for 1 s (421 first): later messages still go, over
# fresh connections, and no recipient is deferred for a stale pooled connection.
for i in 1 2 3; do send b "early$i@b.test" "$T/m"; done
check "idle-close: the first three are delivered" poll 5 eval '[ "$(msgs s2)" -eq 3 ]'
check "idle-close: the store closes the idle connection" poll 5 eval '[ "$(ev s2 idle-close)" -ge 1 ]'
check "idle-close: cmtpd noticed (connection closed)" poll 5 eval '[ "$(ev s2 close)" -eq "$(ev s2 open)" ]'
for i in 1 2 3; do send b "late$i@b.test" "$T/m"; done
check "idle-close: the later three are delivered" poll 5 eval '[ "$(msgs s2)" -eq 6 ]'
check "idle-close: nothing deferred" bash -c "! grep -q 'event=deferred' '$T/b.log'"

# 5. A store that drops a connection whose next command comes after 1 s idle: the pooled
# connection is taken, MAIL goes out, the store closes without a reply; the job tries again on
# a fresh connection and delivers.
send c first@b.test "$T/m"
check "stale: the first is delivered" poll 5 eval '[ "$(msgs s3)" -eq 1 ]'
sleep 1.5
send c second@b.test "$T/m"
check "stale: the second is delivered" poll 5 eval '[ "$(msgs s3)" -eq 2 ]'
check "stale: the store dropped the pooled connection" [ "$(ev s3 drop)" -eq 1 ]
check "stale: cmtpd saw it stale and went on" grep -q 'event=pooled-connection-stale' "$T/c.log"
check "stale: a fresh connection took it" [ "$(ev s3 open)" -eq 2 ]
check "stale: nothing deferred" bash -c "! grep -q 'event=deferred' '$T/c.log'"
check "stale: counted as a reused delivery" [ "$(metric c cmtp_delivery_connections_reused_total)" -eq 1 ]

# 6. cmtp-lmtp-sink (the benchmark's C store): 10 messages, one of them to three recipients,
# all answered (one 250 per recipient) and counted in its count file.
for i in 1 2 3 4 5 6 7 8 9; do send d "c$i@b.test" "$T/m"; done
"${SEND[@]}" -s "127.0.0.1:$(port_of d)" -t x1@b.test -t x2@b.test -t x3@b.test "$T/m" >/dev/null
check "c sink: 12 recipients delivered" poll 8 eval '[ "$(grep -c "event=delivered" "$T/d.log")" -eq 12 ]'
check "c sink: the count file says 10 messages" \
  poll 3 eval '[ "$(tail -n 1 "$T/c.count" | cut -d" " -f2)" -eq 10 ]'
check "c sink: count lines are WALL_TIME COUNT, every 0.1 s (a stalled CI machine may stretch one)" python3 -c 'import sys
l = [tuple(map(float, x.split())) for x in open(sys.argv[1]) if x.strip()]
d = [b[0] - a[0] for a, b in zip(l, l[1:])]
ok = len(l) > 5 and all(len(x) == 2 for x in l) and all(0.05 < x < 2.0 for x in d[1:])
ok = ok and all(b[1] >= a[1] for a, b in zip(l, l[1:])) and abs(l[-1][0] - __import__("time").time()) < 5
sys.exit(0 if ok else 1)' "$T/c.count"
check "c sink: nothing deferred" bash -c "! grep -q 'event=deferred' '$T/d.log'"
check "c sink: the messages were reused connections" [ "$(metric d cmtp_delivery_connections_reused_total)" -ge 5 ]
kill -TERM "$PID_csink"
wait "$PID_csink"
check "c sink: exits 0 on SIGTERM" [ $? -eq 0 ]

# 7. SMTP, STARTTLS required, certificate verified: four messages in turn, one TLS session.
wait_for test -f "$T/st/ready" || bad "smtp sink starts"
for i in 1 2 3 4; do send e "t$i@b.test" "$T/m"; sleep 0.3; done
check "smtp tls: four delivered" poll 8 eval '[ "$(grep -c "^delivered t.@b.test .* tls=TLSv1.3" "$T/st/log")" -eq 4 ]'
check "smtp tls: over one STARTTLS session" [ "$(grep -c '^starttls ' "$T/st/log")" -eq 1 ]
check "smtp tls: three reused" [ "$(metric e cmtp_delivery_connections_reused_total)" -eq 3 ]
bad_bodies=0
for f in "$T/st"/msg-*; do body_ok "$f" "$T/m" || bad_bodies=$((bad_bodies + 1)); done
check "smtp tls: bodies byte-exact after the trace field" [ "$bad_bodies" -eq 0 ]
check "smtp tls: nothing deferred" bash -c "! grep -q 'event=deferred' '$T/e.log'"
kill -TERM "$PID_e"
wait "$PID_e"
check "smtp tls: cmtpd exits 0 on SIGTERM with a pooled TLS connection" [ $? -eq 0 ]
check "smtp tls: no sanitizer report" bash -c "! grep -q 'Sanitizer\|runtime error' '$T/e.log'"

# 7b. [delivery] chunking: BDAT to a store that offers CHUNKING; after a reload with
# chunking = no, DATA, on a new connection (the pooled one was made for BDAT).
send f k1@b.test "$T/m"
check "chunking: delivered in BDAT" poll 5 bash -c "[ \$(ls '$T/s4' | grep -c '^msg-') -eq 1 ] && grep -q '^bdat ' '$T/s4/log'"
send f k2@b.test "$T/m"
check "chunking: the second on the pooled connection" poll 5 bash -c "[ \$(ls '$T/s4' | grep -c '^msg-') -eq 2 ] && [ \$(grep -c '^open ' '$T/s4/conns') -eq 1 ]"
printf 'chunking = no\n' >>"$T/f.conf"
kill -HUP "$PID_f"
check "chunking: reloaded" poll 5 grep -q 'event=reloaded' "$T/f.log"
send f k3@b.test "$T/m"
check "chunking = no: delivered after DATA" poll 5 bash -c "[ \$(ls '$T/s4' | grep -c '^msg-') -eq 3 ] && grep -q '^data' '$T/s4/log'"
check "chunking = no: on a new connection" [ "$(ev s4 open)" -eq 2 ]
bad_bodies=0
for f in "$T/s4"/msg-*; do body_ok "$f" "$T/m" || bad_bodies=$((bad_bodies + 1)); done
check "chunking: the three bodies are byte-exact" [ "$bad_bodies" -eq 0 ]

# 8. SIGTERM with a pooled connection: QUIT, and a clean exit well before the idle timeout.
send a drain@b.test "$T/m"
check "drain: delivered" poll 5 eval '[ "$(msgs s1)" -eq 22 ]'
q0=$(ev s1 quit)
t0=$(date +%s%N)
kill -TERM "$PID_a"
wait "$PID_a"
rc=$?
t1=$(date +%s%N)
check "drain: cmtpd exits 0" [ "$rc" -eq 0 ]
check "drain: the pooled connection was QUIT" poll 2 eval '[ "$(ev s1 quit)" -gt "$q0" ]'
check "drain: within 3 s ($(((t1 - t0) / 1000000)) ms)" [ $(((t1 - t0) / 1000000)) -lt 3000 ]
for n in b c d f; do
  eval "kill -TERM \$PID_$n; wait \$PID_$n"
  check "cmtpd $n exits 0 on SIGTERM" [ $? -eq 0 ]
done
san=$(cat "$T"/[abcdef].log | grep -c 'ERROR: AddressSanitizer\|runtime error\|LeakSanitizer')
check "no sanitizer report in any cmtpd log" [ "$san" -eq 0 ]

finish
