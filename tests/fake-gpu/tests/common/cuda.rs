//! The CUDA driver API of the built `libfakegpu.so`, loaded with `dlopen` as the CUDA
//! runtime and gpuslice's shim load `libcuda.so.1`, with the types and signatures generated
//! from NVIDIA's headers (`gpuslice_cuda_abi`).
#![allow(dead_code, non_snake_case, clippy::type_complexity)]

use std::ffi::{CString, c_int, c_void};
use std::os::unix::ffi::OsStrExt;

use super::lib_path;

pub use fakegpu::cuda::types::*;
use gpuslice_cuda_abi::cuda::sym;

// The codes the tests compare with, by their cuda.h names without `CUDA_ERROR_`.
pub const SUCCESS: CUresult = CUDA_SUCCESS;
pub const INVALID_VALUE: CUresult = CUDA_ERROR_INVALID_VALUE;
pub const OUT_OF_MEMORY: CUresult = CUDA_ERROR_OUT_OF_MEMORY;
pub const NOT_INITIALIZED: CUresult = CUDA_ERROR_NOT_INITIALIZED;
pub const NO_DEVICE: CUresult = CUDA_ERROR_NO_DEVICE;
pub const INVALID_DEVICE: CUresult = CUDA_ERROR_INVALID_DEVICE;
pub const INVALID_CONTEXT: CUresult = CUDA_ERROR_INVALID_CONTEXT;
pub const INVALID_HANDLE: CUresult = CUDA_ERROR_INVALID_HANDLE;
pub const NOT_FOUND: CUresult = CUDA_ERROR_NOT_FOUND;
pub const NOT_READY: CUresult = CUDA_ERROR_NOT_READY;
pub const ILLEGAL_STATE: CUresult = CUDA_ERROR_ILLEGAL_STATE;
pub const COOPERATIVE_LAUNCH_TOO_LARGE: CUresult = CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE;
pub const NOT_SUPPORTED: CUresult = CUDA_ERROR_NOT_SUPPORTED;
pub const STREAM_CAPTURE_UNSUPPORTED: CUresult = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
pub const STREAM_CAPTURE_INVALIDATED: CUresult = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
pub const CAPTURED_EVENT: CUresult = CUDA_ERROR_CAPTURED_EVENT;
pub const STREAM_CAPTURE_WRONG_THREAD: CUresult = CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;

pub const MIB: u64 = 1 << 20;

/// Pinned memory on `device`.
pub fn device_prop(device: c_int) -> CUmemAllocationProp {
    let mut p = CUmemAllocationProp { type_: CU_MEM_ALLOCATION_TYPE_PINNED, ..Default::default() };
    p.location = device_location(device);
    p
}

/// Pinned memory on `device` that may be exported as a POSIX file descriptor.
pub fn shareable_prop(device: c_int) -> CUmemAllocationProp {
    CUmemAllocationProp { requestedHandleTypes: POSIX_FD, ..device_prop(device) }
}

