//! The one list of driver functions the shim knows. From it come: the exported symbols (for
//! programs linked against `libcuda.so.1` / `libnvidia-ml.so.1`), the table of real driver
//! pointers, our answers to `dlsym`, and our answers to `cuGetProcAddress`.
//!
//! Each intercepted entry names one exported driver symbol (`cuMemAlloc_v2`, not the base
//! name) and the function that implements it. Its signature is checked at compile time
//! against the one NVIDIA's headers give that symbol (`gpuslice_cuda_abi::cuda::sym`), and
//! which (name, CUDA version, per-thread flag) requests select it comes from the table
//! generated from `cudaTypedefs.h` (`gpuslice_cuda_abi::proc`), not from this list.

use std::ffi::{c_char, c_int, c_void};

use crate::ffi::*;
use gpuslice_cuda_abi::cuda::sym as cuda_sym;
use gpuslice_cuda_abi::nvml::sym as nvml_sym;

/// One exported wrapper: the driver symbol it stands in for, and our function.
#[derive(Debug, Clone, Copy)]
pub struct Wrapper {
    pub name: &'static str,
    pub f: *const (),
}

// SAFETY: `f` is the address of one of our functions: immutable, valid for the process's life.
unsafe impl Sync for Wrapper {}
// SAFETY: as above.
unsafe impl Send for Wrapper {}

macro_rules! api {
    (
        $table:ident, $wrappers:ident, $sym:ident, $real:expr, $ret:ty, panic = $on_panic:expr, missing = $missing:expr;
        intercept {
            $( $name:ident ( $($arg:ident : $ty:ty),* ) => $imp:path; )*
        }
        helpers {
            $( $hname:ident; )*
        }
    ) => {
        /// Real driver functions, resolved from the driver library, typed as the headers
        /// declare them.
        #[allow(non_snake_case)]
        #[derive(Debug, Default)]
        pub struct $table {
            $( pub $name: Option<$sym::$name>, )*
            $( pub $hname: Option<$sym::$hname>, )*
        }

        impl $table {
            /// # Safety
            /// `handle` is null or a `dlopen` handle of the driver library this list describes.
            pub unsafe fn load(handle: *mut c_void) -> Self {
                // SAFETY: each name is resolved as the signature the headers give that symbol.
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

            /// The real addresses of every intercepted function, with its name.
            pub fn real_addresses(&self) -> Vec<(usize, &'static str)> {
                let mut v = Vec::new();
                $( if let Some(f) = self.$name { v.push((f as usize, stringify!($name))); } )*
                v
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
                        || {
                            let real = match $real.loaded() {
                                Some(api) => api.$name,
                                // Re-entered while the table is being loaded (the driver calling
                                // its own exports from its constructor): the one symbol, now,
                                // without waiting for the table, which would wait for us.
                                // SAFETY: resolved as the signature the headers give the symbol.
                                None => unsafe { $real.resolve_now::<$sym::$name>(concat!(stringify!($name), "\0")) },
                            };
                            // SAFETY: the real driver function with the same signature and arguments.
                            real.map_or($missing, |f| unsafe { f($($arg),*) })
                        },
                    )
                }

                // The signature NVIDIA's headers give this symbol.
                const _: Option<$sym::$name> = Some($name);
            )*
        }

        pub const $wrappers: &[Wrapper] = &[
            $( Wrapper { name: stringify!($name), f: exports::$name as *const () }, )*
        ];
    };
}

