"""Composable plan steps: small parts that turn a device's configuration into plan fields.

A driver lists them in ``NetworkDriver.steps``; at prepare the framework calls
each one's ``apply(plan, config, device, ctx)`` in order, feeding the plan each
returns to the next (contract of :class:`kndkit.driver.PlanStep`). A step only
computes data: nothing is changed on the node until the pod's plan is attached.

``config`` is a :class:`kndkit.config.NetdevConfig` (a raw mapping is validated
into one; ``None`` means an empty configuration). Steps that copy the host's
state (addresses, routes, neighbours) do so only for ``kind="move"`` plans: the
link leaves the host, so what it carried there goes with it into the pod (and
:func:`kndkit.plan.detach` puts it back). They take the host snapshot from
``plan.host`` or, when the plan has none yet, from a snapshot taken there and
then (:meth:`kndkit.plan.HostState.capture`); :class:`HostSnapshot`, last,
stores the snapshot detach restores.

The order matters where one step reads what another wrote; :data:`NETDEV_STEPS`
is the order DraNet applies its configuration in::

    Interface, Addresses, Routes, Rules, Neighbors, ArpSysctls, Offload,
    Ethtool, Vrf, Ebpf, HostSnapshot

(``ArpSysctls`` names the pod-side interface, so it comes after ``Interface``;
``Vrf`` moves the routes into the VRF's table, so it comes after ``Routes``.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kndkit.config import NetdevConfig, parse_netdev_config
from kndkit.errors import InvalidArgument
from kndkit.k8s.errors import ConfigError
from kndkit.plan import HostState, InterfacePlan, Neighbor, Route, Rule
from kndkit.plan import Vrf as VrfPlan

if TYPE_CHECKING:
    from kndkit.driver import PlanContext, PlanStep
    from kndkit.sources import NodeDevice

__all__ = [
    "NETDEV_STEPS",
    "Addresses",
    "ArpSysctls",
    "Ebpf",
    "Ethtool",
    "HostSnapshot",
    "Interface",
    "Neighbors",
    "Offload",
    "Routes",
    "Rules",
    "Vrf",
    "netdev_config",
    "pf_mtu",
]

log = logging.getLogger("kndkit.steps")

_MAIN_TABLE = 254
_RESERVED_TABLES = frozenset((0, 253, 254, 255))
_FR_ACT_TO_TBL = 1


def netdev_config(config: Any) -> NetdevConfig:
    """``config`` as a :class:`NetdevConfig`: itself, validated from a mapping, or
    an empty one for ``None``. Anything else is an :class:`InvalidArgument`."""
    if isinstance(config, NetdevConfig):
        return config
    if config is None:
        return NetdevConfig()
    if isinstance(config, Mapping):
        return parse_netdev_config(config)
    raise InvalidArgument(
        "plan steps expect a NetdevConfig, a mapping or None as config,"
        f" got {type(config).__name__}"
    )


def _table(table: int | None) -> int:
    return _MAIN_TABLE if table in (None, 0) else int(table)


def _route_key(r: Route) -> tuple[str, int]:
    # "default" (how dumps name it) and 0.0.0.0/0 or ::/0 are one destination.
    dst = r.destination
    if dst == "default":
        dst = "::/0" if r.family == "inet6" else "0.0.0.0/0"
    return dst, _table(r.table)


def _host_state(plan: InterfacePlan, ctx: PlanContext) -> HostState | None:
    # The host snapshot of a moved link: the plan's, else one taken now (not stored:
    # HostSnapshot stores the final one, recording what the whole plan changes).
    if plan.kind != "move" or not plan.host_ifname:
        return None
    if plan.host is not None:
        return plan.host
    return HostState.capture(plan.host_ifname, ctx.host_ns)


def _who(ctx: PlanContext, device: NodeDevice) -> dict[str, str]:
    claim = getattr(ctx, "claim", None)
    label = f"{claim.namespace}/{claim.name}" if claim is not None else ""
    allocated = getattr(ctx, "allocated", None)
    request = allocated.request if allocated is not None else ""
    return {"claim": label, "request": request, "device": device.name}


def pf_mtu(physfn: str, sysfs_root: str | os.PathLike[str] = "/sys") -> int | None:
    """MTU of the physical function at PCI address ``physfn`` (read from its netdev
    in sysfs), or ``None`` when it has no readable netdev."""
    net = Path(sysfs_root) / "bus" / "pci" / "devices" / physfn / "net"
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return None
    for name in names:
        try:
            return int((net / name / "mtu").read_text().strip())
        except (OSError, ValueError):
            continue
    return None


class _Step:
    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Interface(_Step):
    """The link's name, MTU and MAC in the pod (``interface.name/mtu/hardwareAddr``).

    The MTU of an SR-IOV virtual function may not exceed its physical
    function's (the PF's MTU is read from sysfs under ``sysfs_root``, by default
    the driver's ``options.sysfs_root``): a larger one is a
    :class:`~kndkit.k8s.errors.ConfigError` naming ``interface.mtu``.
    """

    def __init__(self, *, sysfs_root: str | None = None) -> None:
        self.sysfs_root = sysfs_root

    def __repr__(self) -> str:
        return "Interface()" if self.sysfs_root is None else f"Interface({self.sysfs_root!r})"

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        iface = netdev_config(config).interface
        changes: dict[str, Any] = {}
        if iface.name:
            changes["name"] = iface.name
        if iface.mtu is not None:
            physfn = device.netdev.physfn if device.netdev is not None else None
            if physfn:
                root = self.sysfs_root
                if root is None:
                    options = getattr(getattr(ctx, "driver", None), "options", None)
                    root = getattr(options, "sysfs_root", "/sys")
                limit = pf_mtu(physfn, root)
                if limit is not None and iface.mtu > limit:
                    raise ConfigError(
                        f"device {device.name}: interface.mtu {iface.mtu} is above the MTU"
                        f" {limit} of its SR-IOV physical function {physfn}",
                        field="interface.mtu",
                        **_who(ctx, device),
                    )
            changes["mtu"] = iface.mtu
        if iface.hardware_addr is not None:
            changes["mac"] = iface.hardware_addr
        return plan.with_(**changes) if changes else plan


class Addresses(_Step):
    """The pod-side addresses: ``interface.addresses`` when given, else (for a
    moved link) the host interface's permanent global addresses."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        iface = netdev_config(config).interface
        if iface.addresses:
            return plan.with_(addresses=tuple(iface.addresses))
        if plan.addresses:
            return plan
        host = _host_state(plan, ctx)
        if host is not None and host.addresses:
            return plan.with_(addresses=tuple(host.addresses))
        return plan


