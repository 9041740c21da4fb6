//! The shared region: one file per slice where every process on the slice, in every container
//! that shares it, accounts the device memory it holds, and its processes pace their GPU time.
//!
//! `<state_dir>/slices/<name>/region`, a fixed-size file mapped `MAP_SHARED` by each process.
//! Its layout is [`RegionFile`], defined once here (layout version [`REGION_VERSION`]; the
//! tables in `docs/region.md` are checked against it by a test):
//!
//! ```text
//! offset 0      Header: magic "GPUSLRG\0", layout version, the layout's sizes and offsets, a
//!               checksum of those, and `slots_used`, the high-water mark of slots handed out
//! offset 512    Compute: the slice's pacing clock and GPU time totals
//! offset 1024   ContainerRecord[48]: state (free/attached), registration time, a hash of the
//!               container id, the id's length and its first 40 bytes as text
//! offset 4096   Slot[1024]: state (free/active), pid (informational, in the owner's PID
//!               namespace), a registration token, bytes charged, registration time, the
//!               owner's container
//! ```
//!
//! **A file no container can truncate or grow.** On the host the region is a zram block device
//! ([`Region::publish`], [`crate::shm::zram`]), bound into each container of the slice: its
//! size cannot change, so no process mapping it can be made to fault. (A plain file, which
//! [`Region::create`] still makes for tests and tools, is for processes outside containers.)
//!
//! **Everything is atomic.** Containers can write the file, so every field is an atomic and is
//! read into a snapshot that is validated before use (the header at open, the slot high-water
//! mark and every state at each read); nothing is read through a plain reference.
//!
//! **Liveness without PIDs.** A process registering takes an `fcntl` *open file description*
//! (OFD) write lock on the first byte of its slot and holds it for its lifetime. The kernel
//! drops the lock when the process dies, however it dies, so "is this slot's owner alive?" is
//! one `F_OFD_GETLK`, valid across PID namespaces (the lock lives on the inode, and every
//! container's mount of the file is the same inode). No `/proc` scans, no host PIDs.
//!
//! **Exact limit across processes.** Charging takes an OFD write lock on byte 0 of the file
//! (the region lock), sums the active slots, and adds to the caller's own slot only if the sum
//! stays within the limit. The lock is waited for until a deadline ([`Region::with_lock_wait`],
//! [`DEFAULT_LOCK_WAIT`] unless the opener says otherwise), never for ever: any process of the
//! slice can take it and keep it, and then callers get [`RegionError::Busy`]. A process killed while holding the region lock loses the lock with
//! its life, and the only thing it can have half-done is a single atomic update of its own
//! slot, which dies with it: nothing wedges and nothing is double counted. Frees need no lock:
//! a process only ever subtracts from its own slot. Every update of a slot's `used` is an
//! atomic read-modify-write, so threads of one process sharing a slot lose nothing.
//!
//! **Reclaiming the dead.** Dead slots are freed (usage dropped, slot reused) when an
//! allocation would otherwise fail, when a process registers and finds no free slot, and
//! whenever [`Region::reclaim_dead`] is called (the shim does so at most once a second from
//! memory queries; the hook's `poststop` does too).
//!
//! **Containers.** The OCI hook records each container that gets the slice
//! ([`Region::attach_container`] at create) and removes it at `poststop`
//! ([`Region::detach_container`]), which also reclaims dead slots: slots do not say which
//! container they belong to, but by `poststop` every process of the container is dead, so
//! reclaiming the dead frees what they held (and whatever else on the slice died). The table is
//! for people and tools: accounting never reads it, and beyond [`CONTAINER_COUNT`] containers
//! at once the oldest record is reused, so past that it is incomplete. Container ids come from
//! the runtime and are arbitrary text; a record keeps a hash of the whole id and a bounded,
//! printable prefix.
//!
//! **Slots per container.** A process holds one slot for its lifetime; each slot records which
//! container its owner is in (a number the owner's mount of the slice state gives it, see the
//! interception library), and no container's processes may hold more than
//! [`CONTAINER_SLOT_QUOTA`] slots, so one container cannot take the whole table through the
//! library. (A process that takes the slots' lock bytes itself, without the library, is not
//! bound by this: see `docs/region.md`.)
//!
//! **Creation** is done by `gpuslice-cdi generate` on the host ([`Region::publish`]: the file
//! is written whole on its device under a temporary name, then renamed into place). Everything
//! that reads the region checks the header, the size and every slot's (or container record's)
//! state, so a scribbled-on region is reported as [`RegionError::Corrupt`] instead of being
//! trusted; the hook and `generate` repair it in place ([`Region::repair`]). A region of another
//! layout version is refused, naming both versions. A region is per slice, so a container that
//! corrupts its own hurts no other slice.

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::offset_of;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shared_struct;
use crate::shm::atomic::{AtomicArray, AtomicU64, Ordering, bytes_of};
use crate::shm::{Mapping, ShmError, lock};

/// First bytes of every region file.
pub const REGION_MAGIC: [u8; 8] = *b"GPUSLRG\0";
/// Layout version of [`RegionFile`]; bump on any change to it. Version 5 counts allocations
/// refused for the limit (per slice and per process); version 4 records each slot's
/// container; version 3 described the compute block and the container table in the header;
/// version 2 had them without saying so.
pub const REGION_VERSION: u32 = 5;
/// Processes one slice can hold at once.
pub const SLOT_COUNT: usize = 1024;
/// Slots the processes of one container may hold at once: a quarter of the table, so a
/// container that starts processes without end leaves room for three others at its size.
pub const CONTAINER_SLOT_QUOTA: usize = SLOT_COUNT / 4;
/// How long the region lock is waited for unless the opener says otherwise. Its holders keep it
/// for microseconds (a reclaim of the whole table, the longest, takes about a millisecond), so
/// this is only ever reached when a process holds it on purpose.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(1);
/// Containers the table records at once; beyond that the oldest record is reused.
pub const CONTAINER_COUNT: usize = 48;
/// Bytes of a container id kept as text.
pub const CONTAINER_ID_TEXT: usize = 40;

shared_struct! {
    /// The start of the file. All but `slots_used` is written before the file is published.
    pub struct Header as HeaderValues {
        /// `GPUSLRG\0`; at offset 0 in every layout version.
        pub magic: [u8; 8],
        /// At offset 8 in every layout version, so any release can name the version it found.
        pub version: u32,
        /// Bytes before the slot table.
        pub header_size: u32,
        pub slot_size: u32,
        pub slot_count: u32,
        pub total_size: u64,
        pub compute_offset: u32,
        pub compute_size: u32,
        pub container_offset: u32,
        pub container_size: u32,
        pub container_count: u32,
        reserved1: u32,
        /// FNV-1a of the bytes of every field above.
        pub checksum: u64,
        /// One past the highest slot index ever handed out; sums stop there.
        pub slots_used: u32,
        reserved2: u32,
    }
}

shared_struct! {
    /// The slice's compute accounting, shared by every process on it (the pacing in the
    /// interception library). All times are `CLOCK_MONOTONIC` nanoseconds, which every process
    /// and container on the machine shares.
    ///
    /// Pacing is a virtual clock (the generic cell rate algorithm): charging `g` ns of GPU time
    /// at a share of `p` % moves `virtual_ns` to `max(virtual_ns, now - burst) + g × 100 / p`,
    /// and work may start while `virtual_ns` is not ahead of now. Over any window the slice's
    /// GPU time is then at most `p` % of the window plus one burst. One compare-and-swap per
    /// charge; a process killed at any point leaves a valid value behind.
    pub struct Compute as ComputeValues {
        /// The pacing clock: how far the slice's charged GPU time, spread at its share, reaches.
        pub virtual_ns: u64,
        /// GPU time charged by the slice's processes since the region was created.
        pub gpu_ns_total: u64,
        /// Time the slice's processes spent held back by pacing.
        pub held_ns_total: u64,
        /// When GPU time was last charged (a heartbeat of activity).
        pub last_charge_ns: u64,
        /// The end of the latest GPU work charged: work of two processes that overlaps in time
        /// is charged once.
        pub busy_until_ns: u64,
        /// Allocations the interception library refused for the slice's memory limit, ever.
        pub refused_total: u64,
        reserved: [u64; 2],
    }
}

