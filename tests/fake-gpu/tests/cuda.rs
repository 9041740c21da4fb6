//! The fake CUDA driver through its C ABI, loaded with `dlopen` like `libcuda.so.1`. Each
//! test runs its checks in a child process with its own machine (see `common`); tests about
//! several processes start more children.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use common::cuda::*;
use common::{Fixture, Gpu, config_with, is_child, run_child};
use fakegpu::state::DeviceState;
use fakegpu::timeline::{self, DeviceTimeline};
use nvml_wrapper_sys::bindings::{NvmlLib, nvmlDevice_t, nvmlMemory_t};

/// A one-GPU machine with `memory` and `context_memory`, and `extra` top-level keys.
fn small_machine(memory: &str, context_memory: &str, extra: &str) -> String {
    format!(
        "driver_version = \"580.95.05\"\ncuda_version = 13000\n{extra}\n[[gpu]]\n\
         uuid = \"GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\"\nname = \"Small\"\nmemory = \"{memory}\"\n\
         sm_count = 8\nminor = 0\npci_bus_id = \"0000:3b:00.0\"\ncontext_memory = \"{context_memory}\"\n"
    )
}

#[track_caller]
fn check(got: CUresult, want: CUresult) {
    assert_eq!(got, want, "CUresult {got}, want {want}");
}

#[track_caller]
fn ok(got: CUresult) {
    check(got, SUCCESS);
}

/// Bytes in use on the current context's device, from `cuMemGetInfo`.
fn used(cu: &Cuda) -> u64 {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: two live usize outputs.
    ok(unsafe { (cu.cuMemGetInfo_v2)(&mut free, &mut total) });
    (total - free) as u64
}

/// `cuInit`, retain GPU `device`'s primary context and make it current.
fn primary(cu: &Cuda, device: c_int) -> CUcontext {
    let mut ctx = null_mut();
    // SAFETY: a live output for the context.
    ok(unsafe { (cu.cuInit)(0) });
    // SAFETY: as above.
    ok(unsafe { (cu.cuDevicePrimaryCtxRetain)(&mut ctx, device) });
    // SAFETY: a context just retained.
    ok(unsafe { (cu.cuCtxSetCurrent)(ctx) });
    ctx
}

