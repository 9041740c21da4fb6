//! The board: one small file per GPU where the slices sharing that GPU say who they are and
//! when they last used it, so that compute pacing can see the others.
//!
//! `<state_dir>/gpus/<gpu uuid>/board`, a zram block device on the host (so no container can
//! truncate or grow it, [`crate::shm::zram`]), bound into every container that has a slice on
//! that GPU. Its layout is [`BoardFile`], defined once here (8192 bytes, layout version
//! [`BOARD_VERSION`]; the tables in `docs/board.md` are checked against it by a test):
//!
//! ```text
//! offset 0    BoardHeader (64 bytes): magic "GPUSLBD\0", layout version, record size and count
//! offset 64   Record[127], 64 bytes each: state (free/used), priority, the slice's name (hash
//!             and text), its share, and when it last ran or wanted to run (CLOCK_MONOTONIC ns)
//! ```
//!
//! 127 records: more than the most slices one GPU can have (`split_count` and explicit slices
//! are both limited to [`crate::config::MAX_SPLIT_COUNT`], 64), with room for the records of
//! slices a new config has dropped until `generate` clears them.
//!
//! A slice's record is claimed by name by `gpuslice-cdi generate`, the hook or the first
//! process of the slice, whichever comes first. A claim that finds no record of its slice takes
//! the board's lock (an OFD lock on byte 0, with an in-process mutex for threads; waited for
//! until a deadline, never for ever), looks again (another process may have claimed the slice
//! while it waited), and only then fills a free record and publishes it by setting its state
//! last: so one slice has one record, and no reader sees a half-written one. Processes then only
//! move `last_active_ns` forward, without the lock. Every field is an atomic.
//!
//! **Advisory, never fatal.** Nothing here is trusted for limits, and nothing here can stop a
//! container from starting: a container that scribbles on the board can only mislead the pacing
//! of the slices on its own GPU about who is busy (the cooperative part of software slicing, see
//! the README). Every read is bounds-checked; a record whose activity time lies in the future
//! (more than [`FUTURE_SLACK_NS`] past the latest time this process has seen) is ignored, and a
//! slice's own touch replaces such a time; a full, locked or damaged board leaves pacing without
//! the others' activity. The hook repairs a damaged board in place ([`Board::repair`]), and
//! `generate` rebuilds it from the config ([`Board::rebuild`]), dropping records of slices that
//! no longer exist and forged ones.

use std::ffi::OsStr;
use std::io;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shared_struct;
use crate::shm::atomic::{AtomicArray, AtomicU64, Ordering};
use crate::shm::{Mapping, ShmError, lock};

/// First bytes of every board file.
pub const BOARD_MAGIC: [u8; 8] = *b"GPUSLBD\0";
/// Layout version of [`BoardFile`]; bump on any change to it. Version 2 has 127 records in
/// 8192 bytes; version 1 had 63 in 4096.
pub const BOARD_VERSION: u32 = 2;
/// Slices one GPU's board can hold.
pub const BOARD_RECORDS: usize = 127;
/// How far past the latest time a process has seen an activity time may lie and still be
/// believed (clocks are `CLOCK_MONOTONIC`, shared by every process on the machine; this covers
/// coarse clocks and scheduling, not skew).
pub const FUTURE_SLACK_NS: u64 = 1_000_000_000;
/// How long the board's lock is waited for: it is only held to claim a record.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_millis(500);
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

// The layout of version 2. A change here is a new layout version: bump BOARD_VERSION (and
// update docs/board.md, which a test compares with these definitions).
const _: () = assert!(size_of::<BoardHeader>() == 64 && size_of::<Record>() == 64 && BOARD_SIZE == 8192);
const _: () = assert!(BOARD_RECORDS >= crate::config::MAX_SPLIT_COUNT as usize, "a record for every slice of a GPU");

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

/// A slice as the config has it, for [`Board::rebuild`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardSlice {
    pub name: String,
    pub priority: Priority,
    pub cores: u32,
}

/// What [`Board::rebuild`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Records cleared: slices the config no longer has, duplicates, forged or damaged ones.
    pub dropped: usize,
    /// Records claimed for slices that had none.
    pub claimed: usize,
    /// The board's lock could not be had in time; the rebuild went ahead without it.
    pub unlocked: bool,
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
    #[error("{path}: its lock stayed held by another process for {:.1} s", waited.as_secs_f64())]
    Busy { path: PathBuf, waited: Duration },
}

