"""kndkit.state: the crash-safe store of prepared claims (real SQLite files, real processes)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kndkit.dra.types import ClaimRef, PreparedDevice
from kndkit.errors import InvalidArgument, KndError
from kndkit.state import SCHEMA_VERSION, ClaimPhase, ClaimRecord, StateError, StateStore

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="knd-st-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def store(tmpdir_short: Path) -> Iterator[StateStore]:
    s = StateStore(tmpdir_short / "state.db")
    try:
        yield s
    finally:
        s.close()


def _dev(i: int) -> PreparedDevice:
    return PreparedDevice(f"pool-{i % 2}", f"eth{i}", ("nic",), (f"kndkit.test/net=c-eth{i}",))


def _rec(i: int, phase: ClaimPhase = ClaimPhase.PREPARED, **kw: Any) -> ClaimRecord:
    return ClaimRecord.for_claim(
        ClaimRef("ns", f"claim-{i}", f"uid-{i}"),
        phase,
        devices=kw.pop("devices", (_dev(i),)),
        plans=kw.pop("plans", {"links": [{"name": f"eth{i}", "mtu": 1500}], "n": i}),
        pod_uids=kw.pop("pod_uids", (f"pod-{i}",)),
    )


# --------------------------------------------------------------------------- basics


def test_put_get_list_delete(store: StateStore) -> None:
    assert store.get("uid-1") is None
    assert store.list() == []
    stored = store.put(_rec(1))
    assert stored.created_at > 0 and stored.updated_at >= stored.created_at
    got = store.get("uid-1")
    assert got == stored
    assert got is not None
    assert got.ref == ClaimRef("ns", "claim-1", "uid-1")
    assert got.devices == (_dev(1),)
    assert got.plans == {"links": [{"name": "eth1", "mtu": 1500}], "n": 1}
    assert got.pod_uids == ("pod-1",)

    store.put(_rec(2, ClaimPhase.PREPARING, devices=(), plans=None))
    assert [r.uid for r in store.list()] == ["uid-1", "uid-2"]
    assert [r.uid for r in store.pending()] == ["uid-2"]
    assert len(store) == 2

    assert store.delete("uid-1") is True
    assert store.delete("uid-1") is False
    assert [r.uid for r in store.list()] == ["uid-2"]


def test_replace_keeps_created_at_and_set_phase(store: StateStore) -> None:
    first = store.put(_rec(1, ClaimPhase.PREPARING, devices=()))
    time.sleep(0.01)
    second = store.put(_rec(1))
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    moved = store.set_phase("uid-1", ClaimPhase.UNPREPARING)
    assert moved.phase is ClaimPhase.UNPREPARING
    assert moved.devices == second.devices and moved.plans == second.plans
    assert [r.uid for r in store.pending()] == ["uid-1"]
    with pytest.raises(StateError, match="no record of claim uid-9"):
        store.set_phase("uid-9", ClaimPhase.UNPREPARING)


def test_share_id_and_tuples_survive(store: StateStore) -> None:
    dev = PreparedDevice("p", "d", ("a", "b"), (), share_id="3f0c")
    store.put(_rec(1, devices=(dev,), plans=("x", [1, 2.5, True, None])))
    got = store.get("uid-1")
    assert got is not None
    assert got.devices == (dev,)
    assert got.plans == ["x", [1, 2.5, True, None]]


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        ({"s": {1, 2}}, "not JSON data"),
        ({1: "int key"}, "round trip"),
        ({"x": float("nan")}, "not JSON data"),
        ({"o": object()}, "not JSON data"),
    ],
)
def test_bad_plans_are_refused_and_nothing_is_written(
    store: StateStore, plans: Any, message: str
) -> None:
    store.put(_rec(1))
    with pytest.raises(InvalidArgument, match=message) as err:
        store.put(_rec(1, ClaimPhase.UNPREPARING, plans=plans))
    assert "uid-1" in str(err.value)
    got = store.get("uid-1")
    assert got is not None and got.phase is ClaimPhase.PREPARED
    with pytest.raises(InvalidArgument):
        store.put(_rec(2, plans=plans))
    assert store.get("uid-2") is None


def test_bad_record_fields_are_refused(store: StateStore) -> None:
    with pytest.raises(InvalidArgument, match="uid must be a non-empty string"):
        store.put(ClaimRecord("", "ns", "n", ClaimPhase.PREPARED))
    with pytest.raises(InvalidArgument, match="not a PreparedDevice"):
        store.put(ClaimRecord("u", "ns", "n", ClaimPhase.PREPARED, devices=("eth0",)))  # type: ignore[arg-type]
    assert store.list() == []


def test_survives_reopen_and_file_modes(tmpdir_short: Path) -> None:
    path = tmpdir_short / "sub" / "state.db"
    with StateStore(path) as s:
        s.put(_rec(1))
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    with StateStore(path) as s:
        assert [r.uid for r in s.list()] == ["uid-1"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.close()


def test_closed_store_raises_state_error(tmpdir_short: Path) -> None:
    s = StateStore(tmpdir_short / "state.db")
    s.close()
    with pytest.raises(StateError):
        s.get("x")
    with pytest.raises(StateError):
        s.put(_rec(1))


# --------------------------------------------------------------------------- bad files


def test_not_a_database(tmpdir_short: Path) -> None:
    path = tmpdir_short / "state.db"
    path.write_bytes(b"this is not sqlite at all, just some text " * 200)
    with pytest.raises(StateError, match="not a usable kndkit state database") as err:
        StateStore(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, KndError)


def test_damaged_database(tmpdir_short: Path) -> None:
    path = tmpdir_short / "state.db"
    with StateStore(path) as s:
        for i in range(300):
            s.put(_rec(i, plans={"pad": "x" * 500}))
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    # Scribble over the middle pages (table b-tree pages), keep the header.
    data = bytearray(path.read_bytes())
    assert len(data) > 40000
    for off in range(8192, len(data) - 4096, 4096):
        data[off : off + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(StateError) as err:
        s2 = StateStore(path)
        s2.list()
    assert str(path) in str(err.value)


def test_newer_schema_is_refused(tmpdir_short: Path) -> None:
    path = tmpdir_short / "state.db"
    with StateStore(path) as s:
        s.put(_rec(1))
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        StateStore(path)


def test_damaged_record_names_the_claim(store: StateStore) -> None:
    store.put(_rec(7))
    db = sqlite3.connect(store.path)
    db.execute("UPDATE claims SET devices = 'not json' WHERE uid = 'uid-7'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="record of claim uid-7 is damaged"):
        store.get("uid-7")


# --------------------------------------------------------------------------- processes

_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {python_dir!r})
    from kndkit.dra.types import ClaimRef, PreparedDevice
    from kndkit.state import ClaimPhase, ClaimRecord, StateStore

    path, tag, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = StateStore(path, busy_timeout=30)

    def devices(i):
        n = i % 4 + 1
        return tuple(PreparedDevice("pool", f"{{tag}}-dev{{i}}-{{k}}", ("nic",)) for k in range(n))

    def plans(i):
        pad = [f"{{tag}}-{{i}}-{{k}}" * 20 for k in range(i % 7 + 3)]
        return {{"i": i, "tag": tag, "pad": pad}}

    i = start
    while count < 0 or i < start + count:
        ref = ClaimRef("ns", f"{{tag}}-{{i}}", f"{{tag}}-{{i}}")
        s.put(ClaimRecord.for_claim(ref, ClaimPhase.PREPARING, pod_uids=[f"pod-{{i}}"]), sync=False)
        print(f"{{i}} preparing", flush=True)
        s.put(ClaimRecord.for_claim(ref, ClaimPhase.PREPARED, devices=devices(i), plans=plans(i),
                                    pod_uids=[f"pod-{{i}}"]))
        print(f"{{i}} prepared", flush=True)
        if i % 2 == 0:
            s.set_phase(ref.uid, ClaimPhase.UNPREPARING, sync=False)
            print(f"{{i}} unpreparing", flush=True)
            s.delete(ref.uid)
            print(f"{{i}} deleted", flush=True)
        i += 1
    s.close()
    """
)


