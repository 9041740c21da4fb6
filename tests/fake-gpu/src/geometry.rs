//! Creating and destroying MIG instances in the simulator: the GPU instance profiles of an
//! 80 GB H100, and each GPU's geometry persisted in the state directory so that every later
//! process (a following `gpuslice-cdi generate`) sees the instances one process created.
//!
//! A GPU with `mig_mode = true` starts with the `[[gpu.mig]]` instances of its config. The first
//! create or destroy (`nvmlDeviceCreateGpuInstanceWithPlacement`, [`crate::nvml`]) writes
//! `gpu<index>.mig-geometry` in the state directory, which from then on replaces the config's
//! list: a line per GPU instance, `<id> <profile> <start> <ci id or -> <MIG UUID or ->`. Changes
//! are read, made and written under an exclusive lock on the file's `.lock` beside it, so two
//! processes never lose each other's. The MIG device handles of a process are those of the
//! geometry when it initialised NVML (as a real process keeps its handles); instances created
//! later are seen by the next process.
//!
//! GPU instance IDs follow the placement as on an H100 (`nvidia-smi mig -lgi`): 7g is 0, 4g 1,
//! 3g 1 or 2, 2g and 1g.20gb 3 to 6, 1g 7 to 13; the default compute instance is 0. The
//! driver's `mig-minors` lists minors for every possible ID
//! ([`gpuslice_core::mig::driver_mig_minors`]), so new instances need no new minors.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use gpuslice_cuda_abi::nvml::{
    NVML_ERROR_IN_USE, NVML_ERROR_INSUFFICIENT_RESOURCES, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_FOUND,
    NVML_ERROR_UNKNOWN, nvmlReturn_t,
};

use crate::config::{GpuConfig, MigInstanceConfig};
use crate::state::StateError;

/// A GPU instance profile: what `nvmlDeviceGetGpuInstanceProfileInfo` answers for
/// `index` (an `NVML_GPU_INSTANCE_PROFILE_*` value).
#[derive(Debug, PartialEq, Eq)]
pub struct Profile {
    pub index: u32,
    /// The driver's profile ID, what creation takes (`nvidia-smi mig -lgip`'s `ID`).
    pub id: u32,
    pub name: &'static str,
    /// Compute slices.
    pub slices: u32,
    pub memory_mib: u64,
    pub sm_count: u32,
    /// Possible placements' starts, in memory slices, each `size` long.
    pub starts: &'static [u32],
    pub size: u32,
    /// The `NVML_COMPUTE_INSTANCE_PROFILE_*` of the default (whole) compute instance.
    pub ci_profile: u32,
}

/// An 80 GB H100's GPU instance profiles (without the media-engine variants).
pub const H100_PROFILES: &[Profile] = &[
    Profile {
        index: 0,
        id: 19,
        name: "1g.10gb",
        slices: 1,
        memory_mib: 9856,
        sm_count: 16,
        starts: &[0, 1, 2, 3, 4, 5, 6],
        size: 1,
        ci_profile: 0,
    },
    Profile {
        index: 1,
        id: 14,
        name: "2g.20gb",
        slices: 2,
        memory_mib: 19968,
        sm_count: 32,
        starts: &[0, 2, 4],
        size: 2,
        ci_profile: 1,
    },
    Profile {
        index: 2,
        id: 9,
        name: "3g.40gb",
        slices: 3,
        memory_mib: 40192,
        sm_count: 60,
        starts: &[0, 4],
        size: 4,
        ci_profile: 2,
    },
    Profile {
        index: 3,
        id: 5,
        name: "4g.40gb",
        slices: 4,
        memory_mib: 40192,
        sm_count: 64,
        starts: &[0],
        size: 4,
        ci_profile: 3,
    },
    Profile {
        index: 4,
        id: 0,
        name: "7g.80gb",
        slices: 7,
        memory_mib: 81920,
        sm_count: 132,
        starts: &[0],
        size: 8,
        ci_profile: 4,
    },
    Profile {
        index: 9,
        id: 15,
        name: "1g.20gb",
        slices: 1,
        memory_mib: 19968,
        sm_count: 26,
        starts: &[0, 2, 4, 6],
        size: 2,
        ci_profile: 0,
    },
];

/// The profile `nvmlDeviceGetGpuInstanceProfileInfo` answers for `index`.
pub fn profile_by_index(index: u32) -> Option<&'static Profile> {
    H100_PROFILES.iter().find(|p| p.index == index)
}

/// The profile with driver ID `id`.
pub fn profile_by_id(id: u32) -> Option<&'static Profile> {
    H100_PROFILES.iter().find(|p| p.id == id)
}

impl Profile {
    /// The GPU instance ID an instance placed at `start` gets.
    fn instance_id(&self, start: u32) -> u32 {
        match self.slices {
            7 => 0,
            4 => 1,
            3 => 1 + u32::from(start == 4),
            2 => 3 + start / 2,
            _ if self.size == 2 => 3 + start / 2,
            _ => 7 + start,
        }
    }

