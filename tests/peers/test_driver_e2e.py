"""The hello driver end to end, as a process (``python -m kndkit run hello``),
against the real peers only: the kube-apiserver, the scheduler's allocator, the
kubelet harness (DRA) and the NRI runtime harness (containerd's adaptation).

The node's "host" is a network namespace with veth NICs (their peers in a
fabric namespace), handed to the driver with ``--host-netns``; each pod is a
network namespace of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kndkit.testing.kube import Allocator, KubeAPIError, KubeCluster
from kndkit.testing.kubelet import KubeletHarness, unique_name
from kndkit.testing.nri import NRIError, NRIRuntime, make_pod

DRIVER = "hello.kndkit.dev"
RESOURCE = "/apis/resource.k8s.io/v1"
REPO = Path(__file__).resolve().parents[2]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _links(netns: str) -> dict[str, dict[str, Any]]:
    out = _ip("-n", netns, "-j", "addr", "show").stdout
    return {e["ifname"]: e for e in json.loads(out)}


def _wait(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class DriverProc:
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env()
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "python") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass
class Node:
    """The simulated node: host netns with NICs, the peers, the driver process."""

    api: KubeCluster
    allocator: Allocator
    kubelet: KubeletHarness
    runtime: NRIRuntime
    host: str
    fabric: str
    nics: list[str]
    tmp: Path
    namespace: str
    device_class: str
    driver: DriverProc | None = None
    name: str = DRIVER
    spec: str = "hello"
    rescan_interval: str = "2"
    pods: list[str] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)

    @property
    def host_path(self) -> str:
        return f"/run/netns/{self.host}"

    def start_driver(self) -> DriverProc:
        if self.driver is None:
            argv = [
                sys.executable,
                "-m",
                "kndkit",
                "--log-level",
                "debug",
                "run",
                self.spec,
                "--host-netns",
                self.host_path,
                "--node-name",
                self.kubelet.node_name,
                "--kubeconfig",
                str(self.api.kubeconfig_admin),
                "--registry-dir",
                str(self.kubelet.registry_dir),
                "--plugin-dir",
                str(self.kubelet.plugins_dir / self.name),
                "--state-dir",
                str(self.tmp / "state"),
                "--nri-socket",
                str(self.runtime.socket),
                "--metrics-port",
                "0",
                "--rescan-interval",
                self.rescan_interval,
            ]
            self.driver = DriverProc(argv, self.tmp / "driver.log")
        self.driver.start()
        try:
            self.kubelet.wait_registered(self.name, timeout=60)
            self.runtime.wait_plugins(1, timeout=60)
        except Exception:
            raise AssertionError(f"driver did not come up:\n{self.driver.logs()}") from None
        return self.driver

    def slices(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.request(
            "GET",
            f"{RESOURCE}/resourceslices?fieldSelector=spec.driver={self.name},"
            f"spec.nodeName={self.kubelet.node_name}",
        )["items"]
        return items

    def published(self) -> list[str]:
        return sorted(d["name"] for s in self.slices() for d in s["spec"].get("devices", []))

    def claim(self, *, config: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
        """A claim for one NIC, allocated for a new pod; returns (claim, pod uid)."""
        spec: dict[str, Any] = {
            "devices": {
                "requests": [
                    {
                        "name": "nic",
                        "exactly": {"deviceClassName": self.device_class, "count": 1},
                    }
                ]
            }
        }
        if config is not None:
            spec["devices"]["config"] = [
                {"requests": ["nic"], "opaque": {"driver": self.name, "parameters": config}}
            ]
        obj = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": unique_name("claim"), "namespace": self.namespace},
            "spec": spec,
        }
        created: dict[str, Any] = self.api.create(obj)
        self.claims.append(created)
        pod_uid = str(uuid.uuid4())
        res = self.allocator.allocate(
            self.kubelet.node_name, [created], pod=(unique_name("pod"), pod_uid)
        )
        assert res.allocated, (res.json, res.stderr)
        return self.api.get(created), pod_uid

    def pod_netns(self) -> str:
        name = f"kde{os.getpid() % 10000}p{len(self.pods)}"
        _ip("netns", "add", name)
        self.pods.append(name)
        return name

    def prepare(self, claim: dict[str, Any]) -> None:
        out = self.kubelet.prepare(self.name, [_ref(claim)])
        result = out["response"]["claims"][claim["metadata"]["uid"]]
        assert result["error"] == "", result

    def unprepare(self, claim: dict[str, Any]) -> None:
        out = self.kubelet.unprepare(self.name, [_ref(claim)])
        assert out["response"]["claims"][claim["metadata"]["uid"]]["error"] == ""

    def records(self) -> tuple[list[Any], list[Any]]:
        """(claims, attachments) in the driver's state file (read-only)."""
        import sqlite3

        db = sqlite3.connect(f"file:{self.tmp / 'state' / 'state.db'}?mode=ro", uri=True)
        try:
            claims = db.execute("SELECT uid, phase FROM claims").fetchall()
            atts = db.execute("SELECT pod_uid, phase FROM attachments").fetchall()
        finally:
            db.close()
        return claims, atts


