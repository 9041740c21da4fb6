//! Compute slicing on the simulated GPU: the GPU time a slice's kernels get, against wall time.
//!
//! The probe's `launch` queues `count` kernels of 1 ms and waits for them; the share is their
//! GPU time over the wall time the probe took. The simulated GPU runs a kernel for exactly its
//! duration, so without pacing the share is 100 %.

mod common;

use std::process::Output;

use common::*;

const MS: u64 = 1_000_000;

/// These tests measure time: one at a time, so that they do not take each other's CPU.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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

// Several slices on one GPU: each process in its own slice, all on the device's one timeline,
// measured by the probe's `work` (kernels of 1 ms back to back, a synchronisation every 16).

use gpuslice_core::config::{CoresPolicy, Priority};
use gpuslice_core::limits::Limits;

fn limits(name: &str, cores: u32, policy: CoresPolicy, priority: Priority) -> Limits {
    Limits {
        slice: name.to_owned(),
        mode: gpuslice_core::config::Mode::Shim,
        gpu_uuid: UUID0.to_owned(),
        gpu_index: 0,
        memory_bytes: 20 * GIB,
        cores_percent: cores,
        cores_policy: policy,
        priority,
        generation: 1,
    }
}

fn work_args(path: &str, seconds: f64) -> Vec<String> {
    let seconds = format!("{seconds}");
    ["work", "--path", path, "--kernel-ns", "1000000", "--seconds", &seconds, "--sync-every", "16"]
        .map(str::to_owned)
        .to_vec()
}

