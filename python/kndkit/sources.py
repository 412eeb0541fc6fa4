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

:class:`LinkEvents` watches a namespace for links appearing, going away or
changing (rtnetlink ``RTMGRP_LINK`` notifications), so a driver rescans when
the node changes instead of waiting for its rescan interval.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kndkit import netlink
from kndkit.devices import Device, netdev_device
from kndkit.errors import InvalidArgument, NamespaceError

if TYPE_CHECKING:
    from kndkit._native import Discovery, NetDevice, NetNs, RdmaDevice
    from kndkit.driver import DriverOptions
    from kndkit.rdma import RdmaLinks

__all__ = [
    "DeviceSource",
    "DiscoveryContext",
    "LinkEvents",
    "Netdevs",
    "NodeDevice",
    "RdmaLinks",
    "link_event_socket",
    "link_message_types",
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


# --------------------------------------------------------------------------- link events

#: rtnetlink multicast group of link notifications, and its message types.
RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
_CLONE_NEWNET = 0x40000000
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id


def link_message_types(data: bytes) -> list[int]:
    """The ``nlmsg_type`` of each netlink message in one datagram (a truncated
    tail is ignored)."""
    types: list[int] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break
        types.append(mtype)
        off += (length + 3) & ~3
    return types


def _link_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        sock.bind((0, RTMGRP_LINK))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _link_socket_in(ns_fd: int) -> socket.socket:
    """Runs on a thread of its own: enters the namespace, opens the socket (a
    netlink socket belongs to the namespace it was created in), goes back."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(ns_fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NamespaceError(f"cannot enter the network namespace: {os.strerror(err)}")
        try:
            return _link_socket()
        finally:
            if libc.setns(own, _CLONE_NEWNET) != 0:  # the thread ends right after anyway
                log.warning("link events: cannot return to the own namespace")
    finally:
        os.close(own)


def link_event_socket(ns: NetNs | None = None) -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to the link notifications of
    ``ns`` (``None``: the caller's namespace). The namespace is entered on a
    short-lived thread, never on the caller's."""
    if ns is None:
        return _link_socket()
    out: list[socket.socket | BaseException] = []

    def worker() -> None:
        try:
            out.append(_link_socket_in(ns.fileno()))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=worker, name="kndkit-link-events", daemon=True)
    t.start()
    t.join()
    result = out[0] if out else NamespaceError("link events: the socket thread returned nothing")
    if isinstance(result, BaseException):
        raise result
    return result


class LinkEvents:
    """Calls ``callback`` when a link of ``ns`` is added, removed or changed.

    The notifications are read on the running asyncio loop (``add_reader``);
    a burst of them makes one call. Calls are rate-limited by a token bucket:
    ``burst`` calls at once, then one each ``interval`` seconds, the last
    change always followed by a call. A lost notification (the socket's buffer
    overflowed) counts as a change.
    """

    def __init__(
        self,
        ns: NetNs | None,
        callback: Callable[[], None],
        *,
        interval: float = 2.0,
        burst: int = 5,
    ) -> None:
        if interval <= 0 or burst < 1:
            raise InvalidArgument(
                f"LinkEvents: interval {interval} must be > 0 and burst {burst} >= 1"
            )
        self.ns = ns
        self.callback = callback
        self.interval = interval
        self.burst = burst
        self.events = 0
        """Link notifications seen."""
        self.calls = 0
        """Times ``callback`` was called."""
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Opens the socket and starts reading it (call on the loop)."""
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        sock = link_event_socket(self.ns)
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        """Stops reading and closes the socket (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        changed = False
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    changed = True  # notifications were dropped: assume a change
                    continue
                log.warning("link events: reading the netlink socket: %s", e)
                break
            if not data:
                break
            n = sum(1 for t in link_message_types(data) if t in (RTM_NEWLINK, RTM_DELLINK))
            if n:
                self.events += n
                changed = True
        if changed:
            self._fire()

    def _fire(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) / self.interval)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.calls += 1
            try:
                self.callback()
            except Exception:
                log.exception("link events: callback failed")
        elif self._timer is None and self._loop is not None:
            # Coalesce everything until a token is back into one later call.
            delay = (1.0 - self._tokens) * self.interval
            self._timer = self._loop.call_later(delay, self._deferred)

    def _deferred(self) -> None:
        self._timer = None
        self._fire()


def __getattr__(name: str) -> Any:
    # RdmaLinks is implemented with the rest of the RDMA support (kndkit.rdma,
    # which imports this module).
    if name == "RdmaLinks":
        from kndkit.rdma import RdmaLinks  # noqa: PLC0415

        globals()[name] = RdmaLinks
        return RdmaLinks
    raise AttributeError(f"module 'kndkit.sources' has no attribute {name!r}")
