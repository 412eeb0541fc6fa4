"""Proof tests for the harness's ``bench`` command and the Go bench plugin.

The NRI round-trip benchmark (benches/test_nri_roundtrip.py) trusts two things
checked here against the real adaptation: ``bench`` relays the event through
a connected plugin the number of times asked and reports one duration per
counted call, and the bench plugin on the upstream stub adds exactly the four
uverbs devices to every created container. Timings are never asserted.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from peers.nri_fixtures import (
    BENCH_DEVICES,
    NRIError,
    bench_stats,
    make_container,
    make_pod,
    percentile,
)

BOTH = pytest.mark.parametrize("nri_runtime", ["v0.12", "v0.11"], indirect=True)


@BOTH
def test_bench_relays_run_pod_sandbox_through_the_plugin(
    nri_runtime: Any, nri_bench_plugin_factory: Any
) -> None:
    plugin = nri_bench_plugin_factory(nri_runtime)
    assert nri_runtime.wait_plugins(1) == [plugin.qualified]

    res = nri_runtime.bench("run_pod_sandbox", make_pod("bench"), count=25, warmup=5)
    assert (res.event, res.count, res.warmup) == ("run_pod_sandbox", 25, 5)
    assert len(res.ns) == 25
    assert all(ns > 0 for ns in res.ns)
    assert res.live_before == res.live_after == (plugin.qualified,)
    assert res.differing_replies == 0
    assert plugin.proc.poll() is None, plugin.stderr_tail()


@BOTH
def test_bench_create_container_gets_the_four_devices_every_call(
    nri_runtime: Any, nri_bench_plugin_factory: Any
) -> None:
    nri_bench_plugin_factory(nri_runtime)
    nri_runtime.wait_plugins(1)

    pod = make_pod("bench")
    res = nri_runtime.bench("create_container", pod, make_container("app", pod), count=10, warmup=2)
    assert len(res.ns) == 10
    assert res.last_reply["adjust"]["linux"]["devices"] == list(BENCH_DEVICES)
    assert res.differing_replies == 0
    # the plain event command sees the same merged adjustment
    rsp = nri_runtime.create_container(pod, make_container("app", pod))
    assert rsp["adjust"]["linux"]["devices"] == list(BENCH_DEVICES)


def test_bench_without_a_plugin_shows_no_plugin_and_no_devices(nri_runtime: Any) -> None:
    """What a benchmark must reject: calls that never left the runtime."""
    pod = make_pod("alone")
    res = nri_runtime.bench("create_container", pod, make_container("app", pod), count=3, warmup=0)
    assert res.live_before == res.live_after == ()
    assert "devices" not in res.last_reply.get("adjust", {}).get("linux", {})


def test_bench_shows_a_plugin_that_left(nri_runtime_factory: Any, nri_plugin_factory: Any) -> None:
    """Calls after a plugin left skip it: the live list and the replies show it.

    netdev-injector with ``-env`` adds an env var to every created container,
    so a reply tells whether the plugin took part.
    """
    rt = nri_runtime_factory()
    plugin = nri_plugin_factory(rt, env={"FROM_PLUGIN": "1"})
    rt.wait_plugins(1)
    pod = make_pod("drop")
    ctr = make_container("app", pod)
    before = rt.bench("create_container", pod, ctr, count=3, warmup=0)
    assert before.differing_replies == 0
    assert {"key": "FROM_PLUGIN", "value": "1"} in before.last_reply["adjust"]["env"]
    plugin.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and rt.call("list_plugins")["live"]:
        time.sleep(0.05)
    after = rt.bench("create_container", pod, ctr, count=3, warmup=0)
    assert after.live_before == ()
    assert "env" not in after.last_reply.get("adjust", {})


def test_bench_bad_input_is_a_clear_error(nri_runtime: Any) -> None:
    pod = make_pod("bad")
    with pytest.raises(NRIError, match=r'unknown event "stop_pod_sandbox"'):
        nri_runtime.call("bench", event="stop_pod_sandbox", pod=pod)
    with pytest.raises(NRIError, match=r"count must be 1\.\.1000000"):
        nri_runtime.call("bench", event="run_pod_sandbox", pod=pod, count=0)
    with pytest.raises(NRIError, match=r'unknown field "podd"'):
        nri_runtime.call("bench", event="run_pod_sandbox", podd=pod)
    with pytest.raises(NRIError, match=r"bad RunPodSandboxRequest"):
        nri_runtime.call("bench", event="run_pod_sandbox", pod={"nope": 1})
    # still answering
    assert nri_runtime.bench("run_pod_sandbox", pod, count=1, warmup=0).count == 1


def test_percentiles_interpolate_between_ranks() -> None:
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(xs, 0.0) == 1.0
    assert percentile(xs, 0.5) == 3.0
    assert percentile(xs, 1.0) == 5.0
    assert percentile(xs, 0.99) == pytest.approx(4.96)
    stats = bench_stats([3000, 1000, 2000])
    assert stats["p50_us"] == 2.0 and stats["min_us"] == 1.0 and stats["max_us"] == 3.0
    assert stats["mean_us"] == 2.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
