//! Host-only records of the containers running with slices: which container has which slice,
//! and which cgroups its processes live in.
//!
//! The host guard (`gpuslice-cdi daemon`) learns from the driver which host PIDs use a GPU and
//! how much memory each holds. To charge those PIDs to slices it needs to know whose they are,
//! and it must not ask anything a container can write. So the hook, running as root on the
//! host at `createContainer`, writes one record per container and slice:
//! `<state_dir>/host/containers/<id>/<slice>`, in a directory tree of mode 0700 that is never
//! mounted into any container. A record holds the container's id (the runtime's), its slice,
//! the PID of its first process and that process's cgroups as the kernel lists them in
//! `/proc/<pid>/cgroup`, plus the names an engine passes in the OCI annotations (Docker passes
//! none: the hook reads the name from Docker's own record of the container). `poststop`
//! removes it.
//!
//! A process belongs to a container when its own cgroups, read by the guard from
//! `/proc/<pid>/cgroup` (kernel-provided: a process cannot write it), are the container's, or
//! below them, in *every* hierarchy where the container is not at the root
//! ([`ContainerRecord::contains`]). Every hierarchy, not any: an engine may leave a container
//! in a cgroup it shares with others in one hierarchy (its own service's, say), and one such
//! line must not make every process there the container's. A container process can only
//! move itself to another cgroup with write access to a cgroup filesystem, which engines do
//! not give; and a move below its own cgroup still matches.
//!
//! The file format is the limits file's: `key=value` lines, every key known, format-versioned.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil;

/// The records' format; bump on any change.
pub const RECORD_FORMAT: u32 = 1;
/// Largest record accepted.
pub const MAX_RECORD_LEN: u64 = 64 << 10;
/// Longest name, pod or namespace kept from an annotation (longer ones are cut).
pub const MAX_NAME_LEN: usize = 253;

/// OCI annotations that carry a container's name, in the order they are tried: containerd's
/// CRI, CRI-O (and podman's pods), nerdctl.
pub const NAME_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.container-name",
    "io.kubernetes.container.name",
    "io.kubernetes.cri-o.ContainerName",
    "nerdctl/name",
];
/// Annotations that carry the Kubernetes pod's name.
pub const POD_ANNOTATIONS: &[&str] = &["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"];
/// Annotations that carry the Kubernetes namespace.
pub const NAMESPACE_ANNOTATIONS: &[&str] = &["io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"];

/// Why a record cannot be written, read or matched.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "{0:?} is not a container id gpuslice accepts (letters, digits, `_.+-`, not starting with `.`, at most 1024)"
    )]
    BadId(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: larger than {MAX_RECORD_LEN} bytes")]
    TooLarge { path: PathBuf },
    #[error("line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: Box<RecordError> },
    #[error("/proc/{pid}/cgroup: {reason}")]
    Cgroup { pid: u32, reason: String },
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-ID:controller-list:cgroup-path`. On cgroup v2
/// (and the unified hierarchy of a hybrid setup) it is `0::<path>`; on v1 one line per
/// hierarchy, `4:memory:/docker/<id>`, `9:name=systemd:/…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupLine {
    pub hierarchy: u32,
    pub controllers: String,
    pub path: String,
}

impl CgroupLine {
    /// Parses the contents of `/proc/<pid>/cgroup`. Lines that do not have the kernel's shape
    /// are an error (`what` names the file for the message).
    pub fn parse_all(text: &str) -> Result<Vec<CgroupLine>, String> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let mut parts = line.splitn(3, ':');
                let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(format!("{line:?} is not hierarchy:controllers:path"));
                };
                let hierarchy = id.parse().map_err(|_| format!("{line:?}: hierarchy {id:?} is not a number"))?;
                if !path.starts_with('/') {
                    return Err(format!("{line:?}: the path is not absolute"));
                }
                Ok(CgroupLine { hierarchy, controllers: controllers.to_owned(), path: path.to_owned() })
            })
            .collect()
    }

    /// Whether `self` (a process's cgroup) is `container` (a container's) or below it, in the
    /// same hierarchy. The root cgroup (`/`) contains every process and matches nothing.
    pub fn is_within(&self, container: &CgroupLine) -> bool {
        self.hierarchy == container.hierarchy
            && self.controllers == container.controllers
            && container.path != "/"
            && (self.path == container.path
                || self.path.strip_prefix(container.path.as_str()).is_some_and(|rest| rest.starts_with('/')))
    }

    /// `hierarchy:controllers:path`, as the kernel writes it.
    pub fn render(&self) -> String {
        format!("{}:{}:{}", self.hierarchy, self.controllers, self.path)
    }
}

