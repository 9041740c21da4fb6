//! Context settings and queries that NVIDIA's runtime (and frameworks) use: API version,
//! flags, limits, cache and shared-memory preferences, stream priorities. Settings are kept
//! per context and answered back. The stack size, printf FIFO and malloc heap limits reserve
//! device memory as a real driver does, by [`gpuslice_core::reservations`]' model: what a
//! value reserves beyond the default's (which is part of the context's own memory), taken when
//! the limit is raised (`CUDA_ERROR_OUT_OF_MEMORY` when the device is full; the old value
//! stays), given back when it is lowered or the context goes.

use std::ffi::{c_int, c_uint};

use gpuslice_core::reservations::{self, Residency};

use super::error::{self, CuResult, INVALID_VALUE};
use super::ffi::Out;
use super::memory::Charge;
use super::proc_address::driver_api;
use super::types::{
    CU_FUNC_CACHE_PREFER_EQUAL, CU_SHARED_MEM_CONFIG_EIGHT_BYTE_BANK_SIZE, CUcontext, CUdevice, CUfunc_cache, CUlimit,
    CUsharedconfig,
};
use super::{context, device, driver};
use crate::state::DeviceState;

/// `CUlimit`s: stack size, printf FIFO, malloc heap, device-runtime sync depth and pending
/// launches, L2 fetch granularity, persisting L2 size, shared memory size, CIG enabled, CIG
/// shared-memory fallback; with an H100's defaults.
const LIMIT_DEFAULTS: [usize; 10] = [1024, 1 << 20, 8 << 20, 2, 2048, 64, 0, 0, 0, 0];

/// What a context keeps of what it was told.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub flags: u32,
    limits: [usize; LIMIT_DEFAULTS.len()],
    cache_config: CUfunc_cache,
    shared_mem_config: CUsharedconfig,
}

impl Settings {
    pub fn new(flags: u32) -> Self {
        Self { flags, limits: LIMIT_DEFAULTS, cache_config: 0, shared_mem_config: 0 }
    }
}

/// The settings of `ctx` (0: the current context).
fn with_settings<T>(ctx: CUcontext, f: impl FnOnce(&mut Settings) -> CuResult<T>) -> CuResult<T> {
    let mut reg = driver()?.lock();
    let ctx = context::live_or_current(&reg, ctx as usize)?;
    let c = reg.contexts.live.get_mut(&ctx).ok_or(error::INVALID_CONTEXT)?;
    f(&mut c.settings)
}

/// `CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR` of the simulated H100.
const THREADS_PER_SM: u64 = 2048;

fn reserve(state: &'static DeviceState, bytes: u64) -> CuResult<Option<Charge>> {
    if bytes == 0 { Ok(None) } else { Charge::uncounted(state, bytes).map(Some).map_err(|_| error::OUT_OF_MEMORY) }
}

fn limit_index(limit: CUlimit) -> CuResult<usize> {
    usize::try_from(limit).ok().filter(|&i| i < LIMIT_DEFAULTS.len()).ok_or(error::UNSUPPORTED_LIMIT)
}

driver_api! {
    /// 3020, as for every context made through the `_v2` API.
    fn cuCtxGetApiVersion(ctx: CUcontext, version: *mut c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(version) }?;
        with_settings(ctx, |_| Ok(()))?;
        out.set(3020);
        Ok(())
    }
    fn cuCtxGetFlags(flags: *mut c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(flags) }?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.flags))?);
        Ok(())
    }
    fn cuCtxSetFlags(flags: c_uint) {
        context::check_flags(flags)?;
        with_settings(std::ptr::null_mut(), |s| {
            s.flags = flags;
            Ok(())
        })
    }

    /// What `cudaSetDeviceFlags` calls; applies to the primary context now or when it starts.
    fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) {
        let d = driver()?;
        context::set_primary_flags(&mut d.lock(), d.sim, dev, flags)
    }
    fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) {
        let d = driver()?;
        context::set_primary_flags(&mut d.lock(), d.sim, dev, flags)
    }

    /// An H100's defaults until set; unknown limits are `CUDA_ERROR_UNSUPPORTED_LIMIT`.
    fn cuCtxGetLimit(value: *mut usize, limit: CUlimit) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(value) }?;
        let i = limit_index(limit)?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.limits[i]))?);
        Ok(())
    }

    /// Kept and answered back; the stack, printf FIFO and heap limits reserve memory.
    fn cuCtxSetLimit(limit: CUlimit, value: usize) {
        let i = limit_index(limit)?;
        let d = driver()?;
        let mut reg = d.lock();
        let ctx = context::current(&reg)?;
        let c = reg.contexts.live.get_mut(&ctx).ok_or(error::INVALID_CONTEXT)?;
        let (gpu, state) = device::gpu(d.sim, c.device as CUdevice)?;
        let residency = Residency { sm_count: u64::from(gpu.sm_count), threads_per_sm: THREADS_PER_SM };
        let extra = |v: usize| reservations::limit_extra(limit, LIMIT_DEFAULTS[i] as u64, v as u64, residency);
        if let (Some(old), Some(new)) = (extra(c.settings.limits[i]), extra(value)) {
            // What the old value reserved goes back first, as the driver frees it first.
            c.limit_memory[i] = None;
            match reserve(state, new) {
                Ok(m) => c.limit_memory[i] = m,
                Err(e) => {
                    c.limit_memory[i] = reserve(state, old).ok().flatten();
                    return Err(e);
                }
            }
        }
        c.settings.limits[i] = value;
        Ok(())
    }
    fn cuCtxGetCacheConfig(config: *mut CUfunc_cache) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(config) }?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.cache_config))?);
        Ok(())
    }

    /// `CU_FUNC_CACHE_PREFER_NONE` … `_EQUAL` (0–3).
    fn cuCtxSetCacheConfig(config: CUfunc_cache) {
        if config > CU_FUNC_CACHE_PREFER_EQUAL {
            return Err(INVALID_VALUE);
        }
        with_settings(std::ptr::null_mut(), |s| {
            s.cache_config = config;
            Ok(())
        })
    }
    fn cuCtxGetSharedMemConfig(config: *mut CUsharedconfig) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(config) }?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.shared_mem_config))?);
        Ok(())
    }

    /// `CU_SHARED_MEM_CONFIG_DEFAULT_BANK_SIZE` … `_EIGHT_BYTE_BANK_SIZE` (0–2).
    fn cuCtxSetSharedMemConfig(config: CUsharedconfig) {
        if config > CU_SHARED_MEM_CONFIG_EIGHT_BYTE_BANK_SIZE {
            return Err(INVALID_VALUE);
        }
        with_settings(std::ptr::null_mut(), |s| {
            s.shared_mem_config = config;
            Ok(())
        })
    }

    /// An H100's: priorities from 0 (least) to -5 (greatest). Either output may be null.
    fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) {
        with_settings(std::ptr::null_mut(), |_| Ok(()))?;
        // SAFETY: null or writable per the export's contract.
        if let Some(out) = unsafe { Out::optional(least) } {
            out.set(0);
        }
        // SAFETY: as above.
        if let Some(out) = unsafe { Out::optional(greatest) } {
            out.set(-5);
        }
        Ok(())
    }

    /// Nothing persists in an L2 that is not simulated.
    fn cuCtxResetPersistingL2Cache() { with_settings(std::ptr::null_mut(), |_| Ok(())) }
}
