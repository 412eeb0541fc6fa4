"""kndkit.nri.mux over real socketpairs: framing, the split rule, flow control, closing.

The far end is a plain socket driven by the test (raw frames in, raw frames out),
so the wire format is checked byte for byte, not by a second copy of the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import struct
import tempfile
from collections.abc import AsyncIterator

import pytest

from kndkit.errors import InvalidArgument
from kndkit.nri import mux as muxmod
from kndkit.nri.mux import (
    PLUGIN_SERVICE_CONN,
    RUNTIME_SERVICE_CONN,
    Mux,
    MuxClosed,
    MuxError,
)

# Wire facts, written out (not imported) so a change in the module shows up here.
SPLIT_SIZE = 4096  # the Go reader's buffer: first frame of a message
MAX_FRAME_PAYLOAD = 10 + (4 << 20)  # one whole ttrpc message


def test_wire_constants() -> None:
    assert muxmod.SPLIT_SIZE == SPLIT_SIZE
    assert muxmod.MAX_FRAME_PAYLOAD == MAX_FRAME_PAYLOAD
    assert (PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN) == (1, 2)


def frame(conn_id: int, payload: bytes) -> bytes:
    return struct.pack(">II", conn_id, len(payload)) + payload


async def read_frames(sock: socket.socket, total: int) -> list[tuple[int, bytes]]:
    """Read frames from a raw (non-blocking) socket until ``total`` payload bytes came."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    frames: list[tuple[int, bytes]] = []
    got = 0
    while got < total:
        async with asyncio.timeout(10):
            chunk = await loop.sock_recv(sock, 1 << 20)
        assert chunk, "peer closed early"
        buf += chunk
        while len(buf) >= 8:
            cid, size = struct.unpack_from(">II", buf)
            if len(buf) < 8 + size:
                break
            frames.append((cid, bytes(buf[8 : 8 + size])))
            got += size
            del buf[: 8 + size]
    assert not buf
    return frames


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Mux, socket.socket]]:
    """A Mux on one end of a socketpair; the raw other end for the test."""
    a, b = socket.socketpair()
    b.setblocking(False)
    mux = await Mux.from_socket(a)
    try:
        yield mux, b
    finally:
        await mux.close()
        b.close()


async def test_frames_reach_their_connection_as_a_byte_stream(
    pair: tuple[Mux, socket.socket],
) -> None:
    mux, raw = pair
    c1, c2 = mux.open(PLUGIN_SERVICE_CONN), mux.open(RUNTIME_SERVICE_CONN)
    wire = frame(1, b"hello ") + frame(2, b"other") + frame(1, b"world") + frame(1, b"")
    # deliver it one byte at a time: frame boundaries and socket reads don't line up
    for i in range(len(wire)):
        raw.send(wire[i : i + 1])
        await asyncio.sleep(0)
    assert await c1.readexactly(11) == b"hello world"
    assert await c2.readexactly(5) == b"other"


async def test_open_returns_one_object_per_id_and_refuses_id_zero(
    pair: tuple[Mux, socket.socket],
) -> None:
    mux, _ = pair
    assert mux.open(1) is mux.open(1)
    assert mux.open(1) is not mux.open(2)
    with pytest.raises(InvalidArgument, match="reserved"):
        mux.open(0)
    with pytest.raises(InvalidArgument):
        mux.open(1 << 32)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, [0]),
        (100, [100]),
        (SPLIT_SIZE, [SPLIT_SIZE]),
        (SPLIT_SIZE + 1, [SPLIT_SIZE, 1]),
        (3 * SPLIT_SIZE + 7, [SPLIT_SIZE, 2 * SPLIT_SIZE + 7]),
        (MAX_FRAME_PAYLOAD + SPLIT_SIZE + 5, [SPLIT_SIZE, MAX_FRAME_PAYLOAD, 5]),
    ],
)
async def test_write_applies_the_split_rule(
    pair: tuple[Mux, socket.socket], size: int, expected: list[int]
) -> None:
    mux, raw = pair
    data = os.urandom(size)
    mux.open(2).write(data)
    if size == 0:
        async with asyncio.timeout(5):
            got = await asyncio.get_running_loop().sock_recv(raw, 100)
        assert got == frame(2, b"")
        return
    frames = await read_frames(raw, size)
    assert [len(p) for _, p in frames] == expected
    assert {cid for cid, _ in frames} == {2}
    assert b"".join(p for _, p in frames) == data


