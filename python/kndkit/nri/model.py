"""Typed view of the NRI API: pods, containers, adjustments, updates.

The runtime describes pods and containers with the protobuf messages of
``nri.pkg.api.v1alpha1`` (``kndkit._proto.nri_v1alpha1_pb2``). This module turns
them into small immutable Python objects (:class:`Pod`, :class:`Container`) and
gives a plugin mutable builders for what it hands back
(:class:`ContainerAdjustment`, :class:`ContainerUpdate`,
:class:`ContainerEviction`). Each object converts both ways
(``from_proto`` / ``to_proto``); the received message is kept on ``.raw`` for
fields this model does not name.

How the runtime merges the adjustments of several plugins
----------------------------------------------------------

These rules are what containerd's NRI adaptation (v0.11/v0.12, ``result.go``)
does with the ``CreateContainer`` answers; a plugin has to live with them:

* Plugins are called one after the other in the order of their index (the
  two-digit ``idx``, compared as a string), and each sees the container as the
  plugins before it left it. Only ``CreateContainer`` adjusts; ``UpdateContainer``
  and ``StopContainer`` answers can only carry :class:`ContainerUpdate` s.
* Keyed entries are *owned* by the first plugin that sets them: an annotation
  (by key), a mount (by destination), an environment variable (by name), a
  Linux device (by path), a CDI device (by name: adding the same CDI device
  twice is a conflict too), a network device (by host interface name), a sysctl
  (by key), a namespace (by type), an rlimit (by type), and every single-valued
  setting (args, each resource limit, cgroups path, OOM score, I/O priority,
  seccomp policy, scheduler, memory policy, RDT). A second plugin touching an
  owned entry makes the whole container creation fail with
  ``plugins "<b>" and "<a>" both tried to set <what>``.
* Removal is an entry whose key starts with ``-`` (``-FOO`` for an env var,
  ``-/dev/x`` for a device path...). Removing an entry an earlier plugin added
  takes it over (a third plugin setting it afterwards conflicts with the
  remover); the same plugin may remove and re-add. Setting an env var, mount
  or device that the *original spec* already has simply replaces it, no
  removal needed.
* Removing an entry of the original spec reaches the runtime for annotations,
  mounts and net devices, but **not** for env vars and Linux devices: the
  adaptation (v0.11.0 to v0.12.5) drops those removals from the merged answer
  (only later plugins see the entry gone), so the container still gets them.
* Additive, never conflicting: OCI hooks (appended in plugin order).
* ``args`` replace the whole command line; a leading empty string (see
  :meth:`ContainerAdjustment.set_args` with ``override=True``) takes it over even
  when an earlier plugin set it.
* Network devices (``linux.net_devices``, NRI >= v0.11, OCI runtime-spec 1.3)
  are per container while the network namespace is per pod: inject a device
  into exactly one container of a pod.
* A plugin subscribed to ``ValidateContainerAdjustment`` (v0.12) sees the merged
  result and which plugin owns each field, and can reject it.
* Container updates returned with an adjustment or requested later with
  ``UpdateContainers`` conflict per resource field like adjustments do; an
  update with ``ignore_failure`` that the runtime cannot apply is dropped
  instead of failing the request.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from kndkit._proto import nri_v1alpha1_pb2 as pb
from kndkit.errors import InvalidArgument

__all__ = [
    "CONTAINER_EVENTS",
    "POD_EVENTS",
    "REMOVAL_PREFIX",
    "AdjustmentValidation",
    "Container",
    "ContainerAdjustment",
    "ContainerEviction",
    "ContainerState",
    "ContainerUpdate",
    "Event",
    "LinuxDevice",
    "Mount",
    "Namespace",
    "Pod",
    "event_mask",
    "events_in_mask",
]

#: Prefix that turns a key into a removal ("-FOO" removes env var FOO).
REMOVAL_PREFIX = "-"

_EMPTY: Mapping[str, str] = MappingProxyType({})
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
# CDI qualified name: vendor/class=name (vendor: domain-like, class: word chars,
# name: alphanumerics and ._:-); checked loosely, the runtime resolves it.
_CDI_NAME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*=[A-Za-z0-9][A-Za-z0-9._:-]*$"
)


class Event(enum.IntEnum):
    """NRI event numbers; bit ``1 << (event - 1)`` in ConfigureResponse.events."""

    RUN_POD_SANDBOX = 1
    STOP_POD_SANDBOX = 2
    REMOVE_POD_SANDBOX = 3
    CREATE_CONTAINER = 4
    POST_CREATE_CONTAINER = 5
    START_CONTAINER = 6
    POST_START_CONTAINER = 7
    UPDATE_CONTAINER = 8
    POST_UPDATE_CONTAINER = 9
    STOP_CONTAINER = 10
    REMOVE_CONTAINER = 11
    UPDATE_POD_SANDBOX = 12
    POST_UPDATE_POD_SANDBOX = 13
    VALIDATE_CONTAINER_ADJUSTMENT = 14


#: Events about a pod alone (no container in the request).
POD_EVENTS = frozenset(
    {
        Event.RUN_POD_SANDBOX,
        Event.STOP_POD_SANDBOX,
        Event.REMOVE_POD_SANDBOX,
        Event.UPDATE_POD_SANDBOX,
        Event.POST_UPDATE_POD_SANDBOX,
    }
)
#: Events about one container of a pod.
CONTAINER_EVENTS = frozenset(e for e in Event if e not in POD_EVENTS)


def event_mask(events: Iterable[Event]) -> int:
    """The ConfigureResponse.events bit mask of ``events``."""
    mask = 0
    for e in events:
        mask |= 1 << (int(Event(e)) - 1)
    return mask


def events_in_mask(mask: int) -> frozenset[Event]:
    """The events whose bits are set in ``mask`` (0 means every event)."""
    if mask == 0:
        return frozenset(Event)
    return frozenset(e for e in Event if mask & (1 << (int(e) - 1)))


class ContainerState(enum.IntEnum):
    UNKNOWN = 0
    CREATED = 1
    PAUSED = 2
    RUNNING = 3
    STOPPED = 4


def _check_key(kind: str, key: str) -> None:
    if not key:
        raise InvalidArgument(f"{kind}: empty key")
    if key.startswith(REMOVAL_PREFIX):
        raise InvalidArgument(
            f"{kind} {key!r}: a key may not start with {REMOVAL_PREFIX!r} "
            "(use the remove_* method to remove an entry)"
        )


def _opt_u32(v: int | None) -> pb.OptionalUInt32 | None:
    return None if v is None else pb.OptionalUInt32(value=v)


@dataclass(frozen=True)
class Namespace:
    """A Linux namespace of a pod or container: ``type`` ("network", "ipc"...) and path."""

    type: str
    path: str = ""

    @classmethod
    def from_proto(cls, msg: pb.LinuxNamespace) -> Namespace:
        return cls(type=msg.type, path=msg.path)

    def to_proto(self) -> pb.LinuxNamespace:
        return pb.LinuxNamespace(type=self.type, path=self.path)


@dataclass(frozen=True)
class Mount:
    """An OCI mount: where in the container, file system type, source, options."""

    destination: str
    source: str = ""
    type: str = "bind"
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_key("mount destination", self.destination)
        if not self.destination.startswith("/"):
            raise InvalidArgument(f"mount destination {self.destination!r}: not an absolute path")
        object.__setattr__(self, "options", tuple(self.options))

    @classmethod
    def from_proto(cls, msg: pb.Mount) -> Mount:
        m = object.__new__(cls)  # received mounts may be removal markers: skip checks
        object.__setattr__(m, "destination", msg.destination)
        object.__setattr__(m, "source", msg.source)
        object.__setattr__(m, "type", msg.type)
        object.__setattr__(m, "options", tuple(msg.options))
        return m

    def to_proto(self) -> pb.Mount:
        return pb.Mount(
            destination=self.destination,
            source=self.source,
            type=self.type,
            options=list(self.options),
        )


_DEVICE_TYPES = frozenset({"c", "b", "u", "p"})


@dataclass(frozen=True)
class LinuxDevice:
    """A device node to create in the container.

    ``type`` is ``"c"`` (character; ``"u"`` is an alias), ``"b"`` (block) or
    ``"p"`` (FIFO). ``file_mode`` (e.g. ``0o666``), ``uid`` and ``gid`` are left
    to the runtime when None. The runtime also adds the cgroup rule that allows
    the container to use the device.
    """

    path: str
    type: str = "c"
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __post_init__(self) -> None:
        _check_key("device path", self.path)
        if not self.path.startswith("/"):
            raise InvalidArgument(f"device path {self.path!r}: not an absolute path")
        if self.type not in _DEVICE_TYPES:
            raise InvalidArgument(
                f"device {self.path}: type {self.type!r} is not one of {sorted(_DEVICE_TYPES)}"
            )
        for name in ("major", "minor"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"device {self.path}: negative {name}")
        if self.file_mode is not None and not 0 <= self.file_mode <= 0o7777:
            raise InvalidArgument(f"device {self.path}: file mode {self.file_mode:#o} out of range")
        for name in ("uid", "gid"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 2**32:
                raise InvalidArgument(f"device {self.path}: {name} {v} out of range")

    @classmethod
    def from_proto(cls, msg: pb.LinuxDevice) -> LinuxDevice:
        d = object.__new__(cls)
        object.__setattr__(d, "path", msg.path)
        object.__setattr__(d, "type", msg.type)
        object.__setattr__(d, "major", msg.major)
        object.__setattr__(d, "minor", msg.minor)
        object.__setattr__(
            d, "file_mode", msg.file_mode.value if msg.HasField("file_mode") else None
        )
        object.__setattr__(d, "uid", msg.uid.value if msg.HasField("uid") else None)
        object.__setattr__(d, "gid", msg.gid.value if msg.HasField("gid") else None)
        return d

    def to_proto(self) -> pb.LinuxDevice:
        msg = pb.LinuxDevice(path=self.path, type=self.type, major=self.major, minor=self.minor)
        if self.file_mode is not None:
            msg.file_mode.value = self.file_mode
        if self.uid is not None:
            msg.uid.value = self.uid
        if self.gid is not None:
            msg.gid.value = self.gid
        return msg


@dataclass(frozen=True)
class Pod:
    """A pod sandbox as the runtime describes it.

    ``netns`` is the path of the pod's network namespace (the ``linux.namespaces``
    entry of type ``"network"``), ``None`` when there is none: a host-network pod
    (:attr:`host_network`). ``ips`` are the pod IPs (NRI >= v0.8, the runtime
    fills them once the CNI has run; empty in RunPodSandbox for most runtimes).
    """

    id: str
    name: str = ""
    namespace: str = ""
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    runtime_handler: str = ""
    namespaces: tuple[Namespace, ...] = ()
    ips: tuple[str, ...] = ()
    pid: int = 0
    cgroup_parent: str = ""
    raw: pb.PodSandbox = field(default_factory=pb.PodSandbox, repr=False, compare=False)

    @property
    def netns(self) -> str | None:
        for ns in self.namespaces:
            if ns.type == "network":
                return ns.path or None
        return None

    @property
    def host_network(self) -> bool:
        """True when the pod has no network namespace of its own."""
        return self.netns is None

    @property
    def ref(self) -> str:
        """``namespace/name``, for logs."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_proto(cls, msg: pb.PodSandbox) -> Pod:
        return cls(
            id=msg.id,
            name=msg.name,
            namespace=msg.namespace,
            uid=msg.uid,
            labels=MappingProxyType(dict(msg.labels)),
            annotations=MappingProxyType(dict(msg.annotations)),
            runtime_handler=msg.runtime_handler,
            namespaces=tuple(Namespace.from_proto(n) for n in msg.linux.namespaces),
            ips=tuple(msg.ips),
            pid=msg.pid,
            cgroup_parent=msg.linux.cgroup_parent,
            raw=msg,
        )

    def to_proto(self) -> pb.PodSandbox:
        """A PodSandbox message: ``raw`` (if any) with the modelled fields set over it."""
        msg = pb.PodSandbox()
        msg.CopyFrom(self.raw)
        msg.id, msg.name, msg.namespace, msg.uid = self.id, self.name, self.namespace, self.uid
        msg.runtime_handler, msg.pid = self.runtime_handler, self.pid
        msg.labels.clear()
        msg.labels.update(self.labels)
        msg.annotations.clear()
        msg.annotations.update(self.annotations)
        del msg.ips[:]
        msg.ips.extend(self.ips)
        del msg.linux.namespaces[:]
        msg.linux.namespaces.extend(n.to_proto() for n in self.namespaces)
        msg.linux.cgroup_parent = self.cgroup_parent
        return msg


