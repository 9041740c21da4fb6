//! Modules, libraries and their kernels.
//!
//! A module (`cuModuleLoadData`, or a fat binary the runtime registers) belongs to a context;
//! a library (`cuLibraryLoadData`, CUDA 12) belongs to none and is loaded into a context the
//! first time one of its kernels is used there (`cuKernelGetFunction`, `cuLibraryGetModule`,
//! or a launch of a `CUkernel`, which CUDA 13's runtime passes straight to `cuLaunchKernel`).
//! Which names an image provides is [`image`](super::image)'s business; its `__device__` and
//! `__constant__` variables ([`reservations::module_globals`]; a library's compressed entries
//! are not read) are found by name
//! (`cuModuleGetGlobal`, `cuLibraryGetGlobal`), each backed by host memory made at the first
//! lookup (the module's reservation has charged the device for them), so that copies to and
//! from them (`cudaMemcpyToSymbol`) move bytes.
//!
//! No code runs. What a kernel does is decided by its name ([`Kind`]): `busy` occupies the
//! device for as many nanoseconds as its first parameter says, any other kernel for
//! [`MODELLED_KERNEL_NS`].

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_void};

use gpuslice_core::reservations;

use super::error::{CuResult, INVALID_HANDLE, INVALID_VALUE, NOT_FOUND, OUT_OF_MEMORY};
use super::image::{self, Kernels};
use super::launch::Nanos;
use super::memory::{Charge, HostMemory};
use super::types::*;
use super::{Handle, context, driver, new_handle};
use crate::state::DeviceState;

/// How long a kernel other than `busy` occupies the device: about what a small kernel takes
/// on a real GPU from start to finish.
pub const MODELLED_KERNEL_NS: Nanos = 5_000;

/// What a kernel does, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `busy` (or a C++ mangling of it, `_Z4busyy`, `_Z4busym`, …): occupies the device for
    /// its first parameter (a 64-bit integer), in nanoseconds.
    Busy,
    /// Anything else: occupies the device for [`MODELLED_KERNEL_NS`].
    Modelled,
}

impl Kind {
    pub fn of(name: &str) -> Kind {
        if name == "busy" || name.starts_with("_Z4busy") { Kind::Busy } else { Kind::Modelled }
    }

    /// How long one launch takes.
    pub fn duration(self, params: Params) -> CuResult<Nanos> {
        match self {
            Kind::Busy => params.first_u64(),
            Kind::Modelled => Ok(MODELLED_KERNEL_NS),
        }
    }
}

#[derive(Debug)]
struct Module {
    ctx: Handle,
    kernels: Kernels,
    /// The device memory its code and globals take ([`reservations::module_bytes`]).
    _memory: Option<Charge>,
    globals: Vec<Global>,
}

/// A `__device__` or `__constant__` variable of a module.
#[derive(Debug)]
struct Global {
    name: String,
    bytes: u64,
    /// Made at the first lookup.
    memory: Option<HostMemory>,
}

fn globals(list: &[(String, u64)]) -> Vec<Global> {
    list.iter().map(|(name, bytes)| Global { name: name.clone(), bytes: *bytes, memory: None }).collect()
}

#[derive(Debug)]
struct Function {
    module: Handle,
    name: CString,
    kind: Kind,
}

#[derive(Debug)]
struct Library {
    kernels: Kernels,
    /// Its variables, by name with their bytes.
    globals: Vec<(String, u64)>,
    /// What loading it into a context reserves there.
    bytes: u64,
    /// Its fat binary, when it has compressed entries: what they reserve is added to `bytes`
    /// at its first load into a context ([`reservations::deferred_bytes`]).
    deferred: Option<Vec<u8>>,
    /// The library's module in each context it was used in.
    modules: HashMap<Handle, Handle>,
}

#[derive(Debug)]
struct Kernel {
    library: Handle,
    name: CString,
}

/// Loaded modules and libraries, their functions and kernels.
#[derive(Debug, Default)]
pub(crate) struct Modules {
    modules: HashMap<Handle, Module>,
    functions: HashMap<Handle, Function>,
    libraries: HashMap<Handle, Library>,
    kernels: HashMap<Handle, Kernel>,
}

impl Modules {
    /// `cuModuleLoadData`: a module of `ctx` providing `kernels`, holding `memory`.
    pub fn load(&mut self, ctx: Handle, kernels: Kernels, memory: Option<Charge>) -> Handle {
        let module = new_handle();
        self.modules.insert(module, Module { ctx, kernels, _memory: memory, globals: Vec::new() });
        module
    }

