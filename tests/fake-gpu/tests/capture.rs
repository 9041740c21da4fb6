//! What a capturing stream reports (`cuStreamGetCaptureInfo` in its three forms), how its
//! dependencies change (`cuStreamUpdateCaptureDependencies`), `cuEventRecordWithFlags`, and
//! the thread's capture mode (`cuThreadExchangeStreamCaptureMode`): what CUDA 12.3+ runtimes
//! and PyTorch's `torch.cuda.graph` call once a capture has begun.
#![allow(clippy::unwrap_used)]

mod common;

use std::ptr::{null, null_mut};

use common::cuda::*;
use common::{Fixture, config_with, is_child};

#[track_caller]
fn check(got: CUresult, want: CUresult) {
    assert_eq!(got, want, "CUresult {got}, want {want}");
}

#[track_caller]
fn ok(got: CUresult) {
    check(got, SUCCESS);
}

/// `cuStreamGetCaptureInfo_v3` on `s`: (status, id, graph, dependencies, edge data).
fn info(cu: &Cuda, s: CUstream) -> (CUstreamCaptureStatus, u64, CUgraph, Vec<CUgraphNode>, Vec<CUgraphEdgeData>) {
    let (mut status, mut id, mut graph, mut deps, mut edges, mut n) = (99, 0, null_mut(), null(), null(), 77);
    // SAFETY: live outputs.
    ok(unsafe { (cu.cuStreamGetCaptureInfo_v3)(s, &mut status, &mut id, &mut graph, &mut deps, &mut edges, &mut n) });
    if status != CU_STREAM_CAPTURE_STATUS_ACTIVE {
        return (status, id, graph, Vec::new(), Vec::new());
    }
    // SAFETY: the driver's arrays of `n` entries, valid until the next call on the stream.
    let (deps, edges) = unsafe {
        if n == 0 {
            (Vec::new(), Vec::new())
        } else {
            (std::slice::from_raw_parts(deps, n).to_vec(), std::slice::from_raw_parts(edges, n).to_vec())
        }
    };
    (status, id, graph, deps, edges)
}