async def test_write_frame_sends_exactly_one_frame(pair: tuple[Mux, socket.socket]) -> None:
    mux, raw = pair
    mux.write_frame(1, b"x" * 10000)
    assert [len(p) for _, p in await read_frames(raw, 10000)] == [10000]
    with pytest.raises(InvalidArgument, match="exceeds"):
        mux.write_frame(1, bytes(MAX_FRAME_PAYLOAD + 1))
    with pytest.raises(InvalidArgument, match="not a uint32"):
        mux.write_frame(-1, b"")


async def test_unknown_connection_ids_are_dropped_with_a_log_line(
    pair: tuple[Mux, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    mux, raw = pair
    c1 = mux.open(1)
    caplog.set_level(logging.DEBUG, "kndkit.nri.mux")
    raw.send(frame(7, b"lost") + frame(0, b"reserved") + frame(7, b"again") + frame(1, b"kept"))
    assert await c1.readexactly(4) == b"kept"
    assert mux.dropped_frames == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unknown connection id 7" in r.getMessage() for r in warnings)
    assert any("unknown connection id 0" in r.getMessage() for r in warnings)
    assert not mux.closed


async def test_oversize_frame_closes_the_socket_with_an_error(
    pair: tuple[Mux, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    mux, raw = pair
    c1 = mux.open(1)
    raw.send(frame(1, b"ok") + struct.pack(">II", 1, MAX_FRAME_PAYLOAD + 1))
    async with asyncio.timeout(5):
        await mux.wait_closed()
    assert await c1.read() == b"ok"
    assert await c1.read() == b""
    assert isinstance(mux.error, MuxError)
    assert f"announces {MAX_FRAME_PAYLOAD + 1} bytes" in str(mux.error)
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    with pytest.raises(MuxClosed):
        c1.write(b"x")
    with pytest.raises(MuxClosed):
        await c1.drain()


async def test_peer_closing_inside_a_frame_gives_eof_and_a_logged_error(
    pair: tuple[Mux, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    mux, raw = pair
    c1 = mux.open(1)
    raw.send(frame(1, b"abc") + struct.pack(">II", 1, 10) + b"half")
    raw.close()
    async with asyncio.timeout(5):
        await mux.wait_closed()
    with pytest.raises(asyncio.IncompleteReadError) as err:
        await c1.readexactly(5)
    assert err.value.partial == b"abc"
    assert c1.at_eof()
    assert any("inside a frame" in r.getMessage() for r in caplog.records)
    # opening after the close gives a connection that is already at EOF
    assert mux.open(9).closed


async def test_readers_wake_on_close_and_reads_after_close_see_eof(
    pair: tuple[Mux, socket.socket],
) -> None:
    mux, _ = pair
    c1 = mux.open(1)
    reader = asyncio.create_task(c1.readexactly(10))
    await asyncio.sleep(0.01)
    assert not reader.done()
    await mux.close()
    with pytest.raises(asyncio.IncompleteReadError):
        await reader
    assert mux.closed
    assert mux.error is None


async def test_one_reader_at_a_time(pair: tuple[Mux, socket.socket]) -> None:
    mux, raw = pair
    c1 = mux.open(1)
    first = asyncio.create_task(c1.readexactly(1))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already reading"):
        await c1.readexactly(1)
    raw.send(frame(1, b"z"))
    assert await first == b"z"


async def test_closed_conn_drops_later_frames(pair: tuple[Mux, socket.socket]) -> None:
    mux, raw = pair
    c2 = mux.open(2)
    c2.close()
    assert c2.at_eof()
    with pytest.raises(MuxClosed):
        c2.write(b"x")
    raw.send(frame(2, b"late"))
    c1 = mux.open(1)
    raw.send(frame(1, b"!"))
    assert await c1.readexactly(1) == b"!"
    assert mux.dropped_frames == 1


async def test_reading_pauses_above_the_high_water_mark_and_resumes(
    pair: tuple[Mux, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    mux, raw = pair
    monkeypatch.setattr(muxmod, "READ_HIGH_WATER", 64 * 1024)
    monkeypatch.setattr(muxmod, "READ_LOW_WATER", 16 * 1024)
    c1 = mux.open(1)
    payload = os.urandom(512 * 1024)
    loop = asyncio.get_running_loop()
    sender = asyncio.create_task(loop.sock_sendall(raw, frame(1, payload)))
    async with asyncio.timeout(10):
        while not mux._reading_paused:
            await asyncio.sleep(0.01)
    # nothing is lost while paused: read it all back
    got = await asyncio.wait_for(c1.readexactly(len(payload)), 10)
    await sender
    assert got == payload
    assert not mux._reading_paused


async def test_drain_closes_when_the_peer_stops_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = socket.socketpair()
    mux = await Mux.from_socket(a, drain_timeout=0.3)
    try:
        c1 = mux.open(1)
        chunk = bytes(1 << 20)
        with contextlib.suppress(MuxClosed):
            for _ in range(8):  # far more than the socket buffers hold
                c1.write(chunk)
        with pytest.raises(MuxClosed, match="stopped reading"):
            async with asyncio.timeout(10):
                await c1.drain()
        assert mux.closed
        assert any("stopped reading" in r.getMessage() for r in caplog.records)
        async with asyncio.timeout(5):
            await mux.wait_closed()
    finally:
        await mux.close()
        b.close()


async def test_write_beyond_the_buffer_limit_closes_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(muxmod, "WRITE_BUFFER_LIMIT", 2 << 20)
    a, b = socket.socketpair()
    mux = await Mux.from_socket(a)
    try:
        c1 = mux.open(1)
        with pytest.raises(MuxClosed, match="not reading"):
            for _ in range(64):
                c1.write(bytes(1 << 20))
        assert mux.closed
    finally:
        await mux.close()
        b.close()


async def test_close_gives_up_on_a_peer_that_never_reads() -> None:
    a, b = socket.socketpair()
    mux = await Mux.from_socket(a, drain_timeout=0.2)
    try:
        c1 = mux.open(1)
        with contextlib.suppress(MuxClosed):
            for _ in range(4):
                c1.write(bytes(1 << 20))
        async with asyncio.timeout(5):
            await mux.close()
        assert mux.closed
    finally:
        b.close()


async def test_from_fd_takes_an_inherited_socket() -> None:
    a, b = socket.socketpair()
    b.setblocking(False)
    fd = a.detach()
    mux = await Mux.from_fd(fd)
    try:
        assert mux.peer == f"fd {fd}"
        mux.open(2).write(b"ping")
        assert await read_frames(b, 4) == [(2, b"ping")]
    finally:
        await mux.close()
        b.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with the mux


async def test_from_fd_refuses_what_is_not_a_stream_socket() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(MuxError, match=f"fd {r} is not usable"):
            await Mux.from_fd(r)
        os.fstat(r)  # left open
    finally:
        os.close(r)
        os.close(w)
    d1, d2 = socket.socketpair(type=socket.SOCK_DGRAM)
    try:
        with pytest.raises(MuxError, match="not a stream socket"):
            await Mux.from_fd(d1.fileno())
        os.fstat(d1.fileno())
    finally:
        d1.close()
        d2.close()


async def test_connect_dials_a_unix_socket_and_names_a_missing_one() -> None:
    tmp = tempfile.mkdtemp(prefix="knd-", dir="/tmp")
    path = os.path.join(tmp, "nri.sock")
    try:
        with pytest.raises(MuxError, match=r"cannot connect to NRI socket .*nri\.sock"):
            await Mux.connect(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
        mux = await Mux.connect(path)
        peer, _ = await asyncio.get_running_loop().sock_accept(listener)
        peer.setblocking(False)
        try:
            peer.send(frame(1, b"hi"))
            assert await mux.open(1).readexactly(2) == b"hi"
        finally:
            await mux.close()
            peer.close()
            listener.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(tmp)


async def test_no_tasks_or_fds_leak() -> None:
    gc.collect()  # garbage of earlier tests must not close fds during the count
    tasks_before = len(asyncio.all_tasks())
    fds_before = fd_count()
    for _ in range(20):
        a, b = socket.socketpair()
        m1 = await Mux.from_socket(a)
        m2 = await Mux.from_socket(b)
        m1.open(1).write(b"x" * 5000)
        assert await m2.open(1).readexactly(5000) == b"x" * 5000
        m2.write_frame(0xFFFF, b"junk")
        await m1.close()
        await m2.wait_closed()
        await m2.close()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks_before
    assert fd_count() == fds_before
