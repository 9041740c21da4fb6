//! MIG devices in the simulator: NVML's MIG handles, and a CUDA process that selects one with
//! `CUDA_VISIBLE_DEVICES=MIG-…` seeing the instance's memory and SMs and no more. Each test
//! runs in its own child process.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::{CStr, c_char, c_int};
use std::ptr::null_mut;

use common::cuda::*;
use common::{Fixture, is_child, lib_path, run_child};
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::{NvmlLib, nvmlDevice_t};

const GIB: u64 = 1 << 30;
const BIG: &str = "MIG-aaaaaaaa-1111-2222-3333-444444444444";
const SMALL: &str = "MIG-bbbbbbbb-1111-2222-3333-444444444444";

/// GPU 0 in MIG mode with a 3g.40gb (GPU instance 1) and a 1g.10gb (GPU instance 9); GPU 1
/// without MIG support.
fn machine() -> String {
    format!(
        r#"driver_version = "580.95.05"
cuda_version = 13000
[[gpu]]
uuid = "GPU-11111111-2222-3333-4444-555555555555"
name = "Simulated H100"
memory = "80GiB"
sm_count = 132
minor = 0
pci_bus_id = "00000000:01:00.0"
mig_mode = true
[[gpu.mig]]
uuid = "{BIG}"
profile = "3g.40gb"
memory = "40GiB"
sm_count = 60
gpu_instance_id = 1
[[gpu.mig]]
uuid = "{SMALL}"
profile = "1g.10gb"
memory = "10GiB"
sm_count = 16
gpu_instance_id = 9
[[gpu]]
uuid = "GPU-66666666-2222-3333-4444-555555555555"
name = "Simulated H100"
memory = "80GiB"
sm_count = 132
minor = 1
pci_bus_id = "00000000:02:00.0"
"#
    )
}

/// `nvmlDeviceGetGpuInstanceId` and `…ComputeInstanceId`, which nvml-wrapper does not wrap.
fn instance_ids(lib: &NvmlLib, handle: nvmlDevice_t) -> (u32, u32, u32, u32) {
    let (mut gi, mut ci) = (0, 0);
    // SAFETY: a handle from this NVML and live outputs.
    let rc_gi = unsafe { lib.nvmlDeviceGetGpuInstanceId(handle, &mut gi) };
    // SAFETY: as above.
    let rc_ci = unsafe { lib.nvmlDeviceGetComputeInstanceId(handle, &mut ci) };
    (rc_gi, gi, rc_ci, ci)
}

