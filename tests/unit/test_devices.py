"""kndkit.devices: DRA device names, attributes, API limits and slice layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kndkit.devices import (
    Device,
    device_name,
    devices_from_discovery,
    netdev_device,
    resource_slices,
    validate_device,
)
from kndkit.errors import InvalidArgument


@dataclass
class FakeNetdev:
    """Stands in for kndkit._native.NetDevice in unit tests of these functions."""

    name: str
    kind: str = "physical"
    mac: str | None = "02:00:00:00:00:01"
    mtu: int = 1500
    operstate: str = "up"
    addresses: list[str] = field(default_factory=list)
    pci_address: str | None = None
    vendor_id: str | None = None
    device_id: str | None = None
    subsystem_device_id: str | None = None
    driver: str | None = None
    numa_node: int | None = None
    pcie_root: str | None = None
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    physfn: str | None = None
    rdma_device: str | None = None


@dataclass
class FakeRdma:
    name: str
    node_guid: str | None = None
    pci_address: str | None = None
    numa_node: int | None = None
    pcie_root: str | None = None
    netdevs: list[str] = field(default_factory=list)


@dataclass
class FakeTopo:
    netdevs: list[FakeNetdev]
    rdma_devices: list[FakeRdma] = field(default_factory=list)


def test_device_names() -> None:
    assert device_name("eth0", "0000:8a:00.0") == "pci-0000-8a-00-0"
    assert device_name("eth0") == "eth0"
    weird = device_name("Eth_0.100")
    assert weird != "Eth_0.100"
    assert weird == device_name("Eth_0.100")  # stable
    validate_device(Device(weird))


def test_pci_netdev_attributes() -> None:
    nd = FakeNetdev(
        "ens1f0",
        addresses=["10.0.0.2/24", "fd00::2/64"],
        pci_address="0000:8a:00.0",
        vendor_id="0x15b3",
        device_id="0x101d",
        numa_node=1,
        pcie_root="pci0000:80",
        sriov_totalvfs=8,
        sriov_numvfs=4,
        rdma_device="mlx5_0",
    )
    d = netdev_device(nd)
    assert d.name == "pci-0000-8a-00-0"
    a = d.attributes
    assert a["ifName"] == "ens1f0"
    assert a["ipv4"] == "10.0.0.2/24"
    assert a["ipv6"] == "fd00::2/64"
    assert a["resource.kubernetes.io/pcieRoot"] == "pci0000:80"
    assert a["resource.kubernetes.io/numaNode"] == 1
    assert a["sriov"] is True and a["sriovVfs"] == 4
    assert a["rdma"] is True and a["rdmaDevice"] == "mlx5_0"
    assert a["virtual"] is False
    validate_device(d)
    api = d.to_api()
    assert api["attributes"]["mtu"] == {"int": 1500}
    assert api["attributes"]["rdma"] == {"bool": True}


def test_unknown_numa_is_absent() -> None:
    d = netdev_device(FakeNetdev("eth0", pci_address="0000:00:03.0", pcie_root="pci0000:00"))
    assert "numaNode" not in d.attributes
    assert "resource.kubernetes.io/numaNode" not in d.attributes


def test_long_address_lists_are_truncated_at_whole_entries() -> None:
    addrs = [f"fd00:{i:x}::1234:5678/64" for i in range(10)]
    d = netdev_device(FakeNetdev("eth0", addresses=addrs))
    v = d.attributes["ipv6"]
    assert isinstance(v, str) and len(v) <= 64
    assert all(part in addrs for part in v.split(","))


def test_limits_name_device_and_attribute() -> None:
    with pytest.raises(InvalidArgument, match=r"device 'x'.*'foo'.*65 characters"):
        validate_device(Device("x", {"foo": "a" * 65}))
    with pytest.raises(InvalidArgument, match=r"33 attributes"):
        validate_device(Device("x", {f"a{i}": i for i in range(33)}))
    with pytest.raises(InvalidArgument, match=r"'bad-name'.*C identifier"):
        validate_device(Device("x", {"bad-name": 1}))
    with pytest.raises(InvalidArgument, match=r"domain"):
        validate_device(Device("x", {"Bad_Domain/name": 1}))
    with pytest.raises(InvalidArgument, match=r"DNS label"):
        validate_device(Device("Not_A_Label"))


def test_slices_split_at_128_with_consistent_pool() -> None:
    devs = [Device(f"dev-{i:04d}", {"index": i}) for i in range(1024)]
    slices = resource_slices(devs, driver="netdev.example.com", node_name="node-a")
    assert len(slices) == 8
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {8}
    assert {s["spec"]["pool"]["name"] for s in slices} == {"node-a"}
    assert sum(len(s["spec"]["devices"]) for s in slices) == 1024
    assert len({s["metadata"]["name"] for s in slices}) == 8
    assert all(len(s["spec"]["devices"]) <= 128 for s in slices)


def test_slices_with_taints_split_at_64() -> None:
    t = ({"key": "k", "effect": "NoSchedule"},)
    devs = [Device(f"dev-{i}", taints=t if i == 0 else ()) for i in range(130)]
    slices = resource_slices(devs, driver="netdev.example.com", node_name="n")
    assert len(slices) == 3


def test_empty_node_publishes_one_empty_slice() -> None:
    slices = resource_slices([], driver="netdev.example.com", node_name="n")
    assert len(slices) == 1 and slices[0]["spec"]["devices"] == []


def test_bad_driver_name() -> None:
    with pytest.raises(InvalidArgument, match="driver name"):
        resource_slices([], driver="Not A Driver", node_name="n")


def test_loopback_and_virtual_filters_and_standalone_rdma() -> None:
    topo = FakeTopo(
        netdevs=[
            FakeNetdev("lo", kind="loopback", mac=None),
            FakeNetdev("veth0", kind="veth"),
            FakeNetdev("eth0", pci_address="0000:00:03.0"),
        ],
        rdma_devices=[
            FakeRdma("mlx5_0", pci_address="0000:00:04.0", netdevs=["eth9"]),
            FakeRdma("mlx5_1", pci_address="0000:00:05.0"),
        ],
    )
    names = [d.name for d in devices_from_discovery(topo)]
    assert names == ["veth0", "pci-0000-00-03-0", "pci-0000-00-05-0"]
    phys = [d.name for d in devices_from_discovery(topo, include_virtual=False)]
    assert phys == ["pci-0000-00-03-0", "pci-0000-00-05-0"]


def test_duplicate_names_made_unique() -> None:
    topo = FakeTopo(netdevs=[FakeNetdev("a"), FakeNetdev("a")])
    names = [d.name for d in devices_from_discovery(topo)]
    assert names == ["a", "a-2"]
