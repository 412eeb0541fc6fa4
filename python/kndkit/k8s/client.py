"""Connecting to the API server with the official asyncio client (``kubernetes.aio``)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from kubernetes.aio import config as k8s_config
from kubernetes.aio.client.exceptions import ApiException

from kndkit.errors import InvalidArgument
from kndkit.k8s._slim import client as k8s
from kndkit.k8s.errors import ResourceAPIUnavailable

__all__ = ["RESOURCE_GROUP", "RESOURCE_VERSION", "check_resource_api", "new_api_client"]

log = logging.getLogger("kndkit.k8s.client")

RESOURCE_GROUP = "resource.k8s.io"
RESOURCE_VERSION = "v1"
_NEEDED_RESOURCES = ("resourceslices", "resourceclaims", "resourceclaims/status")


async def new_api_client(kubeconfig: str | os.PathLike[str] | None = None) -> k8s.ApiClient:
    """An :class:`~kubernetes.aio.client.ApiClient` for the cluster.

    ``kubeconfig`` names a kubeconfig file. Without it: the in-cluster service
    account when ``KUBERNETES_SERVICE_HOST`` is set, else ``$KUBECONFIG``, else
    ``~/.kube/config``. The caller closes the client (``await api.close()``).
    """
    configuration = k8s.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        log.debug("using the in-cluster service account")
    else:
        if kubeconfig is not None:
            path = os.fspath(kubeconfig)
        else:
            env = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            # A KUBECONFIG list (a:b) is not merged: the first file is used.
            path = env.split(os.pathsep)[0]
        if not os.path.isfile(path):
            raise InvalidArgument(f"kubeconfig {path!r} does not exist or is not a file")
        await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, client_configuration=configuration, persist_config=False
        )
        log.debug("using kubeconfig %s", path)
    return k8s.ApiClient(configuration=configuration)


async def check_resource_api(api: k8s.ApiClient) -> None:
    """Raises :class:`ResourceAPIUnavailable` unless the server serves
    ``resource.k8s.io/v1`` with ResourceSlices and ResourceClaims (status included).

    The message says which versions of the group the server does serve, if any.
    """
    groups = await k8s.ApisApi(api).get_api_versions()
    served: list[str] = []
    for group in groups.groups or []:
        if group.name == RESOURCE_GROUP:
            served = [v.version for v in group.versions or []]
    if RESOURCE_VERSION not in served:
        have = (
            f"it serves only {', '.join(f'{RESOURCE_GROUP}/{v}' for v in served)}"
            if served
            else f"it serves no version of {RESOURCE_GROUP}"
        )
        raise ResourceAPIUnavailable(
            f"the API server does not serve {RESOURCE_GROUP}/{RESOURCE_VERSION} (Dynamic Resource"
            f" Allocation, GA in Kubernetes 1.34); {have}. Enable it (kube-apiserver"
            f" --runtime-config={RESOURCE_GROUP}/{RESOURCE_VERSION}=true) or upgrade the cluster"
        )
    resources = await k8s.ResourceV1Api(api).get_api_resources()
    names = {r.name for r in resources.resources or []}
    missing = [r for r in _NEEDED_RESOURCES if r not in names]
    if missing:
        raise ResourceAPIUnavailable(
            f"the API server serves {RESOURCE_GROUP}/{RESOURCE_VERSION} without"
            f" {', '.join(missing)}"
        )


def to_dict(api: k8s.ApiClient, obj: Any) -> dict[str, Any]:
    """A generated model as the JSON the API server speaks (wire names, no nulls)."""
    out = api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    if not isinstance(out, dict):
        raise TypeError(f"expected an object, got {type(out).__name__}")
    return out


def status_body(body: object) -> tuple[dict[str, Any] | None, str]:
    """A failed call's response body: the decoded ``Status`` object (None if the
    body is not a JSON object) and the body as text."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not isinstance(body, str) or not body:
        return None, ""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, body
    return (doc if isinstance(doc, dict) else None), body


def api_error_text(e: ApiException) -> str:
    """The API server's own ``Status.message`` of a failed call (else the HTTP reason)."""
    doc, text = status_body(e.body)
    if doc is not None:
        if doc.get("message"):
            return str(doc["message"])
    elif text:
        return text[:2000]
    return f"HTTP {e.status} {e.reason}"


def api_error_reason(e: ApiException) -> str:
    """The ``Status.reason`` of a failed call (``"Conflict"``, ``"AlreadyExists"``...)."""
    doc, _ = status_body(e.body)
    return str(doc.get("reason", "")) if doc is not None else ""
