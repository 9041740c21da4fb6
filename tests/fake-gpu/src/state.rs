//! Device state shared by every process that loads the simulated GPU.
//!
//! Each GPU has one file, `<state dir>/gpu<index>.state`, mapped shared into every process:
//! a versioned header written before the file becomes visible, then a table of usage
//! records, atomics only. Its layout is [`StateFile`], defined once with gpuslice's
//! `shared_struct!`, and the file is created, opened, mapped and locked with the same helper as
//! gpuslice's own shared files (`gpuslice_core::shm`): a creator writes the whole file under a
//! temporary name and publishes it with `link(2)`, which fails if another process published
//! first; the loser opens the winner's file. So a process never sees a half-written header, and
//! the header is validated from a snapshot of its atomics after the file is mapped.
//!
//! Memory in use is kept per holder, as on a real GPU, where the driver frees what a process
//! held when it exits however it exits. Each [`DeviceState`] that reserves memory claims a
//! record (a *slot*) and holds an open-file-description (OFD) lock on the slot's bytes of the
//! file for as long as it lives. The kernel drops that lock when the process exits or is
//! killed, so a slot whose lock can be taken belongs to nobody: its bytes are reclaimed
//! lazily, whenever used memory is summed. OFD locks, unlike pids, are not fooled by pid
//! reuse or by processes in other pid namespaces (containers) sharing the state dir.
//! Reservations are serialised across processes by an OFD lock on the header's first byte,
//! so two processes cannot both take the last free bytes.
//!
//! Each holder also marks its slot as its process's in the GPU's holders file
//! ([`crate::holders`]), so that anyone can ask which process, by the PID its own namespace
//! gives it, holds each record: [`DeviceState::processes`], NVML's running processes.
//!
//! The state dir is `$FAKEGPU_STATE_DIR`, or `$TMPDIR/fakegpu-<hash of the config path>` so
//! that every process using one config file shares one machine.

use std::fs;
use std::io;
use std::mem::{offset_of, size_of};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use gpuslice_core::shared_struct;
use gpuslice_core::shm::atomic::{AtomicU64, Ordering};
use gpuslice_core::shm::lock::{self, RangeLock};
use gpuslice_core::shm::{Mapping, ShmError};

use crate::config::{ConfigError, FakeGpuConfig, GpuConfig};
use crate::holders::{self, HolderFile};
use crate::timeline::DeviceTimeline;

/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "FAKEGPU_STATE_DIR";

/// First eight bytes of a state file.
const MAGIC: u64 = u64::from_le_bytes(*b"FAKEGPU\0");
/// Layout version of [`StateFile`]; bump on any change.
const VERSION: u32 = 2;
/// Usage records per GPU: at most this many processes (strictly, [`DeviceState`]s) hold
/// memory on one GPU at a time.
pub const SLOTS: usize = 1024;
/// The byte of the file whose lock serialises reservations.
const RESERVE_LOCK: Range<u64> = 0..1;

shared_struct! {
    /// The start of a state file. Written once, before the file is published, and only read
    /// (and validated) afterwards.
    struct Header as HeaderValues {
        magic: u64,
        version: u32,
        index: u32,
        total_bytes: u64,
        slots: u32,
        slot_offset: u32,
    }
}

shared_struct! {
    /// One holder's record. `pid` (as the holder's own PID namespace numbers it) and `pid_ns`
    /// (the low 32 bits of that namespace's inode number) say who holds it, for a reader in
    /// the same namespace; whether the holder lives is decided by the lock on the slot's bytes.
    struct Slot as SlotValues {
        pid: u32,
        pid_ns: u32,
        /// Device memory this holder has in use.
        bytes: u64,
    }
}

shared_struct! {
    /// A state file: the one definition of its layout.
    struct StateFile {
        header: Header,
        /// Room for later header fields.
        reserved: [AtomicU64; (4096 - size_of::<Header>()) / 8],
        slots: [Slot; SLOTS],
    }
}

/// Bytes before the first slot.
const HEADER_SIZE: usize = offset_of!(StateFile, slots);
/// Size of a state file.
const FILE_SIZE: usize = size_of::<StateFile>();
const _: () = assert!(size_of::<Header>() == 32 && HEADER_SIZE == 4096 && size_of::<Slot>() == 16);
const _: () = assert!(FILE_SIZE == 4096 + 16 * SLOTS);

