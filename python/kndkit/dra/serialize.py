"""One prepare/unprepare call at a time, within a process and, optionally, across processes.

Within one plugin instance an :class:`asyncio.Lock` orders the calls. In
rolling-update mode several instances of a driver run side by side and the
kubelet may call any of them, so they also take an exclusive ``flock`` on a
shared file (``<plugin_dir>/serialize.lock``). Waiting for the ``flock`` happens
on a worker thread, never on the event loop; a waiter that is cancelled lets
go of the lock as soon as the thread gets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator

from kndkit.errors import KndError

__all__ = ["CallSerializer"]

log = logging.getLogger("kndkit.dra")


class CallSerializer:
    """``async with serializer.hold():`` runs the body alone.

    Args:
        lock_path: file to ``flock`` in addition to the in-process lock (created
            with mode 0600 if missing), or ``None`` for the in-process lock only.
    """

    def __init__(self, lock_path: str | None = None) -> None:
        self._lock = asyncio.Lock()
        self.lock_path = lock_path

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self._lock:
            fd = await self._flock() if self.lock_path is not None else None
            try:
                yield
            finally:
                if fd is not None:
                    os.close(fd)  # closing the only descriptor releases the flock

    async def _flock(self) -> int:
        assert self.lock_path is not None
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise KndError(f"cannot open lock file {self.lock_path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError as e:
            os.close(fd)
            raise KndError(f"cannot lock {self.lock_path}: {e}") from e
        log.debug("waiting for %s (another instance holds it)", self.lock_path)
        fut = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The thread may still get the lock later: release it by closing then.
            fut.add_done_callback(lambda _f: os.close(fd))
            raise
        except OSError as e:
            os.close(fd)
            raise KndError(f"cannot lock {self.lock_path}: {e}") from e
        return fd
