"""The kubelet's side of DRA as a test peer.

:class:`KubeletHarness` runs ``kubelet-harness`` (Go, on the upstream
``k8s.io/kubelet`` generated clients; built by :mod:`kndkit.testing.peers`):
plugin registration watching ``.registry_dir`` and the DRA/health clients,
driven by newline-delimited JSON over stdin/stdout (protocol:
``kndkit/testing/peers/kubelet/README.md``). :func:`start_ref_driver` runs the
reference driver on ``k8s.io/dynamic-resource-allocation/kubeletplugin``;
:func:`start_fake_registrar` a registration socket with given PluginInfo.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from kndkit.testing import peers as _peers
from kndkit.testing.kube import with_pdeathsig

log = logging.getLogger("kndkit.testing.kubelet")

BINARIES = ("kubelet-harness", "ref-driver", "fake-registrar")

V1 = "v1.DRAPlugin"
V1BETA1 = "v1beta1.DRAPlugin"
HEALTH_V1 = "v1.DRAResourceHealth"
HEALTH_V1ALPHA1 = "v1alpha1.DRAResourceHealth"

START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0  # the harness gives each DRA call 45 s itself
SUN_PATH_MAX = 107  # AF_UNIX path bytes, without the terminating NUL

_counter = itertools.count()


def unique_name(prefix: str = "kl") -> str:
    """A short name unique to this process and call."""
    return f"{prefix}{os.getpid()}-{next(_counter)}"


class KubeletHarnessError(Exception):
    """A command the harness answered with ``ok: false``."""

    def __init__(self, cmd: str, code: str, message: str, reply: Mapping[str, Any]) -> None:
        self.cmd = cmd
        self.code = code
        self.message = message
        self.reply = dict(reply)
        super().__init__(f"{cmd}: [{code}] {message}")


# --------------------------------------------------------------------------- build


def build_kubelet_peers(force: bool = False) -> pathlib.Path:
    """Build the kubelet peers unless up to date (:func:`kndkit.testing.peers.ensure`).

    Returns the directory of ``kubelet-harness``, ``ref-driver`` and
    ``fake-registrar``; ``force`` is accepted for compatibility and ignored.
    """
    del force
    return _peers.ensure(("kubelet",))


# --------------------------------------------------------------------------- processes


def _stop(popen: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    if popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(grace_s)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop in %.0f s, killing it", popen.pid, grace_s)
        popen.kill()
        popen.wait(10)


def _tail(path: pathlib.Path, n: int = 6000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"


def _check_socket_path(path: pathlib.Path) -> None:
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ValueError(f"socket path {path} is longer than {SUN_PATH_MAX} bytes")


def _claim_dict(c: Any) -> dict[str, str]:
    """Accept {"namespace","name","uid"}, a (namespace, name, uid) tuple or a claim object."""
    if isinstance(c, Mapping):
        if "metadata" in c:
            meta = c["metadata"]
            return {
                "namespace": str(meta.get("namespace") or "default"),
                "name": str(meta["name"]),
                "uid": str(meta["uid"]),
            }
        return {"namespace": str(c["namespace"]), "name": str(c["name"]), "uid": str(c["uid"])}
    ns, name, uid = c
    return {"namespace": str(ns), "name": str(name), "uid": str(uid)}


# --------------------------------------------------------------------------- harness


@dataclass
class KubeletHarness:
    """A running ``kubelet-harness`` and its temporary directories."""

    root: pathlib.Path
    registry_dir: pathlib.Path
    plugins_dir: pathlib.Path
    node_name: str
    popen: subprocess.Popen[str]
    stderr_path: pathlib.Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _replies: dict[int, queue.Queue[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)
    _closed: bool = False

    @classmethod
    def start(
        cls,
        bin_dir: pathlib.Path,
        *,
        force_v1beta1: bool = False,
        supported_versions: Sequence[str] | None = None,
        health_versions: Sequence[str] | None = None,
        node_name: str | None = None,
    ) -> KubeletHarness:
        root = pathlib.Path(tempfile.mkdtemp(prefix=f"knd-kl{os.getpid()}-", dir="/tmp"))
        registry_dir, plugins_dir = root / "reg", root / "plugins"
        registry_dir.mkdir()
        plugins_dir.mkdir()
        node = node_name or unique_name("node-")
        argv = [
            str(bin_dir / "kubelet-harness"),
            f"--registry-dir={registry_dir}",
            f"--node-name={node}",
        ]
        if force_v1beta1:
            argv.append("--force-v1beta1")
        if supported_versions is not None:
            argv.append(f"--supported-versions={','.join(supported_versions)}")
        if health_versions is not None:
            argv.append(f"--health-versions={','.join(health_versions)}")
        stderr_path = root / "harness.stderr"
        with stderr_path.open("wb") as err:
            popen = subprocess.Popen(
                with_pdeathsig(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        h = cls(root, registry_dir, plugins_dir, node, popen, stderr_path)
        assert popen.stdout is not None
        h._reader = threading.Thread(
            target=h._read, args=(popen.stdout,), name="kubelet-harness-reader", daemon=True
        )
        h._reader.start()
        try:
            h.wait_event("ready", timeout=START_TIMEOUT_S)
        except BaseException:
            h.close()
            raise
        return h

    # ---- I/O

    def _read(self, stream: IO[str]) -> None:
        for raw in stream:
            line = raw.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("kubelet-harness wrote a non-JSON line: %r", line)
                continue
            if "event" in msg:
                log.debug("kubelet-harness event: %s", msg)
                with self._cond:
                    self.events.append(msg)
                    self._cond.notify_all()
            elif isinstance(msg.get("id"), int):
                with self._lock:
                    q = self._replies.get(msg["id"])
                if q is not None:
                    q.put(msg)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with self._lock:
            for q in self._replies.values():
                q.put({"ok": False, "code": "exited", "error": "kubelet-harness exited"})

    def request(self, cmd: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one command; return the reply as it is (``ok`` may be false)."""
        rid = next(self._ids)
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        with self._lock:
            self._replies[rid] = q
        line = json.dumps({"id": rid, "cmd": cmd, **fields})
        try:
            stdin = self.popen.stdin
            if stdin is None or self.popen.poll() is not None:
                raise RuntimeError(f"kubelet-harness is not running; stderr:\n{self.stderr()}")
            stdin.write(line + "\n")
            stdin.flush()
            wait = timeout
            if wait is None:
                ms = fields.get("timeout_ms")
                wait = (ms / 1000.0 + 15.0) if ms else CALL_TIMEOUT_S
            try:
                return q.get(timeout=wait)
            except queue.Empty:
                raise TimeoutError(
                    f"kubelet-harness did not answer {cmd} in {wait:.0f} s; "
                    f"stderr:\n{self.stderr()}"
                ) from None
        finally:
            with self._lock:
                self._replies.pop(rid, None)

    def call(self, cmd: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one command; raise :class:`KubeletHarnessError` unless it succeeded."""
        reply = self.request(cmd, timeout=timeout, **fields)
        if not reply.get("ok"):
            raise KubeletHarnessError(
                cmd, str(reply.get("code", "")), str(reply.get("error", "")), reply
            )
        return reply

    # ---- commands

    def wait_registered(self, driver: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a registered endpoint of ``driver``; return the newest one."""
        reply = self.call("wait_registered", driver=driver, timeout_ms=int(timeout * 1000))
        plugin: dict[str, Any] = reply["plugin"]
        return plugin

    def wait_deregistered(self, driver: str, timeout: float = 30.0) -> None:
        self.call("wait_deregistered", driver=driver, timeout_ms=int(timeout * 1000))

    def list_plugins(self) -> list[dict[str, Any]]:
        plugins: list[dict[str, Any]] = self.call("list_plugins")["plugins"]
        return plugins

    def prepare(
        self,
        driver: str,
        claims: Iterable[Any],
        *,
        api: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """NodePrepareResources; returns ``{"api", "endpoint", "response"}``."""
        return self._dra("prepare", driver, claims, api, timeout)

    def unprepare(
        self,
        driver: str,
        claims: Iterable[Any],
        *,
        api: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """NodeUnprepareResources; returns ``{"api", "endpoint", "response"}``."""
        return self._dra("unprepare", driver, claims, api, timeout)

    def _dra(
        self, cmd: str, driver: str, claims: Iterable[Any], api: str | None, timeout: float | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"driver": driver, "claims": [_claim_dict(c) for c in claims]}
        if api:
            fields["api"] = api
        if timeout is not None:
            fields["timeout_ms"] = int(timeout * 1000)
        reply = self.call(cmd, **fields)
        return {k: reply[k] for k in ("api", "endpoint", "response")}

    def bench(
        self,
        driver: str,
        claims: Iterable[Any],
        count: int,
        *,
        warmup: int = 0,
        api: str | None = None,
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """``count`` prepare+unprepare pairs of ``claims`` (after ``warmup`` unreported ones).

        Returns ``{"api", "endpoint", "claims", "prepare_ns", "unprepare_ns"}``: the
        duration of each gRPC call in nanoseconds, measured in Go around the call.
        A per-claim error fails it (``KubeletHarnessError`` code ``claim_error``).
        """
        fields: dict[str, Any] = {
            "driver": driver,
            "claims": [_claim_dict(c) for c in claims],
            "count": count,
            "timeout_ms": int(timeout * 1000),
        }
        if warmup:
            fields["warmup"] = warmup
        if api:
            fields["api"] = api
        reply = self.call("bench", **fields)
        return {k: reply[k] for k in ("api", "endpoint", "claims", "prepare_ns", "unprepare_ns")}

    def watch_health(
        self, driver: str, count: int, *, api: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Read ``count`` messages from NodeWatchResources: ``{"api", "endpoint", "messages"}``."""
        fields: dict[str, Any] = {"driver": driver, "count": count}
        if api:
            fields["api"] = api
        reply = self.call("watch_health", timeout_ms=int(timeout * 1000), **fields)
        return {k: reply[k] for k in ("api", "endpoint", "messages")}

    def wait_event(
        self,
        name: str,
        timeout: float = 30.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        **match: Any,
    ) -> dict[str, Any]:
        """Wait for an event (already seen or future) whose fields equal ``match``."""

        def hit(ev: dict[str, Any]) -> bool:
            return (
                ev.get("event") == name
                and all(ev.get(k) == v for k, v in match.items())
                and (predicate is None or predicate(ev))
            )

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if hit(ev):
                        return ev
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    break
                self._cond.wait(left)
        raise TimeoutError(
            f"no {name} event matching {match} within {timeout:.0f} s "
            f"(exited={self._closed}); events: {self.events}; stderr:\n{self.stderr()}"
        )

    def stderr(self) -> str:
        return _tail(self.stderr_path)

    # ---- lifecycle

    def restart(self) -> None:
        """Stop the harness process and start a new one on the same directories and
        node name (a kubelet restart: plugins already in the registry directory get
        registered again by the new process). ``events`` starts empty again."""
        argv = list(self.popen.args)  # type: ignore[arg-type]
        if self.popen.poll() is None:
            with contextlib.suppress(Exception):
                self.request("shutdown", timeout=5.0)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                _stop(self.popen)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self._reader is not None:
            self._reader.join(5)
        with self._cond:
            self.events.clear()
            self._closed = False
        with self.stderr_path.open("ab") as err:
            self.popen = subprocess.Popen(
                with_pdeathsig([str(a) for a in argv]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        assert self.popen.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.popen.stdout,), name="kubelet-harness-reader", daemon=True
        )
        self._reader.start()
        self.wait_event("ready", timeout=START_TIMEOUT_S)

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(Exception):
                self.request("shutdown", timeout=5.0)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                _stop(self.popen)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self._reader is not None:
            self._reader.join(5)
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- drivers


@dataclass
class RefDriver:
    """The upstream-helper reference driver, running.

    ``events`` collects the JSON lines it prints after ``ready`` (``publishing``
    events with ``devices`` and ``time_ns`` when started with ``publish_devices``).
    """

    driver: str
    data_dir: pathlib.Path
    endpoint: pathlib.Path
    popen: subprocess.Popen[bytes]
    log_path: pathlib.Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with contextlib.suppress(ValueError):
                msg = json.loads(raw)
                with self._cond:
                    self.events.append(msg)
                    self._cond.notify_all()

    def wait_event(self, name: str, count: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        """The ``count``-th event called ``name`` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [e for e in self.events if e.get("event") == name]
                if len(hits) >= count:
                    return hits[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    raise TimeoutError(
                        f"ref-driver {self.driver}: no event {name} #{count}; "
                        f"events {self.events}; log:\n{self.logs()}"
                    )
                self._cond.wait(min(left, 0.5))

    def republish(self) -> None:
        """Ask it to publish the same devices again (SIGUSR1)."""
        self.popen.send_signal(signal.SIGUSR1)

    def lookup_timings(self, timeout: float = 10.0) -> list[int]:
        """With ``timing=True``: nanoseconds from each NodePrepareResources call's
        arrival to the driver's PrepareResourceClaims (the helper's claim GETs),
        since the last call of this method (SIGUSR2)."""
        with self._cond:
            n = len([e for e in self.events if e.get("event") == "timings"])
        self.popen.send_signal(signal.SIGUSR2)
        ev = self.wait_event("timings", count=n + 1, timeout=timeout)
        return [int(x) for x in ev.get("get_ns") or []]

    def stop(self) -> None:
        _stop(self.popen)

    def logs(self) -> str:
        return _tail(self.log_path)


@dataclass
class FakeRegistrar:
    """A registration server with a fixed PluginInfo."""

    socket: pathlib.Path
    popen: subprocess.Popen[str]
    notifications: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def next_notification(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            return self.notifications.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no NotifyRegistrationStatus on {self.socket}") from None

    def stop(self) -> None:
        _stop(self.popen)


def _wait_ready_line(
    popen: subprocess.Popen[Any], what: str, log_path: pathlib.Path | None
) -> None:
    assert popen.stdout is not None
    line = popen.stdout.readline()
    text = line.decode() if isinstance(line, bytes) else line
    if '"ready"' not in text:
        popen.wait(5)
        detail = _tail(log_path) if log_path else ""
        raise RuntimeError(f"{what} did not start (exit {popen.returncode}): {text}\n{detail}")


def start_ref_driver(
    bin_dir: pathlib.Path,
    harness: KubeletHarness,
    driver: str | None = None,
    *,
    kubeconfig: str | os.PathLike[str] | None = None,
    versions: str = "v1,v1beta1",
    health: bool = False,
    health_versions: str = "v1,v1alpha1",
    health_devices: Sequence[str] = ("dev-0",),
    unhealthy: Sequence[str] = (),
    rolling_update_uid: str | None = None,
    data_dir: pathlib.Path | None = None,
    extra_args: Sequence[str] = (),
    publish_devices: int = 0,
    publish_per_slice: int = 128,
    timing: bool = False,
    kube_api_qps: float = 0,
    kube_api_burst: int = 0,
) -> RefDriver:
    name = driver or f"{unique_name('ref')}.kndkit.test"
    data = data_dir or harness.plugins_dir / name
    data.mkdir(parents=True, exist_ok=True)
    sock = data / (f"dra-{rolling_update_uid}.sock" if rolling_update_uid else "dra.sock")
    _check_socket_path(sock)
    _check_socket_path(harness.registry_dir / f"{name}-{rolling_update_uid or ''}-reg.sock")
    argv = [
        str(bin_dir / "ref-driver"),
        f"--registry-dir={harness.registry_dir}",
        f"--plugin-data-dir={data}",
        f"--driver-name={name}",
        f"--node-name={harness.node_name}",
        f"--versions={versions}",
        "-v=5",
    ]
    if kubeconfig is not None:
        argv.append(f"--kubeconfig={kubeconfig}")
    if health:
        argv += [
            "--health",
            f"--health-versions={health_versions}",
            f"--health-devices={','.join(health_devices)}",
            f"--health-unhealthy={','.join(unhealthy)}",
            "--health-interval=200ms",
        ]
    if rolling_update_uid:
        argv.append(f"--rolling-update-uid={rolling_update_uid}")
    if publish_devices:
        argv += [f"--publish-devices={publish_devices}", f"--publish-per-slice={publish_per_slice}"]
    if timing:
        argv.append("--timing")
    if kube_api_qps:
        argv.append(f"--kube-api-qps={kube_api_qps}")
    if kube_api_burst:
        argv.append(f"--kube-api-burst={kube_api_burst}")
    argv += list(extra_args)
    log_path = harness.root / f"{name}-{next(_counter)}.log"
    with log_path.open("wb") as err:
        popen = subprocess.Popen(
            with_pdeathsig(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        _wait_ready_line(popen, f"ref-driver {name}", log_path)
    except BaseException:
        _stop(popen)
        raise
    drv = RefDriver(name, data, sock, popen, log_path)
    threading.Thread(target=drv._pump, name="ref-driver-reader", daemon=True).start()
    return drv


def start_fake_registrar(
    bin_dir: pathlib.Path,
    harness: KubeletHarness,
    *,
    name: str,
    endpoint: str,
    versions: Sequence[str] = (V1,),
    type: str = "DRAPlugin",  # the PluginInfo field's name
    socket_name: str | None = None,
) -> FakeRegistrar:
    sock = harness.registry_dir / (socket_name or f"{unique_name('fake')}-reg.sock")
    _check_socket_path(sock)
    popen = subprocess.Popen(
        with_pdeathsig(
            [
                str(bin_dir / "fake-registrar"),
                f"--socket={sock}",
                f"--type={type}",
                f"--name={name}",
                f"--endpoint={endpoint}",
                f"--versions={','.join(versions)}",
            ]
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    try:
        _wait_ready_line(popen, "fake-registrar", None)
    except BaseException:
        _stop(popen)
        raise
    fr = FakeRegistrar(sock, popen)

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            with contextlib.suppress(ValueError):
                fr.notifications.put(json.loads(line))

    threading.Thread(target=pump, name="fake-registrar-reader", daemon=True).start()
    return fr