/// NVML's `used` for GPU 0, through the same library.
fn nvml_used() -> u64 {
    // SAFETY: loading the fake driver again returns the handle already open.
    let nvml = unsafe { NvmlLib::new(common::lib_path()) }.unwrap();
    let mut dev: nvmlDevice_t = null_mut();
    // SAFETY: zeroed memory is a valid nvmlMemory_t.
    let mut mem: nvmlMemory_t = unsafe { std::mem::zeroed() };
    // SAFETY: no arguments.
    assert_eq!(unsafe { nvml.nvmlInit_v2() }, 0);
    // SAFETY: a live output.
    assert_eq!(unsafe { nvml.nvmlDeviceGetHandleByIndex_v2(0, &mut dev) }, 0);
    // SAFETY: a handle from NVML and a live output.
    assert_eq!(unsafe { nvml.nvmlDeviceGetMemoryInfo(dev, &mut mem) }, 0);
    // SAFETY: no arguments.
    assert_eq!(unsafe { nvml.nvmlShutdown() }, 0);
    mem.used
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

// ---- cuGetProcAddress -------------------------------------------------------------------

const PTDS: u64 = 2;
const LEGACY: u64 = 1;

/// `cuGetProcAddress_v2(name, version, flags)`: (result, pointer, status).
fn proc_address(
    cu: &Cuda,
    name: &str,
    version: c_int,
    flags: u64,
) -> (CUresult, *mut c_void, CUdriverProcAddressQueryResult) {
    let (mut pfn, mut status) = (std::ptr::dangling_mut::<c_void>(), 99);
    let name = c(name);
    // SAFETY: a NUL-terminated name and live outputs.
    let r = unsafe { (cu.cuGetProcAddress_v2)(name.as_ptr(), &mut pfn, version, flags, &mut status) };
    (r, pfn, status)
}

#[track_caller]
fn resolves_to(cu: &Cuda, name: &str, version: c_int, flags: u64, symbol: &str) {
    let (r, pfn, status) = proc_address(cu, name, version, flags);
    assert_eq!((r, status), (SUCCESS, 0), "{name} @ {version} flags {flags}");
    let want = cu.sym(symbol);
    assert!(!want.is_null(), "{symbol} is not exported");
    assert_eq!(pfn, want, "{name} @ {version} flags {flags} is not dlsym({symbol})");
}

#[test]
fn proc_addresses_are_the_exported_symbols() {
    if !is_child("proc_addresses_are_the_exported_symbols") {
        return Fixture::new(&config_with(1, "")).run("proc_addresses_are_the_exported_symbols").pipe_drop();
    }
    let cu = Cuda::load();
    // Before cuInit, as the CUDA runtime uses it.
    resolves_to(&cu, "cuInit", 13000, 0, "cuInit");
    resolves_to(&cu, "cuMemAlloc", 3020, 0, "cuMemAlloc_v2");
    resolves_to(&cu, "cuMemAlloc", 13000, PTDS, "cuMemAlloc_v2");
    resolves_to(&cu, "cuCtxCreate", 3020, 0, "cuCtxCreate_v2");
    resolves_to(&cu, "cuCtxCreate", 11040, 0, "cuCtxCreate_v3");
    resolves_to(&cu, "cuCtxCreate", 12050, 0, "cuCtxCreate_v4");
    resolves_to(&cu, "cuCtxCreate", 13000, 0, "cuCtxCreate_v4");
    resolves_to(&cu, "cuDevicePrimaryCtxRelease", 10000, 0, "cuDevicePrimaryCtxRelease");
    resolves_to(&cu, "cuDevicePrimaryCtxRelease", 11000, 0, "cuDevicePrimaryCtxRelease_v2");
    resolves_to(&cu, "cuLaunchKernel", 13000, PTDS, "cuLaunchKernel_ptsz");
    resolves_to(&cu, "cuLaunchKernel", 13000, LEGACY, "cuLaunchKernel");
    resolves_to(&cu, "cuLaunchKernel", 13000, 0, "cuLaunchKernel");
    resolves_to(&cu, "cuMemAllocAsync", 11020, PTDS, "cuMemAllocAsync_ptsz");
    resolves_to(&cu, "cuMemcpyHtoD", 12000, PTDS, "cuMemcpyHtoD_v2_ptds");
    resolves_to(&cu, "cuMemcpyHtoD", 12000, 0, "cuMemcpyHtoD_v2");
    resolves_to(&cu, "cuStreamSynchronize", 12000, PTDS, "cuStreamSynchronize_ptsz");
    resolves_to(&cu, "cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2");
    resolves_to(&cu, "cuEventElapsedTime", 12080, 0, "cuEventElapsedTime_v2");
    resolves_to(&cu, "cuLaunchKernelEx", 12000, PTDS, "cuLaunchKernelEx_ptsz");
    resolves_to(&cu, "cuLaunchCooperativeKernel", 13000, 0, "cuLaunchCooperativeKernel");
    resolves_to(&cu, "cuGraphInstantiate", 11040, 0, "cuGraphInstantiate_v2");
    resolves_to(&cu, "cuGraphInstantiate", 12000, 0, "cuGraphInstantiateWithFlags");
    resolves_to(&cu, "cuGraphAddKernelNode", 13000, 0, "cuGraphAddKernelNode_v2");
    resolves_to(&cu, "cuStreamBeginCapture", 12000, PTDS, "cuStreamBeginCapture_v2_ptsz");
    resolves_to(&cu, "cuGraphLaunch", 12000, PTDS, "cuGraphLaunch_ptsz");

    // Every row of the generated table, at its own version: the variant a driver of this
    // machine's CUDA version (13000, config_with) selects for it (a newer row is answered as
    // at the driver's version, as a real driver does) is exactly that export (the address
    // dlsym gives) if the simulator has it; otherwise the row is refused, never answered with
    // another variant.
    for row in gpuslice_cuda_abi::proc::PROC_TABLE {
        let flags = if row.per_thread { PTDS } else { LEGACY };
        let (r, pfn, _) = proc_address(&cu, row.name(), row.version, flags);
        let selected = match gpuslice_cuda_abi::lookup(row.name(), row.version.min(13000), flags) {
            gpuslice_cuda_abi::Lookup::Found(r) => Some(r.symbol()),
            // Newer than the driver: no variant at its version.
            gpuslice_cuda_abi::Lookup::VersionNotSufficient => None,
            other => panic!("{row:?}: {other:?}"),
        };
        match selected.filter(|s| fakegpu::cuda::proc_address::export(s).is_some()) {
            Some(selected) => {
                assert_eq!(r, SUCCESS, "{row:?}");
                assert_eq!(pfn, cu.sym(selected), "{} @ {} is not dlsym({selected})", row.name(), row.version);
            }
            None => assert_eq!((r, pfn), (NOT_FOUND, null_mut()), "{row:?}: the simulator has no {selected:?}"),
        }
    }

    // Failures null the pointer and say why.
    let (r, pfn, status) = proc_address(&cu, "cuNoSuchThing", 13000, 0);
    assert_eq!((r, pfn, status), (NOT_FOUND, null_mut(), 1));
    let (r, pfn, status) = proc_address(&cu, "cuMemAlloc_v2", 13000, 0);
    assert_eq!((r, pfn, status), (NOT_FOUND, null_mut(), 1));
    let (r, pfn, status) = proc_address(&cu, "cuMemAllocAsync", 11010, 0);
    assert_eq!((r, pfn, status), (NOT_FOUND, null_mut(), 2));
    let (r, pfn, status) = proc_address(&cu, "cuMemAlloc", 2000, 0);
    assert_eq!((r, pfn, status), (NOT_FOUND, null_mut(), 2));
    let (r, _, _) = proc_address(&cu, "cuMemAlloc", 13000, 4);
    assert_eq!(r, INVALID_VALUE);

    // The CUDA 11.3 signature, and null arguments.
    let mut pfn = null_mut();
    let name = c("cuMemFree");
    // SAFETY: a NUL-terminated name and a live output.
    ok(unsafe { (cu.cuGetProcAddress)(name.as_ptr(), &mut pfn, 12000, 0) });
    assert_eq!(pfn, cu.sym("cuMemFree_v2"));
    // SAFETY: null name, deliberately.
    check(unsafe { (cu.cuGetProcAddress)(null(), &mut pfn, 12000, 0) }, INVALID_VALUE);
    // SAFETY: null output, deliberately.
    check(unsafe { (cu.cuGetProcAddress)(name.as_ptr(), null_mut(), 12000, 0) }, INVALID_VALUE);
    // SAFETY: the status output is optional.
    ok(unsafe { (cu.cuGetProcAddress_v2)(name.as_ptr(), &mut pfn, 12000, 0, null_mut()) });
}

#[test]
fn proc_addresses_stop_at_the_driver_version() {
    let name = "proc_addresses_stop_at_the_driver_version";
    if !is_child(name) {
        let config = config_with(1, "").replace("cuda_version = 13000", "cuda_version = 12020");
        return Fixture::new(&config).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    // A CUDA 12.2 driver has no cuCtxCreate_v4 (12.5) or cuEventElapsedTime_v2 (12.8).
    resolves_to(&cu, "cuCtxCreate", 12080, 0, "cuCtxCreate_v3");
    resolves_to(&cu, "cuEventElapsedTime", 13000, 0, "cuEventElapsedTime");
    let mut version = 0;
    // SAFETY: a live output; works before cuInit.
    ok(unsafe { (cu.cuDriverGetVersion)(&mut version) });
    assert_eq!(version, 12020);
}

/// `Output` of a child run is not needed by most tests.
trait PipeDrop {
    fn pipe_drop(self);
}

impl<T> PipeDrop for T {
    fn pipe_drop(self) {}
}

// ---- init, errors, devices --------------------------------------------------------------

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn init_errors_and_devices_follow_the_driver() {
    let name = "init_errors_and_devices_follow_the_driver";
    if !is_child(name) {
        return Fixture::new(&config_with(2, "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    let (mut count, mut dev, mut s) = (0, 0, null());
    let mut buf = [0 as c_char; 64];
    let text = |buf: &[c_char]| {
        // SAFETY: the driver NUL-terminates what it writes into `buf`.
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap().to_owned()
    };
    // SAFETY: every pointer below is a live local of the type cuda.h names, or deliberately
    // null; lengths are the buffers' real lengths or less.
    unsafe {
        // Before cuInit.
        check((cu.cuDeviceGetCount)(&mut count), NOT_INITIALIZED);
        check((cu.cuMemAlloc_v2)(null_mut(), 1), NOT_INITIALIZED);
        ok((cu.cuGetErrorName)(OUT_OF_MEMORY, &mut s));
        assert_eq!(CStr::from_ptr(s), c"CUDA_ERROR_OUT_OF_MEMORY");
        ok((cu.cuGetErrorString)(INVALID_CONTEXT, &mut s));
        assert_eq!(CStr::from_ptr(s), c"invalid device context");
        check((cu.cuGetErrorName)(12345, &mut s), INVALID_VALUE);
        assert!(s.is_null());
        check((cu.cuInit)(1), INVALID_VALUE);
        ok((cu.cuInit)(0));
        ok((cu.cuInit)(0));

        ok((cu.cuDeviceGetCount)(&mut count));
        assert_eq!(count, 2);
        check((cu.cuDeviceGetCount)(null_mut()), INVALID_VALUE);
        ok((cu.cuDeviceGet)(&mut dev, 1));
        assert_eq!(dev, 1);
        check((cu.cuDeviceGet)(&mut dev, 2), INVALID_DEVICE);
        check((cu.cuDeviceGet)(&mut dev, -1), INVALID_DEVICE);

        for i in 0..2 {
            let want = Gpu::nth(i as u32);
            ok((cu.cuDeviceGetName)(buf.as_mut_ptr(), 64, i));
            assert_eq!(text(&buf), want.name);
            ok((cu.cuDeviceGetName)(buf.as_mut_ptr(), 5, i));
            assert_eq!(text(&buf), want.name[..4]);

            // The UUID's bytes spell the NVML UUID.
            let mut uuid = CUuuid::default();
            ok((cu.cuDeviceGetUuid_v2)(&mut uuid, i));
            let hex: String = uuid.bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
            let spelled = format!("GPU-{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
            assert_eq!(spelled, want.uuid);
            let mut v1 = CUuuid::default();
            ok((cu.cuDeviceGetUuid)(&mut v1, i));
            assert_eq!(v1.bytes, uuid.bytes);

            ok((cu.cuDeviceGetPCIBusId)(buf.as_mut_ptr(), 64, i));
            assert_eq!(text(&buf), want.bus_id[4..]);
            let mut total = 0usize;
            ok((cu.cuDeviceTotalMem_v2)(&mut total, i));
            assert_eq!(total as u64, want.memory);

            let attr = |a: CUdevice_attribute| {
                let mut v = -7;
                ok((cu.cuDeviceGetAttribute)(&mut v, a, i));
                v
            };
            assert_eq!(attr(16), want.sm_count as c_int, "MULTIPROCESSOR_COUNT");
            assert_eq!((attr(75), attr(76)), (9, 0), "compute capability");
            assert_eq!(attr(14), 512, "TEXTURE_ALIGNMENT");
            assert_eq!(attr(10), 32, "WARP_SIZE");
            assert_eq!(attr(1), 1024, "MAX_THREADS_PER_BLOCK");
            assert_eq!(attr(115), 1, "MEMORY_POOLS_SUPPORTED");
            assert_eq!(attr(102), 1, "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED");
            assert_eq!((attr(50), attr(33), attr(34)), (0, want.bus as c_int, 0), "PCI domain, bus, device");
            assert!(attr(13) > 1_000_000, "CLOCK_RATE in kHz");
            assert_eq!(attr(135), 0, "an attribute in range but not simulated");
        }
        let mut v = 0;
        check((cu.cuDeviceGetAttribute)(&mut v, 0, 0), INVALID_VALUE);
        check((cu.cuDeviceGetAttribute)(&mut v, 100_000, 0), INVALID_VALUE);
        check((cu.cuDeviceGetAttribute)(&mut v, 16, 5), INVALID_DEVICE);
        check((cu.cuDeviceGetAttribute)(null_mut(), 16, 0), INVALID_VALUE);
        check((cu.cuDeviceGetName)(buf.as_mut_ptr(), 0, 0), INVALID_VALUE);

        // Nothing current: calls that need a context say so.
        let mut p = 0u64;
        check((cu.cuMemAlloc_v2)(&mut p, 1), INVALID_CONTEXT);
        let (mut free, mut total) = (0usize, 0usize);
        check((cu.cuMemGetInfo_v2)(&mut free, &mut total), INVALID_CONTEXT);
        let mut stream = null_mut();
        check((cu.cuStreamCreate)(&mut stream, 0), INVALID_CONTEXT);
        check((cu.cuCtxSynchronize)(), INVALID_CONTEXT);
        check((cu.cuCtxGetDevice)(&mut dev), INVALID_CONTEXT);
        let mut ctx = 0x99 as CUcontext;
        ok((cu.cuCtxGetCurrent)(&mut ctx));
        assert!(ctx.is_null());
    }
}

#[test]
fn cuda_init_error_makes_cuinit_fail() {
    let name = "cuda_init_error_makes_cuinit_fail";
    if !is_child(name) {
        return Fixture::new(&config_with(1, "cuda_init_error = \"NO_DEVICE\"")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    let mut count = 0;
    // SAFETY: a live output.
    check(unsafe { (cu.cuInit)(0) }, NO_DEVICE);
    // SAFETY: as above.
    check(unsafe { (cu.cuDeviceGetCount)(&mut count) }, NOT_INITIALIZED);
    // SAFETY: as above.
    check(unsafe { (cu.cuInit)(0) }, NO_DEVICE);
}

// ---- contexts ---------------------------------------------------------------------------

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn contexts_are_counted_charged_and_thread_local() {
    let name = "contexts_are_counted_charged_and_thread_local";
    if !is_child(name) {
        return Fixture::new(&small_machine("64MiB", "6MiB", "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    let state = DeviceState::open(std::env::var_os("FAKEGPU_STATE_DIR").unwrap().as_ref(), 0, 64 * MIB).unwrap();
    let (mut a, mut b, mut c, mut top) = (null_mut(), null_mut(), null_mut(), null_mut());
    let (mut flags, mut active, mut dev) = (9u32, 9, 9);
    let mut p = 0u64;
    // SAFETY: every pointer below is a live local of the type cuda.h names, or deliberately
    // null; handles come from the driver.
    unsafe {
        ok((cu.cuInit)(0));
        ok((cu.cuDevicePrimaryCtxGetState)(0, &mut flags, &mut active));
        assert_eq!((flags, active), (0, 0));
        assert_eq!(state.used(), 0);

        // Retain creates it and charges context_memory once; it is not made current.
        ok((cu.cuDevicePrimaryCtxRetain)(&mut a, 0));
        ok((cu.cuDevicePrimaryCtxRetain)(&mut b, 0));
        assert_eq!(a, b, "one primary context per device");
        assert_eq!(state.used(), 6 * MIB);
        ok((cu.cuDevicePrimaryCtxGetState)(0, &mut flags, &mut active));
        assert_eq!(active, 1);
        ok((cu.cuCtxGetCurrent)(&mut top));
        assert!(top.is_null());
        check((cu.cuDevicePrimaryCtxRetain)(&mut a, 1), INVALID_DEVICE);
        check((cu.cuDevicePrimaryCtxRetain)(null_mut(), 0), INVALID_VALUE);

        ok((cu.cuCtxSetCurrent)(a));
        ok((cu.cuCtxGetDevice)(&mut dev));
        assert_eq!(dev, 0);
        ok((cu.cuMemAlloc_v2)(&mut p, 100));
        assert_eq!(used(&cu), 8 * MIB);
        assert_eq!(nvml_used(), 8 * MIB);

        // Another thread has no current context until it sets one.
        let a_addr = a as usize;
        let (other_alloc, other_after_set) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut q = 0u64;
                let first = (cu.cuMemAlloc_v2)(&mut q, 1);
                ok((cu.cuCtxSetCurrent)(a_addr as CUcontext));
                ok((cu.cuMemFree_v2)(p));
                (first, (cu.cuMemAlloc_v2)(&mut q, 1))
            })
            .join()
            .unwrap()
        });
        check(other_alloc, INVALID_CONTEXT);
        ok(other_after_set);
        assert_eq!(used(&cu), 8 * MIB, "freed 2 MiB on one thread, took 2 MiB on the other");

        // Created contexts: pushed, charged, destroyed with their allocations.
        ok((cu.cuCtxCreate_v2)(&mut c, 0, 0));
        ok((cu.cuCtxGetCurrent)(&mut top));
        assert_eq!(top, c);
        assert_ne!(c, a);
        ok((cu.cuMemAlloc_v2)(&mut p, 3 * MIB as usize));
        assert_eq!(used(&cu), 18 * MIB);
        ok((cu.cuCtxDestroy_v2)(c));
        ok((cu.cuCtxGetCurrent)(&mut top));
        assert_eq!(top, a, "destroying the current context pops it");
        assert_eq!(used(&cu), 8 * MIB);
        check((cu.cuMemFree_v2)(p), INVALID_VALUE);
        check((cu.cuCtxDestroy_v2)(c), INVALID_CONTEXT);
        check((cu.cuCtxDestroy_v2)(a), INVALID_CONTEXT);
        check((cu.cuCtxCreate_v2)(&mut c, 0x1000, 0), INVALID_VALUE);

        // v3 with execution affinity, v4 with and without params.
        let affinity_of = |sm| {
            let mut p = CUexecAffinityParam { type_: CU_EXEC_AFFINITY_TYPE_SM_COUNT, ..Default::default() };
            p.param.smCount.val = sm;
            p
        };
        let mut affinity = [affinity_of(4)];
        ok((cu.cuCtxCreate_v3)(&mut c, affinity.as_mut_ptr(), 1, 0, 0));
        ok((cu.cuCtxDestroy_v2)(c));
        affinity[0] = affinity_of(9);
        check((cu.cuCtxCreate_v3)(&mut c, affinity.as_mut_ptr(), 1, 0, 0), INVALID_VALUE);
        check((cu.cuCtxCreate_v3)(&mut c, null_mut(), 1, 0, 0), INVALID_VALUE);
        ok((cu.cuCtxCreate_v4)(&mut c, null_mut(), 0, 0));
        ok((cu.cuCtxGetDevice_v2)(&mut dev, c));
        ok((cu.cuCtxSynchronize_v2)(c));
        ok((cu.cuCtxDestroy_v2)(c));
        affinity[0] = affinity_of(2);
        let mut params = CUctxCreateParams {
            execAffinityParams: affinity.as_mut_ptr(),
            numExecAffinityParams: 1,
            cigParams: null_mut(),
        };
        ok((cu.cuCtxCreate_v4)(&mut c, &mut params, 0, 0));
        assert_eq!(used(&cu), 14 * MIB);

        // Push and pop.
        ok((cu.cuCtxPopCurrent_v2)(&mut top));
        assert_eq!(top, c);
        ok((cu.cuCtxGetCurrent)(&mut top));
        assert_eq!(top, a);
        ok((cu.cuCtxPushCurrent_v2)(c));
        ok((cu.cuCtxPopCurrent_v2)(null_mut()));
        ok((cu.cuCtxPopCurrent_v2)(null_mut()));
        check((cu.cuCtxPopCurrent_v2)(null_mut()), INVALID_CONTEXT);
        check((cu.cuCtxPushCurrent_v2)(0x12345 as CUcontext), INVALID_CONTEXT);
        ok((cu.cuCtxSetCurrent)(null_mut()));
        ok((cu.cuCtxSetCurrent)(a));
        ok((cu.cuCtxDestroy_v2)(c));
        assert_eq!(used(&cu), 8 * MIB);

        // Reset frees the primary context's allocations but keeps it (retained twice).
        ok((cu.cuDevicePrimaryCtxReset_v2)(0));
        assert_eq!(used(&cu), 6 * MIB);
        ok((cu.cuMemAlloc_v2)(&mut p, 1));
        // The last release destroys it and what it held; the handle stops working.
        ok((cu.cuDevicePrimaryCtxRelease_v2)(0));
        assert_eq!(state.used(), 8 * MIB);
        ok((cu.cuDevicePrimaryCtxRelease)(0));
        assert_eq!(state.used(), 0);
        check((cu.cuDevicePrimaryCtxRelease_v2)(0), INVALID_CONTEXT);
        ok((cu.cuDevicePrimaryCtxGetState)(0, &mut flags, &mut active));
        assert_eq!(active, 0);
        check((cu.cuMemAlloc_v2)(&mut p, 1), INVALID_CONTEXT);
        ok((cu.cuDevicePrimaryCtxRetain)(&mut b, 0));
        assert_eq!(b, a, "the primary context keeps its handle");
        ok((cu.cuMemAlloc_v2)(&mut p, 1));
        assert_eq!(state.used(), 8 * MIB);
    }
}

// ---- memory -----------------------------------------------------------------------------

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn every_allocation_path_charges_whole_granules_and_ooms_cleanly() {
    let name = "every_allocation_path_charges_whole_granules_and_ooms_cleanly";
    if !is_child(name) {
        return Fixture::new(&small_machine("64MiB", "4MiB", "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let (mut p, mut q, mut pitch) = (0u64, 0u64, 0usize);
    let base = 4 * MIB;
    // SAFETY: every pointer below is a live local of the type cuda.h names, or deliberately
    // null; handles come from the driver.
    unsafe {
        assert_eq!(used(&cu), base);
        let mut g = 0usize;
        ok((cu.cuMemGetAllocationGranularity)(&mut g, &device_prop(0), 0));
        assert_eq!(g as u64, 2 * MIB);

        // cuMemAlloc: 1 byte and 2 MiB + 1 take one and two granules.
        ok((cu.cuMemAlloc_v2)(&mut p, 1));
        assert_eq!(used(&cu), base + 2 * MIB);
        ok((cu.cuMemAlloc_v2)(&mut q, (2 * MIB + 1) as usize));
        assert_eq!(used(&cu), base + 6 * MIB);
        ok((cu.cuMemFree_v2)(p));
        ok((cu.cuMemFree_v2)(q));
        check((cu.cuMemFree_v2)(q), INVALID_VALUE);
        check((cu.cuMemFree_v2)(0x1234), INVALID_VALUE);
        check((cu.cuMemAlloc_v2)(&mut p, 0), INVALID_VALUE);
        check((cu.cuMemAlloc_v2)(null_mut(), 1), INVALID_VALUE);
        assert_eq!(used(&cu), base);

        // Pitch: rows of 100 bytes padded to 512; 512 × 10000 = 5 120 000 bytes → 3 granules.
        ok((cu.cuMemAllocPitch_v2)(&mut p, &mut pitch, 100, 10_000, 4));
        assert_eq!(pitch, 512);
        assert_eq!(used(&cu), base + 6 * MIB);
        ok((cu.cuMemFree_v2)(p));
        check((cu.cuMemAllocPitch_v2)(&mut p, &mut pitch, 100, 10, 3), INVALID_VALUE);

        // Managed memory counts on the device too.
        ok((cu.cuMemAllocManaged)(&mut p, (3 * MIB) as usize, 1));
        assert_eq!(used(&cu), base + 4 * MIB);
        ok((cu.cuMemFree_v2)(p));
        check((cu.cuMemAllocManaged)(&mut p, 1, 0), INVALID_VALUE);

        // Out of memory: nothing taken; exactly what is free still fits.
        check((cu.cuMemAlloc_v2)(&mut p, (60 * MIB + 1) as usize), OUT_OF_MEMORY);
        assert_eq!(used(&cu), base);
        ok((cu.cuMemAlloc_v2)(&mut p, (60 * MIB) as usize));
        assert_eq!(used(&cu), 64 * MIB);
        check((cu.cuMemAlloc_v2)(&mut q, 1), OUT_OF_MEMORY);
        check((cu.cuMemCreate)(&mut q, (2 * MIB) as usize, &device_prop(0), 0), OUT_OF_MEMORY);
        ok((cu.cuMemFree_v2)(p));
        assert_eq!(nvml_used(), base);

        // Stream-ordered allocation from the default pool: freed memory stays reserved.
        let (mut pool, mut current) = (null_mut(), null_mut());
        ok((cu.cuDeviceGetDefaultMemPool)(&mut pool, 0));
        ok((cu.cuDeviceGetMemPool)(&mut current, 0));
        assert_eq!(pool, current);
        let attr = |pool: CUmemoryPool, a: CUmemPool_attribute| {
            let mut v = 0u64;
            ok((cu.cuMemPoolGetAttribute)(pool, a, (&raw mut v).cast()));
            v
        };
        ok((cu.cuMemAllocAsync)(&mut p, MIB as usize, null_mut()));
        assert_eq!(used(&cu), base + 2 * MIB);
        assert_eq!((attr(pool, 5), attr(pool, 7)), (2 * MIB, 2 * MIB), "reserved, used");
        ok((cu.cuMemFreeAsync)(p, null_mut()));
        assert_eq!(used(&cu), base + 2 * MIB, "still reserved by the pool");
        assert_eq!((attr(pool, 5), attr(pool, 7), attr(pool, 8)), (2 * MIB, 0, 2 * MIB));
        ok((cu.cuMemAllocAsync_ptsz)(&mut p, (2 * MIB) as usize, null_mut()));
        assert_eq!(used(&cu), base + 2 * MIB, "reused");
        ok((cu.cuMemAllocAsync)(&mut q, (3 * MIB) as usize, null_mut()));
        assert_eq!(used(&cu), base + 6 * MIB);
        ok((cu.cuMemFreeAsync)(p, null_mut()));
        ok((cu.cuMemFreeAsync)(q, null_mut()));
        assert_eq!((attr(pool, 5), attr(pool, 6)), (6 * MIB, 6 * MIB));
        ok((cu.cuMemPoolTrimTo)(pool, (2 * MIB) as usize));
        assert_eq!(attr(pool, 5), 2 * MIB);
        assert_eq!(used(&cu), base + 2 * MIB);
        ok((cu.cuMemPoolTrimTo)(pool, 0));
        assert_eq!(used(&cu), base);
        let mut flag = 0 as c_int;
        ok((cu.cuMemPoolGetAttribute)(pool, 1, (&raw mut flag).cast()));
        assert_eq!(flag, 1);
        check((cu.cuMemPoolGetAttribute)(pool, 99, (&raw mut flag).cast()), INVALID_VALUE);
        check((cu.cuMemPoolDestroy)(pool), INVALID_VALUE);

        // A pool of our own: destroying it frees what it reserved.
        let props = CUmemPoolProps {
            allocType: CU_MEM_ALLOCATION_TYPE_PINNED,
            location: device_location(0),
            ..Default::default()
        };
        let mut mine = null_mut();
        ok((cu.cuMemPoolCreate)(&mut mine, &props));
        ok((cu.cuMemAllocFromPoolAsync)(&mut p, 5, mine, null_mut()));
        ok((cu.cuMemFreeAsync)(p, null_mut()));
        assert_eq!(used(&cu), base + 2 * MIB);
        ok((cu.cuMemPoolDestroy)(mine));
        assert_eq!(used(&cu), base);
        check((cu.cuMemAllocFromPoolAsync)(&mut p, 5, mine, null_mut()), INVALID_VALUE);

        // Virtual memory management: physical memory is charged, address space is not.
        let prop = device_prop(0);
        let mut handle = 0u64;
        check((cu.cuMemCreate)(&mut handle, (3 * MIB) as usize, &prop, 0), INVALID_VALUE);
        ok((cu.cuMemCreate)(&mut handle, (4 * MIB) as usize, &prop, 0));
        assert_eq!(used(&cu), base + 4 * MIB);
        let mut va = 0u64;
        ok((cu.cuMemAddressReserve)(&mut va, (8 * MIB) as usize, 0, 0, 0));
        assert_eq!(used(&cu), base + 4 * MIB);
        assert_eq!(va % (2 * MIB), 0);
        ok((cu.cuMemMap)(va + 2 * MIB, (4 * MIB) as usize, 0, handle, 0));
        check((cu.cuMemMap)(va, (4 * MIB) as usize, 0, handle, 0), INVALID_VALUE);
        let bytes = [7u8; 16];
        check((cu.cuMemcpyHtoD_v2)(va + 2 * MIB, bytes.as_ptr().cast(), 16), INVALID_VALUE);
        let access = CUmemAccessDesc { location: device_location(0), flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
        check((cu.cuMemSetAccess)(va, (4 * MIB) as usize, &access, 1), INVALID_VALUE);
        ok((cu.cuMemSetAccess)(va + 2 * MIB, (4 * MIB) as usize, &access, 1));
        ok((cu.cuMemcpyHtoD_v2)(va + 6 * MIB - 16, bytes.as_ptr().cast(), 16));
        check((cu.cuMemcpyHtoD_v2)(va + 6 * MIB - 8, bytes.as_ptr().cast(), 16), INVALID_VALUE);
        // Released while mapped: freed on unmap.
        ok((cu.cuMemRelease)(handle));
        assert_eq!(used(&cu), base + 4 * MIB);
        ok((cu.cuMemUnmap)(va + 2 * MIB, (4 * MIB) as usize));
        assert_eq!(used(&cu), base);
        check((cu.cuMemRelease)(handle), INVALID_VALUE);
        ok((cu.cuMemAddressFree)(va, (8 * MIB) as usize));
        check((cu.cuMemAddressFree)(va, (8 * MIB) as usize), INVALID_VALUE);

        // Arrays: width × height × depth × channels × format size, in granules.
        let mut array = null_mut();
        let desc = CUDA_ARRAY_DESCRIPTOR { Width: 1000, Height: 1000, Format: 0x20, NumChannels: 1 };
        ok((cu.cuArrayCreate_v2)(&mut array, &desc));
        assert_eq!(used(&cu), base + 4 * MIB, "4 000 000 bytes");
        ok((cu.cuArrayDestroy)(array));
        check((cu.cuArrayDestroy)(array), INVALID_HANDLE);
        let desc3 =
            CUDA_ARRAY3D_DESCRIPTOR { Width: 128, Height: 128, Depth: 64, Format: 0x02, NumChannels: 4, Flags: 0 };
        ok((cu.cuArray3DCreate_v2)(&mut array, &desc3));
        assert_eq!(used(&cu), base + 8 * MIB, "128 × 128 × 64 × 4 × 2 = 8 MiB");
        ok((cu.cuArrayDestroy)(array));
        let bad = CUDA_ARRAY_DESCRIPTOR { Width: 10, Height: 10, Format: 0x20, NumChannels: 3 };
        check((cu.cuArrayCreate_v2)(&mut array, &bad), INVALID_VALUE);
        let mip =
            CUDA_ARRAY3D_DESCRIPTOR { Width: 2048, Height: 2048, Depth: 0, Format: 0x01, NumChannels: 1, Flags: 0 };
        let mut mipmapped = null_mut();
        ok((cu.cuMipmappedArrayCreate)(&mut mipmapped, &mip, 12));
        // 4 MiB + 1 MiB + 256 KiB + … ≈ 5.33 MiB → 6 MiB.
        assert_eq!(used(&cu), base + 6 * MIB);
        check((cu.cuArrayDestroy)(mipmapped.cast()), INVALID_HANDLE);
        ok((cu.cuMipmappedArrayDestroy)(mipmapped));
        check((cu.cuMipmappedArrayCreate)(&mut mipmapped, &mip, 13), INVALID_VALUE);
        assert_eq!(used(&cu), base);
    }
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn copies_move_real_bytes() {
    let name = "copies_move_real_bytes";
    if !is_child(name) {
        return Fixture::new(&small_machine("64MiB", "2MiB", "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let (mut a, mut b, mut stream) = (0u64, 0u64, null_mut());
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut back = vec![0u8; 4096];
    // SAFETY: every pointer below is a live local or buffer of at least the length passed,
    // or deliberately invalid; handles come from the driver.
    unsafe {
        ok((cu.cuMemAlloc_v2)(&mut a, 4096));
        ok((cu.cuMemAlloc_v2)(&mut b, 4096));
        ok((cu.cuStreamCreate)(&mut stream, 0));
        ok((cu.cuMemcpyHtoD_v2)(a, data.as_ptr().cast(), 4096));
        ok((cu.cuMemcpyDtoD_v2)(b, a, 4096));
        ok((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), b, 4096));
        assert_eq!(back, data);

        // Async forms, then the per-thread one.
        back.fill(0);
        ok((cu.cuMemsetD8_v2)(b, 0, 4096));
        ok((cu.cuMemcpyDtoDAsync_v2)(b + 100, a, 1000, stream));
        ok((cu.cuMemcpyDtoHAsync_v2)(back.as_mut_ptr().cast(), b, 4096, stream));
        ok((cu.cuStreamSynchronize)(stream));
        assert_eq!(&back[100..1100], &data[..1000]);
        assert!(back[..100].iter().chain(&back[1100..]).all(|&x| x == 0));
        ok((cu.cuMemcpyHtoDAsync_v2)(a, [1u8, 2, 3].as_ptr().cast(), 3, stream));
        ok((cu.cuMemcpyHtoD_v2_ptds)(a + 3, [4u8].as_ptr().cast(), 1));
        ok((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), a, 4));
        assert_eq!(&back[..4], &[1, 2, 3, 4]);

        // Sets.
        ok((cu.cuMemsetD32_v2)(a, 0xdead_beef, 1024));
        ok((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), a, 4096));
        assert!(back.chunks(4).all(|w| w == 0xdead_beef_u32.to_ne_bytes()));
        ok((cu.cuMemsetD8_v2)(a + 1, 0x5a, 2));
        ok((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), a, 4));
        assert_eq!(back[..4], [0xef, 0x5a, 0x5a, 0xde]);
        check((cu.cuMemsetD32_v2)(a + 2, 0, 1), INVALID_VALUE);

        // Out of bounds, unknown and freed pointers, null host pointers.
        check((cu.cuMemcpyHtoD_v2)(a + 4000, data.as_ptr().cast(), 97), INVALID_VALUE);
        check((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), a + 4096, 1), INVALID_VALUE);
        check((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), 0x1000, 1), INVALID_VALUE);
        check((cu.cuMemcpyHtoD_v2)(a, null(), 1), INVALID_VALUE);
        ok((cu.cuMemcpyHtoD_v2)(a, null(), 0));
        ok((cu.cuMemFree_v2)(b));
        check((cu.cuMemcpyDtoD_v2)(b, a, 16), INVALID_VALUE);
        check((cu.cuMemcpyHtoDAsync_v2)(a, data.as_ptr().cast(), 16, 0x777 as CUstream), INVALID_HANDLE);
        ok((cu.cuStreamDestroy_v2)(stream));
        check((cu.cuStreamDestroy_v2)(stream), INVALID_HANDLE);
    }
}

// ---- processes --------------------------------------------------------------------------

/// Start test `name` in a child that holds memory on GPU 0 until its stdin closes (or it is
/// killed), and wait until it says it holds it.
fn start_holder(fx: &Fixture, name: &str) -> Child {
    let mut child =
        fx.command(name).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the holder never got ready");
        match lines.next() {
            // libtest has already printed "test <name> ... " on the same line.
            Some(Ok(line)) if line.ends_with("holding") => break,
            Some(_) => {}
            None => panic!("the holder exited before it got ready: {:?}", child.wait()),
        }
    }
    // Keep reading, so that the holder can still print its test result.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// In the holder: take a context and 10 MiB + 1 byte, say so, and wait for stdin to close.
fn hold() {
    let cu = Cuda::load();
    primary(&cu, 0);
    let mut p = 0u64;
    // SAFETY: a live output.
    ok(unsafe { (cu.cuMemAlloc_v2)(&mut p, (10 * MIB + 1) as usize) });
    println!("holding");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_line(&mut String::new());
}

#[test]
fn another_process_sees_usage_through_nvml_and_cumemgetinfo() {
    let name = "another_process_sees_usage_through_nvml_and_cumemgetinfo";
    let observer = "another_process_sees_usage_observer";
    if is_child(name) {
        return hold();
    }
    let fx = Fixture::new(&small_machine("1GiB", "8MiB", ""));
    let mut holder = start_holder(&fx, name);
    let state = DeviceState::open(&fx.state_dir, 0, 1 << 30).unwrap();
    assert_eq!(state.used(), 20 * MIB, "8 MiB context + 12 MiB for 10 MiB + 1");
    // The observer (a second process) takes its own context and sees both.
    let mut cmd = fx.command(observer);
    cmd.env("WANT_USED", (28 * MIB).to_string());
    run_child(cmd, observer);
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert_eq!(state.used(), 0, "an exiting process frees its memory");
}

#[test]
fn another_process_sees_usage_observer() {
    if !is_child("another_process_sees_usage_observer") {
        return; // run by another_process_sees_usage_through_nvml_and_cumemgetinfo
    }
    let want: u64 = std::env::var("WANT_USED").unwrap().parse().unwrap();
    let cu = Cuda::load();
    primary(&cu, 0);
    assert_eq!(used(&cu), want);
    assert_eq!(nvml_used(), want);
}

#[test]
fn a_killed_process_memory_is_reclaimed() {
    let name = "a_killed_process_memory_is_reclaimed";
    if is_child(name) {
        return hold();
    }
    let fx = Fixture::new(&small_machine("1GiB", "8MiB", ""));
    let mut holder = start_holder(&fx, name);
    let state = DeviceState::open(&fx.state_dir, 0, 1 << 30).unwrap();
    assert_eq!(state.used(), 20 * MIB);
    // A second holder on the same GPU stays alive throughout.
    let mut survivor = start_holder(&fx, name);
    assert_eq!(state.used(), 40 * MIB);
    holder.kill().unwrap();
    assert!(!holder.wait().unwrap().success());
    assert_eq!(state.used(), 20 * MIB, "the killed process's memory is gone, the survivor's is not");
    drop(survivor.stdin.take());
    assert!(survivor.wait().unwrap().success());
    assert_eq!(state.used(), 0);
}

// ---- kernels, streams, events -----------------------------------------------------------

/// Launch `busy` for `ms` milliseconds on `stream` through `launch` (`cuLaunchKernel` or
/// its `_ptsz` variant).
fn busy(
    cu: &Cuda,
    launch: gpuslice_cuda_abi::cuda::sym::cuLaunchKernel,
    f: CUfunction,
    stream: CUstream,
    ms: u64,
) -> CUresult {
    let _ = cu;
    let mut nanos = ms * 1_000_000;
    let mut params = [(&raw mut nanos).cast::<c_void>()];
    // SAFETY: `params` holds one pointer to the u64 `busy` takes, alive for the call.
    unsafe { launch(f, 1, 1, 1, 32, 1, 1, 0, stream, params.as_mut_ptr(), null_mut()) }
}

#[track_caller]
fn about(elapsed: Duration, ms: u64) {
    let want = Duration::from_millis(ms);
    assert!(
        elapsed >= want && elapsed < want + Duration::from_millis(250),
        "took {elapsed:?}, expected about {want:?}"
    );
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn busy_kernels_occupy_their_stream() {
    let name = "busy_kernels_occupy_their_stream";
    if !is_child(name) {
        return Fixture::new(&small_machine("64MiB", "2MiB", "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let (mut module, mut f, mut other) = (null_mut(), null_mut(), null_mut());
    let (mut s1, mut s2, mut start, mut end) = (null_mut(), null_mut(), null_mut(), null_mut());
    let image = c".version 6.0\n.target sm_50\n.visible .entry busy(\n.param .u64 p\n)\n{\nret;\n}\n";
    let opaque = [0u8; 16];
    let busy_name = c("busy");
    // SAFETY: every pointer below is a live local of the type cuda.h names, or deliberately
    // null; handles come from the driver.
    unsafe {
        ok((cu.cuModuleLoadData)(&mut module, image.as_ptr().cast()));
        check((cu.cuModuleLoadData)(&mut module, null()), INVALID_VALUE);
        ok((cu.cuModuleGetFunction)(&mut f, module, busy_name.as_ptr()));
        ok((cu.cuModuleGetFunction)(&mut other, module, busy_name.as_ptr()));
        assert_eq!(f, other);
        check((cu.cuModuleGetFunction)(&mut other, module, c"saxpy".as_ptr()), NOT_FOUND);
        // An image whose kernels cannot be read provides any name.
        let mut unknown = null_mut();
        ok((cu.cuModuleLoadData)(&mut unknown, opaque.as_ptr().cast()));
        ok((cu.cuModuleGetFunction)(&mut other, unknown, c"saxpy".as_ptr()));
        ok((cu.cuModuleUnload)(unknown));
        ok((cu.cuStreamCreate)(&mut s1, 0));
        ok((cu.cuStreamCreate)(&mut s2, 1));
        ok((cu.cuEventCreate)(&mut start, 0));
        ok((cu.cuEventCreate)(&mut end, 0));

        // A launch returns at once; synchronising waits for it.
        let t = Instant::now();
        ok((cu.cuEventRecord)(start, s1));
        ok(busy(&cu, cu.cuLaunchKernel, f, s1, 200));
        ok((cu.cuEventRecord)(end, s1));
        assert!(t.elapsed() < Duration::from_millis(50), "launch blocked for {:?}", t.elapsed());
        check((cu.cuStreamQuery)(s1), NOT_READY);
        check((cu.cuEventQuery)(end), NOT_READY);
        let mut ms = 0f32;
        check((cu.cuEventElapsedTime)(&mut ms, start, end), NOT_READY);
        ok((cu.cuStreamSynchronize)(s1));
        about(t.elapsed(), 200);
        ok((cu.cuStreamQuery)(s1));
        ok((cu.cuEventQuery)(end));
        ok((cu.cuEventElapsedTime_v2)(&mut ms, start, end));
        assert!((199.0..450.0).contains(&ms), "{ms} ms between the events");

        // Work on one stream runs back to back; an event waits for what came before it.
        let t = Instant::now();
        ok(busy(&cu, cu.cuLaunchKernel, f, s1, 100));
        ok(busy(&cu, cu.cuLaunchKernel, f, s1, 100));
        ok((cu.cuEventRecord)(end, s1));
        ok((cu.cuEventSynchronize)(end));
        about(t.elapsed(), 200);

        // Kernels of independent (non-blocking) streams take turns on the device; the
        // context waits for all of them.
        let t = Instant::now();
        ok(busy(&cu, cu.cuLaunchKernel, f, s1, 150));
        ok(busy(&cu, cu.cuLaunchKernel, f, s2, 150));
        ok((cu.cuCtxSynchronize)());
        about(t.elapsed(), 300);

        // The legacy default stream waits for blocking streams, and a synchronous copy for
        // the legacy stream.
        let t = Instant::now();
        ok(busy(&cu, cu.cuLaunchKernel, f, s1, 100));
        ok(busy(&cu, cu.cuLaunchKernel, f, null_mut(), 100));
        let mut p = 0u64;
        let mut byte = [0u8; 1];
        ok((cu.cuMemAlloc_v2)(&mut p, 1));
        ok((cu.cuMemcpyDtoH_v2)(byte.as_mut_ptr().cast(), p, 1));
        about(t.elapsed(), 200);

        // The per-thread default stream, through the _ptsz entry points.
        let t = Instant::now();
        ok(busy(&cu, cu.cuLaunchKernel_ptsz, f, null_mut(), 120));
        ok((cu.cuStreamSynchronize_ptsz)(null_mut()));
        about(t.elapsed(), 120);

        // Bad launches.
        check(busy(&cu, cu.cuLaunchKernel, 0x4321 as CUfunction, s1, 1), INVALID_HANDLE);
        check((cu.cuLaunchKernel)(f, 1, 1, 1, 2048, 1, 1, 0, s1, null_mut(), null_mut()), INVALID_VALUE);
        let mut nanos = 1u64;
        let mut params = [(&raw mut nanos).cast::<c_void>()];
        check((cu.cuLaunchKernel)(f, 1, 1, 1, 2048, 1, 1, 0, s1, params.as_mut_ptr(), null_mut()), INVALID_VALUE);
        check((cu.cuLaunchKernel)(f, 0, 1, 1, 32, 1, 1, 0, s1, params.as_mut_ptr(), null_mut()), INVALID_VALUE);
        // The `extra` form (CU_LAUNCH_PARAM_BUFFER_POINTER = 1, _SIZE = 2, _END = 0): a
        // buffer whose first 8 bytes are the duration.
        let mut size = 8usize;
        let mut extra = [
            std::ptr::without_provenance_mut(1),
            (&raw mut nanos).cast(),
            std::ptr::without_provenance_mut(2),
            (&raw mut size).cast(),
            null_mut(),
        ];
        ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s1, null_mut(), extra.as_mut_ptr()));

        ok((cu.cuEventDestroy_v2)(start));
        check((cu.cuEventDestroy_v2)(start), INVALID_HANDLE);
        ok((cu.cuModuleUnload)(module));
        check((cu.cuModuleUnload)(module), INVALID_HANDLE);
        check(busy(&cu, cu.cuLaunchKernel, f, s1, 1), INVALID_HANDLE);
        ok((cu.cuStreamDestroy_v2)(s1));
        check((cu.cuStreamSynchronize)(s1), INVALID_HANDLE);
    }
}

/// `cudaFree(0)`, which programs call to start the runtime, ends in `cuMemFree_v2(0)`: the real
/// driver accepts it, and so must the simulator (it answered `CUDA_ERROR_INVALID_VALUE`).
#[test]
fn mem_free_of_null_is_accepted() {
    let name = "mem_free_of_null_is_accepted";
    if !is_child(name) {
        return Fixture::new(&small_machine("64MiB", "2MiB", "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    // SAFETY: a null device pointer is what the call is about.
    ok(unsafe { (cu.cuMemFree_v2)(0) });
    assert_eq!(used(&cu), 2 * MIB, "it frees nothing");
}

/// What PyTorch reaches besides the allocation paths: page-locked host memory (charged to no
/// device), the range holding an address, pool attributes kept, stream priorities clamped and
/// answered back, and a feature the H100 lacks answered as a driver does.
#[test]
fn host_memory_address_ranges_pool_attributes_and_priorities_answer_as_a_driver_does() {
    let name = "host_memory_address_ranges_pool_attributes_and_priorities_answer_as_a_driver_does";
    if !is_child(name) {
        return Fixture::new(&small_machine("64MiB", "2MiB", "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);

    let mut host = null_mut::<c_void>();
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemHostAlloc)(&mut host, MIB as usize, 0x2) });
    assert!(!host.is_null());
    assert_eq!(used(&cu), 2 * MIB, "page-locked host memory takes no device memory");
    let mut flags = 0;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemHostGetFlags)(&mut flags, host) });
    assert_eq!(flags, 0x2);
    let mut dptr: CUdeviceptr = 0;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemHostGetDevicePointer_v2)(&mut dptr, host, 0) });
    assert_eq!(dptr, host as CUdeviceptr, "unified addressing: the device pointer is the address");
    // SAFETY: the driver handed out 1 MiB there.
    unsafe { host.cast::<u8>().add(MIB as usize - 1).write(7) };
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemFreeHost)(host) });
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    check(unsafe { (cu.cuMemFreeHost)(host) }, INVALID_VALUE);

    let mut buffer = vec![0u8; 8192];
    let p = buffer.as_mut_ptr().cast::<c_void>();
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemHostRegister_v2)(p, buffer.len(), 0) });
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    check(unsafe { (cu.cuMemHostRegister_v2)(p, buffer.len(), 0) }, CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemHostUnregister)(p) });
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    check(unsafe { (cu.cuMemHostUnregister)(p) }, CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);

    let mut d: CUdeviceptr = 0;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemAlloc_v2)(&mut d, 4 * MIB as usize) });
    let (mut base, mut size) = (0, 0usize);
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemGetAddressRange_v2)(&mut base, &mut size, d + 12345) });
    assert_eq!((base, size), (d, 4 * MIB as usize));
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    check(unsafe { (cu.cuMemGetAddressRange_v2)(&mut base, &mut size, d + 4 * MIB) }, NOT_FOUND);
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemFree_v2)(d) });

    let mut pool: CUmemoryPool = null_mut();
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuDeviceGetDefaultMemPool)(&mut pool, 0) });
    let mut threshold = 3 * MIB;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemPoolSetAttribute)(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&raw mut threshold).cast()) });
    let mut got = 0u64;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemPoolGetAttribute)(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&raw mut got).cast()) });
    assert_eq!(got, 3 * MIB);
    let mut reuse: c_int = 0;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemPoolSetAttribute)(pool, CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC, (&raw mut reuse).cast()) });
    let mut got: c_int = 1;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuMemPoolGetAttribute)(pool, CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC, (&raw mut got).cast()) });
    assert_eq!(got, 0);

    let mut stream: CUstream = null_mut();
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuStreamCreateWithPriority)(&mut stream, 0, -9) });
    let mut priority = 0;
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuStreamGetPriority)(stream, &mut priority) });
    assert_eq!(priority, -5, "clamped to the greatest priority");
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuStreamGetPriority)(null_mut(), &mut priority) });
    assert_eq!(priority, 0, "the default stream's");
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    ok(unsafe { (cu.cuStreamDestroy_v2)(stream) });

    let mut green: CUgreenCtx = null_mut();
    let desc: CUdevResourceDesc = null_mut();
    // SAFETY: live outputs; pointers the driver handed out, or a live buffer.
    check(unsafe { (cu.cuGreenCtxCreate)(&mut green, desc, 0, 0) }, INVALID_VALUE);
    assert!(green.is_null(), "outputs untouched: no descriptor");
}

