//! One look at the node: the driver's processes and samples per GPU, each process tied to a
//! container and a slice through its cgroups, and each slice's totals. The result, a
//! [`Snapshot`], is what every consumer of a pass reads: the enforcement
//! ([`super::enforce`]) now, a metrics endpoint later. Nothing here acts.
//!
//! Inputs and whom they come from:
//! - the GPUs, their processes (host PIDs, memory) and samples: the driver ([`Driver`]);
//! - a process's cgroups and start time: the kernel ([`Host`]);
//! - the containers' cgroups and slices: the hook's host-only records
//!   ([`gpuslice_core::containers`]);
//! - the slices' limits: the host-written limits files; their guard policies: the config,
//!   planned against the driver's GPUs.
//!
//! Slice regions and boards, which containers write, are not read at all.

use std::collections::BTreeMap;

use gpuslice_core::config::{Config, CoresPolicy, GuardPolicy, Mode};
use gpuslice_core::containers::ContainerRecord;
use gpuslice_core::limits::Limits;
use gpuslice_core::plan;
use serde::Serialize;

use super::driver::Driver;
use super::host::Host;

/// A slice as the guard checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceInfo {
    pub name: String,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub memory_bytes: u64,
    pub cores_percent: u32,
    pub cores_policy: CoresPolicy,
    pub memory_policy: GuardPolicy,
}

impl SliceInfo {
    /// A slice from its limits file, with `memory_policy`.
    pub fn from_limits(l: &Limits, memory_policy: GuardPolicy) -> Option<SliceInfo> {
        // Mode mps too: MPS caps each client's pinned memory, the guard the slice's sum.
        matches!(l.mode, Mode::Shim | Mode::Mps).then(|| SliceInfo {
            name: l.slice.clone(),
            gpu_index: l.gpu_index,
            gpu_uuid: l.gpu_uuid.clone(),
            memory_bytes: l.memory_bytes,
            cores_percent: l.cores_percent,
            cores_policy: l.cores_policy,
            memory_policy,
        })
    }
}

/// Whose a process on a GPU is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// A container's, charged to one of its slices on this GPU.
    Slice { slice: String, container: String, container_name: String },
    /// In none of this GPU's slices: a container without a slice here (`container` is its id
    /// when gpuslice knows it at all), or a host process.
    Unsliced { container: Option<String>, container_name: Option<String> },
}

/// A process using a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessSnapshot {
    /// Host PID.
    pub pid: u32,
    /// With the PID, names the process for good (`/proc/<pid>/stat` starttime).
    pub start_time: u64,
    pub gpu_index: u32,
    /// Device memory it holds, by the driver's count.
    pub used_bytes: u64,
    /// Its share of the GPU's time in the last samples, percent.
    pub sm_percent: u32,
    pub owner: Owner,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuSnapshot {
    pub index: u32,
    pub uuid: String,
    pub memory_total: u64,
    /// Whether it has slices (only then are processes outside a slice reported).
    pub sliced: bool,
    /// Device memory its processes hold, by the driver's count.
    pub used_bytes: u64,
    /// Percent of its time its processes kept it busy, summed over them.
    pub sm_percent: u32,
    /// Whether the driver gave utilisation samples this pass.
    pub sampled: bool,
}

/// One slice's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceSnapshot {
    #[serde(flatten)]
    pub info: SliceInfo,
    /// What its processes hold on its GPU, by the driver's count.
    pub used_bytes: u64,
    /// What it may hold before the guard acts: the limit plus the context tolerance.
    pub allowance_bytes: u64,
    /// Its processes on its GPU.
    pub processes: usize,
    /// The containers running with it (ids), whether or not they use the GPU now.
    pub containers: Vec<String>,
    /// Its share of the GPU's time, percent, summed over its processes.
    pub sm_percent: u32,
}

/// Everything one pass saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Snapshot {
    /// When it was taken, ms since the epoch.
    pub at_ms: u64,
    pub gpus: Vec<GpuSnapshot>,
    pub slices: Vec<SliceSnapshot>,
    pub processes: Vec<ProcessSnapshot>,
    /// What could not be read (one line each); the rest of the snapshot stands.
    pub errors: Vec<String>,
}

impl Snapshot {
    pub fn slice(&self, name: &str) -> Option<&SliceSnapshot> {
        self.slices.iter().find(|s| s.info.name == name)
    }

    /// The processes charged to `slice`.
    pub fn processes_of<'a>(&'a self, slice: &'a str) -> impl Iterator<Item = &'a ProcessSnapshot> + 'a {
        self.processes.iter().filter(move |p| matches!(&p.owner, Owner::Slice { slice: s, .. } if s == slice))
    }
}

/// What a pass looks at besides the driver and the host.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// The slices' limits files.
    pub limits: &'a [Limits],
    /// The hook's container records.
    pub records: &'a [ContainerRecord],
    /// Problems found reading them, reported in the snapshot.
    pub errors: Vec<String>,
}

/// Per GPU, the newest sample timestamp seen so far (µs), so that each pass reads only newer
/// samples.
pub type SampleCursor = BTreeMap<u32, u64>;

/// `slice10` after `slice9`.
pub fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
    (name[..digits].to_owned(), name[digits..].parse().unwrap_or(0))
}

