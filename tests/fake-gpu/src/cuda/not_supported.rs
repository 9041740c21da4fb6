//! Driver features the simulated H100 does not have, answered as a real driver answers for a
//! GPU or a system without them: `CUDA_ERROR_NOT_SUPPORTED`, outputs untouched. Frameworks
//! look these up at start-up (PyTorch's `c10::cuda::DriverAPI` asks `cuGetProcAddress` for
//! each) and use them only when asked to; a lookup that found nothing would leave an error
//! behind in NVIDIA's runtime (`cudaGetLastError`) that the next allocation trips over.
//!
//! - Multicast objects (`cuMulticast*`): `CU_DEVICE_ATTRIBUTE_MULTICAST_SUPPORTED` is 0.
//!
//! Driver log callbacks (`cuLogsRegisterCallback`) are accepted: the simulator writes no driver
//! log, so a callback is never called.

use std::ffi::{c_ulonglong, c_void};

use super::driver;
use super::error::{CuResult, NOT_SUPPORTED};
use super::ffi::Out;
use super::proc_address::driver_api;
use super::types::*;

fn not_supported() -> CuResult {
    Err(NOT_SUPPORTED)
}

/// The handle `cuLogsRegisterCallback` hands out: any non-null value; nothing is kept.
const LOGS_HANDLE: usize = 0x1;

driver_api! {
    fn cuMulticastCreate(_mc_handle: *mut CUmemGenericAllocationHandle, _prop: *const CUmulticastObjectProp) {
        not_supported()
    }
    fn cuMulticastAddDevice(_mc_handle: CUmemGenericAllocationHandle, _dev: CUdevice) { not_supported() }
    fn cuMulticastBindMem(
        _mc_handle: CUmemGenericAllocationHandle,
        _mc_offset: usize,
        _mem_handle: CUmemGenericAllocationHandle,
        _mem_offset: usize,
        _size: usize,
        _flags: c_ulonglong,
    ) {
        not_supported()
    }
    fn cuMulticastBindMem_v2(
        _mc_handle: CUmemGenericAllocationHandle,
        _dev: CUdevice,
        _mc_offset: usize,
        _mem_handle: CUmemGenericAllocationHandle,
        _mem_offset: usize,
        _size: usize,
        _flags: c_ulonglong,
    ) {
        not_supported()
    }
    fn cuMulticastUnbind(_mc_handle: CUmemGenericAllocationHandle, _dev: CUdevice, _mc_offset: usize, _size: usize) {
        not_supported()
    }

    /// Accepted; never called (the simulator writes no driver log).
    fn cuLogsRegisterCallback(_callback_func: CUlogsCallback, _user_data: *mut c_void, callback: *mut CUlogsCallbackHandle) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(callback) }?;
        driver()?;
        out.set(LOGS_HANDLE as CUlogsCallbackHandle);
        Ok(())
    }
    fn cuLogsUnregisterCallback(_callback: CUlogsCallbackHandle) {
        driver()?;
        Ok(())
    }
}
