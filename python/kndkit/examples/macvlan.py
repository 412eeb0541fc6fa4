"""macvlan: one shared NIC serves many pods, with addresses from node-local IPAM.

The driver publishes ``slots`` devices named ``<parent>-slot-<i>`` for one parent
NIC. A pod that gets a slot gets its own macvlan (or ipvlan) sub-interface of the
parent, created directly inside the pod's network namespace in the one native
call of RunPodSandbox, with an address leased from a configured range (no
address is ever handed out twice; the lease is freed on unprepare) and a default
route through the gateway. On StopPodSandbox the sub-interface is deleted.

Settings (``kndkit run macvlan --set key=value`` or ``--config FILE``):

==========  ===============================================================
``parent``  the host interface the sub-interfaces hang off (required)
``mode``    ``bridge`` (default), ``private``, ``vepa``, ``passthru``, or
            ``ipvlan-l2``, ``ipvlan-l3``, ``ipvlan-l3s`` for ipvlan
``ranges``  address ranges: CIDRs or ``START-END[/PREFIX]``, comma-separated
            (``range`` is accepted too); none: pods get addresses only from
            their claim's config
``gateway`` gateway address, one per family, comma-separated
``routes``  destinations routed through the gateway (default ``default``
            when a gateway is set; ``none`` for no route)
``metric``  route metric base (default 100): slot ``i`` routes with metric
            ``metric + i``, so the pod's own default route (CNI, metric 0)
            stays first and two slots in one pod do not clash
``exclude`` addresses or CIDRs never handed out, comma-separated
``slots``   how many devices to publish (default 32)
==========  ===============================================================

Per-claim config (opaque parameters, validated strictly; unknown fields fail)::

    {"name": "net1", "mtu": 1400, "addresses": ["10.0.0.9/24"]}

``addresses`` overrides IPAM for that claim (nothing is leased).

ipvlan: the driver probes the kernel when it starts (in a throwaway network
namespace, nothing on the host is touched) and refuses to start with
:class:`~kndkit.errors.NotAvailable` when ipvlan is missing, rather than
failing every pod start later. The kernel of kndkit's CI machines has no ipvlan.

A slot device is a claim for one pod: a claim reserved for several pods is
refused at prepare (they would share one address).
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

from kndkit import netlink
from kndkit._native import NetNs
from kndkit.devices import STANDARD_DOMAIN, Device, device_name
from kndkit.driver import NetworkDriver, PlanContext, run
from kndkit.errors import InvalidArgument, KndError, NetlinkError, NotAvailable
from kndkit.ipam import Ipam, Lease
from kndkit.k8s.errors import ConfigError
from kndkit.plan import InterfacePlan, Route
from kndkit.sources import DiscoveryContext, NodeDevice

if TYPE_CHECKING:
    from kndkit.driver import DriverOptions
    from kndkit.state import ClaimRecord

__all__ = ["Macvlan", "MacvlanConfig", "MacvlanSettings", "MacvlanSlots", "ipvlan_supported"]

log = logging.getLogger("kndkit.examples.macvlan")

MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
IPVLAN_MODES = {"ipvlan-l2": "l2", "ipvlan-l3": "l3", "ipvlan-l3s": "l3s"}
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


# --------------------------------------------------------------------------- settings


def _as_list(key: str, value: Any) -> list[str]:
    """A comma-separated string or a list of strings, as a list of non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise InvalidArgument(
        f"macvlan setting {key}: expected a string or a list of strings, got {value!r}"
    )


