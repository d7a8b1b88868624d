#!/usr/bin/env bash
# tests/integration/test_smtp_delivery.sh — the SMTP delivery transport ([delivery] mode = smtp)
# against real peers: a scripted ESMTP server with STARTTLS (tests/integration/smtp_sink.py:
# byte-exact body after dot-unstuffing, CRLF canonicalized, one CMTP-Trace field; 4xx then 2xx;
# 5xx and its status report), STARTTLS required but not offered, a certificate that does not
# verify, a STARTTLS command injection, plaintext (smtp_starttls = none), TLS 1.2, and a private
# Postfix taking the message over STARTTLS (when root and Postfix are there).
source "$(dirname "$0")/lib.sh"

certs "$T/tlsb" mx.b.test b.test smtp.b.test
start_redis r
SEND=("$B/cmtp-send" --timeout 10 --ca "$T/tlsb/ca.crt" -n b.test)

# conf NAME PORT [extra [delivery] lines...]: a cmtpd final for b.test delivering over SMTP, on
# the shared Redis with its own key prefix, admin socket and state; [tls] ca is the test CA (the
# trust anchor of its SMTP client too).
conf() {
  local name=$1 port=$2; shift 2
  {
    printf '[server]\nhostname = mx.b.test\nlisten = 127.0.0.1:%s\nstate_dir = %s\nworkers = 1\n' \
      "$port" "$T/state-$name"
    printf '[tls]\ncert = %s/server.crt\nkey = %s/server.key\nca = %s/ca.crt\n' \
      "$T/tlsb" "$T/tlsb" "$T/tlsb"
    printf '[redis]\naddress = unix:%s\nkey_prefix = %s\n' "$T/r.sock" "$name"
    printf '[admin]\nsocket = %s\n' "$T/admin-$name.sock"
    printf '[delivery]\nlocal_domains = b.test\nmode = smtp\nretry_base = 1s\nretry_max = 2s\n'
    printf '%s\n' "$@"
  } >"$T/$name.conf"
}
launch() {
  local name=$1
  "$B/cmtpd" -c "$T/$name.conf" 2>>"$T/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  eval "PID_$name=$pid"
}
port_of() { sed -n 's/^listen = 127.0.0.1:\(.*\)$/\1/p' "$T/$1.conf"; }
# sink NAME PORT [options]: a smtp_sink.py writing into $T/NAME.
sink() {
  local name=$1 port=$2; shift 2
  mkdir -p "$T/$name"
  python3 "$TOP/tests/integration/smtp_sink.py" "$port" "$T/$name" "$@" 2>"$T/$name.err" &
  PIDS+=("$!")
}
envs() { rcli r --scan --pattern "$1:*:env:*" | wc -l; }
no_envs() { [ "$(envs "$1")" -eq 0 ]; }
first() { ls "$@" 2>/dev/null | head -1; }

# Bodies: dots at line starts, "CRLF . CRLF" inside, NUL and 8-bit octets; one with bare LFs and
# a bare CR and no final line end (canonicalized to CRLF on the way).
printf 'Subject: dots\r\n\r\nline\r\n.\r\n..two\r\n.\r\n..\r\n.x\r\nbin \000\377 8bit \303\251\r\nend\r\n' >"$T/m-bin"
printf 'Subject: lf\n\n.lead\nbare\rcr\n.\nlast' >"$T/m-lf"
printf 'Subject: lf\r\n\r\n.lead\r\nbare\r\ncr\r\n.\r\nlast\r\n' >"$T/m-lf.want"
printf 'Subject: plain\r\n\r\nhello\r\n' >"$T/m-txt"

# split_trace FILE OUTDIR: OUTDIR/rest (what follows the CMTP-Trace field), OUTDIR/records (the
# decoded JSON), OUTDIR/count (CMTP-Trace fields seen).
SPLIT='
import base64, json, os, sys
data = open(sys.argv[1], "rb").read()
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
lines = data.split(b"\r\n")
count = sum(1 for l in lines if l.startswith(b"CMTP-Trace:"))
i, trace = 0, []
if lines and lines[0].startswith(b"CMTP-Trace:"):
    trace.append(lines[0][len(b"CMTP-Trace: "):])
    i = 1
    while i < len(lines) and lines[i].startswith(b" "):
        trace.append(lines[i][1:])
        i += 1
