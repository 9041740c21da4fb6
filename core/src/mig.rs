//! MIG instances: what a GPU in mode `mig` publishes, and the capability device nodes a
//! container needs to open one.
//!
//! A GPU with MIG mode on is split by the driver into GPU instances (memory, L2, copy engines)
//! and, inside each, compute instances (SMs). gpuslice creates none of them (`nvidia-smi mig`
//! or `gpuslice-cdi mig apply` does); `generate` reads the ones that exist through NVML and
//! publishes one CDI device per MIG device (a compute instance of a GPU instance), named
//! [`device_name`]. The hardware enforces an instance's memory and SMs, so a MIG device has no
//! interception library and no region: the hook only injects the driver.
//!
//! To use an instance a process opens its parent's `/dev/nvidia<minor>` and two capability
//! nodes, `/dev/nvidia-caps/nvidia-cap<N>`: one granting access to the GPU instance, one to the
//! compute instance. Their minors are listed by the driver in
//! `/proc/driver/nvidia-caps/mig-minors` ([`MIG_MINORS_PATH`]), a line per capability:
//!
//! ```text
//! config 1
//! monitor 2
//! gpu0/gi0/access 3
//! gpu0/gi0/ci0/access 4
//! …
//! gpu0/gi1/access 12
//! gpu0/gi1/ci0/access 13
//! ```
//!
//! where `gpu<N>` is the GPU's device minor (the `N` of `/dev/nvidiaN`), not its NVML index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The driver's list of MIG capability minors, relative to the driver root.
pub const MIG_MINORS_PATH: &str = "proc/driver/nvidia-caps/mig-minors";
/// Where the capability nodes are, relative to the dev root (and inside a container).
pub const CAPS_DEV_DIR: &str = "dev/nvidia-caps";
/// Largest `mig-minors` file read: the driver lists 32 GPUs × 8 GPU instances × 9 lines.
pub const MAX_MIG_MINORS_LEN: u64 = 1 << 20;

/// One MIG device (a compute instance of a GPU instance) as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigInstance {
    /// `MIG-…`: what `CUDA_VISIBLE_DEVICES` selects it by.
    pub uuid: String,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
    /// Memory of the GPU instance, in bytes.
    pub memory_bytes: u64,
    /// SMs of the compute instance.
    pub sm_count: u32,
    /// The profile, e.g. `3g.40gb` (or `1c.3g.40gb` for a compute instance smaller than its
    /// GPU instance), derived from the instance's slice counts and memory as `nvidia-smi`
    /// names profiles.
    pub profile: String,
    /// Minor of `/dev/nvidia-caps/nvidia-cap<N>` granting the GPU instance.
    pub gi_access_minor: u32,
    /// Minor of the node granting the compute instance.
    pub ci_access_minor: u32,
}

impl MigInstance {
    /// The two capability nodes, inside the container: GPU instance, then compute instance.
    pub fn caps_nodes(&self) -> [String; 2] {
        [caps_node(self.gi_access_minor), caps_node(self.ci_access_minor)]
    }
}

/// The MIG record's file name in a slice's directory (`<state_dir>/slices/<name>/mig`).
pub const RECORD_FILE: &str = "mig";

impl MigInstance {
    /// The record `generate` writes beside a MIG device's limits, for `status` and the metrics:
    /// `key=value` lines, host-written (the slice directory is read-only in containers).
    pub fn render(&self) -> String {
        format!(
            "# gpuslice MIG device; written by gpuslice-cdi, do not edit\nuuid={}\ngpu_instance_id={}\n\
             compute_instance_id={}\nmemory_bytes={}\nsm_count={}\nprofile={}\ngi_access_minor={}\nci_access_minor={}\n",
            self.uuid,
            self.gpu_instance_id,
            self.compute_instance_id,
            self.memory_bytes,
            self.sm_count,
            self.profile,
            self.gi_access_minor,
            self.ci_access_minor
        )
    }

