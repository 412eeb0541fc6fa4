"""The NRI connection multiplexer: two logical byte streams over one socket.

An NRI plugin and its runtime share one stream socket (the runtime's
``/var/run/nri/nri.sock``, or an inherited socketpair end for a plugin the
runtime started itself, ``NRI_PLUGIN_SOCKET=3``). On it they run two ttrpc
connections at once:

* connection 1 (:data:`PLUGIN_SERVICE_CONN`): the runtime calls the plugin
  (``Configure``, ``Synchronize``, pod and container events);
* connection 2 (:data:`RUNTIME_SERVICE_CONN`): the plugin calls the runtime
  (``RegisterPlugin``, ``UpdateContainers``).

Wire format: every frame is an 8-byte header, the connection id and the payload
length as big-endian ``uint32``, followed by the payload. Opening a connection
is local bookkeeping only (nothing is sent); frames for a connection id nobody
opened are dropped with a log line. A connection's payloads, concatenated, form
its byte stream; frame boundaries carry no meaning for the receiver here.

What the Go side (``github.com/containerd/nri`` ``pkg/net/multiplex``, used by
containerd and CRI-O) really does, read from v0.12.5 and v0.11.0 and confirmed
against the runtime adaptation itself (``tests/peers/test_nri_transport.py``):

* **Sending**: it writes the 8-byte header and the payload as two socket writes
  under one lock and cuts a payload longer than 4 MiB + 10 bytes (a whole
  ttrpc message) into frames of at most that size. Its ttrpc layer writes
  through a 4096-byte buffered writer, so a ttrpc message of up to 4096 bytes
  (10-byte header included) arrives as one frame and a longer one as a
  4096-byte frame followed by one frame holding the rest.
* **Receiving**: a mux connection hands one *whole frame* to each ``Read`` and
  fails that read with ``ENOMEM`` when the caller's buffer is smaller than the
  frame. ttrpc reads through a 4096-byte ``bufio.Reader``: whenever its buffer
  is empty and it needs fewer than 4096 bytes (every message header, and any
  message tail shorter than 4096 bytes) the frame must fit in 4096 bytes;
  when it needs at least 4096 bytes it reads straight into the message
  buffer, so the frame must not be longer than what remains of the message.
  A frame breaking this rule kills the runtime's side of that connection:
  the runtime's ttrpc *client* (connection 1) closes and the plugin is
  dropped; its ttrpc *server* (connection 2) stops reading, so a
  ``RegisterPlugin`` in such a frame is never answered and registration times
  out. Frames longer than 4 MiB + 10 bytes tear the whole socket down, and
  so does a connection whose queue of received, not yet read frames
  overflows (256 frames): a burst of 5000 requests sent at once kills the
  socket, which is why :class:`~kndkit.nri.ttrpc.TtrpcClient` keeps at most
  64 calls on the wire.
* Measured against ``nri-harness`` (adaptation v0.12.5 and v0.11.0; each case
  is a test in ``tests/peers/test_nri_transport.py``): a ``Configure`` reply of
  4096 bytes in one frame is accepted; 4097 or 10000 bytes in one frame get
  the plugin closed at once (``failed to configure plugin: ttrpc: closed``);
  the same replies as 4096 bytes + the rest, as 1000-byte frames, or as 4096
  bytes followed by 5000-byte frames are accepted, while 5000-byte frames from
  the start are refused; a 3 MiB reply split as 4096 + rest is accepted. A
  5000-byte ``RegisterPlugin`` in one frame is never answered (the runtime
  logs ``error receiving message ... cannot allocate memory`` and its
  registration timeout drops the plugin); split, it registers.

So :meth:`MuxConn.write` sends each message it is given as one frame when it is
at most :data:`SPLIT_SIZE` bytes, otherwise as a :data:`SPLIT_SIZE`-byte frame
followed by the rest (cut at :data:`MAX_FRAME_PAYLOAD` if ever longer): the
same frames the Go stub produces, and every ttrpc message must be written by
one ``write`` call. All frames of one ``write`` go out in a single
``transport.write``.

Robustness: a frame header announcing more than :data:`MAX_FRAME_PAYLOAD`
bytes cannot be skipped (the framing has no resync marker), so the socket is
closed with a logged error, like the Go side does. Reading pauses while more
than :data:`READ_HIGH_WATER` bytes sit unconsumed. Writes never block:
:meth:`MuxConn.drain` waits while the socket's send buffer is above
:data:`WRITE_HIGH_WATER` and closes the socket when a peer has not read for
``drain_timeout`` seconds; a send buffer over :data:`WRITE_BUFFER_LIMIT` closes
it at once. Closing (by either side, or on an error) wakes every reader with
end-of-file and fails every pending :meth:`MuxConn.drain` with
:class:`MuxClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from typing import Any

from kndkit.errors import InvalidArgument, KndError

__all__ = [
    "DRAIN_TIMEOUT",
    "HEADER_SIZE",
    "MAX_FRAME_PAYLOAD",
    "PLUGIN_SERVICE_CONN",
    "READ_HIGH_WATER",
    "READ_LOW_WATER",
    "RESERVED_CONN",
    "RUNTIME_SERVICE_CONN",
    "SPLIT_SIZE",
    "TTRPC_HEADER_SIZE",
    "TTRPC_MAX_MESSAGE",
    "WRITE_BUFFER_LIMIT",
    "WRITE_HIGH_WATER",
    "Mux",
    "MuxClosed",
    "MuxConn",
    "MuxError",
]

log = logging.getLogger("kndkit.nri.mux")

#: Connection id 0 is reserved by the protocol; :meth:`Mux.open` refuses it.
RESERVED_CONN = 0
#: The runtime's ttrpc client calls the plugin's ttrpc server on this connection.
PLUGIN_SERVICE_CONN = 1
#: The plugin's ttrpc client calls the runtime's ttrpc server on this connection.
RUNTIME_SERVICE_CONN = 2

#: Mux frame header: connection id, payload length (big-endian uint32 each).
HEADER_SIZE = 8
#: ttrpc message header: length, stream id (uint32), type, flags (uint8).
TTRPC_HEADER_SIZE = 10
#: Largest ttrpc message body (4 MiB) either side accepts.
TTRPC_MAX_MESSAGE = 4 << 20
#: Largest frame payload: one whole ttrpc message. Longer frames close the socket.
MAX_FRAME_PAYLOAD = TTRPC_HEADER_SIZE + TTRPC_MAX_MESSAGE
#: The Go reader's buffer size: the first frame of a message is cut here.
SPLIT_SIZE = 4096

#: Unconsumed bytes (all connections together) above which reading the socket pauses.
READ_HIGH_WATER = 4 * MAX_FRAME_PAYLOAD
#: Reading resumes once the unconsumed bytes drop to this.
READ_LOW_WATER = READ_HIGH_WATER // 2
#: :meth:`MuxConn.drain` waits while more than this is queued for sending.
WRITE_HIGH_WATER = 1 << 20
#: A send queue longer than this means the peer stopped reading: the socket is closed.
WRITE_BUFFER_LIMIT = 64 << 20
#: Seconds :meth:`MuxConn.drain` waits for a peer that is not reading before closing.
DRAIN_TIMEOUT = 10.0

_HDR = struct.Struct(">II")
_pack_hdr = _HDR.pack
_unpack_hdr = _HDR.unpack_from


class MuxError(KndError):
    """The multiplexed socket could not be opened, or its peer broke the protocol."""


class MuxClosed(MuxError, ConnectionError):
    """The multiplexed socket is closed (by either side, or after an error)."""


class Mux(asyncio.Protocol):
    """One multiplexed NRI socket.

    Create with :meth:`connect`, :meth:`from_fd` or :meth:`from_socket`; get the
    two logical connections with :meth:`open`. The instance is the socket's
    asyncio protocol: there is no reader task, incoming frames are dispatched
    to their connection's buffer as they arrive.

    Attributes:
        error: why the socket closed, when it closed on an error (a protocol
            violation, a peer that stopped reading, a socket error); ``None``
            while open and after an orderly close.
        dropped_frames: frames dropped because their connection id was not open.
    """

    def __init__(self, *, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        self.error: BaseException | None = None
        self.dropped_frames = 0
        self._drain_timeout = drain_timeout
        self._transport: asyncio.Transport | None = None
        self._conns: dict[int, MuxConn] = {}
        self._buf = bytearray()
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._closed = False
        self._closed_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._warned_ids: set[int] = set()
        self._peer = "?"

    # --- construction ----------------------------------------------------------

    @classmethod
    async def connect(
        cls, path: str | os.PathLike[str], *, drain_timeout: float = DRAIN_TIMEOUT
    ) -> Mux:
        """Dial the runtime's NRI socket at ``path``.

        Raises:
            MuxError: the socket could not be reached (missing, refused, no access).
        """
        path = os.fspath(path)
        loop = asyncio.get_running_loop()
        mux = cls(drain_timeout=drain_timeout)
        try:
            await loop.create_unix_connection(lambda: mux, path)
        except OSError as exc:
            raise MuxError(f"cannot connect to NRI socket {path!r}: {exc}") from exc
        mux._peer = path
        return mux

    @classmethod
    async def from_fd(cls, fd: int, *, drain_timeout: float = DRAIN_TIMEOUT) -> Mux:
        """Use an inherited, connected stream socket (``NRI_PLUGIN_SOCKET``).

        The mux takes ownership of ``fd``: closing the mux closes it. When
        ``fd`` is refused it is left open and untouched.

        Raises:
            MuxError: ``fd`` is not an open stream socket.
        """
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise MuxError(f"NRI plugin socket fd {fd} is not usable: {exc}") from exc
        if sock.type != socket.SOCK_STREAM:
            kind = sock.type
            sock.detach()
            raise MuxError(f"NRI plugin socket fd {fd} is not a stream socket ({kind!r})")
        try:
            mux = await cls.from_socket(sock, drain_timeout=drain_timeout)
        except BaseException:
            sock.detach()
            raise
        mux._peer = f"fd {fd}"
        return mux

    @classmethod
    async def from_socket(cls, sock: socket.socket, *, drain_timeout: float = DRAIN_TIMEOUT) -> Mux:
        """Use an already connected stream socket; the mux takes ownership of it."""
        if sock.type != socket.SOCK_STREAM:
            raise MuxError(f"NRI mux needs a stream socket, got {sock.type!r}")
        loop = asyncio.get_running_loop()
        mux = cls(drain_timeout=drain_timeout)
        try:
            await loop.connect_accepted_socket(lambda: mux, sock)
        except OSError as exc:
            raise MuxError(f"cannot use socket {sock!r}: {exc}") from exc
        mux._peer = f"fd {sock.fileno()}"
        return mux

    # --- public API ------------------------------------------------------------

    def open(self, conn_id: int) -> MuxConn:
        """The logical connection ``conn_id`` (the same object on every call).

        Frames for the id that arrived before it was opened were dropped.

        Raises:
            InvalidArgument: ``conn_id`` is 0 (reserved) or not a uint32.
        """
        if not 0 < conn_id <= 0xFFFFFFFF:
            raise InvalidArgument(f"mux connection id {conn_id} is reserved or out of range")
        conn = self._conns.get(conn_id)
        if conn is None:
            conn = MuxConn(self, conn_id)
            if self._closed:
                conn._feed_eof()
            self._conns[conn_id] = conn
        return conn

    @property
    def closed(self) -> bool:
        """True once the socket is closed or closing."""
        return self._closing or self._closed

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (by either side)."""
        await asyncio.shield(self._closed_fut)

    async def close(self) -> None:
        """Close the socket, sending what is queued first (up to ``drain_timeout``)."""
        transport = self._transport
        if transport is not None and not self._closed:
            self._closing = True
            transport.close()
            try:
                async with asyncio.timeout(self._drain_timeout):
                    await asyncio.shield(self._closed_fut)
            except TimeoutError:
                log.warning(
                    "NRI mux %s: peer did not take %d queued bytes within %.1fs; aborting",
                    self._peer,
                    transport.get_write_buffer_size(),
                    self._drain_timeout,
                )
                transport.abort()
        await asyncio.shield(self._closed_fut)

    def abort(self, reason: str) -> None:
        """Close the socket at once, dropping queued data, and log ``reason`` as an error."""
        if self._closed:
            return
        log.error("NRI mux %s: %s; closing the connection", self._peer, reason)
        if self.error is None:
            self.error = MuxError(reason)
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def write_frame(self, conn_id: int, payload: bytes | bytearray | memoryview) -> None:
        """Send exactly one frame, without the split rule (for probing a peer).

        Raises:
            InvalidArgument: ``conn_id`` is not a uint32 or ``payload`` is longer
                than :data:`MAX_FRAME_PAYLOAD`.
            MuxClosed: the socket is closed.
        """
        if not 0 <= conn_id <= 0xFFFFFFFF:
            raise InvalidArgument(f"mux connection id {conn_id} is not a uint32")
        if len(payload) > MAX_FRAME_PAYLOAD:
            raise InvalidArgument(
                f"mux frame payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}"
            )
        self._send(b"".join((_pack_hdr(conn_id, len(payload)), payload)))

    @property
    def peer(self) -> str:
        """What the socket is connected to (a path or an fd), for log lines."""
        return self._peer

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._buf:
            self._buf += data
            self._parse(self._buf)
        else:
            self._parse(data)

    def eof_received(self) -> bool:
        log.debug("NRI mux %s: peer closed its side", self._peer)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._closing = True
        if exc is not None and self.error is None:
            self.error = exc
        if self._buf and self.error is None:
            log.error(
                "NRI mux %s: connection closed inside a frame (%d bytes of it received)",
                self._peer,
                len(self._buf),
            )
        self._buf = bytearray()
        log.debug("NRI mux %s: closed (%s)", self._peer, self.error or "orderly")
        for conn in self._conns.values():
            conn._feed_eof()
        err = self._closed_error()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(err)
        self._drain_waiters.clear()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    # --- internals ---------------------------------------------------------------

    def _parse(self, src: bytes | bytearray) -> None:
        end = len(src)
        pos = 0
        conns = self._conns
        with memoryview(src) as view:
            while end - pos >= HEADER_SIZE:
                conn_id, size = _unpack_hdr(view, pos)
                if size > MAX_FRAME_PAYLOAD:
                    self.abort(
                        f"frame for connection {conn_id} announces {size} bytes, "
                        f"more than the {MAX_FRAME_PAYLOAD} allowed"
                    )
                    return
                start = pos + HEADER_SIZE
                if end - start < size:
                    break
                pos = start + size
                conn = conns.get(conn_id)
                if conn is None:
                    self._drop(conn_id, size)
                elif size:
                    conn._feed(view[start:pos])
            rest = view[pos:] if pos < end else None
            if src is self._buf:
                if rest is not None:
                    rest.release()
                    rest = None
            elif rest is not None:
                self._buf = bytearray(rest)
                rest.release()
        if src is self._buf and pos:
            del self._buf[:pos]
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def _drop(self, conn_id: int, size: int) -> None:
        self.dropped_frames += 1
        if conn_id not in self._warned_ids and len(self._warned_ids) < 64:
            self._warned_ids.add(conn_id)
            log.warning(
                "NRI mux %s: dropping %d-byte frame for unknown connection id %d "
                "(further frames for it are logged at debug level)",
                self._peer,
                size,
                conn_id,
            )
        else:
            log.debug(
                "NRI mux %s: dropping %d-byte frame for unknown connection id %d",
                self._peer,
                size,
                conn_id,
            )

    def _consumed(self, n: int) -> None:
        self._buffered -= n
        if self._reading_paused and self._buffered <= READ_LOW_WATER:
            self._reading_paused = False
            if self._transport is not None and not self._closing:
                self._transport.resume_reading()

    def _closed_error(self) -> MuxClosed:
        reason = f": {self.error}" if self.error is not None else ""
        return MuxClosed(f"NRI connection {self._peer} is closed{reason}")

    def _send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._closing or transport.is_closing():
            raise self._closed_error()
        transport.write(data)
        queued = transport.get_write_buffer_size()
        if queued > WRITE_BUFFER_LIMIT:
            self.abort(f"peer is not reading: {queued} bytes queued for sending")
            raise self._closed_error()

    async def _drain(self) -> None:
        if self._closing:
            raise self._closed_error()
        if not self._writing_paused:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        try:
            async with asyncio.timeout(self._drain_timeout):
                await fut
        except TimeoutError:
            queued = self._transport.get_write_buffer_size() if self._transport else 0
            self.abort(
                f"peer stopped reading: {queued} bytes still queued after "
                f"{self._drain_timeout:.1f}s"
            )
            raise self._closed_error() from None
        finally:
            with contextlib.suppress(ValueError):
                self._drain_waiters.remove(fut)


