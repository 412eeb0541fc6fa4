"""kndkit's NRI transport against containerd's own NRI adaptation (v0.12.5 and v0.11.0).

A minimal plugin is driven by hand here: kndkit's multiplexer and ttrpc layer
plus the NRI protobuf messages, with Configure/Synchronize answered by test
code. The runtime side is the upstream adaptation in ``nri-harness``
(python/kndkit/testing/peers/nri). These tests pin what the module documentation of
``kndkit.nri.mux`` states about the Go side: the 4096-byte split rule, the
framing the runtime accepts and refuses, concurrent calls, and what happens
when the runtime closes the connection.

The harness client (``NRIRuntime.call``) blocks, so every call to it runs in a
thread (``asyncio.to_thread``) while the plugin runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kndkit._proto import nri_v1alpha1_pb2 as api
from kndkit._proto import ttrpc_pb2
from kndkit.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux, MuxClosed, MuxConn
from kndkit.nri.ttrpc import (
    Code,
    Handler,
    RequestContext,
    TtrpcClient,
    TtrpcError,
    TtrpcServer,
    encode_message,
)
from peers.nri_fixtures import NRIRuntime, make_container, make_pod

RUNTIME_SVC = "nri.pkg.api.v1alpha1.Runtime"
PLUGIN_SVC = "nri.pkg.api.v1alpha1.Plugin"
BOTH = pytest.mark.parametrize("nri_runtime", ["v0.12", "v0.11"], indirect=True)
VERSIONS = pytest.mark.parametrize("version", ["v0.12", "v0.11"])
ROOT = Path(__file__).resolve().parents[2]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def rt_call(rt: NRIRuntime, cmd: str, **fields: Any) -> Any:
    return await asyncio.to_thread(rt.call, cmd, **fields)


async def rt_try(rt: NRIRuntime, cmd: str, **fields: Any) -> tuple[bool, Any]:
    return await asyncio.to_thread(rt.try_call, cmd, **fields)


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def pad_to(body: bytes, total: int) -> bytes:
    """``body`` plus an unknown length-delimited field (number 999) so that the
    ttrpc message (10-byte header + body) is exactly ``total`` bytes. Protobuf
    decoders skip unknown fields, so the message means the same."""
    need = total - 10 - len(body)
    for n in range(need, -1, -1):
        pad = varint((999 << 3) | 2) + varint(n) + bytes(n)
        if len(pad) == need:
            return body + pad
    raise ValueError(f"cannot pad to {total}")


class HandPlugin:
    """The smallest NRI plugin: kndkit's transport + the NRI messages, nothing else."""

    def __init__(
        self, mux: Mux, handlers: dict[str, Handler] | None = None, **server_opts: Any
    ) -> None:
        self.mux = mux
        self.configure_requests: list[api.ConfigureRequest] = []
        self.sync_requests: list[api.SynchronizeRequest] = []
        self.events = 0
        table: dict[tuple[str, str], Handler] = {
            (PLUGIN_SVC, "Configure"): self._configure,
            (PLUGIN_SVC, "Synchronize"): self._synchronize,
        }
        for method, handler in (handlers or {}).items():
            table[(PLUGIN_SVC, method)] = handler
        self.server = TtrpcServer(mux.open(PLUGIN_SERVICE_CONN), table, **server_opts)
        self.client = TtrpcClient(mux.open(RUNTIME_SERVICE_CONN))
        self.serve_task = asyncio.create_task(self.server.serve())

    async def _configure(self, payload: bytes, ctx: RequestContext) -> bytes:
        self.configure_requests.append(api.ConfigureRequest.FromString(payload))
        return api.ConfigureResponse(events=self.events).SerializeToString()

    async def _synchronize(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = api.SynchronizeRequest.FromString(payload)
        self.sync_requests.append(req)
        return api.SynchronizeResponse(more=req.more).SerializeToString()

    async def register(self, name: str = "kndkit-transport", idx: str = "10") -> None:
        req = api.RegisterPluginRequest(plugin_name=name, plugin_idx=idx)
        reply = await self.client.call(
            RUNTIME_SVC, "RegisterPlugin", req.SerializeToString(), timeout=10
        )
        api.Empty.FromString(reply)

    async def close(self) -> None:
        await self.client.close()
        await self.mux.close()
        async with asyncio.timeout(10):
            await self.serve_task


@pytest.fixture
async def hand_plugin() -> AsyncIterator[Callable[..., Any]]:
    made: list[HandPlugin] = []

    async def make(rt: NRIRuntime, handlers: dict[str, Handler] | None = None) -> HandPlugin:
        plugin = HandPlugin(await Mux.connect(str(rt.socket)), handlers)
        made.append(plugin)
        return plugin

    yield make
    for plugin in made:
        await plugin.close()


# --- registration ---------------------------------------------------------------


@BOTH
async def test_register_configure_synchronize(
    nri_runtime: NRIRuntime, hand_plugin: Callable[..., Any]
) -> None:
    pods = [make_pod("a", namespace="ns1"), make_pod("b", namespace="ns2")]
    ctrs = [make_container("app", pods[0])]
    await asyncio.to_thread(nri_runtime.set_state, pods, ctrs)
    plugin = await hand_plugin(nri_runtime)
    await plugin.register()
    live = await asyncio.to_thread(nri_runtime.wait_plugins, 1)
    assert live == ["10-kndkit-transport"]
    [cfg] = plugin.configure_requests
    assert cfg.runtime_name
    assert cfg.registration_timeout == 10_000  # the fixture's 10 s, in ms
    assert cfg.request_timeout == 10_000
    [sync] = plugin.sync_requests
    assert sorted(p.name for p in sync.pods) == ["a", "b"]
    assert [c.name for c in sync.containers] == ["app"]
    assert not sync.more


# --- the split rule ---------------------------------------------------------------

# (name, ttrpc message size incl. header, framing, accepted by the runtime)
SPLIT_CASES = [
    ("4096-one-frame", 4096, "single", True),
    ("4097-one-frame", 4097, "single", False),
    ("4097-split", 4097, "write", True),
    ("10000-one-frame", 10000, "single", False),
    ("10000-split", 10000, "write", True),
    ("10000-1000-byte-frames", 10000, "chunks:1000", True),
    ("20000-4096-then-5000-byte-frames", 20000, "tail:5000", True),
    ("20000-5000-byte-frames", 20000, "chunks:5000", False),
    ("3MiB-split", 3 << 20, "write", True),
]


def send_framed(mux: Mux, conn: MuxConn, msg: bytes, framing: str) -> None:
    """Send ``msg`` framed as ``framing`` says; a runtime that already closed the
    connection over an earlier frame ends the sending quietly (the test then
    sees the close)."""
    with contextlib.suppress(MuxClosed):
        _send_framed(mux, conn, msg, framing)


def _send_framed(mux: Mux, conn: MuxConn, msg: bytes, framing: str) -> None:
    if framing == "write":
        conn.write(msg)  # kndkit's own framing: the rule under test
    elif framing == "single":
        mux.write_frame(conn.id, msg)
    elif framing.startswith("chunks:"):
        n = int(framing.split(":")[1])
        for i in range(0, len(msg), n):
            mux.write_frame(conn.id, msg[i : i + n])
    elif framing.startswith("tail:"):
        n = int(framing.split(":")[1])
        mux.write_frame(conn.id, msg[:4096])
        for i in range(4096, len(msg), n):
            mux.write_frame(conn.id, msg[i : i + n])
    else:
        raise AssertionError(framing)


@VERSIONS
@pytest.mark.parametrize(("case", "total", "framing", "accepted"), SPLIT_CASES)
async def test_runtime_reads_a_configure_reply_framed_so(
    nri_runtime_factory: Callable[..., NRIRuntime],
    version: str,
    case: str,
    total: int,
    framing: str,
    accepted: bool,
) -> None:
    """The runtime's ttrpc client (connection 1) reading a reply of ``total`` bytes."""
    rt = nri_runtime_factory(version)
    mux = await Mux.connect(str(rt.socket))
    try:
        pconn = mux.open(PLUGIN_SERVICE_CONN)
        client = TtrpcClient(mux.open(RUNTIME_SERVICE_CONN))
        reg = api.RegisterPluginRequest(plugin_name="split", plugin_idx="10")
        await client.call(RUNTIME_SVC, "RegisterPlugin", reg.SerializeToString(), timeout=10)
        # answer Configure by hand, framed as the case says
        async with asyncio.timeout(10):
            length, sid, mtype, _ = struct.unpack(">IIBB", await pconn.readexactly(10))
            req = ttrpc_pb2.Request.FromString(await pconn.readexactly(length))
        assert (mtype, req.method) == (1, "Configure")
        cfg = api.ConfigureResponse(events=0).SerializeToString()
        body = pad_to(ttrpc_pb2.Response(payload=cfg).SerializeToString(), total)
        msg = encode_message(sid, 2, body)
        assert len(msg) == total
        send_framed(mux, pconn, msg, framing)
        # accepted: Synchronize follows; refused: the runtime closes the connection
        try:
            async with asyncio.timeout(10):
                length, sid, _, _ = struct.unpack(">IIBB", await pconn.readexactly(10))
                req = ttrpc_pb2.Request.FromString(await pconn.readexactly(length))
            next_call = req.method
        except asyncio.IncompleteReadError:
            next_call = "closed"
        if accepted:
            assert next_call == "Synchronize", rt.stderr_tail()
            pconn.write(encode_message(sid, 2, ttrpc_pb2.Response().SerializeToString()))
            assert await asyncio.to_thread(rt.wait_plugins, 1) == ["10-split"]
        else:
            assert next_call == "closed"
            async with asyncio.timeout(10):
                await mux.wait_closed()
            await wait_until(lambda: bool(rt.events_named("plugin_closed")))
            assert not rt.events_named("plugin_synchronized")
        await client.close()
    finally:
        await mux.close()


@VERSIONS
@pytest.mark.parametrize(("framing", "accepted"), [("single", False), ("write", True)])
async def test_runtime_reads_a_register_request_framed_so(
    nri_runtime_factory: Callable[..., NRIRuntime], version: str, framing: str, accepted: bool
) -> None:
    """The runtime's ttrpc server (connection 2) reading a 5000-byte RegisterPlugin."""
    rt = nri_runtime_factory(version, registration_timeout=1.0)
    mux = await Mux.connect(str(rt.socket))
    try:
        rconn = mux.open(RUNTIME_SERVICE_CONN)
        mux.open(PLUGIN_SERVICE_CONN)
        reg = api.RegisterPluginRequest(plugin_name="bigreg", plugin_idx="10")
        req = ttrpc_pb2.Request(
            service=RUNTIME_SVC, method="RegisterPlugin", payload=reg.SerializeToString()
        )
        msg = encode_message(1, 1, pad_to(req.SerializeToString(), 5000))
        send_framed(mux, rconn, msg, framing)
        try:
            async with asyncio.timeout(10):
                length, sid, mtype, _ = struct.unpack(">IIBB", await rconn.readexactly(10))
                resp = ttrpc_pb2.Response.FromString(await rconn.readexactly(length))
            outcome = f"reply code {resp.status.code}"
        except asyncio.IncompleteReadError:
            outcome = "closed"
        if accepted:
            assert (sid, mtype, outcome) == (1, 2, "reply code 0")
        else:
            # the runtime's reader fails (ENOMEM: frame larger than its 4096-byte
            # buffer), nothing answers, the registration timeout drops us
            assert outcome == "closed"
            # the runtime closes the connection first, then logs: wait for the lines
            await wait_until(lambda: "registration timed out" in rt.stderr_tail(80))
            assert "cannot allocate memory" in rt.stderr_tail(80)
    finally:
        await mux.close()


# --- calls and events -------------------------------------------------------------


@BOTH
async def test_concurrent_calls_to_the_runtime_are_matched_by_stream(
    nri_runtime: NRIRuntime, hand_plugin: Callable[..., Any]
) -> None:
    """40 UpdateContainers in flight at once; the runtime reports every odd one failed.

    Each reply must reach the call it answers: the failed list names the call's
    own container exactly when that container was marked to fail.
    """
    plugin = await hand_plugin(nri_runtime)
    await plugin.register()
    await asyncio.to_thread(nri_runtime.wait_plugins, 1)
    ids = [f"ctr-{i}" for i in range(40)]
    await rt_call(nri_runtime, "container_updates", fail_next=ids[1::2])

    async def update(cid: str) -> list[str]:
        req = api.UpdateContainersRequest(update=[api.ContainerUpdate(container_id=cid)])
        out = await plugin.client.call(
            RUNTIME_SVC, "UpdateContainers", req.SerializeToString(), timeout=10
        )
        return [u.container_id for u in api.UpdateContainersResponse.FromString(out).failed]

    results = await asyncio.gather(*(update(cid) for cid in ids))
    for i, (cid, failed) in enumerate(zip(ids, results, strict=True)):
        assert failed == ([cid] if i % 2 else []), (cid, failed)
    recorded = await rt_call(nri_runtime, "container_updates")
    assert sorted(u["container_id"] for u in recorded["updates"]) == sorted(ids)


async def test_a_burst_of_calls_stays_inside_the_go_mux_queue(
    nri_runtime: NRIRuntime, hand_plugin: Callable[..., Any]
) -> None:
    """5000 calls at once: the Go multiplexer closes the socket when more than
    256 frames wait in one connection's queue; the client's ``max_in_flight``
    keeps a burst inside it, so every call succeeds."""
    plugin = await hand_plugin(nri_runtime)
    await plugin.register()
    await asyncio.to_thread(nri_runtime.wait_plugins, 1)
    req = api.UpdateContainersRequest(update=[api.ContainerUpdate(container_id="c")])
    body = req.SerializeToString()
    replies = await asyncio.gather(
        *(
            plugin.client.call(RUNTIME_SVC, "UpdateContainers", body, timeout=60)
            for _ in range(5000)
        )
    )
    assert len(replies) == 5000
    assert not plugin.mux.closed


@BOTH
async def test_pod_event_reaches_the_plugin(
    nri_runtime: NRIRuntime, hand_plugin: Callable[..., Any]
) -> None:
    """v0.12: the per-event RPC; v0.11: StateChange. Both answered over kndkit's ttrpc."""
    got: list[tuple[str, str]] = []

    async def run_pod(payload: bytes, ctx: RequestContext) -> bytes:
        got.append((ctx.method, api.RunPodSandboxRequest.FromString(payload).pod.name))
        assert ctx.deadline is not None  # the runtime sends its request timeout
        return api.RunPodSandboxResponse().SerializeToString()

    async def state_change(payload: bytes, ctx: RequestContext) -> bytes:
        got.append((ctx.method, api.StateChangeEvent.FromString(payload).pod.name))
        return api.Empty().SerializeToString()

    plugin = await hand_plugin(nri_runtime, {"RunPodSandbox": run_pod, "StateChange": state_change})
    plugin.events = 1 << 0  # RUN_POD_SANDBOX
    await plugin.register()
    await asyncio.to_thread(nri_runtime.wait_plugins, 1)
    await rt_call(nri_runtime, "run_pod_sandbox", pod=make_pod("p1"))
    want = "RunPodSandbox" if nri_runtime.version == "v0.12" else "StateChange"
    assert got == [(want, "p1")]


async def test_unimplemented_event_rpc_falls_back_to_state_change(
    nri_runtime: NRIRuntime, hand_plugin: Callable[..., Any]
) -> None:
    """The v0.12 runtime honours kndkit's UNIMPLEMENTED reply and retries as StateChange."""
    got: list[str] = []

    async def state_change(payload: bytes, ctx: RequestContext) -> bytes:
        got.append(api.StateChangeEvent.FromString(payload).pod.name)
        return api.Empty().SerializeToString()

    plugin = await hand_plugin(nri_runtime, {"StateChange": state_change})
    plugin.events = 1 << 1  # STOP_POD_SANDBOX
    await plugin.register()
    await asyncio.to_thread(nri_runtime.wait_plugins, 1)
    await rt_call(nri_runtime, "stop_pod_sandbox", pod=make_pod("p2"))
    assert got == ["p2"]


async def test_handler_error_reaches_the_runtime_verbatim(
    nri_runtime: NRIRuntime, hand_plugin: Callable[..., Any]
) -> None:
    async def fail(payload: bytes, ctx: RequestContext) -> bytes:
        raise RuntimeError("no plan for pod p3")

    plugin = await hand_plugin(nri_runtime, {"RunPodSandbox": fail})
    plugin.events = 1 << 0
    await plugin.register()
    await asyncio.to_thread(nri_runtime.wait_plugins, 1)
    ok, err = await rt_try(nri_runtime, "run_pod_sandbox", pod=make_pod("p3"))
    assert not ok
    assert err.endswith("rpc error: code = Unknown desc = no plan for pod p3"), err


# --- the runtime closing the connection --------------------------------------------


@BOTH
async def test_runtime_shutdown_closes_everything(
    nri_runtime: NRIRuntime, hand_plugin: Callable[..., Any]
) -> None:
    tasks_before = len(asyncio.all_tasks())
    fds_before = fd_count()
    plugin = await hand_plugin(nri_runtime)
    await plugin.register()
    await asyncio.to_thread(nri_runtime.wait_plugins, 1)
    await rt_call(nri_runtime, "shutdown")
    async with asyncio.timeout(10):
        await plugin.mux.wait_closed()
        await plugin.serve_task  # serve() returns on its own
    with pytest.raises(TtrpcError) as err:
        await plugin.client.call(RUNTIME_SVC, "UpdateContainers", b"", timeout=5)
    assert err.value.code == Code.UNAVAILABLE
    await plugin.close()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) <= tasks_before
    assert fd_count() <= fds_before