def _route(r: Any) -> Route:
    return Route(
        destination=r.destination,
        gateway=r.gateway,
        source=r.source,
        scope=r.scope,
        table=r.table or None,
    )


def _onlink_networks(
    plan: InterfacePlan, configured: Sequence[Route]
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Networks a gateway may sit on: the plan's addresses' subnets and the
    destinations of link-scope routes (host-copied or configured)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        ipaddress.ip_interface(a).network for a in plan.addresses
    ]
    for r in (*plan.routes, *configured):
        if r.scope == "link" and r.destination != "default":
            nets.append(ipaddress.ip_network(r.destination, strict=False))
    return nets


def _reachable(
    gateway: str, onlink: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    gw = ipaddress.ip_address(gateway)
    if gw.version == 6 and gw.is_link_local:
        return True
    return any(gw.version == n.version and gw in n for n in onlink)


class Routes(_Step):
    """The pod's routes through the link: the moved link's host routes, then
    ``routes`` (a configured route replaces a host route to the same
    destination in the same table)."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        configured = [_route(r) for r in netdev_config(config).routes]
        state = _host_state(plan, ctx)
        host = list(state.routes) if state is not None else []
        # Gateways are checked against the pod's addresses when the plan has
        # any (run Addresses first); a plan without addresses is not judged.
        onlink = _onlink_networks(plan, configured) if plan.addresses else None
        for i, r in enumerate(configured):
            if onlink is not None and r.gateway and not _reachable(r.gateway, onlink):
                raise ConfigError(
                    f"route to {r.destination}: gateway {r.gateway} is not on a network of"
                    f" the interface (addresses: {', '.join(plan.addresses) or 'none'})",
                    field=f"routes[{i}].gateway",
                )
        # A host route whose gateway the pod's addresses do not reach (the claim
        # set other addresses) would be refused by the kernel at pod start.
        kept = [r for r in host if onlink is None or not r.gateway or _reachable(r.gateway, onlink)]
        for r in host:
            if r not in kept:
                log.info(
                    "device %s: host route to %s via %s not copied: the pod's addresses"
                    " do not reach the gateway",
                    device.name,
                    r.destination,
                    r.gateway,
                )
        host = kept
        taken = {_route_key(r) for r in configured}
        routes = [
            *(r for r in plan.routes if _route_key(r) not in taken),
            *(r for r in host if _route_key(r) not in taken),
            *configured,
        ]
        unique = list(dict.fromkeys(routes))
        return plan.with_(routes=tuple(unique)) if tuple(unique) != plan.routes else plan


class Rules(_Step):
    """The pod's policy rules: the host's rules that look up the tables of the
    plan's routes (all but main/local/default; only rules that select on source
    and destination, as :class:`kndkit.plan.Rule` carries), then ``rules``.

    Run it after :class:`Routes`.
    """

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        cfg = netdev_config(config)
        rules = list(plan.rules)
        tables = {_table(r.table) for r in plan.routes} - _RESERVED_TABLES
        if tables and plan.kind == "move":
            from kndkit import netlink  # noqa: PLC0415

            for rec in netlink.dump_rules(ctx.host_ns):
                if rec["table"] not in tables or rec["action"] != _FR_ACT_TO_TBL:
                    continue
                if rec["iif"] or rec["oif"] or rec["fwmark"]:
                    log.debug("rule %s selects on iif/oif/fwmark: not copied", rec)
                    continue
                rules.append(
                    Rule(
                        table=rec["table"],
                        priority=rec["priority"],
                        source=rec["src"],
                        destination=rec["dst"],
                    )
                )
        for r in cfg.rules:
            rules.append(
                Rule(table=r.table, priority=r.priority, source=r.source, destination=r.destination)
            )
        unique = tuple(dict.fromkeys(rules))
        return plan.with_(rules=unique) if unique != plan.rules else plan


class Neighbors(_Step):
    """Permanent neighbours in the pod: the moved link's permanent host
    neighbours, then ``neighbors`` (a configured entry replaces a host entry for
    the same destination)."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        configured = [
            Neighbor(destination=n.destination, hardware_addr=n.hardware_addr)
            for n in netdev_config(config).neighbors
        ]
        state = _host_state(plan, ctx)
        host = list(state.neighbors) if state is not None else []
        taken = {n.destination for n in configured}
        merged: dict[str, Neighbor] = {}
        for n in [*plan.neighbors, *host]:
            if n.destination not in taken:
                merged.setdefault(n.destination, n)
        for n in configured:
            merged[n.destination] = n
        out = tuple(merged.values())
        return plan.with_(neighbors=out) if out != plan.neighbors else plan


