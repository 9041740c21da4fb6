//! Memory accounting: every allocation path charges the slice before the driver allocates, at
//! the driver's allocation granularity, and gives the charge back when the memory is freed.
//!
//! Order of operations, for every path: charge (refused past the limit: the driver is never
//! called, nothing is allocated), call the driver, and on failure return the charge; on
//! success record what was charged under the address or handle the driver returned. A free
//! takes the record out of the book first, then calls the driver, and returns the charge only
//! if the driver freed (putting the record back if it did not): the moment the driver frees,
//! it may hand the same address to another thread, whose record must not be the one this free
//! removes. A pointer or handle we did not charge is the driver's business and goes to it
//! untouched.
//!
//! No lock of ours (the book's mutex, a region's lock) is held across a call into the driver:
//! a driver call may block for long (or call back into an export), and every other thread of
//! the process needs the book. Where a call's outcome decides a charge that concurrent calls
//! share (a primary context, a physical allocation's references), the book keeps a count of
//! the calls in flight so that the charge stays until all of them have returned.
//!
//! Every charge records the context current when it was made. A context the driver destroys
//! (`cuCtxDestroy`, `cuDevicePrimaryCtxReset`, the last `cuDevicePrimaryCtxRelease`) takes
//! what was allocated in it, and those charges go back then; physical memory (`cuMemCreate`)
//! and pools are not a context's and stay as the driver keeps them.
//!
//! Stream-ordered allocations are charged by what their pool holds: memory freed back to a
//! pool stays reserved by this process until the pool releases it, so each pool's charge is
//! kept equal to its `RESERVED_MEM_CURRENT` after every operation on it, and after the first
//! synchronisation (stream, event, context) that follows a stream-ordered free, where the
//! driver trims pools to their release thresholds. An allocation captured into a graph is
//! graph memory, charged when the graph runs ([`graph`]). Virtual memory management
//! (`cuMemCreate`, `cuMemMap`, …) is in [`vmm`]; what the driver reserves outside
//! allocations (context limits, modules and libraries, green contexts) in [`reserved`]; GL and
//! VDPAU interop contexts, charged as `cuCtxCreate`'s, in [`interop`].

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::driver::cuda;
use crate::ffi::*;
use crate::state::{CONTEXT_CHARGE, Refusal, State, state};

/// What was charged, per process.
#[derive(Debug, Default)]
pub struct Book {
    /// Pointers, arrays and contexts: `(kind, id)` → charge.
    charges: HashMap<(Kind, u64), Charge>,
    /// Primary contexts, by device.
    primary: HashMap<CUdevice, Primary>,
    /// Memory pools: pool → (slice, bytes charged).
    pools: HashMap<usize, (usize, u64)>,
    /// Allocation granularity per device.
    granularity: HashMap<CUdevice, u64>,
    /// Physical allocations, their handles and mappings.
    vmm: vmm::Vmm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pointer,
    Array,
    Mipmap,
    Context,
    /// A context's limit (`CUlimit`), keyed by the context ([`reserved`]).
    Limit(CUlimit),
    Module,
    Library,
    /// A library's compressed entries, charged at its first use ([`lazylib`]).
    LazyLibrary,
    Green,
}

#[derive(Debug, Clone, Copy)]
struct Charge {
    slice: usize,
    bytes: u64,
    /// Stream-ordered allocation from this pool: charged through the pool.
    pool: Option<usize>,
    /// The context the charge goes with: the one current when it was made (a created
    /// context's own charge: that context); 0 when there was none.
    ctx: u64,
}

/// A device's primary context in this process. It holds one context charge exactly while
/// `retained + retaining > 0`: from the first retain's start to the last release's end.
#[derive(Debug)]
struct Primary {
    slice: usize,
    /// Retains that succeeded less releases that did.
    retained: u32,
    /// Retains in the driver now.
    retaining: u32,
    /// The context's handle, once a retain has returned it (it stays the same for the
    /// process's life).
    handle: Option<u64>,
}

fn book(s: &State) -> std::sync::MutexGuard<'_, Book> {
    s.book.lock().unwrap_or_else(|p| p.into_inner())
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to.max(1)).saturating_mul(to.max(1))
}

