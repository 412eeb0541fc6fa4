//! The NETLINK_RDMA socket and the operations kndkit performs with it.
//!
//! A socket opened inside a namespace (through [`knd_netns::NetNs::run_in`])
//! stays bound to it: in exclusive mode each namespace sees only its own RDMA
//! devices.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use knd_netns::{errno_name, NetNs};

use crate::nl::{self, Exchange, FeedError, RdmaLink};
use crate::RdmaError;

/// The message every "not available" error starts with.
pub const NOT_AVAILABLE: &str = "RDMA not available on this node";

const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const RECV_TIMEOUT_S: i64 = 5;
const RECV_BUF: usize = 64 * 1024;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn next_seq() -> u32 {
    // Never 0: a sequence number of 0 is what unsolicited messages carry.
    let s = SEQ
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(0x4b4e_0001);
    if s == 0 {
        1
    } else {
        s
    }
}

/// An open NETLINK_RDMA socket.
#[derive(Debug)]
pub struct RdmaSocket {
    fd: OwnedFd,
}

fn os_err(what: &str) -> RdmaError {
    let e = std::io::Error::last_os_error();
    let errno = e.raw_os_error().unwrap_or(0);
    RdmaError::Os {
        message: format!("{what}: {e} ({})", errno_name(errno)),
        errno,
    }
}

fn open_raw() -> Result<OwnedFd, RdmaError> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            nl::NETLINK_RDMA,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let errno = e.raw_os_error().unwrap_or(0);
        if errno == libc::EPROTONOSUPPORT || errno == libc::EAFNOSUPPORT {
            return Err(RdmaError::NotAvailable(format!(
                "{NOT_AVAILABLE} (NETLINK_RDMA: {})",
                errno_name(errno)
            )));
        }
        return Err(RdmaError::Os {
            message: format!(
                "cannot open a NETLINK_RDMA socket: {e} ({})",
                errno_name(errno)
            ),
            errno,
        });
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
        // SAFETY: valid fd, pointer to a c_int of the given size. Failure is
        // harmless (older kernels): errors then come without their text.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT_S,
        tv_usec: 0,
    };
    // SAFETY: valid fd and timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(
            "cannot set the receive timeout of the NETLINK_RDMA socket",
        ));
    }
    Ok(fd)
}

impl RdmaSocket {
    /// Opens a socket in `ns` (the caller's namespace when `None`).
    pub fn open(ns: Option<&NetNs>) -> Result<Self, RdmaError> {
        let fd = match ns {
            None => open_raw()?,
            Some(ns) => {
                ns.ensure_alive().map_err(RdmaError::Namespace)?;
                ns.run_in(open_raw).map_err(RdmaError::Namespace)??
            }
        };
        Ok(Self { fd })
    }

