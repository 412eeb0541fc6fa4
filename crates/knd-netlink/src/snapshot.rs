//! What a namespace held for a link before a plan moved the link out of it,
//! and the messages that put it back when the move is undone.
//!
//! Moving a link to another namespace makes the kernel drop, in the source
//! namespace, its addresses, the routes through it and its neighbour entries.
//! Before the first move out of a namespace the engine takes one [`Snapshot`]
//! of that namespace (addresses, routes of every table, neighbours: three
//! dumps in one `sendmsg`), keeps the records a restore needs, and on undo
//! replays the records of the moved link, re-addressed to its ifindex.
//!
//! Records are replayed as the kernel dumped them (family header and
//! attributes), minus what only describes state (cache info, lifetimes, dead or
//! link-down nexthop flags), so nothing the administrator set (broadcast,
//! label, metric, preferred source, route metrics, router preference...) is
//! lost in translation.

use std::net::IpAddr;

use crate::dump;
use crate::error::NlError;
use crate::sock::{Conn, Reply};
use crate::wire::{self, Enc};

const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_APPEND: u16 = 0x800;

const IFA_F_PERMANENT: u32 = 0x80;
const IFA_BROADCAST: u16 = 4;
const IFA_RT_PRIORITY: u16 = 9;
const IFA_PROTO: u16 = 11;

const RTA_MULTIPATH: u16 = 9;
const RTA_CACHEINFO: u16 = 12;
const RTA_NH_ID: u16 = 30;
const RTNH_F_ONLINK: u32 = 0x4;
const RTPROT_KERNEL: u8 = 2;
const RTPROT_RA: u8 = 9;

const NDA_PROTOCOL: u16 = 12;
const NTF_ROUTER: u8 = 0x80;

/// A route worth restoring, with the links it goes through.
#[derive(Debug, Clone)]
struct RouteRec {
    family: u8,
    /// Single-path route with a gateway (needs the connected route first).
    gateway: bool,
    /// RTA_OIF, or the ifindex of every nexthop of a multipath route.
    oifs: Vec<i32>,
    multipath: bool,
    raw: Vec<u8>,
}

/// The restorable state of one namespace, taken once per plan.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Permanent, non-link-local addresses: (ifindex, payload).
    addrs: Vec<(i32, Vec<u8>)>,
    routes: Vec<RouteRec>,
    /// Permanent neighbour entries: (ifindex, payload).
    neighs: Vec<(i32, Vec<u8>)>,
}

/// The records of one link, in restore order.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkState {
    pub ifindex: i32,
    addrs: Vec<Vec<u8>>,
    /// Routes: connected-style first, then via a gateway, then multipath.
    routes: Vec<RouteRec>,
    neighs: Vec<Vec<u8>>,
}

impl LinkState {
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && self.routes.is_empty() && self.neighs.is_empty()
    }
}

fn is_v6_housekeeping(ip: &IpAddr, len: u8) -> bool {
    match ip {
        // fe80::/10 link-local, ff00::/8 multicast
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (len >= 10 && s & 0xffc0 == 0xfe80) || (len >= 8 && s & 0xff00 == 0xff00)
        }
        IpAddr::V4(_) => false,
    }
}

/// The ifindex of every nexthop of an RTA_MULTIPATH payload.
fn nexthop_oifs(mp: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut rest = mp;
    while rest.len() >= 8 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < 8 || len > rest.len() {
            break;
        }
        out.extend(wire::get_i32(&rest[4..8]));
        rest = &rest[wire::align4(len).min(rest.len())..];
    }
    out
}

fn parse_route_rec(p: &[u8]) -> Option<RouteRec> {
    let r = dump::parse_route(p)?;
    if (r.family != wire::AF_INET && r.family != wire::AF_INET6)
        || r.table == wire::RT_TABLE_LOCAL
        || r.protocol == RTPROT_KERNEL
        || r.protocol == RTPROT_RA
    {
        return None;
    }
    if let Some(d) = &r.dst {
        if is_v6_housekeeping(d, r.dst_len) {
            return None;
        }
    }
    let mut oifs: Vec<i32> = r.oif.into_iter().collect();
    let mut multipath = false;
    for (ty, v) in wire::attrs(&p[12..]) {
        match ty {
            // Routes over nexthop objects: the objects die with the link.
            RTA_NH_ID => return None,
            RTA_MULTIPATH => {
                multipath = true;
                oifs.extend(nexthop_oifs(v));
            }
            _ => {}
        }
    }
    if oifs.is_empty() {
        return None;
    }
    Some(RouteRec {
        family: r.family,
        gateway: r.gateway.is_some(),
        oifs,
        multipath,
        raw: p.to_vec(),
    })
}