    /// Reads a record; `None` for anything but a whole, well-formed one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut values = HashMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once('=')?;
            values.insert(k.trim(), v.trim());
        }
        let text_value = |k: &str| {
            values.get(k).filter(|v| v.len() <= 96 && v.bytes().all(|b| b.is_ascii_graphic())).map(|v| (*v).to_owned())
        };
        let number = |k: &str| values.get(k)?.parse::<u64>().ok();
        let small = |k: &str| number(k).and_then(|n| u32::try_from(n).ok());
        Some(MigInstance {
            uuid: text_value("uuid")?,
            gpu_instance_id: small("gpu_instance_id")?,
            compute_instance_id: small("compute_instance_id")?,
            memory_bytes: number("memory_bytes")?,
            sm_count: small("sm_count")?,
            profile: text_value("profile")?,
            gi_access_minor: small("gi_access_minor")?,
            ci_access_minor: small("ci_access_minor")?,
        })
    }

    /// Writes the record of device `name` under `state_dir`, atomically, mode 0644.
    pub fn store(&self, state_dir: &Path, name: &str) -> std::io::Result<()> {
        let dir = crate::limits::slice_dir(state_dir, name);
        crate::fsutil::create_dir_all_mode(&dir, 0o755)?;
        crate::fsutil::write_atomic(&dir.join(RECORD_FILE), self.render().as_bytes(), 0o644)
    }

    /// The record of device `name` under `state_dir`, if there is a readable one.
    pub fn load(state_dir: &Path, name: &str) -> Option<Self> {
        let path = crate::limits::slice_dir(state_dir, name).join(RECORD_FILE);
        Self::parse(&crate::fsutil::read_bounded(&path, 4096).ok()??)
    }
}

/// `/dev/nvidia-caps/nvidia-cap<minor>`.
pub fn caps_node(minor: u32) -> String {
    format!("/{CAPS_DEV_DIR}/nvidia-cap{minor}")
}

/// The CDI device name of GPU `gpu_index`'s GPU instance `gi` (compute instance `ci`):
/// `mig<gpu>-<gi>`, and `mig<gpu>-<gi>-<ci>` for a compute instance other than 0. Numbered by
/// the GPU's index and the driver's own instance IDs, so a name stays with its instance when
/// other instances are created or destroyed, and reads like `nvidia-smi mig -lgi`.
pub fn device_name(gpu_index: u32, gi: u32, ci: u32) -> String {
    if ci == 0 { format!("mig{gpu_index}-{gi}") } else { format!("mig{gpu_index}-{gi}-{ci}") }
}

/// A profile name as `nvidia-smi` prints it: GPU instance slices and memory in whole GB
/// (rounded up, as `1g.10gb` names 9.75 GiB), prefixed with the compute slices when the compute
/// instance is smaller than its GPU instance.
pub fn profile_name(gi_slices: u32, ci_slices: u32, memory_bytes: u64) -> String {
    let gb = memory_bytes.div_ceil(1 << 30);
    if ci_slices != 0 && ci_slices < gi_slices {
        format!("{ci_slices}c.{gi_slices}g.{gb}gb")
    } else {
        format!("{gi_slices}g.{gb}gb")
    }
}

/// Why `mig-minors` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigError {
    #[error("reading {path}: {reason}; is the NVIDIA driver loaded with MIG support?")]
    Read { path: PathBuf, reason: String },
    #[error("{path} line {line}: expected `<capability> <minor>`, found `{text}`")]
    Syntax { path: PathBuf, line: usize, text: String },
    #[error(
        "{path} lists no capability for GPU minor {gpu_minor} instance {what}; is the instance still there (nvidia-smi mig -lgi)?"
    )]
    Missing { path: PathBuf, gpu_minor: u32, what: String },
}

/// The driver's capability minors, by capability name (`gpu0/gi1/access`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigMinors {
    path: PathBuf,
    minors: HashMap<String, u32>,
}

