"""Unit tests of kndkit.k8s's pure functions (no API server)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kndkit.errors import InvalidArgument
from kndkit.k8s import (
    AllocatedDevice,
    Claim,
    ClaimNotAllocated,
    ConfigError,
    DeviceStatus,
    PodRef,
    PublishStats,
    SlicePublisher,
    config_for_request,
    merge_parameters,
    parse_config,
    validate_device_status,
)
from kndkit.k8s.claims import claim_from_object
from kndkit.k8s.publisher import _content, plan_placement, slice_name_prefix
from kndkit.k8s.status import device_status_entry

DRIVER = "netdev.kndkit.dev"

# ---------------------------------------------------------------- placement


def test_placement_splits_at_the_limit_in_name_order() -> None:
    names = [f"d{i:03d}" for i in range(300)]
    got = plan_placement(names, {}, limit=128, prefix="n-x")
    assert list(got) == ["n-x-0", "n-x-1", "n-x-2"]
    assert [len(v) for v in got.values()] == [128, 128, 44]
    assert got["n-x-0"][0] == "d000" and got["n-x-2"][-1] == "d299"


def test_placement_keeps_devices_where_they_are() -> None:
    current = {"s-0": ["a", "b"], "s-1": ["c", "d"]}
    got = plan_placement(["a", "b", "c", "d", "e"], current, limit=3, prefix="s")
    assert got == {"s-0": ["a", "b", "e"], "s-1": ["c", "d"]}
    # Removing a device touches only its slice.
    got = plan_placement(["a", "b", "d"], current, limit=3, prefix="s")
    assert got == {"s-0": ["a", "b"], "s-1": ["d"]}
    # A slice left empty goes; nothing left -> no slices.
    assert plan_placement(["a"], current, limit=3, prefix="s") == {"s-0": ["a"]}
    assert plan_placement([], current, limit=3, prefix="s") == {}


def test_placement_duplicate_goes_to_first_slice_and_new_names_fill_gaps() -> None:
    current = {"s-1": ["a", "b"], "s-0": ["b"]}
    got = plan_placement(["a", "b", "c", "d"], current, limit=2, prefix="s")
    assert got["s-1"] == ["a", "b"]
    assert got["s-0"] == ["c", "d"]
    got = plan_placement(["a", "b", "c", "d", "e"], {"s-1": ["a", "b"]}, limit=2, prefix="s")
    assert got == {"s-1": ["a", "b"], "s-0": ["c", "d"], "s-2": ["e"]}
    with pytest.raises(InvalidArgument):
        plan_placement(["a"], {}, limit=0, prefix="s")


@settings(max_examples=200, deadline=None)
@given(
    devices=st.sets(st.text("abcdef", min_size=1, max_size=3), max_size=60),
    current=st.dictionaries(
        st.sampled_from([f"s-{i}" for i in range(6)]),
        st.lists(st.text("abcdef", min_size=1, max_size=3), max_size=12),
        max_size=6,
    ),
    limit=st.integers(1, 10),
)
def test_placement_places_every_device_once_within_the_limit(
    devices: set[str], current: dict[str, list[str]], limit: int
) -> None:
    got = plan_placement(sorted(devices), current, limit=limit, prefix="s")
    placed = [d for devs in got.values() for d in devs]
    assert sorted(placed) == sorted(devices)
    assert all(0 < len(devs) <= limit for devs in got.values())
    # Nothing moves out of a slice that keeps it (first holder, within the limit).
    for name, devs in current.items():
        kept = [d for d in dict.fromkeys(devs) if d in devices][:limit]
        for d in kept:
            first = next(n for n, ds in current.items() if d in ds)
            if first == name:
                assert d in got.get(name, []), (d, name, got)


def test_slice_name_prefix_is_dns_safe() -> None:
    assert slice_name_prefix(DRIVER, "Node.Example_1") == "node-example-1-netdev-kndkit-dev"


def test_content_ignores_generation_and_server_fields() -> None:
    a: dict[str, Any] = {
        "metadata": {"name": "x", "resourceVersion": "1", "ownerReferences": [{"uid": "u"}]},
        "spec": {
            "driver": DRIVER,
            "nodeName": "n",
            "pool": {"name": "n", "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "d"}],
        },
    }
    b = {
        **a,
        "metadata": {**a["metadata"], "resourceVersion": "9", "uid": "z"},
        "spec": {**a["spec"], "pool": {"name": "n", "generation": 5, "resourceSliceCount": 1}},
    }
    assert _content(a) == _content(b)
    c = {**a, "spec": {**a["spec"], "devices": [{"name": "e"}]}}
    assert _content(a) != _content(c)


def test_publish_stats_arithmetic() -> None:
    s = PublishStats(1, 2, 3) + PublishStats(1, 0, 0)
    assert (s.creates, s.updates, s.deletes, s.writes) == (2, 2, 3, 7)
    assert (s - PublishStats(2, 2, 3)).writes == 0


@pytest.mark.parametrize(
    ("driver", "node", "interval"),
    [("Bad_Driver", "n", 1.0), (DRIVER, "", 1.0), (DRIVER, "n", -1.0)],
)
def test_publisher_refuses_bad_arguments(driver: str, node: str, interval: float) -> None:
    with pytest.raises(InvalidArgument):
        SlicePublisher(None, driver, node, min_interval=interval)  # type: ignore[arg-type]


# ---------------------------------------------------------------- config merge


def test_merge_parameters_is_recursive_and_pure() -> None:
    base = {"mtu": 1500, "vlan": {"id": 10, "trunk": True}, "routes": [1, 2]}
    over = {"vlan": {"id": 20}, "routes": [3]}
    assert merge_parameters(base, over) == {
        "mtu": 1500,
        "vlan": {"id": 20, "trunk": True},
        "routes": [3],
    }
    assert base["vlan"] == {"id": 10, "trunk": True}


def _entry(
    source: str, params: Any, requests: list[str] | None = None, driver: str = DRIVER
) -> Any:
    e: dict[str, Any] = {"source": source, "opaque": {"driver": driver, "parameters": params}}
    if requests is not None:
        e["requests"] = requests
    return e


def test_config_for_request_class_first_claim_overrides_filtered() -> None:
    entries = [
        _entry("FromClaim", {"mtu": 9000}, ["fast"]),
        _entry("FromClaim", {"vlan": {"id": 20}}),
        _entry("FromClass", {"mtu": 1500, "vlan": {"id": 10, "trunk": True}}),
        _entry("FromClaim", {"mtu": 1}, driver="other.example.com"),
        {"source": "FromClaim", "requests": []},  # no opaque part
    ]
    assert config_for_request(entries, DRIVER, "plain") == {
        "mtu": 1500,
        "vlan": {"id": 20, "trunk": True},
    }
    assert config_for_request(entries, DRIVER, "fast") == {
        "mtu": 9000,
        "vlan": {"id": 20, "trunk": True},
    }
    # A subrequest result is covered by configuration for its parent request.
    assert config_for_request(entries, DRIVER, "fast/sub")["mtu"] == 9000
    assert config_for_request([], DRIVER, "x") == {}


def test_config_that_is_not_an_object_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        config_for_request([_entry("FromClaim", [1, 2])], DRIVER, "nic", claim="ns/c")
    assert err.value.claim == "ns/c" and err.value.request == "nic"
    assert "ns/c" in str(err.value) and "'nic'" in str(err.value)


class Vlan(pydantic.BaseModel):
    id: int = pydantic.Field(ge=1, le=4094)


class Cfg(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    mtu: int = 1500
    vlans: list[Vlan] = []


def test_parse_config_names_nested_field_paths() -> None:
    dev = AllocatedDevice(
        "nic", "pool", "eth1", config={"vlans": [{"id": 5}, {"id": 9999}]}, claim="ns/c"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(dev, Cfg)
    e = err.value
    assert e.field == "vlans[1].id"
    assert (e.claim, e.request, e.device) == ("ns/c", "nic", "eth1")
    assert "vlans[1].id" in str(e) and "ns/c" in str(e) and "pool/eth1" in str(e)
    assert isinstance(e, InvalidArgument)
    assert parse_config(AllocatedDevice("nic", "p", "d", config={"mtu": 9000}), Cfg).mtu == 9000


def test_claim_from_object() -> None:
    obj = {
        "metadata": {"namespace": "ns", "name": "c", "uid": "u1", "resourceVersion": "7"},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "a", "driver": DRIVER, "pool": "n1", "device": "eth1"},
                        {"request": "b", "driver": "gpu.example.com", "pool": "n1", "device": "g"},
                        {
                            "request": "c",
                            "driver": DRIVER,
                            "pool": "n1",
                            "device": "eth2",
                            "shareID": "s1",
                            "adminAccess": True,
                        },
                    ],
                    "config": [_entry("FromClaim", {"mtu": 9000}, ["c"])],
                }
            },
            "reservedFor": [
                {"resource": "pods", "name": "p", "uid": "pu"},
                {"apiGroup": "example.com", "resource": "pods", "name": "x", "uid": "xu"},
            ],
        },
    }
    claim = claim_from_object(obj, DRIVER)
    assert isinstance(claim, Claim)
    assert claim.pods == (PodRef("ns", "p", "pu"),)
    assert [(d.request, d.device, d.share_id, d.admin_access) for d in claim.devices] == [
        ("a", "eth1", None, False),
        ("c", "eth2", "s1", True),
    ]
    assert claim.devices[0].config == {} and claim.devices[1].config == {"mtu": 9000}
    assert claim.resource_version == "7" and claim.ref().uid == "u1"
    with pytest.raises(ClaimNotAllocated):
        claim_from_object({"metadata": {"name": "c"}, "status": {}}, DRIVER)


# ---------------------------------------------------------------- device status


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"interface_name": "x" * 257}, "interfaceName"),
        ({"ips": [f"10.0.0.{i}/24" for i in range(17)]}, "ips"),
        ({"ips": ["10.0.0.1"]}, r"ips\[0\]"),
        ({"ips": ["10.0.0.1/24", "10.0.0.1/24"]}, "twice"),
        ({"ips": ["nonsense/24"]}, r"ips\[0\]"),
        ({"ips": "10.0.0.1/24"}, "not a string"),
        ({"hardware_address": "a" * 129}, "hardwareAddress"),
        ({"data": {"x": "y" * 10300}}, "data"),
        ({"data": {"x": object()}}, "data"),
        ({"reason": "not camel"}, "reason"),
        (
            {"conditions": [{"type": f"T{i}", "status": "True", "reason": "R"} for i in range(8)]},
            "9 conditions",
        ),
        ({"conditions": [{"type": "Ready", "status": "True", "reason": "R"}]}, "twice"),
        ({"conditions": [{"type": "X", "status": "yes", "reason": "R"}]}, "status"),
    ],
)
def test_device_status_limits(kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises(InvalidArgument, match=text) as err:
        validate_device_status(DeviceStatus("pool", "eth1", **kwargs))
    assert "pool/eth1" in str(err.value)


def test_device_status_at_the_limits_is_valid() -> None:
    validate_device_status(
        DeviceStatus(
            "pool",
            "eth1",
            interface_name="x" * 256,
            ips=[f"10.0.0.{i}/24" for i in range(15)] + ["fd00::1/64"],
            hardware_address="a" * 128,
            data={"x": "y" * 10000},
            conditions=[{"type": f"T{i}", "status": "True", "reason": "R"} for i in range(7)],
        )
    )


def test_device_status_entry_keeps_transition_time_while_status_holds() -> None:
    ds = DeviceStatus("p", "d", share_id="s", interface_name="net1", ready=False, reason="NoVF")
    first = device_status_entry(ds, DRIVER, now="2026-01-01T00:00:00Z", generation=3)
    assert first == {
        "driver": DRIVER,
        "pool": "p",
        "device": "d",
        "shareID": "s",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "NoVF",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "networkData": {"interfaceName": "net1"},
    }
    same = device_status_entry(ds, DRIVER, previous=first, now="2026-02-02T00:00:00Z")
    assert same["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    ds.ready = True
    ds.reason = ""
    flipped = device_status_entry(ds, DRIVER, previous=first, now="2026-02-02T00:00:00Z")
    assert flipped["conditions"][0]["lastTransitionTime"] == "2026-02-02T00:00:00Z"
    assert flipped["conditions"][0]["reason"] == "Ready"
    assert "observedGeneration" not in flipped["conditions"][0]
