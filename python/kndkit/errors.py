"""The exceptions kndkit raises.

Every error that crosses kndkit's public API is a :class:`KndError`. The native
core (``kndkit._native``) raises these same classes, so callers never see a bare
``OSError`` from a netlink socket.
"""

from __future__ import annotations

__all__ = [
    "InvalidArgument",
    "KndError",
    "NamespaceError",
    "NetlinkError",
    "NotAvailable",
]


class KndError(Exception):
    """Base class of every error kndkit raises."""


class InvalidArgument(KndError, ValueError):
    """Bad input caught before anything was changed (a name over 15 bytes, a bad CIDR...)."""


class NamespaceError(KndError):
    """A namespace handle could not be opened, is not a network namespace, or is gone."""


class NotAvailable(KndError):
    """A capability this node lacks, such as RDMA ("RDMA not available on this node")."""


class NetlinkError(KndError):
    """The kernel refused one step of a batch.

    Attributes:
        step_index: index of the failing step in the plan (``-1`` for a dump or a
            request outside a plan).
        op: the step's operation (``"link_set"``, ``"addr_add"``...).
        ifname: the interface the step addressed, when it named one.
        errno: the positive errno the kernel returned.
        errno_name: its symbolic name (``"EEXIST"``).
        kernel_message: the kernel's extended-ACK text, ``""`` when it gave none.
        rolled_back: ``True`` when every completed step was undone.
        rollback_errors: messages of undo steps that failed themselves (empty
            when the rollback was clean).
    """

    def __init__(
        self,
        message: str,
        *,
        step_index: int = -1,
        op: str = "",
        ifname: str | None = None,
        errno: int = 0,
        errno_name: str = "",
        kernel_message: str = "",
        rolled_back: bool = False,
        rollback_errors: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.step_index = step_index
        self.op = op
        self.ifname = ifname
        self.errno = errno
        self.errno_name = errno_name
        self.kernel_message = kernel_message
        self.rolled_back = rolled_back
        self.rollback_errors = list(rollback_errors or [])
