"""kndkit.testing.SimulatedNode against the real peers and the real kernel.

The node's parts (host netns with veth NICs, kube-apiserver + allocator, the
kubelet and NRI harnesses) start and stop without leaving anything behind; a
pod's netns lives from new_pod to remove_pod; a driver started with
``kndkit run`` publishes the node's NICs, and a pod's whole life leaves the host
exactly as it was. The pytest plugin's ``sim_node`` fixture is exercised in a
pytest subprocess, as a driver author's project would load it.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator

import pytest

from kndkit.errors import InvalidArgument
from kndkit.testing import ClaimSpec, Cluster, SimulatedNode, SimulationError
from kndkit.testing.kube import KubeCluster
from kndkit.testing.node import NETNS_DIR

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

_ids = itertools.count()


def _name() -> str:
    return f"snt{os.getpid() % 10000}-{next(_ids)}"


@pytest.fixture(scope="module")
def cluster(kube_apiserver: KubeCluster) -> Iterator[Cluster]:
    """The session's control plane, shared (a node leaves it running)."""
    from kndkit.testing.kube import Allocator
    from kndkit.testing.peers import ensure

    yield Cluster(
        kube_apiserver,
        Allocator(kube_apiserver.kubeconfig_admin, ensure(("kube",)) / "allocator"),
        kube_apiserver.workdir,
    )


def _netns(prefix: str) -> set[str]:
    """Named network namespaces whose name starts with ``prefix`` (other suites
    running at the same time make their own)."""
    if not NETNS_DIR.is_dir():
        return set()
    return {p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)}


def _children() -> set[int]:
    """Live (not zombie) child processes of this test process."""
    me, out = os.getpid(), set()
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def test_start_stop_leaves_nothing_behind(cluster: Cluster) -> None:
    kids0 = _children()
    name = _name()
    node = SimulatedNode.start(node_name=name, nics=3, cluster=cluster)
    try:
        assert node.workdir.is_dir()
        assert {f"{name}-host", f"{name}-fabric"} <= _netns(name)
        assert [lk["name"] for lk in node.host_links()] == ["lo", "eth1", "eth2", "eth3"]
        assert all(lk["up"] for lk in node.host_links())
        assert node.api.request("GET", f"/api/v1/nodes/{name}")["metadata"]["name"] == name
        assert node.registry_dir.is_dir() and node.nri_socket.exists()
        assert node.kubeconfig.is_file()
        # The driver account may publish slices and read claims, nothing more.
        token = node.api.token_from_kubeconfig(node.kubeconfig)
        node.api.request("GET", "/apis/resource.k8s.io/v1/resourceslices", token=token)
        with pytest.raises(Exception, match="403"):
            node.api.request("GET", "/api/v1/secrets", token=token)
        pod = node.new_pod("p")
        assert pod.netns is not None and pod.netns.exists()
        assert len(_children()) > len(kids0)
    finally:
        node.stop()
    node.stop()  # idempotent
    assert _netns(name) == set()
    assert _children() == kids0
    assert not node.workdir.exists()
    with pytest.raises(Exception, match="404"):
        cluster.admin.request("GET", f"/api/v1/nodes/{name}")
    assert cluster.admin.running  # a shared cluster is left running


def test_same_node_name_twice_is_refused(cluster: Cluster) -> None:
    name = _name()
    with (
        SimulatedNode.start(node_name=name, nics=0, cluster=cluster),
        pytest.raises(SimulationError, match=f"{name}-host exists already"),
    ):
        SimulatedNode.start(node_name=name, nics=0, cluster=cluster)
    with pytest.raises(InvalidArgument, match="nri_version"):
        SimulatedNode.start(node_name=name, nri_version="v0.9", cluster=cluster)


def test_pod_netns_lifecycle_and_nic_setup(cluster: Cluster) -> None:
    with SimulatedNode.start(node_name=_name(), nics=0, cluster=cluster) as node:
        node.add_nic(
            "up0", addresses=["10.66.0.2/24"], mtu=1400, routes=["10.67.0.0/16 via 10.66.0.1"]
        )
        snap = node.snapshot()
        assert "up0 10.66.0.2/24" in snap["addresses"]
        assert any(
            '"dst": "10.67.0.0/16"' in r and '"gateway": "10.66.0.1"' in r for r in snap["routes"]
        )
        assert next(lk for lk in snap["links"] if lk["name"] == "up0")["mtu"] == 1400
        with pytest.raises(InvalidArgument):
            node.add_nic("a-name-longer-than-15")
        with pytest.raises(SimulationError, match=r"ip .*route"):
            node.add_nic("bad0", routes=["10.68.0.0/16 via 10.200.0.1"])  # unreachable gateway
        assert "bad0" not in [lk["name"] for lk in node.host_links()]  # nothing half-made

        pod = node.new_pod("web")
        assert pod.netns is not None and pod.netns.exists()
        assert pod.nri["linux"]["namespaces"] == [{"type": "network", "path": str(pod.netns)}]
        assert (
            pod.nri["uid"]
            == node.api.request("GET", "/api/v1/namespaces/default/pods/web")["metadata"]["uid"]
        )
        node.run_pod(pod)
        node.create_container(pod)
        node.stop_pod(pod)
        node.remove_pod(pod)
        assert not pod.netns.exists()
        hostnet = node.new_pod("hn", host_network=True)
        assert hostnet.netns is None and hostnet.nri["linux"]["namespaces"] == []
        assert node.snapshot() == snap


