//! The guard's decisions with a fake driver and a fake host (youki's `Syscall` style): no GPU,
//! no processes, no cgroups; slice state and records are real files in a temporary directory.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use gpuslice_core::config::{ComputeGuard, Config, CoresPolicy, GuardConfig, GuardPolicy, Mode, Priority};
use gpuslice_core::containers::{CgroupLine, ContainerRecord};
use gpuslice_core::limits::Limits;
use gpuslice_core::plan::GpuInfo;
use gpuslice_core::units::Span;

use super::driver::{Driver, DriverError, GpuProcess, UtilSample};
use super::enforce::{Action, Enforcer, KillReason};
use super::host::{Host, Killed};
use super::observe::{self, Inputs, Owner, SampleCursor, SliceInfo, Snapshot};
use super::{Guard, PassReport};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const UUID0: &str = "GPU-00000000-0000-0000-0000-000000000000";
const UUID1: &str = "GPU-11111111-0000-0000-0000-000000000000";

/// GPUs, their processes and samples, set by the test.
#[derive(Debug, Default, Clone)]
struct FakeDriver {
    state: Arc<Mutex<DriverState>>,
}

#[derive(Debug, Default)]
struct DriverState {
    gpus: Vec<GpuInfo>,
    processes: BTreeMap<u32, Vec<GpuProcess>>,
    samples: BTreeMap<u32, Vec<UtilSample>>,
}

impl FakeDriver {
    fn two_gpus() -> Self {
        let gpu = |index: u32, uuid: &str| GpuInfo {
            index,
            uuid: uuid.into(),
            name: "Simulated H100".into(),
            memory_total: 80 * GIB,
            minor: index,
            pci_bus_id: format!("00000000:0{index}:00.0"),
            mig_enabled: false,
            sm_count: 132,
            mig: Vec::new(),
        };
        let d = FakeDriver::default();
        d.with(|s| s.gpus = vec![gpu(0, UUID0), gpu(1, UUID1)]);
        d
    }

