//! The NVIDIA driver's files on a host, found the way `nvidia-ctk cdi generate` finds them:
//! through the driver root's `/etc/ld.so.cache`, not by guessing library directories.
//!
//! [`read_ld_cache`] reads the cache ([`crate::ld_cache`] knows its format);
//! [`driver_libraries`] picks the driver's x86-64 libraries out of it and the driver's tools
//! out of `bin` directories, and resolves each to the real file the hook bind-mounts.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

// The cache's types, for callers of `read_ld_cache`; they live in `ld_cache`.
pub use crate::ld_cache::{CacheEntry, CacheError, FLAG_X86_64, LibArch, parse_ld_cache};

/// Libraries of the driver that compute and utility containers need, as NVIDIA's legacy
/// `nvidia-container-cli` lists them (`utility` and `compute` sets). The CDI generator also takes
/// every library whose file is `*.so.<driver version>`; [`driver_libraries`] does both.
pub const DRIVER_LIBRARIES: &[&str] = &[
    // utility
    "libnvidia-ml.so",
    "libnvidia-cfg.so",
    "libnvidia-nscq.so",
    // compute
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-allocator.so",
    "libnvidia-compiler.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so",
    // versioned apart from the driver, which is why the generator names it explicitly
    "libnvidia-nvvm70.so",
];

/// Tools of the driver that the generator looks up under the driver root, when present.
pub const DRIVER_BINARIES: &[&str] =
    &["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"];

/// Where the tools are looked for, in order, relative to the driver root.
const BINARY_DIRS: &[&str] = &["usr/bin", "usr/sbin", "bin", "sbin"];

/// The library every driver install has; without it there is nothing to give a container.
const LIBCUDA: &str = "libcuda.so.1";

/// Symlinks followed before a path is declared a loop (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Why the driver's files could not be found.
#[derive(Debug, thiserror::Error)]
pub enum DriverFilesError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Cache { path: PathBuf, source: CacheError },
    #[error("{cache}: no x86-64 {LIBCUDA} listed; is the NVIDIA driver installed under this root?")]
    NoLibcuda { cache: PathBuf },
    #[error("{cache} lists {LIBCUDA} at {link}, which cannot be resolved under {root}: {source}")]
    LibcudaMissing { cache: PathBuf, link: PathBuf, root: PathBuf, source: io::Error },
}

/// A driver library: the cache's entry and the real file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverLibrary {
    /// The cache's name for it: `libcuda.so.1`.
    pub name: String,
    /// The cache's path, as seen inside the driver root; the container gets the same path, a
    /// symlink to `file` when the two differ: `/usr/lib/x86_64-linux-gnu/libcuda.so.1`.
    pub link: PathBuf,
    /// The real file, symlinks followed, as seen inside the driver root; the mount target in the
    /// container: `/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05`.
    pub file: PathBuf,
    /// The real file on the host (`driver_root` joined with `file`): the bind source.
    pub host_file: PathBuf,
}

/// A driver tool such as `nvidia-smi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverBinary {
    pub name: String,
    /// Where it was found, as seen inside the driver root; the container gets the same path.
    pub path: PathBuf,
    /// The real file on the host, symlinks followed within the driver root.
    pub host_file: PathBuf,
}

/// Everything [`driver_libraries`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFiles {
    /// The driver version taken from the file behind `libcuda.so.1` (`580.95.05`), when its
    /// name carries one.
    pub version: Option<String>,
    /// In cache order, one per name; several names may share a real file.
    pub libraries: Vec<DriverLibrary>,
    pub binaries: Vec<DriverBinary>,
    /// Cache entries of driver libraries whose files are gone (a stale cache), for the caller
    /// to log; they are not in `libraries`.
    pub stale: Vec<PathBuf>,
}

/// Reads and parses the cache file at `path`.
pub fn read_ld_cache(path: &Path) -> Result<Vec<CacheEntry>, DriverFilesError> {
    let bytes = fs::read(path).map_err(|source| DriverFilesError::Read { path: path.to_owned(), source })?;
    parse_ld_cache(&bytes).map_err(|source| DriverFilesError::Cache { path: path.to_owned(), source })
}

