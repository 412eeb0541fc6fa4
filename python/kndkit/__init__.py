"""kndkit: write Kubernetes Network Drivers in Python on a Rust data plane.

The public API is re-exported here and nowhere else.
"""

from __future__ import annotations

from kndkit._native import NetNs, __version__
from kndkit.errors import (
    InvalidArgument,
    KndError,
    NamespaceError,
    NetlinkError,
    NotAvailable,
)

__all__ = [
    "InvalidArgument",
    "KndError",
    "NamespaceError",
    "NetNs",
    "NetlinkError",
    "NotAvailable",
    "__version__",
]