def _ref(claim: dict[str, Any]) -> dict[str, str]:
    m = claim["metadata"]
    return {"namespace": m["namespace"], "name": m["name"], "uid": m["uid"]}


def _health(node: Node) -> dict[str, str]:
    """The current device health as the kubelet's DRAResourceHealth stream has it."""
    (msg,) = node.kubelet.watch_health(DRIVER, 1)["messages"]
    return {d["device"]["device_name"]: d["health"] for d in msg["devices"]}


def _device(claim: dict[str, Any]) -> str:
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    return str(result["device"])


@pytest.fixture
def node(
    kube_apiserver: KubeCluster,
    allocator: Allocator,
    kubelet_harness: KubeletHarness,
    nri_runtime: NRIRuntime,
) -> Iterator[Node]:
    tag = f"kde{os.getpid() % 10000}"
    host, fabric = f"{tag}-h", f"{tag}-f"
    for ns in (host, fabric):
        _ip("netns", "add", ns)
    nics = []
    for i in range(2):
        nic = f"{tag}n{i}"
        _ip(
            "-n", host, "link", "add", nic, "type", "veth", "peer", "name", f"p{i}", "netns", fabric
        )
        _ip("-n", host, "addr", "add", f"10.77.{i}.1/24", "dev", nic)
        _ip("-n", host, "link", "set", nic, "mtu", "1400", "up")
        _ip("-n", fabric, "link", "set", f"p{i}", "up")
        nics.append(nic)
    node_name = kubelet_harness.node_name
    kube_apiserver.create_node(node_name)
    ns = unique_name("ns")
    kube_apiserver.ensure_namespace(ns)
    cls: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": unique_name("hello")},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    kube_apiserver.create(cls)
    tmp = Path(tempfile.mkdtemp(prefix="knd-e2e-", dir="/tmp"))
    n = Node(
        kube_apiserver,
        allocator,
        kubelet_harness,
        nri_runtime,
        host,
        fabric,
        nics,
        tmp,
        ns,
        cls["metadata"]["name"],
    )
    try:
        yield n
    finally:
        if n.driver is not None:
            n.driver.terminate()
        for c in n.claims:
            with contextlib.suppress(KubeAPIError):
                kube_apiserver.delete(c, grace_period_s=0)
        with contextlib.suppress(Exception):
            for s in n.slices():
                kube_apiserver.delete(s)
        with contextlib.suppress(Exception):
            kube_apiserver.delete(cls)
        with contextlib.suppress(Exception):
            kube_apiserver.delete_node(node_name)
        for p in n.pods:
            _ip("netns", "del", p, check=False)
        _ip("netns", "del", fabric, check=False)
        _ip("netns", "del", host, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _host_view(node: Node, nic: str) -> tuple[int, str, list[str], bool]:
    e = _links(node.host)[nic]
    addrs = sorted(
        f"{a['local']}/{a['prefixlen']}" for a in e["addr_info"] if a.get("scope") == "global"
    )
    return e["mtu"], e["address"], addrs, "UP" in e["flags"]


# --------------------------------------------------------------------------- the lifecycle


def test_publish_prepare_run_stop_unprepare(node: Node) -> None:
    driver = node.start_driver()
    _wait(lambda: node.published() == sorted(node.nics), "both NICs published")
    before = {nic: _host_view(node, nic) for nic in node.nics}

    claim, pod_uid = node.claim(config={"name": "eth9"})
    dev = _device(claim)
    assert dev in node.nics
    node.prepare(claim)
    claims, atts = node.records()
    assert claims == [(claim["metadata"]["uid"], "prepared")] and atts == []

    pod_ns = node.pod_netns()
    pod = make_pod("p0", netns=f"/run/netns/{pod_ns}", uid=pod_uid, namespace=node.namespace)
    node.runtime.run_pod_sandbox(pod)
    assert dev not in _links(node.host)
    inside = _links(pod_ns)
    assert "eth9" in inside, (inside, driver.logs())
    assert inside["eth9"]["mtu"] == 1400
    assert node.records()[1] == [(pod_uid, "attached")]

    # networkData is written on the claim after the attach.
    def network_data() -> Any:
        st = node.api.get(claim).get("status", {}).get("devices") or []
        return [d.get("networkData") for d in st if d.get("driver") == DRIVER]

    nd = _wait(network_data, "networkData on the claim")
    assert nd[0]["interfaceName"] == "eth9"
    assert nd[0]["hardwareAddress"] == before[dev][1]
    (entry,) = [d for d in node.api.get(claim)["status"]["devices"] if d.get("driver") == DRIVER]
    assert {c["type"]: c["status"] for c in entry["conditions"]} == {
        "Ready": "True",
        "NetworkReady": "True",
    }

    # Metrics and probes (an ephemeral port, written to the state directory).
    port = int((node.tmp / "state" / "metrics.port").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert f'kndkit_attach_duration_seconds_count{{driver="{DRIVER}",op="attach"}} 1.0' in text
    assert f'kndkit_published_devices{{driver="{DRIVER}"}} 2.0' in text
    assert f'kndkit_attached_pods{{driver="{DRIVER}"}} 1.0' in text
    # Device health, streamed to the kubelet.
    assert _health(node) == {nic: "HEALTHY" for nic in node.nics}

    # The device stays published while it is in the pod (rescans every 2 s).
    time.sleep(2.5)
    assert node.published() == sorted(node.nics)

    node.runtime.stop_pod_sandbox(pod)
    assert "eth9" not in _links(pod_ns)
    assert _host_view(node, dev) == before[dev]
    assert node.records()[1] == []

    # A NIC going down turns unhealthy at the next rescan.
    other = next(n for n in node.nics if n != dev)
    _ip("-n", node.host, "link", "set", other, "down")
    _wait(lambda: _health(node)[other] == "UNHEALTHY", "unhealthy NIC reported")
    _ip("-n", node.host, "link", "set", other, "up")

    node.unprepare(claim)
    assert node.records() == ([], [])
    # SIGTERM: graceful stop, sockets removed.
    assert driver.terminate() == 0, driver.logs()
    assert not list(node.kubelet.registry_dir.glob(f"{DRIVER}*")), driver.logs()


def test_link_added_and_removed_republished_without_waiting_for_the_interval(
    node: Node,
) -> None:
    """Link notifications of the host namespace trigger a rescan: with an hour
    between periodic rescans, a new NIC is published (and a removed one
    withdrawn) within seconds."""
    node.rescan_interval = "3600"
    node.start_driver()
    _wait(lambda: node.published() == sorted(node.nics), "both NICs published")
    extra = f"kde{os.getpid() % 10000}x"
    _ip(
        "-n", node.host, "link", "add", extra, "type", "veth", "peer", "name", "px", "netns",
        node.fabric,
    )  # fmt: skip
    _wait(lambda: extra in node.published(), f"{extra} published after its link appeared")
    _ip("-n", node.host, "link", "del", extra)
    _wait(lambda: extra not in node.published(), f"{extra} withdrawn after its link went away")
    assert node.driver is not None
    assert "link notifications" not in node.driver.logs()  # the watch did start


def test_host_network_pod_refused(node: Node) -> None:
    node.start_driver()
    _wait(lambda: len(node.published()) == 2, "NICs published")
    claim, pod_uid = node.claim()
    node.prepare(claim)
    pod = make_pod("hostnet", uid=pod_uid, namespace=node.namespace)  # no netns
    with pytest.raises(NRIError, match="host network"):
        node.runtime.run_pod_sandbox(pod)
    assert _device(claim) in _links(node.host)
    assert node.records()[1] == []

    def events() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = node.api.request(
            "GET", f"/apis/events.k8s.io/v1/namespaces/{node.namespace}/events"
        )["items"]
        return [
            e
            for e in items
            if e["reason"] == "AttachFailed" and e["regarding"]["uid"] == claim["metadata"]["uid"]
        ]

    (event,) = _wait(events, "an AttachFailed event on the claim")
    assert "host network" in event["note"] and event["type"] == "Warning"
    node.unprepare(claim)


# --------------------------------------------------------------------------- crashes


def test_sigkill_between_prepare_and_run(node: Node) -> None:
    driver = node.start_driver()
    _wait(lambda: len(node.published()) == 2, "NICs published")
    c1, uid1 = node.claim()
    c2, uid2 = node.claim()
    node.prepare(c1)
    node.prepare(c2)
    driver.kill()

    # Pod 2 starts while the driver is down: it gets nothing now...
    ns2 = node.pod_netns()
    pod2 = make_pod("p2", netns=f"/run/netns/{ns2}", uid=uid2, namespace=node.namespace)
    node.runtime.run_pod_sandbox(pod2)
    assert _device(c2) in _links(node.host)
    # ... and its device when the restarted driver learns of it (Synchronize).
    node.runtime.set_state(pods=[pod2])
    node.start_driver()
    _wait(lambda: "net1" in _links(ns2), "pod 2 attached by Synchronize")
    assert _device(c2) not in _links(node.host)

    # Pod 1 starts after the restart: the prepared plan survived.
    ns1 = node.pod_netns()
    pod1 = make_pod("p1", netns=f"/run/netns/{ns1}", uid=uid1, namespace=node.namespace)
    node.runtime.run_pod_sandbox(pod1)
    assert "net1" in _links(ns1)
    assert sorted(a for a, _ in node.records()[1]) == sorted([uid1, uid2])

    for pod, c in ((pod1, c1), (pod2, c2)):
        node.runtime.stop_pod_sandbox(pod)
        node.unprepare(c)
    assert sorted(node.nics) == sorted(n for n in _links(node.host) if n in node.nics)
    assert node.records() == ([], [])


def test_sigkill_between_run_and_stop(node: Node) -> None:
    driver = node.start_driver()
    _wait(lambda: len(node.published()) == 2, "NICs published")
    before = {nic: _host_view(node, nic) for nic in node.nics}
    c1, uid1 = node.claim()
    c2, uid2 = node.claim()
    node.prepare(c1)
    node.prepare(c2)
    ns1, ns2 = node.pod_netns(), node.pod_netns()
    pod1 = make_pod("p1", netns=f"/run/netns/{ns1}", uid=uid1, namespace=node.namespace)
    pod2 = make_pod("p2", netns=f"/run/netns/{ns2}", uid=uid2, namespace=node.namespace)
    node.runtime.run_pod_sandbox(pod1)
    node.runtime.run_pod_sandbox(pod2)
    assert "net1" in _links(ns1) and "net1" in _links(ns2)
    driver.kill()

    # Pod 1 stops while the driver is down (its netns lingers); pod 2 lives on.
    node.runtime.stop_pod_sandbox(pod1)
    node.runtime.set_state(pods=[pod2])
    node.start_driver()
    # Synchronize: pod 1 is gone -> its NIC is back exactly as it was.
    _wait(lambda: _device(c1) in _links(node.host), "pod 1's NIC back on the host")
    assert _host_view(node, _device(c1)) == before[_device(c1)]
    assert "net1" not in _links(ns1)
    # Pod 2 keeps its NIC, and gives it back on stop.
    assert "net1" in _links(ns2)
    assert node.records()[1] == [(uid2, "attached")]
    node.runtime.stop_pod_sandbox(pod2)
    assert _host_view(node, _device(c2)) == before[_device(c2)]
    node.unprepare(c1)
    node.unprepare(c2)
    assert node.records() == ([], [])


# --------------------------------------------------------------------------- side by side

TWO_DRIVERS = """
from kndkit.driver import NetworkDriver, PlanContext
from kndkit.plan import InterfacePlan
from kndkit.sources import Netdevs, NodeDevice


class First(NetworkDriver):
    name = "first.kndkit.test"
    sources = (Netdevs(name_filter=r".*n0"),)


class Second(NetworkDriver):
    name = "second.kndkit.test"
    sources = (Netdevs(name_filter=r".*n1"),)

    def plan(self, device: NodeDevice, config: object, ctx: PlanContext) -> InterfacePlan:
        return InterfacePlan.move(device.name, device.ifname or "", name="net2")
"""


def test_two_drivers_side_by_side_one_pod(node: Node) -> None:
    spec = node.tmp / "two.py"
    spec.write_text(TWO_DRIVERS)
    procs: list[DriverProc] = []
    classes: list[dict[str, Any]] = []
    try:
        for idx, (cls_name, drv) in enumerate(
            (("First", "first.kndkit.test"), ("Second", "second.kndkit.test"))
        ):
            argv = [
                sys.executable,
                "-m",
                "kndkit",
                "run",
                f"{spec}:{cls_name}",
                "--host-netns",
                node.host_path,
                "--node-name",
                node.kubelet.node_name,
                "--kubeconfig",
                str(node.api.kubeconfig_admin),
                "--registry-dir",
                str(node.kubelet.registry_dir),
                "--plugin-dir",
                str(node.kubelet.plugins_dir / drv),
                "--state-dir",
                str(node.tmp / drv),
                "--nri-socket",
                str(node.runtime.socket),
                "--nri-index",
                f"1{idx}",
                "--metrics-port",
                "-1",
            ]
            p = DriverProc(argv, node.tmp / f"{drv}.log")
            p.start()
            procs.append(p)
            node.kubelet.wait_registered(drv, timeout=60)
            c: dict[str, Any] = {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "DeviceClass",
                "metadata": {"name": unique_name(cls_name.lower())},
                "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{drv}"'}}]},
            }
            node.api.create(c)
            classes.append(c)
        node.runtime.wait_plugins(2, timeout=60)

        # One claim per driver, both for the same pod.
        pod_uid = str(uuid.uuid4())
        claims = []
        for c in classes:
            obj = {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": unique_name("claim"), "namespace": node.namespace},
                "spec": {
                    "devices": {
                        "requests": [
                            {
                                "name": "nic",
                                "exactly": {"deviceClassName": c["metadata"]["name"]},
                            }
                        ]
                    }
                },
            }
            created = node.api.create(obj)
            node.claims.append(created)
            claims.append(created)

        def published() -> bool:
            items = node.api.request(
                "GET",
                f"{RESOURCE}/resourceslices?fieldSelector=spec.nodeName={node.kubelet.node_name}",
            )["items"]
            return {s["spec"]["driver"] for s in items} >= {
                "first.kndkit.test",
                "second.kndkit.test",
            }

        _wait(published, "both drivers' slices")
        res = node.allocator.allocate(node.kubelet.node_name, claims, pod=("both", pod_uid))
        assert res.allocated, (res.json, res.stderr)
        claims = [node.api.get(c) for c in claims]
        for drv, c in zip(("first.kndkit.test", "second.kndkit.test"), claims, strict=True):
            out = node.kubelet.prepare(drv, [_ref(c)])
            assert out["response"]["claims"][c["metadata"]["uid"]]["error"] == ""

        ns = node.pod_netns()
        pod = make_pod("both", netns=f"/run/netns/{ns}", uid=pod_uid, namespace=node.namespace)
        node.runtime.run_pod_sandbox(pod)
        inside = _links(ns)
        assert "net1" in inside and "net2" in inside, [p.logs() for p in procs]
        assert not set(node.nics) & set(_links(node.host))
        node.runtime.stop_pod_sandbox(pod)
        assert set(node.nics) <= set(_links(node.host))
        for drv, c in zip(("first.kndkit.test", "second.kndkit.test"), claims, strict=True):
            out = node.kubelet.unprepare(drv, [_ref(c)])
            assert out["response"]["claims"][c["metadata"]["uid"]]["error"] == ""
    finally:
        for p in procs:
            p.terminate()
        for c in classes:
            with contextlib.suppress(Exception):
                node.api.delete(c)
        with contextlib.suppress(Exception):
            for s in node.api.request(
                "GET",
                f"{RESOURCE}/resourceslices?fieldSelector=spec.nodeName={node.kubelet.node_name}",
            )["items"]:
                node.api.delete(s)


# --------------------------------------------------------------------------- NRI deadline

SLOW_DRIVER = """
import time

from kndkit.examples.hello import Hello


class Slow(Hello):
    name = "slow.kndkit.test"

    def _attach_blocking(self, plans, netns):
        time.sleep(1.5)  # past the runtime's 1 s request timeout
        return super()._attach_blocking(plans, netns)
"""


def test_attach_finished_after_the_deadline_is_undone(
    node: Node, nri_runtime_factory: Callable[..., NRIRuntime]
) -> None:
    node.runtime = nri_runtime_factory(request_timeout=1.0)
    spec = node.tmp / "slow.py"
    spec.write_text(SLOW_DRIVER)
    node.name, node.spec = "slow.kndkit.test", f"{spec}:Slow"
    cls: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": unique_name("slow")},
        "spec": {"selectors": [{"cel": {"expression": 'device.driver == "slow.kndkit.test"'}}]},
    }
    node.api.create(cls)
    try:
        driver = node.start_driver()
        node.device_class = cls["metadata"]["name"]
        _wait(lambda: len(node.published()) == 2, "NICs published")
        claim, pod_uid = node.claim()
        node.prepare(claim)
        ns = node.pod_netns()
        pod = make_pod("slow", netns=f"/run/netns/{ns}", uid=pod_uid, namespace=node.namespace)
        with pytest.raises(NRIError, match="did not finish"):
            node.runtime.run_pod_sandbox(pod)
        # The attach finishes late; the driver gives the NIC back by itself.
        _wait(lambda: node.records()[1] == [], "late attach undone", timeout=20)
        assert _device(claim) in _links(node.host), driver.logs()
        assert "net1" not in _links(ns)
        assert "after the runtime gave up" in driver.logs()
        # The plugin is still connected: the next attempt works (and is late again).
        assert node.runtime.wait_plugins(1, timeout=10)
        node.unprepare(claim)
    finally:
        with contextlib.suppress(Exception):
            node.api.delete(cls)
