//! The one list of driver functions the shim knows. From it come: the exported symbols (for
//! programs linked against `libcuda.so.1` / `libnvidia-ml.so.1`), the table of real driver
//! pointers, our answers to `dlsym`, and our answers to `cuGetProcAddress`.
//!
//! Each intercepted CUDA entry names its base name and the CUDA version that introduced the
//! variant (as NVIDIA's `cudaTypedefs.h` spells it, `PFN_cuCtxCreate_v11040`), and whether it
//! is the per-thread-default-stream variant. `cuGetProcAddress` answers are mapped by pointer
//! identity (the driver picks the variant for the requested version and flags; we hand back
//! our wrapper of that same variant), and these fields are the fallback when the driver
//! answers with a pointer that is not one of its exported symbols.

use std::ffi::c_void;

use crate::ffi::*;

/// One exported wrapper.
#[derive(Debug, Clone, Copy)]
pub struct Wrapper {
    pub name: &'static str,
    pub base: &'static str,
    pub since: i32,
    pub per_thread: bool,
    pub f: *const (),
}

// SAFETY: `f` is the address of one of our functions: immutable, valid for the process's life.
unsafe impl Sync for Wrapper {}
// SAFETY: as above.
unsafe impl Send for Wrapper {}

macro_rules! api {
    (
        $table:ident, $wrappers:ident, $real:path, $ret:ty, panic = $on_panic:expr, missing = $missing:expr;
        intercept {
            $( $name:ident ( $($arg:ident : $ty:ty),* ) => $imp:path, $base:literal @ $since:literal, $pt:literal; )*
        }
        helpers {
            $( $hname:ident ( $($hty:ty),* ); )*
        }
    ) => {
        /// Real driver functions, resolved from the driver library.
        #[allow(non_snake_case)]
        #[derive(Debug, Default)]
        pub struct $table {
            $( pub $name: Option<unsafe extern "C" fn($($ty),*) -> $ret>, )*
            $( pub $hname: Option<unsafe extern "C" fn($($hty),*) -> $ret>, )*
        }

        impl $table {
            /// # Safety
            /// `handle` is null or a `dlopen` handle of the driver library this list describes.
            pub unsafe fn load(handle: *mut c_void) -> Self {
                // SAFETY: each name is resolved as the signature the list gives it, which is
                // the driver's C signature for that name.
                unsafe {
                    Self {
                        $( $name: crate::driver::resolve(handle, concat!(stringify!($name), "\0")), )*
                        $( $hname: crate::driver::resolve(handle, concat!(stringify!($hname), "\0")), )*
                    }
                }
            }

            /// The real address of an intercepted function, by name.
            pub fn real_address(&self, name: &[u8]) -> Option<usize> {
                $( if name == stringify!($name).as_bytes() { return self.$name.map(|f| f as usize); } )*
                None
            }
        }

        /// The exported wrappers. In unit-test builds they keep Rust names, so the test binary
        /// does not interpose the driver on itself.
        #[allow(non_snake_case, clippy::missing_safety_doc)]
        pub mod exports {
            use super::*;
            $(
                #[cfg_attr(not(test), unsafe(no_mangle))]
                pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                    crate::boundary::call(
                        $on_panic,
                        // SAFETY: the caller upholds the driver function's C contract, which the
                        // implementation relies on and forwards.
                        || unsafe { $imp($($arg),*) },
                        || match $real().$name {
                            // SAFETY: the real driver function with the same signature and arguments.
                            Some(f) => unsafe { f($($arg),*) },
                            None => $missing,
                        },
                    )
                }
            )*
        }

        pub const $wrappers: &[Wrapper] = &[
            $( Wrapper { name: stringify!($name), base: $base, since: $since, per_thread: $pt, f: exports::$name as *const () }, )*
        ];
    };
}

