//! The NVML subset gpuslice uses, exported with NVML's C ABI.
//!
//! Every export is a thin wrapper, declared once in `exports!`, that catches panics and
//! turns a `Result` into an `nvmlReturn_t`. Behaviour follows the real library where a
//! caller can tell: calls before `nvmlInit*` answer `NVML_ERROR_UNINITIALIZED`, init is
//! reference-counted, null pointers and unknown handles are `NVML_ERROR_INVALID_ARGUMENT`,
//! short buffers are `NVML_ERROR_INSUFFICIENT_SIZE`, and versioned structs are checked.
//! A device handle is the address of the GPU's [`DeviceState`]; it is compared against the
//! known addresses and never dereferenced.

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::mem::offset_of;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

use gpuslice_cuda_abi::nvml::{
    NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_ENABLE, NVML_ERROR_ARGUMENT_VERSION_MISMATCH, NVML_ERROR_GPU_NOT_FOUND,
    NVML_ERROR_INSUFFICIENT_SIZE, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_UNINITIALIZED, NVML_ERROR_UNKNOWN, NVML_GPU_FABRIC_STATE_NOT_SUPPORTED,
    NVML_INIT_FLAG_NO_GPUS, NVML_P2P_STATUS_NOT_SUPPORTED, NVML_SUCCESS, nvmlDevice_t, nvmlGpuFabricInfoV_t,
    nvmlGpuFabricState_t, nvmlGpuP2PCapsIndex_t, nvmlGpuP2PStatus_t, nvmlIntNvLinkDeviceType_t, nvmlMemory_t,
    nvmlMemory_v2_t, nvmlPciInfo_t, nvmlProcessInfo_v1_t, nvmlProcessInfo_v2_t, nvmlProcessUtilizationSample_t,
    nvmlReturn_t, nvmlUtilization_t,
};
use gpuslice_cuda_abi::nvml::{
    NVML_GPU_UTILIZATION_SAMPLES, NVML_MEMORY_UTILIZATION_SAMPLES, NVML_SAMPLINGTYPE_COUNT,
    NVML_VALUE_TYPE_UNSIGNED_INT, nvmlBAR1Memory_t, nvmlProcessDetail_v1_t, nvmlProcessDetailList_v1_t,
    nvmlProcessUtilizationInfo_v1_t, nvmlProcessesUtilizationInfo_v1_t, nvmlSample_t, nvmlSamplingType_t, nvmlValue_t,
    nvmlValueType_t,
};

use gpuslice_cuda_abi::nvml::nvmlDeviceAttributes_t;

use crate::config::{ConfigError, GpuConfig, MAX_MIG_DEVICES, MigInstanceConfig, PciBusId};
use crate::state::{DeviceState, ProcessMemory, Simulator, StateError};
use crate::timeline::DeviceTimeline;

type NvmlResult<T = ()> = Result<T, nvmlReturn_t>;

const SUCCESS: nvmlReturn_t = NVML_SUCCESS;
const UNINITIALIZED: nvmlReturn_t = NVML_ERROR_UNINITIALIZED;
const INVALID_ARGUMENT: nvmlReturn_t = NVML_ERROR_INVALID_ARGUMENT;
const NOT_SUPPORTED: nvmlReturn_t = NVML_ERROR_NOT_SUPPORTED;
const NOT_FOUND: nvmlReturn_t = NVML_ERROR_NOT_FOUND;
const INSUFFICIENT_SIZE: nvmlReturn_t = NVML_ERROR_INSUFFICIENT_SIZE;
const LIBRARY_NOT_FOUND: nvmlReturn_t = NVML_ERROR_LIBRARY_NOT_FOUND;
const ARGUMENT_VERSION_MISMATCH: nvmlReturn_t = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
const GPU_NOT_FOUND: nvmlReturn_t = NVML_ERROR_GPU_NOT_FOUND;
const UNKNOWN: nvmlReturn_t = NVML_ERROR_UNKNOWN;

/// Every NVML return code: its `nvml.h` name without `NVML_ERROR_`, and `nvmlErrorString`'s
/// text.
const RETURN_CODES: &[(nvmlReturn_t, &str, &CStr)] = &[
    (SUCCESS, "SUCCESS", c"Success"),
    (UNINITIALIZED, "UNINITIALIZED", c"Uninitialized"),
    (INVALID_ARGUMENT, "INVALID_ARGUMENT", c"Invalid Argument"),
    (NOT_SUPPORTED, "NOT_SUPPORTED", c"Not Supported"),
    (4, "NO_PERMISSION", c"Insufficient Permissions"),
    (5, "ALREADY_INITIALIZED", c"Already Initialized"),
    (NOT_FOUND, "NOT_FOUND", c"Not Found"),
    (INSUFFICIENT_SIZE, "INSUFFICIENT_SIZE", c"Insufficient Size"),
    (8, "INSUFFICIENT_POWER", c"Insufficient External Power"),
    (9, "DRIVER_NOT_LOADED", c"Driver Not Loaded"),
    (10, "TIMEOUT", c"Timeout"),
    (11, "IRQ_ISSUE", c"Interrupt request issue"),
    (LIBRARY_NOT_FOUND, "LIBRARY_NOT_FOUND", c"NVML Shared Library Not Found"),
    (13, "FUNCTION_NOT_FOUND", c"Function Not Found"),
    (14, "CORRUPTED_INFOROM", c"Corrupted infoROM"),
    (15, "GPU_IS_LOST", c"GPU is lost"),
    (16, "RESET_REQUIRED", c"GPU requires restart"),
    (17, "OPERATING_SYSTEM", c"The operating system has blocked the request"),
    (18, "LIB_RM_VERSION_MISMATCH", c"RM has detected an NVML/RM version mismatch"),
    (19, "IN_USE", c"In use by another client"),
    (20, "MEMORY", c"Insufficient Memory"),
    (21, "NO_DATA", c"No data"),
    (
        22,
        "VGPU_ECC_NOT_SUPPORTED",
        c"The requested vgpu operation is not available on target device, because ECC is enabled",
    ),
    (23, "INSUFFICIENT_RESOURCES", c"Insufficient resources"),
    (24, "FREQ_NOT_SUPPORTED", c"Frequency not supported"),
    (ARGUMENT_VERSION_MISMATCH, "ARGUMENT_VERSION_MISMATCH", c"Argument version mismatch"),
    (26, "DEPRECATED", c"Deprecated"),
    (27, "NOT_READY", c"Not ready"),
    (GPU_NOT_FOUND, "GPU_NOT_FOUND", c"No supported GPUs were found"),
    (29, "INVALID_STATE", c"Invalid state"),
    (30, "RESET_TYPE_NOT_SUPPORTED", c"Reset type not supported"),
    (UNKNOWN, "UNKNOWN", c"Unknown Error"),
];

