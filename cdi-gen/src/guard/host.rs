//! What the guard asks of and does to the host's processes and cgroups, behind a trait so that
//! the decisions can be tested with a fake ([`Host`]); [`LinuxHost`] is the real thing.
//!
//! Everything here is the kernel's: a process's cgroups and start time from `/proc/<pid>/`,
//! signals through a pidfd (so a PID reused between the look and the kill is never hit: the
//! pidfd is opened first, then the start time is checked again), and the cgroup freezer, v1
//! (`freezer.state`) where the engine's cgroups have a freezer hierarchy, else v2
//! (`cgroup.freeze`). Locks: whether a file's byte range is locked (`F_OFD_GETLK` on the
//! guard's own open description) and which processes hold it (the `lock:` lines of
//! `/proc/<pid>/fdinfo/<fd>`: an OFD lock shows pid -1 in `/proc/locks`, but the kernel lists
//! it under the descriptor it was taken through, with the locked file's device and inode and
//! the byte range).

use std::fs;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use gpuslice_core::containers::CgroupLine;

/// What became of a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// `SIGKILL` was sent.
    Sent,
    /// The process had already gone (or its PID now names another process).
    Gone,
}

/// The host's processes and cgroups.
pub trait Host: Send + Sync {
    /// The cgroups of process `pid`; `None` once it has gone.
    fn cgroups(&self, pid: u32) -> Option<Vec<CgroupLine>>;
    /// When process `pid` started (clock ticks since boot, `/proc/<pid>/stat` field 22), which
    /// together with the PID names one process for good; `None` once it has gone.
    fn start_time(&self, pid: u32) -> Option<u64>;
    /// Sends `SIGKILL` to `pid` if it is still the process that started at `start_time`.
    fn kill(&self, pid: u32, start_time: u64) -> io::Result<Killed>;
    /// Freezes (or thaws) the cgroup of a container whose first process had `cgroups`.
    fn set_frozen(&self, cgroups: &[CgroupLine], frozen: bool) -> io::Result<()>;
    /// Every process on the host (PIDs as the guard sees them).
    fn pids(&self) -> Vec<u32>;
    /// Whether any open description of `file` holds a lock on a byte of `range` (asked without
    /// taking anything).
    fn lock_held(&self, file: &Path, range: Range<u64>) -> io::Result<bool>;
    /// Those of `pids` that hold a lock on `file` covering all of `range`, by the kernel's list
    /// of each process's locks.
    fn lock_holders(&self, pids: &[u32], file: &Path, range: Range<u64>) -> io::Result<Vec<u32>>;
    /// The device numbers of the hook's state tmpfs mounts in `pid`'s mount namespace (what the
    /// interception library tags its region slots with), from the kernel's mountinfo.
    fn state_mounts(&self, _pid: u32) -> Vec<u64> {
        Vec::new()
    }
    /// `pid`'s PID in its innermost PID namespace (the container's), from `NSpid` in
    /// `/proc/<pid>/status`.
    fn inner_pid(&self, _pid: u32) -> Option<u32> {
        None
    }
}

/// A lock from a `lock:` line of `/proc/<pid>/fdinfo/<fd>`: the locked file's device (major,
/// minor) and inode, and the byte range (`end` inclusive, `None` to the end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLock {
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
    pub start: u64,
    pub end: Option<u64>,
}

impl FdLock {
    /// Whether it covers every byte of `range`.
    pub fn covers(&self, range: &Range<u64>) -> bool {
        self.start <= range.start && self.end.is_none_or(|e| range.end == 0 || e >= range.end - 1)
    }
}

/// The locks listed in an fdinfo file: lines like
/// `lock:\t1: OFDLCK  ADVISORY  WRITE -1 00:1a:12345 0 0` (device numbers in hex, the end
/// `EOF` for a lock to the end of the file).
pub fn fdinfo_locks(fdinfo: &str) -> Vec<FdLock> {
    fdinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.strip_prefix("lock:")?.split_whitespace().collect();
            let at = fields.iter().position(|f| f.matches(':').count() == 2)?;
            let mut dev = fields[at].split(':');
            let major = u32::from_str_radix(dev.next()?, 16).ok()?;
            let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
            let inode = dev.next()?.parse().ok()?;
            let start = fields.get(at + 1)?.parse().ok()?;
            let end = match *fields.get(at + 2)? {
                "EOF" => None,
                e => Some(e.parse().ok()?),
            };
            Some(FdLock { major, minor, inode, start, end })
        })
        .collect()
}

/// The real host: `/proc` and the cgroup filesystems mounted in this mount namespace.
#[derive(Debug, Clone)]
pub struct LinuxHost {
    proc_root: PathBuf,
    /// The cgroup v1 hierarchy with the freezer controller, if mounted.
    freezer: Option<PathBuf>,
    /// The cgroup v2 (unified) hierarchy, if mounted.
    unified: Option<PathBuf>,
}

