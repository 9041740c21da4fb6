//! NVML's GPU and compute instance calls: the profiles of an 80 GB H100, creation and
//! destruction on the persisted geometry ([`crate::geometry`]). A GPU or compute instance
//! handle encodes the GPU's index and the instance IDs under a tag; it is decoded, checked
//! against the geometry, and never dereferenced.

use std::ffi::c_uint;

use gpuslice_cuda_abi::nvml::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, NVML_ERROR_IN_USE, nvmlComputeInstance_t,
    nvmlComputeInstanceProfileInfo_t, nvmlDevice_t, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t,
    nvmlGpuInstancePlacement_t, nvmlGpuInstanceProfileInfo_t, nvmlReturn_t,
};

use super::{INVALID_ARGUMENT, NOT_FOUND, NOT_SUPPORTED, NvmlResult, boundary, device, handle_of, initialized, put};
use crate::config::GpuConfig;
use crate::geometry::{self, Geometry, Profile};

const GI_TAG: usize = 0x6766_0000_0000_0000;
const CI_TAG: usize = 0x6366_0000_0000_0000;

fn gi_handle(gpu: u32, gi: u32) -> nvmlGpuInstance_t {
    std::ptr::without_provenance_mut(GI_TAG | (gpu as usize) << 8 | gi as usize)
}

fn ci_handle(gpu: u32, gi: u32, ci: u32) -> nvmlComputeInstance_t {
    std::ptr::without_provenance_mut(CI_TAG | (gpu as usize) << 16 | (gi as usize) << 8 | ci as usize)
}

/// A GPU with MIG mode on: its index and config; else `NOT_SUPPORTED`.
fn mig_gpu(handle: nvmlDevice_t) -> NvmlResult<(u32, &'static GpuConfig)> {
    let (state, gpu) = device(handle)?;
    if gpu.mig_mode != Some(true) {
        return Err(NOT_SUPPORTED);
    }
    Ok((state.index(), gpu))
}

/// `(GPU index, its config, GPU instance ID)` of a GPU instance handle.
fn gi_of(handle: nvmlGpuInstance_t) -> NvmlResult<(u32, &'static GpuConfig, u32)> {
    let raw = handle.addr();
    if raw & !0xffff != GI_TAG {
        return Err(INVALID_ARGUMENT);
    }
    let (index, gi) = ((raw >> 8 & 0xff) as u32, (raw & 0xff) as u32);
    let sim = initialized()?;
    let gpu = sim.config().gpu.get(index as usize).ok_or(INVALID_ARGUMENT)?;
    let g = geometry::current(sim.state_dir(), index, gpu)?;
    g.instances.iter().find(|i| i.id == gi).ok_or(INVALID_ARGUMENT)?;
    Ok((index, gpu, gi))
}

fn change<T>(index: u32, gpu: &GpuConfig, f: impl FnOnce(&mut Geometry) -> NvmlResult<T>) -> NvmlResult<T> {
    geometry::update(initialized()?.state_dir(), index, gpu, f)
}

fn profile_info(p: &Profile) -> nvmlGpuInstanceProfileInfo_t {
    nvmlGpuInstanceProfileInfo_t {
        id: p.id,
        isP2pSupported: 0,
        sliceCount: p.slices,
        instanceCount: p.starts.len() as c_uint,
        multiprocessorCount: p.sm_count,
        copyEngineCount: p.slices,
        decoderCount: p.slices / 2,
        encoderCount: 0,
        jpegCount: p.slices / 2,
        ofaCount: u32::from(p.slices == 7),
        memorySizeMB: p.memory_mib,
    }
}

