//! Every exported CUDA driver function, declared once: the list below produces the symbols
//! and the `cuGetProcAddress` table ([`driver_api!`]). Each body turns raw pointers into
//! checked values (null → `CUDA_ERROR_INVALID_VALUE`) and calls the module that does the
//! work.

use std::ffi::{c_char, c_int, c_uchar, c_uint, c_void};

use super::error::{self, INVALID_VALUE};
use super::ffi::{Out, c_str, input, inputs, put_str};
use super::modules::{self, Params};
use super::proc_address::driver_api;
use super::types::*;
use super::{context, device, driver, graph, launch, memory, stream};

driver_api! {
    // ---- initialisation, versions, errors -----------------------------------------------

    #[export(before_init)]
    fn cuInit(flags: c_uint) { super::init(flags) }

    /// The config's `cuda_version`; works before `cuInit`.
    #[export(before_init)]
    fn cuDriverGetVersion(driver_version: *mut c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(driver_version) }?;
        out.set(super::driver_version()?);
        Ok(())
    }

    /// Unknown codes: `CUDA_ERROR_INVALID_VALUE` and `*p_str = NULL`.
    #[export(before_init)]
    fn cuGetErrorName(code: error::CUresult, p_str: *mut *const c_char) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(p_str) }?;
        let name = error::name(code);
        out.set(name.map_or(std::ptr::null(), |s| s.as_ptr()));
        name.map(drop).ok_or(INVALID_VALUE)
    }

    #[export(before_init)]
    fn cuGetErrorString(code: error::CUresult, p_str: *mut *const c_char) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(p_str) }?;
        let text = error::description(code);
        out.set(text.map_or(std::ptr::null(), |s| s.as_ptr()));
        text.map(drop).ok_or(INVALID_VALUE)
    }

    #[export(before_init)]
    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64) {
        // SAFETY: null or valid per the export's contract.
        let symbol = unsafe { c_str(symbol) };
        // SAFETY: as above.
        let pfn = unsafe { Out::new(pfn) };
        super::get_proc_address(symbol?, pfn?, cuda_version, flags, None)
    }

    /// `symbol_status` is optional.
    #[export(before_init)]
    fn cuGetProcAddress_v2(
        symbol: *const c_char,
        pfn: *mut *mut c_void,
        cuda_version: c_int,
        flags: u64,
        symbol_status: *mut CUdriverProcAddressQueryResult,
    ) {
        // SAFETY: null or valid per the export's contract.
        let symbol = unsafe { c_str(symbol) };
        // SAFETY: as above.
        let pfn = unsafe { Out::new(pfn) };
        // SAFETY: as above.
        let status = unsafe { Out::optional(symbol_status) };
        super::get_proc_address(symbol?, pfn?, cuda_version, flags, status)
    }

    // ---- devices --------------------------------------------------------------------------
    fn cuDeviceGetCount(count: *mut c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(count) }?;
        out.set(device::count(driver()?.sim));
        Ok(())
    }
    fn cuDeviceGet(dev: *mut CUdevice, ordinal: c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dev) }?;
        out.set(device::get(driver()?.sim, ordinal)?);
        Ok(())
    }

    /// Truncated to `len − 1` bytes and a NUL.
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) {
        let (gpu, _) = device::gpu(driver()?.sim, dev)?;
        // SAFETY: null or writable for `len` bytes per the export's contract.
        unsafe { put_str(name, len, &gpu.name) }
    }

    /// The UUID's 16 bytes, as in `GPU-<hex>`.
    fn cuDeviceGetUuid(uuid: *mut CUuuid, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(uuid) }?;
        out.set(CUuuid { bytes: device::gpu(driver()?.sim, dev)?.0.uuid_bytes().map(|b| b as c_char) });
        Ok(())
    }

    /// As `cuDeviceGetUuid` (which on a real MIG-enabled GPU differs: v2 names the MIG
    /// instance).
    fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice) {
        // SAFETY: same contract as this export's.
        super::code(unsafe { cuDeviceGetUuid(uuid, dev) })
    }

    /// `0000:19:00.0`, truncated to `len − 1` bytes.
    fn cuDeviceGetPCIBusId(pci_bus_id: *mut c_char, len: c_int, dev: CUdevice) {
        let (gpu, _) = device::gpu(driver()?.sim, dev)?;
        // SAFETY: null or writable for `len` bytes per the export's contract.
        unsafe { put_str(pci_bus_id, len, &device::pci_bus_id(gpu)) }
    }
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(bytes) }?;
        let (_, state) = device::gpu(driver()?.sim, dev)?;
        out.set(usize::try_from(state.total()).unwrap_or(usize::MAX));
        Ok(())
    }
    fn cuDeviceGetAttribute(pi: *mut c_int, attrib: CUdevice_attribute, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pi) }?;
        let (gpu, _) = device::gpu(driver()?.sim, dev)?;
        out.set(device::attribute(gpu, c_int::try_from(attrib).map_err(|_| INVALID_VALUE)?)?);
        Ok(())
    }
    fn cuDeviceGetDefaultMemPool(pool_out: *mut CUmemoryPool, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pool_out) }?;
        out.set(memory::default_pool(dev)? as CUmemoryPool);
        Ok(())
    }

    /// The current pool: the default one unless `cuDeviceSetMemPool` chose another.
    fn cuDeviceGetMemPool(pool: *mut CUmemoryPool, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pool) }?;
        out.set(memory::current_pool(dev)? as CUmemoryPool);
        Ok(())
    }

    /// A pool of that device becomes the one `cuMemAllocAsync` takes from.
    fn cuDeviceSetMemPool(dev: CUdevice, pool: CUmemoryPool) { memory::set_current_pool(dev, pool as usize) }

    // ---- contexts -------------------------------------------------------------------------
    fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pctx) }?;
        let d = driver()?;
        out.set(context::retain_primary(&mut d.lock(), d.sim, dev)? as CUcontext);
        Ok(())
    }

    fn cuDevicePrimaryCtxRelease(dev: CUdevice) { context::release_primary_with_destructors(driver()?, dev) }
    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) { context::release_primary_with_destructors(driver()?, dev) }
    fn cuDevicePrimaryCtxReset(dev: CUdevice) { context::reset_primary_with_destructors(driver()?, dev) }
    fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) { context::reset_primary_with_destructors(driver()?, dev) }
    fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) {
        // SAFETY: null or writable per the export's contract.
        let flags = unsafe { Out::new(flags) }?;
        // SAFETY: as above.
        let active = unsafe { Out::new(active) }?;
        let d = driver()?;
        let (f, a) = context::primary_state(&mut d.lock(), d.sim, dev)?;
        flags.set(f);
        active.set(c_int::from(a));
        Ok(())
    }
    fn cuCtxCreate_v2(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pctx) }?;
        let d = driver()?;
        out.set(context::create(&mut d.lock(), d.sim, flags, dev)? as CUcontext);
        Ok(())
    }

    /// Execution affinity is checked (SM counts within the device) and otherwise ignored.
    fn cuCtxCreate_v3(
        pctx: *mut CUcontext,
        params_array: *mut CUexecAffinityParam,
        num_params: c_int,
        flags: c_uint,
        dev: CUdevice,
    ) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(pctx) }?;
        // SAFETY: as above.
        let params = unsafe { inputs(params_array, usize::try_from(num_params).map_err(|_| INVALID_VALUE)?) }?;
        let d = driver()?;
        context::check_affinity(d.sim, dev, params)?;
        out.set(context::create(&mut d.lock(), d.sim, flags, dev)? as CUcontext);
        Ok(())
    }

    /// `ctx_create_params` may be null.
    fn cuCtxCreate_v4(pctx: *mut CUcontext, ctx_create_params: *mut CUctxCreateParams, flags: c_uint, dev: CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pctx) }?;
        let d = driver()?;
        if !ctx_create_params.is_null() {
            // SAFETY: non-null, so valid per the export's contract.
            let p = unsafe { input(ctx_create_params) }?;
            let n = usize::try_from(p.numExecAffinityParams).map_err(|_| INVALID_VALUE)?;
            if n > 0 && !p.cigParams.is_null() {
                return Err(INVALID_VALUE);
            }
            // SAFETY: the struct's array holds `n` entries per the export's contract.
            let params = unsafe { inputs(p.execAffinityParams, n) }?;
            context::check_affinity(d.sim, dev, params)?;
        }
        out.set(context::create(&mut d.lock(), d.sim, flags, dev)? as CUcontext);
        Ok(())
    }

    fn cuCtxDestroy_v2(ctx: CUcontext) { context::destroy_with_destructors(driver()?, ctx as usize) }
    fn cuCtxSetCurrent(ctx: CUcontext) { context::set_current(&driver()?.lock(), ctx as usize) }

    /// Null (and success) when the thread has no context.
    fn cuCtxGetCurrent(pctx: *mut CUcontext) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pctx) }?;
        out.set(context::top().unwrap_or(0) as CUcontext);
        Ok(())
    }
    fn cuCtxPushCurrent_v2(ctx: CUcontext) { context::push(&driver()?.lock(), ctx as usize) }

    /// `pctx` may be null.
    fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::optional(pctx) };
        let popped = context::pop()?;
        if let Some(out) = out {
            out.set(popped as CUcontext);
        }
        Ok(())
    }
    fn cuCtxGetDevice(dev: *mut CUdevice) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dev) }?;
        out.set(context::device_of(&driver()?.lock(), 0)?);
        Ok(())
    }

    /// `ctx` null means the current context.
    fn cuCtxGetDevice_v2(dev: *mut CUdevice, ctx: CUcontext) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dev) }?;
        out.set(context::device_of(&driver()?.lock(), ctx as usize)?);
        Ok(())
    }

    /// Sleeps until every queue of the current context is idle.
    fn cuCtxSynchronize() { context::synchronize(driver()?, 0) }

    /// `ctx` null means the current context.
    fn cuCtxSynchronize_v2(ctx: CUcontext) { context::synchronize(driver()?, ctx as usize) }

    // ---- memory ---------------------------------------------------------------------------

    /// Charged in 2 MiB granules.
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr) }?;
        out.set(memory::alloc(bytesize as u64)?);
        Ok(())
    }

    /// Rows padded to a multiple of 512 bytes; `pitch × height` charged in granules.
    fn cuMemAllocPitch_v2(
        dptr: *mut CUdeviceptr,
        p_pitch: *mut usize,
        width_in_bytes: usize,
        height: usize,
        element_size_bytes: c_uint,
    ) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr) }?;
        // SAFETY: as above.
        let pitch_out = unsafe { Out::new(p_pitch) }?;
        let (ptr, pitch) = memory::alloc_pitch(width_in_bytes as u64, height as u64, element_size_bytes)?;
        out.set(ptr);
        pitch_out.set(pitch as usize);
        Ok(())
    }

    /// Charged to the device like `cuMemAlloc`.
    fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr) }?;
        // CU_MEM_ATTACH_GLOBAL or CU_MEM_ATTACH_HOST.
        if !matches!(flags, 1 | 2) {
            return Err(INVALID_VALUE);
        }
        out.set(memory::alloc(bytesize as u64)?);
        Ok(())
    }

    /// The start of a live allocation, or 0 (which frees nothing); anything else is
    /// `CUDA_ERROR_INVALID_VALUE`.
    fn cuMemFree_v2(dptr: CUdeviceptr) { memory::free(dptr) }

    /// Device-wide: `total − used by every process`.
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) {
        // SAFETY: null or writable per the export's contract.
        let free_out = unsafe { Out::new(free) }?;
        // SAFETY: as above.
        let total_out = unsafe { Out::new(total) }?;
        let (f, t) = memory::info()?;
        free_out.set(f as usize);
        total_out.set(t as usize);
        Ok(())
    }

    /// Page-locked host memory is ordinary host memory here (zeroed, charged to no device);
    /// with unified addressing its device pointer is its address.
    fn cuMemHostAlloc(pp: *mut *mut c_void, bytesize: usize, flags: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pp) }?;
        out.set(driver()?.lock().memory.host_alloc(bytesize as u64, flags)? as *mut c_void);
        Ok(())
    }
    fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytesize: usize) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pp) }?;
        out.set(driver()?.lock().memory.host_alloc(bytesize as u64, 0)? as *mut c_void);
        Ok(())
    }
    fn cuMemFreeHost(p: *mut c_void) { driver()?.lock().memory.host_free(p as u64) }
    fn cuMemHostRegister_v2(p: *mut c_void, bytesize: usize, flags: c_uint) {
        driver()?.lock().memory.host_register(p as u64, bytesize as u64, flags)
    }
    fn cuMemHostUnregister(p: *mut c_void) { driver()?.lock().memory.host_unregister(p as u64) }
    fn cuMemHostGetFlags(p_flags: *mut c_uint, p: *mut c_void) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(p_flags) }?;
        out.set(driver()?.lock().memory.host_flags(p as u64)?);
        Ok(())
    }
    fn cuMemHostGetDevicePointer_v2(pdptr: *mut CUdeviceptr, p: *mut c_void, flags: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(pdptr) }?;
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        driver()?.lock().memory.host_flags(p as u64)?;
        out.set(p as CUdeviceptr);
        Ok(())
    }

    /// The allocation (or `cuMemMap` mapping) holding `dptr`: its start and size; either
    /// output may be null. Anything else is `CUDA_ERROR_NOT_FOUND`.
    fn cuMemGetAddressRange_v2(pbase: *mut CUdeviceptr, psize: *mut usize, dptr: CUdeviceptr) {
        let (base, size) = driver()?.lock().memory.address_range(dptr)?;
        // SAFETY: null or writable per the export's contract.
        if let Some(out) = unsafe { Out::optional(pbase) } {
            out.set(base);
        }
        // SAFETY: as above.
        if let Some(out) = unsafe { Out::optional(psize) } {
            out.set(size as usize);
        }
        Ok(())
    }

    /// The properties `cuMemCreate` was given for `handle`.
    fn cuMemGetAllocationPropertiesFromHandle(prop: *mut CUmemAllocationProp, handle: CUmemGenericAllocationHandle) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(prop) }?;
        out.set(driver()?.lock().memory.physical_prop(handle)?);
        Ok(())
    }

    /// Pinned device memory only; `size` must be a multiple of the granularity.
    fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(handle) }?;
        // SAFETY: as above.
        let prop = unsafe { input(prop) }?;
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        out.set(memory::create(size as u64, prop)?);
        Ok(())
    }

    /// One handle reference less: the memory goes once no reference, mapping or exported
    /// descriptor (open in this process) is left.
    fn cuMemRelease(handle: CUmemGenericAllocationHandle) {
        driver()?.lock().memory.release_physical(handle)
    }

    /// The handle mapped at `addr` (anywhere in a mapping), with one more reference.
    fn cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(handle) }?;
        out.set(driver()?.lock().memory.retain_physical(addr as u64)?);
        Ok(())
    }

    /// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` only (an `int`), for an allocation created
    /// with it among its `requestedHandleTypes`: a new descriptor of its memory.
    fn cuMemExportToShareableHandle(
        shareable_handle: *mut c_void,
        handle: CUmemGenericAllocationHandle,
        handle_type: CUmemAllocationHandleType,
        flags: u64,
    ) {
        // SAFETY: null or writable for the handle type's value per the export's contract.
        let out = unsafe { Out::new(shareable_handle.cast::<c_int>()) }?;
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        out.set(driver()?.lock().memory.export_physical(handle, handle_type)?);
        Ok(())
    }

    /// A descriptor `cuMemExportToShareableHandle` handed out (passed as the pointer-sized
    /// `osHandle`), from this process or another: a new handle to the same memory.
    fn cuMemImportFromShareableHandle(
        handle: *mut CUmemGenericAllocationHandle,
        os_handle: *mut c_void,
        sh_handle_type: CUmemAllocationHandleType,
    ) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(handle) }?;
        let fd = c_int::try_from(os_handle as usize).map_err(|_| INVALID_VALUE)?;
        out.set(driver()?.lock().memory.import_physical(fd, sh_handle_type)?);
        Ok(())
    }

    fn cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, addr: CUdeviceptr, flags: u64) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ptr) }?;
        let _hint = addr;
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        out.set(driver()?.lock().memory.reserve(size as u64, alignment as u64)?);
        Ok(())
    }
    fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) {
        driver()?.lock().memory.free_reservation(ptr, size as u64)
    }

    /// Maps with no access: `cuMemSetAccess` opens the range.
    fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64) {
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        driver()?.lock().memory.map(ptr, size as u64, offset as u64, handle)
    }
    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) { driver()?.lock().memory.unmap(ptr, size as u64) }
    fn cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const CUmemAccessDesc, count: usize) {
        // SAFETY: null or valid for `count` entries per the export's contract.
        let desc = unsafe { inputs(desc, count) }?;
        memory::set_access(ptr, size as u64, desc)
    }

    /// 2 MiB, minimum and recommended alike.
    fn cuMemGetAllocationGranularity(granularity: *mut usize, prop: *const CUmemAllocationProp, option: CUmemAllocationGranularity_flags) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(granularity) }?;
        // SAFETY: as above.
        let prop = unsafe { input(prop) }?;
        memory::check_prop(driver()?.sim, prop)?;
        // CU_MEM_ALLOC_GRANULARITY_MINIMUM or _RECOMMENDED.
        if !matches!(option, 0 | 1) {
            return Err(INVALID_VALUE);
        }
        out.set(memory::GRANULARITY as usize);
        Ok(())
    }

    /// From the device's default pool.
    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytesize: usize, h_stream: CUstream) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr) }?;
        out.set(memory::alloc_async(bytesize as u64, None, h_stream, false)?);
        Ok(())
    }
    fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, h_stream: CUstream) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr) }?;
        out.set(memory::alloc_async(bytesize as u64, None, h_stream, true)?);
        Ok(())
    }

    /// Immediate: a pool allocation goes back to its pool (still reserved).
    fn cuMemFreeAsync(dptr: CUdeviceptr, h_stream: CUstream) { memory::free_async(dptr, h_stream, false) }
    fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, h_stream: CUstream) { memory::free_async(dptr, h_stream, true) }
    fn cuMemPoolCreate(pool: *mut CUmemoryPool, pool_props: *const CUmemPoolProps) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(pool) }?;
        // SAFETY: as above.
        let props = unsafe { input(pool_props) }?;
        out.set(memory::pool_create(props)? as CUmemoryPool);
        Ok(())
    }

    /// Not the default pool.
    fn cuMemPoolDestroy(pool: CUmemoryPool) { driver()?.lock().memory.destroy_pool(pool as usize) }
    fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytesize: usize, pool: CUmemoryPool, h_stream: CUstream) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr) }?;
        out.set(memory::alloc_async(bytesize as u64, Some(pool as usize), h_stream, false)?);
        Ok(())
    }
    fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, pool: CUmemoryPool, h_stream: CUstream) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr) }?;
        out.set(memory::alloc_async(bytesize as u64, Some(pool as usize), h_stream, true)?);
        Ok(())
    }
    fn cuMemPoolTrimTo(pool: CUmemoryPool, min_bytes_to_keep: usize) {
        driver()?.lock().memory.trim_pool(pool as usize, min_bytes_to_keep as u64)
    }

    /// The reuse flags (`int`, all 1), the release threshold (0) and the reserved and used
    /// counters (`cuuint64_t`).
    fn cuMemPoolGetAttribute(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) {
        if value.is_null() {
            return Err(INVALID_VALUE);
        }
        let reg = driver()?.lock();
        if let Ok(v) = reg.memory.pool_reuse(pool as usize, attr) {
            // SAFETY: non-null; these attributes are `int` per cuda.h.
            unsafe { value.cast::<c_int>().write_unaligned(v) };
        } else {
            let v = reg.memory.pool_counter(pool as usize, attr)?;
            // SAFETY: non-null; these attributes are `cuuint64_t` per cuda.h.
            unsafe { value.cast::<u64>().write_unaligned(v) };
        }
        Ok(())
    }

    /// The reuse policies and the release threshold are kept and answered back (freed memory
    /// stays in the pool until trimmed whatever the threshold); the high-water marks reset
    /// with 0.
    fn cuMemPoolSetAttribute(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) {
        if value.is_null() {
            return Err(INVALID_VALUE);
        }
        let mut reg = driver()?.lock();
        if reg.memory.pool_reuse(pool as usize, attr).is_ok() {
            // SAFETY: non-null; these attributes are `int` per cuda.h.
            let v = unsafe { value.cast::<c_int>().read_unaligned() };
            reg.memory.set_pool_reuse(pool as usize, attr, v)
        } else {
            // SAFETY: non-null; the other settable attributes are `cuuint64_t` per cuda.h.
            let v = unsafe { value.cast::<u64>().read_unaligned() };
            reg.memory.set_pool_counter(pool as usize, attr, v)
        }
    }

    /// The device's graph memory pool in this process: reserved and used bytes, current and
    /// high watermarks (`cuuint64_t`).
    fn cuDeviceGetGraphMemAttribute(dev: CUdevice, attr: CUgraphMem_attribute, value: *mut c_void) {
        let d = driver()?;
        let (_, state) = device::gpu(d.sim, dev)?;
        if value.is_null() {
            return Err(INVALID_VALUE);
        }
        let v = d.lock().graph_memory.attribute(state.index(), attr)?;
        // SAFETY: non-null; these attributes are `cuuint64_t` per cuda.h.
        unsafe { value.cast::<u64>().write_unaligned(v) };
        Ok(())
    }

    /// Resets a high-water mark to the current value (only 0 is accepted, as on the real
    /// driver).
    fn cuDeviceSetGraphMemAttribute(dev: CUdevice, attr: CUgraphMem_attribute, value: *mut c_void) {
        let d = driver()?;
        let (_, state) = device::gpu(d.sim, dev)?;
        if value.is_null() {
            return Err(INVALID_VALUE);
        }
        // SAFETY: non-null; `cuuint64_t` per cuda.h.
        let v = unsafe { value.cast::<u64>().read_unaligned() };
        d.lock().graph_memory.reset_high(state.index(), attr, v)
    }

    /// Gives back the graph memory no idle graph needs.
    fn cuDeviceGraphMemTrim(dev: CUdevice) {
        let d = driver()?;
        let (_, state) = device::gpu(d.sim, dev)?;
        graph::trim(&mut d.lock(), state.index());
        Ok(())
    }
    fn cuArrayCreate_v2(p_handle: *mut CUarray, p_allocate_array: *const CUDA_ARRAY_DESCRIPTOR) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(p_handle) }?;
        // SAFETY: as above.
        let d = unsafe { input(p_allocate_array) }?;
        let desc = CUDA_ARRAY3D_DESCRIPTOR {
            Width: d.Width,
            Height: d.Height,
            Depth: 0,
            Format: d.Format,
            NumChannels: d.NumChannels,
            Flags: 0,
        };
        out.set(memory::array_create(&desc, None)? as CUarray);
        Ok(())
    }
    fn cuArray3DCreate_v2(p_handle: *mut CUarray, p_allocate_array: *const CUDA_ARRAY3D_DESCRIPTOR) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(p_handle) }?;
        // SAFETY: as above.
        let desc = unsafe { input(p_allocate_array) }?;
        out.set(memory::array_create(desc, None)? as CUarray);
        Ok(())
    }
    fn cuArrayDestroy(h_array: CUarray) { driver()?.lock().memory.destroy_array(h_array as usize, false) }
    fn cuMipmappedArrayCreate(
        p_handle: *mut CUmipmappedArray,
        p_mipmapped_array_desc: *const CUDA_ARRAY3D_DESCRIPTOR,
        num_mipmap_levels: c_uint,
    ) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(p_handle) }?;
        // SAFETY: as above.
        let desc = unsafe { input(p_mipmapped_array_desc) }?;
        out.set(memory::array_create(desc, Some(num_mipmap_levels))? as CUmipmappedArray);
        Ok(())
    }
    fn cuMipmappedArrayDestroy(h_mipmapped_array: CUmipmappedArray) {
        driver()?.lock().memory.destroy_array(h_mipmapped_array as usize, true)
    }

    // ---- copies and sets ----------------------------------------------------------------

    /// Waits for the legacy default stream, then copies.
    fn cuMemcpyHtoD_v2(dst_device: CUdeviceptr, src_host: *const c_void, byte_count: usize) {
        memory::copy(memory::Dst::Device(dst_device), memory::Src::Host(src_host.cast()), byte_count, None, false)
    }
    fn cuMemcpyHtoD_v2_ptds(dst_device: CUdeviceptr, src_host: *const c_void, byte_count: usize) {
        memory::copy(memory::Dst::Device(dst_device), memory::Src::Host(src_host.cast()), byte_count, None, true)
    }
    fn cuMemcpyDtoH_v2(dst_host: *mut c_void, src_device: CUdeviceptr, byte_count: usize) {
        memory::copy(memory::Dst::Host(dst_host.cast()), memory::Src::Device(src_device), byte_count, None, false)
    }
    fn cuMemcpyDtoH_v2_ptds(dst_host: *mut c_void, src_device: CUdeviceptr, byte_count: usize) {
        memory::copy(memory::Dst::Host(dst_host.cast()), memory::Src::Device(src_device), byte_count, None, true)
    }
    /// Unified addressing: each side is device memory if it lies in an allocation or a
    /// mapping, host memory otherwise.
    fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, byte_count: usize) {
        memory::copy_unified(dst, src, byte_count, None, false)
    }
    fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, byte_count: usize) {
        memory::copy_unified(dst, src, byte_count, None, true)
    }
    fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, byte_count: usize, h_stream: CUstream) {
        memory::copy_unified(dst, src, byte_count, Some(h_stream), false)
    }
    fn cuMemcpyAsync_ptsz(dst: CUdeviceptr, src: CUdeviceptr, byte_count: usize, h_stream: CUstream) {
        memory::copy_unified(dst, src, byte_count, Some(h_stream), true)
    }
    fn cuMemcpyDtoD_v2(dst_device: CUdeviceptr, src_device: CUdeviceptr, byte_count: usize) {
        memory::copy(memory::Dst::Device(dst_device), memory::Src::Device(src_device), byte_count, None, false)
    }
    fn cuMemcpyDtoD_v2_ptds(dst_device: CUdeviceptr, src_device: CUdeviceptr, byte_count: usize) {
        memory::copy(memory::Dst::Device(dst_device), memory::Src::Device(src_device), byte_count, None, true)
    }

    /// Copies at once (the bytes are there before the call returns).
    fn cuMemcpyHtoDAsync_v2(dst_device: CUdeviceptr, src_host: *const c_void, byte_count: usize, h_stream: CUstream) {
        let (dst, src) = (memory::Dst::Device(dst_device), memory::Src::Host(src_host.cast()));
        memory::copy(dst, src, byte_count, Some(h_stream), false)
    }
    fn cuMemcpyHtoDAsync_v2_ptsz(dst_device: CUdeviceptr, src_host: *const c_void, byte_count: usize, h_stream: CUstream) {
        let (dst, src) = (memory::Dst::Device(dst_device), memory::Src::Host(src_host.cast()));
        memory::copy(dst, src, byte_count, Some(h_stream), true)
    }
    fn cuMemcpyDtoHAsync_v2(dst_host: *mut c_void, src_device: CUdeviceptr, byte_count: usize, h_stream: CUstream) {
        let (dst, src) = (memory::Dst::Host(dst_host.cast()), memory::Src::Device(src_device));
        memory::copy(dst, src, byte_count, Some(h_stream), false)
    }
    fn cuMemcpyDtoHAsync_v2_ptsz(dst_host: *mut c_void, src_device: CUdeviceptr, byte_count: usize, h_stream: CUstream) {
        let (dst, src) = (memory::Dst::Host(dst_host.cast()), memory::Src::Device(src_device));
        memory::copy(dst, src, byte_count, Some(h_stream), true)
    }
    fn cuMemcpyDtoDAsync_v2(dst_device: CUdeviceptr, src_device: CUdeviceptr, byte_count: usize, h_stream: CUstream) {
        let (dst, src) = (memory::Dst::Device(dst_device), memory::Src::Device(src_device));
        memory::copy(dst, src, byte_count, Some(h_stream), false)
    }
    fn cuMemcpyDtoDAsync_v2_ptsz(dst_device: CUdeviceptr, src_device: CUdeviceptr, byte_count: usize, h_stream: CUstream) {
        let (dst, src) = (memory::Dst::Device(dst_device), memory::Src::Device(src_device));
        memory::copy(dst, src, byte_count, Some(h_stream), true)
    }
    fn cuMemsetD8_v2(dst_device: CUdeviceptr, uc: c_uchar, n: usize) { memory::memset(dst_device, &[uc], n, std::ptr::null_mut(), false) }
    fn cuMemsetD8_v2_ptds(dst_device: CUdeviceptr, uc: c_uchar, n: usize) {
        memory::memset(dst_device, &[uc], n, std::ptr::null_mut(), true)
    }

    /// `dst_device` must be 4-byte aligned.
    fn cuMemsetD32_v2(dst_device: CUdeviceptr, ui: c_uint, n: usize) {
        memory::memset(dst_device, &ui.to_ne_bytes(), n, std::ptr::null_mut(), false)
    }
    fn cuMemsetD32_v2_ptds(dst_device: CUdeviceptr, ui: c_uint, n: usize) {
        memory::memset(dst_device, &ui.to_ne_bytes(), n, std::ptr::null_mut(), true)
    }

    /// As the synchronous sets, at once: the stream is checked, and sets take no device time.
    fn cuMemsetD8Async(dst_device: CUdeviceptr, uc: c_uchar, n: usize, h_stream: CUstream) {
        memory::memset(dst_device, &[uc], n, h_stream, false)
    }
    fn cuMemsetD8Async_ptsz(dst_device: CUdeviceptr, uc: c_uchar, n: usize, h_stream: CUstream) {
        memory::memset(dst_device, &[uc], n, h_stream, true)
    }
    fn cuMemsetD32Async(dst_device: CUdeviceptr, ui: c_uint, n: usize, h_stream: CUstream) {
        memory::memset(dst_device, &ui.to_ne_bytes(), n, h_stream, false)
    }
    fn cuMemsetD32Async_ptsz(dst_device: CUdeviceptr, ui: c_uint, n: usize, h_stream: CUstream) {
        memory::memset(dst_device, &ui.to_ne_bytes(), n, h_stream, true)
    }

    /// Writes `value` at `addr` at once (as a set of one 32-bit word); flags are ignored.
    fn cuStreamWriteValue32_v2(stream: CUstream, addr: CUdeviceptr, value: cuuint32_t, _flags: c_uint) {
        memory::memset(addr, &value.to_ne_bytes(), 1, stream, false)
    }
    fn cuStreamWriteValue32_v2_ptsz(stream: CUstream, addr: CUdeviceptr, value: cuuint32_t, _flags: c_uint) {
        memory::memset(addr, &value.to_ne_bytes(), 1, stream, true)
    }

    // ---- streams and events ---------------------------------------------------------------
    fn cuStreamCreate(ph_stream: *mut CUstream, flags: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_stream) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        out.set(reg.streams.create(ctx, flags, stream::PRIORITY_LEAST)? as CUstream);
        Ok(())
    }

    /// The priority is kept and answered back (clamped to 0 … -5); it changes nothing else.
    fn cuStreamCreateWithPriority(ph_stream: *mut CUstream, flags: c_uint, priority: c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_stream) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        out.set(reg.streams.create(ctx, flags, priority)? as CUstream);
        Ok(())
    }
    fn cuStreamGetPriority(h_stream: CUstream, priority: *mut c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(priority) }?;
        out.set(stream::priority(h_stream, false)?);
        Ok(())
    }
    fn cuStreamGetPriority_ptsz(h_stream: CUstream, priority: *mut c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(priority) }?;
        out.set(stream::priority(h_stream, true)?);
        Ok(())
    }

    /// Later work on the stream waits for the event's work; flags are ignored.
    fn cuStreamWaitEvent(h_stream: CUstream, h_event: CUevent, _flags: c_uint) {
        stream::wait_event(h_stream, h_event, false)
    }
    fn cuStreamWaitEvent_ptsz(h_stream: CUstream, h_event: CUevent, _flags: c_uint) {
        stream::wait_event(h_stream, h_event, true)
    }
    fn cuStreamDestroy_v2(h_stream: CUstream) { stream::destroy(&mut driver()?.lock(), h_stream as usize) }

    /// Sleeps until the stream's queued work is done.
    fn cuStreamSynchronize(h_stream: CUstream) { stream::synchronize(h_stream, false) }
    fn cuStreamSynchronize_ptsz(h_stream: CUstream) { stream::synchronize(h_stream, true) }

    /// `CUDA_ERROR_NOT_READY` while queued work is running.
    fn cuStreamQuery(h_stream: CUstream) { stream::query(h_stream, false) }
    fn cuStreamQuery_ptsz(h_stream: CUstream) { stream::query(h_stream, true) }
    fn cuEventCreate(ph_event: *mut CUevent, flags: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_event) }?;
        let mut reg = driver()?.lock();
        let ctx = context::current(&reg)?;
        out.set(reg.streams.create_event(ctx, flags)? as CUevent);
        Ok(())
    }

    /// The event completes when the stream's work queued so far does.
    fn cuEventRecord(h_event: CUevent, h_stream: CUstream) { stream::record_event(h_event, h_stream, false) }
    fn cuEventRecord_ptsz(h_event: CUevent, h_stream: CUstream) { stream::record_event(h_event, h_stream, true) }

    /// Returns at once for an event never recorded; memory pools trim to their release
    /// thresholds.
    fn cuEventSynchronize(h_event: CUevent) { stream::synchronize_event(h_event) }
    fn cuEventQuery(h_event: CUevent) { stream::ready(stream::event_time(&driver()?.lock(), h_event as usize)?) }
    fn cuEventElapsedTime(p_milliseconds: *mut f32, h_start: CUevent, h_end: CUevent) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(p_milliseconds) }?;
        out.set(stream::elapsed(&driver()?.lock(), h_start as usize, h_end as usize)?);
        Ok(())
    }
    fn cuEventElapsedTime_v2(p_milliseconds: *mut f32, h_start: CUevent, h_end: CUevent) {
        // SAFETY: same contract as this export's.
        super::code(unsafe { cuEventElapsedTime(p_milliseconds, h_start, h_end) })
    }
    fn cuEventDestroy_v2(h_event: CUevent) { driver()?.lock().streams.destroy_event(h_event as usize) }

    // ---- modules and launches -------------------------------------------------------------

    /// Any non-null image loads; its kernels are the `.entry` names of PTX (bare or in a fat
    /// binary of PTX), or any name for an image whose kernels cannot be read.
    fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(module) }?;
        // SAFETY: null or an image per the export's contract.
        out.set(unsafe { modules::load_module(image) }? as CUmodule);
        Ok(())
    }
    fn cuModuleUnload(hmod: CUmodule) { driver()?.lock().modules.unload(hmod as usize) }

    /// A kernel the module provides, or `CUDA_ERROR_NOT_FOUND`.
    fn cuModuleGetFunction(hfunc: *mut CUfunction, hmod: CUmodule, name: *const c_char) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(hfunc) }?;
        // SAFETY: as above.
        let name = unsafe { c_str(name) }?.to_str().map_err(|_| error::NOT_FOUND)?;
        out.set(driver()?.lock().modules.function(hmod as usize, name)? as CUfunction);
        Ok(())
    }

    /// The kernel takes its turn on the device (`busy` for `*(u64 *)kernelParams[0]`
    /// nanoseconds, or the first 8 bytes of the `extra` buffer); the call returns at once. `f`
    /// may be a `CUkernel`.
    fn cuLaunchKernel(
        f: CUfunction,
        grid_dim_x: c_uint,
        grid_dim_y: c_uint,
        grid_dim_z: c_uint,
        block_dim_x: c_uint,
        block_dim_y: c_uint,
        block_dim_z: c_uint,
        shared_mem_bytes: c_uint,
        h_stream: CUstream,
        kernel_params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) {
        let shape = launch::Shape {
            grid: [grid_dim_x, grid_dim_y, grid_dim_z],
            block: [block_dim_x, block_dim_y, block_dim_z],
            shared_mem: shared_mem_bytes,
        };
        // SAFETY: valid per the export's contract until it returns.
        let params = unsafe { Params::new(kernel_params, extra) };
        let l = launch::Launch { function: f as usize, shape, params, cooperative: false };
        launch::launch_on(l, h_stream, false)
    }
    fn cuLaunchKernel_ptsz(
        f: CUfunction,
        grid_dim_x: c_uint,
        grid_dim_y: c_uint,
        grid_dim_z: c_uint,
        block_dim_x: c_uint,
        block_dim_y: c_uint,
        block_dim_z: c_uint,
        shared_mem_bytes: c_uint,
        h_stream: CUstream,
        kernel_params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) {
        let shape = launch::Shape {
            grid: [grid_dim_x, grid_dim_y, grid_dim_z],
            block: [block_dim_x, block_dim_y, block_dim_z],
            shared_mem: shared_mem_bytes,
        };
        // SAFETY: valid per the export's contract until it returns.
        let params = unsafe { Params::new(kernel_params, extra) };
        let l = launch::Launch { function: f as usize, shape, params, cooperative: false };
        launch::launch_on(l, h_stream, true)
    }

    /// Grid, block, shared memory and stream come from `config`; of its attributes only
    /// `CU_LAUNCH_ATTRIBUTE_COOPERATIVE` changes anything (the launch must then fit on the
    /// device at once).
    fn cuLaunchKernelEx(
        config: *const CUlaunchConfig,
        f: CUfunction,
        kernel_params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) {
        // SAFETY: null or valid per the export's contract.
        let (l, stream) = unsafe { launch_ex(config, f, kernel_params, extra) }?;
        launch::launch_on(l, stream, false)
    }
    fn cuLaunchKernelEx_ptsz(
        config: *const CUlaunchConfig,
        f: CUfunction,
        kernel_params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) {
        // SAFETY: null or valid per the export's contract.
        let (l, stream) = unsafe { launch_ex(config, f, kernel_params, extra) }?;
        launch::launch_on(l, stream, true)
    }

    /// As `cuLaunchKernel`, with every block resident at once: more blocks than the device
    /// holds is `CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE`.
    fn cuLaunchCooperativeKernel(
        f: CUfunction,
        grid_dim_x: c_uint,
        grid_dim_y: c_uint,
        grid_dim_z: c_uint,
        block_dim_x: c_uint,
        block_dim_y: c_uint,
        block_dim_z: c_uint,
        shared_mem_bytes: c_uint,
        h_stream: CUstream,
        kernel_params: *mut *mut c_void,
    ) {
        let shape = launch::Shape {
            grid: [grid_dim_x, grid_dim_y, grid_dim_z],
            block: [block_dim_x, block_dim_y, block_dim_z],
            shared_mem: shared_mem_bytes,
        };
        // SAFETY: valid per the export's contract until it returns.
        let params = unsafe { Params::new(kernel_params, std::ptr::null_mut()) };
        let l = launch::Launch { function: f as usize, shape, params, cooperative: true };
        launch::launch_on(l, h_stream, false)
    }
    fn cuLaunchCooperativeKernel_ptsz(
        f: CUfunction,
        grid_dim_x: c_uint,
        grid_dim_y: c_uint,
        grid_dim_z: c_uint,
        block_dim_x: c_uint,
        block_dim_y: c_uint,
        block_dim_z: c_uint,
        shared_mem_bytes: c_uint,
        h_stream: CUstream,
        kernel_params: *mut *mut c_void,
    ) {
        let shape = launch::Shape {
            grid: [grid_dim_x, grid_dim_y, grid_dim_z],
            block: [block_dim_x, block_dim_y, block_dim_z],
            shared_mem: shared_mem_bytes,
        };
        // SAFETY: valid per the export's contract until it returns.
        let params = unsafe { Params::new(kernel_params, std::ptr::null_mut()) };
        let l = launch::Launch { function: f as usize, shape, params, cooperative: true };
        launch::launch_on(l, h_stream, true)
    }

    /// One cooperative launch per device, each on a created stream of that device's context
    /// with the function loaded there, all of one shape. Flags: `…_NO_PRE_LAUNCH_SYNC` (1) and
    /// `…_NO_POST_LAUNCH_SYNC` (2).
    fn cuLaunchCooperativeKernelMultiDevice(
        launch_params_list: *mut CUDA_LAUNCH_PARAMS,
        num_devices: c_uint,
        flags: c_uint,
    ) {
        // SAFETY: null or valid for `num_devices` entries per the export's contract.
        let list = unsafe { inputs(launch_params_list, num_devices as usize) }?;
        let mut launches = Vec::with_capacity(list.len());
        for p in list {
            let shape = launch::Shape {
                grid: [p.gridDimX, p.gridDimY, p.gridDimZ],
                block: [p.blockDimX, p.blockDimY, p.blockDimZ],
                shared_mem: p.sharedMemBytes,
            };
            // SAFETY: each entry's kernelParams is valid per the export's contract.
            let params = unsafe { Params::new(p.kernelParams, std::ptr::null_mut()) };
            let l = launch::Launch { function: p.function as usize, shape, params, cooperative: true };
            launches.push((l, p.hStream));
        }
        launch::launch_multi_device(&launches, flags)
    }

    // ---- graphs and stream capture --------------------------------------------------------

    /// `flags` must be 0.
    fn cuGraphCreate(ph_graph: *mut CUgraph, flags: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_graph) }?;
        out.set(driver()?.lock().graphs.create(flags)? as CUgraph);
        Ok(())
    }

    /// A kernel node; its parameters are read now, as the driver copies them.
    fn cuGraphAddKernelNode(
        ph_graph_node: *mut CUgraphNode,
        h_graph: CUgraph,
        dependencies: *const CUgraphNode,
        num_dependencies: usize,
        node_params: *const CUDA_KERNEL_NODE_PARAMS_v1,
    ) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(ph_graph_node) }?;
        // SAFETY: as above.
        let params = unsafe { input(node_params) }?;
        // SAFETY: as above, for `num_dependencies` entries.
        let deps = unsafe { inputs(dependencies, num_dependencies) }?;
        // SAFETY: the struct's parameter pointers are valid per the export's contract.
        out.set(unsafe { add_kernel_node(h_graph, deps, params, std::ptr::null_mut(), std::ptr::null_mut()) }? as CUgraphNode);
        Ok(())
    }

    /// As `cuGraphAddKernelNode`; `func` null names the `CUkernel` `kern`, loaded in `ctx` (null:
    /// the current context).
    fn cuGraphAddKernelNode_v2(
        ph_graph_node: *mut CUgraphNode,
        h_graph: CUgraph,
        dependencies: *const CUgraphNode,
        num_dependencies: usize,
        node_params: *const CUDA_KERNEL_NODE_PARAMS_v2,
    ) {
        // SAFETY: null or valid per the export's contract.
        let out = unsafe { Out::new(ph_graph_node) }?;
        // SAFETY: as above.
        let params = unsafe { input(node_params) }?;
        // SAFETY: as above, for `num_dependencies` entries.
        let deps = unsafe { inputs(dependencies, num_dependencies) }?;
        // SAFETY: the struct's parameter pointers are valid per the export's contract.
        out.set(unsafe { add_kernel_node(h_graph, deps, &v1_of(params), params.kern, params.ctx) }? as CUgraphNode);
        Ok(())
    }

    /// The pre-12.0 form; `ph_error_node` and the log buffer may be null. In the current
    /// context.
    fn cuGraphInstantiate(
        ph_graph_exec: *mut CUgraphExec,
        h_graph: CUgraph,
        ph_error_node: *mut CUgraphNode,
        log_buffer: *mut c_char,
        buffer_size: usize,
    ) {
        // SAFETY: null or valid per the export's contract.
        unsafe { instantiate_with_log(ph_graph_exec, h_graph, ph_error_node, log_buffer, buffer_size) }
    }
    fn cuGraphInstantiate_v2(
        ph_graph_exec: *mut CUgraphExec,
        h_graph: CUgraph,
        ph_error_node: *mut CUgraphNode,
        log_buffer: *mut c_char,
        buffer_size: usize,
    ) {
        // SAFETY: null or valid per the export's contract.
        unsafe { instantiate_with_log(ph_graph_exec, h_graph, ph_error_node, log_buffer, buffer_size) }
    }

    /// What CUDA 12's `cuGraphInstantiate` is (`cuda.h` defines one as the other, and
    /// `cudaTypedefs.h` gives `PFN_cuGraphInstantiate` this signature), so `cuGetProcAddress`
    /// answers it for `"cuGraphInstantiate"` from 12.0 on. Flags: `AUTO_FREE_ON_LAUNCH`,
    /// `DEVICE_LAUNCH`, `USE_NODE_PRIORITY` (accepted, no effect).
    fn cuGraphInstantiateWithFlags(ph_graph_exec: *mut CUgraphExec, h_graph: CUgraph, flags: u64) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_graph_exec) }?;
        out.set(instantiate(h_graph, flags)? as CUgraphExec);
        Ok(())
    }

    /// The graph's nodes run one after another on the stream (after the previous launch of
    /// the same executable graph); on a capturing stream they are captured.
    fn cuGraphLaunch(h_graph_exec: CUgraphExec, h_stream: CUstream) { graph_launch(h_graph_exec, h_stream, false) }
    fn cuGraphLaunch_ptsz(h_graph_exec: CUgraphExec, h_stream: CUstream) {
        graph_launch(h_graph_exec, h_stream, true)
    }

    /// Launches already queued still run.
    fn cuGraphExecDestroy(h_graph_exec: CUgraphExec) { graph::destroy_exec(&mut driver()?.lock(), h_graph_exec as usize) }
    fn cuGraphDestroy(h_graph: CUgraph) { driver()?.lock().graphs.destroy(h_graph as usize) }

    /// An allocation of pinned device memory on the pool's device; its address is written to
    /// `dptr` now, its memory is taken when the graph is uploaded or launched.
    fn cuGraphAddMemAllocNode(
        ph_graph_node: *mut CUgraphNode,
        h_graph: CUgraph,
        dependencies: *const CUgraphNode,
        num_dependencies: usize,
        node_params: *mut CUDA_MEM_ALLOC_NODE_PARAMS,
    ) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_graph_node) }?;
        // SAFETY: as above, for `num_dependencies` entries.
        let deps = unsafe { inputs(dependencies, num_dependencies) }?;
        if node_params.is_null() {
            return Err(INVALID_VALUE);
        }
        // SAFETY: non-null, valid per the export's contract.
        let params = unsafe { &mut *node_params };
        let pp = &params.poolProps;
        if pp.allocType != CU_MEM_ALLOCATION_TYPE_PINNED || pp.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(INVALID_VALUE);
        }
        let d = driver()?;
        let (_, state) = device::gpu(d.sim, location_id(&pp.location)).map_err(|_| INVALID_VALUE)?;
        let mut reg = d.lock();
        reg.graphs.nodes(h_graph as usize)?;
        let size = params.bytesize as u64;
        let addr = reg.graph_memory.new_address(state.index(), size)?;
        let deps: Vec<super::Handle> = deps.iter().map(|&d| d as usize).collect();
        out.set(reg.graphs.add(h_graph as usize, &deps, graph::Node::MemAlloc { addr, size })? as CUgraphNode);
        params.dptr = addr;
        Ok(())
    }

    /// Frees a graph allocation (one of an alloc node's addresses).
    fn cuGraphAddMemFreeNode(
        ph_graph_node: *mut CUgraphNode,
        h_graph: CUgraph,
        dependencies: *const CUgraphNode,
        num_dependencies: usize,
        dptr: CUdeviceptr,
    ) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_graph_node) }?;
        // SAFETY: as above, for `num_dependencies` entries.
        let deps = unsafe { inputs(dependencies, num_dependencies) }?;
        let mut reg = driver()?.lock();
        if !reg.graph_memory.is_allocation(dptr) {
            return Err(INVALID_VALUE);
        }
        let deps: Vec<super::Handle> = deps.iter().map(|&d| d as usize).collect();
        out.set(reg.graphs.add(h_graph as usize, &deps, graph::Node::MemFree(dptr))? as CUgraphNode);
        Ok(())
    }

    /// Pinned memory on the allocation's device, its size and address (no access
    /// descriptors).
    fn cuGraphMemAllocNodeGetParams(h_node: CUgraphNode, params_out: *mut CUDA_MEM_ALLOC_NODE_PARAMS) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(params_out) }?;
        let reg = driver()?.lock();
        let graph::Node::MemAlloc { addr, size } = reg.graphs.node(h_node as usize)? else {
            return Err(INVALID_VALUE);
        };
        let device = reg.graph_memory.device(addr).ok_or(INVALID_VALUE)?;
        // SAFETY: plain data, for which all zeroes are valid.
        let mut p: CUDA_MEM_ALLOC_NODE_PARAMS = unsafe { std::mem::zeroed() };
        p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        p.poolProps.location.type_ = CU_MEM_LOCATION_TYPE_DEVICE;
        p.poolProps.location.__bindgen_anon_1.id = device as c_int;
        p.bytesize = size as usize;
        p.dptr = addr;
        out.set(p);
        Ok(())
    }

    fn cuGraphMemFreeNodeGetParams(h_node: CUgraphNode, dptr_out: *mut CUdeviceptr) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(dptr_out) }?;
        let graph::Node::MemFree(addr) = driver()?.lock().graphs.node(h_node as usize)? else {
            return Err(INVALID_VALUE);
        };
        out.set(addr);
        Ok(())
    }

    /// With `nodes` null, the count; else up to `*num_nodes` of them (the rest of the array
    /// nulled) and the count.
    fn cuGraphGetNodes(h_graph: CUgraph, nodes: *mut CUgraphNode, num_nodes: *mut usize) {
        if num_nodes.is_null() {
            return Err(INVALID_VALUE);
        }
        let all = driver()?.lock().graphs.nodes(h_graph as usize)?;
        if !nodes.is_null() {
            // SAFETY: non-null, readable per the export's contract.
            let room = unsafe { num_nodes.read() };
            for i in 0..room {
                // SAFETY: `nodes` holds `room` entries per the export's contract.
                unsafe { nodes.add(i).write(all.get(i).map_or(std::ptr::null_mut(), |&h| h as CUgraphNode)) };
            }
        }
        // SAFETY: non-null, writable per the export's contract.
        unsafe { num_nodes.write(all.len()) };
        Ok(())
    }

    fn cuGraphNodeGetType(h_node: CUgraphNode, type_: *mut CUgraphNodeType) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(type_) }?;
        out.set(driver()?.lock().graphs.node(h_node as usize)?.kind());
        Ok(())
    }

    /// `AUTO_FREE_ON_LAUNCH`, `UPLOAD` (on `hUploadStream`), `DEVICE_LAUNCH`,
    /// `USE_NODE_PRIORITY`; in the current context.
    fn cuGraphInstantiateWithParams(
        ph_graph_exec: *mut CUgraphExec,
        h_graph: CUgraph,
        instantiate_params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
    ) {
        // SAFETY: null or valid per the export's contract.
        unsafe { instantiate_with_params(ph_graph_exec, h_graph, instantiate_params, false) }
    }
    fn cuGraphInstantiateWithParams_ptsz(
        ph_graph_exec: *mut CUgraphExec,
        h_graph: CUgraph,
        instantiate_params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
    ) {
        // SAFETY: null or valid per the export's contract.
        unsafe { instantiate_with_params(ph_graph_exec, h_graph, instantiate_params, true) }
    }

    /// Maps the graph's memory, as its first launch would.
    fn cuGraphUpload(h_graph_exec: CUgraphExec, h_stream: CUstream) { graph_upload(h_graph_exec, h_stream, false) }
    fn cuGraphUpload_ptsz(h_graph_exec: CUgraphExec, h_stream: CUstream) { graph_upload(h_graph_exec, h_stream, true) }

    /// The pre-10.1 form: global mode.
    fn cuStreamBeginCapture(h_stream: CUstream) { begin_capture(h_stream, graph::CAPTURE_MODE_GLOBAL, false) }
    fn cuStreamBeginCapture_ptsz(h_stream: CUstream) {
        begin_capture(h_stream, graph::CAPTURE_MODE_GLOBAL, true)
    }

    /// Not on the legacy stream (`CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`) nor on a stream
    /// already capturing (`CUDA_ERROR_ILLEGAL_STATE`).
    fn cuStreamBeginCapture_v2(h_stream: CUstream, mode: CUstreamCaptureMode) { begin_capture(h_stream, mode, false) }
    fn cuStreamBeginCapture_v2_ptsz(h_stream: CUstream, mode: CUstreamCaptureMode) { begin_capture(h_stream, mode, true) }

    /// Captures into `h_graph`, after `dependencies` (nodes of it); edge data is ignored.
    fn cuStreamBeginCaptureToGraph(
        h_stream: CUstream,
        h_graph: CUgraph,
        dependencies: *const CUgraphNode,
        dependency_data: *const CUgraphEdgeData,
        num_dependencies: usize,
        mode: CUstreamCaptureMode,
    ) {
        // SAFETY: null or valid per the export's contract, for `num_dependencies` entries.
        unsafe { begin_capture_to_graph(h_stream, h_graph, dependencies, dependency_data, num_dependencies, mode, false) }
    }
    fn cuStreamBeginCaptureToGraph_ptsz(
        h_stream: CUstream,
        h_graph: CUgraph,
        dependencies: *const CUgraphNode,
        dependency_data: *const CUgraphEdgeData,
        num_dependencies: usize,
        mode: CUstreamCaptureMode,
    ) {
        // SAFETY: null or valid per the export's contract, for `num_dependencies` entries.
        unsafe { begin_capture_to_graph(h_stream, h_graph, dependencies, dependency_data, num_dependencies, mode, true) }
    }

    /// The captured graph (for `cuStreamBeginCaptureToGraph`, the graph captured into); null with `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED` if the capture
    /// was invalidated.
    fn cuStreamEndCapture(h_stream: CUstream, ph_graph: *mut CUgraph) {
        // SAFETY: null or writable per the export's contract.
        end_capture(h_stream, unsafe { Out::new(ph_graph) }?, false)
    }
    fn cuStreamEndCapture_ptsz(h_stream: CUstream, ph_graph: *mut CUgraph) {
        // SAFETY: null or writable per the export's contract.
        end_capture(h_stream, unsafe { Out::new(ph_graph) }?, true)
    }

    /// `CU_STREAM_CAPTURE_STATUS_NONE`, `_ACTIVE` or `_INVALIDATED`.
    fn cuStreamIsCapturing(h_stream: CUstream, capture_status: *mut CUstreamCaptureStatus) {
        // SAFETY: null or writable per the export's contract.
        capture_status_of(h_stream, unsafe { Out::new(capture_status) }?, false)
    }
    fn cuStreamIsCapturing_ptsz(h_stream: CUstream, capture_status: *mut CUstreamCaptureStatus) {
        // SAFETY: null or writable per the export's contract.
        capture_status_of(h_stream, unsafe { Out::new(capture_status) }?, true)
    }
}

