//! A route-netlink socket bound to one namespace, with batched send and
//! sequence-matched receive.

use std::os::fd::AsRawFd;

use knd_netns::NetNs;
use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

use crate::error::NlError;
use crate::wire::{self, Hdr};

/// Most messages put in one `sendmsg` (their ACKs must all fit the receive buffer).
pub const MAX_BATCH_MSGS: usize = 1024;
const SNDBUF: i32 = 4 << 20;
const RCVBUF: i32 = 8 << 20;
const RECV_BUF_LEN: usize = 1 << 20;

/// Writes one dump request with the given sequence number.
pub type DumpRequest<'a> = &'a dyn Fn(&mut wire::Enc<'_>, u32);

/// What the kernel answered to one request of a batch.
#[derive(Debug, Clone)]
pub enum Reply {
    /// ACK with error 0.
    Ok,
    /// NLMSG_ERROR with a negative errno: `(positive errno, extended-ACK text)`.
    Err(i32, String),
    /// A data message (the answer to a GET), type and payload.
    Data(u16, Vec<u8>),
}

/// One NETLINK_ROUTE socket. Opened inside a namespace it stays bound to it.
pub struct Conn {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
    /// Largest batch (bytes) one `sendmsg` may carry.
    max_send: usize,
    /// Number of `sendmsg` calls made on this socket.
    pub sends: usize,
}

fn setopt(fd: i32, level: i32, name: i32, val: i32) -> i32 {
    // SAFETY: plain setsockopt with an int value.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    }
}

fn getopt(fd: i32, level: i32, name: i32) -> i32 {
    let mut val: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: valid out-pointers.
    unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut val as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    val
}

impl Conn {
    /// A socket in the calling thread's namespace.
    pub fn open_here() -> Result<Self, NlError> {
        Self::open_family_here(NlFamily::Route)
    }

    /// A NETLINK_GENERIC socket in the calling thread's namespace.
    pub fn open_generic_here() -> Result<Self, NlError> {
        Self::open_family_here(NlFamily::Generic)
    }

    /// A NETLINK_GENERIC socket inside `ns` (the caller's namespace for `None`).
    pub fn open_generic(ns: Option<&NetNs>) -> Result<Self, NlError> {
        match ns {
            None => Self::open_generic_here(),
            Some(ns) => ns.run_in(Self::open_generic_here)?,
        }
    }

    fn open_family_here(family: NlFamily) -> Result<Self, NlError> {
        let sock = NlSocket::connect(family, None, Groups::empty())
            .map_err(|e| NlError::os("cannot open a netlink socket", e))?;
        sock.enable_ext_ack(true)
            .map_err(|e| NlError::os("NETLINK_EXT_ACK", e))?;
        sock.enable_strict_checking(true)
            .map_err(|e| NlError::os("NETLINK_GET_STRICT_CHK", e))?;
        let fd = sock.as_raw_fd();
        // Capped ACKs: errors do not echo the whole request back.
        setopt(fd, wire::SOL_NETLINK, wire::NETLINK_CAP_ACK, 1);
        // Generous buffers for big batches (FORCE works as root, the plain
        // option is the fallback capped by net.core.[rw]mem_max).
        if setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SNDBUF) != 0 {
            setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
        }
        if setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF) != 0 {
            setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        let tv = libc::timeval {
            tv_sec: 60,
            tv_usec: 0,
        };
        // SAFETY: valid timeval pointer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let sndbuf = getopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).max(65536) as usize;
        Ok(Self {
            sock,
            seq: 1,
            buf: Vec::new(),
            max_send: sndbuf - 64,
            sends: 0,
        })
    }

    /// A socket inside `ns` (opened on a short-lived thread that entered it),
    /// or in the calling thread's namespace for `None`.
    pub fn open(ns: Option<&NetNs>) -> Result<Self, NlError> {
        match ns {
            None => Self::open_here(),
            Some(ns) => ns.run_in(Self::open_here)?,
        }
    }

    /// One socket inside each of `namespaces`, all opened on a single
    /// short-lived thread.
    pub fn open_each(namespaces: &[&NetNs]) -> Result<Vec<Self>, NlError> {
        NetNs::run_in_each(namespaces, |_| Self::open_here())?
            .into_iter()
            .collect()
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    pub fn next_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n);
        if self.seq == 0 {
            self.seq = 1;
        }
        first
    }

    fn send_raw(&mut self, data: &[u8]) -> Result<(), NlError> {
        let n = self
            .sock
            .send(data, Msg::empty())
            .map_err(|e| NlError::os("netlink sendmsg", e))?;
        self.sends += 1;
        if n != data.len() {
            return Err(NlError::os(
                "netlink sendmsg (short write)",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    fn recv_datagram(&mut self) -> Result<usize, NlError> {
        if self.buf.len() < RECV_BUF_LEN {
            self.buf.resize(RECV_BUF_LEN, 0);
        }
        loop {
            match self.sock.recv(&mut self.buf[..], Msg::TRUNC) {
                Ok((n, _)) if n > self.buf.len() => {
                    return Err(NlError::os(
                        "netlink recv: message larger than the receive buffer",
                        std::io::Error::from_raw_os_error(libc::EMSGSIZE),
                    ))
                }
                Ok((n, _)) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(NlError::os("netlink recv", e)),
            }
        }
    }

    /// Sends `batch` (whole messages with sequence numbers `first..first+count`,
    /// one reply expected per message) in as few `sendmsg` calls as the socket
    /// buffer allows, and returns the reply of each message in order.
    ///
    /// `bounds` are the byte offsets where each message starts (to split).
    pub fn transact(
        &mut self,
        batch: &[u8],
        bounds: &[usize],
        first: u32,
    ) -> Result<Vec<Reply>, NlError> {
        let count = bounds.len();
        let mut replies: Vec<Option<Reply>> = vec![None; count];
        let mut start_msg = 0;
        while start_msg < count {
            // Largest run of messages that fits one sendmsg.
            let mut end_msg = start_msg + 1;
            let start_byte = bounds[start_msg];
            let end_of = |i: usize| bounds.get(i + 1).copied().unwrap_or(batch.len());
            while end_msg < count
                && end_msg - start_msg < MAX_BATCH_MSGS
                && end_of(end_msg) - start_byte <= self.max_send
            {
                end_msg += 1;
            }
            let end_byte = bounds.get(end_msg).copied().unwrap_or(batch.len());
            self.send_raw(&batch[start_byte..end_byte])?;
            let mut pending = end_msg - start_msg;
            while pending > 0 {
                let n = self.recv_datagram()?;
                for (hdr, payload) in wire::messages(&self.buf[..n]) {
                    let Some(i) = index_of(hdr.seq, first, count) else {
                        continue;
                    };
                    if i < start_msg || i >= end_msg || replies[i].is_some() {
                        continue;
                    }
                    let r = parse_reply(&hdr, payload);
                    if let Some(r) = r {
                        replies[i] = Some(r);
                        pending -= 1;
                    }
                }
            }
            start_msg = end_msg;
        }
        Ok(replies
            .into_iter()
            .map(|r| r.unwrap_or(Reply::Ok))
            .collect())
    }

    /// One request, one reply.
    pub fn request(
        &mut self,
        build: impl FnOnce(&mut wire::Enc<'_>, u32),
    ) -> Result<Reply, NlError> {
        let seq = self.next_seqs(1);
        let mut out = Vec::with_capacity(256);
        build(&mut wire::Enc::new(&mut out), seq);
        let r = self.transact(&out, &[0], seq)?;
        Ok(r.into_iter().next().unwrap_or(Reply::Ok))
    }

    /// A dump: calls `each(type, payload)` for every record until NLMSG_DONE.
    pub fn dump(
        &mut self,
        build: impl FnOnce(&mut wire::Enc<'_>, u32),
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<(), NlError> {
        let seq = self.next_seqs(1);
        let mut out = Vec::with_capacity(64);
        build(&mut wire::Enc::new(&mut out), seq);
        self.send_raw(&out)?;
        loop {
            let n = self.recv_datagram()?;
            for (hdr, payload) in wire::messages(&self.buf[..n]) {
                if hdr.seq != seq {
                    continue;
                }
                match hdr.ty {
                    wire::NLMSG_DONE => return Ok(()),
                    wire::NLMSG_ERROR => {
                        if let Some(Reply::Err(errno, msg)) = parse_reply(&hdr, payload) {
                            return Err(NlError::kernel("netlink dump", errno, &msg));
                        }
                        return Ok(());
                    }
                    ty => each(ty, payload),
                }
            }
        }
    }
}

impl Conn {
    /// Several dumps in one `sendmsg`: calls `each(k, type, payload)` for every
    /// record of request `k` until all have ended. The kernel runs one dump per
    /// socket at a time, so a request that arrives while an earlier one is still
    /// in progress is refused with EBUSY; such requests are repeated one by one
    /// afterwards (small dumps finish inside the first reply, and the whole set
    /// then costs one `sendmsg`).
    pub fn dump_many(
        &mut self,
        reqs: &[DumpRequest<'_>],
        mut each: impl FnMut(usize, u16, &[u8]),
    ) -> Result<(), NlError> {
        let n = reqs.len();
        if n == 0 {
            return Ok(());
        }
        let first = self.next_seqs(n as u32);
        let mut out = Vec::with_capacity(48 * n);
        {
            let mut e = wire::Enc::new(&mut out);
            for (k, build) in reqs.iter().enumerate() {
                build(&mut e, first.wrapping_add(k as u32));
            }
        }
        self.send_raw(&out)?;
        let mut ended = vec![false; n];
        let mut busy = Vec::new();
        let mut failed: Option<NlError> = None;
        let mut open = n;
        while open > 0 {
            let len = self.recv_datagram()?;
            for (hdr, payload) in wire::messages(&self.buf[..len]) {
                let Some(k) = index_of(hdr.seq, first, n) else {
                    continue;
                };
                if ended[k] {
                    continue;
                }
                match hdr.ty {
                    wire::NLMSG_DONE => {
                        ended[k] = true;
                        open -= 1;
                    }
                    wire::NLMSG_ERROR => {
                        match parse_reply(&hdr, payload) {
                            Some(Reply::Err(libc::EBUSY, _)) => busy.push(k),
                            Some(Reply::Err(errno, msg)) if failed.is_none() => {
                                failed = Some(NlError::kernel("netlink dump", errno, &msg));
                            }
                            _ => {}
                        }
                        ended[k] = true;
                        open -= 1;
                    }
                    ty => each(k, ty, payload),
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for k in busy {
            self.dump(|e, s| reqs[k](e, s), |ty, p| each(k, ty, p))?;
        }
        Ok(())
    }
}

fn index_of(seq: u32, first: u32, count: usize) -> Option<usize> {
    let d = seq.wrapping_sub(first) as usize;
    (d < count).then_some(d)
}

/// Decodes a reply (ACK/error with extended-ACK text, or data).
pub fn parse_reply(hdr: &Hdr, payload: &[u8]) -> Option<Reply> {
    if hdr.ty == wire::NLMSG_DONE {
        return None;
    }
    if hdr.ty != wire::NLMSG_ERROR {
        return Some(Reply::Data(hdr.ty, payload.to_vec()));
    }
    let err = wire::get_i32(payload)?;
    if err == 0 {
        return Some(Reply::Ok);
    }
    let mut msg = String::new();
    if hdr.flags & wire::NLM_F_ACK_TLVS != 0 {
        // error (4) + echoed header (16) [+ echoed payload unless capped]
        let mut off = 4 + wire::NLMSG_HDRLEN;
        if hdr.flags & wire::NLM_F_CAPPED == 0 && payload.len() >= off {
            let echoed = wire::get_u32(&payload[4..8]).unwrap_or(16) as usize;
            off = 4 + wire::align4(echoed);
        }
        if off <= payload.len() {
            for (ty, p) in wire::attrs(&payload[off..]) {
                if ty == wire::NLMSGERR_ATTR_MSG {
                    msg = wire::get_str(p);
                }
            }
        }
    }
    Some(Reply::Err(-err, msg))
}
