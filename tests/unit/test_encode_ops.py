"""Byte-exact encodings of the newer plan ops (through ``kndkit.netlink.encode``)
and the refusal of bad input before anything is sent.

The expected bytes are written by hand from the kernel's uapi headers
(little-endian host): netlink header, ifinfomsg/tcmsg, then attributes.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from kndkit import netlink as nl
from kndkit.errors import InvalidArgument

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are LE")


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def test_vrf_add() -> None:
    (msg,) = nl.encode([nl.vrf("vrf-blue", 10)])
    assert msg == h(
        """48000000 1000 0506 01000000 00000000
           00 00 0000 00000000 00000000 00000000
           0d00 0300 7672662d626c756500 000000
           1800 1200
             0800 0100 76726600
             0c00 0200
               0800 0100 0a000000"""
    )


def test_vrf_add_up_sets_the_flag() -> None:
    (msg,) = nl.encode([nl.vrf("v", 7, up=True)])
    # ifinfomsg flags and change both IFF_UP
    assert msg[16 + 8 : 16 + 16] == h("01000000 01000000")


def test_link_set_master_by_ifindex_and_ipv4_sizes() -> None:
    (msg,) = nl.encode([nl.link_set(3, master=9, gso_ipv4_max_size=65536, gro_ipv4_max_size=32768)])
    assert msg == h(
        """38000000 1000 0500 01000000 00000000
           00 00 0000 03000000 00000000 00000000
           0800 3f00 00000100
           0800 4000 00800000
           0800 0a00 09000000"""
    )


@pytest.mark.parametrize("nomaster", ["", 0])
def test_nomaster_sends_ifla_master_zero(nomaster: str | int) -> None:
    (msg,) = nl.encode([nl.set_master(3, nomaster)])
    assert msg == h(
        """28000000 1000 0500 01000000 00000000
           00 00 0000 03000000 00000000 00000000
           0800 0a00 00000000"""
    )


def test_ebpf_detach_encodes_the_clsact_qdisc_delete() -> None:
    (msg,) = nl.encode([nl.ebpf_detach(7)], seq=5)
    assert msg == h(
        """24000000 2500 0500 05000000 00000000
           00 000000 07000000 0000ffff f1ffffff 00000000"""
    )


@pytest.mark.parametrize(
    "step",
    [
        nl.sysctl("net/ipv4/ip_forward", 1),
        nl.ethtool(3, features={"rx-checksum": True}),
    ],
)
def test_side_channel_ops_have_no_rtnetlink_encoding(step: nl.Step) -> None:
    with pytest.raises(InvalidArgument, match="not an rtnetlink request"):
        nl.encode([step])


@pytest.mark.parametrize(
    ("step", "words"),
    [
        (nl.sysctl("kernel/hostname", "x"), "net/"),
        (nl.sysctl("net/../kernel/hostname", "x"), ".."),
        ({"op": "sysctl", "path": "net/ipv4/ip_forward"}, "value is required"),
        ({"op": "sysctl", "path": "net/ipv4/ip_forward", "value": True}, "value"),
        ({"op": "sysctl", "path": "net/ipv4/ip_forward", "value": "1", "ifname": "x"}, "ifname"),
        ({"op": "ethtool", "ifname": "eth0"}, "features or private_flags"),
        ({"op": "ethtool", "ifname": "eth0", "features": {"rx-checksum": 1}}, "bool"),
        ({"op": "ethtool", "ifname": "eth0", "features": ["rx-checksum"]}, "dict"),
        ({"op": "ethtool", "features": {"rx-checksum": True}}, "ifname"),
        ({"op": "link_set", "ifindex": 3, "master": True}, "master"),
        ({"op": "link_set", "ifindex": 3, "master": -1}, "master"),
        ({"op": "link_set", "ifindex": 3, "master": "a/b"}, "a/b"),
        ({"op": "vrf_add", "name": "v"}, "table is required"),
        ({"op": "vrf_add", "name": "v", "table": 0}, "table"),
        ({"op": "rdma_move", "device": "mlx5_0"}, "netns"),
        ({"op": "rdma_move", "device": "a/b", "netns": None}, "netns"),
        ({"op": "ebpf_detach"}, "ifname or ifindex"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(step: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        nl.apply([step])
    assert words in str(ei.value)
    assert str(ei.value).startswith("step 0 (")
