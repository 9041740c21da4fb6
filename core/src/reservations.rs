//! Device memory a CUDA driver reserves outside allocations: for a context's limits
//! (`cuCtxSetLimit`) and for a loaded module's code and `__device__` globals. One model, used
//! by the shim to charge a slice before the driver reserves and by the simulated driver to
//! reserve, so the two agree; a real driver's numbers differ and the GPU tier prints them next
//! to this model (`tests/gpu/limits.sh`) so it can be calibrated when a GPU is lent.
//!
//! **Limits.** `CU_LIMIT_MALLOC_HEAP_SIZE` and `CU_LIMIT_PRINTF_FIFO_SIZE` reserve their value;
//! `CU_LIMIT_STACK_SIZE` is per thread and reserves value × resident threads (SMs × maximum
//! threads per SM). Each is rounded up to [`LIMIT_GRANULARITY`]. What a context reserves at
//! creation for the default values is part of its own memory: a limit costs what its value
//! reserves beyond what the value the context started with did, never less than nothing.
//!
//! **Modules.** A module image reserves the sizes of the chosen cubin's allocated ELF sections:
//! code (`.text.*`), globals (`.nv.global`, uninitialised, and `.nv.global.init`) and constant
//! banks (`.nv.constant*`), each aligned to 256 bytes, the sum rounded up to
//! [`MODULE_GRANULARITY`] (nothing stays nothing). PTX reserves the `.global` and `.const`
//! variables it declares (its code size is known only after the JIT: not counted). A fat
//! binary reserves what its largest entry does (the driver picks one entry for the device;
//! which one is its business, so the largest bounds it).
//!
//! **Compressed entries** (entry flag `0x2000`: LZ4 block format, the 12.x toolchain's
//! `-compress-all`; `0x8000`: a zstd frame, what PyTorch's and newer toolkits' fat binaries
//! carry) are decompressed and read as the driver reads them. The entry header's stated
//! uncompressed size (at byte 56) is only a hint: a tenant writes it, and what the driver
//! reserves follows the decompressed ELF's section headers (a large `__device__` array is a
//! `NOBITS` section: its size is in a header, not in the bytes), so a header that understates
//! changes nothing. Decompression is bounded ([`MAX_DECOMPRESSED`] per entry; the
//! compressed bytes read are at most the entry's payload). An entry that does not decode
//! within that counts nothing and is reported ([`Estimate::undecoded`]) for the caller to log.
//!
//! Images are read through a [`Reader`], which on the shim's side never faults on a bad
//! pointer ([`read_own_memory`]): a hostile image gets a smaller estimate or none, never a
//! crash.

/// What a limit's reservation is rounded up to.
pub const LIMIT_GRANULARITY: u64 = 2 << 20;
/// What a module's reservation is rounded up to.
pub const MODULE_GRANULARITY: u64 = 64 << 10;

/// `CU_LIMIT_STACK_SIZE`, `CU_LIMIT_PRINTF_FIFO_SIZE`, `CU_LIMIT_MALLOC_HEAP_SIZE`.
pub const LIMIT_STACK_SIZE: u32 = 0;
pub const LIMIT_PRINTF_FIFO_SIZE: u32 = 1;
pub const LIMIT_MALLOC_HEAP_SIZE: u32 = 2;

/// The device shape a stack reservation depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    pub sm_count: u64,
    pub threads_per_sm: u64,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to).saturating_mul(to)
}

/// Bytes the driver reserves for `limit` at `value`; `None` for a limit that reserves no
/// device memory of its own (sync depth, pending launches, L2 settings, …).
pub fn limit_bytes(limit: u32, value: u64, residency: Residency) -> Option<u64> {
    let raw = match limit {
        LIMIT_STACK_SIZE => value.saturating_mul(residency.sm_count).saturating_mul(residency.threads_per_sm),
        LIMIT_PRINTF_FIFO_SIZE | LIMIT_MALLOC_HEAP_SIZE => value,
        _ => return None,
    };
    Some(round_up(raw, LIMIT_GRANULARITY))
}

/// What setting `limit` to `value` costs beyond the value the context started with (`base`).
pub fn limit_extra(limit: u32, base: u64, value: u64, residency: Residency) -> Option<u64> {
    Some(limit_bytes(limit, value, residency)?.saturating_sub(limit_bytes(limit, base, residency)?))
}

/// Reads `len` bytes at an address of this process; `None` where they cannot all be read.
pub trait Reader {
    fn read(&self, addr: usize, len: usize) -> Option<Vec<u8>>;
}

/// Reads this process's memory with `process_vm_readv`, which reports a bad address as an
/// error (`EFAULT`) instead of faulting.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnMemory;

impl Reader for OwnMemory {
    fn read(&self, addr: usize, len: usize) -> Option<Vec<u8>> {
        read_own_memory(addr, len)
    }
}

/// `len` bytes at `addr` of this process, or `None` if any of them is not readable.
pub fn read_own_memory(addr: usize, len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    addr.checked_add(len)?;
    let mut buf = vec![0u8; len];
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
    // SAFETY: `local` is our own buffer of `len` bytes; the kernel checks `remote` and answers
    // EFAULT for an address this process cannot read, writing nothing past `local`.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    (usize::try_from(n).ok() == Some(len)).then_some(buf)
}

