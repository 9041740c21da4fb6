//! Many processes on one slice: racing, dying at random moments, in different PID namespaces.

mod common;

use std::time::{Duration, Instant};

use common::*;

const LIMIT: u64 = 4 * GIB;
const CONTEXT: u64 = 256 * MIB;

#[test]
fn sixteen_racing_processes_never_exceed_the_limit() {
    if skip_unless_root("sixteen_racing_processes_never_exceed_the_limit") {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let chunk = (64 * MIB).to_string();
    // Each wants 1 GiB (its context and 12 chunks), sixteen want 16 GiB of a 4 GiB slice: at
    // least four win whatever the scheduling, and the slice fills exactly.
    let mut children = Reaper(
        (0..16)
            .map(|_| {
                node.spawn_probe(&[
                    "fill",
                    "--path",
                    "alloc",
                    "--chunk",
                    &chunk,
                    "--max-chunks",
                    "12",
                    "--hold-forever",
                ])
            })
            .collect(),
    );
    let mut total = 0;
    let mut holding = 0;
    for c in &mut children.0 {
        match holding_or_exit(c) {
            Ok(before) => {
                total += find_value(&before, "bytes").expect("bytes=") + CONTEXT;
                holding += 1;
            }
            // Came too late: the slice was full before it had a context. Refused, correctly.
            Err(out) => assert!(out.contains("CUDA_ERROR_OUT_OF_MEMORY"), "a racer failed otherwise: {out}"),
        }
    }
    println!("{holding} of 16 processes hold memory");
    assert!(holding >= 4, "at least four processes fit: {holding}");
    // Everyone filled up and holds: the slice is exactly full, never over.
    assert!(total <= LIMIT, "the 16 processes hold {total} bytes, limit {LIMIT}");
    assert!(total > LIMIT - 64 * MIB, "the slice should be full: {total}");
    let device = node.device_used(0);
    assert!(device <= LIMIT, "the simulated GPU has {device} bytes in use, limit {LIMIT}");
    assert_eq!(node.region("slice0").usage().unwrap(), total, "the region agrees with the processes");
}

/// A tiny deterministic generator, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn two_hundred_sigkills_leave_no_usage_and_no_wedged_lock() {
    if skip_unless_root("two_hundred_sigkills_leave_no_usage_and_no_wedged_lock") {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    let seed = std::env::var("GPUSLICE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234_u64);
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let chunk = (32 * MIB).to_string();
    let mut killed = 0;
    while killed < 200 {
        // Eight at a time, each filling the slice with small allocations (so most of their
        // life is spent in the allocation path and the region lock), killed at a random moment.
        let mut batch = Reaper(
            (0..8)
                .map(|_| {
                    node.spawn_probe(&["fill", "--path", "alloc", "--chunk", &chunk, "--free", "--repeat", "1000"])
                })
                .collect(),
        );
        for c in &mut batch.0 {
            std::thread::sleep(Duration::from_micros(rng.next() % 30_000));
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        }
        for c in &mut batch.0 {
            c.wait().unwrap();
        }
        killed += batch.0.len();
    }
    // No wedged lock: a new process allocates right away, the dead's usage reclaimed on demand.
    let start = Instant::now();
    let out = ok(node.probe(&["alloc", "--path", "alloc", "--size", &(LIMIT - CONTEXT).to_string()]));
    assert_eq!(value(&out, "allocated"), 1);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    let region = node.region("slice0");
    region.reclaim_dead().unwrap();
    assert_eq!(region.usage().unwrap(), 0, "usage left behind: {:?}", region.slots().unwrap());
    assert_eq!(node.device_used(0), 0, "the simulated GPU still has memory in use");
}

#[test]
fn two_pid_namespaces_share_one_slice() {
    if skip_unless_root("two_pid_namespaces_share_one_slice") {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    // Each probe is PID 1 of its own PID namespace, as in two containers.
    let in_pidns = |args: &[&str]| {
        let mut all = vec!["--pid", "--fork", "--kill-child", "--mount-proc"];
        all.extend_from_slice(args);
        let unshare = std::path::Path::new("/usr/bin/unshare");
        let mut c = node.command(unshare, &all);
        c.args(std::iter::empty::<&str>());
        c
    };
    let probe = probes().0.to_str().unwrap().to_owned();
    let mut first = Reaper(vec![
        in_pidns(&[&probe, "alloc", "--path", "alloc", "--size", &(2 * GIB).to_string(), "--hold-forever"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ]);
    wait_holding(&mut first.0[0]);
    let out = in_pidns(&[&probe, "fill", "--path", "alloc", "--chunk", &(256 * MIB).to_string(), "--echo-pid"])
        .output()
        .unwrap();
    assert_eq!(value(&out, "pid"), 1, "the second probe runs as PID 1 of its namespace: {}", stdout(&out));
    let got = value(&out, "bytes");
    assert_eq!(got, LIMIT - 2 * GIB - 2 * CONTEXT, "the second namespace sees the first's usage: {}", stdout(&out));
    let slots = node.region("slice0").slots().unwrap();
    assert!(slots.iter().any(|s| s.pid == 1 && s.alive), "the first is registered, alive: {slots:?}");
}
