//! RDMA netlink (NETLINK_RDMA, client NLDEV) messages: encoding of the
//! requests kndkit sends and decoding of the kernel's replies.
//!
//! Everything here is pure (bytes in, bytes out) so it is tested byte by byte on
//! machines without RDMA. The constants are the kernel's ABI
//! (`<rdma/rdma_netlink.h>`): an RDMA netlink message is a bare `nlmsghdr`
//! followed directly by attributes (there is no family header), and its type is
//! `(client << 10) + op`.

use std::fmt;

/// `NETLINK_RDMA`, the netlink protocol number.
pub const NETLINK_RDMA: i32 = 20;
/// `RDMA_NL_NLDEV`, the device-management client.
pub const RDMA_NL_NLDEV: u16 = 5;

/// NLDEV commands (`enum rdma_nldev_command`).
pub mod cmd {
    pub const GET: u16 = 1;
    pub const SET: u16 = 2;
    pub const NEWLINK: u16 = 3;
    pub const DELLINK: u16 = 4;
    pub const PORT_GET: u16 = 5;
    pub const SYS_GET: u16 = 6;
    pub const SYS_SET: u16 = 7;
    pub const RES_GET: u16 = 9;
}

/// NLDEV attributes (`enum rdma_nldev_attr`).
pub mod attr {
    pub const PAD: u16 = 0;
    pub const DEV_INDEX: u16 = 1;
    pub const DEV_NAME: u16 = 2;
    pub const PORT_INDEX: u16 = 3;
    pub const CAP_FLAGS: u16 = 4;
    pub const FW_VERSION: u16 = 5;
    pub const NODE_GUID: u16 = 6;
    pub const SYS_IMAGE_GUID: u16 = 7;
    pub const SUBNET_PREFIX: u16 = 8;
    pub const LID: u16 = 9;
    pub const SM_LID: u16 = 10;
    pub const LMC: u16 = 11;
    pub const PORT_STATE: u16 = 12;
    pub const PORT_PHYS_STATE: u16 = 13;
    pub const DEV_NODE_TYPE: u16 = 14;
    pub const NDEV_INDEX: u16 = 50;
    pub const NDEV_NAME: u16 = 51;
    pub const DRIVER: u16 = 52;
    pub const LINK_TYPE: u16 = 65;
    pub const SYS_NETNS_MODE: u16 = 66;
    pub const DEV_PROTOCOL: u16 = 67;
    pub const NET_NS_FD: u16 = 68;
    pub const DEV_DIM: u16 = 84;
    pub const SYS_COPY_ON_FORK: u16 = 93;
}

/// Generic netlink header values (`<linux/netlink.h>`).
pub mod nlm {
    pub const NOOP: u16 = 1;
    pub const ERROR: u16 = 2;
    pub const DONE: u16 = 3;
    pub const OVERRUN: u16 = 4;

    pub const F_REQUEST: u16 = 0x1;
    pub const F_MULTI: u16 = 0x2;
    pub const F_ACK: u16 = 0x4;
    pub const F_ROOT: u16 = 0x100;
    pub const F_MATCH: u16 = 0x200;
    pub const F_DUMP: u16 = F_ROOT | F_MATCH;
    /// In an NLMSG_ERROR: the echoed request was cut to its header.
    pub const F_CAPPED: u16 = 0x100;
    /// In an NLMSG_ERROR: extended-ACK attributes follow.
    pub const F_ACK_TLVS: u16 = 0x200;

    pub const HDRLEN: usize = 16;

    /// `NLMSGERR_ATTR_*`.
    pub const ERR_ATTR_MSG: u16 = 1;
    pub const ERR_ATTR_OFFS: u16 = 2;
}

/// Mask of the attribute type bits (without NLA_F_NESTED / NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The message type of NLDEV command `op`.
pub const fn msg_type(op: u16) -> u16 {
    (RDMA_NL_NLDEV << 10) + op
}

/// Longest RDMA device name the kernel accepts (`IB_DEVICE_NAME_MAX` - 1).
pub const DEVICE_NAME_MAX: usize = 63;

// --------------------------------------------------------------------------- errors

/// A reply that does not parse: truncated, inconsistent lengths, wrong sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed RDMA netlink reply: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn derr<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

