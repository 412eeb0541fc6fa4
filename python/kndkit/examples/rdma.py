"""rdma: gives each pod an RDMA NIC (RoCE or InfiniBand) with its character devices.

Run it with ``kndkit run rdma`` or ``python examples/rdma.py``. Per node mode:

* shared RDMA netns mode (the kernel default): the NIC's netdev moves into the
  pod; the pod gets ``/dev/infiniband/uverbsN``, ``umadN``, ``issmN`` and
  ``rdma_cm`` injected at CreateContainer;
* exclusive mode: the RDMA link moves into the pod with its netdev and comes
  back first when the pod stops;
* InfiniBand-only devices (no netdev): a plan of kind ``rdma`` (the link move in
  exclusive mode, the character devices always); netdev settings are refused.

Claim configuration: DraNet's netdev fields (``interface``, ``routes``...; see
:mod:`kndkit.config`) plus an ``rdma`` section for the character devices'
owner and mode, e.g. ``{"interface": {"name": "roce0"}, "rdma": {"uid": 1000,
"gid": 1000, "fileMode": 432}}`` (432 = 0o660; the default mode is 0o666).
Without an owner, a container's nodes get the container's own user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kndkit.config import NetdevConfig, check_device_support
from kndkit.dra.types import HealthStatus
from kndkit.driver import DriverOptions, NetworkDriver, PlanContext, run
from kndkit.nri.model import Container, ContainerAdjustment, Pod
from kndkit.plan import InterfacePlan, RdmaPlan
from kndkit.rdma import RdmaLinks, RdmaSettings, RdmaStep, adjustment_for, port_states
from kndkit.sources import NodeDevice
from kndkit.steps import NETDEV_STEPS


class RdmaConfig(NetdevConfig):
    """A claim's configuration: the netdev fields plus the character devices' owner."""

    rdma: RdmaSettings | None = None


RDMA = RdmaStep()  # the RDMA side of each plan: link move (exclusive mode), char devices


class Rdma(NetworkDriver):
    """RDMA NICs for pods, in the node's shared or exclusive RDMA netns mode."""

    name = "rdma.kndkit.dev"
    sources = (RdmaLinks(),)
    config = RdmaConfig
    # the netdev example's steps (name, addresses, routes... from the claim), then RDMA
    steps = (*NETDEV_STEPS, RDMA)

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        self.netns_mode = RDMA.mode  # read once, at start ("shared" when unreadable)

    def plan(self, device: NodeDevice, config: Any, ctx: PlanContext) -> InterfacePlan:
        cfg = config if isinstance(config, RdmaConfig) else RdmaConfig()
        check_device_support(
            cfg,
            has_netdev=device.netdev is not None,
            claim=f"{ctx.claim.namespace}/{ctx.claim.name}",
            request=ctx.allocated.request,
            device=device.name,
        )
        if device.ifname is None:  # InfiniBand only: the RDMA side alone (RdmaStep fills it)
            rdma = RdmaPlan(device.rdma.name if device.rdma else device.name)
            return InterfacePlan(device=device.name, kind="rdma", rdma=rdma)
        return InterfacePlan.move(device.name, device.ifname)

    def health(self, device: NodeDevice) -> tuple[HealthStatus, str]:
        """Unhealthy while the netdev is down or no RDMA port is ACTIVE."""
        status, message = super().health(device)
        if status is not HealthStatus.HEALTHY or device.rdma is None:
            return status, message
        ports = port_states(device.rdma.name, sysfs_root=self.options.sysfs_root)
        summary = ", ".join(f"port {n} {state}" for n, state in ports.items()) or "no port"
        if "ACTIVE" not in ports.values():
            return HealthStatus.UNHEALTHY, f"{device.rdma.name}: {summary}"
        return HealthStatus.HEALTHY, f"{device.rdma.name}: {summary}"

    async def on_create_container(
        self, pod: Pod, container: Container, plans: Sequence[InterfacePlan]
    ) -> ContainerAdjustment | None:
        adjustment = adjustment_for(plans, container=container)
        return None if adjustment.is_empty() else adjustment


if __name__ == "__main__":
    run(Rdma)
