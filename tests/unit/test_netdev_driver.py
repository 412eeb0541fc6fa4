"""The netdev example driver's own logic: settings, filter, config merge with
profiles, and what plan() refuses (no kernel: devices come from a fake sysfs)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kndkit import _native
from kndkit.config import NetdevConfig, parse_netdev_config
from kndkit.devices import Device, netdev_device
from kndkit.driver import DriverOptions
from kndkit.errors import InvalidArgument
from kndkit.examples.netdev import Netdev, compile_filter, device_view
from kndkit.k8s.errors import ConfigError
from kndkit.sources import NodeDevice
from kndkit.steps import NETDEV_STEPS
from kndkit.testing.sysfs import SysfsBuilder

DOMAIN = "netdev.kndkit.dev"

try:
    import cel  # noqa: F401

    _HAVE_CEL = True
except ImportError:
    _HAVE_CEL = False
_needs_cel = pytest.mark.skipif(not _HAVE_CEL, reason="the optional CEL package is not installed")


def driver(**params: Any) -> Netdev:
    return Netdev(DriverOptions(node_name="node-a", metrics_port=None, params=params))


def dev(name: str, kind: str, **attrs: Any) -> NodeDevice:
    return NodeDevice(Device(name, {"ifName": name, "type": kind, **attrs}))


def test_class_parts() -> None:
    assert Netdev.name == DOMAIN
    assert Netdev.config is NetdevConfig
    assert tuple(Netdev.steps) == tuple(NETDEV_STEPS)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"filtr": "true"}, "unknown setting"),
        ({"filter": ""}, "expected a CEL expression"),
        ({"filter": 3}, "expected a CEL expression"),
        pytest.param({"filter": "device.attributes["}, "not valid CEL", marks=_needs_cel),
        ({"profiles": "x"}, "profiles"),
        ({"profiles": {"p": 3}}, "profiles"),
        ({"profiles": {"p": {"interface": {"mtu": 1}}}}, "interface.mtu"),
    ],
)
def test_bad_settings_refused(params: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        driver(**params)


def test_device_view() -> None:
    d = Device(
        "eth1",
        {"type": "veth", "resource.kubernetes.io/pcieRoot": "pci0000:00"},
        capacity={"example.com/slots": "4"},
    )
    assert device_view(d, DOMAIN) == {
        "driver": DOMAIN,
        "attributes": {
            DOMAIN: {"type": "veth"},
            "resource.kubernetes.io": {"pcieRoot": "pci0000:00"},
        },
        "capacity": {DOMAIN: {}, "example.com": {"slots": "4"}},
    }


def test_default_filter_drops_veth() -> None:
    d = driver()
    assert not d.filter(dev("veth1", "veth"))
    assert d.filter(dev("eth1", "physical"))
    assert d.filter(NodeDevice(Device("mlx5-0", {"rdma": True})))


def test_cel_filter() -> None:
    pytest.importorskip("cel", reason="the optional CEL package is not installed")
    d = driver(
        filter=f'device.attributes["{DOMAIN}"].type == "physical"'
        f' && device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:00"'
    )
    assert d.filter(dev("eth1", "physical", **{"resource.kubernetes.io/pcieRoot": "pci0000:00"}))
    assert not d.filter(
        dev("eth2", "physical", **{"resource.kubernetes.io/pcieRoot": "pci0000:80"})
    )
    assert not d.filter(dev("veth1", "veth"))
    # an expression that fails on a device (missing domain) drops it, with a warning
    assert not d.filter(NodeDevice(Device("x", {"type": "physical"})))
    assert driver(filter="true").filter(dev("veth1", "veth"))


def test_constant_filters_need_no_cel() -> None:
    view = device_view(Device("veth1", {"type": "veth"}), DOMAIN)
    assert compile_filter(" true ")(view) is True
    assert compile_filter("false")(view) is False


def test_compile_filter_needs_bool() -> None:
    pytest.importorskip("cel", reason="the optional CEL package is not installed")
    pred = compile_filter('device.driver + "x"')
    with pytest.raises(InvalidArgument, match="not a boolean"):
        pred({"driver": DOMAIN, "attributes": {}, "capacity": {}})


def test_merge_config_profiles() -> None:
    d = driver(
        profiles={
            "fast": {
                "interface": {"mtu": 9000, "name": "fast0"},
                "routes": [{"destination": "10.0.0.0/8", "gateway": "10.1.0.1"}],
            }
        }
    )
    merged = d.merge_config(
        [
            {"interface": {"name": "net1"}},
            {"profile": "fast", "routes": [{"destination": "10.0.0.0/8", "gateway": "10.1.0.9"}]},
        ]
    )
    assert merged["interface"] == {"mtu": 9000, "name": "net1"}
    assert merged["routes"] == [{"destination": "10.0.0.0/8", "gateway": "10.1.0.9"}]
    assert d.merge_config([{"interface": {"mtu": 1400}}]) == {"interface": {"mtu": 1400}}
    with pytest.raises(ConfigError, match="profile 'slow' is not defined") as e:
        d.merge_config([{"profile": "slow"}])
    assert e.value.field == "profile"


def test_parse_config_names_claim() -> None:
    claim = SimpleNamespace(namespace="ns", name="c")
    with pytest.raises(ConfigError) as e:
        driver().parse_config({"interface": {"mtu": 1}}, claim=claim, request="nic")  # type: ignore[arg-type]
    assert e.value.field == "interface.mtu" and e.value.claim == "ns/c"
    assert "'nic'" in str(e.value)


@pytest.fixture(scope="module")
def ib_and_eth(tmp_path_factory: pytest.TempPathFactory) -> tuple[NodeDevice, NodeDevice]:
    root = tmp_path_factory.mktemp("sys")
    b = SysfsBuilder(root)
    b.netdev("eth1", mac="02:00:00:00:00:07")
    topo = _native.discover(Path(root), netlink=False)
    nd = next(n for n in topo.netdevs if n.name == "eth1")
    eth = NodeDevice(netdev_device(nd), netdev=nd)
    ib = NodeDevice(Device("mlx5-0", {"rdma": True}))
    return eth, ib


def _ctx() -> Any:
    return SimpleNamespace(
        claim=SimpleNamespace(namespace="ns", name="c"),
        allocated=SimpleNamespace(request="nic"),
        host_ns=None,
    )


def test_plan_keeps_host_name(ib_and_eth: tuple[NodeDevice, NodeDevice]) -> None:
    eth, _ = ib_and_eth
    p = driver().plan(eth, parse_netdev_config({}), _ctx())
    assert (p.kind, p.host_ifname, p.name, p.device) == ("move", "eth1", "eth1", eth.name)


def test_plan_refuses_dhcp(ib_and_eth: tuple[NodeDevice, NodeDevice]) -> None:
    eth, _ = ib_and_eth
    with pytest.raises(ConfigError, match="dhcp is not supported") as e:
        driver().plan(eth, parse_netdev_config({"interface": {"dhcp": True}}), _ctx())
    assert e.value.field == "interface.dhcp" and e.value.device == eth.name


def test_plan_refuses_ib_only(ib_and_eth: tuple[NodeDevice, NodeDevice]) -> None:
    _, ib = ib_and_eth
    with pytest.raises(ConfigError, match="no network interface") as e:
        driver().plan(ib, parse_netdev_config({"interface": {"mtu": 2044}}), _ctx())
    assert e.value.field == "interface.mtu"
    with pytest.raises(ConfigError, match="moves NICs only"):
        driver().plan(ib, parse_netdev_config({}), _ctx())
