//! Contexts: primary contexts (retained and released per device, reference-counted for the
//! process) and created ones, and each thread's stack of current contexts.
//!
//! A live context holds `context_memory` of its device's memory; destroying it (or
//! releasing a primary context for the last time, or resetting it) frees that and every
//! allocation, stream, event and module made in it. A primary context keeps its handle for
//! the life of the process; while it is inactive, using it answers
//! `CUDA_ERROR_INVALID_CONTEXT`.
//!
//! Contexts also keep what NVIDIA's runtime stores in them through the private
//! context-local-storage table ([`super::dark_api`]): a value per key, with a destructor the
//! driver calls, before the context goes, when it is destroyed, reset or released for the
//! last time. Destructors run without the registry lock: they may call back into the driver.

use std::cell::RefCell;
use std::collections::HashMap;
use std::thread::ThreadId;

use super::dark_api::LocalDestructor;
use super::error::{CuResult, INVALID_CONTEXT, INVALID_DEVICE, INVALID_HANDLE, INVALID_VALUE, OUT_OF_MEMORY};
use super::launch::{self, QueueTime};
use super::memory::Charge;
use super::types::{CU_EXEC_AFFINITY_TYPE_SM_COUNT, CUdevice, CUexecAffinityParam, affinity_sm_count};
use super::{Driver, Handle, Registry, device, new_handle};
use crate::state::Simulator;

thread_local! {
    /// This thread's context stack; the top is current. Handles may be stale: they are
    /// checked against the live contexts on use.
    static STACK: RefCell<Vec<Handle>> = const { RefCell::new(Vec::new()) };
}

/// A live context.
#[derive(Debug)]
pub(crate) struct Context {
    pub device: u32,
    pub primary: bool,
    /// Flags, limits and cache preference ([`super::context_info`]).
    pub settings: super::context_info::Settings,
    _memory: Charge,
    /// What the stack, printf FIFO and malloc heap limits reserve beyond their defaults
    /// (indexed by `CUlimit`; [`super::context_info`]).
    pub limit_memory: [Option<Charge>; 3],
    pub legacy: QueueTime,
    pub per_thread: HashMap<ThreadId, QueueTime>,
}

#[derive(Debug)]
struct Primary {
    handle: Handle,
    retained: u32,
    flags: u32,
}

/// A value the runtime stored in a context.
#[derive(Debug, Clone, Copy)]
struct Local {
    value: usize,
    destructor: Option<LocalDestructor>,
}

/// A destructor to call: `destructor(ctx, key, value)`.
#[derive(Debug)]
pub(crate) struct PendingDestructor {
    ctx: Handle,
    key: usize,
    value: usize,
    destructor: LocalDestructor,
}

#[derive(Debug, Default)]
pub(crate) struct Contexts {
    pub live: HashMap<Handle, Context>,
    primary: Vec<Primary>,
    /// Context-local storage: (context, key) → value.
    local: HashMap<(Handle, usize), Local>,
}

impl Contexts {
    pub fn new(devices: usize) -> Self {
        let primary = (0..devices).map(|_| Primary { handle: new_handle(), retained: 0, flags: 0 }).collect();
        Self { live: HashMap::new(), primary, local: HashMap::new() }
    }
}

/// The calling thread's current context, which must be live.
pub(crate) fn current(reg: &Registry) -> CuResult<Handle> {
    let top = STACK.with_borrow(|s| s.last().copied()).ok_or(INVALID_CONTEXT)?;
    if reg.contexts.live.contains_key(&top) { Ok(top) } else { Err(INVALID_CONTEXT) }
}

/// The live context `ctx`.
pub(crate) fn get(reg: &Registry, ctx: Handle) -> CuResult<&Context> {
    reg.contexts.live.get(&ctx).ok_or(INVALID_CONTEXT)
}

/// The memory of the live context `ctx`'s device.
pub(crate) fn device_state(reg: &Registry, ctx: Handle) -> CuResult<&'static crate::state::DeviceState> {
    let device = get(reg, ctx)?.device;
    super::driver()?.sim.cuda_state(device).ok_or(INVALID_CONTEXT)
}

/// The top of the stack without checking it: what `cuCtxGetCurrent` reports.
pub(crate) fn top() -> Option<Handle> {
    STACK.with_borrow(|s| s.last().copied())
}

