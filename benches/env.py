"""Namespaces, stand-in links and independent verification for the benchmarks.

Everything here is set-up and checking, never measured. It drives the real
kernel through iproute2 (``ip``), so a check does not share code with any of
the implementations under test.

Naming: every namespace is ``knb<pid>-<tag>`` so helpers running in parallel
never collide; namespaces left behind by a crashed run (whose pid is gone) are
removed at the start of the next one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

PREFIX = f"knb{os.getpid()}-"
NETNS_DIR = "/run/netns"

HOST_GROUP = 4242  # the host-side peers of the stand-in "physical" NICs
POD_GROUP = 4243  # the pod ends of virtual (veth) interfaces
POD_MTU = 9000
HOST_MTU = 1500


def ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    r = subprocess.run(
        ["ip", *args], input=stdin, capture_output=True, text=True, check=False, timeout=120
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def ip_batch(ns: str, lines: Iterable[str], check: bool = True) -> None:
    text = "\n".join(lines) + "\n"
    if text.strip():
        ip("-n", ns, "-force", "-batch", "-", stdin=text, check=check)


# --------------------------------------------------------------------------- namespaces


def remove_stale() -> None:
    """Deletes ``knb<pid>-*`` namespaces whose creating process is gone."""
    with contextlib.suppress(OSError):
        for name in os.listdir(NETNS_DIR):
            m = re.fullmatch(r"knb(\d+)-.*", name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                ip("netns", "del", name, check=False)


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    @classmethod
    def create(cls, tag: str) -> Netns:
        name = PREFIX + tag
        if os.path.exists(f"{NETNS_DIR}/{name}"):
            ip("netns", "del", name, check=False)
        ip("netns", "add", name)
        return cls(name)

    def delete(self) -> None:
        flush_links(self)
        ip("netns", "del", self.name, check=False)


@dataclass(frozen=True)
class Pair:
    """A private "host" namespace (stands in for the node) and a "pod" namespace."""

    host: Netns
    pod: Netns


def link_names(ns: Netns) -> list[str]:
    return [lk["ifname"] for lk in json.loads(ip("-j", "-n", ns.name, "link", "show") or "[]")]


def flush_links(ns: Netns) -> None:
    """Deletes every link but ``lo`` (groups first: one request for many pairs)."""
    for group in (HOST_GROUP, POD_GROUP):
        ip("-n", ns.name, "link", "del", "group", str(group), check=False)
    rest = [n for n in link_names(ns) if n != "lo"] if os.path.exists(ns.path) else []
    ip_batch(ns.name, (f"link del dev {n}" for n in rest), check=False)


def clean_pair(pair: Pair) -> None:
    flush_links(pair.host)
    flush_links(pair.pod)


# --------------------------------------------------------------------------- the work


@dataclass(frozen=True)
class Iface:
    """One interface of the pod: its host-side names and its configuration."""

    i: int
    host_index: int = 0  # ifindex of the stand-in NIC in the host namespace

    @property
    def host(self) -> str:  # the stand-in "physical" NIC, moved into the pod
        return f"kb{self.i}a"

    @property
    def host_peer(self) -> str:  # its veth peer; stays on the host
        return f"kb{self.i}b"

    @property
    def virt_peer(self) -> str:  # host end of a virtual interface
        return f"hv{self.i}"

    @property
    def pod(self) -> str:
        return f"net{self.i}"

    @property
    def virt_index(self) -> int:  # ifindex the raw floor gives a veth born in the pod
        return 100 + self.i

    mtu: int = POD_MTU

    @property
    def v4(self) -> str:
        return f"10.77.{self.i}.2/24"

    @property
    def v6(self) -> str:
        return f"fd00:77:{self.i:x}::2/64"

    @property
    def route(self) -> str:
        return f"172.16.{self.i}.0/24"

    @property
    def gateway(self) -> str:
        return f"10.77.{self.i}.1"


def make_physical(pair: Pair, n: int) -> list[Iface]:
    """``n`` stand-in NICs in the host namespace (veth pairs whose other end
    stays on the host, up, in ``HOST_GROUP`` so one request deletes them all)."""
    lines = []
    for i in range(n):
        f = Iface(i)
        lines.append(f"link add {f.host} type veth peer name {f.host_peer}")
        lines.append(f"link set dev {f.host_peer} group {HOST_GROUP} up")
    ip_batch(pair.host.name, lines)
    index = {
        lk["ifname"]: lk["ifindex"]
        for lk in json.loads(ip("-j", "-n", pair.host.name, "link", "show"))
    }
    return [Iface(i, host_index=index[Iface(i).host]) for i in range(n)]


# --------------------------------------------------------------------------- checks


def _addr_show(ns: Netns) -> dict[str, dict]:  # type: ignore[type-arg]
    return {lk["ifname"]: lk for lk in json.loads(ip("-j", "-n", ns.name, "addr", "show"))}


def _global_addrs(link: dict) -> set[tuple[str, int]]:  # type: ignore[type-arg]
    return {
        (str(ipaddress.ip_address(a["local"])), a["prefixlen"])
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    }


def verify_attached(pair: Pair, ifaces: Sequence[Iface]) -> None:
    """The pod namespace holds exactly the configured interfaces."""
    links = _addr_show(pair.pod)
    extra = set(links) - {"lo"} - {f.pod for f in ifaces}
    assert not extra, f"unexpected links in the pod: {sorted(extra)}"
    routes = {
        (r.get("dst"), r.get("gateway"), r.get("dev"))
        for r in json.loads(ip("-j", "-n", pair.pod.name, "route", "show"))
    }
    for f in ifaces:
        lk = links.get(f.pod)
        assert lk is not None, f"{f.pod} missing from the pod namespace"
        assert lk["mtu"] == f.mtu, f"{f.pod}: mtu {lk['mtu']} != {f.mtu}"
        assert "UP" in lk["flags"], f"{f.pod} is not up: {lk['flags']}"
        want = {
            (str(ipaddress.ip_interface(c).ip), ipaddress.ip_interface(c).network.prefixlen)
            for c in (f.v4, f.v6)
        }
        have = _global_addrs(lk)
        assert want <= have, f"{f.pod}: addresses {sorted(have)} lack {sorted(want - have)}"
        assert (f.route, f.gateway, f.pod) in routes, f"{f.pod}: route {f.route} missing"


def verify_restored(pair: Pair, ifaces: Sequence[Iface]) -> None:
    """Every stand-in NIC is back on the host as it was (name, MTU, down, no addresses)."""
    pod = set(link_names(pair.pod)) - {"lo"}
    assert not pod, f"links left in the pod: {sorted(pod)}"
    links = _addr_show(pair.host)
    for f in ifaces:
        lk = links.get(f.host)
        assert lk is not None, f"{f.host} not back on the host"
        assert lk["ifindex"] == f.host_index, f"{f.host}: ifindex changed"
        assert lk["mtu"] == HOST_MTU, f"{f.host}: mtu {lk['mtu']} not restored"
        assert "UP" not in lk["flags"], f"{f.host} still up"
        assert not _global_addrs(lk), f"{f.host} kept addresses"


def verify_pod_empty(pair: Pair) -> None:
    """Nothing left in the pod, and no host end of a virtual interface on the host."""
    pod = set(link_names(pair.pod)) - {"lo"}
    assert not pod, f"links left in the pod: {sorted(pod)}"
    host = [n for n in link_names(pair.host) if n.startswith("hv")]
    assert not host, f"virtual peers left on the host: {host}"


@contextlib.contextmanager
def pair_of_namespaces(tag: str) -> Iterator[Pair]:
    pair = Pair(Netns.create(f"{tag}h"), Netns.create(f"{tag}p"))
    try:
        yield pair
    finally:
        pair.pod.delete()
        pair.host.delete()
