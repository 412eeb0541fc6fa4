"""kndkit.k8s.ClaimReader and ClaimStatusWriter against the real kube-apiserver.

Claims are allocated by the scheduler's allocator from slices kndkit published.
The status writer runs as the driver's ServiceAccount with a token bound to an
agent Pod on the claim's node (as a DaemonSet pod's token is), which the
"associated-node:" RBAC verbs of deploy/rbac.yaml require.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pydantic
import pytest

from kndkit.devices import Device
from kndkit.dra.types import ClaimRef
from kndkit.errors import InvalidArgument
from kndkit.k8s import (
    AllocatedDevice,
    ClaimError,
    ClaimNotAllocated,
    ClaimNotFound,
    ClaimReader,
    ClaimReplaced,
    ClaimStatusWriter,
    ConfigError,
    DeviceStatus,
    PodRef,
    SlicePublisher,
    new_api_client,
    parse_config,
)
from peers.kube_fixtures import ALLOC_OK, DRIVER_RBAC, KubeAPIError, KubeCluster

pytestmark = pytest.mark.slow

DRIVER = "netdev.kndkit.dev"
OTHER_DRIVER = "other.example.com"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def uniq(what: str) -> str:
    return f"k8c-{what}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Vlan(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    id: int = pydantic.Field(ge=1, le=4094)
    trunk: bool = False


class NicConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    mtu: int = 1500
    vlan: Vlan | None = None


@pytest.fixture
def node(kube_apiserver: KubeCluster) -> Iterator[str]:
    name = uniq("node")
    kube_apiserver.create_node(name)
    try:
        yield name
    finally:
        kube_apiserver.request("DELETE", f"{SLICES}?fieldSelector=spec.nodeName={name}")
        kube_apiserver.delete_node(name)


@pytest.fixture
def namespace(kube_apiserver: KubeCluster) -> Iterator[str]:
    name = uniq("ns")
    kube_apiserver.ensure_namespace(name)
    try:
        yield name
    finally:
        kube_apiserver.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@pytest.fixture
def cleanup(kube_apiserver: KubeCluster) -> Iterator[list[dict[str, Any]]]:
    objs: list[dict[str, Any]] = []
    try:
        yield objs
    finally:
        for obj in reversed(objs):
            path = kube_apiserver.path_for(obj, with_name=True)
            try:
                if obj["kind"] == "ResourceClaim":
                    # The allocator's finalizer goes first. GET + PUT: kube-apiserver
                    # v1.37.2 refuses any PATCH of a claim with opaque config
                    # ("spec: Invalid value: null: field is immutable").
                    current = kube_apiserver.request("GET", path)
                    if current["metadata"].get("finalizers"):
                        current["metadata"]["finalizers"] = []
                        kube_apiserver.request("PUT", path, current)
                kube_apiserver.request("DELETE", path + "?gracePeriodSeconds=0")
            except KubeAPIError as e:
                if e.status != 404:
                    raise


@pytest.fixture
async def driver_api(kube_apiserver: KubeCluster, node: str) -> AsyncIterator[Any]:
    """The driver's identity, as its agent Pod on ``node`` has it."""
    api = await new_api_client(str(kube_apiserver.kubeconfig_for(DRIVER_RBAC, node=node)))
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def world(
    kube_apiserver: KubeCluster,
    driver_api: Any,
    node: str,
    namespace: str,
    cleanup: list[dict[str, Any]],
) -> dict[str, Any]:
    """Four NICs published by kndkit on ``node`` and a DeviceClass for the driver,
    carrying class configuration (for this driver and for another one)."""
    pub = SlicePublisher(driver_api, DRIVER, node)
    await pub.publish([Device(f"eth{i}", {"ifName": f"eth{i}", "rdma": i >= 2}) for i in range(4)])
    cls: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": uniq("class")},
        "spec": {
            "selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}],
            "config": [
                {
                    "opaque": {
                        "driver": DRIVER,
                        "parameters": {"mtu": 1500, "vlan": {"id": 10, "trunk": True}},
                    }
                },
                {"opaque": {"driver": OTHER_DRIVER, "parameters": {"mtu": 1}}},
            ],
        },
    }
    kube_apiserver.create(cls)
    cleanup.append(cls)
    return {"node": node, "namespace": namespace, "class": cls["metadata"]["name"]}


