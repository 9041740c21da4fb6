//! Which slices this process is in, their limits, and its place in each slice's region.
//!
//! **Where the slices are.** The hook mounts a tmpfs at the container's `/run/gpuslice` (its
//! source is `gpuslice`, [`mountinfo::STATE_SOURCE`]) holding `slices/<name>/` (a read-only bind
//! of the slice's host directory, with the region's device node bound on top) and
//! `gpus/<uuid>/board`, and leaves it read-only. A process in the container can neither mount
//! nor unmount, so `/proc/self/mountinfo` tells the truth about that tmpfs (its type, source,
//! read-only flag) wherever the container moved the directory it sits in: `mv /run /run2` moves
//! it along, and mountinfo lists it at `/run2/gpuslice`. Discovery reads mountinfo, opens each
//! such mount by the path it lists and checks that the descriptor is on that very mount (the
//! device and, where the kernel says, the mount id), since the path can be renamed in between;
//! it reads again when it was, and fails closed if it keeps moving. Everything under it is then
//! opened relative to descriptors (`openat`, no symlink followed), once: the slice's directory,
//! its `limits` (trusted only on a read-only mount), its `region` (which must be a block device,
//! so that nobody can truncate it under this process), its GPU's board. Nothing is looked up by
//! a path the container could change afterwards.
//!
//! `GPUSLICE_STATE_DIR` (tests, processes outside containers) names one more directory, opened
//! once and read the same way (limits only on a read-only mount; a region there may be a plain
//! file, which no container can reach). It adds slices for GPUs the hook gave no slice; for a
//! GPU the hook gave one, the hook's always wins. No trusted slice means pure pass-through. A
//! trusted file that cannot be read as limits, or mountinfo that cannot be read, makes the shim
//! fail closed.
//!
//! The state lives behind one pointer that is replaced, never freed, so a forked child (whose
//! copy of the parent's locks and descriptors must not be used) starts afresh.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use gpuslice_core::board::Board;
use gpuslice_core::config::{CoresPolicy, Mode, Priority};
use gpuslice_core::limits::{Limits, MAX_LIMITS_LEN};
use gpuslice_core::mountinfo;
use gpuslice_core::region::{OverLimit, Region};
use gpuslice_core::units::ByteSize;

use crate::ffi::*;
use crate::log::log;

/// Device memory charged for each context (primary or created): what a CUDA context takes on
/// current GPUs is a few hundred MiB, and the limit must cover it.
pub const CONTEXT_CHARGE: u64 = 256 << 20;
/// Devices whose slice binding is cached.
const MAX_DEVICES: usize = 64;
/// How often limits files are re-read and dead processes reclaimed from memory queries.
const RECHECK_NS: u64 = 1_000_000_000;
/// How many times discovery reads mountinfo again when the state's mount moved meanwhile.
const DISCOVERY_TRIES: usize = 8;

/// Why the shim refuses an operation; the one place refusals become driver result codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The slice's limit would be exceeded.
    OverLimit(OverLimit),
    /// The slice cannot be enforced (bad limits file, unusable region, its lock held past the
    /// deadline): fail closed.
    Unavailable,
}

impl From<Refusal> for CUresult {
    fn from(r: Refusal) -> CUresult {
        match r {
            Refusal::OverLimit(_) => CUDA_ERROR_OUT_OF_MEMORY,
            Refusal::Unavailable => CUDA_ERROR_NOT_PERMITTED,
        }
    }
}

impl Refusal {
    /// The NVML code for a refusal (both result types are `u32`, so this is not `From`).
    pub fn nvml(self) -> nvmlReturn_t {
        match self {
            Refusal::OverLimit(_) => NVML_ERROR_UNKNOWN,
            Refusal::Unavailable => NVML_ERROR_NO_PERMISSION,
        }
    }
}

/// This process's place in a slice's region.
#[derive(Debug)]
pub struct Joined {
    pub region: Region,
    pub slot: usize,
}

/// A directory slices are found in: the hook's tmpfs, or `GPUSLICE_STATE_DIR`.
#[derive(Debug)]
struct Root {
    /// An `O_PATH` descriptor of it, opened once.
    dir: OwnedFd,
    /// Where it was, for messages only.
    shown: PathBuf,
    /// The hook's (regions must be devices), or the variable's.
    from_hook: bool,
    /// What tells this container's slots apart in the slices' regions: the tmpfs's device
    /// number (one filesystem per container, which nothing in it can make); 0 otherwise.
    container: u64,
}

