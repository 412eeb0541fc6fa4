"""The SQLite set-up shared by kndkit's crash-safe files (:mod:`kndkit.state`, :mod:`kndkit.ipam`).

Both open one file per driver with the same guarantees: explicit transactions
(``BEGIN IMMEDIATE``), WAL with ``synchronous=FULL`` (a commit is on disk when it
returns), a busy timeout so several processes (a rolling update) share the file,
and a set-up that is retried while another process holds the file: SQLite
returns ``SQLITE_BUSY`` without calling its busy handler while a new file
switches to WAL and builds its WAL index, and every set-up step is idempotent.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

__all__ = ["Busy", "connect", "enable_wal", "is_busy", "retry_while_busy"]


class Busy(Exception):
    """A set-up step met another process's lock (the set-up is retried)."""


def is_busy(e: sqlite3.Error) -> bool:
    """Whether ``e`` is SQLITE_BUSY / SQLITE_LOCKED (another connection holds the file)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(e)
    return "database is locked" in text or "database is busy" in text


def connect(
    path: str, *, busy_timeout: float, fail: Callable[[str], Exception]
) -> sqlite3.Connection:
    """Opens ``path`` (creating its directory, mode 0700) for explicit transactions,
    usable from several threads (the caller serialises its use with a lock)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    try:
        return sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as e:
        raise fail(f"cannot open: {e}") from None


def enable_wal(
    db: sqlite3.Connection, *, busy_timeout: float, fail: Callable[[str], Exception]
) -> None:
    """WAL journal, ``synchronous=FULL``, and the busy timeout on ``db``."""
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise fail(f"WAL journal mode refused ({mode})")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")


def retry_while_busy(
    setup_once: Callable[[], None], *, busy_timeout: float, fail: Callable[[str], Exception]
) -> None:
    """Runs ``setup_once`` until it does not raise :class:`Busy`, for up to ``busy_timeout``."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            setup_once()
            return
        except Busy:
            if time.monotonic() >= deadline:
                raise fail(f"still locked by another process after {busy_timeout:g} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