impl HeaderValues {
    fn new(index: u32, total_bytes: u64) -> Self {
        HeaderValues {
            magic: MAGIC,
            version: VERSION,
            index,
            total_bytes,
            slots: SLOTS as u32,
            slot_offset: HEADER_SIZE as u32,
        }
    }
}

/// Why device state could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("{path} is not a fake GPU state file ({reason}); remove the state directory")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} was made for a GPU with {found} bytes but the config says {expected}; remove the state directory")]
    Mismatch { path: PathBuf, expected: u64, found: u64 },
}

impl From<ShmError> for StateError {
    fn from(err: ShmError) -> Self {
        match err {
            ShmError::Io { op, path, source } => StateError::Io { op, path, source },
            ShmError::NotRegular { path } => StateError::Corrupt { path, reason: "not a regular file".into() },
            ShmError::Size { path, found, expected } => {
                StateError::Corrupt { path, reason: format!("{found} bytes, expected {expected}") }
            }
        }
    }
}

/// A reservation that does not fit in the device's free memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of device memory: {requested} bytes requested, {free} free")]
pub struct OutOfMemory {
    pub requested: u64,
    pub free: u64,
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError + use<> {
    let path = path.to_owned();
    move |source| StateError::Io { op, path, source }
}

/// Waits for the lock on `range`. If locking itself fails (it does not on Linux ≥ 3.15), goes
/// on unlocked: the caller's in-process mutex still orders this process's own updates.
pub(crate) fn wait_lock(file: &fs::File, range: Range<u64>) -> Option<RangeLock<'_>> {
    lock::lock(file, range).map_err(|err| eprintln!("fakegpu: locking the device state: {err}")).ok()
}

/// One GPU's shared state, mapped into this process.
///
/// Memory reserved through a `DeviceState` is held until it is released, the `DeviceState`
/// is dropped, or the process dies, whichever comes first.
#[derive(Debug)]
pub struct DeviceState {
    /// The file, kept open for the OFD locks, which belong to this open file description.
    map: Mapping<StateFile>,
    index: u32,
    total: u64,
    /// This holder's slot, claimed on the first reservation. The mutex also serialises this
    /// holder's reservations between threads, which the OFD lock (shared by every thread using
    /// this file description) cannot.
    mine: Mutex<Option<usize>>,
    /// The GPU's holders file, where this process marks its slot; `None` if it could not be
    /// opened (the memory is then used and counted, but no process is named for it).
    holders: Option<&'static HolderFile>,
}

/// A process holding device memory, as [`DeviceState::processes`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// The process's PID in the asking process's PID namespace.
    pub pid: u32,
    /// Device memory it holds, in bytes (its contexts included).
    pub bytes: u64,
}

impl DeviceState {
    /// Open GPU `index`'s state in `dir`, creating both (with nothing used) if they do not
    /// exist. Safe against other processes doing the same at the same time.
    pub fn open(dir: &Path, index: u32, total_bytes: u64) -> Result<Self, StateError> {
        Self::open_named(dir, &format!("gpu{index}"), index, total_bytes)
    }

