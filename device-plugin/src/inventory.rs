//! What the plugin advertises: the devices of the spec `gpuslice-cdi generate` wrote, each
//! under its resource, with its GPU and its health.
//!
//! One [`Scanner::scan`] reads the spec (`<spec_dir>/gpuslice.yaml`: device names), each
//! device's limits file (`<state_dir>/slices/<name>/limits`: GPU, size, mode) and, for a
//! slice, whether its region is a device the hook accepts; and asks NVML and the dev root
//! whether the device's GPU is still there. A device is Unhealthy while its GPU is gone or its
//! host state would stop a container at the hook; it is Healthy again as soon as a scan finds
//! them sound. Damaged region contents are not Unhealthy: the hook repairs them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use gpuslice_core::cdi::{self, Spec};
use gpuslice_core::config::{Config, KubernetesConfig, Mode, ResourceNaming};
use gpuslice_core::limits::{self, Limits};
use gpuslice_core::region::{self, Region};
use gpuslice_core::units::ByteSize;
use nvml_wrapper::Nvml;

/// The device name every gpuslice spec has besides its slices; never advertised.
const ALL_DEVICE: &str = "all";

/// One advertised device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// The CDI device name, which is also the device plugin ID.
    pub id: String,
    /// The GPU it is on, when its limits could be read.
    pub gpu: Option<GpuRef>,
    /// Why it is Unhealthy; `None` when Healthy.
    pub problem: Option<String>,
}

impl DeviceState {
    pub fn healthy(&self) -> bool {
        self.problem.is_none()
    }
}

/// A GPU as the limits file names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuRef {
    pub index: u32,
    pub uuid: String,
}

/// The node as one scan saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The spec's CDI kind (`gpuslice.dev/vgpu`), the first half of each CDI name.
    pub kind: String,
    /// Devices by resource name, each list in the spec's order.
    pub resources: BTreeMap<String, Vec<DeviceState>>,
}

impl Snapshot {
    /// The devices of one resource (none when it is not advertised).
    pub fn devices(&self, resource: &str) -> &[DeviceState] {
        self.resources.get(resource).map_or(&[], Vec::as_slice)
    }
}

/// The resource a device is advertised under: whole GPUs (`gpu<N>`, mode `none`) under
/// `gpu_resource`; slices under `resource`, or with `resources = "by-size"` under
/// `resource-<size>` ([`size_suffix`]).
pub fn resource_for(k8s: &KubernetesConfig, limits: &Limits) -> String {
    match (limits.mode, k8s.resources) {
        (Mode::None, _) => k8s.gpu_resource.clone(),
        // A MIG device is a slice of a fixed size, an mps slice a slice: advertised as slices.
        (Mode::Shim | Mode::Mig | Mode::Mps, ResourceNaming::Single) => k8s.resource.clone(),
        (Mode::Shim | Mode::Mig | Mode::Mps, ResourceNaming::BySize) => {
            format!("{}-{}", k8s.resource, size_suffix(limits.memory_bytes))
        }
    }
}

/// A slice size in a resource name: whole GiB as `<N>g` (`20g`), anything else in MiB
/// (`27306m`), rounded down.
pub fn size_suffix(bytes: u64) -> String {
    if bytes >= ByteSize::GIB && bytes.is_multiple_of(ByteSize::GIB) {
        format!("{}g", bytes / ByteSize::GIB)
    } else {
        format!("{}m", bytes / ByteSize::MIB)
    }
}

/// The name part of a resource (`vgpu-20g` of `gpuslice.dev/vgpu-20g`), which names its socket.
pub fn resource_short_name(resource: &str) -> &str {
    resource.rsplit_once('/').map_or(resource, |(_, name)| name)
}

/// Whether a GPU is there: NVML answers for it and its device node exists.
pub trait GpuProbe: Send {
    /// `None` when the GPU is there; otherwise why not.
    fn missing(&mut self, uuid: &str) -> Option<String>;
}

