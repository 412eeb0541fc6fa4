"""kndkit.rdma and the bundled rdma driver, on fake sysfs trees.

This machine has no RDMA: the source, the character devices, the plan step and
the CreateContainer adjustment are checked on ConnectX-like synthetic trees
(:func:`kndkit.testing.sysfs.build_synthetic`) with device nodes made by
``mknod`` where real numbers matter; the real ``/sys`` must give zero RDMA
devices and one clear log line. The adjustment is checked byte by byte against
the NRI wire format (``LinuxDevice``: path 1, type 2, major 3, minor 4,
file_mode 5, uid 6, gid 7, the last three wrapped in ``{value = 1}``).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kndkit import _native
from kndkit.devices import Device
from kndkit.errors import InvalidArgument, NotAvailable
from kndkit.plan import CharDevice, InterfacePlan, RdmaPlan
from kndkit.rdma import (
    RdmaLinks,
    RdmaSettings,
    RdmaStep,
    adjustment_for,
    char_devices,
    netns_mode,
    port_states,
)
from kndkit.sources import NodeDevice
from kndkit.testing.sysfs import SysfsBuilder, build_synthetic

UVERBS_MAJOR = 231


class _Options:
    def __init__(self, sysfs_root: Path, dev_root: Path) -> None:
        self.sysfs_root = str(sysfs_root)
        self.dev_root = str(dev_root)


class _Ctx:
    """The parts of a DiscoveryContext / PlanContext the RDMA parts read."""

    def __init__(self, discovery: Any, sysfs_root: Path, dev_root: Path) -> None:
        self.discovery = discovery
        self.host_ns = None
        self.driver_name = "rdma.kndkit.dev"
        self.options = _Options(sysfs_root, dev_root)
        self.driver = self


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path, Any]:
    """Two ConnectX PFs with one VF each (RDMA on all four) and one IB-only adapter."""
    dev = tmp_path / "dev"
    sysfs = build_synthetic(tmp_path / "sys", root_complexes=2, pfs=2, vfs_per_pf=1, dev_root=dev)
    return sysfs, dev, _native.discover(sysfs, dev_root=dev, netlink=False)


def _add_mad_numbers(sysfs: Path) -> None:
    """The builder writes ``dev`` only for uverbs; give umad/issm theirs the
    way the kernel numbers them (umadN 231:N, issmN 231:64+N)."""
    mad = sysfs / "class" / "infiniband_mad"
    for entry in os.listdir(mad):
        n = int(entry[4:])
        minor = n if entry.startswith("umad") else 64 + n
        (mad / entry / "dev").write_text(f"{UVERBS_MAJOR}:{minor}\n")


# --------------------------------------------------------------------------- source


def test_rdma_links_netdev_and_ib_only(host: tuple[Path, Path, Any]) -> None:
    sysfs, dev, topo = host
    found = RdmaLinks(exclude_uplink=False).discover(_Ctx(topo, sysfs, dev))  # type: ignore[arg-type]
    by_rdma = {nd.rdma.name: nd for nd in found if nd.rdma is not None}
    assert sorted(by_rdma) == ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_4"]
    assert all(isinstance(nd, NodeDevice) for nd in found)
    pf = by_rdma["mlx5_0"]
    assert pf.ifname == "enp1s0f0np0"
    assert pf.name == "pci-0000-01-00-0"
    assert pf.device.attributes["rdma"] is True
    assert pf.device.attributes["rdmaDevice"] == "mlx5_0"
    ib = by_rdma["mlx5_4"]
    assert ib.netdev is None and ib.ifname is None
    assert ib.device.attributes["rdmaDevice"] == "mlx5_4"
    assert "ifName" not in ib.device.attributes
    assert len({nd.name for nd in found}) == len(found)


def test_rdma_links_filters(host: tuple[Path, Path, Any]) -> None:
    sysfs, dev, topo = host
    ctx = _Ctx(topo, sysfs, dev)
    only_ib = RdmaLinks(netdevs=False, exclude_uplink=False).discover(ctx)  # type: ignore[arg-type]
    assert [nd.rdma.name for nd in only_ib if nd.rdma] == ["mlx5_4"]
    no_ib = RdmaLinks(ib_only=False, exclude_uplink=False).discover(ctx)  # type: ignore[arg-type]
    assert all(nd.netdev is not None for nd in no_ib) and len(no_ib) == 4
    named = RdmaLinks(names={"mlx5_2"}, exclude_uplink=False).discover(ctx)  # type: ignore[arg-type]
    assert [nd.ifname for nd in named] == ["enp129s0f0np0"]
    with pytest.raises(InvalidArgument, match="collection"):
        RdmaLinks(names="mlx5_0")


def test_rdma_links_skips_netdev_moved_away(tmp_path: Path) -> None:
    """An RDMA device whose netdev is not in the walked namespace (in a pod now)."""
    b = SysfsBuilder(tmp_path / "sys", tmp_path / "dev")
    pci = b.pci_function("0000:03:00.0", "devices/pci0000:00", vendor="0x15b3", device="0x101d")
    b.rdma_device("mlx5_9", pci, index=0, netdevs=["gone0"])
    topo = _native.discover(b.root, dev_root=tmp_path / "dev", netlink=False)
    ctx = _Ctx(topo, b.root, tmp_path / "dev")
    assert [r.name for r in topo.rdma_devices] == ["mlx5_9"]
    assert list(RdmaLinks(exclude_uplink=False).discover(ctx)) == []  # type: ignore[arg-type]


def test_real_sys_has_no_rdma_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The real node: zero RDMA devices, one clear line, no crash (and no repeat)."""
    if os.path.isdir("/sys/class/infiniband") and os.listdir("/sys/class/infiniband"):
        pytest.skip("this node has RDMA devices")
    topo = _native.discover("/sys")
    ctx = _Ctx(topo, Path("/sys"), Path("/dev"))
    links = RdmaLinks()
    with caplog.at_level(logging.INFO, logger="kndkit.rdma"):
        assert list(links.discover(ctx)) == []  # type: ignore[arg-type]
        assert list(links.discover(ctx)) == []  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if "RDMA not available" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "RDMA not available on this node" in lines[0]
    assert "/sys/class/infiniband" in lines[0]


