//! Malicious rootfs trees: every operation must stay inside the rootfs or fail, and the host
//! decoys beside it must be left exactly as they were.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

mod common;

use common::in_mount_namespace;
use gpuslice_hook::rootfs::{Error, Rootfs};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;

const HOST_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n";

/// A tempdir holding a host decoy (`hostetc/`, standing in for the host's `/etc`) and a
/// rootfs (`rootfs/`) whose symlinks try to reach it.
struct Tree {
    _dir: tempfile::TempDir,
    base: PathBuf,
    host: PathBuf,
    rootfs: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let host = base.join("hostetc");
        let rootfs = base.join("rootfs");
        fs::create_dir_all(host.join("sub")).unwrap();
        fs::write(host.join("passwd"), HOST_PASSWD).unwrap();
        fs::create_dir_all(&rootfs).unwrap();
        Self { _dir: dir, base, host, rootfs }
    }

    fn open(&self) -> Rootfs {
        Rootfs::open(&self.rootfs).unwrap()
    }

    /// The host decoy as it is now: every entry with its type and contents.
    fn host_snapshot(&self) -> BTreeMap<PathBuf, String> {
        snapshot(&self.host)
    }

    /// `path` inside the rootfs, as the host sees it (the host path with the rootfs prepended).
    fn inside(&self, container_path: &Path) -> PathBuf {
        self.rootfs.join(container_path.strip_prefix("/").unwrap_or(container_path))
    }

    /// A relative symlink target that, followed naively from `depth` levels inside the
    /// rootfs, reaches `host_path`.
    fn escape(&self, depth: usize, host_path: &Path) -> PathBuf {
        let mut target = PathBuf::new();
        for _ in 0..depth + self.rootfs.components().count() + 3 {
            target.push("..");
        }
        target.join(host_path.strip_prefix("/").unwrap())
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&path).unwrap())
            } else {
                format!("file {:o} {:?}", meta.permissions().mode(), fs::read(&path).unwrap())
            };
            out.insert(path, what);
        }
    }
    out
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-gpuslice-test-{}", std::process::id())
}

fn errno_of(err: &Error) -> Option<Errno> {
    match err {
        Error::Resolve { errno, .. } | Error::Create { errno, .. } => Some(*errno),
        _ => None,
    }
}

fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits)
}

#[test]
fn absolute_symlinked_etc_resolves_inside_rootfs() {
    let tree = Tree::new();
    symlink(&tree.host, tree.rootfs.join("etc")).unwrap();
    let before = tree.host_snapshot();
    let rootfs = tree.open();

    // The link dangles inside the rootfs: a file cannot be written into it, and a directory
    // made through it is made at the link's target inside the rootfs, never on the host.
    let err = rootfs.write_file("/etc/ld.so.preload", b"/evil.so\n", mode(0o644)).unwrap_err();
    assert_eq!(errno_of(&err), Some(Errno::ENOENT), "{err}");
    rootfs.mkdir_all("/etc/gpuslice", mode(0o755)).unwrap();
    assert!(tree.inside(&tree.host).join("gpuslice").is_dir());
    assert_eq!(rootfs.read_file("/etc/passwd", 4096).unwrap(), None, "host passwd read through the link");
    assert_eq!(tree.host_snapshot(), before);

    // Once the link's target exists inside the rootfs, everything lands there.
    let in_root = tree.inside(&tree.host);
    fs::create_dir_all(&in_root).unwrap();
    rootfs.write_file("/etc/ld.so.preload", b"/usr/lib/x.so\n", mode(0o644)).unwrap();
    rootfs.mkdir_all("/etc/gpuslice/a/b", mode(0o755)).unwrap();
    rootfs.create_file("/etc/gpuslice/limits", mode(0o644)).unwrap();
    assert_eq!(fs::read(in_root.join("ld.so.preload")).unwrap(), b"/usr/lib/x.so\n");
    assert!(in_root.join("gpuslice/a/b").is_dir());
    assert!(in_root.join("gpuslice/limits").is_file());
    assert_eq!(rootfs.read_file("/etc/ld.so.preload", 4096).unwrap().unwrap(), b"/usr/lib/x.so\n");
    assert_eq!(tree.host_snapshot(), before);
}