/// One slice the process is in.
#[derive(Debug)]
pub struct Slice {
    pub name: String,
    pub gpu_uuid: String,
    /// The slice's directory, opened once (`O_PATH`); `limits` and `region` are opened in it.
    dir: OwnedFd,
    /// Where the slice's directory was found, for messages only.
    shown: PathBuf,
    /// The directory it was found in (the hook's tmpfs or `GPUSLICE_STATE_DIR`), for the board.
    root: std::sync::Arc<Root>,
    /// `GPUSLICE_MEMORY_LIMIT`: may only lower the limit.
    env_cap: Option<u64>,
    limit: AtomicU64,
    /// The slice's compute share in percent (100: not paced).
    cores: AtomicU32,
    /// `priority = "high"`.
    high: AtomicBool,
    /// `cores_policy = "borrow"`.
    borrow: AtomicBool,
    generation: AtomicU64,
    next_check_ns: AtomicU64,
    joined: OnceLock<Result<Joined, String>>,
    /// Serialises attempts to join, so that threads racing to join register one slot.
    joining: Mutex<()>,
    /// The board of the slice's GPU and the slice's record on it, when there is one.
    board: OnceLock<Option<(Board, usize)>>,
    reported: AtomicBool,
    busy_reported: AtomicBool,
}

impl Slice {
    fn new(limits: &Limits, dir: OwnedFd, shown: PathBuf, root: std::sync::Arc<Root>, env_cap: Option<u64>) -> Slice {
        let s = Slice {
            name: limits.slice.clone(),
            gpu_uuid: limits.gpu_uuid.clone(),
            dir,
            shown,
            root,
            env_cap,
            limit: AtomicU64::new(0),
            cores: AtomicU32::new(limits.cores_percent),
            high: AtomicBool::new(limits.priority == Priority::High),
            borrow: AtomicBool::new(limits.cores_policy == CoresPolicy::Borrow),
            generation: AtomicU64::new(limits.generation),
            next_check_ns: AtomicU64::new(now_ns() + RECHECK_NS),
            joined: OnceLock::new(),
            joining: Mutex::new(()),
            board: OnceLock::new(),
            reported: AtomicBool::new(false),
            busy_reported: AtomicBool::new(false),
        };
        s.limit.store(s.effective(limits.memory_bytes), Ordering::Relaxed);
        s
    }

    fn effective(&self, memory_bytes: u64) -> u64 {
        self.env_cap.map_or(memory_bytes, |cap| cap.min(memory_bytes))
    }

    /// The current limit, re-reading the limits file at most once a second so that a new
    /// generation written on the host takes effect in running processes.
    pub fn limit(&self) -> u64 {
        let now = now_ns();
        let next = self.next_check_ns.load(Ordering::Relaxed);
        if now >= next
            && self.next_check_ns.compare_exchange(next, now + RECHECK_NS, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.reload();
        }
        self.limit.load(Ordering::Relaxed)
    }

    /// The container this process is in, as its mount of the slice state tells containers
    /// apart (0: none); its region slot records it.
    pub fn container(&self) -> u64 {
        self.root.container
    }

    /// The compute share in percent, re-reading the limits file as [`Slice::limit`] does.
    pub fn cores(&self) -> u32 {
        self.limit();
        self.cores.load(Ordering::Relaxed)
    }

