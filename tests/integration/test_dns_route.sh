#!/usr/bin/env bash
# tests/integration/test_dns_route.sh — routing by DNS (PROTOCOL.md 16) and the SMTP fallback
# decision (PROTOCOL.md 14) between two cmtpd instances, A (127.0.0.1) and B (127.0.0.2), with a
# private authoritative DNS server (dns_server.py) as A's only resolver and an SMTP sink
# (smtp_sink.py) as the fallback host. A relays every test domain to a next hop given as a host
# name (the domain itself), which it routes by DNS:
#   b.test  SRV -> mx.b.test:B                           delivered, verified for b.test, trace
#   c.test  no SRV, MX mx.c.test on cmtp_port (B)        delivered
#   d.test  SRV "." and FALLBACK=none                    permanent failure, report "failed",
#                                                        routed by DNS to the originator's o.test
#   e.test  SRV prio 10 refuses, prio 15 (IPv6 only, ::1) refuses, prio 20 is B
#                                                        delivered by the third host
#   f.test  SERVFAIL                                     deferred (dns-tempfail)
#   g.test  SRV "." and FALLBACK=smtp                    SMTP to the sink, fallback recorded;
#                                                        a binary body: no-binarymime
#   h.test  SRV "." and FALLBACK=smtp-verified, the sink's certificate does not name h.test
#                                                        deferred, never plaintext
#   i.test  like h.test, the certificate names i.test    SMTP, verified
#   u.test  SRV host refuses, FALLBACK=none              deferred, not SMTP
#   v.test  SRV host refuses, FALLBACK=smtp-tls          SMTP (every CMTP host unreachable),
#                                                        the first MX refuses, the second takes it
#   k.test  SRV -> mx.b.test, whose certificate does not name k.test
#                                                        deferred, no fallback
#   n.test  null MX                                      permanent failure, no fallback
#   w.test  SRV host speaks SMTP, not TLS, FALLBACK=smtp  unreachable: SMTP fallback
#   x.test  SRV host agrees no ALPN, FALLBACK=smtp        unreachable: SMTP fallback
# plus the per-worker cache (a burst to b.test makes at most one lookup per worker).
source "$(dirname "$0")/lib.sh"

certs "$T/tlsb" mx.b.test b.test c.test e.test o.test i.test
certs "$T/tlsa" mx.a.test a.test
start_redis r

PA=$(free_port) PB=$(free_port) PD=$(free_port) PS=$(free_port) PX=$(free_port) PT=$(free_port)
SEND=("$B/cmtp-send" --timeout 10 --ca "$T/tlsa/ca.crt" -s "127.0.0.1:$PA" -n a.test --relay any)

# The zone. PX is a port nobody listens on (127.0.0.3 refuses it).
cat >"$T/zone" <<ZONE
_cmtp._tcp.b.test SRV 10 5 $PB mx.b.test
mx.b.test A 127.0.0.2
c.test MX 10 mx.c.test
mx.c.test A 127.0.0.2
_cmtp._tcp.d.test SRV 0 0 0 .
_cmtp._tcp.e.test SRV 10 0 $PX dead.e.test
_cmtp._tcp.e.test SRV 15 0 $PX dead6.e.test
_cmtp._tcp.e.test SRV 20 0 $PB mx.b.test
dead.e.test A 127.0.0.3
dead6.e.test AAAA ::1
_cmtp._tcp.f.test SERVFAIL
_cmtp._tcp.g.test SRV 0 0 0 .
g.test MX 10 smtp.sink.test
_cmtp._tcp.h.test SRV 0 0 0 .
h.test MX 10 smtp.sink.test
_cmtp._tcp.i.test SRV 0 0 0 .
i.test MX 10 smtp.sink.test
smtp.sink.test A 127.0.0.1
_cmtp._tcp.u.test SRV 10 0 $PX dead.e.test
_cmtp._tcp.v.test SRV 10 0 $PX dead.e.test
v.test MX 10 dead.e.test
v.test MX 20 smtp.sink.test
n.test MX 0 .
_cmtp._tcp.w.test SRV 10 0 $PS smtp.sink.test
w.test MX 10 smtp.sink.test
_cmtp._tcp.x.test SRV 10 0 $PT smtp.sink.test
x.test MX 10 smtp.sink.test
_cmtp._tcp.o.test SRV 0 0 $PB mx.b.test
_cmtp._tcp.k.test SRV 10 0 $PB mx.b.test
ZONE
python3 "$TOP/tests/integration/dns_server.py" "$PD" "$T/zone" --log "$T/dns.log" \
  --ready "$T/dns.ready" 2>"$T/dns.err" &