def _writer_script(d: Path) -> Path:
    script = d / "writer.py"
    script.write_text(_WRITER.format(python_dir=str(PYTHON_DIR)))
    return script


def _expected_devices(tag: str, i: int) -> tuple[PreparedDevice, ...]:
    return tuple(PreparedDevice("pool", f"{tag}-dev{i}-{k}", ("nic",)) for k in range(i % 4 + 1))


def _expected_plans(tag: str, i: int) -> dict[str, Any]:
    return {"i": i, "tag": tag, "pad": [f"{tag}-{i}-{k}" * 20 for k in range(i % 7 + 3)]}


def _replay(store: StateStore) -> int:
    """What a restarted driver does with interrupted steps: roll them forward to gone."""
    done = 0
    for rec in store.pending():
        store.delete(rec.uid)
        done += 1
    return done


def _check_consistent(store: StateStore, tag: str, last_ack: tuple[int, str] | None) -> None:
    """Every record is whole; exactly what the acknowledged steps imply is there."""
    recs = {r.uid: r for r in store.list() if r.uid.startswith(f"{tag}-")}
    last_i = last_ack[0] if last_ack else -1
    for uid, r in recs.items():
        i = int(uid.rsplit("-", 1)[1])
        assert r.pod_uids == (f"pod-{i}",)
        if r.phase is ClaimPhase.PREPARING:
            assert r.devices == () and r.plans is None
        else:
            assert r.devices == _expected_devices(tag, i)
            assert r.plans == _expected_plans(tag, i)
        if i < last_i:
            # Finished iterations: odd ones stay prepared, even ones are gone.
            assert i % 2 == 1 and r.phase is ClaimPhase.PREPARED, r
        else:
            assert i in (last_i, last_i + 1), r
    for i in range(last_i):
        assert (f"{tag}-{i}" in recs) == (i % 2 == 1), i
    if last_ack:
        # Each step is printed after its commit returned, and the pipe keeps what was
        # printed before the kill: the store holds the acknowledged step, or at most
        # one step more (committed, killed before printing).
        i, step = last_ack
        steps = ["preparing", "prepared"] + (["unpreparing", "deleted"] if i % 2 == 0 else [])
        r = recs.get(f"{tag}-{i}")
        state = "deleted" if r is None else r.phase.value
        nxt = recs.get(f"{tag}-{i + 1}")
        if step == steps[-1]:
            assert state == step
            assert nxt is None or nxt.phase is ClaimPhase.PREPARING
        else:
            assert state in (step, steps[steps.index(step) + 1])
            assert nxt is None


