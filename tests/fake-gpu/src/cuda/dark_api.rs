//! `cuGetExportTable`: the driver's private tables, which NVIDIA's runtime (`libcudart`) asks
//! for by UUID before any public call succeeds.
//!
//! A table is an array of pointers; most begin with their own size in bytes. What each slot
//! means is known from public reimplementations of the driver (ZLUDA's `dark_api`) and from
//! watching the runtime call them (`FAKEGPU_TRACE=1`); slots whose meaning is not known are
//! null, as the runtime does not call them on the paths it takes here. The tables, their UUIDs
//! and their slots are listed in the simulator's README.
//!
//! Every entry is `extern "C"`, catches panics, and traces its call. Entries that need the
//! driver answer `CUDA_ERROR_NOT_INITIALIZED` before `cuInit`, as public calls do.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::error::{self, CUresult, CuResult, INVALID_VALUE};
use super::ffi::{Out, input};
use super::integrity;
use super::proc_address::driver_api;
use super::types::{CUcontext, CUdevice, CUmodule, CUuuid};
use super::{context, device, driver, trace};

driver_api! {
    /// The private table `id` names, or `CUDA_ERROR_NOT_FOUND` and null.
    #[export(before_init)]
    fn cuGetExportTable(table: *mut *const c_void, id: *const CUuuid) {
        // SAFETY: null or writable per the export's contract.
        let out = unsafe { Out::new(table) }?;
        // SAFETY: null or readable per the export's contract.
        export_table(out, unsafe { input(id) }?)
    }
}

/// A table as the runtime reads it.
#[repr(C)]
pub(crate) struct Table<const N: usize>([*const c_void; N]);

// SAFETY: the tables are immutable statics of function addresses and integers.
unsafe impl<const N: usize> Sync for Table<N> {}

impl<const N: usize> Table<N> {
    fn address(&'static self) -> *const c_void {
        self.0.as_ptr().cast()
    }
}

/// A table's first slot: its size in bytes.
const fn size_slot(slots: usize) -> *const c_void {
    (slots * size_of::<usize>()) as *const c_void
}

const NULL: *const c_void = std::ptr::null();

/// One table the driver hands out.
struct Known {
    uuid: [u8; 16],
    name: &'static str,
    table: fn() -> *const c_void,
}

/// A UUID written as the runtime's bytes, in order.
const fn uuid(hex: &str) -> [u8; 16] {
    let b = hex.as_bytes();
    let mut out = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        if b[i] != b'-' {
            let d = match b[i] {
                b'0'..=b'9' => b[i] - b'0',
                b'a'..=b'f' => b[i] - b'a' + 10,
                _ => panic!("lowercase hex digits and dashes"),
            };
            out[n / 2] = out[n / 2] << 4 | d;
            n += 1;
        }
        i += 1;
    }
    assert!(n == 32, "32 hex digits");
    out
}

pub(crate) const RUNTIME_INTERFACE: [u8; 16] = uuid("6bd5fb6c-5bf4-e74a-8987-d93912fd9df9");
pub(crate) const TOOLS_TLS: [u8; 16] = uuid("42d85a81-23f6-cb47-8298-f6e78a3aecdc");
pub(crate) const TOOLS_CALLBACK_HOOKS: [u8; 16] = uuid("a094798c-2e74-2e74-93f2-0800200c0a66");
pub(crate) const CONTEXT_LOCAL_STORAGE: [u8; 16] = uuid("c693336e-1121-df11-a8c3-68f355d89593");
pub(crate) const CONTEXT_CHECKS: [u8; 16] = uuid("263e8860-7cd2-6143-92f6-bbd5006dfa7e");
pub(crate) const INTEGRITY_CHECK: [u8; 16] = uuid("d4082055-bde6-704b-8d34-ba123c66e1f2");
pub(crate) const TOOLS_IDS: [u8; 16] = uuid("21318c60-9714-3248-8ca6-41ff7324c8f2");

static KNOWN: &[Known] = &[
    Known { uuid: RUNTIME_INTERFACE, name: "runtime interface", table: || RUNTIME_INTERFACE_TABLE.address() },
    Known { uuid: TOOLS_TLS, name: "tools TLS", table: || TOOLS_TLS_TABLE.address() },
    Known { uuid: TOOLS_CALLBACK_HOOKS, name: "tools callback hooks", table: || TOOLS_CALLBACK_HOOKS_TABLE.address() },
    Known {
        uuid: CONTEXT_LOCAL_STORAGE,
        name: "context-local storage",
        table: || CONTEXT_LOCAL_STORAGE_TABLE.address(),
    },
    Known { uuid: CONTEXT_CHECKS, name: "context checks", table: || CONTEXT_CHECKS_TABLE.address() },
    Known { uuid: INTEGRITY_CHECK, name: "integrity check", table: || INTEGRITY_CHECK_TABLE.address() },
    Known { uuid: TOOLS_IDS, name: "tools ids", table: || TOOLS_IDS_TABLE.address() },
];

