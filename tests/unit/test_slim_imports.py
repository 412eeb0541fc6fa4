"""kndkit.k8s._slim: the driver loads only the parts of the Kubernetes client it uses.

Import checks run in fresh interpreters (this test process may have imported
``kubernetes`` already, which turns the placeholders off by design). The narrow
``CoreV1Api`` is checked against the real API server peer.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import uuid
from typing import Any

import pydantic
import pytest
from peers.kube_fixtures import KubeCluster

from kndkit.k8s import _slim
from kndkit.k8s.client import new_api_client

K8S_DIR = pathlib.Path(_slim.__file__).parent

# Sub-packages of the official distribution kndkit's daemon must not load.
UNWANTED = (
    "kubernetes.client",  # the synchronous client
    "kubernetes.config",
    "kubernetes.dynamic",
    "kubernetes.stream",
    "kubernetes.watch",
    "kubernetes.utils",
    "kubernetes.informer",
    "kubernetes.leaderelection",
    "kubernetes.aio.dynamic",
    "kubernetes.aio.stream",
    "kubernetes.aio.leaderelection",
    "kubernetes.aio.client.api.core_v1_api",
    "requests",
    "oauthlib",
)


def run_py(code: str, *, slim: bool = True) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON value, returned."""
    env = {**os.environ, "KNDKIT_K8S_SLIM": "1" if slim else "0"}
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


LOADED = """
import json, sys
import kndkit.driver, kndkit.runner
unwanted = {unwanted!r}
def hit(m):
    return any(m == u or m.startswith(u + ".") for u in unwanted)
print(json.dumps({{
    "loaded": sorted(m for m in sys.modules if hit(m)),
    "placeholder": getattr(sys.modules["kubernetes"], "__kndkit_placeholder__", False),
}}))
"""


def test_driver_import_skips_the_sync_client_and_core_v1() -> None:
    got = run_py(LOADED.format(unwanted=UNWANTED))
    assert got == {"loaded": [], "placeholder": True}


def test_turned_off_the_official_packages_load_as_they_are() -> None:
    # The same check with KNDKIT_K8S_SLIM=0 finds them: the check above can fail.
    got = run_py(LOADED.format(unwanted=UNWANTED), slim=False)
    assert got["placeholder"] is False
    assert "kubernetes.client" in got["loaded"]
    assert "kubernetes.aio.dynamic" in got["loaded"]


def used_names() -> dict[str, set[str]]:
    """Attributes kndkit's k8s modules read from the client modules they import."""
    aliases = {"k8s": "client", "k8s_config": "config", "k8s_watch": "watch"}
    names: dict[str, set[str]] = {v: set() for v in aliases.values()}
    froms: set[tuple[str, str]] = set()
    for path in K8S_DIR.glob("*.py"):
        text = path.read_text()
        for alias, mod in aliases.items():
            names[mod] |= set(re.findall(rf"(?<![\w.]){alias}\.([A-Za-z_]\w*)", text))
        for mod, what in re.findall(
            r"^from (kubernetes\.aio[\w.]*) import \(?([\w, ]+)", text, re.M
        ):
            for w in what.split(","):
                froms.add((mod, w.split(" as ")[0].strip()))
    names["from"] = {f"{m}:{n}" for m, n in froms if n}
    return names


RESOLVE = """
import importlib, json
import kndkit.k8s
from kndkit.k8s._slim import client as slim_client, REPLACED
names = {names!r}
out = {{}}
mods = {{"client": slim_client, "config": importlib.import_module("kubernetes.aio.config"),
        "watch": importlib.import_module("kubernetes.aio.watch")}}
real_client = importlib.import_module("kubernetes.aio.client")
for kind, attrs in names.items():
    for a in sorted(attrs):
        if kind == "from":
            m, n = a.split(":")
            obj = getattr(importlib.import_module(m), n)
        else:
            obj = getattr(mods[kind], a)
            if kind == "client" and a not in REPLACED:
                assert obj is getattr(real_client, a), a
        out[kind + "." + a] = [getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)]
print(json.dumps(out))
"""


