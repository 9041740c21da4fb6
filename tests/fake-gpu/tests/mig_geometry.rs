//! MIG instances created and destroyed through NVML in the simulator: an 80 GB H100's
//! profiles and placements, the driver's refusals, and a later process seeing the new MIG
//! devices. Each phase runs in its own child process.
#![allow(clippy::unwrap_used)]

mod common;

use std::ptr::null_mut;

use common::{Fixture, is_child, lib_path, run_child};
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings::{
    NvmlLib, nvmlComputeInstance_t, nvmlComputeInstanceProfileInfo_t, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t,
    nvmlGpuInstancePlacement_t, nvmlGpuInstanceProfileInfo_t, nvmlReturn_enum_NVML_ERROR_IN_USE as IN_USE,
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES as INSUFFICIENT_RESOURCES,
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE as INSUFFICIENT_SIZE,
    nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED as NOT_SUPPORTED, nvmlReturn_enum_NVML_SUCCESS as SUCCESS,
};

/// GPU 0 in MIG mode with a 3g.40gb (GPU instance 1); GPU 1 without MIG support.
const MACHINE: &str = r#"driver_version = "580.95.05"
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
uuid = "MIG-aaaaaaaa-1111-2222-3333-444444444444"
profile = "3g.40gb"
memory = "40GiB"
sm_count = 60
gpu_instance_id = 1
[[gpu]]
uuid = "GPU-66666666-2222-3333-4444-555555555555"
name = "Simulated H100"
memory = "80GiB"
sm_count = 132
minor = 1
pci_bus_id = "00000000:02:00.0"
"#;

#[test]
fn instances_are_created_and_destroyed_as_the_driver_does_and_persist() {
    let name = "instances_are_created_and_destroyed_as_the_driver_does_and_persist";
    if !is_child(name) {
        let fixture = Fixture::new(MACHINE);
        fixture.run(name);
        assert!(fixture.state_dir.join("gpu0.mig-geometry").is_file());
        let mut later = fixture.command(name);
        later.env("PHASE", "2");
        run_child(later, name);
        return;
    }
    let nvml = Nvml::builder().lib_path(lib_path().as_os_str()).init().unwrap();
    let gpu = nvml.device_by_index(0).unwrap();
    if std::env::var("PHASE").is_ok_and(|p| p == "2") {
        // A later process: the 4g.40gb made before is the only MIG device.
        let m = gpu.mig_device_by_index(0).unwrap();
        let a = m.attributes().unwrap();
        assert_eq!((a.multiprocessor_count, a.gpu_instance_slice_count, a.memory_size_mb), (64, 4, 40192));
        assert!(gpu.mig_device_by_index(1).is_err());
        return;
    }
    // SAFETY: loading the same library again returns the handle already open.
    let lib = unsafe { NvmlLib::new(lib_path()) }.unwrap();
    // SAFETY: handles from the initialised NVML in this process, live outputs.
    unsafe {
        let d = gpu.handle();
        let mut info: nvmlGpuInstanceProfileInfo_t = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetGpuInstanceProfileInfo(d, 0, &mut info), SUCCESS);
        assert_eq!((info.id, info.sliceCount, info.memorySizeMB, info.multiprocessorCount), (19, 1, 9856, 16));
        assert_eq!(lib.nvmlDeviceGetGpuInstanceProfileInfo(d, 5, &mut info), NOT_SUPPORTED, "no 8-slice profile");
        let plain = nvml.device_by_index(1).unwrap().handle();
        assert_eq!(lib.nvmlDeviceGetGpuInstanceProfileInfo(plain, 0, &mut info), NOT_SUPPORTED);

        let mut count = 0;
        assert_eq!(lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2(d, 9, null_mut(), &mut count), SUCCESS);
        assert_eq!(count, 2);
        let mut one = [nvmlGpuInstancePlacement_t { start: 9, size: 9 }; 1];
        count = 1;
        assert_eq!(
            lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2(d, 9, one.as_mut_ptr(), &mut count),
            INSUFFICIENT_SIZE
        );
        assert_eq!(count, 2);

        // The config's 3g.40gb sits at memory slices 0–3 and has its compute instance.
        let mut gi: nvmlGpuInstance_t = null_mut();
        let at = nvmlGpuInstancePlacement_t { start: 0, size: 4 };
        assert_eq!(lib.nvmlDeviceCreateGpuInstanceWithPlacement(d, 5, &at, &mut gi), INSUFFICIENT_RESOURCES);
        assert_eq!(lib.nvmlDeviceGetGpuInstanceById(d, 1, &mut gi), SUCCESS);
        assert_eq!(lib.nvmlGpuInstanceDestroy(gi), IN_USE, "its compute instance is still there");
        let mut ci: nvmlComputeInstance_t = null_mut();
        assert_eq!(lib.nvmlGpuInstanceGetComputeInstanceById(gi, 0, &mut ci), SUCCESS);
        assert_eq!(lib.nvmlComputeInstanceDestroy(ci), SUCCESS);
        assert_eq!(lib.nvmlGpuInstanceDestroy(gi), SUCCESS);

        assert_eq!(lib.nvmlDeviceCreateGpuInstanceWithPlacement(d, 5, &at, &mut gi), SUCCESS);
        let mut gi_info: nvmlGpuInstanceInfo_t = std::mem::zeroed();
        assert_eq!(lib.nvmlGpuInstanceGetInfo(gi, &mut gi_info), SUCCESS);
        assert_eq!((gi_info.id, gi_info.profileId, gi_info.placement.start, gi_info.placement.size), (1, 5, 0, 4));
        let mut ci_info: nvmlComputeInstanceProfileInfo_t = std::mem::zeroed();
        assert_eq!(lib.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 3, 0, &mut ci_info), SUCCESS);
        assert_eq!((ci_info.sliceCount, ci_info.multiprocessorCount), (4, 64));
        assert_eq!(lib.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id, &mut ci), SUCCESS);
        assert_eq!(lib.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id, &mut ci), INSUFFICIENT_RESOURCES);
    }
}
