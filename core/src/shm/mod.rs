//! Files shared between processes through `MAP_SHARED` mappings: the slice's region, the GPU's
//! board (and the simulated GPU's state files use it too).
//!
//! One way to do each step, for every such file:
//!
//! - **a layout**, defined once with [`shared_struct!`](crate::shared_struct): `#[repr(C)]`,
//!   atomics only ([`atomic`]), no padding, its size and offsets checked at compile time;
//! - **creation** ([`Mapping::create`]): the whole file is written under a temporary name in the
//!   same directory (sized, initialised through a mapping of the same struct, given its mode)
//!   and then `link(2)`ed into place, which fails if someone else published first. So no
//!   process ever sees a half-initialised file, and the loser of a race opens the winner's.
//!   [`Mapping::replace`] publishes with `rename(2)` instead, replacing what is there;
//! - **opening** ([`Mapping::open`], [`Mapping::open_at`]): read-write, never through a symlink,
//!   only a regular file of exactly the layout's size or a block device of at least that size,
//!   mapped shared; the caller then validates a snapshot of the header, since anything a
//!   container can reach may hold anything;
//! - **files containers share** ([`Mapping::publish_device`], [`zram`]): a regular file can be
//!   truncated by anyone who can write it, and a process that touches a page of its mapping past
//!   the new end dies of `SIGBUS`. So the files that containers write (the region, the board)
//!   live on zram block devices, whose size nobody but root on the host can change: `ftruncate`
//!   fails with `EINVAL`, a write past the end with `ENOSPC`, and no page of a mapping ever lies
//!   past the end. (A sealed memfd would do the same, but cannot be given a path: bind mounting
//!   one fails with `EINVAL`, since memfds live on the kernel's internal mount.)
//! - **locking** ([`lock`]): OFD byte-range locks, released by the kernel when their holder dies.
//!
//! Only [`Shared`] types can be mapped, and only atomics, arrays of them and `shared_struct!`
//! structs are `Shared`, so a plain field in shared memory does not compile:
//!
//! ```
//! gpuslice_core::shared_struct! {
//!     struct Head as HeadValues { magic: [u8; 8], count: u32, flags: u32 }
//! }
//! gpuslice_core::shared_struct! {
//!     struct File { head: Head, slots: [gpuslice_core::shm::atomic::AtomicU64; 4] }
//! }
//! let missing = gpuslice_core::shm::Mapping::<File>::open(std::path::Path::new("/nonexistent"));
//! assert!(missing.unwrap_err().is_not_found());
//! ```
//!
//! ```compile_fail,E0277
//! #[repr(C)]
//! struct Header { magic: [u8; 8], version: u32 } // plain fields: not `Shared`
//! let _ = gpuslice_core::shm::Mapping::<Header>::open(std::path::Path::new("/nonexistent"));
//! ```
//!
//! ```compile_fail,E0277
//! gpuslice_core::shared_struct! {
//!     struct File { magic: [u8; 8] } // a plain array among shared parts: not `Shared`
//! }
//! ```
//!
//! ```compile_fail,E0080
//! gpuslice_core::shared_struct! {
//!     struct Padded as PaddedValues { small: u8, large: u64 } // padding between them
//! }
//! ```

pub mod atomic;
mod layout;
pub mod lock;
pub mod zram;

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

pub use atomic::Shared;
pub use layout::Field;

/// Why a shared file could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("{path} is neither a regular file nor a block device")]
    NotRegular { path: PathBuf },
    #[error("{path} is {found} bytes, expected {expected}")]
    Size { path: PathBuf, found: u64, expected: usize },
}

impl ShmError {
    /// Whether the file (or its directory) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ShmError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// The underlying I/O error, if that is what it is.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            ShmError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ShmError + use<> {
    let path = path.to_owned();
    move |source| ShmError::Io { op, path, source }
}

/// Whether [`Mapping::create`] published the file or found one there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call published it.
    New,
    /// A file was already there (possibly published by a concurrent caller); it is left alone.
    Existed,
}

