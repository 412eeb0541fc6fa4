"""Reading a ResourceClaim as a driver needs it.

:meth:`ClaimReader.get` turns the claim the kubelet names into a :class:`Claim`:
the pods it is reserved for, the devices allocated to *this* driver, and for each
device the opaque configuration meant for it, merged from the DeviceClass
(first) and the claim (overriding), keeping only entries for this driver whose
``requests`` list is empty or names the device's request. :func:`parse_config`
then validates that configuration against the driver's pydantic model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic
from kubernetes.aio.client.exceptions import ApiException

from kndkit.dra.types import ClaimRef
from kndkit.errors import KndError
from kndkit.k8s._slim import client as k8s
from kndkit.k8s.client import api_error_text, status_body
from kndkit.k8s.errors import (
    ClaimNotAllocated,
    ClaimNotFound,
    ClaimReplaced,
    ConfigError,
)

__all__ = [
    "AllocatedDevice",
    "Claim",
    "ClaimReader",
    "PodRef",
    "config_for_request",
    "config_layers_for_request",
    "merge_parameters",
    "parse_config",
]

log = logging.getLogger("kndkit.k8s.claims")

M = TypeVar("M", bound=pydantic.BaseModel)


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod a claim is reserved for (``status.reservedFor`` entry of resource ``pods``)."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One device allocated to this driver in a claim.

    ``config`` is the merged opaque configuration for this device's request:
    class configuration first, claim configuration overriding it (objects are
    merged key by key, recursively; any other value replaces). ``claim`` is
    ``namespace/name`` of the claim (used in error messages). ``config_layers``
    are the same parameters unmerged, one mapping per matching config entry in
    the order they apply (class entries first, claim entries last), for drivers
    with their own merge rules.
    """

    request: str
    pool: str
    device: str
    share_id: str | None = None
    admin_access: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    claim: str = ""
    config_layers: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """An allocated ResourceClaim as this driver sees it."""

    namespace: str
    name: str
    uid: str
    pods: tuple[PodRef, ...]
    devices: tuple[AllocatedDevice, ...]
    resource_version: str
    generation: int = 0

    def ref(self) -> ClaimRef:
        """The claim's :class:`~kndkit.dra.types.ClaimRef`."""
        return ClaimRef(self.namespace, self.name, self.uid)


