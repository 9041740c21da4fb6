//! What goes with a context: destroying a created context, resetting a primary one
//! (`cuDevicePrimaryCtxReset` and `_v2`) or releasing it for the last time frees everything
//! allocated in it, and the slice gets that memory back at once. Physical memory
//! (`cuMemCreate`) is not a context's and stays. The process under test is this test binary
//! run again in the slice (`common::client`).

mod common;

use std::ffi::c_void;

use common::client::*;
use common::*;
use gpuslice_cuda_abi::cuda::sym;

const LIMIT: u64 = 4 * GIB;
/// What the shim charges for a context.
const CONTEXT: u64 = 256 * MIB;
/// Physical memory that outlives the context it was created under.
const PHYSICAL: u64 = 256 * MIB;

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

/// What the slice has in use, from its region.
fn used() -> u64 {
    slice_usage("slice0")
}

/// Allocates in the current context through every path that belongs to a context (device,
/// managed and pitched memory, an array, a mipmapped array, a stream-ordered allocation)
/// and returns the bytes the plain paths take (all multiples of the 2 MiB granularity).
fn allocate_in_current_context(cu: &Cuda) -> u64 {
    let (mut p, mut pitch) = (0u64, 0usize);
    let (mut array, mut mipmap, mut pool) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    let desc = CUDA_ARRAY_DESCRIPTOR { Width: 1024, Height: 1024, Format: CU_AD_FORMAT_FLOAT, NumChannels: 4 };
    let desc3d = CUDA_ARRAY3D_DESCRIPTOR {
        Width: 2048,
        Height: 1024,
        Depth: 0,
        Format: CU_AD_FORMAT_FLOAT,
        NumChannels: 1,
        Flags: 0,
    };
    // SAFETY: live outputs and descriptors.
    unsafe {
        check_ok((cu.cuMemAlloc_v2)(&mut p, (256 * MIB) as usize));
        check_ok((cu.cuMemAllocManaged)(&mut p, (128 * MIB) as usize, CU_MEM_ATTACH_GLOBAL));
        check_ok((cu.cuMemAllocPitch_v2)(&mut p, &mut pitch, MIB as usize, 64, 4));
        assert_eq!(pitch as u64, MIB);
        check_ok((cu.cuArrayCreate_v2)(&mut array, &desc));
        check_ok((cu.cuMipmappedArrayCreate)(&mut mipmap, &desc3d, 1));
        check_ok((cu.cuMemAllocAsync)(&mut p, (64 * MIB) as usize, std::ptr::null_mut()));
        check_ok((cu.cuStreamSynchronize)(std::ptr::null_mut()));
        check_ok((cu.cuDeviceGetDefaultMemPool)(&mut pool, 0));
    }
    256 * MIB + 128 * MIB + 64 * MIB + 16 * MIB + 8 * MIB
}

/// What device 0's default pool reserves now, as the driver says.
fn pool_reserved(cu: &Cuda) -> u64 {
    let (mut pool, mut v) = (std::ptr::null_mut(), 0u64);
    // SAFETY: live outputs; RESERVED_MEM_CURRENT writes a cuuint64_t.
    unsafe {
        check_ok((cu.cuDeviceGetDefaultMemPool)(&mut pool, 0));
        check_ok((cu.cuMemPoolGetAttribute)(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, (&raw mut v).cast::<c_void>()));
    }
    v
}

/// Takes `bytes` in one allocation and gives it back: `true` if the slice had room.
fn fits(cu: &Cuda, bytes: u64) -> bool {
    match cu.alloc(bytes) {
        Ok(p) => {
            cu.free(p);
            true
        }
        Err(rc) => {
            assert_eq!(rc, OUT_OF_MEMORY);
            false
        }
    }
}

