"""User-space cost per netlink request, counted in instructions (callgrind).

The tick-sampled split of ``ru_utime``/``ru_stime`` (``test_cpu.py``) is too
coarse to tell 0.6 µs from 1.2 µs per request on a shared machine. Valgrind
counts user-space instructions exactly, whatever else the machine does, and
never sees the kernel. This script:

1. counts the instructions of ``kndkit._native.apply`` (inclusive: dict
   extraction, validation, encoding, the send, ACK matching, the result) for
   plans of N address additions and N deletions on one link;
2. counts the instructions of ``kndkit._native.encode`` for N steps (the same
   extraction and encoding, no syscalls), and times ``encode`` natively with
   process CPU time, which for a syscall-free call is all user time;
3. converts (1) to time with the instructions-per-nanosecond rate of (2).

    python benches/instructions.py [--n 2000] [--json benches/results/instructions.json]

Needs root (a private namespace) and valgrind.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import sys, kndkit._native as n
mode, path, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = n.NetNs.open(path)
idx = [l["ifindex"] for l in n.dump_links(h) if l["name"] == "c0a"][0]
addrs = [f"10.99.{i // 250}.{i % 250 + 1}/32" for i in range(N)]
if mode == "apply":
    n.apply([{"op": "addr_add", "ns": h, "ifname": "c0a", "address": a} for a in addrs])
    n.apply([{"op": "addr_del", "ns": h, "ifname": "c0a", "address": a} for a in addrs])
else:
    n.encode([{"op": "addr_add", "ifindex": idx, "address": a} for a in addrs])
    n.encode([{"op": "addr_del", "ifindex": idx, "address": a} for a in addrs])
"""


def inclusive(out: str, func: str) -> int:
    """Inclusive instruction count of the function whose name contains ``func``."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", out], capture_output=True, text=True, check=True
    ).stdout
    for line in text.splitlines():
        if func in line:
            m = re.match(r"\s*([\d,]+)", line)
            if m:
                return int(m.group(1).replace(",", ""))
    raise SystemExit(f"{func} not found in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        raise SystemExit("valgrind is not installed")
    name = f"knb{os.getpid()}-cg"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "c0a", "type", "veth", "peer", "name", "c0b"],
            check=True,
        )
        path = f"/run/netns/{name}"
        counts: dict[str, int] = {}
        with tempfile.TemporaryDirectory() as tmp:
            child = pathlib.Path(tmp) / "child.py"
            child.write_text(CHILD)
            for mode in ("apply", "encode"):
                out = f"{tmp}/cg.{mode}"
                subprocess.run(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                     sys.executable, str(child), mode, path, str(args.n)],
                    check=True, capture_output=True,
                )  # fmt: skip
                counts[mode] = inclusive(out, f"py_netlink::__pyfunction_{mode}")
        import kndkit._native as n

        h = n.NetNs.open(path)
        idx = next(lk["ifindex"] for lk in n.dump_links(h) if lk["name"] == "c0a")
        steps = [
            {"op": "addr_add", "ifindex": idx, "address": f"10.99.{i // 250}.{i % 250 + 1}/32"}
            for i in range(args.n)
        ]
        samples = []
        for _ in range(200):
            t0 = time.process_time_ns()
            n.encode(steps)
            samples.append((time.process_time_ns() - t0) / args.n)
        h.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    requests = 2 * args.n
    apply_ipr = counts["apply"] / requests
    encode_ipr = counts["encode"] / requests
    encode_ns = statistics.median(samples)
    rate = encode_ipr / encode_ns  # instructions per ns in this kind of code
    result = {
        "requests": requests,
        "apply_instructions_per_request": round(apply_ipr),
        "encode_instructions_per_step": round(encode_ipr),
        "encode_ns_per_step_native": round(encode_ns, 1),
        "instructions_per_ns": round(rate, 2),
        "apply_user_us_per_request_estimate": round(apply_ipr / rate / 1000, 3),
        "target_us": 1.0,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
