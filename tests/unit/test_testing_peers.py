"""kndkit.testing.peers: finding Go, the cache path and its hash, stamps, the lock.

The build logic runs on a tiny peer tree in a temporary directory whose
``build.sh`` writes placeholder binaries (only ``go version`` of the real
toolchain runs), so these tests take milliseconds; the real builds are covered
by every peer suite (tests/peers), which builds through the same ensure().
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from kndkit.errors import InvalidArgument, NotAvailable
from kndkit.testing import peers

HAVE_GO = shutil.which("go") is not None or os.path.exists("/usr/local/go/bin/go")
needs_go = pytest.mark.skipif(not HAVE_GO, reason="needs the go command")


@pytest.fixture
def no_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without go and no fallback directory."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(peers, "GO_SEARCH_DIRS", (str(tmp_path / "nowhere"),))


def test_missing_go_is_a_clear_not_available(no_go: None) -> None:
    with pytest.raises(NotAvailable) as e:
        peers.find_go()
    msg = str(e.value)
    assert "no 'go' command" in msg
    assert "Go >= 1.24" in msg
    assert "module proxy" in msg
    assert "https://go.dev/dl/" in msg


def test_ensure_without_go_and_without_binaries_raises(
    no_go: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KNDKIT_PEERS_BIN", str(tmp_path / "bin"))
    with pytest.raises(NotAvailable, match="Go toolchain is needed"):
        peers.ensure(("kube",))
    monkeypatch.delenv("KNDKIT_PEERS_BIN")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(NotAvailable):
        peers.ensure(("nri",))


def test_ensure_without_go_uses_prebuilt_binaries(
    no_go: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    for b in peers.BINARIES["kubelet"]:
        (bins / b).write_text("#!/bin/sh\n")
        (bins / b).chmod(0o755)
    monkeypatch.setenv("KNDKIT_PEERS_BIN", str(bins))
    assert peers.ensure(("kubelet",)) == bins
    with pytest.raises(NotAvailable):  # kube binaries are not there
        peers.ensure(("kubelet", "kube"))


def test_prebuilt_cache_directory_found_by_source_hash(
    no_go: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KNDKIT_PEERS_BIN", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = peers.cache_root() / "0123456789abcdef"
    d.mkdir(parents=True)
    for b in peers.BINARIES["nri"]:
        (d / b).write_text("")
        (d / b).chmod(0o755)
    (d / ".kndkit-sources").write_text("not the hash\n")
    with pytest.raises(NotAvailable):
        peers.ensure(("nri",))
    (d / ".kndkit-sources").write_text(peers.source_hash() + "\n")
    assert peers.ensure(("nri",)) == d


def test_unknown_peer_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="unknown test peer 'kubectl'"):
        peers.ensure(("kube", "kubectl"))


def test_shipped_sources_are_complete() -> None:
    for peer in peers.PEERS:
        root = peers.SOURCE_DIR / peer
        assert (root / "build.sh").is_file()
        assert (root / "go.mod").is_file() and (root / "go.sum").is_file()
        assert list(root.glob("cmd/*/*.go")), peer
    assert (peers.SOURCE_DIR / "nri" / "go.v011.mod").is_file()


def test_cache_path_and_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KNDKIT_PEERS_BIN", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    src = tmp_path / "src"
    shutil.copytree(peers.SOURCE_DIR, src, ignore=shutil.ignore_patterns("__pycache__"))
    go1, go2 = "go version go1.26.8 linux/amd64", "go version go1.26.9 linux/amd64"
    h = peers.source_hash(go=go1, source_dir=src)
    assert h == peers.source_hash(go=go1, source_dir=peers.SOURCE_DIR)  # content, not place
    assert h != peers.source_hash(go=go2, source_dir=src)  # a new Go, a new directory
    d = peers.bin_dir(go=go1, source_dir=src)
    assert d == tmp_path / "xdg" / "kndkit" / "peers" / h[:16]
    # Any source change (Go code, go.sum, build script) moves the directory.
    for rel in ("kube/cmd/allocator/main.go", "nri/go.v011.sum", "kubelet/build.sh"):
        f = src / rel
        old = f.read_bytes()
        f.write_bytes(old + b"\n// changed\n")
        assert peers.bin_dir(go=go1, source_dir=src) != d, rel
        f.write_bytes(old)
    assert peers.bin_dir(go=go1, source_dir=src) == d
    # A README is not an input.
    (src / "kube" / "README.md").write_text("changed")
    assert peers.bin_dir(go=go1, source_dir=src) == d
    # Per-peer hashes are independent.
    assert peers.source_hash(("nri",), go=go1, source_dir=src) != peers.source_hash(
        ("kube",), go=go1, source_dir=src
    )
    # $KNDKIT_PEERS_BIN wins.
    monkeypatch.setenv("KNDKIT_PEERS_BIN", str(tmp_path / "mine"))
    assert peers.bin_dir(go=go1, source_dir=src) == tmp_path / "mine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert peers.cache_root() == Path.home() / ".cache" / "kndkit" / "peers"


def _fake_peer_tree(root: Path, *, go_directive: str = "1.24.0", sleep: float = 0.0) -> Path:
    """A source tree with one peer "nri" whose build.sh writes placeholder binaries
    and counts its runs in $KNDKIT_PEERS_BIN/runs."""
    peer = root / "nri"
    peer.mkdir(parents=True)
    (peer / "go.mod").write_text(f"module example.invalid/nri\n\ngo {go_directive}\n")
    (peer / "go.sum").write_text("")
    names = " ".join(peers.BINARIES["nri"])
    (peer / "build.sh").write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        'out="${KNDKIT_PEERS_BIN:?}"\n'
        f"sleep {sleep}\n"
        'echo run >> "$out/runs"\n'
        f'for b in {names}; do printf "#!/bin/sh\\n" > "$out/$b"; chmod +x "$out/$b"; done\n'
    )
    return root


@needs_go
def test_ensure_builds_once_with_progress_and_stamps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = _fake_peer_tree(tmp_path / "src")
    out = tmp_path / "bin"
    monkeypatch.setenv("KNDKIT_PEERS_BIN", str(out))
    lines: list[str] = []
    assert peers.ensure(("nri",), progress=lines.append, source_dir=src) == out
    assert (out / "runs").read_text().count("run") == 1
    assert any("building nri" in ln and "~4-12 min the first time" in ln for ln in lines), lines
    assert any("nri ready in" in ln for ln in lines), lines
    assert (out / ".kndkit-nri.stamp").is_file()
    # Up to date: no build, no progress.
    lines.clear()
    peers.ensure(("nri",), progress=lines.append, source_dir=src)
    assert (out / "runs").read_text().count("run") == 1 and lines == []
    # A lost binary or a changed source rebuilds.
    (out / peers.BINARIES["nri"][0]).unlink()
    peers.ensure(("nri",), progress=lines.append, source_dir=src)
    assert (out / "runs").read_text().count("run") == 2
    (src / "nri" / "go.sum").write_text("x\n")
    peers.ensure(("nri",), progress=lines.append, source_dir=src)
    assert (out / "runs").read_text().count("run") == 3


@needs_go
def test_concurrent_ensure_builds_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = _fake_peer_tree(tmp_path / "src", sleep=1.0)
    out = tmp_path / "bin"
    monkeypatch.setenv("KNDKIT_PEERS_BIN", str(out))
    lines: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            peers.ensure(("nri",), progress=lines.append, source_dir=src)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert (out / "runs").read_text().count("run") == 1
    assert any("another process is building" in ln for ln in lines), lines


@needs_go
def test_failed_build_names_the_peer_and_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = _fake_peer_tree(tmp_path / "src")
    (src / "nri" / "build.sh").write_text("echo 'go: module lookup disabled' >&2\nexit 7\n")
    monkeypatch.setenv("KNDKIT_PEERS_BIN", str(tmp_path / "bin"))
    with pytest.raises(peers.PeerBuildError) as e:
        peers.ensure(("nri",), progress=lambda _: None, source_dir=src)
    msg = str(e.value)
    assert "nri test peer failed" in msg and "exit 7" in msg
    assert "module lookup disabled" in msg and "build-nri.log" in msg
    assert not (tmp_path / "bin" / ".kndkit-nri.stamp").exists()


@needs_go
def test_too_old_go_is_not_available(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = _fake_peer_tree(tmp_path / "src", go_directive="1.99.0")
    monkeypatch.setenv("KNDKIT_PEERS_BIN", str(tmp_path / "bin"))
    monkeypatch.setenv("GOTOOLCHAIN", "local")
    with pytest.raises(NotAvailable, match=r"nri test peer needs Go >= 1\.99"):
        peers.ensure(("nri",), source_dir=src)
