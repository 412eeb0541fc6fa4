"""Fixtures shared by the benchmark suites.

Every round gets fresh links (created in its setup, never timed), is checked
with ``ip -j`` after it ran (a wrong result fails the benchmark), and is cleaned
up even when the implementation under test raised. ``--benchmark-disable``
runs each benchmark once, with the same checks: a quick correctness pass.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benches import env, impls

_counter = itertools.count()


def rounds(default: int) -> int:
    """``default`` scaled by ``KNDKIT_BENCH_ROUNDS_SCALE`` (at least 1)."""
    scale = float(os.environ.get("KNDKIT_BENCH_ROUNDS_SCALE", "1"))
    return max(1, round(default * scale))


@pytest.fixture(scope="session", autouse=True)
def _root_and_stale() -> None:
    if os.geteuid() != 0:
        pytest.skip("the benchmarks need root (network namespaces)")
    env.remove_stale()


@pytest.fixture(scope="module")
def pair() -> Iterator[env.Pair]:
    """One host/pod pair per module: deleting a namespace leaves the kernel
    cleaning it up in the background (under RTNL), which would bleed into the
    next benchmark's rounds. Every round's setup empties both namespaces."""
    with env.pair_of_namespaces(f"{next(_counter)}") as p:
        yield p


def require(impl: str) -> None:
    """Fails when kndkit's native module is missing (a broken build must not pass
    as a skip); skips pyroute2 only when it is not installed."""
    if impl == "kndkit" and impls.kndkit_native() is None:
        pytest.fail("kndkit._native is not importable or lacks apply: build it first")
    if impl == "pyroute2":
        pytest.importorskip("pyroute2")


def label(benchmark: Any, scenario: str, n: int, impl: str, **extra: Any) -> None:
    benchmark.group = f"{scenario} N={n}"
    benchmark.extra_info.update(scenario=scenario, n=n, impl=impl, **extra)


def run_rounds(
    benchmark: Any,
    target: Callable[..., Any],
    *,
    setup: Callable[[], tuple[Any, ...]],
    verify: Callable[..., None],
    cleanup: Callable[..., None],
    rounds: int,
    warmup: int = 0,
) -> Any:
    """``benchmark.pedantic`` with a setup per round, a check after every round,
    and a cleanup that also happens when the target fails or when pytest-benchmark
    is disabled (it then skips its own teardown). ``warmup`` rounds run the same
    way first and are not counted."""
    pending: list[tuple[Any, ...]] = []

    def _setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        while pending:
            cleanup(*pending.pop())
        args = setup()
        pending.append(args)
        return args, {}

    def _teardown(*args: Any) -> None:
        pending.clear()
        try:
            verify(*args)
        finally:
            cleanup(*args)

    ok = False
    try:
        result = benchmark.pedantic(
            target, setup=_setup, teardown=_teardown, rounds=rounds, warmup_rounds=warmup
        )
        ok = True
    finally:
        while pending:
            args = pending.pop()
            if ok:
                _teardown(*args)
            else:
                cleanup(*args)
    if isinstance(result, dict) and "sendmsg" in result:
        benchmark.extra_info["sendmsg"] = result["sendmsg"]
    elif isinstance(result, int):
        benchmark.extra_info["sendmsg"] = result
    return result
