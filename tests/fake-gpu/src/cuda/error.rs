//! `CUresult` codes: their `cuda.h` names and the text `cuGetErrorString` gives.

use std::ffi::CStr;

/// `CUresult`, an `enum cudaError_enum` in `cuda.h` (generated with the rest of the header).
pub use gpuslice_cuda_abi::cuda::CUresult;

/// A driver call's outcome inside the library; `Err` carries the code to return.
pub type CuResult<T = ()> = Result<T, CUresult>;

pub const SUCCESS: CUresult = gpuslice_cuda_abi::cuda::CUDA_SUCCESS;
pub const INVALID_VALUE: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_INVALID_VALUE;
pub const OUT_OF_MEMORY: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_OUT_OF_MEMORY;
pub const FILE_NOT_FOUND: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_FILE_NOT_FOUND;
pub const NOT_INITIALIZED: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_NOT_INITIALIZED;
pub const NO_DEVICE: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_NO_DEVICE;
pub const INVALID_DEVICE: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_INVALID_DEVICE;
pub const INVALID_IMAGE: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_INVALID_IMAGE;
pub const INVALID_CONTEXT: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_INVALID_CONTEXT;
pub const UNSUPPORTED_LIMIT: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_UNSUPPORTED_LIMIT;
pub const INVALID_HANDLE: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_INVALID_HANDLE;
pub const ILLEGAL_STATE: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_ILLEGAL_STATE;
pub const NOT_FOUND: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_NOT_FOUND;
pub const NOT_READY: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_NOT_READY;
pub const COOPERATIVE_LAUNCH_TOO_LARGE: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE;
pub const NOT_SUPPORTED: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_NOT_SUPPORTED;
pub const STREAM_CAPTURE_UNSUPPORTED: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
pub const STREAM_CAPTURE_INVALIDATED: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
pub const CAPTURED_EVENT: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_CAPTURED_EVENT;
pub const STREAM_CAPTURE_WRONG_THREAD: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
pub const HOST_MEMORY_ALREADY_REGISTERED: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
pub const HOST_MEMORY_NOT_REGISTERED: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
pub const UNKNOWN: CUresult = gpuslice_cuda_abi::cuda::CUDA_ERROR_UNKNOWN;

