"""Print the DRA benchmark table from pytest-benchmark JSON files.

    python benches/dra_report.py benches/results/dra.json [more.json ...]

Reads the ``extra_info`` that ``benches/test_dra_prepare.py`` and
``benches/test_dra_publish.py`` store (kind ``dra_prepare`` / ``dra_publish``)
and prints one markdown table per kind: kndkit next to the upstream Go helper.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _ms(stats: dict[str, Any], key: str) -> str:
    v = stats.get(key)
    return "-" if v is None else f"{v:.2f}"


def prepare_table(benches: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| devices | impl | prepare p50 | prepare p99 | claim GET p50 | GET p99 "
        "| beyond GET p50 | beyond GET p99 | unprepare p50 | unprepare p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in sorted(benches, key=lambda b: b["extra_info"]["devices"]):
        e = b["extra_info"]
        for impl in ("kndkit", "go"):
            s = e["impls"][impl]
            rows.append(
                f"| {e['devices']} | {impl} | {_ms(s['prepare'], 'p50_ms')} "
                f"| {_ms(s['prepare'], 'p99_ms')} | {_ms(s['get'], 'p50_ms')} "
                f"| {_ms(s['get'], 'p99_ms')} | {_ms(s['beyond_get'], 'p50_ms')} "
                f"| {_ms(s['beyond_get'], 'p99_ms')} | {_ms(s['unprepare'], 'p50_ms')} "
                f"| {_ms(s['unprepare'], 'p99_ms')} |"
            )
        k = e["impls"]["kndkit"]
        rows.append(
            f"|  | kndkit parts (p50/p99) | store {_ms(k['store'], 'p50_ms')}/"
            f"{_ms(k['store'], 'p99_ms')} | preparer {_ms(k['preparer'], 'p50_ms')}/"
            f"{_ms(k['preparer'], 'p99_ms')} | service {_ms(k['service'], 'p50_ms')}/"
            f"{_ms(k['service'], 'p99_ms')} | gRPC+server {_ms(k['outside_service'], 'p50_ms')}/"
            f"{_ms(k['outside_service'], 'p99_ms')} | target met: {e['target_met']} "
            f"| calls {k['prepare']['n']} |  |  |"
        )
    return ["All times in ms, measured in Go around each gRPC call.", "", *rows]


def publish_table(benches: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| impl | devices | wall p50 (ms) | wall min-max (ms) | writes per publish "
        "| resync writes | slices |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in benches:
        e = b["extra_info"]
        for impl in ("kndkit", "go"):
            s = e["impls"][impl]
            w = s["wall"]
            rows.append(
                f"| {impl} | {e['devices']} | {w['p50_ms']:.0f} "
                f"| {w['min_ms']:.0f}-{w['max_ms']:.0f} | {s['writes']} "
                f"| {s['resync_writes']} | {s['slices']} |"
            )
    return rows


def main(paths: list[str]) -> int:
    benches: list[dict[str, Any]] = []
    for path in paths:
        with open(path) as f:
            benches += json.load(f)["benchmarks"]
    prep = [b for b in benches if b.get("extra_info", {}).get("kind") == "dra_prepare"]
    pub = [b for b in benches if b.get("extra_info", {}).get("kind") == "dra_publish"]
    out: list[str] = []
    if prep:
        out += ["### NodePrepareResources", "", *prepare_table(prep), ""]
    if pub:
        out += ["### Publishing ResourceSlices", "", *publish_table(pub), ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
