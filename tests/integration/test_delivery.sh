#!/usr/bin/env bash
# tests/integration/test_delivery.sh — the delivery engine against real peers: Maildir, LMTP into
# Dovecot and into a scripted LMTP server (4xx then 2xx, 5xx and its status report, no report
# about a report; BDAT and BINARYMIME: a binary body arrives octet for octet), a CMTP relay between two cmtpd instances (trace, policy refusals, a
# relay-refused report), and kill -9 of the delivering cmtpd (taken over after the lease).
source "$(dirname "$0")/lib.sh"

certs "$T/tlsb" mx.b.test b.test c.test
certs "$T/tlsa" mx.a.test a.test
start_redis r
chmod o+x "$T" # Dovecot delivers as nobody below $T/dovecot

SEND=("$B/cmtp-send" --timeout 10)
# conf NAME PORT HOST CERTDIR CA [extra INI lines...]: a cmtpd config on the shared Redis, its
# own key prefix, admin socket and state; CA ("" for none) is [tls] ca, the trust anchors of
# its CMTP client.
conf() {
  local name=$1 port=$2 host=$3 certs=$4 ca=$5; shift 5
  {
    printf '[server]\nhostname = %s\nlisten = 127.0.0.1:%s\nstate_dir = %s\nworkers = 2\n' \
      "$host" "$port" "$T/state-$name"
    printf '[tls]\ncert = %s/server.crt\nkey = %s/server.key\n' "$certs" "$certs"
    [ -n "$ca" ] && printf 'ca = %s\n' "$ca"
    printf '[redis]\naddress = unix:%s\nkey_prefix = %s\n' "$T/r.sock" "$name"
    printf '[admin]\nsocket = %s\n' "$T/admin-$name.sock"
    printf '%s\n' "$@"
  } >"$T/$name.conf"
}
# launch NAME: run cmtpd NAME in the background (pid in PID_NAME); await NAME: wait until it
# listens. Instances are launched together, then awaited, to keep the test short.
launch() {
  local name=$1
  "$B/cmtpd" -c "$T/$name.conf" 2>>"$T/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  eval "PID_$name=$pid"
}
await() {
  local name=$1 port
  port=$(sed -n 's/^listen = 127.0.0.1:\(.*\)$/\1/p' "$T/$name.conf")
  wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" ||
    bad "cmtpd $name listens"
}
start() { launch "$1"; await "$1"; }

envs() { rcli r --scan --pattern "$1:*:env:*" | wc -l; }
no_envs() { [ "$(envs "$1")" -eq 0 ]; }
files_in() { find "$1" -type f -path '*/new/*' 2>/dev/null | wc -l; }

# Bodies: dots at line starts, "CRLF . CRLF" inside, a line that is only "..", NUL and 8-bit
# octets (for the stores that keep octets); the text one for Dovecot.
printf 'Subject: dots\r\n\r\nline\r\n.\r\n..two\r\n.\r\n..\r\n.x\r\nbin \000\377 8bit \303\251\r\nend\r\n' >"$T/m-bin"
printf 'Subject: dots\r\n\r\nline\r\n.\r\n..two\r\n.\r\n..\r\n.x\r\nend\r\n' >"$T/m-txt"

# split_trace FILE OUTDIR: OUTDIR/trace (the CMTP-Trace field, one line per physical line),
# OUTDIR/rest (what follows it), OUTDIR/records (the decoded JSON), OUTDIR/count (fields seen).
SPLIT='
import base64, json, os, sys
data = open(sys.argv[1], "rb").read()
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
nl = b"\r\n" if b"\r\n" in data[:200] else b"\n"
lines = data.split(nl)
# skip the store'"'"'s own fields (Dovecot: Return-Path, Delivered-To), then the trace field
i = 0
while i < len(lines) and (lines[i].startswith(b"Return-Path:") or lines[i].startswith(b"Delivered-To:")):
    i += 1
count = sum(1 for l in lines if l.startswith(b"CMTP-Trace:"))
trace = []
if i < len(lines) and lines[i].startswith(b"CMTP-Trace:"):
    trace.append(lines[i][len(b"CMTP-Trace: "):])
    i += 1
    while i < len(lines) and lines[i].startswith(b" "):
        trace.append(lines[i][1:])
        i += 1
