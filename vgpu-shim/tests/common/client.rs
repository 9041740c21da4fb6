//! A CUDA program written in Rust: the test binary itself, run again in a slice with the shim
//! preloaded (see [`Node::client`]), driving the driver from several threads, which the C
//! probe does not.
//!
//! The child finds the driver as a program does, `dlopen("libcuda.so.1")` and `dlsym`, so
//! every call goes through the shim's wrappers. It prints `key=value` lines for the parent.

use std::ffi::{CString, c_void};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{Node, stderr, stdout};

use gpuslice_cuda_abi::cuda::sym;
pub use gpuslice_cuda_abi::cuda::*;
use gpuslice_cuda_abi::nvml;

pub const SUCCESS: CUresult = CUDA_SUCCESS;
pub const INVALID_VALUE: CUresult = CUDA_ERROR_INVALID_VALUE;
pub const OUT_OF_MEMORY: CUresult = CUDA_ERROR_OUT_OF_MEMORY;
/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`.
pub const POSIX_FD: CUmemAllocationHandleType = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;

/// The environment variable naming the test a child runs.
const CHILD_ENV: &str = "GPUSLICE_TEST_CLIENT";

/// `true` in the child that [`Node::client`] started for test `name`.
pub fn is_client(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

impl Node {
    /// This test binary, running test `name` alone, in the slice's view with the shim
    /// preloaded (as [`Node::command`]); [`is_client`] is true in it.
    pub fn client(&self, name: &str) -> Command {
        let exe = std::env::current_exe().unwrap();
        let mut c = self.command(&exe, &[name, "--exact", "--nocapture", "--test-threads=1"]);
        c.env(CHILD_ENV, name);
        c
    }
}

/// Runs a client and requires that test `name` ran in it and passed.
pub fn run_client(mut cmd: Command, name: &str) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success() && stdout(&out).contains("test result: ok. 1 passed"),
        "client for {name} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Prints `key=value` on a line of its own (libtest has printed the test's name before).
pub fn report(key: &str, value: impl std::fmt::Display) {
    println!("\n{key}={value}");
}

/// `CU_MEM_LOCATION_TYPE_DEVICE` 0.
pub fn device0() -> CUmemLocation {
    let mut l = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, ..Default::default() };
    l.__bindgen_anon_1.id = 0;
    l
}

/// Pinned memory on device 0, exportable as a POSIX file descriptor.
pub fn device0_prop() -> CUmemAllocationProp {
    CUmemAllocationProp {
        type_: CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: POSIX_FD,
        location: device0(),
        ..Default::default()
    }
}

/// Read and write access from device 0.
pub fn read_write() -> CUmemAccessDesc {
    CUmemAccessDesc { location: device0(), flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE }
}

macro_rules! driver {
    ($($name:ident;)*) => {
        /// The driver's functions as the shim hands them out, typed as `cuda.h` declares them.
        #[allow(non_snake_case)]
        pub struct Cuda {
            $(pub $name: sym::$name,)*
        }

        impl Cuda {
            pub fn load() -> Self {
                // SAFETY: loading the (simulated) driver, as any CUDA program does.
                let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
                assert!(!handle.is_null(), "dlopen libcuda.so.1");
                Self {
                    $($name: {
                        let name = CString::new(stringify!($name)).unwrap();
                        // SAFETY: a handle from dlopen and a NUL-terminated name.
                        let f = unsafe { libc::dlsym(handle, name.as_ptr()) };
                        assert!(!f.is_null(), "{} is not exported", stringify!($name));
                        // SAFETY: the function of that name, whose signature is cuda.h's.
                        unsafe { std::mem::transmute::<*mut c_void, sym::$name>(f) }
                    },)*
                }
            }
        }
    };
}

driver! {
    cuInit;
    cuDevicePrimaryCtxRetain;
    cuDevicePrimaryCtxRelease_v2;
    cuDevicePrimaryCtxReset;
    cuDevicePrimaryCtxReset_v2;
    cuDeviceGetDefaultMemPool;
    cuCtxSetCurrent;
    cuCtxCreate_v2;
    cuCtxDestroy_v2;
    cuCtxGetCurrent;
    cuMemAlloc_v2;
    cuMemFree_v2;
    cuMemAllocManaged;
    cuMemAllocPitch_v2;
    cuMemAllocAsync;
    cuMemFreeAsync;
    cuMemPoolGetAttribute;
    cuArrayCreate_v2;
    cuArrayDestroy;
    cuMipmappedArrayCreate;
    cuStreamSynchronize;
    cuMemGetInfo_v2;
    cuMemCreate;
    cuMemRelease;
    cuMemAddressReserve;
    cuMemAddressFree;
    cuMemMap;
    cuMemUnmap;
    cuMemSetAccess;
    cuMemcpyHtoD_v2;
    cuMemcpyDtoH_v2;
    cuMemRetainAllocationHandle;
    cuMemExportToShareableHandle;
    cuMemImportFromShareableHandle;
}

// SAFETY: plain function pointers, callable from any thread (the driver API is thread-safe).
unsafe impl Sync for Cuda {}

#[track_caller]
pub fn check_ok(rc: CUresult) {
    assert_eq!(rc, SUCCESS, "CUresult {rc}");
}

impl Cuda {
    /// `cuInit`, then retain device 0's primary context and make it current; returns it.
    pub fn start() -> (Cuda, usize) {
        let cu = Cuda::load();
        let mut ctx = std::ptr::null_mut();
        // SAFETY: live outputs.
        unsafe {
            check_ok((cu.cuInit)(0));
            check_ok((cu.cuDevicePrimaryCtxRetain)(&mut ctx, 0));
            check_ok((cu.cuCtxSetCurrent)(ctx));
        }
        (cu, ctx as usize)
    }

    /// Makes `ctx` current on the calling thread.
    pub fn enter(&self, ctx: usize) {
        // SAFETY: a context the driver handed out.
        check_ok(unsafe { (self.cuCtxSetCurrent)(ctx as CUcontext) });
    }

    /// Bytes of the slice in use as `cuMemGetInfo` shows them: total − free.
    pub fn used(&self) -> u64 {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: live outputs.
        check_ok(unsafe { (self.cuMemGetInfo_v2)(&mut free, &mut total) });
        (total - free) as u64
    }

    pub fn alloc(&self, size: u64) -> Result<u64, CUresult> {
        let mut p = 0u64;
        // SAFETY: a live output.
        match unsafe { (self.cuMemAlloc_v2)(&mut p, size as usize) } {
            SUCCESS => Ok(p),
            rc => Err(rc),
        }
    }

    pub fn free(&self, p: u64) {
        // SAFETY: an address the driver handed out (or not: the driver says so).
        check_ok(unsafe { (self.cuMemFree_v2)(p) });
    }

    /// `cuMemCreate` of `size` bytes on device 0.
    pub fn create(&self, size: u64) -> Result<u64, CUresult> {
        let mut h = 0u64;
        // SAFETY: a live output and property struct.
        match unsafe { (self.cuMemCreate)(&mut h, size as usize, &device0_prop(), 0) } {
            SUCCESS => Ok(h),
            rc => Err(rc),
        }
    }

    pub fn release(&self, h: u64) {
        // SAFETY: a handle the driver handed out.
        check_ok(unsafe { (self.cuMemRelease)(h) });
    }

    /// A reservation of `size` bytes of address space.
    pub fn reserve(&self, size: u64) -> u64 {
        let mut va = 0u64;
        // SAFETY: a live output.
        check_ok(unsafe { (self.cuMemAddressReserve)(&mut va, size as usize, 0, 0, 0) });
        va
    }

    pub fn map(&self, va: u64, size: u64, h: u64) {
        // SAFETY: an address range reserved and a handle, both from the driver.
        check_ok(unsafe { (self.cuMemMap)(va, size as usize, 0, h, 0) });
    }

    pub fn unmap(&self, va: u64, size: u64) {
        // SAFETY: a mapped range.
        check_ok(unsafe { (self.cuMemUnmap)(va, size as usize) });
    }
}

/// Waits until `path` exists.
#[track_caller]
pub fn wait_for(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {within:?}", path.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Where a held call's files are: `FAKEGPU_HOLD_DIR`.
pub fn hold_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("FAKEGPU_HOLD_DIR").expect("FAKEGPU_HOLD_DIR"))
}

/// What slice `name` has in use, read from its region as the client sees it.
pub fn slice_usage(name: &str) -> u64 {
    let dir = std::env::var_os("GPUSLICE_STATE_DIR").expect("GPUSLICE_STATE_DIR");
    let region = gpuslice_core::region::Region::open(&gpuslice_core::region::region_path(Path::new(&dir), name));
    region.unwrap().usage().unwrap()
}

/// NVML's memory query for device 0, as a program finds it (`dlopen` + `dlsym`, through the
/// shim): (total, used).
pub struct Nvml {
    device: nvml::nvmlDevice_t,
    get_memory_info: nvml::sym::nvmlDeviceGetMemoryInfo,
}

// SAFETY: an NVML device handle and a function pointer; NVML is thread-safe.
unsafe impl Sync for Nvml {}

impl Nvml {
    pub fn load() -> Nvml {
        // SAFETY: loading the (simulated) NVML, as any NVML program does.
        let handle = unsafe { libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen libnvidia-ml.so.1");
        let sym = |name: &std::ffi::CStr| {
            // SAFETY: a handle from dlopen and a NUL-terminated name.
            let f = unsafe { libc::dlsym(handle, name.as_ptr()) };
            assert!(!f.is_null(), "{name:?} is not exported");
            f
        };
        // SAFETY: the functions of those names, with nvml.h's signatures.
        unsafe {
            let init = std::mem::transmute::<*mut c_void, nvml::sym::nvmlInit_v2>(sym(c"nvmlInit_v2"));
            let by_index = std::mem::transmute::<*mut c_void, nvml::sym::nvmlDeviceGetHandleByIndex_v2>(sym(
                c"nvmlDeviceGetHandleByIndex_v2",
            ));
            assert_eq!(init(), nvml::NVML_SUCCESS);
            let mut device = std::ptr::null_mut();
            assert_eq!(by_index(0, &mut device), nvml::NVML_SUCCESS);
            let get_memory_info =
                std::mem::transmute::<*mut c_void, nvml::sym::nvmlDeviceGetMemoryInfo>(sym(c"nvmlDeviceGetMemoryInfo"));
            Nvml { device, get_memory_info }
        }
    }

    /// `nvmlDeviceGetMemoryInfo`: (total, used).
    pub fn memory(&self) -> (u64, u64) {
        let mut m = nvml::nvmlMemory_t::default();
        // SAFETY: a device handle from NVML and a live `nvmlMemory_t`.
        assert_eq!(unsafe { (self.get_memory_info)(self.device, &mut m) }, nvml::NVML_SUCCESS);
        (m.total, m.used)
    }
}