exports! {
    /// A GPU instance profile (`NVML_GPU_INSTANCE_PROFILE_*`) of an 80 GB H100; one it lacks:
    /// `NVML_ERROR_NOT_SUPPORTED`, as the driver answers.
    fn nvmlDeviceGetGpuInstanceProfileInfo(device: nvmlDevice_t, profile: c_uint, info: *mut nvmlGpuInstanceProfileInfo_t) {
        mig_gpu(device)?;
        let p = geometry::profile_by_index(profile).ok_or(NOT_SUPPORTED)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(info, profile_info(p)) }
    }

    /// Every placement of profile ID `profile_id`, free or not; a null `placements` asks for
    /// the count.
    fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(device: nvmlDevice_t, profile_id: c_uint, placements: *mut nvmlGpuInstancePlacement_t, count: *mut c_uint) {
        mig_gpu(device)?;
        let p = geometry::profile_by_id(profile_id).ok_or(INVALID_ARGUMENT)?;
        if count.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let n = p.starts.len();
        if placements.is_null() {
            // SAFETY: non-null, writable per the export's contract.
            return unsafe { put(count, n as c_uint) };
        }
        // SAFETY: non-null, readable and writable per the export's contract.
        let room = unsafe { count.read() } as usize;
        // SAFETY: as above.
        unsafe { count.write(n as c_uint) };
        if room < n {
            return Err(super::INSUFFICIENT_SIZE);
        }
        for (i, &start) in p.starts.iter().enumerate() {
            // SAFETY: the buffer holds `room` ≥ n placements per the export's contract.
            unsafe { placements.add(i).write(nvmlGpuInstancePlacement_t { start, size: p.size }) };
        }
        Ok(())
    }

    /// Creates a GPU instance of profile ID `profile_id` at `placement`.
    fn nvmlDeviceCreateGpuInstanceWithPlacement(device: nvmlDevice_t, profile_id: c_uint, placement: *const nvmlGpuInstancePlacement_t, gpu_instance: *mut nvmlGpuInstance_t) {
        let (index, gpu) = mig_gpu(device)?;
        let p = geometry::profile_by_id(profile_id).ok_or(INVALID_ARGUMENT)?;
        if placement.is_null() || gpu_instance.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-null, readable per the export's contract.
        let at = unsafe { placement.read() };
        if at.size != p.size {
            return Err(INVALID_ARGUMENT);
        }
        let id = change(index, gpu, |g| g.create(p, at.start))?;
        // SAFETY: non-null, writable per the export's contract.
        unsafe { put(gpu_instance, gi_handle(index, id)) }
    }

    fn nvmlDeviceGetGpuInstanceById(device: nvmlDevice_t, id: c_uint, gpu_instance: *mut nvmlGpuInstance_t) {
        let (index, gpu) = mig_gpu(device)?;
        let g = geometry::current(initialized()?.state_dir(), index, gpu)?;
        g.instances.iter().find(|i| i.id == id).ok_or(NOT_FOUND)?;
        // SAFETY: null or writable per the export's contract.
        unsafe { put(gpu_instance, gi_handle(index, id)) }
    }

    fn nvmlGpuInstanceGetInfo(gpu_instance: nvmlGpuInstance_t, info: *mut nvmlGpuInstanceInfo_t) {
        let (index, gpu, gi) = gi_of(gpu_instance)?;
        let g = geometry::current(initialized()?.state_dir(), index, gpu)?;
        let i = g.instances.iter().find(|i| i.id == gi).ok_or(INVALID_ARGUMENT)?;
        let parent = initialized()?.device(index).map(handle_of).ok_or(INVALID_ARGUMENT)?;
        let answer = nvmlGpuInstanceInfo_t {
            device: parent,
            id: gi,
            profileId: i.profile.id,
            placement: nvmlGpuInstancePlacement_t { start: i.start.unwrap_or(0), size: i.profile.size },
        };
        // SAFETY: null or writable per the export's contract.
        unsafe { put(info, answer) }
    }

    /// Destroys a GPU instance: `NVML_ERROR_IN_USE` while it has a compute instance or a
    /// process holds memory on its MIG device.
    fn nvmlGpuInstanceDestroy(gpu_instance: nvmlGpuInstance_t) {
        let (index, gpu, gi) = gi_of(gpu_instance)?;
        let sim = initialized()?;
        let busy = gpu.mig.iter().enumerate().zip(sim.migs(index)).any(|((j, m), state)| {
            m.gpu_instance_id(j) == gi && !state.processes().is_empty()
        });
        if busy {
            return Err(NVML_ERROR_IN_USE);
        }
        change(index, gpu, |g| g.destroy(gi))
    }

    /// The compute instance profile `profile` of a GPU instance: only the whole one (the
    /// default compute instance's) is offered.
    fn nvmlGpuInstanceGetComputeInstanceProfileInfo(gpu_instance: nvmlGpuInstance_t, profile: c_uint, eng_profile: c_uint, info: *mut nvmlComputeInstanceProfileInfo_t) {
        let (index, gpu, gi) = gi_of(gpu_instance)?;
        if eng_profile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED {
            return Err(INVALID_ARGUMENT);
        }
        let g = geometry::current(initialized()?.state_dir(), index, gpu)?;
        let p = g.instances.iter().find(|i| i.id == gi).ok_or(INVALID_ARGUMENT)?.profile;
        if profile != p.ci_profile {
            return Err(NOT_SUPPORTED);
        }
        let answer = nvmlComputeInstanceProfileInfo_t {
            id: p.ci_profile,
            sliceCount: p.slices,
            instanceCount: 1,
            multiprocessorCount: p.sm_count,
            sharedCopyEngineCount: p.slices,
            sharedDecoderCount: p.slices / 2,
            sharedEncoderCount: 0,
            sharedJpegCount: p.slices / 2,
            sharedOfaCount: u32::from(p.slices == 7),
        };
        // SAFETY: null or writable per the export's contract.
        unsafe { put(info, answer) }
    }

    /// Creates the GPU instance's compute instance of profile ID `profile_id` (the whole one).
    fn nvmlGpuInstanceCreateComputeInstance(gpu_instance: nvmlGpuInstance_t, profile_id: c_uint, compute_instance: *mut nvmlComputeInstance_t) {
        let (index, gpu, gi) = gi_of(gpu_instance)?;
        if compute_instance.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let ci = change(index, gpu, |g| {
            let p = g.instances.iter().find(|i| i.id == gi).ok_or(INVALID_ARGUMENT)?.profile;
            if profile_id != p.ci_profile {
                return Err(NOT_SUPPORTED);
            }
            g.create_compute(gi, index)
        })?;
        // SAFETY: non-null, writable per the export's contract.
        unsafe { put(compute_instance, ci_handle(index, gi, ci)) }
    }

    fn nvmlGpuInstanceGetComputeInstanceById(gpu_instance: nvmlGpuInstance_t, id: c_uint, compute_instance: *mut nvmlComputeInstance_t) {
        let (index, gpu, gi) = gi_of(gpu_instance)?;
        let g = geometry::current(initialized()?.state_dir(), index, gpu)?;
        let i = g.instances.iter().find(|i| i.id == gi).ok_or(INVALID_ARGUMENT)?;
        if !matches!(&i.compute, Some((c, _)) if *c == id) {
            return Err(NOT_FOUND);
        }
        // SAFETY: null or writable per the export's contract.
        unsafe { put(compute_instance, ci_handle(index, gi, id)) }
    }

    fn nvmlComputeInstanceDestroy(compute_instance: nvmlComputeInstance_t) {
        let raw = compute_instance.addr();
        if raw & !0xff_ffff != CI_TAG {
            return Err(INVALID_ARGUMENT);
        }
        let (index, gi, ci) = ((raw >> 16 & 0xff) as u32, (raw >> 8 & 0xff) as u32, (raw & 0xff) as u32);
        let (_, gpu, _) = gi_of(gi_handle(index, gi))?;
        change(index, gpu, |g| g.destroy_compute(gi, ci))
    }
}
