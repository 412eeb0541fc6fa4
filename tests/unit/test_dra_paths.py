"""kndkit.dra: socket naming, argument validation and the cross-instance call lock."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import pytest

from kndkit.dra import ClaimRef, KubeletPlugin, PrepareResult, UnprepareResult
from kndkit.dra.paths import (
    SUN_PATH_MAX,
    dra_socket_name,
    registration_socket_name,
    validate_driver_name,
)
from kndkit.dra.serialize import CallSerializer
from kndkit.errors import InvalidArgument


class NoopHandler:
    async def prepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, PrepareResult]:
        return {c.uid: PrepareResult() for c in claims}

    async def unprepare_resource_claims(
        self, claims: Sequence[ClaimRef]
    ) -> Mapping[str, UnprepareResult]:
        return {c.uid: UnprepareResult() for c in claims}


def b64(data: str, n: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()[:n]).decode().rstrip("=")


UID = "0f5c9e0e-6a4e-4c47-9b39-3c3f0e3b2a11"


@pytest.fixture
def tmpdir_short() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="knd-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ names


def test_plain_names() -> None:
    assert registration_socket_name("/r", "net.example.com", None) == "net.example.com-reg.sock"
    assert dra_socket_name("/p", None) == "dra.sock"


def test_rolling_update_names_use_the_uid_when_it_fits() -> None:
    assert (
        registration_socket_name("/r", "net.example.com", UID) == f"net.example.com-{UID}-reg.sock"
    )
    assert dra_socket_name("/p", UID) == f"dra-{UID}.sock"


def test_registration_name_falls_back_to_uid_hash_then_driver_uid_hash() -> None:
    driver = "net.example.com"
    # a directory that leaves room for the hashed UID but not for the full one
    full = f"{driver}-{UID}-reg.sock"
    d1 = "/" + "d" * (SUN_PATH_MAX - len(full) - 1)  # full name is 1 byte too long
    name = registration_socket_name(d1, driver, UID)
    assert name == f"{driver}-{b64(UID, 8)}-reg.sock"
    assert len(os.path.join(d1, name)) <= SUN_PATH_MAX
    # just fits: the full name
    d0 = "/" + "d" * (SUN_PATH_MAX - len(full) - 2)
    assert len(os.path.join(d0, full)) == SUN_PATH_MAX
    assert registration_socket_name(d0, driver, UID) == full
    # a long driver name: only the last form fits
    long_driver = "a" * 60 + ".io"
    d2 = "/" + "d" * 30
    name = registration_socket_name(d2, long_driver, UID)
    assert name == f"dra-{b64(long_driver + chr(0) + UID, 16)}-reg.sock"
    assert len(os.path.join(d2, name)) <= SUN_PATH_MAX


def test_hashes_are_stable_and_distinct() -> None:
    a = registration_socket_name("/" + "d" * 80, "x.io", "uid-a")
    b = registration_socket_name("/" + "d" * 80, "x.io", "uid-b")
    assert a != b
    assert a == registration_socket_name("/" + "d" * 80, "x.io", "uid-a")


def test_dra_name_falls_back_to_hash() -> None:
    d = "/" + "p" * (SUN_PATH_MAX - len(f"dra-{UID}.sock") - 1)  # 1 byte too long
    assert dra_socket_name(d, UID) == f"dra-{b64(UID, 8)}.sock"


def test_nothing_fits_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="at most 107"):
        registration_socket_name("/" + "r" * 100, "x.io", None)
    with pytest.raises(InvalidArgument, match="DRA socket"):
        dra_socket_name("/" + "p" * 100, UID)
    with pytest.raises(InvalidArgument, match="registration socket"):
        registration_socket_name("/" + "r" * 100, "x.io", UID)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "empty"),
        ("Net.Example.com", "DNS subdomain"),
        ("net_example.com", "DNS subdomain"),
        ("-net.example.com", "DNS subdomain"),
        ("net..example.com", "DNS subdomain"),
        ("net.example.com.", "DNS subdomain"),
        ("a/b", "DNS subdomain"),
        ("a" * 64, "at most 63"),
    ],
)
def test_bad_driver_names(name: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validate_driver_name(name)


def test_good_driver_names() -> None:
    for name in ("a", "net.example.com", "x-1.y-2.z", "a" * 63):
        validate_driver_name(name)


def make(tmp: str, **kw: object) -> KubeletPlugin:
    args: dict[str, object] = {
        "registry_dir": os.path.join(tmp, "reg"),
        "plugin_dir": os.path.join(tmp, "plug"),
    }
    args.update(kw)
    driver = str(args.pop("driver", "net.example.com"))
    handler = args.pop("handler", NoopHandler())
    return KubeletPlugin(driver, handler, **args)  # type: ignore[arg-type]


def test_constructor_computes_paths(tmpdir_short: str) -> None:
    p = make(tmpdir_short)
    assert p.endpoint == os.path.join(tmpdir_short, "plug", "dra.sock")
    assert p.registration_socket == os.path.join(tmpdir_short, "reg", "net.example.com-reg.sock")
    assert p.supported_versions == ("v1.DRAPlugin", "v1beta1.DRAPlugin")
    p = make(tmpdir_short, rolling_update_uid="abc", versions=["v1beta1", "v1"])
    assert p.endpoint.endswith("/dra-abc.sock")
    assert p.registration_socket.endswith("/net.example.com-abc-reg.sock")
    assert p.supported_versions == ("v1.DRAPlugin", "v1beta1.DRAPlugin")
    assert make(tmpdir_short, versions=("v1beta1",)).supported_versions == ("v1beta1.DRAPlugin",)
    assert (
        make(tmpdir_short, plugin_dir=None).plugin_dir == "/var/lib/kubelet/plugins/net.example.com"
    )
    # nothing was created by the constructor
    assert os.listdir(tmpdir_short) == []


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"driver": ""}, "driver name is empty"),
        ({"driver": "Bad_Name"}, "DNS subdomain"),
        ({"registry_dir": "relative/reg"}, "registry_dir .* not an absolute path"),
        ({"plugin_dir": "plug"}, "plugin_dir .* not an absolute path"),
        ({"registry_dir": ""}, "registry_dir is empty"),
        ({"registry_dir": "/" + "r" * 100}, "registration socket .* at most 107"),
        ({"plugin_dir": "/" + "p" * 100}, "DRA socket .* at most 107"),
        ({"versions": ()}, "versions is empty"),
        ({"versions": ("v2",)}, "unknown DRA version"),
        ({"versions": "v1"}, "sequence of strings"),
        ({"rolling_update_uid": ""}, "rolling_update_uid is empty"),
        ({"rolling_update_uid": "a/b"}, "rolling_update_uid"),
        ({"rolling_update_uid": ".hidden"}, "rolling_update_uid"),
        ({"handler": object()}, "does not implement DRAHandler"),
        ({"health": object()}, "does not implement HealthSource"),
    ],
)
def test_bad_arguments(tmpdir_short: str, kw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        make(tmpdir_short, **kw)
    assert os.listdir(tmpdir_short) == []


# ------------------------------------------------------------------ call lock


async def test_flock_serialises_two_instances(tmpdir_short: str) -> None:
    path = os.path.join(tmpdir_short, "serialize.lock")
    a, b = CallSerializer(path), CallSerializer(path)
    order: list[str] = []
    a_in = asyncio.Event()
    release_a = asyncio.Event()

    async def hold_a() -> None:
        async with a.hold():
            order.append("a in")
            a_in.set()
            await release_a.wait()
            order.append("a out")

    async def hold_b() -> None:
        async with b.hold():
            order.append("b in")

    ta = asyncio.create_task(hold_a())
    await a_in.wait()
    tb = asyncio.create_task(hold_b())
    # b waits on another thread: the loop still runs, and b does not get in
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert order == ["a in"]
    release_a.set()
    await asyncio.wait_for(asyncio.gather(ta, tb), 10)
    assert order == ["a in", "a out", "b in"]
    assert os.stat(path).st_mode & 0o777 == 0o600


async def test_cancelled_waiter_releases_the_flock(tmpdir_short: str) -> None:
    path = os.path.join(tmpdir_short, "serialize.lock")
    a, b, c = CallSerializer(path), CallSerializer(path), CallSerializer(path)
    release_a = asyncio.Event()
    a_in = asyncio.Event()

    async def hold_a() -> None:
        async with a.hold():
            a_in.set()
            await release_a.wait()

    async def hold_b() -> None:
        async with b.hold():
            raise AssertionError("b must not get the lock")

    ta = asyncio.create_task(hold_a())
    await a_in.wait()
    tb = asyncio.create_task(hold_b())
    await asyncio.sleep(0.05)
    tb.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tb
    release_a.set()
    await ta
    # b's thread got the lock once a let go and must have closed it again
    async with asyncio.timeout(10), c.hold():
        pass


async def test_in_process_lock_without_file() -> None:
    s = CallSerializer(None)
    active = 0
    peak = 0

    async def one() -> None:
        nonlocal active, peak
        async with s.hold():
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(one() for _ in range(5)))
    assert peak == 1