@pytest.fixture
def plain_class(kube_apiserver: KubeCluster, cleanup: list[dict[str, Any]]) -> str:
    """A DeviceClass for the driver without configuration."""
    cls: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": uniq("plain")},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    kube_apiserver.create(cls)
    cleanup.append(cls)
    return str(cls["metadata"]["name"])


def make_claim(
    world: dict[str, Any],
    requests: dict[str, str | None],
    config: list[dict[str, Any]] | None = None,
    device_class: str | None = None,
) -> dict[str, Any]:
    """A claim with one device per request (request name -> CEL selector or None)."""
    reqs = []
    for name, cel in requests.items():
        exactly: dict[str, Any] = {"deviceClassName": device_class or world["class"]}
        if cel:
            exactly["selectors"] = [{"cel": {"expression": cel}}]
        reqs.append({"name": name, "exactly": exactly})
    devices: dict[str, Any] = {"requests": reqs}
    if config:
        devices["config"] = config
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": uniq("claim"), "namespace": world["namespace"]},
        "spec": {"devices": devices},
    }


def opaque(params: Any, requests: list[str] | None = None, driver: str = DRIVER) -> dict[str, Any]:
    entry: dict[str, Any] = {"opaque": {"driver": driver, "parameters": params}}
    if requests:
        entry["requests"] = requests
    return entry


def create_allocated(
    kube: KubeCluster,
    allocator: Any,
    world: dict[str, Any],
    cleanup: list[dict[str, Any]],
    claim: dict[str, Any],
    pod: tuple[str, str] | None = None,
) -> ClaimRef:
    created = kube.create(claim)
    cleanup.append(claim)
    res = allocator.allocate(world["node"], [claim], pod=pod)
    assert res.returncode == ALLOC_OK, (res.json, res.stderr[-2000:])
    return ClaimRef(world["namespace"], claim["metadata"]["name"], created["metadata"]["uid"])


# ---------------------------------------------------------------- reader


async def test_reader_allocated_claim_pods_devices_and_merged_config(
    kube_apiserver: KubeCluster,
    allocator: Any,
    driver_api: Any,
    world: dict[str, Any],
    cleanup: list[dict[str, Any]],
) -> None:
    claim = make_claim(
        world,
        {"plain": f'device.attributes["{DRIVER}"].rdma == false', "fast": None},
        config=[
            opaque({"vlan": {"id": 20}}),  # every request: overrides the class's vlan.id only
            opaque({"mtu": 9000}, requests=["fast"]),  # one request
            opaque({"mtu": 1}, driver=OTHER_DRIVER),  # not ours
        ],
    )
    pod_uid = str(uuid.uuid4())
    ref = create_allocated(kube_apiserver, allocator, world, cleanup, claim, ("pod-a", pod_uid))

    got = await ClaimReader(driver_api, DRIVER).get(ref)

    assert got.ref() == ref
    assert got.pods == (PodRef(world["namespace"], "pod-a", pod_uid),)
    assert got.resource_version
    by_request = {d.request: d for d in got.devices}
    assert sorted(by_request) == ["fast", "plain"]
    plain, fast = by_request["plain"], by_request["fast"]
    assert plain.pool == fast.pool == world["node"]
    assert plain.device in ("eth0", "eth1")
    assert plain.device != fast.device
    assert plain.share_id is None and plain.admin_access is False
    assert plain.config == {"mtu": 1500, "vlan": {"id": 20, "trunk": True}}
    assert fast.config == {"mtu": 9000, "vlan": {"id": 20, "trunk": True}}
    parsed = parse_config(fast, NicConfig)
    assert parsed == NicConfig(mtu=9000, vlan=Vlan(id=20, trunk=True))


