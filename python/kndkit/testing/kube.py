"""A real Kubernetes control plane and the scheduler's DRA allocator, for tests.

:class:`KubeCluster` runs etcd + kube-apiserver (built from the upstream Go
modules by :mod:`kndkit.testing.peers`) on loopback with generated
certificates, a static admin token (group ``system:masters``), RBAC
authorization and ``resource.k8s.io/v1``: ``.kubeconfig_admin``,
``.kubeconfig_for(rbac_manifest)``, ``.request(...)``, ``.apply(...)``,
``.create_node(name)``, ``.api_client(kubeconfig)``.

:class:`Allocator` runs the ``allocator`` CLI (around
``k8s.io/dynamic-resource-allocation/structured``):
``allocate(node, claims, pod=...)`` runs the scheduler's allocator and writes
the result into the claims' status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kndkit.testing import peers as _peers

log = logging.getLogger("kndkit.testing.kube")


ADMIN_USER = "kndkit-test-admin"
START_TIMEOUT_S = float(os.environ.get("KNDKIT_KUBE_START_TIMEOUT", "180"))

# Exit codes of the allocator CLI (kndkit/testing/peers/kube/cmd/allocator).
ALLOC_OK, ALLOC_FAILURE, ALLOC_BAD_INPUT, ALLOC_UNALLOCATED = 0, 1, 2, 3


class KubeAPIError(Exception):
    """A non-2xx answer from the apiserver, with its own Status message."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.body = body
        if isinstance(body, Mapping):
            self.reason = str(body.get("reason", ""))
            self.message = str(body.get("message", body))
        else:
            self.reason = ""
            self.message = str(body)
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {self.message}")


# --------------------------------------------------------------------------- build


