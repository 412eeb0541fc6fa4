//! `kndkit._native.discover` and its typed records (`NetDevice`, `RdmaDevice`,
//! `Discovery`): a thin conversion of [`knd_sysfs::Topology`].

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::{invalid_argument, knd_err, knd_error, namespace_error};
use crate::py_netns::PyNetNs;

/// An RDMA device from `class/infiniband` (with or without a netdev).
#[pyclass(name = "RdmaDevice", module = "kndkit._native", frozen, get_all)]
#[derive(Clone)]
pub struct PyRdmaDevice {
    name: String,
    node_guid: Option<String>,
    node_type: Option<String>,
    pci_address: Option<String>,
    numa_node: Option<i32>,
    pcie_root: Option<String>,
    netdevs: Vec<String>,
    char_devices: Vec<String>,
}

#[pymethods]
impl PyRdmaDevice {
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("name", &self.name)?;
        d.set_item("node_guid", &self.node_guid)?;
        d.set_item("node_type", &self.node_type)?;
        d.set_item("pci_address", &self.pci_address)?;
        d.set_item("numa_node", self.numa_node)?;
        d.set_item("pcie_root", &self.pcie_root)?;
        d.set_item("netdevs", &self.netdevs)?;
        d.set_item("char_devices", &self.char_devices)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "RdmaDevice(name={:?}, pci_address={:?}, netdevs={:?})",
            self.name, self.pci_address, self.netdevs
        )
    }
}

impl From<knd_sysfs::RdmaDevice> for PyRdmaDevice {
    fn from(r: knd_sysfs::RdmaDevice) -> Self {
        Self {
            name: r.name,
            node_guid: r.node_guid,
            node_type: r.node_type,
            pci_address: r.pci_address,
            numa_node: r.numa_node,
            pcie_root: r.pcie_root,
            netdevs: r.netdevs,
            char_devices: r.char_devices,
        }
    }
}

/// One netdev as discovery sees it. Absent facts are `None` (never -1).
#[pyclass(name = "NetDevice", module = "kndkit._native", frozen, get_all)]
#[derive(Clone)]
pub struct PyNetDevice {
    ifindex: i32,
    name: String,
    kind: String,
    mac: Option<String>,
    mtu: u32,
    operstate: String,
    addresses: Vec<String>,
    master: Option<String>,
    uppers: Vec<String>,
    lowers: Vec<String>,
    pci_address: Option<String>,
    vendor_id: Option<String>,
    device_id: Option<String>,
    subsystem_vendor_id: Option<String>,
    subsystem_device_id: Option<String>,
    driver: Option<String>,
    numa_node: Option<i32>,
    pcie_root: Option<String>,
    sriov_totalvfs: Option<u32>,
    sriov_numvfs: Option<u32>,
    physfn: Option<String>,
    virtfns: Vec<String>,
    rdma_device: Option<String>,
    char_devices: Vec<String>,
}

#[pymethods]
impl PyNetDevice {
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("ifindex", self.ifindex)?;
        d.set_item("name", &self.name)?;
        d.set_item("kind", &self.kind)?;
        d.set_item("mac", &self.mac)?;
        d.set_item("mtu", self.mtu)?;
        d.set_item("operstate", &self.operstate)?;
        d.set_item("addresses", &self.addresses)?;
        d.set_item("master", &self.master)?;
        d.set_item("uppers", &self.uppers)?;
        d.set_item("lowers", &self.lowers)?;
        d.set_item("pci_address", &self.pci_address)?;
        d.set_item("vendor_id", &self.vendor_id)?;
        d.set_item("device_id", &self.device_id)?;
        d.set_item("subsystem_vendor_id", &self.subsystem_vendor_id)?;
        d.set_item("subsystem_device_id", &self.subsystem_device_id)?;
        d.set_item("driver", &self.driver)?;
        d.set_item("numa_node", self.numa_node)?;
        d.set_item("pcie_root", &self.pcie_root)?;
        d.set_item("sriov_totalvfs", self.sriov_totalvfs)?;
        d.set_item("sriov_numvfs", self.sriov_numvfs)?;
        d.set_item("physfn", &self.physfn)?;
        d.set_item("virtfns", &self.virtfns)?;
        d.set_item("rdma_device", &self.rdma_device)?;
        d.set_item("char_devices", &self.char_devices)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "NetDevice(ifindex={}, name={:?}, kind={:?}, pci_address={:?})",
            self.ifindex, self.name, self.kind, self.pci_address
        )
    }
}

