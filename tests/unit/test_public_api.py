"""The public API: every name in ``kndkit.__all__`` resolves; protocol layers load lazily."""

from __future__ import annotations

import subprocess
import sys

import kndkit


def test_every_public_name_resolves() -> None:
    missing = [name for name in kndkit.__all__ if not hasattr(kndkit, name)]
    assert not missing
    assert sorted(set(kndkit.__all__)) == sorted(kndkit.__all__), "duplicates in __all__"


def test_lazy_names_are_the_real_objects() -> None:
    from kndkit.dra import KubeletPlugin
    from kndkit.nri import Plugin
    from kndkit.state import StateStore

    assert kndkit.KubeletPlugin is KubeletPlugin
    assert kndkit.NRIPlugin is Plugin
    assert kndkit.StateStore is StateStore
    assert "KubeletPlugin" in dir(kndkit)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        _ = kndkit.NoSuchThing  # type: ignore[attr-defined]
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_import_kndkit_does_not_load_grpc_or_the_kubernetes_client() -> None:
    code = (
        "import sys, kndkit\n"
        "heavy = [m for m in ('grpc', 'kubernetes', 'google.protobuf') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
