//! Green contexts (CUDA 12.4+): a device's SMs as a resource (`cuDeviceGetDevResource`), split
//! into groups (`cuDevSmResourceSplitByCount`), a descriptor of some of them
//! (`cuDevResourceGenerateDesc`), and a context on them (`cuGreenCtxCreate`), which takes a
//! context's memory like any other and everything made in it when destroyed
//! (`cuGreenCtxDestroy`). `cuCtxFromGreenCtx` names the context a green context runs as (a
//! handle of its own, as on a real driver); `cuGreenCtxStreamCreate` makes a stream in it. SMs
//! are not partitioned: work in a green context shares the device like any context's.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint};
use std::sync::Mutex;

use super::error::{CuResult, INVALID_HANDLE, INVALID_VALUE};
use super::ffi::Out;
use super::proc_address::driver_api;
use super::types::*;
use super::{Handle, context, device, driver, new_handle, stream};

/// An H100's SM partition granularity (minimum and co-scheduled alignment).
const SM_GRANULARITY: c_uint = 8;

/// Descriptors and green contexts: descriptor → (device of its resource, SMs); green context
/// → its context.
#[derive(Debug, Default)]
struct Green {
    descriptors: HashMap<Handle, c_uint>,
    contexts: HashMap<Handle, Handle>,
}

static GREEN: Mutex<Option<Green>> = Mutex::new(None);

fn with_green<T>(f: impl FnOnce(&mut Green) -> T) -> T {
    let mut g = GREEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(g.get_or_insert_with(Green::default))
}

fn sm_resource(sm_count: c_uint) -> CUdevResource {
    // SAFETY: CUdevResource is plain data (an enum, bytes, a union of plain data, a pointer),
    // for which all zeroes is valid.
    let mut r: CUdevResource = unsafe { std::mem::zeroed() };
    r.type_ = CU_DEV_RESOURCE_TYPE_SM;
    r.__bindgen_anon_1.sm = CUdevSmResource {
        smCount: sm_count,
        minSmPartitionSize: SM_GRANULARITY,
        smCoscheduledAlignment: SM_GRANULARITY,
        flags: 0,
        localityDomainId: 0,
    };
    r
}

/// The SM count of an SM resource.
fn sm_count(r: &CUdevResource) -> CuResult<c_uint> {
    if r.type_ != CU_DEV_RESOURCE_TYPE_SM {
        return Err(INVALID_VALUE);
    }
    // SAFETY: an SM resource's union holds `sm`.
    Ok(unsafe { r.__bindgen_anon_1.sm.smCount })
}

driver_api! {
    /// The device's SMs (`CU_DEV_RESOURCE_TYPE_SM`); other resource types are not simulated.
    fn cuDeviceGetDevResource(dev: CUdevice, result: *mut CUdevResource, type_: CUdevResourceType) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(result) }?;
        let (gpu, _) = device::gpu(driver()?.sim, dev)?;
        if type_ != CU_DEV_RESOURCE_TYPE_SM {
            return Err(INVALID_VALUE);
        }
        out.set(sm_resource(gpu.sm_count));
        Ok(())
    }

    /// Up to `*nb_groups` groups of `min_count` SMs (rounded up to 8), the rest in `remaining`;
    /// with `result` null, only the number of groups possible.
    fn cuDevSmResourceSplitByCount(
        result: *mut CUdevResource,
        nb_groups: *mut c_uint,
        input: *const CUdevResource,
        remaining: *mut CUdevResource,
        _use_flags: c_uint,
        min_count: c_uint,
    ) {
        // SAFETY: null or valid per the export's contract.
        let groups = unsafe { Out::new(nb_groups) }?;
        if input.is_null() {
            return Err(INVALID_VALUE);
        }
        // SAFETY: checked non-null; a resource per the contract.
        let total = sm_count(unsafe { &*input })?;
        let size = min_count.max(1).next_multiple_of(SM_GRANULARITY);
        // SAFETY: checked non-null above (Out::new).
        let asked = if result.is_null() { c_uint::MAX } else { unsafe { *nb_groups } };
        let n = (total / size).min(asked);
        if n == 0 {
            return Err(INVALID_VALUE);
        }
        for i in 0..n as usize {
            if !result.is_null() {
                // SAFETY: the caller's array has `*nb_groups` entries, and i < that.
                unsafe { result.add(i).write(sm_resource(size)) };
            }
        }
        // SAFETY: null or writable per the export's contract.
        if let Some(rest) = unsafe { Out::optional(remaining) } {
            rest.set(sm_resource(total - n * size));
        }
        groups.set(n);
        Ok(())
    }

    /// A descriptor of the SMs of `nb_resources` resources.
    fn cuDevResourceGenerateDesc(ph_desc: *mut CUdevResourceDesc, resources: *mut CUdevResource, nb_resources: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_desc) }?;
        if resources.is_null() || nb_resources == 0 {
            return Err(INVALID_VALUE);
        }
        let mut sms = 0;
        for i in 0..nb_resources as usize {
            // SAFETY: the caller's array has `nb_resources` entries.
            sms += sm_count(unsafe { &*resources.add(i) })?;
        }
        let desc = new_handle();
        with_green(|g| g.descriptors.insert(desc, sms));
        out.set(desc as CUdevResourceDesc);
        Ok(())
    }

    /// A context on the descriptor's SMs, taking a context's memory; flags must be
    /// `CU_GREEN_CTX_DEFAULT_STREAM`, as a real driver requires. It is not made current.
    fn cuGreenCtxCreate(ph_ctx: *mut CUgreenCtx, desc: CUdevResourceDesc, dev: CUdevice, flags: c_uint) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_ctx) }?;
        let d = driver()?;
        device::gpu(d.sim, dev)?;
        if flags != CU_GREEN_CTX_DEFAULT_STREAM || !with_green(|g| g.descriptors.contains_key(&(desc as Handle))) {
            return Err(INVALID_VALUE);
        }
        let ctx = context::create_detached(&mut d.lock(), d.sim, dev)?;
        let green = new_handle();
        with_green(|g| g.contexts.insert(green, ctx));
        out.set(green as CUgreenCtx);
        Ok(())
    }

    /// Destroys the context and everything made in it.
    fn cuGreenCtxDestroy(h_ctx: CUgreenCtx) {
        let ctx = with_green(|g| g.contexts.remove(&(h_ctx as Handle))).ok_or(INVALID_HANDLE)?;
        context::destroy_with_destructors(driver()?, ctx)
    }

    fn cuCtxFromGreenCtx(p_context: *mut CUcontext, h_ctx: CUgreenCtx) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(p_context) }?;
        let ctx = with_green(|g| g.contexts.get(&(h_ctx as Handle)).copied()).ok_or(INVALID_HANDLE)?;
        out.set(ctx as CUcontext);
        Ok(())
    }

    /// A stream of the green context (`CU_STREAM_NON_BLOCKING` is required, as on a real driver).
    fn cuGreenCtxStreamCreate(ph_stream: *mut CUstream, green_ctx: CUgreenCtx, flags: c_uint, priority: c_int) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(ph_stream) }?;
        let ctx = with_green(|g| g.contexts.get(&(green_ctx as Handle)).copied()).ok_or(INVALID_HANDLE)?;
        if flags != CU_STREAM_NON_BLOCKING as c_uint {
            return Err(INVALID_VALUE);
        }
        let mut reg = driver()?.lock();
        context::get(&reg, ctx)?;
        out.set(reg.streams.create(ctx, flags, priority.clamp(stream::PRIORITY_GREATEST, stream::PRIORITY_LEAST))? as CUstream);
        Ok(())
    }
}
