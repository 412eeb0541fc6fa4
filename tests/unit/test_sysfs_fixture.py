"""The fake sysfs builder (kndkit.testing.sysfs) lays trees out like the kernel."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from kndkit.testing import SysfsBuilder, build_from_capture, build_synthetic
from kndkit.testing.sysfs import GPU_VM_CAPTURE as CAPTURE


def _all_links_relative_and_resolvable(root: pathlib.Path) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = pathlib.Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                assert not target.startswith("/"), f"{p} -> {target} is absolute"
                assert p.exists(), f"{p} -> {target} dangles"
                assert p.resolve().is_relative_to(root.resolve()), f"{p} leaves the tree"
                n += 1
    return n


def test_capture_is_replayed_with_kernel_layout(tmp_path: pathlib.Path) -> None:
    cap = json.loads(CAPTURE.read_text())
    root = build_from_capture(CAPTURE, tmp_path / "sys", dev_root=tmp_path / "dev")
    assert root == tmp_path / "sys"
    # every netdev of the capture, at its real path, with its attributes
    for name, attrs in cap["net"].items():
        link = root / "class/net" / name
        assert link.is_symlink()
        real = link.resolve()
        assert real == (root / attrs["realpath"].removeprefix("/sys/")).resolve()
        assert (real / "mtu").read_text().strip() == attrs["mtu"]
        assert (real / "address").read_text().strip() == attrs["address"]
    # eth0's device link is the capture's own relative link, to the virtio device
    eth0 = (root / "class/net/eth0").resolve()
    assert os.readlink(eth0 / "device") == "../../../virtio2"
    assert (eth0 / "device").resolve().name == "virtio2"
    assert (root / "bus/virtio/devices/virtio2").resolve() == (eth0 / "device").resolve()
    # every PCI function, with its driver link and bus entry
    for addr, attrs in cap["pci"].items():
        d = (root / "bus/pci/devices" / addr).resolve()
        assert d.name == addr
        assert (d / "vendor").read_text().strip() == attrs["vendor"]
        assert (d / "numa_node").read_text().strip() == attrs["numa_node"]
        if attrs["driver"]:
            assert (d / "driver").resolve().name == attrs["driver"]
        else:
            assert not (d / "driver").exists()
    gpu = (root / "bus/pci/devices/0000:00:06.0").resolve()
    assert gpu.parent.name == "pci0000:00"
    assert (root / "devices/system/node/node0/cpulist").read_text().strip() == "0-15"
    assert (tmp_path / "dev/infiniband/rdma_cm").exists()
    assert _all_links_relative_and_resolvable(root) > 10


def test_capture_with_sriov_and_rdma(tmp_path: pathlib.Path) -> None:
    """The replay understands physfn/virtfn and RDMA entries too (shape of a
    capture from an SR-IOV host)."""
    cap = {
        "pci": {
            "0000:3b:00.0": {
                "vendor": "0x15b3",
                "device": "0x101d",
                "numa_node": "1",
                "driver": "mlx5_core",
                "realpath": "/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0",
                "virtfn": {"virtfn0": "../0000:3b:00.2"},
                "physfn": None,
            },
            "0000:3b:00.2": {
                "vendor": "0x15b3",
                "device": "0x101e",
                "numa_node": "1",
                "driver": "mlx5_core",
                "realpath": "/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.2",
                "physfn": "../0000:3b:00.0",
                "virtfn": {},
            },
        },
        "net": {
            "ens1f0np0": {
                "ifindex": "5",
                "address": "b8:3f:d2:00:00:01",
                "mtu": "9000",
                "operstate": "up",
                "type": "1",
                "realpath": "/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/net/ens1f0np0",
                "device_realpath": "/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0",
                "upper": [],
                "lower": [],
                "master": None,
            }
        },
        "infiniband": {"mlx5_0": {"pci": "0000:3b:00.0", "netdevs": ["ens1f0np0"]}},
        "dev_infiniband": ["rdma_cm"],
    }
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(cap))
    root = build_from_capture(path, tmp_path / "sys", dev_root=tmp_path / "dev")
    pf = root / "devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0"
    assert os.readlink(pf / "virtfn0") == "../0000:3b:00.2"
    assert os.readlink(pf.parent / "0000:3b:00.2" / "physfn") == "../0000:3b:00.0"
    ib = (root / "class/infiniband/mlx5_0").resolve()
    assert ib == pf / "infiniband/mlx5_0"
    assert (ib / "ports/1/gid_attrs/ndevs/0").read_text().strip() == "ens1f0np0"
    assert (pf / "infiniband_verbs/uverbs0/ibdev").read_text().strip() == "mlx5_0"
    assert {p.name for p in (tmp_path / "dev/infiniband").iterdir()} == {
        "uverbs0",
        "umad0",
        "issm0",
        "rdma_cm",
    }
    _all_links_relative_and_resolvable(root)


def test_capture_paths_cannot_escape_the_root(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cap.json"
    path.write_text(json.dumps({"net": {"x": {"realpath": "/sys/../../etc/x"}}}))
    with pytest.raises(ValueError, match="leaves the sysfs root"):
        build_from_capture(path, tmp_path / "sys")
    assert not (tmp_path / "etc").exists()


def test_synthetic_layout(tmp_path: pathlib.Path) -> None:
    root = build_synthetic(
        tmp_path / "sys",
        root_complexes=2,
        numa_nodes=2,
        pfs=3,
        vfs_per_pf=2,
        dev_root=tmp_path / "dev",
    )
    nets = sorted(p.name for p in (root / "class/net").iterdir())
    assert len(nets) == 1 + 3 * 3 + 4
    assert {"lo", "br0", "veth0", "veth1", "mv0"} <= set(nets)
    pf = (root / "class/net/enp1s0f0np0/device").resolve()
    assert pf.name == "0000:01:00.0"
    assert pf.parent.parent.name == "pci0000:00"  # root port, then host bridge
    assert (pf / "vendor").read_text().strip() == "0x15b3"
    assert (pf / "device").read_text().strip() == "0x101d"
    assert (pf / "driver").resolve().name == "mlx5_core"
    assert (pf / "sriov_numvfs").read_text().strip() == "2"
    vf0 = (pf / "virtfn0").resolve()
    assert vf0.name == "0000:01:00.2"
    assert (vf0 / "physfn").resolve() == pf
    assert (vf0 / "device").read_text().strip() == "0x101e"
    # PF 1 sits on the second root complex, on the other NUMA node
    pf1 = (root / "class/net/enp129s0f0np0/device").resolve()
    assert pf1.parent.parent.name == "pci0000:80"
    assert (pf1 / "numa_node").read_text().strip() == "1"
    # RDMA per PF and VF plus one InfiniBand-only adapter
    ibs = sorted(p.name for p in (root / "class/infiniband").iterdir())
    assert len(ibs) == 3 * 3 + 1
    assert ((root / "class/infiniband/mlx5_0").resolve() / "device").resolve() == pf
    # GPUs: one per root complex
    gpus = [
        p
        for p in (root / "bus/pci/devices").iterdir()
        if (p / "class").read_text().strip() == "0x030200"
    ]
    assert len(gpus) == 2
    dev = {p.name for p in (tmp_path / "dev/infiniband").iterdir()}
    assert {"uverbs0", "umad0", "issm0", "rdma_cm", "uverbs9"} <= dev
    # bridge port and macvlan links
    veth0 = (root / "class/net/veth0").resolve()
    assert (veth0 / "master").resolve().name == "br0"
    assert (root / "class/net/br0/lower_veth0").resolve() == veth0
    assert (root / "class/net/enp1s0f0np0/upper_mv0").resolve().name == "mv0"
    _all_links_relative_and_resolvable(root)


def test_synthetic_without_numa_writes_minus_one(tmp_path: pathlib.Path) -> None:
    root = build_synthetic(tmp_path / "sys", numa_nodes=0, pfs=1, vfs_per_pf=0, rdma=False)
    pf = (root / "class/net/enp1s0f0np0/device").resolve()
    assert (pf / "numa_node").read_text().strip() == "-1"
    assert not (root / "class/infiniband").exists()
    assert not (pf / "sriov_totalvfs").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"root_complexes": 0},
        {"vfs_per_pf": 300},
        {"pfs": -1},
        {"numa_nodes": -1},
        {"root_complexes": 16, "pfs": 300},
    ],
)
def test_synthetic_rejects_impossible_hosts(tmp_path: pathlib.Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        build_synthetic(tmp_path / "sys", **kwargs)


def test_builder_refuses_bad_and_duplicate_names(tmp_path: pathlib.Path) -> None:
    b = SysfsBuilder(tmp_path / "sys")
    b.netdev("eth0")
    with pytest.raises(ValueError, match="already exists"):
        b.netdev("eth0")
    for bad in ("", "a/b", "..", "a b"):
        with pytest.raises(ValueError):
            b.netdev(bad)
    assert b.netdev_dir("eth0") == tmp_path / "sys/devices/virtual/net/eth0"
    assert (b.netdev_dir("eth0") / "ifindex").read_text() == "1\n"
    assert b.netdev("eth1", ifindex=7) and (b.netdev_dir("eth1") / "ifindex").read_text() == "7\n"
    b.netdev("eth2")
    assert (b.netdev_dir("eth2") / "ifindex").read_text() == "8\n"
