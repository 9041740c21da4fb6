//! `cuGetProcAddress`: which exported symbol a name, a CUDA version and the per-thread flag
//! select.
//!
//! [`PROC_TABLE`] has one row per `PFN_<name>_v<version>[_ptds|_ptsz]` typedef of
//! `cudaTypedefs.h` 12.9 and 13.5 (their union: 13.x dropped typedefs that 12.9's runtime
//! still asks for), each with the exported symbol that implements it, found by matching the
//! typedef's signature against `cuda.h`'s declarations (`PFN_cuMemAlloc_v3020` →
//! `cuMemAlloc_v2`, `PFN_cuMemcpyHtoD_v7000_ptds` → `cuMemcpyHtoD_v2_ptds`,
//! `PFN_cuCtxSynchronize_v13000` → `cuCtxSynchronize_v2`), plus the cross-name aliases of
//! 12.9's `#define PFN_cuGraphInstantiate PFN_cuGraphInstantiateWithFlags_v11040` kind, which
//! take effect at that header's major version (12000).
//!
//! A request selects the newest plain row at or below its version; with
//! `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM` (and not `CU_GET_PROC_ADDRESS_LEGACY_STREAM`)
//! the newest per-thread row at or below it replaces that row when it is not older (so a
//! per-thread variant never stands in for a newer signature).

use std::ffi::c_int;

pub use crate::table::{HEADERS, NEWEST_VERSION, PROC_TABLE};

/// `CU_GET_PROC_ADDRESS_LEGACY_STREAM`, as the `u64` flags `cuGetProcAddress` takes.
pub const LEGACY_STREAM: u64 = crate::cuda::CU_GET_PROC_ADDRESS_LEGACY_STREAM as u64;
/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`, as the `u64` flags `cuGetProcAddress` takes.
pub const PER_THREAD_DEFAULT_STREAM: u64 = crate::cuda::CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM as u64;

/// A string of the table: an offset and a length into one blob (no pointer to relocate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str(pub(crate) u32, pub(crate) u16);

impl Str {
    fn get(self) -> &'static str {
        &crate::table::STRINGS[self.0 as usize..self.0 as usize + self.1 as usize]
    }
}

/// One typedef of `cudaTypedefs.h` and the symbol that implements it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProcRow {
    pub(crate) name: Str,
    /// The CUDA version (`1000 * major + 10 * minor`) that introduced this variant.
    pub version: c_int,
    /// A `_ptds`/`_ptsz` variant.
    pub per_thread: bool,
    pub(crate) symbol: Str,
    pub(crate) typedef: Str,
    /// From a `#define PFN_<name> PFN_<other>_v…` alias rather than a typedef of `<name>`.
    pub alias: bool,
    /// Which releases of [`HEADERS`] have it, as a bit mask in that order.
    pub headers: u8,
}

impl ProcRow {
    /// The name callers ask for, e.g. `cuMemAlloc`.
    pub fn name(&self) -> &'static str {
        self.name.get()
    }

    /// The exported symbol, e.g. `cuMemAlloc_v2`.
    pub fn symbol(&self) -> &'static str {
        self.symbol.get()
    }

    /// The typedef (or, for an alias row, the `#define`) the row comes from.
    pub fn typedef(&self) -> &'static str {
        self.typedef.get()
    }
}

impl std::fmt::Debug for ProcRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcRow")
            .field("name", &self.name())
            .field("version", &self.version)
            .field("per_thread", &self.per_thread)
            .field("symbol", &self.symbol())
            .field("typedef", &self.typedef())
            .field("alias", &self.alias)
            .field("headers", &self.headers)
            .finish()
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(&'static ProcRow),
    /// No such name: `CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND`.
    SymbolNotFound,
    /// Only newer variants: `CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT`.
    VersionNotSufficient,
}

/// The rows of `name`, oldest plain variant first, then the per-thread ones.
pub fn rows(name: &str) -> &'static [ProcRow] {
    let start = PROC_TABLE.partition_point(|r| r.name() < name);
    let end = PROC_TABLE.partition_point(|r| r.name() <= name);
    &PROC_TABLE[start..end]
}

