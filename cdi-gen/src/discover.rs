//! What the node has: GPUs through NVML, device nodes under the dev root.

use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use gpuslice_core::mig::{MigInstance, MigMinors};
use gpuslice_core::plan::{GpuInfo, Plan};
use nvml_wrapper::bitmasks::InitFlags;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper::{Device, Nvml};

/// The library NVML is loaded from unless told otherwise.
pub const DEFAULT_NVML_LIB: &str = "libnvidia-ml.so.1";

/// Why the node could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "cannot load NVML from {lib}: {reason}; is the NVIDIA driver installed? (--nvml-lib or GPUSLICE_NVML_LIB selects another library)"
    )]
    Load { lib: String, reason: String },
    #[error(
        "NVML from {lib} could not initialise: {reason}; is the NVIDIA kernel module loaded? (nvidia-smi shows the same)"
    )]
    Init { lib: String, reason: String },
    #[error("NVML query {what} failed: {reason}")]
    Query { what: String, reason: String },
    #[error(
        "GPU {index} ({uuid}) has no device node {path}: is the nvidia module loaded and its nodes created (nvidia-modprobe), or is --dev-root wrong?"
    )]
    MissingNode { index: u32, uuid: String, path: PathBuf },
    #[error(
        "MIG device {uuid} of GPU {gpu} has no capability node {path}: create the nodes (nvidia-modprobe -f -F, or nvidia-ctk system create-dev-char-symlinks), or is --dev-root wrong?"
    )]
    MissingCapsNode { gpu: u32, uuid: String, path: PathBuf },
    #[error("{path} is not a character device")]
    NotCharDevice { path: PathBuf },
    #[error("reading {path}: {source}")]
    Stat { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Mig(#[from] gpuslice_core::mig::MigError),
}

/// The driver and its GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub driver_version: String,
    /// CUDA version the driver supports, as NVML encodes it (13000 = 13.0).
    pub cuda_version: i32,
    pub gpus: Vec<GpuInfo>,
}

impl NodeInfo {
    /// `13.0` for 13000.
    pub fn cuda_version_string(&self) -> String {
        format!("{}.{}", self.cuda_version / 1000, (self.cuda_version % 1000) / 10)
    }
}

/// Reads the driver and every GPU through NVML loaded from `lib`. MIG devices come without
/// their capability minors: [`mig_caps`] reads those.
pub fn discover(lib: Option<&Path>) -> Result<NodeInfo, DiscoverError> {
    let nvml = load(lib)?;
    let driver_version = nvml.sys_driver_version().map_err(query("driver version"))?;
    let cuda_version = nvml.sys_cuda_driver_version().map_err(query("CUDA version"))?;
    let gpus = gpus(&nvml)?;
    Ok(NodeInfo { driver_version, cuda_version, gpus })
}

/// Fills in the capability minors of the plan's MIG devices from
/// `<driver_root>/proc/driver/nvidia-caps/mig-minors` (not read when the plan has none).
pub fn mig_caps(plan: &mut Plan, gpus: &[GpuInfo], driver_root: &Path) -> Result<(), DiscoverError> {
    if plan.devices.iter().all(|d| d.mig.is_none()) {
        return Ok(());
    }
    let minors = MigMinors::load(driver_root)?;
    for d in &mut plan.devices {
        let (Some(m), Some(gpu)) = (&mut d.mig, gpus.iter().find(|g| g.index == d.gpu_index)) else { continue };
        (m.gi_access_minor, m.ci_access_minor) = minors.access(gpu.minor, m.gpu_instance_id, m.compute_instance_id)?;
    }
    Ok(())
}

/// The capability nodes of a MIG device, which must exist under `dev_root`.
pub fn mig_nodes(dev_root: &Path, gpu: u32, mig: &MigInstance) -> Result<Vec<NodeFile>, DiscoverError> {
    mig.caps_nodes()
        .iter()
        .map(|path| {
            let name = path.trim_start_matches("/dev/");
            find_node(dev_root, name)?.ok_or_else(|| DiscoverError::MissingCapsNode {
                gpu,
                uuid: mig.uuid.clone(),
                path: dev_root.join(path.trim_start_matches('/')),
            })
        })
        .collect()
}

/// NVML loaded from `lib` (default [`DEFAULT_NVML_LIB`]) and initialised; a node without GPUs
/// is not an error here.
pub fn load(lib: Option<&Path>) -> Result<Nvml, DiscoverError> {
    let lib_name = lib.map_or_else(|| DEFAULT_NVML_LIB.to_owned(), |p| p.display().to_string());
    let lib_os: &OsStr = lib.map_or(OsStr::new(DEFAULT_NVML_LIB), Path::as_os_str);
    // NO_GPUS: a node without GPUs is reported by us, clearly, not as an init failure.
    Nvml::builder().lib_path(lib_os).flags(InitFlags::NO_GPUS).init().map_err(|e| match e {
        nvml_wrapper::error::NvmlError::LibloadingError(err) => {
            DiscoverError::Load { lib: lib_name.clone(), reason: err.to_string() }
        }
        other => DiscoverError::Init { lib: lib_name.clone(), reason: other.to_string() },
    })
}

