"""Interface plans: what a pod's links must look like, and the executors that make it so.

An :class:`InterfacePlan` is plain, serialisable data computed at prepare time and
persisted (``to_json``/``from_json`` round-trip exactly). :func:`attach` turns the
plans of one pod into ONE :func:`kndkit.netlink.apply` call (every move or
creation first, then the configuration inside the pod), which the native core
rolls back completely on any failure. :func:`detach` puts everything back: it
looks for each link wherever it is now and restores the :class:`HostState`
captured at prepare time (name, MTU, MAC, alias, up state, GSO/GRO sizes,
master, addresses, routes, neighbours, the sysctls and ethtool settings the plan
changes); sub-interfaces created for the pod (macvlan/ipvlan) are deleted.

The kernel does one thing the native rollback cannot see: an RTM_NEWLINK that
moves and renames a link moves it first and may then refuse the name (a pod
link has it, EEXIST), leaving it in the pod under its host name; :func:`attach`
gives such a link back through :func:`detach` before raising.

Limits: a link keeps its ifindex across namespaces only where the number is
free (the kernel picks a new one otherwise, and it stays); per-link sysctls the
plan does not change are not captured, and the kernel resets them to the host
namespace's defaults when the link comes back.

Name collisions on detach: when a *different* host link has taken the original
name meanwhile, the link is restored under the temporary name ``knd<ifindex>``
(everything else restored as captured) and the device is listed in
``DetachResult.conflicts``, not in ``restored``; a later detach (after the
other link is gone) renames it back.

Steps of the native ops ``sysctl``, ``ethtool``, ``vrf_add``, ``rdma_move``,
``ebpf_detach`` and the ``link_set`` keys ``master``, ``gso_ipv4_max_size``,
``gro_ipv4_max_size`` are emitted as plain dicts (``docs/plan-steps.md``); a plan
that needs one the loaded ``kndkit._native`` lacks is refused with
:class:`~kndkit.errors.NotAvailable` before anything is sent.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast, get_args

from kndkit import _native
from kndkit import netlink as nl
from kndkit._native import NetNs
from kndkit.errors import InvalidArgument, KndError, NamespaceError, NetlinkError, NotAvailable

__all__ = [
    "AttachResult",
    "CharDevice",
    "DetachResult",
    "HostState",
    "InterfacePlan",
    "Neighbor",
    "RdmaPlan",
    "Route",
    "Rule",
    "Vrf",
    "attach",
    "attach_steps",
    "detach",
    "detach_steps",
    "host_sysctl_path",
]

log = logging.getLogger("kndkit.plan")

Kind = Literal["move", "macvlan", "ipvlan", "rdma"]
RouteScope = Literal["universe", "link", "host"]

_KINDS: tuple[str, ...] = get_args(Kind)
_SCOPES: tuple[str, ...] = get_args(RouteScope)
_MACVLAN_MODES = ("bridge", "private", "vepa", "passthru", "source")
_IPVLAN_MODES = ("l2", "l3", "l3s")
_ADDR_FLAGS = {"nodad": 0x02, "home": 0x10, "mngtmpaddr": 0x100, "noprefixroute": 0x200}
_IFA_F_PERMANENT = 0x80
_NUD_PERMANENT = 0x80
_RTPROT_KERNEL = 2
_RTPROT_RA = 9
_RT_TABLE_MAIN = 254
_RT_TABLE_LOCAL = 255
_RTN_UNICAST = 1
_SCOPE_BY_NUM = {0: "universe", 253: "link", 254: "host"}
_SIZES = ("gso_max_size", "gro_max_size", "gso_ipv4_max_size", "gro_ipv4_max_size")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_BAD_IFNAME = re.compile(r"[/:\s\x00]")
_DEV_SYSCTL = re.compile(r"^(net/ipv[46]/(?:conf|neigh))/([^/]+)/(.+)$")

T = TypeVar("T")

# ----------------------------------------------------------------------------- validation


def _bad(where: str, msg: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {msg}")


def _need_str(where: str, v: object, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str):
        raise _bad(where, f"expected a string, got {type(v).__name__} {v!r}")


def _need_int(
    where: str, v: object, *, optional: bool = True, lo: int = 0, hi: int = 2**32 - 1
) -> None:
    if v is None and optional:
        return
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(where, f"expected an integer, got {type(v).__name__} {v!r}")
    if not lo <= v <= hi:
        raise _bad(where, f"{v} is out of range {lo}..{hi}")


def _need_bool(where: str, v: object) -> None:
    if not isinstance(v, bool):
        raise _bad(where, f"expected true/false, got {type(v).__name__} {v!r}")


def _check_ifname(where: str, v: object, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    _need_str(where, v)
    s = cast(str, v)
    if not 1 <= len(s.encode()) <= 15 or _BAD_IFNAME.search(s) or s in (".", ".."):
        raise _bad(where, f"invalid interface name {s!r} (1..15 bytes, no '/', ':' or whitespace)")


def _check_mac(where: str, v: object, *, optional: bool = True) -> None:
    if v is None and optional:
        return
    _need_str(where, v)
    if not _MAC_RE.match(cast(str, v)):
        raise _bad(where, f"invalid MAC address {v!r} (six hex octets, ':'-separated)")


def _check_cidr(where: str, v: object) -> None:
    _need_str(where, v)
    s = cast(str, v)
    if "/" not in s:
        raise _bad(where, f"address {s!r} lacks a prefix length (e.g. 10.0.0.2/24)")
    try:
        ipaddress.ip_interface(s)
    except ValueError as e:
        raise _bad(where, f"invalid address {s!r}: {e}") from None


def _check_ip(where: str, v: object, *, optional: bool = True) -> None:
    if v is None and optional:
        return
    _need_str(where, v)
    try:
        ipaddress.ip_address(cast(str, v))
    except ValueError:
        raise _bad(where, f"invalid IP address {v!r}") from None


def _check_dest(where: str, v: object) -> None:
    _need_str(where, v)
    s = cast(str, v)
    if s == "default":
        return
    try:
        ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise _bad(where, f"invalid destination {s!r} (a CIDR or 'default')") from None


def _check_sysctl(where: str, path: object, value: object) -> None:
    _need_str(where, path)
    p = cast(str, path)
    parts = p.split("/")
    if not p.startswith("net/") or any(c in ("", ".", "..") for c in parts):
        raise _bad(where, f"invalid sysctl path {p!r} (relative to /proc/sys, starting with net/)")
    _need_str(f"{where} {p}", value)


def _family(*addrs: str | None) -> Literal["inet", "inet6"] | None:
    for a in addrs:
        if a and a != "default":
            return "inet6" if ":" in a else "inet"
    return None


def _freeze_map(where: str, v: object, check: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(where, f"expected a mapping, got {type(v).__name__}")
    out: dict[str, Any] = {}
    for k, x in v.items():
        _need_str(f"{where} key", k)
        check(f"{where}[{k!r}]", x)
        out[k] = x
    return MappingProxyType(out)


def _tuple_of(where: str, v: object, cls: type[T]) -> tuple[T, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise _bad(where, f"expected a list, got {type(v).__name__}")
    items = tuple(v)
    for i, x in enumerate(items):
        if not isinstance(x, cls):
            raise _bad(f"{where}[{i}]", f"expected {cls.__name__}, got {type(x).__name__}")
    return items


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


# ----------------------------------------------------------------------------- JSON helpers


def _from_dict(cls: type[T], d: object, where: str, convert: Mapping[str, Any] | None = None) -> T:
    if not isinstance(d, Mapping):
        raise _bad(where, f"expected an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cast(Any, cls))}
    unknown = sorted(set(d) - names)
    if unknown:
        raise _bad(where, f"unknown key(s) {', '.join(map(repr, unknown))}")
    kw = dict(d)
    for k, fn in (convert or {}).items():
        if k in kw and kw[k] is not None:
            kw[k] = fn(kw[k])
    try:
        return cls(**kw)
    except TypeError as e:  # a missing required key
        raise _bad(where, str(e)) from None


def _list(where: str, v: object) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise _bad(where, f"expected a list, got {type(v).__name__}")
    return list(v)


# ----------------------------------------------------------------------------- plain data


@dataclass(frozen=True)
class Route:
    """A route through the plan's link. ``destination`` is a CIDR or ``"default"``;
    ``source`` is the preferred source address; ``table`` None means main;
    ``protocol`` None means ``boot`` (extension: captured host routes keep theirs)."""

    destination: str
    gateway: str | None = None
    source: str | None = None
    scope: RouteScope | None = None
    table: int | None = None
    metric: int | None = None
    protocol: int | None = None

    def __post_init__(self) -> None:
        w = "route"
        _check_dest(f"{w} destination", self.destination)
        _check_ip(f"{w} {self.destination} gateway", self.gateway)
        _check_ip(f"{w} {self.destination} source", self.source)
        if self.scope is not None and self.scope not in _SCOPES:
            raise _bad(f"{w} {self.destination} scope", f"{self.scope!r} is not one of {_SCOPES}")
        _need_int(f"{w} {self.destination} table", self.table, lo=1)
        _need_int(f"{w} {self.destination} metric", self.metric)
        _need_int(f"{w} {self.destination} protocol", self.protocol, hi=255)
        fams = {
            f for f in (_family(self.destination), _family(self.gateway), _family(self.source)) if f
        }
        if len(fams) > 1:
            raise _bad(
                f"{w} {self.destination}", "destination, gateway and source mix IPv4 and IPv6"
            )

    @property
    def family(self) -> Literal["inet", "inet6"]:
        return _family(self.destination, self.gateway, self.source) or "inet"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Route:
        return _from_dict(cls, d, "route")


@dataclass(frozen=True)
class Rule:
    """A policy rule in the pod: look up ``table`` for traffic matching source/destination."""

    table: int
    priority: int | None = None
    source: str | None = None
    destination: str | None = None

    def __post_init__(self) -> None:
        _need_int("rule table", self.table, optional=False, lo=1)
        _need_int("rule priority", self.priority)
        for what, v in (("source", self.source), ("destination", self.destination)):
            if v is not None:
                _check_dest(f"rule {what}", v)
        if (
            _family(self.source)
            and _family(self.destination)
            and _family(self.source) != _family(self.destination)
        ):
            raise _bad("rule", "source and destination mix IPv4 and IPv6")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Rule:
        return _from_dict(cls, d, "rule")


@dataclass(frozen=True)
class Neighbor:
    """A permanent neighbour entry on the plan's link."""

    destination: str
    hardware_addr: str

    def __post_init__(self) -> None:
        _check_ip("neighbor destination", self.destination, optional=False)
        _check_mac(f"neighbor {self.destination} hardware_addr", self.hardware_addr, optional=False)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Neighbor:
        return _from_dict(cls, d, "neighbor")