def _parse_env(entries: Iterable[str]) -> Mapping[str, str]:
    env: dict[str, str] = {}
    for e in entries:
        k, _, v = e.partition("=")
        env[k] = v
    return MappingProxyType(env)


@dataclass(frozen=True)
class Container:
    """A container as the runtime describes it.

    ``env`` is parsed from the spec's ``KEY=VALUE`` list (last one wins);
    ``devices``, ``net_devices`` (host ifname -> container ifname) and
    ``namespaces`` come from the ``linux`` part; ``cdi_devices`` are qualified
    CDI names.
    """

    id: str
    pod_sandbox_id: str = ""
    name: str = ""
    state: ContainerState = ContainerState.UNKNOWN
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    mounts: tuple[Mount, ...] = ()
    devices: tuple[LinuxDevice, ...] = ()
    cdi_devices: tuple[str, ...] = ()
    net_devices: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    namespaces: tuple[Namespace, ...] = ()
    pid: int = 0
    raw: pb.Container = field(default_factory=pb.Container, repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: pb.Container) -> Container:
        try:
            state = ContainerState(msg.state)
        except ValueError:
            state = ContainerState.UNKNOWN
        return cls(
            id=msg.id,
            pod_sandbox_id=msg.pod_sandbox_id,
            name=msg.name,
            state=state,
            labels=MappingProxyType(dict(msg.labels)),
            annotations=MappingProxyType(dict(msg.annotations)),
            args=tuple(msg.args),
            env=_parse_env(msg.env),
            mounts=tuple(Mount.from_proto(m) for m in msg.mounts),
            devices=tuple(LinuxDevice.from_proto(d) for d in msg.linux.devices),
            cdi_devices=tuple(d.name for d in msg.CDI_devices),
            net_devices=MappingProxyType({k: v.name for k, v in msg.linux.net_devices.items()}),
            namespaces=tuple(Namespace.from_proto(n) for n in msg.linux.namespaces),
            pid=msg.pid,
            raw=msg,
        )

    def to_proto(self) -> pb.Container:
        """A Container message: ``raw`` (if any) with the modelled fields set over it."""
        msg = pb.Container()
        msg.CopyFrom(self.raw)
        msg.id, msg.pod_sandbox_id, msg.name = self.id, self.pod_sandbox_id, self.name
        msg.state = int(self.state)  # type: ignore[assignment]
        msg.pid = self.pid
        msg.labels.clear()
        msg.labels.update(self.labels)
        msg.annotations.clear()
        msg.annotations.update(self.annotations)
        del msg.args[:]
        msg.args.extend(self.args)
        del msg.env[:]
        msg.env.extend(f"{k}={v}" for k, v in self.env.items())
        del msg.mounts[:]
        msg.mounts.extend(m.to_proto() for m in self.mounts)
        del msg.linux.devices[:]
        msg.linux.devices.extend(d.to_proto() for d in self.devices)
        del msg.CDI_devices[:]
        msg.CDI_devices.extend(pb.CDIDevice(name=n) for n in self.cdi_devices)
        msg.linux.net_devices.clear()
        for host, name in self.net_devices.items():
            msg.linux.net_devices[host].name = name
        del msg.linux.namespaces[:]
        msg.linux.namespaces.extend(n.to_proto() for n in self.namespaces)
        return msg