    fn with<R>(&self, f: impl FnOnce(&mut DriverState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// GPU `gpu` runs these `(pid, bytes)`.
    fn set(&self, gpu: u32, procs: &[(u32, u64)]) {
        self.with(|s| {
            s.processes.insert(gpu, procs.iter().map(|&(pid, used_bytes)| GpuProcess { pid, used_bytes }).collect())
        });
    }

    /// GPU `gpu`'s samples at `t` µs: `(pid, percent)`.
    fn sample(&self, gpu: u32, t: u64, samples: &[(u32, u32)]) {
        self.with(|s| {
            s.samples.insert(
                gpu,
                samples.iter().map(|&(pid, sm_percent)| UtilSample { pid, timestamp_us: t, sm_percent }).collect(),
            )
        });
    }
}

impl Driver for FakeDriver {
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, DriverError> {
        Ok(self.with(|s| s.gpus.clone()))
    }

    fn processes(&mut self, index: u32) -> Result<Vec<GpuProcess>, DriverError> {
        Ok(self.with(|s| s.processes.get(&index).cloned().unwrap_or_default()))
    }

    fn samples(&mut self, index: u32, since_us: u64) -> Result<Vec<UtilSample>, DriverError> {
        Ok(self.with(|s| {
            s.samples.get(&index).into_iter().flatten().filter(|x| x.timestamp_us > since_us).copied().collect()
        }))
    }
}

/// Processes (start time, cgroups), and what was done to them.
#[derive(Debug, Default)]
struct FakeHost {
    processes: Mutex<BTreeMap<u32, (u64, Vec<CgroupLine>)>>,
    kills: Mutex<Vec<u32>>,
    freezes: Mutex<Vec<(String, bool)>>,
    /// Processes holding a lock on the first byte of a region, by region path.
    locks: Mutex<BTreeMap<std::path::PathBuf, Vec<u32>>>,
    /// Per PID, the devices of the hook's state mounts it sees, and its PID in its container.
    mounts: Mutex<BTreeMap<u32, Vec<u64>>>,
    inner_pids: Mutex<BTreeMap<u32, u32>>,
}

impl FakeHost {
    /// Process `pid` in the cgroup `path` (v1 freezer and v2), started at `start`.
    fn spawn(&self, pid: u32, start: u64, path: &str) {
        let cgroups = CgroupLine::parse_all(&format!("6:freezer:{path}\n0::{path}\n")).unwrap();
        self.processes.lock().unwrap().insert(pid, (start, cgroups));
    }

    fn kills(&self) -> Vec<u32> {
        self.kills.lock().unwrap().clone()
    }

    /// `pids` hold the region lock of `file` (none: it is free).
    fn lock(&self, file: &std::path::Path, pids: &[u32]) {
        self.locks.lock().unwrap().insert(file.to_owned(), pids.to_vec());
    }
}

impl Host for FakeHost {
    fn cgroups(&self, pid: u32) -> Option<Vec<CgroupLine>> {
        self.processes.lock().unwrap().get(&pid).map(|p| p.1.clone())
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        self.processes.lock().unwrap().get(&pid).map(|p| p.0)
    }

    fn kill(&self, pid: u32, start_time: u64) -> io::Result<Killed> {
        let mut procs = self.processes.lock().unwrap();
        if procs.get(&pid).is_none_or(|p| p.0 != start_time) {
            return Ok(Killed::Gone);
        }
        procs.remove(&pid);
        self.kills.lock().unwrap().push(pid);
        // A killed process's locks go with it.
        for holders in self.locks.lock().unwrap().values_mut() {
            holders.retain(|&p| p != pid);
        }
        Ok(Killed::Sent)
    }

    fn set_frozen(&self, cgroups: &[CgroupLine], frozen: bool) -> io::Result<()> {
        self.freezes.lock().unwrap().push((cgroups[0].path.clone(), frozen));
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.processes.lock().unwrap().keys().copied().collect()
    }

    fn lock_held(&self, file: &std::path::Path, range: std::ops::Range<u64>) -> io::Result<bool> {
        assert_eq!(range, 0..1, "the region lock byte");
        Ok(self.locks.lock().unwrap().get(file).is_some_and(|h| !h.is_empty()))
    }

    fn lock_holders(&self, pids: &[u32], file: &std::path::Path, range: std::ops::Range<u64>) -> io::Result<Vec<u32>> {
        assert_eq!(range, 0..1, "the region lock byte");
        let locks = self.locks.lock().unwrap();
        Ok(locks.get(file).into_iter().flatten().copied().filter(|p| pids.contains(p)).collect())
    }

    fn state_mounts(&self, pid: u32) -> Vec<u64> {
        self.mounts.lock().unwrap().get(&pid).cloned().unwrap_or_default()
    }

    fn inner_pid(&self, pid: u32) -> Option<u32> {
        self.inner_pids.lock().unwrap().get(&pid).copied()
    }
}

fn limits(slice: &str, uuid: &str, gpu_index: u32, memory_bytes: u64, cores: u32, policy: CoresPolicy) -> Limits {
    Limits {
        slice: slice.into(),
        mode: Mode::Shim,
        gpu_uuid: uuid.into(),
        gpu_index,
        memory_bytes,
        cores_percent: cores,
        cores_policy: policy,
        priority: Priority::Normal,
        generation: 1,
    }
}

fn record(id: &str, slice: &str, path: &str) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        slice: slice.into(),
        pid: 1,
        name: Some(format!("{id}-name")),
        pod: None,
        namespace: None,
        cgroups: CgroupLine::parse_all(&format!("6:freezer:{path}\n0::{path}\n")).unwrap(),
    }
}

/// slice0 (4 GiB, 50 %) and slice1 (4 GiB, 50 %, borrow) on GPU 0; GPU 1 has no slices.
fn node_limits() -> Vec<Limits> {
    vec![
        limits("slice0", UUID0, 0, 4 * GIB, 50, CoresPolicy::Cap),
        limits("slice1", UUID0, 0, 4 * GIB, 50, CoresPolicy::Borrow),
    ]
}

fn observe(
    driver: &mut FakeDriver,
    host: &FakeHost,
    config: &Config,
    records: &[ContainerRecord],
    at_ms: u64,
) -> Snapshot {
    let limits = node_limits();
    let inputs = Inputs { config, limits: &limits, records, errors: Vec::new() };
    observe::observe(driver, host, &inputs, &mut SampleCursor::new(), at_ms)
}

