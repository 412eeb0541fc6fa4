//! Plan steps (the typed form of `docs/plan-steps.md`), their validation and
//! their exact encoding.

use std::net::IpAddr;

use crate::error::NlError;
use crate::wire::{self, Enc};

/// A link addressed by name (resolved in the step's namespace) or by index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkRef {
    Name(String),
    Index(i32),
}

impl LinkRef {
    pub fn name(&self) -> Option<&str> {
        match self {
            LinkRef::Name(n) => Some(n),
            LinkRef::Index(_) => None,
        }
    }
}

impl std::fmt::Display for LinkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkRef::Name(n) => write!(f, "{n}"),
            LinkRef::Index(i) => write!(f, "ifindex {i}"),
        }
    }
}

/// `link_set`: everything carried in ONE RTM_NEWLINK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkSet {
    pub link: Option<LinkRef>,
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<Vec<u8>>,
    pub up: Option<bool>,
    pub alias: Option<String>,
    pub group: Option<u32>,
    /// Move to this namespace (an index into [`crate::exec::Plan::namespaces`]).
    pub netns: Option<usize>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
    /// IFLA_MASTER: `Some(None)` detaches the link from its master (nomaster).
    pub master: Option<Option<LinkRef>>,
}

/// The kind-specific part of a link creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Veth {
        peer_name: String,
        peer_ns: Option<usize>,
        peer_mac: Option<Vec<u8>>,
        peer_group: Option<u32>,
    },
    Macvlan {
        link: LinkRef,
        mode: u32,
    },
    Ipvlan {
        link: LinkRef,
        mode: u16,
        flags: u16,
    },
    Vlan {
        link: LinkRef,
        id: u16,
        protocol: u16,
    },
    Vrf {
        table: u32,
    },
}

/// `veth_add`, `macvlan_add`, `ipvlan_add`, `vlan_add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLink {
    pub name: String,
    pub netns: Option<usize>,
    pub mtu: Option<u32>,
    pub mac: Option<Vec<u8>>,
    pub group: Option<u32>,
    pub up: bool,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub add: bool,
    pub link: LinkRef,
    pub ip: IpAddr,
    pub prefix: u8,
    pub flags: u32,
    pub scope: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub add: bool,
    pub family: u8,
    /// `None` = default route.
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    pub oif: Option<LinkRef>,
    pub scope: Option<u8>,
    pub table: u32,
    pub metric: Option<u32>,
    pub protocol: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub add: bool,
    pub family: u8,
    pub priority: Option<u32>,
    pub table: u32,
    pub src: Option<(IpAddr, u8)>,
    pub dst: Option<(IpAddr, u8)>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub fwmark: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub add: bool,
    pub link: LinkRef,
    pub ip: IpAddr,
    pub lladdr: Option<Vec<u8>>,
    pub state: u16,
}

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    LinkSet(LinkSet),
    LinkDel(LinkRef),
    LinkDelGroup(u32),
    NewLink(NewLink),
    Addr(Addr),
    Route(Route),
    Rule(Rule),
    Neigh(Neigh),
    /// Write `value` to `/proc/sys/<path>` from a thread inside the step's namespace.
    Sysctl(Sysctl),
    /// Ethtool features and private flags (ethtool generic netlink).
    Ethtool(Ethtool),
    /// Move an RDMA device to another namespace (RDMA netlink).
    RdmaMove(RdmaMove),
    /// Remove tc filters (clsact/ingress qdiscs) and tcx programs of a link.
    EbpfDetach(LinkRef),
}

/// `sysctl`: a path relative to `/proc/sys` (always under `net/`) and its new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub path: String,
    pub value: String,
}

/// `ethtool`: features and private flags to turn on (`true`) or off, by kernel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ethtool {
    pub link: LinkRef,
    pub features: Vec<(String, bool)>,
    pub private_flags: Vec<(String, bool)>,
}

/// `rdma_move`: an RDMA device (by name) into the namespace `netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaMove {
    pub device: String,
    pub netns: usize,
}