    fn reload(&self) {
        match read_trusted(self.dir.as_fd(), &self.shown.join("limits")) {
            Ok(Some(l)) if l.generation != self.generation.load(Ordering::Relaxed) && l.slice == self.name => {
                let limit = self.effective(l.memory_bytes);
                log!(
                    Info,
                    "slice {}: limits generation {} → {}, memory limit {limit} bytes",
                    self.name,
                    self.generation.load(Ordering::Relaxed),
                    l.generation
                );
                self.limit.store(limit, Ordering::Relaxed);
                self.cores.store(l.cores_percent, Ordering::Relaxed);
                self.high.store(l.priority == Priority::High, Ordering::Relaxed);
                self.borrow.store(l.cores_policy == CoresPolicy::Borrow, Ordering::Relaxed);
                self.generation.store(l.generation, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => log!(Warn, "slice {}: keeping the last good limits: {e}", self.name),
        }
    }

    /// The slice's priority on its GPU.
    pub fn priority(&self) -> Priority {
        if self.high.load(Ordering::Relaxed) { Priority::High } else { Priority::Normal }
    }

    /// Whether the slice may borrow the GPU's idle time beyond its share.
    pub fn borrows(&self) -> bool {
        self.borrow.load(Ordering::Relaxed)
    }

    /// The board of the slice's GPU (`gpus/<uuid>/board` beside the slice directories) with the
    /// slice's record on it, opened once. Without one (a board that is missing, damaged, full
    /// or whose lock a process keeps) pacing sees no other slice: the board is advisory.
    pub fn board(&self) -> Option<&(Board, usize)> {
        self.board
            .get_or_init(|| {
                let gpus = open_dir_at(self.root.dir.as_fd(), OsStr::new("gpus")).ok()?;
                let gpu = open_dir_at(gpus.as_fd(), OsStr::new(&self.gpu_uuid)).ok()?;
                let shown = self.root.shown.join("gpus").join(&self.gpu_uuid).join("board");
                let board = match Board::open_at(gpu.as_fd(), OsStr::new("board"), &shown) {
                    Ok(board) if board.is_device() || !self.root.from_hook => board,
                    Ok(_) => {
                        log!(Info, "slice {}: {} is not a device; pacing without it", self.name, shown.display());
                        return None;
                    }
                    Err(e) => {
                        log!(Info, "slice {}: no board of its GPU: {e}", self.name);
                        return None;
                    }
                };
                let own = board.claim(&self.name, self.priority(), self.cores.load(Ordering::Relaxed)).ok()?;
                Some((board, own))
            })
            .as_ref()
    }

    /// Joins the slice's region (which the hook or `generate` made), once per process. A join
    /// that failed because the region's lock stayed held is tried again at the next call; any
    /// other failure is final (the slice fails closed).
    pub fn join(&self) -> Result<&Joined, Refusal> {
        if let Some(joined) = self.joined.get() {
            return self.joined_or_refuse(joined);
        }
        let _one_at_a_time = self.joining.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(joined) = self.joined.get() {
            return self.joined_or_refuse(joined);
        }
        let shown = self.shown.join("region");
        let attempt = Region::open_at(self.dir.as_fd(), OsStr::new("region"), &shown).and_then(|region| {
            let slot = region.register_in(self.root.container)?;
            Ok((region, slot))
        });
        let joined = match attempt {
            Err(e) if e.is_busy() => {
                crate::log::once(
                    &self.busy_reported,
                    &format!("slice {}: {e}; refusing GPU memory while it stays held", self.name),
                );
                return Err(Refusal::Unavailable);
            }
            Err(e) => Err(e.to_string()),
            Ok((region, _)) if self.root.from_hook && !region.is_device() => {
                Err(format!("{} is not a device, so any process could truncate it under this one", shown.display()))
            }
            Ok((region, slot)) => {
                remember_fd(region.raw_fd());
                log!(Info, "slice {}: joined {} as slot {slot}", self.name, shown.display());
                Ok(Joined { region, slot })
            }
        };
        self.joined_or_refuse(self.joined.get_or_init(|| joined))
    }

    fn joined_or_refuse<'a>(&self, joined: &'a Result<Joined, String>) -> Result<&'a Joined, Refusal> {
        joined.as_ref().map_err(|e| {
            crate::log::once(&self.reported, &format!("slice {}: {e}; refusing GPU memory on this slice", self.name));
            Refusal::Unavailable
        })
    }