#[test]
fn capture_info_dependencies_and_modes() {
    let name = "capture_info_dependencies_and_modes";
    if !is_child(name) {
        Fixture::new(&config_with(1, "")).run(name);
        return;
    }
    let cu = Cuda::load();
    let (mut ctx, mut s, mut e) = (null_mut(), null_mut(), null_mut());
    let (mut status, mut id, mut n) = (99, 0u64, 0usize);
    let (mut graph, mut deps, mut edges) = (null_mut(), null(), null());
    // SAFETY: live locals of the types cuda.h names; handles come from the driver.
    unsafe {
        ok((cu.cuInit)(0));
        ok((cu.cuDevicePrimaryCtxRetain)(&mut ctx, 0));
        ok((cu.cuCtxSetCurrent)(ctx));
        ok((cu.cuStreamCreate)(&mut s, 0));
        ok((cu.cuEventCreate)(&mut e, 0));

        // Not capturing: the status alone; updates are refused.
        assert_eq!(info(&cu, s).0, CU_STREAM_CAPTURE_STATUS_NONE);
        check((cu.cuStreamGetCaptureInfo)(s, null_mut(), &mut id), INVALID_VALUE);
        let edges_without_deps =
            (cu.cuStreamGetCaptureInfo_v3)(s, &mut status, null_mut(), null_mut(), null_mut(), &mut edges, &mut n);
        check(edges_without_deps, INVALID_VALUE);
        check((cu.cuStreamUpdateCaptureDependencies)(s, null_mut(), 0, 0), ILLEGAL_STATE);

        // Capturing: an id, the graph the end will return, no dependencies yet.
        ok((cu.cuStreamBeginCapture_v2)(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
        let (st, id1, g1, d, _) = info(&cu, s);
        assert_eq!((st, d.len()), (CU_STREAM_CAPTURE_STATUS_ACTIVE, 0));
        assert!(id1 != 0 && !g1.is_null());
        ok((cu.cuStreamGetCaptureInfo)(s, &mut status, &mut id));
        assert_eq!((status, id), (CU_STREAM_CAPTURE_STATUS_ACTIVE, id1));

        // Each captured node becomes the next one's dependency, with default edge data.
        ok((cu.cuEventRecordWithFlags)(e, s, CU_EVENT_RECORD_DEFAULT));
        let (_, _, _, d, ed) = info(&cu, s);
        assert_eq!((d.len(), ed.len()), (1, 1));
        assert_eq!((ed[0].from_port, ed[0].to_port, ed[0].type_), (0, 0, 0));
        let n1 = d[0];
        ok((cu.cuEventRecordWithFlags)(e, s, CU_EVENT_RECORD_EXTERNAL));
        check((cu.cuEventRecordWithFlags)(e, s, 2), INVALID_VALUE);
        ok((cu.cuStreamGetCaptureInfo_v2)(s, &mut status, &mut id, &mut graph, &mut deps, &mut n));
        assert_eq!((status, id, graph, n), (CU_STREAM_CAPTURE_STATUS_ACTIVE, id1, g1, 1));
        let n2 = *deps;
        assert!(n2 != n1);

        // Replacing and adding dependencies; nodes of no capture and unknown flags are refused.
        let mut set = [n1];
        ok((cu.cuStreamUpdateCaptureDependencies)(s, set.as_mut_ptr(), 1, CU_STREAM_SET_CAPTURE_DEPENDENCIES));
        assert_eq!(info(&cu, s).3, vec![n1]);
        let mut add = [n2, n1];
        let add_data = [CUgraphEdgeData::default(); 2];
        let r = (cu.cuStreamUpdateCaptureDependencies_v2)(s, add.as_mut_ptr(), add_data.as_ptr(), 2, 0);
        ok(r);
        assert_eq!(info(&cu, s).3, vec![n1, n2]);
        let mut stranger = [0x1234 as CUgraphNode];
        check((cu.cuStreamUpdateCaptureDependencies)(s, stranger.as_mut_ptr(), 1, 0), INVALID_VALUE);
        check((cu.cuStreamUpdateCaptureDependencies)(s, set.as_mut_ptr(), 1, 2), INVALID_VALUE);
        assert_eq!(info(&cu, s).3, vec![n1, n2], "a refused update changes nothing");

        // The end returns the graph reported, with the captured nodes.
        ok((cu.cuStreamEndCapture)(s, &mut graph));
        assert_eq!(graph, g1);
        let mut nodes = [null_mut(); 4];
        n = 4;
        ok((cu.cuGraphGetNodes)(graph, nodes.as_mut_ptr(), &mut n));
        assert_eq!(&nodes[..n], &[n1, n2]);
        assert_eq!(info(&cu, s).0, CU_STREAM_CAPTURE_STATUS_NONE);

        // Another capture, another id; the per-thread default stream has its own.
        ok((cu.cuStreamBeginCapture_v2)(s, CU_STREAM_CAPTURE_MODE_RELAXED));
        assert!(info(&cu, s).1 != id1);
        ok((cu.cuStreamEndCapture)(s, &mut graph));
        ok((cu.cuStreamGetCaptureInfo_v3_ptsz)(
            null_mut(),
            &mut status,
            &mut id,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
        ));
        assert_eq!(status, CU_STREAM_CAPTURE_STATUS_NONE);

        // The thread's capture mode: exchanged, global at first and on other threads.
        let mut mode = CU_STREAM_CAPTURE_MODE_RELAXED;
        ok((cu.cuThreadExchangeStreamCaptureMode)(&mut mode));
        assert_eq!(mode, CU_STREAM_CAPTURE_MODE_GLOBAL);
        let exchange = cu.cuThreadExchangeStreamCaptureMode;
        let other = std::thread::spawn(move || {
            let mut m = CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
            (exchange(&mut m), m)
        });
        assert_eq!(other.join().unwrap(), (SUCCESS, CU_STREAM_CAPTURE_MODE_GLOBAL));
        mode = 3;
        check((cu.cuThreadExchangeStreamCaptureMode)(&mut mode), INVALID_VALUE);
        check((cu.cuThreadExchangeStreamCaptureMode)(null_mut()), INVALID_VALUE);
        mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
        ok((cu.cuThreadExchangeStreamCaptureMode)(&mut mode));
        assert_eq!(mode, CU_STREAM_CAPTURE_MODE_RELAXED);
    }
}

/// PyTorch's `cudaMallocAsync` backend fills a tensor allocated in the capture and reads a
/// result back from one: a memset or copy into graph memory is accepted (and writes nothing:
/// graph memory has no contents), a copy out of it reads zeros, in the capture and after a
/// launch; past the allocation they are refused.
#[test]
fn memsets_and_copies_of_graph_memory_are_accepted() {
    let name = "memsets_and_copies_of_graph_memory_are_accepted";
    if !is_child(name) {
        Fixture::new(&config_with(1, "")).run(name);
        return;
    }
    let cu = Cuda::load();
    let (mut ctx, mut s, mut graph, mut exec) = (null_mut(), null_mut(), null_mut(), null_mut());
    let mut p: CUdeviceptr = 0;
    // SAFETY: live locals of the types cuda.h names; handles come from the driver.
    unsafe {
        ok((cu.cuInit)(0));
        ok((cu.cuDevicePrimaryCtxRetain)(&mut ctx, 0));
        ok((cu.cuCtxSetCurrent)(ctx));
        ok((cu.cuStreamCreate)(&mut s, 0));
        ok((cu.cuStreamBeginCapture_v2)(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
        ok((cu.cuMemAllocAsync)(&mut p, MIB as usize, s));
        ok((cu.cuMemsetD8Async)(p, 3, MIB as usize, s));
        ok((cu.cuMemsetD32Async)(p + 4, 7, 1000, s));
        check((cu.cuMemsetD8Async)(p, 3, 4 * MIB as usize, s), INVALID_VALUE);
        ok((cu.cuStreamEndCapture)(s, &mut graph));
        ok((cu.cuGraphInstantiateWithFlags)(&mut exec, graph, 0));
        ok((cu.cuGraphLaunch)(exec, s));
        ok((cu.cuStreamSynchronize)(s));
        ok((cu.cuMemsetD8Async)(p, 5, MIB as usize, s));
        let mut host = [9u8; 64];
        ok((cu.cuMemcpyHtoD_v2)(p, host.as_ptr().cast(), 64));
        ok((cu.cuMemcpyDtoH_v2)(host.as_mut_ptr().cast(), p + 64, 64));
        assert_eq!(host, [0u8; 64], "graph memory reads zeros");
        check((cu.cuMemcpyDtoH_v2)(host.as_mut_ptr().cast(), p + 2 * MIB - 32, 64), INVALID_VALUE);
        ok((cu.cuMemFreeAsync)(p, s));
        ok((cu.cuStreamSynchronize)(s));
        ok((cu.cuGraphExecDestroy)(exec));
        ok((cu.cuGraphDestroy)(graph));
    }
}
