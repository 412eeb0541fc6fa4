"""kndkit.ipam: node-local IPAM on real SQLite files, with real concurrent processes."""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kndkit.errors import InvalidArgument, KndError
from kndkit.ipam import Ipam, IpamError, IpamExhausted, Lease, parse_range

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="knd-ipam-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("spec", "norm", "first", "last", "prefix"),
    [
        ("10.0.0.0/24", "10.0.0.0/24", "10.0.0.1", "10.0.0.254", 24),
        (" 10.0.0.0/30 ", "10.0.0.0/30", "10.0.0.1", "10.0.0.2", 30),
        ("10.0.0.0/31", "10.0.0.0/31", "10.0.0.0", "10.0.0.1", 31),
        ("10.0.0.7/32", "10.0.0.7/32", "10.0.0.7", "10.0.0.7", 32),
        ("10.0.0.10-10.0.0.50", "10.0.0.10-10.0.0.50/26", "10.0.0.10", "10.0.0.50", 26),
        ("10.0.0.10-10.0.0.50/24", "10.0.0.10-10.0.0.50/24", "10.0.0.10", "10.0.0.50", 24),
        ("10.0.0.0-10.0.0.255/24", "10.0.0.0-10.0.0.255/24", "10.0.0.1", "10.0.0.254", 24),
        ("fd00::/120", "fd00::/120", "fd00::1", "fd00::ff", 120),
        ("fd00::5-fd00::9", "fd00::5-fd00::9/124", "fd00::5", "fd00::9", 124),
    ],
)
def test_parse_range(spec: str, norm: str, first: str, last: str, prefix: int) -> None:
    r = parse_range(spec)
    assert r.spec == norm
    assert str(r.first) == first and str(r.last) == last
    assert r.network.prefixlen == prefix
    assert r.size == int(r.last) - int(r.first) + 1


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "expected"),
        ("10.0.0.1/24", "not a CIDR"),  # host bits set
        ("10.0.0.0/33", "not a CIDR"),
        ("banana", "not a CIDR"),
        ("10.0.0.9-10.0.0.1", "after end"),
        ("10.0.0.1-fd00::1", "different families"),
        ("10.0.0.1-10.0.1.1/24", "outside"),
        ("10.0.0.1-10.0.0.x", "not an IP address"),
        ("10.0.0.1-10.0.0.5/x", "bad prefix"),
        ("10.0.0.1-10.0.0.5/40", "out of range"),
        ("10.0.0.0-10.0.0.0/30", "no usable address"),
    ],
)
def test_parse_range_refuses(spec: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words) as e:
        parse_range(spec)
    assert repr(spec) in str(e.value) or spec == ""


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_parse_range_cidr_never_hands_out_network_or_broadcast(base: int, plen: int) -> None:
    net = ipaddress.IPv4Network((base, plen), strict=False)
    r = parse_range(str(net))
    lo, hi = int(net.network_address), int(net.broadcast_address)
    assert lo <= int(r.first) <= int(r.last) <= hi
    if plen <= 30:
        assert (int(r.first), int(r.last)) == (lo + 1, hi - 1)


def test_bad_configuration_is_refused_before_creating_anything(tmp: Path) -> None:
    path = tmp / "sub" / "ipam.sqlite"
    cases = [
        ([], {}, "at least one range"),
        (["10.0.0.0/24", "10.0.0.128/25"], {}, "overlap"),
        (["10.0.0.0/24"], {"gateway": "10.1.0.1"}, "outside the network"),
        (["10.0.0.0/24"], {"gateway": "fd00::1"}, "outside the network"),
        (["10.0.0.0/24"], {"gateway": ["10.0.0.1", "10.0.0.2"]}, "two IPv4 gateways"),
        (["10.0.0.0/24"], {"gateway": "nope"}, "not an IP address"),
        (["10.0.0.0/24"], {"exclude": ["10.0.0.x"]}, "not an address or CIDR"),
    ]
    for ranges, kw, words in cases:
        with pytest.raises(InvalidArgument, match=words):
            Ipam(path, ranges, **kw)  # type: ignore[arg-type]
    assert not path.parent.exists()


# --------------------------------------------------------------------------- allocation


def test_allocate_excludes_gateway_and_exclusions_and_is_idempotent(tmp: Path) -> None:
    with Ipam(
        tmp / "i.sqlite",
        ["192.168.5.0/29"],
        gateway="192.168.5.1",
        exclude=["192.168.5.2", "192.168.5.4/31"],
    ) as ipam:
        a = ipam.allocate("claim-a/dev0")
        assert a.addresses == ("192.168.5.3/29",)
        assert a.gateways == ("192.168.5.1",)
        assert a.ips == ("192.168.5.3",)
        assert ipam.allocate("claim-a/dev0") == a  # same owner, same lease
        b = ipam.allocate("claim-b/dev0")
        assert b.addresses == ("192.168.5.6/29",)
        with pytest.raises(IpamExhausted, match=r"IPv4 .*claim-c/dev0.*192\.168\.5\.0/29"):
            ipam.allocate("claim-c/dev0")
        assert ipam.get("claim-c/dev0") is None
        assert ipam.free() == 0
        assert {lease.owner for lease in ipam.leases()} == {"claim-a/dev0", "claim-b/dev0"}
        assert len(ipam) == 2


