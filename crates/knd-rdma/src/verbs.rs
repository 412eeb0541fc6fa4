//! Verbs enumeration through libibverbs, loaded at run time.
//!
//! kndkit is never linked against libibverbs (a module linked against it would
//! not import on nodes without rdma-core). The C types and layouts come from
//! `rdma-sys`; the functions are resolved with `dlopen`/`dlvsym` the first time
//! they are needed. `KNDKIT_LIBIBVERBS` overrides the library path (tests use it
//! to simulate a node without rdma-core).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use rdma_sys::{__be64, ibv_context, ibv_device, ibv_device_attr, ibv_gid, ibv_port_attr};

use crate::nl::{format_guid, node_type_name, phys_state_name, port_state_name};
use crate::socket::NOT_AVAILABLE;
use crate::RdmaError;

/// The default library name (the runtime package's soname).
pub const DEFAULT_LIBRARY: &str = "libibverbs.so.1";
/// Environment variable that overrides [`DEFAULT_LIBRARY`].
pub const LIBRARY_ENV: &str = "KNDKIT_LIBIBVERBS";
/// Symbol version of the current ABI of the functions used here (the
/// unversioned `IBVERBS_1.0` symbols have a different, older ABI).
const SYMBOL_VERSION: &CStr = c"IBVERBS_1.1";

type GetDeviceList = unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device;
type FreeDeviceList = unsafe extern "C" fn(*mut *mut ibv_device);
type GetDeviceName = unsafe extern "C" fn(*mut ibv_device) -> *const c_char;
type GetDeviceGuid = unsafe extern "C" fn(*mut ibv_device) -> __be64;
type OpenDevice = unsafe extern "C" fn(*mut ibv_device) -> *mut ibv_context;
type CloseDevice = unsafe extern "C" fn(*mut ibv_context) -> c_int;
type QueryDevice = unsafe extern "C" fn(*mut ibv_context, *mut ibv_device_attr) -> c_int;
/// The exported `ibv_query_port` takes the older (shorter) port attribute
/// struct, which is a prefix of `ibv_port_attr`; verbs.h's inline wrapper passes
/// a zeroed full struct to it in the same way.
type QueryPort = unsafe extern "C" fn(*mut ibv_context, u8, *mut ibv_port_attr) -> c_int;
type QueryGid = unsafe extern "C" fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int;

/// The resolved entry points of one loaded libibverbs.
struct Api {
    path: String,
    get_device_list: GetDeviceList,
    free_device_list: FreeDeviceList,
    get_device_name: GetDeviceName,
    get_device_guid: GetDeviceGuid,
    open_device: OpenDevice,
    close_device: CloseDevice,
    query_device: QueryDevice,
    query_port: QueryPort,
    query_gid: QueryGid,
}

/// Loaded libraries by path. A library, once loaded, stays loaded (libibverbs
/// does not support being unloaded); failures are not cached.
fn loaded() -> &'static Mutex<HashMap<String, &'static Api>> {
    static L: OnceLock<Mutex<HashMap<String, &'static Api>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The library path in effect (the environment override, or the default).
pub fn library_path() -> String {
    match std::env::var(LIBRARY_ENV) {
        Ok(p) if !p.is_empty() => p,
        _ => DEFAULT_LIBRARY.to_owned(),
    }
}

fn unavailable(detail: String) -> RdmaError {
    RdmaError::NotAvailable(format!("{NOT_AVAILABLE} (libibverbs: {detail})"))
}

fn resolve(handle: *mut c_void, path: &str, name: &str) -> Result<*mut c_void, RdmaError> {
    let c = CString::new(name).expect("symbol names have no NUL");
    // SAFETY: handle is a live dlopen handle; names are NUL-terminated.
    let mut p = unsafe { libc::dlvsym(handle, c.as_ptr(), SYMBOL_VERSION.as_ptr()) };
    if p.is_null() {
        // A library built without symbol versions: take the default symbol.
        // SAFETY: as above.
        p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    }
    if p.is_null() {
        return Err(unavailable(format!("{path} has no symbol {name}")));
    }
    Ok(p)
}

fn load(path: &str) -> Result<&'static Api, RdmaError> {
    let mut map = loaded().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(api) = map.get(path) {
        return Ok(api);
    }
    // SAFETY: loading libibverbs runs its initialisers, which only read its
    // configuration; the library is never unloaded.
    let lib = unsafe {
        libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_LOCAL)
    }
    .map_err(|e| {
        let why = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        unavailable(format!("cannot load {path}: {why}"))
    })?;
    let handle = lib.into_raw();
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            let p = resolve(handle, path, $name)?;
            // SAFETY: the symbol is the libibverbs function of this name and ABI
            // version; $ty is its C signature.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        }};
    }
    let api = Api {
        path: path.to_owned(),
        get_device_list: sym!("ibv_get_device_list", GetDeviceList),
        free_device_list: sym!("ibv_free_device_list", FreeDeviceList),
        get_device_name: sym!("ibv_get_device_name", GetDeviceName),
        get_device_guid: sym!("ibv_get_device_guid", GetDeviceGuid),
        open_device: sym!("ibv_open_device", OpenDevice),
        close_device: sym!("ibv_close_device", CloseDevice),
        query_device: sym!("ibv_query_device", QueryDevice),
        query_port: sym!("ibv_query_port", QueryPort),
        query_gid: sym!("ibv_query_gid", QueryGid),
    };
    let api: &'static Api = Box::leak(Box::new(api));
    map.insert(path.to_owned(), api);
    Ok(api)
}

