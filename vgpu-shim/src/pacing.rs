//! Compute slicing: kernel launches paced so that a slice with `cores = N` gets N % of its
//! GPU's time, shared by all of its processes. The design and its trade-offs are in
//! `docs/pacing.md`; in short:
//!
//! - **Measuring** without host PIDs: each thread brackets its launches in *windows*, a pair of
//!   events per window on the launch's stream (a start event before the window's first launch,
//!   an end event when the window closes). The time between the two is the GPU time the window's
//!   work took. A window closes after [`WINDOW_LAUNCHES`] launches, after [`WINDOW_NS`], when
//!   the thread launches on another stream, and when the thread synchronises (then the end
//!   event is exactly the end of the work).
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

/// The fast path's state: launches left in the current window, its stream, its deadline on
/// the coarse clock.
struct Fast {
    left: Cell<u32>,
    stream: Cell<CUstream>,
    deadline: Cell<u64>,
    unpaced: Cell<bool>,
    /// The coarse clock at the last launch inside the window.
    last: Cell<u64>,
}

thread_local! {
    static FAST: Fast = const {
        Fast {
            left: Cell::new(0),
            stream: Cell::new(null_mut()),
            deadline: Cell::new(0),
            unpaced: Cell::new(false),
            last: Cell::new(0),
        }
    };
    static WINDOWS: RefCell<Windows> = RefCell::new(Windows::default());
}

