//! glibc's loader cache, `/etc/ld.so.cache`: read from untrusted bytes, and written for a
//! container so that `dlopen("libcuda.so.1")` finds the driver's libraries without `ldconfig`.
//!
//! The dynamic loader resolves a bare soname by binary search in this file before it tries its
//! default directories. [`parse_ld_cache`] reads a cache, checking every offset;
//! [`render_ld_cache`] writes one in glibc's new format; [`compose_container_cache`] merges an
//! image's own cache with the libraries the hook mounts into the container.
//!
//! # Order
//!
//! `search_cache` in glibc's `elf/dl-cache.c` compares the wanted name against an entry's with
//! [`libcmp`] and moves right when the wanted name is the smaller one, so the table must be in
//! *descending* [`libcmp`] order. Among entries of the same name it walks back to the first and
//! takes the first it can use (its own flags, no legacy hwcap), so ties are ordered too:
//! `ldconfig` (`compare` in `elf/cache.c`) puts higher flags first, then glibc-hwcaps entries,
//! then legacy hwcap entries by the number of bits set. [`render_ld_cache`] sorts the same way,
//! stably, so that of two entries that still tie the first one given is the one the loader
//! takes.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Magic of the format glibc ≥ 2.32 writes (`cache_file_new` in glibc's `dl-cache.h`).
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
/// Magic of the libc5-era format, which older ldconfig wrote in front of the new one.
const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
/// magic + version (20), nlibs, len_strings, flags byte + 3 padding, extension_offset, 3 unused.
const NEW_HEADER_LEN: usize = 48;
/// flags i32, key u32, value u32, osversion u32, hwcap u64.
const NEW_ENTRY_LEN: usize = 24;
/// magic (11 bytes + NUL), nlibs u32.
const OLD_HEADER_LEN: usize = 16;
/// flags i32, key u32, value u32.
const OLD_ENTRY_LEN: usize = 12;
/// `__alignof__ (struct cache_file_new)`: the new header follows the old entries at this alignment.
const NEW_ALIGN: usize = 8;

/// Values of the low two bits of the header's flags byte (`cache_file_new_flags_endian_*`);
/// the other bits are reserved and ignored, but only when the byte is not zero.
const ENDIAN_UNSET: u8 = 0;
const ENDIAN_LITTLE: u8 = 2;
const ENDIAN_BIG: u8 = 3;
const ENDIAN_MASK: u8 = 3;

/// `FLAG_ELF_LIBC6 | FLAG_X8664_LIB64`: a 64-bit x86 glibc shared object, the only flags an
/// x86-64 loader accepts (`_DL_CACHE_DEFAULT_ID`).
pub const FLAG_X86_64: i32 = 0x0303;
/// Type and required-arch bits of an entry's flags (`FLAG_TYPE_MASK | FLAG_REQUIRED_MASK`).
const FLAG_ARCH_MASK: i32 = 0xffff;

/// `DL_CACHE_HWCAP_EXTENSION`: with only this bit set in the upper half of `hwcap` (ISA level
/// bits aside), the lower half indexes the glibc-hwcaps section of the cache's extensions.
const HWCAP_EXTENSION: u64 = 1 << 62;
/// `DL_CACHE_HWCAP_ISA_LEVEL_MASK`, in the upper half of `hwcap`.
const HWCAP_ISA_LEVEL_MASK: u64 = 0x3ff;

/// Most bytes of names and paths [`parse_ld_cache`] decodes. Entries may share strings, so a
/// small hostile cache could otherwise expand to terabytes; real caches decode to well under
/// a megabyte.
const MAX_DECODED: u64 = 64 << 20;

/// What is wrong with an `ld.so.cache`'s bytes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("not an ld.so.cache: unknown magic")]
    BadMagic,
    #[error("only the old ld.so-1.7.0 format is present; glibc's new format is required")]
    OldFormatOnly,
    #[error("truncated: {what} needs {needed} bytes, the cache has {len}")]
    Truncated { what: &'static str, needed: u64, len: usize },
    #[error("big-endian cache; only little-endian is supported")]
    BigEndian,
    #[error("unknown endianness flag {0}")]
    BadEndianFlag(u8),
    #[error("entry {entry}: string offset {offset} is outside the string table")]
    StringOutOfRange { entry: usize, offset: u32 },
    #[error("entry {entry}: string at offset {offset} is not NUL-terminated within the string table")]
    UnterminatedString { entry: usize, offset: u32 },
    #[error("names and paths exceed {limit} bytes by entry {entry}")]
    TooLarge { entry: usize, limit: u64 },
}

