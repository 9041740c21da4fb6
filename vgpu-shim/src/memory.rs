//! Memory accounting: every allocation path charges the slice before the driver allocates, at
//! the driver's allocation granularity, and gives the charge back when the memory is freed.
//!
//! Order of operations, for every path: charge (refused past the limit: the driver is never
//! called, nothing is allocated), call the driver, and on failure return the charge. A free
//! goes to the driver first; the charge is returned only if the driver freed. A pointer or
//! handle we did not charge is the driver's business and goes to it untouched.
//!
//! Stream-ordered allocations are charged by what their pool holds: memory freed back to a
//! pool stays reserved by this process until the pool releases it, so each pool's charge is
//! kept equal to its `RESERVED_MEM_CURRENT` after every operation on it.
//!
//! A context takes what was allocated in it when it goes: `cuCtxDestroy`, the last release of
//! a primary context, and `cuDevicePrimaryCtxReset` (`cudaDeviceReset`) free its
//! allocations, pitched and managed memory, arrays and mipmapped arrays, so each charge
//! remembers the context that was current when it was made, and those charges are returned
//! when the driver says the context is gone. A reset also settles the device's pools to what
//! they still reserve. It does not release the primary context itself: NVIDIA's driver keeps
//! it retained ("resetting the primary context does not release it"), and it comes back on
//! the next use, so its charge follows the retain count as before. `cuMemCreate` handles and
//! pools are not a context's: they stay charged until released or destroyed.

use std::collections::HashMap;
use std::ffi::c_void;

use crate::driver::cuda;
use crate::ffi::*;
use crate::state::{CONTEXT_CHARGE, Refusal, State, state};

/// What was charged, per process.
#[derive(Debug, Default)]
pub struct Book {
    /// Pointers, handles, arrays and contexts: `(kind, id)` → charge.
    charges: HashMap<(Kind, u64), Charge>,
    /// Primary contexts: device → retains, slice, handle.
    primary: HashMap<CUdevice, Primary>,
    /// Memory pools: pool → (slice, bytes charged).
    pools: HashMap<usize, (usize, u64)>,
    /// Allocation granularity per device.
    granularity: HashMap<CUdevice, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pointer,
    Handle,
    Array,
    Mipmap,
    Context,
}

#[derive(Debug, Clone, Copy)]
struct Charge {
    slice: usize,
    bytes: u64,
    /// Stream-ordered allocation from this pool: charged through the pool.
    pool: Option<usize>,
    /// The context current when it was made (0: none), which frees it when it goes.
    ctx: usize,
}

impl Charge {
    fn new(slice: usize, bytes: u64, pool: Option<usize>) -> Self {
        Self { slice, bytes, pool, ctx: current_context() }
    }
}

/// A primary context this process retained.
#[derive(Debug, Clone, Copy)]
struct Primary {
    retains: u32,
    slice: usize,
    /// Its handle, as `cuDevicePrimaryCtxRetain` returned it.
    ctx: usize,
}

fn book(s: &State) -> std::sync::MutexGuard<'_, Book> {
    s.book.lock().unwrap_or_else(|p| p.into_inner())
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to.max(1)).saturating_mul(to.max(1))
}

/// The calling thread's current context (0: none, or the driver would not say).
fn current_context() -> usize {
    let Some(f) = cuda().cuCtxGetCurrent else { return 0 };
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: real driver call with a valid out pointer.
    if unsafe { f(&mut ctx) } == CUDA_SUCCESS { ctx as usize } else { 0 }
}

/// The device of the calling thread's current context.
fn current_device() -> Option<CUdevice> {
    let f = cuda().cuCtxGetDevice?;
    let mut dev = 0;
    // SAFETY: real driver call with a valid out pointer.
    (unsafe { f(&mut dev) } == CUDA_SUCCESS).then_some(dev)
}

/// The slice charged for work on `dev`, after the fail-closed check.
fn target(s: &State, dev: CUdevice) -> Result<Option<usize>, Refusal> {
    if s.slices.is_empty() && s.broken.is_none() {
        return Ok(None);
    }
    s.check_broken()?;
    Ok(s.slice_for_device(dev))
}

