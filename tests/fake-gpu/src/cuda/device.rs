//! Device queries: the config's GPUs, as `cuDeviceGet*` report them.

use std::ffi::c_int;

use super::error::{CuResult, INVALID_DEVICE, INVALID_VALUE};
use super::types::CUdevice;
use crate::config::GpuConfig;
use crate::state::{DeviceState, Simulator};

/// One past the last `CUdevice_attribute` in the CUDA 13 headers (`CU_DEVICE_ATTRIBUTE_MAX`).
pub const ATTRIBUTE_MAX: c_int = 162;

/// `CU_DEVICE_ATTRIBUTE_PCI_BUS_ID`, `…_PCI_DEVICE_ID` and `…_PCI_DOMAIN_ID`.
pub const PCI_BUS_ID: c_int = 33;
pub const PCI_DEVICE_ID: c_int = 34;
pub const PCI_DOMAIN_ID: c_int = 50;

/// GPU `device`'s config and state; `CUDA_ERROR_INVALID_DEVICE` for an unknown ordinal.
pub fn gpu(sim: &Simulator, device: CUdevice) -> CuResult<(&GpuConfig, &DeviceState)> {
    let index = u32::try_from(device).map_err(|_| INVALID_DEVICE)?;
    let state = sim.cuda_state(index).ok_or(INVALID_DEVICE)?;
    Ok((sim.cuda_gpu(index).ok_or(INVALID_DEVICE)?, state))
}

/// `cuDeviceGet`: ordinals are the config's indices, or as `CUDA_VISIBLE_DEVICES` lists them
/// ([`crate::mig`]).
pub fn get(sim: &Simulator, ordinal: c_int) -> CuResult<CUdevice> {
    gpu(sim, ordinal).map(|_| ordinal)
}

pub fn count(sim: &Simulator) -> c_int {
    c_int::try_from(sim.cuda_devices().len()).unwrap_or(c_int::MAX)
}

/// `cuDeviceGetPCIBusId`'s form, `domain:bus:device.function` with a 4-digit domain.
pub fn pci_bus_id(gpu: &GpuConfig) -> String {
    gpu.pci_bus_id.legacy()
}

/// `cuDeviceGetAttribute`: an H100 SXM's values, with the SM count and PCI location from the
/// config. Attributes inside the enum that are not listed answer 0; numbers outside it are
/// `CUDA_ERROR_INVALID_VALUE`.
pub fn attribute(gpu: &GpuConfig, attribute: c_int) -> CuResult<c_int> {
    if !(1..ATTRIBUTE_MAX).contains(&attribute) {
        return Err(INVALID_VALUE);
    }
    let clamp = |v: u32| c_int::try_from(v).unwrap_or(c_int::MAX);
    Ok(match attribute {
        1 => 1024,                                // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,                            // MAX_BLOCK_DIM_X, _Y
        4 => 64,                                  // MAX_BLOCK_DIM_Z
        5 => c_int::MAX,                          // MAX_GRID_DIM_X
        6 | 7 => 65535,                           // MAX_GRID_DIM_Y, _Z
        8 => 48 << 10,                            // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 64 << 10,                            // TOTAL_CONSTANT_MEMORY
        10 => 32,                                 // WARP_SIZE
        11 => c_int::MAX,                         // MAX_PITCH
        12 => 65536,                              // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,                          // CLOCK_RATE, kHz
        14 => 512,                                // TEXTURE_ALIGNMENT
        15 => 1,                                  // GPU_OVERLAP
        16 => clamp(gpu.sm_count),                // MULTIPROCESSOR_COUNT
        19 => 1,                                  // CAN_MAP_HOST_MEMORY
        30 => 512,                                // SURFACE_ALIGNMENT
        31 => 1,                                  // CONCURRENT_KERNELS
        32 => 1,                                  // ECC_ENABLED
        33 => c_int::from(gpu.pci_bus_id.bus),    // PCI_BUS_ID
        34 => c_int::from(gpu.pci_bus_id.device), // PCI_DEVICE_ID
        36 => 2_619_000,                          // MEMORY_CLOCK_RATE, kHz
        37 => 5120,                               // GLOBAL_MEMORY_BUS_WIDTH
        38 => 50 << 20,                           // L2_CACHE_SIZE
        39 => 2048,                               // MAX_THREADS_PER_MULTIPROCESSOR
        40 => 3,                                  // ASYNC_ENGINE_COUNT
        41 => 1,                                  // UNIFIED_ADDRESSING
        50 => clamp(gpu.pci_bus_id.domain),       // PCI_DOMAIN_ID
        51 => 32,                                 // TEXTURE_PITCH_ALIGNMENT
        75 => 9,                                  // COMPUTE_CAPABILITY_MAJOR
        76 => 0,                                  // COMPUTE_CAPABILITY_MINOR
        78..=80 => 1,                             // STREAM_PRIORITIES, GLOBAL_L1, LOCAL_L1
        81 => 228 << 10,                          // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,                              // MAX_REGISTERS_PER_MULTIPROCESSOR
        83 => 1,                                  // MANAGED_MEMORY
        87 => 2,                                  // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
        89..=91 => 1,                             // CONCURRENT_MANAGED_ACCESS, PREEMPTION, …
        95 => 1,                                  // COOPERATIVE_LAUNCH
        97 => 227 << 10,                          // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        99 => 1,                                  // HOST_REGISTER_SUPPORTED
        102 => 1,                                 // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        103 => 1,                                 // HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
        106 => 32,                                // MAX_BLOCKS_PER_MULTIPROCESSOR
        107 => 1,                                 // GENERIC_COMPRESSION_SUPPORTED
        108 => 30 << 20,                          // MAX_PERSISTING_L2_CACHE_SIZE
        109 => 134_213_632,                       // MAX_ACCESS_POLICY_WINDOW_SIZE
        110 => 1,                                 // GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED
        111 => 1024,                              // RESERVED_SHARED_MEMORY_PER_BLOCK
        112..=116 => 1, // SPARSE_CUDA_ARRAY, READ_ONLY_HOST_REGISTER, TIMELINE_SEMAPHORE, MEMORY_POOLS, RDMA
        119 => 1,       // MEMPOOL_SUPPORTED_HANDLE_TYPES: POSIX fd
        120 | 121 => 1, // CLUSTER_LAUNCH, DEFERRED_MAPPING_CUDA_ARRAY
        124 | 125 => 1, // DMA_BUF_SUPPORTED, IPC_EVENT_SUPPORTED
        126 => 4,       // MEM_SYNC_DOMAIN_COUNT
        127 => 1,       // TENSOR_MAP_ACCESS_SUPPORTED
        129 => 1,       // UNIFIED_FUNCTION_POINTERS
        131 => -1,      // NUMA_ID: none
        139 => gpu.pci_device_id as c_int, // GPU_PCI_DEVICE_ID
        140 => gpu.pci_subsystem_id as c_int, // GPU_PCI_SUBSYSTEM_ID
        _ => 0,
    })
}
