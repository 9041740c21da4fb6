//! One process, many threads: the shim's book and the slice's region under calls that race,
//! addresses the driver hands out again at once, and driver calls that block. The process
//! under test is this test binary itself, run again in the slice as a CUDA program
//! (`common::client`).

mod common;

use std::time::{Duration, Instant};

use common::client::*;
use common::*;

const LIMIT: u64 = 4 * GIB;
/// What the shim charges for a context.
const CONTEXT: u64 = 256 * MIB;

fn node_with_slice() -> Node {
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    node
}

/// What the client's slot held when it exited: the region keeps a dead process's charge
/// until someone reclaims it.
fn dead_slot_usage(node: &Node) -> u64 {
    let slots = node.region("slice0").slots().unwrap();
    let dead: Vec<_> = slots.iter().filter(|s| !s.alive).collect();
    assert_eq!(dead.len(), 1, "one client ran: {slots:?}");
    dead[0].used
}

const PAIRS_THREADS: usize = 8;
const PAIRS: usize = 50_000;

#[test]
fn alloc_free_pairs_on_eight_threads_leave_only_the_context_charged() {
    let name = "alloc_free_pairs_on_eight_threads_leave_only_the_context_charged";
    if is_client(name) {
        let (cu, ctx) = Cuda::start();
        let refused: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..PAIRS_THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        cu.enter(ctx);
                        let mut refused = 0;
                        for _ in 0..PAIRS {
                            match cu.alloc(MIB) {
                                Ok(p) => cu.free(p),
                                Err(_) => refused += 1,
                            }
                        }
                        refused
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        report("refused", refused);
        report("used", cu.used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let node = node_with_slice();
    let started = Instant::now();
    let out = run_client(node.client(name), name);
    println!("{PAIRS_THREADS} threads × {PAIRS} pairs in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(value(&out, "refused"), 0, "a false CUDA_ERROR_OUT_OF_MEMORY");
    assert_eq!(value(&out, "used"), CONTEXT, "the slice counts memory nobody holds");
    assert_eq!(dead_slot_usage(&node), CONTEXT);
}

/// A test's directory for held calls (`FAKEGPU_HOLD_DIR`), inside the node's.
fn holds(node: &Node) -> std::path::PathBuf {
    let dir = node.dir.path().join("holds");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_address_freed_and_handed_out_again_at_once_is_charged_to_its_new_owner() {
    let name = "an_address_freed_and_handed_out_again_at_once_is_charged_to_its_new_owner";
    const SIZE: u64 = 64 * MIB;
    if is_client(name) {
        let (cu, ctx) = Cuda::start();
        let p = cu.alloc(SIZE).unwrap();
        std::thread::scope(|scope| {
            // Thread A frees p; the driver frees it and then holds the call, as if A were
            // descheduled right after the driver returned.
            let freeing = scope.spawn(|| {
                cu.enter(ctx);
                cu.free(p);
            });
            wait_for(&hold_dir().join("cuMemFree_v2.held"), Duration::from_secs(30));
            // Meanwhile this thread gets the same address for an allocation of its own.
            let q = cu.alloc(SIZE).unwrap();
            report("reused", u8::from(q == p));
            std::fs::write(hold_dir().join("cuMemFree_v2.release"), b"").unwrap();
            freeing.join().unwrap();
            report("used_with_q", cu.used());
            cu.free(q);
        });
        report("used_after", cu.used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let node = node_with_slice();
    let mut cmd = node.client(name);
    cmd.env("FAKEGPU_REUSE_ADDRESSES", "1").env("FAKEGPU_HOLD", "cuMemFree_v2").env("FAKEGPU_HOLD_DIR", holds(&node));
    let out = run_client(cmd, name);
    assert_eq!(value(&out, "reused"), 1, "the simulated driver did not hand the address out again");
    assert_eq!(value(&out, "used_with_q"), CONTEXT + SIZE, "the new allocation is charged, the freed one is not");
    assert_eq!(value(&out, "used_after"), CONTEXT, "a charge leaked");
}

/// What thread A does while the call `held` is held, in the client of
/// [`a_driver_call_that_blocks_does_not_block_other_threads`]: a script that makes that call
/// once (and the process's primary context was retained once before).
fn blocking_script(cu: &Cuda, ctx: usize) {
    cu.enter(ctx);
    let p = cu.alloc(MIB).unwrap();
    cu.free(p);
    let h = cu.create(2 * MIB).unwrap();
    let va = cu.reserve(2 * MIB);
    cu.map(va, 2 * MIB, h);
    cu.unmap(va, 2 * MIB);
    cu.release(h);
    // SAFETY: a reservation the driver made.
    check_ok(unsafe { (cu.cuMemAddressFree)(va, (2 * MIB) as usize) });
    let mut c = std::ptr::null_mut();
    // SAFETY: a live output.
    check_ok(unsafe { (cu.cuCtxCreate_v2)(&mut c, 0, 0) });
    // SAFETY: the context just created.
    check_ok(unsafe { (cu.cuCtxDestroy_v2)(c) });
    cu.enter(ctx);
    // SAFETY: a live output; released at once.
    check_ok(unsafe { (cu.cuDevicePrimaryCtxRetain)(&mut c, 0) });
    // SAFETY: retained just above.
    check_ok(unsafe { (cu.cuDevicePrimaryCtxRelease_v2)(0) });
    // Nothing is left in the primary context; it stays retained (by `Cuda::start`).
    // SAFETY: a device the driver knows.
    check_ok(unsafe { (cu.cuDevicePrimaryCtxReset_v2)(0) });
}

/// What another thread does meanwhile: everything needs the shim's book.
fn meanwhile(cu: &Cuda, ctx: usize) {
    cu.enter(ctx);
    let p = cu.alloc(MIB).unwrap();
    cu.free(p);
    let h = cu.create(2 * MIB).unwrap();
    cu.release(h);
    cu.used();
}

#[test]
fn a_driver_call_that_blocks_does_not_block_other_threads() {
    let name = "a_driver_call_that_blocks_does_not_block_other_threads";
    if is_client(name) {
        let held = std::env::var("HELD").unwrap();
        let (cu, ctx) = Cuda::start();
        std::thread::scope(|scope| {
            let a = scope.spawn(|| blocking_script(&cu, ctx));
            wait_for(&hold_dir().join(format!("{held}.held")), Duration::from_secs(30));
            let b = scope.spawn(|| meanwhile(&cu, ctx));
            // Poll with a deadline: a thread blocked behind the held call never finishes.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !b.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            report("blocked", u8::from(!b.is_finished()));
            std::fs::write(hold_dir().join(format!("{held}.release")), b"").unwrap();
            a.join().unwrap();
            b.join().unwrap();
        });
        report("used", cu.used());
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let node = node_with_slice();
    for (held, nth) in [
        ("cuDevicePrimaryCtxRetain", 2),
        ("cuMemAlloc_v2", 1),
        ("cuMemFree_v2", 1),
        ("cuMemCreate", 1),
        ("cuMemMap", 1),
        ("cuMemUnmap", 1),
        ("cuMemRelease", 1),
        ("cuMemAddressFree", 1),
        ("cuCtxCreate_v2", 1),
        ("cuCtxDestroy_v2", 1),
        ("cuDevicePrimaryCtxRelease_v2", 1),
        ("cuDevicePrimaryCtxReset_v2", 1),
    ] {
        let dir = holds(&node).join(held);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = node.client(name);
        cmd.env("HELD", held).env("FAKEGPU_HOLD", format!("{held}:{nth}")).env("FAKEGPU_HOLD_DIR", &dir);
        let out = run_client(cmd, name);
        assert_eq!(value(&out, "blocked"), 0, "while {held} was in the driver, other threads' calls waited");
        assert_eq!(value(&out, "used"), CONTEXT, "{held}: the slice's usage after the run");
    }
}

#[test]
fn concurrent_primary_context_retains_hold_one_charge() {
    let name = "concurrent_primary_context_retains_hold_one_charge";
    if is_client(name) {
        let cu = Cuda::load();
        // SAFETY: no arguments.
        check_ok(unsafe { (cu.cuInit)(0) });
        let retain = || {
            let mut c = std::ptr::null_mut();
            // SAFETY: a live output.
            check_ok(unsafe { (cu.cuDevicePrimaryCtxRetain)(&mut c, 0) });
        };
        // SAFETY: a device ordinal.
        let release = || check_ok(unsafe { (cu.cuDevicePrimaryCtxRelease_v2)(0) });
        let held = hold_dir().join("cuDevicePrimaryCtxRetain.held");
        std::thread::scope(|scope| {
            // The first retain is held in the driver: it was charged before it went in.
            let first = scope.spawn(retain);
            wait_for(&held, Duration::from_secs(30));
            report("during_first", slice_usage("slice0"));
            // A second retain meanwhile counts on that charge.
            retain();
            report("second_returned", slice_usage("slice0"));
            std::fs::write(hold_dir().join("cuDevicePrimaryCtxRetain.release"), b"").unwrap();
            first.join().unwrap();
        });
        report("both", slice_usage("slice0"));
        release();
        report("one_left", slice_usage("slice0"));
        release();
        report("none_left", slice_usage("slice0"));
        // Many threads retaining and releasing: never two charges, none once all released.
        let most = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..2000 {
                            retain();
                            release();
                        }
                    })
                })
                .collect();
            let mut most = 0;
            while !workers.iter().all(|w| w.is_finished()) {
                most = most.max(slice_usage("slice0"));
            }
            most
        });
        report("most", most);
        report("after_all", slice_usage("slice0"));
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let node = node_with_slice();
    let mut cmd = node.client(name);
    cmd.env("FAKEGPU_HOLD", "cuDevicePrimaryCtxRetain").env("FAKEGPU_HOLD_DIR", holds(&node));
    let out = run_client(cmd, name);
    assert_eq!(value(&out, "during_first"), CONTEXT, "charged before the driver creates it");
    assert_eq!(value(&out, "second_returned"), CONTEXT, "one primary context, one charge");
    assert_eq!(value(&out, "both"), CONTEXT);
    assert_eq!(value(&out, "one_left"), CONTEXT, "still retained once");
    assert_eq!(value(&out, "none_left"), 0);
    assert!(value(&out, "most") <= CONTEXT, "two charges for one primary context: {}", value(&out, "most"));
    assert_eq!(value(&out, "after_all"), 0);
}

#[test]
fn an_nvml_call_that_blocks_does_not_block_other_threads() {
    let name = "an_nvml_call_that_blocks_does_not_block_other_threads";
    if is_client(name) {
        let nvml = Nvml::load();
        std::thread::scope(|scope| {
            // The first memory query looks the device's UUID up, and that call is held.
            let a = scope.spawn(|| nvml.memory());
            wait_for(&hold_dir().join("nvmlDeviceGetUUID.held"), Duration::from_secs(30));
            let b = scope.spawn(|| nvml.memory());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !b.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            report("blocked", u8::from(!b.is_finished()));
            std::fs::write(hold_dir().join("nvmlDeviceGetUUID.release"), b"").unwrap();
            report("total_a", a.join().unwrap().0);
            report("total_b", b.join().unwrap().0);
        });
        return;
    }
    if skip_unless_root(name) {
        return;
    }
    let node = node_with_slice();
    let mut cmd = node.client(name);
    cmd.env("FAKEGPU_HOLD", "nvmlDeviceGetUUID").env("FAKEGPU_HOLD_DIR", holds(&node));
    let out = run_client(cmd, name);
    assert_eq!(value(&out, "blocked"), 0, "while NVML looked a UUID up, another thread's query waited");
    assert_eq!(value(&out, "total_a"), LIMIT);
    assert_eq!(value(&out, "total_b"), LIMIT);
}
