//! Conversion of native failures into the exception classes of `kndkit.errors`.
//!
//! The classes are defined once, in Python, so that `except kndkit.NetlinkError`
//! catches what the native core raises. They are looked up on first use.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Builds an instance of `kndkit.errors.<class>` with `message` and keyword
/// attributes, as a `PyErr`. Falls back to `RuntimeError` if the module cannot be
/// imported (which only happens in a broken installation).
pub fn knd_err(class: &str, message: &str, kwargs: &[(&str, Py<PyAny>)]) -> PyErr {
    Python::attach(|py| match build(py, class, message, kwargs) {
        Ok(err) => err,
        Err(e) => PyRuntimeError::new_err(format!("{class}: {message} (and kndkit.errors: {e})")),
    })
}

fn build(
    py: Python<'_>,
    class: &str,
    message: &str,
    kwargs: &[(&str, Py<PyAny>)],
) -> PyResult<PyErr> {
    let cls = py.import("kndkit.errors")?.getattr(class)?;
    let kw = PyDict::new(py);
    for (k, v) in kwargs {
        kw.set_item(*k, v.bind(py))?;
    }
    let inst = cls.call((message,), Some(&kw))?;
    Ok(PyErr::from_value(inst))
}

/// `kndkit.errors.InvalidArgument`: bad input, nothing was changed.
pub fn invalid_argument(message: impl AsRef<str>) -> PyErr {
    knd_err("InvalidArgument", message.as_ref(), &[])
}

/// `kndkit.errors.NamespaceError`.
pub fn namespace_error(message: impl AsRef<str>) -> PyErr {
    knd_err("NamespaceError", message.as_ref(), &[])
}

/// `kndkit.errors.NotAvailable`.
pub fn not_available(message: impl AsRef<str>) -> PyErr {
    knd_err("NotAvailable", message.as_ref(), &[])
}

/// `kndkit.errors.KndError` (anything without a more precise class).
pub fn knd_error(message: impl AsRef<str>) -> PyErr {
    knd_err("KndError", message.as_ref(), &[])
}

/// Symbolic name of a positive errno value (`"EEXIST"`), or `"E<n>"`.
pub fn errno_name(errno: i32) -> String {
    knd_netns::errno_name(errno)
}
