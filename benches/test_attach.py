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

SIZES = (1, 8, 64)
PHYSICAL_ROUNDS = {1: 20, 8: 10, 64: 6}
VIRTUAL_ROUNDS = {1: 30, 8: 20, 64: 10}
CASES = [(n, impl) for n in SIZES for impl in impls.IMPLS]


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=[f"N{n}-{i}" for n, i in CASES])
def test_attach_physical(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    require(impl)
    label(benchmark, "attach_physical", n, impl)

    def setup() -> tuple[env.Pair, list[env.Iface]]:
        env.clean_pair(pair)
        return pair, env.make_physical(pair, n)

    run_rounds(
        benchmark,
        impls.EVENTS["attach_physical"][impl],
        setup=setup,
        verify=env.verify_attached,
        cleanup=lambda p, _ifaces: env.clean_pair(p),
        rounds=rounds(PHYSICAL_ROUNDS[n]),
    )


@pytest.mark.netns
@pytest.mark.parametrize(("n", "impl"), CASES, ids=[f"N{n}-{i}" for n, i in CASES])
def test_attach_virtual(benchmark, pair: env.Pair, n: int, impl: str) -> None:
    require(impl)
    label(benchmark, "attach_virtual", n, impl)
    ifaces = [env.Iface(i) for i in range(n)]

    def setup() -> tuple[env.Pair, list[env.Iface]]:
        env.clean_pair(pair)
        return pair, ifaces

    run_rounds(
        benchmark,
        impls.EVENTS["attach_virtual"][impl],
        setup=setup,
        verify=env.verify_attached,
        cleanup=lambda p, _ifaces: env.clean_pair(p),
        rounds=rounds(VIRTUAL_ROUNDS[n]),
    )
