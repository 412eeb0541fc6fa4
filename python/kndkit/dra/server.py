"""The kubelet plugin server: registration, DRA v1/v1beta1 and device health over gRPC.

:class:`KubeletPlugin` runs two ``grpc.aio`` servers on unix sockets:

- the DRA socket (``<plugin_dir>/dra.sock``) serves the DRA node service in every
  version asked for (``v1``, ``v1beta1``; both adapted to the one
  :class:`~kndkit.dra.types.DRAHandler`) and, when a
  :class:`~kndkit.dra.types.HealthSource` is given, the health service in
  ``v1`` and ``v1alpha1``;
- the registration socket (``<registry_dir>/<driver>-reg.sock``) answers the
  kubelet's ``GetInfo`` / ``NotifyRegistrationStatus``. It appears only once the
  DRA socket serves; removing it (``stop()``) deregisters the plugin.

What the kubelet gets, whatever the handler does: an entry for every claim it
named (a claim the handler left out, an exception, or a malformed result become
per-claim errors that the kubelet retries; never a call-level gRPC error), one
call at a time (an :class:`asyncio.Lock`, plus an ``flock`` shared by all
instances in rolling-update mode), and a log line per call with a request id,
the claims, the duration and the errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]

from kndkit._proto import (
    dra_health_v1_pb2,
    dra_health_v1alpha1_pb2,
    dra_v1_pb2,
    dra_v1beta1_pb2,
    pluginregistration_v1_pb2,
)
from kndkit.dra.paths import (
    check_absolute_dir,
    dra_socket_name,
    registration_socket_name,
    validate_driver_name,
    validate_rolling_update_uid,
)
from kndkit.dra.serialize import CallSerializer
from kndkit.dra.sockets import BoundSocket, ensure_dir, listen_unix
from kndkit.dra.types import (
    ClaimRef,
    DeviceHealth,
    DRAHandler,
    HealthSource,
    HealthStatus,
    PrepareResult,
    UnprepareResult,
)
from kndkit.errors import InvalidArgument, KndError

__all__ = [
    "DRA_SERVICE_NAMES",
    "DRA_VERSIONS",
    "HEALTH_SERVICE_NAMES",
    "MAX_HEALTH_MESSAGE",
    "PLUGIN_TYPE",
    "KubeletPlugin",
]

log = logging.getLogger("kndkit.dra")

PLUGIN_TYPE = "DRAPlugin"
"""``PluginInfo.type`` of a DRA driver."""

DRA_VERSIONS = ("v1", "v1beta1")
"""DRA node service versions this server implements, newest first."""

DRA_SERVICE_NAMES = {"v1": "v1.DRAPlugin", "v1beta1": "v1beta1.DRAPlugin"}
"""How each version is named in ``PluginInfo.supported_versions``."""

HEALTH_SERVICE_NAMES = ("v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth")
"""Health service names advertised when a health source is given (newest first)."""

MAX_HEALTH_MESSAGE = 1024
"""Longest ``DeviceHealth.message`` the kubelet accepts; longer messages are cut."""

# Full gRPC service names, taken from the project's own .proto files.
_GRPC_SERVICES = {
    "v1": dra_v1_pb2.DESCRIPTOR.services_by_name["DRAPlugin"].full_name,
    "v1beta1": dra_v1beta1_pb2.DESCRIPTOR.services_by_name["DRAPlugin"].full_name,
}
_REGISTRATION_SERVICE = pluginregistration_v1_pb2.DESCRIPTOR.services_by_name[
    "Registration"
].full_name
_DEFAULT_PLUGINS_DIR = "/var/lib/kubelet/plugins"

_R = TypeVar("_R", PrepareResult, UnprepareResult)


class KubeletPlugin:
    """Registers a DRA driver with the kubelet and serves its gRPC calls.

    Args:
        driver_name: the DRA driver name (a DNS subdomain of at most 63 characters).
        handler: prepares and unprepares claims (see :class:`~kndkit.dra.types.DRAHandler`).
        node_name: the node this runs on; used in log lines.
        registry_dir: the kubelet's plugin registry directory (absolute).
        plugin_dir: the driver's own directory for its DRA socket and lock file
            (absolute; default ``/var/lib/kubelet/plugins/<driver_name>``). Created
            with mode 0700, or set to 0700 if it exists.
        rolling_update_uid: this instance's unique id (normally the pod UID). Turns on
            per-instance socket names, so several instances can be registered at
            once, and an ``flock`` on ``<plugin_dir>/serialize.lock`` so that their
            calls never overlap.
        health: a source of device health; when given, ``v1`` and ``v1alpha1``
            ``DRAResourceHealth`` are served on the DRA socket and advertised.
        versions: DRA node service versions to serve, a non-empty subset of
            ``("v1", "v1beta1")``; they are advertised newest first whatever the order given.

    Raises:
        InvalidArgument: for any bad argument, before anything is created.
    """

    def __init__(
        self,
        driver_name: str,
        handler: DRAHandler,
        *,
        node_name: str = "",
        registry_dir: str = "/var/lib/kubelet/plugins_registry",
        plugin_dir: str | None = None,
        rolling_update_uid: str | None = None,
        health: HealthSource | None = None,
        versions: Sequence[str] = ("v1", "v1beta1"),
    ) -> None:
        validate_driver_name(driver_name)
        if not isinstance(handler, DRAHandler):
            raise InvalidArgument(
                f"handler {handler!r} does not implement DRAHandler "
                "(async prepare_resource_claims and unprepare_resource_claims)"
            )
        if health is not None and not isinstance(health, HealthSource):
            raise InvalidArgument(f"health {health!r} does not implement HealthSource")
        if isinstance(versions, str):
            raise InvalidArgument(f"versions must be a sequence of strings, not {versions!r}")
        unknown = [v for v in versions if v not in DRA_VERSIONS]
        if unknown:
            raise InvalidArgument(
                f"unknown DRA version(s) {unknown}: choose from {list(DRA_VERSIONS)}"
            )
        if not versions:
            raise InvalidArgument("versions is empty: the kubelet needs at least one DRA version")
        if rolling_update_uid is not None:
            validate_rolling_update_uid(rolling_update_uid)
        registry = check_absolute_dir("registry_dir", registry_dir)
        pdir = check_absolute_dir(
            "plugin_dir", plugin_dir or os.path.join(_DEFAULT_PLUGINS_DIR, driver_name)
        )
        self.driver_name = driver_name
        self.node_name = node_name
        self.registry_dir = registry
        self.plugin_dir = pdir
        self.rolling_update_uid = rolling_update_uid
        self.endpoint = os.path.join(pdir, dra_socket_name(pdir, rolling_update_uid))
        """Absolute path of the DRA socket (``PluginInfo.endpoint``)."""
        self.registration_socket = os.path.join(
            registry, registration_socket_name(registry, driver_name, rolling_update_uid)
        )
        """Absolute path of the registration socket."""
        self.versions = tuple(v for v in DRA_VERSIONS if v in versions)
        self.supported_versions: tuple[str, ...] = tuple(
            DRA_SERVICE_NAMES[v] for v in self.versions
        ) + (HEALTH_SERVICE_NAMES if health is not None else ())
        """What ``GetInfo`` advertises."""
        self.registered = asyncio.Event()
        """Set while the kubelet's last word was ``plugin_registered=true``."""
        self.registration_error: str | None = None
        """The kubelet's error from a refused registration, ``None`` otherwise."""
        self._handler = handler
        self._health = health
        self._serializer = CallSerializer(
            os.path.join(pdir, "serialize.lock") if rolling_update_uid is not None else None
        )
        self._instance = secrets.token_hex(2)
        self._ids = itertools.count(1)
        self._stop_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._dra_server: Any = None
        self._reg_server: Any = None
        self._dra_socket: BoundSocket | None = None
        self._reg_socket: BoundSocket | None = None

    def __repr__(self) -> str:
        return (
            f"KubeletPlugin({self.driver_name!r}, endpoint={self.endpoint!r}, "
            f"registration_socket={self.registration_socket!r})"
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def serving(self) -> bool:
        """Whether ``start()`` completed and ``stop()`` has not run since."""
        return self._reg_server is not None

    async def start(self) -> None:
        """Serve the DRA (and health) socket, then create the registration socket.

        Raises:
            KndError: already started, or a socket could not be created (nothing is
                left behind then).
            InvalidArgument: a socket path is taken by something that is not a socket.
        """
        if self._dra_server is not None:
            raise KndError(f"{self!r} is already started")
        ensure_dir(self.plugin_dir, own=True)
        ensure_dir(self.registry_dir, own=False)
        self._stopping.clear()
        self.registered.clear()
        self.registration_error = None
        dra = grpc.aio.server()
        dra.add_generic_rpc_handlers(tuple(self._dra_handlers()))
        self._dra_socket = await listen_unix(dra, self.endpoint)
        self._dra_server = dra
        try:
            reg = grpc.aio.server()
            reg.add_generic_rpc_handlers((self._registration_handler(),))
            self._reg_socket = await listen_unix(reg, self.registration_socket)
            self._reg_server = reg
        except BaseException:
            await self._shutdown(0.0)
            raise
        log.info(
            "DRA plugin %s serving %s on %s, registration socket %s%s",
            self.driver_name,
            ", ".join(self.supported_versions),
            self.endpoint,
            self.registration_socket,
            f" (node {self.node_name})" if self.node_name else "",
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Deregister (remove the registration socket), then stop serving and remove the DRA socket.

        Calls in flight get ``grace`` seconds to finish; health streams end at once.
        Only sockets this instance created are removed. Safe to call more than
        once, concurrently, and from a task started by a signal handler.
        """
        async with self._stop_lock:
            if self._dra_server is None:
                return
            await self._shutdown(grace)
            log.info("DRA plugin %s stopped (%s)", self.driver_name, self.endpoint)

    async def _shutdown(self, grace: float) -> None:
        self._stopping.set()
        if self._reg_socket is not None and self._reg_socket.remove():
            log.info("removed registration socket %s", self._reg_socket.path)
        self._reg_socket = None
        if self._reg_server is not None:
            await self._reg_server.stop(None)
            self._reg_server = None
        if self._dra_server is not None:
            await self._dra_server.stop(grace)
            self._dra_server = None
        if self._dra_socket is not None:
            self._dra_socket.remove()
            self._dra_socket = None
        self.registered.clear()

    async def __aenter__(self) -> KubeletPlugin:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ registration

    def _registration_handler(self) -> Any:
        pb = pluginregistration_v1_pb2

        async def get_info(_request: pb.InfoRequest, _context: Any) -> pb.PluginInfo:
            log.debug("kubelet asked for plugin info of %s", self.driver_name)
            return pb.PluginInfo(
                type=PLUGIN_TYPE,
                name=self.driver_name,
                endpoint=self.endpoint,
                supported_versions=list(self.supported_versions),
            )

        async def notify(
            request: pb.RegistrationStatus, _context: Any
        ) -> pb.RegistrationStatusResponse:
            if request.plugin_registered:
                self.registration_error = None
                self.registered.set()
                log.info("kubelet registered DRA plugin %s (%s)", self.driver_name, self.endpoint)
            else:
                self.registration_error = request.error or "refused without a reason"
                self.registered.clear()
                log.error(
                    "kubelet refused to register DRA plugin %s: %s",
                    self.driver_name,
                    self.registration_error,
                )
            return pb.RegistrationStatusResponse()

        return grpc.method_handlers_generic_handler(
            _REGISTRATION_SERVICE,
            {
                "GetInfo": grpc.unary_unary_rpc_method_handler(
                    get_info,
                    request_deserializer=pb.InfoRequest.FromString,
                    response_serializer=pb.PluginInfo.SerializeToString,
                ),
                "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
                    notify,
                    request_deserializer=pb.RegistrationStatus.FromString,
                    response_serializer=pb.RegistrationStatusResponse.SerializeToString,
                ),
            },
        )

    # ------------------------------------------------------------------ DRA

    def _dra_handlers(self) -> list[Any]:
        handlers = [self._dra_handler(v) for v in self.versions]
        if self._health is not None:
            handlers.append(self._health_handler("v1", dra_health_v1_pb2))
            handlers.append(self._health_handler("v1alpha1", dra_health_v1alpha1_pb2))
        return handlers

    def _dra_handler(self, version: str) -> Any:
        pb: Any = dra_v1_pb2 if version == "v1" else dra_v1beta1_pb2
        api = DRA_SERVICE_NAMES[version]
        share_ids = version == "v1"

        async def prepare(request: Any, _context: Any) -> Any:
            claims = [ClaimRef(c.namespace, c.name, c.uid) for c in request.claims]
            results = await self.prepare(claims, api=api)
            response = pb.NodePrepareResourcesResponse()
            for uid, result in results.items():
                entry = response.claims[uid]
                try:
                    _fill_prepared(entry, result, share_ids)
                except Exception as e:
                    entry.Clear()
                    entry.error = f"driver returned an invalid result: {type(e).__name__}: {e}"
                    log.error("%s: claim %s: %s", api, uid, entry.error)
            return response

        async def unprepare(request: Any, _context: Any) -> Any:
            claims = [ClaimRef(c.namespace, c.name, c.uid) for c in request.claims]
            results = await self.unprepare(claims, api=api)
            response = pb.NodeUnprepareResourcesResponse()
            for uid, result in results.items():
                response.claims[uid].error = result.error
            return response

        return grpc.method_handlers_generic_handler(
            _GRPC_SERVICES[version],
            {
                "NodePrepareResources": grpc.unary_unary_rpc_method_handler(
                    prepare,
                    request_deserializer=pb.NodePrepareResourcesRequest.FromString,
                    response_serializer=pb.NodePrepareResourcesResponse.SerializeToString,
                ),
                "NodeUnprepareResources": grpc.unary_unary_rpc_method_handler(
                    unprepare,
                    request_deserializer=pb.NodeUnprepareResourcesRequest.FromString,
                    response_serializer=pb.NodeUnprepareResourcesResponse.SerializeToString,
                ),
            },
        )

    def _request_id(self) -> str:
        return f"{self._instance}-{next(self._ids)}"

    async def prepare(
        self, claims: Sequence[ClaimRef], *, api: str = "direct"
    ) -> dict[str, PrepareResult]:
        """NodePrepareResources without the wire: what the kubelet would get, by claim UID.

        Serialised with every other call; never raises for a handler failure.
        """
        return await self._call(
            "NodePrepareResources",
            api,
            claims,
            self._handler.prepare_resource_claims,
            PrepareResult,
        )

    async def unprepare(
        self, claims: Sequence[ClaimRef], *, api: str = "direct"
    ) -> dict[str, UnprepareResult]:
        """NodeUnprepareResources without the wire; see :meth:`prepare`."""
        return await self._call(
            "NodeUnprepareResources",
            api,
            claims,
            self._handler.unprepare_resource_claims,
            UnprepareResult,
        )

    async def _call(
        self,
        method: str,
        api: str,
        claims: Sequence[ClaimRef],
        fn: Callable[[Sequence[ClaimRef]], Any],
        kind: type[_R],
    ) -> dict[str, _R]:
        rid = self._request_id()
        start = time.monotonic()
        results: dict[str, _R] = {}
        unique: dict[str, ClaimRef] = {}
        for c in claims:
            if not c.uid:
                results[""] = kind(error=f"claim {c.namespace}/{c.name} has no UID")
            elif c.uid in unique:
                log.warning("request %s: claim %s named twice; handled once", rid, c)
            else:
                unique[c.uid] = c
        todo = list(unique.values())
        log.info(
            "request %s: %s %s for %d claim(s): %s",
            rid,
            api,
            method,
            len(todo),
            ", ".join(str(c) for c in todo) or "-",
        )
        if todo:
            try:
                async with self._serializer.hold():
                    raw = await fn(todo)
            except Exception as e:
                log.exception("request %s: %s failed", rid, method)
                msg = f"{method} failed in the driver (request {rid}): {type(e).__name__}: {e}"
                results.update((c.uid, kind(error=msg)) for c in todo)
            else:
                results.update(_complete(rid, method, todo, raw, kind))
        errors = {uid: r.error for uid, r in results.items() if r.error}
        for uid, err in errors.items():
            log.warning("request %s: claim %s: %s", rid, unique.get(uid, uid), err)
        log.info(
            "request %s: %s done in %.1f ms: %d claim(s), %d error(s)",
            rid,
            method,
            (time.monotonic() - start) * 1000.0,
            len(results),
            len(errors),
        )
        return results

    # ------------------------------------------------------------------ health

    def _health_handler(self, version: str, pb: Any) -> Any:
        api = f"{version}.DRAResourceHealth"

        async def watch(_request: Any, context: Any) -> AsyncIterator[Any]:
            async with contextlib.aclosing(self._health_lists(api, context)) as lists:
                async for devices in lists:
                    yield pb.NodeWatchResourcesResponse(
                        devices=[
                            pb.DeviceHealth(
                                device=pb.DeviceIdentifier(
                                    pool_name=d.pool_name, device_name=d.device_name
                                ),
                                health=int(d.health),
                                last_updated_time=d.last_updated,
                                health_check_timeout_seconds=d.check_timeout_seconds,
                                message=d.message,
                            )
                            for d in devices
                        ]
                    )

        return grpc.method_handlers_generic_handler(
            f"{version}.DRAResourceHealth",
            {
                "NodeWatchResources": grpc.unary_stream_rpc_method_handler(
                    watch,
                    request_deserializer=pb.NodeWatchResourcesRequest.FromString,
                    response_serializer=pb.NodeWatchResourcesResponse.SerializeToString,
                )
            },
        )

    async def _health_lists(
        self, api: str, context: Any
    ) -> AsyncGenerator[list[DeviceHealth], None]:
        """Complete, cleaned device lists from the health source until it ends or we stop."""
        assert self._health is not None
        rid = self._request_id()
        log.info("request %s: %s NodeWatchResources opened", rid, api)
        source = self._health.watch_health()
        stopping = asyncio.ensure_future(self._stopping.wait())
        pending: asyncio.Future[Sequence[DeviceHealth]] | None = None
        sent = 0
        try:
            while True:
                pending = asyncio.ensure_future(_next(source))
                done, _ = await asyncio.wait(
                    {pending, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if pending not in done:
                    log.info("request %s: health stream closed (plugin stopping)", rid)
                    return
                try:
                    item = [_clean_health(d) for d in pending.result()]
                except StopAsyncIteration:
                    log.info("request %s: health source ended after %d message(s)", rid, sent)
                    return
                except Exception as e:
                    log.exception("request %s: health source failed", rid)
                    await context.abort(
                        grpc.StatusCode.INTERNAL,
                        f"health source failed (request {rid}): {type(e).__name__}: {e}",
                    )
                    return
                finally:
                    pending = None
                sent += 1
                yield item
        finally:
            stopping.cancel()
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            log.debug("request %s: health stream done", rid)


async def _next(it: AsyncIterator[Sequence[DeviceHealth]]) -> Sequence[DeviceHealth]:
    return await anext(it)


def _clean_health(d: DeviceHealth) -> DeviceHealth:
    if not isinstance(d, DeviceHealth):
        raise TypeError(f"health source yielded {type(d).__name__}, not DeviceHealth")
    try:
        health = HealthStatus(int(d.health))
    except ValueError:
        health = HealthStatus.UNKNOWN
    message = d.message
    if len(message) > MAX_HEALTH_MESSAGE:
        message = message[: MAX_HEALTH_MESSAGE - 3] + "..."
    if health is d.health and message is d.message:
        return d
    return DeviceHealth(
        d.pool_name, d.device_name, health, d.last_updated, d.check_timeout_seconds, message
    )


def _fill_prepared(entry: Any, result: PrepareResult, share_ids: bool) -> None:
    entry.error = result.error
    for d in result.devices:
        dev = entry.devices.add(
            request_names=list(d.request_names),
            pool_name=d.pool_name,
            device_name=d.device_name,
            cdi_device_ids=list(d.cdi_device_ids),
        )
        if d.share_id is not None:
            if share_ids:
                dev.share_id = d.share_id
            else:
                log.debug(
                    "v1beta1 has no share_id; %s/%s sent without it", d.pool_name, d.device_name
                )


def _complete(
    rid: str,
    method: str,
    claims: Iterable[ClaimRef],
    raw: object,
    kind: type[_R],
) -> dict[str, _R]:
    """One result per requested claim from whatever the handler returned."""
    out: dict[str, _R] = {}
    if not isinstance(raw, Mapping):
        msg = (
            f"{method}: the driver returned {type(raw).__name__}, "
            f"not a mapping of claim UID to {kind.__name__} (request {rid})"
        )
        return {c.uid: kind(error=msg) for c in claims}
    wanted = set()
    for c in claims:
        wanted.add(c.uid)
        r = raw.get(c.uid)
        if r is None:
            out[c.uid] = kind(
                error=f"the driver returned no result for claim {c.namespace}/{c.name} "
                f"(uid {c.uid}, request {rid})"
            )
        elif not isinstance(r, kind):
            out[c.uid] = kind(
                error=f"the driver returned {type(r).__name__} for claim "
                f"{c.namespace}/{c.name}, not {kind.__name__} (request {rid})"
            )
        else:
            out[c.uid] = r
    extra = [k for k in raw if k not in wanted]
    if extra:
        log.warning("request %s: driver answered for claims not asked for: %s", rid, extra)
    return out
