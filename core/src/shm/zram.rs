//! zram block devices as the backing of files that containers share.
//!
//! A container can write the slice's region and its GPU's board, so on a regular file it could
//! also truncate them (every other process mapping the file then dies of `SIGBUS` at its next
//! touch of a page past the new end: a library in someone else's process may install no signal
//! handler to survive that) or grow them until the host's `/run` is full. A block device has a
//! size only root on the host can change: `ftruncate` fails with `EINVAL`, `write` past the end
//! with `ENOSPC`, `fallocate` and `BLKDISCARD` only zero bytes inside it. zram is the block
//! device every distribution kernel has (Fedora and Ubuntu use it for swap): a RAM disk whose
//! size is set through sysfs and that has no `ioctl` of its own. (A loop device would not do:
//! with a writable descriptor, `LOOP_SET_STATUS` changes its size and `LOOP_CLR_FD` detaches it.)
//!
//! Every process that shares such a file opens the same device node (an inode made with
//! `mknod` in the state directory and bind mounted into containers), so their OFD locks, which
//! belong to the node's inode, see each other, and their mappings share the device's page cache.
//!
//! Devices are added through `/sys/class/zram-control/hot_add` (the `zram` module must be
//! loaded; the packages load it at boot) and removed through `hot_remove`, which the kernel
//! refuses (`EBUSY`) while anyone has the device open.

use std::io;
use std::path::{Path, PathBuf};

/// Where the zram module's controls are.
const SYSFS: &str = "/sys";

/// Why a zram device could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum ZramError {
    #[error(
        "zram is not available ({path} is missing): load the zram module (`modprobe zram`), which gpuslice needs for state that containers cannot truncate"
    )]
    Unavailable { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("{path} holds {text:?}, not what zram writes there")]
    Unexpected { path: PathBuf, text: String },
}

impl ZramError {
    /// Whether the device is still open somewhere (so it cannot be removed yet).
    pub fn is_busy(&self) -> bool {
        matches!(self, ZramError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
    }
}

/// One zram device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// `N` of `/dev/zramN`.
    pub id: u32,
    /// Its device number.
    pub rdev: libc::dev_t,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ZramError + use<> {
    let path = path.to_owned();
    move |source| ZramError::Io { op, path, source }
}

fn read(path: &Path) -> Result<String, ZramError> {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).map_err(io("reading", path))
}

fn write(path: &Path, text: &str) -> Result<(), ZramError> {
    std::fs::write(path, text).map_err(io("writing", path))
}

fn block(id: u32) -> PathBuf {
    Path::new(SYSFS).join("block").join(format!("zram{id}"))
}

/// Whether the zram module's controls are there.
pub fn available() -> bool {
    Path::new(SYSFS).join("class/zram-control").is_dir()
}

/// Loads the zram module when its controls are missing (`modprobe zram`, found in the usual
/// system directories whatever `PATH` says), for a host that does not load it at boot. Returns
/// whether zram is available afterwards.
pub fn load() -> bool {
    if available() {
        return true;
    }
    let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/modprobe", "/bin/modprobe"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    if let Some(modprobe) = modprobe {
        let _ = std::process::Command::new(modprobe)
            .arg("zram")
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    available()
}

impl Device {
    /// Adds a zram device of at least `size` bytes (the kernel rounds it up to whole pages).
    pub fn add(size: u64) -> Result<Device, ZramError> {
        let control = Path::new(SYSFS).join("class/zram-control");
        if !control.is_dir() {
            return Err(ZramError::Unavailable { path: control });
        }
        let hot_add = control.join("hot_add");
        let text = read(&hot_add)?;
        let id: u32 = text.parse().map_err(|_| ZramError::Unexpected { path: hot_add.clone(), text })?;
        let added = (|| {
            write(&block(id).join("disksize"), &size.to_string())?;
            let dev = block(id).join("dev");
            let text = read(&dev)?;
            let rdev = parse_dev(&text).ok_or(ZramError::Unexpected { path: dev, text })?;
            Ok(Device { id, rdev })
        })();
        if added.is_err() {
            let _ = remove(id);
        }
        added
    }

    /// The zram device with number `rdev`, if it is one.
    pub fn of(rdev: libc::dev_t) -> Option<Device> {
        let link = Path::new(SYSFS).join("dev/block").join(format!("{}:{}", libc::major(rdev), libc::minor(rdev)));
        let target = std::fs::read_link(link).ok()?;
        let name = target.file_name()?.to_str()?;
        let id = name.strip_prefix("zram")?.parse().ok()?;
        Some(Device { id, rdev })
    }

    /// Removes the device; fails ([`ZramError::is_busy`]) while anyone has it open.
    pub fn remove(&self) -> Result<(), ZramError> {
        remove(self.id)
    }

    /// The device's size in bytes.
    pub fn size(&self) -> Result<u64, ZramError> {
        let path = block(self.id).join("disksize");
        let text = read(&path)?;
        text.parse().map_err(|_| ZramError::Unexpected { path, text })
    }
}

/// Removes the zram device of every device node under `dir` (recursively, symlinks not
/// followed): for tests and tear-down. Returns the devices that could not be removed (still open
/// somewhere, or already gone).
pub fn remove_under(dir: &Path) -> Vec<(Device, ZramError)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut failed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return failed };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        if meta.is_dir() {
            failed.extend(remove_under(&entry.path()));
        } else if meta.file_type().is_block_device()
            && let Some(device) = Device::of(meta.rdev())
            && let Err(e) = device.remove()
        {
            failed.push((device, e));
        }
    }
    failed
}

fn remove(id: u32) -> Result<(), ZramError> {
    write(&Path::new(SYSFS).join("class/zram-control/hot_remove"), &id.to_string())
}

/// `MAJOR:MINOR` as sysfs writes it.
fn parse_dev(text: &str) -> Option<libc::dev_t> {
    let (major, minor) = text.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_read_as_sysfs_writes_them() {
        assert_eq!(parse_dev("253:7"), Some(libc::makedev(253, 7)));
        for bad in ["", "253", "253:", ":7", "x:7", "253:7:1"] {
            assert_eq!(parse_dev(bad), None, "{bad:?}");
        }
    }
}