@dataclass
class ContainerAdjustment:
    """What a plugin changes in a container it is asked to create.

    Build it with the ``add_*``/``set_*``/``remove_*`` methods (which validate
    their input and raise :class:`~kndkit.errors.InvalidArgument` without
    changing anything) or fill the fields directly. Removals are kept as
    entries whose key starts with ``-``, as on the wire. See the module
    docstring for how the runtime merges adjustments of several plugins.

    ``extra`` is merged last into the message :meth:`to_proto` builds, for API
    fields this class does not model (resources, hooks, rlimits, seccomp...).
    """

    annotations: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    env: list[tuple[str, str]] = field(default_factory=list)
    devices: list[LinuxDevice] = field(default_factory=list)
    cdi_devices: list[str] = field(default_factory=list)
    net_devices: dict[str, str] = field(default_factory=dict)
    sysctl: dict[str, str] = field(default_factory=dict)
    args: list[str] | None = None
    extra: pb.ContainerAdjustment | None = None

    # -- annotations
    def add_annotation(self, key: str, value: str) -> ContainerAdjustment:
        _check_key("annotation", key)
        self.annotations[key] = value
        return self

    def remove_annotation(self, key: str) -> ContainerAdjustment:
        _check_key("annotation", key)
        self.annotations[REMOVAL_PREFIX + key] = ""
        return self

    # -- mounts
    def add_mount(self, mount: Mount) -> ContainerAdjustment:
        self.mounts.append(mount)
        return self

    def remove_mount(self, destination: str) -> ContainerAdjustment:
        _check_key("mount destination", destination)
        m = object.__new__(Mount)
        object.__setattr__(m, "destination", REMOVAL_PREFIX + destination)
        object.__setattr__(m, "source", "")
        object.__setattr__(m, "type", "")
        object.__setattr__(m, "options", ())
        self.mounts.append(m)
        return self

    # -- environment
    def add_env(self, key: str, value: str) -> ContainerAdjustment:
        _check_key("env", key)
        if "=" in key:
            raise InvalidArgument(f"env {key!r}: a variable name may not contain '='")
        self.env.append((key, value))
        return self

    def remove_env(self, key: str) -> ContainerAdjustment:
        _check_key("env", key)
        self.env.append((REMOVAL_PREFIX + key, ""))
        return self

    # -- devices
    def add_device(self, device: LinuxDevice) -> ContainerAdjustment:
        self.devices.append(device)
        return self

    def remove_device(self, path: str) -> ContainerAdjustment:
        _check_key("device path", path)
        self.devices.append(LinuxDevice.from_proto(pb.LinuxDevice(path=REMOVAL_PREFIX + path)))
        return self

    def add_cdi_device(self, name: str) -> ContainerAdjustment:
        """Add a CDI device by qualified name (``vendor.com/class=name``); no removal exists."""
        if not _CDI_NAME.match(name):
            raise InvalidArgument(f"CDI device {name!r}: not a qualified name vendor/class=name")
        self.cdi_devices.append(name)
        return self

    # -- network devices (NRI >= v0.11)
    def add_net_device(self, host_ifname: str, container_ifname: str) -> ContainerAdjustment:
        """Move host interface ``host_ifname`` into the container as ``container_ifname``."""
        _check_key("net device", host_ifname)
        for n in (host_ifname, container_ifname):
            if not _IFNAME.match(n) or n in (".", "..") or len(n.encode()) > 15:
                raise InvalidArgument(f"net device {n!r}: not a valid interface name")
        self.net_devices[host_ifname] = container_ifname
        return self

    def remove_net_device(self, host_ifname: str) -> ContainerAdjustment:
        _check_key("net device", host_ifname)
        self.net_devices[REMOVAL_PREFIX + host_ifname] = ""
        return self

    # -- sysctl
    def add_sysctl(self, key: str, value: str) -> ContainerAdjustment:
        _check_key("sysctl", key)
        self.sysctl[key] = value
        return self

    def remove_sysctl(self, key: str) -> ContainerAdjustment:
        _check_key("sysctl", key)
        self.sysctl[REMOVAL_PREFIX + key] = ""
        return self

    # -- command line
    def set_args(self, args: Sequence[str], *, override: bool = False) -> ContainerAdjustment:
        """Replace the command line; ``override=True`` takes it over from an earlier plugin."""
        if isinstance(args, str):
            raise InvalidArgument("args: a sequence of strings, not one string")
        if not args or any(not isinstance(a, str) for a in args):
            raise InvalidArgument("args: need at least one string argument")
        self.args = ([""] if override else []) + list(args)
        return self

    def is_empty(self) -> bool:
        return not (
            self.annotations
            or self.mounts
            or self.env
            or self.devices
            or self.cdi_devices
            or self.net_devices
            or self.sysctl
            or self.args
            or (self.extra is not None and self.extra.ByteSize() > 0)
        )

    @classmethod
    def from_proto(cls, msg: pb.ContainerAdjustment) -> ContainerAdjustment:
        """The adjustment in ``msg``; unmodelled fields stay in ``extra``."""
        rest = pb.ContainerAdjustment()
        rest.CopyFrom(msg)
        rest.annotations.clear()
        del rest.mounts[:]
        del rest.env[:]
        del rest.CDI_devices[:]
        del rest.args[:]
        del rest.linux.devices[:]
        rest.linux.net_devices.clear()
        rest.linux.sysctl.clear()
        if rest.linux.ByteSize() == 0:
            rest.ClearField("linux")
        return cls(
            annotations=dict(msg.annotations),
            mounts=[Mount.from_proto(m) for m in msg.mounts],
            env=[(kv.key, kv.value) for kv in msg.env],
            devices=[LinuxDevice.from_proto(d) for d in msg.linux.devices],
            cdi_devices=[d.name for d in msg.CDI_devices],
            net_devices={k: v.name for k, v in msg.linux.net_devices.items()},
            sysctl=dict(msg.linux.sysctl),
            args=list(msg.args) if msg.args else None,
            extra=rest if rest.ByteSize() > 0 else None,
        )

    def to_proto(self) -> pb.ContainerAdjustment:
        msg = pb.ContainerAdjustment()
        msg.annotations.update(self.annotations)
        msg.mounts.extend(m.to_proto() for m in self.mounts)
        msg.env.extend(pb.KeyValue(key=k, value=v) for k, v in self.env)
        msg.CDI_devices.extend(pb.CDIDevice(name=n) for n in self.cdi_devices)
        if self.args:
            msg.args.extend(self.args)
        if self.devices:
            msg.linux.devices.extend(d.to_proto() for d in self.devices)
        for host, name in self.net_devices.items():
            # a removal is sent with an empty device: the key carries the meaning
            msg.linux.net_devices[host].name = name
        if self.sysctl:
            msg.linux.sysctl.update(self.sysctl)
        if self.extra is not None:
            msg.MergeFrom(self.extra)
        return msg


