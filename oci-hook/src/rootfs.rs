//! File operations inside a container rootfs that must not be trusted.
//!
//! Every lookup of a path inside the rootfs goes through [`Rootfs::resolve`], which is
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a descriptor of the rootfs: the
//! kernel resolves absolute symlinks and `..` as if the rootfs were `/`, and refuses
//! `/proc/<pid>/root`-style magic links. Creation is done one component at a time relative to
//! a directory descriptor obtained that way, and never follows a symlink at the final
//! component. Mounts target `/proc/self/fd/<fd>` of a resolved descriptor, so the path is
//! not looked up again by name between the check and the mount (the pattern runc and youki
//! use against symlink-swap races such as CVE-2024-0132).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gpuslice_core::mountinfo;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2, readlinkat, renameat};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, mkdirat};
use nix::sys::statvfs::{FsFlags, fstatvfs};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

/// What went wrong, with the path (inside the container unless it says host) that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening container rootfs {path:?}: {errno}")]
    OpenRoot { path: PathBuf, errno: Errno },
    #[error("resolving {path:?} in the container rootfs: {errno}")]
    Resolve { path: PathBuf, errno: Errno },
    #[error("{path:?} in the container: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error("{path:?} in the container is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path:?} in the container exists and is not a regular file")]
    NotARegularFile { path: PathBuf },
    #[error("creating {path:?} in the container: {errno}")]
    Create { path: PathBuf, errno: Errno },
    #[error("writing {path:?} in the container: {errno}")]
    Write { path: PathBuf, errno: Errno },
    #[error("reading {path:?} in the container: {errno}")]
    Read { path: PathBuf, errno: Errno },
    #[error("{path:?} in the container is larger than {max_len} bytes")]
    TooLarge { path: PathBuf, max_len: usize },
    #[error("opening host mount source {path:?}: {errno}")]
    OpenSource { path: PathBuf, errno: Errno },
    #[error("host mount source {path:?} is neither a directory nor a regular file")]
    UnsupportedSource { path: PathBuf },
    #[error("bind mounting host {host:?} onto {target:?} in the container: {errno}")]
    Mount { host: PathBuf, target: PathBuf, errno: Errno },
    #[error("{target:?} in the container no longer resolves to the mount of host {host:?}")]
    MountMoved { host: PathBuf, target: PathBuf },
    #[error("remounting {target:?} in the container read-only: {errno}")]
    Remount { target: PathBuf, errno: Errno },
    #[error("{target:?} in the container is still writable after the read-only remount")]
    StillWritable { target: PathBuf },
    #[error("{reason}")]
    Mountinfo { reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Links [`Rootfs::mkdir_all`] follows to missing targets before giving up (Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// How many times `openat2` is retried when the kernel reports a rename race (`EAGAIN`).
const RESOLVE_RETRIES: usize = 16;

/// Modes of the directories and files created to serve as mount points.
const MOUNT_POINT_DIR_MODE: u32 = 0o755;
const MOUNT_POINT_FILE_MODE: u32 = 0o644;

/// A container rootfs, held by an `O_PATH` descriptor; all paths given to its methods are
/// paths as the container will see them.
#[derive(Debug)]
pub struct Rootfs {
    root: OwnedFd,
    path: PathBuf,
}

impl Rootfs {
    /// Opens the rootfs directory. `path` is a host path given by the runtime and is trusted.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let root = open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| Error::OpenRoot { path: path.to_owned(), errno })?;
        Ok(Self { root, path: path.to_owned() })
    }

    /// The host path the rootfs was opened at (for messages only: never look it up again).
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    /// Opens `path` (absolute or not) as if the rootfs were `/`: symlinks and `..` cannot
    /// leave it, magic links are refused (`ELOOP`). `O_CLOEXEC` is always added. Meant for
    /// existing files: with `O_CREAT` the file would get mode 0; use the creating methods.
    pub fn resolve(&self, path: impl AsRef<Path>, flags: OFlag) -> Result<OwnedFd> {
        let path = path.as_ref();
        self.resolve_raw(path, flags).map_err(|errno| Error::Resolve { path: path.to_owned(), errno })
    }

    fn resolve_raw(&self, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let path = if path.as_os_str().is_empty() { Path::new("/") } else { path };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut tries = 0;
        loop {
            match openat2(self.root.as_fd(), path, how) {
                Err(Errno::EAGAIN | Errno::EINTR) if tries < RESOLVE_RETRIES => tries += 1,
                other => return other,
            }
        }
    }

    /// An `O_PATH` descriptor of the directory at `path`, with `ENOTDIR` reported as such.
    fn resolve_dir(&self, path: &Path) -> Result<OwnedFd> {
        match self.resolve_raw(path, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOTDIR) => Err(Error::NotADirectory { path: path.to_owned() }),
            Err(errno) => Err(Error::Resolve { path: path.to_owned(), errno }),
        }
    }

    /// Creates the directory `dir` and any missing parents with `mode` (less the umask) and
    /// returns an `O_PATH` descriptor of it. Existing components that are symlinks are
    /// followed inside the rootfs, and a symlink whose target is missing there has its target
    /// created there (as engines do for a mount destination behind a link): `/run ->
    /// /var/run` with no `/var/run` gets `/var/run`. A component that is not a directory is an
    /// error; so is a magic link, or more than 40 links on the way.
    pub fn mkdir_all(&self, dir: impl AsRef<Path>, mode: Mode) -> Result<OwnedFd> {
        self.mkdir_all_within(dir.as_ref(), mode, 0)
    }

    fn mkdir_all_within(&self, dir: &Path, mode: Mode, links: usize) -> Result<OwnedFd> {
        let mut prefix = PathBuf::from("/");
        let mut current = self.resolve_dir(&prefix)?;
        for component in dir.components() {
            let name = match component {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
                Component::ParentDir => {
                    prefix.push("..");
                    current = self.resolve_dir(&prefix)?;
                    continue;
                }
                Component::Normal(name) => name,
            };
            let parent = prefix.clone();
            prefix.push(name);
            current = match self.resolve_raw(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    // `name` is one component and mkdirat never follows a symlink there: an
                    // existing symlink gives EEXIST and is resolved (inside the root) below.
                    match mkdirat(current.as_fd(), name, mode) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => return Err(Error::Create { path: prefix, errno }),
                    }
                    match self.resolve_raw(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                        Ok(fd) => fd,
                        Err(Errno::ENOENT) => {
                            // A link whose target is missing inside the rootfs.
                            if links >= MAX_LINKS {
                                return Err(Error::Resolve { path: prefix, errno: Errno::ELOOP });
                            }
                            let target = readlinkat(current.as_fd(), name)
                                .map_err(|errno| Error::Resolve { path: prefix.clone(), errno })?;
                            self.mkdir_all_within(&parent.join(target), mode, links + 1)?;
                            self.resolve_dir(&prefix)?
                        }
                        Err(Errno::ENOTDIR) => return Err(Error::NotADirectory { path: prefix }),
                        Err(errno) => return Err(Error::Resolve { path: prefix, errno }),
                    }
                }
                Err(Errno::ENOTDIR) => return Err(Error::NotADirectory { path: prefix }),
                Err(errno) => return Err(Error::Resolve { path: prefix, errno }),
            };
        }
        Ok(current)
    }

    /// Makes sure `path` is a regular file, creating it empty with `mode` (less the umask) and
    /// its missing parent directories (0755) if needed, and returns an `O_PATH` descriptor of
    /// it. Anything else already there, a symlink included, is an error: this is for mount
    /// points, and a mount must land on what was checked.
    pub fn create_file(&self, path: impl AsRef<Path>, mode: Mode) -> Result<OwnedFd> {
        let path = path.as_ref();
        let (parent_path, name) = split_last(path)?;
        let parent = self.mkdir_all(parent_path, Mode::from_bits_truncate(MOUNT_POINT_DIR_MODE))?;
        let create = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        match openat(parent.as_fd(), name, create, mode) {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(Error::Create { path: path.to_owned(), errno }),
        }
        // O_PATH | O_NOFOLLOW on a symlink opens the link itself, which fstat then rejects.
        let fd = openat(parent.as_fd(), name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| Error::Resolve { path: path.to_owned(), errno })?;
        let stat = fstat(fd.as_fd()).map_err(|errno| Error::Resolve { path: path.to_owned(), errno })?;
        if file_type(&stat) != SFlag::S_IFREG {
            return Err(Error::NotARegularFile { path: path.to_owned() });
        }
        Ok(fd)
    }

    /// Bind mounts the trusted host file or directory `host_source` onto `target` inside the
    /// rootfs, creating the mount point if missing ([`Rootfs::mkdir_all`] for a directory,
    /// [`Rootfs::create_file`] for a file), then remounts it read-only if asked. The mount is
    /// made onto `/proc/self/fd/<fd>` of the resolved target, never onto a path by name.
    pub fn bind_mount(&self, host_source: &Path, target: impl AsRef<Path>, read_only: bool) -> Result<()> {
        let target = target.as_ref();
        let host = host_source.to_owned();
        let source = open(host_source, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| Error::OpenSource { path: host.clone(), errno })?;
        let source_stat = fstat(source.as_fd()).map_err(|errno| Error::OpenSource { path: host.clone(), errno })?;
        let mount_point = match file_type(&source_stat) {
            SFlag::S_IFDIR => self.mkdir_all(target, Mode::from_bits_truncate(MOUNT_POINT_DIR_MODE))?,
            SFlag::S_IFREG => self.create_file(target, Mode::from_bits_truncate(MOUNT_POINT_FILE_MODE))?,
            _ => return Err(Error::UnsupportedSource { path: host }),
        };
        let mount_error = |errno| Error::Mount { host: host.clone(), target: target.to_owned(), errno };
        mount(Some(&proc_fd_path(&source)), &proc_fd_path(&mount_point), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(mount_error)?;
        if !read_only {
            return Ok(());
        }
        // `mount_point` still names the directory underneath the new mount: remounting through
        // it would change the mount that holds the rootfs. Resolve again to get the new mount.
        let result = self.remount_read_only(&source_stat, &host, target);
        if result.is_err() {
            // Best effort: do not leave a writable bind behind; the caller stops the container.
            let _ = umount2(&proc_fd_path(&mount_point), MntFlags::MNT_DETACH);
        }
        result
    }

    fn remount_read_only(&self, source_stat: &FileStat, host: &Path, target: &Path) -> Result<()> {
        let mounted = self.resolve(target, OFlag::O_PATH)?;
        let stat = fstat(mounted.as_fd()).map_err(|errno| Error::Resolve { path: target.to_owned(), errno })?;
        if (stat.st_dev, stat.st_ino) != (source_stat.st_dev, source_stat.st_ino) {
            return Err(Error::MountMoved { host: host.to_owned(), target: target.to_owned() });
        }
        remount_fd_read_only(&mounted, target)
    }

    /// Mounts a new, empty tmpfs on the directory `dir` (created if missing) and returns an
    /// `O_PATH` descriptor of its root. `options` are tmpfs's (`mode=0755,size=…`); the
    /// mount is `nosuid,nodev`.
    pub fn mount_tmpfs(&self, dir: impl AsRef<Path>, options: &str) -> Result<OwnedFd> {
        self.mount_tmpfs_from("tmpfs", dir, options)
    }

    /// [`Rootfs::mount_tmpfs`] with `source` as the mount's source, which mountinfo shows (and
    /// which no process in the container can give a mount: it cannot mount).
    pub fn mount_tmpfs_from(&self, source: &str, dir: impl AsRef<Path>, options: &str) -> Result<OwnedFd> {
        let dir = dir.as_ref();
        let mount_point = self.mkdir_all(dir, Mode::from_bits_truncate(MOUNT_POINT_DIR_MODE))?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(Some(source), &proc_fd_path(&mount_point), Some("tmpfs"), flags, Some(options))
            .map_err(|errno| Error::Mount { host: PathBuf::from("tmpfs"), target: dir.to_owned(), errno })?;
        // The old descriptor names the directory underneath; the new mount is found by name.
        self.resolve_dir(dir)
    }

    /// Makes the mount at `path` read-only (a bind remount: other mounts of the same
    /// filesystem keep their flags) and checks that it took.
    pub fn make_read_only(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        remount_fd_read_only(&self.resolve(path, OFlag::O_PATH)?, path)
    }

    /// Makes the mount at `path` writable again (a bind remount keeping its other flags).
    pub fn make_writable(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mounted = self.resolve(path, OFlag::O_PATH)?;
        let remount_error = |errno| Error::Remount { target: path.to_owned(), errno };
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | kept_flags(&mounted).map_err(remount_error)?;
        mount(None::<&str>, &proc_fd_path(&mounted), None::<&str>, flags, None::<&str>).map_err(remount_error)
    }

    /// The mount `path` (symlinks followed inside the rootfs) is on, as this process's
    /// mountinfo lists it; `None` when the path does not exist.
    pub fn mount_of(&self, path: impl AsRef<Path>) -> Result<Option<mountinfo::Mount>> {
        let path = path.as_ref();
        let fd = match self.resolve_raw(path, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(Error::Resolve { path: path.to_owned(), errno }),
        };
        let id = mountinfo::mount_id(fd.as_fd())
            .map_err(|e| Error::Resolve { path: path.to_owned(), errno: errno_of(&e) })?;
        let mounts = mountinfo::read().map_err(|e| Error::Mountinfo { reason: e.to_string() })?;
        Ok(mounts.into_iter().find(|m| m.id == id))
    }

    /// Bind mounts the trusted host block device node `host_source` onto `target` inside the
    /// rootfs, an existing non-directory (the node the slice's directory bind already shows
    /// there, say) or, if missing, a new empty file. The bind opens the device whatever the
    /// host's mount says (no `nodev`) and is `nosuid,noexec`; it pins the node's inode, so
    /// every process of the container opens the same device even if the host replaces the
    /// node later.
    pub fn bind_device_node(&self, host_source: &Path, target: impl AsRef<Path>) -> Result<()> {
        let target = target.as_ref();
        let host = host_source.to_owned();
        let source = open(host_source, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| Error::OpenSource { path: host.clone(), errno })?;
        let source_stat = fstat(source.as_fd()).map_err(|errno| Error::OpenSource { path: host.clone(), errno })?;
        if file_type(&source_stat) != SFlag::S_IFBLK {
            return Err(Error::UnsupportedSource { path: host });
        }
        let mount_point = match self.resolve_raw(target, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(fd) => {
                let stat = fstat(fd.as_fd()).map_err(|errno| Error::Resolve { path: target.to_owned(), errno })?;
                if matches!(file_type(&stat), SFlag::S_IFDIR | SFlag::S_IFLNK) {
                    return Err(Error::NotARegularFile { path: target.to_owned() });
                }
                fd
            }
            Err(Errno::ENOENT) => self.create_file(target, Mode::from_bits_truncate(MOUNT_POINT_FILE_MODE))?,
            Err(errno) => return Err(Error::Resolve { path: target.to_owned(), errno }),
        };
        let mount_error = |errno| Error::Mount { host: host.clone(), target: target.to_owned(), errno };
        mount(Some(&proc_fd_path(&source)), &proc_fd_path(&mount_point), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(mount_error)?;
        let result = (|| {
            let mounted = self.resolve(target, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
            let stat = fstat(mounted.as_fd()).map_err(|errno| Error::Resolve { path: target.to_owned(), errno })?;
            if (stat.st_rdev, stat.st_ino, stat.st_dev) != (source_stat.st_rdev, source_stat.st_ino, source_stat.st_dev)
            {
                return Err(Error::MountMoved { host: host.clone(), target: target.to_owned() });
            }
            let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
            mount(None::<&str>, &proc_fd_path(&mounted), None::<&str>, flags, None::<&str>)
                .map_err(|errno| Error::Remount { target: target.to_owned(), errno })
        })();
        if result.is_err() {
            let _ = umount2(&proc_fd_path(&mount_point), MntFlags::MNT_DETACH);
        }
        result
    }

    /// Detaches the mount at `path` (lazily, as `umount -l`). For undoing this hook's own
    /// mounts when a later step fails.
    pub fn unmount(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let fd = self.resolve(path, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        umount2(&proc_fd_path(&fd), MntFlags::MNT_DETACH).map_err(|errno| Error::Mount {
            host: PathBuf::from("(unmount)"),
            target: path.to_owned(),
            errno,
        })
    }

    /// Creates the symlink `path` → `target` (the link's text, taken as is), its parent
    /// directories as in [`Rootfs::mkdir_all`]. An existing identical link is fine; anything
    /// else already there is an error.
    pub fn symlink(&self, target: impl AsRef<Path>, path: impl AsRef<Path>) -> Result<()> {
        let (target, path) = (target.as_ref(), path.as_ref());
        let (parent_path, name) = split_last(path)?;
        let parent = self.mkdir_all(parent_path, Mode::from_bits_truncate(MOUNT_POINT_DIR_MODE))?;
        match symlinkat(target, parent.as_fd(), name) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => match readlinkat(parent.as_fd(), name) {
                Ok(existing) if existing.as_os_str() == target.as_os_str() => Ok(()),
                _ => Err(Error::Create { path: path.to_owned(), errno: Errno::EEXIST }),
            },
            Err(errno) => Err(Error::Create { path: path.to_owned(), errno }),
        }
    }

    /// Whether `path` (symlinks followed inside the rootfs) is the host file `host`: the same
    /// device and inode, as a bind mount of it is. `false` when it does not resolve.
    pub fn is_host_file(&self, path: impl AsRef<Path>, host: &FileStat) -> bool {
        self.resolve_raw(path.as_ref(), OFlag::O_PATH)
            .and_then(|fd| fstat(fd.as_fd()))
            .is_ok_and(|stat| (stat.st_dev, stat.st_ino) == (host.st_dev, host.st_ino))
    }

    /// Like [`Rootfs::create_file`], but a symlink (or other non-directory) already at `path`
    /// is first replaced by an empty regular file, never followed: for mount points over
    /// files an image may have planted as links.
    pub fn replace_with_file(&self, path: impl AsRef<Path>, mode: Mode) -> Result<OwnedFd> {
        let path = path.as_ref();
        match self.create_file(path, mode) {
            Err(Error::NotARegularFile { .. }) => {
                self.write_file(path, b"", mode)?;
                self.create_file(path, mode)
            }
            other => other,
        }
    }

    /// Replaces `path` with a regular file holding `contents` and mode `mode` (exactly: the
    /// umask does not apply). The parent directory must exist. The file is written under a
    /// temporary name in the same directory and renamed over `path`, so a symlink at `path`
    /// is replaced, never followed, and readers never see a half-written file. There is no
    /// `fsync`: what the hook writes into a container is written again at its next start.
    pub fn write_file(&self, path: impl AsRef<Path>, contents: &[u8], mode: Mode) -> Result<()> {
        let path = path.as_ref();
        let (parent_path, name) = split_last(path)?;
        let parent = self.resolve_dir(parent_path)?;
        let temp = temp_name(name);
        let create = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        let file = openat(parent.as_fd(), temp.as_os_str(), create, mode)
            .map_err(|errno| Error::Create { path: path.to_owned(), errno })?;
        let written = write_all(&file, contents)
            .and_then(|()| fchmod(file.as_fd(), mode))
            .map_err(|errno| Error::Write { path: path.to_owned(), errno })
            .and_then(|()| {
                renameat(parent.as_fd(), temp.as_os_str(), parent.as_fd(), name)
                    .map_err(|errno| Error::Create { path: path.to_owned(), errno })
            });
        if written.is_err() {
            let _ = unlinkat(parent.as_fd(), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// Reads the regular file at `path` (a symlink is followed inside the rootfs), or `None`
    /// if it does not exist. More than `max_len` bytes is an error, and so is anything that
    /// is not a regular file: a FIFO or a device is never opened for reading.
    pub fn read_file(&self, path: impl AsRef<Path>, max_len: usize) -> Result<Option<Vec<u8>>> {
        let path = path.as_ref();
        let read_error = |errno| Error::Read { path: path.to_owned(), errno };
        let handle = match self.resolve_raw(path, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(Error::Resolve { path: path.to_owned(), errno }),
        };
        if file_type(&fstat(handle.as_fd()).map_err(read_error)?) != SFlag::S_IFREG {
            return Err(Error::NotARegularFile { path: path.to_owned() });
        }
        // Reopening through the descriptor opens exactly the file that was checked.
        let file = open(&proc_fd_path(&handle), OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(read_error)?;
        let mut contents = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match nix::unistd::read(file.as_fd(), &mut buf) {
                Ok(0) => return Ok(Some(contents)),
                Ok(n) => {
                    if contents.len() + n > max_len {
                        return Err(Error::TooLarge { path: path.to_owned(), max_len });
                    }
                    contents.extend_from_slice(&buf[..n]);
                }
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(read_error(errno)),
            }
        }
    }
}

/// The nosuid, nodev and noexec flags the mount `mounted` is the root of has: a remount must
/// keep them, or a mount in a user namespace with locked flags refuses it.
fn kept_flags(mounted: &OwnedFd) -> nix::Result<MsFlags> {
    let current = fstatvfs(mounted.as_fd())?.flags();
    let mut flags = MsFlags::empty();
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(have) {
            flags |= keep;
        }
    }
    Ok(flags)
}

/// The errno of an I/O error, `EIO` when it has none.
fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Remounts the mount `mounted` is the root of read-only, keeping its other flags, and checks
/// that it took.
fn remount_fd_read_only(mounted: &OwnedFd, target: &Path) -> Result<()> {
    let remount_error = |errno| Error::Remount { target: target.to_owned(), errno };
    let flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | kept_flags(mounted).map_err(remount_error)?;
    mount(None::<&str>, &proc_fd_path(mounted), None::<&str>, flags, None::<&str>).map_err(remount_error)?;
    let after = fstatvfs(mounted.as_fd()).map_err(remount_error)?.flags();
    if !after.contains(FsFlags::ST_RDONLY) {
        return Err(Error::StillWritable { target: target.to_owned() });
    }
    Ok(())
}

/// Splits a path into its parent and a final component that names something (not `.`,
/// `..` or nothing): that component is what gets created, with `O_NOFOLLOW`.
fn split_last(path: &Path) -> Result<(&Path, &OsStr)> {
    match path.components().next_back() {
        Some(Component::Normal(name)) => Ok((path.parent().unwrap_or(Path::new("/")), name)),
        _ => Err(Error::InvalidPath { path: path.to_owned(), reason: "does not end with a file name" }),
    }
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A name beside `name` that no other writer (this process or another) picks.
fn temp_name(name: &OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temp = OsString::from(".");
    // Keep the temporary name within NAME_MAX whatever the final name's length.
    temp.push(OsStr::from_bytes(&name.as_bytes()[..name.len().min(200)]));
    temp.push(format!(".gpuslice-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    temp
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> nix::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd.as_fd(), buf) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}