impl Snapshot {
    /// Dumps the addresses, routes (all tables, both families) and neighbours
    /// of the namespace `conn` is bound to, in one `sendmsg`.
    pub fn take(conn: &mut Conn) -> Result<Self, NlError> {
        let mut s = Snapshot::default();
        let addr = |e: &mut Enc<'_>, q: u32| dump::encode_addr_dump(e, q);
        let route = |e: &mut Enc<'_>, q: u32| dump::encode_route_dump(e, q, wire::AF_UNSPEC, None);
        let neigh = |e: &mut Enc<'_>, q: u32| dump::encode_neigh_dump(e, q, wire::AF_UNSPEC);
        conn.dump_many(&[&addr, &route, &neigh], |k, ty, p| match (k, ty) {
            (0, wire::RTM_NEWADDR) => {
                if let Some(a) = dump::parse_addr(p) {
                    if a.flags & IFA_F_PERMANENT != 0 && !is_link_local(&a.address) {
                        s.addrs.push((a.ifindex, p.to_vec()));
                    }
                }
            }
            (1, wire::RTM_NEWROUTE) => s.routes.extend(parse_route_rec(p)),
            (2, wire::RTM_NEWNEIGH) => {
                if let Some(n) = dump::parse_neigh(p) {
                    let fam = n.family == wire::AF_INET || n.family == wire::AF_INET6;
                    if fam && n.state & wire::NUD_PERMANENT != 0 && n.lladdr.is_some() {
                        s.neighs.push((n.ifindex, p.to_vec()));
                    }
                }
            }
            _ => {}
        })?;
        Ok(s)
    }

