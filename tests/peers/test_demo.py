"""``kndkit demo`` end to end, as a user runs it (a subprocess of the CLI).

The demo builds a simulated node on the real peers, runs the bundled netdev
driver, and walks a pod through its life; it exits 0 only when every step
passed and the host NIC is back exactly as before.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from kndkit.testing.node import NETNS_DIR

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = (
    "peers (build on first use)",
    "simulated node",
    "start the netdev driver",
    "publish ResourceSlices",
    "allocate (scheduler's allocator)",
    "prepare (NodePrepareResources)",
    "pod start (RunPodSandbox)",
    "inside the pod",
    "CreateContainer",
    "pod stop (StopPodSandbox, RemovePodSandbox)",
    "NIC restored on the host",
    "unprepare (NodeUnprepareResources)",
)


def _demo(*args: str, **env_over: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), **env_over}
    return subprocess.run(
        [sys.executable, "-m", "kndkit.cli", "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def _demo_netns() -> set[str]:
    return {p.name for p in NETNS_DIR.glob("demo*")} if NETNS_DIR.is_dir() else set()


def test_demo_text() -> None:
    before = _demo_netns()
    proc = _demo()
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for step in STEPS:
        assert f"==> {step}" in out, step
    assert "FAILED" not in out
    # The pod's own view, rendered by ip inside its netns.
    assert "-br addr" in out and "net1" in out and "192.168.77.2/24" in out
    assert "10.77.0.0/16 via 192.168.77.1 dev net1" in out
    # Back on the host, with its route.
    assert "route 10.77.0.0/16 via 192.168.77.1 dev eth1" in out
    assert "links, addresses, routes, rules, neighbours identical" in out
    # Summary table with a duration per step.
    table = out[out.index("step ") :]
    for step in STEPS:
        assert step in table
    assert "total" in table and out.rstrip().endswith("demo: OK")
    assert _demo_netns() <= before


def test_demo_json() -> None:
    proc = _demo("--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert [s["name"] for s in report["steps"]] == list(STEPS)
    assert all(s["ok"] and s["seconds"] >= 0 for s in report["steps"])
    assert report["host_before"] == report["host_after"]
    net1 = next(lk for lk in report["pod"]["links"] if lk["name"] == "net1")
    assert net1["addresses"] == ["192.168.77.2/24"] and net1["mtu"] == 1500


def test_demo_failure_exits_nonzero_and_cleans_up() -> None:
    """A driver that is not ready in time (a 1 ms limit) fails the demo: exit 1,
    the failed step named, and nothing left behind."""
    before = _demo_netns()
    proc = _demo(KNDKIT_SIM_READY_TIMEOUT="0.001")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "==> start the netdev driver" in out
    assert "FAILED" in out and "did not manage" in out
    assert "==> publish ResourceSlices" not in out
    assert out.rstrip().endswith("demo: FAILED")
    assert _demo_netns() <= before
