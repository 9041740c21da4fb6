//! Graphs: built node by node (`cuGraphAddKernelNode`) or captured from a stream
//! (`cuStreamBeginCapture` … `cuStreamEndCapture`), instantiated, and launched on a stream,
//! where their nodes run one after the other in the order they were added (a valid order:
//! a node's dependencies are added before it). A kernel node takes its turn on the device
//! like a launched kernel; an event node (captured `cuEventRecord`) records its event.
//!
//! While a stream captures, kernels launched on it (and events recorded on it, and graphs
//! launched on it) become nodes and do not run. Synchronising or querying the stream is
//! refused with `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` and invalidates the capture, whose
//! end then fails with `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`. `cuStreamBeginCaptureToGraph`
//! captures into an existing graph, which its end returns.
//!
//! Memory nodes (`cuGraphAddMemAllocNode`, `cuGraphAddMemFreeNode`, a captured
//! `cuMemAllocAsync` or `cuMemFreeAsync`) take their memory from the device's graph memory
//! pool when the executable graph is uploaded or launched: see [`graph_memory`](super::graph_memory).

use std::collections::HashMap;
use std::thread::ThreadId;

use super::error::{
    CuResult, ILLEGAL_STATE, INVALID_HANDLE, INVALID_VALUE, STREAM_CAPTURE_INVALIDATED, STREAM_CAPTURE_UNSUPPORTED,
    STREAM_CAPTURE_WRONG_THREAD,
};
use super::graph_memory;
use super::launch::{self, Nanos, Queue};
use super::types::*;
use super::{Handle, Registry, context, new_handle, stream};
use crate::state::Simulator;

/// One step of a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// `busy` of `duration` ns (its parameters were read when the node was made).
    Kernel { function: Handle, duration: Nanos },
    /// `cuEventRecord` captured from a stream.
    EventRecord(Handle),
    /// A graph allocation of `size` bytes at `addr` (`cuGraphAddMemAllocNode`, a captured
    /// `cuMemAllocAsync`).
    MemAlloc { addr: u64, size: u64 },
    /// Frees `addr` (`cuGraphAddMemFreeNode`, a captured `cuMemFreeAsync`).
    MemFree(u64),
}

impl Node {
    /// `CUgraphNodeType`.
    pub fn kind(&self) -> CUgraphNodeType {
        match self {
            Node::Kernel { .. } => CU_GRAPH_NODE_TYPE_KERNEL,
            Node::EventRecord(_) => CU_GRAPH_NODE_TYPE_EVENT_RECORD,
            Node::MemAlloc { .. } => CU_GRAPH_NODE_TYPE_MEM_ALLOC,
            Node::MemFree(_) => CU_GRAPH_NODE_TYPE_MEM_FREE,
        }
    }
}

#[derive(Debug, Default)]
struct Graph {
    /// Node handle and node, in the order added.
    nodes: Vec<(Handle, Node)>,
}

/// An instantiated graph: a snapshot of its graph's nodes.
#[derive(Debug)]
struct Exec {
    ctx: Handle,
    nodes: Vec<Node>,
    /// `CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH`.
    auto_free: bool,
    /// Launches of one executable graph run one after another.
    idle_at: Nanos,
}

#[derive(Debug)]
struct Capture {
    ctx: Handle,
    graph: Graph,
    mode: u32,
    thread: ThreadId,
    invalidated: bool,
    /// `cuStreamBeginCaptureToGraph`: the graph the captured nodes are added to.
    into: Option<Handle>,
    /// The capture's id (`cuStreamGetCaptureInfo`), unique in the process.
    id: u64,
    /// The graph `cuStreamEndCapture` returns (`into`, else a handle chosen at the start),
    /// which `cuStreamGetCaptureInfo` reports while the capture runs.
    handle: Handle,
    /// The nodes the next captured node depends on: the last one captured, or what
    /// `cuStreamBeginCaptureToGraph` or `cuStreamUpdateCaptureDependencies` set. The driver
    /// hands out a pointer to this array, valid until the next call on the stream.
    dependencies: Vec<Handle>,
    /// Zeroed edge data parallel to `dependencies` (edge data is not kept).
    edges: Vec<CUgraphEdgeData>,
}

/// `cuStreamGetCaptureInfo*`: what a capturing stream reports. The pointers point into the
/// capture's state in the registry and stay valid until the next call on the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CaptureInfo {
    pub status: CUstreamCaptureStatus,
    pub id: u64,
    pub graph: Handle,
    pub dependencies: *const CUgraphNode,
    pub edges: *const CUgraphEdgeData,
    pub count: usize,
}