    /// The records of link `ifindex`, in the order a restore sends them.
    ///
    /// `earlier` are the links moved out before it by the same plan: an IPv4
    /// multipath route through one of them is left to that link's restore
    /// (undone later, when all the route's links are back).
    pub fn of_link(&self, ifindex: i32, earlier: &[i32]) -> LinkState {
        let addrs = self
            .addrs
            .iter()
            .filter(|(i, _)| *i == ifindex)
            .map(|(_, p)| p.clone())
            .collect();
        let mut routes: Vec<RouteRec> = self
            .routes
            .iter()
            .filter(|r| r.oifs.contains(&ifindex))
            .filter(|r| {
                let v4_multipath = r.multipath && r.family == wire::AF_INET;
                !v4_multipath || !r.oifs.iter().any(|o| earlier.contains(o))
            })
            .cloned()
            .collect();
        routes.sort_by_key(|r| (r.multipath, r.gateway));
        let neighs = self
            .neighs
            .iter()
            .filter(|(i, _)| *i == ifindex)
            .map(|(_, p)| p.clone())
            .collect();
        LinkState {
            ifindex,
            addrs,
            routes,
            neighs,
        }
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// Copies the attributes of `data` for which `keep(type)` holds, verbatim.
fn copy_attrs(e: &mut Enc<'_>, data: &[u8], mut keep: impl FnMut(u16, &[u8]) -> bool) {
    let mut rest = data;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < 4 || len > rest.len() {
            break;
        }
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if keep(ty, &rest[4..len]) {
            e.bytes(&rest[..len]);
            let pad = wire::align4(len) - len;
            e.bytes(&[0u8; 4][..pad]);
        }
        rest = &rest[wire::align4(len).min(rest.len())..];
    }
}

fn fix(ifindex: i32, old: i32, new: i32) -> i32 {
    if ifindex == old {
        new
    } else {
        ifindex
    }
}

/// RTM_NEWADDR re-creating a dumped address on link `new`.
fn encode_addr(e: &mut Enc<'_>, seq: u32, p: &[u8], new: i32) {
    let keep_flags = wire::IFA_F_NODAD
        | wire::IFA_F_NOPREFIXROUTE
        | wire::IFA_F_HOMEADDRESS
        | wire::IFA_F_MANAGETEMPADDR
        | 0x400; // IFA_F_MCAUTOJOIN
    let mut flags = p[2] as u32;
    for (ty, v) in wire::attrs(&p[8..]) {
        if ty == wire::IFA_FLAGS {
            flags = wire::get_u32(v).unwrap_or(flags);
        }
    }
    let flags = flags & keep_flags;
    let m = e.begin_msg(
        wire::RTM_NEWADDR,
        wire::NLM_F_REQUEST | wire::NLM_F_ACK | wire::NLM_F_CREATE | wire::NLM_F_EXCL,
        seq,
    );
    e.bytes(&[p[0], p[1], (flags & 0xff) as u8, p[3]]);
    e.u32(new as u32);
    copy_attrs(e, &p[8..], |ty, _| {
        matches!(
            ty,
            wire::IFA_ADDRESS
                | wire::IFA_LOCAL
                | wire::IFA_LABEL
                | IFA_BROADCAST
                | IFA_RT_PRIORITY
                | IFA_PROTO
        )
    });
    if flags != 0 {
        e.attr_u32(wire::IFA_FLAGS, flags);
    }
    e.end_msg(m);
}

/// RTM_NEWROUTE re-creating a dumped route, `old` re-addressed to `new`.
///
/// An IPv4 multipath route is re-created whole (the kernel deleted all of it).
/// The kernel deletes only the nexthops of an IPv6 multipath route that went
/// through the link, so those are appended back.
fn encode_route(e: &mut Enc<'_>, seq: u32, r: &RouteRec, old: i32, new: i32) {
    let p = &r.raw;
    let v6_append = r.multipath && r.family == wire::AF_INET6;
    let mut flags = wire::NLM_F_REQUEST | wire::NLM_F_ACK | wire::NLM_F_CREATE;
    flags |= if v6_append {
        NLM_F_APPEND
    } else {
        wire::NLM_F_EXCL
    };
    let m = e.begin_msg(wire::RTM_NEWROUTE, flags, seq);
    e.bytes(&p[..8]);
    e.u32(wire::get_u32(&p[8..12]).unwrap_or(0) & RTNH_F_ONLINK);
    let mut rest = &p[12..];
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < 4 || len > rest.len() {
            break;
        }
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        let v = &rest[4..len];
        match ty {
            RTA_CACHEINFO => {}
            wire::RTA_OIF => {
                let i = wire::get_i32(v).unwrap_or(0);
                e.attr_u32(wire::RTA_OIF, fix(i, old, new) as u32);
            }
            RTA_MULTIPATH => {
                let at = e.begin_nest(RTA_MULTIPATH);
                let mut nh = v;
                while nh.len() >= 8 {
                    let nl = u16::from_ne_bytes([nh[0], nh[1]]) as usize;
                    if nl < 8 || nl > nh.len() {
                        break;
                    }
                    let idx = wire::get_i32(&nh[4..8]).unwrap_or(0);
                    if !v6_append || idx == old {
                        e.bytes(&nh[0..2]);
                        e.u8(nh[2] & RTNH_F_ONLINK as u8);
                        e.u8(nh[3]);
                        e.u32(fix(idx, old, new) as u32);
                        e.bytes(&nh[8..nl]);
                        let pad = wire::align4(nl) - nl;
                        e.bytes(&[0u8; 4][..pad]);
                    }
                    nh = &nh[wire::align4(nl).min(nh.len())..];
                }
                e.end_nest(at);
            }
            _ => {
                e.bytes(&rest[..len]);
                let pad = wire::align4(len) - len;
                e.bytes(&[0u8; 4][..pad]);
            }
        }
        rest = &rest[wire::align4(len).min(rest.len())..];
    }
    e.end_msg(m);
}

/// RTM_NEWNEIGH re-creating a dumped permanent entry on link `new`.
fn encode_neigh(e: &mut Enc<'_>, seq: u32, p: &[u8], new: i32) {
    let m = e.begin_msg(
        wire::RTM_NEWNEIGH,
        wire::NLM_F_REQUEST | wire::NLM_F_ACK | wire::NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    );
    e.bytes(&[p[0], 0, 0, 0]);
    e.u32(new as u32);
    e.bytes(&p[8..10]); // state
    e.u8(p[10] & NTF_ROUTER);
    e.u8(p[11]);
    copy_attrs(e, &p[12..], |ty, _| {
        matches!(ty, wire::NDA_DST | wire::NDA_LLADDR | NDA_PROTOCOL)
    });
    e.end_msg(m);
}

