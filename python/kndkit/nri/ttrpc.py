"""ttrpc (containerd's lightweight RPC) over one :class:`~kndkit.nri.mux.MuxConn`.

Each message is a 10-byte header (body length and stream id as big-endian
``uint32``, then a type byte: 1 request, 2 response, 3 data; then a flags
byte) followed by a protobuf body of at most 4 MiB. A request body is a
``ttrpc.Request`` (service, method, serialized argument, timeout in
nanoseconds, metadata); the response carries a ``google.rpc.Status``-shaped
status and the serialized result on the request's stream id. Clients number
their streams 1, 3, 5, ... (odd, strictly increasing); each direction has its
own numbering. NRI uses unary calls only; streaming (type 3) is refused.

:class:`TtrpcServer` answers each request in its own task, so replies can go out
in any order; :class:`TtrpcClient` matches replies to calls by stream id. The
server's error replies use the wording of ``github.com/containerd/ttrpc``
(v1.2.x): ``service X`` / ``method X`` with UNIMPLEMENTED for unknown names,
``StreamID must be odd for client initiated streams`` and ``StreamID cannot be
re-used and must increment`` with INVALID_ARGUMENT, ``unmarshal request error:
...``, and a handler's exception becomes UNKNOWN with the exception text (Go
maps an ordinary error to Unknown the same way).

Bad input never crashes either side and never blocks other calls:

* a header announcing more than 4 MiB closes the whole multiplexed socket
  with a logged error (the stream cannot be resynchronised); a connection
  that ends inside a message is logged as an error;
* an undecodable request is answered with INVALID_ARGUMENT; an undecodable
  response fails only the call it answers (INTERNAL);
* a request over 4 MiB is refused before sending (RESOURCE_EXHAUSTED, with
  Go's wording ``message length N exceed maximum message size of 4194304``);
  a handler result that would make a reply over 4 MiB is answered
  RESOURCE_EXHAUSTED instead; a handler returning something other than bytes
  is answered INTERNAL;
* replies to calls that already timed out are dropped with a debug line;
* too many requests in flight (``max_concurrent``) are answered with
  RESOURCE_EXHAUSTED;
* when the connection closes every pending call fails with UNAVAILABLE and the
  server cancels its running handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from kndkit._proto import ttrpc_pb2
from kndkit.errors import InvalidArgument, KndError
from kndkit.nri.mux import TTRPC_HEADER_SIZE, TTRPC_MAX_MESSAGE, MuxClosed, MuxConn

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MAX_IN_FLIGHT",
    "MESSAGE_DATA",
    "MESSAGE_REQUEST",
    "MESSAGE_RESPONSE",
    "Code",
    "Handler",
    "RequestContext",
    "TtrpcClient",
    "TtrpcError",
    "TtrpcServer",
    "encode_message",
]

log = logging.getLogger("kndkit.nri.ttrpc")

MESSAGE_REQUEST = 1
MESSAGE_RESPONSE = 2
MESSAGE_DATA = 3

#: Requests a server runs at once before answering RESOURCE_EXHAUSTED.
DEFAULT_MAX_CONCURRENT = 256
#: Calls a client has on the wire at once (see :class:`TtrpcClient`).
DEFAULT_MAX_IN_FLIGHT = 64

_HDR = struct.Struct(">IIBB")
_pack_hdr = _HDR.pack
_unpack_hdr = _HDR.unpack
_MAX_STREAM_ID = 0xFFFFFFFF


class Code(enum.IntEnum):
    """gRPC status codes, as ttrpc carries them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class TtrpcError(KndError):
    """A call failed with a status: raised by :meth:`TtrpcClient.call`, and raised
    by a server handler to answer with that status.

    Attributes:
        code: the status code (a code outside the known range reads as UNKNOWN).
        raw_code: the number on the wire.
        message: the status message.
    """

    def __init__(self, code: Code | int, message: str) -> None:
        self.raw_code = int(code)
        try:
            self.code = Code(self.raw_code)
        except ValueError:
            self.code = Code.UNKNOWN
        self.message = message
        name = self.code.name if self.code == self.raw_code else f"{self.raw_code}"
        super().__init__(f"{name}: {message}")


@dataclass(slots=True)
class RequestContext:
    """What a server handler knows about the call it is answering.

    Attributes:
        service: e.g. ``"nri.pkg.api.v1alpha1.Plugin"``.
        method: e.g. ``"Configure"``.
        stream_id: the request's ttrpc stream id.
        deadline: ``loop.time()`` by which the caller gives up (from the request's
            ``timeout_nano``), ``None`` when it set no limit.
        metadata: the request's metadata, keys as sent, values in order.
    """

    service: str
    method: str
    stream_id: int
    deadline: float | None = None
    metadata: dict[str, list[str]] = field(default_factory=dict)


