#!/usr/bin/env bash
# tests/integration/test_smtp_ingress.sh — the internal SMTP ingress end to end with real peers:
# a private Postfix relays to A's SMTP ingress over STARTTLS; A (the outbound appliance for
# a.test) carries the message over CMTP to B (the inbound one for b.test), which delivers into a
# private Dovecot over LMTP: the body arrives byte-exact with no Received: added by the CMTP hop.
# Also swaks and Python's smtplib straight to A: STARTTLS with a verified certificate, the
# message's CMTP policy from the MAIL parameter, a CMTP-Policy header, the sender's domain and
# the defaults; a refusal for a client outside trusted_networks; an RFC 3464 DSN back to the SMTP
# originator for a recipient B refuses; expiry (DSN for SMTP mail, "expired" status report for
# CMTP mail); the ingress's metrics.
source "$(dirname "$0")/lib.sh"
source "$TOP/bench/postfix.sh"

certs "$T/tlsb" mx.b.test b.test c.test
certs "$T/tlsa" mx.a.test a.test
start_redis r

PA=$(free_port) PSA=$(free_port) PB=$(free_port) PP=$(free_port) PX=$(free_port) # PX: closed
# conf NAME PORT HOST CERTDIR [extra INI lines...]
conf() {
  local name=$1 port=$2 host=$3 certs=$4; shift 4
  {
    printf '[server]\nhostname = %s\nlisten = 127.0.0.1:%s\nstate_dir = %s\nworkers = 2\n' \
      "$host" "$port" "$T/state-$name"
    printf '[tls]\ncert = %s/server.crt\nkey = %s/server.key\n' "$certs" "$certs"
    printf '[redis]\naddress = unix:%s\nkey_prefix = %s\n' "$T/r.sock" "$name"
    printf '%s\n' "$@"
  } >"$T/$name.conf"
}
conf b "$PB" mx.b.test "$T/tlsb" '[delivery]' 'local_domains = b.test' 'mode = lmtp' \
  "lmtp = unix:$T/dovecot/run/lmtp"
conf a "$PA" mx.a.test "$T/tlsa" '[tls]' "ca = $T/tlsb/ca.crt" '[delivery]' 'local_domains = a.test' \
  "maildir = $T/maildir-a" \
  "relay_domains = b.test=127.0.0.1:$PB, c.test=127.0.0.1:$PB, x.test=127.0.0.1:$PX" \
  'retry_base = 1s' 'retry_max = 2s' 'lifetime = 8s' \
  '[smtp_ingress]' "listen = 127.0.0.1:$PSA" 'trusted_networks = 127.0.0.1/32' \
  'sender_policy = sp.a.test relay:domain fallback:smtp-tls, other.a.test hops:4' \
  'policy_fallback = smtp-verified'

if ! pf_available || ! start_dovecot "$T/dovecot"; then
  bad "this test needs root, dovecot-lmtpd and postfix (scripts/deps.sh installs them)"
  finish
  exit 1
fi
# Postfix: accepts on 127.0.0.1:$PP and relays everything to A's SMTP ingress with STARTTLS.
PF_MAIN_EXTRA="relayhost = [127.0.0.1]:$PSA
default_transport = smtp
relay_transport = smtp
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = encrypt
myhostname = pf.a.test" pf_setup "$T/pf" "$PP" "$T/tlsa/server.crt" "$T/tlsa/server.key" 10 ||
  bad "postfix setup"
pf_start "$T/pf"
for n in a b; do
  "$B/cmtpd" -c "$T/$n.conf" 2>>"$T/$n.log" &
  PIDS+=("$!")
done
for p in "$PA" "$PSA" "$PB"; do wait_for listening "$p" || bad "cmtpd listens on $p"; done
pf_wait "$T/pf" "$PP" || bad "postfix starts: $(pf_log_tail "$T/pf")"
trap 'pf_stop "$T/pf"; cleanup' EXIT

stored() { find "$T/dovecot/mail/b.test/$1" -type f -path '*/new/*' 2>/dev/null; }
has_stored() { [ -n "$(stored "$1")" ]; }