fn granularity(s: &State, dev: CUdevice) -> u64 {
    if let Some(g) = book(s).granularity.get(&dev) {
        return *g;
    }
    let mut g = 2 << 20;
    if let Some(f) = cuda().cuMemGetAllocationGranularity {
        let mut prop = CUmemAllocationProp { type_: CU_MEM_ALLOCATION_TYPE_PINNED, ..Default::default() };
        prop.location.type_ = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.__bindgen_anon_1.id = dev;
        let mut out = 0usize;
        // SAFETY: real driver call with valid pointers.
        if unsafe { f(&mut out, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) } == CUDA_SUCCESS && out > 0 {
            g = out as u64;
        }
    }
    book(s).granularity.insert(dev, g);
    g
}

/// Charges `bytes` to `slice`, runs the driver call, records the result under `key` on
/// success and returns the charge on failure.
fn charged(
    s: &State,
    slice: usize,
    bytes: u64,
    call: impl FnOnce() -> CUresult,
    key: impl FnOnce() -> Option<(Kind, u64)>,
) -> CUresult {
    if let Err(r) = s.slices[slice].charge(bytes) {
        return r.into();
    }
    let rc = call();
    if rc != CUDA_SUCCESS {
        s.slices[slice].uncharge(bytes);
        return rc;
    }
    match key() {
        Some(k) => {
            let charge = Charge::new(slice, bytes, None);
            book(s).charges.insert(k, charge);
        }
        None => s.slices[slice].uncharge(bytes),
    }
    rc
}

/// Returns what `key` was charged, if anything.
fn release(s: &State, key: (Kind, u64)) {
    let charge = book(s).charges.remove(&key);
    if let Some(c) = charge {
        match c.pool {
            Some(pool) => settle_pool(s, pool),
            None => s.slices[c.slice].uncharge(c.bytes),
        }
    }
}

macro_rules! real {
    ($name:ident) => {
        match cuda().$name {
            Some(f) => f,
            None => return CUDA_ERROR_NOT_SUPPORTED,
        }
    };
}

/// Resolves the slice for the current context's device, or runs the call unaccounted.
macro_rules! slice_or_pass {
    ($s:ident, $dev:expr, $pass:expr) => {{
        let Some(dev) = $dev else { return $pass };
        match target($s, dev) {
            Err(r) => return r.into(),
            Ok(None) => return $pass,
            Ok(Some(i)) => (i, dev),
        }
    }};
}

/// # Safety
/// `cuMemAlloc_v2`'s contract.
pub unsafe fn mem_alloc(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    let f = real!(cuMemAlloc_v2);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(dptr, size) };
    if dptr.is_null() || size == 0 {
        return pass();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, current_device(), pass());
    let bytes = round_up(size as u64, granularity(s, dev));
    // SAFETY: the driver wrote the pointer on success.
    charged(s, slice, bytes, pass, || Some((Kind::Pointer, unsafe { *dptr })))
}

/// # Safety
/// `cuMemAllocManaged`'s contract.
pub unsafe fn mem_alloc_managed(dptr: *mut CUdeviceptr, size: usize, flags: u32) -> CUresult {
    let f = real!(cuMemAllocManaged);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(dptr, size, flags) };
    if dptr.is_null() || size == 0 {
        return pass();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, current_device(), pass());
    // Managed memory may live on the device in full: charged as device memory.
    let bytes = round_up(size as u64, granularity(s, dev));
    // SAFETY: the driver wrote the pointer on success.
    charged(s, slice, bytes, pass, || Some((Kind::Pointer, unsafe { *dptr })))
}

/// # Safety
/// `cuMemAllocPitch_v2`'s contract.
pub unsafe fn mem_alloc_pitch(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: u32,
) -> CUresult {
    let f = real!(cuMemAllocPitch_v2);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(dptr, pitch, width, height, elem) };
    if dptr.is_null() || pitch.is_null() || width == 0 || height == 0 {
        return pass();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, current_device(), pass());
    let g = granularity(s, dev);
    // Before: the widest pitch the driver may choose; after: what it chose.
    let align = pitch_alignment(dev).max(512);
    let estimate = round_up(round_up(width as u64, align).saturating_mul(height as u64), g);
    if let Err(r) = s.slices[slice].charge(estimate) {
        return r.into();
    }
    let rc = pass();
    if rc != CUDA_SUCCESS {
        s.slices[slice].uncharge(estimate);
        return rc;
    }
    // SAFETY: the driver wrote both on success.
    let (ptr, real_pitch) = unsafe { (*dptr, *pitch) };
    let actual = round_up((real_pitch as u64).saturating_mul(height as u64), g);
    if actual > estimate {
        s.slices[slice].force_charge(actual - estimate);
    } else {
        s.slices[slice].uncharge(estimate - actual);
    }
    let charge = Charge::new(slice, actual, None);
    book(s).charges.insert((Kind::Pointer, ptr), charge);
    rc
}

