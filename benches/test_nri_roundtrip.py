"""NRI round trip runtime -> plugin -> runtime: kndkit's Python plugin against
the upstream Go stub, in the same run (issue 5, section 6).

Scenarios: a no-op RunPodSandbox, and a CreateContainer whose reply adds 4
Linux devices. Each implementation has its own ``nri-harness`` (containerd's
NRI adaptation v0.12.5) with exactly one plugin connected; kndkit's runs in a
separate interpreter (``benches/nri_kndkit_plugin.py``). See
``benches/nri_roundtrip.py`` for how blocks are run, interleaved and checked.

pytest-benchmark's own statistics here are the wall time of one round (one
block of calls per implementation, including the harness's JSON reply with
the durations): use them only as a sanity figure. The numbers that matter are
the per-call durations the harness measured in Go, summarised in
``extra_info``: per implementation ``p50_us``/``p99_us`` (median over rounds of
each round's percentile), ``mean_us``, pooled percentiles, and
``ratio`` kndkit/Go; ``benches/report.py`` prints them as a table. Nothing is
asserted about timings.

Knobs: ``KNDKIT_NRI_BENCH_CALLS`` (counted calls per implementation and round,
default 500), ``KNDKIT_NRI_BENCH_WARMUP`` (uncounted calls before each block,
default 100), rounds 4 scaled by ``KNDKIT_BENCH_ROUNDS_SCALE``,
``KNDKIT_NRI_BENCH_IMPLS`` (default ``kndkit,go``). With
``--benchmark-disable`` each scenario runs one round of 20 calls (+5 warm-up)
per implementation: a quick correctness pass.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from benches import nri_roundtrip
from benches.conftest import rounds
from benches.report import nri_table

IMPLS = tuple(i for i in os.environ.get("KNDKIT_NRI_BENCH_IMPLS", "kndkit,go").split(",") if i)
CALLS = int(os.environ.get("KNDKIT_NRI_BENCH_CALLS", "500"))
WARMUP = int(os.environ.get("KNDKIT_NRI_BENCH_WARMUP", "100"))
ROUNDS = 4
SMOKE_CALLS, SMOKE_WARMUP = 20, 5


@pytest.fixture(scope="module")
def nri_sides() -> Iterator[dict[str, nri_roundtrip.Side]]:
    # a missing kndkit.nri fails (like a missing native module), never skips
    with nri_roundtrip.sides(IMPLS) as s:
        yield s


@pytest.mark.parametrize("scenario", nri_roundtrip.SCENARIOS)
def test_nri_roundtrip(
    benchmark: Any, nri_sides: dict[str, nri_roundtrip.Side], scenario: str
) -> None:
    smoke = bool(benchmark.disabled)
    count = SMOKE_CALLS if smoke else CALLS
    warmup = SMOKE_WARMUP if smoke else WARMUP
    n_rounds = 1 if smoke else rounds(ROUNDS)
    rng = random.Random()
    col = nri_roundtrip.Collected(scenario)

    def one_round() -> None:
        col.run_round(nri_sides, count, warmup, rng)

    benchmark.group = f"nri_roundtrip {scenario}"
    benchmark.pedantic(one_round, rounds=n_rounds, iterations=1)
    summary = col.summary()
    assert set(summary["impls"]) == set(IMPLS)
    for impl, stats in summary["impls"].items():
        assert stats["calls"] == count * n_rounds, impl
    benchmark.extra_info.update(
        kind="nri_roundtrip",
        scenario=scenario,
        calls_per_round=count,
        warmup_per_round=warmup,
        rounds=n_rounds,
        nri=nri_roundtrip.NRI_VERSION,
        **{k: v for k, v in summary.items() if k != "scenario"},
    )
    print()
    print("\n".join(nri_table([summary])))
