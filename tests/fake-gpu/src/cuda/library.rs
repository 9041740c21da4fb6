//! Libraries and kernels (CUDA 12's context-independent modules), which NVIDIA's runtime
//! loads its registered fat binaries as, and function and kernel queries. Declared with
//! [`driver_api!`] like every export; the bookkeeping is [`modules`](super::modules)'.

use std::ffi::{c_char, c_int, c_uint, c_void};

use super::error::{self, INVALID_VALUE};
use super::ffi::{Out, c_str};
use super::image;
use super::modules;
use super::proc_address::driver_api;
use super::types::{CUcontext, CUdevice, CUfunction, CUmodule};
use super::{context, device, driver};

/// `CUlibrary`, `CUkernel`: opaque handles.
pub type CUlibrary = *mut c_void;
pub type CUkernel = *mut c_void;

driver_api! {
    /// Any non-null image loads, as with `cuModuleLoadData`; JIT and library options are
    /// accepted and ignored.
    #[proc("cuLibraryLoadData", 12000)]
    fn cuLibraryLoadData(
        library: *mut CUlibrary,
        code: *const c_void,
        _jit_options: *mut c_int,
        _jit_options_values: *mut *mut c_void,
        _num_jit_options: c_uint,
        _library_options: *mut c_int,
        _library_option_values: *mut *mut c_void,
        _num_library_options: c_uint,
    ) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(library) }?;
        if code.is_null() {
            return Err(INVALID_VALUE);
        }
        let d = driver()?;
        // SAFETY: a non-null image per the export's contract.
        let kernels = unsafe { image::kernels(code) };
        out.set(d.lock().modules.load_library(kernels) as CUlibrary);
        Ok(())
    }

    /// Its kernels, and its modules in every context, go with it.
    #[proc("cuLibraryUnload", 12000)]
    fn cuLibraryUnload(library: CUlibrary) { driver()?.lock().modules.unload_library(library as usize) }

    /// A kernel the library provides, or `CUDA_ERROR_NOT_FOUND`; the same handle each time.
    #[proc("cuLibraryGetKernel", 12000)]
    fn cuLibraryGetKernel(kernel: *mut CUkernel, library: CUlibrary, name: *const c_char) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(kernel) }?;
        // SAFETY: as above.
        let name = unsafe { c_str(name) }?.to_str().map_err(|_| error::NOT_FOUND)?;
        out.set(driver()?.lock().modules.library_kernel(library as usize, name)? as CUkernel);
        Ok(())
    }

    /// The library loaded in the current context.
    #[proc("cuLibraryGetModule", 12000)]
    fn cuLibraryGetModule(module: *mut CUmodule, library: CUlibrary) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(module) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        out.set(reg.modules.library_module(library as usize, ctx)? as CUmodule);
        Ok(())
    }

    /// The kernel's function in the current context (its library is loaded there on first use).
    #[proc("cuKernelGetFunction", 12000)]
    fn cuKernelGetFunction(function: *mut CUfunction, kernel: CUkernel) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(function) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        out.set(reg.modules.kernel_function(kernel as usize, ctx)? as CUfunction);
        Ok(())
    }

    #[proc("cuKernelGetLibrary", 12050)]
    fn cuKernelGetLibrary(library: *mut CUlibrary, kernel: CUkernel) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(library) }?;
        out.set(driver()?.lock().modules.library_of(kernel as usize)? as CUlibrary);
        Ok(())
    }

    /// The name it was asked for by; valid while the kernel is.
    #[proc("cuKernelGetName", 12030)]
    fn cuKernelGetName(name: *mut *const c_char, kernel: CUkernel) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(name) }?;
        let reg = driver()?.lock();
        if !reg.modules.is_kernel(kernel as usize) {
            return Err(error::INVALID_HANDLE);
        }
        out.set(reg.modules.c_name(kernel as usize)?);
        Ok(())
    }

    /// As `cuFuncGetAttribute`, for the kernel on `dev`.
    #[proc("cuKernelGetAttribute", 12000)]
    fn cuKernelGetAttribute(pi: *mut c_int, attrib: c_int, kernel: CUkernel, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pi) }?;
        let d = driver()?;
        device::gpu(d.sim, dev)?;
        d.lock().modules.kernel_name(kernel as usize)?;
        out.set(modules::attribute(attrib)?);
        Ok(())
    }

    /// Accepted for the attributes a program may set, and ignored.
    #[proc("cuKernelSetAttribute", 12000)]
    fn cuKernelSetAttribute(attrib: c_int, val: c_int, kernel: CUkernel, dev: CUdevice) {
        let d = driver()?;
        device::gpu(d.sim, dev)?;
        d.lock().modules.kernel_name(kernel as usize)?;
        modules::check_settable(attrib, val)
    }

    /// Accepted and ignored.
    #[proc("cuKernelSetCacheConfig", 12000)]
    fn cuKernelSetCacheConfig(kernel: CUkernel, config: c_int, dev: CUdevice) {
        let d = driver()?;
        device::gpu(d.sim, dev)?;
        d.lock().modules.kernel_name(kernel as usize)?;
        if (0..=3).contains(&config) { Ok(()) } else { Err(INVALID_VALUE) }
    }

    /// An H100's answers for a small kernel (no shared, constant or local memory, 32
    /// registers); `busy` and other kernels alike.
    #[proc("cuFuncGetAttribute", 2020)]
    fn cuFuncGetAttribute(pi: *mut c_int, attrib: c_int, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pi) }?;
        driver()?.lock().modules.function_name(hfunc as usize)?;
        out.set(modules::attribute(attrib)?);
        Ok(())
    }

    /// Accepted for the attributes a program may set, and ignored.
    #[proc("cuFuncSetAttribute", 9000)]
    fn cuFuncSetAttribute(hfunc: CUfunction, attrib: c_int, value: c_int) {
        driver()?.lock().modules.function_name(hfunc as usize)?;
        modules::check_settable(attrib, value)
    }

    /// Accepted and ignored.
    #[proc("cuFuncSetCacheConfig", 3000)]
    fn cuFuncSetCacheConfig(hfunc: CUfunction, config: c_int) {
        driver()?.lock().modules.function_name(hfunc as usize)?;
        if (0..=3).contains(&config) { Ok(()) } else { Err(INVALID_VALUE) }
    }

    #[proc("cuFuncGetModule", 11000)]
    fn cuFuncGetModule(hmod: *mut CUmodule, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(hmod) }?;
        out.set(driver()?.lock().modules.module_of(hfunc as usize)? as CUmodule);
        Ok(())
    }

    #[proc("cuFuncGetName", 12030)]
    fn cuFuncGetName(name: *mut *const c_char, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(name) }?;
        let reg = driver()?.lock();
        reg.modules.function_name(hfunc as usize)?;
        out.set(reg.modules.c_name(hfunc as usize)?);
        Ok(())
    }

    /// Whether the function's module is loaded: always, here (1 = `CU_FUNCTION_LOADING_STATE_LOADED`).
    #[proc("cuFuncIsLoaded", 12040)]
    fn cuFuncIsLoaded(state: *mut c_int, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(state) }?;
        driver()?.lock().modules.function_name(hfunc as usize)?;
        out.set(1);
        Ok(())
    }

    #[proc("cuFuncLoad", 12040)]
    fn cuFuncLoad(hfunc: CUfunction) { driver()?.lock().modules.function_name(hfunc as usize).map(drop) }

    /// The context a function's module was loaded in.
    #[proc("cuFuncGetContext", 12080)]
    fn cuFuncGetContext(ctx: *mut CUcontext, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ctx) }?;
        out.set(driver()?.lock().modules.context_of(hfunc as usize).ok_or(error::INVALID_HANDLE)? as CUcontext);
        Ok(())
    }
}
