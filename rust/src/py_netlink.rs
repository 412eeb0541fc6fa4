//! `kndkit._native.apply / encode / dump_*`: conversion between plan-step dicts
//! (docs/plan-steps.md) and [`knd_netlink`]. The work runs with the GIL released.

use std::net::IpAddr;

use knd_netlink::plan::{self, Addr, Kind, LinkRef, LinkSet, Neigh, NewLink, Op, Route, Rule};
use knd_netlink::{wire, ErrorKind, NlError, Plan, Step};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::errors::{invalid_argument, knd_err};
use crate::py_netns::PyNetNs;

/// Turns an [`NlError`] into the matching `kndkit.errors` exception.
pub fn to_py(e: NlError) -> PyErr {
    match e.kind {
        ErrorKind::InvalidArgument => with_attrs("InvalidArgument", &e),
        ErrorKind::Namespace => with_attrs("NamespaceError", &e),
        ErrorKind::NotAvailable => with_attrs("NotAvailable", &e),
        ErrorKind::Netlink => Python::attach(|py| {
            let kw: Vec<(&str, Py<PyAny>)> = vec![
                (
                    "step_index",
                    e.step_index
                        .into_pyobject(py)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
                (
                    "op",
                    e.op.into_pyobject(py)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
                (
                    "ifname",
                    e.ifname
                        .clone()
                        .into_pyobject(py)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
                (
                    "errno",
                    e.errno
                        .into_pyobject(py)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
                (
                    "errno_name",
                    e.errno_name()
                        .into_pyobject(py)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
                (
                    "kernel_message",
                    e.kernel_message
                        .clone()
                        .into_pyobject(py)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
                (
                    "rolled_back",
                    pyo3::types::PyBool::new(py, e.rolled_back)
                        .to_owned()
                        .into_any()
                        .unbind(),
                ),
                (
                    "rollback_errors",
                    PyList::new(py, &e.rollback_errors)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
            ];
            knd_err("NetlinkError", &e.message, &kw)
        }),
    }
}

/// Classes without keyword constructors still carry the step facts as attributes.
fn with_attrs(class: &str, e: &NlError) -> PyErr {
    let err = knd_err(class, &e.message, &[]);
    Python::attach(|py| {
        let v = err.value(py);
        let _ = v.setattr("step_index", e.step_index);
        let _ = v.setattr("op", e.op);
        let _ = v.setattr("ifname", e.ifname.clone());
        let _ = v.setattr("errno", e.errno);
        let _ = v.setattr("errno_name", e.errno_name());
        let _ = v.setattr("rolled_back", e.rolled_back);
        let _ = v.setattr("rollback_errors", e.rollback_errors.clone());
    });
    err
}

struct Parser {
    namespaces: Vec<knd_netns::NetNs>,
    /// Handle objects already seen (address, namespace index); the steps
    /// list keeps them alive for the whole parse.
    seen: Vec<(usize, usize)>,
}

type Res<T> = Result<T, String>;

impl Parser {
    fn ns(&mut self, v: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        if v.is_none() {
            return Ok(None);
        }
        let Ok(h) = v.cast::<PyNetNs>() else {
            return Err(invalid_argument(format!(
                "expected a NetNs handle, got {}",
                type_name(v)
            )));
        };
        // A plan usually names the same one or two handle objects in every
        // step: recognise them by identity before duplicating any descriptor.
        let ptr = v.as_ptr() as usize;
        if let Some(&(_, i)) = self.seen.iter().find(|(p, _)| *p == ptr) {
            return Ok(Some(i));
        }
        let ns = h.get().clone_inner()?;
        let i = match self.namespaces.iter().position(|n| n.same_as(&ns)) {
            Some(i) => i,
            None => {
                self.namespaces.push(ns);
                self.namespaces.len() - 1
            }
        };
        self.seen.push((ptr, i));
        Ok(Some(i))
    }
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn allowed(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "link_set" => &[
            "name",
            "mtu",
            "mac",
            "up",
            "alias",
            "group",
            "netns",
            "gso_max_size",
            "gro_max_size",
            "gso_ipv4_max_size",
            "gro_ipv4_max_size",
            "master",
        ],
        "link_del" => &[],
        "sysctl" => &["path", "value"],
        "ethtool" => &["features", "private_flags"],
        "vrf_add" => &["name", "table", "netns", "mtu", "mac", "group", "up"],
        "rdma_move" => &["device", "netns"],
        "ebpf_detach" => &[],
        "link_del_group" => &["group"],
        "veth_add" => &[
            "name",
            "peer_name",
            "peer_ns",
            "netns",
            "mtu",
            "mac",
            "peer_mac",
            "group",
            "peer_group",
            "up",
        ],
        "macvlan_add" => &["name", "link", "mode", "netns", "mtu", "mac", "group", "up"],
        "ipvlan_add" => &[
            "name", "link", "mode", "flags", "netns", "mtu", "group", "up",
        ],
        "vlan_add" => &[
            "name", "link", "vlan_id", "protocol", "netns", "mtu", "mac", "group", "up",
        ],
        "addr_add" | "addr_del" => &["address", "flags", "scope"],
        "route_add" | "route_del" => &[
            "dst", "gateway", "src", "scope", "table", "metric", "protocol", "family",
        ],
        "rule_add" | "rule_del" => &[
            "family", "priority", "table", "src", "dst", "iif", "oif", "fwmark",
        ],
        "neigh_add" | "neigh_del" => &["address", "lladdr", "state"],
        _ => return None,
    })
}

/// Every key any step may carry: a step's dict is read once into slots
/// indexed by position here (no Python string is created per lookup).
const KEYS: &[&str] = &[
    "op",
    "ns",
    "ifname",
    "ifindex",
    "name",
    "mtu",
    "mac",
    "up",
    "alias",
    "group",
    "netns",
    "gso_max_size",
    "gro_max_size",
    "peer_name",
    "peer_ns",
    "peer_mac",
    "peer_group",
    "link",
    "mode",
    "flags",
    "vlan_id",
    "protocol",
    "address",
    "scope",
    "dst",
    "gateway",
    "src",
    "table",
    "metric",
    "family",
    "priority",
    "iif",
    "oif",
    "fwmark",
    "lladdr",
    "state",
    "gso_ipv4_max_size",
    "gro_ipv4_max_size",
    "master",
    "path",
    "value",
    "features",
    "private_flags",
    "device",
];

fn key_id(k: &str) -> Option<usize> {
    KEYS.iter().position(|x| *x == k)
}

/// One step's dict, read in a single pass.
struct D<'py> {
    /// `Some` for every key present (its value may be `None`).
    slots: Vec<Option<Bound<'py, PyAny>>>,
}

impl<'py> D<'py> {
    fn new(d: &Bound<'py, PyDict>) -> Res<Self> {
        let mut slots: Vec<Option<Bound<'py, PyAny>>> = vec![None; KEYS.len()];
        for (k, v) in d.iter() {
            let Ok(ks) = k.cast::<PyString>() else {
                return Err("keys must be strings".into());
            };
            let s = ks
                .to_str()
                .map_err(|_| "keys must be strings".to_string())?;
            let id = key_id(s).ok_or_else(|| format!("unknown key {s:?}"))?;
            slots[id] = Some(v);
        }
        Ok(Self { slots })
    }
    /// The keys present in the dict.
    fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.slots
            .iter()
            .zip(KEYS)
            .filter(|(v, _)| v.is_some())
            .map(|(_, k)| *k)
    }
    fn get(&self, k: &str) -> Option<Bound<'py, PyAny>> {
        let id = key_id(k)?;
        self.slots[id].as_ref().filter(|v| !v.is_none()).cloned()
    }
    fn str(&self, k: &str) -> Res<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .extract::<String>()
                .map(Some)
                .map_err(|_| format!("{k} must be a string, got {}", type_name(&v))),
        }
    }
    fn req_str(&self, k: &str) -> Res<String> {
        self.str(k)?.ok_or_else(|| format!("{k} is required"))
    }
    fn u32(&self, k: &str) -> Res<Option<u32>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) if v.is_instance_of::<pyo3::types::PyBool>() => {
                Err(format!("{k} must be an integer"))
            }
            Some(v) => v
                .extract::<u32>()
                .map(Some)
                .map_err(|_| format!("{k} must be an integer in 0..2^32, got {v}")),
        }
    }
    fn bool(&self, k: &str) -> Res<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .extract::<bool>()
                .map(Some)
                .map_err(|_| format!("{k} must be a bool")),
        }
    }
    fn mac(&self, k: &str) -> Res<Option<Vec<u8>>> {
        self.str(k)?.map(|s| plan::parse_mac(&s)).transpose()
    }
    fn ifname(&self, k: &str) -> Res<Option<String>> {
        let n = self.str(k)?;
        if let Some(n) = &n {
            plan::validate_ifname(n)?;
        }
        Ok(n)
    }
    fn cidr(&self, k: &str) -> Res<Option<(IpAddr, u8)>> {
        self.str(k)?.map(|s| plan::parse_cidr(&s)).transpose()
    }
    fn ip(&self, k: &str) -> Res<Option<IpAddr>> {
        self.str(k)?
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| format!("{k}: invalid IP address {s:?}"))
            })
            .transpose()
    }
    fn link(&self) -> Res<Option<LinkRef>> {
        if let Some(n) = self.ifname("ifname")? {
            return Ok(Some(LinkRef::Name(n)));
        }
        match self.get("ifindex") {
            None => Ok(None),
            Some(v) => match v.extract::<i32>() {
                Ok(i) if i > 0 => Ok(Some(LinkRef::Index(i))),
                _ => Err(format!("ifindex must be a positive integer, got {v}")),
            },
        }
    }
    fn req_link(&self) -> Res<LinkRef> {
        self.link()?
            .ok_or_else(|| "ifname or ifindex is required".to_string())
    }
    /// A string from `names` or a raw integer.
    fn named(&self, k: &str, names: &[(&str, u32)]) -> Res<Option<u32>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => {
                if let Ok(s) = v.extract::<String>() {
                    names
                        .iter()
                        .find(|(n, _)| *n == s)
                        .map(|(_, x)| Some(*x))
                        .ok_or_else(|| {
                            format!("{k}: unknown value {s:?} (expected one of {})", list(names))
                        })
                } else if v.is_instance_of::<pyo3::types::PyBool>() {
                    Err(format!("{k} must be a string or an integer"))
                } else {
                    v.extract::<u32>()
                        .map(Some)
                        .map_err(|_| format!("{k} must be a string or an integer"))
                }
            }
        }
    }
    /// `master`: an interface name or ifindex; `""` or 0 detach (nomaster).
    fn master(&self) -> Res<Option<Option<LinkRef>>> {
        match self.slots[key_id("master").expect("known key")].as_ref() {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) if v.is_instance_of::<pyo3::types::PyBool>() => {
                Err("master must be an interface name or ifindex".into())
            }
            Some(v) => {
                if let Ok(s) = v.extract::<String>() {
                    if s.is_empty() {
                        return Ok(Some(None));
                    }
                    plan::validate_ifname(&s)?;
                    Ok(Some(Some(LinkRef::Name(s))))
                } else {
                    match v.extract::<i64>() {
                        Ok(0) => Ok(Some(None)),
                        Ok(i) if i > 0 && i <= i32::MAX as i64 => {
                            Ok(Some(Some(LinkRef::Index(i as i32))))
                        }
                        _ => Err(format!(
                            "master must be an interface name or a non-negative ifindex, got {v}"
                        )),
                    }
                }
            }
        }
    }
    /// `{name: bool}` (ethtool features, private flags), in the dict's order.
    fn bool_map(&self, k: &str) -> Res<Vec<(String, bool)>> {
        let Some(v) = self.get(k) else {
            return Ok(Vec::new());
        };
        let d = v
            .cast::<PyDict>()
            .map_err(|_| format!("{k} must be a dict of name -> bool"))?;
        let mut out = Vec::with_capacity(d.len());
        for (n, b) in d.iter() {
            let n: String = n
                .extract()
                .map_err(|_| format!("{k}: names must be strings"))?;
            if !b.is_instance_of::<pyo3::types::PyBool>() {
                return Err(format!("{k}[{n:?}] must be a bool"));
            }
            out.push((n, b.extract::<bool>().map_err(|e| e.to_string())?));
        }
        Ok(out)
    }
    fn only_named(&self, k: &str, names: &[(&str, u32)]) -> Res<Option<u32>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => {
                let s = v
                    .extract::<String>()
                    .map_err(|_| format!("{k} must be a string"))?;
                names
                    .iter()
                    .find(|(n, _)| *n == s)
                    .map(|(_, x)| Some(*x))
                    .ok_or_else(|| {
                        format!("{k}: unknown value {s:?} (expected one of {})", list(names))
                    })
            }
        }
    }
}