/// The device of the calling thread's current context.
fn current_device() -> Option<CUdevice> {
    let f = cuda().cuCtxGetDevice?;
    let mut dev = 0;
    // SAFETY: real driver call with a valid out pointer.
    (unsafe { f(&mut dev) } == CUDA_SUCCESS).then_some(dev)
}

/// The calling thread's current context; 0 when it has none (or the driver will not say).
fn current_context() -> u64 {
    let Some(f) = cuda().cuCtxGetCurrent else { return 0 };
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: real driver call with a valid out pointer.
    if unsafe { f(&mut ctx) } == CUDA_SUCCESS { ctx as u64 } else { 0 }
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

/// Charges `bytes` to `slice`. Refused past the limit, unless physical memory whose last
/// exported descriptor has been closed since was still charged: that is let go first. A
/// refusal for the limit is counted in the region.
fn charge(s: &State, slice: usize, bytes: u64) -> Result<(), Refusal> {
    let result = match s.slices[slice].charge(bytes) {
        Err(Refusal::OverLimit(_)) if vmm::settle(s) => s.slices[slice].charge(bytes),
        other => other,
    };
    if matches!(result, Err(Refusal::OverLimit(_))) {
        s.slices[slice].note_refused();
    }
    result
}

/// Returns what a record charged.
fn give_back(s: &State, c: Charge) {
    match c.pool {
        Some(pool) => settle_pool(s, pool),
        None => s.slices[c.slice].uncharge(c.bytes),
    }
}

/// Records a charge under the address or handle the driver just returned. A record already
/// there is stale: the driver let go of what it named without us seeing it (a context
/// destroyed with its allocations), or it would not hand the value out again. Its charge
/// goes back.
fn record(s: &State, key: (Kind, u64), charge: Charge) {
    let stale = book(s).charges.insert(key, charge);
    if let Some(old) = stale {
        crate::log::log!(Debug, "{key:?} was handed out again: returning its old charge of {} bytes", old.bytes);
        give_back(s, old);
    }
}

/// Frees `key` in the driver (`call`). Its record is taken out of the book first and put back
/// if the driver refuses; its charge goes back only once the driver has freed.
fn freeing(s: &State, key: (Kind, u64), call: impl FnOnce() -> CUresult) -> CUresult {
    let taken = book(s).charges.remove(&key);
    let rc = call();
    if let Some(c) = taken
        && (rc == CUDA_SUCCESS || !put_back(&mut book(s).charges, key, c))
    {
        give_back(s, c);
    }
    rc
}

/// Puts a record back where it was taken from, unless the value has been recorded anew since
/// (then the new record stands). `true` if it went back.
fn put_back<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) -> bool {
    match map.entry(key) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(value);
            true
        }
        std::collections::hash_map::Entry::Occupied(_) => false,
    }
}

/// Runs `call`, which destroys context `ctx` (0: none we know of) and everything allocated in
/// it when the driver accepts it. The records that go with the context are taken out of the
/// book first, as a free takes its one: once the context is gone its addresses and handles
/// may be handed to another thread at once.
fn destroying(s: &State, ctx: u64, call: impl FnOnce() -> CUresult) -> CUresult {
    let taken = if ctx == 0 { Vec::new() } else { book(s).charges.extract_if(|_, c| c.ctx == ctx).collect() };
    let rc = call();
    if rc == CUDA_SUCCESS {
        context_gone(s, taken);
    } else {
        let mut b = book(s);
        let stale: Vec<_> = taken.into_iter().filter(|&(k, c)| !put_back(&mut b.charges, k, c)).collect();
        drop(b);
        for (_, c) in stale {
            give_back(s, c);
        }
    }
    rc
}

/// A context went away in the driver, and with it what was allocated in it (`taken`, out of
/// the book): those charges go back. Stream-ordered allocations made in it went back to
/// their pools, which outlive contexts, and the driver may have trimmed any pool meanwhile:
/// every pool's charge is brought to what the driver says it reserves now.
fn context_gone(s: &State, taken: Vec<((Kind, u64), Charge)>) {
    if taken.iter().any(|(k, _)| k.0 == Kind::LazyLibrary) {
        lazylib::forget_clear();
    }
    for (key, c) in taken {
        if c.pool.is_none() {
            crate::log::log!(Debug, "{key:?} went with context {:#x}: returning {} bytes", c.ctx, c.bytes);
            s.slices[c.slice].uncharge(c.bytes);
        }
    }
    let pools: Vec<usize> = book(s).pools.keys().copied().collect();
    for pool in pools {
        settle_pool(s, pool);
    }
    graph::context_gone(s);
}