/// The cgroups of process `pid`, from `/proc/<pid>/cgroup` under `proc_root`.
pub fn read_cgroups(proc_root: &Path, pid: u32) -> Result<Vec<CgroupLine>, RecordError> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    let text = fs::read_to_string(&path).map_err(|e| RecordError::Cgroup { pid, reason: e.to_string() })?;
    CgroupLine::parse_all(&text).map_err(|reason| RecordError::Cgroup { pid, reason })
}

/// One container's use of one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The runtime's container id.
    pub id: String,
    pub slice: String,
    /// The container's first process when the hook ran, as the host names it.
    pub pid: u32,
    /// From the OCI annotations, where the engine passes them.
    pub name: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The cgroups of its first process.
    pub cgroups: Vec<CgroupLine>,
}

/// `<state_dir>/host`: gpuslice's host-only state, never mounted into a container.
pub fn host_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("host")
}

/// `<state_dir>/host/containers`.
pub fn containers_dir(state_dir: &Path) -> PathBuf {
    host_dir(state_dir).join("containers")
}

/// Checks a container id before it becomes a directory name.
pub fn check_id(id: &str) -> Result<(), RecordError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    if ok { Ok(()) } else { Err(RecordError::BadId(id.to_owned())) }
}

/// A name from an annotation as it is kept: control characters become `?`, at most
/// [`MAX_NAME_LEN`] bytes; `None` when empty.
fn clean_name(value: &str) -> Option<String> {
    let mut out = String::new();
    for c in value.chars() {
        if out.len() + c.len_utf8() > MAX_NAME_LEN {
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    (!out.is_empty()).then_some(out)
}

/// The first of `keys` that `annotations` has, cleaned.
pub fn annotation<'a>(annotations: impl Fn(&str) -> Option<&'a str>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| annotations(k).and_then(clean_name))
}

impl ContainerRecord {
    /// `<state_dir>/host/containers/<id>/<slice>`.
    pub fn path(state_dir: &Path, id: &str, slice: &str) -> PathBuf {
        containers_dir(state_dir).join(id).join(slice)
    }

    /// The record as text.
    pub fn render(&self) -> String {
        let mut s = String::from("# gpuslice container record: written by gpuslice-hook, removed at poststop\n");
        let _ = writeln!(s, "format={RECORD_FORMAT}");
        let _ = writeln!(s, "id={}", self.id);
        let _ = writeln!(s, "slice={}", self.slice);
        let _ = writeln!(s, "pid={}", self.pid);
        for (key, value) in [("name", &self.name), ("pod", &self.pod), ("namespace", &self.namespace)] {
            let _ = writeln!(s, "{key}={}", value.as_deref().unwrap_or(""));
        }
        for c in &self.cgroups {
            let _ = writeln!(s, "cgroup={}", c.render());
        }
        s
    }

