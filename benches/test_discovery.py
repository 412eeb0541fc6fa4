"""(d) discovery of 512 links (256 veth pairs, 128 of them with an address).

``discover``: kndkit's netlink path (``discover(ns=..., netlink=True)``: a link
and an address dump, sysfs only for parent devices) against the raw floor (the
same two dumps parsed in Python), pyroute2's link listing (``get_links()`` on an
already open socket, so its helper fork is not counted against it) and
``ip -j addr show``. Target: kndkit >= 30x faster than pyroute2.

``discover_sysfs``: the sysfs-only walk of the same 512 links against Python
reading the same files with ``os.open``/``os.read``.

The namespace's own sysfs is mounted (from a process that entered the
namespace) so that ``class/net`` lists its links, not the host's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from benches import env, impls
from benches.conftest import label, rounds, run_rounds
from benches.peers import rawnl

PAIRS = 256
N = 2 * PAIRS
WITH_ADDRESS = 128
ROUNDS = 30
ROUNDS_PYROUTE2 = 8  # ~1 s per listing on a busy 2-core machine
EXPECTED = {"lo"} | {f"d{i}{s}" for i in range(PAIRS) for s in "ab"}
ADDRESSED = {f"d{i}a": f"10.88.{i}.1/24" for i in range(WITH_ADDRESS)}


@pytest.fixture(scope="module")
def links() -> Iterator[tuple[env.Netns, str]]:
    ns = env.Netns.create("disc")
    mnt = tempfile.mkdtemp(prefix=f"{env.PREFIX}sysfs-")
    mounted = False
    try:
        lines = []
        for i in range(PAIRS):
            lines.append(f"link add d{i}a group {env.HOST_GROUP} type veth peer name d{i}b")
        lines += [f"addr add {c} dev {n}" for n, c in ADDRESSED.items()]
        env.ip_batch(ns.name, lines)
        subprocess.run(
            ["nsenter", f"--net={ns.path}", "mount", "-t", "sysfs", "sysfs", mnt],
            check=True,
            capture_output=True,
        )
        mounted = True
        assert set(os.listdir(f"{mnt}/class/net")) == EXPECTED
        yield ns, mnt
    finally:
        if mounted:
            subprocess.run(["umount", "-l", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
        ns.delete()


# --------------------------------------------------------------------------- netlink path


def _names_of(result: Any, impl: str) -> tuple[set[str], dict[str, list[str]]]:
    if impl == "kndkit":
        return {d.name for d in result.netdevs}, {d.name: list(d.addresses) for d in result.netdevs}
    if impl == "raw":
        return {lk.name for lk in result}, {lk.name: lk.addresses for lk in result}
    if impl == "pyroute2":
        return {m.get("ifname") for m in result}, {}
    return {lk["ifname"] for lk in result}, {
        lk["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in lk.get("addr_info", [])]
        for lk in result
    }


@pytest.mark.netns
@pytest.mark.parametrize("impl", impls.IMPLS)
def test_discover(benchmark, links: tuple[env.Netns, str], impl: str) -> None:
    ns, mnt = links
    label(benchmark, "discover", N, impl)
    state: dict[str, Any] = {}

    if impl == "kndkit":
        native = impls.kndkit_discover()
        if native is None:
            pytest.fail("kndkit._native is not importable or lacks discover: build it first")

        def target() -> Any:
            with native.NetNs.open(ns.path) as h:
                return native.discover(mnt, ns=h, netlink=True)

    elif impl == "raw":

        def target() -> Any:
            fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return rawnl.list_links(fd, addresses=True)
            finally:
                os.close(fd)

    elif impl == "pyroute2":
        from pyroute2 import IPRoute

        def target() -> Any:
            return list(state["ipr"].get_links())

    else:

        def target() -> Any:
            out = subprocess.run(
                ["ip", "-j", "-n", ns.name, "addr", "show"], capture_output=True, check=True
            ).stdout
            return json.loads(out)

    def setup() -> tuple[()]:
        if impl == "pyroute2" and "ipr" not in state:
            state["ipr"] = IPRoute(netns=ns.name)
        return ()

    def cleanup() -> None:
        pass

    try:
        result = run_rounds(
            benchmark,
            target,
            setup=setup,
            verify=lambda: None,
            cleanup=cleanup,
            rounds=rounds(ROUNDS_PYROUTE2 if impl == "pyroute2" else ROUNDS),
        )
    finally:
        if "ipr" in state:
            state["ipr"].close()
    names, addrs = _names_of(result, impl)
    assert names == EXPECTED
    if addrs:
        for n, cidr in ADDRESSED.items():
            assert cidr in addrs[n], f"{impl}: {n} lacks {cidr}: {addrs[n]}"


# --------------------------------------------------------------------------- sysfs walk


@pytest.mark.netns
@pytest.mark.parametrize("impl", ["kndkit", "raw"])
def test_discover_sysfs(benchmark, links: tuple[env.Netns, str], impl: str) -> None:
    _ns, mnt = links
    label(benchmark, "discover_sysfs", N, impl)
    if impl == "kndkit":
        native = impls.kndkit_discover()
        if native is None:
            pytest.fail("kndkit._native is not importable or lacks discover: build it first")

        def target() -> Any:
            return native.discover(mnt, netlink=False)

    else:

        def target() -> Any:
            return rawnl.read_sysfs_netdevs(mnt)

    result = run_rounds(
        benchmark,
        target,
        setup=lambda: (),
        verify=lambda: None,
        cleanup=lambda: None,
        rounds=rounds(ROUNDS),
    )
    if impl == "kndkit":
        got = {d.name: (d.mtu, d.mac) for d in result.netdevs}
    else:
        got = {r["name"]: (int(r["mtu"]), r["address"]) for r in result}
    assert set(got) == EXPECTED
    assert got["d0a"][0] == 1500 and got["lo"][0] == 65536
    assert got["d0a"][1] and len(got["d0a"][1]) == 17