def test_netns_mode_falls_back_to_shared(caplog: pytest.LogCaptureFixture) -> None:
    if _native.rdma_available():
        assert netns_mode() == _native.rdma_get_netns_mode()
        return
    with caplog.at_level(logging.INFO, logger="kndkit.rdma"):
        assert netns_mode() == "shared"
    assert "assuming shared" in caplog.text
    assert "RDMA not available on this node" in caplog.text


# --------------------------------------------------------------------------- char devices


def test_char_devices_from_sysfs_numbers(host: tuple[Path, Path, Any]) -> None:
    sysfs, dev, _ = host
    _add_mad_numbers(sysfs)
    (sysfs / "class" / "misc" / "rdma_cm").mkdir(parents=True)
    (sysfs / "class" / "misc" / "rdma_cm" / "dev").write_text("10:58\n")
    got = char_devices("mlx5_1", dev_root=dev, sysfs_root=sysfs, uid=1000, gid=2000, mode=0o660)
    assert got == (
        CharDevice("/dev/infiniband/uverbs1", "c", 231, 193, 0o660, 1000, 2000),
        CharDevice("/dev/infiniband/umad1", "c", 231, 1, 0o660, 1000, 2000),
        CharDevice("/dev/infiniband/issm1", "c", 231, 65, 0o660, 1000, 2000),
        CharDevice("/dev/infiniband/rdma_cm", "c", 10, 58, 0o660, 1000, 2000),
    )
    # defaults: everyone may read/write, owner left to the runtime
    d = char_devices("mlx5_4", dev_root=dev, sysfs_root=sysfs)[0]
    assert (d.path, d.major, d.minor, d.file_mode, d.uid, d.gid) == (
        "/dev/infiniband/uverbs4",
        231,
        196,
        0o666,
        None,
        None,
    )


