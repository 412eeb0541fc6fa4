"""The netdev driver's prepare path and plan steps on a real kernel.

A host namespace stands in for the node (its "NIC" is a veth whose peer sits in
a fabric namespace; another veth carries the default route, so it is the
uplink), a pod namespace for the pod. The driver discovers the NIC, prepares a
claim (config merged, validated, planned by the steps, host state captured),
and the plans it persisted are attached and detached with :mod:`kndkit.plan`;
the host must come back exactly as it was.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from kndkit import _native
from kndkit import netlink as nl
from kndkit import plan as kplan
from kndkit._native import NetNs
from kndkit.driver import DriverOptions
from kndkit.examples.netdev import Netdev
from kndkit.k8s.claims import AllocatedDevice, Claim, PodRef
from kndkit.k8s.errors import ConfigError
from kndkit.plan import InterfacePlan, Neighbor, Route, Rule

pytestmark = pytest.mark.netns

_counter = itertools.count()
NIC_MAC = "02:00:00:77:00:02"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Env:
    """host / pod / fabric namespaces; ``nic0`` in the host, configured like a NIC."""

    def __init__(self) -> None:
        u = f"{os.getpid() % 100000}{next(_counter)}"
        self.names = {k: f"knn-{k[0]}{u}" for k in ("host", "pod", "fabric")}
        for n in self.names.values():
            _ip("netns", "add", n)
        self.tmp = tempfile.mkdtemp(prefix="knd-", dir="/tmp")
        h, f = self.names["host"], self.names["fabric"]
        # the uplink: carries the default route, must not be published
        _ip("-n", h, "link", "add", "up0", "type", "veth", "peer", "name", "upf", "netns", f)
        _ip("-n", h, "link", "set", "up0", "up")
        _ip("-n", h, "addr", "add", "172.31.0.2/24", "dev", "up0")
        _ip("-n", h, "route", "add", "default", "via", "172.31.0.1")
        # the NIC
        _ip("-n", h, "link", "add", "nic0", "type", "veth", "peer", "name", "fab0", "netns", f)
        _ip("-n", h, "link", "set", "nic0", "mtu", "1400", "address", NIC_MAC, "alias", "fast nic")
        _ip("-n", h, "link", "set", "nic0", "up")
        _ip("-n", h, "addr", "add", "192.168.77.2/24", "dev", "nic0")
        _ip("-n", h, "addr", "add", "fd77::2/64", "dev", "nic0", "nodad")
        _ip("-n", h, "route", "add", "10.77.0.0/16", "via", "192.168.77.1", "dev", "nic0")
        _ip(
            "-n",
            h,
            "route",
            "add",
            "10.78.0.0/16",
            "via",
            "192.168.77.1",
            "dev",
            "nic0",
            "table",
            "100",
        )
        _ip("-n", h, "rule", "add", "from", "192.168.77.0/24", "lookup", "100", "pref", "1000")
        _ip(
            "-n",
            h,
            "neigh",
            "add",
            "192.168.77.1",
            "lladdr",
            "02:00:00:77:00:01",
            "dev",
            "nic0",
            "nud",
            "permanent",
        )
        self.host = NetNs.open(f"/run/netns/{h}")
        self.pod = NetNs.open(f"/run/netns/{self.names['pod']}")

    def driver(self, **params: Any) -> Netdev:
        return Netdev(
            DriverOptions(
                node_name="node-a",
                host_netns=f"/run/netns/{self.names['host']}",
                state_dir=self.tmp,
                metrics_port=None,
                params=params,
            )
        )

    def close(self) -> None:
        self.host.close()
        self.pod.close()
        for n in self.names.values():
            _ip("netns", "del", n, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


def snapshot(ns: NetNs) -> dict[str, Any]:
    """Links, addresses, routes, rules and permanent neighbours, by link name."""
    links = nl.dump_links(ns)
    name = {lk["ifindex"]: lk["name"] for lk in links}
    return {
        "links": sorted(
            (
                lk["name"],
                lk["mtu"],
                lk["mac"],
                lk["up"],
                lk["alias"],
                lk["master"],
                lk["gso_max_size"],
                lk["gro_max_size"],
            )
            for lk in links
        ),
        "addresses": sorted(
            (name[a["ifindex"]], a["cidr"]) for a in nl.dump_addresses(ns) if a["scope"] != 253
        ),
        "routes": sorted(
            (r["dst"], r["gateway"], r["table"], name.get(r["oif"] or 0), r["protocol"])
            for r in nl.dump_routes(ns)
            if r["table"] != 255 and not r["dst"].startswith("fe80:")
        ),
        "rules": sorted(
            (r["priority"] or 0, r["table"], r["src"] or "") for r in nl.dump_rules(ns)
        ),
        "neighbours": sorted(
            (name[n["ifindex"]], n["address"], n["lladdr"])
            for n in nl.dump_neighbours(ns)
            if n["state"] & 0x80
        ),
    }


def claim_for(device: str, *layers: dict[str, Any]) -> Claim:
    return Claim(
        namespace="default",
        name="c1",
        uid="uid-c1",
        pods=(PodRef("default", "p1", "uid-p1"),),
        devices=(
            AllocatedDevice(
                request="nic", pool="node-a", device=device, config_layers=tuple(layers)
            ),
        ),
        resource_version="1",
    )


async def test_discovery_publishes_the_nic_not_the_uplink(env: Env) -> None:
    drv = env.driver(filter="true")
    try:
        await drv.rescan()
        assert "nic0" in drv.devices
        assert "up0" not in drv.devices and "lo" not in drv.devices
        attrs = drv.devices["nic0"].device.attributes
        assert attrs["alias"] == "fast nic"
        assert attrs["encapsulation"] == "ether"
        assert attrs["type"] == "veth"
        assert attrs["mac"] == NIC_MAC
        if hasattr(_native, "dump_tc"):
            assert attrs["ebpf"] is False
            assert "tcFilterNames" not in attrs and "tcxProgramNames" not in attrs
        # the default filter drops veth, like DraNet's
        default = env.driver()
        try:
            await default.rescan()
            assert "nic0" not in default.devices
        finally:
            if default.host_ns is not None:
                default.host_ns.close()
        # a CEL filter on the published attributes
        pytest.importorskip("cel", reason="the optional CEL package is not installed")
        only_mtu = env.driver(filter='device.attributes["netdev.kndkit.dev"].mtu == 1400')
        try:
            await only_mtu.rescan()
            assert set(only_mtu.devices) == {"nic0"}
        finally:
            if only_mtu.host_ns is not None:
                only_mtu.host_ns.close()
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


async def test_prepare_attach_detach_restores_host(env: Env) -> None:
    drv = env.driver(filter="true")
    before = snapshot(env.host)
    try:
        await drv.rescan()
        cls_layer = {
            "interface": {"mtu": 1300},
            "routes": [{"destination": "10.79.0.0/16", "gateway": "192.168.77.1"}],
        }
        claim_layer = {
            "interface": {"name": "net1", "hardwareAddr": "02:00:00:77:00:99"},
            "routes": [{"destination": "10.80.0.0/16", "gateway": "192.168.77.1"}],
            "neighbors": [{"destination": "192.168.77.3", "hardwareAddr": "02:00:00:77:00:03"}],
        }
        prepared = await drv.prepare_claim(claim_for("nic0", cls_layer, claim_layer))
        plans = [InterfacePlan.from_json(p) for p in prepared.plans]
        assert snapshot(env.host) == before  # prepare changes nothing
        (p,) = plans
        assert (p.kind, p.host_ifname, p.name, p.mtu, p.mac) == (
            "move",
            "nic0",
            "net1",
            1300,
            "02:00:00:77:00:99",
        )
        assert set(p.addresses) == {"192.168.77.2/24", "fd77::2/64"}  # copied from the host
        assert Route("10.77.0.0/16", gateway="192.168.77.1") in [
            r.__class__(r.destination, r.gateway, table=r.table) for r in p.routes
        ]
        dests = [r.destination for r in p.routes]
        assert {"10.77.0.0/16", "10.78.0.0/16", "10.79.0.0/16", "10.80.0.0/16"} <= set(dests)
        assert Rule(table=100, priority=1000, source="192.168.77.0/24") in p.rules
        assert set(p.neighbors) == {
            Neighbor("192.168.77.1", "02:00:00:77:00:01"),
            Neighbor("192.168.77.3", "02:00:00:77:00:03"),
        }
        assert p.host is not None and p.host.mtu == 1400 and p.host.alias == "fast nic"

        result = await asyncio.to_thread(kplan.attach, plans, env.pod, host_ns=env.host)
        try:
            pod = snapshot(env.pod)
            net1 = next(lk for lk in pod["links"] if lk[0] == "net1")
            assert net1[1:4] == (1300, "02:00:00:77:00:99", True)
            assert ("net1", "192.168.77.2/24") in pod["addresses"]
            assert ("net1", "fd77::2/64") in pod["addresses"]
            routes = {(r[0], r[1], r[2]) for r in pod["routes"] if r[3] == "net1"}
            assert {
                ("10.77.0.0/16", "192.168.77.1", 254),
                ("10.78.0.0/16", "192.168.77.1", 100),
                ("10.79.0.0/16", "192.168.77.1", 254),
                ("10.80.0.0/16", "192.168.77.1", 254),
            } <= routes
            assert (1000, 100, "192.168.77.0/24") in pod["rules"]
            assert ("net1", "192.168.77.1", "02:00:00:77:00:01") in pod["neighbours"]
            assert ("net1", "192.168.77.3", "02:00:00:77:00:03") in pod["neighbours"]
            assert "nic0" not in [lk[0] for lk in snapshot(env.host)["links"]]
            assert set(result.pod_links) == {"nic0"}
        finally:
            det = await asyncio.to_thread(kplan.detach, plans, env.pod, host_ns=env.host)
        assert det.restored == ["nic0"] and not det.missing
        assert snapshot(env.host) == before
        # detach again: idempotent, nothing changes
        await asyncio.to_thread(kplan.detach, plans, env.pod, host_ns=env.host)
        assert snapshot(env.host) == before
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


@pytest.mark.parametrize(
    ("layers", "field"),
    [
        ([{"interface": {"mtu": 10}}], "interface.mtu"),
        ([{"interface": {"dhcp": True}}], "interface.dhcp"),
        ([{"interface": {"vrf": {"name": "v", "table": 9}}}, {"rules": [{"table": 3}]}], "rules"),
        ([{"routes": [{"destination": "10.0.0.0/8"}]}], "routes[0].gateway"),
        ([{"profile": "nope"}], "profile"),
    ],
)
async def test_bad_config_fails_prepare(env: Env, layers: list[dict[str, Any]], field: str) -> None:
    drv = env.driver(filter="true")
    before = snapshot(env.host)
    try:
        await drv.rescan()
        with pytest.raises(ConfigError) as info:
            await drv.prepare_claim(claim_for("nic0", *layers))
        assert info.value.field == field
        assert snapshot(env.host) == before
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


async def test_profile_laid_under_claim(env: Env) -> None:
    drv = env.driver(
        filter="true", profiles={"jumbo": {"interface": {"mtu": 1350, "name": "fast0"}}}
    )
    try:
        await drv.rescan()
        prepared = await drv.prepare_claim(
            claim_for("nic0", {"profile": "jumbo", "interface": {"name": "net2"}})
        )
        (p,) = [InterfacePlan.from_json(x) for x in prepared.plans]
        assert (p.mtu, p.name) == (1350, "net2")
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


@pytest.mark.skipif(
    not (kplan._native_has("sysctl", "") and kplan._native_has("ethtool", "")),
    reason="this build of kndkit._native has no sysctl/ethtool ops yet",
)
async def test_arp_sysctls_and_ethtool(env: Env) -> None:
    drv = env.driver(filter="true")
    before = snapshot(env.host)
    try:
        await drv.rescan()
        prepared = await drv.prepare_claim(
            claim_for(
                "nic0",
                {
                    "interface": {"name": "net1", "arpIgnore": 1, "arpAnnounce": 2},
                    "ethtool": {"features": {"tx-checksum-ip-generic": False}},
                },
            )
        )
        plans = [InterfacePlan.from_json(p) for p in prepared.plans]
        assert dict(plans[0].sysctls) == {
            "net/ipv4/conf/net1/arp_ignore": "1",
            "net/ipv4/conf/net1/arp_announce": "2",
        }
        host_feats = nl.dump_ethtool("nic0", ns=env.host)["features"]
        await asyncio.to_thread(kplan.attach, plans, env.pod, host_ns=env.host)
        try:
            assert nl.dump_sysctl("net/ipv4/conf/net1/arp_ignore", ns=env.pod) == "1"
            assert nl.dump_sysctl("net/ipv4/conf/net1/arp_announce", ns=env.pod) == "2"
            feats = nl.dump_ethtool("net1", ns=env.pod)["features"]
            assert feats["tx-checksum-ip-generic"] is False
        finally:
            await asyncio.to_thread(kplan.detach, plans, env.pod, host_ns=env.host)
        assert snapshot(env.host) == before
        assert nl.dump_ethtool("nic0", ns=env.host)["features"] == host_feats
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


needs_ops = pytest.mark.skipif(
    not all(kplan._native_has(op, "") for op in ("sysctl", "ethtool", "ebpf_detach", "vrf_add")),
    reason="this build of kndkit._native lacks the sysctl/ethtool/ebpf_detach/vrf_add ops",
)


@needs_ops
async def test_ebpf_removal_and_offload_sizes(env: Env) -> None:
    h = env.names["host"]
    _ip("-n", h, "link", "set", "nic0", "gso_max_size", "60000", "gro_max_size", "60000")
    subprocess.run(["tc", "-n", h, "qdisc", "add", "dev", "nic0", "clsact"], check=True)
    subprocess.run(
        [
            "tc",
            "-n",
            h,
            "filter",
            "add",
            "dev",
            "nic0",
            "ingress",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "classid",
            "1:1",
        ],
        check=True,
    )
    drv = env.driver(filter="true")
    before = snapshot(env.host)
    try:
        await drv.rescan()
        attrs = drv.devices["nic0"].device.attributes
        assert attrs["tcFilterNames"] == "u32" and attrs["ebpf"] is False
        prepared = await drv.prepare_claim(
            claim_for(
                "nic0",
                {
                    "interface": {
                        "disableEbpfPrograms": True,
                        "gsoMaxSize": 32768,
                        "groMaxSize": 32768,
                    },
                },
            )
        )
        plans = [InterfacePlan.from_json(p) for p in prepared.plans]
        assert plans[0].disable_ebpf and plans[0].gso_max_size == 32768
        await asyncio.to_thread(kplan.attach, plans, env.pod, host_ns=env.host)
        try:
            pod = next(lk for lk in nl.dump_links(env.pod) if lk["name"] == "nic0")
            assert (pod["gso_max_size"], pod["gro_max_size"]) == (32768, 32768)
            assert nl.dump_tc("nic0", ns=env.pod)["filters"] == []
        finally:
            await asyncio.to_thread(kplan.detach, plans, env.pod, host_ns=env.host)
        # sizes restored; the removed filters stay removed (as in DraNet)
        assert snapshot(env.host) == before
        assert nl.dump_tc("nic0", ns=env.host)["filters"] == []
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


@needs_ops
@pytest.mark.parametrize(
    ("ethtool", "field", "match"),
    [
        (
            {"features": {"no-such-feature": True}},
            "ethtool.features['no-such-feature']",
            "has no ethtool feature",
        ),
        ({"features": {"rx-vlan-filter": True}}, "ethtool.features['rx-vlan-filter']", "fixed off"),
        (
            {"privateFlags": {"no-such-flag": True}},
            "ethtool.privateFlags['no-such-flag']",
            "has no ethtool private flag",
        ),
    ],
)
async def test_ethtool_names_checked_at_prepare(
    env: Env, ethtool: dict[str, Any], field: str, match: str
) -> None:
    drv = env.driver(filter="true")
    try:
        await drv.rescan()
        with pytest.raises(ConfigError, match=match) as info:
            await drv.prepare_claim(claim_for("nic0", {"ethtool": ethtool}))
        assert info.value.field == field
        assert info.value.claim == "default/c1" and info.value.device == "nic0"
        # a fixed feature asked to keep its value is fine
        await drv.prepare_claim(
            claim_for("nic0", {"ethtool": {"features": {"rx-vlan-filter": False}}})
        )
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


@needs_ops
async def test_vrf_all_or_nothing(env: Env) -> None:
    drv = env.driver(filter="true")
    before = snapshot(env.host)
    try:
        await drv.rescan()
        prepared = await drv.prepare_claim(
            claim_for(
                "nic0",
                {
                    "interface": {"name": "net1", "vrf": {"name": "blue", "table": 42}},
                },
            )
        )
        plans = [InterfacePlan.from_json(p) for p in prepared.plans]
        (p,) = plans
        assert p.vrf is not None and (p.vrf.name, p.vrf.table) == ("blue", 42)
        assert p.rules == () and {r.table for r in p.routes} == {42}
        try:
            await asyncio.to_thread(kplan.attach, plans, env.pod, host_ns=env.host)
        except Exception as e:
            # no vrf in this kernel: the whole attach is undone
            assert "vrf" in str(e).lower() or "device type" in str(e).lower(), e
            assert snapshot(env.host) == before
            assert [lk["name"] for lk in nl.dump_links(env.pod)] == ["lo"]
            return
        try:
            links = {lk["ifindex"]: lk for lk in nl.dump_links(env.pod)}
            net1 = next(lk for lk in links.values() if lk["name"] == "net1")
            assert net1["master"] is not None and links[net1["master"]]["name"] == "blue"
            assert {r["dst"] for r in nl.dump_routes(env.pod, table=42)} >= {
                "10.77.0.0/16",
                "10.78.0.0/16",
            }
        finally:
            await asyncio.to_thread(kplan.detach, plans, env.pod, host_ns=env.host)
        assert snapshot(env.host) == before
    finally:
        if drv.host_ns is not None:
            drv.host_ns.close()


# --------------------------------------------------------------------------- end to end

from kndkit.testing.pytest_plugin import kndkit_cluster, sim_node  # noqa: E402, F401


def test_netdev_driver_end_to_end(sim_node: Any) -> None:  # noqa: F811
    """``kndkit run netdev`` on a simulated node (real apiserver, allocator, kubelet
    and NRI harnesses): DeviceClass configuration laid under the claim's, the NIC
    moved and configured in the pod, networkData on the claim, and after the pod
    is deleted the host exactly as before."""
    import time

    from kndkit.testing.node import NAMESPACE

    sim_node.add_nic(
        "nic9", addresses=["192.168.99.2/24"], mtu=1500, routes=["10.99.0.0/16 via 192.168.99.1"]
    )
    before = sim_node.snapshot()
    drv = sim_node.start_driver("netdev", params={"filter": "true"})
    assert drv.name == "netdev.kndkit.dev"
    sim_node.wait_devices(drv.name, at_least=3)
    assert {"eth1", "eth2", "nic9"} <= set(sim_node.published_devices(drv.name))
    cls_name = f"knd-netdev-cfg-{os.getpid()}"
    device_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": cls_name},
        "spec": {
            "selectors": [{"cel": {"expression": f'device.driver == "{drv.name}"'}}],
            "config": [{"opaque": {"driver": drv.name, "parameters": {
                "interface": {"mtu": 1300, "name": "classname"},
                "neighbors": [{"destination": "192.168.99.1", "hardwareAddr": "02:00:00:99:00:01"}],
            }}}],
        },
    }  # fmt: skip
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "nd-e2e", "namespace": NAMESPACE},
        "spec": {"devices": {
            "requests": [{"name": "nic", "exactly": {
                "deviceClassName": cls_name, "allocationMode": "ExactCount", "count": 1,
                "selectors": [{"cel": {"expression":
                    f'device.attributes["{drv.name}"].ifName == "nic9"'}}],
            }}],
            "config": [{"requests": ["nic"], "opaque": {"driver": drv.name, "parameters": {
                "interface": {"name": "net9"},
                "routes": [{"destination": "10.98.0.0/16", "gateway": "192.168.99.1"}],
            }}}],
        }},
    }  # fmt: skip
    sim_node.api.ensure_namespace(NAMESPACE)
    sim_node.api.apply(device_class)
    try:
        sim_node.api.create(claim)
        pod = sim_node.new_pod("nd1", claims=["nd-e2e"])
        sim_node.start_pod(pod)
        (lk,) = [x for x in sim_node.pod_links(pod) if x["name"] == "net9"]
        assert lk["mtu"] == 1300  # from the class
        pod_ns = NetNs.open(str(pod.netns))
        try:
            addrs = {a["cidr"] for a in nl.dump_addresses(pod_ns) if a["ifindex"] == lk["ifindex"]}
            assert "192.168.99.2/24" in addrs  # the host's address came along
            routes = {(r["dst"], r["gateway"]) for r in nl.dump_routes(pod_ns)}
            assert {("10.99.0.0/16", "192.168.99.1"), ("10.98.0.0/16", "192.168.99.1")} <= routes
            neigh = {(n["address"], n["lladdr"]) for n in nl.dump_neighbours(pod_ns)}
            assert ("192.168.99.1", "02:00:00:99:00:01") in neigh
        finally:
            pod_ns.close()
        # networkData is written asynchronously
        deadline = time.monotonic() + 30
        data: dict[str, Any] = {}
        while time.monotonic() < deadline:
            got = sim_node.api.get(claim)
            devs = (got.get("status") or {}).get("devices") or []
            data = next((d.get("networkData") or {} for d in devs if d["device"] == "nic9"), {})
            if data:
                break
            time.sleep(0.2)
        assert data.get("interfaceName") == "net9", data
        assert "192.168.99.2/24" in data.get("ips", [])
        sim_node.delete_pod(pod)
        assert sim_node.snapshot() == before
        assert "Traceback" not in drv.logs()
    finally:
        sim_node.api.delete(claim)
        sim_node.api.delete(device_class)
