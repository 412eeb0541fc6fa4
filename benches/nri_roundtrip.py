"""NRI round trips runtime -> plugin -> runtime: kndkit's plugin against the Go stub.

    python benches/nri_roundtrip.py [--calls 2000] [--rounds 4] [--warmup 200]
        [--impls kndkit,go] [--scenarios run_pod_sandbox,create_container]
        [--json out.json] [--profile DIR]

Each implementation gets its own runtime: an ``nri-harness`` (containerd's NRI
adaptation v0.12.5, python/kndkit/testing/peers/nri) with exactly one plugin connected, either
kndkit's (``benches/nri_kndkit_plugin.py``, a separate Python process) or the
Go anchor (``nri-bench-plugin``, on the upstream ``pkg/stub``). Both do the
same work: nothing on RunPodSandbox; 4 Linux device adjustments on
CreateContainer.

A round runs one block of calls per implementation, in a fresh random order,
so a burst of load on the shared machine lands on both alike. A block is the
harness's ``bench`` command: ``warmup`` uncounted calls, then ``calls / rounds``
counted ones, back to back; each call is timed in Go around the adaptation
call alone (request already decoded; reply merged; no JSON or pipes in it).
Every block is checked: the plugin stayed connected, every reply was the same,
CreateContainer's merged adjustment holds exactly the 4 devices.

Reported per implementation and scenario: the median over rounds of each
round's p50 and p99 (what the table shows), the pooled p50/p99/mean over all
counted calls, the maximum; and the kndkit/Go ratios. The target is
kndkit p99 < 1 ms.

``--profile DIR`` runs the kndkit plugin under cProfile and writes
``DIR/kndkit-plugin.prof`` (profiling slows it down: use it to find hotspots,
not for the numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from peers.nri_fixtures import (  # noqa: E402
    BENCH_DEVICES,
    BenchResult,
    NRIBenchPlugin,
    NRIRuntime,
    bench_stats,
    build_nri_peers,
    make_container,
    make_pod,
)

from benches.report import nri_table  # noqa: E402
from kndkit.testing.nri import PluginProcess  # noqa: E402

IMPLS = ("kndkit", "go")
SCENARIOS = ("run_pod_sandbox", "create_container")
TARGET_P99_US = 1000.0
NRI_VERSION = "v0.12"
# Request/registration timeouts given to the runtime: far above any round
# trip, so a slow moment on the shared machine never drops a plugin (a
# dropped plugin fails the block's checks rather than skewing numbers).
RUNTIME_TIMEOUT_S = 10.0
PLUGIN_SCRIPT = pathlib.Path(__file__).resolve().parent / "nri_kndkit_plugin.py"
POD = make_pod("bench", namespace="bench")
CONTAINER = make_container("app", POD)


class BenchCheckError(AssertionError):
    """A block whose calls were not all full round trips through the plugin."""


class KndkitBenchPlugin(PluginProcess):
    """``benches/nri_kndkit_plugin.py`` running in its own interpreter."""

    def __init__(
        self,
        runtime: NRIRuntime,
        workdir: pathlib.Path,
        *,
        idx: str = "10",
        name: str = "bench-py",
        profile: pathlib.Path | None = None,
    ) -> None:
        args = [sys.executable, str(PLUGIN_SCRIPT), "--socket", str(runtime.socket)]
        args += ["--idx", idx, "--name", name]
        if profile is not None:
            args += ["--profile", str(profile)]
        # SIGTERM: the script stops the plugin and (with --profile) writes its stats
        super().__init__(args, workdir, f"{idx}-{name}", stop_timeout=15)


@dataclass
class Side:
    """One implementation: its own runtime with its one plugin."""

    impl: str
    runtime: NRIRuntime
    plugin: PluginProcess


def kndkit_nri_available() -> str | None:
    """None when ``kndkit.nri.Plugin`` imports, else why not."""
    try:
        from kndkit.nri import Plugin  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextlib.contextmanager
def sides(
    impls: Sequence[str] = IMPLS, *, profile_dir: pathlib.Path | None = None
) -> Iterator[dict[str, Side]]:
    """Start one runtime + plugin per implementation; stop them all at exit."""
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise ValueError(f"unknown implementations {sorted(unknown)}; choose from {IMPLS}")
    if "kndkit" in impls and (why := kndkit_nri_available()) is not None:
        raise RuntimeError(f"kndkit.nri.Plugin is not importable: {why}")
    binaries = build_nri_peers()[NRI_VERSION]
    made: dict[str, Side] = {}
    dirs: list[str] = []
    try:
        for impl in impls:
            workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"knb-nri-{impl}-", dir="/tmp"))
            dirs.append(str(workdir))
            rt = NRIRuntime(
                binaries.harness,
                NRI_VERSION,
                workdir,
                request_timeout=RUNTIME_TIMEOUT_S,
                registration_timeout=RUNTIME_TIMEOUT_S,
            )
            plugin: PluginProcess
            if impl == "go":
                plugin = NRIBenchPlugin(binaries.bench_plugin, rt, workdir, name="bench-go")
            else:
                prof = profile_dir / "kndkit-plugin.prof" if profile_dir else None
                plugin = KndkitBenchPlugin(rt, workdir, profile=prof)
            made[impl] = Side(impl, rt, plugin)
            try:
                live = rt.wait_plugins(1, timeout=30)
            except Exception as exc:
                raise RuntimeError(
                    f"{impl} bench plugin did not connect: {exc}\n"
                    f"plugin stderr:\n{plugin.stderr_tail()}\nruntime stderr:\n{rt.stderr_tail()}"
                ) from exc
            if live != [plugin.qualified]:
                raise RuntimeError(f"{impl}: expected only {plugin.qualified} live, got {live}")
        yield made
    finally:
        for side in reversed(list(made.values())):
            with contextlib.suppress(Exception):
                side.plugin.stop()
            with contextlib.suppress(Exception):
                side.runtime.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def run_block(side: Side, scenario: str, count: int, warmup: int) -> BenchResult:
    """One ``bench`` command on ``side``, checked (:class:`BenchCheckError`)."""
    ctr = CONTAINER if scenario == "create_container" else None
    res = side.runtime.bench(scenario, POD, ctr, count=count, warmup=warmup)
    want = (side.plugin.qualified,)
    problems = []
    if res.live_before != want or res.live_after != want:
        problems.append(f"live plugins {res.live_before} -> {res.live_after}, want {want}")
    if res.differing_replies:
        problems.append(f"{res.differing_replies} replies differ from the last one")
    if scenario == "create_container":
        devices = res.last_reply.get("adjust", {}).get("linux", {}).get("devices")
        if devices != list(BENCH_DEVICES):
            problems.append(f"merged devices {devices!r}, want {list(BENCH_DEVICES)!r}")
    if side.plugin.proc.poll() is not None:
        problems.append(f"plugin exited ({side.plugin.proc.returncode})")
    if problems:
        raise BenchCheckError(
            f"{side.impl} {scenario}: " + "; ".join(problems) + f"\n{side.plugin.stderr_tail()}"
        )
    return res


@dataclass
class Collected:
    """Blocks per implementation for one scenario."""

    scenario: str
    blocks: dict[str, list[BenchResult]] = field(default_factory=dict)

    def run_round(
        self, all_sides: Mapping[str, Side], count: int, warmup: int, rng: random.Random
    ) -> None:
        order = list(all_sides)
        rng.shuffle(order)
        for impl in order:
            res = run_block(all_sides[impl], self.scenario, count, warmup)
            self.blocks.setdefault(impl, []).append(res)

    def summary(self) -> dict[str, Any]:
        """Per-implementation statistics (µs) and kndkit/Go ratios."""
        impls: dict[str, dict[str, Any]] = {}
        for impl, blocks in self.blocks.items():
            per_round = [bench_stats(b.ns) for b in blocks]
            pooled = bench_stats([ns for b in blocks for ns in b.ns])
            impls[impl] = {
                "p50_us": statistics.median(s["p50_us"] for s in per_round),
                "p99_us": statistics.median(s["p99_us"] for s in per_round),
                "mean_us": pooled["mean_us"],
                "pooled_p50_us": pooled["p50_us"],
                "pooled_p90_us": pooled["p90_us"],
                "pooled_p99_us": pooled["p99_us"],
                "min_us": pooled["min_us"],
                "max_us": pooled["max_us"],
                "calls": sum(len(b.ns) for b in blocks),
                "rounds": len(blocks),
                "round_p50_us": [round(s["p50_us"], 2) for s in per_round],
                "round_p99_us": [round(s["p99_us"], 2) for s in per_round],
            }
        out: dict[str, Any] = {"scenario": self.scenario, "impls": impls}
        if "kndkit" in impls and "go" in impls:
            k, g = impls["kndkit"], impls["go"]
            out["ratio"] = {m: k[m] / g[m] for m in ("p50_us", "p99_us", "mean_us") if g[m] > 0}
        if "kndkit" in impls:
            out["target_p99_us"] = TARGET_P99_US
            out["meets_target"] = impls["kndkit"]["p99_us"] < TARGET_P99_US
        return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000, help="counted calls per implementation")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (blocks per impl)")
    ap.add_argument("--warmup", type=int, default=200, help="uncounted calls before each block")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--profile", type=pathlib.Path, help="directory for the kndkit cProfile")
    args = ap.parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if bad := set(scenarios) - set(SCENARIOS):
        ap.error(f"unknown scenarios {sorted(bad)}; choose from {SCENARIOS}")
    if args.calls < args.rounds or args.rounds < 1:
        ap.error("need --rounds >= 1 and --calls >= --rounds")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    per_block = args.calls // args.rounds
    summaries = []
    with sides(impls, profile_dir=args.profile) as all_sides:
        for scenario in scenarios:
            col = Collected(scenario)
            for _ in range(args.rounds):
                col.run_round(all_sides, per_block, args.warmup, rng)
            summaries.append(col.summary())
    print(
        f"NRI round trips (nri-harness {NRI_VERSION}, pid {os.getpid()}): "
        f"{per_block} calls x {args.rounds} interleaved rounds per plugin, "
        f"{args.warmup} warm-up calls before each block"
    )
    print("\n".join(nri_table(summaries)))
    if args.json:
        args.json.write_text(json.dumps({"nri_roundtrip": summaries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
