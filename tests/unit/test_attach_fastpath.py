"""The RunPodSandbox fast path: what the driver does around the one native attach.

Store lookups that decode only the pod's own claims, the phase change that does
not rewrite the record, parsed plans kept per claim (and dropped when the
claim's stored plans differ or it is unprepared), and the ATTACHING record
committed before the kernel is touched. Real kernel (veth "NICs" in a private
host namespace, pods as namespaces) and a real StateStore.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kndkit import plan as plan_mod
from kndkit import state as state_mod
from kndkit._native import NetNs
from kndkit.dra.types import ClaimRef
from kndkit.driver import DriverOptions
from kndkit.errors import InvalidArgument
from kndkit.examples.hello import Hello
from kndkit.k8s.claims import AllocatedDevice, Claim, PodRef
from kndkit.nri.model import Namespace, Pod
from kndkit.plan import InterfacePlan
from kndkit.state import (
    AttachmentRecord,
    AttachPhase,
    ClaimPhase,
    ClaimRecord,
    StateError,
    StateStore,
)

NODE = "node-fp"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


# --------------------------------------------------------------------------- store


@pytest.fixture
def store() -> Iterator[StateStore]:
    tmp = tempfile.mkdtemp(prefix="knd-fp-", dir="/tmp")
    st = StateStore(os.path.join(tmp, "state.db"))
    try:
        yield st
    finally:
        st.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _rec(uid: str, pods: list[str], phase: ClaimPhase = ClaimPhase.PREPARED) -> ClaimRecord:
    plans = [InterfacePlan.macvlan(f"dev-{uid}", "eth0").to_json()]
    return ClaimRecord.for_claim(
        ClaimRef("ns", f"claim-{uid}", uid), phase, plans=plans, pod_uids=pods
    )


def test_claims_of_pod_exact_membership(store: StateStore) -> None:
    store.put(_rec("a", ["pod-1"]))
    store.put(_rec("b", ["pod-10"]))  # "pod-1" is a substring of it
    store.put(_rec("c", ["x", "pod-1"]))  # shared claim
    store.put(_rec("d", ["pod-1"], ClaimPhase.PREPARING))  # not prepared
    store.put(_rec("e", ['we"ird\\uid']))
    assert [r.uid for r in store.claims_of_pod("pod-1")] == ["a", "c"]
    assert [r.uid for r in store.claims_of_pod("pod-10")] == ["b"]
    assert [r.uid for r in store.claims_of_pod('we"ird\\uid')] == ["e"]
    assert store.claims_of_pod("pod-") == []
    assert store.claims_of_pod("") == []
    # the same answer as filtering every record
    for pod in ("pod-1", "pod-10", "x", "nope"):
        want = [r.uid for r in store.list() if r.phase is ClaimPhase.PREPARED and pod in r.pod_uids]
        assert [r.uid for r in store.claims_of_pod(pod)] == want


def test_claims_of_pod_decodes_only_matches(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):
        store.put(_rec(f"u{i}", [f"pod-{i}"]))
    decoded: list[str] = []
    real = StateStore._row

    def counting(self: StateStore, row: Any) -> ClaimRecord:
        decoded.append(str(row[0]))
        return real(self, row)

    monkeypatch.setattr(StateStore, "_row", counting)
    assert store.claims_of_pod("no-such-pod") == []
    assert decoded == []
    assert [r.uid for r in store.claims_of_pod("pod-7")] == ["u7"]
    assert decoded == ["u7"]


def test_pod_records_reads_attachment_and_claims(store: StateStore) -> None:
    assert store.pod_records("pod-1") == (None, [])
    store.put(_rec("a", ["pod-1"]))
    store.put(_rec("b", ["pod-10"]))
    att, claims = store.pod_records("pod-1")
    assert att is None and [c.uid for c in claims] == ["a"]
    store.put_attachment(
        AttachmentRecord("pod-1", "ns/p", "/run/netns/p", AttachPhase.ATTACHED, ("a",), [])
    )
    att, claims = store.pod_records("pod-1")
    assert att is not None and att.phase is AttachPhase.ATTACHED
    assert att == store.get_attachment("pod-1")
    assert claims == store.claims_of_pod("pod-1")
    assert not store._db.in_transaction  # the read transaction is closed
    # a write right after works (no read transaction left open)
    store.delete_attachment("pod-1")
    assert store.pod_records("pod-1")[0] is None


def test_set_attachment_phase_and_count(store: StateStore) -> None:
    assert store.attachment_count() == 0
    plans = [InterfacePlan.macvlan("d", "eth0").to_json()]
    rec = AttachmentRecord("p1", "ns/p1", "/run/netns/x", AttachPhase.ATTACHING, ("c1",), plans)
    stored = store.put_attachment(rec, sync=False)
    store.put_attachment(AttachmentRecord("p2", "ns/p2", "/x", AttachPhase.ATTACHED))
    assert store.attachment_count() == 2
    updated = store.set_attachment_phase("p1", AttachPhase.ATTACHED, sync=False)
    got = store.get_attachment("p1")
    assert got is not None
    assert got.phase is AttachPhase.ATTACHED
    assert got.updated_at == updated >= stored.updated_at
    assert got.created_at == stored.created_at
    assert (got.plans, got.claim_uids, got.netns, got.pod_ref) == (
        stored.plans,
        ("c1",),
        "/run/netns/x",
        "ns/p1",
    )
    # another connection sees the committed phase
    other = StateStore(store.path)
    try:
        again = other.get_attachment("p1")
        assert again is not None and again.phase is AttachPhase.ATTACHED
    finally:
        other.close()
    with pytest.raises(StateError, match="no attachment record of pod nope"):
        store.set_attachment_phase("nope", AttachPhase.DETACHING)
    with pytest.raises(InvalidArgument, match="not an AttachPhase"):
        store.set_attachment_phase("p1", "attached")  # type: ignore[arg-type]
    got2 = store.get_attachment("p1")
    assert got2 is not None and got2.phase is AttachPhase.ATTACHED
    store.delete_attachment("p2")
    assert store.attachment_count() == 1


# --------------------------------------------------------------------------- driver


@dataclass
class Host:
    name: str
    fabric: str
    path: str
    nics: list[str]
    tmp: str
    pods: list[str]

    def new_pod_ns(self) -> str:
        name = f"{self.name}-p{len(self.pods)}"
        _ip("netns", "add", name)
        self.pods.append(name)
        return f"/run/netns/{name}"

    def link_names(self, ns_path: str | None = None) -> set[str]:
        from kndkit import netlink

        with NetNs.open(ns_path or self.path) as ns:
            return {lk["name"] for lk in netlink.dump_links(ns)}


@pytest.fixture
def host() -> Iterator[Host]:
    tag = f"kfp{os.getpid() % 10000}"
    name, fabric = f"{tag}-h", f"{tag}-f"
    _ip("netns", "add", name)
    _ip("netns", "add", fabric)
    tmp = tempfile.mkdtemp(prefix="knd-fpd-", dir="/tmp")
    h = Host(name, fabric, f"/run/netns/{name}", [], tmp, [])
    try:
        for i in range(2):
            nic = f"{tag}n{i}"
            _ip("-n", name, "link", "add", nic, "type", "veth", "peer", "name", f"p{i}",
                "netns", fabric)  # fmt: skip
            _ip("-n", name, "link", "set", nic, "up")
            h.nics.append(nic)
        yield h
    finally:
        for p in h.pods:
            subprocess.run(["ip", "netns", "del", p], check=False)
        subprocess.run(["ip", "netns", "del", fabric], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _driver(h: Host) -> Hello:
    return Hello(
        DriverOptions(node_name=NODE, host_netns=h.path, state_dir=h.tmp, metrics_port=None)
    )


def _claim(device: str, uid: str, pod_uid: str = "pod-0") -> Claim:
    return Claim(
        namespace="ns",
        name=f"claim-{uid}",
        uid=uid,
        pods=(PodRef("ns", "pod0", pod_uid),),
        devices=(
            AllocatedDevice(
                request="nic", pool=NODE, device=device, config={}, claim=f"ns/claim-{uid}"
            ),
        ),
        resource_version="1",
    )


def _pod(netns: str, uid: str = "pod-0") -> Pod:
    return Pod(
        id=f"sb-{uid}",
        name="pod0",
        namespace="ns",
        uid=uid,
        namespaces=(Namespace("network", netns),),
    )


async def _prepare(d: Hello, claim: Claim) -> ClaimRecord:
    prepared = await d.prepare_claim(claim)
    rec = ClaimRecord.for_claim(
        claim.ref(),
        ClaimPhase.PREPARED,
        devices=prepared.devices,
        plans=prepared.plans,
        pod_uids=[p.uid for p in claim.pods],
    )
    return d.open_store().put(rec)


def _count_from_json(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = InterfacePlan.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[InterfacePlan], d: Any) -> InterfacePlan:
        calls.append(str(d.get("device")))
        return real(cls, d)  # type: ignore[no-any-return]

    monkeypatch.setattr(InterfacePlan, "from_json", classmethod(counting))
    return calls


async def test_attach_uses_the_plans_parsed_at_prepare(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _driver(host)
    await d.rescan()
    nic = host.nics[0]
    await _prepare(d, _claim(nic, "c0"))
    calls = _count_from_json(monkeypatch)
    pod_ns = host.new_pod_ns()
    assert await d.attach_pod(_pod(pod_ns)) is True
    assert calls == []  # nothing parsed on the RunPodSandbox path
    assert "net1" in host.link_names(pod_ns)
    assert await d.detach_pod("pod-0") is True
    assert nic in host.link_names()


async def test_changed_stored_plans_are_parsed_again(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache entry is used only while the stored plans are the ones it was made
    from: a record rewritten with other plans (another process, a re-prepare)
    is parsed again and its plans are the ones attached."""
    d = _driver(host)
    await d.rescan()
    nic = host.nics[0]
    rec = await _prepare(d, _claim(nic, "c0"))
    # rewrite the record as another writer would: the pod-side name differs
    assert isinstance(rec.plans, list)
    changed = [dict(p, name="eth9") for p in rec.plans]
    d.open_store().put(ClaimRecord.for_claim(
        rec.ref, ClaimPhase.PREPARED, devices=rec.devices, plans=changed, pod_uids=rec.pod_uids
    ))  # fmt: skip
    calls = _count_from_json(monkeypatch)
    pod_ns = host.new_pod_ns()
    assert await d.attach_pod(_pod(pod_ns)) is True
    assert calls == [nic]
    names = host.link_names(pod_ns)
    assert "eth9" in names and "net1" not in names
    # the refreshed entry serves the next use
    calls.clear()
    stored = d.open_store().get("c0")
    assert stored is not None
    assert [p.name for p in d._claim_plans(stored)] == ["eth9"]
    assert calls == []
    assert await d.detach_pod("pod-0") is True


