//! RDMA for kndkit: RDMA netlink (NETLINK_RDMA / NLDEV) and verbs enumeration.
//!
//! * [`nl`]: byte-exact encoding of the requests and decoding of the replies
//!   (pure; tested without RDMA hardware).
//! * [`socket`]: the NETLINK_RDMA socket (optionally opened inside a network
//!   namespace) and the operations: netns mode, device list, move, rename.
//! * [`verbs`]: device / port / GID enumeration through libibverbs, which is
//!   loaded at run time only (never linked).
//!
//! Every failure is an [`RdmaError`]; on a node without RDMA the error is
//! [`RdmaError::NotAvailable`] with a message starting
//! `"RDMA not available on this node"`.

use std::fmt;

pub mod nl;
pub mod socket;
pub mod verbs;

pub use nl::{RdmaLink, RdmaPort};
pub use socket::{RdmaSocket, NOT_AVAILABLE};

/// Why an RDMA operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdmaError {
    /// The node has no RDMA netlink, or libibverbs cannot be loaded.
    NotAvailable(String),
    /// Bad input, refused before anything was sent.
    Invalid(String),
    /// The kernel refused a request (`errno` positive; `message` is the
    /// extended-ACK text, "" when none).
    Kernel {
        op: &'static str,
        errno: i32,
        message: String,
        device: Option<String>,
    },
    /// The kernel's reply did not parse.
    Protocol(String),
    /// A system call failed.
    Os { message: String, errno: i32 },
    /// The namespace handle is unusable.
    Namespace(knd_netns::NsError),
}

impl RdmaError {
    /// Attaches the device name to a kernel error that lacks one.
    pub fn with_device(self, name: &str) -> Self {
        match self {
            RdmaError::Kernel {
                op,
                errno,
                message,
                device: None,
            } => RdmaError::Kernel {
                op,
                errno,
                message,
                device: Some(name.to_owned()),
            },
            other => other,
        }
    }
}

impl fmt::Display for RdmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RdmaError::NotAvailable(m) | RdmaError::Invalid(m) | RdmaError::Protocol(m) => {
                f.write_str(m)
            }
            RdmaError::Os { message, .. } => f.write_str(message),
            RdmaError::Namespace(e) => f.write_str(&e.message),
            RdmaError::Kernel {
                op,
                errno,
                message,
                device,
            } => {
                write!(f, "RDMA netlink {op}")?;
                if let Some(d) = device {
                    write!(f, " of {d:?}")?;
                }
                write!(
                    f,
                    " failed: {} ({})",
                    strerror(*errno),
                    knd_netns::errno_name(*errno)
                )?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RdmaError {}

/// The C library's text for `errno`, without Rust's "(os error N)" suffix.
pub(crate) fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// RDMA netns mode: `shared` (every namespace sees every device) or `exclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsMode {
    Shared,
    Exclusive,
}

impl NetnsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetnsMode::Shared => "shared",
            NetnsMode::Exclusive => "exclusive",
        }
    }

    /// Parses `"shared"` / `"exclusive"`.
    pub fn parse(s: &str) -> Result<Self, RdmaError> {
        match s {
            "shared" => Ok(NetnsMode::Shared),
            "exclusive" => Ok(NetnsMode::Exclusive),
            other => Err(RdmaError::Invalid(format!(
                "RDMA netns mode must be \"shared\" or \"exclusive\", not {other:?}"
            ))),
        }
    }
}

/// Whether NETLINK_RDMA answers on this node.
pub fn available() -> bool {
    socket::available()
}

/// The RDMA netns mode.
pub fn get_netns_mode() -> Result<NetnsMode, RdmaError> {
    let shared = RdmaSocket::open(None)?.netns_shared()?;
    Ok(if shared {
        NetnsMode::Shared
    } else {
        NetnsMode::Exclusive
    })
}

/// Sets the RDMA netns mode (the kernel accepts it from the initial namespace
/// only, and refuses a change while other namespaces exist).
pub fn set_netns_mode(mode: NetnsMode) -> Result<(), RdmaError> {
    RdmaSocket::open(None)?.set_netns_shared(mode == NetnsMode::Shared)
}

/// RDMA devices of `ns` (the caller's namespace when `None`) with their ports.
pub fn links(ns: Option<&knd_netns::NetNs>) -> Result<Vec<RdmaLink>, RdmaError> {
    RdmaSocket::open(ns)?.links()
}

/// Moves `device` (as named in `from`, default the caller's namespace) to `to`.
pub fn move_device(
    device: &str,
    to: &knd_netns::NetNs,
    from: Option<&knd_netns::NetNs>,
) -> Result<(), RdmaError> {
    nl::validate_device_name(device).map_err(RdmaError::Invalid)?;
    to.ensure_alive().map_err(RdmaError::Namespace)?;
    RdmaSocket::open(from)?.move_to(device, to)
}

/// Renames `device` in `ns` (the caller's namespace when `None`).
pub fn rename(
    device: &str,
    new_name: &str,
    ns: Option<&knd_netns::NetNs>,
) -> Result<(), RdmaError> {
    nl::validate_device_name(device).map_err(RdmaError::Invalid)?;
    nl::validate_device_name(new_name).map_err(RdmaError::Invalid)?;
    RdmaSocket::open(ns)?.rename(device, new_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_mode_parses_and_refuses() {
        assert_eq!(NetnsMode::parse("shared").unwrap(), NetnsMode::Shared);
        assert_eq!(NetnsMode::parse("exclusive").unwrap().as_str(), "exclusive");
        assert!(matches!(
            NetnsMode::parse("Shared"),
            Err(RdmaError::Invalid(_))
        ));
        assert!(matches!(NetnsMode::parse(""), Err(RdmaError::Invalid(_))));
    }

    #[test]
    fn kernel_error_text_names_op_device_and_errno() {
        let e = RdmaError::Kernel {
            op: "move",
            errno: libc::EOPNOTSUPP,
            message: "not in exclusive mode".into(),
            device: None,
        }
        .with_device("mlx5_0");
        let s = e.to_string();
        assert!(
            s.starts_with("RDMA netlink move of \"mlx5_0\" failed:"),
            "{s}"
        );
        assert!(
            s.contains("EOPNOTSUPP") && s.ends_with(": not in exclusive mode"),
            "{s}"
        );
    }

    /// On a machine without NETLINK_RDMA every operation reports NotAvailable
    /// (and bad input is still refused first).
    #[test]
    fn without_netlink_rdma_everything_is_not_available() {
        let probe = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                nl::NETLINK_RDMA,
            )
        };
        if probe >= 0 {
            unsafe { libc::close(probe) };
            return; // this machine has RDMA netlink; covered by the device check
        }
        assert!(!available());
        let na = |r: Result<(), RdmaError>| match r {
            Err(RdmaError::NotAvailable(m)) => assert!(m.starts_with(NOT_AVAILABLE), "{m}"),
            other => panic!("expected NotAvailable, got {other:?}"),
        };
        na(get_netns_mode().map(|_| ()));
        na(set_netns_mode(NetnsMode::Shared));
        na(links(None).map(|_| ()));
        let here = knd_netns::NetNs::current().unwrap();
        na(links(Some(&here)).map(|_| ()));
        na(move_device("mlx5_0", &here, None));
        na(rename("mlx5_0", "rdma0", None));
        assert!(matches!(
            rename("mlx5_0", "bad/name", None),
            Err(RdmaError::Invalid(_))
        ));
        assert!(matches!(
            move_device("", &here, None),
            Err(RdmaError::Invalid(_))
        ));
    }
}