fn make(sim: &'static Simulator, device: CUdevice, primary: bool, flags: u32) -> CuResult<Context> {
    let (gpu, state) = device::gpu(sim, device)?;
    let memory = Charge::uncounted(state, gpu.context_memory.0).map_err(|_| OUT_OF_MEMORY)?;
    Ok(Context {
        // The CUDA ordinal (what cuCtxGetDevice returns and `Driver::device` takes), not the
        // GPU's index: they differ for a MIG device or under CUDA_VISIBLE_DEVICES.
        device: u32::try_from(device).map_err(|_| INVALID_DEVICE)?,
        primary,
        settings: super::context_info::Settings::new(flags),
        _memory: memory,
        limit_memory: [None, None, None],
        legacy: QueueTime::default(),
        per_thread: HashMap::new(),
    })
}

/// Destroy a live context and everything made in it.
fn teardown(reg: &mut Registry, ctx: Handle) {
    reg.contexts.local.retain(|&(c, _), _| c != ctx);
    reg.memory.drop_context(ctx);
    reg.streams.drop_context(ctx);
    reg.modules.drop_context(ctx);
    super::graph::drop_context(reg, ctx);
    reg.contexts.live.remove(&ctx);
}

fn primary<'a>(reg: &'a mut Registry, sim: &Simulator, device: CUdevice) -> CuResult<&'a mut Primary> {
    device::gpu(sim, device)?;
    Ok(&mut reg.contexts.primary[device as usize])
}

/// `cuDevicePrimaryCtxRetain`: the first retain creates the context.
pub(crate) fn retain_primary(reg: &mut Registry, sim: &'static Simulator, device: CUdevice) -> CuResult<Handle> {
    let p = primary(reg, sim, device)?;
    let (handle, flags) = (p.handle, p.flags);
    if let std::collections::hash_map::Entry::Vacant(slot) = reg.contexts.live.entry(handle) {
        slot.insert(make(sim, device, true, flags)?);
    }
    primary(reg, sim, device)?.retained += 1;
    Ok(handle)
}

/// `cuDevicePrimaryCtxRelease`: the last release destroys the context.
pub(crate) fn release_primary(reg: &mut Registry, sim: &'static Simulator, device: CUdevice) -> CuResult {
    let p = primary(reg, sim, device)?;
    if p.retained == 0 {
        return Err(INVALID_CONTEXT);
    }
    p.retained -= 1;
    let (handle, last) = (p.handle, p.retained == 0);
    if last {
        teardown(reg, handle);
    }
    Ok(())
}

/// `cuDevicePrimaryCtxReset`: destroy everything made in the primary context. If it is
/// still retained, it comes back at once, empty (the real driver re-creates it on next use).
pub(crate) fn reset_primary(reg: &mut Registry, sim: &'static Simulator, device: CUdevice) -> CuResult {
    let p = primary(reg, sim, device)?;
    let (handle, retained, flags) = (p.handle, p.retained, p.flags);
    if reg.contexts.live.contains_key(&handle) {
        teardown(reg, handle);
    }
    if retained > 0 {
        let ctx = make(sim, device, true, flags)?;
        reg.contexts.live.insert(handle, ctx);
    }
    Ok(())
}

/// The primary context's handle for `device`, live or not (the runtime interface's slot 2).
pub(crate) fn primary_handle(reg: &Registry, sim: &Simulator, device: CUdevice) -> CuResult<Handle> {
    device::gpu(sim, device)?;
    Ok(reg.contexts.primary[device as usize].handle)
}

/// `cuDevicePrimaryCtxSetFlags`: the flags the primary context of `device` gets (at once if
/// it is active).
pub(crate) fn set_primary_flags(reg: &mut Registry, sim: &Simulator, device: CUdevice, flags: u32) -> CuResult {
    check_flags(flags)?;
    let p = primary(reg, sim, device)?;
    p.flags = flags;
    let handle = p.handle;
    if let Some(c) = reg.contexts.live.get_mut(&handle) {
        c.settings.flags = flags;
    }
    Ok(())
}

/// Context flags this driver knows, one scheduling mode at most.
pub(crate) fn check_flags(flags: u32) -> CuResult {
    if flags & !CTX_FLAGS != 0 || (flags & 0x07).count_ones() > 1 { Err(INVALID_VALUE) } else { Ok(()) }
}

