use super::*;
use std::os::unix::fs::symlink;
use std::process::Command;

use crate::ld_cache::render_ld_cache;

/// i386 glibc libraries (`FLAG_ELF_LIBC6` alone).
const FLAG_I386: i32 = 0x0003;

/// A cache of `(flags, name, path)` entries, ordered as `ldconfig` orders them (the fixtures
/// list them in that order, so that the file order is the one written).
fn build_cache(entries: &[(i32, &str, &str)]) -> Vec<u8> {
    let entries: Vec<CacheEntry> = entries
        .iter()
        .map(|&(flags, name, path)| CacheEntry {
            name: name.into(),
            path: path.into(),
            flags,
            arch: if flags == FLAG_X86_64 { LibArch::X86_64 } else { LibArch::Other(flags) },
            osversion: 0,
            hwcap: 0,
        })
        .collect();
    render_ld_cache(&entries)
}

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

fn sample() -> Vec<(i32, &'static str, &'static str)> {
    vec![
        (FLAG_X86_64, "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        (FLAG_I386, "libcuda.so.1", "/usr/lib/i386-linux-gnu/libcuda.so.1"),
        (FLAG_X86_64, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
    ]
}

#[test]
fn finds_libc_in_this_machines_cache() {
    let path = Path::new("/etc/ld.so.cache");
    if !path.exists() {
        gpuslice_test_support::skip("finds_libc_in_this_machines_cache", &format!("{} does not exist", path.display()));
        return;
    }
    let entries = read_ld_cache(path).unwrap();
    let libc = entries
        .iter()
        .find(|e| e.name == "libc.so.6" && e.arch == LibArch::X86_64)
        .expect("libc.so.6 (x86-64) in /etc/ld.so.cache");
    assert!(libc.path.ends_with("libc.so.6"), "{libc:?}");
    assert!(libc.path.exists(), "{libc:?}");
}

/// A fake driver root: real files named like a 580.95.05 driver, soname links (one absolute,
/// as some installers make them), a merged `/bin`, and a cache from `build_cache`.
fn fake_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let lib = under_root(root.path(), Path::new(LIBDIR));
    fs::create_dir_all(&lib).unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    symlink("usr/bin", root.path().join("bin")).unwrap();
    for file in ["libcuda.so.580.95.05", "libnvidia-ml.so.580.95.05", "libGLX_nvidia.so.580.95.05", "libz.so.1.2.13"] {
        fs::write(lib.join(file), b"\x7fELF").unwrap();
    }
    symlink(format!("{LIBDIR}/libcuda.so.580.95.05"), lib.join("libcuda.so.1")).unwrap();
    symlink("libcuda.so.1", lib.join("libcuda.so")).unwrap();
    symlink("libnvidia-ml.so.580.95.05", lib.join("libnvidia-ml.so.1")).unwrap();
    symlink("libGLX_nvidia.so.580.95.05", lib.join("libGLX_nvidia.so.0")).unwrap();
    symlink("libz.so.1.2.13", lib.join("libz.so.1")).unwrap();
    fs::write(root.path().join("usr/bin/nvidia-smi"), b"#!").unwrap();
    let cache = build_cache(&[
        (FLAG_X86_64, "libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"),
        (FLAG_X86_64, "libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
        (FLAG_I386, "libnvidia-ml.so.1", "/usr/lib/i386-linux-gnu/libnvidia-ml.so.1"),
        (FLAG_X86_64, "libnvidia-cfg.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1"),
        (FLAG_X86_64, "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        (FLAG_X86_64, "libcuda.so", "/usr/lib/x86_64-linux-gnu/libcuda.so"),
        (FLAG_X86_64, "libGLX_nvidia.so.0", "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0"),
    ]);
    fs::write(root.path().join("etc/ld.so.cache"), cache).unwrap();
    root
}

#[test]
fn driver_libraries_from_a_generated_cache() {
    let root = fake_root();
    let files = driver_libraries(root.path()).unwrap();
    assert_eq!(files.version.as_deref(), Some("580.95.05"));
    let got: Vec<(&str, &Path, &Path)> =
        files.libraries.iter().map(|l| (l.name.as_str(), l.link.as_path(), l.file.as_path())).collect();
    let p = |s: &'static str| Path::new(s);
    assert_eq!(
        got,
        [
            (
                "libnvidia-ml.so.1",
                p("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
                p("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05")
            ),
            (
                "libcuda.so.1",
                p("/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
                p("/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05")
            ),
            (
                "libcuda.so",
                p("/usr/lib/x86_64-linux-gnu/libcuda.so"),
                p("/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05")
            ),
            (
                "libGLX_nvidia.so.0",
                p("/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0"),
                p("/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.580.95.05")
            ),
        ]
    );
    for l in &files.libraries {
        assert_eq!(l.host_file, under_root(root.path(), &l.file));
        assert!(l.host_file.is_file(), "{l:?}");
    }
    // Listed in the cache but not on disk.
    assert_eq!(files.stale, [p("/usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1")]);
    // Found through /usr/bin first; /bin is the same directory on a merged-/usr root.
    assert_eq!(files.binaries.len(), 1);
    assert_eq!(files.binaries[0].name, "nvidia-smi");
    assert_eq!(files.binaries[0].path, p("/usr/bin/nvidia-smi"));
    assert_eq!(files.binaries[0].host_file, root.path().join("usr/bin/nvidia-smi"));
}

#[test]
fn absolute_links_resolve_inside_the_root_not_on_the_host() {
    let root = fake_root();
    let lib = under_root(root.path(), Path::new(LIBDIR));
    // Points at the host's libc path; inside the root that is this file, not the host's.
    fs::create_dir_all(root.path().join("lib/x86_64-linux-gnu")).unwrap();
    fs::write(root.path().join("lib/x86_64-linux-gnu/real"), b"").unwrap();
    symlink("/lib/x86_64-linux-gnu/real", lib.join("abs")).unwrap();
    symlink("../../../../../../lib/x86_64-linux-gnu/real", lib.join("dotdot")).unwrap();
    for name in ["abs", "dotdot"] {
        let got = resolve_in_root(root.path(), &Path::new(LIBDIR).join(name)).unwrap();
        assert_eq!(got, Path::new("/lib/x86_64-linux-gnu/real"), "{name}");
    }
    symlink("loop", lib.join("loop")).unwrap();
    let err = resolve_in_root(root.path(), &Path::new(LIBDIR).join("loop")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
}

#[test]
fn missing_cache_names_the_path() {
    let root = tempfile::tempdir().unwrap();
    let err = driver_libraries(root.path()).unwrap_err();
    let cache = root.path().join("etc/ld.so.cache");
    assert!(matches!(&err, DriverFilesError::Read { path, .. } if *path == cache), "{err:?}");
    assert!(err.to_string().contains(&cache.display().to_string()), "{err}");
}

#[test]
fn cache_without_libcuda_names_the_path() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    let cache = root.path().join("etc/ld.so.cache");
    fs::write(&cache, build_cache(&[(FLAG_X86_64, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")])).unwrap();
    let err = driver_libraries(root.path()).unwrap_err();
    assert!(matches!(&err, DriverFilesError::NoLibcuda { cache: c } if *c == cache), "{err:?}");
    assert!(err.to_string().contains(&cache.display().to_string()), "{err}");

    // Listed, but its file is gone: also an error, naming the link.
    fs::write(&cache, build_cache(&[(FLAG_X86_64, "libcuda.so.1", "/usr/lib/libcuda.so.1")])).unwrap();
    let err = driver_libraries(root.path()).unwrap_err();
    assert!(matches!(err, DriverFilesError::LibcudaMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("/usr/lib/libcuda.so.1"), "{err}");
}

#[test]
fn malformed_cache_names_the_path() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    let cache = root.path().join("etc/ld.so.cache");
    fs::write(&cache, &build_cache(&sample())[..60]).unwrap();
    let err = driver_libraries(root.path()).unwrap_err();
    assert!(matches!(err, DriverFilesError::Cache { source: CacheError::Truncated { .. }, .. }), "{err:?}");
    assert!(err.to_string().contains(&cache.display().to_string()), "{err}");
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The real thing: tiny shared objects with driver sonames, linked and cached by the host's
/// own `ldconfig -r`, in both formats it writes.
#[test]
fn driver_libraries_from_a_cache_ldconfig_wrote() {
    let (Some(cc), Some(ldconfig)) = (tool("cc"), tool("ldconfig")) else {
        gpuslice_test_support::skip("driver_libraries_from_a_cache_ldconfig_wrote", "needs cc and ldconfig");
        return;
    };
    for format in ["new", "compat"] {
        let root = tempfile::tempdir().unwrap();
        let lib = under_root(root.path(), Path::new(LIBDIR));
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/ld.so.conf"), format!("{LIBDIR}\n")).unwrap();
        let src = root.path().join("empty.c");
        fs::write(&src, "int gpuslice_test_symbol(void) { return 0; }\n").unwrap();
        for (file, soname) in [
            ("libcuda.so.580.95.05", "libcuda.so.1"),
            ("libnvidia-ml.so.580.95.05", "libnvidia-ml.so.1"),
            ("libnvidia-ptxjitcompiler.so.580.95.05", "libnvidia-ptxjitcompiler.so.1"),
            ("libnvidia-nvvm70.so.4", "libnvidia-nvvm70.so.4"),
            ("libEGL_nvidia.so.580.95.05", "libEGL_nvidia.so.0"),
            ("libnotdriver.so.2.0.0", "libnotdriver.so.2"),
        ] {
            let status = Command::new(&cc)
                .args(["-shared", "-fPIC", "-nostdlib"])
                .arg(format!("-Wl,-soname,{soname}"))
                .arg("-o")
                .arg(lib.join(file))
                .arg(&src)
                .status()
                .unwrap();
            assert!(status.success(), "cc for {file}");
        }
        let out = Command::new(&ldconfig).arg("-r").arg(root.path()).args(["-c", format]).output().unwrap();
        assert!(out.status.success(), "ldconfig -c {format}: {}", String::from_utf8_lossy(&out.stderr));

        let bytes = fs::read(root.path().join("etc/ld.so.cache")).unwrap();
        assert_eq!(bytes.starts_with(b"ld.so-1.7.0"), format == "compat", "{format}");
        // ldconfig appends an extension section, so late truncations may parse; none may panic.
        for len in 0..bytes.len() {
            let _ = parse_ld_cache(&bytes[..len]);
        }

        let files = driver_libraries(root.path()).unwrap();
        assert_eq!(files.version.as_deref(), Some("580.95.05"), "{format}");
        let mut names: Vec<&str> = files.libraries.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "libEGL_nvidia.so.0",
                "libcuda.so.1",
                "libnvidia-ml.so.1",
                "libnvidia-nvvm70.so.4",
                "libnvidia-ptxjitcompiler.so.1"
            ],
            "{format}"
        );
        let cuda = files.libraries.iter().find(|l| l.name == "libcuda.so.1").unwrap();
        assert_eq!(cuda.link, Path::new(LIBDIR).join("libcuda.so.1"));
        assert_eq!(cuda.file, Path::new(LIBDIR).join("libcuda.so.580.95.05"));
        assert_eq!(cuda.host_file, lib.join("libcuda.so.580.95.05"));
        assert!(files.binaries.is_empty() && files.stale.is_empty(), "{files:?}");
    }
}