v = b"".join(trace).decode()
v += "=" * (-len(v) % 4)
open(os.path.join(out, "records"), "w").write(json.dumps(json.loads(base64.urlsafe_b64decode(v))) if v else "[]")
open(os.path.join(out, "rest"), "wb").write(nl.join(lines[i:]))
open(os.path.join(out, "count"), "w").write(str(count))
open(os.path.join(out, "received"), "w").write(str(sum(1 for l in lines[:i] if l.lower().startswith(b"received:"))))
'
split_trace() { python3 -c "$SPLIT" "$1" "$2"; }
# records_are DIR "by:role,by:role": the decoded trace has exactly these hops, in order.
records_are() {
  pyck 'import json,sys
r = json.load(open(sys.argv[1] + "/records"))
want = [tuple(x.split(":")) for x in sys.argv[2].split(",")]
got = [(x["by"], x["role"]) for x in r]
hops = [x["hop"] for x in r]
print("ok" if got == want and hops == list(range(1, len(r) + 1)) else "got %r" % got)' "$1" "$2"
}

# ---------------------------------------------------------------------------------------------
# The peers: m (Maildir), l (LMTP over TCP to the scripted server), v (LMTP over Dovecot's Unix
# socket), a and b (relay).
PM=$(free_port) PS=$(free_port) PL=$(free_port) PD=$(free_port) PV=$(free_port)
PA=$(free_port) PB=$(free_port) PF=$(free_port) PG=$(free_port) PK=$(free_port) PC=$(free_port)
conf m "$PM" mx.b.test "$T/tlsb" "" '[delivery]' 'local_domains = b.test' "maildir = $T/maildir-m"
conf l "$PL" mx.b.test "$T/tlsb" "" '[delivery]' 'local_domains = b.test' 'mode = lmtp' \
  "lmtp = 127.0.0.1:$PS" 'retry_base = 1s' 'retry_max = 2s'
# k: LMTP to a scripted server that offers CHUNKING and BINARYMIME.
conf k "$PK" mx.b.test "$T/tlsb" "" '[delivery]' 'local_domains = b.test' 'mode = lmtp' \
  "lmtp = 127.0.0.1:$PC"
conf v "$PV" mx.b.test "$T/tlsb" "" '[delivery]' 'local_domains = b.test' 'mode = lmtp' \
  "lmtp = unix:$T/dovecot/run/lmtp"
conf b "$PB" mx.b.test "$T/tlsb" "" '[delivery]' 'local_domains = b.test' "maildir = $T/maildir-b" \
  "relay_domains = c.test=127.0.0.1:9"
conf a "$PA" mx.a.test "$T/tlsa" "$T/tlsb/ca.crt" '[delivery]' 'local_domains = a.test' \
  "maildir = $T/maildir-a" \
  "relay_domains = b.test=127.0.0.1:$PB, c.test=127.0.0.1:$PB, d.test=127.0.0.1:$PB"
# f: final for b.test at the edge, hands local mail over CMTP to B, the internal store.
conf f "$PF" front.b.test "$T/tlsb" "$T/tlsb/ca.crt" '[delivery]' 'local_domains = b.test' \
  'mode = cmtp' "cmtp = 127.0.0.1:$PB"
# g: the same, but its store is down (a closed port).
conf g "$PG" front.b.test "$T/tlsb" "$T/tlsb/ca.crt" '[delivery]' 'local_domains = b.test' \
  'mode = cmtp' 'cmtp = 127.0.0.1:9'
mkdir -p "$T/sink"
python3 "$TOP/tests/integration/lmtp_sink.py" "$PS" "$T/sink" 2>"$T/sink.err" &
PIDS+=("$!")
mkdir -p "$T/sinkc"
python3 "$TOP/tests/integration/lmtp_sink.py" "$PC" "$T/sinkc" --chunking 2>"$T/sinkc.err" &
PIDS+=("$!")
DOVECOT=1
start_dovecot "$T/dovecot" "$PD" || DOVECOT=0 # it delivers as nobody: needs root (and dovecot-lmtpd)
for n in m l v b a f g k; do launch $n; done
for n in m l v b a f g k; do await $n; done
wait_for test -f "$T/sink/ready" || bad "lmtp sink starts"
wait_for test -f "$T/sinkc/ready" || bad "lmtp sink with CHUNKING starts"

