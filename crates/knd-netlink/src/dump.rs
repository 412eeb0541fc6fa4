//! Dumps of a namespace's links, addresses, routes, rules and neighbours, and
//! the records they decode into.

use std::net::IpAddr;

use knd_netns::NetNs;

use crate::error::NlError;
use crate::sock::{Conn, Reply};
use crate::wire::{self, Enc};

/// One link (RTM_NEWLINK record).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub ifindex: i32,
    pub name: String,
    /// IFLA_INFO_KIND (`"veth"`, `"macvlan"`...), `None` for physical devices.
    pub kind: Option<String>,
    pub mac: Option<Vec<u8>>,
    pub mtu: u32,
    pub operstate: u8,
    pub flags: u32,
    pub master: Option<i32>,
    pub link: Option<i32>,
    pub alias: Option<String>,
    pub group: u32,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
    /// IFLA_PARENT_DEV_NAME (`"0000:00:03.0"` for a PCI NIC).
    pub parent_dev_name: Option<String>,
    /// IFLA_PARENT_DEV_BUS_NAME (`"pci"`).
    pub parent_dev_bus: Option<String>,
}

/// One address (RTM_NEWADDR record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub ifindex: i32,
    pub family: u8,
    pub prefixlen: u8,
    pub address: IpAddr,
    pub scope: u8,
    pub flags: u32,
    pub label: Option<String>,
}

/// One route (RTM_NEWROUTE record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub family: u8,
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub src: Option<IpAddr>,
    pub src_len: u8,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    pub oif: Option<i32>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub route_type: u8,
    pub priority: Option<u32>,
    pub flags: u32,
}

/// One policy rule (RTM_NEWRULE record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub family: u8,
    pub priority: Option<u32>,
    pub table: u32,
    pub action: u8,
    pub src: Option<IpAddr>,
    pub src_len: u8,
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub iifname: Option<String>,
    pub oifname: Option<String>,
    pub fwmark: Option<u32>,
    pub flags: u32,
}

/// One neighbour entry (RTM_NEWNEIGH record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighInfo {
    pub ifindex: i32,
    pub family: u8,
    pub address: Option<IpAddr>,
    pub lladdr: Option<Vec<u8>>,
    pub state: u16,
    pub flags: u8,
}

/// Decodes an RTM_NEWLINK payload.
pub fn parse_link(p: &[u8]) -> Option<LinkInfo> {
    if p.len() < 16 {
        return None;
    }
    let mut l = LinkInfo {
        ifindex: wire::get_i32(&p[4..8])?,
        flags: wire::get_u32(&p[8..12])?,
        ..LinkInfo::default()
    };
    for (ty, v) in wire::attrs(&p[16..]) {
        match ty {
            wire::IFLA_IFNAME => l.name = wire::get_str(v),
            wire::IFLA_ADDRESS => l.mac = Some(v.to_vec()),
            wire::IFLA_MTU => l.mtu = wire::get_u32(v).unwrap_or(0),
            wire::IFLA_OPERSTATE => l.operstate = v.first().copied().unwrap_or(0),
            wire::IFLA_MASTER => l.master = wire::get_i32(v),
            wire::IFLA_LINK => l.link = wire::get_i32(v),
            wire::IFLA_IFALIAS => l.alias = Some(wire::get_str(v)).filter(|s| !s.is_empty()),
            wire::IFLA_GROUP => l.group = wire::get_u32(v).unwrap_or(0),
            wire::IFLA_GSO_MAX_SIZE => l.gso_max_size = wire::get_u32(v),
            wire::IFLA_GRO_MAX_SIZE => l.gro_max_size = wire::get_u32(v),
            wire::IFLA_GSO_IPV4_MAX_SIZE => l.gso_ipv4_max_size = wire::get_u32(v),
            wire::IFLA_GRO_IPV4_MAX_SIZE => l.gro_ipv4_max_size = wire::get_u32(v),
            wire::IFLA_PARENT_DEV_NAME => l.parent_dev_name = Some(wire::get_str(v)),
            wire::IFLA_PARENT_DEV_BUS_NAME => l.parent_dev_bus = Some(wire::get_str(v)),
            wire::IFLA_LINKINFO => {
                for (t2, v2) in wire::attrs(v) {
                    if t2 == wire::IFLA_INFO_KIND {
                        l.kind = Some(wire::get_str(v2));
                    }
                }
            }
            _ => {}
        }
    }
    Some(l)
}

