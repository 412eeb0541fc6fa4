"""Pod-start time kndkit adds inside RunPodSandbox, next to the kernel floor.

    python benches/pod_start.py [--rounds 20] [--warmup 2] [--counts 1,8]
        [--drivers netdev,macvlan] [--seed N] [--json out.json]

A :class:`kndkit.testing.SimulatedNode` (real kube-apiserver, the scheduler's
allocator, the kubelet and NRI harnesses) runs one example driver at a time as
``kndkit run <driver>``; a round is one pod with ``n`` devices:

* **kndkit**: create the Pod and its claim, allocate, NodePrepareResources
  (untimed), then ONE RunPodSandbox relayed by containerd's NRI adaptation
  (``nri-harness``) to the driver's NRI plugin; its duration is measured in Go
  around the adaptation call (``bench`` command, count 1), so it holds the whole
  runtime -> plugin -> runtime round trip: ttrpc, the plugin's dispatch, the
  attachment record written before and after, and the one native netlink call.
  Checked afterwards through ``ip -j``; then the pod is deleted (StopPodSandbox,
  RemovePodSandbox, NodeUnprepareResources; untimed).
* **floor**: the same netlink work on equivalent links done by the raw batched
  socket floor of ``benches/peers/rawnl.py`` (one socket per namespace, one
  ``sendmsg`` per namespace, no lookups, no undo information), timed with
  ``perf_counter_ns`` around the call (opening the namespace fds and sockets
  included, as in ``benches/impls.py``), in a fresh pod namespace like kndkit's.

What the devices get:

* ``netdev`` (``kndkit run netdev --set filter=true``): veth NICs ``kb<i>a`` on
  the node (peers in the fabric namespace) moved into the pod as ``net<i>`` with
  MTU 9000, up, an IPv4 and an IPv6 address and a route via a gateway - the
  configuration comes from one DeviceClass per NIC (opaque config) and the claim
  has one request per NIC. Floor: ``impls.attach_physical_raw`` (move + rename +
  MTU + up in one RTM_NEWLINK, then the addresses and route) on veths in a
  private host namespace.
* ``macvlan`` (``kndkit run macvlan --set parent=kbm ...``): ``n`` slots of one
  claim, macvlans (bridge mode) of the parent created inside the pod as
  ``net1..``, up, an IPv4 address leased at prepare, a default route via the
  gateway with metric 100+slot. Floor: RTM_NEWLINK kind macvlan with
  IFLA_NET_NS_FD (created up, ifindex chosen by the floor), then the address and
  route, on a parent in a private host namespace.

  The driver's own histograms (``/metrics``, read before and after the call,
  untimed) split it: ``handler`` = the plugin's RunPodSandbox handler
  (``kndkit_nri_request_duration_seconds``), ``attach`` = the native attach
  inside it (``kndkit_attach_duration_seconds{op="attach"}``: opening the pod
  namespace, the one ``apply`` on a worker thread).
* **noop**: RunPodSandbox of a pod without claims through the same driver (NRI
  transport + the plugin finding nothing to do): the part of the overhead that
  any NRI plugin pays, shown next to the rest.

Rounds are interleaved: each round runs every (n, implementation) pair of the
driver once, in a fresh random order, so a burst of load on the shared machine
lands on both alike. Before every timed call the bench sleeps ``SETTLE_S`` so
the kernel's deferred work of the previous round (namespace cleanup) is mostly
done. Reported per driver and n: p50/p99 of both, ``ratio`` = kndkit/floor,
``overhead`` = kndkit - floor, and whether kndkit <= 1.05x floor + 1 ms
(p50 and p99). Nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import pathlib
import random
import socket
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches import env, impls  # noqa: E402
from benches.peers import rawnl  # noqa: E402

DRIVERS = ("netdev", "macvlan")
COUNTS = (1, 8)
IMPLS = ("kndkit", "floor", "noop")
TARGET_FACTOR, TARGET_PLUS_MS = 1.05, 1.0
SETTLE_S = 0.05
NAMESPACE = "default"

MACVLAN_PARENT = "kbm"
MACVLAN_RANGE = "10.78.0.0/24"
MACVLAN_GATEWAY = "10.78.0.1"
MACVLAN_METRIC = 100
IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE = 1, 4
FLOOR_INDEX0 = 100  # ifindex the floor gives the macvlans it creates

DEVICE_CLASS_PREFIX = "knb-nic"


def node_name(tag: str) -> str:
    """A node name unique to this process (lower case: a Kubernetes name)."""
    return f"knb{os.getpid() % 100000}-{tag}"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1), linear between closest ranks."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def stats_ms(ns: Sequence[int]) -> dict[str, float]:
    ms = [v / 1e6 for v in ns]
    return {
        "p50_ms": percentile(ms, 0.5),
        "p99_ms": percentile(ms, 0.99),
        "mean_ms": statistics.fmean(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (and VmSize) of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(rest.split()[0])
    return out


def histogram_totals(text: str, name: str, labels: dict[str, str]) -> tuple[float, float]:
    """``(sum, count)`` of the Prometheus histogram ``name`` for the series whose
    labels include ``labels`` (0, 0 when absent)."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if not all(w in head for w in want):
            continue
        if head.startswith(f"{name}_sum{{"):
            total = float(value)
        elif head.startswith(f"{name}_count{{"):
            count = float(value)
    return total, count


