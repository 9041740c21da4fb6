//! Device memory the driver reserves outside allocations: a context's limits, loaded modules
//! and libraries, and contexts made other ways than `cuCtxCreate` (green contexts). Each is
//! charged before the driver is called, by the model in [`gpuslice_core::reservations`]
//! (computed here from the call's own arguments and the image it is given, never asked of the
//! driver), and refused with `CUDA_ERROR_OUT_OF_MEMORY` past the slice's limit.
//!
//! - **Limits** (`cuCtxSetLimit`: stack size × resident threads, printf FIFO, malloc heap): the
//!   charge is what the new value reserves beyond the value the context had when the shim first
//!   saw the limit set (that one's reservation is part of the context's own charge), recorded
//!   per context and limit; raising charges the difference, lowering returns it, and the record
//!   goes with its context (destroy, reset, last release).
//! - **Modules** (`cuModuleLoad`, `cuModuleLoadData`, `cuModuleLoadDataEx`,
//!   `cuModuleLoadFatBinary`): charged at load, with the context current then; returned on
//!   `cuModuleUnload` or with the context.
//! - **Libraries** (`cuLibraryLoadData`, `cuLibraryLoadFromFile`): charged (compressed entries
//!   not decompressed: [`reservations::library_estimate`]; those are charged at the library's
//!   first use, [`super::lazylib`]) once at load, before
//!   any context loads them (a lazy load then never runs the slice past its limit), returned
//!   on `cuLibraryUnload`; to the current context's slice, or with none current (NVIDIA's
//!   runtime loads its registered fat binaries before it makes a context current) to the
//!   process's first slice. A library used in several contexts takes its memory in each on a
//!   real driver; it is charged once here.
//! - **Green contexts** (`cuGreenCtxCreate`): a context's charge, recorded under the context
//!   `cuCtxFromGreenCtx` names, so what is allocated in it goes with it on `cuGreenCtxDestroy`.

use std::ffi::{c_char, c_uint, c_void};
use std::path::{Path, PathBuf};

use gpuslice_core::reservations::{self, Deferral, Residency};

use super::*;
use crate::memory::lazylib;

/// Limit settings of this process: the value each (context, limit) had before the shim first
/// saw it set, read again once the context's record is gone (a new or reset context starts at
/// its default). Its lock is held across `cuCtxSetLimit` (only: no other call waits for it),
/// so that concurrent sets charge in the order the driver applies them.
static LIMITS: std::sync::Mutex<Option<HashMap<(u64, CUlimit), u64>>> = std::sync::Mutex::new(None);

fn base_of(bases: &mut HashMap<(u64, CUlimit), u64>, ctx: u64, limit: CUlimit, fresh: bool) -> Option<u64> {
    if let (Some(&v), false) = (bases.get(&(ctx, limit)), fresh) {
        return Some(v);
    }
    let f = cuda().cuCtxGetLimit?;
    let mut value = 0usize;
    // SAFETY: real driver call with a valid out pointer.
    if unsafe { f(&mut value, limit) } != CUDA_SUCCESS {
        return None;
    }
    bases.insert((ctx, limit), value as u64);
    Some(value as u64)
}

fn attribute(attr: CUdevice_attribute, dev: CUdevice) -> Option<u64> {
    let f = cuda().cuDeviceGetAttribute?;
    let mut v = 0i32;
    // SAFETY: real driver call with a valid out pointer.
    (unsafe { f(&mut v, attr, dev) } == CUDA_SUCCESS && v > 0).then_some(v as u64)
}

/// SMs × threads per SM of `dev`: the threads a stack is reserved for.
fn residency(dev: CUdevice) -> Residency {
    Residency {
        sm_count: attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev).unwrap_or(1),
        threads_per_sm: attribute(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, dev).unwrap_or(2048),
    }
}

