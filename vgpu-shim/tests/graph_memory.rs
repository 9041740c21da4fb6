//! Graph memory and stream-ordered frees: what a graph's alloc nodes take is charged when the
//! graph is uploaded or launched (refused past the limit, the driver never called) and given
//! back by `cuDeviceGraphMemTrim`; memory freed to a pool comes back to the slice at the next
//! synchronisation (stream, event, context), where the driver trims the pool. The process
//! under test is this test binary run again in the slice (`common::client`).

mod common;

use std::ffi::{CString, c_void};

use common::client::*;
use common::*;
use gpuslice_cuda_abi::cuda::sym;

const LIMIT: u64 = 4 * GIB;
/// What the shim charges for a context.
const CONTEXT: u64 = 256 * MIB;

/// The graph calls, found as a program finds them (through the shim).
#[allow(non_snake_case)]
struct Graphs {
    cuGraphCreate: sym::cuGraphCreate,
    cuGraphAddMemAllocNode: sym::cuGraphAddMemAllocNode,
    cuGraphAddMemFreeNode: sym::cuGraphAddMemFreeNode,
    cuGraphInstantiateWithFlags: sym::cuGraphInstantiateWithFlags,
    cuGraphUpload: sym::cuGraphUpload,
    cuGraphLaunch: sym::cuGraphLaunch,
    cuGraphExecDestroy: sym::cuGraphExecDestroy,
    cuDeviceGraphMemTrim: sym::cuDeviceGraphMemTrim,
    cuEventCreate: sym::cuEventCreate,
    cuEventRecord: sym::cuEventRecord,
    cuEventSynchronize: sym::cuEventSynchronize,
    cuCtxSynchronize: sym::cuCtxSynchronize,
}

macro_rules! load {
    ($handle:expr, $($name:ident),*) => {
        Graphs {$($name: {
            let name = CString::new(stringify!($name)).unwrap();
            // SAFETY: a handle from dlopen and a NUL-terminated name.
            let f = unsafe { libc::dlsym($handle, name.as_ptr()) };
            assert!(!f.is_null(), "{} is not exported", stringify!($name));
            // SAFETY: the function of that name, whose signature is cuda.h's.
            unsafe { std::mem::transmute::<*mut c_void, sym::$name>(f) }
        },)*}
    };
}

impl Graphs {
    fn load() -> Self {
        // SAFETY: the driver `Cuda::start` loaded already.
        let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null());
        load!(
            handle,
            cuGraphCreate,
            cuGraphAddMemAllocNode,
            cuGraphAddMemFreeNode,
            cuGraphInstantiateWithFlags,
            cuGraphUpload,
            cuGraphLaunch,
            cuGraphExecDestroy,
            cuDeviceGraphMemTrim,
            cuEventCreate,
            cuEventRecord,
            cuEventSynchronize,
            cuCtxSynchronize
        )
    }

    /// An executable graph that allocates `size` bytes on device 0 and frees them.
    fn alloc_and_free(&self, size: u64) -> CUgraphExec {
        let (mut graph, mut alloc, mut free, mut exec) =
            (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        let mut params = CUDA_MEM_ALLOC_NODE_PARAMS {
            poolProps: CUmemPoolProps {
                allocType: CU_MEM_ALLOCATION_TYPE_PINNED,
                location: device0(),
                ..Default::default()
            },
            bytesize: size as usize,
            ..Default::default()
        };
        // SAFETY: live outputs and parameters; the nodes belong to the graph made here.
        unsafe {
            check_ok((self.cuGraphCreate)(&mut graph, 0));
            check_ok((self.cuGraphAddMemAllocNode)(&mut alloc, graph, std::ptr::null(), 0, &mut params));
            check_ok((self.cuGraphAddMemFreeNode)(&mut free, graph, &alloc, 1, params.dptr));
            check_ok((self.cuGraphInstantiateWithFlags)(&mut exec, graph, 0));
        }
        exec
    }
}

fn node_with_slice() -> Node {
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    node
}

fn client(name: &str) -> std::process::Output {
    let node = node_with_slice();
    run_client(node.client(name), name)
}

