"""kndkit's DRA plugin end to end, against the real peers only.

The kubelet harness (the kubelet's own generated clients) registers kndkit's
plugin process (``kubelet/kndkit_plugin.py``: KubeletPlugin + ClaimService +
StateStore + SlicePublisher, with a small test preparer) and drives
NodePrepareResources / NodeUnprepareResources on ResourceClaims that exist in
the real kube-apiserver, allocated by the scheduler's real allocator from the
ResourceSlices kndkit published.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from peers.kube_fixtures import Allocator, KubeAPIError, KubeCluster
from peers.kubelet_fixtures import (
    V1,
    V1BETA1,
    KndkitPlugin,
    KubeletHarness,
    KubeletHarnessError,
    unique_name,
)

RESOURCE = "/apis/resource.k8s.io/v1"


# --------------------------------------------------------------------------- world


@dataclass
class World:
    """A node, a namespace, a DeviceClass of a fresh driver, and helpers for claims."""

    api: KubeCluster
    allocator: Allocator
    harness: KubeletHarness
    driver: str
    node: str
    namespace: str
    device_class: str
    claims: list[dict[str, Any]] = field(default_factory=list)

    def slices(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.request(
            "GET",
            f"{RESOURCE}/resourceslices?fieldSelector=spec.driver={self.driver},"
            f"spec.nodeName={self.node}",
        )["items"]
        return items

    def published_devices(self) -> list[str]:
        return sorted(d["name"] for s in self.slices() for d in s["spec"].get("devices", []))

    def wait_devices(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            slices = self.slices()
            names = {d["name"] for s in slices for d in s["spec"].get("devices", [])}
            complete = all(s["spec"]["pool"]["resourceSliceCount"] == len(slices) for s in slices)
            if len(names) == n and complete:
                return slices
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(names)} of {n} devices published: {slices}")
            time.sleep(0.1)

    def claim(
        self,
        *,
        count: int = 1,
        config: dict[str, Any] | None = None,
        allocate: bool = True,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Create a claim for ``count`` devices of the class; allocate it (reserved
        for a pod) with the real allocator unless ``allocate=False``."""
        spec: dict[str, Any] = {
            "devices": {
                "requests": [
                    {
                        "name": "nic",
                        "exactly": {
                            "deviceClassName": self.device_class,
                            "allocationMode": "ExactCount",
                            "count": count,
                        },
                    }
                ]
            }
        }
        if config is not None:
            spec["devices"]["config"] = [
                {"requests": ["nic"], "opaque": {"driver": self.driver, "parameters": config}}
            ]
        obj = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name or unique_name("claim"), "namespace": self.namespace},
            "spec": spec,
        }
        created: dict[str, Any] = self.api.create(obj)
        self.claims.append(created)
        if allocate:
            self.allocate([created])
            created = self.api.get(created)
        return created

    def allocate(self, claims: list[dict[str, Any]]) -> None:
        res = self.allocator.allocate(
            self.node, claims, pod=(unique_name("pod"), str(uuid.uuid4()))
        )
        assert res.allocated, (res.json, res.stderr)

    def delete_claim(self, claim: dict[str, Any]) -> None:
        path = self.api.path_for(claim, with_name=True)
        with contextlib.suppress(KubeAPIError):
            self.api.request(
                "PATCH",
                path,
                {"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json",
            )
        self.api.delete(claim, grace_period_s=0)

    def records(self, plugin: KndkitPlugin) -> dict[str, dict[str, Any]]:
        return {r["uid"]: r for r in plugin.call("records")["records"]}


@pytest.fixture
def world(
    kube_apiserver: KubeCluster, allocator: Allocator, kubelet_harness: KubeletHarness
) -> Iterator[World]:
    node = kubelet_harness.node_name
    kube_apiserver.create_node(node)
    ns = unique_name("ns")
    kube_apiserver.ensure_namespace(ns)
    driver = f"{unique_name('knd')}.kndkit.test"
    cls = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": f"{unique_name('nics')}"},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
    }
    kube_apiserver.create(cls)
    w = World(
        kube_apiserver,
        allocator,
        kubelet_harness,
        driver,
        node,
        ns,
        cls["metadata"]["name"],
    )
    try:
        yield w
    finally:
        for c in w.claims:
            with contextlib.suppress(Exception):
                w.delete_claim(c)
        with contextlib.suppress(Exception):
            for s in w.slices():
                kube_apiserver.delete(s)
        with contextlib.suppress(Exception):
            kube_apiserver.delete(cls)
        with contextlib.suppress(Exception):
            kube_apiserver.delete(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            )
        with contextlib.suppress(Exception):
            kube_apiserver.delete_node(node)