impl BoardError {
    fn from_shm(path: &Path, err: ShmError) -> Self {
        let corrupt = |reason| BoardError::Corrupt { path: path.to_owned(), reason };
        match err {
            ShmError::Io { source, .. } => BoardError::Io { path: path.to_owned(), source },
            ShmError::NotRegular { .. } => corrupt("not a regular file or a block device"),
            ShmError::Size { .. } => corrupt("wrong size"),
        }
    }

    /// Whether the board does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BoardError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A mapped board.
#[derive(Debug)]
pub struct Board {
    map: Mapping<BoardFile>,
    /// Serialises this process's claims; the board's OFD lock, shared by every thread using
    /// this open description, cannot.
    claims: Mutex<()>,
    /// The latest time this process touched its record at: activity times further ahead than
    /// [`FUTURE_SLACK_NS`] are not believed.
    seen_ns: AtomicU64,
    lock_wait: Duration,
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

    /// Frees the record: its state first, so no reader takes the cleared fields for a slice's.
    fn clear(&self) {
        self.state.store(FREE, Ordering::Release);
        self.store(&RecordValues {
            state: FREE,
            priority: 0,
            name_hash: 0,
            last_active_ns: 0,
            cores: 0,
            reserved: 0,
            name: [0; NAME_TEXT],
        });
    }
}

fn init(b: &BoardFile) {
    b.header.store(&BoardHeaderValues::current());
}

impl Board {
    /// Opens the board at `path`, creating it as a plain file (and its directory, mode 0755) if
    /// missing: for tests and tools; on a node, `generate` publishes boards on devices.
    pub fn open_or_create(path: &Path) -> Result<Board, BoardError> {
        let io_err = |source| BoardError::Io { path: path.to_owned(), source };
        if let Err(e) = Self::open(path) {
            if !e.is_not_found() {
                return Err(e);
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            crate::fsutil::create_dir_all_mode(dir, 0o755).map_err(io_err)?;
            // Every process on the GPU writes here, whatever its uid.
            Mapping::<BoardFile>::create(path, 0o666, init).map_err(|e| BoardError::from_shm(path, e))?;
        }
        Board::open(path)
    }

    /// Publishes a fresh board at `path` on a new zram device, in place of whatever is there
    /// (needs root; its directory must exist).
    pub fn publish(path: &Path) -> Result<crate::shm::zram::Device, BoardError> {
        Mapping::<BoardFile>::publish_device(path, 0o666, init).map_err(|e| BoardError::from_shm(path, e))
    }

    /// Opens and maps an existing board, checking its header and size.
    pub fn open(path: &Path) -> Result<Board, BoardError> {
        let board = Self::from_map(Mapping::<BoardFile>::open(path).map_err(|e| BoardError::from_shm(path, e))?);
        board.check_header()?;
        Ok(board)
    }

    /// Opens the board `name` of the directory `dir` (`openat`, no symlink followed), checking
    /// its header and size; `shown` names it in messages.
    pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<Board, BoardError> {
        let map = Mapping::<BoardFile>::open_at(dir, name, shown).map_err(|e| BoardError::from_shm(shown, e))?;
        let board = Self::from_map(map);
        board.check_header()?;
        Ok(board)
    }

    /// Opens a board whose contents may be damaged and repairs them in place if so
    /// ([`Board::repair`]); returns whether anything was repaired. A file of the wrong size or
    /// kind is an error.
    pub fn open_repairing(path: &Path) -> Result<(Board, bool), BoardError> {
        let board = Self::from_map(Mapping::<BoardFile>::open(path).map_err(|e| BoardError::from_shm(path, e))?);
        let repaired = board.repair();
        Ok((board, repaired))
    }

    fn from_map(map: Mapping<BoardFile>) -> Board {
        Board { map, claims: Mutex::new(()), seen_ns: AtomicU64::new(0), lock_wait: DEFAULT_LOCK_WAIT }
    }

    fn check_header(&self) -> Result<(), BoardError> {
        if self.map.get().header.load() != BoardHeaderValues::current() {
            return Err(BoardError::Corrupt { path: self.path().to_owned(), reason: "wrong header" });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// Whether the board is on a block device, which no process can truncate or grow.
    pub fn is_device(&self) -> bool {
        self.map.is_device()
    }

    fn record(&self, index: usize) -> &Record {
        &self.map.get().records[index]
    }

    fn find(&self, name: &Name) -> Option<usize> {
        (0..BOARD_RECORDS).find(|&i| self.record(i).holds(name))
    }

    /// Runs `f` holding the board's lock, waiting for it until the deadline.
    fn locked<T>(&self, f: impl FnOnce() -> T) -> Result<T, BoardError> {
        let start = Instant::now();
        let _threads = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let _processes =
            lock::lock_with_deadline(self.map.file(), BOARD_LOCK, Some(start + self.lock_wait)).map_err(|source| {
                if source.kind() == io::ErrorKind::TimedOut {
                    BoardError::Busy { path: self.path().to_owned(), waited: start.elapsed() }
                } else {
                    BoardError::Io { path: self.path().to_owned(), source }
                }
            })?;
        Ok(f())
    }

    /// The record of slice `name`, claimed if it has none; its priority and share are (re)set.
    pub fn claim(&self, name: &str, priority: Priority, cores: u32) -> Result<usize, BoardError> {
        let name = Name::new(name);
        let index = match self.find(&name) {
            Some(i) => i,
            None => self.locked(|| self.claim_new(&name))??,
        };
        let r = self.record(index);
        r.priority.store(u32::from(priority == Priority::High), Ordering::Relaxed);
        r.cores.store(cores, Ordering::Relaxed);
        Ok(index)
    }

    /// Claims a record for `name` (under the board's lock), unless someone did while we waited.
    fn claim_new(&self, name: &Name) -> Result<usize, BoardError> {
        if let Some(i) = self.find(name) {
            return Ok(i);
        }
        let index = (0..BOARD_RECORDS)
            .find(|&i| self.record(i).state.load(Ordering::Acquire) == FREE)
            .ok_or_else(|| BoardError::Full { path: self.path().to_owned() })?;
        let r = self.record(index);
        r.last_active_ns.store(0, Ordering::Relaxed);
        r.name.store_all(name.text, Ordering::Relaxed);
        r.name_hash.store(name.hash, Ordering::Relaxed);
        r.state.store(USED, Ordering::Release);
        Ok(index)
    }

    /// Marks slice record `index` as running (or wanting to run) at `now_ns`. The time only
    /// moves forward, except that one lying in the future (a forged one) is replaced.
    pub fn touch(&self, index: usize, now_ns: u64) {
        self.seen_ns.fetch_max(now_ns, Ordering::Relaxed);
        if index < BOARD_RECORDS {
            let horizon = now_ns.saturating_add(FUTURE_SLACK_NS);
            let _ = self
                .record(index)
                .last_active_ns
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t < now_ns || t > horizon).then_some(now_ns));
        }
    }

    /// What the slices other than `own` did after `since_ns`. A record whose time lies further
    /// in the future than [`FUTURE_SLACK_NS`] (from the latest time this process touched its
    /// record at, or `since_ns`) is ignored altogether.
    pub fn others(&self, own: usize, since_ns: u64) -> Others {
        let horizon = self.seen_ns.load(Ordering::Relaxed).max(since_ns).saturating_add(FUTURE_SLACK_NS);
        let mut others = Others::default();
        for i in (0..BOARD_RECORDS).filter(|&i| i != own) {
            let r = self.record(i);
            if r.state.load(Ordering::Acquire) != USED {
                continue;
            }
            let last = r.last_active_ns.load(Ordering::Relaxed);
            if last > horizon {
                continue;
            }
            let high = r.priority.load(Ordering::Relaxed) == 1;
            let busy = last > since_ns;
            others.busy |= busy;
            others.high_busy |= busy && high;
            others.any_high |= high;
        }
        others
    }

    /// Puts a damaged board right in place: a header that is not this layout's is rewritten and
    /// records of unknown state are cleared, under the board's lock if it can be had in time
    /// (a board is advisory: a held lock does not stop the repair). Returns whether anything
    /// was wrong.
    pub fn repair(&self) -> bool {
        let fix = || {
            let mut repaired = false;
            if self.check_header().is_err() {
                self.map.get().header.store(&BoardHeaderValues::current());
                repaired = true;
            }
            for i in 0..BOARD_RECORDS {
                let state = self.record(i).state.load(Ordering::Acquire);
                if state != FREE && state != USED {
                    self.record(i).clear();
                    repaired = true;
                }
            }
            repaired
        };
        self.locked(fix).unwrap_or_else(|_| fix())
    }

    /// Makes the board hold exactly `slices` (the config's slices on this GPU): a damaged
    /// header is rewritten; each slice keeps its record (the first, if there are several) with
    /// its priority and share set from the config and an activity time in the future reset;
    /// every other record (a slice the config no longer has, a duplicate, a forged or damaged
    /// one) is cleared; slices without a record get one. Under the board's lock if it can be
    /// had in time; otherwise it goes ahead without (a claim racing it may add a duplicate
    /// record, which pacing tolerates).
    pub fn rebuild(&self, slices: &[BoardSlice], now_ns: u64) -> Result<Rebuilt, BoardError> {
        let work = |unlocked: bool| {
            let mut done = Rebuilt { unlocked, ..Rebuilt::default() };
            if self.check_header().is_err() {
                self.map.get().header.store(&BoardHeaderValues::current());
            }
            let names: Vec<Name> = slices.iter().map(|s| Name::new(&s.name)).collect();
            let mut kept = vec![None; slices.len()];
            for i in 0..BOARD_RECORDS {
                let r = self.record(i);
                let state = r.state.load(Ordering::Acquire);
                if state == FREE {
                    continue;
                }
                match names.iter().position(|n| r.holds(n)) {
                    Some(s) if kept[s].is_none() => kept[s] = Some(i),
                    _ => {
                        r.clear();
                        done.dropped += 1;
                    }
                }
            }
            let horizon = now_ns.saturating_add(FUTURE_SLACK_NS);
            for (s, slice) in slices.iter().enumerate() {
                let index = match kept[s] {
                    Some(i) => i,
                    None => {
                        let i = self.claim_new(&names[s])?;
                        done.claimed += 1;
                        i
                    }
                };
                let r = self.record(index);
                r.priority.store(u32::from(slice.priority == Priority::High), Ordering::Relaxed);
                r.cores.store(slice.cores, Ordering::Relaxed);
                if r.last_active_ns.load(Ordering::Relaxed) > horizon {
                    r.last_active_ns.store(0, Ordering::Relaxed);
                }
            }
            Ok(done)
        };
        match self.locked(|| work(false)) {
            Ok(result) => result,
            Err(BoardError::Busy { .. }) => work(true),
            Err(e) => Err(e),
        }
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
    fn a_slice_per_record_up_to_the_most_a_gpu_can_have() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::open_or_create(&board_path(dir.path(), "GPU-1")).unwrap();
        let max = crate::config::MAX_SPLIT_COUNT as usize;
        let claimed: std::collections::BTreeSet<usize> =
            (0..max).map(|i| board.claim(&format!("slice{i}"), Priority::Normal, 1).unwrap()).collect();
        assert_eq!(claimed.len(), max);
        assert_eq!(board.slices().len(), max);
    }

    #[test]
    fn activity_in_the_future_is_not_believed_and_a_touch_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = board_path(dir.path(), "GPU-1");
        let mine = Board::open_or_create(&path).unwrap();
        let forger = Board::open(&path).unwrap();
        let own = mine.claim("slice0", Priority::Normal, 50).unwrap();
        let fake = forger.claim("fake", Priority::High, 100).unwrap();
        let now = 1_000 * FUTURE_SLACK_NS;
        mine.touch(own, now);
        // A record that says it is busy for the next hour.
        forger.record(fake).last_active_ns.store(now + 3600 * FUTURE_SLACK_NS, Ordering::Relaxed);
        assert_eq!(mine.others(own, now - 100), Others::default(), "a future time is ignored, priority and all");
        // Within the slack, a time a little ahead (another process's clock read later) counts.
        forger.record(fake).last_active_ns.store(now + FUTURE_SLACK_NS / 2, Ordering::Relaxed);
        assert_eq!(mine.others(own, now - 100), Others { busy: true, high_busy: true, any_high: true });
        // A slice's own record with a forged future time: its next touch puts the time right.
        mine.record(own).last_active_ns.store(u64::MAX, Ordering::Relaxed);
        mine.touch(own, now + 5);
        assert_eq!(mine.record(own).last_active_ns.load(Ordering::Relaxed), now + 5);
        mine.touch(own, now + 3);
        assert_eq!(mine.record(own).last_active_ns.load(Ordering::Relaxed), now + 5, "otherwise only forward");
    }

