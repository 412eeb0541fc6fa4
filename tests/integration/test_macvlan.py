"""The macvlan example driver against the real kernel.

A host namespace stands in for the node: its "NIC" ``par0`` is one end of a veth
pair whose other end sits in a fabric namespace holding the gateway address.
Three pod namespaces get macvlan sub-interfaces of ``par0`` created directly
inside them by the driver's own prepare/attach/detach/unprepare paths (the
same methods the kubelet and NRI handlers call), and traffic really flows:
each pod opens TCP connections to the gateway and to the other pods.

The claims are built here as the claim reader would build them from the API
server; the kernel, the IPAM file and the state store are real.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kndkit import netlink as nl
from kndkit._native import NetNs
from kndkit.driver import DriverOptions
from kndkit.errors import InvalidArgument, KndError, NotAvailable
from kndkit.examples.macvlan import Macvlan, MacvlanSettings, ipvlan_supported
from kndkit.ipam import Ipam, IpamExhausted
from kndkit.k8s.claims import AllocatedDevice, Claim, PodRef
from kndkit.k8s.errors import ConfigError
from kndkit.nri.model import Namespace, Pod
from kndkit.plan import InterfacePlan
from kndkit.state import ClaimPhase, ClaimRecord

pytestmark = pytest.mark.netns

NODE = "node-m"
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class Node:
    host: str  # netns names
    fabric: str
    pods: list[str]
    state_dir: Path

    @property
    def host_path(self) -> str:
        return f"/run/netns/{self.host}"

    def options(self, **params: Any) -> DriverOptions:
        base = {"parent": "par0", "ranges": "10.77.0.0/24", "gateway": "10.77.0.1", "slots": "4"}
        base.update(params)
        return DriverOptions(
            node_name=NODE,
            host_netns=self.host_path,
            state_dir=str(self.state_dir),
            metrics_port=None,
            params={k: v for k, v in base.items() if v is not None},
        )

    def pod(self, i: int) -> Pod:
        return Pod(
            id=f"sandbox-{i}",
            name=f"pod{i}",
            namespace="default",
            uid=f"pod-uid-{i}",
            namespaces=(Namespace("network", f"/run/netns/{self.pods[i]}"),),
        )

    def host_snapshot(self) -> list[list[Any]]:
        """Links, addresses and routes of the host namespace, less what the kernel
        derives on its own and at its own pace (IPv6 link-local addresses, the
        local table, routes of protocol kernel or ra)."""
        with NetNs.open(self.host_path) as ns:
            links = sorted(
                (lk["name"], lk["kind"], lk["mtu"], lk["mac"], lk["up"]) for lk in nl.dump_links(ns)
            )
            addrs = sorted(
                a["cidr"] for a in nl.dump_addresses(ns) if not a["address"].startswith("fe80:")
            )
            routes = sorted(
                (r["dst"], r["gateway"], r["oif"], r["table"])
                for r in nl.dump_routes(ns)
                if r["table"] != 255 and r["protocol"] not in (2, 9)
            )
        return [links, addrs, routes]


@pytest.fixture
def node() -> Iterator[Node]:
    u = f"{os.getpid() % 100000}{next(_counter)}"
    n = Node(
        host=f"knm-h{u}",
        fabric=f"knm-f{u}",
        pods=[f"knm-p{u}-{i}" for i in range(3)],
        state_dir=Path(tempfile.mkdtemp(prefix="knd-mv-", dir="/tmp")),
    )
    try:
        for name in (n.host, n.fabric, *n.pods):
            _ip("netns", "add", name)
        _ip(
            "-n",
            n.host,
            "link",
            "add",
            "par0",
            "type",
            "veth",
            "peer",
            "name",
            "gw0",
            "netns",
            n.fabric,
        )
        _ip("-n", n.host, "link", "set", "par0", "up")
        _ip("-n", n.host, "link", "set", "lo", "up")
        _ip("-n", n.fabric, "addr", "add", "10.77.0.1/24", "dev", "gw0")
        _ip("-n", n.fabric, "link", "set", "gw0", "up")
        yield n
    finally:
        for name in (*n.pods, n.fabric, n.host):
            _ip("netns", "del", name, check=False)
        shutil.rmtree(n.state_dir, ignore_errors=True)


@pytest.fixture
async def driver(node: Node) -> AsyncIterator[Macvlan]:
    d = Macvlan(node.options())
    try:
        await d.rescan()
        yield d
    finally:
        close(d)


def close(d: Macvlan) -> None:
    if d.ipam is not None:
        d.ipam.close()
    if d.store is not None:
        d.store.close()
        d.store = None
    if d.host_ns is not None:
        d.host_ns.close()


def claim(i: int, device: str, *, config: dict[str, Any] | None = None, pods: int = 1) -> Claim:
    layers = (config,) if config else ()
    return Claim(
        namespace="default",
        name=f"claim-{i}",
        uid=f"claim-uid-{i}",
        pods=tuple(PodRef("default", f"pod{i + k}", f"pod-uid-{i + k}") for k in range(pods)),
        devices=(
            AllocatedDevice(
                request="nic",
                pool=NODE,
                device=device,
                config=config or {},
                claim=f"default/claim-{i}",
                config_layers=layers,
            ),
        ),
        resource_version="1",
    )


async def prepare(d: Macvlan, c: Claim) -> list[InterfacePlan]:
    """What the claim service does on NodePrepareResources: plan, then persist."""
    prepared = await d.prepare_claim(c)
    d.open_store().put(
        ClaimRecord.for_claim(
            c.ref(),
            ClaimPhase.PREPARED,
            devices=prepared.devices,
            plans=prepared.plans,
            pod_uids=[p.uid for p in c.pods],
        )
    )
    return [InterfacePlan.from_json(p) for p in prepared.plans]


async def unprepare(d: Macvlan, c: Claim) -> None:
    """What the claim service does on NodeUnprepareResources."""
    store = d.open_store()
    rec = store.get(c.uid)
    assert rec is not None
    await d.unprepare_claim(rec)
    store.delete(c.uid)


def pod_view(node: Node, i: int) -> dict[str, Any]:
    with NetNs.open(f"/run/netns/{node.pods[i]}") as ns:
        links = {lk["name"]: lk for lk in nl.dump_links(ns)}
        addrs = [a["cidr"] for a in nl.dump_addresses(ns) if a["family"] == "inet"]
        routes = [(r["dst"], r["gateway"]) for r in nl.dump_routes(ns) if r["family"] == "inet"]
    return {"links": links, "addrs": addrs, "routes": routes}


_LISTEN = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777))
s.listen(1)
s.settimeout(10)
print("listening", flush=True)
c, peer = s.accept()
c.sendall(peer[0].encode())
c.close()
"""
_CONNECT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7777), timeout=5)
print(c.recv(64).decode())
"""


def reach(src_ns: str, dst_ns: str, ip: str) -> str | None:
    """A TCP connection from namespace ``src_ns`` to ``ip`` (listening in ``dst_ns``):
    the source address the listener saw, or None when it failed."""
    exe = sys.executable
    listener = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, exe, "-c", _LISTEN, ip],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        if listener.stdout.readline().strip() != "listening":
            return None
        r = subprocess.run(
            ["ip", "netns", "exec", src_ns, exe, "-c", _CONNECT, ip],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return r.stdout.strip() if r.returncode == 0 else None
    finally:
        listener.kill()
        listener.communicate()


def reaches_gateway(node: Node, i: int) -> bool:
    ip: str = pod_view(node, i)["addrs"][0].split("/")[0]
    return reach(node.pods[i], node.fabric, "10.77.0.1") == ip


def reaches_pod(node: Node, i: int, j: int) -> bool:
    src: str = pod_view(node, i)["addrs"][0].split("/")[0]
    dst: str = pod_view(node, j)["addrs"][0].split("/")[0]
    return reach(node.pods[i], node.pods[j], dst) == src


# --------------------------------------------------------------------------- tests


async def test_slots_are_published_with_the_parent(driver: Macvlan) -> None:
    names = sorted(driver.devices)
    assert names == [f"par0-slot-{i}" for i in range(4)]
    attrs = driver.devices["par0-slot-2"].device.attributes
    assert attrs["parent"] == "par0"
    assert attrs["mode"] == "bridge"
    assert attrs["type"] == "macvlan"
    assert attrs["slot"] == 2
    assert driver.devices["par0-slot-2"].ifname == "par0"


async def test_three_pods_get_macvlans_inside_with_distinct_addresses(
    node: Node, driver: Macvlan
) -> None:
    before = node.host_snapshot()
    claims = [claim(i, f"par0-slot-{i}") for i in range(3)]
    plans = [(await prepare(driver, c))[0] for c in claims]
    addrs = [p.addresses[0] for p in plans]
    assert len(set(addrs)) == 3
    assert all(
        a.startswith("10.77.0.") and a.endswith("/24") and a != "10.77.0.1/24" for a in addrs
    )
    for p, c in zip(plans, claims, strict=True):
        assert p.kind == "macvlan" and p.host_ifname == "par0" and p.mode == "bridge"
        assert p.name == "net1"
        slot = int(p.device.rsplit("-", 1)[1])
        assert [(r.destination, r.gateway, r.metric) for r in p.routes] == [
            ("0.0.0.0/0", "10.77.0.1", 100 + slot)
        ]
        assert p.extra["ipam"]["owner"] == f"{c.uid}/{p.device}"
    leases = {lease.owner: lease.addresses[0] for lease in driver.ipam.leases()}  # type: ignore[union-attr]
    assert sorted(leases.values()) == sorted(addrs)

    for i in range(3):
        assert await driver.attach_pod(node.pod(i))
    # the sub-interfaces were created in the pods: nothing new on the host
    assert node.host_snapshot() == before
    for i in range(3):
        view = pod_view(node, i)
        net1 = view["links"]["net1"]
        assert net1["kind"] == "macvlan" and net1["up"]
        assert view["addrs"] == [addrs[i]]
        assert ("0.0.0.0/0", "10.77.0.1") in view["routes"] or ("default", "10.77.0.1") in view[
            "routes"
        ]
    # real traffic: every pod reaches the gateway and its neighbours through par0
    for i in range(3):
        assert reaches_gateway(node, i), f"pod {i} cannot reach the gateway"
    assert reaches_pod(node, 0, 1)
    assert reaches_pod(node, 2, 0)

    for i in range(3):
        assert await driver.detach_pod(f"pod-uid-{i}")
        assert "net1" not in pod_view(node, i)["links"]
    assert node.host_snapshot() == before
    # detached but still prepared: the leases stay
    assert len(driver.ipam.leases()) == 3  # type: ignore[union-attr]
    for c in claims:
        await unprepare(driver, c)
    assert driver.ipam.leases() == []  # type: ignore[union-attr]
    assert node.host_snapshot() == before


async def test_dual_stack_and_extra_routes(node: Node) -> None:
    _ip("-n", node.fabric, "addr", "add", "fd77::1/64", "dev", "gw0", "nodad")
    d = Macvlan(
        node.options(
            ranges="10.77.0.0/24,fd77::/64",
            gateway="10.77.0.1,fd77::1",
            routes="default,10.90.0.0/16,fd90::/48",
        )
    )
    try:
        await d.rescan()
        p = (await prepare(d, claim(0, "par0-slot-0")))[0]
        assert p.addresses == ("10.77.0.2/24", "fd77::2/64")
        assert [(r.destination, r.gateway, r.metric) for r in p.routes] == [
            ("0.0.0.0/0", "10.77.0.1", 100),
            ("10.90.0.0/16", "10.77.0.1", 100),
            ("::/0", "fd77::1", 100),
            ("fd90::/48", "fd77::1", 100),
        ]
        assert await d.attach_pod(node.pod(0))
        with NetNs.open(f"/run/netns/{node.pods[0]}") as ns:
            net1 = next(lk for lk in nl.dump_links(ns) if lk["name"] == "net1")["ifindex"]
            addrs = {a["cidr"] for a in nl.dump_addresses(ns) if a["ifindex"] == net1}
            routes = {(r["dst"], r["gateway"]) for r in nl.dump_routes(ns) if r["oif"] == net1}
        assert {"10.77.0.2/24", "fd77::2/64"} <= addrs
        assert {("10.90.0.0/16", "10.77.0.1"), ("fd90::/48", "fd77::1")} <= routes
        assert any(gw == "fd77::1" and dst in ("::/0", "default") for dst, gw in routes)
        assert reaches_gateway(node, 0)
        assert await d.detach_pod("pod-uid-0")
        await unprepare(d, claim(0, "par0-slot-0"))
        assert d.ipam is not None and d.ipam.leases() == []
    finally:
        close(d)


async def test_200_pods_in_sequence_leak_nothing(node: Node, driver: Macvlan) -> None:
    before = node.host_snapshot()
    seen: set[str] = set()
    for n in range(200):
        i = n % 3  # the three pod namespaces in turn, one pod at a time in each
        c = Claim(
            namespace="default",
            name=f"churn-{n}",
            uid=f"churn-uid-{n}",
            pods=(PodRef("default", f"pod{i}", f"pod-uid-{i}"),),
            devices=(AllocatedDevice(request="nic", pool=NODE, device=f"par0-slot-{i}"),),
            resource_version="1",
        )
        plan = (await prepare(driver, c))[0]
        seen.add(plan.addresses[0])
        assert await driver.attach_pod(node.pod(i))
        assert pod_view(node, i)["addrs"] == list(plan.addresses)
        assert await driver.detach_pod(f"pod-uid-{i}")
        await unprepare(driver, c)
    assert driver.ipam is not None and driver.ipam.leases() == []
    # round robin: 200 pods went through 200 different addresses of the /24 (253 usable)
    assert len(seen) == 200
    for i in range(3):
        assert set(pod_view(node, i)["links"]) == {"lo"}
    assert node.host_snapshot() == before
    assert driver.open_store().attachments() == [] and len(driver.open_store()) == 0


async def test_no_address_twice_and_released_on_unprepare(node: Node) -> None:
    d = Macvlan(node.options(ranges="10.77.0.2-10.77.0.3/24", slots="3"))
    try:
        await d.rescan()
        p0 = (await prepare(d, claim(0, "par0-slot-0")))[0]
        p1 = (await prepare(d, claim(1, "par0-slot-1")))[0]
        assert {p0.addresses[0], p1.addresses[0]} == {"10.77.0.2/24", "10.77.0.3/24"}
        # the range is used up: the third claim fails at prepare, naming the range
        with pytest.raises(IpamExhausted, match=r"10\.77\.0\.2-10\.77\.0\.3/24"):
            await prepare(d, claim(2, "par0-slot-2"))
        # a claim for two slots when one address is left: refused, and the lease
        # its first device took is given back (the framework calls release())
        two = Claim(
            namespace="default",
            name="claim-two",
            uid="claim-uid-two",
            pods=(PodRef("default", "pod2", "pod-uid-2"),),
            devices=tuple(
                AllocatedDevice(request="nic", pool=NODE, device=f"par0-slot-{i}") for i in (2, 0)
            ),
            resource_version="1",
        )
        await unprepare(d, claim(1, "par0-slot-1"))
        with pytest.raises(IpamExhausted):
            await d.prepare_claim(two)
        assert [lease.owner for lease in d.ipam.leases()] == ["claim-uid-0/par0-slot-0"]  # type: ignore[union-attr]
        p1 = (await prepare(d, claim(1, "par0-slot-1")))[0]
        # preparing again is idempotent (the kubelet retries): same address
        assert (await prepare(d, claim(0, "par0-slot-0")))[0].addresses == p0.addresses
        await unprepare(d, claim(0, "par0-slot-0"))
        p2 = (await prepare(d, claim(2, "par0-slot-2")))[0]
        assert p2.addresses == p0.addresses  # the freed address, and only that one
        assert p2.addresses != p1.addresses
    finally:
        close(d)


async def test_restart_keeps_leases_and_attachments(node: Node) -> None:
    d = Macvlan(node.options())
    await d.rescan()
    plans = [(await prepare(d, claim(i, f"par0-slot-{i}")))[0] for i in range(2)]
    assert await d.attach_pod(node.pod(0))
    close(d)  # the process dies; a new one opens the same files

    d2 = Macvlan(node.options())
    try:
        await d2.rescan()
        assert d2.release_orphaned_leases() == []  # every lease has its claim
        assert sorted(lease.addresses[0] for lease in d2.ipam.leases()) == sorted(  # type: ignore[union-attr]
            p.addresses[0] for p in plans
        )
        p_new = (await prepare(d2, claim(2, "par0-slot-2")))[0]
        assert p_new.addresses[0] not in {p.addresses[0] for p in plans}
        assert await d2.attach_pod(node.pod(1))
        views = [pod_view(node, i)["addrs"] for i in range(2)]
        assert views == [list(plans[0].addresses), list(plans[1].addresses)]
        assert reaches_pod(node, 1, 0)
        for i in range(2):
            assert await d2.detach_pod(f"pod-uid-{i}")
        for i in range(3):
            await unprepare(d2, claim(i, f"par0-slot-{i}"))
        assert d2.ipam.leases() == []  # type: ignore[union-attr]
    finally:
        close(d2)


async def test_orphaned_lease_is_freed_at_start(node: Node) -> None:
    d = Macvlan(node.options())
    await d.rescan()
    await prepare(d, claim(0, "par0-slot-0"))
    # a prepare that allocated and then crashed before its record was stored
    assert d.ipam is not None
    d.ipam.allocate("claim-uid-9/par0-slot-1")
    close(d)
    d2 = Macvlan(node.options())
    try:
        d2.claims = object()  # type: ignore[assignment]  # replay done (run() sets it)
        await d2.rescan()
        assert d2.ipam is not None
        assert [lease.owner for lease in d2.ipam.leases()] == ["claim-uid-0/par0-slot-0"]
    finally:
        d2.claims = None
        close(d2)


async def test_config_overrides_and_validation(node: Node, driver: Macvlan) -> None:
    cfg = {"name": "eth9", "mtu": 1400, "addresses": ["10.77.0.200/24"]}
    p = (await prepare(driver, claim(0, "par0-slot-0", config=cfg)))[0]
    assert (p.name, p.mtu, p.addresses) == ("eth9", 1400, ("10.77.0.200/24",))
    assert p.extra == {}
    assert driver.ipam.leases() == []  # type: ignore[union-attr]  # no lease taken
    assert await driver.attach_pod(node.pod(0))
    eth9 = pod_view(node, 0)["links"]["eth9"]
    assert eth9["mtu"] == 1400 and eth9["kind"] == "macvlan"
    assert reaches_gateway(node, 0)
    assert await driver.detach_pod("pod-uid-0")

    bad: list[tuple[dict[str, Any], str]] = [
        ({"mtu": "1400"}, "mtu"),
        ({"mtu": 20}, "mtu"),
        ({"mtu": 9000}, "above the MTU of the parent par0 (1500)"),
        ({"name": "way-too-long-name0"}, "name"),
        ({"addresses": ["10.0.0.1"]}, "addresses"),
        ({"vlan": 3}, "vlan"),
    ]
    for config, field_name in bad:
        with pytest.raises(ConfigError) as e:
            await driver.prepare_claim(claim(1, "par0-slot-1", config=config))
        assert field_name in (e.value.field + str(e.value))
    assert driver.ipam.leases() == []  # type: ignore[union-attr]


async def test_claim_with_two_slots_gives_net1_and_net2(node: Node, driver: Macvlan) -> None:
    c = Claim(
        namespace="default",
        name="claim-two",
        uid="claim-uid-two",
        pods=(PodRef("default", "pod0", "pod-uid-0"),),
        devices=tuple(
            AllocatedDevice(request="nic", pool=NODE, device=f"par0-slot-{i}") for i in (3, 1)
        ),
        resource_version="1",
    )
    plans = await prepare(driver, c)
    assert [(p.device, p.name) for p in plans] == [("par0-slot-3", "net1"), ("par0-slot-1", "net2")]
    assert await driver.attach_pod(node.pod(0))
    view = pod_view(node, 0)
    assert {"net1", "net2"} <= set(view["links"])
    assert sorted(view["addrs"]) == sorted(a for p in plans for a in p.addresses)
    with NetNs.open(f"/run/netns/{node.pods[0]}") as ns:
        defaults = sorted(
            (r["metric"], r["gateway"])
            for r in nl.dump_routes(ns)
            if r["dst"] in ("0.0.0.0/0", "default") and r["family"] == "inet"
        )
    assert defaults == [(101, "10.77.0.1"), (103, "10.77.0.1")]
    assert await driver.detach_pod("pod-uid-0")
    assert set(pod_view(node, 0)["links"]) == {"lo"}
    await unprepare(driver, c)
    assert driver.ipam is not None and driver.ipam.leases() == []


async def test_claim_for_two_pods_is_refused(driver: Macvlan) -> None:
    with pytest.raises(ConfigError, match="reserved for 2 pods"):
        await driver.prepare_claim(claim(0, "par0-slot-0", pods=2))
    assert driver.ipam.leases() == []  # type: ignore[union-attr]


def test_settings_are_checked(node: Node) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"parent": None}, "parent"),
        ({"mode": "bogus"}, "mode"),
        ({"slots": "many"}, "slots"),
        ({"slots": "0"}, "slots"),
        ({"metric": "-1"}, "metric"),
        ({"metric": True}, "metric"),
        ({"ranges": "10.77.0.0/33"}, "10.77.0.0/33"),
        ({"gateway": "10.99.0.1"}, "gateway"),
        ({"ranges": None, "gateway": "10.77.0.1"}, "gateway"),
        ({"routes": "10.1.0.0/16", "gateway": None}, "routes"),
        ({"mode": "passthru"}, "passthru"),
        ({"colour": "blue"}, "colour"),
    ]
    for params, words in cases:
        with pytest.raises(InvalidArgument, match=words):
            Macvlan(node.options(**params))
    s = MacvlanSettings.from_params(
        {"parent": "par0", "range": ["10.1.0.0/24", "fd00::/64"], "gateway": "10.1.0.1,fd00::1"}
    )
    assert s.ranges == ("10.1.0.0/24", "fd00::/64") and s.routes == ("default",)
    assert MacvlanSettings.from_params({"parent": "p", "mode": "ipvlan-l3"}).link_mode == "l3"


def test_ipvlan_is_refused_at_start_when_the_kernel_lacks_it(node: Node) -> None:
    ok, why = ipvlan_supported()
    if ok:
        d = Macvlan(node.options(mode="ipvlan-l2"))
        close(d)
        return
    assert "Unknown device type" in why or "EOPNOTSUPP" in why
    with pytest.raises(NotAvailable, match=r"mode ipvlan-l2 needs ipvlan.*refuses") as e:
        Macvlan(node.options(mode="ipvlan-l2"))
    assert isinstance(e.value, KndError)
    # the probe left nothing behind in the caller's namespace
    assert not [lk for lk in nl.dump_links() if lk["name"].startswith("kp")]


# --------------------------------------------------------------------------- through the peers


def _claim_ips(sim: Any, pod: Any) -> list[str]:
    """networkData IPs the driver wrote into the status of the pod's claim."""
    claim_obj = sim.api.get(pod.claims[0])
    devs = (claim_obj.get("status") or {}).get("devices") or []
    return [ip for d in devs for ip in (d.get("networkData") or {}).get("ips") or []]


