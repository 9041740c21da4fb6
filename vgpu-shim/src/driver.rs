//! Finding the real driver: glibc's `dlsym`, `libcuda.so.1` and `libnvidia-ml.so.1`, and the
//! table of their functions (generated from the declaration list in `api.rs`).

use std::ffi::{CStr, c_char, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::api::{CudaApi, NvmlApi};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// glibc's `dlsym`. Read by the naked `dlsym` in `dlsym.rs` as a plain word, so it is a
/// non-exported static (an exported one could be preempted and would not link PC-relative).
pub(crate) static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

/// Finds glibc's `dlsym` with `dlvsym`, which we do not interpose. Safe to call from any
/// context, including another library's constructor before ours has run: it only stores a word.
pub(crate) extern "C" fn init_real_dlsym() -> usize {
    let mut f = REAL_DLSYM.load(Ordering::Acquire);
    if f == 0 {
        for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
            // SAFETY: dlvsym with RTLD_NEXT and valid C strings; it returns null or the symbol.
            let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
            if !p.is_null() {
                f = p as usize;
                break;
            }
        }
        REAL_DLSYM.store(f, Ordering::Release);
    }
    f
}

/// Calls glibc's `dlsym`.
///
/// # Safety
/// `handle` must be a handle `dlsym` accepts and `name` a NUL-terminated string.
pub unsafe fn real_dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    let f = init_real_dlsym();
    if f == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: `f` is glibc's dlsym, found by dlvsym, with dlsym's C signature.
    let f: DlsymFn = unsafe { std::mem::transmute::<usize, DlsymFn>(f) };
    // SAFETY: the caller upholds dlsym's contract.
    unsafe { f(handle, name) }
}

/// Resolves `name` (NUL-terminated) in `handle` as a function pointer of type `F`.
///
/// # Safety
/// `handle` is null or a handle from `dlopen`, and `F` is the C signature of `name`.
pub unsafe fn resolve<F: Copy>(handle: *mut c_void, name: &str) -> Option<F> {
    debug_assert!(name.ends_with('\0'));
    debug_assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    if handle.is_null() {
        return None;
    }
    // SAFETY: handle came from dlopen and name is NUL-terminated.
    let p = unsafe { real_dlsym(handle, name.as_ptr().cast()) };
    // SAFETY: F is an `unsafe extern "C" fn` type of pointer size (checked above), and `p` is
    // the address of the driver function of that name, whose C signature the API list states.
    (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

/// A driver library: loaded by the program already (`RTLD_NOLOAD`), or loaded now.
fn open_library(name: &CStr) -> *mut c_void {
    // SAFETY: dlopen with a valid C string; NOLOAD only returns an existing handle.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if !h.is_null() {
        return h;
    }
    // SAFETY: as above; this loads the driver library the program is calling into.
    unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY) }
}

/// One driver library and the table of its functions, loaded at first use.
#[derive(Debug)]
pub struct Driver<A> {
    library: &'static CStr,
    table: OnceLock<A>,
}

impl<A> Driver<A> {
    const fn new(library: &'static CStr) -> Self {
        Self { library, table: OnceLock::new() }
    }

    /// The table if it is loaded; `None` before, and while it is being loaded (never waits).
    pub fn loaded(&self) -> Option<&A> {
        self.table.get()
    }

    /// `name` (NUL-terminated) resolved in the library if the process has it loaded, without
    /// touching the table: for a call that re-entered the shim while the table is being
    /// loaded, where waiting for it would wait for ourselves. Never loads the library.
    ///
    /// # Safety
    /// `F` is the C signature of `name`.
    pub unsafe fn resolve_now<F: Copy>(&self, name: &str) -> Option<F> {
        // SAFETY: dlopen with a valid C string; NOLOAD only returns an existing handle (glibc's
        // loader lock is recursive, so this works from inside the library's constructor).
        let h = unsafe { libc::dlopen(self.library.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        // SAFETY: `h` is null or the library's handle; the caller vouches for `F`.
        let f = unsafe { resolve(h, name) };
        if !h.is_null() {
            // SAFETY: the reference NOLOAD took; the library stays loaded by its own.
            unsafe { libc::dlclose(h) };
        }
        f
    }
}

/// `libcuda.so.1` and the CUDA list's functions.
pub static CUDA: Driver<CudaApi> = Driver::new(c"libcuda.so.1");
/// `libnvidia-ml.so.1` and the NVML list's functions.
pub static NVML: Driver<NvmlApi> = Driver::new(c"libnvidia-ml.so.1");

/// The real CUDA driver's functions.
pub fn cuda() -> &'static CudaApi {
    // SAFETY: the handle is libcuda's, whose functions the CUDA list describes.
    CUDA.table.get_or_init(|| unsafe { CudaApi::load(open_library(CUDA.library)) })
}

/// The real NVML's functions.
pub fn nvml() -> &'static NvmlApi {
    // SAFETY: the handle is NVML's, whose functions the NVML list describes.
    NVML.table.get_or_init(|| unsafe { NvmlApi::load(open_library(NVML.library)) })
}