/// Whether libibverbs can be loaded (at [`library_path`]).
pub fn available() -> bool {
    load(&library_path()).is_ok()
}

/// One port as verbs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsPort {
    pub port: u8,
    pub state: String,
    pub phys_state: String,
    pub link_layer: String,
    pub lid: u16,
    pub active_mtu: u32,
    pub gid_table_len: i32,
    /// Non-zero GIDs, formatted as eight groups of four hex digits.
    pub gids: Vec<String>,
}

/// One device as verbs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsDevice {
    pub name: String,
    pub node_guid: String,
    pub node_type: String,
    pub fw_version: Option<String>,
    pub ports: Vec<VerbsPort>,
    /// Why the device could not be opened or queried (its ports are then empty).
    pub error: Option<String>,
}

/// Name of an `ibv_port_attr.link_layer` value.
pub fn link_layer_name(v: u8) -> String {
    match v {
        0 => "unspecified".into(),
        1 => "infiniband".into(),
        2 => "ethernet".into(),
        n => format!("unknown({n})"),
    }
}

/// A GID as eight colon-separated groups of four hex digits.
pub fn format_gid(raw: &[u8; 16]) -> String {
    raw.chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(":")
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Enumerates the devices libibverbs sees. An empty list when the library loads
/// but the node has no devices (or no kernel verbs support).
pub fn devices() -> Result<Vec<VerbsDevice>, RdmaError> {
    let api = load(&library_path())?;
    static CALLS: Mutex<()> = Mutex::new(());
    let _g = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer; the list is freed below.
    let list = unsafe { (api.get_device_list)(&mut n) };
    if list.is_null() {
        let errno = last_errno();
        // ENOSYS: the kernel has no verbs support; no devices either way.
        if matches!(errno, 0 | libc::ENOSYS | libc::ENODEV | libc::ENOENT) {
            return Ok(Vec::new());
        }
        return Err(RdmaError::Os {
            message: format!(
                "ibv_get_device_list ({}) failed: {} ({})",
                api.path,
                crate::strerror(errno),
                knd_netns::errno_name(errno)
            ),
            errno,
        });
    }
    let mut out = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: the list holds n valid device pointers.
        let dev = unsafe { *list.add(i) };
        if dev.is_null() {
            break;
        }
        out.push(describe(api, dev));
    }
    // SAFETY: list came from get_device_list and is freed once.
    unsafe { (api.free_device_list)(list) };
    Ok(out)
}

