//! Graphics interop contexts: `cuGLCtxCreate` (and `_v2`) and `cuVDPAUCtxCreate` (and `_v2`)
//! create a context like `cuCtxCreate` does, bound to an OpenGL context or a VDPAU device, and
//! are charged the same: a context's memory before the call (refused with
//! `CUDA_ERROR_OUT_OF_MEMORY` when it does not fit), given back by `cuCtxDestroy_v2`. The GL and
//! VDPAU arguments pass through unread.

use super::ctx_create;
use crate::driver::cuda;
use crate::ffi::*;

/// # Safety
/// `cuGLCtxCreate`'s contract.
pub unsafe fn gl_ctx_create(ctx: *mut CUcontext, flags: u32, dev: CUdevice) -> CUresult {
    let f = real!(cuGLCtxCreate);
    // SAFETY: forwarded unchanged.
    ctx_create(ctx, dev, || unsafe { f(ctx, flags, dev) })
}

/// # Safety
/// `cuGLCtxCreate_v2`'s contract.
pub unsafe fn gl_ctx_create_v2(ctx: *mut CUcontext, flags: u32, dev: CUdevice) -> CUresult {
    let f = real!(cuGLCtxCreate_v2);
    // SAFETY: forwarded unchanged.
    ctx_create(ctx, dev, || unsafe { f(ctx, flags, dev) })
}

/// # Safety
/// `cuVDPAUCtxCreate`'s contract.
pub unsafe fn vdpau_ctx_create(
    ctx: *mut CUcontext,
    flags: u32,
    dev: CUdevice,
    vdp_device: VdpDevice,
    vdp_get_proc_address: *mut VdpGetProcAddress,
) -> CUresult {
    let f = real!(cuVDPAUCtxCreate);
    // SAFETY: forwarded unchanged.
    ctx_create(ctx, dev, || unsafe { f(ctx, flags, dev, vdp_device, vdp_get_proc_address) })
}

/// # Safety
/// `cuVDPAUCtxCreate_v2`'s contract.
pub unsafe fn vdpau_ctx_create_v2(
    ctx: *mut CUcontext,
    flags: u32,
    dev: CUdevice,
    vdp_device: VdpDevice,
    vdp_get_proc_address: *mut VdpGetProcAddress,
) -> CUresult {
    let f = real!(cuVDPAUCtxCreate_v2);
    // SAFETY: forwarded unchanged.
    ctx_create(ctx, dev, || unsafe { f(ctx, flags, dev, vdp_device, vdp_get_proc_address) })
}
