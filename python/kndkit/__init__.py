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
* errors: :class:`KndError` and its subclasses.
"""

from __future__ import annotations

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

__all__ = [
    "Device",
    "Discovery",
    "InvalidArgument",
    "KndError",
    "NamespaceError",
    "NetDevice",
    "NetNs",
    "NetlinkError",
    "NotAvailable",
    "RdmaDevice",
    "__version__",
    "apply",
    "devices_from_discovery",
    "discover",
    "netlink",
    "rdma_available",
    "rdma_get_netns_mode",
    "rdma_links",
    "rdma_move",
    "rdma_rename",
    "rdma_set_netns_mode",
    "resource_slices",
    "validate_device",
    "verbs_available",
    "verbs_devices",
]