    fn mask(&self, start: u32) -> u32 {
        ((1u32 << self.size) - 1) << start
    }
}

/// One GPU instance, and its compute instance when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInstance {
    pub id: u32,
    pub profile: &'static Profile,
    /// First memory slice; `None` for a config instance of a profile the table lacks.
    pub start: Option<u32>,
    /// `(compute instance ID, MIG UUID)`.
    pub compute: Option<(u32, String)>,
}

/// A GPU's MIG instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Geometry {
    /// Counts creations, for fresh UUIDs.
    pub next: u32,
    pub instances: Vec<GpuInstance>,
}

/// Result with an NVML return code.
pub type Answer<T = ()> = Result<T, nvmlReturn_t>;

/// `<state_dir>/gpu<index>.mig-geometry`.
pub fn path(state_dir: &Path, index: u32) -> PathBuf {
    state_dir.join(format!("gpu{index}.mig-geometry"))
}

impl Geometry {
    /// The config's `[[gpu.mig]]` instances, each placed at the first free placement of its
    /// profile (by name, else by slice count).
    pub fn from_config(gpu: &GpuConfig) -> Self {
        let mut g = Geometry::default();
        let mut used = 0u32;
        for (position, m) in gpu.mig.iter().enumerate() {
            let slices = m.slices().map_or(1, |s| s.0);
            let profile = H100_PROFILES
                .iter()
                .find(|p| p.name == m.profile)
                .or_else(|| H100_PROFILES.iter().find(|p| p.slices == slices))
                .unwrap_or(&H100_PROFILES[0]);
            let start = profile.starts.iter().copied().find(|&s| used & profile.mask(s) == 0);
            if let Some(s) = start {
                used |= profile.mask(s);
            }
            g.instances.push(GpuInstance {
                id: m.gpu_instance_id(position),
                profile,
                start,
                compute: Some((m.compute_instance_id, m.uuid.clone())),
            });
        }
        g
    }

    /// The persisted geometry of GPU `index`, if one was written.
    pub fn read(state_dir: &Path, index: u32) -> Result<Option<Self>, StateError> {
        let path = path(state_dir, index);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { op: "reading", path, source }),
        };
        Self::parse(&text).map(Some).ok_or(StateError::Corrupt { path, reason: "not a MIG geometry".into() })
    }

    fn parse(text: &str) -> Option<Self> {
        let mut g = Geometry::default();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["next", n] => g.next = n.parse().ok()?,
                [id, profile, start, ci, uuid] => {
                    let compute = match (*ci, *uuid) {
                        ("-", "-") => None,
                        (ci, uuid) => Some((ci.parse().ok()?, uuid.to_owned())),
                    };
                    g.instances.push(GpuInstance {
                        id: id.parse().ok()?,
                        profile: profile_by_index(profile.parse().ok()?)?,
                        start: if *start == "-" { None } else { Some(start.parse().ok()?) },
                        compute,
                    });
                }
                _ => return None,
            }
        }
        Some(g)
    }

    fn render(&self) -> String {
        let mut text = format!("# fakegpu MIG geometry: id profile start ci uuid\nnext {}\n", self.next);
        for i in &self.instances {
            let start = i.start.map_or("-".to_owned(), |s| s.to_string());
            let (ci, uuid) = i.compute.as_ref().map_or(("-".to_owned(), "-"), |(c, u)| (c.to_string(), u.as_str()));
            text.push_str(&format!("{} {} {start} {ci} {uuid}\n", i.id, i.profile.index));
        }
        text
    }

    /// The MIG devices (GPU instances with a compute instance), by GPU instance ID, as
    /// `[[gpu.mig]]` tables.
    pub fn migs(&self) -> Vec<MigInstanceConfig> {
        let mut out: Vec<MigInstanceConfig> = self
            .instances
            .iter()
            .filter_map(|i| {
                let (ci, uuid) = i.compute.clone()?;
                Some(MigInstanceConfig {
                    uuid,
                    profile: i.profile.name.to_owned(),
                    memory: gpuslice_core::units::ByteSize(i.profile.memory_mib << 20),
                    sm_count: i.profile.sm_count,
                    gpu_instance_id: Some(i.id),
                    compute_instance_id: ci,
                })
            })
            .collect();
        out.sort_by_key(|m| m.gpu_instance_id);
        out
    }

    fn used(&self) -> u32 {
        self.instances.iter().filter_map(|i| i.start.map(|s| i.profile.mask(s))).fold(0, |a, b| a | b)
    }

    /// Creates a GPU instance of `profile` at `start`: `INVALID_ARGUMENT` for a placement the
    /// profile does not have, `INSUFFICIENT_RESOURCES` when it overlaps an instance.
    pub fn create(&mut self, profile: &'static Profile, start: u32) -> Answer<u32> {
        if !profile.starts.contains(&start) {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let id = profile.instance_id(start);
        if self.used() & profile.mask(start) != 0 || self.instances.iter().any(|i| i.id == id) {
            return Err(NVML_ERROR_INSUFFICIENT_RESOURCES);
        }
        self.instances.push(GpuInstance { id, profile, start: Some(start), compute: None });
        Ok(id)
    }

    /// Destroys GPU instance `id`; `IN_USE` while it has a compute instance.
    pub fn destroy(&mut self, id: u32) -> Answer {
        let position = self.instances.iter().position(|i| i.id == id).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        if self.instances[position].compute.is_some() {
            return Err(NVML_ERROR_IN_USE);
        }
        self.instances.remove(position);
        Ok(())
    }

    /// Creates GPU instance `gi`'s default compute instance (ID 0), with a fresh UUID.
    pub fn create_compute(&mut self, gi: u32, gpu_index: u32) -> Answer<u32> {
        let next = self.next;
        let instance = self.instances.iter_mut().find(|i| i.id == gi).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        if instance.compute.is_some() {
            return Err(NVML_ERROR_INSUFFICIENT_RESOURCES);
        }
        let uuid = format!(
            "MIG-{gpu_index:08x}-{gi:04x}-0000-{:04x}-{:012x}",
            next & 0xffff,
            0x5ea1_0000_0000u64 + u64::from(next)
        );
        instance.compute = Some((0, uuid));
        self.next = next.wrapping_add(1);
        Ok(0)
    }

    /// Destroys GPU instance `gi`'s compute instance `ci`.
    pub fn destroy_compute(&mut self, gi: u32, ci: u32) -> Answer {
        let instance = self.instances.iter_mut().find(|i| i.id == gi).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        match &instance.compute {
            Some((c, _)) if *c == ci => {
                instance.compute = None;
                Ok(())
            }
            _ => Err(NVML_ERROR_NOT_FOUND),
        }
    }
}

