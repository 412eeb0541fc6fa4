"""Bad input to kndkit's ttrpc server and client (issue 5, section 4).

The misbehaving peer is a raw socket written by the test: truncated frames,
oversize lengths, unknown connection ids, garbage protobuf, bad stream ids,
unknown message types, a peer that stops reading. Every case must end in a
reply or a logged close, never a crash or a hang, and leave no task or file
descriptor behind.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from kndkit._proto import ttrpc_pb2
from kndkit.nri.mux import Mux
from kndkit.nri.ttrpc import Code, RequestContext, TtrpcClient, TtrpcError, TtrpcServer

SVC = "test.Svc"


def frame(conn_id: int, payload: bytes) -> bytes:
    return struct.pack(">II", conn_id, len(payload)) + payload


def message(stream_id: int, msg_type: int, body: bytes, *, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return struct.pack(">IIBB", n, stream_id, msg_type, 0) + body


def request(stream_id: int, method: str = "Echo", payload: bytes = b"") -> bytes:
    body = ttrpc_pb2.Request(service=SVC, method=method, payload=payload).SerializeToString()
    return frame(1, message(stream_id, 1, body))


class RawPeer:
    """The test's end of the socket: sends raw bytes, parses replies from conn 1."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def reply(self, timeout: float = 5) -> tuple[int, ttrpc_pb2.Response]:
        """The next ttrpc message on connection 1: (stream id, decoded Response)."""
        loop = asyncio.get_running_loop()
        stream = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                while len(self.buf) >= 8:
                    cid, size = struct.unpack_from(">II", self.buf)
                    if len(self.buf) < 8 + size:
                        break
                    if cid == 1:
                        stream += self.buf[8 : 8 + size]
                    del self.buf[: 8 + size]
                if len(stream) >= 10:
                    length, sid, mtype, _ = struct.unpack_from(">IIBB", stream)
                    if len(stream) >= 10 + length:
                        assert mtype == 2
                        rest = stream[10 + length :]
                        assert not rest, "one reply at a time in these tests"
                        return sid, ttrpc_pb2.Response.FromString(bytes(stream[10 : 10 + length]))
                chunk = await loop.sock_recv(self.sock, 65536)
                if not chunk:
                    raise EOFError("server closed the socket")
                self.buf += chunk


async def echo(payload: bytes, ctx: RequestContext) -> bytes:
    return payload


@pytest.fixture
async def served() -> AsyncIterator[tuple[RawPeer, Mux, asyncio.Task[None]]]:
    """kndkit's server on conn 1 of one end; a raw peer on the other."""
    gc.collect()  # garbage of earlier tests must not close fds during the count
    tasks_before = len(asyncio.all_tasks())
    fds_before = len(os.listdir("/proc/self/fd"))
    a, b = socket.socketpair()
    b.setblocking(False)
    mux = await Mux.from_socket(a, drain_timeout=0.5)
    server = TtrpcServer(mux.open(1), {(SVC, "Echo"): echo})
    task = asyncio.create_task(server.serve())
    try:
        yield RawPeer(b), mux, task
    finally:
        b.close()
        async with asyncio.timeout(5):
            await mux.wait_closed()
            await task
        await mux.close()
        await asyncio.sleep(0)
        # nothing leaked: the serve task and its handlers are gone, both fds closed
        assert len(asyncio.all_tasks()) == tasks_before
        assert len(os.listdir("/proc/self/fd")) == fds_before


async def test_good_request_is_served(served: tuple[RawPeer, Mux, asyncio.Task[None]]) -> None:
    peer, _, _ = served
    await peer.send(request(1, payload=b"hi"))
    sid, resp = await peer.reply()
    assert (sid, resp.payload, resp.status.code) == (1, b"hi", 0)