#[test]
fn processes_are_charged_to_their_containers_slice_on_their_gpu() {
    let (mut driver, host) = (FakeDriver::two_gpus(), FakeHost::default());
    let records = [record("aaa", "slice0", "/docker/aaa"), record("bbb", "slice1", "/docker/bbb")];
    host.spawn(10, 100, "/docker/aaa");
    host.spawn(11, 101, "/docker/aaa/nested");
    host.spawn(20, 200, "/docker/bbb");
    host.spawn(30, 300, "/docker/other");
    host.spawn(31, 301, "/");
    driver.set(0, &[(10, 3 * GIB), (11, GIB), (20, GIB), (30, 2 * GIB), (31, MIB), (99, GIB)]);
    // Container aaa also uses GPU 1, where it has no slice (and which has none).
    driver.set(1, &[(10, GIB)]);
    driver.sample(0, 5, &[(10, 30), (11, 20), (20, 10)]);
    let snap = observe(&mut driver, &host, &Config::default(), &records, 1000);

    let owner =
        |gpu: u32, pid: u32| snap.processes.iter().find(|p| p.gpu_index == gpu && p.pid == pid).map(|p| &p.owner);
    assert!(
        matches!(owner(0, 10), Some(Owner::Slice { slice, container, .. }) if slice == "slice0" && container == "aaa")
    );
    assert!(matches!(owner(0, 11), Some(Owner::Slice { slice, .. }) if slice == "slice0"), "a sub-cgroup");
    assert!(matches!(owner(0, 20), Some(Owner::Slice { slice, .. }) if slice == "slice1"));
    assert!(matches!(owner(0, 30), Some(Owner::Unsliced { container: None, .. })));
    assert!(matches!(owner(0, 31), Some(Owner::Unsliced { container: None, .. })), "a host process");
    assert!(owner(0, 99).is_none(), "a process that has gone since the driver listed it");
    assert!(matches!(owner(1, 10), Some(Owner::Unsliced { container: Some(c), .. }) if c == "aaa"));

    let s0 = snap.slice("slice0").unwrap();
    assert_eq!((s0.used_bytes, s0.processes, s0.sm_percent), (4 * GIB, 2, 50));
    assert_eq!(s0.allowance_bytes, 4 * GIB + 512 * MIB, "two processes' context tolerance");
    assert_eq!(s0.containers, ["aaa"]);
    assert_eq!(s0.info.memory_policy, GuardPolicy::Kill);
    let s1 = snap.slice("slice1").unwrap();
    assert_eq!((s1.used_bytes, s1.processes, s1.sm_percent), (GIB, 1, 10));
    assert!(snap.gpus[0].sliced && !snap.gpus[1].sliced);
    assert_eq!(snap.gpus[0].used_bytes, 7 * GIB + MIB);
}

#[test]
fn the_tolerance_grows_per_process_up_to_its_cap() {
    let info = SliceInfo::from_limits(&node_limits()[0], GuardPolicy::Kill).unwrap();
    assert_eq!(observe::allowance(&info, 0, 256 * MIB, GIB), 4 * GIB);
    assert_eq!(observe::allowance(&info, 3, 256 * MIB, GIB), 4 * GIB + 768 * MIB);
    assert_eq!(observe::allowance(&info, 64, 256 * MIB, GIB), 5 * GIB, "capped at max_tolerance");
}

/// A guard over the fakes with slice state and records written in a temporary directory.
struct World {
    dir: tempfile::TempDir,
    driver: FakeDriver,
    host: Arc<FakeHost>,
    guard: Guard,
}

impl World {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        let state = dir.path().join("state");
        std::fs::write(&config_path, format!("state_dir = \"{}\"\n{config}", state.display())).unwrap();
        for l in node_limits() {
            l.store(&state).unwrap();
        }
        let (driver, host) = (FakeDriver::two_gpus(), Arc::new(FakeHost::default()));
        let config = Config::load(&config_path).unwrap();
        let guard = Guard::new(Box::new(driver.clone()), Arc::clone(&host) as Arc<dyn Host>, config, config_path, None);
        World { dir, driver, host, guard }
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Container `id` on `slice`, its processes in `/docker/<id>`.
    fn container(&self, id: &str, slice: &str) {
        record(id, slice, &format!("/docker/{id}")).store(&self.state()).unwrap();
    }

