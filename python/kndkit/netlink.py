"""Typed constructors for plan steps, and typed wrappers of the native netlink calls.

Every constructor returns a plain ``dict`` in the schema of ``docs/plan-steps.md``;
:func:`apply` hands a whole plan to the Rust core in one call (the GIL is released
while it runs). Bad input is refused with :class:`kndkit.errors.InvalidArgument`
before anything is sent, by the native core.

Example::

    from kndkit import netlink as nl
    pod = NetNs.open("/run/netns/pod1")
    nl.apply([
        nl.move("eth3", pod, name="net1", mtu=9000),
        nl.addr_add("net1", "10.0.0.2/24", ns=pod),
        nl.set_up("net1", ns=pod),
        nl.route_add("default", gateway="10.0.0.1", ns=pod),
    ])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict, cast

from kndkit import _native
from kndkit._native import NetNs

__all__ = [
    "AddressRecord",
    "ApplyResult",
    "EthtoolState",
    "LinkRecord",
    "NeighbourRecord",
    "RouteRecord",
    "RuleRecord",
    "Step",
    "StepResult",
    "TcState",
    "addr_add",
    "addr_del",
    "apply",
    "delete_group",
    "delete_link",
    "dump_addresses",
    "dump_ethtool",
    "dump_links",
    "dump_neighbours",
    "dump_routes",
    "dump_rules",
    "dump_sysctl",
    "dump_tc",
    "ebpf_detach",
    "encode",
    "ethtool",
    "ipvlan",
    "link_set",
    "macvlan",
    "move",
    "neigh_add",
    "neigh_del",
    "rdma_move",
    "rename",
    "route_add",
    "route_del",
    "rule_add",
    "rule_del",
    "set_alias",
    "set_down",
    "set_gso_gro",
    "set_mac",
    "set_master",
    "set_mtu",
    "set_up",
    "sysctl",
    "veth",
    "vlan",
    "vrf",
]

log = logging.getLogger("kndkit.netlink")

Step = dict[str, Any]
"""One plan step (see ``docs/plan-steps.md``)."""

Scope = Literal["universe", "global", "site", "link", "host"] | int
Table = Literal["main", "local", "default"] | int
Family = Literal["inet", "inet6"]


class StepResult(TypedDict):
    index: int
    op: str
    ifindex: int | None


class ApplyResult(TypedDict):
    steps: int
    sendmsg: int
    results: list[StepResult]


class LinkRecord(TypedDict):
    ifindex: int
    name: str
    kind: str | None
    mac: str | None
    mtu: int
    operstate: int
    flags: int
    up: bool
    master: int | None
    link: int | None
    alias: str | None
    group: int
    gso_max_size: int | None
    gro_max_size: int | None
    gso_ipv4_max_size: int | None
    gro_ipv4_max_size: int | None
    parent_dev_name: str | None
    parent_dev_bus: str | None


class AddressRecord(TypedDict):
    ifindex: int
    family: str
    address: str
    prefixlen: int
    cidr: str
    scope: int
    flags: int
    label: str | None


class RouteRecord(TypedDict):
    family: str
    dst: str
    src: str | None
    gateway: str | None
    prefsrc: str | None
    oif: int | None
    table: int
    protocol: int
    scope: int
    type: int
    metric: int | None
    flags: int


class RuleRecord(TypedDict):
    family: str
    priority: int | None
    table: int
    action: int
    src: str | None
    dst: str | None
    iif: str | None
    oif: str | None
    fwmark: int | None
    flags: int


class NeighbourRecord(TypedDict):
    ifindex: int
    family: str
    address: str | None
    lladdr: str | None
    state: int
    flags: int


def _step(op: str, ns: NetNs | None, **kw: object) -> Step:
    d: Step = {"op": op}
    if ns is not None:
        d["ns"] = ns
    for k, v in kw.items():
        if v is not None:
            d[k] = v
    return d


def _link(ifname: str | int) -> dict[str, object]:
    return {"ifindex": ifname} if isinstance(ifname, int) else {"ifname": ifname}


# ----------------------------------------------------------------------------- links


def link_set(
    ifname: str | int,
    *,
    ns: NetNs | None = None,
    name: str | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    up: bool | None = None,
    alias: str | None = None,
    group: int | None = None,
    netns: NetNs | None = None,
    gso_max_size: int | None = None,
    gro_max_size: int | None = None,
    gso_ipv4_max_size: int | None = None,
    gro_ipv4_max_size: int | None = None,
    master: str | int | None = None,
) -> Step:
    """Any combination of link changes, carried in ONE RTM_NEWLINK.

    ``master`` enslaves the link to a bridge/bond/vrf (name or ifindex, in ``ns``);
    ``""`` or ``0`` detaches it (nomaster). ``gso_ipv4_max_size`` /
    ``gro_ipv4_max_size`` are IFLA_GSO_IPV4_MAX_SIZE / IFLA_GRO_IPV4_MAX_SIZE.
    """
    return _step(
        "link_set",
        ns,
        **_link(ifname),
        name=name,
        mtu=mtu,
        mac=mac,
        up=up,
        alias=alias,
        group=group,
        netns=netns,
        gso_max_size=gso_max_size,
        gro_max_size=gro_max_size,
        gso_ipv4_max_size=gso_ipv4_max_size,
        gro_ipv4_max_size=gro_ipv4_max_size,
        master=master,
    )


def move(
    ifname: str | int,
    netns: NetNs,
    *,
    name: str | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    gso_max_size: int | None = None,
    gro_max_size: int | None = None,
    ns: NetNs | None = None,
) -> Step:
    """Moves a link into ``netns`` (from ``ns``), renaming/configuring it in the same message."""
    return link_set(
        ifname,
        ns=ns,
        netns=netns,
        name=name,
        mtu=mtu,
        mac=mac,
        gso_max_size=gso_max_size,
        gro_max_size=gro_max_size,
    )


def rename(ifname: str | int, name: str, *, ns: NetNs | None = None) -> Step:
    return link_set(ifname, ns=ns, name=name)


def set_mtu(ifname: str | int, mtu: int, *, ns: NetNs | None = None) -> Step:
    return link_set(ifname, ns=ns, mtu=mtu)


def set_mac(ifname: str | int, mac: str, *, ns: NetNs | None = None) -> Step:
    return link_set(ifname, ns=ns, mac=mac)


def set_up(ifname: str | int, *, ns: NetNs | None = None) -> Step:
    return link_set(ifname, ns=ns, up=True)


def set_down(ifname: str | int, *, ns: NetNs | None = None) -> Step:
    return link_set(ifname, ns=ns, up=False)


def set_alias(ifname: str | int, alias: str, *, ns: NetNs | None = None) -> Step:
    """Sets the link's alias (``""`` removes it)."""
    return link_set(ifname, ns=ns, alias=alias)


