"""Fuzz targets for kndkit's NRI transport (multiplexer + ttrpc decoders).

Each target puts kndkit's real code on one end of a socketpair and writes the
fuzz input, cut into the given chunks, from the other end; then it closes that
end and waits for everything to wind down. The checks are the issue's: no
exception escapes, nothing hangs (a hard time limit per input), every pending
call ends with a result or a :class:`TtrpcError`, and no task or file
descriptor is left behind.

Targets return a *signature* of what happened (the log-message templates seen,
reply codes, how the connection ended), used by the fuzz script to decide
which inputs are interesting enough to keep in ``corpus/``.

Corpus file format: ``<target>-<hash>.bin``, a sequence of chunks, each a
big-endian ``uint32`` length followed by that many bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from hypothesis import strategies as st

from kndkit._proto import ttrpc_pb2
from kndkit.nri.mux import Mux
from kndkit.nri.ttrpc import RequestContext, TtrpcClient, TtrpcError, TtrpcServer

CORPUS = Path(__file__).resolve().parent / "corpus"
TIME_LIMIT_S = 5.0
SVC = "fuzz.Svc"
TARGETS = ("server", "client")


class FuzzFailure(AssertionError):
    """An input broke an invariant (crash, hang, leak, wrong error type)."""


class _Templates(logging.Handler):
    """Collects the format strings of the transport's log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.add(f"{record.levelname}:{record.msg}")


_handler = _Templates()
_LOGGERS = [logging.getLogger(name) for name in ("kndkit.nri.mux", "kndkit.nri.ttrpc")]


@contextlib.contextmanager
def _watch_logs() -> Iterator[None]:
    """Collect the transport's log templates for one input (records still propagate)."""
    _handler.seen = set()
    levels = [lg.level for lg in _LOGGERS]
    for lg in _LOGGERS:
        lg.addHandler(_handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for lg, level in zip(_LOGGERS, levels, strict=True):
            lg.removeHandler(_handler)
            lg.setLevel(level)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _echo(payload: bytes, ctx: RequestContext) -> bytes:
    return payload


async def _boom(payload: bytes, ctx: RequestContext) -> bytes:
    raise ValueError("boom")


async def _pump(raw: socket.socket, chunks: Sequence[bytes]) -> int:
    """Send the chunks, then half-close; read (and count) whatever comes back."""
    loop = asyncio.get_running_loop()
    received = 0

    async def reader() -> None:
        nonlocal received
        while True:
            try:
                data = await loop.sock_recv(raw, 1 << 16)
            except OSError:
                return
            if not data:
                return
            received += len(data)

    rtask = asyncio.create_task(reader())
    try:
        for chunk in chunks:
            try:
                await loop.sock_sendall(raw, chunk)
            except OSError:
                break
            await asyncio.sleep(0)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
        await rtask
    finally:
        rtask.cancel()
    return received


async def run_target(target: str, chunks: Sequence[bytes]) -> tuple[str, ...]:
    """Run one input through ``target`` (``"server"`` or ``"client"``); return its signature.

    Raises:
        FuzzFailure: an invariant broke.
    """
    with _watch_logs():
        return await _run_target(target, chunks)


async def _run_target(target: str, chunks: Sequence[bytes]) -> tuple[str, ...]:
    tasks_before = len(asyncio.all_tasks())
    fds_before = _fds()
    a, raw = socket.socketpair()
    raw.setblocking(False)
    mux = await Mux.from_socket(a, drain_timeout=1.0)
    outcome: list[str] = []
    try:
        async with asyncio.timeout(TIME_LIMIT_S):
            if target == "server":
                server = TtrpcServer(
                    mux.open(1), {(SVC, "Echo"): _echo, (SVC, "Boom"): _boom}, max_concurrent=8
                )
                serving = asyncio.create_task(server.serve())
                await _pump(raw, chunks)
                try:
                    await serving
                except Exception as exc:
                    raise FuzzFailure(f"serve() raised {exc!r}") from exc
            elif target == "client":
                client = TtrpcClient(mux.open(2))
                calls = [
                    asyncio.create_task(client.call(SVC, m, b"p", timeout=TIME_LIMIT_S - 1))
                    for m in ("A", "B")
                ]
                await asyncio.sleep(0)
                await _pump(raw, chunks)
                await mux.close()
                for call in calls:
                    try:
                        await call
                        outcome.append("ok")
                    except TtrpcError as exc:
                        outcome.append(exc.code.name)
                    except Exception as exc:
                        raise FuzzFailure(f"call raised {exc!r}, not TtrpcError") from exc
                await client.close()
            else:
                raise ValueError(f"unknown fuzz target {target!r}")
            await mux.close()
    except TimeoutError as exc:
        raise FuzzFailure(f"{target}: no end within {TIME_LIMIT_S}s") from exc
    finally:
        await mux.close()
        raw.close()
    await asyncio.sleep(0)
    leaked = len(asyncio.all_tasks()) - tasks_before
    if leaked > 0:
        raise FuzzFailure(f"{target}: {leaked} task(s) left behind")
    if _fds() != fds_before:
        raise FuzzFailure(f"{target}: fd count {fds_before} -> {_fds()}")
    error = type(mux.error).__name__ if mux.error is not None else "-"
    return (target, error, *sorted(_handler.seen), *outcome)


# --- inputs -------------------------------------------------------------------------


def _frame(conn_id: int, payload: bytes, size: int | None = None) -> bytes:
    return struct.pack(">II", conn_id, len(payload) if size is None else size) + payload


def _message(
    stream_id: int, msg_type: int, body: bytes, flags: int = 0, size: int | None = None
) -> bytes:
    n = len(body) if size is None else size
    return struct.pack(">IIBB", n, stream_id, msg_type, flags) + body


_u32 = st.integers(0, 0xFFFFFFFF)
_conn_ids = st.one_of(st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]), _u32)
_stream_ids = st.one_of(st.sampled_from([0, 1, 2, 3, 5, 7, 0xFFFFFFFF]), _u32)
_lengths = st.one_of(
    st.none(),
    st.sampled_from([0, 1, 9, 10, 4096, 4097, 4 << 20, (4 << 20) + 1, 0xFFFFFFFF]),
    _u32,
)
_names = st.one_of(st.sampled_from([SVC, "", "nri.pkg.api.v1alpha1.Plugin"]), st.text(max_size=20))
_methods = st.one_of(st.sampled_from(["Echo", "Boom", "Missing", ""]), st.text(max_size=20))