# ---------------------------------------------------------------------------------------------
# 1. Maildir: the embedded default.
out=$("${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PM" -n b.test -f a@a.test -t bob@b.test \
  -t carol@b.test "$T/m-bin")
check "maildir: accepted" grep -q '^accepted id=' <<<"$out"
check "maildir: a file appears for each recipient" poll 5 bash -c "[ \$(find '$T/maildir-m' -type f -path '*/new/*' | wc -l) -eq 2 ]"
f=$(find "$T/maildir-m/b.test/bob/new" -type f | head -1)
split_trace "$f" "$T/x-m"
check "maildir: the body is byte-exact after the trace field" cmp -s "$T/x-m/rest" "$T/m-bin"
check "maildir: exactly one CMTP-Trace field" [ "$(cat "$T/x-m/count")" = 1 ]
check "maildir: no Received: header" bash -c "! grep -qai '^received:' '$f'"
check "maildir: the trace names this hop, final" records_are "$T/x-m" mx.b.test:final
check "maildir: the message is removed from Redis" poll 5 no_envs m
check "maildir: nothing left in the body or work lists" bash -c "[ -z \"\$(redis-cli -s '$T/r.sock' --scan --pattern 'm:*:body:*')\" ]"

# ---------------------------------------------------------------------------------------------
# 2. LMTP into a scripted server: 451 then 250, 550 and its report, no report about a report.
out=$("${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PL" -n b.test -f sender@b.test \
  -t ok@b.test -t temp1-y@b.test -t perm-x@b.test "$T/m-bin")
TXN_L=$(sed -n 's/^accepted .*txn=\([^ ]*\).*/\1/p' <<<"$out")
check "lmtp: accepted for three recipients" grep -q 'rcpts=3' <<<"$out"
check "lmtp: delivered to ok@" poll 5 bash -c "ls '$T/sink' | grep -q 'msg-.*-ok@b.test'"
f=$(ls "$T/sink"/msg-*-ok@b.test | head -1)
split_trace "$f" "$T/x-l"
check "lmtp: dot-unstuffed body equals the original" cmp -s "$T/x-l/rest" "$T/m-bin"
check "lmtp: one CMTP-Trace field" [ "$(cat "$T/x-l/count")" = 1 ]
check "lmtp: the trace names this hop, final" records_are "$T/x-l" mx.b.test:final
check "lmtp: 451 first for temp1-y" poll 3 grep -q '^tempfail temp1-y@b.test' "$T/sink/log"
check "lmtp: temp1-y delivered on a later attempt" poll 8 bash -c "ls '$T/sink' | grep -q 'msg-.*-temp1-y@b.test'"
check "lmtp: the log says deferred, then delivered" bash -c "grep -q 'event=deferred.*rcpt=temp1-y@b.test.*451' '$T/l.log' && grep -q 'event=delivered.*rcpt=temp1-y@b.test' '$T/l.log'"
check "lmtp: perm-x refused and logged as bounced" grep -q 'event=bounced.*rcpt=perm-x@b.test.*550 5.1.1' "$T/l.log"
# The report goes to the originator (local here), as a message from <> through the same LMTP.
check "lmtp: a status report reaches the originator" poll 8 bash -c "ls '$T/sink' | grep -q 'msg-.*-sender@b.test'"
r=$(ls "$T/sink"/msg-*-sender@b.test 2>/dev/null | head -1)
check "lmtp: the report comes from <> with REPORT" grep -q 'MAIL FROM:<>' "$T/sink/log"
check "lmtp: the report is the CMTP JSON (txn, rcpt, failed, the 550 reply)" pyck '
import json,sys
d = open(sys.argv[1], "rb").read()
j = json.loads(d)
ok = list(j) == ["txn","rcpt","status","reason","at"] and j["txn"] == sys.argv[2] and \
     j["rcpt"] == "perm-x@b.test" and j["status"] == "failed" and j["reason"].startswith("550 5.1.1") \
     and d.endswith(b"}\r\n") # LMTP ends the unterminated JSON line with CRLF
