//! What `create-container` puts into a container's rootfs, and how it takes it back out when
//! a later step fails.
//!
//! In the container, after the hook:
//!
//! ```text
//! /usr/lib/gpuslice/                 a fresh tmpfs, read-only once filled
//!     libgpuslice.so                 bind of the host's interception library (read-only)
//!     driver/libcuda.so.580.95.05    bind of each driver library (read-only) …
//!     driver/libcuda.so.1            … and a symlink per name the host's loader cache gives it
//! /usr/bin/nvidia-smi                bind of the driver's tools (read-only)
//! /etc/ld.so.cache                   the image's entries plus the driver's names (written)
//! /etc/ld.so.preload                 the shim, then the image's own entries (read-only bind)
//! /run/gpuslice/                     a fresh tmpfs (source `gpuslice`), read-only once filled
//!     slices/<name>/                 bind of the slice's host directory (read-only) …
//!         region                     … with the region's device node bound on top
//!     gpus/<uuid>/board              bind of the GPU's board's device node
//! ```
//!
//! The tmpfs at `/run/gpuslice` is what the interception library trusts (it finds it through
//! `/proc/self/mountinfo` by its source, wherever the container moves it): a mount point cannot
//! be renamed, a read-only tmpfs cannot be written, and a process in the container can neither
//! mount nor unmount. So nothing in it can be renamed, replaced, forged or grown.
//!
//! The driver libraries are found through the host's loader cache on every start, so a driver
//! upgrade never leaves a stale spec behind. The container's loader cache is written by the
//! hook itself, not by running `ldconfig`: nothing from the image is executed, and images
//! without `ldconfig` work the same. Every path in the rootfs goes through [`Rootfs`].
//!
//! Each step first checks whether it has already been done (a container with two slices runs
//! the hook twice): the driver and the shim by comparing device and inode with the host's
//! files, which an image cannot forge, the preload file by its content.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gpuslice_core::driver_files::DriverFiles;
use gpuslice_core::ld_cache;
use gpuslice_core::mountinfo;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag, stat};

use crate::rootfs::{self, Rootfs};
use crate::slice::Slice;

/// The tmpfs holding what gpuslice brings into the container.
pub const LIB_DIR: &str = "/usr/lib/gpuslice";
/// Where the driver's libraries appear in the container.
pub const DRIVER_DIR: &str = "/usr/lib/gpuslice/driver";
/// Where the interception library appears in the container.
pub const SHIM: &str = "/usr/lib/gpuslice/libgpuslice.so";
/// Where the driver's tools appear in the container.
pub const BIN_DIR: &str = "/usr/bin";
/// The tmpfs holding the slice state in the container.
pub const STATE_DIR: &str = "/run/gpuslice";
/// Where slice state appears in the container.
pub const SLICES_DIR: &str = "/run/gpuslice/slices";
/// Where the boards of the container's GPUs appear.
pub const GPUS_DIR: &str = "/run/gpuslice/gpus";
pub const PRELOAD: &str = "/etc/ld.so.preload";
pub const LD_CACHE: &str = "/etc/ld.so.cache";
/// Keeps the driver in the cache when something in the container runs `ldconfig` later.
pub const LD_CONF: &str = "/etc/ld.so.conf.d/000-gpuslice.conf";

/// The tmpfs at [`LIB_DIR`] holds only mount points and symlinks.
const TMPFS_OPTIONS: &str = "mode=0755,size=1m,nr_inodes=4096";
/// The tmpfs at [`STATE_DIR`] holds only directories and mount points (a container with every
/// slice of a node has 64 per GPU).
const STATE_TMPFS_OPTIONS: &str = "mode=0755,size=256k,nr_inodes=2048";
/// Largest image `ld.so.preload` read; glibc itself reads the whole file.
const MAX_PRELOAD_LEN: usize = 64 << 10;
/// Largest image `ld.so.cache` read; a big distribution's cache is a few hundred KiB.
const MAX_CACHE_LEN: usize = 32 << 20;
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// The host side of what gets mounted.
#[derive(Debug)]
pub struct HostFiles<'a> {
    pub driver: &'a DriverFiles,
    /// The interception library, when the container gets it.
    pub shim: Option<&'a Path>,
    /// A root-only host directory for files that are bound into the container and then
    /// unlinked (the preload list, a cache for a read-only `/etc`).
    pub scratch_dir: &'a Path,
}

