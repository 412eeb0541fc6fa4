//! Ethtool over generic netlink: string sets, features and private flags.
//!
//! Requests use the verbose bitset form (bits named, not indexed), so a
//! feature is addressed by its kernel name (`rx-checksum`,
//! `tx-checksum-ip-generic`...). Nested attributes carry NLA_F_NESTED, which
//! the ethtool family's strict validation requires.

use std::collections::BTreeSet;

use knd_netns::NetNs;

use crate::error::{ErrorKind, NlError};
use crate::sock::{Conn, Reply};
use crate::wire::{self, Enc};

pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
pub const NLA_F_NESTED: u16 = 0x8000;

pub const ETHTOOL_GENL_VERSION: u8 = 1;
pub const MSG_STRSET_GET: u8 = 1;
pub const MSG_FEATURES_GET: u8 = 11;
pub const MSG_FEATURES_SET: u8 = 12;
pub const MSG_PRIVFLAGS_GET: u8 = 13;
pub const MSG_PRIVFLAGS_SET: u8 = 14;

pub const A_HEADER_DEV_INDEX: u16 = 1;
pub const A_HEADER_DEV_NAME: u16 = 2;
pub const A_HEADER_FLAGS: u16 = 3;
pub const FLAG_OMIT_REPLY: u32 = 1 << 1;

pub const A_BITSET_NOMASK: u16 = 1;
pub const A_BITSET_BITS: u16 = 3;
pub const A_BITSET_BITS_BIT: u16 = 1;
pub const A_BITSET_BIT_NAME: u16 = 2;
pub const A_BITSET_BIT_VALUE: u16 = 3;

pub const A_STRSET_HEADER: u16 = 1;
pub const A_STRSET_STRINGSETS: u16 = 2;
pub const A_STRINGSETS_STRINGSET: u16 = 1;
pub const A_STRINGSET_ID: u16 = 1;
pub const A_STRINGSET_STRINGS: u16 = 3;
pub const A_STRINGS_STRING: u16 = 1;
pub const A_STRING_INDEX: u16 = 1;
pub const A_STRING_VALUE: u16 = 2;

pub const A_FEATURES_HEADER: u16 = 1;
pub const A_FEATURES_HW: u16 = 2;
pub const A_FEATURES_WANTED: u16 = 3;
pub const A_FEATURES_ACTIVE: u16 = 4;
pub const A_FEATURES_NOCHANGE: u16 = 5;
pub const A_PRIVFLAGS_HEADER: u16 = 1;
pub const A_PRIVFLAGS_FLAGS: u16 = 2;

pub const ETH_SS_PRIV_FLAGS: u32 = 2;
pub const ETH_SS_FEATURES: u32 = 4;

/// Which device a request names.
#[derive(Debug, Clone, Copy)]
pub enum Dev<'a> {
    None,
    Index(i32),
    Name(&'a str),
}

/// A device's features, by name.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Every feature name the kernel knows (string set ETH_SS_FEATURES, in bit order).
    pub names: Vec<String>,
    /// Changeable ones.
    pub hw: BTreeSet<String>,
    pub wanted: BTreeSet<String>,
    pub active: BTreeSet<String>,
    /// Never changeable on this device.
    pub nochange: BTreeSet<String>,
}

impl Features {
    /// True when `name` cannot be changed on this device.
    pub fn fixed(&self, name: &str) -> bool {
        !self.hw.contains(name) || self.nochange.contains(name)
    }
}

fn genl_msg(e: &mut Enc<'_>, family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> usize {
    let m = e.begin_msg(family, flags, seq);
    e.u8(cmd);
    e.u8(version);
    e.u16(0);
    m
}

fn header(e: &mut Enc<'_>, ty: u16, dev: Dev<'_>, flags: u32) {
    let h = e.begin_nest(ty | NLA_F_NESTED);
    match dev {
        Dev::None => {}
        Dev::Index(i) => e.attr_u32(A_HEADER_DEV_INDEX, i as u32),
        Dev::Name(n) => e.attr_str(A_HEADER_DEV_NAME, n),
    }
    if flags != 0 {
        e.attr_u32(A_HEADER_FLAGS, flags);
    }
    e.end_nest(h);
}

/// CTRL_CMD_GETFAMILY for `name`.
pub fn encode_family_get(e: &mut Enc<'_>, seq: u32, name: &str) {
    let m = genl_msg(
        e,
        GENL_ID_CTRL,
        wire::NLM_F_REQUEST,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
    );
    e.attr_str(CTRL_ATTR_FAMILY_NAME, name);
    e.end_msg(m);
}

