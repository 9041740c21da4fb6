//! Which slices this process is in, their limits, and its place in each slice's region.
//!
//! Discovery reads `/run/gpuslice/slices/*/limits`, and `<GPUSLICE_STATE_DIR>/slices/*/limits`
//! when that is set (it adds a place, never hides one), and trusts a limits file only where it
//! sits on a read-only mount: the hook mounts it so in every container, and a directory a
//! container forges on its writable filesystem is ignored. No trusted slice means pure pass-through. A trusted file that cannot
//! be read as limits makes the shim fail closed.
//!
//! The state lives behind one pointer that is replaced, never freed, so a forked child (whose
//! copy of the parent's locks and descriptors must not be used) starts afresh.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use gpuslice_core::board::{Board, board_path};
use gpuslice_core::config::{CoresPolicy, Mode, Priority};
use gpuslice_core::limits::{Limits, limits_path, slices_dir};
use gpuslice_core::region::{OverLimit, Region, on_read_only_mount, region_path};
use gpuslice_core::units::ByteSize;

use crate::ffi::*;
use crate::log::log;

/// Where the hook mounts slice state in containers.
pub const DEFAULT_STATE_DIR: &str = "/run/gpuslice";
/// Device memory charged for each context (primary or created): what a CUDA context takes on
/// current GPUs is a few hundred MiB, and the limit must cover it.
pub const CONTEXT_CHARGE: u64 = 256 << 20;
/// Devices whose slice binding is cached.
const MAX_DEVICES: usize = 64;
/// How often limits files are re-read and dead processes reclaimed from memory queries.
const RECHECK_NS: u64 = 1_000_000_000;

/// Why the shim refuses an operation; the one place refusals become driver result codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The slice's limit would be exceeded.
    OverLimit(OverLimit),
    /// The slice cannot be enforced (bad limits file, unusable region): fail closed.
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

/// One slice the process is in.
#[derive(Debug)]
pub struct Slice {
    pub name: String,
    pub gpu_uuid: String,
    limits_path: PathBuf,
    region_path: PathBuf,
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
    /// The board of the slice's GPU and the slice's record on it, when there is one.
    board: OnceLock<Option<(Board, usize)>>,
    reported: AtomicBool,
}