/// GPU `index`'s geometry now: the persisted one, else the config's.
pub fn current(state_dir: &Path, index: u32, gpu: &GpuConfig) -> Answer<Geometry> {
    match Geometry::read(state_dir, index) {
        Ok(Some(g)) => Ok(g),
        Ok(None) => Ok(Geometry::from_config(gpu)),
        Err(_) => Err(NVML_ERROR_UNKNOWN),
    }
}

/// Runs `change` on GPU `index`'s geometry under the lock and writes the result when it
/// succeeds (atomically: a temporary file renamed over the old).
pub fn update<T>(
    state_dir: &Path,
    index: u32,
    gpu: &GpuConfig,
    change: impl FnOnce(&mut Geometry) -> Answer<T>,
) -> Answer<T> {
    let path = path(state_dir, index);
    let lock_path = path.with_extension("mig-geometry.lock");
    let lock: File =
        OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|_| NVML_ERROR_UNKNOWN)?;
    // SAFETY: a valid open descriptor; the lock is released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(NVML_ERROR_UNKNOWN);
    }
    let mut g = current(state_dir, index, gpu)?;
    let answer = change(&mut g)?;
    let tmp = path.with_extension(format!("mig-geometry.{}", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(g.render().as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return Err(NVML_ERROR_UNKNOWN);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> &'static Profile {
        H100_PROFILES.iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn ids_follow_placements_and_overlaps_are_refused() {
        let mut g = Geometry::default();
        assert_eq!(g.create(p("3g.40gb"), 4), Ok(2));
        assert_eq!(g.create(p("2g.20gb"), 0), Ok(3));
        assert_eq!(g.create(p("1g.10gb"), 2), Ok(9));
        assert_eq!(g.create(p("1g.10gb"), 4), Err(NVML_ERROR_INSUFFICIENT_RESOURCES));
        assert_eq!(g.create(p("1g.10gb"), 7), Err(NVML_ERROR_INVALID_ARGUMENT));
        assert_eq!(g.create_compute(2, 0), Ok(0));
        assert_eq!(g.destroy(2), Err(NVML_ERROR_IN_USE));
        assert_eq!(g.migs().len(), 1);
        let back = Geometry::parse(&g.render()).unwrap();
        assert_eq!(back, g);
        assert_eq!(g.destroy_compute(2, 0), Ok(()));
        assert_eq!(g.destroy(2), Ok(()));
        assert_eq!(g.create(p("4g.40gb"), 0), Err(NVML_ERROR_INSUFFICIENT_RESOURCES));
    }

    #[test]
    fn profile_names_are_what_discovery_derives() {
        for p in H100_PROFILES {
            let name = gpuslice_core::mig::profile_name(p.slices, p.slices, p.memory_mib << 20);
            assert_eq!(name, p.name);
        }
    }
}
