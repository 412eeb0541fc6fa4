"""Publishing a node's devices as the ResourceSlices of one pool.

:class:`SlicePublisher` keeps the API server's ResourceSlices of one driver on one
node equal to a desired device list:

- one pool per node (pool name = node name), each slice owned by the Node object
  (so the garbage collector removes them with the node);
- devices split at the API's per-slice limit (128, or 64 when taints are used);
  a device stays in the slice it is already in, so changing one device rewrites
  one slice;
- ``pool.generation`` is raised, and every slice rewritten with it, whenever more
  than one slice of the pool changes (or slices are added or removed, which
  changes ``resourceSliceCount``), so a consumer never combines two versions of
  the pool; a change confined to one slice updates it in place;
- desired and observed *content* are compared (not resourceVersions): a publish
  of what is already there makes no write, and content the server normalises
  (a defaulted field) is remembered so it does not cause a rewrite loop;
- obsolete slices (another pool of this driver on this node, or a slice no longer
  needed) are deleted with uid/resourceVersion preconditions, then slices are
  updated, then created; a conflict re-reads the slices and plans again;
- a watch on this driver's slices of the node notices slices changed or deleted
  by someone else (the kubelet deletes them all when it restarts) and
  republishes them after ``min_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.aio import watch as k8s_watch
from kubernetes.aio.client.exceptions import ApiException

from kndkit.devices import (
    MAX_DEVICES_PER_SLICE,
    MAX_DEVICES_PER_SLICE_WITH_TAINTS,
    Device,
    validate_device,
)
from kndkit.errors import InvalidArgument
from kndkit.k8s._slim import client as k8s
from kndkit.k8s.client import (
    RESOURCE_GROUP,
    RESOURCE_VERSION,
    api_error_reason,
    api_error_text,
    check_resource_api,
    to_dict,
)
from kndkit.k8s.errors import PublishError

__all__ = ["PublishStats", "SlicePublisher", "plan_placement", "slice_name_prefix"]

log = logging.getLogger("kndkit.k8s.publisher")

_API_VERSION = f"{RESOURCE_GROUP}/{RESOURCE_VERSION}"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_ATTEMPTS = 6  # plan+write rounds per sync when writes conflict
_MAX_BACKOFF_S = 30.0
_WATCH_TIMEOUT_S = 240  # below the client's 300 s request timeout; the watch is then renewed


@dataclass
class PublishStats:
    """API writes made by a publisher (cumulative in :attr:`SlicePublisher.stats`)."""

    creates: int = 0
    updates: int = 0
    deletes: int = 0

    @property
    def writes(self) -> int:
        """All writes: creates + updates + deletes."""
        return self.creates + self.updates + self.deletes

    def __add__(self, other: PublishStats) -> PublishStats:
        return PublishStats(
            self.creates + other.creates,
            self.updates + other.updates,
            self.deletes + other.deletes,
        )

    def __sub__(self, other: PublishStats) -> PublishStats:
        return PublishStats(
            self.creates - other.creates,
            self.updates - other.updates,
            self.deletes - other.deletes,
        )


class _Conflict(Exception):
    """A write lost a race; the caller re-reads and plans again."""


def slice_name_prefix(driver: str, node_name: str) -> str:
    """The name prefix of a node's slices: ``<node>-<driver>`` made a DNS label-ish string."""
    return re.sub(r"[^a-z0-9-]", "-", f"{node_name}-{driver}".lower())[:200].strip("-")