def test_char_devices_prefer_the_real_node(tmp_path: Path) -> None:
    """``stat`` of a real character device wins over sysfs (mknod: needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    b = SysfsBuilder(tmp_path / "sys", tmp_path / "dev")
    pci = b.pci_function("0000:03:00.0", "devices/pci0000:00", vendor="0x15b3", device="0x101d")
    b.netdev("ib0", parent=pci)
    b.rdma_device("mlx5_0", pci, index=0, netdevs=["ib0"])
    ib = tmp_path / "dev" / "infiniband"
    for node, (major, minor) in {"uverbs0": (240, 7), "rdma_cm": (10, 121)}.items():
        (ib / node).unlink(missing_ok=True)
        os.mknod(ib / node, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    got = {
        d.path: (d.major, d.minor)
        for d in char_devices("mlx5_0", dev_root=tmp_path / "dev", sysfs_root=b.root)
    }
    assert got["/dev/infiniband/uverbs0"] == (240, 7)  # sysfs says 231:192
    assert got["/dev/infiniband/rdma_cm"] == (10, 121)


def test_char_devices_multi_port_and_record(tmp_path: Path) -> None:
    """Two ports: umad/issm per port, found through ``ibdev``; a discovered
    record adds the nodes it lists."""
    b = SysfsBuilder(tmp_path / "sys", tmp_path / "dev")
    pci = b.pci_function("0000:05:00.0", "devices/pci0000:00", vendor="0x15b3", device="0x1021")
    b.rdma_device("ibp5s0", pci, index=3, ports=2, char_devices=True)
    for kind in ("umad", "issm"):  # the second port's pair
        rel = f"{pci}/infiniband_mad/{kind}4"
        b.write(f"{rel}/ibdev", "ibp5s0")
        b.write(f"{rel}/port", "2")
        b.symlink(f"class/infiniband_mad/{kind}4", rel)
        b.dev_node(f"{kind}4")
    for kind, minor in (("umad3", 3), ("issm3", 67), ("umad4", 4), ("issm4", 68)):
        (b.root / "class" / "infiniband_mad" / kind / "dev").write_text(f"231:{minor}\n")
    topo = _native.discover(b.root, dev_root=tmp_path / "dev", netlink=False)
    (rd,) = topo.rdma_devices
    paths = [d.path for d in char_devices(rd, dev_root=tmp_path / "dev", sysfs_root=b.root)]
    assert paths == [
        "/dev/infiniband/uverbs3",
        "/dev/infiniband/umad3",
        "/dev/infiniband/umad4",
        "/dev/infiniband/issm3",
        "/dev/infiniband/issm4",
    ]


def test_char_devices_without_numbers_are_left_out(
    host: tuple[Path, Path, Any], caplog: pytest.LogCaptureFixture
) -> None:
    sysfs, dev, _ = host  # umad/issm have no dev attribute; /dev has plain files
    with caplog.at_level(logging.WARNING, logger="kndkit.rdma"):
        got = char_devices("mlx5_0", dev_root=dev, sysfs_root=sysfs)
    assert [d.path for d in got] == ["/dev/infiniband/uverbs0"]
    assert "umad0 left out" in caplog.text and "rdma_cm left out" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": 0o1666}, "file mode"),
        ({"mode": -1}, "file mode"),
        ({"uid": -1}, "uid"),
        ({"gid": 2**32}, "gid"),
        ({"rdma_device": "a/b"}, "not valid"),
        ({"rdma_device": ""}, "not valid"),
    ],
)
def test_char_devices_bad_input(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    args = {"rdma_device": "mlx5_0", "dev_root": tmp_path, "sysfs_root": tmp_path, **kwargs}
    with pytest.raises(InvalidArgument, match=match):
        char_devices(**args)


# --------------------------------------------------------------------------- plan step


def _node(topo: Any, rdma_name: str) -> NodeDevice:
    rd = next(r for r in topo.rdma_devices if r.name == rdma_name)
    nd = next((n for n in topo.netdevs if n.name in rd.netdevs), None)
    return NodeDevice(Device(name=rdma_name.replace("_", "-")), netdev=nd, rdma=rd)


def test_rdma_step_shared_and_exclusive(host: tuple[Path, Path, Any]) -> None:
    sysfs, dev, topo = host
    ctx = _Ctx(topo, sysfs, dev)
    node = _node(topo, "mlx5_0")
    plan = InterfacePlan.move(node.name, "enp1s0f0np0")
    shared = RdmaStep(mode="shared").apply(plan, None, node, ctx)
    assert shared.rdma is not None
    assert shared.rdma.device == "mlx5_0" and shared.rdma.exclusive is False
    assert [c.path for c in shared.rdma.char_devices] == ["/dev/infiniband/uverbs0"]
    exclusive = RdmaStep(mode="exclusive", uid=7).apply(plan, None, node, ctx)
    assert exclusive.rdma is not None and exclusive.rdma.exclusive is True
    assert exclusive.rdma.char_devices[0].uid == 7
    # the plan is data: persisted and read back exactly
    assert InterfacePlan.from_json(exclusive.to_json()) == exclusive
    # a device without an RDMA side is left alone
    plain = NodeDevice(Device(name="eth9"))
    assert RdmaStep(mode="shared").apply(plan, None, plain, ctx) is plan


def test_rdma_step_config_overrides(host: tuple[Path, Path, Any]) -> None:
    sysfs, dev, topo = host
    ctx = _Ctx(topo, sysfs, dev)
    node = _node(topo, "mlx5_4")
    plan = InterfacePlan(device=node.name, kind="rdma", rdma=RdmaPlan("mlx5_4"))
    step = RdmaStep(mode="shared", uid=1, gid=1, file_mode=0o600)
    for config in (
        {"rdma": {"uid": 1000, "fileMode": 0o660}},
        type("Cfg", (), {"rdma": RdmaSettings(uid=1000, file_mode=0o660)})(),
    ):
        (cd,) = step.apply(plan, config, node, ctx).rdma.char_devices  # type: ignore[union-attr]
        assert (cd.uid, cd.gid, cd.file_mode) == (1000, 1, 0o660)
    with pytest.raises(Exception, match="extra"):
        step.apply(plan, {"rdma": {"owner": 3}}, node, ctx)


def test_rdma_step_mode_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_mode() -> str:
        calls.append(1)
        return "exclusive"

    monkeypatch.setattr(_native, "rdma_get_netns_mode", fake_mode)
    step = RdmaStep()
    assert step.mode == "exclusive" and step.mode == "exclusive"
    assert len(calls) == 1


def test_rdma_step_refuses_device_without_verbs(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path / "sys", tmp_path / "dev")
    pci = b.pci_function("0000:03:00.0", "devices/pci0000:00", vendor="0x15b3", device="0x1021")
    b.rdma_device("mlx5_7", pci, index=7, char_devices=False)
    topo = _native.discover(b.root, dev_root=tmp_path / "dev", netlink=False)
    node = _node(topo, "mlx5_7")
    ctx = _Ctx(topo, b.root, tmp_path / "dev")
    plan = InterfacePlan(device="x", kind="rdma", rdma=RdmaPlan("mlx5_7"))
    with pytest.raises(NotAvailable, match="mlx5_7: no uverbs"):
        RdmaStep(mode="shared").apply(plan, None, node, ctx)
    lenient = RdmaStep(mode="shared", require_verbs=False)
    out = lenient.apply(plan, None, node, ctx)
    assert out.rdma == RdmaPlan(device="mlx5_7", exclusive=False, char_devices=())


def test_rdma_step_refuses_sub_interfaces_in_exclusive_mode(host: tuple[Path, Path, Any]) -> None:
    sysfs, dev, topo = host
    ctx = _Ctx(topo, sysfs, dev)
    node = _node(topo, "mlx5_0")
    plan = InterfacePlan.macvlan(node.name, "enp1s0f0np0")
    with pytest.raises(NotAvailable, match="mlx5_0 is in exclusive netns mode"):
        RdmaStep(mode="exclusive").apply(plan, None, node, ctx)
    shared = RdmaStep(mode="shared").apply(plan, None, node, ctx)
    assert shared.rdma is not None and not shared.rdma.exclusive


def test_rdma_step_bad_arguments() -> None:
    with pytest.raises(InvalidArgument, match="netns mode"):
        RdmaStep(mode="private")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="file mode"):
        RdmaStep(file_mode=0o7777)


# --------------------------------------------------------------------------- NRI adjustment

UVERBS0 = CharDevice("/dev/infiniband/uverbs0", "c", 231, 192, 0o666, 1000, 2000)
RDMA_CM = CharDevice("/dev/infiniband/rdma_cm", "c", 10, 58, 0o666, None, None)


def _rdma_plan(device: str, *chars: CharDevice) -> InterfacePlan:
    return InterfacePlan(device=device, kind="rdma", rdma=RdmaPlan(device, char_devices=chars))


def test_adjustment_bytes() -> None:
    adj = adjustment_for([_rdma_plan("mlx5_0", UVERBS0)])
    (dev,) = adj.to_proto().linux.devices
    path = b"/dev/infiniband/uverbs0"
    expected = (
        b"\x0a"
        + bytes([len(path)])
        + path  # 1: path
        + b"\x12\x01c"  # 2: type
        + b"\x18\xe7\x01"  # 3: major 231
        + b"\x20\xc0\x01"  # 4: minor 192
        + b"\x2a\x03\x08\xb6\x03"  # 5: file_mode {value: 0o666 = 438}
        + b"\x32\x03\x08\xe8\x07"  # 6: uid {value: 1000}
        + b"\x3a\x03\x08\xd0\x0f"  # 7: gid {value: 2000}
    )
    assert dev.SerializeToString() == expected


def test_adjustment_dedupes_and_takes_container_user() -> None:
    from kndkit._proto import nri_v1alpha1_pb2 as pb
    from kndkit.nri.model import Container

    uverbs1 = CharDevice("/dev/infiniband/uverbs1", "c", 231, 193, 0o600, None, None)
    plans = [
        _rdma_plan("mlx5_0", UVERBS0, RDMA_CM),
        _rdma_plan("mlx5_1", uverbs1, RDMA_CM),
        InterfacePlan.move("eth1", "eth1"),
    ]
    container = Container.from_proto(pb.Container(id="c1", user=pb.User(uid=4242, gid=77)))
    adj = adjustment_for(plans, container=container)
    got = [(d.path, d.major, d.minor, d.file_mode, d.uid, d.gid) for d in adj.devices]
    assert got == [
        ("/dev/infiniband/uverbs0", 231, 192, 0o666, 1000, 2000),  # owner given: kept
        ("/dev/infiniband/rdma_cm", 10, 58, 0o666, 4242, 77),
        ("/dev/infiniband/uverbs1", 231, 193, 0o600, 4242, 77),
    ]
    # without a container user the owner stays unset (the runtime's default)
    bare = adjustment_for(plans, container=Container.from_proto(pb.Container(id="c2")))
    assert bare.devices[1].uid is None
    assert adjustment_for([InterfacePlan.move("eth1", "eth1")]).is_empty()


def test_adjustment_conflicting_numbers() -> None:
    other = CharDevice("/dev/infiniband/rdma_cm", "c", 10, 59)
    with pytest.raises(InvalidArgument, match="rdma_cm: 10:58 in one plan, 10:59"):
        adjustment_for([_rdma_plan("a", RDMA_CM), _rdma_plan("b", other)])


# --------------------------------------------------------------------------- the rdma example


def _claim(device: str, node: str, config: dict[str, Any] | None = None) -> Any:
    from kndkit.k8s.claims import AllocatedDevice, Claim, PodRef

    alloc = AllocatedDevice(
        request="nic",
        pool=node,
        device=device,
        config=config or {},
        claim="ns1/claim1",
        config_layers=(config,) if config else (),
    )
    return Claim("ns1", "claim1", "uid-claim1", (PodRef("ns1", "pod1", "uid-pod1"),), (alloc,), "1")


def _rdma_driver(tmp_path: Path, sysfs: Path, dev: Path) -> Any:
    from kndkit.driver import DriverOptions
    from kndkit.examples.rdma import Rdma

    options = DriverOptions(
        node_name="node1",
        state_dir=str(tmp_path / "state"),
        sysfs_root=str(sysfs),
        dev_root=str(dev),
        metrics_port=None,
    )
    return Rdma(options)


async def test_example_prepares_ib_only_device(
    tmp_path: Path, host: tuple[Path, Path, Any]
) -> None:
    """Discovery on the fake tree (netdevs come from the real netlink dump, so only
    the InfiniBand-only adapter matches), prepare of a claim: a plan of kind rdma
    with the character devices and the claim's owner; CreateContainer injects them."""
    from kndkit._proto import nri_v1alpha1_pb2 as pb
    from kndkit.examples.rdma import Rdma
    from kndkit.nri.model import Container, Pod
    from kndkit.rdma import RdmaStep as Step

    sysfs, dev, _ = host
    _add_mad_numbers(sysfs)
    driver = _rdma_driver(tmp_path, sysfs, dev)
    assert Rdma.name == "rdma.kndkit.dev"
    assert isinstance(Rdma.steps[-1], Step)
    found = driver.discover_devices()
    ib = [d for d in found if d.rdma is not None and d.netdev is None]
    assert [d.rdma.name for d in ib] == ["mlx5_4"]
    driver.devices = {d.name: d for d in found}
    prepared = await driver.prepare_claim(
        _claim(ib[0].name, "node1", {"rdma": {"uid": 1000, "gid": 1000, "fileMode": 0o660}})
    )
    (raw,) = prepared.plans
    plan = InterfacePlan.from_json(raw)
    assert plan.kind == "rdma" and plan.rdma is not None
    assert plan.rdma.device == "mlx5_4"
    assert plan.rdma.exclusive is (netns_mode() == "exclusive")
    assert [(c.path, c.major, c.minor, c.file_mode, c.uid) for c in plan.rdma.char_devices] == [
        ("/dev/infiniband/uverbs4", 231, 196, 0o660, 1000),
        ("/dev/infiniband/umad4", 231, 4, 0o660, 1000),
        ("/dev/infiniband/issm4", 231, 68, 0o660, 1000),
    ]
    adj = await driver.on_create_container(
        Pod(id="p1", uid="uid-pod1"), Container.from_proto(pb.Container(id="c1")), [plan]
    )
    assert adj is not None
    assert [(d.path, d.file_mode, d.uid) for d in adj.devices] == [
        (c.path, 0o660, 1000) for c in plan.rdma.char_devices
    ]