def _int_setting(key: str, value: Any, lo: int, hi: int) -> int:
    """An integer setting (an int, or a string of one) within ``lo..hi``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        n = int(value)
        if str(n) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidArgument(f"macvlan setting {key}: {value!r} is not an integer") from None
    if not lo <= n <= hi:
        raise InvalidArgument(f"macvlan setting {key}: {n} is not in {lo}..{hi}")
    return n


@dataclass(frozen=True)
class MacvlanSettings:
    """The driver's settings, parsed from ``DriverOptions.params``."""

    parent: str
    mode: str = "bridge"
    ranges: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    slots: int = 32
    metric: int = 100

    @property
    def kind(self) -> str:
        """``"macvlan"`` or ``"ipvlan"``."""
        return "ipvlan" if self.mode in IPVLAN_MODES else "macvlan"

    @property
    def link_mode(self) -> str:
        """The mode as the kernel names it (``bridge``, ``l2``...)."""
        return IPVLAN_MODES.get(self.mode, self.mode)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MacvlanSettings:
        """Parse and check ``params``; :class:`InvalidArgument` names the bad setting."""
        known = {
            *("parent", "mode", "ranges", "range", "gateway", "routes", "exclude", "slots"),
            "metric",
        }
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidArgument(
                f"macvlan: unknown setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        parent = params.get("parent")
        if not isinstance(parent, str) or not _IFNAME.match(parent):
            raise InvalidArgument(
                f"macvlan setting parent: {parent!r} is not an interface name "
                "(set it: --set parent=eth1)"
            )
        mode = params.get("mode", "bridge")
        if mode not in MACVLAN_MODES and mode not in IPVLAN_MODES:
            raise InvalidArgument(
                f"macvlan setting mode: {mode!r} is not one of "
                f"{', '.join([*MACVLAN_MODES, *IPVLAN_MODES])}"
            )
        if "range" in params and "ranges" in params:
            raise InvalidArgument("macvlan settings range and ranges: give one of them")
        ranges = _as_list("ranges", params.get("ranges", params.get("range")))
        gateways = _as_list("gateway", params.get("gateway"))
        raw_routes = params.get("routes")
        if raw_routes is None:
            routes = ["default"] if gateways else []
        else:
            routes = [r for r in _as_list("routes", raw_routes) if r != "none"]
        for r in routes:
            if r != "default":
                try:
                    ipaddress.ip_network(r, strict=True)
                except ValueError as e:
                    raise InvalidArgument(f"macvlan setting routes: {r!r}: {e}") from None
        if routes and not gateways:
            raise InvalidArgument(
                "macvlan setting routes: routes go through a gateway; set gateway"
            )
        slots = _int_setting("slots", params.get("slots", 32), 1, 4096)
        metric = _int_setting("metric", params.get("metric", 100), 0, 2**31 - 1 - slots)
        if mode == "passthru" and slots != 1:
            raise InvalidArgument(
                "macvlan setting mode: passthru allows one sub-interface per parent; set slots=1"
            )
        return cls(
            parent=parent,
            mode=str(mode),
            ranges=tuple(ranges),
            gateways=tuple(gateways),
            routes=tuple(routes),
            exclude=tuple(_as_list("exclude", params.get("exclude"))),
            slots=slots,
            metric=metric,
        )


# --------------------------------------------------------------------------- config


class MacvlanConfig(BaseModel):
    """A claim's opaque parameters for one slot (all optional; unknown fields fail)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: str | None = None
    """The interface name inside the pod (default ``net1``, ``net2``... in the
    order of the claim's devices)."""
    mtu: int | None = None
    """MTU of the sub-interface (68..65535; at most the parent's, the kernel checks)."""
    addresses: list[str] | None = None
    """CIDRs to use instead of an IPAM lease."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not _IFNAME.match(v) or v in (".", "..")):
            raise ValueError("at most 15 characters of A-Z a-z 0-9 - _ . (not '.' or '..')")
        return v

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int | None) -> int | None:
        if v is not None and not 68 <= v <= 65535:
            raise ValueError("must be in 68..65535")
        return v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for a in v:
            if "/" not in a:
                raise ValueError(f"{a!r} is not a CIDR (10.0.0.2/24)")
            try:
                ipaddress.ip_interface(a)
            except ValueError:
                raise ValueError(f"{a!r} is not a CIDR (10.0.0.2/24)") from None
        if len(set(v)) != len(v):
            raise ValueError("an address is listed twice")
        return v


# --------------------------------------------------------------------------- ipvlan probe


def ipvlan_supported() -> tuple[bool, str]:
    """Whether this kernel creates ipvlan links, and the kernel's answer if not.

    Runs on a throwaway thread that enters a new, empty network namespace of its
    own (``unshare(CLONE_NEWNET)`` affects only that thread), creates a veth pair
    and an ipvlan on it there, and exits: the namespace and its links vanish with
    it. Nothing outside it is touched.
    """
    result: dict[str, Any] = {"ok": False, "why": "probe did not run"}

    def probe() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            result["why"] = f"cannot create a probe namespace: {os.strerror(err)}"
            return
        ns = NetNs.current()
        try:
            netlink.apply(
                [
                    netlink.veth("kp0", "kp1", ns=ns),
                    netlink.ipvlan("kp2", "kp0", ns=ns),
                ]
            )
            result.update(ok=True, why="")
        except NetlinkError as e:
            result["why"] = e.kernel_message or e.errno_name or str(e)
        except KndError as e:
            result["why"] = f"probe failed: {e}"
        finally:
            ns.close()

    t = threading.Thread(target=probe, name="kndkit-ipvlan-probe")
    t.start()
    t.join()
    return bool(result["ok"]), str(result["why"])


# --------------------------------------------------------------------------- devices


class MacvlanSlots:
    """A :class:`~kndkit.sources.DeviceSource`: ``slots`` devices on the parent NIC.

    Each device carries the parent's name (``parent``), the mode, its slot number
    and the parent's ``numaNode``/``pcieRoot`` (for alignment with GPUs). When
    the parent is missing, nothing is published (and a warning is logged).
    """

    def discover(self, ctx: DiscoveryContext) -> list[NodeDevice]:
        settings = MacvlanSettings.from_params(ctx.options.params)
        parent = next((nd for nd in ctx.discovery.netdevs if nd.name == settings.parent), None)
        if parent is None:
            log.warning("macvlan parent %s not found: no devices published", settings.parent)
            return []
        base = device_name(settings.parent)[:48]
        out = []
        for i in range(settings.slots):
            attrs: dict[str, bool | int | str] = {
                "parent": settings.parent,
                "mode": settings.mode,
                "type": settings.kind,
                "slot": i,
                "virtual": True,
            }
            if parent.numa_node is not None:
                attrs["numaNode"] = parent.numa_node
                attrs[f"{STANDARD_DOMAIN}/numaNode"] = parent.numa_node
            if parent.pcie_root:
                attrs[f"{STANDARD_DOMAIN}/pcieRoot"] = parent.pcie_root
            out.append(NodeDevice(Device(f"{base}-slot-{i}", attrs), netdev=parent))
        return out


# --------------------------------------------------------------------------- the driver


class Macvlan(NetworkDriver):
    """Sub-interfaces of one shared parent NIC, with node-local IPAM."""

    name = "macvlan.kndkit.dev"
    sources = (MacvlanSlots(),)
    config = MacvlanConfig

    def __init__(self, options: DriverOptions) -> None:
        # settings first: a bad one fails before the framework opens anything
        self.settings = MacvlanSettings.from_params(options.params)
        if self.settings.gateways and not self.settings.ranges:
            raise InvalidArgument("macvlan setting gateway: needs ranges to lease addresses from")
        if self.settings.kind == "ipvlan":
            ok, why = ipvlan_supported()
            if not ok:
                raise NotAvailable(
                    f"macvlan driver: mode {self.settings.mode} needs ipvlan, which this kernel "
                    f"refuses ({why}); use a macvlan mode (bridge, private, vepa)"
                )
        super().__init__(options)
        self.ipam: Ipam | None = None
        self._leases_checked = False
        if self.settings.ranges:
            try:
                self.ipam = Ipam(
                    os.path.join(self.state_dir, "ipam.sqlite"),
                    self.settings.ranges,
                    gateway=self.settings.gateways,
                    exclude=self.settings.exclude,
                )
            except BaseException:
                if self.host_ns is not None:
                    self.host_ns.close()
                raise

    def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
        """A sub-interface of the parent with a leased address and the gateway routes."""
        cfg = (
            config
            if isinstance(config, MacvlanConfig)
            else MacvlanConfig.model_validate(config or {})
        )
        claim = ctx.claim
        if len(claim.pods) > 1:
            raise ConfigError(
                f"claim {claim.namespace}/{claim.name} is reserved for {len(claim.pods)} pods; "
                "a macvlan slot serves one pod (its address would be shared)",
                claim=f"{claim.namespace}/{claim.name}",
                device=device.name,
            )
        parent_mtu = device.netdev.mtu if device.netdev is not None else None
        if cfg.mtu is not None and parent_mtu is not None and cfg.mtu > parent_mtu:
            raise ConfigError(
                f"claim {claim.namespace}/{claim.name}, device {device.name}: mtu {cfg.mtu} is "
                f"above the MTU of the parent {self.settings.parent} ({parent_mtu})",
                field="mtu",
                claim=f"{claim.namespace}/{claim.name}",
                device=device.name,
            )
        lease: Lease | None = None
        if cfg.addresses is not None:
            addresses = tuple(cfg.addresses)
        elif self.ipam is not None:
            lease = self.ipam.allocate(f"{claim.uid}/{device.name}")
            addresses = lease.addresses
        else:
            addresses = ()
        slot = device.device.attributes.get("slot", 0)
        routes = self._routes(
            addresses, self.settings.metric + (slot if isinstance(slot, int) else 0)
        )
        fields: dict[str, Any] = {
            "name": cfg.name or self.default_name(ctx),
            "mtu": cfg.mtu,
            "addresses": addresses,
            "routes": routes,
            "extra": {"ipam": lease.to_json()} if lease is not None else {},
        }
        s = self.settings
        if s.kind == "macvlan":
            return InterfacePlan.macvlan(device.name, s.parent, mode=s.link_mode, **fields)
        return InterfacePlan(
            device=device.name, kind="ipvlan", host_ifname=s.parent, mode=s.link_mode, **fields
        )

    @staticmethod
    def default_name(ctx: PlanContext) -> str:
        """``net1``, ``net2``... by the device's place among the claim's devices.

        A pod with several claims of this driver should name its interfaces in
        the claims' config (``"name"``): each claim starts at ``net1``, and the
        prepare of the second is refused (a ConfigError naming both devices).
        """
        devices = list(ctx.claim.devices)
        index = devices.index(ctx.allocated) if ctx.allocated in devices else 0
        return f"net{index + 1}"

    def _routes(self, addresses: Sequence[str], metric: int) -> tuple[Route, ...]:
        families = {ipaddress.ip_interface(a).version for a in addresses}
        out = []
        for gw in self.settings.gateways:
            fam = ipaddress.ip_address(gw).version
            if fam not in families:
                continue
            for route in self.settings.routes:
                if route == "default":
                    dst = "0.0.0.0/0" if fam == 4 else "::/0"
                elif ipaddress.ip_network(route).version == fam:
                    dst = route
                else:
                    continue
                out.append(Route(destination=dst, gateway=gw, metric=metric))
        return tuple(out)

    async def release(self, plans: Sequence[InterfacePlan], record: ClaimRecord) -> None:
        """Free every lease of the claim: on unprepare, and after a failed prepare
        (the framework calls it with the plans made so far). By the claim's uid,
        so a lease whose plan never reached the store is freed too."""
        if self.ipam is not None:
            await asyncio.to_thread(self.ipam.release_prefix, f"{record.uid}/")

    async def rescan(self) -> list[NodeDevice]:
        """The framework's rescan; the first one after the claim store was replayed
        also frees the leases of claims the store no longer knows (a claim whose
        prepare crashed and that was then deleted without an unprepare)."""
        if not self._leases_checked and self.ipam is not None and self.claims is not None:
            self._leases_checked = True
            await asyncio.to_thread(self.release_orphaned_leases)
        return await super().rescan()

    def release_orphaned_leases(self) -> list[Lease]:
        """Free every lease whose claim has no record in the claim store; return them.

        The leases are read before the store: a prepare writes its claim record
        before it allocates, so a lease seen here whose claim is missing from the
        store read afterwards really has no claim (also with a second driver
        instance preparing on the same files during a rolling update).
        """
        if self.ipam is None:
            return []
        leases = self.ipam.leases()
        known = {rec.uid for rec in self.open_store().list()}
        freed = []
        for lease in leases:
            if lease.owner.split("/", 1)[0] not in known:
                got = self.ipam.release(lease.owner)
                if got is not None:
                    log.warning(
                        "macvlan: freed lease %s of %s: its claim is not in the store",
                        ", ".join(got.addresses),
                        lease.owner,
                    )
                    freed.append(got)
        return freed


if __name__ == "__main__":
    run(Macvlan)