def plugin_times(driver: Any) -> tuple[float, float, float, float]:
    """The driver's own totals: RunPodSandbox handler (sum, count) and native
    attach (sum, count), from its /metrics."""
    text = driver.metrics()
    name = driver.name
    h = histogram_totals(
        text, "kndkit_nri_request_duration_seconds", {"driver": name, "event": "RunPodSandbox"}
    )
    a = histogram_totals(text, "kndkit_attach_duration_seconds", {"driver": name, "op": "attach"})
    return (*h, *a)


def claim_object(name: str, requests: Sequence[tuple[str, str, int]]) -> dict[str, Any]:
    """A ResourceClaim without opaque config: ``(request, device class, count)``."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": r,
                        "exactly": {
                            "deviceClassName": cls,
                            "allocationMode": "ExactCount",
                            "count": count,
                        },
                    }
                    for r, cls, count in requests
                ]
            }
        },
    }


def run_pod_timed(sim: Any, pod: Any) -> int:
    """RunPodSandbox of ``pod`` through the NRI runtime, timed in Go (ns).

    The same as ``SimulatedNode.run_pod`` but through the harness's ``bench``
    command with one counted call: the duration is measured around the
    adaptation call alone. A plugin error fails the command (``NRIError``).
    """
    res = sim.runtime.bench("run_pod_sandbox", pod.nri, count=1, warmup=0)
    pod.running = True
    sim._sync_state()  # what run_pod does after the call (Synchronize state)
    if len(res.live_before) != 1 or res.live_after != res.live_before:
        raise AssertionError(f"NRI plugins live {res.live_before} -> {res.live_after}")
    return int(res.ns[0])


def delete_pod(sim: Any, pod: Any) -> None:
    """StopPodSandbox + RemovePodSandbox + NodeUnprepareResources, objects deleted."""
    sim.delete_pod(pod)


# --------------------------------------------------------------------------- checks (ip -j)


def _ip_json(ns: str, *args: str) -> Any:
    return json.loads(env.ip("-j", "-n", ns, *args) or "[]")


def verify_macvlan_pod(ns: str, n: int, *, metric0: int | None = None) -> None:
    """``net1..net<n>`` in ``ns``: macvlan, up, one IPv4 address of the range each,
    a default route via the gateway each (metrics distinct)."""
    links = {lk["ifname"]: lk for lk in _ip_json(ns, "-d", "addr", "show")}
    want = {f"net{i + 1}" for i in range(n)}
    assert set(links) - {"lo"} == want, f"pod links {sorted(links)} want {sorted(want)}"
    rng = ipaddress.ip_network(MACVLAN_RANGE)
    routes = _ip_json(ns, "route", "show", "default")
    for name in want:
        lk = links[name]
        assert lk.get("linkinfo", {}).get("info_kind") == "macvlan", f"{name}: not a macvlan"
        assert "UP" in lk["flags"], f"{name} is not up"
        v4 = [a for a in lk.get("addr_info", []) if a["family"] == "inet"]
        assert len(v4) == 1 and ipaddress.ip_address(v4[0]["local"]) in rng, f"{name}: {v4}"
        via = [r for r in routes if r.get("dev") == name]
        assert len(via) == 1 and via[0].get("gateway") == MACVLAN_GATEWAY, f"{name}: {via}"
    metrics = [r.get("metric", 0) for r in routes]
    assert len(set(metrics)) == len(metrics), f"default routes share a metric: {routes}"


# --------------------------------------------------------------------------- the floor


class FloorBatch(rawnl.Batch):
    """rawnl's batch plus what the macvlan floor needs."""

    def macvlan_add(
        self, name: str, *, link: int, netns_fd: int, index: int, up: bool = True
    ) -> int:
        data = rawnl.attr(
            rawnl.IFLA_INFO_DATA | rawnl.NLA_F_NESTED,
            rawnl.attr_u32(IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE),
        )
        info = rawnl.attr(rawnl.IFLA_INFO_KIND, b"macvlan") + data
        flags = rawnl.IFF_UP if up else 0
        body = rawnl._IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, flags)
        body += rawnl.attr_str(rawnl.IFLA_IFNAME, name)
        body += rawnl.attr_u32(rawnl.IFLA_LINK, link)
        body += rawnl.attr_u32(rawnl.IFLA_NET_NS_FD, netns_fd)
        body += rawnl.attr(rawnl.IFLA_LINKINFO | rawnl.NLA_F_NESTED, info)
        return self._add(rawnl.RTM_NEWLINK, rawnl.NLM_F_CREATE | rawnl.NLM_F_EXCL, body)

    def default_route_add(self, gateway: str, *, oif: int, metric: int) -> int:
        body = rawnl._RTMSG.pack(
            socket.AF_INET, 0, 0, 0, rawnl.RT_TABLE_MAIN, rawnl.RTPROT_BOOT,
            rawnl.RT_SCOPE_UNIVERSE, rawnl.RTN_UNICAST, 0,
        )  # fmt: skip
        body += rawnl.attr(rawnl.RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        body += rawnl.attr_u32(rawnl.RTA_OIF, oif)
        body += rawnl.attr_u32(rawnl.RTA_PRIORITY, metric)
        return self._add(rawnl.RTM_NEWROUTE, rawnl.NLM_F_CREATE | rawnl.NLM_F_EXCL, body)


def floor_macvlan(host: env.Netns, pod: env.Netns, parent_index: int, n: int) -> int:
    """``n`` macvlans of the parent created up in the pod, an address and a default
    route each: one sendmsg on the host socket, one on the pod's."""
    with contextlib.ExitStack() as st:
        hfd = os.open(host.path, os.O_RDONLY | os.O_CLOEXEC)
        st.callback(os.close, hfd)
        pfd = os.open(pod.path, os.O_RDONLY | os.O_CLOEXEC)
        st.callback(os.close, pfd)
        hb, pb = FloorBatch(), FloorBatch()
        for i in range(n):
            idx = FLOOR_INDEX0 + i
            hb.macvlan_add(f"net{i + 1}", link=parent_index, netns_fd=pfd, index=idx)
            pb.addr_add(idx, f"10.78.0.{10 + i}/24")
            pb.default_route_add(MACVLAN_GATEWAY, oif=idx, metric=MACVLAN_METRIC + i)
        return rawnl.apply_batches([(hfd, hb), (pfd, pb)])


# --------------------------------------------------------------------------- the bench


@dataclass
class Scenario:
    driver: str
    n: int
    ns: dict[str, list[int]] = field(default_factory=lambda: {i: [] for i in IMPLS})

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": self.driver, "n": self.n, "impls": {}}
        for impl, values in self.ns.items():
            if values:
                out["impls"][impl] = {**stats_ms(values), "rounds": len(values)}
        k, f = out["impls"].get("kndkit"), out["impls"].get("floor")
        if k and f:
            for q in ("p50", "p99"):
                kq, fq = k[f"{q}_ms"], f[f"{q}_ms"]
                out[f"ratio_{q}"] = kq / fq if fq > 0 else None
                out[f"overhead_{q}_ms"] = kq - fq
                out[f"meets_target_{q}"] = kq <= TARGET_FACTOR * fq + TARGET_PLUS_MS
        return out


class PodStartBench:
    """A simulated node with one example driver at a time, and the floor's namespaces."""

    def __init__(self, sim: Any, counts: Sequence[int], rng: random.Random) -> None:
        self.sim = sim
        self.counts = tuple(counts)
        self.rng = rng
        self.max_n = max(self.counts)
        self.driver: Any = None
        self.floor_host: env.Netns | None = None
        self._seq = 0
        self.last_parts: dict[str, int] = {}  # of the last kndkit round (ns)

    @classmethod
    @contextlib.contextmanager
    def start(cls, counts: Sequence[int], rng: random.Random) -> Iterator[PodStartBench]:
        from kndkit.testing.node import SimulatedNode

        env.remove_stale()
        with SimulatedNode.start(node_name=node_name("ps"), nics=0) as sim:
            bench = cls(sim, counts, rng)
            try:
                yield bench
            finally:
                bench.stop_driver()
                if bench.floor_host is not None:
                    bench.floor_host.delete()

    # ---- per driver set-up

    def stop_driver(self) -> None:
        if self.driver is not None:
            self.driver.terminate()
            self.driver = None

    def setup(self, driver: str) -> None:
        """Start ``driver`` (stopping the previous one: one NRI plugin at a time, so the
        round trip holds exactly one plugin) and the floor's host namespace."""
        self.stop_driver()
        if self.floor_host is not None:
            self.floor_host.delete()
        self.floor_host = env.Netns.create("psh")
        sim = self.sim
        existing = {lk["name"] for lk in sim.host_links()}
        if driver == "netdev":
            for i in range(self.max_n):
                if f"kb{i}a" not in existing:
                    sim.add_nic(f"kb{i}a")
            self.driver = sim.start_driver("netdev", params={"filter": "true"})
            name = self.driver.name
            sim.wait_devices(name, at_least=self.max_n)
            sim.api.ensure_namespace(NAMESPACE)
            for i in range(self.max_n):
                f = env.Iface(i)
                cfg = {
                    "interface": {"name": f.pod, "mtu": f.mtu, "addresses": [f.v4, f.v6]},
                    "routes": [{"destination": f.route, "gateway": f.gateway}],
                }
                sel = (
                    f'device.driver == "{name}" && device.attributes["{name}"].ifName == "{f.host}"'
                )
                sim.api.apply(
                    {
                        "apiVersion": "resource.k8s.io/v1",
                        "kind": "DeviceClass",
                        "metadata": {"name": f"{DEVICE_CLASS_PREFIX}{i}"},
                        "spec": {
                            "selectors": [{"cel": {"expression": sel}}],
                            "config": [{"opaque": {"driver": name, "parameters": cfg}}],
                        },
                    }
                )
        elif driver == "macvlan":
            if MACVLAN_PARENT not in existing:
                sim.add_nic(MACVLAN_PARENT)
            self.driver = sim.start_driver(
                "macvlan",
                params={
                    "parent": MACVLAN_PARENT,
                    "ranges": MACVLAN_RANGE,
                    "gateway": MACVLAN_GATEWAY,
                    "metric": MACVLAN_METRIC,
                    "slots": self.max_n,
                },
            )
            sim.wait_devices(self.driver.name, at_least=self.max_n)
            h = self.floor_host.name
            env.ip("-n", h, "link", "add", MACVLAN_PARENT, "type", "veth", "peer", "name", "kbn")
            env.ip("-n", h, "link", "set", MACVLAN_PARENT, "up")
            env.ip("-n", h, "link", "set", "kbn", "up")
        else:
            raise ValueError(f"unknown driver {driver!r}; choose from {DRIVERS}")

    # ---- rounds

    def _claim_for(self, driver: str, n: int, name: str) -> dict[str, Any]:
        if driver == "netdev":
            reqs = [(f"nic{i}", f"{DEVICE_CLASS_PREFIX}{i}", 1) for i in range(n)]
        else:
            reqs = [("nic", self.sim.device_class(self.driver.name), n)]
        created: dict[str, Any] = self.sim.api.create(claim_object(name, reqs))
        return created

    def kndkit_round(self, driver: str, n: int) -> int:
        sim = self.sim
        self._seq += 1
        name = f"ps{self._seq}"
        claim = self._claim_for(driver, n, name)
        pod = sim.new_pod(name, claims=[claim])
        try:
            sim.schedule(pod)
            sim.prepare(pod)
            m0 = plugin_times(self.driver)
            time.sleep(SETTLE_S)
            ns = run_pod_timed(sim, pod)
            m1 = plugin_times(self.driver)
            if m1[1] - m0[1] == 1 and m1[3] - m0[3] == 1:
                # the driver's own view of this one call: its handler, and in it
                # the native attach (kndkit.plan.attach on a worker thread)
                self.last_parts = {
                    "handler": round((m1[0] - m0[0]) * 1e9),
                    "attach": round((m1[2] - m0[2]) * 1e9),
                }
            else:
                self.last_parts = {}
            assert pod.netns is not None
            if driver == "netdev":
                ifaces = [env.Iface(i) for i in range(n)]
                env.verify_attached(env.Pair(env.Netns(""), env.Netns(pod.netns.name)), ifaces)
            else:
                verify_macvlan_pod(pod.netns.name, n)
        finally:
            delete_pod(sim, pod)
        return ns

    def floor_round(self, driver: str, n: int) -> int:
        assert self.floor_host is not None
        host = self.floor_host
        self._seq += 1
        pod = env.Netns.create(f"psp{self._seq}")
        try:
            env.ip("-n", pod.name, "link", "set", "lo", "up")
            if driver == "netdev":
                pair = env.Pair(host, pod)
                ifaces = env.make_physical(pair, n)
                time.sleep(SETTLE_S)
                t0 = time.perf_counter_ns()
                impls.attach_physical_raw(pair, ifaces)
                elapsed = time.perf_counter_ns() - t0
                env.verify_attached(pair, ifaces)
            else:
                parent = next(
                    lk["ifindex"] for lk in _ip_json(host.name, "link", "show", MACVLAN_PARENT)
                )
                time.sleep(SETTLE_S)
                t0 = time.perf_counter_ns()
                floor_macvlan(host, pod, parent, n)
                elapsed = time.perf_counter_ns() - t0
                verify_macvlan_pod(pod.name, n)
        finally:
            pod.delete()
            if driver == "netdev":
                env.ip("-n", host.name, "link", "del", "group", str(env.HOST_GROUP), check=False)
                env.flush_links(host)
        return elapsed

    def noop_round(self, driver: str, n: int) -> int:
        """RunPodSandbox of a pod without claims: the driver's fixed cost (NRI
        transport, dispatch, finding nothing to attach)."""
        sim = self.sim
        self._seq += 1
        pod = sim.new_pod(f"ps{self._seq}")
        try:
            time.sleep(SETTLE_S)
            return run_pod_timed(sim, pod)
        finally:
            delete_pod(sim, pod)

    def one_round(self, driver: str, scen: dict[int, Scenario], *, record: bool = True) -> None:
        """Every (n, implementation) pair of ``driver`` once, in a random order
        (after :meth:`setup` of ``driver``)."""
        pairs = [(n, impl) for n in self.counts for impl in IMPLS]
        self.rng.shuffle(pairs)
        for n, impl in pairs:
            fn = {
                "kndkit": self.kndkit_round,
                "floor": self.floor_round,
                "noop": self.noop_round,
            }[impl]
            ns = fn(driver, n)
            if record:
                scen[n].ns[impl].append(ns)
                if impl == "kndkit":
                    for part, v in self.last_parts.items():
                        scen[n].ns.setdefault(part, []).append(v)

    def run_driver(self, driver: str, rounds: int, warmup: int) -> list[Scenario]:
        """Warm-up rounds, then ``rounds`` interleaved rounds; one Scenario per n
        (after :meth:`setup` of ``driver``)."""
        scen = {n: Scenario(driver, n) for n in self.counts}
        for r in range(warmup + rounds):
            self.one_round(driver, scen, record=r >= warmup)
        return [scen[n] for n in self.counts]

    def leak_check(self, before: dict[str, Any]) -> None:
        after = self.sim.snapshot()
        if after != before:
            raise AssertionError(
                "the simulated host changed:\n"
                + json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]})
            )