/// `root` joined with `inside`, an absolute path as seen inside `root`.
fn under_root(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// Follows every symlink in `path` (absolute, as seen inside `root`) the way the kernel would
/// if `root` were `/`: absolute link targets and `..` stay inside `root`. Returns the real
/// path as seen inside `root`.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    fn push_components(pending: &mut Vec<OsString>, path: &Path) {
        let parts: Vec<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
            })
            .collect();
        pending.extend(parts.into_iter().rev());
    }

    let mut resolved = PathBuf::from("/");
    let mut pending = Vec::new();
    push_components(&mut pending, path);
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let on_host = under_root(root, &candidate);
        if fs::symlink_metadata(&on_host)?.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = fs::read_link(&on_host)?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            push_components(&mut pending, &target);
        } else {
            resolved = candidate;
        }
    }
    Ok(resolved)
}

/// Whether `name` is `base` or `base.<anything>` (`libcuda.so`, `libcuda.so.1`).
fn is_named(name: &str, base: &str) -> bool {
    name.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The real path of `link` (as seen inside `root`), when it resolves to a regular file.
fn real_file(root: &Path, link: &Path) -> io::Result<PathBuf> {
    let file = resolve_in_root(root, link)?;
    if fs::metadata(under_root(root, &file))?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"))
    }
}

/// Finds the driver's x86-64 libraries through `<driver_root>/etc/ld.so.cache`, and its tools
/// under `<driver_root>/{usr/bin,usr/sbin,bin,sbin}`.
///
/// A library is the driver's when its name is in [`DRIVER_LIBRARIES`] or, as NVIDIA's CDI
/// generator does it, when its real file is `*.so.<driver version>` (the graphics libraries,
/// `libnvcuvid`, …); the version is read off the file behind `libcuda.so.1`.
pub fn driver_libraries(driver_root: &Path) -> Result<DriverFiles, DriverFilesError> {
    let cache = driver_root.join("etc/ld.so.cache");
    let entries = read_ld_cache(&cache)?;

    let mut seen = std::collections::HashSet::new();
    let x86: Vec<&CacheEntry> =
        entries.iter().filter(|e| e.arch == LibArch::X86_64 && seen.insert(e.name.as_str())).collect();

    let libcuda =
        x86.iter().find(|e| e.name == LIBCUDA).ok_or_else(|| DriverFilesError::NoLibcuda { cache: cache.clone() })?;
    let libcuda_file = real_file(driver_root, &libcuda.path).map_err(|source| DriverFilesError::LibcudaMissing {
        cache: cache.clone(),
        link: libcuda.path.clone(),
        root: driver_root.to_owned(),
        source,
    })?;
    let version = libcuda_file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libcuda.so."))
        .filter(|v| *v != "1" && !v.is_empty())
        .map(str::to_owned);
    let versioned_suffix = version.as_ref().map(|v| format!(".so.{v}"));

    let mut files = DriverFiles { version, libraries: Vec::new(), binaries: Vec::new(), stale: Vec::new() };
    for entry in x86 {
        let listed = DRIVER_LIBRARIES.iter().any(|base| is_named(&entry.name, base));
        match real_file(driver_root, &entry.path) {
            Ok(file) => {
                let versioned = versioned_suffix.as_ref().is_some_and(|suffix| {
                    file.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(suffix.as_str()))
                });
                if listed || versioned {
                    files.libraries.push(DriverLibrary {
                        name: entry.name.clone(),
                        link: entry.path.clone(),
                        host_file: under_root(driver_root, &file),
                        file,
                    });
                }
            }
            Err(_) if listed => files.stale.push(entry.path.clone()),
            Err(_) => {}
        }
    }

    for name in DRIVER_BINARIES {
        for dir in BINARY_DIRS {
            let path = Path::new("/").join(dir).join(name);
            if let Ok(file) = real_file(driver_root, &path) {
                files.binaries.push(DriverBinary {
                    name: (*name).to_owned(),
                    path,
                    host_file: under_root(driver_root, &file),
                });
                break;
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests;
