#!/usr/bin/env bash
# Discovery check for a real GPU host (a lent device machine): runs kndkit's
# discovery on the live node and compares it with what the kernel says through
# `ip -j link` and sysfs. Builds nothing: expects the repository with the built
# extension (python/kndkit/_native*.so carried over) and python3 >= 3.11.
# Prints PASS/FAIL lines and JSON (also $OUT/discover-device-check.json).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 100 "$PY" - "${OUT:-}" <<'PYEOF'
import json
import os
import subprocess
import sys

import kndkit
from kndkit.devices import devices_from_discovery, resource_slices

out_dir = sys.argv[1] if len(sys.argv) > 1 else ""
results = []


def record(name, ok, detail):
    results.append({"check": name, "status": "PASS" if ok else "FAIL", "detail": detail})
    print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(detail, default=str)[:2000]}")


topo = kndkit.discover()
record("discover", True, {"netdevs": len(topo.netdevs), "rdma": len(topo.rdma_devices),
                          "warnings": list(topo.warnings)})
ip = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
record("same links as ip -j link", sorted(l["ifname"] for l in ip) ==
       sorted(d.name for d in topo.netdevs), [d.to_dict() for d in topo.netdevs])
bad_numa = [d.name for d in topo.netdevs if d.numa_node is not None and d.numa_node < 0]
record("numa never negative", not bad_numa, bad_numa)
for d in topo.netdevs:
    if d.pci_address:
        real = os.path.realpath(f"/sys/bus/pci/devices/{d.pci_address}")
        root = real.split("/")[3] if real.startswith("/sys/devices/pci") else None
        record(f"pcie root of {d.name}", d.pcie_root == root, {"ours": d.pcie_root, "sysfs": root})
gpus = []
for dev in sorted(os.listdir("/sys/bus/pci/devices")):
    cls = open(f"/sys/bus/pci/devices/{dev}/class").read().strip()
    if cls.startswith("0x0302") or cls.startswith("0x0300"):
        gpus.append((dev, os.path.realpath(f"/sys/bus/pci/devices/{dev}").split("/")[3]))
record("gpus and their root complexes", True, gpus)
slices = resource_slices(devices_from_discovery(topo), driver="netdev.kndkit.dev",
                         node_name="gpu-node")
record("resource slices", True, slices)
if out_dir:
    with open(os.path.join(out_dir, "discover-device-check.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
sys.exit(1 if any(r["status"] == "FAIL" for r in results) else 0)
PYEOF
