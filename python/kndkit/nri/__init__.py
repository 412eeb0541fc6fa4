"""kndkit.nri: NRI (Node Resource Interface) plugins in asyncio.

A plugin subclasses :class:`Plugin` and defines the hooks it needs
(``run_pod_sandbox``, ``create_container``...); :mod:`kndkit.nri.model` has the
typed pods, containers and adjustments the hooks receive and return, and the
rules by which the runtime merges the adjustments of several plugins. The
transport (connection multiplexer, ttrpc) lives in :mod:`kndkit.nri.mux` and
:mod:`kndkit.nri.ttrpc`.

Example::

    class Injector(Plugin):
        async def create_container(self, pod: Pod, ctr: Container) -> ContainerAdjustment:
            return ContainerAdjustment().add_env("POD_NETNS", pod.netns or "")

    asyncio.run(Injector("injector", "50").run())
"""

from __future__ import annotations

from kndkit.nri.model import (
    CONTAINER_EVENTS,
    POD_EVENTS,
    REMOVAL_PREFIX,
    AdjustmentValidation,
    Container,
    ContainerAdjustment,
    ContainerEviction,
    ContainerState,
    ContainerUpdate,
    Event,
    LinuxDevice,
    Mount,
    Namespace,
    Pod,
    event_mask,
    events_in_mask,
)
from kndkit.nri.plugin import DEFAULT_SOCKET, NRI_VERSION, Plugin, RuntimeInfo

__all__ = [
    "CONTAINER_EVENTS",
    "DEFAULT_SOCKET",
    "NRI_VERSION",
    "POD_EVENTS",
    "REMOVAL_PREFIX",
    "AdjustmentValidation",
    "Container",
    "ContainerAdjustment",
    "ContainerEviction",
    "ContainerState",
    "ContainerUpdate",
    "Event",
    "LinuxDevice",
    "Mount",
    "Namespace",
    "Plugin",
    "Pod",
    "RuntimeInfo",
    "event_mask",
    "events_in_mask",
]
