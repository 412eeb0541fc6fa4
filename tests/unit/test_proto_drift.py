"""The committed generated protobuf modules match what scripts/gen-proto.sh makes from proto/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "python" / "kndkit" / "_proto"


def test_generated_stubs_match_proto_sources(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    fresh = tmp_path / "kndkit" / "_proto"
    generated = sorted(p.name for p in fresh.iterdir() if p.name != "__init__.py")
    committed = sorted(
        p.name for p in COMMITTED.iterdir() if p.is_file() and p.name != "__init__.py"
    )
    assert generated, "gen-proto.sh produced nothing"
    assert committed == generated, (
        "python/kndkit/_proto is out of date: run scripts/gen-proto.sh and commit"
    )
    _, mismatch, errors = filecmp.cmpfiles(fresh, COMMITTED, generated, shallow=False)
    assert not mismatch and not errors, (
        f"regenerate with scripts/gen-proto.sh and commit; differing: {mismatch + errors}"
    )