/// A shared file mapped into this process as a `T`.
#[derive(Debug)]
pub struct Mapping<T: Shared> {
    ptr: NonNull<T>,
    /// Kept open for the mapping's OFD locks, which belong to this open description.
    file: File,
    path: PathBuf,
    /// Whether the file is a block device (which no process can truncate or grow).
    device: bool,
    _owns: PhantomData<T>,
}

// SAFETY: the mapping lives until drop and `T: Shared` is accessed only through atomics, so any
// thread may hold or use it; the file is only used for fcntl, which is thread-safe.
unsafe impl<T: Shared> Send for Mapping<T> {}
// SAFETY: as above: `&Mapping<T>` gives `&T` (atomics, `Sync`) and `&File`.
unsafe impl<T: Shared> Sync for Mapping<T> {}

impl<T: Shared> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the start of our own mapping of exactly size_of::<T>() bytes, and no
        // reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), size_of::<T>()) };
    }
}

/// Maps `size_of::<T>()` bytes of `file` (opened read-write, at least that long) shared.
fn map<T: Shared>(file: &File, path: &Path) -> Result<NonNull<T>, ShmError> {
    const { assert!(align_of::<T>() <= 4096 && size_of::<T>() > 0, "mappings are page aligned") };
    // SAFETY: a fresh shared mapping of an open file; the kernel picks the address and checks
    // the access mode against how the file was opened.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io_err("mapping", path)(io::Error::last_os_error()));
    }
    NonNull::new(addr.cast::<T>()).ok_or_else(|| io_err("mapping", path)(io::ErrorKind::AddrNotAvailable.into()))
}

/// The size of a block device: where its end is.
fn device_size(file: &File) -> io::Result<u64> {
    // SAFETY: lseek on an open descriptor; it does not change the mapping or any memory.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 { Err(io::Error::last_os_error()) } else { Ok(end as u64) }
}

/// A name beside `path` that no other writer picks: `.<name>.<pid>.<counter>.<time>`.
fn temporary_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique within this process (counter) and, across processes and PID namespaces sharing
    // the directory, all but surely (pid, time); a clash is retried by the callers.
    dir.join(format!(
        ".{name}.{}.{}.{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        crate::region::now_ns()
    ))
}

/// A block device node under a temporary name beside its final one; removed on drop unless
/// published.
struct DeviceNode {
    tmp: PathBuf,
    published: bool,
}

