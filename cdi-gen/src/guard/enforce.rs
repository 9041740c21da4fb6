//! What the guard does about a [`Snapshot`]: decisions only, as a list of [`Action`]s, so that
//! they can be tested without processes; [`super::Guard`] carries them out.
//!
//! - **Memory.** A slice whose processes hold more than its allowance (limit plus context
//!   tolerance, by the driver's count) is brought back under: with `memory_policy = "kill"`,
//!   its processes are killed in the order they last grew (the one that grew last first;
//!   between two that grew in the same pass, the one that grew more), as many as it takes for
//!   the rest to fit. A killed process that the driver still lists in the next passes (it is
//!   exiting) is not counted again. With `"log"`, one line when the slice goes over, again
//!   every minute while it stays over, and one when it is back under.
//! - **Processes outside every slice** on a GPU that has slices: one line each, once, and with
//!   `unsliced_policy = "kill"` a kill.
//! - **Compute.** A slice whose processes' share of the GPU, averaged over `compute_window`,
//!   is more than `compute_margin` points above its `cores` is throttled (with
//!   `compute_guard = "throttle"`): its containers run a fraction of the time, frozen the rest.
//!   The fraction follows the measured share each pass, and the throttle is released once the
//!   fraction is back at 1 and the slice's average is within half the margin. A `borrow` slice
//!   may use what the GPU's other slices leave idle: it is throttled only while another slice
//!   on its GPU is busy. A slice at 100 % is never throttled.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use gpuslice_core::config::{ComputeGuard, CoresPolicy, GuardConfig, GuardPolicy};
use gpuslice_core::units::ByteSize;

use super::observe::{Owner, ProcessSnapshot, SliceSnapshot, Snapshot, allowance};

/// How often a slice that stays over its limit under `memory_policy = "log"` is logged again.
pub const REPEAT_LOG_MS: u64 = 60_000;
/// The least a throttled slice runs: a tenth of the time.
pub const MIN_RUN_FRACTION: f64 = 0.1;

/// A process, for good: GPU, PID and start time.
type ProcessKey = (u32, u32, u64);

/// Why a process is to be killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// Its slice is over its memory limit and it grew last.
    OverLimit,
    /// It uses a sliced GPU outside every slice.
    Unsliced,
    /// It kept its slice's region lock past `lock_hold_limit` ([`super::squat`]).
    LockSquat,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `SIGKILL` the process, then log `message` with what became of it.
    Kill { reason: KillReason, pid: u32, start_time: u64, slice: Option<String>, message: String },
    /// Log `message` (a warning).
    Warn { message: String },
    /// Log `message` (information).
    Info { message: String },
    /// Run `slice`'s containers `run_fraction` of the time, frozen the rest.
    Throttle { slice: String, run_fraction: f64, message: Option<String> },
    /// Stop throttling `slice`.
    Release { slice: String, message: String },
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    bytes: u64,
    /// The pass in which it last grew.
    grew_at: u64,
    /// By how much it grew then.
    growth: u64,
}

#[derive(Debug, Default)]
struct ComputeState {
    /// (time ms, the slice's share, whether another slice on its GPU was busy).
    history: VecDeque<(u64, u32, bool)>,
    /// Set while throttled: the fraction of the time it runs.
    run: Option<f64>,
}

/// The guard's memory of earlier passes.
#[derive(Debug, Default)]
pub struct Enforcer {
    pass: u64,
    seen: HashMap<ProcessKey, Seen>,
    /// Processes killed and the pass they were killed in.
    dying: HashMap<ProcessKey, u64>,
    /// Slices logged as over their limit (`log` policy), with when.
    over_logged: HashMap<String, u64>,
    unsliced_reported: HashSet<ProcessKey>,
    compute: BTreeMap<String, ComputeState>,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", ByteSize(bytes).as_gib())
}

fn key(p: &ProcessSnapshot) -> ProcessKey {
    (p.gpu_index, p.pid, p.start_time)
}