def plan_placement(
    device_names: Sequence[str],
    current: Mapping[str, Sequence[str]],
    *,
    limit: int,
    prefix: str,
) -> dict[str, list[str]]:
    """Which slice each device goes to: slice name -> sorted device names.

    A device stays in the slice of ``current`` (slice name -> its device names)
    that holds it, as long as that slice has room under ``limit``; a device listed
    in several slices stays in the first one in ``current``'s iteration order. The
    others fill existing slices with room (in name order), then new slices named
    ``<prefix>-<n>`` with the smallest unused ``n``. Slices left without devices
    are not in the result. No devices -> no slices.
    """
    if limit <= 0:
        raise InvalidArgument(f"slice limit must be positive, got {limit}")
    wanted = set(device_names)
    placed: set[str] = set()
    out: dict[str, list[str]] = {}
    for name in current:
        keep: list[str] = []
        for dev in current[name]:
            if dev in wanted and dev not in placed and len(keep) < limit:
                keep.append(dev)
                placed.add(dev)
        out[name] = keep
    rest = sorted(wanted - placed)
    for name in sorted(out):
        room = limit - len(out[name])
        if room > 0 and rest:
            out[name].extend(rest[:room])
            rest = rest[room:]
    used = set(out)
    n = 0
    while rest:
        while f"{prefix}-{n}" in used:
            n += 1
        name = f"{prefix}-{n}"
        used.add(name)
        out[name] = rest[:limit]
        rest = rest[limit:]
    return {name: sorted(devs) for name, devs in out.items() if devs}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _content(obj: Mapping[str, Any]) -> str:
    """What the publisher owns in a slice, generation left out."""
    spec = obj.get("spec") or {}
    pool = dict(spec.get("pool") or {})
    pool.pop("generation", None)
    return _canon(
        {
            "owners": (obj.get("metadata") or {}).get("ownerReferences") or [],
            "driver": spec.get("driver"),
            "nodeName": spec.get("nodeName"),
            "pool": pool,
            "devices": spec.get("devices") or [],
            "other": {
                k: v
                for k, v in spec.items()
                if k not in ("driver", "nodeName", "pool", "devices") and v not in (None, [], {})
            },
        }
    )


def _generation(obj: Mapping[str, Any]) -> int:
    return int(((obj.get("spec") or {}).get("pool") or {}).get("generation") or 0)


def _pool_name(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("spec") or {}).get("pool") or {}).get("name") or "")