@st.composite
def _request_body(draw: st.DrawFn) -> bytes:
    req = ttrpc_pb2.Request(
        service=draw(_names),
        method=draw(_methods),
        payload=draw(st.binary(max_size=64)),
        timeout_nano=draw(st.sampled_from([0, 1, 10**9, -1, 2**62])),
    )
    for k, v in draw(st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=3)):
        req.metadata.add(key=k, value=v)
    return req.SerializeToString()


@st.composite
def _response_body(draw: st.DrawFn) -> bytes:
    resp = ttrpc_pb2.Response(payload=draw(st.binary(max_size=64)))
    if draw(st.booleans()):
        resp.status.code = draw(st.integers(-(2**31), 2**31 - 1))
        resp.status.message = draw(st.text(max_size=20))
    return resp.SerializeToString()


@st.composite
def _ttrpc_message(draw: st.DrawFn) -> bytes:
    body = draw(
        st.one_of(_request_body(), _response_body(), st.binary(max_size=200)),
    )
    msg = _message(
        draw(_stream_ids),
        draw(st.sampled_from([0, 1, 2, 3, 4, 255])),
        body,
        draw(st.sampled_from([0, 1, 2, 4, 255])),
        draw(st.one_of(st.none(), st.none(), _lengths)),
    )
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, len(msg))))
    return msg if cut is None else msg[:cut]


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    """A plausible stream: ttrpc messages split into frames on random connections."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            msg = draw(_ttrpc_message())
            conn = draw(st.one_of(st.sampled_from([1, 1, 2]), _conn_ids))
            pos = 0
            while pos < len(msg) or not msg:
                step = draw(st.integers(1, max(1, len(msg) - pos)))
                out += _frame(conn, msg[pos : pos + step])
                pos += step
                if not msg:
                    break
        elif kind < 8:
            out += _frame(draw(_conn_ids), draw(st.binary(max_size=100)), draw(_lengths))
        else:
            out += draw(st.binary(max_size=64))
    return bytes(out)


@st.composite
def _chunked(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> list[bytes]:
    blob = draw(data)
    if not blob:
        return [blob]
    cuts = sorted(set(draw(st.lists(st.integers(1, len(blob)), max_size=6))))
    parts, prev = [], 0
    for c in [*cuts, len(blob)]:
        if c > prev:
            parts.append(blob[prev:c])
            prev = c
    return parts


#: Fuzz inputs: raw bytes, or structured frames/messages; cut into chunks.
inputs = st.one_of(
    _chunked(st.binary(max_size=300)),
    _chunked(_frames()),
    _chunked(_frames()),
)


# --- corpus -------------------------------------------------------------------------


def encode_chunks(chunks: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(c)) + c for c in chunks)


def decode_chunks(blob: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from(">I", blob, pos)
        out.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def save(target: str, chunks: Sequence[bytes], corpus: Path = CORPUS) -> Path:
    blob = encode_chunks(chunks)
    path = corpus / f"{target}-{hashlib.sha1(blob).hexdigest()[:16]}.bin"
    corpus.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def load(corpus: Path = CORPUS) -> list[tuple[str, list[bytes], str]]:
    """``(target, chunks, file name)`` for every corpus file."""
    out = []
    for path in sorted(corpus.glob("*.bin")):
        target = path.name.split("-", 1)[0]
        out.append((target, decode_chunks(path.read_bytes()), path.name))
    return out
