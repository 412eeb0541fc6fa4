"""Prints the benchmark results as markdown: medians, ratios to the floor, targets.

    python benches/report.py benches/results/*.json

Only ratios between implementations measured in the same run mean anything on
a shared machine; the absolute medians are there to read the ratios against.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

IMPLS = ("kndkit", "raw", "pyroute2", "ipbatch")
HEADINGS = {"kndkit": "kndkit", "raw": "raw floor", "pyroute2": "pyroute2", "ipbatch": "ip -batch"}
FLOOR = "raw"
SCENARIO_ORDER = (
    "attach_physical",
    "attach_virtual",
    "detach_physical",
    "detach_virtual",
    "discover",
    "discover_sysfs",
    "cpu_addr",
    "cpu_addr_native",
    "apply_call",
    "rss",
)
RSS_TARGET_MB = 10.0
UTIME_TARGET_US = 1.0
NRI_IMPLS = ("kndkit", "go")
NRI_HEADINGS = {"kndkit": "kndkit (Python)", "go": "Go stub"}
NRI_SCENARIO_ORDER = ("run_pod_sandbox", "create_container")


@dataclass
class Target:
    max_vs_floor: float | None = None  # kndkit / floor <= this
    min_vs_pyroute2: float | None = None  # pyroute2 / kndkit >= this

    def text(self) -> str:
        parts = []
        if self.max_vs_floor is not None:
            parts.append(f"<= {self.max_vs_floor:.2f}x floor")
        if self.min_vs_pyroute2 is not None:
            parts.append(f">= {self.min_vs_pyroute2:g}x faster than pyroute2")
        return ", ".join(parts) or "-"


TARGETS = {
    "attach_physical": Target(max_vs_floor=1.03),
    "attach_virtual": Target(max_vs_floor=1.10, min_vs_pyroute2=4),
    "discover": Target(min_vs_pyroute2=30),
}


def load(paths: list[pathlib.Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        data = json.loads(p.read_text())
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            if {"scenario", "n", "impl"} <= set(info):
                out.append({**info, "median": b["stats"]["median"], "rounds": b["stats"]["rounds"]})
    return out


def load_nri(paths: list[pathlib.Path]) -> list[dict[str, Any]]:
    """The NRI round-trip summaries (``extra_info`` of benches/test_nri_roundtrip.py,
    or the ``nri_roundtrip`` list that ``benches/nri_roundtrip.py --json`` writes)."""
    out = []
    for p in paths:
        data = json.loads(p.read_text())
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            if info.get("kind") == "nri_roundtrip":
                out.append(info)
        out.extend(data.get("nri_roundtrip", []))
    return out


def nri_table(summaries: list[dict[str, Any]]) -> list[str]:
    """Per scenario and plugin: medians over rounds of each round's p50/p99,
    the pooled mean and maximum, kndkit/Go ratios and the p99 target."""
    if not summaries:
        return []
    lines = [
        "| scenario | plugin | calls | p50 µs | p99 µs | mean µs | max µs "
        "| kndkit/Go p50 | kndkit/Go p99 | target | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    order = {s: k for k, s in enumerate(NRI_SCENARIO_ORDER)}
    for s in sorted(summaries, key=lambda s: order.get(s["scenario"], 99)):
        ratio = s.get("ratio", {})
        for impl in NRI_IMPLS:
            r = s["impls"].get(impl)
            if r is None:
                continue
            knd = impl == "kndkit"
            rp50 = f"{ratio['p50_us']:.2f}x" if knd and "p50_us" in ratio else "-"
            rp99 = f"{ratio['p99_us']:.2f}x" if knd and "p99_us" in ratio else "-"
            target = f"p99 < {s['target_p99_us']:g} µs" if knd and "target_p99_us" in s else "-"
            v = verdict([bool(s["meets_target"])]) if knd and "meets_target" in s else "-"
            lines.append(
                f"| {s['scenario']} | {NRI_HEADINGS.get(impl, impl)} | {r['calls']} "
                f"| {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['mean_us']:.1f} "
                f"| {r['max_us']:.0f} | {rp50} | {rp99} | {target} | {v} |"
            )
    return lines


def fmt_ms(sec: float) -> str:
    ms = sec * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def verdict(ok: list[bool]) -> str:
    if not ok:
        return "n/a"
    return "PASS" if all(ok) else "FAIL"


def time_table(rows: list[dict[str, Any]]) -> list[str]:
    by: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["scenario"] in ("rss",):
            continue
        by[(r["scenario"], r["n"])][r["impl"]] = r
    lines = [
        "| scenario | N | "
        + " | ".join(f"{HEADINGS[i]} ms (x floor)" for i in IMPLS)
        + " | pyroute2 / kndkit | target | verdict |",
        "|---|---:|" + "---:|" * len(IMPLS) + "---:|---|---|",
    ]
    order = {s: k for k, s in enumerate(SCENARIO_ORDER)}
    keys = sorted(by, key=lambda k: (order.get(k[0], 99), k[1]))
    for scenario, n in keys:
        impls = by[(scenario, n)]
        floor = impls.get(FLOOR, {}).get("median")
        cells = []
        for i in IMPLS:
            cell = impls.get(i)
            if cell is None:
                cells.append("-")
            elif floor:
                cells.append(f"{fmt_ms(cell['median'])} ({cell['median'] / floor:.2f}x)")
            else:
                cells.append(fmt_ms(cell["median"]))
        knd = impls.get("kndkit", {}).get("median")
        pyr = impls.get("pyroute2", {}).get("median")
        speedup = f"{pyr / knd:.1f}x" if knd and pyr else "-"
        target = TARGETS.get(scenario, Target())
        ok: list[bool] = []
        if knd and floor and target.max_vs_floor is not None:
            ok.append(knd / floor <= target.max_vs_floor)
        if knd and pyr and target.min_vs_pyroute2 is not None:
            ok.append(pyr / knd >= target.min_vs_pyroute2)
        v = verdict(ok) if target.text() != "-" else "-"
        lines.append(
            f"| {scenario} | {n} | " + " | ".join(cells) + f" | {speedup} | {target.text()} | {v} |"
        )
    return lines


def cpu_table(rows: list[dict[str, Any]]) -> list[str]:
    cpu = [r for r in rows if "utime_us_per_request" in r]
    if not cpu:
        return []
    lines = [
        "| scenario | impl | requests | user µs/request | system µs/request "
        "| CPU µs/request (exact) | target | verdict |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in sorted(cpu, key=lambda r: (r["scenario"], IMPLS.index(r["impl"]))):
        is_target = r["impl"] == "kndkit" and r["scenario"] == "cpu_addr_native"
        target = f"user < {UTIME_TARGET_US:g} µs" if is_target else "-"
        v = verdict([r["utime_us_per_request"] < UTIME_TARGET_US]) if is_target else "-"
        lines.append(
            f"| {r['scenario']} | {HEADINGS[r['impl']]} | {r['requests']} "
            f"| {r['utime_us_per_request']:.2f} | {r['stime_us_per_request']:.2f} "
            f"| {r['cpu_us_per_request']:.2f} | {target} | {v} |"
        )
    return lines


def rss_table(rows: list[dict[str, Any]]) -> list[str]:
    rss = {r["impl"]: r for r in rows if r["scenario"] == "rss" and "vmhwm_kb" in r}
    if not rss:
        return []
    base = rss.get("baseline", {}).get("vmhwm_kb")
    floor = rss.get(FLOOR, {}).get("vmhwm_kb")
    lines = [
        "| peak RSS, 64-interface attach in a fresh interpreter | VmHWM MB "
        "| vs bare interpreter MB | vs raw floor MB | target | verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for impl in ("baseline", "raw", "kndkit_native", "kndkit"):
        r = rss.get(impl)
        if r is None:
            continue
        kb = r["vmhwm_kb"]
        d_base = f"{(kb - base) / 1024:+.1f}" if base else "-"
        d_floor = f"{(kb - floor) / 1024:+.1f}" if floor else "-"
        is_target = impl == "kndkit_native"
        target = f"< {RSS_TARGET_MB:g} MB over the floor" if is_target else "-"
        v = verdict([(kb - floor) / 1024 < RSS_TARGET_MB]) if is_target and floor else "-"
        name = {
            "baseline": "bare interpreter (no attach)",
            "kndkit_native": "kndkit extension module alone",
            "kndkit": "kndkit (`import kndkit._native`: package too)",
        }.get(impl, HEADINGS.get(impl, impl))
        lines.append(f"| {name} | {kb / 1024:.1f} | {d_base} | {d_floor} | {target} | {v} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("json", nargs="+", type=pathlib.Path)
    args = ap.parse_args()
    rows = load(args.json)
    nri = load_nri(args.json)
    if not rows and not nri:
        raise SystemExit("no benchmark results in " + ", ".join(map(str, args.json)))
    out: list[str] = []
    if rows:
        out += ["## Medians and ratios (same run; the floor is the raw batched netlink socket)", ""]
        out += time_table(rows)
    for title, table in (
        ("## User-space CPU per netlink request", cpu_table(rows)),
        ("## Peak RSS added by the Rust path", rss_table(rows)),
        (
            "## NRI round trip runtime -> plugin -> runtime (µs per call, timed in Go "
            "around the adaptation call; p50/p99: median over interleaved rounds)",
            nri_table(nri),
        ),
    ):
        if table:
            out += ["", title, "", *table] if out else [title, "", *table]
    print("\n".join(out))


if __name__ == "__main__":
    main()