impl From<knd_sysfs::NetDevice> for PyNetDevice {
    fn from(n: knd_sysfs::NetDevice) -> Self {
        Self {
            ifindex: n.ifindex,
            name: n.name,
            kind: n.kind,
            mac: n.mac,
            mtu: n.mtu,
            operstate: n.operstate,
            addresses: n.addresses,
            master: n.master,
            uppers: n.uppers,
            lowers: n.lowers,
            pci_address: n.pci_address,
            vendor_id: n.vendor_id,
            device_id: n.device_id,
            subsystem_vendor_id: n.subsystem_vendor_id,
            subsystem_device_id: n.subsystem_device_id,
            driver: n.driver,
            numa_node: n.numa_node,
            pcie_root: n.pcie_root,
            sriov_totalvfs: n.sriov_totalvfs,
            sriov_numvfs: n.sriov_numvfs,
            physfn: n.physfn,
            virtfns: n.virtfns,
            rdma_device: n.rdma_device,
            char_devices: n.char_devices,
        }
    }
}

/// The result of one discovery walk.
#[pyclass(name = "Discovery", module = "kndkit._native", frozen)]
pub struct PyDiscovery {
    netdevs: Vec<Py<PyNetDevice>>,
    rdma_devices: Vec<Py<PyRdmaDevice>>,
    warnings: Vec<String>,
}

#[pymethods]
impl PyDiscovery {
    #[getter]
    fn netdevs(&self, py: Python<'_>) -> Vec<Py<PyNetDevice>> {
        self.netdevs.iter().map(|n| n.clone_ref(py)).collect()
    }

    #[getter]
    fn rdma_devices(&self, py: Python<'_>) -> Vec<Py<PyRdmaDevice>> {
        self.rdma_devices.iter().map(|n| n.clone_ref(py)).collect()
    }

    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let nets = self
            .netdevs
            .iter()
            .map(|n| n.get().to_dict(py))
            .collect::<PyResult<Vec<_>>>()?;
        let rdma = self
            .rdma_devices
            .iter()
            .map(|n| n.get().to_dict(py))
            .collect::<PyResult<Vec<_>>>()?;
        d.set_item("netdevs", nets)?;
        d.set_item("rdma_devices", rdma)?;
        d.set_item("warnings", &self.warnings)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Discovery(netdevs={}, rdma_devices={}, warnings={})",
            self.netdevs.len(),
            self.rdma_devices.len(),
            self.warnings.len()
        )
    }
}

enum Failure {
    Sysfs(knd_sysfs::SysfsError),
    Namespace(String),
    Netlink(Box<knd_netlink::NlError>),
}

/// Link facts of `ns` (None = the caller's namespace): one link dump and one
/// address dump on a single socket.
fn link_facts(ns: Option<&knd_netns::NetNs>) -> Result<Vec<knd_sysfs::LinkFacts>, Failure> {
    let mut conn = knd_netlink::Conn::open(ns).map_err(|e| Failure::Netlink(Box::new(e)))?;
    let links = conn.links().map_err(|e| Failure::Netlink(Box::new(e)))?;
    let addrs = conn
        .addresses()
        .map_err(|e| Failure::Netlink(Box::new(e)))?;
    let mut facts: Vec<knd_sysfs::LinkFacts> = links
        .into_iter()
        .map(|l| knd_sysfs::LinkFacts {
            ifindex: l.ifindex,
            name: l.name,
            kind: l.kind,
            mac: l.mac.as_deref().and_then(knd_sysfs::format_mac),
            mtu: l.mtu,
            operstate: knd_sysfs::operstate_name(l.operstate).to_owned(),
            flags: l.flags,
            addresses: Vec::new(),
            master: l.master.filter(|m| *m > 0),
            link: l.link.filter(|m| *m > 0),
            parent_dev_name: l.parent_dev_name,
            parent_dev_bus: l.parent_dev_bus,
        })
        .collect();
    let pos: std::collections::HashMap<i32, usize> = facts
        .iter()
        .enumerate()
        .map(|(i, f)| (f.ifindex, i))
        .collect();
    for a in addrs {
        if let Some(&i) = pos.get(&a.ifindex) {
            facts[i]
                .addresses
                .push(format!("{}/{}", a.address, a.prefixlen));
        }
    }
    Ok(facts)
}

