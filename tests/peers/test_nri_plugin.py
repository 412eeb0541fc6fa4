"""kndkit.nri.Plugin against containerd's own NRI adaptation (the harness in kndkit.testing.peers).

The runtime side is the upstream ``github.com/containerd/nri/pkg/adaptation`` at
v0.12.5 (per-event RPCs) and v0.11.0 (pod events over ``StateChange``), driven
over JSON lines; the plugins here are kndkit plugins running in the test's
event loop (the harness's blocking calls go through ``asyncio.to_thread`` so the
loop keeps serving the runtime meanwhile). Namespaces and links are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pathlib
import re
import stat
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kndkit import NetNs
from kndkit import netlink as nl
from kndkit.nri import (
    AdjustmentValidation,
    Container,
    ContainerAdjustment,
    ContainerState,
    ContainerUpdate,
    LinuxDevice,
    Mount,
    Plugin,
    Pod,
)
from peers.nri_fixtures import (
    NRIRuntime,
    link_exists,
    links_in,
    make_container,
    make_pod,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and links"),
]

BOTH = pytest.mark.parametrize("nri_runtime", ["v0.12", "v0.11"], indirect=True)
ROOT = pathlib.Path(__file__).resolve().parents[2]
LINK_ANNOTATION = "kndkit.test/link"


async def rt_call(rt: NRIRuntime, cmd: str, **fields: Any) -> Any:
    return await asyncio.to_thread(rt.call, cmd, **fields)


async def rt_try(rt: NRIRuntime, cmd: str, **fields: Any) -> tuple[bool, Any]:
    return await asyncio.to_thread(rt.try_call, cmd, **fields)


async def wait_plugins(rt: NRIRuntime, count: int = 1) -> list[str]:
    return await asyncio.to_thread(rt.wait_plugins, count, 20.0)


async def connect_syncs(rt: NRIRuntime) -> list[dict[str, Any]]:
    """The runtime's Synchronize rounds with plugins that connected (not its startup round)."""
    syncs = (await rt_call(rt, "sync_results"))["syncs"]
    return [s for s in syncs if s.get("phase") == "connect"]


async def until(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


@contextlib.asynccontextmanager
async def running(*plugins: Plugin) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(p.run()) for p in plugins]
    try:
        yield tasks
    finally:
        for p in plugins:
            await asyncio.wait_for(p.stop(), 20)
        for t in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 20)


# --------------------------------------------------------------------------- plugins


class Syncer(Plugin):
    """Records every Synchronize round and RunPodSandbox."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.syncs: list[tuple[list[Pod], list[Container]]] = []
        self.configs: list[tuple[str, str, str]] = []
        self.ran: list[Pod] = []

    async def configure(self, config: str, runtime: str, version: str) -> None:
        self.configs.append((config, runtime, version))

    async def synchronize(self, pods: list[Pod], containers: list[Container]) -> None:
        self.syncs.append((pods, containers))

    async def run_pod_sandbox(self, pod: Pod) -> None:
        self.ran.append(pod)


class Recorder(Plugin):
    """Defines every event hook; records (hook, pod name, container name)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.seen: list[tuple[str, str, str]] = []

    def _rec(self, hook: str, pod: Pod, ctr: Container | None = None) -> None:
        self.seen.append((hook, pod.name, ctr.name if ctr else ""))

    async def run_pod_sandbox(self, pod: Pod) -> None:
        self._rec("run_pod_sandbox", pod)

    async def stop_pod_sandbox(self, pod: Pod) -> None:
        self._rec("stop_pod_sandbox", pod)

    async def remove_pod_sandbox(self, pod: Pod) -> None:
        self._rec("remove_pod_sandbox", pod)

    async def update_pod_sandbox(self, pod: Pod, overhead: Any, resources: Any) -> None:
        self._rec("update_pod_sandbox", pod)

    async def post_update_pod_sandbox(self, pod: Pod) -> None:
        self._rec("post_update_pod_sandbox", pod)

    async def create_container(self, pod: Pod, ctr: Container) -> None:
        self._rec("create_container", pod, ctr)

    async def post_create_container(self, pod: Pod, ctr: Container) -> None:
        self._rec("post_create_container", pod, ctr)

    async def start_container(self, pod: Pod, ctr: Container) -> None:
        self._rec("start_container", pod, ctr)

    async def post_start_container(self, pod: Pod, ctr: Container) -> None:
        self._rec("post_start_container", pod, ctr)

    async def update_container(self, pod: Pod, ctr: Container, resources: Any) -> None:
        self._rec("update_container", pod, ctr)

    async def post_update_container(self, pod: Pod, ctr: Container) -> None:
        self._rec("post_update_container", pod, ctr)

    async def stop_container(self, pod: Pod, ctr: Container) -> list[ContainerUpdate]:
        self._rec("stop_container", pod, ctr)
        return []

    async def remove_container(self, pod: Pod, ctr: Container) -> None:
        self._rec("remove_container", pod, ctr)