/// # Safety
/// `cuCtxSetLimit`'s contract.
pub unsafe fn ctx_set_limit(limit: CUlimit, value: usize) -> CUresult {
    let f = real!(cuCtxSetLimit);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(limit, value) };
    if reservations::limit_bytes(limit, 0, Residency { sm_count: 1, threads_per_sm: 1 }).is_none() {
        return pass();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, current_device(), pass());
    let ctx = current_context();
    if ctx == 0 {
        return pass();
    }
    let key = (Kind::Limit(limit), ctx);
    let mut limits = LIMITS.lock().unwrap_or_else(|p| p.into_inner());
    let bases = limits.get_or_insert_with(HashMap::new);
    let old = book(s).charges.get(&key).copied();
    let Some(base) = base_of(bases, ctx, limit, old.is_none()) else { return pass() };
    let Some(new) = reservations::limit_extra(limit, base, value as u64, residency(dev)) else { return pass() };
    let old_bytes = old.map_or(0, |c| c.bytes);
    if new > old_bytes
        && let Err(r) = charge(s, slice, new - old_bytes)
    {
        crate::log::log!(Info, "cuCtxSetLimit({limit}, {value}) refused: it reserves {new} bytes beyond the default");
        return r.into();
    }
    let rc = pass();
    if rc != CUDA_SUCCESS {
        if new > old_bytes {
            s.slices[slice].uncharge(new - old_bytes);
        }
        return rc;
    }
    if new < old_bytes {
        s.slices[slice].uncharge(old_bytes - new);
    }
    book(s).charges.insert(key, Charge { slice, bytes: new, pool: None, ctx });
    rc
}

/// Charges a module image's reservation to the current context's slice, loads it (`call`)
/// and records the charge under the module (or library, `kind`) the driver returns: the
/// context's for a module, no context's for a library.
///
/// # Safety
/// `out` is null or where the driver writes the handle on success.
unsafe fn loading(out: *mut *mut c_void, kind: Kind, bytes: u64, call: impl FnOnce() -> CUresult) -> CUresult {
    if out.is_null() || bytes == 0 {
        return call();
    }
    let s = state();
    let slice = match current_device() {
        Some(dev) => slice_or_pass!(s, Some(dev), call()).0,
        // A library belongs to no context, and NVIDIA's runtime loads the fat binaries it has
        // registered before it makes one current: the process's (first) slice.
        None if kind == Kind::Library && !s.slices.is_empty() => {
            if let Err(r) = s.check_broken() {
                return r.into();
            }
            0
        }
        None => return call(),
    };
    let ctx = if kind == Kind::Module { current_context() } else { 0 };
    crate::log::log!(Debug, "{kind:?} load: charging {bytes} bytes");
    // SAFETY: the driver wrote the handle on success.
    charged(s, slice, bytes, ctx, call, || Some((kind, unsafe { *out } as u64)))
}

/// What a module (`kind` [`Kind::Module`]) or library image reserves: a library's compressed
/// entries are not decompressed ([`reservations::library_estimate`]).
fn image_bytes(image: *const c_void, kind: Kind) -> u64 {
    let estimate = match kind {
        Kind::Library => reservations::library_estimate,
        _ => reservations::module_estimate,
    };
    if image.is_null() { 0 } else { counted(estimate(image as usize, &reservations::OwnMemory)) }
}

/// An estimate's bytes, with one line for the compressed entries it could not decode (they
/// count nothing; the driver refuses them too unless they decode on its side).
pub(super) fn counted(e: reservations::Estimate) -> u64 {
    if e.undecoded > 0 {
        crate::log::log!(
            Warn,
            "module image: {} compressed entries did not decode within {} MiB; charging {} bytes without them",
            e.undecoded,
            reservations::MAX_DECOMPRESSED >> 20,
            e.bytes
        );
    }
    e.bytes
}

/// The bytes of a module file, if it is a regular file of at most 4 GiB the shim can read
/// (otherwise the driver's answer stands, uncharged: it reads the same file).
fn file_bytes(name: *const c_char, kind: Kind) -> u64 {
    file_image(name).map_or(0, |(_, b)| {
        counted(match kind {
            Kind::Library => reservations::library_estimate_of(&b),
            _ => reservations::module_estimate_of(&b),
        })
    })
}

/// The bytes of a module file, NUL-terminated, if it is a regular file of at most 4 GiB the
/// shim can read.
fn file_image(name: *const c_char) -> Option<(PathBuf, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    if name.is_null() {
        return None;
    }
    // SAFETY: a C string per the driver function's contract.
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes()));
    read_file(&path).map(|b| (path, b))
}

/// A library file's bytes (at most 4 GiB), NUL-terminated.
pub(super) fn read_file(path: &Path) -> Option<Vec<u8>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() <= 4 << 30 => std::fs::read(path).ok().map(|mut b| {
            b.push(0);
            b
        }),
        _ => None,
    }
}

/// What a library's load charges: its uncompressed entries, or with `CUDA_MODULE_LOADING=EAGER`
/// or a fat binary too large to keep, everything at once (the [`Kind`] whose estimate counts);
/// and what waits for its first use.
fn library_deferral(deferral: Deferral) -> (Kind, Deferral) {
    match deferral {
        _ if lazylib::eager() => (Kind::Module, Deferral::Nothing),
        Deferral::TooLarge => (Kind::Module, Deferral::Nothing),
        d => (Kind::Library, d),
    }
}