/// One window of launches on one stream.
#[derive(Debug)]
struct Window {
    stream: CUstream,
    start: CUevent,
    end: CUevent,
    /// Opened, and last launched into, on the precise clock.
    opened_ns: u64,
    last_launch_ns: u64,
    /// Launches in the window, known once it closes.
    launches: u32,
    /// The stream was idle when the window was closed by a later launch (not by a
    /// synchronisation), so its end event may mark that launch rather than the end of the work.
    closed_idle_late: bool,
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
    /// GPU time per launch, a moving average of the windows measured while no other slice
    /// was busy on the GPU.
    per_launch_ns: u64,
    /// An event of `ctx` that completed at `base_ns` on the monotonic clock: event times are
    /// read against it.
    base: Option<(CUevent, u64)>,
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
        let now = now_ns();
        if fast.stream.get() == stream && now < fast.deadline.get() {
            fast.left.set(left - 1);
            fast.last.set(now);
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
    let stream = streams.first().copied().unwrap_or(null_mut());
    let budget = WINDOWS.try_with(|w| match w.try_borrow_mut() {
        Ok(mut w) => w.before_launch(streams),
        Err(_) => None,
    });
    let result = f();
    let budget = budget.ok().flatten().filter(|_| result == CUDA_SUCCESS);
    FAST.with(|fast| {
        fast.stream.set(stream);
        if let Some(budget) = budget {
            fast.unpaced.set(false);
            fast.left.set(budget);
            fast.deadline.set(now_ns().saturating_add(WINDOW_NS));
        } else {
            fast.unpaced.set(true);
            fast.left.set(UNPACED_LAUNCHES);
        }
    });
    result
}

/// Called after a synchronisation on `stream` (or the whole context, `None`) returned: the
/// thread's open window there ends now, exactly.
pub fn synchronized(stream: Option<CUstream>, per_thread: bool) {
    let stream = stream.map(|s| if per_thread && s.is_null() { CU_STREAM_PER_THREAD } else { s });
    let _ = WINDOWS.try_with(|w| {
        if let Ok(mut w) = w.try_borrow_mut() {
            w.after_sync(stream);
        }
    });
    // The next launch opens a new window.
    FAST.with(|fast| {
        if !fast.unpaced.get() {
            fast.left.set(0);
        }
    });
}

/// Called before a capture starts on `stream`: the thread's open window there closes now.
pub fn before_capture(stream: CUstream, per_thread: bool) {
    let stream = if per_thread && stream.is_null() { CU_STREAM_PER_THREAD } else { stream };
    let _ = WINDOWS.try_with(|w| {
        if let Ok(mut w) = w.try_borrow_mut()
            && w.open.as_ref().is_some_and(|o| o.stream == stream)
        {
            w.close_open(precise_ns(), true);
        }
    });
    FAST.with(|fast| {
        if !fast.unpaced.get() {
            fast.left.set(0);
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
fn precise_ns() -> u64 {
    // SAFETY: timespec is plain data; CLOCK_MONOTONIC is always available on Linux.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Windows {
    /// Everything that happens once per window, before the launch that opens it. Returns
    /// the new window's launch budget, or `None` when the launch is not paced.
    fn before_launch(&mut self, streams: &[CUstream]) -> Option<u32> {
        let Some((ctx, slice)) = paced_slice() else {
            log!(Debug, "launch not paced");
            self.open = None;
            return None;
        };
        if ctx != self.ctx || Some(slice) != self.slice {
            // Events belong to a context: start over in this one (the old ones are left to it).
            *self = Windows { ctx, slice: Some(slice), ..Windows::default() };
            self.base = Self::base_event();
        }
        let now = precise_ns();
        self.close_open(now, false);
        self.harvest(false);
        while self.pending.len() >= MAX_PENDING_WINDOWS {
            self.harvest(true);
        }
        let capture = streams.iter().any(|&s| capturing(s));
        if capture {
            // Captured launches run later, as a graph launch, which is paced then.
            return Some(1);
        }
        self.hold_back();
        for &stream in streams {
            self.open_window(stream);
        }
        self.budget = match self.per_launch_ns {
            0 => WINDOW_LAUNCHES,
            per => (WINDOW_GPU_NS / per).clamp(u64::from(MIN_WINDOW_LAUNCHES), u64::from(MAX_WINDOW_LAUNCHES)) as u32,
        };
        Some(self.budget)
    }

    fn after_sync(&mut self, stream: Option<CUstream>) {
        let Some(open) = &self.open else { return };
        if stream.is_none_or(|s| s == open.stream) {
            self.close_open(precise_ns(), true);
            self.harvest(false);
        }
    }

    /// Records an event on a private stream of the current context (no work ahead of it, so it
    /// completes at once), waits for it and reads the clock: event times then map onto the
    /// monotonic clock within the time that wait takes to return.
    fn base_event() -> Option<(CUevent, u64)> {
        let api = cuda();
        let (mut stream, mut event): (CUstream, CUevent) = (null_mut(), null_mut());
        // SAFETY: out pointers; flags 1 = non-blocking stream, 0 = default event; the stream is
        // ours and only ever carries this event.
        unsafe {
            if api.cuStreamCreate?(&mut stream, 1) != CUDA_SUCCESS || api.cuEventCreate?(&mut event, 0) != CUDA_SUCCESS
            {
                return None;
            }
            if api.cuEventRecord?(event, stream) != CUDA_SUCCESS || api.cuEventSynchronize?(event) != CUDA_SUCCESS {
                return None;
            }
        }
        Some((event, precise_ns()))
    }

    /// When a completed event completed, on the monotonic clock.
    fn time_of(&self, event: CUevent) -> Option<u64> {
        let (base, base_ns) = self.base?;
        let mut ms = 0f32;
        // SAFETY: out pointer; both events of this context, recorded and complete.
        let ok = unsafe { cuda().cuEventElapsedTime.map(|f| f(&mut ms, base, event)) } == Some(CUDA_SUCCESS);
        (ok && ms.is_finite() && ms >= 0.0).then(|| base_ns + (f64::from(ms) * 1e6) as u64)
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
        if !Self::record(start, stream) {
            self.pool.extend([start, end]);
            return;
        }
        let now = precise_ns();
        if let Some(old) = self.open.replace(Window {
            stream,
            start,
            end,
            opened_ns: now,
            last_launch_ns: now,
            launches: 1,
            closed_idle_late: false,
        }) {
            // A multi-stream launch opens several; only the last stays open, the others close
            // right behind their launch.
            self.pending.push_back(old);
        }
    }

    /// Ends the open window with its end event. `by_sync`: the stream was just synchronised.
    fn close_open(&mut self, now: u64, by_sync: bool) {
        let Some(mut w) = self.open.take() else { return };
        let (last, left) = FAST.with(|f| (f.last.get(), f.left.get()));
        w.last_launch_ns = w.last_launch_ns.max(last);
        w.launches = self.budget.saturating_sub(left).max(1);
        if !Self::record(w.end, w.stream) {
            self.pool.extend([w.start, w.end]);
            return;
        }
        if !by_sync {
            // SAFETY: an event just recorded.
            let idle = unsafe { cuda().cuEventQuery.map(|f| f(w.end)) } == Some(CUDA_SUCCESS);
            w.closed_idle_late = idle && now.saturating_sub(w.last_launch_ns) > WINDOW_NS;
        }
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
                        self.pool.extend([w.start, w.end]);
                    }
                }
                break;
            }
            wait = false;
            let Some(w) = self.pending.pop_front() else { break };
            let times = self.time_of(w.start).zip(self.time_of(w.end));
            self.pool.extend([w.start, w.end]);
            let Some((start, mut end)) = times.filter(|(s, e)| e > s) else { continue };
            if w.closed_idle_late {
                // The work ended some time before the late end event: count at most how long
                // its launches took to issue plus one window, or its launches at the GPU time
                // per launch measured so far, whichever is more.
                let issued = w.last_launch_ns.saturating_sub(w.opened_ns) + WINDOW_NS;
                let expected = self.per_launch_ns.saturating_mul(u64::from(w.launches));
                end = end.min(start + issued.max(expected));
            }
            self.account(start, end, w.launches);
        }
    }

    /// Charges the window of `launches` launches whose work ran from `start` to `end`.
    ///
    /// That span is the window's own GPU time only when nothing else ran on the GPU meanwhile.
    /// Other processes of the slice: what they already charged of the span is not charged
    /// again (the slice's `busy_until_ns`). Other slices busy on the GPU: their work is in the
    /// span too, so the window is charged at most its launches at the GPU time per launch
    /// measured while the GPU was ours alone (half the span before there is such a measure).
    fn account(&mut self, start: u64, end: u64, launches: u32) {
        let (Some(region), Some(slice)) = (self.region(), self.slice) else { return };
        let now = precise_ns();
        if region.compute().busy_until_ns.load(std::sync::atomic::Ordering::Relaxed) > now + MAX_AHEAD_NS {
            // Scribbled: not believed.
            region.compute().busy_until_ns.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        let span = end - start;
        let others_busy = state().slices[slice]
            .board()
            .is_some_and(|(board, own)| board.others(*own, start.saturating_sub(ACTIVE_NS)).busy);
        let launches = u64::from(launches.max(1));
        let sample = (span / launches).max(1);
        let own = if others_busy {
            // The span is an upper bound of our per-launch time: the estimate follows lower
            // samples at once (a window the others left us alone in) and higher ones slowly (our
            // kernels got longer).
            self.per_launch_ns = match self.per_launch_ns {
                0 => sample,
                per if sample < per => sample,
                per => per + (sample - per) / 32,
            };
            span.min(self.per_launch_ns * launches)
        } else {
            self.per_launch_ns = match self.per_launch_ns {
                0 => sample,
                per => (per * 3 + sample) / 4,
            };
            span
        };
        // The slice's own processes: the part of the span another one already charged is not
        // charged twice (scaled like the span when other slices shared it).
        let unclaimed = region.unclaimed_gpu_time(start, end);
        let gpu_ns = own.min(unclaimed.saturating_mul(own) / span.max(1));
        log!(Debug, "window: {launches} launches over {span} ns, charged {gpu_ns} ns (others busy: {others_busy})");
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
