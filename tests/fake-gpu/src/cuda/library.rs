//! Libraries and kernels (CUDA 12's context-independent modules), which NVIDIA's runtime
//! loads its registered fat binaries as, and function and kernel queries. Declared with
//! [`driver_api!`] like every export; the bookkeeping is [`modules`](super::modules)'.

use std::ffi::{c_char, c_int, c_uint, c_void};

use super::error::{self, INVALID_VALUE};
use super::ffi::{Out, c_str};
use super::image;
use super::modules;
use super::proc_address::driver_api;
use super::types::{
    CU_FUNC_CACHE_PREFER_EQUAL, CU_FUNCTION_LOADING_STATE_LOADED, CUdevice, CUfunc_cache, CUfunction,
    CUfunction_attribute, CUfunctionLoadingState, CUjit_option, CUkernel, CUlibrary, CUlibraryOption, CUmodule,
};
use super::{context, device, driver};

driver_api! {
    /// Any non-null image loads, as with `cuModuleLoadData`; JIT and library options are
    /// accepted and ignored.
    fn cuLibraryLoadData(
        library: *mut CUlibrary,
        code: *const c_void,
        _jit_options: *mut CUjit_option,
        _jit_options_values: *mut *mut c_void,
        _num_jit_options: c_uint,
        _library_options: *mut CUlibraryOption,
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
    fn cuLibraryUnload(library: CUlibrary) { driver()?.lock().modules.unload_library(library as usize) }

    /// A kernel the library provides, or `CUDA_ERROR_NOT_FOUND`; the same handle each time.
    fn cuLibraryGetKernel(kernel: *mut CUkernel, library: CUlibrary, name: *const c_char) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(kernel) }?;
        // SAFETY: as above.
        let name = unsafe { c_str(name) }?.to_str().map_err(|_| error::NOT_FOUND)?;
        out.set(driver()?.lock().modules.library_kernel(library as usize, name)? as CUkernel);
        Ok(())
    }

    /// The library loaded in the current context.
    fn cuLibraryGetModule(module: *mut CUmodule, library: CUlibrary) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(module) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        out.set(reg.modules.library_module(library as usize, ctx)? as CUmodule);
        Ok(())
    }

    /// The kernel's function in the current context (its library is loaded there on first use).
    fn cuKernelGetFunction(function: *mut CUfunction, kernel: CUkernel) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(function) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        out.set(reg.modules.kernel_function(kernel as usize, ctx)? as CUfunction);
        Ok(())
    }
    fn cuKernelGetLibrary(library: *mut CUlibrary, kernel: CUkernel) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(library) }?;
        out.set(driver()?.lock().modules.library_of(kernel as usize)? as CUlibrary);
        Ok(())
    }

    /// The name it was asked for by; valid while the kernel is.
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
    fn cuKernelGetAttribute(pi: *mut c_int, attrib: CUfunction_attribute, kernel: CUkernel, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pi) }?;
        let d = driver()?;
        device::gpu(d.sim, dev)?;
        d.lock().modules.kernel_name(kernel as usize)?;
        out.set(modules::attribute(attrib)?);
        Ok(())
    }

    /// Accepted for the attributes a program may set, and ignored.
    fn cuKernelSetAttribute(attrib: CUfunction_attribute, val: c_int, kernel: CUkernel, dev: CUdevice) {
        let d = driver()?;
        device::gpu(d.sim, dev)?;
        d.lock().modules.kernel_name(kernel as usize)?;
        modules::check_settable(attrib, val)
    }

    /// Accepted and ignored.
    fn cuKernelSetCacheConfig(kernel: CUkernel, config: CUfunc_cache, dev: CUdevice) {
        let d = driver()?;
        device::gpu(d.sim, dev)?;
        d.lock().modules.kernel_name(kernel as usize)?;
        if config <= CU_FUNC_CACHE_PREFER_EQUAL { Ok(()) } else { Err(INVALID_VALUE) }
    }

    /// An H100's answers for a small kernel (no shared, constant or local memory, 32
    /// registers); `busy` and other kernels alike.
    fn cuFuncGetAttribute(pi: *mut c_int, attrib: CUfunction_attribute, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pi) }?;
        driver()?.lock().modules.function_name(hfunc as usize)?;
        out.set(modules::attribute(attrib)?);
        Ok(())
    }

    /// Accepted for the attributes a program may set, and ignored.
    fn cuFuncSetAttribute(hfunc: CUfunction, attrib: CUfunction_attribute, value: c_int) {
        driver()?.lock().modules.function_name(hfunc as usize)?;
        modules::check_settable(attrib, value)
    }

    /// Accepted and ignored.
    fn cuFuncSetCacheConfig(hfunc: CUfunction, config: CUfunc_cache) {
        driver()?.lock().modules.function_name(hfunc as usize)?;
        if config <= CU_FUNC_CACHE_PREFER_EQUAL { Ok(()) } else { Err(INVALID_VALUE) }
    }
    fn cuFuncGetModule(hmod: *mut CUmodule, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(hmod) }?;
        out.set(driver()?.lock().modules.module_of(hfunc as usize)? as CUmodule);
        Ok(())
    }
    fn cuFuncGetName(name: *mut *const c_char, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(name) }?;
        let reg = driver()?.lock();
        reg.modules.function_name(hfunc as usize)?;
        out.set(reg.modules.c_name(hfunc as usize)?);
        Ok(())
    }

    /// Whether the function's module is loaded: always, here.
    fn cuFuncIsLoaded(state: *mut CUfunctionLoadingState, hfunc: CUfunction) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(state) }?;
        driver()?.lock().modules.function_name(hfunc as usize)?;
        out.set(CU_FUNCTION_LOADING_STATE_LOADED);
        Ok(())
    }
    fn cuFuncLoad(hfunc: CUfunction) { driver()?.lock().modules.function_name(hfunc as usize).map(drop) }

}
