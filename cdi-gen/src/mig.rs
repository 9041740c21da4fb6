//! `gpuslice-cdi mig apply`: makes each `[[gpu]] mig_layout` the GPU's MIG geometry, so a node
//! goes from config to MIG slices with `mig apply` then `generate`.
//!
//! For each GPU whose `[[gpu]]` table has a `mig_layout` (mode `mig`), through NVML:
//! 1. MIG mode must be on: it is never toggled here (that needs the GPU idle, often a reset).
//! 2. The GPU's GPU instance profiles (`nvmlDeviceGetGpuInstanceProfileInfo` for each
//!    `NVML_GPU_INSTANCE_PROFILE_*`, named as discovery names them,
//!    [`gpuslice_core::mig::profile_name`]) and their placements
//!    (`nvmlDeviceGetGpuInstancePossiblePlacements_v2`): a name the GPU lacks is one line
//!    listing its profiles; a layout that does not fit is one line.
//! 3. The MIG devices that exist: the same profiles, each a whole (default) compute instance:
//!    nothing to do. Otherwise, when no process runs on any instance, every compute and GPU
//!    instance is destroyed (by ID, `nvmlDeviceGetGpuInstanceById`, so instances without a
//!    compute instance go too) and the layout created: each GPU instance at its placement
//!    (`nvmlDeviceCreateGpuInstanceWithPlacement`), then its default compute instance (the
//!    compute profile with all its slices, `nvmlGpuInstanceCreateComputeInstance`).
//!
//! Every GPU is checked before any is changed. nvml-wrapper wraps none of these calls; they
//! are made through its loaded library (`Nvml::lib`), as discovery does for instance IDs.
//! `apply` does not write the spec: it says to run `generate`, which publishes what exists.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use gpuslice_core::mig::{GpuInstanceProfile, place, profile_name};
use nvml_wrapper::Device;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, NVML_COMPUTE_INSTANCE_PROFILE_COUNT, NVML_GPU_INSTANCE_PROFILE_COUNT,
    nvmlComputeInstance_t, nvmlComputeInstanceProfileInfo_t, nvmlGpuInstance_t, nvmlGpuInstancePlacement_t,
    nvmlGpuInstanceProfileInfo_t,
};

use crate::Sources;
use crate::discover;

/// Largest GPU instance ID the driver hands out (an H100's are 0 to 14).
const MAX_GPU_INSTANCE_ID: u32 = 15;
/// Largest compute instance ID within a GPU instance.
const MAX_COMPUTE_INSTANCE_ID: u32 = 8;