# ---------------------------------------------------------------------------------------------
# 1. Postfix -> A (SMTP ingress, STARTTLS) -> A CMTP -> B -> Dovecot LMTP.
# The body has dot lines, a "CRLF . CRLF"-looking line that Postfix dot-stuffs, 8-bit text.
printf 'From: alice@a.test\r\nTo: dave@b.test\r\nSubject: via postfix\r\nMessage-ID: <pf1@a.test>\r\n\r\nline one\r\n.\r\n..two dots\r\n.x\r\nUTF-8 \303\251t\303\251\r\nend\r\n' >"$T/m1"
# smtplib sends the file as it is (dot-stuffed on the wire), nothing added.
python3 - "$PP" "$T/m1" >"$T/pf1.out" 2>&1 <<'PY'
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.a.test', timeout=10)
s.sendmail('alice@a.test', ['dave@b.test'], open(sys.argv[2], 'rb').read(), mail_options=['BODY=8BITMIME'])
s.quit()
print('sent')
PY
check "postfix accepted the message" grep -q '^sent' "$T/pf1.out"
check "Dovecot stored it (postfix -> A -> CMTP -> B -> LMTP)" poll 20 has_stored dave
f=$(stored dave | head -1)
check "A took it on its SMTP ingress from Postfix, over TLS 1.3" \
  grep -q 'event=accepted.*from=alice@a.test.*listener=smtp peer=127.0.0.1 helo=pf.a.test tls=TLSv1.3' "$T/a.log"
check "A relayed it over CMTP to B" grep -q 'event=delivered.*rcpt=dave@b.test.*transport=cmtp' "$T/a.log"
check "B delivered it over LMTP" grep -q 'event=delivered.*rcpt=dave@b.test.*transport=lmtp' "$T/b.log"
# The body (after the header section) is byte-exact, in the store's LF form.
python3 - "$T/m1" "$f" >"$T/cmp1" <<'PY'
import sys
orig = open(sys.argv[1], 'rb').read().replace(b'\r\n', b'\n')
got = open(sys.argv[2], 'rb').read().replace(b'\r\n', b'\n')
ob = orig.split(b'\n\n', 1)[1]
gb = got.split(b'\n\n', 1)[1]
print('ok' if ob == gb else 'body differs: %r vs %r' % (ob, gb))
PY
check "the body arrives byte-exact" grep -qx ok "$T/cmp1"
check "the one Received: field is Postfix's own (none added by a CMTP hop)" \
  python3 -c '
import sys, email
m = email.message_from_binary_file(open(sys.argv[1], "rb"))
r = m.get_all("Received") or []
sys.exit(0 if len(r) == 1 and "by pf.a.test" in r[0] else 1)' "$f"
check "no Return-Path-style kludge from the CMTP hop: one CMTP-Trace field naming B" \
  bash -c '[ "$(grep -ci "^cmtp-trace:" "$1")" = 1 ]' _ "$f"
check "the stored copy is no longer in A's or B's queue" \
  poll 10 bash -c '[ -z "$(redis-cli -s "$1" --scan --pattern "a:*:env:*")$(redis-cli -s "$1" --scan --pattern "b:*:env:*")" ]' _ "$T/r.sock"

# ---------------------------------------------------------------------------------------------
# 2. swaks straight to A with STARTTLS and a verified certificate.
swaks --timeout 10 --server "127.0.0.1:$PSA" --from bob@a.test --to erin@b.test -h client.a.test \
  --tls --tls-verify --tls-ca-path "$T/tlsa/ca.crt" --tls-sni mx.a.test >"$T/swaks2.out" 2>&1
check "swaks: STARTTLS with a verified certificate" grep -q 'TLS started with cipher TLSv1.3' "$T/swaks2.out"
check "swaks: queued after the durable commit" grep -q '250 2.0.0 Ok: queued as ' "$T/swaks2.out"
check "swaks: QUIT answered inside TLS" grep -q '221 2.0.0 Bye' "$T/swaks2.out"
check "swaks: delivered to Dovecot" poll 20 has_stored erin

# ---------------------------------------------------------------------------------------------
# 3. The message's CMTP policy: parameter > header > sender domain > defaults.
python3 - "$PSA" >"$T/policy.out" 2>&1 <<'PY'
import smtplib, sys
port = int(sys.argv[1])
def send(frm, body, opts=()):
    s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.a.test', timeout=10)
    s.ehlo()
    assert 'cmtp-policy' in s.esmtp_features, s.esmtp_features
    s.sendmail(frm, ['pol@b.test'], body, mail_options=list(opts))
    s.quit()
send('p1@a.test', b'Subject: p1\r\n\r\nparameter\r\n', ['CMTP-POLICY=relay:any,hops:3'])
send('p2@a.test', b'Subject: p2\r\nCMTP-Policy: relay:domain,\r\n fallback:smtp\r\n\r\nheader\r\n')
send('p3@sp.a.test', b'Subject: p3\r\n\r\nsender\r\n')
send('p4@x.other.a.test', b'Subject: p4\r\n\r\nsender parent\r\n')
send('p5@a.test', b'Subject: p5\r\n\r\ndefaults\r\n')
send('p6@sp.a.test', b'Subject: p6\r\nCMTP-Policy: relay:sometimes\r\n\r\nbad header\r\n')
try:
    send('p7@a.test', b'Subject: p7\r\n\r\nbad parameter\r\n', ['CMTP-POLICY=relay:any,relay:none'])
    print('p7 accepted')
