"""Unix socket hygiene for the kubelet plugin servers.

- directories the plugin creates are mode 0700; socket files are mode 0600;
- a stale socket left by an earlier run is removed before listening, but a path
  that exists and is *not* a socket is never removed (:class:`InvalidArgument`);
- a socket appears at its final path only once its server is serving and its mode
  is 0600: the server listens on a hidden name (``.k<hex>``, which the kubelet's
  registry watcher ignores) and the file is then renamed into place;
- on removal, only the socket this instance created is deleted (identified by
  device and inode), never one another instance put at the same path since.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from typing import Any

from kndkit.dra.paths import check_socket_path
from kndkit.errors import InvalidArgument, KndError

__all__ = ["BoundSocket", "ensure_dir", "listen_unix", "remove_stale_socket"]

log = logging.getLogger("kndkit.dra")

DIR_MODE = 0o700
SOCKET_MODE = 0o600


def ensure_dir(path: str, *, own: bool) -> None:
    """Create ``path`` (mode 0700) if missing.

    With ``own`` (the driver's own plugin directory) an existing directory is set to
    0700 too; the kubelet's registry directory (``own=False``) is left as it is.
    Raises :class:`InvalidArgument` when ``path`` exists and is not a directory.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)  # makedirs' mode is filtered by the umask
        log.info("created directory %s (mode 0700)", path)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{path} exists and is not a directory")
    if own and stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
        log.info("set mode 0700 on %s (was %o)", path, stat.S_IMODE(st.st_mode))


def remove_stale_socket(path: str) -> bool:
    """Remove a leftover unix socket at ``path``; return whether one was removed.

    Raises :class:`InvalidArgument` if something other than a socket is there.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidArgument(f"{path} exists and is not a unix socket; refusing to remove it")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("removed stale socket %s", path)
    return True


@dataclass(frozen=True)
class BoundSocket:
    """A socket file this instance created: its path and identity."""

    path: str
    dev: int
    ino: int

    def remove(self) -> bool:
        """Delete the file if it is still this socket; return whether it was deleted."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            log.info("%s now belongs to another instance; leaving it in place", self.path)
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return True


def _hidden_name(directory: str) -> str:
    for _ in range(100):
        candidate = os.path.join(directory, f".k{secrets.token_hex(3)}")
        if not os.path.lexists(candidate):
            return candidate
    raise KndError(f"no free temporary socket name in {directory}")  # pragma: no cover


async def listen_unix(server: Any, path: str) -> BoundSocket:
    """Start the ``grpc.aio`` ``server`` on a unix socket that then appears at ``path``.

    Removes a stale socket at ``path`` first. The hidden name the server binds to is
    never longer than ``path``'s own file name when that is at least 8 bytes, so
    a path that fits also binds.
    """
    try:
        check_socket_path("socket", path)
        remove_stale_socket(path)
        hidden = _hidden_name(os.path.dirname(path))
        check_socket_path("temporary socket", hidden)
        try:
            port = server.add_insecure_port(f"unix:{hidden}")
        except RuntimeError as e:
            raise KndError(f"cannot listen on unix socket {hidden}: {e}") from e
        if port == 0:
            raise KndError(f"cannot listen on unix socket {hidden}")
        await server.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await server.stop(None)  # release the server's resources while the loop runs
        raise
    try:
        os.chmod(hidden, SOCKET_MODE)
        remove_stale_socket(path)  # again: something may have appeared meanwhile
        os.rename(hidden, path)
        st = os.lstat(path)
    except (OSError, InvalidArgument) as e:
        with contextlib.suppress(OSError):
            os.unlink(hidden)
        await server.stop(None)
        if isinstance(e, InvalidArgument):
            raise
        if e.errno == errno.EISDIR:
            raise InvalidArgument(f"{path} is a directory; refusing to replace it") from e
        raise KndError(f"cannot put the socket in place at {path}: {e}") from e
    return BoundSocket(path, st.st_dev, st.st_ino)
