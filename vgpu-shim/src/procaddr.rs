//! `cuGetProcAddress`: the CUDA runtime (12.x, 13.x) gets every entry point this way. The driver
//! picks the variant for the requested version and flags (`_v2`, `_v3`, `_ptsz`, …); we hand
//! back our wrapper of exactly that variant, found by pointer identity with the driver's
//! exported symbol, so per-version signatures and stream semantics are the driver's.

use std::ffi::{CStr, c_char, c_void};
use std::sync::OnceLock;

use crate::api::{CUDA_WRAPPERS, Wrapper};
use crate::driver::cuda;
use crate::ffi::*;
use crate::log::log;

/// Real driver address → our wrapper.
fn by_address() -> &'static [(usize, &'static Wrapper)] {
    static MAP: OnceLock<Vec<(usize, &'static Wrapper)>> = OnceLock::new();
    MAP.get_or_init(|| {
        let api = cuda();
        CUDA_WRAPPERS.iter().filter_map(|w| Some((api.real_address(w.name.as_bytes())?, w))).collect()
    })
}

/// The wrapper of the variant the driver's own rules pick for `base` at `version`: the newest
/// one introduced at or before it, per-thread when asked for and one exists.
pub fn by_version(base: &[u8], version: i32, flags: u64) -> Option<&'static Wrapper> {
    let candidates = || CUDA_WRAPPERS.iter().filter(|w| w.base.as_bytes() == base && w.since <= version);
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0 && candidates().any(|w| w.per_thread);
    candidates().filter(|w| w.per_thread == per_thread).max_by_key(|w| w.since)
}

/// Replaces the driver's answer with our wrapper when it is one we intercept.
///
/// # Safety
/// `symbol` is a C string and `pfn` holds what the driver just wrote.
unsafe fn substitute(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64) {
    if symbol.is_null() || pfn.is_null() || !crate::state::active() {
        return;
    }
    // SAFETY: checked non-null; the driver just wrote it.
    let real = unsafe { *pfn } as usize;
    if real == 0 {
        return;
    }
    let wrapper = match by_address().iter().find(|(a, _)| *a == real) {
        Some((_, w)) => Some(*w),
        None => {
            // SAFETY: a C string, per cuGetProcAddress's contract.
            let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
            let w = by_version(name, version, flags);
            if let Some(w) = w {
                log!(
                    Debug,
                    "cuGetProcAddress({}, {version}, {flags}): driver answered an unexported address; using {} by version",
                    String::from_utf8_lossy(name),
                    w.name
                );
            }
            w
        }
    };
    if let Some(w) = wrapper {
        // SAFETY: checked non-null.
        unsafe { *pfn = w.f as *mut c_void };
    }
}

/// # Safety
/// `cuGetProcAddress`'s contract.
pub unsafe fn get_proc_address(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64) -> CUresult {
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
    version: i32,
    flags: u64,
    status: *mut i32,
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
    fn version_rules_pick_the_newest_variant_at_or_below() {
        let name = |base: &str, v, f| by_version(base.as_bytes(), v, f).map(|w| w.name);
        assert_eq!(name("cuMemAlloc", 3020, 0), Some("cuMemAlloc_v2"));
        assert_eq!(name("cuMemAlloc", 2000, 0), None, "the 32-bit original is not ours");
        assert_eq!(name("cuCtxCreate", 3020, 0), Some("cuCtxCreate_v2"));
        assert_eq!(name("cuCtxCreate", 11040, 0), Some("cuCtxCreate_v3"));
        assert_eq!(name("cuCtxCreate", 12080, 0), Some("cuCtxCreate_v4"));
        assert_eq!(name("cuDevicePrimaryCtxRelease", 10000, 0), Some("cuDevicePrimaryCtxRelease"));
        assert_eq!(name("cuDevicePrimaryCtxRelease", 11000, 0), Some("cuDevicePrimaryCtxRelease_v2"));
        assert_eq!(name("cuLaunchKernel", 12000, 0), Some("cuLaunchKernel"));
        assert_eq!(name("cuLaunchKernel", 12000, 2), Some("cuLaunchKernel_ptsz"));
        assert_eq!(name("cuMemAllocAsync", 12000, 2), Some("cuMemAllocAsync_ptsz"));
        assert_eq!(name("cuMemAlloc", 12000, 2), Some("cuMemAlloc_v2"), "no per-thread variant: the plain one");
        assert_eq!(name("cuGetProcAddress", 12000, 0), Some("cuGetProcAddress_v2"));
        assert_eq!(name("cuGetProcAddress", 11030, 0), Some("cuGetProcAddress"));
        assert_eq!(name("cuMemcpy", 12000, 0), None, "not intercepted");
    }
}
