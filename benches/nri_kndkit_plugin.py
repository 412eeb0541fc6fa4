"""kndkit's side of the NRI round-trip benchmark, run as its own process.

    python benches/nri_kndkit_plugin.py --socket /tmp/.../nri.sock [--idx 10]
        [--name bench-py] [--profile out.prof]

A :class:`kndkit.nri.Plugin` doing what the Go anchor (tests/peers/nri
``cmd/bench-plugin``, on the upstream stub) does: RunPodSandbox answers at
once; CreateContainer returns an adjustment adding 4 Linux devices
``/dev/infiniband/uverbs0..3`` (character, 231:192+i, mode 0666), built afresh
for each request. It runs in a process of its own so that the benchmark's
driver does not share its event loop (or its GIL).

SIGTERM or SIGINT stops the plugin. With ``--profile`` the whole run is
profiled with cProfile and the stats are written to that file at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import signal
import sys

from kndkit.nri import Plugin
from kndkit.nri.model import Container, ContainerAdjustment, LinuxDevice, Pod

log = logging.getLogger("kndkit.benches.nri_plugin")

DEVICE_COUNT = 4
UVERBS_MAJOR = 231
UVERBS_MINOR_BASE = 192
DEVICE_MODE = 0o666


class BenchPlugin(Plugin):
    """No-op RunPodSandbox; 4 uverbs devices on CreateContainer."""

    async def run_pod_sandbox(self, pod: Pod) -> None:
        return None

    async def create_container(self, pod: Pod, container: Container) -> ContainerAdjustment:
        adjust = ContainerAdjustment()
        for i in range(DEVICE_COUNT):
            adjust.add_device(
                LinuxDevice(
                    path=f"/dev/infiniband/uverbs{i}",
                    type="c",
                    major=UVERBS_MAJOR,
                    minor=UVERBS_MINOR_BASE + i,
                    file_mode=DEVICE_MODE,
                )
            )
        return adjust


async def serve(socket_path: str, idx: str, name: str) -> None:
    plugin = BenchPlugin(name, idx, socket_path=socket_path, reconnect=False)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def _stop() -> None:
        if not stopping:
            stopping.append(loop.create_task(plugin.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop)
    await plugin.run()
    if stopping:
        await stopping[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--socket", required=True, help="the runtime's NRI socket")
    ap.add_argument("--idx", default="10")
    ap.add_argument("--name", default="bench-py")
    ap.add_argument("--profile", help="write cProfile stats of the whole run to this file")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        try:
            asyncio.run(serve(args.socket, args.idx, args.name))
        finally:
            prof.disable()
            prof.dump_stats(args.profile)
    else:
        asyncio.run(serve(args.socket, args.idx, args.name))


if __name__ == "__main__":
    main()