/// Puts back the addresses, routes and neighbours of a link that returned to
/// the snapshot's namespace as `new`: one batch on `conn`. Returns one line per
/// record the kernel refused (empty when all went back).
pub(crate) fn restore(conn: &mut Conn, st: &LinkState, new: i32) -> Result<Vec<String>, NlError> {
    if st.is_empty() {
        return Ok(Vec::new());
    }
    let n = st.addrs.len() + st.routes.len() + st.neighs.len();
    let mut buf = Vec::with_capacity(n * 96);
    let mut bounds = Vec::with_capacity(n);
    let mut what = Vec::with_capacity(n);
    let first = conn.next_seqs(n as u32);
    {
        let mut e = Enc::new(&mut buf);
        let mut k = 0u32;
        for p in &st.addrs {
            bounds.push(e.buf.len());
            encode_addr(&mut e, first.wrapping_add(k), p, new);
            what.push(describe_addr(p));
            k += 1;
        }
        for r in &st.routes {
            bounds.push(e.buf.len());
            encode_route(&mut e, first.wrapping_add(k), r, st.ifindex, new);
            what.push(describe_route(&r.raw));
            k += 1;
        }
        for p in &st.neighs {
            bounds.push(e.buf.len());
            encode_neigh(&mut e, first.wrapping_add(k), p, new);
            what.push(describe_neigh(p));
            k += 1;
        }
    }
    let replies = conn.transact(&buf, &bounds, first)?;
    Ok(replies
        .into_iter()
        .zip(what)
        .filter_map(|(r, w)| match r {
            Reply::Err(errno, msg) => Some(format!(
                "{w} not restored: {}",
                crate::error::describe("kernel refused", errno, &msg)
            )),
            _ => None,
        })
        .collect())
}

fn describe_addr(p: &[u8]) -> String {
    match dump::parse_addr(p) {
        Some(a) => format!("address {}/{}", a.address, a.prefixlen),
        None => "address".into(),
    }
}

fn describe_route(p: &[u8]) -> String {
    match dump::parse_route(p) {
        Some(r) => {
            let dst = match r.dst {
                Some(d) => format!("{d}/{}", r.dst_len),
                None => "default".into(),
            };
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            format!("route {dst}{via} table {}", r.table)
        }
        None => "route".into(),
    }
}

