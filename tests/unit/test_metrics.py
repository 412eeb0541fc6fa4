"""kndkit.metrics: the metrics, timed(), and the HTTP endpoints scraped over real HTTP."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
import uuid
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from kndkit import metrics
from kndkit.errors import InvalidArgument, KndError
from kndkit.metrics import ObservabilityServer, timed


def _driver() -> str:
    return f"t{uuid.uuid4().hex[:10]}.kndkit.dev"


def _get(
    url: str, *, method: str = "GET", accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


async def aget(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_get, url, **kw)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


# --------------------------------------------------------------------------- the metrics


def test_metric_names_types_and_labels_are_the_contract() -> None:
    expected: dict[str, tuple[type, str, tuple[str, ...]]] = {
        "DRA_REQUESTS": (Counter, "kndkit_dra_requests", ("driver", "method", "result")),
        "DRA_LATENCY": (Histogram, "kndkit_dra_request_duration_seconds", ("driver", "method")),
        "NRI_REQUESTS": (Counter, "kndkit_nri_requests", ("driver", "event", "result")),
        "NRI_LATENCY": (Histogram, "kndkit_nri_request_duration_seconds", ("driver", "event")),
        "ATTACH_DURATION": (Histogram, "kndkit_attach_duration_seconds", ("driver", "op")),
        "PUBLISHED_DEVICES": (Gauge, "kndkit_published_devices", ("driver",)),
        "LAST_PUBLISH": (Gauge, "kndkit_last_publish_timestamp_seconds", ("driver",)),
        "ERRORS": (Counter, "kndkit_errors", ("driver", "component", "reason")),
        "PREPARED_CLAIMS": (Gauge, "kndkit_prepared_claims", ("driver",)),
        "ATTACHED_PODS": (Gauge, "kndkit_attached_pods", ("driver",)),
    }
    for attr, (cls, name, labels) in expected.items():
        m: Any = getattr(metrics, attr)
        assert isinstance(m, cls), attr
        assert vars(m)["_name"] == name, attr
        assert tuple(vars(m)["_labelnames"]) == labels, attr
    # All of them, and the process metrics, are in the one registry.
    names = {f.name for f in metrics.REGISTRY.collect()}
    assert {n for _, n, _ in expected.values()} <= names
    assert "process_resident_memory_bytes" in names


def test_timed_pair_counts_result_and_observes_latency() -> None:
    d = _driver()
    with timed((metrics.DRA_REQUESTS, metrics.DRA_LATENCY), driver=d, method="Prepare") as t:
        pass
    assert t.result == "ok" and t.duration_s >= 0
    with (
        pytest.raises(RuntimeError, match="boom"),
        timed((metrics.DRA_REQUESTS, metrics.DRA_LATENCY), driver=d, method="Prepare"),
    ):
        raise RuntimeError("boom")
    with timed((metrics.DRA_REQUESTS, metrics.DRA_LATENCY), driver=d, method="Prepare") as t:
        t.result = "partial"
    # A result the block chose is kept even when it raises afterwards.
    with (
        pytest.raises(ValueError),
        timed((metrics.DRA_REQUESTS, metrics.DRA_LATENCY), driver=d, method="Prepare") as t,
    ):
        t.result = "timeout"
        raise ValueError
    get = metrics.REGISTRY.get_sample_value
    labels = {"driver": d, "method": "Prepare"}
    assert get("kndkit_dra_requests_total", {**labels, "result": "ok"}) == 1
    assert get("kndkit_dra_requests_total", {**labels, "result": "error"}) == 1
    assert get("kndkit_dra_requests_total", {**labels, "result": "partial"}) == 1
    assert get("kndkit_dra_requests_total", {**labels, "result": "timeout"}) == 1
    assert get("kndkit_dra_request_duration_seconds_count", labels) == 4


async def test_timed_counts_a_cancelled_task() -> None:
    d = _driver()
    started = asyncio.Event()

    async def hook() -> None:
        with timed((metrics.NRI_REQUESTS, metrics.NRI_LATENCY), driver=d, event="RunPodSandbox"):
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hook())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    labels = {"driver": d, "event": "RunPodSandbox"}
    get = metrics.REGISTRY.get_sample_value
    assert get("kndkit_nri_requests_total", {**labels, "result": "cancelled"}) == 1
    assert get("kndkit_nri_request_duration_seconds_count", labels) == 1


def test_timed_histogram_alone() -> None:
    d = _driver()
    for _ in range(3):
        with timed(metrics.ATTACH_DURATION, driver=d, op="attach"):
            pass
    get = metrics.REGISTRY.get_sample_value
    assert get("kndkit_attach_duration_seconds_count", {"driver": d, "op": "attach"}) == 3
    assert get("kndkit_attach_duration_seconds_count", {"driver": d, "op": "detach"}) is None


def test_timed_refuses_bad_labels_before_the_block_runs() -> None:
    ran = []
    with (
        pytest.raises(InvalidArgument, match="method"),
        timed((metrics.DRA_REQUESTS, metrics.DRA_LATENCY), driver="x"),
    ):
        ran.append(1)
    with (
        pytest.raises(InvalidArgument, match=r"unknown label.*colour"),
        timed(metrics.ATTACH_DURATION, driver="x", op="attach", colour="red"),
    ):
        ran.append(1)
    with (
        pytest.raises(InvalidArgument, match="Histogram"),
        timed(cast(Any, metrics.PUBLISHED_DEVICES), driver="x"),
    ):
        ran.append(1)
    with (
        pytest.raises(InvalidArgument, match="pair"),
        timed(cast(Any, (metrics.DRA_LATENCY, metrics.DRA_LATENCY)), driver="x", method="m"),
    ):
        ran.append(1)
    assert ran == []
    # `result` is the counter's, set by timed(), not a label a caller passes.
    with (
        pytest.raises(InvalidArgument, match="result"),
        timed((metrics.NRI_REQUESTS, metrics.NRI_LATENCY), driver="x", event="e", result="ok"),
    ):
        ran.append(1)
    assert ran == []


# --------------------------------------------------------------------------- HTTP


async def test_metrics_scraped_over_http_on_an_ephemeral_port() -> None:
    d = _driver()
    metrics.PUBLISHED_DEVICES.labels(driver=d).set(7)
    metrics.ERRORS.labels(driver=d, component="publish", reason="Conflict").inc()
    with timed((metrics.NRI_REQUESTS, metrics.NRI_LATENCY), driver=d, event="RunPodSandbox"):
        pass
    srv = ObservabilityServer(0, host="127.0.0.1")
    async with srv:
        assert srv.port > 0
        status, headers, body = await aget(f"{srv.url}/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert headers["connection"] == "close"
        s = _samples(body.decode())
        assert s[("kndkit_published_devices", frozenset({("driver", d)}))] == 7
        key = {("driver", d), ("component", "publish"), ("reason", "Conflict")}
        assert s[("kndkit_errors_total", frozenset(key))] == 1
        key = {("driver", d), ("event", "RunPodSandbox"), ("result", "ok")}
        assert s[("kndkit_nri_requests_total", frozenset(key))] == 1
        key = {("driver", d), ("event", "RunPodSandbox")}
        assert s[("kndkit_nri_request_duration_seconds_count", frozenset(key))] == 1
        assert s[("process_resident_memory_bytes", frozenset())] > 0
        # A new value shows on the next scrape.
        metrics.PUBLISHED_DEVICES.labels(driver=d).set(9)
        _, _, body = await aget(f"{srv.url}/metrics?x=1")
        assert (
            _samples(body.decode())[("kndkit_published_devices", frozenset({("driver", d)}))] == 9
        )
        # OpenMetrics for a scraper that asks for it.
        status, headers, body = await aget(
            f"{srv.url}/metrics", accept="application/openmetrics-text; version=1.0.0"
        )
        assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
    # Stopped: nothing listens any more.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", srv.port), timeout=2):
        pass


async def test_readyz_and_healthz_follow_their_checks() -> None:
    state = {"ready": (False, "not registered with the kubelet yet"), "live": (True, "")}
    srv = ObservabilityServer(
        0, host="127.0.0.1", ready=lambda: state["ready"], live=lambda: state["live"]
    )
    await srv.start()
    try:
        status, _, body = await aget(f"{srv.url}/readyz")
        assert (status, body) == (503, b"not registered with the kubelet yet")
        status, _, body = await aget(f"{srv.url}/healthz")
        assert (status, body) == (200, b"ok")
        state["ready"] = (True, "registered, synchronized, published")
        status, _, body = await aget(f"{srv.url}/readyz")
        assert (status, body) == (200, b"ok")
        state["live"] = (False, "event loop stalled")
        status, _, body = await aget(f"{srv.url}/healthz")
        assert (status, body) == (503, b"event loop stalled")
        state["ready"] = (False, "")
        status, _, body = await aget(f"{srv.url}/readyz")
        assert (status, body) == (503, b"not ready")
    finally:
        await srv.stop()


async def test_a_failing_or_async_check() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("store closed")

    flag = asyncio.Event()

    async def ready() -> tuple[bool, str]:
        await asyncio.sleep(0)
        return (True, "") if flag.is_set() else (False, "waiting for NRI Synchronize")

    async with ObservabilityServer(0, host="127.0.0.1", live=broken, ready=ready) as srv:
        status, _, body = await aget(f"{srv.url}/healthz")
        assert status == 503 and b"RuntimeError: store closed" in body
        status, _, body = await aget(f"{srv.url}/readyz")
        assert (status, body) == (503, b"waiting for NRI Synchronize")
        flag.set()
        assert (await aget(f"{srv.url}/readyz"))[::2] == (200, b"ok")


async def test_methods_paths_and_head() -> None:
    async with ObservabilityServer(0, host="127.0.0.1") as srv:
        status, _, body = await aget(f"{srv.url}/nope")
        assert (status, body) == (404, b"not found\n")
        status, headers, _ = await aget(f"{srv.url}/metrics", method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, headers, body = await aget(f"{srv.url}/metrics", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
        status, headers, body = await aget(f"{srv.url}/healthz", method="HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == "2"


async def test_bad_requests_get_an_answer_and_do_not_block_others() -> None:
    async with ObservabilityServer(0, host="127.0.0.1") as srv:
        # A client that sends half a request and waits holds only its own connection.
        r1, w1 = await asyncio.open_connection("127.0.0.1", srv.port)
        w1.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        await w1.drain()
        status, _, body = await aget(f"{srv.url}/healthz")
        assert (status, body) == (200, b"ok")
        # Garbage gets a 400.
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        w2.write(b"HELLO\r\n\r\n")
        await w2.drain()
        assert (await r2.read()).startswith(b"HTTP/1.1 400 ")
        w2.close()
        # A head over the limit gets a 431.
        r3, w3 = await asyncio.open_connection("127.0.0.1", srv.port)
        w3.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
        await w3.drain()
        assert (await r3.read()).startswith(b"HTTP/1.1 431 ")
        w3.close()
    # stop() ended the half-open request too.
    assert await asyncio.wait_for(r1.read(), 5) == b""
    w1.close()


async def test_port_in_use_and_bad_port() -> None:
    with pytest.raises(InvalidArgument, match="70000"):
        ObservabilityServer(70000)
    async with ObservabilityServer(0, host="127.0.0.1") as first:
        second = ObservabilityServer(first.port, host="127.0.0.1")
        with pytest.raises(KndError, match=f"127.0.0.1:{first.port}"):
            await second.start()
        await second.stop()  # harmless when never started
        with pytest.raises(KndError, match="not started"):
            _ = second.port
    assert first.port > 0  # still known after stop()


async def test_a_registry_of_its_own() -> None:
    reg = CollectorRegistry()
    Gauge("only_here", "test gauge", registry=reg).set(3)
    async with ObservabilityServer(0, host="127.0.0.1", registry=reg) as srv:
        _, _, body = await aget(f"{srv.url}/metrics")
    assert _samples(body.decode()) == {("only_here", frozenset()): 3.0}