/// ETHTOOL_MSG_STRSET_GET of one string set.
pub fn encode_strset_get(e: &mut Enc<'_>, family: u16, seq: u32, dev: Dev<'_>, set: u32) {
    let m = genl_msg(
        e,
        family,
        wire::NLM_F_REQUEST,
        seq,
        MSG_STRSET_GET,
        ETHTOOL_GENL_VERSION,
    );
    header(e, A_STRSET_HEADER, dev, 0);
    let sets = e.begin_nest(A_STRSET_STRINGSETS | NLA_F_NESTED);
    let one = e.begin_nest(A_STRINGSETS_STRINGSET | NLA_F_NESTED);
    e.attr_u32(A_STRINGSET_ID, set);
    e.end_nest(one);
    e.end_nest(sets);
    e.end_msg(m);
}

/// A plain GET (features, private flags) of one device, verbose bitsets.
pub fn encode_get(e: &mut Enc<'_>, family: u16, seq: u32, cmd: u8, dev: Dev<'_>) {
    let m = genl_msg(
        e,
        family,
        wire::NLM_F_REQUEST,
        seq,
        cmd,
        ETHTOOL_GENL_VERSION,
    );
    header(e, 1, dev, 0);
    e.end_msg(m);
}

/// FEATURES_SET (`cmd` = [`MSG_FEATURES_SET`], bitset ETHTOOL_A_FEATURES_WANTED)
/// or PRIVFLAGS_SET ([`MSG_PRIVFLAGS_SET`], ETHTOOL_A_PRIVFLAGS_FLAGS): a
/// verbose bitset whose mask is exactly the named bits; the reply is omitted.
pub fn encode_set(
    e: &mut Enc<'_>,
    family: u16,
    seq: u32,
    cmd: u8,
    ifindex: i32,
    items: &[(String, bool)],
) {
    let m = genl_msg(
        e,
        family,
        wire::NLM_F_REQUEST | wire::NLM_F_ACK,
        seq,
        cmd,
        ETHTOOL_GENL_VERSION,
    );
    header(e, 1, Dev::Index(ifindex), FLAG_OMIT_REPLY);
    let set = e.begin_nest(
        if cmd == MSG_FEATURES_SET {
            A_FEATURES_WANTED
        } else {
            A_PRIVFLAGS_FLAGS
        } | NLA_F_NESTED,
    );
    let bits = e.begin_nest(A_BITSET_BITS | NLA_F_NESTED);
    for (name, on) in items {
        let b = e.begin_nest(A_BITSET_BITS_BIT | NLA_F_NESTED);
        e.attr_str(A_BITSET_BIT_NAME, name);
        if *on {
            e.attr(A_BITSET_BIT_VALUE, &[]);
        }
        e.end_nest(b);
    }
    e.end_nest(bits);
    e.end_nest(set);
    e.end_msg(m);
}

/// Bits of a verbose bitset: `(name, value)`; in list form (NOMASK) every
/// listed bit is set.
pub fn parse_bitset(p: &[u8]) -> Vec<(String, bool)> {
    let list = wire::attrs(p).any(|(t, _)| t == A_BITSET_NOMASK);
    let mut out = Vec::new();
    for (t, v) in wire::attrs(p) {
        if t != A_BITSET_BITS {
            continue;
        }
        for (t2, bit) in wire::attrs(v) {
            if t2 != A_BITSET_BITS_BIT {
                continue;
            }
            let mut name = None;
            let mut val = list;
            for (t3, x) in wire::attrs(bit) {
                match t3 {
                    A_BITSET_BIT_NAME => name = Some(wire::get_str(x)),
                    A_BITSET_BIT_VALUE => val = true,
                    _ => {}
                }
            }
            if let Some(n) = name {
                out.push((n, val));
            }
        }
    }
    out
}

/// One ethtool generic-netlink socket bound to a namespace.
pub struct EthtoolConn {
    conn: Conn,
    family: u16,
}

fn reply_data(r: Reply, what: &str) -> Result<Vec<u8>, NlError> {
    match r {
        Reply::Data(_, p) if p.len() >= 4 => Ok(p[4..].to_vec()),
        Reply::Err(errno, msg) => Err(NlError::kernel(what, errno, &msg)),
        _ => Err(NlError::new(
            ErrorKind::Netlink,
            format!("{what}: the kernel sent no data"),
        )),
    }
}

