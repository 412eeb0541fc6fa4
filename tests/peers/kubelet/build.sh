#!/usr/bin/env bash
# Builds the kubelet-side DRA test peers into tests/peers/bin/:
#   kubelet-harness  the kubelet's registration + DRA client, driven over stdio
#   ref-driver       a minimal driver on k8s.io/dynamic-resource-allocation/kubeletplugin
# Static (CGO_ENABLED=0), -trimpath. Needs the go command (go.mod states the
# minimum) and the Go module proxy on a cold module cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${KND_PEERS_BIN:-$(cd "$here/.." && pwd)/bin}"
mkdir -p "$out"
cd "$here"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
go build -trimpath -o "$out/" ./cmd/kubelet-harness ./cmd/ref-driver
