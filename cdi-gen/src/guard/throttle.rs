//! The compute throttle: a slice's containers frozen and thawed in a duty cycle by the cgroup
//! freezer, one thread per throttled slice.
//!
//! In each period of [`PERIOD`] a throttled slice's containers run for `run_fraction` of it
//! and are frozen for the rest. A frozen process launches nothing, so the slice's share of the
//! GPU falls with its running time; work it queued on the GPU before being frozen still runs
//! (the freezer stops CPU threads, not the GPU), so the throttle works on the slice's *rate* of
//! launching, over periods longer than its queue.
//!
//! A guard that dies while a slice is frozen must not leave it frozen: which cgroups are under
//! throttle is written to `<state_dir>/host/throttled/<slice>` while it lasts, and a guard that
//! starts thaws whatever such files name ([`Throttler::thaw_leftovers`]); a guard that stops
//! thaws every slice it throttles.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use gpuslice_core::containers::{CgroupLine, host_dir};

use super::host::Host;

/// One freeze/thaw cycle.
pub const PERIOD: Duration = Duration::from_millis(100);

/// What a slice's thread shares with the guard.
#[derive(Debug)]
struct Shared {
    /// `run_fraction` as f64 bits.
    run: AtomicU64,
    stop: AtomicBool,
    /// Each container's cgroups.
    containers: Mutex<Vec<Vec<CgroupLine>>>,
}

#[derive(Debug)]
struct Running {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// Every throttled slice's freezer thread.
#[derive(Debug)]
pub struct Throttler {
    host: Arc<dyn Host>,
    dir: PathBuf,
    slices: BTreeMap<String, Running>,
}

impl std::fmt::Debug for dyn Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

/// `<state_dir>/host/throttled`.
pub fn throttled_dir(state_dir: &Path) -> PathBuf {
    host_dir(state_dir).join("throttled")
}

fn render(containers: &[Vec<CgroupLine>]) -> String {
    let mut s = String::new();
    for c in containers {
        for line in c {
            let _ = writeln!(s, "{}", line.render());
        }
        s.push('\n');
    }
    s
}

impl Throttler {
    pub fn new(host: Arc<dyn Host>, state_dir: &Path) -> Self {
        Self { host, dir: throttled_dir(state_dir), slices: BTreeMap::new() }
    }

    /// Thaws what an earlier guard left under throttle (it was killed, or the node lost
    /// power mid-cycle: then the cgroups are gone anyway). Returns the slices thawed.
    pub fn thaw_leftovers(&self) -> Vec<String> {
        let mut thawed = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else { return thawed };
        for entry in entries.filter_map(Result::ok) {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            for container in text.split("\n\n") {
                if let Ok(lines) = CgroupLine::parse_all(container)
                    && !lines.is_empty()
                {
                    let _ = self.host.set_frozen(&lines, false);
                }
            }
            let _ = fs::remove_file(entry.path());
            thawed.push(entry.file_name().to_string_lossy().into_owned());
        }
        thawed
    }

    /// Throttles `slice`'s `containers` to `run_fraction` of the time, starting its thread if
    /// needed, or updates them.
    pub fn set(&mut self, slice: &str, containers: Vec<Vec<CgroupLine>>, run_fraction: f64) -> std::io::Result<()> {
        gpuslice_core::fsutil::create_dir_all_mode(&self.dir, 0o700)?;
        gpuslice_core::fsutil::write_atomic(&self.dir.join(slice), render(&containers).as_bytes(), 0o600)?;
        if let Some(r) = self.slices.get(slice) {
            r.shared.run.store(run_fraction.to_bits(), Ordering::Relaxed);
            *r.shared.containers.lock().unwrap_or_else(PoisonError::into_inner) = containers;
            return Ok(());
        }
        let shared = Arc::new(Shared {
            run: AtomicU64::new(run_fraction.to_bits()),
            stop: AtomicBool::new(false),
            containers: Mutex::new(containers),
        });
        let (host, s) = (Arc::clone(&self.host), Arc::clone(&shared));
        let name = slice.to_owned();
        let thread =
            std::thread::Builder::new().name(format!("throttle-{slice}")).spawn(move || cycle(&*host, &s, &name))?;
        self.slices.insert(slice.to_owned(), Running { shared, thread });
        Ok(())
    }

    /// Stops throttling `slice` and thaws it.
    pub fn release(&mut self, slice: &str) {
        if let Some(r) = self.slices.remove(slice) {
            r.shared.stop.store(true, Ordering::Relaxed);
            let _ = r.thread.join();
        }
        let _ = fs::remove_file(self.dir.join(slice));
    }

    /// The slices under throttle.
    pub fn slices(&self) -> impl Iterator<Item = &str> {
        self.slices.keys().map(String::as_str)
    }

    /// Stops every thread and thaws every slice.
    pub fn release_all(&mut self) {
        let names: Vec<String> = self.slices.keys().cloned().collect();
        for name in names {
            self.release(&name);
        }
    }
}

impl Drop for Throttler {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// The duty cycle of one slice, until told to stop; it always ends thawed.
fn cycle(host: &dyn Host, shared: &Shared, slice: &str) {
    let set_all = |frozen: bool| {
        let containers = shared.containers.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for c in &containers {
            if let Err(e) = host.set_frozen(c, frozen) {
                tracing::debug!(%slice, %e, frozen, "freezer");
            }
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let run = f64::from_bits(shared.run.load(Ordering::Relaxed)).clamp(0.0, 1.0);
        let frozen_for = PERIOD.mul_f64(1.0 - run);
        if !frozen_for.is_zero() {
            set_all(true);
            std::thread::sleep(frozen_for);
            set_all(false);
        }
        std::thread::sleep(PERIOD.mul_f64(run));
    }
    set_all(false);
}
