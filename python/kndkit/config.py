"""DraNet-compatible per-device configuration of a moved netdev.

A claim's opaque parameters for a netdev driver look like DraNet's (same JSON
names, same rules), so claims written for DraNet keep working::

    {"interface": {"name": "net1", "addresses": ["10.0.0.2/24"], "mtu": 9000,
                   "arpIgnore": 1, "vrf": {"name": "blue", "table": 100}},
     "routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.1"}],
     "neighbors": [{"destination": "10.0.0.1", "hardwareAddr": "02:00:00:00:00:01"}],
     "ethtool": {"features": {"rx-checksum": false}}}

:func:`merge_netdev_config` lays the layers of parameters (DeviceClass first,
claim last) over each other the way DraNet does; :func:`parse_netdev_config`
validates the result into a :class:`NetdevConfig`, raising
:class:`~kndkit.k8s.errors.ConfigError` whose ``field`` is the exact path of the
offending field (``routes[1].gateway``). :func:`check_device_support` then
refuses what the device or this driver cannot do (netdev fields on an
InfiniBand-only device; DHCP).

Validation rules (all of DraNet's):

* unknown fields and wrongly typed values fail (no ``"9000"`` for an integer);
* ``interface.name``: at most 15 characters of ``A-Z a-z 0-9 - _ .``, not ``.``/``..``;
* ``interface.dhcp`` and ``interface.addresses`` are mutually exclusive;
* addresses are CIDRs (``10.0.0.2/24``); ``mtu`` >= 68; MACs parse (a MAC given
  to an interface must also be unicast and not all zeros);
* GSO/GRO sizes > 0; ``arpIgnore`` in {0, 1, 2, 3, 8}; ``arpAnnounce`` in 0..2;
* ``vrf`` needs a ``name``; its ``table``, when given, is > 0 and not 253-255;
* a route needs a ``destination`` (CIDR); ``scope`` is universe (0) or link (253);
  a universe route needs a ``gateway``; gateway and source are of the
  destination's family;
* a rule's ``priority`` is 0..32767, its ``table`` > 0, source and destination
  CIDRs of one family; no rules together with a VRF;
* a neighbour needs an IP ``destination`` and a MAC ``hardwareAddr``.

DHCP: the kernel-only data plane runs no DHCP client in the pod, so
``"dhcp": true`` is refused by :func:`check_device_support` (with
``dhcp_supported=False``, the default) with a ConfigError naming
``interface.dhcp``: addresses come from the claim, from IPAM or from the host
interface instead.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kndkit.k8s.errors import ConfigError

__all__ = [
    "MAX_IFNAME",
    "MIN_MTU",
    "EthtoolConfig",
    "InterfaceConfig",
    "NeighborConfig",
    "NetdevConfig",
    "RouteConfig",
    "RuleConfig",
    "VrfConfig",
    "check_device_support",
    "merge_netdev_config",
    "normalize_mac",
    "parse_netdev_config",
]

#: Longest interface name the kernel accepts (IFNAMSIZ - 1).
MAX_IFNAME = 15
#: Smallest MTU accepted (the IPv4 minimum).
MIN_MTU = 68
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAC_COLON = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")
_MAC_DOT = re.compile(r"^[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}$")
_ETHTOOL_NAME = re.compile(r"^[\x21-\x7e]{1,31}$")
_RESERVED_TABLES = (253, 254, 255)
_SCOPES: dict[int, Literal["universe", "link"]] = {0: "universe", 253: "link"}


def _fail(field: str, message: str) -> PydanticCustomError:
    """A validation error for ``field`` (a path relative to the model raising it)."""
    return PydanticCustomError("netdev_config", "{field}: " + message, {"field": field})


def normalize_mac(value: str) -> str:
    """``value`` as a lower-case, colon-separated 6-octet MAC.

    Accepts ``aa:bb:cc:dd:ee:ff``, ``aa-bb-cc-dd-ee-ff`` and ``aabb.ccdd.eeff``;
    raises :class:`ValueError` for anything else.
    """
    if _MAC_COLON.match(value):
        digits = re.sub(r"[:-]", "", value)
    elif _MAC_DOT.match(value):
        digits = value.replace(".", "")
    else:
        raise ValueError(f"{value!r} is not a MAC address (6 octets, e.g. 02:00:00:00:00:01)")
    digits = digits.lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _check_ifname(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_IFNAME:
        raise ValueError(f"{value!r} is longer than {MAX_IFNAME} characters")
    if value in (".", "..") or not _IFNAME.match(value):
        raise ValueError(
            f"{value!r} is not a safe interface name (letters, digits, '-', '_', '.';"
            " not '.' or '..')"
        )
    return value


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _cidr(value: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if "/" not in value:
        raise ValueError(f"{value!r} is not in CIDR notation (address/prefix length)")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None


class _Strict(BaseModel):
    # Strict JSON like DraNet's decoder: unknown fields and wrongly typed values fail;
    # fields are read by their JSON (camelCase) names only.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (camelCase names, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)


class VrfConfig(_Strict):
    """``interface.vrf``: put the interface into a VRF device of that name.

    ``table`` may be left out: the :class:`kndkit.steps.Vrf` step then picks one.
    """

    name: str = ""
    table: int | None = None

    @field_validator("name", mode="after")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_ifname(v) or ""

    @model_validator(mode="after")
    def _named(self) -> VrfConfig:
        if not self.name:
            raise _fail("name", "a VRF needs a name")
        return self

    @field_validator("table")
    @classmethod
    def _table(cls, v: int | None) -> int | None:
        if v is None:
            return v
        if v <= 0 or v > _UINT32_MAX:
            raise ValueError(f"table {v} is not a positive 32-bit table id")
        if v in _RESERVED_TABLES:
            raise ValueError(f"table {v} is reserved (253 default, 254 main, 255 local)")
        return v


class InterfaceConfig(_Strict):
    """``interface``: the link itself as the pod sees it."""

    name: str | None = None
    addresses: list[str] = Field(default_factory=list)
    dhcp: bool | None = None
    mtu: int | None = None
    hardware_addr: str | None = Field(default=None, alias="hardwareAddr")
    gso_max_size: int | None = Field(default=None, alias="gsoMaxSize")
    gro_max_size: int | None = Field(default=None, alias="groMaxSize")
    gso_ipv4_max_size: int | None = Field(default=None, alias="gsoIPv4MaxSize")
    gro_ipv4_max_size: int | None = Field(default=None, alias="groIPv4MaxSize")
    disable_ebpf_programs: bool | None = Field(default=None, alias="disableEbpfPrograms")
    arp_ignore: int | None = Field(default=None, alias="arpIgnore")
    arp_announce: int | None = Field(default=None, alias="arpAnnounce")
    vrf: VrfConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_ifname(v)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for i, a in enumerate(v):
            try:
                _cidr(a)
            except ValueError as e:
                raise _fail(f"[{i}]", str(e)) from None
        return v

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int | None) -> int | None:
        if v is not None and v < MIN_MTU:
            raise ValueError(f"MTU {v} is below the minimum of {MIN_MTU}")
        if v is not None and v > _INT32_MAX:
            raise ValueError(f"MTU {v} is not a 32-bit signed integer")
        return v

    @field_validator("hardware_addr")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        if v is None:
            return v
        mac = normalize_mac(v)
        if int(mac[:2], 16) & 1:
            raise ValueError(f"{v!r} is a multicast MAC (an interface needs a unicast one)")
        if mac == "00:00:00:00:00:00":
            raise ValueError(f"{v!r} is the all-zeros MAC")
        return mac

    @field_validator("gso_max_size", "gro_max_size", "gso_ipv4_max_size", "gro_ipv4_max_size")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and not 0 < v <= _INT32_MAX:
            raise ValueError(f"{v} is not a positive size")
        return v

    @field_validator("arp_ignore")
    @classmethod
    def _arp_ignore(cls, v: int | None) -> int | None:
        if v is not None and v not in (0, 1, 2, 3, 8):
            raise ValueError(f"arp_ignore {v} is not one of 0, 1, 2, 3, 8")
        return v

    @field_validator("arp_announce")
    @classmethod
    def _arp_announce(cls, v: int | None) -> int | None:
        if v is not None and v not in (0, 1, 2):
            raise ValueError(f"arp_announce {v} is not one of 0, 1, 2")
        return v

    @model_validator(mode="after")
    def _dhcp_xor_addresses(self) -> InterfaceConfig:
        if self.dhcp and self.addresses:
            raise _fail("dhcp", "dhcp and addresses are mutually exclusive")
        return self


class RouteConfig(_Strict):
    """One entry of ``routes``: a route through the interface, in the pod.

    ``scope`` is DraNet's number (0 universe, 253 link) or its name; it reads
    back as the name. ``table`` 0 (or unset) means the main table.
    """

    destination: str = ""
    gateway: str | None = None
    source: str | None = None
    scope: Literal["universe", "link"] = "universe"
    table: int = 0

    @field_validator("scope", mode="before")
    @classmethod
    def _scope(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            if v not in _SCOPES:
                raise ValueError(f"scope {v} is neither universe (0) nor link (253)")
            return _SCOPES[v]
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: int) -> int:
        if not 0 <= v <= _UINT32_MAX:
            raise ValueError(f"table {v} is not a 32-bit table id")
        return v

    @field_validator("gateway", "source")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        return str(_ip(v))

    @model_validator(mode="after")
    def _route(self) -> RouteConfig:
        if not self.destination:
            raise _fail("destination", "a route needs a destination")
        try:
            dst = ipaddress.ip_network(_cidr(self.destination).network)
        except ValueError as e:
            raise _fail("destination", str(e)) from None
        if self.scope == "universe" and self.gateway is None:
            raise _fail("gateway", "a universe-scope route needs a gateway (or scope link)")
        for name in ("gateway", "source"):
            value = getattr(self, name)
            if value is not None and _ip(value).version != dst.version:
                raise _fail(
                    name,
                    f"{value} is not of the destination {self.destination}'s IP family",
                )
        if str(dst) != self.destination:
            # Host bits set: the kernel routes the network, so store that.
            return self.model_copy(update={"destination": str(dst)})
        return self


class RuleConfig(_Strict):
    """One entry of ``rules``: a policy routing rule in the pod (without a
    ``priority`` the kernel picks one)."""

    priority: int | None = None
    source: str | None = None
    destination: str | None = None
    table: int = 0

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 32767:
            raise ValueError(f"priority {v} is not in 0..32767")
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: int) -> int:
        if not 0 < v <= _UINT32_MAX:
            raise ValueError(f"table {v} is not a positive 32-bit table id (a rule needs one)")
        return v

    @field_validator("source", "destination")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        return str(ipaddress.ip_network(_cidr(v).network))

    @model_validator(mode="after")
    def _families(self) -> RuleConfig:
        if self.source and self.destination:
            s, d = ipaddress.ip_network(self.source), ipaddress.ip_network(self.destination)
            if s.version != d.version:
                raise _fail(
                    "destination",
                    f"{self.destination} is not of the source {self.source}'s IP family",
                )
        return self


class NeighborConfig(_Strict):
    """One entry of ``neighbors``: a permanent ARP/NDP entry in the pod."""

    destination: str = ""
    hardware_addr: str = Field(default="", alias="hardwareAddr")

    @model_validator(mode="after")
    def _neighbor(self) -> NeighborConfig:
        if not self.destination:
            raise _fail("destination", "a neighbour needs a destination")
        try:
            dst = str(_ip(self.destination))
        except ValueError as e:
            raise _fail("destination", str(e)) from None
        if not self.hardware_addr:
            raise _fail("hardwareAddr", "a neighbour needs a hardwareAddr")
        try:
            mac = normalize_mac(self.hardware_addr)
        except ValueError as e:
            raise _fail("hardwareAddr", str(e)) from None
        if (dst, mac) != (self.destination, self.hardware_addr):
            return self.model_copy(update={"destination": dst, "hardware_addr": mac})
        return self


class EthtoolConfig(_Strict):
    """``ethtool``: offload features and driver private flags, by kernel name."""

    features: dict[str, bool] = Field(default_factory=dict)
    private_flags: dict[str, bool] = Field(default_factory=dict, alias="privateFlags")

    @field_validator("features", "private_flags")
    @classmethod
    def _names(cls, v: dict[str, bool]) -> dict[str, bool]:
        for name in v:
            if not _ETHTOOL_NAME.match(name):
                raise _fail(
                    f"[{name!r}]", "not an ethtool name (1-31 printable characters, no spaces)"
                )
        return v


class NetdevConfig(_Strict):
    """The whole opaque configuration of one netdev device (DraNet's NetworkConfig).

    ``profile`` names a configuration the driver lays under this one (DraNet
    resolves it through a webhook; :class:`kndkit.examples.netdev.Netdev` reads
    its profiles from the driver's parameters).
    """

    interface: InterfaceConfig = Field(default_factory=InterfaceConfig)
    routes: list[RouteConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)
    neighbors: list[NeighborConfig] = Field(default_factory=list)
    ethtool: EthtoolConfig | None = None
    profile: str | None = None

    @model_validator(mode="after")
    def _rules_and_vrf(self) -> NetdevConfig:
        if self.rules and self.interface.vrf is not None:
            raise _fail("rules", "rules are not supported together with interface.vrf")
        return self

    def netdev_fields(self) -> list[str]:
        """Paths of the set fields that need a netdev (all but ``profile``)."""
        out = [
            f"interface.{f.alias or name}"
            for name, f in InterfaceConfig.model_fields.items()
            if getattr(self.interface, name) not in (None, [])
        ]
        out += [name for name in ("routes", "rules", "neighbors") if getattr(self, name)]
        if self.ethtool is not None:
            out.append("ethtool")
        return out


# -- parsing ------------------------------------------------------------------


def _path(loc: Iterable[int | str], extra: object = None) -> str:
    out = ""
    parts: list[int | str] = list(loc)
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or "." in part or part.startswith("function-"):
            continue  # pydantic's internal validator labels
        else:
            out += f".{part}" if out else part
    if isinstance(extra, str) and extra:
        if extra.startswith("["):
            out += extra
        else:
            out += f".{extra}" if out else extra
    return out


def parse_netdev_config(
    raw: Mapping[str, Any] | None,
    *,
    claim: str = "",
    request: str = "",
    device: str = "",
) -> NetdevConfig:
    """``raw`` (merged opaque parameters) validated into a :class:`NetdevConfig`.

    Raises :class:`ConfigError`: its ``field`` is the JSON path of the first
    offending field (``interface.mtu``, ``routes[1].gateway``), its message lists
    every problem found, with the claim, request and device when given.
    """
    try:
        return NetdevConfig.model_validate(dict(raw or {}))
    except pydantic.ValidationError as e:
        problems: list[tuple[str, str]] = []
        for err in e.errors():
            ctx = err.get("ctx") or {}
            path = _path(err["loc"], ctx.get("field") if err["type"] == "netdev_config" else None)
            msg = err["msg"]
            if err["type"] == "netdev_config":
                msg = msg.split(": ", 1)[1] if ": " in msg else msg
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            problems.append((path, msg))
        where = ", ".join(
            p
            for p in (
                f"claim {claim}" if claim else "",
                f"request {request!r}" if request else "",
                f"device {device}" if device else "",
            )
            if p
        )
        details = "; ".join(f"{p or '<root>'}: {m}" for p, m in problems)
        raise ConfigError(
            f"{where + ': ' if where else ''}invalid netdev configuration: {details}",
            field=problems[0][0] if problems else "",
            claim=claim,
            request=request,
            device=device,
        ) from None


def check_device_support(
    config: NetdevConfig,
    *,
    has_netdev: bool,
    dhcp_supported: bool = False,
    claim: str = "",
    request: str = "",
    device: str = "",
) -> None:
    """Refuses a valid configuration the device or the driver cannot carry out.

    * an InfiniBand-only device (``has_netdev=False``) takes no netdev field at
      all (every field but ``profile``);
    * ``interface.dhcp: true`` unless ``dhcp_supported`` (see the module notes).

    Raises :class:`ConfigError` naming the first such field.
    """
    where = ", ".join(
        p
        for p in (
            f"claim {claim}" if claim else "",
            f"request {request!r}" if request else "",
            f"device {device}" if device else "",
        )
        if p
    )
    prefix = f"{where}: " if where else ""
    if not has_netdev:
        fields = config.netdev_fields()
        if fields:
            raise ConfigError(
                f"{prefix}the device has no network interface (RDMA only), so it takes no"
                f" netdev configuration; remove {', '.join(fields)}",
                field=fields[0],
                claim=claim,
                request=request,
                device=device,
            )
    if config.interface.dhcp and not dhcp_supported:
        raise ConfigError(
            f"{prefix}interface.dhcp: dhcp is not supported by this driver (no DHCP client"
            " runs in the pod); give interface.addresses instead",
            field="interface.dhcp",
            claim=claim,
            request=request,
            device=device,
        )


# -- merging ------------------------------------------------------------------


def _lay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _lay(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = [*old, *value]
        else:
            out[key] = value
    return out


def _dedupe(items: Sequence[Any], key: Any) -> list[Any]:
    # Keeps the LAST occurrence of each key (the later layer wins), in its place.
    seen: set[Any] = set()
    out: list[Any] = []
    for item in reversed(items):
        k = key(item)
        if k is None:  # not an object of the expected shape: left for validation
            out.append(item)
            continue
        if k in seen:
            continue
        seen.add(k)
        out.append(item)
    out.reverse()
    return out


def _hashable(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | None) else repr(v)


def _route_key(item: Any) -> Any:
    if not isinstance(item, Mapping):
        return None
    table = item.get("table") or 0
    return (_hashable(item.get("destination")), _hashable(table))


def _neighbor_key(item: Any) -> Any:
    if not isinstance(item, Mapping):
        return None
    return _hashable(item.get("destination"))


def merge_netdev_config(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The layers of opaque parameters (DeviceClass first, claim last) merged like DraNet.

    Objects merge key by key; a scalar of a later layer overrides; lists are
    appended and then de-duplicated, the later entry winning: ``interface.addresses``
    by value, ``routes`` by destination and table, ``neighbors`` by destination
    (``rules`` are only appended). ``null`` in a later layer unsets a field.
    Nothing is validated here (that is :func:`parse_netdev_config`'s job) and no
    input is modified.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _lay(merged, layer)
    iface = merged.get("interface")
    if isinstance(iface, Mapping) and isinstance(iface.get("addresses"), list):
        iface = dict(iface)
        iface["addresses"] = _dedupe(iface["addresses"], _hashable)
        merged["interface"] = iface
    if isinstance(merged.get("routes"), list):
        merged["routes"] = _dedupe(merged["routes"], _route_key)
    if isinstance(merged.get("neighbors"), list):
        merged["neighbors"] = _dedupe(merged["neighbors"], _neighbor_key)
    return merged
