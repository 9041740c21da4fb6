//! The fake NVML through `nvml-wrapper`, as gpuslice's tools load it, and through the raw
//! C ABI for what the wrapper cannot reach. Each test runs in its own child process.
// Shared checks live outside `#[test]` functions, where clippy's test exemption stops.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::ptr;

use common::{Fixture, Gpu, config_with, is_child, lib_path, run_child};
use fakegpu::state::DeviceState;
use fakegpu::timeline::{self, DeviceTimeline};
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::{
    NvmlLib, nvmlDevice_t, nvmlMemory_t, nvmlMemory_v2_t, nvmlPciInfo_t, nvmlProcessUtilizationSample_t,
};

const GIB: u64 = 1 << 30;

fn nvml() -> Result<Nvml, NvmlError> {
    Nvml::builder().lib_path(lib_path().as_os_str()).init()
}

/// Every value NVML reports for a machine of `n` GPUs from [`config_with`].
fn check_machine(n: u32) {
    let nvml = nvml().expect("nvmlInit_v2");
    assert_eq!(nvml.sys_driver_version().unwrap(), "580.95.05");
    assert_eq!(nvml.sys_cuda_driver_version().unwrap(), 13000);
    assert_eq!(nvml.sys_nvml_version().unwrap(), "13.580.95.05");
    assert_eq!(nvml.device_count().unwrap(), n);
    for i in 0..n {
        let want = Gpu::nth(i);
        let dev = nvml.device_by_index(i).unwrap();
        assert_eq!(dev.index().unwrap(), i);
        assert_eq!(dev.uuid().unwrap(), want.uuid);
        assert_eq!(dev.name().unwrap(), want.name);
        assert_eq!(dev.minor_number().unwrap(), want.minor);
        assert_eq!(dev.num_cores().unwrap(), want.sm_count * 128);

        let mem = dev.memory_info().unwrap();
        assert_eq!((mem.total, mem.used, mem.free, mem.reserved), (want.memory, 0, want.memory, 0), "gpu {i}");
        assert_eq!(mem.version, 0x0200_0028);

        let pci = dev.pci_info().unwrap();
        assert_eq!(pci.bus_id, want.bus_id);
        assert_eq!((pci.domain, pci.bus, pci.device), (0, want.bus, 0));
        assert_eq!(pci.pci_device_id, 0x2330_10de);
        assert_eq!(pci.pci_sub_system_id, Some(0x16c1_10de));

        match (want.mig_mode, dev.mig_mode()) {
            (None, Err(NvmlError::NotSupported)) => {}
            (Some(on), Ok(mode)) => {
                assert_eq!((mode.current, mode.pending), (u32::from(on), u32::from(on)));
            }
            (want, got) => panic!("gpu {i}: mig mode {got:?}, want {want:?}"),
        }

        assert_eq!(nvml.device_by_uuid(want.uuid.as_str()).unwrap().index().unwrap(), i);
        assert_eq!(nvml.device_by_pci_bus_id(want.bus_id.as_str()).unwrap().index().unwrap(), i);
    }
    assert!(matches!(nvml.device_by_index(n), Err(NvmlError::InvalidArg)));
    assert!(matches!(nvml.device_by_uuid("GPU-00000000-0000-0000-0000-000000000000"), Err(NvmlError::NotFound)));
}

#[test]
fn one_gpu() {
    if is_child("one_gpu") {
        return check_machine(1);
    }
    let fx = Fixture::new(&config_with(1, ""));
    // No FAKEGPU_STATE_DIR: state goes to $TMPDIR/fakegpu-<hash of the config path>.
    let tmp = fx.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut cmd = fx.command("one_gpu");
    cmd.env_remove("FAKEGPU_STATE_DIR").env("TMPDIR", &tmp);
    run_child(cmd, "one_gpu");
    let dirs: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].file_name().unwrap().to_str().unwrap().starts_with("fakegpu-"));
    assert!(dirs[0].join("gpu0.state").is_file());
}

#[test]
fn two_gpus() {
    if is_child("two_gpus") {
        return check_machine(2);
    }
    Fixture::new(&config_with(2, "")).run("two_gpus");
}

#[test]
fn eight_gpus() {
    if is_child("eight_gpus") {
        return check_machine(8);
    }
    let fx = Fixture::new(&config_with(8, ""));
    fx.run("eight_gpus");
    for i in 0..8 {
        assert!(fx.state_dir.join(format!("gpu{i}.state")).is_file());
    }
}