/// The codes this driver knows: `cuda.h` name and `cuGetErrorString` text. A code not
/// listed makes `cuGetErrorName`/`cuGetErrorString` answer `CUDA_ERROR_INVALID_VALUE`, as
/// the real driver does for codes it does not know.
const CODES: &[(CUresult, &CStr, &CStr)] = &[
    (SUCCESS, c"CUDA_SUCCESS", c"no error"),
    (INVALID_VALUE, c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
    (OUT_OF_MEMORY, c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
    (NOT_INITIALIZED, c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
    (4, c"CUDA_ERROR_DEINITIALIZED", c"driver shutting down"),
    (5, c"CUDA_ERROR_PROFILER_DISABLED", c"profiler disabled while using external profiling tool"),
    (6, c"CUDA_ERROR_PROFILER_NOT_INITIALIZED", c"profiler not initialized: call cudaProfilerInitialize()"),
    (7, c"CUDA_ERROR_PROFILER_ALREADY_STARTED", c"profiler already started"),
    (8, c"CUDA_ERROR_PROFILER_ALREADY_STOPPED", c"profiler already stopped"),
    (34, c"CUDA_ERROR_STUB_LIBRARY", c"CUDA driver is a stub library"),
    (36, c"CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER", c"API call requires a newer driver"),
    (46, c"CUDA_ERROR_DEVICE_UNAVAILABLE", c"CUDA-capable device(s) is/are busy or unavailable"),
    (NO_DEVICE, c"CUDA_ERROR_NO_DEVICE", c"no CUDA-capable device is detected"),
    (INVALID_DEVICE, c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
    (102, c"CUDA_ERROR_DEVICE_NOT_LICENSED", c"device doesn't have valid Grid license"),
    (INVALID_IMAGE, c"CUDA_ERROR_INVALID_IMAGE", c"device kernel image is invalid"),
    (INVALID_CONTEXT, c"CUDA_ERROR_INVALID_CONTEXT", c"invalid device context"),
    (202, c"CUDA_ERROR_CONTEXT_ALREADY_CURRENT", c"context already current"),
    (205, c"CUDA_ERROR_MAP_FAILED", c"mapping of buffer object failed"),
    (206, c"CUDA_ERROR_UNMAP_FAILED", c"unmapping of buffer object failed"),
    (207, c"CUDA_ERROR_ARRAY_IS_MAPPED", c"array is mapped"),
    (208, c"CUDA_ERROR_ALREADY_MAPPED", c"resource already mapped"),
    (209, c"CUDA_ERROR_NO_BINARY_FOR_GPU", c"no kernel image is available for execution on the device"),
    (210, c"CUDA_ERROR_ALREADY_ACQUIRED", c"resource already acquired"),
    (211, c"CUDA_ERROR_NOT_MAPPED", c"resource not mapped"),
    (214, c"CUDA_ERROR_ECC_UNCORRECTABLE", c"uncorrectable ECC error encountered"),
    (UNSUPPORTED_LIMIT, c"CUDA_ERROR_UNSUPPORTED_LIMIT", c"limit is not supported on this architecture"),
    (216, c"CUDA_ERROR_CONTEXT_ALREADY_IN_USE", c"exclusive-thread device already in use by a different thread"),
    (218, c"CUDA_ERROR_INVALID_PTX", c"a PTX JIT compilation failed"),
    (224, c"CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY", c"the provided execution affinity is not supported"),
    (300, c"CUDA_ERROR_INVALID_SOURCE", c"device kernel image is invalid"),
    (301, c"CUDA_ERROR_FILE_NOT_FOUND", c"file not found"),
    (302, c"CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND", c"shared object symbol not found"),
    (303, c"CUDA_ERROR_SHARED_OBJECT_INIT_FAILED", c"shared object initialization failed"),
    (304, c"CUDA_ERROR_OPERATING_SYSTEM", c"OS call failed or operation not supported on this OS"),
    (INVALID_HANDLE, c"CUDA_ERROR_INVALID_HANDLE", c"invalid resource handle"),
    (ILLEGAL_STATE, c"CUDA_ERROR_ILLEGAL_STATE", c"the operation cannot be performed in the present state"),
    (NOT_FOUND, c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
    (NOT_READY, c"CUDA_ERROR_NOT_READY", c"device not ready"),
    (700, c"CUDA_ERROR_ILLEGAL_ADDRESS", c"an illegal memory access was encountered"),
    (701, c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", c"too many resources requested for launch"),
    (702, c"CUDA_ERROR_LAUNCH_TIMEOUT", c"the launch timed out and was terminated"),
    (708, c"CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE", c"primary context active"),
    (709, c"CUDA_ERROR_CONTEXT_IS_DESTROYED", c"context is destroyed"),
    (710, c"CUDA_ERROR_ASSERT", c"device-side assert triggered"),
    (
        HOST_MEMORY_ALREADY_REGISTERED,
        c"CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
        c"part or all of the requested memory range is already mapped",
    ),
    (
        HOST_MEMORY_NOT_REGISTERED,
        c"CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
        c"pointer does not correspond to a registered memory region",
    ),
    (714, c"CUDA_ERROR_HARDWARE_STACK_ERROR", c"hardware stack error"),
    (715, c"CUDA_ERROR_ILLEGAL_INSTRUCTION", c"an illegal instruction was encountered"),
    (716, c"CUDA_ERROR_MISALIGNED_ADDRESS", c"misaligned address"),
    (719, c"CUDA_ERROR_LAUNCH_FAILED", c"unspecified launch failure"),
    (
        COOPERATIVE_LAUNCH_TOO_LARGE,
        c"CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
        c"too many blocks in cooperative launch",
    ),
    (800, c"CUDA_ERROR_NOT_PERMITTED", c"operation not permitted"),
    (NOT_SUPPORTED, c"CUDA_ERROR_NOT_SUPPORTED", c"operation not supported"),
    (802, c"CUDA_ERROR_SYSTEM_NOT_READY", c"system not yet initialized"),
    (803, c"CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", c"system has unsupported display driver / cuda driver combination"),
    (804, c"CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", c"forward compatibility was attempted on non supported HW"),
    (
        STREAM_CAPTURE_UNSUPPORTED,
        c"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        c"operation not permitted when stream is capturing",
    ),
    (
        STREAM_CAPTURE_INVALIDATED,
        c"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        c"operation failed due to a previous error during capture",
    ),
    (
        CAPTURED_EVENT,
        c"CUDA_ERROR_CAPTURED_EVENT",
        c"operation not permitted on an event last recorded in a capturing stream",
    ),
    (
        STREAM_CAPTURE_WRONG_THREAD,
        c"CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
        c"attempt to terminate a thread-local capture sequence from another thread",
    ),
    (909, c"CUDA_ERROR_TIMEOUT", c"wait operation timed out"),
    (UNKNOWN, c"CUDA_ERROR_UNKNOWN", c"unknown error"),
];

/// `cuGetErrorName`'s answer for `code`.
pub fn name(code: CUresult) -> Option<&'static CStr> {
    CODES.iter().find(|(c, _, _)| *c == code).map(|(_, name, _)| *name)
}

/// `cuGetErrorString`'s answer for `code`.
pub fn description(code: CUresult) -> Option<&'static CStr> {
    CODES.iter().find(|(c, _, _)| *c == code).map(|(_, _, text)| *text)
}

/// The error named `name` (`"NO_DEVICE"` or `"CUDA_ERROR_NO_DEVICE"`); `None` for unknown
/// names and for success.
pub fn code_by_name(name: &str) -> Option<CUresult> {
    let name = name.strip_prefix("CUDA_ERROR_").unwrap_or(name);
    CODES
        .iter()
        .find(|(code, full, _)| {
            *code != SUCCESS && full.to_bytes().strip_prefix(b"CUDA_ERROR_") == Some(name.as_bytes())
        })
        .map(|(code, _, _)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_with_or_without_prefix() {
        assert_eq!(code_by_name("NO_DEVICE"), Some(NO_DEVICE));
        assert_eq!(code_by_name("CUDA_ERROR_OUT_OF_MEMORY"), Some(OUT_OF_MEMORY));
        assert_eq!(code_by_name("SUCCESS"), None);
        assert_eq!(code_by_name("CUDA_SUCCESS"), None);
        assert_eq!(code_by_name("no_device"), None);
    }

    #[test]
    fn every_code_has_one_name() {
        for (i, (code, name, _)) in CODES.iter().enumerate() {
            assert!(CODES[i + 1..].iter().all(|(c, n, _)| c != code && n != name), "{name:?}");
        }
        assert_eq!(name(INVALID_CONTEXT), Some(c"CUDA_ERROR_INVALID_CONTEXT"));
        assert_eq!(description(OUT_OF_MEMORY), Some(c"out of memory"));
        assert_eq!(name(12345), None);
    }
}
