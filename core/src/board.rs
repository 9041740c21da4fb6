//! The board: one small file per GPU where the slices sharing that GPU say who they are and
//! when they last used it, so that compute pacing can see the others.
//!
//! `<state_dir>/gpus/<gpu uuid>/board`, mounted read-write into every container that has a
//! slice on that GPU. 4096 bytes:
//!
//! ```text
//! offset 0    header (64 bytes): magic "GPUSLBD\0", layout version, record size and count
//! offset 64   63 records of 64 bytes: state (free/used), priority, the slice's name (hash and
//!             text), its share, and when it last ran or wanted to run (CLOCK_MONOTONIC ns)
//! ```
//!
//! A slice's record is claimed by name, with a compare-and-swap on a free record, by
//! `gpuslice-cdi generate`, the hook or the first process of the slice, whichever comes first.
//! Processes then only move `last_active_ns` forward. Nothing here is trusted for limits: a
//! container that scribbles on the board can only mislead the pacing of the slices on its own
//! GPU about who is busy (the cooperative part of software slicing, see the README), and every
//! read is bounds-checked.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// First bytes of every board file.
pub const BOARD_MAGIC: [u8; 8] = *b"GPUSLBD\0";
/// Layout version.
pub const BOARD_VERSION: u32 = 1;
/// Size of the whole file.
pub const BOARD_SIZE: usize = 4096;
const HEADER_SIZE: usize = 64;
/// Slices one GPU's board can hold.
pub const BOARD_RECORDS: usize = (BOARD_SIZE - HEADER_SIZE) / size_of::<Record>();
const NAME_TEXT: usize = 32;

const FREE: u32 = 0;
const USED: u32 = 1;

pub use crate::config::Priority;

/// One slice's record.
#[repr(C)]
#[derive(Debug)]
struct Record {
    state: AtomicU32,
    priority: AtomicU32,
    name_hash: AtomicU64,
    last_active_ns: AtomicU64,
    cores: AtomicU32,
    _pad: u32,
    name: [AtomicU64; NAME_TEXT / 8],
}

const _: () = assert!(size_of::<Record>() == 64);

/// What a slice sees of the others on its GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Others {
    /// Some other slice ran (or wanted to) within the interval asked about.
    pub busy: bool,
    /// Some other high-priority slice did.
    pub high_busy: bool,
    /// Some other slice is high priority (busy or not).
    pub any_high: bool,
}

/// A slice's record as tools see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceActivity {
    pub name: String,
    pub priority: Priority,
    pub cores: u32,
    pub last_active_ns: u64,
}

/// Why a board cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a gpuslice board: {reason}")]
    Corrupt { path: PathBuf, reason: &'static str },
    #[error("{path}: all {BOARD_RECORDS} slice records are taken")]
    Full { path: PathBuf },
}

/// A mapped board.
#[derive(Debug)]
pub struct Board {
    path: PathBuf,
    _file: File,
    base: *mut u8,
}

// SAFETY: the mapping is only read or written through atomics, and lives as long as `Board`.
unsafe impl Send for Board {}
// SAFETY: as above.
unsafe impl Sync for Board {}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: `base` is our mapping of BOARD_SIZE bytes, unmapped once.
        unsafe { libc::munmap(self.base.cast(), BOARD_SIZE) };
    }
}

/// `<state_dir>/gpus/<uuid>/board`.
pub fn board_path(state_dir: &Path, gpu_uuid: &str) -> PathBuf {
    state_dir.join("gpus").join(gpu_uuid).join("board")
}

fn header() -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[..8].copy_from_slice(&BOARD_MAGIC);
    h[8..12].copy_from_slice(&BOARD_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(size_of::<Record>() as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(BOARD_RECORDS as u32).to_le_bytes());
    h
}

fn fnv(name: &str) -> u64 {
    // Never 0, so that a zeroed record never matches.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) | 1
}

