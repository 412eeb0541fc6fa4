"""Proof tests for the NRI runtime-side peer (python/kndkit/testing/peers/nri).

The harness embeds containerd's own NRI adaptation; the plugin is built on the
upstream plugin stub. Links and namespaces are real; every one made here is
removed at teardown (see the fixtures in nri_fixtures.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from peers.nri_fixtures import (
    NRIError,
    link_exists,
    link_info,
    links_in,
    make_container,
    make_pod,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and links"),
]

ANNOTATION = "netdevice.noderesource.dev/pod"
BOTH = pytest.mark.parametrize("nri_runtime", ["v0.12", "v0.11"], indirect=True)


def wait_for(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


@BOTH
def test_harness_reports_its_nri_version(nri_runtime: Any) -> None:
    want = {"v0.12": "v0.12.", "v0.11": "v0.11."}[nri_runtime.version]
    assert nri_runtime.nri_version.startswith(want)
    assert nri_runtime.ready["api"] == nri_runtime.version
    assert nri_runtime.socket.is_socket()
    assert nri_runtime.call("ping")["nri_version"] == nri_runtime.nri_version


@BOTH
def test_reference_plugin_moves_veth_into_pod_and_back(
    nri_runtime: Any, nri_plugin_factory: Any, nri_pod_netns: Any, nri_host_veth: Any
) -> None:
    netns = nri_pod_netns()
    host, _peer = nri_host_veth()
    plugin = nri_plugin_factory(nri_runtime, idx="10")
    assert nri_runtime.wait_plugins(1) == [plugin.qualified]

    pod = make_pod(
        f"pod-{host}",
        netns=netns,
        annotations={ANNOTATION: f"- name: {host}\n  new_name: net1\n"},
    )
    nri_runtime.run_pod_sandbox(pod)

    assert not link_exists(host), "link still on the host after RunPodSandbox"
    assert "net1" in links_in(netns.name)
    inside = link_info("net1", netns.name)
    assert inside["ifalias"] == host
    assert "UP" in inside["flags"]

    nri_runtime.stop_pod_sandbox(pod)

    assert link_exists(host), "link not back on the host after StopPodSandbox"
    assert "net1" not in links_in(netns.name)
    nri_runtime.remove_pod_sandbox(pod)

    got = [e["event"] for e in plugin.received()]
    assert got == ["Synchronize", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]


@BOTH
def test_synchronize_passes_pods_and_containers(nri_runtime: Any, nri_plugin_factory: Any) -> None:
    pods = [make_pod("sync-a", namespace="ns1"), make_pod("sync-b", namespace="ns2")]
    ctrs = [make_container("app", pods[0]), make_container("side", pods[1])]
    nri_runtime.set_state(pods, ctrs)
    plugin = nri_plugin_factory(nri_runtime, idx="20")
    nri_runtime.wait_plugins(1)

    sync = [e for e in plugin.received() if e["event"] == "Synchronize"]
    assert len(sync) == 1
    assert sorted(sync[0]["pods"]) == ["ns1/sync-a", "ns2/sync-b"]
    assert sorted(sync[0]["containers"]) == ["app", "side"]
    rounds = [r for r in nri_runtime.call("sync_results")["syncs"] if r["phase"] == "connect"]
    assert rounds == [{"phase": "connect", "pods": 2, "containers": 2, "updates": []}]


@BOTH
def test_malformed_annotation_error_comes_back_verbatim(
    nri_runtime: Any, nri_plugin_factory: Any, nri_pod_netns: Any, nri_host_veth: Any
) -> None:
    netns = nri_pod_netns()
    host, _ = nri_host_veth()
    nri_plugin_factory(nri_runtime)
    nri_runtime.wait_plugins(1)

    pod = make_pod("bad", netns=netns, annotations={ANNOTATION: "- name: [oops"})
    with pytest.raises(NRIError) as exc:
        nri_runtime.run_pod_sandbox(pod)
    assert f'invalid device annotation "{ANNOTATION}"' in exc.value.error
    assert "did not find expected" in exc.value.error  # the YAML parser's own words
    assert link_exists(host), "a rejected pod must leave the host link alone"


def test_failed_move_is_all_or_nothing(
    nri_runtime: Any, nri_plugin_factory: Any, nri_pod_netns: Any, nri_host_veth: Any
) -> None:
    netns = nri_pod_netns()
    first, _ = nri_host_veth()
    missing = f"knrimiss{os.getpid() % 10000}"
    nri_plugin_factory(nri_runtime)
    nri_runtime.wait_plugins(1)

    devices = f"- name: {first}\n  new_name: net1\n- name: {missing}\n"
    pod = make_pod("half", netns=netns, annotations={ANNOTATION: devices})
    with pytest.raises(NRIError) as exc:
        nri_runtime.run_pod_sandbox(pod)
    assert f'host link "{missing}"' in exc.value.error
    assert link_exists(first), "the first link must be given back when the second fails"
    assert "net1" not in links_in(netns.name)


def test_host_network_pod_is_rejected(nri_runtime: Any, nri_plugin_factory: Any) -> None:
    nri_plugin_factory(nri_runtime)
    nri_runtime.wait_plugins(1)
    pod = make_pod("hostnet", annotations={ANNOTATION: "- name: eth9\n"})
    with pytest.raises(NRIError, match="uses the host network"):
        nri_runtime.run_pod_sandbox(pod)


@BOTH
def test_create_container_merges_adjustments_of_two_plugins(
    nri_runtime: Any, nri_plugin_factory: Any
) -> None:
    nri_plugin_factory(nri_runtime, idx="10", name="first", env={"FIRST": "1"})
    nri_plugin_factory(nri_runtime, idx="20", name="second", env={"SECOND": "2"})
    assert nri_runtime.wait_plugins(2) == ["10-first", "20-second"]

    pod = make_pod("merge")
    rsp = nri_runtime.create_container(pod, make_container("app", pod))
    env = {kv["key"]: kv["value"] for kv in rsp["adjust"]["env"]}
    assert env == {"FIRST": "1", "SECOND": "2"}


def test_conflicting_adjustments_error_names_both_plugins(
    nri_runtime: Any, nri_plugin_factory: Any
) -> None:
    nri_plugin_factory(nri_runtime, idx="10", name="first", env={"SAME": "a"})
    nri_plugin_factory(nri_runtime, idx="20", name="second", env={"SAME": "b"})
    nri_runtime.wait_plugins(2)

    pod = make_pod("conflict")
    with pytest.raises(NRIError) as exc:
        nri_runtime.create_container(pod, make_container("app", pod))
    assert "SAME" in exc.value.error
    assert "first" in exc.value.error and "second" in exc.value.error


def test_bad_command_input_is_a_clear_error(nri_runtime: Any) -> None:
    with pytest.raises(NRIError, match='unknown command "no_such"'):
        nri_runtime.call("no_such")
    with pytest.raises(NRIError, match='unknown field "podd"'):
        nri_runtime.call("run_pod_sandbox", podd={})
    # the harness still answers afterwards
    assert nri_runtime.call("list_plugins")["live"] == []


def test_wait_plugins_times_out_clearly(nri_runtime: Any) -> None:
    with pytest.raises(NRIError, match=r"timed out .* waiting for 1 plugin"):
        nri_runtime.wait_plugins(1, timeout=0.3)


def test_plugin_exit_is_observed(nri_runtime: Any, nri_plugin_factory: Any) -> None:
    plugin = nri_plugin_factory(nri_runtime, idx="30")
    nri_runtime.wait_plugins(1)
    plugin.stop()
    assert wait_for(lambda: nri_runtime.call("list_plugins")["live"] == [])
    closed = nri_runtime.events_named("plugin_closed")
    assert [e["name"] for e in closed] == [plugin.qualified]


def test_v011_plugin_gets_pod_events_through_state_change_fallback(
    nri_runtime: Any, nri_plugin_factory: Any, nri_pod_netns: Any, nri_host_veth: Any
) -> None:
    """A v0.12 runtime falls back to StateChange for a plugin that predates per-event RPCs."""
    netns = nri_pod_netns()
    host, _ = nri_host_veth()
    plugin = nri_plugin_factory(nri_runtime, version="v0.11")
    nri_runtime.wait_plugins(1)

    pod = make_pod("fallback", netns=netns, annotations={ANNOTATION: f"- name: {host}\n"})
    nri_runtime.run_pod_sandbox(pod)
    assert not link_exists(host)
    assert host in links_in(netns.name)
    nri_runtime.stop_pod_sandbox(pod)
    assert link_exists(host)
    assert [e["event"] for e in plugin.received()] == [
        "Synchronize",
        "RunPodSandbox",
        "StopPodSandbox",
    ]


@pytest.mark.parametrize("version", ["v0.12", "v0.11"])
def test_pre_installed_plugin_is_launched_by_the_runtime(
    nri_runtime_factory: Any, nri_binaries: Any, tmp_path: Any, version: str
) -> None:
    """Plugins in --plugin-path are exec'd with a socketpair on fd 3 (NRI_PLUGIN_SOCKET)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    events = tmp_path / "events.jsonl"
    binary = nri_binaries[version].netdev_injector
    launcher = plugins / "05-preinstalled"
    launcher.write_text(f'#!/bin/sh\nexec {binary} -events {events} "$@"\n')
    launcher.chmod(0o755)

    rt = nri_runtime_factory(version, plugin_path=plugins)
    assert rt.wait_plugins(1) == ["05-preinstalled"]
    startup = [r for r in rt.call("sync_results")["syncs"] if r["phase"] == "startup"]
    assert len(startup) == 1 and "error" not in startup[0]
    rt.remove_pod_sandbox(make_pod("seen"))
    assert wait_for(lambda: "RemovePodSandbox" in events.read_text())


