"""containerd's NRI runtime side as a test peer.

:class:`NRIRuntime` runs ``nri-harness-<v>`` (the upstream
``github.com/containerd/nri/pkg/adaptation`` driven over stdin/stdout; built by
:mod:`kndkit.testing.peers`; protocol: ``kndkit/testing/peers/nri/README.md``).
``<v>`` is ``v012`` (NRI v0.12.x, per-event RPCs) or ``v011`` (NRI v0.11.x, pod
events over ``StateChange``). :class:`NRIPlugin` runs the netdev-injector
plugin and :class:`NRIBenchPlugin` the benchmark's Go anchor plugin.

Helpers: :func:`make_pod` builds a pod in the NRI API's JSON field names;
:meth:`NRIRuntime.bench` relays one event many times and returns the per-call
durations the harness measured in Go (:class:`BenchResult`, with
:func:`bench_stats` for percentiles).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import pathlib
import queue
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from kndkit.testing import peers as _peers

log = logging.getLogger("kndkit.testing.nri")


VERSIONS = {"v0.12": "v012", "v0.11": "v011"}
NETNS_DIR = pathlib.Path("/var/run/netns")
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
# Plugin registration/request timeouts the fixtures give the harness: more
# generous than upstream's 5 s / 2 s so that a loaded 2-core CI machine does
# not drop plugins. Pass None to the factory for the upstream defaults.
DEFAULT_TIMEOUT_S = 10.0

_counter = itertools.count()


def unique_suffix() -> str:
    """A short suffix unique to this process and call (pid-based)."""
    return f"{os.getpid() % 100000}{next(_counter)}"


class NRIError(Exception):
    """A command the harness answered with ``ok: false``; ``.error`` is verbatim."""

    def __init__(self, cmd: str, error: str) -> None:
        super().__init__(f"{cmd}: {error}")
        self.cmd = cmd
        self.error = error


class NRIHarnessGone(Exception):
    """The harness process exited or stopped answering."""


@dataclass(frozen=True)
class NRIBinaries:
    harness: pathlib.Path
    netdev_injector: pathlib.Path
    bench_plugin: pathlib.Path


# What the bench plugin (and any plugin benchmarked against it) adds to every
# created container, in the harness's result form (protojson, proto names:
# int64 as strings, file mode 0666 = 438).
BENCH_DEVICES: tuple[dict[str, Any], ...] = tuple(
    {
        "path": f"/dev/infiniband/uverbs{i}",
        "type": "c",
        "major": "231",
        "minor": str(192 + i),
        "file_mode": {"value": 0o666},
    }
    for i in range(4)
)


@dataclass(frozen=True)
class BenchResult:
    """One ``bench`` command: ``count`` round trips after ``warmup`` uncounted ones.

    ``ns`` holds each counted call's duration in nanoseconds, measured by the
    harness in Go around the adaptation call alone (runtime -> plugin ->
    runtime, including the adaptation's merge of the reply; no JSON or pipe
    in it). ``live_before``/``live_after`` are the plugins live around the
    calls: a plugin dropped in between (request timeout) makes later calls
    skip it, so a changed list means the numbers are not round trips.
    ``differing_replies`` counts calls (warm-up included) whose reply differs
    from the last one's: 0 when every call got the same adjustments.
    """

    event: str
    count: int
    warmup: int
    ns: tuple[int, ...]
    live_before: tuple[str, ...]
    live_after: tuple[str, ...]
    last_reply: dict[str, Any]
    differing_replies: int


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, linearly interpolated
    between closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def bench_stats(ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max in microseconds of per-call durations in ns."""
    xs = sorted(ns)
    return {
        "p50_us": percentile(xs, 0.50) / 1e3,
        "p90_us": percentile(xs, 0.90) / 1e3,
        "p99_us": percentile(xs, 0.99) / 1e3,
        "mean_us": sum(xs) / len(xs) / 1e3,
        "min_us": xs[0] / 1e3,
        "max_us": xs[-1] / 1e3,
    }


def build_nri_peers() -> dict[str, NRIBinaries]:
    """Build the NRI peers unless up to date (:func:`kndkit.testing.peers.ensure`);
    return the binaries per NRI version (``"v0.12"``, ``"v0.11"``)."""
    bins = _peers.ensure(("nri",))
    return {
        version: NRIBinaries(
            harness=bins / f"nri-harness-{tag}",
            netdev_injector=bins / f"nri-netdev-injector-{tag}",
            bench_plugin=bins / f"nri-bench-plugin-{tag}",
        )
        for version, tag in VERSIONS.items()
    }