except smtplib.SMTPSenderRefused as e:
    print('p7 refused', e.smtp_code)
print('sent')
PY
check "policy: the five messages were sent" grep -q '^sent' "$T/policy.out"
acc() { grep "event=accepted.*from=$1 " "$T/a.log"; }
check "policy: the MAIL parameter wins (relay=any hops=3)" \
  bash -c 'grep "event=accepted.*from=p1@a.test " "$1" | grep -q "relay=any fallback=smtp-verified hops=3 policy_from=parameter"' _ "$T/a.log"
check "policy: a folded CMTP-Policy header field (relay=domain fallback=smtp)" \
  bash -c 'grep "event=accepted.*from=p2@a.test " "$1" | grep -q "relay=domain fallback=smtp hops=8 policy_from=header"' _ "$T/a.log"
check "policy: the sender's domain entry" \
  bash -c 'grep "event=accepted.*from=p3@sp.a.test " "$1" | grep -q "relay=domain fallback=smtp-tls hops=8 policy_from=sender"' _ "$T/a.log"
check "policy: a parent domain's entry (other.a.test covers x.other.a.test)" \
  bash -c 'grep "event=accepted.*from=p4@x.other.a.test " "$1" | grep -q "relay=none fallback=smtp-verified hops=4 policy_from=sender"' _ "$T/a.log"
check "policy: the listener's defaults" \
  bash -c 'grep "event=accepted.*from=p5@a.test " "$1" | grep -q "relay=none fallback=smtp-verified hops=8 policy_from=config"' _ "$T/a.log"
check "policy: a malformed header is logged and ignored (the sender's entry applies)" \
  bash -c 'grep -q "event=smtp-policy-header-ignored" "$1" && grep "event=accepted.*from=p6@sp.a.test " "$1" | grep -q "relay=domain.*policy_from=sender"' _ "$T/a.log"
check "policy: a malformed parameter is refused with 501" grep -q '^p7 refused 501' "$T/policy.out"
check "policy: B received them over CMTP" poll 20 bash -c '[ "$(find "$1" -type f -path "*/new/*" | wc -l)" -ge 6 ]' _ "$T/dovecot/mail/b.test/pol"

# ---------------------------------------------------------------------------------------------
# 4. A client outside trusted_networks (127.0.0.1/32 only) is refused at the greeting.
python3 - "$PSA" >"$T/untrusted.out" 2>&1 <<'PY'
import socket, sys
s = socket.socket()
s.bind(('127.0.0.2', 0))
s.settimeout(5)
s.connect(('127.0.0.1', int(sys.argv[1])))
data = b''
while True:
    b = s.recv(4096)
    if not b:
        break
    data += b
print(repr(data))
PY
check "untrusted: 554 5.7.1 Access denied, then the connection closes" grep -q "554 5.7.1 .*Access denied" "$T/untrusted.out"
check "untrusted: logged" grep -q 'event=smtp-untrusted-refused peer=127.0.0.2' "$T/a.log"
check "untrusted: nothing else was said" bash -c '[ "$(grep -o "\\\\r\\\\n" "$1" | wc -l)" = 1 ]' _ "$T/untrusted.out"

# ---------------------------------------------------------------------------------------------
# 5. An RFC 3464 DSN for SMTP mail: B refuses nobody@c.test (no mailbox); A reports to the
# SMTP originator (local to A: its Maildir).
swaks --timeout 10 --server "127.0.0.1:$PSA" --from frank@a.test --to nobody@c.test -h client.a.test \
  --header 'Subject: will bounce' >"$T/swaks5.out" 2>&1
check "dsn: accepted on the ingress" grep -q '250 2.0.0 Ok: queued as ' "$T/swaks5.out"
dsn_file() { find "$T/maildir-a/a.test/frank" -type f -path '*/new/*' 2>/dev/null | head -1; }
has_dsn() { [ -n "$(dsn_file)" ]; }
check "dsn: a DSN reaches the originator" poll 20 has_dsn
d=$(dsn_file)
check "dsn: multipart/report; report-type=delivery-status" grep -qi 'Content-Type: multipart/report; report-type=delivery-status' "$d"
check "dsn: from MAILER-DAEMON, Auto-Submitted" bash -c 'grep -qi "^From:.*MAILER-DAEMON@mx.a.test" "$1" && grep -qi "^Auto-Submitted: auto-replied" "$1"' _ "$d"
check "dsn: per-recipient fields (failed, 5.x.x, the remote reply)" \
  bash -c 'grep -qi "^Final-Recipient: rfc822; *nobody@c.test" "$1" && grep -qi "^Action: failed" "$1" && grep -qi "^Status: 5\." "$1" && grep -qi "^Diagnostic-Code: smtp; *550" "$1"' _ "$d"
