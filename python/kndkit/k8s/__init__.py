"""Kubernetes API side of a network driver: ResourceSlices, claims, claim status.

Built on the official asyncio client (``kubernetes.aio``):

- :class:`SlicePublisher` publishes a node's devices as ResourceSlices;
- :class:`ClaimReader` reads an allocated ResourceClaim for this driver;
- :class:`ClaimStatusWriter` reports per-device status and Events on a claim.
"""

from __future__ import annotations

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

__all__ = [
    "ClaimError",
    "ClaimNotAllocated",
    "ClaimNotFound",
    "ClaimReplaced",
    "ConfigError",
    "PublishError",
    "PublishStats",
    "ResourceAPIUnavailable",
    "SlicePublisher",
    "check_resource_api",
    "new_api_client",
]