    fn pass(&mut self) -> PassReport {
        self.guard.pass()
    }
}

#[test]
fn a_slice_over_its_limit_loses_the_process_that_grew_last() {
    let mut w = World::new("");
    w.container("aaa", "slice0");
    w.container("bbb", "slice0");
    w.host.spawn(10, 100, "/docker/aaa");
    w.host.spawn(20, 200, "/docker/bbb");
    w.driver.set(0, &[(10, 2 * GIB), (20, GIB)]);
    assert!(w.pass().actions.is_empty(), "3 GiB of 4: nothing to do");
    // pid 20 grows to 3 GiB: 5 GiB held, 4.5 GiB allowed.
    w.driver.set(0, &[(10, 2 * GIB), (20, 3 * GIB)]);
    let report = w.pass();
    assert_eq!(w.host.kills(), [20]);
    assert_eq!(report.actions.len(), 1, "{:?}", report.actions);
    let line = &report.actions[0];
    for want in [
        "slice0 is over its memory limit by the driver's count: 5.00 GiB held by 2 processes on GPU 0, limit 4.00 GiB + 0.50 GiB tolerance",
        "pid 20 of container bbb (bbb-name), which grew last (to 3.00 GiB): killed (SIGKILL)",
    ] {
        assert!(line.contains(want), "{line}\nwant: {want}");
    }
    // The driver still lists it for a pass while it exits: not counted, nobody else killed.
    w.host.spawn(20, 200, "/docker/bbb");
    assert!(w.pass().actions.is_empty());
    assert_eq!(w.host.kills(), [20]);
    w.driver.set(0, &[(10, 2 * GIB)]);
    assert!(w.pass().actions.is_empty());
}

#[test]
fn as_many_are_killed_as_it_takes_the_last_grown_first() {
    let mut w = World::new("");
    w.container("aaa", "slice0");
    for (pid, start) in [(10, 100), (11, 110), (12, 120)] {
        w.host.spawn(pid, start, "/docker/aaa");
    }
    w.driver.set(0, &[(10, GIB), (11, 512 * MIB), (12, 512 * MIB)]);
    w.pass();
    // 11 and 12 grow in the same pass, 12 by more; 10 does not grow. 11 GiB held: without 12,
    // 5 GiB is still more than 4.5 GiB.
    w.driver.set(0, &[(10, GIB), (11, 4 * GIB), (12, 6 * GIB)]);
    w.pass();
    assert_eq!(w.host.kills(), [12, 11], "the larger growth first, then the next until it fits");
}

#[test]
fn a_reused_pid_is_not_killed() {
    let (mut driver, host) = (FakeDriver::two_gpus(), FakeHost::default());
    let records = [record("aaa", "slice0", "/docker/aaa")];
    host.spawn(10, 100, "/docker/aaa");
    driver.set(0, &[(10, 5 * GIB)]);
    let config = Config::default();
    let snap = observe(&mut driver, &host, &config, &records, 0);
    let actions = Enforcer::new().decide(&snap, &config.guard);
    let Some(Action::Kill { pid, start_time, reason, .. }) = actions.first() else { panic!("{actions:?}") };
    assert_eq!((*pid, *start_time, *reason), (10, 100, KillReason::OverLimit));
    // Between the look and the kill the process exits and another gets its PID.
    host.spawn(10, 999, "/");
    assert_eq!(host.kill(*pid, *start_time).unwrap(), Killed::Gone);
    assert!(host.kills().is_empty());
}

#[test]
fn memory_policy_log_logs_once_then_every_minute_and_when_back() {
    let config = Config::parse("[guard]\nmemory_policy = \"log\"").unwrap();
    let (driver, host) = (FakeDriver::two_gpus(), FakeHost::default());
    let records = [record("aaa", "slice0", "/docker/aaa")];
    host.spawn(10, 100, "/docker/aaa");
    driver.set(0, &[(10, 6 * GIB)]);
    let mut e = Enforcer::new();
    let mut decide = |at: u64| e.decide(&observe(&mut driver.clone(), &host, &config, &records, at), &config.guard);
    let first = decide(1000);
    assert!(
        matches!(&first[..], [Action::Warn { message }] if message.contains("memory_policy = log: nothing killed"))
    );
    assert!(decide(2000).is_empty());
    assert!(decide(30_000).is_empty());
    assert_eq!(decide(61_000).len(), 1, "again after a minute");
    driver.set(0, &[(10, GIB)]);
    let back = decide(62_000);
    assert!(matches!(&back[..], [Action::Info { message }] if message.contains("back under")), "{back:?}");
    assert!(host.kills().is_empty());
}

