"""The kubelet harness proved against the upstream DRA plugin helper.

The reference driver (python/kndkit/testing/peers/kubelet/cmd/ref-driver) is built on
``k8s.io/dynamic-resource-allocation/kubeletplugin``; the harness uses the
``k8s.io/kubelet`` generated clients. If they agree here, a Python plugin that
the harness accepts speaks what the real kubelet speaks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from typing import Any

import pytest

from peers.kubelet_fixtures import (
    HEALTH_V1,
    HEALTH_V1ALPHA1,
    V1,
    V1BETA1,
    KubeletHarnessError,
    unique_name,
)

# --------------------------------------------------------------------------- registration


def test_registers_reference_driver_with_v1(kubelet_harness, ref_dra_driver):
    drv = ref_dra_driver(kubelet_harness)
    plugin = kubelet_harness.wait_registered(drv.driver)

    assert plugin["driver"] == drv.driver
    assert plugin["endpoint"] == str(drv.endpoint)
    assert plugin["version"] == V1
    assert plugin["supported_versions"] == [V1, V1BETA1]
    assert plugin["health"] is False
    ev = kubelet_harness.wait_event("registered", driver=drv.driver)
    assert ev["socket"] == str(kubelet_harness.registry_dir / f"{drv.driver}-reg.sock")
    assert [p["driver"] for p in kubelet_harness.list_plugins()] == [drv.driver]


def test_driver_stop_deletes_socket_and_deregisters(kubelet_harness, ref_dra_driver):
    drv = ref_dra_driver(kubelet_harness)
    kubelet_harness.wait_registered(drv.driver)

    drv.stop()
    kubelet_harness.wait_deregistered(drv.driver)
    ev = kubelet_harness.wait_event("deregistered", driver=drv.driver)
    assert ev["reason"] == "socket removed"
    assert kubelet_harness.list_plugins() == []
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.prepare(drv.driver, [("ns", "c", "u")])
    assert err.value.code == "not_registered"


def test_harness_forced_to_v1beta1_picks_v1beta1(kubelet_harness_factory, ref_dra_driver):
    h = kubelet_harness_factory(force_v1beta1=True)
    drv = ref_dra_driver(h)
    plugin = h.wait_registered(drv.driver)
    assert plugin["version"] == V1BETA1
    # Unprepare needs no API server: it goes through the v1beta1 service.
    out = h.unprepare(drv.driver, [("ns", "claim-a", "uid-a")])
    assert out["api"] == V1BETA1
    assert out["response"] == {"claims": {"uid-a": {"error": ""}}}


def test_plugin_offering_only_v1beta1(kubelet_harness, ref_dra_driver):
    drv = ref_dra_driver(kubelet_harness, versions="v1beta1")
    plugin = kubelet_harness.wait_registered(drv.driver)
    assert plugin["supported_versions"] == [V1BETA1]
    assert plugin["version"] == V1BETA1
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.unprepare(drv.driver, [("ns", "c", "u")], api="v1")
    assert err.value.code == "unsupported"


def test_plugin_order_decides_version(kubelet_harness, fake_registrar, tmp_path):
    # The kubelet walks the plugin's list, not its own: v1beta1 first wins.
    fr = fake_registrar(
        kubelet_harness,
        name=f"{unique_name('order')}.kndkit.test",
        endpoint=str(tmp_path / "dra.sock"),
        versions=("v0.Bogus", V1BETA1, V1),
    )
    assert fr.next_notification() == {"event": "notified", "registered": True, "error": ""}
    ev = kubelet_harness.wait_event("registered", socket=str(fr.socket))
    assert ev["version"] == V1BETA1


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"versions": ()}, "empty list of supported gRPC services"),
        ({"versions": ("v1alpha3.DRAPlugin", HEALTH_V1)}, "none of the plugin's services"),
        ({"type": "CSIPlugin"}, "no handler registered for plugin type"),
        ({"name": ""}, "plugin name is empty"),
        ({"endpoint": "relative/dra.sock"}, "is not an absolute path"),
    ],
    ids=["empty-versions", "unknown-versions", "wrong-type", "no-name", "relative-endpoint"],
)
def test_invalid_registration_is_rejected_and_told(
    kubelet_harness, fake_registrar, tmp_path, info, message
):
    kw: dict[str, Any] = {
        "name": f"{unique_name('bad')}.kndkit.test",
        "endpoint": str(tmp_path / "dra.sock"),
        **info,
    }
    fr = fake_registrar(kubelet_harness, **kw)
    note = fr.next_notification()
    assert note["registered"] is False
    assert message in note["error"]
    ev = kubelet_harness.wait_event("registration_failed", socket=str(fr.socket))
    assert message in ev["error"]
    assert kubelet_harness.list_plugins() == []


def test_rolling_update_uses_newest_and_falls_back(kubelet_harness, ref_dra_driver):
    name = f"{unique_name('roll')}.kndkit.test"
    old = ref_dra_driver(kubelet_harness, name, rolling_update_uid="aaaa")
    kubelet_harness.wait_registered(name)
    new = ref_dra_driver(kubelet_harness, name, rolling_update_uid="bbbb", data_dir=old.data_dir)
    kubelet_harness.wait_event("registered", driver=name, endpoint=str(new.endpoint))

    plugins = kubelet_harness.list_plugins()
    assert [p["endpoint"] for p in plugins] == [str(old.endpoint), str(new.endpoint)]
    out = kubelet_harness.unprepare(name, [("ns", "c", "u1")])
    assert out["endpoint"] == str(new.endpoint)

    new.stop()
    kubelet_harness.wait_event("deregistered", driver=name, endpoint=str(new.endpoint))
    out = kubelet_harness.unprepare(name, [("ns", "c", "u1")])
    assert out["endpoint"] == str(old.endpoint)


def test_duplicate_endpoint_is_rejected(kubelet_harness, fake_registrar, tmp_path):
    name = f"{unique_name('dup')}.kndkit.test"
    endpoint = str(tmp_path / "dra.sock")
    first = fake_registrar(kubelet_harness, name=name, endpoint=endpoint)
    assert first.next_notification()["registered"] is True
    second = fake_registrar(kubelet_harness, name=name, endpoint=endpoint)
    note = second.next_notification()
    assert note["registered"] is False
    assert "already registered" in note["error"]
    assert [p["socket"] for p in kubelet_harness.list_plugins()] == [str(first.socket)]


def test_dot_files_and_plain_files_are_ignored(kubelet_harness, ref_dra_driver):
    hidden = kubelet_harness.registry_dir / ".hidden-reg.sock"
    (kubelet_harness.registry_dir / "plain-reg.sock").write_text("not a socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(hidden))
        listener.listen(8)
        # A real registration created after the hidden socket goes through the
        # same watcher; once it is done, the hidden one would have been dialled.
        drv = ref_dra_driver(kubelet_harness)
        kubelet_harness.wait_registered(drv.driver)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(hidden)
    sockets = {ev.get("socket") for ev in kubelet_harness.events}
    assert str(hidden) not in sockets
    assert str(kubelet_harness.registry_dir / "plain-reg.sock") not in sockets


def test_harness_rejects_bad_commands(kubelet_harness):
    reply = kubelet_harness.request("no_such_cmd")
    assert reply["ok"] is False
    assert reply["code"] == "invalid"
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.call("prepare", driver="x.kndkit.test", claims=[])
    assert err.value.code == "invalid"
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.call("wait_registered", driver="never.kndkit.test", timeout_ms=200)
    assert err.value.code == "timeout"
    assert kubelet_harness.call("ping")["node_name"] == kubelet_harness.node_name


# --------------------------------------------------------------------------- health


def _check_health(messages, pool):
    assert messages
    for msg in messages:
        by_name = {d["device"]["device_name"]: d for d in msg["devices"]}
        assert set(by_name) == {"eth1", "eth2"}
        assert by_name["eth1"]["health"] == "HEALTHY"
        assert by_name["eth2"]["health"] == "UNHEALTHY"
        assert by_name["eth1"]["device"]["pool_name"] == pool
        assert int(by_name["eth1"]["health_check_timeout_seconds"]) == 30
        assert int(by_name["eth1"]["last_updated_time"]) > 0
        assert "unhealthy" in by_name["eth2"]["message"]


def test_health_stream_v1_and_v1alpha1(kubelet_harness, ref_dra_driver):
    drv = ref_dra_driver(
        kubelet_harness, health=True, health_devices=("eth1", "eth2"), unhealthy=("eth2",)
    )
    plugin = kubelet_harness.wait_registered(drv.driver)
    assert plugin["supported_versions"] == [V1, V1BETA1, HEALTH_V1, HEALTH_V1ALPHA1]
    assert plugin["health"] is True
    assert plugin["health_version"] == HEALTH_V1

    out = kubelet_harness.watch_health(drv.driver, 2)
    assert out["api"] == HEALTH_V1
    assert len(out["messages"]) == 2
    _check_health(out["messages"], kubelet_harness.node_name)

    out = kubelet_harness.watch_health(drv.driver, 1, api="v1alpha1")
    assert out["api"] == HEALTH_V1ALPHA1
    _check_health(out["messages"], kubelet_harness.node_name)


def test_older_kubelet_watches_v1alpha1_health(kubelet_harness_factory, ref_dra_driver):
    h = kubelet_harness_factory(health_versions=[HEALTH_V1ALPHA1])
    drv = ref_dra_driver(h, health=True, health_devices=("eth1", "eth2"), unhealthy=("eth2",))
    assert h.wait_registered(drv.driver)["health_version"] == HEALTH_V1ALPHA1
    out = h.watch_health(drv.driver, 1)
    assert out["api"] == HEALTH_V1ALPHA1
    _check_health(out["messages"], h.node_name)


def test_plugin_with_only_v1_health_and_v1alpha1_kubelet(kubelet_harness_factory, ref_dra_driver):
    h = kubelet_harness_factory(health_versions=[HEALTH_V1ALPHA1])
    drv = ref_dra_driver(h, health=True, health_versions="v1")
    plugin = h.wait_registered(drv.driver)
    assert plugin["supported_versions"] == [V1, V1BETA1, HEALTH_V1]
    assert plugin["health"] is False
    with pytest.raises(KubeletHarnessError) as err:
        h.watch_health(drv.driver, 1)
    assert err.value.code == "unsupported"


def test_health_not_offered(kubelet_harness, ref_dra_driver):
    drv = ref_dra_driver(kubelet_harness)
    kubelet_harness.wait_registered(drv.driver)
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.watch_health(drv.driver, 1)
    assert err.value.code == "unsupported"


# --------------------------------------------------------------------------- prepare


def test_prepare_without_api_server_is_a_top_level_error(kubelet_harness, ref_dra_driver):
    # The helper GETs every claim first; with no API server the whole call fails.
    drv = ref_dra_driver(kubelet_harness)
    kubelet_harness.wait_registered(drv.driver)
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.prepare(drv.driver, [("ns", "c", "u1")])
    assert err.value.code.startswith("grpc_")
    assert "retrieve claim ns/c" in err.value.message


@pytest.fixture
def allocated_claim(kube_apiserver):
    """factory(driver, pool, device) -> a ResourceClaim allocated to that device."""
    made: list[dict[str, Any]] = []

    def factory(driver: str, pool: str, device: str, *, allocate: bool = True):
        ns = unique_name("kl-")
        kube_apiserver.ensure_namespace(ns)
        claim = kube_apiserver.create(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": "net", "namespace": ns},
                "spec": {
                    "devices": {
                        "requests": [{"name": "nic", "exactly": {"deviceClassName": "kl-test"}}]
                    }
                },
            }
        )
        made.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        if allocate:
            claim["status"] = {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": "nic", "driver": driver, "pool": pool, "device": device}
                        ]
                    }
                }
            }
            claim = kube_apiserver.request(
                "PUT",
                f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/net/status",
                claim,
            )
        return claim

    yield factory
    for obj in made:
        with contextlib.suppress(Exception):
            kube_apiserver.delete(obj)


def _ref(claim: dict[str, Any]) -> dict[str, str]:
    m = claim["metadata"]
    return {"namespace": m["namespace"], "name": m["name"], "uid": m["uid"]}


def test_prepare_and_unprepare_through_reference_driver(
    kubelet_harness, ref_dra_driver, kube_apiserver, allocated_claim
):
    drv = ref_dra_driver(kubelet_harness, kubeconfig=kube_apiserver.kubeconfig_admin)
    kubelet_harness.wait_registered(drv.driver)
    pool = kubelet_harness.node_name
    claim = allocated_claim(drv.driver, pool, "eth1")
    uid = claim["metadata"]["uid"]
    expected_device = {
        "request_names": ["nic"],
        "pool_name": pool,
        "device_name": "eth1",
        "cdi_device_ids": [f"kndkit.test/net={uid}-eth1"],
    }

    out = kubelet_harness.prepare(drv.driver, [_ref(claim)])
    assert out["api"] == V1
    assert out["endpoint"] == str(drv.endpoint)
    assert out["response"] == {"claims": {uid: {"devices": [expected_device], "error": ""}}}

    # Same call over v1beta1 (the helper adapts it to its v1 implementation;
    # v1beta1's Device has no share_id). Prepare is idempotent.
    out = kubelet_harness.prepare(drv.driver, [_ref(claim)], api="v1beta1")
    assert out["api"] == V1BETA1
    assert out["response"] == {"claims": {uid: {"devices": [expected_device], "error": ""}}}

    out = kubelet_harness.unprepare(drv.driver, [_ref(claim)])
    assert out["response"] == {"claims": {uid: {"error": ""}}}


def test_prepare_rejects_replaced_and_unallocated_claims(
    kubelet_harness, ref_dra_driver, kube_apiserver, allocated_claim
):
    drv = ref_dra_driver(kubelet_harness, kubeconfig=kube_apiserver.kubeconfig_admin)
    kubelet_harness.wait_registered(drv.driver)

    claim = allocated_claim(drv.driver, kubelet_harness.node_name, "eth1")
    stale = {**_ref(claim), "uid": str(uuid.uuid4())}
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.prepare(drv.driver, [stale])
    assert "got replaced" in err.value.message

    pending = allocated_claim(drv.driver, kubelet_harness.node_name, "eth1", allocate=False)
    with pytest.raises(KubeletHarnessError) as err:
        kubelet_harness.prepare(drv.driver, [_ref(pending)])
    assert "not allocated" in err.value.message

    # A claim allocated to another driver only: a per-claim error, not a call error.
    other = allocated_claim("other.kndkit.test", "pool-x", "dev-9")
    out = kubelet_harness.prepare(drv.driver, [_ref(other)])
    entry = out["response"]["claims"][other["metadata"]["uid"]]
    assert entry["devices"] == []
    assert "has no device of driver" in entry["error"]
