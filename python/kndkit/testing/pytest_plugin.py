"""pytest fixtures for driver authors: a real control plane and a simulated node.

Registered as a pytest plugin (entry point ``pytest11``: ``kndkit``), so a
project that installs kndkit gets the fixtures without a ``conftest.py``:

``kndkit_cluster`` (session)
    A :class:`kndkit.testing.node.Cluster` (kube-apiserver + etcd + the
    scheduler's allocator), started once per session and shared by nodes.

``sim_node`` (function)
    A started :class:`kndkit.testing.SimulatedNode` on ``kndkit_cluster``
    with two NICs (``eth1``, ``eth2``) and a node name unique to the test;
    stopped (everything removed) at teardown. The driver logs are attached to
    a failing test's report.

The Go peers are built on first use (:func:`kndkit.testing.peers.ensure`; about
4-12 minutes the first time, cached in ``~/.cache/kndkit/peers``). Both fixtures
need root (network namespaces); without it they skip.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Generator, Iterator

import pytest

from kndkit.errors import KndError
from kndkit.testing.node import Cluster, SimulatedNode

_counter = itertools.count()


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("kndkit's simulated node needs root (network namespaces)")


@pytest.fixture(scope="session")
def kndkit_cluster() -> Iterator[Cluster]:
    """kube-apiserver + etcd + allocator for the whole session."""
    _require_root()
    try:
        cluster = Cluster.start()
    except KndError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def sim_node(kndkit_cluster: Cluster) -> Iterator[SimulatedNode]:
    """A simulated node (two veth NICs) on the session's cluster."""
    name = f"sim{os.getpid() % 10000}-{next(_counter)}"
    node = SimulatedNode.start(node_name=name, nics=2, cluster=kndkit_cluster)
    try:
        yield node
    finally:
        node.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the simulated node's driver logs to a failing test's report."""
    report = yield
    if report.failed:
        node = getattr(item, "funcargs", {}).get("sim_node")
        if isinstance(node, SimulatedNode):
            for d in node.drivers:
                report.sections.append((f"driver {d.spec} log (tail)", d.logs(6000)))
    return report
