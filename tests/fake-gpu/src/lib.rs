//! A simulated NVIDIA GPU: `libfakegpu.so`, installed in a test driver root as
//! `libnvidia-ml.so.1` (and later `libcuda.so.1`), so gpuslice can be tested without hardware.
//!
//! One request end to end: a tool calls `nvmlInit_v2`. The first call reads the TOML file
//! named by `FAKEGPU_CONFIG` ([`config`]) and maps one shared state file per GPU from the
//! state directory ([`state`]); a bad or missing config fails init with a line on stderr.
//! `nvmlDeviceGetHandleByIndex_v2(0, &dev)` hands out the address of GPU 0's
//! [`state::DeviceState`] as the handle, and `nvmlDeviceGetMemoryInfo_v2(dev, &mem)` checks
//! the handle against the known ones and answers `used` from the counter in the shared file,
//! which every process using the same state directory adds to ([`nvml`]).

pub mod config;
pub mod nvml;
pub mod state;