impl MigMinors {
    /// Reads `<driver_root>/proc/driver/nvidia-caps/mig-minors`.
    pub fn load(driver_root: &Path) -> Result<Self, MigError> {
        let path = driver_root.join(MIG_MINORS_PATH);
        let text = crate::fsutil::read_bounded(&path, MAX_MIG_MINORS_LEN)
            .map_err(|e| MigError::Read { path: path.clone(), reason: e.to_string() })?
            .ok_or_else(|| MigError::Read { path: path.clone(), reason: "larger than 1 MiB".into() })?;
        Self::parse(&path, &text)
    }

    /// Parses the file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, MigError> {
        let mut minors = HashMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let bad = || MigError::Syntax { path: path.to_owned(), line: n + 1, text: line.chars().take(64).collect() };
            let mut words = line.split_whitespace();
            let (Some(name), Some(minor), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad());
            };
            let minor: u32 = minor.parse().map_err(|_| bad())?;
            if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_') {
                return Err(bad());
            }
            minors.insert(name.to_owned(), minor);
        }
        Ok(Self { path: path.to_owned(), minors })
    }

    /// The minors granting GPU minor `gpu_minor`'s GPU instance `gi` and its compute instance
    /// `ci`.
    pub fn access(&self, gpu_minor: u32, gi: u32, ci: u32) -> Result<(u32, u32), MigError> {
        let get = |name: String, what: String| {
            self.minors.get(&name).copied().ok_or_else(|| MigError::Missing {
                path: self.path.clone(),
                gpu_minor,
                what,
            })
        };
        let gi_minor = get(format!("gpu{gpu_minor}/gi{gi}/access"), format!("gi{gi}"))?;
        let ci_minor = get(format!("gpu{gpu_minor}/gi{gi}/ci{ci}/access"), format!("gi{gi}/ci{ci}"))?;
        Ok((gi_minor, ci_minor))
    }
}

/// The text the driver writes to `mig-minors` for `gpus` GPU minors: `config`, `monitor`, then
/// per GPU minor 15 GPU instance slots of an access line and 8 compute instance lines
/// (`gpu<g>/gi<i>/access` = 3 + 135·g + 9·i, its `ci<c>` one more + c). For simulated drivers.
pub fn driver_mig_minors(gpus: u32) -> String {
    let mut text = String::from("config 1\nmonitor 2\n");
    for g in 0..gpus {
        for i in 0..15u32 {
            let base = 3 + 135 * g + 9 * i;
            text.push_str(&format!("gpu{g}/gi{i}/access {base}\n"));
            for c in 0..8u32 {
                text.push_str(&format!("gpu{g}/gi{i}/ci{c}/access {}\n", base + 1 + c));
            }
        }
    }
    text
}

/// Most GPU instances one GPU has (an A100's or H100's seven 1g instances).
pub const MAX_GPU_INSTANCES: usize = 7;

/// `(slices, GB)` of a GPU instance profile name as `nvidia-smi mig -lgip` prints it
/// (`3g.40gb` is (3, 40)); `None` for anything else.
pub fn parse_gpu_instance_profile(name: &str) -> Option<(u32, u32)> {
    let (g, m) = name.split_once('.')?;
    let slices = g.strip_suffix('g')?;
    let gb = m.strip_suffix("gb")?;
    let digits = |t: &str| !t.is_empty() && t.len() <= 4 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(slices) || !digits(gb) {
        return None;
    }
    let (slices, gb) = (slices.parse().ok()?, gb.parse().ok()?);
    ((1..=8).contains(&slices) && gb > 0).then_some((slices, gb))
}