const WRAPPER_MAGIC: u32 = 0x4662_43B1;
const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ENTRY_PTX: u16 = 1;
const ENTRY_ELF: u16 = 2;
/// Fat binary entry flags: LZ4- (block format) or zstd-compressed payload.
const COMPRESSED_LZ4: u64 = 0x2000;
const COMPRESSED_ZSTD: u64 = 0x8000;
/// The most bytes one compressed entry is decompressed to. A real cubin is at most tens of
/// MiB; the buffer is this process's own memory, so a hostile image costs only itself.
pub const MAX_DECOMPRESSED: usize = 1 << 30;
/// The longest PTX text read, and the most section headers.
const MAX_PTX: usize = 256 << 20;
const SECTION_ALIGN: u64 = 256;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Bytes the driver reserves for the module image at `image` (as `cuModuleLoadData` and
/// `cuLibraryLoadData` take it: a fat binary's wrapper, a fat binary, an ELF cubin or PTX
/// text), rounded up to [`MODULE_GRANULARITY`]. 0 for an image it cannot read.
pub fn module_bytes(image: usize, reader: &dyn Reader) -> u64 {
    module_estimate(image, reader).bytes
}

/// As [`module_bytes`], for an image held in memory (`cuModuleLoad`'s file, read by the caller).
pub fn module_bytes_of(image: &[u8]) -> u64 {
    module_estimate_of(image).bytes
}

/// What [`module_estimate`] found: the bytes, and how many compressed entries it could not
/// decode (counted as nothing; the caller logs them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub bytes: u64,
    pub undecoded: u32,
}

/// As [`module_bytes`], with the count of compressed entries that did not decode.
pub fn module_estimate(image: usize, reader: &dyn Reader) -> Estimate {
    estimate(image, reader, true)
}

/// As [`module_estimate`], for a library (`cuLibraryLoadData`, and the fat binaries CUDA 12's
/// runtime registers): compressed entries are not decompressed and count nothing. A driver
/// loads a library lazily, into a context at its first use, and a framework registers hundreds
/// (PyTorch 2.15's `libtorch_cuda.so`: 476 fat binaries, whose entries decompress to 853 MiB of
/// sections and take ~17 s to decompress here); charging them all at load would charge what a
/// real driver never reserves.
pub fn library_estimate(image: usize, reader: &dyn Reader) -> Estimate {
    estimate(image, reader, false)
}

fn estimate(image: usize, reader: &dyn Reader, decompress: bool) -> Estimate {
    let mut undecoded = 0;
    let raw = module_raw(image, reader, decompress, &mut undecoded).unwrap_or(0);
    Estimate { bytes: round_up(raw, MODULE_GRANULARITY), undecoded }
}

/// What a library's compressed entries wait for: see [`deferred_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferral {
    /// No compressed entries (or no fat binary read): all of it was charged at load.
    Nothing,
    /// Where its fat binary is and what it was: what the compressed entries reserve is charged
    /// at the library's first use in a context ([`reread`], [`deferred_bytes`]).
    Kept(Fingerprint),
    /// Compressed entries in a fat binary larger than [`MAX_DEFERRED_IMAGE`]: charged at load,
    /// decompressed ([`module_estimate`]), rather than kept.
    TooLarge,
}

/// A library's fat binary as it was at the load: its address, length and XXH3-64 hash. Not a
/// copy (PyTorch's `libtorch_cuda.so` carries ~337 MB of fat binary, per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub at: usize,
    pub len: usize,
    pub hash: u64,
}

/// Why a library's fat binary is not what it was at the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Freed or unmapped: not readable any more.
    Unreadable,
    /// Rewritten: another hash.
    Changed,
}

/// How much [`deferred_image`] hashes per read.
const HASH_CHUNK: usize = 16 << 20;

/// The XXH3-64 hash of `len` bytes at `at`, read a chunk at a time; `None` if some are
/// unreadable.
fn hash_at(at: usize, len: usize, reader: &dyn Reader) -> Option<u64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut done = 0;
    while done < len {
        let n = HASH_CHUNK.min(len - done);
        h.update(&reader.read(at.checked_add(done)?, n)?);
        done += n;
    }
    Some(h.digest())
}

/// A library's fat binary, fingerprinted, when it has compressed entries: what they reserve is
/// charged when the library is first used in a context ([`reread`], [`deferred_bytes`]), as a
/// driver loads it lazily. The driver keeps its own copy; the shim keeps only the fingerprint,
/// and a first use whose image was rewritten, freed or unmapped since the load is refused
/// ([`reread`]): a program never changes an image it registered.
pub fn deferred_image(image: usize, reader: &dyn Reader) -> Deferral {
    deferral(image, reader).unwrap_or(Deferral::Nothing)
}

