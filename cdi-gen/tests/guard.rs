//! The host guard (`gpuslice-cdi daemon`) against real processes on the simulated GPU.
//!
//! Each "container" is a cgroup the test makes (in the v1 freezer hierarchy where there is
//! one, else in the v2 one) with a first process in it, and the record the hook would write
//! for it. Its GPU programs are the CUDA probe (`tests/cuda-probe`) run straight on the
//! simulated driver, without the interception library: exactly what a container that got
//! around the library does. Some run in PID namespaces of their own (`unshare --pid`), as in a
//! container, so the guard must find them by the host PIDs the driver reports. Root only.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use common::{GIB, Node, fake_nvml, ok};
use gpuslice_core::containers::{self, ContainerRecord};

const LIMIT: u64 = 40 * GIB;

/// The probe built against the simulated driver, and the driver directory to run it with.
struct Probe {
    bin: PathBuf,
    driver: PathBuf,
}

fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let out = exe.parent().and_then(Path::parent).unwrap().join("guard-probe");
        let driver = out.join("driver");
        std::fs::create_dir_all(&driver).unwrap();
        for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            let tmp = driver.join(format!(".{name}.{}", std::process::id()));
            std::fs::copy(fake_nvml(), &tmp).unwrap();
            std::fs::rename(&tmp, driver.join(name)).unwrap();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cuda-probe/build.sh");
        let built = Command::new("bash").arg(&script).arg(&out).arg(&driver).output().unwrap();
        assert!(built.status.success(), "building the probe: {}", String::from_utf8_lossy(&built.stderr));
        Probe { bin: out.join("cuda-probe"), driver }
    })
}