#: A server method: the serialized argument in, the serialized result out.
#: Raise :class:`TtrpcError` to answer with that status.
Handler = Callable[[bytes, RequestContext], Awaitable[bytes]]


def encode_message(stream_id: int, msg_type: int, body: bytes, flags: int = 0) -> bytes:
    """One ttrpc message: header + body (the body is not checked against the limit)."""
    return _pack_hdr(len(body), stream_id, msg_type, flags) + body


async def _read_message(conn: MuxConn, who: str) -> tuple[int, int, int, bytes] | None:
    """The next message as ``(stream_id, type, flags, body)``; ``None`` at end of stream.

    A truncated message or an oversize length closes the socket (logged).
    """
    try:
        header = await conn.readexactly(TTRPC_HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            log.error(
                "ttrpc %s: connection closed inside a message header (%d of %d bytes)",
                who,
                len(exc.partial),
                TTRPC_HEADER_SIZE,
            )
        return None
    length, stream_id, msg_type, flags = _unpack_hdr(header)
    if length > TTRPC_MAX_MESSAGE:
        conn.mux.abort(
            f"ttrpc {who}: message on stream {stream_id} announces {length} bytes, "
            f"more than the maximum of {TTRPC_MAX_MESSAGE}"
        )
        return None
    if length == 0:
        return stream_id, msg_type, flags, b""
    try:
        body = await conn.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        log.error(
            "ttrpc %s: connection closed inside the body of a message on stream %d "
            "(%d of %d bytes)",
            who,
            stream_id,
            len(exc.partial),
            length,
        )
        return None
    return stream_id, msg_type, flags, body


def _oversize(length: int) -> str:
    return f"message length {length} exceed maximum message size of {TTRPC_MAX_MESSAGE}"


class TtrpcServer:
    """Serves ``handlers`` to the client at the other end of ``conn``.

    Args:
        conn: the connection to serve (for NRI: the plugin-service connection).
        handlers: ``(service, method) -> handler``.
        max_concurrent: requests run at once; more are answered RESOURCE_EXHAUSTED.
        deadline_margin: when set, a handler still running ``deadline_margin``
            seconds before the caller's deadline is cancelled and the call
            answered DEADLINE_EXCEEDED (so the caller gets an answer in time
            instead of timing out itself). ``None`` leaves handlers alone.
    """

    def __init__(
        self,
        conn: MuxConn,
        handlers: Mapping[tuple[str, str], Handler],
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        deadline_margin: float | None = None,
    ) -> None:
        self._conn = conn
        self._handlers = dict(handlers)
        self._services = {service for service, _ in self._handlers}
        self._max_concurrent = max_concurrent
        self._deadline_margin = deadline_margin
        self._tasks: set[asyncio.Task[None]] = set()
        self._serve_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_stream_id = 0
        self._who = f"server on {conn!r}"

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        return len(self._tasks)

    async def serve(self) -> None:
        """Read and dispatch requests until the connection closes.

        Running handlers are cancelled when it does (their replies could not be
        delivered) and when :meth:`serve` itself is cancelled.
        """
        if self._serve_task is not None:
            raise RuntimeError(f"ttrpc {self._who}: serve() is already running")
        task = asyncio.current_task()
        self._serve_task = task
        self._stopping = False
        try:
            while True:
                msg = await _read_message(self._conn, self._who)
                if msg is None:
                    break
                self._dispatch(*msg)
        except asyncio.CancelledError:
            # close() cancelled us: return normally; any other cancellation propagates
            if not self._stopping or task is None or task.uncancel() > 0:
                raise
        finally:
            self._serve_task = None
            handlers = list(self._tasks)
            for handler_task in handlers:
                handler_task.cancel()
            if handlers:
                await asyncio.gather(*handlers, return_exceptions=True)

    async def close(self) -> None:
        """Stop serving: :meth:`serve` cancels every running handler and returns."""
        task = self._serve_task
        if task is not None and task is not asyncio.current_task():
            self._stopping = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _dispatch(self, stream_id: int, msg_type: int, flags: int, body: bytes) -> None:
        if msg_type != MESSAGE_REQUEST:
            if msg_type == MESSAGE_DATA:
                log.warning("ttrpc %s: streaming data on stream %d refused", self._who, stream_id)
                self._reply_status(
                    stream_id, Code.INVALID_ARGUMENT, "ttrpc: streams are not supported"
                )
            else:
                log.warning(
                    "ttrpc %s: ignoring message of type %d on stream %d",
                    self._who,
                    msg_type,
                    stream_id,
                )
            return
        if stream_id % 2 != 1:
            log.warning("ttrpc %s: request on even stream id %d refused", self._who, stream_id)
            self._reply_status(
                stream_id,
                Code.INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams",
            )
            return
        if stream_id <= self._last_stream_id:
            log.warning(
                "ttrpc %s: request on stream id %d after %d refused",
                self._who,
                stream_id,
                self._last_stream_id,
            )
            self._reply_status(
                stream_id,
                Code.INVALID_ARGUMENT,
                "StreamID cannot be re-used and must increment",
            )
            return
        self._last_stream_id = stream_id
        try:
            req = ttrpc_pb2.Request.FromString(body)
        except (DecodeError, ValueError, RuntimeError) as exc:
            log.warning("ttrpc %s: undecodable request on stream %d: %s", self._who, stream_id, exc)
            self._reply_status(stream_id, Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
            return
        handler = self._handlers.get((req.service, req.method))
        if handler is None:
            if req.service in self._services:
                text = f"method {req.method}"
            else:
                text = f"service {req.service}"
            log.info(
                "ttrpc %s: unimplemented %s/%s on stream %d",
                self._who,
                req.service,
                req.method,
                stream_id,
            )
            self._reply_status(stream_id, Code.UNIMPLEMENTED, text)
            return
        if len(self._tasks) >= self._max_concurrent:
            log.warning(
                "ttrpc %s: %s/%s refused: %d requests already in flight",
                self._who,
                req.service,
                req.method,
                len(self._tasks),
            )
            self._reply_status(
                stream_id,
                Code.RESOURCE_EXHAUSTED,
                f"too many concurrent requests ({self._max_concurrent})",
            )
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.timeout_nano / 1e9 if req.timeout_nano > 0 else None
        metadata: dict[str, list[str]] = {}
        for kv in req.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        ctx = RequestContext(req.service, req.method, stream_id, deadline, metadata)
        task = loop.create_task(self._run(handler, req.payload, ctx))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, payload: bytes, ctx: RequestContext) -> None:
        code = Code.OK
        message = ""
        result = b""
        try:
            if self._deadline_margin is not None and ctx.deadline is not None:
                cm = asyncio.timeout_at(ctx.deadline - self._deadline_margin)
                try:
                    async with cm:
                        result = await handler(payload, ctx)
                except TimeoutError:
                    if not cm.expired():
                        raise
                    code = Code.DEADLINE_EXCEEDED
                    message = (
                        f"{ctx.method} did not finish within the caller's deadline "
                        f"(less a {self._deadline_margin:.3f}s margin)"
                    )
                    log.error("ttrpc %s: %s/%s: %s", self._who, ctx.service, ctx.method, message)
            else:
                result = await handler(payload, ctx)
            if not isinstance(result, bytes | bytearray):
                code = Code.INTERNAL
                message = (
                    f"handler for {ctx.service}/{ctx.method} returned "
                    f"{type(result).__name__}, not bytes"
                )
                log.error("ttrpc %s: %s", self._who, message)
                result = b""
        except TtrpcError as exc:
            code, message = exc.code, exc.message
            result = b""
        except Exception as exc:
            log.exception(
                "ttrpc %s: handler for %s/%s (stream %d) failed",
                self._who,
                ctx.service,
                ctx.method,
                ctx.stream_id,
            )
            code, message = Code.UNKNOWN, str(exc) or type(exc).__name__
            result = b""
        if code != Code.OK:
            result = b""
        self._reply(ctx.stream_id, code, message, bytes(result))
        try:
            await self._conn.drain()
        except MuxClosed as exc:
            log.debug("ttrpc %s: reply to stream %d not drained: %s", self._who, ctx.stream_id, exc)

    def _reply_status(self, stream_id: int, code: Code, message: str) -> None:
        self._reply(stream_id, code, message, b"")

    def _reply(self, stream_id: int, code: Code, message: str, payload: bytes) -> None:
        resp = ttrpc_pb2.Response(payload=payload)
        if code != Code.OK:
            resp.status.code = int(code)
            resp.status.message = message
        body = resp.SerializeToString()
        if len(body) > TTRPC_MAX_MESSAGE:
            text = f"response to stream {stream_id}: {_oversize(len(body))}"
            log.error("ttrpc %s: %s", self._who, text)
            resp = ttrpc_pb2.Response()
            resp.status.code = int(Code.RESOURCE_EXHAUSTED)
            resp.status.message = text
            body = resp.SerializeToString()
        try:
            self._conn.write(_pack_hdr(len(body), stream_id, MESSAGE_RESPONSE, 0) + body)
        except MuxClosed as exc:
            log.debug("ttrpc %s: reply to stream %d not sent: %s", self._who, stream_id, exc)


class TtrpcClient:
    """Calls the server at the other end of ``conn``; calls may run concurrently.

    One reader task (started by the first call) routes replies to their calls.

    Args:
        conn: the connection to call on (for NRI: the runtime-service connection).
        max_in_flight: calls sent and not yet answered at once; further calls
            wait for a slot (inside their timeout). The Go multiplexer queues at
            most 256 frames per connection and closes the whole socket when a
            burst overflows that queue (seen against the runtime adaptation with
            2000 concurrent calls); a request is at most 2 frames, so the default
            stays well inside it.
    """

    def __init__(self, conn: MuxConn, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        if max_in_flight < 1:
            raise InvalidArgument(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._slots = asyncio.Semaphore(max_in_flight)
        self._conn = conn
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        self._who = f"client on {conn!r}"

    @property
    def closed(self) -> bool:
        """True once the client was closed or its connection ended."""
        return self._closed_reason is not None

    @property
    def pending(self) -> int:
        """Calls waiting for their reply."""
        return len(self._pending)

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """Call ``service``/``method`` with a serialized argument; return the serialized result.

        ``timeout`` (seconds) bounds the whole call and is sent to the server.

        Raises:
            TtrpcError: the server's status; RESOURCE_EXHAUSTED for a request over
                4 MiB (nothing sent); DEADLINE_EXCEEDED when ``timeout`` passed;
                UNAVAILABLE when the connection is or becomes closed; INTERNAL for
                an undecodable reply.
        """
        if self._closed_reason is not None:
            raise TtrpcError(Code.UNAVAILABLE, f"ttrpc: closed ({self._closed_reason})")
        req = ttrpc_pb2.Request(service=service, method=method, payload=payload)
        if timeout is not None:
            req.timeout_nano = max(1, int(timeout * 1e9))
        if metadata:
            for key, value in metadata.items():
                req.metadata.add(key=key, value=value)
        body = req.SerializeToString()
        if len(body) > TTRPC_MAX_MESSAGE:
            raise TtrpcError(
                Code.RESOURCE_EXHAUSTED, f"{service}/{method} not sent: {_oversize(len(body))}"
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        stream_id = 0
        try:
            async with asyncio.timeout(timeout), self._slots:
                if self._closed_reason is not None:
                    raise TtrpcError(Code.UNAVAILABLE, f"ttrpc: closed ({self._closed_reason})")
                # Allocate the id and write with no await in between: ids go out in order.
                stream_id = self._next_id
                if stream_id > _MAX_STREAM_ID:
                    raise TtrpcError(Code.UNAVAILABLE, "ttrpc: stream ids exhausted; reconnect")
                self._next_id = stream_id + 2
                self._pending[stream_id] = fut
                if self._reader is None:
                    self._reader = loop.create_task(self._read_loop())
                self._conn.write(_pack_hdr(len(body), stream_id, MESSAGE_REQUEST, 0) + body)
                await self._conn.drain()
                reply = await fut
        except TimeoutError:
            where = f"stream {stream_id}" if stream_id else "still waiting for a call slot"
            raise TtrpcError(
                Code.DEADLINE_EXCEEDED, f"{service}/{method}: no reply within {timeout}s ({where})"
            ) from None
        except MuxClosed as exc:
            raise TtrpcError(Code.UNAVAILABLE, f"ttrpc: closed ({exc})") from None
        finally:
            self._pending.pop(stream_id, None)
        try:
            resp = ttrpc_pb2.Response.FromString(reply)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise TtrpcError(
                Code.INTERNAL, f"{service}/{method}: undecodable reply on stream {stream_id}: {exc}"
            ) from None
        if resp.HasField("status") and resp.status.code != Code.OK:
            raise TtrpcError(resp.status.code, resp.status.message)
        return resp.payload

    async def close(self) -> None:
        """Stop the reader; pending and later calls fail with UNAVAILABLE."""
        self._shutdown("client closed")
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _shutdown(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        for stream_id, fut in list(self._pending.items()):
            if not fut.done():
                fut.set_exception(
                    TtrpcError(
                        Code.UNAVAILABLE,
                        f"ttrpc: closed ({reason}) before the reply to stream {stream_id}",
                    )
                )

    async def _read_loop(self) -> None:
        conn = self._conn
        reason = "connection closed"
        try:
            while True:
                msg = await _read_message(conn, self._who)
                if msg is None:
                    if conn.mux.error is not None:
                        reason = f"connection closed: {conn.mux.error}"
                    break
                stream_id, msg_type, _flags, body = msg
                if msg_type != MESSAGE_RESPONSE:
                    log.warning(
                        "ttrpc %s: ignoring message of type %d on stream %d",
                        self._who,
                        msg_type,
                        stream_id,
                    )
                    continue
                fut = self._pending.get(stream_id)
                if fut is None or fut.done():
                    log.debug("ttrpc %s: reply on inactive stream %d dropped", self._who, stream_id)
                    continue
                fut.set_result(body)
        finally:
            self._shutdown(reason)
