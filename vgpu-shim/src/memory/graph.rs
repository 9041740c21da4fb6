//! Graph memory: what memory nodes take (`cuGraphAddMemAllocNode`, `cuGraphAddMemFreeNode`, a
//! `cuMemAllocAsync`/`cuMemFreeAsync` captured from a stream). The driver gives an alloc node
//! its address when the node is made, and takes the memory from the device's graph memory pool
//! (one per device and process) when the executable graph is uploaded or launched; the pool
//! keeps it reserved until `cuDeviceGraphMemTrim` (or the context's end) gives it back. The
//! slice is charged what that pool reserves (`CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`).
//!
//! 1. At instantiate (every `cuGraphInstantiate*`), the graph's nodes are walked (child graphs
//!    too): the executable graph needs the sum of its alloc nodes' sizes, in whole granules,
//!    per device. Done once per executable graph, never at launch.
//! 2. Before an upload or a launch (or an instantiate with `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`)
//!    of an executable graph that needs memory, the slice is charged in advance what the pool
//!    may have to grow by: the graph's need less what the pool holds that no graph of ours has
//!    mapped (nothing for a graph mapped already). Past the limit the call is refused with
//!    `CUDA_ERROR_OUT_OF_MEMORY` and the driver is not called.
//! 3. After the call (and after a trim, an executable graph's destruction, a high watermark
//!    reset, a context's end) the pool's charge is brought to what the driver says it
//!    reserves; the advance is part of that settlement.
//!
//! A launch on a capturing stream captures the graph and maps nothing: it passes untouched, as
//! does an allocation captured from a stream (the graph it lands in is charged when it runs).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{LazyLock, Mutex, MutexGuard};

use super::{charge, granularity, round_up, target};
use crate::driver::cuda;
use crate::ffi::*;
use crate::state::{State, state};

/// Child graphs deeper than this are not walked (a hostile graph cannot make us recurse
/// without end).
const MAX_DEPTH: u32 = 16;

#[derive(Debug, Default)]
struct Book {
    /// Executable graphs that need graph memory: exec → (device, bytes).
    execs: HashMap<usize, Vec<(CUdevice, u64)>>,
    /// The graph memory pool of each device we charged.
    pools: HashMap<CUdevice, Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    slice: usize,
    /// Charged to `slice` for the pool's reserve, as last settled.
    charged: u64,
    /// Executable graphs mapped in it (uploaded or launched, not trimmed since), with their
    /// need.
    mapped: HashMap<usize, u64>,
}

fn book() -> MutexGuard<'static, Book> {
    static BOOK: LazyLock<Mutex<Book>> = LazyLock::new(Mutex::default);
    BOOK.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the device's graph memory pool reserves now, if the driver says.
fn reserved(dev: CUdevice) -> Option<u64> {
    let f = cuda().cuDeviceGetGraphMemAttribute?;
    let mut v: u64 = 0;
    // SAFETY: real driver call; RESERVED_MEM_CURRENT writes a cuuint64_t.
    let rc = unsafe { f(dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, (&raw mut v).cast::<c_void>()) };
    (rc == CUDA_SUCCESS).then_some(v)
}

/// Brings `dev`'s pool charge to what it reserves, counting `advance` charged for it besides.
fn settle(s: &State, dev: CUdevice, advance: u64) {
    let now = reserved(dev);
    let mut b = book();
    let Some(pool) = b.pools.get_mut(&dev) else {
        drop(b);
        return;
    };
    let slice = pool.slice;
    let had = pool.charged + advance;
    let now = now.unwrap_or(had);
    pool.charged = now;
    drop(b);
    if now > had {
        s.slices[slice].force_charge(now - had);
    } else {
        s.slices[slice].uncharge(had - now);
    }
}

/// Settles every pool we charged; with `unmap`, their graphs count as unmapped (the driver
/// trimmed, or a context went).
fn settle_all(s: &State, unmap: bool) {
    let devs: Vec<CUdevice> = {
        let mut b = book();
        if unmap {
            b.pools.values_mut().for_each(|p| p.mapped.clear());
        }
        b.pools.keys().copied().collect()
    };
    for dev in devs {
        settle(s, dev, 0);
    }
}

/// A context went away (destroyed, reset): the driver may have given back its graphs' memory.
pub(super) fn context_gone(s: &State) {
    settle_all(s, true);
}

