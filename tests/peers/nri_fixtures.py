"""pytest plugin: containerd's NRI runtime side as a test peer.

Loaded by ``tests/conftest.py``. The classes live in :mod:`kndkit.testing.nri`
(re-exported here); binaries are built by :func:`kndkit.testing.peers.ensure`
(``nri-harness-<v>``: the upstream ``github.com/containerd/nri/pkg/adaptation``
driven over stdin/stdout; ``nri-netdev-injector-<v>``: a plugin built on the
upstream plugin stub that moves annotated host links into pod network
namespaces). ``<v>`` is ``v012`` (NRI v0.12.x, per-event RPCs) or ``v011``
(NRI v0.11.x, pod events over ``StateChange``). The harness protocol is
documented in ``python/kndkit/testing/peers/nri/README.md``.

Fixtures:

``nri_binaries`` (session)
    Builds the peers; a mapping ``{"v0.12": NRIBinaries, "v0.11": NRIBinaries}``.

``nri_runtime`` (function)
    A started :class:`NRIRuntime` at NRI v0.12 (parametrize it indirectly with
    ``"v0.11"`` for the older runtime). ``.socket`` is the path a plugin dials;
    ``.call(cmd, **fields)``, ``.wait_plugins(n)`` and one method per event.
    Stopped at teardown.

``nri_runtime_factory`` (function)
    ``factory(version="v0.12", *, request_timeout=10.0, registration_timeout=10.0,
    plugin_path=None)`` for several runtimes or other timeouts (seconds; None
    keeps upstream's 2 s / 5 s).

``nri_plugin_factory`` (function)
    ``factory(runtime, idx="10", name=None, env=None, version=None,
    run_delay=None, request_updates=False)`` starts
    the netdev-injector plugin (built at ``version``, default the runtime's)
    against ``runtime.socket``; returns a :class:`NRIPlugin`. Stopped at
    teardown.

``nri_bench_plugin_factory`` (function)
    ``factory(runtime, idx="10", name="bench-go", version=None)`` starts the
    benchmark's Go anchor plugin (``nri-bench-plugin-<v>``: no-op
    RunPodSandbox, 4 device adjustments on CreateContainer, see
    :data:`BENCH_DEVICES`) against ``runtime.socket``; returns a
    :class:`NRIBenchPlugin`. Stopped at teardown.

``nri_pod_netns`` (function)
    ``factory()`` -> ``/var/run/netns/<name>`` made with ``ip netns add``; every
    namespace is deleted at teardown.

``nri_host_veth`` (function)
    ``factory()`` -> ``(host_name, peer_name)`` of a fresh veth pair in the host
    namespace; deleted at teardown wherever the links ended up.

Helpers: :func:`make_pod` builds a pod in the NRI API's JSON field names;
:meth:`NRIRuntime.bench` relays one event many times and returns the per-call
durations the harness measured in Go (:class:`BenchResult`, with
:func:`bench_stats` for percentiles).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping

import pytest

PEERS_DIR = pathlib.Path(__file__).resolve().parent
os.environ.setdefault("KNDKIT_PEERS_BIN", str(PEERS_DIR / "bin"))
BIN_DIR = pathlib.Path(os.environ["KNDKIT_PEERS_BIN"])

from kndkit.errors import KndError  # noqa: E402
from kndkit.testing.nri import (  # noqa: E402, F401
    BENCH_DEVICES,
    CALL_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    NETNS_DIR,
    START_TIMEOUT_S,
    VERSIONS,
    BenchResult,
    NRIBenchPlugin,
    NRIBinaries,
    NRIError,
    NRIHarnessGone,
    NRIPlugin,
    NRIRuntime,
    _ip,
    bench_stats,
    build_nri_peers,
    link_exists,
    link_info,
    links_in,
    make_container,
    make_pod,
    percentile,
    unique_suffix,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def nri_binaries() -> dict[str, NRIBinaries]:
    try:
        return build_nri_peers()
    except KndError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def nri_runtime_factory(
    nri_binaries: dict[str, NRIBinaries],
) -> Iterator[Callable[..., NRIRuntime]]:
    started: list[NRIRuntime] = []
    dirs: list[str] = []

    def factory(
        version: str = "v0.12",
        *,
        request_timeout: float | None = DEFAULT_TIMEOUT_S,
        registration_timeout: float | None = DEFAULT_TIMEOUT_S,
        plugin_path: pathlib.Path | None = None,
    ) -> NRIRuntime:
        if version not in nri_binaries:
            raise ValueError(f"unknown NRI version {version!r}; have {sorted(nri_binaries)}")
        workdir = tempfile.mkdtemp(prefix=f"knd-nri-{os.getpid()}-")
        dirs.append(workdir)
        rt = NRIRuntime(
            nri_binaries[version].harness,
            version,
            pathlib.Path(workdir),
            request_timeout=request_timeout,
            registration_timeout=registration_timeout,
            plugin_path=plugin_path,
        )
        started.append(rt)
        return rt

    try:
        yield factory
    finally:
        for rt in reversed(started):
            with contextlib.suppress(Exception):
                rt.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def nri_runtime(
    request: pytest.FixtureRequest, nri_runtime_factory: Callable[..., NRIRuntime]
) -> NRIRuntime:
    version = getattr(request, "param", "v0.12")
    return nri_runtime_factory(version)


@pytest.fixture
def nri_plugin_factory(
    nri_binaries: dict[str, NRIBinaries],
) -> Iterator[Callable[..., NRIPlugin]]:
    started: list[NRIPlugin] = []

    def factory(
        runtime: NRIRuntime,
        idx: str = "10",
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        version: str | None = None,
        run_delay: float | None = None,
        request_updates: bool = False,
    ) -> NRIPlugin:
        plugin = NRIPlugin(
            nri_binaries[version or runtime.version].netdev_injector,
            runtime,
            runtime.workdir,
            idx=idx,
            name=name,
            env=env,
            run_delay=run_delay,
            request_updates=request_updates,
        )
        started.append(plugin)
        return plugin

    try:
        yield factory
    finally:
        for p in reversed(started):
            with contextlib.suppress(Exception):
                p.stop()


@pytest.fixture
def nri_bench_plugin_factory(
    nri_binaries: dict[str, NRIBinaries],
) -> Iterator[Callable[..., NRIBenchPlugin]]:
    started: list[NRIBenchPlugin] = []

    def factory(
        runtime: NRIRuntime,
        idx: str = "10",
        name: str = "bench-go",
        version: str | None = None,
    ) -> NRIBenchPlugin:
        plugin = NRIBenchPlugin(
            nri_binaries[version or runtime.version].bench_plugin,
            runtime,
            runtime.workdir,
            idx=idx,
            name=name,
        )
        started.append(plugin)
        return plugin

    try:
        yield factory
    finally:
        for p in reversed(started):
            with contextlib.suppress(Exception):
                p.stop()


@pytest.fixture
def nri_pod_netns() -> Iterator[Callable[[], pathlib.Path]]:
    made: list[str] = []

    def factory() -> pathlib.Path:
        name = f"knd-nri-{unique_suffix()}"
        _ip("netns", "add", name)
        made.append(name)
        return NETNS_DIR / name

    try:
        yield factory
    finally:
        for name in made:
            # deleting the namespace destroys veth ends still inside it
            _ip("netns", "del", name, check=False)


@pytest.fixture
def nri_host_veth() -> Iterator[Callable[[], tuple[str, str]]]:
    made: list[tuple[str, str]] = []

    def factory() -> tuple[str, str]:
        sfx = unique_suffix()
        host, peer = f"knri{sfx}a", f"knri{sfx}b"
        assert len(host) <= 15, host
        _ip("link", "add", host, "type", "veth", "peer", "name", peer)
        made.append((host, peer))
        return host, peer

    try:
        yield factory
    finally:
        for host, peer in made:
            # a veth pair goes away when either end is deleted; one end may
            # sit in a pod namespace (removed with it) under another name
            for name in (host, peer):
                if link_exists(name):
                    _ip("link", "del", name, check=False)
                    break
        # wait briefly for asynchronous veth teardown
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(link_exists(h) for h, _ in made):
            time.sleep(0.05)
