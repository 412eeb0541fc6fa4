"""Names and paths of the kubelet plugin sockets, and the checks on them.

Pure functions (no file system access): :class:`~kndkit.dra.server.KubeletPlugin`
calls them in its constructor, so bad input is refused before anything exists.

Socket names follow the upstream helper's conventions so that operators find
what they expect: ``<driver>-reg.sock`` in the kubelet's registry directory and
``dra.sock`` in the driver's plugin directory; in rolling-update mode both carry
the instance's UID (``<driver>-<uid>-reg.sock``, ``dra-<uid>.sock``) and fall
back to hashed forms when the full path would not fit in an AF_UNIX address.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

from kndkit.errors import InvalidArgument

__all__ = [
    "MAX_DRIVER_NAME",
    "SUN_PATH_MAX",
    "check_absolute_dir",
    "check_socket_path",
    "dra_socket_name",
    "registration_socket_name",
    "validate_driver_name",
    "validate_rolling_update_uid",
]

SUN_PATH_MAX = 107
"""Longest AF_UNIX socket path in bytes (``sun_path`` is 108 bytes with the NUL)."""

MAX_DRIVER_NAME = 63
"""A DRA driver name is also ResourceSlice ``spec.driver``, a DNS subdomain of at most 63."""

MAX_UID = 128

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_driver_name(name: str) -> None:
    """Raise :class:`InvalidArgument` unless ``name`` is a lowercase DNS subdomain of <= 63."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument("driver name is empty")
    if len(name) > MAX_DRIVER_NAME:
        raise InvalidArgument(
            f"driver name {name!r} is {len(name)} characters; "
            f"DRA allows at most {MAX_DRIVER_NAME} (it is ResourceSlice spec.driver)"
        )
    if not _DNS_SUBDOMAIN.fullmatch(name):
        raise InvalidArgument(
            f"driver name {name!r} is not a DNS subdomain (lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit), e.g. net.example.com"
        )


def validate_rolling_update_uid(uid: str) -> None:
    """Raise :class:`InvalidArgument` unless ``uid`` can be part of a socket file name."""
    if not isinstance(uid, str) or not uid:
        raise InvalidArgument("rolling_update_uid is empty (pass None to turn rolling updates off)")
    if len(uid) > MAX_UID or not _UID.fullmatch(uid):
        raise InvalidArgument(
            f"rolling_update_uid {uid!r} must be 1-{MAX_UID} characters of letters, digits, "
            "'.', '_' and '-', starting with a letter or digit (normally the pod UID)"
        )


def check_absolute_dir(what: str, path: str) -> str:
    """Return ``path`` normalised; raise :class:`InvalidArgument` unless it is absolute."""
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"{what} is empty")
    if "\0" in path:
        raise InvalidArgument(f"{what} {path!r} contains a NUL byte")
    if not os.path.isabs(path):
        raise InvalidArgument(
            f"{what} {path!r} is not an absolute path (the kubelet needs absolute paths)"
        )
    return os.path.normpath(path)


def _fits(path: str) -> bool:
    return len(os.fsencode(path)) <= SUN_PATH_MAX


def check_socket_path(what: str, path: str) -> None:
    """Raise :class:`InvalidArgument` when ``path`` is too long for an AF_UNIX address."""
    n = len(os.fsencode(path))
    if n > SUN_PATH_MAX:
        raise InvalidArgument(
            f"{what} {path} is {n} bytes; a unix socket path may have at most "
            f"{SUN_PATH_MAX}: use a shorter directory"
        )


def _b64_sha256(data: str, nbytes: int) -> str:
    digest = hashlib.sha256(data.encode()).digest()[:nbytes]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def registration_socket_name(registry_dir: str, driver: str, uid: str | None) -> str:
    """File name of the registration socket in ``registry_dir``.

    Without ``uid``: ``<driver>-reg.sock``. With ``uid``, the first of
    ``<driver>-<uid>-reg.sock``, ``<driver>-<b64(sha256(uid))[:8 bytes]>-reg.sock`` and
    ``dra-<b64(sha256(driver NUL uid))[:16 bytes]>-reg.sock`` whose full path fits
    in :data:`SUN_PATH_MAX` bytes. Raises :class:`InvalidArgument` when none fits.
    """
    if uid is None:
        candidates = [f"{driver}-reg.sock"]
    else:
        candidates = [
            f"{driver}-{uid}-reg.sock",
            f"{driver}-{_b64_sha256(uid, 8)}-reg.sock",
            f"dra-{_b64_sha256(driver + chr(0) + uid, 16)}-reg.sock",
        ]
    for name in candidates:
        if _fits(os.path.join(registry_dir, name)):
            return name
    check_socket_path("registration socket", os.path.join(registry_dir, candidates[-1]))
    raise AssertionError("unreachable")  # pragma: no cover


def dra_socket_name(plugin_dir: str, uid: str | None) -> str:
    """File name of the DRA service socket in ``plugin_dir``.

    ``dra.sock`` without ``uid``; with it ``dra-<uid>.sock``, or
    ``dra-<b64(sha256(uid))[:8 bytes]>.sock`` when the full path would be too long.
    Raises :class:`InvalidArgument` when no form fits in :data:`SUN_PATH_MAX` bytes.
    """
    candidates = (
        ["dra.sock"] if uid is None else [f"dra-{uid}.sock", f"dra-{_b64_sha256(uid, 8)}.sock"]
    )
    for name in candidates:
        if _fits(os.path.join(plugin_dir, name)):
            return name
    check_socket_path("DRA socket", os.path.join(plugin_dir, candidates[-1]))
    raise AssertionError("unreachable")  # pragma: no cover