    /// Charges `bytes` against the limit.
    pub fn charge(&self, bytes: u64) -> Result<(), Refusal> {
        let j = self.join()?;
        let limit = self.limit();
        match j.region.charge(j.slot, bytes, limit) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(over)) => {
                log!(Info, "slice {}: refusing {bytes} bytes: {over}", self.name);
                Err(Refusal::OverLimit(over))
            }
            Err(e) if e.is_busy() => {
                crate::log::once(
                    &self.busy_reported,
                    &format!("slice {}: {e}; refusing this allocation (and any other while it stays held)", self.name),
                );
                Err(Refusal::Unavailable)
            }
            Err(e) => {
                crate::log::once(
                    &self.reported,
                    &format!("slice {}: {e}; refusing GPU memory on this slice", self.name),
                );
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Counts an allocation refused for the limit in the region (the slice's and this
    /// process's counters), for the host's metrics and log.
    pub fn note_refused(&self) {
        if let Ok(j) = self.join() {
            j.region.note_refused(j.slot);
        }
    }

    /// Adds `bytes` even past the limit: for memory the driver already handed out.
    pub fn force_charge(&self, bytes: u64) {
        if let Ok(j) = self.join() {
            let _ = j.region.charge(j.slot, bytes, u64::MAX);
        }
    }

    pub fn uncharge(&self, bytes: u64) {
        if let Ok(j) = self.join() {
            j.region.uncharge(j.slot, bytes);
        }
    }

    /// Bytes in use by the whole slice, reclaiming dead processes at most once a second (only
    /// if the region's lock is free at once: a memory query never waits for it).
    pub fn usage(&self) -> Result<u64, Refusal> {
        let j = self.join()?;
        let _ = self.limit(); // also times the reclaim below
        static NEXT_RECLAIM: AtomicU64 = AtomicU64::new(0);
        let now = now_ns();
        if now >= NEXT_RECLAIM.swap(now + RECHECK_NS, Ordering::Relaxed) {
            let _ = j.region.reclaim_dead_within(Duration::ZERO);
        }
        j.region.usage().map_err(|e| {
            crate::log::once(&self.reported, &format!("slice {}: {e}; refusing GPU memory on this slice", self.name));
            Refusal::Unavailable
        })
    }
}

/// Everything the shim knows in this process.
#[derive(Debug)]
pub struct State {
    pub slices: Vec<Slice>,
    /// A trusted limits file that could not be read: every slice operation fails closed.
    pub broken: Option<String>,
    devices: [AtomicI32; MAX_DEVICES],
    nvml_devices: Mutex<Vec<(usize, Option<usize>)>>,
    pub book: Mutex<crate::memory::Book>,
    broken_reported: AtomicBool,
}

const UNKNOWN: i32 = -2;
const NONE: i32 = -1;

static STATE: AtomicPtr<State> = AtomicPtr::new(std::ptr::null_mut());

/// The process's state, discovered on first use.
pub fn state() -> &'static State {
    let p = STATE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: STATE only ever holds pointers from Box::into_raw that are never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(State::discover()));
    match STATE.compare_exchange(std::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            register_fork_handler();
            // SAFETY: just published, never freed.
            unsafe { &*fresh }
        }
        Err(winner) => {
            // SAFETY: `fresh` lost the race and was never shared; `winner` is never freed.
            unsafe {
                drop(Box::from_raw(fresh));
                &*winner
            }
        }
    }
}

/// Whether this process is in any slice (or must fail closed): otherwise pure pass-through.
pub fn active() -> bool {
    let s = state();
    !s.slices.is_empty() || s.broken.is_some()
}

impl State {
    fn discover() -> State {
        let env_cap = std::env::var("GPUSLICE_MEMORY_LIMIT").ok().and_then(|v| match v.parse::<ByteSize>() {
            Ok(b) => Some(b.0),
            Err(e) => {
                log!(Warn, "ignoring GPUSLICE_MEMORY_LIMIT: {e}");
                None
            }
        });
        let mut slices: Vec<Slice> = Vec::new();
        let mut broken = None;
        // The hook's slices first: a GPU keeps the first slice found for it.
        let mut roots = match hook_roots() {
            Ok(roots) => roots,
            Err(e) => {
                broken = Some(e);
                Vec::new()
            }
        };
        if let Some(dir) = std::env::var_os("GPUSLICE_STATE_DIR").map(PathBuf::from) {
            match open_dir(&dir) {
                Ok(fd) => roots.push(Root { dir: fd, shown: dir, from_hook: false, container: 0 }),
                Err(e) => log!(Info, "GPUSLICE_STATE_DIR {}: {e}", dir.display()),
            }
        }
        for root in roots {
            let root = std::sync::Arc::new(root);
            let hook_gpus: Vec<String> =
                slices.iter().filter(|s| s.root.from_hook).map(|s| s.gpu_uuid.to_ascii_lowercase()).collect();
            for (name, dir, shown) in slice_dirs(&root) {
                if slices.iter().any(|s| s.name == name) {
                    continue;
                }
                match read_trusted(dir.as_fd(), &shown.join("limits")) {
                    Ok(None) => {}
                    Ok(Some(l)) if l.slice != name => {
                        broken =
                            Some(format!("{} names slice {:?}, not {name:?}", shown.join("limits").display(), l.slice));
                    }
                    Ok(Some(l)) if l.mode != Mode::Shim => log!(Info, "slice {name}: mode {}, no limits", l.mode),
                    Ok(Some(l)) if !root.from_hook && hook_gpus.contains(&l.gpu_uuid.to_ascii_lowercase()) => {
                        log!(
                            Info,
                            "slice {name}: GPU {} has the hook's slice; ignoring {}",
                            l.gpu_uuid,
                            shown.display()
                        );
                    }
                    Ok(Some(l)) => {
                        log!(
                            Info,
                            "slice {name}: GPU {} limit {} bytes (generation {})",
                            l.gpu_uuid,
                            l.memory_bytes,
                            l.generation
                        );
                        slices.push(Slice::new(&l, dir, shown, root.clone(), env_cap));
                    }
                    Err(e) => broken = Some(e),
                }
            }
        }
        State {
            slices,
            broken,
            devices: std::array::from_fn(|_| AtomicI32::new(UNKNOWN)),
            nvml_devices: Mutex::new(Vec::new()),
            book: Mutex::new(crate::memory::Book::default()),
            broken_reported: AtomicBool::new(false),
        }
    }

