"""kndkit.config: DraNet's validation rules (each accepted and refused) and merge rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kndkit.config import (
    NetdevConfig,
    check_device_support,
    merge_netdev_config,
    normalize_mac,
    parse_netdev_config,
)
from kndkit.errors import InvalidArgument
from kndkit.k8s.errors import ConfigError

# (case id, raw configuration) that must validate.
VALID: list[tuple[str, dict[str, Any]]] = [
    ("empty", {}),
    ("name 15 chars", {"interface": {"name": "a" * 15}}),
    ("name safe chars", {"interface": {"name": "net_1.a-B"}}),
    ("name empty = default", {"interface": {"name": ""}}),
    ("addresses v4+v6", {"interface": {"addresses": ["10.0.0.2/24", "fd00::2/64"]}}),
    ("dhcp false with addresses", {"interface": {"dhcp": False, "addresses": ["10.0.0.2/24"]}}),
    ("dhcp alone", {"interface": {"dhcp": True}}),
    ("mtu 68", {"interface": {"mtu": 68}}),
    ("mtu 9000", {"interface": {"mtu": 9000}}),
    ("mac colon", {"interface": {"hardwareAddr": "02:00:00:00:00:01"}}),
    ("mac dash", {"interface": {"hardwareAddr": "02-00-00-00-00-01"}}),
    ("mac dot", {"interface": {"hardwareAddr": "0200.0000.0001"}}),
    (
        "gso/gro sizes",
        {
            "interface": {
                "gsoMaxSize": 65536,
                "groMaxSize": 1,
                "gsoIPv4MaxSize": 2,
                "groIPv4MaxSize": 524280,
            }
        },
    ),
    ("ebpf off", {"interface": {"disableEbpfPrograms": True}}),
    *[(f"arpIgnore {v}", {"interface": {"arpIgnore": v}}) for v in (0, 1, 2, 3, 8)],
    *[(f"arpAnnounce {v}", {"interface": {"arpAnnounce": v}}) for v in (0, 1, 2)],
    ("vrf", {"interface": {"vrf": {"name": "blue", "table": 100}}}),
    ("vrf table 252", {"interface": {"vrf": {"name": "blue", "table": 252}}}),
    ("vrf table 256", {"interface": {"vrf": {"name": "blue", "table": 256}}}),
    ("vrf without table", {"interface": {"vrf": {"name": "blue"}}}),
    ("route universe", {"routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.1"}]}),
    (
        "route scope 0",
        {"routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.1", "scope": 0}]},
    ),
    ("route scope link (253)", {"routes": [{"destination": "10.1.0.0/16", "scope": 253}]}),
    ("route scope link (name)", {"routes": [{"destination": "10.1.0.0/16", "scope": "link"}]}),
    (
        "route v6",
        {
            "routes": [
                {
                    "destination": "fd01::/64",
                    "gateway": "fd00::1",
                    "source": "fd00::2",
                    "table": 100,
                }
            ]
        },
    ),
    ("route default", {"routes": [{"destination": "0.0.0.0/0", "gateway": "10.0.0.1"}]}),
    ("rule", {"rules": [{"priority": 100, "source": "10.0.0.0/24", "table": 100}]}),
    ("rule priority 0", {"rules": [{"priority": 0, "table": 100}]}),
    ("rule priority 32767", {"rules": [{"priority": 32767, "table": 100}]}),
    ("rule v6", {"rules": [{"source": "fd00::/64", "destination": "fd01::/64", "table": 7}]}),
    (
        "vrf + routes",
        {
            "interface": {"vrf": {"name": "v", "table": 10}},
            "routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.1"}],
        },
    ),
    ("neighbor", {"neighbors": [{"destination": "10.0.0.1", "hardwareAddr": "02:00:00:00:00:09"}]}),
    (
        "neighbor v6",
        {"neighbors": [{"destination": "fd00::1", "hardwareAddr": "02:00:00:00:00:09"}]},
    ),
    (
        "ethtool",
        {
            "ethtool": {
                "features": {"rx-checksum": False, "tx-checksum-ip-generic": True},
                "privateFlags": {"disable-fw-lldp": True},
            }
        },
    ),
    ("profile", {"profile": "fast"}),
]

# (case id, raw configuration, the field path the error must name).
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level field", {"bogus": 1}, "bogus"),
    ("unknown interface field", {"interface": {"mtuu": 9000}}, "interface.mtuu"),
    (
        "snake_case name refused",
        {"interface": {"hardware_addr": "02:00:00:00:00:01"}},
        "interface.hardware_addr",
    ),
    (
        "unknown route field",
        {"routes": [{"destination": "10.0.0.0/8", "via": "x"}]},
        "routes[0].via",
    ),
    ("name 16 chars", {"interface": {"name": "a" * 16}}, "interface.name"),
    ("name with slash", {"interface": {"name": "a/b"}}, "interface.name"),
    ("name with space", {"interface": {"name": "a b"}}, "interface.name"),
    ("name dot", {"interface": {"name": "."}}, "interface.name"),
    ("name dotdot", {"interface": {"name": ".."}}, "interface.name"),
    ("name unicode", {"interface": {"name": "né"}}, "interface.name"),
    ("name not a string", {"interface": {"name": 5}}, "interface.name"),
    ("address not CIDR", {"interface": {"addresses": ["10.0.0.2"]}}, "interface.addresses[0]"),
    (
        "address garbage",
        {"interface": {"addresses": ["10.0.0.2/24", "x/1"]}},
        "interface.addresses[1]",
    ),
    (
        "address prefix too long",
        {"interface": {"addresses": ["10.0.0.2/33"]}},
        "interface.addresses[0]",
    ),
    (
        "dhcp with addresses",
        {"interface": {"dhcp": True, "addresses": ["10.0.0.2/24"]}},
        "interface.dhcp",
    ),
    ("dhcp not a bool", {"interface": {"dhcp": "yes"}}, "interface.dhcp"),
    ("mtu 67", {"interface": {"mtu": 67}}, "interface.mtu"),
    ("mtu string", {"interface": {"mtu": "9000"}}, "interface.mtu"),
    ("mtu float", {"interface": {"mtu": 9000.5}}, "interface.mtu"),
    ("mtu bool", {"interface": {"mtu": True}}, "interface.mtu"),
    ("mac garbage", {"interface": {"hardwareAddr": "02:00:00:00:00"}}, "interface.hardwareAddr"),
    (
        "mac multicast",
        {"interface": {"hardwareAddr": "01:00:5e:00:00:01"}},
        "interface.hardwareAddr",
    ),
    ("mac zero", {"interface": {"hardwareAddr": "00:00:00:00:00:00"}}, "interface.hardwareAddr"),
    ("gsoMaxSize 0", {"interface": {"gsoMaxSize": 0}}, "interface.gsoMaxSize"),
    ("groMaxSize -1", {"interface": {"groMaxSize": -1}}, "interface.groMaxSize"),
    ("gsoIPv4MaxSize 0", {"interface": {"gsoIPv4MaxSize": 0}}, "interface.gsoIPv4MaxSize"),
    ("groIPv4MaxSize 0", {"interface": {"groIPv4MaxSize": 0}}, "interface.groIPv4MaxSize"),
    *[
        (f"arpIgnore {v}", {"interface": {"arpIgnore": v}}, "interface.arpIgnore")
        for v in (-1, 4, 7, 9)
    ],
    *[
        (f"arpAnnounce {v}", {"interface": {"arpAnnounce": v}}, "interface.arpAnnounce")
        for v in (-1, 3)
    ],
    ("vrf without name", {"interface": {"vrf": {"table": 100}}}, "interface.vrf.name"),
    (
        "vrf bad name",
        {"interface": {"vrf": {"name": "a" * 16, "table": 100}}},
        "interface.vrf.name",
    ),
    *[
        (f"vrf table {t}", {"interface": {"vrf": {"name": "v", "table": t}}}, "interface.vrf.table")
        for t in (0, -1, 253, 254, 255)
    ],
    ("route without destination", {"routes": [{"gateway": "10.0.0.1"}]}, "routes[0].destination"),
    (
        "route destination not CIDR",
        {"routes": [{"destination": "10.0.0.0", "gateway": "10.0.0.1"}]},
        "routes[0].destination",
    ),
    (
        "route scope host",
        {"routes": [{"destination": "10.0.0.0/8", "scope": 254}]},
        "routes[0].scope",
    ),
    (
        "route scope name host",
        {"routes": [{"destination": "10.0.0.0/8", "scope": "host"}]},
        "routes[0].scope",
    ),
    (
        "universe route without gateway",
        {"routes": [{"destination": "10.0.0.0/8"}]},
        "routes[0].gateway",
    ),
    (
        "second route bad",
        {
            "routes": [
                {"destination": "10.0.0.0/8", "gateway": "10.0.0.1"},
                {"destination": "10.2.0.0/16", "scope": 0},
            ]
        },
        "routes[1].gateway",
    ),
    (
        "route gateway family",
        {"routes": [{"destination": "10.0.0.0/8", "gateway": "fd00::1"}]},
        "routes[0].gateway",
    ),
    (
        "route source family",
        {"routes": [{"destination": "fd01::/64", "gateway": "fd00::1", "source": "10.0.0.2"}]},
        "routes[0].source",
    ),
    (
        "route gateway garbage",
        {"routes": [{"destination": "10.0.0.0/8", "gateway": "x"}]},
        "routes[0].gateway",
    ),
    (
        "route table negative",
        {"routes": [{"destination": "10.0.0.0/8", "gateway": "10.0.0.1", "table": -1}]},
        "routes[0].table",
    ),
    ("rule priority -1", {"rules": [{"priority": -1, "table": 100}]}, "rules[0].priority"),
    ("rule priority 32768", {"rules": [{"priority": 32768, "table": 100}]}, "rules[0].priority"),
    ("rule without table", {"rules": [{"priority": 10}]}, "rules[0].table"),
    ("rule source not CIDR", {"rules": [{"source": "banana", "table": 100}]}, "rules[0].source"),
    (
        "rule families",
        {"rules": [{"source": "10.0.0.0/8", "destination": "fd00::/64", "table": 1}]},
        "rules[0].destination",
    ),
    (
        "rules with vrf",
        {"interface": {"vrf": {"name": "v", "table": 10}}, "rules": [{"table": 100}]},
        "rules",
    ),
    (
        "neighbor without destination",
        {"neighbors": [{"hardwareAddr": "02:00:00:00:00:01"}]},
        "neighbors[0].destination",
    ),
    (
        "neighbor destination garbage",
        {"neighbors": [{"destination": "10.0.0.0/24", "hardwareAddr": "02:00:00:00:00:01"}]},
        "neighbors[0].destination",
    ),
    (
        "neighbor without mac",
        {"neighbors": [{"destination": "10.0.0.1"}]},
        "neighbors[0].hardwareAddr",
    ),
    (
        "neighbor bad mac",
        {"neighbors": [{"destination": "10.0.0.1", "hardwareAddr": "zz"}]},
        "neighbors[0].hardwareAddr",
    ),
    (
        "ethtool feature not bool",
        {"ethtool": {"features": {"rx-checksum": "on"}}},
        "ethtool.features.rx-checksum",
    ),
    (
        "ethtool bad name",
        {"ethtool": {"features": {"rx checksum": True}}},
        "ethtool.features['rx checksum']",
    ),
    ("ethtool unknown key", {"ethtool": {"offloads": {}}}, "ethtool.offloads"),
    ("routes not a list", {"routes": {"destination": "10.0.0.0/8"}}, "routes"),
    ("profile not a string", {"profile": 3}, "profile"),
]


@pytest.mark.parametrize(("raw"), [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid(raw: dict[str, Any]) -> None:
    cfg = parse_netdev_config(raw)
    assert isinstance(cfg, NetdevConfig)
    # the JSON form validates again to the same model
    assert parse_netdev_config(cfg.to_json()) == cfg


@pytest.mark.parametrize(("raw", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_netdev_config(raw, claim="ns/c", request="nic", device="eth1")
    err = info.value
    assert err.field == field
    assert isinstance(err, InvalidArgument)
    assert field in str(err)
    assert "claim ns/c" in str(err) and "'nic'" in str(err) and "eth1" in str(err)
    assert (err.claim, err.request, err.device) == ("ns/c", "nic", "eth1")


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_netdev_config({"interface": {"mtu": 1, "arpIgnore": 5}, "rules": [{"table": 0}]})
    msg = str(info.value)
    assert "interface.mtu" in msg and "interface.arpIgnore" in msg and "rules[0].table" in msg


def test_normalised_values() -> None:
    cfg = parse_netdev_config(
        {
            "interface": {"hardwareAddr": "02-AB-00-00-00-01"},
            "routes": [{"destination": "10.1.2.3/16", "scope": 253, "gateway": ""}],
            "rules": [{"source": "10.0.0.9/24", "table": 5}],
            "neighbors": [{"destination": "fd00:0::1", "hardwareAddr": "02AB.0000.0002"}],
        }
    )
    assert cfg.interface.hardware_addr == "02:ab:00:00:00:01"
    assert cfg.routes[0].destination == "10.1.0.0/16"
    assert cfg.routes[0].scope == "link" and cfg.routes[0].gateway is None
    assert cfg.routes[0].table == 0
    assert cfg.rules[0].source == "10.0.0.0/24" and cfg.rules[0].priority is None
    assert cfg.neighbors[0].destination == "fd00::1"
    assert cfg.neighbors[0].hardware_addr == "02:ab:00:00:00:02"
    assert cfg.interface.name is None


def test_none_is_empty() -> None:
    assert parse_netdev_config(None) == NetdevConfig()


def test_normalize_mac() -> None:
    assert normalize_mac("AA:BB:CC:DD:EE:FF") == "aa:bb:cc:dd:ee:ff"
    for bad in ("aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:ff", "aabbccddeeff", "gg:bb:cc:dd:ee:ff"):
        with pytest.raises(ValueError, match="not a MAC"):
            normalize_mac(bad)


# -- device support -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"interface": {"name": "ib0"}}, "interface.name"),
        ({"interface": {"addresses": ["10.0.0.2/24"]}}, "interface.addresses"),
        ({"interface": {"mtu": 2044}}, "interface.mtu"),
        ({"interface": {"hardwareAddr": "02:00:00:00:00:01"}}, "interface.hardwareAddr"),
        ({"interface": {"dhcp": False}}, "interface.dhcp"),
        ({"interface": {"gsoMaxSize": 1}}, "interface.gsoMaxSize"),
        ({"interface": {"groMaxSize": 1}}, "interface.groMaxSize"),
        ({"interface": {"gsoIPv4MaxSize": 1}}, "interface.gsoIPv4MaxSize"),
        ({"interface": {"groIPv4MaxSize": 1}}, "interface.groIPv4MaxSize"),
        ({"interface": {"disableEbpfPrograms": False}}, "interface.disableEbpfPrograms"),
        ({"interface": {"arpIgnore": 1}}, "interface.arpIgnore"),
        ({"interface": {"arpAnnounce": 1}}, "interface.arpAnnounce"),
        ({"interface": {"vrf": {"name": "v"}}}, "interface.vrf"),
        ({"routes": [{"destination": "10.0.0.0/8", "scope": "link"}]}, "routes"),
        ({"rules": [{"table": 3}]}, "rules"),
        (
            {"neighbors": [{"destination": "10.0.0.1", "hardwareAddr": "02:00:00:00:00:01"}]},
            "neighbors",
        ),
        ({"ethtool": {}}, "ethtool"),
    ],
)
def test_ib_only_refuses_netdev_fields(raw: dict[str, Any], field: str) -> None:
    cfg = parse_netdev_config(raw)
    check_device_support(cfg, has_netdev=True, dhcp_supported=True)  # fine with a netdev
    with pytest.raises(ConfigError, match="no network interface") as info:
        check_device_support(cfg, has_netdev=False, device="mlx5_0")
    assert info.value.field == field
    assert "mlx5_0" in str(info.value)


def test_ib_only_takes_empty_or_profile() -> None:
    check_device_support(parse_netdev_config({}), has_netdev=False)
    check_device_support(parse_netdev_config({"profile": "p"}), has_netdev=False)


def test_dhcp_refused_unless_supported() -> None:
    cfg = parse_netdev_config({"interface": {"dhcp": True}})
    with pytest.raises(ConfigError, match="dhcp is not supported") as info:
        check_device_support(cfg, has_netdev=True)
    assert info.value.field == "interface.dhcp"
    check_device_support(cfg, has_netdev=True, dhcp_supported=True)
    check_device_support(parse_netdev_config({"interface": {"dhcp": False}}), has_netdev=True)


# -- merge ----------------------------------------------------------------------

MERGES: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
    ("no layers", [], {}),
    ("one layer", [{"interface": {"mtu": 1500}}], {"interface": {"mtu": 1500}}),
    (
        "scalar overridden",
        [{"interface": {"mtu": 1500, "name": "a"}}, {"interface": {"mtu": 9000}}],
        {"interface": {"mtu": 9000, "name": "a"}},
    ),
    (
        "null unsets",
        [{"interface": {"mtu": 1500}}, {"interface": {"mtu": None}}],
        {"interface": {"mtu": None}},
    ),
    (
        "addresses appended, deduped",
        [
            {"interface": {"addresses": ["10.0.0.1/24", "10.0.0.2/24"]}},
            {"interface": {"addresses": ["10.0.0.3/24", "10.0.0.1/24"]}},
        ],
        {"interface": {"addresses": ["10.0.0.2/24", "10.0.0.3/24", "10.0.0.1/24"]}},
    ),
    (
        "routes by destination+table, claim wins",
        [
            {
                "routes": [
                    {"destination": "10.1.0.0/16", "gateway": "10.0.0.1"},
                    {"destination": "10.2.0.0/16", "gateway": "10.0.0.1", "table": 5},
                ]
            },
            {
                "routes": [
                    {"destination": "10.1.0.0/16", "gateway": "10.0.0.9"},
                    {"destination": "10.2.0.0/16", "gateway": "10.0.0.1"},
                ]
            },
        ],
        {
            "routes": [
                {"destination": "10.2.0.0/16", "gateway": "10.0.0.1", "table": 5},
                {"destination": "10.1.0.0/16", "gateway": "10.0.0.9"},
                {"destination": "10.2.0.0/16", "gateway": "10.0.0.1"},
            ]
        },
    ),
    (
        "route table 0 equals unset",
        [
            {"routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.1", "table": 0}]},
            {"routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.2"}]},
        ],
        {"routes": [{"destination": "10.1.0.0/16", "gateway": "10.0.0.2"}]},
    ),
    (
        "neighbours by destination",
        [
            {"neighbors": [{"destination": "10.0.0.1", "hardwareAddr": "02:00:00:00:00:01"}]},
            {
                "neighbors": [
                    {"destination": "10.0.0.1", "hardwareAddr": "02:00:00:00:00:02"},
                    {"destination": "10.0.0.3", "hardwareAddr": "02:00:00:00:00:03"},
                ]
            },
        ],
        {
            "neighbors": [
                {"destination": "10.0.0.1", "hardwareAddr": "02:00:00:00:00:02"},
                {"destination": "10.0.0.3", "hardwareAddr": "02:00:00:00:00:03"},
            ]
        },
    ),
    (
        "rules appended, not deduped",
        [{"rules": [{"table": 5}]}, {"rules": [{"table": 5}]}],
        {"rules": [{"table": 5}, {"table": 5}]},
    ),
    (
        "ethtool maps merged key by key",
        [
            {"ethtool": {"features": {"a": True, "b": True}}},
            {"ethtool": {"features": {"b": False}, "privateFlags": {"p": True}}},
        ],
        {"ethtool": {"features": {"a": True, "b": False}, "privateFlags": {"p": True}}},
    ),
    (
        "vrf merged key by key",
        [{"interface": {"vrf": {"name": "v", "table": 10}}}, {"interface": {"vrf": {"table": 11}}}],
        {"interface": {"vrf": {"name": "v", "table": 11}}},
    ),
    (
        "type change replaces",
        [{"routes": [{"destination": "x"}]}, {"routes": "oops"}],
        {"routes": "oops"},
    ),
    (
        "malformed entries kept for validation",
        [{"routes": [1, 1]}, {"routes": [1]}],
        {"routes": [1, 1, 1]},
    ),
    (
        "three layers",
        [{"interface": {"mtu": 1}}, {"interface": {"mtu": 2}}, {"profile": "x"}],
        {"interface": {"mtu": 2}, "profile": "x"},
    ),
]


@pytest.mark.parametrize(("layers", "want"), [c[1:] for c in MERGES], ids=[c[0] for c in MERGES])
def test_merge(layers: list[dict[str, Any]], want: dict[str, Any]) -> None:
    before = copy.deepcopy(layers)
    assert merge_netdev_config(layers) == want
    assert layers == before  # inputs untouched


def test_merge_then_parse_class_under_claim() -> None:
    cls = {
        "interface": {"mtu": 9000, "arpIgnore": 1},
        "ethtool": {"features": {"rx-gro-hw": False}},
    }
    claim = {
        "interface": {"name": "net7", "addresses": ["10.0.0.2/24"]},
        "routes": [{"destination": "0.0.0.0/0", "gateway": "10.0.0.1"}],
    }
    cfg = parse_netdev_config(merge_netdev_config([cls, claim]))
    assert cfg.interface.mtu == 9000 and cfg.interface.name == "net7"
    assert cfg.interface.arp_ignore == 1
    assert cfg.ethtool is not None and cfg.ethtool.features == {"rx-gro-hw": False}
    assert [r.destination for r in cfg.routes] == ["0.0.0.0/0"]
