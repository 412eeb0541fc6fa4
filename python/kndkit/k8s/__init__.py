"""Kubernetes API side of a network driver: ResourceSlices, claims, claim status.

Built on the official asyncio client (``kubernetes.aio``):

- :class:`SlicePublisher` publishes a node's devices as ResourceSlices;
- :class:`ClaimReader` reads an allocated ResourceClaim for this driver;
- :class:`ClaimStatusWriter` reports per-device status and Events on a claim.
"""

from __future__ import annotations

from kndkit.k8s.claims import (
    AllocatedDevice,
    Claim,
    ClaimReader,
    PodRef,
    config_for_request,
    merge_parameters,
    parse_config,
)
from kndkit.k8s.client import check_resource_api, new_api_client
from kndkit.k8s.errors import (
    ClaimError,
    ClaimNotAllocated,
    ClaimNotFound,
    ClaimReplaced,
    ConfigError,
    PublishError,
    ResourceAPIUnavailable,
)
from kndkit.k8s.publisher import PublishStats, SlicePublisher
from kndkit.k8s.status import ClaimStatusWriter, DeviceStatus, validate_device_status

__all__ = [
    "AllocatedDevice",
    "Claim",
    "ClaimError",
    "ClaimNotAllocated",
    "ClaimNotFound",
    "ClaimReader",
    "ClaimReplaced",
    "ClaimStatusWriter",
    "ConfigError",
    "DeviceStatus",
    "PodRef",
    "PublishError",
    "PublishStats",
    "ResourceAPIUnavailable",
    "SlicePublisher",
    "check_resource_api",
    "config_for_request",
    "merge_parameters",
    "new_api_client",
    "parse_config",
    "validate_device_status",
]
