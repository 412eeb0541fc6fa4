"""The plan ops beyond rtnetlink links/addresses (sysctl, ethtool, master, IPv4
GSO/GRO sizes, vrf_add, rdma_move, ebpf_detach) against the real kernel, in
fresh namespaces with veth pairs.

Each test names its namespaces with a per-process prefix and deletes them in a
fixture finaliser, so a failure leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kndkit import netlink as nl
from kndkit._native import NetNs, rdma_available
from kndkit.errors import InvalidArgument, NetlinkError, NotAvailable

pytestmark = pytest.mark.netns

_counter = itertools.count()
ARP_IGNORE = "net/ipv4/conf/v0/arp_ignore"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Env:
    """One namespace holding a veth pair v0/v1 (both up), and a second, empty one."""

    def __init__(self) -> None:
        u = f"{os.getpid() % 100000}{next(_counter)}"
        self.name = f"kpo-a{u}"
        self.other_name = f"kpo-b{u}"
        _ip("netns", "add", self.name)
        _ip("netns", "add", self.other_name)
        self.ns = NetNs.open(f"/run/netns/{self.name}")
        self.other = NetNs.open(f"/run/netns/{self.other_name}")
        nl.apply(
            [
                nl.veth("v0", "v1", ns=self.ns),
                nl.set_up("v0", ns=self.ns),
                nl.set_up("v1", ns=self.ns),
            ]
        )

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], check=check, capture_output=True, text=True
        )

    def link(self, name: str) -> nl.LinkRecord:
        return next(lk for lk in nl.dump_links(self.ns) if lk["name"] == name)

    def close(self) -> None:
        self.ns.close()
        self.other.close()
        for n in (self.name, self.other_name):
            _ip("netns", "del", n, check=False)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


def failing_route(ns: NetNs) -> nl.Step:
    """A step the kernel refuses (gateway unreachable): makes a plan fail late."""
    return nl.route_add("10.99.0.0/16", gateway="10.98.0.1", ns=ns)


def changeable(env: Env, *names: str) -> list[str]:
    st = nl.dump_ethtool("v0", env.ns)
    return [n for n in names if n in st["features"] and n not in st["fixed"]]


# ----------------------------------------------------------------------------- sysctl


def test_sysctl_is_written_inside_the_namespace(env: Env) -> None:
    host_before = nl.dump_sysctl("net/ipv4/ip_forward")
    res = nl.apply(
        [nl.sysctl(ARP_IGNORE, 1, ns=env.ns), nl.sysctl("net/ipv4/ip_forward", "1", ns=env.ns)]
    )
    assert [r["op"] for r in res["results"]] == ["sysctl", "sysctl"]
    assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "1"
    assert env.run("cat", f"/proc/sys/{ARP_IGNORE}").stdout.strip() == "1"
    assert nl.dump_sysctl("net/ipv4/ip_forward", env.ns) == "1"
    # the caller's namespace is untouched
    assert nl.dump_sysctl("net/ipv4/ip_forward") == host_before


def test_sysctl_is_undone_when_a_later_step_fails(env: Env) -> None:
    assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "0"
    with pytest.raises(NetlinkError) as ei:
        nl.apply(
            [
                nl.sysctl(ARP_IGNORE, 1, ns=env.ns),
                nl.sysctl("net/ipv4/conf/v0/arp_announce", 2, ns=env.ns),
                failing_route(env.ns),
            ]
        )
    assert ei.value.step_index == 2 and ei.value.rolled_back
    assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "0"
    assert nl.dump_sysctl("net/ipv4/conf/v0/arp_announce", env.ns) == "0"


def test_sysctl_after_a_move_targets_the_moved_link(env: Env) -> None:
    """The usual attach order: move + rename first, then the pod's sysctls."""
    nl.apply(
        [
            nl.move("v0", env.other, name="net1", ns=env.ns),
            nl.sysctl("net/ipv4/conf/net1/arp_ignore", 2, ns=env.other),
        ]
    )
    assert nl.dump_sysctl("net/ipv4/conf/net1/arp_ignore", env.other) == "2"


@pytest.mark.parametrize(
    "path",
    ["kernel/hostname", "/net/ipv4/ip_forward", "net/ipv4/../../kernel/hostname", "net//x", ""],
)
def test_bad_sysctl_paths_are_refused_before_anything_is_sent(env: Env, path: str) -> None:
    with pytest.raises(InvalidArgument):
        nl.apply([nl.set_alias("v0", "touched", ns=env.ns), nl.sysctl(path, 1, ns=env.ns)])
    assert env.link("v0")["alias"] is None


