//! What a capturing stream reports and how its dependencies change: `cuStreamGetCaptureInfo`
//! in its three forms (10.1: status and id; 11.3 `_v2`: also the graph and the dependencies;
//! 12.3 `_v3`: also their edge data), `cuStreamUpdateCaptureDependencies` (11.3, and `_v2`
//! with edge data, 12.3), and `cuEventRecordWithFlags` (11.1), each with its per-thread
//! (`_ptsz`) twin; and `cuThreadExchangeStreamCaptureMode` (10.1), the calling thread's
//! capture interaction mode. CUDA 12.3+ runtimes (and PyTorch's graph capture, through them)
//! call these once a capture has begun; PyTorch's caching allocator switches its thread to
//! relaxed mode around the `cudaMalloc` of a capture's private pool.
//!
//! The simulated capture is a list (see [`graph`](super::graph)): its dependencies are the
//! last node captured (or those `cuStreamBeginCaptureToGraph` or an update set), reported
//! with zeroed edge data; an update changes what is reported, not the order nodes run in.
//! A thread's interaction mode is kept and exchanged but refuses nothing: the simulator does
//! not refuse potentially unsafe calls (`cuMemAlloc`, …) while a global capture runs.

use std::cell::Cell;
use std::ffi::c_uint;

use super::error::{CuResult, INVALID_VALUE};
use super::ffi::{Out, inputs};
use super::proc_address::driver_api;
use super::types::*;
use super::{Handle, driver, graph, stream};

/// The optional outputs of `cuStreamGetCaptureInfo*`.
struct InfoOut {
    status: *mut CUstreamCaptureStatus,
    id: *mut cuuint64_t,
    graph: *mut CUgraph,
    dependencies: *mut *const CUgraphNode,
    edges: *mut *const CUgraphEdgeData,
    count: *mut usize,
}

impl InfoOut {
    fn basic(status: *mut CUstreamCaptureStatus, id: *mut cuuint64_t) -> Self {
        use std::ptr::null_mut;
        InfoOut { status, id, graph: null_mut(), dependencies: null_mut(), edges: null_mut(), count: null_mut() }
    }
}

/// `cuStreamGetCaptureInfo*`: the status is required (`CUDA_ERROR_INVALID_VALUE` without it),
/// edge data only with dependencies; the rest is written only while a capture is active.
///
/// # Safety
///
/// Each pointer is null or writable.
unsafe fn capture_info(stream: CUstream, out: InfoOut, per_thread: bool) -> CuResult {
    // SAFETY: null or writable per the caller.
    let status = unsafe { Out::new(out.status) }?;
    if !out.edges.is_null() && out.dependencies.is_null() {
        return Err(INVALID_VALUE);
    }
    let reg = driver()?.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    let info = graph::capture_info(&reg, q);
    status.set(info.status);
    if info.status != CU_STREAM_CAPTURE_STATUS_ACTIVE {
        return Ok(());
    }
    // SAFETY: each output is null or writable per the caller.
    unsafe {
        put(out.id, info.id);
        put(out.graph, info.graph as CUgraph);
        put(out.dependencies, info.dependencies);
        put(out.edges, info.edges);
        put(out.count, info.count);
    }
    Ok(())
}

/// Write `value` to an optional output.
///
/// # Safety
///
/// `p` is null or writable.
unsafe fn put<T>(p: *mut T, value: T) {
    // SAFETY: per the caller.
    if let Some(o) = unsafe { Out::optional(p) } {
        o.set(value);
    }
}

/// `cuStreamUpdateCaptureDependencies*`; edge data, if any, is not kept.
///
/// # Safety
///
/// `dependencies` is null or holds `n` nodes.
unsafe fn update_dependencies(
    stream: CUstream,
    dependencies: *const CUgraphNode,
    n: usize,
    flags: c_uint,
    per_thread: bool,
) -> CuResult {
    // SAFETY: per the caller.
    let nodes = if n == 0 { &[][..] } else { unsafe { inputs(dependencies, n) }? };
    let nodes: Vec<Handle> = nodes.iter().map(|&d| d as Handle).collect();
    let mut reg = driver()?.lock();
    let q = stream::queue(&reg, stream, per_thread)?;
    graph::update_capture_dependencies(&mut reg, q, &nodes, flags)
}

/// `cuEventRecordWithFlags`: `CU_EVENT_RECORD_DEFAULT` or `CU_EVENT_RECORD_EXTERNAL`; either
/// records as `cuEventRecord` does (in a capture, an event record node).
fn record_with_flags(event: CUevent, stream: CUstream, flags: c_uint, per_thread: bool) -> CuResult {
    if flags & !CU_EVENT_RECORD_EXTERNAL != 0 {
        return Err(INVALID_VALUE);
    }
    stream::record_event(event, stream, per_thread)
}

thread_local! {
    /// This thread's `CUstreamCaptureMode` (global until exchanged).
    static THREAD_MODE: Cell<CUstreamCaptureMode> = const { Cell::new(CU_STREAM_CAPTURE_MODE_GLOBAL) };
}

