//! Helpers shared by the hook's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

const CHILD_ENV: &str = "GPUSLICE_HOOK_TEST_MOUNT_CHILD";
const CHILD_DONE: &str = "mount-namespace-child-done:";

/// Runs `body` in a re-executed copy of this test binary, in its own mount namespace with
/// every mount private, so nothing it mounts is seen by the host. Without root it prints
/// `skipped:` and returns.
pub fn in_mount_namespace(name: &str, body: impl FnOnce()) {
    if gpuslice_test_support::skip_unless_root(name, "creating a mount namespace") {
        return;
    }
    if std::env::var_os(CHILD_ENV).as_deref() == Some(OsStr::new(name)) {
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .expect("making mounts private");
        body();
        println!("{CHILD_DONE}{name}");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("{CHILD_DONE}{name}")), "child did not run the test:\n{stdout}\n{stderr}");
}

/// One line of this thread's mountinfo: where, with which per-mount options, of which type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    pub path: PathBuf,
    pub options: String,
    pub fstype: String,
    pub source: String,
}

impl MountPoint {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Mount points of this thread's namespace (the test thread unshared it, not the process).
pub fn mount_points() -> Vec<MountPoint> {
    fs::read_to_string("/proc/thread-self/mountinfo")
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-").unwrap();
            MountPoint {
                path: PathBuf::from(fields[4].replace("\\040", " ")),
                options: fields[5].to_owned(),
                fstype: fields[dash + 1].to_owned(),
                source: fields[dash + 2].to_owned(),
            }
        })
        .collect()
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<MountPoint> {
    mount_points().into_iter().filter(|m| m.path.starts_with(dir)).collect()
}

/// Every entry under `dir` with its type, mode and contents (or link target).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode();
        let what = if meta.file_type().is_symlink() {
            format!("link {:o} -> {}", mode, fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            format!("dir {mode:o}")
        } else {
            format!("file {mode:o} {:?}", fs::read(&path).unwrap())
        };
        out.insert(path.strip_prefix(dir).unwrap().to_owned(), what);
    }
    out
}