check "dsn: Arrival-Date and Reporting-MTA" bash -c 'grep -q "^Reporting-MTA: dns; mx.a.test" "$1" && grep -q "^Arrival-Date: " "$1"' _ "$d"
check "dsn: the bounce is logged" grep -q 'event=bounced.*rcpt=nobody@c.test' "$T/a.log"
check "dsn: the original header section comes along (text/rfc822-headers)" \
  bash -c 'grep -qi "^Content-Type: text/rfc822-headers" "$1" && grep -q "^Subject: will bounce" "$1"' _ "$d"

# ---------------------------------------------------------------------------------------------
# 6. A destination that never answers (x.test's next hop is a closed port, FALLBACK=none):
# retried with backoff until the message lifetime (8 s here) runs out, then reported "expired":
# a DSN for SMTP mail, a CMTP status report for CMTP mail.
swaks --timeout 10 --server "127.0.0.1:$PSA" --from gina@a.test --to lost@x.test -h client.a.test \
  >"$T/swaks6.out" 2>&1
out=$("$B/cmtp-send" --timeout 10 --ca "$T/tlsa/ca.crt" -s "127.0.0.1:$PA" -n a.test --relay any \
  -f hugo@a.test -t gone@x.test "$T/m1" 2>&1)
TXN_X=$(sed -n 's/^accepted .*txn=\([^ ]*\).*/\1/p' <<<"$out")
check "expiry: both messages accepted" bash -c 'grep -q "queued as" "$1" && [ -n "$2" ]' _ "$T/swaks6.out" "$TXN_X"
check "expiry: retried with backoff (several deferrals)" \
  poll 12 bash -c '[ "$(grep -c "event=deferred.*rcpt=lost@x.test" "$1")" -ge 2 ]' _ "$T/a.log"
in_md() { [ -n "$(find "$T/maildir-a/a.test/$1/new" -type f 2>/dev/null)" ]; }
check "expiry: a DSN reaches the SMTP originator" poll 15 in_md gina
check "expiry: the DSN says failed, 4.4.7/5.4.7, for lost@x.test" bash -c '
f=$(find "$1" -type f | head -1)
grep -qi "^Final-Recipient: rfc822; *lost@x.test" "$f" && grep -qi "^Action: failed" "$f" &&
  grep -Eqi "^Status: [45]\.4\.7" "$f"' _ "$T/maildir-a/a.test/gina/new"
check "expiry: a CMTP status report reaches the CMTP originator" poll 15 in_md hugo
check "expiry: the report says expired, about the TXN sent" pyck '
import glob, json, sys
d = open(glob.glob(sys.argv[1] + "/*")[0], "rb").read()
j = json.loads(d[d.index(b"{"):])
print("ok" if j["txn"] == sys.argv[2] and j["rcpt"] == "gone@x.test" and j["status"] == "expired" else j)' \
  "$T/maildir-a/a.test/hugo/new" "$TXN_X"
check "expiry: nothing of them is left in A's queue" \
  poll 10 bash -c '[ -z "$(redis-cli -s "$1" --scan --pattern "a:*:env:*")" ]' _ "$T/r.sock"

# ---------------------------------------------------------------------------------------------
# 7. The ingress's counters in the daemon's metrics (strict exposition check).
"$B/cmtpctl" -s "$T/state-a/cmtpd.sock" metrics >"$T/metrics.txt" 2>&1
check "metrics: the exposition passes the strict check" python3 "$TOP/tests/integration/promcheck.py" <"$T/metrics.txt"
check "metrics: SMTP sessions and the untrusted refusal are counted" \
  bash -c 'grep -Eq "^cmtp_smtp_sessions_total [1-9]" "$1" && grep -q "^cmtp_smtp_untrusted_total 1$" "$1"' _ "$T/metrics.txt"
check "metrics: SMTP messages accepted (postfix, swaks, 6 policies, the bounce, the expired)" \
  grep -q '^cmtp_smtp_messages_total{outcome="accepted"} 10$' "$T/metrics.txt"

check "no sanitizer report in any cmtpd log" bash -c '! grep -q "ERROR: AddressSanitizer\|runtime error" "$@"' _ "$T/a.log" "$T/b.log"
pf_stop "$T/pf"
finish
