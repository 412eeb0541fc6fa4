#!/usr/bin/env bash
# Runs every test of kndkit on a fresh machine: set-up (Debian packages, Rust,
# Python venv, the native build, the Go test peers), lint and type checks for
# Rust and Python, the Rust unit tests, the Python tests (unit, real-namespace
# integration, protocol peers), and a one-round smoke pass of the benchmarks.
# Needs root (network namespaces); CI runs it as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "set-up"
bash scripts/setup.sh --peers

step "lint: Rust (cargo fmt, clippy -D warnings)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "lint: Python (ruff check, ruff format, mypy --strict)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

step "lint: Go test peers (gofmt)"
unformatted=$(gofmt -l tests/peers python/kndkit/testing/peers)
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi

step "Rust tests"
cargo test --workspace --exclude kndkit-native --quiet

step "Python tests"
.venv/bin/pytest tests -q --timeout=900 "$@"

step "benchmark smoke pass (one round each, no timing)"
.venv/bin/pytest benches -q --benchmark-disable --timeout=900 -p no:cacheprovider