/// Memory taken by one process shows in another's NVML memory info, and back, for as long
/// as the process that took it lives.
#[test]
fn memory_used_by_another_process_shows_in_nvml() {
    let gpu1_total = Gpu::nth(1).memory;
    if is_child("memory_used_by_another_process_shows_in_nvml") {
        let nvml = nvml().unwrap();
        let mem = nvml.device_by_index(1).unwrap().memory_info().unwrap();
        assert_eq!((mem.used, mem.free), (3 * GIB, gpu1_total - 3 * GIB));
        let mem0 = nvml.device_by_index(0).unwrap().memory_info().unwrap();
        assert_eq!(mem0.used, 0);

        // This process takes 2 GiB more through its own mapping; NVML sees it at once.
        let dir = std::env::var_os("FAKEGPU_STATE_DIR").unwrap();
        let mine = DeviceState::open(dir.as_ref(), 1, gpu1_total).unwrap();
        mine.try_reserve(2 * GIB).unwrap();
        let mem = nvml.device_by_index(1).unwrap().memory_info().unwrap();
        assert_eq!((mem.used, mem.free), (5 * GIB, gpu1_total - 5 * GIB));
        return;
    }
    let fx = Fixture::new(&config_with(2, ""));
    let state = DeviceState::open(&fx.state_dir, 1, gpu1_total).unwrap();
    state.try_reserve(3 * GIB).unwrap();
    fx.run("memory_used_by_another_process_shows_in_nvml");
    // The child has exited, and like a real driver the machine freed what it held.
    assert_eq!(state.used(), 3 * GIB, "the child's reservation went with it");
    state.release(3 * GIB);
    assert_eq!(state.used(), 0);
}

#[test]
fn init_error_makes_init_fail() {
    if is_child("init_error_makes_init_fail") {
        assert!(matches!(nvml(), Err(NvmlError::DriverNotLoaded)));
        return;
    }
    Fixture::new(&config_with(1, "init_error = \"DRIVER_NOT_LOADED\"")).run("init_error_makes_init_fail");
}

#[test]
fn init_fails_cleanly_without_config() {
    if is_child("init_fails_cleanly_without_config") {
        assert!(matches!(nvml(), Err(NvmlError::LibraryNotFound)));
        return;
    }
    let fx = Fixture::new("");
    let mut cmd = fx.command("init_fails_cleanly_without_config");
    cmd.env_remove("FAKEGPU_CONFIG");
    let out = run_child(cmd, "init_fails_cleanly_without_config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FAKEGPU_CONFIG is not set"), "{stderr}");
}

#[test]
fn init_fails_cleanly_with_a_missing_file() {
    if is_child("init_fails_cleanly_with_a_missing_file") {
        assert!(matches!(nvml(), Err(NvmlError::Unknown)));
        return;
    }
    let fx = Fixture::new("");
    let missing = fx.dir.path().join("nope.toml");
    let mut cmd = fx.command("init_fails_cleanly_with_a_missing_file");
    cmd.env("FAKEGPU_CONFIG", &missing);
    let out = run_child(cmd, "init_fails_cleanly_with_a_missing_file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reading") && stderr.contains("nope.toml"), "{stderr}");
}

