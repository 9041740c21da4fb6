//! NVML answers for the slice, so `nvidia-smi`, `nvidia-ml-py` and
//! `torch.cuda.list_gpu_processes()` in a container show the slice as a GPU and nothing of
//! the other tenants of the card.
//!
//! Each query is the driver's own answer, then narrowed to the slice when the device has one
//! (devices without a slice, and processes in none, get the driver's answer unchanged):
//!
//! - **memory** (`nvmlDeviceGetMemoryInfo`, `_v2`): total = the slice's limit, used = what the
//!   slice's processes are charged, free = the rest (no more than the card has free). `_v2`'s
//!   `reserved` is 0: what the driver sets aside is outside every slice's limit.
//! - **BAR1** (`nvmlDeviceGetBAR1MemoryInfo`): total = the card's aperture, at most the slice's
//!   limit; used = 0, free = total. The driver does not say whose mappings BAR1 holds, so the
//!   slice is shown none rather than another tenant's.
//! - **processes** (`nvmlDeviceGetComputeRunningProcesses`, `_v2`, `_v3`, the graphics and MPS
//!   ones, `nvmlDeviceGetRunningProcessDetailList`): the driver's list, keeping only the slice's
//!   processes, each with the bytes the slice charged it (`usedGpuMemory`).
//! - **utilisation** (`nvmlDeviceGetProcessUtilization`, `nvmlDeviceGetProcessesUtilizationInfo`,
//!   `nvmlDeviceGetUtilizationRates`, `nvmlDeviceGetSamples` for GPU and memory utilisation):
//!   the driver's per-process samples of the slice's processes; the rates and samples are their
//!   sum (each process's mean) over the last second (at most 100 %), so another tenant's work
//!   never shows. `nvmlDeviceGetSamples` answers one sample, stamped at the query, instead of
//!   the driver's 1/6 s series of the whole card.
//!
//! **Which processes are the slice's.** The driver names a process by its PID as the *asking*
//! process's PID namespace sees it (the host's PIDs on the host; in a container, the
//! container's, and processes outside the namespace are not listed at all). Every process of
//! the slice that uses the shim holds a slot in the slice's region, recording its PID in its
//! own namespace and its container (the shim's mount of the slice state). A PID the driver
//! lists is the slice's when a live slot of this slice records that PID *and this process's
//! container*: then both PIDs are in the same namespace (a container's processes share one).
//! A slice process in another container (another PID namespace) is therefore not shown, even
//! when the driver lists it (`--pid=host`): never another tenant's PID for a false match of
//! numbers from two namespaces. A process of the container that does not use the shim (a
//! static binary) is not shown either; the host guard sees it.

use std::ffi::c_uint;

use crate::driver::nvml;
use crate::ffi::*;
use crate::state::{Refusal, state};

/// The slice's (total, used, free) for an NVML device, or `None` when it has no slice.
fn slice_view(device: nvmlDevice_t, real_free: u64) -> Result<Option<(u64, u64, u64)>, nvmlReturn_t> {
    if !crate::state::active() {
        return Ok(None);
    }
    let s = state();
    s.check_broken().map_err(Refusal::nvml)?;
    let Some(i) = s.slice_for_nvml(device as usize) else { return Ok(None) };
    crate::memory::vmm::settle(s);
    let slice = &s.slices[i];
    let used = slice.usage().map_err(Refusal::nvml)?;
    let limit = slice.limit();
    Ok(Some((limit, used, limit.saturating_sub(used).min(real_free))))
}

/// Runs the real query, then lets `apply` replace its figures with the slice's.
///
/// # Safety
/// `call` is the real NVML query for `device` writing into `memory`.
unsafe fn answer_for_slice<T>(
    device: nvmlDevice_t,
    memory: *mut T,
    call: impl FnOnce() -> nvmlReturn_t,
    real_free: impl FnOnce(&T) -> u64,
    apply: impl FnOnce(&mut T, (u64, u64, u64)),
) -> nvmlReturn_t {
    let rc = call();
    if rc != NVML_SUCCESS || memory.is_null() {
        return rc;
    }
    // SAFETY: checked non-null; NVML just filled it.
    let m = unsafe { &mut *memory };
    match slice_view(device, real_free(m)) {
        Err(e) => e,
        Ok(None) => rc,
        Ok(Some(view)) => {
            apply(m, view);
            rc
        }
    }
}