    #[test]
    fn rebuild_keeps_the_configs_slices_and_drops_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = board_path(dir.path(), "GPU-1");
        let board = Board::open_or_create(&path).unwrap();
        let s0 = board.claim("slice0", Priority::Normal, 50).unwrap();
        board.touch(s0, 777);
        let forged = board.claim("slice1", Priority::High, 100).unwrap();
        board.record(forged).last_active_ns.store(u64::MAX - 1, Ordering::Relaxed);
        board.claim("gone", Priority::Normal, 10).unwrap();
        // A duplicate of slice0 and a record of an unknown state.
        board.record(40).store(&RecordValues { ..board.record(s0).load() });
        board.record(41).state.store(9, Ordering::Relaxed);
        let config = [
            BoardSlice { name: "slice0".into(), priority: Priority::Normal, cores: 30 },
            BoardSlice { name: "slice1".into(), priority: Priority::Normal, cores: 30 },
            BoardSlice { name: "slice2".into(), priority: Priority::Normal, cores: 40 },
        ];
        let done = board.rebuild(&config, 1_000).unwrap();
        assert_eq!(done, Rebuilt { dropped: 3, claimed: 1, unlocked: false });
        let got: Vec<(String, Priority, u32)> =
            board.slices().into_iter().map(|s| (s.name, s.priority, s.cores)).collect();
        assert_eq!(
            got,
            [
                ("slice0".to_owned(), Priority::Normal, 30),
                ("slice1".to_owned(), Priority::Normal, 30),
                ("slice2".to_owned(), Priority::Normal, 40)
            ]
        );
        assert_eq!(board.record(s0).last_active_ns.load(Ordering::Relaxed), 777, "real activity is kept");
        assert_eq!(board.record(forged).last_active_ns.load(Ordering::Relaxed), 0, "a future time is reset");
        assert_eq!(board.rebuild(&config, 1_000).unwrap(), Rebuilt::default(), "a second rebuild changes nothing");
    }

