//! Device time shared by processes, driven by the CUDA probe (`tests/cuda-probe`) the way
//! real programs drive a GPU: several processes queue `busy` kernels on one device through
//! every launch path, and the device's own timeline (and NVML, which reads it) says who had
//! how much of it. Each test runs in a child with its own machine (see `common`); times are
//! the timeline's clock, not CPU time, and bounds are loose enough for a loaded machine.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use common::{Fixture, PROBE_DIR_ENV, config_with, have_cc, is_child, keys, lib_path, probes};
use fakegpu::timeline::{self, DeviceTimeline, ProcessBusy};
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// Run test `name` in a child on a machine of `gpus` GPUs, the probes built for it; `false`
/// (having printed why) when no C compiler can build them. One child at a time: these tests
/// measure time, and would otherwise compete for the CPU with each other's probes.
fn in_child(name: &str, gpus: u32) -> bool {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    if is_child(name) {
        return true;
    }
    if have_cc(name) {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let fx = Fixture::new(&config_with(gpus, ""));
        let mut cmd = fx.command(name);
        cmd.env(PROBE_DIR_ENV, &probes().dir);
        common::run_child(cmd, name);
    }
    false
}

fn state_dir() -> std::path::PathBuf {
    std::env::var_os("FAKEGPU_STATE_DIR").unwrap().into()
}

fn value(out: &BTreeMap<String, String>, key: &str) -> u64 {
    out.get(key).unwrap_or_else(|| panic!("no {key} in {out:?}")).parse().unwrap()
}

/// A probe started with its stdout read line by line on a thread.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// Wait (at most 30 s) for a line `key=…`; its value.
    fn wait_for(&mut self, key: &str) -> u64 {
        let prefix = format!("{key}=");
        loop {
            if let Some(v) = self.seen.iter().find_map(|l| l.strip_prefix(&prefix)) {
                return v.parse().unwrap();
            }
            let line = self.lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|e| panic!("no {key}: {e}"));
            self.seen.push(line);
        }
    }

    /// Wait for the probe to exit successfully; its keys.
    fn finish(mut self) -> BTreeMap<String, String> {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        assert!(status.success(), "probe failed ({status}): {:?}", self.seen);
        keys(self.seen.join("\n").as_bytes())
    }
}

/// `work` through the dlopen + cuGetProcAddress build, with `args` after it.
fn work(args: &[&str]) -> Command {
    let p = probes();
    p.command(&p.runtime, &[&["work"], args].concat())
}

/// Device time GPU `index` gave process `pid` in `[from, to)`.
fn busy_in(index: u32, pid: u32, from: u64, to: u64) -> u64 {
    let tl = DeviceTimeline::open(&state_dir(), index).unwrap();
    tl.by_process(from, to).iter().filter(|p| p.pid == pid).map(|p| p.busy_ns).sum()
}

/// All the device time GPU `index` gave process `pid`: how much, from when to when.
fn device_time(index: u32, pid: u32) -> ProcessBusy {
    let tl = DeviceTimeline::open(&state_dir(), index).unwrap();
    tl.by_process(0, u64::MAX).into_iter().find(|p| p.pid == pid).unwrap_or_else(|| panic!("{pid} never ran"))
}

fn nvml() -> Nvml {
    Nvml::builder().lib_path(lib_path().as_os_str()).init().unwrap()
}

#[test]
fn two_processes_take_turns_on_one_device() {
    let name = "two_processes_take_turns_on_one_device";
    if !in_child(name, 1) {
        return;
    }
    // Each queues 2 s of 1 ms kernels, 50 at a time (so that the device idles only if both
    // hosts are kept off the CPU for that long).
    let args = ["--path", "kernel", "--kernel-ns", "1000000", "--count", "2000", "--sync-every", "50", "--echo-pid"];
    let mut a = Running::start(work(&args));
    let mut b = Running::start(work(&args));
    let (pid_a, pid_b) = (a.wait_for("pid") as u32, b.wait_for("pid") as u32);
    let both = a.wait_for("start_ns").max(b.wait_for("start_ns"));

    // A second and a half in, NVML sees a busy device, half of it for each.
    timeline::sleep_until(both + 1_500 * MS);
    let nvml = nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let gpu = dev.utilization_rates().unwrap().gpu;
    let samples = dev.process_utilization_stats(None).unwrap();
    let share = |pid: u32| samples.iter().find(|s| s.pid == pid).map_or(0, |s| s.sm_util);
    let (share_a, share_b) = (share(pid_a), share(pid_b));

    let (a, b) = (a.finish(), b.finish());
    assert!(gpu >= 80, "utilisation {gpu} % while both ran");
    assert!((30..=70).contains(&share_a) && (30..=70).contains(&share_b), "{share_a} % and {share_b} %");
    assert!(share_a + share_b >= 80, "{share_a} % + {share_b} %");

    // The device ran all of each one's kernels, taking turns: 4 s of kernels took at least
    // 4 s, and each finished near the end.
    let (da, db) = (device_time(0, pid_a), device_time(0, pid_b));
    let span = da.last_ns.max(db.last_ns) - da.first_ns.min(db.first_ns);
    eprintln!("utilisation {gpu} %, shares {share_a} % and {share_b} %, 4 s of kernels in {span} ns");
    assert_eq!((da.busy_ns, db.busy_ns), (2 * S, 2 * S));
    assert_eq!((value(&a, "kernel_ns"), value(&b, "kernel_ns")), (2 * S, 2 * S));
    assert!((4 * S..8 * S).contains(&span), "both took {span} ns");
    assert!(da.last_ns.abs_diff(db.last_ns) < S / 2, "they took turns: {da:?} {db:?}");

    // A second after the end the device reads idle.
    timeline::sleep_until(da.last_ns.max(db.last_ns) + 1_050 * MS);
    assert_eq!(dev.utilization_rates().unwrap().gpu, 0);
    assert!(matches!(dev.process_utilization_stats(None), Err(NvmlError::NotFound)));
}

