#!/usr/bin/env bash
# Create the federation's certificate authority and the SuperLink's TLS certificate.
#
#   configs/deploy/make-certs.sh OUT_DIR [HOST ...]
#
# Writes OUT_DIR/ca.crt (send it to every hospital), OUT_DIR/ca.key (keep it offline),
# OUT_DIR/server.pem and OUT_DIR/server.key (for flower-superlink). HOST names or IP
# addresses the hospitals use to reach the SuperLink go into the certificate's
# subjectAltName; 127.0.0.1 and localhost are always included for rehearsals.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [HOST ...]" >&2
  exit 2
fi
out=$1
shift
mkdir -p "$out"
umask 077

san="IP:127.0.0.1,DNS:localhost"
for host in "$@"; do
  if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san="$san,IP:$host"; else san="$san,DNS:$host"; fi
done

openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes \
  -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=fedmammo federation CA" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -keyout "$out/server.key" -out "$out/server.csr" \
  -subj "/CN=fedmammo superlink" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -out "$out/server.pem" -days 365 -sha256 -extfile "$out/server.ext" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"
openssl verify -CAfile "$out/ca.crt" "$out/server.pem" >/dev/null
echo "wrote $out/ca.crt $out/server.pem $out/server.key (SAN: $san); keep $out/ca.key offline"