/// # Safety
/// `nvmlDeviceGetMemoryInfo`'s contract.
pub unsafe fn device_get_memory_info(device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t {
    let Some(f) = nvml().nvmlDeviceGetMemoryInfo else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    // SAFETY: the real query with the caller's arguments, unchanged.
    unsafe {
        answer_for_slice(
            device,
            memory,
            || f(device, memory),
            |m| m.free,
            |m, (total, used, free)| {
                (m.total, m.used, m.free) = (total, used, free);
            },
        )
    }
}

/// # Safety
/// `nvmlDeviceGetMemoryInfo_v2`'s contract.
pub unsafe fn device_get_memory_info_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) -> nvmlReturn_t {
    let Some(f) = nvml().nvmlDeviceGetMemoryInfo_v2 else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    // SAFETY: the real query with the caller's arguments, unchanged.
    unsafe {
        answer_for_slice(
            device,
            memory,
            || f(device, memory),
            |m| m.free,
            |m, (total, used, free)| {
                // The driver's reservation is outside the slice's limit: none of it is shown.
                (m.total, m.reserved, m.used, m.free) = (total, 0, used, free);
            },
        )
    }
}

/// The slice of an NVML device, `None` when it has none (or this process is in no slice).
fn slice_of(device: nvmlDevice_t) -> Result<Option<usize>, nvmlReturn_t> {
    if !crate::state::active() {
        return Ok(None);
    }
    let s = state();
    s.check_broken().map_err(Refusal::nvml)?;
    Ok(s.slice_for_nvml(device as usize))
}

/// The slice's processes in this process's PID namespace (see the module doc), with the bytes
/// each is charged.
fn slice_processes(slice: usize) -> Result<Vec<(u32, u64)>, nvmlReturn_t> {
    let s = state();
    crate::memory::vmm::settle(s);
    let slice = &s.slices[slice];
    let joined = slice.join().map_err(Refusal::nvml)?;
    let slots = joined.region.slots().map_err(|e| {
        static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        crate::log::once(&REPORTED, &format!("slice {}: {e}; showing none of its processes", slice.name));
        NVML_ERROR_NO_PERMISSION
    })?;
    let mut out: Vec<(u32, u64)> = Vec::new();
    for slot in slots.iter().filter(|t| t.alive && t.container == slice.container() && t.pid != 0) {
        match out.iter_mut().find(|(pid, _)| *pid == slot.pid) {
            Some((_, bytes)) => *bytes = bytes.saturating_add(slot.used),
            None => out.push((slot.pid, slot.used)),
        }
    }
    Ok(out)
}

/// Wall-clock microseconds, NVML's "CPU timestamp".
fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Calls a query of NVML's buffer convention (`*count` in: room, out: entries or entries
/// needed; `NVML_ERROR_INSUFFICIENT_SIZE` when short) until the buffer holds every entry.
/// `none` is the code the query answers when it has no entry at all (`SUCCESS` for process
/// lists, `NOT_FOUND` for samples).
fn fetch_all<T: Copy>(
    zero: T,
    none: nvmlReturn_t,
    mut call: impl FnMut(*mut c_uint, *mut T) -> nvmlReturn_t,
) -> Result<Vec<T>, nvmlReturn_t> {
    let mut buf: Vec<T> = Vec::new();
    for _ in 0..4 {
        let mut count = buf.len() as c_uint;
        let ptr = if buf.is_empty() { std::ptr::null_mut() } else { buf.as_mut_ptr() };
        match call(&mut count, ptr) {
            NVML_SUCCESS if count as usize <= buf.len() => {
                buf.truncate(count as usize);
                return Ok(buf);
            }
            NVML_SUCCESS if buf.is_empty() => return Ok(Vec::new()),
            rc if rc == none && rc != NVML_SUCCESS => return Ok(Vec::new()),
            NVML_ERROR_INSUFFICIENT_SIZE => buf = vec![zero; (count as usize).saturating_add(8).min(1 << 16)],
            rc => return Err(rc),
        }
    }
    // The list kept growing between calls: answer as the driver would to a short buffer.
    Err(NVML_ERROR_INSUFFICIENT_SIZE)
}

/// A process-list entry: its PID and its memory.
trait ProcessInfo: Copy {
    fn pid(&self) -> u32;
    fn set_used(&mut self, bytes: u64);
}

