"""kndkit.state: the attachments table (schema v2) and the v1 -> v2 migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kndkit.errors import InvalidArgument
from kndkit.state import (
    SCHEMA_VERSION,
    AttachmentRecord,
    AttachPhase,
    ClaimPhase,
    StateError,
    StateStore,
)

_V1_SCHEMA = """
CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
CREATE TABLE claims (
    uid TEXT PRIMARY KEY NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('preparing', 'prepared', 'unpreparing')),
    devices TEXT NOT NULL, plans TEXT NOT NULL, pod_uids TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
INSERT INTO schema_version (id, version) VALUES (1, 1);
INSERT INTO claims VALUES ('c1', 'ns', 'claim', 'prepared',
    '[{"pool":"n","device":"d0","requests":["nic"],"cdi":[],"share_id":null}]',
    '[{"device":"d0"}]', '["pod-1"]', 1.0, 2.0);
"""


def _rec(uid: str = "pod-1", phase: AttachPhase = AttachPhase.ATTACHING) -> AttachmentRecord:
    return AttachmentRecord(
        pod_uid=uid,
        pod_ref="ns/pod",
        netns="/run/netns/x",
        phase=phase,
        claim_uids=("c1", "c2"),
        plans=[{"device": "d0", "name": "net1"}],
    )


def test_schema_version_is_2() -> None:
    assert SCHEMA_VERSION == 2


def test_attachment_lifecycle(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        assert store.attachments() == []
        assert store.get_attachment("pod-1") is None
        stored = store.put_attachment(_rec(), sync=False)
        assert stored.created_at > 0 and stored.updated_at >= stored.created_at
        got = store.get_attachment("pod-1")
        assert got == stored
        assert got.claim_uids == ("c1", "c2")
        assert got.plans == [{"device": "d0", "name": "net1"}]
        later = store.put_attachment(_rec(phase=AttachPhase.ATTACHED))
        assert later.phase is AttachPhase.ATTACHED
        assert later.created_at == stored.created_at  # kept across updates
        store.put_attachment(_rec("pod-2"))
        assert [a.pod_uid for a in store.attachments()] == ["pod-1", "pod-2"]
        assert store.delete_attachment("pod-1") is True
        assert store.delete_attachment("pod-1") is False
        assert [a.pod_uid for a in store.attachments()] == ["pod-2"]
        # claims are a separate table
        assert len(store) == 0


def test_attachments_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateStore(path) as store:
        store.put_attachment(_rec(phase=AttachPhase.DETACHING), sync=False)
    with StateStore(path) as store:
        got = store.get_attachment("pod-1")
        assert got is not None and got.phase is AttachPhase.DETACHING


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"pod_uid": ""}, "pod_uid"),
        ({"phase": "attached"}, "AttachPhase"),
        ({"claim_uids": "c1"}, "claim_uids"),
        ({"plans": [{1: 2}]}, "JSON"),
        ({"plans": [float("nan")]}, "JSON"),
        ({"netns": None}, "netns"),
    ],
)
def test_bad_attachment_refused_and_nothing_written(
    tmp_path: Path, change: dict[str, object], needle: str
) -> None:
    import dataclasses

    with StateStore(tmp_path / "s.db") as store:
        bad = dataclasses.replace(_rec(), **change)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match=needle):
            store.put_attachment(bad)
        assert store.attachments() == []


def test_v1_file_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    db.commit()
    db.close()
    with StateStore(path) as store:
        rec = store.get("c1")
        assert rec is not None and rec.phase is ClaimPhase.PREPARED
        assert rec.pod_uids == ("pod-1",)
        store.put_attachment(_rec())
        assert store.get_attachment("pod-1") is not None
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == 2
    finally:
        db.close()
    # Opening again is a no-op.
    with StateStore(path) as store:
        assert store.get_attachment("pod-1") is not None


def test_v3_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with StateStore(path):
        pass
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 3")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="schema version 3"):
        StateStore(path)