async def test_unprepare_forgets_the_parsed_plans(host: Host) -> None:
    d = _driver(host)
    await d.rescan()
    rec = await _prepare(d, _claim(host.nics[0], "c0"))
    assert "c0" in d._parsed_plans
    await d.unprepare_claim(rec)
    assert "c0" not in d._parsed_plans


async def test_pod_without_claims_decodes_no_claim(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _driver(host)
    await d.rescan()
    await _prepare(d, _claim(host.nics[0], "c0", pod_uid="pod-a"))
    await _prepare(d, _claim(host.nics[1], "c1", pod_uid="pod-b"))
    decoded: list[str] = []
    real = StateStore._row

    def counting(self: StateStore, row: Any) -> ClaimRecord:
        decoded.append(str(row[0]))
        return real(self, row)

    monkeypatch.setattr(StateStore, "_row", counting)
    pod_ns = host.new_pod_ns()
    assert await d.attach_pod(_pod(pod_ns, uid="pod-other")) is False
    assert decoded == []
    assert d.open_store().get_attachment("pod-other") is None


async def test_attaching_is_committed_before_the_kernel_is_touched(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _driver(host)
    await d.rescan()
    nic = host.nics[0]
    await _prepare(d, _claim(nic, "c0"))
    seen: list[Any] = []
    real_attach = plan_mod.attach

    def checking(plans: Any, pod_ns: NetNs, *, host_ns: NetNs | None = None) -> Any:
        # a second connection (another process would see the same) reads the record
        other = StateStore(d.open_store().path)
        try:
            rec = other.get_attachment("pod-0")
            seen.append(None if rec is None else rec.phase)
        finally:
            other.close()
        assert nic in host.link_names()  # not moved yet
        return real_attach(plans, pod_ns, host_ns=host_ns)

    monkeypatch.setattr("kndkit.driver.attach", checking)
    pod_ns = host.new_pod_ns()
    assert await d.attach_pod(_pod(pod_ns)) is True
    assert seen == [AttachPhase.ATTACHING]
    att = d.open_store().get_attachment("pod-0")
    assert att is not None and att.phase is AttachPhase.ATTACHED
    assert await d.detach_pod("pod-0") is True


def test_state_module_keeps_its_schema() -> None:
    # the fast path adds no table or column: files stay readable by the same schema
    assert state_mod.SCHEMA_VERSION == 2


# --------------------------------------------------------------------------- _same_json


def _reference_same_json(a: Any, b: Any) -> bool:
    """The rule as first written (one isinstance chain), to check the fast version."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(_reference_same_json, a, b))
    if isinstance(a, Mapping):
        return (
            isinstance(b, dict)
            and all(isinstance(k, str) for k in a)
            and a.keys() == b.keys()
            and all(_reference_same_json(a[k], b[k]) for k in a)
        )
    if isinstance(a, bool) or a is None or isinstance(a, str):
        return type(a) is type(b) and a == b
    if isinstance(a, int):
        return type(b) is int and a == b
    if isinstance(a, float):
        return isinstance(b, float) and math.isfinite(a) and a == b
    return False


class _Str(str):
    pass


class _Int(int):
    pass


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.builds(_Str, st.text(max_size=3)),
    st.builds(_Int, st.integers()),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), inner, max_size=4),
        st.dictionaries(st.builds(_Str, st.text(max_size=3)), inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_values, _values)
def test_same_json_matches_the_rule(a: Any, other: Any) -> None:
    try:
        decoded = json.loads(json.dumps(a))
    except (TypeError, ValueError):
        decoded = other
    for b in (decoded, other):
        assert state_mod._same_json(a, b) == _reference_same_json(a, b)