def test_dual_stack_and_count(tmp: Path) -> None:
    with Ipam(
        tmp / "i.sqlite", ["fd00:1::/120", "10.9.0.0/24"], gateway=["10.9.0.1", "fd00:1::1"]
    ) as ipam:
        lease = ipam.allocate("o", count=2)
        assert lease.addresses == (
            "10.9.0.2/24",
            "10.9.0.3/24",
            "fd00:1::2/120",
            "fd00:1::3/120",
        )
        assert lease.gateways == ("10.9.0.1", "fd00:1::1")
        assert lease.ranges == ("10.9.0.0/24",) * 2 + ("fd00:1::/120",) * 2
        assert lease.to_json() == {
            "owner": "o",
            "addresses": list(lease.addresses),
            "gateways": ["10.9.0.1", "fd00:1::1"],
        }
        for bad in (0, -1, True, 1.5):
            with pytest.raises(InvalidArgument, match="count"):
                ipam.allocate("p", count=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="owner"):
            ipam.allocate("")


def test_exhaustion_of_one_family_allocates_nothing(tmp: Path) -> None:
    with Ipam(tmp / "i.sqlite", ["10.0.0.0/24", "fd00::1-fd00::1/64"]) as ipam:
        ipam.allocate("first")
        with pytest.raises(
            IpamExhausted, match=r"IPv6 address for second in range fd00::1-fd00::1/64"
        ):
            ipam.allocate("second")
        assert ipam.get("second") is None
        assert ipam.free(4) == 253


def test_several_ranges_are_used_in_order(tmp: Path) -> None:
    with Ipam(tmp / "i.sqlite", ["10.0.0.1-10.0.0.2/24", "10.0.1.0/30"]) as ipam:
        got = [ipam.allocate(f"o{i}").addresses[0] for i in range(4)]
        assert got == ["10.0.0.1/24", "10.0.0.2/24", "10.0.1.1/30", "10.0.1.2/30"]
        with pytest.raises(
            IpamExhausted, match=r"ranges 10\.0\.0\.1-10\.0\.0\.2/24, 10\.0\.1\.0/30"
        ):
            ipam.allocate("o5")


def test_release_is_idempotent_and_reuse_is_round_robin(tmp: Path) -> None:
    with Ipam(tmp / "i.sqlite", ["10.0.0.0/29"]) as ipam:  # .1 to .6
        for i in range(3):
            ipam.allocate(f"o{i}")  # .1 .2 .3
        freed = ipam.release("o0")
        assert isinstance(freed, Lease) and freed.addresses == ("10.0.0.1/29",)
        assert ipam.release("o0") is None
        # .1 is free again but the next lease continues after the last one given
        assert ipam.allocate("o3").addresses == ("10.0.0.4/29",)
        assert ipam.allocate("o4").addresses == ("10.0.0.5/29",)
        assert ipam.allocate("o5").addresses == ("10.0.0.6/29",)
        assert ipam.allocate("o6").addresses == ("10.0.0.1/29",)  # wrapped around
        with pytest.raises(IpamExhausted):
            ipam.allocate("o7")


def test_release_prefix_frees_every_device_of_a_claim(tmp: Path) -> None:
    with Ipam(tmp / "i.sqlite", ["10.0.0.0/24"]) as ipam:
        for owner in ("uid1/a", "uid1/b", "uid10/a", "UID1/c", "uid_/x"):
            ipam.allocate(owner)
        freed = ipam.release_prefix("uid1/")
        assert sorted(lease.owner for lease in freed) == ["uid1/a", "uid1/b"]
        assert sorted(lease.owner for lease in ipam.leases()) == ["UID1/c", "uid10/a", "uid_/x"]
        assert ipam.release_prefix("uid1/") == []
        assert [lease.owner for lease in ipam.release_prefix("uid_")] == ["uid_/x"]
        with pytest.raises(InvalidArgument):
            ipam.release_prefix("")


def test_ipv6_large_range(tmp: Path) -> None:
    with Ipam(tmp / "i.sqlite", ["fd00:abcd::/64"], gateway="fd00:abcd::1") as ipam:
        got = {ipam.allocate(f"o{i}").addresses[0] for i in range(50)}
        assert len(got) == 50
        assert "fd00:abcd::1/64" not in got
        assert ipam.free(6) == 2**64 - 1 - 1 - 50


# --------------------------------------------------------------------------- persistence


