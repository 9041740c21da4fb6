//! The host guard, `gpuslice-cdi daemon`: makes each slice's limits true from the driver's own
//! numbers, whatever a container did to get around the interception library.
//!
//! One pass, end to end (every `[guard] interval`, 1 s by default):
//!
//! 1. **Read the host's state.** The config (again, if the file changed), every slice's
//!    limits file (`<state_dir>/slices/*/limits`, host-written) and the hook's host-only
//!    container records (`<state_dir>/host/containers/*/*`: each container's slice and
//!    cgroups). Nothing a container can write is read: not the regions, not the boards.
//! 2. **Observe** ([`observe::observe`]): per GPU, the driver lists the processes using it by
//!    host PID with all the memory each holds (`nvmlDeviceGetComputeRunningProcesses_v3`) and
//!    their recent share of its time (`nvmlDeviceGetProcessUtilization`). Each PID's cgroups
//!    (`/proc/<pid>/cgroup`, the kernel's) are matched against the records: the process is a
//!    slice's, or outside every slice. The result is a [`Snapshot`]: per process, per slice
//!    (memory held against its allowance, its share of the GPU), per GPU. The snapshot is all a
//!    consumer of the pass needs: the enforcement below, and a metrics endpoint later.
//! 3. **Decide** ([`enforce::Enforcer::decide`]): a slice over its allowance has the processes
//!    that grew last killed (or is logged, by its memory policy); a process outside every slice
//!    on a sliced GPU is reported once (or killed); a slice far above its compute share for a
//!    sustained window is throttled. Apart from the snapshot, a slice whose region lock stays
//!    held past `lock_hold_limit` has its holder found from the kernel and killed (or logged)
//!    ([`squat`]).
//! 4. **Act**: kills go through a pidfd after checking the process's start time again (a PID
//!    reused since the look is never hit), with one log line naming the container (id and
//!    name), the slice and the numbers; throttles freeze and thaw the slice's containers' cgroups
//!    in a duty cycle ([`throttle`]).
//!
//! What a pass costs and what it saw are logged at debug level; `--json` prints each
//! snapshot. The driver and the host are traits ([`driver::Driver`], [`host::Host`]), so the
//! decisions are tested with fakes.

pub mod driver;
pub mod enforce;
pub mod events;
pub mod host;
pub mod metrics;
pub mod observe;
pub mod regions;
pub mod squat;
pub mod throttle;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use gpuslice_core::config::Config;
use gpuslice_core::containers::{ContainerRecord, containers_dir};
use gpuslice_core::limits::{self, Limits};
use gpuslice_core::mig::MigInstance;
use serde::Serialize;

pub use self::driver::{Driver, NvmlDriver};
pub use self::enforce::{Action, Enforcer};
use self::events::RefusedLog;
pub use self::host::{Host, Killed, LinuxHost};
use self::metrics::{Latest, Tally};
pub use self::observe::Snapshot;
use self::observe::{Inputs, SampleCursor};
use self::regions::RegionView;
use self::squat::SquatWatch;
use self::throttle::Throttler;

/// How the daemon is run.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_path: PathBuf,
    pub nvml_lib: Option<PathBuf>,
    /// Instead of the config's `state_dir`.
    pub state_dir: Option<PathBuf>,
    /// Stop after this many passes (default: run until SIGTERM or SIGINT).
    pub passes: Option<u64>,
    /// Print each pass's report as one JSON line on standard output.
    pub json: bool,
    /// Where `/metrics` listens, instead of the config's `[guard] metrics`; `Some(None)`: off.
    pub metrics: Option<Option<std::net::SocketAddr>>,
}

/// What one pass saw and did, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub snapshot: Snapshot,
    /// The slices' regions as read this pass (for the metrics and the log only).
    pub regions: Vec<RegionView>,
    /// The log lines of the actions taken.
    pub actions: Vec<String>,
    /// Wall-clock and CPU time of the pass (reading the state, observing, deciding, acting).
    pub wall_us: u64,
    pub cpu_us: u64,
}