/// The architecture an entry's flags say the library is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LibArch {
    /// `FLAG_ELF_LIBC6 | FLAG_X8664_LIB64` (0x0303).
    X86_64,
    /// Anything else: 32-bit x86, x32, other ELF classes; the raw flags are kept.
    Other(i32),
}

impl LibArch {
    fn of(flags: i32) -> Self {
        if flags & FLAG_ARCH_MASK == FLAG_X86_64 { Self::X86_64 } else { Self::Other(flags) }
    }
}

/// One entry of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheEntry {
    /// The name programs ask for, usually the soname: `libcuda.so.1`.
    pub name: String,
    /// Where the library is, as seen from the root the cache was built for.
    pub path: PathBuf,
    pub flags: i32,
    /// Derived from `flags`.
    pub arch: LibArch,
    /// Lowest kernel version the library needs; loaders before glibc 2.33 skip an entry whose
    /// version is above the running kernel's. Written as 0 by current `ldconfig`.
    pub osversion: u32,
    /// Legacy hwcap bits (entries that loaders since glibc 2.37 skip), or a reference into the
    /// glibc-hwcaps extension (bit 62); 0 for an ordinary library.
    pub hwcap: u64,
}

impl CacheEntry {
    /// Whether `hwcap` refers to the glibc-hwcaps extension section (`dl_cache_hwcap_extension`).
    fn uses_hwcaps_extension(&self) -> bool {
        (self.hwcap >> 32) & !HWCAP_ISA_LEVEL_MASK == HWCAP_EXTENSION >> 32
    }
}

fn need(bytes: &[u8], end: u64, what: &'static str) -> Result<(), CacheError> {
    if end > bytes.len() as u64 { Err(CacheError::Truncated { what, needed: end, len: bytes.len() }) } else { Ok(()) }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an `ld.so.cache`: the new format alone, or the old format followed by the new one.
/// Entries come in file order; an extension section, when present, is not read.
pub fn parse_ld_cache(bytes: &[u8]) -> Result<Vec<CacheEntry>, CacheError> {
    let new_start = if bytes.starts_with(NEW_MAGIC) {
        0
    } else if bytes.starts_with(OLD_MAGIC) {
        need(bytes, OLD_HEADER_LEN as u64, "old header")?;
        let old_nlibs = u64::from(le_u32(bytes, 12));
        let old_end = OLD_HEADER_LEN as u64 + old_nlibs * OLD_ENTRY_LEN as u64;
        need(bytes, old_end, "old entries")?;
        let aligned = old_end.next_multiple_of(NEW_ALIGN as u64);
        if aligned >= bytes.len() as u64 {
            return Err(CacheError::OldFormatOnly);
        }
        // In range: aligned < bytes.len().
        let start = aligned as usize;
        if !bytes[start..].starts_with(NEW_MAGIC) {
            return if bytes.len() - start < NEW_MAGIC.len() && NEW_MAGIC.starts_with(&bytes[start..]) {
                Err(CacheError::Truncated {
                    what: "new header",
                    needed: aligned + NEW_HEADER_LEN as u64,
                    len: bytes.len(),
                })
            } else {
                Err(CacheError::OldFormatOnly)
            };
        }
        start
    } else if NEW_MAGIC.starts_with(bytes) || OLD_MAGIC.starts_with(bytes) {
        return Err(CacheError::Truncated { what: "magic", needed: NEW_MAGIC.len() as u64, len: bytes.len() });
    } else {
        return Err(CacheError::BadMagic);
    };

    // Offsets in the new format count from the start of its header.
    let new = &bytes[new_start..];
    need(new, NEW_HEADER_LEN as u64, "new header")?;
    // Both present: the header's 48 bytes were checked just above.
    let nlibs = le_u32(new, 20);
    let len_strings = le_u32(new, 24);
    // As `cache_file_new_matches_endian`: zero, or little-endian in the low two bits.
    let endian = new[28];
    if endian != ENDIAN_UNSET {
        match endian & ENDIAN_MASK {
            ENDIAN_LITTLE => {}
            ENDIAN_BIG => return Err(CacheError::BigEndian),
            _ => return Err(CacheError::BadEndianFlag(endian)),
        }
    }
    let strings_start = NEW_HEADER_LEN as u64 + u64::from(nlibs) * NEW_ENTRY_LEN as u64;
    need(new, strings_start, "entries")?;
    let strings_end = strings_start + u64::from(len_strings);
    need(new, strings_end, "string table")?;
    // Both in range: checked against new.len() just above.
    let table = strings_start as usize..strings_end as usize;

    let string = |entry: usize, offset: u32| -> Result<&[u8], CacheError> {
        let at = offset as usize;
        if !table.contains(&at) {
            return Err(CacheError::StringOutOfRange { entry, offset });
        }
        let rest = &new[at..table.end];
        let len = rest.iter().position(|&b| b == 0).ok_or(CacheError::UnterminatedString { entry, offset })?;
        Ok(&rest[..len])
    };

    let mut entries = Vec::with_capacity(nlibs as usize);
    let mut decoded = 0u64;
    for (i, raw) in new[NEW_HEADER_LEN..table.start].chunks_exact(NEW_ENTRY_LEN).enumerate() {
        let flags = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let name = string(i, le_u32(raw, 4))?;
        let path = string(i, le_u32(raw, 8))?;
        decoded += (name.len() + path.len()) as u64;
        if decoded > MAX_DECODED {
            return Err(CacheError::TooLarge { entry: i, limit: MAX_DECODED });
        }
        entries.push(CacheEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            path: PathBuf::from(OsStr::from_bytes(path)),
            flags,
            arch: LibArch::of(flags),
            osversion: le_u32(raw, 12),
            hwcap: u64::from_le_bytes([raw[16], raw[17], raw[18], raw[19], raw[20], raw[21], raw[22], raw[23]]),
        });
    }
    Ok(entries)
}

