//! Discovery of a node's network devices from sysfs (plus, on a real node, the
//! link facts of a netlink dump).
//!
//! [`discover`] walks a sysfs tree (the real `/sys` or a fake one built for
//! tests) and returns a [`Topology`]: every netdev with its PCI function,
//! driver, NUMA node, PCIe root complex, SR-IOV relations and RDMA device, and
//! every RDMA device (including those that have no netdev).
//!
//! Two modes:
//! * **with link facts** (`links = Some(..)`, a real node): name, ifindex, kind,
//!   MAC, MTU, state, addresses and master come from netlink; sysfs is read only
//!   for what netlink lacks (the PCI function and its attributes). A link without
//!   a parent device (veth, bridge, macvlan...) costs no sysfs access at all.
//! * **sysfs only** (`links = None`, a fake tree): everything is read from
//!   `class/net/<if>/*`.
//!
//! Robustness: a malformed or unreadable attribute of one device never aborts
//! the walk; it becomes an entry of [`Topology::warnings`] and the fact is left
//! absent. Only a missing sysfs root is an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// `IFF_LOOPBACK` from `<linux/if.h>`.
const IFF_LOOPBACK: u32 = 0x8;
/// `ARPHRD_LOOPBACK` from `<linux/if_arp.h>`.
const ARPHRD_LOOPBACK: u32 = 772;

/// Link kinds whose `IFLA_LINK` names the lower device they are stacked on (in
/// the same namespace). For a veth, `IFLA_LINK` is the peer instead.
const STACKED_KINDS: &[&str] = &[
    "macvlan", "macvtap", "vlan", "ipvlan", "ipvtap", "macsec", "vxlan",
];

/// What netlink knows about one link (converted by the caller from its dump).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub ifindex: i32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`"veth"`, `"bridge"`...); `None` for physical devices.
    pub kind: Option<String>,
    /// Hardware address, lower-case `aa:bb:..`; `None` when the link has none.
    pub mac: Option<String>,
    pub mtu: u32,
    /// `IF_OPER_*` as sysfs spells it (`"up"`, `"down"`, `"unknown"`...).
    pub operstate: String,
    /// `ifi_flags` (`IFF_*`).
    pub flags: u32,
    /// Addresses in CIDR notation (`"10.0.0.1/24"`, `"fd00::1/64"`).
    pub addresses: Vec<String>,
    /// `IFLA_MASTER`: ifindex of the bridge/bond this link is enslaved to.
    pub master: Option<i32>,
    /// `IFLA_LINK`: the lower device of a stacked link (or a veth's peer).
    pub link: Option<i32>,
    /// `IFLA_PARENT_DEV_NAME` (`"0000:3b:00.0"`, `"virtio2"`).
    pub parent_dev_name: Option<String>,
    /// `IFLA_PARENT_DEV_BUS_NAME` (`"pci"`, `"virtio"`).
    pub parent_dev_bus: Option<String>,
}

/// One netdev. Facts that are not known are `None` (a NUMA node is never -1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDevice {
    /// Interface index; 0 when sysfs gave no readable index (see warnings).
    pub ifindex: i32,
    pub name: String,
    /// Link kind: netlink's kind, else uevent DEVTYPE, else `physical` (it has a
    /// parent device), `loopback`, or `virtual`.
    pub kind: String,
    pub mac: Option<String>,
    pub mtu: u32,
    pub operstate: String,
    pub addresses: Vec<String>,
    pub master: Option<String>,
    pub uppers: Vec<String>,
    pub lowers: Vec<String>,
    pub pci_address: Option<String>,
    pub vendor_id: Option<String>,
    pub device_id: Option<String>,
    pub subsystem_vendor_id: Option<String>,
    pub subsystem_device_id: Option<String>,
    pub driver: Option<String>,
    pub numa_node: Option<i32>,
    /// The PCIe root complex (`pci0000:00`).
    pub pcie_root: Option<String>,
    pub sriov_totalvfs: Option<u32>,
    pub sriov_numvfs: Option<u32>,
    /// PCI address of the physical function, for an SR-IOV VF.
    pub physfn: Option<String>,
    /// PCI addresses of the VFs, for an SR-IOV PF (index order).
    pub virtfns: Vec<String>,
    pub rdma_device: Option<String>,
    /// Character devices of its RDMA device (`/dev/infiniband/uverbs0`...).
    pub char_devices: Vec<String>,
}

/// One RDMA device from `class/infiniband`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdmaDevice {
    pub name: String,
    pub node_guid: Option<String>,
    /// `CA`, `RNIC`, ... (the text after `N: ` in `node_type`).
    pub node_type: Option<String>,
    pub pci_address: Option<String>,
    pub numa_node: Option<i32>,
    pub pcie_root: Option<String>,
    /// Its netdevs (empty for an InfiniBand-only device).
    pub netdevs: Vec<String>,
    /// `/dev/infiniband/uverbsN`, `umadN`, `issmN`, `rdma_cm` (those present).
    pub char_devices: Vec<String>,
}

/// Everything discovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Sorted by ifindex.
    pub netdevs: Vec<NetDevice>,
    /// Sorted by name.
    pub rdma_devices: Vec<RdmaDevice>,
    /// One line per attribute that could not be read or parsed.
    pub warnings: Vec<String>,
}