/// The row `cuGetProcAddress(name, version, flags)` selects.
pub fn lookup(name: &str, version: c_int, flags: u64) -> Lookup {
    let rows = rows(name);
    if rows.is_empty() {
        return Lookup::SymbolNotFound;
    }
    let newest =
        |pt: bool| rows.iter().filter(|r| r.per_thread == pt && r.version <= version).max_by_key(|r| r.version);
    let plain = newest(false);
    let per_thread = flags & PER_THREAD_DEFAULT_STREAM != 0 && flags & LEGACY_STREAM == 0;
    let chosen = match (plain, per_thread.then(|| newest(true)).flatten()) {
        (Some(p), Some(t)) if t.version >= p.version => Some(t),
        (None, Some(t)) => Some(t),
        (p, _) => p,
    };
    chosen.map_or(Lookup::VersionNotSufficient, Lookup::Found)
}

/// The rows whose symbol is `symbol` (one typedef each; an alias adds another name).
pub fn rows_of_symbol(symbol: &str) -> impl Iterator<Item = &'static ProcRow> + '_ {
    PROC_TABLE.iter().filter(move |r| r.symbol() == symbol)
}

/// Whether `symbol` is an exported driver symbol some typedef describes.
pub fn is_symbol(symbol: &str) -> bool {
    rows_of_symbol(symbol).next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTDS: u64 = PER_THREAD_DEFAULT_STREAM;
    const LEGACY: u64 = LEGACY_STREAM;

    fn found(name: &str, version: c_int, flags: u64) -> Option<&'static str> {
        match lookup(name, version, flags) {
            Lookup::Found(r) => Some(r.symbol()),
            _ => None,
        }
    }

    fn row(typedef: &str) -> &'static ProcRow {
        PROC_TABLE.iter().find(|r| r.typedef() == typedef).unwrap_or_else(|| panic!("no row for {typedef}"))
    }

    #[test]
    fn known_typedefs_map_to_their_symbols() {
        for (typedef, symbol) in [
            ("PFN_cuMemAlloc_v3020", "cuMemAlloc_v2"),
            ("PFN_cuMemAlloc_v2000", "cuMemAlloc"),
            ("PFN_cuMemcpyHtoD_v7000_ptds", "cuMemcpyHtoD_v2_ptds"),
            ("PFN_cuMemcpyHtoD_v3020", "cuMemcpyHtoD_v2"),
            ("PFN_cuMemcpyHtoDAsync_v7000_ptsz", "cuMemcpyHtoDAsync_v2_ptsz"),
            ("PFN_cuCtxSynchronize_v2000", "cuCtxSynchronize"),
            ("PFN_cuCtxSynchronize_v13000", "cuCtxSynchronize_v2"),
            ("PFN_cuCtxGetDevice_v13000", "cuCtxGetDevice_v2"),
            ("PFN_cuGraphInstantiate_v10000", "cuGraphInstantiate"),
            ("PFN_cuGraphInstantiate_v11000", "cuGraphInstantiate_v2"),
            ("PFN_cuGraphInstantiate", "cuGraphInstantiateWithFlags"),
            ("PFN_cuCtxCreate_v2000", "cuCtxCreate"),
            ("PFN_cuCtxCreate_v3020", "cuCtxCreate_v2"),
            ("PFN_cuCtxCreate_v11040", "cuCtxCreate_v3"),
            ("PFN_cuCtxCreate_v12050", "cuCtxCreate_v4"),
            ("PFN_cuCtxDestroy_v2000", "cuCtxDestroy"),
            ("PFN_cuCtxDestroy_v4000", "cuCtxDestroy_v2"),
            ("PFN_cuDevicePrimaryCtxRelease_v7000", "cuDevicePrimaryCtxRelease"),
            ("PFN_cuDevicePrimaryCtxRelease_v11000", "cuDevicePrimaryCtxRelease_v2"),
            ("PFN_cuStreamBeginCapture_v10000_ptsz", "cuStreamBeginCapture_ptsz"),
            ("PFN_cuStreamBeginCapture_v10010_ptsz", "cuStreamBeginCapture_v2_ptsz"),
            ("PFN_cuEventElapsedTime_v12080", "cuEventElapsedTime_v2"),
            ("PFN_cuGetProcAddress_v11030", "cuGetProcAddress"),
            ("PFN_cuGetProcAddress_v12000", "cuGetProcAddress_v2"),
            ("PFN_cuLaunchKernel_v7000_ptsz", "cuLaunchKernel_ptsz"),
        ] {
            assert_eq!(row(typedef).symbol(), symbol, "{typedef}");
        }
        let alias = row("PFN_cuGraphInstantiate");
        assert!(alias.alias && alias.version == 12000 && alias.name() == "cuGraphInstantiate");
    }

    #[test]
    fn both_releases_are_in_the_table() {
        assert_eq!(HEADERS, &[12090, 13050]);
        assert_eq!(NEWEST_VERSION, 13050);
        // A 13.x-only typedef, and rows both have.
        assert_eq!(row("PFN_cuCtxSynchronize_v13000").headers, 0b10);
        assert_eq!(row("PFN_cuMemAlloc_v3020").headers, 0b11);
        // The alias comes from 12.9 alone (13.x dropped the `#define PFN_…` lines).
        assert_eq!(row("PFN_cuGraphInstantiate").headers, 0b01);
    }

    #[test]
    fn versions_select_the_newest_variant_at_or_below() {
        for (name, version, flags, want) in [
            ("cuMemAlloc", 3020, 0, Some("cuMemAlloc_v2")),
            ("cuMemAlloc", 13000, 0, Some("cuMemAlloc_v2")),
            ("cuMemAlloc", 2000, 0, Some("cuMemAlloc")),
            ("cuMemAlloc", 1000, 0, None),
            ("cuCtxCreate", 11030, 0, Some("cuCtxCreate_v2")),
            ("cuCtxCreate", 11040, 0, Some("cuCtxCreate_v3")),
            ("cuCtxCreate", 12050, 0, Some("cuCtxCreate_v4")),
            ("cuCtxSynchronize", 12090, 0, Some("cuCtxSynchronize")),
            ("cuCtxSynchronize", 13000, 0, Some("cuCtxSynchronize_v2")),
            ("cuGraphInstantiate", 11080, 0, Some("cuGraphInstantiate_v2")),
            ("cuGraphInstantiate", 12000, 0, Some("cuGraphInstantiateWithFlags")),
            ("cuGetProcAddress", 12000, 0, Some("cuGetProcAddress_v2")),
            ("cuNoSuchFunction", 13000, 0, None),
            ("cuMemAlloc_v2", 13000, 0, None),
            // The per-thread flag.
            ("cuLaunchKernel", 13000, PTDS, Some("cuLaunchKernel_ptsz")),
            ("cuLaunchKernel", 13000, LEGACY | PTDS, Some("cuLaunchKernel")),
            ("cuLaunchKernel", 4000, PTDS, Some("cuLaunchKernel")),
            ("cuMemcpyHtoD", 13000, PTDS, Some("cuMemcpyHtoD_v2_ptds")),
            ("cuMemcpyHtoD", 3020, PTDS, Some("cuMemcpyHtoD_v2")),
            ("cuStreamBeginCapture", 10000, PTDS, Some("cuStreamBeginCapture_ptsz")),
            ("cuStreamBeginCapture", 13000, PTDS, Some("cuStreamBeginCapture_v2_ptsz")),
            ("cuMemAlloc", 13000, PTDS, Some("cuMemAlloc_v2")),
            ("cuCtxSynchronize", 13000, PTDS, Some("cuCtxSynchronize_v2")),
        ] {
            assert_eq!(found(name, version, flags), want, "{name} @ {version} flags {flags}");
        }
        assert_eq!(lookup("cuMemAlloc", 1000, 0), Lookup::VersionNotSufficient);
        assert_eq!(lookup("cuNoSuchFunction", 13000, 0), Lookup::SymbolNotFound);
    }

    #[test]
    fn the_table_is_sorted_and_every_row_is_a_variant_of_its_name() {
        for w in PROC_TABLE.windows(2) {
            let key = |r: &ProcRow| (r.name(), r.per_thread, r.version);
            assert!(key(&w[0]) < key(&w[1]), "{:?} before {:?}", w[0], w[1]);
        }
        for r in PROC_TABLE {
            assert!(r.alias || r.symbol().starts_with(r.name()), "{r:?}");
            assert_eq!(r.per_thread, r.symbol().ends_with("_ptds") || r.symbol().ends_with("_ptsz"), "{r:?}");
            assert!(r.version >= 2000 && r.version % 10 == 0 && r.version <= NEWEST_VERSION, "{r:?}");
        }
    }

    #[test]
    fn symbols_have_their_typedefs_signature() {
        // Compile-time: the type of each symbol is the typedef's.
        let _: crate::cuda::sym::cuCtxSynchronize_v2 = {
            unsafe extern "C" fn f(_: crate::cuda::CUcontext) -> crate::cuda::CUresult {
                0
            }
            f
        };
        assert!(is_symbol("cuCtxSynchronize_v2") && !is_symbol("cuCtxSynchronize_v3"));
    }
}
