"""Sustained pod churn through a simulated node (issue 6, section 7.2).

``N`` pods (default 200) one after the other on the macvlan and on the netdev
example driver (``kndkit run <driver>``, one at a time on one
:class:`kndkit.testing.SimulatedNode`): each pod is created with a one-device
claim, allocated by the scheduler's allocator, prepared through the kubelet
harness, started through the NRI runtime (RunPodSandbox), checked to hold its
interface, then stopped (StopPodSandbox, RemovePodSandbox), unprepared and
deleted. See :func:`benches.pod_start.churn`.

Reported (``extra_info`` kind ``churn``; ``benches/driver_report.py`` prints
it): pods/s over whole cycles (the simulated control plane - API writes, the
allocator as a subprocess - included) and over the driver's calls alone
(prepare, RunPodSandbox, StopPodSandbox, RemovePodSandbox, unprepare); the
p50/p99 of every phase; the driver's VmRSS before/after and sampled along, its
VmHWM. Asserted: nothing leaked - the simulated host exactly as before, no pod
namespace, claim or Pod left, no IPAM lease, the driver's
``kndkit_prepared_claims`` and ``kndkit_attached_pods`` back at 0. Nothing is
asserted about timings.

Knobs: ``KNDKIT_CHURN_PODS`` (default 200, scaled by
``KNDKIT_BENCH_ROUNDS_SCALE``); ``--benchmark-disable`` runs 10 pods per driver.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from benches import pod_start
from benches.conftest import rounds

PODS = int(os.environ.get("KNDKIT_CHURN_PODS", "200"))
SMOKE_PODS = 10
DRIVERS = ("macvlan", "netdev")


@pytest.fixture(scope="module")
def bench() -> Iterator[pod_start.PodStartBench]:
    with pod_start.PodStartBench.start((1,), random.Random()) as b:
        yield b


@pytest.mark.parametrize("driver", DRIVERS)
def test_churn(benchmark: Any, bench: pod_start.PodStartBench, driver: str) -> None:
    pods = SMOKE_PODS if benchmark.disabled else rounds(PODS)
    bench.setup(driver)
    box: dict[str, pod_start.ChurnResult] = {}

    def run() -> None:
        box["r"] = pod_start.churn(bench, driver, pods)

    benchmark.group = f"churn {driver}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    res = box["r"]
    summary = res.summary()
    benchmark.extra_info.update(kind="churn", cpus=os.cpu_count(), **summary)
    print()
    print("\n".join(pod_start.churn_table([summary])))
    assert bench.driver is not None
    assert "Traceback" not in bench.driver.logs(), bench.driver.logs(4000)
    assert not res.leaks, f"left behind after {pods} pods: {res.leaks}"
