use super::*;
use std::os::unix::fs::symlink;
use std::process::Command;

/// Builds a little-endian new-format cache (optionally behind an old-format header, as
/// `ldconfig -c compat` writes) from `(flags, name, path)` entries.
fn build_cache(entries: &[(i32, &str, &str)], with_old: bool) -> Vec<u8> {
    let mut strings = Vec::new();
    let strings_start = NEW_HEADER_LEN + entries.len() * NEW_ENTRY_LEN;
    let mut offsets = Vec::new();
    for (_, name, path) in entries {
        let key = strings_start + strings.len();
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
        let value = strings_start + strings.len();
        strings.extend_from_slice(path.as_bytes());
        strings.push(0);
        offsets.push((key as u32, value as u32));
    }
    let mut new = Vec::new();
    new.extend_from_slice(NEW_MAGIC);
    new.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    new.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    new.extend_from_slice(&[ENDIAN_LITTLE, 0, 0, 0]);
    new.extend_from_slice(&[0; 16]); // extension_offset, unused[3]
    assert_eq!(new.len(), NEW_HEADER_LEN);
    for ((flags, _, _), (key, value)) in entries.iter().zip(&offsets) {
        new.extend_from_slice(&flags.to_le_bytes());
        new.extend_from_slice(&key.to_le_bytes());
        new.extend_from_slice(&value.to_le_bytes());
        new.extend_from_slice(&0u32.to_le_bytes()); // osversion
        new.extend_from_slice(&0u64.to_le_bytes()); // hwcap
    }
    new.extend_from_slice(&strings);
    if !with_old {
        return new;
    }
    // The old section's entries are never read; give it three (36 bytes) so padding is needed.
    let mut out = Vec::new();
    out.extend_from_slice(OLD_MAGIC);
    out.push(0);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&[0; 3 * OLD_ENTRY_LEN]);
    out.resize(out.len().next_multiple_of(NEW_ALIGN), 0);
    out.extend_from_slice(&new);
    out
}

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