async def test_runtime_dropping_a_slow_plugin_cancels_its_handler(
    nri_runtime_factory: Callable[..., NRIRuntime], hand_plugin: Callable[..., Any]
) -> None:
    """A handler outliving the runtime's request timeout: the runtime closes the
    connection, kndkit cancels the handler and ends serve(), nothing hangs."""
    rt = nri_runtime_factory("v0.12", request_timeout=0.5)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(payload: bytes, ctx: RequestContext) -> bytes:
        assert ctx.deadline is not None
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    plugin = await hand_plugin(rt, {"RunPodSandbox": slow})
    plugin.events = 1 << 0
    await plugin.register()
    await asyncio.to_thread(rt.wait_plugins, 1)
    await rt_try(rt, "run_pod_sandbox", pod=make_pod("slow"))
    assert started.is_set()
    async with asyncio.timeout(10):
        await plugin.serve_task
    assert cancelled.is_set()
    assert plugin.mux.closed
    await wait_until(lambda: bool(rt.events_named("plugin_closed")))


async def test_deadline_margin_answers_before_the_runtime_gives_up(
    nri_runtime_factory: Callable[..., NRIRuntime],
) -> None:
    """With ``deadline_margin`` the late handler is cut short and answered
    DEADLINE_EXCEEDED in time: the runtime reports the error and keeps the plugin."""
    rt = nri_runtime_factory("v0.12", request_timeout=2.0)

    async def slow(payload: bytes, ctx: RequestContext) -> bytes:
        await asyncio.sleep(30)
        return b""

    mux = await Mux.connect(str(rt.socket))
    plugin = HandPlugin(mux, {"RunPodSandbox": slow}, deadline_margin=1.0)
    plugin.events = 1 << 0
    try:
        await plugin.register()
        await asyncio.to_thread(rt.wait_plugins, 1)
        ok, err = await rt_try(rt, "run_pod_sandbox", pod=make_pod("late"))
        assert not ok
        assert "code = DeadlineExceeded" in err, err
        live = (await rt_call(rt, "list_plugins"))["live"]
        assert live == ["10-kndkit-transport"]
        assert not mux.closed
    finally:
        await plugin.close()


