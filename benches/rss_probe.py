"""Peak RSS of one physical attach, run in a fresh interpreter (used by test_rss).

    python benches/rss_probe.py {kndkit|kndkit_native|raw|baseline} SPEC.json

SPEC names the host and pod namespaces and the interfaces. ``kndkit`` does
``import kndkit._native`` (which runs the package's ``__init__`` first) and
applies the plan; ``kndkit_native`` loads the extension module alone (the Rust
path without the Python package around it); ``raw`` imports only the raw
floor (``benches/peers/rawnl.py``, loaded by path) and sends the same batches;
``baseline`` attaches nothing. Prints ``{"vmhwm_kb": ..., "vmrss_kb": ...}``.
"""

from __future__ import annotations

import json
import sys


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key.lower() + "_kb"] = int(rest.split()[0])
    return out


def _load_native(alone: bool):  # type: ignore[no-untyped-def]
    if not alone:
        import kndkit._native as native

        return native
    import glob
    import importlib.machinery
    import importlib.util

    pkg = importlib.util.find_spec("kndkit")  # finds the package without importing it
    assert pkg is not None and pkg.submodule_search_locations
    so = glob.glob(f"{next(iter(pkg.submodule_search_locations))}/_native*.so")[0]
    loader = importlib.machinery.ExtensionFileLoader("kndkit._native", so)
    spec = importlib.util.spec_from_loader("kndkit._native", loader)
    assert spec is not None
    native = importlib.util.module_from_spec(spec)
    loader.exec_module(native)
    assert "kndkit" not in sys.modules
    return native


def main() -> None:
    mode, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as fh:
        spec = json.load(fh)
    ifaces = spec["ifaces"]
    if mode in ("kndkit", "kndkit_native"):
        native = _load_native(mode == "kndkit_native")

        with native.NetNs.open(spec["host"]) as h, native.NetNs.open(spec["pod"]) as p:
            steps = [
                {
                    "op": "link_set",
                    "ns": h,
                    "ifname": f["host"],
                    "netns": p,
                    "name": f["pod"],
                    "mtu": f["mtu"],
                    "up": True,
                }
                for f in ifaces
            ]
            for f in ifaces:
                steps += [
                    {"op": "addr_add", "ns": p, "ifname": f["pod"], "address": f["v4"]},
                    {"op": "addr_add", "ns": p, "ifname": f["pod"], "address": f["v6"]},
                    {
                        "op": "route_add",
                        "ns": p,
                        "ifname": f["pod"],
                        "dst": f["route"],
                        "gateway": f["gateway"],
                    },
                ]
            native.apply(steps)
    elif mode == "raw":
        import importlib.util
        import os

        loc = spec["rawnl"]
        mod_spec = importlib.util.spec_from_file_location("rawnl", loc)
        assert mod_spec is not None and mod_spec.loader is not None
        rawnl = importlib.util.module_from_spec(mod_spec)
        sys.modules["rawnl"] = rawnl
        mod_spec.loader.exec_module(rawnl)
        hfd = os.open(spec["host"], os.O_RDONLY)
        pfd = os.open(spec["pod"], os.O_RDONLY)
        host, pod = rawnl.Batch(), rawnl.Batch()
        for f in ifaces:
            host.link_set(f["host_index"], netns_fd=pfd, name=f["pod"], mtu=f["mtu"], up=True)
        for f in ifaces:
            pod.addr_add(f["host_index"], f["v4"])
            pod.addr_add(f["host_index"], f["v6"])
            pod.route_add(f["route"], oif=f["host_index"], gateway=f["gateway"])
        rawnl.apply_batches([(hfd, host), (pfd, pod)])
    elif mode != "baseline":
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(_status()))


if __name__ == "__main__":
    main()
