"""Prometheus metrics of a kndkit driver and its HTTP endpoints.

Every metric lives in one module-level registry, :data:`REGISTRY`, and carries a
``driver`` label, so several drivers in one process (tests, the demo) never mix
their numbers. The metrics (label names in braces):

=========================================  =========  ===============================
name                                       type       labels
=========================================  =========  ===============================
``kndkit_dra_requests_total``              counter    driver, method, result
``kndkit_dra_request_duration_seconds``    histogram  driver, method
``kndkit_nri_requests_total``              counter    driver, event, result
``kndkit_nri_request_duration_seconds``    histogram  driver, event
``kndkit_attach_duration_seconds``         histogram  driver, op (``attach``/``detach``)
``kndkit_published_devices``               gauge      driver
``kndkit_last_publish_timestamp_seconds``  gauge      driver
``kndkit_errors_total``                    counter    driver, component, reason
``kndkit_prepared_claims``                 gauge      driver
``kndkit_attached_pods``                   gauge      driver
=========================================  =========  ===============================

The registry also holds the standard ``process_*`` metrics (resident memory, CPU
time, open file descriptors) of the driver process.

:func:`timed` measures a block into a histogram, or into a ``(counter,
histogram)`` pair where the counter also gets a ``result`` label::

    with timed((DRA_REQUESTS, DRA_LATENCY), driver=name, method="NodePrepareResources") as t:
        ...
        if per_claim_errors:
            t.result = "error"

:class:`ObservabilityServer` serves ``/metrics``, ``/healthz`` (liveness) and
``/readyz`` (readiness) over HTTP/1.1 on the asyncio loop: a request never blocks
the loop (the exposition text is rendered on a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from kndkit.errors import InvalidArgument, KndError

__all__ = [
    "ATTACHED_PODS",
    "ATTACH_DURATION",
    "DRA_LATENCY",
    "DRA_REQUESTS",
    "ERRORS",
    "LAST_PUBLISH",
    "NRI_LATENCY",
    "NRI_REQUESTS",
    "PREPARED_CLAIMS",
    "PUBLISHED_DEVICES",
    "REGISTRY",
    "HealthCheck",
    "ObservabilityServer",
    "Timing",
    "render",
    "timed",
]

log = logging.getLogger("kndkit.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
"""The registry every kndkit metric is registered in (and that ``/metrics`` serves)."""

ProcessCollector(registry=REGISTRY)

# Latency buckets. Requests from the kubelet and the runtime include Kubernetes API
# calls (seconds at worst); attach/detach is one netlink batch (sub-millisecond to
# tens of milliseconds).
_REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_ATTACH_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

DRA_REQUESTS = Counter(
    "kndkit_dra_requests",
    "DRA gRPC requests from the kubelet, by method and result (ok or error).",
    ["driver", "method", "result"],
    registry=REGISTRY,
)
DRA_LATENCY = Histogram(
    "kndkit_dra_request_duration_seconds",
    "Time to answer a DRA gRPC request from the kubelet.",
    ["driver", "method"],
    buckets=_REQUEST_BUCKETS,
    registry=REGISTRY,
)
NRI_REQUESTS = Counter(
    "kndkit_nri_requests",
    "NRI events from the container runtime, by event and result (ok or error).",
    ["driver", "event", "result"],
    registry=REGISTRY,
)
NRI_LATENCY = Histogram(
    "kndkit_nri_request_duration_seconds",
    "Time to answer an NRI event from the container runtime.",
    ["driver", "event"],
    buckets=_REQUEST_BUCKETS,
    registry=REGISTRY,
)
ATTACH_DURATION = Histogram(
    "kndkit_attach_duration_seconds",
    "Time of the native call that attaches a pod's interfaces (op=attach)"
    " or gives them back to the host (op=detach).",
    ["driver", "op"],
    buckets=_ATTACH_BUCKETS,
    registry=REGISTRY,
)
PUBLISHED_DEVICES = Gauge(
    "kndkit_published_devices",
    "Devices in this node's ResourceSlices as last published.",
    ["driver"],
    registry=REGISTRY,
)
LAST_PUBLISH = Gauge(
    "kndkit_last_publish_timestamp_seconds",
    "Unix time of the last successful ResourceSlice publish.",
    ["driver"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "kndkit_errors",
    "Errors by component (discovery, publish, prepare, attach, detach, status, nri...) and reason.",
    ["driver", "component", "reason"],
    registry=REGISTRY,
)
PREPARED_CLAIMS = Gauge(
    "kndkit_prepared_claims",
    "Claims prepared on this node and not yet unprepared.",
    ["driver"],
    registry=REGISTRY,
)
ATTACHED_PODS = Gauge(
    "kndkit_attached_pods",
    "Pods whose interfaces are attached.",
    ["driver"],
    registry=REGISTRY,
)


def render(registry: CollectorRegistry = REGISTRY, accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``registry`` for an ``Accept`` header: (body, content type).

    Prometheus text format by default, OpenMetrics when the scraper asks for it.
    """
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