/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`.
pub const POSIX_FD: CUmemAllocationHandleType = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
/// `CU_MEM_HANDLE_TYPE_FABRIC`.
pub const FABRIC: CUmemAllocationHandleType = CU_MEM_HANDLE_TYPE_FABRIC;

/// `CU_MEM_LOCATION_TYPE_DEVICE` `device`.
pub fn device_location(device: c_int) -> CUmemLocation {
    let mut l = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, ..Default::default() };
    l.__bindgen_anon_1.id = device;
    l
}

/// A launch attribute whose value is an `int` (`cooperative`, `priority`, …).
pub fn int_attribute(id: CUlaunchAttributeID, value: c_int) -> CUlaunchAttribute {
    let mut a = CUlaunchAttribute { id, ..Default::default() };
    a.value.cooperative = value;
    a
}

macro_rules! driver {
    ($($name:ident;)*) => {
        /// The library's handle and every function the tests call.
        pub struct Cuda {
            pub handle: *mut c_void,
            $(pub $name: sym::$name,)*
        }

        impl Cuda {
            /// `dlopen` the built library (once per process; later calls share the handle).
            pub fn load() -> Self {
                let path = CString::new(lib_path().as_os_str().as_bytes()).expect("a path without NUL");
                // SAFETY: loading the fake driver runs no initialisers beyond Rust's own.
                let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                assert!(!handle.is_null(), "dlopen {}", lib_path().display());
                Self {
                    handle,
                    $($name: {
                        let f = sym(handle, stringify!($name));
                        assert!(!f.is_null(), "{} is not exported", stringify!($name));
                        // SAFETY: the symbol is the export of that name, whose signature is
                        // the one declared here (as in cuda.h).
                        unsafe { std::mem::transmute::<*mut c_void, sym::$name>(f) }
                    },)*
                }
            }

            /// `dlsym(handle, name)`.
            pub fn sym(&self, name: &str) -> *mut c_void {
                sym(self.handle, name)
            }
        }
    };
}

fn sym(handle: *mut c_void, name: &str) -> *mut c_void {
    let name = CString::new(name).expect("a name without NUL");
    // SAFETY: `handle` came from dlopen and `name` is NUL-terminated.
    unsafe { libc::dlsym(handle, name.as_ptr()) }
}

driver! {
    cuInit;
    cuDriverGetVersion;
    cuGetErrorName;
    cuGetErrorString;
    cuGetProcAddress;
    cuGetProcAddress_v2;
    cuDeviceGetCount;
    cuDeviceGet;
    cuDeviceGetName;
    cuDeviceGetUuid;
    cuDeviceGetUuid_v2;
    cuDeviceGetPCIBusId;
    cuDeviceTotalMem_v2;
    cuDeviceGetAttribute;
    cuDeviceGetDefaultMemPool;
    cuDeviceGetMemPool;
    cuDevicePrimaryCtxRetain;
    cuDevicePrimaryCtxRelease;
    cuDevicePrimaryCtxRelease_v2;
    cuDevicePrimaryCtxReset_v2;
    cuDevicePrimaryCtxGetState;
    cuCtxCreate_v2;
    cuCtxCreate_v3;
    cuCtxCreate_v4;
    cuCtxDestroy_v2;
    cuCtxSetCurrent;
    cuCtxGetCurrent;
    cuCtxPushCurrent_v2;
    cuCtxPopCurrent_v2;
    cuCtxGetDevice;
    cuCtxGetDevice_v2;
    cuCtxSynchronize;
    cuCtxSynchronize_v2;
    cuMemAlloc_v2;
    cuMemAllocPitch_v2;
    cuMemAllocManaged;
    cuMemFree_v2;
    cuMemGetInfo_v2;
    cuMemCreate;
    cuMemRelease;
    cuMemAddressReserve;
    cuMemAddressFree;
    cuMemMap;
    cuMemUnmap;
    cuMemSetAccess;
    cuMemGetAllocationGranularity;
    cuMemRetainAllocationHandle;
    cuMemExportToShareableHandle;
    cuMemImportFromShareableHandle;
    cuMemAllocAsync;
    cuMemAllocAsync_ptsz;
    cuMemFreeAsync;
    cuMemPoolCreate;
    cuMemPoolDestroy;
    cuMemAllocFromPoolAsync;
    cuMemPoolTrimTo;
    cuMemPoolGetAttribute;
    cuArrayCreate_v2;
    cuArray3DCreate_v2;
    cuArrayDestroy;
    cuMipmappedArrayCreate;
    cuMipmappedArrayDestroy;
    cuMemcpyHtoD_v2;
    cuMemcpyHtoD_v2_ptds;
    cuMemcpyDtoH_v2;
    cuMemcpyDtoD_v2;
    cuMemcpyHtoDAsync_v2;
    cuMemcpyDtoHAsync_v2;
    cuMemcpyDtoDAsync_v2;
    cuMemsetD8_v2;
    cuMemsetD32_v2;
    cuStreamCreate;
    cuStreamDestroy_v2;
    cuStreamSynchronize;
    cuStreamSynchronize_ptsz;
    cuStreamQuery;
    cuEventCreate;
    cuEventRecord;
    cuEventSynchronize;
    cuEventQuery;
    cuEventElapsedTime;
    cuEventElapsedTime_v2;
    cuEventDestroy_v2;
    cuModuleLoadData;
    cuModuleUnload;
    cuModuleGetFunction;
    cuLaunchKernel;
    cuLaunchKernel_ptsz;
    cuLaunchKernelEx;
    cuLaunchKernelEx_ptsz;
    cuLaunchCooperativeKernel;
    cuLaunchCooperativeKernel_ptsz;
    cuLaunchCooperativeKernelMultiDevice;
    cuGraphCreate;
    cuGraphAddKernelNode;
    cuGraphAddKernelNode_v2;
    cuGraphInstantiate;
    cuGraphInstantiate_v2;
    cuGraphInstantiateWithFlags;
    cuGraphLaunch;
    cuGraphLaunch_ptsz;
    cuGraphExecDestroy;
    cuGraphDestroy;
    cuStreamBeginCapture;
    cuStreamBeginCapture_v2;
    cuStreamBeginCapture_v2_ptsz;
    cuStreamEndCapture;
    cuStreamEndCapture_ptsz;
    cuStreamIsCapturing;
    cuStreamIsCapturing_ptsz;
    cuGetExportTable;
    cuLibraryLoadData;
    cuLibraryUnload;
    cuLibraryGetKernel;
    cuLibraryGetModule;
    cuKernelGetFunction;
    cuKernelGetName;
    cuFuncGetAttribute;
    cuCtxGetApiVersion;
    cuCtxGetFlags;
    cuDevicePrimaryCtxSetFlags_v2;
    cuCtxGetLimit;
    cuCtxSetLimit;
    cuCtxGetStreamPriorityRange;
    cuMemHostAlloc;
    cuMemFreeHost;
    cuMemHostRegister_v2;
    cuMemHostUnregister;
    cuMemHostGetFlags;
    cuMemHostGetDevicePointer_v2;
    cuMemGetAddressRange_v2;
    cuMemPoolSetAttribute;
    cuStreamCreateWithPriority;
    cuStreamGetPriority;
    cuGreenCtxCreate;
    cuGraphGetNodes;
    cuStreamGetCaptureInfo;
    cuStreamGetCaptureInfo_v2;
    cuStreamGetCaptureInfo_v3;
    cuStreamGetCaptureInfo_v3_ptsz;
    cuStreamUpdateCaptureDependencies;
    cuStreamUpdateCaptureDependencies_v2;
    cuEventRecordWithFlags;
    cuThreadExchangeStreamCaptureMode;
    cuMemsetD8Async;
    cuMemsetD32Async;
}
