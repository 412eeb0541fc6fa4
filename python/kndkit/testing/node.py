"""A simulated Kubernetes node for driver tests: real peers, real kernel, no kubelet.

:class:`SimulatedNode` puts together what a network driver meets on a real node:

* the **host**: a network namespace ``/run/netns/<node>-host`` that the driver
  treats as the node's root namespace (``--host-netns``); its "NICs" are veth
  pairs whose other ends live in a fabric namespace ``/run/netns/<node>-fabric``;
* the **control plane**: a real kube-apiserver + etcd (:class:`Cluster`), a Node
  object, a DeviceClass per driver, and the scheduler's real DRA allocator,
  whose allocation and ``reservedFor`` are written back into the claims;
* the **kubelet's DRA side**: the kubelet harness (plugin registration + the
  kubelet's DRA gRPC clients);
* the **container runtime's NRI side**: containerd's NRI adaptation (the NRI
  harness), which relays RunPodSandbox/CreateContainer/... to the driver's NRI
  plugin; each pod is a network namespace under ``/run/netns`` given to the
  runtime as the PodSandbox's ``linux.namespaces`` network path.

The driver runs as a subprocess (``python -m kndkit run <driver> ...``, see
:meth:`SimulatedNode.start_driver`). Everything is removed by
:meth:`SimulatedNode.stop` (processes, namespaces, API objects, directories),
also after errors. Needs root (network namespaces) and the Go peers, which
:func:`kndkit.testing.peers.ensure` builds on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from kndkit import netlink
from kndkit._native import NetNs
from kndkit.errors import InvalidArgument, KndError
from kndkit.testing import peers as _peers
from kndkit.testing.kube import Allocator, KubeAPIError, KubeCluster, with_pdeathsig
from kndkit.testing.kubelet import KubeletHarness
from kndkit.testing.nri import VERSIONS, NRIRuntime, make_container, make_pod

__all__ = [
    "ClaimSpec",
    "Cluster",
    "DriverProcess",
    "SimPod",
    "SimulatedNode",
    "SimulationError",
]

log = logging.getLogger("kndkit.testing.node")

NETNS_DIR = Path("/run/netns")
RESOURCE = "/apis/resource.k8s.io/v1"
RT_TABLE_LOCAL, RTPROT_KERNEL, RTPROT_RA, NUD_PERMANENT = 255, 2, 9, 0x80
NAMESPACE = "default"
DRIVER_NAMESPACE = "kndkit-sim"
DRIVER_ACCOUNT = "kndkit-driver"
READY_TIMEOUT_S = float(os.environ.get("KNDKIT_SIM_READY_TIMEOUT", "90"))

_counter = itertools.count()
# ``python -m kndkit`` where the package has a __main__, else the CLI module itself.
_ENTRY = "kndkit" if importlib.util.find_spec("kndkit.__main__") else "kndkit.cli"


class SimulationError(KndError):
    """A step of the simulation failed (allocation, a peer call, a driver that did not start)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SimulationError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def driver_rbac(
    namespace: str = DRIVER_NAMESPACE, account: str = DRIVER_ACCOUNT
) -> list[dict[str, Any]]:
    """ServiceAccount + ClusterRole(Binding) with what a network driver needs.

    Like ``deploy/rbac.yaml``, but not tied to one driver name: status writes
    through the ``resourceclaims/driver`` subresource are allowed for claims
    allocated on the account's node (``associated-node:``) for every driver.
    """
    role = f"{namespace}-{account}"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [
                {
                    "apiGroups": ["resource.k8s.io"],
                    "resources": ["resourceslices"],
                    "verbs": ["create", "get", "list", "watch", "update", "patch", "delete"],
                },
                {
                    "apiGroups": ["resource.k8s.io"],
                    "resources": ["resourceclaims"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["resource.k8s.io"],
                    "resources": ["resourceclaims/status"],
                    "verbs": ["patch", "update"],
                },
                {
                    "apiGroups": ["resource.k8s.io"],
                    "resources": ["resourceclaims/driver"],
                    "verbs": ["associated-node:patch", "associated-node:update"],
                },
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
                {
                    "apiGroups": ["", "events.k8s.io"],
                    "resources": ["events"],
                    "verbs": ["create", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """kube-apiserver + etcd and the scheduler's allocator, shareable by several nodes.

    ``admin`` is the :class:`~kndkit.testing.kube.KubeCluster` (admin API
    helpers: ``request``, ``create``, ``get``, ``apply``...); ``allocator`` the
    :class:`~kndkit.testing.kube.Allocator` acting as the admin.
    """

    admin: KubeCluster
    allocator: Allocator
    workdir: Path
    _own_dir: bool = False

    @classmethod
    def start(cls, workdir: Path | None = None) -> Cluster:
        bins = _peers.ensure(("kube",))
        own = workdir is None
        wd = Path(tempfile.mkdtemp(prefix="knd-kube-", dir="/tmp")) if workdir is None else workdir
        try:
            api = KubeCluster.start(wd, bin_dir=bins)
        except BaseException:
            if own:
                shutil.rmtree(wd, ignore_errors=True)
            raise
        return cls(api, Allocator(api.kubeconfig_admin, bins / "allocator"), wd, own)

    @property
    def url(self) -> str:
        return self.admin.url

    def stop(self) -> None:
        self.admin.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- pods and claims


@dataclass(frozen=True)
class ClaimSpec:
    """A claim to create with a pod (:meth:`SimulatedNode.new_pod`)."""

    driver: str
    count: int = 1
    config: Mapping[str, Any] | None = None
    selector: str | None = None
    name: str | None = None


@dataclass
class SimPod:
    """A pod of the simulated node: an API Pod object, a netns, its NRI PodSandbox."""

    name: str
    namespace: str
    uid: str
    netns: Path | None  # None: host network
    nri: dict[str, Any]
    claims: list[dict[str, Any]] = field(default_factory=list)
    containers: list[dict[str, Any]] = field(default_factory=list)
    running: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


# --------------------------------------------------------------------------- driver process


@dataclass
class DriverProcess:
    """A driver started by :meth:`SimulatedNode.start_driver` (``kndkit run``)."""

    spec: str
    argv: list[str]
    log_path: Path
    node: SimulatedNode
    metrics_port: int | None
    name: str = ""  # the DRA driver name, learnt when it registers
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else -1

    @property
    def metrics_url(self) -> str | None:
        return None if not self.metrics_port else f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _spawn(self) -> None:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                with_pdeathsig(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def logs(self, n: int = 20000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError as e:
            return f"<{self.log_path}: {e}>"

    def metrics(self) -> str:
        """The ``/metrics`` text (empty when metrics are off)."""
        if not self.metrics_url:
            return ""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        """SIGKILL (a crash); waits for the exit."""
        if self.running and self.popen is not None:
            self.popen.kill()
            self.popen.wait(30)

    def terminate(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("driver %s did not stop in %.0f s; killing it", self.spec, grace_s)
                self.popen.kill()
                self.popen.wait(30)
        return self.popen.returncode

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start again with the same arguments;
        waits until it is registered and its NRI plugin synchronized again."""
        if kill:
            self.kill()
        else:
            self.terminate()
        self.node._launch(self)


# --------------------------------------------------------------------------- node


@dataclass
class SimulatedNode:
    """A node with a host netns, veth NICs, the kubelet and NRI peers, and a cluster.

    Use :meth:`start` (a context manager: ``with SimulatedNode.start() as node:``).
    """

    node_name: str
    workdir: Path
    cluster: Cluster
    kubelet: KubeletHarness
    runtime: NRIRuntime
    host_netns: str
    fabric_netns: str
    kubeconfig: Path
    _own_cluster: bool = False
    _own_dir: bool = False
    _nics: dict[str, str] = field(default_factory=dict)  # host name -> fabric peer
    _pods: dict[str, SimPod] = field(default_factory=dict)
    _drivers: list[DriverProcess] = field(default_factory=list)
    _classes: dict[str, str] = field(default_factory=dict)  # driver -> DeviceClass
    _host_ns: NetNs | None = None
    _stopped: bool = False

    # ---- lifecycle

    @classmethod
    def start(
        cls,
        workdir: Path | None = None,
        *,
        node_name: str = "sim-node",
        nics: int = 2,
        nri_version: str = "v0.12",
        cluster: Cluster | None = None,
    ) -> SimulatedNode:
        """Start everything; ``nics`` veth NICs ``eth1``.. are added to the host netns.

        ``cluster`` shares a running control plane (it is left running at
        :meth:`stop`); by default the node starts its own.
        """
        if nri_version not in VERSIONS:
            raise InvalidArgument(
                f"nri_version {nri_version!r} is not one of {', '.join(VERSIONS)}"
            )
        if os.geteuid() != 0:
            raise SimulationError("SimulatedNode needs root (it creates network namespaces)")
        host, fabric = f"{node_name}-host", f"{node_name}-fabric"
        for ns in (host, fabric):
            if (NETNS_DIR / ns).exists():
                raise SimulationError(
                    f"network namespace {ns} exists already (another SimulatedNode named "
                    f"{node_name!r}, or a leftover: ip netns del {ns})"
                )
        bins = _peers.ensure(("kube", "kubelet", "nri"))
        own_dir = workdir is None
        wd = Path(tempfile.mkdtemp(prefix="knd-sim-", dir="/tmp")) if workdir is None else workdir
        wd.mkdir(parents=True, exist_ok=True)
        cleanup: list[Any] = []
        try:
            own_cluster = cluster is None
            cl = cluster or Cluster.start(wd / "kube")
            if own_cluster:
                cleanup.append(cl.stop)
            for ns in (host, fabric):
                _ip("netns", "add", ns)
                cleanup.append(lambda ns=ns: _ip("netns", "del", ns, check=False))
                _ip("-n", ns, "link", "set", "lo", "up")
            cl.admin.create_node(node_name)
            cleanup.append(lambda: cl.admin.delete_node(node_name))
            kubeconfig = cl.admin.kubeconfig_for(driver_rbac(), node=node_name)
            kubelet = KubeletHarness.start(bins, node_name=node_name)
            cleanup.append(kubelet.close)
            (wd / "nri").mkdir(exist_ok=True)
            runtime = NRIRuntime(
                bins / f"nri-harness-{VERSIONS[nri_version]}",
                nri_version,
                wd / "nri",
                request_timeout=10.0,
                registration_timeout=10.0,
            )
        except BaseException:
            for fn in reversed(cleanup):
                with contextlib.suppress(Exception):
                    fn()
            if own_dir:
                shutil.rmtree(wd, ignore_errors=True)
            raise
        node = cls(
            node_name=node_name,
            workdir=wd,
            cluster=cl,
            kubelet=kubelet,
            runtime=runtime,
            host_netns=str(NETNS_DIR / host),
            fabric_netns=str(NETNS_DIR / fabric),
            kubeconfig=kubeconfig,
            _own_cluster=own_cluster,
            _own_dir=own_dir,
        )
        try:
            for i in range(nics):
                node.add_nic(f"eth{i + 1}")
        except BaseException:
            node.stop()
            raise
        log.info("simulated node %s up in %s", node_name, wd)
        return node

    def __enter__(self) -> SimulatedNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop drivers and peers; delete pods' and the node's namespaces, API objects, dirs.

        Idempotent; every part is attempted even when an earlier one fails.
        """
        if self._stopped:
            return
        self._stopped = True
        for d in reversed(self._drivers):
            with contextlib.suppress(Exception):
                d.terminate()
        for fn in (self.runtime.close, self.kubelet.close):
            with contextlib.suppress(Exception):
                fn()
        for pod in list(self._pods.values()):
            with contextlib.suppress(Exception):
                self._delete_pod_objects(pod)
        api = self.cluster.admin
        with contextlib.suppress(Exception):
            for s in api.request(
                "GET", f"{RESOURCE}/resourceslices?fieldSelector=spec.nodeName={self.node_name}"
            )["items"]:
                api.delete(s)
        with contextlib.suppress(Exception):
            api.delete_node(self.node_name)
        for ns in (self.host_netns, self.fabric_netns):
            _ip("netns", "del", Path(ns).name, check=False)
        self._host_ns = None
        if self._own_cluster:
            with contextlib.suppress(Exception):
                self.cluster.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- properties of the contract

    @property
    def host_ns(self) -> NetNs:
        if self._host_ns is None:
            self._host_ns = NetNs.open(self.host_netns)
        return self._host_ns

    @property
    def registry_dir(self) -> Path:
        return self.kubelet.registry_dir

    @property
    def plugin_root(self) -> Path:
        return self.kubelet.plugins_dir

    @property
    def nri_socket(self) -> Path:
        return self.runtime.socket

    @property
    def api(self) -> KubeCluster:
        return self.cluster.admin

    # ---- NICs

    def add_nic(
        self,
        name: str,
        *,
        addresses: Iterable[str] = (),
        mtu: int = 1500,
        routes: Iterable[str | Mapping[str, str]] = (),
    ) -> str:
        """A veth NIC ``name`` in the host netns (its peer in the fabric netns); up.

        ``routes``: ``"DST via GW"`` strings (``ip route`` syntax after
        ``add``) or ``{"dst", "via"}`` mappings, added through this NIC.
        """
        if not name or len(name) > 15 or "/" in name:
            raise InvalidArgument(f"NIC name {name!r} is not a valid interface name")
        peer = f"f{len(self._nics)}-{name}"[:15]
        host, fabric = Path(self.host_netns).name, Path(self.fabric_netns).name
        _ip("-n", host, "link", "add", name, "mtu", str(mtu), "type", "veth",
            "peer", "name", peer, "netns", fabric)  # fmt: skip
        try:
            _ip("-n", fabric, "link", "set", peer, "mtu", str(mtu), "up")
            for a in addresses:
                _ip("-n", host, "addr", "add", a, "dev", name)
            _ip("-n", host, "link", "set", name, "up")
            for r in routes:
                if isinstance(r, Mapping):
                    words = [r["dst"], *(["via", r["via"]] if r.get("via") else [])]
                else:
                    words = r.split()
                _ip("-n", host, "route", "add", *words, "dev", name)
        except BaseException:
            _ip("-n", host, "link", "del", name, check=False)
            raise
        self._nics[name] = peer
        return name

    # ---- drivers

    def start_driver(
        self,
        driver: str,
        *,
        params: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        metrics: bool = True,
        driver_name: str | None = None,
        timeout: float = READY_TIMEOUT_S,
    ) -> DriverProcess:
        """``python -m kndkit run <driver>`` against this node; waits until it is ready.

        Ready: registered with the kubelet harness and its NRI plugin
        synchronized with the runtime. ``params`` become ``--set k=<JSON of v>``.
        ``driver_name`` (the DRA name) is learnt from the registration when not
        given. A DeviceClass selecting the
        driver's devices is created (:meth:`device_class`).
        """
        state_dir = self.workdir / f"state-{len(self._drivers)}"
        port = _free_port() if metrics else -1
        argv = [
            sys.executable, "-m", _ENTRY, "run", driver,
            "--host-netns", self.host_netns,
            "--node-name", self.node_name,
            "--kubeconfig", str(self.kubeconfig),
            "--registry-dir", str(self.registry_dir),
            "--plugin-dir", str(self.plugin_root / f"d{len(self._drivers)}"),
            "--state-dir", str(state_dir),
            "--nri-socket", str(self.nri_socket),
            "--metrics-port", str(port),
        ]  # fmt: skip
        for k, v in (params or {}).items():
            argv += ["--set", f"{k}={json.dumps(v)}"]
        argv += list(extra_args)
        proc = DriverProcess(
            spec=driver,
            argv=argv,
            log_path=self.workdir / f"driver-{len(self._drivers)}.log",
            node=self,
            metrics_port=port if port > 0 else None,
            name=driver_name or "",
        )
        self._drivers.append(proc)
        self._launch(proc, timeout=timeout)
        return proc

    def _launch(self, proc: DriverProcess, *, timeout: float = READY_TIMEOUT_S) -> None:
        kl_mark = len(self.kubelet.events)
        with self.runtime._events_lock:
            nri_mark = len(self.runtime.events)
        proc._spawn()
        deadline = time.monotonic() + timeout
        # Registered with the kubelet (a "registered" event after the start).
        while True:
            regs = [
                e
                for e in self.kubelet.events[kl_mark:]
                if e.get("event") == "registered"
                and (not proc.name or e.get("driver") == proc.name)
            ]
            if regs:
                proc.name = str(regs[0]["driver"])
                break
            self._check_alive(proc, deadline, "registered with the kubelet")
            time.sleep(0.1)
        # Its NRI plugin synchronized (plugin name: "<index>-<first label>...").
        first_label = proc.name.split(".")[0]
        while True:
            with self.runtime._events_lock:
                evs = list(self.runtime.events[nri_mark:])
            if any(
                e.get("event") == "plugin_synchronized"
                and str(e.get("name", "")).split("-", 1)[-1].startswith(first_label)
                for e in evs
            ):
                break
            self._check_alive(proc, deadline, "its NRI plugin synchronized")
            time.sleep(0.1)
        self.device_class(proc.name)

    def _check_alive(self, proc: DriverProcess, deadline: float, what: str) -> None:
        if proc.popen is not None and proc.popen.poll() is not None:
            raise SimulationError(
                f"driver {proc.spec} exited with {proc.popen.returncode} before it got "
                f"{what}; log:\n{proc.logs(8000)}"
            )
        if time.monotonic() > deadline:
            raise SimulationError(
                f"driver {proc.spec} did not manage {what} in time; log:\n{proc.logs(8000)}"
            )

    def device_class(self, driver_name: str) -> str:
        """The DeviceClass selecting ``driver_name``'s devices (created on first use)."""
        if driver_name in self._classes:
            return self._classes[driver_name]
        name = driver_name
        self.api.apply(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "DeviceClass",
                "metadata": {"name": name},
                "spec": {
                    "selectors": [{"cel": {"expression": f'device.driver == "{driver_name}"'}}]
                },
            }
        )
        self._classes[driver_name] = name
        return name

    # ---- API views

    def slices(self, driver: str | None = None) -> list[dict[str, Any]]:
        """ResourceSlices of this node (of one driver)."""
        sel = f"spec.nodeName={self.node_name}" + (f",spec.driver={driver}" if driver else "")
        items: list[dict[str, Any]] = self.api.request(
            "GET", f"{RESOURCE}/resourceslices?fieldSelector={sel}"
        )["items"]
        return items

    def published_devices(self, driver: str | None = None) -> list[str]:
        return sorted(d["name"] for s in self.slices(driver) for d in s["spec"].get("devices", []))

    def wait_devices(
        self, driver: str | None = None, *, at_least: int = 1, timeout: float = 60.0
    ) -> list[str]:
        """Wait until at least ``at_least`` devices are published; return their names."""
        deadline = time.monotonic() + timeout
        while True:
            names = self.published_devices(driver)
            if len(names) >= at_least:
                return names
            if time.monotonic() > deadline:
                raise SimulationError(
                    f"{len(names)} devices published on {self.node_name} after {timeout:.0f} s"
                )
            time.sleep(0.2)

    # ---- claims and pods

    def create_claim(
        self,
        name: str,
        *,
        driver: str,
        count: int = 1,
        config: Mapping[str, Any] | None = None,
        selector: str | None = None,
        namespace: str = NAMESPACE,
    ) -> dict[str, Any]:
        """A ResourceClaim (request ``nic``) for ``count`` devices of ``driver``.

        ``config`` becomes the opaque parameters for the driver; ``selector`` a
        CEL expression the devices must match.
        """
        exactly: dict[str, Any] = {
            "deviceClassName": self.device_class(driver),
            "allocationMode": "ExactCount",
            "count": count,
        }
        if selector:
            exactly["selectors"] = [{"cel": {"expression": selector}}]
        spec: dict[str, Any] = {"devices": {"requests": [{"name": "nic", "exactly": exactly}]}}
        if config is not None:
            spec["devices"]["config"] = [
                {"requests": ["nic"], "opaque": {"driver": driver, "parameters": dict(config)}}
            ]
        obj = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        created: dict[str, Any] = self.api.create(obj)
        return created

    def new_pod(
        self,
        name: str,
        *,
        claims: Sequence[ClaimSpec | str | Mapping[str, Any]] = (),
        host_network: bool = False,
        namespace: str = NAMESPACE,
    ) -> SimPod:
        """A Pod object bound to this node with its claims, and a netns for it.

        ``claims``: names of existing claims, claim objects, or
        :class:`ClaimSpec` (created now, named ``<pod>-<i>`` unless named).
        """
        if name in self._pods:
            raise InvalidArgument(f"pod {name!r} exists on {self.node_name} already")
        claim_objs: list[dict[str, Any]] = []
        for i, c in enumerate(claims):
            if isinstance(c, ClaimSpec):
                claim_objs.append(
                    self.create_claim(
                        c.name or f"{name}-{i}",
                        driver=c.driver,
                        count=c.count,
                        config=c.config,
                        selector=c.selector,
                        namespace=namespace,
                    )
                )
            elif isinstance(c, str):
                claim_objs.append(
                    self.api.get(
                        {
                            "apiVersion": "resource.k8s.io/v1",
                            "kind": "ResourceClaim",
                            "metadata": {"name": c, "namespace": namespace},
                        }
                    )
                )
            else:
                claim_objs.append(dict(c))
        pod_obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": self.node_name,
                "hostNetwork": host_network,
                "containers": [{"name": "c", "image": "kndkit.invalid/sim:test"}],
                "resourceClaims": [
                    {"name": f"c{i}", "resourceClaimName": c["metadata"]["name"]}
                    for i, c in enumerate(claim_objs)
                ],
            },
        }
        self.api.ensure_namespace(namespace)  # and its default ServiceAccount
        created = self.api.create(pod_obj)
        uid = str(created["metadata"]["uid"])
        netns: Path | None = None
        try:
            if not host_network:
                ns_name = f"{self.node_name}-pod-{name}-{next(_counter)}"
                _ip("netns", "add", ns_name)
                netns = NETNS_DIR / ns_name
                _ip("-n", ns_name, "link", "set", "lo", "up")
        except BaseException:
            with contextlib.suppress(Exception):
                self.api.delete(pod_obj, grace_period_s=0)
            raise
        nri_pod = make_pod(
            name, netns=netns, namespace=namespace, uid=uid, pod_id=f"sb-{uuid.uuid4().hex[:12]}"
        )
        pod = SimPod(name, namespace, uid, netns, nri_pod, claim_objs)
        self._pods[name] = pod
        return pod

    def _refresh_claims(self, pod: SimPod) -> None:
        pod.claims = [self.api.get(c) for c in pod.claims]

    def schedule(self, pod: SimPod) -> None:
        """Allocate the pod's claims with the scheduler's allocator (writes allocation
        and reservedFor into the claims)."""
        if not pod.claims:
            return
        res = self.cluster.allocator.allocate(self.node_name, pod.claims, pod=(pod.name, pod.uid))
        if not res.allocated:
            raise SimulationError(
                f"allocating the claims of pod {pod.ref} on {self.node_name} failed "
                f"(exit {res.returncode}): {json.dumps(res.json)} {res.stderr.strip()[-2000:]}"
            )
        self._refresh_claims(pod)

    def _claims_by_driver(self, pod: SimPod) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for c in pod.claims:
            results = ((c.get("status") or {}).get("allocation") or {}).get("devices", {})
            for r in results.get("results") or []:
                lst = out.setdefault(str(r["driver"]), [])
                if c not in lst:
                    lst.append(c)
        return out

    def prepare(self, pod: SimPod) -> dict[str, Any]:
        """NodePrepareResources (through the kubelet harness) per driver of the pod's claims.

        Returns ``{driver: response}``; raises :class:`SimulationError` when a
        claim reports an error.
        """
        out: dict[str, Any] = {}
        for driver, claims in self._claims_by_driver(pod).items():
            resp = self.kubelet.prepare(driver, claims)["response"]
            out[driver] = resp
            errors = {
                uid: r["error"] for uid, r in (resp.get("claims") or {}).items() if r.get("error")
            }
            if errors:
                raise SimulationError(f"prepare of pod {pod.ref} failed for {driver}: {errors}")
        return out

    def unprepare(self, pod: SimPod) -> dict[str, Any]:
        """NodeUnprepareResources per driver; ``{driver: response}``."""
        out: dict[str, Any] = {}
        for driver, claims in self._claims_by_driver(pod).items():
            resp = self.kubelet.unprepare(driver, claims)["response"]
            out[driver] = resp
            errors = {
                uid: r["error"] for uid, r in (resp.get("claims") or {}).items() if r.get("error")
            }
            if errors:
                raise SimulationError(f"unprepare of pod {pod.ref} failed for {driver}: {errors}")
        return out

    def _sync_state(self) -> None:
        pods = [p.nri for p in self._pods.values() if p.running]
        ctrs = [c for p in self._pods.values() if p.running for c in p.containers]
        self.runtime.set_state(pods, ctrs)

    def run_pod(self, pod: SimPod) -> None:
        """RunPodSandbox through the NRI runtime."""
        self.runtime.run_pod_sandbox(pod.nri)
        pod.running = True
        self._sync_state()

    def create_container(self, pod: SimPod, name: str = "c") -> dict[str, Any]:
        """CreateContainer; returns the runtime's merged response (``adjust``...)."""
        ctr = make_container(name, pod.nri)
        resp = self.runtime.create_container(pod.nri, ctr)
        pod.containers.append(ctr)
        self._sync_state()
        return resp

    def stop_pod(self, pod: SimPod) -> None:
        """StopPodSandbox through the NRI runtime."""
        self.runtime.stop_pod_sandbox(pod.nri)
        pod.running = False
        self._sync_state()

    def remove_pod(self, pod: SimPod) -> None:
        """RemovePodSandbox, then the pod's netns is deleted."""
        self.runtime.remove_pod_sandbox(pod.nri)
        pod.running = False
        pod.containers.clear()
        self._sync_state()
        if pod.netns is not None:
            _ip("netns", "del", pod.netns.name, check=False)

    def start_pod(self, pod: SimPod) -> None:
        """schedule + prepare + run_pod."""
        self.schedule(pod)
        self.prepare(pod)
        self.run_pod(pod)

    def delete_pod(self, pod: SimPod) -> None:
        """stop + remove + unprepare, then the Pod and its claims' objects are deleted."""
        self.stop_pod(pod)
        self.remove_pod(pod)
        self.unprepare(pod)
        self._delete_pod_objects(pod)

    def _delete_pod_objects(self, pod: SimPod) -> None:
        api = self.api
        for c in pod.claims:
            # The allocation's finalizer goes first (the scheduler's controller
            # would remove it). GET + PUT: kube-apiserver 1.37.2 refuses every
            # PATCH of a claim with opaque configuration (tests/peers/README.md).
            path = api.path_for(c, with_name=True)
            for _ in range(5):
                try:
                    cur = api.request("GET", path)
                    if not cur["metadata"].get("finalizers"):
                        break
                    cur["metadata"]["finalizers"] = []
                    api.request("PUT", path, cur)
                    break
                except KubeAPIError as e:
                    if e.status == 404:
                        break
                    if e.status != 409:
                        raise
            with contextlib.suppress(KubeAPIError):
                api.delete(c, grace_period_s=0)
        with contextlib.suppress(KubeAPIError):
            api.delete(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod.name, "namespace": pod.namespace},
                },
                grace_period_s=0,
            )
        if pod.netns is not None:
            _ip("netns", "del", pod.netns.name, check=False)
        self._pods.pop(pod.name, None)

    # ---- views of the kernel

    def host_links(self) -> list[netlink.LinkRecord]:
        return netlink.dump_links(self.host_ns)

    def pod_links(self, pod: SimPod) -> list[netlink.LinkRecord]:
        if pod.netns is None:
            return []
        return netlink.dump_links(NetNs.open(str(pod.netns)))

    def snapshot(self) -> dict[str, Any]:
        """Host links, addresses, routes, rules and permanent neighbours, comparable before/after.

        Links by name with ifindex, kind, MAC, MTU, up, master, alias; addresses
        but IPv6 link-local ones; routes of every table but ``local`` that the
        kernel did not derive itself (not proto kernel/ra).
        """
        ns = self.host_ns
        links = netlink.dump_links(ns)
        names = {lk["ifindex"]: lk["name"] for lk in links}
        return {
            "links": sorted(
                (
                    {
                        k: lk[k]
                        for k in ("name", "ifindex", "kind", "mac", "mtu", "up", "master", "alias")
                    }
                    for lk in links
                ),
                key=lambda d: str(d["name"]),
            ),
            "addresses": sorted(
                f"{names.get(a['ifindex'], a['ifindex'])} {a['cidr']}"
                for a in netlink.dump_addresses(ns)
                if not a["address"].startswith("fe80:")
            ),
            "routes": sorted(
                json.dumps(
                    {**r, "oif": names.get(r["oif"], r["oif"]) if r["oif"] else None},
                    sort_keys=True,
                )
                for r in netlink.dump_routes(ns)
                # What the kernel derives from addresses and link state (proto
                # kernel/ra, the local table) follows from the rest; IPv6
                # autoconfiguration adds those asynchronously.
                if r["table"] != RT_TABLE_LOCAL and r["protocol"] not in (RTPROT_KERNEL, RTPROT_RA)
            ),
            "rules": sorted(json.dumps(dict(r), sort_keys=True) for r in netlink.dump_rules(ns)),
            "neighbours": sorted(
                f"{names.get(n['ifindex'], n['ifindex'])} {n['address']} {n['lladdr']}"
                for n in netlink.dump_neighbours(ns)
                if n["state"] & NUD_PERMANENT
            ),
        }

    def pods(self) -> list[SimPod]:
        return list(self._pods.values())

    @property
    def drivers(self) -> list[DriverProcess]:
        """Drivers started on this node, oldest first."""
        return list(self._drivers)
