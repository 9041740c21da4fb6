//! Turning the config and the node's GPUs into the devices containers can ask for.
//!
//! Planning is deterministic: GPUs are taken in index order and every automatically named
//! slice gets the next `slice<N>`, so the same config on the same GPUs always gives the same
//! names and limits.

use std::collections::HashSet;

use crate::config::{Config, ConfigError, CoresPolicy, GpuOverride, GuardPolicy, Mode, Priority};
use crate::limits::Limits;
use crate::mig::{self, MigInstance};
use crate::units::ByteSize;

/// What the generator learned about one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// Total device memory in bytes.
    pub memory_total: u64,
    /// `N` in `/dev/nvidiaN`.
    pub minor: u32,
    pub pci_bus_id: String,
    /// Whether MIG mode is currently on.
    pub mig_enabled: bool,
    /// SMs of the whole GPU (0 when unknown): a MIG device's compute share is its SMs of these.
    pub sm_count: u32,
    /// The MIG devices that exist (with MIG mode on), by GPU then compute instance ID.
    pub mig: Vec<MigInstance>,
}

/// One device of the plan: a slice of a GPU, or a whole GPU in mode `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    pub name: String,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub mode: Mode,
    pub memory_bytes: u64,
    pub cores_percent: u32,
    /// Always the default for a whole GPU in mode `none`, which has no limits.
    pub cores_policy: CoresPolicy,
    /// Always the default for a whole GPU in mode `none`.
    pub priority: Priority,
    /// What the host guard does when the slice is over its memory limit (by the driver's
    /// count): the slice's own, else its GPU's, else `[guard] memory_policy`. Not in the
    /// limits file: the guard plans the node itself.
    pub memory_policy: GuardPolicy,
    /// The MIG device this is, for a device of a GPU in mode `mig`.
    pub mig: Option<MigInstance>,
}

impl PlannedDevice {
    /// The limits file for this device, at generation 1 (the store raises it as needed).
    pub fn limits(&self) -> Limits {
        Limits {
            slice: self.name.clone(),
            mode: self.mode,
            gpu_uuid: self.gpu_uuid.clone(),
            gpu_index: self.gpu_index,
            memory_bytes: self.memory_bytes,
            cores_percent: self.cores_percent,
            cores_policy: self.cores_policy,
            priority: self.priority,
            generation: 1,
        }
    }
}

/// Every device of the node, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub devices: Vec<PlannedDevice>,
}

/// Plans the node's devices. Fails, naming the key and value, when an override matches no
/// GPU or two GPUs' worth, or when explicit slices do not fit.
pub fn plan(config: &Config, gpus: &[GpuInfo]) -> Result<Plan, ConfigError> {
    check_overrides_match(config, gpus)?;
    let mut gpus: Vec<&GpuInfo> = gpus.iter().collect();
    gpus.sort_by_key(|g| g.index);

    let mut devices = Vec::new();
    let mut next_slice = 0u32;
    let mut names = HashSet::new();
    for gpu in gpus {
        let settings = config.settings_for(gpu.index, &gpu.uuid);
        let at = override_key(config, gpu);
        // A slice with this GPU's settings; whole GPUs and explicit slices adjust it.
        let slice = |name: String, memory_bytes: u64, cores_percent: u32| PlannedDevice {
            name,
            gpu_index: gpu.index,
            gpu_uuid: gpu.uuid.clone(),
            mode: Mode::Shim,
            memory_bytes,
            cores_percent,
            cores_policy: settings.cores_policy,
            priority: settings.priority,
            memory_policy: settings.memory_policy,
            mig: None,
        };
        if settings.mode == Mode::Mig && !gpu.mig_enabled {
            return Err(invalid(
                format!("{at}.mode"),
                "\"mig\"",
                format!(
                    "GPU {} ({}) has MIG mode off; turn it on and create instances (nvidia-smi -i {} -mig 1, then nvidia-smi mig -cgi … -C), or choose another mode",
                    gpu.index, gpu.uuid, gpu.index
                ),
            ));
        }
        if settings.mode == Mode::Shim && gpu.mig_enabled {
            return Err(invalid(
                format!("{at}.mode"),
                "\"shim\"",
                format!(
                    "GPU {} ({}) has MIG mode on; software slices need it off (nvidia-smi -i {} -mig 0), or set mode = \"none\" for this GPU",
                    gpu.index, gpu.uuid, gpu.index
                ),
            ));
        }
        match (settings.mode, &settings.slices) {
            (Mode::None, _) => devices.push(PlannedDevice {
                mode: Mode::None,
                cores_policy: CoresPolicy::default(),
                priority: Priority::default(),
                ..slice(format!("gpu{}", gpu.index), gpu.memory_total, 100)
            }),
            (Mode::Mig, _) => {
                if gpu.mig.is_empty() {
                    return Err(invalid(
                        format!("{at}.mode"),
                        "\"mig\"",
                        format!(
                            "GPU {} ({}) has no MIG instance to publish; create them first (nvidia-smi mig -i {} -cgi <profiles> -C)",
                            gpu.index, gpu.uuid, gpu.index
                        ),
                    ));
                }
                for m in &gpu.mig {
                    devices.push(PlannedDevice {
                        mode: Mode::Mig,
                        cores_policy: CoresPolicy::default(),
                        priority: Priority::default(),
                        mig: Some(m.clone()),
                        ..slice(
                            mig::device_name(gpu.index, m.gpu_instance_id, m.compute_instance_id),
                            m.memory_bytes,
                            sm_share(m.sm_count, gpu.sm_count),
                        )
                    });
                }
            }
            (Mode::Shim, Some(slices)) => {
                let budget = scaled(gpu.memory_total, settings.memory_scaling);
                let sum: u64 = slices.iter().map(|s| s.memory.0).fold(0, u64::saturating_add);
                if sum > budget {
                    let listed: Vec<String> = slices.iter().map(|s| s.memory.to_string()).collect();
                    return Err(invalid(
                        format!("{at}.slices"),
                        format!("[{}]", listed.join(", ")),
                        format!(
                            "the slices add up to {:.2} GiB, more than GPU {}'s {:.2} GiB × memory_scaling {} = {:.2} GiB",
                            ByteSize(sum).as_gib(),
                            gpu.index,
                            ByteSize(gpu.memory_total).as_gib(),
                            settings.memory_scaling,
                            ByteSize(budget).as_gib()
                        ),
                    ));
                }
                for s in slices {
                    let name = s.name.clone().unwrap_or_else(|| {
                        next_slice += 1;
                        format!("slice{}", next_slice - 1)
                    });
                    devices.push(PlannedDevice {
                        cores_policy: s.cores_policy.unwrap_or(settings.cores_policy),
                        priority: s.priority.unwrap_or(settings.priority),
                        memory_policy: s.memory_policy.unwrap_or(settings.memory_policy),
                        ..slice(name, s.memory.0, s.cores)
                    });
                }
            }
            (Mode::Shim, None) => {
                let n = settings.split_count;
                let memory = scaled(gpu.memory_total, settings.memory_scaling) / u64::from(n);
                // Whole MiB: readable limits, and still exact for every real card.
                let memory = memory / ByteSize::MIB * ByteSize::MIB;
                let cores = ((100.0 * settings.core_scaling / f64::from(n)).floor() as u32).clamp(1, 100);
                if memory == 0 {
                    return Err(invalid(
                        format!("{at}.split_count"),
                        n,
                        format!("GPU {}'s memory split {n} ways leaves less than 1 MiB per slice", gpu.index),
                    ));
                }
                for _ in 0..n {
                    devices.push(slice(format!("slice{next_slice}"), memory, cores));
                    next_slice += 1;
                }
            }
        }
    }
    for d in &devices {
        if !names.insert(d.name.clone()) {
            return Err(invalid("name", format!("\"{}\"", d.name), "is given to two slices"));
        }
    }
    Ok(Plan { devices })
}

