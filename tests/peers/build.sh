#!/usr/bin/env bash
# Builds every Go test peer under tests/peers/*/ into tests/peers/bin/.
# Each peer has its own go.mod and build.sh; Go's module and build caches make a
# second run take seconds.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$PATH"
for b in */build.sh; do
  [ -f "$b" ] || continue
  echo "[peers] $b" >&2
  bash "$b"
done