fn pitch_alignment(dev: CUdevice) -> u64 {
    let Some(f) = cuda().cuDeviceGetAttribute else { return 512 };
    let mut v = 0i32;
    // SAFETY: real driver call with a valid out pointer.
    if unsafe { f(&mut v, CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT, dev) } == CUDA_SUCCESS && v > 0 {
        v as u64
    } else {
        512
    }
}

/// # Safety
/// `cuMemFree_v2`'s contract.
pub unsafe fn mem_free(dptr: CUdeviceptr) -> CUresult {
    let f = real!(cuMemFree_v2);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(dptr) };
    if rc == CUDA_SUCCESS && dptr != 0 && crate::state::active() {
        release(state(), (Kind::Pointer, dptr));
    }
    rc
}

/// # Safety
/// `cuMemGetInfo_v2`'s contract.
pub unsafe fn mem_get_info(free: *mut usize, total: *mut usize) -> CUresult {
    let f = real!(cuMemGetInfo_v2);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(free, total) };
    if rc != CUDA_SUCCESS || free.is_null() || total.is_null() {
        return rc;
    }
    let s = state();
    let Some(dev) = current_device() else { return rc };
    let slice = match target(s, dev) {
        Err(r) => return r.into(),
        Ok(None) => return rc,
        Ok(Some(i)) => &s.slices[i],
    };
    let usage = match slice.usage() {
        Ok(u) => u,
        Err(r) => return r.into(),
    };
    let limit = slice.limit();
    // SAFETY: checked non-null; the driver just wrote them.
    unsafe {
        *free = (limit.saturating_sub(usage) as usize).min(*free);
        *total = limit as usize;
    }
    rc
}

/// # Safety
/// `cuDeviceTotalMem_v2`'s contract.
pub unsafe fn device_total_mem(bytes: *mut usize, dev: CUdevice) -> CUresult {
    let f = real!(cuDeviceTotalMem_v2);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(bytes, dev) };
    if rc != CUDA_SUCCESS || bytes.is_null() {
        return rc;
    }
    let s = state();
    match target(s, dev) {
        Err(r) => r.into(),
        Ok(None) => rc,
        Ok(Some(i)) => {
            // SAFETY: checked non-null.
            unsafe { *bytes = s.slices[i].limit() as usize };
            rc
        }
    }
}

/// # Safety
/// `cuMemCreate`'s contract.
pub unsafe fn mem_create(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    let f = real!(cuMemCreate);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(handle, size, prop, flags) };
    if handle.is_null() || prop.is_null() || size == 0 {
        return pass();
    }
    // SAFETY: checked non-null; the caller passes a valid property struct.
    let location = unsafe { (*prop).location };
    if location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return pass();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, Some(location_id(&location)), pass());
    // The physical memory is what counts; mapping it (cuMemMap) adds nothing.
    let bytes = round_up(size as u64, granularity(s, dev));
    // SAFETY: the driver wrote the handle on success.
    charged(s, slice, bytes, pass, || Some((Kind::Handle, unsafe { *handle })))
}

/// # Safety
/// `cuMemRelease`'s contract.
pub unsafe fn mem_release(handle: CUmemGenericAllocationHandle) -> CUresult {
    let f = real!(cuMemRelease);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(handle) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        release(state(), (Kind::Handle, handle));
    }
    rc
}

/// What a pool holds now, if the driver says.
fn pool_reserved(pool: usize) -> Option<u64> {
    let f = cuda().cuMemPoolGetAttribute?;
    let mut v: u64 = 0;
    // SAFETY: real driver call; RESERVED_MEM_CURRENT writes a cuuint64_t.
    let rc = unsafe { f(pool as CUmemoryPool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, (&raw mut v).cast::<c_void>()) };
    (rc == CUDA_SUCCESS).then_some(v)
}