impl Board {
    /// Opens the board at `path`, creating it (and its directory, mode 0755) if missing.
    pub fn open_or_create(path: &Path) -> Result<Board, BoardError> {
        let io_err = |source| BoardError::Io { path: path.to_owned(), source };
        if !path.exists() {
            let dir = path.parent().unwrap_or(Path::new("."));
            crate::fsutil::create_dir_all_mode(dir, 0o755).map_err(io_err)?;
            let tmp = dir.join(format!(".board.{}.{:x}", std::process::id(), crate::region::now_ns()));
            let written = (|| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                    .open(&tmp)?;
                // Every process on the GPU writes here, whatever its uid.
                file.set_permissions(std::fs::Permissions::from_mode(0o666))?;
                file.set_len(BOARD_SIZE as u64)?;
                file.write_all_at(&header(), 0)?;
                match std::fs::hard_link(&tmp, path) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                    _ => Ok(()),
                }
            })();
            let _ = std::fs::remove_file(&tmp);
            written.map_err(io_err)?;
        }
        Board::open(path)
    }

    /// Opens and maps an existing board, checking its header and size.
    pub fn open(path: &Path) -> Result<Board, BoardError> {
        let io_err = |source| BoardError::Io { path: path.to_owned(), source };
        let corrupt = |reason| BoardError::Corrupt { path: path.to_owned(), reason };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.file_type().is_file() {
            return Err(corrupt("not a regular file"));
        }
        if meta.len() != BOARD_SIZE as u64 {
            return Err(corrupt("wrong size"));
        }
        let mut h = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut h, 0).map_err(io_err)?;
        if h != header() {
            return Err(corrupt("wrong header"));
        }
        let base = crate::fsutil::map_shared(&file, BOARD_SIZE).map_err(io_err)?;
        Ok(Board { path: path.to_owned(), _file: file, base })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&self, index: usize) -> &Record {
        debug_assert!(index < BOARD_RECORDS);
        // SAFETY: index < BOARD_RECORDS keeps the record inside the mapping; it is 8-aligned
        // and every field is an atomic, valid for any bit pattern.
        unsafe { &*self.base.add(HEADER_SIZE + index * size_of::<Record>()).cast::<Record>() }
    }

    /// The record of slice `name`, claimed if it has none; its priority and share are (re)set.
    pub fn claim(&self, name: &str, priority: Priority, cores: u32) -> Result<usize, BoardError> {
        let hash = fnv(name);
        let found = (0..BOARD_RECORDS).find(|&i| {
            let r = self.record(i);
            r.state.load(Ordering::Acquire) == USED && r.name_hash.load(Ordering::Acquire) == hash
        });
        let index = match found {
            Some(i) => i,
            None => (0..BOARD_RECORDS)
                .find(|&i| {
                    let r = self.record(i);
                    r.state.compare_exchange(FREE, USED, Ordering::AcqRel, Ordering::Acquire).is_ok() && {
                        let mut text = [0u8; NAME_TEXT];
                        let n = name.len().min(NAME_TEXT);
                        text[..n].copy_from_slice(&name.as_bytes()[..n]);
                        for (k, word) in r.name.iter().enumerate() {
                            let bytes: [u8; 8] = text[k * 8..k * 8 + 8].try_into().unwrap_or_default();
                            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
                        }
                        r.name_hash.store(hash, Ordering::Release);
                        true
                    }
                })
                .ok_or_else(|| BoardError::Full { path: self.path.clone() })?,
        };
        let r = self.record(index);
        r.priority.store(u32::from(priority == Priority::High), Ordering::Relaxed);
        r.cores.store(cores, Ordering::Relaxed);
        Ok(index)
    }

    /// Marks slice record `index` as running (or wanting to run) at `now_ns`.
    pub fn touch(&self, index: usize, now_ns: u64) {
        if index < BOARD_RECORDS {
            self.record(index).last_active_ns.fetch_max(now_ns, Ordering::Relaxed);
        }
    }

    /// What the slices other than `own` did after `since_ns`.
    pub fn others(&self, own: usize, since_ns: u64) -> Others {
        let mut others = Others::default();
        for i in (0..BOARD_RECORDS).filter(|&i| i != own) {
            let r = self.record(i);
            if r.state.load(Ordering::Acquire) != USED {
                continue;
            }
            let high = r.priority.load(Ordering::Relaxed) == 1;
            let busy = r.last_active_ns.load(Ordering::Relaxed) > since_ns;
            others.busy |= busy;
            others.high_busy |= busy && high;
            others.any_high |= high;
        }
        others
    }

    /// Every claimed record, for tools.
    pub fn slices(&self) -> Vec<SliceActivity> {
        (0..BOARD_RECORDS)
            .map(|i| self.record(i))
            .filter(|r| r.state.load(Ordering::Acquire) == USED)
            .map(|r| {
                let bytes: Vec<u8> = r.name.iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
                let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                SliceActivity {
                    name: String::from_utf8_lossy(&bytes[..len]).chars().filter(|c| !c.is_control()).collect(),
                    priority: if r.priority.load(Ordering::Relaxed) == 1 { Priority::High } else { Priority::Normal },
                    cores: r.cores.load(Ordering::Relaxed),
                    last_active_ns: r.last_active_ns.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_claim_once_and_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = board_path(dir.path(), "GPU-1");
        let a = Board::open_or_create(&path).unwrap();
        let b = Board::open_or_create(&path).unwrap();
        let s0 = a.claim("slice0", Priority::Normal, 30).unwrap();
        let s1 = b.claim("slice1", Priority::High, 70).unwrap();
        assert_ne!(s0, s1);
        assert_eq!(b.claim("slice0", Priority::Normal, 30).unwrap(), s0, "claimed once");
        assert_eq!(a.others(s0, 1), Others { busy: false, high_busy: false, any_high: true });
        b.touch(s1, 100);
        assert_eq!(a.others(s0, 50), Others { busy: true, high_busy: true, any_high: true });
        assert_eq!(a.others(s0, 101), Others { busy: false, high_busy: false, any_high: true });
        assert_eq!(b.others(s1, 0), Others { busy: false, high_busy: false, any_high: false });
        a.touch(s0, 200);
        assert_eq!(b.others(s1, 150), Others { busy: true, high_busy: false, any_high: false });
        let names: Vec<String> = a.slices().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["slice0", "slice1"]);
    }

    #[test]
    fn a_full_board_and_a_bad_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = board_path(dir.path(), "GPU-1");
        let board = Board::open_or_create(&path).unwrap();
        for i in 0..BOARD_RECORDS {
            board.claim(&format!("slice{i}"), Priority::Normal, 1).unwrap();
        }
        assert!(matches!(board.claim("one-more", Priority::Normal, 1), Err(BoardError::Full { .. })));
        std::fs::write(&path, b"scribbled").unwrap();
        assert!(matches!(Board::open(&path), Err(BoardError::Corrupt { .. })));
        std::fs::write(&path, vec![0u8; BOARD_SIZE]).unwrap();
        assert!(matches!(Board::open(&path), Err(BoardError::Corrupt { .. })));
    }
}
