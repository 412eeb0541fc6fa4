//! `kndkit._native.rdma_*` and `verbs_*`: thin conversion of [`knd_rdma`].
//!
//! Every call releases the GIL. Failures map to `kndkit.errors`:
//! NotAvailable (no NETLINK_RDMA / no libibverbs), InvalidArgument (bad names or
//! modes, nothing sent), NetlinkError (the kernel refused), NamespaceError,
//! KndError (anything else).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::IntoPyObjectExt;

use knd_rdma::nl::{format_guid, node_type_name, phys_state_name, port_state_name};
use knd_rdma::{NetnsMode, RdmaError, RdmaLink};

use crate::errors::{
    errno_name, invalid_argument, knd_err, knd_error, namespace_error, not_available,
};
use crate::py_netns::PyNetNs;

fn to_py(e: RdmaError) -> PyErr {
    match e {
        RdmaError::NotAvailable(m) => not_available(m),
        RdmaError::Invalid(m) => invalid_argument(m),
        RdmaError::Namespace(e) => namespace_error(e.message),
        RdmaError::Protocol(_) | RdmaError::Os { .. } => knd_error(e.to_string()),
        RdmaError::Kernel {
            op,
            errno,
            ref message,
            ref device,
        } => {
            let text = e.to_string();
            Python::attach(|py| {
                let obj = |r: PyResult<Py<PyAny>>| r.unwrap_or_else(|_| py.None());
                let kw: Vec<(&str, Py<PyAny>)> = vec![
                    ("op", obj(op.into_py_any(py))),
                    ("ifname", obj(device.clone().into_py_any(py))),
                    ("errno", obj(errno.into_py_any(py))),
                    ("errno_name", obj(errno_name(errno).into_py_any(py))),
                    ("kernel_message", obj(message.clone().into_py_any(py))),
                ];
                knd_err("NetlinkError", &text, &kw)
            })
        }
    }
}

fn clone_ns(ns: Option<PyRef<'_, PyNetNs>>) -> PyResult<Option<knd_netns::NetNs>> {
    ns.map(|n| n.clone_inner()).transpose()
}

/// Whether this node answers RDMA netlink (NETLINK_RDMA).
#[pyfunction]
fn rdma_available(py: Python<'_>) -> bool {
    py.detach(knd_rdma::available)
}

/// `"shared"` or `"exclusive"`.
#[pyfunction]
fn rdma_get_netns_mode(py: Python<'_>) -> PyResult<&'static str> {
    py.detach(knd_rdma::get_netns_mode)
        .map(NetnsMode::as_str)
        .map_err(to_py)
}

/// Sets the RDMA netns mode (`"shared"` or `"exclusive"`).
#[pyfunction]
fn rdma_set_netns_mode(py: Python<'_>, mode: &str) -> PyResult<()> {
    let mode = NetnsMode::parse(mode).map_err(to_py)?;
    py.detach(move || knd_rdma::set_netns_mode(mode))
        .map_err(to_py)
}

fn link_dict<'py>(py: Python<'py>, l: &RdmaLink) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", l.index)?;
    d.set_item("name", &l.name)?;
    d.set_item("node_guid", l.node_guid.map(format_guid))?;
    d.set_item("sys_image_guid", l.sys_image_guid.map(format_guid))?;
    d.set_item("fw_version", &l.fw_version)?;
    d.set_item("node_type", l.node_type.map(node_type_name))?;
    d.set_item("protocol", &l.protocol)?;
    d.set_item("port_count", l.port_count)?;
    let ports = PyList::empty(py);
    let mut netdevs = Vec::new();
    for p in &l.ports {
        let pd = PyDict::new(py);
        pd.set_item("port", p.port)?;
        pd.set_item("state", p.state.map(|s| port_state_name(u32::from(s))))?;
        pd.set_item("phys_state", p.phys_state.map(phys_state_name))?;
        pd.set_item("lid", p.lid)?;
        pd.set_item("netdev", &p.netdev)?;
        pd.set_item("netdev_index", p.netdev_index)?;
        if let Some(n) = &p.netdev {
            if !netdevs.contains(n) {
                netdevs.push(n.clone());
            }
        }
        ports.append(pd)?;
    }
    d.set_item("ports", ports)?;
    d.set_item("netdevs", netdevs)?;
    Ok(d)
}

