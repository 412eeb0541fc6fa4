"""kndkit.plan against the real kernel: veth "NICs" in a host namespace (never the
root namespace), pods as namespaces; attach, then detach must give the host back
byte for byte (HostState and full dumps compared before/after)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kndkit import _native
from kndkit import netlink as nl
from kndkit import plan as kp
from kndkit._native import NetNs
from kndkit.errors import InvalidArgument, NetlinkError, NotAvailable
from kndkit.plan import InterfacePlan, Neighbor, Route, Rule

pytestmark = pytest.mark.netns

_counter = itertools.count()
_IFA_F_TENTATIVE = 0x40
_IFA_F_DADFAILED = 0x08
_IFA_F_OPTIMISTIC = 0x04


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Env:
    """A host namespace standing in for the node, pod namespaces, veth "NICs"."""

    def __init__(self) -> None:
        u = f"{os.getpid() % 100000}{next(_counter)}"
        self.u = u
        self.host_name = f"kpa-h{u}"
        _ip("netns", "add", self.host_name)
        self.host = NetNs.open(f"/run/netns/{self.host_name}")
        self.pods: dict[str, NetNs] = {}
        self.pod = self.new_pod()

    def new_pod(self) -> NetNs:
        name = f"kpa-p{self.u}-{len(self.pods)}"
        _ip("netns", "add", name)
        ns = NetNs.open(f"/run/netns/{name}")
        self.pods[name] = ns
        return ns

    def hip(self, *args: str) -> None:
        _ip("-n", self.host_name, *args)

    def add_nic(self, i: int, *, rich: bool = False) -> str:
        """veth ``nic<i>`` (peer ``sw<i>`` up); ``rich``: addresses, routes in two
        tables, a permanent neighbour, an alias and a non-default MTU."""
        nic, peer = f"nic{i}", f"sw{i}"
        self.hip("link", "add", nic, "type", "veth", "peer", "name", peer)
        self.hip("link", "set", peer, "up")
        self.hip("link", "set", nic, "up")
        if rich:
            self.hip("link", "set", nic, "mtu", str(1400 + i), "alias", f"uplink {i}")
            self.hip("addr", "add", f"192.168.{100 + i}.5/24", "dev", nic)
            self.hip("addr", "add", f"192.168.{100 + i}.6/24", "dev", nic, "noprefixroute")
            self.hip("addr", "add", f"fd00:{100 + i}::5/64", "dev", nic, "nodad")
            self.hip("route", "add", f"10.{100 + i}.0.0/16", "via", f"192.168.{100 + i}.1")
            self.hip("route", "add", f"10.{200 + i}.0.0/16", "via", f"192.168.{100 + i}.1",
                     "table", "100", "proto", "static", "metric", "7")  # fmt: skip
            self.hip("route", "add", f"172.16.{i}.0/24", "dev", nic, "scope", "link")
            self.hip("route", "add", f"fd01:{i}::/64", "via", f"fd00:{100 + i}::1", "metric", "5")
            self.hip("neigh", "add", f"192.168.{100 + i}.9", "lladdr", f"02:00:00:00:09:{i:02x}",
                     "dev", nic)  # fmt: skip
        return nic

    def close(self) -> None:
        for name, ns in self.pods.items():
            ns.close()
            _ip("netns", "del", name, check=False)
        self.host.close()
        _ip("netns", "del", self.host_name, check=False)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


def full_dump(ns: NetNs) -> dict[str, Any]:
    """Links, addresses, routes, rules and neighbours, every field but the
    transient ones (DAD flags, non-permanent neighbours, operstate)."""
    links = sorted(
        (lk["ifindex"], lk["name"], lk["kind"], lk["mac"], lk["mtu"], lk["up"], lk["master"],
         lk["alias"], lk["group"], lk["gso_max_size"], lk["gro_max_size"])
        for lk in nl.dump_links(ns)
    )  # fmt: skip
    transient = _IFA_F_TENTATIVE | _IFA_F_DADFAILED | _IFA_F_OPTIMISTIC
    addrs = sorted(
        (a["ifindex"], a["cidr"], a["scope"], a["flags"] & ~transient, a["label"] or "")
        for a in nl.dump_addresses(ns)
    )
    routes = sorted(tuple(sorted((k, str(v)) for k, v in r.items())) for r in nl.dump_routes(ns))
    rules = sorted(tuple(sorted((k, str(v)) for k, v in r.items())) for r in nl.dump_rules(ns))
    neighs = sorted(
        (n["ifindex"], n["address"] or "", n["lladdr"] or "", n["state"], n["flags"])
        for n in nl.dump_neighbours(ns)
        if n["state"] & 0x80  # permanent (noarp multicast entries are kernel housekeeping)
    )
    return {"links": links, "addrs": addrs, "routes": routes, "rules": rules, "neighs": neighs}


def assert_same(after: dict[str, Any], before: dict[str, Any]) -> None:
    """Equal dumps, else an error listing what appeared and what vanished."""
    diff = {
        k: {
            "gone": sorted(set(before[k]) - set(after[k])),
            "new": sorted(set(after[k]) - set(before[k])),
        }
        for k in before
        if before[k] != after[k]
    }
    assert not diff, f"namespace differs: {diff}"


def assert_restored(ns: NetNs, before: dict[str, Any], timeout: float = 10.0) -> None:
    """``ns`` dumps equal to ``before`` once the kernel's own housekeeping has
    caught up (carrier, IPv6 link-local address and its routes come back a moment
    after a link is up again); what kndkit restores is there at once."""
    deadline = time.monotonic() + timeout
    while full_dump(ns) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_same(full_dump(ns), before)


def wait_stable(ns: NetNs, timeout: float = 5.0) -> None:
    """Waits until no IPv6 address of ``ns`` is tentative (DAD after a link came up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(a["flags"] & _IFA_F_TENTATIVE for a in nl.dump_addresses(ns)):
            return
        time.sleep(0.05)


def pod_plan(i: int, nic: str, env: Env, **kw: Any) -> InterfacePlan:
    return InterfacePlan.move(
        f"dev{i}",
        nic,
        name=f"net{i}",
        mtu=1300 + i,
        mac=f"02:00:00:00:01:{i:02x}",
        addresses=(f"10.{i}.0.2/24", f"fd10:{i + 1}::2/64"),
        routes=(
            Route(f"10.{50 + i}.0.0/16", gateway=f"10.{i}.0.1"),
            Route(f"10.{60 + i}.0.0/16", gateway=f"10.{i}.0.1", table=200 + i),
        ),
        rules=(Rule(table=200 + i, priority=1000 + i, source=f"10.{i}.0.0/24"),),
        neighbors=(Neighbor(f"10.{i}.0.7", f"02:00:00:00:07:{i:02x}"),),
        **kw,
    ).capture_host(env.host)


def names(ns: NetNs) -> dict[int, str]:
    return {lk["ifindex"]: lk["name"] for lk in nl.dump_links(ns)}


def check_pod(env: Env, pod: NetNs, plans: list[InterfacePlan]) -> None:
    links = {lk["name"]: lk for lk in nl.dump_links(pod)}
    idx = names(pod)
    addrs = {(idx[a["ifindex"]], a["cidr"]) for a in nl.dump_addresses(pod)}
    routes = {(r["dst"], r["gateway"], r["table"]) for r in nl.dump_routes(pod)}
    rules = {(r["priority"], r["table"], r["src"]) for r in nl.dump_rules(pod)}
    neighs = {(idx[n["ifindex"]], n["address"], n["lladdr"]) for n in nl.dump_neighbours(pod)}
    for p in plans:
        lk = links[p.name]
        assert lk["up"] and lk["mtu"] == p.mtu and lk["mac"] == p.mac
        for a in p.addresses:
            assert (p.name, a) in addrs
        for r in p.routes:
            assert (r.destination, r.gateway, r.table or 254) in routes
        for ru in p.rules:
            assert any(
                (ru.priority in (None, prio), ru.table, ru.source) == (True, table, src)
                for prio, table, src in rules
            )
        for n in p.neighbors:
            assert (p.name, n.destination, n.hardware_addr) in neighs


# ----------------------------------------------------------------------------- attach / detach


@pytest.mark.parametrize("count", [1, 8])
def test_attach_detach_restores_host_exactly(env: Env, count: int) -> None:
    nics = [env.add_nic(i, rich=True) for i in range(count)]
    wait_stable(env.host)
    before = full_dump(env.host)
    plans = [pod_plan(i, nic, env) for i, nic in enumerate(nics)]
    snaps = [p.host for p in plans]
    assert snaps[0] is not None and len(snaps[0].routes) == 4 and snaps[0].alias == "uplink 0"
    assert snaps[0].address_flags == {
        "192.168.100.6/24": ("noprefixroute",),
        "fd00:100::5/64": ("nodad",),
    }

    res = kp.attach(plans, env.pod, host_ns=env.host)
    assert set(res.pod_links) == {p.device for p in plans}
    assert res.sendmsg <= 3  # moves, then one batch in the pod (at most one split)
    check_pod(env, env.pod, plans)
    assert not {n for n in names(env.host).values() if n.startswith("nic")}

    out = kp.detach(plans, env.pod, host_ns=env.host)
    assert sorted(out.restored) == sorted(p.device for p in plans)
    assert out.missing == out.deleted == out.conflicts == out.errors == []
    assert not [lk for lk in nl.dump_links(env.pod) if lk["name"] != "lo"]
    for p, snap in zip(plans, snaps, strict=True):
        assert p.host_ifname is not None
        assert kp.HostState.capture(p.host_ifname, env.host) == snap
    assert_restored(env.host, before)


def test_detach_twice_is_a_noop(env: Env) -> None:
    nic = env.add_nic(0, rich=True)
    wait_stable(env.host)
    before = full_dump(env.host)
    plans = [pod_plan(0, nic, env)]
    kp.attach(plans, env.pod, host_ns=env.host)
    first = kp.detach(plans, env.pod, host_ns=env.host)
    assert first.restored == ["dev0"]
    assert_restored(env.host, before)
    assert kp.detach_steps(plans, env.pod, host_ns=env.host) == []
    again = kp.detach(plans, env.pod, host_ns=env.host)
    assert again.restored == ["dev0"] and again.errors == []
    assert_same(full_dump(env.host), before)


def test_detach_repairs_drift_on_the_host(env: Env) -> None:
    """A link already on the host (the kernel or a person moved it back, under
    another name) is found by ifindex/MAC and every difference is undone."""
    nic = env.add_nic(0, rich=True)
    wait_stable(env.host)
    before = full_dump(env.host)
    plans = [pod_plan(0, nic, env)]
    snap = plans[0].host
    assert snap is not None
    kp.attach(plans, env.pod, host_ns=env.host)
    # what the kernel does when a pod namespace dies with a physical NIC in it
    pod_name = next(iter(env.pods))
    _ip("-n", pod_name, "link", "set", "net0", "netns", env.host_name, "name", f"dev{snap.ifindex}")
    env.hip("addr", "add", "192.0.2.1/32", "dev", f"dev{snap.ifindex}")  # an extra address
    steps = kp.detach_steps(plans, None, host_ns=env.host)
    assert steps and all(s.get("ns") == env.host for s in steps)
    out = kp.detach(plans, None, host_ns=env.host)
    assert out.restored == ["dev0"] and out.errors == []
    assert kp.HostState.capture(nic, env.host) == snap
    assert_restored(env.host, before)


def test_detach_after_pod_netns_deleted(env: Env) -> None:
    """A veth dies with its namespace: the device is reported missing, nothing
    else is touched and nothing raises."""
    nic = env.add_nic(0, rich=True)
    env.add_nic(1, rich=True)
    plans = [pod_plan(0, nic, env)]
    kp.attach(plans, env.pod, host_ns=env.host)
    pod_name = next(iter(env.pods))
    stale = NetNs.open(f"/run/netns/{pod_name}")
    env.pods[pod_name].close()
    _ip("netns", "del", pod_name)
    assert not stale.is_alive()
    stale.close()  # the last reference: the namespace and the veth pair go away
    deadline = time.monotonic() + 10
    while "sw0" in names(env.host).values() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sw0" not in names(env.host).values()
    wait_stable(env.host)
    before = full_dump(env.host)
    out = kp.detach(plans, stale, host_ns=env.host)
    assert out.missing == ["dev0"] and out.restored == [] and out.errors == []
    assert_same(full_dump(env.host), before)


def test_failure_mid_plan_leaves_both_namespaces_as_before(env: Env) -> None:
    nics = [env.add_nic(i, rich=True) for i in range(3)]
    wait_stable(env.host)
    host_before, pod_before = full_dump(env.host), full_dump(env.pod)
    plans = [pod_plan(i, nic, env) for i, nic in enumerate(nics)]
    bad = plans[2].with_(routes=(*plans[2].routes, Route("10.99.0.0/16", gateway="10.250.0.1")))
    with pytest.raises(NetlinkError) as ei:
        kp.attach([plans[0], plans[1], bad], env.pod, host_ns=env.host)
    e = ei.value
    assert e.rolled_back and e.op == "route_add" and e.errno_name == "ENETUNREACH"
    assert getattr(e, "device", None) == "dev2" and "'dev2'" in str(e)
    assert_restored(env.host, host_before)
    assert_same(full_dump(env.pod), pod_before)


def test_bad_input_changes_nothing(env: Env) -> None:
    nic = env.add_nic(0, rich=True)
    before = full_dump(env.host)
    plans = [pod_plan(0, nic, env), InterfacePlan.move("ghost", "nosuch0", name="net9")]
    with pytest.raises(InvalidArgument) as ei:
        kp.attach(plans, env.pod, host_ns=env.host)
    assert getattr(ei.value, "device", None) == "ghost"
    with pytest.raises(InvalidArgument, match="twice"):
        kp.attach([plans[0], plans[0]], env.pod, host_ns=env.host)
    assert_same(full_dump(env.host), before)
    assert [lk["name"] for lk in nl.dump_links(env.pod)] == ["lo"]


def test_name_taken_on_host_restores_under_temporary_name(env: Env) -> None:
    nic = env.add_nic(0, rich=True)
    plans = [pod_plan(0, nic, env)]
    snap = plans[0].host
    assert snap is not None
    kp.attach(plans, env.pod, host_ns=env.host)
    env.hip("link", "add", nic, "type", "veth", "peer", "name", "other0")  # the name, taken
    out = kp.detach(plans, env.pod, host_ns=env.host)
    tmp = f"knd{snap.ifindex}"
    assert out.restored == [] and out.conflicts == [f"dev0: restored as {tmp} ({nic} is taken)"]
    got = kp.HostState.capture(tmp, env.host)
    assert got.addresses == snap.addresses and got.routes == snap.routes and got.mtu == snap.mtu
    env.hip("link", "del", nic)
    out = kp.detach(plans, env.pod, host_ns=env.host)
    assert out.restored == ["dev0"] and out.conflicts == []
    assert kp.HostState.capture(nic, env.host) == snap


def test_macvlan_created_in_pod_and_deleted_on_detach(env: Env) -> None:
    parent = env.add_nic(0, rich=True)
    wait_stable(env.host)
    before = full_dump(env.host)
    plans = [
        InterfacePlan.macvlan(
            "mv0", parent, name="net1", mtu=1350, mac="02:00:00:00:0a:01",
            addresses=("10.7.0.2/24",), routes=(Route("default", gateway="10.7.0.1"),),
        ),
        InterfacePlan.macvlan(
            "mv1", parent, name="net2", mode="private", addresses=("10.8.0.2/24",)
        ),
    ]  # fmt: skip
    res = kp.attach(plans, env.pod, host_ns=env.host)
    assert set(res.pod_links) == {"mv0", "mv1"}
    links = {lk["name"]: lk for lk in nl.dump_links(env.pod)}
    assert links["net1"]["kind"] == "macvlan" and links["net1"]["mtu"] == 1350
    assert links["net1"]["up"] and links["net2"]["up"]
    assert any(
        r["dst"] == "default" and r["gateway"] == "10.7.0.1" for r in nl.dump_routes(env.pod)
    )
    assert_same(full_dump(env.host), before)  # the parent never left
    out = kp.detach(plans, env.pod, host_ns=env.host)
    assert sorted(out.deleted) == ["mv0", "mv1"] and out.missing == []
    assert [lk["name"] for lk in nl.dump_links(env.pod)] == ["lo"]
    assert_same(full_dump(env.host), before)
    again = kp.detach(plans, env.pod, host_ns=env.host)
    assert sorted(again.missing) == ["mv0", "mv1"] and again.deleted == []


def test_ipvlan_created_in_pod(env: Env) -> None:
    parent = env.add_nic(0)
    plans = [InterfacePlan.ipvlan("iv0", parent, name="net1", addresses=("10.9.0.2/24",))]
    try:
        kp.attach(plans, env.pod, host_ns=env.host)
    except NetlinkError as e:
        if e.errno_name == "EOPNOTSUPP":
            pytest.skip(f"kernel lacks ipvlan: {e}")
        raise
    assert {lk["name"]: lk["kind"] for lk in nl.dump_links(env.pod)}["net1"] == "ipvlan"
    assert kp.detach(plans, env.pod, host_ns=env.host).deleted == ["iv0"]


def test_move_without_snapshot_gives_back_the_name(env: Env) -> None:
    nic = env.add_nic(0)
    plans = [InterfacePlan.move("d", nic, name="eth9")]
    kp.attach(plans, env.pod, host_ns=env.host)
    out = kp.detach(plans, env.pod, host_ns=env.host)
    assert out.restored == ["d"] and nic in names(env.host).values()


# ----------------------------------------------------------------------------- newer native ops


def _needs(op: str, key: str = "") -> None:
    # The installed build must have every op the plan layer emits.
    assert kp._native_has(op, key), f"this kndkit._native lacks {op} {key}".strip()


def test_master_restored(env: Env) -> None:
    _needs("link_set", "master")
    nic = env.add_nic(0)
    env.hip("link", "add", "br0", "type", "bridge")
    env.hip("link", "set", nic, "master", "br0")
    wait_stable(env.host)
    before = full_dump(env.host)
    plans = [InterfacePlan.move("d", nic, name="net1").capture_host(env.host)]
    assert plans[0].host is not None and plans[0].host.master == "br0"
    kp.attach(plans, env.pod, host_ns=env.host)
    out = kp.detach(plans, env.pod, host_ns=env.host)
    assert out.errors == []
    assert_restored(env.host, before)


def test_sysctls_set_in_pod_and_restored_on_host(env: Env) -> None:
    _needs("sysctl")
    nic = env.add_nic(0, rich=True)
    env.hip("link", "set", nic, "up")
    subprocess.run(["ip", "netns", "exec", env.host_name, "sysctl", "-qw",
                    f"net.ipv4.conf.{nic}.arp_ignore=2"], check=True)  # fmt: skip
    plan = InterfacePlan.move(
        "d", nic, name="net1", sysctls={"net/ipv4/conf/net1/arp_ignore": "1"}
    ).capture_host(env.host)
    assert plan.host is not None
    assert dict(plan.host.sysctls) == {f"net/ipv4/conf/{nic}/arp_ignore": "2"}
    kp.attach([plan], env.pod, host_ns=env.host)
    pod_name = next(iter(env.pods))
    got = subprocess.run(
        ["ip", "netns", "exec", pod_name, "sysctl", "-n", "net.ipv4.conf.net1.arp_ignore"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert got.stdout.strip() == "1"
    kp.detach([plan], env.pod, host_ns=env.host)
    assert kp.HostState.capture(nic, env.host, sysctls=plan.host.sysctls) == plan.host


def test_ethtool_features_set_in_pod_and_restored_on_host(env: Env) -> None:
    _needs("ethtool")
    nic = env.add_nic(0, rich=True)
    wait_stable(env.host)
    before = full_dump(env.host)
    feats_before = nl.dump_ethtool(nic, env.host)["features"]
    assert feats_before["tx-checksum-ip-generic"] and not feats_before["rx-gro"]
    want = {"tx-checksum-ip-generic": False, "rx-gro": True}
    plan = InterfacePlan.move("d", nic, name="net1", ethtool_features=want).capture_host(env.host)
    assert plan.host is not None
    assert dict(plan.host.ethtool_features) == {"tx-checksum-ip-generic": True, "rx-gro": False}
    kp.attach([plan], env.pod, host_ns=env.host)
    got = nl.dump_ethtool("net1", env.pod)["features"]
    assert {k: got[k] for k in want} == want
    out = kp.detach([plan], env.pod, host_ns=env.host)
    assert out.restored == ["d"] and out.errors == []
    assert nl.dump_ethtool(nic, env.host)["features"] == feats_before
    assert_restored(env.host, before)
    assert kp.detach_steps([plan], env.pod, host_ns=env.host) == []


def test_ipv4_gso_gro_sizes_set_and_restored(env: Env) -> None:
    _needs("link_set", "gso_ipv4_max_size")
    nic = env.add_nic(0)
    plan = InterfacePlan.move(
        "d", nic, name="net1", gso_max_size=32768, gso_ipv4_max_size=32768, gro_ipv4_max_size=32768
    ).capture_host(env.host)
    assert plan.host is not None and plan.host.gso_ipv4_max_size == 65536
    kp.attach([plan], env.pod, host_ns=env.host)
    lk = next(lk for lk in nl.dump_links(env.pod) if lk["name"] == "net1")
    raw: dict[str, Any] = dict(lk)
    assert (raw["gso_max_size"], raw["gso_ipv4_max_size"], raw["gro_ipv4_max_size"]) == (
        32768, 32768, 32768,
    )  # fmt: skip
    kp.detach([plan], env.pod, host_ns=env.host)
    assert kp.HostState.capture(nic, env.host) == plan.host


def test_vrf(env: Env) -> None:
    _needs("vrf_add")
    nics = [env.add_nic(i, rich=True) for i in range(2)]
    wait_stable(env.host)
    host_before, pod_before = full_dump(env.host), full_dump(env.pod)
    plans = [
        InterfacePlan.move(
            f"d{i}", nic, name=f"net{i}", addresses=(f"10.{i}.0.2/24",), vrf=kp.Vrf("blue", 10),
            routes=(Route("10.99.0.0/16", gateway=f"10.{i}.0.1", table=10 + i),),
        )
        for i, nic in enumerate(nics)
    ]  # fmt: skip
    try:
        kp.attach(plans, env.pod, host_ns=env.host)
    except NetlinkError as e:
        # a kernel without VRF: refused cleanly, nothing left anywhere
        assert e.errno_name == "EOPNOTSUPP" and e.rolled_back
        assert getattr(e, "device", None) == "d0"
        assert_restored(env.host, host_before)
        assert_same(full_dump(env.pod), pod_before)
        pytest.skip(f"kernel lacks vrf ({e}); the refusal rolled back cleanly")
    links = {lk["name"]: lk for lk in nl.dump_links(env.pod)}
    assert links["blue"]["kind"] == "vrf"
    assert links["net0"]["master"] == links["net1"]["master"] == links["blue"]["ifindex"]
    kp.detach(plans, env.pod, host_ns=env.host)
    assert_restored(env.host, host_before)


def test_disable_ebpf_removes_tc_programs_in_pod(env: Env) -> None:
    _needs("ebpf_detach")
    nic = env.add_nic(0)
    env.hip("link", "set", nic, "up")
    subprocess.run(
        ["ip", "netns", "exec", env.host_name, "tc", "qdisc", "add", "dev", nic, "clsact"],
        check=True,
    )
    plan = InterfacePlan.move("d", nic, name="net1", disable_ebpf=True).capture_host(env.host)
    kp.attach([plan], env.pod, host_ns=env.host)
    pod_name = next(iter(env.pods))
    shown = subprocess.run(["ip", "netns", "exec", pod_name, "tc", "qdisc", "show", "dev", "net1"],
                           check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert "clsact" not in shown
    assert not nl.dump_tc("net1", env.pod)["ebpf"]
    assert kp.detach([plan], env.pod, host_ns=env.host).restored == ["d"]


def test_exclusive_rdma_without_rdma_is_refused_before_anything(env: Env) -> None:
    _needs("rdma_move")
    if _native.rdma_available():
        pytest.skip("this node has RDMA: the refusal path cannot be shown")
    nic = env.add_nic(0, rich=True)
    before = full_dump(env.host)
    plan = InterfacePlan.move("d", nic, rdma=kp.RdmaPlan("mlx5_0", exclusive=True))
    with pytest.raises(NotAvailable, match="mlx5_0"):
        kp.attach([plan.capture_host(env.host)], env.pod, host_ns=env.host)
    assert_same(full_dump(env.host), before)
    assert [lk["name"] for lk in nl.dump_links(env.pod)] == ["lo"]
    ib = InterfacePlan("ib", kind="rdma", rdma=kp.RdmaPlan("mlx5_1", exclusive=True))
    assert kp.detach([ib], env.pod, host_ns=env.host).missing == ["ib"]
    shared = InterfacePlan("ib", kind="rdma", rdma=kp.RdmaPlan("mlx5_1"))
    assert kp.detach([shared], env.pod, host_ns=env.host).restored == ["ib"]


def test_detach_goes_on_past_a_refused_step(env: Env) -> None:
    """One record the kernel refuses (its gateway is unreachable now) is reported
    in ``errors``; everything else of that link and of the others is restored."""
    nics = [env.add_nic(i, rich=True) for i in range(2)]
    wait_stable(env.host)
    before = full_dump(env.host)
    plans = [pod_plan(i, nic, env) for i, nic in enumerate(nics)]
    hs = plans[0].host
    assert hs is not None
    bad_route = Route("10.98.0.0/16", gateway="10.250.0.1")
    plans[0] = plans[0].with_(host=dataclasses.replace(hs, routes=(*hs.routes, bad_route)))
    kp.attach(plans, env.pod, host_ns=env.host)
    out = kp.detach(plans, env.pod, host_ns=env.host)
    assert out.restored == ["dev1"]
    assert len(out.errors) == 1 and out.errors[0].startswith("device 'dev0': ")
    assert "ENETUNREACH" in out.errors[0]
    assert_restored(env.host, before)
    assert kp.HostState.capture(nics[0], env.host) == hs


def test_name_taken_in_pod_leaves_host_as_before(env: Env) -> None:
    """The kernel moves a link, then refuses its new name (a pod link has it):
    attach undoes that half-done move too, and the pod's own link is untouched."""
    nics = [env.add_nic(i, rich=True) for i in range(2)]
    wait_stable(env.host)
    before = full_dump(env.host)
    pod_name = next(iter(env.pods))
    # high indexes: a moved link keeps its index only where it is free (else the
    # kernel gives it a new one, which it then keeps on the way back)
    _ip("-n", pod_name, "link", "add", "net1", "index", "900", "type", "veth", "peer", "name", "x1",
        "index", "901")  # fmt: skip
    pod_before = full_dump(env.pod)
    plans = [pod_plan(i, nic, env) for i, nic in enumerate(nics)]
    with pytest.raises(NetlinkError) as ei:
        kp.attach(plans, env.pod, host_ns=env.host)
    assert ei.value.errno_name == "EEXIST" and getattr(ei.value, "device", None) == "dev1"
    assert "already taken" in str(ei.value)
    assert_restored(env.host, before)
    assert_same(full_dump(env.pod), pod_before)


def test_reattach_into_the_same_live_pod(env: Env) -> None:
    """detach leaves a live pod as it was before attach (its rules too), so the
    same plans attach again (the restart path: ATTACHING -> detach -> attach)."""
    nics = [env.add_nic(i, rich=True) for i in range(2)]
    pod_before = full_dump(env.pod)
    plans = [pod_plan(i, nic, env) for i, nic in enumerate(nics)]
    plans[1] = plans[1].with_(rules=(*plans[1].rules, Rule(table=300)))  # no selector, no priority
    for _ in range(2):
        kp.attach(plans, env.pod, host_ns=env.host)
        check_pod(env, env.pod, plans)
        out = kp.detach(plans, env.pod, host_ns=env.host)
        assert sorted(out.restored) == ["dev0", "dev1"] and out.errors == []
        assert_same(full_dump(env.pod), pod_before)
