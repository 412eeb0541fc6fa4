"""Fake sysfs trees for discovery tests.

Discovery (:func:`kndkit._native.discover`) takes the sysfs root as a
parameter, so tests can point it at a directory that looks like ``/sys``:
attribute files, and *relative* symlinks laid out the way the kernel lays
them out (``class/net/<if>`` -> ``devices/.../net/<if>``, ``device``,
``driver``, ``physfn``, ``virtfn<N>``, ``class/infiniband/<dev>``...).

Three ways to get one:

* :func:`build_from_capture` recreates a real host from a JSON capture (the
  format of ``gpu-vm-topology.json``: ``net``, ``pci``, ``numa_nodes``,
  ``infiniband``, ``dev_infiniband``).
* :func:`build_synthetic` makes a large, realistic host: several PCIe root
  complexes and NUMA nodes, ConnectX-like PFs (``15b3:101d``, ``mlx5_core``)
  with SR-IOV VFs (``15b3:101e``), RDMA devices with their ``uverbs``/``umad``/
  ``issm`` character devices, InfiniBand-only RDMA devices without a netdev,
  GPUs, and a few virtual links (bridge, veth, macvlan).
* :class:`SysfsBuilder` composes a tree device by device, for a test that
  needs exactly one odd case.

A fake ``/dev`` (``<dev_root>/infiniband/...``) is made of empty regular
files, so no privileges are needed. Example::

    from kndkit._native import discover
    from kndkit.testing.sysfs import build_synthetic

    def test_my_source(tmp_path):
        sysfs = build_synthetic(tmp_path / "sys", pfs=2, vfs_per_pf=4,
                                dev_root=tmp_path / "dev")
        found = discover(sysfs, dev_root=tmp_path / "dev", netlink=False)
        assert len([d for d in found.netdevs if d.physfn]) == 8
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CONNECTX_IB_DEVICE",
    "CONNECTX_PF_DEVICE",
    "CONNECTX_VF_DEVICE",
    "GPU_VM_CAPTURE",
    "MELLANOX_VENDOR",
    "SysfsBuilder",
    "build_from_capture",
    "build_synthetic",
]

#: A real capture of a GPU host (one NVIDIA H200 and a virtio NIC under root
#: complex ``pci0000:00``, no NUMA information), for :func:`build_from_capture`.
GPU_VM_CAPTURE = Path(__file__).resolve().parent / "data" / "gpu-vm-topology.json"

MELLANOX_VENDOR = "0x15b3"
#: ConnectX-6 Dx physical function (Ethernet / RoCE), ``mlx5_core``.
CONNECTX_PF_DEVICE = "0x101d"
#: ConnectX family SR-IOV virtual function.
CONNECTX_VF_DEVICE = "0x101e"
#: ConnectX-7, used for the InfiniBand-only adapters of synthetic hosts.
CONNECTX_IB_DEVICE = "0x1021"

_NET_CLASS = "0x020000"
_IB_CLASS = "0x020700"
_GPU_CLASS = "0x030200"
_BRIDGE_CLASS = "0x060400"
_UVERBS_MAJOR = 231


def _check_name(kind: str, name: str) -> None:
    if not name or "/" in name or name in (".", "..") or any(c.isspace() for c in name):
        raise ValueError(f"invalid {kind} name {name!r}")


@dataclass
class SysfsBuilder:
    """Writes a fake sysfs tree under ``root`` (and fake char devices under
    ``dev_root`` when given). Every method returns the directory it created,
    as a path relative to ``root`` (``devices/pci0000:00/0000:00:03.0``).

    Symlinks are relative, exactly like the kernel's, so the tree can be moved
    or copied.
    """

    root: Path
    dev_root: Path | None = None
    _next_ifindex: int = field(default=1, init=False)
    _net_dirs: dict[str, str] = field(default_factory=dict, init=False)
    _made: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.dev_root is not None:
            self.dev_root = Path(self.dev_root)
        self.root.mkdir(parents=True, exist_ok=True)
        for d in ("devices/virtual/net", "class/net", "bus/pci/devices", "bus/pci/drivers"):
            self.mkdir(d)

    # ------------------------------------------------------------------ primitives

    def mkdir(self, rel: str) -> Path:
        """Creates directory ``rel`` (and its parents) once."""
        p = self.root / rel
        if rel not in self._made:
            os.makedirs(p, exist_ok=True)
            self._made.add(rel)
        return p

    def write(self, rel: str, value: str) -> Path:
        """Writes one attribute file (a newline is appended, as sysfs does)."""
        self.mkdir(os.path.dirname(rel))
        p = self.root / rel
        with open(p, "w") as f:
            f.write(value if value.endswith("\n") else value + "\n")
        return p

    def symlink(self, rel: str, target_rel: str) -> Path:
        """Creates ``rel`` as a relative symlink to ``target_rel`` (both relative
        to the root). An existing link of that name is replaced."""
        self.mkdir(os.path.dirname(rel))
        link = self.root / rel
        target = os.path.relpath(self.root / target_rel, link.parent)
        if all(part == ".." for part in Path(target).parts):
            # The kernel spells a link to an ancestor as "../../../<name>".
            target = os.path.join(target, "..", Path(target_rel).name)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
        return link

    def dev_node(self, name: str) -> Path | None:
        """Creates ``<dev_root>/infiniband/<name>`` (an empty regular file
        standing in for the character device); nothing without a dev_root."""
        if self.dev_root is None:
            return None
        p = self.dev_root / "infiniband" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        return p

    def netdev_dir(self, name: str) -> Path:
        """The real directory of netdev ``name`` (what ``class/net/<name>`` points to)."""
        return self.root / self._net_dirs[name]

    # ------------------------------------------------------------------ devices

    def numa_node(self, node: int, cpulist: str = "0-15", distance: str = "10") -> str:
        rel = f"devices/system/node/node{node}"
        self.write(f"{rel}/cpulist", cpulist)
        self.write(f"{rel}/distance", distance)
        return rel

    def pci_function(
        self,
        address: str,
        parent: str,
        *,
        vendor: str,
        device: str,
        class_: str = _NET_CLASS,
        subsystem_vendor: str | None = None,
        subsystem_device: str | None = None,
        driver: str | None = None,
        numa_node: int | str = -1,
        revision: str = "0x00",
        attrs: Mapping[str, str] | None = None,
    ) -> str:
        """A PCI function directory ``<parent>/<address>`` with its IDs,
        ``numa_node``, ``driver`` link, ``subsystem`` link and the
        ``bus/pci/devices/<address>`` link. ``parent`` is ``devices/pci0000:00``
        or a bridge below it."""
        rel = f"{parent}/{address}"
        values: dict[str, str] = {
            "vendor": vendor,
            "device": device,
            "class": class_,
            "subsystem_vendor": subsystem_vendor or vendor,
            "subsystem_device": subsystem_device or device,
            "numa_node": str(numa_node),
            "revision": revision,
            "enable": "1" if driver else "0",
        }
        values.update(attrs or {})
        for k, v in values.items():
            self.write(f"{rel}/{k}", v)
        uevent = [f"PCI_ID={vendor[2:].upper()}:{device[2:].upper()}", f"PCI_SLOT_NAME={address}"]
        if driver:
            uevent.insert(0, f"DRIVER={driver}")
            self.mkdir(f"bus/pci/drivers/{driver}")
            self.symlink(f"{rel}/driver", f"bus/pci/drivers/{driver}")
            self.symlink(f"bus/pci/drivers/{driver}/{address}", rel)
        self.write(f"{rel}/uevent", "\n".join(uevent))
        self.symlink(f"{rel}/subsystem", "bus/pci")
        self.symlink(f"bus/pci/devices/{address}", rel)
        return rel

    def sriov(self, pf_rel: str, vf_rels: list[str], totalvfs: int | None = None) -> None:
        """Links a PF and its VFs: ``sriov_totalvfs``/``sriov_numvfs`` and
        ``virtfn<N>`` on the PF, ``physfn`` on each VF."""
        self.write(
            f"{pf_rel}/sriov_totalvfs", str(totalvfs if totalvfs is not None else len(vf_rels))
        )
        self.write(f"{pf_rel}/sriov_numvfs", str(len(vf_rels)))
        for i, vf in enumerate(vf_rels):
            self.symlink(f"{pf_rel}/virtfn{i}", vf)
            self.symlink(f"{vf}/physfn", pf_rel)

    def bus_device(self, bus: str, name: str, parent: str) -> str:
        """A non-PCI device below ``parent`` (``virtio2`` below a virtio PCI
        function), with its ``bus/<bus>/devices`` link."""
        rel = f"{parent}/{name}"
        self.mkdir(rel)
        self.mkdir(f"bus/{bus}/devices")
        self.symlink(f"bus/{bus}/devices/{name}", rel)
        self.symlink(f"{rel}/subsystem", f"bus/{bus}")
        return rel

    def netdev(
        self,
        name: str,
        *,
        parent: str | None = None,
        ifindex: int | None = None,
        mac: str | None = None,
        mtu: int = 1500,
        operstate: str = "up",
        arptype: int = 1,
        devtype: str | None = None,
        attrs: Mapping[str, str] | None = None,
    ) -> str:
        """A netdev: ``<parent>/net/<name>`` (or ``devices/virtual/net/<name>``
        without a parent) with ``ifindex``, ``address``, ``mtu``, ``operstate``,
        ``type``, ``uevent`` (DEVTYPE when given), the ``device`` link and
        ``class/net/<name>``. ``ifindex`` defaults to the next free one."""
        _check_name("netdev", name)
        if name in self._net_dirs:
            raise ValueError(f"netdev {name!r} already exists")
        if ifindex is None:
            ifindex = self._next_ifindex
        self._next_ifindex = max(self._next_ifindex, ifindex + 1)
        rel = f"{parent}/net/{name}" if parent else f"devices/virtual/net/{name}"
        values: dict[str, str] = {
            "ifindex": str(ifindex),
            "iflink": str(ifindex),
            "address": mac or "00:00:00:00:00:00",
            "mtu": str(mtu),
            "operstate": operstate,
            "type": str(arptype),
            "flags": "0x1003" if operstate == "up" else "0x1002",
            "tx_queue_len": "1000",
        }
        values.update(attrs or {})
        for k, v in values.items():
            self.write(f"{rel}/{k}", v)
        uevent = ([f"DEVTYPE={devtype}"] if devtype else []) + [
            f"INTERFACE={name}",
            f"IFINDEX={ifindex}",
        ]
        self.write(f"{rel}/uevent", "\n".join(uevent))
        if parent:
            self.symlink(f"{rel}/device", parent)
        self.symlink(f"class/net/{name}", rel)
        self._net_dirs[name] = rel
        return rel

    def stack(self, upper: str, lower: str, *, master: bool = False) -> None:
        """``upper`` sits on ``lower``: ``upper_<upper>`` in the lower's directory
        and ``lower_<lower>`` in the upper's; with ``master``, also the lower's
        ``master`` link (bridge/bond port)."""
        up, low = self._net_dirs[upper], self._net_dirs[lower]
        self.symlink(f"{low}/upper_{upper}", up)
        self.symlink(f"{up}/lower_{lower}", low)
        if master:
            self.symlink(f"{low}/master", up)

    def rdma_device(
        self,
        name: str,
        pci_rel: str,
        *,
        index: int,
        netdevs: Iterable[str] = (),
        node_guid: str | None = None,
        node_type: str = "1: CA",
        link_layer: str | None = None,
        ports: int = 1,
        char_devices: bool = True,
    ) -> str:
        """An RDMA device ``<pci>/infiniband/<name>`` with ``class/infiniband``
        link, ``node_guid``, ``node_type``, ``ports/N`` (``gid_attrs/ndevs/0``
        naming the port's netdev, none for InfiniBand) and, with
        ``char_devices``, ``uverbs<index>``, ``umad<index>``, ``issm<index>`` in
        the PCI function's ``infiniband_verbs``/``infiniband_mad`` (plus their
        nodes under dev_root)."""
        _check_name("RDMA device", name)
        nets = list(netdevs)
        rel = f"{pci_rel}/infiniband/{name}"
        guid = node_guid or f"b83f:d203:00{index >> 16 & 0xFF:02x}:{index & 0xFFFF:04x}"
        self.write(f"{rel}/node_guid", guid)
        self.write(f"{rel}/sys_image_guid", guid)
        self.write(f"{rel}/node_type", node_type)
        self.write(f"{rel}/fw_ver", "28.39.1002")
        self.symlink(f"{rel}/device", pci_rel)
        layer = link_layer or ("Ethernet" if nets else "InfiniBand")
        for port in range(1, ports + 1):
            prel = f"{rel}/ports/{port}"
            self.write(f"{prel}/state", "4: ACTIVE")
            self.write(f"{prel}/link_layer", layer)
            if port - 1 < len(nets):
                self.write(f"{prel}/gid_attrs/ndevs/0", nets[port - 1])
                self.write(f"{prel}/gid_attrs/types/0", "IB/RoCE v1")
        self.symlink(f"class/infiniband/{name}", rel)
        if char_devices:
            verbs = f"{pci_rel}/infiniband_verbs/uverbs{index}"
            self.write(f"{verbs}/ibdev", name)
            self.write(f"{verbs}/abi_version", "1")
            self.write(f"{verbs}/dev", f"{_UVERBS_MAJOR}:{192 + index}")
            self.symlink(f"class/infiniband_verbs/uverbs{index}", verbs)
            self.dev_node(f"uverbs{index}")
            for kind in ("umad", "issm"):
                mad = f"{pci_rel}/infiniband_mad/{kind}{index}"
                self.write(f"{mad}/ibdev", name)
                self.write(f"{mad}/port", "1")
                self.symlink(f"class/infiniband_mad/{kind}{index}", mad)
                self.dev_node(f"{kind}{index}")
        return rel


# ---------------------------------------------------------------------- capture


def _rel(path: str) -> str:
    """``/sys/devices/x`` -> ``devices/x``."""
    p = path.removeprefix("/sys/").lstrip("/")
    if ".." in Path(p).parts:
        raise ValueError(f"capture path {path!r} leaves the sysfs root")
    return p


_PCI_META = {"driver", "physfn", "virtfn", "net", "infiniband", "realpath", "iommu_group"}
_NET_META = {"device", "device_realpath", "realpath", "lower", "upper", "master"}


def build_from_capture(
    json_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    dev_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Recreates the host of a JSON capture as a fake sysfs tree under ``root``.

    Recreated: PCI functions (every attribute, ``driver``/``subsystem`` links,
    ``physfn``/``virtfn*``, ``bus/pci/devices``), netdevs at their real paths
    with every attribute and the ``device``, ``master``, ``upper_*``/``lower_*``
    links (``uevent`` is synthesised from name and ifindex, a virtio parent gets
    its ``bus/virtio`` entry), NUMA nodes, RDMA devices, and the capture's
    ``/dev/infiniband`` entries under ``dev_root`` (when given).

    Returns the sysfs root (pass it to ``discover``).
    """
    cap: dict[str, Any] = json.loads(Path(json_path).read_text())
    b = SysfsBuilder(Path(root), Path(dev_root) if dev_root is not None else None)

    for node, attrs in sorted((cap.get("numa_nodes") or {}).items()):
        for k, v in attrs.items():
            b.write(f"devices/system/node/{node}/{k}", str(v))

    pci: dict[str, Any] = cap.get("pci") or {}
    pci_rel: dict[str, str] = {}
    for addr, attrs in sorted(pci.items()):
        rel = _rel(attrs.get("realpath") or f"/sys/devices/pci{addr[:7]}/{addr}")
        pci_rel[addr] = rel
        for k, v in attrs.items():
            if k not in _PCI_META and isinstance(v, str):
                b.write(f"{rel}/{k}", v)
        b.symlink(f"{rel}/subsystem", "bus/pci")
        b.symlink(f"bus/pci/devices/{addr}", rel)
        if attrs.get("driver"):
            drv = str(attrs["driver"])
            b.mkdir(f"bus/pci/drivers/{drv}")
            b.symlink(f"{rel}/driver", f"bus/pci/drivers/{drv}")
            b.symlink(f"bus/pci/drivers/{drv}/{addr}", rel)
            b.write(f"{rel}/uevent", f"DRIVER={drv}\nPCI_SLOT_NAME={addr}")
        else:
            b.write(f"{rel}/uevent", f"PCI_SLOT_NAME={addr}")
        if attrs.get("iommu_group") is not None:
            group = Path(str(attrs["iommu_group"])).name
            b.symlink(f"{rel}/iommu_group", f"kernel/iommu_groups/{group}")
            b.mkdir(f"kernel/iommu_groups/{group}")
    # SR-IOV links once every function exists.
    for addr, attrs in pci.items():
        rel = pci_rel[addr]
        physfn = attrs.get("physfn")
        if physfn:
            pf = Path(str(physfn)).name
            b.symlink(f"{rel}/physfn", pci_rel.get(pf, f"{Path(rel).parent}/{pf}"))
        for link, target in sorted((attrs.get("virtfn") or {}).items()):
            vf = Path(str(target)).name
            b.symlink(f"{rel}/{link}", pci_rel.get(vf, f"{Path(rel).parent}/{vf}"))

    nets: dict[str, Any] = cap.get("net") or {}
    for name, attrs in sorted(nets.items()):
        _check_name("netdev", name)
        rel = _rel(attrs.get("realpath") or f"/sys/devices/virtual/net/{name}")
        for k, v in attrs.items():
            if k not in _NET_META and isinstance(v, str):
                b.write(f"{rel}/{k}", v)
        b.write(f"{rel}/uevent", f"INTERFACE={name}\nIFINDEX={attrs.get('ifindex', '0')}")
        if attrs.get("device_realpath"):
            dev = _rel(str(attrs["device_realpath"]))
            b.mkdir(dev)
            b.symlink(f"{rel}/device", dev)
            leaf = Path(dev).name
            if leaf.startswith("virtio") and leaf[6:].isdigit():
                b.bus_device("virtio", leaf, str(Path(dev).parent))
        b.symlink(f"class/net/{name}", rel)
        b._net_dirs[name] = rel
    for name, attrs in nets.items():
        if attrs.get("master"):
            m = Path(str(attrs["master"])).name
            if m in b._net_dirs:
                b.symlink(f"{b._net_dirs[name]}/master", b._net_dirs[m])
        for key, prefix in (("upper", "upper_"), ("lower", "lower_")):
            for other in attrs.get(key) or []:
                o = Path(str(other)).name.removeprefix(prefix)
                if o in b._net_dirs:
                    b.symlink(f"{b._net_dirs[name]}/{prefix}{o}", b._net_dirs[o])

    # RDMA devices: {name: {"pci": addr, "node_guid":..., "node_type":..., "netdevs": [...]}}
    for index, (name, attrs) in enumerate(sorted((cap.get("infiniband") or {}).items())):
        addr = str(attrs.get("pci") or attrs.get("pci_address") or "")
        if addr not in pci_rel:
            raise ValueError(f"RDMA device {name!r} names unknown PCI function {addr!r}")
        b.rdma_device(
            name,
            pci_rel[addr],
            index=index,
            netdevs=[str(n) for n in attrs.get("netdevs") or []],
            node_guid=attrs.get("node_guid"),
            node_type=str(attrs.get("node_type") or "1: CA"),
        )
    for entry in cap.get("dev_infiniband") or []:
        b.dev_node(str(entry))
    return b.root


