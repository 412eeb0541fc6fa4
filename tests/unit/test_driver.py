"""kndkit.driver: the lifecycle wiring against the real kernel and a real StateStore.

The host is a network namespace of its own with veth "NICs" (their peers in a
fabric namespace); pods are namespaces too. Claims are built as the claim
reader would return them and stored as the claim service would; the API server,
kubelet and runtime parts are covered end to end in tests/peers/test_driver_e2e.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from kndkit import netlink
from kndkit._native import NetNs
from kndkit.dra.types import HealthStatus
from kndkit.driver import DriverOptions, NetworkDriver, PlanContext, _make_nri_plugin
from kndkit.errors import InvalidArgument, KndError
from kndkit.examples.hello import Hello
from kndkit.k8s.claims import AllocatedDevice, Claim, PodRef
from kndkit.k8s.errors import ConfigError
from kndkit.nri.model import Container, Event, Namespace, Pod
from kndkit.plan import CharDevice, InterfacePlan, RdmaPlan, Route
from kndkit.sources import Netdevs, NodeDevice
from kndkit.state import AttachmentRecord, AttachPhase, ClaimPhase, ClaimRecord

NODE = "node-a"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    name: str  # netns name of the host
    fabric: str
    path: str
    nics: list[str]
    tmp: str
    pods: list[str]

    def new_pod_ns(self) -> str:
        name = f"{self.name}-p{len(self.pods)}"
        _ip("netns", "add", name)
        self.pods.append(name)
        return f"/run/netns/{name}"

    def links(self, ns_path: str | None = None) -> dict[str, Any]:
        with NetNs.open(ns_path or self.path) as ns:
            return {lk["name"]: lk for lk in netlink.dump_links(ns)}


@pytest.fixture
def host() -> Iterator[Host]:
    tag = f"kdu{os.getpid() % 10000}"
    name, fabric = f"{tag}-h", f"{tag}-f"
    _ip("netns", "add", name)
    _ip("netns", "add", fabric)
    nics = []
    for i in range(2):
        nic = f"{tag}n{i}"
        _ip(
            "-n", name, "link", "add", nic, "type", "veth", "peer", "name", f"p{i}", "netns", fabric
        )
        _ip("-n", name, "addr", "add", f"10.9.{i}.1/24", "dev", nic)
        _ip("-n", name, "link", "set", nic, "mtu", "1400", "up")
        _ip("-n", fabric, "link", "set", f"p{i}", "up")
        nics.append(nic)
    tmp = tempfile.mkdtemp(prefix="knd-drv-", dir="/tmp")
    h = Host(name, fabric, f"/run/netns/{name}", nics, tmp, [])
    try:
        yield h
    finally:
        for p in h.pods:
            subprocess.run(["ip", "netns", "del", p], check=False)
        subprocess.run(["ip", "netns", "del", fabric], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _options(h: Host, **kw: Any) -> DriverOptions:
    return DriverOptions(
        node_name=NODE, host_netns=h.path, state_dir=h.tmp, metrics_port=None, **kw
    )


def _claim(device: str, *, config: dict[str, Any] | None = None, pods: int = 1) -> Claim:
    layers = (config,) if config else ()
    return Claim(
        namespace="ns",
        name=f"claim-{device}",
        uid=f"uid-{device}",
        pods=tuple(PodRef("ns", f"pod{i}", f"pod-uid-{i}") for i in range(pods)),
        devices=(
            AllocatedDevice(
                request="nic",
                pool=NODE,
                device=device,
                config=config or {},
                claim=f"ns/claim-{device}",
                config_layers=layers,
            ),
        ),
        resource_version="1",
    )


def _pod(netns: str | None, uid: str = "pod-uid-0") -> Pod:
    namespaces = (Namespace("network", netns),) if netns else ()
    return Pod(id=f"sb-{uid}", name="pod0", namespace="ns", uid=uid, namespaces=namespaces)


async def _prepare(driver: NetworkDriver, claim: Claim) -> ClaimRecord:
    """What ClaimService does with the preparer's answer."""
    prepared = await driver.prepare_claim(claim)
    rec = ClaimRecord.for_claim(
        claim.ref(),
        ClaimPhase.PREPARED,
        devices=prepared.devices,
        plans=prepared.plans,
        pod_uids=[p.uid for p in claim.pods],
    )
    return driver.open_store().put(rec)


