//! The CUDA driver API of the built `libfakegpu.so`, loaded with `dlopen` as the CUDA
//! runtime and gpuslice's shim load `libcuda.so.1`, with the signatures of `cuda.h`.
#![allow(dead_code, non_snake_case, clippy::type_complexity)]

use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::os::unix::ffi::OsStrExt;

use super::lib_path;

pub type CUresult = u32;
pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
pub type Handle = *mut c_void;

pub const SUCCESS: CUresult = 0;
pub const INVALID_VALUE: CUresult = 1;
pub const OUT_OF_MEMORY: CUresult = 2;
pub const NOT_INITIALIZED: CUresult = 3;
pub const NO_DEVICE: CUresult = 100;
pub const INVALID_DEVICE: CUresult = 101;
pub const INVALID_CONTEXT: CUresult = 201;
pub const INVALID_HANDLE: CUresult = 400;
pub const NOT_FOUND: CUresult = 500;
pub const NOT_READY: CUresult = 600;
pub const ILLEGAL_STATE: CUresult = 401;
pub const COOPERATIVE_LAUNCH_TOO_LARGE: CUresult = 720;
pub const STREAM_CAPTURE_UNSUPPORTED: CUresult = 900;
pub const STREAM_CAPTURE_INVALIDATED: CUresult = 901;
pub const CAPTURED_EVENT: CUresult = 907;
pub const STREAM_CAPTURE_WRONG_THREAD: CUresult = 908;

