"""The claim service: the DRA handler that turns kubelet calls into persisted plans.

:class:`ClaimService` implements :class:`~kndkit.dra.types.DRAHandler` on top of
a :class:`~kndkit.k8s.claims.ClaimReader` (the API server's view of each claim),
a :class:`~kndkit.state.StateStore` (what this node prepared) and a
:class:`ClaimPreparer` (the driver's own code: validated configuration in,
devices and plans out).

Prepare, per claim::

    stored PREPARED with the same UID  -> the stored devices (idempotent, no API call)
    stored PREPARING/UNPREPARING       -> an interrupted step: undo it first
    ClaimReader.get                     -> ClaimNotFound / ClaimNotAllocated /
                                           ClaimReplaced become a per-claim error
    store PREPARING (no fsync)          -> written before the preparer acts
    preparer.prepare_claim              -> ConfigError: per-claim error naming the
                                           field, the PREPARING record removed
    store PREPARED (devices + plans)    -> committed before the kubelet hears of it

Unprepare, per claim: no record (unknown, deleted, already done) is a success;
otherwise the record is moved to UNPREPARING, ``preparer.unprepare_claim`` runs,
the record is deleted and this driver's entries in the claim's status are
cleared (best effort: the claim may be gone).

After a restart, :meth:`ClaimService.replay` resolves records a crash left in
PREPARING (rolled back: the kubelet never got an answer and will prepare again)
or UNPREPARING (finished). Each step of it is idempotent.

Durability: the PREPARING and UNPREPARING marks are committed without waiting
for an fsync (``sync=False``: they survive a crash of the process, which is what
they guard against; the node state they cover does not survive a power cut
either), so they run on the loop thread like reads (tens of microseconds). The
PREPARED record and the final delete wait for the fsync (the kubelet is told
about them) and run in a worker thread (:func:`asyncio.to_thread`), so a slow
disk never stalls the event loop. One fsync per prepare, one per unprepare.
A preparer that leaves state which outlives a reboot (files such as CDI specs)
asks for ``ClaimService(..., durable_marks=True)``: the marks are then fsynced
too, in the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kndkit.dra.types import ClaimRef, PreparedDevice, PrepareResult, UnprepareResult
from kndkit.errors import InvalidArgument
from kndkit.k8s.claims import Claim, ClaimReader
from kndkit.k8s.errors import ClaimError, ConfigError
from kndkit.k8s.status import ClaimStatusWriter, DeviceStatus
from kndkit.state import ClaimPhase, ClaimRecord, StateStore

__all__ = [
    "ClaimPreparer",
    "ClaimService",
    "ClaimTiming",
    "PreparedClaim",
    "ReplayResult",
]

log = logging.getLogger("kndkit.dra.service")


@dataclass(frozen=True)
class PreparedClaim:
    """What a :class:`ClaimPreparer` computed for one claim.

    ``devices`` go back to the kubelet; ``plans`` (JSON data) are persisted and
    handed back in :meth:`ClaimPreparer.unprepare_claim` and to whatever attaches
    the devices later; ``status`` (optional) is written to the claim's status
    with server-side apply once the claim is prepared.
    """

    devices: Sequence[PreparedDevice]
    plans: Any = None
    status: Sequence[DeviceStatus] = ()


@runtime_checkable
class ClaimPreparer(Protocol):
    """The driver's part of prepare and unprepare.

    ``prepare_claim`` validates the claim's configuration (raising
    :class:`~kndkit.k8s.errors.ConfigError` that names the offending field) and
    computes devices and plans. It should change nothing outside the process;
    if it must, it either succeeds or leaves nothing behind when it raises.

    ``unprepare_claim`` undoes whatever a prepare did. It must be idempotent and
    must accept a record in any phase, including a PREPARING record without
    devices or plans (a prepare interrupted by a crash).
    """

    async def prepare_claim(self, claim: Claim) -> PreparedClaim: ...

    async def unprepare_claim(self, record: ClaimRecord) -> None: ...


@dataclass(frozen=True)
class ClaimTiming:
    """Where the time of one claim's prepare went (seconds, ``time.perf_counter``)."""

    uid: str
    get_s: float = 0.0
    """The claim GET from the API server (0 when answered from the store)."""
    prepare_s: float = 0.0
    """The preparer's ``prepare_claim``."""
    store_s: float = 0.0
    """State-store reads and writes."""
    total_s: float = 0.0
    """All of it, including status writes."""
    cached: bool = False
    """Answered from the store (the claim was prepared already)."""
    error: str = ""