fn list(names: &[(&str, u32)]) -> String {
    names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

const SCOPES: &[(&str, u32)] = &[
    ("universe", 0),
    ("global", 0),
    ("site", 200),
    ("link", 253),
    ("host", 254),
    ("nowhere", 255),
];
const TABLES: &[(&str, u32)] = &[("main", 254), ("local", 255), ("default", 253)];
const PROTOCOLS: &[(&str, u32)] = &[("boot", 3), ("static", 4), ("kernel", 2)];
const FAMILIES: &[(&str, u32)] = &[("inet", 2), ("inet6", 10)];
const MACVLAN_MODES: &[(&str, u32)] = &[
    ("private", 1),
    ("vepa", 2),
    ("bridge", 4),
    ("passthru", 8),
    ("source", 16),
];
const IPVLAN_MODES: &[(&str, u32)] = &[("l2", 0), ("l3", 1), ("l3s", 2)];
const IPVLAN_FLAGS: &[(&str, u32)] = &[("bridge", 0), ("private", 1), ("vepa", 2)];
const VLAN_PROTOCOLS: &[(&str, u32)] = &[("802.1Q", 0x8100), ("802.1ad", 0x88a8)];
const NUD_STATES: &[(&str, u32)] = &[
    ("permanent", 0x80),
    ("reachable", 0x02),
    ("stale", 0x04),
    ("noarp", 0x40),
];
const ADDR_FLAGS: &[(&str, u32)] = &[
    ("nodad", 0x02),
    ("home", 0x10),
    ("mngtmpaddr", 0x100),
    ("noprefixroute", 0x200),
];

fn parse_step(p: &mut Parser, i: usize, obj: &Bound<'_, PyAny>) -> PyResult<Step> {
    let fail = |op: &str, m: String| invalid_argument(format!("step {i} ({op}): {m}"));
    let d = obj.cast::<PyDict>().map_err(|_| {
        invalid_argument(format!("step {i}: expected a dict, got {}", type_name(obj)))
    })?;
    let dd = D::new(d).map_err(|m| {
        let op = d
            .get_item("op")
            .ok()
            .flatten()
            .and_then(|o| o.extract::<String>().ok())
            .unwrap_or_else(|| "?".into());
        fail(&op, m)
    })?;
    let op = dd.req_str("op").map_err(|m| fail("?", m))?;
    let Some(keys) = allowed(&op) else {
        return Err(fail(&op, format!("unknown op {op:?}")));
    };
    let no_link = matches!(op.as_str(), "sysctl" | "rdma_move" | "vrf_add");
    for k in dd.present() {
        let link_key = (k == "ifname" || k == "ifindex") && !no_link;
        if !(k == "op" || k == "ns" || link_key || keys.contains(&k)) {
            return Err(fail(&op, format!("unknown key {k:?}")));
        }
    }
    let ns = match dd.get("ns") {
        Some(v) => p.ns(&v)?,
        None => None,
    };
    let mut nsk = |k: &str| -> PyResult<Option<usize>> {
        match dd.get(k) {
            Some(v) => p.ns(&v),
            None => Ok(None),
        }
    };
    let netns = nsk("netns")?;
    let rdma_ns = if op == "rdma_move" { netns } else { None };
    let netns = if op == "rdma_move" { None } else { netns };
    let peer_ns = if op == "veth_add" {
        nsk("peer_ns")?
    } else {
        None
    };
    let built: Res<Op> = (|| {
        let new_link = |kind: Kind| -> Res<Op> {
            Ok(Op::NewLink(NewLink {
                name: dd.ifname("name")?.ok_or("name is required")?,
                netns,
                mtu: dd.u32("mtu")?,
                mac: dd.mac("mac")?,
                group: dd.u32("group")?,
                up: dd.bool("up")?.unwrap_or(false),
                kind,
            }))
        };
        let parent = || -> Res<LinkRef> {
            Ok(LinkRef::Name(
                dd.ifname("link")?
                    .ok_or("link (the parent interface) is required")?,
            ))
        };
        Ok(match op.as_str() {
            "link_set" => Op::LinkSet(LinkSet {
                link: Some(dd.req_link()?),
                name: dd.ifname("name")?,
                mtu: dd.u32("mtu")?,
                mac: dd.mac("mac")?,
                up: dd.bool("up")?,
                alias: dd.str("alias")?,
                group: dd.u32("group")?,
                netns,
                gso_max_size: dd.u32("gso_max_size")?,
                gro_max_size: dd.u32("gro_max_size")?,
                gso_ipv4_max_size: dd.u32("gso_ipv4_max_size")?,
                gro_ipv4_max_size: dd.u32("gro_ipv4_max_size")?,
                master: dd.master()?,
            }),
            "sysctl" => Op::Sysctl(plan::Sysctl {
                path: dd.req_str("path")?,
                value: match dd.get("value") {
                    None => return Err("value is required".into()),
                    Some(v) if v.is_instance_of::<pyo3::types::PyBool>() => {
                        return Err("value must be a string (or an integer)".into())
                    }
                    Some(v) => match v.extract::<String>() {
                        Ok(s) => s,
                        Err(_) => v
                            .extract::<i64>()
                            .map(|i| i.to_string())
                            .map_err(|_| "value must be a string (or an integer)".to_string())?,
                    },
                },
            }),
            "ethtool" => Op::Ethtool(plan::Ethtool {
                link: dd.req_link()?,
                features: dd.bool_map("features")?,
                private_flags: dd.bool_map("private_flags")?,
            }),
            "vrf_add" => new_link(Kind::Vrf {
                table: dd.named("table", TABLES)?.ok_or("table is required")?,
            })?,
            "rdma_move" => Op::RdmaMove(plan::RdmaMove {
                device: dd.req_str("device")?,
                netns: rdma_ns.ok_or("netns (the target namespace) is required")?,
            }),
            "ebpf_detach" => Op::EbpfDetach(dd.req_link()?),
            "link_del" => Op::LinkDel(dd.req_link()?),
            "link_del_group" => Op::LinkDelGroup(dd.u32("group")?.ok_or("group is required")?),
            "veth_add" => new_link(Kind::Veth {
                peer_name: dd.ifname("peer_name")?.ok_or("peer_name is required")?,
                peer_ns,
                peer_mac: dd.mac("peer_mac")?,
                peer_group: dd.u32("peer_group")?,
            })?,
            "macvlan_add" => new_link(Kind::Macvlan {
                link: parent()?,
                mode: dd.only_named("mode", MACVLAN_MODES)?.unwrap_or(4),
            })?,
            "ipvlan_add" => new_link(Kind::Ipvlan {
                link: parent()?,
                mode: dd.only_named("mode", IPVLAN_MODES)?.unwrap_or(0) as u16,
                flags: dd.only_named("flags", IPVLAN_FLAGS)?.unwrap_or(0) as u16,
            })?,
            "vlan_add" => {
                let id = dd.u32("vlan_id")?.ok_or("vlan_id is required")?;
                if !(1..=4094).contains(&id) {
                    return Err(format!("vlan_id {id} is outside 1..4094"));
                }
                new_link(Kind::Vlan {
                    link: parent()?,
                    id: id as u16,
                    protocol: dd.only_named("protocol", VLAN_PROTOCOLS)?.unwrap_or(0x8100) as u16,
                })?
            }
            "addr_add" | "addr_del" => {
                let (ip, prefix) = dd.cidr("address")?.ok_or("address is required")?;
                let mut flags = 0;
                if let Some(v) = dd.get("flags") {
                    let names: Vec<String> = v
                        .extract()
                        .map_err(|_| "flags must be a list of strings".to_string())?;
                    for n in names {
                        flags |= ADDR_FLAGS
                            .iter()
                            .find(|(k, _)| *k == n)
                            .map(|x| x.1)
                            .ok_or_else(|| {
                                format!(
                                    "flags: unknown address flag {n:?} (expected {})",
                                    list(ADDR_FLAGS)
                                )
                            })?;
                    }
                }
                let scope = dd.named("scope", SCOPES)?.unwrap_or(0);
                if scope > 255 {
                    return Err(format!("scope {scope} is outside 0..255"));
                }
                Op::Addr(Addr {
                    add: op == "addr_add",
                    link: dd.req_link()?,
                    ip,
                    prefix,
                    flags,
                    scope: scope as u8,
                })
            }
            "route_add" | "route_del" => {
                let dst_s = dd.req_str("dst")?;
                let gateway = dd.ip("gateway")?;
                let prefsrc = dd.ip("src")?;
                let fam = dd.only_named("family", FAMILIES)?.map(|f| f as u8);
                let dst = if dst_s == "default" {
                    None
                } else {
                    Some(plan::parse_cidr(&dst_s)?)
                };
                let family = match (dst, fam, gateway.or(prefsrc)) {
                    (Some((ip, _)), _, _) => wire::family_of(&ip),
                    (None, Some(f), _) => f,
                    (None, None, Some(ip)) => wire::family_of(&ip),
                    (None, None, None) => {
                        return Err("family is required for a default route without gateway".into())
                    }
                };
                if let (Some(f), Some((ip, _))) = (fam, dst) {
                    if wire::family_of(&ip) != f {
                        return Err("family does not match dst".into());
                    }
                }
                let scope = dd.named("scope", SCOPES)?;
                if scope.is_some_and(|s| s > 255) {
                    return Err("scope is outside 0..255".into());
                }
                let protocol = dd.named("protocol", PROTOCOLS)?;
                if protocol.is_some_and(|s| s > 255) {
                    return Err("protocol is outside 0..255".into());
                }
                Op::Route(Route {
                    add: op == "route_add",
                    family,
                    dst,
                    gateway,
                    prefsrc,
                    oif: dd.link()?,
                    scope: scope.map(|s| s as u8),
                    table: dd.named("table", TABLES)?.unwrap_or(254),
                    metric: dd.u32("metric")?,
                    protocol: protocol.map(|s| s as u8),
                })
            }
            "rule_add" | "rule_del" => {
                let src = dd.cidr("src")?;
                let dst = dd.cidr("dst")?;
                let fam = dd.only_named("family", FAMILIES)?.map(|f| f as u8);
                let family = fam
                    .or_else(|| src.or(dst).map(|(ip, _)| wire::family_of(&ip)))
                    .ok_or("family is required when neither src nor dst is given")?;
                Op::Rule(Rule {
                    add: op == "rule_add",
                    family,
                    priority: dd.u32("priority")?,
                    table: dd.named("table", TABLES)?.unwrap_or(254),
                    src,
                    dst,
                    iif: dd.ifname("iif")?,
                    oif: dd.ifname("oif")?,
                    fwmark: dd.u32("fwmark")?,
                })
            }
            "neigh_add" | "neigh_del" => Op::Neigh(Neigh {
                add: op == "neigh_add",
                link: dd.req_link()?,
                ip: dd.ip("address")?.ok_or("address is required")?,
                lladdr: dd.mac("lladdr")?,
                state: dd.only_named("state", NUD_STATES)?.unwrap_or(0x80) as u16,
            }),
            _ => unreachable!("checked by allowed()"),
        })
    })();
    let op_v = built.map_err(|m| fail(&op, m))?;
    op_v.validate().map_err(|m| fail(&op, m))?;
    Ok(Step { ns, op: op_v })
}

fn parse_plan(steps: &Bound<'_, PyAny>) -> PyResult<Plan> {
    let mut p = Parser {
        namespaces: Vec::new(),
        seen: Vec::new(),
    };
    let mut out = Vec::new();
    for (i, s) in steps.try_iter()?.enumerate() {
        out.push(parse_step(&mut p, i, &s?)?);
    }
    Ok(Plan {
        namespaces: p.namespaces,
        steps: out,
    })
}

#[pyfunction]
#[pyo3(signature = (steps, *, rollback = true, recover_partial = false))]
fn apply<'py>(
    py: Python<'py>,
    steps: &Bound<'py, PyAny>,
    rollback: bool,
    recover_partial: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let plan = parse_plan(steps)?;
    let out = py
        .detach(|| knd_netlink::apply_with(&plan, rollback, recover_partial))
        .map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("steps", out.steps)?;
    d.set_item("sendmsg", out.sendmsg)?;
    let results = PyList::empty(py);
    let (k_index, k_op, k_ifindex) = (
        pyo3::intern!(py, "index"),
        pyo3::intern!(py, "op"),
        pyo3::intern!(py, "ifindex"),
    );
    for r in out.results {
        let x = PyDict::new(py);
        x.set_item(k_index, r.index)?;
        x.set_item(k_op, r.op)?;
        x.set_item(k_ifindex, r.ifindex)?;
        results.append(x)?;
    }
    d.set_item("results", results)?;
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (steps, *, seq = 1))]
fn encode<'py>(
    py: Python<'py>,
    steps: &Bound<'py, PyAny>,
    seq: u32,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let plan = parse_plan(steps)?;
    let msgs = py
        .detach(|| knd_netlink::encode_plan(&plan, seq))
        .map_err(to_py)?;
    Ok(msgs.iter().map(|m| PyBytes::new(py, m)).collect())
}