def set_gso_gro(
    ifname: str | int,
    *,
    gso_max_size: int | None = None,
    gro_max_size: int | None = None,
    ns: NetNs | None = None,
) -> Step:
    return link_set(ifname, ns=ns, gso_max_size=gso_max_size, gro_max_size=gro_max_size)


def set_master(ifname: str | int, master: str | int, *, ns: NetNs | None = None) -> Step:
    """Enslaves the link to ``master`` (``""``/``0``: detaches it); undone on rollback."""
    return link_set(ifname, ns=ns, master=master)


def vrf(
    name: str,
    table: int,
    *,
    up: bool = False,
    netns: NetNs | None = None,
    ns: NetNs | None = None,
) -> Step:
    """Creates a VRF device bound to routing ``table`` (kernels without the vrf
    module refuse it with EOPNOTSUPP, reported as an unsupported link kind)."""
    return _step("vrf_add", ns, name=name, table=table, up=up, netns=netns)


def delete_link(ifname: str | int, *, ns: NetNs | None = None) -> Step:
    """RTM_DELLINK (not undoable: a failure later in the plan reports it)."""
    return _step("link_del", ns, **_link(ifname))


def delete_group(group: int, *, ns: NetNs | None = None) -> Step:
    """Deletes every link of ``group`` (IFLA_GROUP) in one request."""
    return _step("link_del_group", ns, group=group)


def veth(
    name: str,
    peer_name: str,
    *,
    peer_ns: NetNs | None = None,
    netns: NetNs | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    peer_mac: str | None = None,
    group: int | None = None,
    peer_group: int | None = None,
    up: bool | None = None,
    ns: NetNs | None = None,
) -> Step:
    """A veth pair; ``peer_ns`` creates the peer directly inside that namespace."""
    return _step(
        "veth_add",
        ns,
        name=name,
        peer_name=peer_name,
        peer_ns=peer_ns,
        netns=netns,
        mtu=mtu,
        mac=mac,
        peer_mac=peer_mac,
        group=group,
        peer_group=peer_group,
        up=up,
    )


def macvlan(
    name: str,
    link: str,
    *,
    mode: Literal["bridge", "private", "vepa", "passthru", "source"] = "bridge",
    netns: NetNs | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    group: int | None = None,
    up: bool | None = None,
    ns: NetNs | None = None,
) -> Step:
    return _step(
        "macvlan_add", ns, name=name, link=link, mode=mode, netns=netns, mtu=mtu, mac=mac,
        group=group, up=up,
    )  # fmt: skip