/// Starts `work` in `slice`.
fn start_work(node: &Node, slice: &str, path: &str, seconds: f64) -> std::process::Child {
    let args = work_args(path, seconds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = node.command_in(slice, &probes().0, &args);
    if let Ok(log) = std::env::var("GPUSLICE_TEST_LOG") {
        cmd.env("GPUSLICE_LOG", log);
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
}

/// The share of the device `work` got over its run, in percent.
fn work_share(child: std::process::Child) -> f64 {
    let out = ok(child.wait_with_output().unwrap());
    if std::env::var_os("GPUSLICE_TEST_LOG").is_some() {
        let log = stderr(&out);
        let lines: Vec<&str> = log.lines().collect();
        println!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    text_value(&out, "share_pct").and_then(|v| v.parse().ok()).expect("share_pct=")
}

#[test]
fn contending_slices_get_their_shares() {
    if skip_unless_root("contending_slices_get_their_shares") {
        return;
    }
    let _serial = serial();
    let mut node = Node::new();
    node.slice_with(limits("thirty", 30, CoresPolicy::Cap, Priority::Normal));
    node.slice_with(limits("seventy", 70, CoresPolicy::Cap, Priority::Normal));
    let a = start_work(&node, "thirty", "kernel", 5.0);
    let b = start_work(&node, "seventy", "kernel", 5.0);
    let (a, b) = (work_share(a), work_share(b));
    println!("30 % and 70 % slices contending: {a:.1} % and {b:.1} %");
    assert!((a - 30.0).abs() <= 5.0 && (b - 70.0).abs() <= 5.0, "30:70 slices got {a:.1}:{b:.1}");
}

#[test]
fn graph_and_cooperative_launches_are_paced() {
    if skip_unless_root("graph_and_cooperative_launches_are_paced") {
        return;
    }
    let _serial = serial();
    let mut node = Node::new();
    node.slice_with(limits("quarter", 25, CoresPolicy::Cap, Priority::Normal));
    for path in ["ex", "coop", "coop-multi", "graph", "capture"] {
        let got = work_share(start_work(&node, "quarter", path, 3.0));
        println!("{path} launches in a 25 % slice: {got:.1} %");
        assert!((got - 25.0).abs() <= 5.0, "{path} launches in a 25 % slice got {got:.1} %");
    }
}

#[test]
fn a_borrowing_slice_takes_idle_time_and_gives_it_back() {
    if skip_unless_root("a_borrowing_slice_takes_idle_time_and_gives_it_back") {
        return;
    }
    let _serial = serial();
    let mut node = Node::new();
    node.slice_with(limits("lender", 30, CoresPolicy::Borrow, Priority::Normal));
    node.slice_with(limits("owner", 70, CoresPolicy::Cap, Priority::Normal));
    let alone = work_share(start_work(&node, "lender", "kernel", 3.0));
    println!("a 30 % borrowing slice alone: {alone:.1} %");
    assert!(alone >= 80.0, "a 30 % borrowing slice alone got {alone:.1} %");
    let a = start_work(&node, "lender", "kernel", 5.0);
    let b = start_work(&node, "owner", "kernel", 5.0);
    let (a, b) = (work_share(a), work_share(b));
    println!("the borrowing slice next to a busy 70 % slice: {a:.1} % and {b:.1} %");
    assert!((a - 30.0).abs() <= 7.0 && (b - 70.0).abs() <= 7.0, "borrow 30 next to cap 70 got {a:.1}:{b:.1}");
}

#[test]
fn a_high_priority_slice_is_not_slowed_by_a_normal_one() {
    if skip_unless_root("a_high_priority_slice_is_not_slowed_by_a_normal_one") {
        return;
    }
    let _serial = serial();
    let mut node = Node::new();
    node.slice_with(limits("urgent", 100, CoresPolicy::Cap, Priority::High));
    node.slice_with(limits("batch", 100, CoresPolicy::Cap, Priority::Normal));
    let solo = work_share(start_work(&node, "urgent", "kernel", 3.0));
    let high = start_work(&node, "urgent", "kernel", 5.0);
    let normal = start_work(&node, "batch", "kernel", 5.0);
    let (high, normal) = (work_share(high), work_share(normal));
    println!("high priority alone {solo:.1} %, next to a busy normal slice {high:.1} % (normal: {normal:.1} %)");
    assert!(high >= 0.9 * solo, "the high-priority slice got {high:.1} % next to a normal one, {solo:.1} % alone");
    assert!(normal > 0.5, "the normal slice starved: {normal:.1} %");
}

// Host-bound work: a kernel, then the host busy elsewhere (`--gap-ns`), as in LLM decoding
// without CUDA graphs. The device idles during the gaps; a slice is charged the GPU time its
// kernels took, not the wall time between its first and last launch.

/// `work` of `kernel_us` kernels with `gap_us` of host idle after each, for `seconds`.
fn gap_args(kernel_us: u64, gap_us: u64, seconds: f64) -> Vec<String> {
    let (kernel, gap, seconds) = ((kernel_us * 1000).to_string(), (gap_us * 1000).to_string(), format!("{seconds}"));
    ["work", "--path", "kernel", "--kernel-ns", &kernel, "--gap-ns", &gap, "--seconds", &seconds, "--sync-every", "16"]
        .map(str::to_owned)
        .to_vec()
}

/// Kernels per second and the share of the device they kept busy, in percent.
fn gap_rate(mut cmd: std::process::Command) -> (f64, f64) {
    let out = ok(cmd.output().unwrap());
    let get = |key| text_value(&out, key).and_then(|v| v.parse::<f64>().ok()).unwrap_or_else(|| panic!("{key}="));
    (get("kernels_per_s"), get("share_pct"))
}

/// The best of `rounds` runs in an unlimited slice (not paced) and in a 50 % slice, alternating,
/// so that a round disturbed by the machine's other work does not decide: ((rate, busy)
/// unpaced, paced).
fn unpaced_and_paced(unpaced: &Node, paced: &Node, args: &[String], rounds: usize) -> ((f64, f64), (f64, f64)) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let best = |a: (f64, f64), b: (f64, f64)| if b.0 > a.0 { b } else { a };
    let (mut alone, mut sliced) = ((0.0, 0.0), (0.0, 0.0));
    for _ in 0..rounds {
        alone = best(alone, gap_rate(unpaced.command(&probes().0, &args)));
        sliced = best(sliced, gap_rate(paced.command(&probes().0, &args)));
    }
    (alone, sliced)
}

#[test]
fn host_idle_between_launches_is_not_charged() {
    if skip_unless_root("host_idle_between_launches_is_not_charged") {
        return;
    }
    let _serial = serial();
    let (unlimited, node) = (node_with_share(100), node_with_share(50));
    let mut slow = Vec::new();
    let held = || node.region("slice0").compute().held_ns_total.load(std::sync::atomic::Ordering::Relaxed);
    for (kernel_us, gap_us) in [(100, 300), (20, 100)] {
        const ROUNDS: usize = 3;
        const SECONDS: f64 = 1.5;
        let held_before = held();
        let ((alone, alone_busy), (paced, paced_busy)) =
            unpaced_and_paced(&unlimited, &node, &gap_args(kernel_us, gap_us, SECONDS), ROUNDS);
        let ratio = paced / alone;
        let held_ms = (held() - held_before) / MS;
        println!(
            "{kernel_us} µs kernels, {gap_us} µs host gaps: unpaced {alone:.0} kernels/s ({alone_busy:.1} % busy), \
             50 % slice {paced:.0} kernels/s ({paced_busy:.1} % busy): ratio {ratio:.2}, held back {held_ms} ms"
        );
        // The pacing's own effect is the time it held the slice back: under 2 % of the paced
        // runs. The rate ratio also carries the machine's noise (other work on a busy CPU moves
        // either run by several percent), so it only has to stay clearly above a 50 % cut.
        let paced_ms = (ROUNDS as f64 * SECONDS * 1000.0) as u64;
        if held_ms * 50 > paced_ms || ratio < 0.8 {
            slow.push(format!(
                "{kernel_us} µs kernels with {gap_us} µs gaps ({alone_busy:.1} % busy): ratio {ratio:.2}, held back {held_ms} ms"
            ));
        }
    }
    assert!(slow.is_empty(), "work under its 50 % share ran slower than alone: {}", slow.join("; "));
}

#[test]
fn back_to_back_short_kernels_get_their_share() {
    if skip_unless_root("back_to_back_short_kernels_get_their_share") {
        return;
    }
    let _serial = serial();
    let ((alone, alone_busy), (paced, paced_busy)) =
        unpaced_and_paced(&node_with_share(100), &node_with_share(50), &gap_args(100, 0, 2.0), 1);
    println!(
        "100 µs kernels back to back: unpaced {alone:.0} kernels/s ({alone_busy:.1} % busy), \
         50 % slice {paced:.0} kernels/s ({paced_busy:.1} % busy)"
    );
    assert!((paced_busy - 50.0).abs() <= 5.0, "100 µs kernels back to back in a 50 % slice got {paced_busy:.1} %");
}

#[test]
fn zero_length_launches_are_not_held_back() {
    if skip_unless_root("zero_length_launches_are_not_held_back") {
        return;
    }
    let _serial = serial();
    let node = node_with_share(50);
    let mut cmd = node.command(&probes().0, &["bench-launch", "--count", "200000"]);
    if let Ok(log) = std::env::var("GPUSLICE_TEST_LOG") {
        cmd.env("GPUSLICE_LOG", log);
    }
    let out = ok(cmd.output().unwrap());
    if let Ok(path) = std::env::var("GPUSLICE_TEST_LOG_FILE") {
        std::fs::write(path, &out.stderr).unwrap();
    }
    let compute = node.region("slice0");
    let compute = compute.compute();
    let held = compute.held_ns_total.load(std::sync::atomic::Ordering::Relaxed);
    let charged = compute.gpu_ns_total.load(std::sync::atomic::Ordering::Relaxed);
    let per_op = text_value(&out, "ns_per_op").unwrap_or_default();
    println!(
        "1,000,000 zero-length launches in a 50 % slice: {per_op} ns each, held back {held} ns, charged {charged} ns"
    );
    // Five runs of 200,000 launches take well over 10 ms even when nothing holds them back.
    assert!(held < 10 * MS, "zero-length launches were held back {held} ns in a 50 % slice");
}

#[test]
fn a_refused_launch_does_not_turn_pacing_off() {
    if skip_unless_root("a_refused_launch_does_not_turn_pacing_off") {
        return;
    }
    let _serial = serial();
    let node = node_with_share(25);
    // After each synchronisation the next launch opens a window; here the driver refuses it.
    let mut args = work_args("kernel", 3.0);
    args.push("--bad-launch-after-sync".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(node.probe(&args));
    let got: f64 = text_value(&out, "share_pct").and_then(|v| v.parse().ok()).expect("share_pct=");
    let bad = text_value(&out, "bad_launches").unwrap_or_default();
    println!("a 25 % slice with a refused launch after each synchronisation ({bad} of them): {got:.1} %");
    assert!((got - 25.0).abs() <= 5.0, "a refused launch after each synchronisation: {got:.1} % in a 25 % slice");
}
