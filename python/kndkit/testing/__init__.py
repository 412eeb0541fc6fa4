"""Test helpers for driver authors.

* :mod:`kndkit.testing.sysfs`: fake sysfs trees (and fake ``/dev/infiniband``)
  for discovery tests; nothing there touches the real node.
* :class:`SimulatedNode` (:mod:`kndkit.testing.node`): a node made of network
  namespaces and veth NICs, with the real peers a driver talks to
  (kube-apiserver + etcd, the scheduler's DRA allocator, the kubelet's DRA
  client, containerd's NRI runtime side); the driver runs as ``kndkit run``.
* :mod:`kndkit.testing.peers`: the Go sources of those peers, built on first use
  (:func:`kndkit.testing.peers.ensure`); the harness clients live in
  :mod:`kndkit.testing.kube`, :mod:`kndkit.testing.kubelet` and
  :mod:`kndkit.testing.nri`.
* :mod:`kndkit.testing.pytest_plugin`: the ``kndkit_cluster`` and ``sim_node``
  fixtures (registered as the ``kndkit`` pytest plugin).

The simulated node and the peers are loaded on first use, so importing this
package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kndkit.testing.sysfs import (
    GPU_VM_CAPTURE,
    SysfsBuilder,
    build_from_capture,
    build_synthetic,
)

if TYPE_CHECKING:
    from kndkit.testing.node import (
        ClaimSpec,
        Cluster,
        DriverProcess,
        SimPod,
        SimulatedNode,
        SimulationError,
    )

__all__ = [
    "GPU_VM_CAPTURE",
    "ClaimSpec",
    "Cluster",
    "DriverProcess",
    "SimPod",
    "SimulatedNode",
    "SimulationError",
    "SysfsBuilder",
    "build_from_capture",
    "build_synthetic",
]

_NODE = {"ClaimSpec", "Cluster", "DriverProcess", "SimPod", "SimulatedNode", "SimulationError"}


def __getattr__(name: str) -> Any:
    if name in _NODE:
        from kndkit.testing import node  # noqa: PLC0415

        return getattr(node, name)
    raise AttributeError(f"module 'kndkit.testing' has no attribute {name!r}")
