//! `cuGetProcAddress`: the CUDA runtime (12.x, 13.x) gets every entry point this way. The driver
//! picks the variant for the requested version and flags (`_v2`, `_v3`, `_ptsz`, …); we hand
//! back our wrapper only for the exact variant the driver chose, so per-version signatures and
//! stream semantics stay the driver's.
//!
//! The driver's answer is identified by address:
//! 1. it is the driver's export of a symbol we wrap (`cuMemAlloc_v2`): our wrapper of that symbol;
//! 2. it is an exported symbol we do not wrap (`cuCtxSynchronize_v2` while we wrap only
//!    `cuCtxSynchronize`; anything of a future release): passed through unchanged;
//! 3. it is no exported symbol at all (a driver may answer from private tables): the table
//!    generated from `cudaTypedefs.h` says which symbol the request selects, and we hand out
//!    our wrapper only if we wrap exactly that symbol and the version is within the table's
//!    range; otherwise it passes through (one debug line).
//!
//! No version table is kept by hand: a future `cuCtxSynchronize_v3` is either an exported
//! symbol we do not wrap (passed through) or beyond the generated table (passed through).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use gpuslice_cuda_abi::proc::{self as abi, NEWEST_VERSION};

use crate::api::{CUDA_WRAPPERS, Wrapper};
use crate::driver::cuda;
use crate::ffi::*;
use crate::log::log;

/// Real driver address → our wrapper of that symbol.
fn by_address() -> &'static [(usize, &'static Wrapper)] {
    static MAP: OnceLock<Vec<(usize, &'static Wrapper)>> = OnceLock::new();
    MAP.get_or_init(|| {
        let real = cuda().real_addresses();
        real.iter().filter_map(|(addr, name)| Some((*addr, CUDA_WRAPPERS.iter().find(|w| w.name == *name)?))).collect()
    })
}

/// Our wrapper of the exported symbol `name`.
fn wrapper_of(name: &str) -> Option<&'static Wrapper> {
    CUDA_WRAPPERS.iter().find(|w| w.name == name)
}

/// The name of the exported symbol that starts exactly at `addr`, in whatever object has it.
fn exported_symbol_at(addr: usize) -> Option<&'static CStr> {
    // SAFETY: an all-zero Dl_info is valid (null pointers).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 || info.dli_sname.is_null() {
        return None;
    }
    // SAFETY: dladdr's name points into the object's string table, which lives as long as the
    // object; the driver stays loaded for the life of the process.
    (info.dli_saddr as usize == addr).then(|| unsafe { CStr::from_ptr(info.dli_sname) })
}

/// What the shim hands out for `cuGetProcAddress(name, version, flags)` when the driver
/// answered `real`: our wrapper, or `None` to pass the driver's answer through.
pub fn choose(name: &[u8], real: usize, version: c_int, flags: u64) -> Option<&'static Wrapper> {
    if let Some((_, w)) = by_address().iter().find(|(a, _)| *a == real) {
        return Some(w);
    }
    if exported_symbol_at(real).is_some() {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?;
    let chosen = match abi::lookup(name, version, flags) {
        abi::Lookup::Found(row) if version <= NEWEST_VERSION => wrapper_of(row.symbol()),
        _ => None,
    };
    log!(
        Debug,
        "cuGetProcAddress({name}, {version}, {flags}): the driver answered an address that is no exported symbol; {}",
        chosen.map_or("passed through".to_owned(), |w| format!("{} by the table", w.name))
    );
    chosen
}

/// Replaces the driver's answer with our wrapper when it is one we intercept.
///
/// # Safety
/// `symbol` is a C string and `pfn` holds what the driver just wrote.
unsafe fn substitute(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) {
    if symbol.is_null() || pfn.is_null() || !crate::state::active() {
        return;
    }
    // SAFETY: checked non-null; the driver just wrote it.
    let real = unsafe { *pfn } as usize;
    if real == 0 {
        return;
    }
    // SAFETY: a C string, per cuGetProcAddress's contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    if let Some(w) = choose(name, real, version, flags) {
        // SAFETY: checked non-null.
        unsafe { *pfn = w.f as *mut c_void };
    }
}

/// # Safety
/// `cuGetProcAddress`'s contract.
pub unsafe fn get_proc_address(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) -> CUresult {
    let Some(f) = cuda().cuGetProcAddress else { return CUDA_ERROR_NOT_SUPPORTED };
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(symbol, pfn, version, flags) };
    if rc == CUDA_SUCCESS {
        // SAFETY: the driver succeeded, so both pointers are valid.
        unsafe { substitute(symbol, pfn, version, flags) };
    }
    rc
}

/// # Safety
/// `cuGetProcAddress_v2`'s contract.
pub unsafe fn get_proc_address_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut CUdriverProcAddressQueryResult,
) -> CUresult {
    let Some(f) = cuda().cuGetProcAddress_v2 else { return CUDA_ERROR_NOT_SUPPORTED };
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(symbol, pfn, version, flags, status) };
    if rc == CUDA_SUCCESS {
        // SAFETY: the driver succeeded, so both pointers are valid.
        unsafe { substitute(symbol, pfn, version, flags) };
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wrapper_is_a_driver_symbol_of_the_table() {
        for w in CUDA_WRAPPERS {
            assert!(abi::is_symbol(w.name), "{} is in no typedef of cudaTypedefs.h", w.name);
        }
    }

    #[test]
    fn an_unexported_answer_is_wrapped_only_for_the_exact_symbol_the_table_selects() {
        // Address 1 is no symbol of anything; the test binary's driver table is empty.
        let name = |base: &str, v, f| choose(base.as_bytes(), 1, v, f).map(|w| w.name);
        assert_eq!(name("cuMemAlloc", 3020, 0), Some("cuMemAlloc_v2"));
        assert_eq!(name("cuMemAlloc", 2000, 0), None, "the 32-bit original is not ours");
        assert_eq!(name("cuCtxCreate", 11040, 0), Some("cuCtxCreate_v3"));
        assert_eq!(name("cuCtxCreate", 12080, 0), Some("cuCtxCreate_v4"));
        assert_eq!(name("cuLaunchKernel", 12000, 2), Some("cuLaunchKernel_ptsz"));
        assert_eq!(name("cuCtxSynchronize", 12090, 0), Some("cuCtxSynchronize"));
        assert_eq!(name("cuCtxSynchronize", 13000, 0), Some("cuCtxSynchronize_v2"), "its own wrapper, not the v1's");
        assert_eq!(name("cuStreamBeginCaptureToGraph", 12030, 2), Some("cuStreamBeginCaptureToGraph_ptsz"));
        assert_eq!(name("cuGLCtxCreate", 2000, 0), Some("cuGLCtxCreate"));
        assert_eq!(name("cuGLCtxCreate", 3020, 0), Some("cuGLCtxCreate_v2"));
        assert_eq!(name("cuVDPAUCtxCreate", 3010, 0), Some("cuVDPAUCtxCreate"));
        assert_eq!(name("cuVDPAUCtxCreate", 13050, 0), Some("cuVDPAUCtxCreate_v2"));
        assert_eq!(name("cuGraphUpload", 11010, 0), Some("cuGraphUpload"));
        assert_eq!(name("cuGraphAddMemAllocNode", 11040, 0), None, "not intercepted");
        assert_eq!(name("cuMemAlloc", NEWEST_VERSION + 10, 0), None, "beyond what the headers know");
        assert_eq!(name("cuMemcpy", 12000, 0), None, "not intercepted");
    }
}