/// Takes one snapshot. `now_ms` is the time to stamp it with.
pub fn observe(
    driver: &mut dyn Driver,
    host: &dyn Host,
    inputs: &Inputs<'_>,
    cursor: &mut SampleCursor,
    now_ms: u64,
) -> Snapshot {
    let mut snap = Snapshot { at_ms: now_ms, errors: inputs.errors.clone(), ..Snapshot::default() };
    let gpus = match driver.gpus() {
        Ok(gpus) => gpus,
        Err(e) => {
            snap.errors.push(format!("listing the GPUs: {e}"));
            return snap;
        }
    };

    // The slices: limits from the limits files, policies from the config planned on these GPUs.
    let planned = plan::plan(inputs.config, &gpus);
    if let Err(e) = &planned {
        snap.errors.push(format!(
            "the config does not plan on this node's GPUs ({e}); every slice gets [guard] memory_policy = {}",
            inputs.config.guard.memory_policy
        ));
    }
    let policy_of = |name: &str| {
        planned
            .as_ref()
            .ok()
            .and_then(|p| p.devices.iter().find(|d| d.name == name))
            .map_or(inputs.config.guard.memory_policy, |d| d.memory_policy)
    };
    let mut slices: Vec<SliceInfo> =
        inputs.limits.iter().filter_map(|l| SliceInfo::from_limits(l, policy_of(&l.slice))).collect();
    slices.sort_by_key(|s| natural_key(&s.name));

    for gpu in &gpus {
        let sliced = slices.iter().any(|s| s.gpu_uuid.eq_ignore_ascii_case(&gpu.uuid));
        let processes = match driver.processes(gpu.index) {
            Ok(p) => p,
            Err(e) => {
                snap.errors.push(e.to_string());
                continue;
            }
        };
        let since = cursor.get(&gpu.index).copied().unwrap_or(0);
        let samples = match driver.samples(gpu.index, since) {
            Ok(s) => s,
            Err(e) => {
                snap.errors.push(e.to_string());
                Vec::new()
            }
        };
        if let Some(newest) = samples.iter().map(|s| s.timestamp_us).max() {
            cursor.insert(gpu.index, newest.max(since));
        }
        // Per PID, the mean of its samples since the last pass.
        let mut sm: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for s in &samples {
            let e = sm.entry(s.pid).or_default();
            *e = (e.0 + s.sm_percent, e.1 + 1);
        }
        let sm_of = |pid: u32| sm.get(&pid).map_or(0, |&(sum, n)| sum / n.max(1));

        let mut gpu_snap = GpuSnapshot {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            memory_total: gpu.memory_total,
            sliced,
            used_bytes: 0,
            sm_percent: 0,
            sampled: !samples.is_empty(),
        };
        let gpu_slices: Vec<&SliceInfo> =
            slices.iter().filter(|s| s.gpu_uuid.eq_ignore_ascii_case(&gpu.uuid)).collect();
        for p in processes {
            // A process that has gone since the driver listed it is nobody's concern.
            let (Some(start_time), Some(cgroups)) = (host.start_time(p.pid), host.cgroups(p.pid)) else { continue };
            let mine: Vec<&ContainerRecord> = inputs.records.iter().filter(|r| r.contains(&cgroups)).collect();
            let charged = gpu_slices.iter().find_map(|s| mine.iter().find(|r| r.slice == s.name).map(|r| (s, r)));
            let owner = match charged {
                Some((s, r)) => {
                    Owner::Slice { slice: s.name.clone(), container: r.id.clone(), container_name: r.display_name() }
                }
                None => Owner::Unsliced {
                    container: mine.first().map(|r| r.id.clone()),
                    container_name: mine.first().map(|r| r.display_name()),
                },
            };
            let sm_percent = sm_of(p.pid);
            gpu_snap.used_bytes = gpu_snap.used_bytes.saturating_add(p.used_bytes);
            gpu_snap.sm_percent = gpu_snap.sm_percent.saturating_add(sm_percent);
            snap.processes.push(ProcessSnapshot {
                pid: p.pid,
                start_time,
                gpu_index: gpu.index,
                used_bytes: p.used_bytes,
                sm_percent,
                owner,
            });
        }
        snap.gpus.push(gpu_snap);
    }

    let guard = &inputs.config.guard;
    for info in slices {
        let (mut used, mut count, mut sm) = (0u64, 0usize, 0u32);
        for p in snap.processes_of(&info.name) {
            used = used.saturating_add(p.used_bytes);
            count += 1;
            sm = sm.saturating_add(p.sm_percent);
        }
        let mut containers: Vec<String> =
            inputs.records.iter().filter(|r| r.slice == info.name).map(|r| r.id.clone()).collect();
        containers.dedup();
        let allowance_bytes = allowance(&info, count, guard.context_tolerance.0, guard.max_tolerance.0);
        snap.slices.push(SliceSnapshot {
            info,
            used_bytes: used,
            allowance_bytes,
            processes: count,
            containers,
            sm_percent: sm,
        });
    }
    snap
}

/// What a slice of `processes` processes may hold before the guard acts:
/// `limit + min(processes × per_process, max)`.
pub fn allowance(slice: &SliceInfo, processes: usize, per_process: u64, max: u64) -> u64 {
    let tolerance = per_process.saturating_mul(processes as u64).min(max);
    slice.memory_bytes.saturating_add(tolerance)
}
