"""RDMA parts for kndkit drivers: a device source, character devices, a plan step.

An RDMA NIC reaches a pod in two pieces: its netdev (moved like any other NIC)
and its RDMA side, which a process uses through character devices
(``/dev/infiniband/uverbsN`` for verbs, ``umadN``/``issmN`` for management
datagrams, the shared ``rdma_cm``). How the RDMA *link* itself behaves depends
on the node's RDMA netns mode, a kernel-wide setting:

* ``shared`` (the kernel default): every namespace sees every RDMA device;
  nothing moves, the pod only needs the character devices;
* ``exclusive``: an RDMA device lives in one namespace; the link is moved into
  the pod with its netdev (``rdma_move``) and back, first, when the pod stops.

This module provides:

* :class:`RdmaLinks`: a device source yielding one :class:`~kndkit.sources.NodeDevice`
  per RDMA device, with its netdev when it has one, InfiniBand-only devices
  (no netdev) included;
* :func:`netns_mode`: the node's mode, read over RDMA netlink, ``"shared"``
  when it cannot be read (logged);
* :func:`char_devices`: the device's character devices with their real
  major/minor numbers and the file mode / owner the container gets
  (DraNet leaves mode and owner to the runtime);
* :class:`RdmaStep`: a plan step setting ``plan.rdma``;
* :func:`adjustment_for`: the NRI ``CreateContainer`` adjustment injecting the
  character devices of a pod's plans;
* :func:`port_states`: the ports' link states from sysfs, for health reports.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from kndkit import _native
from kndkit.devices import netdev_device, rdma_device
from kndkit.errors import InvalidArgument, KndError, NotAvailable
from kndkit.plan import CharDevice, InterfacePlan, RdmaPlan
from kndkit.sources import DiscoveryContext, NodeDevice, uplink_names

if TYPE_CHECKING:
    from kndkit.nri.model import Container, ContainerAdjustment

__all__ = [
    "DEFAULT_FILE_MODE",
    "NetnsMode",
    "RdmaLinks",
    "RdmaSettings",
    "RdmaStep",
    "adjustment_for",
    "char_devices",
    "netns_mode",
    "port_states",
]

log = logging.getLogger("kndkit.rdma")

NetnsMode = Literal["shared", "exclusive"]

#: File mode of injected character devices unless configured otherwise:
#: read/write for everyone, so a pod running as any user can open them.
DEFAULT_FILE_MODE = 0o666

# sysfs classes of the per-device character devices, in injection order.
_CHAR_CLASSES: tuple[tuple[str, str], ...] = (
    ("infiniband_verbs", "uverbs"),
    ("infiniband_mad", "umad"),
    ("infiniband_mad", "issm"),
)
_RDMA_CM = "rdma_cm"
_CONTAINER_DIR = "/dev/infiniband"


# --------------------------------------------------------------------------- netns mode


def netns_mode() -> NetnsMode:
    """The node's RDMA netns mode, read over RDMA netlink (``RDMA_NLDEV_CMD_SYS_GET``).

    Never raises: where it cannot be read (no RDMA on this node, an old
    kernel) the kernel's default ``"shared"`` is assumed and the reason logged.
    A driver reads it once at start (see :class:`RdmaStep`)."""
    try:
        mode = _native.rdma_get_netns_mode()
    except KndError as e:
        log.info("RDMA netns mode unknown, assuming shared: %s", e)
        return "shared"
    if mode == "exclusive":
        return "exclusive"
    if mode != "shared":
        log.warning("RDMA netns mode %r not understood, assuming shared", mode)
    return "shared"


# --------------------------------------------------------------------------- char devices


class RdmaDeviceLike(Protocol):
    """The fields of :class:`kndkit._native.RdmaDevice` this module reads."""

    @property
    def name(self) -> str: ...
    @property
    def char_devices(self) -> list[str]: ...


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _parse_dev(text: str | None) -> tuple[int, int] | None:
    """``"231:192"`` -> ``(231, 192)``; None for anything else."""
    if not text:
        return None
    major, sep, minor = text.partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def _check_owner(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not 0 <= value < 2**32 - 1):
        raise InvalidArgument(f"RDMA character devices: {what} {value!r} is not a valid id")


def _numbers(node: str, host_node: Path, sysfs_dev: Path) -> tuple[int, int] | None:
    """Major/minor of ``node``: from the host's device node when it is a
    character device, else from the sysfs ``dev`` attribute."""
    try:
        st = os.stat(host_node)
    except OSError:
        st = None
    if st is not None and stat.S_ISCHR(st.st_mode):
        return os.major(st.st_rdev), os.minor(st.st_rdev)
    found = _parse_dev(_read(sysfs_dev))
    if found is None:
        log.warning(
            "RDMA character device %s left out: %s is not a character device and %s"
            " gives no device numbers",
            node,
            host_node,
            sysfs_dev,
        )
    return found


def _node_order(node: str) -> tuple[int, int, str]:
    for i, (_, prefix) in enumerate(_CHAR_CLASSES):
        rest = node.removeprefix(prefix)
        if rest != node and rest.isdigit():
            return i, int(rest), node
    return len(_CHAR_CLASSES), 0, node


def char_devices(
    rdma_device: str | RdmaDeviceLike,
    *,
    dev_root: str | os.PathLike[str] = "/dev",
    sysfs_root: str | os.PathLike[str] = "/sys",
    uid: int | None = None,
    gid: int | None = None,
    mode: int = DEFAULT_FILE_MODE,
    rdma_cm: bool = True,
) -> tuple[CharDevice, ...]:
    """The character devices a pod needs to use RDMA device ``rdma_device``.

    The device's nodes are found through sysfs (``class/infiniband_verbs`` and
    ``class/infiniband_mad`` entries whose ``ibdev`` names the device: its
    ``uverbsN``, and one ``umadN``/``issmN`` pair per port), plus the names in
    ``rdma_device.char_devices`` when a discovered record is given, plus the
    node-wide ``rdma_cm`` (with ``rdma_cm``, when it exists). Each comes back
    in the order uverbs, umad, issm, rdma_cm as a
    :class:`~kndkit.plan.CharDevice` with its container path
    (``/dev/infiniband/<node>``), the real major/minor (from ``stat`` of the
    node under ``dev_root`` when that is a character device, else from the
    sysfs ``dev`` attribute: ``class/<class>/<node>/dev``,
    ``class/misc/rdma_cm/dev``) and ``mode``/``uid``/``gid`` applied
    (``None`` leaves the owner to the runtime). A node whose numbers cannot be
    found is left out and logged.

    Raises :class:`~kndkit.errors.InvalidArgument` for a bad device name, mode
    or id, before reading anything.
    """
    name = rdma_device if isinstance(rdma_device, str) else rdma_device.name
    if not name or "/" in name or name in (".", "..") or any(c.isspace() for c in name):
        raise InvalidArgument(f"RDMA device name {name!r} is not valid")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise InvalidArgument(f"RDMA character devices: file mode {mode!r} is not 0..0o777")
    _check_owner("uid", uid)
    _check_owner("gid", gid)
    sysfs = Path(sysfs_root)
    dev = Path(dev_root)

    # node name -> sysfs "dev" attribute that gives its numbers
    nodes: dict[str, Path] = {}
    for cls, prefix in _CHAR_CLASSES:
        class_dir = sysfs / "class" / cls
        try:
            entries = sorted(os.listdir(class_dir))
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(prefix) and _read(class_dir / entry / "ibdev") == name:
                nodes[entry] = class_dir / entry / "dev"
    if not isinstance(rdma_device, str):
        for path in rdma_device.char_devices:
            node = os.path.basename(path)
            if node == _RDMA_CM:
                continue
            for cls, prefix in _CHAR_CLASSES:
                if node.startswith(prefix):
                    nodes.setdefault(node, sysfs / "class" / cls / node / "dev")
    ordered = sorted(nodes, key=_node_order)
    if rdma_cm:
        cm_sysfs = sysfs / "class" / "misc" / _RDMA_CM / "dev"
        if (dev / "infiniband" / _RDMA_CM).exists() or cm_sysfs.exists():
            ordered.append(_RDMA_CM)
            nodes[_RDMA_CM] = cm_sysfs

    out: list[CharDevice] = []
    for node in ordered:
        numbers = _numbers(node, dev / "infiniband" / node, nodes[node])
        if numbers is None:
            continue
        out.append(
            CharDevice(
                path=f"{_CONTAINER_DIR}/{node}",
                type="c",
                major=numbers[0],
                minor=numbers[1],
                file_mode=mode,
                uid=uid,
                gid=gid,
            )
        )
    return tuple(out)


def port_states(rdma_device: str, *, sysfs_root: str | os.PathLike[str] = "/sys") -> dict[int, str]:
    """Port number -> state (``"ACTIVE"``, ``"DOWN"``, ``"INIT"``...) of an RDMA
    device, read from ``class/infiniband/<dev>/ports/<n>/state`` (``"4: ACTIVE"``).
    Empty when the device or its ports cannot be read (gone, another namespace)."""
    ports = Path(sysfs_root) / "class" / "infiniband" / rdma_device / "ports"
    try:
        entries = os.listdir(ports)
    except OSError:
        return {}
    out: dict[int, str] = {}
    for entry in entries:
        text = _read(ports / entry / "state")
        if entry.isdigit() and text:
            out[int(entry)] = text.partition(":")[2].strip() or text
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- source


class RdmaLinks:
    """Device source: one device per RDMA device of the node.

    An RDMA device with a netdev (RoCE, a ConnectX port) is published as that
    netdev (the attributes of :func:`kndkit.devices.netdev_device`, which carry
    ``rdma`` and ``rdmaDevice``) with both records on the
    :class:`~kndkit.sources.NodeDevice`; an InfiniBand-only device (no netdev)
    as the RDMA device itself (:func:`kndkit.devices.rdma_device`,
    ``netdev=None``). An RDMA device whose netdevs are not in the discovered
    namespace (moved into a pod) is skipped.

    Args:
        netdevs: include RDMA devices that have a netdev.
        exclude_uplink: leave out RDMA devices whose netdev is part of the
            node's uplink (:func:`kndkit.sources.uplink_names`), as
            :class:`~kndkit.sources.Netdevs` does.
        ib_only: include InfiniBand-only devices.
        names: only these RDMA device names (``None``: all).

    With no RDMA device at all it yields nothing and logs once
    ``RDMA not available on this node`` with the reason.

    :class:`~kndkit.sources.Netdevs` already attaches the RDMA record to the
    netdevs that have one; use one of the two sources for such NICs, not both
    (the framework would publish each NIC twice, the second with a suffix).
    """

    def __init__(
        self,
        *,
        netdevs: bool = True,
        exclude_uplink: bool = True,
        ib_only: bool = True,
        names: Collection[str] | None = None,
    ) -> None:
        if isinstance(names, str):
            raise InvalidArgument("RdmaLinks: names is a collection of RDMA device names")
        self.netdevs = netdevs
        self.exclude_uplink = exclude_uplink
        self.ib_only = ib_only
        self.names = frozenset(names) if names is not None else None
        self._had_devices: bool | None = None

    def __repr__(self) -> str:
        return (
            f"RdmaLinks(netdevs={self.netdevs}, exclude_uplink={self.exclude_uplink},"
            f" ib_only={self.ib_only}, names={self.names})"
        )

    def discover(self, ctx: DiscoveryContext) -> Sequence[NodeDevice]:
        """The RDMA devices of ``ctx.discovery`` as node devices."""
        topo = ctx.discovery
        rdmas = list(topo.rdma_devices)
        self._announce(bool(rdmas), ctx)
        netdevs = list(topo.netdevs)
        by_name = {nd.name: nd for nd in netdevs}
        uplink: set[str] = set()
        if self.netdevs and self.exclude_uplink and any(rd.netdevs for rd in rdmas):
            uplink = uplink_names(netdevs, ctx.host_ns)
        out: list[NodeDevice] = []
        for rd in rdmas:
            if self.names is not None and rd.name not in self.names:
                continue
            if not rd.netdevs:
                if self.ib_only:
                    out.append(NodeDevice(device=rdma_device(rd), netdev=None, rdma=rd))
                continue
            if not self.netdevs:
                continue
            nd = next((by_name[n] for n in rd.netdevs if n in by_name), None)
            if nd is None:
                log.debug(
                    "RDMA device %s skipped: its netdevs %s are not in this namespace",
                    rd.name,
                    rd.netdevs,
                )
                continue
            if nd.name in uplink:
                log.debug("RDMA device %s skipped: %s is the node's uplink", rd.name, nd.name)
                continue
            if len(rd.netdevs) > 1:
                log.debug(
                    "RDMA device %s has netdevs %s; published as %s", rd.name, rd.netdevs, nd.name
                )
            out.append(NodeDevice(device=netdev_device(nd), netdev=nd, rdma=rd))
        return out

    def _announce(self, have: bool, ctx: DiscoveryContext) -> None:
        if have == self._had_devices:
            return
        self._had_devices = have
        if have:
            log.info("RDMA devices found; netns mode %s", netns_mode())
            return
        sysfs_root = getattr(getattr(ctx, "options", None), "sysfs_root", "/sys")
        netlink = "answers" if _native.rdma_available() else "does not answer"
        log.warning(
            "RDMA not available on this node: no RDMA device in %s/class/infiniband"
            " (RDMA netlink %s); publishing no RDMA devices",
            str(sysfs_root).rstrip("/"),
            netlink,
        )


# --------------------------------------------------------------------------- plan step


class RdmaSettings(BaseModel):
    """Per-claim ownership of the injected character devices (the ``rdma``
    section of a driver's config model). Unset fields keep the step's defaults."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    uid: int | None = Field(default=None, ge=0, lt=2**32 - 1)
    gid: int | None = Field(default=None, ge=0, lt=2**32 - 1)
    file_mode: int | None = Field(default=None, alias="fileMode", ge=0, le=0o777)


def _settings(config: Any) -> RdmaSettings | None:
    section = config.get("rdma") if isinstance(config, Mapping) else getattr(config, "rdma", None)
    if section is None:
        return None
    if isinstance(section, RdmaSettings):
        return section
    if isinstance(section, Mapping):
        return RdmaSettings.model_validate(section)
    raise InvalidArgument(f"config 'rdma': expected an object, got {type(section).__name__}")


class RdmaStep:
    """Plan step: gives a plan for an RDMA device its :class:`~kndkit.plan.RdmaPlan`.

    ``plan.rdma`` becomes ``RdmaPlan(device=<rdma name>, exclusive=<mode is
    exclusive>, char_devices=char_devices(...))``; plans of devices without an
    RDMA side come back unchanged. The netns mode is ``mode`` when given, else
    read with :func:`netns_mode` on first use and kept (the kernel setting can
    only change while no other namespace exists). ``dev_root``/``sysfs_root``
    come from the driver's options (``ctx.driver.options``). Ownership:
    ``uid``/``gid``/``file_mode`` here, overridden per claim by the config's
    ``rdma`` section (:class:`RdmaSettings`, a mapping or an attribute).

    With ``require_verbs`` (the default) a device without a ``uverbs`` node is
    refused with :class:`~kndkit.errors.NotAvailable` (a pod could not use it),
    and so is a ``macvlan``/``ipvlan`` plan in exclusive mode (the RDMA device
    of a shared parent cannot follow one pod).
    """

    def __init__(
        self,
        *,
        mode: NetnsMode | None = None,
        uid: int | None = None,
        gid: int | None = None,
        file_mode: int = DEFAULT_FILE_MODE,
        require_verbs: bool = True,
    ) -> None:
        if mode not in (None, "shared", "exclusive"):
            raise InvalidArgument(f"RDMA netns mode {mode!r} is not 'shared' or 'exclusive'")
        _check_owner("uid", uid)
        _check_owner("gid", gid)
        if not 0 <= file_mode <= 0o777:
            raise InvalidArgument(
                f"RDMA character devices: file mode {file_mode!r} is not 0..0o777"
            )
        self._mode: NetnsMode | None = mode
        self.uid = uid
        self.gid = gid
        self.file_mode = file_mode
        self.require_verbs = require_verbs

    @property
    def mode(self) -> NetnsMode:
        """The netns mode plans are made for (read once, see :func:`netns_mode`)."""
        if self._mode is None:
            self._mode = netns_mode()
            log.info("RDMA netns mode: %s", self._mode)
        return self._mode

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: Any
    ) -> InterfacePlan:
        rd = device.rdma
        if rd is None:
            return plan
        if self.mode == "exclusive" and plan.kind in ("macvlan", "ipvlan"):
            raise NotAvailable(
                f"device {device.name}: RDMA device {rd.name} is in exclusive netns mode, so it"
                f" can belong to one namespace only, not to {plan.kind} sub-interfaces of a"
                " shared parent"
            )
        options = getattr(getattr(ctx, "driver", None), "options", None)
        settings = _settings(config)
        uid = settings.uid if settings and settings.uid is not None else self.uid
        gid = settings.gid if settings and settings.gid is not None else self.gid
        mode = settings.file_mode if settings and settings.file_mode is not None else self.file_mode
        chars = char_devices(
            rd,
            dev_root=getattr(options, "dev_root", "/dev"),
            sysfs_root=getattr(options, "sysfs_root", "/sys"),
            uid=uid,
            gid=gid,
            mode=mode,
        )
        if self.require_verbs and not any(
            os.path.basename(c.path).startswith("uverbs") for c in chars
        ):
            raise NotAvailable(
                f"RDMA device {rd.name}: no uverbs character device found (is ib_uverbs loaded?)"
            )
        return plan.with_(
            rdma=RdmaPlan(device=rd.name, exclusive=self.mode == "exclusive", char_devices=chars)
        )


