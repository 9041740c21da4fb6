//! The CUDA driver API subset gpuslice's shim intercepts, exported with `cuda.h`'s C ABI (the
//! types generated from NVIDIA's headers in `gpuslice_cuda_abi`) so that `libfakegpu.so` can
//! stand in as `libcuda.so.1`.
//!
//! One request end to end: the CUDA runtime `dlopen`s `libcuda.so.1`, looks up
//! `cuGetProcAddress_v2` with `dlsym`, and asks it for `"cuMemAlloc"` at version 13000.
//! [`proc_address`] asks the table generated from NVIDIA's `cudaTypedefs.h`
//! (`gpuslice_cuda_abi::proc`) which symbol that selects, `cuMemAlloc_v2`, and hands back
//! the address of its own export of that symbol (the very address `dlsym` gives). Calling it
//! runs the export's body inside [`boundary`], which turns a panic into
//! `CUDA_ERROR_UNKNOWN` and checks that `cuInit` succeeded; the body checks the output
//! pointer, and [`memory`] charges the rounded size to the GPU's shared state
//! ([`crate::state`]), where every process (and NVML) sees it, and backs the allocation
//! with real host memory so that copies move bytes.
//!
//! NVIDIA's runtime (libcudart 12.9 and 13.x) goes further: before its first public call it
//! asks `cuGetExportTable` ([`dark_api`]) for private tables (the primary context of each
//! device, context-local storage for its per-context state, an integrity check it
//! verifies), registers its fat binaries as libraries ([`library`], [`modules`], whose kernel
//! names come from [`image`]) and launches their `CUkernel`s. `FAKEGPU_TRACE=1` ([`trace`])
//! prints every lookup and call, which is how what it needs was found.
//!
//! Bookkeeping (contexts, allocations, streams, …) lives in one [`Registry`] behind one
//! lock; a thread never sleeps holding it (see [`launch`]).

mod capture;
mod context;
mod context_info;
mod dark_api;
mod device;
pub mod error;
mod exports;
mod ffi;
mod graph;
mod graph_memory;
mod green;
pub mod hold;
mod image;
mod integrity;
mod interop;
mod launch;
mod library;
mod memory;
mod modules;
mod not_supported;
pub mod proc_address;
mod stream;
pub mod trace;
pub mod types;

use std::ffi::{CStr, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

pub use error::{CUresult, CuResult};

use crate::config::ConfigError;
use crate::state::{DeviceState, Simulator, StateError};

/// Environment variable: the Nth device allocation of the process fails with
/// `CUDA_ERROR_OUT_OF_MEMORY` (1-based).
pub const FAIL_ALLOC_AT_ENV: &str = "FAKEGPU_FAIL_ALLOC_AT";

/// Environment variable: `1` makes `cuMemAlloc*` hand out the addresses `cuMemFree` gave
/// back first (most recent first, same rounded size).
pub const REUSE_ADDRESSES_ENV: &str = "FAKEGPU_REUSE_ADDRESSES";

/// Environment variable (fault injection): when the library is loaded, its constructor calls
/// its own exported `cuMemGetInfo_v2` (null pointers, so nothing happens) through the dynamic
/// linker, `dlsym(RTLD_DEFAULT, …)`, as real drivers call their own exports while they load.
/// A preloaded interposer then sees a call into one of its exports during the `dlopen` that
/// loads the driver. The only value understood is `cuMemGetInfo_v2`.
pub const CONSTRUCTOR_CALL_ENV: &str = "FAKEGPU_CONSTRUCTOR_CALL";

#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;

/// The library's constructor: nothing unless [`CONSTRUCTOR_CALL_ENV`] asks for the call.
extern "C" fn constructor() {
    let _ = catch_unwind(|| {
        let Some(name) = std::env::var_os(CONSTRUCTOR_CALL_ENV) else { return };
        if name != "cuMemGetInfo_v2" {
            eprintln!("fakegpu: {CONSTRUCTOR_CALL_ENV}={name:?}: only cuMemGetInfo_v2 is understood");
            return;
        }
        // SAFETY: dlsym with a valid C string.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cuMemGetInfo_v2".as_ptr()) };
        if f.is_null() {
            return;
        }
        // SAFETY: the global scope's cuMemGetInfo_v2 has cuda.h's signature for it.
        let f = unsafe { std::mem::transmute::<*mut c_void, gpuslice_cuda_abi::cuda::sym::cuMemGetInfo_v2>(f) };
        // SAFETY: null outputs are allowed (the call answers CUDA_ERROR_INVALID_VALUE or
        // CUDA_ERROR_NOT_INITIALIZED).
        let rc = unsafe { f(std::ptr::null_mut(), std::ptr::null_mut()) };
        eprintln!("fakegpu: constructor called cuMemGetInfo_v2: {rc}");
    });
}

/// A handle the driver hands out (`CUcontext`, `CUstream`, …) as a number: never 0, and
/// never 1 or 2, which are the special stream handles.
pub(crate) type Handle = usize;

/// A fresh handle, distinct from every other this process hands out.
pub(crate) fn new_handle() -> Handle {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Spaced like heap addresses, which is what callers are used to.
    (NEXT.fetch_add(1, Ordering::Relaxed) + 1) << 8
}

/// The process's driver, once `cuInit` has succeeded.
pub(crate) struct Driver {
    pub sim: &'static Simulator,
    registry: Mutex<Registry>,
}

/// Everything the driver tracks in this process.
pub(crate) struct Registry {
    pub contexts: context::Contexts,
    pub memory: memory::Memory,
    pub streams: stream::Streams,
    pub modules: modules::Modules,
    pub graphs: graph::Graphs,
    pub graph_memory: graph_memory::GraphMemory,
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);
static DRIVER: OnceLock<Driver> = OnceLock::new();

impl Registry {
    /// The host address of `len` device bytes at `ptr`: inside an allocation or mapping
    /// ([`memory::Memory::span`]) or a module's `__device__` variable.
    pub fn span(&self, ptr: u64, len: u64, write: bool) -> CuResult<*mut u8> {
        self.memory.span(ptr, len, write).or_else(|e| self.modules.global_span(ptr, len).ok_or(e))
    }
}

impl Driver {
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// CUDA device `index`'s shared memory state (a MIG device's own).
    pub fn device(&self, index: u32) -> &'static DeviceState {
        let sim: &'static Simulator = self.sim;
        sim.cuda_state(index).expect("a CUDA device ordinal the driver handed out")
    }
}

