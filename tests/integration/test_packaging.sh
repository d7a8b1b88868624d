#!/usr/bin/env bash
# tests/integration/test_packaging.sh — what a packager and an operator rely on: --version,
# --help, --check (good and bad configs), the example config loads, man pages render without
# warnings, the systemd unit parses, `make install` lays the files out under DESTDIR.
source "$(dirname "$0")/lib.sh"
check "cmtpd --version" bash -c '"$1/cmtpd" --version | grep -q "^cmtpd [0-9]"' _ "$B"
check "cmtpd --help documents --check and signals" bash -c '"$1/cmtpd" --help | grep -q -- "--check" && "$1/cmtpd" --help | grep -q SIGHUP' _ "$B"
check "cmtpctl --help lists the commands" bash -c '"$1/cmtpctl" --help | grep -q "queue summary"' _ "$B"
check "cmtp-send --help documents exit status" bash -c '"$1/cmtp-send" --help | grep -q "Exit status"' _ "$B"
certs "$T/tls" mx.b.test
sed -e "s|^#cert = .*|cert = $T/tls/server.crt|; s|^#key = .*|key = $T/tls/server.key|" "$TOP/etc/cmtpd.conf" >"$T/example.conf"
grep -q "^cert = " "$T/example.conf" || printf '[tls]\ncert = %s\nkey = %s\n' "$T/tls/server.crt" "$T/tls/server.key" >>"$T/example.conf"
out=$("$B/cmtpd" -c "$T/example.conf" --check 2>&1)
check "the example config passes --check" grep -q 'config ok' <<<"$out"
printf '[server]\nworkers = many\n' >"$T/bad.conf"
out=$("$B/cmtpd" -c "$T/bad.conf" --check 2>&1); rc=$?
check "--check: a bad value exits 1 and names file:line and key" bash -c '[ "$1" -eq 1 ] && grep -q "bad.conf:2" <<<"$2" && grep -q workers <<<"$2"' _ $rc "$out"
printf '[tls]\ncert = %s\nkey = %s\n' "$T/tls/ca.crt" "$T/tls/server.key" >"$T/badcert.conf"
"$B/cmtpd" -c "$T/badcert.conf" --check >/dev/null 2>&1
check "--check: a certificate that does not match its key exits 1" [ $? -eq 1 ]
for m in "$TOP"/docs/man/*.[158]; do
  w=$(groff -man -Tutf8 -ww -z "$m" 2>&1)
  check "man page $(basename "$m") renders without warnings" [ -z "$w" ]
done
if command -v systemd-analyze >/dev/null; then
  check "systemd unit verifies" bash -c 'systemd-analyze verify "$1" 2>&1 | grep -v "Command /usr/sbin" | grep -qi "error" && exit 1 || exit 0' _ "$TOP/etc/cmtpd.service"
else
  check "systemd unit has Type=notify and ExecReload via cmtpctl" bash -c 'grep -q "^Type=notify" "$1" && grep -q "^ExecReload=.*cmtpctl.*reload" "$1"' _ "$TOP/etc/cmtpd.service"
fi
if [ "$B" = "$TOP/build" ]; then
  make -s -C "$TOP" install DESTDIR="$T/root" >/dev/null 2>&1
  for f in usr/sbin/cmtpd usr/sbin/cmtpctl usr/bin/cmtp-send usr/share/man/man8/cmtpd.8 usr/share/man/man5/cmtpd.conf.5 lib/systemd/system/cmtpd.service etc/cmtpd/cmtpd.conf; do
    check "make install: $f" test -f "$T/root/$f"
  done
fi
finish
