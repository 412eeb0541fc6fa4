"""kndkit.steps: each step's effect on a plan, one at a time (no kernel involved:
host state is given in the plan; netdevs come from a fake sysfs walk)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kndkit import _native
from kndkit.config import parse_netdev_config
from kndkit.devices import netdev_device
from kndkit.errors import InvalidArgument
from kndkit.k8s.errors import ConfigError
from kndkit.plan import HostState, InterfacePlan, Neighbor, Route, Rule, Vrf
from kndkit.sources import NodeDevice
from kndkit.steps import (
    NETDEV_STEPS,
    Addresses,
    ArpSysctls,
    Ebpf,
    Ethtool,
    Interface,
    Neighbors,
    Offload,
    Routes,
    Rules,
    netdev_config,
    pf_mtu,
)
from kndkit.steps import Vrf as VrfStep
from kndkit.testing.sysfs import SysfsBuilder

HOST = HostState(
    ifname="eth1",
    ifindex=7,
    mtu=1500,
    mac="02:00:00:00:00:07",
    up=True,
    alias=None,
    gso_max_size=65536,
    gro_max_size=65536,
    master=None,
    addresses=("192.168.7.2/24", "fd07::2/64"),
    routes=(
        Route("10.7.0.0/16", gateway="192.168.7.1"),
        Route("10.8.0.0/16", gateway="192.168.7.1", table=100),
    ),
    neighbors=(
        Neighbor("192.168.7.1", "02:00:00:00:07:01"),
        Neighbor("192.168.7.9", "02:00:00:00:07:09"),
    ),
)


@pytest.fixture(scope="module")
def sysfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PF (MTU 1500) with one VF netdev, and a plain virtual netdev."""
    root = tmp_path_factory.mktemp("sys")
    b = SysfsBuilder(root)
    pf = b.pci_function(
        "0000:3b:00.0", "devices/pci0000:3a", vendor="0x15b3", device="0x1017", driver="mlx5_core"
    )
    vf = b.pci_function(
        "0000:3b:00.2", "devices/pci0000:3a", vendor="0x15b3", device="0x1018", driver="mlx5_core"
    )
    b.sriov(pf, [vf])
    b.netdev("ens1f0", parent=pf, mac="02:00:00:00:3b:00", mtu=1500)
    b.netdev("ens1f0v0", parent=vf, mac="02:00:00:00:3b:02", mtu=1500)
    b.netdev("eth1", mac="02:00:00:00:00:07")
    return root


def node_device(sysfs: Path, name: str) -> NodeDevice:
    topo = _native.discover(sysfs, netlink=False)
    nd = next(n for n in topo.netdevs if n.name == name)
    return NodeDevice(netdev_device(nd), netdev=nd)


def ctx(sysfs: Path | None = None) -> Any:
    # A stand-in for kndkit.driver.PlanContext (only the fields the steps read).
    return SimpleNamespace(
        claim=SimpleNamespace(namespace="ns", name="c"),
        allocated=SimpleNamespace(request="nic"),
        pod_uid="uid-1",
        driver=SimpleNamespace(options=SimpleNamespace(sysfs_root=str(sysfs or "/nonexistent"))),
        host_ns=None,
    )


def moved(**fields: Any) -> InterfacePlan:
    return InterfacePlan.move("eth1", "eth1", name="eth1", host=HOST, **fields)


@pytest.fixture
def dev(sysfs: Path) -> NodeDevice:
    return node_device(sysfs, "eth1")


def run(step: Any, plan: InterfacePlan, raw: dict[str, Any], dev: NodeDevice) -> InterfacePlan:
    out = step.apply(plan, parse_netdev_config(raw), dev, ctx())
    assert isinstance(out, InterfacePlan)
    InterfacePlan.from_json(out.to_json())  # still a valid, serialisable plan
    return out


# -- netdev_config ---------------------------------------------------------------


def test_netdev_config_accepts_model_mapping_none() -> None:
    cfg = parse_netdev_config({"interface": {"mtu": 1400}})
    assert netdev_config(cfg) is cfg
    assert netdev_config({"interface": {"mtu": 1400}}) == cfg
    assert netdev_config(None) == parse_netdev_config({})
    with pytest.raises(ConfigError):
        netdev_config({"interface": {"mtu": 1}})
    with pytest.raises(InvalidArgument, match="got int"):
        netdev_config(3)


