"""kndkit.k8s.SlicePublisher against the real kube-apiserver and the scheduler's allocator.

The publisher runs with the driver's own least-privilege identity (deploy/rbac.yaml,
a ServiceAccount token from the TokenRequest API); the checks read the server as
the admin. Every test uses its own Node, so tests of other modules sharing the
session's apiserver are not disturbed.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kndkit.devices import Device
from kndkit.errors import InvalidArgument
from kndkit.k8s import (
    ResourceAPIUnavailable,
    SlicePublisher,
    check_resource_api,
    new_api_client,
)
from peers.kube_fixtures import (
    ALLOC_OK,
    ALLOC_UNALLOCATED,
    DRIVER_RBAC,
    KubeAPIError,
    KubeCluster,
)

pytestmark = pytest.mark.slow

DRIVER = "netdev.kndkit.dev"  # the driver name deploy/rbac.yaml grants
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def uniq(what: str) -> str:
    return f"k8p-{what}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def nics(n: int, **extra: Any) -> list[Device]:
    return [
        Device(
            f"nic-{i:04d}", {"ifName": f"eth{i}", "numaNode": i % 2, "rdma": i % 3 == 0, **extra}
        )
        for i in range(n)
    ]


def slices_of(kube: KubeCluster, node: str) -> list[dict[str, Any]]:
    """The node's slices of DRIVER, by name."""
    got = kube.request("GET", f"{SLICES}?fieldSelector=spec.nodeName={node},spec.driver={DRIVER}")
    return sorted(got["items"], key=lambda s: s["metadata"]["name"])


