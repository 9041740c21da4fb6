//! Streams and events. When their work finishes is [`launch`](super::launch)'s business;
//! this module resolves handles and keeps the objects.

use std::collections::HashMap;

use super::context;
use super::error::{CAPTURED_EVENT, CuResult, INVALID_HANDLE, INVALID_VALUE, NOT_READY};
use super::graph::{self, Node};
use super::launch::{self, Nanos, Queue, QueueTime, STREAM_NON_BLOCKING};
use super::types::{CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, CUevent, CUstream};
use super::{Driver, Handle, Registry, new_handle};
use crate::timeline;

#[derive(Debug)]
pub(crate) struct Stream {
    pub ctx: Handle,
    pub flags: u32,
    /// As created, clamped to the range `cuCtxGetStreamPriorityRange` gives; the device serves
    /// work in queue order whatever the priority.
    pub priority: i32,
    pub time: QueueTime,
}

/// `cuCtxGetStreamPriorityRange`: from 0 (least, the default) to -5 (greatest).
pub(crate) const PRIORITY_LEAST: i32 = 0;
pub(crate) const PRIORITY_GREATEST: i32 = -5;

#[derive(Debug)]
struct Event {
    ctx: Handle,
    flags: u32,
    /// When the work before the last `cuEventRecord` finishes.
    at: Option<Nanos>,
    /// Last recorded into a graph being captured, not run.
    captured: bool,
}

/// `CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS`.
const EVENT_FLAGS: u32 = 0x1 | 0x2 | 0x4;
const EVENT_DISABLE_TIMING: u32 = 0x2;
const EVENT_INTERPROCESS: u32 = 0x4;

#[derive(Debug, Default)]
pub(crate) struct Streams {
    pub streams: HashMap<Handle, Stream>,
    events: HashMap<Handle, Event>,
}

/// The queue a `CUstream` argument names. `per_thread` is true in `_ptsz`/`_ptds` entry
/// points, where `0` means the per-thread default stream.
pub(crate) fn queue(reg: &Registry, stream: CUstream, per_thread: bool) -> CuResult<Queue> {
    let handle = stream as usize;
    if stream.is_null() || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD {
        let ctx = context::current(reg)?;
        if stream == CU_STREAM_PER_THREAD || (stream.is_null() && per_thread) {
            Ok(Queue::PerThread(ctx, std::thread::current().id()))
        } else {
            Ok(Queue::Legacy(ctx))
        }
    } else if reg.streams.streams.contains_key(&handle) {
        Ok(Queue::Stream(handle))
    } else {
        Err(INVALID_HANDLE)
    }
}

/// The context a queue belongs to.
pub(crate) fn queue_context(reg: &Registry, q: Queue) -> Handle {
    match q {
        Queue::Legacy(ctx) | Queue::PerThread(ctx, _) => ctx,
        Queue::Stream(s) => reg.streams.streams[&s].ctx,
    }
}

impl Streams {
    pub fn create(&mut self, ctx: Handle, flags: u32, priority: i32) -> CuResult<Handle> {
        if flags & !STREAM_NON_BLOCKING != 0 {
            return Err(INVALID_VALUE);
        }
        let stream = new_handle();
        let priority = priority.clamp(PRIORITY_GREATEST, PRIORITY_LEAST);
        self.streams.insert(stream, Stream { ctx, flags, priority, time: QueueTime::default() });
        Ok(stream)
    }

    pub fn create_event(&mut self, ctx: Handle, flags: u32) -> CuResult<Handle> {
        if flags & !EVENT_FLAGS != 0 || (flags & EVENT_INTERPROCESS != 0 && flags & EVENT_DISABLE_TIMING == 0) {
            return Err(INVALID_VALUE);
        }
        let event = new_handle();
        self.events.insert(event, Event { ctx, flags, at: None, captured: false });
        Ok(event)
    }

    pub fn destroy_event(&mut self, event: Handle) -> CuResult {
        self.events.remove(&event).map(drop).ok_or(INVALID_HANDLE)
    }

    /// Forget `ctx`'s streams and events, as destroying the context does.
    pub fn drop_context(&mut self, ctx: Handle) {
        self.streams.retain(|_, s| s.ctx != ctx);
        self.events.retain(|_, e| e.ctx != ctx);
    }
}

/// `cuStreamDestroy`: returns at once; work already queued still finishes in time. A capture
/// in progress on the stream ends with it.
pub(crate) fn destroy(reg: &mut Registry, stream: Handle) -> CuResult {
    reg.streams.streams.remove(&stream).ok_or(INVALID_HANDLE)?;
    reg.graphs.drop_queue(Queue::Stream(stream));
    Ok(())
}

/// The event completes at `at` (a graph's event node ran). A destroyed event is left alone.
pub(crate) fn set_event(reg: &mut Registry, event: Handle, at: Nanos) {
    if let Some(e) = reg.streams.events.get_mut(&event) {
        e.at = Some(at);
        e.captured = false;
    }
}

