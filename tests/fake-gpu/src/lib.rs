//! A simulated NVIDIA GPU: `libfakegpu.so`, installed in a test driver root as
//! `libnvidia-ml.so.1` and `libcuda.so.1`, so gpuslice can be tested without hardware.
//!
//! One request end to end: a tool calls `nvmlInit_v2`. The first call reads the TOML file
//! named by `FAKEGPU_CONFIG` ([`config`]) and maps one shared state file per GPU from the
//! state directory ([`state`]); a bad or missing config fails init with a line on stderr.
//! `nvmlDeviceGetHandleByIndex_v2(0, &dev)` hands out the address of GPU 0's
//! [`state::DeviceState`] as the handle, and `nvmlDeviceGetMemoryInfo_v2(dev, &mem)` checks
//! the handle against the known ones and answers `used` from the shared file, summed over
//! every live process that holds memory there. A CUDA program in another process that calls
//! `cuMemAlloc_v2` ([`cuda`]) adds to that sum, and its share disappears when it exits, as
//! on a real GPU.
//!
//! Time works the same way. Each GPU's [`timeline`] is shared by every process: a `busy`
//! kernel launched anywhere waits for the device's earlier work and then occupies it, so
//! processes take turns, and `nvmlDeviceGetUtilizationRates` reads how busy the device was
//! over the last second from that timeline.

pub mod config;
pub mod cuda;
pub mod geometry;
pub mod holders;
pub mod mig;
pub mod mps;
pub mod nvml;
pub mod state;
pub mod timeline;
