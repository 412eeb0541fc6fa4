"""``kndkit demo``: a network driver end to end on a simulated node.

Builds a :class:`kndkit.testing.SimulatedNode` (real kube-apiserver, the
scheduler's DRA allocator, the kubelet's DRA client and containerd's NRI runtime
side; a host network namespace with two veth NICs carrying addresses and a
route), starts the bundled ``netdev`` driver on it (``kndkit run netdev``, with
a filter that publishes veth NICs), and walks one pod through its life:

publish -> allocate -> prepare -> RunPodSandbox -> the NIC inside the pod ->
CreateContainer -> StopPodSandbox/RemovePodSandbox -> the NIC back on the host,
exactly as before -> unprepare.

Each step is printed with its duration, then a summary table. The exit status
is 0 only when every step passed and the host is exactly as before. Needs root
and the Go toolchain on first use (the peers are built then, ~4-12 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from kndkit import netlink
from kndkit._native import NetNs

__all__ = ["Demo", "add_parser", "run_demo"]

NICS = (
    ("eth1", "192.168.77.2/24", "10.77.0.0/16 via 192.168.77.1"),
    ("eth2", "192.168.78.2/24", None),
)


@dataclass
class Step:
    name: str
    ok: bool = False
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Demo:
    """The demo's state and report; :meth:`run` does the work."""

    out: TextIO
    as_json: bool = False
    keep: bool = False
    steps: list[Step] = field(default_factory=list)
    shown: dict[str, Any] = field(default_factory=dict)
    _closed: bool = False

    def say(self, text: str) -> None:
        if self.as_json or self._closed:
            return
        try:
            print(text, file=self.out, flush=True)
        except BrokenPipeError:  # `kndkit demo | head`: keep going, clean up quietly
            self._closed = True

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        st = Step(name)
        self.steps.append(st)
        self.say(f"==> {name}")
        t0 = time.monotonic()
        try:
            yield st
            st.ok = True
        except Exception as e:
            st.detail = st.detail or f"{type(e).__name__}: {e}"
            raise
        finally:
            st.seconds = time.monotonic() - t0
            mark = "ok" if st.ok else "FAILED"
            self.say(f"    {mark} in {st.seconds:.2f} s{': ' + st.detail if st.detail else ''}")

    def summary(self) -> str:
        w = max(len(s.name) for s in self.steps) if self.steps else 4
        lines = [f"{'step':<{w}}  {'result':<6}  {'seconds':>8}  detail", "-" * (w + 30)]
        for s in self.steps:
            lines.append(
                f"{s.name:<{w}}  {'ok' if s.ok else 'FAILED':<6}  {s.seconds:>8.2f}  {s.detail}"
            )
        total = sum(s.seconds for s in self.steps)
        lines.append("-" * (w + 30))
        lines.append(f"{'total':<{w}}  {'':<6}  {total:>8.2f}")
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def report(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "steps": [
                {"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 4), "detail": s.detail}
                for s in self.steps
            ],
            **self.shown,
        }

    # ---- the walk

    def run(self) -> int:
        from kndkit.testing import peers  # noqa: PLC0415
        from kndkit.testing.node import ClaimSpec, SimulatedNode  # noqa: PLC0415

        node: SimulatedNode | None = None
        try:
            with self.step("peers (build on first use)") as st:
                bins = peers.ensure(progress=lambda line: self.say(f"    {line}"))
                st.detail = str(bins)
            with self.step("simulated node") as st:
                node = SimulatedNode.start(node_name=f"demo{os.getpid() % 100000}", nics=0)
                for name, addr, route in NICS:
                    node.add_nic(name, addresses=[addr], routes=[route] if route else [])
                st.detail = (
                    f"{node.node_name}, host netns {node.host_netns}, apiserver {node.cluster.url}"
                )
            with self.step("start the netdev driver") as st:
                drv = node.start_driver("netdev", params={"filter": "true"})
                st.detail = f"{drv.name} pid {drv.pid} (registered, NRI plugin synchronized)"
            before = node.snapshot()
            self.shown["host_before"] = before
            with self.step("publish ResourceSlices") as st:
                devices = node.wait_devices(drv.name, at_least=len(NICS))
                st.detail = f"devices {', '.join(devices)}"
            with self.step("allocate (scheduler's allocator)") as st:
                pod = node.new_pod(
                    "demo-pod",
                    claims=[
                        ClaimSpec(
                            driver=drv.name,
                            selector=f'device.attributes["{drv.name}"].ifName == "eth1"',
                            config={"interface": {"name": "net1"}},
                        )
                    ],
                )
                node.schedule(pod)
                results = pod.claims[0]["status"]["allocation"]["devices"]["results"]
                st.detail = ", ".join(f"{r['pool']}/{r['device']}" for r in results)
            with self.step("prepare (NodePrepareResources)") as st:
                resp = node.prepare(pod)[drv.name]
                st.detail = f"{len(resp.get('claims', {}))} claim(s) prepared"
            with self.step("pod start (RunPodSandbox)") as st:
                node.run_pod(pod)
                st.detail = f"netns {pod.netns}"
            with self.step("inside the pod") as st:
                carrier_s = _wait_carrier(str(pod.netns), "net1")
                inside = self.show_pod(node, pod)
                names = [lk["name"] for lk in inside["links"]]
                if "net1" not in names:
                    raise RuntimeError(f"no net1 in the pod (links: {names})")
                net1 = next(lk for lk in inside["links"] if lk["name"] == "net1")
                if "192.168.77.2/24" not in net1["addresses"]:
                    raise RuntimeError(f"net1 lacks 192.168.77.2/24: {net1['addresses']}")
                if not any(r.startswith("10.77.0.0/16") for r in inside["routes"]):
                    raise RuntimeError(f"the route 10.77.0.0/16 is missing: {inside['routes']}")
                host_names = [lk["name"] for lk in node.host_links()]
                if "eth1" in host_names:
                    raise RuntimeError("eth1 is still on the host")
                st.detail = (
                    f"net1 {net1['mac']} mtu {net1['mtu']} {' '.join(net1['addresses'])}"
                    + (f", carrier after {carrier_s * 1000:.0f} ms" if carrier_s else "")
                )
            with self.step("CreateContainer") as st:
                adj = node.create_container(pod)
                linux: dict[str, Any] = (adj.get("adjust") or {}).get("linux") or {}
                paths = [str(d.get("path", "?")) for d in linux.get("devices") or []]
                st.detail = (
                    f"{len(paths)} device(s) injected: {', '.join(paths)}"
                    if paths
                    else "nothing to inject (the netdev driver has no RDMA character devices)"
                )
            with self.step("pod stop (StopPodSandbox, RemovePodSandbox)"):
                node.stop_pod(pod)
                node.remove_pod(pod)
            with self.step("NIC restored on the host") as st:
                after = node.snapshot()
                self.shown["host_after"] = after
                diff = {
                    k: {"before": before[k], "after": after[k]}
                    for k in before
                    if before[k] != after[k]
                }
                if diff:
                    st.detail = f"differs: {json.dumps(diff)[:1500]}"
                    raise RuntimeError(st.detail)
                self.say(self.render_host(after))
                st.detail = "links, addresses, routes, rules, neighbours identical"
            with self.step("unprepare (NodeUnprepareResources)") as st:
                node.unprepare(pod)
                st.detail = "claim released"
            if self.keep:
                self.say(
                    f"--keep: node {node.node_name} left running (KUBECONFIG="
                    f"{node.cluster.admin.kubeconfig_admin}, driver log {drv.log_path}); "
                    "Ctrl-C stops it"
                )
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
        except Exception as e:
            if not self.steps or self.steps[-1].ok:
                self.steps.append(Step("(demo)", False, 0.0, f"{type(e).__name__}: {e}"))
            self.say(traceback.format_exc().rstrip())
            if node is not None:
                for d in node.drivers:
                    self.say(f"---- driver {d.spec} log (tail)\n{d.logs(4000)}")
        finally:
            if node is not None:
                node.stop()
        if self.as_json:
            with contextlib.suppress(BrokenPipeError):
                json.dump(self.report(), self.out, indent=2)
                self.out.write("\n")
        else:
            self.say("\n" + self.summary())
            self.say("demo: OK" if self.ok else "demo: FAILED")
        return 0 if self.ok else 1

    def show_pod(self, node: Any, pod: Any) -> dict[str, Any]:
        """What the pod sees, from inside its netns (``ip -br addr``, ``ip route``)."""
        ns = pod.netns.name
        br_addr = _ip("-n", ns, "-br", "addr")
        br_link = _ip("-n", ns, "-br", "link")
        routes = [r for r in _ip("-n", ns, "route").splitlines() if r.strip()]
        links = []
        for lk in json.loads(_ip("-n", ns, "-j", "addr")):
            links.append(
                {
                    "name": lk["ifname"],
                    "mac": lk.get("address"),
                    "mtu": lk.get("mtu"),
                    "state": lk.get("operstate"),
                    "addresses": [
                        f"{a['local']}/{a['prefixlen']}"
                        for a in lk.get("addr_info", [])
                        if a.get("scope") != "link"
                    ],
                }
            )
        self.say(f"    $ ip -n {ns} -br link\n" + _indent(br_link))
        self.say(f"    $ ip -n {ns} -br addr\n" + _indent(br_addr))
        self.say(f"    $ ip -n {ns} route\n" + _indent("\n".join(routes)))
        view = {"links": links, "routes": routes}
        self.shown["pod"] = view
        return view

    @staticmethod
    def render_host(snap: dict[str, Any]) -> str:
        lines = ["    host after the pod stopped:"]
        for lk in snap["links"]:
            addrs = [a.split(" ", 1)[1] for a in snap["addresses"] if a.split(" ")[0] == lk["name"]]
            lines.append(
                f"      {lk['name']:<8} {'UP' if lk['up'] else 'DOWN':<5} {lk['mac'] or '':<18} "
                f"mtu {lk['mtu']:<5} {' '.join(addrs)}"
            )
        for r in snap["routes"]:
            d = json.loads(r)
            via = f" via {d['gateway']}" if d.get("gateway") else ""
            lines.append(f"      route {d['dst']}{via} dev {d['oif']} table {d['table']}")
        return "\n".join(lines)


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


#: IF_OPER_UP (RFC 2863 operstate as rtnetlink reports it).
_IF_OPER_UP = 6


def _wait_carrier(netns: str, ifname: str, timeout_s: float = 3.0) -> float | None:
    """Seconds until ``ifname`` in ``netns`` reports carrier (the kernel's link
    watch settles a moved link's operstate a moment after it comes up); None if
    it did not within ``timeout_s`` (the view is shown anyway)."""
    t0 = time.monotonic()
    with NetNs.open(netns) as ns:
        while time.monotonic() - t0 < timeout_s:
            for lk in netlink.dump_links(ns):
                if lk["name"] == ifname and lk["operstate"] == _IF_OPER_UP:
                    return time.monotonic() - t0
            time.sleep(0.02)
    return None


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def run_demo(*, keep: bool = False, as_json: bool = False, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit status (0: every step passed, host restored)."""
    return Demo(out or sys.stdout, as_json=as_json, keep=keep).run()


def _cmd_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("kndkit demo needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    return run_demo(keep=args.keep, as_json=args.json)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``kndkit demo``."""
    p = sub.add_parser(
        "demo",
        help="a network driver end to end on a simulated node (needs root)",
        description=(__doc__ or "").splitlines()[0],
    )
    p.add_argument("--keep", action="store_true", help="leave the node running (Ctrl-C stops)")
    p.add_argument("--json", action="store_true", help="print a JSON report instead")
    p.set_defaults(func=_cmd_demo)