/// RDMA devices as the kernel lists them over NETLINK_RDMA (GET dump, then a
/// PORT_GET dump per device), seen from `ns` (default: the caller's namespace).
#[pyfunction]
#[pyo3(signature = (ns = None))]
fn rdma_links<'py>(
    py: Python<'py>,
    ns: Option<PyRef<'_, PyNetNs>>,
) -> PyResult<Bound<'py, PyList>> {
    let ns = clone_ns(ns)?;
    let links = py
        .detach(move || knd_rdma::links(ns.as_ref()))
        .map_err(to_py)?;
    let out = PyList::empty(py);
    for l in &links {
        out.append(link_dict(py, l)?)?;
    }
    Ok(out)
}

/// Moves an RDMA device to `ns` (exclusive mode only). `from_ns` is the
/// namespace the device is in now (default: the caller's).
#[pyfunction]
#[pyo3(signature = (device, ns, *, from_ns = None))]
fn rdma_move(
    py: Python<'_>,
    device: &str,
    ns: PyRef<'_, PyNetNs>,
    from_ns: Option<PyRef<'_, PyNetNs>>,
) -> PyResult<()> {
    knd_rdma::nl::validate_device_name(device).map_err(invalid_argument)?;
    let target = ns.clone_inner()?;
    let from = clone_ns(from_ns)?;
    let device = device.to_owned();
    py.detach(move || knd_rdma::move_device(&device, &target, from.as_ref()))
        .map_err(to_py)
}

/// Renames an RDMA device (in `ns`, default the caller's namespace).
#[pyfunction]
#[pyo3(signature = (device, new_name, *, ns = None))]
fn rdma_rename(
    py: Python<'_>,
    device: &str,
    new_name: &str,
    ns: Option<PyRef<'_, PyNetNs>>,
) -> PyResult<()> {
    knd_rdma::nl::validate_device_name(device).map_err(invalid_argument)?;
    knd_rdma::nl::validate_device_name(new_name).map_err(invalid_argument)?;
    let ns = clone_ns(ns)?;
    let (device, new_name) = (device.to_owned(), new_name.to_owned());
    py.detach(move || knd_rdma::rename(&device, &new_name, ns.as_ref()))
        .map_err(to_py)
}

/// Whether libibverbs could be loaded on this node (it is never linked).
#[pyfunction]
fn verbs_available(py: Python<'_>) -> bool {
    py.detach(knd_rdma::verbs::available)
}

/// Devices through libibverbs: name, node GUID, node type, firmware, ports
/// (state, link layer, GIDs). `[]` when libibverbs loads but sees no device.
#[pyfunction]
fn verbs_devices<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
    let devs = py.detach(knd_rdma::verbs::devices).map_err(to_py)?;
    let out = PyList::empty(py);
    for d in &devs {
        let dd = PyDict::new(py);
        dd.set_item("name", &d.name)?;
        dd.set_item("node_guid", &d.node_guid)?;
        dd.set_item("node_type", &d.node_type)?;
        dd.set_item("fw_version", &d.fw_version)?;
        let ports = PyList::empty(py);
        for p in &d.ports {
            let pd = PyDict::new(py);
            pd.set_item("port", p.port)?;
            pd.set_item("state", &p.state)?;
            pd.set_item("phys_state", &p.phys_state)?;
            pd.set_item("link_layer", &p.link_layer)?;
            pd.set_item("lid", p.lid)?;
            pd.set_item("active_mtu", p.active_mtu)?;
            pd.set_item("gid_table_len", p.gid_table_len)?;
            pd.set_item("gids", &p.gids)?;
            ports.append(pd)?;
        }
        dd.set_item("ports", ports)?;
        dd.set_item("error", &d.error)?;
        out.append(dd)?;
    }
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rdma_available, m)?)?;
    m.add_function(wrap_pyfunction!(rdma_get_netns_mode, m)?)?;
    m.add_function(wrap_pyfunction!(rdma_set_netns_mode, m)?)?;
    m.add_function(wrap_pyfunction!(rdma_links, m)?)?;
    m.add_function(wrap_pyfunction!(rdma_move, m)?)?;
    m.add_function(wrap_pyfunction!(rdma_rename, m)?)?;
    m.add_function(wrap_pyfunction!(verbs_available, m)?)?;
    m.add_function(wrap_pyfunction!(verbs_devices, m)?)?;
    Ok(())
}