shared_struct! {
    /// One container using the slice, recorded by the hook. Written only under the region lock.
    pub struct ContainerRecord as ContainerRecordValues {
        pub state: u32,
        /// Length of the whole id in bytes (saturating), so a reader can tell the text is cut
        /// short.
        pub id_len: u32,
        /// Registration time, nanoseconds since the Unix epoch; the oldest record is reused first.
        pub registered_ns: u64,
        /// FNV-1a of the whole id. Records are matched on it, the length and the text.
        pub id_hash: u64,
        /// The id's first bytes, control characters replaced by `?`, cut at a character
        /// boundary, NUL padded.
        pub id_text: [u8; CONTAINER_ID_TEXT],
    }
}

shared_struct! {
    /// One process's accounting.
    pub struct Slot as SlotValues {
        pub state: u32,
        /// The owner's PID in its own namespace, for people reading the region.
        pub pid: u32,
        /// Random per registration, so a reused slot is never mistaken for its previous owner.
        pub token: u64,
        /// Device memory charged to this process, in bytes.
        pub used: u64,
        /// Registration time, nanoseconds since the Unix epoch.
        pub registered_ns: u64,
        /// The owner's container, as its mount of the slice state identifies it (0: none).
        pub container: u64,
        /// Allocations refused to this process for the slice's memory limit.
        pub refused: u64,
        reserved: [u64; 2],
    }
}

shared_struct! {
    /// The whole region file: the one definition of its layout.
    pub struct RegionFile {
        pub header: Header,
        reserved1: [AtomicU64; (512 - size_of::<Header>()) / 8],
        pub compute: Compute,
        reserved2: [AtomicU64; (1024 - 512 - size_of::<Compute>()) / 8],
        pub containers: [ContainerRecord; CONTAINER_COUNT],
        pub slots: [Slot; SLOT_COUNT],
    }
}

/// Bytes before the slot table.
pub const HEADER_SIZE: usize = offset_of!(RegionFile, slots);
/// Size of the whole file.
pub const REGION_SIZE: usize = size_of::<RegionFile>();
/// Where the compute block starts.
pub const COMPUTE_OFFSET: usize = offset_of!(RegionFile, compute);
/// Where the container table starts.
pub const CONTAINER_TABLE_OFFSET: usize = offset_of!(RegionFile, containers);

// The layout of version 5. A change here is a new layout version: bump REGION_VERSION (and
// update docs/region.md, which a test compares with these definitions).
const _: () = {
    assert!(offset_of!(Header, magic) == 0 && offset_of!(Header, version) == 8, "fixed in every version");
    assert!(size_of::<Header>() == 72 && offset_of!(Header, checksum) == 56);
    assert!(COMPUTE_OFFSET == 512 && size_of::<Compute>() == 64);
    assert!(CONTAINER_TABLE_OFFSET == 1024 && size_of::<ContainerRecord>() == 64);
    assert!(HEADER_SIZE == 4096 && size_of::<Slot>() == 64);
    assert!(REGION_SIZE == 69_632);
};

const SLOT_FREE: u32 = 0;
const SLOT_ACTIVE: u32 = 1;
const CONTAINER_FREE: u32 = 0;
const CONTAINER_ATTACHED: u32 = 1;
/// The region lock: the file's first byte.
pub const REGION_LOCK: Range<u64> = 0..1;

impl HeaderValues {
    /// The header of a new region of layout `version` (tests write other versions).
    fn new(version: u32) -> Self {
        let mut h = HeaderValues {
            magic: REGION_MAGIC,
            version,
            header_size: HEADER_SIZE as u32,
            slot_size: size_of::<Slot>() as u32,
            slot_count: SLOT_COUNT as u32,
            total_size: REGION_SIZE as u64,
            compute_offset: COMPUTE_OFFSET as u32,
            compute_size: size_of::<Compute>() as u32,
            container_offset: CONTAINER_TABLE_OFFSET as u32,
            container_size: size_of::<ContainerRecord>() as u32,
            container_count: CONTAINER_COUNT as u32,
            reserved1: 0,
            checksum: 0,
            slots_used: 0,
            reserved2: 0,
        };
        h.checksum = h.checksum();
        h
    }

    /// The bytes the checksum covers: every field before it.
    fn described(&self) -> &[u8] {
        &bytes_of(self)[..offset_of!(Header, checksum)]
    }

    fn checksum(&self) -> u64 {
        fnv1a(self.described())
    }
}

/// Why a region cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: all {SLOT_COUNT} process slots are taken by live processes")]
    Full { path: PathBuf },
    #[error(
        "{path}: this container's processes already hold {CONTAINER_SLOT_QUOTA} of its slots, the most one container may"
    )]
    Quota { path: PathBuf },
    #[error("{path}: its lock stayed held by another process for {:.1} s", waited.as_secs_f64())]
    Busy { path: PathBuf, waited: Duration },
}

impl RegionError {
    fn from_shm(path: &Path, err: ShmError) -> Self {
        let corrupt = |reason: String| RegionError::Corrupt { path: path.to_owned(), reason };
        match err {
            ShmError::Io { source, .. } => RegionError::Io { path: path.to_owned(), source },
            ShmError::NotRegular { .. } => corrupt("not a regular file or a block device".into()),
            ShmError::Size { found, .. } => {
                corrupt(format!("{found} bytes, expected {REGION_SIZE} (truncated or not a region)"))
            }
        }
    }

    /// Whether the region's lock could not be had in time.
    pub fn is_busy(&self) -> bool {
        matches!(self, RegionError::Busy { .. })
    }
}

/// What [`Region::repair`] put right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// The header was rewritten.
    pub header: bool,
    /// Slots whose state was set from their owner's liveness (a live owner's slot made active,
    /// a dead or unknown state freed).
    pub slots: usize,
    /// Container records with an unknown state, cleared.
    pub containers: usize,
}

impl RepairReport {
    /// Whether anything was wrong.
    pub fn repaired(&self) -> bool {
        self.header || self.slots > 0 || self.containers > 0
    }
}

/// A charge that would take the slice past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{requested} bytes requested with {used} of {limit} bytes in use")]
pub struct OverLimit {
    pub requested: u64,
    pub used: u64,
    pub limit: u64,
}

/// What a process sees of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub index: usize,
    /// The owner's PID in its own namespace (as it recorded it: a hint, not proof).
    pub pid: u32,
    pub used: u64,
    pub alive: bool,
    /// Random per registration: with the index, names the process for good.
    pub token: u64,
    /// Allocations refused to it for the limit.
    pub refused: u64,
    /// Its container, as its mount of the slice state identifies it (0: none).
    pub container: u64,
}

/// What a tool sees of one container record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub index: usize,
    /// The id's first bytes as stored: at most [`CONTAINER_ID_TEXT`] bytes, control characters
    /// shown as `?`.
    pub id: String,
    /// Length of the whole id in bytes.
    pub id_len: u32,
    /// Registration time, nanoseconds since the Unix epoch.
    pub registered_ns: u64,
}

/// What [`Region::detach_container`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachReport {
    /// Whether the container had a record. It has none if it was never attached, was already
    /// detached, or its record was reused because the table was full.
    pub attached: bool,
    /// Slots of dead processes freed, anywhere on the slice.
    pub slots_reclaimed: usize,
    /// Bytes those slots had charged.
    pub bytes_reclaimed: u64,
}