print("ok" if ok else d)' "$r" "$TXN_L"
check "lmtp: every message (and the report) is removed" poll 8 no_envs l
# No report about a report: an originator the store refuses gets its report refused too.
"${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PL" -n b.test -f perm-s@b.test -t perm-z@b.test \
  "$T/m-bin" >/dev/null
check "lmtp: a failed report is dropped, not reported" poll 8 grep -q 'event=report-dropped' "$T/l.log"
check "lmtp: nothing is left in Redis after it" poll 8 no_envs l
# The delivery side's Redis work, in the metrics: every completed item was finished by a
# FINISHN, a script finishing one or more; every item leased came with a record one way or
# another; the commands are counted.
"$B/cmtpctl" -s "$T/admin-l.sock" -t 10 metrics >"$T/l.metrics"
mv_() { awk -v m="$1" -v l="${2:-}" '$1 == m || $1 == m "{" l "}" {print $2}' "$T/l.metrics"; }
fin=$(mv_ cmtp_delivery_finished_items_total); fs=$(mv_ cmtp_delivery_finish_scripts_total)
check "metrics: completed items and the scripts that finished them (1 <= scripts <= items)" \
  bash -c "[ '${fin:-0}' -ge 4 ] && [ '${fs:-0}' -ge 1 ] && [ '${fs:-0}' -le '${fin:-0}' ]"
leased=$(( $(mv_ cmtp_delivery_leases_total 'record="split"') + \
  $(mv_ cmtp_delivery_leases_total 'record="prefetched"') + $(mv_ cmtp_delivery_leases_total 'record="read"') ))
check "metrics: leases by record source add up to the items completed or more" [ "$leased" -ge 4 ]
check "metrics: splits and delivery-side Redis commands are counted" \
  bash -c "[ '$(mv_ cmtp_delivery_split_total)' -ge 3 ] && [ '$(mv_ cmtp_delivery_redis_commands_total)' -gt 10 ]"
# A message the store cannot take (a UTF-8 address, no SMTPUTF8) on a pooled connection: the
# client refuses it by itself, before any command; the result is not left waiting for input.
"${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PL" -n b.test -f sender@b.test \
  -t "jos$(printf '\303\251')@b.test" "$T/m-txt" >/dev/null
check "lmtp: a UTF-8 recipient without SMTPUTF8 is bounced at once (no-smtputf8)" \
  poll 8 grep -q 'event=bounced.*no-smtputf8' "$T/l.log"

# ---------------------------------------------------------------------------------------------
# 2b. LMTP with CHUNKING and BINARYMIME (RFC 3030): a binary body (NUL, bare CR, bare LF, a
# "CRLF . CRLF" inside, an unterminated last line) goes as BODY=BINARYMIME in BDAT, octet for
# octet; a text body goes in BDAT too, without BINARYMIME and without dot-stuffing.
printf 'Subject: raw\r\n\r\n\000nul\rcr\nlf\r\n.\r\n..\r\nQUIT\r\n\377\376end' >"$T/m-raw"
"${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PK" -n b.test -f sender@b.test -t raw@b.test \
  -t perm-r@b.test "$T/m-raw" >"$T/k.out"
check "bdat: accepted" grep -q '^accepted id=' "$T/k.out"
check "bdat: delivered to raw@" poll 5 bash -c "ls '$T/sinkc' | grep -q 'msg-.*-raw@b.test'"
f=$(ls "$T/sinkc"/msg-*-raw@b.test 2>/dev/null | head -1)
split_trace "$f" "$T/x-k"
check "bdat: the binary body arrives octet for octet" cmp -s "$T/x-k/rest" "$T/m-raw"
check "bdat: one CMTP-Trace field, this hop final" records_are "$T/x-k" mx.b.test:final
check "bdat: MAIL FROM says BODY=BINARYMIME" grep -q '^mail MAIL FROM:<sender@b.test> .*BODY=BINARYMIME' "$T/sinkc/log"
check "bdat: the body went as BDAT LAST, no DATA" bash -c "grep -q '^bdat [0-9]* last' '$T/sinkc/log' && ! grep -q '^data' '$T/sinkc/log'"
check "bdat: the refused recipient is bounced" poll 5 grep -q 'event=bounced.*rcpt=perm-r@b.test.*550 5.1.1' "$T/k.log"
check "bdat: its status report reaches the originator" poll 8 bash -c "ls '$T/sinkc' | grep -q 'msg-.*-sender@b.test'"
"${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PK" -n b.test -f a@a.test -t text@b.test \
  "$T/m-txt" >/dev/null