@dataclass
class ReplayResult:
    """What :meth:`ClaimService.replay` did."""

    resolved: list[str] = field(default_factory=list)
    """UIDs of interrupted records that were undone or finished and removed."""
    failed: dict[str, str] = field(default_factory=dict)
    """UID -> error for records left in place (to be retried)."""


class ClaimService:
    """Prepares and unprepares claims for the kubelet; see the module docstring.

    ``status`` (optional) writes device status on success and clears it on
    unprepare, and records a Kubernetes Event on the claim when prepare fails for
    a reason the claim's owner can fix (bad configuration, a preparer error).
    ``on_timing`` is called with a :class:`ClaimTiming` for each prepared claim;
    the timings of the last call are also in :attr:`last_timings`.
    ``durable_marks`` fsyncs the PREPARING/UNPREPARING marks as well (see the
    module docstring).
    """

    def __init__(
        self,
        driver: str,
        reader: ClaimReader,
        store: StateStore,
        preparer: ClaimPreparer,
        status: ClaimStatusWriter | None = None,
        *,
        on_timing: Callable[[ClaimTiming], None] | None = None,
        durable_marks: bool = False,
    ) -> None:
        self.driver = driver
        self.reader = reader
        self.store = store
        self.preparer = preparer
        self.status = status
        self.on_timing = on_timing
        self.durable_marks = durable_marks
        self.last_timings: list[ClaimTiming] = []

    # ------------------------------------------------------------------ DRAHandler

    async def prepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, PrepareResult]:
        """Prepare each claim; every claim gets an entry, failures are per claim."""
        out: dict[str, PrepareResult] = {}
        timings: list[ClaimTiming] = []
        for ref in claims:
            result, timing = await self._prepare_one(ref)
            out[ref.uid] = result
            timings.append(timing)
            if self.on_timing is not None:
                try:
                    self.on_timing(timing)
                except Exception:
                    log.exception("on_timing callback failed")
        self.last_timings = timings
        return out

    async def unprepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, UnprepareResult]:
        """Unprepare each claim; a claim this node does not know is a success."""
        out: dict[str, UnprepareResult] = {}
        for ref in claims:
            out[ref.uid] = await self._unprepare_one(ref)
        return out

    # ------------------------------------------------------------------ replay

    async def replay(self) -> ReplayResult:
        """Resolve records a crash left in PREPARING or UNPREPARING (idempotent)."""
        result = ReplayResult()
        for rec in self.store.pending():
            try:
                await self._undo(rec)
            except Exception as e:
                log.warning(
                    "replay: claim %s (%s) left in %s: %s", rec.ref, rec.uid, rec.phase.value, e
                )
                result.failed[rec.uid] = str(e)
            else:
                log.info("replay: claim %s: interrupted %s resolved", rec.ref, rec.phase.value)
                result.resolved.append(rec.uid)
        return result

    # ------------------------------------------------------------------ prepare

    async def _prepare_one(self, ref: ClaimRef) -> tuple[PrepareResult, ClaimTiming]:
        t_start = time.perf_counter()
        get_s = prepare_s = store_s = 0.0

        def timing(error: str = "", cached: bool = False) -> ClaimTiming:
            return ClaimTiming(
                ref.uid,
                get_s=get_s,
                prepare_s=prepare_s,
                store_s=store_s,
                total_s=time.perf_counter() - t_start,
                cached=cached,
                error=error,
            )

        def failed(message: str) -> tuple[PrepareResult, ClaimTiming]:
            log.warning("prepare %s: %s", ref, message)
            return PrepareResult(error=message), timing(message)

        t = time.perf_counter()
        try:
            rec = self.store.get(ref.uid)
        except Exception as e:
            return failed(f"claim {ref.namespace}/{ref.name}: state store: {e}")
        store_s += time.perf_counter() - t

        if rec is not None and rec.phase is ClaimPhase.PREPARED:
            log.debug("prepare %s: already prepared", ref)
            return PrepareResult(devices=rec.devices), timing(cached=True)
        if rec is not None:
            # A crash interrupted an earlier prepare or unprepare: undo it first.
            try:
                await self._undo(rec)
            except Exception as e:
                return failed(
                    f"claim {ref.namespace}/{ref.name}: cannot undo its interrupted "
                    f"{rec.phase.value} step: {e}"
                )

        t = time.perf_counter()
        try:
            claim = await self.reader.get(ref)
        except ClaimError as e:
            get_s = time.perf_counter() - t
            return failed(str(e))
        except Exception as e:
            get_s = time.perf_counter() - t
            return failed(f"claim {ref.namespace}/{ref.name}: cannot read it: {e}")
        get_s = time.perf_counter() - t

        pending = ClaimRecord.for_claim(
            ref, ClaimPhase.PREPARING, pod_uids=[p.uid for p in claim.pods]
        )
        t = time.perf_counter()
        try:
            await self._mark(self.store.put, pending)
        except Exception as e:
            store_s += time.perf_counter() - t
            return failed(f"claim {ref.namespace}/{ref.name}: state store: {e}")
        store_s += time.perf_counter() - t

        t = time.perf_counter()
        try:
            prepared = await self.preparer.prepare_claim(claim)
        except ConfigError as e:
            prepare_s = time.perf_counter() - t
            message = _config_message(ref, e)
            await self._forget(pending)
            await self._event(ref, "InvalidConfiguration", message)
            return failed(message)
        except Exception as e:
            prepare_s = time.perf_counter() - t
            log.exception("prepare %s: preparer failed", ref)
            message = f"claim {ref.namespace}/{ref.name}: prepare failed: {e}"
            await self._forget(pending)
            await self._event(ref, "PrepareFailed", message)
            return failed(message)
        prepare_s = time.perf_counter() - t

        done = ClaimRecord.for_claim(
            ref,
            ClaimPhase.PREPARED,
            devices=prepared.devices,
            plans=prepared.plans,
            pod_uids=pending.pod_uids,
        )
        t = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.put, done)
        except Exception as e:
            store_s += time.perf_counter() - t
            kind = "plans are not JSON data" if isinstance(e, InvalidArgument) else "state store"
            message = f"claim {ref.namespace}/{ref.name}: {kind}: {e}"
            log.error("prepare %s: %s; undoing it", ref, message)
            try:
                await self._undo(pending)
            except Exception:
                log.exception("prepare %s: undo after a failed store write failed", ref)
            return failed(message)
        store_s += time.perf_counter() - t

        if prepared.status and self.status is not None:
            try:
                await self.status.apply(ref, prepared.status)
            except Exception as e:
                log.warning("prepare %s: writing device status failed: %s", ref, e)
        log.info("prepared %s: %d device(s)", ref, len(done.devices))
        return PrepareResult(devices=done.devices), timing()

    # ------------------------------------------------------------------ unprepare

    async def _unprepare_one(self, ref: ClaimRef) -> UnprepareResult:
        try:
            rec = self.store.get(ref.uid)
        except Exception as e:
            log.warning("unprepare %s: state store: %s", ref, e)
            return UnprepareResult(error=f"claim {ref.namespace}/{ref.name}: state store: {e}")
        if rec is None:
            log.debug("unprepare %s: not prepared here (already done, or never)", ref)
            return UnprepareResult()
        try:
            await self._undo(rec)
        except Exception as e:
            log.warning("unprepare %s: %s", ref, e)
            return UnprepareResult(error=f"claim {ref.namespace}/{ref.name}: unprepare failed: {e}")
        if self.status is not None:
            try:
                await self.status.clear(ref)
            except Exception as e:
                log.warning("unprepare %s: clearing device status failed: %s", ref, e)
        log.info("unprepared %s", ref)
        return UnprepareResult()

    # ------------------------------------------------------------------ helpers

    async def _undo(self, rec: ClaimRecord) -> None:
        """UNPREPARING persisted -> preparer.unprepare_claim -> record deleted."""
        if rec.phase is not ClaimPhase.UNPREPARING:
            rec = await self._mark(self.store.set_phase, rec.uid, ClaimPhase.UNPREPARING)
        await self.preparer.unprepare_claim(rec)
        await asyncio.to_thread(self.store.delete, rec.uid)

    async def _mark(self, write: Callable[..., ClaimRecord], *args: Any) -> ClaimRecord:
        """A PREPARING/UNPREPARING mark: unsynced on the loop thread, or durable in a thread."""
        if self.durable_marks:
            return await asyncio.to_thread(write, *args)
        return write(*args, sync=False)

    async def _forget(self, rec: ClaimRecord) -> None:
        """Drop a PREPARING record after the preparer refused the claim."""
        try:
            await asyncio.to_thread(self.store.delete, rec.uid)
        except Exception:
            log.exception("claim %s: removing its PREPARING record failed", rec.ref)

    async def _event(self, ref: ClaimRef, reason: str, message: str) -> None:
        if self.status is None:
            return
        try:
            await self.status.event(ref, reason, message)
        except Exception as e:
            log.warning("claim %s: recording event %s failed: %s", ref, reason, e)


def _config_message(ref: ClaimRef, e: ConfigError) -> str:
    """The kubelet-facing text: names the claim and the offending field, once each."""
    text = str(e)
    if e.field and e.field not in text:
        text = f"{text} (field {e.field})"
    if f"{ref.namespace}/{ref.name}" not in text:
        text = f"claim {ref.namespace}/{ref.name}: {text}"
    return text