PIDS+=("$!")
mkdir -p "$T/sink"
# The sink's certificate is B's: it names i.test (and b.test...), not g.test, h.test or v.test.
python3 "$TOP/tests/integration/smtp_sink.py" "$PS" "$T/sink" --cert "$T/tlsb/server-p256.crt" \
  --key "$T/tlsb/server-p256.key" 2>"$T/sink.err" &
PIDS+=("$!")

# A TLS server that agrees no ALPN protocol (it offers h2 only), with a certificate A trusts.
openssl s_server -quiet -accept "127.0.0.1:$PT" -cert "$T/tlsb/server.crt" -key "$T/tlsb/server.key" \
  -alpn h2 -tls1_3 </dev/null >"$T/s_server.out" 2>&1 &
PIDS+=("$!")

# conf NAME IP PORT HOST CERTDIR CA [extra INI lines...]
conf() {
  local name=$1 ip=$2 port=$3 host=$4 certs=$5 ca=$6; shift 6
  {
    printf '[server]\nhostname = %s\nlisten = %s:%s\nstate_dir = %s\nworkers = 2\n' \
      "$host" "$ip" "$port" "$T/state-$name"
    printf 'conn_per_ip_max = 0\n'
    printf '[tls]\ncert = %s/server.crt\nkey = %s/server.key\n' "$certs" "$certs"
    [ -n "$ca" ] && printf 'ca = %s\n' "$ca"
    printf '[redis]\naddress = unix:%s\nkey_prefix = %s\n' "$T/r.sock" "$name"
    printf '[admin]\nsocket = %s\n' "$T/admin-$name.sock"
    printf '%s\n' "$@"
  } >"$T/$name.conf"
}
relays=() # one line each: a repeated list key appends
for d in b c d e f g h i k u v n w x; do relays+=("relay_domains = $d.test=$d.test"); done
conf a 127.0.0.1 "$PA" mx.a.test "$T/tlsa" "$T/tlsb/ca.crt" '[delivery]' 'local_domains = a.test' \
  "maildir = $T/maildir-a" "${relays[@]}" "dns_servers = 127.0.0.1:$PD" \
  'dns_timeout = 1s' "cmtp_port = $PB" "smtp_port = $PS"
conf b 127.0.0.2 "$PB" mx.b.test "$T/tlsb" "" '[delivery]' \
  'local_domains = b.test, c.test, e.test, o.test' "maildir = $T/maildir-b"
for n in a b; do
  "$B/cmtpd" -c "$T/$n.conf" 2>>"$T/$n.log" &
  PIDS+=("$!")
  eval "PID_$n=$!"
done
wait_for listening 127.0.0.1 "$PA" || bad "cmtpd a listens"
wait_for listening 127.0.0.2 "$PB" || bad "cmtpd b listens"
wait_for test -f "$T/dns.ready" || bad "the DNS server starts"
wait_for test -f "$T/sink/ready" || bad "the SMTP sink starts"

mails() { find "$1" -type f -path '*/new/*' 2>/dev/null | wc -l; }
sinkmsgs() { ls "$T/sink" 2>/dev/null | grep -c "^msg-.*-$1\$"; }
# has_mails DIR N / has_sink RCPT N: exactly N messages there (for poll: evaluated each time).
has_mails() { [ "$(mails "$1")" -eq "$2" ]; }
has_sink() { [ "$(sinkmsgs "$1")" -eq "$2" ]; }
send() { "${SEND[@]}" -f alice@a.test "$@" "$T/m"; }
alog() { grep -F "$1" "$T/a.log"; }
printf 'Subject: dns\r\n\r\nrouted by DNS\r\n' >"$T/m"