def test_every_client_name_kndkit_uses_resolves_to_the_official_object() -> None:
    names = used_names()
    assert {"ApiClient", "ResourceV1Api", "CoreV1Api", "EventsV1Api"} <= names["client"]
    assert "Watch" in names["watch"]
    code = RESOLVE.format(names={k: sorted(v) for k, v in names.items()})
    slim, full = run_py(code), run_py(code, slim=False)
    assert slim.keys() == full.keys()
    for key, where in full.items():
        if key.removeprefix("client.") in _slim.REPLACED:
            assert slim[key] == ["kndkit.k8s._slim", key.removeprefix("client.")]
        else:
            assert slim[key] == where, key


def test_placeholder_packages_behave_like_the_real_ones() -> None:
    got = run_py(
        """
import importlib.metadata, json
import kndkit.k8s
import kubernetes
lazy = kubernetes.config.__name__           # attribute access imports the sub-package
from kubernetes import client as sync       # from-import of a sub-package
print(json.dumps({
    "version_ok": kubernetes.__version__ == importlib.metadata.version("kubernetes"),
    "lazy": lazy, "sync": sync.__name__,
    "aio_is_attr": kubernetes.aio is importlib.import_module("kubernetes.aio"),
    "dir": "config" in dir(kubernetes),
}))
"""
    )
    assert got == {
        "version_ok": True,
        "lazy": "kubernetes.config",
        "sync": "kubernetes.client",
        "aio_is_attr": True,
        "dir": True,
    }
    with pytest.raises(AssertionError, match="no attribute 'nope'"):
        run_py("import kndkit.k8s, kubernetes; kubernetes.nope")


def test_nothing_changed_when_kubernetes_was_imported_first() -> None:
    got = run_py(
        """
import json, sys
import kubernetes
import kndkit.k8s._slim as s
print(json.dumps([s.install(), getattr(kubernetes, "__kndkit_placeholder__", False),
                  "kubernetes.client" in sys.modules]))
"""
    )
    assert got == [False, False, True]


# ----------------------------------------------------------- CoreV1Api on a real API server


async def test_core_v1_read_node_and_event(kube_apiserver: KubeCluster) -> None:
    node = f"slim-{uuid.uuid4().hex[:8]}"
    ns = f"slim-{uuid.uuid4().hex[:8]}"
    kube_apiserver.create_node(node)
    kube_apiserver.ensure_namespace(ns)
    api = await new_api_client(str(kube_apiserver.kubeconfig_admin))
    try:
        core = _slim.CoreV1Api(api)
        got = await core.read_node(node)
        want = kube_apiserver.request("GET", f"/api/v1/nodes/{node}")
        assert type(got).__name__ == "V1Node"
        assert got.metadata is not None and got.metadata.uid == want["metadata"]["uid"]

        name = f"ev-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": ns},
            "reason": "SlimTest",
            "message": "recorded through the narrow CoreV1Api",
            "type": "Normal",
            "count": 1,
        }
        created = await core.create_namespaced_event(ns, body)
        assert type(created).__name__ == "CoreV1Event" and created.reason == "SlimTest"
        stored = kube_apiserver.request("GET", f"/api/v1/namespaces/{ns}/events/{name}")
        assert stored["message"] == "recorded through the narrow CoreV1Api"

        # A malformed body is refused before anything is sent (as the generated method does).
        with pytest.raises(pydantic.ValidationError):
            await core.create_namespaced_event(ns, {**body, "count": "many"})
        # An API error is the official ApiException.
        from kubernetes.aio.client.exceptions import ApiException

        with pytest.raises(ApiException) as e:
            await core.read_node(f"{node}-missing")
        assert e.value.status == 404
        # Any other operation falls through to the generated class.
        lst = await core.list_namespaced_event(ns)
        assert name in [ev.metadata.name for ev in lst.items]
    finally:
        await api.close()
        kube_apiserver.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        kube_apiserver.delete_node(node)
