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

from benches import env, impls
from benches.conftest import label, require, rounds, run_rounds

SIZES = (1, 8, 64)
PHYSICAL_ROUNDS = {1: 20, 8: 10, 64: 6}
VIRTUAL_ROUNDS = {1: 20, 8: 15, 64: 8}
CASES = [(n, impl) for n in SIZES for impl in impls.IMPLS]


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=[f"N{n}-{i}" for n, i in CASES])
def test_detach_physical(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    require(impl)
    label(benchmark, "detach_physical", n, impl)

    def setup() -> tuple[env.Pair, list[env.Iface]]:
        env.clean_pair(pair)
        ifaces = env.make_physical(pair, n)
        impls.attach_physical_raw(pair, ifaces)
        env.verify_attached(pair, ifaces)
        return pair, ifaces

    run_rounds(
        benchmark,
        impls.EVENTS["detach_physical"][impl],
        setup=setup,
        verify=env.verify_restored,
        cleanup=lambda p, _ifaces: env.clean_pair(p),
        rounds=rounds(PHYSICAL_ROUNDS[n]),
    )


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=[f"N{n}-{i}" for n, i in CASES])
def test_detach_virtual(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    require(impl)
    label(benchmark, "detach_virtual", n, impl)
    ifaces = [env.Iface(i) for i in range(n)]

    def setup() -> tuple[env.Pair, list[env.Iface]]:
        env.clean_pair(pair)
        impls.attach_virtual_raw(pair, ifaces)
        env.verify_attached(pair, ifaces)
        return pair, ifaces

    run_rounds(
        benchmark,
        impls.EVENTS["detach_virtual"][impl],
        setup=setup,
        verify=lambda p, _ifaces: env.verify_pod_empty(p),
        cleanup=lambda p, _ifaces: env.clean_pair(p),
        rounds=rounds(VIRTUAL_ROUNDS[n]),
    )