check "bdat: a text body is delivered" poll 5 bash -c "ls '$T/sinkc' | grep -q 'msg-.*-text@b.test'"
f=$(ls "$T/sinkc"/msg-*-text@b.test 2>/dev/null | head -1)
split_trace "$f" "$T/x-kt"
check "bdat: the text body arrives unstuffed and exact" cmp -s "$T/x-kt/rest" "$T/m-txt"
check "bdat: the text body had no BODY=BINARYMIME" bash -c "grep '^mail MAIL FROM:<a@a.test>' '$T/sinkc/log' | tail -1 | grep -vq BINARYMIME"
check "bdat: everything is removed from Redis" poll 8 no_envs k

# ---------------------------------------------------------------------------------------------
# 3. LMTP into Dovecot over its Unix socket (a private instance: static userdb, Maildir in
# $T/dovecot).
if [ "$DOVECOT" -eq 0 ]; then
  echo "skip dovecot: needs root and dovecot (the scripted LMTP cases above still ran)"
elif wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $PD), 1)"; then
  "${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PV" -n b.test -f a@a.test -t dave@b.test \
    "$T/m-txt" >/dev/null
  check "dovecot: the message is stored" poll 8 bash -c "[ \$(find '$T/dovecot/mail/b.test/dave' -type f -path '*/new/*' 2>/dev/null | wc -l) -eq 1 ]"
  f=$(find "$T/dovecot/mail/b.test/dave" -type f -path '*/new/*' | head -1)
  split_trace "$f" "$T/x-v"
  # Dovecot keeps LF line endings and adds Return-Path and Delivered-To; nothing else changes.
  check "dovecot: the body equals the original (in the store's LF form)" \
    bash -c "cmp -s '$T/x-v/rest' <(sed 's/\r\$//' '$T/m-txt')"
  check "dovecot: one CMTP-Trace field, no Received:" bash -c "[ \$(cat '$T/x-v/count') = 1 ] && [ \$(cat '$T/x-v/received') = 0 ] && ! grep -qi '^received:' '$f'"
  check "dovecot: the trace names this hop" records_are "$T/x-v" mx.b.test:final
  check "dovecot: removed from Redis" poll 5 no_envs v
else
  bad "dovecot: the private Dovecot does not start ($(tail -2 "$T/dovecot/dovecot.log" "$T/dovecot/stderr" 2>/dev/null | tr '\n' ' '))"
fi

# ---------------------------------------------------------------------------------------------
# 4. CMTP relay: A (a.test, relays b.test and c.test to B) -> B (final for b.test, relays c.test
# to a closed port).
out=$("${SEND[@]}" --ca "$T/tlsa/ca.crt" -s "127.0.0.1:$PA" -n a.test -f alice@a.test -t erin@b.test \
  --relay any "$T/m-bin")