/// Lines of a child's output, read on a thread.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(r: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: Vec::new() }
    }

    /// Waits (at most `secs`) for a line containing every one of `wants`; returns it.
    fn wait_for(&mut self, wants: &[&str], secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let matches = |l: &str| wants.iter().all(|w| l.contains(w));
        loop {
            if let Some(l) = self.seen.iter().find(|l| matches(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {wants:?} within {secs} s; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Every line so far (waiting up to `ms` for more).
    fn drain(&mut self, ms: u64) -> &[String] {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while let Ok(line) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// A process the test started; killed and reaped when dropped.
struct Proc {
    child: Child,
    out: Lines,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (at most `secs`) for it to end; the signal that ended it.
    fn killed_by(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return std::os::unix::process::ExitStatusExt::signal(&status);
            }
            assert!(Instant::now() < deadline, "pid {} still running after {secs} s", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup hierarchy the test may make cgroups in: v1's freezer where there is one.
fn hierarchy() -> Option<PathBuf> {
    ["/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"].into_iter().map(PathBuf::from).find(|p| {
        // Writable: a cgroup can be made there (directory modes say nothing on cgroupfs).
        let probe = p.join(format!("gpuslice-guard-test-{}-probe", std::process::id()));
        p.join("cgroup.procs").is_file() && std::fs::create_dir(&probe).is_ok() && std::fs::remove_dir(&probe).is_ok()
    })
}

/// A simulated node with gpuslice's slices (two 80 GiB GPUs, two 40 GiB slices each) and
/// "containers" made of cgroups.
struct Lab {
    /// One lab at a time: the throttle test measures time, and the labs share the CPU.
    _turn: std::sync::MutexGuard<'static, ()>,
    /// Distinguishes this lab's cgroups from another's.
    tag: String,
    node: Node,
    hierarchy: PathBuf,
    cgroups: Vec<PathBuf>,
    /// Processes, dropped (killed) before the cgroups are removed.
    procs: Vec<Proc>,
}

impl Lab {
    /// `None` (having said why) where the test cannot run.
    fn new(test: &str, guard: &str) -> Option<Lab> {
        if gpuslice_test_support::skip_unless_root(test, "making cgroups")
            || gpuslice_test_support::skip_unless_cc(test, "tests/cuda-probe")
            || gpuslice_test_support::skip_unless_program(test, "unshare")
        {
            return None;
        }
        let Some(hierarchy) = hierarchy() else {
            gpuslice_test_support::skip(test, "no writable cgroup hierarchy");
            return None;
        };
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let turn = lock(&ONE_AT_A_TIME);
        let tag = format!("{}-{}", std::process::id(), LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let node = Node::new(2, true);
        node.config(&format!("[defaults]\nsplit_count = 2\n[guard]\ninterval = \"200ms\"\n{guard}"));
        ok(node.cdi(&["generate"]));
        probe();
        Some(Lab { _turn: turn, tag, node, hierarchy, cgroups: Vec::new(), procs: Vec::new() })
    }

    /// A container `id` on `slice`: a cgroup with a first process (`sleep`), and the hook's
    /// record of it (without `slice`: a container gpuslice does not know).
    fn container(&mut self, id: &str, slice: Option<&str>) -> PathBuf {
        let cgroup = self.hierarchy.join(format!("gpuslice-guard-test-{}-{id}", self.tag));
        let _ = std::fs::create_dir(&cgroup);
        self.cgroups.push(cgroup.clone());
        let init = self.spawn(&cgroup, false, &["sleep", "3600"]);
        // The record is the hook's: read once the first process is in its cgroup.
        let leaf = cgroup.file_name().unwrap().to_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(format!("/proc/{}/cgroup", init.pid())).is_ok_and(|c| c.contains(&leaf)) {
            assert!(Instant::now() < deadline, "the container's first process never reached its cgroup");
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(slice) = slice {
            let record = ContainerRecord {
                id: id.into(),
                slice: slice.into(),
                pid: init.pid(),
                name: Some(format!("{id}-name")),
                pod: None,
                namespace: None,
                cgroups: containers::read_cgroups(Path::new("/proc"), init.pid()).unwrap(),
            };
            record.store(&self.node.state_dir()).unwrap();
        }
        self.procs.push(init);
        cgroup
    }

    /// `args` run in `cgroup` (in a PID namespace of its own with `own_pid_ns`), the simulated
    /// GPU's environment set.
    fn spawn(&self, cgroup: &Path, own_pid_ns: bool, args: &[&str]) -> Proc {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"").arg(cgroup);
        if own_pid_ns {
            cmd.args(["unshare", "--pid", "--fork", "--kill-child"]);
        }
        cmd.args(args).env("LD_LIBRARY_PATH", &probe().driver).stdout(Stdio::piped()).stderr(Stdio::inherit());
        self.node.env(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let out = Lines::new(child.stdout.take().unwrap());
        Proc { child, out }
    }

    /// The probe holding `gib` GiB on GPU `gpu` in `cgroup`, once it says it holds them.
    fn hold(&mut self, cgroup: &Path, own_pid_ns: bool, gpu: u32, gib: u32) -> usize {
        let bin = probe().bin.to_str().unwrap().to_owned();
        let (device, chunks) = (gpu.to_string(), gib.to_string());
        let args = [
            &bin,
            "--device",
            &device,
            "fill",
            "--path",
            "alloc",
            "--chunk",
            "1G",
            "--max-chunks",
            &chunks,
            "--hold-forever",
        ];
        let mut p = self.spawn(cgroup, own_pid_ns, &args);
        p.out.wait_for(&["holding"], 30);
        self.procs.push(p);
        self.procs.len() - 1
    }

    /// The daemon, its log lines read as they come.
    fn daemon(&self) -> (Proc, Arc<Mutex<Lines>>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"));
        cmd.args(["daemon", "--config"]).arg(self.node.config_path()).arg("--nvml-lib").arg(fake_nvml());
        self.node.env(&mut cmd);
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(Lines::new(child.stderr.take().unwrap())));
        let proc = Proc { child, out: Lines::new(std::io::empty()) };
        log.lock().unwrap().wait_for(&["guard started"], 10);
        (proc, log)
    }

    /// Device memory the simulated driver counts for `pids` on GPU `gpu`.
    fn held_by(&self, gpu: u32, pids: &[u32]) -> u64 {
        let dir = self.node.root().join("fakegpu-state");
        let state = fakegpu::state::DeviceState::open(&dir, gpu, 80 * GIB).unwrap();
        state.processes().iter().filter(|p| pids.contains(&p.pid)).map(|p| p.bytes).sum()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Thawed first (a test that failed mid-throttle): a frozen process cannot die.
        for c in &self.cgroups {
            let _ = std::fs::write(c.join("freezer.state"), "THAWED");
            let _ = std::fs::write(c.join("cgroup.freeze"), "0");
        }
        self.procs.clear();
        for c in &self.cgroups {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(c).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn the_process_that_took_a_slice_past_its_limit_is_killed_and_the_rest_keep_running() {
    let name = "the_process_that_took_a_slice_past_its_limit_is_killed_and_the_rest_keep_running";
    let Some(mut lab) = Lab::new(name, "") else { return };
    let a = lab.container("aaa", Some("slice0"));
    let b = lab.container("bbb", Some("slice1"));
    let mate = lab.hold(&a, false, 0, 20);
    let neighbour = lab.hold(&b, true, 0, 30);
    let (_daemon, log) = lab.daemon();
    // Within its limit: a pass or two and nothing happens.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!lock(&log).drain(0).iter().any(|l| l.contains("killed")));

    // 25 GiB more in the same container, from a process in a PID namespace of its own.
    let t0 = Instant::now();
    let attacker = lab.hold(&a, true, 0, 25);
    let line = lock(&log).wait_for(&["killed"], 10);
    let caught = t0.elapsed();
    for want in [
        "slice0 is over its memory limit by the driver's count: 45.50 GiB held by 2 processes on GPU 0",
        "limit 40.00 GiB + 0.50 GiB tolerance",
        "of container aaa (aaa-name), which grew last (to 25.25 GiB): killed (SIGKILL)",
    ] {
        assert!(line.contains(want), "{line}\nwant: {want}");
    }
    // The attacker was the child of `unshare` (PID 1 of its namespace): unshare ends with it.
    lab.procs[attacker].killed_by(5);
    assert!(lab.procs[mate].running(), "the slice-mate keeps running");
    assert!(lab.procs[neighbour].running(), "the neighbour slice keeps running");
    let used = lab.held_by(0, &[lab.procs[mate].pid()]);
    assert!(used <= LIMIT, "the slice holds {used} bytes");
    eprintln!("caught in {caught:?} (interval 200 ms)");
    // One kill, not two.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(lock(&log).drain(0).iter().filter(|l| l.contains("killed")).count(), 1);
}

#[test]
fn a_process_outside_every_slice_is_reported_once_and_killed_when_told() {
    let name = "a_process_outside_every_slice_is_reported_once_and_killed_when_told";
    let Some(mut lab) = Lab::new(name, "") else { return };
    let stray = lab.container("stray", None);
    let p = lab.hold(&stray, false, 1, 2);
    let (mut daemon, log) = lab.daemon();
    let line = lock(&log).wait_for(&["outside every slice"], 10);
    assert!(
        line.contains("uses GPU 1 (GPU-00000001-2222-3333-4444-555555555555) outside every slice: 2.25 GiB held, not in a container started with a gpuslice device (unsliced_policy = log)"),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(lock(&log).drain(0).iter().filter(|l| l.contains("outside every slice")).count(), 1, "once");
    assert!(lab.procs[p].running());
    // SIGTERM stops it; with unsliced_policy = "kill" the next one kills.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    assert_eq!(daemon.killed_by(5), None, "a clean exit on SIGTERM");
    lab.node.config("[defaults]\nsplit_count = 2\n[guard]\ninterval = \"200ms\"\nunsliced_policy = \"kill\"");
    let (_daemon, log) = lab.daemon();
    lock(&log).wait_for(&["outside every slice", "killed (SIGKILL)"], 10);
    assert_eq!(lab.procs[p].killed_by(5), Some(libc::SIGKILL));
}

/// Device time GPU `gpu` gave processes in `[from, to)` (the simulator's own numbers), percent.
fn share(lab: &Lab, gpu: u32, pid: u32, from: u64, to: u64) -> f64 {
    let tl = fakegpu::timeline::DeviceTimeline::open(&lab.node.root().join("fakegpu-state"), gpu).unwrap();
    let busy: u64 = tl.by_process(from, to).iter().filter(|p| p.pid_here == Some(pid)).map(|p| p.busy_ns).sum();
    100.0 * busy as f64 / (to - from) as f64
}

#[test]
fn a_slice_far_above_its_share_is_throttled_and_thawed_when_the_guard_stops() {
    let name = "a_slice_far_above_its_share_is_throttled_and_thawed_when_the_guard_stops";
    let guard = "compute_guard = \"throttle\"\ncompute_window = \"1s\"";
    let Some(mut lab) = Lab::new(name, guard) else { return };
    let a = lab.container("aaa", Some("slice0"));
    let bin = probe().bin.to_str().unwrap().to_owned();
    let work = [&bin, "work", "--path", "kernel", "--kernel-ns", "1000000", "--seconds", "30", "--sync-every", "16"];
    let worker = lab.spawn(&a, false, &work);
    let pid = worker.pid();
    lab.procs.push(worker);
    std::thread::sleep(Duration::from_millis(1500));
    let now = fakegpu::timeline::now();
    let alone = share(&lab, 0, pid, now - 1_000_000_000, now);
    // Alone it takes most of the GPU (less on a loaded machine, where the probe waits for a CPU).
    assert!(alone > 70.0, "the probe alone takes the GPU: {alone:.0} %");

    let (mut daemon, log) = lab.daemon();
    let line = lock(&log).wait_for(&["slice0 took", "throttled"], 10);
    assert!(line.contains("its share is 50 %") && line.contains("kernels already queued still run"), "{line}");
    // Two seconds under throttle, from half a second after it began: well below what it took
    // alone.
    std::thread::sleep(Duration::from_millis(2500));
    let now = fakegpu::timeline::now();
    let throttled = share(&lab, 0, pid, now - 2_000_000_000, now);
    eprintln!("alone {alone:.0} %, throttled {throttled:.0} % (share 50 %)");
    assert!(throttled < alone - 15.0, "throttled to {throttled:.0} % from {alone:.0} %");

    // The guard stops: the container is thawed and runs as before.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    assert_eq!(daemon.killed_by(5), None);
    if a.join("freezer.state").exists() {
        assert_eq!(std::fs::read_to_string(a.join("freezer.state")).unwrap().trim(), "THAWED");
    } else {
        assert_eq!(std::fs::read_to_string(a.join("cgroup.freeze")).unwrap().trim(), "0");
    }
    assert!(!lab.node.state_dir().join("host/throttled/slice0").exists());
    let w = lab.procs.last_mut().unwrap();
    assert!(w.running());
}

#[test]
fn a_guard_that_starts_thaws_a_slice_an_earlier_one_left_frozen() {
    let name = "a_guard_that_starts_thaws_a_slice_an_earlier_one_left_frozen";
    let Some(mut lab) = Lab::new(name, "") else { return };
    let a = lab.container("aaa", Some("slice0"));
    let record = ContainerRecord::list(&lab.node.state_dir()).0.pop().unwrap();
    let (file, frozen, thawed) = if a.join("freezer.state").exists() {
        (a.join("freezer.state"), "FROZEN", "THAWED")
    } else {
        (a.join("cgroup.freeze"), "1", "0")
    };
    std::fs::write(&file, frozen).unwrap();
    let dir = lab.node.state_dir().join("host/throttled");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = record.cgroups.iter().map(|c| c.render()).collect();
    std::fs::write(dir.join("slice0"), lines.join("\n") + "\n\n").unwrap();
    let (_daemon, log) = lab.daemon();
    lock(&log).wait_for(&["slice0 was left under throttle by an earlier guard: thawed"], 5);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), thawed);
}