impl EthtoolConn {
    /// Opens the socket inside `ns` (the caller's namespace for `None`) and
    /// resolves the `ethtool` family.
    pub fn open(ns: Option<&NetNs>) -> Result<Self, NlError> {
        let mut conn = Conn::open_generic(ns)?;
        let r = conn.request(|e, seq| encode_family_get(e, seq, "ethtool"))?;
        let family = match r {
            Reply::Data(_, p) if p.len() >= 4 => wire::attrs(&p[4..])
                .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
                .and_then(|(_, v)| v.get(0..2).map(|b| u16::from_ne_bytes([b[0], b[1]]))),
            Reply::Err(libc::ENOENT, _) => None,
            Reply::Err(errno, msg) => {
                return Err(NlError::kernel(
                    "generic netlink family lookup of \"ethtool\"",
                    errno,
                    &msg,
                ))
            }
            _ => None,
        };
        let Some(family) = family else {
            return Err(NlError::new(
                ErrorKind::NotAvailable,
                "this kernel has no ethtool netlink interface (CONFIG_ETHTOOL_NETLINK)",
            ));
        };
        Ok(Self { conn, family })
    }

    /// The strings of string set `set` (of `dev`, or the global set for [`Dev::None`]).
    pub fn strings(&mut self, dev: Dev<'_>, set: u32) -> Result<Vec<String>, NlError> {
        let fam = self.family;
        let p = reply_data(
            self.conn
                .request(|e, seq| encode_strset_get(e, fam, seq, dev, set))?,
            "ethtool STRSET_GET",
        )?;
        let mut out: Vec<(u32, String)> = Vec::new();
        for (t, v) in wire::attrs(&p) {
            if t != A_STRSET_STRINGSETS {
                continue;
            }
            for (t2, ss) in wire::attrs(v) {
                if t2 != A_STRINGSETS_STRINGSET {
                    continue;
                }
                for (t3, strs) in wire::attrs(ss) {
                    if t3 != A_STRINGSET_STRINGS {
                        continue;
                    }
                    for (t4, s) in wire::attrs(strs) {
                        if t4 != A_STRINGS_STRING {
                            continue;
                        }
                        let mut idx = 0;
                        let mut val = String::new();
                        for (t5, x) in wire::attrs(s) {
                            match t5 {
                                A_STRING_INDEX => idx = wire::get_u32(x).unwrap_or(0),
                                A_STRING_VALUE => val = wire::get_str(x),
                                _ => {}
                            }
                        }
                        out.push((idx, val));
                    }
                }
            }
        }
        out.sort_by_key(|x| x.0);
        Ok(out
            .into_iter()
            .map(|x| x.1)
            .filter(|s| !s.is_empty())
            .collect())
    }

    /// The features of `dev`, with every feature name of the kernel.
    pub fn features(&mut self, dev: Dev<'_>) -> Result<Features, NlError> {
        let names = self.strings(dev, ETH_SS_FEATURES)?;
        Ok(Features {
            names,
            ..self.feature_state(dev)?
        })
    }

    /// The feature sets of `dev` (`names` left empty: one request less).
    pub fn feature_state(&mut self, dev: Dev<'_>) -> Result<Features, NlError> {
        let fam = self.family;
        let p = reply_data(
            self.conn
                .request(|e, seq| encode_get(e, fam, seq, MSG_FEATURES_GET, dev))?,
            "ethtool FEATURES_GET",
        )?;
        let mut f = Features::default();
        for (t, v) in wire::attrs(&p) {
            let target = match t {
                A_FEATURES_HW => &mut f.hw,
                A_FEATURES_WANTED => &mut f.wanted,
                A_FEATURES_ACTIVE => &mut f.active,
                A_FEATURES_NOCHANGE => &mut f.nochange,
                _ => continue,
            };
            for (n, on) in parse_bitset(v) {
                if on {
                    target.insert(n);
                }
            }
        }
        Ok(f)
    }

    /// The private flags of `dev` (name, on), in the driver's order.
    pub fn private_flags(&mut self, dev: Dev<'_>) -> Result<Vec<(String, bool)>, NlError> {
        let fam = self.family;
        let r = self
            .conn
            .request(|e, seq| encode_get(e, fam, seq, MSG_PRIVFLAGS_GET, dev))?;
        let p = match r {
            // A device without private flags answers EOPNOTSUPP on some kernels.
            Reply::Err(libc::EOPNOTSUPP, _) => return Ok(Vec::new()),
            r => reply_data(r, "ethtool PRIVFLAGS_GET")?,
        };
        Ok(wire::attrs(&p)
            .filter(|(t, _)| *t == A_PRIVFLAGS_FLAGS)
            .flat_map(|(_, v)| parse_bitset(v))
            .collect())
    }