/// The guard: its inputs, its memory of earlier passes, its throttles.
pub struct Guard {
    driver: Box<dyn Driver>,
    host: Arc<dyn Host>,
    config: Config,
    config_path: PathBuf,
    config_stamp: Option<SystemTime>,
    state_dir_override: Option<PathBuf>,
    enforcer: Enforcer,
    throttler: Throttler,
    cursor: SampleCursor,
    squats: SquatWatch,
    /// Problems already logged, so that a standing one is logged once.
    logged: HashSet<String>,
    /// What the metrics count across passes.
    tally: Tally,
    /// The latest exposition, for the metrics server.
    latest: Latest,
    refused: RefusedLog,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid, writable timespec; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Guard {
    /// A guard over `driver` and `host`, with the config at `config_path` (already checked by
    /// the caller: `config`).
    pub fn new(
        driver: Box<dyn Driver>,
        host: Arc<dyn Host>,
        config: Config,
        config_path: PathBuf,
        state_dir_override: Option<PathBuf>,
    ) -> Self {
        let state_dir = state_dir_override.clone().unwrap_or_else(|| config.state_dir.clone());
        let throttler = Throttler::new(Arc::clone(&host), &state_dir);
        Self {
            driver,
            host,
            config_stamp: modified(&config_path),
            config,
            config_path,
            state_dir_override,
            enforcer: Enforcer::new(),
            throttler,
            cursor: SampleCursor::new(),
            squats: SquatWatch::new(),
            logged: HashSet::new(),
            tally: Tally::default(),
            latest: Latest::default(),
            refused: RefusedLog::default(),
        }
    }

    /// The latest metrics exposition, shared with a [`metrics::Server`].
    pub fn latest_metrics(&self) -> Latest {
        self.latest.clone()
    }

    /// Where slice state and the records are.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir_override.clone().unwrap_or_else(|| self.config.state_dir.clone())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reads the config again if the file changed (or `force`); a bad file is logged and the
    /// config in use stays.
    pub fn reload_config(&mut self, force: bool) {
        let stamp = modified(&self.config_path);
        if !force && stamp == self.config_stamp {
            return;
        }
        self.config_stamp = stamp;
        match crate::load_config(&self.config_path) {
            Ok(c) => {
                if c != self.config {
                    tracing::info!(path = %self.config_path.display(), "config read again");
                    self.config = c;
                }
            }
            Err(e) => tracing::error!("{e:#}; the guard keeps the config it had"),
        }
    }

    /// Thaws what an earlier guard left frozen.
    pub fn thaw_leftovers(&self) {
        for slice in self.throttler.thaw_leftovers() {
            tracing::warn!("{slice} was left under throttle by an earlier guard: thawed");
        }
    }

    /// Every slice's limits file, and lines for those that could not be read.
    fn read_limits(&self, state_dir: &Path) -> (Vec<Limits>, Vec<String>) {
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        let dir = limits::slices_dir(state_dir);
        let Ok(entries) = fs::read_dir(&dir) else { return (out, errors) };
        for entry in entries.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            let name = entry.file_name().to_string_lossy().into_owned();
            match Limits::load(&limits::limits_path(state_dir, &name)) {
                Ok(l) => out.push(l),
                Err(e) => errors.push(format!("slice {name}: {e}")),
            }
        }
        (out, errors)
    }