def test_sigkill_mid_sequence_leaves_a_consistent_store(tmpdir_short: Path) -> None:
    path = tmpdir_short / "state.db"
    script = _writer_script(tmpdir_short)
    rng = random.Random(4)
    start = 0
    for round_ in range(6):
        tag = f"r{round_}"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), tag, str(start), "-1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        # Let it run a random number of steps, then kill it without warning.
        steps = rng.randint(20, 120)
        last: tuple[int, str] | None = None
        for _ in range(steps):
            line = proc.stdout.readline()
            assert line, "writer died on its own"
            n, step = line.split()
            last = (int(n), step)
        time.sleep(rng.random() * 0.005)
        proc.send_signal(signal.SIGKILL)
        # Lines written between our last read and the kill were committed as well.
        for line in proc.stdout:
            n, step = line.split()
            last = (int(n), step)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

        with StateStore(path) as s:
            _check_consistent(s, tag, last)
            assert len(s.pending()) <= 1
            resolved = _replay(s)
            assert _replay(s) == 0  # replay is idempotent
            assert s.pending() == []
            after = {r.uid for r in s.list() if r.uid.startswith(f"{tag}-")}
        assert resolved <= 1
        # Every finished odd claim survives; nothing else of this round does.
        assert last is not None
        expected = {f"{tag}-{i}" for i in range(last[0]) if i % 2 == 1}
        if last[0] % 2 == 1 and last[1] == "prepared":
            expected.add(f"{tag}-{last[0]}")
        # The claim in flight may have reached PREPARED just before the kill.
        assert after - expected <= {f"{tag}-{last[0]}"}
        assert expected <= after


