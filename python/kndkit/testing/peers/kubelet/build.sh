#!/usr/bin/env bash
# Builds the kubelet-side DRA test peers into $KNDKIT_PEERS_BIN:
#   kubelet-harness  the kubelet's plugin registration + DRA client, driven over stdio
#   ref-driver       a minimal driver on k8s.io/dynamic-resource-allocation/kubeletplugin
#   fake-registrar   a registration server that answers GetInfo with given fields
# Static (CGO_ENABLED=0), -trimpath. Needs the go command and, on a cold module
# cache, the Go module proxy. Returns at once when the binaries match the
# sources (stamp file); --force rebuilds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${KNDKIT_PEERS_BIN:?set KNDKIT_PEERS_BIN to the output directory (kndkit.testing.peers.ensure and tests/peers/build.sh do)}"
export PATH="$PATH:/usr/local/go/bin"
bins=(kubelet-harness ref-driver fake-registrar)
mkdir -p "$out"
cd "$here"

stamp_file="$out/kubelet-peers.stamp"
stamp="$( { go version; cat go.mod go.sum build.sh; find cmd -name '*.go' -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
  missing=0
  for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || missing=1; done
  if [[ $missing == 0 ]]; then
    echo "kubelet peers up to date in $out"
    exit 0
  fi
fi

start=$(date +%s)
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
rm -f "$stamp_file"
go build -trimpath -o "$out/" "${bins[@]/#/./cmd/}"
echo "$stamp" > "$stamp_file"
echo "kubelet peers built into $out in $(( $(date +%s) - start )) s"