@dataclass
class ContainerUpdate:
    """A change to a running container's resources.

    ``resources`` is the NRI ``LinuxResources`` message (memory, CPU, hugepages,
    pids...); set only what should change. With ``ignore_failure`` the runtime
    drops the update instead of failing when it cannot apply it.
    """

    container_id: str
    resources: pb.LinuxResources | None = None
    ignore_failure: bool = False

    def __post_init__(self) -> None:
        if not self.container_id:
            raise InvalidArgument("container update: empty container id")

    def set_memory_limit(self, limit: int) -> ContainerUpdate:
        if limit < 0:
            raise InvalidArgument(f"container {self.container_id}: negative memory limit")
        if self.resources is None:
            self.resources = pb.LinuxResources()
        self.resources.memory.limit.value = limit
        return self

    def set_cpuset(self, cpus: str = "", mems: str = "") -> ContainerUpdate:
        if self.resources is None:
            self.resources = pb.LinuxResources()
        if cpus:
            self.resources.cpu.cpus = cpus
        if mems:
            self.resources.cpu.mems = mems
        return self

    @classmethod
    def from_proto(cls, msg: pb.ContainerUpdate) -> ContainerUpdate:
        res = None
        if msg.HasField("linux") and msg.linux.HasField("resources"):
            res = pb.LinuxResources()
            res.CopyFrom(msg.linux.resources)
        u = object.__new__(cls)
        u.container_id, u.resources, u.ignore_failure = msg.container_id, res, msg.ignore_failure
        return u

    def to_proto(self) -> pb.ContainerUpdate:
        msg = pb.ContainerUpdate(container_id=self.container_id, ignore_failure=self.ignore_failure)
        if self.resources is not None:
            msg.linux.resources.CopyFrom(self.resources)
        return msg


