#!/usr/bin/env bash
# Runs every benchmark suite, writes pytest-benchmark JSON into benches/results/
# and prints (and saves as results/report.md) the median/ratio table.
#
#   benches/run.sh                  # all suites (about 10 minutes on 2 cores)
#   benches/run.sh attach discovery # some suites
#   KNDKIT_BENCH_ROUNDS_SCALE=0.3 benches/run.sh   # fewer rounds
#
# Needs root. Build the extension in release mode first:
#   .venv/bin/maturin develop --release
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=benches/results
SUITES=("$@")
[ ${#SUITES[@]} -eq 0 ] && SUITES=(attach detach discovery cpu rss)
mkdir -p "$OUT"
status=0
for suite in "${SUITES[@]}"; do
  echo "== $suite" >&2
  "$PY" -m pytest "benches/test_${suite}.py" -q -p no:cacheprovider \
    --benchmark-json="$OUT/${suite}.json" \
    --benchmark-columns=median,min,max,rounds --benchmark-sort=name \
    || status=$?
done
jsons=()
for suite in "${SUITES[@]}"; do
  [ -s "$OUT/${suite}.json" ] && jsons+=("$OUT/${suite}.json")
done
[ ${#jsons[@]} -gt 0 ] && "$PY" benches/report.py "${jsons[@]}" | tee "$OUT/report.md"
exit $status
