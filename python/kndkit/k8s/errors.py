"""The errors :mod:`kndkit.k8s` raises (all :class:`kndkit.errors.KndError`)."""

from __future__ import annotations

from kndkit.errors import InvalidArgument, KndError, NotAvailable

__all__ = [
    "ClaimError",
    "ClaimNotAllocated",
    "ClaimNotFound",
    "ClaimReplaced",
    "ConfigError",
    "PublishError",
    "ResourceAPIUnavailable",
]


class ResourceAPIUnavailable(NotAvailable):
    """The API server does not serve ``resource.k8s.io/v1`` (DRA is off or too old)."""


class ClaimError(KndError):
    """A ResourceClaim cannot be used as asked.

    Attributes:
        namespace, name, uid: the claim as the caller named it.
    """

    def __init__(self, message: str, *, namespace: str = "", name: str = "", uid: str = "") -> None:
        super().__init__(message)
        self.namespace = namespace
        self.name = name
        self.uid = uid


class ClaimNotFound(ClaimError):
    """The claim does not exist (HTTP 404)."""


class ClaimNotAllocated(ClaimError):
    """The claim exists but has no ``status.allocation``."""


class ClaimReplaced(ClaimError):
    """A claim of that name exists, but with another UID: the one asked for is gone."""


class ConfigError(InvalidArgument):
    """Opaque configuration of a claim that does not fit the driver's model.

    Attributes:
        field: dotted path of the offending field inside the parameters
            (``"vlan.id"``; ``""`` for the parameters object as a whole).
        claim: ``namespace/name`` of the claim, ``""`` when unknown.
        request: the request the configuration was merged for, ``""`` when unknown.
        device: the allocated device, ``""`` when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        claim: str = "",
        request: str = "",
        device: str = "",
    ) -> None:
        super().__init__(message)
        self.field = field
        self.claim = claim
        self.request = request
        self.device = device


class PublishError(KndError):
    """ResourceSlices could not be published (node missing, API refused a write...)."""