/// The error code named `name` (`"DRIVER_NOT_LOADED"` or `"NVML_ERROR_DRIVER_NOT_LOADED"`);
/// `None` for unknown names and for success.
pub fn return_code_by_name(name: &str) -> Option<nvmlReturn_t> {
    let name = name.strip_prefix("NVML_ERROR_").unwrap_or(name);
    RETURN_CODES.iter().find(|(code, n, _)| *n == name && *code != SUCCESS).map(|(code, _, _)| *code)
}

/// What `nvmlInit*` answers when the machine cannot be loaded.
fn load_error_code(err: &StateError) -> nvmlReturn_t {
    match err {
        StateError::Config(ConfigError::Unset) => LIBRARY_NOT_FOUND,
        StateError::Config(ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::Invalid { .. })
        | StateError::Io { .. }
        | StateError::Corrupt { .. }
        | StateError::Mismatch { .. } => UNKNOWN,
    }
}

/// Successful `nvmlInit*` calls not yet matched by `nvmlShutdown`.
static INIT_COUNT: AtomicU32 = AtomicU32::new(0);

/// Run an export's body: panics become `NVML_ERROR_UNKNOWN`, never an unwind into C.
fn boundary(body: impl FnOnce() -> NvmlResult) -> nvmlReturn_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => UNKNOWN,
    }
}

/// The machine, once NVML is initialized.
fn initialized() -> NvmlResult<&'static Simulator> {
    if INIT_COUNT.load(Ordering::Acquire) == 0 {
        return Err(UNINITIALIZED);
    }
    Simulator::global().map_err(load_error_code)
}

fn handle_of(device: &DeviceState) -> nvmlDevice_t {
    ptr::from_ref(device).cast_mut().cast()
}

/// The GPU a handle names; unknown handles are `INVALID_ARGUMENT`.
fn device(handle: nvmlDevice_t) -> NvmlResult<(&'static DeviceState, &'static GpuConfig)> {
    let sim = initialized()?;
    sim.devices()
        .iter()
        .zip(&sim.config().gpu)
        .find(|(state, _)| ptr::eq(handle_of(state), handle))
        .ok_or(INVALID_ARGUMENT)
}

/// A MIG device a handle names: its memory, its config, its parent's index and config.
struct Mig {
    state: &'static DeviceState,
    config: &'static MigInstanceConfig,
    position: usize,
    parent: u32,
    gpu: &'static GpuConfig,
}

impl Mig {
    fn gpu_instance_id(&self) -> c_uint {
        self.config.gpu_instance_id(self.position)
    }
}

/// The MIG device a handle names, if it names one.
fn mig(handle: nvmlDevice_t) -> NvmlResult<Option<Mig>> {
    let sim = initialized()?;
    for (index, gpu) in (0u32..).zip(&sim.config().gpu) {
        for (position, state) in sim.migs(index).iter().enumerate() {
            if ptr::eq(handle_of(state), handle) {
                return Ok(Some(Mig { state, config: &gpu.mig[position], position, parent: index, gpu }));
            }
        }
    }
    Ok(None)
}

/// The processes holding memory on a GPU, with the GPU and compute instance IDs of the MIG
/// device they are on (`NO_INSTANCE` for the GPU itself).
fn processes_with_instances(state: &DeviceState) -> NvmlResult<Vec<(ProcessMemory, c_uint, c_uint)>> {
    let sim = initialized()?;
    let mut out: Vec<_> = state.processes().into_iter().map(|p| (p, NO_INSTANCE, NO_INSTANCE)).collect();
    let gpu = &sim.config().gpu[state.index() as usize];
    for (position, mig) in sim.migs(state.index()).iter().enumerate() {
        let config = &gpu.mig[position];
        out.extend(
            mig.processes().into_iter().map(|p| (p, config.gpu_instance_id(position), config.compute_instance_id)),
        );
    }
    Ok(out)
}

/// The timeline of the GPU a handle names.
fn timeline(handle: nvmlDevice_t) -> NvmlResult<&'static DeviceTimeline> {
    let (state, _) = device(handle)?;
    initialized()?.timeline(state.index()).ok_or(INVALID_ARGUMENT)
}

fn device_by_index(index: c_uint) -> NvmlResult<nvmlDevice_t> {
    let sim = initialized()?;
    sim.device(index).map(handle_of).ok_or(INVALID_ARGUMENT)
}

fn init(flags: c_uint) -> NvmlResult {
    let sim = Simulator::global().map_err(|err| {
        eprintln!("fakegpu: nvmlInit failed: {err}");
        load_error_code(err)
    })?;
    if let Some(name) = &sim.config().init_error {
        return Err(return_code_by_name(name).unwrap_or(UNKNOWN));
    }
    if sim.devices().is_empty() && flags & NVML_INIT_FLAG_NO_GPUS == 0 {
        return Err(GPU_NOT_FOUND);
    }
    INIT_COUNT.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

fn shutdown() -> NvmlResult {
    INIT_COUNT
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .map(drop)
        .map_err(|_| UNINITIALIZED)
}

/// Store `value` through an output pointer.
///
/// # Safety
///
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) -> NvmlResult {
    if out.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and the caller promises it is valid for a write of T.
    unsafe { out.write(value) };
    Ok(())
}