fn deferral(image: usize, reader: &dyn Reader) -> Option<Deferral> {
    let head = reader.read(image, 16)?;
    let fat = match u32_at(&head, 0)? {
        WRAPPER_MAGIC if u32_at(&head, 4)? == 1 => usize::try_from(u64_at(&head, 8)?).ok().filter(|&d| d != 0)?,
        FATBIN_MAGIC => image,
        _ => return None,
    };
    let mut compressed = false;
    // Entries past the readable bytes end the walk, not the finding.
    let _ = for_each_entry(fat, reader, false, |_, e| compressed |= matches!(e, Entry::Compressed));
    if !compressed {
        return None;
    }
    let h = reader.read(fat, 16)?;
    let len = usize::from(u16_at(&h, 6)?).checked_add(usize::try_from(u64_at(&h, 8)?).ok()?)?;
    if len > MAX_DEFERRED_IMAGE {
        return Some(Deferral::TooLarge);
    }
    hash_at(fat, len, reader).map(|hash| Deferral::Kept(Fingerprint { at: fat, len, hash }))
}

/// A library's fat binary read again at its first use, if it is still what `print` says.
pub fn reread(print: &Fingerprint, reader: &dyn Reader) -> Result<Vec<u8>, Stale> {
    let bytes = reader.read(print.at, print.len).ok_or(Stale::Unreadable)?;
    if bytes.len() != print.len || xxhash_rust::xxh3::xxh3_64(&bytes) != print.hash {
        return Err(Stale::Changed);
    }
    Ok(bytes)
}

/// As [`reread`], for a fingerprint taken by [`deferred_image_of`] of an image then at `base`,
/// now `image` (a library file read again).
pub fn reread_in(print: &Fingerprint, base: usize, image: &[u8]) -> Result<Vec<u8>, Stale> {
    let at = print.at.checked_sub(base).and_then(|o| (image.as_ptr() as usize).checked_add(o)).ok_or(Stale::Changed)?;
    reread(&Fingerprint { at, ..*print }, &Slice(image))
}

/// As [`deferred_image`], for an image held in memory (a library file's bytes).
pub fn deferred_image_of(image: &[u8]) -> Deferral {
    deferred_image(image.as_ptr() as usize, &Slice(image))
}

/// The largest fat binary [`deferred_image`] defers for a library.
pub const MAX_DEFERRED_IMAGE: usize = 1 << 30;

/// What a library's fat binary (from [`deferred_image`]) reserves beyond what
/// [`library_estimate`] charged at its load: its compressed entries, decompressed.
pub fn deferred_bytes(fat: &[u8]) -> Estimate {
    let full = module_estimate_of(fat);
    Estimate { bytes: full.bytes.saturating_sub(library_estimate_of(fat).bytes), undecoded: full.undecoded }
}

/// As [`module_estimate`], for an image held in memory.
pub fn module_estimate_of(image: &[u8]) -> Estimate {
    module_estimate(image.as_ptr() as usize, &Slice(image))
}

/// As [`library_estimate`], for an image held in memory.
pub fn library_estimate_of(image: &[u8]) -> Estimate {
    library_estimate(image.as_ptr() as usize, &Slice(image))
}

/// A [`Reader`] over bytes in memory, addressed where they are.
struct Slice<'a>(&'a [u8]);

