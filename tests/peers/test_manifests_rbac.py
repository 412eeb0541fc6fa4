"""``kndkit manifests`` against the real kube-apiserver.

- every committed ``deploy/*.yaml`` is accepted by the apiserver (server-side dry
  run of each object, and of a Pod made from each DaemonSet's template);
- applied for real (under a unique driver name, so nothing collides with other
  suites), the driver's ServiceAccount, with a token bound to its DaemonSet pod on
  a node, can do its job (SelfSubjectAccessReview AND real requests: publish and
  delete its node's ResourceSlices, read claims, write their device status, read
  its Node, record Events) and no more (no Secrets, no claim spec, no Pods, no
  Node writes, no slices of other nodes or other drivers, nothing with a token
  not bound to a pod on a node).
"""

from __future__ import annotations

import copy
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kndkit.manifests import PARTS, ManifestOptions, build
from peers.kube_fixtures import ALLOC_OK, REPO_ROOT, KubeAPIError, KubeCluster

pytestmark = pytest.mark.slow

DEPLOY = REPO_ROOT / "deploy"
RESOURCE = "/apis/resource.k8s.io/v1"
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _uniq(what: str) -> str:
    return f"km-{what}-{uuid.uuid4().hex[:6]}"


def _dry_run_create(kube: KubeCluster, obj: dict[str, Any]) -> Any:
    return kube.request("POST", kube.path_for(obj) + "?dryRun=All&fieldValidation=Strict", obj)


def _dry_run_apply(kube: KubeCluster, obj: dict[str, Any]) -> Any:
    """Server-side apply, dry run: validates an object that exists already."""
    query = "?dryRun=All&fieldValidation=Strict&fieldManager=kndkit-test&force=true"
    return kube.request(
        "PATCH",
        kube.path_for(obj, with_name=True) + query,
        obj,
        content_type="application/apply-patch+yaml",
    )


def _pod_from_template(ds: dict[str, Any], node: str) -> dict[str, Any]:
    tmpl = copy.deepcopy(ds["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{ds['metadata']['name']}-{node}"[:63],
            "namespace": ds["metadata"]["namespace"],
            "labels": tmpl["metadata"]["labels"],
        },
        "spec": {**tmpl["spec"], "nodeName": node},
    }


# --------------------------------------------------------------------------- committed files


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_committed_manifests_are_accepted_by_the_apiserver(
    kube_apiserver: KubeCluster, path: Any
) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, path
    for ns in {d["metadata"].get("namespace") for d in docs} - {None}:
        kube_apiserver.ensure_namespace(ns)
    kinds = []
    for obj in docs:
        kinds.append(obj["kind"])
        try:
            got = _dry_run_create(kube_apiserver, obj)
        except KubeAPIError as e:
            # Exists already (other suites of the session use the same namespace
            # and account): validate it as an update instead.
            assert e.status == 409, e
            got = _dry_run_apply(kube_apiserver, obj)
        assert got["metadata"]["name"] == obj["metadata"]["name"]
        if obj["kind"] == "DaemonSet":
            # The pods it would create pass Pod validation and admission too
            # (privileged, host network, hostPath volumes, system-node-critical).
            sa = obj["spec"]["template"]["spec"]["serviceAccountName"]
            sa_obj = {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": obj["metadata"]["namespace"]},
            }
            kube_apiserver.apply(sa_obj)  # the ServiceAccount admission needs it to exist
            pod = _dry_run_create(kube_apiserver, _pod_from_template(obj, "km-any-node"))
            assert pod["spec"]["priority"] == 2000001000  # system-node-critical resolved
            assert pod["spec"]["hostNetwork"] is True
    if path.name != "rbac.yaml":
        assert set(kinds) >= {
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "DeviceClass",
            "DaemonSet",
        }, kinds


# --------------------------------------------------------------------------- applied for real