def test_missing_sysctl_fails_naming_it_and_rolls_back(env: Env) -> None:
    with pytest.raises(NetlinkError) as ei:
        nl.apply(
            [
                nl.sysctl(ARP_IGNORE, 1, ns=env.ns),
                nl.sysctl("net/ipv4/conf/nope0/arp_ignore", 1, ns=env.ns),
            ]
        )
    e = ei.value
    assert e.errno_name == "ENOENT" and e.step_index == 1 and e.rolled_back
    assert "net/ipv4/conf/nope0/arp_ignore" in str(e)
    assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "0"


# ----------------------------------------------------------------------------- ethtool


def test_ethtool_features_toggle_and_dump(env: Env) -> None:
    names = changeable(env, "tx-checksum-ip-generic", "rx-checksum")
    if not names:
        pytest.skip("veth here has none of the expected changeable features")
    before = nl.dump_ethtool("v0", env.ns)["features"]
    want = {n: not before[n] for n in names}
    res = nl.apply([nl.ethtool("v0", features=want, ns=env.ns)])
    assert res["results"][0]["op"] == "ethtool"
    after = nl.dump_ethtool("v0", env.ns)["features"]
    assert {n: after[n] for n in names} == want
    # and back
    nl.apply([nl.ethtool("v0", features={n: before[n] for n in names}, ns=env.ns)])
    assert nl.dump_ethtool("v0", env.ns)["features"] == before


def test_ethtool_is_undone_when_a_later_step_fails(env: Env) -> None:
    names = changeable(env, "tx-checksum-ip-generic", "rx-checksum")
    if not names:
        pytest.skip("veth here has none of the expected changeable features")
    before = nl.dump_ethtool("v0", env.ns)
    with pytest.raises(NetlinkError) as ei:
        nl.apply(
            [
                nl.ethtool("v0", features={n: not before["features"][n] for n in names}, ns=env.ns),
                failing_route(env.ns),
            ]
        )
    assert getattr(ei.value, "rolled_back", None) is True
    assert nl.dump_ethtool("v0", env.ns) == before


def test_unknown_feature_is_refused_naming_it_before_anything_is_sent(env: Env) -> None:
    with pytest.raises(InvalidArgument) as ei:
        nl.apply(
            [
                nl.sysctl(ARP_IGNORE, 1, ns=env.ns),
                nl.ethtool("v0", features={"rx-checksum": True, "rx-frobnicate": False}, ns=env.ns),
            ]
        )
    assert "rx-frobnicate" in str(ei.value) and getattr(ei.value, "step_index", None) == 1
    assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "0"


def test_fixed_feature_is_refused_and_earlier_steps_roll_back(env: Env) -> None:
    st = nl.dump_ethtool("v0", env.ns)
    fixed_off = [n for n in st["fixed"] if not st["features"][n]]
    if not fixed_off:
        pytest.skip("no fixed-off feature on veth here")
    name = fixed_off[0]
    with pytest.raises(InvalidArgument) as ei:
        nl.apply(
            [
                nl.sysctl(ARP_IGNORE, 1, ns=env.ns),
                nl.ethtool("v0", features={name: True}, ns=env.ns),
            ]
        )
    assert name in str(ei.value) and "fixed" in str(ei.value)
    assert getattr(ei.value, "rolled_back", None) is True
    assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "0"


def test_unknown_private_flag_is_refused_naming_it(env: Env) -> None:
    with pytest.raises(InvalidArgument) as ei:
        nl.apply([nl.ethtool("v0", private_flags={"turbo-mode": True}, ns=env.ns)])
    assert "turbo-mode" in str(ei.value)


def test_dump_ethtool_of_a_missing_link_names_it(env: Env) -> None:
    with pytest.raises(InvalidArgument, match="nope0"):
        nl.dump_ethtool("nope0", env.ns)


# ----------------------------------------------------------------------------- master, IPv4 GSO/GRO


