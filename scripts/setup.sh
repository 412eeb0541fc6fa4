#!/usr/bin/env bash
# Installs everything kndkit needs on a fresh Debian machine, idempotently (Go
# too, from the module proxy, when missing):
#   Debian packages, the Rust components, a Python venv (.venv) with kndkit built
#   by maturin (release profile) and its test tools, and (with --peers) the Go
#   test peers under tests/peers/.
# Every step is skipped quickly when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=0
for a in "$@"; do
  case "$a" in
    --peers) PEERS=1 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# Debian packages: iproute2 (ip, the ip -batch peer), rdma-core headers for the
# verbs bindings (never linked: loaded at run time), libclang for bindgen,
# pkg-config, ethtool, openssl (test certificates), git.
APT_PKGS=(iproute2 libibverbs-dev librdmacm-dev libclang-dev clang pkg-config ethtool openssl
          python3-venv build-essential binutils git ca-certificates)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: cargo must exist (rustup on these machines); add fmt and clippy.
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  log "installing Rust with rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

# Go (the test peers and `kndkit demo` build upstream Kubernetes/containerd code
# from Go modules): when no go is on PATH or in /usr/local/go, install the
# toolchain from the Go module proxy (the zip `go` itself fetches for
# GOTOOLCHAIN switches) into /usr/local/go.
GO_VERSION=${KNDKIT_GO_VERSION:-1.26.8}
if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then
  case "$(uname -m)" in
    x86_64) goarch=amd64 ;; aarch64|arm64) goarch=arm64 ;;
    *) echo "setup.sh: no Go toolchain for $(uname -m); install Go >= 1.26 by hand" >&2; exit 1 ;;
  esac
  proxy=${GOPROXY:-https://proxy.golang.org}; proxy=${proxy%%,*}
  mod="golang.org/toolchain@v0.0.1-go${GO_VERSION}.linux-${goarch}"
  log "installing Go ${GO_VERSION} from ${proxy} into /usr/local/go"
  tmp=$(mktemp -d)
  curl -sSfL -o "$tmp/go.zip" "${proxy}/golang.org/toolchain/@v/v0.0.1-go${GO_VERSION}.linux-${goarch}.zip"
  python3 - "$tmp/go.zip" "$mod/" "$tmp/go" <<'PY'
import os, sys, zipfile
src, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(src) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        out = os.path.join(dest, info.filename[len(prefix):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as r, open(out, "wb") as w:
            w.write(r.read())
        os.chmod(out, (info.external_attr >> 16) & 0o777 or 0o644)
PY
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO mv "$tmp/go" /usr/local/go
  rm -rf "$tmp"
  /usr/local/go/bin/go version >&2
fi

# Python venv with build and test tools.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.kndkit-deps
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ scripts/requirements-dev.txt -nt "$STAMP" ]; then
  log "installing Python packages"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r scripts/requirements-dev.txt
  touch "$STAMP"
fi

# kndkit itself, built in release mode (cargo skips it when nothing changed).
log "building kndkit (maturin develop --release)"
.venv/bin/maturin develop --release -q 2>&1 | grep -vE '^(📦|✏️|🛠|🔗|🐍|⚠️  Warning: (Couldn)|Ignoring)' || true
.venv/bin/python -c "import kndkit" || { echo "kndkit failed to build/import" >&2; exit 1; }

if ((PEERS)); then
  log "building the Go test peers (tests/peers)"
  bash tests/peers/build.sh
fi