class MuxConn:
    """One logical connection of a :class:`Mux`: a byte stream each way.

    Reading follows :class:`asyncio.StreamReader` (one reader at a time);
    :meth:`write` never blocks and takes one whole ttrpc message per call (see
    the split rule in the module documentation); :meth:`drain` applies
    backpressure.
    """

    __slots__ = ("_buf", "_eof", "_mux", "_waiter", "id")

    def __init__(self, mux: Mux, conn_id: int) -> None:
        self.id = conn_id
        self._mux = mux
        self._buf = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<MuxConn {self.id} of {self._mux.peer}>"

    @property
    def mux(self) -> Mux:
        """The multiplexer this connection belongs to."""
        return self._mux

    @property
    def closed(self) -> bool:
        """True once no more data can arrive (the socket or this connection closed)."""
        return self._eof

    def at_eof(self) -> bool:
        """True when closed and every received byte has been read."""
        return self._eof and not self._buf

    # --- reading -------------------------------------------------------------------

    def _feed(self, data: memoryview) -> None:
        self._buf += data
        self._mux._buffered += len(data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed_eof(self) -> None:
        self._eof = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError(f"{self!r}: another coroutine is already reading")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n == len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view, view[:n] as head:
                data = bytes(head)
            del buf[:n]
        self._mux._consumed(n)
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes.

        Raises:
            asyncio.IncompleteReadError: the connection closed first (``.partial``
                holds what was left).
        """
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buf) < n:
            if self._eof:
                partial = self._take(len(self._buf))
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait()
        return self._take(n)

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (everything buffered when ``n < 0``), at least one;
        ``b""`` at end of stream."""
        if n == 0:
            return b""
        while not self._buf:
            if self._eof:
                return b""
            await self._wait()
        return self._take(len(self._buf) if n < 0 else min(n, len(self._buf)))

    # --- writing -------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one message for sending, framed by the split rule.

        Raises:
            MuxClosed: the socket is closed.
        """
        if self._eof and self.id not in self._mux._conns:
            raise MuxClosed(f"{self!r} is closed")
        n = len(data)
        conn_id = self.id
        if n <= SPLIT_SIZE:
            self._mux._send(b"".join((_pack_hdr(conn_id, n), data)))
            return
        view = memoryview(data)
        parts: list[Any] = [_pack_hdr(conn_id, SPLIT_SIZE), view[:SPLIT_SIZE]]
        pos = SPLIT_SIZE
        while pos < n:
            size = min(n - pos, MAX_FRAME_PAYLOAD)
            parts.append(_pack_hdr(conn_id, size))
            parts.append(view[pos : pos + size])
            pos += size
        self._mux._send(b"".join(parts))

    async def drain(self) -> None:
        """Wait until the send queue is short enough (see :data:`WRITE_HIGH_WATER`).

        Raises:
            MuxClosed: the socket is closed, or was closed because the peer
                did not read for ``drain_timeout`` seconds.
        """
        await self._mux._drain()

    def close(self) -> None:
        """Detach this connection: later frames for its id are dropped, readers see EOF."""
        if self._mux._conns.get(self.id) is self:
            del self._mux._conns[self.id]
        self._mux._consumed(len(self._buf))
        self._buf.clear()
        self._feed_eof()
