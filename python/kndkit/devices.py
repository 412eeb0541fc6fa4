"""DRA devices: what discovery finds, as ``resource.k8s.io/v1`` data.

Discovery (:func:`kndkit._native.discover`) returns typed records of netdevs and
RDMA devices. This module turns them into DRA :class:`Device` objects (a DNS-label
name plus typed attributes), checks them against the API server's limits *before*
anything is sent, and lays them out as ResourceSlices of one pool per node, split
at the API's per-slice device limit.

Attribute names follow DraNet's (so CEL selectors written for DraNet keep working),
in the driver's own domain, plus the standard ``resource.kubernetes.io/`` ones
(``pcieRoot``, ``pciBusID``, ``numaNode``) that let a scheduler align NICs with GPUs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kndkit.errors import InvalidArgument

__all__ = [
    "MAX_ATTRIBUTES_PER_DEVICE",
    "MAX_DEVICES_PER_SLICE",
    "MAX_DEVICES_PER_SLICE_WITH_TAINTS",
    "MAX_STRING_ATTRIBUTE",
    "STANDARD_DOMAIN",
    "AttributeValue",
    "Device",
    "device_name",
    "devices_from_discovery",
    "resource_slices",
    "validate_device",
]

#: Devices in one ResourceSlice (``resource.k8s.io/v1`` validation).
MAX_DEVICES_PER_SLICE = 128
#: Devices in one slice when any device uses taints, counters or list attributes.
MAX_DEVICES_PER_SLICE_WITH_TAINTS = 64
#: Attributes plus capacities of one device.
MAX_ATTRIBUTES_PER_DEVICE = 32
#: Length of a string or version attribute value.
MAX_STRING_ATTRIBUTE = 64
#: The domain of Kubernetes' standard device attributes.
STANDARD_DOMAIN = "resource.kubernetes.io"

AttributeValue = bool | int | str

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NetDeviceLike(Protocol):
    """The fields of :class:`kndkit._native.NetDevice` this module reads."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def mac(self) -> str | None: ...
    @property
    def mtu(self) -> int: ...
    @property
    def operstate(self) -> str: ...
    @property
    def addresses(self) -> list[str]: ...
    @property
    def pci_address(self) -> str | None: ...
    @property
    def vendor_id(self) -> str | None: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def subsystem_device_id(self) -> str | None: ...
    @property
    def driver(self) -> str | None: ...
    @property
    def numa_node(self) -> int | None: ...
    @property
    def pcie_root(self) -> str | None: ...
    @property
    def sriov_totalvfs(self) -> int | None: ...
    @property
    def sriov_numvfs(self) -> int | None: ...
    @property
    def physfn(self) -> str | None: ...
    @property
    def rdma_device(self) -> str | None: ...


class RdmaDeviceLike(Protocol):
    """The fields of :class:`kndkit._native.RdmaDevice` this module reads."""

    @property
    def name(self) -> str: ...
    @property
    def node_guid(self) -> str | None: ...
    @property
    def pci_address(self) -> str | None: ...
    @property
    def numa_node(self) -> int | None: ...
    @property
    def pcie_root(self) -> str | None: ...
    @property
    def netdevs(self) -> list[str]: ...


class DiscoveryLike(Protocol):
    @property
    def netdevs(self) -> Sequence[NetDeviceLike]: ...
    @property
    def rdma_devices(self) -> Sequence[RdmaDeviceLike]: ...


@dataclass(frozen=True)
class Device:
    """One DRA device: a DNS-label ``name`` and its attributes.

    Attribute keys are qualified names; unprefixed keys belong to the driver's
    domain (the API's rule), so the driver may leave its own domain off.
    """

    name: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, Any]] = ()

    def to_api(self) -> dict[str, Any]:
        """The ``resource.k8s.io/v1`` JSON of this device."""
        attrs: dict[str, Any] = {}
        for key, value in sorted(self.attributes.items()):
            if isinstance(value, bool):
                attrs[key] = {"bool": value}
            elif isinstance(value, int):
                attrs[key] = {"int": value}
            else:
                attrs[key] = {"string": value}
        out: dict[str, Any] = {"name": self.name}
        if attrs:
            out["attributes"] = attrs
        if self.capacity:
            out["capacity"] = {k: {"value": v} for k, v in sorted(self.capacity.items())}
        if self.taints:
            out["taints"] = [dict(t) for t in self.taints]
        return out