LIFECYCLE = [
    ("run_pod_sandbox", "RunPodSandbox"),
    ("create_container", "CreateContainer"),
    ("post_create_container", "PostCreateContainer"),
    ("start_container", "StartContainer"),
    ("post_start_container", "PostStartContainer"),
    ("update_container", "UpdateContainer"),
    ("post_update_container", "PostUpdateContainer"),
    ("update_pod_sandbox", "UpdatePodSandbox"),
    ("post_update_pod_sandbox", "PostUpdatePodSandbox"),
    ("stop_container", "StopContainer"),
    ("remove_container", "RemoveContainer"),
    ("stop_pod_sandbox", "StopPodSandbox"),
    ("remove_pod_sandbox", "RemovePodSandbox"),
]


@BOTH
def test_every_event_command_reaches_the_plugin(nri_runtime: Any, nri_plugin_factory: Any) -> None:
    plugin = nri_plugin_factory(nri_runtime, idx="40")
    nri_runtime.wait_plugins(1)
    pod = make_pod("life", namespace="lc")
    ctr = make_container("app", pod)
    for cmd, _ in LIFECYCLE:
        fields: dict[str, Any] = {"pod": pod}
        if "container" in cmd:
            fields["container"] = ctr
        if cmd == "update_container":
            fields["linux_resources"] = {"cpu": {"shares": {"value": 512}}}
        if cmd == "update_pod_sandbox":
            fields["linux_resources"] = {"memory": {"limit": {"value": 1 << 30}}}
        nri_runtime.call(cmd, **fields)
    got = [e["event"] for e in plugin.received() if e["event"] != "Synchronize"]
    assert got == [name for _, name in LIFECYCLE]
    assert all(e["pods"] == ["lc/life"] for e in plugin.received()[1:])


