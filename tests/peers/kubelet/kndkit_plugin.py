"""kndkit's DRA plugin as a process, for the end-to-end tests and benchmarks.

Runs what a driver's node agent runs: :class:`kndkit.dra.KubeletPlugin` serving a
:class:`kndkit.dra.service.ClaimService` (on a :class:`kndkit.state.StateStore`
and a :class:`kndkit.k8s.claims.ClaimReader`), with a
:class:`kndkit.k8s.SlicePublisher` publishing test devices. The preparer is a
small test one: one device per allocation result of this driver, its opaque
configuration validated by a pydantic model (:class:`NetConfig`), a plan per
device.

Driven over stdin/stdout with newline JSON, like the Go peers::

    > {"id": 1, "cmd": "publish", "devices": 1024}
    < {"id": 1, "ok": true, "stats": {...}, "wall_s": 0.41}

Commands: ``publish`` (``devices``: how many; publishes now, returns the writes),
``update`` (``devices``; through the rate-limited background path), ``wait_idle``,
``stats`` (cumulative publisher writes), ``timings`` (per-claim prepare timings
since the last ``timings``, then cleared), ``records`` (the state store),
``replay`` (``ClaimService.replay`` again), ``stop``. ``--durable-marks`` turns
on ``ClaimService(durable_marks=True)``. Events (``"event"``):
``ready`` (``endpoint``, ``registration_socket``, ``replay``: what the start's
replay resolved), ``registered``, ``prepare_claim`` / ``unprepare_claim`` (each
preparer call, with the claim's uid and, for unprepare, the persisted plans).

Run by ``tests/peers/kubelet_fixtures.py`` (``kndkit_dra_plugin`` fixture).
SIGTERM stops it cleanly (sockets removed); SIGKILL is what the crash tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kndkit.devices import Device
from kndkit.dra import KubeletPlugin
from kndkit.dra.service import ClaimService, ClaimTiming, PreparedClaim
from kndkit.dra.types import PreparedDevice
from kndkit.k8s.claims import Claim, ClaimReader, parse_config
from kndkit.k8s.client import new_api_client
from kndkit.k8s.publisher import SlicePublisher
from kndkit.k8s.status import ClaimStatusWriter, DeviceStatus
from kndkit.state import ClaimRecord, StateStore

log = logging.getLogger("kndkit.tests.plugin")

CDI_VENDOR = "kndkit.test"


class NetConfig(BaseModel):
    """The test driver's opaque configuration (per request)."""

    model_config = ConfigDict(extra="forbid")

    interfaceName: str | None = Field(default=None, min_length=1, max_length=15)
    mtu: int = Field(default=1500, ge=68, le=9216)
    # Failure injection for the tests: the preparer raises (not a config error),
    # or the first unprepare of the claim raises.
    failPrepare: bool = False
    failUnprepareOnce: bool = False


def test_devices(n: int) -> list[Device]:
    """``n`` devices shaped like the reference driver's (dev-NNNN)."""
    return [
        Device(
            name=f"dev-{i:04d}",
            attributes={"ifName": f"eth{i}", "index": i, "sriov": False},
            capacity={"mtu": "9000"},
        )
        for i in range(n)
    ]


class Out:
    """One JSON object per stdout line."""

    def write(self, msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg, default=str) + "\n")
        sys.stdout.flush()

    def event(self, name: str, **fields: Any) -> None:
        self.write({"event": name, **fields})