    /// As [`open`](Self::open), for the state `<stem>.state` of GPU `index` (a MIG device's
    /// memory is its own: `gpu<index>-gi<id>-ci<id>-<bytes>`).
    pub fn open_named(dir: &Path, stem: &str, index: u32, total_bytes: u64) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let path = dir.join(format!("{stem}.state"));
        // Every process using the simulated GPU writes here, as every process may open a
        // real GPU's device nodes.
        let map = Mapping::<StateFile>::open_or_create(&path, 0o666, |f| {
            f.header.store(&HeaderValues::new(index, total_bytes));
        })?;
        let holders = HolderFile::get_named(dir, stem).ok();
        let state = Self { map, index, total: total_bytes, mine: Mutex::new(None), holders };
        state.check_header(index, total_bytes)?;
        Ok(state)
    }

    fn check_header(&self, index: u32, total_bytes: u64) -> Result<(), StateError> {
        let header = self.header().load();
        let corrupt = |reason: String| StateError::Corrupt { path: self.path().to_owned(), reason };
        if header.magic != MAGIC {
            return Err(corrupt(format!("magic {:#x}", header.magic)));
        }
        if header.version != VERSION {
            return Err(corrupt(format!("layout version {}, this library reads {VERSION}", header.version)));
        }
        if header.slots as usize != SLOTS || header.slot_offset as usize != HEADER_SIZE {
            return Err(corrupt(format!("{} slots at {}", header.slots, header.slot_offset)));
        }
        if header.index != index {
            return Err(corrupt(format!("made for GPU {}", header.index)));
        }
        if header.total_bytes != total_bytes {
            return Err(StateError::Mismatch {
                path: self.path().to_owned(),
                expected: total_bytes,
                found: header.total_bytes,
            });
        }
        Ok(())
    }

    fn header(&self) -> &Header {
        &self.map.get().header
    }

    fn slot(&self, i: usize) -> &Slot {
        &self.map.get().slots[i]
    }

    /// Byte range of slot `i` in the file, for its lock.
    fn slot_range(&self, i: usize) -> Range<u64> {
        self.map.range_of(self.slot(i))
    }

    /// The GPU's NVML index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// Total device memory in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Device memory in use by all live holders, in bytes. Records of dead holders found on
    /// the way are reclaimed.
    pub fn used(&self) -> u64 {
        let mine = self.lock_mine();
        self.sum(*mine)
    }

    /// `total − used`.
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used())
    }

    /// Device memory held through this `DeviceState`.
    pub fn held(&self) -> u64 {
        self.lock_mine().map_or(0, |i| self.slot(i).bytes.load(Ordering::Acquire))
    }

    /// Take `bytes` of device memory if they are free; returns the new amount in use.
    pub fn try_reserve(&self, bytes: u64) -> Result<u64, OutOfMemory> {
        let mut mine = self.lock_mine();
        let slot = match *mine {
            Some(i) => i,
            None => {
                let Some(i) = self.claim() else {
                    eprintln!(
                        "fakegpu: {}: all {SLOTS} usage records are held by live processes",
                        self.path().display()
                    );
                    return Err(OutOfMemory { requested: bytes, free: 0 });
                };
                *mine = Some(i);
                i
            }
        };
        // An MPS client's pinned memory limit: what this process holds, per device.
        let held = self.slot(slot).bytes.load(Ordering::Acquire);
        if !crate::mps::within_pinned(held.saturating_add(bytes)) {
            let limit = crate::mps::client().and_then(|c| c.pinned_bytes).unwrap_or(0);
            return Err(OutOfMemory { requested: bytes, free: limit.saturating_sub(held) });
        }
        let _serialised = wait_lock(self.map.file(), RESERVE_LOCK);
        let used = self.sum(Some(slot));
        match used.checked_add(bytes).filter(|&new| new <= self.total) {
            Some(new) => {
                self.slot(slot).bytes.fetch_add(bytes, Ordering::AcqRel);
                Ok(new)
            }
            None => Err(OutOfMemory { requested: bytes, free: self.total.saturating_sub(used) }),
        }
    }

    /// Give back `bytes` taken with [`try_reserve`](Self::try_reserve); returns the new amount
    /// in use. Releasing more than this `DeviceState` holds leaves it holding zero.
    pub fn release(&self, bytes: u64) -> u64 {
        let mine = self.lock_mine();
        if let Some(i) = *mine {
            let _ = self
                .slot(i)
                .bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| Some(held.saturating_sub(bytes)));
        }
        self.sum(*mine)
    }

    /// Every live process holding device memory on this GPU, by the PID this process's PID
    /// namespace gives it, with what it holds: what a real driver's
    /// `nvmlDeviceGetComputeRunningProcesses` lists. A process invisible from this namespace
    /// (the asker is in a container, the holder outside it) is left out, as is one whose
    /// holders mark is missing. In PID order.
    pub fn processes(&self) -> Vec<ProcessMemory> {
        let mine = self.lock_mine();
        let mut out: Vec<ProcessMemory> = Vec::new();
        for i in 0..SLOTS {
            let bytes = self.slot(i).bytes.load(Ordering::Acquire);
            if bytes == 0 || (Some(i) != *mine && !lock::held_elsewhere(self.map.file(), self.slot_range(i))) {
                continue;
            }
            let Some(pid) = self.holders.and_then(|h| h.holder(i as u64)).or_else(|| self.recorded_pid(i)) else {
                continue;
            };
            match out.iter_mut().find(|p| p.pid == pid) {
                Some(p) => p.bytes = p.bytes.saturating_add(bytes),
                None => out.push(ProcessMemory { pid, bytes }),
            }
        }
        out.sort_by_key(|p| p.pid);
        out
    }

    /// The PID slot `i` records, if it was recorded in this process's PID namespace (where it
    /// then names the holder). This names a holder whose holders mark cannot be seen from
    /// here: another copy of this library in the same process (`libcuda.so.1` and
    /// `libnvidia-ml.so.1` are two files), whose POSIX locks are this process's own.
    fn recorded_pid(&self, i: usize) -> Option<u32> {
        let slot = self.slot(i);
        let ns = slot.pid_ns.load(Ordering::Acquire);
        let pid = slot.pid.load(Ordering::Acquire);
        (ns != 0 && ns == holders::pid_namespace() && pid != 0).then_some(pid)
    }

    fn lock_mine(&self) -> MutexGuard<'_, Option<usize>> {
        self.mine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sum every slot's bytes, reclaiming the slots of dead holders. `mine` is this holder's
    /// own slot, whose lock this file description already holds (so taking it again would
    /// succeed and prove nothing).
    fn sum(&self, mine: Option<usize>) -> u64 {
        let mut total = 0u64;
        for i in 0..SLOTS {
            let slot = self.slot(i);
            let bytes = slot.bytes.load(Ordering::Acquire);
            if bytes == 0 {
                continue;
            }
            if Some(i) != mine
                && let Ok(Some(_dead)) = lock::try_lock(self.map.file(), self.slot_range(i))
            {
                // Nobody holds the slot: its holder is gone, and so is its memory. The lock
                // stays taken until the slot is clear, so no new holder can claim it first.
                slot.bytes.store(0, Ordering::Release);
                slot.pid.store(0, Ordering::Release);
                continue;
            }
            total = total.saturating_add(bytes);
        }
        total
    }

    /// Find a slot nobody holds, lock it for the life of this file description and clear
    /// what a dead holder may have left in it.
    fn claim(&self) -> Option<usize> {
        // Empty slots first, so a fresh holder rarely touches a dead holder's record.
        let empty = (0..SLOTS).filter(|&i| self.slot(i).pid.load(Ordering::Acquire) == 0);
        let used = (0..SLOTS).filter(|&i| self.slot(i).pid.load(Ordering::Acquire) != 0);
        let i = empty.chain(used).find(|&i| match lock::try_lock(self.map.file(), self.slot_range(i)) {
            Ok(Some(lock)) => {
                lock.keep();
                true
            }
            _ => false,
        })?;
        let slot = self.slot(i);
        slot.bytes.store(0, Ordering::Release);
        slot.pid.store(std::process::id(), Ordering::Release);
        slot.pid_ns.store(holders::pid_namespace(), Ordering::Release);
        if let Some(h) = self.holders
            && let Err(err) = h.hold(i as u64)
        {
            eprintln!("fakegpu: {}: marking usage record {i} as this process's: {err}", h.path().display());
        }
        Some(i)
    }
}

