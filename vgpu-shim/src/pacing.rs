//! Compute slicing: kernel launches paced so that a slice with `cores = N` gets N % of its
//! GPU's time, shared by all of its processes. The design and its trade-offs are in
//! `docs/pacing.md`; in short:
//!
//! - **Measuring** without host PIDs: each thread brackets its launches in *windows*, a pair of
//!   events per window on the launch's stream (a start event before the window's first launch,
//!   an end event when the window closes). A window closes after its launch budget (about
//!   [`WINDOW_GPU_NS`] of work), after [`WINDOW_NS`], when the thread launches on another
//!   stream, and when it synchronises.
//! - **GPU time, not wall time**: the span between a window's events is its work only when the
//!   GPU never waited for the host inside it. When the stream had drained by the window's close
//!   (the host, not the GPU, set the pace), the window is charged its launches at the GPU time
//!   per launch instead, bounded by the span. That figure comes from *sampled* launches (about
//!   one launch in two windows, chosen at random) bracketed by events of their own, and from
//!   the windows whose stream never drained.
//! - **Clock**: every time is read between two events a few seconds apart at most (a window's
//!   own events, and the thread's base event, renewed every [`REBASE_NS`]), so
//!   `cuEventElapsedTime`'s `f32` milliseconds keep sub-microsecond steps however long the
//!   process runs.
//! - **Charging**: a window's GPU time is charged to the slice's pacing clock in the region
//!   ([`Region::charge_gpu_time`]) once its end event has completed.
//! - **Holding back**: before a window opens, the thread waits while the slice's pacing clock
//!   is ahead of now. Windows not yet measured are bounded ([`MAX_PENDING_WINDOWS`]), so the
//!   work a slice can queue beyond its share is bounded too.
//!
//! The fast path (inside a window) is a thread-local counter, a stream compare and a coarse
//! clock read; everything else happens once per window.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::null_mut;

use gpuslice_core::board::Priority;
use gpuslice_core::region::Region;

use crate::driver::cuda;
use crate::ffi::*;
use crate::log::log;
use crate::state::{now_ns, state};

/// A window closes after about this much GPU work (its launch budget is set from the kernels
/// measured so far, between [`MIN_WINDOW_LAUNCHES`] and [`MAX_WINDOW_LAUNCHES`])…
pub const WINDOW_GPU_NS: u64 = 4_000_000;
/// The launch budget of a thread's first window.
pub const WINDOW_LAUNCHES: u32 = 16;
pub const MIN_WINDOW_LAUNCHES: u32 = 4;
pub const MAX_WINDOW_LAUNCHES: u32 = 1024;
/// … or this long after it opened.
pub const WINDOW_NS: u64 = 2_000_000;
/// Windows of one thread whose end has not been measured yet; one more waits for the oldest.
pub const MAX_PENDING_WINDOWS: usize = 4;
/// Idle time earns a slice at most this much GPU time at full speed.
pub const BURST_NS: u64 = 50_000_000;
/// Longest single sleep while held back; the clock is read again after it.
const MAX_SLEEP_NS: u64 = 10_000_000;
/// A pacing clock further ahead than this is not believed (a scribbled region): reset to now.
const MAX_AHEAD_NS: u64 = 120_000_000_000;
/// How long after its last launch a slice still counts as busy for the others on its GPU.
pub const ACTIVE_NS: u64 = 100_000_000;
/// The share a normal slice keeps while a high-priority slice on its GPU is busy: it yields
/// the GPU, and is not starved.
pub const YIELD_PERCENT: u32 = 5;
/// Launches between re-checks of a thread that is not paced (its slice may get a share).
const UNPACED_LAUNCHES: u32 = 1 << 20;
/// A thread's base event is renewed when it is this old: times read against it stay under a
/// few seconds, where `f32` milliseconds step by less than a microsecond.
pub const REBASE_NS: u64 = 1_000_000_000;
/// A base whose clock reads, before its record and after its synchronisation, are further apart
/// than this (the thread was preempted) is measured again, up to [`BASE_TRIES`] times.
const BASE_BRACKET_NS: u64 = 100_000;
const BASE_TRIES: u32 = 3;
/// A stream counts as drained at a window's close when the window's work was done within this
/// of the close.
pub const DRAIN_SLACK_NS: u64 = 50_000;
/// A sampled launch whose event took longer than this to record after the launch returned is
/// not used (the thread was preempted in between).
const SAMPLE_RECORD_NS: u64 = 50_000;
/// A sampled launch every this many launches on average, at least (otherwise one per two
/// window budgets).
const MIN_SAMPLE_EVERY: u32 = 8;

/// The fast path's state: launches left in the current window (the launch that finds 1 left
/// takes the slow path), its stream, its deadline on the coarse clock.
struct Fast {
    left: Cell<u32>,
    stream: Cell<CUstream>,
    deadline: Cell<u64>,
    unpaced: Cell<bool>,
}

