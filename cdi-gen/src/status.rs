//! `gpuslice-cdi status`: what each slice on this node holds now, read from the slice state
//! the hook and the interception library share (`<state_dir>/slices/*/{limits,region}`).
//!
//! Regions are written by containers, so they are read as untrusted input: a slice whose
//! region cannot be read is listed with the reason instead of failing the whole report.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use gpuslice_core::config::{CoresPolicy, Mode, Priority};
use gpuslice_core::limits::{self, Limits};
use gpuslice_core::mig::MigInstance;
use gpuslice_core::region::{self, Region};

/// How long `status` waits for a region's lock before reporting without it.
const STATUS_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
use serde::Serialize;

/// One slice's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceStatus {
    pub slice: String,
    pub mode: String,
    pub gpu_index: Option<u32>,
    pub gpu_uuid: Option<String>,
    pub memory_limit_bytes: Option<u64>,
    pub cores_percent: Option<u32>,
    /// `cap` or `borrow`; `null` for a whole GPU (mode `none`), which has no limits.
    pub cores_policy: Option<CoresPolicy>,
    /// `normal` or `high`; `null` for a whole GPU.
    pub priority: Option<Priority>,
    /// Device memory charged by live and not yet reclaimed processes.
    pub memory_used_bytes: u64,
    /// GPU time the slice's kernels took since its region was created (compute pacing).
    pub gpu_time_ns: u64,
    /// Time the slice's processes were held back to keep it within its share.
    pub held_ns: u64,
    /// Processes registered in the region that are still alive.
    pub processes: usize,
    /// Containers started with the slice and not yet stopped.
    pub containers: Vec<String>,
    /// Why the limits or the region could not be read, if they could not.
    pub error: Option<String>,
    /// The instance of a MIG device (mode `mig`): UUID, IDs, memory, SMs, profile.
    pub mig: Option<MigInstance>,
}

/// Every slice under `state_dir`, by name.
pub fn status(state_dir: &Path) -> Result<Vec<SliceStatus>> {
    let dir = limits::slices_dir(state_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort_by_key(|n| natural_key(n));
    Ok(names.into_iter().map(|name| slice_status(state_dir, name)).collect())
}

fn slice_status(state_dir: &Path, slice: String) -> SliceStatus {
    let mut status = SliceStatus {
        slice,
        mode: "?".into(),
        gpu_index: None,
        gpu_uuid: None,
        memory_limit_bytes: None,
        cores_percent: None,
        cores_policy: None,
        priority: None,
        memory_used_bytes: 0,
        gpu_time_ns: 0,
        held_ns: 0,
        processes: 0,
        containers: Vec::new(),
        error: None,
        mig: None,
    };
    match Limits::load(&limits::limits_path(state_dir, &status.slice)) {
        Ok(l) => {
            status.mode = l.mode.to_string();
            status.gpu_index = Some(l.gpu_index);
            status.gpu_uuid = Some(l.gpu_uuid);
            status.cores_percent = Some(l.cores_percent);
            // A MIG device's memory is its instance's, a limit the hardware keeps.
            status.memory_limit_bytes = matches!(l.mode, Mode::Shim | Mode::Mig).then_some(l.memory_bytes);
            if l.mode == Mode::Mig {
                status.mig = MigInstance::load(state_dir, &status.slice);
                if status.mig.is_none() {
                    status.error = Some("its MIG record is missing or unreadable; run gpuslice-cdi generate".into());
                }
            }
            status.cores_policy = (l.mode == Mode::Shim).then_some(l.cores_policy);
            status.priority = (l.mode == Mode::Shim).then_some(l.priority);
        }
        Err(e) => status.error = Some(format!("limits: {e}")),
    }
    let path = region::region_path(state_dir, &status.slice);
    if !path.exists() {
        return status;
    }
    // A process on the slice can hold the region's lock for ever: wait briefly, then report
    // what can be read without it and say why the rest is missing.
    let read = Region::open(&path).map(|r| r.with_lock_wait(STATUS_LOCK_WAIT)).and_then(|r| {
        let compute = r.compute();
        status.gpu_time_ns = compute.gpu_ns_total.load(std::sync::atomic::Ordering::Relaxed);
        status.held_ns = compute.held_ns_total.load(std::sync::atomic::Ordering::Relaxed);
        let slots = r.slots()?;
        let used = match r.usage_locked() {
            Err(e) if e.is_busy() => {
                status.error = Some(e.to_string());
                r.usage()?
            }
            other => other?,
        };
        let containers = match r.containers() {
            Err(e) if e.is_busy() => Vec::new(),
            other => other?,
        };
        Ok((used, slots.iter().filter(|s| s.alive).count(), containers))
    });
    match read {
        Ok((used, processes, containers)) => {
            status.memory_used_bytes = used;
            status.processes = processes;
            status.containers = containers.into_iter().map(|c| c.id).collect();
        }
        Err(e) => status.error = Some(e.to_string()),
    }
    status
}

/// `slice10` after `slice9`.
fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
    (name[..digits].to_owned(), name[digits..].parse().unwrap_or(0))
}

