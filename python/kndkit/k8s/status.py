"""Reporting device status on a ResourceClaim, and Events about it.

:class:`ClaimStatusWriter` writes this driver's entries of ``status.devices``
(one per allocated device: a ``Ready`` condition, ``networkData`` and free-form
``data``) with server-side apply on the ``resourceclaims/status`` subresource,
field manager = the driver name, so entries of other drivers and the scheduler's
allocation are never touched. Sizes are checked locally against the API's
limits first: bad input raises :class:`InvalidArgument` and writes nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from kndkit.dra.types import ClaimRef
from kndkit.errors import InvalidArgument, KndError
from kndkit.k8s._slim import client as k8s
from kndkit.k8s.client import RESOURCE_GROUP, RESOURCE_VERSION, api_error_text, to_dict
from kndkit.k8s.errors import ClaimError, ClaimNotFound, ClaimReplaced

__all__ = [
    "MAX_CONDITIONS",
    "MAX_DATA_BYTES",
    "MAX_HARDWARE_ADDRESS",
    "MAX_INTERFACE_NAME",
    "MAX_IPS",
    "ClaimStatusWriter",
    "DeviceStatus",
    "device_status_entry",
    "validate_device_status",
]

log = logging.getLogger("kndkit.k8s.status")

#: ``networkData.interfaceName`` length.
MAX_INTERFACE_NAME = 256
#: ``networkData.ips`` entries.
MAX_IPS = 16
#: ``networkData.hardwareAddress`` length.
MAX_HARDWARE_ADDRESS = 128
#: Serialized size of ``data``.
MAX_DATA_BYTES = 10 * 1024
#: Conditions per device entry.
MAX_CONDITIONS = 8
_MAX_REASON = 1024
_MAX_MESSAGE = 32768
_MAX_EVENT_NOTE = 1024
_MAX_UPDATE_ATTEMPTS = 5
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
_CONDITION_TYPE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_API_VERSION = f"{RESOURCE_GROUP}/{RESOURCE_VERSION}"


@dataclass
class DeviceStatus:
    """This driver's status of one allocated device.

    ``ready``/``reason``/``message`` make the ``Ready`` condition (``reason``
    defaults to ``Ready`` / ``NotReady``). ``conditions`` adds more conditions
    (``type``, ``status``, ``reason``, ``message``), at most 8 in all.
    ``interface_name``/``ips`` (CIDRs, ``10.0.0.2/24``)/``hardware_address``
    become ``networkData``; ``data`` is free-form JSON (at most 10 KiB).
    """

    pool: str
    device: str
    share_id: str | None = None
    interface_name: str | None = None
    ips: Sequence[str] = ()
    hardware_address: str | None = None
    ready: bool = True
    reason: str = ""
    message: str = ""
    data: Mapping[str, Any] | None = None
    conditions: Sequence[Mapping[str, Any]] = ()


def _check_condition(label: str, cond: Mapping[str, Any]) -> None:
    ctype = str(cond.get("type", ""))
    if not ctype or len(ctype) > 316 or not _CONDITION_TYPE.match(ctype):
        raise InvalidArgument(f"{label}: condition type {ctype!r} is not a qualified name")
    if cond.get("status") not in ("True", "False", "Unknown"):
        raise InvalidArgument(
            f"{label}: condition {ctype}: status must be True, False or Unknown,"
            f" got {cond.get('status')!r}"
        )
    reason = str(cond.get("reason", ""))
    if not reason or len(reason) > _MAX_REASON or not _REASON.match(reason):
        raise InvalidArgument(
            f"{label}: condition {ctype}: reason {reason!r} must be CamelCase"
            f" ([A-Za-z][A-Za-z0-9_,:]*, <= {_MAX_REASON} chars)"
        )
    if len(str(cond.get("message", ""))) > _MAX_MESSAGE:
        raise InvalidArgument(f"{label}: condition {ctype}: message over {_MAX_MESSAGE} chars")


def _ready_condition(ds: DeviceStatus) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True" if ds.ready else "False",
        "reason": ds.reason or ("Ready" if ds.ready else "NotReady"),
        "message": ds.message,
    }


def validate_device_status(ds: DeviceStatus) -> None:
    """Checks ``ds`` against the API's limits; :class:`InvalidArgument` names the
    device and the field."""
    label = f"device {ds.pool}/{ds.device}"
    if not ds.pool or not ds.device:
        raise InvalidArgument(f"{label}: pool and device must be set")
    if ds.interface_name is not None and len(ds.interface_name) > MAX_INTERFACE_NAME:
        raise InvalidArgument(
            f"{label}: networkData.interfaceName of {len(ds.interface_name)} chars,"
            f" the API allows {MAX_INTERFACE_NAME}"
        )
    if isinstance(ds.ips, str):
        raise InvalidArgument(f"{label}: networkData.ips must be a list of CIDRs, not a string")
    if len(ds.ips) > MAX_IPS:
        raise InvalidArgument(
            f"{label}: networkData.ips has {len(ds.ips)} entries, the API allows {MAX_IPS}"
        )
    seen: set[str] = set()
    for i, ip in enumerate(ds.ips):
        try:
            if "/" not in ip:
                raise ValueError("no prefix length")
            ipaddress.ip_interface(ip)
        except ValueError as e:
            raise InvalidArgument(
                f"{label}: networkData.ips[{i}] {ip!r} is not a CIDR (address/prefix): {e}"
            ) from None
        if ip in seen:
            raise InvalidArgument(f"{label}: networkData.ips[{i}] {ip!r} is listed twice")
        seen.add(ip)
    if ds.hardware_address is not None and len(ds.hardware_address) > MAX_HARDWARE_ADDRESS:
        raise InvalidArgument(
            f"{label}: networkData.hardwareAddress of {len(ds.hardware_address)} chars,"
            f" the API allows {MAX_HARDWARE_ADDRESS}"
        )
    if ds.data is not None:
        try:
            size = len(json.dumps(dict(ds.data), separators=(",", ":")).encode())
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"{label}: data is not JSON-serializable: {e}") from None
        if size > MAX_DATA_BYTES:
            raise InvalidArgument(
                f"{label}: data is {size} bytes as JSON, the API allows {MAX_DATA_BYTES}"
            )
    conditions = [_ready_condition(ds), *ds.conditions]
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidArgument(
            f"{label}: {len(conditions)} conditions (Ready included), the API allows"
            f" {MAX_CONDITIONS}"
        )
    types: set[str] = set()
    for cond in conditions:
        _check_condition(label, cond)
        if cond["type"] in types:
            raise InvalidArgument(f"{label}: condition {cond['type']} is listed twice")
        types.add(cond["type"])


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def device_status_entry(
    ds: DeviceStatus,
    driver: str,
    *,
    generation: int = 0,
    previous: Mapping[str, Any] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The ``status.devices[]`` JSON of ``ds``. A condition keeps the
    ``lastTransitionTime`` it has in ``previous`` (the entry now on the claim)
    when its status did not change."""
    now = now or _now()
    before = {
        c.get("type"): c for c in (previous or {}).get("conditions") or [] if isinstance(c, Mapping)
    }
    conditions = []
    for cond in [_ready_condition(ds), *ds.conditions]:
        out: dict[str, Any] = {
            "type": str(cond["type"]),
            "status": str(cond["status"]),
            "reason": str(cond["reason"]),
            "message": str(cond.get("message", "")),
        }
        old = before.get(out["type"])
        same = old is not None and old.get("status") == out["status"]
        out["lastTransitionTime"] = str(old["lastTransitionTime"]) if same and old else now
        if generation:
            out["observedGeneration"] = generation
        conditions.append(out)
    entry: dict[str, Any] = {
        "driver": driver,
        "pool": ds.pool,
        "device": ds.device,
        "conditions": conditions,
    }
    if ds.share_id:
        entry["shareID"] = ds.share_id
    network: dict[str, Any] = {}
    if ds.interface_name:
        network["interfaceName"] = ds.interface_name
    if ds.ips:
        network["ips"] = list(ds.ips)
    if ds.hardware_address:
        network["hardwareAddress"] = ds.hardware_address
    if network:
        entry["networkData"] = network
    if ds.data is not None:
        entry["data"] = dict(ds.data)
    return entry


