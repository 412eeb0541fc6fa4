"""kndkit.sources.LinkEvents: rtnetlink link notifications of a namespace,
against the real kernel (a namespace of its own, links added with ``ip``)."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
from collections.abc import Iterator

import pytest

from kndkit._native import NetNs
from kndkit.errors import InvalidArgument
from kndkit.sources import (
    RTM_DELLINK,
    RTM_NEWLINK,
    LinkEvents,
    link_event_socket,
    link_message_types,
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"kle{os.getpid() % 10000}"
    _ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def _until(pred: object, what: str, timeout: float = 20.0) -> None:
    assert callable(pred)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_message_types_parsed_from_a_datagram() -> None:
    def msg(mtype: int, payload: bytes = b"") -> bytes:
        body = struct.pack("=IHHII", 16 + len(payload), mtype, 0, 0, 0) + payload
        return body + b"\0" * (-len(body) % 4)

    data = msg(RTM_NEWLINK, b"abcde") + msg(20) + msg(RTM_DELLINK)
    assert link_message_types(data) == [RTM_NEWLINK, 20, RTM_DELLINK]
    assert link_message_types(data + b"\1\2\3") == [RTM_NEWLINK, 20, RTM_DELLINK]
    assert link_message_types(struct.pack("=IHHII", 3, RTM_NEWLINK, 0, 0, 0)) == []
    assert link_message_types(b"") == []


def test_bad_rate_limit() -> None:
    with pytest.raises(InvalidArgument, match="burst"):
        LinkEvents(None, lambda: None, burst=0)
    with pytest.raises(InvalidArgument, match="interval"):
        LinkEvents(None, lambda: None, interval=0)


def test_socket_belongs_to_the_namespace(netns: str) -> None:
    """Notifications of the target namespace arrive; those of the caller's do not."""
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with NetNs.open(f"/run/netns/{netns}") as ns:
        sock = link_event_socket(ns)
    try:
        sock.setblocking(True)
        sock.settimeout(10)
        _ip("-n", netns, "link", "add", "kle0", "type", "veth", "peer", "name", "kle0p")
        assert RTM_NEWLINK in link_message_types(sock.recv(65536))
        # The caller's thread never left its namespace.
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
    finally:
        sock.close()


async def test_added_and_removed_links_call_back(netns: str) -> None:
    calls: list[int] = []
    with NetNs.open(f"/run/netns/{netns}") as ns:
        events = LinkEvents(ns, lambda: calls.append(1), interval=0.2, burst=5)
        events.start()
        try:
            _ip("-n", netns, "link", "add", "kle1", "type", "veth", "peer", "name", "kle1p")
            await _until(lambda: calls, "a call for the added link")
            n = len(calls)
            _ip("-n", netns, "link", "del", "kle1")
            await _until(lambda: len(calls) > n, "a call for the removed link")
        finally:
            events.close()
            events.close()  # idempotent
    assert events.events >= 2


async def test_bursts_are_rate_limited_and_the_last_change_is_seen(netns: str) -> None:
    seen_at_call: list[int] = []  # notifications seen when each call happened
    loop = asyncio.get_running_loop()
    interval = 0.5
    with NetNs.open(f"/run/netns/{netns}") as ns:
        events = LinkEvents(
            ns, lambda: seen_at_call.append(events.events), interval=interval, burst=2
        )
        events.start()
        try:
            t0 = loop.time()
            for i in range(12):
                _ip(
                    "-n", netns, "link", "add", f"klb{i}", "type", "veth", "peer", "name", f"klp{i}"
                )
                await asyncio.sleep(0)  # let the reader run between changes
            await _until(lambda: events.events >= 24, "24 link notifications")
            # The last change is followed by a call (deferred by the rate limit).
            await _until(lambda: seen_at_call[-1] == events.events, "a call after the last change")
            elapsed = loop.time() - t0
        finally:
            events.close()
    assert events.calls == len(seen_at_call)
    # Token bucket: at most burst + elapsed/interval calls (+1 for the edge).
    assert len(seen_at_call) <= 2 + elapsed / interval + 1, (seen_at_call, elapsed)
    assert len(seen_at_call) < events.events