def test_master_on_a_bridge_nomaster_and_undo(env: Env) -> None:
    env.run("ip", "link", "add", "br0", "type", "bridge")
    br = env.link("br0")["ifindex"]
    nl.apply([nl.set_master("v0", "br0", ns=env.ns)])
    assert env.link("v0")["master"] == br
    nl.apply([nl.set_master("v0", "", ns=env.ns)])
    assert env.link("v0")["master"] is None
    nl.apply([nl.set_master("v0", br, ns=env.ns)])
    assert env.link("v0")["master"] == br
    # a failing plan puts the old master back (here: detach, then fail)
    with pytest.raises(NetlinkError):
        nl.apply([nl.set_master("v0", 0, ns=env.ns), failing_route(env.ns)])
    assert env.link("v0")["master"] == br
    # and a new master is taken away again
    nl.apply([nl.set_master("v0", "", ns=env.ns)])
    with pytest.raises(NetlinkError):
        nl.apply([nl.set_master("v0", "br0", ns=env.ns), failing_route(env.ns)])
    assert env.link("v0")["master"] is None


def test_master_that_does_not_exist_is_refused_before_anything_is_sent(env: Env) -> None:
    with pytest.raises(InvalidArgument, match="br9"):
        nl.apply([nl.set_alias("v0", "x", ns=env.ns), nl.set_master("v0", "br9", ns=env.ns)])
    assert env.link("v0")["alias"] is None


def test_ipv4_gso_gro_max_size_set_and_undone(env: Env) -> None:
    lk = env.link("v0")
    if lk["gso_ipv4_max_size"] is None:
        pytest.skip("kernel without IFLA_GSO_IPV4_MAX_SIZE")
    nl.apply([nl.link_set("v0", gso_ipv4_max_size=32768, gro_ipv4_max_size=32768, ns=env.ns)])
    lk2 = env.link("v0")
    assert (lk2["gso_ipv4_max_size"], lk2["gro_ipv4_max_size"]) == (32768, 32768)
    with pytest.raises(NetlinkError):
        nl.apply(
            [
                nl.link_set("v0", gso_ipv4_max_size=16384, gro_ipv4_max_size=16384, ns=env.ns),
                failing_route(env.ns),
            ]
        )
    lk3 = env.link("v0")
    assert (lk3["gso_ipv4_max_size"], lk3["gro_ipv4_max_size"]) == (32768, 32768)


# ----------------------------------------------------------------------------- vrf_add, rdma_move


def test_vrf_add_fails_clearly_where_the_kernel_lacks_vrf(env: Env) -> None:
    try:
        nl.apply([nl.sysctl(ARP_IGNORE, 1, ns=env.ns), nl.vrf("vrf-blue", 10, ns=env.ns)])
    except NetlinkError as e:
        assert e.errno_name == "EOPNOTSUPP" and e.kernel_message == "Unknown device type"
        assert '"vrf"' in str(e) and e.step_index == 1 and e.rolled_back
        assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "0"
        return
    vrf = env.link("vrf-blue")
    assert vrf["kind"] == "vrf"


def test_rdma_move_without_rdma_is_not_available_and_changes_nothing(env: Env) -> None:
    if rdma_available():
        pytest.skip("this node has RDMA netlink")
    with pytest.raises(NotAvailable) as ei:
        nl.apply(
            [
                nl.sysctl(ARP_IGNORE, 1, ns=env.ns),
                nl.move("v0", env.other, name="net1", ns=env.ns),
                nl.rdma_move("mlx5_0", env.other, ns=env.ns),
            ]
        )
    assert "mlx5_0" in str(ei.value)
    assert nl.dump_sysctl(ARP_IGNORE, env.ns) == "0"
    assert "v0" in {lk["name"] for lk in nl.dump_links(env.ns)}
    assert {lk["name"] for lk in nl.dump_links(env.other)} == {"lo"}


# ----------------------------------------------------------------------------- ebpf_detach, dump_tc