fn describe_neigh(p: &[u8]) -> String {
    match dump::parse_neigh(p).and_then(|n| n.address) {
        Some(ip) => format!("neighbour {ip}"),
        None => "neighbour".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut b = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        b.extend(ty.to_ne_bytes());
        b.extend(v);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b
    }

    fn route_payload(family: u8, proto: u8, table: u8, flags: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![family, 24, 0, 0, table, proto, 0, 1];
        p.extend(flags.to_ne_bytes());
        for a in attrs {
            p.extend(a);
        }
        p
    }

    #[test]
    fn kernel_local_ra_and_nexthop_object_routes_are_not_kept() {
        let oif = attr(wire::RTA_OIF, &7i32.to_ne_bytes());
        let dst = attr(wire::RTA_DST, &[10, 1, 2, 0]);
        let keep = route_payload(2, 4, 254, 0, &[dst.clone(), oif.clone()]);
        assert!(parse_route_rec(&keep).is_some());
        assert!(
            parse_route_rec(&route_payload(2, 2, 254, 0, &[dst.clone(), oif.clone()])).is_none()
        );
        assert!(
            parse_route_rec(&route_payload(2, 4, 255, 0, &[dst.clone(), oif.clone()])).is_none()
        );
        assert!(
            parse_route_rec(&route_payload(10, 9, 254, 0, std::slice::from_ref(&oif))).is_none()
        );
        let nh = attr(RTA_NH_ID, &5u32.to_ne_bytes());
        assert!(parse_route_rec(&route_payload(2, 4, 254, 0, &[dst.clone(), oif, nh])).is_none());
        // No link at all (blackhole): nothing to restore through a link.
        assert!(parse_route_rec(&route_payload(2, 4, 254, 0, &[dst])).is_none());
        // IPv6 multicast housekeeping in main.
        let mut ff = [0u8; 16];
        ff[0] = 0xff;
        let mut p = vec![10, 8, 0, 0, 254, 3, 0, 1];
        p.extend(0u32.to_ne_bytes());
        p.extend(attr(wire::RTA_DST, &ff));
        p.extend(attr(wire::RTA_OIF, &7i32.to_ne_bytes()));
        assert!(parse_route_rec(&p).is_none());
    }

    #[test]
    fn replayed_route_drops_cacheinfo_and_state_flags_and_readdresses_the_link() {
        let oif = attr(wire::RTA_OIF, &7i32.to_ne_bytes());
        let gw = attr(wire::RTA_GATEWAY, &[10, 1, 2, 1]);
        let ci = attr(RTA_CACHEINFO, &[0u8; 32]);
        let table = attr(wire::RTA_TABLE, &100u32.to_ne_bytes());
        // RTNH_F_LINKDOWN (0x10) | RTNH_F_ONLINK (0x4)
        let p = route_payload(2, 4, 100, 0x14, &[table.clone(), gw.clone(), oif, ci]);
        let rec = parse_route_rec(&p).unwrap();
        assert!(rec.gateway && !rec.multipath);
        assert_eq!(rec.oifs, vec![7]);
        let mut b = Vec::new();
        encode_route(&mut Enc::new(&mut b), 42, &rec, 7, 9);
        let mut want = Vec::new();
        want.extend(0u32.to_ne_bytes()); // length, patched below
        want.extend(wire::RTM_NEWROUTE.to_ne_bytes());
        want.extend((0x1u16 | 0x4 | 0x400 | 0x200).to_ne_bytes());
        want.extend(42u32.to_ne_bytes());
        want.extend(0u32.to_ne_bytes()); // pid
        want.extend([2, 24, 0, 0, 100, 4, 0, 1]);
        want.extend(0x4u32.to_ne_bytes());
        want.extend(table);
        want.extend(gw);
        want.extend(attr(wire::RTA_OIF, &9i32.to_ne_bytes()));
        let n = want.len() as u32;
        want[0..4].copy_from_slice(&n.to_ne_bytes());
        assert_eq!(b, want);
    }

    #[test]
    fn v6_multipath_appends_only_the_nexthops_through_the_link() {
        let nh = |idx: i32, flags: u8| {
            let gw = attr(wire::RTA_GATEWAY, &[0xfd; 16]);
            let mut b = ((8 + gw.len()) as u16).to_ne_bytes().to_vec();
            b.extend([flags, 0]);
            b.extend(idx.to_ne_bytes());
            b.extend(gw);
            b
        };
        let mut mp = nh(3, 0x10);
        mp.extend(nh(7, 0));
        let p = route_payload(10, 3, 254, 0, &[attr(RTA_MULTIPATH, &mp)]);
        let rec = parse_route_rec(&p).unwrap();
        assert!(rec.multipath);
        assert_eq!(rec.oifs, vec![3, 7]);
        let mut b = Vec::new();
        encode_route(&mut Enc::new(&mut b), 1, &rec, 7, 7);
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        assert_eq!(flags & NLM_F_APPEND, NLM_F_APPEND);
        assert_eq!(flags & wire::NLM_F_EXCL, 0);
        // One nexthop left inside RTA_MULTIPATH: ifindex 7.
        let attrs: Vec<_> = wire::attrs(&b[16 + 12..]).collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!(nexthop_oifs(attrs[0].1), vec![7]);
        // IPv4: the whole route, the moved link re-addressed, dead flags dropped.
        let p4 = route_payload(2, 3, 254, 0, &[attr(RTA_MULTIPATH, &mp)]);
        let rec4 = parse_route_rec(&p4).unwrap();
        let mut b4 = Vec::new();
        encode_route(&mut Enc::new(&mut b4), 1, &rec4, 7, 11);
        let attrs: Vec<_> = wire::attrs(&b4[16 + 12..]).collect();
        assert_eq!(nexthop_oifs(attrs[0].1), vec![3, 11]);
        assert_eq!(attrs[0].1[2], 0, "RTNH_F_LINKDOWN is not sent back");
    }
}