fn show(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// `cuGetExportTable`: the table for `id`, or `CUDA_ERROR_NOT_FOUND` (and null) for any other.
pub(crate) fn export_table(out: Out<*const c_void>, id: &CUuuid) -> CuResult {
    let bytes = id.bytes.map(|b| b.to_ne_bytes()[0]);
    let known = KNOWN.iter().find(|k| k.uuid == bytes);
    trace::line(|| format!("cuGetExportTable({}) = {}", show(&bytes), known.map_or("not found", |k| k.name)));
    match known {
        Some(k) => {
            out.set((k.table)());
            Ok(())
        }
        None => {
            out.set(NULL);
            Err(error::NOT_FOUND)
        }
    }
}

/// Run a private entry's body: a panic is `CUDA_ERROR_UNKNOWN`.
fn entry(name: &str, args: impl FnOnce() -> String, body: impl FnOnce() -> CuResult) -> CUresult {
    let code = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => error::SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => error::UNKNOWN,
    };
    trace::line(|| format!("{name}({}) = {code}", args()));
    code
}

// ---- the runtime interface --------------------------------------------------------------

static RUNTIME_INTERFACE_TABLE: Table<13> = Table([
    size_slot(13),
    module_from_fatbin as *const c_void,
    primary_context as *const c_void,
    NULL,
    NULL,
    NULL,
    module_from_fatbin_ext as *const c_void,
    runtime_interface_7 as *const c_void,
    module_from_fatbin_header as *const c_void,
    NULL,
    NULL,
    NULL,
    load_compilers as *const c_void,
]);

/// Slot 1: load a fat binary (`__fatBinC_Wrapper_t`) as a module of the current context.
extern "C" fn module_from_fatbin(module: *mut CUmodule, fatbin: *const c_void) -> CUresult {
    entry(
        "runtime interface[1]",
        || format!("{module:?}, {fatbin:?}"),
        // SAFETY: `module` is null or writable, `fatbin` null or an image, per the runtime.
        || unsafe { load_module(module, fatbin) },
    )
}

/// Slot 2: the primary context of `device`, neither retained nor made active (what
/// `cudaGetDeviceCount` and the runtime's device set-up ask for).
extern "C" fn primary_context(pctx: *mut CUcontext, device: CUdevice) -> CUresult {
    entry(
        "runtime interface[2]",
        || format!("{pctx:?}, device {device}"),
        || {
            // SAFETY: null or writable per the runtime.
            let out = unsafe { Out::new(pctx) }?;
            let d = driver()?;
            out.set(context::primary_handle(&d.lock(), d.sim, device)? as CUcontext);
            Ok(())
        },
    )
}

/// Slot 6: as slot 1, with three more arguments that are null/0 in the calls seen.
extern "C" fn module_from_fatbin_ext(
    module: *mut CUmodule,
    fatbin: *const c_void,
    _arg3: *mut c_void,
    _arg4: *mut c_void,
    _arg5: u32,
) -> CUresult {
    entry(
        "runtime interface[6]",
        || format!("{module:?}, {fatbin:?}"),
        // SAFETY: as for slot 1.
        || unsafe { load_module(module, fatbin) },
    )
}

/// Slot 7: called with one integer; nothing to do.
extern "C" fn runtime_interface_7(arg: usize) {
    trace::line(|| format!("runtime interface[7]({arg:#x})"));
}

/// Slot 8: as slot 6, with the fat binary's data (`fatBinaryHeader`) first.
extern "C" fn module_from_fatbin_header(
    fatbin: *const c_void,
    module: *mut CUmodule,
    _arg3: *mut c_void,
    _arg4: *mut c_void,
    _arg5: u32,
) -> CUresult {
    entry(
        "runtime interface[8]",
        || format!("{fatbin:?}, {module:?}"),
        // SAFETY: as for slot 1.
        || unsafe { load_module(module, fatbin) },
    )
}

/// Slot 12: load the JIT compilers; there are none to load.
extern "C" fn load_compilers() -> CUresult {
    entry("runtime interface[12]", String::new, || Ok(()))
}

/// # Safety
///
/// `module` is null or writable; `image` is null or an image as `cuModuleLoadData` takes.
unsafe fn load_module(module: *mut CUmodule, image: *const c_void) -> CuResult {
    // SAFETY: per the caller.
    let out = unsafe { Out::new(module) }?;
    if image.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: per the caller.
    out.set(unsafe { super::modules::load_module(image) }? as CUmodule);
    Ok(())
}

