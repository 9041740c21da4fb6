//! A library's compressed fat binary entries, charged at its first use, as a driver loads a
//! library lazily (CUDA 12.2's default). At `cuLibraryLoadData` / `cuLibraryLoadFromFile` the
//! library's uncompressed entries are charged ([`super::reserved`]); when it has compressed
//! ones, its fat binary is fingerprinted, not copied ([`reservations::deferred_image`]: address,
//! length, XXH3-64 hash; a copy would cost each process what PyTorch's `libtorch_cuda.so`
//! carries, ~337 MB). At the first use it is read again from the program's memory (or the
//! library file read again) and checked ([`reservations::reread`]): an image rewritten, freed or
//! unmapped since the load refuses that use with `CUDA_ERROR_OUT_OF_MEMORY` and one log line (a
//! program never changes an image it registered; the driver keeps its own copy). Then what
//! they decompress to ([`reservations::deferred_bytes`], bounded as every decompression is) is
//! charged to the current context's slice at the library's first use: `cuLibraryGetModule`,
//! `cuKernelGetFunction`, `cuLibraryGetGlobal`, `cuLibraryGetManaged`, or a launch of one of
//! its kernels (`cuLaunchKernel`, `cuLaunchKernelEx`, `cuLaunchCooperativeKernel` and their
//! `_ptsz` twins with a `CUkernel` from `cuLibraryGetKernel`, which CUDA 13's runtime passes
//! straight to the launch). A first use past the slice's limit is refused with
//! `CUDA_ERROR_OUT_OF_MEMORY` and reaches no driver. The charge goes with the context current
//! then (destroy, reset, last release: the next use charges again) and with `cuLibraryUnload`.
//! With `CUDA_MODULE_LOADING=EAGER` the driver loads at once, and so everything is charged at
//! the load.
//!
//! A launch of a handle already seen costs one load and one compare: a small direct-mapped
//! table of the handles found to owe nothing (their library charged, or no library of ours),
//! emptied whenever a charge goes. Not followed: a library used in several contexts (charged
//! once, in the first), kernels found other ways than `cuLibraryGetKernel`
//! (`cuLibraryEnumerateKernels`) when launched directly, and kernel graph nodes.

use std::collections::HashMap;
use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::path::PathBuf;

use gpuslice_core::reservations::{self, Fingerprint, Stale};

use super::*;

/// A library with compressed entries, not charged for them yet in any live context.
struct Deferred {
    /// Its fat binary as it was at the load.
    print: Fingerprint,
    /// For `cuLibraryLoadFromFile`: the file, and where its bytes were when fingerprinted.
    file: Option<(PathBuf, usize)>,
    /// What they reserve, once computed.
    bytes: Option<u64>,
}

#[derive(Default)]
struct Lazy {
    libraries: HashMap<u64, Deferred>,
    /// `CUkernel` → its library, for the libraries above.
    kernels: HashMap<u64, u64>,
}

static LAZY: std::sync::Mutex<Option<Lazy>> = std::sync::Mutex::new(None);
/// Whether any library was deferred: until then a launch looks at nothing else.
static ANY: AtomicBool = AtomicBool::new(false);
const SLOTS: usize = 256;
/// Launch handles that owe nothing, each in the slot its address selects.
static CLEAR: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

fn slot(f: u64) -> &'static AtomicU64 {
    &CLEAR[(f >> 4) as usize % SLOTS]
}

fn lazy() -> std::sync::MutexGuard<'static, Option<Lazy>> {
    LAZY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the driver loads modules eagerly (`CUDA_MODULE_LOADING=EAGER`).
pub(super) fn eager() -> bool {
    static EAGER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EAGER.get_or_init(|| std::env::var("CUDA_MODULE_LOADING").is_ok_and(|v| v.eq_ignore_ascii_case("EAGER")))
}

/// Keeps library `library`'s fat binary's fingerprint `print` (and for a library file, the
/// file and where its bytes were) for its first use.
pub(super) fn defer(library: u64, print: Fingerprint, file: Option<(PathBuf, usize)>) {
    lazy().get_or_insert_with(Lazy::default).libraries.insert(library, Deferred { print, file, bytes: None });
    ANY.store(true, Ordering::Release);
    forget_clear();
}

/// Empties the table of handles that owe nothing: a charge went.
pub(super) fn forget_clear() {
    for s in &CLEAR {
        s.store(0, Ordering::Relaxed);
    }
}

/// `cuLibraryUnload` succeeded: nothing is deferred for it any more.
pub(super) fn unloaded(library: u64) {
    if let Some(l) = lazy().as_mut() {
        l.libraries.remove(&library);
        l.kernels.retain(|_, lib| *lib != library);
    }
    forget_clear();
}

