"""kndkit.dra: the kubelet side of DRA (registration, DRA v1 and v1beta1, health)."""

from kndkit.dra.paths import SUN_PATH_MAX
from kndkit.dra.server import (
    DRA_SERVICE_NAMES,
    DRA_VERSIONS,
    HEALTH_SERVICE_NAMES,
    MAX_HEALTH_MESSAGE,
    PLUGIN_TYPE,
    KubeletPlugin,
)
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
    "DRA_SERVICE_NAMES",
    "DRA_VERSIONS",
    "HEALTH_SERVICE_NAMES",
    "MAX_HEALTH_MESSAGE",
    "PLUGIN_TYPE",
    "SUN_PATH_MAX",
    "ClaimRef",
    "DRAHandler",
    "DeviceHealth",
    "HealthSource",
    "HealthStatus",
    "KubeletPlugin",
    "PrepareResult",
    "PreparedDevice",
    "UnprepareResult",
]
