//! Which process holds a record of the shared device state, as the *asking* process's PID
//! namespace names it: the simulated driver's answer to "which PIDs use this GPU".
//!
//! A real driver knows each of its clients by the kernel's own identity of the process and
//! reports host PIDs (`nvmlDeviceGetComputeRunningProcesses`, `nvmlDeviceGetProcessUtilization`),
//! whatever PID namespace the process runs in. The simulated driver lives in each process, so
//! it needs the kernel to tell it who holds what. Classic POSIX record locks do exactly that:
//! the kernel records the owner of an `F_SETLK` lock, and `F_GETLK` reports that owner's PID
//! *translated into the caller's PID namespace* (0 when the owner is not visible there). So
//! each process that holds a memory record (a slot of [`crate::state`]) or a timeline client
//! record ([`crate::timeline`]) also holds a POSIX write lock on one byte of
//! `<state dir>/gpu<index>.holders`: byte `slot` for memory slots, byte
//! [`SLOTS`]` + client` for timeline clients. The host (the guard, `nvidia-smi`) asks with
//! `F_GETLK` and gets the host PID; a process in a container asking gets the PID its own
//! namespace gives, or nothing for processes it cannot see.
//!
//! POSIX locks have one trap: a process loses all of them on a file when it closes *any*
//! descriptor of that file. So each process opens a holders file once ([`HolderFile::get`])
//! and never closes it. The lock of a process goes when it exits or is killed, with its
//! memory records' OFD locks, so a dead process is never reported.
//!
//! POSIX locks belong to the process, so one copy of this library cannot see the marks of
//! another copy in the same process (`libcuda.so.1` and `libnvidia-ml.so.1` are two files in a
//! driver root): for those, and for any holder in the asker's own PID namespace, the PID the
//! record itself holds (with its namespace) is the answer.
//!
//! What the simulation cannot match: a process that opens and closes its GPU's holders file
//! itself (it is in the shared state directory) drops its own POSIX locks, and from another
//! PID namespace its records are then named by no one. A real driver's attribution cannot be
//! dropped by its client.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::state::SLOTS;

/// The first byte of the timeline clients' range.
pub const CLIENT_BASE: u64 = SLOTS as u64;

/// One GPU's holders file, open for the life of the process.
#[derive(Debug)]
pub struct HolderFile {
    file: File,
    path: PathBuf,
    /// Whether `file` was opened for writing (needed to take write locks).
    writable: bool,
    /// Bytes this process holds. `F_GETLK` does not report a process's own locks (they do not
    /// conflict with it), so these are answered from here.
    mine: Mutex<HashSet<u64>>,
}

impl HolderFile {
    /// The holders file of GPU `index` in `dir`, opened (and created) on first use in this
    /// process and kept open from then on.
    pub fn get(dir: &Path, index: u32) -> io::Result<&'static HolderFile> {
        Self::get_named(dir, &format!("gpu{index}"))
    }

    /// The holders file `<stem>.holders` in `dir` (a MIG device's is `gpu<i>-mig<j>`), as
    /// [`get`](Self::get).
    pub fn get_named(dir: &Path, stem: &str) -> io::Result<&'static HolderFile> {
        static OPEN: Mutex<Vec<&'static HolderFile>> = Mutex::new(Vec::new());
        let path = dir.join(format!("{stem}.holders"));
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = open.iter().find(|h| h.path == path) {
            return Ok(found);
        }
        let opened = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o666).open(&path);
        let (file, writable) = match opened {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                (OpenOptions::new().read(true).open(&path)?, false)
            }
            Err(e) => return Err(e),
        };
        let holders: &'static HolderFile =
            Box::leak(Box::new(HolderFile { file, path, writable, mine: Mutex::new(HashSet::new()) }));
        open.push(holders);
        Ok(holders)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self, cmd: libc::c_int, kind: libc::c_int, byte: u64) -> io::Result<libc::flock> {
        let mut lock = libc::flock {
            l_type: kind as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: byte as libc::off_t,
            l_len: 1,
            l_pid: 0,
        };
        loop {
            // SAFETY: `lock` is a valid, writable flock for the duration of the call and the
            // descriptor stays open for the life of the process.
            let r = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut lock) };
            if r == 0 {
                return Ok(lock);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Mark `byte` as this process's (for as long as it lives, or until [`release`](Self::release)).
    /// Fails when another process holds it, or the file could not be opened for writing.
    pub fn hold(&self, byte: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.lock(libc::F_SETLK, libc::F_WRLCK, byte)?;
        self.mine.lock().unwrap_or_else(PoisonError::into_inner).insert(byte);
        Ok(())
    }

    /// Stop marking `byte` as this process's.
    pub fn release(&self, byte: u64) {
        if self.mine.lock().unwrap_or_else(PoisonError::into_inner).remove(&byte) {
            let _ = self.lock(libc::F_SETLK, libc::F_UNLCK, byte);
        }
    }

    /// The process holding `byte`, by its PID in this process's PID namespace: this process's
    /// own `getpid()` for its own bytes; `None` when nobody holds it, or the holder is not
    /// visible from here (another PID namespace that this one does not contain).
    pub fn holder(&self, byte: u64) -> Option<u32> {
        if self.mine.lock().unwrap_or_else(PoisonError::into_inner).contains(&byte) {
            return Some(std::process::id());
        }
        let lock = self.lock(libc::F_GETLK, libc::F_WRLCK, byte).ok()?;
        if lock.l_type == libc::F_UNLCK as libc::c_short {
            return None;
        }
        // Positive: the holder's PID here. 0: not visible from this namespace. -1: an OFD lock,
        // which nobody takes on this file.
        u32::try_from(lock.l_pid).ok().filter(|&pid| pid > 0)
    }
}

