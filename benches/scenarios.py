"""Set-up and check of each pod event, shared by the suites and ``ab.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benches import env, impls


@dataclass(frozen=True)
class Scenario:
    setup: Callable[[env.Pair, int], list[env.Iface]]  # fresh state for one round (untimed)
    verify: Callable[[env.Pair, list[env.Iface]], None]  # raises AssertionError when wrong


def _fresh_physical(pair: env.Pair, n: int) -> list[env.Iface]:
    env.clean_pair(pair)
    return env.make_physical(pair, n)


def _fresh_virtual(pair: env.Pair, n: int) -> list[env.Iface]:
    env.clean_pair(pair)
    return [env.Iface(i) for i in range(n)]


def _attached_physical(pair: env.Pair, n: int) -> list[env.Iface]:
    ifaces = _fresh_physical(pair, n)
    impls.attach_physical_raw(pair, ifaces)
    env.verify_attached(pair, ifaces)
    return ifaces


def _attached_virtual(pair: env.Pair, n: int) -> list[env.Iface]:
    ifaces = _fresh_virtual(pair, n)
    impls.attach_virtual_raw(pair, ifaces)
    env.verify_attached(pair, ifaces)
    return ifaces


def _pod_empty(pair: env.Pair, _ifaces: list[env.Iface]) -> None:
    env.verify_pod_empty(pair)


SCENARIOS = {
    "attach_physical": Scenario(_fresh_physical, env.verify_attached),
    "attach_virtual": Scenario(_fresh_virtual, env.verify_attached),
    "detach_physical": Scenario(_attached_physical, env.verify_restored),
    "detach_virtual": Scenario(_attached_virtual, _pod_empty),
}
