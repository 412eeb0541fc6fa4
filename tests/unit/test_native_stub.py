"""``_native.pyi`` must stay true to the built Rust module (mypy stubtest)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_stub_matches_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "kndkit._native", "--concise"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_api_reexported() -> None:
    import kndkit

    for name in kndkit.__all__:
        assert hasattr(kndkit, name), name
