//! The driver's C types, constants and signatures are NVIDIA's, generated once for the
//! workspace (`gpuslice_cuda_abi`: `cuda.h`, `cudaTypedefs.h`, `nvml.h`); this module re-exports
//! them and keeps what only the shim adds.

pub use gpuslice_cuda_abi::cuda::*;
pub use gpuslice_cuda_abi::nvml::{
    NVML_DEVICE_UUID_V2_BUFFER_SIZE, NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NO_PERMISSION, NVML_ERROR_UNKNOWN, NVML_SUCCESS, nvmlDevice_t, nvmlMemory_t, nvmlMemory_v2_t,
    nvmlReturn_t,
};
pub use gpuslice_cuda_abi::nvml::{
    NVML_ERROR_INSUFFICIENT_SIZE, NVML_ERROR_NOT_FOUND, NVML_GPU_UTILIZATION_SAMPLES, NVML_MEMORY_UTILIZATION_SAMPLES,
    NVML_VALUE_TYPE_UNSIGNED_INT, nvmlBAR1Memory_t, nvmlProcessDetail_v1_t, nvmlProcessDetailList_v1_t,
    nvmlProcessInfo_v1_t, nvmlProcessInfo_v2_t, nvmlProcessUtilizationInfo_v1_t, nvmlProcessUtilizationSample_t,
    nvmlProcessesUtilizationInfo_v1_t, nvmlSample_t, nvmlSamplingType_t, nvmlUtilization_t, nvmlValue_t,
    nvmlValueType_t,
};
pub use gpuslice_cuda_abi::proc::PER_THREAD_DEFAULT_STREAM as CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;

/// The device a `CUmemLocation` names (its `id`, for `CU_MEM_LOCATION_TYPE_DEVICE`).
pub fn location_id(location: &CUmemLocation) -> i32 {
    // SAFETY: every member of the 4-byte union is plain data, `int id` the widest; reading it
    // reads initialised bytes whatever the caller stored.
    unsafe { location.__bindgen_anon_1.id }
}

/// Bytes per element of one channel of a `CUarray_format`. Formats the shim does not know
/// are charged as 16 bytes, the largest element size, so a new format is never undercharged.
pub fn array_format_bytes(format: CUarray_format) -> u64 {
    match format {
        CU_AD_FORMAT_UNSIGNED_INT8 | CU_AD_FORMAT_SIGNED_INT8 => 1,
        CU_AD_FORMAT_UNSIGNED_INT16 | CU_AD_FORMAT_SIGNED_INT16 | CU_AD_FORMAT_HALF => 2,
        CU_AD_FORMAT_UNSIGNED_INT32 | CU_AD_FORMAT_SIGNED_INT32 | CU_AD_FORMAT_FLOAT => 4,
        _ => 16,
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` for a CUDA UUID.
pub fn format_uuid(u: &CUuuid) -> String {
    let h: String = u.bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
    format!("GPU-{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