# --------------------------------------------------------------------------- timed


@dataclass
class Timing:
    """What :func:`timed` yields: set ``result`` to record another outcome than ``ok``.

    ``result`` becomes ``"error"`` when the block raises, ``"cancelled"`` when its
    task is cancelled (unless the block set another value than ``"ok"`` first).
    ``duration_s`` is set when the block ends.
    """

    result: str = "ok"
    duration_s: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)


def _labelnames(metric: Counter | Histogram) -> tuple[str, ...]:
    names: tuple[str, ...] = tuple(getattr(metric, "_labelnames", ()))
    return names


def _metric_name(metric: Counter | Histogram) -> str:
    return str(getattr(metric, "_name", type(metric).__name__))


@contextlib.contextmanager
def timed(
    metrics: Histogram | tuple[Counter, Histogram],
    **labels: str,
) -> Iterator[Timing]:
    """Time the ``with`` block into a histogram, or a ``(counter, histogram)`` pair.

    ``labels`` are the label values; each metric takes the ones it declares. The
    counter's ``result`` label comes from the yielded :class:`Timing` (``"ok"``,
    ``"error"`` when the block raised, ``"cancelled"`` when it was cancelled, or
    what the block set). The exception, if any, propagates unchanged.

    Raises:
        InvalidArgument: before the block runs, when a label a metric needs is
            missing or a label belongs to none of the metrics.
    """
    if isinstance(metrics, tuple):
        if len(metrics) != 2 or not isinstance(metrics[0], Counter):
            raise InvalidArgument("timed() takes a Histogram or a (Counter, Histogram) pair")
        counter: Counter | None = metrics[0]
        hist = metrics[1]
    else:
        counter, hist = None, metrics
    if not isinstance(hist, Histogram):
        raise InvalidArgument(f"timed(): {_metric_name(hist)} is not a Histogram")
    labels = {k: str(v) for k, v in labels.items()}
    hist_names = _labelnames(hist)
    counter_names = tuple(n for n in _labelnames(counter) if n != "result") if counter else ()
    known = set(hist_names) | set(counter_names)
    unknown = sorted(set(labels) - known)
    if unknown:
        raise InvalidArgument(f"timed(): unknown label(s) {', '.join(unknown)}")
    for metric, names in ((hist, hist_names), (counter, counter_names)):
        if metric is None:
            continue
        missing = [n for n in names if n not in labels]
        if missing:
            raise InvalidArgument(
                f"timed(): {_metric_name(metric)} needs label(s) {', '.join(missing)}"
            )
    timing = Timing(labels=labels)
    start = time.perf_counter()
    try:
        yield timing
    except asyncio.CancelledError:
        if timing.result == "ok":
            timing.result = "cancelled"
        raise
    except BaseException:
        if timing.result == "ok":
            timing.result = "error"
        raise
    finally:
        timing.duration_s = time.perf_counter() - start
        hist.labels(**{n: labels[n] for n in hist_names}).observe(timing.duration_s)
        if counter is not None:
            counter.labels(**{n: labels[n] for n in counter_names}, result=timing.result).inc()