#[test]
fn relative_dotdot_escape_is_clamped_at_rootfs() {
    let tree = Tree::new();
    symlink(tree.escape(0, &tree.host), tree.rootfs.join("etc")).unwrap();
    // Followed naively (as the host would), the link reaches the decoy: the test means something.
    assert_eq!(fs::read_to_string(tree.rootfs.join("etc/passwd")).unwrap(), HOST_PASSWD);
    let before = tree.host_snapshot();
    let rootfs = tree.open();

    assert!(rootfs.write_file("/etc/ld.so.preload", b"/evil.so\n", mode(0o644)).is_err());
    rootfs.mkdir_all("/etc/gpuslice", mode(0o755)).unwrap();
    assert!(tree.inside(&tree.host).join("gpuslice").is_dir(), "the link's target, clamped at the rootfs");
    assert_eq!(rootfs.read_file("/etc/passwd", 4096).unwrap(), None);
    // `..` in the requested path itself is clamped too.
    let dotdot = Path::new("/").join(tree.escape(2, &tree.host)).join("planted");
    rootfs.mkdir_all(&dotdot, mode(0o755)).unwrap();
    rootfs.write_file(dotdot.join("file"), b"x", mode(0o644)).unwrap();
    assert!(tree.inside(&tree.host).join("planted/file").is_file());
    assert_eq!(tree.host_snapshot(), before);
}

#[test]
fn usr_lib_gpuslice_symlinked_to_slash_stays_in_rootfs() {
    let tree = Tree::new();
    fs::create_dir_all(tree.rootfs.join("usr/lib")).unwrap();
    symlink("/", tree.rootfs.join("usr/lib/gpuslice")).unwrap();
    let rootfs = tree.open();
    let file = unique("lib") + ".so";
    let dir = unique("dir");

    rootfs.create_file(format!("/usr/lib/gpuslice/{file}"), mode(0o644)).unwrap();
    rootfs.mkdir_all(format!("/usr/lib/gpuslice/{dir}/sub"), mode(0o755)).unwrap();
    rootfs.write_file(format!("/usr/lib/gpuslice/{dir}/sub/w"), b"w", mode(0o644)).unwrap();

    assert!(tree.rootfs.join(&file).is_file());
    assert!(tree.rootfs.join(&dir).join("sub/w").is_file());
    assert!(!Path::new("/").join(&file).exists(), "created in the host's /");
    assert!(!Path::new("/").join(&dir).exists(), "created in the host's /");
}

#[test]
fn magic_links_are_refused() {
    // The host's own root has a mounted /proc: its magic links must not be followed.
    let rootfs = Rootfs::open("/").unwrap();
    for path in ["/proc/self/root", "/proc/self/root/etc", "/proc/self/cwd", "/proc/self/fd/0"] {
        let err = rootfs.resolve(path, OFlag::O_PATH).unwrap_err();
        assert_eq!(errno_of(&err), Some(Errno::ELOOP), "{path}: {err}");
    }
    // Ordinary symlinks still work there.
    rootfs.resolve("/proc/self", OFlag::O_PATH | OFlag::O_DIRECTORY).unwrap();

    // In a rootfs without a /proc, `/run -> /proc/self/root` is a plain link that dangles:
    // what is made through it is made at `<rootfs>/proc/self/root`, not in the host's root.
    let tree = Tree::new();
    symlink("/proc/self/root", tree.rootfs.join("run")).unwrap();
    let rootfs = tree.open();
    let dir = unique("run");
    rootfs.mkdir_all(format!("/run/{dir}"), mode(0o755)).unwrap();
    rootfs.create_file(format!("/run/{dir}.file"), mode(0o644)).unwrap();
    assert!(tree.rootfs.join("proc/self/root").join(&dir).is_dir());
    assert!(tree.rootfs.join("proc/self/root").join(format!("{dir}.file")).is_file());
    assert!(!Path::new("/").join(&dir).exists());
    assert!(!Path::new("/").join(format!("{dir}.file")).exists());
}

