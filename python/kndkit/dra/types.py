"""Plain data exchanged between the kubelet plugin server and the code that prepares claims.

These are the protocol-neutral forms of the DRA node service messages (``v1`` and
``v1beta1`` carry the same information): the server converts the wire messages to
and from them, so a :class:`DRAHandler` never sees protobuf.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "ClaimRef",
    "DRAHandler",
    "DeviceHealth",
    "HealthSource",
    "HealthStatus",
    "PrepareResult",
    "PreparedDevice",
    "UnprepareResult",
]


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """A ResourceClaim as the kubelet names it in NodePrepareResources/NodeUnprepareResources."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.uid})"


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One device of a prepared claim, as reported back to the kubelet."""

    pool_name: str
    device_name: str
    request_names: tuple[str, ...] = ()
    cdi_device_ids: tuple[str, ...] = ()
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class PrepareResult:
    """The outcome for one claim: its devices, or an error the kubelet retries later."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class UnprepareResult:
    """The outcome of unpreparing one claim; an empty error means done."""

    error: str = ""


class HealthStatus(enum.IntEnum):
    """Device health as the DRA health service reports it (wire values)."""

    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """The health of one device at one moment."""

    pool_name: str
    device_name: str
    health: HealthStatus
    last_updated: int
    """Unix seconds."""
    check_timeout_seconds: int = 30
    message: str = ""


@runtime_checkable
class DRAHandler(Protocol):
    """What the kubelet plugin server calls; implemented by the claim service.

    Both methods return a result keyed by claim UID. The server guarantees the kubelet
    an entry for every requested claim (a missing one becomes a per-claim error), turns
    an exception into a per-claim error for every claim of the call, and never runs two
    calls at once.
    """

    async def prepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, PrepareResult]: ...

    async def unprepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, UnprepareResult]: ...


@runtime_checkable
class HealthSource(Protocol):
    """A stream of complete device-health lists (each item replaces the previous one)."""

    def watch_health(self) -> AsyncIterator[Sequence[DeviceHealth]]: ...