impl Reader for Slice<'_> {
    fn read(&self, addr: usize, len: usize) -> Option<Vec<u8>> {
        let start = addr.checked_sub(self.0.as_ptr() as usize)?;
        self.0.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

fn module_raw(image: usize, r: &dyn Reader, decompress: bool, undecoded: &mut u32) -> Option<u64> {
    if let Some(head) = r.read(image, 4) {
        let magic = u32_at(&head, 0)?;
        if magic == WRAPPER_MAGIC {
            // {int magic, int version, const void *data, void *filename_or_fatbins}
            let w = r.read(image, 16)?;
            let data = usize::try_from(u64_at(&w, 8)?).ok()?;
            return if u32_at(&w, 4)? == 1 && data != 0 { fatbin(data, r, decompress, undecoded) } else { None };
        }
        if magic == FATBIN_MAGIC {
            return fatbin(image, r, decompress, undecoded);
        }
        if head[..] == ELF_MAGIC {
            return elf(image, None, r);
        }
    }
    let text = ptx_text(image, r)?;
    ptx_globals(&String::from_utf8_lossy(&text))
}

/// NUL-terminated text at `addr`, read page by page (the NUL may be just before an unmapped
/// page); at most [`MAX_PTX`] bytes.
fn ptx_text(addr: usize, r: &dyn Reader) -> Option<Vec<u8>> {
    const PAGE: usize = 4096;
    let mut text = Vec::new();
    let mut at = addr;
    while text.len() < MAX_PTX {
        let len = PAGE - at % PAGE;
        let chunk = r.read(at, len)?;
        if let Some(nul) = chunk.iter().position(|&b| b == 0) {
            text.extend_from_slice(&chunk[..nul]);
            return Some(text);
        }
        text.extend_from_slice(&chunk);
        at = at.checked_add(len)?;
    }
    None
}

/// The largest of a fat binary's entries.
fn fatbin(addr: usize, r: &dyn Reader, decompress: bool, undecoded: &mut u32) -> Option<u64> {
    let mut largest = 0u64;
    for_each_entry(addr, r, decompress, |kind, plain| match plain {
        Entry::Plain(body, len, reader) => largest = largest.max(entry(kind, body, len, reader).unwrap_or(0)),
        Entry::Undecoded => *undecoded += 1,
        Entry::Compressed => {}
    })?;
    Some(largest)
}

/// What one fat binary entry's image at `body` (`len` bytes) reserves.
fn entry(kind: u16, body: usize, len: usize, r: &dyn Reader) -> Option<u64> {
    match kind {
        ENTRY_ELF => elf(body, Some(len), r),
        ENTRY_PTX => {
            let text = r.read(body, len.min(MAX_PTX))?;
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            ptx_globals(&String::from_utf8_lossy(text))
        }
        _ => None,
    }
}

/// A compressed entry's payload, at most [`MAX_DECOMPRESSED`] bytes; `None` if it does not
/// decode within that. `hint`: the entry header's uncompressed size, tried first for LZ4
/// (whose block format does not carry its length), then the most LZ4 can expand to.
pub fn decompress(flags: u64, packed: &[u8], hint: usize) -> Option<Vec<u8>> {
    decompress_within(flags, packed, hint, MAX_DECOMPRESSED)
}

fn decompress_within(flags: u64, packed: &[u8], hint: usize, max: usize) -> Option<Vec<u8>> {
    if flags & COMPRESSED_ZSTD != 0 {
        use std::io::Read;
        let mut source = packed;
        let decoder = ruzstd::decoding::StreamingDecoder::new(&mut source).ok()?;
        let mut plain = Vec::new();
        decoder.take(max as u64 + 1).read_to_end(&mut plain).ok()?;
        return (plain.len() <= max).then_some(plain);
    }
    // An LZ4 sequence of n bytes expands to at most 255 × n + 255.
    let most = packed.len().saturating_mul(255).saturating_add(255).min(max);
    let hinted = hint.min(most);
    lz4_flex::block::decompress(packed, hinted)
        .ok()
        .or_else(|| (hinted < most).then(|| lz4_flex::block::decompress(packed, most).ok()).flatten())
}

/// Whether an ELF section of this name is reserved on the device.
fn allocated_section(name: &[u8]) -> bool {
    name.starts_with(b".text.")
        || name == b".nv.global"
        || name == b".nv.global.init"
        || name.starts_with(b".nv.constant")
}

/// The allocated sections of a 64-bit little-endian ELF file at `addr` (`limit`: its length,
/// where known; section headers must lie inside it).
fn elf(addr: usize, limit: Option<usize>, r: &dyn Reader) -> Option<u64> {
    let h = r.read(addr, 64)?;
    if h[..4] != ELF_MAGIC || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let shoff = usize::try_from(u64_at(&h, 0x28)?).ok()?;
    let (entsize, count, strndx) =
        (usize::from(u16_at(&h, 0x3A)?), usize::from(u16_at(&h, 0x3C)?), usize::from(u16_at(&h, 0x3E)?));
    if entsize < 64 || strndx >= count {
        return None;
    }
    let table_len = entsize.checked_mul(count)?;
    if limit.is_some_and(|l| shoff.checked_add(table_len).is_none_or(|end| end > l)) {
        return None;
    }
    let table = r.read(addr.checked_add(shoff)?, table_len)?;
    let section = |i: usize| -> Option<(u32, u64, u64)> {
        let s = table.get(i * entsize..i * entsize + 64)?;
        Some((u32_at(s, 0)?, u64_at(s, 24)?, u64_at(s, 32)?))
    };
    let (_, str_off, str_size) = section(strndx)?;
    let str_size = usize::try_from(str_size).ok()?.min(16 << 20);
    if limit.is_some_and(|l| usize::try_from(str_off).ok().and_then(|o| o.checked_add(str_size)).is_none_or(|e| e > l))
    {
        return None;
    }
    let names = r.read(addr.checked_add(usize::try_from(str_off).ok()?)?, str_size)?;
    let mut total = 0u64;
    for i in 0..count {
        let (name, _, size) = section(i)?;
        let name = names.get(name as usize..).unwrap_or_default();
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if allocated_section(name) {
            total = total.saturating_add(round_up(size, SECTION_ALIGN));
        }
    }
    Some(total)
}

/// Bytes of the `.global` and `.const` variables PTX text declares (`.extern` ones are
/// another module's); `None` if it is not PTX (no `.version`).
pub fn ptx_globals(text: &str) -> Option<u64> {
    Some(ptx_variables(text)?.iter().fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes)))
}

/// The `.global` and `.const` variables PTX text declares, with their bytes; `None` if it is
/// not PTX.
fn ptx_variables(text: &str) -> Option<Vec<(String, u64)>> {
    if !text.contains(".version") {
        return None;
    }
    let mut variables = Vec::new();
    for statement in text.split([';', '{', '}']) {
        let tokens: Vec<&str> = statement.split_whitespace().collect();
        let Some(space) = tokens.iter().position(|t| *t == ".global" || *t == ".const") else { continue };
        if tokens[..space].contains(&".extern") {
            continue;
        }
        let mut elem = 0u64;
        let mut vector = 1u64;
        let mut count = 1u64;
        let mut name = String::new();
        for t in &tokens[space + 1..] {
            match *t {
                ".v2" => vector = 2,
                ".v4" => vector = 4,
                ".b8" | ".u8" | ".s8" | ".pred" => elem = 1,
                ".b16" | ".u16" | ".s16" | ".f16" | ".bf16" => elem = 2,
                ".b32" | ".u32" | ".s32" | ".f32" | ".f16x2" => elem = 4,
                ".b64" | ".u64" | ".s64" | ".f64" => elem = 8,
                t if !t.starts_with('.') && elem > 0 => {
                    // name[a][b]… = initialiser: the dimensions before any '='.
                    let decl = t.split('=').next().unwrap_or_default();
                    name = decl.split('[').next().unwrap_or_default().to_owned();
                    for dim in decl.split('[').skip(1) {
                        let n = dim.trim_end_matches(']').parse::<u64>().unwrap_or(1);
                        count = count.saturating_mul(n);
                    }
                    break;
                }
                _ => {}
            }
        }
        variables.push((name, elem.saturating_mul(vector).saturating_mul(count)));
    }
    Some(variables)
}