/// `bytes` up to its first NUL, as C sees a string.
fn c_str(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |nul| &bytes[..nul])
}

/// The number spelled by the digits of `s` from `at`, and where they end. glibc accumulates in
/// an `int`, so longer runs wrap as they do there.
fn digit_run(s: &[u8], mut at: usize) -> (i32, usize) {
    let mut value = 0i32;
    while let Some(&d) = s.get(at).filter(|d| d.is_ascii_digit()) {
        value = value.wrapping_mul(10).wrapping_add(i32::from(d - b'0'));
        at += 1;
    }
    (value, at)
}

/// How glibc orders library names in the cache (`_dl_cache_libcmp`): runs of digits compare
/// by their value (`libfoo.so.10` after `libfoo.so.9`, `lib01` equal to `lib1`), a digit
/// after any other byte, other bytes by their value as a signed `char`, as on x86-64 (bytes
/// from 0x80 come first). Either name ends at its first NUL; an ended name reads as NUL, so a
/// prefix sorts before the longer name.
pub fn libcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (c_str(a), c_str(b));
    let (mut i, mut j) = (0, 0);
    loop {
        let (x, y) = (a.get(i).copied(), b.get(j).copied());
        match (x.filter(u8::is_ascii_digit), y.filter(u8::is_ascii_digit)) {
            (Some(_), Some(_)) => {
                let (x, next_i) = digit_run(a, i);
                let (y, next_j) = digit_run(b, j);
                match x.cmp(&y) {
                    Ordering::Equal => (i, j) = (next_i, next_j),
                    unequal => return unequal,
                }
            }
            (Some(_), None) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (None, None) => {
                let (x, y) = (x.unwrap_or(0).cast_signed(), y.unwrap_or(0).cast_signed());
                if x != y || x == 0 {
                    return x.cmp(&y);
                }
                (i, j) = (i + 1, j + 1);
            }
        }
    }
}