/// `cuDevicePrimaryCtxGetState`: (flags, active).
pub(crate) fn primary_state(reg: &mut Registry, sim: &Simulator, device: CUdevice) -> CuResult<(u32, bool)> {
    let p = primary(reg, sim, device)?;
    let (handle, flags) = (p.handle, p.flags);
    Ok((flags, reg.contexts.live.contains_key(&handle)))
}

/// `CU_CTX_SCHED_MASK | CU_CTX_MAP_HOST | CU_CTX_LMEM_RESIZE_TO_MAX | CU_CTX_COREDUMP_ENABLE
/// | CU_CTX_USER_COREDUMP_ENABLE | CU_CTX_SYNC_MEMOPS`.
const CTX_FLAGS: u32 = 0x07 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80;

/// `cuCtxCreate*`: a new context, pushed onto the calling thread's stack.
pub(crate) fn create(reg: &mut Registry, sim: &'static Simulator, flags: u32, device: CUdevice) -> CuResult<Handle> {
    check_flags(flags)?;
    let ctx = make(sim, device, false, flags)?;
    let handle = new_handle();
    reg.contexts.live.insert(handle, ctx);
    STACK.with_borrow_mut(|s| s.push(handle));
    Ok(handle)
}

/// A created context that is not made current (a green context's).
pub(crate) fn create_detached(reg: &mut Registry, sim: &'static Simulator, device: CUdevice) -> CuResult<Handle> {
    let ctx = make(sim, device, false, 0)?;
    let handle = new_handle();
    reg.contexts.live.insert(handle, ctx);
    Ok(handle)
}

/// `cuCtxDestroy`: only created contexts; popped if current on this thread.
pub(crate) fn destroy(reg: &mut Registry, ctx: Handle) -> CuResult {
    match reg.contexts.live.get(&ctx) {
        Some(c) if !c.primary => {}
        _ => return Err(INVALID_CONTEXT),
    }
    teardown(reg, ctx);
    STACK.with_borrow_mut(|s| {
        if s.last() == Some(&ctx) {
            s.pop();
        }
    });
    Ok(())
}

/// A context a thread may make current: a live one, or a primary context even while it is
/// inactive (as NVIDIA's runtime does with the handle it gets before retaining it).
fn settable(reg: &Registry, ctx: Handle) -> CuResult {
    if reg.contexts.live.contains_key(&ctx) || reg.contexts.primary.iter().any(|p| p.handle == ctx) {
        Ok(())
    } else {
        Err(INVALID_CONTEXT)
    }
}

/// `cuCtxSetCurrent`: replace the top of the stack; null pops.
pub(crate) fn set_current(reg: &Registry, ctx: Handle) -> CuResult {
    if ctx == 0 {
        STACK.with_borrow_mut(|s| s.pop());
        return Ok(());
    }
    settable(reg, ctx)?;
    STACK.with_borrow_mut(|s| match s.last_mut() {
        Some(top) => *top = ctx,
        None => s.push(ctx),
    });
    Ok(())
}

pub(crate) fn push(reg: &Registry, ctx: Handle) -> CuResult {
    settable(reg, ctx)?;
    STACK.with_borrow_mut(|s| s.push(ctx));
    Ok(())
}

pub(crate) fn pop() -> CuResult<Handle> {
    STACK.with_borrow_mut(|s| s.pop()).ok_or(INVALID_CONTEXT)
}

/// `ctx`'s device; `ctx` 0 means the current context.
pub(crate) fn device_of(reg: &Registry, ctx: Handle) -> CuResult<CUdevice> {
    let ctx = if ctx == 0 { current(reg)? } else { ctx };
    Ok(get(reg, ctx)?.device as CUdevice)
}

/// `cuCtxSynchronize`: sleep until every queue of `ctx` (0: the current context) is idle; then
/// memory pools trim to their release thresholds.
pub(crate) fn synchronize(driver: &Driver, ctx: Handle) -> CuResult {
    let until = {
        let mut reg = driver.lock();
        let ctx = if ctx == 0 { current(&reg)? } else { ctx };
        get(&reg, ctx)?;
        super::graph::forbid_context_sync(&mut reg, ctx)?;
        launch::context_completion(&reg, ctx)
    };
    launch::wait_until(until);
    driver.lock().memory.trim_at_sync();
    Ok(())
}

