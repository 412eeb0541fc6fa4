"""A crash-safe store of prepared claims and their plans (SQLite, standard library).

Every state change is one SQLite transaction, committed (``synchronous=FULL`` in
WAL mode: the write-ahead log is fsynced at each commit) before the method
returns, so the caller acts only on state that survives a crash or a power cut.

``put``/``set_phase`` take ``sync=False`` for a record whose only job is to
survive a crash of the *process*: the commit is then written to the WAL (the
OS keeps it, other processes see it, a SIGKILL loses nothing) without waiting
for the fsync, which the next synced commit covers. The claim service uses it
for the PREPARING and UNPREPARING marks: they guard the node state a driver
changes between them and the next synced write, and that state does not
survive a power cut either. Atomicity is the same in both modes.

A claim goes through these phases::

    (absent) --put(PREPARING)--> PREPARING --put(PREPARED)--> PREPARED
    PREPARED --set_phase(UNPREPARING)--> UNPREPARING --delete--> (absent)

A record left in ``PREPARING`` or ``UNPREPARING`` (see :meth:`StateStore.pending`)
tells the next process that a crash interrupted that step; the claim service
resolves it on start (``ClaimService.replay``).

Attachments (schema v2): a pod's links moved or created in its network
namespace, keyed by pod UID::

    (absent) --put_attachment(ATTACHING)--> ATTACHING --put_attachment(ATTACHED)--> ATTACHED
    ATTACHED --put_attachment(DETACHING)--> DETACHING --delete_attachment--> (absent)

A record in ATTACHING or DETACHING after a restart means the step may have been
cut short; the driver resolves it against the runtime's view of the pods (NRI
Synchronize). A version 1 file (claims only) is migrated in place when opened:
the attachments table is added and the version raised to 2.

Several processes may open the same file at once (a rolling update runs two
driver instances on one node): WAL lets readers run beside a writer, writers take
the database lock with ``BEGIN IMMEDIATE`` and wait up to ``busy_timeout`` for
each other.

Threads and asyncio: one :class:`StateStore` may be used from several threads (an
internal lock serialises its connection). Reads take microseconds and are fine on
the event loop thread. A write waits for one ``fsync`` of the WAL, measured at
0.2-0.4 ms (p50-p99) on the project's ext4 virtual disk but unbounded on a
busy disk, where it would stall every other task of the event loop: async callers
should run writes with :func:`asyncio.to_thread` (which adds about 0.07 ms), as
the claim service does.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kndkit import _sqlite
from kndkit.dra.types import ClaimRef, PreparedDevice
from kndkit.errors import InvalidArgument, KndError

__all__ = [
    "SCHEMA_VERSION",
    "AttachPhase",
    "AttachmentRecord",
    "ClaimPhase",
    "ClaimRecord",
    "StateError",
    "StateStore",
]

log = logging.getLogger("kndkit.state")

#: The schema this code writes. A file with a higher version is refused.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    uid TEXT PRIMARY KEY NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('preparing', 'prepared', 'unpreparing')),
    devices TEXT NOT NULL,
    plans TEXT NOT NULL,
    pod_uids TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    pod_uid TEXT PRIMARY KEY NOT NULL,
    pod_ref TEXT NOT NULL,
    netns TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('attaching', 'attached', 'detaching')),
    claim_uids TEXT NOT NULL,
    plans TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""

_ATT_COLUMNS = "pod_uid, pod_ref, netns, phase, claim_uids, plans, created_at, updated_at"

_COLUMNS = "uid, namespace, name, phase, devices, plans, pod_uids, created_at, updated_at"


class StateError(KndError):
    """The state file cannot be used: damaged, from a newer kndkit, locked too long, unreadable."""


class ClaimPhase(enum.StrEnum):
    """Where a claim stands; the values are what the file stores."""

    PREPARING = "preparing"
    """Prepare started and may have been interrupted; nothing was reported to the kubelet."""
    PREPARED = "prepared"
    """Prepare finished; the devices were (or will be) reported to the kubelet."""
    UNPREPARING = "unpreparing"
    """Unprepare started and may have been interrupted."""


@dataclass(frozen=True)
class ClaimRecord:
    """One claim in the store.

    ``plans`` is JSON data (dicts with string keys, lists, strings, numbers,
    booleans, ``None``) that the store keeps without looking inside; tuples are
    accepted and come back as lists. ``created_at``/``updated_at`` are Unix
    seconds, set by the store when left at 0.
    """

    uid: str
    namespace: str
    name: str
    phase: ClaimPhase
    devices: tuple[PreparedDevice, ...] = ()
    plans: Any = None
    pod_uids: tuple[str, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def ref(self) -> ClaimRef:
        """The claim as the kubelet names it."""
        return ClaimRef(self.namespace, self.name, self.uid)

    @classmethod
    def for_claim(
        cls,
        ref: ClaimRef,
        phase: ClaimPhase,
        *,
        devices: Iterable[PreparedDevice] = (),
        plans: Any = None,
        pod_uids: Iterable[str] = (),
    ) -> ClaimRecord:
        """A record for ``ref`` (timestamps filled in by :meth:`StateStore.put`)."""
        return cls(
            ref.uid,
            ref.namespace,
            ref.name,
            ClaimPhase(phase),
            tuple(devices),
            plans,
            tuple(pod_uids),
        )


class AttachPhase(enum.StrEnum):
    """Where a pod's attachment stands; the values are what the file stores."""

    ATTACHING = "attaching"
    """The links are being moved into the pod; a crash may have cut it short."""
    ATTACHED = "attached"
    """The links are in the pod."""
    DETACHING = "detaching"
    """The links are being given back to the host; a crash may have cut it short."""


