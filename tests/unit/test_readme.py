"""The README's Python examples are true to the code: mypy checks them against the package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 3


def test_readme_examples_type_check(tmp_path: Path) -> None:
    files = []
    for i, block in enumerate(python_blocks()):
        f = tmp_path / f"readme_example_{i}.py"
        f.write_text(block)
        files.append(str(f))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--cache-dir=/dev/null",
            "--config-file=/dev/null",
            "--check-untyped-defs",
            "--warn-unused-ignores",
            *files,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
