#!/usr/bin/env bash
# scripts/check-deps.sh ROOT — prove the module dependency rules of STYLE.md with grep.
# Exit 0 when every rule holds; otherwise print each violation (file:line: include) and exit 1.
set -u
root=${1:-.}
fail=0

# check MODULE PATTERN WHY: no file of MODULE may include a header matching PATTERN.
check() {
  local mod=$1 pat=$2 why=$3
  [ -d "$root/$mod" ] || return 0
  local hits
  hits=$(grep -rnE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]($pat)" "$root/$mod" \
         --include='*.c' --include='*.h' 2>/dev/null)
  if [ -n "$hits" ]; then
    echo "check-deps: $mod/ must not include $why:"
    echo "$hits" | sed "s|^$root/|  |"
    fail=1
  fi
}

# core/ is pure protocol: no I/O library, no sockets, no other module.
check core 'liburing|openssl/|hiredis/|ares|sys/socket\.h|netinet/|io/|tls/|queue/|admin/|daemon/' \
  'an I/O library, sockets or another module (core/ is pure)'
# io/ knows nothing of TLS or CMTP.
check io 'openssl/|hiredis/|core/|tls/|queue/|admin/|daemon/' 'TLS, Redis or CMTP headers'
# tls/ never sees io_uring or Redis.
check tls 'liburing|hiredis/|io/|queue/|admin/|daemon/' 'io_uring, Redis or the engine'
# queue/ sees Redis, core types and io's readiness hook; never TLS or liburing itself.
check queue 'liburing|openssl/|tls/|admin/|daemon/' 'liburing, TLS or the daemon'
# admin/ talks to the daemon through its socket protocol only.
check admin 'liburing|openssl/|hiredis/|tls/|daemon/' 'liburing, TLS, Redis or the daemon'

if [ $fail -eq 0 ]; then echo "check-deps: ok"; fi
exit $fail
