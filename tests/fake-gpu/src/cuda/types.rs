//! The few `cuda.h` types the simulated driver reads or writes, declared as `cuda.h` lays
//! them out (CUDA 13 headers, x86-64 and aarch64 Linux).
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_int, c_uchar, c_uint, c_ushort, c_void};
use std::mem::{offset_of, size_of};

pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
pub type CUmemGenericAllocationHandle = u64;

/// The opaque handle types (`struct CUctx_st *` and so on): pointers the driver hands out and
/// the caller never dereferences.
pub type CUcontext = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUevent = *mut c_void;
pub type CUmodule = *mut c_void;
pub type CUfunction = *mut c_void;
pub type CUmemoryPool = *mut c_void;
pub type CUarray = *mut c_void;
pub type CUmipmappedArray = *mut c_void;
pub type CUgraph = *mut c_void;
pub type CUgraphNode = *mut c_void;
pub type CUgraphExec = *mut c_void;

/// `CU_STREAM_LEGACY`: the legacy default stream, whatever the caller was compiled with.
pub const CU_STREAM_LEGACY: usize = 0x1;
/// `CU_STREAM_PER_THREAD`: the calling thread's default stream.
pub const CU_STREAM_PER_THREAD: usize = 0x2;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUuuid {
    pub bytes: [u8; 16],
}

/// `CUexecAffinityParam`: a type, then a union whose only member is `{ unsigned int val; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUexecAffinityParam {
    pub type_: c_int,
    pub sm_count: c_uint,
}

pub const CU_EXEC_AFFINITY_TYPE_SM_COUNT: c_int = 0;

/// `CUctxCreateParams` (CUDA 12.5).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUctxCreateParams {
    pub execAffinityParams: *mut CUexecAffinityParam,
    pub numExecAffinityParams: c_int,
    pub cigParams: *mut c_void,
}

/// `CUmemLocation`: a type, then a 4-byte union whose `int id` names the device.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemLocation {
    pub type_: c_int,
    pub id: c_int,
}

pub const CU_MEM_LOCATION_TYPE_DEVICE: c_int = 1;
pub const CU_MEM_ALLOCATION_TYPE_PINNED: c_int = 1;

/// `CUmemAllocationHandleType`: bits of `requestedHandleTypes`, and the `handleType` of
/// `cuMemExportToShareableHandle`/`cuMemImportFromShareableHandle`.
pub type CUmemAllocationHandleType = c_int;
pub const CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR: CUmemAllocationHandleType = 0x1;
pub const CU_MEM_HANDLE_TYPE_FABRIC: CUmemAllocationHandleType = 0x8;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAllocationPropAllocFlags {
    pub compressionType: c_uchar,
    pub gpuDirectRDMACapable: c_uchar,
    pub usage: c_ushort,
    pub reserved: [c_uchar; 4],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAllocationProp {
    pub type_: c_int,
    pub requestedHandleTypes: c_int,
    pub location: CUmemLocation,
    pub win32HandleMetaData: *mut c_void,
    pub allocFlags: CUmemAllocationPropAllocFlags,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAccessDesc {
    pub location: CUmemLocation,
    pub flags: c_int,
}

pub const CU_MEM_ACCESS_FLAGS_PROT_NONE: c_int = 0;
pub const CU_MEM_ACCESS_FLAGS_PROT_READ: c_int = 1;
pub const CU_MEM_ACCESS_FLAGS_PROT_READWRITE: c_int = 3;

/// `CUmemPoolProps` (the CUDA 13 layout; earlier headers had `reserved[64]` after
/// `win32SecurityAttributes`, the same size).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemPoolProps {
    pub allocType: c_int,
    pub handleTypes: c_int,
    pub location: CUmemLocation,
    pub win32SecurityAttributes: *mut c_void,
    pub maxSize: usize,
    pub usage: c_ushort,
    pub gpuDirectRDMACapable: c_uchar,
    pub reserved: [c_uchar; 53],
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

/// `CUlaunchAttributeValue`: a 64-byte union whose members include pointers, so 8-aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct CUlaunchAttributeValue {
    pub bytes: [u8; 64],
}

impl CUlaunchAttributeValue {
    /// The `int` members (`cooperative`, `priority`, …), which start the union.
    pub fn int(&self) -> c_int {
        c_int::from_ne_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }
}

impl std::fmt::Debug for CUlaunchAttributeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CUlaunchAttributeValue").field("int", &self.int()).finish_non_exhaustive()
    }
}