/// The report as a table.
pub fn table(slices: &[SliceStatus]) -> String {
    let gib = |b: u64| format!("{:.2}", b as f64 / (1u64 << 30) as f64);
    let rows: Vec<Vec<String>> = slices
        .iter()
        .map(|s| {
            let short: Vec<String> = s.containers.iter().map(|c| c.chars().take(12).collect()).collect();
            vec![
                s.slice.clone(),
                match &s.mig {
                    Some(m) => format!("{} {}", s.mode, m.profile),
                    None => s.mode.clone(),
                },
                s.gpu_index.map_or_else(|| "-".into(), |i| i.to_string()),
                // A MIG device has no region: its use is the driver's to tell (nvidia-smi).
                if s.mig.is_some() { "-".to_owned() } else { gib(s.memory_used_bytes) },
                s.memory_limit_bytes.map_or_else(|| "-".into(), gib),
                s.cores_percent.map_or_else(|| "-".into(), |c| c.to_string()),
                s.cores_policy.map_or_else(|| "-".into(), |p| p.to_string()),
                s.priority.map_or_else(|| "-".into(), |p| p.to_string()),
                s.processes.to_string(),
                match (&s.error, &s.mig) {
                    (Some(e), _) => format!("error: {e}"),
                    // A MIG device: its instance first (no region: used memory is the driver's to tell).
                    (None, Some(m)) => {
                        format!("{} {} SMs {}", m.uuid, m.sm_count, short.join(",")).trim_end().to_owned()
                    }
                    (None, None) => short.join(","),
                },
            ]
        })
        .collect();
    crate::render_table(
        &[
            "SLICE",
            "MODE",
            "GPU",
            "USED (GiB)",
            "LIMIT (GiB)",
            "CORES (%)",
            "POLICY",
            "PRIORITY",
            "PROCESSES",
            "CONTAINERS",
        ],
        &[false, false, true, true, true, true, false, false, true, false],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut names = vec!["slice10", "gpu1", "slice9", "slice0", "gpu0"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["gpu0", "gpu1", "slice0", "slice9", "slice10"]);
    }

    #[test]
    fn reports_usage_processes_and_containers_and_survives_a_corrupt_region() {
        let state = tempfile::tempdir().unwrap();
        let limits = Limits {
            slice: "slice0".into(),
            mode: Mode::Shim,
            gpu_uuid: "GPU-1".into(),
            gpu_index: 0,
            memory_bytes: 4 << 30,
            cores_percent: 50,
            cores_policy: CoresPolicy::Borrow,
            priority: Priority::High,
            generation: 1,
        };
        limits.store(state.path()).unwrap();
        Limits { slice: "slice1".into(), ..limits.clone() }.store(state.path()).unwrap();
        Limits {
            slice: "gpu1".into(),
            mode: Mode::None,
            cores_percent: 100,
            cores_policy: CoresPolicy::Cap,
            priority: Priority::Normal,
            ..limits.clone()
        }
        .store(state.path())
        .unwrap();
        let region = Region::open_or_create(&region::region_path(state.path(), "slice0")).unwrap();
        let me = region.register().unwrap();
        region.charge(me, 1 << 30, 4 << 30).unwrap().unwrap();
        region.attach_container("0123456789abcdef0123").unwrap();
        fs::write(region::region_path(state.path(), "slice1"), b"scribbled").unwrap();

        let report = status(state.path()).unwrap();
        assert_eq!(report.len(), 3);
        let (gpu1, slice0, slice1) = (&report[0], &report[1], &report[2]);
        assert_eq!(gpu1.slice, "gpu1");
        assert_eq!((gpu1.cores_policy, gpu1.priority), (None, None), "a whole GPU has no policy");
        assert_eq!(slice0.memory_used_bytes, 1 << 30);
        assert_eq!(slice0.processes, 1);
        assert_eq!(slice0.containers, ["0123456789abcdef0123"]);
        assert_eq!((slice0.cores_policy, slice0.priority), (Some(CoresPolicy::Borrow), Some(Priority::High)));
        assert!(slice1.error.as_deref().is_some_and(|e| e.contains("corrupt")), "{report:?}");
        let text = table(&report);
        assert!(text.contains("slice0  shim") && text.contains("1.00") && text.contains("0123456789ab\n"), "{text}");
        assert!(text.contains("error:"), "{text}");
        let cols = |name: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(cols("SLICE")[9..12], ["POLICY", "PRIORITY", "PROCESSES"], "{text}");
        assert_eq!(cols("slice0")[6..8], ["borrow", "high"], "{text}");
        assert_eq!(cols("gpu1")[6..8], ["-", "-"], "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!((json[1]["cores_policy"].as_str(), json[1]["priority"].as_str()), (Some("borrow"), Some("high")));
        assert!(json[0]["cores_policy"].is_null() && json[0]["priority"].is_null(), "{json}");
        assert!(status(&state.path().join("nothing")).unwrap().is_empty());
    }
}
