"""Memory of one ``kndkit run <driver>`` process on a simulated node (issue 6, section 7).

    python benches/rss_driver.py [--driver hello] [--pods 1] [--settle 5] [--churn N]
                                 [--env MALLOC_ARENA_MAX=2] [--set k=v] [--json]
    python benches/rss_driver.py --imports   # a fresh interpreter importing the driver's modules
    python benches/rss_driver.py --pid PID     # one reading of a running process

Starts a :class:`kndkit.testing.SimulatedNode` (two spare NICs), the driver
through ``python -m kndkit run`` (``--env`` entries are put in the driver's
environment, e.g. ``MALLOC_ARENA_MAX=2`` as the DaemonSet sets it), waits until
it is registered with the kubelet harness and its NRI plugin synchronized, lets
it settle (``--settle`` seconds: the first publication and start-up work done)
and reads ``/proc/<pid>/status``: ``VmRSS`` (resident now) and ``VmHWM`` (the
peak so far). Then ``--pods`` pods, one claim each, go through prepare and
RunPodSandbox, are read again (attached), stopped, removed and unprepared, and
read a last time; ``--churn N`` then runs N more pods through the same cycle one
at a time and reads again. ``--smaps`` adds the largest ``/proc/<pid>/smaps`` mappings by
resident size (anonymous heap vs shared libraries) to the idle reading.

Prints one line per phase (MiB) or, with ``--json``, a JSON object with the rows;
:func:`measure` returns the same rows for other benches (``benches/test_driver_rss.py``).
Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

# What `kndkit run <example>` imports before it serves (the example module is the
# driver spec; runner imports the rest lazily as the daemon starts).
DRIVER_IMPORTS = (
    "kndkit.cli",
    "kndkit.runner",
    "kndkit.driver",
    "kndkit.examples.hello",
)


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (kB) and ``Threads`` of a process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


def smaps_top(pid: int | str = "self", n: int = 12) -> list[tuple[str, float]]:
    """The ``n`` largest mappings of a process by resident size: (name, MiB);
    anonymous mappings are summed as ``[anon]``."""
    agg: collections.Counter[str] = collections.Counter()
    cur = "[anon]"
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                cur = parts[5] if len(parts) > 5 else "[anon]"
                if "site-packages/" in cur:
                    cur = cur.split("site-packages/", 1)[1]
            elif line.startswith("Rss:"):
                agg[cur] += int(line.split()[1])
    return [(k, v / 1024) for k, v in agg.most_common(n)]


def pss_kb(pid: int | str = "self") -> int:
    """Proportional set size (kB): shared library pages divided among their users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def row(phase: str, pid: int | str) -> dict[str, Any]:
    st = proc_status(pid)
    return {
        "phase": phase,
        "rss_mib": st["VmRSS"] / 1024,
        "hwm_mib": st["VmHWM"] / 1024,
        "anon_mib": st.get("RssAnon", 0) / 1024,
        "file_mib": st.get("RssFile", 0) / 1024,
        "pss_mib": pss_kb(pid) / 1024,
        "threads": st.get("Threads", 0),
    }


def imports_row(
    modules: Sequence[str] = DRIVER_IMPORTS, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A fresh interpreter importing ``modules``: its VmRSS/VmHWM and module count."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "st = {}\n"
        "for line in open('/proc/self/status'):\n"
        "    k, _, v = line.partition(':')\n"
        "    if k in ('VmRSS', 'VmHWM'): st[k] = int(v.split()[0])\n"
        "print(json.dumps({**st, 'modules': len(sys.modules),\n"
        "    'sync_client': sum(1 for k in sys.modules if k.startswith('kubernetes.client'))}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    d = json.loads(out.stdout)
    return {
        "phase": "imports",
        "rss_mib": d["VmRSS"] / 1024,
        "hwm_mib": d["VmHWM"] / 1024,
        "modules": d["modules"],
        "sync_client_modules": d["sync_client"],
    }


def measure(
    *,
    driver: str = "hello",
    pods: int = 1,
    settle_s: float = 5.0,
    env: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    smaps: bool = False,
    churn: int = 0,
) -> list[dict[str, Any]]:
    """Start a simulated node and ``driver`` on it; rows for idle, attached, after
    (and after ``churn`` more pods, one at a time, when asked)."""
    from kndkit.testing.node import ClaimSpec, SimulatedNode

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    rows: list[dict[str, Any]] = []
    try:
        with SimulatedNode.start(node_name=f"rss{os.getpid() % 10000}", nics=max(2, pods)) as sim:
            proc = sim.start_driver(driver, params=params)
            time.sleep(settle_s)
            idle = row("idle", proc.pid)
            if smaps:
                idle["smaps"] = smaps_top(proc.pid)
            rows.append(idle)
            started = [
                sim.new_pod(f"rss-{i}", claims=[ClaimSpec(driver=proc.name)]) for i in range(pods)
            ]
            for pod in started:
                sim.start_pod(pod)
            time.sleep(1.0)
            rows.append(row(f"{pods} pod(s) attached", proc.pid))
            for pod in started:
                sim.delete_pod(pod)
            time.sleep(1.0)
            rows.append(row("after delete", proc.pid))
            if churn:
                for i in range(churn):
                    pod = sim.new_pod(f"rss-c{i}", claims=[ClaimSpec(driver=proc.name)])
                    sim.start_pod(pod)
                    sim.delete_pod(pod)
                time.sleep(1.0)
                rows.append(row(f"after {churn} more pods", proc.pid))
            proc.terminate()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rows


def _print(rows: Sequence[dict[str, Any]]) -> None:
    for r in rows:
        extra = " ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k not in ("phase", "rss_mib", "hwm_mib", "smaps")
        )
        rss, hwm = r["rss_mib"], r["hwm_mib"]
        print(f"{r['phase']:>22}: VmRSS {rss:6.1f} MiB  VmHWM {hwm:6.1f} MiB  {extra}")
        for name, mib in r.get("smaps", ()):
            print(f"{'':>24}{mib:6.1f} {name}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--driver", default="hello")
    ap.add_argument("--pods", type=int, default=1)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--churn", type=int, default=0, help="more pods, one at a time, after")
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", dest="params")
    ap.add_argument("--smaps", action="store_true")
    ap.add_argument("--imports", action="store_true")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    env = dict(e.split("=", 1) for e in a.env)
    if a.pid is not None:
        rows = [row(f"pid {a.pid}", a.pid)]
        if a.smaps:
            rows[0]["smaps"] = smaps_top(a.pid)
    elif a.imports:
        rows = [imports_row(env=env)]
    else:
        params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in a.params)}
        rows = measure(
            driver=a.driver,
            pods=a.pods,
            settle_s=a.settle,
            env=env,
            params=params,
            smaps=a.smaps,
            churn=a.churn,
        )
    if a.json:
        print(json.dumps({"driver": a.driver, "env": env, "rows": rows}))
    else:
        _print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
