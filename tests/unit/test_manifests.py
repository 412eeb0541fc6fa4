"""``kndkit manifests``: the objects it renders, its options and errors, and deploy/ up to date."""

from __future__ import annotations

import fnmatch
import importlib
import pathlib
import shlex
import textwrap
from typing import Any

import pytest
import yaml

import kndkit
from kndkit import manifests
from kndkit.cli import build_parser, main
from kndkit.errors import InvalidArgument
from kndkit.manifests import PARTS, ManifestOptions, build, driver_name_of, render

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {d["kind"]: d for d in docs}
    assert len(out) == len(docs), [d["kind"] for d in docs]
    return out


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["manifests", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------- deploy/


@pytest.mark.parametrize("driver", ["hello", "netdev", "macvlan", "rdma"])
def test_committed_deploy_manifests_are_up_to_date(
    driver: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _cli(capsys, driver, "--output-dir", str(tmp_path))
    assert rc == 0
    [written] = out.split()
    fresh = pathlib.Path(written).read_text()
    committed = DEPLOY / pathlib.Path(written).name
    assert committed.exists(), f"{committed} missing: run bash deploy/generate.sh"
    assert committed.read_text() == fresh, f"{committed} is stale: run bash deploy/generate.sh"


def test_committed_rbac_yaml_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "netdev", "--name", "kndkit", "--only", "namespace,rbac")
    assert rc == 0
    assert (DEPLOY / "rbac.yaml").read_text() == out, (
        "deploy/rbac.yaml is stale: run bash deploy/generate.sh"
    )
    kinds = [d["kind"] for d in _docs(out)]
    assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"]


def test_the_header_command_reproduces_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(
        capsys,
        "netdev",
        "--namespace",
        "net-drivers",
        "--image",
        "registry.example/kndkit:dev",
        "--metrics-port",
        "9300",
        "--set",
        "mtu=9000",
        "--host-pid",
        "--memory-limit",
        "1Gi",
        "--no-admission-policy",
    )
    assert rc == 0
    cmd = out.splitlines()[1].lstrip("# ").strip()
    argv = shlex.split(cmd)
    assert argv[:2] == ["kndkit", "manifests"]
    rc, again, _ = _cli(capsys, *argv[2:])
    assert rc == 0 and again == out


# --------------------------------------------------------------------------- contents


def _netdev(**kw: Any) -> dict[str, dict[str, Any]]:
    opts = ManifestOptions(driver="netdev", driver_name="netdev.kndkit.dev", **kw)
    return _by_kind(_docs(render(build(opts))))


def test_rbac_is_least_privilege() -> None:
    k = _netdev()
    sa, role, binding = k["ServiceAccount"], k["ClusterRole"], k["ClusterRoleBinding"]
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == (
        "kndkit-netdev",
        "kndkit-system",
    )
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ()))): set(
            r["verbs"]
        )
        for r in role["rules"]
    }
    assert rules == {
        (("resource.k8s.io",), ("resourceslices",), ()): {
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
        },
        (("resource.k8s.io",), ("resourceclaims",), ()): {"get", "list", "watch"},
        (("resource.k8s.io",), ("resourceclaims/status",), ()): {"update", "patch"},
        (("resource.k8s.io",), ("resourceclaims/driver",), ("netdev.kndkit.dev",)): {
            "associated-node:update",
            "associated-node:patch",
        },
        (("",), ("nodes",), ()): {"get"},
        (("", "events.k8s.io"), ("events",), ()): {"create", "patch"},
    }
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kndkit-netdev", "namespace": "kndkit-system"}
    ]