# -- Interface --------------------------------------------------------------------


def test_interface_name_mtu_mac(dev: NodeDevice) -> None:
    plan = moved()
    assert run(Interface(), plan, {}, dev) == plan
    out = run(
        Interface(),
        plan,
        {"interface": {"name": "net5", "mtu": 9000, "hardwareAddr": "02-AA-00-00-00-01"}},
        dev,
    )
    assert (out.name, out.mtu, out.mac) == ("net5", 9000, "02:aa:00:00:00:01")


def test_pf_mtu(sysfs: Path) -> None:
    assert pf_mtu("0000:3b:00.0", sysfs) == 1500
    assert pf_mtu("0000:99:00.0", sysfs) is None


def test_vf_mtu_not_above_pf(sysfs: Path) -> None:
    vf = node_device(sysfs, "ens1f0v0")
    assert vf.netdev is not None and vf.netdev.physfn == "0000:3b:00.0"
    plan = InterfacePlan.move(vf.name, "ens1f0v0")
    ok = Interface().apply(plan, parse_netdev_config({"interface": {"mtu": 1500}}), vf, ctx(sysfs))
    assert ok.mtu == 1500
    with pytest.raises(
        ConfigError, match="above the MTU 1500 of its SR-IOV physical function"
    ) as e:
        Interface().apply(plan, parse_netdev_config({"interface": {"mtu": 1501}}), vf, ctx(sysfs))
    assert e.value.field == "interface.mtu"
    assert (e.value.claim, e.value.request) == ("ns/c", "nic")
    # sysfs_root given to the step wins over the driver's
    with pytest.raises(ConfigError):
        Interface(sysfs_root=str(sysfs)).apply(
            plan, parse_netdev_config({"interface": {"mtu": 9000}}), vf, ctx(None)
        )
    # a PF itself has no such limit here
    pf = node_device(sysfs, "ens1f0")
    out = Interface().apply(
        InterfacePlan.move(pf.name, "ens1f0"),
        parse_netdev_config({"interface": {"mtu": 9000}}),
        pf,
        ctx(sysfs),
    )
    assert out.mtu == 9000


# -- Addresses -----------------------------------------------------------------------


def test_addresses_from_config(dev: NodeDevice) -> None:
    out = run(Addresses(), moved(), {"interface": {"addresses": ["10.0.0.2/24"]}}, dev)
    assert out.addresses == ("10.0.0.2/24",)


def test_addresses_copied_from_host(dev: NodeDevice) -> None:
    out = run(Addresses(), moved(), {}, dev)
    assert out.addresses == HOST.addresses


def test_addresses_not_copied_for_macvlan(dev: NodeDevice) -> None:
    plan = InterfacePlan.macvlan("slot-0", "eth1")
    assert run(Addresses(), plan, {}, dev).addresses == ()


# -- Routes ------------------------------------------------------------------------


def test_routes_host_then_config(dev: NodeDevice) -> None:
    out = run(
        Routes(),
        moved(),
        {
            "routes": [
                {"destination": "10.9.0.0/16", "gateway": "192.168.7.254"},
                {
                    "destination": "10.7.0.0/16",
                    "gateway": "192.168.7.5",
                    "table": 254,
                },  # replaces host's
                {"destination": "192.168.8.0/24", "scope": 253},
            ]
        },
        dev,
    )
    assert out.routes == (
        Route("10.8.0.0/16", gateway="192.168.7.1", table=100),
        Route("10.9.0.0/16", gateway="192.168.7.254", scope="universe"),
        Route("10.7.0.0/16", gateway="192.168.7.5", scope="universe", table=254),
        Route("192.168.8.0/24", scope="link"),
    )


def test_routes_default_is_one_destination(dev: NodeDevice) -> None:
    plan = moved(
        routes=(
            Route("default", gateway="192.168.7.1", table=100),
            Route("default", gateway="fd07::1", table=100),
        )
    )
    out = run(
        Routes(),
        plan,
        {"routes": [{"destination": "0.0.0.0/0", "gateway": "192.168.7.9", "table": 100}]},
        dev,
    )
    assert [
        (r.destination, r.gateway) for r in out.routes if r.destination.endswith(("default", "/0"))
    ] == [
        ("default", "fd07::1"),
        ("0.0.0.0/0", "192.168.7.9"),
    ]