impl LinuxHost {
    /// The host as this process's mount namespace shows it.
    pub fn new() -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (freezer, unified) = cgroup_mounts(&mountinfo);
        Self { proc_root: PathBuf::from("/proc"), freezer, unified }
    }

    /// Which freezer a container with these cgroups is frozen with: the v1 freezer's
    /// `freezer.state`, else v2's `cgroup.freeze`.
    fn freeze_file(&self, cgroups: &[CgroupLine]) -> io::Result<(PathBuf, &'static str, &'static str)> {
        if let Some(mount) = &self.freezer
            && let Some(line) = cgroups.iter().find(|c| c.controllers.split(',').any(|c| c == "freezer"))
            && line.path != "/"
        {
            let file = under(mount, &line.path)?.join("freezer.state");
            if file.exists() {
                return Ok((file, "FROZEN", "THAWED"));
            }
        }
        if let Some(mount) = &self.unified
            && let Some(line) = cgroups.iter().find(|c| c.hierarchy == 0 && c.controllers.is_empty())
            && line.path != "/"
        {
            let file = under(mount, &line.path)?.join("cgroup.freeze");
            if file.exists() {
                return Ok((file, "1", "0"));
            }
        }
        Err(io::Error::other("no cgroup freezer for this container (no freezer hierarchy, no cgroup.freeze)"))
    }
}

impl Default for LinuxHost {
    fn default() -> Self {
        Self::new()
    }
}

/// `mount` + `path` (a cgroup path as the kernel lists it), refusing anything that is not a
/// plain descent.
fn under(mount: &Path, path: &str) -> io::Result<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(io::Error::other(format!("cgroup path {path:?} is not a plain path")));
    }
    Ok(mount.join(rel))
}

/// The v1 freezer hierarchy's and the v2 hierarchy's mount points, from `/proc/self/mountinfo`.
pub fn cgroup_mounts(mountinfo: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut freezer, mut unified) = (None, None);
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let Some(mount_point) = left.split(' ').nth(4) else { continue };
        let mut right = right.split(' ');
        let (fstype, options) = (right.next(), right.nth(1));
        match fstype {
            Some("cgroup") if options.is_some_and(|o| o.split(',').any(|o| o == "freezer")) => {
                freezer.get_or_insert_with(|| PathBuf::from(mount_point));
            }
            Some("cgroup2") => {
                unified.get_or_insert_with(|| PathBuf::from(mount_point));
            }
            _ => {}
        }
    }
    (freezer, unified)
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Host for LinuxHost {
    fn cgroups(&self, pid: u32) -> Option<Vec<CgroupLine>> {
        gpuslice_core::containers::read_cgroups(&self.proc_root, pid).ok()
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat")).ok()?;
        stat_start_time(&stat)
    }

    fn kill(&self, pid: u32, start_time: u64) -> io::Result<Killed> {
        let Ok(raw_pid) = libc::pid_t::try_from(pid) else { return Ok(Killed::Gone) };
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::ESRCH) { Ok(Killed::Gone) } else { Err(err) };
        }
        let fd = fd as libc::c_int;
        // The pidfd now names one process for good; make sure it is the one we measured.
        let result = if self.start_time(pid) != Some(start_time) {
            Ok(Killed::Gone)
        } else {
            // SAFETY: `fd` is the pidfd opened above; no siginfo, no flags.
            let r = unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0)
            };
            if r == 0 {
                Ok(Killed::Sent)
            } else {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ESRCH) { Ok(Killed::Gone) } else { Err(err) }
            }
        };
        // SAFETY: closing the descriptor opened above, once.
        unsafe { libc::close(fd) };
        result
    }

    fn set_frozen(&self, cgroups: &[CgroupLine], frozen: bool) -> io::Result<()> {
        let (file, freeze, thaw) = self.freeze_file(cgroups)?;
        fs::write(&file, if frozen { freeze } else { thaw })
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))
    }

    fn pids(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(&self.proc_root) else { return Vec::new() };
        entries.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
    }

    fn lock_held(&self, file: &Path, range: Range<u64>) -> io::Result<bool> {
        // Read-only is enough to ask; the description is the guard's own and holds nothing.
        let f = fs::File::open(file)?;
        Ok(gpuslice_core::shm::lock::held_elsewhere(&f, range))
    }

    fn lock_holders(&self, pids: &[u32], file: &Path, range: Range<u64>) -> io::Result<Vec<u32>> {
        let meta = fs::metadata(file)?;
        let (dev, inode) = (meta.dev(), meta.ino());
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let holds = |pid: u32| {
            let Ok(fds) = fs::read_dir(self.proc_root.join(pid.to_string()).join("fdinfo")) else { return false };
            fds.filter_map(Result::ok).any(|fd| {
                fs::read_to_string(fd.path()).is_ok_and(|text| {
                    fdinfo_locks(&text)
                        .iter()
                        .any(|l| (l.major, l.minor, l.inode) == (major, minor, inode) && l.covers(&range))
                })
            })
        };
        Ok(pids.iter().copied().filter(|&pid| holds(pid)).collect())
    }

    fn state_mounts(&self, pid: u32) -> Vec<u64> {
        let Ok(text) = fs::read(self.proc_root.join(pid.to_string()).join("mountinfo")) else { return Vec::new() };
        let Ok(mounts) = gpuslice_core::mountinfo::parse(&text) else { return Vec::new() };
        mounts.iter().filter(|m| m.is_hook_state()).map(|m| m.dev).collect()
    }

    fn inner_pid(&self, pid: u32) -> Option<u32> {
        let status = fs::read_to_string(self.proc_root.join(pid.to_string()).join("status")).ok()?;
        status_inner_pid(&status)
    }
}

