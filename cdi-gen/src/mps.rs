//! The MPS control daemons of GPUs in mode `mps`, run and supervised by the node daemon.
//!
//! Why the node daemon and not a systemd template unit per GPU: the daemon already runs as
//! root under systemd (`gpuslice.service`) and reads the slices' limits files every pass, so it
//! knows which GPUs are in mode `mps` and what each daemon's ceiling must be without a second
//! copy of the plan; it restarts a dead daemon and sets its limits again in one place; and
//! `status` and `/metrics` report the daemons' state (running, restarts) beside the slices they
//! serve. A template unit would need the ceilings passed out of band and would report through
//! journald only.
//!
//! One [`Supervisor::tick`], every half second on its own thread:
//!
//! 1. Read `<state_dir>/slices/*/limits` (host-written): the GPUs with mode-`mps` slices, and
//!    each one's [`Ceiling`] (its largest slice: MPS lets a client's own variables only lower
//!    the daemon's defaults).
//! 2. For each such GPU without a live daemon (and past its backoff), start
//!    `nvidia-cuda-mps-control -f` with `CUDA_VISIBLE_DEVICES=<GPU UUID>` and the GPU's pipe and
//!    log directories, wait (with a deadline) until it answers, and send it the ceiling
//!    (`set_default_active_thread_percentage`, `set_default_device_pinned_mem_limit`). `-f`
//!    keeps it our child, so its death is seen at once (`try_wait`) instead of through a PID file
//!    that could be stale.
//! 3. A daemon that died is started again after a backoff (1 s, doubling to 30 s; back to 1 s
//!    after it ran a minute); a GPU no longer in mode `mps` has its daemon stopped.
//! 4. Each GPU's [`DaemonStatus`] is written to `<state_dir>/mps/<uuid>/daemon` for `status`.
//!
//! Stopping sends `quit` through the control pipe (`echo quit | nvidia-cuda-mps-control`), waits
//! for the daemon to exit, and kills it only past a deadline.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuslice_core::config::Mode;
use gpuslice_core::fsutil;
use gpuslice_core::limits::{self, Limits};
use gpuslice_core::mps::{self, Ceiling, DaemonStatus};

/// First wait before starting a dead daemon again.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two starts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A daemon that ran this long before dying starts again after [`BACKOFF_MIN`].
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a started daemon has to answer, and a stopped one to exit.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// Time between two ticks of the supervisor thread.
pub const TICK: Duration = Duration::from_millis(500);

/// The GPUs whose limits files say mode `mps`, with their ceilings.
pub fn wanted(state_dir: &Path) -> BTreeMap<String, Ceiling> {
    let mut out: BTreeMap<String, Ceiling> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(limits::slices_dir(state_dir)) else { return out };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(l) = Limits::load(&limits::limits_path(state_dir, &name)) else { continue };
        if l.mode != Mode::Mps {
            continue;
        }
        let c = Ceiling { thread_percentage: l.cores_percent, pinned_bytes: l.memory_bytes };
        out.entry(l.gpu_uuid.clone())
            .and_modify(|a| {
                a.thread_percentage = a.thread_percentage.max(c.thread_percentage);
                a.pinned_bytes = a.pinned_bytes.max(c.pinned_bytes);
            })
            .or_insert(c);
    }
    out
}

/// Creates a GPU's pipe and log directories (the pipe directory is the source of its slices'
/// mounts, so it must exist before any container starts).
pub fn prepare_dirs(state_dir: &Path, gpu_uuid: &str) -> std::io::Result<()> {
    fsutil::create_dir_all_mode(&mps::pipe_dir(state_dir, gpu_uuid), 0o755)?;
    fsutil::create_dir_all_mode(&mps::log_dir(state_dir, gpu_uuid), 0o700)
}

/// Sends one control command to the daemon behind `pipe_dir` the way an operator would
/// (`echo <command> | nvidia-cuda-mps-control`) and returns its answer; fails past
/// [`ANSWER_DEADLINE`].
pub fn control(binary: &Path, pipe_dir: &Path, command: &str) -> Result<String, String> {
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", host_path())
        .env(mps::PIPE_ENV, pipe_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(format!("{command}\n").as_bytes());
    }
    let status = wait_deadline(&mut child, ANSWER_DEADLINE);
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    match status {
        Some(s) if s.success() => Ok(out.trim().to_owned()),
        Some(s) => Err(format!("`{command}`: {s}: {}", first_line(&err, &out))),
        None => Err(format!("`{command}`: no answer within {}s", ANSWER_DEADLINE.as_secs())),
    }
}

fn first_line<'a>(a: &'a str, b: &'a str) -> &'a str {
    a.lines().chain(b.lines()).map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message")
}

fn host_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_owned())
}