@pytest.fixture
def deployed(kube_apiserver: KubeCluster) -> Iterator[dict[str, Any]]:
    """The manifests of a uniquely named driver applied; a node and the agent's pod on it."""
    tag = uuid.uuid4().hex[:6]
    opts = ManifestOptions(
        driver="netdev",
        driver_name=f"km{tag}.kndkit.dev",
        namespace=f"km-{tag}",
        app_name=f"kndkit-km{tag}",
    )
    docs = [obj for _, obj in build(opts, PARTS)]
    node = _uniq("node")
    kube_apiserver.create_node(node)
    kube_apiserver.ensure_namespace(opts.namespace)
    made: list[dict[str, Any]] = []
    try:
        for obj in docs:
            made.append(obj)
            kube_apiserver.apply(obj)
        pod = kube_apiserver.create_agent_pod(opts.namespace, opts.app_name, node)
        made.append(pod)
        token = kube_apiserver.service_account_token(opts.namespace, opts.app_name, pod=pod)
        unbound = kube_apiserver.service_account_token(opts.namespace, opts.app_name)
        yield {
            "opts": opts,
            "docs": docs,
            "node": node,
            "token": token,
            "unbound": unbound,
            "made": made,
        }
    finally:
        for obj in reversed(made):
            if obj["kind"] in ("Namespace",):
                continue
            try:
                if obj["kind"] == "ResourceClaim":
                    kube_apiserver.request(
                        "PATCH",
                        kube_apiserver.path_for(obj, with_name=True),
                        {"metadata": {"finalizers": None}},
                        content_type="application/merge-patch+json",
                    )
                kube_apiserver.delete(obj, grace_period_s=0)
            except KubeAPIError as e:
                if e.status != 404:
                    raise
        kube_apiserver.delete_node(node)
        kube_apiserver.delete(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": opts.namespace}}
        )


def _can(
    kube: KubeCluster,
    token: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    subresource: str = "",
    name: str = "",
    namespace: str = "",
) -> bool:
    attrs = {"verb": verb, "resource": resource, "group": group}
    if subresource:
        attrs["subresource"] = subresource
    if name:
        attrs["name"] = name
    if namespace:
        attrs["namespace"] = namespace
    review = kube.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        },
        token=token,
    )
    return bool(review["status"].get("allowed"))


def _slice(name: str, driver: str, node: str, devices: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": d, "attributes": {"ifName": {"string": d}}} for d in devices],
        },
    }


def _denied(kube: KubeCluster, method: str, path: str, body: Any, token: str) -> KubeAPIError:
    ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
    with pytest.raises(KubeAPIError) as err:
        kube.request(method, path, body, token=token, content_type=ctype)
    assert err.value.status in (403, 422), err.value
    return err.value


def _wait_policy_active(kube: KubeCluster, token: str, driver: str) -> None:
    """The admission policy takes effect once the apiserver's informers saw it."""
    deadline = time.monotonic() + 60
    while True:
        probe = _slice(_uniq("probe"), driver, _uniq("elsewhere"), ["x"])
        try:
            kube.create(probe, token=token)
        except KubeAPIError as e:
            if "ValidatingAdmissionPolicy" in e.message:
                return
            raise
        kube.delete(probe)  # not enforced yet: undo and retry
        assert time.monotonic() < deadline, "the ResourceSlice policy never took effect"
        time.sleep(0.5)


def test_rbac_access_reviews(kube_apiserver: KubeCluster, deployed: dict[str, Any]) -> None:
    opts: ManifestOptions = deployed["opts"]
    tok = deployed["token"]

    def can(verb: str, resource: str, **kw: str) -> bool:
        return _can(kube_apiserver, tok, verb, resource, **kw)

    rs = {"group": "resource.k8s.io"}
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert can(verb, "resourceslices", **rs), verb
    for verb in ("get", "list", "watch"):
        assert can(verb, "resourceclaims", namespace="any", **rs), verb
    for verb in ("update", "patch"):
        assert can(verb, "resourceclaims", subresource="status", namespace="any", **rs), verb
        assert can(
            f"associated-node:{verb}",
            "resourceclaims",
            subresource="driver",
            name=opts.driver_name,
            **rs,
        )
    assert can("get", "nodes", name=deployed["node"])
    for group in ("", "events.k8s.io"):
        assert can("create", "events", group=group, namespace="any")
        assert can("patch", "events", group=group, namespace="any")

    # ... and no more.
    assert not can("deletecollection", "resourceslices", **rs)
    for verb in ("create", "update", "patch", "delete"):
        assert not can(verb, "resourceclaims", namespace="any", **rs), verb
    assert not can("update", "resourceclaims", subresource="binding", namespace="x", **rs)
    assert not can(
        "associated-node:patch",
        "resourceclaims",
        subresource="driver",
        name="other.kndkit.dev",
        **rs,
    )
    assert not can(
        "arbitrary-node:patch", "resourceclaims", subresource="driver", name=opts.driver_name, **rs
    )
    for verb in ("create", "update", "delete"):
        assert not can(verb, "deviceclasses", **rs), verb
    for verb in ("list", "update", "patch", "delete"):
        assert not can(verb, "nodes"), verb
    assert not can("patch", "nodes", subresource="status")
    for verb in ("get", "list"):
        assert not can(verb, "secrets", namespace=opts.namespace), verb
        assert not can(verb, "secrets"), verb
        assert not can(verb, "configmaps", namespace=opts.namespace), verb
    for verb in ("create", "list", "delete"):
        assert not can(verb, "pods", namespace=opts.namespace), verb
    assert not can("create", "pods", subresource="exec", namespace=opts.namespace)
    assert not can("create", "serviceaccounts", subresource="token", namespace=opts.namespace)
    assert not can("get", "events", namespace="any")
    assert not can("escalate", "clusterroles", group="rbac.authorization.k8s.io")
    assert not can("bind", "clusterroles", group="rbac.authorization.k8s.io")
    assert not can("create", "validatingadmissionpolicies", group="admissionregistration.k8s.io")