def build_peers(force: bool = False) -> pathlib.Path:
    """Build the kube peers unless up to date (:func:`kndkit.testing.peers.ensure`).

    Returns the directory of ``kube-apiserver``, ``etcd`` and ``allocator``;
    ``force`` is accepted for compatibility and ignored (the stamps decide).
    """
    del force
    return _peers.ensure(("kube",))


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_pdeathsig(argv: Sequence[str]) -> list[str]:
    """``argv`` run under ``setpriv --pdeathsig TERM``: the child gets SIGTERM if pytest dies.

    Not ``preexec_fn`` + ``prctl``: that forces a plain ``fork()`` of this
    multi-threaded process, and once grpc's threads run here (the DRA tests) the
    fork handlers of grpc sometimes kill the child before it execs (seen about 1 in
    15 starts on a loaded machine). Without ``preexec_fn`` Python spawns with
    ``vfork``, which runs no fork handlers.
    """
    return ["setpriv", "--pdeathsig", "TERM", "--", *argv]


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def generate_certs(d: pathlib.Path) -> dict[str, pathlib.Path]:
    """A CA, a serving cert for 127.0.0.1/localhost, and a service-account key pair."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "7",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=kndkit-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    (d / "serving.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default.svc\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
        "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-sha256", "-days", "7", "-in", "apiserver.csr", "-CA", "ca.crt",
        "-CAkey", "ca.key", "-CAcreateserial", "-out", "apiserver.crt",
        "-extfile", "serving.ext",
        cwd=d,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    for key in ("ca.key", "apiserver.key", "sa.key"):
        (d / key).chmod(0o600)
    return {
        "ca": d / "ca.crt",
        "cert": d / "apiserver.crt",
        "key": d / "apiserver.key",
        "sa_key": d / "sa.key",
        "sa_pub": d / "sa.pub",
    }


def _tail(path: pathlib.Path, n: int = 12000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<{path}: {e}>"
    return data[-n:].decode(errors="replace")


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def stop(self, grace_s: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s, killing it", self.name, grace_s)
            self.popen.kill()
            self.popen.wait(10)


def _start(name: str, argv: Sequence[str], workdir: pathlib.Path) -> _Proc:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            with_pdeathsig(list(argv)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    return _Proc(name, popen, log_path)


# --------------------------------------------------------------------------- cluster


@dataclass
class KubeCluster:
    """A running etcd + kube-apiserver pair on loopback."""

    workdir: pathlib.Path
    url: str
    ca_file: pathlib.Path
    admin_token: str
    kubeconfig_admin: pathlib.Path
    version: dict[str, Any] = field(default_factory=dict)
    _procs: list[_Proc] = field(default_factory=list, repr=False)
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)
    _discovery: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict, repr=False)

    # ---- lifecycle

    @classmethod
    def start(
        cls,
        workdir: pathlib.Path,
        extra_args: Sequence[str] = (),
        *,
        bin_dir: pathlib.Path | None = None,
    ) -> KubeCluster:
        """Start etcd + kube-apiserver in ``workdir`` (binaries from ``bin_dir``,
        default :func:`build_peers`); wait until the apiserver is ready."""
        bins = bin_dir or build_peers()
        workdir.mkdir(parents=True, exist_ok=True)
        certs = generate_certs(workdir / "pki")
        admin_token = uuid.uuid4().hex
        tokens = workdir / "tokens.csv"
        tokens.write_text(f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)

        etcd_port, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
        url = f"https://127.0.0.1:{api_port}"
        cluster = cls(
            workdir=workdir,
            url=url,
            ca_file=certs["ca"],
            admin_token=admin_token,
            kubeconfig_admin=workdir / "kubeconfig-admin",
        )
        try:
            etcd = _start(
                "etcd",
                [
                    str(bins / "etcd"),
                    f"--data-dir={workdir / 'etcd-data'}",
                    f"--listen-client-url=http://127.0.0.1:{etcd_port}",
                    f"--listen-peer-url=http://127.0.0.1:{etcd_peer}",
                ],
                workdir,
            )
            cluster._procs.append(etcd)
            cluster._wait_etcd(etcd, etcd_port)

            api = _start(
                "kube-apiserver",
                [
                    str(bins / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    f"--cert-dir={workdir / 'apiserver-certs'}",
                    f"--tls-cert-file={certs['cert']}",
                    f"--tls-private-key-file={certs['key']}",
                    f"--token-auth-file={tokens}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={certs['sa_pub']}",
                    f"--service-account-signing-key-file={certs['sa_key']}",
                    "--authorization-mode=RBAC",
                    "--runtime-config=resource.k8s.io/v1=true",
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--endpoint-reconciler-type=none",
                    "--enable-priority-and-fairness=false",
                    "--profiling=false",
                    "--allow-privileged=true",
                    "--v=1",
                    *extra_args,
                ],
                workdir,
            )
            cluster._procs.append(api)
            cluster._wait_ready(api)
            cluster._write_kubeconfig(cluster.kubeconfig_admin, ADMIN_USER, admin_token)
        except BaseException:
            logs = cluster.logs()
            cluster.stop()
            raise RuntimeError(f"kube control plane failed to start; logs:\n{logs}") from None
        return cluster

    def _wait_etcd(self, proc: _Proc, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"etcd exited with {proc.popen.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"etcd not healthy after {START_TIMEOUT_S:.0f} s")

    def _wait_ready(self, proc: _Proc) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited with {proc.popen.returncode}")
            try:
                self.request("GET", "/readyz")
                # The bootstrap controller creates the default namespace after readyz.
                self.request("GET", "/api/v1/namespaces/default")
                self.version = self.request("GET", "/version")
                return
            except (KubeAPIError, OSError) as e:
                last = str(e)
            time.sleep(0.3)
        raise TimeoutError(f"kube-apiserver not ready after {START_TIMEOUT_S:.0f} s: {last}")

    def stop(self) -> None:
        # apiserver first, then its storage.
        for p in reversed(self._procs):
            with contextlib.suppress(Exception):
                p.stop()
        self._procs.clear()

    def logs(self, n: int = 12000) -> str:
        return "\n".join(
            f"===== {p.name} ({p.log_path}) =====\n{_tail(p.log_path, n)}" for p in self._procs
        )

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.popen.poll() is None for p in self._procs)

    # ---- HTTP

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """Call the apiserver as the admin (or with ``token``); return the decoded JSON."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                decoded: Any = json.loads(raw)
            except ValueError:
                decoded = raw.decode(errors="replace")
            raise KubeAPIError(e.code, method, path, decoded) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    # ---- discovery and generic object handling

    def _resources(self, api_version: str) -> dict[str, tuple[str, bool]]:
        """kind -> (plural resource, namespaced) for one group/version."""
        if api_version not in self._discovery:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            doc = self.request("GET", base)
            self._discovery[api_version] = {
                r["kind"]: (r["name"], bool(r["namespaced"]))
                for r in doc["resources"]
                if "/" not in r["name"]
            }
        return self._discovery[api_version]

    def path_for(self, obj: Mapping[str, Any], *, with_name: bool = False) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        resources = self._resources(api_version)
        if kind not in resources:
            raise KeyError(f"the apiserver does not serve kind {kind} in {api_version}")
        plural, namespaced = resources[kind]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        meta = obj.get("metadata", {})
        if namespaced:
            base += f"/namespaces/{meta.get('namespace') or 'default'}"
        path = f"{base}/{plural}"
        return f"{path}/{meta['name']}" if with_name else path

    def create(self, obj: Mapping[str, Any], *, token: str | None = None) -> Any:
        return self.request("POST", self.path_for(obj), obj, token=token)

    def get(self, obj: Mapping[str, Any], *, token: str | None = None) -> Any:
        return self.request("GET", self.path_for(obj, with_name=True), token=token)

    def delete(
        self, obj: Mapping[str, Any], *, missing_ok: bool = True, grace_period_s: int | None = None
    ) -> None:
        path = self.path_for(obj, with_name=True)
        if grace_period_s is not None:
            path += f"?gracePeriodSeconds={grace_period_s}"
        try:
            self.request("DELETE", path)
        except KubeAPIError as e:
            if not (missing_ok and e.status == 404):
                raise

    def apply(self, objs: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Any]:
        """Create each object, or replace it when it exists (admin)."""
        items = [objs] if isinstance(objs, Mapping) else list(objs)
        out = []
        for obj in items:
            try:
                out.append(self.create(obj))
            except KubeAPIError as e:
                if e.status != 409:
                    raise
                current = self.get(obj)
                new = json.loads(json.dumps(obj))
                new.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                    "resourceVersion"
                ]
                out.append(self.request("PUT", self.path_for(obj, with_name=True), new))
        return out

    def apply_manifest(
        self, manifest: str | os.PathLike[str] | Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Apply every document of a YAML file (or a list of objects); return the documents."""
        if isinstance(manifest, (str, os.PathLike)):
            docs = [d for d in yaml.safe_load_all(pathlib.Path(manifest).read_text()) if d]
        else:
            docs = [json.loads(json.dumps(d)) for d in manifest]
        namespaces = {
            d["metadata"]["namespace"] for d in docs if d.get("metadata", {}).get("namespace")
        }
        for ns in sorted(namespaces):
            self.ensure_namespace(ns)
        self.apply(docs)
        return docs

    # ---- convenience

    def ensure_namespace(self, name: str) -> None:
        """Create a namespace (and its default ServiceAccount, as no controller runs)."""
        for obj in (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": name},
            },
        ):
            try:
                self.create(obj)
            except KubeAPIError as e:
                if e.status != 409:
                    raise

    def create_node(
        self, name: str, labels: Mapping[str, str] | None = None, *, ready: bool = True
    ) -> dict[str, Any]:
        """Register a Node object (no kubelet behind it); ``ready`` sets a Ready condition."""
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            },
        }
        created: dict[str, Any] = self.create(node)
        if ready:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            created["status"] = {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "test node",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ]
            }
            created = self.request("PUT", f"/api/v1/nodes/{name}/status", created)
        return created

    def delete_node(self, name: str) -> None:
        self.delete({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

    def service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        expiration_s: int = 3600,
        pod: Mapping[str, Any] | None = None,
    ) -> str:
        """A token for a ServiceAccount from the TokenRequest API.

        With ``pod`` the token is bound to that Pod, and so (like a DaemonSet
        pod's projected token) carries the name of the Node the pod runs on.
        """
        spec: dict[str, Any] = {"expirationSeconds": expiration_s}
        if pod is not None:
            spec["boundObjectRef"] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            }
        tr = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(tr["status"]["token"])

    def create_agent_pod(self, namespace: str, service_account: str, node: str) -> dict[str, Any]:
        """A Pod object for the node agent, already bound to ``node`` (nothing runs it)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{service_account}-agent-{node}"[:63], "namespace": namespace},
            "spec": {
                "nodeName": node,
                "serviceAccountName": service_account,
                "containers": [{"name": "agent", "image": "kndkit.invalid/agent:test"}],
            },
        }
        try:
            created: dict[str, Any] = self.create(pod)
        except KubeAPIError as e:
            if e.status != 409:
                raise
            created = self.get(pod)
        return created

    def kubeconfig_for(
        self,
        rbac_manifest: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
        *,
        service_account: str | None = None,
        namespace: str | None = None,
        node: str | None = None,
    ) -> pathlib.Path:
        """Apply an RBAC manifest; return a kubeconfig for its ServiceAccount.

        With one ServiceAccount in the manifest it is the one used; otherwise name
        it with ``service_account`` (and ``namespace``). With ``node``, the token
        is bound to an agent Pod placed on that node (see create_agent_pod), as
        the driver's DaemonSet pod would get: "associated-node:" RBAC verbs then
        apply to it.
        """
        docs = self.apply_manifest(rbac_manifest)
        sas = [
            (d["metadata"].get("namespace") or "default", d["metadata"]["name"])
            for d in docs
            if d.get("kind") == "ServiceAccount"
        ]
        if service_account is None:
            if len(sas) != 1:
                raise ValueError(
                    f"{rbac_manifest}: {len(sas)} ServiceAccounts; name one with service_account="
                )
            namespace, service_account = sas[0]
        namespace = namespace or "default"
        pod = self.create_agent_pod(namespace, service_account, node) if node else None
        token = self.service_account_token(namespace, service_account, pod=pod)
        suffix = f"-{node}" if node else ""
        path = self.workdir / f"kubeconfig-{namespace}-{service_account}{suffix}"
        user = f"system:serviceaccount:{namespace}:{service_account}"
        self._write_kubeconfig(path, user, token)
        return path

    def token_from_kubeconfig(self, kubeconfig: str | os.PathLike[str]) -> str:
        doc = yaml.safe_load(pathlib.Path(kubeconfig).read_text())
        return str(doc["users"][0]["user"]["token"])

    def _write_kubeconfig(self, path: pathlib.Path, user: str, token: str) -> None:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kndkit-test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": "kndkit-test", "context": {"cluster": "kndkit-test", "user": user}}
            ],
            "current-context": "kndkit-test",
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)

    def api_client(self, kubeconfig: str | os.PathLike[str] | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for a kubeconfig (default: the admin's)."""
        from kubernetes import config as k8s_config  # noqa: PLC0415

        return k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig_admin)
        )