@dataclass(frozen=True)
class AttachmentRecord:
    """The links of one pod, as attached (or being attached) by a driver.

    ``pod_ref`` is ``namespace/name`` (for logs), ``netns`` the path of the
    pod's network namespace, ``claim_uids`` the prepared claims whose plans
    were attached, ``plans`` their plans (JSON data, as for
    :attr:`ClaimRecord.plans`). Timestamps are set by the store when left at 0.
    """

    pod_uid: str
    pod_ref: str
    netns: str
    phase: AttachPhase
    claim_uids: tuple[str, ...] = ()
    plans: Any = None
    created_at: float = 0.0
    updated_at: float = 0.0


# --------------------------------------------------------------------------- JSON helpers


def _same_json(a: Any, b: Any) -> bool:
    """``a`` (as given) equals ``b`` (decoded), tuples counting as lists, NaN never equal.

    The plain JSON types are checked here directly (this runs on every plan
    written, RunPodSandbox included); anything else goes to
    :func:`_same_json_generic`, which states the rule."""
    ta = type(a)
    if ta is str:
        return type(b) is str and a == b
    if ta is dict:
        if type(b) is not dict:
            return _same_json_generic(a, b)
        if len(a) != len(b):
            return False
        for k, v in a.items():
            if type(k) is not str:
                return _same_json_generic(a, b)
            if k not in b or not _same_json(v, b[k]):
                return False
        return True
    if ta is list:
        if type(b) is not list:
            return _same_json_generic(a, b)
        if len(a) != len(b):
            return False
        return all(map(_same_json, a, b))
    if a is None:
        return b is None
    if ta is int or ta is bool:
        return type(b) is ta and a == b
    return _same_json_generic(a, b)