/// Copy `s` and a NUL into a caller's buffer of `length` bytes.
///
/// # Safety
///
/// `buf` is null or valid for writes of `length` bytes.
unsafe fn put_str(buf: *mut c_char, length: c_uint, s: &str) -> NvmlResult {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    if (length as usize) <= s.len() {
        return Err(INSUFFICIENT_SIZE);
    }
    let buf = buf.cast::<u8>();
    // SAFETY: `buf` holds at least s.len() + 1 bytes (checked above) and cannot overlap `s`,
    // which this library owns.
    unsafe { ptr::copy_nonoverlapping(s.as_ptr(), buf, s.len()) };
    // SAFETY: s.len() < length, so the terminator is inside the buffer.
    unsafe { buf.wrapping_add(s.len()).write(0) };
    Ok(())
}

/// Borrow a caller's NUL-terminated string.
///
/// # Safety
///
/// `s` is null or points at a NUL-terminated string that outlives the call.
unsafe fn get_str<'a>(s: *const c_char) -> NvmlResult<&'a str> {
    if s.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-null and NUL-terminated per the caller.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str().map_err(|_| INVALID_ARGUMENT)
}

/// `(total, free, used, reserved)`: `used` is what processes hold, `reserved` what the driver
/// sets aside; `free = total − used − reserved`.
fn memory(state: &DeviceState, gpu: &GpuConfig) -> (u64, u64, u64, u64) {
    let total = state.total();
    let reserved = gpu.reserved_memory.0.min(total);
    // A GPU in MIG mode: what its MIG devices hold is in use on it too.
    let migs = Simulator::global().map_or(0, |sim| sim.migs(state.index()).iter().map(DeviceState::used).sum::<u64>());
    let used = state.used().saturating_add(migs).min(total - reserved);
    (total, total - reserved - used, used, reserved)
}

/// [`memory`] of a GPU or a MIG device (whose memory is its own, with nothing reserved).
fn any_memory(handle: nvmlDevice_t) -> NvmlResult<(u64, u64, u64, u64)> {
    if let Some(m) = mig(handle)? {
        let total = m.state.total();
        let used = m.state.used().min(total);
        return Ok((total, total - used, used, 0));
    }
    let (state, gpu) = device(handle)?;
    Ok(memory(state, gpu))
}

/// nvml.h's `nvmlProcessDetailList_v1` and `nvmlProcessesUtilizationInfo_v1` (LP64).
const PROCESS_DETAIL_LIST_V1: c_uint = 0x0100_0018;
const PROCESSES_UTILIZATION_INFO_V1: c_uint = 0x0100_0018;
/// `NVML_PROCESS_MODE_COMPUTE`, `_GRAPHICS`, `_MPS`.
const PROCESS_MODE_COMPUTE: c_uint = 0;
const PROCESS_MODE_MPS: c_uint = 2;

/// BAR1 each process holding device memory maps (its context's own mappings).
const BAR1_PER_PROCESS: u64 = 2 << 20;

/// `gpuInstanceId` and `computeInstanceId` of a process on a GPU without MIG.
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;

/// The `nvmlDevice*RunningProcesses*` calling convention, for an info struct `T` made by
/// `info`: a null `info_count` is `INVALID_ARGUMENT`; `*info_count == 0` asks for the count
/// (`infos` may then be null): `SUCCESS` when there is none, else `INSUFFICIENT_SIZE` with the
/// count; a smaller nonzero `*info_count` is `INSUFFICIENT_SIZE` with the count needed; a null
/// `infos` otherwise is `INVALID_ARGUMENT`; else the entries are written and `*info_count` is
/// their number.
///
/// # Safety
///
/// `info_count` is null or valid for reads and writes; `infos` is null or writable for
/// `*info_count` entries.
unsafe fn put_processes<P, T>(
    processes: &[P],
    info_count: *mut c_uint,
    infos: *mut T,
    info: impl Fn(&P) -> T,
) -> NvmlResult {
    if info_count.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-null and readable per this function's contract.
    let room = unsafe { info_count.read() };
    let needed = c_uint::try_from(processes.len()).map_err(|_| UNKNOWN)?;
    if room < needed {
        // SAFETY: non-null and writable per this function's contract.
        unsafe { info_count.write(needed) };
        return Err(INSUFFICIENT_SIZE);
    }
    if room > 0 && infos.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    for (i, p) in processes.iter().enumerate() {
        // SAFETY: `infos` holds `room` ≥ `needed` > i entries per this function's contract.
        unsafe { infos.add(i).write(info(p)) };
    }
    // SAFETY: as above.
    unsafe { info_count.write(needed) };
    Ok(())
}

fn process_v1((p, _, _): &(ProcessMemory, c_uint, c_uint)) -> nvmlProcessInfo_v1_t {
    nvmlProcessInfo_v1_t { pid: p.pid, usedGpuMemory: p.bytes }
}

fn process_v2((p, gi, ci): &(ProcessMemory, c_uint, c_uint)) -> nvmlProcessInfo_v2_t {
    nvmlProcessInfo_v2_t { pid: p.pid, usedGpuMemory: p.bytes, gpuInstanceId: *gi, computeInstanceId: *ci }
}

fn pci_info(gpu: &GpuConfig) -> nvmlPciInfo_t {
    let mut bus_id = [0; 32];
    let mut bus_id_legacy = [0; 16];
    fill(&mut bus_id, &gpu.pci_bus_id.nvml());
    fill(&mut bus_id_legacy, &gpu.pci_bus_id.legacy());
    nvmlPciInfo_t {
        busIdLegacy: bus_id_legacy,
        domain: gpu.pci_bus_id.domain,
        bus: gpu.pci_bus_id.bus.into(),
        device: gpu.pci_bus_id.device.into(),
        pciDeviceId: gpu.pci_device_id,
        pciSubSystemId: gpu.pci_subsystem_id,
        busId: bus_id,
    }
}

/// Copy `s` into a fixed C array, always leaving a terminating NUL.
fn fill(dst: &mut [c_char], s: &str) {
    let room = dst.len().saturating_sub(1);
    for (d, b) in dst.iter_mut().zip(s.bytes().take(room)) {
        *d = b as c_char;
    }
}

/// The start of `nvmlPciInfo_t` that the original `nvmlDeviceGetPciInfo` filled.
#[repr(C)]
struct LegacyPciInfo {
    bus_id: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
}

const _: () = assert!(offset_of!(LegacyPciInfo, pci_sub_system_id) == offset_of!(nvmlPciInfo_t, pciSubSystemId));
// `nvmlDeviceGetMemoryInfo_v2` reads the version as the struct's first word.
const _: () = assert!(offset_of!(nvmlMemory_v2_t, version) == 0);

