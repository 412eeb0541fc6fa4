//! `kndkit._native.NetNs`: a Python handle around [`knd_netns::NetNs`].

use std::os::fd::{AsRawFd, RawFd};

use pyo3::prelude::*;

use crate::errors::namespace_error;

/// An open handle to a network namespace.
#[pyclass(name = "NetNs", module = "kndkit._native", frozen)]
pub struct PyNetNs {
    inner: std::sync::Mutex<Option<knd_netns::NetNs>>,
}

impl PyNetNs {
    fn wrap(ns: knd_netns::NetNs) -> Self {
        Self {
            inner: std::sync::Mutex::new(Some(ns)),
        }
    }

    /// A fresh owned clone of the namespace handle, for use after the GIL is
    /// released (the clone stays valid even if Python closes this handle).
    pub fn clone_inner(&self) -> PyResult<knd_netns::NetNs> {
        let g = self
            .inner
            .lock()
            .map_err(|_| namespace_error("namespace handle poisoned"))?;
        match g.as_ref() {
            Some(ns) => ns.try_clone().map_err(|e| namespace_error(e.message)),
            None => Err(namespace_error("namespace handle is closed")),
        }
    }

    /// The raw fd (valid while the handle is open).
    pub fn raw_fd(&self) -> PyResult<RawFd> {
        let g = self
            .inner
            .lock()
            .map_err(|_| namespace_error("namespace handle poisoned"))?;
        g.as_ref()
            .map(|ns| ns.as_raw_fd())
            .ok_or_else(|| namespace_error("namespace handle is closed"))
    }

    fn with<R>(&self, f: impl FnOnce(&knd_netns::NetNs) -> R) -> PyResult<R> {
        let g = self
            .inner
            .lock()
            .map_err(|_| namespace_error("namespace handle poisoned"))?;
        g.as_ref()
            .map(f)
            .ok_or_else(|| namespace_error("namespace handle is closed"))
    }
}

#[pymethods]
impl PyNetNs {
    #[staticmethod]
    fn open(py: Python<'_>, path: &str) -> PyResult<Self> {
        let p = path.to_owned();
        py.detach(move || knd_netns::NetNs::open(&p))
            .map(Self::wrap)
            .map_err(|e| namespace_error(e.message))
    }

    #[staticmethod]
    fn from_pid(pid: i32) -> PyResult<Self> {
        knd_netns::NetNs::from_pid(pid)
            .map(Self::wrap)
            .map_err(|e| namespace_error(e.message))
    }

    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        knd_netns::NetNs::from_fd(fd)
            .map(Self::wrap)
            .map_err(|e| namespace_error(e.message))
    }

    #[staticmethod]
    fn current() -> PyResult<Self> {
        knd_netns::NetNs::current()
            .map(Self::wrap)
            .map_err(|e| namespace_error(e.message))
    }

    #[getter]
    fn path(&self) -> PyResult<Option<String>> {
        self.with(|ns| ns.path().map(|p| p.display().to_string()))
    }

    #[getter]
    fn inode(&self) -> PyResult<u64> {
        self.with(|ns| ns.inode())
    }

    fn fileno(&self) -> PyResult<i32> {
        self.raw_fd()
    }

    fn is_alive(&self) -> bool {
        self.with(|ns| ns.is_alive()).unwrap_or(false)
    }

    fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.take();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) {
        self.close();
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        let Ok(o) = other.cast::<PyNetNs>() else {
            return false;
        };
        let a = self.with(|ns| ns.inode()).ok();
        let b = o.get().with(|ns| ns.inode()).ok();
        a.is_some() && a == b
    }

    fn __hash__(&self) -> u64 {
        self.with(|ns| ns.inode()).unwrap_or(0)
    }

    fn __repr__(&self) -> String {
        match self.with(|ns| (ns.path().map(|p| p.display().to_string()), ns.inode())) {
            Ok((Some(p), ino)) => format!("NetNs(path={p:?}, inode={ino})"),
            Ok((None, ino)) => format!("NetNs(inode={ino})"),
            Err(_) => "NetNs(<closed>)".into(),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNetNs>()
}
