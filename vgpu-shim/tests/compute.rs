//! Compute slicing on the simulated GPU: kernel time against wall time under pacing.

mod common;

use common::*;

const GIB: u64 = 1 << 30;

fn share_of(out: &std::process::Output, gpu_ns: u64) -> f64 {
    let wall = value(out, "elapsed_ns");
    gpu_ns as f64 * 100.0 / wall as f64
}

#[test]
fn a_quarter_slice_gets_a_quarter() {
    if skip_unless_root("a_quarter_slice_gets_a_quarter") {
        return;
    }
    let mut node = Node::new();
    node.slice_cores("slice0", UUID0, 0, 40 * GIB, 25);
    let mut cmd = node.command(&probes().0, &["launch", "--duration-ns", "1000000", "--count", "600"]);
    cmd.env("GPUSLICE_LOG", "debug");
    let out = ok(cmd.output().unwrap());
    println!("{}", stderr(&out).lines().take(30).collect::<Vec<_>>().join("\n"));
    let share = share_of(&out, 600 * 1_000_000);
    println!("share {share:.1}%");
    assert!((share - 25.0).abs() < 5.0, "share {share:.1}% for a 25% slice");
}