#[test]
fn graph_memory_is_charged_when_mapped_refused_past_the_limit_and_given_back_by_a_trim() {
    let name = "graph_memory_is_charged_when_mapped_refused_past_the_limit_and_given_back_by_a_trim";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let g = Graphs::load();
        let stream = std::ptr::null_mut();
        let big = g.alloc_and_free(3 * GIB);
        report("used_instantiated", cu.used());
        // SAFETY: executable graphs made above, on the legacy stream.
        unsafe {
            report("upload", (g.cuGraphUpload)(big, stream));
            report("used_uploaded", cu.used());
            report("launch", (g.cuGraphLaunch)(big, stream));
            report("relaunch", (g.cuGraphLaunch)(big, stream));
            check_ok((cu.cuStreamSynchronize)(stream));
            report("used_launched", cu.used());
            let more = g.alloc_and_free(GIB);
            report("other_upload", (g.cuGraphUpload)(more, stream));
            report("other_launch", (g.cuGraphLaunch)(more, stream));
            report("used_refused", cu.used());
            check_ok((g.cuGraphExecDestroy)(big));
            check_ok((g.cuDeviceGraphMemTrim)(0));
            report("used_trimmed", cu.used());
            report("other_launch_after_trim", (g.cuGraphLaunch)(more, stream));
            check_ok((cu.cuStreamSynchronize)(stream));
            report("used_other", cu.used());
            check_ok((g.cuGraphExecDestroy)(more));
            check_ok((g.cuDeviceGraphMemTrim)(0));
            report("used_end", cu.used());
        }
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    let v = |key: &str| value(&out, key);
    assert_eq!(v("used_instantiated"), CONTEXT, "an instantiate maps nothing");
    assert_eq!(v("upload"), u64::from(SUCCESS));
    assert_eq!(v("used_uploaded"), CONTEXT + 3 * GIB);
    assert_eq!((v("launch"), v("relaunch")), (u64::from(SUCCESS), u64::from(SUCCESS)));
    assert_eq!(v("used_launched"), CONTEXT + 3 * GIB, "a graph mapped already is not charged twice");
    assert_eq!(v("other_upload"), u64::from(OUT_OF_MEMORY));
    assert_eq!(v("other_launch"), u64::from(OUT_OF_MEMORY));
    assert_eq!(v("used_refused"), CONTEXT + 3 * GIB);
    assert_eq!(v("used_trimmed"), CONTEXT, "the trim's memory is still charged");
    assert_eq!(v("other_launch_after_trim"), u64::from(SUCCESS));
    assert_eq!(v("used_other"), CONTEXT + GIB);
    assert_eq!(v("used_end"), CONTEXT);
}

#[test]
fn memory_freed_to_a_pool_comes_back_at_the_next_synchronisation() {
    let name = "memory_freed_to_a_pool_comes_back_at_the_next_synchronisation";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let g = Graphs::load();
        let stream = std::ptr::null_mut();
        for sync in ["stream", "event", "context"] {
            let mut p = 0u64;
            // SAFETY: live outputs; the pointer the driver just handed out.
            unsafe {
                check_ok((cu.cuMemAllocAsync)(&mut p, (3 * GIB) as usize, stream));
                check_ok((cu.cuMemFreeAsync)(p, stream));
            }
            report(&format!("{sync}_used_freed"), cu.used());
            // SAFETY: the legacy stream; an event made here.
            unsafe {
                match sync {
                    "stream" => check_ok((cu.cuStreamSynchronize)(stream)),
                    "event" => {
                        let mut e = std::ptr::null_mut();
                        check_ok((g.cuEventCreate)(&mut e, 0));
                        check_ok((g.cuEventRecord)(e, stream));
                        check_ok((g.cuEventSynchronize)(e));
                    }
                    _ => check_ok((g.cuCtxSynchronize)()),
                }
            }
            report(&format!("{sync}_used_synced"), cu.used());
            report(&format!("{sync}_refill"), u8::from(cu.alloc(3 * GIB).map(|p| cu.free(p)).is_ok()));
        }
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    for sync in ["stream", "event", "context"] {
        let v = |key: &str| value(&out, &format!("{sync}_{key}"));
        assert_eq!(v("used_freed"), CONTEXT + 3 * GIB, "{sync}: the pool keeps what was freed until a synchronisation");
        assert_eq!(v("used_synced"), CONTEXT, "{sync}: the pool's trim at the synchronisation is still charged");
        assert_eq!(v("refill"), 1, "{sync}: a false CUDA_ERROR_OUT_OF_MEMORY after the synchronisation");
    }
}
