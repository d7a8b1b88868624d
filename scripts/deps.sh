#!/usr/bin/env bash
# scripts/deps.sh — install the Debian 12 packages the build, the tests and `make run` need.
# As root: installs what is missing (apt-get). Otherwise: prints the exact apt-get line, exits 1.
# --check: only report, never install (exit 1 when something is missing).
set -euo pipefail

PKGS=(
  build-essential clang libclang-rt-14-dev clang-format pkg-config
  android-libboringssl-dev android-boringssl
  liburing-dev libjemalloc-dev libhiredis-dev redis-server redis-tools
  libcmocka-dev libidn2-dev libutf8proc-dev libinih-dev libjansson-dev libc-ares-dev
  openssl swaks libnet-ssleay-perl postfix dovecot-lmtpd gnuplot-nox procps iproute2 python3
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

line="apt-get install -y ${missing[*]}"
if [ "${1:-}" = "--check" ] || [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages; run as root:" >&2
  echo "  apt-get update && $line" >&2
  exit 1
fi

echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# postfix asks questions on install; answer them so it installs unattended and stays local.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package may start the system services; the tests never use them (they start private
# instances on Unix sockets and private ports), so leave them as the package set them up.
exit 0