fn ns_arg(ns: Option<&Bound<'_, PyNetNs>>) -> PyResult<Option<knd_netns::NetNs>> {
    ns.map(|n| n.get().clone_inner()).transpose()
}

fn ip_s(ip: &Option<IpAddr>) -> Option<String> {
    ip.map(|i| i.to_string())
}

fn link_dict<'py>(py: Python<'py>, l: &knd_netlink::LinkInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("ifindex", l.ifindex)?;
    d.set_item("name", &l.name)?;
    d.set_item("kind", &l.kind)?;
    d.set_item("mac", l.mac.as_ref().map(|m| plan::format_mac(m)))?;
    d.set_item("mtu", l.mtu)?;
    d.set_item("operstate", l.operstate)?;
    d.set_item("flags", l.flags)?;
    d.set_item("up", l.flags & wire::IFF_UP != 0)?;
    d.set_item("master", l.master)?;
    d.set_item("link", l.link)?;
    d.set_item("alias", &l.alias)?;
    d.set_item("group", l.group)?;
    d.set_item("gso_max_size", l.gso_max_size)?;
    d.set_item("gro_max_size", l.gro_max_size)?;
    d.set_item("gso_ipv4_max_size", l.gso_ipv4_max_size)?;
    d.set_item("gro_ipv4_max_size", l.gro_ipv4_max_size)?;
    d.set_item("parent_dev_name", &l.parent_dev_name)?;
    d.set_item("parent_dev_bus", &l.parent_dev_bus)?;
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (ns = None))]
fn dump_links<'py>(
    py: Python<'py>,
    ns: Option<&Bound<'py, PyNetNs>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let ns = ns_arg(ns)?;
    let v = py
        .detach(|| knd_netlink::dump_links(ns.as_ref()))
        .map_err(to_py)?;
    v.iter().map(|l| link_dict(py, l)).collect()
}

