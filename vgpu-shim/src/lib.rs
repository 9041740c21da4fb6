//! `libgpuslice.so`: preloaded into every process of a slice's container, it makes the CUDA
//! driver and NVML behave as if the GPU were the slice.
//!
//! One allocation, end to end. PyTorch calls `cudaMalloc`; the CUDA runtime had `dlopen`ed
//! `libcuda.so.1` and asked our [`dlsym`](dlsym) for `cuGetProcAddress_v2`, which handed back
//! ours ([`procaddr`]); through it, the runtime's request for `"cuMemAlloc"` at version 12080
//! was answered by the driver with `cuMemAlloc_v2`, which we swapped for our wrapper of that
//! exact variant. So the runtime now calls our `cuMemAlloc_v2` ([`api`] declares it once;
//! [`boundary`] keeps panics and re-entry out). [`memory::mem_alloc`] asks the driver for the
//! current device, finds its slice by GPU UUID ([`state`], which found the slice's read-only
//! `limits` file at first use), rounds the size up to the allocation granularity, and charges
//! it in the slice's shared region under the region lock (`gpuslice_core::region`): if every
//! process on the slice together would pass the limit, the answer is
//! `CUDA_ERROR_OUT_OF_MEMORY` and the driver is never called. Otherwise the driver allocates,
//! and the pointer is remembered so that `cuMemFree_v2` returns the charge.
//!
//! A guest in someone else's process: nothing runs at load time (no constructor), nothing is
//! read until a CUDA or NVML function is used, no threads, no signal handlers, no `exit`, no
//! umask change, and nothing is printed unless `GPUSLICE_LOG` is set or a slice must fail
//! closed. A process in no slice gets the driver's own functions from `dlsym` and
//! `cuGetProcAddress`, and our exports forward straight to the driver.

pub mod api;
pub mod boundary;
pub mod dlsym;
pub mod driver;
pub mod ffi;
pub mod init;
pub mod launch;
pub mod log;
pub mod memory;
pub mod nvml;
pub mod pacing;
pub mod procaddr;
pub mod state;