@dataclass(frozen=True)
class CharDevice:
    """A device node CreateContainer injects into the container (RDMA)."""

    path: str
    type: Literal["c", "b"] = "c"
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __post_init__(self) -> None:
        _need_str("char device path", self.path)
        if not self.path.startswith("/") or ".." in self.path.split("/"):
            raise _bad("char device path", f"{self.path!r} is not an absolute path")
        if self.type not in ("c", "b"):
            raise _bad(f"char device {self.path} type", f"{self.type!r} is not 'c' or 'b'")
        _need_int(f"char device {self.path} major", self.major, optional=False)
        _need_int(f"char device {self.path} minor", self.minor, optional=False)
        _need_int(f"char device {self.path} file_mode", self.file_mode, hi=0o7777)
        _need_int(f"char device {self.path} uid", self.uid)
        _need_int(f"char device {self.path} gid", self.gid)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CharDevice:
        return _from_dict(cls, d, "char device")


@dataclass(frozen=True)
class RdmaPlan:
    """The RDMA side of a device: ``exclusive`` moves the RDMA link with the pod."""

    device: str
    exclusive: bool = False
    char_devices: tuple[CharDevice, ...] = ()

    def __post_init__(self) -> None:
        _need_str("rdma device", self.device)
        if not self.device:
            raise _bad("rdma device", "empty name")
        _need_bool(f"rdma {self.device} exclusive", self.exclusive)
        _set(
            self,
            "char_devices",
            _tuple_of(f"rdma {self.device} char_devices", self.char_devices, CharDevice),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "exclusive": self.exclusive,
            "char_devices": [c.to_json() for c in self.char_devices],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RdmaPlan:
        return _from_dict(
            cls, d, "rdma",
            {"char_devices": lambda v: tuple(map(CharDevice.from_json, _list("char_devices", v)))},
        )  # fmt: skip


@dataclass(frozen=True)
class Vrf:
    """A VRF device created in the pod; the plan's link is enslaved to it."""

    name: str
    table: int

    def __post_init__(self) -> None:
        _check_ifname("vrf name", self.name)
        _need_int(f"vrf {self.name} table", self.table, optional=False, lo=1)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Vrf:
        return _from_dict(cls, d, "vrf")


def host_sysctl_path(path: str, pod_name: str, host_name: str) -> str | None:
    """The host-side equivalent of a pod sysctl ``path`` that names the pod link
    (``net/ipv4/conf/<pod_name>/x`` -> ``net/ipv4/conf/<host_name>/x``); None for a
    namespace-wide sysctl or one of another link."""
    m = _DEV_SYSCTL.match(path)
    if not m or m.group(2) != pod_name:
        return None
    return f"{m.group(1)}/{host_name}/{m.group(3)}"


@dataclass(frozen=True)
class HostState:
    """The exact host-side state of a link, what :func:`detach` restores.

    ``addresses`` are the permanent addresses but IPv6 link-local ones (CIDRs);
    ``address_flags`` (extension) holds, per CIDR, its ``nodad``/``noprefixroute``/
    ``home``/``mngtmpaddr`` flags. ``routes`` are those through the link in every
    table but local, except protocol kernel and ra. ``neighbors`` are the permanent
    entries. ``sysctls`` (host paths) and, as extensions, ``ethtool_features``,
    ``ethtool_private_flags`` and the IPv4 GSO/GRO sizes hold only what the plan
    changes.
    """

    ifname: str
    ifindex: int
    mtu: int
    mac: str | None
    up: bool
    alias: str | None
    gso_max_size: int | None
    gro_max_size: int | None
    master: str | None
    addresses: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    neighbors: tuple[Neighbor, ...] = ()
    sysctls: Mapping[str, str] = field(default_factory=dict)
    address_flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ethtool_features: Mapping[str, bool] = field(default_factory=dict)
    ethtool_private_flags: Mapping[str, bool] = field(default_factory=dict)
    gso_ipv4_max_size: int | None = None
    gro_ipv4_max_size: int | None = None

    def __post_init__(self) -> None:
        w = f"host state of {self.ifname!r}"
        _check_ifname("host state ifname", self.ifname)
        _need_int(f"{w} ifindex", self.ifindex, optional=False, lo=1)
        _need_int(f"{w} mtu", self.mtu, optional=False)
        _check_mac(f"{w} mac", self.mac)
        _need_bool(f"{w} up", self.up)
        _need_str(f"{w} alias", self.alias, optional=True)
        for k in ("gso_max_size", "gro_max_size", "gso_ipv4_max_size", "gro_ipv4_max_size"):
            _need_int(f"{w} {k}", getattr(self, k))
        _check_ifname(f"{w} master", self.master, optional=True)
        addrs = _tuple_of(f"{w} addresses", self.addresses, str)
        for a in addrs:
            _check_cidr(f"{w} address", a)
        _set(self, "addresses", addrs)
        _set(self, "routes", _tuple_of(f"{w} routes", self.routes, Route))
        _set(self, "neighbors", _tuple_of(f"{w} neighbors", self.neighbors, Neighbor))
        _set(
            self,
            "sysctls",
            _freeze_map(f"{w} sysctls", self.sysctls, _need_str),
        )
        for p in self.sysctls:
            _check_sysctl(f"{w} sysctl", p, self.sysctls[p])

        def flags(wh: str, v: object) -> None:
            for f in _tuple_of(wh, v, str):
                if f not in _ADDR_FLAGS:
                    raise _bad(wh, f"unknown address flag {f!r}")

        af = _freeze_map(f"{w} address_flags", self.address_flags, flags)
        _set(self, "address_flags", MappingProxyType({k: tuple(v) for k, v in af.items()}))
        _set(
            self,
            "ethtool_features",
            _freeze_map(f"{w} ethtool_features", self.ethtool_features, _need_bool),
        )
        _set(
            self, "ethtool_private_flags",
            _freeze_map(f"{w} ethtool_private_flags", self.ethtool_private_flags, _need_bool),
        )  # fmt: skip

    @classmethod
    def capture(
        cls,
        ifname: str,
        ns: NetNs | None = None,
        *,
        sysctls: Iterable[str] = (),
        ethtool_features: Iterable[str] = (),
        ethtool_private_flags: Iterable[str] = (),
    ) -> HostState:
        """Snapshots link ``ifname`` of ``ns`` (None: the caller's namespace).

        ``sysctls`` (host paths), ``ethtool_features`` and ``ethtool_private_flags``
        (names) are the extra values to record, those a plan changes. Raises
        :class:`InvalidArgument` when the link does not exist.
        """
        _check_ifname("capture ifname", ifname)
        links = nl.dump_links(ns)
        by_index = {lk["ifindex"]: lk for lk in links}
        link = next((lk for lk in links if lk["name"] == ifname), None)
        if link is None:
            raise InvalidArgument(f"no link {ifname!r} in namespace {_ns_label(ns)}")
        addrs, aflags = _link_addresses(nl.dump_addresses(ns), link["ifindex"])
        values: dict[str, str] = {}
        for p in sysctls:
            _check_sysctl("capture sysctl", p, "")
            values[p] = _read_sysctl(p, ns)
        feats: dict[str, bool] = {}
        privs: dict[str, bool] = {}
        if ethtool_features or ethtool_private_flags:
            cur = _dump_ethtool(ifname, ns)
            for what, names, dst, src in (
                ("feature", ethtool_features, feats, cur.get("features", {})),
                ("private flag", ethtool_private_flags, privs, cur.get("private_flags", {})),
            ):
                for n in names:
                    if n not in src:
                        raise InvalidArgument(f"link {ifname!r} has no ethtool {what} {n!r}")
                    dst[n] = bool(src[n])
        master = by_index.get(link["master"]) if link["master"] else None
        raw = cast(Mapping[str, Any], link)
        return cls(
            ifname=link["name"],
            ifindex=link["ifindex"],
            mtu=link["mtu"],
            mac=link["mac"],
            up=link["up"],
            alias=link["alias"],
            gso_max_size=link["gso_max_size"],
            gro_max_size=link["gro_max_size"],
            master=master["name"] if master else None,
            addresses=addrs,
            routes=_link_routes(nl.dump_routes(ns), link["ifindex"]),
            neighbors=_link_neighbors(nl.dump_neighbours(ns), link["ifindex"]),
            sysctls=values,
            address_flags=aflags,
            ethtool_features=feats,
            ethtool_private_flags=privs,
            gso_ipv4_max_size=raw.get("gso_ipv4_max_size"),
            gro_ipv4_max_size=raw.get("gro_ipv4_max_size"),
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["addresses"] = list(self.addresses)
        d["routes"] = [r.to_json() for r in self.routes]
        d["neighbors"] = [n.to_json() for n in self.neighbors]
        d["sysctls"] = dict(self.sysctls)
        d["address_flags"] = {k: list(v) for k, v in self.address_flags.items()}
        d["ethtool_features"] = dict(self.ethtool_features)
        d["ethtool_private_flags"] = dict(self.ethtool_private_flags)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HostState:
        return _from_dict(
            cls, d, "host state",
            {
                "routes": lambda v: tuple(Route.from_json(x) for x in _list("host routes", v)),
                "neighbors": lambda v: tuple(map(Neighbor.from_json, _list("host neighbors", v))),
                "addresses": lambda v: tuple(_list("host addresses", v)),
            },
        )  # fmt: skip


def _ns_label(ns: NetNs | None) -> str:
    if ns is None:
        return "(own)"
    return ns.path or f"inode {ns.inode}"


def _link_addresses(
    records: Iterable[nl.AddressRecord], ifindex: int
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    addrs: list[str] = []
    flags: dict[str, tuple[str, ...]] = {}
    for a in records:
        if a["ifindex"] != ifindex or not a["flags"] & _IFA_F_PERMANENT:
            continue
        if a["family"] == "inet6" and ipaddress.ip_address(a["address"]).is_link_local:
            continue
        addrs.append(a["cidr"])
        f = tuple(n for n, bit in _ADDR_FLAGS.items() if a["flags"] & bit)
        if f:
            flags[a["cidr"]] = f
    return tuple(addrs), flags


def _link_routes(records: Iterable[nl.RouteRecord], ifindex: int) -> tuple[Route, ...]:
    out: list[Route] = []
    for r in records:
        if r["oif"] != ifindex or r["table"] == _RT_TABLE_LOCAL or r["type"] != _RTN_UNICAST:
            continue
        if r["protocol"] in (_RTPROT_KERNEL, _RTPROT_RA):
            continue
        dst = r["dst"]
        if dst == "default":
            dst = "::/0" if r["family"] == "inet6" else "0.0.0.0/0"
        out.append(
            Route(
                destination=dst,
                gateway=r["gateway"],
                source=r["prefsrc"],
                scope=cast(RouteScope | None, _SCOPE_BY_NUM.get(r["scope"])),
                table=None if r["table"] == _RT_TABLE_MAIN else r["table"],
                metric=r["metric"],
                protocol=r["protocol"],
            )
        )
    return tuple(out)


def _link_neighbors(records: Iterable[nl.NeighbourRecord], ifindex: int) -> tuple[Neighbor, ...]:
    return tuple(
        Neighbor(n["address"], n["lladdr"])
        for n in records
        if n["ifindex"] == ifindex and n["state"] & _NUD_PERMANENT and n["address"] and n["lladdr"]
    )


_PLAN_SEQ = ("addresses", "routes", "rules", "neighbors")


@dataclass(frozen=True)
class InterfacePlan:
    """What one allocated device must look like inside the pod (plain data).

    ``kind``: ``move`` (the host link ``host_ifname`` moves into the pod, renamed
    ``name``), ``macvlan``/``ipvlan`` (a sub-interface of the host link
    ``host_ifname`` created directly in the pod), ``rdma`` (an InfiniBand-only
    device: no netdev). ``sysctls`` are paths relative to ``/proc/sys`` inside the
    pod. ``host`` is the host-side snapshot :func:`detach` restores (move).
    ``extra`` is driver-defined JSON, persisted with the plan.
    """

    device: str
    kind: Kind = "move"
    host_ifname: str | None = None
    name: str = "net1"
    mode: str | None = None
    mtu: int | None = None
    mac: str | None = None
    gso_max_size: int | None = None
    gro_max_size: int | None = None
    gso_ipv4_max_size: int | None = None
    gro_ipv4_max_size: int | None = None
    addresses: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    neighbors: tuple[Neighbor, ...] = ()
    sysctls: Mapping[str, str] = field(default_factory=dict)
    ethtool_features: Mapping[str, bool] = field(default_factory=dict)
    ethtool_private_flags: Mapping[str, bool] = field(default_factory=dict)
    vrf: Vrf | None = None
    disable_ebpf: bool = False
    rdma: RdmaPlan | None = None
    host: HostState | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _need_str("plan device", self.device)
        if not self.device:
            raise _bad("plan device", "empty name")
        w = f"plan for device {self.device!r}"
        if self.kind not in _KINDS:
            raise _bad(f"{w} kind", f"{self.kind!r} is not one of {_KINDS}")
        if self.kind == "rdma":
            _check_ifname(f"{w} host_ifname", self.host_ifname, optional=True)
            if self.rdma is None:
                raise _bad(w, "kind 'rdma' needs an rdma part")
        else:
            _check_ifname(f"{w} host_ifname", self.host_ifname)
        _check_ifname(f"{w} name", self.name)
        if self.kind == "macvlan":
            if self.mode is not None and self.mode not in _MACVLAN_MODES:
                raise _bad(f"{w} mode", f"{self.mode!r} is not one of {_MACVLAN_MODES}")
        elif self.kind == "ipvlan":
            if self.mode is not None and self.mode not in _IPVLAN_MODES:
                raise _bad(f"{w} mode", f"{self.mode!r} is not one of {_IPVLAN_MODES}")
        elif self.mode is not None:
            raise _bad(f"{w} mode", f"kind {self.kind!r} takes no mode")
        if self.kind == "ipvlan" and self.mac is not None:
            raise _bad(f"{w} mac", "an ipvlan link shares its parent's MAC address")
        _need_int(f"{w} mtu", self.mtu, lo=68, hi=65536)
        _check_mac(f"{w} mac", self.mac)
        for k in ("gso_max_size", "gro_max_size", "gso_ipv4_max_size", "gro_ipv4_max_size"):
            _need_int(f"{w} {k}", getattr(self, k), lo=1)
        addrs = _tuple_of(f"{w} addresses", self.addresses, str)
        for a in addrs:
            _check_cidr(f"{w} address", a)
        _set(self, "addresses", addrs)
        _set(self, "routes", _tuple_of(f"{w} routes", self.routes, Route))
        _set(self, "rules", _tuple_of(f"{w} rules", self.rules, Rule))
        _set(self, "neighbors", _tuple_of(f"{w} neighbors", self.neighbors, Neighbor))
        _set(
            self,
            "sysctls",
            _freeze_map(f"{w} sysctls", self.sysctls, _need_str),
        )
        for p, v in self.sysctls.items():
            _check_sysctl(f"{w} sysctl", p, v)
        _set(
            self,
            "ethtool_features",
            _freeze_map(f"{w} ethtool_features", self.ethtool_features, _need_bool),
        )
        _set(
            self, "ethtool_private_flags",
            _freeze_map(f"{w} ethtool_private_flags", self.ethtool_private_flags, _need_bool),
        )  # fmt: skip
        if self.vrf is not None and not isinstance(self.vrf, Vrf):
            raise _bad(f"{w} vrf", f"expected Vrf, got {type(self.vrf).__name__}")
        _need_bool(f"{w} disable_ebpf", self.disable_ebpf)
        if self.rdma is not None and not isinstance(self.rdma, RdmaPlan):
            raise _bad(f"{w} rdma", f"expected RdmaPlan, got {type(self.rdma).__name__}")
        if self.host is not None and not isinstance(self.host, HostState):
            raise _bad(f"{w} host", f"expected HostState, got {type(self.host).__name__}")
        if not isinstance(self.extra, Mapping):
            raise _bad(f"{w} extra", f"expected a mapping, got {type(self.extra).__name__}")
        try:
            extra = json.loads(json.dumps(dict(self.extra), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise _bad(f"{w} extra", f"not JSON: {e}") from None
        _set(self, "extra", MappingProxyType(extra))

    # -- constructors

    @classmethod
    def move(
        cls, device: str, host_ifname: str, *, name: str = "net1", **fields: Any
    ) -> InterfacePlan:
        """The host link ``host_ifname`` moves into the pod as ``name``."""
        return cls(device=device, kind="move", host_ifname=host_ifname, name=name, **fields)

    @classmethod
    def macvlan(
        cls, device: str, parent: str, *, name: str = "net1", mode: str = "bridge", **fields: Any
    ) -> InterfacePlan:
        """A macvlan of the host link ``parent``, created directly in the pod as ``name``."""
        return cls(
            device=device, kind="macvlan", host_ifname=parent, name=name, mode=mode, **fields
        )

    @classmethod
    def ipvlan(
        cls, device: str, parent: str, *, name: str = "net1", mode: str = "l2", **fields: Any
    ) -> InterfacePlan:
        """An ipvlan of the host link ``parent``, created directly in the pod as ``name``."""
        return cls(device=device, kind="ipvlan", host_ifname=parent, name=name, mode=mode, **fields)

    def with_(self, **changes: Any) -> InterfacePlan:
        """A copy with ``changes`` applied (validated like a new plan)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InvalidArgument(
                f"plan for device {self.device!r}: unknown field(s) {', '.join(unknown)}"
            )
        return dataclasses.replace(self, **changes)

    def host_sysctls(self) -> dict[str, str]:
        """The host-side paths of the per-link sysctls this plan changes, mapped to
        the pod paths they come from."""
        if self.kind != "move" or self.host_ifname is None:
            return {}
        out: dict[str, str] = {}
        for p in self.sysctls:
            hp = host_sysctl_path(p, self.name, self.host_ifname)
            if hp is not None:
                out[hp] = p
        return out

    def capture_host(self, ns: NetNs | None = None) -> InterfacePlan:
        """A copy with ``host`` captured now from ``ns`` (move plans; others unchanged),
        recording the sysctls and ethtool settings the plan changes."""
        if self.kind != "move" or self.host_ifname is None:
            return self
        hs = HostState.capture(
            self.host_ifname,
            ns,
            sysctls=self.host_sysctls(),
            ethtool_features=self.ethtool_features,
            ethtool_private_flags=self.ethtool_private_flags,
        )
        return self.with_(host=hs)

    # -- JSON

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data; :meth:`from_json` gives back an equal plan."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "addresses":
                v = list(v)
            elif f.name in ("routes", "rules", "neighbors"):
                v = [x.to_json() for x in v]
            elif f.name in ("sysctls", "ethtool_features", "ethtool_private_flags"):
                v = dict(v)
            elif f.name == "extra":
                v = json.loads(json.dumps(dict(v)))
            elif f.name in ("vrf", "rdma", "host"):
                v = None if v is None else v.to_json()
            d[f.name] = v
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> InterfacePlan:
        """Parses :meth:`to_json` output; unknown keys raise :class:`InvalidArgument`."""
        return _from_dict(
            cls, d, "plan",
            {
                "addresses": lambda v: tuple(_list("plan addresses", v)),
                "routes": lambda v: tuple(Route.from_json(x) for x in _list("plan routes", v)),
                "rules": lambda v: tuple(Rule.from_json(x) for x in _list("plan rules", v)),
                "neighbors": lambda v: tuple(map(Neighbor.from_json, _list("plan neighbors", v))),
                "vrf": Vrf.from_json,
                "rdma": RdmaPlan.from_json,
                "host": HostState.from_json,
            },
        )  # fmt: skip


# ----------------------------------------------------------------------------- native capabilities


@cache
def _native_has(op: str, key: str) -> bool:
    """Whether the loaded native core knows ``key`` of ``op`` (probed by encoding a
    step; nothing is sent)."""
    probes: dict[str, dict[str, Any]] = {
        "sysctl": {"op": "sysctl", "path": "net/ipv4/ip_forward", "value": "0"},
        "ethtool": {"op": "ethtool", "ifindex": 1, "features": {}},
        "vrf_add": {"op": "vrf_add", "name": "kndprobe", "table": 10},
        "rdma_move": {"op": "rdma_move", "device": "kndprobe"},
        "ebpf_detach": {"op": "ebpf_detach", "ifindex": 1},
        "link_set": {"op": "link_set", "ifindex": 1, key: 0},
    }
    probe = probes[op]
    try:
        _native.encode([probe])
    except InvalidArgument as e:
        return not re.search(r"unknown (key|op)", str(e))
    except KndError:
        return True  # understood, refused for another reason
    except Exception:  # a probe must never break a plan
        return False
    return True


def _require(op: str, key: str, device: str, what: str) -> None:
    if not _native_has(op, key):
        raise NotAvailable(
            f"device {device!r}: {what} needs the native {op!r}"
            + (f" key {key!r}" if op == "link_set" else " op")
            + " which this build of kndkit._native lacks"
        )


def _read_sysctl(path: str, ns: NetNs | None) -> str:
    return nl.dump_sysctl(path, ns).strip()


def _dump_ethtool(ifname: str, ns: NetNs | None) -> Mapping[str, Mapping[str, bool]]:
    return cast(Mapping[str, Mapping[str, bool]], nl.dump_ethtool(ifname, ns))


# ----------------------------------------------------------------------------- attach


@dataclass
class AttachResult:
    """``pod_links``: device -> ifindex of its link in the pod (RDMA-only devices
    have none); ``sendmsg`` as reported by the native core."""

    pod_links: dict[str, int]
    sendmsg: int
    duration_s: float


def _route_step(r: Route, ifname: str | int, ns: NetNs | None, op: str = "route_add") -> nl.Step:
    step: nl.Step = {
        "op": op,
        "dst": r.destination,
        "ifname" if isinstance(ifname, str) else "ifindex": ifname,
    }
    if ns is not None:
        step["ns"] = ns
    for k, v in (("gateway", r.gateway), ("src", r.source), ("scope", r.scope), ("table", r.table),
                 ("metric", r.metric), ("protocol", r.protocol)):  # fmt: skip
        if v is not None:
            step[k] = v
    if r.destination == "default":
        step["family"] = r.family
    return step


def _rule_family(p: InterfacePlan, ru: Rule) -> Literal["inet", "inet6"]:
    """The rule's family: from its selectors, else IPv6 when every address of the
    plan is, else IPv4."""
    fam = _family(ru.source, ru.destination)
    if fam is not None:
        return fam
    return "inet6" if p.addresses and all(":" in a for a in p.addresses) else "inet"


def _route_order(r: Route) -> int:
    return 1 if r.gateway else 0


def _attach_steps(
    plans: Sequence[InterfacePlan], pod_ns: NetNs, host_ns: NetNs | None
) -> tuple[list[nl.Step], list[str], dict[str, int]]:
    if not isinstance(pod_ns, NetNs):
        raise InvalidArgument(f"pod_ns must be a NetNs, got {type(pod_ns).__name__}")
    seen_dev: set[str] = set()
    seen_name: set[str] = set()
    for p in plans:
        if not isinstance(p, InterfacePlan):
            raise InvalidArgument(f"expected InterfacePlan, got {type(p).__name__}")
        if p.device in seen_dev:
            raise InvalidArgument(f"device {p.device!r} appears twice in the plans")
        seen_dev.add(p.device)
        if p.kind != "rdma":
            if p.name in seen_name:
                raise InvalidArgument(
                    f"device {p.device!r}: pod link name {p.name!r} is used twice"
                )
            seen_name.add(p.name)
        if p.gso_ipv4_max_size is not None or p.gro_ipv4_max_size is not None:
            _require("link_set", "gso_ipv4_max_size", p.device, "an IPv4 GSO/GRO size")
        if p.sysctls:
            _require("sysctl", "", p.device, "sysctls")
        if p.ethtool_features or p.ethtool_private_flags:
            _require("ethtool", "", p.device, "ethtool settings")
        if p.vrf is not None:
            _require("vrf_add", "", p.device, "a VRF")
            _require("link_set", "master", p.device, "a VRF")
        if p.disable_ebpf:
            _require("ebpf_detach", "", p.device, "disable_ebpf")
        if p.rdma is not None and p.rdma.exclusive:
            _require("rdma_move", "", p.device, "an exclusive RDMA link")
    vrfs: dict[str, int] = {}
    for p in plans:
        if p.vrf is not None and vrfs.setdefault(p.vrf.name, p.vrf.table) != p.vrf.table:
            raise InvalidArgument(
                f"device {p.device!r}: VRF {p.vrf.name!r} is given tables "
                f"{vrfs[p.vrf.name]} and {p.vrf.table}"
            )

    steps: list[nl.Step] = []
    owners: list[str] = []
    up_index: dict[str, int] = {}

    def add(owner: str, step: nl.Step) -> None:
        steps.append(step)
        owners.append(owner)

    def at(step: nl.Step, ns: NetNs | None) -> nl.Step:
        if ns is not None:
            step["ns"] = ns
        return step

    links = [p for p in plans if p.kind != "rdma"]
    # 1. every move / creation, configured in the same RTM_NEWLINK
    for p in links:
        host = cast(str, p.host_ifname)
        if p.kind == "move":
            step = nl.move(
                host, pod_ns, name=p.name, mtu=p.mtu, mac=p.mac, gso_max_size=p.gso_max_size,
                gro_max_size=p.gro_max_size, ns=host_ns,
            )  # fmt: skip
            for k in ("gso_ipv4_max_size", "gro_ipv4_max_size"):
                if getattr(p, k) is not None:
                    step[k] = getattr(p, k)
        elif p.kind == "macvlan":
            step = nl.macvlan(
                p.name, host, mode=cast(Any, p.mode or "bridge"), netns=pod_ns, mtu=p.mtu,
                mac=p.mac, ns=host_ns,
            )  # fmt: skip
        else:
            step = nl.ipvlan(
                p.name, host, mode=cast(Any, p.mode or "l2"), netns=pod_ns, mtu=p.mtu, ns=host_ns
            )
        add(p.device, step)
    # 2. exclusive RDMA links follow their netdev
    for p in plans:
        if p.rdma is not None and p.rdma.exclusive:
            add(
                p.device, at({"op": "rdma_move", "device": p.rdma.device, "netns": pod_ns}, host_ns)
            )
    # 3. inside the pod
    for p in links:  # sizes a creation could not carry
        if p.kind != "move":
            extra = {k: getattr(p, k) for k in _SIZES if getattr(p, k) is not None}
            if extra:
                add(p.device, {"op": "link_set", "ifname": p.name, "ns": pod_ns, **extra})
    for p in links:
        for path, value in p.sysctls.items():
            add(p.device, {"op": "sysctl", "path": path, "value": value, "ns": pod_ns})
    for p in links:
        for a in p.addresses:
            add(p.device, nl.addr_add(p.name, a, ns=pod_ns))
    for p in links:
        up_index[p.device] = len(steps)
        add(p.device, nl.set_up(p.name, ns=pod_ns))
    for p in links:
        if p.ethtool_features or p.ethtool_private_flags:
            step = {"op": "ethtool", "ifname": p.name, "ns": pod_ns}
            if p.ethtool_features:
                step["features"] = dict(p.ethtool_features)
            if p.ethtool_private_flags:
                step["private_flags"] = dict(p.ethtool_private_flags)
            add(p.device, step)
    for p in links:
        if p.disable_ebpf:
            add(p.device, {"op": "ebpf_detach", "ifname": p.name, "ns": pod_ns})
    made: set[str] = set()
    for p in links:
        if p.vrf is not None:
            if p.vrf.name not in made:
                made.add(p.vrf.name)
                add(
                    p.device,
                    {
                        "op": "vrf_add",
                        "name": p.vrf.name,
                        "table": p.vrf.table,
                        "up": True,
                        "ns": pod_ns,
                    },
                )
            add(p.device, {"op": "link_set", "ifname": p.name, "master": p.vrf.name, "ns": pod_ns})
    for p in links:
        for r in sorted(p.routes, key=_route_order):
            add(p.device, _route_step(r, p.name, pod_ns))
    for p in links:
        for ru in p.rules:
            step = nl.rule_add(
                priority=ru.priority, table=ru.table, src=ru.source, dst=ru.destination, ns=pod_ns
            )
            if _family(ru.source, ru.destination) is None:
                step["family"] = _rule_family(p, ru)
            add(p.device, step)
    for p in links:
        for n in p.neighbors:
            add(p.device, nl.neigh_add(p.name, n.destination, n.hardware_addr, ns=pod_ns))
    return steps, owners, up_index


def attach_steps(
    plans: Sequence[InterfacePlan], pod_ns: NetNs, *, host_ns: NetNs | None = None
) -> list[nl.Step]:
    """The native steps :func:`attach` applies, in order: every move/creation (name,
    MTU, MAC, GSO/GRO in the one RTM_NEWLINK), exclusive RDMA moves, then in the
    pod sysctls, addresses, up, ethtool, eBPF removal, VRF, routes, rules,
    neighbours. Refuses bad input (:class:`InvalidArgument`) and ops the native
    core lacks (:class:`NotAvailable`)."""
    return _attach_steps(plans, pod_ns, host_ns)[0]


_STEP_RE = re.compile(r"^step (\d+)\b")


def _with_device(e: KndError, owners: Sequence[str], what: str) -> KndError:
    """``e`` again (same class and attributes), its message naming the device of
    the failing step; the device is also in its ``device`` attribute."""
    idx = getattr(e, "step_index", None)
    if not isinstance(idx, int) or idx < 0:
        m = _STEP_RE.match(str(e))
        idx = int(m.group(1)) if m else -1
    device = owners[idx] if 0 <= idx < len(owners) else None
    prefix = f"{what} of device {device!r}" if device else what
    hint = ""
    if getattr(e, "errno_name", "") == "EEXIST" and getattr(e, "op", "") == "link_set":
        hint = " (is the name already taken in the target namespace?)"
    new = type(e)(f"{prefix}: {e}{hint}")
    new.__dict__.update(e.__dict__)
    new.device = device  # type: ignore[attr-defined]
    return new


def _recover_partial_move(
    plans: Sequence[InterfacePlan],
    device: str,
    pod_ns: NetNs,
    host_ns: NetNs | None,
    err: KndError,
) -> None:
    """Undoes a move the kernel half did: an RTM_NEWLINK that moves and renames
    a link moves it first, then may refuse the new name (EEXIST: a pod link has
    it) - the step failed, so the native rollback does not touch it, and the link
    sits in the pod under its host name without its host addresses and routes.
    :func:`detach` finds it there by its MAC and gives it back as captured."""
    p = next((p for p in plans if p.device == device), None)
    if p is None or p.kind != "move":
        return
    try:
        out = detach([p], pod_ns, host_ns=host_ns)
    except KndError as e2:
        log.error("attach of %r failed and its half-done move could not be undone: %s", device, e2)
        return
    if out.restored or out.conflicts:
        log.warning("attach of %r failed (%s); the half-done move was undone", device, err)
    if out.errors:
        log.error("undoing the half-done move of %r: %s", device, "; ".join(out.errors))


def attach(
    plans: Sequence[InterfacePlan], pod_ns: NetNs, *, host_ns: NetNs | None = None
) -> AttachResult:
    """Moves/creates and configures every link of ``plans`` in ONE native call.

    On any failure the native core undoes every completed step and the error (a
    :class:`NetlinkError`, :class:`NamespaceError` or :class:`InvalidArgument`)
    is raised again with the failing device named in its message and in its
    ``device`` attribute.
    """
    t0 = time.monotonic()
    steps, owners, up_index = _attach_steps(plans, pod_ns, host_ns)
    if not steps:
        return AttachResult({}, 0, time.monotonic() - t0)
    try:
        res = nl.apply(steps)
    except (NetlinkError, NamespaceError, InvalidArgument) as e:
        err = _with_device(e, owners, "attach")
        idx = getattr(e, "step_index", -1)
        if isinstance(e, NetlinkError) and 0 <= idx < len(steps) and "netns" in steps[idx]:
            _recover_partial_move(plans, owners[idx], pod_ns, host_ns, err)
        raise err from e
    results = res["results"]
    pod_links = {
        dev: cast(int, results[i]["ifindex"])
        for dev, i in up_index.items()
        if i < len(results) and results[i]["ifindex"] is not None
    }
    dt = time.monotonic() - t0
    # debug: the driver logs each pod's attach (with the devices) at info already
    log.debug("attached %d device(s) in %d sendmsg, %.1f ms", len(plans), res["sendmsg"], dt * 1e3)
    return AttachResult(pod_links, res["sendmsg"], dt)


# ----------------------------------------------------------------------------- detach


@dataclass
class DetachResult:
    """What :func:`detach` found: ``restored`` (back on the host as captured),
    ``deleted`` (sub-interfaces removed), ``missing`` (not found anywhere).
    Extensions: ``conflicts`` (restored under a temporary name because another
    link took the original one: ``"dev: restored as knd7 (eth3 is taken)"``) and
    ``errors`` (what the kernel refused during the restore, one line each, naming
    the device; such a device is in neither ``restored`` nor ``deleted``)."""

    restored: list[str]
    deleted: list[str]
    missing: list[str]
    duration_s: float
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Host:
    """Current host-side records, dumped on first use."""

    ns: NetNs | None
    links: list[nl.LinkRecord]
    _addrs: list[nl.AddressRecord] | None = None
    _routes: list[nl.RouteRecord] | None = None
    _neighs: list[nl.NeighbourRecord] | None = None

    def addrs(self) -> list[nl.AddressRecord]:
        if self._addrs is None:
            self._addrs = nl.dump_addresses(self.ns)
        return self._addrs

    def routes(self) -> list[nl.RouteRecord]:
        if self._routes is None:
            self._routes = nl.dump_routes(self.ns)
        return self._routes

    def neighs(self) -> list[nl.NeighbourRecord]:
        if self._neighs is None:
            self._neighs = nl.dump_neighbours(self.ns)
        return self._neighs


def _macs(p: InterfacePlan) -> set[str]:
    out = {m.lower() for m in (p.mac, p.host.mac if p.host else None) if m}
    return out


def _find_pod_link(p: InterfacePlan, links: Sequence[nl.LinkRecord]) -> nl.LinkRecord | None:
    named = next((lk for lk in links if lk["name"] == p.name), None)
    if p.kind != "move":
        return named if named is not None and named["kind"] == p.kind else None
    hs = p.host
    if hs is None:
        return named
    macs = _macs(p)

    def ours(lk: nl.LinkRecord) -> bool:
        # the MAC when there is one: a pod link may well have the same index
        if macs:
            return (lk["mac"] or "").lower() in macs
        return lk["ifindex"] == hs.ifindex

    if named is not None and ours(named):
        return named
    cands = [lk for lk in links if ours(lk) and lk["name"] != "lo"]
    return cands[0] if len(cands) == 1 else None


def _find_host_link(p: InterfacePlan, links: Sequence[nl.LinkRecord]) -> nl.LinkRecord | None:
    hs = p.host
    if hs is None:
        return next((lk for lk in links if lk["name"] == p.host_ifname), None)
    macs = _macs(p)
    if not macs:  # a link without a MAC address: its index is all there is
        return next((lk for lk in links if lk["ifindex"] == hs.ifindex), None)
    both = [lk for lk in links if lk["ifindex"] == hs.ifindex and (lk["mac"] or "").lower() in macs]
    if both:
        return both[0]
    cands = [lk for lk in links if (lk["mac"] or "").lower() in macs]
    return cands[0] if len(cands) == 1 else None


def _host_side_steps(  # noqa: PLR0917
    p: InterfacePlan,
    hs: HostState,
    ref: str | int,
    target_name: str,
    host: _Host,
    cur: nl.LinkRecord | None,
) -> list[nl.Step]:
    """Steps in the host namespace restoring ``hs`` on link ``ref``. ``cur`` is
    the link's current host record, None when it is being moved back by the
    same plan (then it has nothing: no address, route, neighbour, master)."""
    ns = host.ns
    dev = p.device
    steps: list[nl.Step] = []

    def at(step: nl.Step) -> nl.Step:
        if ns is not None:
            step["ns"] = ns
        return step

    if cur is not None:  # link attributes (a move carries them in its own message)
        change = _link_diff(hs, cur, target_name)
        if change:
            steps.append(at({"op": "link_set", "ifindex": cur["ifindex"], **change}))
    # sysctls of the link, under the name it has now
    for path, value in hs.sysctls.items():
        hp = host_sysctl_path(path, hs.ifname, target_name) or path
        if cur is not None:
            try:
                if _read_sysctl(hp, ns) == value:
                    continue
            except KndError:
                pass  # written below; a refusal is reported there
        _require("sysctl", "", dev, "restoring host sysctls")
        steps.append(at({"op": "sysctl", "path": hp, "value": value}))
    # ethtool settings the plan changed
    feats, privs = dict(hs.ethtool_features), dict(hs.ethtool_private_flags)
    if (feats or privs) and cur is not None:
        try:
            now = _dump_ethtool(cur["name"], ns)
        except KndError:
            pass  # written below; a refusal is reported there
        else:
            nf, np_ = now.get("features", {}), now.get("private_flags", {})
            feats = {k: v for k, v in feats.items() if nf.get(k) != v}
            privs = {k: v for k, v in privs.items() if np_.get(k) != v}
    if feats or privs:
        _require("ethtool", "", dev, "restoring ethtool settings")
        step: nl.Step = {"op": "ethtool", "ifname": target_name}
        if feats:
            step["features"] = feats
        if privs:
            step["private_flags"] = privs
        steps.append(at(step))
    # master
    cur_master: str | None = None
    if cur is not None and cur["master"]:
        cur_master = next((lk["name"] for lk in host.links if lk["ifindex"] == cur["master"]), None)
    if hs.master != cur_master:
        _require("link_set", "master", dev, "restoring the link's master")
        steps.append(at({"op": "link_set", "ifname": target_name, "master": hs.master or ""}))
    # addresses
    have: tuple[str, ...] = ()
    if cur is not None:
        have, _ = _link_addresses(host.addrs(), cur["ifindex"])
    for a in have:
        if a not in hs.addresses:
            steps.append(nl.addr_del(ref, a, ns=ns))
    for a in hs.addresses:
        if a not in have:
            steps.append(nl.addr_add(ref, a, flags=cast(Any, hs.address_flags.get(a, ())), ns=ns))
    # up
    if (cur is None and hs.up) or (cur is not None and cur["up"] != hs.up):
        steps.append(nl.link_set(ref, up=hs.up, ns=ns))
    # routes, neighbours
    have_routes: tuple[Route, ...] = ()
    have_neighs: tuple[Neighbor, ...] = ()
    if cur is not None:
        have_routes = _link_routes(host.routes(), cur["ifindex"])
        have_neighs = _link_neighbors(host.neighs(), cur["ifindex"])
    for r in have_routes:
        if r not in hs.routes:
            steps.append(_route_step(r, ref, ns, "route_del"))
    for r in sorted(hs.routes, key=_route_order):
        if r not in have_routes:
            steps.append(_route_step(r, ref, ns))
    want_n = {n.destination: n for n in hs.neighbors}
    for n in have_neighs:
        if want_n.get(n.destination) != n:
            steps.append(nl.neigh_del(ref, n.destination, lladdr=n.hardware_addr, ns=ns))
    for n in hs.neighbors:
        if n not in have_neighs:
            steps.append(nl.neigh_add(ref, n.destination, n.hardware_addr, ns=ns))
    return steps


def _link_diff(hs: HostState, cur: Mapping[str, Any], target_name: str) -> dict[str, Any]:
    """The ``link_set`` keys that bring link record ``cur`` to ``hs`` (named ``target_name``)."""
    out: dict[str, Any] = {}
    if cur["name"] != target_name:
        out["name"] = target_name
    if cur["mtu"] != hs.mtu:
        out["mtu"] = hs.mtu
    if hs.mac and (cur["mac"] or "").lower() != hs.mac.lower():
        out["mac"] = hs.mac
    if (cur["alias"] or None) != hs.alias:
        out["alias"] = hs.alias or ""
    for k in ("gso_max_size", "gro_max_size", "gso_ipv4_max_size", "gro_ipv4_max_size"):
        want = getattr(hs, k)
        if want is not None and cur.get(k) != want:
            out[k] = want
    return out


def _free_name(
    hs: HostState, host_ifindex: int | None, ifindex: int, host_links: Sequence[nl.LinkRecord]
) -> tuple[str, str | None]:
    """The name to restore under, and a conflict note when it is not the original.

    ``host_ifindex`` is the link's index in the host namespace (None: it is not
    there yet); ``ifindex`` its index now, for the temporary name."""
    taken = {lk["name"]: lk["ifindex"] for lk in host_links}
    if taken.get(hs.ifname, host_ifindex) == host_ifindex:
        return hs.ifname, None
    tmp = f"knd{ifindex}"
    n = 0
    while taken.get(tmp, host_ifindex) != host_ifindex:
        n += 1
        tmp = f"knd{ifindex}x{n}"
    return tmp, f"restored as {tmp} ({hs.ifname} is taken)"


def _net(cidr: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    return None if cidr is None else ipaddress.ip_network(cidr, strict=False)


def _pod_cleanup_steps(
    plans: Sequence[InterfacePlan], pod_ns: NetNs | None, pod_links: Sequence[nl.LinkRecord]
) -> list[tuple[str, nl.Step]]:
    """``rule_del`` for each rule of the plans still in the pod (matched on table,
    family, selectors and, when the plan gave one, priority) and ``link_del`` for
    their VRF devices there."""
    out: list[tuple[str, nl.Step]] = []
    if any(p.rules for p in plans):
        records = list(nl.dump_rules(pod_ns))
        for p in plans:
            for ru in p.rules:
                fam = _rule_family(p, ru)
                src, dst = _net(ru.source), _net(ru.destination)
                for rec in records:
                    if (
                        rec["table"] == ru.table
                        and rec["family"] == fam
                        and _net(rec["src"]) == src
                        and _net(rec["dst"]) == dst
                        and (ru.priority is None or rec["priority"] == ru.priority)
                    ):
                        records.remove(rec)
                        out.append((p.device, nl.rule_del(
                            family=cast(Any, fam), priority=rec["priority"], table=rec["table"],
                            src=rec["src"], dst=rec["dst"], ns=pod_ns,
                        )))  # fmt: skip
                        break
    vrfs = {lk["name"] for lk in pod_links if lk["kind"] == "vrf"}
    for p in plans:
        if p.vrf is not None and p.vrf.name in vrfs:
            vrfs.discard(p.vrf.name)
            out.append((p.device, nl.delete_link(p.vrf.name, ns=pod_ns)))
    return out


@dataclass
class _DetachPlan:
    steps: list[nl.Step] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    result: DetachResult = field(default_factory=lambda: DetachResult([], [], [], 0.0))


def _pod_alive(pod_ns: NetNs | None) -> bool:
    try:
        return pod_ns is not None and pod_ns.is_alive()
    except KndError:
        return False


def _compute_detach(
    plans: Sequence[InterfacePlan], pod_ns: NetNs | None, host_ns: NetNs | None
) -> _DetachPlan:
    out = _DetachPlan()
    res = out.result
    alive = _pod_alive(pod_ns)
    pod_links: list[nl.LinkRecord] = []
    if alive:
        try:
            pod_links = nl.dump_links(pod_ns)
        except NamespaceError:
            alive = False
    host = _Host(host_ns, nl.dump_links(host_ns))
    target_ns = host_ns if host_ns is not None else NetNs.current()

    def add(owner: str, steps: Iterable[nl.Step]) -> None:
        for s in steps:
            out.steps.append(s)
            out.owners.append(owner)

    # 1. exclusive RDMA links back first
    rdma_in_pod: set[str] = set()
    if (
        alive
        and any(p.rdma is not None and p.rdma.exclusive for p in plans)
        and _native.rdma_available()
    ):
        rdma_in_pod = {d["name"] for d in _native.rdma_links(pod_ns)}
    for p in plans:
        if p.rdma is not None and p.rdma.exclusive and p.rdma.device in rdma_in_pod:
            _require("rdma_move", "", p.device, "moving the RDMA link back")
            add(
                p.device,
                [{"op": "rdma_move", "device": p.rdma.device, "netns": target_ns, "ns": pod_ns}],
            )
    # 2. what the plans added to the pod namespace itself (kept by a live pod,
    # refused as existing by a second attach into it): rules, VRF devices
    if alive:
        add_steps = _pod_cleanup_steps(plans, pod_ns, pod_links)
        for owner, step in add_steps:
            add(owner, [step])
    rdma_on_host: set[str] | None = None
    # 3. links
    for p in plans:
        if p.kind == "rdma":  # IB-only: restored once its RDMA link is (or stays) on the host
            rd = cast(RdmaPlan, p.rdma)
            if rd.exclusive and rd.device not in rdma_in_pod:
                if rdma_on_host is None:
                    rdma_on_host = (
                        {d["name"] for d in _native.rdma_links(host_ns)}
                        if _native.rdma_available()
                        else set()
                    )
                if rd.device not in rdma_on_host:
                    res.missing.append(p.device)
                    continue
            res.restored.append(p.device)
            continue
        if p.kind in ("macvlan", "ipvlan"):
            lk = _find_pod_link(p, pod_links) if alive else None
            if lk is None:
                res.missing.append(p.device)
            else:
                add(p.device, [nl.delete_link(lk["ifindex"], ns=pod_ns)])
                res.deleted.append(p.device)
            continue
        hs = p.host
        in_pod = _find_pod_link(p, pod_links) if alive else None
        if in_pod is not None:
            if hs is None:  # no snapshot: the name is all we can give back
                add(
                    p.device,
                    [
                        nl.link_set(
                            in_pod["ifindex"], ns=pod_ns, netns=target_ns, name=p.host_ifname
                        )
                    ],
                )
                res.restored.append(p.device)
                continue
            name, conflict = _free_name(hs, None, in_pod["ifindex"], host.links)
            move = nl.link_set(in_pod["ifindex"], ns=pod_ns, netns=target_ns, name=name)
            move.update(_link_diff(hs, in_pod, name))
            move["name"] = name
            add(p.device, [move])
            add(p.device, _host_side_steps(p, hs, name, name, host, None))
        else:
            on_host = _find_host_link(p, host.links)
            if on_host is None:
                res.missing.append(p.device)
                continue
            if hs is None:
                res.restored.append(p.device)
                continue
            name, conflict = _free_name(hs, on_host["ifindex"], on_host["ifindex"], host.links)
            add(p.device, _host_side_steps(p, hs, on_host["ifindex"], name, host, on_host))
        if conflict:
            res.conflicts.append(f"{p.device}: {conflict}")
        else:
            res.restored.append(p.device)
    return out


def detach_steps(
    plans: Sequence[InterfacePlan], pod_ns: NetNs | None, *, host_ns: NetNs | None = None
) -> list[nl.Step]:
    """The steps :func:`detach` would apply now, computed from where each link is."""
    return _compute_detach(plans, pod_ns, host_ns).steps


def detach(
    plans: Sequence[InterfacePlan], pod_ns: NetNs | None, *, host_ns: NetNs | None = None
) -> DetachResult:
    """Gives every link of ``plans`` back to the host exactly as captured.

    Idempotent: the steps are computed from where each link is now (the pod
    namespace by plan name and MAC, or ifindex for a link without one; the host
    namespace by ifindex and MAC) and from its :class:`HostState`; a link
    already restored costs nothing. Exclusive RDMA links go back first; in a
    live pod the plans' rules and VRF devices are removed (so the same plans can
    attach again); then each link moves back with its original name, MTU, MAC,
    alias and GSO/GRO sizes in one RTM_NEWLINK, followed
    by its sysctls, ethtool settings, master, addresses, up state, routes and
    neighbours - one native call, without rollback (a half-restored link is
    better on the host than back in a dying pod). When the kernel refuses a
    step, the remaining work is recomputed and applied step by step, and what
    still fails is listed in ``DetachResult.errors``. ``pod_ns`` None or dead:
    whatever is found on the host is restored. Missing links are reported, not
    raised.
    """
    t0 = time.monotonic()
    for p in plans:
        if not isinstance(p, InterfacePlan):
            raise InvalidArgument(f"expected InterfacePlan, got {type(p).__name__}")
    dp = _compute_detach(plans, pod_ns, host_ns)
    if dp.steps:
        try:
            nl.apply(dp.steps, rollback=False)
        except (NetlinkError, NamespaceError, InvalidArgument) as e:
            first = _with_device(e, dp.owners, "detach")
            log.warning("%s; restoring step by step", first)
            dp = _compute_detach(plans, pod_ns, host_ns)
            failed: set[str] = set()
            for step, owner in zip(dp.steps, dp.owners, strict=True):
                try:
                    nl.apply([step], rollback=False)
                except (NetlinkError, NamespaceError, InvalidArgument) as e2:
                    msg = f"device {owner!r}: {e2}"
                    log.error("detach: %s", msg)
                    dp.result.errors.append(msg)
                    failed.add(owner)
            for lst in (dp.result.restored, dp.result.deleted):
                lst[:] = [d for d in lst if d not in failed]
    res = dp.result
    res.duration_s = time.monotonic() - t0
    log.info(
        "detached %d device(s): %d restored, %d deleted, %d missing, %d conflicts, %d errors"
        " in %.1f ms",
        len(plans), len(res.restored), len(res.deleted), len(res.missing), len(res.conflicts),
        len(res.errors), res.duration_s * 1e3,
    )  # fmt: skip
    for c in res.conflicts:
        log.warning("detach: %s", c)
    if res.missing:
        log.warning("detach: link(s) of %s not found", ", ".join(res.missing))
    return res