#[test]
fn per_slice_memory_policy_comes_from_the_config() {
    // slice1 is an equal-split slice of GPU 0; a [[gpu]] table sets GPU 0's policy to log.
    let config = Config::parse("[defaults]\nsplit_count = 2\n[[gpu]]\nindex = 0\nmemory_policy = \"log\"").unwrap();
    let (mut driver, host) = (FakeDriver::two_gpus(), FakeHost::default());
    let snap = observe(&mut driver, &host, &config, &[], 0);
    assert_eq!(snap.slice("slice0").unwrap().info.memory_policy, GuardPolicy::Log);
}

#[test]
fn processes_outside_every_slice_are_reported_once_or_killed() {
    let mut w = World::new("");
    w.container("aaa", "slice0");
    w.host.spawn(10, 100, "/docker/aaa");
    w.host.spawn(30, 300, "/docker/nogpuslice");
    w.host.spawn(40, 400, "/");
    w.driver.set(0, &[(10, GIB), (30, 2 * GIB)]);
    // A process on GPU 1, which has no slices: none of the guard's business.
    w.driver.set(1, &[(40, GIB)]);
    let report = w.pass();
    assert_eq!(report.actions.len(), 1, "{:?}", report.actions);
    assert!(report.actions[0].contains("pid 30 uses GPU 0 (GPU-00000000-0000-0000-0000-000000000000) outside every slice: 2.00 GiB held, not in a container started with a gpuslice device (unsliced_policy = log)"), "{}", report.actions[0]);
    assert!(w.pass().actions.is_empty(), "once");
    assert!(w.host.kills().is_empty());

    let mut w = World::new("[guard]\nunsliced_policy = \"kill\"");
    w.host.spawn(30, 300, "/docker/nogpuslice");
    w.driver.set(0, &[(30, 2 * GIB)]);
    let report = w.pass();
    assert_eq!(w.host.kills(), [30]);
    assert!(report.actions[0].ends_with("killed (SIGKILL)"), "{}", report.actions[0]);
}

fn compute_config(extra: &str) -> GuardConfig {
    let mut g = Config::parse(&format!("[guard]\ncompute_guard = \"throttle\"\ncompute_window = \"5s\"\n{extra}"))
        .unwrap()
        .guard;
    g.interval = Span::from_millis(1000);
    g
}

/// Runs `seconds` passes of one second with slice0's process at `share0` % and slice1's at
/// `share1` %; returns every action.
fn run_compute(e: &mut Enforcer, g: &GuardConfig, from: u64, seconds: u64, share0: u32, share1: u32) -> Vec<Action> {
    let config = Config { guard: g.clone(), ..Config::default() };
    let (mut driver, host) = (FakeDriver::two_gpus(), FakeHost::default());
    let records = [record("aaa", "slice0", "/docker/aaa"), record("bbb", "slice1", "/docker/bbb")];
    host.spawn(10, 100, "/docker/aaa");
    host.spawn(20, 200, "/docker/bbb");
    driver.set(0, &[(10, GIB), (20, GIB)]);
    let mut all = Vec::new();
    for s in from..from + seconds {
        driver.sample(0, s * 1_000_000, &[(10, share0), (20, share1)]);
        let snap = observe(&mut driver, &host, &config, &records, s * 1000);
        all.extend(e.decide(&snap, g));
    }
    all
}