class VethMover(Plugin):
    """Moves the host link named by the pod's annotation into the pod netns as net1, and back."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.removed: list[str] = []
        self.host_network_pods: list[str] = []

    async def run_pod_sandbox(self, pod: Pod) -> None:
        link = pod.annotations.get(LINK_ANNOTATION)
        if pod.host_network:
            self.host_network_pods.append(pod.name)
            if link:
                raise ValueError(f"pod {pod.ref} is host-network; cannot attach {link}")
            return
        if not link:
            return
        assert pod.netns is not None
        with NetNs.open(pod.netns) as podns:
            await asyncio.to_thread(
                nl.apply,
                [nl.move(link, podns, name="net1"), nl.set_up("net1", ns=podns)],
            )

    async def stop_pod_sandbox(self, pod: Pod) -> None:
        link = pod.annotations.get(LINK_ANNOTATION)
        if not link or pod.netns is None:
            return
        with NetNs.open(pod.netns) as podns, NetNs.current() as host:
            await asyncio.to_thread(
                nl.apply,
                [nl.set_down("net1", ns=podns), nl.move("net1", host, name=link, ns=podns)],
            )

    async def remove_pod_sandbox(self, pod: Pod) -> None:
        self.removed.append(pod.id)


class Adjuster(Plugin):
    """Adjusts every container: env, device, mount, CDI device, annotation, net device."""

    def __init__(self, name: str, idx: str, *, tag: str, clash: str = "", **kw: Any) -> None:
        super().__init__(name, idx, **kw)
        self.tag = tag
        self.clash = clash

    async def create_container(self, pod: Pod, ctr: Container) -> ContainerAdjustment:
        adj = (
            ContainerAdjustment()
            .add_env(f"FROM_{self.tag}", pod.netns or "host")
            .add_device(LinuxDevice(f"/dev/knd-{self.tag}", "c", 231, 192, file_mode=0o666, gid=0))
            .add_mount(Mount(f"/run/knd-{self.tag}", "/tmp", options=("rbind", "ro")))
            .add_cdi_device(f"kndkit.test/nic=dev-{self.tag}")
            .add_annotation(f"kndkit.test/{self.tag}", "yes")
            .add_net_device(f"h{self.tag}", f"c{self.tag}")
        )
        if self.clash and ctr.name == "clash":
            adj.add_env(self.clash, self.tag)
        if ctr.name == "cdi-clash":
            adj.add_cdi_device("kndkit.test/nic=shared")
        return adj


class Remover(Plugin):
    """Removes entries of the container's original spec."""

    async def create_container(self, pod: Pod, ctr: Container) -> ContainerAdjustment:
        adj = ContainerAdjustment()
        for k in ctr.env:
            if k.startswith("OLD"):
                adj.remove_env(k)
        for m in ctr.mounts:
            adj.remove_mount(m.destination)
        for d in ctr.devices:
            adj.remove_device(d.path)
        return adj.remove_annotation("old").add_env("NEW", "1")


# --------------------------------------------------------------------------- tests