/// The real probe: NVML (loaded again after a failure) and `/dev/nvidia<minor>` under the
/// dev root.
pub struct NvmlProbe {
    lib: Option<PathBuf>,
    dev_root: PathBuf,
    nvml: Option<Nvml>,
    load_error: Option<String>,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe").field("lib", &self.lib).field("dev_root", &self.dev_root).finish()
    }
}

impl NvmlProbe {
    pub fn new(lib: Option<PathBuf>, dev_root: PathBuf) -> Self {
        Self { lib, dev_root, nvml: None, load_error: None }
    }

    fn nvml(&mut self) -> Result<&Nvml, String> {
        if self.nvml.is_none() {
            match gpuslice_cdi::discover::load(self.lib.as_deref()) {
                Ok(nvml) => {
                    if self.load_error.take().is_some() {
                        tracing::info!("NVML loaded");
                    }
                    self.nvml = Some(nvml);
                }
                Err(e) => {
                    let e = e.to_string();
                    if self.load_error.as_ref() != Some(&e) {
                        tracing::warn!(%e, "NVML unavailable; every device is Unhealthy until it loads");
                    }
                    self.load_error = Some(e.clone());
                    return Err(e);
                }
            }
        }
        self.nvml.as_ref().ok_or_else(String::new)
    }
}

impl GpuProbe for NvmlProbe {
    fn missing(&mut self, uuid: &str) -> Option<String> {
        let dev_root = self.dev_root.clone();
        let nvml = match self.nvml() {
            Ok(nvml) => nvml,
            Err(e) => return Some(format!("NVML: {e}")),
        };
        let minor = match nvml.device_by_uuid(uuid).and_then(|d| d.minor_number()) {
            Ok(minor) => minor,
            Err(e) => return Some(format!("GPU {uuid} not found by NVML: {e}")),
        };
        match gpuslice_cdi::discover::find_node(&dev_root, &format!("nvidia{minor}")) {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!("GPU {uuid} has no device node /dev/nvidia{minor}")),
            Err(e) => Some(format!("GPU {uuid}: {e}")),
        }
    }
}

/// Scans the node again and again, remembering what it needs between scans.
pub struct Scanner {
    config: Config,
    probe: Box<dyn GpuProbe>,
    /// The resource each device was last seen under: a device whose limits cannot be read
    /// stays under it (Unhealthy) rather than vanish.
    last_resource: HashMap<String, String>,
    /// The last spec problem logged, so it is logged once.
    spec_problem: Option<String>,
    /// Devices whose region was last seen with damaged contents (logged once).
    damaged: HashSet<String>,
    /// Devices left out for want of a resource (logged once).
    unplaced: HashSet<String>,
    plain_regions: bool,
    last: Snapshot,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner").field("last", &self.last).finish_non_exhaustive()
    }
}

impl Scanner {
    pub fn new(config: Config, probe: Box<dyn GpuProbe>) -> Self {
        Self {
            config,
            probe,
            last_resource: HashMap::new(),
            spec_problem: None,
            damaged: HashSet::new(),
            unplaced: HashSet::new(),
            plain_regions: false,
            last: Snapshot::default(),
        }
    }

    pub fn spec_path(&self) -> PathBuf {
        self.config.spec_dir.join(cdi::SPEC_FILE)
    }