# ---------------------------------------------------------------------- synthetic


def _pci_addr(rid: int) -> str:
    return f"0000:{rid >> 8 & 0xFF:02x}:{rid >> 3 & 0x1F:02x}.{rid & 7}"


def build_synthetic(
    root: str | os.PathLike[str],
    *,
    root_complexes: int = 4,
    numa_nodes: int = 2,
    pfs: int = 8,
    vfs_per_pf: int = 8,
    rdma: bool = True,
    rdma_on_vfs: bool = True,
    standalone_rdma: int = 1,
    gpus_per_root_complex: int = 1,
    virtual_links: bool = True,
    loopback: bool = True,
    dev_root: str | os.PathLike[str] | None = None,
) -> Path:
    """A large, realistic host as a fake sysfs tree under ``root``.

    * ``root_complexes`` host bridges ``pci0000:00``, ``pci0000:40``... (bus
      space split evenly), each on NUMA node ``rc * numa_nodes // root_complexes``
      (``numa_nodes=0`` writes ``-1``: no NUMA information);
    * ``pfs`` ConnectX-like PFs (``0x15b3:0x101d``, ``mlx5_core``) spread
      round-robin over the root complexes, each behind its own root port on its
      own bus, netdev ``enp<bus>s0f0np0``, with ``vfs_per_pf`` VFs
      (``0x15b3:0x101e``, netdevs ``enp<bus>s0f0v<i>``, PCI functions
      ``<bus>:00.2`` onwards) and the ``physfn``/``virtfn*`` links;
    * with ``rdma``: an RDMA device ``mlx5_<n>`` per PF (and per VF with
      ``rdma_on_vfs``) with ``uverbs<n>``/``umad<n>``/``issm<n>``, plus
      ``standalone_rdma`` InfiniBand-only adapters (RDMA device, no netdev);
      ``<dev_root>/infiniband`` gets those nodes and ``rdma_cm``;
    * ``gpus_per_root_complex`` NVIDIA GPUs (class 0x030200, no netdev);
    * with ``virtual_links``: bridge ``br0`` with port ``veth0`` (peer
      ``veth1``) and macvlan ``mv0`` on the first PF; with ``loopback``: ``lo``.

    Netdev count: ``loopback + pfs * (1 + vfs_per_pf) + 4 * virtual_links``
    (1,024 with ``pfs=16, vfs_per_pf=63, loopback=False, virtual_links=False``).
    Returns the sysfs root.
    """
    if root_complexes < 1 or root_complexes > 16:
        raise ValueError("root_complexes must be 1..16")
    if numa_nodes < 0:
        raise ValueError("numa_nodes must be >= 0")
    if not 0 <= vfs_per_pf <= 252:
        raise ValueError("vfs_per_pf must be 0..252 (one bus per PF)")
    if pfs < 0 or standalone_rdma < 0 or gpus_per_root_complex < 0:
        raise ValueError("counts must be >= 0")
    span = 256 // root_complexes
    per_rc = -(-(pfs + standalone_rdma + gpus_per_root_complex * root_complexes) // root_complexes)
    if per_rc + 1 > span:
        raise ValueError(f"{per_rc} devices per root complex do not fit its {span} buses")

    b = SysfsBuilder(Path(root), Path(dev_root) if dev_root is not None else None)
    for n in range(max(numa_nodes, 1)):
        per = 64 // max(numa_nodes, 1)
        b.numa_node(n, cpulist=f"{n * per}-{n * per + per - 1}")
    rcs: list[tuple[str, int, int | str]] = []
    for r in range(root_complexes):
        base = r * span
        rc = f"devices/pci0000:{base:02x}"
        b.mkdir(rc)
        numa: int | str = r * numa_nodes // root_complexes if numa_nodes else -1
        rcs.append((rc, base, numa))
    slots = [0] * root_complexes

    def next_slot(r: int) -> tuple[str, int, int | str]:
        """A root port on root complex ``r`` and the bus behind it."""
        rc, base, numa = rcs[r]
        slots[r] += 1
        bus = base + slots[r]
        port = b.pci_function(
            f"0000:{base:02x}:{slots[r]:02x}.0",
            rc,
            vendor="0x8086",
            device="0x352a",
            class_=_BRIDGE_CLASS,
            driver="pcieport",
            numa_node=numa,
        )
        return port, bus, numa

    if loopback:
        b.netdev(
            "lo", ifindex=1, mac="00:00:00:00:00:00", mtu=65536, operstate="unknown", arptype=772
        )
    rdma_index = 0
    first_pf: str | None = None
    for k in range(pfs):
        port, bus, numa = next_slot(k % root_complexes)
        pf_addr = _pci_addr(bus << 8)
        pf = b.pci_function(
            pf_addr,
            port,
            vendor=MELLANOX_VENDOR,
            device=CONNECTX_PF_DEVICE,
            subsystem_device="0x0016",
            driver="mlx5_core",
            numa_node=numa,
        )
        pf_name = f"enp{bus}s0f0np0"
        first_pf = first_pf or pf_name
        b.netdev(pf_name, parent=pf, mac=f"b8:3f:d2:{bus:02x}:00:00", mtu=9000)
        vf_rels = []
        for i in range(vfs_per_pf):
            vf = b.pci_function(
                _pci_addr((bus << 8) + 2 + i),
                port,
                vendor=MELLANOX_VENDOR,
                device=CONNECTX_VF_DEVICE,
                subsystem_device="0x0016",
                driver="mlx5_core",
                numa_node=numa,
            )
            vf_rels.append(vf)
            b.netdev(
                f"enp{bus}s0f0v{i}",
                parent=vf,
                mac=f"02:{bus:02x}:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
            )
        if vfs_per_pf:
            b.sriov(pf, vf_rels, totalvfs=max(vfs_per_pf, 8))
        if rdma:
            b.rdma_device(f"mlx5_{rdma_index}", pf, index=rdma_index, netdevs=[pf_name])
            rdma_index += 1
            if rdma_on_vfs:
                for i, vf in enumerate(vf_rels):
                    b.rdma_device(
                        f"mlx5_{rdma_index}", vf, index=rdma_index, netdevs=[f"enp{bus}s0f0v{i}"]
                    )
                    rdma_index += 1
    for j in range(standalone_rdma if rdma else 0):
        port, bus, numa = next_slot((pfs + j) % root_complexes)
        ib = b.pci_function(
            _pci_addr(bus << 8),
            port,
            vendor=MELLANOX_VENDOR,
            device=CONNECTX_IB_DEVICE,
            class_=_IB_CLASS,
            driver="mlx5_core",
            numa_node=numa,
        )
        b.rdma_device(f"mlx5_{rdma_index}", ib, index=rdma_index, link_layer="InfiniBand")
        rdma_index += 1
    for r in range(root_complexes):
        for _ in range(gpus_per_root_complex):
            port, bus, numa = next_slot(r)
            b.pci_function(
                _pci_addr(bus << 8),
                port,
                vendor="0x10de",
                device="0x2335",
                class_=_GPU_CLASS,
                subsystem_device="0x18be",
                driver="nvidia",
                numa_node=numa,
                revision="0xa1",
            )
    if virtual_links:
        b.netdev("br0", mac="02:42:00:00:00:01", devtype="bridge")
        b.netdev("veth0", mac="02:42:00:00:00:02")
        b.netdev("veth1", mac="02:42:00:00:00:03")
        b.stack("br0", "veth0", master=True)
        b.netdev("mv0", mac="02:42:00:00:00:04")
        if first_pf is not None:
            b.stack("mv0", first_pf)
    if rdma and b.dev_root is not None:
        b.dev_node("rdma_cm")
    return b.root