thread_local! {
    static FAST: Fast = const {
        Fast {
            left: Cell::new(0),
            stream: Cell::new(null_mut()),
            deadline: Cell::new(0),
            unpaced: Cell::new(false),
        }
    };
    static WINDOWS: RefCell<Windows> = RefCell::new(Windows::default());
}

/// An event of the thread's context that completed at `ns` on the monotonic clock (at most
/// [`BASE_BRACKET_NS`] later, usually within microseconds): event times are read against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Base {
    event: CUevent,
    ns: u64,
}

/// One window of launches on one stream.
#[derive(Debug)]
struct Window {
    stream: CUstream,
    start: CUevent,
    end: CUevent,
    /// The thread's base when the window opened (`None`: the context would not give one; the
    /// window's start is then taken as `opened_ns`).
    base: Option<Base>,
    opened_ns: u64,
    launches: u32,
    /// One of its launches, timed by events of its own.
    sample: Option<Sample>,
    /// When the call that recorded its end event returned (0: still open). The end completes
    /// by then, give or take the base's error, unless the stream still had work queued.
    closed_ns: u64,
}

/// A sampled launch: events right before and right after it on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    /// The event before it and when its record returned; `None` for a window's first launch,
    /// which the window's start event precedes.
    before: Option<(CUevent, u64)>,
    after: CUevent,
    /// When the launch call returned.
    returned_ns: u64,
}

/// What a window's events say, once complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Measured {
    /// When the window's work could start (its start event), on the monotonic clock.
    start_ns: u64,
    /// From the start event to the end event.
    span_ns: u64,
    /// The stream drained before the window closed (at the close, or at its sampled launch):
    /// the GPU waited for the host at least there, so the span may hold idle time.
    drained: bool,
    /// The GPU time of the window's sampled launch.
    sample_ns: Option<u64>,
}

impl Window {
    /// Reads the window's events with `elapsed` (`cuEventElapsedTime`: the milliseconds from a
    /// completed event to another, as an `f32`). Each time is read against an event close to
    /// it: the span and the sample between the window's own events, the start against the
    /// thread's base, which is at most a few seconds older ([`REBASE_NS`]). An `f32` holds 24
    /// bits: read against an event a day old, its step would be 8 ms, more than a window.
    fn measure(&self, elapsed: impl Fn(CUevent, CUevent) -> Option<f32>) -> Option<Measured> {
        let ns = |a, b| elapsed(a, b).filter(|ms| ms.is_finite() && *ms >= 0.0).map(|ms| (f64::from(ms) * 1e6) as u64);
        let start_ns = match self.base {
            Some(base) => base.ns.saturating_add(ns(base.event, self.start)?),
            None => self.opened_ns,
        };
        let span_ns = ns(self.start, self.end)?;
        let mut drained =
            self.closed_ns != 0 && start_ns.saturating_add(span_ns) <= self.closed_ns.saturating_add(DRAIN_SLACK_NS);
        let mut sample_ns = None;
        if let Some(sample) = self.sample {
            // Times from the window's start.
            let before = match sample.before {
                Some((event, _)) => ns(self.start, event)?,
                None => 0,
            };
            let after = ns(self.start, sample.after)?;
            // The kernel ran between the events around it, and not before its launch call
            // returned (less the little the base may read early): the lower of the two bounds.
            // The second matters when the stream was idle and the kernel shorter than the
            // launch call: between two events on an idle stream, only host time passes.
            let around = after.checked_sub(before)?;
            let since_return = start_ns.saturating_add(after).saturating_sub(sample.returned_ns);
            sample_ns = Some(around.min(since_return));
            // The event before it completed as soon as it was recorded: the stream had drained
            // in the middle of the window.
            if let Some((_, recorded)) = sample.before {
                drained |= start_ns.saturating_add(before) <= recorded.saturating_add(DRAIN_SLACK_NS);
            }
        }
        Some(Measured { start_ns, span_ns, drained, sample_ns })
    }

    fn events(&self) -> impl Iterator<Item = CUevent> {
        let sample = self.sample.map(|s| (s.before.map(|(e, _)| e), s.after));
        [self.start, self.end].into_iter().chain(sample.into_iter().flat_map(|(b, a)| b.into_iter().chain([a])))
    }
}

/// A thread's windows.
#[derive(Debug, Default)]
struct Windows {
    ctx: usize,
    slice: Option<usize>,
    open: Option<Window>,
    pending: VecDeque<Window>,
    /// Spare events of `ctx`.
    pool: Vec<CUevent>,
    /// The launch budget of the open window.
    budget: u32,
    /// What the slow path last left in [`Fast::left`]: the fast launches since then are the
    /// difference.
    left_set: u32,
    /// Launches until the next sampled one, counting it.
    sample_in: u32,
    /// GPU time per launch: a moving average of sampled launches and of the windows whose
    /// stream never drained, measured while no other slice was busy on the GPU (see
    /// [`Windows::learn`]). `None` until the first measure.
    per_launch_ns: Option<u64>,
    base: Option<Base>,
    /// A private stream of `ctx` that only ever carries base events.
    base_stream: Option<CUstream>,
    /// Former base events that pending windows are still read against.
    retired: Vec<CUevent>,
    /// Windows of a multi-stream launch other than the open one: they close right behind it.
    behind: Vec<Window>,
    /// xorshift64 state for choosing sampled launches (0: not seeded yet).
    rng: u64,
}