fn describe(api: &Api, dev: *mut ibv_device) -> VerbsDevice {
    // SAFETY: dev is a live device of the list; the name is a C string owned by it.
    let name = unsafe {
        let p = (api.get_device_name)(dev);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // SAFETY: dev is live; the GUID comes in network byte order.
    let guid = u64::from_be(unsafe { (api.get_device_guid)(dev) });
    // SAFETY: dev is live; node_type is a plain field of the public struct.
    let node_type = unsafe { (*dev).node_type };
    let mut d = VerbsDevice {
        name,
        node_guid: format_guid(guid),
        node_type: node_type_name(node_type as u8),
        fw_version: None,
        ports: Vec::new(),
        error: None,
    };
    // SAFETY: dev is live; the context is closed below.
    let ctx = unsafe { (api.open_device)(dev) };
    if ctx.is_null() {
        let errno = last_errno();
        d.error = Some(format!(
            "ibv_open_device failed: {} ({})",
            crate::strerror(errno),
            knd_netns::errno_name(errno)
        ));
        return d;
    }
    // SAFETY: zeroed attribute structs are valid out-parameters.
    let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: ctx is open; attr is a valid pointer of the right type.
    let rc = unsafe { (api.query_device)(ctx, &mut attr) };
    if rc != 0 {
        d.error = Some(format!(
            "ibv_query_device failed: {}",
            knd_netns::errno_name(rc.abs())
        ));
    } else {
        // SAFETY: fw_ver is a NUL-terminated array inside attr.
        let fw = unsafe { CStr::from_ptr(attr.fw_ver.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        if !fw.is_empty() {
            d.fw_version = Some(fw);
        }
        for port in 1..=attr.phys_port_cnt {
            match query_port(api, ctx, port) {
                Ok(p) => d.ports.push(p),
                Err(e) => {
                    d.error = Some(e);
                    break;
                }
            }
        }
    }
    // SAFETY: ctx was opened above and is closed once.
    unsafe { (api.close_device)(ctx) };
    d
}

fn query_port(api: &Api, ctx: *mut ibv_context, port: u8) -> Result<VerbsPort, String> {
    // SAFETY: zeroed port attributes are a valid out-parameter (and what the
    // header's inline wrapper passes).
    let mut pa: ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: ctx is open; pa is a full-size struct.
    let rc = unsafe { (api.query_port)(ctx, port, &mut pa) };
    if rc != 0 {
        return Err(format!(
            "ibv_query_port({port}) failed: {}",
            knd_netns::errno_name(rc.abs())
        ));
    }
    let mut gids = Vec::new();
    for idx in 0..pa.gid_tbl_len.clamp(0, 1024) {
        // SAFETY: a zeroed GID is a valid out-parameter.
        let mut gid: ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open; gid is valid.
        if unsafe { (api.query_gid)(ctx, port, idx, &mut gid) } != 0 {
            continue;
        }
        // SAFETY: every bit pattern is a valid [u8; 16].
        let raw = unsafe { gid.raw };
        if raw.iter().any(|b| *b != 0) {
            gids.push(format_gid(&raw));
        }
    }
    Ok(VerbsPort {
        port,
        state: port_state_name(pa.state),
        phys_state: phys_state_name(pa.phys_state),
        link_layer: link_layer_name(pa.link_layer),
        lid: pa.lid,
        active_mtu: match pa.active_mtu {
            1 => 256,
            2 => 512,
            3 => 1024,
            4 => 2048,
            5 => 4096,
            _ => 0,
        },
        gid_table_len: pa.gid_tbl_len,
        gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_and_link_layer_format() {
        let mut raw = [0u8; 16];
        raw[0] = 0xfe;
        raw[1] = 0x80;
        raw[8] = 0x0a;
        raw[15] = 0x01;
        assert_eq!(format_gid(&raw), "fe80:0000:0000:0000:0a00:0000:0000:0001");
        assert_eq!(link_layer_name(2), "ethernet");
        assert_eq!(link_layer_name(1), "infiniband");
        assert_eq!(link_layer_name(9), "unknown(9)");
    }

    #[test]
    fn layouts_match_the_c_header() {
        // Sizes from <infiniband/verbs.h> on x86_64 / aarch64 (LP64).
        assert_eq!(std::mem::size_of::<ibv_gid>(), 16);
        assert_eq!(std::mem::size_of::<ibv_port_attr>(), 52);
        assert_eq!(std::mem::offset_of!(ibv_port_attr, gid_tbl_len), 12);
        assert_eq!(std::mem::offset_of!(ibv_port_attr, link_layer), 46);
        assert_eq!(std::mem::size_of::<ibv_device_attr>(), 232);
        assert_eq!(std::mem::offset_of!(ibv_device_attr, phys_port_cnt), 227);
    }

    #[test]
    fn missing_library_is_not_available() {
        let err = match load("/nonexistent/kndkit-libibverbs.so") {
            Err(e) => e,
            Ok(_) => panic!("a missing library loaded"),
        };
        match err {
            RdmaError::NotAvailable(m) => {
                assert!(m.starts_with(NOT_AVAILABLE), "{m}");
                assert!(m.contains("/nonexistent/kndkit-libibverbs.so"), "{m}");
                assert!(m.contains("No such file"), "dlerror text missing: {m}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn library_without_verbs_symbols_is_not_available() {
        // libc loads but has no ibv_* symbols.
        let err = match load("libc.so.6") {
            Err(e) => e,
            Ok(_) => panic!("libc resolved ibv symbols"),
        };
        assert!(
            matches!(&err, RdmaError::NotAvailable(m) if m.contains("ibv_get_device_list")),
            "{err:?}"
        );
    }

    #[test]
    fn installed_library_enumerates_without_crashing() {
        // Here libibverbs is installed but the node has no RDMA devices; on a
        // node with devices every entry must at least carry a name and GUID.
        if load(DEFAULT_LIBRARY).is_err() {
            return;
        }
        let devs = devices().expect("enumeration");
        for d in devs {
            assert!(!d.name.is_empty());
            assert_eq!(d.node_guid.len(), 19);
        }
    }
}