// ---- fault injection --------------------------------------------------------------------

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn the_nth_allocation_can_be_made_to_fail() {
    let name = "the_nth_allocation_can_be_made_to_fail";
    if !is_child(name) {
        let fx = Fixture::new(&small_machine("64MiB", "2MiB", ""));
        let mut cmd = fx.command(name);
        cmd.env("FAKEGPU_FAIL_ALLOC_AT", "3");
        return run_child(cmd, name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let (mut a, mut b, mut c) = (0u64, 0u64, 0u64);
    let mut handle = 0u64;
    // SAFETY: live outputs.
    unsafe {
        ok((cu.cuMemAlloc_v2)(&mut a, 1));
        ok((cu.cuMemCreate)(&mut handle, (2 * MIB) as usize, &device_prop(0), 0));
        assert_eq!(used(&cu), 6 * MIB);
        check((cu.cuMemAllocAsync)(&mut b, 1, null_mut()), OUT_OF_MEMORY);
        assert_eq!(used(&cu), 6 * MIB, "the failed allocation took nothing");
        ok((cu.cuMemAlloc_v2)(&mut c, 1));
        ok((cu.cuMemAllocAsync)(&mut b, 1, null_mut()));
        assert_eq!(used(&cu), 10 * MIB);
    }
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn freed_addresses_are_reused_when_asked() {
    let name = "freed_addresses_are_reused_when_asked";
    if !is_child(name) {
        let fx = Fixture::new(&small_machine("64MiB", "2MiB", ""));
        let mut cmd = fx.command(name);
        cmd.env("FAKEGPU_REUSE_ADDRESSES", "1");
        return run_child(cmd, name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    let bytes = [9u8; 16];
    let mut back = [1u8; 16];
    // SAFETY: live outputs and buffers of the sizes given.
    unsafe {
        ok((cu.cuMemAlloc_v2)(&mut a, (4 * MIB) as usize));
        ok((cu.cuMemAlloc_v2)(&mut b, (2 * MIB) as usize));
        ok((cu.cuMemcpyHtoD_v2)(a, bytes.as_ptr().cast(), 16));
        ok((cu.cuMemFree_v2)(a));
        ok((cu.cuMemFree_v2)(b));
        assert_eq!(used(&cu), 2 * MIB, "freed memory is not charged while its address waits");
        // The most recent free of the same rounded size comes back first.
        ok((cu.cuMemAlloc_v2)(&mut c, (2 * MIB - 1) as usize));
        assert_eq!(c, b);
        ok((cu.cuMemAlloc_v2)(&mut d, (4 * MIB) as usize));
        assert_eq!(d, a);
        assert_eq!(used(&cu), 8 * MIB);
        ok((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), d, 16));
        assert_eq!(back, [0; 16], "a reused range starts zeroed");
    }
}

#[test]
fn a_call_can_be_held_in_the_driver() {
    let name = "a_call_can_be_held_in_the_driver";
    if !is_child(name) {
        let fx = Fixture::new(&small_machine("64MiB", "2MiB", ""));
        let holds = fx.dir.path().join("holds");
        std::fs::create_dir(&holds).unwrap();
        let mut cmd = fx.command(name);
        cmd.env("FAKEGPU_HOLD", "cuMemAlloc_v2:2").env("FAKEGPU_HOLD_DIR", &holds);
        return run_child(cmd, name).pipe_drop();
    }
    let holds = std::path::PathBuf::from(std::env::var_os("FAKEGPU_HOLD_DIR").unwrap());
    let cu = Cuda::load();
    let ctx = primary(&cu, 0) as usize;
    let mut p = 0u64;
    // SAFETY: a live output. The first call is not the one held.
    ok(unsafe { (cu.cuMemAlloc_v2)(&mut p, 1) });
    std::thread::scope(|scope| {
        let held = scope.spawn(|| {
            let mut q = 0u64;
            // SAFETY: a live context and output.
            ok(unsafe { (cu.cuCtxSetCurrent)(ctx as CUcontext) });
            // SAFETY: a live output.
            ok(unsafe { (cu.cuMemAlloc_v2)(&mut q, 1) });
            q
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !holds.join("cuMemAlloc_v2.held").exists() {
            assert!(Instant::now() < deadline, "the second cuMemAlloc_v2 was never held");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The held call did its work and holds no lock of the driver's: others go on.
        assert_eq!(used(&cu), 6 * MIB);
        assert!(!held.is_finished());
        std::fs::write(holds.join("cuMemAlloc_v2.release"), b"").unwrap();
        assert_ne!(held.join().unwrap(), 0);
    });
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn physical_memory_lives_while_a_handle_mapping_or_exported_descriptor_refers_to_it() {
    let name = "physical_memory_lives_while_a_handle_mapping_or_exported_descriptor_refers_to_it";
    if !is_child(name) {
        return Fixture::new(&small_machine("64MiB", "2MiB", "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let base = 2 * MIB;
    let access = CUmemAccessDesc { location: device_location(0), flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    let (mut h, mut again, mut imported, mut va) = (0u64, 0u64, 0u64, 0u64);
    let mut fd: c_int = -1;
    let bytes = [5u8; 16];
    let mut back = [0u8; 16];
    // SAFETY: live outputs and buffers; handles and addresses come from the driver.
    unsafe {
        ok((cu.cuMemAddressReserve)(&mut va, (8 * MIB) as usize, 0, 0, 0));
        // A handle retained through its mapping needs one release more.
        ok((cu.cuMemCreate)(&mut h, (4 * MIB) as usize, &device_prop(0), 0));
        ok((cu.cuMemMap)(va, (4 * MIB) as usize, 0, h, 0));
        check((cu.cuMemRetainAllocationHandle)(&mut again, (va + 4 * MIB) as *mut c_void), INVALID_VALUE);
        ok((cu.cuMemRetainAllocationHandle)(&mut again, (va + 3 * MIB) as *mut c_void));
        assert_eq!(again, h, "the handle that was mapped");
        ok((cu.cuMemRelease)(h));
        ok((cu.cuMemRelease)(h));
        check((cu.cuMemRelease)(h), INVALID_VALUE);
        assert_eq!(used(&cu), base + 4 * MIB, "still mapped");
        // Mapped but released: retaining makes the handle valid again.
        ok((cu.cuMemRetainAllocationHandle)(&mut again, va as *mut c_void));
        ok((cu.cuMemUnmap)(va, (4 * MIB) as usize));
        assert_eq!(used(&cu), base + 4 * MIB, "still referenced");
        ok((cu.cuMemRelease)(again));
        assert_eq!(used(&cu), base);

        // Exporting needs the handle type at creation; fabric handles are not simulated.
        ok((cu.cuMemCreate)(&mut h, (2 * MIB) as usize, &device_prop(0), 0));
        check((cu.cuMemExportToShareableHandle)((&raw mut fd).cast(), h, POSIX_FD, 0), INVALID_VALUE);
        ok((cu.cuMemRelease)(h));
        ok((cu.cuMemCreate)(&mut h, (2 * MIB) as usize, &shareable_prop(0), 0));
        check((cu.cuMemExportToShareableHandle)((&raw mut fd).cast(), h, FABRIC, 0), NOT_SUPPORTED);
        check((cu.cuMemExportToShareableHandle)((&raw mut fd).cast(), h, POSIX_FD, 1), INVALID_VALUE);
        ok((cu.cuMemExportToShareableHandle)((&raw mut fd).cast(), h, POSIX_FD, 0));
        assert!(fd >= 0);
        // An import in this process is another handle to the same bytes.
        ok((cu.cuMemImportFromShareableHandle)(&mut imported, fd as usize as *mut c_void, POSIX_FD));
        assert_ne!(imported, h);
        check((cu.cuMemImportFromShareableHandle)(&mut again, null_mut(), POSIX_FD), INVALID_VALUE);
        ok((cu.cuMemMap)(va, (2 * MIB) as usize, 0, h, 0));
        ok((cu.cuMemMap)(va + 2 * MIB, (2 * MIB) as usize, 0, imported, 0));
        ok((cu.cuMemSetAccess)(va, (4 * MIB) as usize, &access, 1));
        ok((cu.cuMemcpyHtoD_v2)(va, bytes.as_ptr().cast(), 16));
        ok((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), va + 2 * MIB, 16));
        assert_eq!(back, bytes);
        ok((cu.cuMemUnmap)(va, (4 * MIB) as usize));
        ok((cu.cuMemRelease)(imported));
        // Released and unmapped, the exported descriptor still holds the memory.
        ok((cu.cuMemRelease)(h));
        assert_eq!(used(&cu), base + 2 * MIB, "the exported descriptor is open");
        libc::close(fd);
        assert_eq!(used(&cu), base, "its descriptor closed, the memory is gone");
        ok((cu.cuMemAddressFree)(va, (8 * MIB) as usize));
    }
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn an_exported_descriptor_is_imported_by_another_process() {
    let name = "an_exported_descriptor_is_imported_by_another_process";
    let importer = "an_exported_descriptor_importer";
    if !is_child(name) {
        let fx = Fixture::new(&small_machine("64MiB", "2MiB", ""));
        let mut cmd = fx.command(name);
        cmd.env("IMPORTER_CONFIG", &fx.config_path).env("IMPORTER_STATE", &fx.state_dir);
        return run_child(cmd, name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let (mut h, mut va, mut fd) = (0u64, 0u64, -1 as c_int);
    let access = CUmemAccessDesc { location: device_location(0), flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    let bytes = *b"from the exporter";
    // SAFETY: live outputs and buffers; handles and addresses come from the driver.
    unsafe {
        ok((cu.cuMemCreate)(&mut h, (2 * MIB) as usize, &shareable_prop(0), 0));
        ok((cu.cuMemAddressReserve)(&mut va, (2 * MIB) as usize, 0, 0, 0));
        ok((cu.cuMemMap)(va, (2 * MIB) as usize, 0, h, 0));
        ok((cu.cuMemSetAccess)(va, (2 * MIB) as usize, &access, 1));
        ok((cu.cuMemcpyHtoD_v2)(va, bytes.as_ptr().cast(), bytes.len()));
        ok((cu.cuMemExportToShareableHandle)((&raw mut fd).cast(), h, POSIX_FD, 0));
        // Passed to the importer by inheritance.
        assert_eq!(libc::fcntl(fd, libc::F_SETFD, 0), 0);
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([importer, "--exact", "--nocapture", "--test-threads=1"])
        .env("FAKEGPU_TEST_CHILD", importer)
        .env("FAKEGPU_CONFIG", std::env::var_os("IMPORTER_CONFIG").unwrap())
        .env("FAKEGPU_STATE_DIR", std::env::var_os("IMPORTER_STATE").unwrap())
        .env("IMPORT_FD", fd.to_string())
        .env("WANT_BYTES", std::str::from_utf8(&bytes).unwrap());
    run_child(cmd, importer);
    // The importer's context came and went; the memory is the exporter's alone.
    assert_eq!(used(&cu), 4 * MIB);
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn an_exported_descriptor_importer() {
    if !is_child("an_exported_descriptor_importer") {
        return; // run by an_exported_descriptor_is_imported_by_another_process
    }
    let fd: c_int = std::env::var("IMPORT_FD").unwrap().parse().unwrap();
    let want = std::env::var("WANT_BYTES").unwrap();
    let cu = Cuda::load();
    primary(&cu, 0);
    let (mut h, mut va) = (0u64, 0u64);
    let access = CUmemAccessDesc { location: device_location(0), flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    let mut back = vec![0u8; want.len()];
    // SAFETY: live outputs and buffers; handles and addresses come from the driver.
    unsafe {
        ok((cu.cuMemImportFromShareableHandle)(&mut h, fd as usize as *mut c_void, POSIX_FD));
        assert_eq!(used(&cu), 6 * MIB, "both contexts and the exporter's 2 MiB; the import adds nothing");
        ok((cu.cuMemAddressReserve)(&mut va, (2 * MIB) as usize, 0, 0, 0));
        ok((cu.cuMemMap)(va, (2 * MIB) as usize, 0, h, 0));
        ok((cu.cuMemSetAccess)(va, (2 * MIB) as usize, &access, 1));
        ok((cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), va, back.len()));
        assert_eq!(back, want.as_bytes());
        ok((cu.cuMemUnmap)(va, (2 * MIB) as usize));
        ok((cu.cuMemRelease)(h));
    }
}

// ---- every launch path, graphs and capture ------------------------------------------------

const MS: u64 = 1_000_000;

/// `busy`'s parameter array for a duration in `nanos` (which must outlive the launch call).
fn busy_params(nanos: &mut u64) -> [*mut c_void; 1] {
    [(nanos as *mut u64).cast::<c_void>()]
}

/// Device time GPU `tl` gave this process in `[from, now)`.
fn mine(tl: &DeviceTimeline, from: u64) -> u64 {
    let pid = std::process::id();
    tl.by_process(from, u64::MAX).iter().filter(|p| p.pid == pid).map(|p| p.busy_ns).sum()
}

fn state_dir() -> std::path::PathBuf {
    std::env::var_os("FAKEGPU_STATE_DIR").unwrap().into()
}

/// Load `busy` in the current context.
fn busy_function(cu: &Cuda) -> CUfunction {
    let (mut module, mut f) = (null_mut(), null_mut());
    let image = [0u8; 16];
    // SAFETY: live outputs and a NUL-terminated name.
    ok(unsafe { (cu.cuModuleLoadData)(&mut module, image.as_ptr().cast()) });
    // SAFETY: as above.
    ok(unsafe { (cu.cuModuleGetFunction)(&mut f, module, c"busy".as_ptr()) });
    f
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn every_launch_path_takes_its_turn_on_the_device() {
    let name = "every_launch_path_takes_its_turn_on_the_device";
    if !is_child(name) {
        return Fixture::new(&config_with(2, "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    let ctx1 = primary(&cu, 1);
    let f1 = busy_function(&cu);
    let ctx0 = primary(&cu, 0);
    let f = busy_function(&cu);
    let tl = DeviceTimeline::open(&state_dir(), 0).unwrap();
    let tl1 = DeviceTimeline::open(&state_dir(), 1).unwrap();
    let (mut s, mut s1, mut a, mut b) = (null_mut(), null_mut(), null_mut(), null_mut());
    let mut nanos = 5 * MS;
    let mut params = busy_params(&mut nanos);
    // SAFETY: every pointer below is a live local of the type cuda.h names, or deliberately
    // null or invalid; handles come from the driver.
    unsafe {
        ok((cu.cuStreamCreate)(&mut s, 0));
        ok((cu.cuEventCreate)(&mut a, 0));
        ok((cu.cuEventCreate)(&mut b, 0));
        let t0 = timeline::now();

        // cuLaunchKernel(_ptsz): 5 ms each on GPU 0.
        ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, params.as_mut_ptr(), null_mut()));
        ok((cu.cuLaunchKernel_ptsz)(f, 1, 1, 1, 32, 1, 1, 0, null_mut(), params.as_mut_ptr(), null_mut()));
        ok((cu.cuCtxSynchronize)());
        assert_eq!(mine(&tl, t0), 10 * MS);

        // cuLaunchKernelEx(_ptsz): shape and stream from the config; attributes are read.
        let mut attrs = [int_attribute(8, 0), int_attribute(CU_LAUNCH_ATTRIBUTE_COOPERATIVE, 1)];
        let mut config = CUlaunchConfig {
            gridDimX: 2,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 64,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: s,
            attrs: attrs.as_mut_ptr(),
            numAttrs: 2,
        };
        ok((cu.cuLaunchKernelEx)(&config, f, params.as_mut_ptr(), null_mut()));
        config.hStream = null_mut();
        ok((cu.cuLaunchKernelEx_ptsz)(&config, f, params.as_mut_ptr(), null_mut()));
        ok((cu.cuCtxSynchronize)());
        assert_eq!(mine(&tl, t0), 20 * MS);
        // Cooperative (the second attribute): no more blocks than the device holds at once,
        // 32 per SM of 132 SMs here.
        (config.gridDimX, config.blockDimX) = (132 * 32 + 1, 1);
        check((cu.cuLaunchKernelEx)(&config, f, params.as_mut_ptr(), null_mut()), COOPERATIVE_LAUNCH_TOO_LARGE);
        config.numAttrs = 1;
        let mut zero = 0u64;
        let mut quick = busy_params(&mut zero);
        ok((cu.cuLaunchKernelEx)(&config, f, quick.as_mut_ptr(), null_mut()));
        config.attrs = null_mut();
        check((cu.cuLaunchKernelEx)(&config, f, quick.as_mut_ptr(), null_mut()), INVALID_VALUE);
        check((cu.cuLaunchKernelEx)(null(), f, quick.as_mut_ptr(), null_mut()), INVALID_VALUE);

        // cuLaunchCooperativeKernel(_ptsz).
        ok((cu.cuLaunchCooperativeKernel)(f, 132, 1, 1, 1024, 1, 1, 0, s, params.as_mut_ptr()));
        ok((cu.cuLaunchCooperativeKernel_ptsz)(f, 1, 1, 1, 32, 1, 1, 0, null_mut(), params.as_mut_ptr()));
        let too_many = (cu.cuLaunchCooperativeKernel)(f, 133 * 2, 1, 1, 1024, 1, 1, 0, s, params.as_mut_ptr());
        check(too_many, COOPERATIVE_LAUNCH_TOO_LARGE);
        check((cu.cuLaunchCooperativeKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, null_mut()), INVALID_VALUE);
        ok((cu.cuCtxSynchronize)());
        assert_eq!(mine(&tl, t0), 30 * MS);

        // cuLaunchCooperativeKernelMultiDevice: one kernel per device. By default they start
        // together, once every stream's earlier work is done, and later work on each stream
        // waits for all of them.
        ok((cu.cuCtxSetCurrent)(ctx1));
        ok((cu.cuStreamCreate)(&mut s1, 0));
        ok((cu.cuCtxSetCurrent)(ctx0));
        let (mut eight, mut four) = (8 * MS, 4 * MS);
        let (mut p8, mut p4) = (busy_params(&mut eight), busy_params(&mut four));
        let launch = |f: CUfunction, stream: CUstream, p: *mut *mut c_void| CUDA_LAUNCH_PARAMS {
            function: f,
            gridDimX: 1,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 32,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: stream,
            kernelParams: p,
        };
        let t1 = timeline::now();
        ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, params.as_mut_ptr(), null_mut()));
        let mut list = [launch(f, s, p8.as_mut_ptr()), launch(f1, s1, p4.as_mut_ptr())];
        ok((cu.cuLaunchCooperativeKernelMultiDevice)(list.as_mut_ptr(), 2, 0));
        ok((cu.cuEventRecord)(a, s));
        ok((cu.cuEventRecord)(b, s1));
        ok((cu.cuEventSynchronize)(a));
        ok((cu.cuEventSynchronize)(b));
        assert_eq!((mine(&tl, t1), mine(&tl1, t1)), (13 * MS, 4 * MS), "one kernel on each device");
        let start1 = tl1.by_process(t1, u64::MAX)[0].last_ns - 4 * MS;
        assert_eq!(tl1.busy(t1, start1), 0, "device 1 waited for stream s's earlier work");
        assert!(start1 >= t1 + 5 * MS);
        let mut ms = -1f32;
        ok((cu.cuEventElapsedTime)(&mut ms, a, b));
        assert_eq!(ms, 0.0, "both streams wait for the longer kernel");
        // Without the post-launch sync, s1's later work waits for its own kernel only.
        ok((cu.cuLaunchCooperativeKernelMultiDevice)(list.as_mut_ptr(), 2, 2));
        ok((cu.cuEventRecord)(a, s));
        ok((cu.cuEventRecord)(b, s1));
        ok((cu.cuEventSynchronize)(a));
        ok((cu.cuEventSynchronize)(b));
        ok((cu.cuEventElapsedTime)(&mut ms, a, b));
        assert!((ms + 4.0).abs() < 0.01, "{ms} ms: s1 is done 4 ms before s");
        // One device twice, a default stream, a function of another context, no launches,
        // unknown flags, different shapes.
        let mut bad = [launch(f, s, p4.as_mut_ptr()), launch(f, s, p4.as_mut_ptr())];
        check((cu.cuLaunchCooperativeKernelMultiDevice)(bad.as_mut_ptr(), 2, 0), INVALID_VALUE);
        bad = [launch(f, null_mut(), p4.as_mut_ptr()), launch(f1, s1, p4.as_mut_ptr())];
        check((cu.cuLaunchCooperativeKernelMultiDevice)(bad.as_mut_ptr(), 2, 0), INVALID_VALUE);
        bad = [launch(f1, s, p4.as_mut_ptr()), launch(f, s1, p4.as_mut_ptr())];
        check((cu.cuLaunchCooperativeKernelMultiDevice)(bad.as_mut_ptr(), 2, 0), INVALID_VALUE);
        check((cu.cuLaunchCooperativeKernelMultiDevice)(list.as_mut_ptr(), 0, 0), INVALID_VALUE);
        check((cu.cuLaunchCooperativeKernelMultiDevice)(list.as_mut_ptr(), 2, 4), INVALID_VALUE);
        list[1].blockDimX = 64;
        check((cu.cuLaunchCooperativeKernelMultiDevice)(list.as_mut_ptr(), 2, 0), INVALID_VALUE);
    }
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn graphs_run_their_nodes_in_order_and_captures_run_nothing() {
    let name = "graphs_run_their_nodes_in_order_and_captures_run_nothing";
    if !is_child(name) {
        return Fixture::new(&config_with(1, "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let f = busy_function(&cu);
    let tl = DeviceTimeline::open(&state_dir(), 0).unwrap();
    let (mut s, mut a, mut b, mut e) = (null_mut(), null_mut(), null_mut(), null_mut());
    let (mut graph, mut exec, mut n1, mut n2, mut n3) = (null_mut(), null_mut(), null_mut(), null_mut(), null_mut());
    let (mut d2, mut d3, mut d4) = (2 * MS, 3 * MS, 4 * MS);
    let (mut p2, mut p3, mut p4) = (busy_params(&mut d2), busy_params(&mut d3), busy_params(&mut d4));
    // Queued ahead of an event, so that what follows the event starts exactly when it
    // completes, however late this thread gets to launch it.
    let mut ahead = 100 * MS;
    let mut p_ahead = busy_params(&mut ahead);
    let node = |p: *mut *mut c_void| CUDA_KERNEL_NODE_PARAMS {
        func: f,
        gridDimX: 1,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: 32,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        kernelParams: p,
        extra: null_mut(),
        kern: null_mut(),
        ctx: null_mut(),
    };
    let mut status = 99;
    // SAFETY: every pointer below is a live local of the type cuda.h names, or deliberately
    // null or invalid; handles come from the driver.
    unsafe {
        ok((cu.cuStreamCreate)(&mut s, 0));
        for ev in [&mut a, &mut b, &mut e] {
            ok((cu.cuEventCreate)(ev, 0));
        }
        // Three nodes in a chain, through both variants; parameters are read when added.
        check((cu.cuGraphCreate)(&mut graph, 1), INVALID_VALUE);
        ok((cu.cuGraphCreate)(&mut graph, 0));
        // The v1 struct is the v2 one without its last two members.
        let first = node(p2.as_mut_ptr());
        ok((cu.cuGraphAddKernelNode)(&mut n1, graph, null(), 0, (&raw const first).cast()));
        ok((cu.cuGraphAddKernelNode_v2)(&mut n2, graph, &n1, 1, &node(p3.as_mut_ptr())));
        ok((cu.cuGraphAddKernelNode_v2)(&mut n3, graph, [n1, n2].as_ptr(), 2, &node(p4.as_mut_ptr())));
        p2[0].cast::<u64>().write(100 * MS); // the node keeps the 2 ms it was given
        let stranger = 0x5555 as CUgraphNode;
        check((cu.cuGraphAddKernelNode_v2)(&mut n3, graph, &stranger, 1, &node(p4.as_mut_ptr())), INVALID_VALUE);
        check(
            (cu.cuGraphAddKernelNode_v2)(&mut n3, graph, [n1, n1].as_ptr(), 2, &node(p4.as_mut_ptr())),
            INVALID_VALUE,
        );
        let mut kernelless = node(p4.as_mut_ptr());
        kernelless.func = null_mut();
        check((cu.cuGraphAddKernelNode_v2)(&mut n3, graph, null(), 0, &kernelless), INVALID_VALUE);
        check((cu.cuGraphInstantiateWithFlags)(&mut exec, graph, 2), INVALID_VALUE);
        ok((cu.cuGraphInstantiateWithFlags)(&mut exec, graph, 0));

        // Each launch runs 2 + 3 + 4 ms on the device, after the previous one.
        let t0 = timeline::now();
        ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, p_ahead.as_mut_ptr(), null_mut()));
        ok((cu.cuEventRecord)(a, s));
        ok((cu.cuGraphLaunch)(exec, s));
        ok((cu.cuGraphLaunch_ptsz)(exec, null_mut()));
        ok((cu.cuEventRecord)(b, s));
        ok((cu.cuCtxSynchronize)());
        assert_eq!(mine(&tl, t0), 100 * MS + 18 * MS);
        let mut ms = 0f32;
        ok((cu.cuEventElapsedTime)(&mut ms, a, b));
        assert!((ms - 9.0).abs() < 0.001, "{ms} ms: the stream's launch, the per-thread one after it");
        // The executable graph outlives its graph; the older instantiate forms work too.
        let (mut exec2, mut exec3, mut error_node) = (null_mut(), null_mut(), 0x77 as CUgraphNode);
        let mut log = [1 as c_char; 8];
        ok((cu.cuGraphInstantiate)(&mut exec2, graph, &mut error_node, log.as_mut_ptr(), 8));
        assert!(error_node.is_null() && log[0] == 0);
        ok((cu.cuGraphInstantiate_v2)(&mut exec3, graph, null_mut(), null_mut(), 0));
        ok((cu.cuGraphDestroy)(graph));
        check((cu.cuGraphDestroy)(graph), INVALID_VALUE);
        let t1 = timeline::now();
        ok((cu.cuGraphLaunch)(exec3, s));
        ok((cu.cuStreamSynchronize)(s));
        assert_eq!(mine(&tl, t1), 9 * MS);
        for x in [exec, exec2, exec3] {
            ok((cu.cuGraphExecDestroy)(x));
        }
        check((cu.cuGraphLaunch)(exec, s), INVALID_VALUE);

        // Capture: kernels (any launch path) and event records become nodes; nothing runs.
        check((cu.cuStreamBeginCapture_v2)(null_mut(), 0), STREAM_CAPTURE_UNSUPPORTED);
        check((cu.cuStreamEndCapture)(s, &mut graph), ILLEGAL_STATE);
        ok((cu.cuStreamBeginCapture_v2)(s, 0));
        check((cu.cuStreamBeginCapture_v2)(s, 0), ILLEGAL_STATE);
        ok((cu.cuStreamIsCapturing)(s, &mut status));
        assert_eq!(status, 1);
        let t2 = timeline::now();
        ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, p3.as_mut_ptr(), null_mut()));
        ok((cu.cuEventRecord)(e, s));
        check((cu.cuEventQuery)(e), CAPTURED_EVENT);
        let config = CUlaunchConfig {
            gridDimX: 1,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 1,
            blockDimY: 1,
            blockDimZ: 1,
            hStream: s,
            ..Default::default()
        };
        ok((cu.cuLaunchKernelEx)(&config, f, p4.as_mut_ptr(), null_mut()));
        ok((cu.cuLaunchCooperativeKernel)(f, 1, 1, 1, 1, 1, 1, 0, s, p4.as_mut_ptr()));
        // Ending the capture on another thread: not in global mode.
        let (s_addr, end) = (s as usize, cu.cuStreamEndCapture);
        let other = std::thread::spawn(move || {
            let mut g = null_mut();
            end(s_addr as CUstream, &mut g)
        });
        check(other.join().unwrap(), STREAM_CAPTURE_WRONG_THREAD);
        ok((cu.cuStreamEndCapture)(s, &mut graph));
        assert_eq!(mine(&tl, t2), 0, "nothing ran while capturing");
        ok((cu.cuStreamIsCapturing)(s, &mut status));
        assert_eq!(status, 0);
        ok((cu.cuGraphInstantiateWithFlags)(&mut exec, graph, 0));
        ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, p_ahead.as_mut_ptr(), null_mut()));
        ok((cu.cuEventRecord)(a, s));
        ok((cu.cuGraphLaunch)(exec, s));
        ok((cu.cuStreamSynchronize)(s));
        assert_eq!(mine(&tl, t2), 100 * MS + 11 * MS, "3 + 4 + 4 ms after the 100");
        ok((cu.cuEventElapsedTime)(&mut ms, a, e));
        assert!((ms - 3.0).abs() < 0.001, "{ms} ms: the captured event ran after the first kernel");
        ok((cu.cuGraphExecDestroy)(exec));
        ok((cu.cuGraphDestroy)(graph));

        // Synchronising a capturing stream fails and invalidates the capture.
        ok((cu.cuStreamBeginCapture)(s));
        check((cu.cuStreamSynchronize)(s), STREAM_CAPTURE_UNSUPPORTED);
        ok((cu.cuStreamIsCapturing)(s, &mut status));
        assert_eq!(status, 2);
        check((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, p3.as_mut_ptr(), null_mut()), STREAM_CAPTURE_INVALIDATED);
        graph = 0x99 as CUgraph;
        check((cu.cuStreamEndCapture)(s, &mut graph), STREAM_CAPTURE_INVALIDATED);
        assert!(graph.is_null());
        // The per-thread default stream captures; a graph launched on a capturing stream is
        // captured too.
        ok((cu.cuStreamBeginCapture_v2_ptsz)(null_mut(), 2));
        ok((cu.cuLaunchKernel_ptsz)(f, 1, 1, 1, 32, 1, 1, 0, null_mut(), p3.as_mut_ptr(), null_mut()));
        ok((cu.cuStreamIsCapturing_ptsz)(null_mut(), &mut status));
        assert_eq!(status, 1);
        ok((cu.cuStreamEndCapture_ptsz)(null_mut(), &mut graph));
        ok((cu.cuGraphInstantiateWithFlags)(&mut exec, graph, 0));
        ok((cu.cuStreamBeginCapture_v2)(s, 1));
        ok((cu.cuGraphLaunch)(exec, s));
        ok((cu.cuGraphLaunch)(exec, s));
        ok((cu.cuStreamEndCapture)(s, &mut graph));
        ok((cu.cuGraphInstantiateWithFlags)(&mut exec2, graph, 0));
        let t3 = timeline::now();
        ok((cu.cuGraphLaunch)(exec2, s));
        ok((cu.cuStreamSynchronize)(s));
        assert_eq!(mine(&tl, t3), 6 * MS);
    }
}

#[test]
fn events_bracket_device_time() {
    let name = "events_bracket_device_time";
    if !is_child(name) {
        return Fixture::new(&config_with(1, "")).run(name).pipe_drop();
    }
    let cu = Cuda::load();
    primary(&cu, 0);
    let f = busy_function(&cu);
    let (mut s, mut start, mut end) = (null_mut(), null_mut(), null_mut());
    let (mut warm_up, mut twenty) = (200 * MS, 20 * MS);
    let (mut pw, mut p20) = (busy_params(&mut warm_up), busy_params(&mut twenty));
    let mut ms = 0f32;
    // SAFETY: live locals of the types cuda.h names; handles come from the driver.
    unsafe {
        ok((cu.cuStreamCreate)(&mut s, 0));
        ok((cu.cuEventCreate)(&mut start, 0));
        ok((cu.cuEventCreate)(&mut end, 0));
        // A kernel ahead of the start event, so that the bracketed ones queue back to back
        // however slowly this thread gets to launch them.
        ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, pw.as_mut_ptr(), null_mut()));
        ok((cu.cuEventRecord)(start, s));
        for _ in 0..10 {
            ok((cu.cuLaunchKernel)(f, 1, 1, 1, 32, 1, 1, 0, s, p20.as_mut_ptr(), null_mut()));
        }
        ok((cu.cuEventRecord)(end, s));
        ok((cu.cuEventSynchronize)(end));
        ok((cu.cuEventElapsedTime_v2)(&mut ms, start, end));
    }
    assert!((ms - 200.0).abs() <= 2.0, "{ms} ms between events around 200 ms of kernels");
}
