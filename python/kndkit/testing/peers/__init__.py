"""The Go test peers, shipped as sources and built on first use.

kndkit's tests (and :class:`kndkit.testing.SimulatedNode`) run real upstream
code on the other side of every protocol: kube-apiserver + etcd and the
scheduler's DRA allocator (``kube``), the kubelet's DRA client (``kubelet``)
and containerd's NRI runtime side (``nri``). Their Go sources live next to this
module (``<peer>/go.mod``, ``<peer>/cmd/...``, ``<peer>/build.sh``); the
binaries are built by :func:`ensure`:

* into ``$KNDKIT_PEERS_BIN`` when it is set (the project's own tests set it to
  ``tests/peers/bin``), otherwise into
  ``~/.cache/kndkit/peers/<hash of the sources and the go version>/``
  (``$XDG_CACHE_HOME`` is honoured), so a new kndkit or a new Go gets a new
  directory and an old one is never reused by mistake;
* once: each peer's stamp (``.kndkit-<peer>.stamp``, the hash of its sources
  and the go version) makes a later call return in milliseconds without
  running ``go``;
* one process at a time: a lock file (``.kndkit-peers.lock``) in the output
  directory serialises concurrent callers; the second waits and then finds the
  binaries up to date.

The first build downloads the Go modules (the Go module proxy must be
reachable) and takes about 4-12 minutes; Go's own caches make later rebuilds
take seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kndkit.errors import InvalidArgument, KndError, NotAvailable

__all__ = [
    "BINARIES",
    "PEERS",
    "SOURCE_DIR",
    "PeerBuildError",
    "bin_dir",
    "cache_root",
    "ensure",
    "find_go",
    "go_version",
    "source_hash",
]

log = logging.getLogger("kndkit.testing.peers")

SOURCE_DIR = Path(__file__).resolve().parent
PEERS: tuple[str, ...] = ("kube", "kubelet", "nri")
BINARIES: dict[str, tuple[str, ...]] = {
    "kube": ("etcd", "allocator", "kube-apiserver"),
    "kubelet": ("kubelet-harness", "ref-driver", "fake-registrar"),
    "nri": tuple(
        f"{b}-{v}"
        for v in ("v012", "v011")
        for b in ("nri-harness", "nri-netdev-injector", "nri-bench-plugin")
    ),
}
GO_SEARCH_DIRS: tuple[str, ...] = ("/usr/local/go/bin",)
PROGRESS_INTERVAL_S = 30.0
_SOURCE_SUFFIXES = (".go", ".mod", ".sum", ".sh")
_INSTALL_HINT = (
    "install Go >= 1.24 (the kube and kubelet peers need 1.26, or GOTOOLCHAIN=auto) from "
    "https://go.dev/dl/ into /usr/local/go or onto PATH; the first build also needs the "
    "Go module proxy (proxy.golang.org or $GOPROXY) to be reachable"
)


class PeerBuildError(KndError):
    """A peer's ``build.sh`` failed; the message carries the tail of its output."""


def _check(which: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(which))
    for n in names:
        if n not in PEERS:
            raise InvalidArgument(f"unknown test peer {n!r} (known: {', '.join(PEERS)})")
    return names


def find_go(search_dirs: Iterable[str] | None = None) -> Path:
    """The ``go`` command: on ``PATH``, else in ``search_dirs`` (default
    :data:`GO_SEARCH_DIRS`: ``/usr/local/go/bin``).

    Raises :class:`NotAvailable` with install instructions when there is none.
    """
    search_dirs = tuple(GO_SEARCH_DIRS if search_dirs is None else search_dirs)
    found = shutil.which("go")
    if found is None:
        for d in search_dirs:
            cand = Path(d) / "go"
            if cand.is_file() and os.access(cand, os.X_OK):
                found = str(cand)
                break
    if found is None:
        raise NotAvailable(
            "the Go toolchain is needed to build kndkit's test peers but no 'go' command "
            f"was found on PATH or in {', '.join(search_dirs)}: {_INSTALL_HINT}"
        )
    return Path(found)