fn netlink_error(e: knd_netlink::NlError) -> PyErr {
    match e.kind {
        knd_netlink::ErrorKind::InvalidArgument => invalid_argument(e.message),
        knd_netlink::ErrorKind::Namespace => namespace_error(e.message),
        knd_netlink::ErrorKind::NotAvailable => crate::errors::not_available(e.message),
        knd_netlink::ErrorKind::Netlink => Python::attach(|py| {
            let kwargs: Vec<(&str, Py<PyAny>)> = vec![
                (
                    "errno",
                    e.errno
                        .into_pyobject(py)
                        .map(|o| o.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                ),
                (
                    "errno_name",
                    PyString::new(py, &e.errno_name()).into_any().unbind(),
                ),
                (
                    "kernel_message",
                    PyString::new(py, &e.kernel_message).into_any().unbind(),
                ),
            ];
            knd_err("NetlinkError", &e.message, &kwargs)
        }),
    }
}

fn is_real_sysfs(p: &Path) -> bool {
    p == Path::new("/sys") || std::fs::canonicalize(p).is_ok_and(|c| c == Path::new("/sys"))
}

/// Walks `sysfs_root` (and, when `netlink` is true - the default for the real
/// `/sys` - a netlink dump of `ns`) into typed records.
#[pyfunction]
#[pyo3(
    signature = (sysfs_root = PathBuf::from("/sys"), *, dev_root = PathBuf::from("/dev"), ns = None, netlink = None),
    text_signature = "(sysfs_root='/sys', *, dev_root='/dev', ns=None, netlink=None)"
)]
fn discover(
    py: Python<'_>,
    sysfs_root: PathBuf,
    dev_root: PathBuf,
    ns: Option<PyRef<'_, PyNetNs>>,
    netlink: Option<bool>,
) -> PyResult<PyDiscovery> {
    let netlink = netlink.unwrap_or_else(|| is_real_sysfs(&sysfs_root));
    let ns = match ns {
        Some(h) if !netlink => {
            drop(h);
            return Err(invalid_argument(
                "discover: ns= needs netlink=True (a namespace is read through netlink)",
            ));
        }
        Some(h) => Some(h.clone_inner()?),
        None => None,
    };
    let result = py.detach(move || -> Result<knd_sysfs::Topology, Failure> {
        if let Some(h) = &ns {
            // A namespace whose path was deleted is gone for discovery too.
            h.ensure_alive()
                .map_err(|e| Failure::Namespace(e.message))?;
        }
        let facts = if netlink {
            Some(link_facts(ns.as_ref())?)
        } else {
            None
        };
        knd_sysfs::discover(&sysfs_root, &dev_root, facts.as_deref()).map_err(Failure::Sysfs)
    });
    let topo = match result {
        Ok(t) => t,
        Err(Failure::Sysfs(e)) => {
            return Err(match e.kind {
                knd_sysfs::SysfsErrorKind::RootMissing => invalid_argument(e.message),
                knd_sysfs::SysfsErrorKind::Io => knd_error(e.message),
            })
        }
        Err(Failure::Netlink(e)) => return Err(netlink_error(*e)),
        Err(Failure::Namespace(m)) => return Err(namespace_error(m)),
    };
    if !topo.warnings.is_empty() {
        log_warnings(py, &topo.warnings);
    }
    let netdevs = topo
        .netdevs
        .into_iter()
        .map(|n| Py::new(py, PyNetDevice::from(n)))
        .collect::<PyResult<Vec<_>>>()?;
    let rdma_devices = topo
        .rdma_devices
        .into_iter()
        .map(|r| Py::new(py, PyRdmaDevice::from(r)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyDiscovery {
        netdevs,
        rdma_devices,
        warnings: topo.warnings,
    })
}

/// Sends each discovery warning to the `kndkit.discover` logger.
fn log_warnings(py: Python<'_>, warnings: &[String]) {
    let Ok(logging) = py.import("logging") else {
        return;
    };
    let Ok(logger) = logging.call_method1("getLogger", ("kndkit.discover",)) else {
        return;
    };
    for w in warnings {
        let _ = logger.call_method1("warning", ("%s", w));
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNetDevice>()?;
    m.add_class::<PyRdmaDevice>()?;
    m.add_class::<PyDiscovery>()?;
    m.add_function(wrap_pyfunction!(discover, m)?)?;
    Ok(())
}