# ---------------------------------------------------------------------------------------------
# SRV, MX and the next host.
out=$(send -t bob@b.test)
check "b.test: A answers 251 relay next=b.test" grep -q '^rcpt bob@b.test relay next=b.test' <<<"$out"
check "b.test: delivered to B through the SRV target" poll 10 has_mails "$T/maildir-b/b.test/bob" 1
check "b.test: A logs the delivery to mx.b.test[127.0.0.2]:$PB over CMTP" \
  poll 5 grep -q "event=delivered.*rcpt=bob@b.test.*transport=cmtp peer=mx.b.test\[127.0.0.2\]:$PB" "$T/a.log"
f=$(find "$T/maildir-b/b.test/bob" -type f -path '*/new/*' | head -1)
check "b.test: the trace has A (relay) then B (final)" pyck '
import base64, json, sys
d = open(sys.argv[1], "rb").read().split(b"\r\n\r\n")[0].replace(b"\r\n ", b"")
v = [l for l in d.split(b"\r\n") if l.startswith(b"CMTP-Trace: ")][0][12:].decode()
r = json.loads(base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)))
got = [(x["by"], x["role"]) for x in r]
print("ok" if got == [("mx.a.test", "relay"), ("mx.b.test", "final")] else got)' "$f"

# The certificate must name the destination domain, never the SRV target (no DNSSEC): B's names
# mx.b.test but not k.test. A failed verification is temporary and rules out SMTP fallback.
send -t kim@k.test --fallback smtp >/dev/null
check "k.test: a certificate for the SRV target only is refused (deferred)" \
  poll 10 grep -q 'event=deferred.*rcpt=kim@k.test.*transport=cmtp.*(k.test).*certificate verify failed' "$T/a.log"
check "k.test: judged a host failure, no fallback" \
  grep -q 'event=route-attempt-failed.*dest=k.test.*class=host.*next=none' "$T/a.log"
check "k.test: nothing went over SMTP" bash -c "! grep -q 'event=smtp-fallback.*dest=k.test' '$T/a.log' && [ \$(ls '$T/sink' | grep -c 'k.test') -eq 0 ]"

out=$(send -t carol@c.test)
check "c.test: delivered through the MX host on cmtp_port" poll 10 has_mails "$T/maildir-b/c.test/carol" 1
check "c.test: peer mx.c.test" poll 5 grep -q "event=delivered.*rcpt=carol@c.test.*peer=mx.c.test\[127.0.0.2\]:$PB" "$T/a.log"
check "c.test: the lookups were SRV (NXDOMAIN) then MX" \
  bash -c "grep -q '_cmtp._tcp.c.test SRV NXDOMAIN' '$T/dns.log' && grep -q ' c.test MX NOERROR 1' '$T/dns.log'"

out=$(send -t erin@e.test)
check "e.test: the first SRV host refuses, the next host is tried" \
  poll 10 grep -q "event=route-attempt-failed.*dest=e.test.*peer=dead.e.test\[127.0.0.3\]:$PX.*class=unreachable.*next=next-host" "$T/a.log"
check "e.test: the IPv6-only host is tried at its AAAA address" \
  poll 10 grep -q "event=route-attempt-failed.*dest=e.test.*peer=dead6.e.test\[::1\]:$PX.*class=unreachable.*next=next-host" "$T/a.log"
check "e.test: delivered by the third SRV host" poll 10 has_mails "$T/maildir-b/e.test/erin" 1
check "e.test: logged delivered via mx.b.test" poll 5 grep -q "event=delivered.*rcpt=erin@e.test.*peer=mx.b.test" "$T/a.log"

# ---------------------------------------------------------------------------------------------
# SRV "." with FALLBACK=none: a permanent failure and its status report, which goes to the
# originator's domain o.test, itself routed by DNS (SRV -> B): no static route is involved.
out=$("${SEND[@]}" -f olga@o.test -t dan@d.test "$T/m")
TXN_D=$(sed -n 's/^accepted .*txn=\([^ ]*\).*/\1/p' <<<"$out")
check "d.test: accepted by A" test -n "$TXN_D"
check "d.test: bounced: no CMTP, FALLBACK=none" \
  poll 10 grep -q 'event=bounced.*rcpt=dan@d.test.*reply="no-cmtp: d.test offers no CMTP' "$T/a.log"