class SlicePublisher:
    """Keeps the ResourceSlices of ``driver`` on ``node_name`` equal to a device list.

    ``update()`` hands over a new list (validated at once) and returns; a background
    task publishes the latest list at most once per ``min_interval`` seconds.
    ``publish()`` writes now. :attr:`stats` counts every API write made.
    """

    def __init__(
        self, api: k8s.ApiClient, driver: str, node_name: str, *, min_interval: float = 1.0
    ) -> None:
        if len(driver) > 63 or not _DNS_SUBDOMAIN.match(driver):
            raise InvalidArgument(f"driver name {driver!r} is not a DNS subdomain of <= 63 chars")
        if not node_name or len(node_name) > 253:
            raise InvalidArgument(f"node name {node_name!r} must be 1-253 characters")
        if min_interval < 0:
            raise InvalidArgument(f"min_interval must be >= 0, got {min_interval}")
        self.driver = driver
        self.node_name = node_name
        self.min_interval = min_interval
        self.stats = PublishStats()
        self._api = api
        self._res = k8s.ResourceV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._prefix = slice_name_prefix(driver, node_name)
        self._selector = f"spec.driver={driver},spec.nodeName={node_name}"
        self._desired: dict[str, dict[str, Any]] | None = None  # device name -> API JSON
        self._limit = MAX_DEVICES_PER_SLICE
        self._owner: dict[str, Any] | None = None
        self._generation = 0  # highest pool generation written or seen
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_sync = float("-inf")
        self._last_error: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        # Own writes, so the watch does not react to them.
        self._own_rv: dict[str, str] = {}
        self._own_deleted: set[str] = set()
        # slice name -> (content written, content the server stored)
        self._memo: dict[str, tuple[str, str]] = {}
        self._warned: set[str] = set()
        self._placed: dict[str, list[str]] = {}  # the last placement made

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Checks the API, looks up the Node (owner of the slices), starts the
        watch of this driver's slices on the node and the background publisher.

        Raises :class:`ResourceAPIUnavailable` without ``resource.k8s.io/v1``,
        :class:`PublishError` when the Node cannot be read.
        """
        if self._started:
            return
        await check_resource_api(self._api)
        await self._ensure_owner()
        self._started = True
        self._tasks = [
            asyncio.create_task(self._watch_loop(), name=f"kndkit-slices-watch-{self.node_name}"),
            asyncio.create_task(self._run_loop(), name=f"kndkit-slices-publish-{self.node_name}"),
        ]
        if self._desired is not None:
            self._trigger()

    async def stop(self) -> None:
        """Stops the background tasks. Published slices stay (a restarted driver
        finds them and rewrites nothing that is still right)."""
        tasks, self._tasks = self._tasks, []
        self._started = False
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._idle.set()

    async def __aenter__(self) -> SlicePublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ public

    def update(self, devices: Sequence[Device]) -> None:
        """Makes ``devices`` the desired set and returns; the background task
        publishes it (coalesced with later updates, at most once per
        ``min_interval``). Invalid devices raise :class:`InvalidArgument` at once,
        naming the device and attribute, and change nothing."""
        self._set_desired(devices)
        self._trigger()

    async def publish(self, devices: Sequence[Device]) -> PublishStats:
        """Publishes ``devices`` now; returns the writes this call made."""
        self._set_desired(devices)
        async with self._lock:
            self._dirty.clear()
            before = copy.copy(self.stats)
            try:
                await self._sync()
            except BaseException:
                self._dirty.set()
                raise
            finally:
                self._last_sync = asyncio.get_running_loop().time()
            self._last_error = None
            if self._dirty.is_set() and self._started:
                self._idle.clear()
            else:
                self._idle.set()  # an update() this publish superseded is done too
            return self.stats - before

    async def wait_idle(self) -> None:
        """Waits until the desired devices are published and nothing is pending.

        Raises :class:`PublishError` when the last attempt failed (the background
        task keeps retrying) or when the publisher was not started.
        """
        if not self._started:
            if self._dirty.is_set():
                raise PublishError("the publisher is not started: call start() first")
            return
        await self._idle.wait()
        if self._last_error is not None:
            raise PublishError(
                f"publishing ResourceSlices of node {self.node_name!r} failed: {self._last_error}"
            ) from self._last_error

    # ------------------------------------------------------------------ internals

    def _set_desired(self, devices: Sequence[Device]) -> None:
        seen: dict[str, dict[str, Any]] = {}
        for d in devices:
            validate_device(d)
            if d.name in seen:
                raise InvalidArgument(f"device {d.name!r} appears twice in the device list")
            seen[d.name] = d.to_api()
        self._limit = (
            MAX_DEVICES_PER_SLICE_WITH_TAINTS
            if any(d.taints for d in devices)
            else MAX_DEVICES_PER_SLICE
        )
        self._desired = seen

    def _trigger(self) -> None:
        if self._desired is None:
            return
        self._dirty.set()
        if self._started:
            self._idle.clear()

    async def _ensure_owner(self) -> dict[str, Any]:
        if self._owner is None:
            try:
                node = await self._core.read_node(self.node_name)
            except ApiException as e:
                raise PublishError(
                    f"cannot read Node {self.node_name!r}, the owner of its ResourceSlices:"
                    f" {api_error_text(e)}"
                ) from None
            uid = node.metadata.uid if node.metadata else None
            if not uid:
                raise PublishError(f"Node {self.node_name!r} has no uid")
            self._owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node_name,
                "uid": uid,
                "controller": True,
            }
        return self._owner

    async def _run_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = max(self.min_interval, 0.1)
        while True:
            await self._dirty.wait()
            delay = self._last_sync + self.min_interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._lock:
                if not self._dirty.is_set():
                    self._idle.set()  # a publish() did it meanwhile
                    continue
                self._dirty.clear()
                try:
                    await self._sync()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # retried; reported by wait_idle
                    self._last_error = e
                    self._dirty.set()
                    log.warning(
                        "publishing ResourceSlices of node %s failed (retry in %.1f s): %s",
                        self.node_name,
                        backoff,
                        e,
                    )
                else:
                    self._last_error = None
                    backoff = max(self.min_interval, 0.1)
                finally:
                    self._last_sync = loop.time()
                if self._last_error is not None or not self._dirty.is_set():
                    self._idle.set()
            if self._last_error is not None:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _watch_loop(self) -> None:
        backoff = 0.5
        while True:
            w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            try:
                listed = await self._res.list_resource_slice(field_selector=self._selector)
                rv = listed.metadata.resource_version if listed.metadata else None
                # Anything may have happened while not watching.
                self._trigger()
                async for event in w.stream(  # type: ignore[no-untyped-call]
                    self._res.list_resource_slice,
                    field_selector=self._selector,
                    resource_version=rv,
                    timeout_seconds=_WATCH_TIMEOUT_S,
                ):
                    backoff = 0.5
                    self._on_event(str(event.get("type")), event.get("raw_object") or {})
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the watch is re-established
                log.warning("watch of ResourceSlices on %s failed: %s", self.node_name, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            finally:
                with contextlib.suppress(Exception):
                    await w.close()  # type: ignore[no-untyped-call]

    def _on_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            uid = str(meta.get("uid", ""))
            if uid in self._own_deleted:
                self._own_deleted.discard(uid)
                return
            log.info("ResourceSlice %s was deleted by someone else: republishing", name)
        elif kind in ("ADDED", "MODIFIED"):
            if self._own_rv.get(name) == meta.get("resourceVersion"):
                return
            log.debug("ResourceSlice %s %s by someone else", name, kind.lower())
        self._trigger()

    async def _list(self) -> list[dict[str, Any]]:
        listed = await self._res.list_resource_slice(field_selector=self._selector)
        out = [to_dict(self._api, item) for item in listed.items or []]
        return [
            s
            for s in out
            if (s.get("spec") or {}).get("driver") == self.driver
            and (s.get("spec") or {}).get("nodeName") == self.node_name
        ]

    async def _sync(self) -> None:
        desired = self._desired
        if desired is None:
            return
        owner = await self._ensure_owner()
        last: Exception | None = None
        for attempt in range(_MAX_ATTEMPTS):
            observed = await self._list()
            try:
                await self._apply(desired, observed, owner)
                return
            except _Conflict as e:
                last = e
                log.info(
                    "ResourceSlice write conflict (%s); re-reading (attempt %d)", e, attempt + 1
                )
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        raise PublishError(
            f"ResourceSlices of node {self.node_name!r} kept changing under the publisher: {last}"
        )

    def _same(self, name: str, want: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
        w, h = _content(want), _content(have)
        return w == h or self._memo.get(name) == (w, h)

    async def _apply(
        self,
        desired: Mapping[str, dict[str, Any]],
        observed: list[dict[str, Any]],
        owner: Mapping[str, Any],
    ) -> None:
        pool = self.node_name
        ours = {s["metadata"]["name"]: s for s in observed if _pool_name(s) == pool}
        foreign = [s for s in observed if _pool_name(s) != pool]
        # Where devices are now; then where this publisher last put them, so a
        # slice deleted by someone else comes back as it was (one write).
        current = {
            name: [str(d.get("name")) for d in (s.get("spec") or {}).get("devices") or []]
            for name, s in ours.items()
        }
        for name, devs in self._placed.items():
            current.setdefault(name, devs)
        placement = plan_placement(list(desired), current, limit=self._limit, prefix=self._prefix)
        count = len(placement)
        wanted: dict[str, dict[str, Any]] = {}
        for name, devs in placement.items():
            wanted[name] = {
                "apiVersion": _API_VERSION,
                "kind": "ResourceSlice",
                "metadata": {"name": name, "ownerReferences": [dict(owner)]},
                "spec": {
                    "driver": self.driver,
                    "nodeName": self.node_name,
                    "pool": {"name": pool, "generation": 0, "resourceSliceCount": count},
                    "devices": [desired[d] for d in devs],
                },
            }
        deletes = foreign + [s for name, s in ours.items() if name not in wanted]
        changed = [n for n in wanted if n not in ours or not self._same(n, wanted[n], ours[n])]
        gens = {_generation(s) for s in ours.values()}
        changes = len(changed) + sum(1 for name in ours if name not in wanted)
        mixed = len(gens) > 1
        if changes == 0 and not mixed:
            generation, to_write = max(gens, default=self._generation), []
        elif changes == 1 and not mixed and ours:
            # Confined to one slice: consumers see either version of it, both whole.
            generation, to_write = max(gens), changed
        else:
            generation = max(max(gens, default=0), self._generation) + 1
            to_write = list(wanted)
        if not deletes and not to_write:
            self._placed = placement
            return
        log.info(
            "ResourceSlices of node %s: %d devices in %d slices, generation %d:"
            " %d to delete, %d to write",
            self.node_name,
            len(desired),
            count,
            generation,
            len(deletes),
            len(to_write),
        )
        for s in deletes:
            await self._delete(s)
        for name in to_write:
            wanted[name]["spec"]["pool"]["generation"] = generation
        for name in sorted(n for n in to_write if n in ours):
            await self._update(wanted[name], ours[name])
        for name in sorted(n for n in to_write if n not in ours):
            await self._create(wanted[name])
        self._generation = max(self._generation, generation)
        self._placed = placement

    def _remember(self, name: str, written: Mapping[str, Any], stored: Any) -> None:
        stored_d = to_dict(self._api, stored)
        meta = stored_d.get("metadata") or {}
        self._own_rv[name] = str(meta.get("resourceVersion", ""))
        w, s = _content(written), _content(stored_d)
        self._memo[name] = (w, s)
        if w != s and w not in self._warned:
            self._warned.add(w)
            log.warning(
                "the API server stored ResourceSlice %s differently from what was written"
                " (a field dropped or defaulted; a feature gate may be off)",
                name,
            )

    async def _delete(self, s: Mapping[str, Any]) -> None:
        meta = s["metadata"]
        name = str(meta["name"])
        body = k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion")
            )
        )
        self._own_deleted.add(str(meta.get("uid")))
        try:
            await self._res.delete_resource_slice(name, body=body)
        except ApiException as e:
            if e.status == 404:
                return
            self._own_deleted.discard(str(meta.get("uid")))
            if e.status == 409:
                raise _Conflict(f"delete {name}: {api_error_text(e)}") from None
            raise PublishError(f"deleting ResourceSlice {name}: {api_error_text(e)}") from None
        self._own_rv.pop(name, None)
        self._memo.pop(name, None)
        self.stats.deletes += 1

    async def _update(self, obj: dict[str, Any], have: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        meta = dict(have.get("metadata") or {})
        meta.pop("managedFields", None)
        meta["ownerReferences"] = obj["metadata"]["ownerReferences"]
        body = {**obj, "metadata": meta}
        try:
            stored = await self._res.replace_resource_slice(name, body)  # type: ignore[arg-type]
        except ApiException as e:
            if e.status in (404, 409):
                raise _Conflict(f"update {name}: {api_error_text(e)}") from None
            raise PublishError(f"updating ResourceSlice {name}: {api_error_text(e)}") from None
        self.stats.updates += 1
        self._remember(name, obj, stored)

    async def _create(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        try:
            stored = await self._res.create_resource_slice(obj)  # type: ignore[arg-type]
        except ApiException as e:
            if e.status == 409 and api_error_reason(e) == "AlreadyExists":
                raise _Conflict(f"create {name}: {api_error_text(e)}") from None
            raise PublishError(f"creating ResourceSlice {name}: {api_error_text(e)}") from None
        self.stats.creates += 1
        self._remember(name, obj, stored)
