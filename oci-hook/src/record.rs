//! The container's host-only record for the host guard ([`gpuslice_core::containers`]): its
//! id, slice, cgroups and names, written at `createContainer` and removed at `poststop`.
//!
//! The cgroups are read from `/proc/<pid>/cgroup` of the container's first process, the PID
//! the runtime gives in the OCI state. The hook runs with the host's `/proc` (before
//! `pivot_root`, and whatever PID namespace the runtime runs it in, `/proc` is the host's
//! procfs, which names processes by host PID), so the file is the kernel's account of the
//! process, which nothing in the container can write.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use gpuslice_core::containers::{self, ContainerRecord};

use crate::oci::Container;

/// Writes `container`'s record for `slice` under `state_dir`.
pub fn record(state_dir: &Path, container: &Container, slice: &str) -> Result<()> {
    let pid = container.pid.ok_or_else(|| {
        anyhow!(
            "{slice}: the container state on standard input has no pid (the runtime gives it to createContainer hooks)"
        )
    })?;
    let cgroups = containers::read_cgroups(Path::new("/proc"), pid)
        .with_context(|| format!("{slice}: reading the cgroups of the container's process {pid}"))?;
    let annotation = |key: &str| container.annotations.get(key).map(String::as_str);
    let record = ContainerRecord {
        id: container.id.clone(),
        slice: slice.to_owned(),
        pid,
        name: containers::annotation(annotation, containers::NAME_ANNOTATIONS),
        pod: containers::annotation(annotation, containers::POD_ANNOTATIONS),
        namespace: containers::annotation(annotation, containers::NAMESPACE_ANNOTATIONS),
        cgroups,
    };
    record
        .store(state_dir)
        .with_context(|| format!("{slice}: recording container {} for the host guard", container.id))?;
    Ok(())
}

/// Removes `container`'s record for `slice`; a record that is not there is fine.
pub fn forget(state_dir: &Path, container: &Container, slice: &str) -> Result<()> {
    ContainerRecord::remove(state_dir, &container.id, slice)
        .with_context(|| format!("{slice}: removing the host record of container {}", container.id))
}