api! {
    CudaApi, CUDA_WRAPPERS, cuda_sym, crate::driver::CUDA, CUresult, panic = CUDA_ERROR_UNKNOWN, missing = CUDA_ERROR_NOT_SUPPORTED;
    intercept {
        cuInit(flags: u32) => crate::init::cu_init;
        cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64)
            => crate::procaddr::get_proc_address;
        cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut CUdriverProcAddressQueryResult)
            => crate::procaddr::get_proc_address_v2;
        cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) => crate::memory::mem_alloc;
        cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, elem: u32)
            => crate::memory::mem_alloc_pitch;
        cuMemAllocManaged(dptr: *mut CUdeviceptr, size: usize, flags: u32) => crate::memory::mem_alloc_managed;
        cuMemFree_v2(dptr: CUdeviceptr) => crate::memory::mem_free;
        cuMemGetInfo_v2(free: *mut usize, total: *mut usize) => crate::memory::mem_get_info;
        cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) => crate::memory::device_total_mem;
        cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64)
            => crate::memory::vmm::mem_create;
        cuMemRelease(handle: CUmemGenericAllocationHandle) => crate::memory::vmm::mem_release;
        cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64)
            => crate::memory::vmm::mem_map;
        cuMemUnmap(ptr: CUdeviceptr, size: usize) => crate::memory::vmm::mem_unmap;
        cuMemAddressFree(ptr: CUdeviceptr, size: usize) => crate::memory::vmm::mem_address_free;
        cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void)
            => crate::memory::vmm::mem_retain_allocation_handle;
        cuMemExportToShareableHandle(shareable: *mut c_void, handle: CUmemGenericAllocationHandle, handle_type: CUmemAllocationHandleType, flags: u64)
            => crate::memory::vmm::mem_export_to_shareable_handle;
        cuMemImportFromShareableHandle(handle: *mut CUmemGenericAllocationHandle, os_handle: *mut c_void, handle_type: CUmemAllocationHandleType)
            => crate::memory::vmm::mem_import_from_shareable_handle;
        cuMemAllocAsync(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) => crate::memory::mem_alloc_async;
        cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) => crate::memory::mem_alloc_async_ptsz;
        cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, size: usize, pool: CUmemoryPool, stream: CUstream)
            => crate::memory::mem_alloc_from_pool;
        cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, pool: CUmemoryPool, stream: CUstream)
            => crate::memory::mem_alloc_from_pool_ptsz;
        cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) => crate::memory::mem_free_async;
        cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) => crate::memory::mem_free_async_ptsz;
        cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) => crate::memory::mem_pool_trim_to;
        cuMemPoolDestroy(pool: CUmemoryPool) => crate::memory::mem_pool_destroy;
        cuArrayCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) => crate::memory::array_create;
        cuArray3DCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) => crate::memory::array3d_create;
        cuArrayDestroy(array: CUarray) => crate::memory::array_destroy;
        cuMipmappedArrayCreate(array: *mut CUmipmappedArray, desc: *const CUDA_ARRAY3D_DESCRIPTOR, levels: u32)
            => crate::memory::mipmapped_array_create;
        cuMipmappedArrayDestroy(array: CUmipmappedArray) => crate::memory::mipmapped_array_destroy;
        cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) => crate::memory::primary_ctx_retain;
        cuDevicePrimaryCtxRelease(dev: CUdevice) => crate::memory::primary_ctx_release;
        cuDevicePrimaryCtxRelease_v2(dev: CUdevice) => crate::memory::primary_ctx_release_v2;
        cuDevicePrimaryCtxReset(dev: CUdevice) => crate::memory::primary_ctx_reset;
        cuDevicePrimaryCtxReset_v2(dev: CUdevice) => crate::memory::primary_ctx_reset_v2;
        cuCtxCreate_v2(ctx: *mut CUcontext, flags: u32, dev: CUdevice) => crate::memory::ctx_create_v2;
        cuCtxCreate_v3(ctx: *mut CUcontext, params: *mut CUexecAffinityParam, num_params: c_int, flags: u32, dev: CUdevice)
            => crate::memory::ctx_create_v3;
        cuCtxCreate_v4(ctx: *mut CUcontext, params: *mut CUctxCreateParams, flags: u32, dev: CUdevice)
            => crate::memory::ctx_create_v4;
        cuGLCtxCreate(ctx: *mut CUcontext, flags: u32, dev: CUdevice) => crate::memory::interop::gl_ctx_create;
        cuGLCtxCreate_v2(ctx: *mut CUcontext, flags: u32, dev: CUdevice) => crate::memory::interop::gl_ctx_create_v2;
        cuVDPAUCtxCreate(ctx: *mut CUcontext, flags: u32, dev: CUdevice, vdp_device: VdpDevice, vdp_get_proc_address: *mut VdpGetProcAddress)
            => crate::memory::interop::vdpau_ctx_create;
        cuVDPAUCtxCreate_v2(ctx: *mut CUcontext, flags: u32, dev: CUdevice, vdp_device: VdpDevice, vdp_get_proc_address: *mut VdpGetProcAddress)
            => crate::memory::interop::vdpau_ctx_create_v2;
        cuCtxDestroy_v2(ctx: CUcontext) => crate::memory::ctx_destroy;
        cuCtxSetLimit(limit: CUlimit, value: usize) => crate::memory::reserved::ctx_set_limit;
        cuModuleLoad(module: *mut CUmodule, fname: *const c_char) => crate::memory::reserved::module_load;
        cuModuleLoadData(module: *mut CUmodule, image: *const c_void) => crate::memory::reserved::module_load_data;
        cuModuleLoadDataEx(module: *mut CUmodule, image: *const c_void, n: u32, options: *mut CUjit_option, values: *mut *mut c_void)
            => crate::memory::reserved::module_load_data_ex;
        cuModuleLoadFatBinary(module: *mut CUmodule, fat: *const c_void) => crate::memory::reserved::module_load_fat_binary;
        cuModuleUnload(module: CUmodule) => crate::memory::reserved::module_unload;
        cuLibraryLoadData(library: *mut CUlibrary, code: *const c_void, jit_options: *mut CUjit_option, jit_values: *mut *mut c_void,
                          n_jit: u32, library_options: *mut CUlibraryOption, library_values: *mut *mut c_void, n_library: u32)
            => crate::memory::reserved::library_load_data;
        cuLibraryLoadFromFile(library: *mut CUlibrary, name: *const c_char, jit_options: *mut CUjit_option, jit_values: *mut *mut c_void,
                              n_jit: u32, library_options: *mut CUlibraryOption, library_values: *mut *mut c_void, n_library: u32)
            => crate::memory::reserved::library_load_from_file;
        cuLibraryUnload(library: CUlibrary) => crate::memory::reserved::library_unload;
        cuLibraryGetKernel(kernel: *mut CUkernel, library: CUlibrary, name: *const c_char)
            => crate::memory::lazylib::library_get_kernel;
        cuLibraryGetModule(module: *mut CUmodule, library: CUlibrary) => crate::memory::lazylib::library_get_module;
        cuKernelGetFunction(function: *mut CUfunction, kernel: CUkernel) => crate::memory::lazylib::kernel_get_function;
        cuLibraryGetGlobal(dptr: *mut CUdeviceptr, bytes: *mut usize, library: CUlibrary, name: *const c_char)
            => crate::memory::lazylib::library_get_global;
        cuLibraryGetManaged(dptr: *mut CUdeviceptr, bytes: *mut usize, library: CUlibrary, name: *const c_char)
            => crate::memory::lazylib::library_get_managed;
        cuGreenCtxCreate(green: *mut CUgreenCtx, desc: CUdevResourceDesc, dev: CUdevice, flags: u32)
            => crate::memory::reserved::green_ctx_create;
        cuGreenCtxDestroy(green: CUgreenCtx) => crate::memory::reserved::green_ctx_destroy;
        cuLaunchKernel(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
                       params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel;
        cuLaunchKernel_ptsz(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
                            params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel_ptsz;
        cuLaunchKernelEx(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel_ex;
        cuLaunchKernelEx_ptsz(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void)
            => crate::launch::launch_kernel_ex_ptsz;
        cuLaunchCooperativeKernel(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32,
                                  stream: CUstream, params: *mut *mut c_void)
            => crate::launch::launch_cooperative_kernel;
        cuLaunchCooperativeKernel_ptsz(f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32,
                                       stream: CUstream, params: *mut *mut c_void)
            => crate::launch::launch_cooperative_kernel_ptsz;
        cuLaunchCooperativeKernelMultiDevice(list: *mut CUDA_LAUNCH_PARAMS, n: u32, flags: u32)
            => crate::launch::launch_cooperative_kernel_multi_device;
        cuGraphLaunch(exec: CUgraphExec, stream: CUstream) => crate::memory::graph::graph_launch;
        cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream)
            => crate::memory::graph::graph_launch_ptsz;
        cuStreamSynchronize(stream: CUstream) => crate::launch::stream_synchronize;
        cuStreamSynchronize_ptsz(stream: CUstream)
            => crate::launch::stream_synchronize_ptsz;
        cuCtxSynchronize() => crate::launch::ctx_synchronize;
        cuStreamBeginCapture(stream: CUstream) => crate::launch::stream_begin_capture;
        cuStreamBeginCapture_ptsz(stream: CUstream)
            => crate::launch::stream_begin_capture_ptsz;
        cuStreamBeginCapture_v2(stream: CUstream, mode: CUstreamCaptureMode)
            => crate::launch::stream_begin_capture_v2;
        cuStreamBeginCapture_v2_ptsz(stream: CUstream, mode: CUstreamCaptureMode)
            => crate::launch::stream_begin_capture_v2_ptsz;
        cuStreamBeginCaptureToGraph(stream: CUstream, graph: CUgraph, deps: *const CUgraphNode, edges: *const CUgraphEdgeData,
                                    n: usize, mode: CUstreamCaptureMode)
            => crate::launch::stream_begin_capture_to_graph;
        cuStreamBeginCaptureToGraph_ptsz(stream: CUstream, graph: CUgraph, deps: *const CUgraphNode,
                                         edges: *const CUgraphEdgeData, n: usize, mode: CUstreamCaptureMode)
            => crate::launch::stream_begin_capture_to_graph_ptsz;
        cuEventSynchronize(event: CUevent) => crate::memory::event_synchronize;
        cuCtxSynchronize_v2(ctx: CUcontext) => crate::memory::ctx_synchronize_v2;
        cuGraphInstantiate(exec: *mut CUgraphExec, graph: CUgraph, error_node: *mut CUgraphNode, log: *mut c_char, size: usize)
            => crate::memory::graph::graph_instantiate;
        cuGraphInstantiate_v2(exec: *mut CUgraphExec, graph: CUgraph, error_node: *mut CUgraphNode, log: *mut c_char, size: usize)
            => crate::memory::graph::graph_instantiate_v2;
        cuGraphInstantiateWithFlags(exec: *mut CUgraphExec, graph: CUgraph, flags: u64)
            => crate::memory::graph::graph_instantiate_with_flags;
        cuGraphInstantiateWithParams(exec: *mut CUgraphExec, graph: CUgraph, params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS)
            => crate::memory::graph::graph_instantiate_with_params;
        cuGraphInstantiateWithParams_ptsz(exec: *mut CUgraphExec, graph: CUgraph, params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS)
            => crate::memory::graph::graph_instantiate_with_params_ptsz;
        cuGraphUpload(exec: CUgraphExec, stream: CUstream) => crate::memory::graph::graph_upload;
        cuGraphUpload_ptsz(exec: CUgraphExec, stream: CUstream) => crate::memory::graph::graph_upload_ptsz;
        cuGraphExecDestroy(exec: CUgraphExec) => crate::memory::graph::graph_exec_destroy;
        cuDeviceGraphMemTrim(dev: CUdevice) => crate::memory::graph::device_graph_mem_trim;
        cuDeviceSetGraphMemAttribute(dev: CUdevice, attr: CUgraphMem_attribute, value: *mut c_void)
            => crate::memory::graph::device_set_graph_mem_attribute;
    }
    helpers {
        cuCtxGetCurrent;
        cuStreamCreate;
        cuStreamIsCapturing;
        cuEventCreate;
        cuEventRecord;
        cuEventQuery;
        cuEventElapsedTime;
        cuCtxGetDevice;
        cuDeviceGetUuid;
        cuDeviceGetUuid_v2;
        cuDeviceGetAttribute;
        cuMemGetAllocationGranularity;
        cuDeviceGetMemPool;
        cuMemPoolGetAttribute;
        cuCtxGetLimit;
        cuCtxFromGreenCtx;
        cuDeviceGetGraphMemAttribute;
        cuKernelGetLibrary;
        cuGraphGetNodes;
        cuGraphNodeGetType;
        cuGraphMemAllocNodeGetParams;
        cuGraphChildGraphNodeGetGraph;
    }
}