    /// One pass: read, observe, decide, act.
    pub fn pass(&mut self) -> PassReport {
        let (wall0, cpu0) = (Instant::now(), thread_cpu_us());
        self.reload_config(false);
        let state_dir = self.state_dir();
        let (limits, mut errors) = self.read_limits(&state_dir);
        let (records, record_errors) = ContainerRecord::list(&state_dir);
        errors.extend(record_errors.iter().map(|e| format!("container record {e}")));
        let inputs = Inputs { config: &self.config, limits: &limits, records: &records, errors };
        let mut snapshot = observe::observe(&mut *self.driver, &*self.host, &inputs, &mut self.cursor, unix_ms());
        let mut actions = self.enforcer.decide(&snapshot, &self.config.guard);
        actions.extend(self.squats.check(&*self.host, &state_dir, &snapshot, &records, &self.config.guard, unix_ms()));
        let mut lines = self.apply(&actions, &records);

        // For the metrics and the log only: what the interception library says of each slice.
        let regions: Vec<RegionView> =
            snapshot.slices.iter().filter_map(|s| regions::read(&state_dir, &s.info.name)).collect();
        for r in &regions {
            if let Some(e) = &r.error {
                snapshot.errors.push(format!("{}: region not counted in the metrics: {e}", r.slice));
            }
        }
        self.learn_devices(&records);
        lines.extend(self.refused.check(&*self.host, &snapshot, &regions, &records, &self.tally.devices));
        self.tally.add_pass(&snapshot, self.throttler.slices());
        self.tally.retain_containers(&records);
        self.log_errors(&snapshot.errors);
        let migs: Vec<(Limits, MigInstance)> = limits
            .iter()
            .filter(|l| l.mode == gpuslice_core::config::Mode::Mig)
            .filter_map(|l| MigInstance::load(&state_dir, &l.slice).map(|m| (l.clone(), m)))
            .collect();
        let render0 = Instant::now();
        let pass_seconds = wall0.elapsed().as_secs_f64();
        self.latest.set(metrics::render(&metrics::View {
            snapshot: &snapshot,
            regions: &regions,
            records: &records,
            tally: &self.tally,
            pass_seconds,
            migs: &migs,
        }));
        tracing::trace!(render_us = render0.elapsed().as_micros() as u64, "metrics rendered");
        PassReport {
            snapshot,
            regions,
            actions: lines,
            wall_us: wall0.elapsed().as_micros() as u64,
            cpu_us: thread_cpu_us().saturating_sub(cpu0),
        }
    }

    /// For each container not looked at yet, the device numbers of its state mounts, from its
    /// first process's mountinfo (how its processes' region slots are told apart).
    fn learn_devices(&mut self, records: &[ContainerRecord]) {
        for r in records {
            if !self.tally.devices.contains_key(&r.id) {
                let devices = self.host.state_mounts(r.pid);
                if !devices.is_empty() {
                    self.tally.devices.insert(r.id.clone(), devices);
                }
            }
        }
    }

    fn log_errors(&mut self, errors: &[String]) {
        let now: HashSet<String> = errors.iter().cloned().collect();
        for e in errors {
            if !self.logged.contains(e) {
                tracing::warn!("{e}");
            }
        }
        self.logged = now;
    }

    /// Carries out `actions`; returns the lines logged.
    fn apply(&mut self, actions: &[Action], records: &[ContainerRecord]) -> Vec<String> {
        let mut lines = Vec::new();
        for action in actions {
            match action {
                Action::Kill { pid, start_time, message, slice, reason } => {
                    let line = match self.host.kill(*pid, *start_time) {
                        Ok(Killed::Sent) => {
                            self.tally.kill(slice.as_deref(), *reason);
                            format!("{message}: killed (SIGKILL)")
                        }
                        Ok(Killed::Gone) => format!("{message}: it had already exited"),
                        Err(e) => format!("{message}: could not kill it: {e}"),
                    };
                    tracing::warn!("{line}");
                    lines.push(line);
                }
                Action::Warn { message } => {
                    tracing::warn!("{message}");
                    lines.push(message.clone());
                }
                Action::Info { message } => {
                    tracing::info!("{message}");
                    lines.push(message.clone());
                }
                Action::Throttle { slice, run_fraction, message } => {
                    let containers: Vec<_> =
                        records.iter().filter(|r| &r.slice == slice).map(|r| r.cgroups.clone()).collect();
                    match self.throttler.set(slice, containers, *run_fraction) {
                        Ok(()) => {
                            if let Some(m) = message {
                                tracing::warn!("{m}");
                                lines.push(m.clone());
                            }
                            tracing::debug!(%slice, run_fraction, "throttle");
                        }
                        Err(e) => {
                            let line = format!("{slice}: could not throttle it: {e}");
                            tracing::error!("{line}");
                            lines.push(line);
                        }
                    }
                }
                Action::Release { slice, message } => {
                    self.throttler.release(slice);
                    tracing::info!("{message}");
                    lines.push(message.clone());
                }
            }
        }
        lines
    }