    /// Sets features ([`MSG_FEATURES_SET`]) or private flags ([`MSG_PRIVFLAGS_SET`]).
    pub fn set(&mut self, cmd: u8, ifindex: i32, items: &[(String, bool)]) -> Result<(), NlError> {
        if items.is_empty() {
            return Ok(());
        }
        let fam = self.family;
        match self
            .conn
            .request(|e, seq| encode_set(e, fam, seq, cmd, ifindex, items))?
        {
            Reply::Err(errno, msg) => Err(NlError::kernel(
                if cmd == MSG_FEATURES_SET {
                    "ethtool FEATURES_SET"
                } else {
                    "ethtool PRIVFLAGS_SET"
                },
                errno,
                &msg,
            )),
            _ => Ok(()),
        }
    }
}

/// Features (active, by name), the names of fixed ones, and private flags of
/// the link `ifname` in `ns`.
pub type EthtoolState = (Vec<(String, bool)>, Vec<String>, Vec<(String, bool)>);

/// Reads [`EthtoolState`] of `ifname` in `ns`.
pub fn dump_ethtool(ns: Option<&NetNs>, ifname: &str) -> Result<EthtoolState, NlError> {
    crate::plan::validate_ifname(ifname).map_err(NlError::invalid)?;
    let mut c = EthtoolConn::open(ns)?;
    let f = c
        .features(Dev::Name(ifname))
        .map_err(|e| no_dev(e, ifname))?;
    let feats = f
        .names
        .iter()
        .map(|n| (n.clone(), f.active.contains(n)))
        .collect();
    let fixed = f.names.iter().filter(|n| f.fixed(n)).cloned().collect();
    let flags = c
        .private_flags(Dev::Name(ifname))
        .map_err(|e| no_dev(e, ifname))?;
    Ok((feats, fixed, flags))
}

fn no_dev(mut e: NlError, ifname: &str) -> NlError {
    if e.errno == libc::ENODEV {
        e.kind = ErrorKind::InvalidArgument;
        e.message = format!("no interface named {ifname:?}: {}", e.message);
    }
    e.ifname = Some(ifname.to_string());
    e
}

#[cfg(test)]
mod tests {
    //! Byte-exact requests, derived by hand from the uapi headers (little-endian).
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn features_set_verbose_bitset() {
        let mut b = Vec::new();
        let items = vec![("rx-gro".to_string(), true), ("tx-sg".to_string(), false)];
        encode_set(&mut Enc::new(&mut b), 0x15, 3, MSG_FEATURES_SET, 7, &items);
        let want = h("54000000 1500 0500 03000000 00000000
                      0c 01 0000
                      1400 0180
                        0800 0100 07000000
                        0800 0300 02000000
                      2c00 0380
                        2800 0380
                          1400 0180
                            0b00 0200 72782d67726f00 00
                            0400 0300
                          1000 0180
                            0a00 0200 74782d736700 0000");
        assert_eq!(b, want);
    }

    #[test]
    fn strset_and_family_requests() {
        let mut b = Vec::new();
        encode_strset_get(&mut Enc::new(&mut b), 0x15, 1, Dev::None, ETH_SS_FEATURES);
        let want = h("28000000 1500 0100 01000000 00000000
                      01 01 0000
                      0400 0180
                      1000 0280
                        0c00 0180
                          0800 0100 04000000");
        assert_eq!(b, want);
        b.clear();
        encode_family_get(&mut Enc::new(&mut b), 2, "ethtool");
        let want = h("20000000 1000 0100 02000000 00000000
                      03 01 0000
                      0c00 0200 657468746f6f6c00");
        assert_eq!(b, want);
    }

    #[test]
    fn bitset_list_and_masked_forms() {
        // list form (NOMASK): every listed bit is on
        let p = h("0400 0100
                   1400 0380
                     1000 0180
                       0900 0200 7478 2d73 6700 0000");
        assert_eq!(parse_bitset(&p), vec![("tx-sg".to_string(), true)]);
        // masked form: the VALUE flag says on
        let p = h("2800 0380
                     1000 0180
                       0500 0200 6100 0000
                       0400 0300
                     1000 0180
                       0500 0200 6200 0000
                       0800 0100 01000000");
        assert_eq!(
            parse_bitset(&p),
            vec![("a".to_string(), true), ("b".to_string(), false)]
        );
    }
}
