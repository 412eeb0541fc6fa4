#!/usr/bin/env bash
# Build the NRI runtime-side test peer (nri-harness), the test plugin
# (netdev-injector) and the benchmark's Go anchor plugin (bench-plugin) against containerd/nri v0.12.x (go.mod) and v0.11.x
# (go.v011.mod), into $KNDKIT_PEERS_BIN.
#
#   nri/build.sh            # both versions
#   nri/build.sh v012       # one version
#   FORCE=1 nri/build.sh    # rebuild even when up to date
#
# Output directory: $KNDKIT_PEERS_BIN (required; tests/peers/build.sh sets tests/peers/bin).
#
# Needs: go >= 1.24 and the Go module proxy (first build only).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${KNDKIT_PEERS_BIN:?set KNDKIT_PEERS_BIN to the output directory (kndkit.testing.peers.ensure and tests/peers/build.sh do)}"
mkdir -p "$bin"
export CGO_ENABLED=0

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(v012 v011)

for v in "${versions[@]}"; do
  case "$v" in
    v012) modfile=go.mod; tags=nri_no_wasm ;;
    v011) modfile=go.v011.mod; tags=nri_no_wasm,nri_v011 ;;
    *) echo "build.sh: unknown version '$v' (want v012 or v011)" >&2; exit 2 ;;
  esac
  outs=("$bin/nri-harness-$v" "$bin/nri-netdev-injector-$v" "$bin/nri-bench-plugin-$v")
  # Up to date: every binary exists and no input is newer than the oldest one.
  uptodate=
  if [ -z "${FORCE:-}" ]; then
    uptodate=1; oldest="${outs[0]}"
    for o in "${outs[@]}"; do
      [ -x "$o" ] || { uptodate=; break; }
      [ "$o" -ot "$oldest" ] && oldest="$o"
    done
  fi
  if [ -n "$uptodate" ]; then
    if [ -z "$(find "$here/cmd" "$here/$modfile" "$here/${modfile%.mod}.sum" "$here/build.sh" -newer "$oldest" -print -quit)" ]; then
      echo "build.sh: $v up to date" >&2
      continue
    fi
  fi
  start=$(date +%s.%N)
  for cmd in nri-harness netdev-injector bench-plugin; do
    out="$bin/$cmd-$v"
    [ "$cmd" = nri-harness ] || out="$bin/nri-$cmd-$v"
    (cd "$here" && go build -modfile="$modfile" -tags "$tags" -trimpath -buildvcs=false \
      -o "$out.tmp.$$" "./cmd/$cmd")
    mv -f "$out.tmp.$$" "$out"
  done
  end=$(date +%s.%N)
  awk -v v="$v" -v s="$start" -v e="$end" 'BEGIN { printf "build.sh: %s built in %.1fs\n", v, e - s }' >&2
done