def _key(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(entry.get("driver", "")),
        str(entry.get("pool", "")),
        str(entry.get("device", "")),
        str(entry.get("shareID") or ""),
    )


class ClaimStatusWriter:
    """Writes this driver's ``status.devices`` entries of claims, and Events.

    ``instance`` names this agent in Events (``reportingInstance``); it defaults
    to the host name.
    """

    def __init__(self, api: k8s.ApiClient, driver: str, *, instance: str | None = None) -> None:
        self.driver = driver
        self.instance = (instance or socket.gethostname() or driver)[:128]
        self._api = api
        self._res = k8s.ResourceV1Api(api)
        self._events = k8s.EventsV1Api(api)
        self._core = k8s.CoreV1Api(api)

    def _error(self, claim: ClaimRef, what: str, e: ApiException) -> KndError:
        text = api_error_text(e)
        label = f"ResourceClaim {claim.namespace}/{claim.name}"
        kw = {"namespace": claim.namespace, "name": claim.name, "uid": claim.uid}
        if e.status == 404:
            return ClaimNotFound(f"{label} not found", **kw)
        if e.status in (409, 422) and "metadata.uid" in text:
            return ClaimReplaced(f"{label} is not the claim with UID {claim.uid}: {text}", **kw)
        if e.status == 403 or "Forbidden:" in text:
            return ClaimError(f"{what} of {label} is forbidden to this identity: {text}", **kw)
        if e.status == 422:
            return InvalidArgument(f"{what} of {label} rejected by the API server: {text}")
        return ClaimError(f"{what} of {label} failed: {text}", **kw)

    async def _apply(self, claim: ClaimRef, entries: list[dict[str, Any]]) -> dict[str, Any]:
        body = {
            "apiVersion": _API_VERSION,
            "kind": "ResourceClaim",
            "metadata": {"name": claim.name, "namespace": claim.namespace, "uid": claim.uid},
            "status": {"devices": entries} if entries else {},
        }
        stored = await self._res.patch_namespaced_resource_claim_status(
            claim.name,
            claim.namespace,
            body,
            field_manager=self.driver,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        return to_dict(self._api, stored)

    async def _update(self, claim: ClaimRef, entries: list[dict[str, Any]]) -> None:
        """The same change as :meth:`_apply` as a read-modify-write Update of
        ``/status`` (field manager = driver), retried on conflicts."""
        for attempt in range(_MAX_UPDATE_ATTEMPTS):
            obj = to_dict(
                self._api,
                await self._res.read_namespaced_resource_claim(claim.name, claim.namespace),
            )
            meta = obj.get("metadata") or {}
            if claim.uid and meta.get("uid") != claim.uid:
                raise ClaimReplaced(
                    f"ResourceClaim {claim.namespace}/{claim.name} has UID {meta.get('uid')},"
                    f" not {claim.uid}: the claim was replaced",
                    namespace=claim.namespace,
                    name=claim.name,
                    uid=claim.uid,
                )
            meta.pop("managedFields", None)
            status = obj.setdefault("status", {})
            others = [e for e in status.get("devices") or [] if e.get("driver") != self.driver]
            status["devices"] = others + entries
            if not status["devices"]:
                status.pop("devices")
            try:
                await self._res.replace_namespaced_resource_claim_status(
                    claim.name,
                    claim.namespace,
                    obj,  # type: ignore[arg-type]
                    field_manager=self.driver,
                )
                return
            except ApiException as e:
                if e.status != 409 or attempt == _MAX_UPDATE_ATTEMPTS - 1:
                    raise
                log.debug("status update of %s conflicted; retrying", claim)

    async def _write(self, claim: ClaimRef, entries: list[dict[str, Any]]) -> None:
        try:
            stored = await self._apply(claim, entries)
        except ApiException as e:
            text = api_error_text(e)
            if not (
                e.status == 422
                and "status.allocation" in text
                and "field cannot be modified once set" in text
            ):
                raise
            # kube-apiserver v1.37.2 refuses every PATCH (server-side apply
            # included) of a claim whose allocation carries opaque config
            # ("status.allocation: Invalid value: null: field cannot be modified
            # once set"), though nothing there changes; an Update is accepted.
            log.debug("server-side apply of %s refused (%s); using an update", claim, text)
            await self._update(claim, entries)
            return
        # Entries of this driver that an Update (the fallback above) wrote are not
        # owned by the apply and stay: remove them with an update too.
        have = {_key(e) for e in (stored.get("status") or {}).get("devices") or []}
        want = {_key(e) for e in entries}
        if {k for k in have if k[0] == self.driver} != want:
            log.debug("%s: entries of %s left by an earlier update; updating", claim, self.driver)
            await self._update(claim, entries)

    async def apply(self, claim: ClaimRef, devices: Sequence[DeviceStatus]) -> None:
        """Makes ``devices`` this driver's entries of the claim's ``status.devices``
        (server-side apply, field manager = driver): entries of this driver not
        in ``devices`` are removed.

        Raises :class:`InvalidArgument` for a status over the API's limits or for
        a device not allocated to this driver in the claim (nothing is written),
        :class:`ClaimNotFound`, :class:`ClaimReplaced` (UID differs).
        """
        keys: set[tuple[str, str, str, str]] = set()
        for ds in devices:
            validate_device_status(ds)
            key = (self.driver, ds.pool, ds.device, ds.share_id or "")
            if key in keys:
                raise InvalidArgument(f"device {ds.pool}/{ds.device} is listed twice")
            keys.add(key)
        label = f"ResourceClaim {claim.namespace}/{claim.name}"
        try:
            obj = await self._res.read_namespaced_resource_claim(claim.name, claim.namespace)
        except ApiException as e:
            raise self._error(claim, "reading", e) from None
        data = to_dict(self._api, obj)
        meta = data.get("metadata") or {}
        if claim.uid and meta.get("uid") != claim.uid:
            raise ClaimReplaced(
                f"{label} has UID {meta.get('uid')}, not {claim.uid}: the claim was replaced",
                namespace=claim.namespace,
                name=claim.name,
                uid=claim.uid,
            )
        status = data.get("status") or {}
        results = ((status.get("allocation") or {}).get("devices") or {}).get("results") or []
        allocated = {
            (r.get("pool"), r.get("device"), r.get("shareID") or "")
            for r in results
            if r.get("driver") == self.driver
        }
        for ds in devices:
            if (ds.pool, ds.device, ds.share_id or "") not in allocated:
                raise InvalidArgument(
                    f"device {ds.pool}/{ds.device} is not allocated to {self.driver} in {label}"
                )
        previous = {_key(e): e for e in status.get("devices") or []}
        generation = int(meta.get("generation") or 0)
        now = _now()
        entries = [
            device_status_entry(
                ds,
                self.driver,
                generation=generation,
                previous=previous.get((self.driver, ds.pool, ds.device, ds.share_id or "")),
                now=now,
            )
            for ds in devices
        ]
        try:
            await self._write(claim, entries)
        except ApiException as e:
            raise self._error(claim, "status update", e) from None
        log.debug("%s: status of %d devices applied", label, len(entries))

    async def clear(self, claim: ClaimRef) -> None:
        """Removes this driver's ``status.devices`` entries from the claim. A claim
        that is gone (or replaced by one with another UID) is left alone."""
        try:
            await self._write(claim, [])
        except ClaimReplaced as e:
            log.debug("clear: %s", e)
            return
        except ApiException as e:
            err = self._error(claim, "clearing status", e)
            if isinstance(err, ClaimNotFound | ClaimReplaced):
                log.debug("clear: %s", err)
                return
            raise err from None

    async def event(
        self,
        claim: ClaimRef,
        reason: str,
        message: str,
        *,
        type: str = "Warning",
        action: str = "",
    ) -> None:
        """Records an Event about the claim (``events.k8s.io/v1``; ``core/v1`` when
        the server lacks it). ``reason`` is CamelCase; ``message`` is cut to 1 KiB.
        Failing to record is logged, not raised (Events are best effort); a bad
        ``type`` or ``reason`` raises :class:`InvalidArgument`."""
        if type not in ("Normal", "Warning"):
            raise InvalidArgument(f"event type must be Normal or Warning, got {type!r}")
        if not reason or len(reason) > 128 or not _REASON.match(reason):
            raise InvalidArgument(f"event reason {reason!r} must be CamelCase, <= 128 chars")
        note = message.encode()[:_MAX_EVENT_NOTE].decode(errors="ignore")
        now = datetime.datetime.now(datetime.UTC)
        # MicroTime is parsed with exactly six fraction digits.
        now = now.replace(microsecond=now.microsecond or 1)
        name = f"{claim.name}.{secrets.token_hex(8)}"
        regarding = {
            "apiVersion": _API_VERSION,
            "kind": "ResourceClaim",
            "name": claim.name,
            "namespace": claim.namespace,
            "uid": claim.uid,
        }
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": claim.namespace},
            "eventTime": now,
            "reportingController": self.driver,
            "reportingInstance": self.instance,
            "action": (action or reason)[:128],
            "reason": reason,
            "note": note,
            "type": type,
            "regarding": regarding,
        }
        try:
            await self._events.create_namespaced_event(claim.namespace, body)  # type: ignore[arg-type]
            return
        except ApiException as e:
            if e.status != 404:
                log.warning(
                    "event %s on claim %s not recorded: %s", reason, claim, api_error_text(e)
                )
                return
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        core = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": claim.namespace},
            "involvedObject": regarding,
            "reason": reason,
            "message": note,
            "type": type,
            "source": {"component": self.driver, "host": self.instance},
            "reportingComponent": self.driver,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self._core.create_namespaced_event(claim.namespace, core)  # type: ignore[arg-type]
        except ApiException as e:
            log.warning("event %s on claim %s not recorded: %s", reason, claim, api_error_text(e))
