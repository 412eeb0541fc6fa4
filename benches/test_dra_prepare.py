"""NodePrepareResources latency: kndkit's plugin vs the upstream Go helper (issue 4, section 7).

Both drivers run as their own processes, registered with one kubelet harness
(the kubelet's generated clients), against the real kube-apiserver; their
claims (1 and 8 devices, allocated by the real allocator from slices each
driver published) exist in the API. The harness's ``bench`` command calls
NodePrepareResources then NodeUnprepareResources on the same claim, ``count``
times, and times each gRPC call in Go (the JSON protocol is not in the
numbers). Every prepare is a full one: the unprepare before it removed the
claim from the driver's state, so each prepare GETs the claim, validates its
config, writes the state store (kndkit: two fsynced commits) and answers.

The Go driver's client-go rate limit is raised to 1000 QPS (its default, 5 QPS
with a burst of 10, would hold the loop to one GET per 200 ms); kndkit's
Python client has no client-side limit.

The claim GET is measured separately: kndkit reports it per claim
(``ClaimService`` timings); for the Go driver a gRPC interceptor notes when
the call arrived and the driver when the helper handed it the fetched claims.
``beyond_get`` = call time - GET, per call; the issue's target is kndkit's
p99 beyond the GET < 10 ms (printed, never asserted).

Implementations run interleaved (a block of calls each, random order per
round). Knobs: ``KNDKIT_DRA_BENCH_CALLS`` (default 200 per implementation and
round), ``KNDKIT_DRA_BENCH_WARMUP`` (20), rounds 3 scaled by
``KNDKIT_BENCH_ROUNDS_SCALE``. ``--benchmark-disable``: one round of 10 calls.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from benches.conftest import rounds
from benches.dra_common import (  # noqa: F401 - fixtures are registered by import
    Allocator,
    KndkitPlugin,
    KubeCluster,
    KubeletHarness,
    RefDriver,
    allocator,
    claim_ref,
    create_claim,
    create_device_class,
    delete_claim,
    delete_slices,
    kube_apiserver,
    kube_peers_built,
    kubelet_peer_bin,
    start_kndkit_plugin,
    start_ref_driver,
    summarize,
    unique_name,
    write_results,
)

CALLS = int(os.environ.get("KNDKIT_DRA_BENCH_CALLS", "200"))
WARMUP = int(os.environ.get("KNDKIT_DRA_BENCH_WARMUP", "20"))
ROUNDS = 3
SMOKE_CALLS, SMOKE_WARMUP = 10, 2
IMPLS = ("kndkit", "go")
SIZES = (1, 8)
CONFIG = {"interfaceName": "net1", "mtu": 9000}


@dataclass
class Side:
    impl: str
    driver: str
    claims: dict[int, dict[str, Any]]
    kndkit: KndkitPlugin | None = None
    go: RefDriver | None = None

    def lookups(self) -> list[dict[str, float]]:
        """Per prepare call since the last call, in ms: ``get`` (the claim GET)
        and, for kndkit, ``store``/``preparer``/``service`` (ClaimService total)."""
        if self.kndkit is not None:
            timings = self.kndkit.call("timings")["timings"]
            return [
                {
                    "get": t["get_s"] * 1e3,
                    "store": t["store_s"] * 1e3,
                    "preparer": t["prepare_s"] * 1e3,
                    "service": t["total_s"] * 1e3,
                }
                for t in timings
                if not t["cached"]
            ]
        assert self.go is not None
        return [{"get": n / 1e6} for n in self.go.lookup_timings()]


@dataclass
class Setup:
    harness: KubeletHarness
    sides: dict[str, Side]
    results: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def dra_sides(
    kube_apiserver: KubeCluster,  # noqa: F811
    kubelet_peer_bin: Any,  # noqa: F811
) -> Iterator[Setup]:
    alloc = Allocator(kube_apiserver.kubeconfig_admin)
    harness = KubeletHarness.start(kubelet_peer_bin)
    node = harness.node_name
    kube_apiserver.create_node(node)
    ns = unique_name("bench")
    kube_apiserver.ensure_namespace(ns)
    made: list[dict[str, Any]] = []
    classes: list[str] = []
    sides: dict[str, Side] = {}
    procs: list[Any] = []
    try:
        for impl in IMPLS:
            driver = f"{unique_name(impl)}.bench.kndkit.test"
            cls = create_device_class(kube_apiserver, driver)
            classes.append(cls)
            side = Side(impl, driver, {})
            if impl == "kndkit":
                side.kndkit = start_kndkit_plugin(
                    harness, driver=driver, kubeconfig=kube_apiserver.kubeconfig_admin
                )
                procs.append(side.kndkit)
                side.kndkit.call("publish", devices=16)
            else:
                side.go = start_ref_driver(
                    kubelet_peer_bin,
                    harness,
                    driver,
                    kubeconfig=kube_apiserver.kubeconfig_admin,
                    publish_devices=16,
                    timing=True,
                    kube_api_qps=1000,
                    kube_api_burst=1000,
                )
                procs.append(side.go)
            harness.wait_registered(driver)
            for n in SIZES:
                for _attempt in range(100):  # until the driver's slices are there
                    try:
                        c = create_claim(
                            kube_apiserver, alloc, node, ns, cls, n, CONFIG, driver=driver
                        )
                        break
                    except RuntimeError:
                        time.sleep(0.1)
                else:
                    raise RuntimeError(f"{impl}: no allocation for {n} devices")
                made.append(c)
                side.claims[n] = c
            sides[impl] = side
        setup = Setup(harness, sides)
        yield setup
        if setup.results:
            write_results("dra_prepare_summary", setup.results)
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
        harness.close()
        for c in made:
            delete_claim(kube_apiserver, c)
        for side in sides.values():
            delete_slices(kube_apiserver, side.driver)
        for cls in classes:
            with contextlib.suppress(Exception):
                kube_apiserver.delete(
                    {
                        "apiVersion": "resource.k8s.io/v1",
                        "kind": "DeviceClass",
                        "metadata": {"name": cls},
                    }
                )
        with contextlib.suppress(Exception):
            kube_apiserver.delete_node(node)


@pytest.mark.parametrize("devices", SIZES)
def test_dra_prepare_latency(benchmark: Any, dra_sides: Setup, devices: int) -> None:
    smoke = bool(benchmark.disabled)
    count = SMOKE_CALLS if smoke else CALLS
    warmup = SMOKE_WARMUP if smoke else WARMUP
    n_rounds = 1 if smoke else rounds(ROUNDS)
    rng = random.Random()
    got: dict[str, dict[str, list[float]]] = {
        impl: {"prepare": [], "unprepare": [], "get": [], "beyond_get": []} for impl in IMPLS
    }
    for key in ("store", "preparer", "service", "outside_service"):
        got["kndkit"][key] = []

    def one_round() -> None:
        order = list(IMPLS)
        rng.shuffle(order)
        for impl in order:
            side = dra_sides.sides[impl]
            side.lookups()  # forget earlier ones
            res = dra_sides.harness.bench(
                side.driver, [claim_ref(side.claims[devices])], count, warmup=warmup
            )
            prep = [n / 1e6 for n in res["prepare_ns"]]
            lookups = side.lookups()[warmup:]
            assert len(lookups) == count, (impl, len(lookups))
            g = got[impl]
            g["prepare"] += prep
            g["unprepare"] += [n / 1e6 for n in res["unprepare_ns"]]
            g["get"] += [x["get"] for x in lookups]
            g["beyond_get"] += [p - x["get"] for p, x in zip(prep, lookups, strict=True)]
            if impl == "kndkit":
                g["store"] += [x["store"] for x in lookups]
                g["preparer"] += [x["preparer"] for x in lookups]
                g["service"] += [x["service"] for x in lookups]
                g["outside_service"] += [
                    p - x["service"] for p, x in zip(prep, lookups, strict=True)
                ]

    benchmark.group = f"dra_prepare devices={devices}"
    benchmark.pedantic(one_round, rounds=n_rounds, iterations=1)
    summary = {impl: {k: summarize(v) for k, v in series.items()} for impl, series in got.items()}
    for impl in IMPLS:
        assert summary[impl]["prepare"]["n"] == count * n_rounds
    k, g = summary["kndkit"], summary["go"]
    benchmark.extra_info.update(
        kind="dra_prepare",
        devices=devices,
        calls_per_round=count,
        warmup_per_round=warmup,
        rounds=n_rounds,
        impls=summary,
        ratio_p50=round(k["prepare"]["p50_ms"] / g["prepare"]["p50_ms"], 2),
        ratio_p99=round(k["prepare"]["p99_ms"] / g["prepare"]["p99_ms"], 2),
        target="kndkit p99 beyond the GET < 10 ms",
        target_met=k["beyond_get"]["p99_ms"] < 10.0,
    )
    if not smoke:
        dra_sides.results[f"devices={devices}"] = dict(benchmark.extra_info)
