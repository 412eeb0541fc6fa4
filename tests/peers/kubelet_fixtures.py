"""pytest plugin: the kubelet's side of DRA as a test peer.

Loaded by ``tests/conftest.py``. The harness classes live in
:mod:`kndkit.testing.kubelet` (re-exported here); binaries are built by
:func:`kndkit.testing.peers.ensure` (Go, on the upstream ``k8s.io/kubelet``
generated clients and ``k8s.io/dynamic-resource-allocation/kubeletplugin``).
The harness's stdin/stdout protocol is documented in
``python/kndkit/testing/peers/kubelet/README.md``.

Fixtures:

``kubelet_peer_bin`` (session)
    Builds the peers; returns the directory holding ``kubelet-harness``,
    ``ref-driver`` and ``fake-registrar``.

``kubelet_harness`` (function)
    A started :class:`KubeletHarness` (accepts v1 and v1beta1): ``.registry_dir``
    to register into, ``.plugins_dir`` for drivers' data directories,
    ``.call(cmd, **kw)``, ``.wait_registered(driver)``, ``.prepare(driver, claims)``,
    ``.unprepare(driver, claims)``, ``.bench(driver, claims, count)``,
    ``.watch_health(driver, count)``,
    ``.list_plugins()``, ``.wait_event(name, **match)``. Stopped at teardown.

``kubelet_harness_factory`` (function)
    ``factory(*, force_v1beta1=False, supported_versions=None, health_versions=None,
    node_name=None)``
    for harnesses with other settings.

``ref_dra_driver`` (function)
    ``factory(harness, driver=None, *, kubeconfig=None, versions="v1,v1beta1",
    health=False, health_versions="v1,v1alpha1", health_devices=(), unhealthy=(),
    rolling_update_uid=None, publish_devices=0, publish_per_slice=128)``
    starts the upstream-helper reference driver registering into
    ``harness.registry_dir``; returns a :class:`RefDriver`. Stopped at teardown.
    With ``publish_devices`` it publishes that many devices through the helper's
    ``PublishResources`` (``.wait_event("publishing")``, ``.republish()``).

``kndkit_dra_plugin`` (function)
    ``factory(harness, *, driver, kubeconfig, state=None, rolling_update_uid=None,
    status=False, publisher=True)`` starts kndkit's own plugin process
    (``kubelet/kndkit_plugin.py``); returns a :class:`KndkitPlugin`.

``fake_registrar`` (function)
    ``factory(harness, *, name, endpoint, versions=("v1.DRAPlugin",),
    type="DRAPlugin", socket_name=None)`` serves a registration socket with
    exactly that PluginInfo and records NotifyRegistrationStatus calls.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kndkit.errors import KndError
from kndkit.testing.kube import with_pdeathsig
from kndkit.testing.kubelet import (  # noqa: F401
    BINARIES,
    CALL_TIMEOUT_S,
    HEALTH_V1,
    HEALTH_V1ALPHA1,
    START_TIMEOUT_S,
    SUN_PATH_MAX,
    V1,
    V1BETA1,
    FakeRegistrar,
    KubeletHarness,
    KubeletHarnessError,
    RefDriver,
    _counter,
    _stop,
    _tail,
    build_kubelet_peers,
    start_fake_registrar,
    start_ref_driver,
    unique_name,
)

log = logging.getLogger("kndkit.tests.kubelet")

PEERS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = PEERS_DIR.parent.parent
os.environ.setdefault("KNDKIT_PEERS_BIN", str(PEERS_DIR / "bin"))
BIN_DIR = pathlib.Path(os.environ["KNDKIT_PEERS_BIN"])


KNDKIT_PLUGIN = PEERS_DIR / "kubelet" / "kndkit_plugin.py"


@dataclass
class KndkitPlugin:
    """kndkit's own DRA plugin (``kubelet/kndkit_plugin.py``) running as a process.

    ``call(cmd, **fields)`` sends a command and returns the reply (raises
    ``RuntimeError`` unless ok); ``events`` collects its events;
    ``kill()`` is SIGKILL (the crash tests), ``stop()`` SIGTERM.
    """

    driver: str
    state: pathlib.Path
    popen: subprocess.Popen[str]
    log_path: pathlib.Path
    ready: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    _replies: dict[int, queue.Queue[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if "event" in msg:
                with self._cond:
                    self.events.append(msg)
                    self._cond.notify_all()
            elif isinstance(msg.get("id"), int):
                with self._lock:
                    q = self._replies.get(msg["id"])
                if q is not None:
                    q.put(msg)
        with self._cond:
            self._cond.notify_all()
        with self._lock:
            for q in self._replies.values():
                q.put({"ok": False, "error": "kndkit plugin exited"})

    def call(self, cmd: str, timeout: float = 120.0, **fields: Any) -> dict[str, Any]:
        rid = next(self._ids)
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        with self._lock:
            self._replies[rid] = q
        try:
            assert self.popen.stdin is not None
            self.popen.stdin.write(json.dumps({"id": rid, "cmd": cmd, **fields}) + "\n")
            self.popen.stdin.flush()
            try:
                reply = q.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"kndkit plugin: no answer to {cmd}; log:\n{self.logs()}"
                ) from None
        finally:
            with self._lock:
                self._replies.pop(rid, None)
        if not reply.get("ok"):
            raise RuntimeError(f"kndkit plugin {cmd}: {reply.get('error')}; log:\n{self.logs()}")
        return reply

    def wait_event(
        self,
        name: str,
        timeout: float = 30.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev.get("event") == name and (predicate is None or predicate(ev)):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    raise TimeoutError(
                        f"kndkit plugin: no {name} event; events {self.events}; log:\n{self.logs()}"
                    )
                self._cond.wait(min(left, 0.5))

    def events_named(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def logs(self) -> str:
        return _tail(self.log_path)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def stop(self) -> None:
        _stop(self.popen)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()


def start_kndkit_plugin(
    harness: KubeletHarness,
    *,
    driver: str,
    kubeconfig: str | os.PathLike[str],
    state: pathlib.Path | None = None,
    rolling_update_uid: str | None = None,
    versions: str = "v1,v1beta1",
    status: bool = False,
    publisher: bool = True,
    min_interval: float = 0.2,
    plugin_dir: pathlib.Path | None = None,
    durable_marks: bool = False,
) -> KndkitPlugin:
    """Start ``kubelet/kndkit_plugin.py`` registering into ``harness.registry_dir``."""
    data = plugin_dir or harness.plugins_dir / driver
    state = state or harness.root / f"{driver}.state.db"
    argv = [
        sys.executable,
        str(KNDKIT_PLUGIN),
        f"--driver={driver}",
        f"--node={harness.node_name}",
        f"--registry-dir={harness.registry_dir}",
        f"--plugin-dir={data}",
        f"--kubeconfig={kubeconfig}",
        f"--state={state}",
        f"--versions={versions}",
        f"--min-interval={min_interval}",
    ]
    if rolling_update_uid:
        argv.append(f"--rolling-update-uid={rolling_update_uid}")
    if status:
        argv.append("--status")
    if not publisher:
        argv.append("--no-publisher")
    if durable_marks:
        argv.append("--durable-marks")
    log_path = harness.root / f"kndkit-{driver}-{next(_counter)}.log"
    # An inherited PYTHONPATH (benches/run.sh's package snapshot) comes first.
    paths = [p for p in (os.environ.get("PYTHONPATH", ""), str(REPO_ROOT / "python")) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with log_path.open("wb") as err:
        popen = subprocess.Popen(
            with_pdeathsig(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            bufsize=1,
            env=env,
        )
    plugin = KndkitPlugin(driver, state, popen, log_path)
    threading.Thread(target=plugin._pump, name="kndkit-plugin-reader", daemon=True).start()
    try:
        plugin.ready = plugin.wait_event("ready", timeout=START_TIMEOUT_S)
    except BaseException:
        plugin.kill()
        raise
    return plugin


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kubelet_peer_bin() -> pathlib.Path:
    """Build (or find up to date) the kubelet test peers; return their directory."""
    try:
        return build_kubelet_peers()
    except KndError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def kubelet_harness_factory(
    kubelet_peer_bin: pathlib.Path,
) -> Iterator[Callable[..., KubeletHarness]]:
    started: list[KubeletHarness] = []

    def factory(**kw: Any) -> KubeletHarness:
        h = KubeletHarness.start(kubelet_peer_bin, **kw)
        started.append(h)
        return h

    try:
        yield factory
    finally:
        for h in reversed(started):
            h.close()


@pytest.fixture
def kubelet_harness(kubelet_harness_factory: Callable[..., KubeletHarness]) -> KubeletHarness:
    """A kubelet harness that accepts v1.DRAPlugin and v1beta1.DRAPlugin."""
    return kubelet_harness_factory()


@pytest.fixture
def ref_dra_driver(kubelet_peer_bin: pathlib.Path) -> Iterator[Callable[..., RefDriver]]:
    started: list[RefDriver] = []

    def factory(harness: KubeletHarness, driver: str | None = None, **kw: Any) -> RefDriver:
        d = start_ref_driver(kubelet_peer_bin, harness, driver, **kw)
        started.append(d)
        return d

    try:
        yield factory
    finally:
        for d in reversed(started):
            d.stop()


@pytest.fixture
def kndkit_dra_plugin(kubelet_peer_bin: pathlib.Path) -> Iterator[Callable[..., KndkitPlugin]]:
    """``factory(harness, *, driver, kubeconfig, state=None, rolling_update_uid=None,
    versions="v1,v1beta1", status=False, publisher=True, min_interval=0.2)`` starts
    kndkit's DRA plugin (KubeletPlugin + ClaimService + SlicePublisher) as a process."""
    started: list[KndkitPlugin] = []

    def factory(harness: KubeletHarness, **kw: Any) -> KndkitPlugin:
        p = start_kndkit_plugin(harness, **kw)
        started.append(p)
        return p

    try:
        yield factory
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture
def fake_registrar(kubelet_peer_bin: pathlib.Path) -> Iterator[Callable[..., FakeRegistrar]]:
    started: list[FakeRegistrar] = []

    def factory(harness: KubeletHarness, **kw: Any) -> FakeRegistrar:
        fr = start_fake_registrar(kubelet_peer_bin, harness, **kw)
        started.append(fr)
        return fr

    try:
        yield factory
    finally:
        for fr in reversed(started):
            fr.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    h = funcargs.get("kubelet_harness")
    if isinstance(h, KubeletHarness):
        report.sections.append(("kubelet-harness events", json.dumps(h.events, indent=1)))
        report.sections.append(("kubelet-harness stderr (tail)", h.stderr()))
