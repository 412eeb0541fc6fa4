"""The kernel floor: rtnetlink batches encoded with ``struct`` in plain Python.

Every request of a batch is encoded up front, the whole batch for one namespace
goes to the kernel in ONE ``sendmsg`` on an ``AF_NETLINK`` socket that was opened
inside that namespace (on a short-lived thread that entered it with
``setns(2)``; the calling thread never changes namespace), and then every ACK is
read back. Nothing is read from the kernel before it is changed (no undo
information), which is what makes this the floor that kndkit's batched path is
compared with.

Only the messages the benchmarks need are implemented: link set/move/rename,
veth creation, link delete (one link or a whole group), IPv4/IPv6 addresses,
routes and a link dump.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# --------------------------------------------------------------------------- constants
# <linux/netlink.h>
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLA_F_NESTED = 0x8000

# <linux/rtnetlink.h>
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

# <linux/if_link.h>
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_GROUP = 27
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1

# <linux/if_addr.h>
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_NODAD = 0x02

# <linux/rtnetlink.h> route attributes
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6

IFF_UP = 0x1
CLONE_NEWNET = 0x40000000

OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_NLMSGERR_ERRNO = struct.Struct("=i")


class NetlinkBatchError(OSError):
    """One or more requests of a batch were refused by the kernel."""

    def __init__(self, failures: list[tuple[int, int]]) -> None:
        index, err = failures[0]
        msg = f"request {index} failed: {os.strerror(err)} ({len(failures)} failed)"
        super().__init__(err, msg)
        self.failures = failures


# --------------------------------------------------------------------------- namespaces

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def setns_net(fd: int) -> None:
    """Moves the *calling thread* into the network namespace open as ``fd``."""
    setns = getattr(os, "setns", None)
    if setns is not None:  # Python 3.12+
        setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_netns(fd: int, fn: Callable[[], T]) -> T:
    """Runs ``fn`` on a fresh thread that first enters the namespace ``fd``."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            setns_net(fd)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=body, name="rawnl-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def open_socket(ns_fd: int | None = None, rcvbuf: int = 4 << 20) -> socket.socket:
    """An rtnetlink socket bound inside namespace ``ns_fd`` (None: this thread's)."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            s.bind((0, 0))
        except BaseException:
            s.close()
            raise
        return s

    if ns_fd is None:
        return make()
    return run_in_netns(ns_fd, make)


# --------------------------------------------------------------------------- encoding


def attr(kind: int, payload: bytes) -> bytes:
    n = _RTATTR.size + len(payload)
    return _RTATTR.pack(n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_i32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=i", value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def message(msg_type: int, flags: int, body: bytes, seq: int) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


@dataclass
class Batch:
    """Requests for one namespace, encoded as they are added."""

    seq0: int = 1
    chunks: list[bytes] = field(default_factory=list)

    def _add(self, msg_type: int, flags: int, body: bytes) -> int:
        seq = self.seq0 + len(self.chunks)
        self.chunks.append(message(msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, body, seq))
        return seq

    def __len__(self) -> int:
        return len(self.chunks)

    def data(self) -> bytes:
        return b"".join(self.chunks)

    # -- links
    def link_set(
        self,
        index: int,
        *,
        name: str | None = None,
        mtu: int | None = None,
        up: bool | None = None,
        netns_fd: int | None = None,
        group: int | None = None,
    ) -> int:
        flags = change = 0
        if up is not None:
            change = IFF_UP
            flags = IFF_UP if up else 0
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)
        if netns_fd is not None:
            body += attr_u32(IFLA_NET_NS_FD, netns_fd)
        if name is not None:
            body += attr_str(IFLA_IFNAME, name)
        if mtu is not None:
            body += attr_u32(IFLA_MTU, mtu)
        if group is not None:
            body += attr_u32(IFLA_GROUP, group)
        return self._add(RTM_NEWLINK, 0, body)

    def veth_add(
        self,
        name: str,
        peer_name: str,
        *,
        index: int = 0,
        peer_netns_fd: int | None = None,
        mtu: int | None = None,
        peer_mtu: int | None = None,
        up: bool = False,
        group: int | None = None,
    ) -> int:
        """A veth pair: ``name`` here (with ifindex ``index`` when non-zero) and the
        peer in ``peer_netns_fd`` (default: this socket's namespace)."""
        peer = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer_name)
        if peer_netns_fd is not None:
            peer += attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
        if peer_mtu is not None:
            peer += attr_u32(IFLA_MTU, peer_mtu)
        info = attr(IFLA_INFO_KIND, b"veth") + attr(
            IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER | NLA_F_NESTED, peer)
        )
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)
        body += attr_str(IFLA_IFNAME, name)
        if mtu is not None:
            body += attr_u32(IFLA_MTU, mtu)
        if group is not None:
            body += attr_u32(IFLA_GROUP, group)
        body += attr(IFLA_LINKINFO | NLA_F_NESTED, info)
        return self._add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def link_del(self, index: int) -> int:
        return self._add(RTM_DELLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))

    def link_del_group(self, group: int) -> int:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_u32(IFLA_GROUP, group)
        return self._add(RTM_DELLINK, 0, body)

    # -- addresses
    def _addr(self, msg_type: int, flags: int, index: int, cidr: str, nodad: bool) -> int:
        iface = ipaddress.ip_interface(cidr)
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        raw = iface.ip.packed
        ifa_flags = IFA_F_NODAD if nodad else 0
        body = _IFADDRMSG.pack(family, iface.network.prefixlen, ifa_flags, RT_SCOPE_UNIVERSE, index)
        body += attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
        return self._add(msg_type, flags, body)

    def addr_add(self, index: int, cidr: str, *, nodad: bool = False) -> int:
        return self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, cidr, nodad)

    def addr_del(self, index: int, cidr: str) -> int:
        return self._addr(RTM_DELADDR, 0, index, cidr, False)

    # -- routes
    def route_add(self, dst: str, *, oif: int, gateway: str | None = None) -> int:
        net = ipaddress.ip_network(dst)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(
            family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0
        )
        body += attr(RTA_DST, net.network_address.packed)
        if gateway:
            body += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        body += attr_u32(RTA_OIF, oif)
        return self._add(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


# --------------------------------------------------------------------------- transport


def send_batch(sock: socket.socket, batch: Batch) -> int:
    """Sends the whole batch with one ``sendmsg`` and reads one ACK per request.

    Returns the number of ``sendmsg`` calls (1, or 0 for an empty batch).
    Raises :class:`NetlinkBatchError` listing every refused request.
    """
    if not batch.chunks:
        return 0
    data = batch.data()
    sent = sock.sendmsg([data])
    if sent != len(data):
        raise OSError(f"short netlink send: {sent} of {len(data)} bytes")
    pending = len(batch.chunks)
    lo, hi = batch.seq0, batch.seq0 + pending
    failures: list[tuple[int, int]] = []
    while pending:
        buf = sock.recv(1 << 20)
        off = 0
        while off + _NLMSGHDR.size <= len(buf):
            length, msg_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(buf, off)
            if length < _NLMSGHDR.size:
                raise OSError("malformed netlink message")
            if msg_type == NLMSG_ERROR and lo <= seq < hi:
                (err,) = _NLMSGERR_ERRNO.unpack_from(buf, off + _NLMSGHDR.size)
                pending -= 1
                if err:
                    failures.append((seq - lo, -err))
            off += (length + 3) & ~3
    if failures:
        failures.sort()
        raise NetlinkBatchError(failures)
    return 1


def apply_batches(batches: Iterable[tuple[int | None, Batch]]) -> int:
    """Runs ``(namespace fd, batch)`` pairs in order: one socket and one sendmsg
    per namespace. Returns the total number of ``sendmsg`` calls."""
    total = 0
    for ns_fd, batch in batches:
        with open_socket(ns_fd) as sock:
            total += send_batch(sock, batch)
    return total


# --------------------------------------------------------------------------- dump


@dataclass
class Link:
    index: int
    name: str
    flags: int
    mtu: int | None = None
    mac: str | None = None
    operstate: str | None = None
    kind: str | None = None
    master: int | None = None
    link: int | None = None
    group: int | None = None
    addresses: list[str] = field(default_factory=list)


def _attrs(buf: bytes, off: int, end: int) -> Iterable[tuple[int, int, int]]:
    while off + 4 <= end:
        n, kind = _RTATTR.unpack_from(buf, off)
        if n < 4:
            break
        yield kind & ~NLA_F_NESTED, off + 4, off + n
        off += (n + 3) & ~3


def _parse_link(buf: bytes, off: int, end: int) -> Link:
    _fam, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, off)
    link = Link(index=index, name="", flags=flags)
    for kind, a, b in _attrs(buf, off + _IFINFOMSG.size, end):
        if kind == IFLA_IFNAME:
            link.name = buf[a:b].split(b"\0", 1)[0].decode()
        elif kind == IFLA_MTU:
            link.mtu = struct.unpack_from("=I", buf, a)[0]
        elif kind == IFLA_ADDRESS:
            link.mac = ":".join(f"{x:02x}" for x in buf[a:b])
        elif kind == IFLA_OPERSTATE:
            st = buf[a]
            link.operstate = OPERSTATES[st] if st < len(OPERSTATES) else str(st)
        elif kind == IFLA_MASTER:
            link.master = struct.unpack_from("=I", buf, a)[0]
        elif kind == IFLA_LINK:
            link.link = struct.unpack_from("=I", buf, a)[0]
        elif kind == IFLA_GROUP:
            link.group = struct.unpack_from("=I", buf, a)[0]
        elif kind == IFLA_LINKINFO:
            for k2, a2, b2 in _attrs(buf, a, b):
                if k2 == IFLA_INFO_KIND:
                    link.kind = buf[a2:b2].split(b"\0", 1)[0].decode()
    return link