#[test]
fn init_fails_cleanly_with_a_bad_config() {
    if is_child("init_fails_cleanly_with_a_bad_config") {
        assert!(matches!(nvml(), Err(NvmlError::Unknown)));
        // Still failing, and still not initialized, on a second try.
        assert!(matches!(nvml(), Err(NvmlError::Unknown)));
        return;
    }
    let fx = Fixture::new(&config_with(1, "colour = \"green\""));
    let out = fx.run("init_fails_cleanly_with_a_bad_config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("colour") && stderr.contains("fakegpu.toml"), "{stderr}");
}

// ---- the raw C ABI -------------------------------------------------------------------

use gpuslice_cuda_abi::nvml::{
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH as ARGUMENT_VERSION_MISMATCH, NVML_ERROR_GPU_NOT_FOUND as GPU_NOT_FOUND,
    NVML_ERROR_INSUFFICIENT_SIZE as INSUFFICIENT_SIZE, NVML_ERROR_INVALID_ARGUMENT as INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND as NOT_FOUND, NVML_ERROR_UNINITIALIZED as UNINITIALIZED, NVML_SUCCESS as SUCCESS,
};

fn raw() -> NvmlLib {
    // SAFETY: loading the fake NVML runs no initialisers beyond Rust's own.
    unsafe { NvmlLib::new(lib_path()) }.expect("loading libfakegpu.so")
}

fn text(buf: &[c_char]) -> &str {
    CStr::from_bytes_until_nul(bytemuck(buf)).expect("NUL-terminated").to_str().unwrap()
}

fn bytemuck(buf: &[c_char]) -> &[u8] {
    // SAFETY: c_char and u8 have the same size and alignment and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len()) }
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw NVML calls, all under one contract")]
fn c_abi_follows_nvml() {
    if !is_child("c_abi_follows_nvml") {
        Fixture::new(&config_with(1, "")).run("c_abi_follows_nvml");
        return;
    }
    let lib = raw();
    let mut count: c_uint = 0;
    let mut buf = [0 as c_char; 96];
    let mut dev: nvmlDevice_t = ptr::null_mut();

    // SAFETY: for every call below, the arguments are live locals of the types nvml.h names,
    // buffer lengths are the buffers' real lengths, or the pointers are deliberately null.
    unsafe {
        // Before init: only the version query and error strings work.
        assert_eq!(lib.nvmlDeviceGetCount_v2(&mut count), UNINITIALIZED);
        assert_eq!(lib.nvmlShutdown(), UNINITIALIZED);
        assert_eq!(lib.nvmlSystemGetNVMLVersion(buf.as_mut_ptr(), 96), SUCCESS);
        assert_eq!(text(&buf), "13.580.95.05");
        assert_eq!(CStr::from_ptr(lib.nvmlErrorString(INSUFFICIENT_SIZE)), c"Insufficient Size");

        // Init is reference-counted.
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        assert_eq!(lib.nvmlInit(), SUCCESS);
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetCount(&mut count), SUCCESS);
        assert_eq!(count, 1);
        assert_eq!(lib.nvmlDeviceGetHandleByIndex(0, &mut dev), SUCCESS);
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetCount_v2(&mut count), UNINITIALIZED);
        let mut index: c_uint = 9;
        assert_eq!(lib.nvmlDeviceGetIndex(dev, &mut index), UNINITIALIZED);
        assert_eq!(lib.nvmlInitWithFlags(0), SUCCESS);
        // The same handle is valid again after re-initialising.
        assert_eq!(lib.nvmlDeviceGetIndex(dev, &mut index), SUCCESS);
        assert_eq!(index, 0);

        // Null outputs and unknown handles.
        assert_eq!(lib.nvmlDeviceGetCount_v2(ptr::null_mut()), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetHandleByIndex_v2(0, ptr::null_mut()), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetHandleByIndex_v2(1, &mut dev), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetHandleByIndex_v2(0, &mut dev), SUCCESS);
        let mut not_a_device = 0u64;
        let bogus: nvmlDevice_t = ptr::from_mut(&mut not_a_device).cast();
        assert_eq!(lib.nvmlDeviceGetIndex(bogus, &mut index), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetIndex(ptr::null_mut(), &mut index), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetIndex(dev, ptr::null_mut()), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetUUID(dev, ptr::null_mut(), 96), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetHandleByUUID(ptr::null(), &mut dev), INVALID_ARGUMENT);

        // Buffers: the string and its NUL must fit.
        let name = Gpu::nth(0).name;
        let exact = c_uint::try_from(name.len() + 1).unwrap();
        assert_eq!(lib.nvmlDeviceGetName(dev, buf.as_mut_ptr(), exact - 1), INSUFFICIENT_SIZE);
        assert_eq!(lib.nvmlDeviceGetName(dev, buf.as_mut_ptr(), exact), SUCCESS);
        assert_eq!(text(&buf), name);
        assert_eq!(lib.nvmlSystemGetDriverVersion(buf.as_mut_ptr(), 9), INSUFFICIENT_SIZE);
        assert_eq!(lib.nvmlSystemGetDriverVersion(buf.as_mut_ptr(), 10), SUCCESS);
        assert_eq!(text(&buf), "580.95.05");
        let mut cuda: c_int = 0;
        assert_eq!(lib.nvmlSystemGetCudaDriverVersion(&mut cuda), SUCCESS);
        assert_eq!(cuda, 13000);

        // Lookups by UUID and PCI bus id, in NVML's accepted spellings.
        let mut found: nvmlDevice_t = ptr::null_mut();
        let uuid = std::ffi::CString::new(Gpu::nth(0).uuid).unwrap();
        assert_eq!(lib.nvmlDeviceGetHandleByUUID(uuid.as_ptr(), &mut found), SUCCESS);
        assert_eq!(found, dev);
        for bus_id in [c"00000000:19:00.0", c"0000:19:00.0", c"19:00.0"] {
            found = ptr::null_mut();
            assert_eq!(lib.nvmlDeviceGetHandleByPciBusId_v2(bus_id.as_ptr(), &mut found), SUCCESS);
            assert_eq!(found, dev, "{bus_id:?}");
        }
        assert_eq!(lib.nvmlDeviceGetHandleByPciBusId(c"0000:19:00.0".as_ptr(), &mut found), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetHandleByPciBusId_v2(c"0000:1a:00.0".as_ptr(), &mut found), NOT_FOUND);
        assert_eq!(lib.nvmlDeviceGetHandleByPciBusId_v2(c"bus 25".as_ptr(), &mut found), INVALID_ARGUMENT);

        // Memory: v1, and v2 with its version word checked.
        let mut mem1: nvmlMemory_t = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetMemoryInfo(dev, &mut mem1), SUCCESS);
        assert_eq!((mem1.total, mem1.free, mem1.used), (80 * GIB, 80 * GIB, 0));
        let mut mem2: nvmlMemory_v2_t = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetMemoryInfo_v2(dev, &mut mem2), ARGUMENT_VERSION_MISMATCH);
        mem2.version = (1 << 24) | 40;
        assert_eq!(lib.nvmlDeviceGetMemoryInfo_v2(dev, &mut mem2), ARGUMENT_VERSION_MISMATCH);
        mem2.version = (2 << 24) | 40;
        assert_eq!(lib.nvmlDeviceGetMemoryInfo_v2(dev, &mut mem2), SUCCESS);
        assert_eq!((mem2.total, mem2.free, mem2.used, mem2.reserved), (80 * GIB, 80 * GIB, 0, 0));
        assert_eq!(lib.nvmlDeviceGetMemoryInfo_v2(dev, ptr::null_mut()), INVALID_ARGUMENT);

        // PCI info: v3 and v2 fill everything; v1 leaves what was reserved space alone.
        let mut pci: nvmlPciInfo_t = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetPciInfo_v3(dev, &mut pci), SUCCESS);
        assert_eq!(text(&pci.busId), "00000000:19:00.0");
        assert_eq!(text(&pci.busIdLegacy), "0000:19:00.0");
        let mut pci2: nvmlPciInfo_t = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetPciInfo_v2(dev, &mut pci2), SUCCESS);
        assert_eq!(bytemuck(&pci2.busId), bytemuck(&pci.busId));
        let mut pci1: nvmlPciInfo_t = std::mem::zeroed();
        pci1.busId = [0x7f; 32];
        assert_eq!(lib.nvmlDeviceGetPciInfo(dev, &mut pci1), SUCCESS);
        assert_eq!(text(&pci1.busIdLegacy), "0000:19:00.0");
        assert_eq!((pci1.bus, pci1.pciDeviceId), (0x19, 0x2330_10de));
        assert_eq!(pci1.busId, [0x7f; 32]);

        let mut minor: c_uint = 0;
        assert_eq!(lib.nvmlDeviceGetMinorNumber(dev, &mut minor), SUCCESS);
        assert_eq!(minor, 100);
        let (mut current, mut pending) = (7, 7);
        assert_eq!(lib.nvmlDeviceGetMigMode(dev, &mut current, &mut pending), 3);
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
        assert_eq!(lib.nvmlShutdown(), UNINITIALIZED);
    }
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw NVML calls, all under one contract")]
fn no_gpus_needs_the_no_gpus_flag() {
    if !is_child("no_gpus_needs_the_no_gpus_flag") {
        Fixture::new(&config_with(0, "")).run("no_gpus_needs_the_no_gpus_flag");
        return;
    }
    let lib = raw();
    let mut count: c_uint = 9;
    // SAFETY: `count` is a live c_uint.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), GPU_NOT_FOUND);
        assert_eq!(lib.nvmlDeviceGetCount_v2(&mut count), UNINITIALIZED);
        assert_eq!(lib.nvmlInitWithFlags(1), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetCount_v2(&mut count), SUCCESS);
    }
    assert_eq!(count, 0);
}