/// Why discovery could not run at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsError {
    pub message: String,
    pub kind: SysfsErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysfsErrorKind {
    /// The sysfs root (or its `class/net`) does not exist or is not a directory.
    RootMissing,
    /// Any other I/O failure that prevents the walk.
    Io,
}

impl fmt::Display for SysfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SysfsError {}

// ------------------------------------------------------------------ small helpers

/// A sysfs attribute is at most one page; anything longer is cut there.
const MAX_ATTR: usize = 4096;

/// Reads a sysfs attribute, trimmed: open, one read, close. sysfs hands out a
/// whole attribute (at most a page) in one read, so no second read for EOF.
fn read_attr(path: &Path) -> io::Result<String> {
    // O_NONBLOCK: a FIFO planted in a fake tree must not hang the walk.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    read_file(&mut f)
}

/// One read of at most [`MAX_ATTR`] bytes, trimmed.
fn read_file(f: &mut std::fs::File) -> io::Result<String> {
    let mut buf = [0u8; MAX_ATTR];
    let n = loop {
        match f.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
            Err(e) => return Err(e),
        }
    };
    let s = String::from_utf8_lossy(&buf[..n]);
    Ok(s.trim().to_owned())
}

/// An open directory (`O_PATH`) whose entries are read with `openat`/
/// `readlinkat`: the kernel walks the (deep) sysfs path once per device instead
/// of once per attribute.
struct Dir {
    fd: OwnedFd,
}

impl Dir {
    fn open(path: &Path) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nobody else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn cname(name: &str) -> io::Result<CString> {
        CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Like [`read_attr`], for the entry `name` of this directory.
    fn read(&self, name: &str) -> io::Result<String> {
        let c = Self::cname(name)?;
        // SAFETY: dirfd is open, c is NUL-terminated; the result is checked.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor, closed when `f` drops.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        read_file(&mut f)
    }

    /// An attribute that may be absent (see [`read_opt`]).
    fn opt(&self, name: &str, who: &str, warnings: &mut Vec<String>) -> Option<String> {
        match self.read(name) {
            Ok(s) => Some(s),
            Err(e) if is_absent(&e) => None,
            Err(e) => {
                warnings.push(format!("{who}: cannot read {name}: {e}"));
                None
            }
        }
    }

    /// The target of symlink `name`; `Ok(None)` when it does not exist.
    fn read_link(&self, name: &str) -> io::Result<Option<PathBuf>> {
        let c = Self::cname(name)?;
        let mut buf = [0u8; 4096];
        // SAFETY: dirfd is open, buf is writable for its length.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if is_absent(&e) { Ok(None) } else { Err(e) };
        }
        let n = usize::try_from(n).unwrap_or(0);
        Ok(Some(PathBuf::from(OsStr::from_bytes(&buf[..n]))))
    }

    /// The last component of symlink `name`'s target.
    fn link_basename(&self, name: &str) -> io::Result<Option<String>> {
        Ok(self
            .read_link(name)?
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned())))
    }
}