    /// Reads the node. A spec that is missing means no devices (yet); one that cannot be
    /// parsed keeps the previous scan's devices, all Unhealthy.
    pub fn scan(&mut self) -> Snapshot {
        let path = self.spec_path();
        let spec = match read_spec(&path) {
            Ok(spec) => {
                if self.spec_problem.take().is_some() {
                    tracing::info!(?path, "spec readable again");
                }
                spec
            }
            Err(problem) => {
                if self.spec_problem.as_ref() != Some(&problem) {
                    tracing::warn!(?path, %problem, "cannot use the CDI spec");
                }
                self.spec_problem = Some(problem.clone());
                let mut last = self.last.clone();
                if !matches!(std::fs::exists(&path), Ok(false)) {
                    for d in last.resources.values_mut().flatten() {
                        d.problem = Some(format!("spec {}: {problem}", path.display()));
                    }
                } else {
                    last.resources.clear();
                }
                self.last = last.clone();
                return last;
            }
        };
        let mut snapshot = Snapshot { kind: spec.kind.clone(), resources: BTreeMap::new() };
        let mut gpu_cache: HashMap<String, Option<String>> = HashMap::new();
        for device in spec.devices.iter().filter(|d| d.name != ALL_DEVICE) {
            let id = device.name.clone();
            let (resource, gpu, problem) = match self.device(&id) {
                Ok((limits, state_problem)) => {
                    let resource = resource_for(&self.config.kubernetes, &limits);
                    let gpu = GpuRef { index: limits.gpu_index, uuid: limits.gpu_uuid.clone() };
                    let gpu_problem =
                        gpu_cache.entry(gpu.uuid.clone()).or_insert_with(|| self.probe.missing(&gpu.uuid)).clone();
                    (resource, Some(gpu), state_problem.or(gpu_problem))
                }
                Err(problem) => {
                    let Some(resource) = self.fallback_resource(&id) else {
                        if self.unplaced.insert(id.clone()) {
                            tracing::warn!(device = %id, %problem, "not advertised until its limits can be read");
                        }
                        continue;
                    };
                    (resource, None, Some(problem))
                }
            };
            self.unplaced.remove(&id);
            self.last_resource.insert(id.clone(), resource.clone());
            snapshot.resources.entry(resource).or_default().push(DeviceState { id, gpu, problem });
        }
        self.last_resource.retain(|id, _| spec.devices.iter().any(|d| &d.name == id));
        for (resource, devices) in &snapshot.resources {
            for d in devices {
                // A new device is logged only when Unhealthy; the summary below names it.
                let before = self.last.devices(resource).iter().find(|b| b.id == d.id).map(|b| &b.problem);
                if before.unwrap_or(&None) != &d.problem {
                    match &d.problem {
                        Some(problem) => tracing::warn!(device = %d.id, %resource, %problem, "Unhealthy"),
                        None => tracing::info!(device = %d.id, %resource, "Healthy"),
                    }
                }
            }
        }
        let ids = |s: &Snapshot| -> Vec<(String, Vec<String>)> {
            s.resources.iter().map(|(r, ds)| (r.clone(), ds.iter().map(|d| d.id.clone()).collect())).collect()
        };
        if ids(&snapshot) != ids(&self.last) {
            let summary: Vec<String> =
                ids(&snapshot).iter().map(|(r, ids)| format!("{r}: {}", ids.join(" "))).collect();
            tracing::info!(spec = ?path, "devices: {}", if summary.is_empty() { "none".to_owned() } else { summary.join("; ") });
        }
        self.last = snapshot.clone();
        snapshot
    }

    /// The device's limits, and why its host state is unusable if it is.
    fn device(&mut self, id: &str) -> Result<(Limits, Option<String>), String> {
        let state_dir = &self.config.state_dir;
        let limits = Limits::load(&limits::limits_path(state_dir, id)).map_err(|e| format!("limits: {e}"))?;
        if limits.slice != id {
            return Err(format!("limits: names slice {:?}, not {id:?}", limits.slice));
        }
        // Only a software slice has a region (modes none, mig and mps have none to check).
        if limits.mode != Mode::Shim {
            return Ok((limits, None));
        }
        Ok((limits, self.region_problem(id)))
    }