    /// `cuModuleUnload`; a library's module goes with its library, not alone.
    pub fn unload(&mut self, module: Handle) -> CuResult {
        if self.libraries.values().any(|l| l.modules.values().any(|&m| m == module)) {
            return Err(INVALID_HANDLE);
        }
        self.remove_module(module)
    }

    fn remove_module(&mut self, module: Handle) -> CuResult {
        self.modules.remove(&module).ok_or(INVALID_HANDLE)?;
        self.functions.retain(|_, f| f.module != module);
        Ok(())
    }

    /// `cuModuleGetFunction`: the same handle each time for one name in one module.
    pub fn function(&mut self, module: Handle, name: &str) -> CuResult<Handle> {
        let m = self.modules.get(&module).ok_or(INVALID_HANDLE)?;
        if !m.kernels.has(name) {
            return Err(NOT_FOUND);
        }
        if let Some((&f, _)) =
            self.functions.iter().find(|(_, f)| f.module == module && f.name.to_bytes() == name.as_bytes())
        {
            return Ok(f);
        }
        let f = new_handle();
        let c_name = CString::new(name).map_err(|_| NOT_FOUND)?;
        self.functions.insert(f, Function { module, name: c_name, kind: Kind::of(name) });
        Ok(f)
    }

    /// `cuLibraryLoadData`: nothing is reserved until it is loaded into a context (lazy
    /// loading, the default since CUDA 12.2), where it reserves `bytes`, and what the
    /// compressed entries of `deferred` (its fat binary) decompress to.
    pub fn load_library(&mut self, kernels: Kernels, bytes: u64, deferred: Option<Vec<u8>>) -> Handle {
        let library = new_handle();
        self.libraries
            .insert(library, Library { kernels, globals: Vec::new(), bytes, deferred, modules: HashMap::new() });
        library
    }

    /// `cuLibraryUnload`: its kernels and its modules in every context go too.
    pub fn unload_library(&mut self, library: Handle) -> CuResult {
        let l = self.libraries.remove(&library).ok_or(INVALID_HANDLE)?;
        for module in l.modules.into_values() {
            let _ = self.remove_module(module);
        }
        self.kernels.retain(|_, k| k.library != library);
        Ok(())
    }

    /// The variables a module's or library's image declares (by name, with their bytes).
    pub fn set_globals(&mut self, handle: Handle, list: Vec<(String, u64)>) {
        if let Some(m) = self.modules.get_mut(&handle) {
            m.globals = globals(&list);
        } else if let Some(l) = self.libraries.get_mut(&handle) {
            l.globals = list;
        }
    }

    /// `cuModuleGetGlobal_v2`: the address and size of variable `name` of `module`
    /// (`CUDA_ERROR_NOT_FOUND` if its image declares none of that name).
    pub fn global(&mut self, module: Handle, name: &str) -> CuResult<(u64, u64)> {
        let m = self.modules.get_mut(&module).ok_or(INVALID_HANDLE)?;
        let g = m.globals.iter_mut().find(|g| g.name == name).ok_or(NOT_FOUND)?;
        if g.memory.is_none() {
            g.memory = Some(HostMemory::new(g.bytes.max(1))?);
        }
        Ok((g.memory.as_ref().map_or(0, HostMemory::addr), g.bytes))
    }

    /// The host address of `len` bytes at `ptr` inside one module variable.
    pub fn global_span(&self, ptr: u64, len: u64) -> Option<*mut u8> {
        let end = ptr.checked_add(len)?;
        self.modules.values().flat_map(|m| &m.globals).find_map(|g| {
            let start = g.memory.as_ref()?.addr();
            (ptr >= start && end <= start + g.bytes).then_some(ptr as *mut u8)
        })
    }

    /// `cuLibraryGetKernel`: the same handle each time for one name in one library.
    pub fn library_kernel(&mut self, library: Handle, name: &str) -> CuResult<Handle> {
        let l = self.libraries.get(&library).ok_or(INVALID_HANDLE)?;
        if !l.kernels.has(name) {
            return Err(NOT_FOUND);
        }
        if let Some((&k, _)) =
            self.kernels.iter().find(|(_, k)| k.library == library && k.name.to_bytes() == name.as_bytes())
        {
            return Ok(k);
        }
        let k = new_handle();
        self.kernels.insert(k, Kernel { library, name: CString::new(name).map_err(|_| NOT_FOUND)? });
        Ok(k)
    }