@dataclass(frozen=True)
class ContainerEviction:
    """Ask the runtime to evict (stop) a container, with a reason for its logs."""

    container_id: str
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.container_id:
            raise InvalidArgument("container eviction: empty container id")

    @classmethod
    def from_proto(cls, msg: pb.ContainerEviction) -> ContainerEviction:
        return cls(container_id=msg.container_id, reason=msg.reason)

    def to_proto(self) -> pb.ContainerEviction:
        return pb.ContainerEviction(container_id=self.container_id, reason=self.reason)


@dataclass(frozen=True)
class AdjustmentValidation:
    """What a ``validate_container_adjustment`` hook judges (NRI v0.12).

    ``adjustment`` and ``updates`` are merged over all plugins; ``plugins`` lists
    ``(name, index)`` of the plugins that took part; :meth:`owner` tells which
    plugin set a field (``field`` is a ``nri_v1alpha1_pb2.Field`` number, ``key``
    the entry of a keyed field such as an env var name or device path).
    """

    pod: Pod
    container: Container
    adjustment: ContainerAdjustment
    updates: tuple[ContainerUpdate, ...] = ()
    plugins: tuple[tuple[str, str], ...] = ()
    owners: pb.OwningPlugins = field(default_factory=pb.OwningPlugins, repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: pb.ValidateContainerAdjustmentRequest) -> AdjustmentValidation:
        return cls(
            pod=Pod.from_proto(msg.pod),
            container=Container.from_proto(msg.container),
            adjustment=ContainerAdjustment.from_proto(msg.adjust),
            updates=tuple(ContainerUpdate.from_proto(u) for u in msg.update),
            plugins=tuple((p.name, p.index) for p in msg.plugins),
            owners=msg.owners,
        )

    def owner(self, field_number: int, key: str | None = None) -> str | None:
        """The plugin that owns ``field_number`` (of ``key``) for this container, or None."""
        fo = self.owners.owners.get(self.container.id)
        if fo is None:
            return None
        if key is None:
            return fo.simple.get(field_number)
        comp = fo.compound.get(field_number)
        return None if comp is None else comp.owners.get(key)