    /// Why the slice's region would stop a container, as the hook sees it: missing, not a
    /// block device (the hook refuses anything else), or not mappable (wrong size). Damaged
    /// contents are not a problem: the hook repairs them in place at the next container start,
    /// and a container can write its region, so counting them would let a tenant take its
    /// slice out of service for every tenant after it. They are logged, once.
    fn region_problem(&mut self, id: &str) -> Option<String> {
        let path = region::region_path(&self.config.state_dir, id);
        let advice = "; run gpuslice-cdi generate";
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_block_device() || (self.plain_regions && m.is_file()) => {}
            Ok(_) => return Some(format!("region {}: not a device{advice}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(format!("region {}: missing{advice}", path.display()));
            }
            Err(e) => return Some(format!("region {}: {e}", path.display())),
        }
        let region = match Region::open_mappable(&path) {
            Ok(region) => region,
            Err(e) => return Some(format!("region: {e}{advice}")),
        };
        match region.check_header() {
            Ok(()) => {
                self.damaged.remove(id);
            }
            Err(e) => {
                if self.damaged.insert(id.to_owned()) {
                    tracing::warn!(device = %id, %e, "region damaged; the hook repairs it at the next container start");
                }
            }
        }
        None
    }

    /// Accepts regions that are plain files, as [`Region::create`] makes them (tests); on a
    /// node they are block devices, and the hook refuses anything else.
    pub fn with_plain_regions(mut self) -> Self {
        self.plain_regions = true;
        self
    }

    /// Where a device whose limits cannot be read is listed: where it was, or for a whole GPU
    /// (`gpu<N>`, a name only gpuslice gives) and a single slice resource, where it must be.
    fn fallback_resource(&self, id: &str) -> Option<String> {
        if let Some(r) = self.last_resource.get(id) {
            return Some(r.clone());
        }
        let k8s = &self.config.kubernetes;
        let whole_gpu = id.strip_prefix("gpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match (whole_gpu, k8s.resources) {
            (true, _) => Some(k8s.gpu_resource.clone()),
            (false, ResourceNaming::Single) => Some(k8s.resource.clone()),
            (false, ResourceNaming::BySize) => None,
        }
    }
}