def _wait(pred: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_end_to_end_through_the_peers() -> None:
    """``kndkit run macvlan`` against kube-apiserver, the allocator, the kubelet
    harness and the NRI runtime: three pods, a SIGKILL between prepare and
    RunPodSandbox, release on unprepare, nothing left on the host."""
    from kndkit.testing.node import ClaimSpec, SimulatedNode

    name = f"mv{os.getpid() % 10000}"
    with SimulatedNode.start(node_name=name, nics=0) as sim:
        sim.add_nic("eth1")
        fabric = Path(sim.fabric_netns).name
        with NetNs.open(sim.fabric_netns) as fab:
            peer = next(lk["name"] for lk in nl.dump_links(fab) if lk["name"] != "lo")
        _ip("-n", fabric, "addr", "add", "10.78.0.1/24", "dev", peer)
        before = sim.snapshot()
        drv = sim.start_driver(
            "macvlan",
            params={"parent": "eth1", "ranges": "10.78.0.0/24", "gateway": "10.78.0.1", "slots": 4},
        )
        assert sim.wait_devices(drv.name, at_least=4) == [f"eth1-slot-{i}" for i in range(4)]
        pods = [sim.new_pod(f"p{i}", claims=[ClaimSpec(driver=drv.name)]) for i in range(3)]
        for p in pods[:2]:
            sim.start_pod(p)
        # the third pod is prepared, then the driver dies before RunPodSandbox
        sim.schedule(pods[2])
        sim.prepare(pods[2])
        ipam_files = list(sim.workdir.glob("state-*/ipam.sqlite"))
        assert len(ipam_files) == 1
        ipam = Ipam(ipam_files[0], ["10.78.0.0/24"], gateway="10.78.0.1")
        leased = {lease.owner.split("/")[0]: lease.addresses[0] for lease in ipam.leases()}
        assert len(leased) == 3
        drv.restart(kill=True)
        sim.run_pod(pods[2])

        addrs = []
        for p in pods:
            with NetNs.open(str(p.netns)) as ns:
                links = {lk["name"]: lk for lk in nl.dump_links(ns)}
                assert links["net1"]["kind"] == "macvlan"
                net1 = links["net1"]["ifindex"]
                a = [
                    x["cidr"]
                    for x in nl.dump_addresses(ns)
                    if x["ifindex"] == net1 and x["family"] == "inet"
                ]
            assert len(a) == 1 and a[0].startswith("10.78.0.")
            addrs.append(a[0])
            ip = a[0].split("/")[0]
            assert reach(p.netns.name, fabric, "10.78.0.1") == ip  # type: ignore[union-attr]
            _wait(lambda p=p, ip=ip: ip in " ".join(_claim_ips(sim, p)), f"status of {p.ref}")
        assert len(set(addrs)) == 3
        # the leases survived the crash: each pod has the address leased at prepare
        uids = [str(p.claims[0]["metadata"]["uid"]) for p in pods]
        assert addrs == [leased[u] for u in uids]
        assert sim.snapshot() == before  # sub-interfaces only inside the pods

        with ipam:
            # the driver dies while pod 0 stops: it is detached after the restart
            # (NRI Synchronize) and its lease freed at unprepare
            drv.kill()
            sim.stop_pod(pods[0])
            sim.remove_pod(pods[0])
            drv.restart()
            sim.unprepare(pods[0])
            assert sorted(lease.addresses[0] for lease in ipam.leases()) == sorted(addrs[1:])
            for p in pods[1:]:
                sim.delete_pod(p)
            assert ipam.leases() == []
        assert sim.snapshot() == before
        assert "Traceback" not in drv.logs()
