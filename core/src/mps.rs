//! Mode `mps`: slices backed by NVIDIA's Multi-Process Service, defined once for the
//! generator, the node daemon, the hook and the interception library.
//!
//! A GPU in mode `mps` gets one MPS control daemon (`nvidia-cuda-mps-control -f`), run and
//! supervised by the node daemon (`gpuslice-cdi daemon`, `cdi-gen/src/mps.rs`) with
//! `CUDA_VISIBLE_DEVICES=<GPU UUID>` and its own pipe and log directories under the state dir:
//!
//! ```text
//! <state_dir>/mps/<gpu-uuid>/pipe     CUDA_MPS_PIPE_DIRECTORY: the daemon's control pipe, the
//!                                     servers' sockets; mounted into the slice's containers
//! <state_dir>/mps/<gpu-uuid>/log      CUDA_MPS_LOG_DIRECTORY: control.log, server.log (host only)
//! <state_dir>/mps/<gpu-uuid>/daemon   the supervisor's view (running, pid, restarts; host only)
//! ```
//!
//! A slice's container gets the pipe directory at [`CONTAINER_PIPE_DIR`] (MPS's own default,
//! so a client that drops `CUDA_MPS_PIPE_DIRECTORY` still finds the daemon) and, from the
//! slice's limits, `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=<cores>` and
//! `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=<memory>M` (device 0: an MPS client sees only its
//! server's devices, and the server only the daemon's one GPU). MPS lets a client's variables
//! only lower what the daemon set, so the daemon's defaults are the ceiling: the largest slice
//! on the GPU ([`Ceiling`]). Below that ceiling the interception library keeps a container's
//! own values lower-only ([`lower_thread_percentage`], [`lower_pinned_limit`]).

use std::path::{Path, PathBuf};

use crate::plan::{Plan, PlannedDevice};

pub const PIPE_ENV: &str = "CUDA_MPS_PIPE_DIRECTORY";
pub const LOG_ENV: &str = "CUDA_MPS_LOG_DIRECTORY";
pub const THREAD_ENV: &str = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE";
pub const PINNED_ENV: &str = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT";
/// Where a slice's container finds its GPU's pipe directory: MPS's default pipe directory.
pub const CONTAINER_PIPE_DIR: &str = "/tmp/nvidia-mps";
/// The control daemon's name, looked up in `PATH` unless `[mps] control` says otherwise.
pub const CONTROL_BINARY: &str = "nvidia-cuda-mps-control";
/// The file the control daemon writes its PID to, in its pipe directory.
pub const PID_FILE: &str = "nvidia-cuda-mps-control.pid";

/// `<state_dir>/mps`.
pub fn mps_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("mps")
}

/// `<state_dir>/mps/<gpu-uuid>`.
pub fn gpu_dir(state_dir: &Path, gpu_uuid: &str) -> PathBuf {
    mps_dir(state_dir).join(gpu_uuid)
}

/// The GPU's `CUDA_MPS_PIPE_DIRECTORY` on the host.
pub fn pipe_dir(state_dir: &Path, gpu_uuid: &str) -> PathBuf {
    gpu_dir(state_dir, gpu_uuid).join("pipe")
}

/// The GPU's `CUDA_MPS_LOG_DIRECTORY` on the host.
pub fn log_dir(state_dir: &Path, gpu_uuid: &str) -> PathBuf {
    gpu_dir(state_dir, gpu_uuid).join("log")
}

/// The supervisor's status file for the GPU's daemon.
pub fn status_path(state_dir: &Path, gpu_uuid: &str) -> PathBuf {
    gpu_dir(state_dir, gpu_uuid).join("daemon")
}

/// Whole MiB of a memory limit, at least 1 (MPS takes sizes with a unit; MiB is exact for
/// every planned split and never rounds a limit up).
pub fn pinned_mib(bytes: u64) -> u64 {
    (bytes >> 20).max(1)
}

/// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`'s value for a slice.
pub fn thread_percentage_value(cores_percent: u32) -> String {
    cores_percent.clamp(1, 100).to_string()
}