# --------------------------------------------------------------------------- churn


CHURN_PHASES = ("create", "schedule", "prepare", "run", "stop", "remove", "unprepare", "delete")
DRIVER_PHASES = ("prepare", "run", "stop", "remove", "unprepare")  # what the driver serves


def metric_values(text: str, name: str) -> list[float]:
    """Values of the samples of metric ``name`` in Prometheus text."""
    out = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            out.append(float(line.rsplit(" ", 1)[1]))
    return out


def ipam_lease_count(sim: Any) -> int | None:
    """Leases in the driver's IPAM database (None: the driver has none)."""
    import sqlite3

    files = sorted(sim.workdir.glob("state-*/ipam.sqlite"))
    if not files:
        return None
    total = 0
    for f in files:
        con = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
        try:
            total += int(con.execute("SELECT count(*) FROM ipam_leases").fetchone()[0])
        finally:
            con.close()
    return total


def leftovers(bench: PodStartBench, before: dict[str, Any]) -> dict[str, Any]:
    """What a run left behind: host changes, pod namespaces, claims and pods in the
    API, IPAM leases, the driver's prepared-claims and attached-pods gauges. Empty
    when nothing leaked."""
    sim = bench.sim
    out: dict[str, Any] = {}
    after = sim.snapshot()
    changed = {k: {"before": before[k], "after": after[k]} for k in before if before[k] != after[k]}
    if changed:
        out["host"] = changed
    netns = [n for n in os.listdir("/run/netns") if n.startswith(f"{sim.node_name}-pod-")]
    if netns:
        out["pod_netns"] = netns
    for kind, path in (
        ("claims", f"/apis/resource.k8s.io/v1/namespaces/{NAMESPACE}/resourceclaims"),
        ("pods", f"/api/v1/namespaces/{NAMESPACE}/pods"),
    ):
        items = sim.api.request("GET", path)["items"]
        if items:
            out[kind] = [i["metadata"]["name"] for i in items]
    leases = ipam_lease_count(sim)
    if leases:
        out["ipam_leases"] = leases
    if bench.driver is not None and bench.driver.metrics_url:
        text = bench.driver.metrics()
        for m in ("kndkit_prepared_claims", "kndkit_attached_pods"):
            vals = metric_values(text, m)
            if any(vals):
                out[m] = vals
    return out


