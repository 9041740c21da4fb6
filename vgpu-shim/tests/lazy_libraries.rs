//! A library whose fat binary entries are compressed (zstd, as PyTorch's are) is charged for
//! what they decompress to at its first use in a context, as a driver loads a library lazily:
//! loading one with an 8 GiB `__device__` array works, its first use (a launch of its
//! `CUkernel`, `cuLibraryGetModule`) is refused in a 4 GiB slice; one with 1 GiB is charged at
//! the first launch, once, and given back on unload; one whose image is rewritten between its
//! load and its first use (a tiny array in place of the 1 GiB one) is refused, not charged small.
//! With `CUDA_MODULE_LOADING=EAGER` the load itself is charged. The process under test is this
//! test binary run again in the slice (`common::client`).

mod common;

use std::ffi::c_void;

use common::client::*;
use common::images::*;
use common::*;
use gpuslice_cuda_abi::cuda::sym;

const LIMIT: u64 = 4 * GIB;
/// What the shim charges for a context.
const CONTEXT: u64 = 256 * MIB;
/// What the test cubin's code takes: one 1000-byte `.text` section, 256-aligned, in 64 KiB.
const CODE: u64 = 64 << 10;

fn used() -> u64 {
    slice_usage("slice0")
}

#[test]
fn compressed_libraries_are_charged_at_their_first_use() {
    let name = "compressed_libraries_are_charged_at_their_first_use";
    if is_client(name) {
        let (_cu, _) = Cuda::start();
        // SAFETY: the driver functions of these names, with cuda.h's signatures.
        let (load, unload, get_kernel, get_module, get_function, launch) = unsafe {
            (
                std::mem::transmute::<*mut c_void, sym::cuLibraryLoadData>(symbol("cuLibraryLoadData")),
                std::mem::transmute::<*mut c_void, sym::cuLibraryUnload>(symbol("cuLibraryUnload")),
                std::mem::transmute::<*mut c_void, sym::cuLibraryGetKernel>(symbol("cuLibraryGetKernel")),
                std::mem::transmute::<*mut c_void, sym::cuLibraryGetModule>(symbol("cuLibraryGetModule")),
                std::mem::transmute::<*mut c_void, sym::cuKernelGetFunction>(symbol("cuKernelGetFunction")),
                std::mem::transmute::<*mut c_void, sym::cuLaunchKernel>(symbol("cuLaunchKernel")),
            )
        };
        let library = |image: &[u8]| {
            let mut l = std::ptr::null_mut();
            // SAFETY: a live output and an image that outlives the call; no options.
            let rc = unsafe {
                load(
                    &mut l,
                    image.as_ptr().cast(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                )
            };
            (rc, l)
        };
        let kernel = |l| {
            let mut k = std::ptr::null_mut();
            // SAFETY: a live output, a loaded library and a NUL-terminated name.
            check_ok(unsafe { get_kernel(&mut k, l, c"k".as_ptr()) });
            k
        };
        // SAFETY: a kernel handle as cuLaunchKernel takes one (CUDA 13's runtime does so),
        // one block, no parameters, the default stream.
        let run = |k: gpuslice_cuda_abi::cuda::CUkernel| unsafe {
            launch(k.cast(), 1, 1, 1, 1, 1, 1, 0, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut())
        };
        report("start", used());
        // Alive until the first use, as a program keeps an image it registered.
        let big_image = fatbin_of(2, 0x8011, &cubin(8 * GIB), 64);
        let (rc, big) = library(&big_image);
        report("load_8g", rc);
        report("used_8g_loaded", used());
        if rc != SUCCESS {
            return;
        }
        let k = kernel(big);
        report("launch_8g", run(k));
        report("used_8g_refused", used());
        let mut m = std::ptr::null_mut();
        // SAFETY: a live output and a loaded library.
        report("module_8g", unsafe { get_module(&mut m, big) });
        let mut f = std::ptr::null_mut();
        // SAFETY: a live output and a kernel of a loaded library.
        report("function_8g", unsafe { get_function(&mut f, k) });
        // SAFETY: the library just loaded.
        check_ok(unsafe { unload(big) });
        let image = fatbin_of(2, 0x8011, &cubin(GIB), 64);
        let (rc, small) = library(&image);
        check_ok(rc);
        report("used_1g_loaded", used());
        // Kept unchanged until the first use, as a program does (a rewritten one:
        // `rewritten_images_are_refused_at_the_first_use`).
        let k = kernel(small);
        report("launch_1g", run(k));
        report("used_1g_launched", used());
        report("launch_1g_again", run(k));
        // SAFETY: a live output and a loaded library.
        check_ok(unsafe { get_module(&mut m, small) });
        report("used_1g_module", used());
        // SAFETY: the library just loaded.
        check_ok(unsafe { unload(small) });
        report("used_1g_unloaded", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let out = run_client(node.client(name), name);
    let v = |key: &str| value(&out, key);
    let oom = u64::from(OUT_OF_MEMORY);
    assert_eq!(v("start"), CONTEXT);
    assert_eq!(v("load_8g"), u64::from(SUCCESS), "loaded lazily: nothing reserved yet");
    assert_eq!(v("used_8g_loaded"), CONTEXT);
    assert_eq!(v("launch_8g"), oom, "the first launch loads it");
    assert_eq!(v("used_8g_refused"), CONTEXT);
    assert_eq!(v("module_8g"), oom);
    assert_eq!(v("function_8g"), oom);
    assert_eq!(v("used_1g_loaded"), CONTEXT);
    assert_eq!(v("launch_1g"), u64::from(SUCCESS));
    assert_eq!(v("used_1g_launched"), CONTEXT + GIB + CODE);
    assert_eq!(v("launch_1g_again"), u64::from(SUCCESS));
    assert_eq!(v("used_1g_module"), CONTEXT + GIB + CODE, "charged once");
    assert_eq!(v("used_1g_unloaded"), CONTEXT);

    // Eager loading: the load reserves, and is refused.
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let mut client = node.client(name);
    client.env("CUDA_MODULE_LOADING", "EAGER");
    let out = run_client(client, name);
    assert_eq!(value(&out, "load_8g"), oom, "CUDA_MODULE_LOADING=EAGER");
    assert_eq!(value(&out, "used_8g_loaded"), CONTEXT);
}

#[test]
fn rewritten_images_are_refused_at_the_first_use() {
    let name = "rewritten_images_are_refused_at_the_first_use";
    if is_client(name) {
        let (_cu, _) = Cuda::start();
        // SAFETY: the driver functions of these names, with cuda.h's signatures.
        let (load, unload, get_kernel, launch) = unsafe {
            (
                std::mem::transmute::<*mut c_void, sym::cuLibraryLoadData>(symbol("cuLibraryLoadData")),
                std::mem::transmute::<*mut c_void, sym::cuLibraryUnload>(symbol("cuLibraryUnload")),
                std::mem::transmute::<*mut c_void, sym::cuLibraryGetKernel>(symbol("cuLibraryGetKernel")),
                std::mem::transmute::<*mut c_void, sym::cuLaunchKernel>(symbol("cuLaunchKernel")),
            )
        };
        let mut image = fatbin_of(2, 0x8011, &cubin(GIB), 64);
        let mut l = std::ptr::null_mut();
        // SAFETY: a live output and an image that outlives the call; no options.
        check_ok(unsafe {
            load(
                &mut l,
                image.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        });
        report("used_loaded", used());
        // The tenant swaps in an entry with a tiny array, same length, before the first use.
        let tiny = fatbin_of(2, 0x8011, &cubin(64), 64);
        assert!(tiny.len() <= image.len());
        image.fill(0);
        image[..tiny.len()].copy_from_slice(&tiny);
        let mut k = std::ptr::null_mut();
        // SAFETY: a live output, a loaded library and a NUL-terminated name.
        check_ok(unsafe { get_kernel(&mut k, l, c"k".as_ptr()) });
        // SAFETY: a kernel handle as cuLaunchKernel takes one, one block, no parameters.
        let run = || unsafe {
            launch(k.cast(), 1, 1, 1, 1, 1, 1, 0, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut())
        };
        report("launch", run());
        report("used_refused", used());
        report("launch_again", run());
        // SAFETY: the library just loaded.
        check_ok(unsafe { unload(l) });
        report("used_unloaded", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let out = run_client(node.client(name), name);
    let v = |key: &str| value(&out, key);
    assert_eq!(v("used_loaded"), CONTEXT);
    assert_eq!(v("launch"), u64::from(OUT_OF_MEMORY), "rewritten since the load: refused, not charged small");
    assert_eq!(v("used_refused"), CONTEXT);
    assert_eq!(v("launch_again"), u64::from(OUT_OF_MEMORY));
    assert_eq!(v("used_unloaded"), CONTEXT);
}
