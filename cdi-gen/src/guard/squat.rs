//! Region lock squatters: a process of a slice that keeps the slice's region lock (an OFD
//! write lock on the region's first byte, [`REGION_LOCK`]) makes every slice-mate's allocation
//! fail after its wait and every new container of the slice be refused, for as long as it
//! holds it. A legitimate hold lasts microseconds.
//!
//! Each pass, per slice with recorded containers, the guard asks the kernel whether the lock is
//! held (`F_OFD_GETLK` on its own open description of `<state_dir>/slices/<name>/region`), and
//! if so asks again [`RECHECKS`] times over about 50 ms: only a lock held at every look counts.
//! A lock held so at consecutive passes for at least `[guard] lock_hold_limit` is a squat. Its
//! holder is found from the kernel, never from anything a container wrote: the processes of the
//! slice's recorded containers (each process's `/proc/<pid>/cgroup` matched against the
//! records) whose descriptors hold a lock on the region's inode covering the lock byte
//! (`/proc/<pid>/fdinfo/*`). By the slice's memory policy it is killed (`kill`) with one line
//! naming the container, the slice and how long the lock was held, or the line only (`log`).
//! A holder outside the slice's containers is never touched: the squat is reported once.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use gpuslice_core::config::{GuardConfig, GuardPolicy};
use gpuslice_core::containers::ContainerRecord;
use gpuslice_core::region::{REGION_LOCK, region_path};

use super::enforce::{Action, KillReason};
use super::host::Host;
use super::observe::Snapshot;

/// How many times a lock seen held is asked about again within the pass...
pub const RECHECKS: u32 = 5;
/// ...with this pause before each (about 50 ms in all).
pub const RECHECK_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy)]
struct Hold {
    /// When it was first seen held in this run of passes (ms).
    since_ms: u64,
    /// Whether it has been acted on (killed or reported) since it was last `since_ms`.
    acted: bool,
}

/// The slices whose region lock was held at the last passes.
#[derive(Debug)]
pub struct SquatWatch {
    holds: HashMap<String, Hold>,
    pause: Duration,
}

impl Default for SquatWatch {
    fn default() -> Self {
        Self { holds: HashMap::new(), pause: RECHECK_PAUSE }
    }
}

impl SquatWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// With `pause` between re-checks instead of [`RECHECK_PAUSE`] (tests).
    pub fn with_pause(pause: Duration) -> Self {
        Self { holds: HashMap::new(), pause }
    }

    /// Whether `region`'s lock is held now and at every re-check.
    fn held(&self, host: &dyn Host, region: &Path) -> bool {
        if !host.lock_held(region, REGION_LOCK).unwrap_or(false) {
            return false;
        }
        (0..RECHECKS).all(|_| {
            std::thread::sleep(self.pause);
            host.lock_held(region, REGION_LOCK).unwrap_or(false)
        })
    }

    /// Looks at every slice of `snap` that has containers; the actions for the squats found.
    pub fn check(
        &mut self,
        host: &dyn Host,
        state_dir: &Path,
        snap: &Snapshot,
        records: &[ContainerRecord],
        config: &GuardConfig,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let limit_ms = config.lock_hold_limit.as_millis();
        let mut still = HashMap::new();
        for slice in snap.slices.iter().filter(|s| !s.containers.is_empty()) {
            let name = &slice.info.name;
            let region = region_path(state_dir, name);
            if !self.held(host, &region) {
                continue;
            }
            let mut hold = self.holds.get(name).copied().unwrap_or(Hold { since_ms: now_ms, acted: false });
            let held_ms = now_ms.saturating_sub(hold.since_ms);
            if held_ms >= limit_ms && !hold.acted {
                let seconds = held_ms as f64 / 1000.0;
                let mine: Vec<&ContainerRecord> = records.iter().filter(|r| &r.slice == name).collect();
                // The processes of the slice's containers, by their cgroups as the kernel lists them.
                let candidates: Vec<(u32, &ContainerRecord)> = host
                    .pids()
                    .into_iter()
                    .filter_map(|pid| {
                        let cgroups = host.cgroups(pid)?;
                        mine.iter().find(|r| r.contains(&cgroups)).map(|r| (pid, *r))
                    })
                    .collect();
                let pids: Vec<u32> = candidates.iter().map(|c| c.0).collect();
                let holders = match host.lock_holders(&pids, &region, REGION_LOCK) {
                    Ok(h) => h,
                    Err(e) => {
                        actions.push(Action::Warn {
                            message: format!(
                                "{name}: its region lock has been held for {seconds:.1} s; finding the holder: {e}"
                            ),
                        });
                        Vec::new()
                    }
                };
                if holders.is_empty() {
                    actions.push(Action::Warn {
                        message: format!(
                            "{name}: its region lock ({}) has been held for {seconds:.1} s, by no process of its containers \
                             (see /proc/locks): nothing killed",
                            region.display()
                        ),
                    });
                }
                let mut killed = false;
                for pid in holders {
                    let Some(&(_, record)) = candidates.iter().find(|c| c.0 == pid) else { continue };
                    let Some(start_time) = host.start_time(pid) else { continue };
                    let message = format!(
                        "{name}: pid {pid} of container {} held the slice's region lock for {seconds:.1} s \
                         (lock_hold_limit {}), blocking its slice-mates",
                        record.display_name(),
                        config.lock_hold_limit
                    );
                    match slice.info.memory_policy {
                        GuardPolicy::Kill => {
                            killed = true;
                            actions.push(Action::Kill {
                                reason: KillReason::LockSquat,
                                pid,
                                start_time,
                                slice: Some(name.clone()),
                                message,
                            });
                        }
                        GuardPolicy::Log => actions
                            .push(Action::Warn { message: format!("{message} (memory_policy = log: nothing killed)") }),
                    }
                }
                // After a kill, a lock still held at the next passes is a new squat, timed afresh;
                // one only reported is reported once.
                hold = if killed { Hold { since_ms: now_ms, acted: false } } else { Hold { acted: true, ..hold } };
            }
            still.insert(name.clone(), hold);
        }
        self.holds = still;
        actions
    }
}
