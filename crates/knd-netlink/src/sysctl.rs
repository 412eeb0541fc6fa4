//! Network sysctls (`/proc/sys/net/...`) of a namespace.
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens the
//! file, so reads and writes for another namespace run on a short-lived
//! thread owned by kndkit that entered it ([`NetNs::run_in`]); the caller's
//! thread never changes namespace.

use std::io::{Read, Write};

use knd_netns::NetNs;

use crate::error::{describe, ErrorKind, NlError};
use crate::plan::validate_sysctl_path;

fn full(path: &str) -> String {
    format!("/proc/sys/{path}")
}

fn read_here(path: &str) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(full(path))?.read_to_string(&mut s)?;
    Ok(s.trim_end_matches('\n').to_string())
}

fn write_here(path: &str, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(full(path))?;
    f.write_all(value.as_bytes())
}

fn os_err(what: String, e: std::io::Error) -> NlError {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    let mut err = NlError::new(ErrorKind::Netlink, describe(&what, errno, ""));
    err.errno = errno;
    err
}

fn run<R: Send>(ns: Option<&NetNs>, f: impl FnOnce() -> R + Send) -> Result<R, NlError> {
    match ns {
        None => Ok(f()),
        Some(ns) => {
            ns.ensure_alive()?;
            Ok(ns.run_in(f)?)
        }
    }
}

/// The value of `path` (relative to `/proc/sys`, under `net/`) in `ns`,
/// without its trailing newline.
pub fn read(ns: Option<&NetNs>, path: &str) -> Result<String, NlError> {
    validate_sysctl_path(path).map_err(NlError::invalid)?;
    run(ns, || read_here(path))?.map_err(|e| os_err(format!("cannot read sysctl {path}"), e))
}

/// Writes `value` to `path` in `ns` and returns the previous value.
pub fn swap(ns: Option<&NetNs>, path: &str, value: &str) -> Result<String, NlError> {
    validate_sysctl_path(path).map_err(NlError::invalid)?;
    run(ns, || -> Result<String, NlError> {
        let old = read_here(path).map_err(|e| os_err(format!("cannot read sysctl {path}"), e))?;
        write_here(path, value)
            .map_err(|e| os_err(format!("cannot write {value:?} to sysctl {path}"), e))?;
        Ok(old)
    })?
}

/// Writes `value` to `path` in `ns`.
pub fn write(ns: Option<&NetNs>, path: &str, value: &str) -> Result<(), NlError> {
    validate_sysctl_path(path).map_err(NlError::invalid)?;
    run(ns, || write_here(path, value))?
        .map_err(|e| os_err(format!("cannot write {value:?} to sysctl {path}"), e))
}