# --------------------------------------------------------------------------- discovery


async def test_rescan_finds_host_nics_not_loopback(host: Host) -> None:
    d = Hello(_options(host))
    found = await d.rescan()
    names = sorted(nd.name for nd in found)
    assert names == sorted(host.nics)
    nd = d.devices[host.nics[0]]
    assert nd.ifname == host.nics[0]
    assert nd.device.attributes["mtu"] == 1400
    assert d.health(nd)[0] is HealthStatus.HEALTHY
    assert [h.device_name for h in d._health] == sorted(host.nics)


async def test_uplink_and_filters_excluded(host: Host) -> None:
    _ip("-n", host.name, "route", "add", "default", "via", "10.9.0.2", "dev", host.nics[0])
    d = Hello(_options(host))
    assert sorted(nd.name for nd in await d.rescan()) == [host.nics[1]]

    class OnlyN0(NetworkDriver):
        name = "only.kndkit.test"
        sources = (Netdevs(exclude_uplink=False, name_filter=r".*n0"),)

    d2 = OnlyN0(_options(host))
    assert [nd.name for nd in await d2.rescan()] == [host.nics[0]]

    class Filtered(NetworkDriver):
        name = "filtered.kndkit.test"
        sources = (Netdevs(exclude_uplink=False),)

        def filter(self, device: NodeDevice) -> bool:
            return device.name.endswith("n1")

    d3 = Filtered(_options(host))
    assert [nd.name for nd in await d3.rescan()] == [host.nics[1]]


def test_bad_driver_name_and_options(host: Host) -> None:
    class Bad(NetworkDriver):
        name = "Not_A_DNS_Name"

    with pytest.raises(InvalidArgument, match="Not_A_DNS_Name"):
        Bad(_options(host))
    with pytest.raises(InvalidArgument, match="node name"):
        Hello(DriverOptions(node_name=""))
    with pytest.raises(InvalidArgument, match="name_filter"):
        Netdevs(name_filter="(")


# --------------------------------------------------------------------------- prepare


async def test_prepare_plans_and_captures_host_state(host: Host) -> None:
    d = Hello(_options(host))
    await d.rescan()
    nic = host.nics[0]
    rec = await _prepare(d, _claim(nic, config={"name": "eth7"}))
    assert [p.device_name for p in rec.devices] == [nic]
    assert rec.devices[0].request_names == ("nic",)
    (plan,) = [InterfacePlan.from_json(p) for p in rec.plans]
    assert plan.kind == "move" and plan.host_ifname == nic and plan.name == "eth7"
    assert plan.host is not None and plan.host.mtu == 1400
    assert plan.host.addresses == ("10.9.0.1/24",)