/// Brings a pool's charge to what it reserves now.
fn settle_pool(s: &State, pool: usize) {
    let Some(reserved) = pool_reserved(pool) else { return };
    let mut b = book(s);
    let Some(entry) = b.pools.get_mut(&pool) else { return };
    let (slice, charged) = *entry;
    entry.1 = reserved;
    drop(b);
    if reserved > charged {
        s.slices[slice].force_charge(reserved - charged);
    } else {
        s.slices[slice].uncharge(charged - reserved);
    }
}

/// A stream-ordered allocation of `size` from `pool`: charged in advance, then the pool's
/// charge is settled to what it reserves; memory the pool could not hold within the limit is
/// given back and the allocation refused.
#[allow(clippy::too_many_arguments)]
fn pool_alloc(
    s: &State,
    slice: usize,
    dev: CUdevice,
    pool: usize,
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: CUstream,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let advance = round_up(size as u64, granularity(s, dev));
    if let Err(r) = s.slices[slice].charge(advance) {
        return r.into();
    }
    let rc = call();
    if rc != CUDA_SUCCESS {
        s.slices[slice].uncharge(advance);
        return rc;
    }
    // SAFETY: the driver wrote the pointer on success.
    let ptr = unsafe { *dptr };
    let Some(reserved) = pool_reserved(pool) else {
        // No pool attributes: account the allocation itself.
        let charge = Charge::new(slice, advance, None);
        book(s).charges.insert((Kind::Pointer, ptr), charge);
        return rc;
    };
    let charge = Charge::new(slice, 0, Some(pool));
    let mut b = book(s);
    let before = b.pools.get(&pool).map_or(0, |e| e.1);
    b.pools.insert(pool, (slice, reserved));
    b.charges.insert((Kind::Pointer, ptr), charge);
    drop(b);
    let charged = before + advance;
    if reserved <= charged {
        s.slices[slice].uncharge(charged - reserved);
        return rc;
    }
    if s.slices[slice].charge(reserved - charged).is_ok() {
        return rc;
    }
    // The pool grew past the limit: undo the allocation.
    if let Some(free) = cuda().cuMemFreeAsync {
        // SAFETY: freeing the pointer the driver just returned, on the same stream.
        unsafe { free(ptr, stream) };
    }
    let mut b = book(s);
    b.charges.remove(&(Kind::Pointer, ptr));
    if let Some(e) = b.pools.get_mut(&pool) {
        e.1 = charged;
    }
    drop(b);
    settle_pool(s, pool);
    CUDA_ERROR_OUT_OF_MEMORY
}

unsafe fn alloc_async(
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: CUstream,
    call: impl FnOnce() -> CUresult,
    explicit_pool: Option<CUmemoryPool>,
) -> CUresult {
    if dptr.is_null() || size == 0 {
        return call();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, current_device(), call());
    let pool = match explicit_pool {
        Some(p) => p as usize,
        None => {
            let Some(get) = cuda().cuDeviceGetMemPool else { return call() };
            let mut p: CUmemoryPool = std::ptr::null_mut();
            // SAFETY: real driver call with a valid out pointer.
            if unsafe { get(&mut p, dev) } != CUDA_SUCCESS {
                return call();
            }
            p as usize
        }
    };
    pool_alloc(s, slice, dev, pool, dptr, size, stream, call)
}

/// # Safety
/// `cuMemAllocAsync`'s contract.
pub unsafe fn mem_alloc_async(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) -> CUresult {
    let f = real!(cuMemAllocAsync);
    // SAFETY: forwarded unchanged; then as `alloc_async` requires.
    unsafe { alloc_async(dptr, size, stream, || f(dptr, size, stream), None) }
}

/// # Safety
/// `cuMemAllocAsync_ptsz`'s contract.
pub unsafe fn mem_alloc_async_ptsz(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) -> CUresult {
    let f = real!(cuMemAllocAsync_ptsz);
    // SAFETY: forwarded unchanged.
    unsafe { alloc_async(dptr, size, stream, || f(dptr, size, stream), None) }
}

/// # Safety
/// `cuMemAllocFromPoolAsync`'s contract.
pub unsafe fn mem_alloc_from_pool(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    let f = real!(cuMemAllocFromPoolAsync);
    // SAFETY: forwarded unchanged.
    unsafe { alloc_async(dptr, size, stream, || f(dptr, size, pool, stream), Some(pool)) }
}