// --------------------------------------------------------------------------- encoding

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink message: header, then attributes.
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    pub fn new(ty: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        Self { buf }
    }

    /// Appends an attribute, padded to 4 bytes (the padding is not counted in
    /// `nla_len`).
    pub fn attr(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn u8(self, ty: u16, v: u8) -> Self {
        self.attr(ty, &[v])
    }

    pub fn u32(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn string(self, ty: u16, s: &str) -> Self {
        let mut p = Vec::with_capacity(s.len() + 1);
        p.extend_from_slice(s.as_bytes());
        p.push(0);
        self.attr(ty, &p)
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

const DOIT: u16 = nlm::F_REQUEST | nlm::F_ACK;
const DUMP: u16 = nlm::F_REQUEST | nlm::F_ACK | nlm::F_DUMP;

/// SYS_GET: system-wide RDMA settings (netns mode, copy-on-fork).
pub fn sys_get_request(seq: u32) -> Vec<u8> {
    MsgBuilder::new(msg_type(cmd::SYS_GET), DOIT, seq).finish()
}

/// SYS_SET of the netns mode (`shared`: true = 1, exclusive = 0).
pub fn sys_set_netns_mode_request(seq: u32, shared: bool) -> Vec<u8> {
    MsgBuilder::new(msg_type(cmd::SYS_SET), DOIT, seq)
        .u8(attr::SYS_NETNS_MODE, u8::from(shared))
        .finish()
}

/// GET dump: every RDMA device of the socket's namespace.
pub fn get_dump_request(seq: u32) -> Vec<u8> {
    MsgBuilder::new(msg_type(cmd::GET), DUMP, seq).finish()
}

/// PORT_GET dump of the ports of one device (the kernel requires DEV_INDEX).
pub fn port_dump_request(seq: u32, dev_index: u32) -> Vec<u8> {
    MsgBuilder::new(msg_type(cmd::PORT_GET), DUMP, seq)
        .u32(attr::DEV_INDEX, dev_index)
        .finish()
}

/// SET with DEV_INDEX + NET_NS_FD: moves the device to the namespace of `ns_fd`
/// (the kernel allows it in exclusive mode only).
pub fn move_request(seq: u32, dev_index: u32, ns_fd: u32) -> Vec<u8> {
    MsgBuilder::new(msg_type(cmd::SET), DOIT, seq)
        .u32(attr::DEV_INDEX, dev_index)
        .u32(attr::NET_NS_FD, ns_fd)
        .finish()
}

/// SET with DEV_INDEX + DEV_NAME: renames the device.
pub fn rename_request(seq: u32, dev_index: u32, new_name: &str) -> Vec<u8> {
    MsgBuilder::new(msg_type(cmd::SET), DOIT, seq)
        .u32(attr::DEV_INDEX, dev_index)
        .string(attr::DEV_NAME, new_name)
        .finish()
}

// --------------------------------------------------------------------------- validation

/// Checks an RDMA device name: 1..63 bytes of printable ASCII without space,
/// `/` or `%`, and not `.` / `..`.
pub fn validate_device_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("RDMA device name is empty".into());
    }
    if name.len() > DEVICE_NAME_MAX {
        return Err(format!(
            "RDMA device name {name:?} is longer than {DEVICE_NAME_MAX} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("RDMA device name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '/' || *c == '%')
    {
        return Err(format!(
            "RDMA device name {name:?} contains the invalid character {c:?}"
        ));
    }
    Ok(())
}

// --------------------------------------------------------------------------- decoding

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub payload: &'a [u8],
}

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Splits a received datagram into messages, checking every length.
pub fn split_messages(buf: &[u8]) -> Result<Vec<Msg<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let rest = buf.len() - off;
        if rest < nlm::HDRLEN {
            return derr(format!(
                "{rest} trailing bytes at offset {off} are too short for a netlink header"
            ));
        }
        let len = rd_u32(buf, off) as usize;
        if len < nlm::HDRLEN {
            return derr(format!(
                "netlink message at offset {off} claims length {len} (< 16)"
            ));
        }
        if len > rest {
            return derr(format!(
                "netlink message at offset {off} claims length {len} but only {rest} bytes arrived"
            ));
        }
        out.push(Msg {
            ty: rd_u16(buf, off + 4),
            flags: rd_u16(buf, off + 6),
            seq: rd_u32(buf, off + 8),
            pid: rd_u32(buf, off + 12),
            payload: &buf[off + nlm::HDRLEN..off + len],
        });
        off += align4(len).min(rest);
    }
    Ok(out)
}