/// `cuEventRecord`: the event completes when the work queued on `q` so far does; on a
/// capturing stream it becomes a node of the graph instead.
fn record(reg: &mut Registry, event: Handle, q: Queue) -> CuResult {
    reg.streams.events.get(&event).ok_or(INVALID_HANDLE)?;
    if graph::capture(reg, q, Node::EventRecord(event))? {
        reg.streams.events.get_mut(&event).ok_or(INVALID_HANDLE)?.captured = true;
        return Ok(());
    }
    let at = launch::completion(reg, q);
    set_event(reg, event, at);
    Ok(())
}

/// When `event` completes; `None` if it was never recorded.
pub(crate) fn event_time(reg: &Registry, event: Handle) -> CuResult<Option<Nanos>> {
    let e = reg.streams.events.get(&event).ok_or(INVALID_HANDLE)?;
    if e.captured { Err(CAPTURED_EVENT) } else { Ok(e.at) }
}

/// `cuEventElapsedTime`, in milliseconds.
pub(crate) fn elapsed(reg: &Registry, start: Handle, end: Handle) -> CuResult<f32> {
    let get = |e: Handle| reg.streams.events.get(&e).ok_or(INVALID_HANDLE);
    let (start, end) = (get(start)?, get(end)?);
    if (start.flags | end.flags) & EVENT_DISABLE_TIMING != 0 {
        return Err(INVALID_HANDLE);
    }
    if start.captured || end.captured {
        return Err(CAPTURED_EVENT);
    }
    let (Some(a), Some(b)) = (start.at, end.at) else { return Err(INVALID_HANDLE) };
    let now = timeline::now();
    if a > now || b > now {
        return Err(NOT_READY);
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    Ok(if b >= a { ms(b - a) } else { -ms(a - b) } as f32)
}

/// Sleep until `until` (computed under the lock) has passed, without the lock.
pub(crate) fn wait(driver: &Driver, until: impl FnOnce(&mut Registry) -> CuResult<Option<Nanos>>) -> CuResult {
    let t = until(&mut driver.lock())?;
    if let Some(t) = t {
        launch::wait_until(t);
    }
    Ok(())
}

/// `NOT_READY` if `t` is still ahead.
pub(crate) fn ready(t: Option<Nanos>) -> CuResult {
    match t {
        Some(t) if t > timeline::now() => Err(NOT_READY),
        _ => Ok(()),
    }
}

/// `cuStreamSynchronize`: not allowed on a capturing stream (which ends its capture). Memory
/// pools trim to their release thresholds.
pub(crate) fn synchronize(stream: CUstream, per_thread: bool) -> CuResult {
    let driver = super::driver()?;
    wait(driver, |reg| {
        let q = queue(reg, stream, per_thread)?;
        graph::forbid_during_capture(reg, q)?;
        Ok(Some(launch::completion(reg, q)))
    })?;
    driver.lock().memory.trim_at_sync();
    Ok(())
}

/// `cuEventSynchronize`: returns at once for an event never recorded. Memory pools trim to
/// their release thresholds.
pub(crate) fn synchronize_event(event: CUevent) -> CuResult {
    let driver = super::driver()?;
    wait(driver, |reg| event_time(reg, event as Handle))?;
    driver.lock().memory.trim_at_sync();
    Ok(())
}

/// `cuStreamQuery`: as `cuStreamSynchronize` on a capturing stream.
pub(crate) fn query(stream: CUstream, per_thread: bool) -> CuResult {
    let mut reg = super::driver()?.lock();
    let q = queue(&reg, stream, per_thread)?;
    graph::forbid_during_capture(&mut reg, q)?;
    ready(Some(launch::completion(&reg, q)))
}

/// `cuStreamWaitEvent`: work queued on the stream from now on starts after the event's work
/// is done. An event never recorded is done; while the stream (or the event) is being
/// captured, nothing changes: a captured graph's nodes run one after another anyway.
pub(crate) fn wait_event(stream: CUstream, event: CUevent, per_thread: bool) -> CuResult {
    let mut reg = super::driver()?.lock();
    let q = queue(&reg, stream, per_thread)?;
    let e = reg.streams.events.get(&(event as Handle)).ok_or(INVALID_HANDLE)?;
    if e.captured || graph::is_capturing(&reg, q) {
        return Ok(());
    }
    if let Some(at) = e.at {
        launch::set_idle(&mut reg, q, at);
    }
    Ok(())
}

/// `cuStreamGetPriority`: 0 for the default streams.
pub(crate) fn priority(stream: CUstream, per_thread: bool) -> CuResult<i32> {
    let reg = super::driver()?.lock();
    Ok(match queue(&reg, stream, per_thread)? {
        Queue::Stream(s) => reg.streams.streams[&s].priority,
        Queue::Legacy(_) | Queue::PerThread(..) => PRIORITY_LEAST,
    })
}

/// `cuEventRecord`.
pub(crate) fn record_event(event: CUevent, stream: CUstream, per_thread: bool) -> CuResult {
    let mut reg = super::driver()?.lock();
    let q = queue(&reg, stream, per_thread)?;
    record(&mut reg, event as Handle, q)
}