def test_routes_without_config_are_the_hosts(dev: NodeDevice) -> None:
    assert run(Routes(), moved(), {}, dev).routes == HOST.routes


def test_routes_macvlan_only_config(dev: NodeDevice) -> None:
    plan = InterfacePlan.macvlan("slot-0", "eth1")
    out = run(
        Routes(), plan, {"routes": [{"destination": "0.0.0.0/0", "gateway": "10.0.0.1"}]}, dev
    )
    assert out.routes == (Route("0.0.0.0/0", gateway="10.0.0.1", scope="universe"),)


# -- Rules ----------------------------------------------------------------------------


def test_rules_from_config(dev: NodeDevice) -> None:
    # routes only in main: no host rules are looked for (nothing to dump)
    plan = moved(routes=(Route("10.7.0.0/16", gateway="192.168.7.1"),))
    out = run(
        Rules(),
        plan,
        {
            "rules": [
                {"priority": 100, "source": "10.0.0.0/24", "table": 100},
                {"table": 101},
            ]
        },
        dev,
    )
    assert out.rules == (
        Rule(table=100, priority=100, source="10.0.0.0/24"),
        Rule(table=101),
    )


def test_rules_none(dev: NodeDevice) -> None:
    plan = moved()
    assert run(Rules(), plan, {}, dev) is plan


# -- Neighbors --------------------------------------------------------------------------


def test_neighbors_host_and_config(dev: NodeDevice) -> None:
    out = run(
        Neighbors(),
        moved(),
        {
            "neighbors": [
                {
                    "destination": "192.168.7.1",
                    "hardwareAddr": "02:00:00:00:07:aa",
                },  # replaces host's
                {"destination": "fd07::1", "hardwareAddr": "02:00:00:00:07:bb"},
            ]
        },
        dev,
    )
    assert out.neighbors == (
        Neighbor("192.168.7.9", "02:00:00:00:07:09"),
        Neighbor("192.168.7.1", "02:00:00:00:07:aa"),
        Neighbor("fd07::1", "02:00:00:00:07:bb"),
    )


# -- ArpSysctls, Offload, Ethtool, Ebpf ------------------------------------------------


def test_arp_sysctls_use_pod_name(dev: NodeDevice) -> None:
    plan = run(Interface(), moved(), {"interface": {"name": "net3"}}, dev)
    out = run(ArpSysctls(), plan, {"interface": {"arpIgnore": 8, "arpAnnounce": 2}}, dev)
    assert dict(out.sysctls) == {
        "net/ipv4/conf/net3/arp_ignore": "8",
        "net/ipv4/conf/net3/arp_announce": "2",
    }
    assert run(ArpSysctls(), moved(), {}, dev).sysctls == {}


def test_offload_sizes(dev: NodeDevice) -> None:
    out = run(
        Offload(),
        moved(),
        {
            "interface": {
                "gsoMaxSize": 131072,
                "groMaxSize": 131072,
                "gsoIPv4MaxSize": 98304,
                "groIPv4MaxSize": 98304,
            }
        },
        dev,
    )
    assert (out.gso_max_size, out.gro_max_size, out.gso_ipv4_max_size, out.gro_ipv4_max_size) == (
        131072,
        131072,
        98304,
        98304,
    )
    assert run(Offload(), moved(), {}, dev) == moved()


def test_ethtool_laid_over_plan(dev: NodeDevice) -> None:
    # a macvlan plan: names are checked against the host link only for moves
    # (tests/integration/test_netdev_plan.py covers that on a real link)
    plan = InterfacePlan.macvlan(
        "slot-0", "eth1", ethtool_features={"rx-gro-hw": True, "rx-checksum": True}
    )
    out = run(
        Ethtool(),
        plan,
        {"ethtool": {"features": {"rx-checksum": False}, "privateFlags": {"p1": True}}},
        dev,
    )
    assert dict(out.ethtool_features) == {"rx-gro-hw": True, "rx-checksum": False}
    assert dict(out.ethtool_private_flags) == {"p1": True}
    assert run(Ethtool(), plan, {"ethtool": {}}, dev) is plan