// ---- tools ------------------------------------------------------------------------------

/// Thread-local storage for profiling tools: only its size (no tool is attached).
static TOOLS_TLS_TABLE: Table<4> = Table([size_slot(4), NULL, NULL, NULL]);

static TOOLS_CALLBACK_HOOKS_TABLE: Table<7> = Table([
    size_slot(7),
    NULL,
    callback_buffer_2 as *const c_void,
    NULL,
    NULL,
    NULL,
    callback_buffer_6 as *const c_void,
]);

/// A zeroed buffer of 32-bit words the runtime reads (and may write) for tool callbacks; all
/// zero means no tool subscribed.
#[repr(C, align(8))]
struct Words<const N: usize>(std::cell::UnsafeCell<[u32; N]>);

// SAFETY: the simulator never touches the buffers after handing them out; the runtime owns
// their contents.
unsafe impl<const N: usize> Sync for Words<N> {}

static CALLBACK_BUFFER_2: Words<1024> = Words(std::cell::UnsafeCell::new([0; 1024]));
static CALLBACK_BUFFER_6: Words<14> = Words(std::cell::UnsafeCell::new([0; 14]));

/// Slot 2: a buffer of 1024 words and its length in words.
extern "C" fn callback_buffer_2(buffer: *mut *mut c_void, len: *mut usize) {
    // SAFETY: both null or writable per the runtime.
    unsafe { hand_out(buffer, len, CALLBACK_BUFFER_2.0.get().cast(), 1024) };
    trace::line(|| "tools callback hooks[2]".to_owned());
}

/// Slot 6: a buffer of 14 words and its length in words.
extern "C" fn callback_buffer_6(buffer: *mut *mut c_void, len: *mut usize) {
    // SAFETY: both null or writable per the runtime.
    unsafe { hand_out(buffer, len, CALLBACK_BUFFER_6.0.get().cast(), 14) };
    trace::line(|| "tools callback hooks[6]".to_owned());
}

/// # Safety
///
/// `buffer` and `len` are null or writable.
unsafe fn hand_out(buffer: *mut *mut c_void, len: *mut usize, words: *mut c_void, n: usize) {
    // SAFETY: per the caller.
    if let Some(out) = unsafe { Out::optional(buffer) } {
        out.set(words);
    }
    // SAFETY: per the caller.
    if let Some(out) = unsafe { Out::optional(len) } {
        out.set(n);
    }
}

/// CUDA 13.5's runtime asks for this table at start-up (and fails `cudaGetDeviceCount` with
/// `cudaErrorSymbolNotFound` without it), and calls slots 39 and 51 only on the paths that
/// report to a profiling tool that subscribed to callbacks (with a stream or context and an
/// output, apparently to name them by id). No tool subscribes here (the callback buffers are
/// zero), so they are never reached; should they be, they say so and answer
/// `CUDA_ERROR_NOT_SUPPORTED`.
static TOOLS_IDS_TABLE: Table<52> = {
    let mut slots = [NULL; 52];
    slots[0] = size_slot(52);
    slots[39] = tools_ids_39 as *const c_void;
    slots[51] = tools_ids_51 as *const c_void;
    Table(slots)
};

extern "C" fn tools_ids_39() -> CUresult {
    eprintln!("fakegpu: tools ids[39] was called (a profiling tool's callback path), which is not simulated");
    error::NOT_SUPPORTED
}

extern "C" fn tools_ids_51() -> CUresult {
    eprintln!("fakegpu: tools ids[51] was called (a profiling tool's callback path), which is not simulated");
    error::NOT_SUPPORTED
}

// ---- context-local storage --------------------------------------------------------------

static CONTEXT_LOCAL_STORAGE_TABLE: Table<4> =
    Table([local_put as *const c_void, local_delete as *const c_void, local_get as *const c_void, NULL]);

/// What the runtime keeps per context, and calls back when the context goes.
pub(crate) type LocalDestructor = extern "C" fn(CUcontext, *mut c_void, *mut c_void);

/// Slot 0: store `value` under `key` in `ctx` (null: the current context); `dtor(ctx, key,
/// value)` is called when the context is destroyed or reset.
extern "C" fn local_put(
    ctx: CUcontext,
    key: *mut c_void,
    value: *mut c_void,
    dtor: Option<LocalDestructor>,
) -> CUresult {
    entry(
        "context-local storage[0]",
        || format!("{ctx:?}, {key:?}, {value:?}, destructor {}", dtor.is_some()),
        || {
            let d = driver()?;
            context::local_put(&mut d.lock(), ctx as usize, key as usize, value as usize, dtor)
        },
    )
}