# --- a plugin the runtime starts itself (inherited fd) -------------------------------

PRESTARTED = """
import asyncio, os, sys
sys.path.insert(0, {python!r})
from kndkit._proto import nri_v1alpha1_pb2 as api
from kndkit.nri.mux import Mux
from kndkit.nri.ttrpc import TtrpcClient, TtrpcServer

async def main():
    mux = await Mux.from_fd(int(os.environ["NRI_PLUGIN_SOCKET"]))
    async def configure(p, ctx):
        return api.ConfigureResponse(events=1 << 2).SerializeToString()
    async def synchronize(p, ctx):
        return api.SynchronizeResponse().SerializeToString()
    async def remove_pod(p, ctx):
        pod = api.RemovePodSandboxRequest.FromString(p).pod
        with open({marker!r}, "a") as f:
            print(pod.name, file=f)
        return b""
    async def state_change(p, ctx):  # v0.11 sends pod events this way
        pod = api.StateChangeEvent.FromString(p).pod
        with open({marker!r}, "a") as f:
            print(pod.name, file=f)
        return b""
    svc = "nri.pkg.api.v1alpha1.Plugin"
    server = TtrpcServer(mux.open(1), {{(svc, "Configure"): configure,
        (svc, "Synchronize"): synchronize, (svc, "RemovePodSandbox"): remove_pod,
        (svc, "StateChange"): state_change}})
    serving = asyncio.create_task(server.serve())
    client = TtrpcClient(mux.open(2))
    req = api.RegisterPluginRequest(plugin_name=os.environ["NRI_PLUGIN_NAME"],
                                    plugin_idx=os.environ["NRI_PLUGIN_IDX"])
    await client.call("nri.pkg.api.v1alpha1.Runtime", "RegisterPlugin",
                      req.SerializeToString(), timeout=10)
    await serving
    await client.close()
    await mux.close()

asyncio.run(main())
"""


@VERSIONS
async def test_prestarted_plugin_on_inherited_fd(
    nri_runtime_factory: Callable[..., NRIRuntime], tmp_path: Path, version: str
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    marker = tmp_path / "removed.txt"
    script = tmp_path / "prestarted.py"
    script.write_text(PRESTARTED.format(python=str(ROOT / "python"), marker=str(marker)))
    launcher = plugins / "07-pyfd"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    launcher.chmod(0o755)
    rt = nri_runtime_factory(version, plugin_path=plugins)
    assert await asyncio.to_thread(rt.wait_plugins, 1) == ["07-pyfd"]
    await rt_call(rt, "remove_pod_sandbox", pod=make_pod("gone"))
    assert marker.read_text() == "gone\n"