@dataclass
class ChurnResult:
    driver: str
    pods: int
    wall_s: float = 0.0
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in CHURN_PHASES})
    rss_kib: list[int] = field(default_factory=list)
    status_before: dict[str, int] = field(default_factory=dict)
    status_after: dict[str, int] = field(default_factory=dict)
    leaks: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        driver_s = sum(sum(self.phases[p]) for p in DRIVER_PHASES)
        return {
            "driver": self.driver,
            "pods": self.pods,
            "wall_s": self.wall_s,
            "pods_per_s": self.pods / self.wall_s if self.wall_s else None,
            "driver_s": driver_s,
            "driver_pods_per_s": self.pods / driver_s if driver_s else None,
            "phases_ms": {
                p: {
                    "p50": percentile(v, 0.5) * 1e3,
                    "p99": percentile(v, 0.99) * 1e3,
                    "mean": statistics.fmean(v) * 1e3,
                }
                for p, v in self.phases.items()
                if v
            },
            "rss_before_kib": self.status_before.get("VmRSS"),
            "rss_after_kib": self.status_after.get("VmRSS"),
            "rss_max_sampled_kib": max(self.rss_kib) if self.rss_kib else None,
            "hwm_before_kib": self.status_before.get("VmHWM"),
            "hwm_after_kib": self.status_after.get("VmHWM"),
            "leaks": self.leaks,
        }


