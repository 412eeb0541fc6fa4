"""The examples run and say what their docstrings promise."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_attach_detach_example() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "attach_detach.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "attached: 5 steps" in out
    assert "pod address 10.10.0.2/24" in out
    assert "node side restored exactly: True" in out
    assert "refused as expected: InvalidArgument" in out
    assert "kernel said no at step 0: ENETUNREACH" in out