fn query(what: &str) -> impl Fn(nvml_wrapper::error::NvmlError) -> DiscoverError + use<> {
    let what = what.to_owned();
    move |e| DiscoverError::Query { what: what.clone(), reason: e.to_string() }
}

/// Every GPU NVML lists, in index order.
pub fn gpus(nvml: &Nvml) -> Result<Vec<GpuInfo>, DiscoverError> {
    let count = nvml.device_count().map_err(query("device count"))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let at = |what: &str| format!("{what} of GPU {index}");
        let d = nvml.device_by_index(index).map_err(query(&at("handle")))?;
        let mig_enabled = match d.mig_mode() {
            Ok(m) => m.current == 1,
            // GPUs without MIG support answer NotSupported.
            Err(nvml_wrapper::error::NvmlError::NotSupported) => false,
            Err(e) => return Err(query(&at("MIG mode"))(e)),
        };
        let sm_count = d.attributes().map_or(0, |a| a.multiprocessor_count);
        let mig = if mig_enabled { mig_devices(&d).map_err(query(&at("MIG devices")))? } else { Vec::new() };
        gpus.push(GpuInfo {
            index,
            uuid: d.uuid().map_err(query(&at("UUID")))?,
            name: d.name().map_err(query(&at("name")))?,
            memory_total: d.memory_info().map_err(query(&at("memory")))?.total,
            minor: d.minor_number().map_err(query(&at("minor number")))?,
            pci_bus_id: d.pci_info().map_err(query(&at("PCI info")))?.bus_id,
            mig_enabled,
            sm_count,
            mig,
        });
    }
    Ok(gpus)
}

/// The MIG devices of a GPU with MIG mode on, by GPU then compute instance ID; their
/// capability minors are filled in by [`discover`].
fn mig_devices(gpu: &Device<'_>) -> Result<Vec<MigInstance>, NvmlError> {
    let max = gpu.mig_device_count()?;
    let mut out = Vec::new();
    for i in 0..max {
        let m = match gpu.mig_device_by_index(i) {
            Ok(m) => m,
            // Unpopulated slots: the handles are not dense.
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
            Err(e) => return Err(e),
        };
        let attributes = m.attributes()?;
        let memory_bytes = attributes.memory_size_mb.saturating_mul(1 << 20);
        out.push(MigInstance {
            uuid: m.uuid()?,
            gpu_instance_id: instance_id(&m, true)?,
            compute_instance_id: instance_id(&m, false)?,
            memory_bytes,
            sm_count: attributes.multiprocessor_count,
            profile: gpuslice_core::mig::profile_name(
                attributes.gpu_instance_slice_count,
                attributes.compute_instance_slice_count,
                memory_bytes,
            ),
            gi_access_minor: 0,
            ci_access_minor: 0,
        });
    }
    out.sort_by_key(|m| (m.gpu_instance_id, m.compute_instance_id));
    Ok(out)
}

/// `nvmlDeviceGetGpuInstanceId` (or `…ComputeInstanceId`) of a MIG device handle, which
/// nvml-wrapper does not wrap.
fn instance_id(mig: &Device<'_>, gpu_instance: bool) -> Result<u32, NvmlError> {
    let lib = mig.nvml().lib();
    let sym = if gpu_instance {
        nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref())?
    } else {
        nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref())?
    };
    let mut id = 0;
    // SAFETY: the handle is a live MIG device handle of this NVML (the Device borrows it), and
    // `id` is a valid c_uint for the call to write.
    nvml_try(unsafe { sym(mig.handle(), &mut id) })?;
    Ok(id)
}

/// A device node as found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// Path inside the container, e.g. `/dev/nvidia0`.
    pub path: String,
    /// Path on the host: the same path under the dev root.
    pub host_path: PathBuf,
    pub major: u64,
    pub minor: u64,
}

/// Looks up `/dev/<name>` under `dev_root`: `Ok(None)` when it does not exist.
pub fn find_node(dev_root: &Path, name: &str) -> Result<Option<NodeFile>, DiscoverError> {
    let path = format!("/dev/{name}");
    let host_path = dev_root.join(path.trim_start_matches('/'));
    let meta = match std::fs::symlink_metadata(&host_path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DiscoverError::Stat { path: host_path, source }),
    };
    if !meta.file_type().is_char_device() {
        return Err(DiscoverError::NotCharDevice { path: host_path });
    }
    let rdev = meta.rdev();
    Ok(Some(NodeFile { path, host_path, major: libc::major(rdev).into(), minor: libc::minor(rdev).into() }))
}

/// The control nodes every GPU container needs, those present under `dev_root`.
pub const CONTROL_NODES: &[&str] = &["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"];

/// The node of one GPU, which must exist.
pub fn gpu_node(dev_root: &Path, gpu: &GpuInfo) -> Result<NodeFile, DiscoverError> {
    let name = format!("nvidia{}", gpu.minor);
    find_node(dev_root, &name)?.ok_or_else(|| DiscoverError::MissingNode {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        path: dev_root.join("dev").join(&name),
    })
}
