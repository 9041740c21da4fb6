//! Contexts: primary contexts (retained and released per device, reference-counted for the
//! process) and created ones, and each thread's stack of current contexts.
//!
//! A live context holds `context_memory` of its device's memory; destroying it (or
//! releasing a primary context for the last time, or resetting it) frees that and every
//! allocation, stream, event and module made in it. A primary context keeps its handle for
//! the life of the process; while it is inactive, using it answers
//! `CUDA_ERROR_INVALID_CONTEXT`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::thread::ThreadId;

use super::error::{CuResult, INVALID_CONTEXT, INVALID_VALUE, OUT_OF_MEMORY};
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
    _memory: Charge,
    pub legacy: QueueTime,
    pub per_thread: HashMap<ThreadId, QueueTime>,
}

#[derive(Debug)]
struct Primary {
    handle: Handle,
    retained: u32,
    flags: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Contexts {
    pub live: HashMap<Handle, Context>,
    primary: Vec<Primary>,
}

impl Contexts {
    pub fn new(devices: usize) -> Self {
        let primary = (0..devices).map(|_| Primary { handle: new_handle(), retained: 0, flags: 0 }).collect();
        Self { live: HashMap::new(), primary }
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

/// The top of the stack without checking it: what `cuCtxGetCurrent` reports.
pub(crate) fn top() -> Option<Handle> {
    STACK.with_borrow(|s| s.last().copied())
}

fn make(sim: &'static Simulator, device: CUdevice, primary: bool) -> CuResult<Context> {
    let (gpu, state) = device::gpu(sim, device)?;
    let memory = Charge::uncounted(state, gpu.context_memory.0).map_err(|_| OUT_OF_MEMORY)?;
    Ok(Context {
        device: state.index(),
        primary,
        _memory: memory,
        legacy: QueueTime::default(),
        per_thread: HashMap::new(),
    })
}

/// Destroy a live context and everything made in it.
fn teardown(reg: &mut Registry, ctx: Handle) {
    reg.memory.drop_context(ctx);
    reg.streams.drop_context(ctx);
    reg.modules.drop_context(ctx);
    reg.graphs.drop_context(ctx);
    reg.contexts.live.remove(&ctx);
}

fn primary<'a>(reg: &'a mut Registry, sim: &Simulator, device: CUdevice) -> CuResult<&'a mut Primary> {
    device::gpu(sim, device)?;
    Ok(&mut reg.contexts.primary[device as usize])
}

/// `cuDevicePrimaryCtxRetain`: the first retain creates the context.
pub(crate) fn retain_primary(reg: &mut Registry, sim: &'static Simulator, device: CUdevice) -> CuResult<Handle> {
    let p = primary(reg, sim, device)?;
    let handle = p.handle;
    if let std::collections::hash_map::Entry::Vacant(slot) = reg.contexts.live.entry(handle) {
        slot.insert(make(sim, device, true)?);
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
    let (handle, retained) = (p.handle, p.retained);
    if reg.contexts.live.contains_key(&handle) {
        teardown(reg, handle);
    }
    if retained > 0 {
        let ctx = make(sim, device, true)?;
        reg.contexts.live.insert(handle, ctx);
    }
    Ok(())
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
    if flags & !CTX_FLAGS != 0 || (flags & 0x07).count_ones() > 1 {
        return Err(INVALID_VALUE);
    }
    let ctx = make(sim, device, false)?;
    let handle = new_handle();
    reg.contexts.live.insert(handle, ctx);
    STACK.with_borrow_mut(|s| s.push(handle));
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

/// `cuCtxSetCurrent`: replace the top of the stack; null pops.
pub(crate) fn set_current(reg: &Registry, ctx: Handle) -> CuResult {
    if ctx == 0 {
        STACK.with_borrow_mut(|s| s.pop());
        return Ok(());
    }
    get(reg, ctx)?;
    STACK.with_borrow_mut(|s| match s.last_mut() {
        Some(top) => *top = ctx,
        None => s.push(ctx),
    });
    Ok(())
}

pub(crate) fn push(reg: &Registry, ctx: Handle) -> CuResult {
    get(reg, ctx)?;
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

/// `cuCtxSynchronize`: sleep until every queue of `ctx` (0: the current context) is idle.
pub(crate) fn synchronize(driver: &Driver, ctx: Handle) -> CuResult {
    let until = {
        let mut reg = driver.lock();
        let ctx = if ctx == 0 { current(&reg)? } else { ctx };
        get(&reg, ctx)?;
        super::graph::forbid_context_sync(&mut reg, ctx)?;
        launch::context_completion(&reg, ctx)
    };
    launch::wait_until(until);
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
