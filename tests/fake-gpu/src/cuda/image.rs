//! What a module image says about its kernels: their names, where the image can be read.
//!
//! Images come as a fat binary's wrapper (`__fatBinC_Wrapper_t`, magic `0x466243B1`, what
//! `__cudaRegisterFatBinary` gets), a fat binary (`fatBinaryHeader`, magic `0xBA55ED50`,
//! followed by entries of PTX or ELF, each with a 64-byte header), an ELF cubin, or PTX text.
//! Kernel names are read from PTX (`.entry NAME`), bare or in a fat binary whose entries are
//! all uncompressed PTX. Anything else (cubins, compressed entries, bytes of no known kind)
//! cannot be read here, so it provides any kernel asked for: the simulator runs no code, and a
//! program only asks for kernels its image has.

use std::ffi::{CStr, c_void};

/// The kernels an image provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kernels {
    /// These names, read from PTX.
    Listed(Vec<String>),
    /// Any name: the image is not one whose kernels can be read.
    Any,
}

impl Kernels {
    pub fn has(&self, name: &str) -> bool {
        match self {
            Kernels::Listed(names) => names.iter().any(|n| n == name),
            Kernels::Any => true,
        }
    }
}

const WRAPPER_MAGIC: u32 = 0x4662_43B1;
const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const ELF_MAGIC: u32 = u32::from_le_bytes(*b"\x7fELF");
const ENTRY_PTX: u16 = 1;
/// Entry flags: LZ4- or zstd-compressed payload.
const COMPRESSED: u64 = 0x2000 | 0x8000;
/// The smallest entry header.
const ENTRY_HEADER: usize = 64;

/// # Safety
///
/// `p` is valid for reads of `T` (unaligned).
unsafe fn read<T: Copy>(p: *const u8) -> T {
    // SAFETY: per the caller.
    unsafe { p.cast::<T>().read_unaligned() }
}

/// The kernels of `image`.
///
/// # Safety
///
/// `image` is non-null and points at an image as `cuModuleLoadData` takes it: a fat binary
/// (or its wrapper) whose sizes are right, an ELF file, or NUL-terminated text.
pub(crate) unsafe fn kernels(image: *const c_void) -> Kernels {
    let p = image.cast::<u8>();
    // SAFETY: every image kind is at least 4 bytes long, except text, whose NUL may come
    // first: read byte by byte until then.
    let magic = unsafe { leading_word(p) };
    match magic {
        Some(WRAPPER_MAGIC) => {
            // SAFETY: a wrapper is {int magic, int version, const void *data, void *…}.
            let (version, data) = unsafe { (read::<u32>(p.wrapping_add(4)), read::<*const u8>(p.wrapping_add(8))) };
            if version != 1 || data.is_null() {
                return Kernels::Any;
            }
            // SAFETY: a version-1 wrapper's data is a fat binary.
            unsafe { fatbin(data) }
        }
        // SAFETY: the magic says it is a fat binary.
        Some(FATBIN_MAGIC) => unsafe { fatbin(p) },
        Some(ELF_MAGIC) => Kernels::Any,
        _ => {
            // SAFETY: not a binary kind, so NUL-terminated text per the caller.
            let text = unsafe { CStr::from_ptr(p.cast()) }.to_string_lossy();
            ptx_entries(&text).map_or(Kernels::Any, Kernels::Listed)
        }
    }
}

/// The first four bytes as a little-endian word, or `None` if a NUL comes first (text).
///
/// # Safety
///
/// `p` is valid for reads up to its first NUL or 4 bytes, whichever comes first.
unsafe fn leading_word(p: *const u8) -> Option<u32> {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        // SAFETY: the bytes before the first NUL, and at most 4, per the caller.
        *b = unsafe { p.wrapping_add(i).read() };
        if *b == 0 {
            return None;
        }
    }
    Some(u32::from_le_bytes(bytes))
}

