#!/usr/bin/env bash
# RDMA device check for a host WITH NETLINK_RDMA (kernel with ib_core), e.g. the
# GPU hosts users run on (no RDMA devices there; netns mode reads "shared").
#
# Builds nothing: expects the repository with a built extension
# (python/kndkit/_native*.so, carried over) and either .venv or a python3 >= 3.11
# (then PYTHONPATH=python is used). Runs in well under 2 minutes and prints one
# PASS/FAIL/SKIP line per check, then the results as JSON (also written to
# $OUT/rdma-device-check.json when $OUT is set). Exit status 1 if any check FAILs.
#
# The RDMA netns mode is read first; any check that sets it puts back the value
# read, in a finally block, and the last check verifies it is unchanged.
# KNDKIT_RDMA_TOGGLE=0 skips the check that flips the mode.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import kndkit._native' >/dev/null 2>&1; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec timeout 110 "$PY" - "${OUT:-}" <<'PYEOF'
import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

OUTDIR = sys.argv[1] if len(sys.argv) > 1 else ""
NETLINK_RDMA = 20
results = []


def record(name, status, detail=None):
    results.append({"check": name, "status": status, "detail": detail})
    print(f"{status} {name}: {json.dumps(detail, default=str)}", flush=True)


def check(name):
    def deco(fn):
        def run():
            try:
                status, detail = fn()
            except Exception as e:  # a check that raises is a FAIL with the error
                status, detail = "FAIL", f"{type(e).__name__}: {e}"
            record(name, status, detail)
        run.__name__ = name
        return run
    return deco


def maps_has(lib):
    with open("/proc/self/maps") as f:
        return any(lib in line for line in f)


def ib_sysfs():
    p = "/sys/class/infiniband"
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


# ------------------------------------------------------------------ raw netlink
# The exact bytes knd-rdma's unit tests pin (sys_get_request, get_dump_request),
# sent from Python so the kernel itself judges them.
def sys_get_bytes(seq):
    return struct.pack("=IHHII", 16, (5 << 10) + 6, 0x0005, seq, 0)


def get_dump_bytes(seq):
    return struct.pack("=IHHII", 16, (5 << 10) + 1, 0x0305, seq, 0)


def bad_set_bytes(seq):
    name = b"kndkit-x\0"
    a1 = struct.pack("=HHI", 8, 1, 0xFFFFFFF0)
    a2 = struct.pack("=HH", 4 + len(name), 2) + name + b"\0" * (-len(name) % 4)
    body = a1 + a2
    return struct.pack("=IHHII", 16 + len(body), (5 << 10) + 2, 0x0005, seq, 0) + body


def exchange(req, seq, dump):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_RDMA)
    s.settimeout(5)
    try:
        s.setsockopt(270, 11, 1)  # NETLINK_EXT_ACK
    except OSError:
        pass
    s.send(req)
    msgs = []
    while True:
        data = s.recv(65536)
        off = 0
        while off + 16 <= len(data):
            ln, ty, fl, sq, _pid = struct.unpack_from("=IHHII", data, off)
            if ln < 16:
                raise ValueError(f"bad nlmsg_len {ln}")
            payload = data[off + 16 : off + ln]
            off += (ln + 3) & ~3
            if sq != seq:
                continue
            msgs.append((ty, fl, payload))
            if ty == 2 or ty == 3 or (ty == 2 and not dump):
                s.close()
                return msgs


def attrs(payload):
    out, off = {}, 0
    while off + 4 <= len(payload):
        ln, ty = struct.unpack_from("=HH", payload, off)
        if ln < 4:
            break
        out[ty & 0x3FFF] = payload[off + 4 : off + ln]
        off += (ln + 3) & ~3
    return out


def ext_ack_text(fl, payload):
    if not fl & 0x200:
        return ""
    echoed = 16 if fl & 0x100 else struct.unpack_from("=I", payload, 4)[0]
    t = attrs(payload[4 + ((echoed + 3) & ~3) :]).get(1, b"")
    return t.rstrip(b"\0").decode(errors="replace")


state = {}


@check("netlink_rdma_socket")
def c_socket():
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_RDMA).close()
    except OSError as e:
        return "FAIL", f"NETLINK_RDMA unavailable here: {errno.errorcode.get(e.errno, e.errno)}"
    state["nl"] = True
    return "PASS", "socket(AF_NETLINK, SOCK_RAW, 20) opens"