/// The `__device__` and `__constant__` variables of the module image at `image` (as
/// [`module_bytes`] takes it), by name with their bytes: what a driver answers
/// `cuModuleGetGlobal` with. PTX declarations, and a cubin's `STT_OBJECT` symbols; in a fat
/// binary, those of every entry it can read (compressed ones decompressed), the first entry
/// naming a variable giving its size. Empty for an image it cannot read.
pub fn module_globals(image: usize, r: &dyn Reader, decompress: bool) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let mut add = |vars: Option<Vec<(String, u64)>>| {
        for (name, bytes) in vars.unwrap_or_default() {
            if !name.is_empty() && !found.iter().any(|(n, _)| *n == name) {
                found.push((name, bytes));
            }
        }
    };
    let Some(head) = r.read(image, 4) else { return found };
    let magic = u32_at(&head, 0).unwrap_or(0);
    let fat = match magic {
        WRAPPER_MAGIC => r
            .read(image, 16)
            .filter(|w| u32_at(w, 4) == Some(1))
            .and_then(|w| usize::try_from(u64_at(&w, 8)?).ok())
            .filter(|&d| d != 0),
        FATBIN_MAGIC => Some(image),
        _ if head[..] == ELF_MAGIC => {
            add(elf_symbols(image, None, r));
            return found;
        }
        _ => {
            add(ptx_text(image, r).and_then(|t| ptx_variables(&String::from_utf8_lossy(&t))));
            return found;
        }
    };
    if let Some(fat) = fat {
        for_each_entry(fat, r, decompress, |kind, plain| {
            let Entry::Plain(body, len, reader) = plain else { return };
            add(match kind {
                ENTRY_ELF => elf_symbols(body, Some(len), reader),
                ENTRY_PTX => reader.read(body, len.min(MAX_PTX)).and_then(|t| {
                    let t = t.split(|&b| b == 0).next().unwrap_or_default();
                    ptx_variables(&String::from_utf8_lossy(t))
                }),
                _ => None,
            })
        });
    }
    found
}

/// A fat binary entry as [`for_each_entry`] gives it.
enum Entry<'a> {
    /// Its image (decompressed if it was compressed): address, length, where to read it.
    Plain(usize, usize, &'a dyn Reader),
    /// Compressed, and not to be decompressed.
    Compressed,
    /// Compressed, and it did not decode.
    Undecoded,
}