/// Checks a `mig_layout` without the GPU: 1 to [`MAX_GPU_INSTANCES`] well-formed profile
/// names. Whether the GPU has each profile, and room for all of them, is known only to its
/// driver (`gpuslice-cdi mig apply`). The error is `(key suffix, value, reason)`.
pub fn check_layout(layout: &[String]) -> Result<(), (String, String, String)> {
    if layout.is_empty() || layout.len() > MAX_GPU_INSTANCES {
        return Err((
            String::new(),
            format!("[{} instances]", layout.len()),
            format!("must list 1 to {MAX_GPU_INSTANCES} GPU instance profiles, e.g. [\"3g.40gb\", \"1g.10gb\"]"),
        ));
    }
    for (j, name) in layout.iter().enumerate() {
        if parse_gpu_instance_profile(name).is_none() {
            let shown: String = name.chars().take(32).collect();
            return Err((
                format!("[{j}]"),
                format!("{shown:?}"),
                "is not a GPU instance profile as nvidia-smi mig -lgip prints it, e.g. \"3g.40gb\"".into(),
            ));
        }
    }
    Ok(())
}

/// A GPU instance profile a GPU offers, as its driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInstanceProfile {
    /// The profile's name, [`profile_name`] of its slices and memory.
    pub name: String,
    /// The driver's profile ID (`nvmlGpuInstanceProfileInfo_t.id`), what creation takes.
    pub id: u32,
    pub slices: u32,
    pub memory_bytes: u64,
    /// Where an instance of it may start, and how many memory slices it then takes.
    pub placements: Vec<(u32, u32)>,
}