def device_name(netdev_name: str, pci_address: str | None = None) -> str:
    """A DNS-label device name: ``pci-0000-8a-00-0`` for a PCI function, else the
    interface name when it is a DNS label, else a stable encoding of it."""
    if pci_address:
        cand = "pci-" + re.sub(r"[^0-9a-z]", "-", pci_address.lower())
        if _DNS_LABEL.match(cand) and len(cand) <= 63:
            return cand
    if _DNS_LABEL.match(netdev_name) and len(netdev_name) <= 63:
        return netdev_name
    safe = re.sub(r"[^0-9a-z]+", "-", netdev_name.lower()).strip("-")[:40] or "dev"
    digest = hashlib.sha256(netdev_name.encode()).hexdigest()[:8]
    return f"{safe}-{digest}"


def _truncate_join(values: Iterable[str]) -> str:
    out = ""
    for v in values:
        nxt = v if not out else f"{out},{v}"
        if len(nxt) > MAX_STRING_ATTRIBUTE:
            break
        out = nxt
    return out


def _pci_attrs(
    attrs: dict[str, AttributeValue],
    pci_address: str | None,
    numa_node: int | None,
    pcie_root: str | None,
) -> None:
    if pci_address:
        attrs["pciAddress"] = pci_address
        attrs[f"{STANDARD_DOMAIN}/pciBusID"] = pci_address
    if numa_node is not None:
        attrs["numaNode"] = numa_node
        attrs[f"{STANDARD_DOMAIN}/numaNode"] = numa_node
    if pcie_root:
        attrs[f"{STANDARD_DOMAIN}/pcieRoot"] = pcie_root


def netdev_device(nd: NetDeviceLike) -> Device:
    """The DRA device for one netdev (attribute names as DraNet publishes them)."""
    attrs: dict[str, AttributeValue] = {
        "ifName": nd.name,
        "mtu": nd.mtu,
        "state": nd.operstate,
        "type": nd.kind,
        "virtual": nd.pci_address is None,
        "rdma": nd.rdma_device is not None,
    }
    if nd.mac:
        attrs["mac"] = nd.mac
    v4 = [a for a in nd.addresses if ":" not in a]
    v6 = [a for a in nd.addresses if ":" in a]
    if v4:
        attrs["ipv4"] = _truncate_join(v4)
    if v6:
        attrs["ipv6"] = _truncate_join(v6)
    if nd.rdma_device:
        attrs["rdmaDevice"] = nd.rdma_device
    if nd.vendor_id:
        attrs["pciVendor"] = nd.vendor_id
    if nd.device_id:
        attrs["pciDevice"] = nd.device_id
    if nd.subsystem_device_id:
        attrs["pciSubsystem"] = nd.subsystem_device_id
    if nd.driver:
        attrs["driver"] = nd.driver
    if nd.sriov_totalvfs:
        attrs["sriov"] = True
        attrs["sriovVfs"] = nd.sriov_numvfs or 0
    attrs["isSriovVf"] = nd.physfn is not None
    _pci_attrs(attrs, nd.pci_address, nd.numa_node, nd.pcie_root)
    return Device(name=device_name(nd.name, nd.pci_address), attributes=attrs)


def rdma_device(rd: RdmaDeviceLike) -> Device:
    """The DRA device for an RDMA device without a netdev (InfiniBand-only)."""
    attrs: dict[str, AttributeValue] = {"rdma": True, "rdmaDevice": rd.name, "virtual": False}
    if rd.node_guid:
        attrs["nodeGuid"] = rd.node_guid
    _pci_attrs(attrs, rd.pci_address, rd.numa_node, rd.pcie_root)
    return Device(name=device_name(rd.name, rd.pci_address), attributes=attrs)


