//! The board: one small file per GPU where the slices sharing that GPU say who they are and
//! when they last used it, so that compute pacing can see the others.
//!
//! `<state_dir>/gpus/<gpu uuid>/board`, mounted read-write into every container that has a
//! slice on that GPU. Its layout is [`BoardFile`], defined once here (4096 bytes, layout
//! version [`BOARD_VERSION`]; the tables in `docs/board.md` are checked against it by a test):
//!
//! ```text
//! offset 0    BoardHeader (64 bytes): magic "GPUSLBD\0", layout version, record size and count
//! offset 64   Record[63], 64 bytes each: state (free/used), priority, the slice's name (hash
//!             and text), its share, and when it last ran or wanted to run (CLOCK_MONOTONIC ns)
//! ```
//!
//! A slice's record is claimed by name by `gpuslice-cdi generate`, the hook or the first
//! process of the slice, whichever comes first. A claim that finds no record of its slice takes
//! the board's lock (an OFD lock on byte 0, with an in-process mutex for threads), looks again
//! (another process may have claimed the slice while it waited), and only then fills a free
//! record and publishes it by setting its state last: so one slice has one record, and no
//! reader sees a half-written one. Processes then only move `last_active_ns` forward, without
//! the lock. Every field is an atomic.
//!
//! Nothing here is trusted for limits: a container that scribbles on the board can only
//! mislead the pacing of the slices on its own GPU about who is busy (the cooperative part of
//! software slicing, see the README), and every read is bounds-checked.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::shared_struct;
use crate::shm::atomic::{AtomicArray, Ordering};
use crate::shm::{Mapping, ShmError, lock};

/// First bytes of every board file.
pub const BOARD_MAGIC: [u8; 8] = *b"GPUSLBD\0";
/// Layout version of [`BoardFile`]; bump on any change to it.
pub const BOARD_VERSION: u32 = 1;
/// Slices one GPU's board can hold.
pub const BOARD_RECORDS: usize = 63;
/// Bytes of a slice's name kept as text.
const NAME_TEXT: usize = 32;

shared_struct! {
    /// The start of the board, written before the file is published.
    pub struct BoardHeader as BoardHeaderValues {
        pub magic: [u8; 8],
        pub version: u32,
        pub record_size: u32,
        pub record_count: u32,
        reserved: [u32; 11],
    }
}

shared_struct! {
    /// One slice's record.
    pub struct Record as RecordValues {
        /// Free (0) or used (1); set last when a record is claimed.
        pub state: u32,
        /// High (1) or normal (0).
        pub priority: u32,
        /// FNV-1a of the name, never 0. Records are matched on it and the text.
        pub name_hash: u64,
        /// When the slice last ran or wanted to run, `CLOCK_MONOTONIC` nanoseconds.
        pub last_active_ns: u64,
        /// The slice's share of the GPU, in percent.
        pub cores: u32,
        reserved: u32,
        /// The name's first bytes, NUL padded.
        pub name: [u8; NAME_TEXT],
    }
}

shared_struct! {
    /// The whole board file: the one definition of its layout.
    pub struct BoardFile {
        pub header: BoardHeader,
        pub records: [Record; BOARD_RECORDS],
    }
}

/// Size of the whole file.
pub const BOARD_SIZE: usize = size_of::<BoardFile>();

// The layout of version 1. A change here is a new layout version: bump BOARD_VERSION (and
// update docs/board.md, which a test compares with these definitions).
const _: () = assert!(size_of::<BoardHeader>() == 64 && size_of::<Record>() == 64 && BOARD_SIZE == 4096);

const FREE: u32 = 0;
const USED: u32 = 1;
/// The board's lock, taken to claim a record: the file's first byte.
const BOARD_LOCK: Range<u64> = 0..1;

pub use crate::config::Priority;

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

impl BoardError {
    fn from_shm(path: &Path, err: ShmError) -> Self {
        let corrupt = |reason| BoardError::Corrupt { path: path.to_owned(), reason };
        match err {
            ShmError::Io { source, .. } => BoardError::Io { path: path.to_owned(), source },
            ShmError::NotRegular { .. } => corrupt("not a regular file"),
            ShmError::Size { .. } => corrupt("wrong size"),
        }
    }
}

/// A mapped board.
#[derive(Debug)]
pub struct Board {
    map: Mapping<BoardFile>,
    /// Serialises this process's claims; the board's OFD lock, shared by every thread using
    /// this open description, cannot.
    claims: Mutex<()>,
}

/// `<state_dir>/gpus/<uuid>/board`.
pub fn board_path(state_dir: &Path, gpu_uuid: &str) -> PathBuf {
    state_dir.join("gpus").join(gpu_uuid).join("board")
}

impl BoardHeaderValues {
    /// The header of this layout.
    fn current() -> Self {
        BoardHeaderValues {
            magic: BOARD_MAGIC,
            version: BOARD_VERSION,
            record_size: size_of::<Record>() as u32,
            record_count: BOARD_RECORDS as u32,
            reserved: [0; 11],
        }
    }
}

/// A slice's name as a record stores it.
#[derive(Debug)]
struct Name {
    hash: u64,
    text: [u8; NAME_TEXT],
}

impl Name {
    fn new(name: &str) -> Self {
        // Never 0, so that a zeroed record never matches.
        let hash =
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) | 1;
        let mut text = [0u8; NAME_TEXT];
        let n = name.len().min(NAME_TEXT);
        text[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self { hash, text }
    }
}

