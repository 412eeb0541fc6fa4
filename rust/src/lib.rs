//! `kndkit._native`: the PyO3 module. Only conversion between Python and the
//! workspace crates lives here; the work is done in `crates/knd-*`.
//!
//! Every call that touches the kernel or the file system runs inside
//! `Python::detach`, so the GIL is released while Rust works.

use pyo3::prelude::*;

pub mod errors;
mod py_discover;
mod py_netlink;
mod py_netns;
mod py_rdma;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py_netns::register(m)?;
    py_netlink::register(m)?;
    py_discover::register(m)?;
    py_rdma::register(m)?;
    Ok(())
}