/// What the slow path decided for the launch it lets through.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// What [`Fast::left`] gets once the launch went through.
    left: u32,
    /// The launch is sampled: an event goes right behind it.
    sampled: bool,
}

/// Runs a launch on `stream`, paced. `per_thread` says whether the entry point was a `_ptsz`
/// one (then the null stream is the per-thread default stream).
#[inline]
pub fn launch(stream: CUstream, per_thread: bool, f: impl FnOnce() -> CUresult) -> CUresult {
    let stream = if per_thread && stream.is_null() { CU_STREAM_PER_THREAD } else { stream };
    let fast = FAST.with(|fast| {
        let left = fast.left.get();
        if left <= 1 {
            return false;
        }
        if fast.unpaced.get() {
            fast.left.set(left - 1);
            return true;
        }
        if fast.stream.get() == stream && now_ns() < fast.deadline.get() {
            fast.left.set(left - 1);
            return true;
        }
        false
    });
    if fast {
        return f();
    }
    slow(&[stream], f)
}

/// A launch onto several streams at once (`cuLaunchCooperativeKernelMultiDevice`): each is
/// paced as if launched on its own, in the calling thread's current context.
pub fn launch_many(streams: &[CUstream], f: impl FnOnce() -> CUresult) -> CUresult {
    slow(streams, f)
}

fn slow(streams: &[CUstream], f: impl FnOnce() -> CUresult) -> CUresult {
    if let [stream] = streams {
        // A sampled launch inside the open window: timed, and the window goes on.
        let before = WINDOWS.try_with(|w| w.try_borrow_mut().ok().and_then(|mut w| w.before_sample(*stream)));
        if let Ok(Some(before)) = before {
            let result = f();
            with_windows(|w| w.after_sample(before, result == CUDA_SUCCESS));
            return result;
        }
    }
    let plan = WINDOWS.try_with(|w| match w.try_borrow_mut() {
        Ok(mut w) => w.before_launch(streams),
        Err(_) => None,
    });
    let result = f();
    match plan.ok().flatten() {
        Some(plan) => {
            let _ = WINDOWS.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut() {
                    w.after_launch(plan, result == CUDA_SUCCESS);
                }
            });
        }
        None => FAST.with(|fast| {
            fast.unpaced.set(true);
            fast.left.set(UNPACED_LAUNCHES);
        }),
    }
    result
}

/// Called before a synchronisation of `stream` (or of the whole context, `None`): the thread's
/// open window there ends with the work queued so far. Its end event, recorded now, completes
/// when that work does: right away if the stream had drained, later if the GPU was behind.
pub fn before_sync(stream: Option<CUstream>, per_thread: bool) {
    let stream = stream.map(|s| if per_thread && s.is_null() { CU_STREAM_PER_THREAD } else { s });
    with_windows(|w| w.close_for(stream));
}

/// Called after a synchronisation returned: the windows it completed are charged now.
pub fn synchronized() {
    with_windows(|w| w.harvest(false));
}

/// Called before a capture starts on `stream`: the thread's open window there closes now, so
/// that none of the pacing's events lands in the captured graph.
pub fn before_capture(stream: CUstream, per_thread: bool) {
    let stream = if per_thread && stream.is_null() { CU_STREAM_PER_THREAD } else { stream };
    with_windows(|w| w.close_for(Some(stream)));
}

/// Runs `f` on the thread's windows, unless they are in use further up the stack (the driver
/// called back into the library) or the thread is exiting.
fn with_windows(f: impl FnOnce(&mut Windows)) {
    let _ = WINDOWS.try_with(|w| {
        if let Ok(mut w) = w.try_borrow_mut() {
            f(&mut w);
        }
    });
}

/// Whether `stream` is capturing: launches there record graph nodes, they run nothing now, and
/// the pacing records no events there.
fn capturing(stream: CUstream) -> bool {
    let mut status: CUstreamCaptureStatus = CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: out pointer to a local.
    let r = unsafe { cuda().cuStreamIsCapturing.map(|f| f(stream, &mut status)) };
    r == Some(CUDA_SUCCESS) && status != 0
}

/// The slice of the current context's device, when it is paced.
fn paced_slice() -> Option<(usize, usize)> {
    let st = state();
    if st.slices.is_empty() {
        return None;
    }
    let api = cuda();
    let mut ctx: CUcontext = null_mut();
    let mut dev: CUdevice = 0;
    // SAFETY: out pointers to locals.
    unsafe {
        if api.cuCtxGetCurrent.map(|f| f(&mut ctx))? != CUDA_SUCCESS || ctx.is_null() {
            return None;
        }
        if api.cuCtxGetDevice.map(|f| f(&mut dev))? != CUDA_SUCCESS {
            return None;
        }
    }
    let index = st.slice_for_device(dev)?;
    let slice = &st.slices[index];
    // A normal slice at 100 % is paced only when a high-priority slice shares its GPU.
    let paced = slice.cores() < 100
        || slice.priority() == Priority::High
        || slice.board().is_some_and(|(board, own)| board.others(*own, u64::MAX).any_high);
    paced.then_some((ctx as usize, index))
}