async def test_reader_refuses_unallocated_replaced_and_deleted_claims(
    kube_apiserver: KubeCluster,
    allocator: Any,
    driver_api: Any,
    world: dict[str, Any],
    cleanup: list[dict[str, Any]],
) -> None:
    reader = ClaimReader(driver_api, DRIVER)
    pending = make_claim(world, {"nic": None})
    created = kube_apiserver.create(pending)
    cleanup.append(pending)
    ref = ClaimRef(world["namespace"], pending["metadata"]["name"], created["metadata"]["uid"])
    with pytest.raises(ClaimNotAllocated, match="not allocated"):
        await reader.get(ref)

    # Replaced: deleted and created again under the same name (new UID).
    kube_apiserver.request("DELETE", kube_apiserver.path_for(pending, with_name=True))
    kube_apiserver.create(pending)
    with pytest.raises(ClaimReplaced) as replaced:
        await reader.get(ref)
    assert ref.uid in str(replaced.value) and "replaced" in str(replaced.value)

    kube_apiserver.request("DELETE", kube_apiserver.path_for(pending, with_name=True))
    with pytest.raises(ClaimNotFound) as gone:
        await reader.get(ref)
    assert pending["metadata"]["name"] in str(gone.value)
    assert isinstance(gone.value, ClaimError)


async def test_malformed_config_names_the_field_claim_and_request(
    kube_apiserver: KubeCluster,
    allocator: Any,
    driver_api: Any,
    world: dict[str, Any],
    cleanup: list[dict[str, Any]],
) -> None:
    claim = make_claim(
        world, {"nic": None}, config=[opaque({"vlan": {"id": "not-a-number"}, "mtu": 9000})]
    )
    ref = create_allocated(kube_apiserver, allocator, world, cleanup, claim)
    got = await ClaimReader(driver_api, DRIVER).get(ref)
    [dev] = got.devices
    with pytest.raises(ConfigError) as err:
        parse_config(dev, NicConfig)
    e = err.value
    assert e.field == "vlan.id"
    assert e.request == "nic"
    assert e.claim == f"{ref.namespace}/{ref.name}"
    assert "vlan.id" in str(e) and ref.name in str(e) and "'nic'" in str(e)

    unknown = AllocatedDevice("nic", "p", "d", config={"mtu": 1500, "colour": "red"})
    with pytest.raises(ConfigError) as err2:
        parse_config(unknown, NicConfig)
    assert err2.value.field == "colour"


# ---------------------------------------------------------------- status writer


def status_devices(kube: KubeCluster, ref: ClaimRef) -> list[dict[str, Any]]:
    got = kube.request(
        "GET", f"/apis/resource.k8s.io/v1/namespaces/{ref.namespace}/resourceclaims/{ref.name}"
    )
    return list(got.get("status", {}).get("devices") or [])