    /// Stops every throttle, thawing its slice.
    pub fn release_all(&mut self) {
        self.throttler.release_all();
    }
}

/// Signals the daemon waits for: stop (SIGTERM, SIGINT) and read the config again (SIGHUP).
fn signal_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to initialise with sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signals are valid numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Waits up to `timeout` for one of [`signal_set`]'s signals (blocked in this thread, so they
/// queue); returns it, or `None` after the timeout.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos().into() };
    loop {
        // SAFETY: `set` and `ts` are valid for the call; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
        if sig > 0 {
            return Some(sig);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// Runs the guard until SIGTERM or SIGINT (or `passes` passes).
pub fn daemon(opts: &Options) -> Result<()> {
    // Blocked before any thread starts, so every thread inherits the mask and the signals
    // wait for `wait_signal` instead of killing the process mid-throttle.
    let signals = signal_set();
    // SAFETY: a valid set; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    anyhow::ensure!(r == 0, "blocking signals: {}", std::io::Error::from_raw_os_error(r));

    let config = crate::load_config(&opts.config_path)?;
    let interval = |c: &Config| c.guard.interval.0;
    let lib = opts.nvml_lib.clone();
    let mut announced = false;
    let driver = loop {
        match NvmlDriver::load(lib.as_deref()) {
            Ok(d) => break d,
            Err(e) => {
                if !announced {
                    tracing::error!("{e}; the guard tries again every {}", config.guard.interval);
                    announced = true;
                }
                if matches!(wait_signal(&signals, interval(&config)), Some(s) if s != libc::SIGHUP) {
                    return Ok(());
                }
            }
        }
    };
    let host: Arc<dyn Host> = Arc::new(LinuxHost::new());
    let mut guard = Guard::new(Box::new(driver), host, config, opts.config_path.clone(), opts.state_dir.clone());
    guard.thaw_leftovers();
    let g = &guard.config().guard;
    tracing::info!(
        "guard started: state in {}, every {}, memory_policy = {}, unsliced_policy = {}, compute_guard = {}",
        guard.state_dir().display(),
        g.interval,
        g.memory_policy,
        g.unsliced_policy,
        g.compute_guard
    );
    // The metrics endpoint: a port that cannot be had is one error line, and the guard runs on.
    let metrics_addr = match opts.metrics {
        Some(addr) => addr,
        None => guard.config().guard.metrics_addr().unwrap_or(None),
    };
    if let Some(addr) = metrics_addr {
        match metrics::Server::start(addr, guard.latest_metrics()) {
            Ok(server) => tracing::info!("metrics at http://{}/metrics", server.addr),
            Err(e) => tracing::error!("{e}; the guard runs without its metrics endpoint"),
        }
    }
    let containers = containers_dir(&guard.state_dir());
    if !containers.exists() {
        tracing::info!(dir = %containers.display(), "no container records yet");
    }
    let mut done = 0u64;
    let result = loop {
        let started = Instant::now();
        let report = guard.pass();
        tracing::debug!(
            wall_us = report.wall_us,
            cpu_us = report.cpu_us,
            processes = report.snapshot.processes.len(),
            slices = report.snapshot.slices.len(),
            "pass"
        );
        if opts.json {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => break Err(e).context("writing the pass report"),
            }
        }
        done += 1;
        if opts.passes.is_some_and(|n| done >= n) {
            break Ok(());
        }
        let rest = interval(guard.config()).saturating_sub(started.elapsed());
        match wait_signal(&signals, rest) {
            Some(libc::SIGHUP) => guard.reload_config(true),
            Some(_) => break Ok(()),
            None => {}
        }
    };
    guard.release_all();
    tracing::info!("guard stopped");
    result
}