async def test_example_refuses_netdev_config_for_ib_only(
    tmp_path: Path, host: tuple[Path, Path, Any]
) -> None:
    from kndkit.k8s.errors import ConfigError

    sysfs, dev, _ = host
    driver = _rdma_driver(tmp_path, sysfs, dev)
    found = driver.discover_devices()
    driver.devices = {d.name: d for d in found}
    ib = next(d for d in found if d.netdev is None)
    bad = {
        "interface": {"name": "ib0", "mtu": 4000},
        "routes": [{"destination": "10.0.0.0/8", "scope": 253}],
    }
    with pytest.raises(ConfigError, match="no network interface") as e:
        await driver.prepare_claim(_claim(ib.name, "node1", bad))
    assert e.value.field == "interface.name"
    with pytest.raises(ConfigError, match="owner"):
        await driver.prepare_claim(_claim(ib.name, "node1", {"rdma": {"owner": 1}}))


def test_example_health_from_port_states(tmp_path: Path, host: tuple[Path, Path, Any]) -> None:
    from kndkit.dra.types import HealthStatus

    sysfs, dev, _ = host
    driver = _rdma_driver(tmp_path, sysfs, dev)
    ib = next(d for d in driver.discover_devices() if d.netdev is None)
    assert port_states("mlx5_4", sysfs_root=sysfs) == {1: "ACTIVE"}
    assert driver.health(ib) == (HealthStatus.HEALTHY, "mlx5_4: port 1 ACTIVE")
    (sysfs / "class" / "infiniband" / "mlx5_4" / "ports" / "1" / "state").write_text("1: DOWN\n")
    assert driver.health(ib) == (HealthStatus.UNHEALTHY, "mlx5_4: port 1 DOWN")
    assert port_states("mlx5_99", sysfs_root=sysfs) == {}


def test_example_on_the_real_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No RDMA here: the driver's discovery publishes nothing RDMA and says why."""
    if os.path.isdir("/sys/class/infiniband") and os.listdir("/sys/class/infiniband"):
        pytest.skip("this node has RDMA devices")
    driver = _rdma_driver(tmp_path, Path("/sys"), Path("/dev"))
    with caplog.at_level(logging.INFO, logger="kndkit.rdma"):
        assert driver.discover_devices() == []
    assert "RDMA not available on this node" in caplog.text
