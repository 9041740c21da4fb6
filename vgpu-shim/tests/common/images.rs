//! Driver symbols and hand-made images (cubins, compressed fat binaries) for the tests of
//! what modules and libraries reserve.

use std::ffi::{CString, c_void};

/// `name` from `libcuda.so.1` as a program finds it.
pub fn symbol(name: &str) -> *mut c_void {
    // SAFETY: loading the (simulated) driver, as any CUDA program does.
    let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
    assert!(!handle.is_null());
    let c = CString::new(name).unwrap();
    // SAFETY: a handle from dlopen and a NUL-terminated name.
    let f = unsafe { libc::dlsym(handle, c.as_ptr()) };
    assert!(!f.is_null(), "{name} is not exported");
    f
}

/// An ELF cubin with a 1000-byte kernel and a `__device__` array of `global` bytes.
pub fn cubin(global: u64) -> Vec<u8> {
    let sections: [(&str, u32, u64); 3] = [(".text._Z1kv", 1, 1000), (".nv.global", 8, global), (".shstrtab", 3, 0)];
    let mut names = vec![0u8];
    let mut offsets = Vec::new();
    for (name, _, _) in &sections {
        offsets.push(names.len() as u32);
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    let str_off = f.len() as u64;
    f.extend_from_slice(&names);
    f.resize(f.len().next_multiple_of(8), 0);
    // Code bytes, so the entry is not all headers.
    f.extend(std::iter::repeat_n(0x5Au8, 1000));
    let shoff = f.len() as u64;
    let count = sections.len() + 1;
    f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    f[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
    f[0x3C..0x3E].copy_from_slice(&(count as u16).to_le_bytes());
    f[0x3E..0x40].copy_from_slice(&((count - 1) as u16).to_le_bytes());
    f.extend_from_slice(&[0u8; 64]);
    for (i, (_, kind, size)) in sections.iter().enumerate() {
        let mut s = [0u8; 64];
        s[0..4].copy_from_slice(&offsets[i].to_le_bytes());
        s[4..8].copy_from_slice(&kind.to_le_bytes());
        if *kind == 3 {
            s[24..32].copy_from_slice(&str_off.to_le_bytes());
            s[32..40].copy_from_slice(&(names.len() as u64).to_le_bytes());
        } else {
            s[32..40].copy_from_slice(&size.to_le_bytes());
        }
        f.extend_from_slice(&s);
    }
    f
}

/// A fat binary of one entry of `kind` (1: PTX, 2: ELF) compressed per `flags` (0x8011: zstd,
/// 0x2011: LZ4), whose header states `stated` as its uncompressed length.
pub fn fatbin_of(kind: u16, flags: u64, plain: &[u8], stated: u64) -> Vec<u8> {
    let packed = if flags & 0x8000 != 0 {
        ruzstd::encoding::compress_to_vec(plain, ruzstd::encoding::CompressionLevel::Fastest)
    } else {
        lz4_flex::block::compress(plain)
    };
    let padded = packed.len().next_multiple_of(8);
    let mut e = vec![0u8; 64];
    e[0..2].copy_from_slice(&kind.to_le_bytes());
    e[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
    e[4..8].copy_from_slice(&64u32.to_le_bytes());
    e[8..16].copy_from_slice(&(padded as u64).to_le_bytes());
    e[16..20].copy_from_slice(&(packed.len() as u32).to_le_bytes());
    e[28..32].copy_from_slice(&90u32.to_le_bytes());
    e[40..48].copy_from_slice(&flags.to_le_bytes());
    e[56..64].copy_from_slice(&stated.to_le_bytes());
    e.extend_from_slice(&packed);
    e.resize(64 + padded, 0);
    let mut fat = Vec::new();
    fat.extend_from_slice(&0xBA55_ED50u32.to_le_bytes());
    fat.extend_from_slice(&1u16.to_le_bytes());
    fat.extend_from_slice(&16u16.to_le_bytes());
    fat.extend_from_slice(&(e.len() as u64).to_le_bytes());
    fat.extend_from_slice(&e);
    fat
}
