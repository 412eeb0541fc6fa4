"""kndkit.nri.ttrpc: client and server over a real multiplexed socketpair.

Both ends are kndkit's own here; the same code is checked against containerd's
NRI adaptation (Go ttrpc) in tests/peers/test_nri_transport.py. Raw-byte bad
input is in test_ttrpc_badinput.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from kndkit._proto import ttrpc_pb2
from kndkit.nri import ttrpc
from kndkit.nri.mux import Mux
from kndkit.nri.ttrpc import (
    Code,
    Handler,
    RequestContext,
    TtrpcClient,
    TtrpcError,
    TtrpcServer,
)

SVC = "test.Echo"


@dataclass
class Link:
    client_mux: Mux
    server_mux: Mux
    client: TtrpcClient
    server: TtrpcServer
    serve_task: asyncio.Task[None]


@pytest.fixture
async def make_link() -> AsyncIterator[Callable[..., Awaitable[Link]]]:
    links: list[Link] = []

    async def make(handlers: dict[tuple[str, str], Handler], **server_opts: object) -> Link:
        a, b = socket.socketpair()
        cm = await Mux.from_socket(a)
        sm = await Mux.from_socket(b)
        server = TtrpcServer(sm.open(1), handlers, **server_opts)  # type: ignore[arg-type]
        task = asyncio.create_task(server.serve())
        link = Link(cm, sm, TtrpcClient(cm.open(1)), server, task)
        links.append(link)
        return link

    yield make
    for link in links:
        await link.client.close()
        await link.client_mux.close()
        await link.server_mux.close()
        async with asyncio.timeout(5):
            await link.serve_task


async def echo(payload: bytes, ctx: RequestContext) -> bytes:
    return payload


async def test_round_trip_and_request_context(make_link: Callable[..., Awaitable[Link]]) -> None:
    seen: list[RequestContext] = []

    async def record(payload: bytes, ctx: RequestContext) -> bytes:
        seen.append(ctx)
        return payload[::-1]

    link = await make_link({(SVC, "Rev"): record})
    loop = asyncio.get_running_loop()
    before = loop.time()
    out = await link.client.call(SVC, "Rev", b"abc", timeout=30, metadata={"k": "v", "x": "y"})
    assert out == b"cba"
    assert await link.client.call(SVC, "Rev", b"") == b""
    assert await link.client.call(SVC, "Rev", b"1") == b"1"
    assert [c.stream_id for c in seen] == [1, 3, 5]  # odd, strictly increasing
    first = seen[0]
    assert (first.service, first.method) == (SVC, "Rev")
    assert first.metadata == {"k": ["v"], "x": ["y"]}
    assert first.deadline is not None
    assert before + 29 < first.deadline <= loop.time() + 30
    assert seen[1].deadline is None
    assert seen[1].metadata == {}


async def test_concurrent_requests_are_answered_out_of_order(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    gates = {i: asyncio.Event() for i in range(5)}
    finished: list[int] = []

    async def gated(payload: bytes, ctx: RequestContext) -> bytes:
        i = int(payload)
        await gates[i].wait()
        finished.append(i)
        return payload

    link = await make_link({(SVC, "Gated"): gated})
    calls = [asyncio.create_task(link.client.call(SVC, "Gated", str(i).encode())) for i in range(5)]
    async with asyncio.timeout(5):
        while link.server.in_flight < 5:
            await asyncio.sleep(0.001)
    for i in reversed(range(5)):
        gates[i].set()
        await asyncio.sleep(0.01)
    results = await asyncio.gather(*calls)
    assert finished == [4, 3, 2, 1, 0]
    assert results == [str(i).encode() for i in range(5)]


async def test_unknown_service_and_method_are_unimplemented_with_go_wording(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    link = await make_link({(SVC, "Echo"): echo})
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Nope", b"")
    assert err.value.code == Code.UNIMPLEMENTED
    assert err.value.message == "method Nope"
    with pytest.raises(TtrpcError) as err:
        await link.client.call("other.Service", "Echo", b"")
    assert err.value.code == Code.UNIMPLEMENTED
    assert err.value.message == "service other.Service"
    assert await link.client.call(SVC, "Echo", b"still fine") == b"still fine"


async def test_handler_errors_become_statuses(
    make_link: Callable[..., Awaitable[Link]], caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(payload: bytes, ctx: RequestContext) -> bytes:
        raise ValueError("the thing broke")

    async def not_found(payload: bytes, ctx: RequestContext) -> bytes:
        raise TtrpcError(Code.NOT_FOUND, "no such pod p1")

    async def wrong_type(payload: bytes, ctx: RequestContext) -> bytes:
        return "text"  # type: ignore[return-value]

    link = await make_link(
        {(SVC, "Boom"): boom, (SVC, "NotFound"): not_found, (SVC, "Wrong"): wrong_type}
    )
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Boom", b"")
    assert (err.value.code, err.value.message) == (Code.UNKNOWN, "the thing broke")
    assert any("handler for test.Echo/Boom" in r.getMessage() for r in caplog.records)
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "NotFound", b"")
    assert (err.value.code, err.value.message) == (Code.NOT_FOUND, "no such pod p1")
    assert str(err.value) == "NOT_FOUND: no such pod p1"
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Wrong", b"")
    assert err.value.code == Code.INTERNAL
    assert "returned str, not bytes" in err.value.message


async def test_client_timeout_then_late_reply_is_dropped(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    release = asyncio.Event()

    async def slow(payload: bytes, ctx: RequestContext) -> bytes:
        await release.wait()
        return b"late"

    link = await make_link({(SVC, "Slow"): slow, (SVC, "Echo"): echo})
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Slow", b"", timeout=0.05)
    assert err.value.code == Code.DEADLINE_EXCEEDED
    assert link.client.pending == 0
    release.set()
    await asyncio.sleep(0.05)  # the late reply arrives and is dropped
    assert await link.client.call(SVC, "Echo", b"next") == b"next"


async def test_closing_the_socket_fails_pending_calls_without_hanging(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever(payload: bytes, ctx: RequestContext) -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    link = await make_link({(SVC, "Forever"): forever})
    pending = asyncio.create_task(link.client.call(SVC, "Forever", b""))
    await started.wait()
    await link.server_mux.close()
    with pytest.raises(TtrpcError) as err:
        async with asyncio.timeout(5):
            await pending
    assert err.value.code == Code.UNAVAILABLE
    # the server side cancelled its handler and serve() returned
    async with asyncio.timeout(5):
        await link.serve_task
    assert cancelled.is_set()
    assert link.client.closed
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Forever", b"")
    assert err.value.code == Code.UNAVAILABLE


async def test_client_close_fails_pending_calls(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    async def forever(payload: bytes, ctx: RequestContext) -> bytes:
        await asyncio.Event().wait()
        return b""

    link = await make_link({(SVC, "Forever"): forever})
    pending = asyncio.create_task(link.client.call(SVC, "Forever", b""))
    await asyncio.sleep(0.01)
    await link.client.close()
    with pytest.raises(TtrpcError, match="client closed") as err:
        await pending
    assert err.value.code == Code.UNAVAILABLE


async def test_oversize_request_is_refused_before_sending(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    seen: list[int] = []

    async def record(payload: bytes, ctx: RequestContext) -> bytes:
        seen.append(ctx.stream_id)
        return b"ok"

    link = await make_link({(SVC, "Rec"): record})
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Rec", bytes(4 << 20))
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    assert "exceed maximum message size of 4194304" in err.value.message
    # the largest request that fits goes through, and the refused one used no stream id
    room = (4 << 20) - len(ttrpc_pb2.Request(service=SVC, method="Rec").SerializeToString()) - 5
    assert await link.client.call(SVC, "Rec", bytes(room)) == b"ok"
    assert seen == [1]


async def test_oversize_response_becomes_resource_exhausted(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    async def huge(payload: bytes, ctx: RequestContext) -> bytes:
        return bytes(5 << 20)

    link = await make_link({(SVC, "Huge"): huge, (SVC, "Echo"): echo})
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Huge", b"")
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    assert await link.client.call(SVC, "Echo", b"fine") == b"fine"


async def test_big_messages_both_ways(make_link: Callable[..., Awaitable[Link]]) -> None:
    link = await make_link({(SVC, "Echo"): echo})
    for size in (4096 - 40, 4096, 5000, 1 << 20, (4 << 20) - 100):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert await link.client.call(SVC, "Echo", data) == data


async def test_deadline_margin_answers_before_the_callers_deadline(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    async def slow(payload: bytes, ctx: RequestContext) -> bytes:
        await asyncio.sleep(30)
        return b""

    link = await make_link({(SVC, "Slow"): slow}, deadline_margin=1.0)
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Slow", b"", timeout=2.0)
    assert err.value.code == Code.DEADLINE_EXCEEDED
    assert "did not finish within the caller's deadline" in err.value.message


async def test_handler_raising_timeout_itself_is_unknown_not_deadline(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    async def own_timeout(payload: bytes, ctx: RequestContext) -> bytes:
        raise TimeoutError("backend took too long")

    link = await make_link({(SVC, "T"): own_timeout}, deadline_margin=0.1)
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "T", b"", timeout=10)
    assert (err.value.code, err.value.message) == (Code.UNKNOWN, "backend took too long")


async def test_too_many_requests_in_flight_are_refused(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    release = asyncio.Event()

    async def wait(payload: bytes, ctx: RequestContext) -> bytes:
        await release.wait()
        return b"done"

    link = await make_link({(SVC, "Wait"): wait}, max_concurrent=2)
    first = [asyncio.create_task(link.client.call(SVC, "Wait", b"")) for _ in range(2)]
    async with asyncio.timeout(5):
        while link.server.in_flight < 2:
            await asyncio.sleep(0.001)
    with pytest.raises(TtrpcError) as err:
        await link.client.call(SVC, "Wait", b"")
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    release.set()
    assert await asyncio.gather(*first) == [b"done", b"done"]


async def test_server_close_cancels_handlers_and_serve(
    make_link: Callable[..., Awaitable[Link]],
) -> None:
    cancelled = asyncio.Event()

    async def forever(payload: bytes, ctx: RequestContext) -> bytes:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return b""

    link = await make_link({(SVC, "Forever"): forever})
    call = asyncio.create_task(link.client.call(SVC, "Forever", b"", timeout=5))
    async with asyncio.timeout(5):
        while link.server.in_flight < 1:
            await asyncio.sleep(0.001)
    await link.server.close()
    assert cancelled.is_set()
    assert link.serve_task.done()
    call.cancel()


def test_error_codes_match_grpc() -> None:
    assert [c.value for c in Code] == list(range(17))
    assert (Code.UNIMPLEMENTED, Code.INTERNAL, Code.UNAVAILABLE) == (12, 13, 14)
    odd = TtrpcError(99, "from the future")
    assert (odd.code, odd.raw_code) == (Code.UNKNOWN, 99)
    assert str(odd) == "99: from the future"
    assert ttrpc.MESSAGE_REQUEST == 1 and ttrpc.MESSAGE_RESPONSE == 2


async def test_client_keeps_at_most_max_in_flight_calls_on_the_wire() -> None:
    a, b = socket.socketpair()
    cm, sm = await Mux.from_socket(a), await Mux.from_socket(b)
    peak = 0

    async def count(payload: bytes, ctx: RequestContext) -> bytes:
        nonlocal peak
        peak = max(peak, server.in_flight)
        await asyncio.sleep(0.01)
        return payload

    server = TtrpcServer(sm.open(1), {(SVC, "Count"): count})
    serving = asyncio.create_task(server.serve())
    client = TtrpcClient(cm.open(1), max_in_flight=3)
    try:
        out = await asyncio.gather(*(client.call(SVC, "Count", b"%d" % i) for i in range(12)))
        assert out == [b"%d" % i for i in range(12)]
        assert peak == 3
        # a call still waiting for a slot when its timeout passes says so
        blockers = [asyncio.create_task(client.call(SVC, "Count", b"")) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(TtrpcError, match="waiting for a call slot"):
            await client.call(SVC, "Count", b"", timeout=0.001)
        await asyncio.gather(*blockers)
        with pytest.raises(ValueError):
            TtrpcClient(cm.open(1), max_in_flight=0)
    finally:
        await client.close()
        await cm.close()
        await sm.close()
        await serving