/// Slot 1: forget `key` in `ctx` (null: the current context), without calling its destructor.
extern "C" fn local_delete(ctx: CUcontext, key: *mut c_void) -> CUresult {
    entry(
        "context-local storage[1]",
        || format!("{ctx:?}, {key:?}"),
        || context::local_delete(&mut driver()?.lock(), ctx as usize, key as usize),
    )
}

/// Slot 2: the value under `key` in `ctx` (null: the current context);
/// `CUDA_ERROR_INVALID_HANDLE` when there is none.
extern "C" fn local_get(value: *mut *mut c_void, ctx: CUcontext, key: *mut c_void) -> CUresult {
    entry(
        "context-local storage[2]",
        || format!("{ctx:?}, {key:?}"),
        || {
            // SAFETY: null or writable per the runtime.
            let out = unsafe { Out::new(value) }?;
            out.set(context::local_get(&driver()?.lock(), ctx as usize, key as usize)? as *mut c_void);
            Ok(())
        },
    )
}

// ---- context checks ---------------------------------------------------------------------

static CONTEXT_CHECKS_TABLE: Table<4> =
    Table([size_slot(4), NULL, context_check as *const c_void, context_checks_3 as *const c_void]);

/// Slot 2: flags about `ctx` that the runtime checks; always 0 (nothing special about any
/// context here); the second output is left alone.
extern "C" fn context_check(ctx: CUcontext, flags: *mut u32, _other: *mut *const c_void) -> CUresult {
    entry(
        "context checks[2]",
        || format!("{ctx:?}"),
        || {
            // SAFETY: null or writable per the runtime.
            unsafe { Out::new(flags) }?.set(0);
            Ok(())
        },
    )
}

/// Slot 3: 0.
extern "C" fn context_checks_3() -> u32 {
    trace::line(|| "context checks[3]() = 0".to_owned());
    0
}

// ---- integrity check --------------------------------------------------------------------

static INTEGRITY_CHECK_TABLE: Table<3> = Table([size_slot(3), integrity_check as *const c_void, NULL]);

/// Slot 1: the runtime's check that it talks to the driver it expects: see [`integrity`].
extern "C" fn integrity_check(version: u32, unix_seconds: u64, result: *mut [u64; 2]) -> CUresult {
    entry(
        "integrity check[1]",
        || format!("{version}, {unix_seconds}"),
        || {
            // SAFETY: null or writable per the runtime.
            let out = unsafe { Out::new(result) }?;
            let d = driver()?;
            let devices = (0..device::count(d.sim))
                .map(|dev| {
                    let (gpu, _) = device::gpu(d.sim, dev)?;
                    let attribute = |a| device::attribute(gpu, a);
                    Ok(integrity::DeviceInfo {
                        uuid: gpu.uuid_bytes(),
                        pci_domain: attribute(device::PCI_DOMAIN_ID)?,
                        pci_bus: attribute(device::PCI_BUS_ID)?,
                        pci_device: attribute(device::PCI_DEVICE_ID)?,
                    })
                })
                .collect::<CuResult<Vec<_>>>()?;
            let inputs = integrity::Inputs {
                driver_version: u32::try_from(d.sim.config().cuda_version).unwrap_or(0),
                version,
                pid: std::process::id(),
                // SAFETY: pthread_self cannot fail.
                thread: unsafe { libc::pthread_self() } as u32,
                runtime_table: RUNTIME_INTERFACE_TABLE.address() as usize,
                integrity_table: INTEGRITY_CHECK_TABLE.address() as usize,
                function: INTEGRITY_CHECK_TABLE.0[1] as usize,
                unix_seconds,
            };
            out.set(integrity::answer(&inputs, &devices));
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_the_runtimes_bytes() {
        assert_eq!(
            RUNTIME_INTERFACE,
            [0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9]
        );
        assert_eq!(show(&INTEGRITY_CHECK), "d4082055-bde6-704b-8d34-ba123c66e1f2");
        for (i, k) in KNOWN.iter().enumerate() {
            assert!(KNOWN[i + 1..].iter().all(|o| o.uuid != k.uuid), "{} twice", k.name);
        }
    }

    #[test]
    fn tables_start_with_their_size() {
        assert_eq!(RUNTIME_INTERFACE_TABLE.0[0] as usize, 13 * 8);
        assert_eq!(TOOLS_TLS_TABLE.0[0] as usize, 4 * 8);
        assert_eq!(TOOLS_CALLBACK_HOOKS_TABLE.0[0] as usize, 7 * 8);
        assert_eq!(CONTEXT_CHECKS_TABLE.0[0] as usize, 4 * 8);
        assert_eq!(INTEGRITY_CHECK_TABLE.0[0] as usize, 3 * 8);
    }
}
