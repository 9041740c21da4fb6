//! Device state shared by every process that loads the simulated GPU.
//!
//! Each GPU has one file, `<state dir>/gpu<index>.state`, mapped shared into every process.
//! The file is one page: a versioned header written before the file becomes visible, then
//! atomics only. A creator writes the whole page to a private temporary file and publishes
//! it with `link(2)`, which fails if another process published first; the loser opens the
//! winner's file. So a process never sees a half-written header.
//!
//! The state dir is `$FAKEGPU_STATE_DIR`, or `$TMPDIR/fakegpu-<hash of the config path>` so
//! that every process using one config file shares one machine. Counters persist until the
//! directory is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::{ConfigError, FakeGpuConfig};

/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "FAKEGPU_STATE_DIR";

/// First eight bytes of a state file.
const MAGIC: u64 = u64::from_le_bytes(*b"FAKEGPU\0");
/// Layout version of [`StateFile`]; bump on any change.
const VERSION: u32 = 1;
/// Size of a state file; the header's unused tail is room for later fields.
const FILE_SIZE: usize = 4096;

/// The mapped layout of a state file. Fields before `used_bytes` are written once, before
/// the file is published, and only read afterwards.
#[repr(C)]
struct StateFile {
    magic: u64,
    version: u32,
    index: u32,
    total_bytes: u64,
    /// Device memory in use, summed over every process.
    used_bytes: AtomicU64,
}

const _: () = assert!(size_of::<StateFile>() <= FILE_SIZE);

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

/// A reservation that does not fit in the device's free memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of device memory: {requested} bytes requested, {free} free")]
pub struct OutOfMemory {
    pub requested: u64,
    pub free: u64,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError + use<> {
    let path = path.to_owned();
    move |source| StateError::Io { op, path, source }
}

/// One GPU's shared state, mapped into this process.
#[derive(Debug)]
pub struct DeviceState {
    map: NonNull<StateFile>,
    index: u32,
    total: u64,
    path: PathBuf,
}

// SAFETY: the mapping is shared memory that lives until `drop`; the only field written after
// publication is an atomic, and the rest are read-only, so any thread may use it.
unsafe impl Send for DeviceState {}
// SAFETY: as for `Send`: `&DeviceState` gives access only to atomics and read-only fields.
unsafe impl Sync for DeviceState {}

impl DeviceState {
    /// Open GPU `index`'s state in `dir`, creating both (with nothing used) if they do not
    /// exist. Safe against other processes doing the same at the same time.
    pub fn open(dir: &Path, index: u32, total_bytes: u64) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let path = dir.join(format!("gpu{index}.state"));
        // Two rounds suffice: we lose at most one publication race.
        for _ in 0..2 {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => return Self::map(file, path, index, total_bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("opening", &path)(e)),
            }
            publish(&path, index, total_bytes)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err("opening", &path))?;
        Self::map(file, path, index, total_bytes)
    }

    fn map(file: File, path: PathBuf, index: u32, total_bytes: u64) -> Result<Self, StateError> {
        let len = file.metadata().map_err(io_err("reading", &path))?.len();
        if len != FILE_SIZE as u64 {
            return Err(StateError::Corrupt { path, reason: format!("{len} bytes, expected {FILE_SIZE}") });
        }
        // SAFETY: a fresh shared mapping of a file we opened read-write and that is exactly
        // FILE_SIZE long; the kernel picks the address. The mapping outlives `file`.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io_err("mapping", &path)(io::Error::last_os_error()));
        }
        let map = NonNull::new(addr.cast::<StateFile>())
            .ok_or_else(|| StateError::Corrupt { path: path.clone(), reason: "mapped at address 0".into() })?;
        let state = Self { map, index, total: total_bytes, path };
        state.check_header(index, total_bytes)?;
        Ok(state)
    }

    fn check_header(&self, index: u32, total_bytes: u64) -> Result<(), StateError> {
        let header = self.file();
        let corrupt = |reason: String| StateError::Corrupt { path: self.path.clone(), reason };
        if header.magic != MAGIC {
            return Err(corrupt(format!("magic {:#x}", header.magic)));
        }
        if header.version != VERSION {
            return Err(corrupt(format!("layout version {}, this library reads {VERSION}", header.version)));
        }
        if header.index != index {
            return Err(corrupt(format!("made for GPU {}", header.index)));
        }
        if header.total_bytes != total_bytes {
            return Err(StateError::Mismatch {
                path: self.path.clone(),
                expected: total_bytes,
                found: header.total_bytes,
            });
        }
        Ok(())
    }

    fn file(&self) -> &StateFile {
        // SAFETY: `map` points at a live, page-aligned FILE_SIZE mapping (see `map`) holding a
        // published StateFile; after publication only the atomic field changes.
        unsafe { self.map.as_ref() }
    }

    /// The GPU's NVML index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total device memory in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Device memory in use by all processes, in bytes.
    pub fn used(&self) -> u64 {
        self.file().used_bytes.load(Ordering::Acquire)
    }

    /// `total − used`.
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used())
    }

    /// Take `bytes` of device memory if they are free; returns the new amount in use.
    pub fn try_reserve(&self, bytes: u64) -> Result<u64, OutOfMemory> {
        let total = self.total;
        self.file()
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&new| new <= total)
            })
            .map(|old| old + bytes)
            .map_err(|used| OutOfMemory { requested: bytes, free: total.saturating_sub(used) })
    }

    /// Give back `bytes` taken with [`try_reserve`](Self::try_reserve); returns the new amount
    /// in use. Releasing more than is in use leaves zero.
    pub fn release(&self, bytes: u64) -> u64 {
        let old = self
            .file()
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(bytes)))
            .unwrap_or_else(|used| used);
        old.saturating_sub(bytes)
    }
}

impl Drop for DeviceState {
    fn drop(&mut self) {
        // SAFETY: `map` is the FILE_SIZE mapping made in `map` and nothing borrows it past
        // `self`.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), FILE_SIZE);
        }
    }
}

/// Write a fresh state file for GPU `index` to a private name, then link it to `path`.
/// Losing the race to another process is not an error.
fn publish(path: &Path, index: u32, total_bytes: u64) -> Result<(), StateError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let mut page = vec![0u8; FILE_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        page[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(offset_of!(StateFile, magic), &MAGIC.to_ne_bytes());
    put(offset_of!(StateFile, version), &VERSION.to_ne_bytes());
    put(offset_of!(StateFile, index), &index.to_ne_bytes());
    put(offset_of!(StateFile, total_bytes), &total_bytes.to_ne_bytes());
    put(offset_of!(StateFile, used_bytes), &0u64.to_ne_bytes());

    let written = OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|mut f| f.write_all(&page));
    let result = written.map_err(io_err("writing", &tmp)).and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("publishing", path)(e)),
    });
    let _ = fs::remove_file(&tmp);
    result
}

/// The simulated machine for this process: the config and every GPU's shared state.
#[derive(Debug)]
pub struct Simulator {
    config_path: PathBuf,
    config: FakeGpuConfig,
    state_dir: PathBuf,
    devices: Vec<DeviceState>,
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
    pub fn new(config_path: PathBuf, config: FakeGpuConfig, state_dir: PathBuf) -> Result<Self, StateError> {
        let devices = config
            .gpu
            .iter()
            .zip(0u32..)
            .map(|(gpu, index)| DeviceState::open(&state_dir, index, gpu.memory.0))
            .collect::<Result<_, _>>()?;
        Ok(Self { config_path, config, state_dir, devices })
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
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
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
