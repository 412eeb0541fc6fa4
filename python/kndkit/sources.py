"""Device sources: what a driver publishes, picked out of one discovery walk.

A :class:`DeviceSource` turns the node's :class:`~kndkit.Discovery` (sysfs plus
a netlink dump of the host namespace) into :class:`NodeDevice` objects: the
published :class:`~kndkit.devices.Device` together with the discovery record it
came from, which ``plan()`` later receives. A driver lists its sources in
``NetworkDriver.sources``; the framework runs them on every rescan and
publishes the union (names made unique).

:class:`Netdevs` yields network interfaces with DraNet's exclusions (loopback,
bridges, and the uplink: the link of the default route together with its
masters and the links enslaved to it). :class:`RdmaLinks` (RDMA devices) lives
in :mod:`kndkit.rdma` and is re-exported here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kndkit import netlink
from kndkit.devices import Device, netdev_device
from kndkit.errors import InvalidArgument

if TYPE_CHECKING:
    from kndkit._native import Discovery, NetDevice, NetNs, RdmaDevice
    from kndkit.driver import DriverOptions
    from kndkit.rdma import RdmaLinks

__all__ = [
    "DeviceSource",
    "DiscoveryContext",
    "Netdevs",
    "NodeDevice",
    "RdmaLinks",
    "uplink_names",
]

log = logging.getLogger("kndkit.sources")


@dataclass(frozen=True)
class NodeDevice:
    """One device of this node: what is published and what it was made from.

    ``device`` is the published DRA device (name and attributes); ``netdev``
    and ``rdma`` are the discovery records behind it (either may be ``None``:
    an InfiniBand-only device has no netdev).
    """

    device: Device
    netdev: NetDevice | None = None
    rdma: RdmaDevice | None = None

    @property
    def name(self) -> str:
        """The DRA device name."""
        return self.device.name

    @property
    def ifname(self) -> str | None:
        """The host interface name, when the device has a netdev."""
        return self.netdev.name if self.netdev is not None else None


@dataclass
class DiscoveryContext:
    """What a source gets on each rescan."""

    discovery: Discovery
    host_ns: NetNs | None
    driver_name: str
    options: DriverOptions


@runtime_checkable
class DeviceSource(Protocol):
    """Picks devices out of a discovery walk (called on every rescan, in a worker thread)."""

    def discover(self, ctx: DiscoveryContext) -> Sequence[NodeDevice]: ...


def uplink_names(netdevs: Sequence[NetDevice], host_ns: NetNs | None) -> set[str]:
    """Names of the node's uplink: the links carrying a default route (IPv4 or
    IPv6, any table but ``local``), the masters above them (bond, bridge) and
    everything enslaved to those masters."""
    by_index = {nd.ifindex: nd for nd in netdevs}
    by_name = {nd.name: nd for nd in netdevs}
    uplinks: set[str] = set()
    try:
        routes = netlink.dump_routes(host_ns)
    except Exception as e:  # a dump failure must not stop publishing
        log.warning("cannot read the routes to find the uplink: %s", e)
        return uplinks
    for r in routes:
        if r["table"] == 255 or r["oif"] is None:
            continue
        if r["dst"] not in ("0.0.0.0/0", "::/0", "default"):
            continue
        nd = by_index.get(r["oif"])
        if nd is not None:
            uplinks.add(nd.name)
    # Close over master/slave relations: a bond's slaves, a bridge's ports, and
    # the masters of a slave.
    pending = list(uplinks)
    while pending:
        name = pending.pop()
        nd = by_name.get(name)
        if nd is None:
            continue
        related = set(nd.lowers) | set(nd.uppers)
        if nd.master:
            related.add(nd.master)
        related |= {o.name for o in netdevs if o.master == name}
        for other in related - uplinks:
            uplinks.add(other)
            pending.append(other)
    return uplinks


class Netdevs:
    """Network interfaces of the host namespace, DraNet's way.

    Excluded: links whose kind is in ``exclude_kinds`` (default loopback and
    bridge), the uplink (``exclude_uplink``: see :func:`uplink_names`),
    interfaces without a PCI parent unless ``include_virtual``, kinds not in
    ``kinds`` (when given), and names that do not match ``name_filter`` (a
    regular expression matched with ``re.fullmatch``).
    """

    def __init__(
        self,
        *,
        exclude_uplink: bool = True,
        kinds: Collection[str] | None = None,
        include_virtual: bool = True,
        exclude_kinds: Collection[str] = ("loopback", "bridge"),
        name_filter: re.Pattern[str] | str | None = None,
    ) -> None:
        if isinstance(kinds, str) or isinstance(exclude_kinds, str):
            raise InvalidArgument("Netdevs: kinds and exclude_kinds are collections of kind names")
        try:
            self.name_filter = (
                re.compile(name_filter) if isinstance(name_filter, str) else name_filter
            )
        except re.error as e:
            raise InvalidArgument(f"Netdevs: name_filter {name_filter!r}: {e}") from None
        self.exclude_uplink = exclude_uplink
        self.kinds = frozenset(kinds) if kinds is not None else None
        self.include_virtual = include_virtual
        self.exclude_kinds = frozenset(exclude_kinds)

    def __repr__(self) -> str:
        return (
            f"Netdevs(exclude_uplink={self.exclude_uplink}, kinds={self.kinds}, "
            f"include_virtual={self.include_virtual}, exclude_kinds={set(self.exclude_kinds)}, "
            f"name_filter={self.name_filter.pattern if self.name_filter else None!r})"
        )

    def select(self, netdevs: Sequence[NetDevice], uplink: Collection[str] = ()) -> list[NetDevice]:
        """The netdevs this source keeps (``uplink``: names to leave out)."""
        out = []
        for nd in netdevs:
            if nd.kind in self.exclude_kinds:
                continue
            if self.kinds is not None and nd.kind not in self.kinds:
                continue
            if not self.include_virtual and nd.pci_address is None:
                continue
            if self.exclude_uplink and nd.name in uplink:
                continue
            if self.name_filter is not None and not self.name_filter.fullmatch(nd.name):
                continue
            out.append(nd)
        return out

    def discover(self, ctx: DiscoveryContext) -> list[NodeDevice]:
        netdevs = list(ctx.discovery.netdevs)
        uplink = uplink_names(netdevs, ctx.host_ns) if self.exclude_uplink else set()
        rdma_by_name = {rd.name: rd for rd in ctx.discovery.rdma_devices}
        out = []
        for nd in self.select(netdevs, uplink):
            rd = rdma_by_name.get(nd.rdma_device) if nd.rdma_device else None
            out.append(NodeDevice(netdev_device(nd), netdev=nd, rdma=rd))
        return out


def __getattr__(name: str) -> Any:
    # RdmaLinks is implemented with the rest of the RDMA support (kndkit.rdma,
    # which imports this module).
    if name == "RdmaLinks":
        from kndkit.rdma import RdmaLinks  # noqa: PLC0415

        globals()[name] = RdmaLinks
        return RdmaLinks
    raise AttributeError(f"module 'kndkit.sources' has no attribute {name!r}")