/// The NVML half.
pub mod nvml {
    use super::*;

    api! {
        NvmlApi, NVML_WRAPPERS, nvml_sym, crate::driver::NVML, nvmlReturn_t, panic = NVML_ERROR_UNKNOWN, missing = NVML_ERROR_FUNCTION_NOT_FOUND;
        intercept {
            nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t)
                => crate::nvml::device_get_memory_info;
            nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t)
                => crate::nvml::device_get_memory_info_v2;
            nvmlDeviceGetBAR1MemoryInfo(device: nvmlDevice_t, bar1: *mut nvmlBAR1Memory_t)
                => crate::nvml::device_get_bar1_memory_info;
            nvmlDeviceGetComputeRunningProcesses(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v1_t)
                => crate::nvml::device_get_compute_running_processes;
            nvmlDeviceGetComputeRunningProcesses_v2(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v2_t)
                => crate::nvml::device_get_compute_running_processes_v2;
            nvmlDeviceGetComputeRunningProcesses_v3(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v2_t)
                => crate::nvml::device_get_compute_running_processes_v3;
            nvmlDeviceGetGraphicsRunningProcesses(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v1_t)
                => crate::nvml::device_get_graphics_running_processes;
            nvmlDeviceGetGraphicsRunningProcesses_v2(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v2_t)
                => crate::nvml::device_get_graphics_running_processes_v2;
            nvmlDeviceGetGraphicsRunningProcesses_v3(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v2_t)
                => crate::nvml::device_get_graphics_running_processes_v3;
            nvmlDeviceGetMPSComputeRunningProcesses(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v1_t)
                => crate::nvml::device_get_mps_compute_running_processes;
            nvmlDeviceGetMPSComputeRunningProcesses_v2(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v2_t)
                => crate::nvml::device_get_mps_compute_running_processes_v2;
            nvmlDeviceGetMPSComputeRunningProcesses_v3(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v2_t)
                => crate::nvml::device_get_mps_compute_running_processes_v3;
            nvmlDeviceGetRunningProcessDetailList(device: nvmlDevice_t, list: *mut nvmlProcessDetailList_v1_t)
                => crate::nvml::device_get_running_process_detail_list;
            nvmlDeviceGetProcessesUtilizationInfo(device: nvmlDevice_t, info: *mut nvmlProcessesUtilizationInfo_v1_t)
                => crate::nvml::device_get_processes_utilization_info;
            nvmlDeviceGetUtilizationRates(device: nvmlDevice_t, utilization: *mut nvmlUtilization_t)
                => crate::nvml::device_get_utilization_rates;
            nvmlDeviceGetProcessUtilization(device: nvmlDevice_t, samples: *mut nvmlProcessUtilizationSample_t, count: *mut u32, last_seen: u64)
                => crate::nvml::device_get_process_utilization;
            nvmlDeviceGetSamples(device: nvmlDevice_t, kind: nvmlSamplingType_t, last_seen: u64, value_type: *mut nvmlValueType_t, count: *mut u32, samples: *mut nvmlSample_t)
                => crate::nvml::device_get_samples;
        }
        helpers {
            nvmlDeviceGetUUID;
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