def test_admission_policy_confines_slices_to_the_agents_node_and_driver() -> None:
    k = _netdev()
    pol, pb = k["ValidatingAdmissionPolicy"], k["ValidatingAdmissionPolicyBinding"]
    assert pb["spec"] == {"policyName": pol["metadata"]["name"], "validationActions": ["Deny"]}
    spec = pol["spec"]
    assert spec["failurePolicy"] == "Fail"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["resourceslices"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    [cond] = spec["matchConditions"]
    assert "system:serviceaccount:kndkit-system:kndkit-netdev" in cond["expression"]
    exprs = " ".join(v["expression"] for v in spec["validations"])
    assert "variables.nodeName" in exprs and "'netdev.kndkit.dev'" in exprs
    assert "--no-admission-policy" not in render(build(ManifestOptions("netdev", "a.b")))
    assert "ValidatingAdmissionPolicy" not in _netdev_parts(["rbac", "daemonset"])


def _netdev_parts(parts: list[str]) -> set[str]:
    opts = ManifestOptions(driver="netdev", driver_name="netdev.kndkit.dev")
    return {d["kind"] for _, d in build(opts, parts)}


def test_device_class_selects_the_driver() -> None:
    dc = _netdev()["DeviceClass"]
    assert dc["metadata"]["name"] == "netdev.kndkit.dev"
    assert dc["spec"]["selectors"] == [
        {"cel": {"expression": 'device.driver == "netdev.kndkit.dev"'}}
    ]


def test_daemonset() -> None:
    k = _netdev()
    ds = k["DaemonSet"]
    assert ds["metadata"]["namespace"] == "kndkit-system"
    tmpl = ds["spec"]["template"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= tmpl["metadata"]["labels"].items()
    pod = tmpl["spec"]
    assert pod["hostNetwork"] is True and "hostPID" not in pod
    assert pod["serviceAccountName"] == k["ServiceAccount"]["metadata"]["name"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    [c] = pod["containers"]
    assert c["image"] == f"kndkit:{kndkit.__version__}"
    assert c["command"] == ["kndkit"]
    args = c["args"]
    assert args[:4] == ["--log-format", "json", "run", "netdev"]
    assert args[args.index("--node-name") + 1] == "$(NODE_NAME)"
    assert args[args.index("--metrics-port") + 1] == "9177"
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", e.get("value"))
        for e in c["env"]
    }
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert env["NODE_NAME"] == "spec.nodeName"
    assert c["securityContext"] == {"privileged": True}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9177, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["resources"]["limits"] == {"memory": "128Mi"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert set(mounts) == {
        "/var/lib/kubelet/plugins",
        "/var/lib/kubelet/plugins_registry",
        "/var/run/nri",
        "/var/run/netns",
        "/dev/infiniband",
        "/sys",
        "/sys/fs/bpf",
        "/var/lib/kndkit",
    }
    for path, m in mounts.items():
        assert vols[m["name"]] == path
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    ns = k["Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_options_change_what_they_should() -> None:
    k = _netdev(
        namespace="nets",
        image="r.example/kndkit:1",
        app_name="agent",
        metrics_port=9300,
        host_pid=True,
        set_params=("mtu=9000", "x=a=b"),
        image_pull_policy="Always",
        memory_limit="256Mi",
    )
    assert k["Namespace"]["metadata"]["name"] == "nets"
    assert k["ServiceAccount"]["metadata"] == {
        **k["ServiceAccount"]["metadata"],
        "name": "agent",
        "namespace": "nets",
    }
    ds = k["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert pod["hostPID"] is True
    assert (c["image"], c["imagePullPolicy"]) == ("r.example/kndkit:1", "Always")
    assert c["args"][-4:] == ["--set", "mtu=9000", "--set", "x=a=b"]
    assert c["ports"][0]["containerPort"] == 9300
    assert c["resources"]["limits"] == {"memory": "256Mi"}
    assert k["ClusterRoleBinding"]["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "agent",
        "namespace": "nets",
    }
    assert "system:serviceaccount:nets:agent" in str(k["ValidatingAdmissionPolicy"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"driver_name": "Bad_Name"}, "driver name 'Bad_Name'"),
        ({"driver_name": "a" * 64 + ".dev"}, "at most 63"),
        ({"namespace": "Kube.System"}, "namespace 'Kube.System'"),
        ({"app_name": "x" * 53}, "at most 52"),
        ({"metrics_port": 0}, "metrics port 0"),
        ({"metrics_port": 70000}, "metrics port 70000"),
        ({"image": "a b"}, "image 'a b'"),
        ({"image_pull_policy": "Sometimes"}, "Sometimes"),
        ({"set_params": ("novalue",)}, "--set 'novalue'"),
        ({"memory_limit": "128M"}, "memory limit '128M'"),
        ({"memory_limit": "0Mi"}, "memory limit '0Mi'"),
        ({"set_params": ("=v",)}, "--set '=v'"),
    ],
)
def test_bad_options_are_named(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"driver": "netdev", "driver_name": "netdev.kndkit.dev", **kw}
    with pytest.raises(InvalidArgument, match=__import__("re").escape(message)):
        ManifestOptions(**args)


def test_parts() -> None:
    assert _netdev_parts(list(PARTS)) == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "DeviceClass",
        "DaemonSet",
    }
    assert _netdev_parts(["deviceclass"]) == {"DeviceClass"}
    with pytest.raises(InvalidArgument, match=r"unknown part.*crds"):
        build(ManifestOptions("netdev", "netdev.kndkit.dev"), ["rbac", "crds"])


def test_cli_flags(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "netdev", "--no-namespace", "--no-admission-policy")
    assert rc == 0
    kinds = [d["kind"] for d in _docs(out)]
    assert kinds == [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DeviceClass",
        "DaemonSet",
    ]
    rc, out, _ = _cli(capsys, "netdev", "--only", "rbac", "--only", "deviceclass")
    assert [d["kind"] for d in _docs(out)] == [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DeviceClass",
    ]
    rc, out, _ = _cli(capsys, "netdev", "--driver-name", "other.example.com")
    dc = _by_kind(_docs(out))["DeviceClass"]
    assert dc["metadata"]["name"] == "other.example.com"
    assert _by_kind(_docs(out))["DaemonSet"]["metadata"]["name"] == "kndkit-other"


def test_cli_errors(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    rc, out, _ = _cli(capsys, "nosuchdriver")
    assert rc == 1 and out == ""
    rc, out, _ = _cli(capsys, "netdev", "--namespace", "Bad")
    assert rc == 1 and out == ""
    rc, out, _ = _cli(capsys, "netdev", "--only", "bogus")
    assert rc == 1 and out == ""


# --------------------------------------------------------------------------- driver lookup


def test_driver_spec_forms(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = tmp_path / "mydrv_km.py"
    mod.write_text(
        textwrap.dedent(
            """
            class Mine:
                name = "mine.example.com"

            class Nameless:
                pass
            """
        )
    )
    assert driver_name_of(f"{mod}:Mine") == "mine.example.com"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert driver_name_of("mydrv_km:Mine") == "mine.example.com"
    with pytest.raises(InvalidArgument, match="has no driver name"):
        driver_name_of("mydrv_km:Nameless")
    with pytest.raises(InvalidArgument, match="has no 'Missing'"):
        driver_name_of("mydrv_km:Missing")
    with pytest.raises(InvalidArgument, match="no module 'nosuch_km'"):
        driver_name_of("nosuch_km:X")
    broken = tmp_path / "broken_km.py"
    broken.write_text("raise RuntimeError('half-written driver')\n")
    with pytest.raises(InvalidArgument, match="half-written driver"):
        driver_name_of(f"{broken}:X")
    with pytest.raises(InvalidArgument, match=r"importing broken_km failed.*half-written"):
        driver_name_of("broken_km:X")
    with pytest.raises(InvalidArgument, match="no file"):
        driver_name_of(f"{tmp_path}/absent.py:X")
    with pytest.raises(
        InvalidArgument, match=r"not a bundled driver \(hello, macvlan, netdev, rdma\)"
    ):
        driver_name_of("nosuchdriver")


@pytest.mark.parametrize("name", sorted(manifests.BUNDLED_NAMES))
def test_bundled_names_match_the_classes(name: str) -> None:
    """The fallback names agree with the bundled classes wherever those import."""
    examples = importlib.import_module("kndkit.examples")
    spec = examples.BUNDLED[name]
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        pytest.skip(f"{spec} not importable yet: {e}")
    assert cls.name == manifests.BUNDLED_NAMES[name]
    assert driver_name_of(name) == cls.name


def test_daemonset_args_parse_with_kndkit_run() -> None:
    """The container's arguments are a valid ``kndkit`` command line."""
    pytest.importorskip("kndkit.runner")
    [c] = _netdev(set_params=("a=b",))["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    args = [a.replace("$(NODE_NAME)", "node-1") for a in c["args"]]
    ns = build_parser().parse_args(args)
    assert ns.command == "run"
    assert getattr(ns, "log_format", None) == "json"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_copies_what_exists_and_is_in_the_build_context() -> None:
    """Every path the build stage copies exists and is not excluded by .dockerignore."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ignored = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copied: list[str] = []
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied += words[1:-1]
    assert {"pyproject.toml", "Cargo.lock", "rust", "crates", "python"} <= set(copied)
    for src in copied:
        assert (REPO / src).exists(), src
        for pat in ignored:
            assert not fnmatch.fnmatch(src, pat.lstrip("*/")), (src, pat)
    # The locally built extension never enters the context (maturin builds its own).
    assert "**/*.so" in ignored
    # The image the manifests name by default is the one the Dockerfile documents.
    assert f"-t kndkit:{kndkit.__version__} ." in dockerfile
    assert 'ENTRYPOINT ["kndkit"]' in dockerfile
