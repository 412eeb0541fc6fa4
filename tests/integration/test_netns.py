"""kndkit.NetNs against real namespaces: what is accepted, what is refused."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

import kndkit
from kndkit import NamespaceError, NetNs


@pytest.fixture
def netns_name() -> Iterator[str]:
    name = f"knd-ns-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def test_open_by_name_path(netns_name: str) -> None:
    path = f"/run/netns/{netns_name}"
    with NetNs.open(path) as ns:
        assert ns.path == path
        assert ns.inode == _inode(path)
        assert ns.is_alive()
        assert ns.fileno() >= 0
        assert "NetNs(path=" in repr(ns)
    assert not ns.is_alive()
    with pytest.raises(NamespaceError, match="closed"):
        ns.fileno()


def test_from_pid_and_current_are_the_same_namespace() -> None:
    a = NetNs.from_pid(os.getpid())
    b = NetNs.current()
    assert a == b
    assert hash(a) == hash(b)
    assert a.inode == _inode("/proc/self/ns/net")


def test_from_fd_duplicates(netns_name: str) -> None:
    fd = os.open(f"/run/netns/{netns_name}", os.O_RDONLY)
    try:
        ns = NetNs.from_fd(fd)
    finally:
        os.close(fd)
    assert ns.inode == _inode(f"/run/netns/{netns_name}")
    assert ns.path is None
    ns.close()


def test_deleted_namespace_is_not_alive(netns_name: str) -> None:
    ns = NetNs.open(f"/run/netns/{netns_name}")
    subprocess.run(["ip", "netns", "del", netns_name], check=True)
    assert not ns.is_alive()


def test_distinct_namespaces_differ(netns_name: str) -> None:
    assert NetNs.open(f"/run/netns/{netns_name}") != NetNs.current()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/hostname", "not a namespace file"),
        ("/proc/self/ns/uts", "not a network namespace"),
        ("/run/netns/kndkit-does-not-exist", "cannot open namespace"),
        ("/proc", "not a namespace file"),
    ],
)
def test_refused_paths(path: str, message: str) -> None:
    with pytest.raises(NamespaceError, match=message):
        NetNs.open(path)


def test_refused_fds_and_pids(tmp_path: object) -> None:
    with pytest.raises(NamespaceError):
        NetNs.from_fd(-1)
    with pytest.raises(NamespaceError):
        NetNs.from_pid(0)
    r, w = os.pipe()
    try:
        with pytest.raises(NamespaceError, match="not a namespace"):
            NetNs.from_fd(r)
    finally:
        os.close(r)
        os.close(w)


def test_errors_are_knd_errors() -> None:
    with pytest.raises(kndkit.KndError):
        NetNs.open("/etc/hostname")
