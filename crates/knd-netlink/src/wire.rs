//! Netlink wire format: constants, a small exact encoder and attribute parsing.
//!
//! The encoder appends into one reusable `Vec<u8>` (the whole batch), so a
//! request costs no allocation of its own: headers are written in place and
//! their lengths patched when the message or nested attribute is closed.

#![allow(missing_docs)]

// netlink header
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CAPPED: u16 = 0x100;
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;

// socket options (SOL_NETLINK)
pub const SOL_NETLINK: i32 = 270;
pub const NETLINK_CAP_ACK: i32 = 10;

// rtnetlink message types
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_DELNEIGH: u16 = 29;
pub const RTM_GETNEIGH: u16 = 30;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_DELRULE: u16 = 33;
pub const RTM_GETRULE: u16 = 34;
pub const RTM_DELQDISC: u16 = 37;
pub const RTM_GETQDISC: u16 = 38;
pub const RTM_NEWTFILTER: u16 = 44;
pub const RTM_GETTFILTER: u16 = 46;

// tc: the clsact/ingress qdisc sits at parent TC_H_CLSACT with handle ffff:0
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
pub const TC_H_CLSACT_HANDLE: u32 = 0xFFFF_0000;
pub const TC_H_MIN_INGRESS: u32 = 0xFFF2;
pub const TC_H_MIN_EGRESS: u32 = 0xFFF3;
pub const TCA_KIND: u16 = 1;
pub const TCA_OPTIONS: u16 = 2;
pub const TCA_BPF_NAME: u16 = 7;

// IFLA_*
pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_OPERSTATE: u16 = 16;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_IFALIAS: u16 = 20;
pub const IFLA_GROUP: u16 = 27;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_EXT_MASK: u16 = 29;
pub const IFLA_GSO_MAX_SIZE: u16 = 41;
pub const IFLA_PARENT_DEV_NAME: u16 = 56;
pub const IFLA_PARENT_DEV_BUS_NAME: u16 = 57;
pub const IFLA_GRO_MAX_SIZE: u16 = 58;
pub const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
pub const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;
pub const IFLA_VRF_TABLE: u16 = 1;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const VETH_INFO_PEER: u16 = 1;
pub const IFLA_MACVLAN_MODE: u16 = 1;
pub const IFLA_IPVLAN_MODE: u16 = 1;
pub const IFLA_IPVLAN_FLAGS: u16 = 2;
pub const IFLA_VLAN_ID: u16 = 1;
pub const IFLA_VLAN_PROTOCOL: u16 = 5;
pub const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
pub const IFF_UP: u32 = 0x1;

// IFA_*
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_LABEL: u16 = 3;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_HOMEADDRESS: u32 = 0x10;
pub const IFA_F_MANAGETEMPADDR: u32 = 0x100;
pub const IFA_F_NOPREFIXROUTE: u32 = 0x200;

// RTA_*
pub const RTA_DST: u16 = 1;
pub const RTA_SRC: u16 = 2;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PRIORITY: u16 = 6;
pub const RTA_PREFSRC: u16 = 7;
pub const RTA_TABLE: u16 = 15;
pub const RTN_UNICAST: u8 = 1;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_SITE: u8 = 200;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;
pub const RT_SCOPE_NOWHERE: u8 = 255;
pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;
pub const RTPROT_BOOT: u8 = 3;
pub const RTPROT_STATIC: u8 = 4;

// FRA_* (policy rules)
pub const FRA_DST: u16 = 1;
pub const FRA_SRC: u16 = 2;
pub const FRA_IIFNAME: u16 = 3;
pub const FRA_PRIORITY: u16 = 6;
pub const FRA_FWMARK: u16 = 10;
pub const FRA_TABLE: u16 = 15;
pub const FRA_OIFNAME: u16 = 17;
pub const FR_ACT_TO_TBL: u8 = 1;

// NDA_* (neighbours)
pub const NDA_DST: u16 = 1;
pub const NDA_LLADDR: u16 = 2;
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_STALE: u16 = 0x04;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_PERMANENT: u16 = 0x80;

pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Rounds up to the netlink 4-byte alignment.
#[inline]
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages to a buffer (usually a whole batch).
pub struct Enc<'a> {
    pub buf: &'a mut Vec<u8>,
}

impl<'a> Enc<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }

    /// Starts a message; returns its offset for [`end_msg`](Self::end_msg).
    #[inline]
    pub fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        at
    }

    #[inline]
    pub fn end_msg(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    #[inline]
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_ne_bytes());
    }

    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_ne_bytes());
    }

    /// `struct ifinfomsg` (16 bytes).
    #[inline]
    pub fn ifinfomsg(&mut self, family: u8, index: i32, flags: u32, change: u32) {
        self.u8(family);
        self.u8(0);
        self.u16(0); // ifi_type
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.u32(flags);
        self.u32(change);
    }

    /// One attribute with a raw payload, padded to 4 bytes.
    #[inline]
    pub fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.u16(len as u16);
        self.u16(ty);
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    #[inline]
    pub fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    #[inline]
    pub fn attr_u16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_ne_bytes());
    }

    #[inline]
    pub fn attr_u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }

    /// A NUL-terminated string attribute.
    #[inline]
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.u16(len as u16);
        self.u16(ty);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Opens a nested attribute; returns its offset for [`end_nest`](Self::end_nest).
    #[inline]
    pub fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.u16(0);
        self.u16(ty);
        at
    }

    #[inline]
    pub fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    #[inline]
    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        for _ in 0..n {
            self.buf.push(0);
        }
    }
}

/// A message header as read from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Hdr {
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
}

/// Iterates the netlink messages of one datagram: `(header, payload)`.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = (Hdr, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let hdr = Hdr {
            len: len as u32,
            ty: u16::from_ne_bytes([data[4], data[5]]),
            flags: u16::from_ne_bytes([data[6], data[7]]),
            seq: u32::from_ne_bytes(data[8..12].try_into().ok()?),
        };
        let payload = &data[NLMSG_HDRLEN..len];
        let next = align4(len).min(data.len());
        data = &data[next..];
        Some((hdr, payload))
    })
}

/// Iterates the attributes `(type, payload)` of a buffer (nested flag masked out).
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        let next = align4(len).min(data.len());
        data = &data[next..];
        Some((ty, payload))
    })
}

pub fn get_u32(p: &[u8]) -> Option<u32> {
    p.get(0..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn get_i32(p: &[u8]) -> Option<i32> {
    get_u32(p).map(|v| v as i32)
}

pub fn get_str(p: &[u8]) -> String {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

pub fn get_ip(family: u8, p: &[u8]) -> Option<std::net::IpAddr> {
    match family {
        AF_INET if p.len() >= 4 => Some(std::net::IpAddr::from([p[0], p[1], p[2], p[3]])),
        AF_INET6 if p.len() >= 16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[..16]);
            Some(std::net::IpAddr::from(a))
        }
        _ => None,
    }
}

/// The bytes of an IP address as the kernel wants them.
pub fn ip_bytes(ip: &std::net::IpAddr) -> IpBytes {
    match ip {
        std::net::IpAddr::V4(a) => IpBytes {
            b: pad16(&a.octets()),
            n: 4,
        },
        std::net::IpAddr::V6(a) => IpBytes {
            b: a.octets(),
            n: 16,
        },
    }
}

fn pad16(s: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..s.len()].copy_from_slice(s);
    b
}

/// An address in network order without allocation.
pub struct IpBytes {
    b: [u8; 16],
    n: usize,
}

impl IpBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

pub fn family_of(ip: &std::net::IpAddr) -> u8 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}