/// Splits an attribute stream into `(type, payload)` pairs (type without the
/// nested / byte-order flags). Lengths are checked; padding is skipped.
pub fn split_attrs(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let rest = buf.len() - off;
        if rest < 4 {
            // Trailing padding shorter than an attribute header.
            if buf[off..].iter().all(|b| *b == 0) {
                break;
            }
            return derr(format!("{rest} trailing bytes at attribute offset {off}"));
        }
        let len = rd_u16(buf, off) as usize;
        let ty = rd_u16(buf, off + 2) & NLA_TYPE_MASK;
        if len < 4 {
            return derr(format!(
                "attribute {ty} at offset {off} claims length {len} (< 4)"
            ));
        }
        if len > rest {
            return derr(format!(
                "attribute {ty} at offset {off} claims length {len} but only {rest} bytes remain"
            ));
        }
        out.push((ty, &buf[off + 4..off + len]));
        off += align4(len).min(rest);
    }
    Ok(out)
}

fn want_u8(ty: u16, p: &[u8]) -> Result<u8, DecodeError> {
    match p {
        [v] => Ok(*v),
        _ => derr(format!(
            "attribute {ty} should be a u8 but has {} bytes",
            p.len()
        )),
    }
}

fn want_u32(ty: u16, p: &[u8]) -> Result<u32, DecodeError> {
    match <[u8; 4]>::try_from(p) {
        Ok(a) => Ok(u32::from_ne_bytes(a)),
        Err(_) => derr(format!(
            "attribute {ty} should be a u32 but has {} bytes",
            p.len()
        )),
    }
}

fn want_u64(ty: u16, p: &[u8]) -> Result<u64, DecodeError> {
    match <[u8; 8]>::try_from(p) {
        Ok(a) => Ok(u64::from_ne_bytes(a)),
        Err(_) => derr(format!(
            "attribute {ty} should be a u64 but has {} bytes",
            p.len()
        )),
    }
}

/// A string attribute: up to the first NUL (the kernel sends NUL-terminated
/// strings); must be UTF-8.
fn want_str(ty: u16, p: &[u8]) -> Result<String, DecodeError> {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    match std::str::from_utf8(&p[..end]) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => derr(format!("attribute {ty} is not a UTF-8 string")),
    }
}

/// A GUID as the kernel, sysfs and `rdma`/`ibv_devinfo` print it: four groups of
/// four hex digits, most significant first (`0c42:a103:0065:7a8e`).
pub fn format_guid(v: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        (v >> 48) & 0xffff,
        (v >> 32) & 0xffff,
        (v >> 16) & 0xffff,
        v & 0xffff
    )
}

/// Name of an `RDMA_NODE_*` value.
pub fn node_type_name(v: u8) -> String {
    match v {
        1 => "ca".into(),
        2 => "switch".into(),
        3 => "router".into(),
        4 => "rnic".into(),
        5 => "usnic".into(),
        6 => "usnic_udp".into(),
        7 => "unspecified".into(),
        n => format!("unknown({n})"),
    }
}

/// Name of an IB port state (shared by netlink and verbs).
pub fn port_state_name(v: u32) -> String {
    match v {
        0 => "nop".into(),
        1 => "down".into(),
        2 => "init".into(),
        3 => "armed".into(),
        4 => "active".into(),
        5 => "active_defer".into(),
        n => format!("unknown({n})"),
    }
}

/// Name of an IB physical port state.
pub fn phys_state_name(v: u8) -> String {
    match v {
        1 => "sleep".into(),
        2 => "polling".into(),
        3 => "disabled".into(),
        4 => "training".into(),
        5 => "link_up".into(),
        6 => "link_error_recovery".into(),
        7 => "phy_test".into(),
        n => format!("unknown({n})"),
    }
}

/// The system-wide settings SYS_GET reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysInfo {
    /// `Some(true)` shared, `Some(false)` exclusive.
    pub netns_shared: Option<bool>,
    pub copy_on_fork: Option<bool>,
}