@check("import_without_libibverbs_mapped")
def c_import():
    import kndkit  # noqa: F401
    from kndkit import _native

    state["native"] = _native
    mapped = maps_has("libibverbs")
    return ("FAIL" if mapped else "PASS"), {"so": _native.__file__, "libibverbs_mapped_after_import": mapped}


@check("needed_has_no_rdma_core")
def c_needed():
    so = state["native"].__file__
    if not shutil.which("readelf"):
        return "SKIP", "readelf not installed (the maps check above covers it)"
    out = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, timeout=30).stdout
    needed = [l.split("[")[-1].rstrip("]") for l in out.splitlines() if "(NEEDED)" in l]
    bad = [n for n in needed if "ibverbs" in n or "rdmacm" in n]
    return ("FAIL" if bad or not needed else "PASS"), needed


@check("raw_sys_get_bytes_accepted")
def c_raw_sys_get():
    if not state.get("nl"):
        return "SKIP", "no NETLINK_RDMA"
    seq = 0x4B4E0101
    msgs = exchange(sys_get_bytes(seq), seq, dump=False)
    data = [m for m in msgs if m[0] == (5 << 10) + 6]
    errs = [struct.unpack_from("=i", m[2])[0] for m in msgs if m[0] == 2]
    if not data or errs != [0]:
        return "FAIL", {"messages": [(hex(t), hex(f), p.hex()) for t, f, p in msgs]}
    a = attrs(data[0][2])
    mode = a.get(66)
    state["raw_mode"] = None if mode is None else ("shared" if mode[0] else "exclusive")
    return "PASS", {"netns_mode_attr": None if mode is None else mode.hex(),
                    "attrs": sorted(a), "ack": errs[0], "reply_hex": data[0][2].hex()}


@check("raw_get_dump_bytes_accepted")
def c_raw_dump():
    if not state.get("nl"):
        return "SKIP", "no NETLINK_RDMA"
    seq = 0x4B4E0102
    msgs = exchange(get_dump_bytes(seq), seq, dump=True)
    devs = [attrs(p).get(2, b"").rstrip(b"\0").decode() for t, f, p in msgs if t == (5 << 10) + 1]
    last = msgs[-1]
    ok = last[0] == 3 and struct.unpack_from("=i", last[2])[0] == 0
    state["raw_devices"] = devs
    return ("PASS" if ok else "FAIL"), {"devices": devs, "terminator": hex(last[0]), "sysfs": ib_sysfs()}


@check("raw_set_bad_index_error_decodes")
def c_raw_err():
    if not state.get("nl"):
        return "SKIP", "no NETLINK_RDMA"
    seq = 0x4B4E0103
    msgs = exchange(bad_set_bytes(seq), seq, dump=False)
    t, fl, p = msgs[-1]
    if t != 2:
        return "FAIL", f"no NLMSG_ERROR, got {hex(t)}"
    err = struct.unpack_from("=i", p)[0]
    detail = {"errno": errno.errorcode.get(-err, err), "flags": hex(fl), "ext_ack": ext_ack_text(fl, p)}
    return ("PASS" if err < 0 else "FAIL"), detail


@check("rdma_available")
def c_available():
    v = state["native"].rdma_available()
    return ("PASS" if v is True else "FAIL"), v


@check("rdma_get_netns_mode")
def c_mode():
    m = state["native"].rdma_get_netns_mode()
    state["mode"] = m
    ok = m in ("shared", "exclusive") and m == state.get("raw_mode", m)
    return ("PASS" if ok else "FAIL"), {"mode": m, "raw": state.get("raw_mode")}


@check("rdma_links")
def c_links():
    links = state["native"].rdma_links()
    names = sorted(l["name"] for l in links)
    want = sorted(state.get("raw_devices", []))
    ok = isinstance(links, list) and names == want
    return ("PASS" if ok else "FAIL"), {"links": links, "expected_names": want}


@check("rdma_set_netns_mode_same_value")
def c_set_same():
    n = state["native"]
    m = state["mode"]
    n.rdma_set_netns_mode(m)
    after = n.rdma_get_netns_mode()
    return ("PASS" if after == m else "FAIL"), {"set": m, "read_back": after}


