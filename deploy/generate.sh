#!/usr/bin/env bash
# Regenerates the committed manifests in deploy/ from `kndkit manifests`.
# tests/unit/test_manifests.py fails when they are out of date.
#
#   deploy/<driver>.yaml  everything one bundled driver needs (namespace, RBAC,
#                         ResourceSlice admission policy, DeviceClass, DaemonSet)
#   deploy/rbac.yaml      the netdev driver's Namespace + RBAC alone, under the
#                         account name "kndkit" (what kndkit's own test suites run as)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
for driver in hello netdev macvlan rdma; do
  "$python" -m kndkit.cli manifests "$driver" --output-dir "$here"
done
"$python" -m kndkit.cli manifests netdev --name kndkit --only namespace,rbac >"$here/rbac.yaml.tmp"
mv "$here/rbac.yaml.tmp" "$here/rbac.yaml"