/// `NVML_STRUCT_VERSION(Memory, 2)`.
const MEMORY_V2_VERSION: c_uint = (size_of::<nvmlMemory_v2_t>() as c_uint) | (2 << 24);
/// `nvmlGpuFabricInfo_v2`: `NVML_STRUCT_VERSION(GpuFabricInfo, 2)`.
const FABRIC_INFO_V2_VERSION: c_uint = (size_of::<nvmlGpuFabricInfoV_t>() as c_uint) | (2 << 24);

/// Declares each export once: an `extern "C"` function that runs its body in [`boundary`]
/// (and may then be held: `FAKEGPU_HOLD`, see [`crate::cuda::hold`]).
macro_rules! exports {
    ($(
        $(#[doc = $doc:literal])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    )*) => {$(
        $(#[doc = $doc])*
        ///
        /// # Safety
        ///
        /// As in `nvml.h`: every pointer is null or valid, output pointers for a write of
        /// their type, buffers for `length` bytes, strings NUL-terminated.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> nvmlReturn_t {
            let rc = boundary(|| $body);
            $crate::cuda::hold::after(stringify!($name));
            rc
        }

        // The signature `nvml.h` declares for this symbol.
        const _: Option<gpuslice_cuda_abi::nvml::sym::$name> = Some($name);
    )*};
}

exports! {
    /// Initialize NVML; reference-counted with `nvmlShutdown`.
    fn nvmlInit_v2() { init(0) }

    /// The original `nvmlInit`, the same as `nvmlInit_v2` here.
    fn nvmlInit() { init(0) }

    /// `nvmlInit_v2` with flags; `NVML_INIT_FLAG_NO_GPUS` allows a machine without GPUs.
    fn nvmlInitWithFlags(flags: c_uint) { init(flags) }

    /// Undo one successful `nvmlInit*`.
    fn nvmlShutdown() { shutdown() }

    fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) {
        let sim = initialized()?;
        // SAFETY: `version` is null or writable for `length` bytes per the export's contract.
        unsafe { put_str(version, length, &sim.config().driver_version) }
    }

    /// Like the real library, this works before `nvmlInit`.
    fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) {
        let sim = Simulator::global().map_err(load_error_code)?;
        // SAFETY: `version` is null or writable for `length` bytes per the export's contract.
        unsafe { put_str(version, length, &sim.config().nvml_version()) }
    }

    fn nvmlSystemGetCudaDriverVersion(cuda_driver_version: *mut c_int) {
        let sim = initialized()?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(cuda_driver_version, sim.config().cuda_version) }
    }

    fn nvmlSystemGetCudaDriverVersion_v2(cuda_driver_version: *mut c_int) {
        let sim = initialized()?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(cuda_driver_version, sim.config().cuda_version) }
    }

    fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) {
        let count = initialized()?.devices().len();
        let count = c_uint::try_from(count).map_err(|_| UNKNOWN)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(device_count, count) }
    }

    fn nvmlDeviceGetCount(device_count: *mut c_uint) {
        let count = initialized()?.devices().len();
        let count = c_uint::try_from(count).map_err(|_| UNKNOWN)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(device_count, count) }
    }

    fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut nvmlDevice_t) {
        let handle = device_by_index(index)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(device, handle) }
    }

    fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut nvmlDevice_t) {
        let handle = device_by_index(index)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(device, handle) }
    }

    fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) {
        let sim = initialized()?;
        // SAFETY: null or NUL-terminated per the export's contract.
        let uuid = unsafe { get_str(uuid) }?;
        let index = sim.config().gpu.iter().position(|g| g.uuid == uuid).ok_or(NOT_FOUND)?;
        let handle = handle_of(&sim.devices()[index]);
        // SAFETY: null or writable per the export's contract.
        unsafe { put(device, handle) }
    }

    /// Accepts `domain:bus:device.function` with the domain in 4 or 8 hex digits or left out.
    fn nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id: *const c_char, device: *mut nvmlDevice_t) {
        let sim = initialized()?;
        // SAFETY: null or NUL-terminated per the export's contract.
        let wanted: PciBusId = unsafe { get_str(pci_bus_id) }?.parse().map_err(|_| INVALID_ARGUMENT)?;
        let index = sim.config().gpu.iter().position(|g| g.pci_bus_id == wanted).ok_or(NOT_FOUND)?;
        let handle = handle_of(&sim.devices()[index]);
        // SAFETY: null or writable per the export's contract.
        unsafe { put(device, handle) }
    }

    fn nvmlDeviceGetHandleByPciBusId(pci_bus_id: *const c_char, device: *mut nvmlDevice_t) {
        // SAFETY: same contract as this export's.
        let code = unsafe { nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id, device) };
        if code == SUCCESS { Ok(()) } else { Err(code) }
    }

    fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) {
        let (state, _) = self::device(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(index, state.index()) }
    }

    /// A MIG device's is its own `MIG-…` UUID.
    fn nvmlDeviceGetUUID(device: nvmlDevice_t, uuid: *mut c_char, length: c_uint) {
        let text = match mig(device)? {
            Some(m) => m.config.uuid.clone(),
            None => self::device(device)?.1.uuid.clone(),
        };
        // SAFETY: null or writable for `length` bytes per the export's contract.
        unsafe { put_str(uuid, length, &text) }
    }

    /// A MIG device's is its parent's with ` MIG <profile>`.
    fn nvmlDeviceGetName(device: nvmlDevice_t, name: *mut c_char, length: c_uint) {
        let text = match mig(device)? {
            Some(m) => format!("{} MIG {}", m.gpu.name, m.config.profile),
            None => self::device(device)?.1.name.clone(),
        };
        // SAFETY: null or writable for `length` bytes per the export's contract.
        unsafe { put_str(name, length, &text) }
    }

    /// `used` is the shared counter every process adds to, plus the GPU's `reserved_memory`
    /// (the original struct has no field of its own for it, as on a real GPU);
    /// `free = total − used`.
    fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t) {
        let (total, free, used, reserved) = any_memory(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(memory, nvmlMemory_t { total, free, used: used + reserved }) }
    }

    /// As `nvmlDeviceGetMemoryInfo`, with the GPU's `reserved_memory` in `reserved` and not in
    /// `used` (`total = reserved + used + free`); `version` must be `nvmlMemory_v2`
    /// (`NVML_ERROR_ARGUMENT_VERSION_MISMATCH` otherwise).
    fn nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) {
        let (total, free, used, reserved) = any_memory(device)?;
        if memory.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-null and valid for nvmlMemory_v2_t per the export's contract; the caller
        // set `version` before the call.
        let version = unsafe { memory.cast::<c_uint>().read() };
        if version != MEMORY_V2_VERSION {
            return Err(ARGUMENT_VERSION_MISMATCH);
        }
        let info = nvmlMemory_v2_t { version, total, reserved, free, used };
        // SAFETY: checked non-null above; writable per the export's contract.
        unsafe { put(memory, info) }
    }

    fn nvmlDeviceGetMinorNumber(device: nvmlDevice_t, minor_number: *mut c_uint) {
        let (_, gpu) = self::device(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(minor_number, gpu.minor) }
    }

    fn nvmlDeviceGetPciInfo_v3(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) {
        let (_, gpu) = self::device(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(pci, pci_info(gpu)) }
    }

    fn nvmlDeviceGetPciInfo_v2(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) {
        let (_, gpu) = self::device(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(pci, pci_info(gpu)) }
    }

    /// The original call, whose struct ended after `pciSubSystemId` with reserved words where
    /// `busId` is now: it fills `busIdLegacy` and the numbers and leaves the rest alone.
    fn nvmlDeviceGetPciInfo(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) {
        let (_, gpu) = self::device(device)?;
        if pci.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let info = pci_info(gpu);
        let legacy = LegacyPciInfo {
            bus_id: info.busIdLegacy,
            domain: info.domain,
            bus: info.bus,
            device: info.device,
            pci_device_id: info.pciDeviceId,
            pci_sub_system_id: info.pciSubSystemId,
        };
        // SAFETY: non-null and valid for the legacy struct per the export's contract, of which
        // LegacyPciInfo is a prefix (and of today's nvmlPciInfo_t).
        unsafe { pci.cast::<LegacyPciInfo>().write(legacy) };
        Ok(())
    }

    /// `NVML_ERROR_NOT_SUPPORTED` for a GPU whose config has no `mig_mode`.
    fn nvmlDeviceGetMigMode(device: nvmlDevice_t, current_mode: *mut c_uint, pending_mode: *mut c_uint) {
        let (_, gpu) = self::device(device)?;
        let mode = match gpu.mig_mode.ok_or(NOT_SUPPORTED)? {
            true => NVML_DEVICE_MIG_ENABLE,
            false => NVML_DEVICE_MIG_DISABLE,
        };
        if current_mode.is_null() || pending_mode.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-null and writable per the export's contract.
        unsafe { put(current_mode, mode) }?;
        // SAFETY: non-null and writable per the export's contract.
        unsafe { put(pending_mode, mode) }
    }

    /// The simulated GPUs have no NVLink: every link query is `NVML_ERROR_NOT_SUPPORTED`, as
    /// on a PCIe card.
    fn nvmlDeviceGetNvLinkRemoteDeviceType(device: nvmlDevice_t, _link: c_uint, _kind: *mut nvmlIntNvLinkDeviceType_t) {
        self::device(device)?;
        Err(NOT_SUPPORTED)
    }

    fn nvmlDeviceGetNvLinkRemotePciInfo_v2(device: nvmlDevice_t, _link: c_uint, _pci: *mut nvmlPciInfo_t) {
        self::device(device)?;
        Err(NOT_SUPPORTED)
    }

    /// No peer-to-peer path between the simulated GPUs: `NVML_P2P_STATUS_NOT_SUPPORTED` for
    /// every capability.
    fn nvmlDeviceGetP2PStatus(
        device1: nvmlDevice_t,
        device2: nvmlDevice_t,
        _index: nvmlGpuP2PCapsIndex_t,
        status: *mut nvmlGpuP2PStatus_t,
    ) {
        self::device(device1)?;
        self::device(device2)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(status, NVML_P2P_STATUS_NOT_SUPPORTED) }
    }

    /// Not in an NVLink fabric (a PCIe card's answer): state `NOT_SUPPORTED`.
    fn nvmlDeviceGetGpuFabricInfoV(device: nvmlDevice_t, info: *mut nvmlGpuFabricInfoV_t) {
        self::device(device)?;
        if info.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-null and valid for the struct per the export's contract; the caller set
        // `version` before the call.
        let version = unsafe { info.cast::<c_uint>().read() };
        if version != FABRIC_INFO_V2_VERSION {
            return Err(ARGUMENT_VERSION_MISMATCH);
        }
        let answer = nvmlGpuFabricInfoV_t {
            version,
            clusterUuid: [0; 16],
            status: NVML_SUCCESS,
            cliqueId: 0,
            state: NVML_GPU_FABRIC_STATE_NOT_SUPPORTED as nvmlGpuFabricState_t,
            healthMask: 0,
        };
        // SAFETY: checked non-null above; writable per the export's contract.
        unsafe { put(info, answer) }
    }

    /// `gpu`: percent of the last second the device was busy, from the timeline every process
    /// shares. `memory`: 0, since `busy` reads no device memory.
    fn nvmlDeviceGetUtilizationRates(device: nvmlDevice_t, utilization: *mut nvmlUtilization_t) {
        let gpu = timeline(device)?.utilization();
        // SAFETY: null or writable per the export's contract.
        unsafe { put(utilization, nvmlUtilization_t { gpu, memory: 0 }) }
    }

    /// One sample per process the device worked for in the last second, if stamped (with the
    /// end of that work, wall-clock µs) after `last_seen_time_stamp`: `pid` as this process's
    /// PID namespace names it (the host's PIDs, when asked from the host; a process it cannot
    /// name is left out), `smUtil` its percent of that second, the rest 0. None: `NVML_ERROR_NOT_FOUND`. A null buffer, or one
    /// `*process_samples_count` cannot hold them: `NVML_ERROR_INSUFFICIENT_SIZE` with the
    /// count needed.
    fn nvmlDeviceGetProcessUtilization(
        device: nvmlDevice_t,
        utilization: *mut nvmlProcessUtilizationSample_t,
        process_samples_count: *mut c_uint,
        last_seen_time_stamp: c_ulonglong,
    ) {
        let samples = timeline(device)?.process_samples(last_seen_time_stamp);
        if process_samples_count.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-null, readable and writable per the export's contract.
        let room = unsafe { process_samples_count.read() };
        let needed = c_uint::try_from(samples.len()).map_err(|_| UNKNOWN)?;
        // SAFETY: as above.
        unsafe { process_samples_count.write(needed) };
        if samples.is_empty() {
            return Err(NOT_FOUND);
        }
        if utilization.is_null() || room < needed {
            return Err(INSUFFICIENT_SIZE);
        }
        for (i, s) in samples.iter().enumerate() {
            let sample = nvmlProcessUtilizationSample_t {
                pid: s.pid,
                timeStamp: s.timestamp_us,
                smUtil: s.sm_util,
                memUtil: 0,
                encUtil: 0,
                decUtil: 0,
            };
            // SAFETY: the buffer holds `room` ≥ `needed` > i samples per the export's contract.
            unsafe { utilization.add(i).write(sample) };
        }
        Ok(())
    }

    /// The processes holding memory on the device, by PID as this process's PID namespace
    /// names them (the host's PIDs, when asked from the host), each with all it holds
    /// (contexts included). Buffer rules: [`put_processes`].
    /// On a GPU in MIG mode, its MIG devices' processes too, with their GPU and compute
    /// instance IDs (`0xFFFFFFFF` for a process on the GPU itself).
    fn nvmlDeviceGetComputeRunningProcesses_v3(device: nvmlDevice_t, info_count: *mut c_uint, infos: *mut nvmlProcessInfo_v2_t) {
        let (state, _) = self::device(device)?;
        let processes = processes_with_instances(state)?;
        // SAFETY: the pointers are as the export's contract says, which is put_processes's.
        unsafe { put_processes(&processes, info_count, infos, process_v2) }
    }

    /// As `_v3`; the same struct (`nvmlProcessInfo_v2_t`).
    fn nvmlDeviceGetComputeRunningProcesses_v2(device: nvmlDevice_t, info_count: *mut c_uint, infos: *mut nvmlProcessInfo_v2_t) {
        let (state, _) = self::device(device)?;
        let processes = processes_with_instances(state)?;
        // SAFETY: as for `_v3`.
        unsafe { put_processes(&processes, info_count, infos, process_v2) }
    }

    /// As `_v3`, with the original struct (`nvmlProcessInfo_v1_t`: pid and memory).
    fn nvmlDeviceGetComputeRunningProcesses(device: nvmlDevice_t, info_count: *mut c_uint, infos: *mut nvmlProcessInfo_v1_t) {
        let (state, _) = self::device(device)?;
        let processes = processes_with_instances(state)?;
        // SAFETY: as for `_v3`.
        unsafe { put_processes(&processes, info_count, infos, process_v1) }
    }

    /// The simulated GPU runs no graphics: always none, with the same buffer rules.
    fn nvmlDeviceGetGraphicsRunningProcesses_v3(device: nvmlDevice_t, info_count: *mut c_uint, infos: *mut nvmlProcessInfo_v2_t) {
        self::device(device)?;
        // SAFETY: as for the compute processes.
        unsafe { put_processes(&[], info_count, infos, process_v2) }
    }

    fn nvmlDeviceGetGraphicsRunningProcesses_v2(device: nvmlDevice_t, info_count: *mut c_uint, infos: *mut nvmlProcessInfo_v2_t) {
        self::device(device)?;
        // SAFETY: as for the compute processes.
        unsafe { put_processes(&[], info_count, infos, process_v2) }
    }

    fn nvmlDeviceGetGraphicsRunningProcesses(device: nvmlDevice_t, info_count: *mut c_uint, infos: *mut nvmlProcessInfo_v1_t) {
        self::device(device)?;
        // SAFETY: as for the compute processes.
        unsafe { put_processes(&[], info_count, infos, process_v1) }
    }

    /// The running-processes call of NVML 12.4+: `version` must be `nvmlProcessDetailList_v1`;
    /// `mode` compute lists what `nvmlDeviceGetComputeRunningProcesses_v3` lists, graphics and
    /// MPS nothing; `numProcArrayEntries` and `procArray` follow the running-processes buffer
    /// rules ([`put_processes`]).
    fn nvmlDeviceGetRunningProcessDetailList(device: nvmlDevice_t, plist: *mut nvmlProcessDetailList_v1_t) {
        let (state, _) = self::device(device)?;
        if plist.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-null and valid for the struct per the export's contract.
        let list = unsafe { &mut *plist };
        if list.version != PROCESS_DETAIL_LIST_V1 {
            return Err(ARGUMENT_VERSION_MISMATCH);
        }
        let processes = match list.mode {
            PROCESS_MODE_COMPUTE => processes_with_instances(state)?,
            1..=PROCESS_MODE_MPS => Vec::new(),
            _ => return Err(INVALID_ARGUMENT),
        };
        let detail = |(p, gi, ci): &(ProcessMemory, c_uint, c_uint)| nvmlProcessDetail_v1_t {
            pid: p.pid,
            usedGpuMemory: p.bytes,
            gpuInstanceId: *gi,
            computeInstanceId: *ci,
            usedGpuCcProtectedMemory: 0,
        };
        // SAFETY: the count and the array are the caller's, as put_processes's contract says.
        unsafe { put_processes(&processes, &raw mut list.numProcArrayEntries, list.procArray, detail) }
    }

    /// `nvmlDeviceGetProcessUtilization` in a versioned struct (`nvmlProcessesUtilizationInfo_v1`):
    /// the same samples with `smUtil` and the other units 0, the same buffer rules on
    /// `processSamplesCount` and `procUtilArray`, since `lastSeenTimeStamp`.
    fn nvmlDeviceGetProcessesUtilizationInfo(device: nvmlDevice_t, info: *mut nvmlProcessesUtilizationInfo_v1_t) {
        let timeline = timeline(device)?;
        if info.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-null and valid for the struct per the export's contract.
        let info = unsafe { &mut *info };
        if info.version != PROCESSES_UTILIZATION_INFO_V1 {
            return Err(ARGUMENT_VERSION_MISMATCH);
        }
        let samples = timeline.process_samples(info.lastSeenTimeStamp);
        let room = info.processSamplesCount;
        let needed = c_uint::try_from(samples.len()).map_err(|_| UNKNOWN)?;
        info.processSamplesCount = needed;
        if samples.is_empty() {
            return Err(NOT_FOUND);
        }
        if info.procUtilArray.is_null() || room < needed {
            return Err(INSUFFICIENT_SIZE);
        }
        for (i, s) in samples.iter().enumerate() {
            let sample = nvmlProcessUtilizationInfo_v1_t {
                timeStamp: s.timestamp_us,
                pid: s.pid,
                smUtil: s.sm_util,
                memUtil: 0,
                encUtil: 0,
                decUtil: 0,
                jpgUtil: 0,
                ofaUtil: 0,
            };
            // SAFETY: the array holds `room` ≥ `needed` > i entries per the export's contract.
            unsafe { info.procUtilArray.add(i).write(sample) };
        }
        Ok(())
    }

    /// `bar1Total` is the GPU's `bar1_memory`; each live process holding device memory maps
    /// 2 MiB of it (`bar1Used`); `bar1Free = bar1Total − bar1Used`.
    fn nvmlDeviceGetBAR1MemoryInfo(device: nvmlDevice_t, bar1_memory: *mut nvmlBAR1Memory_t) {
        let (state, gpu) = self::device(device)?;
        let total = gpu.bar1_memory.0;
        let processes = u64::try_from(state.processes().len()).unwrap_or(u64::MAX);
        let used = processes.saturating_mul(BAR1_PER_PROCESS).min(total);
        let info = nvmlBAR1Memory_t { bar1Total: total, bar1Free: total - used, bar1Used: used };
        // SAFETY: null or writable per the export's contract.
        unsafe { put(bar1_memory, info) }
    }

    /// GPU and memory utilisation samples, one per 1/6 s period of the last 20 s (the
    /// timeline's [`crate::timeline::DeviceTimeline::utilization_samples`]; memory: 0, as
    /// `nvmlDeviceGetUtilizationRates`), as `NVML_VALUE_TYPE_UNSIGNED_INT` percents stamped in
    /// wall-clock µs. As the real call: a null `samples` asks for the count of samples the
    /// driver keeps (`SUCCESS`); otherwise the samples stamped after `last_seen_time_stamp`,
    /// oldest first, as many as `*sample_count` holds, `*sample_count` set to the number
    /// written, and `NVML_ERROR_NOT_FOUND` when there is none. Other sampling types (power,
    /// clocks) are `NVML_ERROR_NOT_SUPPORTED`; an unknown one is `INVALID_ARGUMENT`.
    fn nvmlDeviceGetSamples(
        device: nvmlDevice_t,
        kind: nvmlSamplingType_t,
        last_seen_time_stamp: c_ulonglong,
        sample_val_type: *mut nvmlValueType_t,
        sample_count: *mut c_uint,
        samples: *mut nvmlSample_t,
    ) {
        let timeline = timeline(device)?;
        if kind >= NVML_SAMPLINGTYPE_COUNT || sample_val_type.is_null() || sample_count.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        if kind != NVML_GPU_UTILIZATION_SAMPLES && kind != NVML_MEMORY_UTILIZATION_SAMPLES {
            return Err(NOT_SUPPORTED);
        }
        // SAFETY: non-null and writable per the export's contract.
        unsafe { sample_val_type.write(NVML_VALUE_TYPE_UNSIGNED_INT) };
        if samples.is_null() {
            // SAFETY: as above.
            unsafe { sample_count.write(crate::timeline::SAMPLES as c_uint) };
            return Ok(());
        }
        // SAFETY: non-null, readable and writable per the export's contract.
        let room = unsafe { sample_count.read() } as usize;
        let mut found = timeline.utilization_samples(last_seen_time_stamp);
        if found.is_empty() {
            // SAFETY: as above.
            unsafe { sample_count.write(0) };
            return Err(NOT_FOUND);
        }
        found.truncate(room);
        for (i, s) in found.iter().enumerate() {
            let value = if kind == NVML_GPU_UTILIZATION_SAMPLES { s.percent } else { 0 };
            // The whole union is written (little-endian: `uiVal` reads the low half).
            let sample = nvmlSample_t { timeStamp: s.timestamp_us, sampleValue: nvmlValue_t { ullVal: u64::from(value) } };
            // SAFETY: the buffer holds `room` > i samples per the export's contract.
            unsafe { samples.add(i).write(sample) };
        }
        // SAFETY: as above; at most `room`, which came from a c_uint.
        unsafe { sample_count.write(found.len() as c_uint) };
        Ok(())
    }

    /// `sm_count × cores_per_sm`.
    fn nvmlDeviceGetNumGpuCores(device: nvmlDevice_t, num_cores: *mut c_uint) {
        let (_, gpu) = self::device(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(num_cores, gpu.cuda_cores()) }
    }

    /// How many MIG device handles a GPU with MIG support may have (7, an H100's); a GPU
    /// without: `NVML_ERROR_NOT_SUPPORTED`.
    fn nvmlDeviceGetMaxMigDeviceCount(device: nvmlDevice_t, count: *mut c_uint) {
        let (_, gpu) = self::device(device)?;
        gpu.mig_mode.ok_or(NOT_SUPPORTED)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(count, MAX_MIG_DEVICES as c_uint) }
    }

    /// The MIG device at `index` (0 to the max count − 1): `NVML_ERROR_NOT_FOUND` for an
    /// index with none, `NVML_ERROR_NOT_SUPPORTED` on a GPU with MIG mode off.
    fn nvmlDeviceGetMigDeviceHandleByIndex(device: nvmlDevice_t, index: c_uint, mig_device: *mut nvmlDevice_t) {
        let (state, gpu) = self::device(device)?;
        if gpu.mig_mode != Some(true) {
            return Err(NOT_SUPPORTED);
        }
        if index as usize >= MAX_MIG_DEVICES {
            return Err(INVALID_ARGUMENT);
        }
        let migs = initialized()?.migs(state.index());
        let handle = migs.get(index as usize).map(handle_of).ok_or(NOT_FOUND)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(mig_device, handle) }
    }

    fn nvmlDeviceIsMigDeviceHandle(device: nvmlDevice_t, is_mig_device: *mut c_uint) {
        let is_mig = match mig(device)? {
            Some(_) => 1,
            None => self::device(device).map(|_| 0)?,
        };
        // SAFETY: null or writable per the export's contract.
        unsafe { put(is_mig_device, is_mig) }
    }

    fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_device: nvmlDevice_t, device: *mut nvmlDevice_t) {
        let m = mig(mig_device)?.ok_or(INVALID_ARGUMENT)?;
        let parent = initialized()?.device(m.parent).map(handle_of).ok_or(UNKNOWN)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(device, parent) }
    }

    /// A MIG device's GPU instance ID; a whole GPU's handle: `NVML_ERROR_NOT_SUPPORTED`.
    fn nvmlDeviceGetGpuInstanceId(device: nvmlDevice_t, id: *mut c_uint) {
        let m = mig_or_not_supported(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(id, m.gpu_instance_id()) }
    }

    /// A MIG device's compute instance ID; a whole GPU's handle: `NVML_ERROR_NOT_SUPPORTED`.
    fn nvmlDeviceGetComputeInstanceId(device: nvmlDevice_t, id: *mut c_uint) {
        let m = mig_or_not_supported(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(id, m.config.compute_instance_id) }
    }

    /// A MIG device's SMs, slices and memory; a whole GPU's SMs, its 7 slices and memory.
    fn nvmlDeviceGetAttributes_v2(device: nvmlDevice_t, attributes: *mut nvmlDeviceAttributes_t) {
        let answer = attributes_of(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(attributes, answer) }
    }

    /// The original call, the same struct.
    fn nvmlDeviceGetAttributes(device: nvmlDevice_t, attributes: *mut nvmlDeviceAttributes_t) {
        let answer = attributes_of(device)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(attributes, answer) }
    }
}

