"""kndkit.nri.model: conversions to and from the NRI protobuf messages, validation."""

from __future__ import annotations

import pytest

from kndkit._proto import nri_v1alpha1_pb2 as pb
from kndkit.errors import InvalidArgument
from kndkit.nri.model import (
    AdjustmentValidation,
    Container,
    ContainerAdjustment,
    ContainerEviction,
    ContainerState,
    ContainerUpdate,
    Event,
    LinuxDevice,
    Mount,
    Pod,
    event_mask,
    events_in_mask,
)


def pod_msg(netns: str | None = "/var/run/netns/p1") -> pb.PodSandbox:
    msg = pb.PodSandbox(
        id="sb1",
        name="web",
        namespace="ns1",
        uid="u-1",
        labels={"app": "web"},
        annotations={"a": "b"},
        runtime_handler="runc",
        pid=42,
        ips=["10.0.0.5", "fd00::5"],
    )
    msg.linux.cgroup_parent = "/kubepods"
    msg.linux.namespaces.add(type="ipc", path="/proc/42/ns/ipc")
    if netns is not None:
        msg.linux.namespaces.add(type="network", path=netns)
    return msg


def test_pod_from_proto_reads_netns_ips_and_maps() -> None:
    pod = Pod.from_proto(pod_msg())
    assert (pod.id, pod.name, pod.namespace, pod.uid) == ("sb1", "web", "ns1", "u-1")
    assert pod.netns == "/var/run/netns/p1"
    assert not pod.host_network
    assert pod.ips == ("10.0.0.5", "fd00::5")
    assert dict(pod.labels) == {"app": "web"} and dict(pod.annotations) == {"a": "b"}
    assert pod.runtime_handler == "runc" and pod.pid == 42 and pod.cgroup_parent == "/kubepods"
    assert pod.ref == "ns1/web"
    with pytest.raises(TypeError):
        pod.labels["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize("netns", [None, ""])
def test_pod_without_network_namespace_path_is_host_network(netns: str | None) -> None:
    pod = Pod.from_proto(pod_msg(netns))
    assert pod.netns is None
    assert pod.host_network
    assert Pod.from_proto(pb.PodSandbox(id="x")).host_network


def test_pod_round_trip_keeps_unmodelled_fields() -> None:
    msg = pod_msg()
    msg.linux.pod_resources.memory.limit.value = 1 << 30
    back = Pod.from_proto(msg).to_proto()
    assert back == msg


def ctr_msg() -> pb.Container:
    msg = pb.Container(
        id="c1",
        pod_sandbox_id="sb1",
        name="app",
        state=pb.CONTAINER_RUNNING,
        args=["/bin/app", "-v"],
        env=["PATH=/bin", "EMPTY=", "X=a=b"],
        pid=7,
    )
    msg.mounts.add(destination="/data", source="/host/data", type="bind", options=["rbind", "ro"])
    d = msg.linux.devices.add(path="/dev/infiniband/uverbs0", type="c", major=231, minor=192)
    d.file_mode.value = 0o666
    msg.linux.net_devices["eth9"].name = "net1"
    msg.CDI_devices.add(name="vendor.com/nic=0")
    msg.user.uid = 1000  # not modelled: kept in raw
    return msg


def test_container_from_proto() -> None:
    c = Container.from_proto(ctr_msg())
    assert c.state is ContainerState.RUNNING
    assert dict(c.env) == {"PATH": "/bin", "EMPTY": "", "X": "a=b"}
    assert c.args == ("/bin/app", "-v")
    assert c.mounts == (Mount("/data", "/host/data", "bind", ("rbind", "ro")),)
    assert c.devices == (LinuxDevice("/dev/infiniband/uverbs0", "c", 231, 192, 0o666),)
    assert c.devices[0].uid is None
    assert dict(c.net_devices) == {"eth9": "net1"}
    assert c.cdi_devices == ("vendor.com/nic=0",)
    assert c.to_proto() == ctr_msg()


def test_container_unknown_state_number_maps_to_unknown() -> None:
    assert Container.from_proto(pb.Container(id="c", state=99)).state is ContainerState.UNKNOWN  # type: ignore[arg-type]


def test_event_mask_bits() -> None:
    assert event_mask([Event.RUN_POD_SANDBOX]) == 1
    assert event_mask([Event.CREATE_CONTAINER, Event.STOP_POD_SANDBOX]) == 0b1010
    assert event_mask(Event) == (1 << 14) - 1
    assert events_in_mask(0b1010) == {Event.CREATE_CONTAINER, Event.STOP_POD_SANDBOX}
    assert events_in_mask(0) == set(Event)
    # the proto enum and the model agree
    for e in Event:
        assert pb.Event.Value(e.name) == e.value


def test_adjustment_to_proto_all_modelled_kinds() -> None:
    adj = (
        ContainerAdjustment()
        .add_annotation("k", "v")
        .remove_annotation("old")
        .add_mount(Mount("/mnt/x", "/src", options=("bind", "ro")))
        .remove_mount("/gone")
        .add_env("A", "1")
        .remove_env("B")
        .add_device(LinuxDevice("/dev/uverbs0", "c", 231, 192, file_mode=0o660, uid=0, gid=44))
        .remove_device("/dev/null0")
        .add_cdi_device("example.com/nic=eth1")
        .add_net_device("eth1", "net1")
        .remove_net_device("eth2")
        .add_sysctl("net.ipv4.ip_forward", "1")
        .set_args(["/bin/sh", "-c", "true"], override=True)
    )
    msg = adj.to_proto()
    assert dict(msg.annotations) == {"k": "v", "-old": ""}
    assert [(m.destination, m.source, list(m.options)) for m in msg.mounts] == [
        ("/mnt/x", "/src", ["bind", "ro"]),
        ("-/gone", "", []),
    ]
    assert [(e.key, e.value) for e in msg.env] == [("A", "1"), ("-B", "")]
    d0, d1 = msg.linux.devices
    assert (d0.path, d0.type, d0.major, d0.minor) == ("/dev/uverbs0", "c", 231, 192)
    assert (d0.file_mode.value, d0.uid.value, d0.gid.value) == (0o660, 0, 44)
    assert d0.HasField("uid")  # uid 0 is sent, not left unset
    assert d1.path == "-/dev/null0"
    assert [d.name for d in msg.CDI_devices] == ["example.com/nic=eth1"]
    assert {k: v.name for k, v in msg.linux.net_devices.items()} == {"eth1": "net1", "-eth2": ""}
    assert dict(msg.linux.sysctl) == {"net.ipv4.ip_forward": "1"}
    assert list(msg.args) == ["", "/bin/sh", "-c", "true"]
    # and back
    again = ContainerAdjustment.from_proto(msg)
    assert again.to_proto() == msg
    assert again.extra is None


def test_adjustment_extra_carries_unmodelled_fields() -> None:
    extra = pb.ContainerAdjustment()
    extra.linux.resources.memory.limit.value = 1 << 20
    extra.hooks.prestart.add(path="/bin/hook")
    adj = ContainerAdjustment(extra=extra).add_env("A", "1")
    msg = adj.to_proto()
    assert msg.linux.resources.memory.limit.value == 1 << 20
    assert msg.hooks.prestart[0].path == "/bin/hook"
    assert [e.key for e in msg.env] == ["A"]
    back = ContainerAdjustment.from_proto(msg)
    assert back.extra == extra
    assert not ContainerAdjustment().to_proto().ByteSize()
    assert ContainerAdjustment().is_empty() and not adj.is_empty()


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda a: a.add_env("", "x"), "empty key"),
        (lambda a: a.add_env("-A", "x"), "may not start with '-'"),
        (lambda a: a.add_env("A=B", "x"), "may not contain '='"),
        (lambda a: a.remove_env("-A"), "may not start with '-'"),
        (lambda a: a.add_annotation("", "x"), "empty key"),
        (lambda a: a.add_cdi_device("nic0"), "not a qualified name"),
        (lambda a: a.add_net_device("eth0", "a-very-long-name-0"), "not a valid interface name"),
        (lambda a: a.add_net_device("eth0", "a/b"), "not a valid interface name"),
        (lambda a: a.add_net_device("-eth0", "n"), "may not start with '-'"),
        (lambda a: a.set_args([]), "at least one"),
        (lambda a: a.set_args("ls"), "not one string"),
    ],
)
def test_adjustment_rejects_bad_input_and_changes_nothing(build, needle) -> None:  # type: ignore[no-untyped-def]
    adj = ContainerAdjustment()
    with pytest.raises(InvalidArgument, match=needle):
        build(adj)
    assert adj.is_empty()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"path": "dev/x"}, "not an absolute path"),
        ({"path": "-/dev/x"}, "may not start"),
        ({"path": "/dev/x", "type": "x"}, "type 'x'"),
        ({"path": "/dev/x", "major": -1}, "negative major"),
        ({"path": "/dev/x", "file_mode": 0o17777}, "file mode"),
        ({"path": "/dev/x", "uid": 2**32}, "uid"),
    ],
)
def test_linux_device_validation(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        LinuxDevice(**kwargs)  # type: ignore[arg-type]


def test_mount_validation() -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        Mount("data")
    assert Mount("/d").type == "bind"


def test_update_and_eviction() -> None:
    u = ContainerUpdate("c1", ignore_failure=True).set_memory_limit(1 << 30).set_cpuset("0-3")
    msg = u.to_proto()
    assert msg.container_id == "c1" and msg.ignore_failure
    assert msg.linux.resources.memory.limit.value == 1 << 30
    assert msg.linux.resources.cpu.cpus == "0-3"
    back = ContainerUpdate.from_proto(msg)
    assert back.to_proto() == msg
    assert ContainerUpdate.from_proto(pb.ContainerUpdate(container_id="c")).resources is None
    with pytest.raises(InvalidArgument):
        ContainerUpdate("")
    with pytest.raises(InvalidArgument):
        ContainerUpdate("c").set_memory_limit(-1)
    e = ContainerEviction("c2", "oom")
    assert ContainerEviction.from_proto(e.to_proto()) == e
    with pytest.raises(InvalidArgument):
        ContainerEviction("")


def test_adjustment_validation_owner_lookup() -> None:
    req = pb.ValidateContainerAdjustmentRequest()
    req.pod.CopyFrom(pod_msg())
    req.container.id = "c1"
    req.adjust.env.add(key="A", value="1")
    req.plugins.add(name="a", index="10")
    fo = req.owners.owners["c1"]
    fo.simple[pb.FIELD_ARGS] = "10-a"
    fo.compound[pb.FIELD_ENV].owners["A"] = "10-a"
    v = AdjustmentValidation.from_proto(req)
    assert v.plugins == (("a", "10"),)
    assert v.adjustment.env == [("A", "1")]
    assert v.owner(pb.FIELD_ARGS) == "10-a"
    assert v.owner(pb.FIELD_ENV, "A") == "10-a"
    assert v.owner(pb.FIELD_ENV, "B") is None
    assert v.owner(pb.FIELD_MOUNTS, "/x") is None