/// # Safety
/// `cuMemAllocFromPoolAsync_ptsz`'s contract.
pub unsafe fn mem_alloc_from_pool_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    let f = real!(cuMemAllocFromPoolAsync_ptsz);
    // SAFETY: forwarded unchanged.
    unsafe { alloc_async(dptr, size, stream, || f(dptr, size, pool, stream), Some(pool)) }
}

fn free_async(dptr: CUdeviceptr, call: impl FnOnce() -> CUresult) -> CUresult {
    let rc = call();
    if rc == CUDA_SUCCESS && dptr != 0 && crate::state::active() {
        release(state(), (Kind::Pointer, dptr));
    }
    rc
}

/// # Safety
/// `cuMemFreeAsync`'s contract.
pub unsafe fn mem_free_async(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    let f = real!(cuMemFreeAsync);
    // SAFETY: forwarded unchanged.
    free_async(dptr, || unsafe { f(dptr, stream) })
}

/// # Safety
/// `cuMemFreeAsync_ptsz`'s contract.
pub unsafe fn mem_free_async_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    let f = real!(cuMemFreeAsync_ptsz);
    // SAFETY: forwarded unchanged.
    free_async(dptr, || unsafe { f(dptr, stream) })
}

/// # Safety
/// `cuMemPoolTrimTo`'s contract.
pub unsafe fn mem_pool_trim_to(pool: CUmemoryPool, keep: usize) -> CUresult {
    let f = real!(cuMemPoolTrimTo);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(pool, keep) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        settle_pool(state(), pool as usize);
    }
    rc
}

/// # Safety
/// `cuMemPoolDestroy`'s contract.
pub unsafe fn mem_pool_destroy(pool: CUmemoryPool) -> CUresult {
    let f = real!(cuMemPoolDestroy);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(pool) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        let s = state();
        let mut b = book(s);
        let entry = b.pools.remove(&(pool as usize));
        b.charges.retain(|_, c| c.pool != Some(pool as usize));
        drop(b);
        if let Some((slice, charged)) = entry {
            s.slices[slice].uncharge(charged);
        }
    }
    rc
}

/// Bytes of an array: width × height × depth × channels × element size; levels of a mipmap
/// halve each dimension (the layer count of a layered array stays).
fn array_bytes(
    width: usize,
    height: usize,
    depth: usize,
    format: u32,
    channels: u32,
    levels: u32,
    layered: bool,
) -> u64 {
    let elem = array_format_bytes(format).saturating_mul(u64::from(channels.max(1)));
    (0..levels.max(1))
        .map(|l| {
            let dim = |v: usize| ((v.max(1) as u64) >> l).max(1);
            let depth = if layered { depth.max(1) as u64 } else { dim(depth) };
            dim(width).saturating_mul(dim(height)).saturating_mul(depth).saturating_mul(elem)
        })
        .fold(0, u64::saturating_add)
}

const CUDA_ARRAY3D_LAYERED: u32 = 0x01;

unsafe fn array_like(handle_out: *mut c_void, bytes: u64, kind: Kind, call: impl FnOnce() -> CUresult) -> CUresult {
    if handle_out.is_null() {
        return call();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, current_device(), call());
    let bytes = round_up(bytes, granularity(s, dev));
    // SAFETY: the driver wrote the handle on success; handles are pointers.
    charged(s, slice, bytes, call, || Some((kind, unsafe { *handle_out.cast::<usize>() } as u64)))
}

/// # Safety
/// `cuArrayCreate_v2`'s contract.
pub unsafe fn array_create(array: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) -> CUresult {
    let f = real!(cuArrayCreate_v2);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(array, desc) };
    if desc.is_null() {
        return pass();
    }
    // SAFETY: checked non-null.
    let d = unsafe { *desc };
    let bytes = array_bytes(d.Width, d.Height, 1, d.Format, d.NumChannels, 1, false);
    // SAFETY: as `array_like` requires.
    unsafe { array_like(array.cast(), bytes, Kind::Array, pass) }
}

/// # Safety
/// `cuArray3DCreate_v2`'s contract.
pub unsafe fn array3d_create(array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult {
    let f = real!(cuArray3DCreate_v2);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(array, desc) };
    if desc.is_null() {
        return pass();
    }
    // SAFETY: checked non-null.
    let d = unsafe { *desc };
    let bytes = array_bytes(d.Width, d.Height, d.Depth, d.Format, d.NumChannels, 1, false);
    // SAFETY: as `array_like` requires.
    unsafe { array_like(array.cast(), bytes, Kind::Array, pass) }
}