# --------------------------------------------------------------------------- HTTP

HealthCheck = Callable[[], tuple[bool, str] | Awaitable[tuple[bool, str]]]
"""A liveness or readiness check: ``(ok, reason)``, plain or awaitable."""

_MAX_REQUEST_HEAD = 16 * 1024
_READ_TIMEOUT_S = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


class ObservabilityServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP/1.1, served on the asyncio loop.

    * ``GET /metrics``: the registry in the Prometheus text format (OpenMetrics
      when the ``Accept`` header asks for it);
    * ``GET /healthz``: ``live()``; ``GET /readyz``: ``ready()``. Each answers
      200 ``ok`` when the check returns ``(True, _)``, otherwise 503 with the
      check's reason as the body (a check that raises counts as failed, its
      exception as the reason).

    ``HEAD`` is answered like ``GET`` without a body; other methods get 405,
    other paths 404. Every response closes its connection. ``port=0`` binds an
    ephemeral port; :attr:`port` is the bound one once :meth:`start` returned.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "0.0.0.0",
        ready: HealthCheck = _always_ok,
        live: HealthCheck = _always_ok,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        if not 0 <= port <= 65535:
            raise InvalidArgument(f"metrics port {port} is outside 0-65535")
        self.host = host
        self._requested_port = port
        self._ready = ready
        self._live = live
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._port = 0

    @property
    def port(self) -> int:
        """The port bound by :meth:`start` (the requested one, or the ephemeral one for 0).

        Still the last bound port after :meth:`stop`.
        """
        if not self._port:
            raise KndError("ObservabilityServer: not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server (loopback for a wildcard host)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving (returns once the socket listens).

        Raises:
            KndError: the address cannot be bound (in use, bad host), naming it.
        """
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self._requested_port, limit=_MAX_REQUEST_HEAD
            )
        except OSError as e:
            where = f"{self.host}:{self._requested_port}"
            raise KndError(f"metrics server: cannot listen on {where}: {e.strerror or e}") from e
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Stop listening and end requests in progress (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)

    async def __aenter__(self) -> ObservabilityServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- request handling

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("metrics server: request failed")
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._respond(writer, 431, b"request head too large\n")
            return
        except TimeoutError:
            await self._respond(writer, 408, b"request timeout\n")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._respond(writer, 400, b"bad request line\n")
            return
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                await self._respond(writer, 400, b"bad header line\n")
                return
            headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            await self._respond(writer, 404, b"not found\n", head_only=method == "HEAD")
            return
        if method not in ("GET", "HEAD"):
            await self._respond(writer, 405, b"method not allowed\n", extra={"Allow": "GET, HEAD"})
            return
        head_only = method == "HEAD"
        if path == "/metrics":
            body, ctype = await asyncio.to_thread(render, self._registry, headers.get("accept", ""))
            await self._respond(writer, 200, body, content_type=ctype, head_only=head_only)
            return
        ok, reason = await self._check(self._live if path == "/healthz" else self._ready)
        if ok:
            await self._respond(writer, 200, b"ok", head_only=head_only)
        else:
            await self._respond(writer, 503, reason.encode(), head_only=head_only)

    async def _check(self, check: HealthCheck) -> tuple[bool, str]:
        try:
            res = check()
            if inspect.isawaitable(res):
                res = await res
            ok, reason = res
        except Exception as e:
            log.warning("health check %r failed: %s", check, e)
            return False, f"check failed: {type(e).__name__}: {e}"
        return bool(ok), str(reason) or ("ok" if ok else "not ready")

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        head_only: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-cache",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        await writer.drain()