# --------------------------------------------------------------------------- NRI


def adjustment_for(
    plans: Iterable[InterfacePlan], *, container: Container | None = None
) -> ContainerAdjustment:
    """The ``CreateContainer`` adjustment adding the character devices of ``plans``.

    Each distinct path is added once (``rdma_cm`` is shared by every device);
    two plans giving one path different numbers are an
    :class:`~kndkit.errors.InvalidArgument` naming it. Devices without an owner
    (``uid``/``gid`` None) get the ``container``'s user when it is given and the
    runtime reported one, so a pod running as a non-root user owns its nodes.
    An empty adjustment when no plan has RDMA.
    """
    # protobuf loads with the NRI model: only when a container is adjusted
    from kndkit.nri.model import ContainerAdjustment, LinuxDevice  # noqa: PLC0415

    user = None
    if container is not None and container.raw.HasField("user"):
        user = container.raw.user
    adj = ContainerAdjustment()
    seen: dict[str, CharDevice] = {}
    for plan in plans:
        if plan.rdma is None:
            continue
        for cd in plan.rdma.char_devices:
            prev = seen.get(cd.path)
            if prev is not None:
                if (prev.type, prev.major, prev.minor) != (cd.type, cd.major, cd.minor):
                    raise InvalidArgument(
                        f"character device {cd.path}: {prev.major}:{prev.minor} in one plan,"
                        f" {cd.major}:{cd.minor} in another"
                    )
                continue
            seen[cd.path] = cd
            adj.add_device(
                LinuxDevice(
                    path=cd.path,
                    type=cd.type,
                    major=cd.major,
                    minor=cd.minor,
                    file_mode=cd.file_mode,
                    uid=cd.uid if cd.uid is not None or user is None else user.uid,
                    gid=cd.gid if cd.gid is not None or user is None else user.gid,
                )
            )
    return adj