v = b"".join(trace).decode()
v += "=" * (-len(v) % 4)
open(os.path.join(out, "records"), "w").write(json.dumps(json.loads(base64.urlsafe_b64decode(v))) if v else "[]")
open(os.path.join(out, "rest"), "wb").write(b"\r\n".join(lines[i:]))
open(os.path.join(out, "count"), "w").write(str(count))
'
split_trace() { python3 -c "$SPLIT" "$1" "$2"; }
# meta_is FILE KEY VALUE: the sink's JSON description has KEY (tls: "TLSv1.3"/"TLSv1.2"/"none").
meta_tls() {
  pyck 'import json,sys
m = json.load(open(sys.argv[1]))
t = m["tls"][0] if m["tls"] else "none"
print("ok" if t == sys.argv[2] else "tls %r" % (m["tls"],))' "$1" "$2"
}

# ---------------------------------------------------------------------------------------------
# The peers: sinks S (STARTTLS), N (no STARTTLS), J (injects after 220), W (TLS 1.2 only); cmtpd
# instances s (require, verified for smtp.b.test), n (require, to N), v (verify for the wrong
# name), j (may, to J), p (none, to S), w (may, to W), f (to Postfix).
PS=$(free_port) PN=$(free_port) PJ=$(free_port) PW=$(free_port) PP=$(free_port)
sink S "$PS" --cert "$T/tlsb/server-p256.crt" --key "$T/tlsb/server-p256.key"
sink N "$PN" --cert "$T/tlsb/server-p256.crt" --key "$T/tlsb/server-p256.key" --no-starttls
sink J "$PJ" --cert "$T/tlsb/server-p256.crt" --key "$T/tlsb/server-p256.key" --inject
sink W "$PW" --cert "$T/tlsb/server-p256.crt" --key "$T/tlsb/server-p256.key" --tls12
conf s "$(free_port)" "smtp = 127.0.0.1:$PS" 'smtp_starttls = require' 'smtp_tls_verify = yes' \
  'smtp_tls_name = smtp.b.test'
PM=$(free_port)
printf '[admin]\nmetrics_listen = 127.0.0.1:%s\n' "$PM" >>"$T/s.conf"
conf n "$(free_port)" "smtp = 127.0.0.1:$PN" 'smtp_starttls = require'
conf v "$(free_port)" "smtp = 127.0.0.1:$PS" 'smtp_tls_verify = yes' 'smtp_tls_name = other.b.test'
conf j "$(free_port)" "smtp = 127.0.0.1:$PJ"
conf p "$(free_port)" "smtp = 127.0.0.1:$PS" 'smtp_starttls = none'
conf w "$(free_port)" "smtp = localhost:$PW" 'smtp_tls_verify = yes'
POSTFIX=0
source "$TOP/bench/postfix.sh"
if pf_available; then
  POSTFIX=1
  PF_MAIN_EXTRA="smtpd_tls_loglevel = 1" pf_setup "$T/pf" "$PP" "$T/tlsb/server-p256.crt" \
    "$T/tlsb/server-p256.key" 4 || POSTFIX=0
  [ "$POSTFIX" -eq 1 ] && pf_start "$T/pf"
  conf f "$(free_port)" "smtp = 127.0.0.1:$PP" 'smtp_starttls = require' 'smtp_tls_verify = yes' \
    'smtp_tls_name = smtp.b.test'
fi
INST="s n v j p w"
[ "$POSTFIX" -eq 1 ] && INST="$INST f"
for n in $INST; do launch "$n"; done
for n in $INST; do wait_for listening "$(port_of "$n")" || bad "cmtpd $n listens"; done
for n in S N J W; do wait_for test -f "$T/$n/ready" || bad "sink $n starts"; done

# ---------------------------------------------------------------------------------------------
# 1. STARTTLS required, certificate verified for smtp_tls_name: delivered, byte-exact.
out=$("${SEND[@]}" -s "127.0.0.1:$(port_of s)" -f a@a.test -t ok@b.test -t carol@b.test "$T/m-bin")
check "starttls: accepted for two recipients" grep -q 'rcpts=2' <<<"$out"
check "starttls: delivered to both" poll 8 bash -c "ls '$T/S' | grep -q 'msg-.*-ok@b.test' && ls '$T/S' | grep -q 'msg-.*-carol@b.test'"
f=$(first "$T/S"/msg-*-ok@b.test)
split_trace "$f" "$T/x1"
check "starttls: dot-unstuffed body equals the original after the trace field" cmp -s "$T/x1/rest" "$T/m-bin"
check "starttls: exactly one CMTP-Trace field" [ "$(cat "$T/x1/count")" = 1 ]
check "starttls: the trace names this hop, final" pyck 'import json,sys
r = json.load(open(sys.argv[1]))
print("ok" if [(x["by"], x["role"]) for x in r] == [("mx.b.test", "final")] else r)' "$T/x1/records"
m=$(first "$T/S"/meta-*-ok@b.test)
check "starttls: the message went over TLS 1.3" meta_tls "$m" TLSv1.3
check "starttls: one transaction for both recipients, EHLO mx.b.test, BODY=8BITMIME" pyck 'import json,sys
m = json.load(open(sys.argv[1]))
print("ok" if m["rcpts"] == ["ok@b.test", "carol@b.test"] and m["helo"] == "mx.b.test" and "BODY=8BITMIME" in m["mail"] else m)' "$m"
check "starttls: the log says delivered over smtp with the 250 reply" poll 5 grep -q 'event=delivered.*rcpt=ok@b.test.*transport=smtp.*peer=127.0.0.1:'"$PS"'.*250 2.0.0 Ok' "$T/s.log"
check "starttls: removed from Redis" poll 5 no_envs s