/// The share the slice gets now: its own, less while a high-priority slice on its GPU is
/// busy (a normal slice), all of the GPU while no other slice is busy (a slice that borrows).
/// Marks the slice busy on its GPU's board.
fn share_now(slice: usize, now: u64) -> u32 {
    let slice = &state().slices[slice];
    let cores = slice.cores();
    let Some((board, own)) = slice.board() else { return cores };
    board.touch(*own, now);
    let others = board.others(*own, now.saturating_sub(ACTIVE_NS));
    if slice.priority() == Priority::Normal && others.high_busy {
        cores.min(YIELD_PERCENT)
    } else if slice.borrows() && !others.busy {
        100
    } else {
        cores
    }
}

/// The precise monotonic clock (the coarse one steps in ticks of several milliseconds).
pub(crate) fn precise_ns() -> u64 {
    // SAFETY: timespec is plain data; CLOCK_MONOTONIC is always available on Linux.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Windows {
    /// Everything that happens once per window, before the launch that opens it. Returns
    /// `None` when the launch is not paced.
    fn before_launch(&mut self, streams: &[CUstream]) -> Option<Plan> {
        let Some((ctx, slice)) = paced_slice() else {
            log!(Debug, "launch not paced");
            self.open = None;
            return None;
        };
        if ctx != self.ctx || Some(slice) != self.slice {
            // Events belong to a context: start over in this one (the old ones are left to it).
            let rng = self.rng;
            *self = Windows { ctx, slice: Some(slice), rng, ..Windows::default() };
        }
        self.count_fast();
        self.close_open();
        self.harvest(false);
        while self.pending.len() >= MAX_PENDING_WINDOWS {
            self.harvest(true);
        }
        let capture = streams.iter().any(|&s| capturing(s));
        if capture {
            // Captured launches run later, as a graph launch, which is paced then.
            return Some(Plan { left: 1, sampled: false });
        }
        self.hold_back();
        self.rebase_if_old();
        let sampled = streams.len() == 1 && self.sample_in <= 1;
        self.sample_in = if sampled { self.draw_sample() } else { self.sample_in.saturating_sub(1) };
        for &stream in streams {
            self.open_window(stream);
        }
        self.budget = match self.per_launch_ns {
            None => WINDOW_LAUNCHES,
            Some(per) => (WINDOW_GPU_NS / per.max(1))
                .clamp(u64::from(MIN_WINDOW_LAUNCHES), u64::from(MAX_WINDOW_LAUNCHES)) as u32,
        };
        Some(Plan { left: self.budget.min(self.sample_in), sampled: sampled && self.open.is_some() })
    }

    /// After the launch that opened a window: a sampled launch gets its own end event, then the
    /// fast path is armed (a failed launch leaves it unarmed: the next launch comes back here).
    fn after_launch(&mut self, plan: Plan, ok: bool) {
        for mut w in std::mem::take(&mut self.behind) {
            if Self::record(w.end, w.stream) {
                w.closed_ns = precise_ns();
                self.pending.push_back(w);
            } else {
                self.pool.extend(w.events());
            }
        }
        if ok && plan.sampled {
            let returned = precise_ns();
            if let Some(stream) = self.open.as_ref().map(|w| w.stream)
                && let Some(after) = self.event()
            {
                let recorded = Self::record(after, stream);
                // A thread preempted between the launch's return and the record would read the
                // time it waited as the kernel's: such a sample is dropped.
                if recorded && precise_ns().saturating_sub(returned) <= SAMPLE_RECORD_NS {
                    if let Some(w) = self.open.as_mut() {
                        w.sample = Some(Sample { before: None, after, returned_ns: returned });
                    }
                } else {
                    // Recorded or not, the event is reusable.
                    self.pool.push(after);
                }
            }
        }
        let stream = self.open.as_ref().map_or(null_mut(), |w| w.stream);
        let left = if ok { plan.left } else { 0 };
        FAST.with(|fast| {
            fast.unpaced.set(false);
            fast.stream.set(stream);
            fast.left.set(left);
            fast.deadline.set(now_ns().saturating_add(WINDOW_NS));
        });
        self.left_set = left;
    }

    /// A launch that is due to be sampled, inside a window that may go on (same stream, within
    /// its budget and deadline, not sampled yet): records the event before it and returns it
    /// with when its record returned. `None`: the launch takes the window path.
    fn before_sample(&mut self, stream: CUstream) -> Option<(CUevent, u64)> {
        self.count_fast();
        let open = self.open.as_ref()?;
        let deadline = FAST.with(|f| f.deadline.get());
        if self.sample_in > 1
            || open.stream != stream
            || open.sample.is_some()
            || open.launches >= self.budget
            || now_ns() >= deadline
        {
            return None;
        }
        let before = self.event()?;
        if !Self::record(before, stream) {
            self.pool.push(before);
            return None;
        }
        Some((before, precise_ns()))
    }

    /// After a launch sampled inside its window: the event after it, then the fast path armed
    /// again for the rest of the window.
    fn after_sample(&mut self, (before, recorded): (CUevent, u64), ok: bool) {
        self.sample_in = self.draw_sample();
        let mut sample = None;
        if ok {
            let returned = precise_ns();
            if let (Some(stream), Some(after)) = (self.open.as_ref().map(|w| w.stream), self.event()) {
                // As in `after_launch`: a thread preempted before the record drops the sample.
                if Self::record(after, stream) && precise_ns().saturating_sub(returned) <= SAMPLE_RECORD_NS {
                    sample = Some(Sample { before: Some((before, recorded)), after, returned_ns: returned });
                } else {
                    self.pool.push(after);
                }
            }
        }
        let launches = match self.open.as_mut() {
            Some(w) => {
                w.launches = w.launches.saturating_add(1);
                w.sample = sample;
                w.launches
            }
            None => 0,
        };
        if sample.is_none() {
            self.pool.push(before);
        }
        let left = if ok { (self.budget.saturating_sub(launches) + 1).min(self.sample_in) } else { 0 };
        FAST.with(|fast| fast.left.set(left));
        self.left_set = left;
    }

    /// Adds the fast path's launches since the slow path last armed it to the open window and
    /// to the sampling countdown.
    fn count_fast(&mut self) {
        let (unpaced, left) = FAST.with(|f| (f.unpaced.get(), f.left.get()));
        if unpaced {
            self.left_set = 0;
            return;
        }
        let fast = self.left_set.saturating_sub(left);
        if let Some(w) = self.open.as_mut() {
            w.launches = w.launches.saturating_add(fast);
        }
        self.sample_in = self.sample_in.saturating_sub(fast);
        self.left_set = left;
    }

    /// Sends the next launch to the slow path (after [`Windows::count_fast`]).
    fn arm_slow(&mut self) {
        FAST.with(|fast| {
            if !fast.unpaced.get() {
                fast.left.set(0);
            }
        });
        self.left_set = 0;
    }

    /// Before a synchronisation of `stream` (`None`: the context) or a capture on it: the open
    /// window there closes, and the next launch opens a new one.
    fn close_for(&mut self, stream: Option<CUstream>) {
        self.count_fast();
        if self.open.as_ref().is_some_and(|open| stream.is_none_or(|s| s == open.stream)) {
            self.close_open();
        }
        self.arm_slow();
    }

    /// The number of launches until the next sampled one: uniform in 1 ..= 2m − 1, where m is
    /// two windows' launch budget, so that about one launch in two windows is sampled, and each
    /// launch as likely as any other whatever the program's rhythm.
    fn draw_sample(&mut self) -> u32 {
        if self.rng == 0 {
            self.rng = (precise_ns() ^ (self as *const Self as u64).rotate_left(32)) | 1;
        }
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mean = u64::from(self.budget.saturating_mul(2).max(MIN_SAMPLE_EVERY));
        1 + (self.rng % (2 * mean - 1)) as u32
    }

    /// Renews the thread's base when it is older than [`REBASE_NS`] (or missing): an event
    /// recorded on a private stream of the context (no work ahead of it) and waited for,
    /// between two reads of the clock; the earlier read is taken, since the event cannot have
    /// completed before it was recorded. Windows still pending keep their own base until read.
    fn rebase_if_old(&mut self) {
        let now = precise_ns();
        if self.base.is_some_and(|b| now.saturating_sub(b.ns) < REBASE_NS) {
            return;
        }
        let api = cuda();
        let stream = match self.base_stream {
            Some(s) => s,
            None => {
                let mut s: CUstream = null_mut();
                // SAFETY: out pointer; flags 1 = non-blocking: the stream waits for nothing.
                let ok = unsafe { api.cuStreamCreate.map(|f| f(&mut s, 1)) } == Some(CUDA_SUCCESS);
                if !ok {
                    return;
                }
                self.base_stream = Some(s);
                s
            }
        };
        let Some(event) = self.event() else { return };
        let mut best: Option<(u64, u64)> = None;
        for _ in 0..BASE_TRIES {
            let before = precise_ns();
            // SAFETY: an event and a stream of the current context; the stream carries only
            // base events, so the event completes at once.
            let ok = Self::record(event, stream)
                && unsafe { api.cuEventSynchronize.map(|f| f(event)) } == Some(CUDA_SUCCESS);
            let after = precise_ns();
            if !ok {
                break;
            }
            let bracket = after - before;
            if best.is_none_or(|(b, _)| bracket < b) {
                best = Some((bracket, before));
            }
            if bracket <= BASE_BRACKET_NS {
                break;
            }
        }
        let Some((bracket, ns)) = best else {
            self.pool.push(event);
            return;
        };
        if bracket > BASE_BRACKET_NS {
            log!(Debug, "base event bracketed by {bracket} ns only");
        }
        if let Some(old) = self.base.replace(Base { event, ns }) {
            self.retired.push(old.event);
            self.release_retired();
        }
    }

    /// Returns to the pool the former base events no pending window is read against.
    fn release_retired(&mut self) {
        let in_use: Vec<CUevent> = self
            .pending
            .iter()
            .chain(self.open.as_ref())
            .chain(&self.behind)
            .filter_map(|w| w.base.map(|b| b.event))
            .collect();
        let (keep, free): (Vec<_>, Vec<_>) = self.retired.drain(..).partition(|e| in_use.contains(e));
        self.retired = keep;
        self.pool.extend(free);
    }

    fn region(&self) -> Option<&'static Region> {
        let slice = &state().slices[self.slice?];
        slice.join().ok().map(|j| &j.region)
    }

    fn event(&mut self) -> Option<CUevent> {
        if let Some(e) = self.pool.pop() {
            return Some(e);
        }
        let mut e: CUevent = null_mut();
        // SAFETY: out pointer; flags 0 = default (timing enabled).
        let r = unsafe { cuda().cuEventCreate?(&mut e, 0) };
        (r == CUDA_SUCCESS).then_some(e)
    }

    fn record(event: CUevent, stream: CUstream) -> bool {
        // SAFETY: an event of the current context, a stream the application just launched on.
        cuda().cuEventRecord.is_some_and(|f| unsafe { f(event, stream) } == CUDA_SUCCESS)
    }

    fn open_window(&mut self, stream: CUstream) {
        let (Some(start), Some(end)) = (self.event(), self.event()) else { return };
        let opened_ns = precise_ns();
        if !Self::record(start, stream) {
            self.pool.extend([start, end]);
            return;
        }
        let window = Window { stream, start, end, base: self.base, opened_ns, launches: 1, sample: None, closed_ns: 0 };
        // A multi-stream launch opens several; only the last stays open, the others close right
        // behind their launch.
        if let Some(other) = self.open.replace(window) {
            self.behind.push(other);
        }
    }

    /// Ends the open window with its end event.
    fn close_open(&mut self) {
        let Some(mut w) = self.open.take() else { return };
        if !Self::record(w.end, w.stream) {
            self.pool.extend(w.events());
            return;
        }
        w.closed_ns = precise_ns();
        self.pending.push_back(w);
    }

    /// Charges every pending window whose end has completed, oldest first; with `wait`, waits
    /// for the oldest one first.
    fn harvest(&mut self, wait: bool) {
        let api = cuda();
        let mut wait = wait;
        while let Some(w) = self.pending.front() {
            // SAFETY: events of this context, recorded.
            let done = unsafe {
                if wait {
                    api.cuEventSynchronize.map(|f| f(w.end)) == Some(CUDA_SUCCESS)
                } else {
                    api.cuEventQuery.map(|f| f(w.end)) == Some(CUDA_SUCCESS)
                }
            };
            if !done {
                if wait {
                    // The event cannot be waited for: drop it rather than wait forever.
                    if let Some(w) = self.pending.pop_front() {
                        self.pool.extend(w.events());
                    }
                }
                break;
            }
            wait = false;
            let Some(w) = self.pending.pop_front() else { break };
            let measured = w.measure(elapsed_ms);
            self.pool.extend(w.events());
            if let Some(m) = measured {
                self.account(m, w.launches);
            }
        }
        if !self.retired.is_empty() {
            self.release_retired();
        }
    }

    /// Learns the GPU time per launch from a measure `ns` of one launch (`window: false`, a
    /// sampled launch) or of a window's average (`window: true`, a window whose stream never
    /// drained). While other slices are busy on the GPU every measure also holds the time their
    /// kernels ran in between: a window's average then lowers the estimate at once (a window
    /// the others left alone) and raises it slowly; a single launch moves it slowly both ways
    /// (one kernel may be unlike the others).
    fn learn(&mut self, ns: u64, window: bool, others_busy: bool) {
        let toward = |per: u64, div: u64| {
            if ns >= per { per + (ns - per) / div } else { per - (per - ns) / div }
        };
        self.per_launch_ns = Some(match self.per_launch_ns {
            None => ns,
            Some(per) if others_busy && window && ns < per => ns,
            Some(per) if others_busy => toward(per, 32),
            Some(per) if window => toward(per, 4),
            Some(per) => toward(per, 8),
        });
    }

    /// Charges the window of `launches` launches measured as `m`.
    ///
    /// A window whose stream drained is charged its launches at the GPU time per launch (at
    /// most its span): the span also holds the time the GPU waited for the host. Other windows
    /// are charged their span, which is their own GPU time only when nothing else ran on the
    /// GPU meanwhile. Other processes of the slice: what they already charged of the span is
    /// not charged again (the slice's `busy_until_ns`). Other slices busy on the GPU: their
    /// work is in the span too, so the window is charged at most its launches at the GPU time
    /// per launch.
    fn account(&mut self, m: Measured, launches: u32) {
        let (Some(region), Some(slice)) = (self.region(), self.slice) else { return };
        let now = precise_ns();
        let compute = region.compute();
        if compute.busy_until_ns.load(std::sync::atomic::Ordering::Relaxed) > now + MAX_AHEAD_NS {
            // Scribbled: not believed.
            compute.busy_until_ns.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        let others_busy = state().slices[slice]
            .board()
            .is_some_and(|(board, own)| board.others(*own, m.start_ns.saturating_sub(ACTIVE_NS)).busy);
        let launches = u64::from(launches.max(1));
        if let Some(sample) = m.sample_ns {
            self.learn(sample, false, others_busy);
        }
        if !m.drained {
            self.learn(m.span_ns / launches, true, others_busy);
        }
        let estimate = self.per_launch_ns.map(|per| m.span_ns.min(per.saturating_mul(launches)));
        let gpu_ns = match estimate {
            // Mostly the GPU waiting for the host: the span is not the slice's work, so it is
            // neither charged nor claimed against the slice's other processes.
            Some(estimate) if m.drained => estimate,
            _ => {
                let span = m.span_ns;
                let own = if others_busy { estimate.unwrap_or(span) } else { span };
                // The slice's own processes: the part of the span another one already charged
                // is not charged twice (scaled like the span when other slices shared it).
                let unclaimed = region.unclaimed_gpu_time(m.start_ns, m.start_ns.saturating_add(span));
                own.min(unclaimed.saturating_mul(own) / span.max(1))
            }
        };
        log!(
            Debug,
            "window: {launches} launches over {} ns (drained: {}, sample: {:?}), charged {gpu_ns} ns (others busy: {others_busy})",
            m.span_ns,
            m.drained,
            m.sample_ns
        );
        region.charge_gpu_time(gpu_ns, share_now(slice, now), BURST_NS, now);
    }

    /// Waits while the slice's pacing clock is ahead of now.
    fn hold_back(&self) {
        let Some(region) = self.region() else { return };
        let start = precise_ns();
        let mut now = start;
        loop {
            if let Some(slice) = self.slice {
                // Wanting the GPU counts as being busy on it.
                share_now(slice, now);
            }
            let delay = region.pacing_delay(now);
            if delay == 0 {
                break;
            }
            if delay > MAX_AHEAD_NS {
                log!(Warn, "pacing clock {delay} ns ahead: not believed, reset");
                region.compute().virtual_ns.store(now, std::sync::atomic::Ordering::Release);
                break;
            }
            let nap = delay.min(MAX_SLEEP_NS);
            let ts =
                libc::timespec { tv_sec: (nap / 1_000_000_000) as libc::time_t, tv_nsec: (nap % 1_000_000_000) as _ };
            // SAFETY: valid timespec; a signal cutting the sleep short only shortens the wait.
            unsafe { libc::nanosleep(&ts, null_mut()) };
            now = precise_ns();
        }
        if now > start {
            log!(Debug, "held back {} ns", now - start);
            region.compute().held_ns_total.fetch_add(now - start, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// `cuEventElapsedTime` between two completed events of the current context.
fn elapsed_ms(start: CUevent, end: CUevent) -> Option<f32> {
    let mut ms = 0f32;
    // SAFETY: out pointer to a local; both events of this context, recorded and complete.
    let r = unsafe { cuda().cuEventElapsedTime.map(|f| f(&mut ms, start, end)) };
    (r == Some(CUDA_SUCCESS)).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const DAY: u64 = 24 * 3600 * 1000 * MS;

    /// A GPU clock: event `i` (as a handle, from 1) completed at `times[i - 1]` ns. Elapsed times
    /// come back as the driver gives them, `f32` milliseconds of the exact difference.
    fn clock(times: &[u64]) -> impl Fn(CUevent, CUevent) -> Option<f32> + '_ {
        move |a, b| {
            let t = |e: CUevent| times.get((e as usize).checked_sub(1)?).copied();
            Some(((t(b)? as f64 - t(a)? as f64) / 1e6) as f32)
        }
    }

    fn ev(i: usize) -> CUevent {
        i as CUevent
    }

    /// Events: 1 base, 2 start, 3 end, 4 after the sampled first launch (which returned at
    /// `sample_returned`); closed (its end recorded) at `closed_ns`.
    fn window(base_ns: u64, closed_ns: u64, sample_returned: Option<u64>) -> Window {
        Window {
            stream: null_mut(),
            start: ev(2),
            end: ev(3),
            base: Some(Base { event: ev(1), ns: base_ns }),
            opened_ns: base_ns,
            launches: 5,
            sample: sample_returned.map(|r| Sample { before: None, after: ev(4), returned_ns: r }),
            closed_ns,
        }
    }

    #[test]
    fn a_window_a_day_after_the_base_is_measured_to_the_microsecond() {
        // The thread's first event completed at 1 s on the monotonic clock, a window of 2.5 ms
        // ran a day later. Read against that first event, f32 milliseconds step by 8 ms.
        let times = [1000 * MS, 1000 * MS + DAY, 1000 * MS + DAY + 2_500_000];
        let w = window(1000 * MS, DAY + 2000 * MS, None);
        let m = w.measure(clock(&times)).expect("measured");
        assert!(m.span_ns.abs_diff(2_500_000) <= 1_000, "a 2.5 ms window a day on measured {} ns", m.span_ns);
        // Its start, read against the day-old base, is only as good as the f32 step (the thread
        // renews its base every REBASE_NS, so this does not happen).
        assert!(m.start_ns.abs_diff(1000 * MS + DAY) <= 8 * MS);
        // Read against a base renewed a second before, to the microsecond.
        let times = [DAY - 1000 * MS, DAY, DAY + 2_500_000];
        let m = window(DAY - 1000 * MS, DAY + 2000 * MS, None).measure(clock(&times)).unwrap();
        assert!(m.start_ns.abs_diff(DAY) <= 1_000, "start {} ns off", m.start_ns.abs_diff(DAY));
        assert!(m.span_ns.abs_diff(2_500_000) <= 1_000);
    }

    #[test]
    fn a_window_whose_stream_drained_is_told_apart() {
        let t0 = 5000 * MS;
        // Start at 1 ms after the base, end 2 ms later.
        let times = [t0, t0 + MS, t0 + 3 * MS];
        // End recorded 1 ms before the work ended: the stream was behind, not drained.
        let busy = window(t0, t0 + 2 * MS, None).measure(clock(&times)).unwrap();
        assert!(!busy.drained);
        // End recorded after the work had ended (it completed at once), or within the slack.
        assert!(window(t0, t0 + 3 * MS, None).measure(clock(&times)).unwrap().drained);
        assert!(window(t0, t0 + 3 * MS - 10_000, None).measure(clock(&times)).unwrap().drained);
        // Still open.
        assert!(!window(t0, 0, None).measure(clock(&times)).unwrap().drained);
    }

    #[test]
    fn a_sampled_launch_is_timed_by_its_own_events() {
        let t0 = 5000 * MS;
        // A 100 µs kernel queued behind earlier work (the launch call returned 500 µs before the
        // stream reached the start event): its own end event 100 µs after the start.
        let times = [t0, t0 + MS, t0 + 3 * MS, t0 + MS + 100_000];
        let m = window(t0, t0 + 3 * MS, Some(t0 + MS - 500_000)).measure(clock(&times)).unwrap();
        assert!(m.sample_ns.unwrap().abs_diff(100_000) <= 1_000, "{:?}", m.sample_ns);
        // A zero-length kernel on an idle stream: only host time passes between its events (the
        // launch call, 3 µs), and the end event completed right after the call returned.
        let times = [t0, t0 + MS, t0 + 3 * MS, t0 + MS + 3_000];
        let m = window(t0, t0 + 3 * MS, Some(t0 + MS + 2_900)).measure(clock(&times)).unwrap();
        assert!(m.sample_ns.unwrap() <= 200, "a zero-length kernel sampled as {:?} ns", m.sample_ns);
        // A 20 µs kernel on an idle stream, launched 3 µs after the start event: the later bound.
        let times = [t0, t0 + MS, t0 + 3 * MS, t0 + MS + 23_000];
        let m = window(t0, t0 + 3 * MS, Some(t0 + MS + 3_500)).measure(clock(&times)).unwrap();
        assert!(m.sample_ns.unwrap().abs_diff(20_000) <= 1_000, "{:?}", m.sample_ns);
    }

    #[test]
    fn a_launch_sampled_inside_a_window_is_timed_and_shows_a_drained_stream() {
        let t0 = 5000 * MS;
        // Window from 1 ms to 3 ms; events 5 and 4 around a 20 µs kernel launched at 2 ms.
        let sampled = |before_at: u64, recorded: u64| {
            let times = [t0, t0 + MS, t0 + 3 * MS, before_at + 20_000, before_at];
            let mut w = window(t0, t0 + 2 * MS, None);
            w.sample = Some(Sample { before: Some((ev(5), recorded)), after: ev(4), returned_ns: before_at });
            w.measure(clock(&times)).unwrap()
        };
        // The stream was still busy when the event before it was recorded (at 1.5 ms).
        let m = sampled(t0 + 2 * MS, t0 + 1500 * 1000);
        assert!(!m.drained);
        assert!(m.sample_ns.unwrap().abs_diff(20_000) <= 1_000, "{:?}", m.sample_ns);
        // It had drained: the event before completed as soon as it was recorded.
        let m = sampled(t0 + 2 * MS, t0 + 2 * MS);
        assert!(m.drained);
        assert!(m.sample_ns.unwrap().abs_diff(20_000) <= 1_000, "{:?}", m.sample_ns);
    }

    #[test]
    fn events_read_before_they_complete_or_backwards_measure_nothing() {
        let t0 = 5000 * MS;
        let times = [t0, t0 + 3 * MS, t0 + MS];
        assert_eq!(window(t0, t0, None).measure(clock(&times)), None);
        assert_eq!(window(t0, t0, None).measure(|_, _| None), None);
        assert_eq!(window(t0, t0, None).measure(|_, _| Some(f32::NAN)), None);
    }
}