_TCX_LOADER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf = 321 if os.uname().machine == "x86_64" else 280
def bpf(cmd, attr):
    r = libc.syscall(SYS_bpf, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r
insns = (ctypes.c_uint8 * 16)(0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0)
lic = ctypes.create_string_buffer(b"GPL")
a = (ctypes.c_uint8 * 128)()
ctypes.memmove(ctypes.addressof(a), (ctypes.c_uint32 * 2)(3, 2), 8)   # SCHED_CLS, 2 insns
ptrs = (ctypes.c_uint64 * 2)(ctypes.addressof(insns), ctypes.addressof(lic))
ctypes.memmove(ctypes.addressof(a) + 8, ptrs, 16)
ctypes.memmove(ctypes.addressof(a) + 48, b"kndtest", 7)
ctypes.memmove(ctypes.addressof(a) + 68, (ctypes.c_uint32 * 1)(46), 4)  # expected: TCX_INGRESS
fd = bpf(5, a)
b = (ctypes.c_uint8 * 128)()
ctypes.memmove(ctypes.addressof(b), (ctypes.c_uint32 * 3)(int(sys.argv[1]), fd, 46), 12)
bpf(8, b)   # BPF_PROG_ATTACH, tcx ingress
"""


def test_ebpf_detach_removes_tc_filters(env: Env) -> None:
    env.run("tc", "qdisc", "add", "dev", "v0", "clsact")
    env.run("tc", "filter", "add", "dev", "v0", "ingress", "bpf", "bytecode", "1,6 0 0 0,")
    st = nl.dump_tc("v0", env.ns)
    assert st["ebpf"] and st["filters"] == ["bpf"]
    res = nl.apply([nl.ebpf_detach("v0", ns=env.ns)])
    assert res["results"][0]["op"] == "ebpf_detach"
    assert nl.dump_tc("v0", env.ns) == {"filters": [], "tcx": [], "ebpf": False}
    assert "clsact" not in env.run("tc", "qdisc", "show", "dev", "v0").stdout
    # nothing attached: a no-op, not an error
    nl.apply([nl.ebpf_detach("v0", ns=env.ns)])


def test_ebpf_detach_removes_tcx_programs(env: Env) -> None:
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("the test loader knows the bpf syscall number of x86_64/aarch64 only")
    ifindex = env.link("v0")["ifindex"]
    r = env.run(sys.executable, "-c", _TCX_LOADER, str(ifindex), check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot attach a tcx program here: {r.stderr.strip()[-200:]}")
    st = nl.dump_tc("v0", env.ns)
    assert st["tcx"] == ["kndtest"] and st["ebpf"]
    nl.apply([nl.ebpf_detach("v0", ns=env.ns)])
    assert nl.dump_tc("v0", env.ns) == {"filters": [], "tcx": [], "ebpf": False}


def test_ebpf_detach_is_reported_as_not_undoable(env: Env) -> None:
    with pytest.raises(NetlinkError) as ei:
        nl.apply([nl.ebpf_detach("v0", ns=env.ns), failing_route(env.ns)])
    e: Any = ei.value
    assert not e.rolled_back
    assert any("ebpf_detach" in x for x in e.rollback_errors)


# ----------------------------------------------------------------------- partly applied link_set


def _half_move(env: Env, *, recover: bool) -> NetlinkError:
    """Moves v0 into the other namespace as net1, a name a link there holds."""
    env.run("ip", "addr", "add", "192.168.77.5/24", "dev", "v0")
    with pytest.raises(NetlinkError) as ei:
        nl.apply(
            [
                nl.sysctl("net/ipv4/conf/v1/arp_ignore", 1, ns=env.ns),
                nl.move("v0", env.other, name="net1", mtu=1400, ns=env.ns),
            ],
            recover_partial=recover,
        )
    assert ei.value.errno_name == "EEXIST" and ei.value.step_index == 1
    return ei.value


def test_move_whose_rename_is_refused_is_moved_back_with_recover_partial(env: Env) -> None:
    """The kernel moves the link, then refuses the rename (name taken in the
    target): with recover_partial the failing step itself is undone, with what
    the move dropped, and the target's own link keeps its name."""
    nl.apply([nl.veth("net1", "x1", ns=env.other)])
    before = {(lk["name"], lk["mac"], lk["up"], lk["mtu"]) for lk in nl.dump_links(env.ns)}
    other_before = {(lk["name"], lk["mac"]) for lk in nl.dump_links(env.other)}
    e = _half_move(env, recover=True)
    assert e.rolled_back, e.rollback_errors
    assert {(lk["name"], lk["mac"], lk["up"], lk["mtu"]) for lk in nl.dump_links(env.ns)} == before
    assert "192.168.77.5/24" in {a["cidr"] for a in nl.dump_addresses(env.ns)}
    assert {(lk["name"], lk["mac"]) for lk in nl.dump_links(env.other)} == other_before
    assert nl.dump_sysctl("net/ipv4/conf/v1/arp_ignore", env.ns) == "0"


def test_by_default_a_half_done_move_is_left_where_the_kernel_put_it(env: Env) -> None:
    nl.apply([nl.veth("net1", "x1", ns=env.other)])
    _half_move(env, recover=False)
    assert "v0" in {lk["name"] for lk in nl.dump_links(env.other)}
    assert "v0" not in {lk["name"] for lk in nl.dump_links(env.ns)}
