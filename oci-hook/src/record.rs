//! The container's host-only record for the host guard ([`gpuslice_core::containers`]): its
//! id, slice, cgroups and names, written at `createContainer` and removed at `poststop`.
//!
//! The cgroups are read from `/proc/<pid>/cgroup` of the container's first process, the PID
//! the runtime gives in the OCI state. The hook runs with the host's `/proc` (before
//! `pivot_root`, and whatever PID namespace the runtime runs it in, `/proc` is the host's
//! procfs, which names processes by host PID), so the file is the kernel's account of the
//! process, which nothing in the container can write. Its paths are relative to the *reader's*
//! cgroup namespace, and a runtime may run the hook in the container's (a private cgroup
//! namespace, the default on cgroup v2), where the container's cgroup reads as `/`: so the hook
//! first joins the cgroup namespace of the host's PID 1, where the guard reads them too. Where
//! PID 1's namespaces cannot be opened (a hardened host), the hook reads from where it is, and
//! a container whose every cgroup then reads as `/` is refused: such a record would tie no
//! process to the container.

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
    join_host_cgroup_namespace().with_context(|| format!("{slice}: joining the host's cgroup namespace"))?;
    let cgroups = containers::read_cgroups(Path::new("/proc"), pid)
        .with_context(|| format!("{slice}: reading the cgroups of the container's process {pid}"))?;
    if cgroups.iter().all(|c| c.path == "/") {
        anyhow::bail!(
            "{slice}: every cgroup of the container's process {pid} reads as / (the hook runs in a cgroup namespace \
             it cannot leave, or the runtime made no cgroup): the host guard could not tell its processes"
        );
    }
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

/// Joins the cgroup namespace of `/proc/1` (the host's init) if this process is in another.
fn join_host_cgroup_namespace() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let host = "/proc/1/ns/cgroup";
    let theirs = match ns(host) {
        Ok(id) => id,
        // PID 1 may not be inspected (no ptrace access to it): read from where we are.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {host}")),
    };
    if ns("/proc/self/ns/cgroup")? == theirs {
        return Ok(());
    }
    let fd = std::fs::File::open(host).with_context(|| format!("opening {host}"))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWCGROUP).with_context(|| format!("setns({host})"))?;
    Ok(())
}

/// Removes `container`'s record for `slice`; a record that is not there is fine.
pub fn forget(state_dir: &Path, container: &Container, slice: &str) -> Result<()> {
    ContainerRecord::remove(state_dir, &container.id, slice)
        .with_context(|| format!("{slice}: removing the host record of container {}", container.id))
}
