//! eBPF programs attached to a link: tc filters (on the clsact/ingress qdisc)
//! and tcx programs (attached with the bpf syscall, kernel 6.6+).
//!
//! tcx queries and detaches name the link by ifindex, which the kernel looks
//! up in the namespace of the calling thread: they run on a thread owned by
//! kndkit that entered the namespace.

use knd_netns::NetNs;

use crate::error::{describe, ErrorKind, NlError};
use crate::sock::Conn;
use crate::wire::{self, Enc};

const BPF_PROG_DETACH: i64 = 9;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_PROG_QUERY: i64 = 16;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;
const BPF_LINK_DETACH: i64 = 34;
/// `BPF_TCX_INGRESS`, `BPF_TCX_EGRESS`.
const TCX_TYPES: [u32; 2] = [46, 47];
const MAX_IDS: usize = 64;

/// A tcx program attached to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcxProg {
    pub attach_type: u32,
    pub prog_id: u32,
    /// The bpf link holding it (0 when attached without a link).
    pub link_id: u32,
    pub name: String,
}

/// A tc filter of a link's clsact/ingress qdisc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `"ingress"` or `"egress"`.
    pub direction: &'static str,
    /// TCA_KIND (`"bpf"`, `"u32"`...).
    pub kind: String,
    /// TCA_BPF_NAME of a bpf filter.
    pub bpf_name: Option<String>,
}

impl Filter {
    pub fn is_bpf(&self) -> bool {
        self.kind == "bpf"
    }

    /// `bpf:<program name>` for bpf filters, the kind otherwise.
    pub fn label(&self) -> String {
        match &self.bpf_name {
            Some(n) => format!("{}:{n}", self.kind),
            None => self.kind.clone(),
        }
    }
}

/// RTM_GETTFILTER dump of the filters under `parent` of `ifindex`.
pub fn encode_filter_dump(e: &mut Enc<'_>, seq: u32, ifindex: i32, parent: u32) {
    let m = e.begin_msg(
        wire::RTM_GETTFILTER,
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
    );
    e.bytes(&[wire::AF_UNSPEC, 0, 0, 0]);
    e.u32(ifindex as u32);
    e.u32(0);
    e.u32(parent);
    e.u32(0);
    e.end_msg(m);
}

