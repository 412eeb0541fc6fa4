"""Replay the NRI transport fuzz corpus, plus a few fresh inputs per run.

The long run (>= 100,000 inputs) is ``tests/fuzz/fuzz_transport.py``; its
counts are in ``tests/fuzz/results.json`` and the inputs it found interesting
are in ``tests/fuzz/corpus/``. Here every corpus input is run again and
hypothesis adds a small number of new ones, so CI stays fast.
"""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.transport_targets import (
    CORPUS,
    TARGETS,
    FuzzFailure,
    decode_chunks,
    encode_chunks,
    inputs,
    load,
)
from fuzz.transport_targets import run_target as _run_target

CASES = load()
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


async def test_corpus_replays_cleanly() -> None:
    # Objects left in reference cycles by earlier tests (subprocess pipes, sockets)
    # would otherwise be closed by the garbage collector in the middle of an input
    # and read as an fd count change.
    gc.collect()
    failures = []
    for target, chunks, name in CASES:
        try:
            await _run_target(target, chunks)
        except FuzzFailure as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("target", TARGETS)
def test_fresh_inputs(target: str) -> None:
    gc.collect()
    loop = asyncio.new_event_loop()
    try:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(inputs)
        def run(chunks: list[bytes]) -> None:
            loop.run_until_complete(_run_target(target, chunks))

        run()
    finally:
        loop.close()