rc=$?
check "relay: A answers 251 relay next=b.test" grep -q '^rcpt erin@b.test relay next=b.test' <<<"$out"
check "relay: RELAY=any is accepted (exit 0)" [ $rc -eq 0 ]
check "relay: the message reaches B's Maildir" poll 8 bash -c "[ \$(find '$T/maildir-b/b.test/erin' -type f -path '*/new/*' 2>/dev/null | wc -l) -eq 1 ]"
f=$(find "$T/maildir-b/b.test/erin" -type f -path '*/new/*' | head -1)
split_trace "$f" "$T/x-r"
check "relay: byte-exact at B" cmp -s "$T/x-r/rest" "$T/m-bin"
check "relay: one CMTP-Trace field with both hops (A relay, B final)" bash -c "[ \$(cat '$T/x-r/count') = 1 ]" 
check "relay: trace hop 1 by mx.a.test relay, hop 2 by mx.b.test final" records_are "$T/x-r" mx.a.test:relay,mx.b.test:final
check "relay: no Received: header" bash -c "! grep -qai '^received:' '$f'"
check "relay: A used a TXN of its own for the hop" bash -c "grep 'event=delivered' '$T/a.log' | grep -q 'transport=cmtp' && ! grep 'event=delivered.*transport=cmtp' '$T/a.log' | grep -q 'out_txn=-'"
check "relay: removed from A's and B's Redis" poll 5 bash -c "[ \$(redis-cli -s '$T/r.sock' --scan --pattern '[ab]:*:env:*' | wc -l) -eq 0 ]"
out=$("${SEND[@]}" --ca "$T/tlsa/ca.crt" -s "127.0.0.1:$PA" -n a.test -f alice@a.test -t erin@b.test \
  --relay domain "$T/m-txt")
check "relay: RELAY=domain with next=b.test is accepted" grep -q '^accepted' <<<"$out"
out=$("${SEND[@]}" --ca "$T/tlsa/ca.crt" -s "127.0.0.1:$PA" -n a.test -f alice@a.test -t erin@b.test \
  "$T/m-txt")
rc=$?
check "relay: RELAY=none is refused at RCPT (551 relay-denied, exit 65)" bash -c "grep -q 'refused 551 relay-denied' <<<\"\$1\" && [ $rc -eq 65 ]" _ "$out"
# HOPS=1: A may relay (HOPS=0 onward), B would have to relay again: 554 hops-exceeded, which
# A reports to alice (local to A: into A's Maildir) as relay-refused.
out=$("${SEND[@]}" --ca "$T/tlsa/ca.crt" -s "127.0.0.1:$PA" -n a.test -f alice@a.test -t carol@c.test \
  --relay any --hops 1 "$T/m-txt")
TXN_H=$(sed -n 's/^accepted .*txn=\([^ ]*\).*/\1/p' <<<"$out")
check "relay: HOPS=1 accepted by A" grep -q '^rcpt carol@c.test relay next=c.test' <<<"$out"
check "relay: B refuses the hop with 554 hops-exceeded" poll 8 grep -q 'event=bounced.*rcpt=carol@c.test.*relay-refused: 554 hops-exceeded' "$T/a.log"
check "relay: the relay-refused report reaches alice" poll 8 bash -c "[ \$(find '$T/maildir-a/a.test/alice' -type f -path '*/new/*' 2>/dev/null | wc -l) -ge 1 ]"
f=$(find "$T/maildir-a/a.test/alice" -type f -path '*/new/*' 2>/dev/null | head -1)
check "relay: the report says relay-refused for carol, about the TXN alice sent" pyck '
import json,sys
d = open(sys.argv[1], "rb").read()
j = json.loads(d)
print("ok" if not d.endswith(b"\n") and j["txn"] == sys.argv[2] and j["rcpt"] == "carol@c.test" and j["status"] == "relay-refused" and j["reason"].startswith("554 hops-exceeded") else d)' "$f" "$TXN_H"
check "relay: the report carries no trace field (made here)" bash -c "! grep -q '^CMTP-Trace' '$f'"

# Strict verification: B's certificate does not name d.test, so the hop fails (temporarily:
# PROTOCOL.md 2.3) and the message stays queued at A.
"${SEND[@]}" --ca "$T/tlsa/ca.crt" -s "127.0.0.1:$PA" -n a.test -f alice@a.test -t dan@d.test \
  --relay any "$T/m-txt" >/dev/null
check "relay: a certificate that does not match the next hop defers the message" \
  poll 8 grep -q 'event=deferred.*rcpt=dan@d.test.*transport=cmtp.*reply="tls .*(d.test)' "$T/a.log"
check "relay: the deferred message stays queued at A" [ "$(envs a)" -ge 1 ]

# ---------------------------------------------------------------------------------------------
# 4b. [delivery] mode = cmtp: F is final for b.test and hands the message over CMTP to B (the
# internal store, verified as b.test: the route is an address), which puts it into its Maildir.
out=$("${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PF" -n b.test -f alice@a.test \
  -t frank@b.test "$T/m-bin")
