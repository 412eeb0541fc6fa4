"""Loading only the parts of the official Kubernetes client that kndkit uses.

The driver daemon's memory is dominated by Python modules it never runs. Two
things of the ``kubernetes`` distribution cost most of it, and this module
avoids both without changing any class kndkit uses:

1. **Eager package imports.** ``kubernetes/__init__.py`` imports the whole
   synchronous client (its ``client``, ``config``, ``dynamic``, ``watch``,
   ``stream``, ``utils``, ``leaderelection`` and ``informer`` packages, with
   ``requests``, ``urllib3``, ``oauthlib``...) and ``kubernetes/aio/__init__.py``
   imports every asyncio sub-package, although kndkit needs only
   ``kubernetes.aio.client``, ``.config`` and ``.watch``. :func:`install` puts
   placeholder package modules for ``kubernetes`` and ``kubernetes.aio`` in
   :data:`sys.modules` *before* either is imported: module objects with the real
   packages' ``__spec__`` and ``__path__``, so ``import kubernetes.aio.client``
   finds and runs the real sub-modules as usual, but the two ``__init__`` files
   are not run. A module ``__getattr__`` imports a sub-package on first
   attribute access (``kubernetes.config`` after a bare ``import kubernetes``
   still works), and ``__version__`` is copied from the distribution metadata.
   Every class (``ApiClient``, ``ResourceV1Api``, the models, ``Watch``...) is
   the official one, loaded from the official file. When ``kubernetes`` is
   imported already (a test process, an application that uses the sync client
   too) nothing is changed.

2. **The generated ``CoreV1Api``.** Its module defines every ``core/v1``
   operation, each wrapped by pydantic's ``validate_call``, and imports about 235
   model modules (Pods, Nodes, volumes...): ~22 MB resident in the driver, for
   the two ``core/v1`` calls kndkit makes (read the Node that owns the
   ResourceSlices; record an Event when ``events.k8s.io`` is unavailable).
   :class:`CoreV1Api` here makes exactly those two calls through the official
   :class:`~kubernetes.aio.client.ApiClient` (same serialization, auth, TLS,
   errors: :class:`~kubernetes.aio.client.exceptions.ApiException`), and
   :data:`client` is the ``kubernetes.aio.client`` module as kndkit sees it:
   every attribute is the official object except ``CoreV1Api``.

Measured with ``benches/rss_driver.py`` (the ``hello`` driver on a simulated
node, Python 3.11): VmRSS idle 111.6 -> 80.3 MiB, after 21 pods 118.6 -> 88.5
MiB; a bare ``import kndkit.driver`` 70.9 -> 62.8 MiB (834 -> 572 modules).

``KNDKIT_K8S_SLIM=0`` in the environment turns both off (the official packages
load as they are), for comparison or if a future client version breaks a
placeholder's assumptions.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import types
from typing import TYPE_CHECKING, Any

log = logging.getLogger("kndkit.k8s")

#: Sub-packages the real ``__init__`` files import eagerly; here on first access.
_SUBPACKAGES = {
    "kubernetes": (
        "client",
        "config",
        "dynamic",
        "watch",
        "stream",
        "utils",
        "leaderelection",
        "informer",
        "aio",
    ),
    "kubernetes.aio": ("client", "config", "dynamic", "leaderelection", "stream", "utils", "watch"),
}

#: ``kubernetes.aio.client`` attributes kndkit replaces (see the module docstring).
REPLACED = ("CoreV1Api",)


def enabled() -> bool:
    """Whether the slim loading is wanted (``KNDKIT_K8S_SLIM`` is not ``0``/``false``/``no``)."""
    return os.environ.get("KNDKIT_K8S_SLIM", "1").strip().lower() not in ("0", "false", "no", "off")


def _placeholder(name: str) -> types.ModuleType | None:
    """A package module for ``name`` with the real spec and path, ``__init__`` not run."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return None
    mod = importlib.util.module_from_spec(spec)  # sets __spec__, __path__, __file__, __loader__
    subs = frozenset(_SUBPACKAGES[name])

    def __getattr__(attr: str) -> Any:
        if attr in subs:
            return importlib.import_module(f"{name}.{attr}")  # also sets it on the module
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    def __dir__() -> list[str]:
        return sorted(set(mod.__dict__) | subs)

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    mod.__dir__ = __dir__  # type: ignore[method-assign]
    try:
        version = importlib.metadata.version("kubernetes")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    mod.__version__ = version  # type: ignore[attr-defined]
    mod.__project__ = "kubernetes" if name == "kubernetes" else "kubernetes_aio"  # type: ignore[attr-defined]
    mod.__kndkit_placeholder__ = True  # type: ignore[attr-defined]
    return mod