/// Charges `bytes` to `slice`, runs the driver call, records the result under `key` on
/// success and returns the charge on failure.
fn charged(
    s: &State,
    slice: usize,
    bytes: u64,
    ctx: u64,
    call: impl FnOnce() -> CUresult,
    key: impl FnOnce() -> Option<(Kind, u64)>,
) -> CUresult {
    if let Err(r) = charge(s, slice, bytes) {
        return r.into();
    }
    let rc = call();
    if rc != CUDA_SUCCESS {
        s.slices[slice].uncharge(bytes);
        return rc;
    }
    match key() {
        Some(k) => {
            // A created context's own charge goes with that context.
            let ctx = if k.0 == Kind::Context { k.1 } else { ctx };
            record(s, k, Charge { slice, bytes, pool: None, ctx });
        }
        None => s.slices[slice].uncharge(bytes),
    }
    rc
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

pub mod graph;
pub mod interop;
pub mod lazylib;
pub mod reserved;
pub mod vmm;

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
    charged(s, slice, bytes, current_context(), pass, || Some((Kind::Pointer, unsafe { *dptr })))
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
    charged(s, slice, bytes, current_context(), pass, || Some((Kind::Pointer, unsafe { *dptr })))
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
    if let Err(r) = charge(s, slice, estimate) {
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
    record(s, (Kind::Pointer, ptr), Charge { slice, bytes: actual, pool: None, ctx: current_context() });
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
    let pass = || unsafe { f(dptr) };
    if dptr == 0 || !crate::state::active() {
        return pass();
    }
    freeing(state(), (Kind::Pointer, dptr), pass)
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
    vmm::settle(s);
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
    if let Err(r) = charge(s, slice, advance) {
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
        record(s, (Kind::Pointer, ptr), Charge { slice, bytes: advance, pool: None, ctx: current_context() });
        return rc;
    };
    let ctx = current_context();
    let mut b = book(s);
    let before = b.pools.get(&pool).map_or(0, |e| e.1);
    b.pools.insert(pool, (slice, reserved));
    let stale = b.charges.insert((Kind::Pointer, ptr), Charge { slice, bytes: 0, pool: Some(pool), ctx });
    drop(b);
    if let Some(old) = stale.filter(|old| old.pool != Some(pool)) {
        give_back(s, old);
    }
    let charged = before + advance;
    if reserved <= charged {
        s.slices[slice].uncharge(charged - reserved);
    } else if charge(s, slice, reserved - charged).is_err() {
        // The pool grew past the limit: undo the allocation, its record out first.
        let mut b = book(s);
        b.charges.remove(&(Kind::Pointer, ptr));
        if let Some(e) = b.pools.get_mut(&pool) {
            e.1 = charged;
        }
        drop(b);
        if let Some(free) = cuda().cuMemFreeAsync {
            // SAFETY: freeing the pointer the driver just returned, on the same stream.
            unsafe { free(ptr, stream) };
        }
        settle_pool(s, pool);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    rc
}

unsafe fn alloc_async(
    dptr: *mut CUdeviceptr,
    size: usize,
    (stream, per_thread): (CUstream, bool),
    call: impl FnOnce() -> CUresult,
    explicit_pool: Option<CUmemoryPool>,
) -> CUresult {
    if dptr.is_null() || size == 0 || !crate::state::active() || graph::captured(stream, per_thread) {
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
    unsafe { alloc_async(dptr, size, (stream, false), || f(dptr, size, stream), None) }
}

/// # Safety
/// `cuMemAllocAsync_ptsz`'s contract.
pub unsafe fn mem_alloc_async_ptsz(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) -> CUresult {
    let f = real!(cuMemAllocAsync_ptsz);
    // SAFETY: forwarded unchanged.
    unsafe { alloc_async(dptr, size, (stream, true), || f(dptr, size, stream), None) }
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
    unsafe { alloc_async(dptr, size, (stream, false), || f(dptr, size, pool, stream), Some(pool)) }
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
    unsafe { alloc_async(dptr, size, (stream, true), || f(dptr, size, pool, stream), Some(pool)) }
}

/// Set by a stream-ordered free of pool memory: the next synchronisation may trim pools.
static POOL_FREED: AtomicBool = AtomicBool::new(false);

fn free_async(dptr: CUdeviceptr, call: impl FnOnce() -> CUresult) -> CUresult {
    if dptr == 0 || !crate::state::active() {
        return call();
    }
    let s = state();
    if book(s).charges.get(&(Kind::Pointer, dptr)).is_some_and(|c| c.pool.is_some()) {
        POOL_FREED.store(true, Ordering::Release);
    }
    freeing(s, (Kind::Pointer, dptr), call)
}

/// After a synchronisation returned: the driver trims pools to their release thresholds
/// then, so if pool memory was freed since the last one, every pool's charge follows what it
/// reserves. Otherwise (a process that never freed to a pool) this costs one atomic load.
pub fn synchronized() {
    if POOL_FREED.load(Ordering::Acquire) && POOL_FREED.swap(false, Ordering::AcqRel) {
        let s = state();
        let pools: Vec<usize> = book(s).pools.keys().copied().collect();
        for pool in pools {
            settle_pool(s, pool);
        }
    }
}

/// # Safety
/// `cuCtxSynchronize_v2`'s contract (what `cudaDeviceSynchronize` calls from CUDA 13). The
/// context may be another than the calling thread's: the pacing's windows are left alone.
pub unsafe fn ctx_synchronize_v2(ctx: CUcontext) -> CUresult {
    let f = real!(cuCtxSynchronize_v2);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(ctx) };
    if rc == CUDA_SUCCESS {
        synchronized();
    }
    rc
}

/// # Safety
/// `cuEventSynchronize`'s contract.
pub unsafe fn event_synchronize(event: CUevent) -> CUresult {
    let f = real!(cuEventSynchronize);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(event) };
    if rc == CUDA_SUCCESS {
        synchronized();
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
    let pass = || unsafe { f(pool) };
    if !crate::state::active() {
        return pass();
    }
    let s = state();
    let key = pool as usize;
    // The pool's records out first: once destroyed, its handle may name another thread's pool.
    let mut b = book(s);
    let entry = b.pools.remove(&key);
    let allocations: Vec<_> = b.charges.extract_if(|_, c| c.pool == Some(key)).collect();
    drop(b);
    let rc = pass();
    if rc != CUDA_SUCCESS {
        let mut b = book(s);
        if let Some(e) = entry
            && !put_back(&mut b.pools, key, e)
        {
            drop(b);
            s.slices[e.0].uncharge(e.1);
            return rc;
        }
        for (k, c) in allocations {
            put_back(&mut b.charges, k, c);
        }
        return rc;
    }
    if let Some((slice, charged)) = entry {
        s.slices[slice].uncharge(charged);
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
    charged(s, slice, bytes, current_context(), call, || Some((kind, unsafe { *handle_out.cast::<usize>() } as u64)))
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
    let pass = || unsafe { f(array) };
    if !crate::state::active() {
        return pass();
    }
    freeing(state(), (Kind::Array, array as u64), pass)
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
    let pass = || unsafe { f(array) };
    if !crate::state::active() {
        return pass();
    }
    freeing(state(), (Kind::Mipmap, array as u64), pass)
}

/// A primary context is charged when this process's first retain starts and returned when
/// its last release has let it go; no lock is held while the driver retains (see
/// [`Primary`]).
///
/// # Safety
/// `cuDevicePrimaryCtxRetain`'s contract.
pub unsafe fn primary_ctx_retain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxRetain);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(ctx, dev) };
    let s = state();
    let (slice, _) = slice_or_pass!(s, Some(dev), pass());
    let mut settled = false;
    loop {
        let mut b = book(s);
        let p = b.primary.entry(dev).or_insert(Primary { slice, retained: 0, retaining: 0, handle: None });
        // The first retain charges, under the book's lock so that a concurrent retain never
        // counts on a charge that is then refused (no driver call is made under it).
        if p.retained + p.retaining == 0 {
            let charged_to = p.slice;
            match s.slices[charged_to].charge(CONTEXT_CHARGE) {
                Ok(()) => {}
                Err(Refusal::OverLimit(_)) if !settled => {
                    // Memory kept only by a descriptor closed since may go: look, then again.
                    drop(b);
                    settled = true;
                    if vmm::settle(s) {
                        continue;
                    }
                    s.slices[charged_to].note_refused();
                    return CUDA_ERROR_OUT_OF_MEMORY;
                }
                Err(r) => {
                    if matches!(r, Refusal::OverLimit(_)) {
                        s.slices[charged_to].note_refused();
                    }
                    return r.into();
                }
            }
        }
        p.retaining += 1;
        break;
    }
    let rc = pass();
    let mut b = book(s);
    let Some(p) = b.primary.get_mut(&dev) else { return rc };
    p.retaining -= 1;
    if rc == CUDA_SUCCESS {
        p.retained += 1;
        if !ctx.is_null() {
            // SAFETY: the driver wrote the context on success.
            p.handle = Some(unsafe { *ctx } as u64);
        }
    }
    let gone = (p.retained + p.retaining == 0).then_some(p.slice);
    drop(b);
    if let Some(slice) = gone {
        s.slices[slice].uncharge(CONTEXT_CHARGE);
    }
    rc
}

