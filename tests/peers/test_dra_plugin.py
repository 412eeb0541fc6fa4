"""kndkit.dra.KubeletPlugin against the kubelet harness (upstream k8s.io/kubelet clients).

The handlers here are small stand-ins written in the test: what is under test is the
layer between the kubelet and a :class:`~kndkit.dra.DRAHandler` (registration, wire
conversion, per-claim errors, serialisation, health streaming, socket hygiene). The
harness is driven through blocking calls, so every one runs on a thread
(``asyncio.to_thread``) while the plugin serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest

from kndkit.dra import (
    ClaimRef,
    DeviceHealth,
    HealthStatus,
    KubeletPlugin,
    PreparedDevice,
    PrepareResult,
    UnprepareResult,
)
from kndkit.errors import InvalidArgument
from peers.kubelet_fixtures import (
    HEALTH_V1,
    HEALTH_V1ALPHA1,
    V1,
    V1BETA1,
    KubeletHarness,
    KubeletHarnessError,
    unique_name,
)

HarnessFactory = Callable[..., KubeletHarness]


class Handler:
    """Records calls; answers one device per claim unless told otherwise."""

    def __init__(self, label: str = "h", delay: float = 0.0) -> None:
        self.label = label
        self.delay = delay
        self.calls: list[tuple[str, tuple[ClaimRef, ...]]] = []
        self.active = 0
        self.peak = 0
        self.errors: dict[str, str] = {}  # uid -> per-claim error to return
        self.omit: set[str] = set()  # uids to leave out of the result
        self.raise_: Exception | None = None

    async def _enter(self, what: str, claims: Sequence[ClaimRef]) -> None:
        self.calls.append((what, tuple(claims)))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.raise_ is not None:
                raise self.raise_
        finally:
            self.active -= 1

    async def prepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, PrepareResult]:
        await self._enter("prepare", claims)
        out: dict[str, PrepareResult] = {}
        for c in claims:
            if c.uid in self.omit:
                continue
            if c.uid in self.errors:
                out[c.uid] = PrepareResult(error=self.errors[c.uid])
                continue
            out[c.uid] = PrepareResult(
                devices=(
                    PreparedDevice(
                        pool_name="pool-a",
                        device_name=f"{self.label}-{c.name}",
                        request_names=("nic",),
                        cdi_device_ids=(f"kndkit.test/net={c.uid}",),
                        share_id="share-1",
                    ),
                )
            )
        return out

    async def unprepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, UnprepareResult]:
        await self._enter("unprepare", claims)
        return {
            c.uid: UnprepareResult(error=self.errors.get(c.uid, ""))
            for c in claims
            if c.uid not in self.omit
        }


class Health:
    """A health source yielding ``count`` lists, ``interval`` apart."""

    def __init__(self, lists: Sequence[Sequence[DeviceHealth]], interval: float = 0.05) -> None:
        self.lists = lists
        self.interval = interval
        self.opened = 0
        self.closed = 0

    async def watch_health(self) -> AsyncIterator[Sequence[DeviceHealth]]:
        self.opened += 1
        try:
            i = 0
            while True:
                yield self.lists[min(i, len(self.lists) - 1)]
                i += 1
                await asyncio.sleep(self.interval)
        finally:
            self.closed += 1


def driver_name() -> str:
    return f"{unique_name('p')}.kndkit.test"


def new_plugin(
    h: KubeletHarness, handler: Any, name: str | None = None, **kw: Any
) -> KubeletPlugin:
    name = name or driver_name()
    kw.setdefault("plugin_dir", str(h.plugins_dir / name))
    return KubeletPlugin(
        name, handler, registry_dir=str(h.registry_dir), node_name=h.node_name, **kw
    )


def claims(*names: str) -> list[dict[str, str]]:
    return [{"namespace": "ns1", "name": n, "uid": f"uid-{n}"} for n in names]


async def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


async def wait_registered(p: KubeletPlugin, h: KubeletHarness) -> dict[str, Any]:
    await asyncio.wait_for(p.registered.wait(), 30)
    plugin: dict[str, Any] = await call(h.wait_registered, p.driver_name)
    return plugin


def mode(path: str | pathlib.Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ------------------------------------------------------------------ registration


async def test_registers_v1_and_serves_prepare_unprepare(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler()
    p = new_plugin(h, handler)
    async with p:
        plugin = await wait_registered(p, h)
        assert plugin["version"] == V1
        assert plugin["endpoint"] == p.endpoint
        assert plugin["socket"] == p.registration_socket
        assert plugin["supported_versions"] == [V1, V1BETA1]
        assert plugin["health"] is False
        assert p.registration_error is None
        ev = h.wait_event("registered", driver=p.driver_name)
        assert ev["version"] == V1

        r = await call(h.prepare, p.driver_name, claims("a", "b"))
        assert r["api"] == V1
        assert r["response"] == {
            "claims": {
                f"uid-{n}": {
                    "devices": [
                        {
                            "request_names": ["nic"],
                            "pool_name": "pool-a",
                            "device_name": f"h-{n}",
                            "cdi_device_ids": [f"kndkit.test/net=uid-{n}"],
                            "share_id": "share-1",
                        }
                    ],
                    "error": "",
                }
                for n in ("a", "b")
            }
        }
        assert handler.calls == [
            ("prepare", (ClaimRef("ns1", "a", "uid-a"), ClaimRef("ns1", "b", "uid-b")))
        ]
        r = await call(h.unprepare, p.driver_name, claims("a", "b"))
        assert r["response"] == {"claims": {"uid-a": {"error": ""}, "uid-b": {"error": ""}}}

        # the same plugin through v1beta1: same handler, no share_id on that wire
        r = await call(h.prepare, p.driver_name, claims("c"), api="v1beta1")
        assert r["api"] == V1BETA1
        dev = r["response"]["claims"]["uid-c"]["devices"][0]
        assert dev["device_name"] == "h-c"
        assert "share_id" not in dev
        r = await call(h.unprepare, p.driver_name, claims("c"), api="v1beta1")
        assert r["response"] == {"claims": {"uid-c": {"error": ""}}}
    assert [w for w, _ in handler.calls] == ["prepare", "unprepare", "prepare", "unprepare"]


async def test_v1beta1_only_kubelet(kubelet_harness_factory: HarnessFactory) -> None:
    h = kubelet_harness_factory(force_v1beta1=True)
    handler = Handler()
    p = new_plugin(h, handler)
    async with p:
        plugin = await wait_registered(p, h)
        assert plugin["version"] == V1BETA1
        r = await call(h.prepare, p.driver_name, claims("a"))
        assert r["api"] == V1BETA1
        assert r["response"]["claims"]["uid-a"]["devices"][0]["pool_name"] == "pool-a"
        r = await call(h.unprepare, p.driver_name, claims("a"))
        assert r["response"] == {"claims": {"uid-a": {"error": ""}}}


async def test_v1beta1_only_plugin_serves_no_v1(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    p = new_plugin(h, Handler(), versions=("v1beta1",))
    async with p:
        plugin = await wait_registered(p, h)
        assert plugin["supported_versions"] == [V1BETA1]
        assert plugin["version"] == V1BETA1
        with pytest.raises(KubeletHarnessError) as e:
            await call(h.prepare, p.driver_name, claims("a"), api="v1")
        assert e.value.code == "unsupported"


async def test_refused_registration_is_reported(kubelet_harness_factory: HarnessFactory) -> None:
    h = kubelet_harness_factory(supported_versions=[V1])
    p = new_plugin(h, Handler(), versions=("v1beta1",))
    async with p:
        ev = await call(h.wait_event, "registration_failed", driver=p.driver_name)
        assert ev["stage"] == "validate"
        async with asyncio.timeout(30):
            while p.registration_error is None:
                await asyncio.sleep(0.02)
        assert "none of the plugin's services" in p.registration_error
        assert not p.registered.is_set()


async def test_stop_deregisters_and_removes_sockets(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    p = new_plugin(h, Handler())
    await p.start()
    try:
        await wait_registered(p, h)
        assert os.path.exists(p.endpoint) and os.path.exists(p.registration_socket)
    finally:
        await p.stop()
    await call(h.wait_deregistered, p.driver_name)
    ev = h.wait_event("deregistered", driver=p.driver_name)
    assert ev["reason"] == "socket removed"
    assert not os.path.lexists(p.endpoint)
    assert not os.path.lexists(p.registration_socket)
    assert os.listdir(p.plugin_dir) == []  # no hidden socket left either
    assert os.listdir(h.registry_dir) == []
    assert not p.registered.is_set()
    await p.stop()  # twice is fine
    # and it can serve again
    async with p:
        await wait_registered(p, h)


async def test_concurrent_stop_calls(kubelet_harness: KubeletHarness) -> None:
    p = new_plugin(kubelet_harness, Handler())
    await p.start()
    await asyncio.gather(p.stop(), p.stop(), p.stop())
    assert not os.path.lexists(p.endpoint)


# ------------------------------------------------------------------ per-claim errors


async def test_per_claim_error_leaves_other_claims_alone(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler()
    handler.errors["uid-bad"] = "no such network: red"
    p = new_plugin(h, handler)
    async with p:
        await wait_registered(p, h)
        for api in ("v1", "v1beta1"):
            r = await call(h.prepare, p.driver_name, claims("good", "bad"), api=api)
            got = r["response"]["claims"]
            assert got["uid-bad"] == {"devices": [], "error": "no such network: red"}
            assert got["uid-good"]["error"] == ""
            assert len(got["uid-good"]["devices"]) == 1
            r = await call(h.unprepare, p.driver_name, claims("good", "bad"), api=api)
            assert r["response"]["claims"] == {
                "uid-good": {"error": ""},
                "uid-bad": {"error": "no such network: red"},
            }


async def test_handler_exception_fails_each_claim(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler()
    handler.raise_ = RuntimeError("database on fire")
    p = new_plugin(h, handler)
    async with p:
        await wait_registered(p, h)
        for api in ("v1", "v1beta1"):
            r = await call(h.prepare, p.driver_name, claims("a", "b", "c"), api=api)
            got = r["response"]["claims"]
            assert sorted(got) == ["uid-a", "uid-b", "uid-c"]
            for entry in got.values():
                assert entry["devices"] == []
                assert "RuntimeError: database on fire" in entry["error"]
                assert "NodePrepareResources" in entry["error"]
                assert "request " in entry["error"]
            r = await call(h.unprepare, p.driver_name, claims("a", "b"), api=api)
            for entry in r["response"]["claims"].values():
                assert "RuntimeError: database on fire" in entry["error"]
        # the plugin is still fine afterwards
        handler.raise_ = None
        r = await call(h.prepare, p.driver_name, claims("a"))
        assert r["response"]["claims"]["uid-a"]["error"] == ""


async def test_claim_missing_from_handler_result(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler()
    handler.omit.add("uid-lost")
    p = new_plugin(h, handler)
    async with p:
        await wait_registered(p, h)
        r = await call(h.prepare, p.driver_name, claims("kept", "lost"))
        got = r["response"]["claims"]
        assert got["uid-kept"]["error"] == ""
        assert "no result for claim ns1/lost" in got["uid-lost"]["error"]
        assert "uid-lost" in got["uid-lost"]["error"]
        r = await call(h.unprepare, p.driver_name, claims("kept", "lost"))
        assert r["response"]["claims"]["uid-kept"] == {"error": ""}
        assert "no result for claim ns1/lost" in r["response"]["claims"]["uid-lost"]["error"]


async def test_wrong_result_types_become_claim_errors(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness

    class Bad(Handler):
        async def prepare_resource_claims(self, claims: Sequence[ClaimRef]) -> Any:
            return {
                claims[0].uid: UnprepareResult(),  # wrong kind
                claims[1].uid: PrepareResult(devices=(PreparedDevice("p", 42),)),  # type: ignore[arg-type]
                "not-asked": PrepareResult(),
            }

        async def unprepare_resource_claims(self, claims: Sequence[ClaimRef]) -> Any:
            return ["not", "a", "mapping"]

    p = new_plugin(h, Bad())
    async with p:
        await wait_registered(p, h)
        r = await call(h.prepare, p.driver_name, claims("a", "b"))
        got = r["response"]["claims"]
        assert sorted(got) == ["uid-a", "uid-b"]
        assert "UnprepareResult" in got["uid-a"]["error"]
        assert "invalid result" in got["uid-b"]["error"]
        assert got["uid-b"]["devices"] == []
        r = await call(h.unprepare, p.driver_name, claims("a"))
        assert "not a mapping" in r["response"]["claims"]["uid-a"]["error"]


async def test_duplicate_uids_are_handled_once(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler()
    p = new_plugin(h, handler)
    async with p:
        await wait_registered(p, h)
        r = await call(h.prepare, p.driver_name, claims("a", "a", "b"))
        assert sorted(r["response"]["claims"]) == ["uid-a", "uid-b"]
        assert handler.calls[-1] == (
            "prepare",
            (ClaimRef("ns1", "a", "uid-a"), ClaimRef("ns1", "b", "uid-b")),
        )


# ------------------------------------------------------------------ serialisation


async def test_concurrent_calls_never_overlap(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler(delay=0.2)
    p = new_plugin(h, handler)
    async with p:
        await wait_registered(p, h)
        results = await asyncio.gather(
            call(h.prepare, p.driver_name, claims("a")),
            call(h.prepare, p.driver_name, claims("b")),
            call(h.unprepare, p.driver_name, claims("c")),
            call(h.prepare, p.driver_name, claims("d"), api="v1beta1"),
        )
    assert all(not e["error"] for r in results for e in r["response"]["claims"].values())
    assert len(handler.calls) == 4
    assert handler.peak == 1


async def test_concurrent_calls_never_overlap_with_flock(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler(delay=0.1)
    p = new_plugin(h, handler, rolling_update_uid="u1")
    async with p:
        await wait_registered(p, h)
        await asyncio.gather(*(call(h.prepare, p.driver_name, claims(f"c{i}")) for i in range(4)))
        assert os.path.exists(os.path.join(p.plugin_dir, "serialize.lock"))
    assert len(handler.calls) == 4
    assert handler.peak == 1


# ------------------------------------------------------------------ kubelet restart


async def test_kubelet_restart_reregisters(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    handler = Handler()
    p = new_plugin(h, handler)
    async with p:
        await wait_registered(p, h)
        p.registered.clear()  # see it set again by the new "kubelet"
        await call(h.restart)
        plugin = await wait_registered(p, h)
        assert plugin["endpoint"] == p.endpoint
        r = await call(h.prepare, p.driver_name, claims("after"))
        assert r["response"]["claims"]["uid-after"]["error"] == ""


# ------------------------------------------------------------------ rolling update


async def test_rolling_update_two_instances(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    name = driver_name()
    data = str(h.plugins_dir / name)
    old, new = Handler("old"), Handler("new")
    p_old = new_plugin(h, old, name, plugin_dir=data, rolling_update_uid="pod-uid-old")
    p_new = new_plugin(h, new, name, plugin_dir=data, rolling_update_uid="pod-uid-new")
    assert p_old.endpoint == os.path.join(data, "dra-pod-uid-old.sock")
    assert p_old.registration_socket == str(h.registry_dir / f"{name}-pod-uid-old-reg.sock")
    await p_old.start()
    try:
        await wait_registered(p_old, h)
        r = await call(h.prepare, name, claims("one"))
        assert r["endpoint"] == p_old.endpoint
        await p_new.start()
        try:
            await asyncio.wait_for(p_new.registered.wait(), 30)
            await call(h.wait_event, "registered", driver=name, endpoint=p_new.endpoint)
            endpoints = [x["endpoint"] for x in await call(h.list_plugins) if x["driver"] == name]
            assert endpoints == [p_old.endpoint, p_new.endpoint]
            r = await call(h.prepare, name, claims("two"))
            assert r["endpoint"] == p_new.endpoint
            assert r["response"]["claims"]["uid-two"]["devices"][0]["device_name"] == "new-two"
        finally:
            await p_new.stop()
        ev = await call(h.wait_event, "deregistered", driver=name, endpoint=p_new.endpoint)
        assert ev["socket"] == p_new.registration_socket
        # only the stopped instance is gone; its sockets too, the other's remain
        endpoints = [x["endpoint"] for x in await call(h.list_plugins) if x["driver"] == name]
        assert endpoints == [p_old.endpoint]
        assert not os.path.lexists(p_new.endpoint)
        assert os.path.exists(p_old.endpoint) and os.path.exists(p_old.registration_socket)
        r = await call(h.unprepare, name, claims("two"))
        assert r["endpoint"] == p_old.endpoint
        assert r["response"]["claims"]["uid-two"] == {"error": ""}
    finally:
        await p_old.stop()
    await call(h.wait_deregistered, name)
    assert [w for w, _ in old.calls] == ["prepare", "unprepare"]
    assert [w for w, _ in new.calls] == ["prepare"]


# ------------------------------------------------------------------ socket hygiene


def stale_socket(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # leaves the file behind, as a crashed plugin would


def dial(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    finally:
        s.close()


async def test_stale_sockets_are_replaced(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    p = new_plugin(h, Handler())
    os.makedirs(p.plugin_dir)
    stale_socket(p.endpoint)
    stale_socket(p.registration_socket)
    for path in (p.endpoint, p.registration_socket):
        with pytest.raises(ConnectionRefusedError):  # nothing behind them
            dial(path)
    async with p:
        await wait_registered(p, h)
        dial(p.endpoint)
        dial(p.registration_socket)
        r = await call(h.prepare, p.driver_name, claims("a"))
        assert r["response"]["claims"]["uid-a"]["error"] == ""


@pytest.mark.parametrize("which", ["endpoint", "registration_socket"])
async def test_refuses_to_remove_a_non_socket(kubelet_harness: KubeletHarness, which: str) -> None:
    h = kubelet_harness
    p = new_plugin(h, Handler())
    os.makedirs(p.plugin_dir)
    path = getattr(p, which)
    pathlib.Path(path).write_text("precious")
    with pytest.raises(InvalidArgument, match="not a unix socket; refusing to remove it"):
        await p.start()
    assert pathlib.Path(path).read_text() == "precious"
    # nothing half-started is left: no socket of ours, nothing hidden
    assert sorted(os.listdir(p.plugin_dir)) == (["dra.sock"] if which == "endpoint" else [])
    assert sorted(os.listdir(h.registry_dir)) == (
        [os.path.basename(path)] if which == "registration_socket" else []
    )
    assert not p.serving


async def test_socket_and_directory_modes(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    p = new_plugin(h, Handler(), rolling_update_uid="x1")
    os.makedirs(p.plugin_dir, mode=0o755)
    os.chmod(p.plugin_dir, 0o755)
    async with p:
        await wait_registered(p, h)
        assert mode(p.endpoint) == 0o600
        assert mode(p.registration_socket) == 0o600
        assert stat.S_ISSOCK(os.lstat(p.endpoint).st_mode)
        assert mode(p.plugin_dir) == 0o700
        await call(h.prepare, p.driver_name, claims("a"))
        assert mode(os.path.join(p.plugin_dir, "serialize.lock")) == 0o600
    # a directory the plugin creates itself
    p2 = new_plugin(h, Handler(), plugin_dir=str(h.plugins_dir / "new" / "deeper"))
    async with p2:
        assert mode(p2.plugin_dir) == 0o700


async def test_dra_socket_serves_before_registration_socket_appears(
    kubelet_harness: KubeletHarness,
) -> None:
    h = kubelet_harness
    p = new_plugin(h, Handler())
    seen: dict[str, Any] = {}
    stop = threading.Event()

    def watch() -> None:
        # poll for the registration socket; the instant it exists, dial the DRA socket
        while not stop.is_set():
            if os.path.exists(p.registration_socket):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(p.endpoint)
                    seen["dra"] = "accepting"
                except OSError as e:
                    seen["dra"] = repr(e)
                finally:
                    s.close()
                return
            time.sleep(0.0005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        async with p:
            await wait_registered(p, h)
    finally:
        stop.set()
        t.join(5)
    assert seen.get("dra") == "accepting"


# ------------------------------------------------------------------ health


def health_list(n: int, *, message: str = "") -> list[DeviceHealth]:
    return [
        DeviceHealth(
            "pool-a",
            f"dev-{i}",
            HealthStatus.UNHEALTHY if i == 1 else HealthStatus.HEALTHY,
            1_700_000_000 + i,
            check_timeout_seconds=45,
            message=message,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("api", [HEALTH_V1, HEALTH_V1ALPHA1])
async def test_health_stream(kubelet_harness_factory: HarnessFactory, api: str) -> None:
    h = kubelet_harness_factory(health_versions=[HEALTH_V1, HEALTH_V1ALPHA1])
    source = Health([health_list(2), health_list(3, message="x" * 5000)])
    p = new_plugin(h, Handler(), health=source)
    async with p:
        plugin = await wait_registered(p, h)
        assert plugin["health"] is True
        assert plugin["health_version"] == HEALTH_V1
        assert plugin["supported_versions"] == [V1, V1BETA1, HEALTH_V1, HEALTH_V1ALPHA1]
        r = await call(h.watch_health, p.driver_name, 3, api=api.split(".", maxsplit=1)[0])
        assert r["api"] == api
        first, second, third = r["messages"]
        assert first == {
            "devices": [
                {
                    "device": {"pool_name": "pool-a", "device_name": "dev-0"},
                    "health": "HEALTHY",
                    "last_updated_time": "1700000000",
                    "health_check_timeout_seconds": "45",
                    "message": "",
                },
                {
                    "device": {"pool_name": "pool-a", "device_name": "dev-1"},
                    "health": "UNHEALTHY",
                    "last_updated_time": "1700000001",
                    "health_check_timeout_seconds": "45",
                    "message": "",
                },
            ]
        }
        # each message is the complete list; long messages are cut to 1024 characters
        assert len(second["devices"]) == 3
        assert all(len(d["message"]) == 1024 for d in second["devices"])
        assert second == third
        # the stream the harness closed has closed the source's iterator
        async with asyncio.timeout(10):
            while source.closed < 1:
                await asyncio.sleep(0.02)


async def test_health_stream_ends_on_stop(kubelet_harness_factory: HarnessFactory) -> None:
    h = kubelet_harness_factory(health_versions=[HEALTH_V1])
    source = Health([health_list(1)], interval=0.05)
    p = new_plugin(h, Handler(), health=source)
    await p.start()
    try:
        await wait_registered(p, h)
        watcher = asyncio.ensure_future(
            call(h.request, "watch_health", driver=p.driver_name, count=1_000_000, timeout_ms=60000)
        )
        async with asyncio.timeout(10):
            while source.opened < 1:
                await asyncio.sleep(0.02)
    finally:
        t0 = time.monotonic()
        await p.stop(grace=30)
        stop_s = time.monotonic() - t0
    assert stop_s < 25, "an open health stream held stop() for the whole grace period"
    reply = await asyncio.wait_for(watcher, 30)
    assert reply["ok"] is False
    assert source.closed == 1


async def test_no_health_source_no_health_service(kubelet_harness_factory: HarnessFactory) -> None:
    h = kubelet_harness_factory(health_versions=[HEALTH_V1, HEALTH_V1ALPHA1])
    p = new_plugin(h, Handler())
    async with p:
        plugin = await wait_registered(p, h)
        assert plugin["health"] is False
        with pytest.raises(KubeletHarnessError):
            await call(h.watch_health, p.driver_name, 1, timeout=5)


# ------------------------------------------------------------------ SIGTERM, logs


async def test_sigterm_handler_task_deregisters(kubelet_harness: KubeletHarness) -> None:
    h = kubelet_harness
    p = new_plugin(h, Handler())
    loop = asyncio.get_running_loop()
    stopped: list[asyncio.Task[None]] = []
    loop.add_signal_handler(signal.SIGTERM, lambda: stopped.append(loop.create_task(p.stop())))
    try:
        await p.start()
        await wait_registered(p, h)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(30):
            while not stopped:
                await asyncio.sleep(0.01)
            await stopped[0]
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await p.stop()
    await call(h.wait_deregistered, p.driver_name)
    assert not os.path.lexists(p.endpoint)
    assert not os.path.lexists(p.registration_socket)


async def test_each_call_is_logged_with_a_request_id(
    kubelet_harness: KubeletHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = kubelet_harness
    handler = Handler()
    handler.errors["uid-b"] = "bad config"
    p = new_plugin(h, handler)
    caplog.set_level(logging.INFO, logger="kndkit.dra")
    async with p:
        await wait_registered(p, h)
        await call(h.prepare, p.driver_name, claims("a", "b"))
    lines = [r.getMessage() for r in caplog.records if r.name == "kndkit.dra"]
    start = [m for m in lines if "NodePrepareResources for 2 claim(s)" in m]
    assert len(start) == 1
    rid = start[0].split()[1].rstrip(":")
    assert "ns1/a (uid-a)" in start[0] and "ns1/b (uid-b)" in start[0]
    mine = [m for m in lines if m.startswith(f"request {rid}:")]
    assert any("claim ns1/b (uid-b): bad config" in m for m in mine)
    assert any(" done in " in m and "ms: 2 claim(s), 1 error(s)" in m for m in mine)


class BrokenHealth:
    """One good list (with an out-of-range status), then an exception."""

    async def watch_health(self) -> AsyncIterator[Sequence[DeviceHealth]]:
        yield [DeviceHealth("pool-a", "dev-0", 7, 1_700_000_000)]  # type: ignore[arg-type]
        raise RuntimeError("sensor unplugged")


async def test_health_source_failure_ends_the_stream_with_an_error(
    kubelet_harness_factory: HarnessFactory,
) -> None:
    h = kubelet_harness_factory(health_versions=[HEALTH_V1])
    p = new_plugin(h, Handler(), health=BrokenHealth())
    async with p:
        await wait_registered(p, h)
        r = await call(h.watch_health, p.driver_name, 1)
        # a status the wire does not know is reported as UNKNOWN
        assert r["messages"][0]["devices"][0]["health"] == "UNKNOWN"
        with pytest.raises(KubeletHarnessError) as e:
            await call(h.watch_health, p.driver_name, 2)
        assert e.value.code == "grpc_internal"
        assert "RuntimeError: sensor unplugged" in e.value.message
        # the plugin keeps serving
        r = await call(h.prepare, p.driver_name, claims("a"))
        assert r["response"]["claims"]["uid-a"]["error"] == ""
