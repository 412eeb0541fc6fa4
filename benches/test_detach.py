"""(c) detach: the physical attach of (a) undone with restore, and the virtual
attach of (b) undone by one group delete.

Physical detach moves every interface back to the host under its original name
with its original MTU and down (the kernel drops the pod's addresses and routes
with the move); it costs the kernel ~22 ms per link. Virtual detach deletes all
of the pod's veths with one RTM_DELLINK for their group. Each round's setup
attaches with the raw floor (untimed) so every implementation undoes the same
state.
"""

from __future__ import annotations

import pytest

from benches import env
from benches.test_attach import CASES, IDS, bench_event

PHYSICAL_ROUNDS = {1: 20, 8: 10, 64: 6}
VIRTUAL_ROUNDS = {1: 20, 8: 15, 64: 8}


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=IDS)
def test_detach_physical(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    bench_event(benchmark, pair, "detach_physical", n, impl, PHYSICAL_ROUNDS[n])


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=IDS)
def test_detach_virtual(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    bench_event(benchmark, pair, "detach_virtual", n, impl, VIRTUAL_ROUNDS[n])
