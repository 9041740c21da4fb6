//! What NVIDIA's runtime needs from a driver beyond the public API: the private export tables,
//! libraries and `CUkernel` launches, fat binaries, context settings. (`tests/cudart` runs the
//! real runtime on the simulator; these tests pin each piece down on its own.)
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// A UUID as the runtime passes it: its bytes in the order written.
fn uuid(hex: &str) -> CUuuid {
    let digits: String = hex.chars().filter(|c| *c != '-').collect();
    let mut out = CUuuid { bytes: [0; 16] };
    for (i, b) in out.bytes.iter_mut().enumerate() {
        *b = i8::from_ne_bytes([u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap()]);
    }
    out
}

/// The table `id` names: its slots (as many as `slots`), or the error.
fn table(cu: &Cuda, id: &str, slots: usize) -> Result<Vec<*const c_void>, CUresult> {
    let mut t = null();
    let id = uuid(id);
    // SAFETY: a live output and a 16-byte id.
    let r = unsafe { (cu.cuGetExportTable)(&mut t, &id) };
    if r != SUCCESS {
        assert!(t.is_null(), "a failed lookup leaves the table null");
        return Err(r);
    }
    // SAFETY: the driver's tables hold at least `slots` pointers (checked against their size
    // slot by the callers).
    Ok(unsafe { std::slice::from_raw_parts(t.cast::<*const c_void>(), slots) }.to_vec())
}

/// Slot `i` of a table as a function of type `F`.
///
/// # Safety
///
/// The slot holds a function of that signature.
unsafe fn slot<F: Copy>(t: &[*const c_void], i: usize) -> F {
    assert!(!t[i].is_null(), "slot {i} is null");
    assert_eq!(size_of::<F>(), size_of::<*const c_void>());
    // SAFETY: per the caller.
    unsafe { std::mem::transmute_copy(&t[i]) }
}

const RUNTIME_INTERFACE: &str = "6bd5fb6c-5bf4-e74a-8987-d93912fd9df9";
const TOOLS_CALLBACK_HOOKS: &str = "a094798c-2e74-2e74-93f2-0800200c0a66";
const CONTEXT_LOCAL_STORAGE: &str = "c693336e-1121-df11-a8c3-68f355d89593";
const CONTEXT_CHECKS: &str = "263e8860-7cd2-6143-92f6-bbd5006dfa7e";
const INTEGRITY_CHECK: &str = "d4082055-bde6-704b-8d34-ba123c66e1f2";
/// What NVIDIA's runtime asks for first and must not get.
const STARTUP_PROBE: &str = "f8cff951-2146-8b4e-b9e2-fb469e7c0dd9";

type LocalDestructor = extern "C" fn(CUcontext, *mut c_void, *mut c_void);

/// What the destructor saw: calls, context, key, value, and whether the context was still
/// active when it ran.
static DESTRUCTED: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
/// `cuDevicePrimaryCtxGetState`, for the destructor.
static GET_STATE: AtomicUsize = AtomicUsize::new(0);

