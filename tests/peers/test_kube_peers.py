"""Proofs that the kube test peers are the real thing.

- the apiserver enforces resource.k8s.io/v1 validation with its own error text;
- the scheduler's allocator allocates by CEL selector and refuses what matches nothing;
- the driver's least-privilege RBAC (deploy/rbac.yaml) allows exactly what a driver does.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from peers.kube_fixtures import (
    ALLOC_BAD_INPUT,
    ALLOC_OK,
    ALLOC_UNALLOCATED,
    DRIVER_RBAC,
    KubeAPIError,
    KubeCluster,
)

pytestmark = pytest.mark.slow

DRIVER = "netdev.kndkit.dev"  # the name deploy/rbac.yaml grants
RESOURCE = "/apis/resource.k8s.io/v1"


def uniq(what: str) -> str:
    return f"kp-{what}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def device(name: str, **attrs: Any) -> dict[str, Any]:
    """A device with typed attributes (str -> string, bool -> bool, int -> int)."""
    typed: dict[str, dict[str, Any]] = {}
    for k, v in attrs.items():
        if isinstance(v, bool):
            typed[k] = {"bool": v}
        elif isinstance(v, int):
            typed[k] = {"int": v}
        else:
            typed[k] = {"string": v}
    return {"name": name, "attributes": typed}


def slice_obj(
    name: str, node: str, devices: list[dict[str, Any]], pool: str | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": pool or node, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def claim_obj(name: str, namespace: str, device_class: str, cel: str | None) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": device_class}
    if cel is not None:
        exactly["selectors"] = [{"cel": {"expression": cel}}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "nic", "exactly": exactly}]}},
    }


@pytest.fixture
def node(kube_apiserver: KubeCluster) -> Any:
    name = uniq("node")
    kube_apiserver.create_node(name)
    try:
        yield name
    finally:
        kube_apiserver.delete_node(name)


@pytest.fixture
def namespace(kube_apiserver: KubeCluster) -> Any:
    name = uniq("ns")
    kube_apiserver.ensure_namespace(name)
    try:
        yield name
    finally:
        kube_apiserver.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@pytest.fixture
def cleanup(kube_apiserver: KubeCluster) -> Any:
    """Collects objects to delete after the test, whatever happens."""
    objs: list[dict[str, Any]] = []
    try:
        yield objs
    finally:
        for obj in reversed(objs):
            try:
                if obj["kind"] == "ResourceClaim":
                    # The allocator adds the scheduler's finalizer; drop it first.
                    path = kube_apiserver.path_for(obj, with_name=True)
                    kube_apiserver.request(
                        "PATCH",
                        path,
                        {"metadata": {"finalizers": None}},
                        content_type="application/merge-patch+json",
                    )
                kube_apiserver.delete(obj, grace_period_s=0)
            except KubeAPIError as e:
                if e.status != 404:
                    raise


# ---------------------------------------------------------------- the control plane


def test_apiserver_is_a_real_one_serving_resource_v1(kube_apiserver: KubeCluster) -> None:
    version = kube_apiserver.request("GET", "/version")
    assert version["major"] == "1"
    assert int(version["minor"].rstrip("+")) >= 34, version
    assert version["gitVersion"].startswith("v1."), version
    kinds = {r["kind"] for r in kube_apiserver.request("GET", RESOURCE)["resources"]}
    assert {"ResourceSlice", "ResourceClaim", "DeviceClass"} <= kinds
    # RBAC is on: an unknown token is not authenticated, a known one without
    # rights is forbidden.
    with pytest.raises(KubeAPIError) as bad:
        kube_apiserver.request("GET", "/api/v1/nodes", token="not-a-token")
    assert bad.value.status == 401


def test_create_node_helper(kube_apiserver: KubeCluster, node: str) -> None:
    got = kube_apiserver.request("GET", f"/api/v1/nodes/{node}")
    assert got["metadata"]["labels"]["kubernetes.io/hostname"] == node
    ready = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert ready["Ready"] == "True"


def test_valid_resourceslice_is_accepted(
    kube_apiserver: KubeCluster, node: str, cleanup: list[dict[str, Any]]
) -> None:
    obj = slice_obj(
        uniq("slice"),
        node,
        [
            device("eth1", ifName="eth1", rdma=True, numaNode=0),
            device("eth2", ifName="eth2", rdma=False, numaNode=1),
        ],
    )
    cleanup.append(obj)
    created = kube_apiserver.create(obj)
    got = kube_apiserver.get(obj)
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    assert [d["name"] for d in got["spec"]["devices"]] == ["eth1", "eth2"]
    assert got["spec"]["devices"][0]["attributes"]["rdma"] == {"bool": True}
    assert got["spec"]["nodeName"] == node


def _too_many_devices(node: str) -> dict[str, Any]:
    return slice_obj(uniq("slice"), node, [device(f"d{i}") for i in range(129)])


def _long_string(node: str) -> dict[str, Any]:
    return slice_obj(uniq("slice"), node, [device("eth1", ifName="x" * 65)])


def _too_many_attributes(node: str) -> dict[str, Any]:
    return slice_obj(uniq("slice"), node, [device("eth1", **{f"a{i}": i for i in range(33)})])


def _bad_attribute_name(node: str) -> dict[str, Any]:
    return slice_obj(uniq("slice"), node, [device("eth1", **{"bad-name!": "x"})])


@pytest.mark.parametrize(
    ("build", "field", "text"),
    [
        (_too_many_devices, "spec.devices", "must have at most 128 items"),
        (_long_string, "spec.devices[0].attributes[ifName].string", "64"),
        (
            _too_many_attributes,
            "spec.devices[0]",
            "the total number of attributes and capacities must not exceed 32",
        ),
        (_bad_attribute_name, "spec.devices[0].attributes", "a valid C identifier must start"),
    ],
    ids=["129-devices", "65-char-string", "33-attributes", "bad-attribute-name"],
)
def test_invalid_resourceslice_is_rejected_with_apiserver_text(
    kube_apiserver: KubeCluster,
    node: str,
    cleanup: list[dict[str, Any]],
    build: Any,
    field: str,
    text: str,
) -> None:
    obj = build(node)
    cleanup.append(obj)  # in case the apiserver wrongly accepts it
    with pytest.raises(KubeAPIError) as err:
        kube_apiserver.create(obj)
    e = err.value
    assert e.status == 422, e
    assert e.reason == "Invalid", e
    assert field in e.message, e.message
    assert text in e.message, e.message
    causes = e.body["details"]["causes"]
    assert any(c["field"].startswith(field) for c in causes), causes
    with pytest.raises(KubeAPIError) as missing:
        kube_apiserver.get(obj)
    assert missing.value.status == 404


# ---------------------------------------------------------------- the allocator


@pytest.fixture
def dra_world(
    kube_apiserver: KubeCluster, node: str, namespace: str, cleanup: list[dict[str, Any]]
) -> dict[str, Any]:
    """A slice with two NICs (one RDMA-capable) and a class selecting the driver."""
    cls = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": uniq("class")},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    sl = slice_obj(
        uniq("slice"),
        node,
        [
            device("eth1", ifName="eth1", rdma=False),
            device("eth2", ifName="eth2", rdma=True),
        ],
    )
    for obj in (cls, sl):
        kube_apiserver.create(obj)
        cleanup.append(obj)
    return {"node": node, "namespace": namespace, "class": cls, "slice": sl}


def test_allocator_allocates_by_cel_attribute_and_writes_status(
    kube_apiserver: KubeCluster, allocator: Any, dra_world: dict[str, Any], cleanup: list[Any]
) -> None:
    claim = claim_obj(
        uniq("claim"),
        dra_world["namespace"],
        dra_world["class"]["metadata"]["name"],
        f'device.attributes["{DRIVER}"].rdma == true',
    )
    kube_apiserver.create(claim)
    cleanup.append(claim)
    pod_uid = str(uuid.uuid4())

    res = allocator.allocate(dra_world["node"], [claim], pod=("pod-a", pod_uid))

    assert res.returncode == ALLOC_OK, (res.json, res.stderr)
    assert res.allocated and res.json["written"] is True
    [result] = res.results
    devices = result["allocation"]["devices"]["results"]
    assert [(d["driver"], d["pool"], d["device"]) for d in devices] == [
        (DRIVER, dra_world["node"], "eth2")
    ]
    # The scheduler's write is on the claim itself.
    got = kube_apiserver.get(claim)
    assert got["status"]["allocation"]["devices"]["results"][0]["device"] == "eth2"
    assert got["status"]["allocation"]["devices"]["results"][0]["request"] == "nic"
    node_terms = got["status"]["allocation"]["nodeSelector"]["nodeSelectorTerms"]
    assert dra_world["node"] in str(node_terms)
    assert got["status"]["reservedFor"] == [{"resource": "pods", "name": "pod-a", "uid": pod_uid}]
    assert "resource.kubernetes.io/delete-protection" in got["metadata"]["finalizers"]

    # eth2 is now taken: a second claim for an RDMA device cannot be satisfied.
    second = claim_obj(
        uniq("claim"),
        dra_world["namespace"],
        dra_world["class"]["metadata"]["name"],
        f'device.attributes["{DRIVER}"].rdma == true',
    )
    kube_apiserver.create(second)
    cleanup.append(second)
    again = allocator.allocate(dra_world["node"], [second])
    assert again.returncode == ALLOC_UNALLOCATED, (again.json, again.stderr)


def test_allocator_refuses_a_claim_that_matches_nothing(
    kube_apiserver: KubeCluster, allocator: Any, dra_world: dict[str, Any], cleanup: list[Any]
) -> None:
    claim = claim_obj(
        uniq("claim"),
        dra_world["namespace"],
        dra_world["class"]["metadata"]["name"],
        f'device.attributes["{DRIVER}"].ifName == "eth9"',
    )
    kube_apiserver.create(claim)
    cleanup.append(claim)

    res = allocator.allocate(dra_world["node"], [claim], pod=("pod-b", str(uuid.uuid4())))

    assert res.returncode == ALLOC_UNALLOCATED, (res.json, res.stderr)
    assert res.json["allocated"] is False
    assert "cannot allocate" in res.json["reason"]
    assert res.json["written"] is False
    got = kube_apiserver.get(claim)
    assert "allocation" not in got.get("status", {})
    assert "resource.kubernetes.io/delete-protection" not in got["metadata"].get("finalizers", [])


def test_allocator_reports_bad_input(
    kube_apiserver: KubeCluster, allocator: Any, dra_world: dict[str, Any], cleanup: list[Any]
) -> None:
    missing = allocator.allocate(dra_world["node"], [f"{dra_world['namespace']}/no-such-claim"])
    assert missing.returncode == ALLOC_BAD_INPUT
    assert "not found" in missing.json["error"]

    broken = claim_obj(
        uniq("claim"),
        dra_world["namespace"],
        dra_world["class"]["metadata"]["name"],
        # Compiles, but fails at run time: the devices have no such attribute.
        f'device.attributes["{DRIVER}"].nosuch == 1',
    )
    kube_apiserver.create(broken)
    cleanup.append(broken)
    res = allocator.allocate(dra_world["node"], [broken])
    assert res.returncode == ALLOC_BAD_INPUT, (res.json, res.stderr)
    assert res.json["kind"] == "bad-input"
    assert "nosuch" in res.json["error"], res.json
    assert "allocation" not in kube_apiserver.get(broken).get("status", {})


def test_allocator_json_mode_needs_no_cluster(kube_peers_built: Any) -> None:
    from peers.kube_fixtures import Allocator

    cls = {
        "metadata": {"name": "nics"},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    sl = slice_obj("s1", "n1", [device("eth1", numaNode=0), device("eth2", numaNode=1)])
    want = claim_obj("c1", "default", "nics", f'device.attributes["{DRIVER}"].numaNode == 1')
    taken = claim_obj("c0", "default", "nics", None)
    taken["status"] = {
        "allocation": {
            "devices": {
                "results": [{"request": "nic", "driver": DRIVER, "pool": "n1", "device": "eth2"}]
            }
        }
    }
    alloc = Allocator(kubeconfig=None)

    ok = alloc.allocate_json({"slices": [sl], "classes": [cls], "claims": [want]}, node="n1")
    assert ok.returncode == ALLOC_OK, (ok.json, ok.stderr)
    assert ok.results[0]["allocation"]["devices"]["results"][0]["device"] == "eth2"

    busy = alloc.allocate_json(
        {"slices": [sl], "classes": [cls], "claims": [want], "allocatedClaims": [taken]},
        node="n1",
    )
    assert busy.returncode == ALLOC_UNALLOCATED, (busy.json, busy.stderr)

    other_node = alloc.allocate_json(
        {"slices": [sl], "classes": [cls], "claims": [want]}, node="n2"
    )
    assert other_node.returncode == ALLOC_UNALLOCATED

    bad = alloc.allocate_json({"slices": [sl], "claims": [want], "bogus": 1}, node="n1")
    assert bad.returncode == ALLOC_BAD_INPUT
    assert "bogus" in bad.json["error"]

    unknown = alloc.allocate_json({"slices": [sl], "claims": [want]}, features=["NoSuchThing"])
    assert unknown.returncode == ALLOC_BAD_INPUT
    assert "unknown allocator feature" in unknown.json["error"]


def test_allocator_prioritized_list_takes_the_first_alternative_that_fits(
    kube_peers_built: Any,
) -> None:
    from peers.kube_fixtures import Allocator

    cls = {
        "metadata": {"name": "nics"},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    sl = slice_obj("s1", "n1", [device("eth1", numaNode=0), device("eth2", numaNode=1)])

    def on_numa(name: str, numa: int) -> dict[str, Any]:
        cel = f'device.attributes["{DRIVER}"].numaNode == {numa}'
        return {
            "name": name,
            "deviceClassName": "nics",
            "selectors": [{"cel": {"expression": cel}}],
        }

    claim = {
        "metadata": {"name": "c1", "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [
                    {"name": "nic", "firstAvailable": [on_numa("numa5", 5), on_numa("numa0", 0)]}
                ]
            }
        },
    }
    doc = {"slices": [sl], "classes": [cls], "claims": [claim]}
    res = Allocator(kubeconfig=None).allocate_json(doc, node="n1")
    assert res.returncode == ALLOC_OK, (res.json, res.stderr)
    [r] = res.results[0]["allocation"]["devices"]["results"]
    assert (r["request"], r["device"]) == ("nic/numa0", "eth1")
    # The stable allocator (no features) refuses prioritized lists as bad input.
    old = Allocator(kubeconfig=None).allocate_json(doc, node="n1", features=["none"])
    assert old.returncode == ALLOC_BAD_INPUT, old.json
    assert "DRAPrioritizedList" in old.json["error"]
    only = Allocator(kubeconfig=None).allocate_json(doc, node="n1", features=["PrioritizedList"])
    assert only.returncode == ALLOC_OK, only.json


def test_control_plane_teardown_leaves_nothing_running(
    kube_peers_built: Any, tmp_path: Any
) -> None:
    import socket

    cluster = KubeCluster.start(tmp_path / "cp")
    try:
        procs = list(cluster._procs)
        assert cluster.running and len(procs) == 2
        port = int(cluster.url.rsplit(":", 1)[1])
    finally:
        cluster.stop()
    assert all(p.popen.poll() is not None for p in procs)
    assert not cluster.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# ---------------------------------------------------------------- least-privilege RBAC


def test_driver_rbac_allows_driver_work_and_nothing_more(
    kube_apiserver: KubeCluster,
    allocator: Any,
    dra_world: dict[str, Any],
    cleanup: list[Any],
) -> None:
    node = dra_world["node"]
    # The agent as its DaemonSet pod on `node` would run: a pod-bound token.
    kubeconfig = kube_apiserver.kubeconfig_for(DRIVER_RBAC, node=node)
    agent_pod = kube_apiserver.create_agent_pod("kndkit-system", "kndkit", node)
    cleanup.append(agent_pod)
    token = kube_apiserver.token_from_kubeconfig(kubeconfig)
    me = kube_apiserver.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    user = me["status"]["userInfo"]
    assert user["username"] == "system:serviceaccount:kndkit-system:kndkit"
    assert user["extra"]["authentication.kubernetes.io/node-name"] == [node]

    # Publish a ResourceSlice (its own pool: a second slice in dra_world's
    # one-slice pool would make that pool invalid) and read its own Node.
    sl = slice_obj(
        uniq("slice"), node, [device("eth7", ifName="eth7", rdma=False)], pool=f"{node}-drv"
    )
    cleanup.append(sl)
    created = kube_apiserver.create(sl, token=token)
    assert created["spec"]["devices"][0]["name"] == "eth7"
    kube_apiserver.request(
        "PATCH",
        kube_apiserver.path_for(sl, with_name=True),
        {"metadata": {"labels": {"kndkit.dev/test": "yes"}}},
        token=token,
        content_type="application/merge-patch+json",
    )
    kube_apiserver.request("GET", f"/api/v1/nodes/{node}", token=token)

    # Report the network status of a device allocated on its node.
    claim = claim_obj(
        uniq("claim"),
        dra_world["namespace"],
        dra_world["class"]["metadata"]["name"],
        f'device.attributes["{DRIVER}"].rdma == true',
    )
    kube_apiserver.create(claim)
    cleanup.append(claim)
    assert allocator.allocate(node, [claim]).returncode == ALLOC_OK
    kube_apiserver.request("GET", kube_apiserver.path_for(claim, with_name=True), token=token)
    status_patch = {
        "status": {
            "devices": [
                {
                    "driver": DRIVER,
                    "pool": node,
                    "device": "eth2",
                    "networkData": {"interfaceName": "net1", "ips": ["10.9.0.2/24"]},
                }
            ]
        }
    }
    status_path = kube_apiserver.path_for(claim, with_name=True) + "/status"

    # Not from anywhere, though: a token not bound to a pod on that node is refused.
    unbound = kube_apiserver.token_from_kubeconfig(kube_apiserver.kubeconfig_for(DRIVER_RBAC))
    with pytest.raises(KubeAPIError) as err:
        kube_apiserver.request(
            "PATCH",
            status_path,
            status_patch,
            token=unbound,
            content_type="application/merge-patch+json",
        )
    assert "resourceclaims/driver" in err.value.message, err.value
    assert "arbitrary-node:patch" in err.value.message, err.value

    # As the driver writes it: server-side apply on /status, field manager = driver.
    apply_doc = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": claim["metadata"]["name"], "namespace": dra_world["namespace"]},
        **status_patch,
    }
    patched = kube_apiserver.request(
        "PATCH",
        f"{status_path}?fieldManager={DRIVER}&force=true",
        apply_doc,
        token=token,
        content_type="application/apply-patch+yaml",
    )
    managers = {m["manager"] for m in patched["metadata"]["managedFields"]}
    assert DRIVER in managers, managers
    assert patched["status"]["devices"][0]["networkData"]["interfaceName"] == "net1"

    def forbidden(method: str, p: str, body: Any = None) -> KubeAPIError:
        with pytest.raises(KubeAPIError) as err:
            kube_apiserver.request(
                method, p, body, token=token, content_type="application/merge-patch+json"
            )
        assert err.value.status == 403, err.value
        return err.value

    e = forbidden("GET", "/api/v1/namespaces/kndkit-system/secrets")
    assert "secrets" in e.message and "kndkit-system:kndkit" in e.message
    forbidden("GET", "/api/v1/secrets")
    forbidden("GET", "/api/v1/namespaces/kube-system/secrets/anything")
    forbidden("GET", "/api/v1/nodes")  # get, not list
    forbidden("PATCH", f"/api/v1/nodes/{node}", {"metadata": {"labels": {"x": "y"}}})
    forbidden("PATCH", kube_apiserver.path_for(claim, with_name=True), {"spec": {}})
    forbidden("DELETE", kube_apiserver.path_for(claim, with_name=True))
    forbidden("GET", f"/api/v1/namespaces/{dra_world['namespace']}/pods")
    # The scheduler's part of the status (allocation, reservedFor) is not the driver's.
    with pytest.raises(KubeAPIError) as err:
        kube_apiserver.request(
            "PATCH",
            status_path,
            {"status": {"reservedFor": [{"resource": "pods", "name": "x", "uid": "1"}]}},
            token=token,
            content_type="application/merge-patch+json",
        )
    assert "resourceclaims/binding" in err.value.message, err.value


def test_service_account_kubeconfig_works_with_the_python_client(
    kube_apiserver: KubeCluster,
) -> None:
    client = pytest.importorskip("kubernetes.client")
    kubeconfig = kube_apiserver.kubeconfig_for(DRIVER_RBAC)
    api = client.ResourceV1Api(kube_apiserver.api_client(kubeconfig))
    listed = api.list_resource_slice()
    assert isinstance(listed.items, list)
    core = client.CoreV1Api(kube_apiserver.api_client(kubeconfig))
    with pytest.raises(client.exceptions.ApiException) as err:
        core.list_namespaced_secret("kndkit-system")
    assert err.value.status == 403
