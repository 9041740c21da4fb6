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
    CU_FUNC_CACHE_PREFER_EQUAL, CU_FUNCTION_LOADING_STATE_LOADED, CUdevice, CUdeviceptr, CUfunc_cache, CUfunction,
    CUfunction_attribute, CUfunctionLoadingState, CUjit_option, CUkernel, CUlibrary, CUlibraryOption, CUmodule,
};
use super::{context, device, driver};

/// A module file's bytes with a NUL after them (PTX is text), or `CUDA_ERROR_FILE_NOT_FOUND`.
fn read_image(path: &std::ffi::CStr) -> error::CuResult<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut bytes = std::fs::read(std::ffi::OsStr::from_bytes(path.to_bytes())).map_err(|_| error::FILE_NOT_FOUND)?;
    bytes.push(0);
    Ok(bytes)
}

/// Writes a variable's address and size where the caller asked for them (null: not asked).
fn write_global(dptr: *mut CUdeviceptr, bytes: *mut usize, addr: u64, size: u64) {
    if !dptr.is_null() {
        // SAFETY: non-null, so writable per the export's contract.
        unsafe { dptr.write_unaligned(addr) };
    }
    if !bytes.is_null() {
        // SAFETY: as above.
        unsafe { bytes.write_unaligned(size as usize) };
    }
}

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
        let (bytes, deferred) = modules::library_reservation(code);
        let mut reg = d.lock();
        let l = reg.modules.load_library(kernels, bytes, deferred);
        reg.modules.set_globals(l, modules::image_globals(code, false));
        out.set(l as CUlibrary);
        Ok(())
    }

    /// As `cuLibraryLoadData`, with the image read from a file.
    fn cuLibraryLoadFromFile(
        library: *mut CUlibrary,
        file_name: *const c_char,
        _jit_options: *mut CUjit_option,
        _jit_options_values: *mut *mut c_void,
        _num_jit_options: c_uint,
        _library_options: *mut CUlibraryOption,
        _library_option_values: *mut *mut c_void,
        _num_library_options: c_uint,
    ) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(library) }?;
        // SAFETY: null or a C string per the export's contract.
        let image = read_image(unsafe { c_str(file_name) }?)?;
        let code = image.as_ptr().cast::<c_void>();
        // SAFETY: the file's bytes, NUL-terminated, alive for the call.
        let kernels = unsafe { image::kernels(code) };
        let (bytes, deferred) = modules::library_reservation(code);
        let mut reg = driver()?.lock();
        let l = reg.modules.load_library(kernels, bytes, deferred);
        reg.modules.set_globals(l, modules::image_globals(code, false));
        out.set(l as CUlibrary);
        Ok(())
    }

    /// As `cuModuleLoadData`; JIT options are accepted and ignored.
    fn cuModuleLoadDataEx(
        module: *mut CUmodule,
        image: *const c_void,
        _num_options: c_uint,
        _options: *mut CUjit_option,
        _option_values: *mut *mut c_void,
    ) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(module) }?;
        // SAFETY: null or an image per the export's contract.
        out.set(unsafe { modules::load_module(image) }? as CUmodule);
        Ok(())
    }

    /// As `cuModuleLoadData`, for a fat binary.
    fn cuModuleLoadFatBinary(module: *mut CUmodule, fat_cubin: *const c_void) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(module) }?;
        // SAFETY: null or an image per the export's contract.
        out.set(unsafe { modules::load_module(fat_cubin) }? as CUmodule);
        Ok(())
    }

    /// As `cuModuleLoadData`, with the image read from a file (`CUDA_ERROR_FILE_NOT_FOUND` if
    /// it cannot be read).
    fn cuModuleLoad(module: *mut CUmodule, fname: *const c_char) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(module) }?;
        // SAFETY: null or a C string per the export's contract.
        let image = read_image(unsafe { c_str(fname) }?)?;
        // SAFETY: the file's bytes, NUL-terminated, alive for the call.
        out.set(unsafe { modules::load_module(image.as_ptr().cast()) }? as CUmodule);
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
        let device = Some(context::device_state(&reg, ctx)?);
        out.set(reg.modules.library_module(library as usize, ctx, device)? as CUmodule);
        Ok(())
    }

    /// The address and size of a `__device__` or `__constant__` variable of the module
    /// (`CUDA_ERROR_NOT_FOUND` if its image declares none of that name); either output may be
    /// null.
    fn cuModuleGetGlobal_v2(dptr: *mut CUdeviceptr, bytes: *mut usize, hmod: CUmodule, name: *const c_char) {
        // SAFETY: null or a C string per the export's contract.
        let name = unsafe { c_str(name) }?.to_str().map_err(|_| error::NOT_FOUND)?;
        let (addr, size) = driver()?.lock().modules.global(hmod as usize, name)?;
        write_global(dptr, bytes, addr, size);
        Ok(())
    }

    /// As `cuModuleGetGlobal_v2`, for the library's module in the current context (loaded
    /// there on first use).
    fn cuLibraryGetGlobal(dptr: *mut CUdeviceptr, bytes: *mut usize, library: CUlibrary, name: *const c_char) {
        // SAFETY: null or a C string per the export's contract.
        let name = unsafe { c_str(name) }?.to_str().map_err(|_| error::NOT_FOUND)?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        let device = Some(context::device_state(&reg, ctx)?);
        let module = reg.modules.library_module(library as usize, ctx, device)?;
        let (addr, size) = reg.modules.global(module, name)?;
        write_global(dptr, bytes, addr, size);
        Ok(())
    }

    /// The kernel's function in the current context (its library is loaded there on first use).
    fn cuKernelGetFunction(function: *mut CUfunction, kernel: CUkernel) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(function) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        let device = Some(context::device_state(&reg, ctx)?);
        out.set(reg.modules.kernel_function(kernel as usize, ctx, device)? as CUfunction);
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