/// The kernels of a fat binary: the union of its entries' if all are uncompressed PTX.
///
/// # Safety
///
/// `p` points at a `fatBinaryHeader` followed by `fatSize` bytes of entries.
unsafe fn fatbin(p: *const u8) -> Kernels {
    // SAFETY: the 16-byte header: magic, u16 version, u16 header size, u64 size.
    let (magic, header_size, size) =
        unsafe { (read::<u32>(p), read::<u16>(p.wrapping_add(6)), read::<u64>(p.wrapping_add(8))) };
    if magic != FATBIN_MAGIC {
        return Kernels::Any;
    }
    let Ok(size) = usize::try_from(size) else { return Kernels::Any };
    // SAFETY: the entries follow the header, `size` bytes of them.
    let entries = unsafe { std::slice::from_raw_parts(p.wrapping_add(usize::from(header_size)), size) };
    let mut names = Vec::new();
    let mut rest = entries;
    while rest.len() >= ENTRY_HEADER {
        let word = |at: usize| u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
        let kind = u16::from_le_bytes([rest[0], rest[1]]);
        let (header, payload, compressed) = (word(4) as usize, word(8) as usize, word(16) as usize);
        let flags = u64::from_le_bytes(rest[40..48].try_into().expect("8 bytes"));
        let Some(end) =
            header.checked_add(payload.max(compressed)).filter(|&e| header >= ENTRY_HEADER && e <= rest.len())
        else {
            return Kernels::Any;
        };
        if kind != ENTRY_PTX || flags & COMPRESSED != 0 {
            return Kernels::Any;
        }
        let text = String::from_utf8_lossy(&rest[header..header + payload]);
        match ptx_entries(&text) {
            Some(found) => names.extend(found),
            None => return Kernels::Any,
        }
        rest = &rest[end..];
    }
    Kernels::Listed(names)
}

/// The `.entry` names of PTX text; `None` if it is not PTX (no `.version` directive).
pub(crate) fn ptx_entries(text: &str) -> Option<Vec<String>> {
    let mut tokens = text.split(|c: char| c.is_whitespace() || c == '(' || c == ',').filter(|t| !t.is_empty());
    let mut names = Vec::new();
    let mut ptx = false;
    while let Some(t) = tokens.next() {
        match t {
            ".version" => ptx = true,
            ".entry" => {
                if let Some(name) = tokens.next() {
                    names.push(name.to_owned());
                }
            }
            _ => {}
        }
    }
    ptx.then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = ".version 6.0\n.target sm_50\n.address_size 64\n\n.visible .entry busy(\n\t.param .u64 p\n)\n{\n\tret;\n}\n.entry _Z4idlev()\n{\n\tret;\n}\n";

    fn entry(kind: u16, flags: u64, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[0..2].copy_from_slice(&kind.to_le_bytes());
        h[2..4].copy_from_slice(&0x101u16.to_le_bytes());
        h[4..8].copy_from_slice(&64u32.to_le_bytes());
        h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[40..48].copy_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn fatbin(entries: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = entries.concat();
        let mut f = Vec::new();
        f.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&16u16.to_le_bytes());
        f.extend_from_slice(&(body.len() as u64).to_le_bytes());
        f.extend_from_slice(&body);
        f
    }

    fn names(list: &[&str]) -> Kernels {
        Kernels::Listed(list.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn ptx_lists_its_entries() {
        assert_eq!(ptx_entries(PTX), Some(vec!["busy".to_owned(), "_Z4idlev".to_owned()]));
        assert_eq!(ptx_entries("not ptx"), None);
        let text = std::ffi::CString::new(PTX).unwrap();
        // SAFETY: a NUL-terminated string.
        assert_eq!(unsafe { kernels(text.as_ptr().cast()) }, names(&["busy", "_Z4idlev"]));
    }

    #[test]
    fn fat_binaries_of_ptx_list_their_entries_and_others_do_not() {
        let mut payload = PTX.as_bytes().to_vec();
        payload.resize(payload.len().next_multiple_of(8), 0);
        let two = fatbin(&[entry(1, 0x11, &payload), entry(1, 0x11, b".version 7.0\n.entry other()\n{}\n\0\0\0")]);
        // SAFETY: a well-formed fat binary.
        assert_eq!(unsafe { kernels(two.as_ptr().cast()) }, names(&["busy", "_Z4idlev", "other"]));
        let wrapper: [u64; 3] = [u64::from(WRAPPER_MAGIC) | 1 << 32, two.as_ptr() as u64, 0];
        // SAFETY: a version-1 wrapper pointing at it.
        assert_eq!(unsafe { kernels(wrapper.as_ptr().cast()) }, names(&["busy", "_Z4idlev", "other"]));
        let elf = fatbin(&[entry(2, 0x11, &[0x7f, b'E', b'L', b'F', 0, 0, 0, 0])]);
        // SAFETY: as above.
        assert_eq!(unsafe { kernels(elf.as_ptr().cast()) }, Kernels::Any);
        let compressed = fatbin(&[entry(1, 0x2011, &payload)]);
        // SAFETY: as above.
        assert_eq!(unsafe { kernels(compressed.as_ptr().cast()) }, Kernels::Any);
        let zeros = [0u8; 16];
        // SAFETY: an empty string.
        assert_eq!(unsafe { kernels(zeros.as_ptr().cast()) }, Kernels::Any);
    }
}
