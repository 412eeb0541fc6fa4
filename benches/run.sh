#!/usr/bin/env bash
# Runs every benchmark suite, writes pytest-benchmark JSON into benches/results/
# and prints (and saves as results/report.md) the median/ratio table.
#
#   benches/run.sh                  # all suites (about 16 minutes on 2 cores)
#   benches/run.sh attach discovery # some suites
#   KNDKIT_BENCH_ROUNDS_SCALE=0.3 benches/run.sh   # fewer rounds
#
# Needs root. By default builds a private release wheel of kndkit (in
# target/bench, with maturin) and benchmarks that snapshot, so the numbers are
# from a release build and a concurrent `maturin develop` cannot swap the module
# mid-run. KNDKIT_BENCH_BUILD=0 snapshots the installed package instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MATURIN=${MATURIN:-.venv/bin/maturin}
OUT=benches/results
SNAP=$(mktemp -d /tmp/knb-pkg.XXXXXX)
trap 'rm -rf "$SNAP"' EXIT
if [ "${KNDKIT_BENCH_BUILD:-1}" = 1 ]; then
  echo "== building a release wheel (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/bench})" >&2
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/bench} \
    "$MATURIN" build --release -q -i "$PY" -o "$SNAP/wheel" >&2
  "$PY" -m zipfile -e "$SNAP"/wheel/*.whl "$SNAP/pkg"
else
  mkdir -p "$SNAP/pkg"
  cp -r "$("$PY" -c 'import kndkit, os; print(os.path.dirname(kndkit.__file__))')" "$SNAP/pkg/"
fi
export PYTHONPATH="$SNAP/pkg${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import kndkit._native as n; print("== kndkit._native from", n.__file__)' >&2
SUITES=("$@")
[ ${#SUITES[@]} -eq 0 ] && SUITES=(attach detach discovery cpu rss nri_roundtrip dra_prepare dra_publish pod_start churn driver_rss)
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
  case $suite in pod_start|churn|driver_rss) continue ;; esac  # driver_report.py below
  [ -s "$OUT/${suite}.json" ] && jsons+=("$OUT/${suite}.json")
done
: >"$OUT/report.md"
[ ${#jsons[@]} -gt 0 ] && "$PY" benches/report.py "${jsons[@]}" | tee "$OUT/report.md"
dra=()
for s in dra_prepare dra_publish; do [ -s "$OUT/$s.json" ] && dra+=("$OUT/$s.json"); done
[ ${#dra[@]} -gt 0 ] && "$PY" benches/dra_report.py "${dra[@]}" | tee -a "$OUT/report.md"
drv=()
for s in pod_start churn driver_rss; do [ -s "$OUT/$s.json" ] && drv+=("$OUT/$s.json"); done
[ ${#drv[@]} -gt 0 ] && "$PY" benches/driver_report.py "${drv[@]}" | tee -a "$OUT/report.md"
# User-space cost per request in instructions (exact, unlike the tick-sampled
# ru_utime split), converted to time with encode()'s native rate.
if command -v valgrind >/dev/null && { [ ${#SUITES[@]} -eq 0 ] || [[ " ${SUITES[*]} " == *" cpu "* ]]; }; then
  echo "== instructions per request (callgrind)" >&2
  "$PY" benches/instructions.py --json "$OUT/instructions.json" | tee -a "$OUT/report.md" || status=$?
fi
exit $status