/// Decodes an RTM_NEWADDR payload.
pub fn parse_addr(p: &[u8]) -> Option<AddrInfo> {
    if p.len() < 8 {
        return None;
    }
    let family = p[0];
    let mut flags = p[2] as u32;
    let (mut local, mut address, mut label) = (None, None, None);
    for (ty, v) in wire::attrs(&p[8..]) {
        match ty {
            wire::IFA_LOCAL => local = wire::get_ip(family, v),
            wire::IFA_ADDRESS => address = wire::get_ip(family, v),
            wire::IFA_LABEL => label = Some(wire::get_str(v)),
            wire::IFA_FLAGS => flags = wire::get_u32(v).unwrap_or(flags),
            _ => {}
        }
    }
    Some(AddrInfo {
        ifindex: wire::get_i32(&p[4..8])?,
        family,
        prefixlen: p[1],
        address: local.or(address)?,
        scope: p[3],
        flags,
        label,
    })
}

/// Decodes an RTM_NEWROUTE payload.
pub fn parse_route(p: &[u8]) -> Option<RouteInfo> {
    if p.len() < 12 {
        return None;
    }
    let family = p[0];
    let mut r = RouteInfo {
        family,
        dst: None,
        dst_len: p[1],
        src: None,
        src_len: p[2],
        gateway: None,
        prefsrc: None,
        oif: None,
        table: p[4] as u32,
        protocol: p[5],
        scope: p[6],
        route_type: p[7],
        priority: None,
        flags: wire::get_u32(&p[8..12])?,
    };
    for (ty, v) in wire::attrs(&p[12..]) {
        match ty {
            wire::RTA_DST => r.dst = wire::get_ip(family, v),
            wire::RTA_SRC => r.src = wire::get_ip(family, v),
            wire::RTA_GATEWAY => r.gateway = wire::get_ip(family, v),
            wire::RTA_PREFSRC => r.prefsrc = wire::get_ip(family, v),
            wire::RTA_OIF => r.oif = wire::get_i32(v),
            wire::RTA_TABLE => r.table = wire::get_u32(v).unwrap_or(r.table),
            wire::RTA_PRIORITY => r.priority = wire::get_u32(v),
            _ => {}
        }
    }
    Some(r)
}

/// Decodes an RTM_NEWRULE payload.
pub fn parse_rule(p: &[u8]) -> Option<RuleInfo> {
    if p.len() < 12 {
        return None;
    }
    let family = p[0];
    let mut r = RuleInfo {
        family,
        priority: None,
        table: p[4] as u32,
        action: p[7],
        src: None,
        src_len: p[2],
        dst: None,
        dst_len: p[1],
        iifname: None,
        oifname: None,
        fwmark: None,
        flags: wire::get_u32(&p[8..12])?,
    };
    for (ty, v) in wire::attrs(&p[12..]) {
        match ty {
            wire::FRA_PRIORITY => r.priority = wire::get_u32(v),
            wire::FRA_TABLE => r.table = wire::get_u32(v).unwrap_or(r.table),
            wire::FRA_SRC => r.src = wire::get_ip(family, v),
            wire::FRA_DST => r.dst = wire::get_ip(family, v),
            wire::FRA_IIFNAME => r.iifname = Some(wire::get_str(v)),
            wire::FRA_OIFNAME => r.oifname = Some(wire::get_str(v)),
            wire::FRA_FWMARK => r.fwmark = wire::get_u32(v),
            _ => {}
        }
    }
    Some(r)
}