driver_api! {
    /// Sets the calling thread's capture interaction mode to `*mode` and returns the previous
    /// one in `*mode`; an unknown mode is `CUDA_ERROR_INVALID_VALUE`.
    fn cuThreadExchangeStreamCaptureMode(mode: *mut CUstreamCaptureMode) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(mode) }?;
        // SAFETY: non-null (checked just above) and readable per the export's contract.
        let wanted = unsafe { *out.as_ptr() };
        if wanted > CU_STREAM_CAPTURE_MODE_RELAXED {
            return Err(INVALID_VALUE);
        }
        out.set(THREAD_MODE.replace(wanted));
        Ok(())
    }

    /// The 10.1 form: status and id.
    fn cuStreamGetCaptureInfo(h_stream: CUstream, capture_status: *mut CUstreamCaptureStatus, id: *mut cuuint64_t) {
        // SAFETY: null or writable per the export's contract.
        unsafe { capture_info(h_stream, InfoOut::basic(capture_status, id), false) }
    }
    fn cuStreamGetCaptureInfo_ptsz(
        h_stream: CUstream,
        capture_status: *mut CUstreamCaptureStatus,
        id: *mut cuuint64_t,
    ) {
        // SAFETY: null or writable per the export's contract.
        unsafe { capture_info(h_stream, InfoOut::basic(capture_status, id), true) }
    }

    /// The 11.3 form: also the graph being captured and the dependencies of the next node.
    fn cuStreamGetCaptureInfo_v2(
        h_stream: CUstream,
        capture_status: *mut CUstreamCaptureStatus,
        id: *mut cuuint64_t,
        graph: *mut CUgraph,
        dependencies: *mut *const CUgraphNode,
        num_dependencies: *mut usize,
    ) {
        let out = InfoOut { graph, dependencies, count: num_dependencies, ..InfoOut::basic(capture_status, id) };
        // SAFETY: null or writable per the export's contract.
        unsafe { capture_info(h_stream, out, false) }
    }
    fn cuStreamGetCaptureInfo_v2_ptsz(
        h_stream: CUstream,
        capture_status: *mut CUstreamCaptureStatus,
        id: *mut cuuint64_t,
        graph: *mut CUgraph,
        dependencies: *mut *const CUgraphNode,
        num_dependencies: *mut usize,
    ) {
        let out = InfoOut { graph, dependencies, count: num_dependencies, ..InfoOut::basic(capture_status, id) };
        // SAFETY: null or writable per the export's contract.
        unsafe { capture_info(h_stream, out, true) }
    }

    /// The 12.3 form: also the dependencies' edge data (all zero: default edges).
    fn cuStreamGetCaptureInfo_v3(
        h_stream: CUstream,
        capture_status: *mut CUstreamCaptureStatus,
        id: *mut cuuint64_t,
        graph: *mut CUgraph,
        dependencies: *mut *const CUgraphNode,
        edge_data: *mut *const CUgraphEdgeData,
        num_dependencies: *mut usize,
    ) {
        let out = InfoOut { status: capture_status, id, graph, dependencies, edges: edge_data, count: num_dependencies };
        // SAFETY: null or writable per the export's contract.
        unsafe { capture_info(h_stream, out, false) }
    }
    fn cuStreamGetCaptureInfo_v3_ptsz(
        h_stream: CUstream,
        capture_status: *mut CUstreamCaptureStatus,
        id: *mut cuuint64_t,
        graph: *mut CUgraph,
        dependencies: *mut *const CUgraphNode,
        edge_data: *mut *const CUgraphEdgeData,
        num_dependencies: *mut usize,
    ) {
        let out = InfoOut { status: capture_status, id, graph, dependencies, edges: edge_data, count: num_dependencies };
        // SAFETY: null or writable per the export's contract.
        unsafe { capture_info(h_stream, out, true) }
    }

    /// Adds to (`CU_STREAM_ADD_CAPTURE_DEPENDENCIES`) or replaces (`…_SET_…`) the capture's
    /// dependencies; `CUDA_ERROR_ILLEGAL_STATE` when the stream is not capturing.
    fn cuStreamUpdateCaptureDependencies(
        h_stream: CUstream,
        dependencies: *mut CUgraphNode,
        num_dependencies: usize,
        flags: c_uint,
    ) {
        // SAFETY: `num_dependencies` nodes per the export's contract.
        unsafe { update_dependencies(h_stream, dependencies, num_dependencies, flags, false) }
    }
    fn cuStreamUpdateCaptureDependencies_ptsz(
        h_stream: CUstream,
        dependencies: *mut CUgraphNode,
        num_dependencies: usize,
        flags: c_uint,
    ) {
        // SAFETY: `num_dependencies` nodes per the export's contract.
        unsafe { update_dependencies(h_stream, dependencies, num_dependencies, flags, true) }
    }
    fn cuStreamUpdateCaptureDependencies_v2(
        h_stream: CUstream,
        dependencies: *mut CUgraphNode,
        _dependency_data: *const CUgraphEdgeData,
        num_dependencies: usize,
        flags: c_uint,
    ) {
        // SAFETY: `num_dependencies` nodes per the export's contract.
        unsafe { update_dependencies(h_stream, dependencies, num_dependencies, flags, false) }
    }
    fn cuStreamUpdateCaptureDependencies_v2_ptsz(
        h_stream: CUstream,
        dependencies: *mut CUgraphNode,
        _dependency_data: *const CUgraphEdgeData,
        num_dependencies: usize,
        flags: c_uint,
    ) {
        // SAFETY: `num_dependencies` nodes per the export's contract.
        unsafe { update_dependencies(h_stream, dependencies, num_dependencies, flags, true) }
    }

    /// As `cuEventRecord`; `CU_EVENT_RECORD_EXTERNAL` is accepted and changes nothing.
    fn cuEventRecordWithFlags(h_event: CUevent, h_stream: CUstream, flags: c_uint) {
        record_with_flags(h_event, h_stream, flags, false)
    }
    fn cuEventRecordWithFlags_ptsz(h_event: CUevent, h_stream: CUstream, flags: c_uint) {
        record_with_flags(h_event, h_stream, flags, true)
    }
}