async def test_bad_stream_ids_are_refused_with_go_wording(
    served: tuple[RawPeer, Mux, asyncio.Task[None]],
) -> None:
    peer, _, _ = served
    await peer.send(request(2))
    sid, resp = await peer.reply()
    assert sid == 2
    assert resp.status.code == Code.INVALID_ARGUMENT
    assert resp.status.message == "StreamID must be odd for client initiated streams"
    await peer.send(request(5))
    assert (await peer.reply())[1].status.code == 0
    await peer.send(request(3))
    sid, resp = await peer.reply()
    assert (sid, resp.status.code) == (3, Code.INVALID_ARGUMENT)
    assert resp.status.message == "StreamID cannot be re-used and must increment"
    await peer.send(request(7, payload=b"ok"))
    assert (await peer.reply())[1].payload == b"ok"


async def test_garbage_protobuf_is_invalid_argument_and_serving_goes_on(
    served: tuple[RawPeer, Mux, asyncio.Task[None]],
) -> None:
    peer, _, _ = served
    await peer.send(frame(1, message(1, 1, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")))
    sid, resp = await peer.reply()
    assert (sid, resp.status.code) == (1, Code.INVALID_ARGUMENT)
    assert resp.status.message.startswith("unmarshal request error:")
    await peer.send(request(3, payload=b"after"))
    assert (await peer.reply())[1].payload == b"after"


async def test_unknown_method_is_unimplemented(
    served: tuple[RawPeer, Mux, asyncio.Task[None]],
) -> None:
    peer, _, _ = served
    await peer.send(request(1, method="Missing"))
    sid, resp = await peer.reply()
    assert sid == 1
    assert (resp.status.code, resp.status.message) == (Code.UNIMPLEMENTED, "method Missing")


async def test_streaming_and_unknown_message_types(
    served: tuple[RawPeer, Mux, asyncio.Task[None]], caplog: pytest.LogCaptureFixture
) -> None:
    peer, _, _ = served
    await peer.send(frame(1, message(1, 3, b"data")))
    sid, resp = await peer.reply()
    assert (sid, resp.status.code) == (1, Code.INVALID_ARGUMENT)
    await peer.send(frame(1, message(3, 2, b"a response to nobody")))
    await peer.send(frame(1, message(5, 77, b"")))
    await peer.send(request(7, payload=b"still"))
    sid, resp = await peer.reply()
    assert (sid, resp.payload) == (7, b"still")
    assert any("type 77" in r.getMessage() for r in caplog.records)


async def test_request_split_across_frames_with_junk_between(
    served: tuple[RawPeer, Mux, asyncio.Task[None]],
) -> None:
    peer, mux, _ = served
    msg = request(1, payload=b"pieces")[8:]
    wire = frame(1, msg[:3]) + frame(9, b"junk") + frame(1, msg[3:12]) + frame(4, b"")
    wire += frame(1, msg[12:])
    await peer.send(wire)
    sid, resp = await peer.reply()
    assert (sid, resp.payload) == (1, b"pieces")
    assert mux.dropped_frames == 2


async def test_oversize_ttrpc_length_closes_the_connection(
    served: tuple[RawPeer, Mux, asyncio.Task[None]], caplog: pytest.LogCaptureFixture
) -> None:
    peer, mux, task = served
    await peer.send(frame(1, message(1, 1, b"", length=(4 << 20) + 1)))
    async with asyncio.timeout(5):
        await mux.wait_closed()
        await task
    assert "more than the maximum of 4194304" in str(mux.error)
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_oversize_frame_length_closes_the_connection(
    served: tuple[RawPeer, Mux, asyncio.Task[None]],
) -> None:
    peer, mux, task = served
    await peer.send(struct.pack(">II", 1, 0xFFFFFFFF))
    async with asyncio.timeout(5):
        await task
    assert mux.closed


@pytest.mark.parametrize("cut", [3, 9, 10, 15])
async def test_truncated_message_ends_serving_with_a_logged_error(
    served: tuple[RawPeer, Mux, asyncio.Task[None]], caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    peer, _, task = served
    msg = request(1, payload=b"0123456789")[8:]
    await peer.send(frame(1, msg[:cut]))
    await asyncio.sleep(0.01)
    peer.sock.shutdown(socket.SHUT_WR)
    async with asyncio.timeout(5):
        await task
    assert any("connection closed inside" in r.getMessage() for r in caplog.records)


async def test_handlers_run_on_while_the_peer_is_not_reading(
    served: tuple[RawPeer, Mux, asyncio.Task[None]], caplog: pytest.LogCaptureFixture
) -> None:
    peer, mux, task = served
    big = b"x" * (1 << 20)
    # requests keep arriving and being handled; replies pile up unread until the
    # drain timeout (0.5 s here) closes the socket: nothing waits forever
    for i in range(40):
        try:
            await peer.send(request(2 * i + 1, payload=big))
        except OSError:  # the server closed the socket under us: expected
            break
        if mux.closed:
            break
    async with asyncio.timeout(10):
        await task
    assert mux.closed
    assert "stopped reading" in str(mux.error) or "not reading" in str(mux.error)


# --- the client side ---------------------------------------------------------------


@pytest.fixture
async def calling() -> AsyncIterator[tuple[socket.socket, TtrpcClient, Mux]]:
    tasks_before = len(asyncio.all_tasks())
    a, b = socket.socketpair()
    b.setblocking(False)
    mux = await Mux.from_socket(a)
    client = TtrpcClient(mux.open(2))
    try:
        yield b, client, mux
    finally:
        await client.close()
        await mux.close()
        b.close()
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == tasks_before


async def read_request(sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(5):
        while len(data) < 18:
            data += await loop.sock_recv(sock, 65536)
    cid, _ = struct.unpack_from(">II", data)
    _, sid, mtype, _ = struct.unpack_from(">IIBB", data, 8)
    assert (cid, mtype) == (2, 1)
    return int(sid)


async def test_client_garbage_reply_fails_only_that_call(
    calling: tuple[socket.socket, TtrpcClient, Mux],
) -> None:
    raw, client, _ = calling
    loop = asyncio.get_running_loop()
    call = asyncio.create_task(client.call(SVC, "A", b""))
    sid = await read_request(raw)
    # noise first: a reply for a stream nobody asked on, a request-typed message
    await loop.sock_sendall(raw, frame(2, message(99, 2, b"")) + frame(2, message(sid, 1, b"")))
    await loop.sock_sendall(raw, frame(2, message(sid, 2, b"\x0a\x05\x08")))
    with pytest.raises(TtrpcError) as err:
        await call
    assert err.value.code == Code.INTERNAL
    assert "undecodable reply" in err.value.message
    call = asyncio.create_task(client.call(SVC, "B", b""))
    sid = await read_request(raw)
    ok = ttrpc_pb2.Response(payload=b"fine").SerializeToString()
    await loop.sock_sendall(raw, frame(2, message(sid, 2, ok)))
    assert await call == b"fine"


async def test_client_status_with_unknown_code(
    calling: tuple[socket.socket, TtrpcClient, Mux],
) -> None:
    raw, client, _ = calling
    call = asyncio.create_task(client.call(SVC, "A", b""))
    sid = await read_request(raw)
    resp = ttrpc_pb2.Response()
    resp.status.code = 4242
    resp.status.message = "odd"
    await asyncio.get_running_loop().sock_sendall(
        raw, frame(2, message(sid, 2, resp.SerializeToString()))
    )
    with pytest.raises(TtrpcError) as err:
        await call
    assert (err.value.code, err.value.raw_code, err.value.message) == (Code.UNKNOWN, 4242, "odd")


async def test_client_oversize_reply_length_closes_and_fails_pending(
    calling: tuple[socket.socket, TtrpcClient, Mux],
) -> None:
    raw, client, mux = calling
    call = asyncio.create_task(client.call(SVC, "A", b""))
    sid = await read_request(raw)
    await asyncio.get_running_loop().sock_sendall(
        raw, frame(2, message(sid, 2, b"", length=0x7FFFFFFF))
    )
    with pytest.raises(TtrpcError) as err:
        async with asyncio.timeout(5):
            await call
    assert err.value.code == Code.UNAVAILABLE
    assert "maximum" in err.value.message
    assert mux.closed