/// The MIG device a handle names; a GPU's handle is `NOT_SUPPORTED`, anything else
/// `INVALID_ARGUMENT`.
fn mig_or_not_supported(handle: nvmlDevice_t) -> NvmlResult<Mig> {
    match mig(handle)? {
        Some(m) => Ok(m),
        None => device(handle).and(Err(NOT_SUPPORTED)),
    }
}

/// `nvmlDeviceGetAttributes_v2`'s answer for a GPU or a MIG device.
fn attributes_of(handle: nvmlDevice_t) -> NvmlResult<nvmlDeviceAttributes_t> {
    let (sms, (gi, ci), bytes) = match mig(handle)? {
        Some(m) => (m.config.sm_count, m.config.slices().unwrap_or((1, 1)), m.config.memory.0),
        None => {
            let (_, gpu) = device(handle)?;
            (gpu.sm_count, (MAX_MIG_DEVICES as c_uint, MAX_MIG_DEVICES as c_uint), gpu.memory.0)
        }
    };
    Ok(nvmlDeviceAttributes_t {
        multiprocessorCount: sms,
        gpuInstanceSliceCount: gi,
        computeInstanceSliceCount: ci,
        memorySizeMB: bytes >> 20,
        ..nvmlDeviceAttributes_t::default()
    })
}