impl Slice {
    fn new(limits: &Limits, limits_path: PathBuf, region_path: PathBuf, env_cap: Option<u64>) -> Slice {
        let s = Slice {
            name: limits.slice.clone(),
            gpu_uuid: limits.gpu_uuid.clone(),
            limits_path,
            region_path,
            env_cap,
            limit: AtomicU64::new(0),
            cores: AtomicU32::new(limits.cores_percent),
            high: AtomicBool::new(limits.priority == Priority::High),
            borrow: AtomicBool::new(limits.cores_policy == CoresPolicy::Borrow),
            generation: AtomicU64::new(limits.generation),
            next_check_ns: AtomicU64::new(now_ns() + RECHECK_NS),
            joined: OnceLock::new(),
            board: OnceLock::new(),
            reported: AtomicBool::new(false),
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

    /// The compute share in percent, re-reading the limits file as [`Slice::limit`] does.
    pub fn cores(&self) -> u32 {
        self.limit();
        self.cores.load(Ordering::Relaxed)
    }

    fn reload(&self) {
        match read_trusted(&self.limits_path) {
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

    /// Joins the slice's region (creating it if first), once per process.
    /// The slice's priority on its GPU.
    pub fn priority(&self) -> Priority {
        if self.high.load(Ordering::Relaxed) { Priority::High } else { Priority::Normal }
    }

    /// Whether the slice may borrow the GPU's idle time beyond its share.
    pub fn borrows(&self) -> bool {
        self.borrow.load(Ordering::Relaxed)
    }

    /// The board of the slice's GPU (next to the slice directories, `<state dir>/gpus/<uuid>/
    /// board`) with the slice's record on it, opened once. Without one (an older hook, a
    /// container that removed it) pacing sees no other slice.
    pub fn board(&self) -> Option<&(Board, usize)> {
        self.board
            .get_or_init(|| {
                let state_dir = self.region_path.parent()?.parent()?.parent()?;
                let board = match Board::open(&board_path(state_dir, &self.gpu_uuid)) {
                    Ok(board) => board,
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

    pub fn join(&self) -> Result<&Joined, Refusal> {
        let joined = self.joined.get_or_init(|| {
            let region = Region::open_or_create(&self.region_path).map_err(|e| e.to_string())?;
            let slot = region.register().map_err(|e| e.to_string())?;
            remember_fd(region.raw_fd());
            log!(Info, "slice {}: joined {} as slot {slot}", self.name, self.region_path.display());
            Ok(Joined { region, slot })
        });
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
            Err(e) => {
                crate::log::once(
                    &self.reported,
                    &format!("slice {}: {e}; refusing GPU memory on this slice", self.name),
                );
                Err(Refusal::Unavailable)
            }
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

    /// Bytes in use by the whole slice, reclaiming dead processes at most once a second.
    pub fn usage(&self) -> Result<u64, Refusal> {
        let j = self.join()?;
        let _ = self.limit(); // also times the reclaim below
        static NEXT_RECLAIM: AtomicU64 = AtomicU64::new(0);
        let now = now_ns();
        if now >= NEXT_RECLAIM.swap(now + RECHECK_NS, Ordering::Relaxed) {
            let _ = j.region.reclaim_dead();
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
        // The hook's place is always looked at: a variable the container sets can add a
        // directory (tests, processes outside containers) but never hide a slice.
        let mut state_dirs = vec![PathBuf::from(DEFAULT_STATE_DIR)];
        if let Some(dir) = std::env::var_os("GPUSLICE_STATE_DIR").map(PathBuf::from)
            && dir != Path::new(DEFAULT_STATE_DIR)
        {
            state_dirs.push(dir);
        }
        let env_cap = std::env::var("GPUSLICE_MEMORY_LIMIT").ok().and_then(|v| match v.parse::<ByteSize>() {
            Ok(b) => Some(b.0),
            Err(e) => {
                log!(Warn, "ignoring GPUSLICE_MEMORY_LIMIT: {e}");
                None
            }
        });
        let mut slices: Vec<Slice> = Vec::new();
        let mut broken = None;
        for state_dir in &state_dirs {
            let mut names: Vec<String> = std::fs::read_dir(slices_dir(state_dir))
                .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
                .unwrap_or_default();
            names.sort();
            for name in names {
                if slices.iter().any(|s| s.name == name) {
                    continue;
                }
                let path = limits_path(state_dir, &name);
                match read_trusted(&path) {
                    Ok(None) => {}
                    Ok(Some(l)) if l.slice != name => {
                        broken = Some(format!("{} names slice {:?}, not {name:?}", path.display(), l.slice));
                    }
                    Ok(Some(l)) if l.mode == Mode::None => log!(Info, "slice {name}: mode none, no limits"),
                    Ok(Some(l)) => {
                        log!(
                            Info,
                            "slice {name}: GPU {} limit {} bytes (generation {})",
                            l.gpu_uuid,
                            l.memory_bytes,
                            l.generation
                        );
                        slices.push(Slice::new(&l, path, region_path(state_dir, &name), env_cap));
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
        let mut cache = self.nvml_devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = cache.iter().find(|(k, _)| *k == key) {
            return *s;
        }
        let f = crate::driver::nvml().nvmlDeviceGetUUID?;
        let mut buf = [0 as std::ffi::c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
        // SAFETY: real NVML call with a buffer of the size we pass.
        if unsafe { f(device, buf.as_mut_ptr(), buf.len() as u32) } != NVML_SUCCESS {
            return None;
        }
        // SAFETY: NVML NUL-terminates the UUID within the buffer on success.
        let uuid = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        let found = self.slice_by_uuid(&uuid);
        cache.push((key, found));
        found
    }
}

/// Reads a limits file if it exists and sits on a read-only mount. `Ok(None)`: absent, or not
/// trusted (a writable file is what a container could forge).
fn read_trusted(path: &Path) -> Result<Option<Limits>, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(m) if !m.file_type().is_file() => {
            log!(Info, "ignoring {}: not a regular file", path.display());
            return Ok(None);
        }
        Ok(_) => {}
    }
    match on_read_only_mount(path) {
        Ok(true) => {}
        Ok(false) => {
            log!(Info, "ignoring {}: not on a read-only mount, so not written by the host", path.display());
            return Ok(None);
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    Limits::load(path).map(Some).map_err(|e| format!("{}: {e}", path.display()))
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