/// `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`'s value for a slice: `0=<MiB>M`.
pub fn pinned_limit_value(memory_bytes: u64) -> String {
    format!("0={}M", pinned_mib(memory_bytes))
}

/// The variables a slice's container gets.
pub fn slice_env(d: &PlannedDevice) -> Vec<String> {
    vec![
        format!("{PIPE_ENV}={CONTAINER_PIPE_DIR}"),
        format!("{THREAD_ENV}={}", thread_percentage_value(d.cores_percent)),
        format!("{PINNED_ENV}={}", pinned_limit_value(d.memory_bytes)),
    ]
}

/// A size as MPS writes them: a number with an optional unit `K`, `M`, `G` or `T` (powers of
/// 1024, an optional trailing `B`); no unit means bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let (digits, shift) = match t.as_bytes().last()? {
        b'K' | b'k' => (&t[..t.len() - 1], 10),
        b'M' | b'm' => (&t[..t.len() - 1], 20),
        b'G' | b'g' => (&t[..t.len() - 1], 30),
        b'T' | b't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`'s entries, `ordinal=size` separated by commas; `None`
/// for anything else.
pub fn parse_pinned(text: &str) -> Option<Vec<(u32, u64)>> {
    text.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (dev, size) = e.split_once('=')?;
            Some((dev.trim().parse().ok()?, parse_size(size)?))
        })
        .collect()
}

/// A thread percentage, 0 < p ≤ 100 (MPS takes fractions).
pub fn parse_thread_percentage(text: &str) -> Option<f64> {
    let p: f64 = text.trim().parse().ok()?;
    (p.is_finite() && p > 0.0 && p <= 100.0).then_some(p)
}

/// The thread percentage a client in a slice with `limit` gets when its own environment says
/// `own`: the lower of the two; a value that is no percentage counts as not set.
pub fn lower_thread_percentage(own: Option<&str>, limit: u32) -> String {
    match own.and_then(parse_thread_percentage) {
        Some(p) if p < f64::from(limit) => own.unwrap_or_default().trim().to_owned(),
        _ => thread_percentage_value(limit),
    }
}

/// The pinned memory limit a client in a slice with `limit_bytes` gets when its own
/// environment says `own`: device 0's entry lowered to the slice's limit if it is above it
/// or missing; entries for other ordinals (which an MPS client of one GPU does not have) are
/// dropped.
pub fn lower_pinned_limit(own: Option<&str>, limit_bytes: u64) -> String {
    let limit = pinned_mib(limit_bytes) << 20;
    match own.and_then(parse_pinned).and_then(|e| e.into_iter().find(|(d, _)| *d == 0)) {
        Some((_, own)) if own > 0 && own < limit => format!("0={}M", pinned_mib(own)),
        _ => pinned_limit_value(limit_bytes),
    }
}

/// A GPU's daemon-wide limits: no client of the GPU gets more than its largest slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub thread_percentage: u32,
    pub pinned_bytes: u64,
}

impl Ceiling {
    /// The ceiling of one GPU's mps slices in `plan`; `None` when it has none.
    pub fn of(plan: &Plan, gpu_uuid: &str) -> Option<Ceiling> {
        let slices = plan.devices.iter().filter(|d| d.mode == crate::config::Mode::Mps && d.gpu_uuid == gpu_uuid);
        slices.fold(None, |acc: Option<Ceiling>, d| {
            let c = Ceiling { thread_percentage: d.cores_percent, pinned_bytes: d.memory_bytes };
            Some(match acc {
                None => c,
                Some(a) => Ceiling {
                    thread_percentage: a.thread_percentage.max(c.thread_percentage),
                    pinned_bytes: a.pinned_bytes.max(c.pinned_bytes),
                },
            })
        })
    }

    /// The control commands that set it as the daemon's defaults.
    pub fn commands(&self) -> [String; 2] {
        [
            format!("set_default_active_thread_percentage {}", thread_percentage_value(self.thread_percentage)),
            format!("set_default_device_pinned_mem_limit 0 {}M", pinned_mib(self.pinned_bytes)),
        ]
    }
}