/// Decodes an RTM_NEWNEIGH payload.
pub fn parse_neigh(p: &[u8]) -> Option<NeighInfo> {
    if p.len() < 12 {
        return None;
    }
    let family = p[0];
    let mut n = NeighInfo {
        ifindex: wire::get_i32(&p[4..8])?,
        family,
        address: None,
        lladdr: None,
        state: u16::from_ne_bytes([p[8], p[9]]),
        flags: p[10],
    };
    for (ty, v) in wire::attrs(&p[12..]) {
        match ty {
            wire::NDA_DST => n.address = wire::get_ip(family, v),
            wire::NDA_LLADDR => n.lladdr = Some(v.to_vec()),
            _ => {}
        }
    }
    Some(n)
}

// ---------------------------------------------------------------- requests

/// RTM_GETLINK dump request.
pub fn encode_link_dump(e: &mut Enc<'_>, seq: u32) {
    let m = e.begin_msg(
        wire::RTM_GETLINK,
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
    );
    e.ifinfomsg(wire::AF_UNSPEC, 0, 0, 0);
    e.attr_u32(wire::IFLA_EXT_MASK, wire::RTEXT_FILTER_SKIP_STATS);
    e.end_msg(m);
}

/// RTM_GETLINK for one link, by index (when > 0) or by name.
pub fn encode_link_get(e: &mut Enc<'_>, seq: u32, ifindex: i32, name: Option<&str>) {
    let m = e.begin_msg(wire::RTM_GETLINK, wire::NLM_F_REQUEST, seq);
    e.ifinfomsg(wire::AF_UNSPEC, ifindex, 0, 0);
    if ifindex <= 0 {
        if let Some(n) = name {
            e.attr_str(wire::IFLA_IFNAME, n);
        }
    }
    e.attr_u32(wire::IFLA_EXT_MASK, wire::RTEXT_FILTER_SKIP_STATS);
    e.end_msg(m);
}

pub(crate) fn encode_addr_dump(e: &mut Enc<'_>, seq: u32) {
    let m = e.begin_msg(
        wire::RTM_GETADDR,
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
    );
    e.bytes(&[wire::AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0]);
    e.end_msg(m);
}

pub(crate) fn encode_route_dump(e: &mut Enc<'_>, seq: u32, family: u8, table: Option<u32>) {
    let m = e.begin_msg(
        wire::RTM_GETROUTE,
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
    );
    e.bytes(&[family, 0, 0, 0, 0, 0, 0, 0]);
    e.u32(0);
    if let Some(t) = table {
        e.attr_u32(wire::RTA_TABLE, t);
    }
    e.end_msg(m);
}

fn encode_rule_dump(e: &mut Enc<'_>, seq: u32, family: u8) {
    let m = e.begin_msg(
        wire::RTM_GETRULE,
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
    );
    e.bytes(&[family, 0, 0, 0, 0, 0, 0, 0]);
    e.u32(0);
    e.end_msg(m);
}

pub(crate) fn encode_neigh_dump(e: &mut Enc<'_>, seq: u32, family: u8) {
    let m = e.begin_msg(
        wire::RTM_GETNEIGH,
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
    );
    e.bytes(&[family, 0, 0, 0]);
    e.u32(0); // ifindex
    e.u16(0); // state
    e.u8(0); // flags
    e.u8(0); // type
    e.end_msg(m);
}

// ---------------------------------------------------------------- on a connection

impl Conn {
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, NlError> {
        let mut out = Vec::new();
        self.dump(encode_link_dump, |ty, p| {
            if ty == wire::RTM_NEWLINK {
                out.extend(parse_link(p));
            }
        })?;
        Ok(out)
    }

    pub fn addresses(&mut self) -> Result<Vec<AddrInfo>, NlError> {
        let mut out = Vec::new();
        self.dump(encode_addr_dump, |ty, p| {
            if ty == wire::RTM_NEWADDR {
                out.extend(parse_addr(p));
            }
        })?;
        Ok(out)
    }

