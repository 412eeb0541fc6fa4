"""kndkit.nri.Plugin construction: name/index checks, hook-derived event mask, pre-started env.

(The lifecycle itself is tested against containerd's NRI adaptation in
tests/peers/test_nri_plugin.py.)
"""

from __future__ import annotations

import pytest

from kndkit.errors import InvalidArgument
from kndkit.nri import Container, ContainerAdjustment, Event, Plugin, Pod


class NoHooks(Plugin):
    pass


class Some(Plugin):
    async def run_pod_sandbox(self, pod: Pod) -> None: ...

    async def create_container(self, pod: Pod, ctr: Container) -> ContainerAdjustment | None:
        return None

    async def validate_container_adjustment(self, req: object) -> str | None:
        return None

    async def synchronize(self, pods: list[Pod], ctrs: list[Container]) -> None: ...


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("NRI_PLUGIN_SOCKET", "NRI_PLUGIN_NAME", "NRI_PLUGIN_IDX"):
        monkeypatch.delenv(k, raising=False)


def test_event_mask_follows_defined_hooks() -> None:
    p = Some("x", "10")
    assert p.events == {
        Event.RUN_POD_SANDBOX,
        Event.CREATE_CONTAINER,
        Event.VALIDATE_CONTAINER_ADJUSTMENT,
    }
    assert p.event_mask == (1 << 0) | (1 << 3) | (1 << 13)


def test_plugin_without_event_hooks_never_sends_zero_mask() -> None:
    # 0 would subscribe to every event
    p = NoHooks("x", "10")
    assert p.event_mask != 0
    assert p.events == {Event.POST_UPDATE_POD_SANDBOX}


@pytest.mark.parametrize("idx", ["1", "100", "a1", "", " 1", "1 "])
def test_index_must_be_two_digits(idx: str) -> None:
    with pytest.raises(InvalidArgument, match="exactly 2 digits"):
        NoHooks("x", idx)


@pytest.mark.parametrize("name", ["", "a b", "a/b", "é"])
def test_name_charset(name: str) -> None:
    with pytest.raises(InvalidArgument, match="plugin name"):
        NoHooks(name, "10")


def test_defaults_and_qualified_name() -> None:
    p = NoHooks("net.dev_x+1", "05")
    assert p.qualified_name == "05-net.dev_x+1"
    assert p.socket_path == "/var/run/nri/nri.sock"
    assert not p.prestarted
    assert not p.connected.is_set() and not p.synchronized.is_set()


def test_prestarted_env_takes_fd_name_and_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NRI_PLUGIN_SOCKET", "3")
    monkeypatch.setenv("NRI_PLUGIN_NAME", "fromenv")
    monkeypatch.setenv("NRI_PLUGIN_IDX", "42")
    p = NoHooks("x", "10")
    assert p.prestarted and p.qualified_name == "42-fromenv"
    # an explicit socket path wins over the inherited fd
    assert not NoHooks("x", "10", socket_path="/tmp/s").prestarted


def test_prestarted_env_bad_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NRI_PLUGIN_SOCKET", "three")
    with pytest.raises(InvalidArgument, match="NRI_PLUGIN_SOCKET"):
        NoHooks("x", "10")


async def test_stop_before_run_returns() -> None:
    p = NoHooks("x", "10")
    await p.stop()
    await p.stop()


async def test_update_containers_when_not_connected() -> None:
    from kndkit.errors import NotAvailable
    from kndkit.nri import ContainerUpdate

    with pytest.raises(NotAvailable, match="not connected"):
        await NoHooks("x", "10").update_containers([ContainerUpdate("c1")])