/// After a library's load (`rc`, the handle in `library`): its compressed entries (`deferral`,
/// [`reservations::deferred_image`]) wait for its first use ([`lazylib`]); `file`: the library
/// file and where its bytes were when fingerprinted, for `cuLibraryLoadFromFile`.
///
/// # Safety
/// `library` is null or where the driver wrote the handle on success.
unsafe fn deferring(
    rc: CUresult,
    library: *mut CUlibrary,
    deferral: Deferral,
    file: Option<(PathBuf, usize)>,
) -> CUresult {
    if rc == CUDA_SUCCESS
        && !library.is_null()
        && let Deferral::Kept(print) = deferral
        && crate::state::active()
    {
        // SAFETY: the driver wrote the handle on success.
        lazylib::defer(unsafe { *library } as u64, print, file);
    }
    rc
}

/// # Safety
/// `cuModuleLoadData`'s contract.
pub unsafe fn module_load_data(module: *mut CUmodule, image: *const c_void) -> CUresult {
    let f = real!(cuModuleLoadData);
    // SAFETY: forwarded unchanged; `module` is where the driver writes the handle.
    unsafe { loading(module.cast(), Kind::Module, image_bytes(image, Kind::Module), || f(module, image)) }
}

/// # Safety
/// `cuModuleLoadDataEx`'s contract.
pub unsafe fn module_load_data_ex(
    module: *mut CUmodule,
    image: *const c_void,
    n: c_uint,
    options: *mut CUjit_option,
    values: *mut *mut c_void,
) -> CUresult {
    let f = real!(cuModuleLoadDataEx);
    // SAFETY: forwarded unchanged; `module` is where the driver writes the handle.
    unsafe {
        loading(module.cast(), Kind::Module, image_bytes(image, Kind::Module), || f(module, image, n, options, values))
    }
}

/// # Safety
/// `cuModuleLoadFatBinary`'s contract.
pub unsafe fn module_load_fat_binary(module: *mut CUmodule, fat: *const c_void) -> CUresult {
    let f = real!(cuModuleLoadFatBinary);
    // SAFETY: forwarded unchanged; `module` is where the driver writes the handle.
    unsafe { loading(module.cast(), Kind::Module, image_bytes(fat, Kind::Module), || f(module, fat)) }
}

/// # Safety
/// `cuModuleLoad`'s contract.
pub unsafe fn module_load(module: *mut CUmodule, fname: *const c_char) -> CUresult {
    let f = real!(cuModuleLoad);
    // SAFETY: forwarded unchanged; `module` is where the driver writes the handle.
    unsafe { loading(module.cast(), Kind::Module, file_bytes(fname, Kind::Module), || f(module, fname)) }
}

/// # Safety
/// `cuModuleUnload`'s contract.
pub unsafe fn module_unload(module: CUmodule) -> CUresult {
    let f = real!(cuModuleUnload);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(module) };
    if !crate::state::active() {
        return pass();
    }
    freeing(state(), (Kind::Module, module as u64), pass)
}

/// # Safety
/// `cuLibraryLoadData`'s contract.
#[allow(clippy::too_many_arguments)]
pub unsafe fn library_load_data(
    library: *mut CUlibrary,
    code: *const c_void,
    jit_options: *mut CUjit_option,
    jit_values: *mut *mut c_void,
    n_jit: c_uint,
    library_options: *mut CUlibraryOption,
    library_values: *mut *mut c_void,
    n_library: c_uint,
) -> CUresult {
    let f = real!(cuLibraryLoadData);
    let found = if code.is_null() {
        Deferral::Nothing
    } else {
        reservations::deferred_image(code as usize, &reservations::OwnMemory)
    };
    let (estimate, fat) = library_deferral(found);
    // SAFETY: forwarded unchanged; `library` is where the driver writes the handle.
    let rc = unsafe {
        loading(library.cast(), Kind::Library, image_bytes(code, estimate), || {
            f(library, code, jit_options, jit_values, n_jit, library_options, library_values, n_library)
        })
    };
    // SAFETY: as above.
    unsafe { deferring(rc, library, fat, None) }
}

