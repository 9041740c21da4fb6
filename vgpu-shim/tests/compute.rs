//! Compute slicing on the simulated GPU: the GPU time a slice's kernels get, against wall time.
//!
//! The probe's `launch` queues `count` kernels of 1 ms and waits for them; the share is their
//! GPU time over the wall time the probe took. The simulated GPU runs a kernel for exactly its
//! duration, so without pacing the share is 100 %.

mod common;

use std::process::Output;

use common::*;

const MS: u64 = 1_000_000;

/// Kernels for a run of about `wall_ms` at `percent` %.
fn kernels_for(percent: u32, wall_ms: u64) -> u64 {
    wall_ms * u64::from(percent) / 100
}

fn launch_args(kernels: u64) -> Vec<String> {
    ["launch", "--duration-ns", &MS.to_string(), "--count", &kernels.to_string()].map(str::to_owned).to_vec()
}

fn share(out: &Output, kernels: u64) -> f64 {
    (kernels * MS) as f64 * 100.0 / value(out, "elapsed_ns") as f64
}

fn node_with_share(percent: u32) -> Node {
    let mut node = Node::new();
    node.slice_cores("slice0", UUID0, 0, 40 * GIB, percent);
    node
}

fn run(node: &Node, kernels: u64) -> f64 {
    let args = launch_args(kernels);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    share(&ok(node.probe(&args)), kernels)
}

#[test]
fn a_slice_alone_gets_its_share() {
    if skip_unless_root("a_slice_alone_gets_its_share") {
        return;
    }
    for percent in [10, 25, 50, 75, 90] {
        let node = node_with_share(percent);
        let kernels = kernels_for(percent, 2500);
        let got = run(&node, kernels);
        println!("{percent} % slice: {got:.1} %");
        assert!((got - f64::from(percent)).abs() <= 5.0, "{percent} % slice got {got:.1} %");
    }
}

#[test]
fn an_unlimited_slice_is_not_slowed() {
    if skip_unless_root("an_unlimited_slice_is_not_slowed") {
        return;
    }
    let node = node_with_share(100);
    let got = run(&node, 1000);
    println!("100 % slice: {got:.1} %");
    assert!(got >= 95.0, "an unlimited slice got {got:.1} %");
}

#[test]
fn two_processes_share_their_slices_share() {
    if skip_unless_root("two_processes_share_their_slices_share") {
        return;
    }
    let node = node_with_share(25);
    let kernels = 300;
    let args = launch_args(kernels);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = std::time::Instant::now();
    let children: Vec<_> = (0..2).map(|_| node.spawn_probe(&args)).collect();
    for child in children {
        ok(child.wait_with_output().unwrap());
    }
    let wall = start.elapsed().as_nanos() as f64;
    let got = (2 * kernels * MS) as f64 * 100.0 / wall;
    println!("two processes on a 25 % slice: {got:.1} % together");
    assert!((got - 25.0).abs() <= 5.0, "two processes on a 25 % slice got {got:.1} % together");
}