#[pyfunction]
#[pyo3(signature = (ns = None))]
fn dump_addresses<'py>(
    py: Python<'py>,
    ns: Option<&Bound<'py, PyNetNs>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let ns = ns_arg(ns)?;
    let v = py
        .detach(|| knd_netlink::dump_addresses(ns.as_ref()))
        .map_err(to_py)?;
    v.iter()
        .map(|a| {
            let d = PyDict::new(py);
            d.set_item("ifindex", a.ifindex)?;
            d.set_item("family", fam(a.family))?;
            d.set_item("address", a.address.to_string())?;
            d.set_item("prefixlen", a.prefixlen)?;
            d.set_item("cidr", format!("{}/{}", a.address, a.prefixlen))?;
            d.set_item("scope", a.scope)?;
            d.set_item("flags", a.flags)?;
            d.set_item("label", &a.label)?;
            Ok(d)
        })
        .collect()
}

fn fam(f: u8) -> &'static str {
    match f {
        wire::AF_INET => "inet",
        wire::AF_INET6 => "inet6",
        _ => "other",
    }
}

fn cidr_s(ip: &Option<IpAddr>, len: u8) -> Option<String> {
    ip.map(|i| format!("{i}/{len}"))
}

#[pyfunction]
#[pyo3(signature = (ns = None, *, table = None))]
fn dump_routes<'py>(
    py: Python<'py>,
    ns: Option<&Bound<'py, PyNetNs>>,
    table: Option<u32>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let ns = ns_arg(ns)?;
    let v = py
        .detach(|| knd_netlink::dump_routes(ns.as_ref(), table))
        .map_err(to_py)?;
    v.iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("family", fam(r.family))?;
            d.set_item(
                "dst",
                cidr_s(&r.dst, r.dst_len).unwrap_or_else(|| {
                    if r.dst_len == 0 {
                        "default".into()
                    } else {
                        String::new()
                    }
                }),
            )?;
            d.set_item("src", cidr_s(&r.src, r.src_len))?;
            d.set_item("gateway", ip_s(&r.gateway))?;
            d.set_item("prefsrc", ip_s(&r.prefsrc))?;
            d.set_item("oif", r.oif)?;
            d.set_item("table", r.table)?;
            d.set_item("protocol", r.protocol)?;
            d.set_item("scope", r.scope)?;
            d.set_item("type", r.route_type)?;
            d.set_item("metric", r.priority)?;
            d.set_item("flags", r.flags)?;
            Ok(d)
        })
        .collect()
}