class ArpSysctls(_Step):
    """``interface.arpIgnore`` / ``arpAnnounce`` as pod-side sysctls
    ``net/ipv4/conf/<name>/arp_ignore|arp_announce`` (run after :class:`Interface`,
    which settles ``<name>``)."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        iface = netdev_config(config).interface
        sysctls = dict(plan.sysctls)
        if iface.arp_ignore is not None:
            sysctls[f"net/ipv4/conf/{plan.name}/arp_ignore"] = str(iface.arp_ignore)
        if iface.arp_announce is not None:
            sysctls[f"net/ipv4/conf/{plan.name}/arp_announce"] = str(iface.arp_announce)
        return plan.with_(sysctls=sysctls) if sysctls != dict(plan.sysctls) else plan


class Offload(_Step):
    """GSO/GRO maximum sizes (BIG TCP): ``gsoMaxSize``, ``groMaxSize``,
    ``gsoIPv4MaxSize``, ``groIPv4MaxSize``, set with the move itself."""

    _FIELDS = ("gso_max_size", "gro_max_size", "gso_ipv4_max_size", "gro_ipv4_max_size")

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        iface = netdev_config(config).interface
        changes = {f: getattr(iface, f) for f in self._FIELDS if getattr(iface, f) is not None}
        return plan.with_(**changes) if changes else plan


class Ethtool(_Step):
    """``ethtool.features`` and ``ethtool.privateFlags`` (kernel names), laid
    over whatever the plan already asks for.

    For a moved link the names are checked at prepare against what the host
    link has (read with :func:`kndkit.netlink.dump_ethtool`): an unknown name,
    or a fixed feature asked to change, is a
    :class:`~kndkit.k8s.errors.ConfigError` naming it, rather than a failed pod
    start. Where the settings cannot be read the check is left to the attach.
    """

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        eth = netdev_config(config).ethtool
        if eth is None or not (eth.features or eth.private_flags):
            return plan
        if plan.kind == "move" and plan.host_ifname:
            self._check(plan.host_ifname, eth.features, eth.private_flags, device, ctx)
        return plan.with_(
            ethtool_features={**plan.ethtool_features, **eth.features},
            ethtool_private_flags={**plan.ethtool_private_flags, **eth.private_flags},
        )

    @staticmethod
    def _check(
        ifname: str,
        features: Mapping[str, bool],
        private_flags: Mapping[str, bool],
        device: NodeDevice,
        ctx: PlanContext,
    ) -> None:
        from kndkit import netlink  # noqa: PLC0415

        try:
            now = netlink.dump_ethtool(ifname, ns=ctx.host_ns)
        except Exception as e:  # no ethtool netlink here: the attach will tell
            log.debug("%s: ethtool settings not readable, names not checked: %s", ifname, e)
            return
        fixed = set(now.get("fixed") or ())
        for what, key, wanted, have in (
            ("feature", "features", features, now["features"]),
            ("private flag", "privateFlags", private_flags, now["private_flags"]),
        ):
            for name, value in wanted.items():
                field = f"ethtool.{key}[{name!r}]"
                if name not in have:
                    raise ConfigError(
                        f"device {device.name}: {field}: {ifname} has no ethtool {what} {name!r}",
                        field=field,
                        **_who(ctx, device),
                    )
                if key == "features" and name in fixed and have[name] != value:
                    state = "on" if have[name] else "off"
                    raise ConfigError(
                        f"device {device.name}: {field}: the feature is fixed {state} on {ifname}",
                        field=field,
                        **_who(ctx, device),
                    )


class Vrf(_Step):
    """``interface.vrf``: the link is enslaved to a VRF device in the pod, and
    every route of the plan goes into the VRF's table (as DraNet does). Without
    a configured table the VRF gets ``100 + host ifindex`` (skipping 253-255).
    Rules copied from the host are dropped (rules and VRF do not mix; configured
    rules are already refused by the config's validation). Run it after
    :class:`Routes` and :class:`Rules`."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        vrf = netdev_config(config).interface.vrf
        if vrf is None:
            return plan
        table = vrf.table
        if table is None:
            index = plan.host.ifindex if plan.host is not None else 0
            if not index and device.netdev is not None:
                index = device.netdev.ifindex
            table = 100 + index
            while table in _RESERVED_TABLES:
                table += 1
        routes = tuple(
            Route(
                destination=r.destination,
                gateway=r.gateway,
                source=r.source,
                scope=r.scope,
                table=table,
                metric=r.metric,
            )
            for r in plan.routes
        )
        if plan.rules:
            log.info(
                "device %s: %d host rule(s) not copied: the link goes into VRF %s",
                device.name,
                len(plan.rules),
                vrf.name,
            )
        return plan.with_(vrf=VrfPlan(name=vrf.name, table=table), routes=routes, rules=())


class Ebpf(_Step):
    """``interface.disableEbpfPrograms``: detach tc and tcx eBPF programs from the
    link once it is in the pod."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        if netdev_config(config).interface.disable_ebpf_programs:
            return plan.with_(disable_ebpf=True)
        return plan


class HostSnapshot(_Step):
    """Records the host-side state of a moved link in ``plan.host`` (what
    :func:`kndkit.plan.detach` restores), including the current values of the
    sysctls and ethtool settings the plan changes: run it last."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan:
        return plan.capture_host(ctx.host_ns)


#: DraNet's configuration as a list of steps, in the order they must run.
NETDEV_STEPS: Sequence[PlanStep] = (
    Interface(),
    Addresses(),
    Routes(),
    Rules(),
    Neighbors(),
    ArpSysctls(),
    Offload(),
    Ethtool(),
    Vrf(),
    Ebpf(),
    HostSnapshot(),
)