impl Record {
    fn holds(&self, name: &Name) -> bool {
        self.state.load(Ordering::Acquire) == USED
            && self.name_hash.load(Ordering::Relaxed) == name.hash
            && self.name.load_all(Ordering::Relaxed) == name.text
    }
}

impl Board {
    /// Opens the board at `path`, creating it (and its directory, mode 0755) if missing.
    pub fn open_or_create(path: &Path) -> Result<Board, BoardError> {
        let io_err = |source| BoardError::Io { path: path.to_owned(), source };
        if let Err(e) = Self::open(path) {
            if !matches!(&e, BoardError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound) {
                return Err(e);
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            crate::fsutil::create_dir_all_mode(dir, 0o755).map_err(io_err)?;
            // Every process on the GPU writes here, whatever its uid.
            Mapping::<BoardFile>::create(path, 0o666, |b| b.header.store(&BoardHeaderValues::current()))
                .map_err(|e| BoardError::from_shm(path, e))?;
        }
        Board::open(path)
    }

    /// Opens and maps an existing board, checking its header and size.
    pub fn open(path: &Path) -> Result<Board, BoardError> {
        let map = Mapping::<BoardFile>::open(path).map_err(|e| BoardError::from_shm(path, e))?;
        if map.get().header.load() != BoardHeaderValues::current() {
            return Err(BoardError::Corrupt { path: path.to_owned(), reason: "wrong header" });
        }
        Ok(Board { map, claims: Mutex::new(()) })
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    fn record(&self, index: usize) -> &Record {
        &self.map.get().records[index]
    }

    fn find(&self, name: &Name) -> Option<usize> {
        (0..BOARD_RECORDS).find(|&i| self.record(i).holds(name))
    }

    /// The record of slice `name`, claimed if it has none; its priority and share are (re)set.
    pub fn claim(&self, name: &str, priority: Priority, cores: u32) -> Result<usize, BoardError> {
        let name = Name::new(name);
        let index = match self.find(&name) {
            Some(i) => i,
            None => self.claim_new(&name)?,
        };
        let r = self.record(index);
        r.priority.store(u32::from(priority == Priority::High), Ordering::Relaxed);
        r.cores.store(cores, Ordering::Relaxed);
        Ok(index)
    }

    /// Claims a record for `name` under the board's lock, unless someone did while we waited.
    fn claim_new(&self, name: &Name) -> Result<usize, BoardError> {
        let _threads = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let _processes = lock::lock(self.map.file(), BOARD_LOCK)
            .map_err(|source| BoardError::Io { path: self.path().to_owned(), source })?;
        if let Some(i) = self.find(name) {
            return Ok(i);
        }
        let index = (0..BOARD_RECORDS)
            .find(|&i| self.record(i).state.load(Ordering::Acquire) == FREE)
            .ok_or_else(|| BoardError::Full { path: self.path().to_owned() })?;
        let r = self.record(index);
        r.name.store_all(name.text, Ordering::Relaxed);
        r.name_hash.store(name.hash, Ordering::Relaxed);
        r.state.store(USED, Ordering::Release);
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
                let bytes = r.name.load_all(Ordering::Relaxed);
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

    #[test]
    fn racing_claims_of_one_slice_make_one_record() {
        // Four threads open the board themselves (their own open file descriptions, as
        // processes), two share one; every round they all claim the same slice at once on a
        // fresh board.
        let dir = tempfile::tempdir().unwrap();
        for round in 0..200 {
            let path = board_path(dir.path(), &format!("GPU-{round}"));
            let shared = Board::open_or_create(&path).unwrap();
            let start = std::sync::Barrier::new(6);
            let claimed: Vec<usize> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..6)
                    .map(|t| {
                        let (path, start, shared) = (&path, &start, &shared);
                        s.spawn(move || {
                            let own = (t < 4).then(|| Board::open(path).unwrap());
                            let board = own.as_ref().unwrap_or(shared);
                            start.wait();
                            board.claim("slice0", Priority::Normal, 50).unwrap()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            let records = shared.slices();
            assert_eq!(records.len(), 1, "round {round}: {records:?}, claims {claimed:?}");
            assert!(claimed.iter().all(|&i| i == claimed[0]), "round {round}: {claimed:?}");
        }
    }

    #[test]
    fn the_board_is_written_from_its_definition() {
        let dir = tempfile::tempdir().unwrap();
        let path = board_path(dir.path(), "GPU-1");
        let board = Board::open_or_create(&path).unwrap();
        let index = board.claim("slice3", Priority::High, 40).unwrap();
        board.touch(index, 1234);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), BOARD_SIZE);
        assert_eq!(&bytes[..size_of::<BoardHeader>()], crate::shm::atomic::bytes_of(&BoardHeaderValues::current()));
        assert_eq!(&bytes[..8], b"GPUSLBD\0");
        let at = std::mem::offset_of!(BoardFile, records) + index * size_of::<Record>();
        let field = |f: usize, n: usize| &bytes[at + f..at + f + n];
        assert_eq!(field(std::mem::offset_of!(Record, state), 4), USED.to_ne_bytes());
        assert_eq!(field(std::mem::offset_of!(Record, priority), 4), 1u32.to_ne_bytes());
        assert_eq!(field(std::mem::offset_of!(Record, cores), 4), 40u32.to_ne_bytes());
        assert_eq!(field(std::mem::offset_of!(Record, last_active_ns), 8), 1234u64.to_ne_bytes());
        assert_eq!(&field(std::mem::offset_of!(Record, name), NAME_TEXT)[..7], b"slice3\0");
    }
}