/// # Safety
/// `cuArrayDestroy`'s contract.
pub unsafe fn array_destroy(array: CUarray) -> CUresult {
    let f = real!(cuArrayDestroy);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(array) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        release(state(), (Kind::Array, array as u64));
    }
    rc
}

/// # Safety
/// `cuMipmappedArrayCreate`'s contract.
pub unsafe fn mipmapped_array_create(
    array: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: u32,
) -> CUresult {
    let f = real!(cuMipmappedArrayCreate);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(array, desc, levels) };
    if desc.is_null() {
        return pass();
    }
    // SAFETY: checked non-null.
    let d = unsafe { *desc };
    let layered = d.Flags & CUDA_ARRAY3D_LAYERED != 0;
    let bytes = array_bytes(d.Width, d.Height, d.Depth, d.Format, d.NumChannels, levels, layered);
    // SAFETY: as `array_like` requires.
    unsafe { array_like(array.cast(), bytes, Kind::Mipmap, pass) }
}

/// # Safety
/// `cuMipmappedArrayDestroy`'s contract.
pub unsafe fn mipmapped_array_destroy(array: CUmipmappedArray) -> CUresult {
    let f = real!(cuMipmappedArrayDestroy);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(array) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        release(state(), (Kind::Mipmap, array as u64));
    }
    rc
}

/// A primary context is charged when this process's first retain creates it and returned
/// when its last release lets it go.
///
/// # Safety
/// `cuDevicePrimaryCtxRetain`'s contract.
pub unsafe fn primary_ctx_retain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxRetain);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(ctx, dev) };
    if ctx.is_null() {
        return pass();
    }
    let s = state();
    let (slice, _) = slice_or_pass!(s, Some(dev), pass());
    let mut b = book(s);
    let retains = b.primary.get(&dev).map_or(0, |p| p.retains);
    if retains == 0
        && let Err(r) = s.slices[slice].charge(CONTEXT_CHARGE)
    {
        return r.into();
    }
    let rc = pass();
    if rc == CUDA_SUCCESS {
        // SAFETY: the driver wrote the context on success.
        let handle = unsafe { *ctx } as usize;
        b.primary.insert(dev, Primary { retains: retains + 1, slice, ctx: handle });
    } else if retains == 0 {
        s.slices[slice].uncharge(CONTEXT_CHARGE);
    }
    rc
}

fn primary_released(dev: CUdevice) {
    if !crate::state::active() {
        return;
    }
    let s = state();
    let mut b = book(s);
    let Some(p) = b.primary.get_mut(&dev) else { return };
    p.retains = p.retains.saturating_sub(1);
    if p.retains == 0 {
        let p = *p;
        b.primary.remove(&dev);
        drop(b);
        s.slices[p.slice].uncharge(CONTEXT_CHARGE);
        context_gone(s, p.ctx);
    }
}

/// Returns the charges of what was allocated in `ctx`, which the driver has just destroyed.
fn context_gone(s: &State, ctx: usize) {
    if ctx == 0 {
        return;
    }
    let mut gone = Vec::new();
    book(s).charges.retain(|&(kind, _), c| {
        let freed = c.ctx == ctx && c.pool.is_none() && matches!(kind, Kind::Pointer | Kind::Array | Kind::Mipmap);
        if freed {
            gone.push(*c);
        }
        !freed
    });
    for c in gone {
        s.slices[c.slice].uncharge(c.bytes);
    }
}

/// # Safety
/// `cuDevicePrimaryCtxRelease`'s contract.
pub unsafe fn primary_ctx_release(dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxRelease);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(dev) };
    if rc == CUDA_SUCCESS {
        primary_released(dev);
    }
    rc
}

/// # Safety
/// `cuDevicePrimaryCtxRelease_v2`'s contract.
pub unsafe fn primary_ctx_release_v2(dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxRelease_v2);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(dev) };
    if rc == CUDA_SUCCESS {
        primary_released(dev);
    }
    rc
}

