//! Kernel launches. Without a compute limit they go straight to the driver: this wrapper is
//! where SM pacing hooks in, and its cost when idle is measured by `benches/shim.rs`.

use std::ffi::c_void;

use crate::driver::cuda;
use crate::ffi::*;

/// # Safety
/// `cuLaunchKernel`'s contract.
#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_kernel(
    f: CUfunction,
    gx: u32,
    gy: u32,
    gz: u32,
    bx: u32,
    by: u32,
    bz: u32,
    shared: u32,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let Some(real) = cuda().cuLaunchKernel else { return CUDA_ERROR_NOT_SUPPORTED };
    // SAFETY: forwarded unchanged.
    unsafe { real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) }
}

/// # Safety
/// `cuLaunchKernel_ptsz`'s contract.
#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_kernel_ptsz(
    f: CUfunction,
    gx: u32,
    gy: u32,
    gz: u32,
    bx: u32,
    by: u32,
    bz: u32,
    shared: u32,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let Some(real) = cuda().cuLaunchKernel_ptsz else { return CUDA_ERROR_NOT_SUPPORTED };
    // SAFETY: forwarded unchanged.
    unsafe { real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) }
}
