"""Memory of a running driver daemon with 1,024 published devices (issue 6, section 7.3).

Each figure is ``VmRSS`` / ``VmHWM`` from ``/proc/<pid>/status`` of the process
itself (``kndkit run <driver>`` is exec'd by ``setpriv``, so the pid is the
Python interpreter's), on one :class:`kndkit.testing.SimulatedNode`:

* ``macvlan`` with ``slots=1024`` on one parent NIC: 1,024 devices discovered,
  held and published, idle (after the publication settled, ``SETTLE_S``); then
  the peak (VmHWM) and the RSS after ``KNDKIT_RSS_CHURN_PODS`` pods (default 50)
  went through prepare/RunPodSandbox/StopPodSandbox/unprepare on that same
  driver (:func:`benches.pod_start.churn`, leak-checked). This is the cheaper
  set-up: one NIC, the devices are slots.
* ``netdev`` on 1,024 veths in the host namespace (``--set filter=true``; peers
  in the fabric namespace, down): the same count of devices, each a real link the
  driver discovers over netlink and sysfs - the heavier, DraNet-like case.
* the Go reference driver (``tests/peers`` ``ref-driver --publish-devices 1024``,
  the upstream ``kubeletplugin`` helper publishing 1,024 devices through
  ``PublishResources``) against the same apiserver and kubelet harness: the
  anchor.
* fresh interpreters that only import: bare, kndkit, grpc, the whole generated
  kubernetes asyncio client, and what the driver process imports (kndkit's
  cli, runner, driver and example modules, which pull in the rest): the part
  of the RSS that is Python and its libraries before any work.
* the 1,024-slot macvlan driver started with ``MALLOC_ARENA_MAX=2``.

Target: kndkit's idle RSS with 1,024 devices < 60 MB. Reported in ``extra_info``
(kind ``driver_rss``, ``rows``; ``benches/driver_report.py`` prints them); no
assertion about the sizes. With ``--benchmark-disable`` the churn is 5 pods.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from benches import env, pod_start
from benches.conftest import rounds

DEVICES = 1024
CHURN_PODS = int(os.environ.get("KNDKIT_RSS_CHURN_PODS", "50"))
SETTLE_S = float(os.environ.get("KNDKIT_RSS_SETTLE_S", "5"))
TARGET_MB = 60.0
VETH_GROUP = 4244
# What ``kndkit run <example>`` has loaded once it serves: kndkit.driver imports
# the DRA, NRI, k8s (its own slim loading of the kubernetes client), plan and
# state modules.
IMPORTS = (
    "import kndkit.cli, kndkit.runner, kndkit.driver, kndkit.examples.macvlan, "
    "kndkit.examples.netdev"
)


@pytest.fixture(scope="module")
def bench() -> Iterator[pod_start.PodStartBench]:
    # counts=(DEVICES,): the macvlan driver gets DEVICES slots
    with pod_start.PodStartBench.start((DEVICES,), random.Random()) as b:
        yield b


def settled_status(pid: int, settle_s: float = SETTLE_S) -> dict[str, int]:
    """Wait ``settle_s`` (publication and start-up work done), then read status
    three times 0.5 s apart; the last reading, with the largest VmRSS seen."""
    time.sleep(settle_s)
    seen = []
    for _ in range(3):
        seen.append(pod_start.proc_status(pid))
        time.sleep(0.5)
    return {**seen[-1], "VmRSS_max": max(s["VmRSS"] for s in seen)}


def row(what: str, status: dict[str, int], *, anchor: bool = False, **extra: Any) -> dict[str, Any]:
    """One table row; ``anchor`` rows (not a kndkit driver) are not held to the target."""
    rss_mb = status["VmRSS"] * 1024 / 1e6
    return {
        "what": what,
        "rss_mib": status["VmRSS"] / 1024,
        "hwm_mib": status["VmHWM"] / 1024,
        "rss_mb": rss_mb,
        "meets_target": None if anchor else rss_mb < TARGET_MB,
        **extra,
    }


def record(benchmark: Any, rows: list[dict[str, Any]], **extra: Any) -> None:
    benchmark.extra_info.update(kind="driver_rss", target_mb=TARGET_MB, rows=rows, **extra)
    print()
    for r in rows:
        print(f"{r['what']}: VmRSS {r['rss_mib']:.1f} MiB, VmHWM {r['hwm_mib']:.1f} MiB")


def test_rss_macvlan_1024_idle_and_churn(benchmark: Any, bench: pod_start.PodStartBench) -> None:
    pods = 5 if benchmark.disabled else rounds(CHURN_PODS)
    # the same driver with 8 slots first: what does not grow with the devices
    bench.max_n = 8
    try:
        bench.setup("macvlan")
    finally:
        bench.max_n = DEVICES
    assert bench.driver is not None
    bench.sim.wait_devices(bench.driver.name, at_least=8)
    few = settled_status(bench.driver.pid)
    bench.setup("macvlan")
    assert bench.driver is not None
    names = bench.sim.wait_devices(bench.driver.name, at_least=DEVICES, timeout=120)
    assert len(names) == DEVICES
    idle = settled_status(bench.driver.pid)
    box: dict[str, pod_start.ChurnResult] = {}

    def run() -> None:
        box["r"] = pod_start.churn(bench, "macvlan", pods)

    benchmark.group = "driver_rss"
    benchmark.pedantic(run, rounds=1, iterations=1)
    res = box["r"]
    after = pod_start.proc_status(bench.driver.pid)
    rows = [
        row("kndkit macvlan, 8 slots published, idle", few),
        row(f"kndkit macvlan, {DEVICES} slots published, idle", idle),
        row(
            f"kndkit macvlan, {DEVICES} slots, after {pods} pods churned",
            after,
            peak_rss_sampled_mib=max(res.rss_kib) / 1024,
        ),
    ]
    record(benchmark, rows, churn=res.summary())
    assert not res.leaks, res.leaks
    assert "Traceback" not in bench.driver.logs(), bench.driver.logs(4000)


def test_rss_macvlan_1024_malloc_arena_max_2(
    benchmark: Any, bench: pod_start.PodStartBench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same 1,024-slot driver started with ``MALLOC_ARENA_MAX=2`` in its
    environment (glibc keeps at most 2 malloc arenas instead of 8 per core for
    the threads' allocations): what a DaemonSet setting it would see."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # inherited by the driver process
    box: dict[str, Any] = {}

    def start() -> None:
        bench.setup("macvlan")
        assert bench.driver is not None
        box["names"] = bench.sim.wait_devices(bench.driver.name, at_least=DEVICES, timeout=120)

    benchmark.group = "driver_rss"
    benchmark.pedantic(start, rounds=1, iterations=1)
    assert bench.driver is not None
    with open(f"/proc/{bench.driver.pid}/environ", "rb") as fh:
        assert b"MALLOC_ARENA_MAX=2" in fh.read().split(b"\0")
    idle = settled_status(bench.driver.pid)
    what = f"kndkit macvlan, {DEVICES} slots published, idle, MALLOC_ARENA_MAX=2"
    record(benchmark, [row(what, idle)])
    bench.stop_driver()


def test_rss_netdev_1024_veths(benchmark: Any, bench: pod_start.PodStartBench) -> None:
    sim = bench.sim
    bench.stop_driver()
    host, fabric = os.path.basename(sim.host_netns), os.path.basename(sim.fabric_netns)
    env.ip_batch(
        host,
        (
            f"link add kv{i} group {VETH_GROUP} type veth peer name kf{i} netns {fabric}"
            for i in range(DEVICES)
        ),
    )
    try:
        box: dict[str, Any] = {}

        def start() -> None:
            box["d"] = sim.start_driver("netdev", params={"filter": "true"})
            box["names"] = sim.wait_devices(box["d"].name, at_least=DEVICES, timeout=180)

        benchmark.group = "driver_rss"
        benchmark.pedantic(start, rounds=1, iterations=1)  # start + discover + publish
        drv = box["d"]
        bench.driver = drv  # stopped with the bench (or the next setup)
        idle = settled_status(drv.pid)
        n = len(box["names"])
        record(
            benchmark, [row(f"kndkit netdev, {n} devices (veths) published, idle", idle, devices=n)]
        )
        assert "Traceback" not in drv.logs(), drv.logs(4000)
    finally:
        bench.stop_driver()
        env.ip("-n", host, "link", "del", "group", str(VETH_GROUP), check=False)


def test_rss_go_ref_driver_1024(benchmark: Any, bench: pod_start.PodStartBench) -> None:
    from kndkit.testing import peers
    from kndkit.testing.kubelet import start_ref_driver

    sim = bench.sim
    bench.stop_driver()
    bins = peers.ensure(("kubelet",))
    box: dict[str, Any] = {}

    def start() -> None:
        box["d"] = start_ref_driver(
            bins,
            sim.kubelet,
            f"ref-rss{os.getpid() % 100000}.kndkit.test",
            kubeconfig=sim.kubeconfig,
            publish_devices=DEVICES,
        )
        box["ev"] = box["d"].wait_event("publishing", timeout=60)

    benchmark.group = "driver_rss"
    try:
        benchmark.pedantic(start, rounds=1, iterations=1)
        ref = box["d"]
        sim.wait_devices(ref.driver, at_least=DEVICES, timeout=120)
        idle = settled_status(ref.popen.pid)
        record(
            benchmark,
            [row(f"Go ref-driver (kubeletplugin), {DEVICES} published", idle, anchor=True)],
        )
    finally:
        if "d" in box:
            p = box["d"].popen
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(15)


def _import_status(code: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nprint(open('/proc/self/status').read())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = {}
    for line in out.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            status[key] = int(rest.split()[0])
    return status


def test_rss_python_imports(benchmark: Any) -> None:
    """Fresh interpreters: bare, with single heavy imports, with everything the
    driver imports (nothing done)."""
    cases = [
        ("python, bare", "pass"),
        ("python + kndkit (package, native core)", "import kndkit"),
        ("python + grpc", "import grpc"),
        (
            "python + kubernetes.aio.client (the whole generated client)",
            "import kubernetes.aio.client",
        ),
        ("python + the driver's imports (no work)", IMPORTS),
    ]
    box: dict[str, dict[str, int]] = {}

    def run() -> None:
        for what, code in cases:
            box[what] = _import_status(code)

    benchmark.group = "driver_rss"
    benchmark.pedantic(run, rounds=1, iterations=1)
    record(benchmark, [row(what, box[what], anchor=True) for what, _ in cases])
