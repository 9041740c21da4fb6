//! A module image whose fat binary entries are compressed (zstd, as PyTorch's are; LZ4, the
//! 12.x toolchain's `-compress-all`) is charged for what it decompresses to: a cubin with a
//! large `__device__` array (a `NOBITS` `.nv.global` section) is refused past the slice and
//! charged within it, whatever the entry header states as its uncompressed length. An entry
//! that does not decode counts nothing and the load goes to the driver. The simulated driver
//! finds a module's `__device__` variables by name in such images (`cuModuleGetGlobal_v2`), and
//! copies reach them. The process under test is this test binary run again in the slice
//! (`common::client`).

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

/// A fat binary of one ELF entry compressed per `flags` (0x8011: zstd, 0x2011: LZ4), whose
/// header states `stated` as its uncompressed length.
fn fatbin(flags: u64, plain: &[u8], stated: u64) -> Vec<u8> {
    fatbin_of(2, flags, plain, stated)
}

fn used() -> u64 {
    slice_usage("slice0")
}

#[test]
fn compressed_fat_binaries_are_charged_for_what_they_decompress_to() {
    let name = "compressed_fat_binaries_are_charged_for_what_they_decompress_to";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        // SAFETY: the driver functions of these names, with cuda.h's signatures.
        let (load, unload, get_global) = unsafe {
            (
                std::mem::transmute::<*mut c_void, sym::cuModuleLoadData>(symbol("cuModuleLoadData")),
                std::mem::transmute::<*mut c_void, sym::cuModuleUnload>(symbol("cuModuleUnload")),
                std::mem::transmute::<*mut c_void, sym::cuModuleGetGlobal_v2>(symbol("cuModuleGetGlobal_v2")),
            )
        };
        let module = |image: &[u8]| {
            let mut m = std::ptr::null_mut();
            // SAFETY: a live output and an image that outlives the call.
            match unsafe { load(&mut m, image.as_ptr().cast()) } {
                SUCCESS => Ok(m),
                rc => Err(rc),
            }
        };
        report("start", used());
        for (codec, flags) in [("zstd", 0x8011u64), ("lz4", 0x2011)] {
            let big = cubin(8 * GIB);
            // The header understates its length: it changes nothing.
            report(&format!("{codec}_8g"), module(&fatbin(flags, &big, 64)).unwrap_err());
            report(&format!("{codec}_used_after_refusal"), used());
            let m = module(&fatbin(flags, &cubin(GIB), 64)).unwrap();
            report(&format!("{codec}_used_module"), used());
            // SAFETY: the module just loaded.
            check_ok(unsafe { unload(m) });
            report(&format!("{codec}_used_unloaded"), used());
        }
        // A variable of a compressed PTX image, found by name, and bytes copied through it.
        let ptx = b".version 8.0\n.target sm_90\n.visible .global .align 8 .b8 table[4096];\n\0";
        let m = module(&fatbin_of(1, 0x8011, ptx, 0)).unwrap();
        let (mut dptr, mut bytes) = (0u64, 0usize);
        // SAFETY: live outputs, a loaded module and NUL-terminated names.
        report("global", unsafe { get_global(&mut dptr, &mut bytes, m, c"table".as_ptr()) });
        report("global_bytes", bytes);
        // SAFETY: as above.
        report("missing", unsafe { get_global(&mut dptr, &mut bytes, m, c"other".as_ptr()) });
        let (put, mut got) = (*b"gpuslice globals", [0u8; 16]);
        // SAFETY: 16 bytes at the end of the 4096-byte variable, from and into live buffers.
        unsafe {
            check_ok((cu.cuMemcpyHtoD_v2)(dptr + 4080, put.as_ptr().cast(), 16));
            check_ok((cu.cuMemcpyDtoH_v2)(got.as_mut_ptr().cast(), dptr + 4080, 16));
            report("copied_back", u64::from(got == put));
            report("past_the_end", (cu.cuMemcpyHtoD_v2)(dptr + 4090, put.as_ptr().cast(), 16));
        }
        // SAFETY: the module just loaded.
        check_ok(unsafe { unload(m) });
        // Bytes that do not decode count nothing; the driver has its say.
        let mut junk = fatbin(0x8011, &cubin(GIB), 0);
        let at = 16 + 64;
        junk[at..at + 4].copy_from_slice(&[0xFF; 4]);
        report("junk", module(&junk).map_or_else(u64::from, |_| 0));
        report("used_junk", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let mut client = node.client(name);
    client.env("GPUSLICE_LOG", "warn");
    let out = run_client(client, name);
    let v = |key: &str| value(&out, key);
    assert_eq!(v("start"), CONTEXT);
    for codec in ["zstd", "lz4"] {
        assert_eq!(v(&format!("{codec}_8g")), u64::from(OUT_OF_MEMORY), "{codec}: an 8 GiB __device__ array");
        assert_eq!(v(&format!("{codec}_used_after_refusal")), CONTEXT);
        assert_eq!(v(&format!("{codec}_used_module")), CONTEXT + GIB + CODE, "{codec}");
        assert_eq!(v(&format!("{codec}_used_unloaded")), CONTEXT);
    }
    assert_eq!(v("global"), u64::from(SUCCESS));
    assert_eq!(v("global_bytes"), 4096);
    assert_eq!(v("missing"), u64::from(CUDA_ERROR_NOT_FOUND));
    assert_eq!(v("copied_back"), 1);
    assert_eq!(v("past_the_end"), u64::from(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(v("junk"), 0, "the simulated driver loads any image");
    assert!(v("used_junk") >= CONTEXT);
    let log = stderr(&out);
    assert_eq!(log.matches("1 compressed entries did not decode").count(), 1, "one line for the entry: {log}");
}
