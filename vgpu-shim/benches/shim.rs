//! The shim's overhead, measured against the bare driver in the same run (this machine is
//! noisy, so each figure is a median of interleaved rounds and only ratios are compared):
//!
//! - `cuLaunchKernel` through the shim with no compute limit, against the driver's own;
//! - `cuLaunchKernel` in a slice with a compute share, under its share (paced, never held
//!   back), against the same through the shim with no compute limit;
//! - a `cuMemAlloc` + `cuMemFree` pair charged in a slice, against the driver's own;
//! - starting `/bin/true` with the shim preloaded, against starting it without.
//!
//! Run with `cargo bench -p gpuslice-shim` (or `make bench`) as root: the slice's limits file
//! must sit on a read-only bind mount, as in a container.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::*;

const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ns_per_op(mut cmd: Command) -> f64 {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    text_value(&out, "ns_per_op").and_then(|v| v.parse().ok()).expect("ns_per_op=")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if skip_unless_root("shim benchmarks") {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, 16 * GIB);
    let probe = &probes().0;

    for (name, args, target_ratio, target_ns) in [
        ("cuLaunchKernel", &["bench-launch", "--count", "200000"][..], 1.05, 20.0),
        ("cuMemAlloc+cuMemFree", &["bench-alloc", "--count", "20000", "--size", "1048576"][..], f64::INFINITY, 2000.0),
    ] {
        let (mut bare, mut shim) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(ns_per_op(node.bare(probe, args)));
            shim.push(ns_per_op(node.command(probe, args)));
        }
        let (b, s) = (median(bare), median(shim));
        let added = s - b;
        let ratio = s / b;
        let ok = ratio <= target_ratio || added <= target_ns;
        println!(
            "bench {name}: driver {b:.1} ns, through the shim {s:.1} ns: {added:+.1} ns, ratio {ratio:.3} \
             (target ≤ {target_ratio}× or ≤ {target_ns} ns added): {}",
            verdict(ok)
        );
    }

    // Pacing: a 50 % slice whose kernels take no time is never held back; what it pays is the
    // pacing itself, against the unpaced slice above.
    let mut paced_node = Node::new();
    paced_node.slice_cores("slice0", UUID0, 0, 16 * GIB, 50);
    let args = &["bench-launch", "--count", "200000"][..];
    let (mut unpaced, mut paced) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        unpaced.push(ns_per_op(node.command(probe, args)));
        paced.push(ns_per_op(paced_node.command(probe, args)));
    }
    let (u, p) = (median(unpaced), median(paced));
    println!(
        "bench cuLaunchKernel paced under its share: {p:.1} ns, unpaced through the shim {u:.1} ns: {:+.1} ns, ratio {:.3} \
         (target ≤ 20 ns added): {}",
        p - u,
        p / u,
        verdict(p - u <= 20.0)
    );

    // Process start: 2000 × /bin/true each way, in 80 rounds of 25 whose order alternates;
    // the figure is the median of the rounds' ratios, which one disturbed round cannot move.
    let spawn_block = |preload: bool| {
        let t = Instant::now();
        for _ in 0..25 {
            // Both arms set the variable: changing the environment alone changes how the
            // child is started and costs about as much as the whole shim.
            let mut c = Command::new("/bin/true");
            c.env("LD_PRELOAD", if preload { shim() } else { std::path::PathBuf::new() });
            assert!(c.status().unwrap().success());
        }
        t.elapsed().as_secs_f64() / 25.0
    };
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..80 {
        let (w, s) = if round % 2 == 0 {
            let w = spawn_block(false);
            (w, spawn_block(true))
        } else {
            let s = spawn_block(true);
            (spawn_block(false), s)
        };
        without.push(w);
        with.push(s);
        ratios.push(s / w);
    }
    let ratio = median(ratios);
    println!(
        "bench /bin/true ×2000: {:.0} µs each without, {:.0} µs with the shim preloaded (medians): ratio {ratio:.3} \
         (target ≤ 1.10×): {}",
        median(without) * 1e6,
        median(with) * 1e6,
        verdict(ratio <= 1.10)
    );
}
