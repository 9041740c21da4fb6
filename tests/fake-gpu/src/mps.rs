//! The simulated driver as an MPS client.
//!
//! At `cuInit` the driver looks for an MPS control daemon where the real one does: the
//! `control` socket in `CUDA_MPS_PIPE_DIRECTORY` (default `/tmp/nvidia-mps`; the stand-in
//! `nvidia-cuda-mps-control` makes it). Then, as the real driver:
//!
//! - no control socket: no MPS; the process uses the GPU directly, with no MPS limits;
//! - a socket no daemon answers (a daemon that died without `quit`):
//!   `cuInit` fails with `CUDA_ERROR_MPS_CONNECTION_FAILED`;
//! - a live daemon: the process is its client. Its limits are the daemon's defaults, lowered
//!   (never raised) by its own `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` and
//!   `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` (device 0's entry). The pinned limit caps the
//!   device memory the process may hold (past it allocations fail `CUDA_ERROR_OUT_OF_MEMORY`);
//!   the thread percentage is the share of the SMs its kernels get, so each kernel runs
//!   `100 / percentage` times as long on the shared timeline.
//!
//! `cuMemGetInfo` shows a client its pinned limit as `total` ([`mem_info`]).
//!
//! Not modelled: the MPS server process (NVML keeps listing the clients as compute processes
//! of their own), and kernels of different clients running side by side (they still take
//! turns on the timeline).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;

use gpuslice_core::mps::{PINNED_ENV, PIPE_ENV, THREAD_ENV, parse_pinned, parse_size, parse_thread_percentage};

/// This process's MPS limits, once `cuInit` connected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Client {
    pub thread_percentage: f64,
    /// Bytes of device memory the process may hold per device; `None`: no limit.
    pub pinned_bytes: Option<u64>,
}

static CLIENT: OnceLock<Option<Client>> = OnceLock::new();

/// Why `cuInit` cannot go on.
#[derive(Debug)]
pub struct ConnectionFailed(pub String);

/// Connects once per process; later calls return the first answer.
pub fn connect() -> Result<Option<Client>, ConnectionFailed> {
    if let Some(c) = CLIENT.get() {
        return Ok(*c);
    }
    let dir = std::env::var_os(PIPE_ENV).map_or_else(|| PathBuf::from("/tmp/nvidia-mps"), PathBuf::from);
    let socket = dir.join("control");
    if !socket.exists() {
        return Ok(*CLIENT.get_or_init(|| None));
    }
    let answer = (|| {
        // Through the directory's descriptor: a socket address holds at most 108 bytes.
        let d = std::fs::File::open(&dir)?;
        let mut s = UnixStream::connect(format!("/proc/self/fd/{}/control", std::os::fd::AsRawFd::as_raw_fd(&d)))?;
        s.write_all(format!("client {}\n", std::process::id()).as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok::<_, std::io::Error>(text)
    })()
    .map_err(|e| ConnectionFailed(format!("{}: {e}", socket.display())))?;
    let mut daemon = Client { thread_percentage: 100.0, pinned_bytes: None };
    for line in answer.lines() {
        match line.split_once('=') {
            Some(("thread_percentage", v)) => {
                daemon.thread_percentage = parse_thread_percentage(v).unwrap_or(100.0);
            }
            Some(("pinned_device_mem_limit", v)) => daemon.pinned_bytes = parse_size(v).filter(|&b| b > 0),
            _ => {}
        }
    }
    let own_threads = std::env::var(THREAD_ENV).ok().and_then(|v| parse_thread_percentage(&v));
    let own_pinned = std::env::var(PINNED_ENV)
        .ok()
        .and_then(|v| parse_pinned(&v))
        .and_then(|e| e.into_iter().find(|(d, _)| *d == 0).map(|(_, b)| b))
        .filter(|&b| b > 0);
    let client = Client {
        thread_percentage: own_threads.map_or(daemon.thread_percentage, |t| t.min(daemon.thread_percentage)),
        pinned_bytes: match (daemon.pinned_bytes, own_pinned) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    };
    Ok(*CLIENT.get_or_init(|| Some(client)))
}

/// The connected client's limits, if this process is one.
pub fn client() -> Option<Client> {
    CLIENT.get().copied().flatten()
}

/// A kernel's duration on `percentage` of the SMs.
pub fn scaled_duration(nanos: u64) -> u64 {
    match client() {
        Some(c) if c.thread_percentage < 100.0 => (nanos as f64 * 100.0 / c.thread_percentage) as u64,
        _ => nanos,
    }
}

/// `cuMemGetInfo` as an MPS client sees it: with a pinned memory limit, `total` is the limit
/// (at most the device's memory) and `free` what the process may still allocate under it (at
/// most what the device has free); without one, the device's `(free, total)` unchanged.
/// `held` is what this process holds on the device. As the real driver does (NVIDIA's MPS
/// documentation: the limit is what `cudaMemGetInfo` reports to the client; `cuDeviceTotalMem`
/// keeps the device's size).
pub fn mem_info(free: u64, total: u64, held: u64) -> (u64, u64) {
    match client().and_then(|c| c.pinned_bytes) {
        Some(limit) => {
            let total = total.min(limit);
            (free.min(total.saturating_sub(held)), total)
        }
        None => (free, total),
    }
}

/// Whether holding `new_total` bytes on a device stays within the pinned limit.
pub fn within_pinned(new_total: u64) -> bool {
    client().and_then(|c| c.pinned_bytes).is_none_or(|limit| new_total <= limit)
}