#[test]
fn a_slice_far_above_its_share_for_the_window_is_throttled_until_back() {
    let g = compute_config("");
    let mut e = Enforcer::new();
    // 60 % on a 50 % slice: within the margin (15 points).
    assert!(run_compute(&mut e, &g, 1, 10, 60, 0).is_empty());
    assert!(run_compute(&mut e, &g, 11, 10, 50, 0).is_empty());
    // 95 %: a burst of a second is not a sustained window...
    let early = run_compute(&mut e, &g, 21, 1, 95, 0);
    assert!(early.is_empty(), "{early:?}");
    // ...but within the window (5 s) of it, the slice is throttled.
    let actions = run_compute(&mut e, &g, 22, 4, 95, 0);
    let Some(Action::Throttle { slice, run_fraction, message: Some(m) }) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!(slice, "slice0");
    assert!((run_fraction - 50.0 / 95.0).abs() < 0.2, "{run_fraction}");
    assert!(m.contains("share is 50 %") && m.contains("kernels already queued still run"), "{m}");
    assert!(e.throttled("slice0") && !e.throttled("slice1"));
    // Still above: the fraction goes down.
    let tighter = run_compute(&mut e, &g, 26, 2, 80, 0);
    assert!(
        tighter.iter().any(|a| matches!(a, Action::Throttle { run_fraction, .. } if *run_fraction < 0.5)),
        "{tighter:?}"
    );
    // Back under its share: the fraction goes up, and once the window agrees, released.
    let back = run_compute(&mut e, &g, 28, 20, 40, 0);
    assert!(back.iter().any(|a| matches!(a, Action::Release { slice, .. } if slice == "slice0")), "{back:?}");
    assert!(!e.throttled("slice0"));
}

#[test]
fn borrowing_is_allowed_while_the_gpu_is_otherwise_idle() {
    let g = compute_config("");
    let mut e = Enforcer::new();
    // slice1 (borrow, 50 %) alone at 95 %: allowed.
    assert!(run_compute(&mut e, &g, 1, 10, 0, 95).is_empty());
    // slice0 gets busy: slice1 is now taking from a neighbour.
    let actions = run_compute(&mut e, &g, 11, 6, 5, 95);
    assert!(actions.iter().any(|a| matches!(a, Action::Throttle { slice, .. } if slice == "slice1")), "{actions:?}");
}

#[test]
fn compute_guard_off_only_measures() {
    let mut g = compute_config("");
    g.compute_guard = ComputeGuard::Off;
    let mut e = Enforcer::new();
    assert!(run_compute(&mut e, &g, 1, 20, 100, 0).is_empty());
}

