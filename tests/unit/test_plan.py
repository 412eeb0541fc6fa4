"""kndkit.plan as plain data: validation, exact JSON round trip, the attach step order."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kndkit import plan as kp
from kndkit._native import NetNs
from kndkit.errors import InvalidArgument, NotAvailable
from kndkit.plan import (
    CharDevice,
    HostState,
    InterfacePlan,
    Neighbor,
    RdmaPlan,
    Route,
    Rule,
    Vrf,
)

# ----------------------------------------------------------------------------- strategies

ifnames = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=15).filter(
    lambda s: s not in (".", "..")
)
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in b)
)
v4 = st.integers(1, 2**32 - 2).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(1, 2**128 - 2).map(lambda n: str(ipaddress.IPv6Address(n)))
cidrs = st.one_of(
    st.tuples(v4, st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(v6, st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
)
opt_int = st.none() | st.integers(1, 2**31)


@st.composite
def routes(draw: st.DrawFn) -> Route:
    six = draw(st.booleans())
    ip = v6 if six else v4
    dst = draw(st.just("default") | ip.map(lambda a: str(ipaddress.ip_network(a, strict=False))))
    return Route(
        dst,
        gateway=draw(st.none() | ip),
        source=draw(st.none() | ip),
        scope=draw(st.none() | st.sampled_from(["universe", "link", "host"])),
        table=draw(opt_int),
        metric=draw(opt_int),
        protocol=draw(st.none() | st.integers(0, 255)),
    )


rules = st.builds(
    Rule,
    table=st.integers(1, 2**31),
    priority=opt_int,
    source=st.none() | v4.map(lambda a: f"{a}/32"),
    destination=st.none() | v4.map(lambda a: f"{a}/32"),
)
neighbors = st.builds(Neighbor, destination=v4 | v6, hardware_addr=macs)
sysctls = st.dictionaries(
    st.sampled_from(
        ["net/ipv4/conf/net1/arp_ignore", "net/ipv6/conf/net1/disable_ipv6", "net/ipv4/ip_forward"]
    ),
    st.text("0123456789", min_size=1, max_size=3),
)
bool_maps = st.dictionaries(st.sampled_from(["rx-checksum", "rx-gro-hw", "tx-tcp-segmentation"]),
                            st.booleans())  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
char_devices = st.builds(
    CharDevice,
    path=st.sampled_from(["/dev/infiniband/uverbs0", "/dev/infiniband/rdma_cm"]),
    type=st.sampled_from(["c", "b"]),
    major=st.integers(0, 4095),
    minor=st.integers(0, 2**20),
    file_mode=st.none() | st.integers(0, 0o7777),
    uid=st.none() | st.integers(0, 2**31),
    gid=st.none() | st.integers(0, 2**31),
)
host_states = st.builds(
    HostState,
    ifname=ifnames,
    ifindex=st.integers(1, 2**31),
    mtu=st.integers(68, 65536),
    mac=st.none() | macs,
    up=st.booleans(),
    alias=st.none() | st.text(max_size=20),
    gso_max_size=opt_int,
    gro_max_size=opt_int,
    master=st.none() | ifnames,
    addresses=st.lists(cidrs, max_size=3).map(tuple),
    routes=st.lists(routes(), max_size=3).map(tuple),
    neighbors=st.lists(neighbors, max_size=2).map(tuple),
    sysctls=sysctls,
    address_flags=st.dictionaries(
        cidrs,
        st.lists(st.sampled_from(["nodad", "noprefixroute"]), max_size=2).map(tuple),
        max_size=2,
    ),
    ethtool_features=bool_maps,
)


@st.composite
def plans(draw: st.DrawFn) -> InterfacePlan:
    kind: kp.Kind = draw(st.sampled_from(["move", "macvlan", "ipvlan", "rdma"]))
    mode = {
        "move": st.none(),
        "macvlan": st.none() | st.sampled_from(["bridge", "private", "vepa", "passthru"]),
        "ipvlan": st.none() | st.sampled_from(["l2", "l3", "l3s"]),
        "rdma": st.none(),
    }[kind]
    rdma = st.builds(RdmaPlan, device=ifnames, exclusive=st.booleans(),
                     char_devices=st.lists(char_devices, max_size=2).map(tuple))  # fmt: skip
    return InterfacePlan(
        device=draw(st.text(min_size=1, max_size=20)),
        kind=kind,
        host_ifname=draw(ifnames) if kind != "rdma" else draw(st.none() | ifnames),
        name=draw(ifnames),
        mode=draw(mode),
        mtu=draw(st.none() | st.integers(68, 65536)),
        mac=None if kind == "ipvlan" else draw(st.none() | macs),
        gso_max_size=draw(opt_int),
        gro_ipv4_max_size=draw(opt_int),
        addresses=tuple(draw(st.lists(cidrs, max_size=4))),
        routes=tuple(draw(st.lists(routes(), max_size=4))),
        rules=tuple(draw(st.lists(rules, max_size=2))),
        neighbors=tuple(draw(st.lists(neighbors, max_size=2))),
        sysctls=draw(sysctls),
        ethtool_features=draw(bool_maps),
        ethtool_private_flags=draw(bool_maps),
        vrf=draw(st.none() | st.builds(Vrf, name=ifnames, table=st.integers(1, 2**31))),
        disable_ebpf=draw(st.booleans()),
        rdma=draw(rdma) if kind == "rdma" else draw(st.none() | rdma),
        host=draw(st.none() | host_states) if kind == "move" else None,
        extra=draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
    )


# ----------------------------------------------------------------------------- round trip


@settings(max_examples=300, deadline=None)
@given(plans())
def test_json_round_trip_is_exact(p: InterfacePlan) -> None:
    d = p.to_json()
    text = json.dumps(d, sort_keys=True)  # plain JSON, nothing else
    back = InterfacePlan.from_json(json.loads(text))
    assert back == p
    assert json.dumps(back.to_json(), sort_keys=True) == text


def test_unknown_keys_are_refused() -> None:
    d = InterfacePlan.move("d", "eth3").to_json()
    with pytest.raises(InvalidArgument, match="'colour'"):
        InterfacePlan.from_json({**d, "colour": "red"})
    d["routes"] = [{"destination": "default", "gateway": "10.0.0.1", "via": "x"}]
    with pytest.raises(InvalidArgument, match="route: unknown key"):
        InterfacePlan.from_json(d)
    with pytest.raises(InvalidArgument, match="plan"):
        InterfacePlan.from_json({"kind": "move"})  # no device


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": "a" * 16}, "invalid interface name"),
        ({"name": "net/1"}, "invalid interface name"),
        ({"kind": "bridge"}, "kind"),
        ({"mtu": 10}, "mtu"),
        ({"mtu": True}, "mtu"),
        ({"mac": "02:00:00:00:00"}, "MAC"),
        ({"addresses": ("10.0.0.1",)}, "prefix length"),
        ({"addresses": ("10.0.0.300/24",)}, "invalid address"),
        ({"addresses": "10.0.0.1/24"}, "expected a list"),
        ({"sysctls": {"kernel/panic": "1"}}, "sysctl path"),
        ({"sysctls": {"net/../kernel/panic": "1"}}, "sysctl path"),
        ({"sysctls": {"net/ipv4/ip_forward": 1}}, "expected a string"),
        ({"ethtool_features": {"rx-checksum": "on"}}, "true/false"),
        ({"extra": {"x": object()}}, "not JSON"),
        ({"mode": "bridge"}, "takes no mode"),
        ({"host_ifname": None}, "host_ifname"),
        ({"routes": (Rule(table=5),)}, "expected Route"),
    ],
)
def test_bad_plans_are_refused(changes: dict[str, Any], match: str) -> None:
    base = InterfacePlan.move("dev-a", "eth3")
    with pytest.raises(InvalidArgument, match=match) as ei:
        base.with_(**changes)
    assert "dev-a" in str(ei.value) or "route" in str(ei.value) or "interface" in str(ei.value)


def test_parts_validate() -> None:
    with pytest.raises(InvalidArgument, match="mix IPv4 and IPv6"):
        Route("10.0.0.0/8", gateway="fd00::1")
    with pytest.raises(InvalidArgument, match="destination"):
        Route("10.0.0.0/33")
    with pytest.raises(InvalidArgument, match="scope"):
        Route("default", scope="site")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="MAC"):
        Neighbor("10.0.0.1", "zz:00:00:00:00:00")
    with pytest.raises(InvalidArgument, match="absolute"):
        CharDevice("dev/x")
    with pytest.raises(InvalidArgument, match="rdma part"):
        InterfacePlan("ib0", kind="rdma")
    with pytest.raises(InvalidArgument, match="shares its parent"):
        InterfacePlan.ipvlan("d", "eth3", mac="02:00:00:00:00:01")
    with pytest.raises(InvalidArgument, match="unknown field"):
        InterfacePlan.move("d", "eth3").with_(colour="red")


def test_plans_are_frozen() -> None:
    p = InterfacePlan.move(
        "d", "eth3", sysctls={"net/ipv4/ip_forward": "1"}, addresses=["10.0.0.2/24"]
    )
    assert p.addresses == ("10.0.0.2/24",)  # lists become tuples
    with pytest.raises(TypeError):
        p.sysctls["net/ipv4/ip_forward"] = "0"  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.name = "x"  # type: ignore[misc]


def test_host_sysctl_paths() -> None:
    assert kp.host_sysctl_path("net/ipv4/conf/net1/arp_ignore", "net1", "eth3") == (
        "net/ipv4/conf/eth3/arp_ignore"
    )
    assert kp.host_sysctl_path("net/ipv6/neigh/net1/retrans_time_ms", "net1", "eth3") == (
        "net/ipv6/neigh/eth3/retrans_time_ms"
    )
    assert kp.host_sysctl_path("net/ipv4/ip_forward", "net1", "eth3") is None
    assert kp.host_sysctl_path("net/ipv4/conf/all/arp_ignore", "net1", "eth3") is None
    p = InterfacePlan.move("d", "eth3", sysctls={"net/ipv4/conf/net1/arp_ignore": "1",
                                                 "net/ipv4/ip_forward": "1"})  # fmt: skip
    assert p.host_sysctls() == {"net/ipv4/conf/eth3/arp_ignore": "net/ipv4/conf/net1/arp_ignore"}


# ----------------------------------------------------------------------------- attach steps


def test_attach_steps_order() -> None:
    pod = NetNs.current()
    a = InterfacePlan.move(
        "a", "eth3", name="net1", mtu=9000, mac="02:00:00:00:00:01", gso_max_size=65536,
        addresses=("10.0.0.2/24",), routes=(Route("10.1.0.0/16", gateway="10.0.0.1"),
                                            Route("10.2.0.0/16")),
        rules=(Rule(table=100, priority=10),),
        neighbors=(Neighbor("10.0.0.9", "02:00:00:00:00:09"),),
    )  # fmt: skip
    b = InterfacePlan.macvlan("b", "eth4", name="net2", addresses=("10.3.0.2/24",))
    steps = kp.attach_steps([a, b], pod)
    ops = [(s["op"], s.get("ifname") or s.get("name")) for s in steps]
    assert ops == [
        ("link_set", "eth3"),
        ("macvlan_add", "net2"),
        ("addr_add", "net1"),
        ("addr_add", "net2"),
        ("link_set", "net1"),
        ("link_set", "net2"),
        ("route_add", "net1"),  # the connected route first, then via a gateway
        ("route_add", "net1"),
        ("rule_add", None),
        ("neigh_add", "net1"),
    ]
    move = steps[0]
    assert move["netns"] == pod and move["name"] == "net1" and move["mtu"] == 9000
    assert move["mac"] == "02:00:00:00:00:01" and move["gso_max_size"] == 65536
    assert steps[6]["dst"] == "10.2.0.0/16" and "gateway" not in steps[6]
    assert steps[8]["family"] == "inet"
    assert all(s["ns"] == pod for s in steps[2:])


def test_attach_steps_refuse_duplicates_and_conflicting_vrfs() -> None:
    pod = NetNs.current()
    a = InterfacePlan.move("a", "eth3", name="net1")
    with pytest.raises(InvalidArgument, match="twice"):
        kp.attach_steps([a, a], pod)
    with pytest.raises(InvalidArgument, match="'net1' is used twice"):
        kp.attach_steps([a, a.with_(device="b", host_ifname="eth4")], pod)
    with pytest.raises(InvalidArgument, match="NetNs"):
        kp.attach_steps([a], "/run/netns/x")  # type: ignore[arg-type]


def test_ops_the_native_core_lacks_are_refused_before_anything() -> None:
    pod = NetNs.current()
    needs: dict[str, tuple[dict[str, Any], str, str]] = {
        "sysctls": ({"sysctls": {"net/ipv4/conf/net1/arp_ignore": "1"}}, "sysctl", ""),
        "vrf": ({"vrf": Vrf("blue", 10)}, "vrf_add", ""),
        "ebpf": ({"disable_ebpf": True}, "ebpf_detach", ""),
        "ethtool": ({"ethtool_features": {"rx-checksum": False}}, "ethtool", ""),
        "gso4": ({"gso_ipv4_max_size": 65536}, "link_set", "gso_ipv4_max_size"),
    }
    for changes, op, key in needs.values():
        p = InterfacePlan.move("a", "eth3").with_(**changes)
        if kp._native_has(op, key):
            assert any(s["op"] == op or key in s for s in kp.attach_steps([p], pod))
        else:
            with pytest.raises(NotAvailable, match=f"device 'a'.*{op}"):
                kp.attach_steps([p], pod)


def test_capability_probe_knows_the_base_ops() -> None:
    assert kp._native_has("link_set", "mtu")
    assert not kp._native_has("link_set", "no_such_key")