impl Drop for DeviceState {
    fn drop(&mut self) {
        // What this holder reserved goes back now rather than at the next lazy reclaim. The
        // mapping and the file go with `map` afterwards, and with the file this holder's locks.
        if let Some(i) = *self.lock_mine() {
            self.slot(i).bytes.store(0, Ordering::Release);
            self.slot(i).pid.store(0, Ordering::Release);
            if let Some(h) = self.holders {
                h.release(i as u64);
            }
        }
    }
}

/// The simulated machine for this process: the config and every GPU's shared state.
#[derive(Debug)]
pub struct Simulator {
    config_path: PathBuf,
    config: FakeGpuConfig,
    state_dir: PathBuf,
    devices: Vec<DeviceState>,
    timelines: Vec<DeviceTimeline>,
    /// Each GPU's MIG devices' memory, in the config's order.
    migs: Vec<Vec<DeviceState>>,
    /// The devices CUDA enumerates in this process (`CUDA_VISIBLE_DEVICES`), by ordinal.
    cuda: Vec<CudaDevice>,
}

/// A device as CUDA sees it: a whole GPU, or a MIG device with its own memory and SMs.
#[derive(Debug, Clone)]
pub struct CudaDevice {
    /// The GPU as CUDA reports it; for a MIG device its parent's with the instance's UUID,
    /// name, memory and SMs.
    pub gpu: GpuConfig,
    /// The NVML index of the GPU (the parent of a MIG device).
    pub parent: u32,
    /// The MIG device's position in its parent's `[[gpu.mig]]` list.
    pub mig: Option<usize>,
}

impl Simulator {
    /// The machine described by `$FAKEGPU_CONFIG`, loaded on first use and kept for the
    /// life of the process (a failure too).
    pub fn global() -> Result<&'static Simulator, &'static StateError> {
        static GLOBAL: OnceLock<Result<Simulator, StateError>> = OnceLock::new();
        GLOBAL.get_or_init(Self::from_env).as_ref()
    }

