//! Kernel launches and the time they take: every rule about when queued work finishes lives
//! here.
//!
//! A kernel's duration comes from its name ([`super::modules::Kind`]: `busy`'s first
//! parameter, in nanoseconds, or a small modelled time for any other). Every queue
//! (stream) has an "idle at" time, and so has the device, on a timeline shared by every
//! process ([`crate::timeline`]). A launch returns at once. Its kernel starts when the
//! queue's earlier work is done, when whatever the legacy-stream rules make the queue wait
//! for is done, and when the device has finished the work queued on it before (by any
//! process); it then occupies the device for its duration, which becomes the queue's idle
//! time. So kernels never overlap on a device, and two processes sharing one take turns.
//!
//! Synchronising waits for queues, not for the device: it sleeps until the time a queue will
//! be idle. Queues follow the legacy default stream's rules: the legacy stream waits for every
//! blocking stream of its context, and blocking streams (including per-thread default
//! streams) wait for the legacy stream; non-blocking streams wait only for themselves (and,
//! through the device, for everything queued before them).
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds ([`crate::timeline::now`]).

use std::thread::ThreadId;

use super::error::{COOPERATIVE_LAUNCH_TOO_LARGE, CuResult, INVALID_VALUE, STREAM_CAPTURE_UNSUPPORTED};
use super::graph::{self, Node};
use super::modules::Params;
use super::types::{CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, CUstream};
use super::{Handle, Registry, stream};
use crate::state::Simulator;
use crate::timeline::{self, DeviceTimeline};

/// A time on the timeline's clock, in nanoseconds.
pub(crate) type Nanos = u64;

/// When a queue's work will all be done.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct QueueTime {
    idle_at: Option<Nanos>,
}

/// Where work goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

fn later(a: Option<Nanos>, b: Option<Nanos>) -> Option<Nanos> {
    a.max(b)
}

/// The time this queue's own work is done, ignoring other queues.
fn own(reg: &Registry, q: Queue) -> Option<Nanos> {
    match q {
        Queue::Legacy(ctx) => reg.contexts.live.get(&ctx).and_then(|c| c.legacy.idle_at),
        Queue::PerThread(ctx, thread) => {
            reg.contexts.live.get(&ctx).and_then(|c| c.per_thread.get(&thread)).and_then(|t| t.idle_at)
        }
        Queue::Stream(s) => reg.streams.streams.get(&s).and_then(|s| s.time.idle_at),
    }
}

fn own_mut(reg: &mut Registry, q: Queue) -> Option<&mut QueueTime> {
    match q {
        Queue::Legacy(ctx) => reg.contexts.live.get_mut(&ctx).map(|c| &mut c.legacy),
        Queue::PerThread(ctx, thread) => {
            reg.contexts.live.get_mut(&ctx).map(|c| c.per_thread.entry(thread).or_default())
        }
        Queue::Stream(s) => reg.streams.streams.get_mut(&s).map(|s| &mut s.time),
    }
}

/// Every blocking queue of `ctx` other than its legacy stream.
fn blocking_queues(reg: &Registry, ctx: Handle) -> Option<Nanos> {
    let per_thread = reg.contexts.live.get(&ctx).into_iter().flat_map(|c| c.per_thread.values()).map(|t| t.idle_at);
    let streams = reg
        .streams
        .streams
        .values()
        .filter(|s| s.ctx == ctx && s.flags & STREAM_NON_BLOCKING == 0)
        .map(|s| s.time.idle_at);
    per_thread.chain(streams).fold(None, later)
}

/// When `q` is done with the work queued on it so far (and what the legacy-stream rules make
/// it wait for); now if that has passed. What events recorded on `q` and synchronising wait
/// for.
pub(crate) fn completion(reg: &Registry, q: Queue) -> Nanos {
    let waits_for = match q {
        Queue::Legacy(ctx) => blocking_queues(reg, ctx),
        Queue::PerThread(ctx, _) => own(reg, Queue::Legacy(ctx)),
        Queue::Stream(s) => match reg.streams.streams.get(&s) {
            Some(stream) if stream.flags & STREAM_NON_BLOCKING == 0 => own(reg, Queue::Legacy(stream.ctx)),
            _ => None,
        },
    };
    later(own(reg, q), waits_for).unwrap_or(0).max(timeline::now())
}

/// Make `q` busy until at least `t`.
pub(crate) fn set_idle(reg: &mut Registry, q: Queue, t: Nanos) {
    if let Some(time) = own_mut(reg, q) {
        time.idle_at = Some(time.idle_at.map_or(t, |idle| idle.max(t)));
    }
}