@pytest.fixture
def start_plugin(
    world: World, kndkit_dra_plugin: Callable[..., KndkitPlugin]
) -> Callable[..., KndkitPlugin]:
    """Start kndkit's plugin for the world's driver and wait until it is registered."""

    def start(harness: KubeletHarness | None = None, **kw: Any) -> KndkitPlugin:
        h = harness or world.harness
        kw.setdefault("kubeconfig", world.api.kubeconfig_admin)
        p = kndkit_dra_plugin(h, driver=world.driver, **kw)
        p.wait_event("registered")
        return p

    return start


def _ref(claim: dict[str, Any]) -> dict[str, str]:
    m = claim["metadata"]
    return {"namespace": m["namespace"], "name": m["name"], "uid": m["uid"]}


def _uid(claim: dict[str, Any]) -> str:
    return str(claim["metadata"]["uid"])


def _allocated(claim: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = claim["status"]["allocation"]["devices"]["results"]
    return results


def _expected_devices(claim: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "request_names": [r["request"]],
            "pool_name": r["pool"],
            "device_name": r["device"],
            "cdi_device_ids": [f"kndkit.test/net={_uid(claim)}-{r['device']}"],
        }
        for r in _allocated(claim)
    ]


# --------------------------------------------------------------------------- basics


def test_prepare_and_unprepare_allocated_claim(world: World, start_plugin: Any) -> None:
    plugin = start_plugin()
    assert plugin.call("publish", devices=4)["stats"]["writes"] == 1
    world.wait_devices(4)
    claim = world.claim(count=2, config={"interfaceName": "net7", "mtu": 9000})
    uid = _uid(claim)
    assert {r["pool"] for r in _allocated(claim)} == {world.node}

    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["api"] == V1
    assert out["response"] == {"claims": {uid: {"devices": _expected_devices(claim), "error": ""}}}
    rec = world.records(plugin)[uid]
    assert rec["phase"] == "prepared"
    assert sorted(rec["devices"]) == sorted(r["device"] for r in _allocated(claim))
    assert {p["ifname"] for p in rec["plans"]} == {"net7"}
    assert {p["mtu"] for p in rec["plans"]} == {9000}
    assert rec["pod_uids"] == [claim["status"]["reservedFor"][0]["uid"]]
    # Idempotent, over v1beta1 too; the preparer ran once.
    again = world.harness.prepare(world.driver, [_ref(claim)], api="v1beta1")
    assert again["api"] == V1BETA1
    assert again["response"]["claims"][uid]["error"] == ""
    assert len(again["response"]["claims"][uid]["devices"]) == 2
    assert len(plugin.events_named("prepare_claim")) == 1

    out = world.harness.unprepare(world.driver, [_ref(claim)])
    assert out["response"] == {"claims": {uid: {"error": ""}}}
    assert world.records(plugin) == {}
    ev = plugin.wait_event("unprepare_claim")
    assert ev["uid"] == uid and ev["plans"] == rec["plans"]
    # Unprepare again: nothing left to do, still a success.
    out = world.harness.unprepare(world.driver, [_ref(claim)])
    assert out["response"] == {"claims": {uid: {"error": ""}}}
    assert len(plugin.events_named("unprepare_claim")) == 1


def test_device_status_written_and_cleared(world: World, start_plugin: Any) -> None:
    plugin = start_plugin(status=True)
    plugin.call("publish", devices=2)
    world.wait_devices(2)
    claim = world.claim(config={"interfaceName": "net3"})
    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)]["error"] == ""
    status = world.api.get(claim)["status"]
    assert "devices" in status, plugin.logs()
    assert [d["networkData"]["interfaceName"] for d in status["devices"]] == ["net3"]
    assert status["allocation"] == claim["status"]["allocation"]
    world.harness.unprepare(world.driver, [_ref(claim)])
    assert not world.api.get(claim)["status"].get("devices"), plugin.logs()