#[test]
fn nvml_lists_mig_devices_as_the_driver_does() {
    let name = "nvml_lists_mig_devices_as_the_driver_does";
    if !is_child(name) {
        return drop(Fixture::new(&machine()).run(name));
    }
    let nvml = Nvml::builder().lib_path(lib_path().as_os_str()).init().unwrap();
    let gpu = nvml.device_by_index(0).unwrap();
    assert_eq!(gpu.mig_device_count().unwrap(), 7);
    assert!(!gpu.mig_is_mig_device_handle().unwrap());
    let small = gpu.mig_device_by_index(1).unwrap();
    assert!(small.mig_is_mig_device_handle().unwrap());
    assert_eq!(small.uuid().unwrap(), SMALL);
    assert_eq!(small.name().unwrap(), "Simulated H100 MIG 1g.10gb");
    let mem = small.memory_info().unwrap();
    assert_eq!((mem.total, mem.used, mem.free), (10 * GIB, 0, 10 * GIB));
    let a = small.attributes().unwrap();
    assert_eq!((a.multiprocessor_count, a.gpu_instance_slice_count, a.compute_instance_slice_count), (16, 1, 1));
    assert_eq!(a.memory_size_mb, 10 * 1024);
    assert_eq!(gpu.attributes().unwrap().multiprocessor_count, 132);
    assert_eq!(small.mig_parent_device().unwrap().index().unwrap(), 0);
    assert!(matches!(gpu.mig_device_by_index(2), Err(NvmlError::NotFound)));
    assert!(matches!(gpu.mig_device_by_index(7), Err(NvmlError::InvalidArg)));
    let plain = nvml.device_by_index(1).unwrap();
    assert!(matches!(plain.mig_device_by_index(0), Err(NvmlError::NotSupported)));
    assert!(matches!(plain.mig_device_count(), Err(NvmlError::NotSupported)));

    // SAFETY: loading the same library again returns the handle already open.
    let lib = unsafe { NvmlLib::new(lib_path()) }.unwrap();
    // SAFETY: handles from the initialised NVML in this process.
    unsafe {
        assert_eq!(instance_ids(&lib, small.handle()), (0, 9, 0, 0));
        assert_eq!(instance_ids(&lib, gpu.mig_device_by_index(0).unwrap().handle()).1, 1);
        let (rc, _, _, _) = instance_ids(&lib, gpu.handle());
        assert_eq!(rc, nvml_wrapper_sys::bindings::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
    }
}

/// Bytes free and total on the current context's device.
fn mem_info(cu: &Cuda) -> (u64, u64) {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: two live usize outputs.
    assert_eq!(unsafe { (cu.cuMemGetInfo_v2)(&mut free, &mut total) }, SUCCESS);
    (free as u64, total as u64)
}

#[test]
fn cuda_on_a_mig_device_has_its_memory_and_sms_and_no_more() {
    let name = "cuda_on_a_mig_device_has_its_memory_and_sms_and_no_more";
    if !is_child(name) {
        let fixture = Fixture::new(&machine());
        let mut cmd = fixture.command(name);
        cmd.env("CUDA_VISIBLE_DEVICES", SMALL);
        return drop(run_child(cmd, name));
    }
    let cu = Cuda::load();
    let (mut count, mut sms, mut total, mut ctx) = (0 as c_int, 0 as c_int, 0usize, null_mut());
    let mut name_buf = [0 as c_char; 96];
    // SAFETY: live outputs throughout; device 0 exists once the count says so.
    unsafe {
        assert_eq!((cu.cuInit)(0), SUCCESS);
        assert_eq!((cu.cuDeviceGetCount)(&mut count), SUCCESS);
        assert_eq!(count, 1, "one MIG device selected, one device seen");
        assert_eq!((cu.cuDeviceTotalMem_v2)(&mut total, 0), SUCCESS);
        assert_eq!((cu.cuDeviceGetAttribute)(&mut sms, 16, 0), SUCCESS);
        assert_eq!((cu.cuDeviceGetName)(name_buf.as_mut_ptr(), 96, 0), SUCCESS);
        assert_eq!((cu.cuDevicePrimaryCtxRetain)(&mut ctx, 0), SUCCESS);
        assert_eq!((cu.cuCtxSetCurrent)(ctx), SUCCESS);
    }
    assert_eq!((total as u64, sms), (10 * GIB, 16));
    // SAFETY: the driver wrote a NUL-terminated name.
    assert_eq!(unsafe { CStr::from_ptr(name_buf.as_ptr()) }.to_str().unwrap(), "Simulated H100 MIG 1g.10gb");
    let (free, total) = mem_info(&cu);
    assert_eq!(total, 10 * GIB);

    // Everything that is free fits; one byte more than the instance has does not.
    let mut ptr = 0;
    // SAFETY: a live output.
    assert_eq!(unsafe { (cu.cuMemAlloc_v2)(&mut ptr, free as usize) }, SUCCESS);
    let mut more = 0;
    // SAFETY: a live output.
    assert_eq!(unsafe { (cu.cuMemAlloc_v2)(&mut more, 1 << 20) }, OUT_OF_MEMORY);

    // NVML sees the instance's use on the MIG device and on its GPU, not on the other GPU or
    // the other instance.
    let nvml = Nvml::builder().lib_path(lib_path().as_os_str()).init().unwrap();
    let gpu = nvml.device_by_index(0).unwrap();
    assert_eq!(gpu.mig_device_by_index(1).unwrap().memory_info().unwrap().used, 10 * GIB);
    assert_eq!(gpu.mig_device_by_index(0).unwrap().memory_info().unwrap().used, 0);
    assert_eq!(gpu.memory_info().unwrap().used, 10 * GIB);
    assert_eq!(nvml.device_by_index(1).unwrap().memory_info().unwrap().used, 0);
    let processes = gpu.running_compute_processes().unwrap();
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0].pid, std::process::id());
    assert_eq!((processes[0].gpu_instance_id, processes[0].compute_instance_id), (Some(9), Some(0)));

    // SAFETY: the allocation made above.
    assert_eq!(unsafe { (cu.cuMemFree_v2)(ptr) }, SUCCESS);
    assert_eq!(gpu.memory_info().unwrap().used, total - free);
}

#[test]
fn cuda_visible_devices_selects_whole_gpus_by_index() {
    let name = "cuda_visible_devices_selects_whole_gpus_by_index";
    if !is_child(name) {
        let fixture = Fixture::new(&machine());
        let mut cmd = fixture.command(name);
        cmd.env("CUDA_VISIBLE_DEVICES", "1");
        return drop(run_child(cmd, name));
    }
    let cu = Cuda::load();
    let (mut count, mut total) = (0 as c_int, 0usize);
    // SAFETY: live outputs.
    unsafe {
        assert_eq!((cu.cuInit)(0), SUCCESS);
        assert_eq!((cu.cuDeviceGetCount)(&mut count), SUCCESS);
        assert_eq!((cu.cuDeviceTotalMem_v2)(&mut total, 0), SUCCESS);
    }
    assert_eq!((count, total as u64), (1, 80 * GIB));
}
