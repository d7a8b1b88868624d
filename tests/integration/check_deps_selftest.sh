#!/usr/bin/env bash
# tests/integration/check_deps_selftest.sh — shows that `make check-deps` catches violations:
# a copy of the tree with one forbidden include per rule must fail, the clean tree must pass.
set -u
cd "$(dirname "$0")/../.."
pass=0; fail=0
ok()  { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }

if bash scripts/check-deps.sh . >/dev/null; then ok "clean tree passes"; else bad "clean tree passes"; fi

try() { # try MODULE INCLUDE: a file in MODULE including INCLUDE must be caught.
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$tmp/$1"
  printf '/* violation */\n#include %s\n' "$2" >"$tmp/$1/bad.c"
  if bash scripts/check-deps.sh "$tmp" >"$tmp/out" 2>&1; then
    bad "$1 including $2 is caught"
  elif grep -q "bad.c" "$tmp/out"; then ok "$1 including $2 is caught"
  else bad "$1 including $2 is reported with its file"; fi
  rm -rf "$tmp"
}
try core '<liburing.h>'
try core '<openssl/ssl.h>'
try core '<hiredis/hiredis.h>'
try core '<sys/socket.h>'
try core '"io/engine.h"'
try io '<openssl/ssl.h>'
try io '"core/proto.h"'
try io '"tls/tls.h"'
try tls '<liburing.h>'
try tls '"io/engine.h"'
try queue '<openssl/ssl.h>'
try admin '<hiredis/hiredis.h>'
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
