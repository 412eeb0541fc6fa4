"""Attach a "NIC" to a pod namespace and give it back, with one native call each way.

A veth pair stands in for the NIC (the project's CI kernels have no spare NICs).
Run as root::

    .venv/bin/python examples/attach_detach.py

It creates two namespaces (``node`` and ``pod``), moves the NIC into the pod with
its new name, MTU, addresses, a route and link up in one plan, prints what the pod
sees, then restores the node side exactly (name, MTU, up state) and cleans up.
"""

from __future__ import annotations

import os
import subprocess
import sys

from kndkit import InvalidArgument, NetlinkError, NetNs
from kndkit import netlink as nl


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def main() -> int:
    tag = f"ex{os.getpid()}"
    node_name, pod_name = f"{tag}-node", f"{tag}-pod"
    sh("ip", "netns", "add", node_name)
    sh("ip", "netns", "add", pod_name)
    try:
        sh("ip", "-n", node_name, "link", "add", "nic0", "type", "veth", "peer", "name", "sw0")
        sh("ip", "-n", node_name, "link", "set", "sw0", "up")
        node, pod = NetNs.open(f"/run/netns/{node_name}"), NetNs.open(f"/run/netns/{pod_name}")

        before = {lk["name"]: lk for lk in nl.dump_links(node)}["nic0"]
        attach = [
            nl.move("nic0", pod, name="net1", mtu=1450, ns=node),
            nl.addr_add("net1", "10.10.0.2/24", ns=pod),
            nl.addr_add("net1", "fd10::2/64", flags=["nodad"], ns=pod),
            nl.set_up("net1", ns=pod),
            nl.route_add("10.20.0.0/16", gateway="10.10.0.1", ns=pod),
        ]
        result = nl.apply(attach)
        print(f"attached: {result['steps']} steps in {result['sendmsg']} sendmsg calls")
        for a in nl.dump_addresses(pod):
            print(f"  pod address {a['cidr']} on ifindex {a['ifindex']}")

        detach = [
            nl.set_down("net1", ns=pod),
            nl.move("net1", node, name=before["name"], mtu=before["mtu"], ns=pod),
        ]
        nl.apply(detach)
        after = {lk["name"]: lk for lk in nl.dump_links(node)}["nic0"]
        same = all(after[k] == before[k] for k in ("name", "mtu", "mac", "up"))
        print(f"detached: node side restored exactly: {same}")

        try:
            nl.apply([nl.set_mtu("nic0", 1400, ns=node), nl.set_mtu("nope0", 1400, ns=node)])
        except InvalidArgument as e:  # unknown interface: refused, nothing changed
            print(f"refused as expected: {type(e).__name__}: {e}")
        try:
            nl.apply([nl.route_add("10.30.0.0/16", gateway="10.99.0.1", ns=node)])
        except NetlinkError as e:
            print(f"kernel said no at step {e.step_index}: {e.errno_name} {e.kernel_message!r}")
        return 0 if same else 1
    finally:
        sh("ip", "netns", "del", pod_name)
        sh("ip", "netns", "del", node_name)


if __name__ == "__main__":
    sys.exit(main())