async def test_status_server_side_apply_with_driver_field_manager_and_clear(
    kube_apiserver: KubeCluster,
    allocator: Any,
    driver_api: Any,
    world: dict[str, Any],
    plain_class: str,
    cleanup: list[dict[str, Any]],
) -> None:
    claim = make_claim(world, {"a": None, "b": None}, device_class=plain_class)
    ref = create_allocated(kube_apiserver, allocator, world, cleanup, claim, ("pod-s", "u-1"))
    claim_obj = await ClaimReader(driver_api, DRIVER).get(ref)
    a, b = sorted(claim_obj.devices, key=lambda d: d.request)
    writer = ClaimStatusWriter(driver_api, DRIVER)

    await writer.apply(
        ref,
        [
            DeviceStatus(
                a.pool,
                a.device,
                interface_name="net1",
                ips=["10.0.0.2/24", "fd00::2/64"],
                hardware_address="02:00:00:00:00:01",
                data={"vf": 3},
            ),
            DeviceStatus(b.pool, b.device, ready=False, reason="AttachFailed", message="no VF"),
        ],
    )

    got = kube_apiserver.get(claim)
    entries = {e["device"]: e for e in got["status"]["devices"]}
    ea, eb = entries[a.device], entries[b.device]
    assert (ea["driver"], ea["pool"]) == (DRIVER, world["node"])
    assert ea["networkData"] == {
        "interfaceName": "net1",
        "ips": ["10.0.0.2/24", "fd00::2/64"],
        "hardwareAddress": "02:00:00:00:00:01",
    }
    assert ea["data"] == {"vf": 3}
    [ready_a] = ea["conditions"]
    assert (ready_a["type"], ready_a["status"], ready_a["reason"]) == ("Ready", "True", "Ready")
    # ResourceClaims carry no metadata.generation (v1.37): then none is observed.
    assert ready_a.get("observedGeneration") == got["metadata"].get("generation")
    [ready_b] = eb["conditions"]
    assert (ready_b["status"], ready_b["reason"], ready_b["message"]) == (
        "False",
        "AttachFailed",
        "no VF",
    )
    assert "networkData" not in eb
    managers = {
        (m["manager"], m["operation"], m.get("subresource"))
        for m in got["metadata"]["managedFields"]
    }
    assert (DRIVER, "Apply", "status") in managers
    owned = next(m for m in got["metadata"]["managedFields"] if m["manager"] == DRIVER)
    assert "f:devices" in owned["fieldsV1"]["f:status"]
    assert "f:allocation" not in owned["fieldsV1"]["f:status"]

    # b recovers: only its condition changes; a's transition time is kept.
    await writer.apply(
        ref,
        [
            DeviceStatus(a.pool, a.device, interface_name="net1", ips=["10.0.0.2/24"]),
            DeviceStatus(b.pool, b.device),
        ],
    )
    entries = {e["device"]: e for e in status_devices(kube_apiserver, ref)}
    assert entries[a.device]["networkData"] == {"interfaceName": "net1", "ips": ["10.0.0.2/24"]}
    assert "data" not in entries[a.device]
    assert entries[a.device]["conditions"][0]["lastTransitionTime"] == ready_a["lastTransitionTime"]
    assert entries[b.device]["conditions"][0]["status"] == "True"

    # Only a: b's entry goes.
    await writer.apply(ref, [DeviceStatus(a.pool, a.device)])
    assert [e["device"] for e in status_devices(kube_apiserver, ref)] == [a.device]

    await writer.clear(ref)
    assert status_devices(kube_apiserver, ref) == []
    after = kube_apiserver.get(claim)
    assert after["status"]["allocation"]  # the scheduler's part is untouched
    assert after["status"]["reservedFor"][0]["name"] == "pod-s"


