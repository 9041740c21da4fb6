//! What the driver reserves outside allocations is charged to the slice: a context's limits
//! (`cuCtxSetLimit`: malloc heap, stack size × resident threads, printf FIFO), modules
//! (`cuModuleLoadData`, with a `__device__` array) and libraries (`cuLibraryLoadData`). Past
//! the slice's limit the call is refused with `CUDA_ERROR_OUT_OF_MEMORY` and the driver never
//! reserves; within it, the slice's use grows by the model's bytes
//! (`gpuslice_core::reservations`), and it all comes back on lowering, unloading and
//! `cuDevicePrimaryCtxReset`. The process under test is this test binary run again in the
//! slice (`common::client`).

mod common;

use std::ffi::{CString, c_void};

use common::client::*;
use common::images::*;
use common::*;
use gpuslice_cuda_abi::cuda::sym;

const LIMIT: u64 = 4 * GIB;
/// What the shim charges for a context.
const CONTEXT: u64 = 256 * MIB;
/// The simulated H100: 132 SMs × 2048 threads.
const THREADS: u64 = 132 * 2048;

/// The driver functions these tests call beyond `common::client`'s, through the shim.
#[allow(non_snake_case)]
struct Extra {
    cuCtxSetLimit: sym::cuCtxSetLimit,
    cuCtxGetLimit: sym::cuCtxGetLimit,
    cuModuleLoadData: sym::cuModuleLoadData,
    cuModuleUnload: sym::cuModuleUnload,
    cuLibraryLoadData: sym::cuLibraryLoadData,
    cuLibraryUnload: sym::cuLibraryUnload,
}

impl Extra {
    fn load() -> Extra {
        // SAFETY: each symbol is the driver function of that name, with cuda.h's signature.
        unsafe {
            Extra {
                cuCtxSetLimit: std::mem::transmute::<*mut c_void, sym::cuCtxSetLimit>(symbol("cuCtxSetLimit")),
                cuCtxGetLimit: std::mem::transmute::<*mut c_void, sym::cuCtxGetLimit>(symbol("cuCtxGetLimit")),
                cuModuleLoadData: std::mem::transmute::<*mut c_void, sym::cuModuleLoadData>(symbol("cuModuleLoadData")),
                cuModuleUnload: std::mem::transmute::<*mut c_void, sym::cuModuleUnload>(symbol("cuModuleUnload")),
                cuLibraryLoadData: std::mem::transmute::<*mut c_void, sym::cuLibraryLoadData>(symbol(
                    "cuLibraryLoadData",
                )),
                cuLibraryUnload: std::mem::transmute::<*mut c_void, sym::cuLibraryUnload>(symbol("cuLibraryUnload")),
            }
        }
    }

    fn set(&self, limit: CUlimit, value: u64) -> CUresult {
        // SAFETY: plain values.
        unsafe { (self.cuCtxSetLimit)(limit, value as usize) }
    }

    fn get(&self, limit: CUlimit) -> u64 {
        let mut v = 0usize;
        // SAFETY: a live output.
        check_ok(unsafe { (self.cuCtxGetLimit)(&mut v, limit) });
        v as u64
    }

    /// `cuModuleLoadData` of PTX text.
    fn module(&self, ptx: &CString) -> Result<CUmodule, CUresult> {
        let mut m = std::ptr::null_mut();
        // SAFETY: a live output and NUL-terminated PTX.
        match unsafe { (self.cuModuleLoadData)(&mut m, ptx.as_ptr().cast()) } {
            SUCCESS => Ok(m),
            rc => Err(rc),
        }
    }

