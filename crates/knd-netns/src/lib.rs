//! Network-namespace handles for kndkit.
//!
//! A [`NetNs`] owns a file descriptor that has been checked to be a network
//! namespace (`fstatfs` says nsfs and `ioctl(NS_GET_NSTYPE)` says
//! `CLONE_NEWNET`). Work that must happen *inside* a namespace (opening a
//! netlink socket there) runs through [`NetNs::run_in`], which enters the
//! namespace on a fresh thread owned by kndkit; the caller's thread never changes
//! namespace, and nothing forks.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// `NSFS_MAGIC` from `<linux/magic.h>`.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)` from `<linux/nsfs.h>`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Why a namespace could not be opened or used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsError {
    pub message: String,
    /// Positive errno when an OS call failed, 0 otherwise.
    pub errno: i32,
}

impl NsError {
    fn new(message: impl Into<String>, errno: i32) -> Self {
        Self {
            message: message.into(),
            errno,
        }
    }
    fn os(what: impl fmt::Display) -> Self {
        let e = std::io::Error::last_os_error();
        let errno = e.raw_os_error().unwrap_or(0);
        Self::new(format!("{what}: {} ({})", e, errno_name(errno)), errno)
    }
}

impl fmt::Display for NsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NsError {}

/// An open, verified network-namespace handle.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: Option<PathBuf>,
    dev: u64,
    ino: u64,
}

impl NetNs {
    /// Opens `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, a bind mount...).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NsError> {
        let path = path.as_ref();
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            NsError::new(
                format!("namespace path {path:?} contains a NUL byte"),
                libc::EINVAL,
            )
        })?;
        // SAFETY: valid NUL-terminated string; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(NsError::os(format!(
                "cannot open namespace {}",
                path.display()
            )));
        }
        // SAFETY: fd was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::verified(fd, Some(path.to_path_buf()), &path.display().to_string())
    }

    /// The network namespace of process `pid`.
    pub fn from_pid(pid: i32) -> Result<Self, NsError> {
        if pid <= 0 {
            return Err(NsError::new(format!("invalid pid {pid}"), libc::EINVAL));
        }
        Self::open(format!("/proc/{pid}/ns/net"))
    }

    /// Duplicates `fd`; the caller keeps its own descriptor.
    pub fn from_fd(fd: RawFd) -> Result<Self, NsError> {
        if fd < 0 {
            return Err(NsError::new(
                format!("invalid file descriptor {fd}"),
                libc::EBADF,
            ));
        }
        // SAFETY: F_DUPFD_CLOEXEC on an arbitrary int is safe; failure is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(NsError::os(format!("cannot duplicate fd {fd}")));
        }
        // SAFETY: dup is a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        Self::verified(owned, None, &format!("fd {fd}"))
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NsError> {
        Self::open("/proc/thread-self/ns/net").map(|mut ns| {
            ns.path = None;
            ns
        })
    }

    fn verified(fd: OwnedFd, path: Option<PathBuf>, what: &str) -> Result<Self, NsError> {
        // SAFETY: zeroed statfs is a valid out-parameter.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; sfs is a valid pointer.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
            return Err(NsError::os(format!("cannot stat {what}")));
        }
        #[allow(clippy::unnecessary_cast)]
        if sfs.f_type as i64 != NSFS_MAGIC {
            return Err(NsError::new(
                format!("{what} is not a namespace file (not on nsfs)"),
                libc::EINVAL,
            ));
        }
        // SAFETY: ioctl on an nsfs fd with a request that takes no argument.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            return Err(NsError::os(format!(
                "cannot query the namespace type of {what}"
            )));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(NsError::new(
                format!("{what} is a namespace but not a network namespace"),
                libc::EINVAL,
            ));
        }
        let (dev, ino) =
            fstat_ids(fd.as_raw_fd()).map_err(|_| NsError::os(format!("cannot stat {what}")))?;
        Ok(Self { fd, path, dev, ino })
    }

    /// Path the handle was opened from, when it was opened from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Inode number of the namespace (what `ls -L -i` and `ip netns identify` use).
    pub fn inode(&self) -> u64 {
        self.ino
    }

    /// True when the handle still names the namespace it was opened from: for a
    /// handle opened by path, the path must still resolve to the same namespace
    /// (`ip netns del` unmounts it; a pod teardown removes it).
    pub fn is_alive(&self) -> bool {
        match &self.path {
            None => true,
            Some(p) => match stat_ids(p) {
                Ok(ids) => ids == (self.dev, self.ino),
                Err(_) => false,
            },
        }
    }

    /// Fails with a clear error unless [`is_alive`](Self::is_alive).
    pub fn ensure_alive(&self) -> Result<(), NsError> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(NsError::new(
                format!(
                    "network namespace {} is gone (its path no longer names inode {})",
                    self.path
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    self.ino
                ),
                libc::ENOENT,
            ))
        }
    }

    /// Another handle to the same namespace.
    pub fn try_clone(&self) -> Result<Self, NsError> {
        // SAFETY: see from_fd.
        let dup = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(NsError::os("cannot duplicate namespace fd"));
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        Ok(Self {
            fd,
            path: self.path.clone(),
            dev: self.dev,
            ino: self.ino,
        })
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its
    /// result. The calling thread is untouched. Use it to create sockets that stay
    /// bound to the namespace after the thread ends.
    pub fn run_in<F, R>(&self, f: F) -> Result<R, NsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("kndkit-netns".into())
                .spawn_scoped(s, move || {
                    // SAFETY: setns on a verified netns fd affects only this thread.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(NsError::os("setns into the network namespace failed"));
                    }
                    Ok(f())
                })
                .map_err(|e| NsError::new(format!("cannot spawn a namespace thread: {e}"), 0))?;
            h.join()
                .map_err(|_| NsError::new("namespace thread panicked", 0))?
        })
    }

    /// Runs `f(k)` inside each of `namespaces[k]` in turn, on ONE new thread
    /// owned by kndkit (cheaper than a thread per namespace), and returns the
    /// results in order. The calling thread is untouched.
    pub fn run_in_each<F, R>(namespaces: &[&NetNs], f: F) -> Result<Vec<R>, NsError>
    where
        F: Fn(usize) -> R + Sync,
        R: Send,
    {
        let fds: Vec<RawFd> = namespaces.iter().map(|n| n.fd.as_raw_fd()).collect();
        let f = &f;
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("kndkit-netns".into())
                .spawn_scoped(s, move || {
                    let mut out = Vec::with_capacity(fds.len());
                    for (k, fd) in fds.iter().enumerate() {
                        // SAFETY: setns on a verified netns fd affects only this thread.
                        if unsafe { libc::setns(*fd, libc::CLONE_NEWNET) } != 0 {
                            return Err(NsError::os("setns into the network namespace failed"));
                        }
                        out.push(f(k));
                    }
                    Ok(out)
                })
                .map_err(|e| NsError::new(format!("cannot spawn a namespace thread: {e}"), 0))?;
            h.join()
                .map_err(|_| NsError::new("namespace thread panicked", 0))?
        })
    }

    /// True when both handles name the same namespace.
    pub fn same_as(&self, other: &NetNs) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn fstat_ids(fd: RawFd) -> std::io::Result<(u64, u64)> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