def _dump(
    sock: socket.socket, msg_type: int, body: bytes, seq: int
) -> Iterable[tuple[bytes, int, int]]:
    """Sends one dump request; yields (buffer, start, end) of every answer's payload."""
    sock.send(message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body, seq))
    while True:
        buf = sock.recv(1 << 20)
        off = 0
        while off + _NLMSGHDR.size <= len(buf):
            length, kind, _flags, mseq, _pid = _NLMSGHDR.unpack_from(buf, off)
            if length < _NLMSGHDR.size:
                raise OSError("malformed netlink message")
            if mseq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (err,) = _NLMSGERR_ERRNO.unpack_from(buf, off + _NLMSGHDR.size)
                    if err:
                        raise OSError(-err, f"dump: {os.strerror(-err)}")
                else:
                    yield buf, off + _NLMSGHDR.size, off + length
            off += (length + 3) & ~3


def dump_links(sock: socket.socket, seq: int = 1) -> list[Link]:
    """One ``RTM_GETLINK`` dump, parsed."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_u32(IFLA_EXT_MASK, 0)
    return [_parse_link(buf, a, b) for buf, a, b in _dump(sock, RTM_GETLINK, body, seq)]


def dump_addresses(sock: socket.socket, seq: int = 2) -> list[tuple[int, str]]:
    """One ``RTM_GETADDR`` dump: ``(ifindex, "address/prefixlen")`` pairs."""
    out: list[tuple[int, str]] = []
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    for buf, a, b in _dump(sock, RTM_GETADDR, body, seq):
        family, plen, _flags, _scope, index = _IFADDRMSG.unpack_from(buf, a)
        addr = local = None
        for kind, x, y in _attrs(buf, a + _IFADDRMSG.size, b):
            if kind == IFA_ADDRESS:
                addr = buf[x:y]
            elif kind == IFA_LOCAL:
                local = buf[x:y]
        raw = local or addr
        if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
            out.append((index, f"{ipaddress.ip_address(bytes(raw))}/{plen}"))
    return out


def list_links(ns_fd: int | None = None, *, addresses: bool = False) -> list[Link]:
    """Links of namespace ``ns_fd`` (with their addresses when asked: a second dump)."""
    with open_socket(ns_fd) as sock:
        links = dump_links(sock)
        if addresses:
            by_index = {lk.index: lk for lk in links}
            for index, cidr in dump_addresses(sock):
                if index in by_index:
                    by_index[index].addresses.append(cidr)
    return links


SYSFS_ATTRS: Sequence[str] = ("uevent", "ifindex", "address", "mtu", "operstate", "type")


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    except OSError:  # e.g. EINVAL for some attributes of a link without carrier
        return None
    finally:
        os.close(fd)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def read_sysfs_netdevs(sysfs_root: str) -> list[dict[str, Any]]:
    """Every netdev of ``<sysfs_root>/class/net`` from its attribute files: the
    same files kndkit's sysfs-only walk reads (``SYSFS_ATTRS``, the ``master`` and
    ``device`` links, and the directory listing for ``upper_*``/``lower_*``)."""
    out: list[dict[str, Any]] = []
    cls = f"{sysfs_root}/class/net"
    for name in sorted(os.listdir(cls)):
        base = os.path.join(cls, os.readlink(f"{cls}/{name}"))
        rec: dict[str, Any] = {"name": name}
        for a in SYSFS_ATTRS:
            rec[a] = _read(f"{base}/{a}")
        master = _readlink(f"{base}/master")
        rec["master"] = os.path.basename(master) if master else None
        entries = os.listdir(base)
        rec["uppers"] = [e[6:] for e in entries if e.startswith("upper_")]
        rec["lowers"] = [e[6:] for e in entries if e.startswith("lower_")]
        rec["device"] = _readlink(f"{base}/device")
        out.append(rec)
    return out