def test_two_processes_share_one_file(tmpdir_short: Path) -> None:
    """A rolling update: two instances write the same file at the same time."""
    path = tmpdir_short / "state.db"
    script = _writer_script(tmpdir_short)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), tag, "0", "60"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with StateStore(path) as s:
        uids = sorted(r.uid for r in s.list())
        assert s.pending() == []
    assert uids == sorted(f"{t}-{i}" for t in ("a", "b") for i in range(60) if i % 2 == 1)


def _open_and_write(path: str, tag: str) -> str:
    try:
        with StateStore(path, busy_timeout=20) as s:
            for i in range(3):
                ref = ClaimRef("ns", f"{tag}-{i}", f"{tag}-{i}")
                s.put(ClaimRecord.for_claim(ref, ClaimPhase.PREPARED))
        return "ok"
    except Exception as e:  # reported to the test
        return repr(e)


def test_processes_opening_a_new_file_at_once(tmpdir_short: Path) -> None:
    """Several instances creating the same new file race in SQLite's switch to WAL,
    where it returns SQLITE_BUSY without waiting (seen 1 in 360 opens); the set-up
    retries until busy_timeout."""
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(6) as pool:
        for round_ in range(15):
            path = str(tmpdir_short / f"race-{round_}.db")
            results = pool.starmap(_open_and_write, [(path, f"p{k}") for k in range(6)])
            assert results == ["ok"] * 6, results
            with StateStore(path) as s:
                assert len(s) == 18


def test_writer_waits_for_another_process_lock(tmpdir_short: Path) -> None:
    path = tmpdir_short / "state.db"
    with StateStore(path, busy_timeout=0.2) as s:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            t0 = time.monotonic()
            with pytest.raises(StateError, match="locked"):
                s.put(_rec(1))
            assert time.monotonic() - t0 >= 0.15
            assert s.list() == []  # reads are not blocked by a writer (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        s.put(_rec(1))
        assert s.get("uid-1") is not None


async def test_threads_from_asyncio(store: StateStore) -> None:
    await asyncio.gather(*(asyncio.to_thread(store.put, _rec(i)) for i in range(40)))
    got = await asyncio.gather(*(asyncio.to_thread(store.get, f"uid-{i}") for i in range(40)))
    assert all(g is not None and g.uid == f"uid-{i}" for i, g in enumerate(got))
    assert len(store) == 40


def test_unsynced_marks_are_committed_and_full_sync_comes_back(store: StateStore) -> None:
    store.put(_rec(1, ClaimPhase.PREPARING, devices=()), sync=False)
    # Committed: another connection (another process) sees it at once.
    other = sqlite3.connect(store.path)
    assert other.execute("SELECT phase FROM claims").fetchall() == [("preparing",)]
    store.set_phase("uid-1", ClaimPhase.UNPREPARING, sync=False)
    assert other.execute("SELECT phase FROM claims").fetchall() == [("unpreparing",)]
    other.close()
    # Every later write is fully synced again (2 = FULL).
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)
    with pytest.raises(StateError):
        store.set_phase("uid-9", ClaimPhase.UNPREPARING, sync=False)
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)
