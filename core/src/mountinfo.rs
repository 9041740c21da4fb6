//! `/proc/self/mountinfo`: which mounts a process sees, where, from what, and how.
//!
//! A process in a container cannot make or change a mount (that needs `CAP_SYS_ADMIN`), so what
//! this file says about a mount, its filesystem type, its source and whether it is read-only, was
//! decided by the engine or the hook, never by the container. The interception library finds the
//! hook's slice state through it (a tmpfs whose source is [`STATE_SOURCE`]), wherever the
//! container moved the directory it is mounted on, and the hook uses it to recognise its own
//! mounts. A mount's path in this file is the one the reading process sees (relative to its
//! root), so a path read here is only a hint: open it, then check that the descriptor is on the
//! mount that was listed ([`mount_id`]), since the path may have been renamed in between.
//!
//! Format (proc(5)): `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`:
//! mount id, parent id, device, root within the filesystem, mount point, per-mount options,
//! optional fields up to `-`, filesystem type, source, superblock options. Space, tab, newline
//! and backslash in paths are written as `\040`, `\011`, `\012`, `\134`.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The source the hook gives the tmpfs it mounts at a container's `/run/gpuslice`.
pub const STATE_SOURCE: &str = "gpuslice";
/// Largest mountinfo read; a host with thousands of mounts has a few hundred KiB.
const MAX_LEN: u64 = 16 << 20;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub parent: u64,
    /// `st_dev` of files on the mount.
    pub dev: libc::dev_t,
    /// What of its filesystem the mount shows (`/` for a whole filesystem, a directory's path in
    /// it for a bind mount).
    pub root: PathBuf,
    /// Where it is mounted, as the reading process sees it.
    pub mount_point: PathBuf,
    /// Per-mount options (`ro` or `rw` first).
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

impl Mount {
    /// Whether the mount itself is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }

    /// Whether this is a tmpfs the hook mounts at a container's `/run/gpuslice` (the whole of
    /// it; the hook leaves it read-only, which callers check with [`Mount::read_only`]).
    pub fn is_hook_state(&self) -> bool {
        self.fs_type == "tmpfs" && self.source == STATE_SOURCE && self.root.as_os_str() == "/"
    }
}

/// Why mountinfo could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MountinfoError {
    #[error("reading /proc/self/mountinfo: {0}")]
    Io(#[from] io::Error),
    #[error("/proc/self/mountinfo is larger than {MAX_LEN} bytes")]
    TooLarge,
    #[error("/proc/self/mountinfo line {line}: {reason}")]
    Syntax { line: usize, reason: &'static str },
}

/// The mounts this process sees, in the file's order.
pub fn read() -> Result<Vec<Mount>, MountinfoError> {
    let mut text = Vec::new();
    std::fs::File::open("/proc/self/mountinfo")?.take(MAX_LEN + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_LEN {
        return Err(MountinfoError::TooLarge);
    }
    parse(&text)
}

/// Parses mountinfo text.
pub fn parse(text: &[u8]) -> Result<Vec<Mount>, MountinfoError> {
    text.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()).map(|(n, l)| line(n + 1, l)).collect()
}

fn line(n: usize, l: &[u8]) -> Result<Mount, MountinfoError> {
    let err = |reason| MountinfoError::Syntax { line: n, reason };
    let fields: Vec<&[u8]> = l.split(|&b| b == b' ').collect();
    let sep = fields.iter().position(|f| *f == b"-").ok_or(err("no `-` separator"))?;
    if sep < 6 || fields.len() < sep + 3 {
        return Err(err("too few fields"));
    }
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    let number = |f: &[u8], what| std::str::from_utf8(f).ok().and_then(|s| s.parse().ok()).ok_or(err(what));
    let (major, minor) = std::str::from_utf8(fields[2])
        .ok()
        .and_then(|d| d.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or(err("bad device"))?;
    Ok(Mount {
        id: number(fields[0], "bad mount id")?,
        parent: number(fields[1], "bad parent id")?,
        dev: libc::makedev(major, minor),
        root: PathBuf::from(OsString::from_vec(unescape(fields[3]))),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        options: text(fields[5]),
        fs_type: text(fields[sep + 1]),
        source: text(fields[sep + 2]),
    })
}

/// Undoes the kernel's octal escapes (`\040` and the like).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The id of the mount `fd` is on (`statx`'s `STATX_MNT_ID`, Linux 5.8), as mountinfo lists it.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statx is plain data; all-zero is a valid value for the kernel to fill in.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with AT_EMPTY_PATH, and a valid
    // out pointer.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "the kernel does not report mount ids (statx)"));
    }
    Ok(st.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
812 27 0:95 / /run/gpuslice ro,nosuid,nodev,relatime - tmpfs gpuslice ro,size=1024k,mode=755\n\
813 812 254:0 /tmp/state/slices/slice0 /run/gpuslice/slices/slice0 ro,relatime master:3 shared:9 - ext4 /dev/vda rw\n\
814 27 0:96 / /my\\040dir\\134x rw - tmpfs tmpfs rw\n";

    #[test]
    fn parses_every_field() {
        let mounts = parse(SAMPLE).unwrap();
        assert_eq!(mounts.len(), 5);
        let state = &mounts[2];
        assert_eq!((state.id, state.parent, state.dev), (812, 27, libc::makedev(0, 95)));
        assert_eq!(state.mount_point, PathBuf::from("/run/gpuslice"));
        assert!(state.read_only() && state.is_hook_state());
        let slice = &mounts[3];
        assert_eq!(slice.root, PathBuf::from("/tmp/state/slices/slice0"));
        assert_eq!((slice.fs_type.as_str(), slice.source.as_str()), ("ext4", "/dev/vda"));
        assert!(slice.read_only() && !slice.is_hook_state(), "optional fields skipped");
        assert_eq!(mounts[4].mount_point, PathBuf::from("/my dir\\x"));
        assert!(!mounts[4].read_only() && !mounts[4].is_hook_state(), "a tmpfs of another source");
    }

    #[test]
    fn bad_lines_are_errors_not_guesses() {
        for bad in [
            &b"1 2 0:1 / /x rw tmpfs gpuslice rw\n"[..],
            b"1 2 0:1 / - tmpfs\n",
            b"x 2 0:1 / /x rw - tmpfs s rw\n",
            b"1 2 01 / /x rw - tmpfs s rw\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn this_process_finds_its_own_root_mount() {
        let mounts = read().unwrap();
        let root = std::fs::File::open("/").unwrap();
        use std::os::fd::AsFd;
        let id = mount_id(root.as_fd()).unwrap();
        let m = mounts.iter().find(|m| m.id == id).expect("the root's mount is listed");
        assert_eq!(m.mount_point, PathBuf::from("/"));
    }
}
