"""RDMA plans against the real kernel of a node without RDMA.

Veth pairs in a scratch "host" namespace stand in for RDMA NICs. A plan whose
device has an exclusive RDMA link must fail as a whole with
:class:`~kndkit.errors.NotAvailable`, before anything is changed: links,
addresses and routes on the host side and the pod namespace are compared
before and after. In shared mode the RDMA side costs no netlink step (only the
character devices, injected later), so the same plan attaches and detaches
exactly. When the host does have RDMA netlink the checks that need its absence
are skipped (``scripts/device-rdma-check.sh`` covers that host).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from kndkit import _native
from kndkit import netlink as nl
from kndkit._native import NetNs
from kndkit.errors import NotAvailable
from kndkit.plan import CharDevice, InterfacePlan, RdmaPlan, attach, attach_steps, detach

pytestmark = pytest.mark.netns

_counter = itertools.count()
UVERBS = CharDevice("/dev/infiniband/uverbs0", "c", 231, 192, 0o666)


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Env:
    """A host namespace with two veth "NICs" (addresses, a route) and a pod namespace."""

    def __init__(self) -> None:
        u = f"{os.getpid() % 100000}{next(_counter)}"
        self.host_name, self.pod_name = f"krd-h{u}", f"krd-p{u}"
        _ip("netns", "add", self.host_name)
        _ip("netns", "add", self.pod_name)
        self.host = NetNs.open(f"/run/netns/{self.host_name}")
        self.pod = NetNs.open(f"/run/netns/{self.pod_name}")
        for i in range(2):
            h = ("-n", self.host_name)
            _ip(*h, "link", "add", f"roce{i}", "type", "veth", "peer", "name", f"sw{i}")
            _ip(*h, "link", "set", f"sw{i}", "up")
            _ip(*h, "link", "set", f"roce{i}", "mtu", "4200", "up")
            _ip(*h, "addr", "add", f"10.{40 + i}.0.5/24", "dev", f"roce{i}")
            _ip(*h, "route", "add", f"10.{50 + i}.0.0/16", "via", f"10.{40 + i}.0.1")

    def plan(self, i: int, *, exclusive: bool) -> InterfacePlan:
        rdma = RdmaPlan(f"mlx5_{i}", exclusive=exclusive, char_devices=(UVERBS,))
        plan = InterfacePlan.move(f"dev{i}", f"roce{i}", name=f"net{i}", rdma=rdma, mtu=4000)
        return plan.capture_host(self.host)

    def snapshot(self) -> dict[str, Any]:
        """Everything an attach could change, on both sides. IPv6 link-local and
        multicast entries are left out: the kernel makes them itself, some time
        after a link comes up."""

        def kernel_made(prefix: str | None) -> bool:
            return bool(prefix) and str(prefix).lower().startswith(("fe80:", "ff"))

        def links(ns: NetNs) -> list[tuple[Any, ...]]:
            return sorted(
                (x["ifindex"], x["name"], x["mtu"], x["mac"], x["up"]) for x in nl.dump_links(ns)
            )

        def addrs(ns: NetNs) -> list[tuple[Any, ...]]:
            return sorted(
                (a["ifindex"], a["cidr"])
                for a in nl.dump_addresses(ns)
                if not kernel_made(a["cidr"])
            )

        return {
            "host_links": links(self.host),
            "host_addrs": addrs(self.host),
            "host_routes": sorted(
                (r["dst"], r["oif"], r["gateway"], r["table"])
                for r in nl.dump_routes(self.host)
                if not kernel_made(r["dst"])
            ),
            "pod_links": links(self.pod),
            "pod_addrs": addrs(self.pod),
        }

    def close(self) -> None:
        self.host.close()
        self.pod.close()
        for name in (self.pod_name, self.host_name):
            _ip("netns", "del", name, check=False)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def no_rdma() -> None:
    if _native.rdma_available():
        pytest.skip("this node answers RDMA netlink: see scripts/device-rdma-check.sh")


def _native_knows_rdma_move() -> bool:
    try:
        _native.encode([{"op": "rdma_move", "device": "mlx5_0", "netns": NetNs.current()}])
    except Exception as e:
        return "unknown" not in str(e)
    return True


def test_exclusive_rdma_plan_fails_cleanly(env: Env, no_rdma: None) -> None:
    before = env.snapshot()
    plans = [env.plan(0, exclusive=False), env.plan(1, exclusive=True)]
    plans[0] = plans[0].with_(addresses=("10.60.0.2/24",))
    with pytest.raises(NotAvailable) as e:
        attach(plans, env.pod, host_ns=env.host)
    msg = str(e.value)
    if _native_knows_rdma_move():
        assert "RDMA not available on this node" in msg, msg
        assert "mlx5_1" in msg, msg
    else:  # the native op has not landed in this build: refused before sending, too
        assert "rdma_move" in msg and "dev1" in msg, msg
    assert env.snapshot() == before
    # and again: a failed attach leaves nothing that makes the next one differ
    with pytest.raises(NotAvailable):
        attach(plans, env.pod, host_ns=env.host)
    assert env.snapshot() == before


def test_exclusive_plan_steps_move_the_rdma_link_after_the_netdev(env: Env) -> None:
    if not _native_knows_rdma_move():
        pytest.skip("kndkit._native has no rdma_move op yet")
    steps = attach_steps([env.plan(0, exclusive=True)], env.pod, host_ns=env.host)
    ops = [s["op"] for s in steps]
    assert ops.count("rdma_move") == 1
    move = steps[ops.index("rdma_move")]
    assert move["device"] == "mlx5_0" and move["netns"] == env.pod
    assert ops.index("rdma_move") > ops.index("link_set")  # the netdev moves first


def test_shared_rdma_plan_attaches_and_detaches_exactly(env: Env) -> None:
    before = env.snapshot()
    plans = [env.plan(0, exclusive=False).with_(addresses=("10.40.0.5/24",))]
    assert all(s["op"] != "rdma_move" for s in attach_steps(plans, env.pod, host_ns=env.host))
    result = attach(plans, env.pod, host_ns=env.host)
    assert set(result.pod_links) == {"dev0"}
    (lk,) = [x for x in nl.dump_links(env.pod) if x["name"] == "net0"]
    assert lk["mtu"] == 4000
    pod_v4 = {
        a["cidr"]
        for a in nl.dump_addresses(env.pod)
        if a["ifindex"] == lk["ifindex"] and a["family"] == "inet"
    }
    assert pod_v4 == {"10.40.0.5/24"}
    res = detach(plans, env.pod, host_ns=env.host)
    assert res.restored == ["dev0"] and not res.missing and not res.errors
    assert env.snapshot() == before


def test_detach_of_exclusive_plan_without_rdma_restores_the_netdev(env: Env, no_rdma: None) -> None:
    """The netdev is in the pod (attached in shared mode), the plan now says
    exclusive (e.g. a restart after the mode changed): with no RDMA on the node
    the link still comes back exactly and nothing is raised."""
    before = env.snapshot()
    shared, exclusive = env.plan(0, exclusive=False), env.plan(0, exclusive=True)
    attach([shared], env.pod, host_ns=env.host)
    res = detach([exclusive], env.pod, host_ns=env.host)
    assert res.restored == ["dev0"] and not res.errors
    assert env.snapshot() == before
    again = detach([exclusive], env.pod, host_ns=env.host)
    assert not again.errors and env.snapshot() == before


# --------------------------------------------------------------------------- rdma driver end to end

from kndkit.testing.pytest_plugin import kndkit_cluster, sim_node  # noqa: E402, F401


def test_rdma_driver_end_to_end_ib_only(sim_node: Any, tmp_path: Any) -> None:  # noqa: F811
    """``kndkit run rdma`` on a simulated node (real apiserver, allocator, kubelet
    and NRI harnesses) whose sysfs is a fake tree with two InfiniBand-only
    adapters, both claimed by one pod: published, allocated, prepared, the pod
    started, the character devices of both injected at CreateContainer with the
    claim's mode and owner (``rdma_cm`` once: the runtime refuses one plugin
    setting a device path twice), the pod deleted; the host is as before."""
    from kndkit.testing.node import ClaimSpec
    from kndkit.testing.sysfs import build_synthetic

    dev = tmp_path / "dev"
    sysfs = build_synthetic(
        tmp_path / "sys", root_complexes=1, numa_nodes=1, pfs=0, standalone_rdma=2,
        gpus_per_root_complex=0, virtual_links=False, loopback=False, dev_root=dev,
    )  # fmt: skip
    for n in (0, 1):
        for kind, minor in ((f"umad{n}", n), (f"issm{n}", 64 + n)):
            (sysfs / "class" / "infiniband_mad" / kind / "dev").write_text(f"231:{minor}\n")
    (sysfs / "class" / "misc" / "rdma_cm").mkdir(parents=True)
    (sysfs / "class" / "misc" / "rdma_cm" / "dev").write_text("10:58\n")

    before = sim_node.snapshot()
    drv = sim_node.start_driver(
        "rdma", extra_args=["--sysfs-root", str(sysfs), "--dev-root", str(dev)]
    )
    assert drv.name == "rdma.kndkit.dev"
    names = sim_node.wait_devices(drv.name, at_least=2)
    assert names == ["pci-0000-01-00-0", "pci-0000-02-00-0"], names  # no veth NIC
    config = {"rdma": {"uid": 1000, "gid": 2000, "fileMode": 0o660}}
    pod = sim_node.new_pod("ib1", claims=[ClaimSpec(driver=drv.name, count=2, config=config)])
    sim_node.start_pod(pod)
    resp = sim_node.create_container(pod)
    devices = resp["adjust"]["linux"]["devices"]
    # the runtime's JSON leaves zero values out (minor 0)
    got = [
        (d["path"], d["type"], int(d.get("major", 0)), int(d.get("minor", 0)),
         d["file_mode"]["value"], d["uid"]["value"], d["gid"]["value"])
        for d in devices
    ]  # fmt: skip
    assert sorted(got) == sorted(
        [
            ("/dev/infiniband/uverbs0", "c", 231, 192, 0o660, 1000, 2000),
            ("/dev/infiniband/umad0", "c", 231, 0, 0o660, 1000, 2000),
            ("/dev/infiniband/issm0", "c", 231, 64, 0o660, 1000, 2000),
            ("/dev/infiniband/rdma_cm", "c", 10, 58, 0o660, 1000, 2000),
            ("/dev/infiniband/uverbs1", "c", 231, 193, 0o660, 1000, 2000),
            ("/dev/infiniband/umad1", "c", 231, 1, 0o660, 1000, 2000),
            ("/dev/infiniband/issm1", "c", 231, 65, 0o660, 1000, 2000),
        ]
    )
    sim_node.delete_pod(pod)
    assert sim_node.snapshot() == before
    assert "Traceback" not in drv.logs()


def test_rdma_driver_end_to_end_roce_shared(sim_node: Any, tmp_path: Any) -> None:  # noqa: F811
    """A RoCE-like NIC: the fake sysfs gives the simulated node's ``eth1`` an RDMA
    device. Shared mode (this kernel has no RDMA netns mode): the netdev moves
    into the pod under the claim's name, the character devices are injected,
    and after the pod is deleted ``eth1`` is back exactly as it was."""
    from kndkit.testing.node import ClaimSpec
    from kndkit.testing.sysfs import SysfsBuilder

    if _native.rdma_available() and _native.rdma_get_netns_mode() != "shared":
        pytest.skip("this node's RDMA netns mode is exclusive")
    b = SysfsBuilder(tmp_path / "sys", tmp_path / "dev")
    pci = b.pci_function("0000:17:00.0", "devices/pci0000:00", vendor="0x15b3", device="0x101d")
    b.rdma_device("mlx5_0", pci, index=0, netdevs=["eth1"])

    before = sim_node.snapshot()
    drv = sim_node.start_driver(
        "rdma", extra_args=["--sysfs-root", str(b.root), "--dev-root", str(tmp_path / "dev")]
    )
    assert sim_node.wait_devices(drv.name) == ["eth1"]  # eth2 has no RDMA side
    config = {"interface": {"name": "roce0", "mtu": 1400}, "rdma": {"fileMode": 0o600}}
    pod = sim_node.new_pod("roce1", claims=[ClaimSpec(driver=drv.name, config=config)])
    sim_node.start_pod(pod)
    (lk,) = [x for x in sim_node.pod_links(pod) if x["name"] == "roce0"]
    assert lk["mtu"] == 1400
    assert "eth1" not in {x["name"] for x in sim_node.host_links()}
    resp = sim_node.create_container(pod)
    (d,) = resp["adjust"]["linux"]["devices"]  # uverbs0 only: no umad numbers in this tree
    assert (d["path"], int(d["major"]), int(d["minor"]), d["file_mode"]["value"]) == (
        "/dev/infiniband/uverbs0", 231, 192, 0o600,
    )  # fmt: skip
    sim_node.delete_pod(pod)
    assert sim_node.snapshot() == before