/// When everything queued anywhere in `ctx` will be done.
pub(crate) fn context_completion(reg: &Registry, ctx: Handle) -> Nanos {
    let all = later(own(reg, Queue::Legacy(ctx)), blocking_queues(reg, ctx));
    let non_blocking = reg.streams.streams.values().filter(|s| s.ctx == ctx).map(|s| s.time.idle_at);
    non_blocking.fold(all, later).unwrap_or(0).max(timeline::now())
}

/// Sleep until `t`. Call without holding the registry lock.
pub(crate) fn wait_until(t: Nanos) {
    timeline::sleep_until(t);
}

/// The GPU (index) whose timeline `q`'s work runs on.
pub(crate) fn device_of(reg: &Registry, q: Queue) -> u32 {
    let ctx = stream::queue_context(reg, q);
    reg.contexts.live.get(&ctx).map_or(0, |c| c.device)
}

/// The timeline of GPU `device`.
pub(crate) fn device_timeline(sim: &'static Simulator, device: u32) -> &'static DeviceTimeline {
    sim.cuda_timeline(device).expect("a context's device is one of CUDA's devices")
}

/// Run work of `durations` one after the other on `q`, none of it before `after`, each piece
/// taking its turn on the device; returns when the last piece is done.
pub(crate) fn run(
    reg: &mut Registry,
    sim: &'static Simulator,
    q: Queue,
    after: Nanos,
    durations: impl IntoIterator<Item = Nanos>,
) -> Nanos {
    let mut t = completion(reg, q).max(after);
    let mut session = device_timeline(sim, device_of(reg, q)).lock();
    for d in durations {
        t = session.occupy(t, d).1;
    }
    drop(session);
    set_idle(reg, q, t);
    t
}

/// Grid and block shape of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
}

/// Warps an SM holds at once (2048 threads), blocks per SM, shared memory per SM and the
/// shared memory the driver reserves per block, as `cuDeviceGetAttribute` reports them.
const WARPS_PER_SM: u64 = 64;
const BLOCKS_PER_SM: u64 = 32;
const SHARED_PER_SM: u64 = 228 << 10;
const SHARED_RESERVED_PER_BLOCK: u64 = 1 << 10;

impl Shape {
    /// The limits `cuDeviceGetAttribute` reports.
    pub fn check(&self) -> CuResult {
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        let grid_ok = (1..=i32::MAX as u32).contains(&gx) && (1..=65535).contains(&gy) && (1..=65535).contains(&gz);
        let block_ok = (1..=1024).contains(&bx)
            && (1..=1024).contains(&by)
            && (1..=64).contains(&bz)
            && u64::from(bx) * u64::from(by) * u64::from(bz) <= 1024;
        if grid_ok && block_ok && self.shared_mem <= 48 << 10 { Ok(()) } else { Err(INVALID_VALUE) }
    }

    fn blocks(&self) -> u64 {
        self.grid.iter().map(|&g| u64::from(g)).product()
    }

    /// The most blocks of this shape `sm_count` SMs hold at once, which a cooperative launch
    /// may not exceed: limited by warps, blocks and shared memory per SM (registers are not
    /// simulated).
    fn co_resident_blocks(&self, sm_count: u32) -> u64 {
        let threads: u64 = self.block.iter().map(|&b| u64::from(b)).product();
        let by_warps = WARPS_PER_SM / threads.div_ceil(32).max(1);
        let by_shared = match self.shared_mem {
            0 => u64::MAX,
            s => SHARED_PER_SM / (u64::from(s) + SHARED_RESERVED_PER_BLOCK),
        };
        BLOCKS_PER_SM.min(by_warps).min(by_shared) * u64::from(sm_count)
    }
}

/// One kernel launch as the caller asked for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launch {
    /// A `CUfunction`, or a `CUkernel` (resolved in the stream's context).
    pub function: Handle,
    pub shape: Shape,
    pub params: Params,
    /// A cooperative launch: every block must be resident at once.
    pub cooperative: bool,
}

/// A launch checked against what is loaded in the context of its queue.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    function: Handle,
    duration: Nanos,
}

impl Launch {
    /// The function in `ctx` and its duration, if `ctx` has it and GPU `device` can run it.
    fn resolve(&self, reg: &mut Registry, sim: &'static Simulator, ctx: Handle, device: u32) -> CuResult<Resolved> {
        let (function, kind) = reg.modules.resolve(self.function, ctx, sim.cuda_state(device))?;
        self.shape.check()?;
        let sm_count = sim.cuda_gpu(device).map_or(0, |g| g.sm_count);
        if self.cooperative && self.shape.blocks() > self.shape.co_resident_blocks(sm_count) {
            return Err(COOPERATIVE_LAUNCH_TOO_LARGE);
        }
        Ok(Resolved { function, duration: kind.duration(self.params)? })
    }
}