/// Dead slots freed by one reclaim pass.
#[derive(Debug, Clone, Copy, Default)]
struct Reclaimed {
    slots: usize,
    bytes: u64,
}

/// A container id as a record stores it: hash and length of the whole id, bounded text.
#[derive(Debug)]
struct ContainerKey {
    hash: u64,
    len: u32,
    text: [u8; CONTAINER_ID_TEXT],
}

impl ContainerKey {
    /// What a freed record holds, so a detached id does not linger in the file.
    const CLEARED: ContainerKey = ContainerKey { hash: 0, len: 0, text: [0; CONTAINER_ID_TEXT] };

    fn new(id: &str) -> Self {
        let mut text = [0u8; CONTAINER_ID_TEXT];
        let mut n = 0;
        for c in id.chars().map(printable) {
            let end = n + c.len_utf8();
            if end > CONTAINER_ID_TEXT {
                break;
            }
            c.encode_utf8(&mut text[n..end]);
            n = end;
        }
        Self { hash: fnv1a(id.as_bytes()), len: u32::try_from(id.len()).unwrap_or(u32::MAX), text }
    }
}

/// Control characters (NUL, newlines, terminal escapes) become `?`, so the text can be shown as is.
fn printable(c: char) -> char {
    if c.is_control() { '?' } else { c }
}

impl ContainerRecord {
    fn text(&self) -> [u8; CONTAINER_ID_TEXT] {
        self.id_text.load_all(Ordering::Relaxed)
    }

    fn holds(&self, key: &ContainerKey) -> bool {
        self.id_hash.load(Ordering::Relaxed) == key.hash
            && self.id_len.load(Ordering::Relaxed) == key.len
            && self.text() == key.text
    }

    fn fill(&self, key: &ContainerKey, registered_ns: u64) {
        self.id_hash.store(key.hash, Ordering::Relaxed);
        self.id_len.store(key.len, Ordering::Relaxed);
        self.registered_ns.store(registered_ns, Ordering::Relaxed);
        self.id_text.store_all(key.text, Ordering::Relaxed);
    }

    fn info(&self, index: usize) -> ContainerInfo {
        let text = self.text();
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        // Written by us it is valid printable UTF-8; scribbled on, it is shown as well as it can be.
        let id = String::from_utf8_lossy(&text[..end]).chars().map(printable).collect();
        ContainerInfo {
            index,
            id,
            id_len: self.id_len.load(Ordering::Relaxed),
            registered_ns: self.registered_ns.load(Ordering::Relaxed),
        }
    }
}

/// A mapped region.
#[derive(Debug)]
pub struct Region {
    map: Mapping<RegionFile>,
    /// Threads of one process share its OFD locks, so they also take this. It guards the
    /// slots this open description holds: their locks look free from here, so reclaiming
    /// must skip them.
    lock: Mutex<Vec<usize>>,
    /// How long the region lock is waited for.
    lock_wait: Duration,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A token that differs between registrations: time, pid and the slot's old token mixed.
fn new_token(index: usize, old: u64) -> u64 {
    fnv1a(
        &[now_ns().to_le_bytes(), u64::from(std::process::id()).to_le_bytes(), (index as u64 ^ old).to_le_bytes()]
            .concat(),
    ) | 1
}

impl Region {
    /// Opens the slice's region, creating it as a plain file if it does not exist yet (tests and
    /// tools; on a node, `generate` publishes regions on devices).
    pub fn open_or_create(path: &Path) -> Result<Region, RegionError> {
        match Self::open(path) {
            Err(RegionError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create(path)?;
                Self::open(path)
            }
            other => other,
        }
    }

    /// Publishes a fresh region at `path` as a plain file unless one is already there (tests and
    /// processes outside containers). Every process of the slice writes it, whatever its uid:
    /// mode 0666, whatever the umask.
    pub fn create(path: &Path) -> Result<(), RegionError> {
        Mapping::<RegionFile>::create(path, 0o666, init).map(drop).map_err(|e| RegionError::from_shm(path, e))
    }

    /// Publishes a fresh region at `path` on a new zram device, in place of whatever is there
    /// (needs root). This is what containers get: a file no process can truncate or grow.
    pub fn publish(path: &Path) -> Result<crate::shm::zram::Device, RegionError> {
        Mapping::<RegionFile>::publish_device(path, 0o666, init).map_err(|e| RegionError::from_shm(path, e))
    }

    /// Opens and maps an existing region, checking its header and size.
    pub fn open(path: &Path) -> Result<Region, RegionError> {
        let region = Self::open_unchecked(path)?;
        region.check_header()?;
        Ok(region)
    }

    /// Opens the region `name` in the directory `dir` (`openat`, no symlink followed), checking
    /// its header and size; `shown` names it in messages.
    pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<Region, RegionError> {
        let map = Mapping::<RegionFile>::open_at(dir, name, shown).map_err(|e| RegionError::from_shm(shown, e))?;
        let region = Self::from_map(map);
        region.check_header()?;
        Ok(region)
    }

    /// Opens a region whose header may be damaged, repairing it in place if anything is wrong
    /// (the hook and `generate` do, [`Region::repair`]). What cannot be repaired here (a file
    /// of the wrong size or kind) is an error.
    pub fn open_repairing(path: &Path, lock_wait: Duration) -> Result<(Region, RepairReport), RegionError> {
        let region = Self::open_unchecked(path)?.with_lock_wait(lock_wait);
        if region.check_header().is_ok() && region.check_states().is_ok() {
            return Ok((region, RepairReport::default()));
        }
        let report = region.repair()?;
        Ok((region, report))
    }

    /// Opens and maps an existing region without checking its contents: whether it can be used
    /// at all (a file or device of the right size), for a reader that leaves damaged contents
    /// to [`Region::open_repairing`] (the device plugin's health check).
    pub fn open_mappable(path: &Path) -> Result<Region, RegionError> {
        Self::open_unchecked(path)
    }

    fn open_unchecked(path: &Path) -> Result<Region, RegionError> {
        let map = Mapping::<RegionFile>::open(path).map_err(|e| RegionError::from_shm(path, e))?;
        Ok(Self::from_map(map))
    }

    fn from_map(map: Mapping<RegionFile>) -> Region {
        Region { map, lock: Mutex::new(Vec::new()), lock_wait: DEFAULT_LOCK_WAIT }
    }

    /// Waits at most `wait` for the region lock from now on (by default [`DEFAULT_LOCK_WAIT`]).
    pub fn with_lock_wait(mut self, wait: Duration) -> Region {
        self.lock_wait = wait;
        self
    }