#[pyfunction]
#[pyo3(signature = (ns = None))]
fn dump_rules<'py>(
    py: Python<'py>,
    ns: Option<&Bound<'py, PyNetNs>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let ns = ns_arg(ns)?;
    let v = py
        .detach(|| knd_netlink::dump_rules(ns.as_ref()))
        .map_err(to_py)?;
    v.iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("family", fam(r.family))?;
            d.set_item("priority", r.priority)?;
            d.set_item("table", r.table)?;
            d.set_item("action", r.action)?;
            d.set_item("src", cidr_s(&r.src, r.src_len))?;
            d.set_item("dst", cidr_s(&r.dst, r.dst_len))?;
            d.set_item("iif", &r.iifname)?;
            d.set_item("oif", &r.oifname)?;
            d.set_item("fwmark", r.fwmark)?;
            d.set_item("flags", r.flags)?;
            Ok(d)
        })
        .collect()
}

#[pyfunction]
#[pyo3(signature = (ns = None))]
fn dump_neighbours<'py>(
    py: Python<'py>,
    ns: Option<&Bound<'py, PyNetNs>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let ns = ns_arg(ns)?;
    let v = py
        .detach(|| knd_netlink::dump_neighbours(ns.as_ref()))
        .map_err(to_py)?;
    v.iter()
        .map(|n| {
            let d = PyDict::new(py);
            d.set_item("ifindex", n.ifindex)?;
            d.set_item("family", fam(n.family))?;
            d.set_item("address", ip_s(&n.address))?;
            d.set_item("lladdr", n.lladdr.as_ref().map(|m| plan::format_mac(m)))?;
            d.set_item("state", n.state)?;
            d.set_item("flags", n.flags)?;
            Ok(d)
        })
        .collect()
}

