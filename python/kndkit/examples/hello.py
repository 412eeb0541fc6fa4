"""hello: gives each pod one of the node's spare NICs, renamed inside the pod.

Run it with ``kndkit run hello`` or ``python examples/hello.py``. A claim may
set the interface name: ``{"name": "eth1"}`` (default ``net1``). When the pod
stops, the NIC goes back to the host exactly as it was.
"""

from __future__ import annotations

from typing import Any

from kndkit import InterfacePlan, Netdevs, NetworkDriver, NodeDevice, PlanContext, run


class Hello(NetworkDriver):
    """Gives each pod one of the node's spare NICs, renamed to net1."""

    name = "hello.kndkit.dev"
    sources = (Netdevs(exclude_uplink=True),)

    def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
        assert device.ifname is not None  # Netdevs only yields network interfaces
        return InterfacePlan.move(device.name, device.ifname, name=config.get("name", "net1"))


if __name__ == "__main__":
    run(Hello)
