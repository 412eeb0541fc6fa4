"""The benchmarks' own checks can fail: a wrong result and a refused request are caught."""

from __future__ import annotations

import errno
import os

import pytest

from benches import env, impls
from benches.peers import rawnl


@pytest.mark.netns
def test_verify_attached_catches_a_missing_route(pair: env.Pair) -> None:
    env.clean_pair(pair)
    ifaces = env.make_physical(pair, 2)
    impls.attach_physical_raw(pair, ifaces)
    env.verify_attached(pair, ifaces)
    env.ip("-n", pair.pod.name, "route", "del", ifaces[1].route)
    with pytest.raises(AssertionError, match="route"):
        env.verify_attached(pair, ifaces)
    f = ifaces[1]
    env.ip("-n", pair.pod.name, "route", "add", f.route, "via", f.gateway, "dev", f.pod)
    env.verify_attached(pair, ifaces)
    env.ip("-n", pair.pod.name, "link", "set", "dev", ifaces[0].pod, "mtu", "1500")
    with pytest.raises(AssertionError, match="mtu"):
        env.verify_attached(pair, ifaces)


@pytest.mark.netns
def test_verify_restored_catches_a_link_left_in_the_pod(pair: env.Pair) -> None:
    env.clean_pair(pair)
    ifaces = env.make_physical(pair, 2)
    impls.attach_physical_raw(pair, ifaces)
    impls.detach_physical_raw(pair, ifaces[:1])
    with pytest.raises(AssertionError, match="left in the pod"):
        env.verify_restored(pair, ifaces)


@pytest.mark.netns
def test_raw_floor_reports_every_refused_request(pair: env.Pair) -> None:
    fd = os.open(pair.pod.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        b = rawnl.Batch()
        b.link_set(1, mtu=65536)  # lo: fine
        b.addr_add(4242, "10.1.2.3/24")  # no such link
        b.addr_add(1, "10.1.2.3/8")
        b.addr_add(1, "10.1.2.3/8")  # duplicate
        with pytest.raises(rawnl.NetlinkBatchError) as exc:
            rawnl.apply_batches([(fd, b)])
    finally:
        os.close(fd)
        env.ip("-n", pair.pod.name, "addr", "flush", "dev", "lo")
    assert exc.value.failures == [(1, errno.ENODEV), (3, errno.EEXIST)]