/// The tc filters on the ingress and egress hooks of `ifindex`.
pub fn filters(conn: &mut Conn, ifindex: i32) -> Result<Vec<Filter>, NlError> {
    let mut out = Vec::new();
    for (direction, minor) in [
        ("ingress", wire::TC_H_MIN_INGRESS),
        ("egress", wire::TC_H_MIN_EGRESS),
    ] {
        let parent = (wire::TC_H_CLSACT & 0xFFFF_0000) | minor;
        let r = conn.dump(
            |e, seq| encode_filter_dump(e, seq, ifindex, parent),
            |ty, p| {
                if ty != wire::RTM_NEWTFILTER || p.len() < 20 {
                    return;
                }
                // Handle 0 is the head of a protocol/priority list, not a filter.
                if wire::get_u32(&p[8..12]) == Some(0) {
                    return;
                }
                let mut f = Filter {
                    direction,
                    kind: String::new(),
                    bpf_name: None,
                };
                for (t, v) in wire::attrs(&p[20..]) {
                    match t {
                        wire::TCA_KIND => f.kind = wire::get_str(v),
                        wire::TCA_OPTIONS => {
                            for (t2, v2) in wire::attrs(v) {
                                if t2 == wire::TCA_BPF_NAME {
                                    f.bpf_name = Some(wire::get_str(v2));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if !f.kind.is_empty() {
                    out.push(f);
                }
            },
        );
        match r {
            Ok(()) => {}
            // No qdisc on that hook: no filters.
            Err(e) if e.errno == libc::EINVAL || e.errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded buffer of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

struct Fd(i32);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: a descriptor this module opened.
        unsafe { libc::close(self.0) };
    }
}

fn os(what: &str, e: std::io::Error) -> NlError {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    let mut err = NlError::new(ErrorKind::Netlink, describe(what, errno, ""));
    err.errno = errno;
    err
}

fn prog_name(id: u32) -> String {
    let mut a = [0u8; 128];
    put32(&mut a, 0, id);
    let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut a) else {
        return format!("prog#{id}");
    };
    let fd = Fd(fd as i32);
    let mut info = [0u8; 80];
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd.0 as u32);
    put32(&mut a, 4, info.len() as u32);
    put64(&mut a, 8, info.as_mut_ptr() as u64);
    match bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a) {
        Ok(_) => {
            let n = wire::get_str(&info[64..80]);
            if n.is_empty() {
                format!("prog#{id}")
            } else {
                n
            }
        }
        Err(_) => format!("prog#{id}"),
    }
}

/// The tcx programs of `ifindex` in the calling thread's namespace (empty on
/// kernels without tcx).
pub fn tcx_programs_here(ifindex: i32) -> Result<Vec<TcxProg>, NlError> {
    let mut out = Vec::new();
    for ty in TCX_TYPES {
        let mut progs = [0u32; MAX_IDS];
        let mut links = [0u32; MAX_IDS];
        let mut a = [0u8; 128];
        put32(&mut a, 0, ifindex as u32);
        put32(&mut a, 4, ty);
        put64(&mut a, 16, progs.as_mut_ptr() as u64);
        put32(&mut a, 24, MAX_IDS as u32);
        put64(&mut a, 40, links.as_mut_ptr() as u64);
        match bpf(BPF_PROG_QUERY, &mut a) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                ) =>
            {
                continue
            }
            Err(e) => return Err(os("bpf PROG_QUERY (tcx)", e)),
        }
        let n = (u32::from_ne_bytes([a[24], a[25], a[26], a[27]]) as usize).min(MAX_IDS);
        for k in 0..n {
            out.push(TcxProg {
                attach_type: ty,
                prog_id: progs[k],
                link_id: links[k],
                name: prog_name(progs[k]),
            });
        }
    }
    Ok(out)
}

/// Detaches every tcx program of `ifindex` (calling thread's namespace);
/// returns how many.
pub fn tcx_detach_here(ifindex: i32) -> Result<usize, NlError> {
    let progs = tcx_programs_here(ifindex)?;
    for p in &progs {
        let mut a = [0u8; 128];
        if p.link_id != 0 {
            put32(&mut a, 0, p.link_id);
            let fd = Fd(bpf(BPF_LINK_GET_FD_BY_ID, &mut a)
                .map_err(|e| os("bpf LINK_GET_FD_BY_ID", e))? as i32);
            let mut a = [0u8; 128];
            put32(&mut a, 0, fd.0 as u32);
            bpf(BPF_LINK_DETACH, &mut a).map_err(|e| os("bpf LINK_DETACH (tcx)", e))?;
        } else {
            put32(&mut a, 0, p.prog_id);
            let fd = Fd(bpf(BPF_PROG_GET_FD_BY_ID, &mut a)
                .map_err(|e| os("bpf PROG_GET_FD_BY_ID", e))? as i32);
            let mut a = [0u8; 128];
            put32(&mut a, 0, ifindex as u32);
            put32(&mut a, 4, fd.0 as u32);
            put32(&mut a, 8, p.attach_type);
            bpf(BPF_PROG_DETACH, &mut a).map_err(|e| os("bpf PROG_DETACH (tcx)", e))?;
        }
    }
    Ok(progs.len())
}

/// Filters and tcx programs of `ifname` in `ns`.
pub fn dump_tc(ns: Option<&NetNs>, ifname: &str) -> Result<(Vec<Filter>, Vec<TcxProg>), NlError> {
    crate::plan::validate_ifname(ifname).map_err(NlError::invalid)?;
    let mut conn = Conn::open(ns)?;
    let Some(info) = conn.link(0, Some(ifname))? else {
        let mut e = NlError::invalid(format!("no interface named {ifname:?}"));
        e.errno = libc::ENODEV;
        e.ifname = Some(ifname.into());
        return Err(e);
    };
    let f = filters(&mut conn, info.ifindex)?;
    let idx = info.ifindex;
    let t = match ns {
        None => tcx_programs_here(idx)?,
        Some(ns) => ns.run_in(move || tcx_programs_here(idx))??,
    };
    Ok((f, t))
}