/// The graph memory `graph` needs per device: its alloc nodes' sizes in whole granules, child
/// graphs included.
fn need(s: &State, graph: CUgraph, depth: u32, out: &mut Vec<(CUdevice, u64)>) {
    let api = cuda();
    let (Some(get_nodes), Some(get_type)) = (api.cuGraphGetNodes, api.cuGraphNodeGetType) else { return };
    if depth > MAX_DEPTH {
        return;
    }
    let mut n = 0usize;
    // SAFETY: real driver call; null nodes asks for the count.
    if unsafe { get_nodes(graph, std::ptr::null_mut(), &mut n) } != CUDA_SUCCESS || n == 0 {
        return;
    }
    let mut nodes: Vec<CUgraphNode> = vec![std::ptr::null_mut(); n];
    // SAFETY: room for `n` nodes; the driver writes at most that many and the count.
    if unsafe { get_nodes(graph, nodes.as_mut_ptr(), &mut n) } != CUDA_SUCCESS {
        return;
    }
    nodes.truncate(n);
    for node in nodes {
        let mut kind: CUgraphNodeType = 0;
        // SAFETY: real driver call with a valid out pointer.
        if unsafe { get_type(node, &mut kind) } != CUDA_SUCCESS {
            continue;
        }
        match kind {
            CU_GRAPH_NODE_TYPE_MEM_ALLOC => {
                let Some(get) = api.cuGraphMemAllocNodeGetParams else { continue };
                // SAFETY: plain data, for which all zeroes are valid.
                let mut p: CUDA_MEM_ALLOC_NODE_PARAMS = unsafe { std::mem::zeroed() };
                // SAFETY: real driver call with a valid out pointer.
                if unsafe { get(node, &mut p) } != CUDA_SUCCESS {
                    continue;
                }
                let dev = location_id(&p.poolProps.location);
                let bytes = round_up(p.bytesize as u64, granularity(s, dev));
                match out.iter_mut().find(|(d, _)| *d == dev) {
                    Some((_, b)) => *b = b.saturating_add(bytes),
                    None => out.push((dev, bytes)),
                }
            }
            CU_GRAPH_NODE_TYPE_GRAPH => {
                let Some(child) = api.cuGraphChildGraphNodeGetGraph else { continue };
                let mut g: CUgraph = std::ptr::null_mut();
                // SAFETY: real driver call with a valid out pointer.
                if unsafe { child(node, &mut g) } == CUDA_SUCCESS {
                    need(s, g, depth + 1, out);
                }
            }
            _ => {}
        }
    }
}

/// What `graph` needs, for the devices in a slice.
fn graph_need(s: &State, graph: CUgraph) -> Vec<(CUdevice, u64)> {
    let mut out = Vec::new();
    need(s, graph, 0, &mut out);
    out.retain(|&(dev, bytes)| bytes > 0 && matches!(target(s, dev), Ok(Some(_))));
    out
}

/// Charges in advance what mapping `need` for `exec` may grow the pools by; the advances
/// charged (device, slice, bytes), or the refusal.
fn advance(s: &State, exec: usize, need: &[(CUdevice, u64)]) -> Result<Vec<(CUdevice, usize, u64)>, CUresult> {
    let mut taken: Vec<(CUdevice, usize, u64)> = Vec::new();
    for &(dev, bytes) in need {
        let slice = match target(s, dev) {
            Ok(Some(slice)) => slice,
            Ok(None) => continue,
            Err(r) => {
                undo(s, &taken);
                return Err(r.into());
            }
        };
        let grow = {
            let mut b = book();
            let pool = b.pools.entry(dev).or_insert_with(|| Pool { slice, ..Pool::default() });
            if pool.mapped.contains_key(&exec) {
                0
            } else {
                let mapped: u64 = pool.mapped.values().sum();
                bytes.saturating_sub(pool.charged.saturating_sub(mapped))
            }
        };
        if let Err(r) = charge(s, slice, grow) {
            crate::log::log!(
                Info,
                "graph memory: refusing {grow} more bytes of graph memory on device {dev}: over the slice's limit"
            );
            undo(s, &taken);
            return Err(r.into());
        }
        taken.push((dev, slice, grow));
    }
    Ok(taken)
}

fn undo(s: &State, taken: &[(CUdevice, usize, u64)]) {
    for &(_, slice, bytes) in taken {
        s.slices[slice].uncharge(bytes);
    }
}

