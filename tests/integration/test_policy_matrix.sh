#!/usr/bin/env bash
# tests/integration/test_policy_matrix.sh — every policy combination end to end: the receiver's
# role (final / relay within the recipient's domain / relay outside it / no CMTP at all) × the
# originator's relay permission (none / domain / any) × SMTP fallback (forbidden / allowed), each
# with the expected outcome and the report to the originator.
#
#   originator --SMTP ingress--> A --CMTP--> B (final for b.test;
#                                               relays c.test to mx.c.test = C: next within c.test;
#                                               relays d.test to relay.other.test = C: outside)
#                                 \--DNS: e.test has SRV "." (no CMTP), MX -> SMTP sink
#
#   recipient  RELAY=none         RELAY=domain       RELAY=any      (same with FALLBACK=smtp)
#   x@b.test   delivered at B     delivered at B     delivered at B
#   y@c.test   relay-refused      delivered at C     delivered at C
#   z@d.test   relay-refused      relay-refused      delivered at C
#   w@e.test   FALLBACK=none: failed (no CMTP)  /  FALLBACK=smtp: delivered over SMTP
#
# Refusals and failures come back to the SMTP originator as RFC 3464 DSNs (one per failed
# destination) naming exactly the recipients that failed. A relay refusal is never "fixed" by SMTP fallback: a CMTP
# server answered. A relay carries the policy on with HOPS lowered (C's trace: B relay, C final).
source "$(dirname "$0")/lib.sh"

certs "$T/tlsb" mx.b.test b.test c.test d.test
certs "$T/tlsc" mx.c.test relay.other.test c.test d.test
certs "$T/tlsa" mx.a.test a.test
start_redis r
cat "$T/tlsb/ca.crt" "$T/tlsc/ca.crt" >"$T/cas.pem"

PA=$(free_port) PSA=$(free_port) PB=$(free_port) PC=$(free_port) PD=$(free_port) PS=$(free_port)
cat >"$T/zone" <<ZONE
mx.c.test A 127.0.0.1
relay.other.test A 127.0.0.1
_cmtp._tcp.e.test SRV 0 0 0 .
e.test MX 10 smtp.sink.test
smtp.sink.test A 127.0.0.1
ZONE
python3 "$TOP/tests/integration/dns_server.py" "$PD" "$T/zone" --log "$T/dns.log" \
  --ready "$T/dns.ready" 2>"$T/dns.err" &
PIDS+=("$!")
mkdir -p "$T/sink"
python3 "$TOP/tests/integration/smtp_sink.py" "$PS" "$T/sink" 2>"$T/sink.err" &
PIDS+=("$!")

# conf NAME PORT HOST CERTDIR [extra INI lines...]
conf() {
  local name=$1 port=$2 host=$3 certs=$4; shift 4
  {
    printf '[server]\nhostname = %s\nlisten = 127.0.0.1:%s\nstate_dir = %s\nworkers = 2\n' \
      "$host" "$port" "$T/state-$name"
    printf '[tls]\ncert = %s/server.crt\nkey = %s/server.key\nca = %s\n' "$certs" "$certs" \
      "$T/cas.pem"
    printf '[redis]\naddress = unix:%s\nkey_prefix = %s\n' "$T/r.sock" "$name"
    printf '%s\n' "$@"
  } >"$T/$name.conf"
}
conf a "$PA" mx.a.test "$T/tlsa" '[delivery]' 'local_domains = a.test' "maildir = $T/maildir-a" \
  "relay_domains = b.test=127.0.0.1:$PB, c.test=127.0.0.1:$PB, d.test=127.0.0.1:$PB" \
  "dns_servers = 127.0.0.1:$PD" 'dns_timeout = 1s' "smtp_port = $PS" \
  'retry_base = 1s' 'retry_max = 2s' \
  '[smtp_ingress]' "listen = 127.0.0.1:$PSA" 'trusted_networks = 127.0.0.1/32'
conf b "$PB" mx.b.test "$T/tlsb" '[delivery]' 'local_domains = b.test' "maildir = $T/maildir-b" \
  "relay_domains = c.test=mx.c.test:$PC, d.test=relay.other.test:$PC" \
  "dns_servers = 127.0.0.1:$PD" 'dns_timeout = 1s'
conf c "$PC" mx.c.test "$T/tlsc" '[delivery]' 'local_domains = c.test, d.test' \
  "maildir = $T/maildir-c"
for n in a b c; do
  "$B/cmtpd" -c "$T/$n.conf" 2>>"$T/$n.log" &
  PIDS+=("$!")
done
for p in "$PA" "$PSA" "$PB" "$PC"; do wait_for listening "$p" || bad "cmtpd listens on $p"; done
wait_for test -f "$T/dns.ready" || bad "the DNS server starts"
wait_for test -f "$T/sink/ready" || bad "the SMTP sink starts"

# in_maildir ROOT DOMAIN LOCAL: a message is stored there.
in_maildir() { [ -n "$(find "$1/$2/$3/new" -type f 2>/dev/null)" ]; }
in_sink() { ls "$T/sink" 2>/dev/null | grep -q "^msg-.*-$1\$"; }

# One message per combination, all sent first (deliveries and retries overlap).
COMBOS="none:none none:smtp domain:none domain:smtp any:none any:smtp"
python3 - "$PSA" $COMBOS >"$T/send.out" 2>&1 <<'PY'
import smtplib, sys
port = int(sys.argv[1])
for combo in sys.argv[2:]:
    r, f = combo.split(':')
    tag = '%s-%s' % (r, f)
    s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.a.test', timeout=10)
    rcpts = ['x-%s@b.test' % tag, 'y-%s@c.test' % tag, 'z-%s@d.test' % tag, 'w-%s@e.test' % tag]
    body = ('Subject: matrix %s\r\n\r\nrelay=%s fallback=%s\r\n' % (tag, r, f)).encode()
    s.sendmail('o-%s@a.test' % tag, rcpts, body,
               mail_options=['CMTP-POLICY=relay:%s,fallback:%s,hops:6' % (r, f)])
    s.quit()
    print('sent', tag)