def test_driver_account_does_its_job_and_no_more(
    kube_apiserver: KubeCluster, allocator: Any, deployed: dict[str, Any]
) -> None:
    kube = kube_apiserver
    opts: ManifestOptions = deployed["opts"]
    node, tok, unbound = deployed["node"], deployed["token"], deployed["unbound"]
    made: list[dict[str, Any]] = deployed["made"]
    driver = opts.driver_name

    me = kube.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=tok,
    )["status"]["userInfo"]
    assert me["username"] == f"system:serviceaccount:{opts.namespace}:{opts.app_name}"
    assert me["extra"]["authentication.kubernetes.io/node-name"] == [node]

    _wait_policy_active(kube, tok, driver)

    # Publish its node's devices, update the slice, list slices, delete one.
    mine = _slice(_uniq("slice"), driver, node, ["eth1", "eth2"])
    made.append(mine)
    created = kube.create(mine, token=tok)
    created["spec"]["pool"]["generation"] = 2
    kube.request("PUT", kube.path_for(mine, with_name=True), created, token=tok)
    listed = kube.request(
        "GET", f"{RESOURCE}/resourceslices?fieldSelector=spec.nodeName={node}", token=tok
    )
    assert [s["metadata"]["name"] for s in listed["items"]] == [mine["metadata"]["name"]]
    extra = _slice(_uniq("slice"), driver, node, ["eth9"])
    extra["spec"]["pool"]["name"] = f"{node}-b"
    kube.create(extra, token=tok)
    kube.request("DELETE", kube.path_for(extra, with_name=True), token=tok)

    # Not another node's slices, not another driver's, not with an unbound token.
    other = _slice(_uniq("slice"), driver, _uniq("other-node"), ["eth1"])
    e = _denied(kube, "POST", kube.path_for(other), other, tok)
    assert f"only the ResourceSlices of its own node {node}" in e.message, e
    foreign = _slice(_uniq("slice"), "other.kndkit.dev", node, ["eth1"])
    e = _denied(kube, "POST", kube.path_for(foreign), foreign, tok)
    assert "only ResourceSlices of driver" in e.message, e
    e = _denied(kube, "POST", kube.path_for(mine), _slice(_uniq("s"), driver, node, ["a"]), unbound)
    assert "token bound to the driver's pod" in e.message, e
    e = _denied(kube, "DELETE", kube.path_for(mine, with_name=True), None, unbound)
    assert "token bound to the driver's pod" in e.message, e
    # A slice of another node (the admin's) cannot be deleted or moved either.
    theirs = _slice(_uniq("slice"), driver, _uniq("other-node"), ["eth1"])
    made.append(theirs)
    stored = kube.create(theirs)
    _denied(kube, "DELETE", kube.path_for(theirs, with_name=True), None, tok)
    stored["spec"]["devices"] = [{"name": "stolen"}]
    _denied(kube, "PUT", kube.path_for(theirs, with_name=True), stored, tok)

    # A claim allocated from its slice through its DeviceClass.
    claim_ns = opts.namespace
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": _uniq("claim"), "namespace": claim_ns},
        "spec": {
            "devices": {"requests": [{"name": "nic", "exactly": {"deviceClassName": driver}}]}
        },
    }
    kube.create(claim)
    made.append(claim)
    res = allocator.allocate(node, [claim], pod=("pod-a", str(uuid.uuid4())))
    assert res.returncode == ALLOC_OK, (res.json, res.stderr)
    claim_path = kube.path_for(claim, with_name=True)
    got = kube.request("GET", claim_path, token=tok)
    [result] = got["status"]["allocation"]["devices"]["results"]
    assert result["driver"] == driver and result["pool"] == node
    kube.request("GET", f"{RESOURCE}/resourceclaims", token=tok)

    # Device status, as the driver writes it (server-side apply on /status).
    apply_doc = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": claim["metadata"]["name"], "namespace": claim_ns},
        "status": {
            "devices": [
                {
                    "driver": driver,
                    "pool": node,
                    "device": result["device"],
                    "networkData": {"interfaceName": "net1", "ips": ["10.9.0.2/24"]},
                }
            ]
        },
    }
    patched = kube.request(
        "PATCH",
        f"{claim_path}/status?fieldManager={driver}&force=true",
        apply_doc,
        token=tok,
        content_type="application/apply-patch+yaml",
    )
    assert patched["status"]["devices"][0]["networkData"]["interfaceName"] == "net1"
    # Not from a token that is not bound to a pod on the claim's node.
    changed = copy.deepcopy(apply_doc["status"])
    changed["devices"][0]["networkData"]["ips"] = ["10.9.0.3/24"]
    e = _denied(kube, "PATCH", f"{claim_path}/status", {"status": changed}, unbound)
    assert "resourceclaims/driver" in e.message, e
    # Not the claim's spec, not the scheduler's part of its status, not delete.
    current = kube.request("GET", claim_path, token=tok)
    current["spec"]["devices"]["requests"][0]["name"] = "changed"
    _denied(kube, "PUT", claim_path, current, tok)
    _denied(kube, "DELETE", claim_path, None, tok)
    e = _denied(
        kube,
        "PATCH",
        f"{claim_path}/status",
        {"status": {"reservedFor": [{"resource": "pods", "name": "x", "uid": "1"}]}},
        tok,
    )
    assert "resourceclaims/binding" in e.message, e

    # Its Node, read only; Events in the claim's namespace.
    assert kube.request("GET", f"/api/v1/nodes/{node}", token=tok)["metadata"]["name"] == node
    _denied(kube, "GET", "/api/v1/nodes", None, tok)
    _denied(kube, "PATCH", f"/api/v1/nodes/{node}", {"metadata": {"labels": {"x": "y"}}}, tok)
    _denied(kube, "DELETE", f"/api/v1/nodes/{node}", None, tok)
    ev = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": _uniq("ev"), "namespace": claim_ns},
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "reportingController": driver,
        "reportingInstance": f"{driver}/{node}",
        "action": "Prepare",
        "reason": "Prepared",
        "type": "Normal",
        "note": "prepared",
        "regarding": {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "name": claim["metadata"]["name"],
            "namespace": claim_ns,
        },
    }
    made.append(kube.create(ev, token=tok))
    core_ev = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": _uniq("ev"), "namespace": claim_ns},
        "involvedObject": {
            "kind": "ResourceClaim",
            "name": claim["metadata"]["name"],
            "namespace": claim_ns,
        },
        "reason": "Prepared",
        "message": "prepared",
        "type": "Normal",
        "source": {"component": driver, "host": node},
    }
    made.append(kube.create(core_ev, token=tok))

    # Nothing else.
    _denied(kube, "GET", f"/api/v1/namespaces/{opts.namespace}/secrets", None, tok)
    _denied(kube, "GET", "/api/v1/secrets", None, tok)
    _denied(kube, "GET", f"/api/v1/namespaces/{opts.namespace}/configmaps", None, tok)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": _uniq("pod"), "namespace": opts.namespace},
        "spec": {"containers": [{"name": "c", "image": "x.invalid/y"}]},
    }
    _denied(kube, "POST", f"/api/v1/namespaces/{opts.namespace}/pods", pod, tok)
    _denied(kube, "GET", f"/api/v1/namespaces/{opts.namespace}/pods", None, tok)
    dc = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": _uniq("dc")},
        "spec": {},
    }
    _denied(kube, "POST", f"{RESOURCE}/deviceclasses", dc, tok)