    /// Whether the region is on a block device, which no process can truncate or grow.
    pub fn is_device(&self) -> bool {
        self.map.is_device()
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    fn corrupt(&self, reason: impl Into<String>) -> RegionError {
        RegionError::Corrupt { path: self.path().to_owned(), reason: reason.into() }
    }

    /// The slice's compute block (see [`Compute`]).
    pub fn compute(&self) -> &Compute {
        &self.map.get().compute
    }

    /// Charges `gpu_ns` of GPU time at a share of `percent` (1–100) and returns the pacing
    /// clock's new value. Idle time earns credit for at most `burst_ns`.
    pub fn charge_gpu_time(&self, gpu_ns: u64, percent: u32, burst_ns: u64, now_ns: u64) -> u64 {
        let c = self.compute();
        let cost = gpu_ns.saturating_mul(100) / u64::from(percent.clamp(1, 100));
        c.gpu_ns_total.fetch_add(gpu_ns, Ordering::Relaxed);
        c.last_charge_ns.fetch_max(now_ns, Ordering::Relaxed);
        let update = |v: u64| Some(v.max(now_ns.saturating_sub(burst_ns)).saturating_add(cost));
        let old = c.virtual_ns.fetch_update(Ordering::AcqRel, Ordering::Acquire, update).unwrap_or_default();
        update(old).unwrap_or_default()
    }

    /// The part of the GPU work that ran from `start_ns` to `end_ns` not yet charged by another
    /// process of the slice: what is after the slice's `busy_until_ns`, which moves to `end_ns`.
    pub fn unclaimed_gpu_time(&self, start_ns: u64, end_ns: u64) -> u64 {
        let c = self.compute();
        let before = c.busy_until_ns.fetch_max(end_ns, Ordering::AcqRel);
        end_ns.saturating_sub(start_ns.max(before))
    }

    /// How long work must wait before it may start at `now_ns`: how far the pacing clock is
    /// ahead of now (zero when it is not).
    pub fn pacing_delay(&self, now_ns: u64) -> u64 {
        self.compute().virtual_ns.load(Ordering::Acquire).saturating_sub(now_ns)
    }

    fn header(&self) -> &Header {
        &self.map.get().header
    }

    fn slot(&self, index: usize) -> &Slot {
        &self.map.get().slots[index]
    }

    fn container(&self, index: usize) -> &ContainerRecord {
        &self.map.get().containers[index]
    }

    /// The lock byte of slot `index`: its first.
    fn slot_lock(&self, index: usize) -> Range<u64> {
        let slot = self.map.range_of(self.slot(index));
        slot.start..slot.start + 1
    }

    /// Checks magic, version, checksum, the layout the header describes and the slot
    /// high-water mark, on one snapshot of the header.
    pub fn check_header(&self) -> Result<(), RegionError> {
        let h = self.header().load();
        if h.magic != REGION_MAGIC {
            return Err(self.corrupt("bad magic (not a gpuslice region)"));
        }
        if h.version != REGION_VERSION {
            return Err(self.corrupt(format!(
                "layout version {}, this gpuslice reads only version {REGION_VERSION} (a region left by another release)",
                h.version
            )));
        }
        if h.checksum != h.checksum() {
            return Err(self.corrupt("header fields do not match their checksum"));
        }
        if h.described() != HeaderValues::new(REGION_VERSION).described() {
            return Err(self.corrupt("header describes another layout of the same version"));
        }
        if h.slots_used as usize > SLOT_COUNT {
            return Err(self.corrupt("slot high-water mark beyond the slot table"));
        }
        Ok(())
    }

    fn slots_used(&self) -> Result<usize, RegionError> {
        let n = self.header().slots_used.load(Ordering::Acquire) as usize;
        if n > SLOT_COUNT { Err(self.corrupt("slot high-water mark beyond the slot table")) } else { Ok(n) }
    }

    /// Runs `f` holding the region lock (in-process mutex plus the OFD lock on byte 0), waiting
    /// for it at most the region's lock wait.
    fn locked<T>(&self, f: impl FnOnce(&mut Vec<usize>) -> Result<T, RegionError>) -> Result<T, RegionError> {
        self.locked_for(self.lock_wait, f)
    }

    /// [`Region::locked`], waiting at most `wait`.
    fn locked_for<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut Vec<usize>) -> Result<T, RegionError>,
    ) -> Result<T, RegionError> {
        let mut mine = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.with_file_lock(wait, || f(&mut mine))
    }

