"""(e) user-space CPU per netlink request.

One round = one plan of 1,000 IPv4 address additions on a link, then one plan
of the 1,000 matching deletions (2,000 requests, two applies). ``ru_utime`` of
the whole process (every thread: kndkit works on its own threads) is summed
over all rounds and divided by the number of requests. Linux splits user and
system time by sampling at the tick, so the split is only precise over many
requests; ``cpu_us_per_request`` (user + system, ``CLOCK_PROCESS_CPUTIME_ID``)
is exact and includes the kernel's own work. The raw Python floor is measured
the same way. ``cpu_addr_native`` repeats kndkit's run with the plans built once
outside the measurement: the native path's own cost, which the target (< 1 µs
user time per request) is about; ``cpu_addr`` includes building the step dicts.

``apply_call``: 200 one-step plans (an MTU change) per round, for the fixed
cost of one native call (namespace thread, socket, ACK) against the floor's.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benches import env, impls
from benches.conftest import label, require, rounds, run_rounds
from benches.peers import rawnl

ADDRS = [f"10.99.{i // 250}.{i % 250 + 1}/32" for i in range(1000)]
LINK = "c0a"
CALLS = 200


@pytest.fixture(scope="module")
def cpu_ns() -> Iterator[tuple[env.Netns, int]]:
    ns = env.Netns.create("cpu")
    try:
        env.ip_batch(ns.name, [f"link add {LINK} group {env.HOST_GROUP} type veth peer name c0b"])
        index = json.loads(env.ip("-j", "-n", ns.name, "link", "show", "dev", LINK))[0]["ifindex"]
        yield ns, index
    finally:
        ns.delete()


def _usage() -> tuple[float, float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, time.process_time()


class Meter:
    """Sums CPU deltas over rounds."""

    def __init__(self) -> None:
        self.user = self.system = self.cpu = 0.0
        self.requests = 0

    def wrap(self, fn: Callable[[], Any], requests: int) -> Callable[[], Any]:
        def run() -> Any:
            u0, s0, c0 = _usage()
            out = fn()
            u1, s1, c1 = _usage()
            self.user += u1 - u0
            self.system += s1 - s0
            self.cpu += c1 - c0
            self.requests += requests
            return out

        return run

    def report(self, benchmark: Any) -> None:
        if not self.requests:
            return
        per = 1e6 / self.requests
        benchmark.extra_info.update(
            requests=self.requests,
            utime_us_per_request=round(self.user * per, 3),
            stime_us_per_request=round(self.system * per, 3),
            cpu_us_per_request=round(self.cpu * per, 3),
        )


def _no_test_addresses(ns: env.Netns) -> None:
    out = json.loads(env.ip("-j", "-n", ns.name, "addr", "show", "dev", LINK))
    left = [a["local"] for a in out[0].get("addr_info", []) if a["local"].startswith("10.99.")]
    assert not left, f"{len(left)} addresses left behind"


@pytest.mark.netns
@pytest.mark.parametrize("impl", ["kndkit", "raw"])
def test_cpu_per_request(benchmark, cpu_ns: tuple[env.Netns, int], impl: str) -> None:
    require(impl)
    ns, index = cpu_ns
    label(benchmark, "cpu_addr", len(ADDRS) * 2, impl)
    meter = Meter()

    if impl == "kndkit":
        native = impls.kndkit_native()

        def work() -> Any:
            with native.NetNs.open(ns.path) as h:
                add = [{"op": "addr_add", "ns": h, "ifname": LINK, "address": a} for a in ADDRS]
                dele = [{"op": "addr_del", "ns": h, "ifname": LINK, "address": a} for a in ADDRS]
                r1 = native.apply(add)
                r2 = native.apply(dele)
            assert r1["steps"] == r2["steps"] == len(ADDRS)
            return {"sendmsg": r1["sendmsg"] + r2["sendmsg"]}

    else:

        def work() -> Any:
            fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                add, dele = rawnl.Batch(), rawnl.Batch()
                for a in ADDRS:
                    add.addr_add(index, a)
                    dele.addr_del(index, a)
                return rawnl.apply_batches([(fd, add)]) + rawnl.apply_batches([(fd, dele)])
            finally:
                os.close(fd)

    run_rounds(
        benchmark,
        meter.wrap(work, 2 * len(ADDRS)),
        setup=lambda: (),
        verify=lambda: _no_test_addresses(ns),
        cleanup=lambda: None,
        rounds=rounds(20),
    )
    meter.report(benchmark)


@pytest.mark.netns
def test_cpu_per_request_native_path(benchmark, cpu_ns: tuple[env.Netns, int]) -> None:
    """The same 2,000 requests with the plans built once, outside the measurement:
    what the native path itself costs per request (dict extraction, validation,
    encoding, ACK matching), without the caller's Python that builds the dicts."""
    require("kndkit")
    ns, _ = cpu_ns
    label(benchmark, "cpu_addr_native", len(ADDRS) * 2, "kndkit")
    meter = Meter()
    native = impls.kndkit_native()
    h = native.NetNs.open(ns.path)
    add = [{"op": "addr_add", "ns": h, "ifname": LINK, "address": a} for a in ADDRS]
    dele = [{"op": "addr_del", "ns": h, "ifname": LINK, "address": a} for a in ADDRS]

    def work() -> Any:
        r1 = native.apply(add)
        r2 = native.apply(dele)
        return {"sendmsg": r1["sendmsg"] + r2["sendmsg"]}

    try:
        run_rounds(
            benchmark,
            meter.wrap(work, 2 * len(ADDRS)),
            setup=lambda: (),
            verify=lambda: _no_test_addresses(ns),
            cleanup=lambda: None,
            rounds=rounds(20),
        )
    finally:
        h.close()
    meter.report(benchmark)


@pytest.mark.netns
@pytest.mark.parametrize("impl", ["kndkit", "raw"])
def test_cpu_per_call(benchmark, cpu_ns: tuple[env.Netns, int], impl: str) -> None:
    require(impl)
    ns, index = cpu_ns
    label(benchmark, "apply_call", CALLS, impl)
    meter = Meter()
    mtus = [1400 + (i % 2) * 100 for i in range(CALLS)]  # ends on 1500

    if impl == "kndkit":
        native = impls.kndkit_native()

        def work() -> Any:
            with native.NetNs.open(ns.path) as h:
                for m in mtus:
                    native.apply([{"op": "link_set", "ns": h, "ifname": LINK, "mtu": m}])

    else:

        def work() -> Any:
            fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for m in mtus:
                    b = rawnl.Batch()
                    b.link_set(index, mtu=m)
                    rawnl.apply_batches([(fd, b)])
            finally:
                os.close(fd)

    def verify() -> None:
        out = json.loads(env.ip("-j", "-n", ns.name, "link", "show", "dev", LINK))
        assert out[0]["mtu"] == mtus[-1]
        env.ip("-n", ns.name, "link", "set", "dev", LINK, "mtu", "1000")

    env.ip("-n", ns.name, "link", "set", "dev", LINK, "mtu", "1000")
    run_rounds(
        benchmark,
        meter.wrap(work, CALLS),
        setup=lambda: (),
        verify=verify,
        cleanup=lambda: None,
        rounds=rounds(5),
    )
    meter.report(benchmark)