#[test]
fn ld_so_preload_symlinked_to_host_file_is_replaced_not_followed() {
    let tree = Tree::new();
    fs::create_dir_all(tree.rootfs.join("etc")).unwrap();
    let before = tree.host_snapshot();
    let rootfs = tree.open();
    let targets = [tree.host.join("passwd"), tree.escape(1, &tree.host.join("passwd"))];
    for target in targets {
        let preload = tree.rootfs.join("etc/ld.so.preload");
        let _ = fs::remove_file(&preload);
        symlink(&target, &preload).unwrap();

        assert_eq!(rootfs.read_file("/etc/ld.so.preload", 4096).unwrap(), None, "{target:?}");
        let err = rootfs.create_file("/etc/ld.so.preload", mode(0o644)).unwrap_err();
        assert!(matches!(err, Error::NotARegularFile { .. }), "{err}");

        rootfs.write_file("/etc/ld.so.preload", b"/usr/lib/gpuslice/libgpuslice.so\n", mode(0o644)).unwrap();
        let meta = fs::symlink_metadata(&preload).unwrap();
        assert!(meta.is_file(), "{target:?}: still a symlink");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(fs::read(&preload).unwrap(), b"/usr/lib/gpuslice/libgpuslice.so\n");
        assert_eq!(tree.host_snapshot(), before, "{target:?}");
        let leftovers: Vec<_> =
            fs::read_dir(tree.rootfs.join("etc")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, [OsStr::new("ld.so.preload")], "temporary files left behind");
    }

    // A link that stays inside the rootfs is followed for reading: the image's entries are kept.
    fs::write(tree.rootfs.join("etc/preload.real"), "/image.so\n").unwrap();
    fs::remove_file(tree.rootfs.join("etc/ld.so.preload")).unwrap();
    symlink("/etc/preload.real", tree.rootfs.join("etc/ld.so.preload")).unwrap();
    assert_eq!(rootfs.read_file("/etc/ld.so.preload", 4096).unwrap().unwrap(), b"/image.so\n");
}

#[test]
fn regular_file_where_a_directory_is_expected() {
    let tree = Tree::new();
    fs::write(tree.rootfs.join("usr"), "not a dir").unwrap();
    fs::create_dir(tree.rootfs.join("etc")).unwrap();
    let rootfs = tree.open();

    let err = rootfs.mkdir_all("/usr/lib/gpuslice", mode(0o755)).unwrap_err();
    assert!(matches!(&err, Error::NotADirectory { path } if path == Path::new("/usr")), "{err}");
    let err = rootfs.create_file("/usr/lib/libgpuslice.so", mode(0o644)).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
    let err = rootfs.write_file("/usr/x", b"x", mode(0o644)).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
    let err = rootfs.resolve("/usr/lib", OFlag::O_PATH).unwrap_err();
    assert_eq!(errno_of(&err), Some(Errno::ENOTDIR), "{err}");
    // And the other way round: a directory where a mount-point file is expected.
    let err = rootfs.create_file("/etc", mode(0o644)).unwrap_err();
    assert!(matches!(err, Error::NotARegularFile { .. }), "{err}");
    let err = rootfs.write_file("/etc", b"x", mode(0o644)).unwrap_err();
    assert!(matches!(err, Error::Create { .. }), "{err}");
    // An existing regular file is a fine mount point and keeps its contents.
    rootfs.create_file("/usr", mode(0o644)).unwrap();
    assert_eq!(fs::read_to_string(tree.rootfs.join("usr")).unwrap(), "not a dir");
    assert_eq!(fs::read_dir(&tree.rootfs).unwrap().count(), 2, "temporary files left behind");
}