/// Places `wanted` (indices into `profiles`) on an empty GPU: a placement for each, in the
/// same order, no two overlapping; `None` when they do not fit together. Largest first, then
/// the first placement that leaves the rest room (a search: at most 7 instances of at most 8
/// placements each).
pub fn place(profiles: &[GpuInstanceProfile], wanted: &[usize]) -> Option<Vec<(u32, u32)>> {
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(profiles[wanted[k]].slices));
    let mut chosen = vec![(0, 0); wanted.len()];
    fn search(
        profiles: &[GpuInstanceProfile],
        wanted: &[usize],
        order: &[usize],
        used: u64,
        chosen: &mut [(u32, u32)],
    ) -> bool {
        let Some((&k, rest)) = order.split_first() else { return true };
        for &(start, size) in &profiles[wanted[k]].placements {
            if start >= 64 || size == 0 || size > 64 - start {
                continue;
            }
            let mask = (u64::MAX >> (64 - size)) << start;
            if used & mask == 0 {
                chosen[k] = (start, size);
                if search(profiles, wanted, rest, used | mask, chosen) {
                    return true;
                }
            }
        }
        false
    }
    search(profiles, wanted, &order, 0, &mut chosen).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\n\
                          gpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\ngpu1/gi2/access 156\ngpu1/gi2/ci0/access 157\n";

    #[test]
    fn reads_the_drivers_format() {
        let m = MigMinors::parse(Path::new("mig-minors"), SAMPLE).unwrap();
        assert_eq!(m.access(0, 1, 0), Ok((12, 13)));
        assert_eq!(m.access(1, 2, 0), Ok((156, 157)));
        let err = m.access(0, 5, 0).unwrap_err().to_string();
        assert!(err.contains("GPU minor 0 instance gi5"), "{err}");
    }

    #[test]
    fn the_simulated_file_matches_the_drivers_numbering() {
        let m = MigMinors::parse(Path::new("x"), &driver_mig_minors(2)).unwrap();
        assert_eq!(m.access(0, 0, 0), Ok((3, 4)));
        assert_eq!(m.access(0, 1, 0), Ok((12, 13)));
        assert_eq!(m.access(1, 2, 0), Ok((156, 157)));
        assert_eq!(m.access(0, 14, 7), Ok((129, 137)));
    }

    #[test]
    fn bad_input_is_one_line_naming_the_line() {
        for (text, line) in [
            ("config 1\ngpu0/gi1/access\n", 2),
            ("gpu0/gi1/access twelve\n", 1),
            ("gpu0/gi1/access 12 13\n", 1),
            ("gpu0/../../access 12\n", 1),
            ("monitor -2\n", 1),
        ] {
            let err = MigMinors::parse(Path::new("/d/mig-minors"), text).unwrap_err();
            assert!(matches!(err, MigError::Syntax { line: l, .. } if l == line), "{text:?}: {err}");
            let msg = err.to_string();
            assert!(!msg.contains('\n') && msg.contains("/d/mig-minors"), "{msg}");
        }
    }

    #[test]
    fn a_missing_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = MigMinors::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("mig-minors") && err.contains("MIG support"), "{err}");
    }

    #[test]
    fn the_record_round_trips_and_refuses_junk() {
        let m = MigInstance {
            uuid: "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            gpu_instance_id: 1,
            compute_instance_id: 0,
            memory_bytes: 40 << 30,
            sm_count: 60,
            profile: "3g.40gb".into(),
            gi_access_minor: 12,
            ci_access_minor: 13,
        };
        let dir = tempfile::tempdir().unwrap();
        m.store(dir.path(), "mig0-1").unwrap();
        assert_eq!(MigInstance::load(dir.path(), "mig0-1"), Some(m.clone()));
        assert_eq!(MigInstance::parse(&m.render().replace("sm_count=60", "sm_count=x")), None);
        assert_eq!(MigInstance::parse(&m.render().replace("profile=3g.40gb", "profile=a b")), None);
        assert_eq!(MigInstance::parse("garbage"), None);
        assert_eq!(MigInstance::load(dir.path(), "mig0-2"), None);
    }

    #[test]
    fn layouts_are_checked_without_the_gpu() {
        let layout = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(check_layout(&layout(&["3g.40gb", "2g.20gb", "1g.10gb"])), Ok(()));
        assert_eq!(parse_gpu_instance_profile("7g.80gb"), Some((7, 80)));
        for bad in ["3g40gb", "1c.3g.40gb", "3g.40GB", "g.40gb", "3g.gb", "9g.90gb", "0g.1gb", "3g.0gb", "-1g.10gb"] {
            let (key, value, reason) = check_layout(&layout(&["1g.10gb", bad])).unwrap_err();
            assert_eq!(key, "[1]", "{bad}");
            assert!(value.contains(bad) && reason.contains("nvidia-smi mig -lgip"), "{bad}: {reason}");
        }
        assert!(check_layout(&[]).unwrap_err().2.contains("1 to 7"));
        assert!(check_layout(&layout(&["1g.10gb"; 8])).is_err());
    }

    fn h100() -> Vec<GpuInstanceProfile> {
        let p = |name: &str, slices, placements: &[(u32, u32)]| GpuInstanceProfile {
            name: name.into(),
            id: slices,
            slices,
            memory_bytes: 0,
            placements: placements.to_vec(),
        };
        vec![
            p("1g.10gb", 1, &[(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]),
            p("2g.20gb", 2, &[(0, 2), (2, 2), (4, 2)]),
            p("3g.40gb", 3, &[(4, 4), (0, 4)]),
            p("7g.80gb", 7, &[(0, 8)]),
        ]
    }

    #[test]
    fn placement_searches_past_a_greedy_dead_end() {
        // 3g first at 4..8 leaves 0..4 for 2g and two 1g.
        assert_eq!(place(&h100(), &[0, 1, 2, 0]), Some(vec![(2, 1), (0, 2), (4, 4), (3, 1)]));
        assert_eq!(place(&h100(), &[2, 2]), Some(vec![(4, 4), (0, 4)]));
        assert_eq!(place(&h100(), &[2, 2, 0]), None, "two 3g take all 8 memory slices");
        assert_eq!(place(&h100(), &[3, 0]), None);
        assert_eq!(place(&h100(), &[0; 7]).map(|p| p.len()), Some(7));
    }

    #[test]
    fn names_and_profiles() {
        assert_eq!(device_name(0, 1, 0), "mig0-1");
        assert_eq!(device_name(2, 13, 1), "mig2-13-1");
        assert_eq!(profile_name(3, 3, 40_192 << 20), "3g.40gb");
        assert_eq!(profile_name(1, 1, 9_856 << 20), "1g.10gb");
        assert_eq!(profile_name(3, 1, 40_192 << 20), "1c.3g.40gb");
        assert_eq!(profile_name(7, 7, 80 << 30), "7g.80gb");
    }
}