/// Charges library `library`'s deferred entries to the current context's slice unless charged
/// already; `Err` with the refusal past the limit.
fn use_library(library: u64) -> Result<(), CUresult> {
    let mut guard = lazy();
    let Some(d) = guard.as_mut().and_then(|l| l.libraries.get_mut(&library)) else { return Ok(()) };
    let s = state();
    if book(s).charges.contains_key(&(Kind::LazyLibrary, library)) {
        return Ok(());
    }
    let Some(dev) = current_device() else { return Ok(()) };
    let slice = match target(s, dev) {
        Err(r) => return Err(r.into()),
        Ok(None) => return Ok(()),
        Ok(Some(i)) => i,
    };
    let bytes = match d.bytes {
        Some(b) => b,
        None => {
            let fat = match &d.file {
                None => reservations::reread(&d.print, &reservations::OwnMemory),
                Some((path, base)) => super::reserved::read_file(path)
                    .ok_or(Stale::Unreadable)
                    .and_then(|image| reservations::reread_in(&d.print, *base, &image)),
            };
            let fat = match fat {
                Ok(fat) => fat,
                Err(why) => {
                    let what = match why {
                        Stale::Unreadable => "freed or unmapped",
                        Stale::Changed => "rewritten",
                    };
                    crate::log::log!(
                        Warn,
                        "library {library:#x}: first use refused: its fat binary was {what} since the load"
                    );
                    return Err(CUDA_ERROR_OUT_OF_MEMORY);
                }
            };
            *d.bytes.insert(super::reserved::counted(reservations::deferred_bytes(&fat)))
        }
    };
    if bytes == 0 {
        return Ok(());
    }
    if let Err(r) = charge(s, slice, bytes) {
        crate::log::log!(Info, "library {library:#x}: first use refused: its compressed entries reserve {bytes} bytes");
        return Err(r.into());
    }
    crate::log::log!(Debug, "library {library:#x}: first use: charging {bytes} bytes");
    record(s, (Kind::LazyLibrary, library), Charge { slice, bytes, pool: None, ctx: current_context() });
    Ok(())
}

/// Before a launch of `f`: a `CUkernel` of a deferred library charges it first.
#[inline]
pub fn launching(f: CUfunction) -> Result<(), CUresult> {
    if !ANY.load(Ordering::Acquire) {
        return Ok(());
    }
    let f = f as u64;
    if f == 0 || slot(f).load(Ordering::Acquire) == f {
        return Ok(());
    }
    launching_slow(f)
}

#[cold]
fn launching_slow(f: u64) -> Result<(), CUresult> {
    let library = lazy().as_ref().and_then(|l| l.kernels.get(&f).copied());
    if let Some(library) = library {
        use_library(library)?;
    }
    slot(f).store(f, Ordering::Release);
    Ok(())
}

/// # Safety
/// `cuLibraryGetKernel`'s contract.
pub unsafe fn library_get_kernel(kernel: *mut CUkernel, library: CUlibrary, name: *const c_char) -> CUresult {
    let f = real!(cuLibraryGetKernel);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(kernel, library, name) };
    if rc == CUDA_SUCCESS && !kernel.is_null() && ANY.load(Ordering::Acquire) {
        // SAFETY: the driver wrote the kernel on success.
        let k = unsafe { *kernel } as u64;
        let mut guard = lazy();
        if let Some(l) = guard.as_mut().filter(|l| l.libraries.contains_key(&(library as u64))) {
            l.kernels.insert(k, library as u64);
            // The value may have named something else before.
            let _ = slot(k).compare_exchange(k, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    rc
}

/// # Safety
/// `cuLibraryGetModule`'s contract.
pub unsafe fn library_get_module(module: *mut CUmodule, library: CUlibrary) -> CUresult {
    let f = real!(cuLibraryGetModule);
    if let Err(rc) = use_library(library as u64) {
        return rc;
    }
    // SAFETY: forwarded unchanged.
    unsafe { f(module, library) }
}

/// # Safety
/// `cuKernelGetFunction`'s contract.
pub unsafe fn kernel_get_function(function: *mut CUfunction, kernel: CUkernel) -> CUresult {
    let f = real!(cuKernelGetFunction);
    if ANY.load(Ordering::Acquire) {
        let known = lazy().as_ref().and_then(|l| l.kernels.get(&(kernel as u64)).copied());
        let library = known.or_else(|| {
            let get = cuda().cuKernelGetLibrary?;
            let mut lib: CUlibrary = std::ptr::null_mut();
            // SAFETY: real driver call with a valid out pointer.
            (unsafe { get(&mut lib, kernel) } == CUDA_SUCCESS).then_some(lib as u64)
        });
        if let Some(library) = library
            && let Err(rc) = use_library(library)
        {
            return rc;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { f(function, kernel) }
}

/// # Safety
/// `cuLibraryGetGlobal`'s contract.
pub unsafe fn library_get_global(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    library: CUlibrary,
    name: *const c_char,
) -> CUresult {
    let f = real!(cuLibraryGetGlobal);
    if let Err(rc) = use_library(library as u64) {
        return rc;
    }
    // SAFETY: forwarded unchanged.
    unsafe { f(dptr, bytes, library, name) }
}

/// # Safety
/// `cuLibraryGetManaged`'s contract.
pub unsafe fn library_get_managed(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    library: CUlibrary,
    name: *const c_char,
) -> CUresult {
    let f = real!(cuLibraryGetManaged);
    if let Err(rc) = use_library(library as u64) {
        return rc;
    }
    // SAFETY: forwarded unchanged.
    unsafe { f(dptr, bytes, library, name) }
}