    /// Runs `f` holding the OFD lock on byte 0 (the caller holds the in-process mutex).
    fn with_file_lock<T>(&self, wait: Duration, f: impl FnOnce() -> Result<T, RegionError>) -> Result<T, RegionError> {
        let start = Instant::now();
        let _region = lock::lock_with_deadline(self.map.file(), REGION_LOCK, Some(start + wait)).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                RegionError::Busy { path: self.path().to_owned(), waited: start.elapsed() }
            } else {
                self.io(e)
            }
        })?;
        f()
    }

    fn io(&self, source: io::Error) -> RegionError {
        RegionError::Io { path: self.path().to_owned(), source }
    }

    /// Whether some open file description holds a lock on this slot's byte: its owner lives.
    /// If we cannot tell, alive: never take a live process's memory away.
    fn slot_locked_by_other(&self, index: usize) -> bool {
        lock::held_elsewhere(self.map.file(), self.slot_lock(index))
    }

    /// Takes a slot for this process and holds its lock until the region is dropped (or the
    /// process dies). Reclaims dead slots when no free one is left. The slot is recorded as
    /// outside any container; see [`Region::register_in`].
    pub fn register(&self) -> Result<usize, RegionError> {
        self.register_in(0)
    }

    /// Takes a slot for this process, a process of `container` (a number that tells the
    /// containers of the slice apart; 0 for none), unless that container's processes already
    /// hold [`CONTAINER_SLOT_QUOTA`] slots. Without the region lock: the slot's own lock byte,
    /// which only one open description can hold, is what makes it this process's, so a process
    /// that keeps the region lock does not stop others from joining. Only when no free slot is
    /// left, or the container is at its quota, are dead processes' slots reclaimed (under the
    /// region lock, until its deadline). Two processes of one container registering at the same
    /// instant can each see room for one more, so the quota is a bound give or take a few.
    pub fn register_in(&self, container: u64) -> Result<usize, RegionError> {
        let mut mine = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        for pass in 0..2 {
            let used = self.slots_used()?;
            let held = (0..used)
                .filter(|&i| {
                    let slot = self.slot(i);
                    slot.state.load(Ordering::Acquire) == SLOT_ACTIVE
                        && slot.container.load(Ordering::Relaxed) == container
                })
                .count();
            if held < CONTAINER_SLOT_QUOTA
                && let Some(index) = self.take_free_slot(container)
            {
                mine.push(index);
                return Ok(index);
            }
            if pass == 0 {
                self.with_file_lock(self.lock_wait, || self.reclaim_locked(&mine))?;
            } else if held >= CONTAINER_SLOT_QUOTA {
                return Err(RegionError::Quota { path: self.path().to_owned() });
            }
        }
        Err(RegionError::Full { path: self.path().to_owned() })
    }

    /// Claims the first free slot whose lock byte can be taken: holding the byte makes it ours
    /// (no other description can take it, and reclaiming never touches a free slot or a locked
    /// one), so this needs no region lock.
    fn take_free_slot(&self, container: u64) -> Option<usize> {
        for index in 0..SLOT_COUNT {
            let slot = self.slot(index);
            if slot.state.load(Ordering::Acquire) != SLOT_FREE {
                continue;
            }
            // A free slot can still be locked by a stale descriptor (a forked child that
            // inherited it) or by a process that took the byte itself; skip those.
            match lock::try_lock(self.map.file(), self.slot_lock(index)) {
                Ok(Some(held)) => held.keep(),
                _ => continue,
            }
            if slot.state.load(Ordering::Acquire) != SLOT_FREE {
                // Taken since the first load by a process that has died since: its charge is
                // for reclaiming to give back, so leave the slot to it.
                let _ = lock::unlock(self.map.file(), self.slot_lock(index));
                continue;
            }
            slot.used.store(0, Ordering::Relaxed);
            slot.refused.store(0, Ordering::Relaxed);
            slot.pid.store(std::process::id(), Ordering::Relaxed);
            slot.token.store(new_token(index, slot.token.load(Ordering::Relaxed)), Ordering::Relaxed);
            slot.registered_ns.store(now_ns(), Ordering::Relaxed);
            slot.container.store(container, Ordering::Relaxed);
            // Sums stop at the high-water mark: raise it before the slot is active.
            self.header().slots_used.fetch_max(index as u32 + 1, Ordering::AcqRel);
            slot.state.store(SLOT_ACTIVE, Ordering::Release);
            return Some(index);
        }
        None
    }

    /// Gives up a slot: its usage is dropped and its lock released.
    pub fn unregister(&self, index: usize) -> Result<(), RegionError> {
        self.locked(|mine| {
            mine.retain(|&i| i != index);
            let slot = self.slot(index);
            slot.used.store(0, Ordering::Relaxed);
            slot.state.store(SLOT_FREE, Ordering::Release);
            let _ = lock::unlock(self.map.file(), self.slot_lock(index));
            Ok(())
        })
    }

    /// Bytes charged by every active slot.
    pub fn usage(&self) -> Result<u64, RegionError> {
        let mut total = 0u64;
        for index in 0..self.slots_used()? {
            let slot = self.slot(index);
            match slot.state.load(Ordering::Acquire) {
                SLOT_FREE => {}
                SLOT_ACTIVE => total = total.saturating_add(slot.used.load(Ordering::Relaxed)),
                other => return Err(self.corrupt(format!("slot {index} has state {other}"))),
            }
        }
        Ok(total)
    }

    /// Bytes charged, read under the region lock. While it is held nothing can be added, only
    /// given back, so the sum is never more than the slice held at any one moment. [`usage`]
    /// reads without the lock and can, for an instant, count a charge that replaced a
    /// concurrent free twice.
    ///
    /// [`usage`]: Region::usage
    pub fn usage_locked(&self) -> Result<u64, RegionError> {
        self.locked(|_| self.usage())
    }

    /// Charges `bytes` to `own` if the slice stays within `limit`; reclaims dead processes'
    /// usage before refusing.
    pub fn charge(&self, own: usize, bytes: u64, limit: u64) -> Result<Result<(), OverLimit>, RegionError> {
        self.locked(|mine| {
            let mut used = self.usage()?;
            if used.saturating_add(bytes) > limit && self.reclaim_locked(mine)?.slots > 0 {
                used = self.usage()?;
            }
            if used.saturating_add(bytes) > limit {
                return Ok(Err(OverLimit { requested: bytes, used, limit }));
            }
            let slot = self.slot(own);
            let _ = slot.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| Some(u.saturating_add(bytes)));
            Ok(Ok(()))
        })
    }

    /// Counts an allocation refused for the limit, for the slice and for `own`'s process (the
    /// host's metrics and log read both). Lock-free: two atomic adds.
    pub fn note_refused(&self, own: usize) {
        self.compute().refused_total.fetch_add(1, Ordering::Relaxed);
        self.slot(own).refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns `bytes` from `own`'s charge. Lock-free: only the owner changes its slot.
    pub fn uncharge(&self, own: usize, bytes: u64) {
        let slot = self.slot(own);
        let _ = slot.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
    }

    /// Frees the slots of processes that died; returns how many.
    pub fn reclaim_dead(&self) -> Result<usize, RegionError> {
        self.locked(|mine| Ok(self.reclaim_locked(mine)?.slots))
    }

    /// [`Region::reclaim_dead`], waiting at most `wait` for the lock (for callers that only
    /// reclaim in passing, such as a memory query, which must not be slowed by a held lock).
    pub fn reclaim_dead_within(&self, wait: Duration) -> Result<usize, RegionError> {
        self.locked_for(wait, |mine| Ok(self.reclaim_locked(mine)?.slots))
    }

    fn reclaim_locked(&self, mine: &[usize]) -> Result<Reclaimed, RegionError> {
        let mut reclaimed = Reclaimed::default();
        for index in 0..self.slots_used()? {
            if mine.contains(&index) || self.slot(index).state.load(Ordering::Acquire) != SLOT_ACTIVE {
                continue;
            }
            if !self.slot_locked_by_other(index) {
                let slot = self.slot(index);
                reclaimed.bytes = reclaimed.bytes.saturating_add(slot.used.swap(0, Ordering::Relaxed));
                slot.state.store(SLOT_FREE, Ordering::Release);
                reclaimed.slots += 1;
            }
        }
        Ok(reclaimed)
    }

    /// Checks every slot's and container record's state (no lock taken).
    fn check_states(&self) -> Result<(), RegionError> {
        self.usage()?;
        self.attached_containers()?;
        Ok(())
    }

    /// Puts a damaged region right in place, under the region lock: a header that is not this
    /// layout's is rewritten; every slot's state is set from its owner's liveness (a slot whose
    /// lock byte someone holds is active, any other is freed with its charge); container records
    /// of unknown state are cleared. Processes using the region keep their slots and what they
    /// charged. For the hook and `generate`, which then let new processes in again.
    pub fn repair(&self) -> Result<RepairReport, RegionError> {
        self.locked(|mine| {
            let mut report = RepairReport::default();
            let h = self.header().load();
            let fresh = HeaderValues::new(REGION_VERSION);
            if h.described() != fresh.described() || h.checksum != fresh.checksum {
                self.header().store(&HeaderValues { slots_used: SLOT_COUNT as u32, ..fresh });
                report.header = true;
            }
            let mut high = 0;
            for index in 0..SLOT_COUNT {
                let slot = self.slot(index);
                let state = slot.state.load(Ordering::Acquire);
                let alive = mine.contains(&index) || self.slot_locked_by_other(index);
                if alive {
                    if state != SLOT_ACTIVE {
                        slot.state.store(SLOT_ACTIVE, Ordering::Release);
                        report.slots += 1;
                    }
                    high = index + 1;
                } else if state != SLOT_FREE {
                    if state != SLOT_ACTIVE {
                        report.slots += 1;
                    }
                    slot.used.store(0, Ordering::Relaxed);
                    slot.state.store(SLOT_FREE, Ordering::Release);
                }
            }
            let slots_used = self.header().slots_used.load(Ordering::Acquire) as usize;
            if report.header || slots_used > SLOT_COUNT || slots_used < high {
                self.header().slots_used.store(high as u32, Ordering::Release);
            }
            for index in 0..CONTAINER_COUNT {
                let record = self.container(index);
                let state = record.state.load(Ordering::Acquire);
                if state != CONTAINER_FREE && state != CONTAINER_ATTACHED {
                    record.state.store(CONTAINER_FREE, Ordering::Release);
                    record.fill(&ContainerKey::CLEARED, 0);
                    report.containers += 1;
                }
            }
            Ok(report)
        })
    }

    /// Every active slot, for tools and tests.
    pub fn slots(&self) -> Result<Vec<SlotInfo>, RegionError> {
        let mine = self.lock.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = Vec::new();
        for index in 0..self.slots_used()? {
            let slot = self.slot(index);
            if slot.state.load(Ordering::Acquire) == SLOT_ACTIVE {
                out.push(SlotInfo {
                    index,
                    pid: slot.pid.load(Ordering::Relaxed),
                    used: slot.used.load(Ordering::Relaxed),
                    alive: mine.contains(&index) || self.slot_locked_by_other(index),
                    token: slot.token.load(Ordering::Relaxed),
                    refused: slot.refused.load(Ordering::Relaxed),
                    container: slot.container.load(Ordering::Relaxed),
                });
            }
        }
        Ok(out)
    }

    /// Which container records are attached, checking every record's state.
    fn attached_containers(&self) -> Result<[bool; CONTAINER_COUNT], RegionError> {
        let mut attached = [false; CONTAINER_COUNT];
        for (index, a) in attached.iter_mut().enumerate() {
            match self.container(index).state.load(Ordering::Acquire) {
                CONTAINER_FREE => {}
                CONTAINER_ATTACHED => *a = true,
                other => return Err(self.corrupt(format!("container record {index} has state {other}"))),
            }
        }
        Ok(attached)
    }

    /// Records that container `id` uses the slice. Attaching an attached id changes nothing
    /// (its registration time stays). When all [`CONTAINER_COUNT`] records are taken, the
    /// oldest is reused: the table is informational beyond that many containers at once.
    pub fn attach_container(&self, id: &str) -> Result<(), RegionError> {
        let key = ContainerKey::new(id);
        self.locked(|_| {
            let attached = self.attached_containers()?;
            if (0..CONTAINER_COUNT).any(|i| attached[i] && self.container(i).holds(&key)) {
                return Ok(());
            }
            let index = attached.iter().position(|a| !a).unwrap_or_else(|| {
                // Ties go to the lowest index.
                (0..CONTAINER_COUNT)
                    .min_by_key(|&i| self.container(i).registered_ns.load(Ordering::Relaxed))
                    .unwrap_or(0)
            });
            let record = self.container(index);
            record.state.store(CONTAINER_FREE, Ordering::Relaxed);
            record.fill(&key, now_ns());
            record.state.store(CONTAINER_ATTACHED, Ordering::Release);
            Ok(())
        })
    }

    /// Removes container `id`'s record, if it has one, and frees the slots of processes that
    /// died (the container's own, once it has stopped, among them). Nothing is changed if the
    /// table or the slot high-water mark is corrupt.
    pub fn detach_container(&self, id: &str) -> Result<DetachReport, RegionError> {
        let key = ContainerKey::new(id);
        self.locked(|mine| {
            let attached = self.attached_containers()?;
            let reclaimed = self.reclaim_locked(mine)?;
            let mut was_attached = false;
            for index in (0..CONTAINER_COUNT).filter(|&i| attached[i]) {
                let record = self.container(index);
                if record.holds(&key) {
                    record.state.store(CONTAINER_FREE, Ordering::Release);
                    record.fill(&ContainerKey::CLEARED, 0);
                    was_attached = true;
                }
            }
            Ok(DetachReport {
                attached: was_attached,
                slots_reclaimed: reclaimed.slots,
                bytes_reclaimed: reclaimed.bytes,
            })
        })
    }

    /// Every attached container, read under the region lock, for tools and tests.
    pub fn containers(&self) -> Result<Vec<ContainerInfo>, RegionError> {
        self.locked(|_| {
            let attached = self.attached_containers()?;
            Ok((0..CONTAINER_COUNT).filter(|&i| attached[i]).map(|i| self.container(i).info(i)).collect())
        })
    }

    /// The raw descriptor, so a forked child can close its inherited copy.
    pub fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.map.file().as_raw_fd()
    }
}