/// Waits for `child` up to `deadline`, polling; `None` if it is still running.
fn wait_deadline(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// One GPU's daemon.
#[derive(Debug)]
struct Daemon {
    ceiling: Ceiling,
    child: Option<Child>,
    started: Option<Instant>,
    next_start: Instant,
    backoff: Duration,
    status: DaemonStatus,
}

/// Runs one MPS control daemon per GPU in mode `mps`.
#[derive(Debug)]
pub struct Supervisor {
    binary: PathBuf,
    state_dir: PathBuf,
    daemons: BTreeMap<String, Daemon>,
}

impl Supervisor {
    pub fn new(binary: PathBuf, state_dir: PathBuf) -> Self {
        Self { binary, state_dir, daemons: BTreeMap::new() }
    }

    /// The daemons' state, by GPU UUID.
    pub fn statuses(&self) -> Vec<DaemonStatus> {
        self.daemons.values().map(|d| d.status.clone()).collect()
    }

    /// One round: reads what is wanted from the limits files and brings the daemons in line.
    /// Returns the lines it logged.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let wanted = wanted(&self.state_dir);
        self.reconcile(&wanted, now)
    }

    /// Brings the daemons in line with `wanted`.
    pub fn reconcile(&mut self, wanted: &BTreeMap<String, Ceiling>, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        let gone: Vec<String> = self.daemons.keys().filter(|u| !wanted.contains_key(*u)).cloned().collect();
        for uuid in gone {
            if let Some(mut d) = self.daemons.remove(&uuid) {
                lines.push(self.stop_one(&uuid, &mut d, "its GPU is no longer in mode mps"));
            }
        }
        for (uuid, ceiling) in wanted {
            let mut d = self.daemons.remove(uuid).unwrap_or_else(|| Daemon {
                ceiling: *ceiling,
                child: None,
                started: None,
                next_start: now,
                backoff: BACKOFF_MIN,
                status: DaemonStatus { gpu_uuid: uuid.clone(), ..DaemonStatus::default() },
            });
            let before = d.status.clone();
            self.check_one(uuid, &mut d, *ceiling, now, &mut lines);
            if d.status != before {
                self.write_status(&d.status);
            }
            self.daemons.insert(uuid.clone(), d);
        }
        for l in &lines {
            tracing::warn!("{l}");
        }
        lines
    }

    fn check_one(&self, uuid: &str, d: &mut Daemon, ceiling: Ceiling, now: Instant, lines: &mut Vec<String>) {
        // A daemon that died: note it and schedule the next start.
        if let Some(child) = &mut d.child
            && let Ok(Some(exit)) = child.try_wait()
        {
            let ran = d.started.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            d.backoff = if ran >= STABLE_AFTER { BACKOFF_MIN } else { d.backoff };
            d.next_start = now + d.backoff;
            let line = format!(
                "MPS control daemon of {uuid} (pid {}) died ({exit}); starting it again in {}s",
                child.id(),
                d.backoff.as_secs()
            );
            d.backoff = (d.backoff * 2).min(BACKOFF_MAX);
            d.child = None;
            d.status.running = false;
            d.status.pid = None;
            d.status.last_error = Some(format!("died ({exit})"));
            lines.push(line);
        }
        if d.child.is_some() {
            if d.ceiling != ceiling {
                d.ceiling = ceiling;
                if let Err(e) = self.set_ceiling(uuid, ceiling) {
                    d.status.last_error = Some(e.clone());
                    lines.push(format!("MPS control daemon of {uuid}: could not set its new limits: {e}"));
                }
            }
            return;
        }
        if now < d.next_start {
            return;
        }
        d.ceiling = ceiling;
        let restart = d.status.last_error.is_some() || d.started.is_some();
        match self.start_one(uuid, ceiling) {
            Ok(child) => {
                if restart {
                    d.status.restarts += 1;
                }
                tracing::info!(gpu = %uuid, pid = child.id(), "MPS control daemon started");
                d.status.pid = Some(child.id());
                d.status.running = true;
                d.status.last_error = None;
                d.started = Some(now);
                d.child = Some(child);
            }
            Err(e) => {
                d.next_start = now + d.backoff;
                lines.push(format!("MPS control daemon of {uuid}: {e}; trying again in {}s", d.backoff.as_secs()));
                d.backoff = (d.backoff * 2).min(BACKOFF_MAX);
                d.status.running = false;
                d.status.pid = None;
                d.status.last_error = Some(e);
            }
        }
    }

    /// Starts a GPU's daemon in the foreground (our child), waits until it answers and gives it
    /// its ceiling; a daemon that does not is stopped again.
    fn start_one(&self, uuid: &str, ceiling: Ceiling) -> Result<Child, String> {
        prepare_dirs(&self.state_dir, uuid)
            .map_err(|e| format!("creating {}: {e}", mps::gpu_dir(&self.state_dir, uuid).display()))?;
        let pipe = mps::pipe_dir(&self.state_dir, uuid);
        let log = mps::log_dir(&self.state_dir, uuid);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log.join("supervisor.log"))
            .map_err(|e| format!("opening its log in {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.binary)
            .arg("-f")
            .env_clear()
            .env("PATH", host_path())
            .env("CUDA_VISIBLE_DEVICES", uuid)
            .env(mps::PIPE_ENV, &pipe)
            .env(mps::LOG_ENV, &log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        let until = Instant::now() + ANSWER_DEADLINE;
        let answer = loop {
            if let Ok(Some(exit)) = child.try_wait() {
                break Err(format!("exited at start ({exit}); see {}", log.display()));
            }
            match control(&self.binary, &pipe, "get_server_list") {
                Ok(_) => break Ok(()),
                Err(e) if Instant::now() >= until => break Err(format!("does not answer: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if let Err(e) = answer.and_then(|()| self.set_ceiling(uuid, ceiling)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }

    fn set_ceiling(&self, uuid: &str, ceiling: Ceiling) -> Result<(), String> {
        let pipe = mps::pipe_dir(&self.state_dir, uuid);
        for command in ceiling.commands() {
            control(&self.binary, &pipe, &command)?;
        }
        Ok(())
    }

    /// `quit`, then a kill past the deadline. Returns the line logged.
    fn stop_one(&self, uuid: &str, d: &mut Daemon, why: &str) -> String {
        let Some(mut child) = d.child.take() else {
            d.status.running = false;
            d.status.pid = None;
            self.write_status(&d.status);
            return format!("MPS control daemon of {uuid}: not running; {why}");
        };
        let pipe = mps::pipe_dir(&self.state_dir, uuid);
        let quit = control(&self.binary, &pipe, "quit");
        let line = match (quit, wait_deadline(&mut child, ANSWER_DEADLINE)) {
            (_, Some(_)) => format!("MPS control daemon of {uuid} stopped (quit): {why}"),
            (q, None) => {
                let _ = child.kill();
                let _ = child.wait();
                let q = q.err().unwrap_or_else(|| "it did not exit".to_owned());
                format!("MPS control daemon of {uuid} killed: quit failed ({q}): {why}")
            }
        };
        d.status.running = false;
        d.status.pid = None;
        self.write_status(&d.status);
        line
    }

    /// Stops every daemon (the node daemon is stopping).
    pub fn stop_all(&mut self) {
        let daemons = std::mem::take(&mut self.daemons);
        for (uuid, mut d) in daemons {
            let line = self.stop_one(&uuid, &mut d, "the node daemon is stopping");
            tracing::info!("{line}");
        }
    }

    fn write_status(&self, s: &DaemonStatus) {
        let path = mps::status_path(&self.state_dir, &s.gpu_uuid);
        if let Err(e) = fsutil::write_atomic(&path, s.render().as_bytes(), 0o644) {
            tracing::warn!(path = %path.display(), %e, "could not write the MPS daemon's status");
        }
    }
}

/// The supervisor on its own thread, so that starting a daemon never delays the guard's pass.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<Vec<DaemonStatus>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts the thread; it ticks every [`TICK`] until [`Running::stop`].
    pub fn start(mut supervisor: Supervisor) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let (stop2, statuses2) = (Arc::clone(&stop), Arc::clone(&statuses));
        let thread = std::thread::Builder::new()
            .name("mps-supervisor".to_owned())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    supervisor.tick(Instant::now());
                    if let Ok(mut s) = statuses2.lock() {
                        *s = supervisor.statuses();
                    }
                    std::thread::sleep(TICK);
                }
                supervisor.stop_all();
            })
            .ok();
        Running { stop, statuses, thread }
    }

    /// The daemons' state as of the last tick.
    pub fn statuses(&self) -> Vec<DaemonStatus> {
        self.statuses.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops every daemon (`quit`) and the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `pid` is an MPS server of one of the supervised control daemons `daemons` (their
/// PIDs): the control daemon starts each server itself, so a server's parent is a daemon. Such
/// a process is the host's, outside every container, and serves the GPU's slices: the guard
/// must not count it as a process outside every slice.
pub fn is_server(pid: u32, daemons: &[u32], parent_of: impl Fn(u32) -> Option<u32>) -> bool {
    !daemons.is_empty() && parent_of(pid).is_some_and(|ppid| daemons.contains(&ppid))
}

/// A process's parent, from `/proc/<pid>/stat` (the field after the command's closing paren).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_a_child_of_a_supervised_daemon() {
        let parent = |pid: u32| Some(if pid == 50 { 7 } else { 1 });
        assert!(is_server(50, &[7], parent));
        assert!(!is_server(51, &[7], parent), "a process of another parent");
        assert!(!is_server(50, &[], parent), "no daemon, no server");
        assert_eq!(parent_pid(std::process::id()), Some(std::os::unix::process::parent_id()));
        assert_eq!(parent_pid(u32::MAX), None);
    }
}