#[test]
fn paths_without_a_file_name_are_rejected() {
    let tree = Tree::new();
    let rootfs = tree.open();
    for path in ["/", "", "/etc/..", "/."] {
        let err = rootfs.create_file(path, mode(0o644)).unwrap_err();
        assert!(matches!(err, Error::InvalidPath { .. }), "{path:?}: {err}");
        let err = rootfs.write_file(path, b"", mode(0o644)).unwrap_err();
        assert!(matches!(err, Error::InvalidPath { .. }), "{path:?}: {err}");
    }
}

#[test]
fn read_file_is_bounded_and_refuses_fifos() {
    let tree = Tree::new();
    fs::create_dir(tree.rootfs.join("etc")).unwrap();
    let rootfs = tree.open();
    assert_eq!(rootfs.read_file("/etc/ld.so.preload", 16).unwrap(), None);

    let big = vec![b'a'; 20_000];
    fs::write(tree.rootfs.join("etc/ld.so.preload"), &big).unwrap();
    assert_eq!(rootfs.read_file("/etc/ld.so.preload", 20_000).unwrap().unwrap(), big);
    let err = rootfs.read_file("/etc/ld.so.preload", 19_999).unwrap_err();
    assert!(matches!(err, Error::TooLarge { max_len: 19_999, .. }), "{err}");

    // Opening a FIFO for reading would block the hook forever.
    fs::remove_file(tree.rootfs.join("etc/ld.so.preload")).unwrap();
    nix::unistd::mkfifo(&tree.rootfs.join("etc/ld.so.preload"), mode(0o644)).unwrap();
    let err = rootfs.read_file("/etc/ld.so.preload", 4096).unwrap_err();
    assert!(matches!(err, Error::NotARegularFile { .. }), "{err}");
}

#[test]
fn write_file_sets_exact_mode_and_replaces_contents() {
    let tree = Tree::new();
    fs::create_dir(tree.rootfs.join("etc")).unwrap();
    let rootfs = tree.open();
    rootfs.write_file("etc/ld.so.preload", b"first\n", mode(0o600)).unwrap();
    rootfs.write_file("/etc/ld.so.preload", b"second\n", mode(0o664)).unwrap();
    let path = tree.rootfs.join("etc/ld.so.preload");
    assert_eq!(fs::read(&path).unwrap(), b"second\n");
    // 0o664 survives whatever umask the test runs under (the umask would clear 0o020 at 022).
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o664);
}

// Mounts: run in a child process inside a private mount namespace (`common`).

/// Mount points of this thread's namespace.
fn mount_points() -> Vec<PathBuf> {
    common::mount_points().into_iter().map(|m| m.path).collect()
}

fn assert_errno(result: std::io::Result<impl Sized>, errno: i32, what: &str) {
    match result {
        Ok(_) => panic!("{what}: succeeded"),
        Err(err) => assert_eq!(err.raw_os_error(), Some(errno), "{what}: {err}"),
    }
}