impl Enforcer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `slice` is being throttled now.
    pub fn throttled(&self, slice: &str) -> bool {
        self.compute.get(slice).is_some_and(|c| c.run.is_some())
    }

    /// The decisions for one snapshot.
    pub fn decide(&mut self, snap: &Snapshot, config: &GuardConfig) -> Vec<Action> {
        self.pass += 1;
        let mut actions = Vec::new();
        self.track_growth(snap);
        for slice in &snap.slices {
            self.memory(snap, slice, config, &mut actions);
        }
        self.unsliced(snap, config, &mut actions);
        self.compute(snap, config, &mut actions);
        actions
    }

    /// Remembers each process's memory and when it last grew; forgets processes that have gone.
    fn track_growth(&mut self, snap: &Snapshot) {
        let present: HashSet<ProcessKey> = snap.processes.iter().map(key).collect();
        self.seen.retain(|k, _| present.contains(k));
        self.dying.retain(|k, _| present.contains(k));
        self.unsliced_reported.retain(|k| present.contains(k));
        for p in &snap.processes {
            let pass = self.pass;
            let seen = self.seen.entry(key(p)).or_insert(Seen { bytes: 0, grew_at: pass, growth: p.used_bytes });
            if p.used_bytes > seen.bytes {
                *seen = Seen { bytes: p.used_bytes, grew_at: pass, growth: p.used_bytes - seen.bytes };
            } else {
                seen.bytes = p.used_bytes;
            }
        }
    }

    fn memory(&mut self, snap: &Snapshot, slice: &SliceSnapshot, config: &GuardConfig, actions: &mut Vec<Action>) {
        let name = &slice.info.name;
        // Processes already killed are on their way out: neither counted nor chosen again.
        let mut live: Vec<&ProcessSnapshot> =
            snap.processes_of(name).filter(|p| !self.dying.contains_key(&key(p))).collect();
        let used: u64 = live.iter().map(|p| p.used_bytes).sum();
        let tolerance = |n: usize| allowance(&slice.info, n, config.context_tolerance.0, config.max_tolerance.0);
        if used <= tolerance(live.len()) {
            if self.over_logged.remove(name).is_some() {
                actions.push(Action::Info {
                    message: format!(
                        "{name} is back under its memory limit: {} held, limit {}",
                        gib(used),
                        gib(slice.info.memory_bytes)
                    ),
                });
            }
            return;
        }
        let over = format!(
            "{name} is over its memory limit by the driver's count: {} held by {} process{} on GPU {}, limit {} + {} tolerance",
            gib(used),
            live.len(),
            if live.len() == 1 { "" } else { "es" },
            slice.info.gpu_index,
            gib(slice.info.memory_bytes),
            gib(tolerance(live.len()) - slice.info.memory_bytes),
        );
        match slice.info.memory_policy {
            GuardPolicy::Log => {
                let due = self.over_logged.get(name).is_none_or(|&t| snap.at_ms >= t + REPEAT_LOG_MS);
                if due {
                    self.over_logged.insert(name.clone(), snap.at_ms);
                    actions.push(Action::Warn { message: format!("{over} (memory_policy = log: nothing killed)") });
                }
            }
            GuardPolicy::Kill => {
                // The one that grew last first; then the larger growth; then the larger holder.
                live.sort_by(|a, b| {
                    let (sa, sb) = (self.seen[&key(a)], self.seen[&key(b)]);
                    (sb.grew_at, sb.growth, b.used_bytes, b.pid).cmp(&(sa.grew_at, sa.growth, a.used_bytes, a.pid))
                });
                let mut remaining = used;
                let mut left = live.len();
                for p in live {
                    if remaining <= tolerance(left) {
                        break;
                    }
                    let Owner::Slice { container_name, .. } = &p.owner else { continue };
                    remaining -= p.used_bytes;
                    left -= 1;
                    self.dying.insert(key(p), self.pass);
                    actions.push(Action::Kill {
                        reason: KillReason::OverLimit,
                        pid: p.pid,
                        start_time: p.start_time,
                        slice: Some(name.clone()),
                        message: format!(
                            "{over}; pid {} of container {container_name}, which grew last (to {})",
                            p.pid,
                            gib(p.used_bytes)
                        ),
                    });
                }
            }
        }
    }

    fn unsliced(&mut self, snap: &Snapshot, config: &GuardConfig, actions: &mut Vec<Action>) {
        let own = std::process::id();
        for p in &snap.processes {
            let Owner::Unsliced { container_name, .. } = &p.owner else { continue };
            let Some(gpu) = snap.gpus.iter().find(|g| g.index == p.gpu_index) else { continue };
            if !gpu.sliced || p.pid == own || !self.unsliced_reported.insert(key(p)) {
                continue;
            }
            let whose = match container_name {
                Some(c) => format!("container {c}, which has no slice on this GPU"),
                None => "not in a container started with a gpuslice device".to_owned(),
            };
            let message = format!(
                "pid {} uses GPU {} ({}) outside every slice: {} held, {whose}",
                p.pid,
                gpu.index,
                gpu.uuid,
                gib(p.used_bytes)
            );
            match config.unsliced_policy {
                GuardPolicy::Log => {
                    actions.push(Action::Warn { message: format!("{message} (unsliced_policy = log)") })
                }
                GuardPolicy::Kill => {
                    self.dying.insert(key(p), self.pass);
                    actions.push(Action::Kill {
                        reason: KillReason::Unsliced,
                        pid: p.pid,
                        start_time: p.start_time,
                        slice: None,
                        message,
                    });
                }
            }
        }
    }

    fn compute(&mut self, snap: &Snapshot, config: &GuardConfig, actions: &mut Vec<Action>) {
        let window = config.compute_window.as_millis();
        let margin = f64::from(config.compute_margin);
        let names: HashSet<&str> = snap.slices.iter().map(|s| s.info.name.as_str()).collect();
        // Slices that are gone: released.
        let gone: Vec<String> = self.compute.keys().filter(|n| !names.contains(n.as_str())).cloned().collect();
        for name in gone {
            if self.compute.remove(&name).is_some_and(|c| c.run.is_some()) {
                actions.push(Action::Release {
                    slice: name.clone(),
                    message: format!("{name} is gone: throttle released"),
                });
            }
        }
        for slice in &snap.slices {
            let name = &slice.info.name;
            let sampled = snap.gpus.iter().any(|g| g.index == slice.info.gpu_index && g.sampled);
            let others_busy = snap
                .slices
                .iter()
                .any(|o| o.info.name != *name && o.info.gpu_uuid == slice.info.gpu_uuid && o.sm_percent > 0);
            let state = self.compute.entry(name.clone()).or_default();
            // A GPU with no sample this pass is idle (or cannot sample): the slice used nothing.
            let share = if sampled { slice.sm_percent } else { 0 };
            state.history.push_back((snap.at_ms, share, others_busy));
            while state.history.front().is_some_and(|&(t, _, _)| t + window < snap.at_ms) {
                state.history.pop_front();
            }
            let cores = f64::from(slice.info.cores_percent);
            if config.compute_guard == ComputeGuard::Off || slice.info.cores_percent >= 100 {
                if state.run.take().is_some() {
                    actions.push(Action::Release {
                        slice: name.clone(),
                        message: format!("{name}: compute_guard is off: throttle released"),
                    });
                }
                continue;
            }
            let full = state.history.front().is_some_and(|&(t, _, _)| t + window * 9 / 10 <= snap.at_ms);
            let n = state.history.len().max(1) as f64;
            let mean = state.history.iter().map(|&(_, s, _)| f64::from(s)).sum::<f64>() / n;
            let contended = slice.info.cores_policy == CoresPolicy::Cap || state.history.iter().any(|&(_, _, o)| o);
            match state.run {
                None => {
                    if full && contended && mean > cores + margin {
                        let run = (cores / mean).clamp(MIN_RUN_FRACTION, 1.0);
                        state.run = Some(run);
                        actions.push(Action::Throttle {
                            slice: name.clone(),
                            run_fraction: run,
                            message: Some(format!(
                                "{name} took {mean:.0} % of GPU {} over the last {}, its share is {cores:.0} %: \
                                 throttled (its containers run {:.0} % of the time, frozen the rest; kernels already queued still run)",
                                slice.info.gpu_index,
                                config.compute_window,
                                run * 100.0
                            )),
                        });
                    }
                }
                Some(run) => {
                    let now = f64::from(share);
                    let next = if now > cores + margin / 2.0 {
                        (run * cores / now.max(1.0)).clamp(MIN_RUN_FRACTION, 1.0)
                    } else if now < cores {
                        (run * 1.25).min(1.0)
                    } else {
                        run
                    };
                    if next >= 1.0 && mean <= cores + margin / 2.0 {
                        state.run = None;
                        actions.push(Action::Release {
                            slice: name.clone(),
                            message: format!(
                                "{name} is back within its share ({mean:.0} % over the last {}, share {cores:.0} %): throttle released",
                                config.compute_window
                            ),
                        });
                    } else {
                        let next = next.min(1.0);
                        state.run = Some(next);
                        if (next - run).abs() > 1e-9 {
                            actions.push(Action::Throttle { slice: name.clone(), run_fraction: next, message: None });
                        }
                    }
                }
            }
        }
    }
}
