//! The `cuda.h` types the simulated driver reads and writes: NVIDIA's own declarations,
//! generated once for the workspace in `gpuslice_cuda_abi::cuda` (the CUDA 13 headers), and
//! the simulator's readings of the unions among them.

pub use gpuslice_cuda_abi::cuda::*;

/// `CUDA_KERNEL_NODE_PARAMS_v1`, what `cuGraphAddKernelNode` takes (the v1 struct's C name).
#[allow(non_camel_case_types)]
pub type CUDA_KERNEL_NODE_PARAMS_v1 = CUDA_KERNEL_NODE_PARAMS_st;

/// The device a `CUmemLocation` of type `CU_MEM_LOCATION_TYPE_DEVICE` names.
pub fn location_id(location: &CUmemLocation) -> std::ffi::c_int {
    // SAFETY: every member of the union starts with the 4-byte `int id` or is narrower and
    // plain data; reading `id` reads initialised bytes whatever the caller wrote.
    unsafe { location.__bindgen_anon_1.id }
}

/// An `int` member of a launch attribute's value (`cooperative`, `priority`, …), which all
/// start the union.
pub fn attribute_int(value: &CUlaunchAttributeValue) -> std::ffi::c_int {
    // SAFETY: a 64-byte plain-data union; its first four bytes are the `int` members.
    unsafe { value.cooperative }
}

/// `param.smCount.val` of a `CU_EXEC_AFFINITY_TYPE_SM_COUNT` affinity parameter.
pub fn affinity_sm_count(p: &CUexecAffinityParam) -> std::ffi::c_uint {
    // SAFETY: a one-member union of plain data.
    unsafe { p.param.smCount.val }
}

/// The v1 part of a `CUDA_KERNEL_NODE_PARAMS_v2` (its first ten members, the same layout).
pub fn v1_of(p: &CUDA_KERNEL_NODE_PARAMS_v2) -> CUDA_KERNEL_NODE_PARAMS_v1 {
    CUDA_KERNEL_NODE_PARAMS_v1 {
        func: p.func,
        gridDimX: p.gridDimX,
        gridDimY: p.gridDimY,
        gridDimZ: p.gridDimZ,
        blockDimX: p.blockDimX,
        blockDimY: p.blockDimY,
        blockDimZ: p.blockDimZ,
        sharedMemBytes: p.sharedMemBytes,
        kernelParams: p.kernelParams,
        extra: p.extra,
    }
}