#[test]
fn bind_mount_file_and_read_only_directory() {
    in_mount_namespace("bind_mount_file_and_read_only_directory", || {
        let tree = Tree::new();
        fs::create_dir_all(tree.rootfs.join("usr/lib")).unwrap();
        let lib = tree.base.join("libgpuslice.so");
        fs::write(&lib, "shim").unwrap();
        let rootfs = tree.open();

        rootfs.bind_mount(&lib, "/usr/lib/gpuslice/libgpuslice.so", false).unwrap();
        let mounted = tree.rootfs.join("usr/lib/gpuslice/libgpuslice.so");
        assert_eq!(fs::read_to_string(&mounted).unwrap(), "shim");
        fs::OpenOptions::new().write(true).open(&mounted).expect("read-write bind is writable");

        rootfs.bind_mount(&tree.host, "/run/gpuslice/slice0", true).unwrap();
        let slice = tree.rootfs.join("run/gpuslice/slice0");
        assert_eq!(fs::read_to_string(slice.join("passwd")).unwrap(), HOST_PASSWD);
        assert_errno(fs::write(slice.join("new"), "x"), libc::EROFS, "creating in a read-only dir mount");
        assert_errno(fs::OpenOptions::new().write(true).open(slice.join("passwd")), libc::EROFS, "writing");

        rootfs.bind_mount(&lib, "/etc/ro-lib.so", true).unwrap();
        assert_errno(fs::OpenOptions::new().append(true).open(tree.rootfs.join("etc/ro-lib.so")), libc::EROFS, "file");

        // The remount hit the new mounts, not the filesystem holding the rootfs.
        fs::write(tree.rootfs.join("still-writable"), "x").unwrap();
        fs::write(tree.rootfs.join("run/gpuslice/beside"), "x").unwrap();
        assert!(!tree.host.join("new").exists());

        let err = rootfs.bind_mount(&tree.host, "/usr/lib/gpuslice/libgpuslice.so", true).unwrap_err();
        assert!(matches!(err, Error::NotADirectory { .. }), "directory onto a file: {err}");
        let err = rootfs.bind_mount(Path::new("/dev/null"), "/etc/null", false).unwrap_err();
        assert!(matches!(err, Error::UnsupportedSource { .. }), "{err}");
    });
}

#[test]
fn bind_mount_through_hostile_symlinks_stays_in_rootfs() {
    in_mount_namespace("bind_mount_through_hostile_symlinks_stays_in_rootfs", || {
        let tree = Tree::new();
        fs::create_dir_all(tree.rootfs.join("usr/lib")).unwrap();
        symlink("/", tree.rootfs.join("usr/lib/gpuslice")).unwrap();
        symlink(&tree.host, tree.rootfs.join("etc")).unwrap();
        fs::create_dir(tree.rootfs.join("proc")).unwrap();
        mount(Some("proc"), &tree.rootfs.join("proc"), Some("proc"), MsFlags::empty(), None::<&str>).unwrap();
        symlink("/proc/self/root", tree.rootfs.join("run")).unwrap();
        let lib = tree.base.join("libgpuslice.so");
        fs::write(&lib, "shim").unwrap();
        let before_host = tree.host_snapshot();
        let before_mounts = mount_points();
        let rootfs = tree.open();

        let file = unique("lib") + ".so";
        rootfs.bind_mount(&lib, format!("/usr/lib/gpuslice/{file}"), true).unwrap();
        assert_eq!(fs::read_to_string(tree.rootfs.join(&file)).unwrap(), "shim");
        assert!(!Path::new("/").join(&file).exists(), "mount point created in the host's /");

        // `/etc` leads to the host decoy's path, which exists only on the host: the mount
        // point is made at that path inside the rootfs.
        rootfs.bind_mount(&tree.base.join("hostetc/sub"), "/etc/gpuslice", true).unwrap();
        let etc_mount = tree.inside(&tree.host).join("gpuslice");

        // /proc is a real procfs here, so /run is a magic link: refused outright.
        let err = rootfs.resolve("/run", OFlag::O_PATH).unwrap_err();
        assert_eq!(errno_of(&err), Some(Errno::ELOOP), "{err}");
        let dir = unique("run");
        let err = rootfs.bind_mount(&tree.host, format!("/run/{dir}"), false).unwrap_err();
        assert_eq!(errno_of(&err), Some(Errno::ELOOP), "{err}");
        assert!(!Path::new("/").join(&dir).exists());

        assert_eq!(tree.host_snapshot(), before_host);
        let new_mounts: Vec<_> = mount_points().into_iter().filter(|m| !before_mounts.contains(m)).collect();
        assert_eq!(new_mounts, [tree.rootfs.join(&file), etc_mount], "mounts outside the rootfs");
    });
}
