"""discover() on fake sysfs trees: the real GPU host, a 1,024-netdev synthetic
host, malformed attributes and a missing root."""

from __future__ import annotations

import collections
import logging
import os
import pathlib

import pytest

from kndkit._native import Discovery, NetDevice, NetNs, RdmaDevice, discover
from kndkit.errors import InvalidArgument
from kndkit.testing.sysfs import (
    GPU_VM_CAPTURE,
    SysfsBuilder,
    build_from_capture,
    build_synthetic,
)

# --------------------------------------------------------------------------- the GPU host


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    base = tmp_path_factory.mktemp("gpu-host")
    root = build_from_capture(GPU_VM_CAPTURE, base / "sys", dev_root=base / "dev")
    return root, base / "dev"


def test_gpu_host_netdevs(gpu_host: tuple[pathlib.Path, pathlib.Path]) -> None:
    root, dev = gpu_host
    found = discover(root, dev_root=dev)  # not /sys: netlink defaults to off
    assert isinstance(found, Discovery)
    assert found.warnings == []
    assert [(n.ifindex, n.name, n.kind) for n in found.netdevs] == [
        (1, "lo", "loopback"),
        (2, "ifb0", "virtual"),
        (3, "ifb1", "virtual"),
        (4, "eth0", "physical"),
    ]
    eth0 = found.netdevs[3]
    assert isinstance(eth0, NetDevice)
    assert eth0.mac == "02:fc:00:00:00:01"
    assert eth0.mtu == 1400
    assert eth0.operstate == "up"
    # the netdev hangs off virtio2; its PCI function is the one above it
    assert eth0.pci_address == "0000:00:03.0"
    assert (eth0.vendor_id, eth0.device_id) == ("0x1af4", "0x1041")
    assert (eth0.subsystem_vendor_id, eth0.subsystem_device_id) == ("0x1af4", "0x1041")
    assert eth0.driver == "virtio-pci"
    assert eth0.numa_node is None  # the capture reads -1: absent, never -1
    assert eth0.pcie_root == "pci0000:00"
    assert eth0.sriov_totalvfs is None and eth0.virtfns == [] and eth0.physfn is None
    assert eth0.rdma_device is None and eth0.char_devices == []
    lo = found.netdevs[0]
    assert lo.pci_address is None and lo.pcie_root is None and lo.mtu == 65536
    assert found.rdma_devices == []  # the host has rdma_cm but no RDMA device


def test_gpu_shares_the_nics_root_complex(gpu_host: tuple[pathlib.Path, pathlib.Path]) -> None:
    root, dev = gpu_host
    eth0 = next(n for n in discover(root, dev_root=dev).netdevs if n.name == "eth0")
    gpu = (root / "bus/pci/devices/0000:00:06.0").resolve()
    assert (gpu / "vendor").read_text().strip() == "0x10de"
    roots = [p for p in gpu.relative_to(root.resolve()).parts if p.startswith("pci")]
    assert roots == [eth0.pcie_root]


def test_to_dict_is_complete_and_plain(gpu_host: tuple[pathlib.Path, pathlib.Path]) -> None:
    root, dev = gpu_host
    found = discover(root, dev_root=dev)
    d = found.to_dict()
    assert set(d) == {"netdevs", "rdma_devices", "warnings"}
    eth0 = d["netdevs"][3]
    fields = [n for n in dir(NetDevice) if not n.startswith("_") and n != "to_dict"]
    assert set(eth0) == set(fields)
    assert eth0["pcie_root"] == "pci0000:00" and eth0["numa_node"] is None
    assert "NetDevice(ifindex=4" in repr(found.netdevs[3])


def test_records_are_frozen(gpu_host: tuple[pathlib.Path, pathlib.Path]) -> None:
    root, dev = gpu_host
    eth0 = discover(root, dev_root=dev).netdevs[3]
    with pytest.raises(AttributeError):
        eth0.mtu = 9000  # type: ignore[misc]


def test_pathlike_roots(gpu_host: tuple[pathlib.Path, pathlib.Path]) -> None:
    root, dev = gpu_host
    a = discover(str(root), dev_root=str(dev)).to_dict()
    b = discover(root, dev_root=dev, netlink=False).to_dict()
    assert a == b


# --------------------------------------------------------------------------- 1,024 devices

PFS, VFS = 16, 63  # 16 * (1 + 63) = 1,024 netdevs


