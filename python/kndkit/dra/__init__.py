"""kndkit.dra: the kubelet side of DRA (registration, DRA v1 and v1beta1, health)."""

from kndkit.dra.types import (
    ClaimRef,
    DeviceHealth,
    DRAHandler,
    HealthSource,
    HealthStatus,
    PreparedDevice,
    PrepareResult,
    UnprepareResult,
)

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