/// `CUlaunchAttribute`: an id (`CUlaunchAttributeID`), padding to 8 bytes, the value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUlaunchAttribute {
    pub id: c_int,
    pub pad: [u8; 4],
    pub value: CUlaunchAttributeValue,
}

/// `CU_LAUNCH_ATTRIBUTE_COOPERATIVE`: `value.cooperative` non-zero makes a launch cooperative.
pub const CU_LAUNCH_ATTRIBUTE_COOPERATIVE: c_int = 2;

/// `CUlaunchConfig` (CUDA 11.8), what `cuLaunchKernelEx` takes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUlaunchConfig {
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub hStream: CUstream,
    pub attrs: *mut CUlaunchAttribute,
    pub numAttrs: c_uint,
}

/// `CUDA_KERNEL_NODE_PARAMS_v1`, what `cuGraphAddKernelNode` takes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_KERNEL_NODE_PARAMS_v1 {
    pub func: CUfunction,
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub kernelParams: *mut *mut c_void,
    pub extra: *mut *mut c_void,
}

/// `CUDA_KERNEL_NODE_PARAMS_v2` (CUDA 12.0; `CUDA_KERNEL_NODE_PARAMS` since), what
/// `cuGraphAddKernelNode_v2` takes: v1 and a `CUkernel` (used when `func` is null) and a
/// context.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_KERNEL_NODE_PARAMS_v2 {
    pub v1: CUDA_KERNEL_NODE_PARAMS_v1,
    pub kern: *mut c_void,
    pub ctx: CUcontext,
}

/// `CUDA_LAUNCH_PARAMS`, one device's part of `cuLaunchCooperativeKernelMultiDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_LAUNCH_PARAMS {
    pub function: CUfunction,
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub hStream: CUstream,
    pub kernelParams: *mut *mut c_void,
}

/// `CUdriverProcAddressQueryResult`.
pub type CUdriverProcAddressQueryResult = c_int;
pub const CU_GET_PROC_ADDRESS_SUCCESS: c_int = 0;
pub const CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: c_int = 1;
pub const CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: c_int = 2;

/// `CUdriverProcAddress_flags`.
pub const CU_GET_PROC_ADDRESS_LEGACY_STREAM: u64 = 1;
pub const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

// Layouts as cuda.h gives them on LP64.
const _: () = assert!(size_of::<CUmemLocation>() == 8);
const _: () = assert!(size_of::<CUmemAllocationProp>() == 32);
const _: () = assert!(offset_of!(CUmemAllocationProp, allocFlags) == 24);
const _: () = assert!(size_of::<CUmemAccessDesc>() == 12);
const _: () = assert!(size_of::<CUmemPoolProps>() == 88);
const _: () = assert!(size_of::<CUexecAffinityParam>() == 8);
const _: () = assert!(size_of::<CUctxCreateParams>() == 24);
const _: () = assert!(size_of::<CUDA_ARRAY_DESCRIPTOR>() == 24);
const _: () = assert!(size_of::<CUDA_ARRAY3D_DESCRIPTOR>() == 40);
const _: () = assert!(size_of::<CUlaunchAttribute>() == 72 && offset_of!(CUlaunchAttribute, value) == 8);
const _: () = assert!(size_of::<CUlaunchConfig>() == 56);
const _: () = assert!(offset_of!(CUlaunchConfig, hStream) == 32 && offset_of!(CUlaunchConfig, numAttrs) == 48);
const _: () = assert!(size_of::<CUDA_KERNEL_NODE_PARAMS_v1>() == 56);
const _: () = assert!(offset_of!(CUDA_KERNEL_NODE_PARAMS_v1, kernelParams) == 40);
const _: () =
    assert!(size_of::<CUDA_KERNEL_NODE_PARAMS_v2>() == 72 && offset_of!(CUDA_KERNEL_NODE_PARAMS_v2, ctx) == 64);
const _: () = assert!(size_of::<CUDA_LAUNCH_PARAMS>() == 56 && offset_of!(CUDA_LAUNCH_PARAMS, hStream) == 40);
