//! Virtual memory management through the shim: physical memory is charged while anything
//! keeps it allocated (a handle reference, a mapping, an exported descriptor), and memory
//! shared between processes is charged once, to its creator. The processes under test are
//! this test binary run again in the slice (`common::client`).

mod common;

use std::ffi::{c_int, c_void};

use common::client::*;
use common::*;

const LIMIT: u64 = 4 * GIB;
const CONTEXT: u64 = 256 * MIB;
const CHUNK: u64 = 256 * MIB;

fn node_with_slice() -> Node {
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    node
}

/// Runs client test `name` in the slice and returns its output.
fn client(name: &str) -> std::process::Output {
    let node = node_with_slice();
    run_client(node.client(name), name)
}

#[test]
fn memory_mapped_then_released_stays_charged_until_unmapped() {
    let name = "memory_mapped_then_released_stays_charged_until_unmapped";
    if is_client(name) {
        // The documented idiom, in a loop: create, map, release at once (the mapping keeps
        // the memory). Eight times the slice's limit is asked for.
        let (cu, _) = Cuda::start();
        let mut mapped = Vec::new();
        let mut refused = 0;
        for _ in 0..(8 * LIMIT / CHUNK) {
            match cu.create(CHUNK) {
                Ok(h) => {
                    let va = cu.reserve(CHUNK);
                    cu.map(va, CHUNK, h);
                    cu.release(h);
                    mapped.push(va);
                }
                Err(rc) => {
                    refused = rc;
                    break;
                }
            }
        }
        report("mapped", mapped.len());
        report("refused", refused);
        report("used_full", cu.used());
        for (i, &va) in mapped.iter().enumerate() {
            cu.unmap(va, CHUNK);
            if i == 0 {
                report("used_after_one_unmap", cu.used());
            }
        }
        report("used_after", cu.used());
        // A reservation freed with its mapping still in it: the mapping goes with it.
        let h = cu.create(CHUNK).unwrap();
        let va = cu.reserve(CHUNK);
        cu.map(va, CHUNK, h);
        cu.release(h);
        report("used_mapped", cu.used());
        // SAFETY: a reservation the driver made.
        check_ok(unsafe { (cu.cuMemAddressFree)(va, CHUNK as usize) });
        report("used_address_freed", cu.used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    let mapped = value(&out, "mapped");
    assert_eq!(value(&out, "refused"), u64::from(OUT_OF_MEMORY), "mapped {mapped} × 256 MiB in a 4 GiB slice");
    assert_eq!(mapped, (LIMIT - CONTEXT) / CHUNK, "the slice fills exactly");
    assert_eq!(value(&out, "used_full"), CONTEXT + mapped * CHUNK, "cuMemGetInfo counts what is mapped");
    assert_eq!(value(&out, "used_after_one_unmap"), CONTEXT + (mapped - 1) * CHUNK);
    assert_eq!(value(&out, "used_after"), CONTEXT);
    assert_eq!(value(&out, "used_mapped"), CONTEXT + CHUNK);
    assert_eq!(value(&out, "used_address_freed"), CONTEXT);
}

#[test]
fn a_retained_handle_keeps_its_memory_charged() {
    let name = "a_retained_handle_keeps_its_memory_charged";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let h = cu.create(CHUNK).unwrap();
        let va = cu.reserve(2 * CHUNK);
        cu.map(va + CHUNK, CHUNK, h);
        let mut again = 0u64;
        // SAFETY: a live output; an address inside the mapping.
        check_ok(unsafe { (cu.cuMemRetainAllocationHandle)(&mut again, (va + CHUNK + 4096) as *mut c_void) });
        report("same_handle", u8::from(again == h));
        cu.release(h);
        cu.unmap(va + CHUNK, CHUNK);
        report("used_retained", cu.used());
        cu.release(again);
        report("used_released", cu.used());
        // Unmapped first, then released twice: freed at the second release.
        let h = cu.create(CHUNK).unwrap();
        cu.map(va, CHUNK, h);
        // SAFETY: as above.
        check_ok(unsafe { (cu.cuMemRetainAllocationHandle)(&mut again, va as *mut c_void) });
        cu.unmap(va, CHUNK);
        cu.release(h);
        report("used_one_reference", cu.used());
        cu.release(again);
        report("used_after", cu.used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    assert_eq!(value(&out, "same_handle"), 1);
    assert_eq!(value(&out, "used_retained"), CONTEXT + CHUNK, "a retained reference keeps the memory");
    assert_eq!(value(&out, "used_released"), CONTEXT);
    assert_eq!(value(&out, "used_one_reference"), CONTEXT + CHUNK);
    assert_eq!(value(&out, "used_after"), CONTEXT);
}

/// `cuMemExportToShareableHandle` as a POSIX descriptor.
fn export(cu: &Cuda, h: u64) -> c_int {
    let mut fd: c_int = -1;
    // SAFETY: a live `int` output and a handle the driver made.
    check_ok(unsafe { (cu.cuMemExportToShareableHandle)((&raw mut fd).cast(), h, POSIX_FD, 0) });
    fd
}

fn import(cu: &Cuda, fd: c_int) -> u64 {
    let mut h = 0u64;
    // SAFETY: a live output; the descriptor is passed as the pointer-sized handle.
    check_ok(unsafe { (cu.cuMemImportFromShareableHandle)(&mut h, fd as usize as *mut c_void, POSIX_FD) });
    h
}

fn close(fd: c_int) {
    // SAFETY: a descriptor the test owns.
    assert_eq!(unsafe { libc::close(fd) }, 0);
}

#[test]
fn an_exported_descriptor_keeps_its_memory_charged_while_open() {
    let name = "an_exported_descriptor_keeps_its_memory_charged_while_open";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        // Create, export, release, keep the descriptor: the memory stays allocated.
        let mut fds = Vec::new();
        let refused = loop {
            match cu.create(CHUNK) {
                Ok(h) => {
                    fds.push(export(&cu, h));
                    cu.release(h);
                }
                Err(rc) => break rc,
            }
            if fds.len() as u64 > 2 * LIMIT / CHUNK {
                break 0;
            }
        };
        report("exported", fds.len());
        report("refused", refused);
        report("used_full", cu.used());
        close(fds.pop().unwrap());
        report("used_one_closed", cu.used());
        // A charge refused finds what closed descriptors no longer keep.
        for fd in fds.drain(..) {
            close(fd);
        }
        let h = cu.create(LIMIT - CONTEXT).unwrap();
        report("used_refilled", cu.used());
        cu.release(h);
        // An import of its own export is a reference to the same memory: not charged twice,
        // and charged while it lasts.
        let h = cu.create(CHUNK).unwrap();
        let fd = export(&cu, h);
        let imported = import(&cu, fd);
        report("used_imported", cu.used());
        close(fd);
        cu.release(h);
        report("used_import_left", cu.used());
        let va = cu.reserve(CHUNK);
        cu.map(va, CHUNK, imported);
        cu.release(imported);
        report("used_import_mapped", cu.used());
        cu.unmap(va, CHUNK);
        report("used_after", cu.used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    let exported = value(&out, "exported");
    assert_eq!(value(&out, "refused"), u64::from(OUT_OF_MEMORY), "{exported} × 256 MiB exported in a 4 GiB slice");
    assert_eq!(exported, (LIMIT - CONTEXT) / CHUNK);
    assert_eq!(value(&out, "used_full"), CONTEXT + exported * CHUNK);
    assert_eq!(value(&out, "used_one_closed"), CONTEXT + (exported - 1) * CHUNK);
    assert_eq!(value(&out, "used_refilled"), LIMIT);
    assert_eq!(value(&out, "used_imported"), CONTEXT + CHUNK);
    assert_eq!(value(&out, "used_import_left"), CONTEXT + CHUNK, "the import is a reference");
    assert_eq!(value(&out, "used_import_mapped"), CONTEXT + CHUNK);
    assert_eq!(value(&out, "used_after"), CONTEXT);
}

const IMPORTER: &str = "memory_shared_with_another_process_importer";

#[test]
fn memory_shared_with_another_process_is_charged_once_to_its_creator() {
    let name = "memory_shared_with_another_process_is_charged_once_to_its_creator";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let h = cu.create(GIB).unwrap();
        let va = cu.reserve(GIB);
        cu.map(va, GIB, h);
        // SAFETY: a mapped range and one access descriptor.
        check_ok(unsafe { (cu.cuMemSetAccess)(va, GIB as usize, &read_write(), 1) });
        let text = b"shared through a descriptor";
        // SAFETY: the range is mapped and writable; the buffer is live.
        check_ok(unsafe { (cu.cuMemcpyHtoD_v2)(va, text.as_ptr().cast(), text.len()) });
        let fd = export(&cu, h);
        // Passed to the importer by inheritance; it runs in the same slice.
        // SAFETY: clearing close-on-exec of our own descriptor.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([IMPORTER, "--exact", "--nocapture", "--test-threads=1"])
            .env("GPUSLICE_TEST_CLIENT", IMPORTER)
            .env("IMPORT_FD", fd.to_string())
            .env("WANT", std::str::from_utf8(text).unwrap())
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && stdout(&out).contains("test result: ok. 1 passed"), "the importer failed");
        report("exporter_used", cu.used());
        close(fd);
        cu.unmap(va, GIB);
        cu.release(h);
        report("exporter_after", cu.used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    assert_eq!(value(&out, "importer_sees"), 2 * CONTEXT + GIB, "both contexts and the shared GiB, once");
    assert_eq!(value(&out, "importer_mapped"), 2 * CONTEXT + GIB, "mapping an import charges nothing");
    assert_eq!(value(&out, "exporter_used"), CONTEXT + GIB);
    assert_eq!(value(&out, "exporter_after"), CONTEXT);
}

#[test]
fn memory_shared_with_another_process_importer() {
    if !is_client(IMPORTER) {
        return; // run by memory_shared_with_another_process_is_charged_once_to_its_creator
    }
    let fd: c_int = std::env::var("IMPORT_FD").unwrap().parse().unwrap();
    let want = std::env::var("WANT").unwrap();
    let (cu, _) = Cuda::start();
    let h = import(&cu, fd);
    report("importer_sees", cu.used());
    let va = cu.reserve(GIB);
    cu.map(va, GIB, h);
    // SAFETY: a mapped range and one access descriptor.
    check_ok(unsafe { (cu.cuMemSetAccess)(va, GIB as usize, &read_write(), 1) });
    report("importer_mapped", cu.used());
    let mut back = vec![0u8; want.len()];
    // SAFETY: a readable mapped range and a live buffer of that length.
    check_ok(unsafe { (cu.cuMemcpyDtoH_v2)(back.as_mut_ptr().cast(), va, back.len()) });
    assert_eq!(back, want.as_bytes());
    cu.unmap(va, GIB);
    cu.release(h);
}