/// A release the driver accepted: the last one destroyed the context, and returns its charge
/// and those of everything allocated in it (unless a retain is in flight, which keeps the
/// context, so they stay charged).
fn primary_released(dev: CUdevice) {
    if !crate::state::active() {
        return;
    }
    let s = state();
    let mut b = book(s);
    let Some(p) = b.primary.get_mut(&dev) else { return };
    if p.retained == 0 {
        return;
    }
    p.retained -= 1;
    if p.retained + p.retaining > 0 {
        return;
    }
    let (slice, handle) = (p.slice, p.handle);
    // Under the book's lock: a record made in this context after it was destroyed would need
    // a retain first, which this lock keeps out until the old records are taken.
    let taken = match handle {
        Some(h) => b.charges.extract_if(|_, c| c.ctx == h).collect(),
        None => Vec::new(),
    };
    drop(b);
    s.slices[slice].uncharge(CONTEXT_CHARGE);
    context_gone(s, taken);
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

/// A reset destroys the primary context and everything allocated in it, whose charges go
/// back; the context itself stays retained (the driver makes it again on its next use), so a
/// retained one keeps its one context charge.
fn primary_reset(dev: CUdevice, call: impl FnOnce() -> CUresult) -> CUresult {
    if !crate::state::active() {
        return call();
    }
    let s = state();
    let handle = book(s).primary.get(&dev).and_then(|p| p.handle).unwrap_or(0);
    destroying(s, handle, call)
}

/// # Safety
/// `cuDevicePrimaryCtxReset`'s contract.
pub unsafe fn primary_ctx_reset(dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxReset);
    // SAFETY: forwarded unchanged.
    primary_reset(dev, || unsafe { f(dev) })
}

/// # Safety
/// `cuDevicePrimaryCtxReset_v2`'s contract.
pub unsafe fn primary_ctx_reset_v2(dev: CUdevice) -> CUresult {
    let f = real!(cuDevicePrimaryCtxReset_v2);
    // SAFETY: forwarded unchanged.
    primary_reset(dev, || unsafe { f(dev) })
}

fn ctx_create(ctx: *mut CUcontext, dev: CUdevice, call: impl FnOnce() -> CUresult) -> CUresult {
    if ctx.is_null() {
        return call();
    }
    let s = state();
    let (slice, _) = slice_or_pass!(s, Some(dev), call());
    // SAFETY: the driver wrote the context on success.
    charged(s, slice, CONTEXT_CHARGE, 0, call, || Some((Kind::Context, unsafe { *ctx } as u64)))
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

/// The context's own charge and those of everything allocated in it go back once the driver
/// has destroyed it.
///
/// # Safety
/// `cuCtxDestroy_v2`'s contract.
pub unsafe fn ctx_destroy(ctx: CUcontext) -> CUresult {
    let f = real!(cuCtxDestroy_v2);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(ctx) };
    if !crate::state::active() {
        return pass();
    }
    destroying(state(), ctx as u64, pass)
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