pub fn decode_sys(payload: &[u8]) -> Result<SysInfo, DecodeError> {
    let mut s = SysInfo::default();
    for (ty, p) in split_attrs(payload)? {
        match ty {
            attr::SYS_NETNS_MODE => s.netns_shared = Some(want_u8(ty, p)? != 0),
            attr::SYS_COPY_ON_FORK => s.copy_on_fork = Some(want_u8(ty, p)? != 0),
            _ => {}
        }
    }
    Ok(s)
}

/// One RDMA device of a GET dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdmaLink {
    pub index: u32,
    pub name: String,
    /// Number of ports (the kernel reports the last port index).
    pub port_count: Option<u32>,
    pub node_guid: Option<u64>,
    pub sys_image_guid: Option<u64>,
    pub fw_version: Option<String>,
    pub node_type: Option<u8>,
    pub protocol: Option<String>,
    pub cap_flags: Option<u64>,
    pub ports: Vec<RdmaPort>,
}

/// One port of a PORT_GET dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdmaPort {
    pub dev_index: u32,
    pub port: u32,
    pub state: Option<u8>,
    pub phys_state: Option<u8>,
    pub lid: Option<u32>,
    pub subnet_prefix: Option<u64>,
    pub netdev_index: Option<u32>,
    pub netdev: Option<String>,
}

/// Decodes one GET reply. DEV_INDEX and DEV_NAME are required; attributes this
/// code does not know (and PAD) are skipped.
pub fn decode_link(payload: &[u8]) -> Result<RdmaLink, DecodeError> {
    let mut l = RdmaLink::default();
    let (mut have_index, mut have_name) = (false, false);
    for (ty, p) in split_attrs(payload)? {
        match ty {
            attr::DEV_INDEX => {
                l.index = want_u32(ty, p)?;
                have_index = true;
            }
            attr::DEV_NAME => {
                l.name = want_str(ty, p)?;
                have_name = true;
            }
            attr::PORT_INDEX => l.port_count = Some(want_u32(ty, p)?),
            attr::CAP_FLAGS => l.cap_flags = Some(want_u64(ty, p)?),
            attr::FW_VERSION => l.fw_version = Some(want_str(ty, p)?),
            attr::NODE_GUID => l.node_guid = Some(want_u64(ty, p)?),
            attr::SYS_IMAGE_GUID => l.sys_image_guid = Some(want_u64(ty, p)?),
            attr::DEV_NODE_TYPE => l.node_type = Some(want_u8(ty, p)?),
            attr::DEV_PROTOCOL => l.protocol = Some(want_str(ty, p)?),
            _ => {}
        }
    }
    if !have_index || !have_name {
        return derr("device entry without DEV_INDEX or DEV_NAME");
    }
    if l.name.is_empty() {
        return derr("device entry with an empty DEV_NAME");
    }
    Ok(l)
}

/// Decodes one PORT_GET reply. DEV_INDEX and PORT_INDEX are required.
pub fn decode_port(payload: &[u8]) -> Result<RdmaPort, DecodeError> {
    let mut p = RdmaPort::default();
    let (mut have_dev, mut have_port) = (false, false);
    for (ty, v) in split_attrs(payload)? {
        match ty {
            attr::DEV_INDEX => {
                p.dev_index = want_u32(ty, v)?;
                have_dev = true;
            }
            attr::PORT_INDEX => {
                p.port = want_u32(ty, v)?;
                have_port = true;
            }
            attr::PORT_STATE => p.state = Some(want_u8(ty, v)?),
            attr::PORT_PHYS_STATE => p.phys_state = Some(want_u8(ty, v)?),
            attr::LID => p.lid = Some(want_u32(ty, v)?),
            attr::SUBNET_PREFIX => p.subnet_prefix = Some(want_u64(ty, v)?),
            attr::NDEV_INDEX => p.netdev_index = Some(want_u32(ty, v)?),
            attr::NDEV_NAME => p.netdev = Some(want_str(ty, v)?),
            _ => {}
        }
    }
    if !have_dev || !have_port {
        return derr("port entry without DEV_INDEX or PORT_INDEX");
    }
    Ok(p)
}

/// The decoded payload of an NLMSG_ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// 0 for an ACK, a negative errno otherwise.
    pub error: i32,
    /// The extended-ACK message (NLMSGERR_ATTR_MSG), "" when none.
    pub message: String,
    /// Offset of the offending attribute in the request (NLMSGERR_ATTR_OFFS).
    pub offset: Option<u32>,
}

