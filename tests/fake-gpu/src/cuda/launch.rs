//! Modules, kernel launches and the time they take: every rule about when queued work
//! finishes lives here, so that it can later become one timeline per device shared by all
//! processes.
//!
//! The only kernel is `busy`, whose first parameter is a duration in nanoseconds. A launch
//! returns at once; it pushes its queue's "idle at" time (monotonic) forward by that
//! duration, starting when the queue's earlier work is done. Synchronising sleeps until the
//! time a queue will be idle. Queues follow the legacy default stream's rules: the legacy
//! stream waits for every blocking stream of its context, and blocking streams (including
//! per-thread default streams) wait for the legacy stream; non-blocking streams wait for
//! nothing but themselves.

use std::collections::HashMap;
use std::ffi::c_void;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use super::error::{CuResult, INVALID_HANDLE, INVALID_VALUE, NOT_FOUND};
use super::types::CUstream;
use super::{Handle, Registry, new_handle};

/// When a queue's work will all be done.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Timeline {
    idle_at: Option<Instant>,
}

/// Where work goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    /// The legacy default stream of a context (`0` or `CU_STREAM_LEGACY`).
    Legacy(Handle),
    /// A thread's per-thread default stream of a context (`CU_STREAM_PER_THREAD`, or `0`
    /// through a `_ptsz`/`_ptds` entry point).
    PerThread(Handle, ThreadId),
    /// A stream made with `cuStreamCreate`.
    Stream(Handle),
}

/// `CU_STREAM_NON_BLOCKING`.
pub(crate) const STREAM_NON_BLOCKING: u32 = 1;

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    a.max(b)
}

/// The time this queue's own timeline is idle, ignoring other queues.
fn own(reg: &Registry, q: Queue) -> Option<Instant> {
    match q {
        Queue::Legacy(ctx) => reg.contexts.live.get(&ctx).and_then(|c| c.legacy.idle_at),
        Queue::PerThread(ctx, thread) => {
            reg.contexts.live.get(&ctx).and_then(|c| c.per_thread.get(&thread)).and_then(|t| t.idle_at)
        }
        Queue::Stream(s) => reg.streams.streams.get(&s).and_then(|s| s.timeline.idle_at),
    }
}

fn own_mut(reg: &mut Registry, q: Queue) -> Option<&mut Timeline> {
    match q {
        Queue::Legacy(ctx) => reg.contexts.live.get_mut(&ctx).map(|c| &mut c.legacy),
        Queue::PerThread(ctx, thread) => {
            reg.contexts.live.get_mut(&ctx).map(|c| c.per_thread.entry(thread).or_default())
        }
        Queue::Stream(s) => reg.streams.streams.get_mut(&s).map(|s| &mut s.timeline),
    }
}

/// Every blocking queue of `ctx` other than its legacy stream.
fn blocking_queues(reg: &Registry, ctx: Handle) -> Option<Instant> {
    let per_thread = reg.contexts.live.get(&ctx).into_iter().flat_map(|c| c.per_thread.values()).map(|t| t.idle_at);
    let streams = reg
        .streams
        .streams
        .values()
        .filter(|s| s.ctx == ctx && s.flags & STREAM_NON_BLOCKING == 0)
        .map(|s| s.timeline.idle_at);
    per_thread.chain(streams).fold(None, later)
}

/// When work queued on `q` now could start: after the queue's own work and whatever the
/// legacy-stream rules make it wait for, and not before now.
pub(crate) fn completion(reg: &Registry, q: Queue) -> Instant {
    let waits_for = match q {
        Queue::Legacy(ctx) => blocking_queues(reg, ctx),
        Queue::PerThread(ctx, _) => own(reg, Queue::Legacy(ctx)),
        Queue::Stream(s) => match reg.streams.streams.get(&s) {
            Some(stream) if stream.flags & STREAM_NON_BLOCKING == 0 => own(reg, Queue::Legacy(stream.ctx)),
            _ => None,
        },
    };
    later(later(own(reg, q), waits_for), Some(Instant::now())).unwrap_or_else(Instant::now)
}

/// Queue `duration` of work on `q`; returns when it will be done.
pub(crate) fn enqueue(reg: &mut Registry, q: Queue, duration: Duration) -> Instant {
    let done = completion(reg, q) + duration;
    if let Some(timeline) = own_mut(reg, q) {
        timeline.idle_at = Some(done);
    }
    done
}

/// When everything queued anywhere in `ctx` will be done.
pub(crate) fn context_completion(reg: &Registry, ctx: Handle) -> Instant {
    let all = later(own(reg, Queue::Legacy(ctx)), blocking_queues(reg, ctx));
    let non_blocking = reg.streams.streams.values().filter(|s| s.ctx == ctx).map(|s| s.timeline.idle_at);
    non_blocking.fold(all, later).unwrap_or_else(Instant::now)
}

/// Sleep until `t`. Call without holding the registry lock.
pub(crate) fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        std::thread::sleep(t - now);
    }
}

/// The kernels a module provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Occupies its stream for `kernelParams[0]` (a `u64`) nanoseconds.
    Busy,
}

#[derive(Debug)]
struct Function {
    module: Handle,
    kernel: Kernel,
}

/// Loaded modules and their functions.
#[derive(Debug, Default)]
pub(crate) struct Modules {
    /// Module → its context.
    modules: HashMap<Handle, Handle>,
    functions: HashMap<Handle, Function>,
}