    /// `cuLibraryGetModule`: the library loaded in `ctx`, whose device is `device` (`None`:
    /// nothing is reserved, for unit tests). The first load there reserves the library's
    /// memory, or fails with `CUDA_ERROR_OUT_OF_MEMORY`.
    pub fn library_module(&mut self, library: Handle, ctx: Handle, device: Device) -> CuResult<Handle> {
        let l = self.libraries.get(&library).ok_or(INVALID_HANDLE)?;
        if let Some(&m) = l.modules.get(&ctx) {
            return Ok(m);
        }
        let (kernels, list) = (l.kernels.clone(), globals(&l.globals));
        if let Some(fat) = self.libraries.get_mut(&library).and_then(|l| l.deferred.take())
            && let Some(l) = self.libraries.get_mut(&library)
        {
            l.bytes = l.bytes.saturating_add(reservations::deferred_bytes(&fat).bytes);
        }
        let bytes = self.libraries.get(&library).map_or(0, |l| l.bytes);
        let memory = reserve(device, bytes)?;
        let module = self.load(ctx, kernels, memory);
        if let Some(m) = self.modules.get_mut(&module) {
            m.globals = list;
        }
        if let Some(l) = self.libraries.get_mut(&library) {
            l.modules.insert(ctx, module);
        }
        Ok(module)
    }

    /// `cuKernelGetFunction`: the kernel's function in `ctx`.
    pub fn kernel_function(&mut self, kernel: Handle, ctx: Handle, device: Device) -> CuResult<Handle> {
        let k = self.kernels.get(&kernel).ok_or(INVALID_HANDLE)?;
        let (library, name) = (k.library, k.name.to_string_lossy().into_owned());
        let module = self.library_module(library, ctx, device)?;
        self.function(module, &name)
    }

    /// A launch's function in `ctx`: a `CUfunction`, or a `CUkernel` resolved there.
    pub fn resolve(&mut self, f: Handle, ctx: Handle, device: Device) -> CuResult<(Handle, Kind)> {
        let f = if self.kernels.contains_key(&f) { self.kernel_function(f, ctx, device)? } else { f };
        let kind = self.functions.get(&f).ok_or(INVALID_HANDLE)?.kind;
        Ok((f, kind))
    }

    pub fn is_kernel(&self, k: Handle) -> bool {
        self.kernels.contains_key(&k)
    }

    /// A function's name.
    pub fn function_name(&self, f: Handle) -> CuResult<&str> {
        self.functions.get(&f).map(|f| f.name.to_str().unwrap_or_default()).ok_or(INVALID_HANDLE)
    }

    /// A kernel's name.
    pub fn kernel_name(&self, k: Handle) -> CuResult<&str> {
        self.kernels.get(&k).map(|k| k.name.to_str().unwrap_or_default()).ok_or(INVALID_HANDLE)
    }

    /// A function's or a kernel's name as C text, valid while it is loaded.
    pub fn c_name(&self, f: Handle) -> CuResult<*const c_char> {
        match (self.functions.get(&f), self.kernels.get(&f)) {
            (Some(f), _) => Ok(f.name.as_ptr()),
            (_, Some(k)) => Ok(k.name.as_ptr()),
            _ => Err(INVALID_HANDLE),
        }
    }

    /// The module a function belongs to.
    pub fn module_of(&self, f: Handle) -> CuResult<Handle> {
        self.functions.get(&f).map(|f| f.module).ok_or(INVALID_HANDLE)
    }

    /// The library a kernel belongs to.
    pub fn library_of(&self, k: Handle) -> CuResult<Handle> {
        self.kernels.get(&k).map(|k| k.library).ok_or(INVALID_HANDLE)
    }

    /// Forget `ctx`'s modules (a library's module in it too), as destroying the context does.
    pub fn drop_context(&mut self, ctx: Handle) {
        let gone: Vec<Handle> = self.modules.iter().filter(|(_, m)| m.ctx == ctx).map(|(&h, _)| h).collect();
        for module in gone {
            let _ = self.remove_module(module);
        }
        for l in self.libraries.values_mut() {
            l.modules.remove(&ctx);
        }
    }

    pub fn is_function(&self, f: Handle) -> bool {
        self.functions.contains_key(&f)
    }

    /// The context whose module provides `f`.
    pub fn context_of(&self, f: Handle) -> Option<Handle> {
        self.functions.get(&f).and_then(|f| self.modules.get(&f.module)).map(|m| m.ctx)
    }
}

