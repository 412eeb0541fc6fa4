"""``kndkit run <driver>``: a driver's node agent (the DaemonSet's entry point).

The driver is named by

* a bundled name (``hello``, ``netdev``, ``macvlan``, ``rdma``:
  :data:`kndkit.examples.BUNDLED`),
* ``package.module:Class``, or
* ``path/to/file.py:Class`` (the file is loaded as a module of its own).

Options (all have DaemonSet-friendly defaults)::

    --node-name N          default $NODE_NAME, else the host name
    --host-netns PATH      the namespace treated as the host (default: own)
    --kubeconfig FILE      default: in-cluster configuration, else ~/.kube/config
    --state-dir D          default /var/lib/kndkit/<driver>
    --registry-dir D       default /var/lib/kubelet/plugins_registry
    --plugin-dir D         default /var/lib/kubelet/plugins/<driver>
    --nri-socket S         default /var/run/nri/nri.sock
    --nri-index NN         default 10
    --metrics-port P       default 9177; 0 = a free port; -1 = off
    --metrics-host H       default 0.0.0.0
    --sysfs-root D, --dev-root D, --rescan-interval S
    --set KEY=VALUE        driver parameter (repeatable; VALUE parsed as JSON when it is JSON)
    --config FILE          driver parameters from a YAML/JSON mapping (--set wins)

SIGTERM or SIGINT stops the driver gracefully (NRI hooks in flight finish,
sockets are removed). The module imports nothing heavy until the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kndkit.errors import InvalidArgument, KndError

if TYPE_CHECKING:
    from kndkit.driver import DriverOptions, NetworkDriver

__all__ = ["add_options", "add_parser", "load_driver", "main_for_class", "options_from_args"]

log = logging.getLogger("kndkit.runner")


def _default_node() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname().lower()


def add_options(p: argparse.ArgumentParser) -> None:
    """The options shared by ``kndkit run`` and a driver file's ``run()``."""
    p.add_argument("--node-name", default=_default_node(), help="node name (default: $NODE_NAME)")
    p.add_argument("--host-netns", help="path of the network namespace treated as the host")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster configuration)")
    p.add_argument("--state-dir", help="state directory (default /var/lib/kndkit/<driver>)")
    p.add_argument("--registry-dir", default="/var/lib/kubelet/plugins_registry")
    p.add_argument("--plugin-dir", help="DRA socket directory (/var/lib/kubelet/plugins/<driver>)")
    p.add_argument("--nri-socket", default="/var/run/nri/nri.sock")
    p.add_argument("--nri-index", default="10", help="NRI plugin index (two digits)")
    p.add_argument(
        "--metrics-port", type=int, default=9177, help="0: a free port; negative: no server"
    )
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--sysfs-root", default="/sys")
    p.add_argument("--dev-root", default="/dev")
    p.add_argument("--rescan-interval", type=float, default=60.0, help="seconds")
    p.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="driver parameter (repeatable)",
    )
    p.add_argument("--config", dest="config_file", help="driver parameters (YAML or JSON file)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``kndkit run``."""
    p = sub.add_parser(
        "run",
        help="run a network driver on this node",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument(
        "driver", help="bundled name (hello, netdev, macvlan, rdma), module:Class or file.py:Class"
    )
    add_options(p)
    p.set_defaults(func=_cmd_run)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def driver_params(sets: Sequence[str], config_file: str | None) -> dict[str, Any]:
    """Parameters from ``--config FILE`` with ``--set KEY=VALUE`` over them."""
    params: dict[str, Any] = {}
    if config_file:
        import yaml  # noqa: PLC0415

        try:
            text = Path(config_file).read_text()
        except OSError as e:
            raise InvalidArgument(f"--config {config_file}: {e}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InvalidArgument(f"--config {config_file}: not YAML/JSON: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidArgument(
                f"--config {config_file}: must hold a mapping, not {type(data).__name__}"
            )
        params.update({str(k): v for k, v in data.items()})
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--set {item!r}: expected KEY=VALUE")
        params[key] = _parse_value(value)
    return params


def load_driver(spec: str) -> type[NetworkDriver]:
    """The driver class ``spec`` names (bundled name, ``module:Class`` or
    ``file.py:Class``); :class:`InvalidArgument` says what is wrong."""
    from kndkit.driver import NetworkDriver  # noqa: PLC0415
    from kndkit.examples import BUNDLED  # noqa: PLC0415

    target = BUNDLED.get(spec, spec)
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise InvalidArgument(
            f"driver {spec!r}: expected a bundled name ({', '.join(sorted(BUNDLED))}), "
            "module.path:Class or path/to/file.py:Class"
        )
    if where.endswith(".py") or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise InvalidArgument(f"driver {spec!r}: no file {where}")
        mod_name = f"kndkit_driver_{path.stem}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise InvalidArgument(f"driver {spec!r}: cannot load {where} as a module")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise InvalidArgument(f"driver {spec!r}: loading {where} failed: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise InvalidArgument(f"driver {spec!r}: cannot import {where}: {e}") from e
    cls = getattr(module, attr, None)
    if cls is None:
        raise InvalidArgument(f"driver {spec!r}: {where} has no attribute {attr!r}")
    if not isinstance(cls, type) or not issubclass(cls, NetworkDriver):
        raise InvalidArgument(f"driver {spec!r}: {attr} is not a NetworkDriver subclass")
    return cls


def options_from_args(args: argparse.Namespace) -> DriverOptions:
    """:class:`~kndkit.driver.DriverOptions` from parsed options."""
    from kndkit.driver import DriverOptions  # noqa: PLC0415

    if not args.node_name:
        raise InvalidArgument("--node-name is empty (and $NODE_NAME is not set)")
    return DriverOptions(
        node_name=args.node_name,
        host_netns=args.host_netns,
        kubeconfig=args.kubeconfig,
        state_dir=args.state_dir,
        registry_dir=args.registry_dir,
        plugin_dir=args.plugin_dir,
        nri_socket=args.nri_socket,
        nri_index=args.nri_index,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        metrics_host=args.metrics_host,
        sysfs_root=args.sysfs_root,
        dev_root=args.dev_root,
        rescan_interval=args.rescan_interval,
        params=driver_params(args.params, args.config_file),
    )


async def _serve(driver: NetworkDriver) -> None:
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signame: str) -> None:
        log.info("%s received: stopping driver %s", signame, driver.driver_name)
        stopping.append(loop.create_task(driver.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await driver.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_driver(cls: type[NetworkDriver], options: DriverOptions) -> int:
    """Runs ``cls`` with ``options`` until a signal stops it; the exit status."""
    driver = cls(options)
    asyncio.run(_serve(driver))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cls = load_driver(args.driver)
    return run_driver(cls, options_from_args(args))


def main_for_class(cls: type[NetworkDriver], argv: Sequence[str] | None = None) -> int:
    """``python mydriver.py [options]``: the options of ``kndkit run`` without the
    driver argument, plus ``--log-format`` and ``--log-level``."""
    from kndkit.logs import configure  # noqa: PLC0415

    p = argparse.ArgumentParser(prog=sys.argv[0], description=(cls.__doc__ or "").strip() or None)
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default="info")
    add_options(p)
    args = p.parse_args(argv)
    configure(args.log_format, args.log_level)
    try:
        return run_driver(cls, options_from_args(args))
    except KndError as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