# Bare LF, bare CR, no final line end, leading dots: canonicalized to CRLF, dots stuffed.
"${SEND[@]}" -s "127.0.0.1:$(port_of s)" -f a@a.test -t lf@b.test "$T/m-lf" >/dev/null
check "crlf: delivered" poll 8 bash -c "ls '$T/S' | grep -q 'msg-.*-lf@b.test'"
split_trace "$(first "$T/S"/msg-*-lf@b.test)" "$T/x2"
check "crlf: line endings canonicalized to CRLF, dots intact" cmp -s "$T/x2/rest" "$T/m-lf.want"

# ---------------------------------------------------------------------------------------------
# 2. 451 after the data, then 250 on the next attempt; 550 at RCPT and 554 after the data are
# bounced, with a status report to the (local) originator through the same SMTP host.
out=$("${SEND[@]}" -s "127.0.0.1:$(port_of s)" -f sender@b.test -t temp1-y@b.test "$T/m-txt")
check "retry: accepted" grep -q '^accepted' <<<"$out"
check "retry: 451 first" poll 5 grep -q '^tempfail temp1-y@b.test' "$T/S/log"
check "retry: the log says deferred with the 451" poll 5 grep -q 'event=deferred.*rcpt=temp1-y@b.test.*transport=smtp.*451 4.3.0' "$T/s.log"
check "retry: delivered on a later attempt" poll 10 bash -c "ls '$T/S' | grep -q 'msg-.*-temp1-y@b.test'"
check "retry: logged as delivered" poll 5 grep -q 'event=delivered.*rcpt=temp1-y@b.test' "$T/s.log"
out=$("${SEND[@]}" -s "127.0.0.1:$(port_of s)" -f sender@b.test -t perm-x@b.test "$T/m-txt")
TXN=$(sed -n 's/^accepted .*txn=\([^ ]*\).*/\1/p' <<<"$out")
check "bounce: 550 at RCPT logged as bounced" poll 8 grep -q 'event=bounced.*rcpt=perm-x@b.test.*550 5.1.1' "$T/s.log"
check "bounce: a status report reaches the originator over SMTP" poll 10 bash -c "ls '$T/S' | grep -q 'msg-.*-sender@b.test'"
r=$(first "$T/S"/msg-*-sender@b.test)
check "bounce: the report names the txn, the recipient and the 550 reply" pyck '
import json,sys
d = open(sys.argv[1], "rb").read()
j = json.loads(d)
print("ok" if j["txn"] == sys.argv[2] and j["rcpt"] == "perm-x@b.test" and j["status"] == "failed" and j["reason"].startswith("550 5.1.1") else d)' "$r" "$TXN"
check "bounce: the report comes from <>" grep -q 'mail MAIL FROM:<>' "$T/S/log"
out=$("${SEND[@]}" -s "127.0.0.1:$(port_of s)" -f a@a.test -t bad-z@b.test "$T/m-txt")
BADZ=$(sed -n 's/^accepted id=\([^ ]*\).*/\1/p' <<<"$out")
check "bounce: 554 after the data logged as bounced" poll 8 grep -q 'event=bounced.*rcpt=bad-z@b.test.*554 5.6.0' "$T/s.log"
# only_report: every message done is gone from Redis; the one left is the status report about
# bad-z to its originator a@a.test, which has no route here and waits for its next attempt. (The
# check once counted no message at all: it passed only while that report was not yet queued.)
only_report() {
  local rq left
  rq=$(sed -n "s/.*event=report-queued qid=\([^ ]*\) about_qid=$BADZ .*/\1/p" "$T/s.log" | head -n 1)
  [ -n "$BADZ" ] && [ -n "$rq" ] || return 1
  left=$(rcli r --scan --pattern "s:*:env:*" | sed 's/.*:env://' | grep -cvx "$rq" || true)
  [ "$left" -eq 0 ]
}
check "bounce: everything done is removed from Redis (the report to a@a.test waits)" poll 8 only_report
check "metrics: deliveries counted under transport smtp (ok, carol, lf, temp1-y, the report)" pyck '
import re, sys, urllib.request
t = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
v = dict(re.findall(r"^cmtp_delivered_total\{transport=\"(\w+)\"\} (\d+)$", t, re.M))
print("ok" if v.get("smtp") == "5" and v.get("cmtp") == "0" else v)' "$PM"