def test_daemonset_and_its_pod_are_accepted(
    kube_apiserver: KubeCluster, deployed: dict[str, Any]
) -> None:
    opts: ManifestOptions = deployed["opts"]
    [ds] = [d for d in deployed["docs"] if d["kind"] == "DaemonSet"]
    stored = kube_apiserver.get(ds)  # created for real by the fixture
    assert stored["spec"]["template"]["spec"]["serviceAccountName"] == opts.app_name
    pod = _dry_run_create(kube_apiserver, _pod_from_template(ds, deployed["node"]))
    [c] = pod["spec"]["containers"]
    assert c["args"][2:4] == ["run", "netdev"]
    assert c["ports"][0]["hostPort"] == opts.metrics_port  # host network: defaulted
    assert c["resources"]["limits"]["memory"] == "128Mi"
    mounts = {m["mountPath"]: m.get("mountPropagation") for m in c["volumeMounts"]}
    assert mounts["/var/run/netns"] == "HostToContainer"
    # The service-account token is projected into the pod (the agent's identity).
    assert any(v.get("projected") for v in pod["spec"]["volumes"])
    # The DeviceClass is the one claims use.
    dc = kube_apiserver.request("GET", f"{RESOURCE}/deviceclasses/{opts.driver_name}")
    assert opts.driver_name in dc["spec"]["selectors"][0]["cel"]["expression"]