/// `cuLaunchKernelEx`'s launch and stream, from its config.
///
/// # Safety
///
/// As for `cuLaunchKernelEx`: `config` is null or valid, with `numAttrs` attributes at
/// `attrs`; `kernel_params` and `extra` as for `cuLaunchKernel`.
unsafe fn launch_ex(
    config: *const CUlaunchConfig,
    f: CUfunction,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> error::CuResult<(launch::Launch, CUstream)> {
    // SAFETY: null or valid per the caller.
    let c = unsafe { input(config) }?;
    // SAFETY: `attrs` holds `numAttrs` entries per the caller.
    let attrs = unsafe { inputs(c.attrs, c.numAttrs as usize) }?;
    let cooperative = attrs.iter().any(|a| a.id == CU_LAUNCH_ATTRIBUTE_COOPERATIVE && attribute_int(&a.value) != 0);
    let shape = launch::Shape {
        grid: [c.gridDimX, c.gridDimY, c.gridDimZ],
        block: [c.blockDimX, c.blockDimY, c.blockDimZ],
        shared_mem: c.sharedMemBytes,
    };
    // SAFETY: as for cuLaunchKernel, per the caller.
    let params = unsafe { Params::new(kernel_params, extra) };
    Ok((launch::Launch { function: f as usize, shape, params, cooperative }, c.hStream))
}

/// A kernel node of `graph` after `deps`: `func` (a function, or a `CUkernel`), else `kernel`,
/// resolved in `ctx` (null: the current context) when it is a `CUkernel`.
///
/// # Safety
///
/// `p`'s `kernelParams` and `extra` are as for `cuLaunchKernel`.
unsafe fn add_kernel_node(
    graph: CUgraph,
    deps: &[CUgraphNode],
    p: &CUDA_KERNEL_NODE_PARAMS_v1,
    kernel: CUkernel,
    ctx: CUcontext,
) -> error::CuResult<super::Handle> {
    let mut reg = driver()?.lock();
    let f = if p.func.is_null() { kernel as usize } else { p.func as usize };
    let ctx = match (reg.modules.is_kernel(f), ctx.is_null()) {
        (false, _) => reg.modules.context_of(f).ok_or(INVALID_VALUE)?,
        (true, true) => context::current(&reg)?,
        (true, false) => ctx as usize,
    };
    let device = context::device_state(&reg, ctx).ok();
    let (function, kind) = reg.modules.resolve(f, ctx, device).map_err(|_| INVALID_VALUE)?;
    let shape = launch::Shape {
        grid: [p.gridDimX, p.gridDimY, p.gridDimZ],
        block: [p.blockDimX, p.blockDimY, p.blockDimZ],
        shared_mem: p.sharedMemBytes,
    };
    shape.check()?;
    // SAFETY: per the caller.
    let duration = kind.duration(unsafe { Params::new(p.kernelParams, p.extra) })?;
    let deps: Vec<super::Handle> = deps.iter().map(|&d| d as usize).collect();
    reg.graphs.add(graph as usize, &deps, graph::Node::Kernel { function, duration })
}

/// `cuGraphInstantiateWithFlags` in the current context.
fn instantiate(graph: CUgraph, flags: u64) -> error::CuResult<super::Handle> {
    let mut reg = driver()?.lock();
    let ctx = context::current(&reg)?;
    graph::instantiate(&mut reg, graph as usize, ctx, flags)
}

/// The pre-12.0 `cuGraphInstantiate`: no error node and an empty log on success.
///
/// # Safety
///
/// Each pointer is null or valid; the log buffer for `buffer_size` bytes.
unsafe fn instantiate_with_log(
    ph_graph_exec: *mut CUgraphExec,
    h_graph: CUgraph,
    ph_error_node: *mut CUgraphNode,
    log_buffer: *mut c_char,
    buffer_size: usize,
) -> error::CuResult {
    // SAFETY: null or writable per the caller.
    let out = unsafe { Out::new(ph_graph_exec) }?;
    out.set(instantiate(h_graph, 0)? as CUgraphExec);
    // SAFETY: as above.
    if let Some(node) = unsafe { Out::optional(ph_error_node) } {
        node.set(std::ptr::null_mut());
    }
    if !log_buffer.is_null() && buffer_size > 0 {
        // SAFETY: the buffer holds at least one byte per the caller.
        unsafe { log_buffer.write(0) };
    }
    Ok(())
}

fn graph_launch(exec: CUgraphExec, stream: CUstream, per_thread: bool) -> error::CuResult {
    let d = driver()?;
    let mut reg = d.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    graph::launch(&mut reg, d.sim, exec as usize, q)
}

/// `cuGraphInstantiateWithParams`: the result and error node written back.
///
/// # Safety
///
/// Each pointer is null or valid.
unsafe fn instantiate_with_params(
    ph_graph_exec: *mut CUgraphExec,
    h_graph: CUgraph,
    params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
    per_thread: bool,
) -> error::CuResult {
    // SAFETY: null or writable per the caller.
    let out = unsafe { Out::new(ph_graph_exec) }?;
    if params.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: non-null, valid per the caller.
    let p = unsafe { &mut *params };
    let d = driver()?;
    let mut reg = d.lock();
    let ctx = context::current(&reg)?;
    if p.flags & graph::INSTANTIATE_FLAG_UPLOAD != 0 {
        stream::queue(&reg, p.hUploadStream, per_thread)?;
    }
    p.hErrNode_out = std::ptr::null_mut();
    let exec = graph::instantiate_with_params(&mut reg, d.sim, h_graph as usize, ctx, p.flags);
    p.result_out = if exec.is_ok() { CUDA_GRAPH_INSTANTIATE_SUCCESS } else { CUDA_GRAPH_INSTANTIATE_ERROR };
    out.set(exec? as CUgraphExec);
    Ok(())
}

fn graph_upload(exec: CUgraphExec, stream: CUstream, per_thread: bool) -> error::CuResult {
    let d = driver()?;
    let mut reg = d.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    graph::upload(&mut reg, d.sim, exec as usize, q)
}

/// `cuStreamBeginCaptureToGraph`.
///
/// # Safety
///
/// `dependencies` (and `dependency_data`, when not null) hold `n` entries.
unsafe fn begin_capture_to_graph(
    stream: CUstream,
    graph: CUgraph,
    dependencies: *const CUgraphNode,
    _dependency_data: *const CUgraphEdgeData,
    n: usize,
    mode: CUstreamCaptureMode,
    per_thread: bool,
) -> error::CuResult {
    // SAFETY: per the caller.
    let deps = unsafe { inputs(dependencies, n) }?;
    let deps: Vec<super::Handle> = deps.iter().map(|&d| d as usize).collect();
    let mut reg = driver()?.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    graph::begin_capture_to_graph(&mut reg, q, graph as usize, &deps, mode)
}

fn begin_capture(stream: CUstream, mode: CUstreamCaptureMode, per_thread: bool) -> error::CuResult {
    let mut reg = driver()?.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    graph::begin_capture(&mut reg, q, mode)
}

fn end_capture(stream: CUstream, out: Out<CUgraph>, per_thread: bool) -> error::CuResult {
    let mut reg = driver()?.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    match graph::end_capture(&mut reg, q) {
        Ok(g) => {
            out.set(g as CUgraph);
            Ok(())
        }
        Err(e) => {
            out.set(std::ptr::null_mut());
            Err(e)
        }
    }
}

fn capture_status_of(stream: CUstream, out: Out<CUstreamCaptureStatus>, per_thread: bool) -> error::CuResult {
    let reg = driver()?.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    out.set(graph::capture_status(&reg, q));
    Ok(())
}