/// The supervisor's view of one GPU's daemon, as written to [`status_path`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonStatus {
    pub gpu_uuid: String,
    /// The daemon is up and took its limits.
    pub running: bool,
    /// Its PID while running.
    pub pid: Option<u32>,
    /// Times it was started again after it died.
    pub restarts: u64,
    /// The last problem, one line.
    pub last_error: Option<String>,
}

impl DaemonStatus {
    pub fn render(&self) -> String {
        format!(
            "gpu_uuid={}\nrunning={}\npid={}\nrestarts={}\nlast_error={}\n",
            self.gpu_uuid,
            u8::from(self.running),
            self.pid.map(|p| p.to_string()).unwrap_or_default(),
            self.restarts,
            self.last_error.as_deref().unwrap_or("").replace('\n', " ")
        )
    }

    /// Reads a status file's text; unknown or bad lines are skipped (host-written, informative).
    pub fn parse(text: &str) -> DaemonStatus {
        let mut s = DaemonStatus::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            match k {
                "gpu_uuid" => s.gpu_uuid = v.to_owned(),
                "running" => s.running = v == "1",
                "pid" => s.pid = v.parse().ok(),
                "restarts" => s.restarts = v.parse().unwrap_or(0),
                "last_error" if !v.is_empty() => s.last_error = Some(v.to_owned()),
                _ => {}
            }
        }
        s
    }

    /// The status file of `gpu_uuid`'s daemon under `state_dir`, if the supervisor wrote one.
    pub fn load(state_dir: &Path, gpu_uuid: &str) -> Option<DaemonStatus> {
        let text = crate::fsutil::read_bounded(&status_path(state_dir, gpu_uuid), 4096).ok()??;
        Some(DaemonStatus::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_mps_units() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("512MB"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn pinned_entries_parse() {
        assert_eq!(parse_pinned("0=1G,1=512MB"), Some(vec![(0, 1 << 30), (1, 512 << 20)]));
        assert_eq!(parse_pinned("0=1G,bad"), None);
    }

    #[test]
    fn slice_values_are_what_mps_reads() {
        assert_eq!(pinned_limit_value(20 << 30), "0=20480M");
        assert_eq!(pinned_limit_value(100), "0=1M");
        assert_eq!(thread_percentage_value(25), "25");
    }

    #[test]
    fn own_values_only_lower_the_limits() {
        assert_eq!(lower_thread_percentage(Some("100"), 25), "25");
        assert_eq!(lower_thread_percentage(Some("10"), 25), "10");
        assert_eq!(lower_thread_percentage(Some("12.5"), 25), "12.5");
        assert_eq!(lower_thread_percentage(Some("0"), 25), "25");
        assert_eq!(lower_thread_percentage(Some("-5"), 25), "25");
        assert_eq!(lower_thread_percentage(Some("nan"), 25), "25");
        assert_eq!(lower_thread_percentage(None, 25), "25");
        let limit = 2u64 << 30;
        assert_eq!(lower_pinned_limit(Some("0=100G"), limit), "0=2048M");
        assert_eq!(lower_pinned_limit(Some("0=1G"), limit), "0=1024M");
        assert_eq!(lower_pinned_limit(Some("1=1M"), limit), "0=2048M");
        assert_eq!(lower_pinned_limit(Some("0=0"), limit), "0=2048M");
        assert_eq!(lower_pinned_limit(Some("garbage"), limit), "0=2048M");
        assert_eq!(lower_pinned_limit(None, limit), "0=2048M");
    }

    #[test]
    fn daemon_status_round_trips() {
        let s = DaemonStatus {
            gpu_uuid: "GPU-1".into(),
            running: true,
            pid: Some(42),
            restarts: 3,
            last_error: Some("exited with status 1".into()),
        };
        assert_eq!(DaemonStatus::parse(&s.render()), s);
    }
}