/// Maps `exec`'s graph memory through `call` (an upload, a launch): charged in advance, then
/// settled.
fn mapping(exec: usize, call: impl FnOnce() -> CUresult) -> CUresult {
    if !crate::state::active() {
        return call();
    }
    let Some(need) = book().execs.get(&exec).cloned() else { return call() };
    let s = state();
    let taken = match advance(s, exec, &need) {
        Ok(t) => t,
        Err(rc) => return rc,
    };
    let rc = call();
    if rc != CUDA_SUCCESS {
        undo(s, &taken);
        return rc;
    }
    {
        let mut b = book();
        for &(dev, bytes) in &need {
            if let Some(pool) = b.pools.get_mut(&dev) {
                pool.mapped.insert(exec, bytes);
            }
        }
    }
    for (dev, _, bytes) in taken {
        settle(s, dev, bytes);
    }
    rc
}

/// Whether `stream` is capturing (a launch there maps nothing).
fn capturing(stream: CUstream, per_thread: bool) -> bool {
    let stream = if per_thread && stream.is_null() { CU_STREAM_PER_THREAD } else { stream };
    let mut status: CUstreamCaptureStatus = CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: out pointer to a local.
    let r = unsafe { cuda().cuStreamIsCapturing.map(|f| f(stream, &mut status)) };
    r == Some(CUDA_SUCCESS) && status != CU_STREAM_CAPTURE_STATUS_NONE
}

/// Whether an allocation on `stream` is captured into a graph rather than made now.
pub(super) fn captured(stream: CUstream, per_thread: bool) -> bool {
    capturing(stream, per_thread)
}

/// Records what the executable graph the driver wrote at `exec_out` needs.
///
/// # Safety
/// `exec_out` is null or points at a `CUgraphExec` the driver wrote on success.
unsafe fn instantiated(exec_out: *mut CUgraphExec, need: Vec<(CUdevice, u64)>) {
    if exec_out.is_null() {
        return;
    }
    // SAFETY: per the caller.
    let exec = unsafe { *exec_out } as usize;
    let mut b = book();
    if need.is_empty() {
        b.execs.remove(&exec);
    } else {
        b.execs.insert(exec, need);
    }
}

/// An instantiate (`call`) of `graph`: what it needs is read first; with `upload`, the memory
/// is charged as for an upload.
///
/// # Safety
/// As the instantiate's contract: `exec_out` is null or writable.
unsafe fn instantiate(
    exec_out: *mut CUgraphExec,
    graph: CUgraph,
    upload: bool,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if !crate::state::active() || exec_out.is_null() {
        return call();
    }
    let s = state();
    let need = graph_need(s, graph);
    if need.is_empty() || !upload {
        let rc = call();
        if rc == CUDA_SUCCESS {
            // SAFETY: the driver wrote the handle on success.
            unsafe { instantiated(exec_out, need) };
        }
        return rc;
    }
    // The handle is not known before the call: charge under a placeholder that no graph has.
    let taken = match advance(s, 0, &need) {
        Ok(t) => t,
        Err(rc) => return rc,
    };
    let rc = call();
    if rc != CUDA_SUCCESS {
        undo(s, &taken);
        return rc;
    }
    // SAFETY: the driver wrote the handle on success.
    let exec = unsafe { *exec_out } as usize;
    {
        let mut b = book();
        for &(dev, bytes) in &need {
            if let Some(pool) = b.pools.get_mut(&dev) {
                pool.mapped.insert(exec, bytes);
            }
        }
        b.execs.insert(exec, need);
    }
    for (dev, _, bytes) in taken {
        settle(s, dev, bytes);
    }
    rc
}

/// # Safety
/// `cuGraphInstantiate`'s (pre-12.0) contract.
pub unsafe fn graph_instantiate(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    error_node: *mut CUgraphNode,
    log: *mut std::ffi::c_char,
    size: usize,
) -> CUresult {
    let f = real!(cuGraphInstantiate);
    // SAFETY: forwarded unchanged.
    unsafe { instantiate(exec, graph, false, || f(exec, graph, error_node, log, size)) }
}

/// # Safety
/// `cuGraphInstantiate_v2`'s contract.
pub unsafe fn graph_instantiate_v2(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    error_node: *mut CUgraphNode,
    log: *mut std::ffi::c_char,
    size: usize,
) -> CUresult {
    let f = real!(cuGraphInstantiate_v2);
    // SAFETY: forwarded unchanged.
    unsafe { instantiate(exec, graph, false, || f(exec, graph, error_node, log, size)) }
}

/// # Safety
/// `cuGraphInstantiateWithFlags`'s contract.
pub unsafe fn graph_instantiate_with_flags(exec: *mut CUgraphExec, graph: CUgraph, flags: u64) -> CUresult {
    let f = real!(cuGraphInstantiateWithFlags);
    // SAFETY: forwarded unchanged.
    unsafe { instantiate(exec, graph, false, || f(exec, graph, flags)) }
}

