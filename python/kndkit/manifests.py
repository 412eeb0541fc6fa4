"""``kndkit manifests <driver>``: what a cluster needs to run a driver.

For a bundled driver (``hello``, ``netdev``, ``macvlan``, ``rdma``) or a driver
class (``package.module:Class`` or ``path/to/file.py:Class``) it prints, as one
multi-document YAML:

* a ``Namespace`` (leave it out with ``--no-namespace``);
* a ``ServiceAccount``, and a ``ClusterRole`` + ``ClusterRoleBinding`` that give
  it exactly what the node agent does: ResourceSlices (get, list, watch, create,
  update, patch, delete), ResourceClaims (get, list, watch), ResourceClaim
  status (update, patch; for ``status.devices`` also the synthetic
  ``resourceclaims/driver`` subresource of this driver, with the
  ``associated-node:`` verbs: only claims allocated on the agent's own node),
  its Node (get) and Events (create, patch);
* a ``ValidatingAdmissionPolicy`` + binding that confine the account's
  ResourceSlice writes to slices of its own driver on its own node. RBAC cannot
  scope ResourceSlices by node (the node authorizer does that for kubelets
  only), so without the policy one node's agent could overwrite another node's
  slices. The node comes from the pod-bound service-account token (its
  ``authentication.kubernetes.io/node-name`` extra), so a token not bound to a
  pod on a node cannot write slices at all. Leave it out with
  ``--no-admission-policy``;
* a ``DeviceClass`` named after the driver, selecting ``device.driver == "<driver>"``;
* the ``DaemonSet``: ``kndkit run <driver>`` with JSON logs, privileged (moving
  links between network namespaces needs ``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN``
  in the host's user namespace: the agent cannot run as non-root), host network,
  the kubelet's plugin and registration directories, the NRI socket directory,
  ``/var/run/netns`` (``HostToContainer`` propagation, so pod namespaces created
  after the agent started are visible), ``/dev/infiniband``, ``/sys``,
  ``/sys/fs/bpf`` and the state directory ``/var/lib/kndkit``; liveness on
  ``/healthz`` and readiness on ``/readyz`` of the metrics port; a 128 MiB memory
  limit (``--memory-limit``). No host PID namespace by default: containerd and
  CRI-O hand NRI the pod's network namespace as a file under ``/var/run/netns``;
  ``--host-pid`` is for runtimes that give ``/proc/<pid>/ns/net`` paths.

``--output-dir DIR`` writes ``DIR/<first label of the driver name>.yaml`` instead
of printing. ``--only`` picks parts (``namespace``, ``rbac``, ``policy``,
``deviceclass``, ``daemonset``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import pathlib
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kndkit._native import __version__
from kndkit.errors import InvalidArgument, KndError

__all__ = [
    "BUNDLED_NAMES",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_NAMESPACE",
    "PARTS",
    "ManifestOptions",
    "add_parser",
    "build",
    "command_for",
    "default_image",
    "driver_name_of",
    "header_for",
    "render",
]

log = logging.getLogger("kndkit.manifests")

DEFAULT_NAMESPACE = "kndkit-system"
DEFAULT_METRICS_PORT = 9177
DEFAULT_MEMORY_LIMIT = "128Mi"
PARTS = ("namespace", "rbac", "policy", "deviceclass", "daemonset")

# DRA driver names of the bundled examples, used only while kndkit.examples (the
# registry of bundled drivers) cannot be imported.
BUNDLED_NAMES: Mapping[str, str] = {
    "hello": "hello.kndkit.dev",
    "netdev": "netdev.kndkit.dev",
    "macvlan": "macvlan.kndkit.dev",
    "rdma": "rdma.kndkit.dev",
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = "kndkit.dev/driver"


def default_image() -> str:
    """``kndkit:<version>``: the image ``deploy/Dockerfile`` builds, tagged with this version."""
    return f"kndkit:{__version__}"


# --------------------------------------------------------------------------- driver lookup


def _bundled_registry() -> Mapping[str, Any] | None:
    try:
        mod = importlib.import_module("kndkit.examples")
    except ModuleNotFoundError as e:
        if e.name != "kndkit.examples":
            raise
        return None
    reg = getattr(mod, "BUNDLED", None)
    return reg if isinstance(reg, Mapping) else None


def _load_class(spec: str) -> Any:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise InvalidArgument(f"driver {spec!r}: expected a bundled name or module:Class")
    if target.endswith(".py") or "/" in target:
        path = pathlib.Path(target)
        if not path.is_file():
            raise InvalidArgument(f"driver {spec!r}: no file {path}")
        mod_name = f"_kndkit_manifests_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise InvalidArgument(f"driver {spec!r}: cannot load {path}")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise InvalidArgument(f"driver {spec!r}: loading {path} failed: {e!r}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise InvalidArgument(f"driver {spec!r}: no module {e.name!r}") from e
        except Exception as e:
            raise InvalidArgument(f"driver {spec!r}: importing {target} failed: {e!r}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidArgument(f"driver {spec!r}: module {target} has no {attr!r}") from None


def driver_name_of(spec: str) -> str:
    """The DRA driver name (the class's ``name``) of a driver spec.

    ``spec`` is a bundled name or ``module:Class`` / ``file.py:Class``; the
    class is imported to read its ``name``.

    Raises:
        InvalidArgument: unknown bundled name, missing module or class, or a
            class without a valid ``name``.
    """
    if ":" not in spec:
        registry = _bundled_registry()
        if registry is not None and spec in registry:
            entry = registry[spec]
            try:
                cls = _load_class(entry) if isinstance(entry, str) else entry
            except InvalidArgument:
                if spec not in BUNDLED_NAMES:
                    raise
                # A bundled example not importable here (a partial install): its
                # name is known anyway.
                log.debug("bundled driver %s not importable; using its known name", spec)
                return BUNDLED_NAMES[spec]
        elif registry is None and spec in BUNDLED_NAMES:
            return BUNDLED_NAMES[spec]
        else:
            known = sorted(registry if registry is not None else BUNDLED_NAMES)
            raise InvalidArgument(
                f"driver {spec!r}: not a bundled driver ({', '.join(known)}) nor module:Class"
            )
    else:
        cls = _load_class(spec)
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"driver {spec!r}: {cls!r} has no driver name (class attribute name)")
    return name


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class ManifestOptions:
    """What :func:`build` renders.

    Attributes:
        driver: the driver as ``kndkit run`` takes it (bundled name or ``module:Class``).
        driver_name: its DRA driver name (``netdev.kndkit.dev``).
        namespace: namespace of the ServiceAccount and the DaemonSet.
        image: the agent's container image.
        app_name: name of the ServiceAccount, ClusterRole(Binding), policy and
            DaemonSet; default ``kndkit-<first label of driver_name>``.
        metrics_port: port of ``/metrics``, ``/healthz`` and ``/readyz`` on the
            node (host network: distinct per driver on a node).
        host_pid: run in the host's PID namespace.
        set_params: ``KEY=VALUE`` driver parameters passed as ``--set``.
        image_pull_policy: the container's ``imagePullPolicy``.
        memory_limit: the container's memory limit (``128Mi``, ``256Mi``, ``1Gi``...).
    """

    driver: str
    driver_name: str
    namespace: str = DEFAULT_NAMESPACE
    image: str = field(default_factory=default_image)
    app_name: str = ""
    metrics_port: int = DEFAULT_METRICS_PORT
    host_pid: bool = False
    set_params: tuple[str, ...] = ()
    image_pull_policy: str = "IfNotPresent"
    memory_limit: str = DEFAULT_MEMORY_LIMIT

    def __post_init__(self) -> None:
        if not self.app_name:
            object.__setattr__(self, "app_name", f"kndkit-{self.driver_name.split('.')[0]}")
        if not _DNS_SUBDOMAIN.match(self.driver_name) or len(self.driver_name) > 63:
            raise InvalidArgument(
                f"driver name {self.driver_name!r} is not a DNS subdomain of at most 63 characters"
            )
        if not _DNS_LABEL.match(self.namespace) or len(self.namespace) > 63:
            raise InvalidArgument(f"namespace {self.namespace!r} is not a DNS label")
        if not _DNS_LABEL.match(self.app_name) or len(self.app_name) > 52:
            raise InvalidArgument(
                f"name {self.app_name!r} is not a DNS label of at most 52 characters"
                " (the DaemonSet's pods append a suffix)"
            )
        if not 1 <= self.metrics_port <= 65535:
            raise InvalidArgument(f"metrics port {self.metrics_port} is outside 1-65535")
        if not self.image or any(c.isspace() for c in self.image):
            raise InvalidArgument(f"image {self.image!r} is empty or contains whitespace")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise InvalidArgument(f"imagePullPolicy {self.image_pull_policy!r} is not valid")
        if not re.fullmatch(r"[1-9][0-9]*(Ki|Mi|Gi)", self.memory_limit):
            raise InvalidArgument(
                f"memory limit {self.memory_limit!r}: expected a whole number of Ki, Mi or Gi"
            )
        for kv in self.set_params:
            if "=" not in kv or not kv.partition("=")[0]:
                raise InvalidArgument(f"--set {kv!r}: expected KEY=VALUE")


def _labels(o: ManifestOptions) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": o.app_name,
        "app.kubernetes.io/component": "network-driver",
        "app.kubernetes.io/part-of": "kndkit",
        _LABEL_KEY: o.driver_name,
    }


def _meta(o: ManifestOptions, name: str, *, namespaced: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = o.namespace
    meta["labels"] = _labels(o)
    return meta


def _namespace(o: ManifestOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": o.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "kndkit",
                # The agent is privileged: namespaces enforcing a stricter Pod
                # Security level by default would refuse its pods.
                "pod-security.kubernetes.io/enforce": "privileged",
            },
        },
    }


def _rbac(o: ManifestOptions) -> list[tuple[str, dict[str, Any]]]:
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(o, o.app_name, namespaced=True),
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta(o, o.app_name, namespaced=False),
        "rules": [
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceslices"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceclaims"],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceclaims/status"],
                "verbs": ["update", "patch"],
            },
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceclaims/driver"],
                "resourceNames": [o.driver_name],
                "verbs": ["associated-node:update", "associated-node:patch"],
            },
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            {
                "apiGroups": ["", "events.k8s.io"],
                "resources": ["events"],
                "verbs": ["create", "patch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(o, o.app_name, namespaced=False),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": o.app_name,
        },
        "subjects": [{"kind": "ServiceAccount", "name": o.app_name, "namespace": o.namespace}],
    }
    return [
        ("The node agent's identity.", sa),
        (
            "What the agent does and nothing more: publish its node's ResourceSlices, read\n"
            "the claims allocated to it, report device status (status.devices also needs\n"
            "the resourceclaims/driver subresource named by the driver: associated-node\n"
            "verbs cover only claims allocated on the agent's own node), read its Node\n"
            "(the slices' owner) and record Events. No Secrets, no Pods.\n"
            "RBAC cannot scope resourceslices by node: the ResourceSlice admission policy\n"
            "of `kndkit manifests` does.",
            role,
        ),
        ("", binding),
    ]


def _policy(o: ManifestOptions) -> list[tuple[str, dict[str, Any]]]:
    name = f"{o.app_name}-resourceslices"
    user = f"system:serviceaccount:{o.namespace}:{o.app_name}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": _meta(o, name, namespaced=False),
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["resource.k8s.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                        "resources": ["resourceslices"],
                    }
                ]
            },
            "matchConditions": [
                {"name": "driver-agent", "expression": f"request.userInfo.username == {user!r}"}
            ],
            "variables": [
                {
                    "name": "nodeName",
                    "expression": (
                        "request.userInfo.extra[?'authentication.kubernetes.io/node-name']"
                        "[0].orValue('')"
                    ),
                },
                {
                    "name": "slice",
                    "expression": "request.operation == 'DELETE' ? oldObject : object",
                },
            ],
            "validations": [
                {
                    "expression": "variables.nodeName != ''",
                    "message": (
                        "ResourceSlices are written only with a token bound to the"
                        " driver's pod on a node"
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": (
                        "variables.slice.spec.?nodeName.orValue('') == variables.nodeName"
                        " && (request.operation != 'UPDATE'"
                        " || oldObject.spec.?nodeName.orValue('') == variables.nodeName)"
                    ),
                    "messageExpression": (
                        "'this agent writes only the ResourceSlices of its own node '"
                        " + variables.nodeName"
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": f"variables.slice.spec.driver == {o.driver_name!r}",
                    "message": f"this agent writes only ResourceSlices of driver {o.driver_name}",
                    "reason": "Forbidden",
                },
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": _meta(o, name, namespaced=False),
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [
        (
            "Confines the agent's ResourceSlice writes to slices of its driver on its own\n"
            "node (the node named in its pod-bound token).",
            policy,
        ),
        ("", binding),
    ]


def _device_class(o: ManifestOptions) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": _meta(o, o.driver_name, namespaced=False),
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{o.driver_name}"'}}]},
    }


_HOST_PATHS: tuple[tuple[str, str, str, str | None], ...] = (
    # (volume name, host path = mount path, hostPath type, mountPropagation)
    ("kubelet-plugins", "/var/lib/kubelet/plugins", "DirectoryOrCreate", None),
    ("kubelet-registry", "/var/lib/kubelet/plugins_registry", "DirectoryOrCreate", None),
    ("nri", "/var/run/nri", "DirectoryOrCreate", None),
    ("netns", "/var/run/netns", "DirectoryOrCreate", "HostToContainer"),
    ("infiniband", "/dev/infiniband", "DirectoryOrCreate", "HostToContainer"),
    ("sys", "/sys", "Directory", None),
    ("bpf", "/sys/fs/bpf", "DirectoryOrCreate", "HostToContainer"),
    ("state", "/var/lib/kndkit", "DirectoryOrCreate", None),
)


def _daemonset(o: ManifestOptions) -> dict[str, Any]:
    args = [
        "--log-format",
        "json",
        "run",
        o.driver,
        "--node-name",
        "$(NODE_NAME)",
        "--metrics-port",
        str(o.metrics_port),
    ]
    for kv in o.set_params:
        args += ["--set", kv]
    mounts = []
    for vol, path, _, prop in _HOST_PATHS:
        m: dict[str, Any] = {"name": vol, "mountPath": path}
        if prop:
            m["mountPropagation"] = prop
        mounts.append(m)
    volumes = [
        {"name": vol, "hostPath": {"path": path, "type": typ}} for vol, path, typ, _ in _HOST_PATHS
    ]

    def downward(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "metrics"},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        }

    pod_spec: dict[str, Any] = {
        "serviceAccountName": o.app_name,
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"operator": "Exists"}],
        "terminationGracePeriodSeconds": 30,
        "containers": [
            {
                "name": "driver",
                "image": o.image,
                "imagePullPolicy": o.image_pull_policy,
                "command": ["kndkit"],
                "args": args,
                "env": [
                    downward("NODE_NAME", "spec.nodeName"),
                    downward("POD_NAME", "metadata.name"),
                    downward("POD_NAMESPACE", "metadata.namespace"),
                    downward("POD_UID", "metadata.uid"),
                    # Fewer glibc malloc arenas: a few MiB less RSS under load
                    # (benches/rss_driver.py), more on nodes with many CPUs.
                    {"name": "MALLOC_ARENA_MAX", "value": "2"},
                ],
                "ports": [{"name": "metrics", "containerPort": o.metrics_port, "protocol": "TCP"}],
                "startupProbe": probe("/healthz", 2, 30),
                "livenessProbe": probe("/healthz", 10, 3),
                "readinessProbe": probe("/readyz", 5, 2),
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi"},
                    "limits": {"memory": o.memory_limit},
                },
                "securityContext": {"privileged": True},
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if o.host_pid:
        pod_spec["hostPID"] = True
    selector = {"app.kubernetes.io/name": o.app_name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(o, o.app_name, namespaced=True),
        "spec": {
            "selector": {"matchLabels": selector},
            # One agent per node at a time: the metrics port is on the host network.
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "template": {"metadata": {"labels": _labels(o)}, "spec": pod_spec},
        },
    }


def build(
    options: ManifestOptions, parts: Iterable[str] = PARTS
) -> list[tuple[str, dict[str, Any]]]:
    """The objects for ``options``, in apply order, each with a comment (may be empty).

    Raises:
        InvalidArgument: an unknown part name.
    """
    chosen = set(parts)
    unknown = sorted(chosen - set(PARTS))
    if unknown:
        raise InvalidArgument(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    o = options
    out: list[tuple[str, dict[str, Any]]] = []
    if "namespace" in chosen:
        out.append(("", _namespace(o)))
    if "rbac" in chosen:
        out += _rbac(o)
    if "policy" in chosen:
        out += _policy(o)
    if "deviceclass" in chosen:
        out.append(
            (
                f"Selects this driver's devices in claims: deviceClassName {o.driver_name}.",
                _device_class(o),
            )
        )
    if "daemonset" in chosen:
        out.append(("The node agent: one per node.", _daemonset(o)))
    return out


def render(docs: Sequence[tuple[str, Mapping[str, Any]]], *, header: str = "") -> str:
    """Multi-document YAML of ``docs``, each after its comment, ``header`` on top."""
    chunks = []
    if header:
        chunks.append("".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()))
    for i, (comment, obj) in enumerate(docs):
        text = "" if i == 0 else "---\n"
        text += "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
        text += yaml.safe_dump(dict(obj), sort_keys=False, default_flow_style=False, width=120)
        chunks.append(text)
    return "".join(chunks)


def command_for(options: ManifestOptions, parts: Iterable[str] = PARTS) -> str:
    """The ``kndkit manifests`` command line that renders ``options`` and ``parts``."""
    o = options
    argv = ["kndkit", "manifests", o.driver]
    if o.driver_name != _default_name(o.driver):
        argv += ["--driver-name", o.driver_name]
    if o.namespace != DEFAULT_NAMESPACE:
        argv += ["--namespace", o.namespace]
    if o.image != default_image():
        argv += ["--image", o.image]
    if o.image_pull_policy != "IfNotPresent":
        argv += ["--image-pull-policy", o.image_pull_policy]
    if o.app_name != f"kndkit-{o.driver_name.split('.')[0]}":
        argv += ["--name", o.app_name]
    if o.metrics_port != DEFAULT_METRICS_PORT:
        argv += ["--metrics-port", str(o.metrics_port)]
    if o.memory_limit != DEFAULT_MEMORY_LIMIT:
        argv += ["--memory-limit", o.memory_limit]
    if o.host_pid:
        argv.append("--host-pid")
    for kv in o.set_params:
        argv += ["--set", kv]
    chosen = [p for p in PARTS if p in set(parts)]
    if chosen != list(PARTS):
        argv += ["--only", ",".join(chosen)]
    return " ".join(shlex.quote(a) for a in argv)


def _default_name(driver: str) -> str | None:
    try:
        return driver_name_of(driver)
    except Exception:
        return None


def header_for(options: ManifestOptions, parts: Iterable[str] = PARTS) -> str:
    """The comment on top of a generated file: what it is and how to regenerate it."""
    return (
        f"Generated by kndkit {__version__}; do not edit, regenerate with:\n"
        f"  {command_for(options, parts)}\n"
        f"Driver {options.driver_name}, namespace {options.namespace}, image {options.image}."
    )


# --------------------------------------------------------------------------- CLI


def _cmd(args: argparse.Namespace) -> int:
    driver_name = args.driver_name or driver_name_of(args.driver)
    parts = list(PARTS)
    if args.only:
        parts = [p.strip() for p in ",".join(args.only).split(",") if p.strip()]
    if args.no_namespace and "namespace" in parts:
        parts.remove("namespace")
    if args.no_admission_policy and "policy" in parts:
        parts.remove("policy")
    options = ManifestOptions(
        driver=args.driver,
        driver_name=driver_name,
        namespace=args.namespace,
        image=args.image or default_image(),
        app_name=args.name or "",
        metrics_port=args.metrics_port,
        host_pid=args.host_pid,
        set_params=tuple(args.set or ()),
        image_pull_policy=args.image_pull_policy,
        memory_limit=args.memory_limit,
    )
    docs = build(options, parts)
    text = render(docs, header=header_for(options, parts))
    if args.output_dir:
        out_dir = pathlib.Path(args.output_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{driver_name.split('.')[0]}.yaml"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as e:
            raise KndError(f"cannot write manifests to {out_dir}: {e}") from e
        log.info("wrote %s (%d objects)", path, len(docs))
        print(path)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``kndkit manifests`` on the ``kndkit`` command's subparsers."""
    p = sub.add_parser(
        "manifests",
        help="print the DaemonSet, RBAC and DeviceClass for a driver",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("driver", help="bundled driver (hello, netdev, macvlan, rdma) or module:Class")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of the agent")
    p.add_argument("--image", default=None, help="agent image (default: kndkit:<version>)")
    p.add_argument(
        "--image-pull-policy", default="IfNotPresent", choices=["Always", "IfNotPresent", "Never"]
    )
    p.add_argument("--output-dir", help="write DIR/<driver label>.yaml instead of printing")
    p.add_argument(
        "--name", help="name of the account, role and DaemonSet (default: kndkit-<driver label>)"
    )
    p.add_argument("--driver-name", help="DRA driver name (default: the class's name)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"metrics/health port on the node (default {DEFAULT_METRICS_PORT})",
    )
    p.add_argument(
        "--memory-limit",
        default=DEFAULT_MEMORY_LIMIT,
        help=f"the agent's memory limit (default {DEFAULT_MEMORY_LIMIT})",
    )
    p.add_argument("--host-pid", action="store_true", help="run in the host PID namespace")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="driver parameter")
    p.add_argument(
        "--only", action="append", metavar="PARTS", help=f"comma list of {', '.join(PARTS)}"
    )
    p.add_argument("--no-namespace", action="store_true", help="leave the Namespace out")
    p.add_argument(
        "--no-admission-policy", action="store_true", help="leave the ResourceSlice policy out"
    )
    p.set_defaults(func=_cmd)
