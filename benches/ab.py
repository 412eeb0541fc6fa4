"""Interleaved A/B comparison of implementations for one pod event.

    python benches/ab.py attach_virtual 64 --rounds 30 [--impls kndkit,raw] [--json out.json]

pytest-benchmark times one implementation after another, so a burst of load on
a shared machine can land on one of them. Here every round runs each
implementation once, in a fresh random order, on identical fresh state; the
medians and their ratios to the raw floor (when it is listed) are
printed. Each round is checked like in the suites. Needs root.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benches import env, impls
from benches.scenarios import SCENARIOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("event", choices=sorted(SCENARIOS))
    ap.add_argument("n", type=int)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--impls", default="kndkit,raw")
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    names = args.impls.split(",")
    unknown = set(names) - set(impls.IMPLS)
    if unknown:
        ap.error(f"unknown implementations {sorted(unknown)}; choose from {impls.IMPLS}")
    if "kndkit" in names and impls.kndkit_native() is None:
        ap.error("kndkit._native.apply is not built")
    env.remove_stale()
    sc = SCENARIOS[args.event]
    times: dict[str, list[float]] = {i: [] for i in names}
    with env.pair_of_namespaces("ab") as pair:
        for _ in range(args.rounds):
            order = names[:]
            random.shuffle(order)
            for impl in order:
                ifaces = sc.setup(pair, args.n)
                try:
                    t0 = time.perf_counter()
                    impls.EVENTS[args.event][impl](pair, ifaces)
                    times[impl].append(time.perf_counter() - t0)
                    sc.verify(pair, ifaces)
                finally:
                    env.clean_pair(pair)
    med = {i: statistics.median(t) for i, t in times.items()}
    floor = med.get(impls.FLOOR)
    print(f"{args.event} N={args.n}, {args.rounds} interleaved rounds")
    for i in names:
        ratio = f"  {med[i] / floor:.3f}x floor" if floor else ""
        print(f"  {i:9s} median {med[i] * 1e3:9.2f} ms{ratio}")
    if args.json:
        args.json.write_text(
            json.dumps({"event": args.event, "n": args.n, "seconds": times}, indent=1)
        )


if __name__ == "__main__":
    main()
