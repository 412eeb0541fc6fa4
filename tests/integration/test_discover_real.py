"""discover() against the real kernel: this node's /sys and netlink, and veth
links in a private network namespace (needs root, like CI)."""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kndkit._native import NetNs, discover

pytestmark = pytest.mark.netns

PREFIX = f"kdisc{os.getpid() % 100000}"


def ip(*args: str, input: str | None = None) -> str:
    return subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True, input=input, timeout=120
    ).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"{PREFIX}-{time.monotonic_ns() % 1000000}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=60)


def _ip_links() -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(ip("-j", "-d", "link", "show"))}


def test_real_node_matches_ip_and_sysfs() -> None:
    # Other tests may add or remove links in this namespace meanwhile: compare
    # only the links that exist in both `ip` snapshots taken around discover().
    before = _ip_links()
    found = discover()  # /sys: netlink on by default
    after = _ip_links()
    stable = {
        name: link
        for name, link in after.items()
        if name in before and before[name]["ifindex"] == link["ifindex"]
    }
    assert "lo" in stable
    by = {n.name: n for n in found.netdevs}
    assert set(stable) <= set(by)
    assert set(by) <= set(before) | set(after)
    assert [n.ifindex for n in found.netdevs] == sorted(n.ifindex for n in found.netdevs)
    assert not [w for w in found.warnings if any(name in w for name in stable)]
    for name, link in stable.items():
        n = by[name]
        assert n.ifindex == link["ifindex"]
        assert n.mtu == link["mtu"]
        if link.get("address") and link.get("link_type") != "none":
            assert n.mac == link["address"]
        if "master" in link:
            assert n.master == link["master"]
    lo = by["lo"]
    assert lo.kind == "loopback" and "127.0.0.1/8" in lo.addresses
    # the sysfs-only walk of the same /sys agrees on every PCI fact
    plain = {n.name: n for n in discover("/sys", netlink=False).netdevs}
    for name in stable:
        n, p = by[name], plain.get(name)
        if p is None:  # gone between the two walks
            continue
        for field in ("pci_address", "vendor_id", "device_id", "driver", "numa_node", "pcie_root"):
            assert getattr(n, field) == getattr(p, field), (name, field)
        assert n.mac == p.mac and n.ifindex == p.ifindex
    # every netdev with a PCI parent sits under a root complex; NUMA is never -1
    for n in found.netdevs:
        assert n.numa_node is None or n.numa_node >= 0
        if n.pci_address:
            assert n.pcie_root and n.pcie_root.startswith("pci")
            assert n.kind == "physical"
            real = pathlib.Path("/sys/bus/pci/devices", n.pci_address).resolve()
            assert n.pcie_root in real.parts


def test_veths_in_a_namespace(netns: str) -> None:
    a, b, br, mv = f"{PREFIX}a", f"{PREFIX}b", f"{PREFIX}br", f"{PREFIX}m"
    ip("-n", netns, "link", "add", a, "type", "veth", "peer", "name", b)
    ip("-n", netns, "link", "add", br, "type", "bridge")
    ip("-n", netns, "link", "set", b, "master", br)
    ip("-n", netns, "link", "add", mv, "link", a, "type", "macvlan", "mode", "bridge")
    ip("-n", netns, "link", "set", a, "mtu", "1400", "address", "02:aa:bb:cc:dd:01", "up")
    ip("-n", netns, "addr", "add", "10.77.0.1/24", "dev", a)
    ip("-n", netns, "addr", "add", "fd00:77::1/64", "dev", a, "nodad")
    with NetNs.open(f"/run/netns/{netns}") as ns:
        found = discover(ns=ns)
    assert found.warnings == []
    by = {n.name: n for n in found.netdevs}
    assert set(by) == {"lo", a, b, br, mv}
    va = by[a]
    assert va.kind == "veth" and va.mtu == 1400 and va.mac == "02:aa:bb:cc:dd:01"
    assert "10.77.0.1/24" in va.addresses and "fd00:77::1/64" in va.addresses
    assert va.uppers == [mv] and va.lowers == [] and va.master is None
    assert va.pci_address is None and va.pcie_root is None and va.numa_node is None
    assert by[b].master == br and by[b].uppers == [br]
    assert by[br].kind == "bridge" and by[br].lowers == [b]
    assert by[mv].kind == "macvlan" and by[mv].lowers == [a]
    assert by["lo"].kind == "loopback" and by["lo"].addresses == []  # lo is down there
    # the caller's namespace did not see them
    assert not {a, b, br, mv} & {n.name for n in discover().netdevs}


def test_deleted_or_closed_namespace_is_an_error(netns: str) -> None:
    from kndkit.errors import NamespaceError

    ns = NetNs.open(f"/run/netns/{netns}")
    try:
        assert [n.name for n in discover(ns=ns).netdevs] == ["lo"]
        subprocess.run(["ip", "netns", "del", netns], check=True, timeout=60)
        with pytest.raises(NamespaceError, match="gone"):
            discover(ns=ns)
        ns.close()
        with pytest.raises(NamespaceError, match="closed"):
            discover(ns=ns)
    finally:
        ns.close()


# --------------------------------------------------------------------------- measurement


@pytest.mark.slow
def test_measure_512_veths_against_pyroute2(netns: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Median discover() over 512 veth links vs pyroute2 IPRoute().get_links()
    in the same namespace. Reports the numbers; asserts only correctness."""
    batch = "".join(f"link add {PREFIX}x{i} type veth peer name {PREFIX}y{i}\n" for i in range(256))
    ip("-n", netns, "-batch", "-", input=batch)
    path = f"/run/netns/{netns}"
    with NetNs.open(path) as ns:
        found = discover(ns=ns)
        assert len(found.netdevs) == 513 and found.warnings == []
        from pyroute2 import IPRoute

        ipr = IPRoute(netns=netns)  # socket opened in the namespace once
        try:
            assert len(list(ipr.get_links())) == 513
            rounds = 15
            ours, theirs = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                discover(ns=ns)
                t1 = time.perf_counter()
                list(ipr.get_links())
                t2 = time.perf_counter()
                ours.append(t1 - t0)
                theirs.append(t2 - t1)
        finally:
            ipr.close()
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    with capsys.disabled():
        print(
            f"\n[discover 512 veths] kndkit discover(ns=) median {m_ours * 1e3:.2f} ms; "
            f"pyroute2 get_links() median {m_theirs * 1e3:.2f} ms; "
            f"ratio {m_theirs / m_ours:.1f}x"
        )