def ipvlan(
    name: str,
    link: str,
    *,
    mode: Literal["l2", "l3", "l3s"] = "l2",
    flags: Literal["bridge", "private", "vepa"] = "bridge",
    netns: NetNs | None = None,
    mtu: int | None = None,
    group: int | None = None,
    up: bool | None = None,
    ns: NetNs | None = None,
) -> Step:
    return _step(
        "ipvlan_add", ns, name=name, link=link, mode=mode, flags=flags, netns=netns, mtu=mtu,
        group=group, up=up,
    )  # fmt: skip


def vlan(
    name: str,
    link: str,
    vlan_id: int,
    *,
    protocol: Literal["802.1Q", "802.1ad"] = "802.1Q",
    netns: NetNs | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    group: int | None = None,
    up: bool | None = None,
    ns: NetNs | None = None,
) -> Step:
    return _step(
        "vlan_add", ns, name=name, link=link, vlan_id=vlan_id, protocol=protocol, netns=netns,
        mtu=mtu, mac=mac, group=group, up=up,
    )  # fmt: skip


# ----------------------------------------------------------------------------- addresses, routes


AddrFlag = Literal["nodad", "noprefixroute", "home", "mngtmpaddr"]


def addr_add(
    ifname: str | int,
    address: str,
    *,
    flags: Iterable[AddrFlag] = (),
    scope: Scope | None = None,
    ns: NetNs | None = None,
) -> Step:
    """Adds ``address`` ("10.0.0.2/24", "fd00::2/64")."""
    return _step(
        "addr_add", ns, **_link(ifname), address=address, flags=list(flags) or None, scope=scope
    )


def addr_del(
    ifname: str | int, address: str, *, scope: Scope | None = None, ns: NetNs | None = None
) -> Step:
    return _step("addr_del", ns, **_link(ifname), address=address, scope=scope)


def _route(op: str, dst: str, ifname: str | int | None, ns: NetNs | None, **kw: object) -> Step:
    link = _link(ifname) if ifname is not None else {}
    return _step(op, ns, dst=dst, **kw, **link)


def route_add(
    dst: str,
    *,
    gateway: str | None = None,
    ifname: str | int | None = None,
    src: str | None = None,
    scope: Scope | None = None,
    table: Table | None = None,
    metric: int | None = None,
    protocol: Literal["boot", "static"] | int | None = None,
    family: Family | None = None,
    ns: NetNs | None = None,
) -> Step:
    """A route to ``dst`` (a CIDR or ``"default"``)."""
    return _route(
        "route_add", dst, ifname, ns, gateway=gateway, src=src, scope=scope, table=table,
        metric=metric, protocol=protocol, family=family,
    )  # fmt: skip


def route_del(
    dst: str,
    *,
    gateway: str | None = None,
    ifname: str | int | None = None,
    src: str | None = None,
    scope: Scope | None = None,
    table: Table | None = None,
    metric: int | None = None,
    protocol: Literal["boot", "static"] | int | None = None,
    family: Family | None = None,
    ns: NetNs | None = None,
) -> Step:
    return _route(
        "route_del", dst, ifname, ns, gateway=gateway, src=src, scope=scope, table=table,
        metric=metric, protocol=protocol, family=family,
    )  # fmt: skip


def rule_add(
    *,
    family: Family | None = None,
    priority: int | None = None,
    table: Table | None = None,
    src: str | None = None,
    dst: str | None = None,
    iif: str | None = None,
    oif: str | None = None,
    fwmark: int | None = None,
    ns: NetNs | None = None,
) -> Step:
    """A policy rule (lookup ``table``, default main)."""
    return _step(
        "rule_add", ns, family=family, priority=priority, table=table, src=src, dst=dst, iif=iif,
        oif=oif, fwmark=fwmark,
    )  # fmt: skip


def rule_del(
    *,
    family: Family | None = None,
    priority: int | None = None,
    table: Table | None = None,
    src: str | None = None,
    dst: str | None = None,
    iif: str | None = None,
    oif: str | None = None,
    fwmark: int | None = None,
    ns: NetNs | None = None,
) -> Step:
    return _step(
        "rule_del", ns, family=family, priority=priority, table=table, src=src, dst=dst, iif=iif,
        oif=oif, fwmark=fwmark,
    )  # fmt: skip


NudState = Literal["permanent", "reachable", "stale", "noarp"]


def neigh_add(
    ifname: str | int,
    address: str,
    lladdr: str,
    *,
    state: NudState = "permanent",
    ns: NetNs | None = None,
) -> Step:
    return _step("neigh_add", ns, **_link(ifname), address=address, lladdr=lladdr, state=state)


def neigh_del(
    ifname: str | int, address: str, *, lladdr: str | None = None, ns: NetNs | None = None
) -> Step:
    """Deletes a neighbour entry (give ``lladdr`` so a rollback can restore it)."""
    return _step("neigh_del", ns, **_link(ifname), address=address, lladdr=lladdr)