def go_version(go: Path) -> str:
    """``go version`` output (e.g. ``go version go1.26.8 linux/amd64``)."""
    env = {**os.environ, "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local")}
    proc = subprocess.run(
        [str(go), "version"], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise NotAvailable(f"{go} version failed: {proc.stderr.strip()}: {_INSTALL_HINT}")
    return proc.stdout.strip()


def _parse_go(version: str) -> tuple[int, int]:
    m = re.search(r"go(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _min_go(peer: str, source_dir: Path) -> tuple[int, int]:
    need = (0, 0)
    for mod in sorted((source_dir / peer).glob("go*.mod")):
        m = re.search(r"^go (\d+)\.(\d+)", mod.read_text(), re.MULTILINE)
        if m:
            need = max(need, (int(m.group(1)), int(m.group(2))))
    return need


def _source_files(peer: str, source_dir: Path) -> list[Path]:
    root = source_dir / peer
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(_SOURCE_SUFFIXES))


def source_hash(
    which: Iterable[str] = PEERS, *, go: str = "", source_dir: Path = SOURCE_DIR
) -> str:
    """SHA-256 (hex) over the peers' Go sources, go.mod/go.sum, build.sh and ``go``.

    ``go`` is the ``go version`` line (empty: the sources alone).
    """
    h = hashlib.sha256()
    h.update(go.encode() + b"\0")
    for peer in _check(which):
        for p in _source_files(peer, source_dir):
            h.update(str(p.relative_to(source_dir)).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/kndkit/peers`` (default ``~/.cache/kndkit/peers``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kndkit" / "peers"


def bin_dir(*, go: str | None = None, source_dir: Path = SOURCE_DIR) -> Path:
    """Where the binaries are (or will be) built.

    ``$KNDKIT_PEERS_BIN`` when set; otherwise the cache directory named after
    :func:`source_hash` of every peer and ``go`` (the ``go version`` line; found
    with :func:`find_go` when None).
    """
    env = os.environ.get("KNDKIT_PEERS_BIN")
    if env:
        return Path(env)
    if go is None:
        go = go_version(find_go())
    return cache_root() / source_hash(PEERS, go=go, source_dir=source_dir)[:16]


def _stamp_path(out: Path, peer: str) -> Path:
    return out / f".kndkit-{peer}.stamp"


def _up_to_date(out: Path, peer: str, want: str) -> bool:
    try:
        if _stamp_path(out, peer).read_text().strip() != want:
            return False
    except OSError:
        return False
    return all(os.access(out / b, os.X_OK) for b in BINARIES[peer])


def _have_binaries(out: Path, which: Iterable[str]) -> bool:
    return all(os.access(out / b, os.X_OK) for p in which for b in BINARIES[p])


@contextlib.contextmanager
def _locked(out: Path, progress: Callable[[str], None]) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".kndkit-peers.lock").open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"peers: another process is building in {out}; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_one(
    peer: str, out: Path, go: Path, source_dir: Path, progress: Callable[[str], None]
) -> float:
    script = source_dir / peer / "build.sh"
    env = {
        **os.environ,
        "KNDKIT_PEERS_BIN": str(out),
        "PATH": f"{go.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local"),
    }
    log_path = out / f"build-{peer}.log"
    t0 = time.monotonic()
    done = threading.Event()

    def ticker() -> None:
        while not done.wait(PROGRESS_INTERVAL_S):
            progress(f"peers: still building {peer}: {time.monotonic() - t0:.0f} s elapsed")

    thread = threading.Thread(target=ticker, name=f"peers-{peer}-progress", daemon=True)
    thread.start()
    try:
        with log_path.open("wb") as logf:
            rc = subprocess.run(
                ["bash", str(script)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=source_dir / peer,
                check=False,
            ).returncode
    finally:
        done.set()
        thread.join()
    if rc != 0:
        tail = log_path.read_bytes()[-6000:].decode(errors="replace")
        raise PeerBuildError(
            f"building the {peer} test peer failed ({script} exit {rc}; full log {log_path}); "
            f"is the Go module proxy reachable? output:\n{tail}"
        )
    return time.monotonic() - t0


def ensure(
    which: Iterable[str] = ("kube", "kubelet", "nri"),
    *,
    progress: Callable[[str], None] | None = None,
    source_dir: Path = SOURCE_DIR,
) -> Path:
    """Build the named peers unless up to date; return the directory of the binaries.

    ``progress`` gets one line per step (which peer, elapsed time); default:
    the ``kndkit.testing.peers`` logger at INFO. Raises :class:`NotAvailable`
    when Go is missing or too old (and the binaries are not already there),
    :class:`PeerBuildError` when a build fails, :class:`InvalidArgument` for an
    unknown peer name.
    """
    names = _check(which)
    say: Callable[[str], None] = progress or log.info
    try:
        go = find_go()
    except NotAvailable:
        # No toolchain: binaries somebody already built are still fine.
        fallback = _prebuilt(names, source_dir)
        if fallback is not None:
            return fallback
        raise
    version = go_version(go)
    out = bin_dir(go=version, source_dir=source_dir)
    have = _parse_go(version)
    for peer in names:
        need = _min_go(peer, source_dir)
        auto = os.environ.get("GOTOOLCHAIN", "local") != "local"
        if have < need and not auto:
            raise NotAvailable(
                f"the {peer} test peer needs Go >= {need[0]}.{need[1]} but {go} is "
                f"{version!r}: {_INSTALL_HINT}"
            )
    wants = {p: source_hash((p,), go=version, source_dir=source_dir) for p in names}
    if all(_up_to_date(out, p, wants[p]) for p in names):
        return out
    with _locked(out, say):
        (out / ".kndkit-sources").write_text(source_hash(PEERS, source_dir=source_dir) + "\n")
        for peer in names:
            if _up_to_date(out, peer, wants[peer]):
                continue
            say(
                f"peers: building {peer} ({', '.join(BINARIES[peer])}) into {out} with "
                f"{version.removeprefix('go version ')}; this takes ~4-12 min the first "
                "time (module download + compile), seconds later"
            )
            secs = _build_one(peer, out, go, source_dir, say)
            _stamp_path(out, peer).write_text(wants[peer] + "\n")
            say(f"peers: {peer} ready in {secs:.1f} s")
    return out


def _prebuilt(names: tuple[str, ...], source_dir: Path) -> Path | None:
    """Without Go: $KNDKIT_PEERS_BIN or a cache directory built from these sources."""
    env = os.environ.get("KNDKIT_PEERS_BIN")
    if env:
        return Path(env) if _have_binaries(Path(env), names) else None
    want = source_hash(PEERS, source_dir=source_dir)
    root = cache_root()
    if not root.is_dir():
        return None
    for d in sorted(root.iterdir()):
        try:
            same = (d / ".kndkit-sources").read_text().strip() == want
        except OSError:
            continue
        if same and _have_binaries(d, names):
            return d
    return None