    pub fn routes(&mut self, table: Option<u32>) -> Result<Vec<RouteInfo>, NlError> {
        let mut out = Vec::new();
        for fam in [wire::AF_INET, wire::AF_INET6] {
            self.dump(
                |e, s| encode_route_dump(e, s, fam, table),
                |ty, p| {
                    if ty == wire::RTM_NEWROUTE {
                        out.extend(parse_route(p).filter(|r| table.is_none_or(|t| r.table == t)));
                    }
                },
            )?;
        }
        Ok(out)
    }

    pub fn rules(&mut self) -> Result<Vec<RuleInfo>, NlError> {
        let mut out = Vec::new();
        for fam in [wire::AF_INET, wire::AF_INET6] {
            self.dump(
                |e, s| encode_rule_dump(e, s, fam),
                |ty, p| {
                    if ty == wire::RTM_NEWRULE {
                        out.extend(parse_rule(p));
                    }
                },
            )?;
        }
        Ok(out)
    }

    pub fn neighbours(&mut self) -> Result<Vec<NeighInfo>, NlError> {
        let mut out = Vec::new();
        for fam in [wire::AF_INET, wire::AF_INET6] {
            self.dump(
                |e, s| encode_neigh_dump(e, s, fam),
                |ty, p| {
                    if ty == wire::RTM_NEWNEIGH {
                        out.extend(parse_neigh(p));
                    }
                },
            )?;
        }
        Ok(out)
    }

    /// One link by name (or index when > 0); `Ok(None)` when it does not exist.
    pub fn link(&mut self, ifindex: i32, name: Option<&str>) -> Result<Option<LinkInfo>, NlError> {
        match self.request(|e, s| encode_link_get(e, s, ifindex, name))? {
            Reply::Data(wire::RTM_NEWLINK, p) => Ok(parse_link(&p)),
            Reply::Err(libc::ENODEV, _) => Ok(None),
            Reply::Err(errno, msg) => Err(NlError::kernel("RTM_GETLINK", errno, &msg)),
            _ => Ok(None),
        }
    }
}

/// Every link of `ns` (the caller's namespace for `None`).
pub fn dump_links(ns: Option<&NetNs>) -> Result<Vec<LinkInfo>, NlError> {
    Conn::open(ns)?.links()
}

/// Every address of `ns`.
pub fn dump_addresses(ns: Option<&NetNs>) -> Result<Vec<AddrInfo>, NlError> {
    Conn::open(ns)?.addresses()
}

/// Every IPv4 and IPv6 route of `ns` (of one table when `table` is given).
pub fn dump_routes(ns: Option<&NetNs>, table: Option<u32>) -> Result<Vec<RouteInfo>, NlError> {
    Conn::open(ns)?.routes(table)
}

/// Every IPv4 and IPv6 policy rule of `ns`.
pub fn dump_rules(ns: Option<&NetNs>) -> Result<Vec<RuleInfo>, NlError> {
    Conn::open(ns)?.rules()
}

/// Every IPv4 and IPv6 neighbour entry of `ns`.
pub fn dump_neighbours(ns: Option<&NetNs>) -> Result<Vec<NeighInfo>, NlError> {
    Conn::open(ns)?.neighbours()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_the_loopback_of_a_fresh_namespace() {
        // A private namespace on a thread of our own: only `lo` exists there.
        let (links, addrs) = std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread's namespace.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare needs root"
            );
            (dump_links(None).unwrap(), dump_addresses(None).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(links.len(), 1, "{links:?}");
        assert_eq!(links[0].name, "lo");
        assert_eq!(links[0].ifindex, 1);
        assert_eq!(links[0].mtu, 65536);
        assert!(addrs.is_empty(), "lo is down and has no address: {addrs:?}");
    }

    #[test]
    fn getlink_of_a_missing_name_is_none() {
        let mut c = Conn::open(None).unwrap();
        assert!(c.link(0, Some("knd-no-such0")).unwrap().is_none());
        let lo = c.link(0, Some("lo")).unwrap().unwrap();
        assert_eq!(lo.ifindex, 1);
        assert_eq!(lo.flags & wire::IFF_UP, wire::IFF_UP);
    }
}
