"""pytest plugin: a real Kubernetes control plane and the scheduler's DRA allocator.

Loaded by ``tests/conftest.py``. The classes live in :mod:`kndkit.testing.kube`
(re-exported here, the tests import them from this module); binaries are built
by :func:`kndkit.testing.peers.ensure` into ``$KNDKIT_PEERS_BIN``, which this
module defaults to ``tests/peers/bin``.

Fixtures:

``kube_apiserver`` (session)
    A :class:`KubeCluster`: etcd + kube-apiserver on loopback with generated
    certificates, a static admin token (group ``system:masters``), RBAC
    authorization and ``resource.k8s.io/v1``. ``.kubeconfig_admin``,
    ``.kubeconfig_for(rbac_manifest)``, ``.request(...)``, ``.apply(...)``,
    ``.create_node(name)``, ``.api_client(kubeconfig)``.

``allocator`` (function)
    An :class:`Allocator` bound to the cluster: ``allocate(node, claims, pod=...)``
    runs the scheduler's allocator and writes the result into the claims' status.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import time
from collections.abc import Generator, Iterator

import pytest

PEERS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = PEERS_DIR.parent.parent
# The project's tests build and find the peers here (CI and scripts/setup.sh --peers).
os.environ.setdefault("KNDKIT_PEERS_BIN", str(PEERS_DIR / "bin"))
BIN_DIR = pathlib.Path(os.environ["KNDKIT_PEERS_BIN"])
DRIVER_RBAC = REPO_ROOT / "deploy" / "rbac.yaml"

from kndkit.errors import KndError  # noqa: E402
from kndkit.testing.kube import (  # noqa: E402, F401
    ADMIN_USER,
    ALLOC_BAD_INPUT,
    ALLOC_FAILURE,
    ALLOC_OK,
    ALLOC_UNALLOCATED,
    START_TIMEOUT_S,
    Allocator,
    AllocatorResult,
    KubeAPIError,
    KubeCluster,
    build_peers,
    generate_certs,
    with_pdeathsig,
)

log = logging.getLogger("kndkit.tests.kube")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kube_peers_built() -> pathlib.Path:
    """Build (or find up to date) the kube test peers; return their directory."""
    try:
        return build_peers()
    except KndError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def kube_apiserver(
    kube_peers_built: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    """A real kube-apiserver + etcd for the whole session."""
    workdir = tmp_path_factory.mktemp("kube")
    t0 = time.monotonic()
    try:
        cluster = KubeCluster.start(workdir, bin_dir=kube_peers_built)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    log.info(
        "kube-apiserver %s ready at %s in %.1f s",
        cluster.version.get("gitVersion"),
        cluster.url,
        time.monotonic() - t0,
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def allocator(kube_apiserver: KubeCluster) -> Allocator:
    """The scheduler's DRA allocator, acting as the cluster admin."""
    return Allocator(kube_apiserver.kubeconfig_admin)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tails of the apiserver and etcd logs to a failing test's report."""
    report = yield
    if report.failed:
        cluster = getattr(item, "funcargs", {}).get("kube_apiserver")
        if isinstance(cluster, KubeCluster):
            report.sections.append(("kube control plane logs (tail)", cluster.logs(6000)))
    return report


def _serve() -> None:  # pragma: no cover - manual use
    """``python tests/peers/kube_fixtures.py``: run a control plane until Ctrl-C."""
    import tempfile

    logging.basicConfig(level=logging.INFO)
    build_peers()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kndkit-kube-"))
    cluster = KubeCluster.start(workdir)
    driver = cluster.kubeconfig_for(DRIVER_RBAC)
    print(f"kube-apiserver {cluster.version.get('gitVersion')} at {cluster.url}")
    print(f"admin:  export KUBECONFIG={cluster.kubeconfig_admin}")
    print(f"driver: export KUBECONFIG={driver}")
    print(f"logs:   {workdir}/*.log   (Ctrl-C stops)")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    _serve()