/// Execution affinity for `cuCtxCreate_v3`/`_v4`: SM counts from 1 to the device's.
pub(crate) fn check_affinity(sim: &Simulator, device: CUdevice, params: &[CUexecAffinityParam]) -> CuResult {
    let (gpu, _) = device::gpu(sim, device)?;
    for p in params {
        let sm_count = affinity_sm_count(p);
        if p.type_ != CU_EXEC_AFFINITY_TYPE_SM_COUNT || sm_count == 0 || sm_count > gpu.sm_count {
            return Err(INVALID_VALUE);
        }
    }
    Ok(())
}

// ---- context-local storage and its destructors ------------------------------------------

/// `ctx`, or the current context for 0; it must be live.
pub(crate) fn live_or_current(reg: &Registry, ctx: Handle) -> CuResult<Handle> {
    let ctx = if ctx == 0 { current(reg)? } else { ctx };
    get(reg, ctx)?;
    Ok(ctx)
}

pub(crate) fn local_put(
    reg: &mut Registry,
    ctx: Handle,
    key: usize,
    value: usize,
    destructor: Option<LocalDestructor>,
) -> CuResult {
    let ctx = live_or_current(reg, ctx)?;
    reg.contexts.local.insert((ctx, key), Local { value, destructor });
    Ok(())
}

pub(crate) fn local_delete(reg: &mut Registry, ctx: Handle, key: usize) -> CuResult {
    let ctx = live_or_current(reg, ctx)?;
    reg.contexts.local.remove(&(ctx, key)).map(drop).ok_or(INVALID_HANDLE)
}

pub(crate) fn local_get(reg: &Registry, ctx: Handle, key: usize) -> CuResult<usize> {
    let ctx = live_or_current(reg, ctx)?;
    reg.contexts.local.get(&(ctx, key)).map(|l| l.value).ok_or(INVALID_HANDLE)
}

/// Take `ctx`'s stored values that have destructors, to call before it goes.
fn take_destructors(reg: &mut Registry, ctx: Handle) -> Vec<PendingDestructor> {
    let keys: Vec<usize> = reg.contexts.local.keys().filter(|&&(c, _)| c == ctx).map(|&(_, k)| k).collect();
    keys.into_iter()
        .filter_map(|key| {
            let local = reg.contexts.local.remove(&(ctx, key))?;
            Some(PendingDestructor { ctx, key, value: local.value, destructor: local.destructor? })
        })
        .collect()
}

/// Call destructors; the registry lock must not be held.
fn run_destructors(pending: Vec<PendingDestructor>) {
    for p in pending {
        super::trace::line(|| format!("context-local storage destructor({:#x}, {:#x}, {:#x})", p.ctx, p.key, p.value));
        (p.destructor)(
            p.ctx as super::types::CUcontext,
            p.key as *mut std::ffi::c_void,
            p.value as *mut std::ffi::c_void,
        );
    }
}

/// `cuCtxDestroy`, with the runtime's destructors called first.
pub(crate) fn destroy_with_destructors(driver: &Driver, ctx: Handle) -> CuResult {
    let pending = {
        let mut reg = driver.lock();
        match reg.contexts.live.get(&ctx) {
            Some(c) if !c.primary => take_destructors(&mut reg, ctx),
            _ => return Err(INVALID_CONTEXT),
        }
    };
    run_destructors(pending);
    destroy(&mut driver.lock(), ctx)
}

/// `cuDevicePrimaryCtxRelease`, with the runtime's destructors called first when this is the
/// last release.
pub(crate) fn release_primary_with_destructors(driver: &Driver, device: CUdevice) -> CuResult {
    let pending = {
        let mut reg = driver.lock();
        let p = primary(&mut reg, driver.sim, device)?;
        let (handle, last) = (p.handle, p.retained == 1);
        if last { take_destructors(&mut reg, handle) } else { Vec::new() }
    };
    run_destructors(pending);
    release_primary(&mut driver.lock(), driver.sim, device)
}

/// `cuDevicePrimaryCtxReset`, with the runtime's destructors called first.
pub(crate) fn reset_primary_with_destructors(driver: &Driver, device: CUdevice) -> CuResult {
    let pending = {
        let mut reg = driver.lock();
        let handle = primary(&mut reg, driver.sim, device)?.handle;
        take_destructors(&mut reg, handle)
    };
    run_destructors(pending);
    reset_primary(&mut driver.lock(), driver.sim, device)
}
