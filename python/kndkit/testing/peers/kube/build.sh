#!/usr/bin/env bash
# Build the Kubernetes test peers (kube-apiserver, embedded etcd, DRA allocator)
# into $KNDKIT_PEERS_BIN. Each binary carries a stamp of its inputs; an up to
# date binary is skipped without calling the go command at all. Go's module and
# build caches make a rebuild after the first one fast.
#
#   kube/build.sh                       build what is missing or stale
#   kube/build.sh            --force    rebuild all three
#   KNDKIT_PEERS_BIN=/some/dir build.sh  output directory (required)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${KNDKIT_PEERS_BIN:?set KNDKIT_PEERS_BIN to the output directory (kndkit.testing.peers.ensure and tests/peers/build.sh do)}
force=0
[[ ${1:-} == --force ]] && force=1
mkdir -p "$bin"
cd "$here"

# Several test sessions may start at once: build one at a time.
exec 9>"$bin/.kube-build.lock"
flock 9

export CGO_ENABLED=0
# go.mod names go 1.26.0: the installed toolchain (1.26.8) is enough.
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
jobs=${KNDKIT_GO_JOBS:-2}

k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
minor=${k8s_version#v1.}
minor=${minor%%.*}
version_pkg=k8s.io/component-base/version
ldflags="-s -w -X ${version_pkg}.gitVersion=${k8s_version} -X ${version_pkg}.gitMajor=1"
ldflags+=" -X ${version_pkg}.gitMinor=${minor} -X ${version_pkg}.gitTreeState=clean"

common_inputs() {
  go version
  echo "$ldflags"
  cat go.mod go.sum build.sh
}

stamp_of() { # name [source dir]
  {
    common_inputs
    if [[ -n ${2:-} ]]; then cat "$2"/*.go; fi
  } | sha256sum | cut -d' ' -f1
}

build() { # name package [source dir]
  local name=$1 pkg=$2 src=${3:-} out="$bin/$1" stamp want t0 t1 secs
  stamp="$out.stamp"
  want=$(stamp_of "$name" "$src")
  if [[ $force == 0 && -x $out && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "build.sh: $name up to date"
    return
  fi
  t0=$(date +%s.%N)
  go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg"
  mv -f "$out.tmp" "$out"
  echo "$want" >"$stamp"
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
  echo "build.sh: $name built in $secs s"
  echo "$(date -u +%FT%TZ) $name $secs" >>"$bin/build-times.log"
}

build etcd ./cmd/etcd cmd/etcd
build allocator ./cmd/allocator cmd/allocator
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
