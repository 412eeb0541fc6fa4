//! The error type of this crate.

use std::fmt;

/// Which `kndkit.errors` class an [`NlError`] maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input caught before anything was sent.
    InvalidArgument,
    /// A namespace could not be used (gone, not a netns...).
    Namespace,
    /// The kernel refused a request (or a socket call failed).
    Netlink,
    /// A facility the step needs is missing on this node (RDMA, ethtool netlink).
    NotAvailable,
}

/// A failure of a netlink request or of a plan step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub kind: ErrorKind,
    pub message: String,
    /// Index of the failing step, `-1` outside a plan.
    pub step_index: i64,
    /// The step's operation (`"link_set"`), `""` outside a plan.
    pub op: &'static str,
    pub ifname: Option<String>,
    /// Positive errno (0 when none applies).
    pub errno: i32,
    /// The kernel's extended-ACK message, `""` when it gave none.
    pub kernel_message: Box<str>,
    /// True when every completed step was undone.
    pub rolled_back: bool,
    /// Undo steps that failed themselves.
    pub rollback_errors: Vec<String>,
}

impl NlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            step_index: -1,
            op: "",
            ifname: None,
            errno: 0,
            kernel_message: "".into(),
            rolled_back: false,
            rollback_errors: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn namespace(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Namespace, message)
    }

    /// A failed OS call on a netlink socket.
    pub fn os(what: &str, e: std::io::Error) -> Self {
        let errno = e.raw_os_error().unwrap_or(0);
        let mut err = Self::new(
            ErrorKind::Netlink,
            format!("{what}: {e} ({})", errno_name(errno)),
        );
        err.errno = errno;
        err
    }

    /// The kernel answered `errno` (positive) with `kernel_message`.
    pub fn kernel(what: &str, errno: i32, kernel_message: &str) -> Self {
        let mut err = Self::new(ErrorKind::Netlink, describe(what, errno, kernel_message));
        err.errno = errno;
        err.kernel_message = kernel_message.into();
        err
    }

    /// The symbolic name of `errno`.
    pub fn errno_name(&self) -> String {
        if self.errno == 0 {
            String::new()
        } else {
            errno_name(self.errno)
        }
    }
}

/// `"<what>: EEXIST (File exists): <kernel text>"`.
pub fn describe(what: &str, errno: i32, kernel_message: &str) -> String {
    let os = std::io::Error::from_raw_os_error(errno);
    let text = os.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    if kernel_message.is_empty() {
        format!("{what}: {} ({text})", errno_name(errno))
    } else {
        format!("{what}: {} ({text}): {kernel_message}", errno_name(errno))
    }
}

pub fn errno_name(errno: i32) -> String {
    knd_netns::errno_name(errno)
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NlError {}

impl From<knd_netns::NsError> for NlError {
    fn from(e: knd_netns::NsError) -> Self {
        let mut err = NlError::namespace(e.message);
        err.errno = e.errno;
        err
    }
}
