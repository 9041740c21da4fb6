//! A node's slice state on the host, as `gpuslice-cdi generate` makes it.
//!
//! ```text
//! <state_dir>/                         a tmpfs of gpuslice's own when the directory is on a
//!                                      nodev mount (device nodes need a filesystem that
//!                                      allows them)
//!     slices/<name>/limits             the slice's limits (regular file, 0644)
//!     slices/<name>/region             block device node (0666) of the slice's zram device
//!     gpus/<uuid>/board                block device node (0666) of the GPU's zram device
//!     retired                          zram devices replaced while still open (host only)
//!     tmp/                             the hook's scratch files (root only)
//! ```
//!
//! [`ensure_region`] and [`ensure_board`] leave a usable device at their path whatever they
//! find: nothing (a reboot emptied `/run`), a plain file (a release before layout 4 of the
//! region, layout 2 of the board) or a node whose device is gone or too small, all replaced by a
//! new device; or a device whose contents are damaged (another layout version's header
//! included), which is repaired in place, so the containers that share it keep sharing it. A device that is replaced while containers still have it open cannot be
//! removed yet; it is listed in `retired` and removed by a later run ([`remove_retired`]).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::board::{Board, BoardError, BoardSlice, Rebuilt, board_path};
use crate::fsutil;
use crate::region::{Region, RegionError, RepairReport, region_path};
use crate::shm::zram::{self, Device};

/// The source of the tmpfs `generate` mounts on a state directory that is on a nodev mount.
pub const STATE_TMPFS_SOURCE: &str = "gpuslice-state";
/// Its options: room for the hook's scratch files (a loader cache bound into a container with a
/// read-only `/etc` lives as long as the container), nothing more.
const STATE_TMPFS_OPTIONS: &str = "mode=0755,size=256m,nr_inodes=65536";
/// How long `generate` waits for a region's or a board's lock to repair it.
pub const REPAIR_LOCK_WAIT: Duration = Duration::from_secs(2);
/// The list of devices to remove once nobody has them open.
const RETIRED: &str = "retired";

/// Why the state could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(transparent)]
    Board(#[from] BoardError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError + use<> {
    let path = path.to_owned();
    move |source| StateError::Io { op, path, source }
}

/// Makes `state_dir` exist and able to hold device nodes: on a `nodev` mount (`/run` under
/// systemd), a tmpfs of its own is mounted on it ([`STATE_TMPFS_SOURCE`]). Returns whether it
/// mounted one. Needs root.
pub fn prepare_dir(state_dir: &Path) -> Result<bool, StateError> {
    fsutil::create_dir_all_mode(state_dir, 0o755).map_err(io_err("creating", state_dir))?;
    let st = statvfs(state_dir).map_err(io_err("reading the mount of", state_dir))?;
    if st.f_flag & libc::ST_NODEV == 0 {
        return Ok(false);
    }
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| io_err("mounting on", state_dir)(io::ErrorKind::InvalidInput.into()))
    };
    let target = std::ffi::CString::new(state_dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io_err("mounting on", state_dir)(io::ErrorKind::InvalidInput.into()))?;
    let (source, fstype, options) = (c(STATE_TMPFS_SOURCE)?, c("tmpfs")?, c(STATE_TMPFS_OPTIONS)?);
    // SAFETY: NUL-terminated strings that outlive the call; the result is checked.
    let rc = unsafe {
        libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), libc::MS_NOSUID, options.as_ptr().cast())
    };
    if rc != 0 {
        return Err(io_err("mounting a tmpfs that allows device nodes on", state_dir)(io::Error::last_os_error()));
    }
    Ok(true)
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: statvfs is plain data, zero is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// What [`ensure_region`] or [`ensure_board`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A usable device was there; nothing was wrong.
    Kept,
    /// A usable device was there with damaged contents, repaired in place.
    Repaired,
    /// A usable device was there, but its lock stayed held: left as it is.
    Busy,
    /// A new device was published (there was none, or what was there could not be used).
    Published,
}

/// Whether what is at `path` is a device node (`Some(rdev)`), something else (`None`), or
/// nothing (`Err(NotFound)`).
fn node_at(path: &Path) -> io::Result<Option<libc::dev_t>> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok(meta.file_type().is_block_device().then(|| meta.rdev()))
}

/// Makes `<state_dir>/slices/<slice>/region` a usable region on its own zram device: keeps a
/// sound one, repairs a damaged one in place, publishes a new one otherwise. The slice's
/// directory must exist.
pub fn ensure_region(state_dir: &Path, slice: &str) -> Result<Outcome, StateError> {
    let path = region_path(state_dir, slice);
    let old = match node_at(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("reading", &path)(e)),
        Ok(None) => None,
        Ok(Some(rdev)) => match Region::open_repairing(&path, REPAIR_LOCK_WAIT) {
            Ok((_, report)) if report.repaired() => return Ok(Outcome::Repaired),
            Ok(_) => return Ok(Outcome::Kept),
            Err(e) if e.is_busy() => return Ok(Outcome::Busy),
            // The device is gone (ENXIO), too small, or not one: replace it.
            Err(_) => Some(rdev),
        },
    };
    Region::publish(&path)?;
    retire(state_dir, old);
    Ok(Outcome::Published)
}