    /// Sends `request` and collects the replies that answer it.
    pub fn transact(&self, op: &'static str, request: &[u8]) -> Result<Vec<Vec<u8>>, RdmaError> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid fd, buffer and address of the stated sizes.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(os_err(&format!("RDMA netlink {op}: sendto failed")));
        }
        let mut ex = Exchange::new(request);
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if matches!(e.raw_os_error(), Some(libc::EAGAIN)) {
                    return Err(RdmaError::Os {
                        message: format!(
                            "RDMA netlink {op}: no reply from the kernel within {RECV_TIMEOUT_S} s"
                        ),
                        errno: libc::ETIMEDOUT,
                    });
                }
                return Err(os_err(&format!("RDMA netlink {op}: recv failed")));
            }
            let n = n as usize;
            match ex.feed(&buf[..n]) {
                Ok(true) => return Ok(ex.replies),
                Ok(false) => {}
                Err(FeedError::Decode(d)) => return Err(RdmaError::Protocol(format!("{op}: {d}"))),
                Err(FeedError::Kernel(k)) => {
                    return Err(RdmaError::Kernel {
                        op,
                        errno: k.errno,
                        message: k.message,
                        device: None,
                    })
                }
            }
        }
    }

    /// SYS_GET: the netns mode (`true` = shared).
    pub fn netns_shared(&self) -> Result<bool, RdmaError> {
        let replies = self.transact("sys_get", &nl::sys_get_request(next_seq()))?;
        for r in &replies {
            let sys =
                nl::decode_sys(r).map_err(|e| RdmaError::Protocol(format!("sys_get: {e}")))?;
            if let Some(shared) = sys.netns_shared {
                return Ok(shared);
            }
        }
        Err(RdmaError::Protocol(
            "sys_get: the kernel's reply carries no netns mode".into(),
        ))
    }

    pub fn set_netns_shared(&self, shared: bool) -> Result<(), RdmaError> {
        self.transact(
            "sys_set",
            &nl::sys_set_netns_mode_request(next_seq(), shared),
        )
        .map(|_| ())
    }

    /// GET dump: the devices, without their ports.
    pub fn devices(&self) -> Result<Vec<RdmaLink>, RdmaError> {
        let replies = self.transact("get", &nl::get_dump_request(next_seq()))?;
        replies
            .iter()
            .map(|r| nl::decode_link(r).map_err(|e| RdmaError::Protocol(format!("get: {e}"))))
            .collect()
    }

    /// GET dump followed by a PORT_GET dump per device.
    pub fn links(&self) -> Result<Vec<RdmaLink>, RdmaError> {
        let mut links = self.devices()?;
        for l in &mut links {
            let replies = self
                .transact("port_get", &nl::port_dump_request(next_seq(), l.index))
                .map_err(|e| match e {
                    RdmaError::Kernel {
                        op, errno, message, ..
                    } => RdmaError::Kernel {
                        op,
                        errno,
                        message,
                        device: Some(l.name.clone()),
                    },
                    other => other,
                })?;
            for r in &replies {
                let p = nl::decode_port(r)
                    .map_err(|e| RdmaError::Protocol(format!("port_get: {e}")))?;
                if p.dev_index == l.index {
                    l.ports.push(p);
                }
            }
            l.ports.sort_by_key(|p| p.port);
        }
        Ok(links)
    }

    /// The index of the device called `name` in this socket's namespace.
    pub fn index_of(&self, name: &str) -> Result<u32, RdmaError> {
        self.devices()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| RdmaError::Kernel {
                op: "lookup",
                errno: libc::ENODEV,
                message: format!("no RDMA device named {name:?} in this network namespace"),
                device: Some(name.to_owned()),
            })
    }

    /// Moves device `name` to the namespace `target` (exclusive mode only).
    pub fn move_to(&self, name: &str, target: &NetNs) -> Result<(), RdmaError> {
        nl::validate_device_name(name).map_err(RdmaError::Invalid)?;
        target.ensure_alive().map_err(RdmaError::Namespace)?;
        let index = self.index_of(name)?;
        let req = nl::move_request(next_seq(), index, target.as_raw_fd() as u32);
        self.transact("move", &req)
            .map(|_| ())
            .map_err(|e| e.with_device(name))
    }

    /// Renames device `name` to `new_name`.
    pub fn rename(&self, name: &str, new_name: &str) -> Result<(), RdmaError> {
        nl::validate_device_name(name).map_err(RdmaError::Invalid)?;
        nl::validate_device_name(new_name).map_err(RdmaError::Invalid)?;
        let index = self.index_of(name)?;
        self.transact("rename", &nl::rename_request(next_seq(), index, new_name))
            .map(|_| ())
            .map_err(|e| e.with_device(name))
    }
}

/// Whether NETLINK_RDMA answers in the caller's namespace (a socket opens and
/// SYS_GET succeeds).
pub fn available() -> bool {
    RdmaSocket::open(None)
        .and_then(|s| s.netns_shared())
        .is_ok()
}