def make_pod(
    name: str,
    *,
    netns: str | os.PathLike[str] | None = None,
    annotations: Mapping[str, str] | None = None,
    namespace: str = "default",
    uid: str | None = None,
    pod_id: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A PodSandbox in the NRI API's JSON field names.

    ``netns`` becomes the ``linux.namespaces`` entry of type ``network``; leave
    it out for a host-network pod.
    """
    pod: dict[str, Any] = {
        "id": pod_id or f"sandbox-{name}",
        "name": name,
        "uid": uid or f"uid-{name}",
        "namespace": namespace,
        "annotations": dict(annotations or {}),
        "labels": dict(labels or {}),
        "linux": {"namespaces": []},
    }
    if netns is not None:
        pod["linux"]["namespaces"].append({"type": "network", "path": str(netns)})
    return pod


def make_container(
    name: str, pod: Mapping[str, Any], *, ctr_id: str | None = None
) -> dict[str, Any]:
    """A Container of ``pod`` in the NRI API's JSON field names."""
    return {
        "id": ctr_id or f"ctr-{pod['name']}-{name}",
        "pod_sandbox_id": pod["id"],
        "name": name,
        "state": "CONTAINER_CREATED",
    }


class NRIRuntime:
    """A running nri-harness: containerd's NRI side, driven by JSON lines."""

    def __init__(
        self,
        binary: pathlib.Path,
        version: str,
        workdir: pathlib.Path,
        *,
        request_timeout: float | None = None,
        registration_timeout: float | None = None,
        plugin_path: pathlib.Path | None = None,
    ) -> None:
        self.version = version
        self.workdir = workdir
        self.socket = workdir / "nri.sock"
        self.stderr_path = workdir / "harness.stderr"
        args = [str(binary), "--socket", str(self.socket)]
        args += ["--plugin-path", str(plugin_path or (workdir / "plugins"))]
        args += ["--plugin-config-path", str(workdir / "conf.d")]
        if request_timeout is not None:
            args += ["--request-timeout", f"{int(request_timeout * 1000)}ms"]
        if registration_timeout is not None:
            args += ["--registration-timeout", f"{int(registration_timeout * 1000)}ms"]
        self._stderr: IO[bytes] = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self.events: list[dict[str, Any]] = []
        self._events_lock = threading.Lock()
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="nri-harness-reader", daemon=True)
        self._reader.start()
        try:
            self.ready = self._ready.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.close()
            raise NRIHarnessGone(f"harness did not start:\n{self.stderr_tail()}") from None
        if not self.ready:
            self.close()
            raise NRIHarnessGone(f"harness exited at start:\n{self.stderr_tail()}")
        self.socket = pathlib.Path(self.ready["socket"])
        self.nri_version: str = self.ready["nri_version"]
        log.info("nri harness %s (%s) on %s", version, self.nri_version, self.socket)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                log.warning("nri harness: non-JSON line %r", line)
                continue
            if "event" in msg:
                if msg["event"] == "ready":
                    self._ready.put(msg)
                with self._events_lock:
                    self.events.append(msg)
                continue
            q = self._replies.get(msg.get("id", -1))
            if q is not None:
                q.put(msg)
        # EOF: wake up every waiter
        self._ready.put({})
        for q in list(self._replies.values()):
            q.put({})

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def call(self, cmd: str, timeout: float = CALL_TIMEOUT_S, **fields: Any) -> Any:
        """Send one command; return its result or raise :class:`NRIError`."""
        ok, value = self.try_call(cmd, timeout=timeout, **fields)
        if not ok:
            raise NRIError(cmd, value)
        return value

    def try_call(
        self, cmd: str, timeout: float = CALL_TIMEOUT_S, **fields: Any
    ) -> tuple[bool, Any]:
        """Send one command; return ``(True, result)`` or ``(False, error text)``."""
        if self.proc.poll() is not None:
            raise NRIHarnessGone(f"harness exited ({self.proc.returncode}):\n{self.stderr_tail()}")
        rid = next(self._ids)
        q: queue.Queue[dict[str, Any]] = queue.Queue()
        self._replies[rid] = q
        line = json.dumps({"id": rid, "cmd": cmd, **fields})
        try:
            with self._write_lock:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
            try:
                msg = q.get(timeout=timeout)
            except queue.Empty:
                raise NRIHarnessGone(
                    f"no reply to {cmd} within {timeout}s:\n{self.stderr_tail()}"
                ) from None
        except BrokenPipeError:
            raise NRIHarnessGone(f"harness gone:\n{self.stderr_tail()}") from None
        finally:
            self._replies.pop(rid, None)
        if not msg:
            raise NRIHarnessGone(f"harness exited during {cmd}:\n{self.stderr_tail()}")
        if msg.get("ok"):
            return True, msg.get("result")
        return False, str(msg.get("error", ""))

    # --- convenience wrappers -------------------------------------------------

    def wait_plugins(self, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Wait until ``count`` plugins are registered and synchronized."""
        res = self.call(
            "wait_plugins", timeout=timeout + 5, count=count, timeout_ms=int(timeout * 1000)
        )
        return list(res["live"])

    def set_state(
        self, pods: Sequence[Mapping[str, Any]] = (), containers: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """Set what Synchronize hands to plugins that connect from now on."""
        self.call("set_state", pods=list(pods), containers=list(containers))

    def run_pod_sandbox(self, pod: Mapping[str, Any]) -> None:
        self.call("run_pod_sandbox", pod=pod)

    def stop_pod_sandbox(self, pod: Mapping[str, Any]) -> None:
        self.call("stop_pod_sandbox", pod=pod)

    def remove_pod_sandbox(self, pod: Mapping[str, Any]) -> None:
        self.call("remove_pod_sandbox", pod=pod)

    def create_container(
        self, pod: Mapping[str, Any], container: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Returns the merged CreateContainerResponse (``adjust``, ``update``, ``evict``)."""
        return dict(self.call("create_container", pod=pod, container=container))

    def bench(
        self,
        event: str,
        pod: Mapping[str, Any],
        container: Mapping[str, Any] | None = None,
        *,
        count: int = 1000,
        warmup: int = 100,
        timeout: float | None = None,
    ) -> BenchResult:
        """Relay ``event`` (``run_pod_sandbox`` or ``create_container``)
        ``warmup`` + ``count`` times back to back; see :class:`BenchResult`.

        The default timeout allows 10 ms per call on top of
        :data:`CALL_TIMEOUT_S`.
        """
        fields: dict[str, Any] = {"event": event, "count": count, "warmup": warmup, "pod": pod}
        if container is not None:
            fields["container"] = container
        if timeout is None:
            timeout = CALL_TIMEOUT_S + (count + warmup) * 0.01
        res = self.call("bench", timeout=timeout, **fields)
        return BenchResult(
            event=res["event"],
            count=res["count"],
            warmup=res["warmup"],
            ns=tuple(res["ns"]),
            live_before=tuple(res["live_before"]),
            live_after=tuple(res["live_after"]),
            last_reply=dict(res.get("last_reply") or {}),
            differing_replies=int(res["differing_replies"]),
        )

    def events_named(self, name: str) -> list[dict[str, Any]]:
        with self._events_lock:
            return [e for e in self.events if e.get("event") == name]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call("shutdown", timeout=10)
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        # Close the pipes now, not at garbage collection (which would close fds in
        # the middle of a later test's fd count).
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(Exception):
                    pipe.close()
        self._stderr.close()


class NRIPlugin:
    """A running netdev-injector plugin process."""

    def __init__(
        self,
        binary: pathlib.Path,
        runtime: NRIRuntime,
        workdir: pathlib.Path,
        *,
        idx: str = "10",
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        run_delay: float | None = None,
        request_updates: bool = False,
    ) -> None:
        self.name = name or "netdev-injector"
        self.idx = idx
        self.qualified = f"{idx}-{self.name}"
        self.events_path = workdir / f"plugin-{self.qualified}.events.jsonl"
        self.stderr_path = workdir / f"plugin-{self.qualified}.stderr"
        args = [str(binary), "-idx", idx, "-name", self.name, "-socket", str(runtime.socket)]
        args += ["-events", str(self.events_path)]
        for k, v in (env or {}).items():
            args += ["-env", f"{k}={v}"]
        if run_delay is not None:
            args += ["-run-delay", f"{int(run_delay * 1000)}ms"]
        if request_updates:
            args.append("-request-updates")
        self._stderr: IO[bytes] = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=self._stderr)

    def received(self) -> list[dict[str, Any]]:
        """The events the plugin recorded (one dict per event)."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stderr.close()


class PluginProcess:
    """A plugin process started by a test or benchmark, its stderr kept in a file.

    ``stop`` sends SIGTERM (the plugin exits and, where it writes any, its stats),
    waits ``stop_timeout`` seconds, then kills it.
    """

    def __init__(
        self,
        argv: list[str],
        workdir: pathlib.Path,
        qualified: str,
        *,
        stop_timeout: float = 10.0,
    ) -> None:
        self.qualified = qualified
        self.stop_timeout = stop_timeout
        self.stderr_path = workdir / f"plugin-{qualified}.stderr"
        self._stderr: IO[bytes] = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=self._stderr)

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stderr.close()


class NRIBenchPlugin(PluginProcess):
    """A running bench-plugin process (the benchmark's Go anchor on the upstream stub)."""

    def __init__(
        self,
        binary: pathlib.Path,
        runtime: NRIRuntime,
        workdir: pathlib.Path,
        *,
        idx: str = "10",
        name: str = "bench-go",
    ) -> None:
        self.name = name
        self.idx = idx
        argv = [str(binary), "-idx", idx, "-name", name, "-socket", str(runtime.socket)]
        super().__init__(argv, workdir, f"{idx}-{name}")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def link_exists(name: str, netns: str | None = None) -> bool:
    """True when link ``name`` exists (in ``netns``, a name under /var/run/netns)."""
    args = ["-n", netns] if netns else []
    return _ip(*args, "link", "show", "dev", name, check=False).returncode == 0


def link_info(name: str, netns: str | None = None) -> dict[str, Any]:
    """``ip -j link show`` of one link."""
    args = ["-n", netns] if netns else []
    out = _ip(*args, "-j", "-d", "link", "show", "dev", name).stdout
    info: list[dict[str, Any]] = json.loads(out)
    return info[0]


def links_in(netns: str) -> list[str]:
    out = _ip("-n", netns, "-j", "link", "show").stdout
    return [entry["ifname"] for entry in json.loads(out)]