check "d.test: the report reaches olga@o.test at B (routed by DNS)" \
  poll 15 has_mails "$T/maildir-b/o.test/olga" 1
f=$(find "$T/maildir-b/o.test/olga" -type f -path '*/new/*' 2>/dev/null | head -1)
check "d.test: the report says failed for dan@d.test, about the TXN sent" pyck '
import json, sys
d = open(sys.argv[1], "rb").read()
j = json.loads(d[d.index(b"{"):])
print("ok" if j["txn"] == sys.argv[2] and j["rcpt"] == "dan@d.test" and j["status"] == "failed" and j["reason"].startswith("no-cmtp") else j)' "$f" "$TXN_D"
check "d.test: no SMTP attempt" test "$(sinkmsgs dan@d.test)" -eq 0

# SERVFAIL: temporary, never fallback.
send -t fay@f.test --fallback smtp >/dev/null
check "f.test: deferred with dns-tempfail" \
  poll 10 grep -q 'event=deferred.*rcpt=fay@f.test.*reply="dns-tempfail: SRV _cmtp._tcp.f.test' "$T/a.log"
check "f.test: no SMTP fallback after a DNS error" bash -c "! grep -q 'event=smtp-fallback.*dest=f.test' '$T/a.log'"

# Null MX: permanent, no fallback.
send -t ned@n.test --fallback smtp >/dev/null
check "n.test: null MX is a permanent failure" \
  poll 10 grep -q 'event=bounced.*rcpt=ned@n.test.*null-mx' "$T/a.log"

# ---------------------------------------------------------------------------------------------
# SMTP fallback.
send -t gus@g.test --fallback smtp >/dev/null
check "g.test: delivered over SMTP to the sink" poll 10 has_sink gus@g.test 1
check "g.test: the fallback decision is logged (no CMTP route)" \
  grep -q 'event=smtp-fallback.*dest=g.test.*level=smtp.*because="no CMTP route' "$T/a.log"
check "g.test: the fallback record (host, level, protection)" \
  poll 5 grep -q "event=fallback.*dest=g.test.*host=smtp.sink.test\[127.0.0.1\]:$PS level=smtp protection=TLSv1.3/" "$T/a.log"
check "g.test: logged delivered over smtp" poll 5 grep -q 'event=delivered.*rcpt=gus@g.test.*transport=smtp' "$T/a.log"
f=$(ls "$T/sink"/msg-*-gus@g.test 2>/dev/null | head -1)
check "g.test: no CMTP-Trace field in the fallback copy" bash -c "[ -n '$f' ] && ! grep -q '^CMTP-Trace' '$f'"
# A fallback never alters the body (PROTOCOL.md 14): a binary one (bare LF, NUL) needs CHUNKING
# and BINARYMIME, which the sink does not offer: a permanent failure, nothing sent.
printf 'Subject: raw\r\n\r\nbare\nlf \000\r\n' >"$T/m-raw"
"${SEND[@]}" -f alice@a.test -t bin@g.test --fallback smtp "$T/m-raw" >/dev/null
check "g.test: a binary body without BINARYMIME is bounced (no-binarymime)" \
  poll 10 grep -q 'event=bounced.*rcpt=bin@g.test.*no-binarymime' "$T/a.log"
check "g.test: nothing of the binary body reached the sink" has_sink bin@g.test 0

send -t hal@h.test --fallback smtp-verified >/dev/null
check "h.test: smtp-verified with a certificate for another name is deferred" \
  poll 10 grep -q 'event=deferred.*rcpt=hal@h.test.*transport=smtp' "$T/a.log"
check "h.test: nothing reached the sink" test "$(sinkmsgs hal@h.test)" -eq 0
check "h.test: never in plaintext (no MAIL in the sink's log for it)" \
  bash -c "! grep -q 'hal@h.test' '$T/sink/log'"

send -t ivy@i.test --fallback smtp-verified >/dev/null
check "i.test: smtp-verified with a matching certificate is delivered" \
  poll 10 has_sink ivy@i.test 1