fn sample() -> Vec<(i32, &'static str, &'static str)> {
    vec![
        (FLAG_X86_64, "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        (0x0803, "libcuda.so.1", "/usr/lib/i386-linux-gnu/libcuda.so.1"),
        (FLAG_X86_64, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
    ]
}

#[test]
fn parses_new_format_alone_and_behind_old_header() {
    for with_old in [false, true] {
        let entries = parse_ld_cache(&build_cache(&sample(), with_old)).unwrap();
        assert_eq!(entries.len(), 3, "with_old={with_old}");
        assert_eq!(entries[0].name, "libcuda.so.1");
        assert_eq!(entries[0].path, Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"));
        assert_eq!(entries[0].arch, LibArch::X86_64);
        assert_eq!(entries[1].arch, LibArch::Other(0x0803));
        assert_eq!(entries[2].name, "libc.so.6");
    }
}

#[test]
fn finds_libc_in_this_machines_cache() {
    let path = Path::new("/etc/ld.so.cache");
    if !path.exists() {
        println!("skipped: {} does not exist", path.display());
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

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for with_old in [false, true] {
        let cache = build_cache(&sample(), with_old);
        for len in 0..cache.len() {
            let err = parse_ld_cache(&cache[..len]).expect_err(&format!("with_old={with_old} len={len}"));
            assert!(
                matches!(err, CacheError::Truncated { .. } | CacheError::OldFormatOnly),
                "with_old={with_old} len={len}: {err}"
            );
        }
    }
}

#[test]
fn wrong_magic_is_rejected() {
    let mut cache = build_cache(&sample(), false);
    cache[0] = b'X';
    assert_eq!(parse_ld_cache(&cache), Err(CacheError::BadMagic));
    assert_eq!(parse_ld_cache(b"\x7fELF\x02\x01\x01"), Err(CacheError::BadMagic));
}

#[test]
fn old_format_alone_is_rejected() {
    let mut cache = OLD_MAGIC.to_vec();
    cache.push(0);
    cache.extend_from_slice(&1u32.to_le_bytes());
    cache.extend_from_slice(&[0; OLD_ENTRY_LEN]);
    assert_eq!(parse_ld_cache(&cache), Err(CacheError::OldFormatOnly));
    cache.extend_from_slice(&[0; 64]);
    assert_eq!(parse_ld_cache(&cache), Err(CacheError::OldFormatOnly));
}

#[test]
fn big_endian_and_unknown_endianness_are_rejected() {
    let mut cache = build_cache(&sample(), false);
    cache[28] = ENDIAN_BIG;
    assert_eq!(parse_ld_cache(&cache), Err(CacheError::BigEndian));
    cache[28] = 7;
    assert_eq!(parse_ld_cache(&cache), Err(CacheError::BadEndianFlag(7)));
}

#[test]
fn string_offsets_outside_the_table_are_rejected() {
    let cache = build_cache(&sample(), false);
    let key_at = NEW_HEADER_LEN + 4;
    for bad in [0u32, 47, cache.len() as u32, u32::MAX] {
        let mut c = cache.clone();
        c[key_at..key_at + 4].copy_from_slice(&bad.to_le_bytes());
        assert_eq!(parse_ld_cache(&c), Err(CacheError::StringOutOfRange { entry: 0, offset: bad }), "offset {bad}");
    }
    // The value of the last entry points at its final byte, which is the table's last NUL: fine.
    // Dropping that NUL from the table (len_strings - 1) leaves the path unterminated.
    let mut c = cache.clone();
    let len_strings = u32::from_le_bytes([c[24], c[25], c[26], c[27]]);
    c[24..28].copy_from_slice(&(len_strings - 1).to_le_bytes());
    assert!(matches!(parse_ld_cache(&c), Err(CacheError::UnterminatedString { entry: 2, .. })), "{c:?}");
}

#[test]
fn huge_entry_count_is_truncation_not_allocation() {
    let mut cache = build_cache(&sample(), false);
    cache[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(parse_ld_cache(&cache), Err(CacheError::Truncated { what: "entries", .. })));
    let mut cache = build_cache(&sample(), true);
    cache[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(parse_ld_cache(&cache), Err(CacheError::Truncated { what: "old entries", .. })));
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
    let cache = build_cache(
        &[
            (FLAG_X86_64, "libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"),
            (FLAG_X86_64, "libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
            (0x0803, "libnvidia-ml.so.1", "/usr/lib/i386-linux-gnu/libnvidia-ml.so.1"),
            (FLAG_X86_64, "libnvidia-cfg.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1"),
            (FLAG_X86_64, "libGLX_nvidia.so.0", "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0"),
            (FLAG_X86_64, "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
            (FLAG_X86_64, "libcuda.so", "/usr/lib/x86_64-linux-gnu/libcuda.so"),
        ],
        false,
    );
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
                "libGLX_nvidia.so.0",
                p("/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0"),
                p("/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.580.95.05")
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
    fs::write(&cache, build_cache(&[(FLAG_X86_64, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")], false)).unwrap();
    let err = driver_libraries(root.path()).unwrap_err();
    assert!(matches!(&err, DriverFilesError::NoLibcuda { cache: c } if *c == cache), "{err:?}");
    assert!(err.to_string().contains(&cache.display().to_string()), "{err}");

    // Listed, but its file is gone: also an error, naming the link.
    fs::write(&cache, build_cache(&[(FLAG_X86_64, "libcuda.so.1", "/usr/lib/libcuda.so.1")], false)).unwrap();
    let err = driver_libraries(root.path()).unwrap_err();
    assert!(matches!(err, DriverFilesError::LibcudaMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("/usr/lib/libcuda.so.1"), "{err}");
}

#[test]
fn malformed_cache_names_the_path() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    let cache = root.path().join("etc/ld.so.cache");
    fs::write(&cache, &build_cache(&sample(), false)[..60]).unwrap();
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
        println!("skipped: needs cc and ldconfig");
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
        assert_eq!(bytes.starts_with(OLD_MAGIC), format == "compat", "{format}");
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