/// `cuFuncGetAttribute`/`cuKernelGetAttribute`: an H100's answers for a small kernel (no
/// shared, constant or local memory, 32 registers, compiled for `sm_90`), whatever the kernel.
pub(crate) fn attribute(attribute: CUfunction_attribute) -> CuResult<c_int> {
    Ok(match attribute {
        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK => 1024,
        CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
        | CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES
        | CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES => 0,
        CU_FUNC_ATTRIBUTE_NUM_REGS => 32,
        CU_FUNC_ATTRIBUTE_PTX_VERSION | CU_FUNC_ATTRIBUTE_BINARY_VERSION => 90,
        CU_FUNC_ATTRIBUTE_CACHE_MODE_CA => 0,
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => 48 << 10,
        // No preference.
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => -1,
        // Cluster attributes: none required.
        CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET..=CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE => 0,
        _ => return Err(INVALID_VALUE),
    })
}

/// `cuFuncSetAttribute`/`cuKernelSetAttribute`: the attributes a program may set, with values
/// in range (accepted, no effect here).
pub(crate) fn check_settable(attribute: CUfunction_attribute, value: c_int) -> CuResult {
    let ok = match attribute {
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => (0..=227 << 10).contains(&value),
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => (-1..=100).contains(&value),
        CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET | CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED => {
            matches!(value, 0 | 1)
        }
        CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH..=CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH => {
            (0..=16).contains(&value)
        }
        CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE => (0..=2).contains(&value),
        _ => false,
    };
    if ok { Ok(()) } else { Err(INVALID_VALUE) }
}

/// The device a module is loaded on, whose memory it takes (`None`: none is taken).
pub(crate) type Device = Option<&'static DeviceState>;

/// `bytes` of `device`'s memory, or `CUDA_ERROR_OUT_OF_MEMORY`.
fn reserve(device: Device, bytes: u64) -> CuResult<Option<Charge>> {
    match device {
        Some(d) if bytes > 0 => Charge::uncounted(d, bytes).map(Some).map_err(|_| OUT_OF_MEMORY),
        _ => Ok(None),
    }
}

/// The variables an image declares: [`reservations::module_globals`].
pub(crate) fn image_globals(image: *const c_void, decompress: bool) -> Vec<(String, u64)> {
    reservations::module_globals(image as usize, &reservations::OwnMemory, decompress)
}

/// What an image reserves when loaded: [`reservations::module_bytes`], read without trusting
/// the image's pointers.
pub(crate) fn image_bytes(image: *const c_void) -> u64 {
    reservations::module_bytes(image as usize, &reservations::OwnMemory)
}

/// What a library image reserves in each context it is loaded into:
/// [`reservations::library_estimate`] (compressed entries not decompressed).
pub(crate) fn library_bytes(image: *const c_void) -> u64 {
    reservations::library_estimate(image as usize, &reservations::OwnMemory).bytes
}

/// What a library image reserves in each context at once, and its fat binary when its
/// compressed entries wait for the first load into a context ([`reservations::deferred_image`];
/// one too large to keep counts them at once).
pub(crate) fn library_reservation(image: *const c_void) -> (u64, Option<Vec<u8>>) {
    match reservations::deferred_image(image as usize, &reservations::OwnMemory) {
        // The driver keeps its own copy of the image (the shim keeps only a fingerprint).
        reservations::Deferral::Kept(print) => {
            (library_bytes(image), reservations::reread(&print, &reservations::OwnMemory).ok())
        }
        reservations::Deferral::TooLarge => (image_bytes(image), None),
        reservations::Deferral::Nothing => (library_bytes(image), None),
    }
}

/// `cuModuleLoadData` (and the runtime's fat binaries): a module of the current context,
/// reserving its code and globals there (or `CUDA_ERROR_OUT_OF_MEMORY`).
///
/// # Safety
///
/// `image` is null or an image as `cuModuleLoadData` takes it.
pub(crate) unsafe fn load_module(image: *const c_void) -> CuResult<Handle> {
    if image.is_null() {
        return Err(INVALID_VALUE);
    }
    let mut reg = driver()?.lock();
    let ctx = context::current(&reg)?;
    let memory = reserve(Some(context::device_state(&reg, ctx)?), image_bytes(image))?;
    // SAFETY: a non-null image per the caller.
    let kernels = unsafe { image::kernels(image) };
    let module = reg.modules.load(ctx, kernels, memory);
    reg.modules.set_globals(module, image_globals(image, true));
    Ok(module)
}

/// A launch's parameters as the caller passed them: `kernelParams` (an array of pointers, one
/// per parameter) or `extra` (a `CU_LAUNCH_PARAM_END`-terminated list of key/value pointers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
}