def install() -> bool:
    """Register the placeholder ``kubernetes`` and ``kubernetes.aio`` packages.

    Returns True when they are installed (now or by an earlier call), False when
    ``kubernetes`` was imported already, the slim loading is turned off, or the
    packages cannot be found (the normal import then reports that).
    """
    if not enabled():
        return False
    if "kubernetes" in sys.modules:
        return bool(getattr(sys.modules["kubernetes"], "__kndkit_placeholder__", False))
    top = _placeholder("kubernetes")
    if top is None:
        return False
    sys.modules["kubernetes"] = top
    try:
        aio = _placeholder("kubernetes.aio")
    except BaseException:
        del sys.modules["kubernetes"]
        raise
    if aio is None:
        del sys.modules["kubernetes"]
        return False
    sys.modules["kubernetes.aio"] = aio
    top.aio = aio  # type: ignore[attr-defined]
    log.debug("kubernetes packages loaded without their __init__ imports")
    return True


install()

# Imported after install(): these load only what they need.
from kubernetes.aio import client as _real_client  # noqa: E402
from kubernetes.aio.client.api_client import ApiClient  # noqa: E402

if TYPE_CHECKING:
    from kubernetes.aio.client.models.core_v1_event import CoreV1Event
    from kubernetes.aio.client.models.v1_node import V1Node


class CoreV1Api:
    """The two ``core/v1`` operations kndkit uses, on the official ``ApiClient``.

    Same calling convention as the generated class (``CoreV1Api(api_client)``,
    coroutine methods, :class:`ApiException` on an error status), without
    loading the generated module and its models. Any other attribute is looked
    up on the generated class, loaded on that first use: a new call elsewhere in
    kndkit costs memory, never a missing method.
    """

    def __init__(self, api_client: ApiClient) -> None:
        self.api_client = api_client
        self._full: Any = None

    def __getattr__(self, name: str) -> Any:
        # Any other operation: the generated class, loaded now (memory, not behaviour).
        if name.startswith("__") or name in ("api_client", "_full"):
            raise AttributeError(name)
        if self._full is None:
            log.info("kubernetes CoreV1Api.%s used: loading the generated CoreV1Api", name)
            self._full = _real_client.CoreV1Api(self.api_client)
        return getattr(self._full, name)

    async def read_node(self, name: str) -> V1Node:
        """``GET /api/v1/nodes/{name}``: the Node (a ``V1Node``)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"read_node: name must be a non-empty string, not {name!r}")
        node: V1Node = await self._call(
            "GET", "/api/v1/nodes/{name}", {"name": name}, types={"200": "V1Node", "401": None}
        )
        return node

    async def create_namespaced_event(
        self, namespace: str, body: CoreV1Event | dict[str, Any]
    ) -> CoreV1Event:
        """``POST /api/v1/namespaces/{namespace}/events``; returns the created Event.

        A dict body is validated as ``CoreV1Event`` first, as the generated
        method does (a malformed Event fails before anything is sent).
        """
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(
                f"create_namespaced_event: namespace must be a non-empty string, not {namespace!r}"
            )
        if isinstance(body, dict):
            model = _real_client.CoreV1Event.from_dict(body)
            if model is None:
                raise ValueError("create_namespaced_event: empty Event body")
            body = model
        created: CoreV1Event = await self._call(
            "POST",
            "/api/v1/namespaces/{namespace}/events",
            {"namespace": namespace},
            body=body,
            types={"200": "CoreV1Event", "201": "CoreV1Event", "202": "CoreV1Event", "401": None},
        )
        return created

    async def _call(
        self,
        method: str,
        path: str,
        path_params: dict[str, str],
        *,
        types: dict[str, str | None],
        body: Any = None,
    ) -> Any:
        headers: dict[str, str | None] = {"Accept": "application/json"}
        param = await self.api_client.param_serialize(
            method=method,
            resource_path=path,
            path_params=path_params,
            query_params=[],
            header_params=headers,
            body=body,
            post_params=[],
            files={},
            auth_settings=["BearerToken"],
            collection_formats={},
        )
        response = await self.api_client.call_api(*param)
        await response.read()  # type: ignore[no-untyped-call]
        return self.api_client.response_deserialize(
            response_data=response, response_types_map=types
        ).data


class _Client(types.ModuleType):
    """``kubernetes.aio.client`` with :data:`REPLACED` names swapped for kndkit's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_client, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(_real_client)) | set(self.__dict__))


if TYPE_CHECKING:
    # Type-checked against the official module: kndkit calls only what both offer.
    from kubernetes.aio import client
else:
    client = _Client("kndkit.k8s._slim.client", _real_client.__doc__)
    if enabled():
        client.CoreV1Api = CoreV1Api

__all__ = ["REPLACED", "CoreV1Api", "client", "enabled", "install"]