# --------------------------------------------------------------------------- the real driver


def test_a_driver_does_its_job_as_the_manifests_account(kube_apiserver: KubeCluster) -> None:
    """``kndkit run hello`` under the generated RBAC and admission policy, with a token
    bound to its pod on the node: it publishes, prepares, attaches, writes the claims'
    device status and detaches without one refused request."""
    from kndkit.testing import ClaimSpec, Cluster, SimulatedNode
    from kndkit.testing.kube import Allocator
    from kndkit.testing.peers import ensure

    tag = uuid.uuid4().hex[:6]
    opts = ManifestOptions(
        driver="hello",
        driver_name="hello.kndkit.dev",
        namespace=f"km-{tag}",
        app_name=f"kndkit-km{tag}",
    )
    docs = [obj for _, obj in build(opts, ["namespace", "rbac", "policy"])]
    cluster = Cluster(
        kube_apiserver,
        Allocator(kube_apiserver.kubeconfig_admin, ensure(("kube",)) / "allocator"),
        kube_apiserver.workdir,
    )
    try:
        with SimulatedNode.start(node_name=f"km{tag}", nics=2, cluster=cluster) as node:
            node.kubeconfig = kube_apiserver.kubeconfig_for(docs, node=node.node_name)
            tok = kube_apiserver.token_from_kubeconfig(node.kubeconfig)
            _wait_policy_active(kube_apiserver, tok, opts.driver_name)
            drv = node.start_driver("hello")
            assert node.wait_devices(drv.name, at_least=2) == ["eth1", "eth2"]
            before = node.snapshot()
            pod = node.new_pod("p1", claims=[ClaimSpec(driver=drv.name)])
            node.start_pod(pod)
            assert [lk["name"] for lk in node.pod_links(pod)] == ["lo", "net1"]
            claims = f"{RESOURCE}/namespaces/{pod.namespace}/resourceclaims"
            [claim] = kube_apiserver.request("GET", claims)["items"]
            deadline = time.monotonic() + 30
            while not claim.get("status", {}).get("devices"):
                assert time.monotonic() < deadline, f"no device status written:\n{drv.logs()}"
                time.sleep(0.3)
                claim = kube_apiserver.request("GET", f"{claims}/{claim['metadata']['name']}")
            assert claim["status"]["devices"][0]["driver"] == drv.name
            # What the DaemonSet's probes and a Prometheus scrape see.
            assert drv.metrics_url
            base = drv.metrics_url.rsplit("/", 1)[0]
            for path in ("/healthz", "/readyz"):
                with urllib.request.urlopen(base + path, timeout=10) as r:
                    assert (r.status, r.read()) == (200, b"ok"), path
            scraped = drv.metrics()
            assert f'kndkit_attached_pods{{driver="{drv.name}"}} 1.0' in scraped, scraped
            assert "kndkit_nri_request_duration_seconds_count" in scraped
            # The driver fits the DaemonSet's memory limit.
            [rss] = [
                float(line.split()[1])
                for line in scraped.splitlines()
                if line.startswith("process_resident_memory_bytes ")
            ]
            [ds] = [d for _, d in build(opts, ["daemonset"])]
            quantity = ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            limit = int(quantity["memory"][:-2]) * _UNITS[quantity["memory"][-2:]]
            print(f"driver RSS with one pod attached: {rss / 2**20:.1f} MiB (limit {quantity})")
            assert rss < limit, (rss, quantity)
            node.delete_pod(pod)
            assert node.snapshot() == before
            logs = drv.logs()
            assert "Forbidden" not in logs and " 403" not in logs, logs
    finally:
        for obj in reversed(docs):
            if obj["kind"] != "Namespace":
                kube_apiserver.delete(obj)
        kube_apiserver.delete(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": opts.namespace}}
        )
