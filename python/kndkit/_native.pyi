"""Typed stub of ``kndkit._native``, the Rust core (PyO3).

Kept true to the built module by ``tests/unit/test_native_stub.py`` (mypy
stubtest). Every blocking call releases the GIL. Errors are the classes of
:mod:`kndkit.errors`.

Plans (``apply``) and dump results are plain ``dict``/``list`` data; the typed
constructors for plan steps live in :mod:`kndkit.netlink`.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any, final

__all__ = [
    "Discovery",
    "NetDevice",
    "NetNs",
    "RdmaDevice",
    "__version__",
    "apply",
    "discover",
    "dump_addresses",
    "dump_ethtool",
    "dump_links",
    "dump_neighbours",
    "dump_routes",
    "dump_rules",
    "dump_sysctl",
    "dump_tc",
    "encode",
    "rdma_available",
    "rdma_get_netns_mode",
    "rdma_links",
    "rdma_move",
    "rdma_rename",
    "rdma_set_netns_mode",
    "verbs_available",
    "verbs_devices",
]

__version__: str

# --------------------------------------------------------------------------- namespaces

@final
class NetNs:
    """An open handle to a network namespace (an owned file descriptor).

    Constructed only through the static methods; anything that is not a
    network-namespace file is refused with :class:`kndkit.errors.NamespaceError`.
    The calling thread never enters the namespace: kndkit opens netlink sockets
    inside it on a short-lived thread of its own.
    """

    @staticmethod
    def open(path: str) -> NetNs:
        """``/run/netns/NAME``, ``/proc/PID/ns/net`` or any bind mount of a netns."""

    @staticmethod
    def from_pid(pid: int) -> NetNs: ...
    @staticmethod
    def from_fd(fd: int) -> NetNs:
        """Duplicates ``fd`` (the caller keeps ownership of its own descriptor)."""

    @staticmethod
    def current() -> NetNs:
        """The namespace of the calling thread."""

    @property
    def path(self) -> str | None: ...
    @property
    def inode(self) -> int: ...
    def fileno(self) -> int: ...
    def is_alive(self) -> bool:
        """False once closed, or when the path it was opened from no longer names it."""

    def close(self) -> None: ...
    def __enter__(self) -> NetNs: ...
    def __exit__(self, *exc: object) -> None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

# --------------------------------------------------------------------------- netlink batches

def apply(
    steps: Sequence[Mapping[str, Any]], *, rollback: bool = True, recover_partial: bool = False
) -> dict[str, Any]:
    """Executes a plan: every step in as few ``sendmsg`` calls as the kernel allows.

    Returns ``{"steps": n, "sendmsg": k, "results": [per-step dict]}``. On the
    first failing step the completed steps are undone in reverse order (unless
    ``rollback=False``) and :class:`kndkit.errors.NetlinkError` names the step.
    With ``recover_partial`` the rollback first undoes what the kernel applied
    of a refused ``link_set`` (a move whose rename was then refused).
    Invalid input raises :class:`kndkit.errors.InvalidArgument` before anything
    is sent. See :mod:`kndkit.netlink` for the step schema.
    """

def encode(steps: Sequence[Mapping[str, Any]], *, seq: int = 1) -> list[bytes]:
    """The netlink messages ``apply`` would send for ``steps`` (one per step), for
    inspection and byte-exact tests. Namespace handles encode as their fd; links
    given by ``ifname`` are looked up in their namespace (they must exist now),
    ``ifindex`` is used as given."""

def dump_links(ns: NetNs | None = None) -> list[dict[str, Any]]: ...
def dump_addresses(ns: NetNs | None = None) -> list[dict[str, Any]]: ...
def dump_routes(ns: NetNs | None = None, *, table: int | None = None) -> list[dict[str, Any]]: ...
def dump_rules(ns: NetNs | None = None) -> list[dict[str, Any]]: ...
def dump_neighbours(ns: NetNs | None = None) -> list[dict[str, Any]]: ...
def dump_ethtool(ifname: str, ns: NetNs | None = None) -> dict[str, Any]:
    """``{"features": {name: active}, "private_flags": {name: on}, "fixed": [names]}``
    of ``ifname`` in ``ns`` (ethtool generic netlink); ``fixed`` lists the features
    the device cannot change."""

def dump_sysctl(path: str, ns: NetNs | None = None) -> str:
    """The value of ``/proc/sys/<path>`` (``path`` under ``net/``) in ``ns``,
    read from a thread inside it, without the trailing newline."""

def dump_tc(ifname: str, ns: NetNs | None = None) -> dict[str, Any]:
    """``{"filters": [labels], "tcx": [program names], "ebpf": bool}``: the tc
    filters on the link's ingress/egress hooks (``"bpf:<name>"`` for bpf ones,
    the kind otherwise) and its tcx programs."""

# --------------------------------------------------------------------------- discovery

@final
class RdmaDevice:
    """An RDMA device from ``class/infiniband`` (with or without a netdev).

    ``netdevs`` is empty for an InfiniBand-only device. ``char_devices`` are the
    canonical paths (``/dev/infiniband/uverbs0``, ``umad0``, ``issm0``,
    ``rdma_cm``) of the nodes that exist under ``dev_root``.
    """

    @property
    def name(self) -> str: ...
    @property
    def node_guid(self) -> str | None: ...
    @property
    def node_type(self) -> str | None:
        """``"CA"``, ``"RNIC"``... (sysfs ``node_type`` without its number)."""

    @property
    def pci_address(self) -> str | None: ...
    @property
    def numa_node(self) -> int | None: ...
    @property
    def pcie_root(self) -> str | None: ...
    @property
    def netdevs(self) -> list[str]: ...
    @property
    def char_devices(self) -> list[str]: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class NetDevice:
    """One netdev as discovery sees it. Absent facts are ``None`` (never ``-1``).

    ``kind`` is netlink's link kind (``veth``, ``bridge``...), else the uevent
    DEVTYPE, else ``physical`` (it has a parent device), ``loopback`` or
    ``virtual``. ``pcie_root`` is the root complex (``pci0000:00``). IDs are
    lower-case ``0x`` hex strings. ``physfn``/``virtfns`` are PCI addresses.
    ``addresses`` (CIDRs) come from netlink only. ``ifindex`` is 0 when a
    sysfs-only walk found no readable index (see ``Discovery.warnings``).
    """

    @property
    def ifindex(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def mac(self) -> str | None: ...
    @property
    def mtu(self) -> int: ...
    @property
    def operstate(self) -> str: ...
    @property
    def addresses(self) -> list[str]: ...
    @property
    def master(self) -> str | None: ...
    @property
    def uppers(self) -> list[str]: ...
    @property
    def lowers(self) -> list[str]: ...
    @property
    def pci_address(self) -> str | None: ...
    @property
    def vendor_id(self) -> str | None: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def subsystem_vendor_id(self) -> str | None: ...
    @property
    def subsystem_device_id(self) -> str | None: ...
    @property
    def driver(self) -> str | None: ...
    @property
    def numa_node(self) -> int | None: ...
    @property
    def pcie_root(self) -> str | None: ...
    @property
    def sriov_totalvfs(self) -> int | None: ...
    @property
    def sriov_numvfs(self) -> int | None: ...
    @property
    def physfn(self) -> str | None: ...
    @property
    def virtfns(self) -> list[str]: ...
    @property
    def rdma_device(self) -> str | None: ...
    @property
    def char_devices(self) -> list[str]: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Discovery:
    """The result of one walk. ``warnings`` holds one line per attribute that
    could not be read or parsed (the walk goes on without that fact)."""

    @property
    def netdevs(self) -> list[NetDevice]:
        """Sorted by ifindex."""

    @property
    def rdma_devices(self) -> list[RdmaDevice]:
        """Sorted by name."""

    @property
    def warnings(self) -> list[str]: ...
    def to_dict(self) -> dict[str, Any]: ...

def discover(
    sysfs_root: str | os.PathLike[str] = "/sys",
    *,
    dev_root: str | os.PathLike[str] = "/dev",
    ns: NetNs | None = None,
    netlink: bool | None = None,
) -> Discovery:
    """Walks ``sysfs_root`` (and, when ``netlink`` is true - the default for the
    real ``/sys`` - a netlink dump of ``ns``) into typed records.

    With netlink, name/kind/MAC/MTU/state/addresses/master come from the dump and
    sysfs is read only for parent devices (PCI, NUMA, SR-IOV, driver). Without,
    everything is read from ``class/net`` (fake trees, see
    :mod:`kndkit.testing.sysfs`). ``ns`` needs netlink. A missing ``sysfs_root``
    raises :class:`kndkit.errors.InvalidArgument`; a malformed attribute is a
    warning, never an error.
    """

# --------------------------------------------------------------------------- RDMA

def rdma_available() -> bool:
    """Whether this node answers RDMA netlink (NETLINK_RDMA): a socket opens and
    SYS_GET succeeds."""

def rdma_get_netns_mode() -> str:
    """``"shared"`` or ``"exclusive"``; :class:`kndkit.errors.NotAvailable` without RDMA."""

def rdma_set_netns_mode(mode: str) -> None:
    """Sets the mode (``"shared"`` / ``"exclusive"``; anything else is
    :class:`kndkit.errors.InvalidArgument`). The kernel accepts it only from the
    initial namespace and refuses it while other namespaces exist."""

def rdma_links(ns: NetNs | None = None) -> list[dict[str, Any]]:
    """RDMA devices as the kernel lists them over NETLINK_RDMA (NLDEV GET dump,
    then a PORT_GET dump per device), seen from ``ns`` (default: the caller's).

    Each dict: ``index``, ``name``, ``node_guid`` / ``sys_image_guid``
    (``"0c42:a103:0065:7a8e"`` or None), ``fw_version``, ``node_type``
    (``"ca"``, ``"rnic"``...), ``protocol`` (``"roce"``, ``"ib"``, ``"iw"``),
    ``port_count``, ``ports`` (``[{port, state, phys_state, lid, netdev,
    netdev_index}]``, None where the kernel did not report a value) and
    ``netdevs`` (names of the ports' netdevs visible in ``ns``)."""

def rdma_move(device: str, ns: NetNs, *, from_ns: NetNs | None = None) -> None:
    """Moves an RDMA device to ``ns`` (exclusive mode only). ``from_ns`` is the
    namespace the device is in now (default: the caller's). Bad names raise
    InvalidArgument; an unknown device or a refusal raises NetlinkError."""

def rdma_rename(device: str, new_name: str, *, ns: NetNs | None = None) -> None:
    """Renames an RDMA device (names: 1..63 printable bytes, no ``/``, ``%`` or space)."""

def verbs_available() -> bool:
    """Whether libibverbs could be loaded on this node (it is never linked;
    ``KNDKIT_LIBIBVERBS`` overrides the library path)."""

def verbs_devices() -> list[dict[str, Any]]:
    """Devices through libibverbs: ``name``, ``node_guid``, ``node_type``,
    ``fw_version``, ``ports`` (``[{port, state, phys_state, link_layer, lid,
    active_mtu, gid_table_len, gids}]``), ``error`` (why the device could not be
    opened, else None). ``[]`` when libibverbs loads but sees no device;
    :class:`kndkit.errors.NotAvailable` when it cannot be loaded."""