impl Modules {
    /// `cuModuleLoadData`: any image loads, and provides `busy`.
    pub fn load(&mut self, ctx: Handle) -> Handle {
        let module = new_handle();
        self.modules.insert(module, ctx);
        module
    }

    pub fn unload(&mut self, module: Handle) -> CuResult {
        self.modules.remove(&module).ok_or(INVALID_HANDLE)?;
        self.functions.retain(|_, f| f.module != module);
        Ok(())
    }

    /// `cuModuleGetFunction`: the same handle each time for one name in one module.
    pub fn function(&mut self, module: Handle, name: &[u8]) -> CuResult<Handle> {
        if !self.modules.contains_key(&module) {
            return Err(INVALID_HANDLE);
        }
        let kernel = match name {
            b"busy" => Kernel::Busy,
            _ => return Err(NOT_FOUND),
        };
        if let Some((&f, _)) = self.functions.iter().find(|(_, f)| f.module == module && f.kernel == kernel) {
            return Ok(f);
        }
        let f = new_handle();
        self.functions.insert(f, Function { module, kernel });
        Ok(f)
    }

    /// Forget `ctx`'s modules, as destroying the context does.
    pub fn drop_context(&mut self, ctx: Handle) {
        let gone: Vec<Handle> = self.modules.iter().filter(|&(_, &c)| c == ctx).map(|(&m, _)| m).collect();
        for module in gone {
            let _ = self.unload(module);
        }
    }

    pub fn is_function(&self, f: Handle) -> bool {
        self.functions.contains_key(&f)
    }
}

/// Grid and block shape of a launch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
}

impl Shape {
    /// The limits `cuDeviceGetAttribute` reports.
    fn check(&self) -> CuResult {
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        let grid_ok = (1..=i32::MAX as u32).contains(&gx) && (1..=65535).contains(&gy) && (1..=65535).contains(&gz);
        let block_ok = (1..=1024).contains(&bx)
            && (1..=1024).contains(&by)
            && (1..=64).contains(&bz)
            && u64::from(bx) * u64::from(by) * u64::from(bz) <= 1024;
        if grid_ok && block_ok && self.shared_mem <= 48 << 10 { Ok(()) } else { Err(INVALID_VALUE) }
    }
}

/// `cuLaunchKernel` of `busy` for `duration` on `q`, after the caller read the parameter.
pub(crate) fn launch(reg: &mut Registry, f: Handle, shape: Shape, q: Queue, duration: Duration) -> CuResult {
    if !reg.modules.is_function(f) {
        return Err(INVALID_HANDLE);
    }
    shape.check()?;
    enqueue(reg, q, duration);
    Ok(())
}

/// `CU_LAUNCH_PARAM_END`, `CU_LAUNCH_PARAM_BUFFER_POINTER` and `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const PARAM_END: usize = 0;
const PARAM_BUFFER_POINTER: usize = 1;
const PARAM_BUFFER_SIZE: usize = 2;

/// `busy`'s duration: `*(u64 *)kernel_params[0]`, or the first 8 bytes of the buffer that
/// `extra` passes. Exactly one of the two must be given.
///
/// # Safety
///
/// As for `cuLaunchKernel`: `kernel_params` is null or an array whose first entry points at
/// the first parameter; `extra` is null or a `CU_LAUNCH_PARAM_END`-terminated list of
/// key/value pointers.
pub(crate) unsafe fn busy_duration(kernel_params: *mut *mut c_void, extra: *mut *mut c_void) -> CuResult<Duration> {
    let nanos = match (kernel_params.is_null(), extra.is_null()) {
        (false, true) => {
            // SAFETY: a non-null kernelParams array holds one pointer per kernel parameter,
            // and `busy` has one.
            let first = unsafe { kernel_params.read() };
            if first.is_null() {
                return Err(INVALID_VALUE);
            }
            // SAFETY: the first parameter is a u64 per `busy`'s signature.
            unsafe { first.cast::<u64>().read_unaligned() }
        }
        (true, false) => {
            let (mut buffer, mut size) = (std::ptr::null::<u8>(), None);
            for i in 0.. {
                // SAFETY: the list runs in key/value pairs up to CU_LAUNCH_PARAM_END.
                let key = unsafe { extra.wrapping_add(i * 2).read() } as usize;
                if key == PARAM_END {
                    break;
                }
                // SAFETY: every key but the end marker has a value after it.
                let value = unsafe { extra.wrapping_add(i * 2 + 1).read() };
                match key {
                    PARAM_BUFFER_POINTER => buffer = value.cast(),
                    // SAFETY: the value of CU_LAUNCH_PARAM_BUFFER_SIZE points at a size_t.
                    PARAM_BUFFER_SIZE if !value.is_null() => size = Some(unsafe { value.cast::<usize>().read() }),
                    _ => return Err(INVALID_VALUE),
                }
            }
            if buffer.is_null() || size.is_some_and(|s| s < 8) {
                return Err(INVALID_VALUE);
            }
            // SAFETY: the buffer holds the packed parameters, the first a u64.
            unsafe { buffer.cast::<u64>().read_unaligned() }
        }
        _ => return Err(INVALID_VALUE),
    };
    Ok(Duration::from_nanos(nanos))
}

/// `cuLaunchKernel(_ptsz)`: queue `duration` of `busy` on the stream.
pub(crate) fn launch_on(f: Handle, shape: Shape, stream: CUstream, per_thread: bool, duration: Duration) -> CuResult {
    let mut reg = super::driver()?.lock();
    let q = super::stream::queue(&reg, stream, per_thread)?;
    launch(&mut reg, f, shape, q, duration)
}