extern "C" fn destructor(ctx: CUcontext, key: *mut c_void, value: *mut c_void) {
    let (mut flags, mut active) = (0, 0);
    // SAFETY: the test stores the export's address before any destructor can run.
    let get_state: unsafe extern "C" fn(CUdevice, *mut c_uint, *mut c_int) -> CUresult =
        unsafe { std::mem::transmute(GET_STATE.load(Ordering::SeqCst)) };
    // SAFETY: live outputs; the driver is initialised by the test.
    let r = unsafe { get_state(0, &mut flags, &mut active) };
    DESTRUCTED[0].fetch_add(1, Ordering::SeqCst);
    DESTRUCTED[1].store(ctx as usize, Ordering::SeqCst);
    DESTRUCTED[2].store(key as usize, Ordering::SeqCst);
    DESTRUCTED[3].store(value as usize, Ordering::SeqCst);
    DESTRUCTED[4].store(usize::from(r == SUCCESS && active == 1), Ordering::SeqCst);
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn export_tables_answer_as_nvidias_runtime_needs() {
    let name = "export_tables_answer_as_nvidias_runtime_needs";
    if !is_child(name) {
        Fixture::new(&config_with(2, "")).run(name);
        return;
    }
    let cu = &Cuda::load();
    GET_STATE.store(cu.cuDevicePrimaryCtxGetState as usize, Ordering::SeqCst);
    // SAFETY: every pointer below is a live local of the type the slot's signature names;
    // slots are called with the signatures the simulator's README gives them.
    unsafe {
        ok((cu.cuInit)(0));
        assert_eq!(table(cu, STARTUP_PROBE, 1), Err(NOT_FOUND));

        // The runtime interface: its size, and the primary context without retaining it.
        let rt = table(cu, RUNTIME_INTERFACE, 13).unwrap();
        assert_eq!(rt[0] as usize, 13 * 8);
        let primary: extern "C" fn(*mut CUcontext, c_int) -> CUresult = slot(&rt, 2);
        let (mut h0, mut h1, mut retained) = (null_mut(), null_mut(), null_mut());
        ok(primary(&mut h0, 0));
        ok(primary(&mut h1, 1));
        check(primary(&mut h1, 2), INVALID_DEVICE);
        assert!(!h0.is_null() && h0 != h1);
        let (mut flags, mut active) = (9, 9);
        ok((cu.cuDevicePrimaryCtxGetState)(0, &mut flags, &mut active));
        assert_eq!((flags, active), (0, 0), "handed out, not started");
        ok((cu.cuCtxSetCurrent)(h0));
        ok((cu.cuDevicePrimaryCtxRetain)(&mut retained, 0));
        assert_eq!(retained, h0, "the same handle once retained");

        // Tools: buffers of 1024 and 14 zeroed words (no tool subscribed).
        let hooks = table(cu, TOOLS_CALLBACK_HOOKS, 7).unwrap();
        assert_eq!(hooks[0] as usize, 7 * 8);
        for (i, want) in [(2, 1024), (6, 14)] {
            let get: extern "C" fn(*mut *mut u32, *mut usize) = slot(&hooks, i);
            let (mut buf, mut len) = (null_mut(), 0);
            get(&mut buf, &mut len);
            assert_eq!(len, want);
            assert!(std::slice::from_raw_parts(buf, len).iter().all(|&w| w == 0));
        }

        // Context checks: nothing special about any context.
        let checks = table(cu, CONTEXT_CHECKS, 4).unwrap();
        let check_ctx: extern "C" fn(CUcontext, *mut u32, *mut *const c_void) -> CUresult = slot(&checks, 2);
        let mut bits = 7u32;
        ok(check_ctx(h0, &mut bits, null_mut()));
        assert_eq!(bits, 0);

        // Integrity check: constants for versions ending in 0 and 1, a hash otherwise.
        let integrity = table(cu, INTEGRITY_CHECK, 3).unwrap();
        let hash: extern "C" fn(u32, u64, *mut [u64; 2]) -> CUresult = slot(&integrity, 1);
        let mut out = [0u64; 2];
        ok(hash(12090, 1_700_000_000, &mut out));
        assert_eq!(out, [0x3341_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8]);
        ok(hash(13051, 1_700_000_000, &mut out));
        assert_eq!(out, [0x1841_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8]);
        ok(hash(13052, 1_700_000_000, &mut out));
        let first = out;
        ok(hash(13052, 1_700_000_001, &mut out));
        assert_ne!(first, out, "the time is part of the hash");

        // Context-local storage: values per context and key; destructors run before a reset
        // takes the context away, and the reset context starts empty.
        let cls = table(cu, CONTEXT_LOCAL_STORAGE, 3).unwrap();
        let put: extern "C" fn(CUcontext, *mut c_void, *mut c_void, Option<LocalDestructor>) -> CUresult =
            slot(&cls, 0);
        let delete: extern "C" fn(CUcontext, *mut c_void) -> CUresult = slot(&cls, 1);
        let get: extern "C" fn(*mut *mut c_void, CUcontext, *mut c_void) -> CUresult = slot(&cls, 2);
        let (key, other, value) = (0x1000 as *mut c_void, 0x2000 as *mut c_void, 0x3000 as *mut c_void);
        let mut v = null_mut();
        check(get(&mut v, null_mut(), key), INVALID_HANDLE);
        ok(put(null_mut(), key, value, None));
        ok(get(&mut v, h0, key));
        assert_eq!(v, value, "null is the current context");
        check(get(&mut v, null_mut(), other), INVALID_HANDLE);
        ok(delete(h0, key));
        check(get(&mut v, h0, key), INVALID_HANDLE);
        check(put(h1, key, value, None), INVALID_CONTEXT);
        ok(put(h0, key, value, Some(destructor)));
        ok((cu.cuDevicePrimaryCtxReset_v2)(0));
        let seen: Vec<usize> = DESTRUCTED.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        assert_eq!(seen, [1, h0 as usize, key as usize, value as usize, 1]);
        check(get(&mut v, h0, key), INVALID_HANDLE);
        ok((cu.cuDevicePrimaryCtxRelease_v2)(0));
    }
}

/// A fat binary (`fatBinaryHeader` and one uncompressed PTX entry) and its wrapper
/// (`__fatBinC_Wrapper_t`), as nvcc lays them out.
struct FatBinary {
    data: Vec<u64>,
    wrapper: [u64; 3],
}

impl FatBinary {
    fn of_ptx(ptx: &str) -> Box<Self> {
        let mut payload = ptx.as_bytes().to_vec();
        payload.resize((payload.len() + 1).next_multiple_of(8), 0);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0xBA55_ED50u32.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(&(64 + payload.len() as u64).to_le_bytes());
        let mut entry = [0u8; 64];
        entry[0..2].copy_from_slice(&1u16.to_le_bytes());
        entry[2..4].copy_from_slice(&0x101u16.to_le_bytes());
        entry[4..8].copy_from_slice(&64u32.to_le_bytes());
        entry[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        entry[40..48].copy_from_slice(&0x11u64.to_le_bytes());
        bytes.extend_from_slice(&entry);
        bytes.extend_from_slice(&payload);
        let data: Vec<u64> = bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let mut fb = Box::new(Self { data, wrapper: [0; 3] });
        fb.wrapper = [0x4662_43B1 | 1 << 32, fb.data.as_ptr() as u64, 0];
        fb
    }
}

const KERNELS_PTX: &str = ".version 6.0\n.target sm_50\n.address_size 64\n\
    .visible .entry _Z4busyy(\n.param .u64 ns\n)\n{\nret;\n}\n.visible .entry _Z4idlev()\n{\nret;\n}\n";

const MS: u64 = 1_000_000;

/// Milliseconds of device time between two events around `launch` on the legacy stream.
fn timed(cu: &Cuda, launch: impl FnOnce() -> CUresult) -> f32 {
    let (mut start, mut end, mut ms) = (null_mut(), null_mut(), 0f32);
    // SAFETY: live outputs; events made here.
    unsafe {
        ok((cu.cuEventCreate)(&mut start, 0));
        ok((cu.cuEventCreate)(&mut end, 0));
        ok((cu.cuEventRecord)(start, null_mut()));
        ok(launch());
        ok((cu.cuEventRecord)(end, null_mut()));
        ok((cu.cuEventSynchronize)(end));
        ok((cu.cuEventElapsedTime)(&mut ms, start, end));
        ok((cu.cuEventDestroy_v2)(start));
        ok((cu.cuEventDestroy_v2)(end));
    }
    ms
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn libraries_lend_their_kernels_and_launches_take_device_time() {
    let name = "libraries_lend_their_kernels_and_launches_take_device_time";
    if !is_child(name) {
        Fixture::new(&config_with(1, "")).run(name);
        return;
    }
    let cu = Cuda::load();
    let fatbin = FatBinary::of_ptx(KERNELS_PTX);
    let (mut ctx, mut lib, mut busy, mut idle, mut f, mut g, mut module) =
        (null_mut(), null_mut(), null_mut(), null_mut(), null_mut(), null_mut(), null_mut());
    let mut nanos = 150 * MS;
    let mut params = [(&raw mut nanos).cast::<c_void>()];
    // SAFETY: every pointer below is a live local of the type cuda.h names; handles come
    // from the driver; the fat binary outlives the library.
    unsafe {
        ok((cu.cuInit)(0));
        ok((cu.cuDevicePrimaryCtxRetain)(&mut ctx, 0));
        ok((cu.cuCtxSetCurrent)(ctx));
        let wrapper = fatbin.wrapper.as_ptr().cast::<c_void>();
        ok((cu.cuLibraryLoadData)(&mut lib, wrapper, null_mut(), null_mut(), 0, null_mut(), null_mut(), 0));
        ok((cu.cuLibraryGetKernel)(&mut busy, lib, c"_Z4busyy".as_ptr()));
        let mut again = null_mut();
        ok((cu.cuLibraryGetKernel)(&mut again, lib, c"_Z4busyy".as_ptr()));
        assert_eq!(busy, again);
        check((cu.cuLibraryGetKernel)(&mut again, lib, c"saxpy".as_ptr()), NOT_FOUND);
        ok((cu.cuLibraryGetKernel)(&mut idle, lib, c"_Z4idlev".as_ptr()));
        let mut name: *const c_char = null();
        ok((cu.cuKernelGetName)(&mut name, busy));
        assert_eq!(CStr::from_ptr(name), c"_Z4busyy");

        // A CUkernel straight to cuLaunchKernel (CUDA 13's runtime does this): `busy` takes
        // its first parameter in ns of device time, any other kernel a few microseconds.
        let busy_f = busy.cast::<CUfunc_st>();
        let ms = timed(&cu, || {
            (cu.cuLaunchKernel)(busy_f, 1, 1, 1, 1, 1, 1, 0, null_mut(), params.as_mut_ptr(), null_mut())
        });
        assert!((149.0..160.0).contains(&ms), "busy took {ms} ms of device time");
        ok((cu.cuKernelGetFunction)(&mut f, idle));
        let ms = timed(&cu, || (cu.cuLaunchKernel)(f, 1, 1, 1, 1, 1, 1, 0, null_mut(), null_mut(), null_mut()));
        assert!((0.005..2.0).contains(&ms), "idle took {ms} ms");
        ok((cu.cuLibraryGetModule)(&mut module, lib));
        ok((cu.cuModuleGetFunction)(&mut g, module, c"_Z4idlev".as_ptr()));
        assert_eq!(f, g, "the kernel's function is the library's module's");
        let mut regs = 0;
        ok((cu.cuFuncGetAttribute)(&mut regs, CU_FUNC_ATTRIBUTE_NUM_REGS, f));
        assert_eq!(regs, 32);

        // A graph node naming the CUkernel (func null, kern set).
        let mut graph = null_mut();
        let mut node = null_mut();
        let mut exec = null_mut();
        ok((cu.cuGraphCreate)(&mut graph, 0));
        let mut node_nanos = 80 * MS;
        let mut node_params = [(&raw mut node_nanos).cast::<c_void>()];
        let p = CUDA_KERNEL_NODE_PARAMS_v2 {
            func: null_mut(),
            gridDimX: 1,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 1,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            kernelParams: node_params.as_mut_ptr(),
            extra: null_mut(),
            kern: busy,
            ctx: null_mut(),
        };
        ok((cu.cuGraphAddKernelNode_v2)(&mut node, graph, null(), 0, &p));
        ok((cu.cuGraphInstantiateWithFlags)(&mut exec, graph, 0));
        let ms = timed(&cu, || (cu.cuGraphLaunch)(exec, null_mut()));
        assert!((79.0..90.0).contains(&ms), "the graph took {ms} ms");

        // Unloading the library takes its kernels and functions with it.
        ok((cu.cuLibraryUnload)(lib));
        check(
            (cu.cuLaunchKernel)(busy_f, 1, 1, 1, 1, 1, 1, 0, null_mut(), params.as_mut_ptr(), null_mut()),
            INVALID_HANDLE,
        );
        check((cu.cuLaunchKernel)(f, 1, 1, 1, 1, 1, 1, 0, null_mut(), null_mut(), null_mut()), INVALID_HANDLE);
        check((cu.cuLibraryUnload)(lib), INVALID_HANDLE);
    }
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw driver calls, all under one contract")]
fn context_settings_are_kept_and_answered() {
    let name = "context_settings_are_kept_and_answered";
    if !is_child(name) {
        Fixture::new(&config_with(1, "")).run(name);
        return;
    }
    let cu = Cuda::load();
    let mut ctx = null_mut();
    let (mut flags, mut version, mut limit) = (0 as c_uint, 0 as c_uint, 0usize);
    let (mut least, mut greatest) = (9, 9);
    // SAFETY: live outputs; handles from the driver.
    unsafe {
        ok((cu.cuInit)(0));
        // cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync) before the context starts.
        ok((cu.cuDevicePrimaryCtxSetFlags_v2)(0, 4));
        check((cu.cuDevicePrimaryCtxSetFlags_v2)(0, 3), INVALID_VALUE);
        ok((cu.cuDevicePrimaryCtxRetain)(&mut ctx, 0));
        ok((cu.cuCtxSetCurrent)(ctx));
        ok((cu.cuCtxGetFlags)(&mut flags));
        assert_eq!(flags, 4);
        ok((cu.cuCtxGetApiVersion)(null_mut(), &mut version));
        assert_eq!(version, 3020);
        ok((cu.cuCtxGetLimit)(&mut limit, CU_LIMIT_STACK_SIZE));
        assert_eq!(limit, 1024);
        ok((cu.cuCtxSetLimit)(CU_LIMIT_STACK_SIZE, 4096));
        ok((cu.cuCtxGetLimit)(&mut limit, CU_LIMIT_STACK_SIZE));
        assert_eq!(limit, 4096);
        check((cu.cuCtxGetLimit)(&mut limit, 99), CUDA_ERROR_UNSUPPORTED_LIMIT);
        ok((cu.cuCtxGetStreamPriorityRange)(&mut least, &mut greatest));
        assert_eq!((least, greatest), (0, -5));
    }
}