impl ProcessInfo for nvmlProcessInfo_v1_t {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn set_used(&mut self, bytes: u64) {
        self.usedGpuMemory = bytes;
    }
}

impl ProcessInfo for nvmlProcessInfo_v2_t {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn set_used(&mut self, bytes: u64) {
        self.usedGpuMemory = bytes;
    }
}

/// A running-processes query answered for the slice: the driver's full list, only the slice's
/// processes kept, each with its charge, handed back by nvml.h's rules: a null `count` is
/// `INVALID_ARGUMENT`; a `*count` smaller than the entries (0 asks for the count) gets
/// `INSUFFICIENT_SIZE` with the count needed, or `SUCCESS` when there is none; a null `infos`
/// otherwise is `INVALID_ARGUMENT`.
///
/// # Safety
/// `real` is the driver's query for `device`; `count` and `infos` are as nvml.h says.
unsafe fn running_processes<T: ProcessInfo>(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut T,
    zero: T,
    real: Option<unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut T) -> nvmlReturn_t>,
) -> nvmlReturn_t {
    let Some(real) = real else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    let slice = match slice_of(device) {
        Err(rc) => return rc,
        // SAFETY: the caller's arguments, unchanged, to the driver's own query.
        Ok(None) => return unsafe { real(device, count, infos) },
        Ok(Some(i)) => i,
    };
    // SAFETY: the caller's contract is narrow_processes'; the driver's query gets a live count
    // and a buffer of that many entries.
    unsafe { narrow_processes(slice, count, infos, zero, |n, buf| real(device, n, buf)) }
}

/// The slice's part of a process list: `query` is the driver's list by nvml.h's convention
/// (`*count` in: room; out: entries), the result is written to `count` and `infos` by the same
/// rules (see [`running_processes`]).
///
/// # Safety
/// `count` is null or valid for reads and writes; `infos` is null or holds `*count` entries;
/// `query` may be called with a live count and a buffer of that many entries.
unsafe fn narrow_processes<T: ProcessInfo>(
    slice: usize,
    count: *mut c_uint,
    infos: *mut T,
    zero: T,
    query: impl FnMut(*mut c_uint, *mut T) -> nvmlReturn_t,
) -> nvmlReturn_t {
    if count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let all = match fetch_all(zero, NVML_SUCCESS, query) {
        Ok(all) => all,
        Err(rc) => return rc,
    };
    let ours = match slice_processes(slice) {
        Ok(ours) => ours,
        Err(rc) => return rc,
    };
    let kept: Vec<T> = all
        .into_iter()
        .filter_map(|mut p| {
            let (_, bytes) = ours.iter().find(|(pid, _)| *pid == p.pid())?;
            p.set_used(*bytes);
            Some(p)
        })
        .collect();
    // SAFETY: non-null; readable and writable per the contract.
    let room = unsafe { count.read() } as usize;
    // SAFETY: as above.
    unsafe { count.write(kept.len() as c_uint) };
    if room < kept.len() {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if kept.is_empty() {
        return NVML_SUCCESS;
    }
    if infos.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: `infos` holds `room` ≥ kept.len() entries per the contract; ours cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(kept.as_ptr(), infos, kept.len()) };
    NVML_SUCCESS
}

