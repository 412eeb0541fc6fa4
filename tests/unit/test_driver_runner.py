"""kndkit.runner: driver spec loading, parameters, options, and the entry points."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from kndkit.cli import build_parser
from kndkit.errors import InvalidArgument
from kndkit.examples import BUNDLED
from kndkit.examples.hello import Hello
from kndkit.runner import driver_params, load_driver, options_from_args

REPO = Path(__file__).resolve().parents[2]

DRIVER_FILE = """
from kndkit.driver import NetworkDriver

class Mine(NetworkDriver):
    name = "mine.example.com"

NotADriver = 3
"""


def test_bundled_names() -> None:
    assert set(BUNDLED) >= {"hello", "netdev", "macvlan", "rdma"}
    assert load_driver("hello") is Hello
    assert load_driver("kndkit.examples.hello:Hello") is Hello


def test_file_spec(tmp_path: Path) -> None:
    f = tmp_path / "mine.py"
    f.write_text(DRIVER_FILE)
    cls = load_driver(f"{f}:Mine")
    assert cls.name == "mine.example.com"
    with pytest.raises(InvalidArgument, match="not a NetworkDriver"):
        load_driver(f"{f}:NotADriver")
    with pytest.raises(InvalidArgument, match="no attribute 'Nope'"):
        load_driver(f"{f}:Nope")
    with pytest.raises(InvalidArgument, match="no file"):
        load_driver(f"{tmp_path}/absent.py:Mine")
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(InvalidArgument, match="boom"):
        load_driver(f"{bad}:X")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nosuch", "bundled name"),
        ("no.such.module:X", "cannot import"),
        ("kndkit.examples.hello:", "bundled name"),
    ],
)
def test_bad_specs(spec: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        load_driver(spec)


def test_params_from_set_and_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("range: 10.0.0.0/24\nmtu: 1500\nnested: {a: 1}\n")
    params = driver_params(["mtu=9000", "name=eth1", "flags=[1, 2]", "empty="], str(cfg))
    assert params == {
        "range": "10.0.0.0/24",
        "mtu": 9000,
        "nested": {"a": 1},
        "name": "eth1",
        "flags": [1, 2],
        "empty": "",
    }
    with pytest.raises(InvalidArgument, match="KEY=VALUE"):
        driver_params(["novalue"], None)
    lst = tmp_path / "l.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(InvalidArgument, match="mapping"):
        driver_params([], str(lst))
    with pytest.raises(InvalidArgument, match="absent"):
        driver_params([], str(tmp_path / "absent.yaml"))


def test_run_options_parsed() -> None:
    args = build_parser().parse_args(
        [
            "--log-format",
            "json",
            "run",
            "hello",
            "--node-name",
            "n1",
            "--host-netns",
            "/run/netns/h",
            "--kubeconfig",
            "/k",
            "--registry-dir",
            "/r",
            "--plugin-dir",
            "/p",
            "--state-dir",
            "/s",
            "--nri-socket",
            "/n.sock",
            "--nri-index",
            "20",
            "--metrics-port",
            "0",
            "--set",
            "a=1",
        ]
    )
    assert args.command == "run" and args.driver == "hello"
    opts = options_from_args(args)
    assert (opts.node_name, opts.host_netns, opts.kubeconfig) == ("n1", "/run/netns/h", "/k")
    assert (opts.registry_dir, opts.plugin_dir, opts.state_dir) == ("/r", "/p", "/s")
    assert (opts.nri_socket, opts.nri_index, opts.metrics_port) == ("/n.sock", "20", 0)
    assert opts.params == {"a": 1}
    off = build_parser().parse_args(["run", "hello", "--node-name", "n", "--metrics-port", "-1"])
    assert options_from_args(off).metrics_port is None
    empty = argparse.Namespace(**{**vars(off), "node_name": ""})
    with pytest.raises(InvalidArgument, match="node-name"):
        options_from_args(empty)


def test_driver_file_entry_point_help() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "hello.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "--host-netns" in out.stdout and "--nri-socket" in out.stdout


def test_kndkit_run_bad_driver_is_a_clean_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kndkit", "run", "nosuch", "--node-name", "n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "nosuch" in out.stderr and "Traceback" not in out.stderr


def test_python_dash_m_kndkit() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kndkit", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "--host-netns" in out.stdout and "--node-name" in out.stdout
