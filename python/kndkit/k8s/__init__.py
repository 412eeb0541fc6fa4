"""Kubernetes API side of a network driver: ResourceSlices, claims, claim status.

Built on the official asyncio client (``kubernetes.aio``):

- :class:`SlicePublisher` publishes a node's devices as ResourceSlices;
- :class:`ClaimReader` reads an allocated ResourceClaim for this driver;
- :class:`ClaimStatusWriter` reports per-device status and Events on a claim.

Importing this package loads only the parts of the client it uses
(:mod:`kndkit.k8s._slim`: the ``kubernetes`` and ``kubernetes.aio`` package
``__init__`` files are skipped when nothing imported them yet, and ``core/v1``
calls go through a two-operation ``CoreV1Api``); ``KNDKIT_K8S_SLIM=0`` turns
that off.
"""

from __future__ import annotations

# First: registers the placeholder packages before anything imports kubernetes.
from kndkit.k8s import _slim  # noqa: F401  # isort: skip
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