check "i.test: the record says verified" \
  poll 5 grep -q 'event=fallback.*dest=i.test.*level=smtp-verified.*verified=yes' "$T/a.log"

send -t uma@u.test >/dev/null
check "u.test: unreachable with FALLBACK=none is deferred" \
  poll 10 grep -q "event=deferred.*rcpt=uma@u.test.*transport=cmtp.*dead.e.test" "$T/a.log"
check "u.test: no SMTP" bash -c "[ \$(ls '$T/sink' | grep -c 'u.test') -eq 0 ] && ! grep -q 'event=smtp-fallback.*dest=u.test' '$T/a.log'"
check "u.test: the message stays queued at A" \
  bash -c "[ \$(redis-cli -s '$T/r.sock' --scan --pattern 'a:*:env:*' | wc -l) -ge 1 ]"

send -t val@v.test --fallback smtp-tls >/dev/null
check "v.test: every CMTP host unreachable: SMTP fallback" poll 10 has_sink val@v.test 1
check "v.test: the decision says why" \
  grep -q 'event=smtp-fallback.*dest=v.test.*because="no CMTP server reachable" cmtp_attempts=1' "$T/a.log"
check "v.test: the first MX host refused, the next MX host was tried" \
  grep -q "event=route-attempt-failed.*dest=v.test.*peer=dead.e.test\[127.0.0.3\]:$PS transport=smtp class=unreachable.*next=next-host" "$T/a.log"
check "v.test: the fallback record names the second MX host" \
  poll 5 grep -q "event=fallback.*dest=v.test.*host=smtp.sink.test\[127.0.0.1\]:$PS level=smtp-tls" "$T/a.log"

# A CMTP host that does not speak TLS, and one that agrees no ALPN protocol, count as no CMTP
# server: SMTP fallback follows when allowed.
send -t wes@w.test --fallback smtp >/dev/null
check "w.test: a non-TLS peer is unreachable for CMTP" \
  poll 10 grep -q "event=route-attempt-failed.*dest=w.test.*transport=cmtp class=unreachable.*next=smtp-fallback" "$T/a.log"
check "w.test: delivered over SMTP" poll 10 has_sink wes@w.test 1
send -t xen@x.test --fallback smtp >/dev/null
check "x.test: no ALPN agreed is unreachable for CMTP" \
  poll 10 grep -q "event=route-attempt-failed.*dest=x.test.*transport=cmtp class=unreachable.*no application protocol.*next=smtp-fallback" "$T/a.log"
check "x.test: delivered over SMTP" poll 10 has_sink xen@x.test 1

# ---------------------------------------------------------------------------------------------
# The cache: a burst of messages to b.test makes at most one SRV and one A lookup per worker.
n0=$(grep -c '_cmtp._tcp.b.test SRV' "$T/dns.log")
burst=()
for i in 1 2 3 4 5 6; do
  send -t "bob$i@b.test" >/dev/null &
  burst+=("$!")
done
wait "${burst[@]}"
check "cache: the burst is delivered" poll 10 bash -c "[ \$(find '$T/maildir-b/b.test' -type f -path '*/new/*' | wc -l) -eq 7 ]"
n1=$(grep -c '_cmtp._tcp.b.test SRV' "$T/dns.log")
na=$(grep -c ' mx.b.test A ' "$T/dns.log")
check "cache: at most 2 SRV lookups of b.test in all (2 workers; got $n1)" test "$n1" -le 2
check "cache: the burst asked no SRV again ($n0 before, $n1 after)" test "$n1" -le $((n0 + 1))
check "cache: at most 2 A lookups of mx.b.test ($na), though 9 deliveries went there" test "$na" -le 2

# SIGTERM: both drain and exit 0 (the ASan build reports leaks at exit).
for n in a b; do
  eval "p=\$PID_$n"
  kill -TERM "$p" 2>/dev/null
  wait "$p"
  check "cmtpd $n exits 0 on SIGTERM" [ $? -eq 0 ]
done
san=$(cat "$T"/[ab].log 2>/dev/null | grep -c 'ERROR: AddressSanitizer\|runtime error\|LeakSanitizer')
check "no sanitizer report in any cmtpd log" [ "$san" -eq 0 ]
finish
