//! Building the CDI spec from the plan.

use std::collections::BTreeMap;
use std::path::Path;

use gpuslice_core::cdi::{self, ContainerEdits, Device, DeviceNode, Hook, Spec, Version};
use gpuslice_core::config::{Config, Mode};
use gpuslice_core::plan::{Plan, PlannedDevice};

use crate::discover::{NodeFile, NodeInfo};

/// Annotation keys, all under our own prefix.
pub mod annotation {
    pub const DRIVER_VERSION: &str = "gpuslice.dev/driver-version";
    pub const CUDA_VERSION: &str = "gpuslice.dev/cuda-version";
    pub const GENERATOR: &str = "gpuslice.dev/generator";
    pub const GPU_UUID: &str = "gpuslice.dev/gpu-uuid";
    pub const GPU_INDEX: &str = "gpuslice.dev/gpu-index";
    pub const MODE: &str = "gpuslice.dev/mode";
    pub const MEMORY_BYTES: &str = "gpuslice.dev/memory-bytes";
    pub const CORES_PERCENT: &str = "gpuslice.dev/cores-percent";
    pub const CORES_POLICY: &str = "gpuslice.dev/cores-policy";
    pub const PRIORITY: &str = "gpuslice.dev/priority";
    pub const DEVICES: &str = "gpuslice.dev/devices";
    pub const MIG_UUID: &str = "gpuslice.dev/mig-uuid";
    pub const MIG_PROFILE: &str = "gpuslice.dev/mig-profile";
}

/// The environment the hook runs with: nothing from the container or the engine reaches it.
pub const HOOK_ENV: &[&str] = &["PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
/// The variable that tells a container which slice it has.
pub const SLICE_ENV: &str = "GPUSLICE_SLICE";
/// The variable that selects a MIG device for CUDA (by its `MIG-…` UUID).
pub const CUDA_VISIBLE_ENV: &str = "CUDA_VISIBLE_DEVICES";
/// The name of the device that holds every other device.
pub const ALL_DEVICE: &str = "all";

/// What the spec is built from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub node: &'a NodeInfo,
    pub plan: &'a Plan,
    /// `/dev/nvidia<minor>` of each GPU, by GPU index.
    pub gpu_nodes: &'a BTreeMap<u32, NodeFile>,
    /// The shared control nodes that exist.
    pub control_nodes: &'a [NodeFile],
    /// The capability nodes of each MIG device (GPU instance, compute instance), by device name.
    pub mig_nodes: &'a BTreeMap<String, Vec<NodeFile>>,
    /// Where slice state lives on the host (the hook recreates it there if missing).
    pub state_dir: &'a Path,
}

/// Builds the spec: one device per planned device, plus `all`, at the lowest CDI version
/// its content needs (never below 0.5.0).
pub fn build(inputs: &Inputs<'_>) -> Spec {
    let mut devices: Vec<Device> = inputs.plan.devices.iter().map(|d| device(inputs, d)).collect();
    if !devices.is_empty() {
        let mut all = ContainerEdits::default();
        for d in &devices {
            let mut edits = d.container_edits.clone();
            // `all` shows every device: no MIG device's selection.
            edits.env.retain(|e| {
                !e.starts_with(&format!("{SLICE_ENV}=")) && !e.starts_with(&format!("{CUDA_VISIBLE_ENV}="))
            });
            all.append(&edits);
        }
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        all.env.insert(0, format!("{SLICE_ENV}={}", names.join(",")));
        let annotations = BTreeMap::from([(annotation::DEVICES.to_owned(), names.join(","))]);
        devices.push(Device { name: ALL_DEVICE.to_owned(), annotations, container_edits: all });
    }
    let annotations = BTreeMap::from([
        (annotation::DRIVER_VERSION.to_owned(), inputs.node.driver_version.clone()),
        (annotation::CUDA_VERSION.to_owned(), inputs.node.cuda_version_string()),
        (annotation::GENERATOR.to_owned(), format!("gpuslice-cdi {}", env!("CARGO_PKG_VERSION"))),
    ]);
    let container_edits =
        ContainerEdits { device_nodes: inputs.control_nodes.iter().map(node).collect(), ..ContainerEdits::default() };
    let mut spec =
        Spec { cdi_version: String::new(), kind: inputs.config.kind.clone(), annotations, devices, container_edits };
    if !inputs.config.annotations {
        spec.annotations.clear();
        spec.devices.iter_mut().for_each(|d| d.annotations.clear());
    }
    let (needed, _) = cdi::minimum_version(&spec);
    spec.cdi_version = needed.max(Version::FLOOR).to_string();
    spec
}