    /// Load `$FAKEGPU_CONFIG` and open state under `$FAKEGPU_STATE_DIR` or the default.
    pub fn from_env() -> Result<Self, StateError> {
        let config_path = FakeGpuConfig::path_from_env()?;
        let config = FakeGpuConfig::load(&config_path)?;
        let state_dir = match std::env::var_os(STATE_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => default_state_dir(&config_path),
        };
        Self::new(config_path, config, state_dir)
    }

    /// A machine from an already validated config, with state in `state_dir` (created if
    /// missing).
    /// A GPU in MIG mode has the MIG devices of its persisted geometry when one was written
    /// ([`crate::geometry`]), else its config's.
    pub fn new(config_path: PathBuf, mut config: FakeGpuConfig, state_dir: PathBuf) -> Result<Self, StateError> {
        for (gpu, index) in config.gpu.iter_mut().zip(0u32..) {
            if gpu.mig_mode == Some(true)
                && let Some(g) = crate::geometry::Geometry::read(&state_dir, index)?
            {
                gpu.mig = g.migs();
            }
        }
        let devices: Vec<DeviceState> = config
            .gpu
            .iter()
            .zip(0u32..)
            .map(|(gpu, index)| DeviceState::open(&state_dir, index, gpu.memory.0))
            .collect::<Result<_, _>>()?;
        let timelines =
            (0..devices.len() as u32).map(|index| DeviceTimeline::open(&state_dir, index)).collect::<Result<_, _>>()?;
        let migs = config
            .gpu
            .iter()
            .zip(0u32..)
            .map(|(gpu, index)| {
                gpu.mig
                    .iter()
                    .enumerate()
                    .map(|(j, m)| {
                        // Named by instance and size, so a later geometry never meets a file of
                        // another size.
                        let stem =
                            format!("gpu{index}-gi{}-ci{}-{}", m.gpu_instance_id(j), m.compute_instance_id, m.memory.0);
                        DeviceState::open_named(&state_dir, &stem, index, m.memory.0)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let visible = std::env::var(crate::mig::VISIBLE_ENV).ok();
        let cuda = crate::mig::cuda_devices(&config, visible.as_deref());
        Ok(Self { config_path, config, state_dir, devices, timelines, migs, cuda })
    }

    /// GPU `index`'s MIG devices' memory, in the config's order.
    pub fn migs(&self, index: u32) -> &[DeviceState] {
        self.migs.get(index as usize).map_or(&[], Vec::as_slice)
    }

    /// The devices CUDA enumerates, by ordinal.
    pub fn cuda_devices(&self) -> &[CudaDevice] {
        &self.cuda
    }

    /// CUDA device `ordinal` as CUDA reports it.
    pub fn cuda_gpu(&self, ordinal: u32) -> Option<&GpuConfig> {
        self.cuda.get(ordinal as usize).map(|d| &d.gpu)
    }

    /// The memory of CUDA device `ordinal`: its GPU's, or its MIG device's own.
    pub fn cuda_state(&self, ordinal: u32) -> Option<&DeviceState> {
        let d = self.cuda.get(ordinal as usize)?;
        match d.mig {
            None => self.device(d.parent),
            Some(j) => self.migs(d.parent).get(j),
        }
    }

    /// The timeline CUDA device `ordinal`'s work runs on: its GPU's.
    pub fn cuda_timeline(&self, ordinal: u32) -> Option<&DeviceTimeline> {
        self.timeline(self.cuda.get(ordinal as usize)?.parent)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn config(&self) -> &FakeGpuConfig {
        &self.config
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Every GPU's state, in index order.
    pub fn devices(&self) -> &[DeviceState] {
        &self.devices
    }

    /// GPU `index`'s state.
    pub fn device(&self, index: u32) -> Option<&DeviceState> {
        self.devices.get(usize::try_from(index).ok()?)
    }

    /// GPU `index`'s timeline: when it is busy, and for whom.
    pub fn timeline(&self, index: u32) -> Option<&DeviceTimeline> {
        self.timelines.get(usize::try_from(index).ok()?)
    }
}

/// `$TMPDIR/fakegpu-<FNV-1a of the canonical config path>`: stable across processes and
/// Rust versions, distinct per config file.
pub fn default_state_dir(config_path: &Path) -> PathBuf {
    let canonical = fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    let hash = canonical
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    std::env::temp_dir().join(format!("fakegpu-{hash:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn reserve_and_release_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeviceState::open(dir.path(), 0, 10 * GIB).unwrap();
        assert_eq!((s.used(), s.free()), (0, 10 * GIB));
        assert_eq!(s.try_reserve(4 * GIB), Ok(4 * GIB));
        assert_eq!(s.try_reserve(7 * GIB), Err(OutOfMemory { requested: 7 * GIB, free: 6 * GIB }));
        assert_eq!(s.try_reserve(u64::MAX).unwrap_err().free, 6 * GIB);
        assert_eq!(s.try_reserve(6 * GIB), Ok(10 * GIB));
        assert_eq!(s.release(3 * GIB), 7 * GIB);
        assert_eq!(s.release(100 * GIB), 0);
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn a_dropped_holder_gives_its_memory_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceState::open(dir.path(), 0, 10 * GIB).unwrap();
        let b = DeviceState::open(dir.path(), 0, 10 * GIB).unwrap();
        a.try_reserve(4 * GIB).unwrap();
        b.try_reserve(GIB).unwrap();
        assert_eq!((a.held(), b.held(), b.used()), (4 * GIB, GIB, 5 * GIB));
        assert_eq!(b.try_reserve(6 * GIB), Err(OutOfMemory { requested: 6 * GIB, free: 5 * GIB }));
        drop(a);
        assert_eq!(b.used(), GIB);
        assert_eq!(b.try_reserve(9 * GIB), Ok(10 * GIB));
        // A new holder takes a free slot and starts from nothing.
        let c = DeviceState::open(dir.path(), 0, 10 * GIB).unwrap();
        assert_eq!(c.held(), 0);
        assert!(c.try_reserve(1).is_err());
        assert_eq!(b.release(10 * GIB), 0);
        assert_eq!(c.try_reserve(1), Ok(1));
    }

    #[test]
    fn an_abandoned_slot_is_reclaimed_when_memory_is_summed() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceState::open(dir.path(), 0, GIB).unwrap();
        a.try_reserve(1000).unwrap();
        // What a killed process leaves behind: its record, without the lock or a Drop. The
        // mapping refers to the open file description too, so both must go for the lock to.
        let slot = a.lock_mine().unwrap();
        // SAFETY: `a` is forgotten below, so nothing uses the mapping afterwards.
        unsafe { libc::munmap(std::ptr::from_ref(a.map.get()).cast_mut().cast(), FILE_SIZE) };
        // SAFETY: as above, for the descriptor.
        unsafe { libc::close(std::os::fd::AsRawFd::as_raw_fd(a.map.file())) };
        std::mem::forget(a);
        let b = DeviceState::open(dir.path(), 0, GIB).unwrap();
        assert_eq!(b.slot(slot).bytes.load(Ordering::Acquire), 1000, "the record is still there");
        assert_eq!(b.used(), 0);
        assert_eq!(b.slot(slot).bytes.load(Ordering::Acquire), 0, "and now it is cleared");
    }

    #[test]
    fn two_mappings_share_one_counter() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceState::open(dir.path(), 3, GIB).unwrap();
        let b = DeviceState::open(dir.path(), 3, GIB).unwrap();
        a.try_reserve(1000).unwrap();
        assert_eq!(b.used(), 1000);
        assert_eq!(a.path(), dir.path().join("gpu3.state"));
        assert_eq!(a.index(), 3);
    }

    #[test]
    fn racing_creators_agree_on_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let states: Vec<DeviceState> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| DeviceState::open(dir.path(), 0, GIB).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for s in &states {
            s.try_reserve(1).unwrap();
        }
        assert_eq!(states[0].used(), 8);
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["gpu0.holders", "gpu0.state"], "temporary files left behind");
    }

    #[test]
    fn refuses_a_file_made_for_another_gpu() {
        let dir = tempfile::tempdir().unwrap();
        drop(DeviceState::open(dir.path(), 0, GIB).unwrap());
        assert!(matches!(
            DeviceState::open(dir.path(), 0, 2 * GIB),
            Err(StateError::Mismatch { found, .. }) if found == GIB
        ));
        fs::write(dir.path().join("gpu1.state"), b"junk").unwrap();
        assert!(matches!(DeviceState::open(dir.path(), 1, GIB), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn default_dir_depends_on_the_config_path() {
        let a = default_state_dir(Path::new("/nonexistent/a.toml"));
        let b = default_state_dir(Path::new("/nonexistent/b.toml"));
        assert_ne!(a, b);
        assert_eq!(a, default_state_dir(Path::new("/nonexistent/a.toml")));
        assert!(a.starts_with(std::env::temp_dir()));
    }
}