# ----------------------------------------------------------------------------- beyond rtnetlink


def sysctl(path: str, value: str | int, *, ns: NetNs | None = None) -> Step:
    """Writes ``value`` to ``/proc/sys/<path>`` inside ``ns``.

    ``path`` is relative to ``/proc/sys`` and must start with ``net/`` (e.g.
    ``net/ipv4/conf/net1/arp_ignore``). The write happens from a thread that
    entered ``ns``; the previous value is written back on rollback.
    """
    return _step("sysctl", ns, path=path, value=str(value))


def ethtool(
    ifname: str | int,
    *,
    features: Mapping[str, bool] | None = None,
    private_flags: Mapping[str, bool] | None = None,
    ns: NetNs | None = None,
) -> Step:
    """Turns ethtool features (kernel names such as ``rx-checksum``,
    ``tx-checksum-ip-generic``) and driver private flags on or off, over ethtool
    generic netlink. Unknown feature names are refused before anything is sent,
    a feature the device cannot change (``fixed``) when the step runs; previous
    values come back on rollback."""
    return _step(
        "ethtool",
        ns,
        **_link(ifname),
        features=dict(features) if features else None,
        private_flags=dict(private_flags) if private_flags else None,
    )


def rdma_move(device: str, netns: NetNs, *, ns: NetNs | None = None) -> Step:
    """Moves RDMA device ``device`` (as named in ``ns``) into ``netns`` (RDMA
    netlink, exclusive netns mode). Checked before anything of the plan is sent:
    no RDMA on the node raises :class:`kndkit.errors.NotAvailable` naming the
    device. Moved back on rollback."""
    return _step("rdma_move", ns, device=device, netns=netns)


def ebpf_detach(ifname: str | int, *, ns: NetNs | None = None) -> Step:
    """Removes the link's tc filters (deletes its clsact/ingress qdisc) and
    detaches its tcx programs. Not undoable: a later failure reports it."""
    return _step("ebpf_detach", ns, **_link(ifname))


# ----------------------------------------------------------------------------- execution, dumps


def apply(
    steps: Sequence[Mapping[str, Any]], *, rollback: bool = True, recover_partial: bool = False
) -> ApplyResult:
    """Runs the plan in the Rust core; see :func:`kndkit._native.apply`.

    ``recover_partial``: the rollback also undoes what the kernel applied of the
    refused ``link_set`` itself (the kernel moves a link before it refuses a new
    name that is taken in the target namespace)."""
    log.debug("applying %d netlink step(s)", len(steps))
    result = cast(
        ApplyResult, _native.apply(steps, rollback=rollback, recover_partial=recover_partial)
    )
    log.debug("applied %d step(s) in %d sendmsg", result["steps"], result["sendmsg"])
    return result


def encode(steps: Sequence[Mapping[str, Any]], *, seq: int = 1) -> list[bytes]:
    """The netlink messages :func:`apply` would send (one per step)."""
    return _native.encode(steps, seq=seq)


def dump_links(ns: NetNs | None = None) -> list[LinkRecord]:
    return cast(list[LinkRecord], _native.dump_links(ns))


def dump_addresses(ns: NetNs | None = None) -> list[AddressRecord]:
    return cast(list[AddressRecord], _native.dump_addresses(ns))


def dump_routes(ns: NetNs | None = None, *, table: int | None = None) -> list[RouteRecord]:
    return cast(list[RouteRecord], _native.dump_routes(ns, table=table))


def dump_rules(ns: NetNs | None = None) -> list[RuleRecord]:
    return cast(list[RuleRecord], _native.dump_rules(ns))


def dump_neighbours(ns: NetNs | None = None) -> list[NeighbourRecord]:
    return cast(list[NeighbourRecord], _native.dump_neighbours(ns))


class EthtoolState(TypedDict):
    features: dict[str, bool]
    private_flags: dict[str, bool]
    fixed: list[str]


class TcState(TypedDict):
    filters: list[str]
    tcx: list[str]
    ebpf: bool


def dump_ethtool(ifname: str, ns: NetNs | None = None) -> EthtoolState:
    """Active features, private flags and the names of fixed features of ``ifname``."""
    return cast(EthtoolState, _native.dump_ethtool(ifname, ns))


def dump_sysctl(path: str, ns: NetNs | None = None) -> str:
    """The value of ``/proc/sys/<path>`` in ``ns`` (no trailing newline)."""
    return _native.dump_sysctl(path, ns)


def dump_tc(ifname: str, ns: NetNs | None = None) -> TcState:
    """tc filters (``"bpf:<name>"`` for bpf ones), tcx program names, and whether
    any eBPF program is attached to ``ifname``."""
    return cast(TcState, _native.dump_tc(ifname, ns))
