#!/usr/bin/env bash
# scripts/gen-certs.sh DIR [NAME...] — make a private test CA and certificates in DIR with the
# openssl command-line tool (a build-time helper; our binaries link BoringSSL only).
# Writes ca.crt/ca.key, server.crt/server.key (Ed25519, SANs: every NAME, localhost, 127.0.0.1),
# server-p256.crt/key (ECDSA P-256, same SANs) and client.crt/client.key (Ed25519, SAN: first
# NAME, EKU clientAuth). Existing files are kept (first run only), so `make run` is stable.
set -euo pipefail
dir=$1; shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost)
mkdir -p "$dir"
cd "$dir"
[ -f server.crt ] && [ -f server.key ] && [ -f ca.crt ] && exit 0
umask 077

san="subjectAltName="
for n in "${names[@]}"; do san+="DNS:$n,"; done
san+="DNS:localhost,IP:127.0.0.1"

openssl req -x509 -newkey ed25519 -keyout ca.key -out ca.crt -days 3650 -nodes \
  -subj "/CN=CMTP test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# sign KEYTYPE-ARGS... -- NAME CN EXT: a leaf certificate signed by the CA.
leaf() {
  local name=$1 cn=$2 ext=$3; shift 3
  openssl req -new -newkey "$@" -keyout "$name.key" -out "$name.csr" -nodes -subj "/CN=$cn" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -out "$name.crt" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
leaf server "${names[0]}" "$san
extendedKeyUsage=serverAuth" ed25519
leaf server-p256 "${names[0]}" "$san
extendedKeyUsage=serverAuth" ec -pkeyopt ec_paramgen_curve:P-256
leaf client "${names[0]}" "subjectAltName=DNS:${names[0]}
extendedKeyUsage=clientAuth" ed25519
chmod 600 ./*.key
chmod 644 ./*.crt