@BOTH
async def test_register_and_synchronize_existing_pods(nri_runtime: NRIRuntime) -> None:
    hostnet = make_pod("hostnet")
    hostnet["ips"] = ["192.0.2.7"]
    withns = make_pod("withns", netns="/var/run/netns/knd-nowhere", labels={"app": "x"})
    ctr = make_container("app", withns)
    ctr["env"] = ["A=1", "B=x=y"]
    await asyncio.to_thread(nri_runtime.set_state, [hostnet, withns], [ctr])
    p = Syncer("kndkit", "10", socket_path=str(nri_runtime.socket))
    async with running(p):
        assert await wait_plugins(nri_runtime) == ["10-kndkit"]
        assert p.connected.is_set() and p.synchronized.is_set()
        assert len(p.syncs) == 1
        pods, ctrs = p.syncs[0]
        by_name = {x.name: x for x in pods}
        assert by_name["hostnet"].host_network and by_name["hostnet"].netns is None
        assert by_name["hostnet"].ips == ("192.0.2.7",)
        assert by_name["withns"].netns == "/var/run/netns/knd-nowhere"
        assert not by_name["withns"].host_network
        assert dict(by_name["withns"].labels) == {"app": "x"}
        assert [c.name for c in ctrs] == ["app"]
        assert ctrs[0].state is ContainerState.CREATED
        assert dict(ctrs[0].env) == {"A": "1", "B": "x=y"}
        assert ctrs[0].pod_sandbox_id == withns["id"]
        assert p.runtime is not None
        if nri_runtime.version == "v0.12":
            assert p.runtime.nri_version.startswith("v0.12.")
        else:  # v0.11 does not send its NRI version in Configure
            assert p.runtime.nri_version == ""
        assert p.runtime.request_timeout == 10.0  # the fixture's timeout, from Configure
        assert len(p.configs) == 1
        syncs = await connect_syncs(nri_runtime)
        assert [s.get("error") for s in syncs] == [None]