/// The driver, or `CUDA_ERROR_NOT_INITIALIZED` before a successful `cuInit`.
pub(crate) fn driver() -> CuResult<&'static Driver> {
    if !INITIALIZED.load(Ordering::Acquire) {
        return Err(error::NOT_INITIALIZED);
    }
    DRIVER.get().ok_or(error::NOT_INITIALIZED)
}

/// The machine, loaded on first use; what `cuInit` answers if it cannot be.
fn machine() -> CuResult<&'static Simulator> {
    Simulator::global().map_err(|err| {
        eprintln!("fakegpu: loading the simulated GPU failed: {err}");
        match err {
            StateError::Config(ConfigError::Unset) => error::NO_DEVICE,
            _ => error::UNKNOWN,
        }
    })
}

/// `cuInit`: load the machine; fail as the config's `cuda_init_error` says, or with
/// `CUDA_ERROR_NO_DEVICE` when it has no GPU.
pub(crate) fn init(flags: u32) -> CuResult {
    if flags != 0 {
        return Err(error::INVALID_VALUE);
    }
    let sim = machine()?;
    if let Some(name) = &sim.config().cuda_init_error {
        return Err(error::code_by_name(name).unwrap_or(error::UNKNOWN));
    }
    if sim.cuda_devices().is_empty() {
        return Err(error::NO_DEVICE);
    }
    DRIVER.get_or_init(|| {
        let devices = sim.cuda_devices().len();
        let registry = Registry {
            contexts: context::Contexts::new(devices),
            memory: memory::Memory::new(devices),
            streams: stream::Streams::default(),
            modules: modules::Modules::default(),
            graphs: graph::Graphs::default(),
            graph_memory: graph_memory::GraphMemory::default(),
        };
        Driver { sim, registry: Mutex::new(registry) }
    });
    INITIALIZED.store(true, Ordering::Release);
    Ok(())
}

/// `cuDriverGetVersion`: the config's `cuda_version`.
pub(crate) fn driver_version() -> CuResult<i32> {
    Ok(machine()?.config().cuda_version)
}

/// `cuGetProcAddress(_v2)`: see [`proc_address`]. On failure `*pfn` is null.
pub(crate) fn get_proc_address(
    symbol: &CStr,
    pfn: ffi::Out<*mut c_void>,
    cuda_version: c_int,
    flags: u64,
    status: Option<ffi::Out<types::CUdriverProcAddressQueryResult>>,
) -> CuResult {
    use gpuslice_cuda_abi::proc::{LEGACY_STREAM as LEGACY, PER_THREAD_DEFAULT_STREAM as PER_THREAD};
    if flags & !(LEGACY | PER_THREAD) != 0 {
        pfn.set(std::ptr::null_mut());
        return Err(error::INVALID_VALUE);
    }
    // The driver has nothing newer than itself. (Quietly: the runtime asks hundreds of
    // times, and cuInit reports a machine that cannot be loaded.)
    let version = Simulator::global().map_or(cuda_version, |sim| cuda_version.min(sim.config().cuda_version));
    let found = symbol
        .to_str()
        .map_err(|_| proc_address::Lookup::SymbolNotFound)
        .and_then(|name| proc_address::entry(name, version, flags));
    let (address, code, query) = match found {
        Ok(entry) => ((entry.address)(), error::SUCCESS, types::CU_GET_PROC_ADDRESS_SUCCESS),
        Err(proc_address::Lookup::VersionNotSufficient) => {
            (std::ptr::null_mut(), error::NOT_FOUND, types::CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT)
        }
        Err(_) => (std::ptr::null_mut(), error::NOT_FOUND, types::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
    };
    let into = pfn.as_ptr();
    trace::line(|| {
        let answer = match found {
            Ok(entry) => entry.symbol.to_owned(),
            Err(proc_address::Lookup::VersionNotSufficient) => "not found (VERSION_NOT_SUFFICIENT)".to_owned(),
            Err(_) => "not found (SYMBOL_NOT_FOUND)".to_owned(),
        };
        format!("cuGetProcAddress({symbol:?}, {cuda_version}, flags {flags}) = {answer} (into {into:p})")
    });
    pfn.set(address);
    if let Some(status) = status {
        status.set(query);
    }
    self::code(code)
}

/// A `CUresult` (say from calling another export) as a `CuResult`.
pub(crate) fn code(code: CUresult) -> CuResult {
    if code == error::SUCCESS { Ok(()) } else { Err(code) }
}

/// Run an export's body: checks `cuInit` first unless `before_init`, and turns a panic into
/// `CUDA_ERROR_UNKNOWN`, never an unwind into C.
pub(crate) fn boundary(before_init: bool, body: impl FnOnce() -> CuResult) -> CUresult {
    let run = || {
        if !before_init {
            driver()?;
        }
        body()
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(())) => error::SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => error::UNKNOWN,
    }
}
