"""Replay the NRI transport fuzz corpus, plus a few fresh inputs per run.

The long run (>= 100,000 inputs) is ``tests/fuzz/fuzz_transport.py``; its
counts are in ``tests/fuzz/results.json`` and the inputs it found interesting
are in ``tests/fuzz/corpus/``. Here every corpus input is run again and
hypothesis adds a small number of new ones, so CI stays fast.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.transport_targets import CORPUS, TARGETS, decode_chunks, encode_chunks, inputs, load
from fuzz.transport_targets import run_target as _run_target

CASES = load()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Objects left in reference cycles by earlier tests (subprocess pipes, sockets)
    would otherwise be closed by the garbage collector in the middle of an input
    and read as an fd count change."""
    gc.collect()
    yield


RESULTS = Path(__file__).resolve().parent / "results.json"


def test_corpus_and_recorded_run_exist() -> None:
    assert len(CASES) >= 20, f"fuzz corpus in {CORPUS} is missing or tiny"
    assert {target for target, _, _ in CASES} == set(TARGETS)
    report = json.loads(RESULTS.read_text())
    assert report["total_inputs"] >= 100_000
    assert report["failures"] == 0


def test_chunk_encoding_round_trips() -> None:
    chunks = [b"", b"a", bytes(range(256)) * 3]
    assert decode_chunks(encode_chunks(chunks)) == chunks


@pytest.mark.parametrize(("target", "chunks", "name"), CASES, ids=[c[2] for c in CASES])
async def test_corpus_input(target: str, chunks: list[bytes], name: str) -> None:
    await _run_target(target, chunks)


@pytest.mark.parametrize("target", TARGETS)
def test_fresh_inputs(target: str) -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    try:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(inputs)
        def run(chunks: list[bytes]) -> None:
            loop.run_until_complete(_run_target(target, chunks))

        run()
    finally:
        loop.close()