fn device(inputs: &Inputs<'_>, d: &PlannedDevice) -> Device {
    let mut edits = ContainerEdits { env: vec![format!("{SLICE_ENV}={}", d.name)], ..ContainerEdits::default() };
    if let Some(n) = inputs.gpu_nodes.get(&d.gpu_index) {
        edits.device_nodes.push(node(n));
    }
    if d.mode == Mode::Shim {
        edits.device_nodes.extend(state_nodes(inputs.state_dir, d));
    }
    // A MIG device: its parent's node above, its capability nodes, and CUDA told which
    // instance (NVIDIA_VISIBLE_DEVICES is the NVIDIA runtime's, which is not in the path here).
    if let Some(m) = &d.mig {
        edits.device_nodes.extend(inputs.mig_nodes.get(&d.name).into_iter().flatten().map(node));
        edits.env.push(format!("{CUDA_VISIBLE_ENV}={}", m.uuid));
    }
    edits.hooks = ["createContainer", "poststop"].iter().map(|stage| hook(inputs, d, stage)).collect();
    let mut annotations = BTreeMap::from([
        (annotation::GPU_UUID.to_owned(), d.gpu_uuid.clone()),
        (annotation::GPU_INDEX.to_owned(), d.gpu_index.to_string()),
        (annotation::MODE.to_owned(), d.mode.to_string()),
        (annotation::MEMORY_BYTES.to_owned(), d.memory_bytes.to_string()),
        (annotation::CORES_PERCENT.to_owned(), d.cores_percent.to_string()),
        (annotation::CORES_POLICY.to_owned(), d.cores_policy.to_string()),
        (annotation::PRIORITY.to_owned(), d.priority.to_string()),
    ]);
    if let Some(m) = &d.mig {
        annotations.insert(annotation::MIG_UUID.to_owned(), m.uuid.clone());
        annotations.insert(annotation::MIG_PROFILE.to_owned(), m.profile.clone());
    }
    Device { name: d.name.clone(), annotations, container_edits: edits }
}

fn node(n: &NodeFile) -> DeviceNode {
    let host_path = n.host_path.to_string_lossy().into_owned();
    DeviceNode {
        path: n.path.clone(),
        host_path: (host_path != n.path).then_some(host_path),
        kind: Some("c".to_owned()),
        major: i64::try_from(n.major).ok(),
        minor: i64::try_from(n.minor).ok(),
        ..DeviceNode::default()
    }
}

/// Where the engine puts its own copies of a slice's state device nodes in the container (the
/// hook binds the host's nodes elsewhere; these entries are what lets the container's device
/// cgroup open them).
pub const STATE_NODE_DIR: &str = "/dev/gpuslice";

/// The slice's region and its GPU's board: zram devices on the host (`docs/region.md`), which a
/// container may only open if its device cgroup allows them. No type or numbers: the engine
/// reads them from the host's node when it creates the container, so a device `generate`
/// replaced needs no new spec, and a missing one stops the container instead of granting
/// whatever device now has the old numbers.
fn state_nodes(state_dir: &Path, d: &PlannedDevice) -> [DeviceNode; 2] {
    let host = |p: std::path::PathBuf| Some(p.to_string_lossy().into_owned());
    [
        DeviceNode {
            path: format!("{STATE_NODE_DIR}/slices/{}/region", d.name),
            host_path: host(gpuslice_core::region::region_path(state_dir, &d.name)),
            permissions: Some("rw".to_owned()),
            ..DeviceNode::default()
        },
        DeviceNode {
            path: format!("{STATE_NODE_DIR}/gpus/{}/board", d.gpu_uuid),
            host_path: host(gpuslice_core::board::board_path(state_dir, &d.gpu_uuid)),
            permissions: Some("rw".to_owned()),
            ..DeviceNode::default()
        },
    ]
}

/// `gpuslice-hook create-container|poststop --slice <name> …`, carrying everything the hook
/// needs to recreate the slice's state when `/run` was emptied by a reboot.
fn hook(inputs: &Inputs<'_>, d: &PlannedDevice, stage: &str) -> Hook {
    let c = inputs.config;
    let subcommand = if stage == "createContainer" { "create-container" } else { "poststop" };
    let args = [
        "gpuslice-hook".to_owned(),
        subcommand.to_owned(),
        "--slice".to_owned(),
        d.name.clone(),
        format!("--state-dir={}", inputs.state_dir.display()),
        format!("--mode={}", d.mode),
        format!("--gpu-uuid={}", d.gpu_uuid),
        format!("--gpu-index={}", d.gpu_index),
        format!("--memory-bytes={}", d.memory_bytes),
        format!("--cores-percent={}", d.cores_percent),
        format!("--cores-policy={}", d.cores_policy),
        format!("--priority={}", d.priority),
        format!("--driver-root={}", c.driver_root.display()),
        format!("--shim-path={}", c.shim_path.display()),
    ];
    Hook {
        hook_name: stage.to_owned(),
        path: c.hook_path.to_string_lossy().into_owned(),
        args: args.to_vec(),
        env: HOOK_ENV.iter().map(|s| (*s).to_owned()).collect(),
        timeout: None,
    }
}