/// Makes `<state_dir>/gpus/<uuid>/board` a usable board on its own zram device holding exactly
/// `slices` ([`Board::rebuild`]). Its directory is created if missing.
pub fn ensure_board(
    state_dir: &Path,
    uuid: &str,
    slices: &[BoardSlice],
    now_ns: u64,
) -> Result<(Outcome, Rebuilt), StateError> {
    let path = board_path(state_dir, uuid);
    let dir = path.parent().unwrap_or(state_dir);
    fsutil::create_dir_all_mode(dir, 0o755).map_err(io_err("creating", dir))?;
    let (mut outcome, mut old) = (Outcome::Published, None);
    match node_at(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading", &path)(e)),
        Ok(None) => {}
        Ok(Some(rdev)) => match Board::open_repairing(&path) {
            Ok((board, repaired)) if board.is_device() => {
                let rebuilt = board.rebuild(slices, now_ns)?;
                return Ok((if repaired { Outcome::Repaired } else { Outcome::Kept }, rebuilt));
            }
            _ => old = Some(rdev),
        },
    }
    Board::publish(&path)?;
    retire(state_dir, old);
    let board = Board::open(&path)?;
    let rebuilt = board.rebuild(slices, now_ns)?;
    if rebuilt.unlocked {
        outcome = Outcome::Busy;
    }
    Ok((outcome, rebuilt))
}

/// Removes the zram device `rdev` that a published node just replaced, or lists it in
/// `retired` when it is still open (a running container has it).
fn retire(state_dir: &Path, rdev: Option<libc::dev_t>) {
    let Some(device) = rdev.and_then(Device::of) else { return };
    match (device.size(), device.remove()) {
        (_, Ok(())) => {}
        (Ok(size), Err(e)) if e.is_busy() => {
            let line = format!("{} {} {size}\n", device.id, device.rdev);
            let path = state_dir.join(RETIRED);
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| io::Write::write_all(&mut f, line.as_bytes()));
        }
        _ => {}
    }
}

/// Removes the retired devices nobody has open any more; keeps listing the others. A listed
/// device whose number or size no longer match is not ours any more and is forgotten.
/// Returns how many were removed.
pub fn remove_retired(state_dir: &Path) -> usize {
    let path = state_dir.join(RETIRED);
    let Ok(text) = std::fs::read_to_string(&path) else { return 0 };
    let mut keep = String::new();
    let mut removed = 0;
    for line in text.lines() {
        let mut parts = line.split(' ').map(str::parse::<u64>);
        let (Some(Ok(id)), Some(Ok(rdev)), Some(Ok(size))) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(device) = Device::of(rdev as libc::dev_t).filter(|d| u64::from(d.id) == id) else { continue };
        if device.size().ok() != Some(size) {
            continue;
        }
        match device.remove() {
            Ok(()) => removed += 1,
            Err(e) if e.is_busy() => keep.push_str(&format!("{line}\n")),
            Err(_) => {}
        }
    }
    let _ =
        if keep.is_empty() { std::fs::remove_file(&path) } else { fsutil::write_atomic(&path, keep.as_bytes(), 0o600) };
    removed
}

/// Removes every zram device whose node is under `state_dir` (and the retired ones): for
/// tearing a node's state down, and for tests. Returns the devices still open somewhere.
pub fn remove_devices(state_dir: &Path) -> Vec<(Device, zram::ZramError)> {
    remove_retired(state_dir);
    zram::remove_under(state_dir)
}

