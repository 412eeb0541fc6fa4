"""The same pod events done four ways: kndkit, the raw floor, pyroute2, ``ip -batch``.

Each function performs one whole event (everything a node agent does at that
moment, including opening namespace handles and sockets) and is what the
benchmarks time. The work per interface is identical across implementations:

* physical attach: move the host NIC into the pod + rename + MTU + up (one
  RTM_NEWLINK), then IPv4 + IPv6 address + one route via a gateway;
* virtual attach: a veth born in the pod (name, MTU, group, up; peer on the host),
  then the same addresses and route;
* physical detach: move back to the host + original name + MTU + down (the
  kernel drops the pod's addresses and routes with the move);
* virtual detach: one RTM_DELLINK for the pod's group.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from benches.env import HOST_MTU, POD_GROUP, Iface, Pair
from benches.peers import rawnl

IMPLS = ("kndkit", "raw", "pyroute2", "ipbatch")
FLOOR = "raw"


def kndkit_native() -> Any:
    """``kndkit._native`` when it has ``apply``, else None."""
    try:
        import kndkit._native as native
    except ImportError:
        return None
    return native if hasattr(native, "apply") else None


def kndkit_discover() -> Any:
    try:
        import kndkit._native as native
    except ImportError:
        return None
    return native if hasattr(native, "discover") else None


@contextlib.contextmanager
def _ns_fds(*paths: str) -> Iterator[list[int]]:
    fds: list[int] = []
    try:
        for p in paths:
            fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _ip_batch_file(ns: str, lines: Sequence[str]) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="knb-", suffix=".ip", delete=True) as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        r = subprocess.run(["ip", "-n", ns, "-batch", fh.name], capture_output=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {r.stderr.decode(errors='replace').strip()}")


def _split(cidr: str) -> tuple[str, int]:
    itf = ipaddress.ip_interface(cidr)
    return str(itf.ip), itf.network.prefixlen


# --------------------------------------------------------------------------- (a) physical attach


def _pod_config_steps(ns: Any, f: Iface) -> list[dict[str, Any]]:
    return [
        {"op": "addr_add", "ns": ns, "ifname": f.pod, "address": f.v4},
        {"op": "addr_add", "ns": ns, "ifname": f.pod, "address": f.v6},
        {"op": "route_add", "ns": ns, "ifname": f.pod, "dst": f.route, "gateway": f.gateway},
    ]


def attach_physical_kndkit(pair: Pair, ifaces: Sequence[Iface]) -> Any:
    native = kndkit_native()
    with native.NetNs.open(pair.host.path) as h, native.NetNs.open(pair.pod.path) as p:
        steps: list[dict[str, Any]] = [
            {
                "op": "link_set",
                "ns": h,
                "ifname": f.host,
                "netns": p,
                "name": f.pod,
                "mtu": f.mtu,
                "up": True,
            }
            for f in ifaces
        ]
        for f in ifaces:
            steps.extend(_pod_config_steps(p, f))
        return native.apply(steps)


def attach_physical_raw(pair: Pair, ifaces: Sequence[Iface]) -> int:
    with _ns_fds(pair.host.path, pair.pod.path) as (hfd, pfd):
        host = rawnl.Batch()
        for f in ifaces:
            host.link_set(f.host_index, netns_fd=pfd, name=f.pod, mtu=f.mtu, up=True)
        pod = rawnl.Batch()
        for f in ifaces:
            # The kernel keeps a moved link's ifindex when the target namespace
            # does not use it (a fresh pod namespace has only lo).
            pod.addr_add(f.host_index, f.v4)
            pod.addr_add(f.host_index, f.v6)
            pod.route_add(f.route, oif=f.host_index, gateway=f.gateway)
        return rawnl.apply_batches([(hfd, host), (pfd, pod)])


def _pyroute2_configure(ipr: Any, f: Iface, idx: int) -> None:
    a4, l4 = _split(f.v4)
    a6, l6 = _split(f.v6)
    ipr.addr("add", index=idx, address=a4, prefixlen=l4)
    ipr.addr("add", index=idx, address=a6, prefixlen=l6)
    ipr.route("add", dst=f.route, gateway=f.gateway, oif=idx)


def attach_physical_pyroute2(pair: Pair, ifaces: Sequence[Iface]) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=pair.host.name) as ipr:
        for f in ifaces:
            idx = ipr.link_lookup(ifname=f.host)[0]
            ipr.link("set", index=idx, net_ns_fd=pair.pod.name, ifname=f.pod, mtu=f.mtu, state="up")
    with IPRoute(netns=pair.pod.name) as ipr:
        for f in ifaces:
            idx = ipr.link_lookup(ifname=f.pod)[0]
            _pyroute2_configure(ipr, f, idx)


def _ip_pod_lines(f: Iface) -> list[str]:
    return [
        f"addr add {f.v4} dev {f.pod}",
        f"addr add {f.v6} dev {f.pod}",
        f"route add {f.route} via {f.gateway} dev {f.pod}",
    ]


def attach_physical_ipbatch(pair: Pair, ifaces: Sequence[Iface]) -> None:
    _ip_batch_file(
        pair.host.name,
        [
            f"link set dev {f.host} netns {pair.pod.name} name {f.pod} mtu {f.mtu} up"
            for f in ifaces
        ],
    )
    _ip_batch_file(pair.pod.name, [ln for f in ifaces for ln in _ip_pod_lines(f)])


# --------------------------------------------------------------------------- (b) virtual attach


def attach_virtual_kndkit(pair: Pair, ifaces: Sequence[Iface]) -> Any:
    native = kndkit_native()
    with native.NetNs.open(pair.host.path) as h, native.NetNs.open(pair.pod.path) as p:
        steps: list[dict[str, Any]] = [
            {
                "op": "veth_add",
                "ns": p,
                "name": f.pod,
                "peer_name": f.virt_peer,
                "peer_ns": h,
                "mtu": f.mtu,
                "group": POD_GROUP,
                "up": True,
            }
            for f in ifaces
        ]
        for f in ifaces:
            steps.extend(_pod_config_steps(p, f))
        return native.apply(steps)


def attach_virtual_raw(pair: Pair, ifaces: Sequence[Iface]) -> int:
    with _ns_fds(pair.host.path, pair.pod.path) as (hfd, _pfd):
        pod = rawnl.Batch()
        for f in ifaces:
            # The floor names the new link's ifindex itself so that the address
            # and route requests can ride in the same sendmsg.
            pod.veth_add(
                f.pod,
                f.virt_peer,
                index=f.virt_index,
                peer_netns_fd=hfd,
                mtu=f.mtu,
                up=True,
                group=POD_GROUP,
            )
        for f in ifaces:
            pod.addr_add(f.virt_index, f.v4)
            pod.addr_add(f.virt_index, f.v6)
            pod.route_add(f.route, oif=f.virt_index, gateway=f.gateway)
        return rawnl.apply_batches([(_pfd, pod)])


def attach_virtual_pyroute2(pair: Pair, ifaces: Sequence[Iface]) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=pair.pod.name) as ipr:
        for f in ifaces:
            ipr.link(
                "add",
                ifname=f.pod,
                kind="veth",
                peer={"ifname": f.virt_peer, "net_ns_fd": pair.host.name},
                mtu=f.mtu,
                group=POD_GROUP,
                state="up",
            )
            idx = ipr.link_lookup(ifname=f.pod)[0]
            _pyroute2_configure(ipr, f, idx)


def attach_virtual_ipbatch(pair: Pair, ifaces: Sequence[Iface]) -> None:
    lines = []
    for f in ifaces:
        lines.append(
            f"link add name {f.pod} mtu {f.mtu} group {POD_GROUP} up"
            f" type veth peer name {f.virt_peer} netns {pair.host.name}"
        )
        lines.extend(_ip_pod_lines(f))
    _ip_batch_file(pair.pod.name, lines)


# --------------------------------------------------------------------------- (c) detach


def detach_physical_kndkit(pair: Pair, ifaces: Sequence[Iface]) -> Any:
    native = kndkit_native()
    with native.NetNs.open(pair.host.path) as h, native.NetNs.open(pair.pod.path) as p:
        steps = [
            {
                "op": "link_set",
                "ns": p,
                "ifname": f.pod,
                "netns": h,
                "name": f.host,
                "mtu": HOST_MTU,
                "up": False,
            }
            for f in ifaces
        ]
        return native.apply(steps)


def detach_physical_raw(pair: Pair, ifaces: Sequence[Iface]) -> int:
    with _ns_fds(pair.host.path, pair.pod.path) as (hfd, pfd):
        pod = rawnl.Batch()
        for f in ifaces:
            pod.link_set(f.host_index, netns_fd=hfd, name=f.host, mtu=HOST_MTU, up=False)
        return rawnl.apply_batches([(pfd, pod)])


def detach_physical_pyroute2(pair: Pair, ifaces: Sequence[Iface]) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=pair.pod.name) as ipr:
        for f in ifaces:
            idx = ipr.link_lookup(ifname=f.pod)[0]
            ipr.link(
                "set",
                index=idx,
                net_ns_fd=pair.host.name,
                ifname=f.host,
                mtu=HOST_MTU,
                state="down",
            )


def detach_physical_ipbatch(pair: Pair, ifaces: Sequence[Iface]) -> None:
    _ip_batch_file(
        pair.pod.name,
        [
            f"link set dev {f.pod} down netns {pair.host.name} name {f.host} mtu {HOST_MTU}"
            for f in ifaces
        ],
    )


def detach_virtual_kndkit(pair: Pair, ifaces: Sequence[Iface]) -> Any:
    native = kndkit_native()
    with native.NetNs.open(pair.pod.path) as p:
        return native.apply([{"op": "link_del_group", "ns": p, "group": POD_GROUP}])


def detach_virtual_raw(pair: Pair, ifaces: Sequence[Iface]) -> int:
    with _ns_fds(pair.pod.path) as (pfd,):
        pod = rawnl.Batch()
        pod.link_del_group(POD_GROUP)
        return rawnl.apply_batches([(pfd, pod)])


def detach_virtual_pyroute2(pair: Pair, ifaces: Sequence[Iface]) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=pair.pod.name) as ipr:
        ipr.link("del", index=0, group=POD_GROUP)


def detach_virtual_ipbatch(pair: Pair, ifaces: Sequence[Iface]) -> None:
    _ip_batch_file(pair.pod.name, [f"link del group {POD_GROUP}"])


Event = Callable[[Pair, Sequence[Iface]], Any]

EVENTS: dict[str, dict[str, Event]] = {
    event: {impl: globals()[f"{event}_{impl}"] for impl in IMPLS}
    for event in ("attach_physical", "attach_virtual", "detach_physical", "detach_virtual")
}
