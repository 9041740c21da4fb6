//! MIG devices in the simulator: which devices CUDA enumerates (`CUDA_VISIBLE_DEVICES`), and
//! what a MIG device looks like to CUDA.
//!
//! A GPU with `mig_mode = true` lists its MIG devices as `[[gpu.mig]]` tables. Each has its own
//! shared memory state (`gpu<i>-mig<j>.state`, [`crate::state::Simulator::migs`]) bounded by
//! the instance's memory: an allocation past it fails with `CUDA_ERROR_OUT_OF_MEMORY`, as the
//! hardware refuses it. NVML reaches a MIG device through its handles
//! (`nvmlDeviceGetMigDeviceHandleByIndex`, [`crate::nvml`]); the parent's memory in use is its
//! own plus its MIG devices'.
//!
//! CUDA reads `CUDA_VISIBLE_DEVICES` as the real driver does: unset, every GPU (a GPU in MIG mode
//! then appears whole, which a real driver does not do; no test relies on it); otherwise a
//! comma-separated list of GPU indices, `GPU-…` UUIDs (or unique prefixes) and `MIG-…` UUIDs,
//! read up to the first entry that names nothing or repeats one. As on a real driver, a process
//! enumerates at most one MIG device: later `MIG-…` entries are skipped.

use crate::config::{FakeGpuConfig, GpuConfig};
use crate::state::CudaDevice;

/// The variable that selects CUDA's devices.
pub const VISIBLE_ENV: &str = "CUDA_VISIBLE_DEVICES";

/// The devices CUDA enumerates, given `CUDA_VISIBLE_DEVICES` (`None`: unset).
pub fn cuda_devices(config: &FakeGpuConfig, visible: Option<&str>) -> Vec<CudaDevice> {
    let whole = |index: usize| CudaDevice { gpu: config.gpu[index].clone(), parent: index as u32, mig: None };
    let Some(visible) = visible else {
        return (0..config.gpu.len()).map(whole).collect();
    };
    let mut out: Vec<CudaDevice> = Vec::new();
    let mut has_mig = false;
    for entry in visible.split(',').map(str::trim) {
        let found = if entry.starts_with("MIG-") {
            mig_device(config, entry)
        } else if let Some(prefix) = entry.strip_prefix("GPU-") {
            let matching: Vec<usize> = (0..config.gpu.len())
                .filter(|&i| {
                    config.gpu[i].uuid.strip_prefix("GPU-").is_some_and(|u| !prefix.is_empty() && u.starts_with(prefix))
                })
                .collect();
            if let [i] = matching.as_slice() { Some(whole(*i)) } else { None }
        } else {
            entry.parse::<usize>().ok().filter(|&i| i < config.gpu.len()).map(whole)
        };
        let Some(device) = found else { break };
        if out.iter().any(|d| d.parent == device.parent && d.mig == device.mig) {
            break;
        }
        if device.mig.is_some() {
            if has_mig {
                continue;
            }
            has_mig = true;
        }
        out.push(device);
    }
    out
}

/// The MIG device whose UUID is `uuid`, as CUDA sees it.
fn mig_device(config: &FakeGpuConfig, uuid: &str) -> Option<CudaDevice> {
    config.gpu.iter().enumerate().find_map(|(index, gpu)| {
        let position = gpu.mig.iter().position(|m| m.uuid == uuid)?;
        let m = &gpu.mig[position];
        let view = GpuConfig {
            uuid: m.uuid.clone(),
            name: format!("{} MIG {}", gpu.name, m.profile),
            memory: m.memory,
            sm_count: m.sm_count,
            context_memory: gpu.context_memory.min(m.memory),
            reserved_memory: gpuslice_core::units::ByteSize(0),
            mig: Vec::new(),
            ..gpu.clone()
        };
        Some(CudaDevice { gpu: view, parent: index as u32, mig: Some(position) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> FakeGpuConfig {
        let text = r#"
            driver_version = "580.95.05"
            cuda_version = 13000
            [[gpu]]
            uuid = "GPU-11111111-2222-3333-4444-555555555555"
            name = "Simulated H100"
            memory = "80GiB"
            sm_count = 132
            minor = 0
            pci_bus_id = "00000000:01:00.0"
            mig_mode = true
            [[gpu.mig]]
            uuid = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
            profile = "3g.40gb"
            memory = "40GiB"
            sm_count = 60
            [[gpu.mig]]
            uuid = "MIG-bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee"
            profile = "1g.10gb"
            memory = "10GiB"
            sm_count = 16
            [[gpu]]
            uuid = "GPU-66666666-2222-3333-4444-555555555555"
            name = "Simulated H100"
            memory = "80GiB"
            sm_count = 132
            minor = 1
            pci_bus_id = "00000000:02:00.0"
        "#;
        let c: FakeGpuConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        c
    }

    fn seen(visible: Option<&str>) -> Vec<(u32, Option<usize>, String)> {
        cuda_devices(&machine(), visible).into_iter().map(|d| (d.parent, d.mig, d.gpu.uuid)).collect()
    }

    #[test]
    fn unset_is_every_gpu_and_indices_select() {
        assert_eq!(seen(None).len(), 2);
        assert_eq!(seen(Some("1")).iter().map(|d| d.0).collect::<Vec<_>>(), [1]);
        assert_eq!(seen(Some("1,0")).iter().map(|d| d.0).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(seen(Some("")).len(), 0);
        assert_eq!(seen(Some("0,7,1")).len(), 1, "enumeration stops at the first bad entry");
        assert_eq!(seen(Some("0,0")).len(), 1, "and at a repeat");
        assert_eq!(seen(Some("GPU-6666")).iter().map(|d| d.0).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_mig_uuid_is_one_device_with_the_instances_memory_and_sms() {
        let devices = cuda_devices(&machine(), Some("MIG-bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee"));
        assert_eq!(devices.len(), 1);
        let d = &devices[0];
        assert_eq!((d.parent, d.mig), (0, Some(1)));
        assert_eq!((d.gpu.memory.0, d.gpu.sm_count), (10 << 30, 16));
        assert_eq!(d.gpu.name, "Simulated H100 MIG 1g.10gb");
        assert_eq!(
            seen(Some("MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee,MIG-bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee,1"))
                .iter()
                .map(|d| (d.0, d.1))
                .collect::<Vec<_>>(),
            [(0, Some(0)), (1, None)],
            "one MIG device per process"
        );
        assert!(seen(Some("MIG-cccccccc-bbbb-cccc-dddd-eeeeeeeeeeee")).is_empty());
    }
}