def published_devices(slices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in slices:
        for d in s["spec"].get("devices") or []:
            assert d["name"] not in out, f"device {d['name']} published twice"
            out[d["name"]] = d
    return out


def assert_pool_consistent(slices: list[dict[str, Any]], node: str) -> int:
    """One pool named after the node, one generation, the right count, owned by
    the Node; returns the generation."""
    assert slices, "no slices"
    node_uid = None
    gens = {s["spec"]["pool"]["generation"] for s in slices}
    assert len(gens) == 1, f"mixed generations {gens}"
    for s in slices:
        assert s["spec"]["pool"]["name"] == node
        assert s["spec"]["nodeName"] == node
        assert s["spec"]["driver"] == DRIVER
        assert s["spec"]["pool"]["resourceSliceCount"] == len(slices)
        [owner] = s["metadata"]["ownerReferences"]
        assert (owner["apiVersion"], owner["kind"], owner["name"]) == ("v1", "Node", node)
        assert owner.get("controller") is True
        node_uid = node_uid or owner["uid"]
        assert owner["uid"] == node_uid
    return int(gens.pop())


async def eventually(check: Any, timeout: float = 60.0) -> Any:
    """Polls ``check()`` (sync) until it returns a truthy value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = check()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout:.0f} s; last: {got!r}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def driver_kubeconfig(kube_apiserver: KubeCluster) -> pathlib.Path:
    return kube_apiserver.kubeconfig_for(DRIVER_RBAC)


@pytest.fixture
def node(kube_apiserver: KubeCluster) -> Iterator[str]:
    name = uniq("node")
    kube_apiserver.create_node(name)
    try:
        yield name
    finally:
        # No garbage collector runs in the test control plane: delete the slices too.
        kube_apiserver.request("DELETE", f"{SLICES}?fieldSelector=spec.nodeName={name}", timeout=60)
        kube_apiserver.delete_node(name)


@pytest.fixture
async def driver_api(driver_kubeconfig: pathlib.Path) -> AsyncIterator[Any]:
    api = await new_api_client(str(driver_kubeconfig))
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def publisher(driver_api: Any, node: str) -> AsyncIterator[SlicePublisher]:
    pub = SlicePublisher(driver_api, DRIVER, node, min_interval=0.2)
    try:
        yield pub
    finally:
        await pub.stop()


# ---------------------------------------------------------------- publishing


async def test_publish_small_set_then_republish_makes_no_write(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    devices = nics(3)
    stats = await publisher.publish(devices)
    assert (stats.creates, stats.updates, stats.deletes) == (1, 0, 0)

    slices = slices_of(kube_apiserver, node)
    assert len(slices) == 1
    assert assert_pool_consistent(slices, node) == 1
    node_uid = kube_apiserver.request("GET", f"/api/v1/nodes/{node}")["metadata"]["uid"]
    assert slices[0]["metadata"]["ownerReferences"][0]["uid"] == node_uid
    got = published_devices(slices)
    assert sorted(got) == ["nic-0000", "nic-0001", "nic-0002"]
    assert got["nic-0001"]["attributes"] == {
        "ifName": {"string": "eth1"},
        "numaNode": {"int": 1},
        "rdma": {"bool": False},
    }

    again = await publisher.publish(nics(3))
    assert again.writes == 0
    assert (
        slices_of(kube_apiserver, node)[0]["metadata"]["resourceVersion"]
        == (slices[0]["metadata"]["resourceVersion"])
    )
    assert publisher.stats.writes == 1


@pytest.fixture
def namespace(kube_apiserver: KubeCluster) -> Iterator[str]:
    name = uniq("ns")
    kube_apiserver.ensure_namespace(name)
    try:
        yield name
    finally:
        kube_apiserver.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@pytest.fixture
def device_class(kube_apiserver: KubeCluster) -> Iterator[str]:
    name = uniq("class")
    obj = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    kube_apiserver.create(obj)
    try:
        yield name
    finally:
        kube_apiserver.delete(obj)


def _claim(name: str, namespace: str, device_class: str, count: int) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "devices": {
                "requests": [
                    {"name": "nics", "exactly": {"deviceClassName": device_class, "count": count}}
                ]
            }
        },
    }


def _drop_claims(kube: KubeCluster, claims: list[dict[str, Any]]) -> None:
    for c in claims:
        path = kube.path_for(c, with_name=True)
        try:
            kube.request(
                "PATCH",
                path,
                {"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json",
            )
            kube.request("DELETE", path + "?gracePeriodSeconds=0")
        except KubeAPIError as e:
            if e.status != 404:
                raise


async def test_1024_devices_in_8_slices_all_allocatable(
    kube_apiserver: KubeCluster,
    allocator: Any,
    publisher: SlicePublisher,
    node: str,
    namespace: str,
    device_class: str,
) -> None:
    devices = nics(1024)
    stats = await publisher.publish(devices)
    slices = slices_of(kube_apiserver, node)
    assert len(slices) >= 8
    assert stats.writes == len(slices) <= 9
    assert all(len(s["spec"]["devices"]) <= 128 for s in slices)
    assert assert_pool_consistent(slices, node) == 1
    assert sorted(published_devices(slices)) == [d.name for d in devices]
    assert (await publisher.publish(devices)).writes == 0

    # The scheduler's allocator uses every device of the pool: 32 claims of 32
    # devices (the API's limit of results per claim) take all 1,024.
    claims = [_claim(uniq(f"c{i}"), namespace, device_class, 32) for i in range(32)]
    extra = _claim(uniq("extra"), namespace, device_class, 1)
    try:
        for c in [*claims, extra]:
            kube_apiserver.create(c)
        res = allocator.allocate(node, claims)
        assert res.returncode == ALLOC_OK, (res.json, res.stderr[-2000:])
        allocated: set[str] = set()
        for c in claims:
            got = kube_apiserver.get(c)
            results = got["status"]["allocation"]["devices"]["results"]
            assert {(r["driver"], r["pool"]) for r in results} == {(DRIVER, node)}
            allocated |= {r["device"] for r in results}
        assert allocated == {d.name for d in devices}
        more = allocator.allocate(node, [extra])
        assert more.returncode == ALLOC_UNALLOCATED, (more.json, more.stderr[-2000:])
    finally:
        _drop_claims(kube_apiserver, [*claims, extra])


async def test_one_changed_device_rewrites_one_slice(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    devices = nics(300)
    await publisher.publish(devices)
    before = {s["metadata"]["name"]: s for s in slices_of(kube_apiserver, node)}
    assert len(before) == 3
    gen = assert_pool_consistent(list(before.values()), node)

    changed = list(devices)
    changed[200] = Device("nic-0200", {"ifName": "renamed0", "numaNode": 1})
    stats = await publisher.publish(changed)
    assert (stats.creates, stats.updates, stats.deletes) == (0, 1, 0)
    after = {s["metadata"]["name"]: s for s in slices_of(kube_apiserver, node)}
    assert assert_pool_consistent(list(after.values()), node) == gen
    rewritten = [
        n
        for n in after
        if after[n]["metadata"]["resourceVersion"] != before[n]["metadata"]["resourceVersion"]
    ]
    assert len(rewritten) == 1
    assert published_devices(list(after.values()))["nic-0200"]["attributes"]["ifName"] == {
        "string": "renamed0"
    }

    # One more device fits in the slice with room: still one write.
    grown = [*changed, Device("nic-9999", {"ifName": "new0"})]
    stats = await publisher.publish(grown)
    assert stats.writes == 1
    # One device fewer: one write.
    stats = await publisher.publish(grown[1:])
    assert stats.writes == 1
    final = slices_of(kube_apiserver, node)
    assert assert_pool_consistent(final, node) == gen
    assert sorted(published_devices(final)) == sorted(d.name for d in grown[1:])


async def test_shrink_deletes_obsolete_slices_and_foreign_pools(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    await publisher.publish(nics(1024))
    old_gen = assert_pool_consistent(slices_of(kube_apiserver, node), node)
    # A slice of an old pool of this driver on this node (say, an earlier version
    # of the driver named its pool differently): obsolete too.
    stale = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": uniq("stale")},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": f"{node}-old", "generation": 7, "resourceSliceCount": 1},
            "devices": [{"name": "old0"}],
        },
    }
    kube_apiserver.create(stale)

    stats = await publisher.publish(nics(100))
    slices = slices_of(kube_apiserver, node)
    assert len(slices) == 1
    assert stats.deletes == 8  # 7 slices of the pool + the foreign one
    assert stats.updates + stats.creates == 1
    assert assert_pool_consistent(slices, node) > old_gen
    assert sorted(published_devices(slices)) == [f"nic-{i:04d}" for i in range(100)]

    stats = await publisher.publish([])
    assert stats.deletes == 1
    assert slices_of(kube_apiserver, node) == []


async def test_invalid_device_is_refused_locally_and_nothing_is_written(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    bad = [*nics(2), Device("nic-bad", {"ifName": "x" * 65})]
    with pytest.raises(InvalidArgument) as err:
        await publisher.publish(bad)
    assert "nic-bad" in str(err.value) and "ifName" in str(err.value)
    with pytest.raises(InvalidArgument, match="bad-name"):
        publisher.update([Device("eth0", {"bad-name": 1})])
    with pytest.raises(InvalidArgument, match="twice"):
        publisher.update([Device("eth0"), Device("eth0")])
    assert slices_of(kube_apiserver, node) == []
    assert publisher.stats.writes == 0


async def test_background_updates_are_coalesced_and_steady_state_writes_nothing(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    await publisher.start()
    for n in range(1, 11):
        publisher.update(nics(n))  # no await in between: one publish of the last
    await publisher.wait_idle()
    assert publisher.stats.writes == 1
    assert sorted(published_devices(slices_of(kube_apiserver, node))) == [d.name for d in nics(10)]
    # Nothing changes: updates of the same set, and time passing, write nothing.
    for _ in range(3):
        publisher.update(nics(10))
        await publisher.wait_idle()
    await asyncio.sleep(3 * publisher.min_interval)
    await publisher.wait_idle()
    assert publisher.stats.writes == 1
    # Someone else touches a slice without changing what the driver owns.
    [s] = slices_of(kube_apiserver, node)
    kube_apiserver.request(
        "PATCH",
        f"{SLICES}/{s['metadata']['name']}",
        {"metadata": {"labels": {"touched": "yes"}}},
        content_type="application/merge-patch+json",
    )
    await asyncio.sleep(3 * publisher.min_interval)
    await publisher.wait_idle()
    assert publisher.stats.writes == 1


async def test_publish_supersedes_a_pending_update(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    await publisher.start()
    publisher.update(nics(3))
    stats = await publisher.publish(nics(4))  # before the background task ran
    await asyncio.wait_for(publisher.wait_idle(), 60)
    assert sorted(published_devices(slices_of(kube_apiserver, node))) == [d.name for d in nics(4)]
    assert stats.writes == publisher.stats.writes == 1


async def test_slice_deleted_by_someone_else_is_recreated(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    await publisher.start()
    publisher.update(nics(300))
    await publisher.wait_idle()
    before = slices_of(kube_apiserver, node)
    gen = assert_pool_consistent(before, node)
    victim = before[1]["metadata"]["name"]
    writes = publisher.stats.writes

    kube_apiserver.request("DELETE", f"{SLICES}/{victim}")

    def back() -> Any:
        now = slices_of(kube_apiserver, node)
        return now if len(now) == len(before) else None

    after = await eventually(back)
    await publisher.wait_idle()
    after = slices_of(kube_apiserver, node)
    # The same slice comes back, with the same devices: one write, no new generation.
    assert [s["metadata"]["name"] for s in after] == [s["metadata"]["name"] for s in before]
    assert assert_pool_consistent(after, node) == gen
    assert published_devices(after) == published_devices(before)
    assert publisher.stats.writes == writes + 1


async def test_all_slices_wiped_are_recreated(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    """What the kubelet does to a node's slices when it restarts."""
    await publisher.start()
    publisher.update(nics(1024))
    await publisher.wait_idle()
    before = slices_of(kube_apiserver, node)
    gen = assert_pool_consistent(before, node)

    kube_apiserver.request("DELETE", f"{SLICES}?fieldSelector=spec.nodeName={node}")

    def back() -> Any:
        now = slices_of(kube_apiserver, node)
        if len(now) != len(before):
            return None
        return now if len(published_devices(now)) == 1024 else None

    await eventually(back)
    await publisher.wait_idle()
    after = slices_of(kube_apiserver, node)
    assert assert_pool_consistent(after, node) > gen
    assert published_devices(after) == published_devices(before)


async def test_write_conflict_is_retried(
    kube_apiserver: KubeCluster, publisher: SlicePublisher, node: str
) -> None:
    """A stale view (the slice changed after it was read) makes the update fail with
    409 Conflict; the publisher reads again and succeeds."""
    await publisher.publish(nics(5))
    real_list = publisher._list
    stale = await real_list()
    [s] = slices_of(kube_apiserver, node)
    kube_apiserver.request(
        "PATCH",
        f"{SLICES}/{s['metadata']['name']}",
        {"metadata": {"labels": {"touched": "yes"}}},
        content_type="application/merge-patch+json",
    )
    calls = 0

    async def list_once_stale() -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return stale if calls == 1 else await real_list()

    publisher._list = list_once_stale  # type: ignore[method-assign]
    stats = await publisher.publish(nics(6))
    assert calls == 2
    assert stats.writes == 1
    [s] = slices_of(kube_apiserver, node)
    assert len(s["spec"]["devices"]) == 6
    assert s["metadata"]["labels"] == {"touched": "yes"}  # the other writer's change kept


async def test_missing_node_is_a_clear_error(driver_api: Any) -> None:
    from kndkit.k8s import PublishError

    pub = SlicePublisher(driver_api, DRIVER, uniq("no-such-node"))
    with pytest.raises(PublishError, match="no-such-node"):
        await pub.start()


# ---------------------------------------------------------------- a server without v1


@pytest.fixture(scope="module")
def apiserver_without_v1(kube_peers_built: Any) -> Iterator[KubeCluster]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="knd-nov1-"))
    cluster = KubeCluster.start(
        workdir,
        extra_args=["--runtime-config=resource.k8s.io/v1=false,resource.k8s.io/v1beta2=true"],
    )
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_server_without_resource_v1_is_a_clear_error(
    apiserver_without_v1: KubeCluster,
) -> None:
    api = await new_api_client(str(apiserver_without_v1.kubeconfig_admin))
    try:
        with pytest.raises(ResourceAPIUnavailable) as err:
            await check_resource_api(api)
        text = str(err.value)
        assert "resource.k8s.io/v1" in text
        assert "serves only resource.k8s.io/v1beta2" in text
        apiserver_without_v1.create_node("n1")
        with pytest.raises(ResourceAPIUnavailable):
            await SlicePublisher(api, DRIVER, "n1").start()
    finally:
        await api.close()


async def test_check_resource_api_passes_on_the_real_server(driver_api: Any) -> None:
    await check_resource_api(driver_api)