/// Utilisation is read from the device timeline every process shares: here, work this
/// process puts there directly.
#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw NVML calls, all under one contract")]
fn utilization_comes_from_the_device_timeline() {
    let name = "utilization_comes_from_the_device_timeline";
    if !is_child(name) {
        Fixture::new(&config_with(2, "")).run(name);
        return;
    }
    let nvml = nvml().unwrap();
    let (dev0, dev1) = (nvml.device_by_index(0).unwrap(), nvml.device_by_index(1).unwrap());
    let idle = dev0.utilization_rates().unwrap();
    assert_eq!((idle.gpu, idle.memory), (0, 0));
    assert!(matches!(dev0.process_utilization_stats(None), Err(NvmlError::NotFound)));

    // Three seconds of work; a second and a bit into it, the last second was all busy.
    let dir = std::env::var_os("FAKEGPU_STATE_DIR").unwrap();
    let timeline = DeviceTimeline::open(dir.as_ref(), 0).unwrap();
    let (start, _) = timeline.occupy(0, 3_000_000_000);
    timeline::sleep_until(start + 1_200_000_000);
    let busy = dev0.utilization_rates().unwrap();
    assert_eq!((busy.gpu, busy.memory), (100, 0));
    assert_eq!(dev1.utilization_rates().unwrap().gpu, 0, "one timeline per GPU");
    let samples = dev0.process_utilization_stats(None).unwrap();
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!((samples[0].pid, samples[0].sm_util, samples[0].mem_util), (std::process::id(), 100, 0));
    let unix_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    assert!(
        samples[0].timestamp.abs_diff(unix_us) < 1_000_000,
        "{} is a wall-clock µs timestamp",
        samples[0].timestamp
    );
    assert!(matches!(dev0.process_utilization_stats(unix_us + 10_000_000), Err(NvmlError::NotFound)));

    // The C ABI's conventions: a null buffer, or one too small, gets the count needed.
    let lib = raw();
    let mut handle: nvmlDevice_t = ptr::null_mut();
    // SAFETY: a zeroed sample is valid.
    let mut buf: [nvmlProcessUtilizationSample_t; 2] = unsafe { std::mem::zeroed() };
    let mut count: c_uint = 0;
    // SAFETY: live locals of the types nvml.h names, or deliberately null pointers.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetHandleByIndex_v2(0, &mut handle), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetProcessUtilization(handle, ptr::null_mut(), &mut count, 0), INSUFFICIENT_SIZE);
        assert_eq!(count, 1);
        count = 0;
        assert_eq!(lib.nvmlDeviceGetProcessUtilization(handle, buf.as_mut_ptr(), &mut count, 0), INSUFFICIENT_SIZE);
        assert_eq!(count, 1);
        count = 2;
        assert_eq!(lib.nvmlDeviceGetProcessUtilization(handle, buf.as_mut_ptr(), &mut count, 0), SUCCESS);
        assert_eq!((count, buf[0].pid, buf[0].smUtil), (1, std::process::id(), 100));
        assert_eq!(lib.nvmlDeviceGetProcessUtilization(handle, buf.as_mut_ptr(), ptr::null_mut(), 0), INVALID_ARGUMENT);
        let last = buf[0].timeStamp + 10_000_000;
        assert_eq!(lib.nvmlDeviceGetProcessUtilization(handle, buf.as_mut_ptr(), &mut count, last), NOT_FOUND);
        assert_eq!(count, 0);
        assert_eq!(lib.nvmlDeviceGetUtilizationRates(handle, ptr::null_mut()), INVALID_ARGUMENT);
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
    }

    // The work's owner goes away: what it had not run yet is dropped, and a second later
    // the device reads idle.
    drop(timeline);
    let gone = timeline::now();
    let deadline = gone + 5_000_000_000;
    let idle = || {
        dev0.utilization_rates().unwrap().gpu == 0
            && matches!(dev0.process_utilization_stats(None), Err(NvmlError::NotFound))
    };
    while !idle() {
        assert!(timeline::now() < deadline, "still busy 5 s after the work was dropped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(timeline::now() >= gone + 900_000_000, "idle too soon: the work ran until it was dropped");
}