/// The initial contents of a region.
fn init(file: &RegionFile) {
    file.header.store(&HeaderValues::new(REGION_VERSION));
}

/// `<state_dir>/slices/<name>/region`.
pub fn region_path(state_dir: &Path, slice: &str) -> PathBuf {
    crate::limits::slice_dir(state_dir, slice).join("region")
}

/// Whether the filesystem holding `path` is mounted read-only (`statvfs`'s `ST_RDONLY`).
pub fn on_read_only_mount(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: statvfs is plain data, zero is valid; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("region");
        (dir, path)
    }

    #[test]
    fn create_then_open_gives_an_empty_region() {
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        assert_eq!(r.usage().unwrap(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), REGION_SIZE as u64);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o666);
        // A second create is a no-op and keeps the first file.
        let slot = r.register().unwrap();
        r.charge(slot, 10, 100).unwrap().unwrap();
        Region::create(&path).unwrap();
        assert_eq!(Region::open(&path).unwrap().usage().unwrap(), 10);
    }

    #[test]
    fn charge_respects_the_limit() {
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        let s = r.register().unwrap();
        r.charge(s, 60, 100).unwrap().unwrap();
        assert_eq!(r.charge(s, 41, 100).unwrap(), Err(OverLimit { requested: 41, used: 60, limit: 100 }));
        r.charge(s, 40, 100).unwrap().unwrap();
        r.uncharge(s, 30);
        assert_eq!(r.usage().unwrap(), 70);
        r.uncharge(s, 1000);
        assert_eq!(r.usage().unwrap(), 0, "uncharging never underflows");
    }

    #[test]
    fn frees_racing_charges_on_one_slot_are_never_lost() {
        // Threads of one process share its slot: charges (under the region lock) and frees
        // (lock-free) of the same slot interleave. Some threads charge one unit at a time;
        // the others give back each unit as soon as it has been charged, for as long as the
        // charging goes on. Every unit charged is freed once, so the slot ends where it began.
        use std::sync::atomic::AtomicBool;
        const CHARGERS: u64 = 4;
        const ROUNDS: u64 = 50_000;
        const BASE: u64 = 1000;
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        let slot = r.register().unwrap();
        r.charge(slot, BASE, u64::MAX).unwrap().unwrap();
        let owed = AtomicU64::new(0);
        let charging = AtomicBool::new(true);
        std::thread::scope(|scope| {
            let chargers: Vec<_> = (0..CHARGERS)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..ROUNDS {
                            r.charge(slot, 1, u64::MAX).unwrap().unwrap();
                            owed.fetch_add(1, Ordering::AcqRel);
                        }
                    })
                })
                .collect();
            for _ in 0..CHARGERS {
                scope.spawn(|| {
                    while charging.load(Ordering::Acquire) || owed.load(Ordering::Acquire) > 0 {
                        if owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
                            r.uncharge(slot, 1);
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            for c in chargers {
                c.join().unwrap();
            }
            charging.store(false, Ordering::Release);
        });
        assert_eq!(r.usage().unwrap(), BASE, "frees of this slot were lost to charges racing them");
    }

    #[test]
    fn slots_of_other_open_descriptions_count_and_stay_alive() {
        let (_d, path) = fresh();
        let a = Region::open_or_create(&path).unwrap();
        let b = Region::open(&path).unwrap();
        let sa = a.register().unwrap();
        let sb = b.register().unwrap();
        assert_ne!(sa, sb);
        a.charge(sa, 50, 100).unwrap().unwrap();
        b.charge(sb, 50, 100).unwrap().unwrap();
        assert!(a.charge(sa, 1, 100).unwrap().is_err());
        // b's slot is held by another open file description: alive, not reclaimed.
        assert_eq!(a.reclaim_dead().unwrap(), 0);
        // Dropping b closes its description, releasing its lock, as death would.
        drop(b);
        a.charge(sa, 1, 100).unwrap().unwrap();
        assert_eq!(a.usage().unwrap(), 51);
    }

    #[test]
    fn contending_open_descriptions_never_pass_the_limit() {
        // Each thread has its own open file description, so they contend through the OFD
        // region lock exactly as processes do. The limit is tiny, so every charge is at the
        // boundary: take one unit, check nobody is over, give it back.
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        const LIMIT: u64 = 3;
        let worst = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        // The lock is waited for by polling, which is not fair: with seven
                        // threads holding it back to back on a busy machine, one can miss it
                        // for longer than the default second. This test is about the limit,
                        // not the deadline (`a_held_region_lock_fails_the_call_at_its_deadline` tests that), so it waits longer.
                        let r = Region::open(&path).unwrap().with_lock_wait(Duration::from_secs(60));
                        let slot = r.register().unwrap();
                        let mut worst = 0;
                        for _ in 0..20_000 {
                            if r.charge(slot, 1, LIMIT).unwrap().is_ok() {
                                worst = worst.max(r.usage_locked().unwrap());
                                r.uncharge(slot, 1);
                            }
                        }
                        worst
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).max().unwrap()
        });
        assert!(worst <= LIMIT, "usage reached {worst} with a limit of {LIMIT}");
    }

    /// Where field `f` of the header is in the file.
    macro_rules! at {
        ($f:ident) => {
            offset_of!(RegionFile, header) + offset_of!(Header, $f)
        };
    }

    fn poke(bytes: &[u8], offset: usize, value: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[offset..offset + value.len()].copy_from_slice(value);
        b
    }

    #[test]
    fn corrupt_and_truncated_regions_are_detected() {
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let flipped = bytes[at!(slot_size)] ^ 1;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bytes[..100].to_vec(), "truncated"),
            (Vec::new(), "truncated"),
            (poke(&bytes, at!(magic), b"XXXXXXXX"), "magic"),
            (poke(&bytes, at!(version), &9u32.to_ne_bytes()), "layout version 9"),
            (poke(&bytes, at!(slot_size), &[flipped]), "checksum"),
            (poke(&bytes, at!(slots_used), &5000u32.to_ne_bytes()), "high-water"),
        ];
        for (content, want) in cases {
            std::fs::write(&path, &content).unwrap();
            let err = Region::open(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        // A header whose checksum matches fields that describe another layout.
        let mut other = HeaderValues::new(REGION_VERSION);
        other.container_count = 47;
        other.checksum = other.checksum();
        std::fs::write(&path, poke(&bytes, at!(magic), bytes_of(&other))).unwrap();
        let err = Region::open(&path).unwrap_err().to_string();
        assert!(err.contains("another layout"), "{err}");

        let slot0 = offset_of!(RegionFile, slots) + offset_of!(Slot, state);
        let b = poke(&poke(&bytes, slot0, &7u32.to_ne_bytes()), at!(slots_used), &1u32.to_ne_bytes());
        std::fs::write(&path, &b).unwrap();
        let err = Region::open(&path).unwrap().usage().unwrap_err().to_string();
        assert!(err.contains("slot 0 has state 7"), "{err}");
    }

    #[test]
    fn the_header_is_written_from_its_definition() {
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = HeaderValues::new(REGION_VERSION);
        assert_eq!(&bytes[..size_of::<Header>()], bytes_of(&header));
        assert_eq!(&bytes[..8], b"GPUSLRG\0");
        assert_eq!(bytes[at!(version)..at!(version) + 4], REGION_VERSION.to_ne_bytes());
        assert_eq!(header.checksum, fnv1a(&bytes[..at!(checksum)]));
        assert!(bytes[size_of::<Header>()..].iter().all(|&b| b == 0), "everything else starts out zero: free");
    }

    fn ids(r: &Region) -> Vec<String> {
        r.containers().unwrap().into_iter().map(|c| c.id).collect()
    }

    #[test]
    fn containers_attach_once_and_detach() {
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        assert!(r.containers().unwrap().is_empty());
        r.attach_container("a").unwrap();
        let first = r.containers().unwrap();
        r.attach_container("b").unwrap();
        r.attach_container("a").unwrap();
        assert_eq!(ids(&r), ["a", "b"]);
        let a = &r.containers().unwrap()[0];
        assert_eq!(a, &first[0], "attaching again keeps the record and its time");
        assert!(a.registered_ns > 0 && a.id_len == 1);
        // Another open description (another process) sees the same table.
        assert_eq!(ids(&Region::open(&path).unwrap()), ["a", "b"]);

        let gone = DetachReport { attached: true, slots_reclaimed: 0, bytes_reclaimed: 0 };
        assert_eq!(r.detach_container("a").unwrap(), gone);
        assert_eq!(ids(&r), ["b"]);
        let absent = DetachReport { attached: false, ..gone };
        assert_eq!(r.detach_container("a").unwrap(), absent);
        assert_eq!(r.detach_container("never-attached").unwrap(), absent);
        assert_eq!(ids(&r), ["b"]);
        // The freed record is cleared, not just marked free.
        let bytes = std::fs::read(&path).unwrap();
        let record = offset_of!(RegionFile, containers);
        assert!(bytes[record..record + size_of::<ContainerRecord>()].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_full_container_table_reuses_the_oldest_record() {
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        let name = |i: usize| format!("c{i}");
        for i in 0..CONTAINER_COUNT {
            r.attach_container(&name(i)).unwrap();
        }
        assert_eq!(ids(&r), (0..CONTAINER_COUNT).map(name).collect::<Vec<_>>());
        r.attach_container("late").unwrap();
        let now = ids(&r);
        assert_eq!(now.len(), CONTAINER_COUNT);
        assert!(now.contains(&"late".into()) && !now.contains(&name(0)), "{now:?}");
        // An attached id is not re-added, so nothing is reused for it.
        r.attach_container(&name(1)).unwrap();
        assert_eq!(ids(&r), now);
        r.attach_container("later").unwrap();
        let now = ids(&r);
        assert!(now.contains(&"later".into()) && !now.contains(&name(1)) && now.contains(&"late".into()), "{now:?}");
        assert!(!r.detach_container(&name(0)).unwrap().attached, "its record was reused");
    }

    #[test]
    fn concurrent_attaches_record_each_container_once() {
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let path = &path;
                scope.spawn(move || {
                    let r = Region::open(path).unwrap();
                    for round in 0..2 {
                        for i in 0..4 {
                            r.attach_container(&format!("t{t}-{i}")).unwrap_or_else(|e| panic!("round {round}: {e}"));
                        }
                    }
                });
            }
        });
        let mut all = ids(&Region::open(&path).unwrap());
        all.sort();
        let mut want: Vec<String> = (0..8).flat_map(|t| (0..4).map(move |i| format!("t{t}-{i}"))).collect();
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn long_and_odd_container_ids_are_stored_bounded_and_printable() {
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        // 2 + 3n bytes: the 40-byte cut falls inside a '€'.
        let long = format!("ab{}", "€".repeat(10 * 1024 / 3));
        assert!(long.len() >= 10 * 1024 && !long.is_char_boundary(CONTAINER_ID_TEXT));
        let twin = format!("{long}x");
        let escapes = "web\n\u{1b}[2J\u{85}\0x";
        for id in [long.as_str(), twin.as_str(), escapes, "", long.as_str(), escapes, ""] {
            r.attach_container(id).unwrap();
        }
        let got = r.containers().unwrap();
        let shown = format!("ab{}", "€".repeat(12));
        assert_eq!(shown.len(), 38);
        let summary: Vec<(&str, u32)> = got.iter().map(|c| (c.id.as_str(), c.id_len)).collect();
        assert_eq!(
            summary,
            [
                (shown.as_str(), long.len() as u32),
                (shown.as_str(), twin.len() as u32),
                ("web??[2J??x", escapes.len() as u32),
                ("", 0)
            ],
            "ids sharing their first bytes are still two containers"
        );
        assert!(r.detach_container(&long).unwrap().attached);
        assert!(r.detach_container(escapes).unwrap().attached);
        assert!(!r.detach_container(&long[..CONTAINER_ID_TEXT - 2]).unwrap().attached);
        assert_eq!(ids(&r), [shown.as_str(), ""]);
    }

    #[test]
    fn a_scribbled_container_record_is_corrupt() {
        use std::os::unix::fs::FileExt;
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        r.attach_container("a").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let state5 =
            offset_of!(RegionFile, containers) + 5 * size_of::<ContainerRecord>() + offset_of!(ContainerRecord, state);
        file.write_all_at(&7u32.to_ne_bytes(), state5 as u64).unwrap();
        let errors =
            [r.containers().unwrap_err(), r.attach_container("b").unwrap_err(), r.detach_container("a").unwrap_err()];
        for err in errors {
            assert!(matches!(err, RegionError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains("container record 5 has state 7"), "{err}");
        }
        // Accounting does not read the table.
        let s = r.register().unwrap();
        r.charge(s, 5, 10).unwrap().unwrap();
        assert_eq!(r.usage().unwrap(), 5);
        // The failed detach changed nothing.
        file.write_all_at(&0u32.to_ne_bytes(), state5 as u64).unwrap();
        assert_eq!(ids(&r), ["a"]);
    }

    #[test]
    fn refusals_are_counted_per_slice_and_per_process() {
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        let r = Region::open(&path).unwrap();
        let (a, b) = (r.register().unwrap(), r.register().unwrap());
        assert_eq!(r.compute().refused_total.load(Ordering::Relaxed), 0);
        r.note_refused(a);
        r.note_refused(b);
        r.note_refused(b);
        assert_eq!(r.compute().refused_total.load(Ordering::Relaxed), 3);
        let refused: Vec<(usize, u64)> = r.slots().unwrap().iter().map(|s| (s.index, s.refused)).collect();
        assert_eq!(refused, [(a, 1), (b, 2)]);
        // A slot handed out again starts at zero; the slice's total stays.
        r.unregister(b).unwrap();
        let c = r.register().unwrap();
        assert_eq!(c, b);
        assert_eq!(r.slots().unwrap().iter().find(|s| s.index == c).unwrap().refused, 0);
        assert_eq!(r.compute().refused_total.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_version_4_region_is_refused_and_repaired_in_place() {
        // What the previous release wrote: the same bytes, without the refused counters.
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        let live = Region::open(&path).unwrap();
        let slot = live.register().unwrap();
        live.charge(slot, 40, 100).unwrap().unwrap();
        let v3 = poke(&std::fs::read(&path).unwrap(), at!(version), &4u32.to_ne_bytes());
        std::fs::write(&path, &v3).unwrap();
        for err in [Region::open(&path).unwrap_err(), Region::open_or_create(&path).unwrap_err()] {
            assert!(matches!(err, RegionError::Corrupt { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("layout version 4, this gpuslice reads only version 5"), "{msg}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), v3, "opening leaves the old file alone");
        let (fixed, report) = Region::open_repairing(&path, Duration::from_secs(5)).unwrap();
        assert!(report.header && report.slots == 0, "{report:?}");
        assert_eq!(fixed.usage().unwrap(), 40, "the live process keeps its slot and its charge");
        Region::open(&path).unwrap();
    }

    #[test]
    fn repair_sets_every_state_from_what_is_alive() {
        use std::os::unix::fs::FileExt;
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        r.attach_container("kept").unwrap();
        let live = Region::open(&path).unwrap();
        let alive = live.register().unwrap();
        live.charge(alive, 30, 100).unwrap().unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let slot_state = |i: usize| (offset_of!(RegionFile, slots) + i * size_of::<Slot>()) as u64;
        let slot_used = |i: usize| slot_state(i) + offset_of!(Slot, used) as u64;
        let record_state = |i: usize| (offset_of!(RegionFile, containers) + i * size_of::<ContainerRecord>()) as u64;
        // A live process's slot scribbled free, a dead-looking slot with a wild state and a
        // charge, a container record of a wild state, and the header's magic and high-water mark.
        file.write_all_at(&0u32.to_ne_bytes(), slot_state(alive)).unwrap();
        file.write_all_at(&9u32.to_ne_bytes(), slot_state(700)).unwrap();
        file.write_all_at(&(1u64 << 40).to_ne_bytes(), slot_used(700)).unwrap();
        file.write_all_at(&5u32.to_ne_bytes(), record_state(7)).unwrap();
        file.write_all_at(b"scribble", 0).unwrap();
        file.write_all_at(&4000u32.to_ne_bytes(), at!(slots_used) as u64).unwrap();
        assert!(Region::open(&path).is_err());
        let (fixed, report) = Region::open_repairing(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(report, RepairReport { header: true, slots: 2, containers: 1 });
        assert_eq!(fixed.usage().unwrap(), 30, "the live slot counts again, the wild one is gone");
        assert_eq!(ids(&fixed), ["kept"]);
        assert_eq!(fixed.repair().unwrap(), RepairReport::default(), "nothing left to repair");
        Region::open(&path).unwrap();
    }

    #[test]
    fn a_held_region_lock_fails_the_call_at_its_deadline() {
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        // Another process of the slice takes the region lock and keeps it.
        let squatter = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let held = lock::lock(&squatter, REGION_LOCK).unwrap();
        let r = Region::open(&path).unwrap().with_lock_wait(Duration::from_millis(200));
        // Joining needs no region lock: a process can still take a slot.
        let slot = r.register().unwrap();
        let start = Instant::now();
        let err = r.charge(slot, 1, 10).unwrap_err();
        let waited = start.elapsed();
        assert!(err.is_busy(), "{err}");
        assert!(err.to_string().contains("its lock stayed held by another process"), "{err}");
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(5), "{waited:?}");
        assert!(r.attach_container("c").unwrap_err().is_busy());
        assert!(r.repair().unwrap_err().is_busy());
        assert!(r.reclaim_dead_within(Duration::ZERO).unwrap_err().is_busy());
        // Lock-free paths still work, and the lock is usable again once released.
        assert_eq!(r.usage().unwrap(), 0);
        r.uncharge(slot, 1);
        drop(held);
        r.charge(slot, 1, 10).unwrap().unwrap();
    }

    #[test]
    fn one_container_cannot_take_every_slot() {
        let (_d, path) = fresh();
        Region::create(&path).unwrap();
        // Each registration holds its own open description, as a process does.
        let mut greedy = Vec::new();
        for _ in 0..CONTAINER_SLOT_QUOTA {
            let r = Region::open(&path).unwrap();
            r.register_in(7).unwrap();
            greedy.push(r);
        }
        let one_more = Region::open(&path).unwrap();
        let err = one_more.register_in(7).unwrap_err();
        assert!(matches!(err, RegionError::Quota { .. }), "{err}");
        // Other containers, and processes outside any, still get slots.
        Region::open(&path).unwrap().register_in(8).unwrap();
        Region::open(&path).unwrap().register().unwrap();
        // A process of the greedy container that ends gives its place back.
        drop(greedy.pop());
        one_more.register_in(7).unwrap();
        let tags: Vec<u64> = one_more
            .slots()
            .unwrap()
            .iter()
            .map(|s| s.index)
            .map(|i| one_more.slot(i).container.load(Ordering::Relaxed))
            .collect();
        assert_eq!(tags.iter().filter(|&&t| t == 7).count(), CONTAINER_SLOT_QUOTA);
    }

    /// Set in a copy of this test binary that plays the process that dies.
    const CHILD_REGION_ENV: &str = "GPUSLICE_REGION_TEST_CHILD";
    const CHILD_CHARGED: &str = "region-test-child-charged";

    #[test]
    fn detach_reclaims_what_a_killed_process_held() {
        if let Some(path) = std::env::var_os(CHILD_REGION_ENV) {
            let r = Region::open(Path::new(&path)).unwrap();
            let slot = r.register().unwrap();
            r.charge(slot, 300, 1000).unwrap().unwrap();
            println!("{CHILD_CHARGED}");
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            // SAFETY: signals this process; SIGKILL does not return.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("survived SIGKILL");
        }
        let (_d, path) = fresh();
        let r = Region::open_or_create(&path).unwrap();
        r.attach_container("stopped").unwrap();
        r.attach_container("running").unwrap();
        // A live process elsewhere on the slice: its usage must survive the detach.
        let live = Region::open(&path).unwrap();
        let live_slot = live.register().unwrap();
        live.charge(live_slot, 200, 1000).unwrap().unwrap();

        let test = concat!(module_path!(), "::detach_reclaims_what_a_killed_process_held");
        let test = test.split_once("::").map_or(test, |(_crate, rest)| rest);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_REGION_ENV, &path)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(CHILD_CHARGED), "the child did not charge: {stdout}");

        assert_eq!(r.usage().unwrap(), 500);
        let dead: Vec<_> = r.slots().unwrap().into_iter().filter(|s| !s.alive).collect();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            r.detach_container("stopped").unwrap(),
            DetachReport { attached: true, slots_reclaimed: 1, bytes_reclaimed: 300 }
        );
        assert_eq!(r.usage().unwrap(), 200);
        assert_eq!(ids(&r), ["running"]);
        assert_eq!(
            r.detach_container("stopped").unwrap(),
            DetachReport { attached: false, slots_reclaimed: 0, bytes_reclaimed: 0 }
        );
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let (d, path) = fresh();
        let target = d.path().join("elsewhere");
        Region::create(&target).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(Region::open(&path).is_err());
    }
}