/// Reads an attribute that may legitimately be absent: `Ok(None)` when it does
/// not exist, a warning and `None` when it exists but cannot be read.
fn read_opt(path: &Path, who: &str, warnings: &mut Vec<String>) -> Option<String> {
    match read_attr(path) {
        Ok(s) => Some(s),
        Err(e) if is_absent(&e) => None,
        Err(e) => {
            warnings.push(format!("{who}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Resolves a relative symlink target against the directory holding the link,
/// lexically (sysfs directories under `devices/` are real directories, so `..`
/// can be applied to the path text).
fn join_link(dir: &Path, target: &Path) -> PathBuf {
    if target.is_absolute() {
        return target.to_path_buf();
    }
    let mut out = dir.to_path_buf();
    for c in target.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Follows the symlink at `link` (one readlink); `Ok(None)` when it is absent,
/// the path itself when it is not a symlink (a plain directory in a fake tree).
fn follow(link: &Path) -> io::Result<Option<PathBuf>> {
    match std::fs::read_link(link) {
        Ok(t) => {
            let dir = link.parent().unwrap_or(Path::new("/"));
            Ok(Some(join_link(dir, &t)))
        }
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(link.to_path_buf())),
        Err(e) => Err(e),
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `DDDD:BB:DD.F` (the domain may have 4 to 8 hex digits).
pub fn is_pci_address(s: &str) -> bool {
    let Some((rest, func)) = s.rsplit_once('.') else {
        return false;
    };
    if func.len() != 1 || !matches!(func.as_bytes()[0], b'0'..=b'7') {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    parts.len() == 3
        && (4..=8).contains(&parts[0].len())
        && parts[1].len() == 2
        && parts[2].len() == 2
        && parts.iter().all(|p| is_hex(p))
}

/// `pciDDDD:BB`: a PCI host bridge (root complex) directory under `devices/`.
pub fn is_pcie_root(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("pci") else {
        return false;
    };
    let Some((dom, bus)) = rest.split_once(':') else {
        return false;
    };
    (4..=8).contains(&dom.len()) && bus.len() == 2 && is_hex(dom) && is_hex(bus)
}

/// The root-complex component of a device path, if any.
pub fn pcie_root_of(path: &Path) -> Option<String> {
    path.components().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        is_pcie_root(s).then(|| s.to_owned())
    })
}

/// The nearest PCI function at or above `dev` (a virtio device sits below
/// its PCI function: `.../0000:00:03.0/virtio2`).
///
/// Only virtio devices are looked through: a virtio NIC *is* its PCI function,
/// whereas a USB NIC's nearest PCI function is its host controller, whose IDs
/// are not the NIC's.
fn pci_dir_of(dev: &Path, stop: &Path) -> Option<PathBuf> {
    let mut cur = Some(dev);
    while let Some(p) = cur {
        if p == stop || !p.starts_with(stop) {
            return None;
        }
        let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
        if is_pci_address(name) {
            return Some(p.to_path_buf());
        }
        let virtio = name
            .strip_prefix("virtio")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !virtio {
            return None;
        }
        cur = p.parent();
    }
    None
}

/// A lower-case, `0x`-prefixed hex ID (`0x15b3`), or a warning.
fn hex_id(v: Option<String>, who: &str, what: &str, warnings: &mut Vec<String>) -> Option<String> {
    let v = v?;
    let l = v.to_ascii_lowercase();
    let digits = l.strip_prefix("0x").unwrap_or(&l);
    if is_hex(digits) && digits.len() <= 8 {
        Some(format!("0x{digits}"))
    } else {
        warnings.push(format!("{who}: malformed {what} {v:?}"));
        None
    }
}

fn parse_num<T: std::str::FromStr>(
    v: Option<String>,
    who: &str,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<T> {
    let v = v?;
    match v.parse::<T>() {
        Ok(n) => Some(n),
        Err(_) => {
            warnings.push(format!("{who}: malformed {what} {v:?}"));
            None
        }
    }
}

/// NUMA node: -1 (no NUMA information) and absence both give `None`.
fn parse_numa(v: Option<String>, who: &str, warnings: &mut Vec<String>) -> Option<i32> {
    let n: i32 = parse_num(v, who, "numa_node", warnings)?;
    if n < 0 {
        None
    } else {
        Some(n)
    }
}

/// Formats a hardware address as lower-case colon-separated hex.
pub fn format_mac(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    Some(s)
}

/// `IF_OPER_*` as sysfs spells it.
pub fn operstate_name(state: u8) -> &'static str {
    match state {
        1 => "notpresent",
        2 => "down",
        3 => "lowerlayerdown",
        4 => "testing",
        5 => "dormant",
        6 => "up",
        _ => "unknown",
    }
}

fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    Ok(names)
}

/// Orders `mlx5_2` before `mlx5_10` and `virtfn9` before `virtfn10`.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(s: &str) -> (&str, Option<u64>) {
        let cut = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        (&s[..cut], s[cut..].parse().ok())
    }
    let (pa, na) = split(a);
    let (pb, nb) = split(b);
    pa.cmp(pb).then(na.cmp(&nb)).then(a.cmp(b))
}

// ------------------------------------------------------------------ PCI functions

#[derive(Debug, Clone, Default)]
struct PciInfo {
    address: String,
    vendor: Option<String>,
    device: Option<String>,
    subsystem_vendor: Option<String>,
    subsystem_device: Option<String>,
    driver: Option<String>,
    numa_node: Option<i32>,
    pcie_root: Option<String>,
    sriov_totalvfs: Option<u32>,
    sriov_numvfs: Option<u32>,
    physfn: Option<String>,
    virtfns: Vec<String>,
}

struct Walker {
    root: PathBuf,
    devices: PathBuf,
    dev_root: PathBuf,
    pci: HashMap<PathBuf, Option<PciInfo>>,
    warnings: Vec<String>,
}

impl Walker {
    /// Reads (once) the PCI function whose directory is `dir`.
    fn pci(&mut self, dir: &Path) -> Option<PciInfo> {
        if let Some(p) = self.pci.get(dir) {
            return p.clone();
        }
        let address = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let who = format!("pci {address}");
        let d = match Dir::open(dir) {
            Ok(d) => d,
            Err(e) => {
                let msg = if is_absent(&e) {
                    format!(
                        "{who}: {} does not exist (dangling device link)",
                        dir.display()
                    )
                } else {
                    format!("{who}: cannot open {}: {e}", dir.display())
                };
                self.warnings.push(msg);
                self.pci.insert(dir.to_path_buf(), None);
                return None;
            }
        };
        let w = &mut self.warnings;
        let attr = |name: &str, w: &mut Vec<String>| d.opt(name, &who, w);
        let vendor = attr("vendor", w);
        let device = attr("device", w);
        let sub_vendor = attr("subsystem_vendor", w);
        let sub_device = attr("subsystem_device", w);
        let numa = attr("numa_node", w);
        let total = attr("sriov_totalvfs", w);
        let info_numvfs = attr("sriov_numvfs", w);
        let mut info = PciInfo {
            vendor: hex_id(vendor, &who, "vendor", w),
            device: hex_id(device, &who, "device", w),
            subsystem_vendor: hex_id(sub_vendor, &who, "subsystem_vendor", w),
            subsystem_device: hex_id(sub_device, &who, "subsystem_device", w),
            numa_node: parse_numa(numa, &who, w),
            pcie_root: dir.strip_prefix(&self.devices).ok().and_then(pcie_root_of),
            sriov_totalvfs: parse_num(total, &who, "sriov_totalvfs", w),
            sriov_numvfs: parse_num(info_numvfs, &who, "sriov_numvfs", w),
            ..PciInfo::default()
        };
        match d.link_basename("driver") {
            Ok(drv) => info.driver = drv,
            Err(e) => w.push(format!("{who}: cannot read driver link: {e}")),
        }
        match d.link_basename("physfn") {
            Ok(p) => info.physfn = p,
            Err(e) => w.push(format!("{who}: cannot read physfn link: {e}")),
        }
        if let Some(total) = info.sriov_totalvfs {
            let mut n = info.sriov_numvfs.unwrap_or(0);
            if n > total {
                w.push(format!(
                    "{who}: sriov_numvfs {n} exceeds sriov_totalvfs {total}"
                ));
                info.sriov_numvfs = None;
                n = 0;
            }
            for i in 0..n {
                match d.link_basename(&format!("virtfn{i}")) {
                    Ok(Some(vf)) => info.virtfns.push(vf),
                    Ok(None) => {
                        w.push(format!(
                            "{who}: sriov_numvfs is {n} but virtfn{i} is missing"
                        ));
                        break;
                    }
                    Err(e) => {
                        w.push(format!("{who}: cannot read virtfn{i}: {e}"));
                        break;
                    }
                }
            }
        }
        info.address = address;
        self.pci.insert(dir.to_path_buf(), Some(info.clone()));
        Some(info)
    }

    /// The PCI function directory of a device directory (walking up past
    /// non-PCI parents such as `virtio2`).
    fn pci_dir(&self, dev: &Path) -> Option<PathBuf> {
        pci_dir_of(dev, &self.devices)
    }

    // -------------------------------------------------------------- RDMA

    fn rdma_devices(&mut self) -> Vec<RdmaDevice> {
        let class = self.root.join("class/infiniband");
        let names = match list_dir(&class) {
            Ok(n) => n,
            Err(e) if is_absent(&e) => return Vec::new(),
            Err(e) => {
                self.warnings
                    .push(format!("cannot list {}: {e}", class.display()));
                return Vec::new();
            }
        };
        // The nodes of <dev_root>/infiniband, listed once.
        let present: HashSet<String> = list_dir(&self.dev_root.join("infiniband"))
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        let rdma_cm = present.contains("rdma_cm");
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let who = format!("rdma {name}");
            let link = class.join(&name);
            let dir = match follow(&link) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    self.warnings
                        .push(format!("{who}: cannot resolve {}: {e}", link.display()));
                    continue;
                }
            };
            let mut dev = RdmaDevice {
                name: name.clone(),
                ..RdmaDevice::default()
            };
            dev.node_guid = read_opt(&dir.join("node_guid"), &who, &mut self.warnings);
            dev.node_type = read_opt(&dir.join("node_type"), &who, &mut self.warnings)
                .map(|t| t.split_once(": ").map(|(_, b)| b.to_owned()).unwrap_or(t));
            let pci_dir = match follow(&dir.join("device")) {
                Ok(Some(d)) => self.pci_dir(&d),
                Ok(None) => None,
                Err(e) => {
                    self.warnings
                        .push(format!("{who}: cannot read device link: {e}"));
                    None
                }
            };
            if let Some(info) = pci_dir.as_deref().and_then(|pd| self.pci(pd)) {
                dev.pci_address = Some(info.address);
                dev.numa_node = info.numa_node;
                dev.pcie_root = info.pcie_root;
            }
            // Netdevs: the GID table's netdev per port, else the PCI function's net/.
            if let Ok(ports) = list_dir(&dir.join("ports")) {
                for p in ports {
                    let f = dir.join("ports").join(&p).join("gid_attrs/ndevs/0");
                    if let Ok(nd) = read_attr(&f) {
                        if !nd.is_empty() && !dev.netdevs.contains(&nd) {
                            dev.netdevs.push(nd);
                        }
                    }
                }
            }
            if dev.netdevs.is_empty() {
                if let Some(pd) = &pci_dir {
                    if let Ok(nets) = list_dir(&pd.join("net")) {
                        dev.netdevs = nets;
                    }
                }
            }
            // Character devices registered by this device on its PCI function.
            if let Some(pd) = &pci_dir {
                let mut verbs = Vec::new();
                let mut umad = Vec::new();
                let mut issm = Vec::new();
                for (sub, prefixes) in [
                    ("infiniband_verbs", &["uverbs"][..]),
                    ("infiniband_mad", &["umad", "issm"][..]),
                ] {
                    let Ok(entries) = list_dir(&pd.join(sub)) else {
                        continue;
                    };
                    for e in entries {
                        let Some(pfx) = prefixes.iter().find(|p| e.starts_with(**p)) else {
                            continue;
                        };
                        match read_attr(&pd.join(sub).join(&e).join("ibdev")) {
                            Ok(owner) if owner != name => continue,
                            _ => {}
                        }
                        match *pfx {
                            "uverbs" => verbs.push(e),
                            "umad" => umad.push(e),
                            _ => issm.push(e),
                        }
                    }
                }
                for e in verbs.into_iter().chain(umad).chain(issm) {
                    if present.contains(&e) {
                        dev.char_devices.push(format!("/dev/infiniband/{e}"));
                    } else {
                        self.warnings.push(format!(
                            "{who}: sysfs lists {e} but {} does not exist",
                            self.dev_root.join("infiniband").join(&e).display()
                        ));
                    }
                }
            }
            if rdma_cm {
                dev.char_devices.push("/dev/infiniband/rdma_cm".into());
            }
            out.push(dev);
        }
        out
    }

    // -------------------------------------------------------------- netdevs

    fn apply_pci(&mut self, nd: &mut NetDevice, dev: &Path) {
        let Some(info) = self.pci_dir(dev).and_then(|pd| self.pci(&pd)) else {
            // Not a PCI function (USB, platform...): only its place in the tree.
            nd.pcie_root = dev.strip_prefix(&self.devices).ok().and_then(pcie_root_of);
            return;
        };
        nd.pci_address = Some(info.address);
        nd.vendor_id = info.vendor;
        nd.device_id = info.device;
        nd.subsystem_vendor_id = info.subsystem_vendor;
        nd.subsystem_device_id = info.subsystem_device;
        nd.driver = info.driver;
        nd.numa_node = info.numa_node;
        nd.pcie_root = info.pcie_root;
        nd.sriov_totalvfs = info.sriov_totalvfs;
        nd.sriov_numvfs = info.sriov_numvfs;
        nd.physfn = info.physfn;
        nd.virtfns = info.virtfns;
    }

    /// One netdev, everything read from `class/net/<name>` (fake trees).
    fn netdev_from_sysfs(&mut self, name: &str) -> Option<NetDevice> {
        let who = format!("netdev {name}");
        let link = self.root.join("class/net").join(name);
        let dir = match follow(&link) {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                self.warnings
                    .push(format!("{who}: cannot resolve {}: {e}", link.display()));
                return None;
            }
        };
        let d = match Dir::open(&dir) {
            Ok(d) => d,
            // `bonding_masters` and other plain files of class/net are no netdevs.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return None,
            // Removed while we walked: it simply is not there any more.
            Err(e) if is_absent(&e) => return None,
            Err(e) => {
                let msg = format!("{who}: cannot open {}: {e}", dir.display());
                self.warnings.push(msg);
                return None;
            }
        };
        let w = &mut self.warnings;
        let attr = |a: &str, w: &mut Vec<String>| d.opt(a, &who, w);
        let uevent = attr("uevent", w).unwrap_or_default();
        let uev = |key: &str| {
            uevent.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix('='))
                    .map(str::to_owned)
            })
        };
        let mut nd = NetDevice {
            name: uev("INTERFACE").unwrap_or_else(|| name.to_owned()),
            ..NetDevice::default()
        };
        if nd.name != name {
            w.push(format!("{who}: uevent names it {:?}", nd.name));
            nd.name = name.to_owned();
        }
        let ifindex = attr("ifindex", w);
        nd.ifindex = parse_num(ifindex, &who, "ifindex", w)
            .or_else(|| uev("IFINDEX").and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| {
                w.push(format!("{who}: no usable ifindex"));
                0
            });
        nd.mac = attr("address", w).filter(|s| !s.is_empty());
        nd.mtu = parse_num(attr("mtu", w), &who, "mtu", w).unwrap_or(0);
        nd.operstate = attr("operstate", w).unwrap_or_else(|| "unknown".into());
        let arptype: Option<u32> = parse_num(attr("type", w), &who, "type", w);
        match d.link_basename("master") {
            Ok(m) => nd.master = m,
            Err(e) => w.push(format!("{who}: cannot read master link: {e}")),
        }
        match list_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    if let Some(u) = e.strip_prefix("upper_") {
                        nd.uppers.push(u.to_owned());
                    } else if let Some(l) = e.strip_prefix("lower_") {
                        nd.lowers.push(l.to_owned());
                    }
                }
            }
            Err(e) => w.push(format!("{who}: cannot list {}: {e}", dir.display())),
        }
        let device = match d.read_link("device") {
            Ok(t) => t.map(|t| join_link(&dir, &t)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Some(dir.join("device")),
            Err(e) => {
                w.push(format!("{who}: cannot read device link: {e}"));
                None
            }
        };
        nd.kind = match uev("DEVTYPE") {
            Some(t) if !t.is_empty() => t,
            _ if device.is_some() => "physical".into(),
            _ if arptype == Some(ARPHRD_LOOPBACK) => "loopback".into(),
            _ => "virtual".into(),
        };
        if let Some(d) = device {
            self.apply_pci(&mut nd, &d);
        }
        Some(nd)
    }

    /// One netdev from its netlink facts; sysfs only for the parent device.
    fn netdev_from_facts(
        &mut self,
        f: &LinkFacts,
        by_index: &HashMap<i32, &LinkFacts>,
    ) -> NetDevice {
        let mut nd = NetDevice {
            ifindex: f.ifindex,
            name: f.name.clone(),
            mac: f.mac.clone(),
            mtu: f.mtu,
            operstate: f.operstate.clone(),
            addresses: f.addresses.clone(),
            master: f
                .master
                .and_then(|m| by_index.get(&m))
                .map(|m| m.name.clone()),
            ..NetDevice::default()
        };
        if let Some(m) = &nd.master {
            nd.uppers.push(m.clone());
        }
        let stacked = f
            .kind
            .as_deref()
            .is_some_and(|k| STACKED_KINDS.contains(&k));
        if stacked {
            if let Some(l) = f
                .link
                .filter(|l| *l != f.ifindex)
                .and_then(|l| by_index.get(&l))
            {
                nd.lowers.push(l.name.clone());
            }
        }
        // Parent device: from netlink when the kernel reports it (>= 5.16).
        let mut device: Option<PathBuf> = None;
        let who = format!("netdev {}", f.name);
        if let (Some(name), Some(bus)) = (&f.parent_dev_name, &f.parent_dev_bus) {
            match follow(&self.root.join("bus").join(bus).join("devices").join(name)) {
                Ok(d) => device = d,
                Err(e) => self
                    .warnings
                    .push(format!("{who}: cannot resolve parent {bus}/{name}: {e}")),
            }
        } else if f.kind.is_none() && f.flags & IFF_LOOPBACK == 0 {
            // Older kernels: class/net/<if>/device, trusted only if it is the same link.
            let net = self.root.join("class/net").join(&f.name);
            let same = read_attr(&net.join("ifindex"))
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                == Some(f.ifindex);
            if same {
                if let Ok(Some(dir)) = follow(&net) {
                    device = follow(&dir.join("device")).ok().flatten();
                }
            }
        }
        nd.kind = match &f.kind {
            Some(k) => k.clone(),
            None if f.flags & IFF_LOOPBACK != 0 => "loopback".into(),
            None if device.is_some() || f.parent_dev_name.is_some() => "physical".into(),
            None => "virtual".into(),
        };
        if let Some(d) = device {
            self.apply_pci(&mut nd, &d);
        }
        nd
    }
}