/// # Safety
/// `cuLibraryLoadFromFile`'s contract.
#[allow(clippy::too_many_arguments)]
pub unsafe fn library_load_from_file(
    library: *mut CUlibrary,
    name: *const c_char,
    jit_options: *mut CUjit_option,
    jit_values: *mut *mut c_void,
    n_jit: c_uint,
    library_options: *mut CUlibraryOption,
    library_values: *mut *mut c_void,
    n_library: c_uint,
) -> CUresult {
    let f = real!(cuLibraryLoadFromFile);
    let image = file_image(name);
    let (estimate, fat) =
        library_deferral(image.as_ref().map_or(Deferral::Nothing, |(_, b)| reservations::deferred_image_of(b)));
    let file = image.as_ref().map(|(path, b)| (path.clone(), b.as_ptr() as usize));
    let bytes = image.map_or(0, |(_, b)| {
        counted(match estimate {
            Kind::Library => reservations::library_estimate_of(&b),
            _ => reservations::module_estimate_of(&b),
        })
    });
    // SAFETY: forwarded unchanged; `library` is where the driver writes the handle.
    let rc = unsafe {
        loading(library.cast(), Kind::Library, bytes, || {
            f(library, name, jit_options, jit_values, n_jit, library_options, library_values, n_library)
        })
    };
    // SAFETY: as above.
    unsafe { deferring(rc, library, fat, file) }
}

/// # Safety
/// `cuLibraryUnload`'s contract.
pub unsafe fn library_unload(library: CUlibrary) -> CUresult {
    let f = real!(cuLibraryUnload);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(library) };
    if !crate::state::active() {
        return pass();
    }
    let s = state();
    let rc = freeing(s, (Kind::Library, library as u64), || freeing(s, (Kind::LazyLibrary, library as u64), pass));
    if rc == CUDA_SUCCESS {
        lazylib::unloaded(library as u64);
    }
    rc
}

/// A green context is charged as a context; its charge, and those of what is allocated in it,
/// go with the context `cuCtxFromGreenCtx` names for it.
///
/// # Safety
/// `cuGreenCtxCreate`'s contract.
pub unsafe fn green_ctx_create(
    green: *mut CUgreenCtx,
    desc: CUdevResourceDesc,
    dev: CUdevice,
    flags: c_uint,
) -> CUresult {
    let f = real!(cuGreenCtxCreate);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(green, desc, dev, flags) };
    if green.is_null() {
        return pass();
    }
    let s = state();
    let (slice, _) = slice_or_pass!(s, Some(dev), pass());
    if let Err(r) = charge(s, slice, CONTEXT_CHARGE) {
        return r.into();
    }
    let rc = pass();
    if rc != CUDA_SUCCESS {
        s.slices[slice].uncharge(CONTEXT_CHARGE);
        return rc;
    }
    // SAFETY: the driver wrote the green context on success.
    let handle = unsafe { *green };
    let mut ctx: CUcontext = std::ptr::null_mut();
    let named = cuda().cuCtxFromGreenCtx.is_some_and(|from| {
        // SAFETY: real driver call with a valid out pointer and the handle it just returned.
        unsafe { from(&mut ctx, handle) == CUDA_SUCCESS }
    });
    let ctx = if named { ctx as u64 } else { handle as u64 };
    record(s, (Kind::Green, handle as u64), Charge { slice, bytes: CONTEXT_CHARGE, pool: None, ctx });
    rc
}

/// # Safety
/// `cuGreenCtxDestroy`'s contract.
pub unsafe fn green_ctx_destroy(green: CUgreenCtx) -> CUresult {
    let f = real!(cuGreenCtxDestroy);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(green) };
    if !crate::state::active() {
        return pass();
    }
    let s = state();
    let ctx = book(s).charges.get(&(Kind::Green, green as u64)).map_or(0, |c| c.ctx);
    if ctx == 0 {
        return freeing(s, (Kind::Green, green as u64), pass);
    }
    destroying(s, ctx, pass)
}

#[cfg(test)]
mod tests {
    use crate::procaddr::choose;

    #[test]
    fn cu_get_proc_address_hands_out_the_wrappers_of_the_exact_symbols() {
        // Address 1 is no symbol of anything: the generated table decides.
        let name = |base: &str, v| choose(base.as_bytes(), 1, v, 0).map(|w| w.name);
        assert_eq!(name("cuCtxSetLimit", 3020), Some("cuCtxSetLimit"));
        assert_eq!(name("cuModuleLoadData", 2000), Some("cuModuleLoadData"));
        assert_eq!(name("cuModuleLoadDataEx", 12000), Some("cuModuleLoadDataEx"));
        assert_eq!(name("cuLibraryLoadData", 12000), Some("cuLibraryLoadData"));
        assert_eq!(name("cuLibraryLoadData", 11080), None, "before CUDA 12.0");
        assert_eq!(name("cuGreenCtxCreate", 12040), Some("cuGreenCtxCreate"));
        assert_eq!(name("cuGreenCtxCreate", 12030), None, "before CUDA 12.4");
    }
}
