"""netdev: DraNet's driver, as a kndkit driver - whole NICs moved into pods.

Each spare network interface of the node is published as one device (DraNet's
exclusions: loopback, bridges, and the default-route uplink with its bond or
bridge members; a filter, by default dropping veth pairs, which on a real node
are pods' own interfaces). A pod that gets a device gets the NIC itself, moved
into its network namespace and configured from the claim's opaque parameters,
which are DraNet's (:class:`kndkit.config.NetdevConfig`)::

    {"interface": {"name": "net1", "mtu": 9000, "addresses": ["10.0.0.2/24"]},
     "routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.1"}]}

Without ``interface.addresses`` the NIC keeps the host's addresses (and its
routes, their rules and its permanent neighbours come along); without
``interface.name`` it keeps its host name. On pod stop the NIC goes back to
the host exactly as it was. ``interface.dhcp: true`` is refused (no DHCP client
runs in the pod).

Settings (``kndkit run netdev --set key=value`` or ``--config FILE``):

============  ==================================================================
``filter``    a CEL expression over ``device`` (as in a DeviceClass selector:
              ``device.attributes["netdev.kndkit.dev"].type``, ``device.driver``)
              that a device must satisfy to be published; ``"true"`` publishes
              all. Default: drop veth. Expressions other than ``true``/``false``
              need the ``common-expression-language`` package
              (``pip install 'kndkit[cel]'``).
``profiles``  (config file only) ``{name: NetdevConfig JSON}``: a claim's
              ``profile`` names one, laid under the class and claim configuration
============  ==================================================================

Published attributes are kndkit's (:func:`kndkit.devices.netdev_device`) plus
DraNet's ``alias``, ``encapsulation``, ``ebpf``, ``tcFilterNames`` and
``tcxProgramNames`` (see :class:`DranetNetdevs`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from kndkit import netlink
from kndkit.config import (
    NetdevConfig,
    check_device_support,
    merge_netdev_config,
    parse_netdev_config,
)
from kndkit.devices import MAX_ATTRIBUTES_PER_DEVICE, MAX_STRING_ATTRIBUTE, Device
from kndkit.driver import NetworkDriver, PlanContext, run
from kndkit.errors import InvalidArgument, NotAvailable
from kndkit.k8s.errors import ConfigError
from kndkit.plan import InterfacePlan
from kndkit.sources import DiscoveryContext, Netdevs, NodeDevice
from kndkit.steps import NETDEV_STEPS

if TYPE_CHECKING:
    from kndkit.driver import DriverOptions
    from kndkit.k8s.claims import Claim

__all__ = ["DranetNetdevs", "Netdev", "compile_filter", "device_view"]

log = logging.getLogger("kndkit.examples.netdev")

_SETTINGS = ("filter", "profiles")


def _join(values: Sequence[str]) -> str:
    # Comma-joined, cut at whole names to fit a string attribute.
    out = ""
    for v in values:
        nxt = f"{out},{v}" if out else v
        if len(nxt) > MAX_STRING_ATTRIBUTE:
            break
        out = nxt
    return out


class DranetNetdevs(Netdevs):
    """:class:`~kndkit.sources.Netdevs` plus DraNet's remaining attributes:
    ``alias`` (the link's ifalias), ``encapsulation`` (``ether``,
    ``infiniband`` or ``loopback``, from the link kind and its hardware address
    length) and, from :func:`kndkit.netlink.dump_tc`, ``ebpf`` (any eBPF program
    attached) with the non-empty ``tcFilterNames`` and ``tcxProgramNames``.
    Attributes that do not fit the API's per-device limit are left out."""

    def discover(self, ctx: DiscoveryContext) -> list[NodeDevice]:
        found = super().discover(ctx)
        try:
            aliases = {rec["name"]: rec["alias"] for rec in netlink.dump_links(ctx.host_ns)}
        except Exception as e:  # attributes are extras: never stop publishing for them
            log.warning("cannot read link aliases: %s", e)
            aliases = {}
        out = []
        for item in found:
            nd = item.netdev
            if nd is None:
                out.append(item)
                continue
            extra: dict[str, bool | int | str] = {}
            if aliases.get(nd.name):
                extra["alias"] = str(aliases[nd.name])[:MAX_STRING_ATTRIBUTE]
            if nd.kind == "loopback":
                extra["encapsulation"] = "loopback"
            elif nd.mac and nd.mac.count(":") == 19:
                extra["encapsulation"] = "infiniband"
            elif nd.mac:
                extra["encapsulation"] = "ether"
            try:
                tc = netlink.dump_tc(nd.name, ns=ctx.host_ns)
            except Exception as e:  # e.g. a native core without dump_tc
                log.debug("%s: cannot read tc/tcx programs: %s", nd.name, e)
            else:
                extra["ebpf"] = bool(tc["ebpf"])
                if tc["filters"]:
                    extra["tcFilterNames"] = _join(list(dict.fromkeys(tc["filters"])))
                if tc["tcx"]:
                    extra["tcxProgramNames"] = _join(list(dict.fromkeys(tc["tcx"])))
            attrs = dict(item.device.attributes)
            for key, value in extra.items():
                if len(attrs) + len(item.device.capacity) >= MAX_ATTRIBUTES_PER_DEVICE:
                    break
                attrs.setdefault(key, value)
            out.append(dataclasses.replace(item, device=Device(item.name, attrs)))
        return out


