"""Shared pieces of the DRA benchmarks (``benches/test_dra_*.py``).

The benchmarks use the real peers of ``tests/peers`` (kube-apiserver + etcd, the
scheduler's allocator, the kubelet harness, the upstream-helper reference
driver); their fixtures are imported from there. Timings are never asserted:
they go to ``extra_info`` and to ``benches/results/dra_*.json``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import pathlib
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from peers.kube_fixtures import (  # noqa: E402
    Allocator,
    KubeAPIError,
    KubeCluster,
    allocator,
    kube_apiserver,
    kube_peers_built,
)
from peers.kubelet_fixtures import (  # noqa: E402
    KndkitPlugin,
    KubeletHarness,
    RefDriver,
    kubelet_peer_bin,
    start_kndkit_plugin,
    start_ref_driver,
    unique_name,
)

__all__ = [
    "RESOURCE",
    "RESULTS",
    "Allocator",
    "KndkitPlugin",
    "KubeCluster",
    "KubeletHarness",
    "RefDriver",
    "SliceWatch",
    "allocator",
    "create_claim",
    "create_device_class",
    "delete_claim",
    "delete_slices",
    "kube_apiserver",
    "kube_peers_built",
    "kubelet_peer_bin",
    "percentile",
    "start_kndkit_plugin",
    "start_ref_driver",
    "summarize",
    "unique_name",
]

RESOURCE = "/apis/resource.k8s.io/v1"
RESULTS = ROOT / "benches" / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return float(s[k])


def summarize(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean/min/max of milliseconds, rounded to microseconds."""
    if not values_ms:
        return {"n": 0}
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 3),
        "p99_ms": round(percentile(values_ms, 99), 3),
        "mean_ms": round(sum(values_ms) / len(values_ms), 3),
        "min_ms": round(min(values_ms), 3),
        "max_ms": round(max(values_ms), 3),
    }


# --------------------------------------------------------------------------- API objects


def create_device_class(api: KubeCluster, driver: str) -> str:
    name = unique_name("bench-nics")
    api.create(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
        }
    )
    return name


def create_claim(
    api: KubeCluster,
    alloc: Allocator,
    node: str,
    namespace: str,
    device_class: str,
    count: int,
    config: dict[str, Any] | None = None,
    driver: str = "",
) -> dict[str, Any]:
    """An allocated claim (reserved for a pod) of ``count`` devices of the class."""
    spec: dict[str, Any] = {
        "devices": {
            "requests": [
                {
                    "name": "nic",
                    "exactly": {
                        "deviceClassName": device_class,
                        "allocationMode": "ExactCount",
                        "count": count,
                    },
                }
            ]
        }
    }
    if config is not None:
        spec["devices"]["config"] = [
            {"requests": ["nic"], "opaque": {"driver": driver, "parameters": config}}
        ]
    claim = api.create(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": unique_name("bench-claim"), "namespace": namespace},
            "spec": spec,
        }
    )
    res = alloc.allocate(node, [claim], pod=(unique_name("pod"), str(uuid.uuid4())))
    if not res.allocated:
        raise RuntimeError(f"allocation failed: {res.json} {res.stderr}")
    got: dict[str, Any] = api.get(claim)
    return got


