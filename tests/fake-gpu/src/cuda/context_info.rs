//! Context settings and queries that NVIDIA's runtime (and frameworks) use: API version,
//! flags, limits, cache and shared-memory preferences, stream priorities. Settings are kept
//! per context and answered back; none of them changes what the simulator does.

use std::ffi::{c_int, c_uint};

use super::context;
use super::driver;
use super::error::{self, CuResult, INVALID_VALUE};
use super::ffi::Out;
use super::proc_address::driver_api;
use super::types::{CUcontext, CUdevice};

/// `CUlimit`s: stack size, printf FIFO, malloc heap, device-runtime sync depth and pending
/// launches, L2 fetch granularity, persisting L2 size, shared memory size, CIG enabled, CIG
/// shared-memory fallback; with an H100's defaults.
const LIMIT_DEFAULTS: [usize; 10] = [1024, 1 << 20, 8 << 20, 2, 2048, 64, 0, 0, 0, 0];

/// What a context keeps of what it was told.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub flags: u32,
    limits: [usize; LIMIT_DEFAULTS.len()],
    cache_config: c_int,
    shared_mem_config: c_int,
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

fn limit_index(limit: c_int) -> CuResult<usize> {
    usize::try_from(limit).ok().filter(|&i| i < LIMIT_DEFAULTS.len()).ok_or(error::UNSUPPORTED_LIMIT)
}

driver_api! {
    /// 3020, as for every context made through the `_v2` API.
    #[proc("cuCtxGetApiVersion", 3020)]
    fn cuCtxGetApiVersion(ctx: CUcontext, version: *mut c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(version) }?;
        with_settings(ctx, |_| Ok(()))?;
        out.set(3020);
        Ok(())
    }

    #[proc("cuCtxGetFlags", 7000)]
    fn cuCtxGetFlags(flags: *mut c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(flags) }?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.flags))?);
        Ok(())
    }

    #[proc("cuCtxSetFlags", 12010)]
    fn cuCtxSetFlags(flags: c_uint) {
        context::check_flags(flags)?;
        with_settings(std::ptr::null_mut(), |s| {
            s.flags = flags;
            Ok(())
        })
    }

    /// What `cudaSetDeviceFlags` calls; applies to the primary context now or when it starts.
    #[proc("cuDevicePrimaryCtxSetFlags", 7000)]
    fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) {
        let d = driver()?;
        context::set_primary_flags(&mut d.lock(), d.sim, dev, flags)
    }

    #[proc("cuDevicePrimaryCtxSetFlags", 11000)]
    fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) {
        let d = driver()?;
        context::set_primary_flags(&mut d.lock(), d.sim, dev, flags)
    }

    /// An H100's defaults until set; unknown limits are `CUDA_ERROR_UNSUPPORTED_LIMIT`.
    #[proc("cuCtxGetLimit", 3010)]
    fn cuCtxGetLimit(value: *mut usize, limit: c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(value) }?;
        let i = limit_index(limit)?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.limits[i]))?);
        Ok(())
    }

    /// Kept and answered back; nothing else changes.
    #[proc("cuCtxSetLimit", 3010)]
    fn cuCtxSetLimit(limit: c_int, value: usize) {
        let i = limit_index(limit)?;
        with_settings(std::ptr::null_mut(), |s| {
            s.limits[i] = value;
            Ok(())
        })
    }

    #[proc("cuCtxGetCacheConfig", 3020)]
    fn cuCtxGetCacheConfig(config: *mut c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(config) }?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.cache_config))?);
        Ok(())
    }

    /// `CU_FUNC_CACHE_PREFER_NONE` … `_EQUAL` (0–3).
    #[proc("cuCtxSetCacheConfig", 3020)]
    fn cuCtxSetCacheConfig(config: c_int) {
        if !(0..=3).contains(&config) {
            return Err(INVALID_VALUE);
        }
        with_settings(std::ptr::null_mut(), |s| {
            s.cache_config = config;
            Ok(())
        })
    }

    #[proc("cuCtxGetSharedMemConfig", 4020)]
    fn cuCtxGetSharedMemConfig(config: *mut c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(config) }?;
        out.set(with_settings(std::ptr::null_mut(), |s| Ok(s.shared_mem_config))?);
        Ok(())
    }

    /// `CU_SHARED_MEM_CONFIG_DEFAULT_BANK_SIZE` … `_EIGHT_BYTE_BANK_SIZE` (0–2).
    #[proc("cuCtxSetSharedMemConfig", 4020)]
    fn cuCtxSetSharedMemConfig(config: c_int) {
        if !(0..=2).contains(&config) {
            return Err(INVALID_VALUE);
        }
        with_settings(std::ptr::null_mut(), |s| {
            s.shared_mem_config = config;
            Ok(())
        })
    }

    /// An H100's: priorities from 0 (least) to -5 (greatest). Either output may be null.
    #[proc("cuCtxGetStreamPriorityRange", 5050)]
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
    #[proc("cuCtxResetPersistingL2Cache", 11000)]
    fn cuCtxResetPersistingL2Cache() { with_settings(std::ptr::null_mut(), |_| Ok(())) }
}
