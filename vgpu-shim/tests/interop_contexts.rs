//! Graphics interop contexts (`cuGLCtxCreate`, `cuVDPAUCtxCreate`, each in both exported
//! variants) are charged like any context: in a 1 GiB slice three fit beside the primary
//! context, the fourth is refused with `CUDA_ERROR_OUT_OF_MEMORY` before the driver makes it,
//! and `cuCtxDestroy` gives each back. Each variant is reached both ways a program finds it:
//! `dlsym` of its exported name, and `cuGetProcAddress` of the base name at the CUDA versions
//! whose `PFN_…` typedefs name it, which must hand out the same wrapper. The process under test
//! is this test binary run again in the slice (`common::client`).

mod common;

use std::ffi::{CString, c_void};

use common::client::*;
use common::*;
use gpuslice_cuda_abi::cuda::sym;

const LIMIT: u64 = GIB;
/// What the shim charges for a context.
const CONTEXT: u64 = 256 * MIB;

/// `name` from `libcuda.so.1` as a program finds it.
fn symbol(name: &str) -> *mut c_void {
    // SAFETY: loading the (simulated) driver, as any CUDA program does.
    let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
    assert!(!handle.is_null());
    let c = CString::new(name).unwrap();
    // SAFETY: a handle from dlopen and a NUL-terminated name.
    let f = unsafe { libc::dlsym(handle, c.as_ptr()) };
    assert!(!f.is_null(), "{name} is not exported");
    f
}

/// `cuGetProcAddress(name, version, CU_GET_PROC_ADDRESS_DEFAULT)`.
fn proc_address(name: &str, version: i32) -> Result<*mut c_void, CUresult> {
    // SAFETY: cuGetProcAddress_v2 has this signature.
    let gpa = unsafe { std::mem::transmute::<*mut c_void, sym::cuGetProcAddress_v2>(symbol("cuGetProcAddress_v2")) };
    let c = CString::new(name).unwrap();
    let mut pfn = std::ptr::null_mut();
    let mut status = 0;
    // SAFETY: a NUL-terminated name and live outputs.
    match unsafe { gpa(c.as_ptr(), &mut pfn, version, 0, &mut status) } {
        SUCCESS if !pfn.is_null() => Ok(pfn),
        SUCCESS => Err(CUDA_ERROR_NOT_FOUND),
        rc => Err(rc),
    }
}

/// (exported symbol, base name, a CUDA version whose typedef names it) for each variant.
const VARIANTS: &[(&str, &str, i32)] = &[
    ("cuGLCtxCreate", "cuGLCtxCreate", 2000),
    ("cuGLCtxCreate_v2", "cuGLCtxCreate", 3020),
    ("cuVDPAUCtxCreate", "cuVDPAUCtxCreate", 3010),
    ("cuVDPAUCtxCreate_v2", "cuVDPAUCtxCreate", 3020),
];

/// One context from `f`, the function of the exported symbol `exported` (whose signature
/// depends on whether it is a GL or a VDPAU one).
fn create(exported: &str, f: *mut c_void) -> Result<CUcontext, CUresult> {
    let mut ctx = std::ptr::null_mut();
    // SAFETY: `f` is `exported`'s function, of the signature its typedef gives; live output,
    // and a VDPAU device and lookup the simulated driver does not read.
    let rc = unsafe {
        if exported.starts_with("cuGL") {
            std::mem::transmute::<*mut c_void, sym::cuGLCtxCreate_v2>(f)(&mut ctx, 0, 0)
        } else {
            std::mem::transmute::<*mut c_void, sym::cuVDPAUCtxCreate_v2>(f)(&mut ctx, 0, 0, 1, std::ptr::null_mut())
        }
    };
    match rc {
        SUCCESS => Ok(ctx),
        rc => Err(rc),
    }
}

#[test]
fn gl_and_vdpau_contexts_are_charged_as_contexts() {
    let name = "gl_and_vdpau_contexts_are_charged_as_contexts";
    if is_client(name) {
        let (cu, primary) = Cuda::start();
        for (i, &(exported, base, version)) in VARIANTS.iter().enumerate() {
            let by_dlsym = symbol(exported);
            let by_proc = proc_address(base, version).unwrap_or_else(|rc| panic!("{base} @ {version}: {rc}"));
            report(&format!("same_{i}"), u8::from(by_dlsym == by_proc));
            for (way, f) in [("dlsym", by_dlsym), ("proc", by_proc)] {
                let mut made = Vec::new();
                let refused = loop {
                    match create(exported, f) {
                        Ok(ctx) => made.push(ctx),
                        Err(rc) => break rc,
                    }
                    if made.len() == 8 {
                        break SUCCESS; // not limited: the assertions below say so
                    }
                };
                report(&format!("created_{i}_{way}"), made.len());
                report(&format!("refused_{i}_{way}"), refused);
                report(&format!("used_full_{i}_{way}"), slice_usage("slice0"));
                // SAFETY: a context created above.
                check_ok(unsafe { (cu.cuCtxDestroy_v2)(made.pop().unwrap()) });
                report(&format!("used_one_destroyed_{i}_{way}"), slice_usage("slice0"));
                for ctx in made {
                    // SAFETY: contexts created above.
                    check_ok(unsafe { (cu.cuCtxDestroy_v2)(ctx) });
                }
                cu.enter(primary);
                report(&format!("used_end_{i}_{way}"), slice_usage("slice0"));
            }
        }
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let out = run_client(node.client(name), name);
    let v = |key: &str| value(&out, key);
    for (i, &(exported, base, version)) in VARIANTS.iter().enumerate() {
        assert_eq!(v(&format!("same_{i}")), 1, "cuGetProcAddress({base}, {version}) is not dlsym({exported})");
        for way in ["dlsym", "proc"] {
            let at = format!("{exported} by {way}");
            // 1 GiB: the primary context and three more of 256 MiB.
            assert_eq!(v(&format!("created_{i}_{way}")), 3, "{at}");
            assert_eq!(v(&format!("refused_{i}_{way}")), u64::from(OUT_OF_MEMORY), "{at}");
            assert_eq!(v(&format!("used_full_{i}_{way}")), LIMIT, "{at}");
            assert_eq!(v(&format!("used_one_destroyed_{i}_{way}")), LIMIT - CONTEXT, "{at}");
            assert_eq!(v(&format!("used_end_{i}_{way}")), CONTEXT, "{at}");
        }
    }
}