/// Mounts made into one rootfs, undone (newest first) unless [`Injector::commit`] is called.
#[derive(Debug)]
pub struct Injector<'r> {
    rootfs: &'r Rootfs,
    mounted: Vec<PathBuf>,
    /// The state tmpfs of an earlier run was made writable to add a slice: made read-only
    /// again whatever happens.
    reopened_state: bool,
}

impl<'r> Injector<'r> {
    pub fn new(rootfs: &'r Rootfs) -> Self {
        Self { rootfs, mounted: Vec::new(), reopened_state: false }
    }

    /// Keeps everything mounted so far.
    pub fn commit(mut self) {
        self.mounted.clear();
    }

    fn bind(&mut self, host: &Path, target: &Path, read_only: bool) -> Result<()> {
        self.rootfs.bind_mount(host, target, read_only)?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// The driver's libraries and tools, the interception library and the loader cache,
    /// unless a previous run of the hook for this container already put them there.
    pub fn driver(&mut self, host: &HostFiles<'_>) -> Result<()> {
        let libcuda = host
            .driver
            .libraries
            .iter()
            .find(|l| l.name == "libcuda.so.1")
            .context("the driver root's loader cache lists no libcuda.so.1")?;
        let libcuda_stat = host_stat(&libcuda.host_file)?;
        let file_name = libcuda.file.file_name().context("libcuda.so.1 resolves to no file name")?;
        if self.rootfs.is_host_file(Path::new(DRIVER_DIR).join(file_name), &libcuda_stat) {
            if let Some(shim) = host.shim
                && !self.rootfs.is_host_file(SHIM, &host_stat(shim)?)
            {
                bail!("{LIB_DIR} in the container was set up without the interception library");
            }
            return Ok(());
        }
        let names = self.libraries(host)?;
        self.binaries(host)?;
        self.loader_cache(&names, host.scratch_dir)
    }

    /// Fills a fresh tmpfs at [`LIB_DIR`]; returns each library name and its path in the
    /// container, for the loader cache.
    fn libraries(&mut self, host: &HostFiles<'_>) -> Result<Vec<(String, PathBuf)>> {
        self.rootfs.mount_tmpfs(LIB_DIR, TMPFS_OPTIONS)?;
        self.mounted.push(PathBuf::from(LIB_DIR));
        if let Some(shim) = host.shim {
            self.bind(shim, Path::new(SHIM), true)?;
        }
        let driver_dir = Path::new(DRIVER_DIR);
        self.rootfs.mkdir_all(driver_dir, Mode::from_bits_truncate(DIR_MODE))?;
        let mut files: HashMap<OsString, &Path> = HashMap::new();
        let mut names = Vec::new();
        for lib in &host.driver.libraries {
            let Some(file_name) = lib.file.file_name() else { continue };
            match files.get(file_name) {
                Some(bound) if *bound == lib.host_file => {}
                // Two real files with one name (a subdirectory's variant): the first wins.
                Some(_) => continue,
                None => {
                    self.bind(&lib.host_file, &driver_dir.join(file_name), true)?;
                    files.insert(file_name.to_owned(), &lib.host_file);
                }
            }
            if !is_plain_name(&lib.name) {
                continue;
            }
            let link = driver_dir.join(&lib.name);
            if lib.name.as_str() != file_name {
                // Another file may already have taken the name; the cache then points there.
                if self.rootfs.symlink(file_name, &link).is_err() {
                    continue;
                }
            }
            names.push((lib.name.clone(), link));
        }
        // What `-lcuda` links against, as the driver's installer provides it on the host.
        if names.iter().any(|(n, _)| n == "libcuda.so.1") {
            let _ = self.rootfs.symlink("libcuda.so.1", driver_dir.join("libcuda.so"));
        }
        self.rootfs.make_read_only(LIB_DIR)?;
        Ok(names)
    }

    fn binaries(&mut self, host: &HostFiles<'_>) -> Result<()> {
        for tool in &host.driver.binaries {
            if !is_plain_name(&tool.name) {
                continue;
            }
            let target = Path::new(BIN_DIR).join(&tool.name);
            self.rootfs.replace_with_file(&target, Mode::from_bits_truncate(FILE_MODE))?;
            self.bind(&tool.host_file, &target, true)?;
        }
        Ok(())
    }

    /// Writes the container's `/etc/ld.so.cache`: the image's entries (when it has a cache
    /// this code can read) with the driver's names added, replacing any the image had. A
    /// rootfs that cannot be written gets the cache bound over its own instead.
    fn loader_cache(&mut self, names: &[(String, PathBuf)], scratch_dir: &Path) -> Result<()> {
        let image = self.rootfs.read_file(LD_CACHE, MAX_CACHE_LEN).ok().flatten();
        let cache = ld_cache::compose_container_cache(image.as_deref(), names).bytes;
        self.rootfs.mkdir_all("/etc", Mode::from_bits_truncate(DIR_MODE))?;
        let mode = Mode::from_bits_truncate(FILE_MODE);
        match self.rootfs.write_file(LD_CACHE, &cache, mode) {
            Ok(()) => {}
            Err(rootfs::Error::Create { errno: Errno::EROFS | Errno::EBUSY, .. }) => {
                self.bind_contents(&cache, Path::new(LD_CACHE), scratch_dir)?;
            }
            Err(e) => return Err(e.into()),
        }
        if self.rootfs.resolve("/etc/ld.so.conf.d", OFlag::O_PATH | OFlag::O_DIRECTORY).is_ok() {
            let conf = format!("# The NVIDIA driver, brought in by gpuslice\n{DRIVER_DIR}\n");
            match self.rootfs.write_file(LD_CONF, conf.as_bytes(), mode) {
                Ok(()) | Err(rootfs::Error::Create { errno: Errno::EROFS, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Binds a read-only `/etc/ld.so.preload` listing the interception library first, then
    /// the image's own entries. Nothing to do when the list already names it.
    pub fn preload(&mut self, scratch_dir: &Path) -> Result<()> {
        let image = match self.rootfs.read_file(PRELOAD, MAX_PRELOAD_LEN) {
            Ok(contents) => contents.unwrap_or_default(),
            // A link that leads nowhere usable inside the rootfs: the image has no list.
            Err(rootfs::Error::Resolve { .. } | rootfs::Error::NotARegularFile { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let Some(contents) = compose_preload(&image) else { return Ok(()) };
        let target = Path::new(PRELOAD);
        self.rootfs.mkdir_all("/etc", Mode::from_bits_truncate(DIR_MODE))?;
        self.rootfs.replace_with_file(target, Mode::from_bits_truncate(FILE_MODE))?;
        self.bind_contents(contents.as_bytes(), target, scratch_dir)
    }

    /// The slice's state in the container's state tmpfs (mounted by the first run of the hook
    /// for the container, reopened by the next ones): the slice's host directory read-only,
    /// with its region's device node bound on top, and its GPU's board's node. The tmpfs is
    /// read-only again when this returns, whatever happened.
    pub fn slice(&mut self, slice: &Slice) -> Result<()> {
        let target = Path::new(SLICES_DIR).join(slice.name());
        if self.rootfs.is_host_file(&target, &host_stat(&slice.dir)?) {
            return Ok(());
        }
        self.open_state()?;
        self.bind(&slice.dir, &target, true)?;
        if let Some(region) = &slice.region {
            self.bind_node(region.path(), &target.join("region"))?;
        }
        if let Some(board) = &slice.board {
            // Shared by every slice on the GPU: a second slice of the same GPU finds it there.
            let target = Path::new(GPUS_DIR).join(&slice.limits.gpu_uuid).join("board");
            if !self.rootfs.is_host_file(&target, &host_stat(board.path())?) {
                self.bind_node(board.path(), &target)?;
            }
        }
        self.close_state()
    }

    /// Makes the state tmpfs writable: a new one, or the one an earlier run for this container
    /// mounted (recognised by its mount's source, which only the hook gives).
    fn open_state(&mut self) -> Result<()> {
        let ours = self.rootfs.mount_of(STATE_DIR)?.is_some_and(|m| m.is_hook_state());
        if ours {
            self.rootfs.make_writable(STATE_DIR)?;
            self.reopened_state = true;
        } else {
            self.rootfs.mount_tmpfs_from(mountinfo::STATE_SOURCE, STATE_DIR, STATE_TMPFS_OPTIONS)?;
            self.mounted.push(PathBuf::from(STATE_DIR));
        }
        Ok(())
    }

    fn close_state(&mut self) -> Result<()> {
        self.rootfs.make_read_only(STATE_DIR)?;
        self.reopened_state = false;
        Ok(())
    }

    fn bind_node(&mut self, host: &Path, target: &Path) -> Result<()> {
        self.rootfs.bind_device_node(host, target)?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// Binds a file holding `contents` read-only onto `target`. The host file lives only
    /// until the mount holds it: nothing is left on the host to clean up.
    fn bind_contents(&mut self, contents: &[u8], target: &Path, scratch_dir: &Path) -> Result<()> {
        gpuslice_core::fsutil::create_dir_all_mode(scratch_dir, 0o700)
            .with_context(|| format!("creating {}", scratch_dir.display()))?;
        let mut file = tempfile::Builder::new()
            .prefix(".bind-")
            .tempfile_in(scratch_dir)
            .with_context(|| format!("creating a file in {}", scratch_dir.display()))?;
        file.write_all(contents)
            .and_then(|()| file.as_file().set_permissions(fs::Permissions::from_mode(FILE_MODE)))
            .with_context(|| format!("writing {}", file.path().display()))?;
        self.bind(file.path(), target, true)
    }
}

impl Drop for Injector<'_> {
    fn drop(&mut self) {
        while let Some(target) = self.mounted.pop() {
            let _ = self.rootfs.unmount(&target);
        }
        if self.reopened_state {
            let _ = self.rootfs.make_read_only(STATE_DIR);
        }
    }
}

/// The new `/etc/ld.so.preload` for an image whose list is `image`, or `None` when that
/// already names the interception library. glibc splits the list on whitespace and `:`.
pub fn compose_preload(image: &[u8]) -> Option<String> {
    let image = String::from_utf8_lossy(image);
    if image.split(|c: char| c.is_ascii_whitespace() || c == ':').any(|entry| entry == SHIM) {
        return None;
    }
    let mut contents = format!("{SHIM}\n");
    contents.push_str(&image);
    if !contents.ends_with('\n') {
        contents.push('\n');
    }
    Some(contents)
}

/// A name that is one path component.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn host_stat(path: &Path) -> Result<FileStat> {
    let st = stat(path).map_err(io::Error::from).with_context(|| format!("{}", path.display()))?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFREG && kind != SFlag::S_IFDIR && kind != SFlag::S_IFBLK {
        bail!("{} is neither a file, a directory nor a block device", path.display());
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_puts_the_shim_first_and_keeps_the_image_entries() {
        assert_eq!(compose_preload(b"").unwrap(), format!("{SHIM}\n"));
        assert_eq!(compose_preload(b"/lib/libjemalloc.so.2").unwrap(), format!("{SHIM}\n/lib/libjemalloc.so.2\n"));
        assert_eq!(compose_preload(b"/a.so /b.so\n").unwrap(), format!("{SHIM}\n/a.so /b.so\n"));
        assert_eq!(compose_preload(format!("/a.so:{SHIM}\n").as_bytes()), None);
        assert_eq!(compose_preload(SHIM.as_bytes()), None);
        // A longer path that merely starts with ours is another library.
        assert!(compose_preload(format!("{SHIM}.bak").as_bytes()).is_some());
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_name("libcuda.so.1"));
        for bad in ["", ".", "..", "a/b", "/x", "a\0b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