/// A MIG device's SMs as a percentage of its GPU's, rounded, 1–100 (100 when the GPU's count
/// is unknown).
fn sm_share(sms: u32, gpu_sms: u32) -> u32 {
    if gpu_sms == 0 {
        return 100;
    }
    ((u64::from(sms) * 100 + u64::from(gpu_sms) / 2) / u64::from(gpu_sms)).clamp(1, 100) as u32
}

/// Memory × scaling, in whole bytes.
fn scaled(memory: u64, scaling: f64) -> u64 {
    (memory as f64 * scaling) as u64
}

fn invalid(key: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), value: value.to_string(), reason: reason.into() }
}

/// `gpu[i]` for the table that applies to this GPU, or `defaults`.
fn override_key(config: &Config, gpu: &GpuInfo) -> String {
    config
        .gpus
        .iter()
        .position(|o| o.matches(gpu.index, &gpu.uuid))
        .map_or_else(|| "defaults".to_owned(), |i| format!("gpu[{i}]"))
}

fn check_overrides_match(config: &Config, gpus: &[GpuInfo]) -> Result<(), ConfigError> {
    let describe = || {
        let list: Vec<String> = gpus.iter().map(|g| format!("{}={}", g.index, g.uuid)).collect();
        if list.is_empty() { "this node has no GPU".to_owned() } else { format!("this node has {}", list.join(", ")) }
    };
    for (i, o) in config.gpus.iter().enumerate() {
        let matching: Vec<&GpuInfo> = gpus.iter().filter(|g| o.matches(g.index, &g.uuid)).collect();
        if matching.is_empty() {
            let (key, value) = key_value(o);
            let reason = match (o.index, &o.uuid) {
                (Some(_), Some(_)) => format!("no GPU has both this index and this uuid ({})", describe()),
                _ => format!("matches no GPU ({})", describe()),
            };
            return Err(invalid(format!("gpu[{i}].{key}"), value, reason));
        }
        for g in matching {
            if let Some(j) = config.gpus[..i].iter().position(|p| p.matches(g.index, &g.uuid)) {
                let (key, value) = key_value(o);
                return Err(invalid(
                    format!("gpu[{i}].{key}"),
                    value,
                    format!("GPU {} ({}) is already overridden by gpu[{j}]", g.index, g.uuid),
                ));
            }
        }
    }
    Ok(())
}

fn key_value(o: &GpuOverride) -> (&'static str, String) {
    match (&o.uuid, o.index) {
        (Some(u), _) => ("uuid", format!("\"{u}\"")),
        (None, Some(i)) => ("index", i.to_string()),
        (None, None) => ("index", String::new()),
    }
}