async def test_status_refuses_bad_input_and_gone_claims(
    kube_apiserver: KubeCluster,
    allocator: Any,
    driver_api: Any,
    world: dict[str, Any],
    cleanup: list[dict[str, Any]],
) -> None:
    claim = make_claim(world, {"nic": None})
    ref = create_allocated(kube_apiserver, allocator, world, cleanup, claim)
    [dev] = (await ClaimReader(driver_api, DRIVER).get(ref)).devices
    writer = ClaimStatusWriter(driver_api, DRIVER)

    with pytest.raises(InvalidArgument, match="not allocated"):
        await writer.apply(ref, [DeviceStatus(dev.pool, "eth-not-mine")])
    with pytest.raises(InvalidArgument, match=r"networkData\.ips"):
        await writer.apply(
            ref, [DeviceStatus(dev.pool, dev.device, ips=[f"10.0.0.{i}/24" for i in range(17)])]
        )
    with pytest.raises(InvalidArgument, match="data"):
        await writer.apply(ref, [DeviceStatus(dev.pool, dev.device, data={"x": "y" * 11000})])
    assert status_devices(kube_apiserver, ref) == []

    # This claim's allocation carries the class's opaque config, which makes
    # kube-apiserver v1.37.2 refuse server-side apply; the writer falls back to an
    # Update of /status under the same field manager.
    await writer.apply(ref, [DeviceStatus(dev.pool, dev.device, interface_name="net7")])
    [entry] = status_devices(kube_apiserver, ref)
    assert entry["networkData"] == {"interfaceName": "net7"}
    got = kube_apiserver.get(claim)
    assert (DRIVER, "Update", "status") in {
        (m["manager"], m["operation"], m.get("subresource"))
        for m in got["metadata"]["managedFields"]
    }
    assert got["status"]["allocation"]["devices"]["config"]  # untouched
    await writer.clear(ref)
    assert status_devices(kube_apiserver, ref) == []

    replaced = ClaimRef(ref.namespace, ref.name, str(uuid.uuid4()))
    with pytest.raises(ClaimReplaced):
        await writer.apply(replaced, [DeviceStatus(dev.pool, dev.device)])
    await writer.clear(replaced)  # tolerated

    missing = ClaimRef(ref.namespace, uniq("gone"), str(uuid.uuid4()))
    with pytest.raises(ClaimNotFound):
        await writer.apply(missing, [DeviceStatus(dev.pool, dev.device)])
    await writer.clear(missing)  # tolerated


async def test_status_needs_the_node_bound_identity(
    kube_apiserver: KubeCluster,
    allocator: Any,
    world: dict[str, Any],
    driver_api: Any,
    cleanup: list[dict[str, Any]],
) -> None:
    """deploy/rbac.yaml grants status.devices writes only for claims on the agent's
    own node ("associated-node:" verbs): a token not bound to a pod on that node is
    refused by the API server."""
    claim = make_claim(world, {"nic": None})
    ref = create_allocated(kube_apiserver, allocator, world, cleanup, claim)
    [dev] = (await ClaimReader(driver_api, DRIVER).get(ref)).devices
    unbound = await new_api_client(str(kube_apiserver.kubeconfig_for(DRIVER_RBAC)))
    try:
        with pytest.raises(ClaimError) as err:
            await ClaimStatusWriter(unbound, DRIVER).apply(
                ref, [DeviceStatus(dev.pool, dev.device)]
            )
        assert "forbidden" in str(err.value).lower()
    finally:
        await unbound.close()
    assert status_devices(kube_apiserver, ref) == []


async def test_event_about_a_claim(
    kube_apiserver: KubeCluster,
    driver_api: Any,
    world: dict[str, Any],
    cleanup: list[dict[str, Any]],
) -> None:
    claim = make_claim(world, {"nic": None})
    created = kube_apiserver.create(claim)
    cleanup.append(claim)
    ref = ClaimRef(world["namespace"], claim["metadata"]["name"], created["metadata"]["uid"])
    writer = ClaimStatusWriter(driver_api, DRIVER, instance="agent-on-test-node")

    await writer.event(ref, "PrepareFailed", "vlan 5000 is out of range " + "x" * 2000)

    events = kube_apiserver.request(
        "GET", f"/apis/events.k8s.io/v1/namespaces/{ref.namespace}/events"
    )["items"]
    [ev] = [e for e in events if e.get("regarding", {}).get("uid") == ref.uid]
    assert ev["reason"] == "PrepareFailed"
    assert ev["type"] == "Warning"
    assert ev["reportingController"] == DRIVER
    assert ev["reportingInstance"] == "agent-on-test-node"
    assert ev["note"].startswith("vlan 5000 is out of range")
    assert len(ev["note"]) <= 1024
    assert ev["regarding"]["kind"] == "ResourceClaim"
    with pytest.raises(InvalidArgument):
        await writer.event(ref, "not camel case", "x")
