"""Fuzz kndkit's NRI transport decoders with hypothesis; record counts; grow the corpus.

    .venv/bin/python tests/fuzz/fuzz_transport.py [--examples N] [--seed S]

Runs ``N`` generated inputs (default 50,000) through each target of
``transport_targets`` (the ttrpc server behind the multiplexer, and the ttrpc
client with calls pending), checking the invariants listed there. Every input
whose outcome signature (log templates, reply codes, end state) was not seen
before is written to ``tests/fuzz/corpus/``; the normal test run replays that
corpus (``test_transport_fuzz.py``). Each run's counts are appended to
``tests/fuzz/results.json`` (with the totals over all runs).
Exit status 1 when an input broke an invariant (it is saved as
``corpus/<target>-<hash>.bin`` and printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pathlib
import platform
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from fuzz.transport_targets import (  # noqa: E402
    CORPUS,
    TARGETS,
    FuzzFailure,
    inputs,
    load,
    run_target,
    save,
)

RESULTS = pathlib.Path(__file__).resolve().parent / "results.json"
MAX_CORPUS = 400


def run_one(
    loop: asyncio.AbstractEventLoop,
    target: str,
    args: argparse.Namespace,
    known: set[tuple[str, ...]],
) -> dict[str, Any]:
    """Fuzz one target; returns its counts and status."""
    counts = {"inputs": 0, "bytes": 0, "new_signatures": 0, "saved": 0}
    start = time.monotonic()

    @seed(args.seed + TARGETS.index(target))
    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def fuzz(chunks: list[bytes]) -> None:
        counts["inputs"] += 1
        counts["bytes"] += sum(len(c) for c in chunks)
        try:
            sig = loop.run_until_complete(run_target(target, chunks))
        except FuzzFailure:
            save(target, chunks)
            raise
        if sig not in known:
            known.add(sig)
            counts["new_signatures"] += 1
            if len(list(CORPUS.glob("*.bin"))) < MAX_CORPUS:
                save(target, chunks)
                counts["saved"] += 1
        if counts["inputs"] % 5000 == 0:
            print(f"{target}: {counts['inputs']} inputs", flush=True)

    try:
        fuzz()
        status = "ok"
    except FuzzFailure as exc:
        status = f"FAILED: {exc}"
    out: dict[str, Any] = dict(counts)
    out["seconds"] = round(time.monotonic() - start, 1)
    out["status"] = status
    print(target, out, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--examples", type=int, default=50_000, help="inputs per target")
    ap.add_argument("--seed", type=int, default=20261130)
    args = ap.parse_args()

    # the transport logs every refused input; keep the terminal for the counts
    logging.getLogger("kndkit").propagate = False
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    known: set[tuple[str, ...]] = set()
    for target, chunks, _name in load():
        known.add(loop.run_until_complete(run_target(target, chunks)))
    corpus_before = len(list(CORPUS.glob("*.bin")))
    targets = {target: run_one(loop, target, args, known) for target in TARGETS}
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "seed": args.seed,
        "examples_per_target": args.examples,
        "targets": targets,
        "total_inputs": sum(t["inputs"] for t in targets.values()),
        "failures": sum(1 for t in targets.values() if t["status"] != "ok"),
        "corpus_files": {"before": corpus_before, "after": len(list(CORPUS.glob("*.bin")))},
    }
    print(json.dumps(report, indent=2))
    history = json.loads(RESULTS.read_text())["runs"] if RESULTS.exists() else []
    history.append(report)
    RESULTS.write_text(
        json.dumps(
            {
                "runs": history,
                "total_inputs": sum(r["total_inputs"] for r in history),
                "failures": sum(r["failures"] for r in history),
            },
            indent=2,
        )
        + "\n"
    )
    loop.close()
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
