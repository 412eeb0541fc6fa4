#!/usr/bin/env bash
# RDMA plan check for a host WITH NETLINK_RDMA but no RDMA devices (the GPU hosts).
#
# What it checks, each a PASS/FAIL/SKIP line, then everything as one JSON object
# (stdout, and $OUT/rdma-plan-check.json when $OUT is set):
#   1. rdma_available()          -> True (the kernel answers NETLINK_RDMA)
#   2. rdma_get_netns_mode()     -> "shared" or "exclusive" (also kndkit.rdma.netns_mode())
#   3. rdma_links()              -> a list (empty on these hosts); discovery of /sys agrees
#   4. apply([rdma_move of a device that does not exist]) -> an error naming the device
#      that is not NotAvailable (docs/plan-steps.md: InvalidArgument, checked before
#      anything is sent; a NetlinkError with an ENODEV-like errno is accepted too),
#      nothing changed
#   5. the same rdma_move after a veth_add in a scratch netns -> the error names the
#      device and the veth pair is gone afterwards (never created or rolled back)
#   6. kndkit.rdma: RdmaLinks on the real /sys yields nothing, no exception
# Never changes the RDMA netns mode. Builds nothing: needs the built extension
# (python/kndkit/_native*.so, carried) and .venv or any python3 >= 3.11 (checks 2
# and 6 also use kndkit.rdma, which needs pydantic; without it they report so). Exit status 1 if any check FAILs. Runs in a few seconds
# (hard limit 50 s).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import kndkit._native' >/dev/null 2>&1; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec timeout 50 "$PY" - "${OUT:-}" <<'PYEOF'
import json
import os
import subprocess
import sys
import time

OUTDIR = sys.argv[1] if len(sys.argv) > 1 else ""
GHOST = "kndghost9"  # an RDMA device name no host has
results = []
t0 = time.monotonic()


def record(name, status, detail):
    results.append({"check": name, "status": status, "detail": detail})
    print(f"{status} {name}: {json.dumps(detail, default=str)}", flush=True)


def run(name, fn):
    try:
        status, detail = fn()
    except Exception as e:  # an unexpected exception is a FAIL with its text
        status, detail = "FAIL", f"{type(e).__name__}: {e}"
    record(name, status, detail)


from kndkit import _native, netlink  # noqa: E402
from kndkit.errors import InvalidArgument, KndError, NetlinkError, NotAvailable  # noqa: E402


def err_detail(e):
    return {
        "type": type(e).__name__,
        "message": str(e),
        "op": getattr(e, "op", None),
        "step_index": getattr(e, "step_index", None),
        "errno_name": getattr(e, "errno_name", None),
        "rolled_back": getattr(e, "rolled_back", None),
    }


def c_available():
    ok = _native.rdma_available()
    return ("PASS" if ok else "FAIL"), {"rdma_available": ok}


def c_mode():
    mode = _native.rdma_get_netns_mode()
    try:  # kndkit.rdma needs pydantic; the native check stands without it
        from kndkit.rdma import netns_mode
    except ImportError as e:
        good = mode in ("shared", "exclusive")
        return ("PASS" if good else "FAIL"), {"native": mode, "kndkit.rdma": f"not importable: {e}"}
    fallback = netns_mode()
    good = mode in ("shared", "exclusive") and fallback == mode
    return ("PASS" if good else "FAIL"), {"native": mode, "kndkit.rdma.netns_mode": fallback}


def c_links():
    links = _native.rdma_links()
    sysfs = sorted(os.listdir("/sys/class/infiniband")) if os.path.isdir("/sys/class/infiniband") else []
    found = [rd.name for rd in _native.discover("/sys").rdma_devices]
    good = isinstance(links, list) and sorted(l["name"] for l in links) == sysfs == sorted(found)
    return ("PASS" if good else "FAIL"), {"rdma_links": links, "sysfs": sysfs, "discover": found}


def links_now():
    return sorted((l["name"], l["mtu"], l["up"]) for l in netlink.dump_links())


def c_move_ghost():
    before = links_now()
    target = _native.NetNs.current()
    try:
        _native.apply([{"op": "rdma_move", "device": GHOST, "netns": target}])
    except NotAvailable as e:
        return "FAIL", {"error": err_detail(e), "why": "expected the missing device to be named (InvalidArgument), not NotAvailable"}
    except KndError as e:
        named = GHOST in str(e)
        same = links_now() == before
        good = isinstance(e, (InvalidArgument, NetlinkError)) and named and same
        return ("PASS" if good else "FAIL"), {"error": err_detail(e), "names_device": named,
                                              "links_unchanged": same}
    return "FAIL", {"why": f"rdma_move of {GHOST} succeeded"}


def c_plan_rollback():
    ns_name = f"kndrdmachk{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns_name], capture_output=True).returncode != 0:
        return "SKIP", {"why": "cannot create a scratch netns with ip netns add"}
    try:
        ns = _native.NetNs.open(f"/run/netns/{ns_name}")
        steps = [
            netlink.veth("kchk0", "kchk1", ns=ns),
            {"op": "rdma_move", "device": GHOST, "netns": ns},
        ]
        err = None
        try:
            _native.apply(steps)
        except KndError as e:
            err = e
        left = sorted(l["name"] for l in netlink.dump_links(ns) if l["name"] != "lo")
        ns.close()
        if err is None:
            return "FAIL", {"why": "plan succeeded", "links": left}
        good = (
            isinstance(err, (InvalidArgument, NetlinkError))
            and not isinstance(err, NotAvailable)
            and GHOST in str(err)
            and left == []
        )
        return ("PASS" if good else "FAIL"), {"error": err_detail(err), "links_left": left}
    finally:
        subprocess.run(["ip", "netns", "del", ns_name], capture_output=True)


def c_source():
    from types import SimpleNamespace

    try:
        from kndkit.rdma import RdmaLinks
    except ImportError as e:
        return "SKIP", {"why": f"kndkit.rdma not importable: {e}"}

    topo = _native.discover("/sys")
    ctx = SimpleNamespace(discovery=topo, host_ns=None, driver_name="rdma.kndkit.dev",
                          options=SimpleNamespace(sysfs_root="/sys", dev_root="/dev"))
    got = [nd.name for nd in RdmaLinks().discover(ctx)]
    want_empty = not topo.rdma_devices
    good = (got == []) if want_empty else True
    return ("PASS" if good else "FAIL"), {"devices": got}


for name, fn in (
    ("rdma_available", c_available),
    ("netns_mode", c_mode),
    ("rdma_links_empty", c_links),
    ("apply_rdma_move_unknown_device", c_move_ghost),
    ("plan_rdma_move_rolls_back", c_plan_rollback),
    ("rdma_links_source_real_sys", c_source),
):
    run(name, fn)

summary = {
    "kernel": os.uname().release,
    "seconds": round(time.monotonic() - t0, 3),
    "failed": [r["check"] for r in results if r["status"] == "FAIL"],
    "results": results,
}
text = json.dumps(summary, indent=1, default=str)
print(text)
if OUTDIR:
    with open(os.path.join(OUTDIR, "rdma-plan-check.json"), "w") as f:
        f.write(text)
sys.exit(1 if summary["failed"] else 0)
PYEOF