def churn(bench: PodStartBench, driver: str, pods: int, *, sample_every: int = 10) -> ChurnResult:
    """``pods`` pods one after the other, each started (Pod + claim created,
    allocated, prepared, RunPodSandbox) and stopped (StopPodSandbox,
    RemovePodSandbox, unprepared, objects deleted), on ``driver`` (after
    :meth:`PodStartBench.setup`). Each pod is checked to hold its interface.
    Phases are timed from Python around each simulated-node call; the driver's
    VmRSS is sampled every ``sample_every`` pods; leftovers are collected at the
    end (:func:`leftovers`)."""
    sim = bench.sim
    assert bench.driver is not None
    pid = bench.driver.pid
    res = ChurnResult(driver, pods)
    before = sim.snapshot()
    res.status_before = proc_status(pid)
    want = "net0" if driver == "netdev" else "net1"
    ph = res.phases
    t_start = time.perf_counter()
    for i in range(pods):
        bench._seq += 1
        name = f"ch{bench._seq}"
        t0 = time.perf_counter()
        claim = bench._claim_for(driver, 1, name)
        pod = sim.new_pod(name, claims=[claim])
        t1 = time.perf_counter()
        sim.schedule(pod)
        t2 = time.perf_counter()
        sim.prepare(pod)
        t3 = time.perf_counter()
        sim.run_pod(pod)
        t4 = time.perf_counter()
        names = {lk["name"] for lk in sim.pod_links(pod)}
        if want not in names:
            raise AssertionError(f"pod {pod.ref}: links {sorted(names)} lack {want}")
        t5 = time.perf_counter()
        sim.stop_pod(pod)
        t6 = time.perf_counter()
        sim.remove_pod(pod)
        t7 = time.perf_counter()
        sim.unprepare(pod)
        t8 = time.perf_counter()
        sim._delete_pod_objects(pod)  # what delete_pod does after unprepare
        t9 = time.perf_counter()
        for p, d in zip(
            CHURN_PHASES,
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5, t7 - t6, t8 - t7, t9 - t8),
            strict=True,
        ):
            ph[p].append(d)
        if i % sample_every == 0 or i == pods - 1:
            res.rss_kib.append(proc_status(pid)["VmRSS"])
    res.wall_s = time.perf_counter() - t_start
    res.status_after = proc_status(pid)
    res.leaks = leftovers(bench, before)
    return res