    /// Fails closed when a trusted limits file was unreadable.
    pub fn check_broken(&self) -> Result<(), Refusal> {
        match &self.broken {
            None => Ok(()),
            Some(e) => {
                crate::log::once(&self.broken_reported, &format!("{e}; refusing GPU use"));
                Err(Refusal::Unavailable)
            }
        }
    }

    fn slice_by_uuid(&self, uuid: &str) -> Option<usize> {
        self.slices.iter().position(|s| s.gpu_uuid.eq_ignore_ascii_case(uuid))
    }

    /// The slice of a CUDA device ordinal, matched by GPU UUID.
    pub fn slice_for_device(&self, dev: CUdevice) -> Option<usize> {
        if self.slices.is_empty() {
            return None;
        }
        let cached = usize::try_from(dev).ok().filter(|&d| d < MAX_DEVICES).map(|d| &self.devices[d]);
        if let Some(c) = cached {
            match c.load(Ordering::Relaxed) {
                UNKNOWN => {}
                NONE => return None,
                i => return Some(i as usize),
            }
        }
        let api = crate::driver::cuda();
        let mut uuid = CUuuid::default();
        // SAFETY: real driver calls with a valid out pointer.
        let rc = unsafe {
            match (api.cuDeviceGetUuid_v2, api.cuDeviceGetUuid) {
                (Some(f), _) | (None, Some(f)) => f(&mut uuid, dev),
                (None, None) => CUDA_ERROR_NOT_SUPPORTED,
            }
        };
        if rc != CUDA_SUCCESS {
            return None;
        }
        let found = self.slice_by_uuid(&format_uuid(&uuid));
        if let Some(c) = cached {
            c.store(found.map_or(NONE, |i| i as i32), Ordering::Relaxed);
        }
        found
    }

    /// The slice of an NVML device handle (an opaque address, passed back to NVML only),
    /// matched by GPU UUID.
    pub fn slice_for_nvml(&self, key: usize) -> Option<usize> {
        if self.slices.is_empty() {
            return None;
        }
        let device = key as nvmlDevice_t;
        let cache = || self.nvml_devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = cache().iter().find(|(k, _)| *k == key) {
            return *s;
        }
        // Asked without the cache's lock: no lock of ours is held across a call into NVML.
        let f = crate::driver::nvml().nvmlDeviceGetUUID?;
        let mut buf = [0 as std::ffi::c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
        // SAFETY: real NVML call with a buffer of the size we pass.
        if unsafe { f(device, buf.as_mut_ptr(), buf.len() as u32) } != NVML_SUCCESS {
            return None;
        }
        // SAFETY: NVML NUL-terminates the UUID within the buffer on success.
        let uuid = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        let found = self.slice_by_uuid(&uuid);
        let mut cache = cache();
        if !cache.iter().any(|(k, _)| *k == key) {
            cache.push((key, found));
        }
        found
    }
}

/// The hook's state tmpfs mounts this process sees, each opened and checked to be the mount
/// mountinfo listed (it can be renamed between reading and opening: then mountinfo is read
/// again). An error means the process must fail closed.
fn hook_roots() -> Result<Vec<Root>, String> {
    for _ in 0..DISCOVERY_TRIES {
        let mounts = mountinfo::read().map_err(|e| format!("{e}: cannot tell whether this process is in a slice"))?;
        let mut roots = Vec::new();
        let mut moved = false;
        for m in mounts.iter().filter(|m| m.is_hook_state() && m.read_only()) {
            match open_dir(&m.mount_point) {
                Ok(fd) if is_mount(fd.as_fd(), m) => {
                    roots.push(Root { dir: fd, shown: m.mount_point.clone(), from_hook: true, container: m.dev });
                }
                _ => {
                    moved = true;
                    break;
                }
            }
        }
        if !moved {
            return Ok(roots);
        }
    }
    Err(format!(
        "the slice state's mount kept moving while it was being opened ({DISCOVERY_TRIES} tries): cannot tell which slice this process is in"
    ))
}

/// Whether the open directory `fd` is the root of the mount `m`: the same filesystem, and the
/// same mount where the kernel reports mount ids.
fn is_mount(fd: BorrowedFd<'_>, m: &mountinfo::Mount) -> bool {
    // SAFETY: stat is plain data, zero is valid; fstat fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 || st.st_dev != m.dev {
        return false;
    }
    match mountinfo::mount_id(fd) {
        Ok(id) => id == m.id,
        Err(e) => e.kind() == std::io::ErrorKind::Unsupported,
    }
}