#[test]
fn a_throttle_freezes_and_thaws_the_slices_containers_and_ends_thawed() {
    let mut w = World::new("[guard]\ncompute_guard = \"throttle\"");
    w.container("aaa", "slice0");
    w.container("ccc", "slice0");
    w.container("bbb", "slice1");
    // The guard throttles slice0 to half the time: both its containers are frozen and thawed,
    // slice1's is left alone.
    let records = ContainerRecord::list(&w.state()).0;
    let throttle = Action::Throttle { slice: "slice0".into(), run_fraction: 0.5, message: Some("throttled".into()) };
    assert_eq!(w.guard.apply(&[throttle], &records), ["throttled"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let thawed = |path: &str| w.host.freezes.lock().unwrap().iter().any(|(p, frozen)| p == path && !frozen);
    while !(thawed("/docker/aaa") && thawed("/docker/ccc")) {
        assert!(std::time::Instant::now() < deadline, "no freeze and thaw within 5 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!w.host.freezes.lock().unwrap().iter().any(|(p, _)| p == "/docker/bbb"));
    assert!(w.state().join("host/throttled/slice0").is_file(), "the throttle is recorded for a guard that restarts");
    w.guard.release_all();
    let freezes = w.host.freezes.lock().unwrap().clone();
    let last = |path: &str| freezes.iter().rev().find(|(p, _)| p == path).map(|f| f.1);
    assert_eq!((last("/docker/aaa"), last("/docker/ccc")), (Some(false), Some(false)), "it ends thawed");
    assert!(!w.state().join("host/throttled/slice0").exists());
}

#[test]
fn a_guard_that_starts_thaws_what_an_earlier_one_left_frozen() {
    let w = World::new("");
    let dir = w.state().join("host/throttled");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slice0"), "6:freezer:/docker/aaa\n0::/docker/aaa\n\n6:freezer:/docker/ccc\n\n").unwrap();
    w.guard.thaw_leftovers();
    let freezes = w.host.freezes.lock().unwrap().clone();
    assert_eq!(freezes, [("/docker/aaa".to_owned(), false), ("/docker/ccc".to_owned(), false)]);
    assert!(!dir.join("slice0").exists());
}

#[test]
fn unreadable_state_is_reported_and_the_rest_still_enforced() {
    let mut w = World::new("");
    w.container("aaa", "slice0");
    std::fs::create_dir_all(w.state().join("slices/broken")).unwrap();
    std::fs::write(w.state().join("slices/broken/limits"), "garbage").unwrap();
    std::fs::write(w.state().join("host/containers/aaa/slice9"), "junk").unwrap();
    w.host.spawn(10, 100, "/docker/aaa");
    w.driver.set(0, &[(10, 6 * GIB)]);
    let report = w.pass();
    assert_eq!(report.snapshot.errors.len(), 2, "{:?}", report.snapshot.errors);
    assert_eq!(w.host.kills(), [10]);
    let kill = report.actions.iter().find(|a| a.contains("killed")).unwrap();
    assert!(kill.contains("6.00 GiB held by 1 process on GPU 0, limit 4.00 GiB + 0.25 GiB tolerance"), "{kill}");
}

#[test]
fn a_changed_config_is_read_at_the_next_pass_and_a_bad_one_ignored() {
    let mut w = World::new("[guard]\nmemory_policy = \"log\"");
    w.container("aaa", "slice0");
    w.host.spawn(10, 100, "/docker/aaa");
    w.driver.set(0, &[(10, 6 * GIB)]);
    assert!(w.pass().actions[0].contains("memory_policy = log"));
    assert!(w.host.kills().is_empty());
    let path = w.dir.path().join("config.toml");
    let state = w.state();
    let write = |text: &str| {
        // A new modification time even on a coarse clock.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, format!("state_dir = \"{}\"\n{text}", state.display())).unwrap();
    };
    write("[guard]\nmemory_policy = \"nonsense\"");
    w.pass();
    assert!(w.host.kills().is_empty(), "a bad file changes nothing");
    assert_eq!(w.guard.config().guard.memory_policy, GuardPolicy::Log);
    write("[guard]\nmemory_policy = \"kill\"");
    w.pass();
    assert_eq!(w.host.kills(), [10], "the new policy at the next pass");
}

/// slice0's containers `aaa` (pids 10, 11) and `bbb` (pid 20, slice1); pid 40 in no container.
fn squat_world() -> (tempfile::TempDir, FakeHost, Vec<ContainerRecord>, Snapshot, GuardConfig) {
    let dir = tempfile::tempdir().unwrap();
    let (mut driver, host) = (FakeDriver::two_gpus(), FakeHost::default());
    let records = vec![record("aaa", "slice0", "/docker/aaa"), record("bbb", "slice1", "/docker/bbb")];
    host.spawn(10, 100, "/docker/aaa");
    host.spawn(11, 101, "/docker/aaa");
    host.spawn(20, 200, "/docker/bbb");
    host.spawn(40, 400, "/system.slice/other");
    let config = Config::parse("[guard]\nlock_hold_limit = \"3s\"\n").unwrap();
    let snap = observe(&mut driver, &host, &config, &records, 0);
    (dir, host, records, snap, config.guard)
}

fn squat_check(
    watch: &mut super::squat::SquatWatch,
    host: &FakeHost,
    dir: &std::path::Path,
    (snap, records, config): (&Snapshot, &[ContainerRecord], &GuardConfig),
    at_ms: u64,
) -> Vec<Action> {
    watch.check(host, dir, snap, records, config, at_ms)
}

#[test]
fn a_region_lock_held_across_passes_gets_its_holder_killed() {
    let (dir, host, records, snap, config) = squat_world();
    let region = gpuslice_core::region::region_path(dir.path(), "slice0");
    let mut watch = super::squat::SquatWatch::with_pause(std::time::Duration::ZERO);
    let ctx = (&snap, records.as_slice(), &config);
    host.lock(&region, &[11]);
    for at in [0, 1000, 2000] {
        assert!(squat_check(&mut watch, &host, dir.path(), ctx, at).is_empty(), "held {at} ms: not yet");
    }
    let actions = squat_check(&mut watch, &host, dir.path(), ctx, 3000);
    let [Action::Kill { reason: KillReason::LockSquat, pid: 11, start_time: 101, slice: Some(slice), message }] =
        actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(slice, "slice0");
    assert!(message.contains("aaa-name") && message.contains("slice0") && message.contains("3.0 s"), "{message}");

    // Applied through the guard's host, the kill frees the lock: nothing more to do.
    assert_eq!(host.kill(11, 101).unwrap(), Killed::Sent);
    assert!(squat_check(&mut watch, &host, dir.path(), ctx, 4000).is_empty());
    // With memory_policy = log, one line, nothing killed, once per hold.
    let mut logged = snap.clone();
    logged.slices[0].info.memory_policy = GuardPolicy::Log;
    let ctx = (&logged, records.as_slice(), &config);
    host.lock(&region, &[10]);
    assert!(squat_check(&mut watch, &host, dir.path(), ctx, 5000).is_empty());
    let actions = squat_check(&mut watch, &host, dir.path(), ctx, 8000);
    assert!(
        matches!(actions.as_slice(), [Action::Warn { message }] if message.contains("pid 10") && message.contains("log")),
        "{actions:?}"
    );
    assert!(squat_check(&mut watch, &host, dir.path(), ctx, 9000).is_empty(), "logged once");
    assert_eq!(host.kills(), [11]);
}

#[test]
fn a_short_hold_is_no_squat() {
    let (dir, host, records, snap, config) = squat_world();
    let region = gpuslice_core::region::region_path(dir.path(), "slice0");
    let mut watch = super::squat::SquatWatch::with_pause(std::time::Duration::ZERO);
    let ctx = (&snap, records.as_slice(), &config);
    // Held at some passes, but free at one in between: the clock starts again.
    for (at, holders) in [(0, &[10][..]), (1000, &[10]), (2000, &[]), (3000, &[11]), (4000, &[11]), (5000, &[11])] {
        host.lock(&region, holders);
        assert!(squat_check(&mut watch, &host, dir.path(), ctx, at).is_empty(), "at {at} ms");
    }
    // A slice without containers is not looked at.
    let region1 = gpuslice_core::region::region_path(dir.path(), "slice1");
    let mut idle = snap.clone();
    idle.slices[1].containers.clear();
    host.lock(&region1, &[20]);
    for at in [0, 5000] {
        assert!(squat_check(&mut watch, &host, dir.path(), (&idle, &records, &config), at).is_empty());
    }
    assert!(host.kills().is_empty());
}

#[test]
fn a_holder_outside_the_slices_containers_is_reported_not_killed() {
    let (dir, host, records, snap, config) = squat_world();
    let mut watch = super::squat::SquatWatch::with_pause(std::time::Duration::ZERO);
    let ctx = (&snap, records.as_slice(), &config);
    // slice0's lock held by a host process, and by a process of slice1's container.
    host.lock(&gpuslice_core::region::region_path(dir.path(), "slice0"), &[40, 20]);
    assert!(squat_check(&mut watch, &host, dir.path(), ctx, 0).is_empty());
    let actions = squat_check(&mut watch, &host, dir.path(), ctx, 3500);
    assert!(
        matches!(actions.as_slice(), [Action::Warn { message }] if message.contains("slice0") && message.contains("no process of its containers")),
        "{actions:?}"
    );
    assert!(squat_check(&mut watch, &host, dir.path(), ctx, 4500).is_empty(), "reported once");
    assert!(host.kills().is_empty());
}

#[test]
fn the_guard_pass_kills_a_squatter() {
    let mut w = World::new("[guard]\nlock_hold_limit = \"1s\"\n");
    w.container("aaa", "slice0");
    w.host.spawn(10, 100, "/docker/aaa");
    w.host.lock(&gpuslice_core::region::region_path(&w.state(), "slice0"), &[10]);
    let start = std::time::Instant::now();
    let mut lines = Vec::new();
    while w.host.kills().is_empty() && start.elapsed() < std::time::Duration::from_secs(10) {
        lines.extend(w.guard.pass().actions);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(w.host.kills(), [10]);
    assert!(
        matches!(lines.as_slice(), [l] if l.contains("region lock") && l.ends_with("killed (SIGKILL)")),
        "{lines:?}"
    );
}

#[path = "metrics_tests.rs"]
mod metrics_tests;