def _same_json_generic(a: Any, b: Any) -> bool:
    """:func:`_same_json` for any type of ``a``."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_json, a, b))
    if isinstance(a, Mapping):
        return (
            isinstance(b, dict)
            and all(isinstance(k, str) for k in a)
            and a.keys() == b.keys()
            and all(_same_json(a[k], b[k]) for k in a)
        )
    if isinstance(a, bool) or a is None or isinstance(a, str):
        return type(a) is type(b) and a == b
    if isinstance(a, int):
        return type(b) is int and a == b
    if isinstance(a, float):
        return isinstance(b, float) and math.isfinite(a) and a == b
    return False


def _encode_plans(label: str, plans: Any) -> str:
    return _encode_plans_decoded(label, plans)[0]


def _encode_plans_decoded(label: str, plans: Any) -> tuple[str, Any]:
    """:func:`_encode_plans`, and the text decoded again (what a read returns)."""
    try:
        text = json.dumps(plans, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{label}: plans are not JSON data: {e}") from None
    decoded = json.loads(text)
    if not _same_json(plans, decoded):
        raise InvalidArgument(
            f"{label}: plans do not survive a JSON round trip (non-string dict keys, "
            "a subclass of a JSON type, or another value JSON cannot represent exactly)"
        )
    return text, decoded


def _encode_devices(devices: Sequence[PreparedDevice]) -> str:
    return json.dumps(
        [
            {
                "pool": d.pool_name,
                "device": d.device_name,
                "requests": list(d.request_names),
                "cdi": list(d.cdi_device_ids),
                "share_id": d.share_id,
            }
            for d in devices
        ],
        separators=(",", ":"),
    )


def _decode_devices(text: str) -> tuple[PreparedDevice, ...]:
    return tuple(
        PreparedDevice(
            pool_name=str(d["pool"]),
            device_name=str(d["device"]),
            request_names=tuple(str(r) for r in d["requests"]),
            cdi_device_ids=tuple(str(c) for c in d["cdi"]),
            share_id=None if d["share_id"] is None else str(d["share_id"]),
        )
        for d in json.loads(text)
    )


def _check_record(rec: ClaimRecord) -> None:
    for attr in ("uid", "namespace", "name"):
        value = getattr(rec, attr)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"claim record {rec.uid!r}: {attr} must be a non-empty string")
    if not isinstance(rec.phase, ClaimPhase):
        raise InvalidArgument(f"claim {rec.uid}: phase {rec.phase!r} is not a ClaimPhase")
    for d in rec.devices:
        if not isinstance(d, PreparedDevice):
            raise InvalidArgument(f"claim {rec.uid}: device {d!r} is not a PreparedDevice")
    for p in rec.pod_uids:
        if not isinstance(p, str):
            raise InvalidArgument(f"claim {rec.uid}: pod uid {p!r} is not a string")


# --------------------------------------------------------------------------- the store


class StateStore:
    """Prepared claims in one SQLite file; see the module docstring for the guarantees.

    ``StateStore(path)`` opens (creating it and its directory, mode 0700, when
    missing) and checks the file; it raises :class:`StateError` for a file that
    is not a kndkit state database, is damaged, or was written by a newer schema.
    ``busy_timeout`` is how long a write waits for another process's write.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        # Explicit transactions (BEGIN IMMEDIATE); shared by threads under self._lock.
        self._db = _sqlite.connect(self.path, busy_timeout=busy_timeout, fail=self._error)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    # ---- opening

    def _setup(self) -> None:
        # Two processes opening a new file at once (a rolling update) can meet
        # SQLITE_BUSY where SQLite does not call its busy handler: switching the
        # file to WAL and building the WAL index. Every step here is idempotent,
        # so the whole set-up is retried until busy_timeout.
        _sqlite.retry_while_busy(self._setup_once, busy_timeout=self.busy_timeout, fail=self._error)

    def _error(self, message: str) -> StateError:
        return StateError(f"state file {self.path}: {message}")

    def _setup_once(self) -> None:
        db = self._db
        try:
            _sqlite.enable_wal(db, busy_timeout=self.busy_timeout, fail=self._error)
            check = db.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise StateError(
                    f"state file {self.path} is damaged (quick_check: "
                    f"{'; '.join(str(r[0]) for r in check[:5])}); move it away to start empty"
                )
            with self._transaction():
                # executescript() would commit on its own: one statement at a time.
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                row = db.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO schema_version (id, version) VALUES (1, ?)",
                        (SCHEMA_VERSION,),
                    )
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StateError(
                        f"state file {self.path} has schema version {row[0]}, newer than "
                        f"this kndkit understands ({SCHEMA_VERSION}); run a newer kndkit or "
                        "move the file away"
                    )
                elif int(row[0]) < 1:
                    raise StateError(f"state file {self.path}: bad schema version {row[0]}")
                elif int(row[0]) < SCHEMA_VERSION:
                    # v1 -> v2: the attachments table (created above) is all it adds.
                    log.info(
                        "state file %s: migrated from schema version %s to %s",
                        self.path,
                        row[0],
                        SCHEMA_VERSION,
                    )
                    db.execute(
                        "UPDATE schema_version SET version = ? WHERE id = 1", (SCHEMA_VERSION,)
                    )
        except sqlite3.OperationalError as e:
            if _sqlite.is_busy(e):
                raise _sqlite.Busy from None
            raise StateError(
                f"state file {self.path} is not a usable kndkit state database: {e}"
            ) from None
        except sqlite3.DatabaseError as e:
            raise StateError(
                f"state file {self.path} is not a usable kndkit state database: {e}"
            ) from None

    # ---- plumbing

    @contextlib.contextmanager
    def _transaction(self, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

        ``sync=False`` commits with ``synchronous=NORMAL`` (no fsync in WAL mode).
        """
        db = self._db
        try:
            if not sync:
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException as e:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    if isinstance(e, sqlite3.Error):
                        raise StateError(f"state file {self.path}: write failed: {e}") from None
                    raise
            finally:
                if not sync:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:  # the PRAGMA or BEGIN (locked, closed)
            raise StateError(f"state file {self.path}: cannot start a write: {e}") from None

    def _row(self, row: Sequence[Any]) -> ClaimRecord:
        uid = str(row[0])
        try:
            return ClaimRecord(
                uid=uid,
                namespace=str(row[1]),
                name=str(row[2]),
                phase=ClaimPhase(row[3]),
                devices=_decode_devices(row[4]),
                plans=json.loads(row[5]),
                pod_uids=tuple(str(p) for p in json.loads(row[6])),
                created_at=float(row[7]),
                updated_at=float(row[8]),
            )
        except (ValueError, TypeError, KeyError) as e:
            raise StateError(
                f"state file {self.path}: record of claim {uid} is damaged: {e}"
            ) from None

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[ClaimRecord]:
        with self._lock:
            try:
                rows = self._db.execute(sql, args).fetchall()
            except sqlite3.ProgrammingError as e:
                raise StateError(f"state file {self.path}: {e}") from None
            except sqlite3.DatabaseError as e:
                raise StateError(f"state file {self.path}: read failed: {e}") from None
        return [self._row(r) for r in rows]

    # ---- reads

    def get(self, uid: str) -> ClaimRecord | None:
        """The record of claim ``uid``, or ``None``."""
        recs = self._query(f"SELECT {_COLUMNS} FROM claims WHERE uid = ?", (uid,))
        return recs[0] if recs else None

    def list(self) -> builtins.list[ClaimRecord]:
        """Every record, oldest first."""
        return self._query(f"SELECT {_COLUMNS} FROM claims ORDER BY created_at, uid")

    def pending(self) -> builtins.list[ClaimRecord]:
        """Records whose last step may have been interrupted (PREPARING or UNPREPARING)."""
        return self._query(
            f"SELECT {_COLUMNS} FROM claims WHERE phase != ? ORDER BY created_at, uid",
            (ClaimPhase.PREPARED.value,),
        )

    def claims_of_pod(self, pod_uid: str) -> builtins.list[ClaimRecord]:
        """PREPARED records reserved for pod ``pod_uid``, oldest first.

        Only the matching rows are decoded (``list()`` decodes every record):
        this runs on every pod start of the node, most of which have no claim
        of the driver. The text search on the stored JSON is a superset; the
        exact membership test is done on the decoded records."""
        needle = json.dumps(pod_uid)  # as the element is written in pod_uids
        recs = self._query(
            f"SELECT {_COLUMNS} FROM claims WHERE phase = ? AND instr(pod_uids, ?) > 0 "
            "ORDER BY created_at, uid",
            (ClaimPhase.PREPARED.value, needle),
        )
        return [r for r in recs if pod_uid in r.pod_uids]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM claims").fetchone()[0])

    # ---- writes (each one committed and synced before it returns)

    def put(self, record: ClaimRecord, *, sync: bool = True) -> ClaimRecord:
        """Insert or replace ``record``; return it as stored (with timestamps).

        ``sync=False``: committed without waiting for the fsync (see the module
        docstring: survives a process crash, not a power cut).

        Raises :class:`~kndkit.errors.InvalidArgument` (nothing written) for a
        record whose plans are not JSON data or whose fields are malformed.
        """
        _check_record(record)
        plans = _encode_plans(f"claim {record.uid}", record.plans)
        devices = _encode_devices(record.devices)
        pods = json.dumps(list(record.pod_uids))
        now = time.time()
        with self._lock, self._transaction(sync) as db:
            row = db.execute(
                "SELECT created_at FROM claims WHERE uid = ?", (record.uid,)
            ).fetchone()
            created = record.created_at or (float(row[0]) if row else now)
            db.execute(
                f"INSERT OR REPLACE INTO claims ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.uid,
                    record.namespace,
                    record.name,
                    record.phase.value,
                    devices,
                    plans,
                    pods,
                    created,
                    now,
                ),
            )
        return replace(record, created_at=created, updated_at=now, plans=json.loads(plans))

    def set_phase(self, uid: str, phase: ClaimPhase, *, sync: bool = True) -> ClaimRecord:
        """Move claim ``uid`` to ``phase``; raise :class:`StateError` if it has no record.

        ``sync`` as for :meth:`put`.
        """
        phase = ClaimPhase(phase)
        now = time.time()
        with self._lock, self._transaction(sync) as db:
            cur = db.execute(
                "UPDATE claims SET phase = ?, updated_at = ? WHERE uid = ?",
                (phase.value, now, uid),
            )
            if cur.rowcount != 1:
                raise StateError(f"state file {self.path}: no record of claim {uid}")
            row = db.execute(f"SELECT {_COLUMNS} FROM claims WHERE uid = ?", (uid,)).fetchone()
        return self._row(row)

    def delete(self, uid: str) -> bool:
        """Forget claim ``uid``; ``True`` if there was a record."""
        with self._lock, self._transaction() as db:
            cur = db.execute("DELETE FROM claims WHERE uid = ?", (uid,))
            return cur.rowcount > 0

    # ---- attachments

    def _att_row(self, row: Sequence[Any]) -> AttachmentRecord:
        uid = str(row[0])
        try:
            return AttachmentRecord(
                pod_uid=uid,
                pod_ref=str(row[1]),
                netns=str(row[2]),
                phase=AttachPhase(row[3]),
                claim_uids=tuple(str(c) for c in json.loads(row[4])),
                plans=json.loads(row[5]),
                created_at=float(row[6]),
                updated_at=float(row[7]),
            )
        except (ValueError, TypeError) as e:
            raise StateError(
                f"state file {self.path}: attachment record of pod {uid} is damaged: {e}"
            ) from None

    def _att_query(self, sql: str, args: Sequence[Any] = ()) -> builtins.list[AttachmentRecord]:
        with self._lock:
            try:
                rows = self._db.execute(sql, args).fetchall()
            except sqlite3.ProgrammingError as e:
                raise StateError(f"state file {self.path}: {e}") from None
            except sqlite3.DatabaseError as e:
                raise StateError(f"state file {self.path}: read failed: {e}") from None
        return [self._att_row(r) for r in rows]

    def put_attachment(self, record: AttachmentRecord, *, sync: bool = True) -> AttachmentRecord:
        """Insert or replace the attachment of ``record.pod_uid``; return it as stored.

        ``sync`` as for :meth:`put`. Raises :class:`~kndkit.errors.InvalidArgument`
        (nothing written) for malformed fields or plans that are not JSON data.
        """
        if not isinstance(record.pod_uid, str) or not record.pod_uid:
            raise InvalidArgument(
                f"attachment record {record.pod_uid!r}: pod_uid must be a non-empty string"
            )
        for attr in ("pod_ref", "netns"):
            if not isinstance(getattr(record, attr), str):
                raise InvalidArgument(
                    f"attachment of pod {record.pod_uid}: {attr} must be a string"
                )
        if not isinstance(record.phase, AttachPhase):
            raise InvalidArgument(
                f"attachment of pod {record.pod_uid}: phase {record.phase!r} is not an AttachPhase"
            )
        if isinstance(record.claim_uids, str) or not all(
            isinstance(c, str) for c in record.claim_uids
        ):
            raise InvalidArgument(
                f"attachment of pod {record.pod_uid}: claim_uids must be a sequence of strings"
            )
        plans, decoded = _encode_plans_decoded(f"attachment of pod {record.pod_uid}", record.plans)
        claims = json.dumps(list(record.claim_uids))
        now = time.time()
        with self._lock, self._transaction(sync) as db:
            row = db.execute(
                "SELECT created_at FROM attachments WHERE pod_uid = ?", (record.pod_uid,)
            ).fetchone()
            created = record.created_at or (float(row[0]) if row else now)
            db.execute(
                f"INSERT OR REPLACE INTO attachments ({_ATT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.pod_uid,
                    record.pod_ref,
                    record.netns,
                    record.phase.value,
                    claims,
                    plans,
                    created,
                    now,
                ),
            )
        return replace(
            record,
            claim_uids=tuple(record.claim_uids),
            created_at=created,
            updated_at=now,
            plans=decoded,
        )

    def get_attachment(self, pod_uid: str) -> AttachmentRecord | None:
        """The attachment of pod ``pod_uid``, or ``None``."""
        recs = self._att_query(
            f"SELECT {_ATT_COLUMNS} FROM attachments WHERE pod_uid = ?", (pod_uid,)
        )
        return recs[0] if recs else None

    def pod_records(
        self, pod_uid: str
    ) -> tuple[AttachmentRecord | None, builtins.list[ClaimRecord]]:
        """The attachment of pod ``pod_uid`` (or ``None``) and its PREPARED claims
        (as :meth:`claims_of_pod`), read in one transaction: one consistent view,
        one read lock of the file."""
        needle = json.dumps(pod_uid)
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN")
                try:
                    att = db.execute(
                        f"SELECT {_ATT_COLUMNS} FROM attachments WHERE pod_uid = ?", (pod_uid,)
                    ).fetchall()
                    rows = db.execute(
                        f"SELECT {_COLUMNS} FROM claims WHERE phase = ? AND instr(pod_uids, ?) > 0 "
                        "ORDER BY created_at, uid",
                        (ClaimPhase.PREPARED.value, needle),
                    ).fetchall()
                finally:
                    db.execute("COMMIT")
            except sqlite3.ProgrammingError as e:
                raise StateError(f"state file {self.path}: {e}") from None
            except sqlite3.DatabaseError as e:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise StateError(f"state file {self.path}: read failed: {e}") from None
        claims = [c for c in map(self._row, rows) if pod_uid in c.pod_uids]
        return (self._att_row(att[0]) if att else None), claims

    def attachments(self) -> builtins.list[AttachmentRecord]:
        """Every attachment record, oldest first."""
        return self._att_query(
            f"SELECT {_ATT_COLUMNS} FROM attachments ORDER BY created_at, pod_uid"
        )

    def set_attachment_phase(self, pod_uid: str, phase: AttachPhase, *, sync: bool = True) -> float:
        """Move the attachment of pod ``pod_uid`` to ``phase`` without rewriting the
        rest of the record (its plans are not encoded again); return the new
        ``updated_at``. Raises :class:`StateError` when the pod has no record.
        ``sync`` as for :meth:`put`."""
        if not isinstance(phase, AttachPhase):
            raise InvalidArgument(
                f"attachment of pod {pod_uid}: phase {phase!r} is not an AttachPhase"
            )
        now = time.time()
        with self._lock, self._transaction(sync) as db:
            cur = db.execute(
                "UPDATE attachments SET phase = ?, updated_at = ? WHERE pod_uid = ?",
                (phase.value, now, pod_uid),
            )
            if cur.rowcount != 1:
                raise StateError(f"state file {self.path}: no attachment record of pod {pod_uid}")
        return now

    def attachment_count(self) -> int:
        """How many attachment records there are (none is decoded)."""
        with self._lock:
            try:
                row = self._db.execute("SELECT count(*) FROM attachments").fetchone()
            except sqlite3.ProgrammingError as e:
                raise StateError(f"state file {self.path}: {e}") from None
            except sqlite3.DatabaseError as e:
                raise StateError(f"state file {self.path}: read failed: {e}") from None
        return int(row[0])

    def delete_attachment(self, pod_uid: str, *, sync: bool = True) -> bool:
        """Forget the attachment of pod ``pod_uid``; ``True`` if there was one."""
        with self._lock, self._transaction(sync) as db:
            cur = db.execute("DELETE FROM attachments WHERE pod_uid = ?", (pod_uid,))
            return cur.rowcount > 0

    # ---- lifecycle

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({self.path!r})"
