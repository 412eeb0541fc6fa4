"""Print the driver-level benchmark tables (issue 6, section 7) as markdown.

    python benches/driver_report.py benches/results/pod_start.json \\
        benches/results/churn.json benches/results/driver_rss.json

Reads pytest-benchmark JSON files written by ``benches/test_pod_start.py``,
``benches/test_churn.py`` and ``benches/test_driver_rss.py`` (``extra_info``
kinds ``pod_start``, ``churn``, ``driver_rss``) and the ``{"pod_start": [...]}``
file that ``benches/pod_start.py --json`` writes; prints one table per kind
found. Files without any of these kinds are skipped.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches.pod_start import churn_table, table  # noqa: E402


def load(paths: list[pathlib.Path]) -> dict[str, list[dict[str, Any]]]:
    """``{kind: [extra_info or summary, ...]}`` from the files, in file order."""
    out: dict[str, list[dict[str, Any]]] = {"pod_start": [], "churn": [], "driver_rss": []}
    for p in paths:
        data = json.loads(p.read_text())
        if isinstance(data.get("pod_start"), list):
            out["pod_start"].extend(data["pod_start"])
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            kind = info.get("kind")
            if kind == "pod_start":
                out["pod_start"].extend(info.get("summaries", []))
            elif kind in ("churn", "driver_rss"):
                out[kind].append(info)
    return out


def rss_table(infos: list[dict[str, Any]]) -> list[str]:
    target = next((i.get("target_mb") for i in infos if i.get("target_mb")), None)
    rows = [
        "| process | VmRSS (MiB) | VmHWM (MiB) | VmRSS (MB) | "
        + (f"< {target:g} MB |" if target else "target |"),
        "|---|---|---|---|---|",
    ]
    for info in infos:
        for r in info.get("rows", []):
            met = r.get("meets_target")
            ok = "-" if met is None else ("yes" if met else "NO")
            if "peak_rss_sampled_mib" in r:
                ok += f" (sampled peak {r['peak_rss_sampled_mib']:.1f} MiB)"
            rows.append(
                f"| {r['what']} | {r['rss_mib']:.1f} | {r['hwm_mib']:.1f} "
                f"| {r['rss_mb']:.1f} | {ok} |"
            )
    return rows


def render(found: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    if found["pod_start"]:
        lines += [
            "### Pod start: RunPodSandbox round trip (Go-timed) vs the raw netlink floor (ms)",
            "",
            *table(found["pod_start"]),
            "",
        ]
    if found["churn"]:
        lines += ["### Pod churn through the simulated node", "", *churn_table(found["churn"]), ""]
    if found["driver_rss"]:
        lines += ["### Driver daemon memory", "", *rss_table(found["driver_rss"]), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("files", nargs="+", type=pathlib.Path)
    args = ap.parse_args(argv)
    lines = render(load(args.files))
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