impl DeviceNode {
    fn create(path: &Path, mode: u32, rdev: libc::dev_t) -> Result<DeviceNode, ShmError> {
        let mut attempt = 0;
        loop {
            let tmp = temporary_name(path);
            let c = CString::new(tmp.as_os_str().as_bytes())
                .map_err(|_| io_err("creating", &tmp)(io::ErrorKind::InvalidInput.into()))?;
            // SAFETY: a NUL-terminated path; mknod does not follow a symlink at the last
            // component (it fails with EEXIST), and the result is checked.
            if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | (mode & 0o777), rdev) } == 0 {
                let node = DeviceNode { tmp, published: false };
                // The umask applied to mknod's mode; set it exactly.
                std::fs::set_permissions(&node.tmp, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err("setting the mode of", &node.tmp))?;
                return Ok(node);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::AlreadyExists || attempt >= 8 {
                return Err(io_err("creating", &tmp)(err));
            }
            attempt += 1;
        }
    }

    fn publish(mut self, path: &Path) -> Result<(), ShmError> {
        std::fs::rename(&self.tmp, path).map_err(io_err("publishing", path))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for DeviceNode {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary file beside `path` holding a complete, initialised `T`; removed on drop.
struct Draft {
    tmp: PathBuf,
}

impl Drop for Draft {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Draft {
    /// Writes the draft: created exclusively (never through a symlink), given `mode` exactly
    /// (no umask), sized to `T` (zeros, valid for any `Shared` type), then `init` stores the
    /// initial values through a mapping.
    fn write<T: Shared>(path: &Path, mode: u32, init: impl FnOnce(&T)) -> Result<Draft, ShmError> {
        let mut attempt = 0;
        let (draft, file) = loop {
            let tmp = temporary_name(path);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(file) => break (Draft { tmp }, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
                Err(e) => return Err(io_err("creating", &tmp)(e)),
            }
        };
        let tmp = &draft.tmp;
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io_err("setting the mode of", tmp))?;
        file.set_len(size_of::<T>() as u64).map_err(io_err("sizing", tmp))?;
        let ptr = map::<T>(&file, tmp)?;
        // SAFETY: `ptr` maps the whole draft, zero-filled, which is a valid `T`; nobody else
        // can have it yet, and it is unmapped right after.
        init(unsafe { ptr.as_ref() });
        // SAFETY: our mapping of size_of::<T>() bytes; the reference given to `init` is gone.
        unsafe { libc::munmap(ptr.as_ptr().cast(), size_of::<T>()) };
        Ok(draft)
    }
}

impl<T: Shared> Mapping<T> {
    /// Size of the file.
    pub const SIZE: usize = size_of::<T>();

    /// Publishes a new file at `path` (its directory must exist), with permissions `mode`,
    /// unless a file is already there; `init` writes its initial values. Safe against other
    /// processes doing the same at the same time: exactly one file wins, complete.
    pub fn create(path: &Path, mode: u32, init: impl FnOnce(&T)) -> Result<Created, ShmError> {
        let draft = Draft::write::<T>(path, mode, init)?;
        match std::fs::hard_link(&draft.tmp, path) {
            Ok(()) => Ok(Created::New),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::Existed),
            Err(e) => Err(io_err("publishing", path)(e)),
        }
    }

    /// Publishes a new file at `path` in place of whatever is there (a damaged file, say), in
    /// one step: a process opening `path` gets the old file or the new one, complete.
    /// Processes that have the old one mapped keep it.
    pub fn replace(path: &Path, mode: u32, init: impl FnOnce(&T)) -> Result<(), ShmError> {
        let draft = Draft::write::<T>(path, mode, init)?;
        std::fs::rename(&draft.tmp, path).map_err(io_err("publishing", path))
    }

    /// Opens and maps an existing file: read-write, never through a symlink, a regular file of
    /// exactly [`Self::SIZE`] bytes or a block device of at least that many. Its contents are the
    /// caller's to validate.
    pub fn open(path: &Path) -> Result<Self, ShmError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path)
            .map_err(io_err("opening", path))?;
        Self::from_file(file, path)
    }

    /// Like [`open`](Self::open), for the entry `name` of the directory `dir` (`openat`: the
    /// directory is not looked up again, and a symlink at `name` is refused). `shown` names the
    /// file in messages.
    pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<Self, ShmError> {
        let c_name =
            CString::new(name.as_bytes()).map_err(|_| io_err("opening", shown)(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a valid directory descriptor and NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY,
            )
        };
        if fd < 0 {
            return Err(io_err("opening", shown)(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Self::from_file(unsafe { File::from_raw_fd(fd) }, shown)
    }

    /// Maps an open file (read-write) after checking what it is and its size.
    pub fn from_file(file: File, path: &Path) -> Result<Self, ShmError> {
        let meta = file.metadata().map_err(io_err("reading", path))?;
        let device = meta.file_type().is_block_device();
        let size = if device {
            device_size(&file).map_err(io_err("reading the size of", path))?
        } else if meta.file_type().is_file() {
            meta.len()
        } else {
            return Err(ShmError::NotRegular { path: path.to_owned() });
        };
        // A device is at least the layout's size (zram rounds it up to whole pages); a regular
        // file exactly, since anything else is not what was published.
        if (device && size < Self::SIZE as u64) || (!device && size != Self::SIZE as u64) {
            return Err(ShmError::Size { path: path.to_owned(), found: size, expected: Self::SIZE });
        }
        let ptr = map::<T>(&file, path)?;
        Ok(Self { ptr, file, path: path.to_owned(), device, _owns: PhantomData })
    }

    /// Whether the file is a block device, which no process can truncate or grow.
    pub fn is_device(&self) -> bool {
        self.device
    }

    /// Publishes a new file at `path` on a fresh zram device ([`zram`]) in place of whatever is
    /// there (a `rename(2)`: openers get the old file or the new one, and processes that have
    /// the old one mapped keep it). The device node is created beside `path` with `mode`
    /// (whatever the umask), `init` writes the initial values through a mapping, and only then
    /// is the node renamed into place. Needs root. Returns the device.
    pub fn publish_device(path: &Path, mode: u32, init: impl FnOnce(&T)) -> Result<zram::Device, ShmError> {
        let device = zram::Device::add(Self::SIZE as u64)
            .map_err(|e| io_err("adding a zram device for", path)(io::Error::other(e)))?;
        let result = (|| {
            let node = DeviceNode::create(path, mode, device.rdev)?;
            let mapped = Self::open(&node.tmp)?;
            if !mapped.device {
                return Err(ShmError::NotRegular { path: node.tmp.clone() });
            }
            init(mapped.get());
            drop(mapped);
            node.publish(path)
        })();
        if let Err(e) = result {
            let _ = device.remove();
            return Err(e);
        }
        Ok(device)
    }

    /// [`open`](Self::open)s `path`, first [`create`](Self::create)ing it if it does not exist.
    pub fn open_or_create(path: &Path, mode: u32, init: impl FnOnce(&T)) -> Result<Self, ShmError> {
        match Self::open(path) {
            Err(e) if e.is_not_found() => {
                Self::create(path, mode, init)?;
                Self::open(path)
            }
            other => other,
        }
    }

    /// The shared contents.
    pub fn get(&self) -> &T {
        // SAFETY: `ptr` maps size_of::<T>() bytes of a file of that size (checked at open) for
        // as long as `self` lives; `T: Shared` is valid for any bits and only atomics inside,
        // so other processes' stores do not invalidate the reference.
        unsafe { self.ptr.as_ref() }
    }

    /// The open file, for its locks.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of the file `part` (a reference into [`get`](Self::get)) occupies, for a lock.
    pub fn range_of<P>(&self, part: &P) -> std::ops::Range<u64> {
        let start = (std::ptr::from_ref(part) as usize).wrapping_sub(self.ptr.as_ptr() as usize);
        debug_assert!(start + size_of::<P>() <= Self::SIZE, "not a part of this mapping");
        start as u64..(start + size_of::<P>()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::atomic::Ordering;

    crate::shared_struct! {
        struct Head as HeadValues {
            magic: u64,
            count: u32,
            flags: [u8; 4],
        }
    }
    crate::shared_struct! {
        struct TestFile {
            head: Head,
            cells: [atomic::AtomicU64; 510],
        }
    }
    const _: () = assert!(size_of::<TestFile>() == 4096);

    fn init(f: &TestFile) {
        f.head.store(&HeadValues { magic: 7, count: 2, flags: [1, 2, 3, 4] });
    }

    #[test]
    fn create_publishes_once_and_open_checks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        assert!(Mapping::<TestFile>::open(&path).unwrap_err().is_not_found());
        assert_eq!(Mapping::<TestFile>::create(&path, 0o640, init).unwrap(), Created::New);
        let a = Mapping::<TestFile>::open(&path).unwrap();
        assert_eq!(a.get().head.load(), HeadValues { magic: 7, count: 2, flags: [1, 2, 3, 4] });
        a.get().cells[3].store(9, Ordering::Release);
        // A second create leaves the first file alone.
        let again = Mapping::<TestFile>::create(&path, 0o600, |f| f.head.magic.store(1, Ordering::Relaxed));
        assert_eq!(again.unwrap(), Created::Existed);
        let b = Mapping::<TestFile>::open_or_create(&path, 0o600, |_| panic!("not created")).unwrap();
        assert_eq!((b.get().head.magic.load(Ordering::Acquire), b.get().cells[3].load(Ordering::Acquire)), (7, 9));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (4096, 0o640), "mode exactly, no umask");
        assert_eq!(a.range_of(&a.get().cells[1]), 24..32);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["file"], "no temporary file left behind");
    }

    #[test]
    fn a_wrong_size_a_symlink_or_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(matches!(Mapping::<TestFile>::open(&path), Err(ShmError::Size { found: 100, expected: 4096, .. })));
        let link = dir.path().join("link");
        let target = dir.path().join("target");
        Mapping::<TestFile>::create(&target, 0o600, init).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Mapping::<TestFile>::open(&link).unwrap_err();
        assert_eq!(err.io_error().and_then(io::Error::raw_os_error), Some(libc::ELOOP), "{err}");
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        assert!(Mapping::<TestFile>::open(&dir.path().join("dir")).is_err());
    }

    #[test]
    fn racing_creators_agree_on_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let created: Vec<Created> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8u32)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || {
                        Mapping::<TestFile>::create(path, 0o600, |f| f.head.count.store(i, Ordering::Relaxed)).unwrap()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(created.iter().filter(|&&c| c == Created::New).count(), 1, "{created:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn replace_swaps_the_whole_file_and_spares_those_mapping_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"damaged").unwrap();
        Mapping::<TestFile>::replace(&path, 0o600, init).unwrap();
        let old = Mapping::<TestFile>::open(&path).unwrap();
        Mapping::<TestFile>::replace(&path, 0o600, |f| f.head.count.store(5, Ordering::Relaxed)).unwrap();
        assert_eq!(old.get().head.load().count, 2, "the old mapping is untouched");
        assert_eq!(Mapping::<TestFile>::open(&path).unwrap().get().head.load().count, 5);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_on_a_device_cannot_be_truncated_or_grown() {
        let test = "a_file_on_a_device_cannot_be_truncated_or_grown";
        if gpuslice_test_support::skip_unless_root(test, "adding a zram device") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"an old plain file").unwrap();
        let device = Mapping::<TestFile>::publish_device(&path, 0o666, init).unwrap();
        let cleanup = scopeguard(|| {
            let _ = device.remove();
        });
        let meta = std::fs::symlink_metadata(&path).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(meta.file_type().is_block_device() && meta.rdev() == device.rdev);
        assert_eq!(meta.permissions().mode() & 0o777, 0o666, "mode exactly, no umask");
        let a = Mapping::<TestFile>::open(&path).unwrap();
        assert!(a.is_device());
        assert_eq!(a.get().head.load(), HeadValues { magic: 7, count: 2, flags: [1, 2, 3, 4] });
        a.get().cells[9].store(42, Ordering::Release);
        // What a container could try with a descriptor open for writing.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(f.set_len(0).is_err(), "truncated");
        assert!(f.set_len(1 << 30).is_err(), "grown");
        use std::os::unix::fs::FileExt;
        assert!(f.write_all_at(b"x", 1 << 20).is_err(), "written past the end");
        let b = Mapping::<TestFile>::open(&path).unwrap();
        assert_eq!(b.get().cells[9].load(Ordering::Acquire), 42, "every opener shares the device's pages");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["file"], "no temporary node left behind");
        drop((a, b, f));
        drop(cleanup);
        assert!(zram::Device::of(device.rdev).is_none(), "the device is gone");
    }

    /// Runs `f` when dropped.
    fn scopeguard(f: impl FnOnce()) -> impl Drop {
        struct Guard<F: FnOnce()>(Option<F>);
        impl<F: FnOnce()> Drop for Guard<F> {
            fn drop(&mut self) {
                if let Some(f) = self.0.take() {
                    f();
                }
            }
        }
        Guard(Some(f))
    }
}
