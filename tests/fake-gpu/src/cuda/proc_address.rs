//! `cuGetProcAddress`: which export a name, a CUDA version and the per-thread flag select.
//!
//! The choice is NVIDIA's, from the table `gpuslice_cuda_abi::proc` derives from
//! `cudaTypedefs.h` (`PFN_cuMemAlloc_v3020` → `cuMemAlloc_v2`): for (name, version capped at
//! the driver's own `cuda_version`, flags) it names the exported symbol, and the simulator
//! hands out the address of its own export of exactly that symbol, the one `dlsym` returns
//! for it. Exports are listed once, by symbol alone, in [`exports`](super::exports),
//! [`library`](super::library), [`context_info`](super::context_info),
//! [`dark_api`](super::dark_api), [`not_supported`](super::not_supported),
//! [`green`](super::green) and [`interop`](super::interop); each is checked
//! at compile time against the symbol's generated signature (`cuda::sym`).
//!
//! When the table names a symbol the simulator does not export, it answers as a driver that
//! lacks it, never with another variant (whose signature would differ): a request older than
//! every variant it exports is `VERSION_NOT_SUFFICIENT` (the 32-bit `_v1` calls of CUDA 2.x
//! are not simulated), anything else `SYMBOL_NOT_FOUND`.

use std::ffi::{c_int, c_void};

use gpuslice_cuda_abi::proc as abi;

/// One exported function.
#[derive(Debug)]
pub struct Export {
    /// The exported symbol, e.g. `cuMemAlloc_v2`.
    pub symbol: &'static str,
    /// The export's address.
    pub address: fn() -> *mut c_void,
}

/// The lists of exports, one per file that declares some.
static TABLES: [&[Export]; 8] = [
    super::exports::TABLE,
    super::library::TABLE,
    super::context_info::TABLE,
    super::dark_api::TABLE,
    super::not_supported::TABLE,
    super::green::TABLE,
    super::capture::TABLE,
    super::interop::TABLE,
];

/// Every export.
pub fn exports() -> impl Iterator<Item = &'static Export> {
    TABLES.iter().flat_map(|t| t.iter())
}

/// The export of `symbol`, if the simulator has one.
pub fn export(symbol: &str) -> Option<&'static Export> {
    exports().find(|e| e.symbol == symbol)
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(&'static str),
    /// No such name: `CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND`.
    SymbolNotFound,
    /// Only newer variants: `CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT`.
    VersionNotSufficient,
}

/// The export of `name` that `version` and `flags` select (flags already checked).
pub fn lookup(name: &str, version: c_int, flags: u64) -> Lookup {
    entry(name, version, flags).map_or_else(|l| l, |e| Lookup::Found(e.symbol))
}

pub(crate) fn entry(name: &str, version: c_int, flags: u64) -> Result<&'static Export, Lookup> {
    let row = match abi::lookup(name, version, flags) {
        abi::Lookup::Found(row) => row,
        abi::Lookup::SymbolNotFound => return Err(Lookup::SymbolNotFound),
        abi::Lookup::VersionNotSufficient => return Err(Lookup::VersionNotSufficient),
    };
    if let Some(e) = export(row.symbol()) {
        return Ok(e);
    }
    let oldest_exported = abi::rows(name).iter().filter(|r| export(r.symbol()).is_some()).map(|r| r.version).min();
    match oldest_exported {
        Some(oldest) if row.version < oldest => Err(Lookup::VersionNotSufficient),
        _ => Err(Lookup::SymbolNotFound),
    }
}