macro_rules! process_queries {
    ($( $(#[$doc:meta])* $fn_name:ident => $sym:ident, $info:ty; )*) => {$(
        $(#[$doc])*
        /// # Safety
        /// The query's contract in nvml.h.
        pub unsafe fn $fn_name(device: nvmlDevice_t, count: *mut c_uint, infos: *mut $info) -> nvmlReturn_t {
            // SAFETY: the caller's contract is `running_processes`'.
            unsafe { running_processes(device, count, infos, <$info>::default(), nvml().$sym) }
        }
    )*};
}

process_queries! {
    device_get_compute_running_processes => nvmlDeviceGetComputeRunningProcesses, nvmlProcessInfo_v1_t;
    device_get_compute_running_processes_v2 => nvmlDeviceGetComputeRunningProcesses_v2, nvmlProcessInfo_v2_t;
    device_get_compute_running_processes_v3 => nvmlDeviceGetComputeRunningProcesses_v3, nvmlProcessInfo_v2_t;
    device_get_graphics_running_processes => nvmlDeviceGetGraphicsRunningProcesses, nvmlProcessInfo_v1_t;
    device_get_graphics_running_processes_v2 => nvmlDeviceGetGraphicsRunningProcesses_v2, nvmlProcessInfo_v2_t;
    device_get_graphics_running_processes_v3 => nvmlDeviceGetGraphicsRunningProcesses_v3, nvmlProcessInfo_v2_t;
    device_get_mps_compute_running_processes => nvmlDeviceGetMPSComputeRunningProcesses, nvmlProcessInfo_v1_t;
    device_get_mps_compute_running_processes_v2 => nvmlDeviceGetMPSComputeRunningProcesses_v2, nvmlProcessInfo_v2_t;
    device_get_mps_compute_running_processes_v3 => nvmlDeviceGetMPSComputeRunningProcesses_v3, nvmlProcessInfo_v2_t;
}

impl ProcessInfo for nvmlProcessDetail_v1_t {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn set_used(&mut self, bytes: u64) {
        self.usedGpuMemory = bytes;
    }
}

/// `nvmlDeviceGetRunningProcessDetailList` for the slice: as the other process lists, with the
/// caller's `version` and `mode` passed to the driver and the entries in `numProcArrayEntries`
/// and `procArray`.
///
/// # Safety
/// The call's contract in nvml.h.
pub unsafe fn device_get_running_process_detail_list(
    device: nvmlDevice_t,
    list: *mut nvmlProcessDetailList_v1_t,
) -> nvmlReturn_t {
    let Some(real) = nvml().nvmlDeviceGetRunningProcessDetailList else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    let slice = match slice_of(device) {
        Err(rc) => return rc,
        // SAFETY: the caller's arguments, unchanged, to the driver's own query.
        Ok(None) => return unsafe { real(device, list) },
        Ok(Some(i)) => i,
    };
    if list.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null and valid for the struct per the contract; copied, so the driver only
    // ever writes into ours.
    let theirs = unsafe { list.read() };
    let query = |n: *mut c_uint, buf: *mut nvmlProcessDetail_v1_t| {
        // SAFETY: `n` is fetch_all's live count.
        let room = unsafe { n.read() };
        let mut ours = nvmlProcessDetailList_v1_t { numProcArrayEntries: room, procArray: buf, ..theirs };
        // SAFETY: our copy, with a buffer of `room` entries.
        let rc = unsafe { real(device, &mut ours) };
        // SAFETY: as above.
        unsafe { n.write(ours.numProcArrayEntries) };
        rc
    };
    // SAFETY: `running_processes` hands `query` a live count and a buffer of that many entries.
    unsafe {
        narrow_processes(
            slice,
            &raw mut (*list).numProcArrayEntries,
            theirs.procArray,
            nvmlProcessDetail_v1_t::default(),
            query,
        )
    }
}

/// `nvmlDeviceGetProcessesUtilizationInfo` for the slice: the driver's samples of the slice's
/// processes only, by the same rules as `nvmlDeviceGetProcessUtilization`.
///
/// # Safety
/// The call's contract in nvml.h.
pub unsafe fn device_get_processes_utilization_info(
    device: nvmlDevice_t,
    info: *mut nvmlProcessesUtilizationInfo_v1_t,
) -> nvmlReturn_t {
    let Some(real) = nvml().nvmlDeviceGetProcessesUtilizationInfo else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    let slice = match slice_of(device) {
        Err(rc) => return rc,
        // SAFETY: the caller's arguments, unchanged, to the driver's own query.
        Ok(None) => return unsafe { real(device, info) },
        Ok(Some(i)) => i,
    };
    if info.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null and valid for the struct per the contract; copied.
    let theirs = unsafe { info.read() };
    let all = fetch_all(nvmlProcessUtilizationInfo_v1_t::default(), NVML_ERROR_NOT_FOUND, |n, buf| {
        // SAFETY: `n` is fetch_all's live count.
        let room = unsafe { n.read() };
        let mut ours = nvmlProcessesUtilizationInfo_v1_t { processSamplesCount: room, procUtilArray: buf, ..theirs };
        // SAFETY: our copy, with a buffer of `room` entries.
        let rc = unsafe { real(device, &mut ours) };
        // SAFETY: as above.
        unsafe { n.write(ours.processSamplesCount) };
        rc
    });
    let kept: Vec<_> = match all.and_then(|all| Ok((all, slice_processes(slice)?))) {
        Ok((all, ours)) => all.into_iter().filter(|s| ours.iter().any(|(pid, _)| *pid == s.pid)).collect(),
        Err(rc) => return rc,
    };
    // SAFETY: non-null; the caller's struct.
    let info = unsafe { &mut *info };
    let room = info.processSamplesCount as usize;
    info.processSamplesCount = kept.len() as c_uint;
    if kept.is_empty() {
        return NVML_ERROR_NOT_FOUND;
    }
    if info.procUtilArray.is_null() || room < kept.len() {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: `procUtilArray` holds `room` ≥ kept.len() entries per the contract.
    unsafe { std::ptr::copy_nonoverlapping(kept.as_ptr(), info.procUtilArray, kept.len()) };
    NVML_SUCCESS
}

/// The driver's per-process utilisation samples since `last_seen` of the slice's processes.
fn slice_samples(
    device: nvmlDevice_t,
    slice: usize,
    last_seen: u64,
) -> Result<Vec<nvmlProcessUtilizationSample_t>, nvmlReturn_t> {
    let Some(real) = nvml().nvmlDeviceGetProcessUtilization else { return Err(NVML_ERROR_FUNCTION_NOT_FOUND) };
    // SAFETY: a buffer of `*n` samples, as the query's convention asks.
    let all = fetch_all(nvmlProcessUtilizationSample_t::default(), NVML_ERROR_NOT_FOUND, |n, buf| unsafe {
        real(device, buf, n, last_seen)
    })?;
    let ours = slice_processes(slice)?;
    Ok(all.into_iter().filter(|s| ours.iter().any(|(pid, _)| *pid == s.pid)).collect())
}

/// The slice's (gpu, memory) utilisation over the last second: over its processes, the sum of
/// each one's mean sample (a driver may answer several samples of one process), at most 100.
fn slice_utilization(device: nvmlDevice_t, slice: usize) -> Result<(u32, u32), nvmlReturn_t> {
    let samples = slice_samples(device, slice, now_us().saturating_sub(1_000_000))?;
    let mut pids: Vec<u32> = samples.iter().map(|s| s.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let sum = |f: fn(&nvmlProcessUtilizationSample_t) -> u32| {
        let mean = |pid: u32| {
            let of: Vec<u64> = samples.iter().filter(|s| s.pid == pid).map(|s| u64::from(f(s))).collect();
            (of.iter().sum::<u64>() / of.len().max(1) as u64) as u32
        };
        pids.iter().map(|&p| mean(p)).fold(0u32, u32::saturating_add).min(100)
    };
    Ok((sum(|s| s.smUtil), sum(|s| s.memUtil)))
}

/// # Safety
/// `nvmlDeviceGetProcessUtilization`'s contract.
pub unsafe fn device_get_process_utilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    count: *mut c_uint,
    last_seen: u64,
) -> nvmlReturn_t {
    let Some(real) = nvml().nvmlDeviceGetProcessUtilization else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    let slice = match slice_of(device) {
        Err(rc) => return rc,
        // SAFETY: the caller's arguments, unchanged, to the driver's own query.
        Ok(None) => return unsafe { real(device, utilization, count, last_seen) },
        Ok(Some(i)) => i,
    };
    if count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let kept = match slice_samples(device, slice, last_seen) {
        Ok(kept) => kept,
        Err(rc) => return rc,
    };
    // SAFETY: non-null; readable and writable per the contract.
    let room = unsafe { count.read() } as usize;
    // SAFETY: as above.
    unsafe { count.write(kept.len() as c_uint) };
    if kept.is_empty() {
        return NVML_ERROR_NOT_FOUND;
    }
    if utilization.is_null() || room < kept.len() {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: `utilization` holds `room` ≥ kept.len() samples per the contract.
    unsafe { std::ptr::copy_nonoverlapping(kept.as_ptr(), utilization, kept.len()) };
    NVML_SUCCESS
}

/// # Safety
/// `nvmlDeviceGetUtilizationRates`' contract.
pub unsafe fn device_get_utilization_rates(device: nvmlDevice_t, utilization: *mut nvmlUtilization_t) -> nvmlReturn_t {
    let Some(real) = nvml().nvmlDeviceGetUtilizationRates else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    // SAFETY: the caller's arguments, unchanged, to the driver's own query.
    let rc = unsafe { real(device, utilization) };
    if rc != NVML_SUCCESS || utilization.is_null() {
        return rc;
    }
    match slice_of(device).and_then(|slice| slice.map(|i| slice_utilization(device, i)).transpose()) {
        Err(rc) => rc,
        Ok(None) => rc,
        Ok(Some((gpu, memory))) => {
            // SAFETY: checked non-null; the driver just filled it.
            unsafe { utilization.write(nvmlUtilization_t { gpu, memory }) };
            rc
        }
    }
}

/// # Safety
/// `nvmlDeviceGetSamples`' contract.
pub unsafe fn device_get_samples(
    device: nvmlDevice_t,
    kind: nvmlSamplingType_t,
    last_seen: u64,
    value_type: *mut nvmlValueType_t,
    count: *mut c_uint,
    samples: *mut nvmlSample_t,
) -> nvmlReturn_t {
    let Some(real) = nvml().nvmlDeviceGetSamples else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    let utilization = kind == NVML_GPU_UTILIZATION_SAMPLES || kind == NVML_MEMORY_UTILIZATION_SAMPLES;
    let slice = match slice_of(device) {
        Err(rc) => return rc,
        Ok(Some(i)) if utilization => i,
        // SAFETY: the caller's arguments, unchanged, to the driver's own query.
        Ok(_) => return unsafe { real(device, kind, last_seen, value_type, count, samples) },
    };
    if value_type.is_null() || count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // The driver's size query, for its verdict on the device and the sampling type.
    let mut driver_type: nvmlValueType_t = 0;
    let mut driver_count: c_uint = 0;
    // SAFETY: valid out pointers and a null buffer: the size query.
    let rc = unsafe { real(device, kind, last_seen, &mut driver_type, &mut driver_count, std::ptr::null_mut()) };
    if rc != NVML_SUCCESS {
        return rc;
    }
    // SAFETY: non-null; writable per the contract.
    unsafe { value_type.write(NVML_VALUE_TYPE_UNSIGNED_INT) };
    if samples.is_null() {
        // SAFETY: as above.
        unsafe { count.write(1) };
        return NVML_SUCCESS;
    }
    let now = now_us();
    // SAFETY: non-null; readable per the contract.
    let room = unsafe { count.read() };
    if now <= last_seen || room == 0 {
        // SAFETY: as above.
        unsafe { count.write(0) };
        return if room == 0 { NVML_ERROR_INSUFFICIENT_SIZE } else { NVML_ERROR_NOT_FOUND };
    }
    let (gpu, memory) = match slice_utilization(device, slice) {
        Ok(u) => u,
        Err(rc) => return rc,
    };
    let value = if kind == NVML_GPU_UTILIZATION_SAMPLES { gpu } else { memory };
    // The whole union is written (little-endian: `uiVal` reads the low half).
    let sample = nvmlSample_t { timeStamp: now, sampleValue: nvmlValue_t { ullVal: u64::from(value) } };
    // SAFETY: room ≥ 1 sample per the contract.
    unsafe {
        samples.write(sample);
        count.write(1);
    }
    NVML_SUCCESS
}

/// # Safety
/// `nvmlDeviceGetBAR1MemoryInfo`'s contract.
pub unsafe fn device_get_bar1_memory_info(device: nvmlDevice_t, bar1: *mut nvmlBAR1Memory_t) -> nvmlReturn_t {
    let Some(real) = nvml().nvmlDeviceGetBAR1MemoryInfo else { return NVML_ERROR_FUNCTION_NOT_FOUND };
    // SAFETY: the caller's arguments, unchanged, to the driver's own query.
    let rc = unsafe { real(device, bar1) };
    if rc != NVML_SUCCESS || bar1.is_null() {
        return rc;
    }
    let slice = match slice_of(device) {
        Err(rc) => return rc,
        Ok(None) => return rc,
        Ok(Some(i)) => i,
    };
    let limit = state().slices[slice].limit();
    // SAFETY: checked non-null; the driver just filled it.
    let b = unsafe { &mut *bar1 };
    let total = b.bar1Total.min(limit);
    (b.bar1Total, b.bar1Used, b.bar1Free) = (total, 0, total);
    rc
}
