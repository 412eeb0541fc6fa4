"""An NRI plugin in asyncio: registration, configuration, synchronisation, events.

Subclass :class:`Plugin` and define the hooks you need; defining a hook
subscribes to its event (the Configure answer's event mask is derived from the
hooks the subclass has). Every hook is optional and ``async``::

    configure(config: str, runtime: str, version: str) -> None
    synchronize(pods: list[Pod], containers: list[Container]) -> Sequence[ContainerUpdate] | None
    shutdown() -> None

    run_pod_sandbox(pod) -> None              stop_pod_sandbox(pod) -> None
    remove_pod_sandbox(pod) -> None           post_update_pod_sandbox(pod) -> None
    update_pod_sandbox(pod, overhead: LinuxResources | None,
                       resources: LinuxResources | None) -> None

    create_container(pod, container)
        -> ContainerAdjustment | None
         | tuple[ContainerAdjustment | None, Sequence[ContainerUpdate]]
         | tuple[ContainerAdjustment | None, Sequence[ContainerUpdate], Sequence[ContainerEviction]]
    update_container(pod, container, resources: LinuxResources | None)
        -> Sequence[ContainerUpdate] | None
    stop_container(pod, container) -> Sequence[ContainerUpdate] | None
    post_create_container / start_container / post_start_container /
    post_update_container / remove_container(pod, container) -> None
    validate_container_adjustment(request: AdjustmentValidation) -> str | None
        (a string rejects the container with that reason)

(``LinuxResources`` is ``kndkit._proto.nri_v1alpha1_pb2.LinuxResources``.)

A hook that raises makes its request fail: the runtime gets the exception's
text (containerd reports ``rpc error: code = Unknown desc = <text>``) and keeps
the plugin connected.

Lifecycle (containerd/nri adaptation v0.11 and v0.12):

1. dial the runtime socket (or use the inherited fd 3 of a pre-started plugin),
   open the multiplexer's two connections, serve the Plugin service on
   connection 1, call ``Runtime.RegisterPlugin`` on connection 2;
2. the runtime calls ``Configure``: the ``configure`` hook runs, the answer
   carries the event mask (bit ``1 << (event - 1)`` per hook; the wire value 0
   would mean *every* event, so a plugin without event hooks subscribes to the
   rare ``POST_UPDATE_POD_SANDBOX`` only);
3. the runtime calls ``Synchronize`` with every existing pod and container, split
   into chunks with ``more=true`` when the message would exceed the ttrpc size
   limit: each chunk but the last is answered ``more=true`` with no updates, and
   the ``synchronize`` hook runs once, on the complete set;
4. events: v0.12 runtimes call one RPC per event (``RunPodSandbox``...) and
   fall back to ``StateChange`` only for a plugin that answers such a call with
   UNIMPLEMENTED (then warning that the plugin is outdated); v0.11 runtimes send
   pod events and post-events through ``StateChange`` only. Both paths are
   served, so a v0.12 runtime never needs the fallback. The runtime only calls
   what the plugin subscribed to; should an unsubscribed event arrive anyway it
   is answered with an empty success. ``Shutdown`` runs the ``shutdown`` hook
   (the v0.12.5 adaptation does not send it; it just closes the connection).

Request timeout: the runtime gives every request a deadline (its
``request_timeout``, 2 s by default, sent in ``Configure`` and in each ttrpc
request's ``timeout_nano``); a request that misses it makes the runtime drop the
plugin's connection and carry on without it (observed with containerd/nri
v0.12.5 and v0.11.0: the event itself succeeds). A hook still running shortly
before the deadline (10 % of the timeout, at least 0.05 s, at most 0.5 s)
therefore fails its request with
``DEADLINE_EXCEEDED`` and a message naming the hook: the runtime reports that
error for the event and keeps the plugin. The hook's task is left to finish;
its late result is logged and discarded.

Reconnection: when the connection ends (runtime restart, the runtime dropping
the plugin), :meth:`Plugin.run` dials again after a capped, jittered exponential
backoff and goes through registration and Synchronize again. A pre-started
plugin (``NRI_PLUGIN_SOCKET`` set: the runtime exec'd it with a socket on that
fd) cannot redial: ``run`` returns when its connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from kndkit._proto import nri_v1alpha1_pb2 as pb
from kndkit.errors import InvalidArgument, KndError, NotAvailable
from kndkit.nri.model import (
    AdjustmentValidation,
    Container,
    ContainerAdjustment,
    ContainerEviction,
    ContainerUpdate,
    Event,
    Pod,
    event_mask,
)
from kndkit.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from kndkit.nri.ttrpc import Code, RequestContext, TtrpcClient, TtrpcError, TtrpcServer

__all__ = [
    "DEFAULT_SOCKET",
    "HOOK_EVENTS",
    "NRI_VERSION",
    "PLUGIN_SERVICE",
    "RUNTIME_SERVICE",
    "Plugin",
    "RuntimeInfo",
]

log = logging.getLogger("kndkit.nri.plugin")

#: Where containerd and CRI-O listen for external NRI plugins.
DEFAULT_SOCKET = "/var/run/nri/nri.sock"
#: The NRI API level this implementation follows (sent in RegisterPlugin).
NRI_VERSION = "v0.12.5"
PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"

#: Hook method name -> the event it subscribes to.
HOOK_EVENTS: dict[str, Event] = {
    "run_pod_sandbox": Event.RUN_POD_SANDBOX,
    "stop_pod_sandbox": Event.STOP_POD_SANDBOX,
    "remove_pod_sandbox": Event.REMOVE_POD_SANDBOX,
    "create_container": Event.CREATE_CONTAINER,
    "post_create_container": Event.POST_CREATE_CONTAINER,
    "start_container": Event.START_CONTAINER,
    "post_start_container": Event.POST_START_CONTAINER,
    "update_container": Event.UPDATE_CONTAINER,
    "post_update_container": Event.POST_UPDATE_CONTAINER,
    "stop_container": Event.STOP_CONTAINER,
    "remove_container": Event.REMOVE_CONTAINER,
    "update_pod_sandbox": Event.UPDATE_POD_SANDBOX,
    "post_update_pod_sandbox": Event.POST_UPDATE_POD_SANDBOX,
    "validate_container_adjustment": Event.VALIDATE_CONTAINER_ADJUSTMENT,
}
_EVENT_HOOKS = {ev: name for name, ev in HOOK_EVENTS.items()}
# Subscribed to when a plugin defines no event hook at all (0 would mean "all").
_IDLE_EVENT = Event.POST_UPDATE_POD_SANDBOX

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_IDX_RE = re.compile(r"^[0-9]{2}$")

REGISTRATION_TIMEOUT = 10.0  # our own bound on the RegisterPlugin call
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 10.0
# Fail a hook's request this long before the runtime's deadline (fraction of the
# request timeout, clamped).
DEADLINE_MARGIN_FRACTION = 0.1
DEADLINE_MARGIN_MIN = 0.05
DEADLINE_MARGIN_MAX = 0.5

M = TypeVar("M", bound=Message)
Hook = Callable[..., Any]


@dataclass(frozen=True)
class RuntimeInfo:
    """What the runtime said about itself in Configure."""

    name: str
    version: str
    nri_version: str  # "" from runtimes before NRI v0.12 (not sent)
    request_timeout: float | None  # seconds
    registration_timeout: float | None  # seconds


def _check_name_idx(name: str, idx: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"NRI plugin name {name!r}: must be non-empty, only [A-Za-z0-9_.+-]")
    if not _IDX_RE.match(idx):
        raise InvalidArgument(f"NRI plugin index {idx!r}: must be exactly 2 digits")


class Plugin:
    """Base class of an NRI plugin; see the module docstring for the hooks.

    ``name`` and ``idx`` (exactly two digits; lower indexes run first) identify
    the plugin to the runtime as ``<idx>-<name>``. ``socket_path`` defaults to
    ``/var/run/nri/nri.sock``. When the environment has ``NRI_PLUGIN_SOCKET``
    (a pre-started plugin the runtime launched from its plugin directory), the
    plugin talks over that inherited fd instead and takes its name and index
    from ``NRI_PLUGIN_NAME`` / ``NRI_PLUGIN_IDX``, as the runtime expects.

    ``connected`` is set while registered with a runtime; ``synchronized`` once
    the current connection's Synchronize has been answered. Both clear when the
    connection ends.

    ``reconnect=False`` makes :meth:`run` return when the first connection ends
    (or raise :class:`~kndkit.errors.NotAvailable` when it cannot dial);
    ``backoff_max`` caps the redial delay (seconds; starts at 0.5 s, doubles,
    each wait drawn from [delay/2, delay]).

    ``keep_connected`` and ``fail_request`` are the plugin's failure policy,
    sent in the Configure answer and honoured by runtimes built with
    containerd/nri v0.12.5 (older ones ignore it): what the runtime does when a
    request to this plugin times out anyway (the plugin's own deadline handling
    normally answers first). By default the runtime drops the plugin and lets
    the request proceed without it; ``keep_connected`` keeps the connection,
    ``fail_request`` makes the request fail.
    """

    def __init__(
        self,
        name: str,
        idx: str,
        *,
        socket_path: str | None = None,
        reconnect: bool = True,
        backoff_max: float = BACKOFF_MAX,
        keep_connected: bool = False,
        fail_request: bool = False,
    ) -> None:
        env_fd = os.environ.get("NRI_PLUGIN_SOCKET", "")
        self._fd: int | None = None
        if env_fd and socket_path is None:
            try:
                self._fd = int(env_fd)
            except ValueError:
                raise InvalidArgument(
                    f"NRI_PLUGIN_SOCKET={env_fd!r}: not a file descriptor"
                ) from None
            name = os.environ.get("NRI_PLUGIN_NAME") or name
            idx = os.environ.get("NRI_PLUGIN_IDX") or idx
        _check_name_idx(name, idx)
        if backoff_max <= 0:
            raise InvalidArgument(f"backoff_max {backoff_max}: must be positive")
        self.name = name
        self.idx = idx
        self.socket_path = socket_path or DEFAULT_SOCKET
        self.reconnect = reconnect
        self.backoff_max = backoff_max
        self.keep_connected = keep_connected
        self.fail_request = fail_request
        self.connected = asyncio.Event()
        self.synchronized = asyncio.Event()
        self.runtime: RuntimeInfo | None = None
        self.events = self._subscribed_events()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._done.set()
        self._session: _Session | None = None
        self._late: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ public

    @property
    def qualified_name(self) -> str:
        return f"{self.idx}-{self.name}"

    @property
    def prestarted(self) -> bool:
        """True when running over the fd the runtime handed over (NRI_PLUGIN_SOCKET)."""
        return self._fd is not None

    @property
    def event_mask(self) -> int:
        """The ConfigureResponse.events value this plugin sends."""
        return event_mask(self.events)

    async def run(self) -> None:
        """Connect, register, serve; on disconnect reconnect with backoff until :meth:`stop`.

        Returns after :meth:`stop`, or when the connection of a pre-started plugin
        (or of one made with ``reconnect=False``) ends.
        """
        if not self._done.is_set():
            raise KndError(f"NRI plugin {self.qualified_name}: run() is already running")
        self._done.clear()
        self._stop.clear()
        delay = BACKOFF_INITIAL
        try:
            while not self._stop.is_set():
                try:
                    if self._fd is not None:
                        mux = await Mux.from_fd(self._fd)
                    else:
                        mux = await Mux.connect(self.socket_path)
                except (OSError, KndError) as e:
                    if self._fd is not None:
                        raise NotAvailable(
                            f"NRI plugin {self.qualified_name}: inherited fd {self._fd} "
                            f"is not usable: {e}"
                        ) from e
                    if not self.reconnect:
                        raise NotAvailable(
                            f"NRI plugin {self.qualified_name}: cannot connect to "
                            f"{self.socket_path}: {e}"
                        ) from e
                    wait = _jitter(delay)
                    log.warning(
                        "NRI plugin %s: cannot connect to %s (%s); retrying in %.1fs",
                        self.qualified_name,
                        self.socket_path,
                        e,
                        wait,
                    )
                    await self._sleep(wait)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                session = _Session(self, mux)
                self._session = session
                try:
                    await session.run()
                finally:
                    self._session = None
                if self._stop.is_set():
                    break
                if self._fd is not None or not self.reconnect:
                    log.info("NRI plugin %s: connection ended; not redialling", self.qualified_name)
                    break
                if session.synchronized_once:
                    delay = BACKOFF_INITIAL
                wait = _jitter(delay)
                log.info(
                    "NRI plugin %s: connection to the runtime ended; reconnecting in %.1fs",
                    self.qualified_name,
                    wait,
                )
                await self._sleep(wait)
                delay = min(delay * 2, self.backoff_max)
        finally:
            self.connected.clear()
            self.synchronized.clear()
            self._done.set()

    async def stop(self) -> None:
        """Close the connection and make :meth:`run` return; cancels late hook tasks.

        Safe to call more than once, and before or without :meth:`run`. Do not
        await it from inside a hook (the hook's own request is torn down with the
        connection); schedule it as a task instead.
        """
        self._stop.set()
        session = self._session
        if session is not None:
            await session.mux.close()
        for t in list(self._late):
            t.cancel()
        await self._done.wait()

    async def update_containers(
        self,
        updates: Sequence[ContainerUpdate],
        evictions: Sequence[ContainerEviction] = (),
    ) -> list[ContainerUpdate]:
        """Ask the runtime, unsolicited, to update or evict containers.

        Returns the updates the runtime could not apply. Raises
        :class:`~kndkit.errors.NotAvailable` when not connected, and
        :class:`~kndkit.nri.ttrpc.TtrpcError` when the runtime refuses the call.
        Do not await it from a hook of the same runtime: the runtime may be
        waiting for that hook before it serves this request.
        """
        session = self._session
        if session is None or not self.connected.is_set():
            raise NotAvailable(f"NRI plugin {self.qualified_name}: not connected to a runtime")
        req = pb.UpdateContainersRequest(
            update=[u.to_proto() for u in updates], evict=[e.to_proto() for e in evictions]
        )
        timeout = self.runtime.request_timeout if self.runtime else None
        raw = await session.client.call(
            RUNTIME_SERVICE, "UpdateContainers", req.SerializeToString(), timeout=timeout
        )
        resp = pb.UpdateContainersResponse.FromString(raw)
        return [ContainerUpdate.from_proto(u) for u in resp.failed]

    async def __aenter__(self) -> Plugin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- internal

    def _hook(self, name: str) -> Hook | None:
        h = getattr(self, name, None)
        return h if callable(h) else None

    def _subscribed_events(self) -> frozenset[Event]:
        events = frozenset(ev for name, ev in HOOK_EVENTS.items() if self._hook(name) is not None)
        return events or frozenset({_IDLE_EVENT})

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _late_done(self, what: str, task: asyncio.Task[Any]) -> None:
        self._late.discard(task)
        if task.cancelled():
            log.info("NRI plugin %s: late %s cancelled", self.qualified_name, what)
        elif (exc := task.exception()) is not None:
            log.warning(
                "NRI plugin %s: late %s failed after its request had timed out: %r",
                self.qualified_name,
                what,
                exc,
            )
        else:
            log.warning(
                "NRI plugin %s: late %s finished after its request had timed out; result discarded",
                self.qualified_name,
                what,
            )


def _jitter(delay: float) -> float:
    return random.uniform(delay / 2, delay)


def _margin(total: float) -> float:
    return min(DEADLINE_MARGIN_MAX, max(DEADLINE_MARGIN_MIN, total * DEADLINE_MARGIN_FRACTION))


class _Session:
    """One connection to a runtime: its ttrpc server and client and per-connection state."""

    def __init__(self, plugin: Plugin, mux: Mux) -> None:
        self.plugin = plugin
        self.mux = mux
        self.request_timeout: float | None = None
        self.synchronized_once = False
        self._sync_pods: list[pb.PodSandbox] = []
        self._sync_ctrs: list[pb.Container] = []
        plugin_conn = mux.open(PLUGIN_SERVICE_CONN)
        runtime_conn = mux.open(RUNTIME_SERVICE_CONN)
        handlers: dict[str, Callable[[bytes, RequestContext], Awaitable[bytes]]] = {
            "Configure": self._configure,
            "Synchronize": self._synchronize,
            "Shutdown": self._shutdown,
            "RunPodSandbox": self._pod_event(pb.RunPodSandboxRequest, Event.RUN_POD_SANDBOX),
            "StopPodSandbox": self._pod_event(pb.StopPodSandboxRequest, Event.STOP_POD_SANDBOX),
            "RemovePodSandbox": self._pod_event(
                pb.RemovePodSandboxRequest, Event.REMOVE_POD_SANDBOX
            ),
            "PostUpdatePodSandbox": self._pod_event(
                pb.PostUpdatePodSandboxRequest, Event.POST_UPDATE_POD_SANDBOX
            ),
            "UpdatePodSandbox": self._update_pod_sandbox,
            "CreateContainer": self._create_container,
            "PostCreateContainer": self._ctr_event(
                pb.PostCreateContainerRequest, Event.POST_CREATE_CONTAINER
            ),
            "StartContainer": self._ctr_event(pb.StartContainerRequest, Event.START_CONTAINER),
            "PostStartContainer": self._ctr_event(
                pb.PostStartContainerRequest, Event.POST_START_CONTAINER
            ),
            "PostUpdateContainer": self._ctr_event(
                pb.PostUpdateContainerRequest, Event.POST_UPDATE_CONTAINER
            ),
            "RemoveContainer": self._ctr_event(pb.RemoveContainerRequest, Event.REMOVE_CONTAINER),
            "UpdateContainer": self._update_container,
            "StopContainer": self._stop_container,
            "StateChange": self._state_change,
            "ValidateContainerAdjustment": self._validate,
        }
        self.server = TtrpcServer(
            plugin_conn, {(PLUGIN_SERVICE, m): h for m, h in handlers.items()}
        )
        self.client = TtrpcClient(runtime_conn)

    @property
    def name(self) -> str:
        return self.plugin.qualified_name

    async def run(self) -> None:
        serve = asyncio.create_task(self.server.serve(), name=f"nri-serve-{self.name}")
        closed = asyncio.create_task(self.mux.wait_closed(), name=f"nri-closed-{self.name}")
        try:
            req = pb.RegisterPluginRequest(
                plugin_name=self.plugin.name, plugin_idx=self.plugin.idx, NRI_version=NRI_VERSION
            )
            try:
                await self.client.call(
                    RUNTIME_SERVICE,
                    "RegisterPlugin",
                    req.SerializeToString(),
                    timeout=REGISTRATION_TIMEOUT,
                )
            except (TtrpcError, OSError, KndError, TimeoutError) as e:
                log.error("NRI plugin %s: registration failed: %s", self.name, e)
                return
            log.info("NRI plugin %s: registered", self.name)
            self.plugin.connected.set()
            await asyncio.wait({serve, closed}, return_when=asyncio.FIRST_COMPLETED)
            if serve.done() and not serve.cancelled() and (exc := serve.exception()) is not None:
                log.error("NRI plugin %s: ttrpc server failed: %r", self.name, exc)
        finally:
            self.plugin.connected.clear()
            self.plugin.synchronized.clear()
            for t in (serve, closed):
                t.cancel()
            await asyncio.gather(serve, closed, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.client.close()
            with contextlib.suppress(Exception):
                await self.mux.close()
            log.info("NRI plugin %s: disconnected", self.name)

    # ------------------------------------------------------------ helpers

    def _deadline(self, ctx: RequestContext) -> float | None:
        loop = asyncio.get_running_loop()
        if ctx.deadline is not None:
            return ctx.deadline
        if self.request_timeout is not None:
            return loop.time() + self.request_timeout
        return None

    async def _call_hook(self, what: str, ctx: RequestContext, hook: Hook, *args: Any) -> Any:
        """Run ``hook(*args)``; fail the request before the runtime's deadline if it runs late.

        With a deadline the hook runs as its own task, watched by a timer at the
        cut-off; a hook still running then is left to finish (kept in
        ``Plugin._late``) and the request fails with DEADLINE_EXCEEDED.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def invoke() -> Any:
            result = hook(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

        deadline = self._deadline(ctx)
        task: asyncio.Task[Any] | None = None
        try:
            if deadline is None:
                return await invoke()
            cutoff = deadline - _margin(deadline - start)
            task = loop.create_task(invoke())
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: object = None) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            task.add_done_callback(wake)
            timer = loop.call_at(cutoff, wake)
            try:
                await waiter
            finally:
                timer.cancel()
                task.remove_done_callback(wake)
            if task.done():
                return task.result()
            late = task
            task = None  # not ours to cancel any more
            self.plugin._late.add(late)
            late.add_done_callback(lambda t: self.plugin._late_done(what, t))
            total = deadline - start
            log.error(
                "NRI plugin %s: %s hook still running %.2fs into the runtime's %.2fs "
                "request deadline; failing the request, the hook's late result "
                "will be discarded",
                self.name,
                what,
                loop.time() - start,
                total,
            )
            raise TtrpcError(
                Code.DEADLINE_EXCEEDED,
                f"NRI plugin {self.name}: {what} did not finish within the runtime's "
                f"{total:.2f}s request timeout",
            )
        except TtrpcError:
            raise
        except asyncio.CancelledError:
            if task is not None:
                task.cancel()
            raise
        except Exception as e:
            log.exception("NRI plugin %s: %s hook failed", self.name, what)
            raise TtrpcError(Code.UNKNOWN, str(e) or type(e).__name__) from e

    @staticmethod
    def _decode(msg_type: type[M], payload: bytes) -> M:
        try:
            return msg_type.FromString(payload)
        except DecodeError as e:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"malformed {msg_type.__name__}: {e}") from None

    async def _dispatch_pod(self, event: Event, ctx: RequestContext, pod: pb.PodSandbox) -> None:
        hook = self.plugin._hook(_EVENT_HOOKS[event])
        if hook is None:
            log.debug("NRI plugin %s: %s without a hook, ignored", self.name, event.name)
            return
        await self._call_hook(_EVENT_HOOKS[event], ctx, hook, Pod.from_proto(pod))

    async def _dispatch_ctr(
        self, event: Event, ctx: RequestContext, pod: pb.PodSandbox, ctr: pb.Container
    ) -> Any:
        hook = self.plugin._hook(_EVENT_HOOKS[event])
        if hook is None:
            log.debug("NRI plugin %s: %s without a hook, ignored", self.name, event.name)
            return None
        return await self._call_hook(
            _EVENT_HOOKS[event], ctx, hook, Pod.from_proto(pod), Container.from_proto(ctr)
        )

    # ------------------------------------------------------------ handlers

    async def _configure(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.ConfigureRequest, payload)
        if req.request_timeout > 0:
            self.request_timeout = req.request_timeout / 1000.0
        self.plugin.runtime = RuntimeInfo(
            name=req.runtime_name,
            version=req.runtime_version,
            nri_version=req.NRI_version,
            request_timeout=self.request_timeout,
            registration_timeout=(
                req.registration_timeout / 1000.0 if req.registration_timeout > 0 else None
            ),
        )
        log.info(
            "NRI plugin %s: configured by %s %s (NRI %s, request timeout %s)",
            self.name,
            req.runtime_name,
            req.runtime_version,
            req.NRI_version or "unknown",
            f"{self.request_timeout}s" if self.request_timeout else "unset",
        )
        hook = self.plugin._hook("configure")
        if hook is not None:
            await self._call_hook(
                "configure", ctx, hook, req.config, req.runtime_name, req.runtime_version
            )
        resp = pb.ConfigureResponse(events=self.plugin.event_mask)
        if self.plugin.keep_connected or self.plugin.fail_request:
            resp.failure_policy.keep_connected = self.plugin.keep_connected
            resp.failure_policy.fail_request = self.plugin.fail_request
        return resp.SerializeToString()

    async def _synchronize(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.SynchronizeRequest, payload)
        self._sync_pods.extend(req.pods)
        self._sync_ctrs.extend(req.containers)
        if req.more:
            log.debug(
                "NRI plugin %s: Synchronize chunk (%d pods, %d containers), more follow",
                self.name,
                len(req.pods),
                len(req.containers),
            )
            return pb.SynchronizeResponse(more=True).SerializeToString()
        pods, ctrs = self._sync_pods, self._sync_ctrs
        self._sync_pods, self._sync_ctrs = [], []
        log.info(
            "NRI plugin %s: Synchronize with %d pods, %d containers",
            self.name,
            len(pods),
            len(ctrs),
        )
        resp = pb.SynchronizeResponse()
        hook = self.plugin._hook("synchronize")
        if hook is not None:
            updates = await self._call_hook(
                "synchronize",
                ctx,
                hook,
                [Pod.from_proto(p) for p in pods],
                [Container.from_proto(c) for c in ctrs],
            )
            resp.update.extend(_updates(updates, "synchronize"))
        self.synchronized_once = True
        self.plugin.synchronized.set()
        return resp.SerializeToString()

    async def _shutdown(self, payload: bytes, ctx: RequestContext) -> bytes:
        log.info("NRI plugin %s: runtime shutting down", self.name)
        hook = self.plugin._hook("shutdown")
        if hook is not None:
            await self._call_hook("shutdown", ctx, hook)
        return pb.Empty().SerializeToString()

    def _pod_event(
        self, cls: type[Any], event: Event
    ) -> Callable[[bytes, RequestContext], Awaitable[bytes]]:
        async def handler(payload: bytes, ctx: RequestContext) -> bytes:
            req = self._decode(cls, payload)
            await self._dispatch_pod(event, ctx, req.pod)
            return b""  # every pod-event response is an empty message

        return handler

    def _ctr_event(
        self, cls: type[Any], event: Event
    ) -> Callable[[bytes, RequestContext], Awaitable[bytes]]:
        async def handler(payload: bytes, ctx: RequestContext) -> bytes:
            req = self._decode(cls, payload)
            await self._dispatch_ctr(event, ctx, req.pod, req.container)
            return b""

        return handler

    async def _update_pod_sandbox(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.UpdatePodSandboxRequest, payload)
        hook = self.plugin._hook("update_pod_sandbox")
        if hook is not None:
            await self._call_hook(
                "update_pod_sandbox",
                ctx,
                hook,
                Pod.from_proto(req.pod),
                req.overhead_linux_resources if req.HasField("overhead_linux_resources") else None,
                req.linux_resources if req.HasField("linux_resources") else None,
            )
        return b""

    async def _create_container(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.CreateContainerRequest, payload)
        result = await self._dispatch_ctr(Event.CREATE_CONTAINER, ctx, req.pod, req.container)
        return _create_response(result).SerializeToString()

    async def _update_container(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.UpdateContainerRequest, payload)
        resp = pb.UpdateContainerResponse()
        hook = self.plugin._hook("update_container")
        if hook is not None:
            updates = await self._call_hook(
                "update_container",
                ctx,
                hook,
                Pod.from_proto(req.pod),
                Container.from_proto(req.container),
                req.linux_resources if req.HasField("linux_resources") else None,
            )
            resp.update.extend(_updates(updates, "update_container"))
        return resp.SerializeToString()

    async def _stop_container(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.StopContainerRequest, payload)
        updates = await self._dispatch_ctr(Event.STOP_CONTAINER, ctx, req.pod, req.container)
        resp = pb.StopContainerResponse()
        resp.update.extend(_updates(updates, "stop_container"))
        return resp.SerializeToString()

    async def _state_change(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.StateChangeEvent, payload)
        try:
            event = Event(req.event)
        except ValueError:
            raise TtrpcError(
                Code.INVALID_ARGUMENT, f"StateChange: unknown event {req.event}"
            ) from None
        if event in (
            Event.RUN_POD_SANDBOX,
            Event.STOP_POD_SANDBOX,
            Event.REMOVE_POD_SANDBOX,
            Event.POST_UPDATE_POD_SANDBOX,
        ):
            await self._dispatch_pod(event, ctx, req.pod)
        elif event in (
            Event.POST_CREATE_CONTAINER,
            Event.START_CONTAINER,
            Event.POST_START_CONTAINER,
            Event.POST_UPDATE_CONTAINER,
            Event.REMOVE_CONTAINER,
        ):
            await self._dispatch_ctr(event, ctx, req.pod, req.container)
        else:
            # events with a reply of their own never come through StateChange
            raise TtrpcError(
                Code.INVALID_ARGUMENT, f"StateChange: event {event.name} has its own RPC"
            )
        return b""

    async def _validate(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = self._decode(pb.ValidateContainerAdjustmentRequest, payload)
        resp = pb.ValidateContainerAdjustmentResponse()
        hook = self.plugin._hook("validate_container_adjustment")
        if hook is not None:
            reason = await self._call_hook(
                "validate_container_adjustment", ctx, hook, AdjustmentValidation.from_proto(req)
            )
            if reason is not None:
                if not isinstance(reason, str):
                    raise TtrpcError(
                        Code.INTERNAL,
                        f"NRI plugin {self.name}: validate_container_adjustment returned "
                        f"{type(reason).__name__}, expected str or None",
                    )
                resp.reject = True
                resp.reason = reason or "rejected"
        return resp.SerializeToString()


def _updates(value: Any, hook: str) -> list[pb.ContainerUpdate]:
    if value is None:
        return []
    if isinstance(value, ContainerUpdate):
        value = [value]
    out = []
    for u in value:
        if not isinstance(u, ContainerUpdate):
            raise TtrpcError(
                Code.INTERNAL, f"{hook} returned {type(u).__name__}, expected ContainerUpdate"
            )
        out.append(u.to_proto())
    return out


def _create_response(result: Any) -> pb.CreateContainerResponse:
    resp = pb.CreateContainerResponse()
    if result is None:
        return resp
    adjust: Any = result
    updates: Any = None
    evictions: Any = ()
    if isinstance(result, tuple):
        if len(result) not in (2, 3):
            raise TtrpcError(
                Code.INTERNAL,
                "create_container returned a tuple of "
                f"{len(result)}; expected (adjustment, updates[, evictions])",
            )
        adjust, updates = result[0], result[1]
        if len(result) == 3:
            evictions = result[2]
    if adjust is not None:
        if not isinstance(adjust, ContainerAdjustment):
            raise TtrpcError(
                Code.INTERNAL,
                f"create_container returned {type(adjust).__name__}, expected ContainerAdjustment",
            )
        resp.adjust.CopyFrom(adjust.to_proto())
    resp.update.extend(_updates(updates, "create_container"))
    for e in evictions or ():
        if not isinstance(e, ContainerEviction):
            raise TtrpcError(
                Code.INTERNAL,
                f"create_container returned {type(e).__name__}, expected ContainerEviction",
            )
        resp.evict.append(e.to_proto())
    return resp
