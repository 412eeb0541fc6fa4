"""kndkit: write Kubernetes Network Drivers in Python on a Rust data plane.

The public API is re-exported here and nowhere else:

* namespaces: :class:`NetNs`;
* netlink plans: the :mod:`kndkit.netlink` module (step constructors, :func:`apply`,
  dumps);
* discovery: :func:`discover` and its records :class:`NetDevice`,
  :class:`RdmaDevice`, :class:`Discovery`;
* DRA devices and slices: :class:`Device`, :func:`devices_from_discovery`,
  :func:`resource_slices`, :func:`validate_device`;
* RDMA: :func:`rdma_available`, :func:`verbs_available` and friends;
* errors: :class:`KndError` and its subclasses;
* the kubelet side of DRA (:mod:`kndkit.dra`): :class:`KubeletPlugin`, the
  :class:`ClaimService` that prepares claims, and their records;
* the Kubernetes API (:mod:`kndkit.k8s`): :class:`SlicePublisher`,
  :class:`ClaimReader`, :class:`ClaimStatusWriter`, :func:`new_api_client`;
* the crash-safe store (:mod:`kndkit.state`): :class:`StateStore`;
* NRI (:mod:`kndkit.nri`): :class:`NRIPlugin` (``kndkit.nri.Plugin``) and the
  typed :class:`Pod`, :class:`Container`, :class:`ContainerAdjustment`;
* the driver framework (:mod:`kndkit.driver`): :class:`NetworkDriver`,
  :class:`DriverOptions`, :func:`run`; device sources (:mod:`kndkit.sources`):
  :class:`NodeDevice`, :class:`Netdevs`, :class:`RdmaLinks`; plans
  (:mod:`kndkit.plan`): :class:`InterfacePlan`, :class:`HostState` and their parts;
  node-local IPAM (:mod:`kndkit.ipam`): :class:`Ipam`; the DraNet-compatible
  per-claim configuration :class:`NetdevConfig`.

The protocol layers (DRA, Kubernetes, NRI, state) load on first use, so that
``import kndkit`` for netlink work does not pay for grpc and the Kubernetes
client (about 0.35 s and tens of MB).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kndkit import netlink
from kndkit._native import (
    Discovery,
    NetDevice,
    NetNs,
    RdmaDevice,
    __version__,
    discover,
    rdma_available,
    rdma_get_netns_mode,
    rdma_links,
    rdma_move,
    rdma_rename,
    rdma_set_netns_mode,
    verbs_available,
    verbs_devices,
)
from kndkit.devices import (
    Device,
    devices_from_discovery,
    resource_slices,
    validate_device,
)
from kndkit.errors import (
    InvalidArgument,
    KndError,
    NamespaceError,
    NetlinkError,
    NotAvailable,
)
from kndkit.netlink import apply

if TYPE_CHECKING:
    from kndkit import dra, driver, ipam, k8s, nri, plan, state
    from kndkit.config import NetdevConfig
    from kndkit.dra import (
        ClaimRef,
        DeviceHealth,
        DRAHandler,
        HealthSource,
        HealthStatus,
        KubeletPlugin,
        PreparedDevice,
        PrepareResult,
        UnprepareResult,
    )
    from kndkit.dra.service import ClaimPreparer, ClaimService, PreparedClaim
    from kndkit.driver import DriverOptions, NetworkDriver, PlanContext, PlanStep, run
    from kndkit.ipam import Ipam, IpamError, IpamExhausted, Lease
    from kndkit.k8s import (
        AllocatedDevice,
        Claim,
        ClaimError,
        ClaimReader,
        ClaimStatusWriter,
        ConfigError,
        DeviceStatus,
        SlicePublisher,
        new_api_client,
        parse_config,
    )
    from kndkit.nri import Container, ContainerAdjustment, LinuxDevice, Pod
    from kndkit.nri import Plugin as NRIPlugin
    from kndkit.plan import (
        AttachResult,
        CharDevice,
        DetachResult,
        HostState,
        InterfacePlan,
        Neighbor,
        RdmaPlan,
        Route,
        Rule,
        Vrf,
    )
    from kndkit.sources import DeviceSource, DiscoveryContext, Netdevs, NodeDevice, RdmaLinks
    from kndkit.state import (
        AttachmentRecord,
        AttachPhase,
        ClaimPhase,
        ClaimRecord,
        StateError,
        StateStore,
    )

# name -> (module, attribute); attribute None means the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "dra": ("kndkit.dra", None),
    "k8s": ("kndkit.k8s", None),
    "nri": ("kndkit.nri", None),
    "state": ("kndkit.state", None),
    **{
        n: ("kndkit.dra", n)
        for n in (
            "ClaimRef",
            "DRAHandler",
            "DeviceHealth",
            "HealthSource",
            "HealthStatus",
            "KubeletPlugin",
            "PrepareResult",
            "PreparedDevice",
            "UnprepareResult",
        )
    },
    **{n: ("kndkit.dra.service", n) for n in ("ClaimPreparer", "ClaimService", "PreparedClaim")},
    **{
        n: ("kndkit.k8s", n)
        for n in (
            "AllocatedDevice",
            "Claim",
            "ClaimError",
            "ClaimReader",
            "ClaimStatusWriter",
            "ConfigError",
            "DeviceStatus",
            "SlicePublisher",
            "new_api_client",
            "parse_config",
        )
    },
    **{n: ("kndkit.nri", n) for n in ("Container", "ContainerAdjustment", "LinuxDevice", "Pod")},
    "NRIPlugin": ("kndkit.nri", "Plugin"),
    **{
        n: ("kndkit.state", n)
        for n in (
            "AttachPhase",
            "AttachmentRecord",
            "ClaimPhase",
            "ClaimRecord",
            "StateError",
            "StateStore",
        )
    },
    "driver": ("kndkit.driver", None),
    "plan": ("kndkit.plan", None),
    "ipam": ("kndkit.ipam", None),
    **{
        n: ("kndkit.driver", n)
        for n in ("DriverOptions", "NetworkDriver", "PlanContext", "PlanStep", "run")
    },
    **{
        n: ("kndkit.sources", n)
        for n in ("DeviceSource", "DiscoveryContext", "Netdevs", "NodeDevice", "RdmaLinks")
    },
    **{
        n: ("kndkit.plan", n)
        for n in (
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
        )
    },
    **{n: ("kndkit.ipam", n) for n in ("Ipam", "IpamError", "IpamExhausted", "Lease")},
    "NetdevConfig": ("kndkit.config", "NetdevConfig"),
}


def __getattr__(name: str) -> Any:
    """Load the protocol layers on first use (PEP 562)."""
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'kndkit' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AllocatedDevice",
    "AttachPhase",
    "AttachResult",
    "AttachmentRecord",
    "CharDevice",
    "Claim",
    "ClaimError",
    "ClaimPhase",
    "ClaimPreparer",
    "ClaimReader",
    "ClaimRecord",
    "ClaimRef",
    "ClaimService",
    "ClaimStatusWriter",
    "ConfigError",
    "Container",
    "ContainerAdjustment",
    "DRAHandler",
    "DetachResult",
    "Device",
    "DeviceHealth",
    "DeviceSource",
    "DeviceStatus",
    "Discovery",
    "DiscoveryContext",
    "DriverOptions",
    "HealthSource",
    "HealthStatus",
    "HostState",
    "InterfacePlan",
    "InvalidArgument",
    "Ipam",
    "IpamError",
    "IpamExhausted",
    "KndError",
    "KubeletPlugin",
    "Lease",
    "LinuxDevice",
    "NRIPlugin",
    "NamespaceError",
    "Neighbor",
    "NetDevice",
    "NetNs",
    "NetdevConfig",
    "Netdevs",
    "NetlinkError",
    "NetworkDriver",
    "NodeDevice",
    "NotAvailable",
    "PlanContext",
    "PlanStep",
    "Pod",
    "PrepareResult",
    "PreparedClaim",
    "PreparedDevice",
    "RdmaDevice",
    "RdmaLinks",
    "RdmaPlan",
    "Route",
    "Rule",
    "SlicePublisher",
    "StateError",
    "StateStore",
    "UnprepareResult",
    "Vrf",
    "__version__",
    "apply",
    "devices_from_discovery",
    "discover",
    "dra",
    "driver",
    "ipam",
    "k8s",
    "netlink",
    "new_api_client",
    "nri",
    "parse_config",
    "plan",
    "rdma_available",
    "rdma_get_netns_mode",
    "rdma_links",
    "rdma_move",
    "rdma_rename",
    "rdma_set_netns_mode",
    "resource_slices",
    "run",
    "state",
    "validate_device",
    "verbs_available",
    "verbs_devices",
]
