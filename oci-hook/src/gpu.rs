//! Is the slice's GPU still in this node? Answered from the kernel driver's
//! `/proc/driver/nvidia/gpus/<bus id>/information` files (one per GPU, with a `GPU UUID:`
//! line), which costs a directory listing and a few small reads: no NVML, no library loaded
//! into this statically linked, root-run process.
//!
//! The directory is looked up under the driver root first (a driver installed under another
//! root, or the simulated GPU, brings its own), then at `/proc/driver/nvidia/gpus`.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Where the kernel driver lists its GPUs, relative to a root.
pub const GPUS_DIR: &str = "proc/driver/nvidia/gpus";
/// Largest `information` file read.
const MAX_INFORMATION_LEN: u64 = 64 << 10;

/// Why the slice's GPU cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "the NVIDIA kernel driver is not loaded ({dir:?} does not exist); load it (modprobe nvidia) and run gpuslice-cdi generate"
    )]
    NoDriver { dir: PathBuf },
    #[error("listing {dir:?}: {source}")]
    List { dir: PathBuf, source: io::Error },
    #[error(
        "{slice} refers to {uuid} which is not present on this node (present: {present}); run gpuslice-cdi generate"
    )]
    NotPresent { slice: String, uuid: String, present: String },
}

/// The directory listing the driver's GPUs for `driver_root`.
pub fn gpus_dir(driver_root: &Path) -> PathBuf {
    let under_root = driver_root.join(GPUS_DIR);
    if driver_root != Path::new("/") && under_root.is_dir() { under_root } else { Path::new("/").join(GPUS_DIR) }
}

/// The UUIDs the driver lists, in directory order. GPUs whose `information` has no
/// `GPU UUID:` line (or cannot be read) are left out.
pub fn present_uuids(dir: &Path) -> Result<Vec<String>, GpuError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(GpuError::NoDriver { dir: dir.to_owned() }),
        Err(source) => return Err(GpuError::List { dir: dir.to_owned(), source }),
    };
    let mut uuids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| GpuError::List { dir: dir.to_owned(), source })?;
        if let Some(uuid) = read_information(&entry.path().join("information")).as_deref().and_then(uuid_of) {
            uuids.push(uuid.to_owned());
        }
    }
    Ok(uuids)
}

fn read_information(path: &Path) -> Option<String> {
    let mut text = String::new();
    fs::File::open(path).ok()?.take(MAX_INFORMATION_LEN).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of the `GPU UUID:` line of an `information` file.
pub fn uuid_of(information: &str) -> Option<&str> {
    information.lines().find_map(|line| line.strip_prefix("GPU UUID:")).map(str::trim).filter(|u| !u.is_empty())
}

/// Checks that the GPU `uuid` of `slice` is present. When the driver lists GPUs but none
/// with a readable UUID (a format this code does not know), the check passes: refusing
/// every container on a format change would be worse than starting one on a swapped card.
pub fn check_present(driver_root: &Path, slice: &str, uuid: &str) -> Result<(), GpuError> {
    let present = present_uuids(&gpus_dir(driver_root))?;
    if present.is_empty() || present.iter().any(|p| p.eq_ignore_ascii_case(uuid)) {
        return Ok(());
    }
    Err(GpuError::NotPresent { slice: slice.to_owned(), uuid: uuid.to_owned(), present: present.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFORMATION: &str = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 156\n\
        GPU UUID: \t GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000\nVideo BIOS: \t 96.00.74.00.01\n\
        Bus Type: \t PCIe\nDMA Size: \t 52 bits\nBus Location: \t 0000:01:00.0\nDevice Minor: \t 0\n";

    fn driver_root(gpus: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (bus, information) in gpus {
            let dir = root.path().join(GPUS_DIR).join(bus);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("information"), information).unwrap();
        }
        root
    }

    #[test]
    fn reads_the_uuid_line() {
        assert_eq!(uuid_of(INFORMATION), Some("GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000"));
        assert_eq!(uuid_of("Model: x\nGPU UUID: \t \n"), None);
        assert_eq!(uuid_of(""), None);
    }

    #[test]
    fn present_gpu_passes_and_missing_gpu_names_what_is_there() {
        let other = INFORMATION.replace("0000-4e2a", "0001-4e2a");
        let root = driver_root(&[("0000:01:00.0", INFORMATION), ("0000:02:00.0", &other)]);
        check_present(root.path(), "slice0", "GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000").unwrap();
        check_present(root.path(), "slice0", "gpu-6A3F1D2E-0001-4e2a-9c1b-000000000000").unwrap();
        let err = check_present(root.path(), "slice3", "GPU-deadbeef").unwrap_err().to_string();
        assert!(err.starts_with("slice3 refers to GPU-deadbeef which is not present on this node"), "{err}");
        assert!(err.contains("GPU-6a3f1d2e-0001-4e2a-9c1b-000000000000") && err.ends_with("run gpuslice-cdi generate"));
    }

    #[test]
    fn unknown_format_passes_and_no_driver_is_an_error() {
        let root = driver_root(&[("0000:01:00.0", "Model: something new\n")]);
        check_present(root.path(), "slice0", "GPU-x").unwrap();
        let empty = tempfile::tempdir().unwrap();
        let err = present_uuids(&empty.path().join(GPUS_DIR)).unwrap_err();
        assert!(matches!(err, GpuError::NoDriver { .. }), "{err}");
    }

    #[test]
    fn the_host_directory_is_used_for_the_root_and_for_roots_without_one() {
        assert_eq!(gpus_dir(Path::new("/")), Path::new("/proc/driver/nvidia/gpus"));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(gpus_dir(empty.path()), Path::new("/proc/driver/nvidia/gpus"));
        let root = driver_root(&[("0000:01:00.0", INFORMATION)]);
        assert_eq!(gpus_dir(root.path()), root.path().join(GPUS_DIR));
    }
}
