"""Pod-start time kndkit adds inside RunPodSandbox (issue 6, section 7.1).

The netdev and macvlan example drivers, each run as ``kndkit run <driver>`` on a
simulated node, with 1 and 8 devices per pod, next to the raw-socket floor doing
the same netlink work on equivalent links in the same run; see
``benches/pod_start.py`` (also a CLI) for what a round is, what is timed and how
each round is checked.

pytest-benchmark's own statistics are the wall time of one whole interleaved
round (pods created, allocated, prepared, started, checked and deleted, floor
rounds included): a sanity figure only. The numbers that matter are in
``extra_info`` (kind ``pod_start``): per n, the Go-timed RunPodSandbox round
trips and the floor's durations, p50/p99, ratio and overhead;
``benches/driver_report.py`` prints them as a table. Nothing is asserted about
timings; every round is checked (links, addresses, routes in the pod) and after
each driver the simulated host must be exactly as before.

Knobs: rounds ``KNDKIT_POD_START_ROUNDS`` (default 20) scaled by
``KNDKIT_BENCH_ROUNDS_SCALE``, 2 warm-up rounds; ``--benchmark-disable`` runs
one round without warm-up (a correctness pass).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from benches import pod_start
from benches.conftest import rounds

ROUNDS = int(os.environ.get("KNDKIT_POD_START_ROUNDS", "20"))
WARMUP = 2


@pytest.fixture(scope="module")
def bench() -> Iterator[pod_start.PodStartBench]:
    with pod_start.PodStartBench.start(pod_start.COUNTS, random.Random()) as b:
        yield b


@pytest.mark.parametrize("driver", pod_start.DRIVERS)
def test_pod_start(benchmark: Any, bench: pod_start.PodStartBench, driver: str) -> None:
    smoke = bool(benchmark.disabled)
    n_rounds = 1 if smoke else rounds(ROUNDS)
    bench.setup(driver)
    before = bench.sim.snapshot()
    scen = {n: pod_start.Scenario(driver, n) for n in bench.counts}
    for _ in range(0 if smoke else WARMUP):
        bench.one_round(driver, scen, record=False)

    def one_round() -> None:
        bench.one_round(driver, scen)

    benchmark.group = f"pod_start {driver}"
    benchmark.pedantic(one_round, rounds=n_rounds, iterations=1)
    bench.leak_check(before)
    assert bench.driver is not None
    assert "Traceback" not in bench.driver.logs(), bench.driver.logs(4000)
    summaries = [scen[n].summary() for n in bench.counts]
    for s in summaries:
        for impl in pod_start.IMPLS:
            assert s["impls"][impl]["rounds"] == n_rounds, (impl, s)
    benchmark.extra_info.update(
        kind="pod_start",
        driver=driver,
        rounds=n_rounds,
        warmup=0 if smoke else WARMUP,
        cpus=os.cpu_count(),
        summaries=summaries,
    )
    print()
    print("\n".join(pod_start.table(summaries)))