async def test_prepare_refuses_bad_claims(host: Host) -> None:
    d = Hello(_options(host))
    await d.rescan()
    nic = host.nics[0]
    with pytest.raises(KndError, match="exactly one"):
        await d.prepare_claim(_claim(nic, pods=2))
    with pytest.raises(KndError, match="not on node"):
        await d.prepare_claim(_claim("no-such-device"))

    class Cfg(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = "net1"

    class Typed(Hello):
        name = "typed.kndkit.test"
        config = Cfg

        def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
            assert isinstance(config, Cfg)
            assert ctx.pod_uid == "pod-uid-0" and ctx.allocated.device == device.name
            return InterfacePlan.move(device.name, device.ifname or "", name=config.name)

    t = Typed(_options(host))
    await t.rescan()
    with pytest.raises(ConfigError, match="bogus") as ei:
        await t.prepare_claim(_claim(nic, config={"bogus": 1}))
    assert ei.value.field == "bogus"
    ok = await t.prepare_claim(_claim(nic, config={"name": "eth3"}))
    assert ok.plans[0]["name"] == "eth3"


async def test_failed_prepare_releases_what_was_planned(host: Host) -> None:
    released: list[tuple[list[str], str]] = []

    class Releasing(Hello):
        name = "releasing.kndkit.test"

        async def release(self, plans: Sequence[InterfacePlan], record: ClaimRecord) -> None:
            released.append(([p.device for p in plans], record.uid))

    d = Releasing(_options(host))
    await d.rescan()
    with pytest.raises(KndError, match="exactly one"):
        await d.prepare_claim(_claim(host.nics[0], pods=2))
    assert released == [([host.nics[0]], f"uid-{host.nics[0]}")]


async def test_merge_config_gets_layers_class_first(host: Host) -> None:
    seen: list[Sequence[Any]] = []

    class Layered(Hello):
        name = "layered.kndkit.test"

        def merge_config(self, layers: Sequence[Any]) -> dict[str, Any]:
            seen.append(list(layers))
            return super().merge_config(layers)

    d = Layered(_options(host))
    await d.rescan()
    claim = _claim(host.nics[0])
    alloc = AllocatedDevice(
        request="nic",
        pool=NODE,
        device=host.nics[0],
        config={"name": "eth2"},
        config_layers=({"name": "eth1"}, {"name": "eth2"}),
    )
    claim = Claim("ns", "c", "u", claim.pods, (alloc,), "1")
    out = await d.prepare_claim(claim)
    assert seen == [[{"name": "eth1"}, {"name": "eth2"}]]
    assert out.plans[0]["name"] == "eth2"


def _claim_of(
    name: str,
    devices: Sequence[str],
    *,
    pod: str = "pod-uid-0",
    config: dict[str, Any] | None = None,
) -> Claim:
    """A claim of several devices (one request each), reserved for pod ``pod``."""
    return Claim(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        pods=(PodRef("ns", pod, pod),),
        devices=tuple(
            AllocatedDevice(
                request=f"r{i}",
                pool=NODE,
                device=dev,
                config=config or {},
                claim=f"ns/{name}",
                config_layers=(config,) if config else (),
            )
            for i, dev in enumerate(devices)
        ),
        resource_version="1",
    )


async def test_planning_runs_off_the_loop_in_one_thread_per_claim(host: Host) -> None:
    threads: list[int] = []

    class Recording(Hello):
        name = "recording.kndkit.test"

        def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
            threads.append(threading.get_ident())
            return InterfacePlan.move(device.name, device.ifname or "", name=f"e{len(threads)}")

    d = Recording(_options(host))
    await d.rescan()
    out = await d.prepare_claim(_claim_of("two", host.nics))
    assert [p["name"] for p in out.plans] == ["e1", "e2"]
    assert len(threads) == 2 and threads[0] == threads[1]
    assert threads[0] != threading.get_ident()  # not the event loop's thread


async def test_duplicate_pod_interface_names_refused_at_prepare(host: Host) -> None:
    released: list[list[str]] = []

    class Releasing(Hello):
        name = "releasing.kndkit.test"

        async def release(self, plans: Sequence[InterfacePlan], record: ClaimRecord) -> None:
            released.append([p.device for p in plans])

    d = Releasing(_options(host))
    await d.rescan()
    a, b = host.nics
    # Two devices of one claim with the same name (a class config naming both).
    with pytest.raises(ConfigError, match=f"{a} and {b} would both be named 'eth5'"):
        await d.prepare_claim(_claim_of("same", host.nics, config={"name": "eth5"}))
    assert released == [[a, b]]
    # Against a claim already prepared for the same pod.
    await _prepare(d, _claim_of("first", [a]))
    with pytest.raises(ConfigError, match=f"{a} and {b} would both be named 'net1'") as ei:
        await d.prepare_claim(_claim_of("second", [b]))
    assert "another claim of the pod" in str(ei.value) and ei.value.device == b
    # Another pod, or another name, is fine.
    await d.prepare_claim(_claim_of("other-pod", [b], pod="pod-uid-9"))
    await d.prepare_claim(_claim_of("renamed", [b], config={"name": "net2"}))


# --------------------------------------------------------------------------- attach / detach


async def test_attach_detach_round_trip(host: Host) -> None:
    d = Hello(_options(host))
    await d.rescan()
    nic = host.nics[0]
    before = host.links()[nic]
    rec = await _prepare(d, _claim(nic, config={"name": "eth7"}))
    pod_ns = host.new_pod_ns()
    assert await d.attach_pod(_pod(pod_ns)) is True
    assert nic not in host.links()
    assert "eth7" in host.links(pod_ns)
    att = d.open_store().get_attachment("pod-uid-0")
    assert att is not None and att.phase is AttachPhase.ATTACHED
    assert att.claim_uids == (rec.uid,) and att.netns == pod_ns
    # Idempotent: a second RunPodSandbox changes nothing.
    assert await d.attach_pod(_pod(pod_ns)) is True
    # The device stays published while it is in the pod.
    await d.rescan()
    assert nic in {dev.name for dev in d._published}

    assert await d.detach_pod("pod-uid-0") is True
    after = host.links()[nic]
    assert (after["mtu"], after["mac"], after["up"]) == (before["mtu"], before["mac"], before["up"])
    assert "eth7" not in host.links(pod_ns)
    assert d.open_store().get_attachment("pod-uid-0") is None
    assert await d.detach_pod("pod-uid-0") is False


async def test_pod_without_claims_and_host_network_pod(host: Host) -> None:
    d = Hello(_options(host))
    await d.rescan()
    pod_ns = host.new_pod_ns()
    assert await d.attach_pod(_pod(pod_ns, uid="other")) is False
    await _prepare(d, _claim(host.nics[0]))
    with pytest.raises(KndError, match="host network"):
        await d.attach_pod(_pod(None))
    assert d.open_store().attachments() == []
    assert host.nics[0] in host.links()


async def test_failed_attach_leaves_no_record(host: Host) -> None:
    class Unroutable(Hello):
        name = "unroutable.kndkit.test"

        def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
            # The gateway is on no connected network: the route step fails after
            # the move, and the whole attach is rolled back.
            return InterfacePlan.move(
                device.name,
                device.ifname or "",
                routes=(Route("10.50.0.0/16", gateway="10.99.99.99"),),
            )

    d = Unroutable(_options(host))
    await d.rescan()
    await _prepare(d, _claim(host.nics[0]))
    pod_ns = host.new_pod_ns()
    with pytest.raises(KndError):
        await d.attach_pod(_pod(pod_ns))
    assert d.open_store().attachments() == []
    assert host.nics[0] in host.links()
    assert "net1" not in host.links(pod_ns)


async def test_attach_name_taken_in_pod_leaves_link_on_host(host: Host) -> None:
    # The kernel moves the link, then refuses the new name (EEXIST) in the same
    # RTM_NEWLINK: the attach must still leave the link on the host.
    d = Hello(_options(host))
    await d.rescan()
    await _prepare(d, _claim(host.nics[0]))
    pod_ns = host.new_pod_ns()
    _ip("-n", Path(pod_ns).name, "link", "add", "net1", "type", "veth", "peer", "name", "x1")
    with pytest.raises(KndError):
        await d.attach_pod(_pod(pod_ns))
    assert d.open_store().attachments() == []
    assert host.nics[0] in host.links()


async def test_late_attach_is_undone(host: Host) -> None:
    d = Hello(_options(host))
    await d.rescan()
    await _prepare(d, _claim(host.nics[0]))
    pod_ns = host.new_pod_ns()
    await d.attach_pod(_pod(pod_ns), cancelled=lambda: True)
    assert host.nics[0] in host.links()
    assert "net1" not in host.links(pod_ns)
    assert d.open_store().attachments() == []


async def test_reconcile_after_restart(host: Host) -> None:
    d = Hello(_options(host))
    await d.rescan()
    nic0, nic1 = host.nics
    await _prepare(d, _claim(nic0))
    await _prepare(d, _claim2(nic1))
    ns_a, ns_b = host.new_pod_ns(), host.new_pod_ns()
    await d.attach_pod(_pod(ns_a, uid="pod-uid-0"))
    # pod-uid-1 was never attached (the driver was down during RunPodSandbox).
    d.open_store().close()
    d.store = None

    # "Restart": a new driver instance on the same state.
    d2 = Hello(_options(host))
    await d2.rescan()
    # pod-uid-0 is gone, pod-uid-1 is alive: 0 detached, 1 attached.
    await d2.reconcile([_pod(ns_b, uid="pod-uid-1")])
    assert nic0 in host.links()
    assert nic1 not in host.links() and "net1" in host.links(ns_b)
    atts = {a.pod_uid: a.phase for a in d2.open_store().attachments()}
    assert atts == {"pod-uid-1": AttachPhase.ATTACHED}

    # An ATTACHING record of a live pod: detached, then attached again.
    store = d2.open_store()
    att = store.get_attachment("pod-uid-1")
    assert att is not None
    store.put_attachment(AttachmentRecord(**{**att.__dict__, "phase": AttachPhase.ATTACHING}))
    await d2.reconcile([_pod(ns_b, uid="pod-uid-1")])
    assert "net1" in host.links(ns_b)
    att2 = store.get_attachment("pod-uid-1")
    assert att2 is not None and att2.phase is AttachPhase.ATTACHED
    # DETACHING of a pod still alive: finished (detached, not re-attached: the
    # runtime was stopping it).
    store.put_attachment(AttachmentRecord(**{**att2.__dict__, "phase": AttachPhase.DETACHING}))
    await d2.reconcile([])
    assert nic1 in host.links()
    assert store.attachments() == []


def _claim2(device: str) -> Claim:
    c = _claim(device)
    return Claim(
        c.namespace, "claim-b", "uid-b", (PodRef("ns", "pod1", "pod-uid-1"),), c.devices, "1"
    )


async def test_unprepare_detaches_and_releases(host: Host) -> None:
    released: list[list[str]] = []

    class Releasing(Hello):
        name = "releasing.kndkit.test"

        async def release(self, plans: Sequence[InterfacePlan], record: ClaimRecord) -> None:
            released.append([p.device for p in plans])

    d = Releasing(_options(host))
    await d.rescan()
    rec = await _prepare(d, _claim(host.nics[0]))
    pod_ns = host.new_pod_ns()
    await d.attach_pod(_pod(pod_ns))
    await d.unprepare_claim(rec)
    assert released == [[host.nics[0]]]
    assert host.nics[0] in host.links()
    assert d.open_store().attachments() == []


# --------------------------------------------------------------------------- NRI subscription


def test_create_container_subscription(host: Host) -> None:
    class Inject(Hello):
        name = "inject.kndkit.test"

        async def on_create_container(
            self, pod: Pod, container: Container, plans: Sequence[InterfacePlan]
        ) -> None:
            return None

    class Declared(Hello):
        name = "declared.kndkit.test"
        inject_devices = True

    async def events(cls: type[NetworkDriver]) -> frozenset[Event]:
        return frozenset(_make_nri_plugin(cls(_options(host))).events)

    plain = asyncio.run(events(Hello))
    assert Event.CREATE_CONTAINER not in plain
    assert {Event.RUN_POD_SANDBOX, Event.STOP_POD_SANDBOX, Event.REMOVE_POD_SANDBOX} <= plain
    assert Event.CREATE_CONTAINER in asyncio.run(events(Inject))
    assert Event.CREATE_CONTAINER in asyncio.run(events(Declared))
    assert _make_nri_plugin(Hello(_options(host))).qualified_name == "10-hello"


async def test_default_injection_of_rdma_char_devices(host: Host) -> None:
    class Declared(Hello):
        name = "declared.kndkit.test"
        inject_devices = True

    d = Declared(_options(host))
    plan = InterfacePlan(
        device="ib0",
        kind="rdma",
        rdma=RdmaPlan(
            device="mlx5_0",
            char_devices=(
                CharDevice("/dev/infiniband/uverbs0", major=231, minor=192, file_mode=0o660),
            ),
        ),
    )
    d.open_store().put_attachment(
        AttachmentRecord(
            pod_uid="pod-uid-0",
            pod_ref="ns/pod0",
            netns="/run/netns/x",
            phase=AttachPhase.ATTACHED,
            claim_uids=("c",),
            plans=[plan.to_json()],
        )
    )
    plugin = _make_nri_plugin(d)
    ctr = Container(id="c1", pod_sandbox_id="sb", name="c")
    adj = await plugin.create_container(_pod("/run/netns/x"), ctr)
    assert [(x.path, x.major, x.minor, x.file_mode) for x in adj.devices] == [
        ("/dev/infiniband/uverbs0", 231, 192, 0o660)
    ]
    # A pod without an attachment gets nothing.
    assert await plugin.create_container(_pod("/run/netns/y", uid="other"), ctr) is None


async def test_default_injection_adds_shared_rdma_cm_once(host: Host) -> None:
    """Two RDMA devices in one pod share /dev/infiniband/rdma_cm: the runtime
    refuses an adjustment that sets one path twice."""

    class Declared(Hello):
        name = "declared.kndkit.test"
        inject_devices = True

    d = Declared(_options(host))
    cm = CharDevice("/dev/infiniband/rdma_cm", major=10, minor=123, file_mode=0o666)
    plans = [
        InterfacePlan(
            device=f"ib{i}",
            kind="rdma",
            rdma=RdmaPlan(
                device=f"mlx5_{i}",
                char_devices=(
                    CharDevice(f"/dev/infiniband/uverbs{i}", major=231, minor=192 + i),
                    cm,
                ),
            ),
        )
        for i in range(2)
    ]
    ctr = Container(id="c1", pod_sandbox_id="sb", name="c")
    adj = await d.on_create_container(_pod("/run/netns/x"), ctr, plans)
    assert adj is not None
    assert sorted(x.path for x in adj.devices) == [
        "/dev/infiniband/rdma_cm",
        "/dev/infiniband/uverbs0",
        "/dev/infiniband/uverbs1",
    ]
    assert (
        await d.on_create_container(_pod("/run/netns/x"), ctr, [InterfacePlan.move("eth", "eth0")])
        is None
    )


async def test_attach_not_fully_rolled_back_is_detached(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed attach whose rollback left links behind (``rolled_back`` false)
    is detached before the record goes: nothing stays stranded in the pod."""
    d = Hello(_options(host))
    await d.rescan()
    nic = host.nics[0]
    before = host.links()[nic]
    await _prepare(d, _claim(nic, config={"name": "eth7"}))
    pod_ns = host.new_pod_ns()
    real = d._attach_blocking

    class HalfRolledBack(KndError):
        rolled_back = False

    def attach_then_fail(plans: Any, netns: str) -> Any:
        real(plans, netns)  # the NIC really is in the pod now
        raise HalfRolledBack("simulated: a later step failed and its rollback did not finish")

    monkeypatch.setattr(d, "_attach_blocking", attach_then_fail)
    with pytest.raises(HalfRolledBack):
        await d.attach_pod(_pod(pod_ns))
    assert "eth7" not in host.links(pod_ns)
    after = host.links()[nic]
    assert (after["mtu"], after["mac"], after["up"]) == (before["mtu"], before["mac"], before["up"])
    assert d.open_store().get_attachment("pod-uid-0") is None
