#!/usr/bin/env bash
# Create a hospital's SuperNode key pair (ECDSA P-384, what Flower's node auth expects).
#
#   configs/deploy/make-node-key.sh OUT_DIR SITE
#
# Writes OUT_DIR/SITE (private: never leaves the hospital) and OUT_DIR/SITE.pub (send
# only this one to the coordinating centre, which registers it).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 OUT_DIR SITE" >&2
  exit 2
fi
out=$1
site=$2
if [[ ! $site =~ ^[A-Za-z0-9._-]+$ ]]; then
  echo "$0: site name '$site' must be letters, digits, '.', '_' or '-'" >&2
  exit 2
fi
mkdir -p "$out"
if [ -e "$out/$site" ]; then
  echo "$0: $out/$site exists; refusing to overwrite a node key" >&2
  exit 1
fi
ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedmammo-$site" -f "$out/$site"
echo "wrote $out/$site (keep it here) and $out/$site.pub (send it to the coordinator)"