/// What `apply` did (or, with `dry_run`, would do): one line per GPU, then what to do next.
pub fn apply(sources: &Sources, dry_run: bool) -> Result<Vec<String>> {
    let config = crate::load_config(&sources.config_path)?;
    if config.gpus.iter().all(|g| g.mig_layout.is_none()) {
        bail!(
            "{}: no [[gpu]] table has a mig_layout; nothing to apply (see docs/mig.md)",
            sources.config_path.display()
        );
    }
    let nvml = discover::load(sources.nvml_lib.as_deref())?;
    let gpus = discover::gpus(&nvml)?;
    // Every table with a layout must name a GPU of this node.
    for (i, o) in config.gpus.iter().enumerate() {
        if o.mig_layout.is_some() && !gpus.iter().any(|g| o.matches(g.index, &g.uuid)) {
            bail!("gpu[{i}].mig_layout: the table names no GPU of this node (nvidia-smi -L lists them)");
        }
    }
    let mut steps = Vec::new();
    for gpu in &gpus {
        let Some((i, layout)) = config.gpus.iter().enumerate().find_map(|(i, o)| {
            o.matches(gpu.index, &gpu.uuid).then_some(())?;
            o.mig_layout.as_ref().map(|l| (i, l))
        }) else {
            continue;
        };
        let key = format!("gpu[{i}].mig_layout");
        let at = format!("GPU {} ({})", gpu.index, gpu.uuid);
        if !gpu.mig_enabled {
            bail!(
                "{key}: {at} has MIG mode off; gpuslice never toggles it: nvidia-smi -i {} -mig 1 turns it on (the GPU must be idle; some need a reset), then run mig apply again",
                gpu.index
            );
        }
        let device = nvml.device_by_index(gpu.index).with_context(|| format!("{key}: handle of {at}"))?;
        let profiles = gpu_instance_profiles(&device).with_context(|| format!("{key}: MIG profiles of {at}"))?;
        let mut wanted = Vec::with_capacity(layout.len());
        for (j, name) in layout.iter().enumerate() {
            let Some(k) = profiles.iter().position(|p| &p.name == name) else {
                let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
                bail!("{key}[{j}] = {name:?}: {at} has no such GPU instance profile; it has {}", names.join(", "));
            };
            wanted.push(k);
        }
        let Some(placements) = place(&profiles, &wanted) else {
            bail!("{key} = [{}]: these GPU instances do not fit together on {at}", layout.join(", "));
        };
        let mut have: Vec<&str> = gpu.mig.iter().map(|m| m.profile.as_str()).collect();
        let mut want: Vec<&str> = layout.iter().map(String::as_str).collect();
        have.sort_unstable();
        want.sort_unstable();
        let whole = gpu.mig.iter().all(|m| m.compute_instance_id == 0);
        let existing = existing_instances(&device).with_context(|| format!("{key}: GPU instances of {at}"))?;
        if have == want && whole && existing.len() == gpu.mig.len() {
            steps.push(Step {
                line: format!("GPU {}: already has the layout [{}]; nothing to do", gpu.index, layout.join(", ")),
                work: None,
            });
            continue;
        }
        let busy: BTreeMap<u32, Vec<u32>> = device
            .running_compute_processes()
            .with_context(|| format!("{key}: processes of {at}"))?
            .into_iter()
            .filter_map(|p| Some((p.gpu_instance_id?, p.pid)))
            .fold(BTreeMap::new(), |mut m, (gi, pid)| {
                m.entry(gi).or_insert_with(Vec::new).push(pid);
                m
            });
        if let Some((gi, pids)) = busy.iter().next() {
            let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
            bail!(
                "{key}: {at}'s GPU instance {gi} has processes ({}); stop them first: mig apply never destroys an instance in use",
                pids.join(", ")
            );
        }
        let mut line = format!("GPU {}: ", gpu.index);
        if !existing.is_empty() {
            let mut old: Vec<&str> = gpu.mig.iter().map(|m| m.profile.as_str()).collect();
            if old.is_empty() {
                old.push("no MIG device");
            }
            line += &format!(
                "{} its {} GPU instances ({}), which differ from the layout; ",
                if dry_run { "would destroy" } else { "destroying" },
                existing.len(),
                old.join(", ")
            );
        }
        line += &format!("{} [{}]", if dry_run { "would create" } else { "creating" }, layout.join(", "));
        let create: Vec<(GpuInstanceProfile, (u32, u32))> =
            wanted.iter().zip(&placements).map(|(&k, &p)| (profiles[k].clone(), p)).collect();
        steps.push(Step { line, work: Some((gpu.index, existing, create)) });
    }
    let mut lines = Vec::new();
    let mut changed = false;
    for step in steps {
        lines.push(step.line);
        let Some((index, existing, create)) = step.work else { continue };
        if dry_run {
            continue;
        }
        let device = nvml.device_by_index(index).with_context(|| format!("handle of GPU {index}"))?;
        destroy(&device, &existing).with_context(|| format!("GPU {index}: destroying its MIG instances"))?;
        changed = true;
        for (profile, placement) in &create {
            let gi = create_instance(&device, profile, *placement).with_context(|| {
                format!("GPU {index}: creating a {} GPU instance at memory slice {}", profile.name, placement.0)
            })?;
            lines.push(format!("GPU {index}: created {} as GPU instance {gi}", profile.name));
        }
    }
    if changed {
        lines.push("run gpuslice-cdi generate to publish the new MIG devices".into());
    }
    Ok(lines)
}

/// One GPU's part: its line, and what to destroy (GPU instance and compute instance IDs) and
/// create, if anything.
type Work = (u32, Vec<(u32, Vec<u32>)>, Vec<(GpuInstanceProfile, (u32, u32))>);

struct Step {
    line: String,
    work: Option<Work>,
}

/// The GPU instance profiles a GPU offers, by name (the first of each name: the
/// media-engine variants share their plain profile's slices and memory).
fn gpu_instance_profiles(device: &Device<'_>) -> Result<Vec<GpuInstanceProfile>, NvmlError> {
    let lib = device.nvml().lib();
    let info_sym = nvml_sym(lib.nvmlDeviceGetGpuInstanceProfileInfo.as_ref())?;
    let placements_sym = nvml_sym(lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2.as_ref())?;
    let mut out: Vec<GpuInstanceProfile> = Vec::new();
    for index in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
        // SAFETY: a plain C struct of integers; all zeros is a valid value.
        let mut info: nvmlGpuInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is a live GPU handle of this NVML (the Device borrows it), and
        // `info` is valid for the call to write.
        match nvml_try(unsafe { info_sym(device.handle(), index, &mut info) }) {
            Ok(()) => {}
            Err(NvmlError::NotSupported | NvmlError::InvalidArg | NvmlError::NotFound) => continue,
            Err(e) => return Err(e),
        }
        let memory_bytes = info.memorySizeMB.saturating_mul(1 << 20);
        let name = profile_name(info.sliceCount, info.sliceCount, memory_bytes);
        if out.iter().any(|p| p.name == name) {
            continue;
        }
        let mut count = 0;
        // SAFETY: as above; a null buffer asks for the count.
        nvml_try(unsafe { placements_sym(device.handle(), info.id, std::ptr::null_mut(), &mut count) })?;
        let mut buffer = vec![nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count.min(64) as usize];
        count = buffer.len() as u32;
        // SAFETY: as above; `buffer` holds `count` placements.
        nvml_try(unsafe { placements_sym(device.handle(), info.id, buffer.as_mut_ptr(), &mut count) })?;
        buffer.truncate(count as usize);
        out.push(GpuInstanceProfile {
            name,
            id: info.id,
            slices: info.sliceCount,
            memory_bytes,
            placements: buffer.iter().map(|p| (p.start, p.size)).collect(),
        });
    }
    Ok(out)
}