def test_errors_are_per_claim_and_persist_nothing(world: World, start_plugin: Any) -> None:
    plugin = start_plugin(status=True)
    plugin.call("publish", devices=8)
    world.wait_devices(8)
    good = world.claim()
    unallocated = world.claim(allocate=False)
    replaced = world.claim()
    stale = {**_ref(replaced), "uid": str(uuid.uuid4())}
    malformed = world.claim(config={"mtu": "jumbo"})
    unknown_field = world.claim(config={"vlan": 7})
    missing = {"namespace": world.namespace, "name": "no-such-claim", "uid": str(uuid.uuid4())}

    refs = [_ref(good), _ref(unallocated), stale, _ref(malformed), _ref(unknown_field), missing]
    out = world.harness.prepare(world.driver, refs)
    claims = out["response"]["claims"]
    assert set(claims) == {r["uid"] for r in refs}
    assert claims[_uid(good)]["error"] == ""
    assert claims[_uid(good)]["devices"] == _expected_devices(good)

    err = claims[_uid(unallocated)]["error"]
    assert "not allocated" in err and unallocated["metadata"]["name"] in err
    err = claims[stale["uid"]]["error"]
    assert "replaced" in err and replaced["metadata"]["name"] in err
    err = claims[_uid(malformed)]["error"]
    assert "mtu" in err and malformed["metadata"]["name"] in err, err
    err = claims[_uid(unknown_field)]["error"]
    assert "vlan" in err, err
    assert "not found" in claims[missing["uid"]]["error"]
    for r in refs[1:]:
        assert claims[r["uid"]]["devices"] == []

    # Only the good claim is in the store; the preparer was asked once.
    assert set(world.records(plugin)) == {_uid(good)}
    assert [e["uid"] for e in plugin.events_named("prepare_claim")] == [_uid(good)]
    # The malformed config left an Event on its claim.
    events = world.api.request(
        "GET",
        f"/api/v1/namespaces/{world.namespace}/events?fieldSelector="
        f"involvedObject.name={malformed['metadata']['name']}",
    )["items"]
    assert any("mtu" in e.get("message", "") for e in events), events

    # Unprepare of every one of them succeeds (unknown claims are not an error).
    out = world.harness.unprepare(world.driver, refs)
    assert all(v == {"error": ""} for v in out["response"]["claims"].values())
    assert world.records(plugin) == {}


def test_preparer_failures(world: World, start_plugin: Any) -> None:
    plugin = start_plugin(status=True, durable_marks=True)
    plugin.call("publish", devices=4)
    world.wait_devices(4)
    broken = world.claim(config={"failPrepare": True})
    flaky = world.claim(config={"failUnprepareOnce": True})

    out = world.harness.prepare(world.driver, [_ref(broken), _ref(flaky)])
    claims = out["response"]["claims"]
    assert "injected failure preparing" in claims[_uid(broken)]["error"]
    assert claims[_uid(broken)]["devices"] == []
    assert claims[_uid(flaky)]["error"] == ""
    assert set(world.records(plugin)) == {_uid(flaky)}  # nothing left of the failed one
    events = world.api.request(
        "GET",
        f"/api/v1/namespaces/{world.namespace}/events?fieldSelector="
        f"involvedObject.name={broken['metadata']['name']}",
    )["items"]
    assert any("injected failure" in e.get("message", "") for e in events), events

    # A failed unprepare is a per-claim error; the record stays (UNPREPARING) and
    # the kubelet's retry finishes it.
    out = world.harness.unprepare(world.driver, [_ref(flaky)])
    assert "injected failure unpreparing" in out["response"]["claims"][_uid(flaky)]["error"]
    assert world.records(plugin)[_uid(flaky)]["phase"] == "unpreparing"
    out = world.harness.unprepare(world.driver, [_ref(flaky)])
    assert out["response"]["claims"][_uid(flaky)] == {"error": ""}
    assert world.records(plugin) == {}
    assert len(plugin.events_named("unprepare_claim")) == 2


def test_claim_deleted_before_unprepare(world: World, start_plugin: Any) -> None:
    plugin = start_plugin(status=True)
    plugin.call("publish", devices=2)
    world.wait_devices(2)
    claim = world.claim()
    world.harness.prepare(world.driver, [_ref(claim)])
    world.delete_claim(claim)
    with pytest.raises(KubeAPIError) as gone:
        for _ in range(50):
            world.api.get(claim)
            time.sleep(0.1)
    assert gone.value.status == 404

    out = world.harness.unprepare(world.driver, [_ref(claim)])
    assert out["response"] == {"claims": {_uid(claim): {"error": ""}}}
    assert world.records(plugin) == {}
    assert plugin.wait_event("unprepare_claim")["uid"] == _uid(claim)