/// `ldconfig`'s order (see the module's doc): names descending under [`libcmp`], then flags
/// descending, glibc-hwcaps entries first (by section index, the low half of `hwcap`, which
/// `ldconfig` assigns in subdirectory name order), then legacy hwcaps by bits set and by value,
/// then osversion, all descending.
fn cache_order(a: &CacheEntry, b: &CacheEntry) -> Ordering {
    let hwcaps_index = |e: &CacheEntry| e.uses_hwcaps_extension().then_some(e.hwcap as u32);
    libcmp(b.name.as_bytes(), a.name.as_bytes())
        .then(b.flags.cmp(&a.flags))
        .then_with(|| match (hwcaps_index(a), hwcaps_index(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then(b.hwcap.count_ones().cmp(&a.hwcap.count_ones()))
        .then(b.hwcap.cmp(&a.hwcap))
        .then(b.osversion.cmp(&a.osversion))
}

/// Renders `entries` as a cache in glibc's new format (little-endian, no old-format header, no
/// extension section), sorted as `ldconfig` sorts them; see the module's doc for the order.
///
/// Entries that use the glibc-hwcaps extension are left out: their `hwcap` indexes a section
/// this writer does not produce. Names and paths end at their first NUL, as the loader reads
/// them; identical strings are stored once. A cache of no entries is 48 bytes, which the
/// loader treats as no cache at all.
///
/// # Panics
///
/// When the entries and strings exceed the format's 4 GiB of offsets.
pub fn render_ld_cache(entries: &[CacheEntry]) -> Vec<u8> {
    render(entries.iter().collect())
}

const TOO_LARGE: &str = "ld.so.cache larger than its 4 GiB of offsets";

/// The strings of a cache being rendered, each stored once.
struct StringTable<'a> {
    /// Offset of the table from the start of the file.
    start: usize,
    bytes: Vec<u8>,
    offsets: HashMap<&'a [u8], u32>,
}

impl<'a> StringTable<'a> {
    /// The file offset of `s` (up to its first NUL), added when new.
    fn intern(&mut self, s: &'a [u8]) -> u32 {
        let s = c_str(s);
        *self.offsets.entry(s).or_insert_with(|| {
            let at = u32::try_from(self.start + self.bytes.len()).expect(TOO_LARGE);
            self.bytes.extend_from_slice(s);
            self.bytes.push(0);
            at
        })
    }
}

fn render(mut entries: Vec<&CacheEntry>) -> Vec<u8> {
    entries.retain(|e| !e.uses_hwcaps_extension());
    entries.sort_by(|a, b| cache_order(a, b));

    let strings_start = NEW_HEADER_LEN + entries.len() * NEW_ENTRY_LEN;
    let mut table = StringTable { start: strings_start, bytes: Vec::new(), offsets: HashMap::new() };
    let records: Vec<(u32, u32)> = entries
        .iter()
        .map(|e| (table.intern(e.name.as_bytes()), table.intern(e.path.as_os_str().as_bytes())))
        .collect();
    let strings = table.bytes;

    let mut out = Vec::with_capacity(strings_start + strings.len());
    out.extend_from_slice(NEW_MAGIC);
    out.extend_from_slice(&u32::try_from(entries.len()).expect(TOO_LARGE).to_le_bytes());
    out.extend_from_slice(&u32::try_from(strings.len()).expect(TOO_LARGE).to_le_bytes());
    out.extend_from_slice(&[ENDIAN_LITTLE, 0, 0, 0]);
    // extension_offset (none) and three unused words.
    out.extend_from_slice(&[0; 16]);
    for (e, (key, value)) in entries.iter().zip(records) {
        out.extend_from_slice(&e.flags.to_le_bytes());
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
        out.extend_from_slice(&e.osversion.to_le_bytes());
        out.extend_from_slice(&e.hwcap.to_le_bytes());
    }
    out.extend_from_slice(&strings);
    out
}

/// A container's loader cache from [`compose_container_cache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCache {
    /// The bytes for the container's `/etc/ld.so.cache`.
    pub bytes: Vec<u8>,
    /// Why the image's own cache was left out: its bytes could not be parsed.
    pub image_error: Option<CacheError>,
}

/// The loader cache for a container: the image's entries (`image_cache`, its own
/// `/etc/ld.so.cache` when it has one) and an x86-64 entry for each `(name, path)` of `added`,
/// the path as seen inside the container.
///
/// An image cache that does not parse is reported and left out; the loader still finds the
/// image's libraries in its default directories. Added entries win: image entries for x86-64
/// whose names are equal under [`libcmp`] to an added name are dropped (a stale CUDA compat
/// `libcuda.so.1` in the image must not shadow the driver's), and of added names equal to one
/// another the first is kept. Exact duplicates and entries that use the glibc-hwcaps extension
/// are dropped too; see [`render_ld_cache`] for the rest.
pub fn compose_container_cache(image_cache: Option<&[u8]>, added: &[(String, PathBuf)]) -> ContainerCache {
    let (image, image_error) = match image_cache.map(parse_ld_cache) {
        None => (Vec::new(), None),
        Some(Ok(entries)) => (entries, None),
        Some(Err(err)) => (Vec::new(), Some(err)),
    };

    let mut ours: Vec<CacheEntry> = added
        .iter()
        .map(|(name, path)| CacheEntry {
            name: name.clone(),
            path: path.clone(),
            flags: FLAG_X86_64,
            arch: LibArch::X86_64,
            osversion: 0,
            hwcap: 0,
        })
        .collect();
    // Stable: of names equal under libcmp, the first given stays first and survives dedup.
    ours.sort_by(|a, b| libcmp(a.name.as_bytes(), b.name.as_bytes()));
    ours.dedup_by(|later, first| libcmp(later.name.as_bytes(), first.name.as_bytes()).is_eq());

    let replaced = |e: &CacheEntry| {
        e.arch == LibArch::X86_64 && ours.binary_search_by(|o| libcmp(o.name.as_bytes(), e.name.as_bytes())).is_ok()
    };
    let mut seen = HashSet::new();
    let mut entries: Vec<&CacheEntry> = ours.iter().collect();
    entries.extend(image.iter().filter(|e| !e.uses_hwcaps_extension() && !replaced(e) && seen.insert(*e)));
    ContainerCache { bytes: render(entries), image_error }
}

#[cfg(test)]
mod tests;