# --------------------------------------------------------------------------- allocator


@dataclass
class AllocatorResult:
    returncode: int
    json: dict[str, Any]
    stderr: str

    @property
    def allocated(self) -> bool:
        return self.returncode == ALLOC_OK and bool(self.json.get("allocated"))

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.json.get("results") or [])


@dataclass
class Allocator:
    """Runs the allocator CLI (the scheduler's DRA allocator) against a cluster."""

    kubeconfig: pathlib.Path | None
    binary: pathlib.Path = field(default_factory=lambda: build_peers() / "allocator")

    def _run(self, args: Sequence[str], stdin: str | None = None) -> AllocatorResult:
        proc = subprocess.run(
            [str(self.binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            data = {"error": proc.stdout, "kind": "unparsed-output"}
        log.debug("allocator %s -> %d %s", args, proc.returncode, proc.stderr.strip())
        return AllocatorResult(proc.returncode, data, proc.stderr)

    def allocate(
        self,
        node: str,
        claims: Iterable[str | Mapping[str, Any]],
        *,
        pod: tuple[str, str] | Mapping[str, Any] | None = None,
        dry_run: bool = False,
        features: Sequence[str] = (),
        kubeconfig: str | os.PathLike[str] | None = None,
    ) -> AllocatorResult:
        """Allocate claims (``"ns/name"`` or claim objects) for ``node`` and write status."""
        args = [f"--kubeconfig={kubeconfig or self.kubeconfig}", f"--node={node}"]
        for c in claims:
            if isinstance(c, Mapping):
                meta = c["metadata"]
                ref = f"{meta.get('namespace') or 'default'}/{meta['name']}"
            else:
                ref = c
            args.append(f"--claim={ref}")
        if pod is not None:
            if isinstance(pod, Mapping):
                name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
            else:
                name, uid = pod
            args += [f"--pod-name={name}", f"--pod-uid={uid}"]
        if dry_run:
            args.append("--dry-run")
        if features:
            args.append(f"--features={','.join(features)}")
        return self._run(args)

    def allocate_json(
        self, doc: Mapping[str, Any], *, node: str | None = None, features: Sequence[str] = ()
    ) -> AllocatorResult:
        """Allocate from a JSON document {node?, slices, classes, claims, allocatedClaims?}."""
        args = ["--from-json=-"]
        if node:
            args.append(f"--node={node}")
        if features:
            args.append(f"--features={','.join(features)}")
        return self._run(args, stdin=json.dumps(doc))