/// Decodes an NLMSG_ERROR payload (`flags` are the error message's header flags).
pub fn decode_ack(flags: u16, payload: &[u8]) -> Result<Ack, DecodeError> {
    if payload.len() < 4 + nlm::HDRLEN {
        return derr(format!(
            "NLMSG_ERROR payload of {} bytes (< 20)",
            payload.len()
        ));
    }
    let error = rd_u32(payload, 0) as i32;
    let mut ack = Ack {
        error,
        message: String::new(),
        offset: None,
    };
    if flags & nlm::F_ACK_TLVS == 0 {
        return Ok(ack);
    }
    // The echoed request: its header only when capped (or for an ACK), the
    // whole message otherwise.
    let echoed = if flags & nlm::F_CAPPED != 0 || error == 0 {
        nlm::HDRLEN
    } else {
        (rd_u32(payload, 4) as usize).max(nlm::HDRLEN)
    };
    let tlv_start = 4 + align4(echoed);
    if tlv_start > payload.len() {
        return derr(format!(
            "NLMSG_ERROR echoes a {echoed}-byte request but carries only {} bytes",
            payload.len() - 4
        ));
    }
    for (ty, p) in split_attrs(&payload[tlv_start..])? {
        match ty {
            nlm::ERR_ATTR_MSG => ack.message = want_str(ty, p)?,
            nlm::ERR_ATTR_OFFS => ack.offset = Some(want_u32(ty, p)?),
            _ => {}
        }
    }
    Ok(ack)
}

/// A failure the kernel reported for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// Positive errno.
    pub errno: i32,
    /// Extended-ACK text, "" when none.
    pub message: String,
}

/// The state of one request/reply exchange: feed it every datagram received
/// until it says it is complete. Messages of other sequence numbers are
/// ignored (late replies of an earlier request).
#[derive(Debug)]
pub struct Exchange {
    seq: u32,
    reply_type: u16,
    dump: bool,
    done: bool,
    /// Payloads of the data messages that answered the request, in order.
    pub replies: Vec<Vec<u8>>,
}

/// What [`Exchange::feed`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    Decode(DecodeError),
    Kernel(KernelError),
}

impl From<DecodeError> for FeedError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

impl Exchange {
    /// `request` is the message that was sent (its type, flags and sequence
    /// number say what to expect).
    pub fn new(request: &[u8]) -> Self {
        let ty = rd_u16(request, 4);
        let flags = rd_u16(request, 6);
        Self {
            seq: rd_u32(request, 8),
            reply_type: ty,
            dump: flags & nlm::F_DUMP == nlm::F_DUMP,
            done: false,
            replies: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Consumes one datagram; returns `Ok(true)` once the exchange is complete.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<bool, FeedError> {
        for m in split_messages(datagram)? {
            if m.seq != self.seq || self.done {
                continue;
            }
            match m.ty {
                nlm::NOOP => {}
                nlm::OVERRUN => {
                    return Err(DecodeError("netlink overrun: replies were lost".into()).into())
                }
                nlm::ERROR => {
                    let ack = decode_ack(m.flags, m.payload)?;
                    if ack.error != 0 {
                        return Err(FeedError::Kernel(KernelError {
                            errno: -ack.error,
                            message: ack.message,
                        }));
                    }
                    if !self.dump {
                        self.done = true;
                    }
                }
                nlm::DONE => {
                    if m.payload.len() >= 4 {
                        let err = rd_u32(m.payload, 0) as i32;
                        if err < 0 {
                            let message = if m.flags & nlm::F_ACK_TLVS != 0 && m.payload.len() > 4 {
                                split_attrs(&m.payload[4..])?
                                    .into_iter()
                                    .find(|(t, _)| *t == nlm::ERR_ATTR_MSG)
                                    .map(|(t, p)| want_str(t, p))
                                    .transpose()?
                                    .unwrap_or_default()
                            } else {
                                String::new()
                            };
                            return Err(FeedError::Kernel(KernelError {
                                errno: -err,
                                message,
                            }));
                        }
                    }
                    self.done = true;
                }
                t if t == self.reply_type => self.replies.push(m.payload.to_vec()),
                t => {
                    return Err(DecodeError(format!(
                        "unexpected message type {t:#06x} in reply to {:#06x}",
                        self.reply_type
                    ))
                    .into())
                }
            }
        }
        Ok(self.done)
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests;
