#!/usr/bin/env bash
# tests/integration/test_linkage.sh — our binaries load BoringSSL from android-libboringssl
# (through the rpath) and never the system OpenSSL; the release build links jemalloc.
source "$(dirname "$0")/lib.sh"
for p in cmtpd cmtp-send cmtp-bench; do
  [ -x "$B/$p" ] || { bad "$p built"; continue; }
  l=$(ldd "$B/$p")
  check "$p loads android libssl" grep -q '/android/libssl.so' <<<"$l"
  check "$p loads android libcrypto" grep -q '/android/libcrypto.so' <<<"$l"
  check "$p does not load the system OpenSSL" bash -c '! grep -E "libssl.so.3|libcrypto.so.3" <<<"$1"' _ "$l"
done
case "$B" in
  */asan) check "ASan build does not link jemalloc" bash -c '! ldd "$1" | grep -q jemalloc' _ "$B/cmtpd" ;;
  *) check "release build links jemalloc" bash -c 'ldd "$1" | grep -q jemalloc' _ "$B/cmtpd" ;;
esac
finish