/// `CU_LAUNCH_PARAM_END`, `CU_LAUNCH_PARAM_BUFFER_POINTER` and `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const PARAM_END: usize = 0;
const PARAM_BUFFER_POINTER: usize = 1;
const PARAM_BUFFER_SIZE: usize = 2;

impl Params {
    /// # Safety
    ///
    /// Until the launch call returns, `kernel_params` is null or an array with one pointer per
    /// kernel parameter, each valid for reads of that parameter; `extra` is null or a list of
    /// key/value pointers ending with `CU_LAUNCH_PARAM_END` whose values are valid as the
    /// keys say.
    pub unsafe fn new(kernel_params: *mut *mut c_void, extra: *mut *mut c_void) -> Self {
        Self { kernel_params, extra }
    }

    /// The first parameter as a `u64`: `*(u64 *)kernelParams[0]`, or the first 8 bytes of the
    /// buffer `extra` passes. Exactly one of the two must be given.
    fn first_u64(self) -> CuResult<Nanos> {
        let (kernel_params, extra) = (self.kernel_params, self.extra);
        match (kernel_params.is_null(), extra.is_null()) {
            (false, true) => {
                // SAFETY: a non-null kernelParams array holds one pointer per parameter (per
                // `new`'s contract), and a kernel read as `busy` has one.
                let first = unsafe { kernel_params.read() };
                if first.is_null() {
                    return Err(INVALID_VALUE);
                }
                // SAFETY: the first parameter is a 64-bit integer per `busy`'s signature.
                Ok(unsafe { first.cast::<u64>().read_unaligned() })
            }
            (true, false) => {
                let (mut buffer, mut size) = (std::ptr::null::<u8>(), None);
                for i in 0.. {
                    // SAFETY: the list runs in key/value pairs up to CU_LAUNCH_PARAM_END, per
                    // `new`'s contract.
                    let key = unsafe { extra.wrapping_add(i * 2).read() } as usize;
                    if key == PARAM_END {
                        break;
                    }
                    // SAFETY: every key but the end marker has a value after it.
                    let value = unsafe { extra.wrapping_add(i * 2 + 1).read() };
                    match key {
                        PARAM_BUFFER_POINTER => buffer = value.cast(),
                        // SAFETY: the value of CU_LAUNCH_PARAM_BUFFER_SIZE points at a size_t.
                        PARAM_BUFFER_SIZE if !value.is_null() => size = Some(unsafe { value.cast::<usize>().read() }),
                        _ => return Err(INVALID_VALUE),
                    }
                }
                if buffer.is_null() || size.is_some_and(|s| s < 8) {
                    return Err(INVALID_VALUE);
                }
                // SAFETY: the buffer holds the packed parameters, the first a 64-bit integer.
                Ok(unsafe { buffer.cast::<u64>().read_unaligned() })
            }
            _ => Err(INVALID_VALUE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_known_by_its_name_and_its_manglings() {
        for name in ["busy", "_Z4busyy", "_Z4busym", "_Z4busyyi"] {
            assert_eq!(Kind::of(name), Kind::Busy, "{name}");
        }
        for name in ["saxpy", "_Z5busyxy", "busy2", "_Z4idlev", ""] {
            assert_eq!(Kind::of(name), Kind::Modelled, "{name}");
        }
    }

    #[test]
    fn libraries_lend_their_kernels_to_each_context() {
        let mut m = Modules::default();
        let lib = m.load_library(Kernels::Listed(vec!["_Z4busyy".to_owned(), "k".to_owned()]), 0, None);
        let k = m.library_kernel(lib, "_Z4busyy").unwrap();
        assert_eq!(m.library_kernel(lib, "_Z4busyy"), Ok(k));
        assert_eq!(m.library_kernel(lib, "missing"), Err(NOT_FOUND));
        let (f1, kind) = m.resolve(k, 100, None).unwrap();
        assert_eq!(kind, Kind::Busy);
        let (f2, _) = m.resolve(k, 200, None).unwrap();
        assert_ne!(f1, f2, "one function per context");
        assert_eq!(m.kernel_function(k, 100, None), Ok(f1));
        assert_eq!(m.context_of(f2), Some(200));
        m.drop_context(100);
        assert!(!m.is_function(f1));
        assert_ne!(m.kernel_function(k, 100, None).unwrap(), f1, "loaded again in a new context");
        m.unload_library(lib).unwrap();
        assert!(!m.is_function(f2) && !m.is_kernel(k));
        assert_eq!(m.resolve(k, 100, None), Err(INVALID_HANDLE));
    }
}