@pytest.fixture(scope="module")
def big_host(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    base = tmp_path_factory.mktemp("big-host")
    root = build_synthetic(
        base / "sys",
        root_complexes=4,
        numa_nodes=2,
        pfs=PFS,
        vfs_per_pf=VFS,
        standalone_rdma=2,
        loopback=False,
        virtual_links=False,
        dev_root=base / "dev",
    )
    return root, base / "dev"


@pytest.fixture(scope="module")
def big(big_host: tuple[pathlib.Path, pathlib.Path]) -> Discovery:
    root, dev = big_host
    return discover(root, dev_root=dev)


def test_big_host_counts(big: Discovery) -> None:
    assert big.warnings == []
    assert len(big.netdevs) == 1024
    assert len({n.ifindex for n in big.netdevs}) == 1024
    pfs = [n for n in big.netdevs if n.sriov_totalvfs is not None]
    vfs = [n for n in big.netdevs if n.physfn is not None]
    assert len(pfs) == PFS and len(vfs) == PFS * VFS
    assert all(n.kind == "physical" and n.driver == "mlx5_core" for n in big.netdevs)
    assert {n.device_id for n in pfs} == {"0x101d"} and {n.device_id for n in vfs} == {"0x101e"}
    assert {n.vendor_id for n in big.netdevs} == {"0x15b3"}
    assert [n.ifindex for n in big.netdevs] == sorted(n.ifindex for n in big.netdevs)


def test_big_host_pf_vf_links(big: Discovery) -> None:
    by_pci = {n.pci_address: n for n in big.netdevs}
    for pf in (n for n in big.netdevs if n.sriov_totalvfs is not None):
        assert pf.sriov_numvfs == VFS and pf.sriov_totalvfs == VFS
        assert len(pf.virtfns) == VFS
        for vf_addr in pf.virtfns:
            vf = by_pci[vf_addr]
            assert vf.physfn == pf.pci_address
            assert vf.pcie_root == pf.pcie_root and vf.numa_node == pf.numa_node
        # index order: virtfn0 is the first VF netdev of this PF
        assert by_pci[pf.virtfns[0]].name == pf.name.replace("np0", "v0")


def test_big_host_numa_and_root_complexes(big: Discovery) -> None:
    per_root = collections.Counter(n.pcie_root for n in big.netdevs)
    assert set(per_root) == {"pci0000:00", "pci0000:40", "pci0000:80", "pci0000:c0"}
    assert set(per_root.values()) == {1024 // 4}
    numa = {n.pcie_root: n.numa_node for n in big.netdevs}
    assert numa == {"pci0000:00": 0, "pci0000:40": 0, "pci0000:80": 1, "pci0000:c0": 1}


def test_big_host_rdma_mapping(big: Discovery, big_host: tuple[pathlib.Path, pathlib.Path]) -> None:
    rdma = {r.name: r for r in big.rdma_devices}
    assert len(rdma) == 1024 + 2
    assert [r.name for r in big.rdma_devices][:3] == ["mlx5_0", "mlx5_1", "mlx5_2"]  # natural order
    for n in big.netdevs:
        assert n.rdma_device is not None
        r = rdma[n.rdma_device]
        assert isinstance(r, RdmaDevice)
        assert r.netdevs == [n.name]
        assert r.pci_address == n.pci_address and r.numa_node == n.numa_node
        idx = n.rdma_device.removeprefix("mlx5_")
        assert n.char_devices == [
            f"/dev/infiniband/uverbs{idx}",
            f"/dev/infiniband/umad{idx}",
            f"/dev/infiniband/issm{idx}",
            "/dev/infiniband/rdma_cm",
        ]
        assert r.char_devices == n.char_devices
    standalone = [r for r in big.rdma_devices if not r.netdevs]
    assert [r.name for r in standalone] == ["mlx5_1024", "mlx5_1025"]
    for r in standalone:
        assert r.pci_address is not None and r.node_type == "CA"
        assert r.pcie_root is not None and r.numa_node in (0, 1)
        assert f"/dev/infiniband/uverbs{r.name.removeprefix('mlx5_')}" in r.char_devices


def test_char_devices_missing_from_dev_root_are_left_out(
    big_host: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    root, _ = big_host
    found = discover(root, dev_root=tmp_path / "empty-dev")
    assert all(n.char_devices == [] for n in found.netdevs)
    assert any("uverbs0" in w for w in found.warnings)


# --------------------------------------------------------------------------- robustness


@pytest.fixture
def small_host(tmp_path: pathlib.Path) -> pathlib.Path:
    return build_synthetic(
        tmp_path / "sys", root_complexes=2, pfs=2, vfs_per_pf=2, dev_root=tmp_path / "dev"
    )


def _net(root: pathlib.Path, name: str) -> pathlib.Path:
    return (root / "class/net" / name).resolve()


def test_malformed_attributes_warn_and_continue(
    small_host: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = small_host
    pf = _net(root, "enp1s0f0np0")
    (pf / "mtu").write_text("not-a-number\n")
    (pf / "device/numa_node").write_text("banana\n")
    (pf / "device/vendor").write_text("0xZZZZ\n")
    (pf / "device/sriov_numvfs").write_text("-3\n")
    (_net(root, "veth0") / "ifindex").write_text("\n")
    os.unlink(_net(root, "mv0") / "uevent")
    with caplog.at_level(logging.WARNING, logger="kndkit.discover"):
        found = discover(root, dev_root=root.parent / "dev")
    by = {n.name: n for n in found.netdevs}
    assert len(by) == 1 + 2 * 3 + 4  # nobody dropped
    bad = by["enp1s0f0np0"]
    assert bad.mtu == 0 and bad.numa_node is None and bad.vendor_id is None
    assert bad.device_id == "0x101d" and bad.pcie_root == "pci0000:00"  # the rest still read
    assert bad.sriov_numvfs is None and bad.virtfns == []
    assert by["veth0"].ifindex > 0  # fell back to uevent IFINDEX
    assert by["mv0"].kind == "virtual" and by["mv0"].lowers == ["enp1s0f0np0"]
    text = "\n".join(found.warnings)
    for needle in ("mtu", "banana", "0xZZZZ", "sriov_numvfs", "ifindex"):
        assert needle in text, (needle, found.warnings)
    # the same lines reach the kndkit.discover logger
    assert {r.getMessage() for r in caplog.records} >= set(found.warnings)
    # a sibling VF on the same PF is unaffected
    assert by["enp1s0f0v0"].physfn == bad.pci_address and by["enp1s0f0v0"].numa_node == 0


def test_unreadable_attribute_is_a_warning(small_host: pathlib.Path) -> None:
    root = small_host
    attr = _net(root, "enp1s0f0np0") / "operstate"
    attr.unlink()
    attr.mkdir()  # reading a directory fails with EISDIR
    found = discover(root, dev_root=root.parent / "dev")
    by = {n.name: n for n in found.netdevs}
    assert by["enp1s0f0np0"].operstate == "unknown"
    assert any("operstate" in w for w in found.warnings)


def test_dangling_device_link_keeps_the_netdev(small_host: pathlib.Path) -> None:
    root = small_host
    net = _net(root, "enp1s0f0v1")
    os.unlink(net / "device")
    os.symlink("../../../0000:ff:1f.7", net / "device")
    found = discover(root, dev_root=root.parent / "dev")
    vf = next(n for n in found.netdevs if n.name == "enp1s0f0v1")
    assert vf.kind == "physical"
    # the PCI function it names does not exist: no PCI facts, a warning, no crash
    assert vf.pci_address is None and vf.vendor_id is None and vf.numa_node is None
    assert any("0000:ff:1f.7" in w and "dangling" in w for w in found.warnings)
    assert sum(1 for n in found.netdevs if n.pci_address) == 2 * 3 - 1


def test_missing_root_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "no-such-sys"
    with pytest.raises(InvalidArgument, match="no-such-sys"):
        discover(missing)
    with pytest.raises(InvalidArgument, match="class/net"):
        discover(tmp_path)  # exists, but is no sysfs tree
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        discover(f)


def test_ns_needs_netlink(small_host: pathlib.Path) -> None:
    with NetNs.current() as ns, pytest.raises(InvalidArgument, match="netlink"):
        discover(small_host, ns=ns, netlink=False)


def test_small_host_virtual_links(small_host: pathlib.Path) -> None:
    found = discover(small_host, dev_root=small_host.parent / "dev")
    by = {n.name: n for n in found.netdevs}
    assert by["br0"].kind == "bridge" and by["br0"].lowers == ["veth0"]
    assert by["veth0"].master == "br0" and by["veth0"].uppers == ["br0"]
    assert by["veth1"].kind == "virtual" and by["veth1"].master is None
    assert by["enp1s0f0np0"].uppers == ["mv0"]
    assert by["lo"].kind == "loopback"
    assert by["enp129s0f0np0"].numa_node == 1 and by["enp129s0f0np0"].pcie_root == "pci0000:80"


# --------------------------------------------------------------------------- fuzz

_ATTRS = [
    "ifindex",
    "address",
    "mtu",
    "operstate",
    "type",
    "uevent",
    "device/vendor",
    "device/device",
    "device/subsystem_vendor",
    "device/numa_node",
    "device/sriov_totalvfs",
    "device/sriov_numvfs",
]


def test_garbage_in_any_attribute_never_breaks_the_walk(tmp_path: pathlib.Path) -> None:
    """Random bytes in any attribute of any netdev: every netdev is still found,
    nothing raises, and a NUMA node is never negative."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    root = build_synthetic(
        tmp_path / "sys", root_complexes=2, pfs=2, vfs_per_pf=1, dev_root=tmp_path / "dev"
    )
    dev = tmp_path / "dev"
    names = sorted(p.name for p in (root / "class/net").iterdir())
    expected = len(discover(root, dev_root=dev).netdevs)

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        st.sampled_from(names),
        st.sampled_from(_ATTRS),
        st.binary(max_size=64)
        | st.sampled_from([b"-1", b"0x", b"4294967296", b"\xff\xfe", b"", b"\n\n"]),
    )
    def check(name: str, attr: str, garbage: bytes) -> None:
        path = _net(root, name) / attr
        if not path.exists():
            return
        original = path.read_bytes()
        path.write_bytes(garbage)
        try:
            found = discover(root, dev_root=dev)
        finally:
            path.write_bytes(original)
        assert len(found.netdevs) == expected
        assert all(n.numa_node is None or n.numa_node >= 0 for n in found.netdevs)
        assert {n.name for n in found.netdevs} == set(names)

    check()


def test_usb_nic_is_not_given_its_host_controllers_ids(tmp_path: pathlib.Path) -> None:
    b = SysfsBuilder(tmp_path / "sys")
    xhci = b.pci_function(
        "0000:00:14.0", "devices/pci0000:00", vendor="0x8086", device="0xa0ed", class_="0x0c0330"
    )
    usb = b.bus_device("usb", "1-1:1.0", f"{xhci}/usb1/1-1")
    b.netdev("enx001122334455", parent=usb, mac="00:11:22:33:44:55")
    virtio_pci = b.pci_function(
        "0000:00:03.0", "devices/pci0000:00", vendor="0x1af4", device="0x1041", driver="virtio-pci"
    )
    b.netdev("eth0", parent=b.bus_device("virtio", "virtio0", virtio_pci))
    by = {n.name: n for n in discover(b.root, netlink=False).netdevs}
    usb_nic = by["enx001122334455"]
    assert usb_nic.kind == "physical"
    assert usb_nic.pci_address is None and usb_nic.vendor_id is None
    assert usb_nic.pcie_root == "pci0000:00"
    assert by["eth0"].pci_address == "0000:00:03.0" and by["eth0"].driver == "virtio-pci"


def test_module_docstring_example(tmp_path: pathlib.Path) -> None:
    sysfs = build_synthetic(tmp_path / "sys", pfs=2, vfs_per_pf=4, dev_root=tmp_path / "dev")
    found = discover(sysfs, dev_root=tmp_path / "dev", netlink=False)
    assert len([d for d in found.netdevs if d.physfn]) == 8


def test_inconsistent_sriov_counts(small_host: pathlib.Path) -> None:
    root = small_host
    pf0 = _net(root, "enp1s0f0np0") / "device"
    pf1 = _net(root, "enp129s0f0np0") / "device"
    (pf0 / "sriov_numvfs").write_text("4000000\n")  # more than totalvfs: ignored
    (pf1 / "sriov_numvfs").write_text("3\n")  # one more than the virtfn links
    found = discover(root, dev_root=root.parent / "dev")
    by = {n.name: n for n in found.netdevs}
    assert by["enp1s0f0np0"].sriov_numvfs is None and by["enp1s0f0np0"].virtfns == []
    assert by["enp129s0f0np0"].sriov_numvfs == 3 and len(by["enp129s0f0np0"].virtfns) == 2
    assert any("exceeds sriov_totalvfs" in w for w in found.warnings)
    assert sum("virtfn2 is missing" in w for w in found.warnings) == 1


def test_fifo_and_oversized_attributes_do_not_hang(small_host: pathlib.Path) -> None:
    root = small_host
    net = _net(root, "veth1")
    os.unlink(net / "mtu")
    os.mkfifo(net / "mtu")  # opening a FIFO for reading would block without O_NONBLOCK
    (net / "address").write_text("aa:" * 100_000)
    found = discover(root, dev_root=root.parent / "dev")
    veth1 = next(n for n in found.netdevs if n.name == "veth1")
    assert veth1.mtu == 0
    assert veth1.mac is not None and len(veth1.mac) <= 4096
    assert any("veth1" in w and "mtu" in w for w in found.warnings)