/// A static description of `result`; unknown codes read "Unknown Error".
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    RETURN_CODES.iter().find(|(code, _, _)| *code == result).map_or(c"Unknown Error", |(_, _, text)| text).as_ptr()
}

mod mig_geometry;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_resolve_with_or_without_prefix() {
        assert_eq!(return_code_by_name("DRIVER_NOT_LOADED"), Some(9));
        assert_eq!(return_code_by_name("NVML_ERROR_DRIVER_NOT_LOADED"), Some(9));
        assert_eq!(return_code_by_name("UNKNOWN"), Some(UNKNOWN));
        assert_eq!(return_code_by_name("SUCCESS"), None);
        assert_eq!(return_code_by_name("driver_not_loaded"), None);
    }

    #[test]
    fn every_code_has_one_name() {
        for (i, (code, name, _)) in RETURN_CODES.iter().enumerate() {
            assert!(RETURN_CODES[i + 1..].iter().all(|(c, n, _)| c != code && n != name), "{name}");
        }
    }

    #[test]
    fn error_strings_are_static() {
        // SAFETY: nvmlErrorString returns pointers to 'static C strings.
        let text = unsafe { CStr::from_ptr(nvmlErrorString(9)) };
        assert_eq!(text, c"Driver Not Loaded");
        // SAFETY: as above.
        let text = unsafe { CStr::from_ptr(nvmlErrorString(12345)) };
        assert_eq!(text, c"Unknown Error");
    }

    #[test]
    fn memory_v2_version_matches_nvml_h() {
        // nvml.h: nvmlMemory_v2 = NVML_STRUCT_VERSION(Memory, 2) on LP64.
        assert_eq!(MEMORY_V2_VERSION, 0x0200_0028);
    }

    #[test]
    fn short_buffers_are_insufficient_size() {
        let mut buf = [0 as c_char; 4];
        // SAFETY: `buf` is writable for its length.
        let r = unsafe { put_str(buf.as_mut_ptr(), 4, "abcd") };
        assert_eq!(r, Err(INSUFFICIENT_SIZE));
        // SAFETY: as above.
        let r = unsafe { put_str(buf.as_mut_ptr(), 4, "abc") };
        assert_eq!(r, Ok(()));
        // SAFETY: `put_str` wrote a NUL inside the buffer.
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }, c"abc");
        // SAFETY: a null buffer is allowed and rejected.
        let r = unsafe { put_str(ptr::null_mut(), 4, "a") };
        assert_eq!(r, Err(INVALID_ARGUMENT));
    }

    #[test]
    fn panics_do_not_cross_the_boundary() {
        assert_eq!(boundary(|| panic!("boom")), UNKNOWN);
        assert_eq!(boundary(|| Err(NOT_FOUND)), NOT_FOUND);
    }
}
