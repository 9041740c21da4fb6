//! What the guard asks the NVIDIA driver, behind a trait so that the decisions can be tested
//! with a fake ([`Driver`]); [`NvmlDriver`] is the real thing.
//!
//! These are the driver's own numbers, the only ones the guard trusts: the processes using a
//! GPU by host PID with all the device memory each holds
//! (`nvmlDeviceGetComputeRunningProcesses_v3`, contexts included), and their recent share of
//! the GPU's time (`nvmlDeviceGetProcessUtilization`).

use std::path::Path;

use gpuslice_core::plan::GpuInfo;
use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use crate::discover::{self, DiscoverError};

/// A process using a GPU, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    /// Host PID.
    pub pid: u32,
    /// Device memory it holds, in bytes, its contexts included.
    pub used_bytes: u64,
}

/// One per-process utilisation sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtilSample {
    /// Host PID.
    pub pid: u32,
    /// CPU time of the sample, µs since the epoch.
    pub timestamp_us: u64,
    /// Percent of the GPU's SMs the process kept busy.
    pub sm_percent: u32,
}

/// Why the driver could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("GPU {index}: {what}: {reason}")]
    Query { index: u32, what: &'static str, reason: String },
}

/// The driver's view of the node.
pub trait Driver {
    /// The GPUs, in index order.
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, DriverError>;
    /// The processes using GPU `index`, with the memory each holds.
    fn processes(&mut self, index: u32) -> Result<Vec<GpuProcess>, DriverError>;
    /// Utilisation samples of GPU `index` newer than `since_us` (µs since the epoch); none is
    /// an empty list.
    fn samples(&mut self, index: u32, since_us: u64) -> Result<Vec<UtilSample>, DriverError>;
}

/// NVML, loaded once.
pub struct NvmlDriver {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmlDriver")
    }
}

impl NvmlDriver {
    /// Loads NVML from `lib` (default `libnvidia-ml.so.1`).
    pub fn load(lib: Option<&Path>) -> Result<Self, DriverError> {
        Ok(Self { nvml: discover::load(lib)? })
    }
}

fn query(index: u32, what: &'static str) -> impl Fn(NvmlError) -> DriverError {
    move |e| DriverError::Query { index, what, reason: e.to_string() }
}

impl Driver for NvmlDriver {
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, DriverError> {
        Ok(discover::gpus(&self.nvml)?)
    }

    fn processes(&mut self, index: u32) -> Result<Vec<GpuProcess>, DriverError> {
        let device = self.nvml.device_by_index(index).map_err(query(index, "handle"))?;
        let processes = device.running_compute_processes().map_err(query(index, "running compute processes"))?;
        Ok(processes
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                // Only Windows' WDDM answers "not available"; count nothing rather than guess.
                used_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => 0,
                },
            })
            .collect())
    }

    fn samples(&mut self, index: u32, since_us: u64) -> Result<Vec<UtilSample>, DriverError> {
        let device = self.nvml.device_by_index(index).map_err(query(index, "handle"))?;
        match device.process_utilization_stats(since_us) {
            Ok(samples) => Ok(samples
                .into_iter()
                .map(|s| UtilSample { pid: s.pid, timestamp_us: s.timestamp, sm_percent: s.sm_util.min(100) })
                .collect()),
            // No sample newer than `since_us`; GPUs without the feature give none either.
            Err(NvmlError::NotFound | NvmlError::NotSupported) => Ok(Vec::new()),
            Err(e) => Err(query(index, "process utilization")(e)),
        }
    }
}