fn bool_dict<'py>(py: Python<'py>, v: &[(String, bool)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, b) in v {
        d.set_item(k, *b)?;
    }
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (ifname, ns = None))]
fn dump_ethtool<'py>(
    py: Python<'py>,
    ifname: &str,
    ns: Option<&Bound<'py, PyNetNs>>,
) -> PyResult<Bound<'py, PyDict>> {
    let ns = ns_arg(ns)?;
    let (feats, fixed, flags) = py
        .detach(|| knd_netlink::ethtool::dump_ethtool(ns.as_ref(), ifname))
        .map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("features", bool_dict(py, &feats)?)?;
    d.set_item("private_flags", bool_dict(py, &flags)?)?;
    d.set_item("fixed", fixed)?;
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (path, ns = None))]
fn dump_sysctl(py: Python<'_>, path: &str, ns: Option<&Bound<'_, PyNetNs>>) -> PyResult<String> {
    let ns = ns_arg(ns)?;
    py.detach(|| knd_netlink::sysctl::read(ns.as_ref(), path))
        .map_err(to_py)
}

#[pyfunction]
#[pyo3(signature = (ifname, ns = None))]
fn dump_tc<'py>(
    py: Python<'py>,
    ifname: &str,
    ns: Option<&Bound<'py, PyNetNs>>,
) -> PyResult<Bound<'py, PyDict>> {
    let ns = ns_arg(ns)?;
    let (filters, tcx) = py
        .detach(|| knd_netlink::tc::dump_tc(ns.as_ref(), ifname))
        .map_err(to_py)?;
    let d = PyDict::new(py);
    let ebpf = !tcx.is_empty() || filters.iter().any(|f| f.is_bpf());
    d.set_item(
        "filters",
        filters.iter().map(|f| f.label()).collect::<Vec<_>>(),
    )?;
    d.set_item(
        "tcx",
        tcx.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
    )?;
    d.set_item("ebpf", ebpf)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dump_ethtool, m)?)?;
    m.add_function(wrap_pyfunction!(dump_sysctl, m)?)?;
    m.add_function(wrap_pyfunction!(dump_tc, m)?)?;
    m.add_function(wrap_pyfunction!(apply, m)?)?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(dump_links, m)?)?;
    m.add_function(wrap_pyfunction!(dump_addresses, m)?)?;
    m.add_function(wrap_pyfunction!(dump_routes, m)?)?;
    m.add_function(wrap_pyfunction!(dump_rules, m)?)?;
    m.add_function(wrap_pyfunction!(dump_neighbours, m)?)?;
    Ok(())
}