/// Calls `f(kind, entry)` for each entry of the fat binary at `addr`, compressed ones
/// decompressed if `unpack`; `None` if the fat binary's headers are not all readable and
/// inside it.
fn for_each_entry(addr: usize, r: &dyn Reader, unpack: bool, mut f: impl FnMut(u16, Entry<'_>)) -> Option<()> {
    let h = r.read(addr, 16)?;
    if u32_at(&h, 0)? != FATBIN_MAGIC {
        return None;
    }
    let (header, size) = (usize::from(u16_at(&h, 6)?), usize::try_from(u64_at(&h, 8)?).ok()?);
    let start = addr.checked_add(header)?;
    let end = start.checked_add(size)?;
    let mut at = start;
    while at.checked_add(64)? <= end {
        let e = r.read(at, 64)?;
        let (kind, header, payload) = (u16_at(&e, 0)?, u32_at(&e, 4)? as usize, usize::try_from(u64_at(&e, 8)?).ok()?);
        let flags = u64_at(&e, 40)?;
        if header < 64 {
            return None;
        }
        let body = at.checked_add(header)?;
        let next = body.checked_add(payload).filter(|&n| n <= end)?;
        if flags & (COMPRESSED_LZ4 | COMPRESSED_ZSTD) == 0 {
            f(kind, Entry::Plain(body, payload, r));
        } else if !unpack {
            f(kind, Entry::Compressed);
        } else {
            // The compressed length (byte 16) within the padded payload; the stated
            // uncompressed length (byte 56) is a hint only.
            let packed = match u32_at(&e, 16)? as usize {
                0 => payload,
                n => n.min(payload),
            };
            let hint = usize::try_from(u64_at(&e, 56)?).unwrap_or(usize::MAX);
            match r.read(body, packed).and_then(|b| decompress(flags, &b, hint)) {
                Some(plain) => f(kind, Entry::Plain(plain.as_ptr() as usize, plain.len(), &Slice(&plain))),
                None => f(kind, Entry::Undecoded),
            }
        }
        at = next;
    }
    Some(())
}

/// A 64-bit little-endian ELF file's `STT_OBJECT` symbols with their sizes.
fn elf_symbols(addr: usize, limit: Option<usize>, r: &dyn Reader) -> Option<Vec<(String, u64)>> {
    const SHT_SYMTAB: u32 = 2;
    const STT_OBJECT: u8 = 1;
    const MAX_TABLE: usize = 64 << 20;
    let h = r.read(addr, 64)?;
    if h[..4] != ELF_MAGIC || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let shoff = usize::try_from(u64_at(&h, 0x28)?).ok()?;
    let (entsize, count) = (usize::from(u16_at(&h, 0x3A)?), usize::from(u16_at(&h, 0x3C)?));
    if entsize < 64 {
        return None;
    }
    let inside = |off: usize, len: usize| limit.is_none_or(|l| off.checked_add(len).is_some_and(|e| e <= l));
    let table_len = entsize.checked_mul(count)?;
    if !inside(shoff, table_len) {
        return None;
    }
    let table = r.read(addr.checked_add(shoff)?, table_len)?;
    // (type, offset, size, link)
    let section = |i: usize| -> Option<(u32, usize, usize, usize)> {
        let s = table.get(i * entsize..i * entsize + 64)?;
        let (off, size) = (usize::try_from(u64_at(s, 24)?).ok()?, usize::try_from(u64_at(s, 32)?).ok()?);
        Some((u32_at(s, 4)?, off, size.min(MAX_TABLE), u32_at(s, 40)? as usize))
    };
    let read = |off: usize, len: usize| if inside(off, len) { r.read(addr.checked_add(off)?, len) } else { None };
    let mut found = Vec::new();
    for i in 0..count {
        let (kind, off, size, link) = section(i)?;
        if kind != SHT_SYMTAB {
            continue;
        }
        let (_, str_off, str_size, _) = section(link)?;
        let (symbols, names) = (read(off, size)?, read(str_off, str_size)?);
        for sym in symbols.chunks_exact(24) {
            if sym[4] & 0xF != STT_OBJECT {
                continue;
            }
            let name = names.get(u32_at(sym, 0)? as usize..).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            found.push((String::from_utf8_lossy(name).into_owned(), u64_at(sym, 16)?));
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: Residency = Residency { sm_count: 132, threads_per_sm: 2048 };

    #[test]
    fn limits_cost_what_they_reserve_beyond_the_default() {
        assert_eq!(limit_bytes(LIMIT_MALLOC_HEAP_SIZE, 8 << 20, H100), Some(8 << 20));
        assert_eq!(limit_bytes(LIMIT_PRINTF_FIFO_SIZE, 1, H100), Some(2 << 20));
        // 1 KiB × 132 SMs × 2048 threads = 264 MiB.
        assert_eq!(limit_bytes(LIMIT_STACK_SIZE, 1024, H100), Some(264 << 20));
        assert_eq!(limit_bytes(4, 100, H100), None, "pending launches reserve nothing here");
        assert_eq!(limit_extra(LIMIT_MALLOC_HEAP_SIZE, 8 << 20, 4 << 30, H100), Some((4 << 30) - (8 << 20)));
        assert_eq!(limit_extra(LIMIT_MALLOC_HEAP_SIZE, 8 << 20, 1 << 20, H100), Some(0), "lowered: nothing");
        assert_eq!(limit_extra(LIMIT_STACK_SIZE, 1024, 64 << 10, H100), Some((64 << 10) * 132 * 2048 - (264 << 20)));
        assert_eq!(limit_bytes(LIMIT_STACK_SIZE, u64::MAX, H100), Some(u64::MAX), "saturates");
    }

    #[test]
    fn ptx_counts_its_globals() {
        let ptx = ".version 8.0\n.target sm_90\n.global .align 8 .b8 big[1048576];\n.extern .global .u32 other;\n\
                   .visible .global .align 4 .u32 one = 7;\n.const .align 16 .v4 .f32 table[2][8];\n.entry k() { ret; }\n";
        assert_eq!(ptx_globals(ptx), Some(1048576 + 4 + 16 * 16));
        assert_eq!(ptx_globals("no ptx"), None);
        let text = std::ffi::CString::new(ptx).unwrap();
        assert_eq!(module_bytes(text.as_ptr() as usize, &OwnMemory), round_up(1048576 + 4 + 256, MODULE_GRANULARITY));
    }

    /// A cubin with the given sections (name, type, size); NOBITS sections take no file bytes.
    fn cubin(sections: &[(&str, u32, u64)]) -> Vec<u8> {
        let mut names = vec![0u8];
        let mut offsets = Vec::new();
        for (name, _, _) in sections.iter().chain([&(".shstrtab", 3, 0)]) {
            offsets.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(&ELF_MAGIC);
        f[4] = 2;
        f[5] = 1;
        let str_off = f.len() as u64;
        f.extend_from_slice(&names);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len() as u64;
        let count = sections.len() + 2;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        f[0x3C..0x3E].copy_from_slice(&(count as u16).to_le_bytes());
        f[0x3E..0x40].copy_from_slice(&((count - 1) as u16).to_le_bytes());
        f.extend_from_slice(&[0u8; 64]);
        for (i, (_, kind, size)) in sections.iter().enumerate() {
            let mut s = [0u8; 64];
            s[0..4].copy_from_slice(&offsets[i].to_le_bytes());
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&s);
        }
        let mut s = [0u8; 64];
        s[0..4].copy_from_slice(&offsets[sections.len()].to_le_bytes());
        s[4..8].copy_from_slice(&3u32.to_le_bytes());
        s[24..32].copy_from_slice(&str_off.to_le_bytes());
        s[32..40].copy_from_slice(&(names.len() as u64).to_le_bytes());
        f.extend_from_slice(&s);
        f
    }

    #[test]
    fn cubins_count_their_allocated_sections() {
        let c = cubin(&[
            (".text._Z1kv", 1, 1000),
            (".nv.global", 8, 3 << 30),
            (".nv.constant0._Z1kv", 1, 100),
            (".debug_info", 1, 1 << 20),
        ]);
        assert_eq!(module_bytes_of(&c), round_up(1024 + (3 << 30) + 256, MODULE_GRANULARITY));
        assert_eq!(module_bytes_of(&cubin(&[(".debug_info", 1, 1 << 20)])), 0, "nothing allocated");
        // In a fat binary, after an entry that is smaller.
        let small = cubin(&[(".text._Z1kv", 1, 1000)]);
        let fat = fatbin(&[fat_entry(2, 0x11, &small, 0), fat_entry(2, 0x11, &c, 0)]);
        assert_eq!(module_bytes_of(&fat), module_bytes_of(&c));
    }

    /// A fat binary entry: kind, flags, payload as stored, its stated uncompressed length.
    fn fat_entry(kind: u16, flags: u64, payload: &[u8], stated: u64) -> Vec<u8> {
        let padded = payload.len().next_multiple_of(8);
        let mut h = vec![0u8; 64];
        h[0..2].copy_from_slice(&kind.to_le_bytes());
        h[4..8].copy_from_slice(&64u32.to_le_bytes());
        h[8..16].copy_from_slice(&(padded as u64).to_le_bytes());
        h[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[40..48].copy_from_slice(&flags.to_le_bytes());
        h[56..64].copy_from_slice(&stated.to_le_bytes());
        h.extend_from_slice(payload);
        h.resize(64 + padded, 0);
        h
    }

    fn fatbin(entries: &[Vec<u8>]) -> Vec<u8> {
        let body = entries.concat();
        let mut fat = Vec::new();
        fat.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        fat.extend_from_slice(&1u16.to_le_bytes());
        fat.extend_from_slice(&16u16.to_le_bytes());
        fat.extend_from_slice(&(body.len() as u64).to_le_bytes());
        fat.extend_from_slice(&body);
        fat
    }

    fn zstd(b: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn compressed_entries_count_what_they_decompress_to() {
        // A 3 GiB `__device__` array.
        let c = cubin(&[(".text._Z1kv", 1, 1000), (".nv.global", 8, 3 << 30)]);
        let want = module_bytes_of(&c);
        assert_eq!(want, round_up(1024 + (3 << 30), MODULE_GRANULARITY));
        let lz4 = lz4_flex::block::compress(&c);
        for (flags, packed) in [(0x2011, lz4.clone()), (0x8011, zstd(&c))] {
            for stated in [c.len() as u64, 0, 16, u64::MAX] {
                let fat = fatbin(&[fat_entry(2, flags, &packed, stated)]);
                let e = module_estimate_of(&fat);
                assert_eq!(e, Estimate { bytes: want, undecoded: 0 }, "flags {flags:#x}, stated length {stated}");
                assert_eq!(library_estimate_of(&fat), Estimate::default(), "a library's are not decompressed");
            }
        }
        // Compressed PTX counts its globals too.
        let ptx = b".version 8.0\n.target sm_90\n.global .align 8 .b8 big[268435456];\n\0";
        let fat = fatbin(&[fat_entry(1, 0x8011, &zstd(ptx), ptx.len() as u64)]);
        assert_eq!(module_bytes_of(&fat), 256 << 20);
        // Garbage in either codec: nothing counted, reported once per entry, no panic.
        let junk = [0xFFu8; 256];
        let fat = fatbin(&[fat_entry(2, 0x2011, &junk, 1 << 20), fat_entry(2, 0x8011, &junk, 1 << 20)]);
        assert_eq!(module_estimate_of(&fat), Estimate { bytes: 0, undecoded: 2 });
        let truncated = &zstd(&c)[..20];
        assert_eq!(module_estimate_of(&fatbin(&[fat_entry(2, 0x8011, truncated, 0)])).undecoded, 1);
    }

    #[test]
    fn a_librarys_compressed_entries_wait_for_its_first_use() {
        let c = cubin(&[(".text._Z1kv", 1, 1000), (".nv.global", 8, 1 << 30)]);
        let plain = cubin(&[(".text._Z1kv", 1, 1000)]);
        let fat = fatbin(&[fat_entry(2, 0x8011, &zstd(&c), 0), fat_entry(2, 0x11, &plain, plain.len() as u64)]);
        let Deferral::Kept(print) = deferred_image_of(&fat) else { panic!("compressed entries: deferred") };
        assert_eq!((print.at, print.len), (fat.as_ptr() as usize, fat.len()));
        let kept = reread(&print, &OwnMemory).expect("unchanged");
        assert_eq!(kept, fat);
        assert_eq!(library_estimate_of(&fat).bytes, MODULE_GRANULARITY, "at load: the plain entry");
        let later = deferred_bytes(&kept);
        assert_eq!(later, Estimate { bytes: module_bytes_of(&c) - MODULE_GRANULARITY, undecoded: 0 });
        assert_eq!(library_estimate_of(&fat).bytes + later.bytes, module_bytes_of(&fat), "all of it, in two parts");
        // Rewritten after the load: refused, not counted.
        let mut changed = fat.clone();
        let Deferral::Kept(p2) = deferred_image_of(&changed) else { panic!("deferred") };
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(reread(&p2, &OwnMemory), Err(Stale::Changed));
        assert_eq!(reread(&Fingerprint { at: 16, ..p2 }, &OwnMemory), Err(Stale::Unreadable));
        // A library file read again elsewhere.
        let again = fat.clone();
        assert_eq!(reread_in(&print, fat.as_ptr() as usize, &again).as_deref(), Ok(&fat[..]));
        assert_eq!(reread_in(&print, fat.as_ptr() as usize, &changed), Err(Stale::Changed));
        // Through a `__fatBinC_Wrapper_t`, as the runtime registers it: the fat binary itself.
        let wrapper: [u64; 3] = [0x0000_0001_4662_43B1, fat.as_ptr() as u64, 0];
        assert_eq!(deferred_image(wrapper.as_ptr() as usize, &OwnMemory), Deferral::Kept(print));
        assert_eq!(
            deferred_image_of(&fatbin(&[fat_entry(2, 0x11, &plain, 0)])),
            Deferral::Nothing,
            "nothing compressed"
        );
        assert_eq!(deferred_image_of(&plain), Deferral::Nothing, "a cubin");
        assert_eq!(deferred_image(16, &OwnMemory), Deferral::Nothing, "an unmapped address");
        // A fat binary that states more than the ceiling: not deferred, charged at load.
        let mut huge = fat.clone();
        huge[8..16].copy_from_slice(&((MAX_DEFERRED_IMAGE as u64) + 1).to_le_bytes());
        assert_eq!(deferred_image_of(&huge), Deferral::TooLarge);
    }

    #[test]
    fn globals_are_found_by_name() {
        let ptx = ".version 8.0\n.target sm_90\n.global .align 8 .b8 big[1048576];\n.extern .global .u32 other;\n\
                   .visible .const .align 4 .u32 one = 7;\n.entry k() { ret; }\n";
        let want = vec![("big".to_owned(), 1 << 20), ("one".to_owned(), 4)];
        let text = std::ffi::CString::new(ptx).unwrap();
        assert_eq!(module_globals(text.as_ptr() as usize, &OwnMemory, true), want);
        // In a fat binary, compressed, after an entry that names one of them again.
        let again = b".version 8.0\n.global .b8 big[16];\n\0";
        let fat = fatbin(&[
            fat_entry(1, 0x8011, &zstd(text.as_bytes_with_nul()), 0),
            fat_entry(1, 0x11, again, again.len() as u64),
        ]);
        assert_eq!(module_globals(fat.as_ptr() as usize, &Slice(&fat), true), want);
        assert_eq!(module_globals(16, &OwnMemory, true), vec![], "an unmapped address");
    }

    #[test]
    fn decompression_is_bounded() {
        // A zstd frame of more than the ceiling decodes no further than it.
        let packed = zstd(&vec![0u8; 2 << 20]);
        assert!(packed.len() < 4096);
        assert_eq!(decompress_within(COMPRESSED_ZSTD, &packed, 0, 1 << 20), None);
        assert_eq!(decompress_within(COMPRESSED_ZSTD, &packed, 0, 2 << 20).map(|p| p.len()), Some(2 << 20));
        assert_eq!(
            decompress_within(COMPRESSED_LZ4, &lz4_flex::block::compress(&[0u8; 2 << 20]), 2 << 20, 1 << 20),
            None
        );
        // LZ4: at most 255 bytes per byte of input, whatever the header states.
        let lz4 = lz4_flex::block::compress(&vec![0u8; 1 << 20]);
        assert_eq!(decompress(COMPRESSED_LZ4, &lz4, 1).map(|p| p.len()), Some(1 << 20));
        assert_eq!(decompress(COMPRESSED_LZ4, &lz4, usize::MAX).map(|p| p.len()), Some(1 << 20));
    }

    #[test]
    fn bad_images_are_read_without_faulting() {
        // An ELF header whose section table lies far away.
        let mut c = cubin(&[(".nv.global", 8, 1 << 20)]);
        c[0x28..0x30].copy_from_slice(&(1u64 << 46).to_le_bytes());
        assert_eq!(module_bytes(c.as_ptr() as usize, &OwnMemory), 0);
        assert_eq!(module_bytes(16, &OwnMemory), 0, "an unmapped address");
        assert_eq!(read_own_memory(0, 8), None);
    }
}