impl Resolved {
    fn node(&self) -> Node {
        Node::Kernel { function: self.function, duration: self.duration }
    }
}

/// A launch on one stream (`cuLaunchKernel`, `cuLaunchKernelEx`, `cuLaunchCooperativeKernel`
/// and their `_ptsz` forms): the kernel takes its turn on the device, or, on a capturing
/// stream, becomes a node of the graph being captured.
pub(crate) fn launch_on(launch: Launch, stream: CUstream, per_thread: bool) -> CuResult {
    let d = super::driver()?;
    let mut reg = d.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    let (ctx, device) = (stream::queue_context(&reg, q), device_of(&reg, q));
    let launch = launch.resolve(&mut reg, d.sim, ctx, device)?;
    if graph::capture(&mut reg, q, launch.node())? {
        return Ok(());
    }
    run(&mut reg, d.sim, q, 0, [launch.duration]);
    Ok(())
}

/// `CUDA_COOPERATIVE_LAUNCH_MULTI_DEVICE_NO_PRE_LAUNCH_SYNC` and `…_NO_POST_LAUNCH_SYNC`.
const NO_PRE_LAUNCH_SYNC: u32 = 1;
const NO_POST_LAUNCH_SYNC: u32 = 2;

/// `cuLaunchCooperativeKernelMultiDevice`: one launch per device, each on a stream of that
/// device's context, with the function loaded there. By default every kernel starts once
/// all the streams' earlier work is done (and every device is free), and each stream's later
/// work waits for all the kernels; the flags lift either rule.
pub(crate) fn launch_multi_device(launches: &[(Launch, CUstream)], flags: u32) -> CuResult {
    let d = super::driver()?;
    let mut reg = d.lock();
    if launches.is_empty()
        || launches.len() > d.sim.cuda_devices().len()
        || flags & !(NO_PRE_LAUNCH_SYNC | NO_POST_LAUNCH_SYNC) != 0
    {
        return Err(INVALID_VALUE);
    }
    let mut plan: Vec<(Queue, u32, Nanos)> = Vec::with_capacity(launches.len());
    for (launch, stream) in launches {
        if stream.is_null() || *stream == CU_STREAM_LEGACY || *stream == CU_STREAM_PER_THREAD {
            return Err(INVALID_VALUE);
        }
        let q = stream::queue(&reg, *stream, false)?;
        let (ctx, device) = (stream::queue_context(&reg, q), device_of(&reg, q));
        let resolved = launch.resolve(&mut reg, d.sim, ctx, device)?;
        if reg.modules.context_of(resolved.function) != Some(ctx)
            || plan.iter().any(|&(_, other, _)| other == device)
            || launch.shape != launches[0].0.shape
        {
            return Err(INVALID_VALUE);
        }
        if graph::is_capturing(&reg, q) {
            return Err(STREAM_CAPTURE_UNSUPPORTED);
        }
        plan.push((q, device, resolved.duration));
    }
    // Devices' timelines are locked in index order, so concurrent multi-device launches
    // cannot deadlock.
    plan.sort_by_key(|&(_, device, _)| device);
    let mut sessions: Vec<_> = plan.iter().map(|&(_, device, _)| device_timeline(d.sim, device).lock()).collect();
    let together = (flags & NO_PRE_LAUNCH_SYNC == 0).then(|| {
        let queues = plan.iter().map(|&(q, _, _)| completion(&reg, q));
        queues.chain(sessions.iter().map(|s| s.idle_at())).max().unwrap_or(0)
    });
    let done: Vec<Nanos> = plan
        .iter()
        .zip(&mut sessions)
        .map(|(&(q, _, duration), session)| session.occupy(together.unwrap_or_else(|| completion(&reg, q)), duration).1)
        .collect();
    drop(sessions);
    let last = done.iter().copied().max().unwrap_or(0);
    for (&(q, _, _), &done) in plan.iter().zip(&done) {
        set_idle(&mut reg, q, if flags & NO_POST_LAUNCH_SYNC == 0 { last } else { done });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooperative_launches_fit_on_the_device_at_once() {
        let shape = |threads: u32, shared: u32| Shape { grid: [1, 1, 1], block: [threads, 1, 1], shared_mem: shared };
        assert_eq!(shape(1, 0).co_resident_blocks(132), 32 * 132, "32 blocks per SM at most");
        assert_eq!(shape(1024, 0).co_resident_blocks(132), 2 * 132, "2048 threads per SM");
        assert_eq!(shape(256, 0).co_resident_blocks(8), 8 * 8);
        assert_eq!(shape(32, 48 << 10).co_resident_blocks(10), 4 * 10, "228 KiB of shared memory per SM");
    }
}
