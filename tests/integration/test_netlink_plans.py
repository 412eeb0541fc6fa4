"""The netlink batch engine against the real kernel: veth pairs stand in for NICs.

Every namespace and link is named with a per-process prefix and removed in a
``finally`` so parallel runs do not collide and failures leave nothing behind.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from kndkit import netlink as nl
from kndkit._native import NetNs
from kndkit.errors import InvalidArgument, NamespaceError, NetlinkError

pytestmark = pytest.mark.netns

_counter = itertools.count()


def _uid() -> str:
    return f"{os.getpid() % 100000}{next(_counter)}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Env:
    """A host namespace standing in for the node, a pod namespace, veth "NICs"."""

    def __init__(self) -> None:
        u = _uid()
        self.host_name = f"knl-h{u}"
        self.pod_name = f"knl-p{u}"
        _ip("netns", "add", self.host_name)
        _ip("netns", "add", self.pod_name)
        self.host = NetNs.open(f"/run/netns/{self.host_name}")
        self.pod = NetNs.open(f"/run/netns/{self.pod_name}")
        self.nics: list[str] = []

    def add_nics(self, n: int, *, addr: bool = False) -> list[str]:
        """``n`` veth pairs inside the host namespace; returns the "NIC" ends."""
        names = []
        for i in range(n):
            nic, peer = f"nic{i}", f"sw{i}"
            _ip("-n", self.host_name, "link", "add", nic, "type", "veth", "peer", "name", peer)
            _ip("-n", self.host_name, "link", "set", peer, "up")
            _ip("-n", self.host_name, "link", "set", nic, "up")
            if addr:
                _ip("-n", self.host_name, "addr", "add", f"192.168.{100 + i}.5/24", "dev", nic)
            names.append(nic)
        self.nics += names
        return names

    def close(self) -> None:
        self.host.close()
        self.pod.close()
        for name in (self.pod_name, self.host_name):
            _ip("netns", "del", name, check=False)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


def link_state(ns: NetNs) -> list[tuple[Any, ...]]:
    return sorted(
        (lk["name"], lk["mtu"], lk["mac"], lk["up"], lk["alias"], lk["group"])
        for lk in nl.dump_links(ns)
    )


def state(ns: NetNs) -> dict[str, Any]:
    """Everything a plan can change in a namespace, comparable across runs."""
    names = {lk["ifindex"]: lk["name"] for lk in nl.dump_links(ns)}
    return {
        "links": link_state(ns),
        "addrs": sorted(
            (names.get(a["ifindex"], ""), a["cidr"])
            for a in nl.dump_addresses(ns)
            if not a["address"].startswith("fe80")
        ),
        "routes": sorted(
            (r["dst"], r["gateway"] or "", names.get(r["oif"] or -1, ""), r["table"])
            for r in nl.dump_routes(ns)
            if not (r["dst"] or "").startswith(("fe80", "ff00", "fe80::/64"))
        ),
        "rules": sorted((r["family"], r["priority"] or 0, r["table"]) for r in nl.dump_rules(ns)),
    }


def attach_plan(env: Env, nics: list[str]) -> list[nl.Step]:
    """Physical attach, moves first (one barrier batch), then configuration in the pod."""
    steps: list[nl.Step] = []
    for i, nic in enumerate(nics):
        steps.append(
            nl.move(nic, env.pod, name=f"net{i}", mtu=1400 + i, mac=f"02:00:00:00:01:{i:02x}",
                    ns=env.host)
        )  # fmt: skip
    for i in range(len(nics)):
        ifn = f"net{i}"
        steps += [
            nl.addr_add(ifn, f"10.{i}.0.2/24", ns=env.pod),
            nl.addr_add(ifn, f"fd00:{i + 1}::2/64", flags=["nodad"], ns=env.pod),
            nl.set_up(ifn, ns=env.pod),
            nl.route_add(f"10.{100 + i}.0.0/16", gateway=f"10.{i}.0.1", ns=env.pod),
        ]
    return steps


def test_attach_four_interfaces_and_detach_restores_the_host(env: Env) -> None:
    nics = env.add_nics(4, addr=True)
    host_before = state(env.host)
    pod_before = state(env.pod)

    out = nl.apply(attach_plan(env, nics))
    assert out["steps"] == 20
    assert len(out["results"]) == 20
    # moves in one sendmsg on the host socket, the rest in one on the pod socket
    assert out["sendmsg"] == 2

    pod_links = {lk["name"]: lk for lk in nl.dump_links(env.pod)}
    for i in range(4):
        lk = pod_links[f"net{i}"]
        assert lk["mtu"] == 1400 + i
        assert lk["mac"] == f"02:00:00:00:01:{i:02x}"
        assert lk["up"] is True
    host_links = {lk["name"] for lk in nl.dump_links(env.host)}
    assert not host_links & set(nics)
    pod_state = state(env.pod)
    for i in range(4):
        assert (f"net{i}", f"10.{i}.0.2/24") in pod_state["addrs"]
        assert (f"net{i}", f"fd00:{i + 1}::2/64") in pod_state["addrs"]
        assert (f"10.{100 + i}.0.0/16", f"10.{i}.0.1", f"net{i}", 254) in pod_state["routes"]

    # Detach: the reverse plan, built from what the host had.
    before = {lk[0]: lk for lk in host_before["links"]}
    detach: list[nl.Step] = []
    for i, nic in enumerate(nics):
        _, mtu, mac, _up, _, _ = before[nic]
        detach.append(nl.move(f"net{i}", env.host, name=nic, mtu=mtu, mac=mac, ns=env.pod))
    for i, nic in enumerate(nics):
        detach.append(nl.addr_add(nic, f"192.168.{100 + i}.5/24", ns=env.host))
        detach.append(nl.set_up(nic, ns=env.host))
    nl.apply(detach)
    assert state(env.host) == host_before
    assert state(env.pod) == pod_before


def test_invalid_route_at_step_7_of_9_rolls_everything_back(env: Env) -> None:
    nics = env.add_nics(2, addr=True)
    host_before, pod_before = state(env.host), state(env.pod)
    steps = [
        nl.move(nics[0], env.pod, name="net0", mtu=1450, ns=env.host),  # 0
        nl.move(nics[1], env.pod, name="net1", mac="02:00:00:00:02:01", ns=env.host),  # 1
        nl.addr_add("net0", "10.50.0.2/24", ns=env.pod),  # 2
        nl.addr_add("net1", "10.51.0.2/24", ns=env.pod),  # 3
        nl.set_up("net0", ns=env.pod),  # 4
        nl.set_up("net1", ns=env.pod),  # 5
        nl.route_add("10.99.0.0/16", gateway="10.77.0.1", ns=env.pod),  # 6: unreachable gateway
        nl.route_add("10.98.0.0/16", gateway="10.50.0.1", ns=env.pod),  # 7
        nl.set_alias("net0", "attached", ns=env.pod),  # 8
    ]
    with pytest.raises(NetlinkError) as ei:
        nl.apply(steps)
    e = ei.value
    assert e.step_index == 6
    assert e.op == "route_add"
    assert e.errno_name == "ENETUNREACH"
    assert e.kernel_message  # the extended ACK text
    assert e.rolled_back is True, e.rollback_errors
    assert "step 6" in str(e)
    assert state(env.host) == host_before
    assert state(env.pod) == pod_before


def test_namespace_deleted_between_plan_and_execution(env: Env) -> None:
    nics = env.add_nics(2)
    host_before = state(env.host)
    u = _uid()
    gone_name = f"knl-g{u}"
    _ip("netns", "add", gone_name)
    gone = NetNs.open(f"/run/netns/{gone_name}")
    try:
        steps = [
            nl.set_mtu(nics[0], 1300, ns=env.host),
            nl.move(nics[1], gone, name="net9", ns=env.host),
            nl.set_up("net9", ns=gone),
        ]
        _ip("netns", "del", gone_name)
        with pytest.raises((NamespaceError, NetlinkError)) as ei:
            nl.apply(steps)
        assert "gone" in str(ei.value)
        assert state(env.host) == host_before
    finally:
        gone.close()
        _ip("netns", "del", gone_name, check=False)


def test_dead_namespace_late_in_the_plan_is_refused_before_anything_is_sent(env: Env) -> None:
    """A namespace used only by the last step is already gone: the plan is refused
    up front (every namespace is checked before the first send), naming that step,
    and the host steps before it never reach the kernel."""
    nics = env.add_nics(1)
    u = _uid()
    gone_name = f"knl-v{u}"
    _ip("netns", "add", gone_name)
    gone = NetNs.open(f"/run/netns/{gone_name}")
    try:
        _ip("-n", gone_name, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
        host_before = state(env.host)
        steps = [
            nl.set_mtu(nics[0], 1280, ns=env.host),
            nl.set_alias(nics[0], "x", ns=env.host),
            nl.set_mtu("x0", 1400, ns=gone),
        ]
        _ip("netns", "del", gone_name)
        with pytest.raises(NamespaceError) as ei:
            nl.apply(steps)
        assert getattr(ei.value, "step_index", None) == 2
        assert state(env.host) == host_before
    finally:
        gone.close()
        _ip("netns", "del", gone_name, check=False)


def test_veth_with_peer_born_in_the_pod_and_group_delete(env: Env) -> None:
    steps = [
        nl.veth("hv0", "eth0", peer_ns=env.pod, group=77, mtu=1450, ns=env.host),
        nl.veth("hv1", "eth1", peer_ns=env.pod, group=77, ns=env.host),
        nl.addr_add("eth0", "10.60.0.2/24", ns=env.pod),
        nl.set_up("eth0", ns=env.pod),
        nl.macvlan("mv0", "hv1", mode="bridge", ns=env.host),
    ]
    nl.apply(steps)
    pod = {lk["name"]: lk for lk in nl.dump_links(env.pod)}
    assert pod["eth0"]["kind"] == "veth" and pod["eth0"]["mtu"] == 1450 and pod["eth0"]["up"]
    host = {lk["name"]: lk for lk in nl.dump_links(env.host)}
    assert host["hv0"]["group"] == 77 and host["mv0"]["kind"] == "macvlan"
    nl.apply([nl.delete_link("mv0", ns=env.host), nl.delete_group(77, ns=env.host)])
    names = {lk["name"] for lk in nl.dump_links(env.host)}
    assert not names & {"hv0", "hv1", "mv0"}
    assert {lk["name"] for lk in nl.dump_links(env.pod)} == {"lo"}


@pytest.mark.parametrize(
    ("step", "kind"),
    [
        (lambda: nl.ipvlan("ipv0", "sw0"), "ipvlan"),
        (lambda: nl.vlan("vl0.5", "sw0", 5), "vlan"),
    ],
)
def test_kinds_this_kernel_lacks_fail_clearly(env: Env, step: Any, kind: str) -> None:
    env.add_nics(1)
    before = state(env.host)
    s = step()
    s["ns"] = env.host
    with pytest.raises(NetlinkError) as ei:
        nl.apply([nl.set_alias("nic0", "tmp", ns=env.host), s])
    e = ei.value
    if e.errno_name != "EOPNOTSUPP":
        pytest.skip(f"this kernel supports {kind}")
    assert kind in str(e)
    assert e.kernel_message == "Unknown device type"
    assert e.step_index == 1 and e.rolled_back
    assert state(env.host) == before


def test_rules_and_neighbours_round_trip(env: Env) -> None:
    env.add_nics(1, addr=True)
    steps = [
        nl.rule_add(priority=1234, table=100, src="10.70.0.0/16", ns=env.host),
        nl.rule_add(family="inet6", priority=1235, table=101, iif="nic0", ns=env.host),
        nl.neigh_add("nic0", "192.168.100.9", "02:aa:bb:cc:dd:ee", ns=env.host),
        nl.route_add("default", ifname="nic0", table=100, ns=env.host, family="inet"),
    ]
    before = state(env.host)
    nl.apply(steps)
    rules = {(r["priority"], r["table"], r["src"], r["iif"]) for r in nl.dump_rules(env.host)}
    assert (1234, 100, "10.70.0.0/16", None) in rules
    assert (1235, 101, None, "nic0") in rules
    neigh = [n for n in nl.dump_neighbours(env.host) if n["address"] == "192.168.100.9"]
    assert neigh and neigh[0]["lladdr"] == "02:aa:bb:cc:dd:ee"
    assert any(r["table"] == 100 for r in nl.dump_routes(env.host, table=100))
    # the reverse plan
    nl.apply([
        nl.route_del("default", ifname="nic0", table=100, ns=env.host, family="inet"),
        nl.neigh_del("nic0", "192.168.100.9", ns=env.host),
        nl.rule_del(family="inet6", priority=1235, table=101, iif="nic0", ns=env.host),
        nl.rule_del(priority=1234, table=100, src="10.70.0.0/16", ns=env.host),
    ])  # fmt: skip
    assert state(env.host) == before


@pytest.mark.parametrize(
    "bad",
    [
        lambda e: nl.rename("nic0", "x" * 16, ns=e.host),
        lambda e: nl.rename("nic0", "a/b", ns=e.host),
        lambda e: nl.addr_add("nic0", "10.0.0.300/24", ns=e.host),
        lambda e: nl.addr_add("nic0", "10.0.0.3/33", ns=e.host),
        lambda e: nl.route_add("10.0.0.0/8", gateway="fd00::1", ns=e.host),
        lambda e: nl.set_mac("nic0", "02:00:00:00:00", ns=e.host),
        lambda e: nl.set_mtu("no-such-link", 1400, ns=e.host),
        lambda e: {"op": "link_set", "ifname": "nic0", "mtu": 1400, "bogus": 1},
        lambda e: {"op": "teleport", "ifname": "nic0"},
    ],
)
def test_bad_input_is_refused_and_nothing_changes(env: Env, bad: Any) -> None:
    env.add_nics(1)
    before = state(env.host)
    steps = [nl.set_mtu("nic0", 1280, ns=env.host), bad(env)]
    with pytest.raises(InvalidArgument) as ei:
        nl.apply(steps)
    assert "step 1" in str(ei.value)
    assert state(env.host) == before


def test_regular_file_as_namespace_path_is_refused(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "not-a-netns"
    f.write_text("x")
    with pytest.raises(NamespaceError):
        NetNs.open(str(f))
    with pytest.raises(InvalidArgument):
        nl.apply([{"op": "link_set", "ifname": "lo", "netns": str(f)}])


def test_encode_is_exact_for_a_link_set(env: Env) -> None:
    msgs = nl.encode([nl.link_set(7, mtu=1400, up=True)], seq=5)
    assert msgs == [
        bytes.fromhex(
            "28000000" "1000" "0500" "05000000" "00000000"  # len 40, RTM_NEWLINK, REQ|ACK, seq 5
            "00000000" "07000000" "01000000" "01000000"  # ifinfomsg: index 7, IFF_UP/IFF_UP
            "0800" "0400" "78050000"  # IFLA_MTU 1400
        )
    ]  # fmt: skip


# ---------------------------------------------------------------- rollback of moved links


def _ipj(ns_name: str, *args: str) -> Any:
    import json

    out = _ip("-n", ns_name, "-j", *args).stdout
    return json.loads(out) if out.strip() else []


def full_state(ns_name: str) -> dict[str, Any]:
    """The host as `ip` shows it: links, every address attribute, routes of every
    table (nexthops of multipath routes sorted), rules, permanent neighbours.
    IPv6 link-local housekeeping (fe80::, ff00::/8) is left out: the kernel
    re-creates it when the link comes back."""
    import json

    def j(x: Any) -> str:
        return json.dumps(x, sort_keys=True)

    links = sorted(
        j({k: lk.get(k) for k in ("ifname", "mtu", "address", "flags", "ifalias", "group")})
        for lk in _ipj(ns_name, "link", "show")
    )
    addrs = sorted(
        j({"dev": i["ifname"], **a})
        for i in _ipj(ns_name, "addr", "show")
        for a in i.get("addr_info", [])
        if not a["local"].startswith("fe80")
    )
    routes = []
    for fam in ("-4", "-6"):
        for r in _ipj(ns_name, fam, "route", "show", "table", "all"):
            if r["dst"].startswith(("fe80", "ff00", "ff02")):
                continue
            if r.get("dev") == "lo" and fam == "-6" and r.get("type") == "local":
                continue
            if "nexthops" in r:
                r["nexthops"] = sorted(r["nexthops"], key=j)
            routes.append(j(r))
    rules = sorted(j(r) for fam in ("-4", "-6") for r in _ipj(ns_name, fam, "rule", "show"))
    neighs = sorted(j(n) for n in _ipj(ns_name, "neigh", "show", "nud", "permanent"))
    return {
        "links": links,
        "addrs": addrs,
        "routes": sorted(routes),
        "rules": rules,
        "neighs": neighs,
    }


def configured_host(env: Env) -> None:
    """nic0 carries IPv4 (with broadcast) and IPv6 addresses, a gateway route and
    a default route in main, routes in table 100 (v4 and v6), a rule, permanent
    neighbours, and ECMP routes shared with nic1 (which stays)."""
    env.add_nics(2)
    h = ["-n", env.host_name]
    for cmd in [
        "addr add 192.168.50.5/24 brd + dev nic0",
        "addr add 192.168.52.5/24 dev nic0 label nic0:x",
        "addr add fd00:50::5/64 dev nic0 nodad",
        "addr add 192.168.51.5/24 dev nic1",
        "addr add fd00:51::5/64 dev nic1 nodad",
        "route add 10.60.0.0/16 via 192.168.50.1 dev nic0 proto static metric 20",
        "route add default via 192.168.50.1 dev nic0 metric 300",
        "route add 10.62.0.0/16 dev nic0 src 192.168.50.5",
        "route add 10.61.0.0/16 dev nic0 table 100",
        "route add default via 192.168.50.254 dev nic0 table 100",
        "route add 10.70.0.0/16 nexthop via 192.168.50.1 dev nic0"
        " nexthop via 192.168.51.1 dev nic1",
        "-6 route add fd00:60::/48 via fd00:50::1 dev nic0",
        "-6 route add fd00:61::/48 dev nic0 table 100 metric 7",
        "-6 route add fd00:70::/48 nexthop via fd00:50::1 dev nic0 nexthop via fd00:51::1 dev nic1",
        "rule add from 192.168.50.0/24 lookup 100 priority 500",
        "neigh add 192.168.50.1 lladdr 02:00:00:00:50:01 dev nic0 nud permanent",
        "-6 neigh add fd00:50::1 lladdr 02:00:00:00:50:02 dev nic0 nud permanent router",
        "neigh add 192.168.51.1 lladdr 02:00:00:00:51:01 dev nic1 nud permanent",
    ]:
        _ip(*h, *cmd.split())


def test_failed_plan_restores_routes_and_neighbours_of_a_moved_nic(env: Env) -> None:
    configured_host(env)
    before = full_state(env.host_name)
    assert any("10.61.0.0/16" in r and '"table": "100"' in r for r in before["routes"])
    assert len(before["neighs"]) == 3
    steps = [
        nl.move("nic0", env.pod, name="net0", mtu=1400, ns=env.host),  # 0
        nl.addr_add("net0", "10.0.0.2/24", ns=env.pod),  # 1
        nl.set_up("net0", ns=env.pod),  # 2
        nl.route_add("10.99.0.0/16", gateway="10.77.0.1", ns=env.pod),  # 3: unreachable
    ]
    with pytest.raises(NetlinkError) as ei:
        nl.apply(steps)
    e = ei.value
    assert e.step_index == 3 and e.errno_name == "ENETUNREACH"
    assert e.rolled_back is True, e.rollback_errors
    after = full_state(env.host_name)
    for k in before:
        assert after[k] == before[k], k
    assert [lk["name"] for lk in nl.dump_links(env.pod)] == ["lo"]
    # The kernel-made connected routes came back from the addresses, not from us:
    # nothing is doubled.
    assert len(after["routes"]) == len(set(after["routes"]))


def test_moving_two_nics_of_one_namespace_takes_one_snapshot(env: Env) -> None:
    configured_host(env)
    before = full_state(env.host_name)
    steps = [
        nl.move("nic0", env.pod, name="net0", ns=env.host),
        nl.move("nic1", env.pod, name="net1", ns=env.host),
        nl.set_up("net0", ns=env.pod),
        nl.route_add("10.99.0.0/16", gateway="10.77.0.1", ns=env.pod),
    ]
    with pytest.raises(NetlinkError) as ei:
        nl.apply(steps)
    assert ei.value.rolled_back is True, ei.value.rollback_errors
    assert full_state(env.host_name) == before


@pytest.mark.parametrize("flushed", [False, True], ids=["same-batch", "sent-before-move"])
def test_address_route_neighbour_added_before_the_move_are_undone(env: Env, flushed: bool) -> None:
    configured_host(env)
    before = full_state(env.host_name)
    steps = [
        nl.addr_add("nic0", "10.80.0.5/24", ns=env.host),
        nl.addr_add("nic0", "fd00:80::5/64", flags=["nodad"], ns=env.host),
        nl.route_add("10.81.0.0/16", gateway="10.80.0.1", ns=env.host),
        nl.route_add("10.82.0.0/16", ifname="nic0", table=100, ns=env.host),
        nl.neigh_add("nic0", "10.80.0.1", "02:00:00:00:80:01", ns=env.host),
        # undone by re-adding what the step names: name all of it
        nl.route_del(
            "10.60.0.0/16", gateway="192.168.50.1", metric=20, protocol="static", ns=env.host
        ),
    ]
    if flushed:
        # A step in another namespace sends the host batch before the move: the
        # snapshot then holds the plan's own additions (and not the deleted route).
        steps.append(nl.addr_add("lo", "127.0.0.2/8", ns=env.pod))
    steps += [
        nl.move("nic0", env.pod, name="net0", ns=env.host),
        nl.set_up("net0", ns=env.pod),
        nl.route_add("10.99.0.0/16", gateway="10.77.0.1", ns=env.pod),
    ]
    with pytest.raises(NetlinkError) as ei:
        nl.apply(steps)
    e = ei.value
    assert e.step_index == len(steps) - 1
    assert e.rolled_back is True, e.rollback_errors
    assert e.rollback_errors == []
    assert full_state(env.host_name) == before


def test_a_restore_the_kernel_refuses_is_reported(env: Env) -> None:
    configured_host(env)
    # A step deletes nic1 after the move: the ECMP route over nic0 and nic1
    # cannot come back, and the deletion itself cannot be undone.
    steps = [
        nl.move("nic0", env.pod, name="net0", ns=env.host),
        nl.delete_link("sw1", ns=env.host),
        nl.route_add("10.99.0.0/16", gateway="10.77.0.1", ns=env.pod),
    ]
    with pytest.raises(NetlinkError) as ei:
        nl.apply(steps)
    e = ei.value
    assert e.rolled_back is False
    assert any("link_del" in m for m in e.rollback_errors), e.rollback_errors
    assert any("10.70.0.0/16" in m and "not restored" in m for m in e.rollback_errors), (
        e.rollback_errors
    )
    # the rest of nic0 came back all the same
    addrs = {a["cidr"] for a in nl.dump_addresses(env.host)}
    assert "192.168.50.5/24" in addrs
    assert any(r["dst"] == "10.61.0.0/16" for r in nl.dump_routes(env.host, table=100))