#[test]
fn a_process_alone_gets_the_whole_device() {
    let name = "a_process_alone_gets_the_whole_device";
    if !in_child(name, 1) {
        return;
    }
    // 2 ms kernels, up to 2 s of them queued at once: the device works without a break.
    // (With a short queue the share also says how soon the host got the CPU back after each
    // synchronisation, which on a busy machine can be tens of milliseconds.)
    let args = ["--path", "kernel", "--kernel-ns", "2000000", "--sync-every", "1000", "--seconds", "2", "--echo-pid"];
    let out = Running::start(work(&args)).finish();
    let d = device_time(0, value(&out, "pid") as u32);
    let device_share = d.busy_ns as f64 / (d.last_ns - d.first_ns) as f64 * 100.0;
    let share: f64 = out["share_pct"].parse().unwrap();
    eprintln!("alone: {device_share:.1} % of the device while it ran, {share} % of the host's wall time");
    assert!(device_share >= 99.0, "{d:?}: the device idled while the process had work queued");
    assert!(d.busy_ns >= 2 * S && d.busy_ns == value(&out, "kernel_ns"), "{d:?} {out:?}");
    // As the probe saw it: its kernels over its wall time, which includes waking up late.
    assert!(share >= 75.0, "{share} % of the wall time");
}

#[test]
fn every_launch_path_runs_its_kernels_in_every_build() {
    let name = "every_launch_path_runs_its_kernels_in_every_build";
    if !in_child(name, 2) {
        return;
    }
    let p = probes();
    let builds: [(&str, &std::path::Path, &[&str]); 5] = [
        ("runtime", &p.runtime, &[]),
        ("runtime --ptsz", &p.runtime, &["--ptsz"]),
        ("dlsym", &p.runtime, &["--dlsym"]),
        ("dlsym --ptsz", &p.runtime, &["--dlsym", "--ptsz"]),
        ("direct", &p.direct, &[]),
    ];
    for (build, binary, flags) in builds {
        for (path, kernels, on_gpu1) in [
            ("kernel", 6, 0),
            ("ex", 6, 0),
            ("coop", 6, 0),
            ("coop-multi", 12, 6),
            ("graph", 24, 0),
            ("capture", 24, 0),
        ] {
            // The default stream where the path allows it; with --ptsz that is the
            // per-thread one.
            let streams =
                if ["coop-multi", "capture"].contains(&path) { &[][..] } else { &["--stream-count", "0"][..] };
            let default = ["--path", path, "--kernel-ns", "2000000", "--count", "6", "--sync-every", "4", "--echo-pid"];
            let args = [flags, &["work"], &default, if flags.is_empty() { &[] } else { streams }].concat();
            let out = Running::start(p.command(binary, &args)).finish();
            let what = format!("{build} {path}: {out:?}");
            assert_eq!(value(&out, "launched"), 6, "{what}");
            assert_eq!(value(&out, "kernels"), kernels, "{what}");
            // The device ran exactly what was launched: graph launches their nodes, a
            // multi-device launch one kernel per device, a capture nothing while capturing.
            let (pid, start, end) = (value(&out, "pid") as u32, value(&out, "start_ns"), value(&out, "end_ns") + 1);
            let on_gpu0 = kernels - on_gpu1;
            assert_eq!(busy_in(0, pid, start, end), on_gpu0 * 2 * MS, "{what}");
            assert_eq!(busy_in(1, pid, start, end), on_gpu1 * 2 * MS, "{what}");
            assert_eq!(busy_in(0, pid, 0, start) + busy_in(0, pid, end, u64::MAX), 0, "{what}: work outside the run");
        }
    }
}

#[test]
fn a_killed_process_leaves_the_device_usable() {
    let name = "a_killed_process_leaves_the_device_usable";
    if !in_child(name, 1) {
        return;
    }
    let tl = DeviceTimeline::open(&state_dir(), 0).unwrap();
    // A process queues 100 s of work, then dies before waiting for it.
    let mut hog = Running::start(work(&[
        "--path",
        "kernel",
        "--kernel-ns",
        "1000000000",
        "--count",
        "100",
        "--sync-every",
        "100",
        "--echo-pid",
    ]));
    let hog_pid = hog.wait_for("pid") as u32;
    let hog_start = hog.wait_for("start_ns");
    let deadline = timeline::now() + 30 * S;
    while tl.idle_at() < timeline::now() + 50 * S {
        assert!(timeline::now() < deadline, "the work was never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    hog.child.kill().unwrap();
    hog.child.wait().unwrap();
    let killed = timeline::now();

    // What it had not run is dropped, as a real driver drops a dead context's work, and the
    // next process has the device at once.
    assert!(tl.idle_at() <= timeline::now(), "the device is still busy with a dead process's work");
    let out =
        Running::start(work(&["--path", "kernel", "--kernel-ns", "1000000", "--count", "20", "--echo-pid"])).finish();
    assert!(value(&out, "wall_ns") < 5 * S, "{out:?}");
    assert_eq!(busy_in(0, value(&out, "pid") as u32, 0, u64::MAX), 20 * MS);
    let ran = busy_in(0, hog_pid, 0, u64::MAX);
    assert!(ran <= killed - hog_start + S, "the dead process had {ran} ns, more than it lived");
}
