"""(f) memory the Rust path adds: peak RSS (VmHWM) of a fresh interpreter that
does one 64-interface physical attach through the kndkit extension module
loaded alone (``kndkit_native``), against one that does it with the raw Python
floor (which never imports kndkit), one that attaches nothing, and - for
information - one that does ``import kndkit._native`` the ordinary way (which
also runs the Python package's ``__init__``). Target: the extension's peak
minus the floor's < 10 MB.

The timed quantity is the whole subprocess (interpreter start included); only
the RSS figures in ``extra_info`` matter.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from benches import env
from benches.conftest import label, require, rounds, run_rounds

N = 64
HERE = pathlib.Path(__file__).resolve().parent


def _spec(pair: env.Pair, ifaces: list[env.Iface]) -> dict[str, Any]:
    return {
        "host": pair.host.path,
        "pod": pair.pod.path,
        "rawnl": str(HERE / "peers" / "rawnl.py"),
        "ifaces": [
            {
                "host": f.host,
                "host_index": f.host_index,
                "pod": f.pod,
                "mtu": f.mtu,
                "v4": f.v4,
                "v6": f.v6,
                "route": f.route,
                "gateway": f.gateway,
            }
            for f in ifaces
        ],
    }


@pytest.mark.netns
@pytest.mark.parametrize("impl", ["baseline", "raw", "kndkit_native", "kndkit"])
def test_rss(benchmark, pair: env.Pair, impl: str) -> None:
    require(impl.removesuffix("_native"))
    label(benchmark, "rss", N, impl)
    peaks: list[int] = []

    def setup() -> tuple[list[env.Iface], str]:
        env.clean_pair(pair)
        ifaces = env.make_physical(pair, N)
        with tempfile.NamedTemporaryFile(
            "w", prefix="knb-rss-", suffix=".json", delete=False
        ) as fh:
            json.dump(_spec(pair, ifaces), fh)
        return ifaces, fh.name

    def target(ifaces: list[env.Iface], spec: str) -> None:
        r = subprocess.run(
            [sys.executable, str(HERE / "rss_probe.py"), impl, spec],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        peaks.append(json.loads(r.stdout.strip().splitlines()[-1])["vmhwm_kb"])

    def verify(ifaces: list[env.Iface], spec: str) -> None:
        if impl != "baseline":
            env.verify_attached(pair, ifaces)

    def cleanup(ifaces: list[env.Iface], spec: str) -> None:
        pathlib.Path(spec).unlink(missing_ok=True)
        env.clean_pair(pair)

    run_rounds(benchmark, target, setup=setup, verify=verify, cleanup=cleanup, rounds=rounds(3))
    peaks.sort()
    benchmark.extra_info.update(vmhwm_kb=peaks[len(peaks) // 2], vmhwm_kb_all=peaks)