def device_view(device: Device, driver: str) -> dict[str, Any]:
    """``device`` the way a DRA CEL selector sees it: ``{"driver": ...,
    "attributes": {domain: {name: value}}, "capacity": {domain: {name: value}}}``
    (unqualified names belong to ``driver``'s domain)."""
    attrs: dict[str, dict[str, Any]] = {driver: {}}
    for key, value in device.attributes.items():
        domain, _, name = key.rpartition("/")
        attrs.setdefault(domain or driver, {})[name] = value
    capacity: dict[str, dict[str, Any]] = {driver: {}}
    for key, value in device.capacity.items():
        domain, _, name = key.rpartition("/")
        capacity.setdefault(domain or driver, {})[name] = value
    return {"driver": driver, "attributes": attrs, "capacity": capacity}


def compile_filter(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """A CEL ``expression`` over ``device`` compiled into a predicate on a
    :func:`device_view`. A syntax error is an :class:`InvalidArgument`; without
    the CEL package, :class:`NotAvailable`. The predicate raises
    :class:`InvalidArgument` when the expression fails on a device or is not
    boolean. ``"true"`` and ``"false"`` need no CEL package."""
    if expression.strip() in ("true", "false"):
        constant = expression.strip() == "true"
        return lambda view: constant
    try:
        import cel  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise NotAvailable(
            "netdev setting filter: CEL expressions need the common-expression-language"
            " package (pip install 'kndkit[cel]')"
        ) from None
    try:
        program = cel.compile(expression)
    except ValueError as e:
        raise InvalidArgument(
            f"netdev setting filter: {expression!r} is not valid CEL: {e}"
        ) from None

    def predicate(view: Mapping[str, Any]) -> bool:
        try:
            result = program.execute({"device": dict(view)})
        except Exception as e:
            raise InvalidArgument(f"filter {expression!r} failed: {e}") from None
        if not isinstance(result, bool):
            raise InvalidArgument(f"filter {expression!r} gave {result!r}, not a boolean")
        return result

    return predicate


class Netdev(NetworkDriver):
    """Moves whole NICs into pods, configured with DraNet's per-claim parameters."""

    name: ClassVar[str] = "netdev.kndkit.dev"
    sources = (DranetNetdevs(),)
    config = NetdevConfig
    steps = NETDEV_STEPS

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        params = dict(options.params)
        unknown = sorted(set(params) - set(_SETTINGS))
        if unknown:
            raise InvalidArgument(
                f"netdev: unknown setting(s) {', '.join(unknown)} (known: {', '.join(_SETTINGS)})"
            )
        profiles = params.get("profiles") or {}
        if not isinstance(profiles, Mapping) or not all(
            isinstance(v, Mapping) for v in profiles.values()
        ):
            raise InvalidArgument("netdev setting profiles: expected {name: configuration object}")
        for pname, body in profiles.items():
            parse_netdev_config(body, request=f"profile {pname}")  # a bad profile fails at start
        self.profiles: Mapping[str, Mapping[str, Any]] = profiles
        expr = params.get("filter")
        if expr is None:
            self._filter: Callable[[Mapping[str, Any]], bool] | None = None  # drop veth
        elif not isinstance(expr, str) or not expr.strip():
            raise InvalidArgument("netdev setting filter: expected a CEL expression")
        else:
            self._filter = compile_filter(expr)

    def filter(self, device: NodeDevice) -> bool:
        view = device_view(device.device, self.driver_name)
        if self._filter is None:
            return bool(view["attributes"][self.driver_name].get("type") != "veth")
        try:
            return self._filter(view)
        except InvalidArgument as e:
            log.warning("device %s not published: %s", device.name, e)
            return False

    def merge_config(self, layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        merged = merge_netdev_config(layers)
        profile = merged.get("profile")
        if profile is None:
            return merged
        if not isinstance(profile, str) or profile not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none configured"
            raise ConfigError(
                f"profile {profile!r} is not defined (known: {known})", field="profile"
            )
        return merge_netdev_config([self.profiles[profile], merged])

    def parse_config(self, raw: Mapping[str, Any], *, claim: Claim, request: str) -> NetdevConfig:
        return parse_netdev_config(raw, claim=f"{claim.namespace}/{claim.name}", request=request)

    def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
        claim = f"{ctx.claim.namespace}/{ctx.claim.name}"
        check_device_support(
            config,
            has_netdev=device.ifname is not None,
            claim=claim,
            request=ctx.allocated.request,
            device=device.name,
        )
        if device.ifname is None:
            raise ConfigError(
                f"claim {claim}: device {device.name} has no network interface"
                " (the netdev driver moves NICs only)",
                claim=claim,
                request=ctx.allocated.request,
                device=device.name,
            )
        # DraNet keeps the host name unless the claim names the interface.
        return InterfacePlan.move(device.name, device.ifname, name=device.ifname)


if __name__ == "__main__":
    run(Netdev)
