"""The ``kndkit`` command.

* ``kndkit run <driver>``: the node agent (the DaemonSet's entry point), see
  :mod:`kndkit.runner`;
* ``kndkit discover``: this node's network devices as ``resource.k8s.io/v1``
  ResourceSlices (YAML by default), exactly as a driver would publish them; no
  cluster needed;
* ``kndkit manifests <driver>``: DaemonSet, RBAC and DeviceClass for a driver,
  see :mod:`kndkit.manifests`;
* ``kndkit demo``: a simulated node end to end, see :mod:`kndkit.demo`.

The subcommands other than ``discover`` live in their own modules, each with an
``add_parser(sub)`` that registers it; they import their heavy dependencies
(grpc, the Kubernetes client) only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence

import yaml

from kndkit import _native
from kndkit.devices import devices_from_discovery, resource_slices
from kndkit.errors import KndError
from kndkit.logs import configure

log = logging.getLogger("kndkit.cli")

DEFAULT_DRIVER = "netdev.kndkit.dev"


def _node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname().lower()


def _cmd_discover(args: argparse.Namespace) -> int:
    ns = _native.NetNs.open(args.netns) if args.netns else None
    # A namespace is only visible through netlink; otherwise let discover() decide
    # (netlink for the real /sys, a sysfs-only walk for a fake tree).
    topo = _native.discover(
        args.sysfs_root, dev_root=args.dev_root, ns=ns, netlink=True if ns else None
    )
    devices = devices_from_discovery(
        topo, include_virtual=not args.physical_only, include_loopback=args.include_loopback
    )
    log.info(
        "discovered %d netdevs and %d RDMA devices; publishing %d devices",
        len(topo.netdevs),
        len(topo.rdma_devices),
        len(devices),
    )
    slices = resource_slices(devices, driver=args.driver, node_name=args.node)
    if args.output == "json":
        json.dump({"apiVersion": "v1", "kind": "List", "items": slices}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump_all(slices, sys.stdout, sort_keys=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kndkit", description=__doc__.splitlines()[0])
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="print this node's devices as ResourceSlices")
    d.add_argument("--driver", default=DEFAULT_DRIVER, help="driver name (DNS subdomain)")
    d.add_argument("--node", default=_node_name(), help="node name (default: $NODE_NAME)")
    d.add_argument("--sysfs-root", default="/sys")
    d.add_argument("--dev-root", default="/dev")
    d.add_argument("--netns", help="discover inside this network namespace (path)")
    d.add_argument("--physical-only", action="store_true", help="skip virtual netdevs")
    d.add_argument("--include-loopback", action="store_true")
    d.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    d.set_defaults(func=_cmd_discover)

    for module in ("kndkit.runner", "kndkit.manifests", "kndkit.demo"):
        importlib.import_module(module).add_parser(sub)
    # The logging options are accepted after the subcommand too
    # (``kndkit run netdev --log-format json``); there they override.
    for sp in sub.choices.values():
        sp.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS)
        sp.add_argument("--log-level", default=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format, args.log_level)
    try:
        rc: int = args.func(args)
    except KndError as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
