//! `Allocate` and `GetPreferredAllocation`, as pure functions of one resource's devices.
//!
//! A container gets at most one slice of each GPU: the interception library applies one slice
//! per GPU in a container (the first it finds, `docs/hook.md`), so a second slice of the same
//! GPU would be held without being usable. `GetPreferredAllocation` never proposes that, and
//! `Allocate` refuses it with a message saying so.

use std::collections::{BTreeMap, HashMap, HashSet};

use gpuslice_core::config::Allocation;

use crate::api::{CdiDevice, ContainerAllocateResponse};
use crate::inventory::{DeviceState, GpuRef};

/// The plugin name in CDI annotation keys: `cdi.k8s.io/gpuslice_<id>`.
pub const ANNOTATION_PLUGIN: &str = "gpuslice";
/// The prefix of CDI annotations (container-device-interface's `annotations.go`).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// The longest name part of an annotation key.
const MAX_ANNOTATION_NAME: usize = 63;

/// Why a container's devices cannot be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("unknown device {id:?} (resource {resource} has {known})")]
    Unknown { id: String, resource: String, known: String },
    #[error("device {id:?} is Unhealthy: {problem}")]
    Unhealthy { id: String, problem: String },
    #[error(
        "devices {first:?} and {second:?} are slices of the same GPU ({uuid}); a container gets at most one slice of each GPU"
    )]
    SameGpu { first: String, second: String, uuid: String },
    #[error("device {0:?} is asked for twice")]
    Repeated(String),
}

/// The answer for one container: the CDI name `<kind>=<id>` of each device, and the same as
/// annotations for runtimes that read CDI devices only from annotations.
pub fn allocate(
    kind: &str,
    resource: &str,
    devices: &[DeviceState],
    ids: &[String],
) -> Result<ContainerAllocateResponse, AllocateError> {
    let by_id: HashMap<&str, &DeviceState> = devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut gpus: HashMap<&GpuRef, &str> = HashMap::new();
    let mut seen = HashSet::new();
    let mut response = ContainerAllocateResponse::default();
    for id in ids {
        let Some(device) = by_id.get(id.as_str()) else {
            let mut known: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
            known.truncate(8);
            let known = if known.is_empty() { "no devices".to_owned() } else { known.join(", ") };
            return Err(AllocateError::Unknown { id: id.clone(), resource: resource.to_owned(), known });
        };
        if !seen.insert(id.as_str()) {
            return Err(AllocateError::Repeated(id.clone()));
        }
        if let Some(problem) = &device.problem {
            return Err(AllocateError::Unhealthy { id: id.clone(), problem: problem.clone() });
        }
        if let Some(gpu) = &device.gpu
            && let Some(first) = gpus.insert(gpu, id)
        {
            return Err(AllocateError::SameGpu { first: first.to_owned(), second: id.clone(), uuid: gpu.uuid.clone() });
        }
        let name = format!("{kind}={id}");
        response.annotations.insert(annotation_key(id), name.clone());
        response.cdi_devices.push(CdiDevice { name });
    }
    Ok(response)
}

/// `cdi.k8s.io/gpuslice_<id>`; an ID that does not fit an annotation key's name part
/// (63 characters of letters, digits, `_.-`) is replaced by its hash.
pub fn annotation_key(id: &str) -> String {
    let name = format!("{ANNOTATION_PLUGIN}_{id}");
    let fits = name.len() <= MAX_ANNOTATION_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if fits {
        format!("{ANNOTATION_PREFIX}{name}")
    } else {
        format!("{ANNOTATION_PREFIX}{ANNOTATION_PLUGIN}_{:016x}", xxhash_rust::xxh3::xxh3_64(id.as_bytes()))
    }
}

