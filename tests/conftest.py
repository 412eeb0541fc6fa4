"""Shared pytest configuration.

Fixtures for the real upstream peers (kube-apiserver, the kubelet's DRA client,
containerd's NRI adaptation, the scheduler's allocator) live in
``tests/peers/*_fixtures.py`` and are loaded here as plugins.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "python"))

pytest_plugins = sorted(f"peers.{p.stem}" for p in (ROOT / "tests" / "peers").glob("*_fixtures.py"))