/// Whether instantiate parameters ask for an upload.
///
/// # Safety
/// `params` is null or readable.
unsafe fn uploads(params: *const CUDA_GRAPH_INSTANTIATE_PARAMS) -> bool {
    // SAFETY: per the caller.
    !params.is_null() && unsafe { (*params).flags } & CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD as u64 != 0
}

/// # Safety
/// `cuGraphInstantiateWithParams`'s contract.
pub unsafe fn graph_instantiate_with_params(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
) -> CUresult {
    let f = real!(cuGraphInstantiateWithParams);
    // SAFETY: null or valid per the contract; forwarded unchanged.
    unsafe { instantiate(exec, graph, uploads(params), || f(exec, graph, params)) }
}

/// # Safety
/// `cuGraphInstantiateWithParams_ptsz`'s contract.
pub unsafe fn graph_instantiate_with_params_ptsz(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
) -> CUresult {
    let f = real!(cuGraphInstantiateWithParams_ptsz);
    // SAFETY: null or valid per the contract; forwarded unchanged.
    unsafe { instantiate(exec, graph, uploads(params), || f(exec, graph, params)) }
}

/// # Safety
/// `cuGraphUpload`'s contract.
pub unsafe fn graph_upload(exec: CUgraphExec, stream: CUstream) -> CUresult {
    let f = real!(cuGraphUpload);
    // SAFETY: forwarded unchanged.
    let call = || unsafe { f(exec, stream) };
    if capturing(stream, false) { call() } else { mapping(exec as usize, call) }
}

/// # Safety
/// `cuGraphUpload_ptsz`'s contract.
pub unsafe fn graph_upload_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    let f = real!(cuGraphUpload_ptsz);
    // SAFETY: forwarded unchanged.
    let call = || unsafe { f(exec, stream) };
    if capturing(stream, true) { call() } else { mapping(exec as usize, call) }
}

/// Whether `exec` needs graph memory (a launch of any other passes straight to the pacing).
fn needs_memory(exec: CUgraphExec) -> bool {
    crate::state::active() && book().execs.contains_key(&(exec as usize))
}

/// # Safety
/// `cuGraphLaunch`'s contract.
pub unsafe fn graph_launch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    // SAFETY: forwarded unchanged.
    let call = || unsafe { crate::launch::graph_launch(exec, stream) };
    if !needs_memory(exec) || capturing(stream, false) { call() } else { mapping(exec as usize, call) }
}

/// # Safety
/// `cuGraphLaunch_ptsz`'s contract.
pub unsafe fn graph_launch_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    // SAFETY: forwarded unchanged.
    let call = || unsafe { crate::launch::graph_launch_ptsz(exec, stream) };
    if !needs_memory(exec) || capturing(stream, true) { call() } else { mapping(exec as usize, call) }
}

/// # Safety
/// `cuGraphExecDestroy`'s contract.
pub unsafe fn graph_exec_destroy(exec: CUgraphExec) -> CUresult {
    let f = real!(cuGraphExecDestroy);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(exec) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        let devs: Vec<CUdevice> = {
            let mut b = book();
            let need = b.execs.remove(&(exec as usize));
            b.pools.values_mut().for_each(|p| {
                p.mapped.remove(&(exec as usize));
            });
            need.into_iter().flatten().map(|(d, _)| d).collect()
        };
        let s = state();
        for dev in devs {
            settle(s, dev, 0);
        }
    }
    rc
}

/// # Safety
/// `cuDeviceGraphMemTrim`'s contract.
pub unsafe fn device_graph_mem_trim(dev: CUdevice) -> CUresult {
    let f = real!(cuDeviceGraphMemTrim);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(dev) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        if let Some(pool) = book().pools.get_mut(&dev) {
            pool.mapped.clear();
        }
        settle(state(), dev, 0);
    }
    rc
}

/// # Safety
/// `cuDeviceSetGraphMemAttribute`'s contract.
pub unsafe fn device_set_graph_mem_attribute(
    dev: CUdevice,
    attr: CUgraphMem_attribute,
    value: *mut c_void,
) -> CUresult {
    let f = real!(cuDeviceSetGraphMemAttribute);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(dev, attr, value) };
    if rc == CUDA_SUCCESS && crate::state::active() {
        settle(state(), dev, 0);
    }
    rc
}