impl Op {
    /// The operation's name in the plan schema.
    pub fn name(&self) -> &'static str {
        match self {
            Op::LinkSet(_) => "link_set",
            Op::LinkDel(_) => "link_del",
            Op::LinkDelGroup(_) => "link_del_group",
            Op::NewLink(n) => match n.kind {
                Kind::Veth { .. } => "veth_add",
                Kind::Macvlan { .. } => "macvlan_add",
                Kind::Ipvlan { .. } => "ipvlan_add",
                Kind::Vlan { .. } => "vlan_add",
                Kind::Vrf { .. } => "vrf_add",
            },
            Op::Sysctl(_) => "sysctl",
            Op::Ethtool(_) => "ethtool",
            Op::RdmaMove(_) => "rdma_move",
            Op::EbpfDetach(_) => "ebpf_detach",
            Op::Addr(a) => ["addr_del", "addr_add"][a.add as usize],
            Op::Route(r) => ["route_del", "route_add"][r.add as usize],
            Op::Rule(r) => ["rule_del", "rule_add"][r.add as usize],
            Op::Neigh(n) => ["neigh_del", "neigh_add"][n.add as usize],
        }
    }

    /// The link kind a creation asks for.
    pub fn kind_name(&self) -> Option<&'static str> {
        match self {
            Op::NewLink(n) => Some(match n.kind {
                Kind::Veth { .. } => "veth",
                Kind::Macvlan { .. } => "macvlan",
                Kind::Ipvlan { .. } => "ipvlan",
                Kind::Vlan { .. } => "vlan",
                Kind::Vrf { .. } => "vrf",
            }),
            _ => None,
        }
    }

    /// The link the step addresses (for error reports and results).
    pub fn target(&self) -> Option<&LinkRef> {
        match self {
            Op::LinkSet(s) => s.link.as_ref(),
            Op::LinkDel(l) => Some(l),
            Op::Addr(a) => Some(&a.link),
            Op::Route(r) => r.oif.as_ref(),
            Op::Neigh(n) => Some(&n.link),
            Op::Ethtool(t) => Some(&t.link),
            Op::EbpfDetach(l) => Some(l),
            _ => None,
        }
    }

    /// True for steps that do not travel on the rtnetlink socket (they run
    /// on their own, after the pending batch has been sent).
    pub fn is_side_channel(&self) -> bool {
        matches!(
            self,
            Op::Sysctl(_) | Op::Ethtool(_) | Op::RdmaMove(_) | Op::EbpfDetach(_)
        )
    }

    /// The interface name to report for this step.
    pub fn ifname(&self) -> Option<String> {
        match self {
            Op::NewLink(n) => Some(n.name.clone()),
            Op::RdmaMove(m) => Some(m.device.clone()),
            Op::Sysctl(_) => None,
            Op::Rule(r) => r.iif.clone().or_else(|| r.oif.clone()),
            _ => self.target().map(|l| l.to_string()),
        }
    }

    /// Every link reference resolved in the step's own namespace:
    /// `(target, other)` where other is a parent link or a route's oif.
    pub fn refs(&self) -> (Option<&LinkRef>, Option<&LinkRef>) {
        match self {
            Op::LinkSet(s) => (s.link.as_ref(), s.master.as_ref().and_then(|m| m.as_ref())),
            Op::LinkDel(l) => (Some(l), None),
            Op::NewLink(n) => match &n.kind {
                Kind::Macvlan { link, .. }
                | Kind::Ipvlan { link, .. }
                | Kind::Vlan { link, .. } => (None, Some(link)),
                Kind::Veth { .. } | Kind::Vrf { .. } => (None, None),
            },
            Op::Addr(a) => (Some(&a.link), None),
            Op::Route(r) => (None, r.oif.as_ref()),
            Op::Neigh(n) => (Some(&n.link), None),
            Op::Ethtool(t) => (Some(&t.link), None),
            Op::EbpfDetach(l) => (Some(l), None),
            Op::LinkDelGroup(_) | Op::Rule(_) | Op::Sysctl(_) | Op::RdmaMove(_) => (None, None),
        }
    }

    /// Checks what can be checked without the kernel.
    pub fn validate(&self) -> Result<(), String> {
        let link_ref = |l: &LinkRef| match l {
            LinkRef::Name(n) => validate_ifname(n),
            LinkRef::Index(i) if *i > 0 => Ok(()),
            LinkRef::Index(i) => Err(format!("invalid ifindex {i}")),
        };
        let mac = |m: &Option<Vec<u8>>| match m {
            Some(m) if m.len() != 6 => Err(format!("a MAC address has 6 octets, got {}", m.len())),
            _ => Ok(()),
        };
        let (a, b) = self.refs();
        if let Some(l) = a {
            link_ref(l)?;
        }
        if let Some(l) = b {
            link_ref(l)?;
        }
        match self {
            Op::LinkSet(s) => {
                if s.link.is_none() {
                    return Err("link_set needs ifname or ifindex".into());
                }
                if let Some(n) = &s.name {
                    validate_ifname(n)?;
                }
                mac(&s.mac)?;
                if let Some(al) = &s.alias {
                    if al.len() > 255 {
                        return Err("alias is longer than 255 bytes".into());
                    }
                }
                if s.mtu == Some(0) {
                    return Err("mtu must be positive".into());
                }
            }
            Op::LinkDelGroup(g) if *g == 0 => {
                return Err("group 0 is the default group of every link".into())
            }
            Op::NewLink(n) => {
                validate_ifname(&n.name)?;
                mac(&n.mac)?;
                match &n.kind {
                    Kind::Veth {
                        peer_name,
                        peer_mac,
                        ..
                    } => {
                        validate_ifname(peer_name)?;
                        mac(peer_mac)?;
                    }
                    Kind::Vlan { id, .. } if *id == 0 || *id > 4094 => {
                        return Err(format!("vlan_id {id} is outside 1..4094"))
                    }
                    Kind::Vrf { table } if *table == 0 => {
                        return Err("a vrf needs a routing table other than 0".into())
                    }
                    _ => {}
                }
            }
            Op::Addr(a) => check_prefix(&a.ip, a.prefix)?,
            Op::Route(r) => {
                if let Some((ip, len)) = &r.dst {
                    check_prefix(ip, *len)?;
                    if wire::family_of(ip) != r.family {
                        return Err("route family does not match its destination".into());
                    }
                }
                for ip in [&r.gateway, &r.prefsrc].into_iter().flatten() {
                    if wire::family_of(ip) != r.family {
                        return Err(format!(
                            "route to an {} destination cannot use {ip}",
                            fam_name(r.family)
                        ));
                    }
                }
                if r.add && r.gateway.is_none() && r.oif.is_none() {
                    return Err("route_add needs a gateway or an interface".into());
                }
            }
            Op::Rule(r) => {
                for (ip, len) in [&r.src, &r.dst].into_iter().flatten() {
                    check_prefix(ip, *len)?;
                    if wire::family_of(ip) != r.family {
                        return Err("rule families disagree".into());
                    }
                }
                for n in [&r.iif, &r.oif].into_iter().flatten() {
                    validate_ifname(n)?;
                }
            }
            Op::Neigh(n) => {
                mac(&n.lladdr)?;
                if n.add && n.lladdr.is_none() {
                    return Err("neigh_add needs lladdr".into());
                }
            }
            Op::Sysctl(s) => validate_sysctl_path(&s.path)?,
            Op::Ethtool(t) => {
                if t.features.is_empty() && t.private_flags.is_empty() {
                    return Err("ethtool needs features or private_flags".into());
                }
                for (n, _) in t.features.iter().chain(&t.private_flags) {
                    if n.is_empty() || n.len() > 31 || n.bytes().any(|b| b == 0) {
                        return Err(format!("invalid ethtool name {n:?}"));
                    }
                }
            }
            Op::RdmaMove(m)
                if m.device.is_empty()
                    || m.device.len() > 63
                    || m.device.bytes().any(|b| b == b'/' || b == 0) =>
            {
                return Err(format!("invalid RDMA device name {:?}", m.device));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A sysctl path relative to `/proc/sys`: under `net/`, made of plain
/// components (no `.`/`..`, no empty component, no leading `/`).
pub fn validate_sysctl_path(path: &str) -> Result<(), String> {
    if !path.starts_with("net/") {
        return Err(format!(
            "sysctl path {path:?} must be relative to /proc/sys and start with \"net/\""
        ));
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!(
                "sysctl path {path:?} has an empty, '.' or '..' component"
            ));
        }
        if c.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
            return Err(format!("sysctl path {path:?} contains NUL or whitespace"));
        }
    }
    Ok(())
}