@pytest.mark.parametrize("version", ["v0.12", "v0.11"])
def test_plugin_missing_the_request_timeout_is_dropped(
    nri_runtime_factory: Any, nri_plugin_factory: Any, version: str
) -> None:
    """Upstream's default failure policy: the event succeeds without the late plugin."""
    rt = nri_runtime_factory(version, request_timeout=0.3)
    plugin = nri_plugin_factory(rt, idx="50", run_delay=3.0)
    rt.wait_plugins(1)
    rt.run_pod_sandbox(make_pod("late"))
    assert wait_for(lambda: rt.call("list_plugins")["live"] == [])
    assert [e["name"] for e in rt.events_named("plugin_closed")] == [plugin.qualified]


@BOTH
def test_unsolicited_container_updates_reach_the_runtime(
    nri_runtime: Any, nri_plugin_factory: Any
) -> None:
    plugin = nri_plugin_factory(nri_runtime, idx="60", request_updates=True)
    nri_runtime.wait_plugins(1)
    pod = make_pod("upd")
    ok_ctr, bad_ctr = make_container("ok", pod), make_container("bad", pod)
    nri_runtime.call("container_updates", fail_next=[bad_ctr["id"]])

    def results() -> list[dict[str, Any]]:
        return [e for e in plugin.received() if e["event"] == "UpdateContainersResult"]

    nri_runtime.call("post_start_container", pod=pod, container=ok_ctr)
    assert wait_for(lambda: len(results()) == 1)
    nri_runtime.call("post_start_container", pod=pod, container=bad_ctr)
    assert wait_for(lambda: len(results()) == 2)

    assert [r.get("failed") for r in results()] == [None, [bad_ctr["id"]]]
    got = nri_runtime.call("container_updates", clear=True)["updates"]
    assert [u["container_id"] for u in got] == [ok_ctr["id"], bad_ctr["id"]]
    assert got[0]["linux"]["resources"]["memory"]["limit"]["value"] == str(256 << 20)
    assert nri_runtime.call("container_updates")["updates"] == []