/// The slice directories under `root/slices`, sorted by name, each opened once.
fn slice_dirs(root: &Root) -> Vec<(String, OwnedFd, PathBuf)> {
    let Ok(slices) = open_dir_at(root.dir.as_fd(), OsStr::new("slices")) else { return Vec::new() };
    let listing = format!("/proc/self/fd/{}", slices.as_raw_fd());
    let mut names: Vec<String> = std::fs::read_dir(listing)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    let shown = root.shown.join("slices");
    names
        .into_iter()
        .filter_map(|name| {
            let fd = open_dir_at(slices.as_fd(), OsStr::new(&name)).ok()?;
            let path = shown.join(&name);
            Some((name, fd, path))
        })
        .collect()
}

/// `open(O_PATH | O_DIRECTORY)` of a path.
fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)`: the directory `name` in `dir`, not a symlink.
fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<OwnedFd> {
    open_at(dir, name, libc::O_PATH | libc::O_DIRECTORY)
}

fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a valid directory descriptor and NUL-terminated name; the result is checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the `limits` of the slice directory `dir` if it exists and sits on a read-only mount
/// (`shown` names it in messages). `Ok(None)`: absent, or not trusted (a writable file is what a
/// container could forge).
fn read_trusted(dir: BorrowedFd<'_>, shown: &Path) -> Result<Option<Limits>, String> {
    let fd = match open_at(dir, OsStr::new("limits"), libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            log!(Info, "ignoring {}: a symlink", shown.display());
            return Ok(None);
        }
        Err(e) => return Err(format!("{}: {e}", shown.display())),
    };
    let file = File::from(fd);
    match file.metadata() {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => {
            log!(Info, "ignoring {}: not a regular file", shown.display());
            return Ok(None);
        }
        Err(e) => return Err(format!("{}: {e}", shown.display())),
    }
    // SAFETY: statvfs is plain data, zero is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out pointer.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(format!("{}: {}", shown.display(), std::io::Error::last_os_error()));
    }
    if st.f_flag & libc::ST_RDONLY == 0 {
        log!(Info, "ignoring {}: not on a read-only mount, so not written by the host", shown.display());
        return Ok(None);
    }
    let mut text = String::new();
    file.take(MAX_LIMITS_LEN + 1).read_to_string(&mut text).map_err(|e| format!("{}: {e}", shown.display()))?;
    if text.len() as u64 > MAX_LIMITS_LEN {
        return Err(format!("{}: larger than {MAX_LIMITS_LEN} bytes", shown.display()));
    }
    Limits::parse(&text).map(Some).map_err(|e| format!("{}: {e}", shown.display()))
}

pub fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; CLOCK_MONOTONIC_COARSE is always available on Linux.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Region descriptors, closed in a forked child so that its copy of the parent's slot locks
/// does not keep a dead parent's slot alive.
static FDS: [AtomicI32; 16] = [const { AtomicI32::new(-1) }; 16];

fn remember_fd(fd: i32) {
    for slot in &FDS {
        if slot.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return;
        }
    }
}

extern "C" fn after_fork_in_child() {
    for slot in &FDS {
        let fd = slot.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: closing a descriptor the shim opened; the parent keeps its own copy.
            unsafe { libc::close(fd) };
        }
    }
    // Start afresh on next use; the parent's state (locks, slots) is not ours. Leaked on
    // purpose: another thread of the parent may have been inside it when we forked.
    STATE.store(std::ptr::null_mut(), Ordering::Release);
}

fn register_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a child handler that only touches atomics and closes our fds.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}
