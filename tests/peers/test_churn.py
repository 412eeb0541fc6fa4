"""200 pods started and stopped in sequence through every real peer leak nothing.

For the netdev driver (a whole NIC moved in and back) and the macvlan driver
(a sub-interface created in the pod, an address leased from node-local IPAM),
each pod goes through the scheduler's allocator, NodePrepareResources,
RunPodSandbox, StopPodSandbox, RemovePodSandbox and NodeUnprepareResources
(kube-apiserver, allocator, kubelet harness and NRI runtime are upstream code;
the driver runs as ``kndkit run``). Afterwards the host namespace must be
exactly as before (links, addresses, routes, rules, neighbours), the driver's
store must hold no claim and no attachment, IPAM no lease, no pod namespace may
be left, and the driver must still be the same process.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
from collections.abc import Iterator

import pytest

from kndkit.testing.node import ClaimSpec, Cluster, SimulatedNode

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PODS = 200


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def node(cluster: Cluster) -> Iterator[SimulatedNode]:
    n = SimulatedNode.start(node_name=f"churn{os.getpid() % 10000}", nics=0, cluster=cluster)
    try:
        yield n
    finally:
        n.stop()


def _rows(db: pathlib.Path, table: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (count,) = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    finally:
        con.close()
    return int(count)


def _pod_netns(node: SimulatedNode) -> list[str]:
    prefix = f"{node.node_name}-pod-"
    return sorted(p for p in os.listdir("/run/netns") if p.startswith(prefix))


def _churn(node: SimulatedNode, claim: ClaimSpec, check_pod: str, prefix: str) -> None:
    for i in range(PODS):
        pod = node.new_pod(f"{prefix}{i}", claims=[claim])
        node.start_pod(pod)
        names = [link["name"] for link in node.pod_links(pod)]
        assert check_pod in names, f"pod {i}: {names}"
        node.delete_pod(pod)


def test_netdev_200_pods_in_sequence_leak_nothing(node: SimulatedNode) -> None:
    node.add_nic(
        "eth1", addresses=["192.168.50.2/24"], mtu=1500, routes=["10.50.0.0/16 via 192.168.50.1"]
    )
    node.add_nic("eth2", addresses=["192.168.51.2/24"])
    before = node.snapshot()
    driver = node.start_driver("netdev", params={"filter": "true"})
    pid = driver.pid
    claim = ClaimSpec(
        driver="netdev.kndkit.dev",
        config={
            "interface": {"name": "net1", "mtu": 1400, "addresses": ["10.9.0.2/24"]},
            "routes": [{"destination": "10.8.0.0/16", "gateway": "10.9.0.1"}],
        },
    )
    _churn(node, claim, "net1", "nd")
    assert driver.running and driver.pid == pid, driver.logs()
    assert node.snapshot() == before
    state = node.workdir / "state-0" / "state.db"
    assert _rows(state, "claims") == 0
    assert _rows(state, "attachments") == 0
    assert _pod_netns(node) == []


def test_macvlan_200_pods_in_sequence_leak_nothing(node: SimulatedNode) -> None:
    node.add_nic("eth1", addresses=["192.168.60.2/24"])
    before = node.snapshot()
    driver = node.start_driver(
        "macvlan",
        params={"parent": "eth1", "ranges": "10.60.0.0/24", "gateway": "10.60.0.1", "slots": 4},
    )
    pid = driver.pid
    _churn(node, ClaimSpec(driver="macvlan.kndkit.dev"), "net1", "mv")
    assert driver.running and driver.pid == pid, driver.logs()
    assert node.snapshot() == before
    state_dir = node.workdir / "state-0"
    assert _rows(state_dir / "state.db", "claims") == 0
    assert _rows(state_dir / "state.db", "attachments") == 0
    assert _rows(state_dir / "ipam.sqlite", "ipam_leases") == 0
    assert _pod_netns(node) == []
