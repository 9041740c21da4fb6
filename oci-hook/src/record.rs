//! The container's host-only record for the host guard ([`gpuslice_core::containers`]): its
//! id, slice, cgroups and names, written at `createContainer` and removed at `poststop`.
//!
//! The cgroups are read from `/proc/<pid>/cgroup` of the container's first process. The hook
//! runs with the host's `/proc` (before `pivot_root`, whatever PID namespace the runtime runs
//! it in, `/proc` is the host's procfs, which names processes by host PID), so the file is the
//! kernel's account of the process, which nothing in the container can write. Which process:
//! runc and crun run `createContainer` hooks from the container's first process, inside the
//! container's PID namespace, and give its PID *there* in the OCI state (`"pid": 1`); so when
//! the hook finds itself in a PID namespace below the procfs's, it looks for that process among
//! its own ancestors, by the host's numbers ([`host_pid`]). A hook in the host's PID namespace
//! takes the state's PID as it is. Its paths are relative to the *reader's*
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
    let pid = host_pid(Path::new("/proc"), pid).with_context(|| format!("{slice}: finding the container's process"))?;
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
        name: containers::annotation(annotation, containers::NAME_ANNOTATIONS)
            .or_else(|| docker_name(&container.bundle, &container.id)),
        pod: containers::annotation(annotation, containers::POD_ANNOTATIONS),
        namespace: containers::annotation(annotation, containers::NAMESPACE_ANNOTATIONS),
        cgroups,
    };
    record
        .store(state_dir)
        .with_context(|| format!("{slice}: recording container {} for the host guard", container.id))?;
    Ok(())
}

/// Docker's name for the container: Docker passes no annotations, but its own record of the
/// container, `<data-root>/containers/<id>/config.v2.json` (written by dockerd before the
/// container starts, root's, never mounted into it), has `"Name": "/web"`. Its directory is the
/// one Docker bind-mounts `/etc/hostname` from, as the bundle's `config.json` (the engine's)
/// says. Anything missing or unexpected is no name.
fn docker_name(bundle: &Path, id: &str) -> Option<String> {
    let config: serde_json::Value = serde_json::from_slice(&read_small(&bundle.join("config.json"))?).ok()?;
    let hostname = config["mounts"].as_array()?.iter().find(|m| m["destination"] == "/etc/hostname")?;
    let dir = Path::new(hostname["source"].as_str()?).parent()?;
    if dir.file_name()? != std::ffi::OsStr::new(id) || dir.parent()?.file_name()? != "containers" {
        return None;
    }
    let docker: serde_json::Value = serde_json::from_slice(&read_small(&dir.join("config.v2.json"))?).ok()?;
    let name = docker["Name"].as_str()?.trim_start_matches('/');
    containers::annotation(|_| Some(name), &["name"])
}

/// A file of at most 4 MiB, not followed through a symlink.
fn read_small(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    let mut out = Vec::new();
    f.take(4 << 20).read_to_end(&mut out).ok()?;
    Some(out)
}

/// `PPid` and `NSpid` of `/proc/<pid>/status` (`pid` may be `self`): the parent's PID and the
/// process's PIDs from the procfs's namespace down to its own.
fn status(proc_root: &Path, pid: &str) -> Result<(u32, Vec<u32>)> {
    let path = proc_root.join(pid).join("status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_status(&text).with_context(|| format!("{}: no PPid or NSpid", path.display()))
}

fn parse_status(text: &str) -> Option<(u32, Vec<u32>)> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let ppid = field("PPid:")?.parse().ok()?;
    let nspid: Vec<u32> = field("NSpid:")?.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    (!nspid.is_empty()).then_some((ppid, nspid))
}

/// The host PID (the procfs's numbering) of the container process the OCI state names
/// `state_pid`: the state's number itself when the hook shares the procfs's PID namespace,
/// else the ancestor of the hook that has that number in the hook's namespace.
pub fn host_pid(proc_root: &Path, state_pid: u32) -> Result<u32> {
    let (_, own) = status(proc_root, "self")?;
    if own.len() <= 1 {
        return Ok(state_pid);
    }
    // From the hook itself up: runtimes run it as a child of the container's first process.
    let mut pid = own[0];
    for _ in 0..32 {
        let (ppid, nspid) = status(proc_root, &pid.to_string())?;
        if nspid.len() < own.len() {
            break; // out of the hook's namespace: not found below it
        }
        if nspid.len() == own.len() && nspid.last() == Some(&state_pid) {
            return Ok(nspid[0]);
        }
        pid = ppid;
    }
    anyhow::bail!(
        "the hook runs in a PID namespace of its own and its process {state_pid} there (from the container state) is not one of its ancestors"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let text = "Name:\tsh\nPPid:\t4242\nNSpid:\t28327\t8\nNSpgid:\t1\n";
        assert_eq!(parse_status(text), Some((4242, vec![28327, 8])));
        assert_eq!(parse_status("PPid:\t1\n"), None);
        assert_eq!(parse_status("NSpid:\t3\n"), None);
    }

    #[test]
    fn docker_names_come_from_its_own_record_next_to_the_hostname_file() {
        let d = tempfile::tempdir().unwrap();
        let id = "964673aaf4fd";
        let dir = d.path().join("docker/containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.v2.json"), r#"{"ID":"964673aaf4fd","Name":"/web-1"}"#).unwrap();
        let bundle = d.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let config = |source: &Path| {
            serde_json::json!({"mounts": [{"destination": "/etc/hosts", "source": "/x"},
                {"destination": "/etc/hostname", "source": source}]})
            .to_string()
        };
        std::fs::write(bundle.join("config.json"), config(&dir.join("hostname"))).unwrap();
        assert_eq!(docker_name(&bundle, id).as_deref(), Some("web-1"));
        // Another container's directory, or none at all, gives no name.
        assert_eq!(docker_name(&bundle, "other"), None);
        std::fs::write(bundle.join("config.json"), config(Path::new("/etc/hostname"))).unwrap();
        assert_eq!(docker_name(&bundle, id), None);
        std::fs::write(bundle.join("config.json"), "{}").unwrap();
        assert_eq!(docker_name(&bundle, id), None);
    }

    #[test]
    fn a_hook_in_the_hosts_pid_namespace_takes_the_state_pid() {
        // This test runs in the procfs's namespace (NSpid has one number).
        assert_eq!(host_pid(Path::new("/proc"), 4_000_000).unwrap(), 4_000_000);
    }
}