fn fam_name(f: u8) -> &'static str {
    if f == wire::AF_INET {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn check_prefix(ip: &IpAddr, prefix: u8) -> Result<(), String> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("prefix length {prefix} is too long for {ip}"));
    }
    Ok(())
}

/// Interface names: 1..15 bytes, no `/`, no whitespace, no NUL, not `.`/`..`.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(format!(
            "interface name {name:?} contains '/', ':', NUL or whitespace"
        ));
    }
    Ok(())
}

/// `"10.0.0.2/24"` -> (address, 24). A bare address gets the full length.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("invalid IP address in {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match p {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("invalid prefix length in {s:?}")),
        },
    };
    Ok((ip, len))
}

/// `"02:00:00:00:00:01"` -> six octets.
pub fn parse_mac(s: &str) -> Result<Vec<u8>, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "invalid MAC address {s:?} (expected six hex octets)"
        ));
    }
    parts
        .iter()
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).map_err(|_| ())
            } else {
                Err(())
            }
        })
        .collect::<Result<Vec<u8>, ()>>()
        .map_err(|_| format!("invalid MAC address {s:?} (expected six hex octets)"))
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8]) -> String {
    let mut s = String::with_capacity(m.len() * 3);
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Link indexes a step's encoding needs, resolved by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolved {
    /// The link the step addresses (0 when none).
    pub target: i32,
    /// The parent link (macvlan/ipvlan/vlan) or a route's oif (0 when none).
    pub other: i32,
}

const REQ_ACK: u16 = wire::NLM_F_REQUEST | wire::NLM_F_ACK;
const CREATE: u16 = wire::NLM_F_REQUEST | wire::NLM_F_ACK | wire::NLM_F_CREATE | wire::NLM_F_EXCL;