/// Every GPU instance (by ID) with its compute instances' IDs.
fn existing_instances(device: &Device<'_>) -> Result<Vec<(u32, Vec<u32>)>, NvmlError> {
    let lib = device.nvml().lib();
    let gi_sym = nvml_sym(lib.nvmlDeviceGetGpuInstanceById.as_ref())?;
    let ci_sym = nvml_sym(lib.nvmlGpuInstanceGetComputeInstanceById.as_ref())?;
    let mut out = Vec::new();
    for id in 0..MAX_GPU_INSTANCE_ID {
        let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
        // SAFETY: a live GPU handle of this NVML; `gi` is valid for the call to write.
        match nvml_try(unsafe { gi_sym(device.handle(), id, &mut gi) }) {
            Ok(()) => {}
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
            Err(e) => return Err(e),
        }
        let mut cis = Vec::new();
        for ci_id in 0..MAX_COMPUTE_INSTANCE_ID {
            let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
            // SAFETY: `gi` is the driver's handle just returned; `ci` is valid for the write.
            match nvml_try(unsafe { ci_sym(gi, ci_id, &mut ci) }) {
                Ok(()) => cis.push(ci_id),
                Err(NvmlError::NotFound | NvmlError::InvalidArg) => {}
                Err(e) => return Err(e),
            }
        }
        out.push((id, cis));
    }
    Ok(out)
}

/// Destroys the given compute instances, then their GPU instances.
fn destroy(device: &Device<'_>, existing: &[(u32, Vec<u32>)]) -> Result<(), NvmlError> {
    let lib = device.nvml().lib();
    let gi_sym = nvml_sym(lib.nvmlDeviceGetGpuInstanceById.as_ref())?;
    let ci_sym = nvml_sym(lib.nvmlGpuInstanceGetComputeInstanceById.as_ref())?;
    let ci_destroy = nvml_sym(lib.nvmlComputeInstanceDestroy.as_ref())?;
    let gi_destroy = nvml_sym(lib.nvmlGpuInstanceDestroy.as_ref())?;
    for (id, cis) in existing {
        let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
        // SAFETY: a live GPU handle; `gi` is valid for the write.
        nvml_try(unsafe { gi_sym(device.handle(), *id, &mut gi) })?;
        for ci_id in cis {
            let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
            // SAFETY: `gi` is the driver's handle; `ci` is valid for the write.
            nvml_try(unsafe { ci_sym(gi, *ci_id, &mut ci) })?;
            // SAFETY: `ci` is the driver's handle, destroyed once.
            nvml_try(unsafe { ci_destroy(ci) })?;
        }
        // SAFETY: `gi` is the driver's handle, destroyed once, after its compute instances.
        nvml_try(unsafe { gi_destroy(gi) })?;
    }
    Ok(())
}

/// Creates a GPU instance of `profile` at `placement` and its default compute instance (the
/// compute profile with all the GPU instance's slices); the GPU instance's ID.
fn create_instance(device: &Device<'_>, profile: &GpuInstanceProfile, placement: (u32, u32)) -> Result<u32, NvmlError> {
    let lib = device.nvml().lib();
    let create_gi = nvml_sym(lib.nvmlDeviceCreateGpuInstanceWithPlacement.as_ref())?;
    let gi_info = nvml_sym(lib.nvmlGpuInstanceGetInfo.as_ref())?;
    let ci_profile = nvml_sym(lib.nvmlGpuInstanceGetComputeInstanceProfileInfo.as_ref())?;
    let create_ci = nvml_sym(lib.nvmlGpuInstanceCreateComputeInstance.as_ref())?;
    let at = nvmlGpuInstancePlacement_t { start: placement.0, size: placement.1 };
    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: a live GPU handle; `at` is readable and `gi` writable for the call.
    nvml_try(unsafe { create_gi(device.handle(), profile.id, &at, &mut gi) })?;
    // SAFETY: a plain C struct of integers and a pointer; all zeros is a valid value.
    let mut info = unsafe { std::mem::zeroed() };
    // SAFETY: `gi` is the driver's handle just created; `info` is valid for the write.
    nvml_try(unsafe { gi_info(gi, &mut info) })?;
    let mut chosen = None;
    for index in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        // SAFETY: a plain C struct of integers; all zeros is a valid value.
        let mut ci: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `gi` is the driver's handle; `ci` is valid for the write.
        match nvml_try(unsafe { ci_profile(gi, index, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &mut ci) }) {
            Ok(()) if ci.sliceCount == profile.slices => {
                chosen = Some(ci.id);
                break;
            }
            Ok(()) | Err(NvmlError::NotSupported | NvmlError::InvalidArg | NvmlError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let ci_id = chosen.ok_or(NvmlError::NotSupported)?;
    let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
    // SAFETY: `gi` is the driver's handle; `ci` is valid for the write.
    nvml_try(unsafe { create_ci(gi, ci_id, &mut ci) })?;
    Ok(info.id)
}
