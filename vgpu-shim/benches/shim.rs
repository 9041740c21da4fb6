//! The shim's overhead, measured against the bare driver in the same run (this machine is
//! noisy, so each figure is a median of interleaved rounds and only ratios are compared):
//!
//! - `cuLaunchKernel` through the shim with no compute limit, against the driver's own;
//! - `cuLaunchKernel` of zero-length kernels in a 50 % slice: the cost of one launch (best of
//!   five runs: the fast path), and the wall time of a loop of them (which would show being held
//!   back: they use no GPU time, so they must not be), against the same through the shim with no
//!   compute limit and against the driver's own;
//! - host-bound work (20 µs kernels, 100 µs of host idle after each: the device is 10–20 %
//!   busy) in a 50 % slice, against the same without the shim: kernels per second;
//! - a `cuMemAlloc` + `cuMemFree` pair charged in a slice, against the driver's own;
//! - a zero-length launch and a `cuStreamSynchronize` after it, in a slice with no compute
//!   limit, against the driver's own;
//! - starting `/bin/true` with the shim preloaded, against starting it without.
//!
//! Run with `cargo bench -p gpuslice-shim` (or `make bench`) as root: the slice's limits file
//! must sit on a read-only bind mount, as in a container. `cargo bench -p gpuslice-shim --
//! WORD` runs only the benchmarks whose name contains WORD (`launch`, `alloc`, `pacing`, `sync`,
//! `start`).

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

/// Wall time per launch of `work` (which includes any time pacing held it back).
fn wall_per_launch(mut cmd: Command) -> f64 {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    value(&out, "wall_ns") as f64 / value(&out, "launched").max(1) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if skip_unless_root("shim benchmarks") {
        return;
    }
    // A benchmark name filter, as libtest takes one (cargo passes `--bench` first).
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.to_lowercase().contains(&f.to_lowercase()));
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, 16 * GIB);
    let probe = &probes().0;
    let mut paced_node = Node::new();
    paced_node.slice_cores("slice0", UUID0, 0, 16 * GIB, 50);

    for (name, args, target_ratio, target_ns) in [
        ("cuLaunchKernel", &["bench-launch", "--count", "200000"][..], Some(1.05), 20.0),
        // An allocation's target is the time added alone: the simulated driver's own cost
        // varies by several microseconds from run to run, so a ratio would say little.
        ("cuMemAlloc+cuMemFree", &["bench-alloc", "--count", "20000", "--size", "1048576"][..], None, 2000.0),
    ] {
        if !want(name) {
            continue;
        }
        let (mut bare, mut shim) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(ns_per_op(node.bare(probe, args)));
            shim.push(ns_per_op(node.command(probe, args)));
        }
        let (b, s) = (median(bare), median(shim));
        let added = s - b;
        let ratio = s / b;
        let ok = target_ratio.is_some_and(|t| ratio <= t) || added <= target_ns;
        let target = match target_ratio {
            Some(t) => format!("≤ {t}× or ≤ {target_ns} ns added"),
            None => format!("≤ {target_ns} ns added"),
        };
        println!(
            "bench {name}: driver {b:.1} ns, through the shim {s:.1} ns: {added:+.1} ns, ratio {ratio:.3} \
             (target {target}): {}",
            verdict(ok)
        );
    }

    // Pacing: a 50 % slice whose kernels take no time is never held back; what it pays is the
    // pacing itself, against the unpaced slice above and the bare driver: per launch (best of
    // five runs, the fast path), and over a whole loop (any holding back shows there).
    if want("pacing launch") {
        let args = &["bench-launch", "--count", "200000"][..];
        let (mut bare, mut unpaced, mut paced) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(ns_per_op(node.bare(probe, args)));
            unpaced.push(ns_per_op(node.command(probe, args)));
            paced.push(ns_per_op(paced_node.command(probe, args)));
        }
        let (b, u, p) = (median(bare), median(unpaced), median(paced));
        println!(
            "bench cuLaunchKernel (zero-length) in a 50 % slice: {p:.1} ns, unlimited slice {u:.1} ns, driver {b:.1} ns: \
             {:+.1} ns and ratio {:.3} against the unlimited slice, ratio {:.3} against the driver \
             (target ≤ 20 ns added): {}",
            p - u,
            p / u,
            p / b,
            verdict(p - u <= 20.0)
        );
    }
    if want("pacing loop") {
        let args = &["work", "--path", "kernel", "--kernel-ns", "0", "--count", "300000", "--sync-every", "300000"][..];
        let (mut bare, mut unpaced, mut paced) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            bare.push(wall_per_launch(node.bare(probe, args)));
            unpaced.push(wall_per_launch(node.command(probe, args)));
            paced.push(wall_per_launch(paced_node.command(probe, args)));
        }
        let (b, u, p) = (median(bare), median(unpaced), median(paced));
        println!(
            "bench a loop of 300,000 zero-length launches, wall time per launch: {p:.1} ns in a 50 % slice, \
             {u:.1} ns in an unlimited slice, {b:.1} ns on the driver alone: ratio {:.3} against the unlimited \
             slice, {:.3} against the driver (target ≤ 1.10× the unlimited slice): {}",
            p / u,
            p / b,
            verdict(p / u <= 1.10)
        );
    }

    // A synchronisation after every launch (zero-length kernels, unlimited slice): what the
    // shim adds to `cuStreamSynchronize` (the pacing's window end, and the pools' trim check:
    // one atomic load when no pool memory was freed), wall time per launch + sync.
    if want("sync") {
        let args = &["work", "--path", "kernel", "--kernel-ns", "0", "--count", "50000", "--sync-every", "1"][..];
        let (mut bare, mut shim) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(wall_per_launch(node.bare(probe, args)));
            shim.push(wall_per_launch(node.command(probe, args)));
        }
        let (b, s) = (median(bare), median(shim));
        println!(
            "bench cuLaunchKernel + cuStreamSynchronize: driver {b:.1} ns, through the shim {s:.1} ns: {:+.1} ns, \
             ratio {:.3} (target ≤ 1.10×): {}",
            s - b,
            s / b,
            verdict(s / b <= 1.10)
        );
    }

    // Host-bound work under its share: 20 µs kernels with 100 µs of host idle after each keep
    // the device 10–20 % busy, so a 50 % slice must not slow them (kernels per second, median
    // of interleaved rounds).
    if want("pacing gaps") {
        let args = ["work", "--path", "kernel", "--kernel-ns", "20000", "--gap-ns", "100000", "--seconds", "1.5"];
        let args = &[&args[..], &["--sync-every", "16"]].concat();
        let rate = |mut cmd: Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            text_value(&out, "kernels_per_s").and_then(|v| v.parse::<f64>().ok()).expect("kernels_per_s=")
        };
        let (mut alone, mut sliced) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            alone.push(rate(node.bare(probe, args)));
            sliced.push(rate(paced_node.command(probe, args)));
        }
        let (a, s) = (median(alone), median(sliced));
        println!(
            "bench 20 µs kernels, 100 µs host gaps: {a:.0} kernels/s alone, {s:.0} in a 50 % slice: ratio {:.3} \
             (target ≥ 0.90): {}",
            s / a,
            verdict(s / a >= 0.9)
        );
    }

    if !want("start") {
        return;
    }
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