/// The last PID on the `NSpid:` line of `/proc/<pid>/status`: the process's PID in its
/// innermost PID namespace.
pub fn status_inner_pid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_innermost_pid() {
        assert_eq!(status_inner_pid("Name:\tx\nNSpid:\t4242\t17\t1\nNSsid:\t1\n"), Some(1));
        assert_eq!(status_inner_pid("Name:\tx\nNSpid:\t4242\n"), Some(4242));
        assert_eq!(status_inner_pid("Name:\tx\n"), None);
        assert_eq!(status_inner_pid("NSpid:\n"), None);
    }

    #[test]
    fn this_process_has_no_state_mount_and_knows_its_pid() {
        let host = LinuxHost::new();
        assert!(host.state_mounts(std::process::id()).is_empty());
        assert!(host.inner_pid(std::process::id()).is_some());
    }

    #[test]
    fn finds_the_freezer_and_the_unified_hierarchy() {
        let hybrid = "37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n\
                      36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_mounts(hybrid),
            (Some("/sys/fs/cgroup/freezer".into()), Some("/sys/fs/cgroup/unified".into()))
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup_mounts(v2), (None, Some("/sys/fs/cgroup".into())));
        assert_eq!(cgroup_mounts("garbage\n"), (None, None));
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 98765 1000 50";
        assert_eq!(stat_start_time(stat), Some(98765));
        assert_eq!(stat_start_time("1 (x) S"), None);
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_start_time(&own).is_some());
    }

    #[test]
    fn fdinfo_lock_lines_are_read() {
        let text = "pos:\t0\nflags:\t0100002\nmnt_id:\t31\nino:\t77\n\
                    lock:\t1: OFDLCK  ADVISORY  WRITE -1 00:1a:77 0 0\n\
                    lock:\t2: OFDLCK  ADVISORY  READ -1 fd:01:9 4 EOF\n";
        let locks = fdinfo_locks(text);
        assert_eq!(locks.len(), 2);
        assert_eq!(locks[0], FdLock { major: 0, minor: 0x1a, inode: 77, start: 0, end: Some(0) });
        assert_eq!(locks[1], FdLock { major: 0xfd, minor: 1, inode: 9, start: 4, end: None });
        assert!(locks[0].covers(&(0..1)) && !locks[0].covers(&(0..2)) && !locks[0].covers(&(1..2)));
        assert!(locks[1].covers(&(100..200)) && !locks[1].covers(&(0..1)));
        assert!(fdinfo_locks("lock:\tgarbage\n").is_empty());
    }

    #[test]
    fn the_kernel_names_an_ofd_lock_holder() {
        let host = LinuxHost::new();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(8).unwrap();
        let holder = fs::OpenOptions::new().read(true).write(true).open(tmp.path()).unwrap();
        let me = std::process::id();
        assert!(!host.lock_held(tmp.path(), 0..1).unwrap());
        assert!(host.lock_holders(&[me], tmp.path(), 0..1).unwrap().is_empty());
        let held = gpuslice_core::shm::lock::try_lock(&holder, 0..1).unwrap().unwrap();
        assert!(host.lock_held(tmp.path(), 0..1).unwrap());
        assert_eq!(host.lock_holders(&[me], tmp.path(), 0..1).unwrap(), [me]);
        assert!(host.lock_holders(&[me], tmp.path(), 1..2).unwrap().is_empty(), "another byte");
        assert!(host.pids().contains(&me));
        drop(held);
        assert!(!host.lock_held(tmp.path(), 0..1).unwrap());
    }

    #[test]
    fn cgroup_paths_must_descend() {
        assert!(under(Path::new("/sys/fs/cgroup/freezer"), "/docker/abc").is_ok());
        assert!(under(Path::new("/m"), "/docker/../../etc").is_err());
    }

    #[test]
    fn a_kill_checks_the_start_time() {
        let host = LinuxHost::new();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = host.start_time(pid).unwrap();
        assert_eq!(host.kill(pid, start + 1).unwrap(), Killed::Gone, "another process's start time");
        assert!(child.try_wait().unwrap().is_none(), "still running");
        assert_eq!(host.kill(pid, start).unwrap(), Killed::Sent);
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert_eq!(host.kill(pid, start).unwrap(), Killed::Gone);
    }
}
