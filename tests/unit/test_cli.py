"""``kndkit discover``: ResourceSlice YAML from a node (fake sysfs trees here)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import yaml

from kndkit.cli import main
from kndkit.testing.sysfs import GPU_VM_CAPTURE, build_from_capture, build_synthetic


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_gpu_host_capture_as_resource_slice(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = build_from_capture(GPU_VM_CAPTURE, tmp_path / "sys", dev_root=tmp_path / "dev")
    rc, out, _ = _run(
        capsys,
        "discover",
        "--sysfs-root",
        str(sysfs),
        "--dev-root",
        str(tmp_path / "dev"),
        "--node",
        "gpu-node-1",
    )
    assert rc == 0
    docs = list(yaml.safe_load_all(out))
    assert len(docs) == 1
    s = docs[0]
    assert s["apiVersion"] == "resource.k8s.io/v1" and s["kind"] == "ResourceSlice"
    assert s["spec"]["nodeName"] == "gpu-node-1"
    assert s["spec"]["pool"] == {"name": "gpu-node-1", "generation": 1, "resourceSliceCount": 1}
    by_name = {d["name"]: d for d in s["spec"]["devices"]}
    eth0 = by_name["pci-0000-00-03-0"]["attributes"]
    assert eth0["ifName"] == {"string": "eth0"}
    assert eth0["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:00"}
    assert "resource.kubernetes.io/numaNode" not in eth0  # numa_node reads -1 there
    assert "lo" not in by_name


def test_synthetic_host_splits_into_slices_json(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = build_synthetic(
        tmp_path / "sys", pfs=16, vfs_per_pf=15, dev_root=tmp_path / "dev", virtual_links=False
    )
    rc, out, _ = _run(
        capsys,
        "discover",
        "--sysfs-root",
        str(sysfs),
        "--dev-root",
        str(tmp_path / "dev"),
        "--node",
        "n1",
        "--driver",
        "rdma.example.com",
        "-o",
        "json",
    )
    assert rc == 0
    items = json.loads(out)["items"]
    devices = [d for s in items for d in s["spec"]["devices"]]
    assert len(devices) == 16 * 16 + 1  # PFs + VFs + one InfiniBand-only adapter
    assert len(items) == 3
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in items} == {3}
    vf = next(d for d in devices if d["attributes"]["isSriovVf"]["bool"])
    assert vf["attributes"]["rdma"] == {"bool": True}


def test_errors_are_reported_not_raised(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(capsys, "discover", "--sysfs-root", str(tmp_path / "missing"))
    assert rc == 1
    assert "InvalidArgument" in err or "KndError" in err
    rc, _, err = _run(capsys, "discover", "--netns", "/etc/hostname")
    assert rc == 1 and "NamespaceError" in err


def test_real_node_json_logs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kndkit.cli", "--log-format", "json", "discover", "--node", "n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = list(yaml.safe_load_all(proc.stdout))
    assert docs and docs[0]["spec"]["driver"] == "netdev.kndkit.dev"
    line = json.loads(proc.stderr.strip().splitlines()[-1])
    assert line["logger"] == "kndkit.cli" and line["level"] == "info"