def churn_table(summaries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [
        "| driver | pods | pods/s (whole cycle) | pods/s (driver calls only) | prepare p50 "
        "| RunPodSandbox p50 | StopPodSandbox p50 | unprepare p50 | allocate p50 "
        "| RSS before -> after (MiB) | VmHWM (MiB) | leaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def mib(v: Any) -> str:
        return "-" if v is None else f"{v / 1024:.1f}"

    for s in summaries:
        p = s["phases_ms"]
        rows.append(
            f"| {s['driver']} | {s['pods']} | {s['pods_per_s']:.2f} "
            f"| {s['driver_pods_per_s']:.2f} | {p['prepare']['p50']:.2f} ms "
            f"| {p['run']['p50']:.2f} ms | {p['stop']['p50']:.2f} ms "
            f"| {p['unprepare']['p50']:.2f} ms | {p['schedule']['p50']:.2f} ms "
            f"| {mib(s['rss_before_kib'])} -> {mib(s['rss_after_kib'])} "
            f"| {mib(s['hwm_after_kib'])} | {'none' if not s['leaks'] else s['leaks']} |"
        )
    return rows


def run(
    drivers: Sequence[str] = DRIVERS,
    counts: Sequence[int] = COUNTS,
    *,
    rounds: int = 20,
    warmup: int = 2,
    seed: int | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Everything above; one summary dict per (driver, n)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    with PodStartBench.start(counts, rng) as bench:
        for driver in drivers:
            if progress:
                progress(f"pod_start: {driver}, n={list(counts)}, {rounds} rounds")
            bench.setup(driver)
            before = bench.sim.snapshot()
            scen = bench.run_driver(driver, rounds, warmup)
            bench.leak_check(before)
            logs = bench.driver.logs() if bench.driver is not None else ""
            if "Traceback" in logs:
                raise AssertionError(f"{driver} driver logged a traceback:\n{logs[-4000:]}")
            out.extend(s.summary() for s in scen)
    return out


# --------------------------------------------------------------------------- report


def table(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: per driver and n, kndkit RunPodSandbox round trip vs the floor (ms)."""
    rows = [
        "| driver | devices | RunPodSandbox p50 | p99 | floor p50 | p99 | ratio p50 | p99 "
        "| overhead p50 | p99 | <= 1.05x floor + 1 ms (p50/p99) | no-op pod p50 "
        "| handler p50 | native attach p50 | rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    def yes(v: Any) -> str:
        return "-" if v is None else ("yes" if v else "NO")

    for s in summaries:
        k, fl = s["impls"].get("kndkit", {}), s["impls"].get("floor", {})
        noop = s["impls"].get("noop", {})
        handler, attach = s["impls"].get("handler", {}), s["impls"].get("attach", {})
        rows.append(
            f"| {s['driver']} | {s['n']} | {f(k.get('p50_ms'))} | {f(k.get('p99_ms'))} "
            f"| {f(fl.get('p50_ms'))} | {f(fl.get('p99_ms'))} "
            f"| {f(s.get('ratio_p50'), '.3f')}x | {f(s.get('ratio_p99'), '.3f')}x "
            f"| {f(s.get('overhead_p50_ms'))} | {f(s.get('overhead_p99_ms'))} "
            f"| {yes(s.get('meets_target_p50'))}/{yes(s.get('meets_target_p99'))} "
            f"| {f(noop.get('p50_ms'))} | {f(handler.get('p50_ms'))} "
            f"| {f(attach.get('p50_ms'))} | {k.get('rounds', 0)} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="counted rounds per (driver, n, impl)")
    ap.add_argument("--warmup", type=int, default=2, help="uncounted rounds first")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)))
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    drivers = [d for d in args.drivers.split(",") if d]
    if bad := set(drivers) - set(DRIVERS):
        ap.error(f"unknown drivers {sorted(bad)}; choose from {DRIVERS}")
    counts = [int(c) for c in args.counts.split(",") if c]
    if not counts or min(counts) < 1 or max(counts) > 64 or args.rounds < 1:
        ap.error("need counts within 1..64 and --rounds >= 1")
    summaries = run(
        drivers,
        counts,
        rounds=args.rounds,
        warmup=args.warmup,
        seed=args.seed,
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(
        f"RunPodSandbox round trip (Go-timed, nri-harness) vs the raw netlink floor, ms; "
        f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs"
    )
    print("\n".join(table(summaries)))
    if args.json:
        args.json.write_text(json.dumps({"pod_start": summaries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