check "mode cmtp: F answers final for frank@b.test" grep -q '^rcpt frank@b.test final' <<<"$out"
check "mode cmtp: the message reaches B's Maildir" poll 8 bash -c "[ \$(find '$T/maildir-b/b.test/frank' -type f -path '*/new/*' 2>/dev/null | wc -l) -eq 1 ]"
f=$(find "$T/maildir-b/b.test/frank" -type f -path '*/new/*' 2>/dev/null | head -1)
split_trace "$f" "$T/x-f"
check "mode cmtp: byte-exact at B" cmp -s "$T/x-f/rest" "$T/m-bin"
check "mode cmtp: F delivered it over CMTP" poll 5 grep -q 'event=delivered.*rcpt=frank@b.test.*transport=cmtp' "$T/f.log"
check "mode cmtp: trace hop 1 by front.b.test, hop 2 by mx.b.test final" records_are "$T/x-f" front.b.test:final,mx.b.test:final
check "mode cmtp: removed from F's Redis" poll 5 no_envs f
# The store down: the mail waits for it, never SMTP fallback, even with FALLBACK=smtp.
out=$("${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PG" -n b.test -f alice@a.test \
  -t gus@b.test --fallback smtp "$T/m-txt")
check "mode cmtp, store down: accepted as final" grep -q '^rcpt gus@b.test final' <<<"$out"
check "mode cmtp, store down: deferred" poll 8 grep -q 'event=deferred.*rcpt=gus@b.test.*transport=cmtp' "$T/g.log"
check "mode cmtp, store down: no SMTP fallback" \
  bash -c 'grep -q "event=route-attempt-failed.*next=none" "$1" && ! grep -q smtp-fallback "$1"' _ "$T/g.log"
check "mode cmtp, store down: the message stays queued" [ "$(envs g)" -ge 1 ]

# ---------------------------------------------------------------------------------------------
# 5. kill -9 of the delivering cmtpd in the middle of an LMTP delivery (the store holds the
# reply). [delivery] has no lease setting and the consumer's lease is 5 minutes: the test moves
# the lease expiry into the past in Redis, which is what waiting would do.
"${SEND[@]}" --ca "$T/tlsb/ca.crt" -s "127.0.0.1:$PL" -n b.test -f sender@b.test -t stall-z@b.test \
  "$T/m-bin" >/dev/null
check "crash: the store holds the delivery" poll 8 test -f "$T/sink/stalled"
kill -9 "$PID_l"
wait "$PID_l" 2>/dev/null
check "crash: the message is still queued after kill -9" [ "$(envs l)" -eq 1 ]
check "crash: its work item is leased" bash -c "[ \$(for k in \$(redis-cli -s '$T/r.sock' --scan --pattern 'l:*:leases'); do redis-cli -s '$T/r.sock' zcard \$k; done | awk '{s+=\$1} END {print s+0}') -ge 1 ]"
start l
for k in $(rcli r --scan --pattern 'l:*:leases'); do
  for m in $(rcli r zrange "$k" 0 -1); do rcli r zadd "$k" XX 1 "$m" >/dev/null; done
done
check "crash: the restarted node delivers it" poll 10 bash -c "ls '$T/sink' | grep -q 'msg-.*-stall-z@b.test'"
f=$(ls "$T/sink"/msg-*-stall-z@b.test | head -1)
split_trace "$f" "$T/x-k"
check "crash: byte-exact" cmp -s "$T/x-k/rest" "$T/m-bin"
check "crash: the message is removed afterwards" poll 5 no_envs l

# SIGTERM: every instance drains and exits 0 (the ASan build reports leaks at exit).
for n in m l v a b; do
  eval "p=\${PID_$n:-}"
  [ -n "$p" ] || continue
  kill -TERM "$p" 2>/dev/null
  wait "$p"
  check "cmtpd $n exits 0 on SIGTERM" [ $? -eq 0 ]
done
san=$(cat "$T"/[mlvab].log 2>/dev/null | grep -c 'ERROR: AddressSanitizer\|runtime error\|LeakSanitizer')
check "no sanitizer report in any cmtpd log" [ "$san" -eq 0 ]
finish