@check("rdma_set_netns_mode_toggle_and_restore")
def c_toggle():
    if os.environ.get("KNDKIT_RDMA_TOGGLE", "1") == "0":
        return "SKIP", "KNDKIT_RDMA_TOGGLE=0"
    from kndkit.errors import NetlinkError

    n = state["native"]
    m = state["mode"]
    other = "exclusive" if m == "shared" else "shared"
    try:
        try:
            n.rdma_set_netns_mode(other)
        except NetlinkError as e:
            if e.errno_name == "EBUSY":
                return "SKIP", f"kernel refuses while other namespaces exist: {e}"
            raise
        flipped = n.rdma_get_netns_mode()
    finally:
        n.rdma_set_netns_mode(m)
    restored = n.rdma_get_netns_mode()
    ok = flipped == other and restored == m
    return ("PASS" if ok else "FAIL"), {"flipped_to": flipped, "restored": restored}


@check("rdma_links_in_other_netns")
def c_links_ns():
    if not shutil.which("unshare"):
        return "SKIP", "unshare not installed"
    n = state["native"]
    child = subprocess.Popen(["unshare", "-n", "sleep", "30"])
    try:
        ns = None
        for _ in range(50):
            try:
                ns = n.NetNs.from_pid(child.pid)
                if ns.inode != n.NetNs.current().inode:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        if ns is None:
            return "FAIL", "could not open the child's namespace"
        links = n.rdma_links(ns)
        # shared mode: every namespace sees every device; exclusive: none here.
        want = sorted(state.get("raw_devices", [])) if state["mode"] == "shared" else []
        names = sorted(l["name"] for l in links)
        return ("PASS" if names == want else "FAIL"), {"links": links, "inode": ns.inode}
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


@check("rdma_errors_are_typed")
def c_errors():
    from kndkit.errors import InvalidArgument, NetlinkError

    n = state["native"]
    out = {}
    try:
        n.rdma_rename("kndkit-none0", "kndkit-none1")
        return "FAIL", "renaming a missing device succeeded"
    except NetlinkError as e:
        out["rename_missing"] = {"errno": e.errno_name, "msg": str(e)}
    try:
        n.rdma_set_netns_mode("bogus")
        return "FAIL", "bad mode accepted"
    except InvalidArgument as e:
        out["bad_mode"] = str(e)
    return ("PASS" if out["rename_missing"]["errno"] == "ENODEV" else "FAIL"), out


@check("verbs")
def c_verbs():
    n = state["native"]
    avail = n.verbs_available()
    devs = n.verbs_devices() if avail else None
    ok = isinstance(avail, bool) and (devs is None or isinstance(devs, list))
    if avail and not ib_sysfs():
        ok = ok and devs == []
    return ("PASS" if ok else "FAIL"), {"available": avail, "devices": devs,
                                       "libibverbs_mapped": maps_has("libibverbs")}


@check("verbs_forced_unavailable")
def c_verbs_na():
    code = ("import kndkit._native as n\nfrom kndkit.errors import NotAvailable\n"
            "assert n.verbs_available() is False\n"
            "try:\n    n.verbs_devices()\nexcept NotAvailable as e:\n    print(e)\n")
    env = dict(os.environ, KNDKIT_LIBIBVERBS="/nonexistent.so")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    ok = p.returncode == 0 and p.stdout.startswith("RDMA not available on this node")
    return ("PASS" if ok else "FAIL"), (p.stdout + p.stderr).strip()


@check("netns_mode_unchanged_at_end")
def c_final():
    if "mode" not in state:
        return "SKIP", "mode never read"
    now = state["native"].rdma_get_netns_mode()
    return ("PASS" if now == state["mode"] else "FAIL"), {"start": state["mode"], "end": now}


for fn in [c_socket, c_import, c_needed, c_raw_sys_get, c_raw_dump, c_raw_err]:
    fn()
if state.get("nl") and "native" in state:
    for fn in [c_available, c_mode, c_links, c_set_same, c_toggle, c_links_ns, c_errors]:
        fn()
if "native" in state:
    c_verbs()
    c_verbs_na()
    c_final()

summary = {
    "host": os.uname().release,
    "pass": sum(r["status"] == "PASS" for r in results),
    "fail": sum(r["status"] == "FAIL" for r in results),
    "skip": sum(r["status"] == "SKIP" for r in results),
    "results": results,
}
text = json.dumps(summary, indent=1, default=str)
print(text)
if OUTDIR:
    with open(os.path.join(OUTDIR, "rdma-device-check.json"), "w") as f:
        f.write(text)
print("RESULT:", "FAIL" if summary["fail"] else "PASS")
sys.exit(1 if summary["fail"] else 0)
PYEOF