/// Appends the message of `op` to `e`. `fd` turns a namespace reference
/// (`netns`, `peer_ns`) into the descriptor carried in IFLA_NET_NS_FD.
pub fn encode(
    e: &mut Enc<'_>,
    seq: u32,
    op: &Op,
    r: Resolved,
    fd: &dyn Fn(usize) -> i32,
) -> Result<(), NlError> {
    match op {
        Op::LinkSet(s) => {
            let m = e.begin_msg(wire::RTM_NEWLINK, REQ_ACK, seq);
            let (flags, change) = match s.up {
                Some(true) => (wire::IFF_UP, wire::IFF_UP),
                Some(false) => (0, wire::IFF_UP),
                None => (0, 0),
            };
            e.ifinfomsg(wire::AF_UNSPEC, r.target, flags, change);
            if let Some(ns) = s.netns {
                e.attr_u32(wire::IFLA_NET_NS_FD, fd(ns) as u32);
            }
            if let Some(n) = &s.name {
                e.attr_str(wire::IFLA_IFNAME, n);
            }
            if let Some(v) = s.mtu {
                e.attr_u32(wire::IFLA_MTU, v);
            }
            if let Some(v) = &s.mac {
                e.attr(wire::IFLA_ADDRESS, v);
            }
            if let Some(v) = &s.alias {
                e.attr(wire::IFLA_IFALIAS, v.as_bytes());
            }
            if let Some(v) = s.group {
                e.attr_u32(wire::IFLA_GROUP, v);
            }
            if let Some(v) = s.gso_max_size {
                e.attr_u32(wire::IFLA_GSO_MAX_SIZE, v);
            }
            if let Some(v) = s.gro_max_size {
                e.attr_u32(wire::IFLA_GRO_MAX_SIZE, v);
            }
            if let Some(v) = s.gso_ipv4_max_size {
                e.attr_u32(wire::IFLA_GSO_IPV4_MAX_SIZE, v);
            }
            if let Some(v) = s.gro_ipv4_max_size {
                e.attr_u32(wire::IFLA_GRO_IPV4_MAX_SIZE, v);
            }
            if let Some(m) = &s.master {
                let idx = if m.is_some() {
                    r.other.max(0) as u32
                } else {
                    0
                };
                e.attr_u32(wire::IFLA_MASTER, idx);
            }
            e.end_msg(m);
        }
        Op::LinkDel(l) => {
            let m = e.begin_msg(wire::RTM_DELLINK, REQ_ACK, seq);
            e.ifinfomsg(wire::AF_UNSPEC, r.target, 0, 0);
            if r.target <= 0 {
                if let LinkRef::Name(n) = l {
                    e.attr_str(wire::IFLA_IFNAME, n);
                }
            }
            e.end_msg(m);
        }
        Op::LinkDelGroup(g) => {
            let m = e.begin_msg(wire::RTM_DELLINK, REQ_ACK, seq);
            e.ifinfomsg(wire::AF_UNSPEC, 0, 0, 0);
            e.attr_u32(wire::IFLA_GROUP, *g);
            e.end_msg(m);
        }
        Op::NewLink(n) => {
            let m = e.begin_msg(wire::RTM_NEWLINK, CREATE, seq);
            let up = if n.up { wire::IFF_UP } else { 0 };
            e.ifinfomsg(wire::AF_UNSPEC, 0, up, up);
            e.attr_str(wire::IFLA_IFNAME, &n.name);
            if let Some(ns) = n.netns {
                e.attr_u32(wire::IFLA_NET_NS_FD, fd(ns) as u32);
            }
            if r.other > 0 {
                e.attr_u32(wire::IFLA_LINK, r.other as u32);
            }
            if let Some(v) = n.mtu {
                e.attr_u32(wire::IFLA_MTU, v);
            }
            if let Some(v) = &n.mac {
                e.attr(wire::IFLA_ADDRESS, v);
            }
            if let Some(v) = n.group {
                e.attr_u32(wire::IFLA_GROUP, v);
            }
            let li = e.begin_nest(wire::IFLA_LINKINFO);
            e.attr_str(wire::IFLA_INFO_KIND, op.kind_name().unwrap_or(""));
            let data = e.begin_nest(wire::IFLA_INFO_DATA);
            match &n.kind {
                Kind::Veth {
                    peer_name,
                    peer_ns,
                    peer_mac,
                    peer_group,
                } => {
                    let peer = e.begin_nest(wire::VETH_INFO_PEER);
                    e.ifinfomsg(wire::AF_UNSPEC, 0, 0, 0);
                    e.attr_str(wire::IFLA_IFNAME, peer_name);
                    if let Some(ns) = peer_ns {
                        e.attr_u32(wire::IFLA_NET_NS_FD, fd(*ns) as u32);
                    }
                    if let Some(v) = n.mtu {
                        e.attr_u32(wire::IFLA_MTU, v);
                    }
                    if let Some(v) = peer_mac {
                        e.attr(wire::IFLA_ADDRESS, v);
                    }
                    if let Some(v) = peer_group {
                        e.attr_u32(wire::IFLA_GROUP, *v);
                    }
                    e.end_nest(peer);
                }
                Kind::Macvlan { mode, .. } => e.attr_u32(wire::IFLA_MACVLAN_MODE, *mode),
                Kind::Ipvlan { mode, flags, .. } => {
                    e.attr_u16(wire::IFLA_IPVLAN_MODE, *mode);
                    e.attr_u16(wire::IFLA_IPVLAN_FLAGS, *flags);
                }
                Kind::Vlan { id, protocol, .. } => {
                    e.attr_u16(wire::IFLA_VLAN_ID, *id);
                    e.attr(wire::IFLA_VLAN_PROTOCOL, &protocol.to_be_bytes());
                }
                Kind::Vrf { table } => e.attr_u32(wire::IFLA_VRF_TABLE, *table),
            }
            e.end_nest(data);
            e.end_nest(li);
            e.end_msg(m);
        }
        Op::Addr(a) => {
            let (ty, fl) = if a.add {
                (wire::RTM_NEWADDR, CREATE)
            } else {
                (wire::RTM_DELADDR, REQ_ACK)
            };
            let m = e.begin_msg(ty, fl, seq);
            e.u8(wire::family_of(&a.ip));
            e.u8(a.prefix);
            e.u8((a.flags & 0xff) as u8);
            e.u8(a.scope);
            e.u32(r.target as u32);
            let ip = wire::ip_bytes(&a.ip);
            e.attr(wire::IFA_LOCAL, ip.as_slice());
            e.attr(wire::IFA_ADDRESS, ip.as_slice());
            if a.flags != 0 {
                e.attr_u32(wire::IFA_FLAGS, a.flags);
            }
            e.end_msg(m);
        }
        Op::Route(rt) => {
            let (ty, fl) = if rt.add {
                (wire::RTM_NEWROUTE, CREATE)
            } else {
                (wire::RTM_DELROUTE, REQ_ACK)
            };
            let m = e.begin_msg(ty, fl, seq);
            let dst_len = rt.dst.map(|d| d.1).unwrap_or(0);
            let scope = rt.scope.unwrap_or(if !rt.add {
                wire::RT_SCOPE_NOWHERE
            } else if rt.gateway.is_none() && rt.oif.is_some() {
                wire::RT_SCOPE_LINK
            } else {
                wire::RT_SCOPE_UNIVERSE
            });
            let protocol = rt
                .protocol
                .unwrap_or(if rt.add { wire::RTPROT_BOOT } else { 0 });
            let rtype = if rt.add { wire::RTN_UNICAST } else { 0 };
            let table8 = if rt.table < 256 { rt.table as u8 } else { 0 };
            e.bytes(&[rt.family, dst_len, 0, 0, table8, protocol, scope, rtype]);
            e.u32(0);
            e.attr_u32(wire::RTA_TABLE, rt.table);
            if let Some((ip, len)) = &rt.dst {
                if *len > 0 {
                    e.attr(wire::RTA_DST, wire::ip_bytes(ip).as_slice());
                }
            }
            if let Some(ip) = &rt.prefsrc {
                e.attr(wire::RTA_PREFSRC, wire::ip_bytes(ip).as_slice());
            }
            if let Some(ip) = &rt.gateway {
                e.attr(wire::RTA_GATEWAY, wire::ip_bytes(ip).as_slice());
            }
            if r.other > 0 {
                e.attr_u32(wire::RTA_OIF, r.other as u32);
            }
            if let Some(v) = rt.metric {
                e.attr_u32(wire::RTA_PRIORITY, v);
            }
            e.end_msg(m);
        }
        Op::Rule(ru) => {
            let (ty, fl) = if ru.add {
                (wire::RTM_NEWRULE, CREATE)
            } else {
                (wire::RTM_DELRULE, REQ_ACK)
            };
            let m = e.begin_msg(ty, fl, seq);
            let dst_len = ru.dst.map(|d| d.1).unwrap_or(0);
            let src_len = ru.src.map(|d| d.1).unwrap_or(0);
            let table8 = if ru.table < 256 { ru.table as u8 } else { 0 };
            e.bytes(&[
                ru.family,
                dst_len,
                src_len,
                0,
                table8,
                0,
                0,
                wire::FR_ACT_TO_TBL,
            ]);
            e.u32(0);
            e.attr_u32(wire::FRA_TABLE, ru.table);
            if let Some(p) = ru.priority {
                e.attr_u32(wire::FRA_PRIORITY, p);
            }
            if let Some((ip, _)) = &ru.src {
                e.attr(wire::FRA_SRC, wire::ip_bytes(ip).as_slice());
            }
            if let Some((ip, _)) = &ru.dst {
                e.attr(wire::FRA_DST, wire::ip_bytes(ip).as_slice());
            }
            if let Some(n) = &ru.iif {
                e.attr_str(wire::FRA_IIFNAME, n);
            }
            if let Some(n) = &ru.oif {
                e.attr_str(wire::FRA_OIFNAME, n);
            }
            if let Some(v) = ru.fwmark {
                e.attr_u32(wire::FRA_FWMARK, v);
            }
            e.end_msg(m);
        }
        Op::Sysctl(_) | Op::Ethtool(_) | Op::RdmaMove(_) => {
            return Err(NlError::invalid(format!(
                "{} is not an rtnetlink request",
                op.name()
            )))
        }
        Op::EbpfDetach(_) => {
            // The encodable part: deleting the clsact (or ingress) qdisc,
            // which takes every tc filter attached to it along.
            let m = e.begin_msg(wire::RTM_DELQDISC, REQ_ACK, seq);
            e.bytes(&[wire::AF_UNSPEC, 0, 0, 0]);
            e.u32(r.target as u32);
            e.u32(wire::TC_H_CLSACT_HANDLE);
            e.u32(wire::TC_H_CLSACT);
            e.u32(0);
            e.end_msg(m);
        }
        Op::Neigh(n) => {
            let (ty, fl) = if n.add {
                (wire::RTM_NEWNEIGH, CREATE)
            } else {
                (wire::RTM_DELNEIGH, REQ_ACK)
            };
            let m = e.begin_msg(ty, fl, seq);
            e.bytes(&[wire::family_of(&n.ip), 0, 0, 0]);
            e.u32(r.target as u32);
            e.u16(if n.add { n.state } else { 0 });
            e.u8(0);
            e.u8(0);
            e.attr(wire::NDA_DST, wire::ip_bytes(&n.ip).as_slice());
            if let Some(ll) = &n.lladdr {
                e.attr(wire::NDA_LLADDR, ll);
            }
            e.end_msg(m);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Byte-exact encodings, derived by hand from the kernel's uapi headers
    //! (little-endian host). `h()` ignores spaces; each group is commented.
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn enc(op: Op, target: i32, other: i32) -> Vec<u8> {
        let mut b = Vec::new();
        encode(
            &mut Enc::new(&mut b),
            1,
            &op,
            Resolved { target, other },
            &|_| 9,
        )
        .unwrap();
        b
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn link_set_move_rename_mtu_mac_up_in_one_message() {
        let op = Op::LinkSet(LinkSet {
            link: Some(LinkRef::Index(7)),
            name: Some("net1".into()),
            mtu: Some(1400),
            mac: Some(vec![2, 0, 0, 0, 0, 1]),
            up: Some(true),
            netns: Some(0),
            ..Default::default()
        });
        let want = h("48000000 1000 0500 01000000 00000000
                      00 00 0000 07000000 01000000 01000000
                      0800 1c00 09000000
                      0900 0300 6e65743100 000000
                      0800 0400 78050000
                      0a00 0100 020000000001 0000");
        assert_eq!(enc(op, 7, 0), want);
    }

    #[test]
    fn link_set_alias_group_gso_gro_down() {
        let op = Op::LinkSet(LinkSet {
            link: Some(LinkRef::Index(3)),
            up: Some(false),
            alias: Some("ab".into()),
            group: Some(5),
            gso_max_size: Some(65536),
            gro_max_size: Some(65536),
            ..Default::default()
        });
        let want = h("40000000 1000 0500 01000000 00000000
                      00 00 0000 03000000 00000000 01000000
                      0600 1400 6162 0000
                      0800 1b00 05000000
                      0800 2900 00000100
                      0800 3a00 00000100");
        assert_eq!(enc(op, 3, 0), want);
    }

    #[test]
    fn link_set_master_and_ipv4_gso_gro() {
        // enslave to ifindex 9 (resolved as `other`), IPv4 GSO/GRO sizes
        let op = Op::LinkSet(LinkSet {
            link: Some(LinkRef::Index(3)),
            gso_ipv4_max_size: Some(65536),
            gro_ipv4_max_size: Some(32768),
            master: Some(Some(LinkRef::Name("br0".into()))),
            ..Default::default()
        });
        let want = h("38000000 1000 0500 01000000 00000000
                      00 00 0000 03000000 00000000 00000000
                      0800 3f00 00000100
                      0800 4000 00800000
                      0800 0a00 09000000");
        assert_eq!(enc(op, 3, 9), want);
        // nomaster: IFLA_MASTER 0
        let op = Op::LinkSet(LinkSet {
            link: Some(LinkRef::Index(3)),
            master: Some(None),
            ..Default::default()
        });
        let want = h("28000000 1000 0500 01000000 00000000
                      00 00 0000 03000000 00000000 00000000
                      0800 0a00 00000000");
        assert_eq!(enc(op, 3, 0), want);
    }

    #[test]
    fn vrf_with_table() {
        let op = new_link("vrf-blue", Kind::Vrf { table: 10 });
        let want = h("48000000 1000 0506 01000000 00000000
                      00 00 0000 00000000 00000000 00000000
                      0d00 0300 7672662d626c756500 000000
                      1800 1200
                        0800 0100 76726600
                        0c00 0200
                          0800 0100 0a000000");
        assert_eq!(enc(op, 0, 0), want);
        assert!(new_link("v", Kind::Vrf { table: 0 }).validate().is_err());
    }

    #[test]
    fn ebpf_detach_deletes_the_clsact_qdisc() {
        // tcmsg: family 0, ifindex 7, handle ffff:0, parent ffff:fff1
        let want = h("24000000 2500 0500 01000000 00000000
                      00 000000 07000000 0000ffff f1ffffff 00000000");
        assert_eq!(enc(Op::EbpfDetach(LinkRef::Index(7)), 7, 0), want);
    }

    #[test]
    fn side_channel_steps_validate() {
        let s = |p: &str| {
            Op::Sysctl(Sysctl {
                path: p.into(),
                value: "1".into(),
            })
            .validate()
        };
        assert!(s("net/ipv4/conf/net1/arp_ignore").is_ok());
        assert!(s("kernel/hostname").is_err());
        assert!(s("/net/ipv4/ip_forward").is_err());
        assert!(s("net/ipv4/../../kernel/x").is_err());
        assert!(s("net//ipv4").is_err());
        let e = Op::Ethtool(Ethtool {
            link: LinkRef::Index(1),
            features: vec![],
            private_flags: vec![],
        });
        assert!(e.validate().is_err());
        let m = Op::RdmaMove(RdmaMove {
            device: "mlx5_0".into(),
            netns: 0,
        });
        assert!(m.validate().is_ok());
        assert_eq!(m.name(), "rdma_move");
        assert!(m.is_side_channel());
        let mut b = Vec::new();
        assert!(encode(&mut Enc::new(&mut b), 1, &m, Resolved::default(), &|_| 0).is_err());
    }

    #[test]
    fn link_del_and_group_delete() {
        let want = h("20000000 1100 0500 01000000 00000000  00 00 0000 07000000 00000000 00000000");
        assert_eq!(enc(Op::LinkDel(LinkRef::Index(7)), 7, 0), want);
        let want = h(
            "28000000 1100 0500 01000000 00000000  00 00 0000 00000000 00000000 00000000
                      0800 1b00 4d000000",
        );
        assert_eq!(enc(Op::LinkDelGroup(77), 0, 0), want);
        // by name (the undo of a creation): ifindex 0 + IFLA_IFNAME
        let want = h(
            "28000000 1100 0500 01000000 00000000  00 00 0000 00000000 00000000 00000000
                      0700 0300 763000 00",
        );
        assert_eq!(enc(Op::LinkDel(LinkRef::Name("v0".into())), 0, 0), want);
    }

    fn new_link(name: &str, kind: Kind) -> Op {
        Op::NewLink(NewLink {
            name: name.into(),
            netns: None,
            mtu: None,
            mac: None,
            group: None,
            up: false,
            kind,
        })
    }

    #[test]
    fn veth_with_peer_born_in_another_namespace() {
        let op = new_link(
            "v0",
            Kind::Veth {
                peer_name: "p0".into(),
                peer_ns: Some(0),
                peer_mac: None,
                peer_group: None,
            },
        );
        let want = h("60000000 1000 0506 01000000 00000000
                      00 00 0000 00000000 00000000 00000000
                      0700 0300 763000 00
                      3800 1200
                        0900 0100 7665746800 000000
                        2800 0200
                          2400 0100
                            00 00 0000 00000000 00000000 00000000
                            0700 0300 703000 00
                            0800 1c00 09000000");
        assert_eq!(enc(op, 0, 0), want);
    }

    #[test]
    fn macvlan_bridge() {
        let op = new_link(
            "mv0",
            Kind::Macvlan {
                link: LinkRef::Index(3),
                mode: 4,
            },
        );
        let want = h("4c000000 1000 0506 01000000 00000000
                      00 00 0000 00000000 00000000 00000000
                      0800 0300 6d763000
                      0800 0500 03000000
                      1c00 1200
                        0c00 0100 6d6163766c616e00
                        0c00 0200
                          0800 0100 04000000");
        assert_eq!(enc(op, 0, 3), want);
    }

    #[test]
    fn ipvlan_l2_bridge() {
        let op = new_link(
            "iv0",
            Kind::Ipvlan {
                link: LinkRef::Index(3),
                mode: 0,
                flags: 0,
            },
        );
        let want = h("54000000 1000 0506 01000000 00000000
                      00 00 0000 00000000 00000000 00000000
                      0800 0300 69763000
                      0800 0500 03000000
                      2400 1200
                        0b00 0100 6970766c616e00 00
                        1400 0200
                          0600 0100 0000 0000
                          0600 0200 0000 0000");
        assert_eq!(enc(op, 0, 3), want);
    }

    #[test]
    fn vlan_802_1q() {
        let op = new_link(
            "vl0",
            Kind::Vlan {
                link: LinkRef::Index(3),
                id: 5,
                protocol: 0x8100,
            },
        );
        let want = h("54000000 1000 0506 01000000 00000000
                      00 00 0000 00000000 00000000 00000000
                      0800 0300 766c3000
                      0800 0500 03000000
                      2400 1200
                        0900 0100 766c616e00 000000
                        1400 0200
                          0600 0100 0500 0000
                          0600 0500 8100 0000");
        assert_eq!(enc(op, 0, 3), want);
    }

    #[test]
    fn addresses_v4_add_and_v6_del_with_flags() {
        let op = Op::Addr(Addr {
            add: true,
            link: LinkRef::Index(7),
            ip: v4("10.0.0.2"),
            prefix: 24,
            flags: 0,
            scope: 0,
        });
        let want = h("28000000 1400 0506 01000000 00000000
                      02 18 00 00 07000000
                      0800 0200 0a000002
                      0800 0100 0a000002");
        assert_eq!(enc(op, 7, 0), want);
        let op = Op::Addr(Addr {
            add: false,
            link: LinkRef::Index(7),
            ip: "fd00::2".parse().unwrap(),
            prefix: 64,
            flags: wire::IFA_F_NODAD,
            scope: 0,
        });
        let want = h("48000000 1500 0500 01000000 00000000
                      0a 40 02 00 07000000
                      1400 0200 fd000000000000000000000000000002
                      1400 0100 fd000000000000000000000000000002
                      0800 0800 02000000");
        assert_eq!(enc(op, 7, 0), want);
    }

    #[test]
    fn routes_v4_add_via_gateway_and_v6_default_del_by_oif() {
        let op = Op::Route(Route {
            add: true,
            family: wire::AF_INET,
            dst: Some((v4("10.1.0.0"), 16)),
            gateway: Some(v4("10.0.0.1")),
            prefsrc: None,
            oif: None,
            scope: None,
            table: 254,
            metric: None,
            protocol: None,
        });
        let want = h("34000000 1800 0506 01000000 00000000
                      02 10 00 00 fe 03 00 01  00000000
                      0800 0f00 fe000000
                      0800 0100 0a010000
                      0800 0500 0a000001");
        assert_eq!(enc(op, 0, 0), want);
        let op = Op::Route(Route {
            add: false,
            family: wire::AF_INET6,
            dst: None,
            gateway: None,
            prefsrc: None,
            oif: Some(LinkRef::Index(7)),
            scope: None,
            table: 1000,
            metric: Some(100),
            protocol: None,
        });
        let want = h("34000000 1900 0500 01000000 00000000
                      0a 00 00 00 00 00 ff 00  00000000
                      0800 0f00 e8030000
                      0800 0400 07000000
                      0800 0600 64000000");
        assert_eq!(enc(op, 0, 7), want);
    }

    #[test]
    fn rule_add_and_del() {
        let rule = Rule {
            add: true,
            family: wire::AF_INET,
            priority: Some(1234),
            table: 100,
            src: Some((v4("10.70.0.0"), 16)),
            dst: None,
            iif: Some("eth0".into()),
            oif: None,
            fwmark: None,
        };
        let want = h("40000000 2000 0506 01000000 00000000
                      02 00 10 00 64 00 00 01  00000000
                      0800 0f00 64000000
                      0800 0600 d2040000
                      0800 0200 0a460000
                      0900 0300 6574683000 000000");
        assert_eq!(enc(Op::Rule(rule.clone()), 0, 0), want);
        let mut want_del = want.clone();
        want_del[4] = 0x21; // RTM_DELRULE
        want_del[6..8].copy_from_slice(&[0x05, 0x00]);
        assert_eq!(enc(Op::Rule(Rule { add: false, ..rule }), 0, 0), want_del);
    }

    #[test]
    fn neighbour_add_and_del() {
        let n = Neigh {
            add: true,
            link: LinkRef::Index(7),
            ip: v4("10.0.0.9"),
            lladdr: Some(h("02aabbccddee")),
            state: 0x80,
        };
        let want = h("30000000 1c00 0506 01000000 00000000
                      02 00 0000 07000000 8000 00 00
                      0800 0100 0a000009
                      0a00 0200 02aabbccddee 0000");
        assert_eq!(enc(Op::Neigh(n.clone()), 7, 0), want);
        let want = h("24000000 1d00 0500 01000000 00000000
                      02 00 0000 07000000 0000 00 00
                      0800 0100 0a000009");
        assert_eq!(
            enc(
                Op::Neigh(Neigh {
                    add: false,
                    lladdr: None,
                    ..n
                }),
                7,
                0
            ),
            want
        );
    }

    #[test]
    fn link_dump_and_get_requests() {
        let mut b = Vec::new();
        crate::dump::encode_link_dump(&mut Enc::new(&mut b), 1);
        assert_eq!(
            b,
            h("28000000 1200 0103 01000000 00000000  00 00 0000 00000000 00000000 00000000  0800 1d00 08000000")
        );
        b.clear();
        crate::dump::encode_link_get(&mut Enc::new(&mut b), 2, 0, Some("lo"));
        assert_eq!(
            b,
            h(
                "30000000 1200 0100 02000000 00000000  00 00 0000 00000000 00000000 00000000
               0700 0300 6c6f00 00  0800 1d00 08000000"
            )
        );
    }

    #[test]
    fn extended_ack_text_is_kept() {
        // NLMSG_ERROR, flags CAPPED|ACK_TLVS, error -101, echoed header, NLMSGERR_ATTR_MSG.
        let payload = h("9bffffff  34000000 1800 0506 07000000 00000000
                         1f00 0100 4e657874686f702068617320696e76616c69642067617465776179 00 00");
        let hdr = wire::Hdr {
            len: 16 + payload.len() as u32,
            ty: wire::NLMSG_ERROR,
            flags: 0x300,
            seq: 7,
        };
        match crate::sock::parse_reply(&hdr, &payload) {
            Some(crate::sock::Reply::Err(errno, msg)) => {
                assert_eq!(errno, 101);
                assert_eq!(msg, "Nexthop has invalid gateway");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("x234567890123456").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("..").is_err());
        assert_eq!(parse_cidr("10.0.0.2/24").unwrap(), (v4("10.0.0.2"), 24));
        assert!(parse_cidr("10.0.0.2/33").is_err());
        assert!(parse_cidr("10.0.0.300/24").is_err());
        assert_eq!(
            parse_mac("02:AA:bb:00:00:01").unwrap(),
            vec![2, 0xaa, 0xbb, 0, 0, 1]
        );
        assert!(parse_mac("02:aa:bb:00:00").is_err());
        let vlan = new_link(
            "v",
            Kind::Vlan {
                link: LinkRef::Index(1),
                id: 4095,
                protocol: 0x8100,
            },
        );
        assert!(vlan.validate().is_err());
    }
}
