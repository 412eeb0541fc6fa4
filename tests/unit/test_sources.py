"""kndkit.sources: Netdevs and the uplink, on the real kernel (a network namespace)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from kndkit._native import NetNs, discover
from kndkit.driver import DriverOptions
from kndkit.errors import InvalidArgument
from kndkit.sources import DeviceSource, DiscoveryContext, Netdevs, NodeDevice, uplink_names


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace with: a bridge br0 (ports v0, w0) carrying the default route,
    a spare veth pair s0/s1, and loopback."""
    name = f"ksrc{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        _ip(name, "link", "add", "br0", "type", "bridge")
        for port, peer in (("v0", "v1"), ("w0", "w1")):
            _ip(name, "link", "add", port, "type", "veth", "peer", "name", peer)
            _ip(name, "link", "set", port, "master", "br0")
        _ip(name, "link", "add", "s0", "type", "veth", "peer", "name", "s1")
        for link in ("br0", "v0", "v1", "w0", "w1", "s0", "s1"):
            _ip(name, "link", "set", link, "up")
        _ip(name, "addr", "add", "192.0.2.10/24", "dev", "br0")
        _ip(name, "route", "add", "default", "via", "192.0.2.1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ctx(ns_path: str) -> tuple[DiscoveryContext, NetNs]:
    host = NetNs.open(ns_path)
    topo = discover("/sys", ns=host, netlink=True)
    return DiscoveryContext(topo, host, "t.kndkit.test", DriverOptions(node_name="n")), host


def _names(found: list[NodeDevice]) -> list[str]:
    return sorted(nd.name for nd in found)


def test_uplink_is_default_route_link_plus_ports(ns: str) -> None:
    ctx, host = _ctx(f"/run/netns/{ns}")
    with host:
        assert uplink_names(ctx.discovery.netdevs, host) == {"br0", "v0", "w0"}


def test_netdevs_default_excludes_uplink_bridge_loopback(ns: str) -> None:
    ctx, host = _ctx(f"/run/netns/{ns}")
    with host:
        found = Netdevs().discover(ctx)
        assert _names(found) == ["s0", "s1", "v1", "w1"]
        nd = next(d for d in found if d.name == "s0")
        assert nd.ifname == "s0" and nd.netdev is not None and nd.rdma is None
        assert nd.device.attributes["ifName"] == "s0"
        assert isinstance(Netdevs(), DeviceSource)


def test_netdevs_options(ns: str) -> None:
    ctx, host = _ctx(f"/run/netns/{ns}")
    with host:
        keep_uplink = Netdevs(exclude_uplink=False)
        assert _names(keep_uplink.discover(ctx)) == ["s0", "s1", "v0", "v1", "w0", "w1"]
        with_bridges = Netdevs(exclude_uplink=False, exclude_kinds=("loopback",))
        assert "br0" in _names(with_bridges.discover(ctx))
        assert _names(Netdevs(name_filter=r"s.").discover(ctx)) == ["s0", "s1"]
        assert _names(Netdevs(kinds={"bridge"}, exclude_kinds=()).discover(ctx)) == []
        assert _names(
            Netdevs(kinds={"bridge"}, exclude_kinds=(), exclude_uplink=False).discover(ctx)
        ) == ["br0"]
        # veths have no PCI parent: all virtual.
        assert Netdevs(include_virtual=False).discover(ctx) == []


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgument, match="collections"):
        Netdevs(kinds="veth")
    with pytest.raises(InvalidArgument, match="name_filter"):
        Netdevs(name_filter="[")


def test_rdma_links_reexported() -> None:
    from kndkit import rdma, sources

    assert sources.RdmaLinks is rdma.RdmaLinks