def devices_from_discovery(
    topo: DiscoveryLike, *, include_virtual: bool = True, include_loopback: bool = False
) -> list[Device]:
    """DRA devices for every discovered netdev, plus standalone RDMA devices.

    Names are made unique (a second device with the same name gets a suffix)."""
    out: list[Device] = []
    for nd in topo.netdevs:
        if nd.kind == "loopback" and not include_loopback:
            continue
        if nd.pci_address is None and not include_virtual:
            continue
        out.append(netdev_device(nd))
    for rd in topo.rdma_devices:
        if not rd.netdevs:
            out.append(rdma_device(rd))
    seen: set[str] = set()
    unique: list[Device] = []
    for d in out:
        name = d.name
        n = 1
        while name in seen:
            n += 1
            name = f"{d.name[:58]}-{n}"
        seen.add(name)
        unique.append(d if name == d.name else Device(name, d.attributes, d.capacity, d.taints))
    return unique


def _check_qualified_name(device: str, key: str) -> None:
    domain, _, ident = key.rpartition("/")
    if domain and (len(domain) > 63 or not _DNS_SUBDOMAIN.match(domain)):
        raise InvalidArgument(
            f"device {device!r}: attribute {key!r}: domain {domain!r} is not a DNS subdomain"
        )
    if not ident or len(ident) > 32 or not _C_IDENTIFIER.match(ident):
        raise InvalidArgument(
            f"device {device!r}: attribute {key!r}: name must be a C identifier of at most"
            " 32 characters"
        )


def validate_device(device: Device) -> None:
    """Checks ``device`` against the ``resource.k8s.io/v1`` limits the API server
    enforces, raising :class:`InvalidArgument` that names the device and attribute."""
    if len(device.name) > 63 or not _DNS_LABEL.match(device.name):
        raise InvalidArgument(f"device name {device.name!r} is not a DNS label (<= 63 chars)")
    total = len(device.attributes) + len(device.capacity)
    if total > MAX_ATTRIBUTES_PER_DEVICE:
        raise InvalidArgument(
            f"device {device.name!r}: {total} attributes and capacities, the API allows"
            f" {MAX_ATTRIBUTES_PER_DEVICE}"
        )
    for key, value in device.attributes.items():
        _check_qualified_name(device.name, key)
        if isinstance(value, str) and len(value) > MAX_STRING_ATTRIBUTE:
            raise InvalidArgument(
                f"device {device.name!r}: attribute {key!r}: value of {len(value)} characters,"
                f" the API allows {MAX_STRING_ATTRIBUTE}"
            )
    for key in device.capacity:
        _check_qualified_name(device.name, key)


def resource_slices(
    devices: Sequence[Device],
    *,
    driver: str,
    node_name: str,
    pool: str | None = None,
    generation: int = 1,
    owner: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Lays ``devices`` out as the ResourceSlices of one pool (named after the node
    unless given), split at the API's per-slice limit; every slice carries the pool's
    ``generation`` and the total ``resourceSliceCount``. Validates every device first."""
    if not _DNS_SUBDOMAIN.match(driver) or len(driver) > 63:
        raise InvalidArgument(f"driver name {driver!r} is not a DNS subdomain of <= 63 chars")
    if not node_name:
        raise InvalidArgument("node name is empty")
    for d in devices:
        validate_device(d)
    pool_name = pool or node_name
    limit = (
        MAX_DEVICES_PER_SLICE_WITH_TAINTS
        if any(d.taints for d in devices)
        else MAX_DEVICES_PER_SLICE
    )
    ordered = sorted(devices, key=lambda d: d.name)
    chunks = [ordered[i : i + limit] for i in range(0, len(ordered), limit)] or [[]]
    base = re.sub(r"[^a-z0-9-]", "-", f"{node_name}-{driver}".lower())[:200].strip("-")
    slices: list[dict[str, Any]] = []
    for i, chunk in enumerate(chunks):
        meta: dict[str, Any] = {"name": f"{base}-{i}"}
        if owner:
            meta["ownerReferences"] = [dict(owner)]
        slices.append(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": meta,
                "spec": {
                    "driver": driver,
                    "nodeName": node_name,
                    "pool": {
                        "name": pool_name,
                        "generation": generation,
                        "resourceSliceCount": len(chunks),
                    },
                    "devices": [d.to_api() for d in chunk],
                },
            }
        )
    return slices
