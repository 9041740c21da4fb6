//! Byte-range locks on shared files: `fcntl` open file description (OFD) locks.
//!
//! An OFD lock belongs to the open file description, not to the process: it conflicts with the
//! locks of every other description of the file (in this process or another, in any PID
//! namespace, since it lives on the inode), it is not dropped when the process closes some
//! other descriptor of the file (as a classic POSIX lock is), and the kernel drops it when the
//! description is closed, however its process died. Threads sharing one description do not
//! exclude each other: callers pair these locks with an in-process mutex.
//!
//! Every wait goes through [`lock_with_deadline`]; [`lock`] is that without a deadline.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A write lock on a byte range of a file, held by the file's open description. Released on
/// drop, unless [`keep`](Self::keep) hands it to the description for the rest of its life.
#[derive(Debug)]
pub struct RangeLock<'a> {
    file: &'a File,
    range: Range<u64>,
}

impl RangeLock<'_> {
    /// Keeps the lock until the file's description is closed (or [`unlock`] is called).
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for RangeLock<'_> {
    fn drop(&mut self) {
        let _ = unlock(self.file, self.range.clone());
    }
}

fn flock(kind: libc::c_int, range: &Range<u64>) -> libc::flock {
    // SAFETY: libc::flock is plain data; all-zero is a valid value, filled in below. l_pid
    // stays 0, as OFD locks require.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = range.start as libc::off_t;
    fl.l_len = range.end.saturating_sub(range.start) as libc::off_t;
    fl
}

/// `fcntl(cmd)` with a lock of `kind` on `range`, retried on `EINTR`.
fn fcntl(file: &File, cmd: libc::c_int, kind: libc::c_int, range: &Range<u64>) -> io::Result<()> {
    let fl = flock(kind, range);
    loop {
        // SAFETY: `fl` is a valid flock for the duration of the call and the descriptor is
        // open for as long as `file` lives.
        if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether `err` says another description holds a conflicting lock.
fn is_contended(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
}

/// Takes the lock if no other description holds any of `range`; `Ok(None)` if one does.
pub fn try_lock(file: &File, range: Range<u64>) -> io::Result<Option<RangeLock<'_>>> {
    match fcntl(file, libc::F_OFD_SETLK, libc::F_WRLCK, &range) {
        Ok(()) => Ok(Some(RangeLock { file, range })),
        Err(e) if is_contended(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits for the lock as long as it takes.
pub fn lock(file: &File, range: Range<u64>) -> io::Result<RangeLock<'_>> {
    lock_with_deadline(file, range, None)
}

/// Waits for the lock until `deadline` (for ever with `None`); past it, fails with
/// [`io::ErrorKind::TimedOut`]. With a deadline the lock is polled, backing off from 50 µs to
/// 5 ms between tries (a blocking `F_OFD_SETLKW` cannot be given a timeout without a signal,
/// and a library in someone else's process installs no signal handler).
pub fn lock_with_deadline(file: &File, range: Range<u64>, deadline: Option<Instant>) -> io::Result<RangeLock<'_>> {
    let Some(deadline) = deadline else {
        fcntl(file, libc::F_OFD_SETLKW, libc::F_WRLCK, &range)?;
        return Ok(RangeLock { file, range });
    };
    let mut pause = Duration::from_micros(50);
    loop {
        if let Some(lock) = try_lock(file, range.clone())? {
            return Ok(lock);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("bytes {}..{} stayed locked by another process", range.start, range.end),
            ));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Releases this description's lock on `range` (a kept one included).
pub fn unlock(file: &File, range: Range<u64>) -> io::Result<()> {
    fcntl(file, libc::F_OFD_SETLK, libc::F_UNLCK, &range)
}

/// Whether another open description (in this process or another) holds a lock on any byte of
/// `range`. Asks without taking anything. When the kernel cannot say, the answer is yes:
/// callers use it to decide that an owner is dead, and must never take a live one's state.
pub fn held_elsewhere(file: &File, range: Range<u64>) -> bool {
    let mut fl = flock(libc::F_WRLCK, &range);
    // SAFETY: `fl` is a valid, writable flock for the duration of the call; F_OFD_GETLK only
    // fills it in.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    rc != 0 || fl.l_type != libc::F_UNLCK as libc::c_short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_descriptions() -> (tempfile::NamedTempFile, File, File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(64).unwrap();
        let open = || std::fs::OpenOptions::new().read(true).write(true).open(tmp.path()).unwrap();
        let (a, b) = (open(), open());
        (tmp, a, b)
    }

    #[test]
    fn descriptions_exclude_each_other_and_drop_releases() {
        let (_tmp, a, b) = two_descriptions();
        let held = try_lock(&a, 0..1).unwrap().expect("free");
        assert!(try_lock(&b, 0..1).unwrap().is_none());
        assert!(held_elsewhere(&b, 0..8), "b sees a's lock");
        assert!(!held_elsewhere(&a, 0..1), "a's own lock does not conflict with a");
        assert!(try_lock(&b, 1..2).unwrap().is_some(), "other bytes are free");
        drop(held);
        assert!(!held_elsewhere(&b, 0..1));
        try_lock(&a, 5..6).unwrap().unwrap().keep();
        assert!(held_elsewhere(&b, 5..6), "a kept lock stays");
        unlock(&a, 5..6).unwrap();
        assert!(!held_elsewhere(&b, 5..6));
    }

    #[test]
    fn a_deadline_ends_the_wait() {
        let (_tmp, a, b) = two_descriptions();
        let _held = lock(&a, 0..1).unwrap();
        let start = Instant::now();
        let err = lock_with_deadline(&b, 0..1, Some(start + Duration::from_millis(30))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(start.elapsed() >= Duration::from_millis(30));
        // A free lock is taken at once, deadline or not.
        assert!(lock_with_deadline(&b, 1..2, Some(Instant::now())).is_ok());
    }

    #[test]
    fn a_waiter_gets_the_lock_when_it_is_released() {
        let (_tmp, a, b) = two_descriptions();
        let held = lock(&a, 0..1).unwrap();
        std::thread::scope(|s| {
            let waiter =
                s.spawn(|| lock_with_deadline(&b, 0..1, Some(Instant::now() + Duration::from_secs(30))).is_ok());
            std::thread::sleep(Duration::from_millis(20));
            drop(held);
            assert!(waiter.join().unwrap());
        });
    }
}