def test_ebpf(dev: NodeDevice) -> None:
    assert run(Ebpf(), moved(), {"interface": {"disableEbpfPrograms": True}}, dev).disable_ebpf
    assert not run(Ebpf(), moved(), {"interface": {"disableEbpfPrograms": False}}, dev).disable_ebpf


# -- Vrf ----------------------------------------------------------------------------------


def test_vrf_takes_routes_into_its_table(dev: NodeDevice) -> None:
    plan = moved(routes=HOST.routes, rules=(Rule(table=100, priority=5),))
    out = run(VrfStep(), plan, {"interface": {"vrf": {"name": "blue", "table": 42}}}, dev)
    assert out.vrf == Vrf("blue", 42)
    assert {r.table for r in out.routes} == {42}
    assert [r.destination for r in out.routes] == ["10.7.0.0/16", "10.8.0.0/16"]
    assert out.rules == ()


def test_vrf_default_table_from_ifindex(dev: NodeDevice) -> None:
    out = run(VrfStep(), moved(), {"interface": {"vrf": {"name": "blue"}}}, dev)
    assert out.vrf == Vrf("blue", 107)  # 100 + host ifindex 7
    assert run(VrfStep(), moved(), {}, dev).vrf is None


# -- the whole list ------------------------------------------------------------------------


def test_netdev_steps_order() -> None:
    names = [type(s).__name__ for s in NETDEV_STEPS]
    assert names == [
        "Interface",
        "Addresses",
        "Routes",
        "Rules",
        "Neighbors",
        "ArpSysctls",
        "Offload",
        "Ethtool",
        "Vrf",
        "Ebpf",
        "HostSnapshot",
    ]
    assert repr(NETDEV_STEPS[0]) == "Interface()"


def test_all_steps_but_snapshot_compose(dev: NodeDevice) -> None:
    raw = {
        "interface": {
            "name": "net1",
            "mtu": 9000,
            "addresses": ["10.0.0.2/24"],
            "arpIgnore": 1,
            "gsoMaxSize": 131072,
            "disableEbpfPrograms": True,
        },
        "routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.1"}],
        "neighbors": [{"destination": "10.0.0.1", "hardwareAddr": "02:00:00:00:00:01"}],
        "ethtool": {"features": {"rx-checksum": False}},
    }
    plan = moved()
    for step in NETDEV_STEPS[:-1]:
        plan = run(step, plan, raw, dev)
    assert plan.name == "net1" and plan.mtu == 9000 and plan.addresses == ("10.0.0.2/24",)
    assert plan.sysctls == {"net/ipv4/conf/net1/arp_ignore": "1"}
    assert plan.routes[-1] == Route("10.1.0.0/16", gateway="10.0.0.1", scope="universe")
    assert plan.disable_ebpf and plan.gso_max_size == 131072
    assert plan.host == HOST


def test_routes_gateway_off_the_pods_addresses_is_refused_at_prepare(dev: NodeDevice) -> None:
    plan = moved(addresses=("10.9.0.2/24",))
    with pytest.raises(ConfigError) as e:
        run(
            Routes(), plan, {"routes": [{"destination": "10.8.0.0/16", "gateway": "10.1.0.1"}]}, dev
        )
    assert e.value.field == "routes[0].gateway"
    # reachable through a configured link-scope route: accepted
    out = run(
        Routes(),
        plan,
        {
            "routes": [
                {"destination": "10.1.0.0/24", "scope": "link"},
                {"destination": "10.8.0.0/16", "gateway": "10.1.0.1"},
            ]
        },
        dev,
    )
    assert Route("10.8.0.0/16", gateway="10.1.0.1", scope="universe") in out.routes


def test_routes_host_routes_the_new_addresses_cannot_reach_are_not_copied(
    dev: NodeDevice,
) -> None:
    # the claim replaced the host's 192.168.7.2/24: its routes via 192.168.7.1 would be
    # refused by the kernel at pod start (ENETUNREACH), so they stay behind
    out = run(Routes(), moved(addresses=("10.9.0.2/24",)), {}, dev)
    assert all(r.gateway is None or r.gateway.startswith("10.9.") for r in out.routes)
    kept = run(Routes(), moved(addresses=("192.168.7.2/24",)), {}, dev)
    assert Route("10.7.0.0/16", gateway="192.168.7.1") in kept.routes