api! {
    CudaApi, CUDA_WRAPPERS, crate::driver::cuda, CUresult, panic = CUDA_ERROR_UNKNOWN, missing = CUDA_ERROR_NOT_SUPPORTED;
    intercept {
        cuInit(flags: u32) => crate::init::cu_init, "cuInit" @ 2000, false;
        cuGetProcAddress(symbol: *const std::ffi::c_char, pfn: *mut *mut c_void, version: i32, flags: u64)
            => crate::procaddr::get_proc_address, "cuGetProcAddress" @ 11030, false;
        cuGetProcAddress_v2(symbol: *const std::ffi::c_char, pfn: *mut *mut c_void, version: i32, flags: u64, status: *mut i32)
            => crate::procaddr::get_proc_address_v2, "cuGetProcAddress" @ 12000, false;
        cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) => crate::memory::mem_alloc, "cuMemAlloc" @ 3020, false;
        cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, elem: u32)
            => crate::memory::mem_alloc_pitch, "cuMemAllocPitch" @ 3020, false;
        cuMemAllocManaged(dptr: *mut CUdeviceptr, size: usize, flags: u32) => crate::memory::mem_alloc_managed, "cuMemAllocManaged" @ 6000, false;
        cuMemFree_v2(dptr: CUdeviceptr) => crate::memory::mem_free, "cuMemFree" @ 3020, false;
        cuMemGetInfo_v2(free: *mut usize, total: *mut usize) => crate::memory::mem_get_info, "cuMemGetInfo" @ 3020, false;
        cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) => crate::memory::device_total_mem, "cuDeviceTotalMem" @ 3020, false;
        cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64)
            => crate::memory::vmm::mem_create, "cuMemCreate" @ 10020, false;
        cuMemRelease(handle: CUmemGenericAllocationHandle) => crate::memory::vmm::mem_release, "cuMemRelease" @ 10020, false;
        cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64)
            => crate::memory::vmm::mem_map, "cuMemMap" @ 10020, false;
        cuMemUnmap(ptr: CUdeviceptr, size: usize) => crate::memory::vmm::mem_unmap, "cuMemUnmap" @ 10020, false;
        cuMemAddressFree(ptr: CUdeviceptr, size: usize) => crate::memory::vmm::mem_address_free, "cuMemAddressFree" @ 10020, false;
        cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void)
            => crate::memory::vmm::mem_retain_allocation_handle, "cuMemRetainAllocationHandle" @ 11000, false;
        cuMemExportToShareableHandle(shareable: *mut c_void, handle: CUmemGenericAllocationHandle, handle_type: u32, flags: u64)
            => crate::memory::vmm::mem_export_to_shareable_handle, "cuMemExportToShareableHandle" @ 10020, false;
        cuMemImportFromShareableHandle(handle: *mut CUmemGenericAllocationHandle, os_handle: *mut c_void, handle_type: u32)
            => crate::memory::vmm::mem_import_from_shareable_handle, "cuMemImportFromShareableHandle" @ 10020, false;
        cuMemAllocAsync(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) => crate::memory::mem_alloc_async, "cuMemAllocAsync" @ 11020, false;
        cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) => crate::memory::mem_alloc_async_ptsz, "cuMemAllocAsync" @ 11020, true;
        cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, size: usize, pool: CUmemoryPool, stream: CUstream)
            => crate::memory::mem_alloc_from_pool, "cuMemAllocFromPoolAsync" @ 11020, false;
        cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, pool: CUmemoryPool, stream: CUstream)
            => crate::memory::mem_alloc_from_pool_ptsz, "cuMemAllocFromPoolAsync" @ 11020, true;
        cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) => crate::memory::mem_free_async, "cuMemFreeAsync" @ 11020, false;
        cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) => crate::memory::mem_free_async_ptsz, "cuMemFreeAsync" @ 11020, true;
        cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) => crate::memory::mem_pool_trim_to, "cuMemPoolTrimTo" @ 11020, false;
        cuMemPoolDestroy(pool: CUmemoryPool) => crate::memory::mem_pool_destroy, "cuMemPoolDestroy" @ 11020, false;
        cuArrayCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) => crate::memory::array_create, "cuArrayCreate" @ 3020, false;
        cuArray3DCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) => crate::memory::array3d_create, "cuArray3DCreate" @ 3020, false;
        cuArrayDestroy(array: CUarray) => crate::memory::array_destroy, "cuArrayDestroy" @ 2000, false;
        cuMipmappedArrayCreate(array: *mut CUmipmappedArray, desc: *const CUDA_ARRAY3D_DESCRIPTOR, levels: u32)
            => crate::memory::mipmapped_array_create, "cuMipmappedArrayCreate" @ 5000, false;
        cuMipmappedArrayDestroy(array: CUmipmappedArray) => crate::memory::mipmapped_array_destroy, "cuMipmappedArrayDestroy" @ 5000, false;
        cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) => crate::memory::primary_ctx_retain, "cuDevicePrimaryCtxRetain" @ 7000, false;
        cuDevicePrimaryCtxRelease(dev: CUdevice) => crate::memory::primary_ctx_release, "cuDevicePrimaryCtxRelease" @ 7000, false;
        cuDevicePrimaryCtxRelease_v2(dev: CUdevice) => crate::memory::primary_ctx_release_v2, "cuDevicePrimaryCtxRelease" @ 11000, false;
        cuCtxCreate_v2(ctx: *mut CUcontext, flags: u32, dev: CUdevice) => crate::memory::ctx_create_v2, "cuCtxCreate" @ 3020, false;
        cuCtxCreate_v3(ctx: *mut CUcontext, params: *mut c_void, num_params: i32, flags: u32, dev: CUdevice)
            => crate::memory::ctx_create_v3, "cuCtxCreate" @ 11040, false;
        cuCtxCreate_v4(ctx: *mut CUcontext, params: *mut c_void, flags: u32, dev: CUdevice)
            => crate::memory::ctx_create_v4, "cuCtxCreate" @ 12050, false;
        cuCtxDestroy_v2(ctx: CUcontext) => crate::memory::ctx_destroy, "cuCtxDestroy" @ 4000, false;
        cuLaunchKernel(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
                       params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel, "cuLaunchKernel" @ 4000, false;
        cuLaunchKernel_ptsz(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
                            params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel_ptsz, "cuLaunchKernel" @ 7000, true;
        cuLaunchKernelEx(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel_ex, "cuLaunchKernelEx" @ 11060, false;
        cuLaunchKernelEx_ptsz(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel_ex_ptsz, "cuLaunchKernelEx" @ 11060, true;
        cuLaunchCooperativeKernel(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32,
                                  stream: CUstream, params: *mut *mut c_void)
            => crate::launch::launch_cooperative_kernel, "cuLaunchCooperativeKernel" @ 9000, false;
        cuLaunchCooperativeKernel_ptsz(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32,
                                       stream: CUstream, params: *mut *mut c_void)
            => crate::launch::launch_cooperative_kernel_ptsz, "cuLaunchCooperativeKernel" @ 9000, true;
        cuLaunchCooperativeKernelMultiDevice(list: *mut CUDA_LAUNCH_PARAMS, n: u32, flags: u32)
            => crate::launch::launch_cooperative_kernel_multi_device, "cuLaunchCooperativeKernelMultiDevice" @ 9000, false;
        cuGraphLaunch(exec: CUgraphExec, stream: CUstream) => crate::launch::graph_launch, "cuGraphLaunch" @ 10000, false;
        cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream)
            => crate::launch::graph_launch_ptsz, "cuGraphLaunch" @ 10000, true;
        cuStreamSynchronize(stream: CUstream) => crate::launch::stream_synchronize, "cuStreamSynchronize" @ 2000, false;
        cuStreamSynchronize_ptsz(stream: CUstream)
            => crate::launch::stream_synchronize_ptsz, "cuStreamSynchronize" @ 7000, true;
        cuCtxSynchronize() => crate::launch::ctx_synchronize, "cuCtxSynchronize" @ 2000, false;
        cuStreamBeginCapture(stream: CUstream) => crate::launch::stream_begin_capture, "cuStreamBeginCapture" @ 10000, false;
        cuStreamBeginCapture_ptsz(stream: CUstream)
            => crate::launch::stream_begin_capture_ptsz, "cuStreamBeginCapture" @ 10000, true;
        cuStreamBeginCapture_v2(stream: CUstream, mode: i32)
            => crate::launch::stream_begin_capture_v2, "cuStreamBeginCapture" @ 10010, false;
        cuStreamBeginCapture_v2_ptsz(stream: CUstream, mode: i32)
            => crate::launch::stream_begin_capture_v2_ptsz, "cuStreamBeginCapture" @ 10010, true;
    }
    helpers {
        cuCtxGetCurrent(*mut CUcontext);
        cuStreamCreate(*mut CUstream, u32);
        cuStreamIsCapturing(CUstream, *mut i32);
        cuEventCreate(*mut CUevent, u32);
        cuEventRecord(CUevent, CUstream);
        cuEventQuery(CUevent);
        cuEventSynchronize(CUevent);
        cuEventElapsedTime(*mut f32, CUevent, CUevent);
        cuCtxGetDevice(*mut CUdevice);
        cuDeviceGetUuid(*mut CUuuid, CUdevice);
        cuDeviceGetUuid_v2(*mut CUuuid, CUdevice);
        cuDeviceGetAttribute(*mut i32, u32, CUdevice);
        cuMemGetAllocationGranularity(*mut usize, *const CUmemAllocationProp, u32);
        cuDeviceGetMemPool(*mut CUmemoryPool, CUdevice);
        cuMemPoolGetAttribute(CUmemoryPool, u32, *mut c_void);
    }
}

/// The NVML half: no version semantics, so `base` is the name itself.
pub mod nvml {
    use super::*;

    api! {
        NvmlApi, NVML_WRAPPERS, crate::driver::nvml, nvmlReturn_t, panic = NVML_ERROR_UNKNOWN, missing = NVML_ERROR_FUNCTION_NOT_FOUND;
        intercept {
            nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t)
                => crate::nvml::device_get_memory_info, "nvmlDeviceGetMemoryInfo" @ 0, false;
            nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t)
                => crate::nvml::device_get_memory_info_v2, "nvmlDeviceGetMemoryInfo_v2" @ 0, false;
        }
        helpers {
            nvmlDeviceGetUUID(nvmlDevice_t, *mut std::ffi::c_char, u32);
        }
    }
}

pub use nvml::{NVML_WRAPPERS, NvmlApi};

/// The wrapper to hand out for a driver symbol `name` that `dlsym` resolved to `real`: ours
/// when `real` is the driver's own function of that name and a slice is active.
///
/// The name is checked first: `dlsym` of `curl_easy_init` or `cudaMalloc` must not load the
/// driver, or even read the slice state, in a program that does not use the driver.
pub fn wrapper_for_driver_symbol(name: &[u8], real: usize) -> Option<*mut c_void> {
    let nvml = name.starts_with(b"nvml");
    let wrappers = if nvml { NVML_WRAPPERS } else { CUDA_WRAPPERS };
    let w = wrappers.iter().find(|w| w.name.as_bytes() == name)?;
    if !crate::state::active() {
        return None;
    }
    let real_address =
        if nvml { crate::driver::nvml().real_address(name) } else { crate::driver::cuda().real_address(name) };
    (real_address == Some(real)).then_some(w.f as *mut c_void)
}
