"""RDMA netlink and verbs through ``kndkit._native``.

This machine has no NETLINK_RDMA and no RDMA devices, but libibverbs is
installed: the tests cover validation, the "RDMA not available on this node"
paths, verbs loading (present / forced absent) and that the module is never
linked against libibverbs. The wire format is covered byte by byte by
``cargo test -p knd-rdma``; a host with ``ib_core`` runs
``scripts/device-check-rdma.sh``.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from kndkit import _native
from kndkit.errors import InvalidArgument, KndError, NamespaceError, NotAvailable

NETLINK_RDMA = 20
NOT_AVAILABLE = "RDMA not available on this node"


def _has_netlink_rdma() -> bool:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_RDMA)
    except OSError:
        return False
    s.close()
    return True


def _libibverbs_loads() -> bool:
    try:
        ctypes.CDLL("libibverbs.so.1")
    except OSError:
        return False
    return True


def _has_rdma_devices() -> bool:
    p = pathlib.Path("/sys/class/infiniband")
    return p.is_dir() and any(p.iterdir())


no_rdma = pytest.mark.skipif(_has_netlink_rdma(), reason="this node has NETLINK_RDMA")


@pytest.fixture
def here() -> _native.NetNs:
    ns = _native.NetNs.current()
    try:
        yield ns
    finally:
        ns.close()


# --------------------------------------------------------------------------- netlink


@no_rdma
def test_rdma_available_is_false_without_netlink_rdma() -> None:
    assert _native.rdma_available() is False


@no_rdma
@pytest.mark.parametrize(
    "call",
    [
        "get_netns_mode",
        "set_netns_mode_shared",
        "set_netns_mode_exclusive",
        "links",
        "links_in_ns",
        "move",
        "rename",
    ],
)
def test_every_rdma_call_reports_not_available(call: str, here: _native.NetNs) -> None:
    calls = {
        "get_netns_mode": _native.rdma_get_netns_mode,
        "set_netns_mode_shared": lambda: _native.rdma_set_netns_mode("shared"),
        "set_netns_mode_exclusive": lambda: _native.rdma_set_netns_mode("exclusive"),
        "links": _native.rdma_links,
        "links_in_ns": lambda: _native.rdma_links(here),
        "move": lambda: _native.rdma_move("mlx5_0", here),
        "rename": lambda: _native.rdma_rename("mlx5_0", "rdma0"),
    }
    with pytest.raises(NotAvailable) as ei:
        calls[call]()
    assert str(ei.value).startswith(NOT_AVAILABLE), str(ei.value)
    assert isinstance(ei.value, KndError)


@pytest.mark.parametrize("mode", ["", "Shared", "EXCLUSIVE", "on", "1", "shared "])
def test_bad_netns_mode_is_invalid_argument(mode: str) -> None:
    with pytest.raises(InvalidArgument, match="shared"):
        _native.rdma_set_netns_mode(mode)


@pytest.mark.parametrize("name", ["", ".", "..", "a b", "mlx5/0", "mlx5_%d", "x" * 64, "tab\t"])
def test_bad_device_names_are_refused_before_anything_is_sent(
    name: str, here: _native.NetNs
) -> None:
    # InvalidArgument (not NotAvailable): input is validated first.
    with pytest.raises(InvalidArgument):
        _native.rdma_rename(name, "rdma0")
    with pytest.raises(InvalidArgument):
        _native.rdma_rename("mlx5_0", name)
    with pytest.raises(InvalidArgument):
        _native.rdma_move(name, here)
    with pytest.raises(ValueError):  # InvalidArgument is also a ValueError
        _native.rdma_rename(name, "rdma0")


def test_longest_valid_name_is_not_refused_as_invalid(here: _native.NetNs) -> None:
    name = "r" * 63
    try:
        _native.rdma_rename(name, "rdma0")
    except InvalidArgument as e:  # pragma: no cover - the failure we test for
        pytest.fail(f"63-byte name refused: {e}")
    except (NotAvailable, KndError):
        pass


def test_closed_namespace_is_a_namespace_error() -> None:
    ns = _native.NetNs.current()
    ns.close()
    with pytest.raises(NamespaceError):
        _native.rdma_move("mlx5_0", ns)
    with pytest.raises(NamespaceError):
        _native.rdma_links(ns)


def test_wrong_argument_types_are_type_errors() -> None:
    with pytest.raises(TypeError):
        _native.rdma_move("mlx5_0", "/proc/self/ns/net")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native.rdma_set_netns_mode(1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- verbs


@pytest.mark.skipif(not _libibverbs_loads(), reason="libibverbs is not installed")
def test_verbs_available_when_libibverbs_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KNDKIT_LIBIBVERBS", raising=False)
    assert _native.verbs_available() is True
    devices = _native.verbs_devices()
    assert isinstance(devices, list)
    if not _has_rdma_devices():
        assert devices == []
    for d in devices:
        assert d["name"]
        assert len(d["node_guid"]) == 19
        for p in d["ports"]:
            assert p["port"] >= 1
            assert p["link_layer"] in ("infiniband", "ethernet", "unspecified")


@pytest.mark.parametrize("path", ["/nonexistent/kndkit-libibverbs.so", "libc.so.6"])
def test_verbs_not_available_when_libibverbs_cannot_be_loaded(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNDKIT_LIBIBVERBS", path)
    assert _native.verbs_available() is False
    with pytest.raises(NotAvailable) as ei:
        _native.verbs_devices()
    msg = str(ei.value)
    assert msg.startswith(NOT_AVAILABLE), msg
    assert "libibverbs" in msg
    if path.startswith("/"):
        assert path in msg
        assert "No such file" in msg, msg  # the loader's own reason is kept
    else:
        assert "ibv_get_device_list" in msg, msg  # loads, but is not libibverbs


@pytest.mark.skipif(not _libibverbs_loads(), reason="libibverbs is not installed")
def test_verbs_recover_after_the_override_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNDKIT_LIBIBVERBS", "/nonexistent.so")
    assert _native.verbs_available() is False
    monkeypatch.delenv("KNDKIT_LIBIBVERBS")
    assert _native.verbs_available() is True


def test_import_and_calls_without_libibverbs_in_a_fresh_process() -> None:
    code = (
        "import kndkit, kndkit._native as n\n"
        "from kndkit.errors import NotAvailable\n"
        "assert n.verbs_available() is False\n"
        "try:\n"
        "    n.verbs_devices()\n"
        "except NotAvailable as e:\n"
        "    print('NA', e)\n"
    )
    env = dict(os.environ, KNDKIT_LIBIBVERBS="/nonexistent.so")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("NA " + NOT_AVAILABLE), proc.stdout


# --------------------------------------------------------------------------- linking


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf not installed")
def test_native_module_is_not_linked_against_rdma_core() -> None:
    so = _native.__file__
    assert so is not None
    out = subprocess.run(
        ["readelf", "-d", so], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert needed, out  # the parse found the dynamic section
    assert not [n for n in needed if "ibverbs" in n or "rdmacm" in n], needed