    #[test]
    fn a_damaged_board_is_repaired_in_place() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = board_path(dir.path(), "GPU-1");
        let board = Board::open_or_create(&path).unwrap();
        let s0 = board.claim("slice0", Priority::High, 50).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"scribble", 0).unwrap();
        let state3 = (std::mem::offset_of!(BoardFile, records) + 3 * size_of::<Record>()) as u64;
        file.write_all_at(&7u32.to_ne_bytes(), state3).unwrap();
        assert!(matches!(Board::open(&path), Err(BoardError::Corrupt { .. })));
        let (fixed, repaired) = Board::open_repairing(&path).unwrap();
        assert!(repaired);
        assert_eq!(fixed.slices().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["slice0"]);
        assert_eq!(Board::open(&path).unwrap().claim("slice0", Priority::High, 50).unwrap(), s0);
        assert!(!fixed.repair(), "nothing left to repair");
    }

    #[test]
    fn a_held_board_lock_ends_a_claim_at_its_deadline_but_not_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = board_path(dir.path(), "GPU-1");
        let board = Board::open_or_create(&path).unwrap();
        let squatter = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let _held = lock::lock(&squatter, BOARD_LOCK).unwrap();
        let start = Instant::now();
        assert!(matches!(board.claim("slice0", Priority::Normal, 50), Err(BoardError::Busy { .. })));
        assert!(start.elapsed() >= DEFAULT_LOCK_WAIT && start.elapsed() < 10 * DEFAULT_LOCK_WAIT);
        let config = [BoardSlice { name: "slice0".into(), priority: Priority::Normal, cores: 50 }];
        assert_eq!(board.rebuild(&config, 1).unwrap(), Rebuilt { dropped: 0, claimed: 1, unlocked: true });
        assert_eq!(board.claim("slice0", Priority::Normal, 50).unwrap(), 0, "claimed slices need no lock");
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