class TestPreparer:
    """One device per allocation result of this driver; config checked by NetConfig."""

    def __init__(self, driver: str, out: Out, status: bool) -> None:
        self.driver = driver
        self.out = out
        self.status = status
        self.failed_once: set[str] = set()

    async def prepare_claim(self, claim: Claim) -> PreparedClaim:
        devices: list[PreparedDevice] = []
        plans: list[dict[str, Any]] = []
        statuses: list[DeviceStatus] = []
        for i, d in enumerate(claim.devices):
            cfg = parse_config(d, NetConfig)
            devices.append(
                PreparedDevice(
                    pool_name=d.pool,
                    device_name=d.device,
                    request_names=(d.request,),
                    cdi_device_ids=(f"{CDI_VENDOR}/net={claim.uid}-{d.device}",),
                    share_id=d.share_id,
                )
            )
            if cfg.failPrepare:
                raise RuntimeError(f"injected failure preparing device {d.device}")
            ifname = cfg.interfaceName or f"net{i + 1}"
            plan = {"device": d.device, "pool": d.pool, "ifname": ifname, "mtu": cfg.mtu}
            if cfg.failUnprepareOnce:
                plan["fail_unprepare_once"] = True
            plans.append(plan)
            statuses.append(DeviceStatus(pool=d.pool, device=d.device, interface_name=ifname))
        if not devices:
            raise RuntimeError(f"claim has no device of driver {self.driver}")
        self.out.event("prepare_claim", uid=claim.uid, devices=len(devices))
        return PreparedClaim(devices, plans, statuses if self.status else ())

    async def unprepare_claim(self, record: ClaimRecord) -> None:
        self.out.event(
            "unprepare_claim", uid=record.uid, phase=record.phase.value, plans=record.plans
        )
        plans = record.plans if isinstance(record.plans, list) else []
        if any(p.get("fail_unprepare_once") for p in plans) and record.uid not in self.failed_once:
            self.failed_once.add(record.uid)
            raise RuntimeError("injected failure unpreparing the claim")


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--driver", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--registry-dir", required=True)
    p.add_argument("--plugin-dir", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--rolling-update-uid")
    p.add_argument("--versions", default="v1,v1beta1")
    p.add_argument("--min-interval", type=float, default=0.2)
    p.add_argument("--status", action="store_true", help="write device status and events")
    p.add_argument("--no-publisher", action="store_true")
    p.add_argument("--durable-marks", action="store_true", help="fsync PREPARING/UNPREPARING")
    p.add_argument("-v", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.v else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    out = Out()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    api = await new_api_client(args.kubeconfig)
    store = StateStore(args.state)
    timings: list[ClaimTiming] = []
    writer = ClaimStatusWriter(api, args.driver) if args.status else None
    service = ClaimService(
        args.driver,
        ClaimReader(api, args.driver),
        store,
        TestPreparer(args.driver, out, args.status),
        writer,
        on_timing=timings.append,
        durable_marks=args.durable_marks,
    )
    replayed = await service.replay()
    publisher = None
    if not args.no_publisher:
        publisher = SlicePublisher(api, args.driver, args.node, min_interval=args.min_interval)
        await publisher.start()
    plugin = KubeletPlugin(
        args.driver,
        service,
        node_name=args.node,
        registry_dir=args.registry_dir,
        plugin_dir=args.plugin_dir,
        rolling_update_uid=args.rolling_update_uid,
        versions=tuple(v for v in args.versions.split(",") if v),
    )
    await plugin.start()
    out.event(
        "ready",
        pid=os.getpid(),
        endpoint=plugin.endpoint,
        registration_socket=plugin.registration_socket,
        replay={"resolved": replayed.resolved, "failed": replayed.failed},
    )

    async def announce_registration() -> None:
        await plugin.registered.wait()
        out.event("registered")

    reg_task = asyncio.create_task(announce_registration())

    async def handle(req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd in ("publish", "update", "wait_idle", "stats") and publisher is None:
            raise RuntimeError("started with --no-publisher")
        if cmd == "publish":
            assert publisher is not None
            t0 = time.perf_counter()
            stats = await publisher.publish(test_devices(int(req["devices"])))
            return {"stats": _stats(stats), "wall_s": time.perf_counter() - t0}
        if cmd == "update":
            assert publisher is not None
            publisher.update(test_devices(int(req["devices"])))
            return {}
        if cmd == "wait_idle":
            assert publisher is not None
            await publisher.wait_idle()
            return {}
        if cmd == "stats":
            assert publisher is not None
            return {"stats": _stats(publisher.stats)}
        if cmd == "timings":
            got = [dataclasses.asdict(t) for t in timings]
            timings.clear()
            return {"timings": got}
        if cmd == "records":
            return {
                "records": [
                    {
                        "uid": r.uid,
                        "namespace": r.namespace,
                        "name": r.name,
                        "phase": r.phase.value,
                        "devices": [d.device_name for d in r.devices],
                        "plans": r.plans,
                        "pod_uids": list(r.pod_uids),
                    }
                    for r in store.list()
                ]
            }
        if cmd == "replay":
            res = await service.replay()
            return {"resolved": res.resolved, "failed": res.failed}
        if cmd == "stop":
            stopping.set()
            return {}
        raise ValueError(f"unknown cmd {cmd!r}")

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    running: set[asyncio.Task[None]] = set()

    async def serve_stdin() -> None:
        while True:
            line = await reader.readline()
            if not line:
                stopping.set()
                return
            try:
                req = json.loads(line)
            except ValueError:
                out.write({"ok": False, "error": f"bad line {line!r}"})
                continue

            async def run(req: dict[str, Any] = req) -> None:
                try:
                    res = await handle(req)
                    out.write({"id": req.get("id"), "ok": True, **res})
                except Exception as e:
                    log.exception("command %s failed", req.get("cmd"))
                    out.write(
                        {"id": req.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}"}
                    )

            task = asyncio.create_task(run())
            running.add(task)
            task.add_done_callback(running.discard)

    stdin_task = asyncio.create_task(serve_stdin())
    await stopping.wait()
    for t in (stdin_task, reg_task):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await plugin.stop()
    if publisher is not None:
        await publisher.stop()
    store.close()
    await api.close()  # type: ignore[no-untyped-call]
    return 0


def _stats(s: Any) -> dict[str, int]:
    return {
        "creates": int(s.creates),
        "updates": int(s.updates),
        "deletes": int(s.deletes),
        "writes": int(s.writes),
    }


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