# ---------------------------------------------------------------------------------------------
# 3. Refusals that must defer (temporary): STARTTLS required but not offered; a certificate that
# does not verify for smtp_tls_name; plaintext injected after the 220 to STARTTLS.
"${SEND[@]}" -s "127.0.0.1:$(port_of n)" -f a@a.test -t dan@b.test "$T/m-txt" >/dev/null
check "require: no STARTTLS offered defers the message" poll 8 grep -q 'event=deferred.*rcpt=dan@b.test.*transport=smtp.*starttls-unavailable' "$T/n.log"
check "require: nothing was sent in plaintext" bash -c "! grep -q 'mail ' '$T/N/log' 2>/dev/null"
check "require: the message stays queued" [ "$(envs n)" -eq 1 ]
"${SEND[@]}" -s "127.0.0.1:$(port_of v)" -f a@a.test -t eve@b.test "$T/m-txt" >/dev/null
check "verify: a certificate not valid for smtp_tls_name defers" poll 8 grep -q 'event=deferred.*rcpt=eve@b.test.*starttls .*(other.b.test): certificate not verified' "$T/v.log"
check "verify: no MAIL after the failed verification" bash -c "! grep -q 'rcpt=eve\|eve@b.test' '$T/S/log'"
check "verify: the message stays queued" [ "$(envs v)" -eq 1 ]
"${SEND[@]}" -s "127.0.0.1:$(port_of j)" -f a@a.test -t fay@b.test "$T/m-txt" >/dev/null
check "injection: plaintext after the 220 defers (starttls-injection)" poll 8 grep -q 'event=deferred.*rcpt=fay@b.test.*starttls-injection' "$T/j.log"
check "injection: no MAIL was sent" bash -c "! grep -q '^mail ' '$T/J/log'"

# ---------------------------------------------------------------------------------------------
# 4. smtp_starttls = none: plaintext even though STARTTLS is offered; TLS 1.2 server with
# verification for the host name of smtp = localhost:PORT.
"${SEND[@]}" -s "127.0.0.1:$(port_of p)" -f a@a.test -t gus@b.test "$T/m-txt" >/dev/null
check "none: delivered" poll 8 bash -c "ls '$T/S' | grep -q 'msg-.*-gus@b.test'"
check "none: in plaintext" meta_tls "$(first "$T/S"/meta-*-gus@b.test)" none
"${SEND[@]}" -s "127.0.0.1:$(port_of w)" -f a@a.test -t hal@b.test "$T/m-txt" >/dev/null
check "tls12: delivered to a TLS 1.2 server, verified for localhost" poll 8 bash -c "ls '$T/W' | grep -q 'msg-.*-hal@b.test'"
check "tls12: over TLS 1.2" meta_tls "$(first "$T/W"/meta-*-hal@b.test)" TLSv1.2

# ---------------------------------------------------------------------------------------------
# 5. A private Postfix (bench/postfix.sh: discards what it takes) over STARTTLS, verified.
if [ "$POSTFIX" -eq 0 ]; then
  echo "skip postfix: needs root and Postfix (the scripted SMTP cases above still ran)"
elif pf_wait "$T/pf" "$PP"; then
  "${SEND[@]}" -s "127.0.0.1:$(port_of f)" -f a@a.test -t ivy@b.test "$T/m-bin" >/dev/null
  check "postfix: delivered (logged with Postfix's 250)" poll 10 grep -q 'event=delivered.*rcpt=ivy@b.test.*transport=smtp.*250 2.0.0 Ok' "$T/f.log"
  check "postfix: smtpd took it over TLS 1.3" poll 5 grep -q 'TLS connection established from .*TLSv1.3' "$T/pf/maillog"
  check "postfix: removed from Redis" poll 5 no_envs f
  pf_stop "$T/pf"
else
  bad "postfix: the private instance does not start ($(pf_log_tail "$T/pf"))"
fi

for n in $INST; do
  eval "p=\${PID_$n:-}"
  kill -TERM "$p" 2>/dev/null
  wait "$p"
  check "cmtpd $n exits 0 on SIGTERM" [ $? -eq 0 ]
done
san=$(cat "$T"/[snvjpwf].log 2>/dev/null | grep -c 'ERROR: AddressSanitizer\|runtime error\|LeakSanitizer')
check "no sanitizer report in any cmtpd log" [ "$san" -eq 0 ]
finish