# --------------------------------------------------------------------------- restarts


def test_kubelet_restart_registers_the_plugin_again(world: World, start_plugin: Any) -> None:
    plugin = start_plugin()
    plugin.call("publish", devices=2)
    world.wait_devices(2)
    claim = world.claim()
    world.harness.prepare(world.driver, [_ref(claim)])

    world.harness.restart()
    plugin_info = world.harness.wait_registered(world.driver)
    assert plugin_info["endpoint"] == plugin.ready["endpoint"]
    # The same process answers the new kubelet, with the state it had.
    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)]["devices"] == _expected_devices(claim)
    assert len(plugin.events_named("prepare_claim")) == 1
    out = world.harness.unprepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)] == {"error": ""}


def test_plugin_killed_between_prepare_and_unprepare(world: World, start_plugin: Any) -> None:
    first = start_plugin()
    first.call("publish", devices=4)
    world.wait_devices(4)
    claim = world.claim(count=2, config={"interfaceName": "fast0"})
    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)]["error"] == ""
    plans = world.records(first)[_uid(claim)]["plans"]
    first.kill()  # SIGKILL: sockets stay behind, nothing is flushed

    second = start_plugin(state=first.state)
    assert second.ready["replay"] == {"resolved": [], "failed": {}}
    # Prepared state survived: prepare is answered from the store...
    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)]["devices"] == _expected_devices(claim)
    assert second.events_named("prepare_claim") == []
    # ...and unprepare hands the preparer the plans the killed process made.
    out = world.harness.unprepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)] == {"error": ""}
    ev = second.wait_event("unprepare_claim")
    assert ev["uid"] == _uid(claim) and ev["plans"] == plans
    assert world.records(second) == {}


def test_interrupted_steps_are_replayed_at_start(world: World, start_plugin: Any) -> None:
    plugin = start_plugin()
    plugin.call("publish", devices=2)
    world.wait_devices(2)
    claim = world.claim()
    world.harness.prepare(world.driver, [_ref(claim)])
    state = plugin.state
    plugin.kill()
    # What a crash in the middle of the next steps leaves behind: one claim in
    # UNPREPARING, one in PREPARING (written with sqlite3 itself).
    db = sqlite3.connect(state)
    db.execute("UPDATE claims SET phase = 'unpreparing' WHERE uid = ?", (_uid(claim),))
    db.execute(
        "INSERT INTO claims VALUES ('half', ?, 'half-done', 'preparing', '[]', 'null', '[]', 1, 1)",
        (world.namespace,),
    )
    db.commit()
    db.close()

    again = start_plugin(state=state)
    assert sorted(again.ready["replay"]["resolved"]) == sorted([_uid(claim), "half"])
    assert again.ready["replay"]["failed"] == {}
    assert {e["uid"] for e in again.events_named("unprepare_claim")} == {_uid(claim), "half"}
    assert world.records(again) == {}
    assert again.call("replay")["resolved"] == []  # nothing left: replay is idempotent
    # The kubelet's next prepare does the work again.
    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)]["devices"] == _expected_devices(claim)
    assert len(again.events_named("prepare_claim")) == 1


def test_rolling_update_two_instances_share_state(world: World, start_plugin: Any) -> None:
    old = start_plugin(rolling_update_uid="old-1")
    old.call("publish", devices=2)
    world.wait_devices(2)
    new = start_plugin(rolling_update_uid="new-2", state=old.state, publisher=False)
    assert old.ready["endpoint"] != new.ready["endpoint"]
    plugins = world.harness.list_plugins()
    assert [p["endpoint"] for p in plugins] == [old.ready["endpoint"], new.ready["endpoint"]]

    claim = world.claim()
    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["endpoint"] == new.ready["endpoint"]
    assert out["response"]["claims"][_uid(claim)]["error"] == ""
    assert [e["uid"] for e in new.events_named("prepare_claim")] == [_uid(claim)]

    # The new instance goes away; the kubelet unprepares on the old one, which
    # finds the claim in the shared store.
    new.stop()
    world.harness.wait_event(
        "deregistered", driver=world.driver, endpoint=new.ready["endpoint"], timeout=30
    )
    out = world.harness.unprepare(world.driver, [_ref(claim)])
    assert out["endpoint"] == old.ready["endpoint"]
    assert out["response"]["claims"][_uid(claim)] == {"error": ""}
    assert old.wait_event("unprepare_claim")["uid"] == _uid(claim)
    assert world.records(old) == {}