    /// Reads a record's text. Every key but `cgroup` exactly once; unknown keys and other
    /// formats are refused.
    pub fn parse(text: &str) -> Result<ContainerRecord, RecordError> {
        let mut fields: [(&str, Option<String>); 7] = [
            ("format", None),
            ("id", None),
            ("slice", None),
            ("pid", None),
            ("name", None),
            ("pod", None),
            ("namespace", None),
        ];
        let mut cgroups = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let err = |reason: String| RecordError::Parse { line: n + 1, reason };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| err(format!("{line:?} is not key=value")))?;
            if key == "cgroup" {
                let mut parsed = CgroupLine::parse_all(value).map_err(err)?;
                cgroups.append(&mut parsed);
                continue;
            }
            let field =
                fields.iter_mut().find(|(k, _)| *k == key).ok_or_else(|| err(format!("unknown key {key:?}")))?;
            if field.1.replace(value.to_owned()).is_some() {
                return Err(err(format!("{key} given twice")));
            }
        }
        let mut take = |key: &str| -> Result<String, RecordError> {
            let field = fields.iter_mut().find(|(k, _)| *k == key).and_then(|(_, v)| v.take());
            field.ok_or_else(|| RecordError::Parse { line: 0, reason: format!("no {key}") })
        };
        let format = take("format")?;
        if format != RECORD_FORMAT.to_string() {
            return Err(RecordError::Parse {
                line: 0,
                reason: format!("format {format} (this gpuslice reads {RECORD_FORMAT})"),
            });
        }
        let id = take("id")?;
        check_id(&id)?;
        let slice = take("slice")?;
        let pid = take("pid")?;
        let pid = pid.parse().map_err(|_| RecordError::Parse { line: 0, reason: format!("pid {pid:?}") })?;
        let opt = |v: String| (!v.is_empty()).then_some(v);
        Ok(ContainerRecord {
            id,
            slice,
            pid,
            name: opt(take("name")?),
            pod: opt(take("pod")?),
            namespace: opt(take("namespace")?),
            cgroups,
        })
    }

    /// Writes the record atomically, creating `<state_dir>/host/containers/<id>` (mode 0700)
    /// as needed.
    pub fn store(&self, state_dir: &Path) -> Result<PathBuf, RecordError> {
        check_id(&self.id)?;
        crate::cdi::validate_device_name(&self.slice)
            .map_err(|e| RecordError::Parse { line: 0, reason: format!("slice: {e}") })?;
        let text = self.render();
        if text.len() as u64 > MAX_RECORD_LEN || self.cgroups.iter().any(|c| c.path.contains('\n')) {
            return Err(RecordError::TooLarge { path: Self::path(state_dir, &self.id, &self.slice) });
        }
        let dir = containers_dir(state_dir).join(&self.id);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RecordError::Io { path, source }
        };
        fsutil::create_dir_all_mode(&dir, 0o700).map_err(io(&dir))?;
        // Created by an older run with another mode, or by hand: host-only all the same.
        for d in [host_dir(state_dir), containers_dir(state_dir)] {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(io(&d))?;
        }
        let path = dir.join(&self.slice);
        fsutil::write_atomic(&path, text.as_bytes(), 0o600).map_err(io(&path))?;
        Ok(path)
    }

    /// Removes the record of container `id` for `slice`, and the container's directory when it
    /// was the last. A record that is not there is not an error.
    pub fn remove(state_dir: &Path, id: &str, slice: &str) -> Result<(), RecordError> {
        check_id(id)?;
        crate::cdi::validate_device_name(slice)
            .map_err(|e| RecordError::Parse { line: 0, reason: format!("slice: {e}") })?;
        let path = Self::path(state_dir, id, slice);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(RecordError::Io { path, source }),
        }
        let dir = containers_dir(state_dir).join(id);
        match fs::remove_dir(&dir) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io { path: dir, source }),
            Ok(()) => Ok(()),
        }
    }

    /// Reads one record file.
    pub fn load(path: &Path) -> Result<ContainerRecord, RecordError> {
        let text = fsutil::read_bounded(path, MAX_RECORD_LEN)
            .map_err(|source| RecordError::Io { path: path.to_owned(), source })?
            .ok_or_else(|| RecordError::TooLarge { path: path.to_owned() })?;
        Self::parse(&text).map_err(|e| RecordError::File { path: path.to_owned(), source: Box::new(e) })
    }

    /// Every record under `state_dir`, and the files that could not be read (with why). No
    /// records directory means no records.
    pub fn list(state_dir: &Path) -> (Vec<ContainerRecord>, Vec<RecordError>) {
        let (mut records, mut errors) = (Vec::new(), Vec::new());
        let dir = containers_dir(state_dir);
        let containers = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (records, errors),
            Err(source) => return (records, vec![RecordError::Io { path: dir, source }]),
        };
        for container in containers.filter_map(Result::ok) {
            let Ok(files) = fs::read_dir(container.path()) else { continue };
            for file in files.filter_map(Result::ok) {
                if file.file_name().as_encoded_bytes().starts_with(b".") {
                    continue; // a write in progress
                }
                match Self::load(&file.path()) {
                    Ok(r) => records.push(r),
                    Err(e) => errors.push(e),
                }
            }
        }
        records.sort_by(|a, b| (&a.id, &a.slice).cmp(&(&b.id, &b.slice)));
        (records, errors)
    }

    /// Whether a process with cgroups `process` belongs to this container: in each hierarchy
    /// where the container is below the root, the process is in the container's cgroup or
    /// below it; and there is at least one such hierarchy.
    pub fn contains(&self, process: &[CgroupLine]) -> bool {
        let mut compared = false;
        for c in self.cgroups.iter().filter(|c| c.path != "/") {
            let same = process.iter().find(|p| p.hierarchy == c.hierarchy && p.controllers == c.controllers);
            match same {
                Some(p) if p.is_within(c) => compared = true,
                Some(_) => return false,
                // A hierarchy the process does not list (another cgroup namespace's view):
                // nothing to compare.
                None => {}
            }
        }
        compared
    }

    /// How the container is named in log lines: its id's first 12 characters, and its name
    /// (`pod/name` and the namespace when known).
    pub fn display_name(&self) -> String {
        let short = &self.id[..self.id.len().min(12)];
        match (&self.namespace, &self.pod, &self.name) {
            (Some(ns), Some(pod), Some(name)) => format!("{short} ({ns}/{pod}/{name})"),
            (None, Some(pod), Some(name)) => format!("{short} ({pod}/{name})"),
            (_, _, Some(name)) => format!("{short} ({name})"),
            _ => short.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "9:name=systemd:/docker/abc\n6:freezer:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n";

    fn record() -> ContainerRecord {
        ContainerRecord {
            id: "abc".into(),
            slice: "slice0".into(),
            pid: 42,
            name: Some("web".into()),
            pod: None,
            namespace: None,
            cgroups: CgroupLine::parse_all(DOCKER).unwrap(),
        }
    }

    #[test]
    fn cgroup_lines_parse_and_match_below_the_container_only() {
        let lines = CgroupLine::parse_all(DOCKER).unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            CgroupLine { hierarchy: 9, controllers: "name=systemd".into(), path: "/docker/abc".into() }
        );
        assert_eq!(lines[3].render(), "0::/docker/abc");
        let r = record();
        let p = |text: &str| CgroupLine::parse_all(text).unwrap();
        assert!(r.contains(&p(DOCKER)));
        assert!(r.contains(&p("6:freezer:/docker/abc\n")));
        assert!(
            r.contains(&p(
                "9:name=systemd:/docker/abc\n6:freezer:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc/nested\n"
            )),
            "a sub-cgroup is still the container"
        );
        assert!(!r.contains(&p("0::/docker/abcdef\n")), "a prefix of a name is another cgroup");
        assert!(!r.contains(&p("7:blkio:/docker/abc\n")), "a hierarchy the record does not have");
        assert!(!r.contains(&p("6:freezer:/\n0::/\n")), "the host's processes");
        // A record where one hierarchy is shared with others (the engine's own cgroup): a
        // process there, elsewhere in the rest, is not the container's.
        let shared = ContainerRecord { cgroups: p("6:freezer:/test/a\n4:memory:/engine\n"), ..record() };
        assert!(shared.contains(&p("6:freezer:/test/a\n4:memory:/engine\n")));
        assert!(!shared.contains(&p("6:freezer:/\n4:memory:/engine\n")), "only the shared line matches");
        assert!(!shared.contains(&p("6:freezer:/test/b\n4:memory:/engine\n")));
        let root = ContainerRecord { cgroups: p("0::/\n"), ..record() };
        assert!(!root.contains(&p("0::/\n")), "a record at the root matches nothing");
        for bad in ["0:/x", "x::/a", "0::relative"] {
            assert!(CgroupLine::parse_all(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_round_trip_and_are_host_only() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let r = record();
        let path = r.store(state.path()).unwrap();
        assert_eq!(path, state.path().join("host/containers/abc/slice0"));
        assert_eq!(ContainerRecord::load(&path).unwrap(), r);
        for d in ["host", "host/containers", "host/containers/abc"] {
            let mode = fs::metadata(state.path().join(d)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{d}");
        }
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let second = ContainerRecord { slice: "slice2".into(), name: None, ..record() };
        second.store(state.path()).unwrap();
        let (all, errors) = ContainerRecord::list(state.path());
        assert_eq!((all.len(), errors.len()), (2, 0));
        ContainerRecord::remove(state.path(), "abc", "slice0").unwrap();
        assert!(state.path().join("host/containers/abc").is_dir(), "slice2's record is left");
        ContainerRecord::remove(state.path(), "abc", "slice2").unwrap();
        ContainerRecord::remove(state.path(), "abc", "slice2").unwrap();
        assert!(!state.path().join("host/containers/abc").exists());
        assert!(ContainerRecord::list(state.path()).0.is_empty());
    }

    #[test]
    fn bad_ids_and_records_are_refused() {
        let state = tempfile::tempdir().unwrap();
        for id in ["", "..", "../x", "a/b", ".hidden", "a\nb"] {
            assert!(ContainerRecord { id: id.into(), ..record() }.store(state.path()).is_err(), "{id:?}");
        }
        for slice in ["", "..", "a/b"] {
            assert!(ContainerRecord { slice: slice.into(), ..record() }.store(state.path()).is_err(), "{slice:?}");
        }
        assert!(fs::read_dir(state.path()).unwrap().next().is_none(), "nothing written");
        let text = record().render();
        for (bad, want) in [
            (text.replace("format=1", "format=2"), "format 2"),
            (text.replace("pid=42", "pid=x"), "pid"),
            (text.clone() + "color=red\n", "unknown key"),
            (text.clone() + "id=x\n", "twice"),
            (text.replace("id=abc\n", ""), "no id"),
            (text.clone() + "cgroup=garbage\n", "hierarchy"),
        ] {
            let e = ContainerRecord::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (want {want})");
        }
        // A broken file is reported by list, the others still read.
        record().store(state.path()).unwrap();
        fs::write(state.path().join("host/containers/abc/slice9"), "junk").unwrap();
        let (ok, errors) = ContainerRecord::list(state.path());
        assert_eq!((ok.len(), errors.len()), (1, 1));
        assert!(errors[0].to_string().contains("slice9"), "{}", errors[0]);
    }

    #[test]
    fn names_come_from_annotations_cleaned() {
        let map = |k: &str| match k {
            "io.kubernetes.cri.container-name" => Some("train\u{1b}[31m"),
            "io.kubernetes.pod.name" => Some(""),
            _ => None,
        };
        assert_eq!(annotation(map, NAME_ANNOTATIONS).as_deref(), Some("train?[31m"));
        assert_eq!(annotation(map, POD_ANNOTATIONS), None);
        let long = "x".repeat(1000);
        assert_eq!(annotation(|_| Some(long.as_str()), NAME_ANNOTATIONS).unwrap().len(), MAX_NAME_LEN);
        let r = ContainerRecord {
            id: "0123456789abcdef".into(),
            pod: Some("p".into()),
            namespace: Some("ns".into()),
            ..record()
        };
        assert_eq!(r.display_name(), "0123456789ab (ns/p/web)");
        assert_eq!(ContainerRecord { name: None, ..record() }.display_name(), "abc");
    }
}