/// Walks `sysfs_root` (and `dev_root` for RDMA character devices) into a
/// [`Topology`]. With `links`, netdevs are those links (from a netlink dump);
/// without, they are the entries of `class/net`.
pub fn discover(
    sysfs_root: &Path,
    dev_root: &Path,
    links: Option<&[LinkFacts]>,
) -> Result<Topology, SysfsError> {
    let root = match std::fs::canonicalize(sysfs_root) {
        Ok(r) if r.is_dir() => r,
        Ok(_) => {
            return Err(SysfsError {
                message: format!("sysfs root {} is not a directory", sysfs_root.display()),
                kind: SysfsErrorKind::RootMissing,
            })
        }
        Err(e) => {
            return Err(SysfsError {
                message: format!(
                    "sysfs root {} does not exist or cannot be opened: {e}",
                    sysfs_root.display()
                ),
                kind: SysfsErrorKind::RootMissing,
            })
        }
    };
    let mut w = Walker {
        devices: root.join("devices"),
        root,
        dev_root: dev_root.to_path_buf(),
        pci: HashMap::new(),
        warnings: Vec::new(),
    };
    let rdma = w.rdma_devices();

    let mut netdevs = match links {
        Some(links) => {
            let by_index: HashMap<i32, &LinkFacts> = links.iter().map(|l| (l.ifindex, l)).collect();
            let mut out: Vec<NetDevice> = links
                .iter()
                .map(|f| w.netdev_from_facts(f, &by_index))
                .collect();
            // Uppers of a lower device: whoever names it as master or stacked link.
            let mut uppers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut lowers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for nd in &out {
                if let Some(m) = &nd.master {
                    lowers.entry(m.clone()).or_default().push(nd.name.clone());
                }
                for l in &nd.lowers {
                    uppers.entry(l.clone()).or_default().push(nd.name.clone());
                }
            }
            for nd in &mut out {
                if let Some(u) = uppers.remove(&nd.name) {
                    nd.uppers.extend(u);
                }
                if let Some(l) = lowers.remove(&nd.name) {
                    nd.lowers.extend(l);
                }
            }
            out
        }
        None => {
            let class = w.root.join("class/net");
            let names = list_dir(&class).map_err(|e| SysfsError {
                message: format!("{} cannot be listed: {e}", class.display()),
                kind: if is_absent(&e) {
                    SysfsErrorKind::RootMissing
                } else {
                    SysfsErrorKind::Io
                },
            })?;
            names
                .iter()
                .filter_map(|n| w.netdev_from_sysfs(n))
                .collect()
        }
    };
    netdevs.sort_by_key(|n| n.ifindex);

    // RDMA <-> netdev, by name. `RdmaDevice::netdevs` keeps what sysfs says (the
    // netdev may live in another namespace); a netdev is given the RDMA device
    // unless both know their PCI function and they differ (same name, other device).
    let pos: HashMap<String, usize> = netdevs
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    for r in &rdma {
        for n in &r.netdevs {
            let Some(&i) = pos.get(n) else { continue };
            let nd = &mut netdevs[i];
            let agree = match (&nd.pci_address, &r.pci_address) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if agree && nd.rdma_device.is_none() {
                nd.rdma_device = Some(r.name.clone());
                nd.char_devices = r.char_devices.clone();
            }
        }
    }
    Ok(Topology {
        netdevs,
        rdma_devices: rdma,
        warnings: w.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn pci_address_patterns() {
        assert!(is_pci_address("0000:3b:00.0"));
        assert!(is_pci_address("10000:01:00.7"));
        assert!(!is_pci_address("0000:3b:00.8"));
        assert!(!is_pci_address("virtio2"));
        assert!(!is_pci_address("pci0000:00"));
        assert!(is_pcie_root("pci0000:00"));
        assert!(!is_pcie_root("pci0000:0"));
        assert_eq!(
            pcie_root_of(Path::new(
                "/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0"
            ))
            .as_deref(),
            Some("pci0000:3a")
        );
        assert_eq!(pcie_root_of(Path::new("/sys/devices/virtual/net/lo")), None);
    }

    #[test]
    fn only_virtio_is_looked_through() {
        let stop = Path::new("/r/devices");
        let virtio = Path::new("/r/devices/pci0000:00/0000:00:03.0/virtio2");
        assert_eq!(
            pci_dir_of(virtio, stop),
            Some(PathBuf::from("/r/devices/pci0000:00/0000:00:03.0"))
        );
        let usb = Path::new("/r/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0");
        assert_eq!(pci_dir_of(usb, stop), None);
        assert_eq!(pci_dir_of(Path::new("/r/devices/platform/x"), stop), None);
    }

    #[test]
    fn lexical_join() {
        assert_eq!(
            join_link(
                Path::new("/r/class/net"),
                Path::new("../../devices/virtual/net/lo")
            ),
            PathBuf::from("/r/devices/virtual/net/lo")
        );
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["mlx5_10", "mlx5_2", "mlx5_0", "eth1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["eth1", "mlx5_0", "mlx5_2", "mlx5_10"]);
    }

    #[test]
    fn mac_and_state() {
        assert_eq!(
            format_mac(&[0x02, 0xfc, 0, 0, 0, 1]).as_deref(),
            Some("02:fc:00:00:00:01")
        );
        assert_eq!(format_mac(&[]), None);
        assert_eq!(operstate_name(6), "up");
        assert_eq!(operstate_name(0), "unknown");
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    /// A tiny tree: one virtio NIC below a PCI function, one loopback, one
    /// NIC with a malformed MTU and NUMA node.
    fn tiny(root: &Path) {
        let pci = root.join("devices/pci0000:00/0000:00:03.0");
        write(&pci.join("vendor"), "0x1AF4\n");
        write(&pci.join("device"), "0x1041\n");
        write(&pci.join("numa_node"), "-1\n");
        std::fs::create_dir_all(root.join("bus/pci/drivers/virtio-pci")).unwrap();
        symlink("../../../bus/pci/drivers/virtio-pci", pci.join("driver")).unwrap();
        let net = pci.join("virtio2/net/eth0");
        write(&net.join("ifindex"), "4\n");
        write(&net.join("address"), "02:fc:00:00:00:01\n");
        write(&net.join("mtu"), "1400\n");
        write(&net.join("operstate"), "up\n");
        write(&net.join("type"), "1\n");
        write(&net.join("uevent"), "INTERFACE=eth0\nIFINDEX=4\n");
        symlink("../../../virtio2", net.join("device")).unwrap();
        let lo = root.join("devices/virtual/net/lo");
        write(&lo.join("ifindex"), "1\n");
        write(&lo.join("mtu"), "65536\n");
        write(&lo.join("type"), "772\n");
        write(&lo.join("operstate"), "unknown\n");
        let bad = root.join("devices/pci0000:01/0000:01:00.0");
        write(&bad.join("numa_node"), "banana\n");
        write(&bad.join("net/eth1/ifindex"), "5\n");
        write(&bad.join("net/eth1/mtu"), "x\n");
        symlink("../../../0000:01:00.0", bad.join("net/eth1/device")).unwrap();
        std::fs::create_dir_all(root.join("class/net")).unwrap();
        symlink(
            "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
            root.join("class/net/eth0"),
        )
        .unwrap();
        symlink("../../devices/virtual/net/lo", root.join("class/net/lo")).unwrap();
        write(&root.join("class/net/bonding_masters"), "\n");
        symlink(
            "../../devices/pci0000:01/0000:01:00.0/net/eth1",
            root.join("class/net/eth1"),
        )
        .unwrap();
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("knd-sysfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn tiny_tree() {
        let d = tmpdir("tiny");
        tiny(&d);
        let t = discover(&d, &d.join("dev"), None).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        let names: Vec<_> = t.netdevs.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "eth1"]);
        let eth0 = &t.netdevs[1];
        assert_eq!(eth0.kind, "physical");
        assert_eq!(eth0.pci_address.as_deref(), Some("0000:00:03.0"));
        assert_eq!(eth0.vendor_id.as_deref(), Some("0x1af4"));
        assert_eq!(eth0.driver.as_deref(), Some("virtio-pci"));
        assert_eq!(eth0.numa_node, None);
        assert_eq!(eth0.pcie_root.as_deref(), Some("pci0000:00"));
        assert_eq!(eth0.mtu, 1400);
        assert_eq!(t.netdevs[0].kind, "loopback");
        let eth1 = &t.netdevs[2];
        assert_eq!(eth1.mtu, 0);
        assert_eq!(eth1.numa_node, None);
        assert_eq!(eth1.pcie_root.as_deref(), Some("pci0000:01"));
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("eth1") && w.contains("mtu")),
            "{:?}",
            t.warnings
        );
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("numa_node") && w.contains("banana")),
            "{:?}",
            t.warnings
        );
    }

    #[test]
    fn facts_path_reads_only_parents() {
        let d = tmpdir("facts");
        tiny(&d);
        std::fs::create_dir_all(d.join("bus/pci/devices")).unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:03.0",
            d.join("bus/pci/devices/0000:00:03.0"),
        )
        .unwrap();
        let links = vec![
            LinkFacts {
                ifindex: 1,
                name: "lo".into(),
                flags: IFF_LOOPBACK,
                operstate: "unknown".into(),
                ..Default::default()
            },
            LinkFacts {
                ifindex: 4,
                name: "eth0".into(),
                mtu: 1400,
                operstate: "up".into(),
                parent_dev_name: Some("0000:00:03.0".into()),
                parent_dev_bus: Some("pci".into()),
                addresses: vec!["10.0.0.1/24".into()],
                ..Default::default()
            },
            LinkFacts {
                ifindex: 7,
                name: "br0".into(),
                kind: Some("bridge".into()),
                ..Default::default()
            },
            LinkFacts {
                ifindex: 8,
                name: "v0".into(),
                kind: Some("veth".into()),
                master: Some(7),
                link: Some(9),
                ..Default::default()
            },
            LinkFacts {
                ifindex: 10,
                name: "mv0".into(),
                kind: Some("macvlan".into()),
                link: Some(4),
                ..Default::default()
            },
        ];
        let t = discover(&d, &d.join("dev"), Some(&links)).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        let by: HashMap<_, _> = t.netdevs.iter().map(|n| (n.name.as_str(), n)).collect();
        assert_eq!(by["lo"].kind, "loopback");
        assert_eq!(by["eth0"].kind, "physical");
        assert_eq!(by["eth0"].pci_address.as_deref(), Some("0000:00:03.0"));
        assert_eq!(by["eth0"].addresses, ["10.0.0.1/24"]);
        assert_eq!(by["eth0"].uppers, ["mv0"]);
        assert_eq!(by["mv0"].lowers, ["eth0"]);
        assert_eq!(by["v0"].master.as_deref(), Some("br0"));
        assert_eq!(by["v0"].uppers, ["br0"]);
        assert!(by["v0"].lowers.is_empty());
        assert_eq!(by["br0"].lowers, ["v0"]);
        assert_eq!(by["br0"].pci_address, None);
    }

    #[test]
    fn rdma_mapping_with_link_facts() {
        let d = tmpdir("rdma");
        let pf = d.join("devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0");
        let other = d.join("devices/pci0000:3a/0000:3a:01.0/0000:3c:00.0");
        let ib = d.join("devices/pci0000:3a/0000:3a:02.0/0000:3d:00.0");
        for (p, dev) in [(&pf, "mlx5_0"), (&other, "mlx5_1"), (&ib, "mlx5_2")] {
            write(&p.join("vendor"), "0x15b3\n");
            write(&p.join("numa_node"), "1\n");
            let r = p.join("infiniband").join(dev);
            write(&r.join("node_type"), "1: CA\n");
            symlink(
                "../../../".to_string() + p.file_name().unwrap().to_str().unwrap(),
                r.join("device"),
            )
            .unwrap();
            std::fs::create_dir_all(d.join("class/infiniband")).unwrap();
            let rel = Path::new("../..").join(r.strip_prefix(&d).unwrap());
            symlink(rel, d.join("class/infiniband").join(dev)).unwrap();
            let idx = &dev[5..];
            write(
                &p.join(format!("infiniband_verbs/uverbs{idx}/ibdev")),
                &format!("{dev}\n"),
            );
            write(&d.join(format!("dev/infiniband/uverbs{idx}")), "");
        }
        write(
            &pf.join("infiniband/mlx5_0/ports/1/gid_attrs/ndevs/0"),
            "eth0\n",
        );
        // mlx5_1 claims "eth9", but this namespace's eth9 is another PCI function
        write(
            &other.join("infiniband/mlx5_1/ports/1/gid_attrs/ndevs/0"),
            "eth9\n",
        );
        write(&d.join("dev/infiniband/rdma_cm"), "");
        std::fs::create_dir_all(d.join("bus/pci/devices")).unwrap();
        for p in [&pf, &other, &ib] {
            let a = p.file_name().unwrap();
            let rel = Path::new("../../..").join(p.strip_prefix(&d).unwrap());
            symlink(rel, d.join("bus/pci/devices").join(a)).unwrap();
        }
        let parent = |name: &str, pci: &str, ifindex: i32| LinkFacts {
            ifindex,
            name: name.into(),
            parent_dev_name: Some(pci.into()),
            parent_dev_bus: Some("pci".into()),
            ..Default::default()
        };
        let links = vec![
            parent("eth0", "0000:3b:00.0", 2),
            parent("eth9", "0000:3d:00.0", 3),
        ];
        let t = discover(&d, &d.join("dev"), Some(&links)).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let names: Vec<_> = t.rdma_devices.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mlx5_0", "mlx5_1", "mlx5_2"]);
        assert_eq!(t.netdevs[0].rdma_device.as_deref(), Some("mlx5_0"));
        assert_eq!(
            t.netdevs[0].char_devices,
            ["/dev/infiniband/uverbs0", "/dev/infiniband/rdma_cm"]
        );
        assert_eq!(t.netdevs[0].numa_node, Some(1));
        assert_eq!(t.netdevs[0].pcie_root.as_deref(), Some("pci0000:3a"));
        // eth9 is not mlx5_1's netdev: different PCI function
        assert_eq!(t.netdevs[1].rdma_device, None);
        assert_eq!(t.rdma_devices[1].netdevs, ["eth9"]);
        // mlx5_2: no port netdev and no net/ on its function: standalone
        assert!(t.rdma_devices[2].netdevs.is_empty());
        assert_eq!(
            t.rdma_devices[2].pci_address.as_deref(),
            Some("0000:3d:00.0")
        );
        assert_eq!(t.rdma_devices[2].node_type.as_deref(), Some("CA"));
    }

    #[test]
    fn missing_root_is_an_error() {
        let e = discover(Path::new("/nonexistent/knd-sysfs"), Path::new("/dev"), None).unwrap_err();
        assert_eq!(e.kind, SysfsErrorKind::RootMissing);
        assert!(e.message.contains("/nonexistent/knd-sysfs"));
    }
}