/// The devices to offer one container: `must_include` first, then one healthy available
/// device from each further GPU, GPUs taken by `policy` (spread: most free devices first;
/// binpack: fewest first; ties by GPU index), each GPU's devices in the spec's order. Fewer
/// than `size` when the available GPUs do not allow more (the kubelet then fills in, and
/// `Allocate` says what is wrong).
pub fn preferred(
    devices: &[DeviceState],
    available: &[String],
    must_include: &[String],
    size: usize,
    policy: Allocation,
) -> Vec<String> {
    let by_id: HashMap<&str, &DeviceState> = devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let available: HashSet<&str> = available.iter().map(String::as_str).collect();
    let mut chosen: Vec<String> = Vec::new();
    let mut used_gpus: HashSet<&GpuRef> = HashSet::new();
    for id in must_include {
        if !chosen.contains(id) {
            chosen.push(id.clone());
            if let Some(gpu) = by_id.get(id.as_str()).and_then(|d| d.gpu.as_ref()) {
                used_gpus.insert(gpu);
            }
        }
    }
    // Free devices per GPU, in the spec's order.
    let mut free: BTreeMap<&GpuRef, Vec<&str>> = BTreeMap::new();
    for d in devices.iter().filter(|d| available.contains(d.id.as_str()) && d.healthy()) {
        if let Some(gpu) = &d.gpu {
            free.entry(gpu).or_default().push(&d.id);
        }
    }
    let mut order: Vec<(&GpuRef, &Vec<&str>)> = free.iter().map(|(g, ids)| (*g, ids)).collect();
    order.sort_by_key(|(gpu, ids)| {
        let n = ids.len() as i64;
        (if policy == Allocation::Binpack { n } else { -n }, gpu.index, gpu.uuid.clone())
    });
    for (gpu, ids) in order {
        if chosen.len() >= size {
            break;
        }
        if used_gpus.contains(gpu) {
            continue;
        }
        if let Some(id) = ids.iter().find(|id| !chosen.iter().any(|c| c == *id)) {
            chosen.push((*id).to_owned());
            used_gpus.insert(gpu);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, gpu: u32) -> DeviceState {
        DeviceState { id: id.into(), gpu: Some(GpuRef { index: gpu, uuid: format!("GPU-{gpu}") }), problem: None }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// GPU 0: s0 s1 s2 s3; GPU 1: s4 s5; GPU 2: s6 s7 s8.
    fn node() -> Vec<DeviceState> {
        let gpu = [0, 0, 0, 0, 1, 1, 2, 2, 2];
        gpu.iter().enumerate().map(|(i, g)| dev(&format!("s{i}"), *g)).collect()
    }

    #[test]
    fn spread_takes_the_gpu_with_most_free_slices_and_binpack_the_fewest() {
        let all = ids(&["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"]);
        assert_eq!(preferred(&node(), &all, &[], 1, Allocation::Spread), ids(&["s0"]));
        assert_eq!(preferred(&node(), &all, &[], 1, Allocation::Binpack), ids(&["s4"]));
        assert_eq!(preferred(&node(), &all, &[], 3, Allocation::Spread), ids(&["s0", "s6", "s4"]));
        assert_eq!(preferred(&node(), &all, &[], 3, Allocation::Binpack), ids(&["s4", "s6", "s0"]));
        // One slice per GPU: a fourth cannot be had.
        assert_eq!(preferred(&node(), &all, &[], 4, Allocation::Spread).len(), 3);
    }

    #[test]
    fn must_include_comes_first_and_its_gpu_is_not_offered_again() {
        let all = ids(&["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"]);
        let got = preferred(&node(), &all, &ids(&["s7"]), 2, Allocation::Spread);
        assert_eq!(got, ids(&["s7", "s0"]));
        let got = preferred(&node(), &all, &ids(&["s1"]), 2, Allocation::Binpack);
        assert_eq!(got, ids(&["s1", "s4"]));
    }

    #[test]
    fn unhealthy_and_unavailable_devices_are_not_offered() {
        let mut devices = node();
        devices[4].problem = Some("gone".into());
        let available = ids(&["s1", "s4", "s5", "s8"]);
        assert_eq!(preferred(&devices, &available, &[], 1, Allocation::Binpack), ids(&["s1"]));
        assert_eq!(preferred(&devices, &available, &[], 2, Allocation::Binpack), ids(&["s1", "s5"]));
    }

    #[test]
    fn allocate_answers_cdi_names_and_annotations() {
        let r = allocate("gpuslice.dev/vgpu", "gpuslice.dev/vgpu", &node(), &ids(&["s0", "s4"])).unwrap();
        let names: Vec<&str> = r.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["gpuslice.dev/vgpu=s0", "gpuslice.dev/vgpu=s4"]);
        assert_eq!(r.annotations["cdi.k8s.io/gpuslice_s0"], "gpuslice.dev/vgpu=s0");
    }

    #[test]
    fn allocate_refuses_unknown_repeated_unhealthy_and_same_gpu() {
        let mut devices = node();
        devices[5].problem = Some("limits: missing `format`".into());
        let err = |v: &[&str]| allocate("k.dev/c", "k.dev/c", &devices, &ids(v)).unwrap_err().to_string();
        assert!(err(&["s0", "nope"]).contains("unknown device \"nope\""));
        assert!(err(&["s0", "s0"]).contains("twice"));
        assert!(err(&["s5"]).contains("Unhealthy: limits"));
        assert!(err(&["s0", "s1"]).contains("same GPU (GPU-0)"));
    }

    #[test]
    fn long_or_odd_ids_get_a_hashed_annotation_key() {
        assert_eq!(annotation_key("slice0"), "cdi.k8s.io/gpuslice_slice0");
        let long = "a".repeat(60);
        let key = annotation_key(&long);
        assert!(key.len() - ANNOTATION_PREFIX.len() <= 63, "{key}");
        assert_ne!(annotation_key("a:b"), annotation_key("a:c"));
        assert!(!annotation_key("a:b").contains(':'));
    }
}
