"""NetworkDriver: the composable driver framework and its lifecycle.

A driver author subclasses :class:`NetworkDriver`, names it, lists its device
sources, optionally a pydantic config model and plan steps, and overrides only
what differs (``plan`` most often). :meth:`NetworkDriver.run` wires everything::

    discovery (host netns) --sources--> devices --SlicePublisher--> ResourceSlices
    NodePrepareResources  --ClaimService--> prepare_claim: merge_config ->
        parse_config -> plan() -> steps (one worker thread per claim) ->
        pod-side interface names checked (within the claim and against the
        pod's other prepared claims) -> plans persisted (claim PREPARED)
    NRI RunPodSandbox      --> attachment ATTACHING persisted -> kndkit.plan.attach
        (one native call) -> ATTACHED -> claim status (networkData), async
    NRI CreateContainer    --> on_create_container (or RDMA char devices)
    NRI StopPodSandbox     --> DETACHING -> kndkit.plan.detach -> record deleted
    NodeUnprepareResources --> release() -> the claim's record deleted

Restart: the claim service resolves interrupted prepares/unprepares; NRI
Synchronize (the runtime's list of live pods) resolves attachments: ATTACHED
records of pods that are gone are detached, DETACHING ones are finished,
ATTACHING ones are detached and attached again when the pod lives, and live
pods whose prepared claims were never attached (the driver was down during
RunPodSandbox) are attached.

Attachment records are committed without waiting for an fsync (on the loop
thread, tens of microseconds): they must survive a crash of the process, which
they do; what they describe (links in pod namespaces) does not survive a power
cut either, and Synchronize after a reboot finds those pods gone.

An attach that finishes after the NRI plugin failed its request (the runtime's
deadline was near) is undone at once: the runtime has given up on that pod.

RunPodSandbox is on every pod's start path, so it does little besides the one
native call: one read of the state file for the pod's attachment and prepared
claims (only the pod's own records are decoded; a pod without claims of the
driver costs that read and nothing else), the plans parsed at prepare reused
(kept per claim while the stored plans are the same), the ATTACHING record
committed before the kernel is touched and then moved to ATTACHED by a
phase-only update. The "attached" log line, the attached-pods gauge and the
claim status follow shortly after the reply (``AFTER_ATTACH_DELAY_S``).

Devices: discovery runs in the host namespace on start, every
``rescan_interval`` seconds, when a link of the host namespace is added,
removed or changed (rate-limited, see :meth:`NetworkDriver.watch_links`), after
each unprepare, and when prepare meets a device it does not know. A device
moved into a pod stays published (as last seen) while a prepared claim holds it.

Everything is keyed by the driver name (state directory, sockets, the NRI
plugin name), so several drivers run side by side on one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import pydantic

from kndkit import metrics, netlink
from kndkit._native import NetNs, discover
from kndkit.devices import Device
from kndkit.dra import KubeletPlugin
from kndkit.dra.service import ClaimService, PreparedClaim
from kndkit.dra.types import DeviceHealth, HealthStatus, PreparedDevice
from kndkit.errors import InvalidArgument, KndError, NamespaceError
from kndkit.k8s.claims import AllocatedDevice, Claim, ClaimReader, merge_parameters, parse_config
from kndkit.k8s.client import new_api_client
from kndkit.k8s.errors import ConfigError
from kndkit.k8s.publisher import SlicePublisher
from kndkit.k8s.status import ClaimStatusWriter, DeviceStatus
from kndkit.nri.model import Container, ContainerAdjustment, Pod
from kndkit.nri.plugin import Plugin
from kndkit.plan import InterfacePlan, attach, detach
from kndkit.rdma import adjustment_for
from kndkit.sources import DeviceSource, DiscoveryContext, LinkEvents, Netdevs, NodeDevice
from kndkit.state import (
    AttachmentRecord,
    AttachPhase,
    ClaimPhase,
    ClaimRecord,
    StateStore,
)

__all__ = [
    "DriverOptions",
    "NetworkDriver",
    "PlanContext",
    "PlanStep",
    "run",
]

log = logging.getLogger("kndkit.driver")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: How long a graceful stop waits for NRI hooks in flight.
STOP_GRACE_S = 10.0
#: Parsed plans kept per claim (the oldest entry goes beyond this).
PLAN_CACHE_SIZE = 4096
#: How long after an attach the attached-pods gauge and the claim status
#: (networkData, which dumps the pod's links on a worker thread) are brought up to
#: date: work that would otherwise run before the RunPodSandbox reply is sent.
AFTER_ATTACH_DELAY_S = 0.01
#: Rescans on link notifications: this many at once, then one per interval (DraNet's).
LINK_EVENT_BURST = 5
LINK_EVENT_INTERVAL_S = 2.0


@dataclass
class DriverOptions:
    """How and where a driver runs on its node (``kndkit run`` options).

    ``host_netns``: path of the network namespace the driver treats as the
    host (``None``: its own). ``kubeconfig``: ``None`` means in-cluster
    configuration, else ``~/.kube/config``. ``state_dir`` and ``plugin_dir``
    default to ``/var/lib/kndkit/<driver>`` and
    ``/var/lib/kubelet/plugins/<driver>``. ``metrics_port`` ``None`` (or
    negative) turns the metrics server off; 0 picks a free port, written to
    ``<state_dir>/metrics.port`` and logged. ``params`` are driver-specific settings
    (``--set k=v``, ``--config FILE``).
    """

    node_name: str
    host_netns: str | None = None
    kubeconfig: str | None = None
    state_dir: str | None = None
    registry_dir: str = "/var/lib/kubelet/plugins_registry"
    plugin_dir: str | None = None
    nri_socket: str = "/var/run/nri/nri.sock"
    nri_index: str = "10"
    metrics_port: int | None = 9177
    metrics_host: str = "0.0.0.0"
    sysfs_root: str = "/sys"
    dev_root: str = "/dev"
    rescan_interval: float = 60.0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanContext:
    """What ``plan()`` and plan steps know besides the device and its config."""

    claim: Claim
    allocated: AllocatedDevice
    pod_uid: str
    driver: NetworkDriver
    host_ns: NetNs | None


@runtime_checkable
class PlanStep(Protocol):
    """One composable part of planning: returns the plan with its changes."""

    def apply(
        self, plan: InterfacePlan, config: Any, device: NodeDevice, ctx: PlanContext
    ) -> InterfacePlan: ...


def _overrides(cls: type, name: str) -> bool:
    """True when ``cls`` defines ``name`` somewhere below :class:`NetworkDriver`."""
    for klass in cls.__mro__:
        if klass is NetworkDriver:
            return False
        if name in vars(klass):
            return True
    return False


class NetworkDriver:
    """Base class of a Kubernetes Network Driver; see the module docstring.

    Class attributes: ``name`` (the DRA driver name, a DNS subdomain),
    ``sources`` (device sources), ``config`` (a pydantic model for each
    device's opaque configuration, or ``None`` for a plain dict), ``steps``
    (plan steps applied after ``plan()``), ``inject_devices`` (subscribe to
    CreateContainer to inject the plans' RDMA character devices; implied when
    the subclass defines ``on_create_container``).
    """

    name: ClassVar[str] = ""
    sources: ClassVar[Sequence[DeviceSource]] = (Netdevs(),)
    config: ClassVar[type[pydantic.BaseModel] | None] = None
    steps: ClassVar[Sequence[PlanStep]] = ()
    inject_devices: ClassVar[bool] = False

    def __init__(self, options: DriverOptions) -> None:
        name = type(self).name
        if not isinstance(name, str) or len(name) > 63 or not _DNS_SUBDOMAIN.match(name):
            raise InvalidArgument(
                f"driver {type(self).__qualname__}: name {name!r} must be a DNS subdomain "
                "of at most 63 characters (e.g. netdev.example.com)"
            )
        if not options.node_name:
            raise InvalidArgument(f"driver {name}: the node name is empty")
        self.options = options
        self.devices: dict[str, NodeDevice] = {}
        """The devices found by the last rescan, by DRA device name."""
        self.host_ns: NetNs | None = None
        if options.host_netns:
            self.host_ns = NetNs.open(options.host_netns)
        self.store: StateStore | None = None
        self.publisher: SlicePublisher | None = None
        self.status_writer: ClaimStatusWriter | None = None
        self.claims: ClaimService | None = None
        self._known: dict[str, NodeDevice] = {}
        self._published: list[Device] = []
        self._health: list[DeviceHealth] = []
        self._health_version = 0
        self._health_cond: asyncio.Condition | None = None
        self._stop_event: asyncio.Event | None = None
        self._rescan_event: asyncio.Event | None = None
        self._rescan_lock: asyncio.Lock | None = None
        self._pod_locks: dict[str, asyncio.Lock] = {}
        self._parsed_plans: dict[str, tuple[Any, tuple[InterfacePlan, ...]]] = {}
        """Claim uid -> (its plans as the store returns them, parsed)."""
        self._background: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._nri: Any = None
        self._kubelet: Any = None
        self._observability: Any = None
        self._api: Any = None
        self._link_events: LinkEvents | None = None
        self.first_publish_done = False
        self.nri_synchronized = False

    # ------------------------------------------------------------------ paths

    @property
    def driver_name(self) -> str:
        """The DRA driver name (``type(self).name``)."""
        return type(self).name

    @property
    def state_dir(self) -> str:
        return self.options.state_dir or os.path.join("/var/lib/kndkit", self.driver_name)

    @property
    def plugin_dir(self) -> str:
        return self.options.plugin_dir or os.path.join("/var/lib/kubelet/plugins", self.driver_name)

    @property
    def nri_plugin_name(self) -> str:
        """The NRI plugin name: the driver name's first label."""
        return self.driver_name.split(".", 1)[0]

    def open_store(self) -> StateStore:
        """The state store (``<state_dir>/state.db``), opened on first use."""
        if self.store is None:
            self.store = StateStore(os.path.join(self.state_dir, "state.db"))
        return self.store

    # ------------------------------------------------------------------ override points

    def filter(self, device: NodeDevice) -> bool:
        """Whether to publish ``device`` (default: every device the sources found)."""
        return True

    def merge_config(self, layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One configuration from the opaque parameter layers of a device's request
        (class entries first, claim entries last). Default: nested objects merged
        key by key, later layers winning (:func:`kndkit.k8s.claims.merge_parameters`)."""
        merged: dict[str, Any] = {}
        for layer in layers:
            merged = merge_parameters(merged, layer)
        return merged

    def parse_config(self, raw: Mapping[str, Any], *, claim: Claim, request: str) -> Any:
        """The typed configuration: ``raw`` validated by the ``config`` model (a
        :class:`~kndkit.k8s.errors.ConfigError` names the offending field), or
        ``raw`` as a dict when the driver has no model."""
        model = type(self).config
        if model is None:
            return dict(raw)

        dev = next((d for d in claim.devices if d.request == request), None)
        probe = AllocatedDevice(
            request=request,
            pool=dev.pool if dev else "",
            device=dev.device if dev else "",
            config=raw,
            claim=f"{claim.namespace}/{claim.name}",
        )
        return parse_config(probe, model)

    def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
        """The interface plan for ``device``. Default: move its netdev into the
        pod, named ``net1``."""
        if device.ifname is None:
            raise KndError(
                f"driver {self.driver_name}: device {device.name} has no network interface; "
                "override plan() to handle it"
            )
        return InterfacePlan.move(device.name, device.ifname)

    async def release(self, plans: Sequence[InterfacePlan], record: ClaimRecord) -> None:
        """Called on unprepare with the claim's plans (free IPAM leases...). Default: nothing."""

    async def on_create_container(
        self, pod: Pod, container: Container, plans: Sequence[InterfacePlan]
    ) -> ContainerAdjustment | None:
        """The container adjustment for a new container of a pod with attached plans.

        Defining it in a subclass subscribes the driver to CreateContainer. The
        default (used when ``inject_devices`` is true) injects the plans' RDMA
        character devices, each path once (``rdma_cm`` is shared by every RDMA
        device), owned by the container's user when the plan names no owner
        (:func:`kndkit.rdma.adjustment_for`).
        """
        adj = adjustment_for(plans, container=container)
        return None if adj.is_empty() else adj

    def health(self, device: NodeDevice) -> tuple[HealthStatus, str]:
        """The health of a published device. Default: a netdev that is present and
        not down is healthy."""
        nd = device.netdev
        if nd is None:
            return HealthStatus.HEALTHY, "present"
        if nd.operstate in ("up", "unknown"):
            return HealthStatus.HEALTHY, f"{nd.name} is {nd.operstate}"
        return HealthStatus.UNHEALTHY, f"{nd.name} is {nd.operstate}"

    # ------------------------------------------------------------------ discovery

    def discover_devices(self) -> list[NodeDevice]:
        """Runs discovery in the host namespace and every source (blocking: run it in
        a thread). Names are made unique; ``filter`` is applied."""
        topo = discover(
            self.options.sysfs_root, dev_root=self.options.dev_root, ns=self.host_ns, netlink=True
        )
        ctx = DiscoveryContext(topo, self.host_ns, self.driver_name, self.options)
        out: list[NodeDevice] = []
        seen: set[str] = set()
        for source in type(self).sources:
            try:
                found = source.discover(ctx)
            except Exception as e:
                log.error("driver %s: device source %r failed: %s", self.driver_name, source, e)
                metrics.ERRORS.labels(self.driver_name, "discovery", type(e).__name__).inc()
                continue
            for item in found:
                if not self.filter(item):
                    continue
                name = item.name
                n = 1
                while name in seen:
                    n += 1
                    name = f"{item.name[:58]}-{n}"
                seen.add(name)
                if name != item.name:
                    dev = item.device
                    item = dataclasses.replace(  # noqa: PLW2901
                        item, device=Device(name, dev.attributes, dev.capacity, dev.taints)
                    )
                out.append(item)
        return out

    async def rescan(self) -> list[NodeDevice]:
        """Discovers now, updates :attr:`devices`, health, and the published slices
        (through the publisher's background path when it runs)."""
        if self._rescan_lock is None:
            self._rescan_lock = asyncio.Lock()
        async with self._rescan_lock:
            found = await asyncio.to_thread(self.discover_devices)
            self.devices = {nd.name: nd for nd in found}
            self._known.update(self.devices)
            published = self._publishable()
            self._published = published
            self._update_health(published)
            if self.publisher is not None:
                self.publisher.update(published)
            metrics.PUBLISHED_DEVICES.labels(self.driver_name).set(len(published))
            log.debug("driver %s: rescan found %d devices", self.driver_name, len(found))
            return found

    def request_rescan(self) -> None:
        """Asks the rescan loop to run now (returns at once)."""
        if self._rescan_event is not None:
            self._rescan_event.set()

    def _in_use(self) -> set[str]:
        """Device names of prepared claims (they stay published while in a pod)."""
        if self.store is None:
            return set()
        return {d.device_name for rec in self.store.list() for d in rec.devices}

    def _publishable(self) -> list[Device]:
        devices = {name: nd.device for name, nd in self.devices.items()}
        # A device moved into a pod is gone from the host namespace: keep
        # publishing what was last seen of it, so its allocation stays valid.
        for name in self._in_use():
            if name not in devices and name in self._known:
                devices[name] = self._known[name].device
        return [devices[n] for n in sorted(devices)]

    def _update_health(self, published: Sequence[Device]) -> None:
        now = int(time.time())
        items: list[DeviceHealth] = []
        for dev in published:
            nd = self.devices.get(dev.name)
            if nd is None:
                status, msg = HealthStatus.HEALTHY, "in use by a pod"
            else:
                try:
                    status, msg = self.health(nd)
                except Exception as e:
                    status, msg = HealthStatus.UNKNOWN, f"health check failed: {e}"
            items.append(
                DeviceHealth(self.options.node_name, dev.name, status, now, message=msg[:1024])
            )
        if [(h.device_name, h.health, h.message) for h in items] == [
            (h.device_name, h.health, h.message) for h in self._health
        ]:
            return
        self._health = items
        self._health_version += 1
        if self._health_cond is not None:
            cond = self._health_cond

            async def notify() -> None:
                async with cond:
                    cond.notify_all()

            self._spawn(notify(), "health-notify")

    async def watch_health(self) -> AsyncIterator[Sequence[DeviceHealth]]:
        """:class:`~kndkit.dra.types.HealthSource`: the current list, then each change."""
        if self._health_cond is None:
            self._health_cond = asyncio.Condition()
        cond = self._health_cond
        seen = [-1]
        while True:
            async with cond:
                await cond.wait_for(lambda: self._health_version != seen[0])
                seen[0] = self._health_version
                items = list(self._health)
            yield items

    # ------------------------------------------------------------------ prepare (ClaimPreparer)

    async def prepare_claim(self, claim: Claim) -> PreparedClaim:
        """Plans every device of this driver in ``claim`` (ClaimPreparer)."""
        label = f"claim {claim.namespace}/{claim.name}"
        if not claim.devices:
            raise KndError(f"{label}: no device of driver {self.driver_name} is allocated")
        missing = [d.device for d in claim.devices if d.device not in self.devices]
        if missing:
            await self.rescan()  # a missed lookup triggers a rescan
        plans: list[InterfacePlan] = []
        prepared: list[PreparedDevice] = []
        try:
            await self._plan_claim(claim, label, plans, prepared)
        except BaseException:
            # Leave nothing behind: the driver releases what the plans so far hold
            # (IPAM leases...), the claim service forgets the claim.
            record = ClaimRecord.for_claim(
                claim.ref(),
                ClaimPhase.PREPARING,
                plans=[p.to_json() for p in plans],
                pod_uids=[p.uid for p in claim.pods],
            )
            try:
                await self.release(plans, record)
            except Exception:
                log.exception(
                    "driver %s: %s: release after a failed prepare", self.driver_name, label
                )
            raise
        log.info(
            "driver %s: %s planned: %s",
            self.driver_name,
            label,
            ", ".join(f"{p.device}->{p.name} ({p.kind})" for p in plans),
        )
        data = [p.to_json() for p in plans]
        # What the store will give back for this claim (JSON-normalised), parsed:
        # RunPodSandbox then finds the plans without parsing them again.
        self._remember_plans(claim.uid, json.loads(json.dumps(data)), plans)
        return PreparedClaim(prepared, data)

    async def _plan_claim(
        self,
        claim: Claim,
        label: str,
        plans: list[InterfacePlan],
        prepared: list[PreparedDevice],
    ) -> None:
        """Fills ``plans`` and ``prepared`` device by device (see prepare_claim).

        Planning runs off the event loop, in one worker thread per claim: plan
        steps dump netlink state, capture the host side of a move, and a driver's
        ``plan()`` may do blocking work of its own (an IPAM commit...)."""
        await asyncio.to_thread(self._plan_claim_blocking, claim, label, plans, prepared)
        _check_pod_names(label, plans, [])
        for pod in claim.pods:
            others = [
                p
                for rec in self._claims_of_pods([pod.uid], exclude=claim.uid)
                for p in self._plans_of(rec.plans)
            ]
            if others:
                _check_pod_names(label, plans, others)

    def _plan_claim_blocking(
        self,
        claim: Claim,
        label: str,
        plans: list[InterfacePlan],
        prepared: list[PreparedDevice],
    ) -> None:
        """The blocking part of :meth:`_plan_claim` (runs in a worker thread)."""
        pod_uid = claim.pods[0].uid if len(claim.pods) == 1 else ""
        for alloc in claim.devices:
            if alloc.pool != self.options.node_name:
                raise KndError(
                    f"{label}: device {alloc.pool}/{alloc.device} is from pool {alloc.pool!r}, "
                    f"not this node's ({self.options.node_name})"
                )
            nd = self.devices.get(alloc.device)
            if nd is None:
                raise KndError(
                    f"{label}: device {alloc.device} is not on node {self.options.node_name} "
                    "(gone since it was published?)"
                )
            layers = alloc.config_layers or ((alloc.config,) if alloc.config else ())
            try:
                raw = self.merge_config(layers)
                cfg = self.parse_config(raw, claim=claim, request=alloc.request)
            except ConfigError:
                raise
            except (pydantic.ValidationError, InvalidArgument, ValueError) as e:
                raise ConfigError(
                    f"{label}, request {alloc.request!r}, device {alloc.device}: "
                    f"invalid configuration: {e}",
                    field="",
                    claim=f"{claim.namespace}/{claim.name}",
                    request=alloc.request,
                    device=alloc.device,
                ) from None
            ctx = PlanContext(claim, alloc, pod_uid, self, self.host_ns)
            plan = self.plan(nd, cfg, ctx)
            for step in type(self).steps:
                plan = step.apply(plan, cfg, nd, ctx)
            if plan.kind == "move" and plan.host is None:
                # The exact host-side state detach restores, taken now.
                plan = plan.capture_host(self.host_ns)
            plans.append(plan)
            prepared.append(
                PreparedDevice(
                    pool_name=alloc.pool,
                    device_name=alloc.device,
                    request_names=(alloc.request,),
                    share_id=alloc.share_id,
                )
            )
        if any(p.kind in ("move", "rdma") for p in plans) and len(claim.pods) != 1:
            raise KndError(
                f"{label}: reserved for {len(claim.pods)} pods; driver {self.driver_name} "
                "moves its devices into one pod, so the claim must be reserved for exactly one"
            )

    async def unprepare_claim(self, record: ClaimRecord) -> None:
        """Detaches what is still attached of the claim, then :meth:`release` (ClaimPreparer)."""
        plans = self._claim_plans(record)
        self._parsed_plans.pop(record.uid, None)
        store = self.open_store()
        for att in store.attachments():
            if record.uid in att.claim_uids:
                log.warning(
                    "driver %s: claim %s unprepared while attached to pod %s; detaching",
                    self.driver_name,
                    record.ref,
                    att.pod_ref,
                )
                await self._detach_record(att)
        await self.release(plans, record)

    @staticmethod
    def _plans_of(data: Any) -> list[InterfacePlan]:

        if not isinstance(data, list):
            return []
        return [InterfacePlan.from_json(p) for p in data]

    def _remember_plans(self, uid: str, data: Any, plans: Sequence[InterfacePlan]) -> None:
        cache = self._parsed_plans
        cache.pop(uid, None)
        cache[uid] = (data, tuple(plans))
        while len(cache) > PLAN_CACHE_SIZE:
            del cache[next(iter(cache))]

    def _claim_plans(self, rec: ClaimRecord) -> list[InterfacePlan]:
        """The parsed plans of ``rec``: from the cache when its entry holds the
        same plan data as the record (equal JSON), else parsed and remembered."""
        hit = self._parsed_plans.get(rec.uid)
        if hit is not None and hit[0] == rec.plans:
            return list(hit[1])
        plans = self._plans_of(rec.plans)
        self._remember_plans(rec.uid, rec.plans, plans)
        return plans

    # ------------------------------------------------------------------ attach / detach

    def _lock_for(self, pod_uid: str) -> asyncio.Lock:
        lock = self._pod_locks.get(pod_uid)
        if lock is None:
            lock = self._pod_locks[pod_uid] = asyncio.Lock()
        return lock

    def _claims_of_pods(self, pod_uids: Sequence[str], *, exclude: str = "") -> list[ClaimRecord]:
        """Prepared claims (other than the one with uid ``exclude``) reserved for
        any of ``pod_uids``."""
        if not pod_uids:
            return []
        wanted = set(pod_uids)
        return [
            rec
            for rec in self.open_store().list()
            if rec.phase is ClaimPhase.PREPARED
            and rec.uid != exclude
            and wanted.intersection(rec.pod_uids)
        ]

    def _claims_of_pod(self, pod_uid: str) -> list[ClaimRecord]:
        """Prepared claims reserved for ``pod_uid`` (only those rows are decoded)."""
        return self.open_store().claims_of_pod(pod_uid)

    async def attach_pod(self, pod: Pod, *, cancelled: Callable[[], bool] | None = None) -> bool:
        """Attaches the prepared claims of ``pod`` (RunPodSandbox). Returns False when
        the pod has no claim of this driver. ``cancelled`` (checked after the
        attach, with no await in between) tells whether the caller's request was
        cut off meanwhile: the attach is then undone."""
        async with self._lock_for(pod.uid):
            store = self.open_store()
            existing, claims = store.pod_records(pod.uid)
            if existing is not None and existing.phase is AttachPhase.ATTACHED:
                log.info("driver %s: pod %s already attached", self.driver_name, pod.ref)
                return True
            if existing is not None:
                await self._detach_record(existing)
                claims = self._claims_of_pod(pod.uid)
            if not claims:
                return False
            if pod.host_network or not pod.netns:
                names = ", ".join(f"{c.namespace}/{c.name}" for c in claims)
                err = KndError(
                    f"pod {pod.ref} uses the host network: driver {self.driver_name} "
                    f"cannot move the devices of claim(s) {names} into it"
                )
                self._spawn(self._attach_failed_events(claims, pod, err), "attach-event")
                raise err
            plans: list[dict[str, Any]] = []
            parsed: list[InterfacePlan] = []
            for c in claims:
                if isinstance(c.plans, list):
                    plans.extend(c.plans)
                    parsed.extend(self._claim_plans(c))
            rec = AttachmentRecord(
                pod_uid=pod.uid,
                pod_ref=pod.ref,
                netns=pod.netns,
                phase=AttachPhase.ATTACHING,
                claim_uids=tuple(c.uid for c in claims),
                plans=plans,
            )
            store.put_attachment(rec, sync=False)  # written before the kernel is touched
            t0 = time.perf_counter()
            try:
                result = await asyncio.to_thread(self._attach_blocking, parsed, pod.netns)
            except asyncio.CancelledError:
                # The worker thread may still be attaching: the ATTACHING record
                # stays, so the pod's StopPodSandbox (or the next start's
                # reconcile) detaches whatever it did.
                raise
            except Exception as e:
                if getattr(e, "rolled_back", True) is False:
                    # The native rollback could not undo everything: detach is
                    # exact and idempotent, it puts back whatever is left.
                    log.warning(
                        "driver %s: attach of pod %s failed and was not fully rolled back "
                        "(%s); detaching what is left",
                        self.driver_name,
                        pod.ref,
                        e,
                    )
                    try:
                        await self._detach_record(rec)
                    except Exception:
                        log.exception("driver %s: detach after a failed attach", self.driver_name)
                else:
                    store.delete_attachment(pod.uid, sync=False)  # attach rolled back
                self._spawn(self._attach_failed_events(claims, pod, e), "attach-event")
                raise
            elapsed = time.perf_counter() - t0
            metrics.ATTACH_DURATION.labels(self.driver_name, "attach").observe(elapsed)
            updated = store.set_attachment_phase(pod.uid, AttachPhase.ATTACHED, sync=False)
            rec = dataclasses.replace(rec, phase=AttachPhase.ATTACHED, updated_at=updated)
            if cancelled is not None and cancelled():
                log.warning(
                    "driver %s: attach of pod %s finished after the runtime gave up on it; "
                    "undoing it",
                    self.driver_name,
                    pod.ref,
                )
                await self._detach_record(rec)
                return True
            self._spawn(
                self._after_attach(claims, pod.ref, pod.netns, result.pod_links, elapsed),
                "after-attach",
            )
            return True

    async def _after_attach(
        self,
        claims: Sequence[ClaimRecord],
        pod_ref: str,
        netns: str,
        pod_links: Mapping[str, int],
        elapsed: float,
    ) -> None:
        """What an attach leaves for later, once the RunPodSandbox reply is out:
        its log line (with the time the native attach took), the attached-pods
        gauge, then the claim status."""
        await asyncio.sleep(AFTER_ATTACH_DELAY_S)
        log.info(
            "driver %s: pod %s attached: %s in %.1f ms",
            self.driver_name,
            pod_ref,
            ", ".join(f"{d}(ifindex {i})" for d, i in pod_links.items()),
            elapsed * 1000,
        )
        self._update_attached_gauge()
        await self._write_status(claims, netns, pod_links)

    def _attach_blocking(self, plans: Sequence[InterfacePlan], netns: str) -> Any:
        """The native attach of ``plans`` into the pod namespace ``netns`` (worker thread)."""
        with NetNs.open(netns) as pod_ns:
            return attach(plans, pod_ns, host_ns=self.host_ns)

    def _detach_blocking(self, plans: list[dict[str, Any]], netns: str) -> Any:

        ips = [InterfacePlan.from_json(p) for p in plans]
        pod_ns: NetNs | None = None
        if netns:
            try:
                pod_ns = NetNs.open(netns)
            except (NamespaceError, OSError) as e:
                log.info("pod netns %s is gone (%s): restoring what is on the host", netns, e)
        try:
            return detach(ips, pod_ns, host_ns=self.host_ns)
        finally:
            if pod_ns is not None:
                pod_ns.close()

    async def _detach_record(self, rec: AttachmentRecord) -> None:

        store = self.open_store()
        if rec.phase is not AttachPhase.DETACHING:
            store.put_attachment(dataclasses.replace(rec, phase=AttachPhase.DETACHING), sync=False)
        t0 = time.perf_counter()
        result = await asyncio.to_thread(
            self._detach_blocking, rec.plans if isinstance(rec.plans, list) else [], rec.netns
        )
        metrics.ATTACH_DURATION.labels(self.driver_name, "detach").observe(time.perf_counter() - t0)
        store.delete_attachment(rec.pod_uid, sync=False)
        log.info(
            "driver %s: pod %s detached: restored %s, deleted %s, missing %s",
            self.driver_name,
            rec.pod_ref,
            list(result.restored),
            list(result.deleted),
            list(result.missing),
        )
        self._update_attached_gauge()

    async def detach_pod(self, pod_uid: str) -> bool:
        """Detaches pod ``pod_uid`` (StopPodSandbox); False when nothing was attached."""
        lock = self._lock_for(pod_uid)
        try:
            async with lock:
                rec = self.open_store().get_attachment(pod_uid)
                if rec is None:
                    return False
                await self._detach_record(rec)
                return True
        finally:
            # The pod is done: forget its lock unless someone waits on it.
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._pod_locks.pop(pod_uid, None)

    async def reconcile(self, pods: Sequence[Pod]) -> None:
        """Brings attachments in line with the runtime's live ``pods`` (NRI Synchronize)."""
        alive = {p.uid: p for p in pods}
        store = self.open_store()
        for rec in store.attachments():
            pod = alive.get(rec.pod_uid)
            try:
                if rec.phase is AttachPhase.ATTACHED and pod is not None:
                    continue
                log.info(
                    "driver %s: reconcile: pod %s %s (%s): detaching",
                    self.driver_name,
                    rec.pod_ref,
                    "alive" if pod else "gone",
                    rec.phase.value,
                )
                async with self._lock_for(rec.pod_uid):
                    await self._detach_record(rec)
            except Exception:
                log.exception(
                    "driver %s: reconcile: detaching pod %s", self.driver_name, rec.pod_ref
                )
        attached = {a.pod_uid for a in store.attachments()}
        for pod in pods:
            if pod.uid in attached or pod.host_network or not pod.netns:
                continue
            if not self._claims_of_pod(pod.uid):
                continue
            try:
                log.info("driver %s: reconcile: attaching live pod %s", self.driver_name, pod.ref)
                await self.attach_pod(pod)
            except Exception:
                log.exception("driver %s: reconcile: attaching pod %s", self.driver_name, pod.ref)

    async def _write_status(
        self, claims: Sequence[ClaimRecord], netns: str, pod_links: Mapping[str, int]
    ) -> None:
        """networkData of each attached device on its claim (best effort)."""
        writer = self.status_writer
        if writer is None:
            return

        macs = await asyncio.to_thread(self._pod_macs, netns)
        for c in claims:
            statuses = []
            for plan in self._claim_plans(c):
                share = next((d.share_id for d in c.devices if d.device_name == plan.device), None)
                ifindex = pod_links.get(plan.device)
                conditions = []
                if plan.kind != "rdma":
                    conditions.append(
                        {
                            "type": "NetworkReady",
                            "status": "True",
                            "reason": "Attached",
                            "message": f"{plan.name} configured in the pod",
                        }
                    )
                if plan.rdma is not None:
                    conditions.append(
                        {
                            "type": "RDMALinkReady",
                            "status": "True",
                            "reason": "Attached",
                            "message": f"RDMA device {plan.rdma.device} available to the pod",
                        }
                    )
                statuses.append(
                    DeviceStatus(
                        pool=self.options.node_name,
                        device=plan.device,
                        share_id=share,
                        interface_name=plan.name if plan.kind != "rdma" else None,
                        ips=list(plan.addresses)[:16],
                        hardware_address=macs.get(ifindex) if ifindex else None,
                        conditions=conditions,
                    )
                )
            try:
                await writer.apply(c.ref, statuses)
            except Exception as e:
                log.warning("driver %s: status of claim %s: %s", self.driver_name, c.ref, e)

    async def _attach_failed_events(
        self, claims: Sequence[ClaimRecord], pod: Pod, error: Exception
    ) -> None:
        """A Warning Event on each claim of a pod whose attach failed (best effort)."""
        writer = self.status_writer
        if writer is None:
            return
        for c in claims:
            with contextlib.suppress(Exception):
                await writer.event(
                    c.ref, "AttachFailed", f"pod {pod.ref}: attaching the devices failed: {error}"
                )

    @staticmethod
    def _pod_macs(netns: str) -> dict[int, str]:

        try:
            with NetNs.open(netns) as ns:
                return {lk["ifindex"]: lk["mac"] for lk in netlink.dump_links(ns) if lk["mac"]}
        except Exception:
            return {}

    def _update_attached_gauge(self) -> None:
        if self.store is not None:
            metrics.ATTACHED_PODS.labels(self.driver_name).set(self.store.attachment_count())

    # ------------------------------------------------------------------ NRI hooks

    @contextlib.contextmanager
    def _hook(self) -> Iterator[None]:
        self._in_flight += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"kndkit-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Runs the driver until :meth:`stop`: state store and replay, discovery and
        publishing, the kubelet plugin, the NRI plugin, metrics, periodic rescans."""
        self._stop_event = asyncio.Event()
        self._rescan_event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._health_cond = asyncio.Condition()
        name = self.driver_name
        log.info(
            "driver %s starting on node %s (host netns %s, state %s)",
            name,
            self.options.node_name,
            self.options.host_netns or "own",
            self.state_dir,
        )
        store = self.open_store()
        try:
            await self._start_observability()
            self._api = await new_api_client(self.options.kubeconfig)
            reader = ClaimReader(self._api, name)
            self.status_writer = ClaimStatusWriter(self._api, name)
            self.claims = ClaimService(name, reader, store, self, self.status_writer)
            replay = await self.claims.replay()
            if replay.resolved or replay.failed:
                log.info(
                    "driver %s: replay resolved %s, failed %s", name, replay.resolved, replay.failed
                )
            self.publisher = SlicePublisher(self._api, name, self.options.node_name)
            await self.publisher.start()
            await self.rescan()
            await self.publisher.publish(self._published)
            self.first_publish_done = True
            metrics.LAST_PUBLISH.labels(name).set(time.time())
            metrics.PREPARED_CLAIMS.labels(name).set(len(store))
            self._update_attached_gauge()
            self._kubelet = KubeletPlugin(
                name,
                _MeteredHandler(self, self.claims),
                node_name=self.options.node_name,
                registry_dir=self.options.registry_dir,
                plugin_dir=self.plugin_dir,
                health=self,
            )
            await self._kubelet.start()
            self._nri = _make_nri_plugin(self)
            self._spawn(self._run_nri(), "nri")
            self._spawn(self._rescan_loop(), "rescan")
            self.watch_links()
            log.info("driver %s running", name)
            await self._stop_event.wait()
        finally:
            await self._shutdown()

    async def _run_nri(self) -> None:
        try:
            await self._nri.run()
        except Exception:
            log.exception("driver %s: NRI plugin stopped", self.driver_name)

    async def _rescan_loop(self) -> None:
        assert self._rescan_event is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rescan_event.wait(), self.options.rescan_interval)
            self._rescan_event.clear()
            try:
                await self.rescan()
                metrics.LAST_PUBLISH.labels(self.driver_name).set(time.time())
            except Exception as e:
                log.warning("driver %s: rescan failed: %s", self.driver_name, e)

    def watch_links(self) -> LinkEvents | None:
        """Rescans when links of the host namespace are added, removed or changed
        (rtnetlink notifications read on the loop; at most ``LINK_EVENT_BURST``
        rescans at once, then one every ``LINK_EVENT_INTERVAL_S`` seconds), besides
        the periodic rescan. Without notifications (the socket cannot be opened)
        only the periodic rescan remains: logged, not an error. Call on the loop."""
        if self._link_events is not None:
            return self._link_events
        events = LinkEvents(
            self.host_ns,
            self.request_rescan,
            interval=LINK_EVENT_INTERVAL_S,
            burst=LINK_EVENT_BURST,
        )
        try:
            events.start()
        except Exception as e:
            log.warning(
                "driver %s: no link notifications (%s); rescanning every %.0f s only",
                self.driver_name,
                e,
                self.options.rescan_interval,
            )
            metrics.ERRORS.labels(self.driver_name, "discovery", type(e).__name__).inc()
            return None
        self._link_events = events
        return events

    async def stop(self) -> None:
        """Asks :meth:`run` to return (graceful: waits for NRI hooks in flight)."""
        if self._stop_event is not None:
            self._stop_event.set()

    async def _shutdown(self) -> None:
        name = self.driver_name
        if self._idle is not None and self._in_flight:
            log.info("driver %s: waiting for %d NRI hook(s)", name, self._in_flight)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), STOP_GRACE_S)
        if self._nri is not None:
            with contextlib.suppress(Exception):
                await self._nri.stop()
        if self._kubelet is not None:
            with contextlib.suppress(Exception):
                await self._kubelet.stop()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.stop()
        if self._link_events is not None:
            self._link_events.close()
            self._link_events = None
        for t in list(self._background):
            t.cancel()
        for t in list(self._background):
            with contextlib.suppress(BaseException):
                await t
        if self._observability is not None:
            with contextlib.suppress(Exception):
                await self._observability.stop()
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._api.close()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.host_ns is not None:
            self.host_ns.close()
        log.info("driver %s stopped", name)

    # ------------------------------------------------------------------ observability

    def live(self) -> tuple[bool, str]:
        """Liveness: the event loop answers (this runs on it)."""
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Readiness: registered with the kubelet, NRI synchronized, first publish done."""
        if not self.first_publish_done:
            return False, "devices not published yet"
        if self._kubelet is None or not self._kubelet.registered.is_set():
            return False, "not registered with the kubelet"
        if self._nri is None or not self._nri.synchronized.is_set():
            return False, "NRI plugin not synchronized"
        return True, "ok"

    async def _start_observability(self) -> None:
        port = self.options.metrics_port
        if port is None or port < 0:
            return
        self._observability = metrics.ObservabilityServer(
            port, host=self.options.metrics_host, ready=self.ready, live=self.live
        )
        await self._observability.start()
        actual = int(self._observability.port)
        # The actual port (an ephemeral one for port 0), for whoever started us.
        with contextlib.suppress(OSError):
            path = os.path.join(self.state_dir, "metrics.port")
            with open(path + ".tmp", "w") as f:
                f.write(f"{actual}\n")
            os.replace(path + ".tmp", path)
        log.info(
            "driver %s: metrics on http://%s:%d/metrics",
            self.driver_name,
            self.options.metrics_host,
            actual,
        )

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics server listens on (``None`` when off)."""
        return None if self._observability is None else int(self._observability.port)


class _MeteredHandler:
    """The claim service with DRA request metrics around it."""

    def __init__(self, driver: NetworkDriver, service: ClaimService) -> None:
        self.driver = driver
        self.service = service

    async def prepare_resource_claims(self, claims: Sequence[Any]) -> Mapping[str, Any]:
        return await self._call(
            "NodePrepareResources", self.service.prepare_resource_claims, claims
        )

    async def unprepare_resource_claims(self, claims: Sequence[Any]) -> Mapping[str, Any]:
        return await self._call(
            "NodeUnprepareResources", self.service.unprepare_resource_claims, claims
        )

    async def _call(self, method: str, fn: Any, claims: Sequence[Any]) -> Mapping[str, Any]:
        name = self.driver.driver_name
        t0 = time.perf_counter()
        try:
            out: Mapping[str, Any] = await fn(claims)
        except Exception:
            metrics.DRA_REQUESTS.labels(name, method, "error").inc()
            raise
        metrics.DRA_LATENCY.labels(name, method).observe(time.perf_counter() - t0)
        for res in out.values():
            metrics.DRA_REQUESTS.labels(name, method, "error" if res.error else "ok").inc()
        if self.driver.store is not None:
            metrics.PREPARED_CLAIMS.labels(name).set(len(self.driver.store))
        if method == "NodeUnprepareResources":
            self.driver.request_rescan()  # devices no longer in use may be gone
        return out


def _check_pod_names(
    label: str, plans: Sequence[InterfacePlan], others: Sequence[InterfacePlan]
) -> None:
    """Refuses two plans naming the same interface inside the pod: among
    ``plans`` (one claim), or between them and ``others`` (the plans of the
    other claims prepared for the same pod). RDMA-only plans make no interface."""
    seen: dict[str, tuple[InterfacePlan, str]] = {}
    for plan, origin in [
        *((p, "another claim of the pod") for p in others),
        *((p, "this claim") for p in plans),
    ]:
        if plan.kind == "rdma":
            continue
        if plan.name not in seen:
            seen[plan.name] = (plan, origin)
            continue
        prev, where = seen[plan.name]
        raise ConfigError(
            f"{label}: devices {prev.device} and {plan.device} would both be named "
            f"{plan.name!r} in the pod ({prev.device} from {where}); give each its own "
            "interface name",
            field="",
            claim=label.removeprefix("claim "),
            device=plan.device,
        )


def _make_nri_plugin(driver: NetworkDriver) -> Any:
    """The driver's NRI plugin (a private kndkit.nri.Plugin subclass)."""

    class _DriverPlugin(Plugin):
        async def _observe(self, event: str, coro: Any) -> Any:
            t0 = time.perf_counter()
            with driver._hook():
                try:
                    out = await coro
                except Exception as e:
                    metrics.NRI_REQUESTS.labels(driver.driver_name, event, "error").inc()
                    metrics.ERRORS.labels(driver.driver_name, "nri", type(e).__name__).inc()
                    raise
            metrics.NRI_REQUESTS.labels(driver.driver_name, event, "ok").inc()
            metrics.NRI_LATENCY.labels(driver.driver_name, event).observe(time.perf_counter() - t0)
            return out

        async def synchronize(self, pods: list[Pod], containers: list[Container]) -> None:
            await self._observe("Synchronize", driver.reconcile(pods))
            driver.nri_synchronized = True

        async def run_pod_sandbox(self, pod: Pod) -> None:
            task = asyncio.current_task()
            await self._observe(
                "RunPodSandbox", driver.attach_pod(pod, cancelled=lambda: task in self._late)
            )

        async def stop_pod_sandbox(self, pod: Pod) -> None:
            await self._observe("StopPodSandbox", driver.detach_pod(pod.uid))

        async def remove_pod_sandbox(self, pod: Pod) -> None:
            await self._observe("RemovePodSandbox", driver.detach_pod(pod.uid))

    class _InjectingPlugin(_DriverPlugin):
        async def create_container(
            self, pod: Pod, container: Container
        ) -> ContainerAdjustment | None:
            async def inject() -> ContainerAdjustment | None:
                rec = driver.open_store().get_attachment(pod.uid)
                if rec is None:
                    return None
                plans = driver._plans_of(rec.plans)
                return await driver.on_create_container(pod, container, plans)

            result: ContainerAdjustment | None = await self._observe("CreateContainer", inject())
            return result

    cls = type(driver)
    inject = cls.inject_devices or _overrides(cls, "on_create_container")
    plugin_cls = _InjectingPlugin if inject else _DriverPlugin
    return plugin_cls(
        driver.nri_plugin_name, driver.options.nri_index, socket_path=driver.options.nri_socket
    )


def run(driver_cls: type[NetworkDriver], argv: Sequence[str] | None = None) -> None:
    """Entry point of a driver file (``python mydriver.py ...``): parses the same
    options as ``kndkit run``, sets up logging and runs the driver until SIGTERM
    or SIGINT; exits the process with the driver's status."""

    from kndkit.runner import main_for_class  # noqa: PLC0415 (runner imports this module)

    sys.exit(main_for_class(driver_cls, argv))