def delete_claim(api: KubeCluster, claim: dict[str, Any]) -> None:
    with contextlib.suppress(KubeAPIError):
        api.request(
            "PATCH",
            api.path_for(claim, with_name=True),
            {"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )
    with contextlib.suppress(KubeAPIError):
        api.delete(claim, grace_period_s=0)


def delete_slices(api: KubeCluster, driver: str) -> None:
    with contextlib.suppress(KubeAPIError):
        api.request("DELETE", f"{RESOURCE}/resourceslices?fieldSelector=spec.driver={driver}")


def claim_ref(claim: dict[str, Any]) -> dict[str, str]:
    m = claim["metadata"]
    return {"namespace": m["namespace"], "name": m["name"], "uid": m["uid"]}


# --------------------------------------------------------------------------- watch


@dataclass
class SliceWatch:
    """Watches one driver's ResourceSlices and records every event with its time.

    Every create, update or delete of a slice is one watch event, so the number
    of events is the number of API writes, whoever made them. ``complete_ns(n)``
    is the CLOCK_REALTIME time of the first event after which the driver's pool
    holds ``n`` distinct devices in a consistent set of slices.
    """

    api: KubeCluster
    driver: str
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (time_ns, type, name)
    _slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    _complete: list[tuple[int, int]] = field(default_factory=list)  # (time_ns, devices)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _conn: http.client.HTTPSConnection | None = None
    _thread: threading.Thread | None = None
    _stop: bool = False

    def start(self) -> SliceWatch:
        sel = urllib.parse.quote(f"spec.driver={self.driver}")
        listing = self.api.request("GET", f"{RESOURCE}/resourceslices?fieldSelector={sel}")
        for s in listing["items"]:
            self._slices[s["metadata"]["name"]] = s
        rv = listing["metadata"]["resourceVersion"]
        url = urllib.parse.urlparse(self.api.url)
        ctx = ssl.create_default_context(cafile=str(self.api.ca_file))
        self._conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=600)
        self._conn.request(
            "GET",
            f"{RESOURCE}/resourceslices?watch=1&fieldSelector={sel}&resourceVersion={rv}"
            "&allowWatchBookmarks=false",
            headers={"Authorization": f"Bearer {self.api.admin_token}"},
        )
        resp = self._conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"watch failed: HTTP {resp.status} {resp.read()[:500]!r}")
        self._thread = threading.Thread(target=self._read, args=(resp,), daemon=True)
        self._thread.start()
        return self

    def _read(self, resp: http.client.HTTPResponse) -> None:
        try:
            for line in resp:
                now = time.time_ns()
                if not line.strip():
                    continue
                ev = json.loads(line)
                kind, obj = ev["type"], ev["object"]
                if kind not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                name = obj["metadata"]["name"]
                with self._cond:
                    self.events.append((now, kind, name))
                    if kind == "DELETED":
                        self._slices.pop(name, None)
                    else:
                        self._slices[name] = obj
                    self._complete.append((now, self._devices_if_consistent()))
                    self._cond.notify_all()
        except Exception:
            if not self._stop:  # stop() cuts the stream: anything may be raised then
                raise
        finally:
            resp.close()

    def _devices_if_consistent(self) -> int:
        slices = list(self._slices.values())
        if not slices:
            return 0
        gens = {s["spec"]["pool"]["generation"] for s in slices}
        counts = {s["spec"]["pool"]["resourceSliceCount"] for s in slices}
        top = max(gens)
        current = [s for s in slices if s["spec"]["pool"]["generation"] == top]
        if counts != {len(current)} or len(current) != len(slices):
            return 0
        return len({d["name"] for s in current for d in s["spec"].get("devices", [])})

    def wait_complete(self, n: int, after_ns: int = 0, timeout: float = 60.0) -> int:
        """Time (ns) at which the pool first held ``n`` devices after ``after_ns``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, devs in self._complete:
                    if t >= after_ns and devs == n:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.driver}: pool never complete with {n} devices; "
                        f"{len(self.events)} events"
                    )
                self._cond.wait(left)

    def count(self, after_ns: int = 0) -> int:
        with self._cond:
            return sum(1 for t, _, _ in self.events if t >= after_ns)

    def kinds(self, after_ns: int = 0) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._cond:
            for t, kind, _ in self.events:
                if t >= after_ns:
                    out[kind] = out.get(kind, 0) + 1
        return out

    def stop(self) -> None:
        self._stop = True
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        if self._conn is not None:
            self._conn.close()


def write_results(name: str, doc: dict[str, Any]) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def start_harness(bin_dir: pathlib.Path) -> KubeletHarness:
    return KubeletHarness.start(bin_dir)
