//! NVML memory queries answer for the slice, so `nvidia-smi` in a container shows the slice.

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
                // The driver's own reservation is part of the slice's usage as the shim counts it.
                (m.total, m.reserved, m.used, m.free) = (total, 0, used, free);
            },
        )
    }
}
