//! The simulated NVML's memory reserve, BAR1 and utilisation samples, as a real driver answers
//! them: `nvmlDeviceGetMemoryInfo` counts the reserve as used, `_v2` apart; BAR1 per process;
//! `nvmlDeviceGetSamples`' size query, value type, `lastSeenTimeStamp` and `NOT_FOUND`.

mod common;

use std::ffi::c_uint;
use std::ptr;

use common::{Fixture, config_with, is_child, lib_path};
use fakegpu::timeline::{self, DeviceTimeline};
use gpuslice_cuda_abi::nvml::{
    NVML_ERROR_INVALID_ARGUMENT as INVALID_ARGUMENT, NVML_ERROR_NOT_FOUND as NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED as NOT_SUPPORTED, NVML_SUCCESS as SUCCESS,
};
use nvml_wrapper_sys::bindings::{
    NvmlLib, nvmlBAR1Memory_t, nvmlDevice_t, nvmlMemory_t, nvmlMemory_v2_t, nvmlSample_t,
    nvmlSamplingType_enum_NVML_GPU_UTILIZATION_SAMPLES as GPU_SAMPLES,
    nvmlSamplingType_enum_NVML_MEMORY_UTILIZATION_SAMPLES as MEMORY_SAMPLES,
    nvmlSamplingType_enum_NVML_TOTAL_POWER_SAMPLES as POWER_SAMPLES, nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

#[test]
#[expect(clippy::multiple_unsafe_ops_per_block, reason = "a script of raw NVML calls, all under one contract")]
fn reserve_bar1_and_samples_follow_nvml() {
    let name = "reserve_bar1_and_samples_follow_nvml";
    if !is_child(name) {
        // The last table is the GPU's: the keys below are its.
        let config = config_with(1, "") + "reserved_memory = \"512MiB\"\nbar1_memory = \"128GiB\"\n";
        Fixture::new(&config).run(name);
        return;
    }
    // SAFETY: loading the fake NVML runs no initialisers beyond Rust's own.
    let lib = unsafe { NvmlLib::new(lib_path()) }.expect("loading libfakegpu.so");
    let mut dev: nvmlDevice_t = ptr::null_mut();
    let dir = std::env::var_os("FAKEGPU_STATE_DIR").unwrap();
    let timeline = DeviceTimeline::open(dir.as_ref(), 0).unwrap();
    // SAFETY: for every call below, the arguments are live locals of the types nvml.h names,
    // buffers hold the counts passed, or the pointers are deliberately null.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetHandleByIndex_v2(0, &mut dev), SUCCESS);

        // The reserve: used in the original struct, apart in v2; free is the same in both.
        let total = 80 * GIB;
        let mut m1: nvmlMemory_t = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetMemoryInfo(dev, &mut m1), SUCCESS);
        assert_eq!((m1.total, m1.used, m1.free), (total, 512 * MIB, total - 512 * MIB));
        let mut m2: nvmlMemory_v2_t = std::mem::zeroed();
        m2.version = (2 << 24) | 40;
        assert_eq!(lib.nvmlDeviceGetMemoryInfo_v2(dev, &mut m2), SUCCESS);
        assert_eq!((m2.total, m2.reserved, m2.used, m2.free), (total, 512 * MIB, 0, total - 512 * MIB));

        // BAR1: nobody holds memory, nothing mapped.
        let mut b: nvmlBAR1Memory_t = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetBAR1MemoryInfo(dev, &mut b), SUCCESS);
        assert_eq!((b.bar1Total, b.bar1Used, b.bar1Free), (128 * GIB, 0, 128 * GIB));
        assert_eq!(lib.nvmlDeviceGetBAR1MemoryInfo(dev, ptr::null_mut()), INVALID_ARGUMENT);

        // Samples: the size query answers what the driver keeps, as unsigned ints.
        let (mut kind, mut count) = (7, 0 as c_uint);
        assert_eq!(lib.nvmlDeviceGetSamples(dev, GPU_SAMPLES, 0, &mut kind, &mut count, ptr::null_mut()), SUCCESS);
        assert_eq!((kind, count), (nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT, 120));
        let mut buf: Vec<nvmlSample_t> = vec![std::mem::zeroed(); count as usize];
        assert_eq!(lib.nvmlDeviceGetSamples(dev, GPU_SAMPLES, 0, &mut kind, &mut count, buf.as_mut_ptr()), SUCCESS);
        assert_eq!(count, 120);
        assert!(buf.windows(2).all(|w| w[1].timeStamp > w[0].timestamp_plus()), "oldest first, 1/6 s apart");
        assert!(buf.iter().all(|s| s.sampleValue.uiVal == 0), "an idle device");
        let newest = buf[119].timeStamp;
        assert!(newest.abs_diff(unix_us()) < 1_000_000, "{newest} is a wall-clock µs stamp");

        // A second of work: the samples after it started read busy.
        let before = unix_us();
        let (start, _) = timeline.occupy(0, 1_000_000_000);
        timeline::sleep_until(start + 700_000_000);
        count = 120;
        assert_eq!(
            lib.nvmlDeviceGetSamples(dev, GPU_SAMPLES, before, &mut kind, &mut count, buf.as_mut_ptr()),
            SUCCESS
        );
        let fresh = &buf[..count as usize];
        assert!((3..=12).contains(&count), "samples since the work began: {count}");
        assert!(fresh.iter().all(|s| s.timeStamp > before));
        assert!(fresh.iter().filter(|s| s.sampleValue.uiVal == 100).count() >= 2, "whole busy periods read 100");
        // Memory samples: `busy` reads no memory.
        count = 120;
        assert_eq!(
            lib.nvmlDeviceGetSamples(dev, MEMORY_SAMPLES, before, &mut kind, &mut count, buf.as_mut_ptr()),
            SUCCESS
        );
        assert!(buf[..count as usize].iter().all(|s| s.sampleValue.uiVal == 0));
        // A room of two gets the oldest two.
        count = 2;
        assert_eq!(
            lib.nvmlDeviceGetSamples(dev, GPU_SAMPLES, before, &mut kind, &mut count, buf.as_mut_ptr()),
            SUCCESS
        );
        assert_eq!(count, 2);

        // Nothing since a stamp in the future; other kinds and bad arguments.
        count = 120;
        let later = unix_us() + 10_000_000;
        assert_eq!(
            lib.nvmlDeviceGetSamples(dev, GPU_SAMPLES, later, &mut kind, &mut count, buf.as_mut_ptr()),
            NOT_FOUND
        );
        assert_eq!(count, 0);
        count = 120;
        assert_eq!(
            lib.nvmlDeviceGetSamples(dev, POWER_SAMPLES, 0, &mut kind, &mut count, buf.as_mut_ptr()),
            NOT_SUPPORTED
        );
        assert_eq!(lib.nvmlDeviceGetSamples(dev, 99, 0, &mut kind, &mut count, buf.as_mut_ptr()), INVALID_ARGUMENT);
        assert_eq!(
            lib.nvmlDeviceGetSamples(dev, GPU_SAMPLES, 0, &mut kind, ptr::null_mut(), buf.as_mut_ptr()),
            INVALID_ARGUMENT
        );
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
    }
}

/// The next sample's stamp must be later than this one's by about a period (1/6 s).
trait Stamp {
    fn timestamp_plus(&self) -> u64;
}

impl Stamp for nvmlSample_t {
    fn timestamp_plus(&self) -> u64 {
        self.timeStamp + 150_000
    }
}