/// `CUstreamCaptureMode`.
pub(crate) const CAPTURE_MODE_GLOBAL: u32 = super::types::CU_STREAM_CAPTURE_MODE_GLOBAL;
const CAPTURE_MODE_RELAXED: u32 = super::types::CU_STREAM_CAPTURE_MODE_RELAXED;
/// `CUstreamCaptureStatus`.
pub(crate) const CAPTURE_STATUS_NONE: u32 = super::types::CU_STREAM_CAPTURE_STATUS_NONE;
const CAPTURE_STATUS_ACTIVE: u32 = super::types::CU_STREAM_CAPTURE_STATUS_ACTIVE;
const CAPTURE_STATUS_INVALIDATED: u32 = super::types::CU_STREAM_CAPTURE_STATUS_INVALIDATED;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH`, `…_DEVICE_LAUNCH` and
/// `…_USE_NODE_PRIORITY`, what `cuGraphInstantiateWithFlags` accepts.
const INSTANTIATE_FLAGS: u64 = 0x1 | 0x4 | 0x8;
/// `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`, which `cuGraphInstantiateWithParams` also accepts.
pub(crate) const INSTANTIATE_FLAG_UPLOAD: u64 = CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD as u64;
const AUTO_FREE_ON_LAUNCH: u64 = CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH as u64;

/// Graphs, executable graphs and captures in progress.
#[derive(Debug, Default)]
pub(crate) struct Graphs {
    graphs: HashMap<Handle, Graph>,
    execs: HashMap<Handle, Exec>,
    captures: HashMap<Queue, Capture>,
}

impl Graphs {
    /// `cuGraphCreate`.
    pub fn create(&mut self, flags: u32) -> CuResult<Handle> {
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        let graph = new_handle();
        self.graphs.insert(graph, Graph::default());
        Ok(graph)
    }

    /// `cuGraphAddKernelNode`: `dependencies` must be distinct nodes of `graph`.
    pub fn add(&mut self, graph: Handle, dependencies: &[Handle], node: Node) -> CuResult<Handle> {
        let g = self.graphs.get_mut(&graph).ok_or(INVALID_VALUE)?;
        for (i, dep) in dependencies.iter().enumerate() {
            if !g.nodes.iter().any(|(h, _)| h == dep) || dependencies[..i].contains(dep) {
                return Err(INVALID_VALUE);
            }
        }
        let handle = new_handle();
        g.nodes.push((handle, node));
        Ok(handle)
    }

    /// `cuGraphDestroy`: executable graphs made from it stay.
    pub fn destroy(&mut self, graph: Handle) -> CuResult {
        self.graphs.remove(&graph).map(drop).ok_or(INVALID_VALUE)
    }

    /// A node of any graph, by handle.
    pub fn node(&self, node: Handle) -> CuResult<Node> {
        let mut all = self.graphs.values().flat_map(|g| g.nodes.iter());
        all.find(|(h, _)| *h == node).map(|&(_, n)| n).ok_or(INVALID_VALUE)
    }

    /// `cuGraphGetNodes`: the graph's nodes, in the order added.
    pub fn nodes(&self, graph: Handle) -> CuResult<Vec<Handle>> {
        Ok(self.graphs.get(&graph).ok_or(INVALID_VALUE)?.nodes.iter().map(|&(h, _)| h).collect())
    }

    /// Forget a capture on a stream that is gone.
    pub fn drop_queue(&mut self, q: Queue) {
        self.captures.remove(&q);
    }
}

/// `cuGraphInstantiate*` in context `ctx`: a snapshot of the graph, whose kernels must still
/// be loaded.
pub(crate) fn instantiate(reg: &mut Registry, graph: Handle, ctx: Handle, flags: u64) -> CuResult<Handle> {
    if flags & !INSTANTIATE_FLAGS != 0 {
        return Err(INVALID_VALUE);
    }
    let g = reg.graphs.graphs.get(&graph).ok_or(INVALID_VALUE)?;
    let nodes: Vec<Node> = g.nodes.iter().map(|&(_, n)| n).collect();
    let loaded = |n: &Node| match *n {
        Node::Kernel { function, .. } => reg.modules.is_function(function),
        Node::EventRecord(_) | Node::MemAlloc { .. } | Node::MemFree(_) => true,
    };
    if !nodes.iter().all(loaded) {
        return Err(INVALID_VALUE);
    }
    let exec = new_handle();
    reg.graphs.execs.insert(exec, Exec { ctx, nodes, auto_free: flags & AUTO_FREE_ON_LAUNCH != 0, idle_at: 0 });
    Ok(exec)
}

/// `cuGraphInstantiateWithParams`: as [`instantiate`]; `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`
/// also uploads the graph (maps its memory).
pub(crate) fn instantiate_with_params(
    reg: &mut Registry,
    sim: &'static Simulator,
    graph: Handle,
    ctx: Handle,
    flags: u64,
) -> CuResult<Handle> {
    let exec = instantiate(reg, graph, ctx, flags & !INSTANTIATE_FLAG_UPLOAD)?;
    if flags & INSTANTIATE_FLAG_UPLOAD != 0
        && let Err(e) = map_memory(reg, sim, exec)
    {
        destroy_exec(reg, exec)?;
        return Err(e);
    }
    Ok(exec)
}

/// `cuGraphExecDestroy`: launches already queued still run; its graph memory is unmapped.
pub(crate) fn destroy_exec(reg: &mut Registry, exec: Handle) -> CuResult {
    reg.graphs.execs.remove(&exec).ok_or(INVALID_VALUE)?;
    reg.graph_memory.drop_exec(exec);
    Ok(())
}

/// Forget `ctx`'s executable graphs and captures, as destroying the context does: their live
/// allocations are freed and the device's graph memory pool trimmed.
pub(crate) fn drop_context(reg: &mut Registry, ctx: Handle) {
    let gone: Vec<(Handle, Exec)> = reg.graphs.execs.extract_if(|_, e| e.ctx == ctx).collect();
    reg.graphs.captures.retain(|_, c| c.ctx != ctx);
    for (exec, e) in &gone {
        for node in &e.nodes {
            if let Node::MemAlloc { addr, .. } = *node {
                let _ = reg.graph_memory.free(addr);
            }
        }
        reg.graph_memory.drop_exec(*exec);
    }
    if let Ok(c) = context::get(reg, ctx) {
        let device = c.device;
        trim(reg, device);
    }
}

/// Bytes an executable graph maps: its alloc nodes', in whole granules.
fn exec_bytes(reg: &Registry, nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .filter_map(|n| if let Node::MemAlloc { addr, .. } = *n { reg.graph_memory.rounded(addr) } else { None })
        .sum()
}

/// Maps `exec`'s graph memory (upload, launch).
fn map_memory(reg: &mut Registry, sim: &'static Simulator, exec: Handle) -> CuResult {
    let e = reg.graphs.execs.get(&exec).ok_or(INVALID_VALUE)?;
    let bytes = exec_bytes(reg, &e.nodes);
    let device = context::get(reg, e.ctx)?.device;
    let state = sim.cuda_state(device).ok_or(INVALID_VALUE)?;
    reg.graph_memory.map(state, device, exec, bytes)
}

/// `cuGraphUpload`: maps the graph's memory (on a capturing stream, nothing happens).
pub(crate) fn upload(reg: &mut Registry, sim: &'static Simulator, exec: Handle, q: Queue) -> CuResult {
    reg.graphs.execs.get(&exec).ok_or(INVALID_VALUE)?;
    if is_capturing(reg, q) {
        return Ok(());
    }
    map_memory(reg, sim, exec)
}

/// `cuDeviceGraphMemTrim`.
pub(crate) fn trim(reg: &mut Registry, device: u32) {
    let running: Vec<Handle> =
        reg.graphs.execs.iter().filter(|(_, e)| graph_memory::running(e.idle_at)).map(|(&h, _)| h).collect();
    reg.graph_memory.trim(device, |exec| running.contains(&exec));
}

/// If `q` is capturing, add `node` to the graph being captured instead of running it and
/// answer `true`. An invalidated capture takes nothing more.
pub(crate) fn capture(reg: &mut Registry, q: Queue, node: Node) -> CuResult<bool> {
    let Some(c) = reg.graphs.captures.get_mut(&q) else { return Ok(false) };
    if c.invalidated {
        return Err(STREAM_CAPTURE_INVALIDATED);
    }
    let handle = new_handle();
    c.graph.nodes.push((handle, node));
    c.dependencies = vec![handle];
    c.edges = vec![CUgraphEdgeData::default()];
    Ok(true)
}

pub(crate) fn is_capturing(reg: &Registry, q: Queue) -> bool {
    reg.graphs.captures.contains_key(&q)
}

/// For calls that may not touch a capturing stream (synchronise, query): if `q` captures,
/// invalidate the capture and refuse.
pub(crate) fn forbid_during_capture(reg: &mut Registry, q: Queue) -> CuResult {
    match reg.graphs.captures.get_mut(&q) {
        Some(c) => {
            c.invalidated = true;
            Err(STREAM_CAPTURE_UNSUPPORTED)
        }
        None => Ok(()),
    }
}

/// For `cuCtxSynchronize`: refused while a stream of `ctx` captures in global or thread-local
/// mode, whose captures it invalidates.
pub(crate) fn forbid_context_sync(reg: &mut Registry, ctx: Handle) -> CuResult {
    let mut refused = false;
    for c in reg.graphs.captures.values_mut().filter(|c| c.ctx == ctx && c.mode != CAPTURE_MODE_RELAXED) {
        c.invalidated = true;
        refused = true;
    }
    if refused { Err(STREAM_CAPTURE_UNSUPPORTED) } else { Ok(()) }
}

/// `cuStreamBeginCapture*`: not on the legacy stream, not twice.
pub(crate) fn begin_capture(reg: &mut Registry, q: Queue, mode: u32) -> CuResult {
    if mode > CAPTURE_MODE_RELAXED {
        return Err(INVALID_VALUE);
    }
    if matches!(q, Queue::Legacy(_)) {
        return Err(STREAM_CAPTURE_UNSUPPORTED);
    }
    if reg.graphs.captures.contains_key(&q) {
        return Err(ILLEGAL_STATE);
    }
    let ctx = stream::queue_context(reg, q);
    let thread = std::thread::current().id();
    let capture = Capture {
        ctx,
        graph: Graph::default(),
        mode,
        thread,
        invalidated: false,
        into: None,
        id: new_handle() as u64,
        handle: new_handle(),
        dependencies: Vec::new(),
        edges: Vec::new(),
    };
    reg.graphs.captures.insert(q, capture);
    Ok(())
}

/// `cuStreamBeginCaptureToGraph`: as `cuStreamBeginCapture_v2`, into `graph`; `dependencies`
/// must be nodes of it.
pub(crate) fn begin_capture_to_graph(
    reg: &mut Registry,
    q: Queue,
    graph: Handle,
    dependencies: &[Handle],
    mode: u32,
) -> CuResult {
    let g = reg.graphs.graphs.get(&graph).ok_or(INVALID_VALUE)?;
    if !dependencies.iter().all(|d| g.nodes.iter().any(|(h, _)| h == d)) {
        return Err(INVALID_VALUE);
    }
    begin_capture(reg, q, mode)?;
    if let Some(c) = reg.graphs.captures.get_mut(&q) {
        c.into = Some(graph);
        c.handle = graph;
        c.dependencies = dependencies.to_vec();
        c.edges = vec![CUgraphEdgeData::default(); dependencies.len()];
    }
    Ok(())
}

/// `cuStreamEndCapture`: the captured graph. A global or thread-local capture ends on the
/// thread that began it.
pub(crate) fn end_capture(reg: &mut Registry, q: Queue) -> CuResult<Handle> {
    let c = reg.graphs.captures.get(&q).ok_or(ILLEGAL_STATE)?;
    if c.mode != CAPTURE_MODE_RELAXED && c.thread != std::thread::current().id() {
        return Err(STREAM_CAPTURE_WRONG_THREAD);
    }
    let c = reg.graphs.captures.remove(&q).ok_or(ILLEGAL_STATE)?;
    if c.invalidated {
        return Err(STREAM_CAPTURE_INVALIDATED);
    }
    if let Some(into) = c.into {
        let g = reg.graphs.graphs.get_mut(&into).ok_or(INVALID_VALUE)?;
        g.nodes.extend(c.graph.nodes);
        return Ok(into);
    }
    reg.graphs.graphs.insert(c.handle, c.graph);
    Ok(c.handle)
}

/// `cuStreamIsCapturing`.
pub(crate) fn capture_status(reg: &Registry, q: Queue) -> super::types::CUstreamCaptureStatus {
    match reg.graphs.captures.get(&q) {
        None => CAPTURE_STATUS_NONE,
        Some(c) if c.invalidated => CAPTURE_STATUS_INVALIDATED,
        Some(_) => CAPTURE_STATUS_ACTIVE,
    }
}

/// `cuStreamGetCaptureInfo*`: the status, and while a capture is active, its id, graph and
/// dependencies (the last node captured).
pub(crate) fn capture_info(reg: &Registry, q: Queue) -> CaptureInfo {
    match reg.graphs.captures.get(&q) {
        Some(c) if !c.invalidated => CaptureInfo {
            status: CAPTURE_STATUS_ACTIVE,
            id: c.id,
            graph: c.handle,
            // A handle is a `usize`, laid out as the driver's opaque node pointer.
            dependencies: c.dependencies.as_ptr().cast(),
            edges: c.edges.as_ptr(),
            count: c.dependencies.len(),
        },
        other => CaptureInfo {
            status: if other.is_some() { CAPTURE_STATUS_INVALIDATED } else { CAPTURE_STATUS_NONE },
            id: 0,
            graph: 0,
            dependencies: std::ptr::null(),
            edges: std::ptr::null(),
            count: 0,
        },
    }
}

/// `cuStreamUpdateCaptureDependencies*`: add `nodes` to the capture's dependencies
/// (`CU_STREAM_ADD_CAPTURE_DEPENDENCIES`, 0) or replace them (`…_SET_…`). They must be nodes
/// of the graph being captured; `CUDA_ERROR_ILLEGAL_STATE` if `q` is not capturing. Nodes
/// still run in the order captured, whatever the dependencies say.
pub(crate) fn update_capture_dependencies(reg: &mut Registry, q: Queue, nodes: &[Handle], flags: u32) -> CuResult {
    if flags > CU_STREAM_SET_CAPTURE_DEPENDENCIES {
        return Err(INVALID_VALUE);
    }
    let into = match reg.graphs.captures.get(&q) {
        None => return Err(ILLEGAL_STATE),
        Some(c) if c.invalidated => return Err(STREAM_CAPTURE_INVALIDATED),
        Some(c) => c.into,
    };
    let into_nodes: Vec<Handle> = into.map(|g| reg.graphs.nodes(g)).transpose()?.unwrap_or_default();
    let c = reg.graphs.captures.get_mut(&q).ok_or(ILLEGAL_STATE)?;
    let known = |n: &Handle| c.graph.nodes.iter().any(|(h, _)| h == n) || into_nodes.contains(n);
    if !nodes.iter().all(known) {
        return Err(INVALID_VALUE);
    }
    if flags == CU_STREAM_SET_CAPTURE_DEPENDENCIES {
        c.dependencies.clear();
    }
    for &n in nodes {
        if !c.dependencies.contains(&n) {
            c.dependencies.push(n);
        }
    }
    c.edges = vec![CUgraphEdgeData::default(); c.dependencies.len()];
    Ok(())
}

/// `cuGraphLaunch`: the nodes run one after another on `q`, after `q`'s earlier work and the
/// previous launch of the same executable graph. On a capturing stream the nodes are
/// captured instead.
pub(crate) fn launch(reg: &mut Registry, sim: &'static Simulator, exec: Handle, q: Queue) -> CuResult {
    let e = reg.graphs.execs.get(&exec).ok_or(INVALID_VALUE)?;
    let (nodes, after, auto_free) = (e.nodes.clone(), e.idle_at, e.auto_free);
    if is_capturing(reg, q) {
        for node in nodes {
            capture(reg, q, node)?;
        }
        return Ok(());
    }
    let all_loaded = nodes.iter().all(|n| match *n {
        Node::Kernel { function, .. } => reg.modules.is_function(function),
        Node::EventRecord(_) | Node::MemAlloc { .. } | Node::MemFree(_) => true,
    });
    if !all_loaded {
        return Err(INVALID_HANDLE);
    }
    let allocs: Vec<u64> =
        nodes.iter().filter_map(|n| if let Node::MemAlloc { addr, .. } = *n { Some(addr) } else { None }).collect();
    if !allocs.is_empty() {
        map_memory(reg, sim, exec)?;
        reg.graph_memory.make_live(exec, &allocs, auto_free)?;
    }
    let mut t = launch::completion(reg, q).max(after);
    let mut recorded = Vec::new();
    let mut freed = Vec::new();
    let mut session = launch::device_timeline(sim, launch::device_of(reg, q)).lock();
    for node in nodes {
        match node {
            Node::Kernel { duration, .. } => t = session.occupy(t, duration).1,
            Node::EventRecord(event) => recorded.push((event, t)),
            Node::MemAlloc { .. } => {}
            Node::MemFree(addr) => freed.push(addr),
        }
    }
    drop(session);
    launch::set_idle(reg, q, t);
    if let Some(e) = reg.graphs.execs.get_mut(&exec) {
        e.idle_at = t;
    }
    for (event, at) in recorded {
        stream::set_event(reg, event, at);
    }
    for addr in freed {
        if reg.graph_memory.free(addr).is_none() {
            let _ = reg.memory.free(addr);
        }
    }
    Ok(())
}