def merge_parameters(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``: nested objects merged key by key, any other
    value (lists included) replaced. Neither input is modified."""
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge_parameters(old, value)
        else:
            out[key] = value
    return out


def _request_matches(requests: Iterable[str], request: str) -> bool:
    names = list(requests)
    if not names:
        return True
    # A result for a subrequest ("nic/fast") is covered by its parent request too.
    return request in names or request.split("/", 1)[0] in names


def config_layers_for_request(
    entries: Iterable[Mapping[str, Any]], driver: str, request: str, *, claim: str = ""
) -> list[Mapping[str, Any]]:
    """The opaque parameters of ``status.allocation.devices.config`` entries for
    one request, unmerged, in the order :func:`config_for_request` merges them
    (``FromClass`` entries first, then ``FromClaim``; see there for the filter).

    Raises :class:`ConfigError` when a matching entry's parameters are not a
    JSON object.
    """
    ordered = sorted(
        enumerate(entries), key=lambda ie: (0 if ie[1].get("source") == "FromClass" else 1, ie[0])
    )
    layers: list[Mapping[str, Any]] = []
    for index, entry in ordered:
        opaque = entry.get("opaque")
        if not isinstance(opaque, Mapping) or opaque.get("driver") != driver:
            continue
        if not _request_matches(entry.get("requests") or (), request):
            continue
        params = opaque.get("parameters")
        if params is None:
            continue
        if not isinstance(params, Mapping):
            where = f"claim {claim}: " if claim else ""
            raise ConfigError(
                f"{where}request {request!r}: opaque parameters of config entry {index}"
                f" ({entry.get('source', 'unknown source')}) must be a JSON object,"
                f" got {type(params).__name__}",
                field="",
                claim=claim,
                request=request,
            )
        layers.append(params)
    return layers


def config_for_request(
    entries: Iterable[Mapping[str, Any]], driver: str, request: str, *, claim: str = ""
) -> dict[str, Any]:
    """The merged opaque parameters of ``status.allocation.devices.config`` entries
    for one request: only ``opaque`` entries of ``driver`` whose ``requests`` is
    empty or names ``request`` (or its parent request); ``FromClass`` entries
    first, then ``FromClaim`` ones, each group in its own order, later overriding.

    Raises :class:`ConfigError` when a matching entry's parameters are not a
    JSON object.
    """
    merged: dict[str, Any] = {}
    for params in config_layers_for_request(entries, driver, request, claim=claim):
        merged = merge_parameters(merged, params)
    return merged


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_config(device: AllocatedDevice, model: type[M]) -> M:
    """``device.config`` validated into ``model`` (a pydantic model).

    Raises :class:`ConfigError` whose message and ``field`` name the offending
    field path (``vlan.id``, ``routes[1].gateway``), with the claim, the request
    and the device.
    """
    try:
        return model.model_validate(dict(device.config))
    except pydantic.ValidationError as e:
        errors = e.errors()
        first = _loc(errors[0]["loc"]) if errors else ""
        details = "; ".join(f"{_loc(err['loc']) or '<root>'}: {err['msg']}" for err in errors)
        claim = f"claim {device.claim}, " if device.claim else ""
        raise ConfigError(
            f"{claim}request {device.request!r}, device {device.pool}/{device.device}:"
            f" invalid opaque configuration for {model.__name__}: {details}",
            field=first,
            claim=device.claim,
            request=device.request,
            device=device.device,
        ) from None


def claim_from_object(obj: Mapping[str, Any], driver: str) -> Claim:
    """A :class:`Claim` from ResourceClaim JSON (``ClaimNotAllocated`` without an allocation)."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    uid = str(meta.get("uid", ""))
    label = f"{namespace}/{name}"
    status = obj.get("status") or {}
    allocation = status.get("allocation")
    if not allocation:
        raise ClaimNotAllocated(
            f"ResourceClaim {label} ({uid}) is not allocated",
            namespace=namespace,
            name=name,
            uid=uid,
        )
    devices_alloc = allocation.get("devices") or {}
    config_entries = list(devices_alloc.get("config") or [])
    devices: list[AllocatedDevice] = []
    for result in devices_alloc.get("results") or []:
        if result.get("driver") != driver:
            continue
        request = str(result.get("request", ""))
        layers = config_layers_for_request(config_entries, driver, request, claim=label)
        merged: dict[str, Any] = {}
        for params in layers:
            merged = merge_parameters(merged, params)
        devices.append(
            AllocatedDevice(
                request=request,
                pool=str(result.get("pool", "")),
                device=str(result.get("device", "")),
                share_id=result.get("shareID") or None,
                admin_access=bool(result.get("adminAccess")),
                config=merged,
                claim=label,
                config_layers=tuple(layers),
            )
        )
    pods = tuple(
        PodRef(namespace, str(r.get("name", "")), str(r.get("uid", "")))
        for r in status.get("reservedFor") or []
        if r.get("resource") == "pods" and not r.get("apiGroup")
    )
    return Claim(
        namespace=namespace,
        name=name,
        uid=uid,
        pods=pods,
        devices=tuple(devices),
        resource_version=str(meta.get("resourceVersion", "")),
        generation=int(meta.get("generation") or 0),
    )


def _status_message(body: bytes) -> str:
    """The ``message`` of a ``Status`` error body, else the body itself (shortened)."""
    doc, text = status_body(body)
    if doc is not None and doc.get("message"):
        return str(doc["message"])
    return text[:200]


class ClaimReader:
    """Reads ResourceClaims for ``driver``."""

    def __init__(self, api: k8s.ApiClient, driver: str) -> None:
        self.driver = driver
        self._api = api
        self._res = k8s.ResourceV1Api(api)

    async def get(self, ref: ClaimRef) -> Claim:
        """The claim ``ref`` names, with the devices allocated to this driver.

        Raises :class:`ClaimNotFound` (no such claim), :class:`ClaimReplaced` (a
        claim of that name with another UID), :class:`ClaimNotAllocated`, or
        :class:`ConfigError` (opaque parameters that are not an object).
        """
        label = f"{ref.namespace}/{ref.name}"
        # The raw JSON, not the generated model: the claim is read as plain data
        # anyway, and skipping the model round trip saves about a fifth of the GET.
        try:
            resp = await self._res.read_namespaced_resource_claim_without_preload_content(
                ref.name, ref.namespace
            )
            body = await resp.read()
        except ApiException as e:
            status, text = e.status, api_error_text(e)
        else:
            status = resp.status
            text = _status_message(body) if status >= 300 else ""
        if status == 404:
            raise ClaimNotFound(
                f"ResourceClaim {label} not found",
                namespace=ref.namespace,
                name=ref.name,
                uid=ref.uid,
            )
        if status >= 300:
            raise KndError(f"reading ResourceClaim {label}: HTTP {status}: {text}")
        try:
            data = json.loads(body)
        except ValueError as e:
            raise KndError(f"reading ResourceClaim {label}: bad JSON: {e}") from None
        if not isinstance(data, dict):
            raise KndError(f"reading ResourceClaim {label}: the server sent no object")
        uid = str((data.get("metadata") or {}).get("uid", ""))
        if ref.uid and uid != ref.uid:
            raise ClaimReplaced(
                f"ResourceClaim {label} has UID {uid}, not {ref.uid}: the claim was replaced",
                namespace=ref.namespace,
                name=ref.name,
                uid=ref.uid,
            )
        claim = claim_from_object(data, self.driver)
        log.debug("claim %s: %d devices for %s", label, len(claim.devices), self.driver)
        return claim