/// After a successful reset of `dev`'s primary context: what was allocated in it is gone, and
/// the device's pools hold what they still reserve (a pool the driver no longer answers for
/// keeps its charge: fail closed). A primary context this process never retained through us
/// has nothing charged in it: its handle is only had by retaining it.
fn primary_reset(dev: CUdevice) {
    if !crate::state::active() {
        return;
    }
    let s = state();
    let primary = book(s).primary.get(&dev).map(|p| p.ctx);
    if let Some(ctx) = primary {
        context_gone(s, ctx);
    }
    let Some(slice) = s.slice_for_device(dev) else { return };
    let pools: Vec<usize> = book(s).pools.iter().filter(|(_, e)| e.0 == slice).map(|(&p, _)| p).collect();
    for pool in pools {
        settle_pool(s, pool);
    }
}

/// # Safety
/// `cuDevicePrimaryCtxReset`'s contract.
pub unsafe fn primary_ctx_reset(dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxReset);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(dev) };
    if rc == CUDA_SUCCESS {
        primary_reset(dev);
    }
    rc
}

/// # Safety
/// `cuDevicePrimaryCtxReset_v2`'s contract.
pub unsafe fn primary_ctx_reset_v2(dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxReset_v2);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(dev) };
    if rc == CUDA_SUCCESS {
        primary_reset(dev);
    }
    rc
}

fn ctx_create(ctx: *mut CUcontext, dev: CUdevice, call: impl FnOnce() -> CUresult) -> CUresult {
    if ctx.is_null() {
        return call();
    }
    let s = state();
    let (slice, _) = slice_or_pass!(s, Some(dev), call());
    // SAFETY: the driver wrote the context on success.
    charged(s, slice, CONTEXT_CHARGE, call, || Some((Kind::Context, unsafe { *ctx } as u64)))
}

/// # Safety
/// `cuCtxCreate_v2`'s contract.
pub unsafe fn ctx_create_v2(ctx: *mut CUcontext, flags: u32, dev: CUdevice) -> CUresult {
    let f = real!(cuCtxCreate_v2);
    // SAFETY: forwarded unchanged.
    ctx_create(ctx, dev, || unsafe { f(ctx, flags, dev) })
}

/// # Safety
/// `cuCtxCreate_v3`'s contract.
pub unsafe fn ctx_create_v3(
    ctx: *mut CUcontext,
    params: *mut CUexecAffinityParam,
    n: i32,
    flags: u32,
    dev: CUdevice,
) -> CUresult {
    let f = real!(cuCtxCreate_v3);
    // SAFETY: forwarded unchanged.
    ctx_create(ctx, dev, || unsafe { f(ctx, params, n, flags, dev) })
}

/// # Safety
/// `cuCtxCreate_v4`'s contract.
pub unsafe fn ctx_create_v4(
    ctx: *mut CUcontext,
    params: *mut CUctxCreateParams,
    flags: u32,
    dev: CUdevice,
) -> CUresult {
    let f = real!(cuCtxCreate_v4);
    // SAFETY: forwarded unchanged.
    ctx_create(ctx, dev, || unsafe { f(ctx, params, flags, dev) })
}

/// # Safety
/// `cuCtxDestroy_v2`'s contract.
pub unsafe fn ctx_destroy(ctx: CUcontext) -> CUresult {
    let f = real!(cuCtxDestroy_v2);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(ctx) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        let s = state();
        release(s, (Kind::Context, ctx as u64));
        context_gone(s, ctx as usize);
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_sizes() {
        // 1024 × 768 float4 (FLOAT = 0x20, 4 channels).
        assert_eq!(array_bytes(1024, 768, 0, 0x20, 4, 1, false), 1024 * 768 * 16);
        // 1-D arrays have height 0.
        assert_eq!(array_bytes(1000, 0, 0, 0x01, 1, 1, false), 1000);
        // Mipmap levels halve each dimension down to 1.
        assert_eq!(array_bytes(8, 8, 0, 0x01, 1, 4, false), 64 + 16 + 4 + 1);
        // Layered: the layer count stays.
        assert_eq!(array_bytes(4, 4, 3, 0x01, 1, 2, true), 48 + 12);
        // An unknown format is charged as the largest element.
        assert_eq!(array_bytes(10, 1, 1, 0xfe, 1, 1, false), 160);
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(1, 2 << 20), 2 << 20);
        assert_eq!(round_up(2 << 20, 2 << 20), 2 << 20);
        assert_eq!(round_up(0, 2 << 20), 0);
        assert_eq!(round_up(u64::MAX, 2 << 20), u64::MAX);
    }
}