    /// `cuLibraryLoadData` of PTX text, no options.
    fn library(&self, ptx: &CString) -> Result<CUlibrary, CUresult> {
        let mut l = std::ptr::null_mut();
        let (null_opts, null_vals) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: a live output, NUL-terminated PTX, no options.
        let rc = unsafe {
            (self.cuLibraryLoadData)(
                &mut l,
                ptx.as_ptr().cast(),
                null_opts,
                null_vals,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc == SUCCESS { Ok(l) } else { Err(rc) }
    }
}

/// PTX with one kernel and a `__device__` array of `bytes`.
fn ptx_with_global(bytes: u64) -> CString {
    CString::new(format!(
        ".version 8.0\n.target sm_90\n.address_size 64\n.global .align 8 .b8 table[{bytes}];\n.visible .entry k()\n{{\n\tret;\n}}\n"
    ))
    .unwrap()
}

fn node_with_slice() -> Node {
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    node
}

fn used() -> u64 {
    slice_usage("slice0")
}

#[test]
fn context_limits_are_charged_and_refused_past_the_slice() {
    let name = "context_limits_are_charged_and_refused_past_the_slice";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let x = Extra::load();
        report("start", used());
        // The heap: 8 GiB cannot fit in 4 GiB; the value stays the default.
        report("heap_8g", x.set(CU_LIMIT_MALLOC_HEAP_SIZE, 8 * GIB));
        report("heap_after_refusal", x.get(CU_LIMIT_MALLOC_HEAP_SIZE));
        report("used_after_refusal", used());
        check_ok(x.set(CU_LIMIT_MALLOC_HEAP_SIZE, GIB));
        report("used_heap_1g", used());
        check_ok(x.set(CU_LIMIT_MALLOC_HEAP_SIZE, 256 * MIB));
        report("used_heap_256m", used());
        // The stack: 64 KiB per thread is 16.5 GiB on this device; 4 KiB is 1056 MiB.
        report("stack_64k", x.set(CU_LIMIT_STACK_SIZE, 64 << 10));
        check_ok(x.set(CU_LIMIT_STACK_SIZE, 4 << 10));
        report("used_stack_4k", used());
        report("fifo_4g", x.set(CU_LIMIT_PRINTF_FIFO_SIZE, 4 * GIB));
        check_ok(x.set(CU_LIMIT_PRINTF_FIFO_SIZE, 64 * MIB));
        report("used_fifo_64m", used());
        // What the limits hold is not free for allocations any more.
        report("alloc_rest", u8::from(cu.alloc(LIMIT - used() + 2 * MIB).is_ok()));
        // A reset gives it all back; the context starts again at its defaults.
        // SAFETY: a device the driver knows.
        check_ok(unsafe { (cu.cuDevicePrimaryCtxReset_v2)(0) });
        report("used_after_reset", used());
        report("heap_after_reset", x.get(CU_LIMIT_MALLOC_HEAP_SIZE));
        check_ok(x.set(CU_LIMIT_MALLOC_HEAP_SIZE, 2 * GIB));
        report("used_heap_2g_after_reset", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = run_client(node_with_slice().client(name), name);
    let v = |key: &str| value(&out, key);
    assert_eq!(v("start"), CONTEXT);
    assert_eq!(v("heap_8g"), u64::from(OUT_OF_MEMORY), "an 8 GiB heap in a 4 GiB slice");
    assert_eq!(v("heap_after_refusal"), 8 * MIB, "the refused value reached the driver");
    assert_eq!(v("used_after_refusal"), CONTEXT);
    assert_eq!(v("used_heap_1g"), CONTEXT + GIB - 8 * MIB, "a 1 GiB heap is charged beyond the default 8 MiB");
    assert_eq!(v("used_heap_256m"), CONTEXT + 256 * MIB - 8 * MIB, "lowering the heap gives back the difference");
    assert_eq!(v("stack_64k"), u64::from(OUT_OF_MEMORY), "64 KiB × 270336 threads");
    let heap = 248 * MIB;
    let stack = (4 << 10) * THREADS - 1024 * THREADS;
    assert_eq!(v("used_stack_4k"), CONTEXT + heap + stack);
    assert_eq!(v("fifo_4g"), u64::from(OUT_OF_MEMORY));
    let fifo = 64 * MIB - 2 * MIB;
    assert_eq!(v("used_fifo_64m"), CONTEXT + heap + stack + fifo);
    assert_eq!(v("alloc_rest"), 0, "an allocation past what the limits left fitted");
    assert_eq!(v("used_after_reset"), CONTEXT, "a reset kept the limits' charges");
    assert_eq!(v("heap_after_reset"), 8 * MIB);
    assert_eq!(v("used_heap_2g_after_reset"), CONTEXT + 2 * GIB - 8 * MIB);
}

#[test]
fn modules_and_libraries_are_charged_for_their_globals() {
    let name = "modules_and_libraries_are_charged_for_their_globals";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let x = Extra::load();
        report("start", used());
        report("module_8g", x.module(&ptx_with_global(8 * GIB)).unwrap_err());
        report("used_after_refusal", used());
        let m = x.module(&ptx_with_global(512 * MIB)).unwrap();
        report("used_module", used());
        // SAFETY: the module just loaded.
        check_ok(unsafe { (x.cuModuleUnload)(m) });
        report("used_unloaded", used());
        report("library_8g", x.library(&ptx_with_global(8 * GIB)).unwrap_err());
        let l = x.library(&ptx_with_global(GIB)).unwrap();
        report("used_library", used());
        // SAFETY: the library just loaded.
        check_ok(unsafe { (x.cuLibraryUnload)(l) });
        report("used_library_unloaded", used());
        // A module goes with its context: a reset gives its charge back.
        x.module(&ptx_with_global(GIB)).unwrap();
        report("used_module_again", used());
        // SAFETY: a device the driver knows.
        check_ok(unsafe { (cu.cuDevicePrimaryCtxReset)(0) });
        report("used_after_reset", used());
        // A kernel-only module (no globals, PTX code is not counted) costs nothing.
        let small = CString::new(".version 8.0\n.target sm_90\n.entry k()\n{\n\tret;\n}\n").unwrap();
        x.module(&small).unwrap();
        report("used_code_only", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = run_client(node_with_slice().client(name), name);
    let v = |key: &str| value(&out, key);
    assert_eq!(v("start"), CONTEXT);
    assert_eq!(v("module_8g"), u64::from(OUT_OF_MEMORY), "a module with an 8 GiB __device__ array");
    assert_eq!(v("used_after_refusal"), CONTEXT);
    assert_eq!(v("used_module"), CONTEXT + 512 * MIB);
    assert_eq!(v("used_unloaded"), CONTEXT);
    assert_eq!(v("library_8g"), u64::from(OUT_OF_MEMORY));
    assert_eq!(v("used_library"), CONTEXT + GIB);
    assert_eq!(v("used_library_unloaded"), CONTEXT);
    assert_eq!(v("used_module_again"), CONTEXT + GIB);
    assert_eq!(v("used_after_reset"), CONTEXT, "the reset module is still charged");
    assert_eq!(v("used_code_only"), CONTEXT);
}

/// The simulated driver reserves what the shim charges: without the shim, the device's used
/// memory grows by the same bytes.
#[test]
fn the_simulated_driver_reserves_what_the_model_says() {
    let name = "the_simulated_driver_reserves_what_the_model_says";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let x = Extra::load();
        let device_used = || {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: live outputs.
            check_ok(unsafe { (cu.cuMemGetInfo_v2)(&mut free, &mut total) });
            (total - free) as u64
        };
        let start = device_used();
        check_ok(x.set(CU_LIMIT_MALLOC_HEAP_SIZE, GIB));
        report("heap", device_used() - start);
        check_ok(x.set(CU_LIMIT_MALLOC_HEAP_SIZE, 8 * MIB));
        x.module(&ptx_with_global(512 * MIB)).unwrap();
        report("module", device_used() - start);
        // A library takes its memory in a context when first used there (lazy loading).
        let l = x.library(&ptx_with_global(GIB)).unwrap();
        report("library_loaded", device_used() - start);
        let mut module = std::ptr::null_mut();
        let get_module = symbol("cuLibraryGetModule");
        // SAFETY: the driver's cuLibraryGetModule, with cuda.h's signature.
        let get_module = unsafe { std::mem::transmute::<*mut c_void, sym::cuLibraryGetModule>(get_module) };
        // SAFETY: a live output and the library just loaded.
        check_ok(unsafe { get_module(&mut module, l) });
        report("library_used", device_used() - start);
        report("oom", x.set(CU_LIMIT_MALLOC_HEAP_SIZE, 100 * GIB));
        return;
    }
    let node = node_with_slice();
    let mut cmd = node.bare(&std::env::current_exe().unwrap(), &[name, "--exact", "--nocapture", "--test-threads=1"]);
    cmd.env("GPUSLICE_TEST_CLIENT", name);
    let out = run_client(cmd, name);
    let v = |key: &str| value(&out, key);
    assert_eq!(v("heap"), GIB - 8 * MIB);
    assert_eq!(v("module"), 512 * MIB);
    assert_eq!(v("library_loaded"), 512 * MIB, "loading a library reserves nothing until it is used");
    assert_eq!(v("library_used"), 512 * MIB + GIB);
    assert_eq!(v("oom"), u64::from(OUT_OF_MEMORY), "a 100 GiB heap on an 80 GiB device");
}

/// `name` from the driver as the function type `F` (its signature in cuda.h).
///
/// # Safety
/// `F` is `name`'s C signature.
unsafe fn function<F: Copy>(name: &str) -> F {
    let f = symbol(name);
    // SAFETY: a function pointer of that signature, per the caller.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&f) }
}

#[test]
fn green_contexts_are_charged_as_contexts() {
    let name = "green_contexts_are_charged_as_contexts";
    if is_client(name) {
        let (cu, primary) = Cuda::start();
        // SAFETY: each is the driver function of that name, with its cuda.h signature.
        let (get_resource, generate, create, destroy, from_green) = unsafe {
            (
                function::<sym::cuDeviceGetDevResource>("cuDeviceGetDevResource"),
                function::<sym::cuDevResourceGenerateDesc>("cuDevResourceGenerateDesc"),
                function::<sym::cuGreenCtxCreate>("cuGreenCtxCreate"),
                function::<sym::cuGreenCtxDestroy>("cuGreenCtxDestroy"),
                function::<sym::cuCtxFromGreenCtx>("cuCtxFromGreenCtx"),
            )
        };
        // SAFETY: all zeroes is a valid CUdevResource (plain data).
        let mut resource: CUdevResource = unsafe { std::mem::zeroed() };
        let mut desc = std::ptr::null_mut();
        // SAFETY: live outputs; the resource just filled in.
        unsafe {
            check_ok(get_resource(0, &mut resource, CU_DEV_RESOURCE_TYPE_SM));
            check_ok(generate(&mut desc, &mut resource, 1));
        }
        let mut greens = Vec::new();
        let refused = loop {
            let mut g = std::ptr::null_mut();
            // SAFETY: a live output and the descriptor above.
            match unsafe { create(&mut g, desc, 0, CU_GREEN_CTX_DEFAULT_STREAM) } {
                SUCCESS => greens.push(g),
                rc => break rc,
            }
            assert!(greens.len() < 100, "green contexts are not limited");
        };
        report("created", greens.len());
        report("refused", refused);
        report("used_full", used());
        // SAFETY: a green context created above.
        check_ok(unsafe { destroy(greens.pop().unwrap()) });
        report("used_one_destroyed", used());
        // Memory allocated in a green context goes with it.
        let mut ctx = std::ptr::null_mut();
        let last = greens.pop().unwrap();
        // SAFETY: a live output and a green context created above.
        check_ok(unsafe { from_green(&mut ctx, last) });
        cu.enter(ctx as usize);
        cu.alloc(64 * MIB).unwrap();
        report("used_allocated_in_green", used());
        // SAFETY: as above.
        check_ok(unsafe { destroy(last) });
        cu.enter(primary);
        report("used_two_destroyed", used());
        for g in greens {
            // SAFETY: green contexts created above.
            check_ok(unsafe { destroy(g) });
        }
        report("used_end", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = run_client(node_with_slice().client(name), name);
    let v = |key: &str| value(&out, key);
    // 4 GiB: the primary context and 15 more of 256 MiB.
    assert_eq!(v("created"), 15);
    assert_eq!(v("refused"), u64::from(OUT_OF_MEMORY));
    assert_eq!(v("used_full"), LIMIT);
    assert_eq!(v("used_one_destroyed"), LIMIT - CONTEXT);
    assert_eq!(v("used_allocated_in_green"), LIMIT - CONTEXT + 64 * MIB);
    assert_eq!(
        v("used_two_destroyed"),
        LIMIT - 2 * CONTEXT,
        "what was allocated in the green context is still charged"
    );
    assert_eq!(v("used_end"), CONTEXT);
}

/// NVIDIA's runtime loads the fat binaries it registered with `cuLibraryLoadData` before it
/// makes a context current: the load is charged to the process's slice all the same.
#[test]
fn a_library_loaded_without_a_context_is_charged() {
    let name = "a_library_loaded_without_a_context_is_charged";
    if is_client(name) {
        let cu = Cuda::load();
        // SAFETY: plain flags.
        check_ok(unsafe { (cu.cuInit)(0) });
        let x = Extra::load();
        report("refused", x.library(&ptx_with_global(8 * GIB)).unwrap_err());
        let l = x.library(&ptx_with_global(GIB)).unwrap();
        report("used_loaded", used());
        // SAFETY: the library just loaded.
        check_ok(unsafe { (x.cuLibraryUnload)(l) });
        report("used_unloaded", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = run_client(node_with_slice().client(name), name);
    assert_eq!(value(&out, "refused"), u64::from(OUT_OF_MEMORY));
    assert_eq!(value(&out, "used_loaded"), GIB, "a library loaded with no context current was not charged");
    assert_eq!(value(&out, "used_unloaded"), 0);
}