#[test]
fn resetting_the_primary_context_gives_back_what_was_allocated_in_it() {
    let name = "resetting_the_primary_context_gives_back_what_was_allocated_in_it";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let resets: [(&str, sym::cuDevicePrimaryCtxReset); 2] =
            [("reset", cu.cuDevicePrimaryCtxReset), ("reset_v2", cu.cuDevicePrimaryCtxReset_v2)];
        for (round, reset) in resets {
            let physical = cu.create(PHYSICAL).unwrap();
            let plain = allocate_in_current_context(&cu);
            report(&format!("{round}_allocated"), plain);
            report(&format!("{round}_pool_before"), pool_reserved(&cu));
            report(&format!("{round}_used_before"), used());
            // SAFETY: a device the driver knows.
            check_ok(unsafe { reset(0) });
            // Still retained: the context comes back empty and keeps its one charge.
            report(&format!("{round}_used_after"), used());
            report(&format!("{round}_pool_after"), pool_reserved(&cu));
            cu.release(physical);
            report(&format!("{round}_used_released"), used());
            report(&format!("{round}_refill"), u8::from(fits(&cu, LIMIT - CONTEXT - pool_reserved(&cu))));
        }
        // SAFETY: the retain `Cuda::start` made.
        check_ok(unsafe { (cu.cuDevicePrimaryCtxRelease_v2)(0) });
        report("used_released", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    for round in ["reset", "reset_v2"] {
        let v = |key: &str| value(&out, &format!("{round}_{key}"));
        let pool = v("pool_after");
        assert_eq!(v("used_before"), CONTEXT + PHYSICAL + v("allocated") + v("pool_before"), "{round}");
        assert_eq!(
            v("used_after"),
            CONTEXT + PHYSICAL + pool,
            "{round}: what the reset freed is still charged (the pool's charge is what it reserves)"
        );
        assert_eq!(v("used_released"), CONTEXT + pool, "{round}");
        assert_eq!(v("refill"), 1, "{round}: a false CUDA_ERROR_OUT_OF_MEMORY after the reset");
    }
    assert_eq!(value(&out, "used_released"), value(&out, "reset_v2_pool_after"));
}

#[test]
fn destroying_a_context_gives_back_what_was_allocated_in_it() {
    let name = "destroying_a_context_gives_back_what_was_allocated_in_it";
    if is_client(name) {
        let (cu, primary) = Cuda::start();
        let kept = cu.alloc(64 * MIB).unwrap();
        let mut ctx = std::ptr::null_mut();
        // SAFETY: a live output; the new context becomes current.
        check_ok(unsafe { (cu.cuCtxCreate_v2)(&mut ctx, 0, 0) });
        let physical = cu.create(PHYSICAL).unwrap();
        let plain = allocate_in_current_context(&cu);
        report("allocated", plain);
        report("pool_before", pool_reserved(&cu));
        report("used_before", used());
        // SAFETY: the primary context is not cuCtxDestroy's: refused, nothing freed.
        let refused = unsafe { (cu.cuCtxDestroy_v2)(primary as CUcontext) };
        report("refused", refused);
        report("used_refused", used());
        // SAFETY: the context created above.
        check_ok(unsafe { (cu.cuCtxDestroy_v2)(ctx) });
        cu.enter(primary);
        report("pool_after", pool_reserved(&cu));
        report("used_after", used());
        cu.release(physical);
        report("refill", u8::from(fits(&cu, LIMIT - CONTEXT - 64 * MIB - pool_reserved(&cu))));
        cu.free(kept);
        report("used_end", used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    let v = |key: &str| value(&out, key);
    let before = CONTEXT + 64 * MIB + CONTEXT + PHYSICAL + v("allocated") + v("pool_before");
    assert_eq!(v("used_before"), before);
    assert_eq!(v("refused"), u64::from(CUDA_ERROR_INVALID_CONTEXT));
    assert_eq!(v("used_refused"), before, "a destroy the driver refused gave something back");
    assert_eq!(
        v("used_after"),
        CONTEXT + 64 * MIB + PHYSICAL + v("pool_after"),
        "the destroyed context or what was allocated in it is still charged; the primary context's is not"
    );
    assert_eq!(v("refill"), 1, "a false CUDA_ERROR_OUT_OF_MEMORY after the destroy");
    assert_eq!(v("used_end"), CONTEXT + v("pool_after"));
}

#[test]
fn the_last_release_of_the_primary_context_gives_back_what_was_allocated_in_it() {
    let name = "the_last_release_of_the_primary_context_gives_back_what_was_allocated_in_it";
    if is_client(name) {
        let (cu, _) = Cuda::start();
        let mut again = std::ptr::null_mut();
        // SAFETY: a live output: a second retain of the same context.
        check_ok(unsafe { (cu.cuDevicePrimaryCtxRetain)(&mut again, 0) });
        cu.alloc(512 * MIB).unwrap();
        // SAFETY: one of the two retains.
        check_ok(unsafe { (cu.cuDevicePrimaryCtxRelease_v2)(0) });
        report("used_one_retain_left", used());
        // SAFETY: the other.
        check_ok(unsafe { (cu.cuDevicePrimaryCtxRelease_v2)(0) });
        report("used_released", used());
        // SAFETY: a live output; the handle of a primary context stays the same.
        check_ok(unsafe { (cu.cuDevicePrimaryCtxRetain)(&mut again, 0) });
        cu.enter(again as usize);
        report("refill", u8::from(fits(&cu, LIMIT - CONTEXT)));
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let out = client(name);
    assert_eq!(value(&out, "used_one_retain_left"), CONTEXT + 512 * MIB);
    assert_eq!(value(&out, "used_released"), 0, "the released context or its memory is still charged");
    assert_eq!(value(&out, "refill"), 1, "a false CUDA_ERROR_OUT_OF_MEMORY after the release");
}