/// Declares every export once. For each item
///
/// ```text
/// /// doc
/// #[export(before_init)]              // optional: works before cuInit
/// fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) { … }
/// ```
///
/// it generates the `#[no_mangle] extern "C"` function, whose body (returning `CuResult`)
/// runs inside [`boundary`](super::boundary) (and may then be held, see [`hold`](super::hold))
/// and whose result is traced ([`trace`](super::trace)), an entry of the list's `TABLE`, and a
/// compile-time check that its signature is the generated one of that symbol (`cuda::sym`).
macro_rules! driver_api {
    ($(
        $(#[doc = $doc:literal])*
        $(#[export($flag:ident)])?
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    )*) => {
        $(
            $(#[doc = $doc])*
            ///
            /// # Safety
            ///
            /// As in `cuda.h`: every pointer is null or valid for what the call reads or
            /// writes through it, strings are NUL-terminated.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $crate::cuda::CUresult {
                let code = $crate::cuda::boundary($crate::cuda::proc_address::before_init!($($flag)?), || $body);
                $crate::cuda::hold::after(stringify!($name));
                $crate::cuda::trace::call(stringify!($name), code);
                code
            }

            const _: Option<gpuslice_cuda_abi::cuda::sym::$name> = Some($name);
        )*

        /// Every export of this list, in the order declared.
        pub(crate) static TABLE: &[$crate::cuda::proc_address::Export] = &[$(
            $crate::cuda::proc_address::Export {
                symbol: stringify!($name),
                address: || $name as *mut ::std::ffi::c_void,
            },
        )*];
    };
}
pub(crate) use driver_api;

/// `true` for `#[export(before_init)]`.
macro_rules! before_init {
    () => {
        false
    };
    (before_init) => {
        true
    };
}
pub(crate) use before_init;

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY: u64 = abi::LEGACY_STREAM;
    const PTDS: u64 = abi::PER_THREAD_DEFAULT_STREAM;

    #[test]
    fn versions_select_the_newest_variant_at_or_below() {
        let cases: &[(&str, c_int, u64, Lookup)] = &[
            ("cuMemAlloc", 3020, 0, Lookup::Found("cuMemAlloc_v2")),
            ("cuMemAlloc", 13000, 0, Lookup::Found("cuMemAlloc_v2")),
            ("cuMemAlloc", 2000, 0, Lookup::VersionNotSufficient),
            ("cuCtxCreate", 3020, 0, Lookup::Found("cuCtxCreate_v2")),
            ("cuCtxCreate", 11030, 0, Lookup::Found("cuCtxCreate_v2")),
            ("cuCtxCreate", 11040, 0, Lookup::Found("cuCtxCreate_v3")),
            ("cuCtxCreate", 12040, 0, Lookup::Found("cuCtxCreate_v3")),
            ("cuCtxCreate", 12050, 0, Lookup::Found("cuCtxCreate_v4")),
            ("cuDevicePrimaryCtxRelease", 7000, 0, Lookup::Found("cuDevicePrimaryCtxRelease")),
            ("cuDevicePrimaryCtxRelease", 10020, 0, Lookup::Found("cuDevicePrimaryCtxRelease")),
            ("cuDevicePrimaryCtxRelease", 11000, 0, Lookup::Found("cuDevicePrimaryCtxRelease_v2")),
            ("cuDevicePrimaryCtxReset", 11000, 0, Lookup::Found("cuDevicePrimaryCtxReset_v2")),
            ("cuDevicePrimaryCtxRetain", 6050, 0, Lookup::VersionNotSufficient),
            ("cuGetProcAddress", 11030, 0, Lookup::Found("cuGetProcAddress")),
            ("cuGetProcAddress", 12000, 0, Lookup::Found("cuGetProcAddress_v2")),
            ("cuDeviceGetUuid", 11040, 0, Lookup::Found("cuDeviceGetUuid_v2")),
            ("cuDeviceGetUuid", 9020, 0, Lookup::Found("cuDeviceGetUuid")),
            ("cuEventElapsedTime", 12000, 0, Lookup::Found("cuEventElapsedTime")),
            ("cuEventElapsedTime", 12080, 0, Lookup::Found("cuEventElapsedTime_v2")),
            ("cuCtxSynchronize", 12090, 0, Lookup::Found("cuCtxSynchronize")),
            ("cuCtxSynchronize", 13000, 0, Lookup::Found("cuCtxSynchronize_v2")),
            ("cuCtxGetDevice", 13000, 0, Lookup::Found("cuCtxGetDevice_v2")),
            ("cuMemAllocAsync", 11010, 0, Lookup::VersionNotSufficient),
            ("cuLaunchKernelEx", 11060, 0, Lookup::Found("cuLaunchKernelEx")),
            ("cuLaunchKernelEx", 11050, 0, Lookup::VersionNotSufficient),
            ("cuLaunchCooperativeKernel", 9000, 0, Lookup::Found("cuLaunchCooperativeKernel")),
            ("cuLaunchCooperativeKernelMultiDevice", 13000, 0, Lookup::Found("cuLaunchCooperativeKernelMultiDevice")),
            ("cuGraphAddKernelNode", 11080, 0, Lookup::Found("cuGraphAddKernelNode")),
            ("cuGraphAddKernelNode", 12000, 0, Lookup::Found("cuGraphAddKernelNode_v2")),
            ("cuGraphInstantiate", 10000, 0, Lookup::Found("cuGraphInstantiate")),
            ("cuGraphInstantiate", 11000, 0, Lookup::Found("cuGraphInstantiate_v2")),
            ("cuGraphInstantiate", 11080, 0, Lookup::Found("cuGraphInstantiate_v2")),
            ("cuGraphInstantiate", 12000, 0, Lookup::Found("cuGraphInstantiateWithFlags")),
            ("cuGraphInstantiateWithFlags", 13000, 0, Lookup::Found("cuGraphInstantiateWithFlags")),
            ("cuStreamBeginCapture", 10000, 0, Lookup::Found("cuStreamBeginCapture")),
            ("cuStreamBeginCapture", 10010, 0, Lookup::Found("cuStreamBeginCapture_v2")),
            ("cuStreamEndCapture", 13000, 0, Lookup::Found("cuStreamEndCapture")),
            ("cuGraphLaunch", 9020, 0, Lookup::VersionNotSufficient),
            ("cuNoSuchFunction", 13000, 0, Lookup::SymbolNotFound),
            ("cuMemAlloc_v2", 13000, 0, Lookup::SymbolNotFound),
        ];
        for &(name, version, flags, want) in cases {
            assert_eq!(lookup(name, version, flags), want, "{name} @ {version} flags {flags}");
        }
    }

    #[test]
    fn per_thread_flag_selects_ptds_and_ptsz_variants() {
        let cases: &[(&str, c_int, u64, &str)] = &[
            ("cuLaunchKernel", 13000, PTDS, "cuLaunchKernel_ptsz"),
            ("cuLaunchKernel", 13000, LEGACY, "cuLaunchKernel"),
            ("cuLaunchKernel", 13000, 0, "cuLaunchKernel"),
            ("cuLaunchKernel", 13000, LEGACY | PTDS, "cuLaunchKernel"),
            ("cuLaunchKernel", 4000, PTDS, "cuLaunchKernel"),
            ("cuMemAllocAsync", 11020, PTDS, "cuMemAllocAsync_ptsz"),
            ("cuMemAllocAsync", 11020, 0, "cuMemAllocAsync"),
            ("cuMemFreeAsync", 12000, PTDS, "cuMemFreeAsync_ptsz"),
            ("cuMemAllocFromPoolAsync", 12000, PTDS, "cuMemAllocFromPoolAsync_ptsz"),
            ("cuMemcpyHtoD", 13000, PTDS, "cuMemcpyHtoD_v2_ptds"),
            ("cuMemcpyHtoD", 13000, LEGACY, "cuMemcpyHtoD_v2"),
            ("cuMemcpyHtoD", 3020, PTDS, "cuMemcpyHtoD_v2"),
            ("cuMemcpyDtoH", 7000, PTDS, "cuMemcpyDtoH_v2_ptds"),
            ("cuMemcpyDtoD", 7000, PTDS, "cuMemcpyDtoD_v2_ptds"),
            ("cuMemcpyHtoDAsync", 7000, PTDS, "cuMemcpyHtoDAsync_v2_ptsz"),
            ("cuMemcpyDtoHAsync", 7000, 0, "cuMemcpyDtoHAsync_v2"),
            ("cuMemsetD8", 13000, PTDS, "cuMemsetD8_v2_ptds"),
            ("cuMemsetD32", 13000, PTDS, "cuMemsetD32_v2_ptds"),
            ("cuStreamSynchronize", 13000, PTDS, "cuStreamSynchronize_ptsz"),
            ("cuStreamSynchronize", 13000, 0, "cuStreamSynchronize"),
            ("cuEventRecord", 13000, PTDS, "cuEventRecord_ptsz"),
            ("cuStreamQuery", 13000, PTDS, "cuStreamQuery_ptsz"),
            ("cuLaunchKernelEx", 13000, PTDS, "cuLaunchKernelEx_ptsz"),
            ("cuLaunchCooperativeKernel", 13000, PTDS, "cuLaunchCooperativeKernel_ptsz"),
            ("cuGraphLaunch", 13000, PTDS, "cuGraphLaunch_ptsz"),
            ("cuGraphLaunch", 13000, LEGACY | PTDS, "cuGraphLaunch"),
            ("cuStreamBeginCapture", 10000, PTDS, "cuStreamBeginCapture_ptsz"),
            ("cuStreamBeginCapture", 13000, PTDS, "cuStreamBeginCapture_v2_ptsz"),
            ("cuStreamEndCapture", 13000, PTDS, "cuStreamEndCapture_ptsz"),
            ("cuStreamIsCapturing", 13000, PTDS, "cuStreamIsCapturing_ptsz"),
            ("cuLaunchCooperativeKernelMultiDevice", 13000, PTDS, "cuLaunchCooperativeKernelMultiDevice"),
            ("cuGraphInstantiate", 13000, PTDS, "cuGraphInstantiateWithFlags"),
            // No per-thread variant: the plain one.
            ("cuMemAlloc", 13000, PTDS, "cuMemAlloc_v2"),
            ("cuCtxSynchronize", 13000, PTDS, "cuCtxSynchronize_v2"),
        ];
        for &(name, version, flags, want) in cases {
            assert_eq!(lookup(name, version, flags), Lookup::Found(want), "{name} @ {version} flags {flags}");
        }
    }

    #[test]
    fn every_export_is_a_driver_symbol_the_table_can_select() {
        let all: Vec<&Export> = exports().collect();
        for (i, e) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|o| o.symbol != e.symbol), "{} twice", e.symbol);
            assert!(!(e.address)().is_null());
            // Some (name, version, flags) selects it, and the lookup then hands it out.
            let row = abi::rows_of_symbol(e.symbol).next().unwrap_or_else(|| panic!("{} is in no typedef", e.symbol));
            let flags = if row.per_thread { PTDS } else { 0 };
            assert_eq!(lookup(row.name(), row.version, flags), Lookup::Found(e.symbol), "{row:?}");
        }
    }
}