def test_driver_publishes_and_a_pod_round_trip_restores_the_host(cluster: Cluster) -> None:
    with SimulatedNode.start(node_name=_name(), nics=2, cluster=cluster) as node:
        node.add_nic("eth3", addresses=["10.70.0.2/24"], routes=["10.71.0.0/16 via 10.70.0.1"])
        drv = node.start_driver("hello")
        assert drv.name == "hello.kndkit.dev" and drv.running
        assert node.wait_devices(drv.name, at_least=3) == ["eth1", "eth2", "eth3"]
        assert "kndkit_published_devices" in drv.metrics()
        before = node.snapshot()

        pod = node.new_pod(
            "p1",
            claims=[
                ClaimSpec(
                    driver=drv.name, selector=f'device.attributes["{drv.name}"].ifName == "eth3"'
                )
            ],
        )
        node.start_pod(pod)  # schedule + prepare + RunPodSandbox
        assert [lk["name"] for lk in node.pod_links(pod)] == ["lo", "net1"]
        assert "eth3" not in [lk["name"] for lk in node.host_links()]
        node.create_container(pod)

        # A crash and a restart while the pod runs: the driver comes back ready.
        drv.restart(kill=True)
        assert drv.running
        assert [lk["name"] for lk in node.pod_links(pod)] == ["lo", "net1"]

        node.delete_pod(pod)  # stop + remove + unprepare
        assert node.snapshot() == before
    assert not drv.running


def test_a_driver_that_fails_to_start_is_reported(cluster: Cluster) -> None:
    with SimulatedNode.start(node_name=_name(), nics=0, cluster=cluster) as node:
        with pytest.raises(SimulationError, match="exited with") as e:
            node.start_driver("no_such_module:Driver", timeout=60)
        assert "no_such_module" in str(e.value)


def test_allocation_failure_is_reported(cluster: Cluster) -> None:
    with SimulatedNode.start(node_name=_name(), nics=0, cluster=cluster) as node:
        node.device_class("nothing.kndkit.test")
        pod = node.new_pod("p", claims=[ClaimSpec(driver="nothing.kndkit.test")])
        with pytest.raises(SimulationError, match="allocating the claims of pod default/p"):
            node.schedule(pod)


def test_pytest_plugin_sim_node_fixture(tmp_path: pathlib.Path) -> None:
    """A driver author's test file using the plugin's fixture, in its own pytest run."""
    test = tmp_path / "test_author.py"
    test.write_text(
        textwrap.dedent(
            """
            import pathlib

            def test_node(sim_node, kndkit_cluster):
                pathlib.Path("names").write_text(sim_node.node_name)
                assert sim_node.cluster is kndkit_cluster
                names = [lk["name"] for lk in sim_node.host_links()]
                assert names == ["lo", "eth1", "eth2"]
                pod = sim_node.new_pod("p")
                sim_node.run_pod(pod)
                assert pod.netns.exists()

            def test_failing_report(sim_node):
                assert False, "on purpose"
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2] / "python")}
    # Installed kndkit registers the plugin through its pytest11 entry point
    # (what a driver author's project gets); a bare checkout loads it with -p.
    registered = any(
        ep.value == "kndkit.testing.pytest_plugin"
        for ep in importlib.metadata.entry_points(group="pytest11")
    )
    load = [] if registered else ["-p", "kndkit.testing.pytest_plugin"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *load,
            "-q",
            "-p",
            "no:cacheprovider",
            str(test),
        ],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "on purpose" in proc.stdout
    name = (tmp_path / "names").read_text()
    assert name.startswith("sim")
    assert _netns(name) == set()


def test_readme_driver_test_passes() -> None:
    """The README's "Testing your driver" example, run as a driver author would."""
    root = pathlib.Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if "def test_hello_gives_the_pod_a_nic" in b]
    with tempfile.TemporaryDirectory(prefix="knd-readme-") as d:
        test = pathlib.Path(d) / "test_readme_example.py"
        test.write_text(block)
        env = {**os.environ, "PYTHONPATH": str(root / "python")}
        registered = any(
            ep.value == "kndkit.testing.pytest_plugin"
            for ep in importlib.metadata.entry_points(group="pytest11")
        )
        load = [] if registered else ["-p", "kndkit.testing.pytest_plugin"]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", *load, "-q", "-p", "no:cacheprovider", str(test)],
            cwd=root,  # the example names examples/hello.py
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    assert "1 passed" in proc.stdout, proc.stdout + proc.stderr
