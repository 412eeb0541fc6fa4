#!/usr/bin/env bash
# Builds every Go test peer (sources shipped in the package under
# python/kndkit/testing/peers/*/) into tests/peers/bin/ (or $KNDKIT_PEERS_BIN).
# Each peer has its own go.mod and build.sh; Go's module and build caches make a
# second run take seconds.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$PATH"
KNDKIT_PEERS_BIN=${KNDKIT_PEERS_BIN:-$(pwd)/bin}
export KNDKIT_PEERS_BIN
for b in ../../python/kndkit/testing/peers/*/build.sh; do
  [ -f "$b" ] || continue
  echo "[peers] $b" >&2
  bash "$b"
done