/// What the repair of a region found, for messages.
pub fn describe_repair(report: &RepairReport) -> String {
    let mut parts = Vec::new();
    if report.header {
        parts.push("its header rewritten".to_owned());
    }
    if report.slots > 0 {
        parts.push(format!("{} slot states set from their owners' liveness", report.slots));
    }
    if report.containers > 0 {
        parts.push(format!("{} container records cleared", report.containers));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Priority;

    /// Removes the devices of a state dir when the test ends, however it ends.
    struct Devices<'a>(&'a Path);
    impl Drop for Devices<'_> {
        fn drop(&mut self) {
            let left = remove_devices(self.0);
            assert!(left.is_empty() || std::thread::panicking(), "devices left: {left:?}");
        }
    }

    fn nix_mknod(path: &Path, rdev: libc::dev_t) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, rdev) }, 0);
    }

    #[test]
    fn whatever_is_there_becomes_a_usable_region_and_board() {
        let test = "whatever_is_there_becomes_a_usable_region_and_board";
        if gpuslice_test_support::skip_unless_root(test, "adding zram devices") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let _devices = Devices(state);
        assert!(!prepare_dir(state).unwrap(), "a directory that allows device nodes is used as it is");
        fsutil::create_dir_all_mode(&crate::limits::slice_dir(state, "slice0"), 0o755).unwrap();
        let region = region_path(state, "slice0");

        // Nothing there, then a sound device kept: the same device.
        assert_eq!(ensure_region(state, "slice0").unwrap(), Outcome::Published);
        let first = node_at(&region).unwrap().unwrap();
        let user = Region::open(&region).unwrap();
        assert!(user.is_device());
        let slot = user.register().unwrap();
        user.charge(slot, 5, 10).unwrap().unwrap();
        assert_eq!(ensure_region(state, "slice0").unwrap(), Outcome::Kept);
        assert_eq!(node_at(&region).unwrap(), Some(first));

        // A scribbled header is repaired on the same device; the user keeps its charge.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&region)
            .map(|f| {
                use std::os::unix::fs::FileExt;
                f.write_all_at(b"scribble", 0).unwrap();
            })
            .unwrap();
        assert!(Region::open(&region).is_err());
        assert_eq!(ensure_region(state, "slice0").unwrap(), Outcome::Repaired);
        assert_eq!(node_at(&region).unwrap(), Some(first));
        assert_eq!(Region::open(&region).unwrap().usage().unwrap(), 5);

        // A node whose device is too small (or gone) is replaced; the old device, still open
        // somewhere, is retired and removed once nobody has it open.
        drop(user);
        Device::of(first).unwrap().remove().unwrap();
        let small = Device::add(4096).unwrap();
        std::fs::remove_file(&region).unwrap();
        nix_mknod(&region, small.rdev);
        let holder = std::fs::File::open(&region).unwrap();
        assert_eq!(ensure_region(state, "slice0").unwrap(), Outcome::Published);
        assert!(Region::open(&region).unwrap().is_device());
        assert_eq!(remove_retired(state), 0, "still open");
        drop(holder);
        assert_eq!(remove_retired(state), 1);
        assert!(Device::of(small.rdev).is_none());

        // A plain file (an older release) is replaced by a device.
        fsutil::create_dir_all_mode(&crate::limits::slice_dir(state, "slice1"), 0o755).unwrap();
        Region::create(&region_path(state, "slice1")).unwrap();
        assert_eq!(ensure_region(state, "slice1").unwrap(), Outcome::Published);
        assert!(Region::open(&region_path(state, "slice1")).unwrap().is_device());

        let slices = |names: &[&str]| -> Vec<BoardSlice> {
            names.iter().map(|n| BoardSlice { name: (*n).to_owned(), priority: Priority::Normal, cores: 50 }).collect()
        };
        let (outcome, rebuilt) = ensure_board(state, "GPU-1", &slices(&["slice0", "slice1"]), 1).unwrap();
        assert_eq!((outcome, rebuilt.claimed), (Outcome::Published, 2));
        let board = Board::open(&board_path(state, "GPU-1")).unwrap();
        assert!(board.is_device());
        let (outcome, rebuilt) = ensure_board(state, "GPU-1", &slices(&["slice0"]), 1).unwrap();
        assert_eq!((outcome, rebuilt.dropped), (Outcome::Kept, 1));
        assert_eq!(board.slices().len(), 1, "rebuilt in place: every opener sees it");
    }

    #[test]
    fn a_nodev_state_dir_gets_a_tmpfs_that_allows_device_nodes() {
        let test = "a_nodev_state_dir_gets_a_tmpfs_that_allows_device_nodes";
        if gpuslice_test_support::skip_unless_root(test, "mounting")
            || gpuslice_test_support::skip_unless_program(test, "/usr/bin/unshare")
        {
            return;
        }
        // In a private mount namespace: a nodev tmpfs like systemd's /run, then this test's
        // binary again to call prepare_dir there.
        if std::env::var_os("GPUSLICE_STATE_TEST_CHILD").is_some() {
            let run = Path::new("/tmp/gpuslice-state-test-run");
            let state = run.join("gpuslice");
            assert!(prepare_dir(&state).unwrap(), "mounted");
            assert_eq!(statvfs(&state).unwrap().f_flag & libc::ST_NODEV, 0);
            let mounts = crate::mountinfo::read().unwrap();
            let m = mounts.iter().rev().find(|m| m.mount_point == state).expect("listed");
            assert_eq!((m.fs_type.as_str(), m.source.as_str()), ("tmpfs", STATE_TMPFS_SOURCE));
            assert!(!prepare_dir(&state).unwrap(), "a second run finds it ready");
            println!("state-child-ok");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "set -e; mkdir -p /tmp/gpuslice-state-test-run; mount -t tmpfs -o nodev,size=1m run /tmp/gpuslice-state-test-run; \
             exec '{}' state::tests::{test} --exact --nocapture --test-threads=1",
            exe.display()
        );
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .env("GPUSLICE_STATE_TEST_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("state-child-ok"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
