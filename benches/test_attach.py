"""(a) physical attach and (b) virtual attach, N = 1, 8, 64, four implementations.

(a) moves N stand-in NICs (veth ends created on the "host" namespace) into the
pod namespace, renames them, sets MTU and up, adds an IPv4 and an IPv6 address
and one route via a gateway per interface. The move costs the kernel ~16 ms per
link (an RCU barrier under RTNL), so (a) is kernel-bound; the target is
kndkit <= 1.03x the raw floor.

(b) creates N veths born inside the pod namespace (peer on the host), configured
the same way; targets: kndkit <= 1.10x the floor and >= 4x faster than pyroute2.
"""

from __future__ import annotations

import pytest

from benches import env, impls
from benches.conftest import label, require, rounds, run_rounds
from benches.scenarios import SCENARIOS

SIZES = (1, 8, 64)
PHYSICAL_ROUNDS = {1: 20, 8: 10, 64: 6}
VIRTUAL_ROUNDS = {1: 30, 8: 20, 64: 10}
CASES = [(n, impl) for n in SIZES for impl in impls.IMPLS]
IDS = [f"N{n}-{i}" for n, i in CASES]


def bench_event(benchmark, pair: env.Pair, event: str, n: int, impl: str, n_rounds: int) -> None:
    require(impl)
    label(benchmark, event, n, impl)
    sc = SCENARIOS[event]
    run_rounds(
        benchmark,
        impls.EVENTS[event][impl],
        setup=lambda: (pair, sc.setup(pair, n)),
        verify=sc.verify,
        cleanup=lambda p, _ifaces: env.clean_pair(p),
        rounds=rounds(n_rounds),
        warmup=1,
    )


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=IDS)
def test_attach_physical(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    bench_event(benchmark, pair, "attach_physical", n, impl, PHYSICAL_ROUNDS[n])


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=IDS)
def test_attach_virtual(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    bench_event(benchmark, pair, "attach_virtual", n, impl, VIRTUAL_ROUNDS[n])