# --------------------------------------------------------------------------- slices


def test_1024_devices_published_as_8_slices_all_allocatable(
    world: World, start_plugin: Any
) -> None:
    plugin = start_plugin()
    res = plugin.call("publish", devices=1024)
    assert res["stats"]["creates"] == 8 and res["stats"]["writes"] == 8
    slices = world.wait_devices(1024)
    assert len(slices) >= 8
    pools = {(s["spec"]["pool"]["name"], s["spec"]["pool"]["generation"]) for s in slices}
    assert len(pools) == 1
    assert all(s["spec"]["pool"]["resourceSliceCount"] == len(slices) for s in slices)
    owner = slices[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Node", world.node)
    # Nothing changed: publishing again writes nothing.
    assert plugin.call("publish", devices=1024)["stats"]["writes"] == 0

    # 32 claims of 32 devices (the API's limit of results per claim) take every
    # device, through the real allocator; then kndkit prepares all 1,024 at once.
    claims = [world.claim(count=32, allocate=False) for _ in range(32)]
    world.allocate(claims)
    claims = [world.api.get(c) for c in claims]
    taken = [r["device"] for c in claims for r in _allocated(c)]
    assert sorted(taken) == world.published_devices()
    assert len(set(taken)) == 1024
    out = world.harness.prepare(world.driver, [_ref(c) for c in claims], timeout=120)
    got = out["response"]["claims"]
    assert sum(len(v["devices"]) for v in got.values()) == 1024
    assert all(v["error"] == "" for v in got.values())
    assert len(world.records(plugin)) == 32
    out = world.harness.unprepare(world.driver, [_ref(c) for c in claims], timeout=120)
    assert all(v == {"error": ""} for v in out["response"]["claims"].values())


def test_wiped_slices_are_recreated(world: World, start_plugin: Any) -> None:
    plugin = start_plugin()
    plugin.call("publish", devices=200)
    before = world.wait_devices(200)
    assert len(before) == 2
    # The kubelet deletes every slice of its node when it starts.
    world.api.request(
        "DELETE",
        f"{RESOURCE}/resourceslices?fieldSelector=spec.nodeName={world.node}",
    )
    after = world.wait_devices(200)
    assert {s["metadata"]["uid"] for s in after}.isdisjoint({s["metadata"]["uid"] for s in before})
    assert world.published_devices() == [f"dev-{i:04d}" for i in range(200)]
    # And the recreated pool is allocatable.
    claim = world.claim()
    out = world.harness.prepare(world.driver, [_ref(claim)])
    assert out["response"]["claims"][_uid(claim)]["error"] == ""
    stats = plugin.call("stats")["stats"]
    assert stats["creates"] >= 4


# --------------------------------------------------------------------------- the Go anchors


def test_reference_driver_publishes_and_harness_benches(world: World, ref_dra_driver: Any) -> None:
    """The anchors of benches/test_dra_*.py: the upstream helper's publishing, the
    harness's timed prepare/unprepare loop."""
    drv = ref_dra_driver(
        world.harness,
        world.driver,
        kubeconfig=world.api.kubeconfig_admin,
        publish_devices=300,
    )
    world.harness.wait_registered(drv.driver)
    ev = drv.wait_event("publishing")
    assert ev["devices"] == 300 and ev["time_ns"] > 0
    slices = world.wait_devices(300)
    assert len(slices) == 3
    claim = world.claim(count=3)
    res = world.harness.bench(drv.driver, [_ref(claim)], 5, warmup=1)
    assert res["claims"] == 1 and res["api"] == V1
    assert len(res["prepare_ns"]) == 5 and len(res["unprepare_ns"]) == 5
    assert all(isinstance(n, int) and n > 0 for n in res["prepare_ns"] + res["unprepare_ns"])
    res = world.harness.bench(drv.driver, [_ref(claim)], 2, api="v1beta1")
    assert res["api"] == V1BETA1 and len(res["prepare_ns"]) == 2
    # A failing claim fails the bench instead of timing errors.
    unallocated = world.claim(allocate=False)
    with pytest.raises(KubeletHarnessError) as err:
        world.harness.bench(drv.driver, [_ref(unallocated)], 1)
    assert "not allocated" in err.value.message

    drv.republish()
    drv.wait_event("publishing", count=2)
    assert len(world.wait_devices(300)) == 3