PY
check "all six combinations were accepted on A's SMTP ingress" bash -c '[ "$(grep -c "^sent " "$1")" = 6 ]' _ "$T/send.out"

# expect RECIPIENT-KIND RELAY FALLBACK: the expected outcome of one cell.
expect() {
  local kind=$1 r=$2 f=$3
  case "$kind:$r" in
    x:*) echo delivered ;;
    y:none) echo refused ;;
    y:*) echo delivered ;;
    z:any) echo delivered ;;
    z:*) echo refused ;;
    w:*) [ "$f" = smtp ] && echo smtp || echo failed ;;
  esac
}
for combo in $COMBOS; do
  r=${combo%:*} f=${combo#*:} tag="${combo%:*}-${combo#*:}"
  for kind in x y z w; do
    case $kind in x) dom=b.test root=$T/maildir-b ;; y) dom=c.test root=$T/maildir-c ;;
      z) dom=d.test root=$T/maildir-c ;; w) dom=e.test root= ;; esac
    rc="$kind-$tag@$dom"
    case $(expect "$kind" "$r" "$f") in
      delivered)
        check "RELAY=$r FALLBACK=$f: $rc delivered over CMTP" poll 20 in_maildir "$root" "$dom" "$kind-$tag"
        ;;
      smtp)
        check "RELAY=$r FALLBACK=$f: $rc delivered by SMTP fallback" poll 20 in_sink "$rc"
        ;;
      refused)
        check "RELAY=$r FALLBACK=$f: $rc refused by the relay policy" \
          poll 20 grep -q "event=bounced.*rcpt=$rc.*relay-refused\|event=bounced.*rcpt=$rc.*relay-denied" "$T/a.log"
        ;;
      failed)
        check "RELAY=$r FALLBACK=$f: $rc failed (no CMTP, fallback forbidden)" \
          poll 20 grep -q "event=bounced.*rcpt=$rc.*no-cmtp" "$T/a.log"
        ;;
    esac
  done
  # The DSN names exactly the recipients that did not arrive.
  want=""
  for kind in x y z w; do
    case $kind in x) dom=b.test ;; y) dom=c.test ;; z) dom=d.test ;; w) dom=e.test ;; esac
    case $(expect "$kind" "$r" "$f") in refused | failed) want+="$kind-$tag@$dom " ;; esac
  done
  if [ -n "$want" ]; then
    # One DSN per failed destination (each is a report item of its own); together they name
    # exactly the recipients that did not arrive, each as failed.
    check "RELAY=$r FALLBACK=$f: DSNs reach the originator naming exactly: $want" poll 20 python3 -c '
import glob, sys
got = []
for p in glob.glob(sys.argv[1] + "/*"):
    d = open(p, "rb").read().decode("utf-8", "replace")
    if "Action: failed" not in d:
        sys.exit(1)
    got += [l.split(";", 1)[1].strip() for l in d.splitlines() if l.lower().startswith("final-recipient:")]
sys.exit(0 if sorted(got) == sorted(sys.argv[2].split()) else 1)' "$T/maildir-a/a.test/o-$tag/new" "$want"
  else
    # Nothing failed: no DSN at all (checked after the others had time to arrive).
    sleep 1
    check "RELAY=$r FALLBACK=$f: nothing failed, no DSN" bash -c '[ -z "$(find "$1" -type f 2>/dev/null)" ]' _ "$T/maildir-a/a.test/o-$tag/new"
  fi
done

# A relay refusal is never turned into SMTP: nothing for c.test or d.test reached the sink.
check "no relay-refused recipient went out over SMTP" bash -c '! ls "$1" | grep -q "@[cd].test$"' _ "$T/sink"
check "no fallback without permission: nothing for w-*-none reached the sink" bash -c '! ls "$1" | grep -q "^msg-.*-w-.*-none@e.test$"' _ "$T/sink"
# The relay carried the policy on: C's copy has B (relay) then C (final), and the hop limit
# went down (hops:6 at A's ingress; B relayed with 5).
f=$(find "$T/maildir-c/d.test/z-any-none/new" -type f 2>/dev/null | head -1)
check "C's copy records B as relay and C as final" python3 -c '
import base64, json, sys
d = open(sys.argv[1], "rb").read().split(b"\r\n\r\n")[0].replace(b"\r\n ", b"")
v = [l for l in d.split(b"\r\n") if l.startswith(b"CMTP-Trace: ")][0][12:].decode()
r = json.loads(base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)))
got = [(x["by"], x["role"]) for x in r]
sys.exit(0 if got == [("mx.b.test", "relay"), ("mx.c.test", "final")] else repr(got))' "$f"
check "A sent the originator's policy (B logs RELAY=any HOPS=6)" \
  grep -q "event=accepted.*from=o-any-none@a.test.*relay=any fallback=none hops=6" "$T/b.log"
check "B relayed with HOPS lowered (C logs HOPS=5, the policy carried on)" \
  grep -q "event=accepted.*from=o-any-none@a.test.*relay=any fallback=none hops=5" "$T/c.log"
check "no sanitizer report in any cmtpd log" bash -c '! grep -q "ERROR: AddressSanitizer\|runtime error" "$@"' _ "$T/a.log" "$T/b.log" "$T/c.log"
finish
