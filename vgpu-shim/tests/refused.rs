//! Allocations refused for the memory limit are counted in the region, per slice and per
//! process, for the host guard's metrics and log; an allocation that fits is not counted.

mod common;

use common::*;
use gpuslice_core::shm::atomic::Ordering;

const LIMIT: u64 = 4 * GIB;

fn refused_total(node: &Node) -> u64 {
    node.region("slice0").compute().refused_total.load(Ordering::Relaxed)
}

#[test]
fn a_refused_allocation_is_counted_once() {
    if skip_unless_root("a_refused_allocation_is_counted_once") {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let out = node.probe(&["alloc", "--path", "alloc", "--size", &GIB.to_string(), "--count", "2"]);
    assert_eq!(value(&out, "allocated"), 2, "{}", stdout(&out));
    assert_eq!(refused_total(&node), 0, "allocations that fit were counted as refused");

    // Fills the slice until the first refusal, which ends the fill.
    let out = node.probe(&["fill", "--path", "alloc", "--chunk", &(256 * MIB).to_string()]);
    assert!(stdout(&out).contains("CUDA_ERROR_OUT_OF_MEMORY"), "{} {}", stdout(&out), stderr(&out));
    assert_eq!(refused_total(&node), 1, "{}", stdout(&out));

    // A context the limit has no room for is a refusal too.
    let out = node.probe(&["alloc", "--path", "ctx", "--size", "0", "--count", "64"]);
    assert!(stdout(&out).contains("CUDA_ERROR_OUT_OF_MEMORY"));
    assert_eq!(refused_total(&node), 2, "{}", stdout(&out));
}