/// The spec at `path`; a missing one is an empty spec.
fn read_spec(path: &Path) -> Result<Spec, String> {
    let text = match gpuslice_core::fsutil::read_bounded(path, 64 << 20) {
        Ok(Some(text)) => text,
        Ok(None) => return Err("larger than 64 MiB".to_owned()),
        Err(e) => return Err(e.to_string()),
    };
    serde_yaml::from_str(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_core::config::{CoresPolicy, Priority};

    struct Probe(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    impl GpuProbe for Probe {
        fn missing(&mut self, uuid: &str) -> Option<String> {
            self.0.lock().unwrap().iter().any(|u| u == uuid).then(|| format!("{uuid} gone"))
        }
    }

    fn limits(slice: &str, gpu: u32, gib: u64, mode: Mode) -> Limits {
        Limits {
            slice: slice.into(),
            mode,
            gpu_uuid: format!("GPU-{gpu}"),
            gpu_index: gpu,
            memory_bytes: gib * ByteSize::GIB,
            cores_percent: 50,
            cores_policy: CoresPolicy::Cap,
            priority: Priority::Normal,
            generation: 1,
        }
    }

    /// A node with slice0 (GPU 0, 40 GiB), slice1 (GPU 0, 20 GiB) and gpu1 (whole), its spec and state.
    fn node(naming: ResourceNaming) -> (tempfile::TempDir, Scanner, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            Config { spec_dir: dir.path().join("cdi"), state_dir: dir.path().join("state"), ..Config::default() };
        config.kubernetes.resources = naming;
        for l in [
            limits("slice0", 0, 40, Mode::Shim),
            limits("slice1", 0, 20, Mode::Shim),
            limits("gpu1", 1, 80, Mode::None),
        ] {
            l.store(&config.state_dir).unwrap();
            if l.mode == Mode::Shim {
                Region::create(&region::region_path(&config.state_dir, &l.slice)).unwrap();
            }
        }
        let device = |name: &str| cdi::Device {
            name: name.into(),
            annotations: Default::default(),
            container_edits: Default::default(),
        };
        let spec = Spec {
            cdi_version: "0.5.0".into(),
            kind: "gpuslice.dev/vgpu".into(),
            annotations: Default::default(),
            devices: vec![device("slice0"), device("slice1"), device("gpu1"), device(ALL_DEVICE)],
            container_edits: Default::default(),
        };
        std::fs::create_dir_all(&config.spec_dir).unwrap();
        std::fs::write(config.spec_dir.join(cdi::SPEC_FILE), serde_yaml::to_string(&spec).unwrap()).unwrap();
        let gone = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (dir, Scanner::new(config, Box::new(Probe(gone.clone()))).with_plain_regions(), gone)
    }

    fn view(s: &Snapshot) -> Vec<(String, String, bool)> {
        s.resources.iter().flat_map(|(r, ds)| ds.iter().map(move |d| (r.clone(), d.id.clone(), d.healthy()))).collect()
    }

    fn v(rows: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
        rows.iter().map(|(r, id, h)| (r.to_string(), id.to_string(), *h)).collect()
    }

    #[test]
    fn resources_single_and_by_size_whole_gpus_apart() {
        let (_dir, mut scanner, _) = node(ResourceNaming::Single);
        let s = scanner.scan();
        assert_eq!(s.kind, "gpuslice.dev/vgpu");
        assert_eq!(
            view(&s),
            v(&[
                ("gpuslice.dev/gpu", "gpu1", true),
                ("gpuslice.dev/vgpu", "slice0", true),
                ("gpuslice.dev/vgpu", "slice1", true)
            ])
        );
        let (_dir, mut scanner, _) = node(ResourceNaming::BySize);
        assert_eq!(
            view(&scanner.scan()),
            v(&[
                ("gpuslice.dev/gpu", "gpu1", true),
                ("gpuslice.dev/vgpu-20g", "slice1", true),
                ("gpuslice.dev/vgpu-40g", "slice0", true)
            ])
        );
    }

    #[test]
    fn a_gone_gpu_and_unreadable_state_are_unhealthy_until_they_recover() {
        let (dir, mut scanner, gone) = node(ResourceNaming::BySize);
        scanner.scan();
        gone.lock().unwrap().push("GPU-0".into());
        let s = scanner.scan();
        let problem = |s: &Snapshot, r: &str| s.devices(r)[0].problem.clone();
        assert_eq!(problem(&s, "gpuslice.dev/vgpu-40g").as_deref(), Some("GPU-0 gone"));
        assert_eq!(problem(&s, "gpuslice.dev/gpu"), None);
        gone.lock().unwrap().clear();
        // A limits file that no longer parses: the slice stays under its resource, Unhealthy.
        let path = limits::limits_path(&dir.path().join("state"), "slice0");
        std::fs::write(&path, "garbage").unwrap();
        let s = scanner.scan();
        assert!(problem(&s, "gpuslice.dev/vgpu-40g").unwrap().starts_with("limits:"), "{s:?}");
        limits("slice0", 0, 40, Mode::Shim).store(&dir.path().join("state")).unwrap();
        assert_eq!(problem(&scanner.scan(), "gpuslice.dev/vgpu-40g"), None);
        // Damaged contents: the hook repairs them, so the slice stays Healthy.
        let region = region::region_path(&dir.path().join("state"), "slice1");
        let good = std::fs::read(&region).unwrap();
        std::fs::write(&region, vec![0u8; good.len()]).unwrap();
        assert_eq!(problem(&scanner.scan(), "gpuslice.dev/vgpu-20g"), None);
        // A region of the wrong size cannot be mapped (the hook refuses it), nor a missing one.
        std::fs::write(&region, &good[..good.len() / 2]).unwrap();
        assert!(problem(&scanner.scan(), "gpuslice.dev/vgpu-20g").unwrap().starts_with("region:"));
        std::fs::remove_file(&region).unwrap();
        assert!(
            problem(&scanner.scan(), "gpuslice.dev/vgpu-20g").unwrap().contains("missing; run gpuslice-cdi generate")
        );
        std::fs::write(&region, good).unwrap();
        assert_eq!(problem(&scanner.scan(), "gpuslice.dev/vgpu-20g"), None);
    }

    #[test]
    fn an_unparsable_spec_keeps_the_devices_unhealthy_and_a_missing_one_has_none() {
        let (dir, mut scanner, _) = node(ResourceNaming::Single);
        let good = scanner.scan();
        let spec = dir.path().join("cdi").join(cdi::SPEC_FILE);
        std::fs::write(&spec, "devices: [").unwrap();
        let s = scanner.scan();
        assert_eq!(view(&s).len(), view(&good).len());
        assert!(s.resources.values().flatten().all(|d| d.problem.as_deref().is_some_and(|p| p.contains("spec"))));
        std::fs::remove_file(&spec).unwrap();
        assert!(scanner.scan().resources.is_empty());
    }

    #[test]
    fn a_slice_never_readable_under_by_size_is_left_out() {
        let (dir, mut scanner, _) = node(ResourceNaming::BySize);
        std::fs::write(limits::limits_path(&dir.path().join("state"), "slice1"), "garbage").unwrap();
        let ids: Vec<String> = scanner.scan().resources.values().flatten().map(|d| d.id.clone()).collect();
        assert_eq!(ids, ["gpu1", "slice0"]);
    }

    /// A MIG device and an mps slice have no region (the hardware or the MPS daemon holds
    /// their limits): both are advertised as slices, Healthy, beside the shim slices.
    #[test]
    fn mig_devices_and_mps_slices_are_advertised_as_slices_without_a_region() {
        for (naming, want) in [
            (
                ResourceNaming::Single,
                v(&[
                    ("gpuslice.dev/gpu", "gpu1", true),
                    ("gpuslice.dev/vgpu", "slice0", true),
                    ("gpuslice.dev/vgpu", "slice1", true),
                    ("gpuslice.dev/vgpu", "mig2-9", true),
                    ("gpuslice.dev/vgpu", "mps3", true),
                ]),
            ),
            (
                ResourceNaming::BySize,
                v(&[
                    ("gpuslice.dev/gpu", "gpu1", true),
                    ("gpuslice.dev/vgpu-10g", "mig2-9", true),
                    ("gpuslice.dev/vgpu-20g", "slice1", true),
                    ("gpuslice.dev/vgpu-20g", "mps3", true),
                    ("gpuslice.dev/vgpu-40g", "slice0", true),
                ]),
            ),
        ] {
            let (dir, mut scanner, _) = node(naming);
            let state = dir.path().join("state");
            limits("mig2-9", 2, 10, Mode::Mig).store(&state).unwrap();
            limits("mps3", 3, 20, Mode::Mps).store(&state).unwrap();
            let spec_path = dir.path().join("cdi").join(cdi::SPEC_FILE);
            let mut spec: Spec = serde_yaml::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
            for name in ["mig2-9", "mps3"] {
                spec.devices.push(cdi::Device {
                    name: name.into(),
                    annotations: Default::default(),
                    container_edits: Default::default(),
                });
            }
            std::fs::write(&spec_path, serde_yaml::to_string(&spec).unwrap()).unwrap();
            let s = scanner.scan();
            assert!(!region::region_path(&state, "mps3").exists());
            assert_eq!(view(&s), want, "{s:?}");
        }
    }

    #[test]
    fn sizes_are_whole_gib_or_mib() {
        assert_eq!(size_suffix(20 * ByteSize::GIB), "20g");
        assert_eq!(size_suffix(27306 * ByteSize::MIB), "27306m");
        assert_eq!(size_suffix(512 * ByteSize::MIB), "512m");
        assert_eq!(resource_short_name("gpuslice.dev/vgpu-20g"), "vgpu-20g");
    }
}