fn stat_ids(p: &Path) -> std::io::Result<(u64, u64)> {
    let c = CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and pointer.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

/// Symbolic name of a positive errno (`EEXIST`), or `E<n>` when unknown.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTO => "EPROTO",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_opens_and_is_alive() {
        let ns = NetNs::current().expect("current netns");
        assert!(ns.is_alive());
        assert!(ns.inode() > 0);
        let again = NetNs::from_fd(ns.as_raw_fd()).unwrap();
        assert!(ns.same_as(&again));
    }

    #[test]
    fn regular_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("knd-netns-test-{}", std::process::id()));
        std::fs::write(&dir, b"not a namespace").unwrap();
        let err = NetNs::open(&dir).unwrap_err();
        std::fs::remove_file(&dir).ok();
        assert!(
            err.message.contains("not a namespace file"),
            "{}",
            err.message
        );
    }

    #[test]
    fn other_namespace_kind_is_refused() {
        let err = NetNs::open("/proc/self/ns/uts").unwrap_err();
        assert!(
            err.message.contains("not a network namespace"),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_path_is_refused() {
        let err = NetNs::open("/run/netns/definitely-not-here-kndkit").unwrap_err();
        assert_eq!(err.errno, libc::ENOENT);
    }

    #[test]
    fn run_in_does_not_move_the_caller() {
        let before = NetNs::current().unwrap();
        let ns = NetNs::current().unwrap();
        let ino = ns
            .run_in(|| NetNs::current().map(|n| n.inode()).unwrap_or(0))
            .unwrap();
        assert_eq!(ino, before.inode());
        assert!(NetNs::current().unwrap().same_as(&before));
    }

    #[test]
    fn run_in_each_visits_every_namespace_in_order() {
        let a = NetNs::current().unwrap();
        let b = NetNs::current().unwrap();
        let seen = NetNs::run_in_each(&[&a, &b], |k| {
            (k, NetNs::current().map(|n| n.inode()).unwrap_or(0))
        })
        .unwrap();
        assert_eq!(seen, vec![(0, a.inode()), (1, b.inode())]);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EEXIST), "EEXIST");
        assert_eq!(errno_name(9999), "E9999");
    }
}
