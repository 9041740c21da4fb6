//! Contexts for graphics interop: `cuGLCtxCreate` (and `_v2`) and `cuVDPAUCtxCreate` (and
//! `_v2`), which on a real driver create a context bound to the current OpenGL context or to a
//! VDPAU device. No GL or VDPAU device is simulated or checked (`vdpDevice` and
//! `vdpGetProcAddress` are not read): each makes a context exactly as `cuCtxCreate_v2` does,
//! current on the calling thread, taking a context's memory, destroyed by `cuCtxDestroy_v2`.

use std::ffi::c_uint;

use super::error::CuResult;
use super::ffi::Out;
use super::proc_address::driver_api;
use super::types::*;
use super::{context, driver};

fn create(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CuResult {
    // SAFETY: null or writable per the export's contract.
    let out = unsafe { Out::new(pctx) }?;
    let d = driver()?;
    out.set(context::create(&mut d.lock(), d.sim, flags, dev)? as CUcontext);
    Ok(())
}

driver_api! {
    fn cuGLCtxCreate(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) { create(pctx, flags, dev) }
    fn cuGLCtxCreate_v2(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) { create(pctx, flags, dev) }
    fn cuVDPAUCtxCreate(
        pctx: *mut CUcontext,
        flags: c_uint,
        dev: CUdevice,
        _vdp_device: VdpDevice,
        _vdp_get_proc_address: *mut VdpGetProcAddress,
    ) {
        create(pctx, flags, dev)
    }
    fn cuVDPAUCtxCreate_v2(
        pctx: *mut CUcontext,
        flags: c_uint,
        dev: CUdevice,
        _vdp_device: VdpDevice,
        _vdp_get_proc_address: *mut VdpGetProcAddress,
    ) {
        create(pctx, flags, dev)
    }
}
