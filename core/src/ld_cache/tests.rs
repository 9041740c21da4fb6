use super::*;
use std::path::Path;

fn entry(flags: i32, name: &str, path: &str) -> CacheEntry {
    CacheEntry { name: name.into(), path: path.into(), flags, arch: LibArch::of(flags), osversion: 0, hwcap: 0 }
}

fn with_hwcap(hwcap: u64, e: CacheEntry) -> CacheEntry {
    CacheEntry { hwcap, ..e }
}

/// i386 and x32 glibc libraries (`FLAG_ELF_LIBC6` alone, and with `FLAG_X8664_LIBX32`).
const FLAG_I386: i32 = 0x0003;
const FLAG_X32: i32 = 0x0803;

/// Builds a little-endian new-format cache of `entries` in the order given (optionally behind
/// an old-format header, as `ldconfig -c compat` writes), each string stored apart.
fn build_cache(entries: &[CacheEntry], with_old: bool) -> Vec<u8> {
    let mut strings = Vec::new();
    let strings_start = NEW_HEADER_LEN + entries.len() * NEW_ENTRY_LEN;
    let mut offsets = Vec::new();
    for e in entries {
        let key = strings_start + strings.len();
        strings.extend_from_slice(e.name.as_bytes());
        strings.push(0);
        let value = strings_start + strings.len();
        strings.extend_from_slice(e.path.as_os_str().as_bytes());
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
    for (e, (key, value)) in entries.iter().zip(&offsets) {
        new.extend_from_slice(&e.flags.to_le_bytes());
        new.extend_from_slice(&key.to_le_bytes());
        new.extend_from_slice(&value.to_le_bytes());
        new.extend_from_slice(&e.osversion.to_le_bytes());
        new.extend_from_slice(&e.hwcap.to_le_bytes());
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

fn sample() -> Vec<CacheEntry> {
    vec![
        entry(FLAG_X86_64, "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        CacheEntry {
            osversion: 0x0003_0200,
            ..entry(FLAG_I386, "libcuda.so.1", "/usr/lib/i386-linux-gnu/libcuda.so.1")
        },
        with_hwcap(0x8000_0000_0000_0001, entry(FLAG_X86_64, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")),
    ]
}

fn host_cache() -> Option<Vec<u8>> {
    let path = Path::new("/etc/ld.so.cache");
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            gpuslice_test_support::skip("the host cache tests", &format!("reading {}: {err}", path.display()));
            None
        }
    }
}

#[test]
fn parses_new_format_alone_and_behind_old_header() {
    for with_old in [false, true] {
        let entries = parse_ld_cache(&build_cache(&sample(), with_old)).unwrap();
        assert_eq!(entries, sample(), "with_old={with_old}");
        assert_eq!(entries[0].arch, LibArch::X86_64);
        assert_eq!(entries[1].arch, LibArch::Other(FLAG_I386));
    }
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
fn endianness_is_read_from_the_low_bits_as_glibc_does() {
    let mut cache = build_cache(&sample(), false);
    cache[28] = ENDIAN_UNSET;
    assert_eq!(parse_ld_cache(&cache).unwrap().len(), 3);
    // Reserved high bits are ignored.
    cache[28] = 0x80 | ENDIAN_LITTLE;
    assert_eq!(parse_ld_cache(&cache).unwrap().len(), 3);
    cache[28] = ENDIAN_BIG;
    assert_eq!(parse_ld_cache(&cache), Err(CacheError::BigEndian));
    cache[28] = 0x40 | ENDIAN_BIG;
    assert_eq!(parse_ld_cache(&cache), Err(CacheError::BigEndian));
    // 1 is `cache_file_new_flags_endian_invalid`; 4 is reserved bits with no endianness.
    for bad in [1, 4] {
        cache[28] = bad;
        assert_eq!(parse_ld_cache(&cache), Err(CacheError::BadEndianFlag(bad)));
    }
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
    let len_strings = le_u32(&c, 24);
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

/// A cache of `n` entries whose name and path are all one string of `len` bytes.
fn one_shared_string(n: usize, len: usize) -> Vec<u8> {
    let table_at = (NEW_HEADER_LEN + n * NEW_ENTRY_LEN) as u32;
    let mut cache = NEW_MAGIC.to_vec();
    cache.extend_from_slice(&(n as u32).to_le_bytes());
    cache.extend_from_slice(&(len as u32 + 1).to_le_bytes());
    cache.extend_from_slice(&[ENDIAN_LITTLE, 0, 0, 0]);
    cache.extend_from_slice(&[0; 16]);
    for _ in 0..n {
        cache.extend_from_slice(&FLAG_X86_64.to_le_bytes());
        cache.extend_from_slice(&table_at.to_le_bytes());
        cache.extend_from_slice(&table_at.to_le_bytes());
        cache.extend_from_slice(&[0; 12]);
    }
    cache.resize(cache.len() + len, b'x');
    cache.push(0);
    cache
}

#[test]
fn entries_sharing_one_long_string_are_too_large_not_terabytes() {
    // Each entry decodes to 2 MiB; a 1 MiB file of 100 of them would decode to 200 MiB.
    let fit = (MAX_DECODED / (2 << 20)) as usize;
    assert_eq!(parse_ld_cache(&one_shared_string(fit, 1 << 20)).unwrap().len(), fit);
    assert_eq!(
        parse_ld_cache(&one_shared_string(100, 1 << 20)),
        Err(CacheError::TooLarge { entry: fit, limit: MAX_DECODED })
    );
}

#[test]
fn libcmp_compares_digit_runs_by_value() {
    use Ordering::{Equal, Greater, Less};
    let cases: &[(&[u8], &[u8], Ordering)] = &[
        (b"libfoo.so.10", b"libfoo.so.9", Greater),
        (b"libfoo.so.2", b"libfoo.so.10", Less),
        (b"libfoo.so.1.2.10", b"libfoo.so.1.2.9", Greater),
        (b"lib01.so", b"lib1.so", Equal),
        (b"lib1.so", b"lib1.so", Equal),
        // A digit sorts after any other byte, whatever its value.
        (b"libz3.so", b"libzstd.so", Greater),
        (b"lib9", b"lib~", Greater),
        (b"libfoo.so.1", b"libfoo.so.x", Greater),
        // Other bytes by value.
        (b"libGL.so", b"libcuda.so", Less),
        (b"libcuda.so.1", b"libc.so.6", Greater),
        // A prefix first, also when the longer name goes on with a digit.
        (b"libfoo.so", b"libfoo.so.1", Less),
        (b"libfoo", b"libfoo1", Less),
        (b"", b"a", Less),
        (b"", b"", Equal),
        // x86-64's `char` is signed: high bytes come before NUL, so before the end of a name.
        (b"lib\xff", b"liba", Less),
        (b"lib\xff", b"lib", Less),
        // Names end at a NUL.
        (b"libx.so\0junk", b"libx.so", Equal),
        // glibc's `int` wraps: 2^32 reads as 0.
        (b"lib4294967296", b"lib0", Equal),
    ];
    for &(a, b, want) in cases {
        let show = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
        assert_eq!(libcmp(a, b), want, "{:?} vs {:?}", show(a), show(b));
        assert_eq!(libcmp(b, a), want.reverse(), "{:?} vs {:?}", show(b), show(a));
    }
}

#[test]
fn libcmp_is_a_total_order() {
    let names: &[&[u8]] = &[
        b"",
        b"a",
        b"lib",
        b"lib1",
        b"lib01",
        b"lib10",
        b"lib9",
        b"lib9a",
        b"liba",
        b"lib.",
        b"lib\xff",
        b"lib\x80",
        b"libz3",
        b"libzstd",
        b"libz.so",
        b"libz.so.1",
        b"libz.so.1.2",
        b"lib2147483647",
        b"lib2147483648",
    ];
    for a in names {
        assert_eq!(libcmp(a, a), Ordering::Equal);
        for b in names {
            assert_eq!(libcmp(a, b), libcmp(b, a).reverse());
            for c in names {
                if libcmp(a, b).is_le() && libcmp(b, c).is_le() {
                    assert!(libcmp(a, c).is_le(), "{a:?} <= {b:?} <= {c:?}");
                }
            }
        }
    }
}

#[test]
fn rendered_bytes_of_a_fixed_set() {
    let libc = entry(FLAG_X86_64, "libc.so.6", "/lib/libc.so.6");
    let cuda_i386 = entry(FLAG_I386, "libcuda.so.1", "/lib32/libcuda.so.1");
    let cuda = entry(FLAG_X86_64, "libcuda.so.1", "/lib/libcuda.so.1");
    let bytes = render_ld_cache(&[libc, cuda_i386, cuda]);

    // Descending names, then descending flags; "libcuda.so.1" is stored once.
    let base = (NEW_HEADER_LEN + 3 * NEW_ENTRY_LEN) as u32;
    let strings: &[u8] = b"libcuda.so.1\0/lib/libcuda.so.1\0/lib32/libcuda.so.1\0libc.so.6\0/lib/libc.so.6\0";
    let (cuda_name, cuda_path, cuda32_path, libc_name, libc_path) = (base, base + 13, base + 31, base + 51, base + 61);
    let mut want = Vec::new();
    want.extend_from_slice(b"glibc-ld.so.cache1.1");
    want.extend_from_slice(&3u32.to_le_bytes());
    want.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    want.extend_from_slice(&[2, 0, 0, 0]);
    want.extend_from_slice(&[0; 16]);
    for (flags, key, value) in
        [(0x0303, cuda_name, cuda_path), (0x0003, cuda_name, cuda32_path), (0x0303, libc_name, libc_path)]
    {
        want.extend_from_slice(&i32::to_le_bytes(flags));
        want.extend_from_slice(&key.to_le_bytes());
        want.extend_from_slice(&value.to_le_bytes());
        want.extend_from_slice(&[0; 12]); // osversion, hwcap
    }
    want.extend_from_slice(strings);
    assert_eq!(bytes, want);
}

#[test]
fn render_then_parse_gives_the_entries_in_cache_order() {
    let x86 = |name: &str| entry(FLAG_X86_64, name, &format!("/usr/lib/{name}"));
    let legacy = |hwcap: u64, name: &str| with_hwcap(hwcap, entry(FLAG_X86_64, name, &format!("/usr/lib/tls/{name}")));
    let given = vec![
        x86("libfoo.so.9"),
        x86("libfoo.so"),
        legacy(0b1, "libfoo.so.10"),
        x86("libfoo.so.10"),
        legacy(0b110, "libfoo.so.10"),
        legacy(0b1000, "libfoo.so.10"),
        entry(FLAG_I386, "libfoo.so.10", "/usr/lib32/libfoo.so.10"),
        entry(FLAG_X32, "libfoo.so.10", "/usr/libx32/libfoo.so.10"),
        CacheEntry { osversion: 0x0002_0600, ..x86("libbar.so.1") },
        x86("libbar.so.1"),
        x86("libz3.so.4"),
        x86("libzstd.so.1"),
    ];
    let want = vec![
        x86("libz3.so.4"),
        x86("libzstd.so.1"),
        entry(FLAG_X32, "libfoo.so.10", "/usr/libx32/libfoo.so.10"),
        legacy(0b110, "libfoo.so.10"),
        legacy(0b1000, "libfoo.so.10"),
        legacy(0b1, "libfoo.so.10"),
        x86("libfoo.so.10"),
        entry(FLAG_I386, "libfoo.so.10", "/usr/lib32/libfoo.so.10"),
        x86("libfoo.so.9"),
        x86("libfoo.so"),
        CacheEntry { osversion: 0x0002_0600, ..x86("libbar.so.1") },
        x86("libbar.so.1"),
    ];
    assert_eq!(parse_ld_cache(&render_ld_cache(&given)).unwrap(), want);
    assert_eq!(parse_ld_cache(&render_ld_cache(&want)).unwrap(), want);
}

#[test]
fn render_keeps_the_given_order_of_ties() {
    let first = entry(FLAG_X86_64, "libdup.so.1", "/opt/a/libdup.so.1");
    let second = entry(FLAG_X86_64, "libdup.so.1", "/opt/b/libdup.so.1");
    let parsed = parse_ld_cache(&render_ld_cache(&[first.clone(), second.clone()])).unwrap();
    assert_eq!(parsed, [first.clone(), second.clone()]);
    let parsed = parse_ld_cache(&render_ld_cache(&[second.clone(), first.clone()])).unwrap();
    assert_eq!(parsed, [second, first]);
}

#[test]
fn render_leaves_out_hwcaps_extension_entries() {
    let plain = entry(FLAG_X86_64, "libm.so.6", "/lib/libm.so.6");
    let v3 = with_hwcap(
        HWCAP_EXTENSION | (3 << 32) | 1,
        entry(FLAG_X86_64, "libm.so.6", "/lib/glibc-hwcaps/x86-64-v3/libm.so.6"),
    );
    assert!(v3.uses_hwcaps_extension());
    // Another bit in the upper half makes it a legacy hwcap entry, which is kept.
    let legacy = with_hwcap(HWCAP_EXTENSION | (1 << 63), entry(FLAG_X86_64, "libm.so.6", "/lib/odd/libm.so.6"));
    assert!(!legacy.uses_hwcaps_extension());
    let parsed = parse_ld_cache(&render_ld_cache(&[plain.clone(), v3, legacy.clone()])).unwrap();
    assert_eq!(parsed, [legacy, plain]);
}

#[test]
fn render_cuts_names_at_a_nul_as_the_loader_reads_them() {
    let parsed = parse_ld_cache(&render_ld_cache(&[
        entry(FLAG_X86_64, "libb.so\0zzz", "/lib/libb.so\0x"),
        entry(FLAG_X86_64, "liba.so", "/lib/liba.so"),
    ]))
    .unwrap();
    assert_eq!(parsed, [entry(FLAG_X86_64, "libb.so", "/lib/libb.so"), entry(FLAG_X86_64, "liba.so", "/lib/liba.so")]);
}

#[test]
fn hosts_cache_is_already_in_our_order() {
    let Some(bytes) = host_cache() else { return };
    let entries = parse_ld_cache(&bytes).unwrap();
    assert!(entries.len() > 10, "{} entries", entries.len());
    for (i, pair) in entries.windows(2).enumerate() {
        assert_ne!(cache_order(&pair[0], &pair[1]), Ordering::Greater, "entries {i} and {}: {pair:?}", i + 1);
    }
    // Not trivially so: the names are strictly descending somewhere.
    assert!(entries.windows(2).any(|p| libcmp(p[0].name.as_bytes(), p[1].name.as_bytes()).is_gt()));

    let kept: Vec<CacheEntry> = entries.iter().filter(|e| !e.uses_hwcaps_extension()).cloned().collect();
    let rendered = render_ld_cache(&entries);
    assert_eq!(parse_ld_cache(&rendered).unwrap(), kept);
    assert_eq!(render_ld_cache(&kept), rendered);
}

fn added(pairs: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
    pairs.iter().map(|(n, p)| ((*n).to_owned(), PathBuf::from(p))).collect()
}

const DRIVER_DIR: &str = "/usr/lib/gpuslice/driver";

fn driver(name: &str, file: &str) -> CacheEntry {
    entry(FLAG_X86_64, name, &format!("{DRIVER_DIR}/{file}"))
}

#[test]
fn compose_without_an_image_cache_lists_the_added_libraries() {
    let add = added(&[
        ("libcuda.so.1", "/usr/lib/gpuslice/driver/libcuda.so.580.95.05"),
        ("libnvidia-ml.so.1", "/usr/lib/gpuslice/driver/libnvidia-ml.so.580.95.05"),
    ]);
    let composed = compose_container_cache(None, &add);
    assert_eq!(composed.image_error, None);
    assert_eq!(
        parse_ld_cache(&composed.bytes).unwrap(),
        [driver("libnvidia-ml.so.1", "libnvidia-ml.so.580.95.05"), driver("libcuda.so.1", "libcuda.so.580.95.05")]
    );
}

#[test]
fn compose_replaces_the_images_x86_64_entries_of_added_names() {
    let image = build_cache(
        &[
            entry(FLAG_X86_64, "libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
            entry(FLAG_X86_64, "libcuda.so.1", "/usr/local/cuda/compat/libcuda.so.1"),
            // Equal under libcmp, so the loader would take it for libcuda.so.1 too.
            entry(FLAG_X86_64, "libcuda.so.01", "/usr/local/cuda/compat/libcuda.so.01"),
            entry(FLAG_I386, "libcuda.so.1", "/usr/lib/i386-linux-gnu/libcuda.so.1"),
            entry(FLAG_X86_64, "libcudart.so.12", "/usr/local/cuda/lib64/libcudart.so.12"),
        ],
        true,
    );
    let add = added(&[("libcuda.so.1", "/usr/lib/gpuslice/driver/libcuda.so.580.95.05")]);
    let composed = compose_container_cache(Some(&image), &add);
    assert_eq!(composed.image_error, None);
    assert_eq!(
        parse_ld_cache(&composed.bytes).unwrap(),
        [
            entry(FLAG_X86_64, "libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
            entry(FLAG_X86_64, "libcudart.so.12", "/usr/local/cuda/lib64/libcudart.so.12"),
            driver("libcuda.so.1", "libcuda.so.580.95.05"),
            entry(FLAG_I386, "libcuda.so.1", "/usr/lib/i386-linux-gnu/libcuda.so.1"),
        ]
    );
}

#[test]
fn compose_drops_duplicates_and_hwcaps_extension_entries() {
    let libm = entry(FLAG_X86_64, "libm.so.6", "/lib/libm.so.6");
    let libm_v3 =
        with_hwcap(HWCAP_EXTENSION | 2, entry(FLAG_X86_64, "libm.so.6", "/lib/glibc-hwcaps/x86-64-v3/libm.so.6"));
    let image = build_cache(&[libm_v3, libm.clone(), libm.clone()], false);
    let add = added(&[
        ("libcuda.so.1", "/usr/lib/gpuslice/driver/libcuda.so.580.95.05"),
        ("libcuda.so.1", "/elsewhere/libcuda.so.1"),
        ("libcuda.so.001", "/elsewhere/libcuda.so.001"),
    ]);
    let composed = compose_container_cache(Some(&image), &add);
    assert_eq!(parse_ld_cache(&composed.bytes).unwrap(), [libm, driver("libcuda.so.1", "libcuda.so.580.95.05")]);
}

#[test]
fn compose_reports_a_bad_image_cache_and_still_lists_the_added_libraries() {
    let good = build_cache(&sample(), false);
    let mut big_endian = good.clone();
    big_endian[28] = ENDIAN_BIG;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("old format only", build_cache(&sample(), true)[..16 + 3 * OLD_ENTRY_LEN].to_vec()),
        ("big-endian", big_endian),
    ];
    let add = added(&[("libcuda.so.1", "/usr/lib/gpuslice/driver/libcuda.so.580.95.05")]);
    for (what, bytes) in bad {
        let composed = compose_container_cache(Some(&bytes), &add);
        let err = composed.image_error.unwrap_or_else(|| panic!("{what}: no error reported"));
        assert_eq!(Err(err), parse_ld_cache(&bytes), "{what}");
        assert_eq!(
            parse_ld_cache(&composed.bytes).unwrap(),
            [driver("libcuda.so.1", "libcuda.so.580.95.05")],
            "{what}"
        );
    }
}

#[test]
fn compose_keeps_the_hosts_cache_and_adds_the_driver() {
    let Some(bytes) = host_cache() else { return };
    let host = parse_ld_cache(&bytes).unwrap();
    let add = added(&[("libcuda.so.1", "/usr/lib/gpuslice/driver/libcuda.so.1"), ("libc.so.6", "/x/libc.so.6")]);
    let composed = compose_container_cache(Some(&bytes), &add);
    assert_eq!(composed.image_error, None);
    let got = parse_ld_cache(&composed.bytes).unwrap();
    let mut unique = HashSet::new();
    let mut want: Vec<CacheEntry> = host
        .into_iter()
        .filter(|e| !e.uses_hwcaps_extension())
        .filter(|e| !(e.arch == LibArch::X86_64 && ["libcuda.so.1", "libc.so.6"].contains(&e.name.as_str())))
        .filter(|e| unique.insert(e.clone()))
        .collect();
    want.extend([driver("libcuda.so.1", "libcuda.so.1"), entry(FLAG_X86_64, "libc.so.6", "/x/libc.so.6")]);
    assert_eq!(got.len(), want.len());
    for e in &want {
        assert!(got.contains(e), "{e:?} missing");
    }
    assert!(got.windows(2).all(|p| cache_order(&p[0], &p[1]).is_le()));
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Builds a tiny shared object named `soname` at `path` with extra `cc` flags; false when the
/// compiler cannot (no 32-bit support, say).
fn build_library(cc: &Path, dir: &Path, path: &Path, soname: &str, flags: &[&str]) -> bool {
    let src = dir.join("lib.c");
    std::fs::write(&src, "int gpuslice_test_symbol(void) { return 0; }\n").unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let out = std::process::Command::new(cc)
        .args(["-shared", "-fPIC", "-nostdlib"])
        .args(flags)
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(path)
        .arg(&src)
        .output()
        .unwrap();
    out.status.success()
}

/// The host's `ldconfig` as the oracle: a cache it writes for names that exercise every rule of
/// the order (digit runs, digits against letters, prefixes, three architectures, glibc-hwcaps
/// subdirectories) is in our order, and rendering its entries from any order gives its order.
#[test]
fn ldconfig_orders_entries_as_render_does() {
    let (Some(cc), Some(ldconfig)) = (tool("cc"), tool("ldconfig")) else {
        gpuslice_test_support::skip("ldconfig_orders_entries_as_render_does", "needs cc and ldconfig");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let lib64 = root.path().join("usr/lib/x86_64-linux-gnu");
    let names = [
        "libn1.so.1",
        "libn2.so.1",
        "libn10.so.1",
        "libn9.so.10",
        "libn9.so.9",
        "libn9.so",
        "libna.so.1",
        "libn.so.1",
        "libn-x.so.1",
        "libN.so.1",
        "libz3.so.4",
        "libzstd.so.1",
        "libz.so.1",
        "libz.so",
        "libn9x.so.1",
        "lib_a.so.2",
        "libtie.so.1",
        "libhw.so.1",
    ];
    for name in names {
        assert!(build_library(&cc, root.path(), &lib64.join(name), name, &[]), "cc for {name}");
    }
    for level in ["x86-64-v2", "x86-64-v3"] {
        let path = lib64.join("glibc-hwcaps").join(level).join("libhw.so.1");
        assert!(build_library(&cc, root.path(), &path, "libhw.so.1", &[]), "cc for {level}");
    }
    let mut dirs = vec!["/usr/lib/x86_64-linux-gnu"];
    for (flag, dir) in [("-m32", "/usr/lib/i386-linux-gnu"), ("-mx32", "/usr/libx32")] {
        let path = root.path().join(&dir[1..]).join("libtie.so.1");
        if build_library(&cc, root.path(), &path, "libtie.so.1", &[flag]) {
            dirs.push(dir);
        } else {
            println!("partly skipped: cc {flag} cannot build a library");
        }
    }
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/ld.so.conf"), dirs.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(&ldconfig).arg("-r").arg(root.path()).args(["-c", "new"]).output().unwrap();
    assert!(out.status.success(), "ldconfig: {}", String::from_utf8_lossy(&out.stderr));

    let entries = parse_ld_cache(&std::fs::read(root.path().join("etc/ld.so.cache")).unwrap()).unwrap();
    let flags: HashSet<i32> = entries.iter().filter(|e| e.name == "libtie.so.1").map(|e| e.flags).collect();
    assert_eq!(flags.len(), dirs.len(), "{entries:#?}");
    let extension = entries.iter().filter(|e| e.uses_hwcaps_extension()).count();
    assert_eq!(extension, 2, "{entries:#?}");
    for (i, pair) in entries.windows(2).enumerate() {
        assert_ne!(cache_order(&pair[0], &pair[1]), Ordering::Greater, "entries {i} and {}: {pair:#?}", i + 1);
    }
    let kept: Vec<CacheEntry> = entries.iter().filter(|e| !e.uses_hwcaps_extension()).cloned().collect();
    let reversed: Vec<CacheEntry> = kept.iter().rev().cloned().collect();
    assert_eq!(parse_ld_cache(&render_ld_cache(&reversed)).unwrap(), kept);
}