def test_leases_survive_reopen_and_range_change(
    tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp / "i.sqlite"
    with Ipam(path, ["10.0.0.0/24"]) as ipam:
        a = ipam.allocate("a")
        b = ipam.allocate("b")
    with Ipam(path, ["10.0.0.0/24"]) as ipam:
        assert ipam.get("a") == a and ipam.get("b") == b
        assert ipam.out_of_range() == []
        assert ipam.allocate("c").addresses == ("10.0.0.3/24",)  # cursor persisted
    caplog.set_level(logging.WARNING, logger="kndkit.ipam")
    with Ipam(path, ["10.0.0.2-10.0.0.10/24", "10.0.1.0/24"]) as ipam:
        # a (10.0.0.1) is outside the new ranges: kept, reported, never handed out again
        assert [lease.owner for lease in ipam.out_of_range()] == ["a"]
        assert "a (10.0.0.1/24) is outside the configured ranges" in caplog.text
        assert ipam.allocate("a") == a
        new = {ipam.allocate(f"n{i}").addresses[0] for i in range(7)}
        assert "10.0.0.2/24" not in new and "10.0.0.3/24" not in new
        assert len(new) == 7
        assert ipam.release("a") == a
        assert ipam.out_of_range() == []
    with Ipam(path, ["10.0.0.0/24"], exclude=["10.0.0.2"]) as ipam:
        assert [lease.owner for lease in ipam.out_of_range()] == ["b"]


def test_not_an_ipam_file_and_newer_schema(tmp: Path) -> None:
    bad = tmp / "garbage"
    bad.write_bytes(b"not sqlite" * 1000)
    with pytest.raises(IpamError, match="not usable"):
        Ipam(bad, ["10.0.0.0/24"])
    path = tmp / "i.sqlite"
    Ipam(path, ["10.0.0.0/24"]).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE ipam_schema SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(IpamError, match="schema version 99") as e:
        Ipam(path, ["10.0.0.0/24"])
    assert isinstance(e.value, KndError)


def test_file_is_wal_and_synchronous_full(tmp: Path) -> None:
    with Ipam(tmp / "i.sqlite", ["10.0.0.0/24"]) as ipam:
        assert ipam._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ipam._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# --------------------------------------------------------------------------- processes

_WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from kndkit.ipam import Ipam, IpamExhausted
    path, who, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    ipam = Ipam(path, ["10.20.0.0/26", "fd00:20::/122"], gateway="10.20.0.1")
    out = []
    sys.stdin.readline()  # start together
    for i in range(n):
        owner = f"{who}/{i}"
        try:
            addrs = list(ipam.allocate(owner).addresses)
        except IpamExhausted:
            addrs = None
        out.append([owner, addrs])
        if addrs and i % 3 == 0:  # idempotent under contention
            assert list(ipam.allocate(owner).addresses) == addrs
        if i % 5 == 4:
            ipam.release(f"{who}/{i - 1}")
            out.append([f"{who}/{i - 1}", "released"])
    print(json.dumps(out))
    """
)


def test_concurrent_processes_never_share_an_address(tmp: Path) -> None:
    path = tmp / "i.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(PYTHON_DIR), str(path), f"p{k}", "20"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(6)
    ]
    try:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            results.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    held: dict[str, list[str]] = {}
    exhausted = 0
    for out in results:
        for owner, addrs in json.loads(out):
            if addrs == "released":
                held.pop(owner, None)
            elif addrs is None:
                exhausted += 1
            else:
                held[owner] = addrs
    with Ipam(path, ["10.20.0.0/26", "fd00:20::/122"], gateway="10.20.0.1") as ipam:
        stored = {lease.owner: list(lease.addresses) for lease in ipam.leases()}
    # what the processes believe they hold is exactly what the file holds
    assert stored == held
    flat = [a for addrs in stored.values() for a in addrs]
    assert len(flat) == len(set(flat))
    assert "10.20.0.1/26" not in flat
    # 120 attempts for 61 usable IPv4 addresses (a /26 less network, broadcast,
    # gateway) and at most 24 releases: some attempts ran dry; the last release of
    # each process (after its last allocation) leaves at most 6 addresses free
    assert exhausted >= 120 - 61 - 24
    assert 61 - 6 <= len(stored) <= 61


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 12)),
        min_size=1,
        max_size=60,
    )
)
def test_random_allocate_release_sequences_match_a_model(ops: list[tuple[str, int]]) -> None:
    d = Path(tempfile.mkdtemp(prefix="knd-ipam-h-", dir="/tmp"))
    try:
        # 10.0.0.1..10.0.0.14 less the gateway .1 and the excluded .8-.9: 11 usable
        with Ipam(
            d / "i.sqlite", ["10.0.0.0/28"], gateway="10.0.0.1", exclude=["10.0.0.8/31"]
        ) as ipam:
            model: dict[str, str] = {}
            for op, n in ops:
                owner = f"o{n}"
                if op == "alloc":
                    try:
                        lease = ipam.allocate(owner)
                    except IpamExhausted:
                        assert owner not in model and len(model) == 11
                        continue
                    if owner in model:
                        assert lease.addresses == (model[owner],)
                    model[owner] = lease.addresses[0]
                else:
                    freed = ipam.release(owner)
                    assert (freed.addresses[0] if freed else None) == model.pop(owner, None)
                stored = {le.owner: le.addresses[0] for le in ipam.leases()}
                assert stored == model
                assert len(set(stored.values())) == len(stored)
                assert not {"10.0.0.1/28", "10.0.0.8/28", "10.0.0.9/28"} & set(stored.values())
                assert ipam.free() == 11 - len(model)
    finally:
        shutil.rmtree(d, ignore_errors=True)