pub const MIB: u64 = 1 << 20;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CUmemLocation {
    pub type_: c_int,
    pub id: c_int,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAllocationProp {
    pub type_: c_int,
    pub requested_handle_types: c_int,
    pub location: CUmemLocation,
    pub win32_handle_meta_data: *mut c_void,
    pub alloc_flags: [u8; 8],
}

impl CUmemAllocationProp {
    /// Pinned memory on `device`.
    pub fn device(device: c_int) -> Self {
        Self {
            type_: 1,
            requested_handle_types: 0,
            location: CUmemLocation { type_: 1, id: device },
            win32_handle_meta_data: std::ptr::null_mut(),
            alloc_flags: [0; 8],
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAccessDesc {
    pub location: CUmemLocation,
    pub flags: c_int,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemPoolProps {
    pub alloc_type: c_int,
    pub handle_types: c_int,
    pub location: CUmemLocation,
    pub win32_security_attributes: *mut c_void,
    pub max_size: usize,
    pub usage: u16,
    pub gpu_direct_rdma_capable: u8,
    pub reserved: [u8; 53],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_ARRAY_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    pub Format: c_int,
    pub NumChannels: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_ARRAY3D_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    pub Depth: usize,
    pub Format: c_int,
    pub NumChannels: c_uint,
    pub Flags: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUexecAffinityParam {
    pub type_: c_int,
    pub sm_count: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUctxCreateParams {
    pub exec_affinity_params: *mut CUexecAffinityParam,
    pub num_exec_affinity_params: c_int,
    pub cig_params: *mut c_void,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUlaunchAttribute {
    pub id: c_int,
    pub pad: [u8; 4],
    /// The 64-byte value union; `int` members come first.
    pub value: [u64; 8],
}

impl CUlaunchAttribute {
    pub fn int(id: c_int, value: c_int) -> Self {
        let mut v = [0u64; 8];
        v[0] = u64::from(value as u32);
        Self { id, pad: [0; 4], value: v }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUlaunchConfig {
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub stream: Handle,
    pub attrs: *mut CUlaunchAttribute,
    pub num_attrs: c_uint,
}

/// `CUDA_KERNEL_NODE_PARAMS_v2`; its first seven members are v1.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_KERNEL_NODE_PARAMS {
    pub func: Handle,
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub kernel_params: *mut *mut c_void,
    pub extra: *mut *mut c_void,
    pub kern: Handle,
    pub ctx: Handle,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_LAUNCH_PARAMS {
    pub function: Handle,
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub stream: Handle,
    pub kernel_params: *mut *mut c_void,
}

const _: () = assert!(std::mem::size_of::<CUlaunchAttribute>() == 72);
const _: () = assert!(std::mem::size_of::<CUlaunchConfig>() == 56);
const _: () = assert!(std::mem::size_of::<CUDA_KERNEL_NODE_PARAMS>() == 72);
const _: () = assert!(std::mem::size_of::<CUDA_LAUNCH_PARAMS>() == 56);

macro_rules! driver {
    ($($name:ident($($arg:ty),*);)*) => {
        /// The library's handle and every function the tests call.
        pub struct Cuda {
            pub handle: *mut c_void,
            $(pub $name: unsafe extern "C" fn($($arg),*) -> CUresult,)*
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
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> CUresult>(f) }
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
    cuInit(c_uint);
    cuDriverGetVersion(*mut c_int);
    cuGetErrorName(CUresult, *mut *const c_char);
    cuGetErrorString(CUresult, *mut *const c_char);
    cuGetProcAddress(*const c_char, *mut *mut c_void, c_int, u64);
    cuGetProcAddress_v2(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int);
    cuDeviceGetCount(*mut c_int);
    cuDeviceGet(*mut CUdevice, c_int);
    cuDeviceGetName(*mut c_char, c_int, CUdevice);
    cuDeviceGetUuid(*mut [u8; 16], CUdevice);
    cuDeviceGetUuid_v2(*mut [u8; 16], CUdevice);
    cuDeviceGetPCIBusId(*mut c_char, c_int, CUdevice);
    cuDeviceTotalMem_v2(*mut usize, CUdevice);
    cuDeviceGetAttribute(*mut c_int, c_int, CUdevice);
    cuDeviceGetDefaultMemPool(*mut Handle, CUdevice);
    cuDeviceGetMemPool(*mut Handle, CUdevice);
    cuDevicePrimaryCtxRetain(*mut Handle, CUdevice);
    cuDevicePrimaryCtxRelease(CUdevice);
    cuDevicePrimaryCtxRelease_v2(CUdevice);
    cuDevicePrimaryCtxReset_v2(CUdevice);
    cuDevicePrimaryCtxGetState(CUdevice, *mut c_uint, *mut c_int);
    cuCtxCreate_v2(*mut Handle, c_uint, CUdevice);
    cuCtxCreate_v3(*mut Handle, *mut CUexecAffinityParam, c_int, c_uint, CUdevice);
    cuCtxCreate_v4(*mut Handle, *mut CUctxCreateParams, c_uint, CUdevice);
    cuCtxDestroy_v2(Handle);
    cuCtxSetCurrent(Handle);
    cuCtxGetCurrent(*mut Handle);
    cuCtxPushCurrent_v2(Handle);
    cuCtxPopCurrent_v2(*mut Handle);
    cuCtxGetDevice(*mut CUdevice);
    cuCtxGetDevice_v2(*mut CUdevice, Handle);
    cuCtxSynchronize();
    cuCtxSynchronize_v2(Handle);
    cuMemAlloc_v2(*mut CUdeviceptr, usize);
    cuMemAllocPitch_v2(*mut CUdeviceptr, *mut usize, usize, usize, c_uint);
    cuMemAllocManaged(*mut CUdeviceptr, usize, c_uint);
    cuMemFree_v2(CUdeviceptr);
    cuMemGetInfo_v2(*mut usize, *mut usize);
    cuMemCreate(*mut u64, usize, *const CUmemAllocationProp, u64);
    cuMemRelease(u64);
    cuMemAddressReserve(*mut CUdeviceptr, usize, usize, CUdeviceptr, u64);
    cuMemAddressFree(CUdeviceptr, usize);
    cuMemMap(CUdeviceptr, usize, usize, u64, u64);
    cuMemUnmap(CUdeviceptr, usize);
    cuMemSetAccess(CUdeviceptr, usize, *const CUmemAccessDesc, usize);
    cuMemGetAllocationGranularity(*mut usize, *const CUmemAllocationProp, c_int);
    cuMemAllocAsync(*mut CUdeviceptr, usize, Handle);
    cuMemAllocAsync_ptsz(*mut CUdeviceptr, usize, Handle);
    cuMemFreeAsync(CUdeviceptr, Handle);
    cuMemPoolCreate(*mut Handle, *const CUmemPoolProps);
    cuMemPoolDestroy(Handle);
    cuMemAllocFromPoolAsync(*mut CUdeviceptr, usize, Handle, Handle);
    cuMemPoolTrimTo(Handle, usize);
    cuMemPoolGetAttribute(Handle, c_int, *mut c_void);
    cuArrayCreate_v2(*mut Handle, *const CUDA_ARRAY_DESCRIPTOR);
    cuArray3DCreate_v2(*mut Handle, *const CUDA_ARRAY3D_DESCRIPTOR);
    cuArrayDestroy(Handle);
    cuMipmappedArrayCreate(*mut Handle, *const CUDA_ARRAY3D_DESCRIPTOR, c_uint);
    cuMipmappedArrayDestroy(Handle);
    cuMemcpyHtoD_v2(CUdeviceptr, *const c_void, usize);
    cuMemcpyHtoD_v2_ptds(CUdeviceptr, *const c_void, usize);
    cuMemcpyDtoH_v2(*mut c_void, CUdeviceptr, usize);
    cuMemcpyDtoD_v2(CUdeviceptr, CUdeviceptr, usize);
    cuMemcpyHtoDAsync_v2(CUdeviceptr, *const c_void, usize, Handle);
    cuMemcpyDtoHAsync_v2(*mut c_void, CUdeviceptr, usize, Handle);
    cuMemcpyDtoDAsync_v2(CUdeviceptr, CUdeviceptr, usize, Handle);
    cuMemsetD8_v2(CUdeviceptr, u8, usize);
    cuMemsetD32_v2(CUdeviceptr, c_uint, usize);
    cuStreamCreate(*mut Handle, c_uint);
    cuStreamDestroy_v2(Handle);
    cuStreamSynchronize(Handle);
    cuStreamSynchronize_ptsz(Handle);
    cuStreamQuery(Handle);
    cuEventCreate(*mut Handle, c_uint);
    cuEventRecord(Handle, Handle);
    cuEventSynchronize(Handle);
    cuEventQuery(Handle);
    cuEventElapsedTime(*mut f32, Handle, Handle);
    cuEventElapsedTime_v2(*mut f32, Handle, Handle);
    cuEventDestroy_v2(Handle);
    cuModuleLoadData(*mut Handle, *const c_void);
    cuModuleUnload(Handle);
    cuModuleGetFunction(*mut Handle, Handle, *const c_char);
    cuLaunchKernel(Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle, *mut *mut c_void, *mut *mut c_void);
    cuLaunchKernel_ptsz(Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle, *mut *mut c_void, *mut *mut c_void);
    cuLaunchKernelEx(*const CUlaunchConfig, Handle, *mut *mut c_void, *mut *mut c_void);
    cuLaunchKernelEx_ptsz(*const CUlaunchConfig, Handle, *mut *mut c_void, *mut *mut c_void);
    cuLaunchCooperativeKernel(Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle, *mut *mut c_void);
    cuLaunchCooperativeKernel_ptsz(Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle, *mut *mut c_void);
    cuLaunchCooperativeKernelMultiDevice(*mut CUDA_LAUNCH_PARAMS, c_uint, c_uint);
    cuGraphCreate(*mut Handle, c_uint);
    cuGraphAddKernelNode(*mut Handle, Handle, *const Handle, usize, *const CUDA_KERNEL_NODE_PARAMS);
    cuGraphAddKernelNode_v2(*mut Handle, Handle, *const Handle, usize, *const CUDA_KERNEL_NODE_PARAMS);
    cuGraphInstantiate(*mut Handle, Handle, *mut Handle, *mut c_char, usize);
    cuGraphInstantiate_v2(*mut Handle, Handle, *mut Handle, *mut c_char, usize);
    cuGraphInstantiateWithFlags(*mut Handle, Handle, u64);
    cuGraphLaunch(Handle, Handle);
    cuGraphLaunch_ptsz(Handle, Handle);
    cuGraphExecDestroy(Handle);
    cuGraphDestroy(Handle);
    cuStreamBeginCapture(Handle);
    cuStreamBeginCapture_v2(Handle, c_int);
    cuStreamBeginCapture_v2_ptsz(Handle, c_int);
    cuStreamEndCapture(Handle, *mut Handle);
    cuStreamEndCapture_ptsz(Handle, *mut Handle);
    cuStreamIsCapturing(Handle, *mut c_int);
    cuStreamIsCapturing_ptsz(Handle, *mut c_int);
    cuGetExportTable(*mut *const c_void, *const [u8; 16]);
    cuLibraryLoadData(*mut Handle, *const c_void, *mut c_int, *mut *mut c_void, c_uint, *mut c_int, *mut *mut c_void, c_uint);
    cuLibraryUnload(Handle);
    cuLibraryGetKernel(*mut Handle, Handle, *const c_char);
    cuLibraryGetModule(*mut Handle, Handle);
    cuKernelGetFunction(*mut Handle, Handle);
    cuKernelGetName(*mut *const c_char, Handle);
    cuFuncGetAttribute(*mut c_int, c_int, Handle);
    cuCtxGetApiVersion(Handle, *mut c_uint);
    cuCtxGetFlags(*mut c_uint);
    cuDevicePrimaryCtxSetFlags_v2(CUdevice, c_uint);
    cuCtxGetLimit(*mut usize, c_int);
    cuCtxSetLimit(c_int, usize);
    cuCtxGetStreamPriorityRange(*mut c_int, *mut c_int);
}