async def test_synchronize_split_with_more(
    nri_runtime: NRIRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """Over 4 MiB of state: the runtime splits Synchronize; the hook sees the whole set once."""
    caplog.set_level(logging.DEBUG, logger="kndkit.nri.plugin")
    blob = "x" * (100 << 10)
    pods = [make_pod(f"p{i}", annotations={"big": blob}) for i in range(48)]
    await asyncio.to_thread(nri_runtime.set_state, pods, [])
    p = Syncer("kndkit", "10", socket_path=str(nri_runtime.socket))
    async with running(p):
        assert await wait_plugins(nri_runtime) == ["10-kndkit"]
        assert len(p.syncs) == 1
        assert sorted(x.name for x in p.syncs[0][0]) == sorted(f"p{i}" for i in range(48))
        assert all(len(x.annotations["big"]) == len(blob) for x in p.syncs[0][0])
        chunks = [r for r in caplog.records if "more follow" in r.getMessage()]
        assert chunks, "the runtime did not split Synchronize"
        syncs = await connect_syncs(nri_runtime)
        assert [s.get("error") for s in syncs] == [None]
        assert syncs[0]["pods"] == 48


@BOTH
async def test_pod_netns_path_is_real_and_plugin_moves_veth(
    nri_runtime: NRIRuntime, nri_pod_netns: Any, nri_host_veth: Any
) -> None:
    netns = nri_pod_netns()
    host, _peer = nri_host_veth()
    pod = make_pod("mover", netns=netns, annotations={LINK_ANNOTATION: host})
    hostpod = make_pod("hostpod", annotations={LINK_ANNOTATION: "nonexistent0"})
    p = VethMover("kndkit", "10", socket_path=str(nri_runtime.socket))
    async with running(p):
        await wait_plugins(nri_runtime)
        await rt_call(nri_runtime, "run_pod_sandbox", pod=pod)
        assert "net1" in links_in(netns.name)
        assert not link_exists(host)
        # a host-network pod's error comes back verbatim and the plugin stays
        ok, err = await rt_try(nri_runtime, "run_pod_sandbox", pod=hostpod)
        assert not ok
        assert "is host-network; cannot attach nonexistent0" in err
        assert p.host_network_pods == ["hostpod"]
        await rt_call(nri_runtime, "stop_pod_sandbox", pod=pod)
        assert link_exists(host)
        assert "net1" not in links_in(netns.name)
        await rt_call(nri_runtime, "remove_pod_sandbox", pod=pod)
        assert p.removed == [pod["id"]]
        assert (await rt_call(nri_runtime, "list_plugins"))["live"] == ["10-kndkit"]


@BOTH
async def test_every_event_reaches_its_hook_in_order(nri_runtime: NRIRuntime) -> None:
    p = Recorder("kndkit", "10", socket_path=str(nri_runtime.socket))
    pod = make_pod("ev")
    ctr = make_container("c", pod)
    async with running(p):
        await wait_plugins(nri_runtime)
        steps: list[tuple[str, dict[str, Any]]] = [
            ("run_pod_sandbox", {"pod": pod}),
            ("create_container", {"pod": pod, "container": ctr}),
            ("post_create_container", {"pod": pod, "container": ctr}),
            ("start_container", {"pod": pod, "container": ctr}),
            ("post_start_container", {"pod": pod, "container": ctr}),
            ("update_container", {"pod": pod, "container": ctr, "linux_resources": {}}),
            ("post_update_container", {"pod": pod, "container": ctr}),
            ("update_pod_sandbox", {"pod": pod}),
            ("post_update_pod_sandbox", {"pod": pod}),
            ("stop_container", {"pod": pod, "container": ctr}),
            ("remove_container", {"pod": pod, "container": ctr}),
            ("stop_pod_sandbox", {"pod": pod}),
            ("remove_pod_sandbox", {"pod": pod}),
        ]
        expected = []
        for cmd, fields in steps:
            ok, err = await rt_try(nri_runtime, cmd, **fields)
            if not ok and "unknown command" in err:
                continue  # an event this runtime version does not have
            assert ok, f"{cmd}: {err}"
            expected.append((cmd, "ev", "c" if "container" in fields else ""))
        assert p.seen == expected
        assert len(expected) >= 11
    if nri_runtime.version == "v0.12":
        # every pod event came through its own RPC: no StateChange fallback
        assert "StateChange" not in nri_runtime.stderr_tail(400)


async def test_create_container_adjustments_merged_with_go_plugin(
    nri_runtime: NRIRuntime, nri_plugin_factory: Any
) -> None:
    go = nri_plugin_factory(nri_runtime, idx="10", env={"GO_ONLY": "1", "SHARED": "go"})
    p = Adjuster("kndkit", "20", tag="k", clash="SHARED", socket_path=str(nri_runtime.socket))
    pod = make_pod("adj", netns="/var/run/netns/knd-nowhere")
    async with running(p):
        assert sorted(await wait_plugins(nri_runtime, 2)) == [go.qualified, "20-kndkit"]
        res = await asyncio.to_thread(nri_runtime.create_container, pod, make_container("app", pod))
        adj = res["adjust"]
        env = {e["key"]: e.get("value", "") for e in adj["env"]}
        assert env == {"GO_ONLY": "1", "SHARED": "go", "FROM_k": "/var/run/netns/knd-nowhere"}
        (dev,) = adj["linux"]["devices"]
        assert dev["path"] == "/dev/knd-k" and dev["type"] == "c"
        assert (int(dev["major"]), int(dev["minor"])) == (231, 192)
        assert dev["file_mode"]["value"] == 0o666 and dev["gid"].get("value", 0) == 0
        (mnt,) = adj["mounts"]
        assert mnt == {
            "destination": "/run/knd-k",
            "source": "/tmp",
            "type": "bind",
            "options": ["rbind", "ro"],
        }
        assert adj["CDI_devices"] == [{"name": "kndkit.test/nic=dev-k"}]
        assert adj["annotations"] == {"kndkit.test/k": "yes"}
        assert adj["linux"]["net_devices"] == {"hk": {"name": "ck"}}
        # the same env var from both plugins: the later plugin's claim fails the creation
        ok, err = await rt_try(
            nri_runtime, "create_container", pod=pod, container=make_container("clash", pod)
        )
        assert not ok
        assert re.search(r'plugins "20-kndkit" and "10-netdev-injector" both tried to set', err)
        assert "SHARED" in err


async def test_two_kndkit_plugins_compose_and_conflict(nri_runtime: NRIRuntime) -> None:
    a = Adjuster("a", "10", tag="a", clash="X", socket_path=str(nri_runtime.socket))
    b = Adjuster("b", "20", tag="b", clash="X", socket_path=str(nri_runtime.socket))
    pod = make_pod("two", netns="/var/run/netns/knd-nowhere")
    async with running(a, b):
        assert sorted(await wait_plugins(nri_runtime, 2)) == ["10-a", "20-b"]
        res = await asyncio.to_thread(nri_runtime.create_container, pod, make_container("c", pod))
        adj = res["adjust"]
        assert {e["key"] for e in adj["env"]} == {"FROM_a", "FROM_b"}
        assert [d["path"] for d in adj["linux"]["devices"]] == ["/dev/knd-a", "/dev/knd-b"]
        assert [c["name"] for c in adj["CDI_devices"]] == [
            "kndkit.test/nic=dev-a",
            "kndkit.test/nic=dev-b",
        ]
        assert set(adj["linux"]["net_devices"]) == {"ha", "hb"}
        ok, err = await rt_try(
            nri_runtime, "create_container", pod=pod, container=make_container("clash", pod)
        )
        assert not ok
        assert re.search(r'plugins "20-b" and "10-a" both tried to set', err), err
        # the same CDI device from two plugins is a conflict too
        ok, err = await rt_try(
            nri_runtime, "create_container", pod=pod, container=make_container("cdi-clash", pod)
        )
        assert not ok
        assert re.search(r'plugins "20-b" and "10-a" both tried to set', err), err
        assert "kndkit.test/nic=shared" in err


@BOTH
async def test_removals_of_spec_entries(nri_runtime: NRIRuntime) -> None:
    """Which removals of the original spec's entries reach the runtime (model docstring)."""
    p = Remover("remover", "10", socket_path=str(nri_runtime.socket))
    pod = make_pod("rm")
    ctr = make_container("c", pod)
    ctr["env"] = ["OLD_A=1", "KEEP=2"]
    ctr["annotations"] = {"old": "x"}
    ctr["mounts"] = [{"destination": "/old", "source": "/tmp", "type": "bind"}]
    ctr["linux"] = {"devices": [{"path": "/dev/old0", "type": "c", "major": 1, "minor": 9}]}
    async with running(p):
        await wait_plugins(nri_runtime)
        adj = (await asyncio.to_thread(nri_runtime.create_container, pod, ctr))["adjust"]
        # forwarded: annotation and mount removals
        assert set(adj["annotations"]) == {"-old"}
        assert [m["destination"] for m in adj["mounts"]] == ["-/old"]
        # not forwarded by the adaptation (only later plugins see them gone)
        assert [e["key"] for e in adj["env"]] == ["NEW"]
        assert not adj.get("linux", {}).get("devices")


async def test_validator_sees_merged_adjustment_and_rejects(
    nri_runtime: NRIRuntime, nri_plugin_factory: Any
) -> None:
    seen: list[AdjustmentValidation] = []

    class Validator(Plugin):
        async def validate_container_adjustment(self, req: AdjustmentValidation) -> str | None:
            seen.append(req)
            if any(k == "FORBIDDEN" for k, _ in req.adjustment.env):
                return f"FORBIDDEN set by {req.owner(6, 'FORBIDDEN')}"
            return None

    nri_plugin_factory(nri_runtime, idx="10", env={"FORBIDDEN": "1"})
    v = Validator("validator", "90", socket_path=str(nri_runtime.socket))
    pod = make_pod("val")
    async with running(v):
        await wait_plugins(nri_runtime, 2)
        ok, err = await rt_try(
            nri_runtime, "create_container", pod=pod, container=make_container("c", pod)
        )
        assert not ok
        assert "FORBIDDEN set by 10-netdev-injector" in err
        assert seen and seen[0].container.name == "c"
        assert ("netdev-injector", "10") in seen[0].plugins


async def test_slow_hook_fails_request_cleanly_and_stays_connected(
    nri_runtime_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rt = nri_runtime_factory("v0.12", request_timeout=1.0)
    done: list[str] = []

    class Slow(Plugin):
        async def run_pod_sandbox(self, pod: Pod) -> None:
            if pod.name == "slow":
                await asyncio.sleep(2.0)
            done.append(pod.name)

    p = Slow("slow", "10", socket_path=str(rt.socket))
    async with running(p):
        await wait_plugins(rt)
        ok, err = await rt_try(rt, "run_pod_sandbox", pod=make_pod("slow"))
        assert not ok, "the runtime should report the hook's timeout as the request's error"
        assert "DeadlineExceeded" in err and "did not finish within" in err, err
        assert "10-slow" in err
        # still connected: the runtime did not drop the plugin
        assert (await rt_call(rt, "list_plugins"))["live"] == ["10-slow"]
        assert not rt.events_named("plugin_closed")
        assert p.connected.is_set()
        await rt_call(rt, "run_pod_sandbox", pod=make_pod("fast"))
        assert done == ["fast"]
        # the late hook finishes on its own; its result is discarded and logged
        assert await until(lambda: "slow" in done, 10)
        assert await until(
            lambda: any("result discarded" in r.getMessage() for r in caplog.records)
        )
        assert (await rt_call(rt, "list_plugins"))["live"] == ["10-slow"]


@pytest.mark.parametrize(
    ("keep_connected", "fail_request"), [(False, False), (True, False), (True, True)]
)
async def test_failure_policy_when_the_deadline_is_missed_anyway(
    nri_runtime_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    keep_connected: bool,
    fail_request: bool,
) -> None:
    """With the plugin's own cut-off disabled the runtime's timeout applies its policy."""
    import kndkit.nri.plugin as plugin_mod

    monkeypatch.setattr(plugin_mod, "DEADLINE_MARGIN_MIN", -5.0)
    monkeypatch.setattr(plugin_mod, "DEADLINE_MARGIN_MAX", -5.0)
    rt = nri_runtime_factory("v0.12", request_timeout=1.0)

    class Late(Plugin):
        async def run_pod_sandbox(self, pod: Pod) -> None:
            if pod.name == "late":
                await asyncio.sleep(1.5)

    p = Late(
        "late",
        "10",
        socket_path=str(rt.socket),
        keep_connected=keep_connected,
        fail_request=fail_request,
    )
    async with running(p):
        await wait_plugins(rt)
        ok, err = await rt_try(rt, "run_pod_sandbox", pod=make_pod("late"))
        assert ok is not fail_request, err
        if fail_request:
            assert "failed to handle RunPodSandbox request" in err
        if keep_connected:
            assert (await rt_call(rt, "list_plugins"))["live"] == ["10-late"]
            await rt_call(rt, "run_pod_sandbox", pod=make_pod("fine"))
            assert not rt.events_named("plugin_closed")
        else:
            assert await until(lambda: bool(rt.events_named("plugin_closed")))
            # dropped: the plugin redials and is synchronised again
            assert await wait_plugins(rt) == ["10-late"]
            assert len(rt.events_named("plugin_synchronized")) == 2


async def test_runtime_restart_reconnects_and_resynchronises(
    nri_binaries: Any, nri_runtime_factory: Any
) -> None:
    rt1 = nri_runtime_factory("v0.12")
    p = Syncer("kndkit", "10", socket_path=str(rt1.socket))
    async with running(p) as (task,):
        await wait_plugins(rt1)
        assert len(p.syncs) == 1
        await asyncio.to_thread(rt1.close)
        assert await until(lambda: not p.connected.is_set())
        assert not task.done()  # still trying
        rt2 = NRIRuntime(
            nri_binaries["v0.12"].harness,
            "v0.12",
            rt1.workdir,
            request_timeout=10.0,
            registration_timeout=10.0,
        )
        try:
            assert rt2.socket == rt1.socket
            assert await wait_plugins(rt2) == ["10-kndkit"]
            assert len(p.syncs) == 2
            assert p.synchronized.is_set()
            await rt_call(rt2, "run_pod_sandbox", pod=make_pod("after"))
            assert [x.name for x in p.ran] == ["after"]
        finally:
            await asyncio.to_thread(rt2.close)


async def test_plugin_dropped_by_runtime_reconnects(nri_runtime: NRIRuntime) -> None:
    """The connection ending under the plugin (as when the runtime drops it) -> redial, resync.

    Repeated drops leak neither file descriptors nor tasks.
    """
    p = Syncer("kndkit", "10", socket_path=str(nri_runtime.socket))
    async with running(p):
        await wait_plugins(nri_runtime)
        fds = len(os.listdir("/proc/self/fd"))
        tasks = len(asyncio.all_tasks())
        for n in range(2, 6):
            session = p._session
            assert session is not None
            session.mux.abort("test: simulated drop")
            assert await until(functools.partial(lambda k: len(p.syncs) >= k, n))
            assert len(p.syncs) == n
            assert await wait_plugins(nri_runtime) == ["10-kndkit"]
        await rt_call(nri_runtime, "run_pod_sandbox", pod=make_pod("again"))
        assert [x.name for x in p.ran] == ["again"]
        assert len(os.listdir("/proc/self/fd")) == fds
        assert len(asyncio.all_tasks()) == tasks


async def test_updates_from_hooks_reach_the_runtime(nri_runtime: NRIRuntime) -> None:
    pod = make_pod("upd")
    ctr = make_container("c", pod)

    class Updater(Plugin):
        async def synchronize(
            self, pods: list[Pod], containers: list[Container]
        ) -> list[ContainerUpdate]:
            return [ContainerUpdate(c.id).set_memory_limit(1 << 30) for c in containers]

        async def update_container(
            self, pod: Pod, ctr: Container, resources: Any
        ) -> list[ContainerUpdate]:
            assert resources is not None and resources.memory.limit.value == 1 << 28
            return [ContainerUpdate(ctr.id).set_cpuset(cpus="0-1")]

        async def stop_container(self, pod: Pod, ctr: Container) -> ContainerUpdate:
            return ContainerUpdate("other-ctr", ignore_failure=True).set_cpuset(mems="0")

    await asyncio.to_thread(nri_runtime.set_state, [pod], [ctr])
    p = Updater("updater", "10", socket_path=str(nri_runtime.socket))
    async with running(p):
        await wait_plugins(nri_runtime)
        (sync,) = await connect_syncs(nri_runtime)
        (u,) = sync["updates"]
        assert u["container_id"] == ctr["id"]
        assert int(u["linux"]["resources"]["memory"]["limit"]["value"]) == 1 << 30
        res = await rt_call(
            nri_runtime,
            "update_container",
            pod=pod,
            container=ctr,
            linux_resources={"memory": {"limit": {"value": str(1 << 28)}}},
        )
        assert [x["linux"]["resources"]["cpu"]["cpus"] for x in res["update"]] == ["0-1"]
        res = await rt_call(nri_runtime, "stop_container", pod=pod, container=ctr)
        (u,) = res["update"]
        assert u["container_id"] == "other-ctr" and u["ignore_failure"] is True


async def test_unsolicited_container_updates(nri_runtime: NRIRuntime) -> None:
    p = Syncer("kndkit", "10", socket_path=str(nri_runtime.socket))
    async with running(p):
        await wait_plugins(nri_runtime)
        failed = await p.update_containers([ContainerUpdate("ctr-1").set_memory_limit(1 << 30)])
        assert failed == []
        got = (await rt_call(nri_runtime, "container_updates", clear=True))["updates"]
        assert got[0]["container_id"] == "ctr-1"
        assert int(got[0]["linux"]["resources"]["memory"]["limit"]["value"]) == 1 << 30
        await rt_call(nri_runtime, "container_updates", fail_next=["ctr-2"])
        failed = await p.update_containers([ContainerUpdate("ctr-2").set_memory_limit(1 << 20)])
        assert [u.container_id for u in failed] == ["ctr-2"]


PRESTARTED = """\
#!{python}
import asyncio, pathlib, sys
sys.path.insert(0, {pydir!r})
from kndkit.nri import Plugin

OUT = pathlib.Path({out!r})

class Pre(Plugin):
    async def configure(self, config, runtime, version):
        OUT.joinpath("configured").write_text(self.qualified_name + "|" + config)

    async def run_pod_sandbox(self, pod):
        OUT.joinpath("ran").write_text(pod.name)

asyncio.run(Pre("ignored", "99").run())
OUT.joinpath("exited").write_text("ok")
"""


@pytest.mark.parametrize("version", ["v0.12", "v0.11"])
async def test_prestarted_plugin_launched_from_plugin_path(
    version: str, nri_runtime_factory: Any, tmp_path: pathlib.Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    script = plugins / "10-kndkit"
    script.write_text(
        PRESTARTED.format(python=sys.executable, pydir=str(ROOT / "python"), out=str(out))
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    rt = nri_runtime_factory(version, plugin_path=plugins)
    # the runtime named it from the file name (NRI_PLUGIN_NAME/IDX), not "99-ignored"
    assert await wait_plugins(rt) == ["10-kndkit"]
    assert (out / "configured").read_text() == "10-kndkit|"
    await rt_call(rt, "run_pod_sandbox", pod=make_pod("pre"))
    assert (out / "ran").read_text() == "pre"
    (reg,) = rt.events_named("plugin_registered")
    m = re.search(r"\[(\d+)\]", reg["qualified"])
    assert m, reg
    pid = int(m.group(1))
    await asyncio.to_thread(rt.close)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    # the runtime stops it (or its run() returns when the inherited connection ends)
    assert await until(gone, 20)