/// The inode number of this process's PID namespace (`/proc/self/ns/pid`), or 0 if unknown:
/// recorded beside a PID so that a reader can tell whether that PID means anything to it.
pub fn pid_namespace() -> u32 {
    use std::os::unix::fs::MetadataExt;
    use std::sync::OnceLock;
    // A process's PID namespace never changes (unshare(CLONE_NEWPID) moves only its children).
    static NS: OnceLock<u32> = OnceLock::new();
    *NS.get_or_init(|| std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_bytes_are_answered_with_getpid_and_others_are_free() {
        let dir = tempfile::tempdir().unwrap();
        let h = HolderFile::get(dir.path(), 0).unwrap();
        assert!(std::ptr::eq(h, HolderFile::get(dir.path(), 0).unwrap()), "one per file per process");
        assert_eq!(h.holder(3), None);
        h.hold(3).unwrap();
        assert_eq!(h.holder(3), Some(std::process::id()));
        assert_eq!(h.holder(4), None);
        h.release(3);
        assert_eq!(h.holder(3), None);
        h.release(3);
    }

    #[test]
    fn another_process_is_named_by_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let h = HolderFile::get(dir.path(), 1).unwrap();
        let path = std::ffi::CString::new(h.path().as_os_str().as_encoded_bytes()).unwrap();
        let (mut ready, mut done) = ([0; 2], [0; 2]);
        // SAFETY: two arrays of two descriptors, as pipe(2) wants.
        assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) + libc::pipe(done.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes async-signal-safe calls (open, fcntl, write, read, _exit).
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above; `path` is a NUL-terminated string made before the fork.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                let lock = libc::flock {
                    l_type: libc::F_WRLCK as libc::c_short,
                    l_whence: libc::SEEK_SET as libc::c_short,
                    l_start: 9,
                    l_len: 1,
                    l_pid: 0,
                };
                let ok = u8::from(fd >= 0 && libc::fcntl(fd, libc::F_SETLK, &lock) == 0);
                libc::write(ready[1], (&raw const ok).cast(), 1);
                let mut b = 0u8;
                libc::read(done[0], (&raw mut b).cast(), 1);
                libc::_exit(0);
            }
        }
        let mut ok = 0u8;
        // SAFETY: reading one byte into a live local from our end of the pipe.
        assert_eq!(unsafe { libc::read(ready[0], (&raw mut ok).cast(), 1) }, 1);
        assert_eq!(ok, 1, "the child could not lock its byte");
        assert_eq!(h.holder(9), Some(child as u32));
        assert!(h.hold(9).is_err(), "a byte another process holds cannot be taken");
        // SAFETY: writing one byte to the pipe, then reaping our own child.
        unsafe {
            libc::write(done[1], (&raw const ok).cast(), 1);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert_eq!(h.holder(9), None, "its lock went with it");
        h.hold(9).unwrap();
    }
}
